#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-3.0-or-later
"""gen-docs - fill a Markdown template with reference tables taken from the
JSON Schemas, so the documentation cannot drift from what Postmux checks.

Markers, each alone on a line of the template:
  @CONFIG_REFERENCE@          every key of schemas/postmux.schema.json
  @TRANSPORTS_REFERENCE@      a section per transport plugin's options schema
                              (every --transport given, sorted by name)
  @PRESETS_TABLE@             the presets of schemas/presets.json
  @CONFIG_REFERENCE_ROFF@, @TRANSPORTS_REFERENCE_ROFF@   the same for a man page

A key's default is the schema's "default", else the text after "Default:"
at the end of its description; "examples" are shown as well.

Usage:
  gen-docs.py --template IN --output OUT [--config-schema F]
              [--transport NAME=SCHEMA.json ...] [--presets F]
  gen-docs.py --compare GENERATED CHECKED_IN   (TAP: do they match?)
"""
import argparse
import difflib
import json
import re
import sys

HEADER = ("<!-- Generated from {template} and the JSON Schemas by the build; do not edit here:\n"
          "     edit the template or the schema descriptions, then run `ninja -C build update-docs`. -->\n\n")


def cell(text):
    return str(text).replace("|", "\\|").replace("\n", " ")


def code(value):
    if isinstance(value, str):
        return "`%s`" % value
    return "`%s`" % json.dumps(value)


class Walker:
    def __init__(self, schema):
        self.root = schema

    def resolve(self, node):
        seen = 0
        while isinstance(node, dict) and "$ref" in node and seen < 16:
            ref = node["$ref"]
            if not ref.startswith("#/"):
                break
            target = self.root
            for part in ref[2:].split("/"):
                target = target[part]
            merged = dict(target)
            merged.update({k: v for k, v in node.items() if k != "$ref"})
            # the referring node's description wins over the target's
            node = merged
            seen += 1
        return node

    def type_of(self, node, raw):
        ref = raw.get("$ref", "") if isinstance(raw, dict) else ""
        if ref.endswith("/duration"):
            return "duration"
        if "enum" in node:
            return "one of " + ", ".join(code(v) for v in node["enum"])
        if "const" in node:
            return "exactly " + code(node["const"])
        t = node.get("type")
        if t is None and "oneOf" in node:
            t = [self.type_of(self.resolve(o), o) for o in node["oneOf"]]
            return " or ".join(dict.fromkeys(t))
        if isinstance(t, list):
            t = " or ".join(t)
        if t == "array":
            items = node.get("items", {})
            inner = self.type_of(self.resolve(items), items) if items else "any"
            t = "array of " + inner
        bounds = []
        if "minimum" in node:
            bounds.append("≥ %s" % node["minimum"])
        if "maximum" in node:
            bounds.append("≤ %s" % node["maximum"])
        return (t or "any") + (" (%s)" % ", ".join(bounds) if bounds else "")

    def rows(self, node, path, required, out, depth=0):
        """Adds one row per key under @node (an object schema)."""
        node = self.resolve(node)
        props = node.get("properties", {})
        req = set(node.get("required", []))
        for key, raw in props.items():
            if key == "$schema":
                continue
            child = self.resolve(raw)
            kpath = path + [key]
            out.append(self.row(kpath, child, raw, key in req))
            self.descend(child, kpath, out, depth)
        extra = node.get("additionalProperties")
        if isinstance(extra, dict) and depth < 6:
            child = self.resolve(extra)
            kpath = path + ["<name>"]
            if child.get("type") == "object" and child.get("properties"):
                self.descend(child, kpath, out, depth, as_object=True)
            else:
                out.append(self.row(kpath, child, extra, False))

    def descend(self, child, kpath, out, depth, as_object=False):
        if depth >= 6:
            return
        if child.get("type") == "object" and (child.get("properties") or isinstance(child.get("additionalProperties"), dict)):
            self.rows(child, kpath, False, out, depth + 1)
        elif child.get("type") == "array":
            items = self.resolve(child.get("items", {}))
            if items.get("type") == "object" and items.get("properties"):
                self.rows(items, kpath[:-1] + [kpath[-1] + "[]"], False, out, depth + 1)

    def row(self, kpath, node, raw, required):
        desc = node.get("description", "")
        default = None
        if "default" in node:
            default = code(node["default"])
        m = re.search(r"\s*Default:\s*(.*?)\.?\s*$", desc)
        if m:
            if default is None:
                default = m.group(1)
            desc = desc[:m.start()].rstrip()
        if required:
            default = "required"
        if "examples" in node:
            desc += (" " if desc else "") + "Example: " + ", ".join(code(e) for e in node["examples"])
        key = ".".join(kpath).replace(".[]", "[]")
        return (key, self.type_of(node, raw), default or "—", desc)


TABLE_HEAD = "| key | type | default | description |\n|---|---|---|---|\n"


def md_rows(rows):
    return "\n".join("| `%s` | %s | %s | %s |" % (k, cell(t), cell(d), cell(desc)) for k, t, d, desc in rows)


def config_sections(schema):
    """[(title, rows)]: the top-level scalars, then one section per object."""
    w = Walker(schema)
    req = schema.get("required", [])
    scalars, sections = [], []
    for key, raw in schema["properties"].items():
        if key == "$schema":
            continue
        node = w.resolve(raw)
        is_section = node.get("type") == "object" or (node.get("type") == "array" and
                                                      w.resolve(node.get("items", {})).get("type") == "object")
        if not is_section:
            scalars.append(w.row([key], node, raw, key in req))
            continue
        rows = [w.row([key], node, raw, key in req)]
        w.descend(node, [key], rows, 0)
        sections.append((key, rows))
    return [(None, scalars)] + sections


def config_reference(schema):
    out = []
    for title, rows in config_sections(schema):
        head = "### Top-level keys" if title is None else "### `%s`" % title
        out.append(head + "\n\n" + TABLE_HEAD + md_rows(rows) + "\n")
    return "\n".join(out)


def transport_rows(schema):
    rows = []
    Walker(schema).rows(schema, [], None, rows)
    return rows


def transport_reference(name, schema):
    head = "### `%s` options\n\n" % name
    if schema.get("title"):
        head += schema["title"].rstrip(".") + ".\n\n"
    return head + TABLE_HEAD + md_rows(transport_rows(schema)) + "\n"


def roff(text):
    text = str(text).replace("\\", "\\e").replace("-", "\\-").replace("`", "")
    text = "".join(c if ord(c) < 128 else "\\[u%04X]" % ord(c) for c in text)
    return "\\&" + text if text[:1] in (".", "'") else text


def roff_entries(rows):
    out = []
    for k, t, d, desc in rows:
        what = t if d == "—" else "%s, %s" % (t, d if d == "required" else "default " + d)
        out.append(".TP\n.B %s\n%s.%s" % (roff(k), roff(what), ("\n" + roff(desc)) if desc else ""))
    return "\n".join(out)


def config_reference_roff(schema):
    out = []
    for title, rows in config_sections(schema):
        out.append(".SS %s\n%s" % ("Top\\-level keys" if title is None else roff(title), roff_entries(rows)))
    return "\n".join(out) + "\n"


def transports_reference_roff(transports):
    out = []
    for name in sorted(transports):
        out.append(".SS %s\n%s" % (roff(name) + " options", roff_entries(transport_rows(transports[name]))))
    return "\n".join(out) + "\n"


def presets_table(presets):
    out = ["| preset | plugin | host | port | security | note |", "|---|---|---|---|---|---|"]
    for name in sorted(presets):
        p = presets[name]
        o = p.get("options", {})
        out.append("| `%s` | `%s` | `%s` | %s | `%s` | %s |" % (
            name, p.get("plugin", ""), o.get("host", ""), o.get("port", ""), o.get("security", ""),
            cell(o.get("hint", ""))))
    return "\n".join(out) + "\n"


def generate(args):
    template = open(args.template, encoding="utf-8").read()
    transports = {}
    for t in args.transport or []:
        name, _, path = t.partition("=")
        transports[name] = json.load(open(path, encoding="utf-8"))
    out = []
    for line in template.splitlines(True):
        s = line.strip()
        if s == "@CONFIG_REFERENCE@":
            out.append(config_reference(json.load(open(args.config_schema, encoding="utf-8"))))
        elif s == "@TRANSPORTS_REFERENCE@":
            out.append("\n".join(transport_reference(n, transports[n]) for n in sorted(transports)))
        elif s == "@CONFIG_REFERENCE_ROFF@":
            out.append(config_reference_roff(json.load(open(args.config_schema, encoding="utf-8"))))
        elif s == "@TRANSPORTS_REFERENCE_ROFF@":
            out.append(transports_reference_roff(transports))
        elif s == "@PRESETS_TABLE@":
            out.append(presets_table(json.load(open(args.presets, encoding="utf-8"))))
        elif re.fullmatch(r"@[A-Z_]+@", s):
            sys.exit("gen-docs: %s: unknown marker %s" % (args.template, s))
        else:
            out.append(line)
    rel = args.template_name or args.template
    header = HEADER.format(template=rel)
    if args.output.endswith((".1", ".5")):
        header = ('.\\" Generated from %s and the JSON Schemas by the build; do not edit here:\n'
                  '.\\" edit the template or the schema descriptions, then run `ninja -C build update-docs`.\n' % rel)
    text = header + "".join(out)
    with open(args.output, "w", encoding="utf-8") as f:
        f.write(text)


def compare(generated, checked_in):
    got = open(generated, encoding="utf-8").read()
    try:
        want = open(checked_in, encoding="utf-8").read()
    except FileNotFoundError:
        want = ""
    name = "%s is what the build generates from the schemas" % checked_in
    print("1..1")
    if got == want:
        print("ok 1 - " + name)
        return 0
    print("not ok 1 - " + name)
    for line in difflib.unified_diff(want.splitlines(True), got.splitlines(True), checked_in, generated):
        print("# " + line.rstrip("\n"))
    print("# Fix: run `ninja -C build update-docs` and commit the result.")
    return 1


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--template")
    ap.add_argument("--template-name")
    ap.add_argument("--output")
    ap.add_argument("--config-schema")
    ap.add_argument("--transport", action="append")
    ap.add_argument("--presets")
    ap.add_argument("--compare", nargs=2)
    args = ap.parse_args()
    if args.compare:
        return compare(*args.compare)
    generate(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-3.0-or-later
"""pmx-abi-listing - the public plugin ABI as text, and the check that it
only changes together with the ABI version.

The listing holds, for the headers in plugins/include/postmux/ and the
built libpostmux-plugin:
  - the ABI version (PMX_ABI_MAJOR.PMX_ABI_MINOR from postmux-version.h);
  - every exported symbol of the library (nm -D --defined-only);
  - every public struct: its size and each field's offset and size, as the
    compiler lays them out (a C program generated from the headers prints
    sizeof/offsetof);
  - every enum: each enumerator's value (printed by the same program);
  - every other declaration and #define, comments and spacing normalised.

It is compared with the checked-in plugins/abi/postmux-abi-<major>.<minor>.txt.
Any difference fails: change the headers only together with the version.
Listings of older minors of the same major must still be contained in the
new one (symbols, fields, enumerators and declarations only added).

Usage (the build runs it; `ninja -C build abi-update` runs --update):
  pmx-abi-listing.py --cc CC --lib LIB --abi-dir DIR --check|--update|--print HEADER...
"""
import argparse
import difflib
import os
import re
import shlex
import subprocess
import sys
import tempfile

UPDATE_HINT = "ninja -C build abi-update"
VERSION_H = "plugins/include/postmux/postmux-version.h"


def strip_comments(text):
    text = re.sub(r"/\*.*?\*/", " ", text, flags=re.S)
    return re.sub(r"//[^\n]*", " ", text)


def norm(text):
    text = re.sub(r"\s+", " ", text).strip()
    text = re.sub(r"\s*([(),;*\[\]{}])\s*", r"\1", text)
    text = re.sub(r"(\w)\*", r"\1 *", text)
    return text.replace(",", ", ")


def parse_headers(paths):
    """Returns (defines, structs, enums, decls) from the raw headers."""
    defines, structs, enums, decls = [], [], [], []
    for path in sorted(paths, key=os.path.basename):
        text = strip_comments(open(path, encoding="utf-8").read())
        text = re.sub(r"\\\n", " ", text)
        body = []
        for line in text.split("\n"):
            s = line.strip()
            if s.startswith("#"):
                m = re.match(r"#\s*define\s+(\w+)(.*)", s)
                if m and not m.group(1).startswith("__PMX_H"):
                    defines.append("define %s %s" % (m.group(1), norm(m.group(2))))
                continue
            body.append(line)
        text = " ".join(body)
        text = re.sub(r"\bG_(BEGIN|END)_DECLS\b", " ", text)
        # Macro calls without a semicolon (G_DEFINE_AUTOPTR_CLEANUP_FUNC...).
        for m in re.finditer(r"\b(G_DEFINE_\w+)\s*\(([^)]*)\)", text):
            decls.append("decl %s(%s)" % (m.group(1), norm(m.group(2))))
        text = re.sub(r"\bG_DEFINE_\w+\s*\([^)]*\)", " ", text)
        for m in re.finditer(r"typedef\s+struct\s*(\w*)\s*\{(.*?)\}\s*(\w+)\s*;", text, flags=re.S):
            fields = []
            for f in m.group(2).split(";"):
                f = f.strip()
                if not f:
                    continue
                fp = re.search(r"\(\s*\*\s*(\w+)\s*\)", f)
                if fp:
                    name = fp.group(1)
                else:
                    name = re.search(r"(\w+)\s*(\[[^\]]*\])?\s*$", f).group(1)
                fields.append((name, norm(f)))
            structs.append((m.group(3), fields))
        text = re.sub(r"typedef\s+struct\s*\w*\s*\{.*?\}\s*\w+\s*;", " ", text, flags=re.S)
        for m in re.finditer(r"typedef\s+enum\s*\w*\s*\{(.*?)\}\s*(\w+)\s*;", text, flags=re.S):
            names = [e.split("=")[0].strip() for e in m.group(1).split(",") if e.strip()]
            enums.append((m.group(2), names))
        text = re.sub(r"typedef\s+enum\s*\w*\s*\{.*?\}\s*\w+\s*;", " ", text, flags=re.S)
        for d in text.split(";"):
            d = norm(d)
            if d:
                decls.append("decl " + d)
    return defines, structs, enums, decls


def layout(cc, cflags, headers, structs, enums):
    """Compiles and runs a program that prints sizes, offsets and values."""
    inc = os.path.dirname(os.path.dirname(os.path.abspath(headers[0])))
    lines = ["#include <stddef.h>", "#include <stdio.h>", "#include <postmux/postmux.h>",
             "#define F(T, m) printf (\"  field %s offset %zu size %zu\\n\", #m, offsetof (T, m), sizeof (((T *) 0)->m))",
             "int main (void) {"]
    for name, fields in structs:
        lines.append('  printf ("struct %s size %%zu align %%zu\\n", sizeof (%s), _Alignof (%s));' % (name, name, name))
        for fname, _ in fields:
            lines.append("  F (%s, %s);" % (name, fname))
    for name, values in enums:
        lines.append('  printf ("enum %s size %%zu\\n", sizeof (%s));' % (name, name))
        for v in values:
            lines.append('  printf ("  value %s = %%lld\\n", (long long) %s);' % (v, v))
    lines += ["  return 0;", "}"]
    with tempfile.TemporaryDirectory(prefix="pmx-abi-") as tmp:
        src = os.path.join(tmp, "abi.c")
        exe = os.path.join(tmp, "abi")
        with open(src, "w") as f:
            f.write("\n".join(lines) + "\n")
        cmd = shlex.split(cc) + ["-std=gnu11", "-I" + inc] + cflags + [src, "-o", exe]
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0:
            sys.exit("pmx-abi-listing: the layout program does not compile against the public headers:\n"
                     + r.stderr)
        return subprocess.run([exe], capture_output=True, text=True, check=True).stdout.splitlines()


def symbols(lib):
    out = subprocess.run(["nm", "-D", "--defined-only", lib], capture_output=True, text=True, check=True).stdout
    syms = []
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[1] in "TDBRVW" and not parts[2].startswith("_"):
            syms.append("symbol %s %s" % (parts[1], parts[2]))
    return sorted(syms)


def version(headers):
    text = open([h for h in headers if h.endswith("postmux-version.h")][0]).read()
    major = re.search(r"#define\s+PMX_ABI_MAJOR\s+(\d+)", text).group(1)
    minor = re.search(r"#define\s+PMX_ABI_MINOR\s+(\d+)", text).group(1)
    return int(major), int(minor)


def listing(args):
    major, minor = version(args.headers)
    cflags = shlex.split(subprocess.run(["pkg-config", "--cflags", "glib-2.0", "gio-2.0", "json-glib-1.0"],
                                        capture_output=True, text=True, check=True).stdout)
    defines, structs, enums, decls = parse_headers(args.headers)
    out = ["# Postmux plugin ABI %d.%d: exported symbols, struct layouts (x86_64), enum values" % (major, minor),
           "# and public declarations.  Generated by plugins/abi/pmx-abi-listing.py; do not edit:",
           "# change the headers and PMX_ABI_MINOR/MAJOR, then run `%s`." % UPDATE_HINT,
           "abi %d.%d" % (major, minor)]
    out += symbols(args.lib)
    out += layout(args.cc, cflags, args.headers, structs, enums)
    for name, fields in structs:
        out += ["struct %s member %s" % (name, f) for _, f in fields]
    out += sorted(decls)
    out += sorted(d for d in defines if not d.startswith("define PMX_ABI_M"))
    return (major, minor), "\n".join(out) + "\n"


# Lines an older minor of the same major must keep (added-only evolution).
KEPT = re.compile(r"^(symbol |  field |  value |decl |struct \S+ member )")


def check(args, ver, text):
    major, minor = ver
    name = "postmux-abi-%d.%d.txt" % (major, minor)
    path = os.path.join(args.abi_dir, name)
    problems = []
    if not os.path.exists(path):
        problems.append("plugins/abi/%s is missing: the public ABI is %d.%d (%s) and has no recorded listing.\n"
                        "  Fix: run `%s` and commit plugins/abi/%s." % (name, major, minor, VERSION_H,
                                                                       UPDATE_HINT, name))
    else:
        want = open(path, encoding="utf-8").read()
        if want != text:
            diff = "".join(difflib.unified_diff(want.splitlines(True), text.splitlines(True),
                                                "plugins/abi/" + name + " (recorded)", "built headers and library"))
            problems.append(
                "the public plugin ABI changed but its version did not (still %d.%d):\n%s\n"
                "  Fix: in %s raise PMX_ABI_MINOR for additions only (new functions, new enumerators,\n"
                "  fields taken from _pmx_reserved), or raise PMX_ABI_MAJOR and reset the minor to 0 for\n"
                "  anything else; then run `%s` and commit the new plugins/abi/postmux-abi-<major>.<minor>.txt.\n"
                "  (Before a version is released its listing may be amended instead:\n"
                "  `%s` with PMX_ABI_AMEND=1 in the environment.)"
                % (major, minor, diff.rstrip("\n"), VERSION_H, UPDATE_HINT, UPDATE_HINT))
    new = set(text.splitlines())
    for other in sorted(os.listdir(args.abi_dir)):
        m = re.match(r"postmux-abi-(\d+)\.(\d+)\.txt$", other)
        if not m or int(m.group(1)) != major or int(m.group(2)) >= minor:
            continue
        lost = [l for l in open(os.path.join(args.abi_dir, other), encoding="utf-8").read().splitlines()
                if KEPT.match(l) and "_pmx_reserved" not in l and l not in new]
        if lost:
            problems.append("ABI %d.%d is not compatible with %s (same major): these are gone or changed:\n    %s\n"
                            "  Fix: restore them, or raise PMX_ABI_MAJOR in %s."
                            % (major, minor, other, "\n    ".join(lost), VERSION_H))
    return problems


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cc", required=True)
    ap.add_argument("--lib", required=True)
    ap.add_argument("--abi-dir", required=True)
    mode = ap.add_mutually_exclusive_group(required=True)
    mode.add_argument("--check", action="store_true")
    mode.add_argument("--update", action="store_true")
    mode.add_argument("--print", action="store_true")
    ap.add_argument("headers", nargs="+")
    args = ap.parse_args()

    ver, text = listing(args)
    if args.print:
        sys.stdout.write(text)
        return 0
    path = os.path.join(args.abi_dir, "postmux-abi-%d.%d.txt" % ver)
    if args.update:
        if os.path.exists(path) and open(path, encoding="utf-8").read() != text \
                and os.environ.get("PMX_ABI_AMEND") != "1":
            sys.exit("abi-update: %s records ABI %d.%d and the headers now differ from it.\n"
                     "  Raise PMX_ABI_MINOR (additions) or PMX_ABI_MAJOR (anything else) in %s first;\n"
                     "  to amend an unreleased version instead, run it with PMX_ABI_AMEND=1."
                     % (path, ver[0], ver[1], VERSION_H))
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
        print("wrote %s" % path)
        return 0
    problems = check(args, ver, text)
    print("1..1")
    if problems:
        print("not ok 1 - public ABI matches plugins/abi/postmux-abi-%d.%d.txt" % ver)
        for p in problems:
            for line in p.splitlines():
                print("# " + line)
        return 1
    print("ok 1 - public ABI matches plugins/abi/postmux-abi-%d.%d.txt" % ver)
    return 0


if __name__ == "__main__":
    sys.exit(main())

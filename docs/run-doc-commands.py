#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-3.0-or-later
"""run-doc-commands - run every shell block the documentation marks as
tested, so the commands shown to users cannot rot.  TAP.

Documents: README.md and docs/**/*.md.  In them:

  ```sh tested        a block run by this test (bash -e -u -o pipefail)
  ```sh untested      a block shown only (needs a provider, root, a network
                      the test cannot have...); the choice must be explicit:
                      an ```sh or ```bash block with neither word fails the test.
  <!-- doc-test: config -->   before a ```json block: that block is written
                      to ./postmux.json and $POSTMUX_CONFIG points at it for
                      the document's later blocks.
  <!-- doc-test: file NAME --> before any fenced block: that block is
                      written to ./NAME (a C file of a guide, for example).
  <!-- doc-test: serve -->    start `postmux serve` (with the config so far)
                      before the next tested block; stopped at the end of
                      the document.

Each document runs in its own empty directory with its own state directory
($POSTMUX_STATE_DIR=./postmux-data, as contrib/quickstart.sh uses), `postmux` on $PATH (the build's binary), `build`
and `contrib` linked to the build and source trees (so README commands such
as build/gateway/postmux work), the build's plugin directory, and
PKG_CONFIG_PATH at the build's uninstalled postmux-plugin.pc (so
`pkg-config --cflags --libs postmux-plugin` finds the SDK being tested).  The
listener addresses 127.0.0.1:8025 and 127.0.0.1:2525 written in a document
are replaced by free loopback ports, and the state directory /var/lib/postmux by the document's
own, in both config and commands.
"""
import glob
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

SOURCE = os.path.abspath(sys.argv[1])
BUILD = os.environ.get("POSTMUX_BUILD_ROOT", os.path.join(SOURCE, "build"))
POSTMUX = os.environ["POSTMUX"]

n = 0
failed = 0


def ok(cond, name, detail=""):
    global n, failed
    n += 1
    print(("ok %d - %s" if cond else "not ok %d - %s") % (n, name), flush=True)
    if not cond:
        failed += 1
        for line in str(detail).splitlines()[-60:]:
            print("#   " + line, flush=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def parse(path):
    """Yields (kind, line number, info words, text) for blocks and directives."""
    lines = open(path, encoding="utf-8").read().split("\n")
    i = 0
    while i < len(lines):
        line = lines[i]
        m = re.match(r"\s*<!--\s*doc-test:\s*(\w+)\s*(\S*)\s*-->", line)
        if m:
            yield ("directive", i + 1, [m.group(1), m.group(2)], "")
            i += 1
            continue
        m = re.match(r"(\s*)(`{3,})(.*)$", line)
        if m:
            indent, fence, info = m.group(1), m.group(2), m.group(3).split()
            body = []
            start = i + 1
            i += 1
            while i < len(lines) and not re.match(r"\s*" + fence + r"\s*$", lines[i]):
                body.append(lines[i][len(indent):] if lines[i].startswith(indent) else lines[i].lstrip())
                i += 1
            yield ("block", start, info, "\n".join(body) + "\n")
        i += 1


class Sandbox:
    def __init__(self, doc):
        self.dir = tempfile.mkdtemp(prefix="pmx-doc-")
        self.ports = {"8025": free_port(), "2525": free_port()}
        os.makedirs(os.path.join(self.dir, ".bin"))
        os.makedirs(os.path.join(self.dir, ".home"))
        os.symlink(POSTMUX, os.path.join(self.dir, ".bin", "postmux"))
        os.symlink(BUILD, os.path.join(self.dir, "build"))
        os.symlink(os.path.join(SOURCE, "contrib"), os.path.join(self.dir, "contrib"))
        self.env = dict(os.environ)
        self.env.pop("POSTMUX_CONFIG", None)
        self.env.update({
            "HOME": os.path.join(self.dir, ".home"),
            # The quick start's default state directory, relative to where it runs.
            "POSTMUX_STATE_DIR": os.path.join(self.dir, "postmux-data"),
            "PATH": os.path.join(self.dir, ".bin") + os.pathsep + os.environ.get("PATH", ""),
            "LC_ALL": "C.UTF-8",
            "PKG_CONFIG_PATH": os.path.join(BUILD, "meson-uninstalled"),
        })
        self.serve = None
        self.serve_log = os.path.join(self.dir, ".serve.log")

    def subst(self, text):
        for doc_port, port in self.ports.items():
            text = text.replace("127.0.0.1:" + doc_port, "127.0.0.1:%d" % port)
        return text.replace("/var/lib/postmux", self.env["POSTMUX_STATE_DIR"])

    def write_config(self, text):
        path = os.path.join(self.dir, "postmux.json")
        with open(path, "w") as f:
            f.write(self.subst(text))
        self.env["POSTMUX_CONFIG"] = path

    def start_serve(self):
        log = open(self.serve_log, "ab")
        self.serve = subprocess.Popen([POSTMUX, "serve"], cwd=self.dir, env=self.env, stdout=log, stderr=log)
        log.close()
        # Readiness is a line in the log, not a time.
        while True:
            text = open(self.serve_log, errors="replace").read()
            if " ready: " in text:
                return True, text
            if self.serve.poll() is not None:
                return False, text
            time.sleep(0.05)

    def run(self, script):
        return subprocess.run(["bash", "-euo", "pipefail", "-c", self.subst(script)], cwd=self.dir,
                              env=self.env, capture_output=True, text=True, timeout=90)

    def close(self):
        if self.serve is not None:
            self.serve.send_signal(signal.SIGTERM)
            try:
                self.serve.wait(60)
            except subprocess.TimeoutExpired:
                self.serve.kill()
                self.serve.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


docs = [os.path.join(SOURCE, "README.md")] + sorted(glob.glob(os.path.join(SOURCE, "docs", "**", "*.md"),
                                                              recursive=True))
total_tested = 0
for doc in docs:
    rel = os.path.relpath(doc, SOURCE)
    items = list(parse(doc))
    if not any(k == "block" and "tested" in info for k, _, info, _ in items):
        for kind, line, info, _ in items:
            if kind == "block" and info and info[0] in ("sh", "bash", "shell") and "untested" not in info:
                ok(False, "%s:%d: shell block marked `tested` or `untested`" % (rel, line),
                   "write ```sh tested (run by this test) or ```sh untested (shown only)")
        continue
    box = Sandbox(doc)
    try:
        pending = None
        for kind, line, info, text in items:
            if kind == "directive":
                pending = info
                if pending[0] == "serve":
                    up, log = box.start_serve()
                    ok(up, "%s:%d: postmux serve starts for the document" % (rel, line), log)
                    pending = None
                continue
            if pending is not None and pending[0] == "file":
                ok(re.fullmatch(r"[\w.-]+", pending[1]) is not None, "%s:%d: doc-test file names a file" % (rel, line))
                with open(os.path.join(box.dir, pending[1]), "w") as f:
                    f.write(text)
                pending = None
                continue
            if pending is not None and pending[0] == "config":
                ok(info[:1] == ["json"], "%s:%d: doc-test config is followed by a json block" % (rel, line))
                box.write_config(text)
                pending = None
                continue
            if not info or info[0] not in ("sh", "bash", "shell"):
                continue
            if "tested" not in info:
                ok("untested" in info, "%s:%d: shell block marked `tested` or `untested`" % (rel, line),
                   "write ```sh tested (run by this test) or ```sh untested (shown only)")
                continue
            total_tested += 1
            r = box.run(text)
            ok(r.returncode == 0, "%s:%d: %s" % (rel, line, text.strip().splitlines()[0][:70]),
               "exit %d\n--- commands\n%s--- stdout\n%s--- stderr\n%s" % (r.returncode, box.subst(text),
                                                                        r.stdout, r.stderr))
    finally:
        box.close()
ok(total_tested > 0, "the documentation has tested commands (%d blocks)" % total_tested)
print("1..%d" % n)
sys.exit(1 if failed else 0)

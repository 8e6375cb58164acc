#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-3.0-or-later
"""check-man - every man page renders without a warning from mandoc's
linter (mandoc -T lint -W warning) and from groff (-ww -z).  TAP."""
import shutil
import subprocess
import sys

n = 0
failed = 0


def check(name, cmd):
    global n, failed
    n += 1
    r = subprocess.run(cmd, capture_output=True, text=True)
    out = (r.stdout + r.stderr).strip()
    if r.returncode == 0 and out == "":
        print("ok %d - %s" % (n, name))
    else:
        failed += 1
        print("not ok %d - %s (exit %d)" % (n, name, r.returncode))
        for line in out.splitlines():
            print("#   " + line)


for page in sys.argv[1:]:
    for tool, cmd in (("mandoc", ["mandoc", "-T", "lint", "-W", "warning", page]),
                      ("groff", ["groff", "-man", "-ww", "-z", "-t", page])):
        if shutil.which(cmd[0]) is None:
            n += 1
            failed += 1
            print("not ok %d - %s: %s is not installed (contrib/install-deps.sh installs it)" % (n, page, tool))
            continue
        check("%s renders without warnings (%s)" % (page, tool), cmd)
print("1..%d" % n)
sys.exit(1 if failed else 0)

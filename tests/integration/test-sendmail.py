#!/usr/bin/python3
# SPDX-License-Identifier: GPL-3.0-or-later
"""`postmux sendmail` and the binary invoked as `sendmail`: -t with the
daemon stopped then started (delivered), -f, -F, -i/-oi, Bcc removed,
exit codes from sysexits.h."""
import os
import re

from pmxtest import POSTMUX, Gateway, Tap, wait_until

tap = Tap()
EX_USAGE, EX_DATAERR, EX_CONFIG = 64, 65, 78

gw = Gateway(name="pmx-sendmail")
maildir = gw.path("Maildir")
gw.write_config({
    "transports": {"md": {"plugin": "maildir", "options": {"path": maildir, "add_delivery_headers": False}}},
    "default": "md",
    "shutdown_timeout": "10s",
})


def sendmail(*args, input=b""):
    """`postmux sendmail` on this test's config (never the system's)."""
    return gw.run("sendmail", "--config", gw.config_path, *args, input=input)


def messages():
    new = os.path.join(maildir, "new")
    out = []
    if os.path.isdir(new):
        for f in sorted(os.listdir(new)):
            with open(os.path.join(new, f), "rb") as fh:
                out.append(fh.read())
    return out


def find(tag):
    for m in messages():
        if tag.encode() in m:
            return m
    return None


def envelope_of(rcpt):
    for line in gw.run("queue", "list").stdout.decode().splitlines():
        if rcpt in line:
            qid = line.split()[0]
            show = gw.run("queue", "show", qid).stdout.decode()
            return (re.search(r"^sender:\s+<(.*)>$", show, re.M).group(1),
                    sorted(re.findall(r"^  <([^>]+)> ", show, re.M)))
    return None


try:
    # -t with the daemon stopped: queued directly, silently.
    msg = (b"From: App <app@x.test>\nTo: one@y.test, Two <two@y.test>\nCc: three@y.test\n"
           b"Bcc: secret@y.test\nSubject: t1\nMessage-ID: <t1@x.test>\nDate: Mon, 23 Nov 2026 12:00:00 +0000\n\n"
           b"hello\n.\nafter the dot\n")
    p = sendmail("-t", "-i", input=msg)
    tap.ok(p.returncode == 0 and p.stdout == b"" and p.stderr == b"", "sendmail -t -i, daemon stopped: exit 0, silent",
           p.stderr)
    tap.eq(envelope_of("one@y.test"), ("app@x.test", ["one@y.test", "secret@y.test", "three@y.test", "two@y.test"]),
           "-t: recipients from To, Cc and Bcc; sender from From:")
    gw.start()
    got = wait_until(lambda: find("<t1@x.test>"), 15)
    tap.eq(got, msg.replace(b"Bcc: secret@y.test\n", b""), "delivered once the daemon starts, Bcc: removed, the rest as sent")

    # -f, -F (a From: is added), -oi, recipient arguments, daemon running.
    p = sendmail("-oi", "-f", "bounce@x.test", "-F", "Cron Daemon", "four@y.test",
               input=b"Subject: t2\nMessage-ID: <t2@x.test>\n\nbody\n")
    tap.eq(p.returncode, 0, "sendmail -f -F -oi recipient: exit 0")
    got = wait_until(lambda: find("<t2@x.test>"), 15)
    tap.ok(got is not None and got.startswith(b'From: "Cron Daemon" <bounce@x.test>\nDate: ')
           and got.endswith(b"Subject: t2\nMessage-ID: <t2@x.test>\n\nbody\n"),
           "-F adds From: with the full name and -f address; Date: added", got)
    tap.eq(envelope_of("four@y.test"), ("bounce@x.test", ["four@y.test"]), "-f sets the envelope sender")

    # Without -i a line with a single dot ends the message.
    p = sendmail("-f", "a@x.test", "five@y.test",
               input=b"Subject: t3\nMessage-ID: <t3@x.test>\n\nkept\n.\ndropped\n")
    got = wait_until(lambda: find("<t3@x.test>"), 15)
    tap.ok(p.returncode == 0 and got is not None and got.endswith(b"\nkept\n") and b"dropped" not in got,
           "without -i, a lone dot ends the input", got)

    # Invoked as `sendmail` (argv[0]).
    link = gw.path("sendmail")
    os.symlink(os.path.abspath(POSTMUX), link)
    import subprocess
    p = subprocess.run([link, "--config", gw.config_path, "-t"], capture_output=True, timeout=60,
                       input=b"From: a@x.test\nTo: six@y.test\nSubject: t4\nMessage-ID: <t4@x.test>\n\nvia argv0\n")
    tap.eq(p.returncode, 0, "invoked as sendmail: exit 0")
    tap.ok(wait_until(lambda: find("<t4@x.test>"), 15), "invoked as sendmail: delivered")

    # Exit codes.
    before = gw.run("queue", "list").stdout
    cases = [
        ("no recipients", ["-f", "a@x.test"], b"Subject: x\n\nbody\n", EX_USAGE),
        ("-t without recipient headers", ["-t"], b"From: a@x.test\nSubject: x\n\nbody\n", EX_USAGE),
        ("unknown option", ["-Q", "r@y.test"], b"Subject: x\n\nbody\n", EX_USAGE),
        ("-bs is not supported", ["-bs"], b"", EX_USAGE),
        ("bad recipient address", ["not-an-address"], b"Subject: x\n\nbody\n", EX_DATAERR),
        ("bare CR in the message", ["r@y.test"], b"Subject: x\r\rbody\n", EX_DATAERR),
        ("empty message", ["r@y.test"], b"", EX_DATAERR),
    ]
    for name, args, data, want in cases:
        p = sendmail(*args, input=data)
        tap.ok(p.returncode == want and p.stderr.startswith(b"sendmail: "), "%s: exit %d" % (name, want),
               (p.returncode, p.stderr))
    p = gw.run("sendmail", "--config", gw.path("missing.json"), "r@y.test", input=b"Subject: x\n\nbody\n")
    tap.eq(p.returncode, EX_CONFIG, "unreadable config: exit EX_CONFIG (78)")
    tap.eq(gw.run("queue", "list").stdout, before, "failed calls queued nothing")
finally:
    gw.stop()
    gw.cleanup()
tap.done()

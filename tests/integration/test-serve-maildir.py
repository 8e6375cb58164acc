#!/usr/bin/python3
# SPDX-License-Identifier: GPL-3.0-or-later
"""1,000 messages through `postmux send` into the maildir transport: each
lands exactly once, byte for byte, and the queue says delivered."""
import concurrent.futures
import os
import re

from pmxtest import Gateway, Tap, maildir_files, maildir_ids, message, wait_until

N = 1000
tap = Tap()
gw = Gateway(name="pmx-serve")
maildir = gw.path("Maildir")
gw.write_config({
    "transports": {"local": {"plugin": "maildir", "options": {"path": maildir}, "concurrency": 4}},
    "default": "local",
})
try:
    gw.start()

    def submit(n):
        p = gw.send("sender@example.test", ["rcpt@example.test"], message(n))
        return n, p.returncode, p.stdout.decode().strip(), p.stderr.decode()

    acked = {}
    failures = []
    with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
        for n, rc, out, err in pool.map(submit, range(N)):
            if rc == 0 and re.fullmatch(r"[0-9A-F]{16}", out):
                acked[str(n)] = out
            else:
                failures.append((n, rc, out, err))
    tap.eq(len(failures), 0, "every `postmux send` answered with a queue id")
    if failures:
        tap.comment(repr(failures[:3]))
    tap.eq(len(set(acked.values())), N, "1000 distinct queue ids")

    wait_until(lambda: len(maildir_files(maildir)) >= N, 120)
    ids = maildir_ids(maildir)
    tap.eq(len(ids), N, "1000 files in Maildir/new")
    tap.eq(sorted(ids, key=int), [str(i) for i in range(N)], "each message landed exactly once")
    tap.eq(os.listdir(os.path.join(maildir, "tmp")), [], "Maildir/tmp is empty")

    # One file, checked byte for byte: delivery headers + the message with LF ends.
    qid = acked["7"]
    body = None
    for path in maildir_files(maildir):
        with open(path, "rb") as f:
            data = f.read()
        if b"<msg-7@example.test>" in data:
            body = data
    tap.eq(body, b"Return-Path: <sender@example.test>\nDelivered-To: rcpt@example.test\n" + message(7),
           "message 7 is stored byte for byte, with Return-Path and Delivered-To")

    log = gw.log()
    line = [l for l in log.splitlines() if qid + ": to=<rcpt@example.test>" in l]
    tap.eq(len(line), 1, "one delivery log line carries the queue id")
    tap.ok(line and "transport=local" in line[0] and "status=delivered (250 2.0.0" in line[0],
           "the delivery line names the transport and the reply", line)

    p = gw.run("queue", "list", "--state", "delivered")
    tap.ok(p.stdout.decode().rstrip().endswith("\n%d messages" % N), "queue list --state delivered counts 1000",
           p.stdout.decode()[-300:])
    p = gw.run("queue", "list", "--state", "queued")
    tap.ok(p.stdout.decode().rstrip().endswith("\n0 messages"), "nothing left queued", p.stdout.decode()[-300:])

    rc = gw.stop()
    tap.eq(rc, 0, "SIGTERM: postmux serve exits 0")
    tap.ok("stopped" in gw.log(), "the daemon logs that it stopped")
finally:
    gw.cleanup()
tap.done()

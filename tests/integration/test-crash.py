#!/usr/bin/python3
# SPDX-License-Identifier: GPL-3.0-or-later
"""Crash safety: submit continuously, kill -9 the daemon mid-stream, start
it again: every acknowledged message is delivered.  Duplicates may only
come from messages in flight at the kill; they are counted."""
import collections
import os
import re
import signal
import threading
import time

from pmxtest import Gateway, Tap, maildir_ids, message, wait_until

tap = Tap()
gw = Gateway(name="pmx-crash")
maildir = gw.path("Maildir")
gw.write_config({
    "transports": {"local": {"plugin": "maildir", "options": {"path": maildir}, "concurrency": 4}},
    "default": "local",
})

acked = {}          # message number -> queue id, for every "queued" answer
unacked = []        # (number, stderr) of submissions that got no id
lock = threading.Lock()
stop = threading.Event()
counter = iter(range(10 ** 9))


def submitter():
    while not stop.is_set():
        with lock:
            n = next(counter)
        p = gw.send("sender@example.test", ["rcpt@example.test"], message(n))
        out = p.stdout.decode().strip()
        with lock:
            if p.returncode == 0 and re.fullmatch(r"[0-9A-F]{16}", out):
                acked[str(n)] = out
            else:
                unacked.append((n, p.stderr.decode().strip()))


try:
    gw.start()
    threads = [threading.Thread(target=submitter) for _ in range(4)]
    for t in threads:
        t.start()
    wait_until(lambda: len(acked) >= 300, 60)
    in_flight = len(maildir_ids(maildir))
    gw.proc.send_signal(signal.SIGKILL)
    gw.proc.wait()
    tap.comment("killed the daemon after %d acknowledged submissions (%d delivered so far)"
                % (len(acked), in_flight))
    # Submissions go on while the daemon is down: they are queued directly.
    time.sleep(1.0)
    gw.stop(signal.SIGKILL)
    gw.start()
    time.sleep(1.0)
    stop.set()
    for t in threads:
        t.join()

    total = len(acked)
    wait_until(lambda: set(acked) <= set(maildir_ids(maildir)), 120)
    ids = maildir_ids(maildir)
    counts = collections.Counter(ids)
    lost = sorted(set(acked) - set(counts), key=int)
    dups = sorted(n for n, c in counts.items() if c > 1)
    extra = sorted(set(counts) - set(acked), key=int)
    tap.comment("acknowledged: %d, unacknowledged: %d, delivered files: %d, duplicates: %d, "
                "delivered without an acknowledgement: %d" % (total, len(unacked), len(ids), len(dups), len(extra)))
    tap.ok(total >= 300, "at least 300 submissions were acknowledged across the kill")
    tap.eq(lost, [], "every acknowledged message was delivered")
    # In flight at the kill: at most the leased window (2 x concurrency).
    tap.ok(len(dups) <= 8, "duplicates only from messages in flight at the kill (<= 8)", dups)
    tap.ok(all(c <= 2 for c in counts.values()), "no message delivered more than twice")
    # Unacknowledged submissions were refused with a reason, never silently dropped.
    tap.ok(all(err for _, err in unacked), "every unacknowledged submission printed why", unacked[:3])
    tap.eq(gw.stop(), 0, "restarted daemon exits 0 on SIGTERM")
finally:
    stop.set()
    gw.cleanup()
tap.done()

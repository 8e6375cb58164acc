#!/usr/bin/python3
# SPDX-License-Identifier: GPL-3.0-or-later
"""Crash safety: submit continuously, kill -9 the daemon mid-stream, start
it again: every acknowledged message is delivered.  Duplicates may only
come from messages in flight at the kill; they are counted.

Each delivery takes 20 ms (the scripted transport's delay_ms) so that the
kill lands while sends are in flight, as it would on a real relay."""
import collections
import re
import signal
import threading
import time

from pmxtest import Gateway, Tap, message, scripted_log, wait_until

CONCURRENCY = 4
tap = Tap()
gw = Gateway(name="pmx-crash")
log = gw.path("deliveries.log")
gw.write_config({
    "transports": {"t": {"plugin": "scripted", "options": {"log": log, "delay_ms": 20},
                         "concurrency": CONCURRENCY}},
    "default": "t",
})

acked = {}          # queue id -> message number, for every "queued" answer
unacked = []        # (number, stderr) of submissions that got no id
lock = threading.Lock()
stop = threading.Event()
counter = iter(range(10 ** 9))


def submitter():
    while not stop.is_set():
        with lock:
            n = next(counter)
        p = gw.send("sender@example.test", ["rcpt%d@example.test" % n], message(n))
        out = p.stdout.decode().strip()
        with lock:
            if p.returncode == 0 and re.fullmatch(r"[0-9A-F]{16}", out):
                acked[out] = n
            else:
                unacked.append((n, p.stderr.decode().strip()))


def delivered():
    return [l[2] for l in scripted_log(log) if l[5] == "delivered"]


try:
    gw.start()
    threads = [threading.Thread(target=submitter) for _ in range(4)]
    for t in threads:
        t.start()
    wait_until(lambda: len(acked) >= 300, 60)
    before = len(delivered())
    gw.proc.send_signal(signal.SIGKILL)
    gw.proc.wait()
    tap.comment("killed the daemon after %d acknowledged submissions, %d delivered so far"
                % (len(acked), before))
    # Submissions go on while the daemon is down: they are queued directly.
    listing = gw.run("queue", "list", "--state", "inflight").stdout.decode()
    leased = int(re.search(r"^(\d+) messages?$", listing, re.M).group(1))
    time.sleep(1.0)
    gw.stop(signal.SIGKILL)
    gw.start()
    released = re.search(r"(\d+) messages? in flight when postmux last stopped returned to the queue", gw.log())
    time.sleep(1.0)
    stop.set()
    for t in threads:
        t.join()

    wait_until(lambda: set(acked) <= set(delivered()), 120)
    counts = collections.Counter(delivered())
    lost = sorted(set(acked) - set(counts))
    dups = sorted(q for q, c in counts.items() if c > 1)
    extra = sorted(set(counts) - set(acked))
    tap.comment("acknowledged: %d, unacknowledged: %d, deliveries: %d, leased at the kill and returned: %s, "
                "duplicates: %d, delivered without an acknowledgement: %d"
                % (len(acked), len(unacked), sum(counts.values()), leased,
                   len(dups), len(extra)))
    tap.ok(len(acked) >= 300, "at least 300 submissions were acknowledged across the kill")
    tap.eq(lost, [], "every acknowledged message was delivered")
    tap.eq(int(released.group(1)) if released else 0, leased,
           "the restarted daemon returned exactly the killed one's leases (%d) to the queue" % leased)
    # Only a send in progress at the kill can be repeated: one per worker.
    tap.ok(len(dups) <= CONCURRENCY, "duplicates only from sends in flight at the kill (<= %d)" % CONCURRENCY, dups)
    tap.ok(all(c <= 2 for c in counts.values()), "no message delivered more than twice")
    tap.ok(all(err for _, err in unacked), "every unacknowledged submission printed why", unacked[:3])
    tap.eq(gw.stop(), 0, "the restarted daemon exits 0 on SIGTERM")
finally:
    stop.set()
    gw.cleanup()
tap.done()

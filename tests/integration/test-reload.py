#!/usr/bin/python3
# SPDX-License-Identifier: GPL-3.0-or-later
"""SIGHUP switches the active transport for every message not yet in
flight; an invalid config is refused and the running one stays."""
import collections
import signal

from pmxtest import Gateway, Tap, message, scripted_log, wait_until

N = 40
tap = Tap()
gw = Gateway(name="pmx-reload")
log = gw.path("deliveries.log")


def config(default, extra=None):
    c = {
        "transports": {
            "A": {"plugin": "scripted", "options": {"log": log}},
            "B": {"plugin": "scripted", "options": {"log": log}},
        },
        "default": default,
    }
    c.update(extra or {})
    return c


def qids(start, count):
    out = []
    for n in range(start, start + count):
        p = gw.send("s@example.test", ["r%d@x.test" % n], message(n))
        out.append(p.stdout.decode().strip())
    return out


def delivered():
    return {l[2]: l[1] for l in scripted_log(log) if l[5] == "delivered"}


try:
    gw.write_config(config("A"))
    gw.start()
    before = qids(0, N)
    wait_until(lambda: set(before) <= set(delivered()), 20)
    d = delivered()
    tap.eq(collections.Counter(d[q] for q in before if q in d), {"A": N}, "before the reload: all via A")

    gw.write_config(config("B"))
    gw.send_signal(signal.SIGHUP)
    gw.wait_log("config reloaded: default transport B", 10)
    after = qids(N, N)
    wait_until(lambda: set(after) <= set(delivered()), 20)
    d = delivered()
    tap.eq(collections.Counter(d[q] for q in after if q in d), {"B": N}, "after the reload: all via B")
    tap.eq(len(scripted_log(log)), 2 * N, "every message delivered exactly once")

    # An invalid config is refused with its reasons; B stays active.
    gw.write_config(config("C"))
    gw.send_signal(signal.SIGHUP)
    gw.wait_log("reload refused, the running config stays", 10)
    tap.ok('default transport \\"C\\" is not defined' in gw.log() or 'default transport "C" is not defined' in gw.log(),
           "the refusal names the problem", gw.log()[-800:])
    last = qids(2 * N, 5)
    wait_until(lambda: set(last) <= set(delivered()), 20)
    d = delivered()
    tap.eq(collections.Counter(d[q] for q in last if q in d), {"B": 5}, "after a refused reload: still via B")

    # `postmux reload` (the control socket) behaves like SIGHUP.
    gw.write_config(config("A"))
    p = gw.run("reload")
    tap.eq(p.returncode, 0, "postmux reload exits 0")
    gw.wait_log("config reloaded: default transport A", 10)
    gw.write_config(config("C"))
    p = gw.run("reload")
    tap.eq(p.returncode, 1, "postmux reload of an invalid config exits 1")
    tap.ok('default transport "C" is not defined' in p.stderr.decode(), "and says why", p.stderr.decode())
    tap.eq(gw.stop(), 0, "postmux serve exits 0")
finally:
    gw.cleanup()
tap.done()

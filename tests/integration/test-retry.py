#!/usr/bin/python3
# SPDX-License-Identifier: GPL-3.0-or-later
"""Retries on schedule, dead letters with their reason, expiry, failover."""
import re
import time

from pmxtest import Gateway, Tap, message, scripted_log, wait_until

tap = Tap()
gw = Gateway(name="pmx-retry")
log_a = gw.path("a.log")
log_b = gw.path("b.log")
log_rl = gw.path("rl.log")
log_rl2 = gw.path("rl2.log")
gw.write_config({
    "transports": {
        "a": {"plugin": "scripted", "options": {"log": log_a}},
        "down": {"plugin": "scripted", "options": {"log": log_a, "open_fails": True}},
        "b": {"plugin": "scripted", "options": {"log": log_b}},
        "rl": {"plugin": "scripted", "concurrency": 1, "options": {"log": log_rl}},
        "rl2": {"plugin": "scripted", "concurrency": 1, "options": {"log": log_rl2}},
    },
    "default": "a",
    "routes": [
        {"name": "fo", "match": {"sender_domain": ["failover.test"]}, "transports": ["down", "b"]},
        {"name": "rl", "match": {"sender_domain": ["ratelimit.test"]}, "transports": ["rl"]},
        {"name": "rlf", "match": {"sender_domain": ["ratelimit-fo.test"]}, "transports": ["rl2", "b"]},
    ],
    "retry": {"initial_delay": "1s", "multiplier": 2, "max_delay": "1h", "jitter": 0, "max_age": "6s"},
})


def qid_of(p):
    return p.stdout.decode().strip()


def show(qid):
    return gw.run("queue", "show", qid).stdout.decode()


try:
    gw.start()

    # flaky2: deferred twice, delivered on the third attempt, 1 s then 2 s apart.
    q1 = qid_of(gw.send("s@example.test", ["flaky2@x.test"], message(1)))
    ok = wait_until(lambda: [l for l in scripted_log(log_a) if l[2] == q1 and l[5] == "delivered"], 20)
    tries = [l for l in scripted_log(log_a) if l[2] == q1]
    tap.eq([(l[3], l[5]) for l in tries], [(1, "deferred"), (2, "deferred"), (3, "delivered")],
           "a temporary failure is retried until it is delivered")
    if len(tries) == 3:
        gap1, gap2 = tries[1][0] - tries[0][0], tries[2][0] - tries[1][0]
        tap.comment("gaps between attempts: %.3f s, %.3f s (schedule: 1 s, 2 s)" % (gap1, gap2))
        tap.ok(1.0 <= gap1 < 2.0, "second attempt 1 s after the first (initial_delay)")
        tap.ok(2.0 <= gap2 < 3.0, "third attempt 2 s after the second (multiplier 2)")
    out = wait_until(lambda: "state:        delivered" in show(q1) and show(q1), 5)
    tap.ok(out and "attempts:     3" in out, "queue show: delivered after 3 attempts", out)

    # permfail: bounced at once, reason kept and shown.
    q2 = qid_of(gw.send("s@example.test", ["permfail@x.test", "ok@x.test"], message(2)))
    out = wait_until(lambda: "state:        bounced" in show(q2) and show(q2), 10)
    tap.ok(out, "a permanent failure dead-letters the message", show(q2))
    tap.ok(out and "<permfail@x.test> bounced (550 5.1.1 scripted: no such user)" in out,
           "queue show gives the bounced recipient's reply", out)
    tap.ok(out and "<ok@x.test> delivered (250 2.0.0 scripted: ok)" in out,
           "the other recipient was delivered", out)
    tap.eq(len([l for l in scripted_log(log_a) if l[2] == q2]), 2, "one attempt, no retry of a bounce")
    tap.ok(out and "last reply:   delivered 1 (250 2.0.0 scripted: ok); bounced 1 (550 5.1.1 scripted: no such user)\n" in out,
           "the last reply sums up the attempt", out)

    # tempfail forever: expires after max_age (6 s) with the last reply.
    q3 = qid_of(gw.send("s@example.test", ["tempfail@x.test"], message(3)))
    out = wait_until(lambda: "state:        expired" in show(q3) and show(q3), 20)
    tap.ok(out, "a message deferred past retry.max_age expires", show(q3))
    tap.ok(out and re.search(r"<tempfail@x\.test> expired \(451 4\.3\.0 scripted: try again later\)", out),
           "queue show gives the expired recipient's last reply", out)

    # failover: the first transport cannot connect, the second delivers at once.
    t0 = time.time()
    q4 = qid_of(gw.send("app@failover.test", ["r@x.test"], message(4)))
    ok = wait_until(lambda: [l for l in scripted_log(log_b) if l[2] == q4 and l[5] == "delivered"], 10)
    tap.ok(ok, "a temporary whole-attempt failure fails over to the next transport of the route")
    out = show(q4)
    tap.ok("transport:    b" in out and "attempts:     2" in out, "attempt log: down, then b", out)
    tap.ok("cannot open a session: connection refused (scripted)" in out,
           "the first attempt's failure is in the attempt log", out)
    tap.ok(ok and ok[0][0] - t0 < 1.0, "failover does not wait for the back-off")

    # retry by hand: a bounced message comes back and is tried again.
    rc = gw.run("queue", "retry", q2).returncode
    tap.eq(rc, 0, "queue retry exits 0")
    wait_until(lambda: len([l for l in scripted_log(log_a) if l[2] == q2]) >= 3, 10)
    tap.eq([l[5] for l in scripted_log(log_a) if l[2] == q2 and l[4] == "permfail@x.test"],
           ["bounced", "bounced"], "queue retry re-attempts only the bounced recipient")
    # A rate limit pauses the whole transport: messages routed to it wait
    # untried (no attempt counted) until the pause ends, then all go.
    qr = qid_of(gw.send("app@ratelimit.test", ["ratelimit@x.test"], message(5)))
    first = wait_until(lambda: [l for l in scripted_log(log_rl) if l[2] == qr], 10)
    later = [qid_of(gw.send("app@ratelimit.test", ["ok%d@x.test" % i], message(6 + i))) for i in range(3)]
    listing = gw.run("queue", "list").stdout.decode()
    tap.ok(re.search(r"^transport rl: rate limited until \S+ \(scripted: 429 Too Many Requests, Retry-After: 2\)$",
                     listing, re.M), "queue list shows the paused transport and why", listing)
    ok = wait_until(lambda: len([l for l in scripted_log(log_rl) if l[5] == "delivered"]) == 4, 15)
    rows = scripted_log(log_rl)
    tap.ok(ok, "after the pause every message is delivered", rows)
    if first and ok:
        t_pause = first[0][0]
        starts = [min(l[0] for l in rows if l[2] == q) for q in later]
        tap.comment("first attempts after the pause began: %s s" % ", ".join("%.3f" % (t - t_pause) for t in starts))
        tap.ok(all(t - t_pause >= 2.0 for t in starts), "no message is tried on the paused transport before the 2 s pause ends")
        tap.eq([[l[3] for l in rows if l[2] == q] for q in later], [[1], [1], [1]],
               "messages held by the pause are tried once, as their first attempt")
        tap.eq([(l[3], l[5]) for l in rows if l[2] == qr], [(1, "ratelimited"), (2, "delivered")],
               "the rate-limited message is retried after the pause and delivered")
    listing = gw.run("queue", "list").stdout.decode()
    tap.ok("rate limited" not in listing, "once the pause is over queue list no longer shows it", listing)

    # With a failover in the route, a paused transport's messages go to
    # the next transport at once instead of waiting for the pause.
    qf = qid_of(gw.send("app@ratelimit-fo.test", ["ratelimit@x.test"], message(10)))
    wait_until(lambda: [l for l in scripted_log(log_rl2) if l[2] == qf], 10)
    more = [qid_of(gw.send("app@ratelimit-fo.test", ["ok%d@x.test" % i], message(11 + i))) for i in range(3)]
    ok = wait_until(lambda: len([l for l in scripted_log(log_b) if l[2] in more + [qf] and l[5] == "delivered"]) == 4, 15)
    rows_b = scripted_log(log_b)
    tap.ok(ok, "paused transport with a failover: every message is delivered by the failover", rows_b)
    tap.eq([(l[2], l[5]) for l in scripted_log(log_rl2)], [(qf, "ratelimited")],
           "the paused transport is not tried again for the messages that came during its pause")
    tap.eq(sorted(l[3] for l in rows_b if l[2] in more), [1, 1, 1],
           "messages moved to the failover by the pause are tried there as their first attempt")

    tap.eq(gw.stop(), 0, "postmux serve exits 0")
finally:
    gw.cleanup()
tap.done()

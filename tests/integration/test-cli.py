#!/usr/bin/python3
# SPDX-License-Identifier: GPL-3.0-or-later
"""The `postmux` command line: help, version, config check, send errors,
queue actions, the embedded default, start-up refusal, graceful stop."""
import json
import os
import re
import signal
import subprocess
import time

from pmxtest import POSTMUX, Gateway, Tap, maildir_files, message, scripted_log, wait_until

tap = Tap()


def run(*args, env=None, input=None):
    return subprocess.run([POSTMUX] + list(args), capture_output=True, input=input, env=env, timeout=60)


p = run("version")
tap.ok(p.returncode == 0 and re.fullmatch(r"postmux \d+\.\d+\.\d+ \(plugin ABI \d+\.\d+\)\n", p.stdout.decode()),
       "postmux version", p.stdout)
for cmd in ("serve", "send", "queue", "config", "reload"):
    p = run(cmd, "--help")
    tap.ok(p.returncode == 0 and "Usage:" in p.stdout.decode() and ("postmux " + cmd) in p.stdout.decode(),
           "postmux %s --help" % cmd, p.stdout.decode() + p.stderr.decode())
p = run("frobnicate")
tap.ok(p.returncode == 2 and 'unknown command "frobnicate"' in p.stderr.decode(), "an unknown command exits 2")

gw = Gateway(name="pmx-cli")
try:
    log = gw.path("s.log")
    gw.write_config({
        "transports": {"t": {"plugin": "scripted", "options": {"log": log}, "concurrency": 1}},
        "default": "t",
        "shutdown_timeout": "20s",
    })
    p = gw.run("config", "check")
    tap.ok(p.returncode == 0 and "OK — 1 transport, 0 routes, default transport t" in p.stdout.decode(),
           "config check of a good config", p.stdout.decode() + p.stderr.decode())

    bad = gw.path("bad.json")
    with open(bad, "w") as f:
        json.dump({"transports": {"t": {"plugin": "scripted", "options": {"log": 5, "colour": "red"}},
                                  "u": {"plugin": "nosuchplugin"}},
                   "default": "v", "routes": [{"transports": ["t", "w"]}]}, f, indent=1)
    p = run("config", "check", "--config", bad)
    out = p.stdout.decode()
    tap.eq(p.returncode, 1, "config check of a bad config exits 1")
    tap.ok("5 problems" in out, "it counts every problem", out)
    tap.ok(re.search(r'line \d+: /default: default transport "v" is not defined', out), "undefined default, with its line", out)
    tap.ok('/routes/0/transports/1: route "routes[0]" names transport "w"' in out, "route naming an unknown transport", out)
    tap.ok(re.search(r"line \d+: /transports/t/options/log: expected string, found integer 5 \(type\)", out),
           "plugin options are checked against the plugin's schema", out)
    tap.ok(re.search(r'line \d+: /transports/t/options/colour: unknown property "colour"', out), "unknown plugin option, with its line", out)
    tap.ok("/transports/u/plugin:" in out and "pmx-nosuchplugin.so" in out, "a missing plugin names the file", out)

    # doctor and send --test talk to one transport directly.
    p = gw.run("doctor", "t")
    tap.eq((p.returncode, p.stdout.decode()),
           (0, "transport t (scripted plugin)\n  warn  verdict  the scripted plugin has no checks of its own\nresult: ok, with warnings\n"),
           "doctor on a transport without checks")
    p = gw.run("doctor", "nope")
    tap.ok(p.returncode == 1 and 'no transport "nope"' in p.stderr.decode() and "transports: t" in p.stderr.decode(),
           "doctor names the transports that exist", p.stderr)
    p = gw.run("send", "--test", "--transport", "t", "--from", "a@x.test", "--to", "ok@y.test,permfail@y.test")
    tap.eq((p.returncode, p.stdout.decode()),
           (1, "<ok@y.test> delivered (250 2.0.0 scripted: ok)\n<permfail@y.test> bounced (550 5.1.1 scripted: no such user)\n"
               "result: NOT delivered\n"), "send --test prints each recipient's reply")
    tap.eq([(l[2], l[4]) for l in scripted_log(log)], [("TEST", "ok@y.test"), ("TEST", "permfail@y.test")],
           "send --test went straight to the transport")
    tap.ok(not os.path.exists(os.path.join(gw.state, "queue.db")), "and did not touch the queue")
    os.unlink(log)

    # send refuses bad envelopes before queueing anything.
    p = gw.run("send", "--from", "a@x.test", input=b"Subject: x\n\nhi\n")
    tap.ok(p.returncode == 2 and "no recipients" in p.stderr.decode(), "send without --to", p.stderr)
    p = gw.run("send", "--from", "a@x.test", "--to", "not an address", input=b"Subject: x\n\nhi\n")
    tap.ok(p.returncode == 2 and "is not an address" in p.stderr.decode(), "send with a bad address", p.stderr)
    p = gw.run("send", "--from", "a@x.test", "--to", "b@y.test", input=b"Subject: x\r\rbad\n")
    tap.ok(p.returncode == 1 and "bare CR" in p.stderr.decode(), "send refuses a bare CR", p.stderr)

    # No daemon: the message is queued directly and delivered when it starts.
    p = gw.send("a@x.test", ["early@y.test"], message(1))
    early = p.stdout.decode().strip()
    tap.ok(p.returncode == 0 and re.fullmatch(r"[0-9A-F]{16}", early) and "no daemon is running" in p.stderr.decode(),
           "send with no daemon queues directly and says so", p.stderr)
    p = gw.run("queue", "show", early)
    tap.ok("state:        queued" in p.stdout.decode() and "<early@y.test> queued" in p.stdout.decode(),
           "queue show of a queued message", p.stdout.decode())
    gw.start()
    tap.ok(wait_until(lambda: [l for l in scripted_log(log) if l[2] == early], 10), "delivered once the daemon starts")

    # queue delete / retry / show errors.
    p = gw.run("queue", "show", "FFFFFFFFFFFFFFFF")
    tap.ok(p.returncode == 1 and "FFFFFFFFFFFFFFFF" in p.stderr.decode(), "queue show of an unknown id", p.stderr)
    q = gw.send("a@x.test", ["permfail@y.test"], message(2)).stdout.decode().strip()
    wait_until(lambda: "state:        bounced" in gw.run("queue", "show", q).stdout.decode(), 10)
    p = gw.run("queue", "list", "--state", "bounced")
    tap.ok(q in p.stdout.decode() and p.stdout.decode().rstrip().endswith("1 message"), "queue list --state bounced", p.stdout)
    p = gw.run("queue", "delete", q)
    tap.ok(p.returncode == 0 and gw.run("queue", "show", q).returncode == 1, "queue delete removes it")
    p = gw.run("queue", "list", "--state", "sideways")
    tap.ok(p.returncode == 2 and 'unknown state "sideways"' in p.stderr.decode(), "queue list with a bad state")

    # A second daemon on the same state dir is refused.
    p = subprocess.run([POSTMUX, "serve", "--config", gw.config_path], capture_output=True, timeout=30)
    tap.ok(p.returncode == 1 and "another postmux daemon already answers" in p.stderr.decode(),
           "a second daemon on the same state dir is refused", p.stderr)

    # SIGTERM lets the in-flight send finish, and exits 0.
    q = gw.send("a@x.test", ["slow@y.test"], message(3)).stdout.decode().strip()
    wait_until(lambda: "state:        inflight" in gw.run("queue", "show", q).stdout.decode(), 10)
    time.sleep(0.3)
    rc = gw.stop(signal.SIGTERM)
    tap.eq(rc, 0, "SIGTERM with a send in flight exits 0")
    tap.ok([l for l in scripted_log(log) if l[2] == q and l[5] == "delivered"], "the in-flight send finished first")
    p = gw.run("queue", "show", q)
    tap.ok("state:        delivered" in p.stdout.decode(), "and was recorded as delivered", p.stdout.decode())
finally:
    gw.cleanup()

# A plugin the config uses that cannot load stops start-up, naming file and cause.
gw = Gateway(name="pmx-cli-broken")
try:
    gw.write_config({"transports": {"t": {"plugin": "nosuchplugin"}}, "default": "t"})
    gw.start(wait=False)
    rc = gw.proc.wait(30)
    tap.eq(rc, 1, "start-up with an unusable plugin exits 1")
    tap.ok('transport "t"' in gw.log() and "pmx-nosuchplugin.so" in gw.log(), "the message names the transport and the file", gw.log())
finally:
    gw.cleanup()

# A broken plugin or transport nothing uses is a warning, not a refusal.
gw = Gateway(name="pmx-cli-unused")
try:
    gw.write_config({"transports": {"t": {"plugin": "scripted"}, "spare": {"plugin": "nosuchplugin"}},
                     "default": "t"})
    gw.start()
    log = gw.log()
    tap.ok('warning: transport "spare" is not used by any route and cannot be built' in log and "pmx-nosuchplugin.so" in log,
           "an unused transport whose plugin is missing is a warning", log)
    tap.ok(re.search(r"warning: plugin not usable \(no transport uses it\): plugin \S+/pmx-abi-major\.so", log),
           "a broken plugin file in the plugin path is a warning", log)
    tap.eq(gw.stop(), 0, "and the daemon runs and stops normally")
finally:
    gw.cleanup()

# The embedded default: no config at all, Maildir under the state dir.
gw = Gateway(name="pmx-cli-default")
try:
    env = dict(os.environ, POSTMUX_STATE_DIR=gw.state)
    env.pop("POSTMUX_CONFIG", None)
    proc = subprocess.Popen([POSTMUX, "serve"], stdout=subprocess.DEVNULL, stderr=open(gw.log_path, "wb"), env=env)
    gw.proc = proc
    gw.wait_log("ready", 30)
    tap.ok("(built-in default)" in gw.log() and "local (maildir, 2 workers)" in gw.log(), "serve with no config runs the built-in default", gw.log())
    p = run("send", "--from", "me@example.test", "--to", "you@example.test", "--subject", "hello", "--body", "first message", env=env)
    tap.ok(p.returncode == 0, "send --subject --body", p.stderr)
    files = wait_until(lambda: maildir_files(os.path.join(gw.state, "Maildir")), 10)
    body = open(files[0], "rb").read().decode() if files else ""
    tap.ok("Subject: hello\n" in body and "\nfirst message\n" in body, "the composed message is in <state>/Maildir/new", body)
    tap.eq(gw.stop(), 0, "and it stops cleanly")
finally:
    gw.cleanup()
tap.done()

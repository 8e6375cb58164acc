#!/usr/bin/python3
# SPDX-License-Identifier: GPL-3.0-or-later
"""Benchmark (issue 4): ingress through the SMTP listener and the HTTP API,
side by side with a Postfix relay in the same run.

Full run (about 15-25 minutes on 2 cores, about 40 with BENCH_REPEAT=3; needs root
for the Postfix part):
    meson test -C build --benchmark --suite bench bench-ingress --verbose
or directly:
    POSTMUX=build/gateway/postmux POSTMUX_PLUGIN_PATH=build/transports \\
        /usr/bin/python3 tests/bench/bench-ingress.py
Quick run:
    BENCH_N=2000 BENCH_SIZES=1024 BENCH_SESSIONS=8 BENCH_MODES=conn BENCH_HTTP_CONNS=32 \\
    BENCH_HTTP_SECS=5 POSTMUX=... POSTMUX_PLUGIN_PATH=... /usr/bin/python3 tests/bench/bench-ingress.py
Env: BENCH_N (20000), BENCH_SIZES ("1024,10240"), BENCH_SESSIONS ("8,32"),
     BENCH_MODES ("conn,persist": smtp-source without / with -d),
     BENCH_RELAY_WORKERS (16: the smtp transport's concurrency),
     BENCH_POSTFIX (1; 0 skips the Postfix side), BENCH_RAW (1; 0 skips the
     raw ceiling run), BENCH_HTTP (1),
     BENCH_HTTP_CONNS ("8,32,128"), BENCH_HTTP_SECS (15), BENCH_PAUSE (4 s),
     BENCH_REPEAT (1: Postmux/Postfix rounds per cell; with more, each
     round is printed and the summary gives the median rates, the median
     of the rounds' ratios and every round's ratio).

1. SMTP: Postfix's smtp-source -> `postmux serve` (listen.smtp on a free
   loopback port, auth.networks 127.0.0.0/8) -> smtp transport -> Postfix's
   smtp-sink -M N.  smtp-source and smtp-sink come from the postfix .deb,
   downloaded and extracted (benchlib.PostfixTools), not installed.  Each
   cell gets a fresh daemon and state dir.  Times: t0 -> smtp-source exits
   (accepted msgs/s: each "250 queued as" is sent only after the durable
   commit) -> smtp-sink has all N and exits (relay msgs/s).  Daemon CPU is
   utime+stime from /proc/<pid>/stat over t0..sink exit, per message.  The
   queue is checked afterwards: N messages, N-1 delivered (smtp-sink -M
   exits on the N-th final dot before answering it, so that one is
   deferred; bench-baselines.md 2.2 has the same quirk for Postfix).
2. Postfix: the same load through a Postfix relay configured as in
   shared/reference/bench-baselines.md 2.1 (the same postconf lines and
   master.cf listener, chroot=y kept), but as a private instance: its own
   config, queue and data directories under this script's scratch dir
   (`postfix -c DIR start`), its log in DIR/postfix.log, listener and
   relayhost on free loopback ports; the system's /etc/postfix is not
   touched and no system instance is started.  If the postfix package is
   missing it is installed non-interactively (debconf "Local only") and
   `systemctl disable postfix` is run, as bench-baselines did.  The
   instance is stopped and removed at the end.  Postfix CPU per message is
   master's tree: its utime+stime+cutime+cstime plus its live children.
   Between runs: `postsuper -d ALL deferred` (the one -M message) and a
   pause so cached SMTP connections (2 s) expire.  Before every timed run
   (either side) the script calls sync(2) and waits, up to 20 s, until the
   CPUs were less than 15% busy over half a second (benchlib.wait_quiet()),
   so neither side starts while the previous run's leftovers (dirty queue
   files still being written back, a Postfix queue manager, a checkpoint)
   still use the disk or the CPUs.
   Each (size, sessions, mode) cell runs Postmux and Postfix back to back
   (BENCH_REPEAT times), Postmux first in the 1st, 3rd, ... cell and Postfix
   first in the others, and alternately within a cell (the second run
   inherits the first one's TIME_WAIT sockets and dirty pages), and prints
   both relay rates and their ratio (issue 4 target: >= 5x).  Then the raw ceiling: the same smtp-source load straight into
   smtp-sink, no MTA in between -- what loopback TCP and the two tools allow
   on this machine -- and the share of it Postmux reached and 5x Postfix
   would need.
3. HTTP: wrk (Debian package `wrk`, installed if missing) POSTs a small
   JSON message to /v1/messages with a Bearer key for BENCH_HTTP_SECS at
   each connection count; the daemon relays to an smtp-sink meanwhile.
   Printed: requests/s, latency p50/p99, the 202s wrk saw, and how many
   messages the queue gained (GET /v1/health, every state) -- at least
   the number of 202s, since each 202 is written only after the commit.
"""
import hashlib
import json
import os
import re
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "integration"))
sys.path.insert(0, os.path.dirname(__file__))
from pmxtest import POSTMUX, Gateway  # noqa: E402
import benchlib  # noqa: E402

N = int(os.environ.get("BENCH_N", "20000"))
SIZES = [int(s) for s in os.environ.get("BENCH_SIZES", "1024,10240").split(",")]
SESSIONS = [int(s) for s in os.environ.get("BENCH_SESSIONS", "8,32").split(",")]
MODES = os.environ.get("BENCH_MODES", "conn,persist").split(",")
RELAY_WORKERS = int(os.environ.get("BENCH_RELAY_WORKERS", "16"))
DO_POSTFIX = os.environ.get("BENCH_POSTFIX", "1") != "0"
DO_HTTP = os.environ.get("BENCH_HTTP", "1") != "0"
DO_RAW = os.environ.get("BENCH_RAW", "1") != "0"
HTTP_CONNS = [int(c) for c in os.environ.get("BENCH_HTTP_CONNS", "8,32,128").split(",")]
HTTP_SECS = int(os.environ.get("BENCH_HTTP_SECS", "15"))
PAUSE = float(os.environ.get("BENCH_PAUSE", "4"))
REPEAT = int(os.environ.get("BENCH_REPEAT", "1"))

# The postconf lines of bench-baselines.md 2.1, verbatim but for relayhost's port.
POSTFIX_BASELINE = [
    'myhostname = gw.perf.test', 'mydomain = perf.test', 'myorigin = $myhostname',
    'inet_interfaces = loopback-only', 'inet_protocols = ipv4', 'mynetworks = 127.0.0.0/8',
    'mydestination =', 'local_recipient_maps =', 'local_transport = error:local delivery disabled',
    'default_transport = smtp', 'relay_transport = relay', 'relayhost = [127.0.0.1]:%(sink)d',
    'smtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination',
    'alias_maps =', 'alias_database =',
    'maillog_file = %(dir)s/postfix.log',
    'smtp_tls_security_level = none', 'smtpd_tls_security_level = none',
]
MASTER_SMTP = "smtp      inet  n       -       y       -       -       smtpd"


def say(text):
    print(text, flush=True)


def run_quiet(cmd, **kw):
    return subprocess.run(cmd, capture_output=True, **kw)


# ---------------------------------------------------------------- Postfix --

class PostfixInstance:
    """A private Postfix instance: config, queue and data dirs under root."""

    def __init__(self, root):
        self.root = root
        self.conf = os.path.join(root, "etc")
        self.queue = os.path.join(root, "spool")
        self.data = os.path.join(root, "data")
        self.log = os.path.join(root, "postfix.log")
        self.port = benchlib.free_port()
        self.sink_port = benchlib.free_port()
        self.master_pid = None
        self.installed_here = False

    def ensure_installed(self):
        if shutil.which("postfix") or os.path.exists("/usr/sbin/postfix"):
            return
        say("# postfix is not installed: installing it (debconf 'Local only'; no instance is started)")
        for sel in ("postfix postfix/main_mailer_type select Local only",
                    "postfix postfix/mailname string gateway.local"):
            subprocess.run(["debconf-set-selections"], input=sel.encode(), check=True)
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        p = run_quiet(["apt-get", "install", "-y", "-q", "postfix"], env=env)
        if p.returncode != 0:
            run_quiet(["apt-get", "update", "-q"])
            p = run_quiet(["apt-get", "install", "-y", "-q", "postfix"], env=env)
        if p.returncode != 0:
            raise RuntimeError("apt-get install postfix failed: %s" % p.stderr.decode()[-2000:])
        run_quiet(["systemctl", "disable", "postfix"])
        self.installed_here = True
        # Debian's postinst may start the system instance where an init runs; this bench never wants it.
        if run_quiet(["postfix", "status"]).returncode == 0:
            run_quiet(["postfix", "stop"])

    def start(self):
        self.ensure_installed()
        os.chmod(self.root, 0o755)
        for d in (self.conf, self.queue, self.data):
            os.makedirs(d, exist_ok=True)
        shutil.chown(self.data, "postfix")
        for f in ("main.cf", "master.cf"):
            shutil.copy(os.path.join("/etc/postfix", f), self.conf)
        vals = {"sink": self.sink_port, "dir": self.root}
        lines = [l % vals for l in POSTFIX_BASELINE] + [
            "queue_directory = " + self.queue, "data_directory = " + self.data,
            # postlogd only writes under these prefixes; the default is /var, /dev/stdout.
            "maillog_file_prefixes = /var, /dev/stdout, " + self.root]
        subprocess.run(["postconf", "-c", self.conf, "-e"] + lines, check=True)
        master = os.path.join(self.conf, "master.cf")
        with open(master) as f:
            text = f.read().splitlines()
        out = []
        for line in text:
            if line == MASTER_SMTP:
                out.append("#" + line + "  (disabled for the bench)")
                out.append("127.0.0.1:%d inet n   -       y       -       -       smtpd" % self.port)
            else:
                out.append(line)
        with open(master, "w") as f:
            f.write("\n".join(out) + "\n")
        p = run_quiet(["postfix", "-c", self.conf, "check"])
        if p.returncode != 0:
            raise RuntimeError("postfix check: %s" % p.stderr.decode())
        # Debian's helper copies resolv.conf, hosts, services... into the chroot (queue dir).
        run_quiet(["/usr/lib/postfix/configure-instance.sh", "-"], env=dict(os.environ, MAIL_CONFIG=self.conf))
        p = run_quiet(["postfix", "-c", self.conf, "start"])
        if p.returncode != 0:
            raise RuntimeError("postfix -c %s start failed: %s\n%s" % (self.conf, p.stderr.decode(), self.log_tail()))
        pidfile = os.path.join(self.queue, "pid", "master.pid")
        for _ in range(100):
            if os.path.exists(pidfile):
                break
            time.sleep(0.05)
        with open(pidfile) as f:
            self.master_pid = int(f.read().split()[0])
        benchlib.wait_port(self.port)

    def log_tail(self):
        try:
            with open(self.log, errors="replace") as f:
                return "".join(f.readlines()[-20:])
        except OSError:
            return ""

    def queue_empty(self):
        p = run_quiet(["postqueue", "-c", self.conf, "-p"])
        return b"Mail queue is empty" in p.stdout

    def clear_deferred(self):
        """Delete the message smtp-sink -M left deferred; return how many postsuper removed."""
        p = run_quiet(["postsuper", "-c", self.conf, "-d", "ALL", "deferred"])
        m = re.search(rb"Deleted: (\d+) message", p.stderr)
        return int(m.group(1)) if m else 0

    def stop(self):
        if self.master_pid is not None:
            run_quiet(["postfix", "-c", self.conf, "stop"])
            for _ in range(100):
                if not os.path.exists("/proc/%d" % self.master_pid):
                    break
                time.sleep(0.1)
            self.master_pid = None


# ------------------------------------------------------------------ runs --

def smtp_config(state, listen_port, sink_port):
    return {
        "state_dir": state,
        "listen": {"smtp": [{"address": "127.0.0.1:%d" % listen_port}]},
        "auth": {"networks": [{"cidr": "127.0.0.0/8"}]},
        "smtpd": {"hostname": "pmx.bench.test", "max_connections": 512, "max_connections_per_client": 256},
        "transports": {"sink": {"plugin": "smtp", "concurrency": RELAY_WORKERS, "options": {
            "host": "127.0.0.1", "port": sink_port, "security": "none", "auth": "none",
            "helo_name": "bench.test"}}},
        "default": "sink",
        "retry": {"initial_delay": "1h"},
    }


def queue_count(gw, state=None):
    args = ["queue", "list"] + (["--state", state] if state else [])
    p = gw.run(*args, timeout=600)
    if p.returncode != 0:
        raise RuntimeError("postmux queue list: %s" % p.stderr.decode())
    last = p.stdout.decode().strip().splitlines()[-1:] or ["0"]
    m = re.match(r"(\d+) message", last[0])
    return int(m.group(1)) if m else 0


def drive(tools, target_port, sink_port, size, sessions, persistent, cpu_of, raw=False):
    """smtp-sink -M N on sink_port, smtp-source at target_port; returns timings and CPU.
    Each process's exit is timed by its own waiting thread: with @raw
    (smtp-source straight into the sink) the sink exits first, and
    smtp-source's "lost connection" fatal then sleeps 1 s before it exits
    (Postfix's msg_fatal), which must not count."""
    sink_log = tempfile.TemporaryFile()
    sinkp = subprocess.Popen(tools.sink_cmd(sink_port, N), stdout=sink_log, stderr=sink_log, env=tools.env())
    benchlib.wait_port(sink_port)   # one probe connection; -M counts messages, not connections
    benchlib.wait_quiet()           # both sides start from a settled machine
    cpu0 = cpu_of()
    busy0 = benchlib.system_busy()
    t0 = time.perf_counter()
    srcp = subprocess.Popen(tools.source_cmd(target_port, sessions, N, size, persistent),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=tools.env())
    ends = {}

    def wait_for(name, proc, timeout):
        # A blocking wait (Popen.wait with a timeout polls), and a timer to kill a hung one.
        def kill():
            ends[name + "_timeout"] = True
            proc.kill()
        timer = threading.Timer(timeout, kill)
        timer.start()
        proc.wait()
        ends[name] = time.perf_counter()
        timer.cancel()

    sink_thread = threading.Thread(target=wait_for, args=("sink", sinkp, 3600))
    sink_thread.start()
    src_err = srcp.stderr.read()
    wait_for("src", srcp, 600)
    sink_thread.join()
    cpu1 = cpu_of()
    busy1 = benchlib.system_busy()
    t1, t2 = ends["src"], ends["sink"]
    rc = "timeout" if "sink_timeout" in ends else sinkp.returncode
    src_ok = srcp.returncode == 0 and not src_err.strip()
    if raw:
        t1 = t2 = min(t1, t2)   # the sink took the N-th message; smtp-source's exit is its fatal
        src_ok = b"lost connection" in src_err or src_ok
    sink_log.seek(0)
    if not src_ok:
        say("# smtp-source exit %s: %s" % (srcp.returncode, src_err.decode(errors="replace")[-1500:]))
    if rc != 0:
        say("# smtp-sink exit %s: %s" % (rc, sink_log.read().decode(errors="replace")[-1500:]))
    util = (busy1[0] - busy0[0]) / max(1, busy1[1] - busy0[1])
    return {"accept": N / (t1 - t0), "relay": N / (max(t1, t2) - t0), "lag": max(0.0, t2 - t1),
            "cpu_ms": (cpu1 - cpu0) * 1000 / N, "busy": util, "ok": rc == 0 and src_ok}


def run_postmux(tools, size, sessions, persistent):
    gw = Gateway(name="pmx-bench-ingress")
    try:
        listen, sink_port = benchlib.free_port(), benchlib.free_port()
        gw.write_config(smtp_config(gw.state, listen, sink_port))
        gw.start()
        pid = gw.proc.pid
        r = drive(tools, listen, sink_port, size, sessions, persistent, lambda: benchlib.proc_cpu(pid))
        r["rss_mb"] = benchlib.proc_rss_peak_kb(pid) / 1024
        gw.stop()
        r["queued"] = queue_count(gw)
        r["delivered"] = queue_count(gw, "delivered")
        if r["queued"] != N or r["delivered"] < N - 1:
            say("# WARNING: Postmux queue holds %d messages (%d delivered), want %d (%d)"
                % (r["queued"], r["delivered"], N, N - 1))
        return r
    finally:
        gw.cleanup()


def run_postfix(pf, tools, size, sessions, persistent):
    r = drive(tools, pf.port, pf.sink_port, size, sessions, persistent, lambda: benchlib.tree_cpu(pf.master_pid))
    time.sleep(0.5)
    r["deferred_removed"] = pf.clear_deferred()
    for _ in range(100):
        if pf.queue_empty():
            break
        time.sleep(0.1)
    else:
        say("# WARNING: Postfix queue not empty after the run")
    time.sleep(PAUSE)   # cached SMTP connections (smtp_connection_cache_time_limit 2s) expire
    return r


def run_raw(tools, size, sessions, persistent):
    """The same load from smtp-source straight into smtp-sink: what this
    machine's loopback TCP and the two Postfix tools allow for the cell with
    no MTA in between (bench-baselines.md section 1)."""
    port = benchlib.free_port()
    return drive(tools, port, port, size, sessions, persistent, lambda: 0.0, raw=True)


def fmt(tag, r):
    return ("  %-8s accepted %6.0f/s  relayed %6.0f/s  sink lag %5.2f s  CPU %.3f ms/msg  system busy %3.0f%%%s"
            % (tag, r["accept"], r["relay"], r["lag"], r["cpu_ms"], r["busy"] * 100,
               ("  queue %d (%d delivered)  peak RSS %.1f MiB" % (r["queued"], r["delivered"], r["rss_mb"]))
               if "queued" in r else ("  deferred removed %d" % r.get("deferred_removed", 0))))


# ------------------------------------------------------------------ HTTP --

WRK_LUA = r"""
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer %(token)s"
wrk.body = '%(body)s'
local threads = {}
function setup(thread) table.insert(threads, thread) end
function init(args) n202 = 0; nother = 0; last = "" end
function response(status, headers, body)
  if status == 202 then n202 = n202 + 1 else nother = nother + 1; last = status .. " " .. body end
end
function done(summary, latency, requests)
  local a, b, l = 0, 0, ""
  for _, t in ipairs(threads) do
    a = a + t:get("n202"); b = b + t:get("nother")
    if t:get("last") ~= "" then l = t:get("last") end
  end
  io.write(string.format("WRK202 %%d\nWRKOTHER %%d\nWRKLAST %%s\n", a, b, l))
  io.write(string.format("WRKLAT %%.3f %%.3f %%.3f\n", latency:percentile(50) / 1000,
                         latency:percentile(99) / 1000, latency.max / 1000))
end
"""


def health(port):
    with urllib.request.urlopen("http://127.0.0.1:%d/v1/health" % port, timeout=30) as r:
        return json.load(r)["queue"]


def run_http(tools):
    if not shutil.which("wrk"):
        say("# wrk is not installed: installing it")
        p = run_quiet(["apt-get", "install", "-y", "-q", "wrk"], env=dict(os.environ, DEBIAN_FRONTEND="noninteractive"))
        if p.returncode != 0:
            say("# SKIP HTTP: apt-get install wrk failed: %s" % p.stderr.decode()[-500:])
            return []
    token = secrets.token_hex(24)
    gw = Gateway(name="pmx-bench-http")
    results = []
    sinkp = None
    try:
        http_port, sink_port = benchlib.free_port(), benchlib.free_port()
        cfg = smtp_config(gw.state, benchlib.free_port(), sink_port)
        cfg["listen"] = {"http": [{"address": "127.0.0.1:%d" % http_port}]}
        cfg["auth"] = {"api_keys": {"bench": {"key_hash": "sha256:" + hashlib.sha256(token.encode()).hexdigest(),
                                              "senders": ["*"]}}}
        gw.write_config(cfg)
        sinkp = subprocess.Popen(tools.sink_cmd(sink_port), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                 env=tools.env())
        benchlib.wait_port(sink_port)
        gw.start()
        benchlib.wait_port(http_port)
        body = json.dumps({"from": "bench@example.test", "to": ["sink@example.net"], "subject": "bench",
                           "text": ("x" * 76 + "\n") * 10})
        lua = gw.path("post.lua")
        with open(lua, "w") as f:
            f.write(WRK_LUA % {"token": token, "body": body.replace("\\", "\\\\").replace("'", "\\'")})
        say("# HTTP: POST /v1/messages, JSON body %d B (text 770 B), wrk -t2, %d s per connection count; "
            "the daemon relays to smtp-sink meanwhile (%d workers)" % (len(body), HTTP_SECS, RELAY_WORKERS))
        pid = gw.proc.pid
        for conns in HTTP_CONNS:
            before = sum(health(http_port).values())
            cpu0 = benchlib.proc_cpu(pid)
            busy0 = benchlib.system_busy()
            p = subprocess.run(["wrk", "-t", "2", "-c", str(conns), "-d", "%ds" % HTTP_SECS, "--timeout", "10s",
                                "--latency", "-s", lua, "http://127.0.0.1:%d/v1/messages" % http_port],
                               capture_output=True, timeout=HTTP_SECS + 120)
            cpu1 = benchlib.proc_cpu(pid)
            busy1 = benchlib.system_busy()
            time.sleep(0.5)   # requests wrk abandoned at its deadline may still commit
            after = health(http_port)
            gained = sum(after.values()) - before
            out = p.stdout.decode(errors="replace")
            rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
            n202 = int(re.search(r"WRK202 (\d+)", out).group(1))
            nother = int(re.search(r"WRKOTHER (\d+)", out).group(1))
            p50, p99, pmax = (float(x) for x in re.search(r"WRKLAT (\S+) (\S+) (\S+)", out).groups())
            errs = re.search(r"Socket errors:.*", out)
            r = {"conns": conns, "rps": rps, "n202": n202, "other": nother, "gained": gained,
                 "p50": p50, "p99": p99, "max": pmax, "cpu_ms": (cpu1 - cpu0) * 1000 / max(1, n202),
                 "busy": (busy1[0] - busy0[0]) / max(1, busy1[1] - busy0[1])}
            results.append(r)
            say("  HTTP c%-4d %7.0f req/s  latency p50 %6.2f ms  p99 %7.2f ms  max %7.1f ms  202s %d  other %d  "
                "queue gained %d  daemon CPU %.3f ms/req  system busy %3.0f%%"
                % (conns, rps, p50, p99, pmax, n202, nother, gained, r["cpu_ms"], r["busy"] * 100))
            if nother:
                say("#   last non-202: %s" % re.search(r"WRKLAST (.*)", out).group(1)[:300])
            if errs:
                say("#   wrk: %s" % errs.group(0))
            if gained < n202:
                say("# WARNING: the queue gained %d messages but wrk saw %d 202s" % (gained, n202))
        say("#   queue at the end: %s" % json.dumps(health(http_port)))
        gw.stop()
    finally:
        if sinkp is not None:
            sinkp.kill()
            sinkp.wait()
        gw.cleanup()
    return results


# ------------------------------------------------------------------ main --

def main():
    tools = benchlib.PostfixTools(os.path.join(benchlib.build_dir(POSTMUX), "tests", "bench", "postfix-deb"))
    say("# %s; N=%d; sizes %s; sessions %s; modes %s; Postmux smtp transport concurrency %d; %d CPUs; load %s"
        % (tools.deb, N, SIZES, SESSIONS, MODES, RELAY_WORKERS, os.cpu_count(), " ".join(benchlib.loadavg())))
    scratch = tempfile.mkdtemp(prefix="pmx-bench-postfix-")
    pf = None
    results = []
    try:
        if DO_POSTFIX:
            if os.geteuid() != 0:
                say("# SKIP Postfix: a private Postfix instance needs root")
            else:
                pf = PostfixInstance(scratch)
                pf.start()
                say("# Postfix %s private instance: config %s, listener 127.0.0.1:%d, relayhost [127.0.0.1]:%d"
                    % (run_quiet(["postconf", "-c", pf.conf, "-h", "mail_version"]).stdout.decode().strip(),
                       pf.conf, pf.port, pf.sink_port))
        for size in SIZES:
            for sessions in SESSIONS:
                for mode in MODES:
                    persistent = mode.startswith("persist")
                    say("%d x %d B, %d sessions, %s:" % (N, size, sessions,
                                                          "persistent (-d)" if persistent else "conn-per-msg"))
                    rounds = []
                    for k in range(REPEAT):
                        # Whichever side runs second inherits the first one's
                        # TIME_WAIT sockets and dirty pages: alternate the order
                        # from cell to cell and from round to round.
                        postfix_first = pf is not None and (len(results) + k) % 2 == 1
                        px = run_postfix(pf, tools, size, sessions, persistent) if postfix_first else None
                        pm = run_postmux(tools, size, sessions, persistent)
                        if pf and not postfix_first:
                            px = run_postfix(pf, tools, size, sessions, persistent)
                        if REPEAT > 1:
                            say("  round %d of %d:" % (k + 1, REPEAT))
                        say(fmt("Postmux", pm))
                        if not persistent and pm["accept"] < sessions * 1.5:
                            say("#   about 1 s per connection: the listener waits before its greeting "
                                "(SMTPD_PREGREET_MS, pmx-smtpd.c), so a new connection per message caps "
                                "at about one message per session per second")
                        if px:
                            say(fmt("Postfix", px))
                            say("  ratio    relayed %.1fx   accepted %.1fx   CPU/msg %.1fx less   (%s ran first)"
                                % (pm["relay"] / px["relay"], pm["accept"] / px["accept"],
                                   px["cpu_ms"] / pm["cpu_ms"], "Postfix" if postfix_first else "Postmux"))
                        rounds.append((pm, px))
                    pm_relay = statistics.median(r[0]["relay"] for r in rounds)
                    px_relay = statistics.median(r[1]["relay"] for r in rounds) if pf else None
                    ratios = sorted(r[0]["relay"] / r[1]["relay"] for r in rounds) if pf else []
                    raw = run_raw(tools, size, sessions, persistent) if DO_RAW else None
                    if raw:
                        say("  raw      smtp-source -> smtp-sink, no MTA: %6.0f msgs/s; Postmux relayed %.0f%% of it%s"
                            % (raw["relay"], 100 * pm_relay / raw["relay"],
                               ", 5x Postfix would be %.0f%%" % (500 * px_relay / raw["relay"]) if pf else ""))
                        time.sleep(PAUSE)
                    results.append((size, sessions, mode, pm_relay, px_relay, raw, ratios))
        if pf:
            pf.stop()
    finally:
        if pf:
            pf.stop()
        shutil.rmtree(scratch, ignore_errors=True)
    say("# summary, relayed msgs/s: Postmux / Postfix and the ratio%s; raw smtp-source -> smtp-sink ceiling:"
        % ("" if REPEAT == 1 else " (medians of %d rounds, then each round's ratio)" % REPEAT))
    for size, sessions, mode, pm_relay, px_relay, raw, ratios in results:
        pair = "-" if px_relay is None else "%5.0f   ratio %4.1fx%s" % (
            px_relay, statistics.median(ratios),
            " (rounds %s)" % " ".join("%.1fx" % r for r in ratios) if REPEAT > 1 else "")
        say("#   %5d B  s%-3d %-8s %6.0f / %s%s" % (size, sessions, mode, pm_relay, pair,
                                                   "   raw %6.0f" % raw["relay"] if raw else ""))
    if DO_HTTP:
        run_http(tools)
    say("# load at the end: %s" % " ".join(benchlib.loadavg()))
    return 0


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda *a: sys.exit(1))
    sys.exit(main())

# SPDX-License-Identifier: GPL-3.0-or-later
"""benchlib - small helpers shared by the benchmarks in tests/bench.

Postfix's test tools (smtp-source, smtp-sink) come from Debian's postfix
package without installing the mail server: `apt-get download postfix` into
a cache dir and `dpkg -x` it; they run with LD_LIBRARY_PATH=<x>/usr/lib/postfix.
"""
import glob
import os
import socket
import subprocess
import tempfile
import time

TICKS = os.sysconf("SC_CLK_TCK")


def build_dir(postmux):
    """The meson build dir that holds the postmux binary, or a temp dir."""
    exe = os.path.abspath(postmux)
    return os.path.dirname(os.path.dirname(exe)) if os.path.isabs(postmux) else tempfile.gettempdir()


class PostfixTools:
    """smtp-source and smtp-sink from an extracted postfix .deb (cached under cache_dir)."""

    def __init__(self, cache_dir):
        self.root = cache_dir
        x = os.path.join(cache_dir, "x")
        self.source = os.path.join(x, "usr", "sbin", "smtp-source")
        self.sink = os.path.join(x, "usr", "sbin", "smtp-sink")
        self.libs = os.path.join(x, "usr", "lib", "postfix")
        self.deb = None
        if not (os.path.exists(self.source) and os.path.exists(self.sink)):
            os.makedirs(cache_dir, exist_ok=True)
            for old in glob.glob(os.path.join(cache_dir, "postfix_*.deb")):
                os.unlink(old)
            subprocess.run(["apt-get", "download", "postfix"], cwd=cache_dir, check=True, capture_output=True)
            deb = glob.glob(os.path.join(cache_dir, "postfix_*.deb"))[0]
            subprocess.run(["dpkg", "-x", deb, x], check=True)
        debs = glob.glob(os.path.join(cache_dir, "postfix_*.deb"))
        self.deb = os.path.basename(debs[0]) if debs else "(cached extract)"

    def env(self):
        env = dict(os.environ)
        env["LD_LIBRARY_PATH"] = self.libs + (":" + env["LD_LIBRARY_PATH"] if env.get("LD_LIBRARY_PATH") else "")
        return env

    def sink_cmd(self, port, max_msgs=None):
        """smtp-sink on 127.0.0.1:port, backlog 1000; with -M it exits after max_msgs messages."""
        cmd = [self.sink] + (["-u", "nobody"] if os.geteuid() == 0 else [])
        if max_msgs:
            cmd += ["-M", str(max_msgs)]
        return cmd + ["127.0.0.1:%d" % port, "1000"]

    def source_cmd(self, port, sessions, n, size, persistent):
        """smtp-source as bench-baselines.md runs it; -d keeps each session open."""
        return [self.source] + (["-d"] if persistent else []) + \
            ["-s", str(sessions), "-m", str(n), "-l", str(size),
             "-f", "sender@example.com", "-t", "rcpt@example.net", "127.0.0.1:%d" % port]


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def wait_port(port, timeout=10.0):
    """Wait until something accepts on 127.0.0.1:port (one probe connection)."""
    end = time.time() + timeout
    while time.time() < end:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return True
        except OSError:
            time.sleep(0.02)
    raise RuntimeError("nothing listens on 127.0.0.1:%d after %.0f s" % (port, timeout))


def proc_cpu(pid, children=False):
    """CPU seconds (utime+stime; with children=True also the reaped children's) of pid."""
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    ticks = int(fields[11]) + int(fields[12])
    if children:
        ticks += int(fields[13]) + int(fields[14])
    return ticks / TICKS


def proc_rss_peak_kb(pid):
    with open("/proc/%d/status" % pid) as f:
        status = dict(l.split(":", 1) for l in f if ":" in l)
    return int(status["VmHWM"].split()[0])


def tree_cpu(pid):
    """CPU seconds of a process tree: pid (with its reaped children) plus its live children.

    Postfix's master reaps every daemon it started, so master's cutime+cstime
    holds the daemons that have exited; the live ones are added here.  The
    sum only grows, so the difference of two calls is what the tree used."""
    total = proc_cpu(pid, children=True)
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % d) as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            total += (int(fields[11]) + int(fields[12])) / TICKS
    return total


def system_busy():
    """(busy, total) jiffies of all CPUs from /proc/stat; diff two calls for utilisation."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    idle = v[3] + v[4]
    return sum(v) - idle, sum(v)


def wait_quiet(limit=0.15, window=0.5, timeout=20.0):
    """Write back every dirty page (so that no earlier run's files, say
    Postfix's queue files, are still being flushed while this run waits
    for its own fsyncs), then wait until the CPUs were busy less than
    @limit over @window seconds, at most @timeout seconds; returns the last
    busy fraction seen."""
    os.sync()
    deadline = time.monotonic() + timeout
    while True:
        b0 = system_busy()
        time.sleep(window)
        b1 = system_busy()
        busy = (b1[0] - b0[0]) / max(1, b1[1] - b0[1])
        if busy < limit or time.monotonic() >= deadline:
            return busy


def loadavg():
    with open("/proc/loadavg") as f:
        return f.read().split()[0:3]

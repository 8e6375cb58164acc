# SPDX-License-Identifier: GPL-3.0-or-later
"""pmxtest - shared pieces of the integration tests.

Each test script starts the real `postmux` binary on a temporary config and
state directory, talks to it through the real CLI, prints TAP, and stops
every process it started by pid.  The environment comes from meson:
POSTMUX (the binary) and POSTMUX_PLUGIN_PATH (the build tree's plugins).
"""
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

POSTMUX = os.environ.get("POSTMUX", "postmux")


class Tap:
    """Minimal TAP producer: plan at the end, a failed check fails the script."""

    def __init__(self):
        self.n = 0
        self.failed = 0

    def ok(self, cond, name, detail=None):
        self.n += 1
        print(("ok %d - %s" if cond else "not ok %d - %s") % (self.n, name), flush=True)
        if not cond:
            self.failed += 1
            if detail is not None:
                for line in str(detail).splitlines():
                    print("#   " + line, flush=True)
        return cond

    def eq(self, got, want, name):
        return self.ok(got == want, name, "got:  %r\nwant: %r" % (got, want))

    def comment(self, text):
        for line in str(text).splitlines():
            print("# " + line, flush=True)

    def done(self):
        print("1..%d" % self.n, flush=True)
        sys.exit(1 if self.failed else 0)


class Gateway:
    """A temporary state dir, a config file, and a `postmux serve` process."""

    def __init__(self, config=None, name="pmx"):
        self.dir = tempfile.mkdtemp(prefix=name + "-")
        self.state = os.path.join(self.dir, "state")
        self.config_path = os.path.join(self.dir, "postmux.json")
        self.log_path = os.path.join(self.dir, "serve.log")
        self.proc = None
        self.log_file = None
        if config is not None:
            self.write_config(config)

    def write_config(self, config):
        config = dict(config)
        config.setdefault("state_dir", self.state)
        tmp = self.config_path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(config, f, indent=2)
        os.replace(tmp, self.config_path)

    def path(self, *parts):
        return os.path.join(self.dir, *parts)

    def env(self):
        env = dict(os.environ)
        env.pop("POSTMUX_CONFIG", None)
        return env

    def run(self, *args, input=None, check=False, timeout=60):
        cmd = [POSTMUX] + list(args)
        if args and args[0] in ("send", "queue", "config", "serve", "reload", "doctor", "auth") and "--config" not in args \
                and os.path.exists(self.config_path):
            cmd = [POSTMUX, args[0], "--config", self.config_path] + list(args[1:])
        p = subprocess.run(cmd, input=input, capture_output=True, timeout=timeout, env=self.env())
        if check and p.returncode != 0:
            raise RuntimeError("%s failed (%d): %s" % (" ".join(cmd), p.returncode, p.stderr.decode()))
        return p

    def start(self, extra_args=(), wait=True):
        readies = self.log().count(" ready: ")
        self.log_file = open(self.log_path, "ab")
        cmd = [POSTMUX, "serve", "--config", self.config_path] + list(extra_args)
        self.proc = subprocess.Popen(cmd, stdout=self.log_file, stderr=self.log_file, env=self.env())
        if wait:
            self.wait_log(" ready: ", 30, count=readies + 1)
        return self.proc

    def log(self):
        try:
            with open(self.log_path, "rb") as f:
                return f.read().decode(errors="replace")
        except FileNotFoundError:
            return ""

    def wait_log(self, needle, timeout, count=1):
        end = time.time() + timeout
        while time.time() < end:
            if self.log().count(needle) >= count:
                return True
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError("postmux serve exited (%d):\n%s" % (self.proc.returncode, self.log()))
            time.sleep(0.05)
        raise RuntimeError("timed out waiting for %r in the log:\n%s" % (needle, self.log()[-4000:]))

    def send_signal(self, sig):
        self.proc.send_signal(sig)

    def stop(self, sig=signal.SIGTERM, timeout=60):
        if self.proc is None:
            return None
        rc = stop_process(self.proc, timeout, sig)
        self.proc = None
        if self.log_file:
            self.log_file.close()
            self.log_file = None
        return rc

    def send(self, sender, rcpts, message, *extra):
        args = ["send", "--from", sender]
        for r in rcpts:
            args += ["--to", r]
        return self.run(*args, *extra, input=message)

    def cleanup(self):
        self.stop(signal.SIGKILL)
        shutil.rmtree(self.dir, ignore_errors=True)


def stop_process(proc, timeout=30, sig=signal.SIGTERM):
    """Send @sig to a peer or daemon started by a test (if it still runs),
    wait @timeout seconds for it, then SIGKILL; its exit status."""
    if proc.poll() is None:
        proc.send_signal(sig)
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait()


def message(n, subject=None, extra_headers=""):
    """A small RFC 5322 message with a unique Message-ID, LF line ends."""
    return ("From: sender@example.test\nTo: rcpt@example.test\n"
            "Subject: %s\nMessage-ID: <msg-%s@example.test>\n%s\nbody of message %s\n"
            % (subject or ("message %s" % n), n, extra_headers, n)).encode()


def maildir_files(root):
    new = os.path.join(root, "new")
    if not os.path.isdir(new):
        return []
    return [os.path.join(new, f) for f in os.listdir(new)]


def maildir_ids(root):
    """Message-ID numbers of every delivered file, with repeats."""
    ids = []
    for path in maildir_files(root):
        with open(path, "rb") as f:
            for line in f:
                if line.startswith(b"Message-ID: <msg-"):
                    ids.append(line.split(b"<msg-")[1].split(b"@")[0].decode())
                    break
                if line in (b"\n", b"\r\n"):
                    break
    return ids


def wait_until(pred, timeout, interval=0.05):
    end = time.time() + timeout
    while time.time() < end:
        v = pred()
        if v:
            return v
        time.sleep(interval)
    return pred()


def scripted_log(path):
    """Lines of the scripted transport's log as tuples."""
    out = []
    try:
        with open(path) as f:
            for line in f:
                usec, inst, qid, attempt, rcpt, status = line.split()
                out.append((int(usec) / 1e6, inst, qid, int(attempt), rcpt, status))
    except FileNotFoundError:
        pass
    return out


def plugin_path():
    return [p for p in os.environ.get("POSTMUX_PLUGIN_PATH", "").split(":") if p]


def listen_backlog(port):
    """The accept backlog of the TCP socket listening on 127.0.0.1:@port, as
    `ss -ltn` shows it (Send-Q of a LISTEN socket); None if there is none."""
    out = subprocess.run(["ss", "-Hltn", "sport = :%d" % port], capture_output=True, text=True).stdout
    for line in out.splitlines():
        fields = line.split()
        if len(fields) >= 4 and fields[3].endswith(":%d" % port):
            return int(fields[2])
    return None

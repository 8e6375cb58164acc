#!/usr/bin/python3
# SPDX-License-Identifier: GPL-3.0-or-later
"""The smtp transport through the real `postmux` binary, against real SMTP
servers on loopback (tests/peers/smtp_peer.py on Debian's python3-aiosmtpd):

- every security mode {none, starttls, tls} x mechanism {none, plain, login,
  cram-md5} delivers, byte for byte;
- a wrong password is an auth failure and the server's 535 is kept;
- STARTTLS required but not offered: refused, and no credentials were sent;
- a certificate from an untrusted CA is refused unless tls_verify is false;
- 250 / 451 / 550 on three recipients: delivered, retried then delivered,
  bounced, as `postmux queue show` tells;
- 1,000 messages through one worker reuse one connection;
- a server that stalls after RCPT makes the attempt fail as temporary
  within the configured timeout;
- `postmux doctor`, `postmux send --test`, `config check` of "ntlm", and a
  provider preset with the host overridden.

Certificates (two throwaway CAs and a server certificate from each) are made
with the openssl CLI in the test's temporary directory.
"""
import base64
import json
import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
import traceback

from pmxtest import POSTMUX, Gateway, Tap, stop_process, wait_until

HERE = os.path.dirname(os.path.abspath(__file__))
PEER = os.path.join(HERE, "..", "peers", "smtp_peer.py")
PYTHON = "/usr/bin/python3"
PASSWORD = "Pw-7781-s3cr3t"
USER = "alice@example.test"

tap = Tap()
WORK = tempfile.mkdtemp(prefix="pmx-smtp-")
os.environ["PMX_TEST_SMTP_PASSWORD"] = PASSWORD
PW_FILE = os.path.join(WORK, "password")
with open(PW_FILE, "w") as f:
    f.write(PASSWORD + "\n")
os.chmod(PW_FILE, 0o600)


def openssl(*args):
    subprocess.run(["openssl"] + list(args), check=True, capture_output=True, cwd=WORK)


def make_ca(name):
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
            "-keyout", name + "-ca.key", "-out", name + "-ca.pem", "-subj", "/CN=Postmux test CA " + name,
            "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", name + "-server.key",
            "-out", name + "-server.csr", "-subj", "/CN=localhost")
    with open(os.path.join(WORK, name + "-ext.cnf"), "w") as f:
        f.write("subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n")
    openssl("x509", "-req", "-in", name + "-server.csr", "-CA", name + "-ca.pem", "-CAkey", name + "-ca.key",
            "-CAcreateserial", "-days", "2", "-out", name + "-server.pem", "-extfile", name + "-ext.cnf")
    return tuple(os.path.join(WORK, name + s) for s in ("-ca.pem", "-server.pem", "-server.key"))


class Peer:
    """One smtp_peer.py process on a free port, with its records."""

    def __init__(self, name, *args, cert=None, transcript=True):
        self.name = name
        self.dir = os.path.join(WORK, "peer-" + name)
        os.makedirs(self.dir)
        self.outdir = os.path.join(self.dir, "mail")
        self.status_path = os.path.join(self.dir, "status.json")
        self.transcript_path = os.path.join(self.dir, "transcript.txt")
        cmd = [PYTHON, PEER, "--port", "0", "--outdir", self.outdir, "--status", self.status_path] + list(args)
        if transcript:
            cmd += ["--transcript", self.transcript_path]
        if cert:
            cmd += ["--cert", cert[1], "--key", cert[2]]
        self.err = open(os.path.join(self.dir, "stderr.txt"), "wb")
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=self.err)
        line = self.proc.stdout.readline().decode()
        if not line.startswith("PORT "):
            raise RuntimeError("smtp_peer %s did not start: %r %s" % (name, line, self.stderr()))
        self.port = int(line.split()[1])

    def stderr(self):
        with open(os.path.join(self.dir, "stderr.txt"), "rb") as f:
            return f.read().decode(errors="replace")

    def status(self):
        try:
            with open(self.status_path) as f:
                return json.load(f)
        except (FileNotFoundError, ValueError):
            return {}

    def messages(self):
        """[(envelope dict, exact bytes)] in arrival order."""
        out = []
        if not os.path.isdir(self.outdir):
            return out
        for name in sorted(os.listdir(self.outdir)):
            if name.endswith(".json"):
                base = os.path.join(self.outdir, name[:-5])
                try:
                    with open(base + ".json") as f:
                        env = json.load(f)
                    with open(base + ".eml", "rb") as f:
                        out.append((env, f.read()))
                except (FileNotFoundError, ValueError):
                    pass
        return out

    def by_message_id(self, mid):
        return [(e, b) for e, b in self.messages() if ("Message-ID: <%s>" % mid).encode() in b]

    def transcript(self):
        try:
            with open(self.transcript_path) as f:
                return f.read()
        except FileNotFoundError:
            return ""

    def stop(self):
        stop_process(self.proc, 10)
        self.err.close()


def smtp_opts(peer, security, auth="none", **extra):
    o = {"host": "127.0.0.1", "port": peer.port, "security": security, "auth": auth,
         "helo_name": "postmux.test", "timeouts": {"connect": 10, "command": "20s", "data": "20s"}}
    if auth != "none":
        o["username"] = USER
        o["password"] = "env:PMX_TEST_SMTP_PASSWORD"
        if security == "none":
            o["allow_plaintext_auth"] = True
    o.update(extra)
    return o


def crlf_message(mid, sender, rcpt, extra=""):
    """A message with CRLF ends, a line that needs dot-stuffing and a long line."""
    return ("From: <%s>\r\nTo: <%s>\r\nSubject: smtp transport test %s\r\nMessage-ID: <%s>\r\n"
            "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=us-ascii\r\n%s\r\n"
            "first line\r\n.a line that starts with a dot\r\n..two dots\r\n.\r\n"
            "%s\r\nlast line\r\n" % (sender, rcpt, mid, mid, extra, "x" * 700)).encode()


def show(gw, qid):
    return gw.run("queue", "show", qid).stdout.decode()


def qid_of(p):
    return p.stdout.decode().strip()


def submit_many(sock_path, items):
    """Submit (sender, [rcpts], bytes) over the control socket, one connection."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(sock_path)
    f = s.makefile("rb")
    ids = []
    for sender, rcpts, data in items:
        req = json.dumps({"op": "submit", "sender": sender, "recipients": rcpts, "size": len(data)})
        s.sendall(req.encode() + b"\n" + data)
        answer = json.loads(f.readline())
        if not answer.get("ok"):
            raise RuntimeError(answer)
        ids.append(answer["id"])
    s.close()
    return ids


def section(name, fn):
    """Run one group of checks; an exception there is one failed check, not the end."""
    t0 = time.time()
    try:
        fn()
    except Exception:
        tap.ok(False, "%s: ran to the end" % name, traceback.format_exc())
    tap.comment("%s: %.1f s" % (name, time.time() - t0))


peers = []
gateways = []


def peer(*args, **kw):
    p = Peer(*args, **kw)
    peers.append(p)
    return p


def gateway(name, config):
    gw = Gateway(name="pmx-smtp-" + name)
    gateways.append(gw)
    gw.write_config(config)
    return gw


CA1 = CA2 = None
SECURITIES = ("none", "starttls", "tls")
MECHS = ("none", "plain", "login", "cram-md5")


# ---------------------------------------------------------------------------
def matrix():
    """Every security mode x every mechanism delivers, byte for byte."""
    p = {"none": peer("none", "--mode", "none", "--user", USER + ":" + PASSWORD),
         "starttls": peer("starttls", "--mode", "starttls", "--user", USER + ":" + PASSWORD, cert=CA1),
         "tls": peer("tls", "--mode", "tls", "--user", USER + ":" + PASSWORD, cert=CA1)}
    transports, routes = {}, []
    for sec in SECURITIES:
        for mech in MECHS:
            name = "%s-%s" % (sec, mech)
            extra = {"ca_file": CA1[0]} if sec != "none" else {}
            transports[name] = {"plugin": "smtp", "concurrency": 1, "options": smtp_opts(p[sec], sec, mech, **extra)}
            routes.append({"name": name, "match": {"sender_domain": [name + ".test"]}, "transports": [name]})
    gw = gateway("matrix", {"transports": transports, "default": "none-none", "routes": routes,
                            "retry": {"initial_delay": "1h", "jitter": 0}})
    p_check = gw.run("config", "check")
    tap.ok(p_check.returncode == 0, "config check accepts 12 smtp transports",
           p_check.stdout.decode() + p_check.stderr.decode())
    gw.start()
    sent = {}
    for sec in SECURITIES:
        for mech in MECHS:
            name = "%s-%s" % (sec, mech)
            sender = "app@%s.test" % name
            data = crlf_message("%s@matrix.test" % name, sender, "rcpt@example.net")
            r = gw.send(sender, ["rcpt@example.net"], data)
            sent[name] = (qid_of(r), data)
    total = lambda: sum(len(x.messages()) for x in p.values())
    wait_until(lambda: total() >= 12, 60)
    for sec in SECURITIES:
        for mech in MECHS:
            name = "%s-%s" % (sec, mech)
            qid, data = sent[name]
            got = p[sec].by_message_id("%s@matrix.test" % name)
            out = show(gw, qid)
            if not tap.ok(len(got) == 1 and got[0][1] == data,
                          "%s: delivered once, byte for byte" % name,
                          "copies at the peer: %d\n%s" % (len(got), out)):
                continue
            env = got[0][0]
            want_mech = None if mech == "none" else mech.upper()
            tap.ok(env["auth_mech"] == want_mech and env["auth_user"] == (USER if want_mech else None)
                   and env["tls"] == (sec != "none") and env["mail_from"] == "app@%s.test" % name
                   and env["rcpt_tos"] == ["rcpt@example.net"] and env["helo"] == "postmux.test",
                   "%s: envelope, EHLO name, AUTH %s, TLS %s as configured" % (name, want_mech, sec != "none"),
                   json.dumps(env))
            tap.ok(wait_until(lambda: "state:        delivered" in show(gw, qid), 10),
                   "%s: queue show says delivered" % name, show(gw, qid))
    tap.eq(gw.stop(), 0, "matrix: postmux serve exits 0")


# ---------------------------------------------------------------------------
def failures():
    """Wrong password, STARTTLS missing, untrusted CA, tls_verify false, a stall."""
    good = peer("auth", "--mode", "starttls", "--user", USER + ":" + PASSWORD, cert=CA1)
    nostarttls = peer("nostarttls", "--mode", "no-starttls", "--user", USER + ":" + PASSWORD)
    rogue = peer("rogue", "--mode", "starttls", "--user", USER + ":" + PASSWORD, cert=CA2)
    stall = peer("stall", "--mode", "none", "--stall-after", "RCPT", "--stall-seconds", "60")
    t = lambda opts: {"plugin": "smtp", "concurrency": 1, "options": opts}
    transports = {
        "badpw": t(dict(smtp_opts(good, "starttls", "plain", ca_file=CA1[0]), password="wrong-password")),
        "nostarttls": t(smtp_opts(nostarttls, "starttls", "plain")),
        "rogue": t(smtp_opts(rogue, "starttls", "plain", ca_file=CA1[0])),
        "noverify": t(smtp_opts(rogue, "starttls", "plain", tls_verify=False)),
        "stall": t(smtp_opts(stall, "none", "none", timeouts={"connect": 2, "command": "2s", "data": "2s"})),
    }
    routes = [{"name": n, "match": {"sender_domain": [n + ".test"]}, "transports": [n]} for n in transports]
    gw = gateway("fail", {"transports": transports, "default": "badpw", "routes": routes,
                          "retry": {"initial_delay": "1h", "jitter": 0}})
    gw.start()
    q = {}
    for n in transports:
        q[n] = qid_of(gw.send("app@%s.test" % n, ["rcpt@example.net"],
                              crlf_message("%s@fail.test" % n, "app@%s.test" % n, "rcpt@example.net")))

    def settled(n, state):
        return wait_until(lambda: ("state:        %s" % state) in show(gw, q[n]) and show(gw, q[n]), 40)

    # Wrong password: an auth failure that keeps the server's reply.
    out = settled("badpw", "deferred") or show(gw, q["badpw"])
    tap.ok("state:        deferred" in out, "wrong password: the message is deferred, not bounced", out)
    tap.ok("535 5.7.8 Authentication credentials invalid" in out,
           "wrong password: queue show keeps the server's 535 reply", out)
    tap.ok(PASSWORD not in out and "wrong-password" not in out, "wrong password: no secret in queue show", out)
    tap.ok([a["ok"] for a in good.status().get("auth", [])][:1] == [False] and not good.messages(),
           "wrong password: the server saw a failed AUTH and no message", json.dumps(good.status()))

    # STARTTLS required but not offered: refused before any credentials.
    out = settled("nostarttls", "deferred") or show(gw, q["nostarttls"])
    tap.ok("state:        deferred" in out and re.search(r"starttls", out, re.I),
           "STARTTLS not offered: the attempt fails and says why", out)
    tr = nostarttls.transcript()
    st = nostarttls.status()
    tap.ok(st.get("sessions", 0) >= 1 and re.search(r"^\d+ C: EHLO", tr, re.M | re.I),
           "STARTTLS not offered: the client connected and said EHLO", tr)
    tap.ok(not re.search(r"^\d+ C: (AUTH|MAIL|RCPT)", tr, re.M | re.I) and st.get("auth") == [],
           "STARTTLS not offered: no AUTH (no credentials) and no MAIL were sent", tr)

    # Untrusted CA: refused; with tls_verify false: delivered.
    out = settled("rogue", "deferred") or show(gw, q["rogue"])
    tap.ok("state:        deferred" in out and re.search(r"certificate|verif|tls", out, re.I),
           "certificate from an untrusted CA: refused, with a TLS reason", out)
    got = wait_until(lambda: rogue.by_message_id("noverify@fail.test"), 30)
    tap.ok(got and len(rogue.messages()) == 1, "tls_verify false: the same server gets the message",
           show(gw, q["noverify"]))
    tap.ok(len([a for a in rogue.status().get("auth", [])]) == 1,
           "untrusted CA: only the tls_verify:false transport authenticated", json.dumps(rogue.status()))
    out = settled("noverify", "delivered")
    tap.ok(out, "tls_verify false: queue show says delivered", show(gw, q["noverify"]))
    log = gw.log()
    tap.ok(re.search(r"noverify.*(verif|tls_verify)|(verif|tls_verify).*noverify", log, re.I),
           "tls_verify false is logged as a warning naming the transport", log[-3000:])

    # A server that stalls after RCPT: temporary failure within the 2 s timeout.
    out = settled("stall", "deferred")
    tap.ok(out and "attempts:     1" in out, "stall after RCPT: deferred (temporary) after one attempt",
           show(gw, q["stall"]))
    tap.ok(out and re.search(r"time(d)?[ -]?out", out, re.I), "stall after RCPT: the reason is a timeout", out)
    # The attempt's own duration, from the attempt log: "1. <time> via stall (2.003s)".
    m = re.search(r"via stall \((\d+(?:\.\d+)?)s\)", out or "")
    took = float(m.group(1)) if m else None
    # At least the 2 s command timeout; under 15 s leaves room for a loaded machine while
    # failing a client that waits for a 30 s or 300 s default instead.
    tap.ok(took is not None and 1.5 <= took < 15,
           "stall after RCPT: the attempt gave up within the configured timeout (%s s)" % took, out)
    tap.ok(stall.status().get("stalls", 0) >= 1, "stall after RCPT: the peer did stall",
           json.dumps(stall.status()))
    tap.eq(gw.stop(), 0, "failures: postmux serve exits 0")


# ---------------------------------------------------------------------------
def three_recipients():
    """250 / 451 / 550: delivered, retried then delivered, bounced."""
    p3 = peer("mixed", "--mode", "none", "--rcpt-reply", "later@example.net=451x1")
    gw = gateway("mixed", {
        "transports": {"out": {"plugin": "smtp", "concurrency": 1, "options": smtp_opts(p3, "none")}},
        "default": "out", "retry": {"initial_delay": "1s", "jitter": 0}})
    gw.start()
    rcpts = ["ok@example.net", "later@example.net", "fail-550@example.net"]
    data = crlf_message("mixed@three.test", "app@example.test", ", ".join(rcpts))
    qid = qid_of(gw.send("app@example.test", rcpts, data))
    first = wait_until(lambda: "<later@example.net> deferred" in show(gw, qid) and show(gw, qid), 20, 0.02)
    tap.ok(first and re.search(r"<later@example\.net> deferred \(451 4\.3\.0 forced temporary failure", first),
           "after the first attempt: the 451 recipient is deferred with its reply", first or show(gw, qid))
    tap.ok(first and re.search(r"<ok@example\.net> delivered \(250", first),
           "after the first attempt: the 250 recipient is delivered", first)
    tap.ok(first and re.search(r"<fail-550@example\.net> bounced \(550 5\.7\.1 forced permanent failure", first),
           "after the first attempt: the 550 recipient is bounced with its reply", first)
    out = wait_until(lambda: "<later@example.net> delivered" in show(gw, qid) and show(gw, qid), 20)
    tap.ok(out, "the 451 recipient is retried and delivered", show(gw, qid))
    out = out or show(gw, qid)
    tap.ok("state:        bounced" in out and "attempts:     2" in out,
           "final state: bounced (one recipient bounced) after 2 attempts", out)
    tap.ok(re.search(r"<ok@example\.net> delivered", out) and re.search(r"<fail-550@example\.net> bounced \(550", out),
           "final: the first delivered, the third bounced with the 550 kept", out)
    msgs = p3.messages()
    tap.eq([m[0]["rcpt_tos"] for m in msgs], [["ok@example.net"], ["later@example.net"]],
           "the server got the message twice: first for ok@, then for later@ only")
    tap.ok(all(m[1] == data for m in msgs), "both copies byte for byte")
    tap.eq(gw.stop(), 0, "three recipients: postmux serve exits 0")


# ---------------------------------------------------------------------------
def reuse():
    """1,000 messages through one worker open at most a handful of connections."""
    N = 1000
    p4 = peer("reuse", "--mode", "none", transcript=False)
    gw = gateway("reuse", {
        "transports": {"out": {"plugin": "smtp", "concurrency": 1, "options": smtp_opts(p4, "none")}},
        "default": "out", "retry": {"initial_delay": "1s", "jitter": 0}})
    gw.start()
    body = b"Subject: reuse\r\n\r\n" + b"y" * 200 + b"\r\n"
    t0 = time.time()
    submit_many(os.path.join(gw.state, "postmux.sock"),
                [("app@example.test", ["r%d@example.net" % i], body) for i in range(N)])
    wait_until(lambda: p4.status().get("messages", 0) >= N, 120, 0.2)
    st = p4.status()
    tap.comment("1000 messages in %.1f s; peer status: tcp_connections=%s sessions=%s max_active=%s"
                % (time.time() - t0, st.get("tcp_connections"), st.get("sessions"), st.get("max_active")))
    tap.eq(st.get("messages"), N, "reuse: the server got all 1,000 messages")
    tap.ok(1 <= st.get("tcp_connections", 0) <= 5,
           "reuse: 1,000 messages through one worker used %s connection(s) (at most 5)" % st.get("tcp_connections"))
    tap.ok(st.get("max_active", 99) <= 1, "reuse: never more than one connection at a time (concurrency 1)")
    rcpts = sorted(int(m[0]["rcpt_tos"][0][1:].split("@")[0]) for m in p4.messages())
    tap.eq(rcpts, list(range(N)), "reuse: each message exactly once")
    tap.eq(gw.stop(), 0, "reuse: postmux serve exits 0")


# ---------------------------------------------------------------------------
def commands():
    """doctor, send --test, config check of ntlm, a preset."""
    good = peer("doctor", "--mode", "starttls", "--user", USER + ":" + PASSWORD, cert=CA1)
    t = lambda opts: {"plugin": "smtp", "options": opts}
    cfg = {
        "transports": {
            "good": t(smtp_opts(good, "starttls", "plain", ca_file=CA1[0], password="file:" + PW_FILE)),
            "badpw": t(dict(smtp_opts(good, "starttls", "cram-md5", ca_file=CA1[0]), password="wrong-password")),
            "gm": {"preset": "gmail", "options": {"host": "127.0.0.1", "port": good.port, "ca_file": CA1[0],
                                                  "default_from": "preset-app@example.test", "username": USER, "password": "env:PMX_TEST_SMTP_PASSWORD"}},
            "gmbad": {"preset": "gmail", "options": {"host": "127.0.0.1", "port": good.port, "ca_file": CA1[0],
                                                     "username": USER, "password": "wrong-password"}},
        },
        "default": "good",
    }
    gw = gateway("cmds", cfg)
    r = gw.run("config", "check")
    tap.ok(r.returncode == 0, "config check: a gmail preset with host and port overridden loads",
           r.stdout.decode() + r.stderr.decode())

    # doctor, good server.
    r = gw.run("doctor", "--config", gw.config_path, "good", timeout=60)
    out = r.stdout.decode() + r.stderr.decode()
    tap.eq(r.returncode, 0, "doctor good: exits 0")
    for step in ("dns", "connect", "tls", "ehlo", "auth", "verdict"):
        tap.ok(re.search(r"^\s*ok\s+%s\b" % step, out, re.M), "doctor good: an ok %s line" % step, out)
    tap.ok(re.search(r"^\s*ok\s+tls\b.*TLSv1\.[23].*CN=Postmux test CA ca1.*verification: ok", out, re.M),
           "doctor good: the tls line shows the version, the issuer and the verification", out)
    tap.ok(re.search(r"^\s*ok\s+ehlo\b.*before STARTTLS:.*STARTTLS.*after STARTTLS:.*AUTH CRAM-MD5 LOGIN PLAIN", out, re.M),
           "doctor good: the EHLO capabilities before and after STARTTLS", out)
    tap.ok(re.search(r"^\s*ok\s+auth\b.*AUTH PLAIN.*235", out, re.M), "doctor good: AUTH PLAIN accepted with 235", out)
    tap.ok(re.search(r"^\s*ok\s+verdict\b", out, re.M), "doctor good: verdict ok", out)
    tap.ok(PASSWORD not in out, "doctor good: the password is not printed", out)
    tap.ok(not good.messages() and "MAIL" not in good.status().get("commands", {}),
           "doctor sends no mail", json.dumps(good.status()))

    # doctor, bad password.
    r = gw.run("doctor", "--config", gw.config_path, "badpw", timeout=60)
    out = r.stdout.decode() + r.stderr.decode()
    tap.eq(r.returncode, 1, "doctor bad password: exits 1")
    tap.ok(all(re.search(r"^\s*ok\s+%s\b" % s, out, re.M) for s in ("dns", "connect", "tls", "ehlo")),
           "doctor bad password: the steps before auth are ok", out)
    tap.ok(re.search(r"^\s*FAIL\s+auth\b.*CRAM-MD5.*535 5\.7\.8", out, re.M),
           "doctor bad password: a failed auth line with the server's 535", out)
    tap.ok(re.search(r"^\s*FAIL\s+verdict\b", out, re.M), "doctor bad password: a failing verdict", out)
    tap.ok("wrong-password" not in out, "doctor bad password: the password is not printed", out)

    # doctor, preset with a bad password: the preset's hint.
    r = gw.run("doctor", "--config", gw.config_path, "gmbad", timeout=60)
    out = r.stdout.decode() + r.stderr.decode()
    tap.ok(r.returncode == 1 and "app password" in out, "doctor on the gmail preset shows its hint when auth fails", out)

    # send --test through one transport.
    r = gw.run("send", "--config", gw.config_path, "--test", "--transport", "good", "--to", "tester@example.net",
               "--from", "app@example.test", timeout=60)
    out = r.stdout.decode() + r.stderr.decode()
    tap.eq(r.returncode, 0, "send --test: exits 0 on delivery")
    got = [m for m in good.messages() if m[0]["rcpt_tos"] == ["tester@example.net"]]
    tap.ok(len(got) == 1 and got[0][0]["mail_from"] == "app@example.test",
           "send --test: the server got the test message", out)
    tap.ok(re.search(r"tester@example\.net.*delivered|delivered.*tester@example\.net", out, re.I) and "250" in out,
           "send --test: a per-recipient result line with the 250", out)
    tap.ok(re.search(r"EHLO", out) and re.search(r"AUTH", out), "send --test: prints the transcript", out)
    blob = base64.b64encode(("\0%s\0%s" % (USER, PASSWORD)).encode()).decode()
    tap.ok(PASSWORD not in out and blob not in out, "send --test: the transcript has the secret redacted", out)

    r = gw.run("send", "--config", gw.config_path, "--test", "--transport", "good", "--to", "fail-550@example.net",
               "--from", "app@example.test", timeout=60)
    out = r.stdout.decode() + r.stderr.decode()
    tap.ok(r.returncode != 0 and "550" in out, "send --test: a rejected recipient exits non-zero with the 550", out)

    # The preset delivers too (security starttls comes from the preset).
    r = gw.run("send", "--config", gw.config_path, "--test", "--transport", "gm", "--to", "preset@example.net",
               timeout=60)
    out = r.stdout.decode() + r.stderr.decode()
    got = [m for m in good.messages() if m[0]["rcpt_tos"] == ["preset@example.net"]]
    tap.ok(r.returncode == 0 and len(got) == 1 and got[0][0]["tls"] and got[0][0]["auth_user"] == USER
           and got[0][0]["mail_from"] == "preset-app@example.test",
           "preset gmail (host overridden): send --test delivers over STARTTLS with AUTH, from default_from", out)

    # ntlm is not a mechanism: the schema says which are.
    bad = os.path.join(gw.dir, "ntlm.json")
    with open(bad, "w") as f:
        json.dump({"state_dir": gw.state, "default": "x", "transports": {
            "x": {"plugin": "smtp", "options": {"host": "127.0.0.1", "auth": "ntlm", "username": "u",
                                                "password": "env:PMX_TEST_SMTP_PASSWORD"}}}}, f, indent=1)
    r = subprocess.run([POSTMUX, "config", "check", "--config", bad], capture_output=True, timeout=60)
    out = r.stdout.decode() + r.stderr.decode()
    line = next((l for l in out.splitlines() if "/transports/x/options/auth" in l), "")
    tap.eq(r.returncode, 1, "config check: \"auth\": \"ntlm\" is refused")
    tap.ok(line and all(m in line for m in ("plain", "login", "cram-md5")),
           "config check: the ntlm error names /transports/x/options/auth and the allowed values", out)


# ---------------------------------------------------------------------------
try:
    CA1 = make_ca("ca1")
    CA2 = make_ca("ca2")
    section("matrix", matrix)
    section("failures", failures)
    section("three recipients", three_recipients)
    section("reuse", reuse)
    section("commands", commands)
finally:
    for gw in gateways:
        try:
            gw.stop()
        except Exception:
            pass
        if tap.failed:
            tap.comment("serve log of %s (last 3000 bytes):\n%s" % (gw.dir, gw.log()[-3000:]))
        gw.cleanup()
    for p in peers:
        p.stop()
    if not tap.failed:
        shutil.rmtree(WORK, ignore_errors=True)
    else:
        tap.comment("peer records kept in " + WORK)
tap.done()

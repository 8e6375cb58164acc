#!/usr/bin/python3
# SPDX-License-Identifier: GPL-3.0-or-later
"""The oauth2-smtp transport through the real `postmux serve`, against a
token endpoint written here (http.server on loopback: client_credentials
only, checks the client secret, counts requests, can revoke a token) and
tests/peers/smtp_peer.py requiring XOAUTH2 or OAUTHBEARER and accepting only
the tokens this endpoint issued and has not revoked (a shared token file):

- delivery with XOAUTH2 and with OAUTHBEARER; the peer saw the mailbox and
  the mechanism;
- a token revoked at the endpoint: after a restart the stored token is
  refused, the transport refreshes once and delivers;
- a wrong client secret: deferred, the endpoint's error in `queue show`,
  no secret in it;
- no issued token appears in the serve log or in `queue show`; the token
  store under state_dir/tokens is mode 0600.
"""
import base64
import http.server
import json
import os
import secrets
import shutil
import stat
import subprocess
import tempfile
import threading
import traceback
import urllib.parse

from pmxtest import Gateway, Tap, stop_process, wait_until

HERE = os.path.dirname(os.path.abspath(__file__))
PEER = os.path.join(HERE, "..", "peers", "smtp_peer.py")
PYTHON = "/usr/bin/python3"
USER = "mailbox@example.test"
CLIENT_ID = "pmx-test-client"
SECRET = "Cs-5512-s3cr3t"
BAD_SECRET = "Cs-wrong-0000"

tap = Tap()
WORK = tempfile.mkdtemp(prefix="pmx-o2smtp-")
TOKEN_FILE = os.path.join(WORK, "tokens.txt")
os.environ["PMX_TEST_O2_SECRET"] = SECRET
os.environ["PMX_TEST_O2_BAD_SECRET"] = BAD_SECRET


class IdP:
    """A client_credentials token endpoint; issued, unrevoked tokens are in TOKEN_FILE."""

    def __init__(self):
        self.lock = threading.Lock()
        self.issued = []
        self.revoked = set()
        self.requests = 0
        self.refused = 0
        idp = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def answer(self, code, body):
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self):
                n = int(self.headers.get("Content-Length", "0"))
                form = urllib.parse.parse_qs(self.rfile.read(n).decode())
                get = lambda k: form.get(k, [None])[0]
                cid, csecret = get("client_id"), get("client_secret")
                basic = self.headers.get("Authorization", "")
                if basic.startswith("Basic "):
                    u, _, pw = base64.b64decode(basic[6:]).decode().partition(":")
                    cid, csecret = urllib.parse.unquote_plus(u), urllib.parse.unquote_plus(pw)
                with idp.lock:
                    idp.requests += 1
                if self.path != "/token":
                    return self.answer(404, {"error": "not_found"})
                if get("grant_type") != "client_credentials":
                    return self.answer(400, {"error": "unsupported_grant_type"})
                if cid != CLIENT_ID or csecret != SECRET:
                    with idp.lock:
                        idp.refused += 1
                    return self.answer(401, {"error": "invalid_client",
                                             "error_description": "IDP-E401: client authentication failed"})
                tok = "at-" + secrets.token_urlsafe(24)
                with idp.lock:
                    idp.issued.append(tok)
                    idp.write()
                return self.answer(200, {"access_token": tok, "token_type": "Bearer", "expires_in": 3600,
                                         "scope": get("scope") or ""})

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.write()

    def write(self):
        tmp = TOKEN_FILE + ".tmp"
        with open(tmp, "w") as f:
            for t in self.issued:
                if t not in self.revoked:
                    f.write("%s:%s\n" % (USER, t))
        os.replace(tmp, TOKEN_FILE)

    def revoke(self, tok):
        with self.lock:
            self.revoked.add(tok)
            self.write()

    def count(self):
        with self.lock:
            return self.requests

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


class Peer:
    def __init__(self, name, mech):
        self.dir = os.path.join(WORK, "peer-" + name)
        os.makedirs(self.dir)
        self.outdir = os.path.join(self.dir, "mail")
        self.status_path = os.path.join(self.dir, "status.json")
        self.err = open(os.path.join(self.dir, "stderr.txt"), "wb")
        self.proc = subprocess.Popen([PYTHON, PEER, "--port", "0", "--mode", "none", "--require-auth",
                                      "--auth-over-plaintext", "--auth-mechs", mech, "--token-file", TOKEN_FILE,
                                      "--outdir", self.outdir, "--status", self.status_path],
                                     stdout=subprocess.PIPE, stderr=self.err)
        line = self.proc.stdout.readline().decode()
        if not line.startswith("PORT "):
            raise RuntimeError("smtp_peer %s did not start: %r" % (name, line))
        self.port = int(line.split()[1])

    def status(self):
        try:
            with open(self.status_path) as f:
                return json.load(f)
        except (FileNotFoundError, ValueError):
            return {}

    def messages(self):
        out = []
        if os.path.isdir(self.outdir):
            for name in sorted(os.listdir(self.outdir)):
                if name.endswith(".json"):
                    try:
                        with open(os.path.join(self.outdir, name)) as f:
                            env = json.load(f)
                        with open(os.path.join(self.outdir, name[:-5] + ".eml"), "rb") as f:
                            out.append((env, f.read()))
                    except (FileNotFoundError, ValueError):
                        pass
        return out

    def by_mid(self, mid):
        return [(e, b) for e, b in self.messages() if ("Message-ID: <%s>" % mid).encode() in b]

    def stop(self):
        stop_process(self.proc, 10)
        self.err.close()


def msg(mid, sender):
    return ("From: <%s>\r\nTo: <rcpt@example.net>\r\nSubject: oauth2-smtp %s\r\nMessage-ID: <%s>\r\n\r\n"
            "hello %s\r\n" % (sender, mid, mid, mid)).encode()


def show(gw, qid):
    return gw.run("queue", "show", qid).stdout.decode()


def section(name, fn):
    try:
        fn()
    except Exception:
        tap.ok(False, "%s: ran to the end" % name, traceback.format_exc())


idp = IdP()
px = Peer("xoauth2", "XOAUTH2")
pb = Peer("oauthbearer", "OAUTHBEARER")
gw = Gateway(name="pmx-o2smtp")
outputs = []


def transport(peer, mech, secret_env, scopes):
    return {"plugin": "oauth2-smtp", "concurrency": 1, "options": {
        "host": "127.0.0.1", "port": peer.port, "security": "none", "allow_plaintext_auth": True,
        "mechanism": mech, "username": USER, "helo_name": "postmux.test",
        "timeouts": {"connect": 10, "command": "20s", "data": "20s"},
        "credential": {"kind": "generic", "token_endpoint": "http://127.0.0.1:%d/token" % idp.port,
                       "client_id": CLIENT_ID, "client_secret": "env:" + secret_env, "scopes": scopes}}}


transports = {
    "o2x": transport(px, "xoauth2", "PMX_TEST_O2_SECRET", "https://mail.test/.default"),
    "o2b": transport(pb, "oauthbearer", "PMX_TEST_O2_SECRET", "https://mail.test/.default"),
    # Other scopes: its own token store entry, so it never sees the good tokens.
    "o2bad": transport(px, "xoauth2", "PMX_TEST_O2_BAD_SECRET", "https://mail.test/bad"),
}
routes = [{"name": n, "match": {"sender_domain": [n + ".test"]}, "transports": [n]} for n in transports]
gw.write_config({"transports": transports, "default": "o2x", "routes": routes,
                 "retry": {"initial_delay": "1h", "jitter": 0}})


def send(name, mid):
    p = gw.send("app@%s.test" % name, ["rcpt@example.net"], msg(mid, "app@%s.test" % name))
    if p.returncode != 0:
        raise RuntimeError(p.stderr.decode())
    return p.stdout.decode().strip()


def settled(qid, state, timeout=30):
    return wait_until(lambda: ("state:        %s" % state) in show(gw, qid), timeout)


def delivery():
    c = gw.run("config", "check")
    tap.ok(c.returncode == 0, "config check accepts three oauth2-smtp transports",
           c.stdout.decode() + c.stderr.decode())
    gw.start()
    for name, peer, mech in (("o2x", px, "XOAUTH2"), ("o2b", pb, "OAUTHBEARER")):
        mid = "%s-1@o2.test" % name
        qid = send(name, mid)
        got = wait_until(lambda: peer.by_mid(mid), 30)
        out = show(gw, qid)
        outputs.append(out)
        if not tap.ok(got and len(got) == 1, "%s: delivered once through %s" % (name, mech), out):
            continue
        env = got[0][0]
        tap.ok(env["auth_mech"] == mech and env["auth_user"] == USER,
               "%s: the peer saw AUTH %s as %s" % (name, mech, USER), json.dumps(env))
        tap.ok(settled(qid, "delivered"), "%s: queue show says delivered" % name, show(gw, qid))
    auths = px.status().get("auth", []) + pb.status().get("auth", [])
    tap.ok(auths and all(a["ok"] for a in auths), "every AUTH so far succeeded", json.dumps(auths))
    store = os.path.join(gw.state, "tokens")
    files = [os.path.join(store, f) for f in os.listdir(store)] if os.path.isdir(store) else []
    tap.ok(files and all(stat.S_IMODE(os.stat(f).st_mode) == 0o600 for f in files),
           "the token store files under state_dir/tokens are mode 0600",
           "\n".join("%s %o" % (f, stat.S_IMODE(os.stat(f).st_mode)) for f in files) or "no files")
    tap.eq(gw.stop(), 0, "postmux serve exits 0")


def revoked():
    before = idp.count()
    for t in list(idp.issued):
        idp.revoke(t)
    fails = len([a for a in px.status().get("auth", []) if not a["ok"]])
    gw.start()
    mid = "o2x-2@o2.test"
    qid = send("o2x", mid)
    got = wait_until(lambda: px.by_mid(mid), 30)
    out = show(gw, qid)
    outputs.append(out)
    tap.ok(got and len(got) == 1, "revoked token: refreshed and delivered", out + gw.log()[-3000:])
    auths = px.status().get("auth", [])
    tap.eq(len([a for a in auths if not a["ok"]]) - fails, 1,
           "revoked token: the stored token was refused once at AUTH")
    tap.eq(idp.count() - before, 1, "revoked token: exactly one token request to refresh it")
    tap.ok(settled(qid, "delivered"), "revoked token: queue show says delivered", show(gw, qid))


def bad_secret():
    qid = send("o2bad", "o2bad-1@o2.test")
    ok = settled(qid, "deferred")
    out = show(gw, qid)
    outputs.append(out)
    tap.ok(ok, "wrong client secret: deferred, not bounced", out)
    tap.ok("invalid_client" in out and "IDP-E401" in out,
           "wrong client secret: queue show has the endpoint's error", out)
    tap.ok(SECRET not in out and BAD_SECRET not in out, "wrong client secret: no secret in queue show", out)
    tap.ok(idp.refused >= 1 and not px.by_mid("o2bad-1@o2.test"),
           "wrong client secret: the endpoint refused it and nothing reached the peer")
    tap.eq(gw.stop(), 0, "postmux serve exits 0 again")


def shared_credential():
    """Two transports naming one credential under /credentials share one
    token source: one token request serves both, one store file."""
    cred = transport(px, "xoauth2", "PMX_TEST_O2_SECRET", "https://mail.test/shared")["options"]["credential"]
    shared = {"sx": transport(px, "xoauth2", "PMX_TEST_O2_SECRET", ""),
              "sb": transport(pb, "oauthbearer", "PMX_TEST_O2_SECRET", "")}
    for t in shared.values():
        t["options"]["credential"] = "corp"
    config = {"credentials": {"corp": cred}, "transports": shared, "default": "sx",
              "routes": [{"name": n, "match": {"sender_domain": [n + ".test"]}, "transports": [n]} for n in shared],
              "retry": {"initial_delay": "1h", "jitter": 0}}

    bad = json.loads(json.dumps(config))
    bad["transports"]["sb"]["options"]["credential"] = "corq"
    gw.write_config(bad)
    c = gw.run("config", "check")
    text = c.stdout.decode() + c.stderr.decode()
    tap.ok(c.returncode == 1 and "/transports/sb/options/credential: credential \"corq\" is not defined under "
           "credentials — define it there, or write the credential object here" in text,
           "config check: a credential name not under credentials is refused, naming it", text)

    gw.write_config(config)
    c = gw.run("config", "check")
    tap.ok(c.returncode == 0, "config check accepts two transports naming one credential",
           c.stdout.decode() + c.stderr.decode())
    before = idp.count()
    store = os.path.join(gw.state, "tokens")
    files_before = set(os.listdir(store))
    gw.start()
    for name, peer in (("sx", px), ("sb", pb)):
        mid = "%s-1@o2.test" % name
        qid = send(name, mid)
        got = wait_until(lambda: peer.by_mid(mid), 30)
        outputs.append(show(gw, qid))
        tap.ok(got and len(got) == 1, "shared credential: %s delivered" % name, show(gw, qid))
    tap.eq(idp.count() - before, 1, "shared credential: one token request served both transports")
    corp = sorted(set(os.listdir(store)) - files_before)
    tap.eq(len(corp), 1, "shared credential: one token store file for both transports (%s)" % corp)
    st = gw.run("auth", "status")
    text = st.stdout.decode()
    tap.ok(st.returncode == 0 and text.count("corp") >= 1, "auth status lists the shared credential", text)
    tap.eq(gw.stop(), 0, "postmux serve exits 0 after the shared-credential run")
    out = gw.run("auth", "logout", "corp")
    tap.ok(out.returncode == 0 and not set(corp) & set(os.listdir(store)),
           "auth logout takes the shared credential's name and removes its one store file",
           out.stdout.decode() + out.stderr.decode())


def no_token_leaks():
    log = gw.log()
    text = log + "\n".join(outputs)
    leaked = [t for t in idp.issued if t in text]
    tap.ok(idp.issued and not leaked, "no issued token (%d) appears in the serve log or queue show"
           % len(idp.issued), "leaked: %r" % leaked)
    tap.ok(SECRET not in log and BAD_SECRET not in log, "no client secret in the serve log")


try:
    section("delivery", delivery)
    section("revoked", revoked)
    section("bad-secret", bad_secret)
    section("shared-credential", shared_credential)
    section("leaks", no_token_leaks)
finally:
    gw.cleanup()
    px.stop()
    pb.stop()
    idp.stop()
    shutil.rmtree(WORK, ignore_errors=True)
tap.done()

#!/usr/bin/python3
# SPDX-License-Identifier: GPL-3.0-or-later
"""OAuth2 end to end with real peers on loopback: the real `postmux serve`
and `postmux auth`/`doctor`, the oauth2-smtp transport, Dovecot's
submission service with an oauth2 passdb that introspects every token at
the test identity provider (tests/peers/pmx-idp, which checks client
secrets, client assertions and service-account JWTs with the public key,
rotates and revokes refresh tokens, and expires access tokens), relaying to
the aiosmtpd sink (tests/peers/smtp_peer.py).

- delivery with XOAUTH2 and with OAUTHBEARER (Dovecot logs the method), with
  a Google service-account JWT and a Microsoft client assertion;
- an access token revoked at the IdP: one refresh, then delivered;
- rotation: after a refresh that rotated the refresh token, kill -9; after
  the restart the new refresh token is the one used (the old one would be a
  replay, which the IdP counts);
- a revoked refresh token: "needs login" in `postmux auth status` and
  /v1/health, the message stays queued (deferred); `postmux auth login`,
  driven through the IdP's authorize endpoint and the loopback redirect,
  lets it go;
- the IdP's token endpoint failing (HTTP 500): deferred, delivered when it
  is back;
- single flight: 32 concurrent sends with an expired token cause exactly
  one token request;
- a credential whose IdP hangs does not delay another credential's sends;
- `postmux doctor`: token (expiry, scopes, never the token) and the SMTP
  checks; a tampered service-account key fails with a clear error;
- the token store is 0600; no token the IdP issued appears in any log or
  command output of the run.
"""
import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
import traceback
import urllib.parse
import urllib.request

from pmxtest import POSTMUX, Gateway, Tap, stop_process, wait_until

HERE = os.path.dirname(os.path.abspath(__file__))
SINK = os.path.join(HERE, "..", "peers", "smtp_peer.py")
PMX_IDP = os.environ.get("PMX_IDP")
PYTHON = "/usr/bin/python3"
USER = "alice@example.test"
SECRET = "dv-Cl1ent-s3cret"
DOVECOT = shutil.which("dovecot") or "/usr/sbin/dovecot"

tap = Tap()
if not PMX_IDP or not os.path.exists(DOVECOT):
    print("1..0 # SKIP needs tests/peers/pmx-idp and Dovecot (contrib/install-deps.sh)")
    sys.exit(0)
if os.geteuid() != 0:
    # Dovecot's master drops its login processes to the dovecot/dovenull users.
    print("1..0 # SKIP Dovecot's private instance needs root here (CI runs the suite as root)")
    sys.exit(0)

WORK = tempfile.mkdtemp(prefix="pmx-o2dv-")
os.chmod(WORK, 0o755)          # Dovecot's unprivileged processes traverse it
os.environ["PMX_TEST_DV_SECRET"] = SECRET
outputs = []                    # every command output, for the leak check


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def run(*cmd, timeout=60):
    p = subprocess.run(list(cmd), capture_output=True, timeout=timeout)
    return p.returncode, p.stdout.decode(), p.stderr.decode()


class Idp:
    """tests/peers/pmx-idp, driven through its control API."""

    def __init__(self):
        self.err = open(os.path.join(WORK, "idp.log"), "wb")
        self.proc = subprocess.Popen([PMX_IDP], stdout=subprocess.PIPE, stderr=self.err)
        info = json.loads(self.proc.stdout.readline().decode())
        self.url, self.control = info["url"], info["control"]

    def ctl(self, path, **params):
        url = self.control + path + ("?" + urllib.parse.urlencode(params) if params else "")
        with urllib.request.urlopen(url, timeout=30) as r:
            return json.loads(r.read().decode())

    def requests(self, client_id):
        return self.ctl("/stats", client_id=client_id)["requests"]

    def stop(self):
        stop_process(self.proc, 30)
        self.err.close()


class Sink:
    def __init__(self):
        self.outdir = os.path.join(WORK, "sink")
        self.err = open(os.path.join(WORK, "sink.log"), "wb")
        self.proc = subprocess.Popen([PYTHON, SINK, "--port", "0", "--mode", "none", "--outdir", self.outdir],
                                     stdout=subprocess.PIPE, stderr=self.err)
        line = self.proc.stdout.readline().decode()
        if not line.startswith("PORT "):
            raise RuntimeError("smtp_peer did not start: %r" % line)
        self.port = int(line.split()[1])

    def by_mid(self, mid):
        out = []
        if os.path.isdir(self.outdir):
            for name in sorted(os.listdir(self.outdir)):
                if name.endswith(".eml"):
                    with open(os.path.join(self.outdir, name), "rb") as f:
                        data = f.read()
                    if ("Message-ID: <%s>" % mid).encode() in data:
                        out.append(data)
        return out

    def stop(self):
        stop_process(self.proc, 30)
        self.err.close()


class Dovecot:
    """A private Dovecot instance: submission with STARTTLS, oauth2 passdb
    introspecting at the IdP, relaying to the sink."""

    def __init__(self, idp, sink):
        d = os.path.join(WORK, "dovecot")
        for sub in ("run", "state", "home"):
            os.makedirs(os.path.join(d, sub))
        shutil.chown(os.path.join(d, "home"), "dovecot", "dovecot")
        self.port = free_port()
        self.log_path = os.path.join(d, "dovecot.log")
        self.cert = os.path.join(d, "cert.pem")
        key = os.path.join(d, "key.pem")
        rc, out, err = run("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key,
                           "-out", self.cert, "-days", "2", "-subj", "/CN=localhost",
                           "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1")
        if rc != 0:
            raise RuntimeError("openssl: " + err)
        with open(os.path.join(d, "oauth2.conf.ext"), "w") as f:
            f.write("introspection_mode = post\nintrospection_url = %s/introspect\nforce_introspection = yes\n"
                    "username_attribute = username\nactive_attribute = active\nactive_value = true\n" % idp.url)
        self.conf = os.path.join(d, "dovecot.conf")
        with open(self.conf, "w") as f:
            f.write("""protocols = submission
listen = 127.0.0.1
base_dir = {d}/run
state_dir = {d}/state
instance_name = pmx-test-dovecot-{port}
log_path = {log}
hostname = submission.test
postmaster_address = postmaster@example.test
ssl = required
ssl_cert = <{cert}
ssl_key = <{key}
auth_verbose = yes
auth_failure_delay = 0
mail_max_userip_connections = 100
auth_mechanisms = xoauth2 oauthbearer
auth_username_format = %Lu
passdb {{
  driver = oauth2
  mechanisms = xoauth2 oauthbearer
  args = {d}/oauth2.conf.ext
}}
userdb {{
  driver = static
  args = uid=dovecot gid=dovecot home={d}/home/%u
}}
mail_location = maildir:~/Maildir
first_valid_uid = 100
submission_relay_host = 127.0.0.1
submission_relay_port = {sink}
submission_relay_ssl = no
submission_relay_trusted = no
service submission-login {{
  inet_listener submission {{
    address = 127.0.0.1
    port = {port}
  }}
  inet_listener submissions {{
    port = 0
  }}
}}
""".format(d=d, port=self.port, log=self.log_path, cert=self.cert, key=key, sink=sink.port))
        rc, out, err = run("doveconf", "-c", self.conf, "-n")
        if rc != 0:
            raise RuntimeError("doveconf: " + err)
        self.out = open(os.path.join(d, "stdout.txt"), "wb")
        self.proc = subprocess.Popen([DOVECOT, "-F", "-c", self.conf], stdout=self.out, stderr=self.out)

        def listening():
            try:
                socket.create_connection(("127.0.0.1", self.port), 1).close()
                return True
            except OSError:
                return False
        if not wait_until(listening, 30):
            raise RuntimeError("dovecot did not listen:\n" + self.log())

    def log(self):
        try:
            with open(self.log_path) as f:
                return f.read()
        except FileNotFoundError:
            return ""

    def stop(self):
        stop_process(self.proc, 30)
        self.out.close()


def section(name, fn):
    try:
        fn()
    except Exception:
        tap.ok(False, "%s: ran to the end" % name, traceback.format_exc())


def make_key(name):
    path = os.path.join(WORK, name + ".key")
    rc, out, err = run("openssl", "genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", path)
    if rc != 0:
        raise RuntimeError("openssl genpkey: " + err)
    os.chmod(path, 0o600)
    return path


def service_account_file(name, email, key_path, token_uri):
    path = os.path.join(WORK, name + ".json")
    with open(key_path) as f:
        pem = f.read()
    with open(path, "w") as f:
        json.dump({"type": "service_account", "project_id": "pmx-test", "private_key_id": "k-" + name,
                   "private_key": pem, "client_email": email, "client_id": "1234",
                   "token_uri": token_uri}, f)
    os.chmod(path, 0o600)
    return path


idp = Idp()
sink = Sink()
dovecot = Dovecot(idp, sink)
gw = Gateway(name="pmx-o2dv")

# --- identities at the IdP (all map to the mailbox USER at introspection) ---
for client in ("cc-x", "cc-b", "rt-app", "down-app", "bulk-app", "hang-app", "iso-app", "dev-app"):
    idp.ctl("/client", id=client, secret=SECRET, username=USER)
sa_key = make_key("sa")
idp.ctl("/service-account", email="gw@pmx-test.iam.gserviceaccount.com", key=sa_key, subject=USER,
        scopes="https://mail.google.com/", username=USER)
sa_file = service_account_file("sa", "gw@pmx-test.iam.gserviceaccount.com", sa_key, idp.url + "/token")
# Tampered: the key file of a registered account holds another private key.
idp.ctl("/service-account", email="tampered@pmx-test.iam.gserviceaccount.com", key=sa_key, subject=USER,
        scopes="https://mail.google.com/", username=USER)
tampered_file = service_account_file("tampered", "tampered@pmx-test.iam.gserviceaccount.com",
                                     make_key("tampered"), idp.url + "/token")
cert_key = make_key("cert")
cert_pem = os.path.join(WORK, "cert-app.pem")
rc, _, err = run("openssl", "req", "-x509", "-key", cert_key, "-out", cert_pem, "-days", "2", "-subj", "/CN=cert-app")
idp.ctl("/cert-client", id="cert-app", cert=cert_pem, username=USER)
seed = idp.ctl("/issue-refresh", client_id="rt-app")["refresh_token"]
seed_file = os.path.join(WORK, "rt-seed")
with open(seed_file, "w") as f:
    f.write(seed)
os.chmod(seed_file, 0o600)


def cc(client, **extra):
    c = {"kind": "generic", "token_endpoint": idp.url + "/token", "client_id": client,
         "client_secret": "env:PMX_TEST_DV_SECRET", "scopes": "https://outlook.office365.com/.default"}
    c.update(extra)
    return c


def transport(credential, mech="xoauth2", concurrency=1):
    return {"plugin": "oauth2-smtp", "concurrency": concurrency, "options": {
        "host": "127.0.0.1", "port": dovecot.port, "security": "starttls", "ca_file": dovecot.cert,
        "mechanism": mech, "username": USER, "helo_name": "postmux.test",
        "max_messages_per_connection": 1,
        "timeouts": {"connect": 10, "command": "20s", "data": "20s"}, "credential": credential}}


transports = {
    "o2x": transport(cc("cc-x")),
    "o2b": transport(cc("cc-b"), "oauthbearer"),
    "o2sa": transport({"kind": "google", "service_account_file": sa_file, "subject": USER}),
    "o2cert": transport({"kind": "microsoft", "tenant": "t1", "client_id": "cert-app",
                         "token_endpoint": idp.url + "/t1/oauth2/v2.0/token",
                         "certificate": cert_pem, "private_key": "file:" + cert_key}, "oauthbearer"),
    "o2rt": transport({"kind": "generic", "token_endpoint": idp.url + "/token",
                       "authorization_endpoint": idp.url + "/authorize", "grant": "refresh_token",
                       "client_id": "rt-app", "client_secret": "env:PMX_TEST_DV_SECRET",
                       "refresh_token": "file:" + seed_file,
                       "scopes": "https://outlook.office.com/SMTP.Send offline_access"}),
    "o2down": transport(cc("down-app")),
    "o2bulk": transport(cc("bulk-app"), concurrency=32),
    "o2hang": transport(cc("hang-app", timeout=60)),
    "o2iso": transport(cc("iso-app")),
    "o2tamper": transport({"kind": "google", "service_account_file": tampered_file, "subject": USER}),
    "o2dev": transport({"kind": "microsoft", "tenant": "t1", "client_id": "dev-app", "grant": "refresh_token",
                        "client_secret": "env:PMX_TEST_DV_SECRET",
                        "token_endpoint": idp.url + "/t1/oauth2/v2.0/token"}),
    "o2gm": transport({"kind": "google", "grant": "refresh_token", "client_id": "gm.apps.googleusercontent.com",
                       "client_secret": "env:PMX_TEST_DV_SECRET", "token_endpoint": idp.url + "/token"}),
}
routes = [{"name": n, "match": {"sender_domain": [n + ".test"]}, "transports": [n]} for n in transports]
gw.write_config({"transports": transports, "default": "o2x", "routes": routes,
                 "listen": {"http": [{"address": "127.0.0.1:0"}]},
                 "retry": {"initial_delay": "1s", "multiplier": 10, "max_delay": "1h", "jitter": 0}})
http_port = None


def cli(*args, timeout=60):
    p = subprocess.run([POSTMUX, args[0], "--config", gw.config_path] + list(args[1:]),
                       capture_output=True, timeout=timeout, env=gw.env())
    out = p.stdout.decode() + p.stderr.decode()
    outputs.append(out)
    return p.returncode, out


def msg(mid, sender):
    return ("From: <%s>\r\nTo: <rcpt@example.net>\r\nSubject: oauth2 %s\r\nMessage-ID: <%s>\r\n\r\n"
            "hello %s\r\n" % (sender, mid, mid, mid)).encode()


def send(name, mid):
    p = gw.send("app@%s.test" % name, ["rcpt@example.net"], msg(mid, "app@%s.test" % name))
    if p.returncode != 0:
        raise RuntimeError(p.stderr.decode())
    return p.stdout.decode().strip()


def show(qid):
    out = gw.run("queue", "show", qid).stdout.decode()
    outputs.append(out)
    return out


def state_is(qid, state):
    return ("state:        %s" % state) in show(qid)


def delivered(name, mid, timeout=60):
    return wait_until(lambda: len(sink.by_mid(mid)) == 1, timeout)


def health():
    with urllib.request.urlopen("http://127.0.0.1:%d/v1/health" % http_port, timeout=30) as r:
        body = r.read().decode()
    outputs.append(body)
    return json.loads(body)


def auth_status():
    rc, out = cli("auth", "status", "--json")
    return {c["transport"]: c for c in json.loads(out[:out.rindex("}") + 1])["credentials"]}


def start():
    global http_port
    gw.start()
    import re
    m = re.findall(r"http: listening on http://127\.0\.0\.1:(\d+)/", gw.log())
    http_port = int(m[-1])


def delivery():
    rc, out = cli("config", "check")
    tap.ok(rc == 0, "config check accepts twelve oauth2-smtp transports", out)
    start()
    for name, method, what in (("o2x", "XOAUTH2", "client secret"), ("o2b", "OAUTHBEARER", "client secret"),
                               ("o2sa", "XOAUTH2", "service-account JWT verified with the public key"),
                               ("o2cert", "OAUTHBEARER", "client assertion (x5t#S256) verified with the certificate")):
        logins = dovecot.log().count("method=%s" % method)
        mid = "%s-1@o2.test" % name
        qid = send(name, mid)
        ok = delivered(name, mid)
        tap.ok(ok, "%s: delivered through Dovecot with %s (%s)" % (name, method, what),
               show(qid) + gw.log()[-3000:] + dovecot.log()[-2000:])
        tap.ok(dovecot.log().count("method=%s" % method) > logins and "user=<%s>" % USER in dovecot.log(),
               "%s: Dovecot logged the %s login of %s after introspecting the token" % (name, method, USER),
               dovecot.log()[-2000:])
        tap.ok(wait_until(lambda: state_is(qid, "delivered"), 30), "%s: queue show says delivered" % name)


def revoked_access():
    before = idp.requests("cc-x")
    refused = dovecot.log().count("Introspection failed")
    idp.ctl("/revoke-access", client_id="cc-x")
    qid = send("o2x", "o2x-2@o2.test")
    ok = delivered("o2x", "o2x-2@o2.test")
    tap.ok(ok, "revoked access token: delivered", show(qid) + gw.log()[-3000:])
    tap.eq(dovecot.log().count("Introspection failed") - refused, 1,
           "revoked access token: Dovecot refused the revoked token once")
    tap.eq(idp.requests("cc-x") - before, 1, "revoked access token: exactly one token request to refresh it")
    tap.ok(wait_until(lambda: state_is(qid, "delivered"), 30) and "attempts:     1\n" in show(qid),
           "revoked access token: delivered at the first attempt (refreshed within it)", show(qid))


def rotation():
    before = idp.requests("rt-app")
    qid = send("o2rt", "o2rt-1@o2.test")
    tap.ok(delivered("o2rt", "o2rt-1@o2.test"), "refresh token: delivered", show(qid) + gw.log()[-3000:])
    tap.eq(idp.requests("rt-app") - before, 1, "refresh token: one refresh (which rotated the refresh token)")
    store = auth_status()["o2rt"]["token_store"]
    with open(store) as f:
        stored = json.load(f)["refresh_token"]
    tap.ok(stored != seed and stored in idp.ctl("/issued")["tokens"],
           "rotation: the store holds the new refresh token, not the seed")
    tap.eq(stat.S_IMODE(os.stat(store).st_mode), 0o600, "rotation: the token store file is mode 0600")
    tap.eq(gw.stop(signal.SIGKILL), -signal.SIGKILL, "kill -9 the daemon")
    replays = idp.ctl("/stats")["replays"]
    idp.ctl("/revoke-access", client_id="rt-app")   # forces a refresh after the restart
    start()
    before = idp.requests("rt-app")
    qid = send("o2rt", "o2rt-2@o2.test")
    tap.ok(delivered("o2rt", "o2rt-2@o2.test"), "rotation: delivered after the restart", show(qid) + gw.log()[-3000:])
    tap.eq(idp.requests("rt-app") - before, 1, "rotation: one refresh after the restart")
    tap.eq(idp.ctl("/stats")["replays"], replays,
           "rotation: the IdP saw no spent refresh token (the rotated one was used, not the seed)")


def needs_login():
    idp.ctl("/revoke-refresh", client_id="rt-app")
    idp.ctl("/revoke-access", client_id="rt-app")
    qid = send("o2rt", "o2rt-3@o2.test")
    st = wait_until(lambda: auth_status()["o2rt"]["state"] == "needs_login", 30)
    tap.ok(st, "revoked refresh token: postmux auth status says needs_login", json.dumps(auth_status()))
    rc, text = cli("auth", "status")
    tap.ok("state:         needs_login — run postmux auth login o2rt" in text and "invalid_grant" in text,
           "postmux auth status (text) names the state, the fix and the provider's error", text)
    h = health()
    tap.ok(h["status"] == "degraded" and h["credentials"]["o2rt"]["state"] == "needs_login"
           and h["credentials"]["o2x"]["state"] == "ok",
           "/v1/health: status degraded, credential o2rt needs_login, others ok", json.dumps(h))
    # Retries come 1 s, then 10 s, then 100 s apart: after the second attempt
    # the message would wait 10 s more, after the third 100 s.
    tap.ok(wait_until(lambda: "attempts:     2\n" in show(qid), 30),
           "needs login: retried, still waiting", show(qid))
    out = show(qid)
    tap.ok(state_is(qid, "deferred") and not sink.by_mid("o2rt-3@o2.test"),
           "needs login: the message waits in the queue (deferred, not bounced)", out)
    tap.ok("invalid_grant" in out and "run `postmux auth login o2rt`" in out
           and all(line.count("postmux auth login") <= 1 for line in out.splitlines()),
           "needs login: queue show has the provider's error and, once, the command that fixes it", out)

    # The login, driven the way a browser would: open the printed URL; the
    # IdP's authorize endpoint redirects to the loopback listener.
    authorizations = idp.ctl("/stats")["authorizations"]
    p = subprocess.Popen([POSTMUX, "auth", "--config", gw.config_path, "login", "o2rt", "--timeout", "60"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=gw.env())
    lines = []
    url = None
    while url is None:
        line = p.stdout.readline().decode()
        if not line:
            break
        lines.append(line)
        if line.strip().startswith(idp.url + "/authorize?"):
            url = line.strip()
    tap.ok(url is not None and "/authorize?response_type=code&" in url and "code_challenge_method=S256" in url
           and "state=" in url,
           "auth login prints the authorize URL with PKCE S256 and a state", "".join(lines))
    if url is None:
        p.kill()
        p.wait()
        return
    q = urllib.parse.parse_qs(urllib.parse.urlsplit(url).query)
    redirect = q["redirect_uri"][0]
    tap.ok(redirect.startswith("http://127.0.0.1:") and redirect.endswith("/"),
           "the redirect URI is a loopback listener", redirect)
    # A redirect with the wrong state is refused and the login goes on.
    try:
        urllib.request.urlopen(redirect + "?code=forged&state=forged", timeout=10)
        forged = None
    except urllib.error.HTTPError as e:
        forged = e.code
    tap.eq(forged, 400, "the loopback listener refuses a redirect with a wrong state")
    with urllib.request.urlopen(url, timeout=30) as r:
        page = r.read().decode()
    tap.ok("Signed in" in page, "the browser lands on the listener's success page", page)
    out, err = p.communicate(timeout=60)
    text = "".join(lines) + out.decode() + err.decode()
    outputs.append(text)
    tap.eq(p.returncode, 0, "postmux auth login exits 0")
    tap.ok("Logged in: transport o2rt" in text
           and "1 deferred message of transport o2rt due now; the daemon was told." in text,
           "auth login says where the login is stored and makes the waiting message due now", text)
    tap.eq(idp.ctl("/stats")["authorizations"] - authorizations, 1, "one authorization at the IdP")
    tap.ok(delivered("o2rt", "o2rt-3@o2.test"), "after the login the waiting message is delivered",
           show(qid) + gw.log()[-3000:])
    tap.eq(auth_status()["o2rt"]["state"], "ok", "postmux auth status says ok again")
    h = health()
    tap.ok(h["credentials"]["o2rt"]["state"] == "ok" and h["credentials"]["o2rt"]["last_error"] is None,
           "/v1/health: credential o2rt ok again", json.dumps(h))


def idp_down():
    idp.ctl("/mode", client_id="down-app", mode="fail")
    qid = send("o2down", "o2down-1@o2.test")
    ok = wait_until(lambda: state_is(qid, "deferred"), 30)
    out = show(qid)
    tap.ok(ok and "HTTP 500" in out and "will retry" in out, "IdP down: deferred, with the endpoint's failure", out)
    tap.ok(not sink.by_mid("o2down-1@o2.test") and "bounced" not in out, "IdP down: not bounced, nothing sent")
    st = auth_status()["o2down"]
    tap.ok(st["state"] == "error" and "HTTP 500" in (st["last_error"] or ""),
           "IdP down: auth status shows the error", json.dumps(st))
    idp.ctl("/mode", client_id="down-app", mode="ok")
    tap.ok(delivered("o2down", "o2down-1@o2.test"), "IdP back: delivered", show(qid) + gw.log()[-2000:])


def single_flight():
    qid = send("o2bulk", "bulk-0@o2.test")
    tap.ok(delivered("o2bulk", "bulk-0@o2.test"), "bulk: the first message is delivered", show(qid))
    store = auth_status()["o2bulk"]["token_store"]
    tap.eq(gw.stop(), 0, "postmux serve stops")
    with open(store) as f:
        data = json.load(f)
    data["expires_at"] = int(time.time()) - 1           # the token has just expired
    with open(store + ".tmp", "w") as f:
        json.dump(data, f)
    os.chmod(store + ".tmp", 0o600)
    os.replace(store + ".tmp", store)
    mids = ["bulk-%d@o2.test" % i for i in range(1, 33)]
    for mid in mids:
        send("o2bulk", mid)                              # queued while the daemon is down
    before = idp.requests("bulk-app")
    start()
    ok = wait_until(lambda: all(len(sink.by_mid(m)) == 1 for m in mids), 90)
    tap.ok(ok, "32 messages delivered by 32 workers", "%d delivered" % sum(1 for m in mids if sink.by_mid(m)))
    tap.eq(idp.requests("bulk-app") - before, 1, "32 concurrent sends with an expired token: exactly one token request")


def isolation():
    idp.ctl("/mode", client_id="hang-app", mode="hang")
    before = idp.requests("hang-app")
    hq = send("o2hang", "hang-1@o2.test")
    tap.ok(wait_until(lambda: idp.requests("hang-app") > before, 30),
           "isolation: the hanging IdP has the token request")
    iq = send("o2iso", "iso-1@o2.test")
    tap.ok(delivered("o2iso", "iso-1@o2.test"), "isolation: another credential's message is delivered",
           show(iq) + gw.log()[-2000:])
    tap.ok(not sink.by_mid("hang-1@o2.test") and not state_is(hq, "delivered"),
           "isolation: meanwhile the hanging credential's message is still waiting", show(hq))


def doctor():
    rc, out = cli("doctor", "o2x")
    tap.eq(rc, 0, "doctor o2x exits 0")
    tap.ok("token" in out and "valid until" in out and "https://outlook.office365.com/.default" in out,
           "doctor o2x: the token step shows the expiry and the scopes", out)
    tap.ok("auth" in out and "XOAUTH2" in out.upper() and "result: ok" in out,
           "doctor o2x: the SMTP checks pass through Dovecot with XOAUTH2", out)
    rc, out = cli("doctor", "o2tamper")
    tap.eq(rc, 1, "doctor o2tamper exits 1")
    tap.ok("Invalid JWT Signature" in out and "invalid_grant" in out and "key file" in out,
           "doctor o2tamper: the IdP's refusal of the tampered key and the fix", out)


def device_and_logout():
    rc, out = cli("auth", "login", "o2gm", "--device")
    tap.ok(rc == 1 and "Google refuses Gmail scopes" in out and "without --device" in out
           and "service account" in out,
           "auth login --device for Google: refused at once, names the loopback flow and service accounts", out)
    st = auth_status()
    tap.ok(st["o2dev"]["state"] == "needs_login" and st["o2gm"]["state"] == "needs_login",
           "a delegated credential without a login needs one", json.dumps(st))
    p = subprocess.Popen([POSTMUX, "auth", "--config", gw.config_path, "login", "o2dev", "--device"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=gw.env())
    first = p.stdout.readline().decode()
    code = first.split("enter the code ")[1].split()[0] if "enter the code " in first else None
    tap.ok(code is not None and (idp.url + "/device") in first,
           "auth login --device prints the verification URL and the user code", first)
    if code is not None:
        idp.ctl("/approve-device", user_code=code)
    out, err = p.communicate(timeout=60)
    outputs.append(first + out.decode() + err.decode())
    tap.eq(p.returncode, 0, "auth login --device exits 0 once the user signed in")
    qid = send("o2dev", "o2dev-1@o2.test")
    tap.ok(delivered("o2dev", "o2dev-1@o2.test"), "the device login's tokens deliver through Dovecot",
           show(qid) + gw.log()[-2000:])
    store = auth_status()["o2dev"]["token_store"]
    rc, out = cli("auth", "logout", "o2dev")
    tap.ok(rc == 0 and "Logged out" in out and not os.path.exists(store),
           "auth logout removes the token store file", out)
    tap.eq(auth_status()["o2dev"]["state"], "needs_login", "after logout the credential needs a login")


def store_and_leaks():
    store = os.path.join(gw.state, "tokens")
    files = [os.path.join(store, f) for f in os.listdir(store)] if os.path.isdir(store) else []
    tap.ok(len(files) >= 8 and all(stat.S_IMODE(os.stat(f).st_mode) == 0o600 for f in files),
           "every token store file is mode 0600 (%d files)" % len(files),
           "\n".join("%s %o" % (f, stat.S_IMODE(os.stat(f).st_mode)) for f in files))
    issued = idp.ctl("/issued")["tokens"]
    with open(os.path.join(WORK, "sink.log"), errors="replace") as f:
        peers_log = f.read() + dovecot.log()
    text = gw.log() + "\n".join(outputs) + peers_log
    leaked = [t for t in issued if t in text]
    tap.ok(len(issued) > 15 and not leaked,
           "no token the IdP issued (%d) appears in the serve log, any command output, or the peers' logs"
           % len(issued),
           "leaked %d" % len(leaked))
    tap.ok(SECRET not in text, "no client secret in the logs or outputs")


try:
    section("delivery", delivery)
    section("revoked-access", revoked_access)
    section("rotation", rotation)
    section("needs-login", needs_login)
    section("idp-down", idp_down)
    section("single-flight", single_flight)
    section("doctor", doctor)
    section("device-and-logout", device_and_logout)
    section("isolation", isolation)
    section("store-and-leaks", store_and_leaks)
finally:
    gw.cleanup()
    dovecot.stop()
    sink.stop()
    idp.stop()
    shutil.rmtree(WORK, ignore_errors=True)
tap.done()

#!/usr/bin/python3
# SPDX-License-Identifier: GPL-3.0-or-later
"""The gmail transport through the real `postmux serve`, fed over SMTP by
the real listener, against tests/peers/mock-gmail: a libsoup Gmail API that
checks every request's format (path, method, {"raw": base64url} or a
message/rfc822 media upload) and every bearer token (issued by its
in-process test IdP from a service-account JWT the IdP verified with the
public key: signature, aud, exp, sub, scope; live; for the path's user;
with a sending scope), and saves each decoded message.

Shown here:
- doctor: token for the subject, scope, verdict; unauthorized_client names
  domain-wide delegation for gmail.send;
- SMTP in -> Gmail out, envelope-only Bcc: delivered to exactly the
  envelope set, every byte but the added Bcc field unchanged; a Bcc header
  naming a non-recipient is dropped;
- a To address outside the envelope: bounced by default with the reason;
  with unlisted_recipients "remove", taken out of To; recipients already
  delivered or bounced by an earlier attempt are never re-sent;
- a 12 MB message goes by media upload, byte for byte; one over 35 MB
  bounces with its size;
- a run of 429s pauses the transport (shown by `queue list` and
  /v1/health), then everything is delivered once; a 503 backendError
  pauses for the first back-off step;
- 401 (revoked token, and an injected 401): refreshed once, sent once;
- 400 bounces, 403 domainPolicy and insufficient scope defer, each with the
  exact reason in `queue show`; a daily limit pauses for daily_limit_pause;
- the Gmail message id is in the attempt log; no token in logs or output.
"""
import base64
import json
import os
import re
import shutil
import signal
import smtplib
import subprocess
import tempfile
import time
import traceback
import urllib.error
import urllib.request

from pmxtest import Tap, wait_until
from smtpdtest import SmtpGateway

MOCK = os.environ.get("PMX_MOCK_GMAIL", "mock-gmail")
SA = "postmux-relay@postmux-mock.iam.gserviceaccount.com"
SUBJECT = "sender@ws.test"
SEND = "https://www.googleapis.com/auth/gmail.send"
READONLY = "https://www.googleapis.com/auth/gmail.readonly"

APP_ID = "123-app.apps.googleusercontent.com"
APP_SECRET = "GOCSPX-app-s3cret"

tap = Tap()
WORK = tempfile.mkdtemp(prefix="pmx-gmail-")
outputs = []


class Mock:
    def __init__(self):
        self.dir = os.path.join(WORK, "mock")
        os.makedirs(self.dir)
        self.err = open(os.path.join(WORK, "mock-stderr.txt"), "wb")
        self.proc = subprocess.Popen([MOCK, "--dir", self.dir, "--service-account", SA, "--subject", SUBJECT,
                                      "--scopes", SEND + " " + READONLY, "--client", APP_ID + ":" + APP_SECRET],
                                     stdout=subprocess.PIPE, stderr=self.err)
        line = self.proc.stdout.readline().decode()
        info = json.loads(line)
        self.api, self.key_file, self.client_id = info["api"], info["key_file"], info["client_id"]
        self.token_uri = info["token_uri"]

    def call(self, path, body=None):
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.api + path, data=data, method="POST" if data is not None or
                                     path != "/_mock/state" else "GET",
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=30) as r:
            return json.loads(r.read())

    def state(self):
        return self.call("/_mock/state")

    def inject(self, status, reason, message, count=1, retry_after=None):
        body = {"status": status, "reason": reason, "message": message, "count": count}
        if retry_after is not None:
            body["retry_after"] = str(retry_after)
        self.call("/_mock/inject", body)

    def sends_with(self, mid):
        out = []
        for s in self.state()["sends"]:
            with open(s["file"], "rb") as f:
                data = f.read()
            if ("Message-ID: <%s>" % mid).encode() in data:
                out.append((s, data))
        return out

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if not self.err.closed:
            self.err.close()
        return self.proc.returncode

    def stderr(self):
        with open(os.path.join(WORK, "mock-stderr.txt"), "rb") as f:
            return f.read().decode(errors="replace")


mock = Mock()
os.environ["PMX_TEST_GMAIL_SECRET"] = APP_SECRET
os.environ["PMX_TEST_GMAIL_REFRESH"] = mock.call("/_mock/refresh-token", {})["refresh_token"]


def gmail(**extra):
    options = {"credential": {"kind": "google", "service_account_file": mock.key_file},
               "user": SUBJECT, "api_url": mock.api, "backoff_initial": 1, "backoff_max": 4}
    options.update(extra)
    return {"plugin": "gmail", "concurrency": 1, "options": options}


def config(part_route="scr"):
    transports = {
        "gm": gmail(),
        "gmrm": gmail(unlisted_recipients="remove"),
        "gmscope": gmail(scope=READONLY),
        "gmdaily": gmail(daily_limit_pause="2h"),
        "gmbad": gmail(user="stranger@ws.test"),
        "gmenv": gmail(user="from_envelope", allowed_users=[SUBJECT, "@ok.test"]),
        "gmapp": gmail(user="me", credential={"kind": "google", "token_endpoint": mock.token_uri,
                                              "client_id": APP_ID, "client_secret": "env:PMX_TEST_GMAIL_SECRET",
                                              "refresh_token": "env:PMX_TEST_GMAIL_REFRESH"}),
        "scr": {"plugin": "scripted", "options": {"log": os.path.join(WORK, "scripted.log")}},
    }
    routes = [{"name": "env", "match": {"recipient_domain": ["env.test"]}, "transports": ["gmenv"]},
              {"name": "rm", "match": {"sender_domain": ["rm.test"]}, "transports": ["gmrm"]},
              {"name": "scope", "match": {"sender_domain": ["scope.test"]}, "transports": ["gmscope"]},
              {"name": "daily", "match": {"sender_domain": ["daily.test"]}, "transports": ["gmdaily"]},
              {"name": "app", "match": {"sender_domain": ["app.test"]}, "transports": ["gmapp"]},
              {"name": "part", "match": {"sender_domain": ["part.test"]}, "transports": [part_route]}]
    return {"transports": transports, "default": "gm", "routes": routes,
            "listen": {"http": [{"address": "127.0.0.1:0"}], "smtp": [{"address": "127.0.0.1:0"}]},
            "retry": {"initial_delay": "2s", "multiplier": 2, "max_delay": "4s", "jitter": 0}}


gw = SmtpGateway("pmx-gmail", tls=False, extra=config())


def rewrite_config(part_route):
    cfg = config(part_route)
    base = json.load(open(gw.config_path))
    base.update(cfg)
    gw.write_config(base)


def msg(mid, headers, body="hello"):
    """CRLF message; headers is a list of (name, value)."""
    head = "".join("%s: %s\r\n" % h for h in headers)
    return ("%sSubject: gmail %s\r\nMessage-ID: <%s>\r\n\r\n%s %s\r\n" % (head, mid, mid, body, mid)).encode()


def cli_send(sender, rcpts, data):
    p = gw.send(sender, rcpts, data)
    if p.returncode != 0:
        raise RuntimeError(p.stderr.decode())
    return p.stdout.decode().strip()


def show(qid):
    out = gw.queue_show(qid)
    outputs.append(out)
    return out


def settled(qid, state, timeout=40):
    return wait_until(lambda: ("state:        %s" % state) in show(qid), timeout)


def section(name, fn):
    try:
        fn()
    except Exception:
        tap.ok(False, "%s: ran to the end" % name, traceback.format_exc())


def doctor():
    c = gw.run("config", "check")
    tap.ok(c.returncode == 0, "config check accepts the gmail transports", c.stdout.decode() + c.stderr.decode())
    p = gw.run("doctor", "gm")
    out = p.stdout.decode() + p.stderr.decode()
    outputs.append(out)
    tap.ok(p.returncode == 0 and re.search(r"ok\s+token.*jwt_bearer grant for %s" % re.escape(SUBJECT), out)
           and re.search(r"ok\s+scope.*%s allows users\.messages\.send" % re.escape(SEND), out)
           and re.search(r"ok\s+verdict.*ready to send as %s" % re.escape(SUBJECT), out),
           "doctor gm: token for the subject, scope and verdict ok", out)
    p = gw.run("doctor", "gmbad")
    out = p.stdout.decode() + p.stderr.decode()
    outputs.append(out)
    tap.ok(p.returncode != 0 and "unauthorized_client" in out
           and "domain-wide delegation is not granted to this client id for gmail.send" in out
           and ("add client id %s with the scope %s" % (mock.client_id, SEND)) in out,
           "doctor gmbad: unauthorized_client -> delegation not granted for gmail.send, with the client id", out)
    p = gw.run("doctor", "gmscope")
    out = p.stdout.decode() + p.stderr.decode()
    outputs.append(out)
    tap.ok(p.returncode != 0 and re.search(r"FAIL\s+scope.*do not allow users\.messages\.send — set scope to %s"
                                           % re.escape(SEND), out),
           "doctor gmscope: a scope that cannot send fails the scope step with the fix", out)
    tap.ok("Sanitizer" not in "".join(outputs), "doctor: no sanitizer report on any path (ASan builds)")
    tap.comment(out)


def send_test():
    n = len(mock.state()["sends"])
    r = gw.run("send", "--test", "--transport", "gm", "--from", SUBJECT, "--to", "tester@ext.test")
    out = r.stdout.decode() + r.stderr.decode()
    outputs.append(out)
    sends = mock.state()["sends"]
    tap.ok(r.returncode == 0 and len(sends) == n + 1 and sends[-1]["recipients"] == ["tester@ext.test"]
           and ("> POST %s/gmail/v1/users/%s/messages/send (application/json raw" % (mock.api, SUBJECT)) in out
           and "Authorization: Bearer <redacted>" in out and ('< 200 {"id":"%s"' % sends[-1]["id"]) in out,
           "send --test: sent to the one recipient, the exchange shown with the token redacted", out)


def envelope_bcc():
    gw.start()
    before = mock.state()
    mid = "bcc-1@ws.test"
    data = msg(mid, [("From", "Sender <%s>" % SUBJECT), ("To", "To One <to1@ext.test>"), ("Cc", "cc1@ext.test")],
               body="line one\r\n.dot line\r\nend")
    s = smtplib.SMTP("127.0.0.1", gw.port, timeout=30)
    s.ehlo("client.test")
    s.sendmail(SUBJECT, ["to1@ext.test", "cc1@ext.test", "hidden@ext.test"], data)
    s.quit()
    got = wait_until(lambda: mock.sends_with(mid), 30)
    if not tap.ok(got and len(got) == 1, "SMTP in -> Gmail out: sent once", json.dumps(mock.state()["sends"])[-2000:]
                  + gw.log()[-3000:]):
        return
    rec, body = got[0]
    tap.eq(rec["recipients"], ["cc1@ext.test", "hidden@ext.test", "to1@ext.test"],
           "delivered to exactly the envelope set (the envelope-only recipient as Bcc)")
    head, _, rest = data.partition(b"\r\n\r\n")
    tap.eq(body, head + b"\r\nBcc: hidden@ext.test\r\n\r\n" + rest,
           "the decoded raw is the queued message byte for byte plus one Bcc field")
    tap.eq((rec["kind"], rec["user"], rec["sub"], rec["scope"]), ("raw", SUBJECT, SUBJECT, SEND),
           "raw JSON to users/%s, token for sub %s with scope gmail.send" % (SUBJECT, SUBJECT))
    tap.ok(mock.state()["token_requests"] >= 1 and before["token_requests"] >= 0,
           "the service-account JWT was verified by the IdP and a token issued (first by doctor, then stored)")
    ids = [q for q in gw.queue_ids() if "<to1@ext.test>" in show(q) or "<hidden@ext.test>" in show(q)]
    out = show(ids[-1]) if ids else ""
    tap.ok(ids and settled(ids[-1], "delivered") and ("remote id %s" % rec["id"]) in show(ids[-1]),
           "queue show: delivered, the Gmail message id %s in the attempt log" % rec["id"], out)

    # A Bcc header naming someone outside the envelope: dropped, never delivered.
    mid = "bcc-2@ws.test"
    data = msg(mid, [("From", SUBJECT), ("To", "to2@ext.test"), ("Bcc", "old@ext.test,\r\n hidden2@ext.test")])
    s = smtplib.SMTP("127.0.0.1", gw.port, timeout=30)
    s.ehlo("client.test")
    s.sendmail(SUBJECT, ["to2@ext.test", "hidden2@ext.test"], data)
    s.quit()
    got = wait_until(lambda: mock.sends_with(mid), 30)
    if tap.ok(got and len(got) == 1, "Bcc header case: sent once"):
        rec, body = got[0]
        tap.eq(rec["recipients"], ["hidden2@ext.test", "to2@ext.test"],
               "a Bcc address that is not an envelope recipient is not delivered")
        tap.eq(body, msg(mid, [("From", SUBJECT), ("To", "to2@ext.test")]).replace(
            b"\r\n\r\n", b"\r\nBcc: hidden2@ext.test\r\n\r\n", 1),
            "the old Bcc field is replaced by the envelope's; all else byte for byte")


def unlisted():
    # Default: a To address outside the envelope bounces the attempt.
    n = len(mock.state()["sends"])
    mid = "unlisted-1@ws.test"
    data = msg(mid, [("From", SUBJECT), ("To", "a@ext.test, b@ext.test")])
    qid = cli_send(SUBJECT, ["a@ext.test"], data)
    ok = settled(qid, "bounced")
    out = show(qid)
    tap.ok(ok and "transport 'gm': To/Cc name <b@ext.test>, not recipients of this attempt; Gmail has no envelope "
           "and delivers to every To and Cc address, so sending would deliver to them too — route this message "
           "through an SMTP transport, or set unlisted_recipients to \"remove\"" in out,
           "refuse (default): bounced with the unlisted address and the fix in queue show", out)
    tap.eq(len(mock.state()["sends"]), n, "refuse: nothing reached Gmail")

    # remove: taken out of To, the rest unchanged.
    mid = "unlisted-2@ws.test"
    data = msg(mid, [("From", "x@rm.test"), ("To", "a@ext.test, \"Bee\" <b@ext.test>"), ("Cc", "c@ext.test")])
    cli_send("x@rm.test", ["a@ext.test"], data)
    got = wait_until(lambda: mock.sends_with(mid), 30)
    if tap.ok(got and len(got) == 1, "remove: sent once"):
        rec, body = got[0]
        tap.eq(rec["recipients"], ["a@ext.test"], "remove: delivered to the envelope recipient only")
        tap.eq(body, msg(mid, [("From", "x@rm.test"), ("To", "a@ext.test")]),
               "remove: To lost b, the Cc field (only c) is gone, every other byte unchanged")


def earlier_attempt():
    # Attempt 1 through the scripted transport: one delivered, one bounced,
    # one deferred.  Then the route flips to Gmail; the retry must reach
    # only the deferred one.
    mid = "part-1@ws.test"
    rcpts = ["done@ext.test", "permfail@ext.test", "tempfail@ext.test"]
    data = msg(mid, [("From", "app@part.test"), ("To", ", ".join(rcpts))])
    qid = cli_send("app@part.test", rcpts, data)
    ok = wait_until(lambda: "<permfail@ext.test> bounced" in show(qid) and "<done@ext.test> delivered" in show(qid), 20)
    tap.ok(ok, "earlier attempt: one delivered, one bounced, one deferred", show(qid))
    rewrite_config("gmrm")
    gw.send_signal(signal.SIGHUP)
    gw.wait_log("config reloaded", 10)
    # No `queue retry`: by hand it would also requeue the bounced one.
    got = wait_until(lambda: mock.sends_with(mid), 30)
    if tap.ok(got and len(got) == 1, "after the switch to Gmail: sent once", show(qid) + gw.log()[-2000:]):
        rec, body = got[0]
        tap.eq(rec["recipients"], ["tempfail@ext.test"],
               "recipients already delivered or bounced are not re-sent: only the deferred one")
        tap.eq(body, msg(mid, [("From", "app@part.test"), ("To", "tempfail@ext.test")]),
               "the retried copy names only that recipient in To; all else unchanged")
    tap.ok(wait_until(lambda: "<tempfail@ext.test> delivered (200 2.0.0 sent by Gmail as message" in show(qid), 20)
           and "<permfail@ext.test> bounced (550" in show(qid) and "<done@ext.test> delivered (250" in show(qid),
           "in the end: one delivered by scripted, one bounced, the deferred one delivered by Gmail", show(qid))


def big():
    mid = "big-1@ws.test"
    line = b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789\r\n"
    body = (line * (12 * 1024 * 1024 // len(line) + 1))
    data = ("From: %s\r\nTo: big@ext.test\r\nSubject: 12 MB\r\nMessage-ID: <%s>\r\n\r\n" % (SUBJECT, mid)).encode() + body
    qid = cli_send(SUBJECT, ["big@ext.test"], data)
    got = wait_until(lambda: [s for s in mock.state()["sends"] if s["size"] == len(data)], 60)
    if tap.ok(got and len(got) == 1, "12 MB message: sent once (%d bytes)" % len(data), gw.log()[-2000:]):
        rec = got[0]
        with open(rec["file"], "rb") as f:
            tap.ok(f.read() == data, "12 MB: the uploaded bytes are the queued message")
        tap.eq((rec["kind"], rec["recipients"]), ("media", ["big@ext.test"]),
               "12 MB: by media upload (message/rfc822), to the envelope recipient")
    tap.ok(settled(qid, "delivered"), "12 MB: delivered", show(qid))


def too_big():
    n = len(mock.state()["sends"])
    line = b"x" * 998 + b"\r\n"
    data = ("From: %s\r\nTo: huge@ext.test\r\nSubject: 36 MB\r\nMessage-ID: <huge@ws.test>\r\n\r\n"
            % SUBJECT).encode() + line * (36700160 // len(line) + 1)
    qid = cli_send(SUBJECT, ["huge@ext.test"], data)
    ok = settled(qid, "bounced", 60)
    out = show(qid)
    tap.ok(ok and ("transport 'gm': the message is %d bytes, over Gmail's limit of 36700160 bytes (35 MB) — not sent"
                   % len(data)) in out, "over 35 MB: bounced with the size in the reason", out)
    tap.eq(len(mock.state()["sends"]), n, "over 35 MB: nothing reached Gmail")


def rate_limited():
    n = len(mock.state()["sends"])
    mock.inject(429, "rateLimitExceeded", "User-rate limit exceeded", count=1, retry_after=3)
    mock.inject(429, "userRateLimitExceeded", "User-rate limit exceeded", count=2)
    mids = ["rl-%d@ws.test" % i for i in range(4)]
    qids = [cli_send(SUBJECT, ["rl%d@ext.test" % i], msg(m, [("From", SUBJECT), ("To", "rl%d@ext.test" % i)]))
            for i, m in enumerate(mids)]
    listed = wait_until(lambda: "transport gm: rate limited until" in gw.run("queue", "list").stdout.decode(), 10)
    out = gw.run("queue", "list").stdout.decode()
    tap.ok(listed and "rateLimitExceeded" in out, "queue list: transport gm rate limited until <time> (reason)", out)
    port = re.findall(r"http: listening on http://127\.0\.0\.1:(\d+)/", gw.log())[-1]
    with urllib.request.urlopen("http://127.0.0.1:%s/v1/health" % port, timeout=10) as r:
        health = json.loads(r.read())
    t = health.get("transports", {}).get("gm", {})
    tap.ok(t.get("state") == "rate_limited" and "rate_limited_until" in t and "Gmail rate limit" in t.get("reason", ""),
           "/v1/health: gm rate_limited with its until and reason", json.dumps(health))
    done = wait_until(lambda: all(settled(q, "delivered", 0) for q in qids), 60, interval=0.5)
    tap.ok(done, "after the run of 429s every message is delivered", "\n".join(show(q) for q in qids))
    counts = [len(mock.sends_with(m)) for m in mids]
    tap.eq(counts, [1, 1, 1, 1], "each sent exactly once: no duplicate")
    st = mock.state()
    tap.eq((len(st["sends"]) - n, st["pending_injections"]), (4, 0), "4 sends, all 3 injected 429s were answered")
    attempts = "\n".join(show(q) for q in qids)
    tap.ok("Gmail answered HTTP 429 rateLimitExceeded (User-rate limit exceeded) — rate limited: no new attempt "
           "for 3 s" in attempts and "HTTP 429 userRateLimitExceeded" in attempts,
           "the attempt log has the 429s: Retry-After 3 honoured, then back-off", attempts)


def backend_error():
    mock.inject(503, "backendError", "Backend Error", count=1)
    mid = "be-1@ws.test"
    qid = cli_send(SUBJECT, ["be@ext.test"], msg(mid, [("From", SUBJECT), ("To", "be@ext.test")]))
    ok = settled(qid, "delivered")
    out = show(qid)
    tap.ok(ok and "Gmail answered HTTP 503 backendError (Backend Error) — rate limited: no new attempt for 1 s" in out
           and "attempts:     2\n" in out, "503 backendError: deferred, paused for the first back-off (1 s), then delivered",
           out)
    tap.eq(len(mock.sends_with(mid)), 1, "503 backendError: sent exactly once")


def unauthorized():
    st = mock.state()
    mock.call("/_mock/revoke", {})
    mid = "auth-1@ws.test"
    qid = cli_send(SUBJECT, ["a1@ext.test"], msg(mid, [("From", SUBJECT), ("To", "a1@ext.test")]))
    got = wait_until(lambda: mock.sends_with(mid), 30)
    st2 = mock.state()
    tap.ok(got and len(got) == 1 and settled(qid, "delivered"), "revoked token: refreshed and sent once", show(qid))
    tap.eq((st2["unauthorized"] - st["unauthorized"], st2["token_requests"] - st["token_requests"]), (1, 1),
           "revoked token: one 401, one new JWT grant")
    tap.ok("attempts:     1\n" in show(qid), "revoked token: within one attempt", show(qid))

    mock.inject(401, "authError", "Invalid Credentials", count=1)
    mid = "auth-2@ws.test"
    qid = cli_send(SUBJECT, ["a2@ext.test"], msg(mid, [("From", SUBJECT), ("To", "a2@ext.test")]))
    got = wait_until(lambda: mock.sends_with(mid), 30)
    st3 = mock.state()
    tap.ok(got and len(got) == 1 and settled(qid, "delivered") and "attempts:     1\n" in show(qid),
           "injected 401 once: refreshed, retried once, sent once in one attempt", show(qid))
    tap.eq(st3["token_requests"] - st2["token_requests"], 1, "injected 401: one token refresh")


def refusals():
    mock.inject(400, "invalidArgument", "Invalid To header", count=1)
    qid = cli_send(SUBJECT, ["c1@ext.test"], msg("c400@ws.test", [("From", SUBJECT), ("To", "c1@ext.test")]))
    ok = settled(qid, "bounced")
    out = show(qid)
    tap.ok(ok and "<c1@ext.test> bounced (400 5.6.0 transport 'gm': Gmail refused the message: HTTP 400 "
           "invalidArgument (Invalid To header) — not retried)" in out, "400 invalidArgument: bounced, exact reason", out)

    mock.inject(403, "domainPolicy", "The domain administrators have disabled Gmail apps.", count=1)
    qid = cli_send(SUBJECT, ["c2@ext.test"], msg("c403@ws.test", [("From", SUBJECT), ("To", "c2@ext.test")]))
    ok = wait_until(lambda: "domainPolicy" in show(qid), 30)
    out = show(qid)
    want = ("transport 'gm': Gmail refused to send as %s: HTTP 403 domainPolicy (The domain administrators have "
            "disabled Gmail apps.) — the Workspace domain's policy forbids it: an administrator must enable the Gmail "
            "API for the domain and, for a service account, grant client id %s domain-wide delegation of %s "
            "(Admin console > Security > API controls)" % (SUBJECT, mock.client_id, SEND))
    tap.ok(ok and ("<c2@ext.test> deferred (403 4.7.0 %s)" % want in out or want in out),
           "403 domainPolicy: deferred as a config error with the fix", out)
    tap.ok(settled(qid, "delivered") and ("1. " in show(qid) and "deferred" in show(qid)),
           "403 domainPolicy: delivered on the retry once the policy allows", show(qid))

    qid = cli_send("app@scope.test", ["c3@ext.test"], msg("cscope@ws.test", [("From", SUBJECT), ("To", "c3@ext.test")]))
    ok = wait_until(lambda: "insufficientPermissions" in show(qid), 30)
    out = show(qid)
    tap.ok(ok and "state:        deferred" in out and
           "Gmail refused to send as %s: HTTP 403 insufficientPermissions (Request had insufficient authentication "
           "scopes.) — the access token's scopes (%s) do not allow users.messages.send: set scope to %s"
           % (SUBJECT, READONLY, SEND) in out,
           "403 insufficient scope (a real readonly token): deferred with the scope fix", out)
    gw.run("queue", "delete", qid)


def daily():
    mock.inject(429, "rateLimitExceeded", "Daily user sending limit exceeded.", count=1)
    qid = cli_send("app@daily.test", ["d1@ext.test"], msg("daily@ws.test", [("From", SUBJECT), ("To", "d1@ext.test")]))
    ok = wait_until(lambda: "transport gmdaily: rate limited until" in gw.run("queue", "list").stdout.decode(), 30)
    out = gw.run("queue", "list").stdout.decode()
    m = re.search(r"transport gmdaily: rate limited until (\S+) \((.*)\)", out)
    until = time.mktime(time.strptime(m.group(1)[:19], "%Y-%m-%dT%H:%M:%S")) - time.timezone if m else 0
    tap.ok(ok and m and "Gmail daily sending limit for %s" % SUBJECT in m.group(2) and 7100 < until - time.time() < 7300,
           "daily limit: paused for daily_limit_pause (2h), reason names it", out)
    tap.ok("state:        deferred" in show(qid), "daily limit: the message waits, deferred", show(qid))
    gw.run("queue", "delete", qid)


def installed_app():
    mid = "app-1@ws.test"
    qid = cli_send("me@app.test", ["app1@ext.test"], msg(mid, [("From", "me@app.test"), ("To", "app1@ext.test")]))
    got = wait_until(lambda: mock.sends_with(mid), 30)
    tap.ok(got and len(got) == 1 and got[0][0]["user"] == "me" and got[0][0]["recipients"] == ["app1@ext.test"]
           and settled(qid, "delivered"), "installed app (refresh token): sent as users/me, delivered", show(qid))


def from_envelope():
    mid = "env-1@ws.test"
    qid = cli_send(SUBJECT, ["e1@env.test"], msg(mid, [("From", SUBJECT), ("To", "e1@env.test")]))
    got = wait_until(lambda: mock.sends_with(mid), 30)
    tap.ok(got and len(got) == 1 and (got[0][0]["user"], got[0][0]["sub"]) == (SUBJECT, SUBJECT)
           and settled(qid, "delivered"), "from_envelope: sent as users/<sender> with a token for sub <sender>",
           show(qid) + json.dumps(got[0][0] if got else {}))
    qid = cli_send("nobody@bad.test", ["e2@env.test"], msg("env-2@ws.test", [("From", "nobody@bad.test"),
                                                                           ("To", "e2@env.test")]))
    ok = settled(qid, "bounced")
    out = show(qid)
    tap.ok(ok and "transport 'gmenv': the envelope sender <nobody@bad.test> is not in allowed_users" in out,
           "from_envelope: a sender outside allowed_users bounces, naming it", out)
    qid = cli_send("x@ok.test", ["e3@env.test"], msg("env-3@ws.test", [("From", "x@ok.test"), ("To", "e3@env.test")]))
    ok = wait_until(lambda: "unauthorized_client" in show(qid), 30)
    out = show(qid)
    tap.ok(ok and "state:        deferred" in out
           and "domain-wide delegation is not granted to this client id" in out
           and "add client id %s with the scope %s" % (mock.client_id, SEND) in out,
           "from_envelope: an allowed sender the IdP will not delegate to defers with the delegation fix", out)
    tap.comment("".join(l for l in out.splitlines(True) if l.startswith("last reply:")))
    gw.run("queue", "delete", qid)


def finish():
    st = mock.state()
    tap.eq(st["violations"], [], "the mock saw no request that breaks Gmail's documented format")
    text = gw.log() + "\n".join(outputs)
    leaked = [t for t in st["issued"] if t in text]
    secrets = [t for t in (APP_SECRET, os.environ["PMX_TEST_GMAIL_REFRESH"]) if t in text]
    tap.ok(not secrets, "neither the client secret nor the refresh token in the serve log or output")
    tap.ok(st["issued"] and not leaked, "no issued token (%d) in the serve log, queue show or doctor" % len(st["issued"]),
           "leaked: %d" % len(leaked))
    tap.eq(gw.stop(), 0, "postmux serve exits 0")


def mock_exit():
    tap.ok(mock.stop() == 0, "the mock exits 0 (clean under ASan too)", mock.stderr()[-3000:])


def post_raw(token, raw):
    req = urllib.request.Request(mock.api + "/gmail/v1/users/%s/messages/send" % SUBJECT,
                                 data=json.dumps({"raw": raw}).encode(), method="POST",
                                 headers={"Content-Type": "application/json", "Authorization": "Bearer " + token})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def mock_selftest():
    # The mock itself: padded base64url is accepted, the + and / alphabet refused.
    data = b"To: pad@ext.test\r\nSubject: pad\r\n\r\n"
    while not (set("+/") & set(base64.b64encode(data).decode())) or len(data) % 3 == 0:
        data += b"\xfb\xef"
    st = mock.state()
    status, token = 401, None
    for t in reversed(st["issued"]):
        status = post_raw(t, base64.urlsafe_b64encode(data).decode())
        if status not in (401, 403):   # revoked, or another user's or scope's token
            token = t
            break
    padded = base64.urlsafe_b64encode(data).decode()
    tap.ok(status == 200 and padded.endswith("=") and [s for s in mock.state()["sends"] if s["size"] == len(data)],
           "mock self-test: padded base64url is accepted (%d)" % status)
    status = post_raw(token or "", base64.b64encode(data).decode())
    v = mock.state()["violations"]
    tap.ok(status == 400 and len(v) == 1 and "raw is not base64url" in v[0],
           "mock self-test: the +/ alphabet is a format violation (400)", json.dumps(v))


try:
    section("doctor", doctor)
    section("send-test", send_test)
    section("envelope-bcc", envelope_bcc)
    section("unlisted", unlisted)
    section("earlier-attempt", earlier_attempt)
    section("big", big)
    section("too-big", too_big)
    section("rate-limited", rate_limited)
    section("backend-error", backend_error)
    section("unauthorized", unauthorized)
    section("refusals", refusals)
    section("daily", daily)
    section("installed-app", installed_app)
    section("from-envelope", from_envelope)
    section("finish", finish)
    section("mock-selftest", mock_selftest)
    section("mock-exit", mock_exit)
finally:
    gw.cleanup()
    mock.stop()
    shutil.rmtree(WORK, ignore_errors=True)
tap.done()

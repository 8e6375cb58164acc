#!/usr/bin/python3
# SPDX-License-Identifier: GPL-3.0-or-later
"""The HTTP submission API on the real binary: JSON -> 202 and the MIME
queued checked part by part, each invalid field -> 400 with its pointer,
401/403/411/413/415, idempotent retries, raw message/rfc822, GET of a
message, /v1/health, and /metrics parsed as Prometheus text."""
import base64
import email
import email.policy
import hashlib
import http.client
import json
import os
import re
import secrets
import socket
import sqlite3
import urllib.parse

from pmxtest import Gateway, Tap, listen_backlog, maildir_files, wait_until

tap = Tap()

APP_KEY = secrets.token_urlsafe(32)
ADMIN_KEY = secrets.token_urlsafe(32)
MAX_SIZE = 200000


def key_hash(key):
    return "sha256:" + hashlib.sha256(key.encode()).hexdigest()


gw = Gateway(name="pmx-http")
maildir = gw.path("Maildir")
maildir2 = gw.path("Maildir2")
port = None


def request(method, path, body=None, key=APP_KEY, ctype="application/json", headers=None, timeout=30):
    """(status, headers dict (lower-case names), body bytes)"""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    h = {}
    if key is not None:
        h["Authorization"] = "Bearer " + key
    if body is not None:
        if not isinstance(body, (bytes, bytearray)):
            body = json.dumps(body).encode()
        h["Content-Type"] = ctype
    h.update(headers or {})
    conn.request(method, path, body=body, headers=h)
    r = conn.getresponse()
    data = r.read()
    hdrs = {k.lower(): v for k, v in r.getheaders()}
    conn.close()
    return r.status, hdrs, data


def as_json(data):
    try:
        return json.loads(data)
    except ValueError:
        return None


def queued(qid):
    """(sender, [recipients], data bytes, ingress) of a queued message, read-only."""
    db = sqlite3.connect("file:%s?mode=ro" % os.path.join(gw.state, "queue.db"), uri=True, timeout=10)
    try:
        row = db.execute("SELECT sender, data, ingress FROM messages JOIN bodies USING (id) WHERE id = ?",
                         (qid,)).fetchone()
        rcpts = [r[0] for r in db.execute("SELECT address FROM recipients WHERE message_id = ? ORDER BY idx", (qid,))]
        return row[0], rcpts, bytes(row[1]), row[2]
    finally:
        db.close()


def count_messages():
    db = sqlite3.connect("file:%s?mode=ro" % os.path.join(gw.state, "queue.db"), uri=True, timeout=10)
    try:
        return db.execute("SELECT COUNT(*) FROM messages").fetchone()[0]
    finally:
        db.close()


def crlf_only(data):
    return data.count(b"\n") == data.count(b"\r\n") and data.count(b"\r") == data.count(b"\r\n")


METRIC_LINE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{([a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\["\\n])*"'
                         r'(?:,[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\["\\n])*")*,?)?\})? '
                         r'([-+]?(?:[0-9]+(?:\.[0-9]*)?(?:[eE][-+]?[0-9]+)?|\.[0-9]+|NaN|[-+]?Inf))( -?[0-9]+)?$')
LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def parse_prometheus(text):
    """Strict parse of the text exposition format 0.0.4: returns
    {name: {"type": t, "samples": [(labels dict, value)]}} or raises."""
    if not text.endswith("\n"):
        raise ValueError("does not end with a newline")
    families = {}
    types = {}
    for n, line in enumerate(text.split("\n")[:-1], 1):
        if line == "":
            continue
        if line.startswith("#"):
            parts = line.split(" ", 3)
            if len(parts) >= 3 and parts[1] == "TYPE":
                if parts[2] in types:
                    raise ValueError("line %d: second TYPE for %s" % (n, parts[2]))
                if len(parts) != 4 or parts[3] not in ("counter", "gauge", "histogram", "summary", "untyped"):
                    raise ValueError("line %d: bad TYPE" % n)
                types[parts[2]] = parts[3]
            elif len(parts) >= 3 and parts[1] == "HELP":
                pass
            continue
        m = METRIC_LINE.match(line)
        if not m:
            raise ValueError("line %d: not a sample: %r" % (n, line))
        name, labels = m.group(1), dict(LABEL.findall(m.group(3) or ""))
        base = re.sub(r"_(bucket|sum|count)$", "", name)
        family = base if types.get(base) == "histogram" else name
        if family not in types:
            raise ValueError("line %d: sample of %s before its TYPE" % (n, name))
        value = float(m.group(4).replace("Inf", "inf"))
        families.setdefault(family, {"type": types[family], "samples": []})["samples"].append((name, labels, value))
    return families


try:
    gw.write_config({
        "transports": {
            "local": {"plugin": "maildir", "options": {"path": maildir}, "concurrency": 2},
            "other": {"plugin": "maildir", "options": {"path": maildir2}, "concurrency": 1},
        },
        "default": "local",
        "routes": [{"name": "picked", "match": {"header": {"name": "X-Postmux-Transport", "value": "other"}},
                    "transports": ["other"]}],
        "listen": {"http": [{"address": "127.0.0.1:0"}]},
        "http": {"max_message_size": MAX_SIZE},
        "auth": {"api_keys": {
            "app": {"key_hash": key_hash(APP_KEY), "senders": ["app@example.test", "@corp.test"]},
            "admin": {"key_hash": key_hash(ADMIN_KEY), "senders": ["*"], "may_choose_transport": True},
        }},
        "shutdown_timeout": "20s",
    })
    gw.start()
    m = re.search(r"http: listening on http://127\.0\.0\.1:(\d+)/", gw.log())
    tap.ok(m is not None, "the log names the HTTP listener", gw.log()[-2000:])
    port = int(m.group(1))
    # libsoup's own listen() leaves GSocket's backlog of 10: a burst of
    # clients would then wait for SYN retries (seconds).
    tap.eq(listen_backlog(port), 511, "the HTTP listener's accept backlog is 511")

    # Health before anything is queued.
    st, h, body = request("GET", "/v1/health", key=None)
    j = as_json(body)
    tap.ok(st == 200 and j and j["status"] == "ok" and j["queue"]["queued"] == 0
           and set(j["queue"]) == {"queued", "inflight", "deferred", "delivered", "bounced", "expired"},
           "GET /v1/health: 200 with counts by state", body)
    tap.ok(j and all(v == {"state": "ok"} for v in j.get("transports", {}).values())
           and set(j.get("transports", {})) == {"local", "other"},
           "GET /v1/health: every transport's state, all ok", body)

    # A full message: text + html + inline image + attachment, UTF-8, bcc, tags.
    png = b"\x89PNG\r\n\x1a\nfake image bytes"
    doc = b"%PDF-1.4 not really\n" * 10
    msg = {
        "from": {"name": "Zoë App", "address": "app@example.test"},
        "to": ["alice@dest.test", {"name": "Bob Müller", "address": "bob@dest.test"}],
        "cc": ["carol@dest.test"],
        "bcc": ["hidden@dest.test"],
        "reply_to": "support@example.test",
        "subject": "Grüße — ünïcode ☕",
        "text": "Hello Alice,\nplain text.\n",
        "html": "<p>Hello <img src=\"cid:logo@example.test\"></p>",
        "headers": {"X-Campaign": "spring", "List-Unsubscribe": "<mailto:u@example.test>"},
        "attachments": [
            {"filename": "report.pdf", "content_type": "application/pdf", "content": base64.b64encode(doc).decode()},
            {"filename": "logo.png", "content_type": "image/png", "content": base64.b64encode(png).decode(),
             "content_id": "logo@example.test"},
        ],
        "tags": ["welcome", "tenant:42"],
    }
    st, h, body = request("POST", "/v1/messages", msg)
    j = as_json(body)
    tap.ok(st == 202 and j and re.fullmatch(r"[0-9A-F]{16}", j.get("id", "")), "valid JSON: 202 with an id", body)
    qid = j["id"] if j else None

    sender, rcpts, data, ingress = queued(qid)
    tap.eq((sender, rcpts, ingress),
           ("app@example.test", ["alice@dest.test", "bob@dest.test", "carol@dest.test", "hidden@dest.test"], "api:app"),
           "envelope: sender, to+cc+bcc recipients, ingress api:app")
    tap.ok(crlf_only(data), "the queued message has CRLF line ends only")
    head = data.split(b"\r\n\r\n", 1)[0].decode("ascii", errors="replace")
    tap.ok(all(ord(c) < 128 for c in head), "the header block is ASCII", head)
    tap.ok(re.search(r"(?im)^bcc:", head) is None and b"hidden@dest.test" not in data, "Bcc appears nowhere in the message")
    tap.ok(re.search(r"(?m)^Subject: =\?[Uu][Tt][Ff]-8\?[BbQq]\?", head), "the subject is an RFC 2047 encoded word", head)
    parsed = email.message_from_bytes(data, policy=email.policy.default)
    tap.eq(str(parsed["Subject"]), msg["subject"], "the subject decodes back")
    tap.eq(parsed["From"].addresses[0].display_name, "Zoë App", "the From display name decodes back")
    tap.eq([a.addr_spec for a in parsed["To"].addresses], ["alice@dest.test", "bob@dest.test"], "To: header")
    tap.eq(parsed["To"].addresses[1].display_name, "Bob Müller", "To display name decodes back")
    tap.eq(str(parsed["Cc"]), "carol@dest.test", "Cc: header")
    tap.eq(str(parsed["Reply-To"]), "support@example.test", "Reply-To: header")
    tap.ok(parsed["Date"] is not None and parsed["Message-ID"] is not None, "Date and Message-ID are added")
    tap.eq((str(parsed["X-Campaign"]), str(parsed["X-Postmux-Tags"])), ("spring", "welcome, tenant:42"),
           "custom headers and tags")
    tap.eq(parsed.get_content_type(), "multipart/mixed", "top level: multipart/mixed")
    parts = parsed.get_payload()
    tap.eq([p.get_content_type() for p in parts], ["multipart/alternative", "application/pdf"],
           "mixed: the body, then the attachment")
    alt = parts[0].get_payload()
    tap.eq([p.get_content_type() for p in alt], ["text/plain", "multipart/related"],
           "alternative: text/plain, then html under multipart/related")
    tap.eq(alt[0].get_content().replace("\r\n", "\n"), "Hello Alice,\nplain text.\n", "the text part")
    rel = alt[1].get_payload()
    tap.eq([p.get_content_type() for p in rel], ["text/html", "image/png"], "related: html, then the inline image")
    tap.eq(rel[0].get_content(), msg["html"], "the html part")
    tap.eq((rel[1]["Content-ID"], rel[1].get_content_disposition(), rel[1].get_payload(decode=True)),
           ("<logo@example.test>", "inline", png), "the inline image: Content-ID, inline, bytes")
    tap.eq((parts[1].get_filename(), parts[1].get_content_disposition(), parts[1].get_payload(decode=True)),
           ("report.pdf", "attachment", doc), "the attachment: filename, disposition, bytes")

    tap.ok(wait_until(lambda: len(maildir_files(maildir)) >= 1, 30), "the message is delivered to the maildir")
    p = gw.run("queue", "show", qid)
    tap.ok("state:        delivered" in p.stdout.decode() and "<hidden@dest.test> delivered" in p.stdout.decode(),
           "queue show: delivered, bcc recipient included", p.stdout.decode())

    # Each invalid field -> 400 naming its pointer.
    base = {"from": "app@example.test", "to": ["a@dest.test"], "text": "x"}
    invalid = [
        ("bad from address", {"from": "not an address"}, "/from"),
        ("bad to address", {"to": ["ok@dest.test", "bad@@dest"]}, "/to/1"),
        ("to not an array", {"to": "a@dest.test"}, "/to"),
        ("cc of numbers", {"cc": [5]}, "/cc/0"),
        ("subject with CRLF", {"subject": "hi\r\nBcc: x@evil.test"}, "/subject"),
        ("header value with LF", {"headers": {"X-A": "v\nBcc: x@evil.test"}}, "/headers/X-A"),
        ("header name with a space", {"headers": {"Bad Name": "v"}}, "/headers"),
        ("reserved header Bcc", {"headers": {"Bcc": "x@evil.test"}}, "/headers/Bcc"),
        ("X-Postmux header", {"headers": {"X-Postmux-Transport": "other"}}, "/headers/X-Postmux-Transport"),
        ("attachment not base64", {"attachments": [{"filename": "a.bin", "content": "!!!!"}]}, "/attachments/0/content"),
        ("attachment without filename", {"attachments": [{"content": "aGk="}]}, "/attachments/0"),
        ("attachment bad content_type", {"attachments": [{"filename": "a", "content": "aGk=", "content_type": "nope"}]},
         "/attachments/0/content_type"),
        ("unknown member", {"colour": "red"}, "/colour"),
        ("tag not a string", {"tags": [1]}, "/tags/0"),
        ("text not a string", {"text": ["x"]}, "/text"),
        ("no recipients", {"to": []}, ""),
    ]
    before = count_messages()
    for name, change, pointer in invalid:
        m2 = dict(base)
        m2.update(change)
        st, h, body = request("POST", "/v1/messages", m2)
        j = as_json(body) or {}
        pointers = [p.get("pointer") for p in j.get("problems", [])]
        ok = st == 400 and isinstance(j.get("error"), str) and any(
            p == pointer or (p or "").startswith(pointer + "/") for p in pointers) and all(
            {"pointer", "keyword", "message"} <= set(p) for p in j.get("problems", []))
        tap.ok(ok, "400 %s names %r" % (name, pointer), "%d %s" % (st, body.decode(errors="replace")))
    st, h, body = request("POST", "/v1/messages", b"{not json")
    tap.ok(st == 400 and "not JSON" in (as_json(body) or {}).get("error", ""), "400 for a body that is not JSON", body)
    st, h, body = request("POST", "/v1/messages", b"{\"a\":" + b"[" * 10000 + b"]" * 10000 + b"}")
    tap.ok(st == 400 and "nested" in (as_json(body) or {}).get("error", ""), "400 for deeply nested JSON", body)
    st, h, body = request("POST", "/v1/messages", b"hello", ctype="text/plain")
    tap.eq(st, 415, "415 for another content type")

    # Authentication and authorisation.
    st, h, body = request("POST", "/v1/messages", base, key=secrets.token_urlsafe(32))
    tap.ok(st == 401 and h.get("www-authenticate", "").startswith("Bearer"), "401 with WWW-Authenticate for a wrong key",
           (st, h))
    st, h, body = request("POST", "/v1/messages", base, key=None)
    tap.eq(st, 401, "401 without a key")
    st, h, body = request("POST", "/v1/messages", dict(base, **{"from": "boss@elsewhere.test"}))
    tap.ok(st == 403 and "boss@elsewhere.test" in (as_json(body) or {}).get("error", ""),
           "403 for a sender the key may not use", body)
    st, h, body = request("POST", "/v1/messages", dict(base, **{"from": "anyone@corp.test"}))
    tap.eq(st, 202, "202 for a sender in an allowed @domain")
    st, h, body = request("POST", "/v1/messages", dict(base, transport="other"))
    tap.ok(st == 403 and "may_choose_transport" in (as_json(body) or {}).get("error", ""),
           "403 for a transport override without may_choose_transport", body)
    st, h, body = request("POST", "/v1/messages", dict(base, transport="nosuch"), key=ADMIN_KEY)
    tap.ok(st == 400 and [p["pointer"] for p in (as_json(body) or {}).get("problems", [])] == ["/transport"],
           "400 for an override naming an unknown transport", body)
    st, h, body = request("POST", "/v1/messages", dict(base, transport="other", subject="picked"), key=ADMIN_KEY)
    tap.eq(st, 202, "202 for a transport override with may_choose_transport")
    tap.ok(wait_until(lambda: len(maildir_files(maildir2)) >= 1, 30),
           "the override reaches the chosen transport through a header route")
    tap.eq(count_messages(), before + 2, "no refused request queued anything")

    # Idempotency.
    idem = {"Idempotency-Key": "order-" + secrets.token_hex(8)}
    st1, h1, b1 = request("POST", "/v1/messages", dict(base, subject="once"), headers=idem)
    st2, h2, b2 = request("POST", "/v1/messages", dict(base, subject="once"), headers=idem)
    before_other = count_messages()
    st3, h3, b3 = request("POST", "/v1/messages", dict(base, subject="once"), headers=idem, key=ADMIN_KEY)
    tap.ok(st1 == 202 and st2 == 202 and as_json(b1)["id"] == as_json(b2)["id"], "a retry with the same key returns the same id",
           (b1, b2))
    tap.ok(h2.get("idempotent-replayed") == "true" and "idempotent-replayed" not in h1, "the retry says Idempotent-Replayed")
    db = sqlite3.connect("file:%s?mode=ro" % os.path.join(gw.state, "queue.db"), uri=True, timeout=10)
    n = db.execute("SELECT COUNT(*) FROM messages WHERE idempotency_key = ?", (idem["Idempotency-Key"],)).fetchone()[0]
    db.close()
    tap.ok(st3 == 202 and as_json(b3)["id"] != as_json(b1)["id"] and count_messages() == before_other + 1 and n == 2,
           "one message per key and API key: another API key's same Idempotency-Key is its own", (b3, n))
    st, h, body = request("POST", "/v1/messages", base, headers={"Idempotency-Key": "x" * 300})
    tap.eq(st, 400, "400 for an overlong Idempotency-Key")

    # Raw message/rfc822 with the envelope in the query.
    raw = (b"From: App <app@example.test>\nTo: r1@dest.test\nSubject: raw one\nMessage-ID: <raw-1@example.test>\n"
           b"\nraw body line\n.leading dot\n")
    q = urllib.parse.urlencode([("from", "app@example.test"), ("to", "r1@dest.test"), ("to", "r2@dest.test")])
    st, h, body = request("POST", "/v1/messages?" + q, raw, ctype="message/rfc822")
    j = as_json(body) or {}
    tap.ok(st == 202 and "id" in j, "raw message/rfc822: 202", body)
    if "id" in j:
        sender, rcpts, data, ingress = queued(j["id"])
        tap.eq((sender, rcpts), ("app@example.test", ["r1@dest.test", "r2@dest.test"]), "raw: envelope from the query")
        tap.eq(data, raw.replace(b"\n", b"\r\n"), "raw: the bytes are queued as sent, with CRLF line ends")
    st, h, body = request("POST", "/v1/messages?" + q, raw.replace(b"app@example.test>", b"ceo@evil.test>", 1),
                          ctype="message/rfc822")
    tap.ok(st == 403 and "From:" in (as_json(body) or {}).get("error", ""), "raw: 403 for a From: header the key may not use",
           body)
    st, h, body = request("POST", "/v1/messages?from=app@example.test", raw, ctype="message/rfc822")
    tap.eq(st, 400, "raw: 400 without ?to=")
    st, h, body = request("POST", "/v1/messages?" + q, b"X-Postmux-Transport: other\n" + raw, ctype="message/rfc822")
    tap.eq(st, 403, "raw: 403 for an X-Postmux-Transport header without may_choose_transport")
    st, h, body = request("POST", "/v1/messages?" + q, raw.replace(b"raw body", b"bare\rCR"), ctype="message/rfc822")
    tap.eq(st, 400, "raw: 400 for a bare CR")

    # Size limits: refused from the headers, before the body is read.
    s = socket.create_connection(("127.0.0.1", port), timeout=30)
    s.sendall(("POST /v1/messages HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\nContent-Type: application/json\r\n"
               "Expect: 100-continue\r\nContent-Length: %d\r\n\r\n" % (APP_KEY, MAX_SIZE + 1)).encode())
    reply = b""
    while b"\r\n\r\n" not in reply:
        chunk = s.recv(4096)
        if not chunk:
            break
        reply += chunk
    s.close()
    tap.ok(reply.startswith(b"HTTP/1.1 413"), "413 over http.max_message_size, answered before the body (Expect: 100-continue)",
           reply[:200])
    s = socket.create_connection(("127.0.0.1", port), timeout=30)
    s.sendall(("POST /v1/messages HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\nContent-Type: application/json\r\n"
               "Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n" % APP_KEY).encode())
    reply = s.recv(4096)
    s.close()
    tap.ok(reply.startswith(b"HTTP/1.1 411"), "411 for a chunked body", reply[:200])
    big = dict(base, text="x" * (MAX_SIZE + 10))
    st, h, body = request("POST", "/v1/messages", big)
    tap.eq(st, 413, "413 for a JSON body over the limit (the body is read and dropped)")
    st, h, body = request("POST", "/v1/messages", big, key="wrong")
    tap.eq(st, 401, "401 before the size of an unauthenticated body matters")

    # GET a message: its own key only.
    st, h, body = request("GET", "/v1/messages/" + qid)
    j = as_json(body) or {}
    tap.ok(st == 200 and j.get("id") == qid and j.get("state") == "delivered" and j.get("sender") == "app@example.test",
           "GET /v1/messages/{id}: state and sender", body)
    tap.eq(sorted((r["address"], r["state"]) for r in j.get("recipients", [])),
           [(a, "delivered") for a in ["alice@dest.test", "bob@dest.test", "carol@dest.test", "hidden@dest.test"]],
           "GET: per-recipient outcomes")
    att = j.get("attempts", [])
    tap.ok(len(att) >= 1 and att[0]["transport"] == "local" and att[0]["outcomes"]
           and att[0]["outcomes"][0]["state"] == "delivered" and j.get("attempt_count") == len(att),
           "GET: the attempt log with its outcomes", body)
    st, h, body = request("GET", "/v1/messages/" + qid, key=ADMIN_KEY)
    tap.eq(st, 404, "GET with another key: 404")
    st, h, body = request("GET", "/v1/messages/FFFFFFFFFFFFFFFF")
    tap.eq(st, 404, "GET of an unknown id: 404")
    st, h, body = request("GET", "/v1/messages/" + qid, key=None)
    tap.eq(st, 401, "GET without a key: 401")
    st, h, body = request("DELETE", "/v1/messages/" + qid)
    tap.eq(st, 405, "DELETE: 405")
    st, h, body = request("GET", "/nowhere", key=None)
    tap.eq(st, 404, "unknown path: 404")

    # Metrics.
    wait_until(lambda: "0" == str(as_json(request("GET", "/v1/health", key=None)[2])["queue"]["queued"]), 30)
    st, h, body = request("GET", "/metrics", key=None)
    tap.ok(st == 200 and h.get("content-type", "").startswith("text/plain; version=0.0.4"), "/metrics: 200, format 0.0.4",
           (st, h))
    try:
        fam = parse_prometheus(body.decode())
        tap.ok(True, "/metrics parses as Prometheus text")
    except ValueError as e:
        fam = {}
        tap.ok(False, "/metrics parses as Prometheus text", "%s\n%s" % (e, body.decode()))
    qm = fam.get("postmux_queue_messages", {"samples": []})
    tap.ok(qm.get("type") == "gauge" and {s[1]["state"] for s in qm["samples"]} ==
           {"queued", "inflight", "deferred", "delivered", "bounced", "expired"},
           "postmux_queue_messages is a gauge for every state")
    dm = fam.get("postmux_deliveries_total", {"samples": []})
    got = {(s[1].get("transport"), s[1].get("outcome")): s[2] for s in dm["samples"]}
    tap.ok(dm.get("type") == "counter" and got.get(("local", "delivered"), 0) >= 5 and got.get(("other", "delivered")) == 1,
           "postmux_deliveries_total counts recipients by transport and outcome", got)
    hm = fam.get("postmux_attempt_duration_seconds", {"samples": []})
    buckets = [(s[1]["le"], s[2]) for s in hm["samples"] if s[0].endswith("_bucket")]
    counts = [s[2] for s in hm["samples"] if s[0].endswith("_count")]
    tap.ok(hm.get("type") == "histogram" and buckets and buckets[-1][0] == "+Inf"
           and all(a[1] <= b[1] for a, b in zip(buckets, buckets[1:])) and counts and counts[0] == buckets[-1][1]
           and counts[0] >= 1, "the attempt latency histogram: cumulative buckets, +Inf equals the count", buckets)

    rc = gw.stop()
    tap.eq(rc, 0, "postmux serve stops cleanly")
    tap.ok("http: " in gw.log() and "ERROR" not in gw.log() and "CRITICAL" not in gw.log(), "no errors in the log",
           gw.log()[-3000:])
finally:
    gw.cleanup()
tap.done()

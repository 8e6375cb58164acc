#!/usr/bin/python3
# SPDX-License-Identifier: GPL-3.0-or-later
"""Real SMTP clients against the real listener: swaks (plain, --pipeline,
STARTTLS, implicit TLS, AUTH PLAIN and LOGIN), Python's smtplib, curl and
msmtp -t.  Each message arrives in the maildir byte for byte as sent
(after dot-unstuffing; the maildir keeps LF line ends), with its envelope.
Also: failed AUTH is slowed down, shutdown says 421, and kill -9 between
the end of DATA and the 250 never loses an acknowledged message."""
import re
import signal
import smtplib
import socket
import ssl
import subprocess
import time

from pmxtest import Tap, listen_backlog, wait_until
from smtpdtest import Raw, SmtpGateway, password_hash

tap = Tap()

gw = SmtpGateway("pmx-smtpd",
                 auth={"smtp_users": {"alice": {"password_hash": password_hash("s3cret pass"), "senders": ["@x.test"]},
                                      "bob": {"password_hash": password_hash("bobpw"), "senders": ["bob@z.test"]}}})

BODY = ("From: Alice <a@x.test>\nTo: b@y.test\nSubject: dots and 8-bit: caf\u00e9\n"
        "Message-ID: <%s@x.test>\n\n.leading dot\n..two dots\n.\nlast line\n")


# swaks sends an empty line of its own between the data and the final dot
# (its transcript shows it), so that line is part of what was sent.
SWAKS_TAIL = "\n"


def body(tag):
    return BODY % tag


def envelope(qid):
    show = gw.queue_show(qid)
    sender = re.search(r"^sender:\s+<(.*)>$", show, re.M).group(1)
    rcpts = sorted(re.findall(r"^  <([^>]+)> ", show, re.M))
    ingress = re.search(r"^ingress:\s+(\S+)", show, re.M).group(1)
    return sender, rcpts, ingress


def delivered(tag):
    """The maildir file whose Message-ID is <tag@x.test> (bytes), or None."""
    for m in gw.maildir_messages():
        if ("<%s@x.test>" % tag).encode() in m:
            return m
    return None


def check_arrival(name, tag, text, qid, sender, rcpts, ingress):
    got = wait_until(lambda: delivered(tag), 15)
    tap.eq(got, text.encode(), "%s: delivered byte for byte" % name)
    if qid:
        tap.eq(envelope(qid), (sender, sorted(rcpts), ingress), "%s: envelope and ingress intact" % name)


def swaks(*args, data=None):
    p = subprocess.run(["swaks", "--server", "127.0.0.1", "--hide-informational"] + list(args),
                       capture_output=True, timeout=60, input=data)
    out = p.stdout.decode(errors="replace") + p.stderr.decode(errors="replace")
    m = re.findall(r"queued as ([0-9A-F]{16})", out)
    return p.returncode, out, (m[-1] if m else None)


try:
    gw.start()
    datafile = gw.path("msg.eml")
    tap.eq(listen_backlog(gw.port), 128, "the SMTP listener's accept backlog is 128")

    # 1. swaks, plain, from loopback (auth.networks default), dot-stuffing.
    with open(datafile, "w") as f:
        f.write(body("swaks-plain"))
    rc, out, qid = swaks("--port", str(gw.port), "--from", "a@x.test", "--to", "b@y.test", "--data", "@" + datafile)
    tap.ok(rc == 0 and qid, "swaks plain from loopback: 250 queued as ID", out)
    check_arrival("swaks plain", "swaks-plain", body("swaks-plain") + SWAKS_TAIL, qid, "a@x.test", ["b@y.test"], "smtp-net:127.0.0.1")

    # 2. swaks --pipeline, STARTTLS, AUTH PLAIN, two recipients.
    with open(datafile, "w") as f:
        f.write(body("swaks-tls"))
    rc, out, qid = swaks("--port", str(gw.port), "-tls", "--pipeline", "--auth", "PLAIN", "--auth-user", "alice",
                         "--auth-password", "s3cret pass", "--from", "a@x.test", "--to", "b@y.test,c@w.test",
                         "--data", "@" + datafile)
    tap.ok(rc == 0 and qid and "STARTTLS" in out and "235 2.7.0" in out, "swaks STARTTLS + PIPELINING + AUTH PLAIN", out)
    check_arrival("swaks STARTTLS", "swaks-tls", body("swaks-tls") + SWAKS_TAIL, qid, "a@x.test", ["b@y.test", "c@w.test"], "smtp:alice")

    # 3. swaks implicit TLS, AUTH LOGIN.
    with open(datafile, "w") as f:
        f.write(body("swaks-implicit"))
    rc, out, qid = swaks("--port", str(gw.tls_port), "--tls-on-connect", "--auth", "LOGIN", "--auth-user", "alice",
                         "--auth-password", "s3cret pass", "--from", "a@x.test", "--to", "b@y.test",
                         "--data", "@" + datafile)
    tap.ok(rc == 0 and qid and "334 VXNlcm5hbWU6" in out, "swaks implicit TLS + AUTH LOGIN", out)
    check_arrival("swaks implicit TLS", "swaks-implicit", body("swaks-implicit") + SWAKS_TAIL, qid, "a@x.test", ["b@y.test"], "smtp:alice")

    # 4. EHLO before and after STARTTLS: AUTH only after, STARTTLS only before.
    ctx = ssl.create_default_context(cafile=gw.cert)
    s = smtplib.SMTP("127.0.0.1", gw.port, timeout=30)
    s.ehlo("client.test")
    before = (s.has_extn("starttls"), s.has_extn("auth"), s.has_extn("pipelining"), s.has_extn("size"),
              s.esmtp_features.get("size"), s.has_extn("8bitmime"), s.has_extn("smtputf8"), s.has_extn("enhancedstatuscodes"))
    tap.eq(before, (True, False, True, True, "26214400", True, True, True), "EHLO without TLS: STARTTLS, no AUTH, the rest")
    s.starttls(context=ctx)
    s.ehlo("client.test")
    tap.eq((s.has_extn("starttls"), s.esmtp_features.get("auth", "").split()), (False, ["PLAIN", "LOGIN"]),
           "EHLO after STARTTLS: AUTH PLAIN LOGIN, no STARTTLS")

    # 5. smtplib: LOGIN over STARTTLS, then a message with SMTPUTF8 and 8BITMIME.
    s.login("alice", "s3cret pass")
    text = body("smtplib").replace("\n", "\r\n")
    refused = s.sendmail("a@x.test", ["b@y.test", "d@y.test"], text.encode(), mail_options=["BODY=8BITMIME", "SMTPUTF8"])
    tap.eq(refused, {}, "smtplib over STARTTLS: accepted for every recipient")
    code, msg = s.noop()
    tap.eq(code, 250, "smtplib: session goes on after the message")
    s.quit()
    qid = None
    for q in gw.queue_ids():
        if "d@y.test" in gw.queue_show(q):
            qid = q
    check_arrival("smtplib", "smtplib", body("smtplib"), qid, "a@x.test", ["b@y.test", "d@y.test"], "smtp:alice")

    # 6. smtplib: bob may not send as a@x.test (MAIL FROM, then From:).
    s = smtplib.SMTP("127.0.0.1", gw.port, timeout=30)
    s.starttls(context=ctx)
    s.login("bob", "bobpw")
    try:
        s.sendmail("a@x.test", ["b@y.test"], b"From: a@x.test\r\n\r\nhi\r\n")
        tap.ok(False, "bob as a@x.test is refused")
    except smtplib.SMTPSenderRefused as e:
        tap.ok(e.smtp_code == 550 and b"5.7.1" in e.smtp_error, "bob as a@x.test: MAIL FROM refused 550 5.7.1", e)
    try:
        s.sendmail("bob@z.test", ["b@y.test"], b"From: Alice <a@x.test>\r\n\r\nhi\r\n")
        tap.ok(False, "bob with From: a@x.test is refused")
    except smtplib.SMTPDataError as e:
        tap.ok(e.smtp_code == 550 and b"<a@x.test>" in e.smtp_error, "bob with From: a@x.test: 550 5.7.1 after DATA", e)
    s.quit()

    # 7. Failed AUTH: 535 5.7.8, after a delay that grows.
    s = smtplib.SMTP("127.0.0.1", gw.port, timeout=60)
    s.starttls(context=ctx)
    s.ehlo("client.test")
    times = []
    for i in range(2):
        start = time.time()
        code, _ = s.docmd("AUTH", "PLAIN AGFsaWNlAHdyb25n")
        times.append((code, round(time.time() - start, 1)))
    tap.ok([c for c, _ in times] == [535, 535] and 0.9 <= times[0][1] < 1.9 and 1.9 <= times[1][1] < 4,
           "wrong password: 535 after 1 s, then after 2 s", times)
    start = time.time()
    code, _ = s.docmd("AUTH", "PLAIN AGFsaWNlAHdyb25n")
    closed = False
    try:
        s.noop()
    except smtplib.SMTPServerDisconnected:
        closed = True
    tap.ok(code == 535 and closed, "the third failure in a session closes the connection", (code, closed))
    tap.ok("AUTH failed for user \"alice\"" in gw.log() and "wrong" not in gw.log(),
           "failures are logged with the client, never the password")

    # 8. curl smtp:// with STARTTLS, AUTH PLAIN.
    eml = gw.path("curl.eml")
    text = body("curl").replace("\n", "\r\n")
    with open(eml, "w", newline="") as f:
        f.write(text)
    p = subprocess.run(["curl", "-sS", "-v", "--url", "smtp://127.0.0.1:%d" % gw.port, "--ssl-reqd", "--cacert", gw.cert,
                        "--user", "alice:s3cret pass", "--login-options", "AUTH=PLAIN", "--mail-from", "a@x.test",
                        "--mail-rcpt", "e@y.test", "--mail-rcpt", "f@y.test", "--upload-file", eml],
                       capture_output=True, timeout=60)
    err = p.stderr.decode(errors="replace")
    m = re.search(r"queued as ([0-9A-F]{16})", err)
    tap.ok(p.returncode == 0 and m, "curl smtp:// STARTTLS + AUTH PLAIN", err[-2000:])
    check_arrival("curl", "curl", body("curl"), m.group(1) if m else None, "a@x.test", ["e@y.test", "f@y.test"], "smtp:alice")

    # 9. msmtp in sendmail style: -t, recipients from To/Cc/Bcc, Bcc removed by msmtp.
    text = ("Date: Mon, 23 Nov 2026 12:00:00 +0000\nFrom: a@x.test\nTo: g@y.test\nCc: h@y.test\nBcc: hidden@y.test\nSubject: msmtp\n"
            "Message-ID: <msmtp@x.test>\n\n.dot\nbody\n")
    p = subprocess.run(["msmtp", "--host=127.0.0.1", "--port=%d" % gw.port, "--tls=on", "--tls-starttls=on",
                        "--tls-trust-file=" + gw.cert, "--auth=login", "--user=alice",
                        "--passwordeval=echo 's3cret pass'", "--from=a@x.test", "-t"],
                       input=text.encode(), capture_output=True, timeout=60)
    tap.eq(p.returncode, 0, "msmtp -t: exit 0")
    got = wait_until(lambda: delivered("msmtp"), 15)
    tap.eq(got, text.replace("Bcc: hidden@y.test\n", "").encode(), "msmtp -t: delivered byte for byte (without Bcc:)")
    qid = [q for q in gw.queue_ids() if "hidden@y.test" in gw.queue_show(q)]
    tap.ok(len(qid) == 1 and envelope(qid[0]) == ("a@x.test", ["g@y.test", "h@y.test", "hidden@y.test"], "smtp:alice"),
           "msmtp -t: the envelope has To, Cc and Bcc", qid and envelope(qid[0]))

    # 9b. A client that pipelines the end of DATA and QUIT and half-closes at
    # once (printf ... | nc style) still gets its 250 and 221: the listener
    # reads while the commit runs, and the EOF waits behind the answers.
    hc = Raw(gw.port)
    hc.cmd("EHLO client.test")
    hc.cmd("MAIL FROM:<bob@z.test>")
    hc.cmd("RCPT TO:<halfclose@y.test>")
    hc.cmd("DATA")
    hc.send(b"From: bob@z.test\r\nSubject: half-close\r\nMessage-ID: <halfclose@x.test>\r\n\r\nbody\r\n.\r\nQUIT\r\n")
    hc.sock.shutdown(socket.SHUT_WR)
    code, lines = hc.reply()
    m = re.search(r"queued as ([0-9A-F]{16})", lines[0]) if code == 250 else None
    tap.ok(m is not None, "half-close after '.' and QUIT: 250 queued as ID", lines)
    code, lines = hc.reply()
    tap.eq(code, 221, "half-close after '.' and QUIT: then 221")
    tap.ok(hc.closed(), "half-close after '.' and QUIT: then the server closes")
    hc.close()
    tap.ok(wait_until(lambda: delivered("halfclose"), 15) is not None, "half-close: the message is delivered")

    # 10. Shutdown: an idle session is told 421 4.3.2.
    idle = Raw(gw.port)
    idle.cmd("EHLO client.test")
    gw.send_signal(signal.SIGTERM)
    code, lines = idle.reply(timeout=10)
    tap.ok(code == 421 and "4.3.2" in lines[0], "SIGTERM: an idle session gets 421 4.3.2", lines)
    idle.close()
    tap.eq(gw.proc.wait(30), 0, "postmux serve stops cleanly")
    gw.stop()

    # 11. kill -9 between the end of DATA and the 250: never acknowledged and lost.
    agree = True
    outcomes = []
    for i, delay in enumerate([0, 0, 0.002, 0.005, 0.01, 0.03, 0.2]):
        gw.start()
        c = Raw(gw.port)
        c.cmd("EHLO client.test")
        c.cmd("MAIL FROM:<a@x.test>")
        c.cmd("RCPT TO:<kill%d@y.test>" % i)
        c.cmd("DATA")
        c.send(b"From: a@x.test\r\nSubject: kill %d\r\n\r\nbody\r\n" % i)
        c.send(b".\r\n")
        if delay:
            time.sleep(delay)
        gw.proc.kill()
        code, lines = c.reply(timeout=10)
        c.close()
        gw.stop()
        ids = [q for q in gw.queue_ids() if ("kill%d@y.test" % i) in gw.queue_show(q)]
        acked = code == 250
        if acked:
            qid = re.search(r"queued as ([0-9A-F]{16})", lines[0]).group(1)
            ok = ids == [qid]
        else:
            ok = code is None and len(ids) <= 1
        outcomes.append("%s/%s" % ("acked" if acked else "broken", "queued" if ids else "absent"))
        agree = agree and ok
    tap.ok(agree, "kill -9 after DATA's end: the client's view and the queue agree (%s)" % ", ".join(outcomes), outcomes)
finally:
    gw.stop()
    gw.cleanup()
tap.done()

#!/usr/bin/python3
# SPDX-License-Identifier: GPL-3.0-or-later
"""Hostile input against the SMTP listener, table-driven: SMTP smuggling
(bare LF/CR, each fake end of data), overlong lines, too many recipients,
oversize messages, AUTH without TLS, relaying from a foreign sender or
network, garbage, silence, pre-greeting traffic, unadvertised pipelining,
connection limits.  Each case expects its exact reply (or a close), and
the queue gains nothing."""
import re
import socket
import subprocess
import time

from pmxtest import Tap
from smtpdtest import Raw, SmtpGateway, password_hash

tap = Tap()

gw = SmtpGateway("pmx-smtpd-hostile",
                 smtpd={"max_message_size": 20000, "max_connections_per_client": 4,
                        "timeouts": {"command": "2s", "data": "2s"}, "pregreet_wait": "3s"},
                 auth={"networks": [{"cidr": "127.0.0.1/32", "senders": ["@x.test"]}],
                       "smtp_users": {"alice": {"password_hash": password_hash("secret"), "senders": ["@x.test"]}}})

HEAD = b"From: a@x.test\r\nTo: b@y.test\r\nSubject: hostile\r\n\r\n"


def open_mail(c):
    """EHLO, MAIL, RCPT, DATA; True when the server said 354."""
    return (c.cmd("EHLO client.test")[0] == 250 and c.cmd("MAIL FROM:<a@x.test>")[0] == 250
            and c.cmd("RCPT TO:<b@y.test>")[0] == 250 and c.cmd("DATA")[0] == 354)


def data_case(payload):
    """Send DATA @payload (which must hold the real CRLF.CRLF end); the reply."""
    def run(c):
        if not open_mail(c):
            return (0, ["setup failed"])
        c.send(payload)
        return c.reply()
    return run


def smuggle(fake_end):
    return data_case(HEAD + b"body" + fake_end + b"MAIL FROM:<evil@x.test>\r\nRCPT TO:<victim@y.test>\r\nDATA\r\n"
                     + b"Subject: smuggled\r\n\r\nsmuggled\r\n.\r\n")


def many_rcpts(c):
    c.cmd("EHLO client.test")
    c.cmd("MAIL FROM:<a@x.test>")
    c.send(b"".join(b"RCPT TO:<r%d@y.test>\r\n" % i for i in range(1001)))
    codes = [c.reply()[0] for _ in range(1001)]
    ok = codes[:100] == [250] * 100 and codes[100:] == [452] * 901
    c.cmd("RSET")
    return (452 if ok else codes, ["first 100: 250, the other 901: 452"])


def last_452_text(c):
    c.cmd("EHLO client.test")
    c.cmd("MAIL FROM:<a@x.test>")
    for i in range(100):
        c.cmd("RCPT TO:<r%d@y.test>" % i)
    return c.cmd("RCPT TO:<r100@y.test>")


def overlong_command(c):
    c.cmd("EHLO client.test")
    r = c.cmd("NOOP " + "a" * 600)
    after = c.cmd("NOOP")
    return (r[0], r[1] + (["then NOOP: %s" % after[0]] if after[0] == 250 else ["NOOP after: %r" % (after,)]))


def reply_then_close(send_bytes, ehlo=True):
    def run(c):
        if ehlo:
            c.cmd("EHLO client.test")
        c.send(send_bytes)
        r = c.reply()
        return (r[0], r[1] + (["closed"] if c.closed() else ["still open"]))
    return run


def commands(*lines):
    def run(c):
        r = None
        for l in lines:
            r = c.cmd(l)
        return r
    return run


def silent(c):
    start = time.time()
    r = c.reply(timeout=15)
    took = time.time() - start
    return (r[0], r[1] + (["after %.1fs" % took] if 1.5 <= took <= 10 else ["after %.1fs (want ~2s)" % took]))


def silent_in_data(c):
    open_mail(c)
    c.send(b"Subject: half\r\n")
    return silent(c)


def pregreet(port):
    # From outside auth.networks: trusted clients are greeted at once.
    c = Raw(port, greet=False, bind="127.0.0.2")
    c.send(b"EHLO early.test\r\n")
    r = c.reply(timeout=10)
    closed = c.closed()
    c.close()
    return (r[0], r[1] + (["closed"] if closed else ["still open"]))


def from_foreign_network(port):
    t0 = time.time()
    c = Raw(port, bind="127.0.0.2")
    waited = time.time() - t0
    c.cmd("EHLO client.test")
    r = c.cmd("MAIL FROM:<a@x.test>")
    c.close()
    return r, waited


def too_many_connections(port):
    # Not waiting for their greetings: they stay connected meanwhile.
    held = [Raw(port, greet=False) for _ in range(4)]
    extra = Raw(port, greet=False)
    r = extra.reply(timeout=10)
    closed = extra.closed()
    for c in held + [extra]:
        c.close()
    return (r[0], r[1] + (["closed"] if closed else ["still open"]))


CASES = [
    # name, function(client) -> (code, lines), expected code, expected text in the reply
    ("bare LF inside DATA", data_case(HEAD + b"line one\nline two\r\n.\r\n"), 550, "5.6.11"),
    ("bare CR inside DATA", data_case(HEAD + b"line one\rline two\r\n.\r\n"), 550, "5.6.11"),
    ("smuggling with \\n.\\n never ends DATA", smuggle(b"\n.\n"), 550, "5.6.11"),
    ("smuggling with \\n.\\r\\n never ends DATA", smuggle(b"\n.\r\n"), 550, "5.6.11"),
    ("smuggling with \\r.\\r\\n never ends DATA", smuggle(b"\r.\r\n"), 550, "5.6.11"),
    ("smuggling with \\r\\n.\\n never ends DATA", smuggle(b"\r\n.\n"), 550, "5.6.11"),
    ("smuggling with \\r\\n.\\r never ends DATA", smuggle(b"\r\n.\r"), 550, "5.6.11"),
    ("text line over 1000 octets", data_case(HEAD + b"x" * 1001 + b"\r\n.\r\n"), 550, "5.6.0"),
    ("message over max_message_size", data_case(HEAD + (b"y" * 998 + b"\r\n") * 25 + b".\r\n"), 552, "5.3.4"),
    ("SIZE= over max_message_size", commands("EHLO client.test", "MAIL FROM:<a@x.test> SIZE=30000"), 552, "5.3.4"),
    ("command line over 512 octets, session goes on", overlong_command, 500, "then NOOP: 250"),
    ("1,001 recipients", many_rcpts, 452, "901"),
    ("the 101st recipient", last_452_text, 452, "4.5.3 Too many recipients"),
    ("AUTH before STARTTLS", commands("EHLO client.test", "AUTH PLAIN AGFsaWNlAHNlY3JldA=="), 538, "5.7.11"),
    ("relay attempt: sender not allowed", commands("EHLO client.test", "MAIL FROM:<boss@bank.test>"), 550, "5.7.1"),
    ("relay attempt: From: header not allowed",
     data_case(b"From: boss@bank.test\r\nTo: b@y.test\r\n\r\npay now\r\n.\r\n"), 550, "<boss@bank.test>"),
    ("MAIL before EHLO", commands("MAIL FROM:<a@x.test>"), 503, "5.5.1"),
    ("RCPT before MAIL", commands("EHLO client.test", "RCPT TO:<b@y.test>"), 503, "5.5.1"),
    ("unknown command", commands("EHLO client.test", "XYZZY"), 500, "5.5.1"),
    ("bad recipient syntax", commands("EHLO client.test", "MAIL FROM:<a@x.test>", "RCPT TO:<no-domain>"), 501, "5.1.3"),
    ("unknown MAIL parameter", commands("EHLO client.test", "MAIL FROM:<a@x.test> FOO=bar"), 555, "5.5.4"),
    ("VRFY", commands("EHLO client.test", "VRFY root"), 252, "2.0.0"),
    ("bare LF in a command", reply_then_close(b"NOOP\n"), 500, "5.5.2"),
    ("garbage bytes", reply_then_close(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n"), 500, "closed"),
    ("binary garbage with a bare LF", reply_then_close(bytes(range(256)) * 2, ehlo=False), 500, "closed"),
    ("pipelining without EHLO", reply_then_close(b"MAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\n", ehlo=False), 554, "5.5.0"),
    ("commands pipelined after STARTTLS", reply_then_close(b"STARTTLS\r\nEHLO sneaky\r\n"), 554, "closed"),
    ("a client that goes silent", silent, 421, "4.4.2"),
    ("a client that goes silent in DATA", silent_in_data, 421, "4.4.2"),
]

try:
    gw.start()
    before = gw.queue_ids()
    for name, fn, want_code, want_text in CASES:
        try:
            c = Raw(gw.port)
            code, lines = fn(c)
            c.close()
        except Exception as e:  # a crash of the case is a failure, not the end
            code, lines = None, ["exception: %r" % e]
        text = "\n".join(lines)
        tap.ok(code == want_code and want_text in text, "%s -> %s %s" % (name, want_code, want_text),
               "got %r\n%s" % (code, text))

    t0 = time.time()
    trusted = Raw(gw.port)
    took = time.time() - t0
    trusted.close()
    tap.ok(trusted.greeting[0] == 220 and took < 1.5, "a client in auth.networks is greeted without the 3 s pre-greet wait",
           (trusted.greeting, took))
    code, lines = pregreet(gw.port)
    tap.ok(code == 554 and "5.5.0" in lines[0] and "closed" in lines, "bytes before the greeting -> 554 5.5.0 and close", lines)
    (code, lines), waited = from_foreign_network(gw.port)
    tap.ok(waited >= 2.9, "a client outside auth.networks is greeted after smtpd.pregreet_wait (3 s)", waited)
    tap.ok(code == 530 and "5.7.0 Authentication required" in lines[0], "MAIL from 127.0.0.2 (not in auth.networks) -> 530 5.7.0", lines)
    code, lines = too_many_connections(gw.port)
    tap.ok(code == 421 and "4.7.0" in lines[0] and "closed" in lines, "a 5th connection from one client -> 421 4.7.0", lines)

    # Out of file descriptors: accept() fails and the client waits in the
    # backlog.  The listener logs it and pauses (100 ms) instead of spinning
    # on a socket that stays readable, and takes the client once
    # descriptors are back.  (prlimit lowers only the soft limit, below what
    # is open, so that no new descriptor can be had whatever else closes.)
    pid = gw.proc.pid
    with open("/proc/%d/limits" % pid) as f:
        soft = re.search(r"^Max open files\s+(\d+)", f.read(), re.M).group(1)
    subprocess.run(["prlimit", "--pid", str(pid), "--nofile=8:"], check=True)
    starved = socket.create_connection(("127.0.0.1", gw.port), 5)
    time.sleep(1.0)
    failures = gw.log().count("cannot accept a connection")
    subprocess.run(["prlimit", "--pid", str(pid), "--nofile=%s:" % soft], check=True)
    tap.ok(1 <= failures <= 20, "out of file descriptors: accept failures logged about every 100 ms, no busy loop "
           "(%d in 1 s)" % failures, gw.log()[-600:])
    starved.settimeout(5)
    try:
        greeting = starved.recv(200)
    except OSError as e:
        greeting = repr(e).encode()
    starved.close()
    tap.ok(greeting.startswith(b"220 "), "descriptors back: the waiting client is accepted and greeted", greeting)

    after = gw.queue_ids()
    tap.eq(after, before, "the queue gained nothing")
    log = gw.log()
    tap.ok("client 127.0.0.2: refused MAIL" in log and "refused sender <boss@bank.test>" in log,
           "refusals are logged with the client address", log[-3000:])
    tap.ok(gw.proc.poll() is None, "the daemon is still running")
finally:
    rc = gw.stop()
    tap.eq(rc, 0, "postmux serve stops cleanly")
    gw.cleanup()
tap.done()

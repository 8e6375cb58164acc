#!/usr/bin/python3
# SPDX-License-Identifier: GPL-3.0-or-later
"""SMTP peer for test-smtp-client, on Debian's python3-aiosmtpd (1.4.x).

Run with /usr/bin/python3.  Listens on --port (0: any free port, written to
--port-file once listening).  Records in --outdir: one line per connection
in "connections", and per accepted message <n>.eml (the bytes as received,
after dot-unstuffing) and <n>.json (envelope, options, auth, pipelined).

Magic addresses: MAIL/RCPT fail-NNN@ -> NNN; RCPT data-NNN@ -> DATA NNN;
RCPT slow-S@ -> RCPT answered after S seconds.  A 421 closes the connection,
as real MTAs do.
"""
import argparse
import asyncio
import hashlib
import hmac
import json
import os
import re
import signal
import ssl
import uuid

from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword

TEXT = {2: "2.0.0 forced OK", 4: "4.3.0 forced temporary failure",
        5: "5.7.1 forced permanent failure"}


def forced(code):
    c = int(code)
    return f"{c} {TEXT.get(c // 100, '5.0.0 forced')} ({c})"


def magic(addr, kind):
    m = re.match(rf"^{kind}-(\d+)@", addr or "", re.I)
    return m.group(1) if m else None


class Handler:
    def __init__(self, args):
        self.a = args
        self.users = dict(u.split(":", 1) for u in args.user)
        self.count = 0
        os.makedirs(args.outdir, exist_ok=True)

    async def handle_EHLO(self, server, session, envelope, hostname, responses):
        session.host_name = hostname
        extra = ["250-ENHANCEDSTATUSCODES"]
        if self.a.pipelining:
            extra.append("250-PIPELINING")
        for line in extra:
            responses.insert(-1, line)
        return responses

    async def handle_MAIL(self, server, session, envelope, address, mail_options):
        # Pipelined: the RCPTs and DATA are already waiting to be read.
        session.pipelined = len(getattr(server._reader, "_buffer", b"")) > 0
        code = magic(address, "fail")
        if code:
            return forced(code)
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 2.1.0 OK"

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        slow = magic(address, "slow")
        if slow:
            await asyncio.sleep(int(slow))
        code = magic(address, "fail")
        if code:
            return forced(code)
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server, session, envelope):
        for r in envelope.rcpt_tos:
            code = magic(r, "data")
            if code:
                return forced(code)
        self.count += 1
        base = os.path.join(self.a.outdir, str(self.count))
        with open(base + ".eml", "wb") as f:
            f.write(envelope.original_content)
        with open(base + ".json", "w") as f:
            json.dump({"mail_from": envelope.mail_from, "rcpt_tos": envelope.rcpt_tos,
                       "mail_options": envelope.mail_options,
                       "auth": session.auth_data.login.decode() if isinstance(session.auth_data, LoginPassword) else None,
                       "tls": session.ssl is not None or self.a.tls == "implicit",
                       "pipelined": getattr(session, "pipelined", False)}, f)
        return f"250 2.0.0 OK queued as q{self.count}"

    async def auth_CRAM__MD5(self, server, args):          # advertised as CRAM-MD5
        chal = f"<{uuid.uuid4().hex}@peer.test>".encode()
        resp = await server.challenge_auth(chal)
        if resp is None or not isinstance(resp, bytes):
            return AuthResult(success=False, handled=True)
        try:
            user, digest = resp.decode().rsplit(" ", 1)
        except ValueError:
            return AuthResult(success=False, handled=False)
        pw = self.users.get(user)
        if pw and hmac.compare_digest(hmac.new(pw.encode(), chal, hashlib.md5).hexdigest(), digest.lower()):
            return AuthResult(success=True, auth_data=LoginPassword(user.encode(), b""))
        return AuthResult(success=False, handled=False)


class PeerSMTP(SMTP):
    def connection_made(self, transport):
        # STARTTLS calls this again for the same connection: count once.
        if getattr(self, "_counted", False):
            return super().connection_made(transport)
        self._counted = True
        with open(os.path.join(self.event_handler.a.outdir, "connections"), "a") as f:
            f.write("connect\n")
        super().connection_made(transport)

    async def push(self, status):
        await super().push(status)
        if (status if isinstance(status, str) else status.decode("latin-1")).startswith("421"):
            self.transport.close()


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--port-file", required=True)
    p.add_argument("--tls", choices=["none", "starttls", "implicit"], default="none")
    p.add_argument("--cert")
    p.add_argument("--key")
    p.add_argument("--auth-over-plaintext", action="store_true")
    p.add_argument("--pipelining", action="store_true")
    p.add_argument("--size", type=int, default=33554432)
    p.add_argument("--user", action="append", default=[], help="name:password")
    p.add_argument("--outdir", required=True)
    a = p.parse_args()
    handler = Handler(a)

    def authenticator(server, session, envelope, mechanism, auth_data):
        ok = isinstance(auth_data, LoginPassword) and \
            handler.users.get(auth_data.login.decode()) == auth_data.password.decode()
        return AuthResult(success=ok, handled=False, auth_data=auth_data if ok else None)

    ctx = None
    if a.tls != "none":
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(a.cert, a.key)
    kw = dict(hostname="peer.test", ident="unit-peer", authenticator=authenticator,
              data_size_limit=a.size, enable_SMTPUTF8=True,
              auth_require_tls=not a.auth_over_plaintext and a.tls == "starttls", auth_required=False)
    if a.tls == "starttls":
        kw["tls_context"] = ctx
    if not a.user:
        kw["auth_require_tls"] = True
        kw["auth_exclude_mechanism"] = ["PLAIN", "LOGIN", "CRAM-MD5"]
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    srv = loop.run_until_complete(loop.create_server(lambda: PeerSMTP(handler, **kw), a.host, a.port,
                                                     ssl=ctx if a.tls == "implicit" else None))
    port = srv.sockets[0].getsockname()[1]
    tmp = a.port_file + ".tmp"
    with open(tmp, "w") as f:
        f.write(f"{port}\n")
    os.rename(tmp, a.port_file)
    loop.add_signal_handler(signal.SIGTERM, loop.stop)
    loop.add_signal_handler(signal.SIGINT, loop.stop)
    loop.run_forever()
    srv.close()


if __name__ == "__main__":
    main()

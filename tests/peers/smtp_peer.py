#!/usr/bin/python3
# SPDX-License-Identifier: GPL-3.0-or-later
"""smtp_peer - a scriptable SMTP server for the integration tests and benchmarks.

Built on Debian's python3-aiosmtpd (1.4.x); run it with /usr/bin/python3 (the
pyenv python3 on PATH does not see Debian's packages).  It listens on
127.0.0.1 only.  With --port 0 it picks a free port; the first line it prints
on stdout is always "PORT <n>" (flushed), once it accepts connections.

Security modes (--mode):
  none          plaintext, no STARTTLS; AUTH offered over plaintext when users are given
  starttls      STARTTLS offered (--require-starttls: 530 until it is used);
                AUTH offered only after STARTTLS unless --auth-over-plaintext
  tls           implicit TLS from the first byte (the port 465 convention)
  no-starttls   plaintext, STARTTLS NOT offered, AUTH offered anyway: a client
                that demands STARTTLS must refuse to go on and send no credentials
Certificates: --cert/--key (PEM); the tests generate them at run time.

AUTH: PLAIN, LOGIN, CRAM-MD5 against --user NAME:PASSWORD (repeatable);
XOAUTH2 and OAUTHBEARER against --token USER:TOKEN (repeatable) and the
USER:TOKEN lines of --token-file (re-read at every AUTH, so a test's token
endpoint can issue and revoke tokens); on a bad token the RFC 7628 error
challenge, then 535.  --auth-mechs limits what is offered.

Forced replies (recipients count across connections, for the whole run):
  RCPT TO:<fail-NNN@...>        RCPT answered NNN, always
  RCPT TO:<fail-NNN-xK@...>     RCPT answered NNN the first K times, then accepted
  --rcpt-reply ADDR=NNN[xK]     the same, by full address or local part
  MAIL FROM:<fail-NNN@...>      MAIL answered NNN
  RCPT TO:<data-NNN@...>        RCPT accepted, DATA answered NNN
  header "X-Peer-Force: NNN"    DATA answered NNN
  RCPT TO:<slow-S@...>          RCPT answered after S seconds
  --stall-after CMD             never answer CMD (BANNER, EHLO, MAIL, RCPT, DATA
                                or DOT = the end of the message) for --stall-seconds
A 421 reply closes the connection, as real MTAs do.

Records, for the tests to assert on:
  --outdir DIR      every accepted message as NNNNNN.eml (the exact bytes after
                    dot-unstuffing) and NNNNNN.json (envelope, auth, TLS, connection,
                    whether RCPT and DATA came pipelined behind MAIL)
  --status FILE     JSON counters, rewritten atomically after every change:
                    tcp_connections (accepted sockets, before any TLS handshake),
                    sessions, active, max_active, messages, auth (a list of
                    {conn, mech, user, ok}), starttls, commands (count per verb)
  --transcript FILE every command line received and every reply sent, one per
                    line as "<conn> C: ..." / "<conn> S: ..."; AUTH payloads are
                    kept (these are test credentials) so a test can assert that
                    none was sent.
Stop it with SIGTERM (or SIGINT): it writes the status file a last time and exits 0.
"""
import argparse
import asyncio
import base64
import hashlib
import hmac
import json
import logging
import os
import re
import signal
import socket
import ssl
import sys
import time
import uuid

from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword

ALL_MECHS = ["PLAIN", "LOGIN", "CRAM-MD5", "XOAUTH2", "OAUTHBEARER"]
TEXT = {2: "2.0.0 forced OK", 4: "4.3.0 forced temporary failure", 5: "5.7.1 forced permanent failure"}


def forced(code):
    c = int(code)
    return "%d %s (%d)" % (c, TEXT.get(c // 100, "5.0.0 forced"), c)


def magic(addr, kind):
    m = re.match(r"^%s-(\d+)(?:-x(\d+))?@" % kind, addr or "", re.I)
    if not m:
        return None
    return int(m.group(1)), (int(m.group(2)) if m.group(2) else None)


class State:
    """Counters and records of one peer run; written to --status."""

    def __init__(self, args):
        self.a = args
        self.loop = None
        self.pending = False
        self.next_conn = 0
        self.rcpt_seen = {}
        self.counts = {"port": 0, "pid": os.getpid(), "mode": args.mode, "tcp_connections": 0,
                       "sessions": 0, "active": 0, "max_active": 0, "messages": 0, "auth": [],
                       "starttls": 0, "commands": {}, "stalls": 0}
        self.transcript = open(args.transcript, "a", buffering=1) if args.transcript else None

    def bump(self, key, n=1):
        self.counts[key] += n
        self.changed()

    def changed(self):
        if not self.a.status or self.pending:
            return
        self.pending = True
        self.loop.call_soon(self.write)

    def write(self):
        self.pending = False
        if not self.a.status:
            return
        tmp = self.a.status + ".tmp"
        with open(tmp, "w") as f:
            json.dump(self.counts, f)
        os.replace(tmp, self.a.status)

    def say(self, conn, who, line):
        if self.transcript:
            self.transcript.write("%d %s: %s\n" % (conn, who, line))


class Handler:
    def __init__(self, args, st):
        self.a = args
        self.st = st
        self.users = dict(u.split(":", 1) for u in args.user)
        self.tokens = {}
        for t in args.token:
            u, tok = t.split(":", 1)
            self.tokens[tok] = u
        self.table = {}
        for r in args.rcpt_reply:
            key, _, val = r.partition("=")
            m = re.fullmatch(r"(\d{3})(?:x(\d+))?", val)
            if not m:
                raise SystemExit("smtp_peer: bad --rcpt-reply %r (want ADDR=NNN or ADDR=NNNxK)" % r)
            self.table[key.lower()] = (int(m.group(1)), int(m.group(2)) if m.group(2) else None)
        self.seq = 0
        if args.outdir:
            os.makedirs(args.outdir, exist_ok=True)

    def token_user(self, tok):
        """The user @tok was issued for, or None."""
        if tok in self.tokens:
            return self.tokens[tok]
        if self.a.token_file:
            try:
                with open(self.a.token_file) as f:
                    for line in f:
                        u, _, t = line.rstrip("\n").partition(":")
                        if t and t == tok:
                            return u
            except FileNotFoundError:
                pass
        return None

    async def stall(self, server, what):
        if self.a.stall_after == what:
            self.st.bump("stalls")
            self.st.say(server.conn_id, "-", "stalling on %s for %ss" % (what, self.a.stall_seconds))
            await asyncio.sleep(self.a.stall_seconds)

    async def handle_EHLO(self, server, session, envelope, hostname, responses):
        await self.stall(server, "EHLO")
        session.host_name = hostname
        extra = ["250-ENHANCEDSTATUSCODES"]
        if self.a.pipelining:
            extra.append("250-PIPELINING")
        for e in extra:
            responses.insert(-1, e)
        return responses

    async def handle_MAIL(self, server, session, envelope, address, mail_options):
        await self.stall(server, "MAIL")
        # Pipelined: the RCPTs and DATA are already waiting to be read.
        session.pipelined = len(getattr(server._reader, "_buffer", b"")) > 0
        if self.a.require_auth and not session.authenticated:
            return "530 5.7.0 Authentication required"
        code = magic(address, "fail")
        if code:
            return forced(code[0])
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 2.1.0 OK"

    def rcpt_rule(self, address):
        a = (address or "").lower()
        rule = self.table.get(a) or self.table.get(a.split("@")[0])
        return rule or magic(address, "fail")

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        await self.stall(server, "RCPT")
        slow = magic(address, "slow")
        if slow:
            await asyncio.sleep(slow[0])
        rule = self.rcpt_rule(address)
        if rule:
            code, times = rule
            key = address.lower()
            seen = self.st.rcpt_seen.get(key, 0)
            self.st.rcpt_seen[key] = seen + 1
            if times is None or seen < times:
                return forced(code)
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server, session, envelope):
        await self.stall(server, "DOT")
        for r in envelope.rcpt_tos:
            code = magic(r, "data")
            if code:
                return forced(code[0])
        m = re.search(rb"^X-Peer-Force:\s*(\d{3})", envelope.original_content or b"", re.M | re.I)
        if m:
            return forced(m.group(1).decode())
        self.seq += 1
        qid = "%06d" % self.seq
        if self.a.outdir:
            base = os.path.join(self.a.outdir, qid)
            with open(base + ".eml", "wb") as f:
                f.write(envelope.original_content)
            auth = getattr(session, "auth_data", None)
            tls = server.tls_info()
            with open(base + ".json", "w") as f:
                json.dump({"mail_from": envelope.mail_from, "rcpt_tos": envelope.rcpt_tos,
                           "mail_options": envelope.mail_options, "rcpt_options": envelope.rcpt_options,
                           "auth_user": auth.login.decode(errors="replace") if auth is not None else None,
                           "auth_mech": server.auth_mech, "tls": tls is not None, "tls_version": tls,
                           "helo": session.host_name, "conn": server.conn_id,
                           "size": len(envelope.original_content),
                           "pipelined": getattr(session, "pipelined", False)}, f)
        self.st.bump("messages")
        return "250 2.0.0 OK queued as %s" % qid

    # auth_CRAM__MD5 is advertised as CRAM-MD5.
    async def auth_CRAM__MD5(self, server, args):
        chal = ("<%s@peer.test>" % uuid.uuid4().hex).encode()
        resp = await server.challenge_auth(chal)
        if resp is None or not isinstance(resp, bytes):
            return AuthResult(success=False, handled=True)
        try:
            user, digest = resp.decode().rsplit(" ", 1)
        except ValueError:
            server.note_auth(None, False)
            return AuthResult(success=False, handled=False)
        pw = self.users.get(user)
        ok = bool(pw) and hmac.compare_digest(hmac.new(pw.encode(), chal, hashlib.md5).hexdigest(),
                                              digest.lower())
        server.note_auth(user, ok)
        if ok:
            return AuthResult(success=True, auth_data=LoginPassword(user.encode(), b""))
        return AuthResult(success=False, handled=False)

    async def _oauth_fail(self, server, mech):
        err = json.dumps({"status": "invalid_token", "schemes": "bearer",
                          "scope": "https://mail.example.test/"})
        await server.push("334 " + base64.b64encode(err.encode()).decode())
        await server._reader.readline()
        await server.push("535 5.7.8 Authentication credentials invalid (%s)" % mech)
        return AuthResult(success=False, handled=True)

    async def _initial(self, server, args):
        if len(args) == 2:
            try:
                return base64.b64decode(args[1], validate=True)
            except Exception:
                await server.push("501 5.5.2 Can't decode base64")
                return None
        r = await server.challenge_auth("")
        return r if isinstance(r, bytes) else None

    async def auth_XOAUTH2(self, server, args):
        raw = await self._initial(server, args)
        if raw is None:
            return AuthResult(success=False, handled=True)
        parts = dict(p.split("=", 1) for p in raw.decode(errors="replace").split("\x01") if "=" in p)
        user = parts.get("user", "")
        auth = parts.get("auth", "")
        tok = auth[len("Bearer "):] if auth.startswith("Bearer ") else ""
        ok = bool(tok) and self.token_user(tok) == user
        server.note_auth(user, ok)
        if ok:
            return AuthResult(success=True, auth_data=LoginPassword(user.encode(), b"xoauth2"))
        return await self._oauth_fail(server, "XOAUTH2")

    async def auth_OAUTHBEARER(self, server, args):
        raw = await self._initial(server, args)
        if raw is None:
            return AuthResult(success=False, handled=True)
        gs2, _, rest = raw.decode(errors="replace").partition("\x01")
        m = re.search(r"(?:^|,)a=([^,]*)", gs2)
        user = m.group(1).replace("=2C", ",").replace("=3D", "=") if m else ""
        kv = dict(p.split("=", 1) for p in rest.split("\x01") if "=" in p)
        auth = kv.get("auth", "")
        tok = auth[len("Bearer "):] if auth.startswith("Bearer ") else ""
        owner = self.token_user(tok) if tok else None
        ok = owner is not None and (not user or owner == user)
        server.note_auth(user or owner, ok)
        if ok:
            return AuthResult(success=True,
                              auth_data=LoginPassword((user or owner).encode(), b"oauthbearer"))
        return await self._oauth_fail(server, "OAUTHBEARER")


class PeerSMTP(SMTP):
    """aiosmtpd's SMTP with counters, a transcript and RFC 4954 MAIL AUTH= accepted."""

    def __init__(self, handler, st, implicit_tls, **kw):
        if st.a.line_limit:
            self.line_length_limit = st.a.line_limit   # read by SMTP.__init__ for its reader
        super().__init__(handler, **kw)
        self.st = st
        self.implicit_tls = implicit_tls
        self.conn_id = 0
        self.auth_mech = None
        self.counted = False

    def connection_made(self, transport):
        starttls_done = self._original_transport is not None
        if not starttls_done and not self.counted:
            self.counted = True
            self.st.next_conn += 1
            self.conn_id = self.st.next_conn
            self.st.counts["sessions"] += 1
            self.st.counts["active"] += 1
            self.st.counts["max_active"] = max(self.st.counts["max_active"], self.st.counts["active"])
            self.st.changed()
        super().connection_made(transport)
        if not starttls_done and self.st.a.stall_after == "BANNER":
            # _handle_client sends the banner first; hold it back.
            self._handler_coroutine.cancel()
            self.st.bump("stalls")

    def connection_lost(self, error):
        super().connection_lost(error)
        if self.counted:
            self.counted = False
            self.st.counts["active"] -= 1
            self.st.say(self.conn_id, "-", "connection closed")
            self.st.changed()

    def tls_info(self):
        obj = None
        if self.implicit_tls:
            obj = self.transport.get_extra_info("ssl_object")
        elif self._tls_protocol is not None:
            obj = self.transport.get_extra_info("ssl_object")
        return obj.version() if obj is not None else None

    def note_auth(self, user, ok):
        self.st.counts["auth"].append({"conn": self.conn_id, "mech": self.auth_mech, "user": user, "ok": ok})
        self.st.changed()

    async def push(self, status):
        text = status.decode() if isinstance(status, bytes) else status
        for line in text.splitlines():
            self.st.say(self.conn_id, "S", line)
        await super().push(status)
        if text.startswith("421") and self.transport is not None:
            self.transport.close()

    async def smtp_MAIL(self, arg):
        if arg:
            arg = re.sub(r"\s+AUTH=\S+", "", arg, flags=re.I)
        return await super().smtp_MAIL(arg)

    async def smtp_AUTH(self, arg):
        self.auth_mech = (arg or "").split()[0].upper() if arg else None
        return await super().smtp_AUTH(arg)

    async def smtp_STARTTLS(self, arg):
        self.st.bump("starttls")
        return await super().smtp_STARTTLS(arg)

    async def smtp_DATA(self, arg):
        await self.event_handler.stall(self, "DATA")
        return await super().smtp_DATA(arg)


class CommandLog(logging.Handler):
    """Takes aiosmtpd's "%r >> %r" records: one per command line received."""

    def __init__(self, st, peers):
        super().__init__(logging.INFO)
        self.st = st
        self.peers = peers

    def emit(self, record):
        if record.msg != "%r >> %r" or len(record.args) != 2:
            return
        peer, line = record.args
        conn = self.peers.get(tuple(peer) if peer else None)
        if conn is None:
            return
        text = line.decode(errors="replace") if isinstance(line, (bytes, bytearray)) else str(line)
        verb = text.split(" ", 1)[0].upper()
        cmds = self.st.counts["commands"]
        cmds[verb] = cmds.get(verb, 0) + 1
        self.st.say(conn.conn_id, "C", text)
        self.st.changed()


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--mode", choices=["none", "starttls", "tls", "no-starttls"], default="none")
    p.add_argument("--cert")
    p.add_argument("--key")
    p.add_argument("--require-starttls", action="store_true")
    p.add_argument("--require-auth", action="store_true")
    p.add_argument("--auth-over-plaintext", action="store_true")
    p.add_argument("--user", action="append", default=[], help="NAME:PASSWORD")
    p.add_argument("--token", action="append", default=[], help="USER:TOKEN")
    p.add_argument("--token-file", help="file of USER:TOKEN lines, re-read at every AUTH")
    p.add_argument("--auth-mechs", help="comma-separated subset of %s" % ",".join(ALL_MECHS))
    p.add_argument("--rcpt-reply", action="append", default=[], help="ADDR=NNN or ADDR=NNNxK")
    p.add_argument("--stall-after", choices=["BANNER", "EHLO", "MAIL", "RCPT", "DATA", "DOT"])
    p.add_argument("--stall-seconds", type=float, default=600)
    p.add_argument("--pipelining", dest="pipelining", action="store_true", default=True,
                   help="offer PIPELINING (the default; the last of these two wins)")
    p.add_argument("--no-pipelining", dest="pipelining", action="store_false")
    p.add_argument("--size", type=int, default=32 * 1024 * 1024, help="SIZE limit (0: none)")
    p.add_argument("--line-limit", type=int, default=0,
                   help="longest line taken in DATA (default: aiosmtpd's 1001, RFC 5321's)")
    p.add_argument("--outdir")
    p.add_argument("--status")
    p.add_argument("--transcript")
    p.add_argument("--debug", action="store_true", help="aiosmtpd's debug log on stderr")
    a = p.parse_args()
    if a.mode in ("starttls", "tls") and not (a.cert and a.key):
        p.error("--mode %s needs --cert and --key" % a.mode)

    st = State(a)
    handler = Handler(a, st)
    peers = {}

    maillog = logging.getLogger("mail.log")
    if a.debug:
        logging.basicConfig(level=logging.DEBUG, format="%(asctime)s %(message)s")
    elif a.transcript or a.status:
        maillog.setLevel(logging.INFO)
        maillog.propagate = False
        maillog.addHandler(CommandLog(st, peers))
    if a.debug and (a.transcript or a.status):
        maillog.addHandler(CommandLog(st, peers))
    # asyncio reports failed TLS handshakes (the untrusted-CA tests) loudly; keep them short.
    logging.getLogger("asyncio").setLevel(logging.CRITICAL)

    def authenticator(server, session, envelope, mechanism, auth_data):
        ok = isinstance(auth_data, LoginPassword) and \
            handler.users.get(auth_data.login.decode()) == auth_data.password.decode()
        conn = peers.get(tuple(session.peer))
        if conn is not None:
            conn.note_auth(auth_data.login.decode(errors="replace")
                           if isinstance(auth_data, LoginPassword) else None, ok)
        return AuthResult(success=ok, handled=False, auth_data=auth_data if ok else None)

    ctx = None
    if a.mode in ("starttls", "tls"):
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(a.cert, a.key)

    offered = [m.strip().upper() for m in a.auth_mechs.split(",")] if a.auth_mechs else \
        (["PLAIN", "LOGIN", "CRAM-MD5"] if a.user else []) + (["XOAUTH2", "OAUTHBEARER"] if a.token or a.token_file else [])
    kw = dict(hostname="peer.test", ident="smtp_peer", authenticator=authenticator,
              auth_required=False, auth_require_tls=(a.mode == "starttls" and not a.auth_over_plaintext),
              auth_exclude_mechanism=[m for m in ALL_MECHS if m not in offered],
              data_size_limit=a.size or None, enable_SMTPUTF8=True)
    if a.mode == "starttls":
        kw.update(tls_context=ctx, require_starttls=a.require_starttls)
    if not offered:                      # aiosmtpd would print an empty "250-AUTH " line
        kw["auth_require_tls"] = True

    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    st.loop = loop

    def factory():
        st.counts["tcp_connections"] += 1
        st.changed()
        proto = PeerSMTP(handler, st, a.mode == "tls", **kw)
        orig = proto.connection_made

        def made(transport, proto=proto, orig=orig):
            first = proto._original_transport is None and not proto.counted
            orig(transport)
            if first:
                peers[tuple(transport.get_extra_info("peername"))] = proto
        proto.connection_made = made
        return proto

    srv = loop.run_until_complete(loop.create_server(
        factory, a.host, a.port, ssl=ctx if a.mode == "tls" else None, reuse_address=True,
        family=socket.AF_INET))
    port = srv.sockets[0].getsockname()[1]
    st.counts["port"] = port
    st.write()
    print("PORT %d" % port, flush=True)
    print("[smtp_peer] listening on %s:%d mode=%s auth=%s pid=%d"
          % (a.host, port, a.mode, ",".join(offered) or "-", os.getpid()), flush=True)
    loop.add_signal_handler(signal.SIGTERM, loop.stop)
    loop.add_signal_handler(signal.SIGINT, loop.stop)
    try:
        loop.run_forever()
    finally:
        srv.close()
        st.write()
    return 0


if __name__ == "__main__":
    sys.exit(main())

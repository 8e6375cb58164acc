# SPDX-License-Identifier: GPL-3.0-or-later
"""smtpdtest - what the SMTP listener's tests share: a certificate, a
gateway with listen.smtp on free ports, and a raw SMTP client that sends
exact bytes and reads exact replies."""
import os
import re
import socket
import subprocess

from pmxtest import Gateway

PY3 = "/usr/bin/python3"


def make_cert(directory):
    cert, key = os.path.join(directory, "cert.pem"), os.path.join(directory, "key.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", cert,
                    "-days", "30", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
                   check=True, capture_output=True, timeout=60)
    return cert, key


def password_hash(password):
    from pmxtest import POSTMUX
    p = subprocess.run([POSTMUX, "passwd"], input=(password + "\n").encode(), capture_output=True, timeout=30, check=True)
    return p.stdout.decode().strip()


class SmtpGateway(Gateway):
    """A gateway with a maildir transport and SMTP listeners on port 0."""

    def __init__(self, name, smtpd=None, auth=None, tls=True, implicit=True, extra=None):
        super().__init__(name=name)
        self.maildir = self.path("Maildir")
        listen = [{"address": "127.0.0.1:0"}]
        if tls and implicit:
            listen.append({"address": "127.0.0.1:0", "mode": "implicit_tls"})
        config = {
            "transports": {"md": {"plugin": "maildir",
                                  "options": {"path": self.maildir, "add_delivery_headers": False}}},
            "default": "md",
            "listen": {"smtp": listen},
            "shutdown_timeout": "10s",
        }
        if tls:
            self.cert, self.key = make_cert(self.dir)
            config["tls"] = {"cert_file": self.cert, "key_file": self.key}
        if smtpd is not None:
            config["smtpd"] = smtpd
        if auth is not None:
            config["auth"] = auth
        if extra:
            config.update(extra)
        self.write_config(config)
        self.port = None
        self.tls_port = None

    def start(self, extra_args=(), wait=True):
        proc = super().start(extra_args, wait)
        if wait:
            log = self.log()
            plain = re.findall(r"smtpd: listening on 127\.0\.0\.1:(\d+) \((?:STARTTLS|plain)", log)
            implicit = re.findall(r"smtpd: listening on 127\.0\.0\.1:(\d+) \(implicit TLS\)", log)
            self.port = int(plain[-1])
            self.tls_port = int(implicit[-1]) if implicit else None
        return proc

    def queue_ids(self):
        p = self.run("queue", "list", check=True)
        return [l.split()[0] for l in p.stdout.decode().splitlines()[1:] if re.match(r"[0-9A-F]{16} ", l)]

    def queue_show(self, qid):
        return self.run("queue", "show", qid).stdout.decode()

    def maildir_messages(self):
        out = []
        new = os.path.join(self.maildir, "new")
        if os.path.isdir(new):
            for f in sorted(os.listdir(new)):
                with open(os.path.join(new, f), "rb") as fh:
                    out.append(fh.read())
        return out


class Raw:
    """A raw SMTP client: exact bytes out, replies parsed in."""

    def __init__(self, port, bind=None, timeout=15, greet=True):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if bind:
            self.sock.bind((bind, 0))
        self.sock.settimeout(timeout)
        self.sock.connect(("127.0.0.1", port))
        self.buf = b""
        self.greeting = self.reply() if greet else None

    def send(self, data):
        self.sock.sendall(data)

    def reply(self, timeout=None):
        """One whole reply: (code, [lines]); (None, []) when the server closed."""
        if timeout is not None:
            self.sock.settimeout(timeout)
        lines = []
        while True:
            while b"\r\n" not in self.buf:
                try:
                    chunk = self.sock.recv(65536)
                except (ConnectionResetError, socket.timeout):
                    chunk = b""
                if not chunk:
                    return (None, lines)
                self.buf += chunk
            line, self.buf = self.buf.split(b"\r\n", 1)
            lines.append(line.decode(errors="replace"))
            if len(line) < 4 or line[3:4] != b"-":
                return (int(line[:3]), lines)

    def cmd(self, line):
        self.send(line.encode() + b"\r\n")
        return self.reply()

    def closed(self, timeout=5):
        """True when the server closed the connection (EOF)."""
        self.sock.settimeout(timeout)
        try:
            while True:
                chunk = self.sock.recv(65536)
                if not chunk:
                    return True
        except ConnectionResetError:
            return True
        except socket.timeout:
            return False

    def close(self):
        self.sock.close()

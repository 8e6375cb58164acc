#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-3.0-or-later
"""The SDK as a plugin author gets it: `meson install` of this build into a
temporary staging directory, the out-of-tree example transport
(contrib/example-transport) copied elsewhere and built there with `make`
through `pkg-config --cflags --libs postmux-plugin` alone (PKG_CONFIG_PATH
names only the staged prefix), installed into the staged plugin directory,
and loaded by the *installed* `postmux serve`, which delivers through it to
a local HTTP receiver.  The receiver checks the exact request; the queue
shows the outcome each HTTP status maps to.
"""
import base64
import getpass
import http.server
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import threading

sys.path.insert(0, os.environ["POSTMUX_TEST_LIB"])
import pmxtest  # noqa: E402
from pmxtest import Gateway, Tap, wait_until  # noqa: E402

tap = Tap()
BUILD = os.environ["MESON_BUILD_ROOT_DIR"]
SOURCE = os.environ["MESON_SOURCE_ROOT_DIR"]
PREFIX = os.environ["PMX_PREFIX"].lstrip("/")
LIBDIR = os.environ["PMX_LIBDIR"]
MESON = os.environ.get("MESON", "meson")

work = tempfile.mkdtemp(prefix="pmx-install-")
stage = os.path.join(work, "stage")
root = os.path.join(stage, PREFIX)
libdir = LIBDIR if os.path.isabs(LIBDIR) else os.path.join(root, LIBDIR)
pcdir = os.path.join(libdir, "pkgconfig")
plugindir = os.path.join(libdir, "postmux", "transports")


class Receiver(http.server.BaseHTTPRequestHandler):
    """Records each POST; answers with the next scripted (status, headers, body)."""
    requests = []
    script = []
    lock = threading.Lock()

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        with Receiver.lock:
            Receiver.requests.append((self.command, self.path, dict(self.headers), body))
            n = len(Receiver.requests)
            status, headers, reply = Receiver.script.pop(0) if Receiver.script else \
                (200, {}, json.dumps({"id": "hook-%d" % n}).encode())
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    def log_message(self, *args):
        pass


def run(cmd, **kw):
    return subprocess.run(cmd, capture_output=True, text=True, **kw)


server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
threading.Thread(target=server.serve_forever, daemon=True).start()
gw = None
try:
    # 1. meson install into the staging directory.
    r = run([MESON, "install", "-C", BUILD, "--destdir", stage, "--no-rebuild", "--quiet"])
    tap.eq(r.returncode, 0, "meson install --destdir succeeds")
    if r.returncode != 0:
        tap.comment(r.stdout + r.stderr)
        tap.done()
    for rel in ["include/postmux/postmux.h", "include/postmux/postmux-transport.h",
                "include/postmux/postmux-http.h", "include/postmux/postmux-version.h",
                "share/postmux/schemas/postmux.schema.json", "share/postmux/schemas/presets.json",
                "share/postmux/schemas/transports/maildir.schema.json",
                "share/postmux/schemas/transports/smtp.schema.json",
                "share/man/man1/postmux.1", "share/man/man5/postmux.json.5", "bin/postmux"]:
        tap.ok(os.path.isfile(os.path.join(root, rel)), "installed: " + rel)
    for rel in ["libpostmux-plugin.so", "pkgconfig/postmux-plugin.pc",
                "postmux/transports/pmx-maildir.so", "postmux/transports/pmx-smtp.so",
                "postmux/transports/pmx-oauth2-smtp.so"]:
        tap.ok(os.path.exists(os.path.join(libdir, rel)), "installed: <libdir>/" + rel)
    with open(os.path.join(root, "share/postmux/schemas/transports/maildir.schema.json")) as f:
        tap.eq(json.load(f)["required"], ["path"], "the installed maildir options schema is the plugin's own")

    # 2. pkg-config sees only the staged SDK, and nothing of the source or build tree.
    env = dict(os.environ)
    env["PKG_CONFIG_PATH"] = pcdir
    env.pop("PKG_CONFIG_LIBDIR", None)
    flags = run(["pkg-config", "--cflags", "--libs", "postmux-plugin"], env=env)
    tap.eq(flags.returncode, 0, "pkg-config --cflags --libs postmux-plugin answers")
    words = flags.stdout.split()
    inc = [w for w in words if w.startswith("-I") and os.path.exists(os.path.join(w[2:], "postmux", "postmux.h"))]
    tap.eq([os.path.realpath(w[2:]) for w in inc], [os.path.realpath(os.path.join(root, "include"))],
           "the SDK's -I is the staged include directory")
    tap.ok(not any(SOURCE in os.path.realpath(w.lstrip("-IL")) or BUILD in os.path.realpath(w.lstrip("-IL"))
                   for w in words if w.startswith(("-I", "-L"))),
           "no flag points into the source or build tree", flags.stdout)
    pd = run(["pkg-config", "--variable=plugindir", "postmux-plugin"], env=env).stdout.strip()
    tap.eq(os.path.realpath(pd), os.path.realpath(plugindir), "plugindir is the staged plugin directory")

    # 3. Build the example out of tree with make, install it into plugindir.
    src = os.path.join(work, "webhook-src")
    shutil.copytree(os.path.join(SOURCE, "contrib", "example-transport"), src)
    r = run(["make", "-C", src], env=env)
    tap.eq(r.returncode, 0, "the example transport builds with make against the installed SDK")
    if r.returncode != 0:
        tap.comment(r.stdout + r.stderr)
        tap.done()
    r = run(["make", "-C", src, "install"], env=env)
    tap.eq(r.returncode, 0, "make install puts it into the SDK's plugin directory")
    so = os.path.join(plugindir, "pmx-webhook.so")
    tap.ok(os.path.isfile(so), "pmx-webhook.so is in the staged plugin directory")
    syms = run(["nm", "-D", "--defined-only", so]).stdout.split()
    tap.eq([s for s in syms if s.startswith("pmx_")], ["pmx_transport_webhook_get_desc"],
           "the plugin exports exactly its descriptor")

    # 4. The installed postmux, its own libraries and plugin directory only.
    installed = os.path.join(root, "bin", "postmux")
    pmxtest.POSTMUX = installed
    os.environ["LD_LIBRARY_PATH"] = libdir
    os.environ["POSTMUX_PLUGIN_PATH"] = plugindir
    auth = "Bearer " + secrets.token_hex(16)
    os.environ["PMX_TEST_HOOK_AUTH"] = auth
    r = run([installed, "config", "schema", "--transport", "webhook"])
    tap.eq((r.returncode, json.loads(r.stdout or "{}").get("required")), (0, ["url"]),
           "postmux config schema --transport webhook prints the example's schema")

    port = server.server_address[1]
    gw = Gateway({
        "transports": {"hook": {"plugin": "webhook", "concurrency": 1,
                                "options": {"url": "http://127.0.0.1:%d/mail" % port, "timeout": 10,
                                            "headers": {"Authorization": "env:PMX_TEST_HOOK_AUTH",
                                                        "X-Tenant": "example"}}}},
        "default": "hook",
        "retry": {"initial_delay": "1s", "multiplier": 1, "max_delay": "1s", "jitter": 0, "max_age": "1h"},
    }, name="pmx-webhook")
    gw.start()
    tap.ok(True, "the installed postmux serve starts with the webhook transport")

    raw = (b"From: app@example.test\r\nTo: a@example.test, b@example.test\r\n"
           b"Subject: through the webhook\r\nMessage-ID: <hook-1@example.test>\r\n\r\n"
           b"line one\r\nline two \xc3\xa9\r\n")
    p = gw.send("app@example.test", ["a@example.test", "b@example.test"], raw)
    qid = p.stdout.decode().strip()
    tap.eq(p.returncode, 0, "postmux send queues the message")
    wait_until(lambda: len(Receiver.requests) >= 1, 30)
    tap.eq(len(Receiver.requests), 1, "the receiver got one request")
    method, path, headers, body = Receiver.requests[0]
    tap.eq((method, path), ("POST", "/mail"), "POST to the configured path")
    tap.eq(headers.get("Content-Type"), "application/json", "Content-Type: application/json")
    tap.ok(headers.get("Authorization") == auth, "Authorization is the resolved env: secret")
    tap.eq(headers.get("X-Tenant"), "example", "a plain extra header is sent as given")
    tap.eq(headers.get("Idempotency-Key"), qid + "-1", "Idempotency-Key: <queue id>-<attempt>")
    doc = json.loads(body)
    tap.eq(sorted(doc), ["attempt", "ingress", "message", "queue_id", "recipients", "sender"], "the JSON members")
    tap.eq((doc["queue_id"], doc["sender"], doc["recipients"], doc["attempt"], doc["ingress"]),
           (qid, "app@example.test", ["a@example.test", "b@example.test"], 1, "local:" + getpass.getuser()),
           "the envelope")
    got = base64.b64decode(doc["message"])
    tap.eq(got, raw, "the raw message bytes, exactly as queued")
    show = lambda q: gw.run("queue", "show", q).stdout.decode()  # noqa: E731
    tap.ok(wait_until(lambda: "state:        delivered" in show(qid), 30), "the message is delivered", show(qid))
    s = show(qid)
    tap.ok("<a@example.test> delivered (200 2.0.0" in s and "<b@example.test> delivered (200 2.0.0" in s,
           "both recipients delivered with the HTTP status", s)

    # 5. 503 with Retry-After defers; the retry is attempt 2 with its own key.
    Receiver.script.append((503, {"Retry-After": "1"}, b"{}"))
    p = gw.send("app@example.test", ["c@example.test"], raw)
    q2 = p.stdout.decode().strip()
    wait_until(lambda: len(Receiver.requests) >= 3, 30)
    tap.eq(len(Receiver.requests), 3, "a 503 is retried: two requests for the second message")
    keys = [r[2].get("Idempotency-Key") for r in Receiver.requests[1:3]]
    tap.eq(keys, [q2 + "-1", q2 + "-2"], "one Idempotency-Key per attempt")
    tap.eq([json.loads(r[3])["attempt"] for r in Receiver.requests[1:3]], [1, 2], "attempts 1 and 2")
    tap.ok(wait_until(lambda: "state:        delivered" in show(q2), 30), "delivered on the retry", show(q2))
    s = show(q2)
    tap.ok("c@example.test deferred 503 4.0.0 webhook hook: the receiver failed (HTTP 503)" in s,
           "the attempt log keeps the 503 and its class", s)
    tap.ok("via hook (" in s and "remote id hook-3" in s, "the receiver's JSON id is kept as the remote id", s)

    # 6. 400 bounces.
    Receiver.script.append((400, {}, b'{"error":"bad"}'))
    p = gw.send("app@example.test", ["d@example.test"], raw)
    q3 = p.stdout.decode().strip()
    tap.ok(wait_until(lambda: "<d@example.test> bounced (400 5.0.0" in show(q3), 30),
           "a 400 bounces the recipient with the HTTP status", show(q3))
    tap.eq(len(Receiver.requests), 4, "a bounce is not retried")

    log = gw.log()
    tap.ok(auth.split()[1] not in log, "the Authorization secret is never logged")
    tap.eq(gw.stop(), 0, "postmux serve stops cleanly on SIGTERM")
except Exception as e:  # a failure to set up is a failed test, with its reason
    tap.ok(False, "no exception", repr(e))
finally:
    if gw is not None:
        gw.cleanup()
    server.shutdown()
    shutil.rmtree(work, ignore_errors=True)
tap.done()

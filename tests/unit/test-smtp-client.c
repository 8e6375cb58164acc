/* SPDX-License-Identifier: GPL-3.0-or-later */
/*
 * test-smtp-client.c - the SDK's SMTP client engine against a real
 * aiosmtpd peer (tests/peers/smtp_peer.py, shared with the integration
 * tests) on a free loopback port.
 *
 * Each test starts its own peer and stops it by pid.  The test CA and the
 * server certificate are made at start-up with the openssl command in a
 * temporary directory, never committed.
 */
#include "postmux-result-private.h"

#include <glib/gstdio.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

static char *tmp_dir;     /* certificates live here */
static char *ca_file;
static char *peer_script;

typedef struct {
  GPid    pid;
  guint16 port;
  char   *dir;
} Peer;

/* run - a command that must succeed */
static void
run (const char *const *argv)
{
  g_autoptr(GError) error = NULL;
  int status = 0;

  g_spawn_sync (tmp_dir, (char **) argv, NULL, G_SPAWN_SEARCH_PATH | G_SPAWN_STDOUT_TO_DEV_NULL
                | G_SPAWN_STDERR_TO_DEV_NULL, NULL, NULL, NULL, NULL, &status, &error);
  g_assert_no_error (error);
  g_assert_true (g_spawn_check_wait_status (status, NULL));
}

/* make_certificates - a test CA and a server certificate it signed for
 * localhost and 127.0.0.1 */
static void
make_certificates (void)
{
  const char *ca[] = { "openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                       "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=Postmux Test CA",
                       "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign",
                       NULL };
  const char *csr[] = { "openssl", "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                        "-keyout", "key.pem", "-out", "server.csr", "-subj", "/CN=localhost", NULL };
  const char *sign[] = { "openssl", "x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
                         "-CAcreateserial", "-out", "cert.pem", "-days", "2", "-extfile", "ext.cnf", NULL };
  g_autofree char *ext = g_build_filename (tmp_dir, "ext.cnf", NULL);

  g_assert_true (g_file_set_contents (ext, "subjectAltName=DNS:localhost,IP:127.0.0.1\n", -1, NULL));
  run (ca);
  run (csr);
  run (sign);
  ca_file = g_build_filename (tmp_dir, "ca.pem", NULL);
}

/* peer_status_count - the counter @name in the peer's status file, or -1
 * before the peer has written it */
static gint64
peer_status_count (Peer       *peer,
                   const char *name)
{
  g_autofree char *path = g_build_filename (peer->dir, "status.json", NULL);
  g_autofree char *key = g_strdup_printf ("\"%s\": ", name);
  g_autofree char *contents = NULL;
  const char *p;

  if (!g_file_get_contents (path, &contents, NULL, NULL)
      || (p = strstr (contents, key)) == NULL)
    return -1;
  return g_ascii_strtoll (p + strlen (key), NULL, 10);
}

/* peer_start - start a peer in @mode ("none", "starttls", "tls") that does
 * not offer PIPELINING, with the extra arguments (NULL-terminated;
 * "--pipelining" offers it); waits until it listens */
static Peer *
peer_start (const char *mode,
            ...)
{
  Peer *peer = g_new0 (Peer, 1);
  g_autoptr(GPtrArray) argv = g_ptr_array_new_with_free_func (g_free);
  g_autoptr(GError) error = NULL;
  const char *arg;
  va_list args;

  peer->dir = g_dir_make_tmp ("pmx-smtp-peer-XXXXXX", &error);
  g_assert_no_error (error);
  g_ptr_array_add (argv, g_strdup ("/usr/bin/python3"));
  g_ptr_array_add (argv, g_strdup (peer_script));
  g_ptr_array_add (argv, g_strdup ("--status"));
  g_ptr_array_add (argv, g_build_filename (peer->dir, "status.json", NULL));
  g_ptr_array_add (argv, g_strdup ("--outdir"));
  g_ptr_array_add (argv, g_build_filename (peer->dir, "out", NULL));
  g_ptr_array_add (argv, g_strdup ("--mode"));
  g_ptr_array_add (argv, g_strdup (mode));
  g_ptr_array_add (argv, g_strdup ("--no-pipelining"));
  g_ptr_array_add (argv, g_strdup ("--cert"));
  g_ptr_array_add (argv, g_build_filename (tmp_dir, "cert.pem", NULL));
  g_ptr_array_add (argv, g_strdup ("--key"));
  g_ptr_array_add (argv, g_build_filename (tmp_dir, "key.pem", NULL));
  va_start (args, mode);
  while ((arg = va_arg (args, const char *)) != NULL)
    g_ptr_array_add (argv, g_strdup (arg));
  va_end (args);
  g_ptr_array_add (argv, NULL);

  g_spawn_async (peer->dir, (char **) argv->pdata, NULL, G_SPAWN_DO_NOT_REAP_CHILD
                 | G_SPAWN_STDOUT_TO_DEV_NULL | G_SPAWN_STDERR_TO_DEV_NULL,
                 NULL, NULL, &peer->pid, &error);
  g_assert_no_error (error);
  /* The status file appears, with the port, once the peer listens. */
  for (int i = 0; i < 400 && peer->port == 0; i++)
    {
      gint64 port = peer_status_count (peer, "port");

      if (port > 0)
        peer->port = (guint16) port;
      else
        g_usleep (25000);
    }
  g_assert_cmpuint (peer->port, !=, 0);
  return peer;
}

/* peer_stop - stop the peer by pid and remove its files */
static void
peer_stop (Peer *peer)
{
  g_autofree char *cmd = NULL;
  int status;

  kill (peer->pid, SIGTERM);
  waitpid (peer->pid, &status, 0);
  g_spawn_close_pid (peer->pid);
  cmd = g_strdup_printf ("rm -rf '%s'", peer->dir);
  g_assert_cmpint (system (cmd), ==, 0);
  g_free (peer->dir);
  g_free (peer);
}

G_DEFINE_AUTOPTR_CLEANUP_FUNC (Peer, peer_stop)

/* peer_file - the contents of a file the peer wrote (transfer full) */
static char *
peer_file (Peer       *peer,
           const char *name,
           gsize      *out_len)
{
  g_autofree char *path = g_build_filename (peer->dir, "out", name, NULL);
  char *contents = NULL;

  if (!g_file_get_contents (path, &contents, out_len, NULL))
    return NULL;
  return contents;
}

/* peer_connections - how many SMTP sessions the peer saw (a STARTTLS
 * upgrade stays one) */
static guint
peer_connections (Peer *peer)
{
  gint64 n = peer_status_count (peer, "sessions");

  g_assert_cmpint (n, >=, 0);
  return (guint) n;
}

/* config_for - a client configuration for @peer */
static PmxSmtpConfig
config_for (Peer           *peer,
            PmxSmtpSecurity security,
            PmxSmtpAuth     auth)
{
  PmxSmtpConfig config = {
    .host = "127.0.0.1",
    .port = peer->port,
    .security = security,
    .helo_name = "client.test",
    .tls_verify = TRUE,
    .ca_file = ca_file,
    .connect_timeout_ms = 5000,
    .command_timeout_ms = 5000,
    .data_timeout_ms = 5000,
    .auth = auth,
    .username = auth != PMX_SMTP_AUTH_NONE ? "alice" : NULL,
    .secret = auth != PMX_SMTP_AUTH_NONE ? "secret" : NULL,
  };
  return config;
}

static const char test_message[] = "From: a@x.test\r\nTo: b@y.test\r\nSubject: unit\r\n\r\nhello\r\n";

/* send_to - send test_message from a@x.test to @rcpts (NULL-terminated) */
static PmxResult *
send_to (PmxSmtpClient      *client,
         const char *const  *rcpts,
         const char         *message)
{
  PmxEnvelope env = { 0, };
  PmxResult *result;

  env.queue_id = "Q1";
  env.sender = "a@x.test";
  env.recipients = rcpts;
  env.n_recipients = g_strv_length ((char **) rcpts);
  env.attempt = 1;
  result = pmx_result_new (env.n_recipients);
  pmx_result_request_transcript (result);
  pmx_smtp_client_send (client, &env, (const guint8 *) message, strlen (message), result);
  return result;
}

/* client_lines - the "C: " lines of a transcript, joined by "|" */
static char *
client_lines (const char *transcript)
{
  g_auto(GStrv) lines = g_strsplit (transcript, "\n", -1);
  GString *out = g_string_new (NULL);

  for (guint i = 0; lines[i] != NULL; i++)
    if (g_str_has_prefix (lines[i], "C: "))
      g_string_append_printf (out, "%s%s", out->len > 0 ? "|" : "", lines[i] + 3);
  return g_string_free (out, FALSE);
}

/* assert_recipient - one recipient's outcome, exactly */
static void
assert_recipient (PmxResult    *result,
                  gsize         i,
                  PmxRcptStatus status,
                  guint         code,
                  const char   *enhanced,
                  const char   *text)
{
  const PmxResultRecipient *r = pmx_result_get_recipient (result, i);

  g_assert_cmpint (r->status, ==, status);
  g_assert_cmpuint (r->code, ==, code);
  g_assert_cmpstr (r->enhanced, ==, enhanced);
  g_assert_cmpstr (r->text, ==, text);
}

/* ---------------------------------------------------------------------- */

typedef struct {
  const char     *peer_mode;
  PmxSmtpSecurity security;
  PmxSmtpAuth     auth;
  const char     *expected;   /* client lines */
} AuthCase;

#define MSG_LINES "MAIL FROM:<a@x.test> SIZE=54|RCPT TO:<b@y.test>|DATA|<message, 54 bytes>|."

static const AuthCase auth_cases[] = {
  { "starttls", PMX_SMTP_SECURITY_STARTTLS, PMX_SMTP_AUTH_PLAIN,
    "EHLO client.test|STARTTLS|EHLO client.test|AUTH PLAIN <redacted>|" MSG_LINES },
  { "starttls", PMX_SMTP_SECURITY_STARTTLS, PMX_SMTP_AUTH_LOGIN,
    "EHLO client.test|STARTTLS|EHLO client.test|AUTH LOGIN|<redacted>|<redacted>|" MSG_LINES },
  { "starttls", PMX_SMTP_SECURITY_STARTTLS, PMX_SMTP_AUTH_CRAM_MD5,
    "EHLO client.test|STARTTLS|EHLO client.test|AUTH CRAM-MD5|<redacted>|" MSG_LINES },
  { "starttls", PMX_SMTP_SECURITY_STARTTLS, PMX_SMTP_AUTH_NONE,
    "EHLO client.test|STARTTLS|EHLO client.test|" MSG_LINES },
  { "tls", PMX_SMTP_SECURITY_TLS, PMX_SMTP_AUTH_PLAIN,
    "EHLO client.test|AUTH PLAIN <redacted>|" MSG_LINES },
  { "tls", PMX_SMTP_SECURITY_TLS, PMX_SMTP_AUTH_LOGIN,
    "EHLO client.test|AUTH LOGIN|<redacted>|<redacted>|" MSG_LINES },
  { "tls", PMX_SMTP_SECURITY_TLS, PMX_SMTP_AUTH_CRAM_MD5,
    "EHLO client.test|AUTH CRAM-MD5|<redacted>|" MSG_LINES },
  { "tls", PMX_SMTP_SECURITY_TLS, PMX_SMTP_AUTH_NONE,
    "EHLO client.test|" MSG_LINES },
  { "none", PMX_SMTP_SECURITY_NONE, PMX_SMTP_AUTH_PLAIN,
    "EHLO client.test|AUTH PLAIN <redacted>|" MSG_LINES },
  { "none", PMX_SMTP_SECURITY_NONE, PMX_SMTP_AUTH_LOGIN,
    "EHLO client.test|AUTH LOGIN|<redacted>|<redacted>|" MSG_LINES },
  { "none", PMX_SMTP_SECURITY_NONE, PMX_SMTP_AUTH_CRAM_MD5,
    "EHLO client.test|AUTH CRAM-MD5|<redacted>|" MSG_LINES },
  { "none", PMX_SMTP_SECURITY_NONE, PMX_SMTP_AUTH_NONE,
    "EHLO client.test|" MSG_LINES },
  { "starttls", PMX_SMTP_SECURITY_STARTTLS, PMX_SMTP_AUTH_AUTO,
    "EHLO client.test|STARTTLS|EHLO client.test|AUTH CRAM-MD5|<redacted>|" MSG_LINES },
  { "starttls", PMX_SMTP_SECURITY_OPPORTUNISTIC, PMX_SMTP_AUTH_PLAIN,
    "EHLO client.test|STARTTLS|EHLO client.test|AUTH PLAIN <redacted>|" MSG_LINES },
};

/* /smtp/deliver/<security>/<mechanism> - every mode with every mechanism
 * delivers, and says exactly what it should on the wire */
static void
test_deliver (gconstpointer data)
{
  const AuthCase *tc = data;
  g_autoptr(Peer) peer = peer_start (tc->peer_mode, "--user", "alice:secret", "--auth-over-plaintext", NULL);
  PmxSmtpConfig config = config_for (peer, tc->security, tc->auth);
  g_autoptr(PmxSmtpClient) client = NULL;
  const char *const rcpts[] = { "b@y.test", NULL };
  g_autoptr(PmxResult) result = NULL;
  g_autofree char *lines = NULL;
  g_autofree char *json = NULL;
  g_autofree char *eml = NULL;
  g_autofree char *b64 = g_base64_encode ((const guchar *) "secret", 6);

  config.allow_plaintext_auth = TRUE;
  client = pmx_smtp_client_new (&config);
  result = send_to (client, rcpts, test_message);
  g_assert_cmpint (pmx_result_get_failure (result), ==, PMX_FAILURE_NONE);
  assert_recipient (result, 0, PMX_RCPT_DELIVERED, 250, "2.0.0", "OK queued as 000001");
  g_assert_cmpstr (pmx_result_get_remote_id (result), ==, "000001");
  lines = client_lines (pmx_result_get_transcript (result));
  g_assert_cmpstr (lines, ==, tc->expected);
  g_assert_null (strstr (pmx_result_get_transcript (result), "secret"));
  g_assert_null (strstr (pmx_result_get_transcript (result), b64));

  eml = peer_file (peer, "000001.eml", NULL);
  g_assert_cmpstr (eml, ==, test_message);
  json = peer_file (peer, "000001.json", NULL);
  if (tc->auth == PMX_SMTP_AUTH_NONE)
    g_assert_nonnull (strstr (json, "\"auth_user\": null"));
  else
    g_assert_nonnull (strstr (json, "\"auth_user\": \"alice\""));
  g_assert_nonnull (strstr (json, tc->security == PMX_SMTP_SECURITY_NONE ? "\"tls\": false" : "\"tls\": true"));
  g_assert_nonnull (strstr (json, "\"pipelined\": false"));
}

/* /smtp/auth/wrong-password - 535 is an auth failure with the reply kept */
static void
test_wrong_password (void)
{
  g_autoptr(Peer) peer = peer_start ("starttls", "--user", "alice:secret", NULL);
  PmxSmtpConfig config = config_for (peer, PMX_SMTP_SECURITY_STARTTLS, PMX_SMTP_AUTH_PLAIN);
  g_autoptr(PmxSmtpClient) client = NULL;
  g_autoptr(GError) error = NULL;
  const char *enhanced = NULL, *text = NULL;
  const char *const rcpts[] = { "b@y.test", NULL };
  g_autoptr(PmxResult) result = NULL;

  config.secret = "wrong";
  client = pmx_smtp_client_new (&config);
  g_assert_false (pmx_smtp_client_connect (client, &error));
  g_assert_error (error, PMX_SMTP_ERROR, PMX_SMTP_ERROR_AUTH_FAILED);
  g_assert_cmpint (pmx_smtp_error_get_failure (error), ==, PMX_FAILURE_AUTH);
  g_assert_cmpint (pmx_smtp_error_get_transport_code (error), ==, PMX_TRANSPORT_ERROR_AUTH);
  g_assert_cmpuint (pmx_smtp_client_get_last_reply (client, &enhanced, &text), ==, 535);
  g_assert_cmpstr (enhanced, ==, "5.7.8");
  g_assert_cmpstr (text, ==, "Authentication credentials invalid");
  g_assert_nonnull (strstr (error->message, "AUTH PLAIN as alice refused: 535 5.7.8 Authentication credentials invalid"));
  g_assert_false (pmx_smtp_client_is_connected (client));

  /* The same through send(): the whole attempt fails as AUTH. */
  result = send_to (client, rcpts, test_message);
  g_assert_cmpint (pmx_result_get_failure (result), ==, PMX_FAILURE_AUTH);
  g_assert_cmpuint (pmx_result_get_failure_code (result), ==, 535);
  g_assert_true (pmx_result_get_session_broken (result));
  assert_recipient (result, 0, PMX_RCPT_DEFERRED, 535, "5.7.8", pmx_result_get_failure_text (result));
  g_assert_null (peer_file (peer, "000001.eml", NULL));
}

/* /smtp/starttls/required-not-offered - refused before any credential */
static void
test_starttls_missing (void)
{
  g_autoptr(Peer) peer = peer_start ("none", "--user", "alice:secret", "--auth-over-plaintext", NULL);
  PmxSmtpConfig config = config_for (peer, PMX_SMTP_SECURITY_STARTTLS, PMX_SMTP_AUTH_PLAIN);
  g_autoptr(PmxSmtpClient) client = pmx_smtp_client_new (&config);
  const char *const rcpts[] = { "b@y.test", NULL };
  g_autoptr(PmxResult) result = send_to (client, rcpts, test_message);
  g_autofree char *lines = client_lines (pmx_result_get_transcript (result));

  g_assert_cmpint (pmx_result_get_failure (result), ==, PMX_FAILURE_CONFIG);
  g_assert_nonnull (strstr (pmx_result_get_failure_text (result), "does not offer STARTTLS"));
  g_assert_cmpstr (lines, ==, "EHLO client.test|QUIT");
  g_assert_null (strstr (pmx_result_get_transcript (result), "AUTH PLAIN"));
  g_assert_true (pmx_result_get_session_broken (result));
}

/* /smtp/auth/plaintext-refused - PLAIN never goes in clear unless allowed */
static void
test_plaintext_refused (void)
{
  g_autoptr(Peer) peer = peer_start ("none", "--user", "alice:secret", "--auth-over-plaintext", NULL);
  PmxSmtpConfig config = config_for (peer, PMX_SMTP_SECURITY_NONE, PMX_SMTP_AUTH_PLAIN);
  g_autoptr(PmxSmtpClient) client = pmx_smtp_client_new (&config);
  g_autoptr(GError) error = NULL;
  g_autofree char *transcript = NULL;
  g_autofree char *lines = NULL;

  g_assert_false (pmx_smtp_client_connect (client, &error));
  g_assert_error (error, PMX_SMTP_ERROR, PMX_SMTP_ERROR_AUTH_UNAVAILABLE);
  g_assert_cmpint (pmx_smtp_error_get_failure (error), ==, PMX_FAILURE_CONFIG);
  transcript = pmx_smtp_client_take_transcript (client);
  lines = client_lines (transcript);
  g_assert_cmpstr (lines, ==, "EHLO client.test|QUIT");
}

/* /smtp/auth/not-offered - a mechanism the server lacks names what it has */
static void
test_mech_not_offered (void)
{
  g_autoptr(Peer) peer = peer_start ("starttls", "--user", "alice:secret", NULL);
  PmxSmtpConfig config = config_for (peer, PMX_SMTP_SECURITY_STARTTLS, PMX_SMTP_AUTH_XOAUTH2);
  g_autoptr(PmxSmtpClient) client = pmx_smtp_client_new (&config);
  g_autoptr(GError) error = NULL;

  g_assert_false (pmx_smtp_client_connect (client, &error));
  g_assert_error (error, PMX_SMTP_ERROR, PMX_SMTP_ERROR_AUTH_UNAVAILABLE);
  g_assert_nonnull (strstr (error->message, "auth is XOAUTH2, but the server offers AUTH CRAM-MD5 LOGIN PLAIN"));
}

/* /smtp/tls/untrusted-ca - refused unless verification is off */
static void
test_untrusted (void)
{
  g_autoptr(Peer) peer = peer_start ("tls", NULL);
  PmxSmtpConfig config = config_for (peer, PMX_SMTP_SECURITY_TLS, PMX_SMTP_AUTH_NONE);
  g_autoptr(PmxSmtpClient) client = NULL;
  g_autoptr(PmxSmtpClient) unverified = NULL;
  g_autoptr(PmxSmtpProbe) probe = NULL;
  g_autoptr(GError) error = NULL;

  config.ca_file = NULL;
  client = pmx_smtp_client_new (&config);
  g_assert_false (pmx_smtp_client_connect (client, &error));
  g_assert_error (error, PMX_SMTP_ERROR, PMX_SMTP_ERROR_CERTIFICATE);
  g_assert_cmpint (pmx_smtp_error_get_failure (error), ==, PMX_FAILURE_CONFIG);
  g_assert_nonnull (strstr (error->message, "not trusted: unable to get local issuer certificate"));

  probe = pmx_smtp_client_probe (client);
  g_assert_error (probe->error, PMX_SMTP_ERROR, PMX_SMTP_ERROR_CERTIFICATE);
  g_assert_cmpstr (probe->cert_subject, ==, "CN=localhost");
  g_assert_cmpstr (probe->cert_issuer, ==, "CN=Postmux Test CA");
  g_assert_false (probe->cert_verified);
  g_assert_cmpstr (probe->verify_result, ==, "unable to get local issuer certificate");
  g_assert_null (probe->caps_before_tls);

  config.tls_verify = FALSE;
  unverified = pmx_smtp_client_new (&config);
  g_clear_error (&error);
  g_assert_true (pmx_smtp_client_connect (unverified, &error));
  g_assert_no_error (error);
}

/* /smtp/rcpt/250-451-550 - each RCPT reply decides its recipient */
static void
test_mixed_recipients (void)
{
  g_autoptr(Peer) peer = peer_start ("none", NULL);
  PmxSmtpConfig config = config_for (peer, PMX_SMTP_SECURITY_NONE, PMX_SMTP_AUTH_NONE);
  g_autoptr(PmxSmtpClient) client = pmx_smtp_client_new (&config);
  const char *const rcpts[] = { "ok@y.test", "fail-451@y.test", "fail-550@y.test", NULL };
  g_autoptr(PmxResult) result = send_to (client, rcpts, test_message);
  g_autofree char *json = peer_file (peer, "000001.json", NULL);

  g_assert_cmpint (pmx_result_get_failure (result), ==, PMX_FAILURE_NONE);
  assert_recipient (result, 0, PMX_RCPT_DELIVERED, 250, "2.0.0", "OK queued as 000001");
  assert_recipient (result, 1, PMX_RCPT_DEFERRED, 451, "4.3.0", "forced temporary failure (451)");
  assert_recipient (result, 2, PMX_RCPT_BOUNCED, 550, "5.7.1", "forced permanent failure (550)");
  g_assert_false (pmx_result_get_session_broken (result));
  g_assert_nonnull (strstr (json, "\"rcpt_tos\": [\"ok@y.test\"]"));
}

/* /smtp/rcpt/none-accepted - no DATA when every RCPT failed: RSET */
static void
test_none_accepted (void)
{
  g_autoptr(Peer) peer = peer_start ("none", NULL);
  PmxSmtpConfig config = config_for (peer, PMX_SMTP_SECURITY_NONE, PMX_SMTP_AUTH_NONE);
  g_autoptr(PmxSmtpClient) client = pmx_smtp_client_new (&config);
  const char *const rcpts[] = { "fail-550@y.test", NULL };
  g_autoptr(PmxResult) result = send_to (client, rcpts, test_message);
  g_autofree char *lines = client_lines (pmx_result_get_transcript (result));

  assert_recipient (result, 0, PMX_RCPT_BOUNCED, 550, "5.7.1", "forced permanent failure (550)");
  g_assert_cmpstr (lines, ==, "EHLO client.test|MAIL FROM:<a@x.test> SIZE=54|RCPT TO:<fail-550@y.test>|RSET");
}

/* /smtp/pipelining - MAIL, every RCPT and DATA in one write, then the
 * replies in order */
static void
test_pipelining (void)
{
  g_autoptr(Peer) peer = peer_start ("none", "--pipelining", NULL);
  PmxSmtpConfig config = config_for (peer, PMX_SMTP_SECURITY_NONE, PMX_SMTP_AUTH_NONE);
  g_autoptr(PmxSmtpClient) client = pmx_smtp_client_new (&config);
  const char *const rcpts[] = { "ok@y.test", "fail-550@y.test", NULL };
  g_autoptr(PmxResult) result = send_to (client, rcpts, test_message);
  g_autofree char *json = peer_file (peer, "000001.json", NULL);
  const char *t = pmx_result_get_transcript (result);
  const char *expected =
    "C: MAIL FROM:<a@x.test> SIZE=54\n"
    "C: RCPT TO:<ok@y.test>\n"
    "C: RCPT TO:<fail-550@y.test>\n"
    "C: DATA\n"
    "S: 250 2.1.0 OK\n"
    "S: 250 2.1.5 OK\n"
    "S: 550 5.7.1 forced permanent failure (550)\n"
    "S: 354 End data with <CR><LF>.<CR><LF>\n"
    "C: <message, 54 bytes>\n"
    "C: .\n"
    "S: 250 2.0.0 OK queued as 000001\n";

  g_assert_nonnull (strstr (t, "S: 250 HELP\n"));
  g_assert_cmpstr (strstr (t, "S: 250 HELP\n") + strlen ("S: 250 HELP\n"), ==, expected);
  assert_recipient (result, 0, PMX_RCPT_DELIVERED, 250, "2.0.0", "OK queued as 000001");
  assert_recipient (result, 1, PMX_RCPT_BOUNCED, 550, "5.7.1", "forced permanent failure (550)");
  g_assert_nonnull (strstr (json, "\"pipelined\": true"));
}

/* /smtp/transcript/only-when-asked - an ordinary delivery (the host did not
 * ask for a transcript) records none, with the same outcomes; the next
 * send on the same connection that asks gets only its own exchange */
static void
test_transcript_only_when_asked (void)
{
  g_autoptr(Peer) peer = peer_start ("none", "--pipelining", NULL);
  PmxSmtpConfig config = config_for (peer, PMX_SMTP_SECURITY_NONE, PMX_SMTP_AUTH_NONE);
  g_autoptr(PmxSmtpClient) client = pmx_smtp_client_new (&config);
  const char *const rcpts[] = { "ok@y.test", "fail-550@y.test", NULL };
  g_autoptr(PmxResult) quiet = pmx_result_new (2);
  g_autoptr(PmxResult) asked = NULL;
  PmxEnvelope env = { .queue_id = "Q1", .sender = "a@x.test", .recipients = rcpts,
                      .n_recipients = 2, .attempt = 1 };

  pmx_smtp_client_send (client, &env, (const guint8 *) test_message, strlen (test_message), quiet);
  g_assert_null (pmx_result_get_transcript (quiet));
  assert_recipient (quiet, 0, PMX_RCPT_DELIVERED, 250, "2.0.0", "OK queued as 000001");
  assert_recipient (quiet, 1, PMX_RCPT_BOUNCED, 550, "5.7.1", "forced permanent failure (550)");

  asked = send_to (client, rcpts, test_message);
  g_assert_true (g_str_has_prefix (pmx_result_get_transcript (asked), "C: RSET\nC: MAIL FROM:<a@x.test> SIZE=54\n"));
  assert_recipient (asked, 0, PMX_RCPT_DELIVERED, 250, "2.0.0", "OK queued as 000002");
}

/* /smtp/data/dot-stuffing - the peer gets exactly the message, with bare
 * LF made CRLF and a final CRLF added */
static void
test_dot_stuffing (void)
{
  g_autoptr(Peer) peer = peer_start ("none", NULL);
  PmxSmtpConfig config = config_for (peer, PMX_SMTP_SECURITY_NONE, PMX_SMTP_AUTH_NONE);
  g_autoptr(PmxSmtpClient) client = pmx_smtp_client_new (&config);
  const char *const rcpts[] = { "b@y.test", NULL };
  const char *message = "Subject: dots\r\n\r\n.leading\r\n..two\r\n.\r\nbare\nlf\r\n.\n\nend";
  g_autoptr(PmxResult) result = send_to (client, rcpts, message);
  gsize len = 0;
  g_autofree char *eml = peer_file (peer, "000001.eml", &len);

  assert_recipient (result, 0, PMX_RCPT_DELIVERED, 250, "2.0.0", "OK queued as 000001");
  g_assert_cmpstr (eml, ==, "Subject: dots\r\n\r\n.leading\r\n..two\r\n.\r\nbare\r\nlf\r\n.\r\n\r\nend\r\n");
  g_assert_cmpuint (len, ==, strlen (eml));
}

/* /smtp/data/long-line - a line longer than the client's 64 KiB write
 * chunk, whose CR ends one chunk and LF starts the next, still goes out as
 * one CRLF line; a leading dot in the next chunk is not a line's start */
static void
test_long_line (void)
{
  g_autoptr(Peer) peer = peer_start ("none", "--line-limit", "200000", NULL);
  PmxSmtpConfig config = config_for (peer, PMX_SMTP_SECURITY_NONE, PMX_SMTP_AUTH_NONE);
  g_autoptr(PmxSmtpClient) client = pmx_smtp_client_new (&config);
  const char *const rcpts[] = { "b@y.test", NULL };
  g_autoptr(GString) message = g_string_new ("Subject: long\r\n\r\n");
  g_autoptr(GString) want = NULL;
  g_autoptr(PmxResult) result = NULL;
  gsize len = 0;
  g_autofree char *eml = NULL;

  while (message->len < 65535)
    g_string_append_c (message, 'x');
  g_string_append (message, "\r\n.y");           /* CR is byte 65535: the first chunk's last */
  while (message->len < 2 * 65536 + 1)   /* 65537 + 65536: where the third chunk starts */
    g_string_append_c (message, 'z');
  g_string_append (message, ".tail\n");          /* a dot that starts a chunk, not a line */
  want = g_string_new (message->str);
  g_string_replace (want, "\r\n.y", "\r\n..y", 1);
  g_string_replace (want, ".tail\n", ".tail\r\n", 1);
  result = send_to (client, rcpts, message->str);
  eml = peer_file (peer, "000001.eml", &len);

  assert_recipient (result, 0, PMX_RCPT_DELIVERED, 250, "2.0.0", "OK queued as 000001");
  g_assert_cmpuint (len, ==, want->len - 1);      /* the peer unstuffs: one dot less */
  g_string_replace (want, "\r\n..y", "\r\n.y", 1);
  g_assert_true (memcmp (eml, want->str, want->len) == 0);
}

/* /smtp/size/refused - over the server's SIZE: permanent, before MAIL */
static void
test_size (void)
{
  g_autoptr(Peer) peer = peer_start ("none", "--size", "40", NULL);
  PmxSmtpConfig config = config_for (peer, PMX_SMTP_SECURITY_NONE, PMX_SMTP_AUTH_NONE);
  g_autoptr(PmxSmtpClient) client = pmx_smtp_client_new (&config);
  const char *const rcpts[] = { "b@y.test", NULL };
  g_autoptr(PmxResult) result = send_to (client, rcpts, test_message);
  g_autofree char *lines = client_lines (pmx_result_get_transcript (result));
  g_autofree char *text = g_strdup_printf ("message of 54 bytes exceeds the size limit of 127.0.0.1:%u "
                                           "(SIZE 40)", peer->port);

  g_assert_cmpint (pmx_result_get_failure (result), ==, PMX_FAILURE_PERMANENT);
  g_assert_cmpstr (pmx_result_get_failure_text (result), ==, text);
  assert_recipient (result, 0, PMX_RCPT_BOUNCED, 0, "5.3.4", text);
  g_assert_cmpstr (lines, ==, "EHLO client.test");
  g_assert_false (pmx_result_get_session_broken (result));
}

/* /smtp/421 - a 421 anywhere: temporary, session broken; next send reconnects */
static void
test_421 (void)
{
  g_autoptr(Peer) peer = peer_start ("none", NULL);
  PmxSmtpConfig config = config_for (peer, PMX_SMTP_SECURITY_NONE, PMX_SMTP_AUTH_NONE);
  g_autoptr(PmxSmtpClient) client = pmx_smtp_client_new (&config);
  const char *const bad[] = { "ok@y.test", "fail-421@y.test", NULL };
  const char *const good[] = { "b@y.test", NULL };
  g_autoptr(PmxResult) result = send_to (client, bad, test_message);
  g_autoptr(PmxResult) again = NULL;

  g_assert_cmpint (pmx_result_get_failure (result), ==, PMX_FAILURE_TEMPORARY);
  g_assert_cmpuint (pmx_result_get_failure_code (result), ==, 421);
  g_assert_true (pmx_result_get_session_broken (result));
  g_assert_cmpint (pmx_result_get_recipient (result, 0)->status, ==, PMX_RCPT_DEFERRED);
  g_assert_cmpint (pmx_result_get_recipient (result, 1)->status, ==, PMX_RCPT_DEFERRED);
  g_assert_cmpstr (pmx_result_get_recipient (result, 1)->enhanced, ==, "4.3.0");
  g_assert_nonnull (strstr (pmx_result_get_transcript (result), "S: 421 4.3.0 forced temporary failure (421)\n"));
  g_assert_false (pmx_smtp_client_is_connected (client));

  again = send_to (client, good, test_message);
  assert_recipient (again, 0, PMX_RCPT_DELIVERED, 250, "2.0.0", "OK queued as 000001");
  g_assert_cmpuint (peer_connections (peer), ==, 2);
}

/* /smtp/timeout/stall-after-rcpt - temporary within the command timeout */
static void
test_stall (void)
{
  g_autoptr(Peer) peer = peer_start ("none", NULL);
  PmxSmtpConfig config = config_for (peer, PMX_SMTP_SECURITY_NONE, PMX_SMTP_AUTH_NONE);
  g_autoptr(PmxSmtpClient) client = NULL;
  const char *const rcpts[] = { "ok@y.test", "slow-5@y.test", NULL };
  g_autoptr(PmxResult) result = NULL;
  g_autofree char *text = g_strdup_printf ("127.0.0.1:%u: timed out after 1 s in RCPT TO", peer->port);
  gint64 start, elapsed;

  config.command_timeout_ms = 1000;
  client = pmx_smtp_client_new (&config);
  g_assert_true (pmx_smtp_client_connect (client, NULL));
  start = g_get_monotonic_time ();
  result = send_to (client, rcpts, test_message);
  elapsed = g_get_monotonic_time () - start;
  g_assert_cmpint (pmx_result_get_failure (result), ==, PMX_FAILURE_TEMPORARY);
  g_assert_true (pmx_result_get_session_broken (result));
  g_assert_cmpstr (pmx_result_get_failure_text (result), ==, text);
  g_assert_nonnull (strstr (pmx_result_get_transcript (result), "C: RCPT TO:<slow-5@y.test>\n*: "));
  g_assert_cmpint (pmx_result_get_recipient (result, 0)->status, ==, PMX_RCPT_DEFERRED);
  g_assert_cmpint (pmx_result_get_recipient (result, 1)->status, ==, PMX_RCPT_DEFERRED);
  g_assert_cmpint (elapsed, >=, 900 * 1000);
  g_assert_cmpint (elapsed, <, 2500 * 1000);
}

/* /smtp/reuse - one connection, RSET between messages; a limit reconnects */
static void
test_reuse (void)
{
  g_autoptr(Peer) peer = peer_start ("starttls", "--user", "alice:secret", NULL);
  PmxSmtpConfig config = config_for (peer, PMX_SMTP_SECURITY_STARTTLS, PMX_SMTP_AUTH_PLAIN);
  g_autoptr(PmxSmtpClient) client = pmx_smtp_client_new (&config);
  const char *const rcpts[] = { "b@y.test", NULL };

  for (int i = 0; i < 20; i++)
    {
      g_autoptr(PmxResult) result = send_to (client, rcpts, test_message);
      g_autofree char *lines = client_lines (pmx_result_get_transcript (result));
      g_autofree char *queued = g_strdup_printf ("OK queued as %06d", i + 1);

      if (g_getenv ("SMTP_DEBUG"))
        g_printerr ("%s", pmx_result_get_transcript (result));
      assert_recipient (result, 0, PMX_RCPT_DELIVERED, 250, "2.0.0", queued);
      if (i > 0)
        g_assert_cmpstr (lines, ==, "RSET|" MSG_LINES);
    }
  g_assert_cmpuint (peer_connections (peer), ==, 1);
  g_assert_cmpuint (pmx_smtp_client_get_n_connections (client), ==, 1);
  g_assert_cmpstr (pmx_smtp_client_get_auth_mechanism (client), ==, "PLAIN");
}

/* /smtp/reuse/limit - max_messages_per_connection reconnects */
static void
test_reuse_limit (void)
{
  g_autoptr(Peer) peer = peer_start ("none", NULL);
  PmxSmtpConfig config = config_for (peer, PMX_SMTP_SECURITY_NONE, PMX_SMTP_AUTH_NONE);
  g_autoptr(PmxSmtpClient) client = NULL;
  const char *const rcpts[] = { "b@y.test", NULL };

  config.max_messages_per_connection = 2;
  client = pmx_smtp_client_new (&config);
  for (int i = 0; i < 5; i++)
    {
      g_autoptr(PmxResult) result = send_to (client, rcpts, test_message);

      g_assert_cmpint (pmx_result_get_recipient (result, 0)->status, ==, PMX_RCPT_DELIVERED);
    }
  pmx_smtp_client_disconnect (client);
  g_assert_cmpuint (peer_connections (peer), ==, 3);
}

/* /smtp/connect/refused - nothing listening: temporary */
static void
test_refused (void)
{
  int fd = socket (AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in sin = { .sin_family = AF_INET, .sin_addr.s_addr = htonl (INADDR_LOOPBACK) };
  socklen_t len = sizeof sin;
  PmxSmtpConfig config = { .host = "127.0.0.1", .security = PMX_SMTP_SECURITY_NONE, .connect_timeout_ms = 2000 };
  g_autoptr(PmxSmtpClient) client = NULL;
  g_autoptr(GError) error = NULL;

  g_assert_cmpint (bind (fd, (struct sockaddr *) &sin, sizeof sin), ==, 0);
  g_assert_cmpint (getsockname (fd, (struct sockaddr *) &sin, &len), ==, 0);
  close (fd);   /* the port is now free and nobody listens */
  config.port = ntohs (sin.sin_port);
  client = pmx_smtp_client_new (&config);
  g_assert_false (pmx_smtp_client_connect (client, &error));
  g_assert_error (error, PMX_SMTP_ERROR, PMX_SMTP_ERROR_CONNECT);
  g_assert_cmpint (pmx_smtp_error_get_failure (error), ==, PMX_FAILURE_TEMPORARY);
  g_assert_nonnull (strstr (error->message, "Connection refused"));
}

/* /smtp/probe/starttls - what doctor shows for a good server */
static void
test_probe (void)
{
  g_autoptr(Peer) peer = peer_start ("starttls", "--user", "alice:secret", NULL);
  PmxSmtpConfig config = config_for (peer, PMX_SMTP_SECURITY_STARTTLS, PMX_SMTP_AUTH_AUTO);
  g_autoptr(PmxSmtpClient) client = pmx_smtp_client_new (&config);
  g_autoptr(PmxSmtpProbe) p = pmx_smtp_client_probe (client);
  g_autofree char *expected_to = g_strdup_printf ("127.0.0.1:%u", peer->port);
  g_autofree char *before = NULL;
  g_autofree char *after = NULL;
  g_autofree char *offered = NULL;

  g_assert_no_error (p->error);
  g_assert_cmpstr (p->addresses[0], ==, "127.0.0.1");
  g_assert_cmpstr (p->connected_to, ==, expected_to);
  g_assert_cmpstr (p->tls_version, ==, "TLSv1.3");
  g_assert_cmpstr (p->cert_subject, ==, "CN=localhost");
  g_assert_cmpstr (p->cert_issuer, ==, "CN=Postmux Test CA");
  g_assert_nonnull (p->cert_not_after);
  g_assert_true (p->cert_verified);
  g_assert_cmpstr (p->verify_result, ==, "ok");
  before = g_strjoinv (",", p->caps_before_tls);
  after = g_strjoinv (",", p->caps_after_tls);
  offered = g_strjoinv (",", p->auth_offered);
  g_assert_cmpstr (before, ==, "SIZE 33554432,8BITMIME,SMTPUTF8,STARTTLS,ENHANCEDSTATUSCODES,HELP");
  g_assert_cmpstr (after, ==, "SIZE 33554432,8BITMIME,SMTPUTF8,AUTH CRAM-MD5 LOGIN PLAIN,ENHANCEDSTATUSCODES,HELP");
  g_assert_cmpstr (offered, ==, "CRAM-MD5,LOGIN,PLAIN");
  g_assert_cmpstr (p->auth_mechanism, ==, "CRAM-MD5");
  g_assert_true (p->auth_ok);
  g_assert_cmpuint (p->auth_code, ==, 235);
  g_assert_cmpstr (p->auth_enhanced, ==, "2.7.0");
  g_assert_cmpstr (p->auth_text, ==, "Authentication successful");
  g_assert_true (g_str_has_suffix (p->transcript, "C: QUIT\nS: 221 Bye\n"));
}

/* /smtp/sasl/encoders - the initial responses, byte for byte */
static void
test_encoders (void)
{
  static const guint8 challenge[] = "<1896.697170952@postoffice.reston.mci.net>";
  g_autofree char *xo = pmx_smtp_sasl_xoauth2 ("someuser@example.com", "ya29.vF9dft4qmTc2Nvb3RlckBhbHRhdmlzdGEuY29tCg");
  const char *xo_raw = "user=someuser@example.com\001auth=Bearer ya29.vF9dft4qmTc2Nvb3RlckBhbHRhdmlzdGEuY29tCg\001\001";
  g_autofree char *xo_expected = g_base64_encode ((const guchar *) xo_raw, strlen (xo_raw));
  g_autofree char *ob = pmx_smtp_sasl_oauthbearer ("user@example.com", "server.example.com", 143,
                                                   "vF9dft4qmTc2Nvb3RlckBhbHRhdmlzdGEuY29tCg==");
  const char *ob_raw = "n,a=user@example.com,\001host=server.example.com\001port=143\001"
                       "auth=Bearer vF9dft4qmTc2Nvb3RlckBhbHRhdmlzdGEuY29tCg==\001\001";
  g_autofree char *ob_expected = g_base64_encode ((const guchar *) ob_raw, strlen (ob_raw));
  g_autofree char *plain = pmx_smtp_sasl_plain ("alice", "secret");
  /* RFC 2195 section 2's example */
  g_autofree char *cram = pmx_smtp_sasl_cram_md5 ("tim", "tanstaaftanstaaf", challenge, sizeof challenge - 1);

  g_assert_cmpstr (xo, ==, xo_expected);
  g_assert_cmpstr (ob, ==, ob_expected);
  g_assert_cmpstr (plain, ==, "AGFsaWNlAHNlY3JldA==");
  g_assert_cmpstr (cram, ==, "dGltIGI5MTNhNjAyYzdlZGE3YTQ5NWI0ZTZlNzMzNGQzODkw");
}

/* /smtp/smtputf8/not-offered - non-ASCII address needs SMTPUTF8 */
static void
test_utf8 (void)
{
  g_autoptr(Peer) peer = peer_start ("none", NULL);
  PmxSmtpConfig config = config_for (peer, PMX_SMTP_SECURITY_NONE, PMX_SMTP_AUTH_NONE);
  g_autoptr(PmxSmtpClient) client = pmx_smtp_client_new (&config);
  const char *const rcpts[] = { "b\xc3\xbc@y.test", NULL };
  g_autoptr(PmxResult) result = send_to (client, rcpts, test_message);
  g_autofree char *json = peer_file (peer, "000001.json", NULL);

  /* aiosmtpd offers SMTPUTF8: the parameter is on MAIL */
  assert_recipient (result, 0, PMX_RCPT_DELIVERED, 250, "2.0.0", "OK queued as 000001");
  g_assert_nonnull (strstr (pmx_result_get_transcript (result), "C: MAIL FROM:<a@x.test> SIZE=54 SMTPUTF8\n"));
  g_assert_nonnull (json);
}

int
main (int    argc,
      char **argv)
{
  g_autoptr(GError) error = NULL;
  g_autofree char *cmd = NULL;
  int rc;

  g_test_init (&argc, &argv, NULL);
  signal (SIGPIPE, SIG_IGN);

  if (!g_file_test ("/usr/bin/python3", G_FILE_TEST_IS_EXECUTABLE)
      || system ("/usr/bin/python3 -c 'import aiosmtpd' 2>/dev/null") != 0)
    {
      g_test_skip ("python3-aiosmtpd is not installed (apt-get install python3-aiosmtpd)");
      return 0;
    }
  peer_script = g_test_build_filename (G_TEST_DIST, "peers", "smtp_peer.py", NULL);
  tmp_dir = g_dir_make_tmp ("pmx-smtp-tls-XXXXXX", &error);
  g_assert_no_error (error);
  make_certificates ();

  for (gsize i = 0; i < G_N_ELEMENTS (auth_cases); i++)
    {
      static const char *const sec[] = { "none", "starttls", "tls", "opportunistic" };
      static const char *const mech[] = { "none", "auto", "plain", "login", "cram-md5", "xoauth2", "oauthbearer" };
      g_autofree char *path = g_strdup_printf ("/smtp/deliver/%s/%s", sec[auth_cases[i].security],
                                               mech[auth_cases[i].auth]);

      g_test_add_data_func (path, &auth_cases[i], test_deliver);
    }
  g_test_add_func ("/smtp/auth/wrong-password", test_wrong_password);
  g_test_add_func ("/smtp/auth/plaintext-refused", test_plaintext_refused);
  g_test_add_func ("/smtp/auth/not-offered", test_mech_not_offered);
  g_test_add_func ("/smtp/starttls/required-not-offered", test_starttls_missing);
  g_test_add_func ("/smtp/tls/untrusted-ca", test_untrusted);
  g_test_add_func ("/smtp/rcpt/250-451-550", test_mixed_recipients);
  g_test_add_func ("/smtp/rcpt/none-accepted", test_none_accepted);
  g_test_add_func ("/smtp/transcript/only-when-asked", test_transcript_only_when_asked);
  g_test_add_func ("/smtp/pipelining", test_pipelining);
  g_test_add_func ("/smtp/data/dot-stuffing", test_dot_stuffing);
  g_test_add_func ("/smtp/data/long-line", test_long_line);
  g_test_add_func ("/smtp/size/refused", test_size);
  g_test_add_func ("/smtp/421", test_421);
  g_test_add_func ("/smtp/timeout/stall-after-rcpt", test_stall);
  g_test_add_func ("/smtp/reuse/rset", test_reuse);
  g_test_add_func ("/smtp/reuse/limit", test_reuse_limit);
  g_test_add_func ("/smtp/connect/refused", test_refused);
  g_test_add_func ("/smtp/probe/starttls", test_probe);
  g_test_add_func ("/smtp/sasl/encoders", test_encoders);
  g_test_add_func ("/smtp/smtputf8/parameter", test_utf8);

  rc = g_test_run ();
  cmd = g_strdup_printf ("rm -rf '%s'", tmp_dir);
  if (system (cmd) != 0)
    g_printerr ("cannot remove %s\n", tmp_dir);
  g_free (ca_file);
  g_free (peer_script);
  g_free (tmp_dir);
  return rc;
}

/* SPDX-License-Identifier: GPL-3.0-or-later */
/*
 * pmx-smtp.c - the smtp transport: relays through any SMTP server with a
 * password (or none), over STARTTLS, implicit TLS or, when told, plaintext.
 *
 * A thin layer over the SDK's SMTP client engine (postmux-smtp.h), which
 * follows RFC 5321, 3207, 8314, 4954, 1870, 2920, 6152, 6531 and 3463: this
 * file reads the options, keeps one engine per worker session, and turns
 * the engine's probe into `postmux doctor` findings with the likely cause
 * of an authentication failure.
 *
 * Trusts: the options, validated against the schema below; the password
 * is resolved once at create (env:/file: references) and wiped at destroy.
 * Fails: open_session errors carry a PMX_TRANSPORT_ERROR code — TEMPORARY
 * for DNS, network, TLS handshake, timeouts and 421; AUTH for refused
 * credentials; CONFIG for STARTTLS required but not offered, a mechanism
 * the server does not offer, and an untrusted certificate (the operator
 * must fix the trust store or the server, so retrying will not help).
 * Per-recipient outcomes come from the engine as data.
 */
#include <postmux/postmux.h>

/* The options; the integration tests and the presets code against these names. */
#define SMTP_SCHEMA "{ \
  \"$schema\": \"http://json-schema.org/draft-07/schema#\", \
  \"title\": \"smtp transport options\", \
  \"type\": \"object\", \
  \"additionalProperties\": false, \
  \"required\": [\"host\"], \
  \"properties\": { " PMX_SMTP_SCHEMA_CONNECTION_PROPERTIES ", \
    \"auth\": { \"enum\": [\"none\", \"plain\", \"login\", \"cram-md5\", \"auto\"], \
      \"description\": \"SASL mechanism; default auto (strongest offered) with a username, else none\" }, \
    \"username\": { \"type\": \"string\", \
      \"description\": \"the login name (usually the mailbox address); with none, no AUTH\" }, \
    \"password\": { \"type\": \"string\", \
      \"description\": \"the password, or env:NAME / file:/path\" }, \
    \"allow_plaintext_auth\": { \"type\": \"boolean\", \"default\": false, \
      \"description\": \"allow PLAIN and LOGIN on an unencrypted connection\" } \
  } \
}"

struct _PmxTransport {
  char          *name;
  GStringChunk  *strings;         /* the strings of config and hint */
  PmxSmtpConfig  config;          /* connection, auth, username and password */
  char          *password;        /* resolved; pmx_secret_free() */
  const char    *hint;
};

struct _PmxSession {
  PmxTransport  *transport;
  PmxSmtpClient *client;
};

/* smtp_destroy - free an instance, wiping the password */
static void
smtp_destroy (PmxTransport *self)
{
  g_free (self->name);
  pmx_secret_free (self->password);
  g_clear_pointer (&self->strings, g_string_chunk_free);
  g_free (self);
}

/* smtp_create - read and check the options, resolve the password */
static PmxTransport *
smtp_create (const PmxTransportArgs *args,
             GError                **error)
{
  static const char *const auths[] = { "none", "auto", "plain", "login", "cram-md5", NULL };
  static const PmxSmtpAuth auth_values[] = { PMX_SMTP_AUTH_NONE, PMX_SMTP_AUTH_AUTO, PMX_SMTP_AUTH_PLAIN,
                                             PMX_SMTP_AUTH_LOGIN, PMX_SMTP_AUTH_CRAM_MD5 };
  g_autoptr(GError) local_error = NULL;
  PmxTransport *self = g_new0 (PmxTransport, 1);
  JsonObject *o = args->options;
  const char *password = json_object_get_string_member_with_default (o, "password", NULL);
  const char *auth = json_object_get_string_member_with_default (o, "auth", NULL);

  self->name = g_strdup (args->instance_name);
  self->strings = g_string_chunk_new (256);
  self->hint = g_string_chunk_insert_const (self->strings, json_object_get_string_member_with_default (o, "hint", ""));
  self->hint = self->hint[0] != '\0' ? self->hint : NULL;
  if (json_object_has_member (o, "username"))
    self->config.username = g_string_chunk_insert_const (self->strings, json_object_get_string_member (o, "username"));

  if (!pmx_smtp_config_read (o, self->name, "the password", self->strings, &self->config, error))
    {
      smtp_destroy (self);
      return NULL;
    }
  if (auth == NULL)
    self->config.auth = self->config.username != NULL ? PMX_SMTP_AUTH_AUTO : PMX_SMTP_AUTH_NONE;
  else
    {
      int a = -1;

      for (int i = 0; auths[i] != NULL && a < 0; i++)
        if (g_str_equal (auth, auths[i]))
          a = i;
      if (a < 0)
        {
          g_set_error (error, PMX_TRANSPORT_ERROR, PMX_TRANSPORT_ERROR_CONFIG,
                       "transport '%s': option auth: \"%s\" is not supported — use none, plain, "
                       "login, cram-md5 or auto", self->name, auth);
          smtp_destroy (self);
          return NULL;
        }
      self->config.auth = auth_values[a];
    }
  if (self->config.auth != PMX_SMTP_AUTH_NONE && (self->config.username == NULL || password == NULL))
    {
      g_set_error (error, PMX_TRANSPORT_ERROR, PMX_TRANSPORT_ERROR_CONFIG,
                   "transport '%s': auth %s needs both username and password — set them "
                   "(password may be \"env:NAME\" or \"file:/path\"), or set auth to none",
                   self->name, auth != NULL ? auth : "auto");
      smtp_destroy (self);
      return NULL;
    }
  if (password != NULL && self->config.auth != PMX_SMTP_AUTH_NONE)
    {
      self->password = pmx_secret_resolve (password, &local_error);
      if (self->password == NULL)
        {
          g_set_error (error, PMX_TRANSPORT_ERROR, PMX_TRANSPORT_ERROR_CONFIG,
                       "transport '%s': option password: %s", self->name, local_error->message);
          smtp_destroy (self);
          return NULL;
        }
    }
  self->config.secret = self->password;
  return self;
}

/* smtp_client_new - an engine configured from the instance */
static PmxSmtpClient *
smtp_client_new (PmxTransport *self)
{
  return pmx_smtp_client_new (&self->config);
}

/* smtp_open_session - connect, TLS, EHLO, AUTH */
static PmxSession *
smtp_open_session (PmxTransport *self,
                   GError      **error)
{
  g_autoptr(PmxSmtpClient) client = smtp_client_new (self);
  g_autoptr(GError) local_error = NULL;
  PmxSession *session;

  if (!pmx_smtp_client_connect (client, &local_error))
    {
      gboolean auth = g_error_matches (local_error, PMX_SMTP_ERROR, PMX_SMTP_ERROR_AUTH_FAILED);

      g_set_error (error, PMX_TRANSPORT_ERROR, pmx_smtp_error_get_transport_code (local_error),
                   "transport '%s': %s%s%s", self->name, local_error->message,
                   auth && self->hint != NULL ? " — " : "", auth && self->hint != NULL ? self->hint : "");
      return NULL;
    }
  session = g_new0 (PmxSession, 1);
  session->transport = self;
  session->client = g_steal_pointer (&client);
  return session;
}

/* smtp_close_session - QUIT and free */
static void
smtp_close_session (PmxSession *session)
{
  pmx_smtp_client_free (session->client);
  g_free (session);
}

/* smtp_send - one message through the session's connection */
static void
smtp_send (PmxSession        *session,
           const PmxEnvelope *envelope,
           const guint8      *message,
           gsize              message_len,
           PmxResult         *result)
{
  pmx_smtp_client_send (session->client, envelope, message, message_len, result);
}

/* smtp_auth_cause - the likely cause of an AUTH refusal, or NULL */
static const char *
smtp_auth_cause (guint       code,
                 const char *enhanced)
{
  if (g_strcmp0 (enhanced, "5.7.139") == 0)
    return "basic authentication is disabled for this tenant: switch to the oauth2-smtp or graph transport";
  if (g_strcmp0 (enhanced, "5.7.9") == 0 || code == 534)
    return "this account needs an app password";
  if (code == 535 && (enhanced == NULL || g_strcmp0 (enhanced, "5.7.8") == 0))
    return "username or password rejected";
  if (code == 530)
    return "the server wants authentication first (or TLS): check security and username";
  if (code == 454 || code / 100 == 4)
    return "a temporary failure at the server: try again later";
  return NULL;
}

/* smtp_check - `postmux doctor`: dns, connect, tls, ehlo, auth, verdict */
static gboolean
smtp_check (PmxTransport *self,
            PmxReport    *report)
{
  g_autoptr(PmxSmtpClient) client = smtp_client_new (self);
  g_autoptr(PmxSmtpProbe) p = pmx_smtp_client_probe (client);

  if (!pmx_smtp_probe_report_connection (p, self->config.host, self->config.security, self->config.tls_verify,
                                         "password", report))
    goto verdict;

  /* auth */
  if (self->config.auth == PMX_SMTP_AUTH_NONE)
    pmx_report_add (report, PMX_CHECK_OK, "auth", "no authentication configured");
  else
    pmx_smtp_probe_report_auth (p, self->config.username, smtp_auth_cause (p->auth_code, p->auth_enhanced),
                                self->hint, report);

verdict:
  return pmx_smtp_probe_report_verdict (p, self->config.host, self->config.port, report);
}

static const PmxTransportOps smtp_ops = {
  .create = smtp_create,
  .destroy = smtp_destroy,
  .open_session = smtp_open_session,
  .send = smtp_send,
  .close_session = smtp_close_session,
  .check = smtp_check,
};

PMX_TRANSPORT_DEFINE (smtp, "smtp", "0.1.0", "GPL-3.0-or-later",
                      "relays through an SMTP server (STARTTLS or TLS; PLAIN, LOGIN, CRAM-MD5)",
                      SMTP_SCHEMA, &smtp_ops)

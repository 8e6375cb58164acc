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

#define SMTP_DURATION "{ \"oneOf\": [ { \"type\": \"integer\", \"minimum\": 1 }, \
      { \"type\": \"string\", \"pattern\": \"^[0-9]+(ms|s|m|h)$\" } ] }"

/* The options; the integration tests and the presets code against these names. */
#define SMTP_SCHEMA "{ \
  \"$schema\": \"http://json-schema.org/draft-07/schema#\", \
  \"title\": \"smtp transport options\", \
  \"type\": \"object\", \
  \"additionalProperties\": false, \
  \"required\": [\"host\"], \
  \"properties\": { \
    \"host\": { \"type\": \"string\", \"minLength\": 1, \
      \"description\": \"the SMTP server (also the name its certificate must carry)\" }, \
    \"port\": { \"type\": \"integer\", \"minimum\": 1, \"maximum\": 65535, \
      \"description\": \"default by security: none 25, starttls 587, tls 465, opportunistic 25\" }, \
    \"security\": { \"enum\": [\"none\", \"starttls\", \"tls\", \"opportunistic\"], \"default\": \"starttls\", \
      \"description\": \"starttls requires STARTTLS; tls is implicit TLS (port 465); opportunistic uses STARTTLS when offered\" }, \
    \"auth\": { \"enum\": [\"none\", \"plain\", \"login\", \"cram-md5\", \"auto\"], \
      \"description\": \"SASL mechanism; default auto (strongest offered) with a username, else none\" }, \
    \"username\": { \"type\": \"string\", \
      \"description\": \"the login name (usually the mailbox address); with none, no AUTH\" }, \
    \"password\": { \"type\": \"string\", \
      \"description\": \"the password, or env:NAME / file:/path\" }, \
    \"allow_plaintext_auth\": { \"type\": \"boolean\", \"default\": false, \
      \"description\": \"allow PLAIN and LOGIN on an unencrypted connection\" }, \
    \"helo_name\": { \"type\": \"string\", \"minLength\": 1, \
      \"description\": \"the EHLO name; default this machine's host name\" }, \
    \"tls_verify\": { \"type\": \"boolean\", \"default\": true, \
      \"description\": \"verify the server certificate and name; false only for testing\" }, \
    \"ca_file\": { \"type\": \"string\", \"minLength\": 1, \
      \"description\": \"PEM file of CAs trusted in addition to the system store\" }, \
    \"tls_min_version\": { \"enum\": [\"1.2\", \"1.3\"], \"default\": \"1.2\", \
      \"description\": \"lowest TLS version accepted from the server\" }, \
    \"timeouts\": { \"type\": \"object\", \"additionalProperties\": false, \
      \"properties\": { \
        \"connect\": " SMTP_DURATION ", \
        \"command\": " SMTP_DURATION ", \
        \"data\": " SMTP_DURATION " \
      }, \
      \"description\": \"seconds, or 500ms/30s/5m/1h; defaults connect 30s, command 5m, data 10m\" }, \
    \"default_from\": { \"type\": \"string\", \
      \"description\": \"sender used by postmux send --test\" }, \
    \"max_messages_per_connection\": { \"type\": \"integer\", \"minimum\": 1, \"default\": 1000, \
      \"description\": \"reconnect after this many messages on one connection\" }, \
    \"hint\": { \"type\": \"string\", \
      \"description\": \"shown by postmux doctor when authentication fails (presets fill it)\" } \
  } \
}"

struct _PmxTransport {
  char           *name;
  char           *host;
  guint16         port;
  PmxSmtpSecurity security;
  PmxSmtpAuth     auth;
  char           *username;
  char           *password;       /* resolved; pmx_secret_free() */
  gboolean        allow_plaintext_auth;
  char           *helo_name;
  gboolean        tls_verify;
  char           *ca_file;
  PmxSmtpTlsVersion tls_min_version;
  guint           connect_ms, command_ms, data_ms;
  guint           max_messages;
  char           *hint;
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
  g_free (self->host);
  g_free (self->username);
  pmx_secret_free (self->password);
  g_free (self->helo_name);
  g_free (self->ca_file);
  g_free (self->hint);
  g_free (self);
}

/* smtp_enum - index of @value in @names, or -1 */
static int
smtp_enum (const char        *value,
           const char *const *names)
{
  for (int i = 0; names[i] != NULL; i++)
    if (g_strcmp0 (value, names[i]) == 0)
      return i;
  return -1;
}

/* smtp_create - read and check the options, resolve the password */
static PmxTransport *
smtp_create (const PmxTransportArgs *args,
             GError                **error)
{
  static const char *const securities[] = { "none", "starttls", "tls", "opportunistic", NULL };
  static const guint16 default_ports[] = { 25, 587, 465, 25 };
  static const char *const auths[] = { "none", "auto", "plain", "login", "cram-md5", NULL };
  JsonObject *o = args->options;
  JsonObject *timeouts = json_object_has_member (o, "timeouts")
                           ? json_object_get_object_member (o, "timeouts") : NULL;
  const char *password = json_object_get_string_member_with_default (o, "password", NULL);
  const char *auth = json_object_get_string_member_with_default (o, "auth", NULL);
  g_autoptr(GError) local_error = NULL;
  PmxTransport *self = g_new0 (PmxTransport, 1);
  int security;

  self->name = g_strdup (args->instance_name);
  self->host = g_strdup (json_object_get_string_member_with_default (o, "host", NULL));
  security = smtp_enum (json_object_get_string_member_with_default (o, "security", "starttls"), securities);
  self->security = security < 0 ? PMX_SMTP_SECURITY_STARTTLS : (PmxSmtpSecurity) security;
  self->port = (guint16) json_object_get_int_member_with_default (o, "port", default_ports[self->security]);
  self->username = g_strdup (json_object_get_string_member_with_default (o, "username", NULL));
  self->allow_plaintext_auth = json_object_get_boolean_member_with_default (o, "allow_plaintext_auth", FALSE);
  self->helo_name = g_strdup (json_object_get_string_member_with_default (o, "helo_name", g_get_host_name ()));
  self->tls_verify = json_object_get_boolean_member_with_default (o, "tls_verify", TRUE);
  self->ca_file = g_strdup (json_object_get_string_member_with_default (o, "ca_file", NULL));
  self->tls_min_version = g_strcmp0 (json_object_get_string_member_with_default (o, "tls_min_version", "1.2"), "1.3") == 0
                            ? PMX_SMTP_TLS_1_3 : PMX_SMTP_TLS_1_2;
  self->max_messages = (guint) CLAMP (json_object_get_int_member_with_default (o, "max_messages_per_connection", 1000),
                                      1, G_MAXUINT);
  self->hint = g_strdup (json_object_get_string_member_with_default (o, "hint", NULL));

  if (self->host == NULL || self->host[0] == '\0' || security < 0)
    {
      g_set_error (error, PMX_TRANSPORT_ERROR, PMX_TRANSPORT_ERROR_CONFIG,
                   "transport '%s': option host is required (the SMTP server's name) and security "
                   "must be none, starttls, tls or opportunistic", self->name);
      smtp_destroy (self);
      return NULL;
    }
  if (auth == NULL)
    self->auth = self->username != NULL ? PMX_SMTP_AUTH_AUTO : PMX_SMTP_AUTH_NONE;
  else
    {
      static const PmxSmtpAuth auth_values[] = { PMX_SMTP_AUTH_NONE, PMX_SMTP_AUTH_AUTO, PMX_SMTP_AUTH_PLAIN,
                                                 PMX_SMTP_AUTH_LOGIN, PMX_SMTP_AUTH_CRAM_MD5 };
      int a = smtp_enum (auth, auths);

      if (a < 0)
        {
          g_set_error (error, PMX_TRANSPORT_ERROR, PMX_TRANSPORT_ERROR_CONFIG,
                       "transport '%s': option auth: \"%s\" is not supported — use none, plain, "
                       "login, cram-md5 or auto", self->name, auth);
          smtp_destroy (self);
          return NULL;
        }
      self->auth = auth_values[a];
    }
  if (self->auth != PMX_SMTP_AUTH_NONE && (self->username == NULL || password == NULL))
    {
      g_set_error (error, PMX_TRANSPORT_ERROR, PMX_TRANSPORT_ERROR_CONFIG,
                   "transport '%s': auth %s needs both username and password — set them "
                   "(password may be \"env:NAME\" or \"file:/path\"), or set auth to none",
                   self->name, auth != NULL ? auth : "auto");
      smtp_destroy (self);
      return NULL;
    }
  if (!pmx_smtp_parse_timeout_ms (timeouts, "connect", 30000, &self->connect_ms)
      || !pmx_smtp_parse_timeout_ms (timeouts, "command", 300000, &self->command_ms)
      || !pmx_smtp_parse_timeout_ms (timeouts, "data", 600000, &self->data_ms))
    {
      g_set_error (error, PMX_TRANSPORT_ERROR, PMX_TRANSPORT_ERROR_CONFIG,
                   "transport '%s': option timeouts: each of connect, command and data is a "
                   "number of seconds or a duration such as \"30s\" or \"5m\"", self->name);
      smtp_destroy (self);
      return NULL;
    }
  if (password != NULL && self->auth != PMX_SMTP_AUTH_NONE)
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

  if (!self->tls_verify && self->security != PMX_SMTP_SECURITY_NONE)
    g_warning ("transport '%s': tls_verify is false: the certificate of %s is not checked, so "
               "anyone on the path can read the mail and the password — give the CA in ca_file instead",
               self->name, self->host);
  if (self->security == PMX_SMTP_SECURITY_OPPORTUNISTIC)
    g_warning ("transport '%s': security is opportunistic: mail to %s goes in plaintext when "
               "the server does not offer STARTTLS", self->name, self->host);
  return self;
}

/* smtp_client_new - an engine configured from the instance */
static PmxSmtpClient *
smtp_client_new (PmxTransport *self)
{
  PmxSmtpConfig config = {
    .host = self->host,
    .port = self->port,
    .security = self->security,
    .helo_name = self->helo_name,
    .tls_verify = self->tls_verify,
    .ca_file = self->ca_file,
    .tls_min_version = self->tls_min_version,
    .connect_timeout_ms = self->connect_ms,
    .command_timeout_ms = self->command_ms,
    .data_timeout_ms = self->data_ms,
    .auth = self->auth,
    .username = self->username,
    .secret = self->password,
    .allow_plaintext_auth = self->allow_plaintext_auth,
    .max_messages_per_connection = self->max_messages,
  };

  return pmx_smtp_client_new (&config);
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

  if (!pmx_smtp_probe_report_connection (p, self->host, self->security, self->tls_verify,
                                         "password", report))
    goto verdict;

  /* auth */
  if (self->auth == PMX_SMTP_AUTH_NONE)
    pmx_report_add (report, PMX_CHECK_OK, "auth", "no authentication configured");
  else
    pmx_smtp_probe_report_auth (p, self->username, smtp_auth_cause (p->auth_code, p->auth_enhanced),
                                self->hint, report);

verdict:
  return pmx_smtp_probe_report_verdict (p, self->host, self->port, report);
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

/* SPDX-License-Identifier: GPL-3.0-or-later */
/*
 * pmx-oauth2-smtp.c - the oauth2-smtp transport: relays through Microsoft
 * 365, Gmail or any SMTP server that takes an OAuth2 bearer token, with
 * SASL XOAUTH2 or OAUTHBEARER (RFC 7628).
 *
 * A thin layer over two SDK pieces: the SMTP client engine
 * (postmux-smtp.h; RFC 5321, 3207, 8314, 4954, 7628) and the token source
 * (postmux-oauth2.h), which caches, refreshes, stores (state_dir/tokens,
 * mode 0600) and single-flights the access tokens of the "credential"
 * option.
 *
 * Token lifetime: a server checks the token at AUTH time only, so an open
 * session keeps working after its token expires.  Before each send the
 * session asks the source for the current token and hands a new one to the
 * engine, which uses it at the next AUTH (a reconnect).  An AUTH refusal
 * invalidates the token at the source, fetches a fresh one and retries the
 * connection once before reporting AUTH.
 *
 * Trusts: the options, validated against the schema below; the credential
 * is checked (and its secrets resolved) by pmx_token_source_new() at create.
 * Fails: open_session errors carry a PMX_TRANSPORT_ERROR code — TEMPORARY
 * for an unreachable token endpoint and for network, TLS and timeouts; AUTH
 * for a refused token or a credential that needs a login; CONFIG for a
 * credential the provider refuses (the message has the provider's code and
 * the fix).  Never logs a token or puts one in an error or a transcript.
 */
#include <postmux/postmux.h>

#include <string.h>

/* The options; the integration tests and the presets code against these names. */
#define O2_SCHEMA "{ \
  \"$schema\": \"http://json-schema.org/draft-07/schema#\", \
  \"title\": \"oauth2-smtp transport options\", \
  \"type\": \"object\", \
  \"additionalProperties\": false, \
  \"required\": [\"host\", \"username\", \"credential\"], \
  \"properties\": { " PMX_SMTP_SCHEMA_CONNECTION_PROPERTIES ", \
    \"mechanism\": { \"enum\": [\"xoauth2\", \"oauthbearer\"], \"default\": \"xoauth2\", \
      \"description\": \"SASL mechanism carrying the access token\" }, \
    \"username\": { \"type\": \"string\", \"minLength\": 1, \
      \"description\": \"the mailbox the token is for\" }, \
    \"credential\": { \"type\": \"object\", \
      \"description\": \"the OAuth2 credential: kind (microsoft, google, generic), tenant, client_id, client_secret, token_endpoint, scopes...\" }, \
    \"allow_plaintext_auth\": { \"type\": \"boolean\", \"default\": false, \
      \"description\": \"allow the token on an unencrypted connection (testing only)\" } \
  } \
}"

struct _PmxTransport {
  char              *name;
  GStringChunk      *strings;         /* the strings of config and hint */
  PmxSmtpConfig      config;          /* connection, mechanism and username; no token */
  const char        *hint;
  PmxTokenSource    *tokens;          /* thread-safe; shared by every session */
};

struct _PmxSession {
  PmxTransport  *transport;
  PmxSmtpClient *client;
  char          *token;               /* the one the engine holds; pmx_secret_free() */
  guint          sent;                /* messages on the current connection */
};

/* o2_destroy - free an instance and its token source */
static void
o2_destroy (PmxTransport *self)
{
  g_free (self->name);
  g_clear_pointer (&self->strings, g_string_chunk_free);
  g_clear_pointer (&self->tokens, pmx_token_source_unref);
  g_free (self);
}

/* o2_credential_options - a copy of @credential with the name and the
 * default SMTP scopes of its kind filled in when missing */
static JsonObject *
o2_credential_options (JsonObject *credential,
                       const char *instance_name)
{
  JsonObject *o = pmx_oauth2_credential_copy (credential, instance_name);
  const char *kind;
  gboolean delegated;

  if (json_object_has_member (o, "scopes"))
    return o;

  kind = json_object_get_string_member_with_default (o, "kind", NULL);
  delegated = json_object_has_member (o, "refresh_token")
              || g_strcmp0 (json_object_get_string_member_with_default (o, "grant", NULL), "refresh_token") == 0;
  if (g_strcmp0 (kind, "microsoft") == 0)
    json_object_set_string_member (o, "scopes", delegated ? "https://outlook.office.com/SMTP.Send offline_access"
                                                          : "https://outlook.office365.com/.default");
  else if (g_strcmp0 (kind, "google") == 0)
    json_object_set_string_member (o, "scopes", "https://mail.google.com/");
  return o;
}

/* o2_create - read and check the options, build the token source (no network) */
static PmxTransport *
o2_create (const PmxTransportArgs *args,
           GError                **error)
{
  JsonObject *o = args->options;
  JsonObject *credential = json_object_has_member (o, "credential")
                             ? json_object_get_object_member (o, "credential") : NULL;
  const char *mechanism = json_object_get_string_member_with_default (o, "mechanism", "xoauth2");
  g_autoptr(JsonObject) cred_options = NULL;
  g_autoptr(GError) local_error = NULL;
  g_autofree char *store_dir = NULL;
  PmxTransport *self = g_new0 (PmxTransport, 1);

  self->name = g_strdup (args->instance_name);
  self->strings = g_string_chunk_new (256);
  self->hint = g_string_chunk_insert_const (self->strings, json_object_get_string_member_with_default (o, "hint", ""));
  self->hint = self->hint[0] != '\0' ? self->hint : NULL;
  self->config.username = g_string_chunk_insert_const (self->strings,
                                                       json_object_get_string_member_with_default (o, "username", ""));
  if (!pmx_smtp_config_read (o, self->name, "the access token", self->strings, &self->config, error))
    {
      o2_destroy (self);
      return NULL;
    }
  if (g_str_equal (mechanism, "xoauth2") || g_str_equal (mechanism, "oauthbearer"))
    self->config.auth = g_str_equal (mechanism, "xoauth2") ? PMX_SMTP_AUTH_XOAUTH2 : PMX_SMTP_AUTH_OAUTHBEARER;
  else
    {
      g_set_error (error, PMX_TRANSPORT_ERROR, PMX_TRANSPORT_ERROR_CONFIG,
                   "transport '%s': option mechanism: \"%s\" is not supported — use xoauth2 or oauthbearer",
                   self->name, mechanism);
      o2_destroy (self);
      return NULL;
    }
  if (self->config.username[0] == '\0' || credential == NULL)
    {
      g_set_error (error, PMX_TRANSPORT_ERROR, PMX_TRANSPORT_ERROR_CONFIG,
                   "transport '%s': options username (the mailbox) and credential (the OAuth2 "
                   "client: kind, tenant, client_id, client_secret...) are required", self->name);
      o2_destroy (self);
      return NULL;
    }

  cred_options = o2_credential_options (credential, self->name);
  store_dir = args->state_dir != NULL ? g_build_filename (args->state_dir, "tokens", NULL) : NULL;
  self->tokens = pmx_token_source_new (cred_options, store_dir, &local_error);
  if (self->tokens == NULL)
    {
      g_set_error (error, PMX_TRANSPORT_ERROR, PMX_TRANSPORT_ERROR_CONFIG,
                   "transport '%s': option credential: %s", self->name, local_error->message);
      o2_destroy (self);
      return NULL;
    }

  return self;
}

/* o2_client_new - an engine configured from the instance, holding @token */
static PmxSmtpClient *
o2_client_new (PmxTransport *self,
               const char   *token)
{
  PmxSmtpConfig config = self->config;

  config.secret = token;
  return pmx_smtp_client_new (&config);
}

/* o2_token_code - the PMX_TRANSPORT_ERROR code for a token source error */
static PmxTransportErrorCode
o2_token_code (const GError *error)
{
  switch (pmx_oauth2_error_get_failure (error))
    {
    case PMX_FAILURE_CONFIG:
      return PMX_TRANSPORT_ERROR_CONFIG;
    case PMX_FAILURE_AUTH:
      return PMX_TRANSPORT_ERROR_AUTH;
    default:
      return PMX_TRANSPORT_ERROR_TEMPORARY;
    }
}

/* o2_get_token - a token, or an error in PMX_TRANSPORT_ERROR naming the transport */
static char *
o2_get_token (PmxTransport *self,
              GError      **error)
{
  g_autoptr(GError) local_error = NULL;
  char *token = pmx_token_source_get_token (self->tokens, FALSE, NULL, &local_error);

  if (token != NULL)
    return token;
  /* The SDK's message names the fix (`postmux auth login NAME` included). */
  g_set_error (error, PMX_TRANSPORT_ERROR, o2_token_code (local_error),
               "transport '%s': %s", self->name, local_error->message);
  return NULL;
}

/* o2_connect - connect @client (TLS, EHLO, AUTH) with the token in
 * *@token; on a refused token invalidate it, take a fresh one and retry
 * once.  *@token is replaced by the token the connection used. */
static gboolean
o2_connect (PmxTransport  *self,
            PmxSmtpClient *client,
            char         **token,
            GError       **error)
{
  g_autoptr(GError) local_error = NULL;

  if (!pmx_smtp_client_connect (client, &local_error)
      && g_error_matches (local_error, PMX_SMTP_ERROR, PMX_SMTP_ERROR_AUTH_FAILED))
    {
      /* Revoked or expired early at the provider: invalidate only this token
       * (another thread may already hold a fresh one) and try once more. */
      g_debug ("transport '%s': the server refused the access token; refreshing once", self->name);
      pmx_token_source_invalidate (self->tokens, *token);
      g_clear_pointer (token, pmx_secret_free);
      *token = o2_get_token (self, error);
      if (*token == NULL)
        return FALSE;
      g_clear_error (&local_error);
      pmx_smtp_client_set_secret (client, *token);
      pmx_smtp_client_connect (client, &local_error);
    }
  if (local_error != NULL)
    {
      gboolean auth = g_error_matches (local_error, PMX_SMTP_ERROR, PMX_SMTP_ERROR_AUTH_FAILED);

      g_set_error (error, PMX_TRANSPORT_ERROR, pmx_smtp_error_get_transport_code (local_error),
                   "transport '%s': %s%s%s%s", self->name, local_error->message,
                   auth ? " — the access token was refused after a refresh: check the app's "
                          "permission to send as this mailbox" : "",
                   auth && self->hint != NULL ? " — hint: " : "",
                   auth && self->hint != NULL ? self->hint : "");
      return FALSE;
    }
  return TRUE;
}

/* o2_open_session - get a token; connect, TLS, EHLO, AUTH (see o2_connect) */
static PmxSession *
o2_open_session (PmxTransport *self,
                 GError      **error)
{
  g_autoptr(PmxSmtpClient) client = NULL;
  char *token = o2_get_token (self, error);
  PmxSession *session;

  if (token == NULL)
    return NULL;
  client = o2_client_new (self, token);
  if (!o2_connect (self, client, &token, error))
    {
      pmx_secret_free (token);
      return NULL;
    }
  session = g_new0 (PmxSession, 1);
  session->transport = self;
  session->client = g_steal_pointer (&client);
  session->token = token;
  return session;
}

/* o2_close_session - QUIT, wipe the token and free */
static void
o2_close_session (PmxSession *session)
{
  pmx_smtp_client_free (session->client);
  pmx_secret_free (session->token);
  g_free (session);
}

/* o2_send - one message; hands a refreshed token to the engine first */
static void
o2_send (PmxSession        *session,
         const PmxEnvelope *envelope,
         const guint8      *message,
         gsize              message_len,
         PmxResult         *result)
{
  PmxTransport *self = session->transport;
  g_autoptr(GError) error = NULL;
  char *token = pmx_token_source_get_token (self->tokens, FALSE, NULL, &error);

  if (token == NULL)
    {
      /* The connection is already authenticated and stays usable; a new
       * one would need a token we do not have. */
      if (!pmx_smtp_client_is_connected (session->client))
        {
          pmx_result_fail (result, pmx_oauth2_error_get_failure (error), 0, NULL, "transport '%s': %s", self->name,
                           error->message);
          return;
        }
    }
  else if (strcmp (token, session->token) != 0)
    {
      /* Servers check the token at AUTH only: the open connection goes on,
       * the next AUTH (after a reconnect) uses the new token. */
      pmx_smtp_client_set_secret (session->client, token);
      pmx_secret_free (session->token);
      session->token = g_steal_pointer (&token);
    }
  pmx_secret_free (token);

  /* A new connection is made here rather than inside the engine, so that a
   * token the server refuses at AUTH is refreshed once, as at open. */
  if (self->config.max_messages_per_connection > 0 && session->sent >= self->config.max_messages_per_connection)
    pmx_smtp_client_disconnect (session->client);
  if (!pmx_smtp_client_is_connected (session->client))
    {
      g_autoptr(GError) connect_error = NULL;

      session->sent = 0;
      if (!o2_connect (self, session->client, &session->token, &connect_error))
        {
          static const PmxFailureClass classes[] = {
            [PMX_TRANSPORT_ERROR_TEMPORARY] = PMX_FAILURE_TEMPORARY,
            [PMX_TRANSPORT_ERROR_PERMANENT] = PMX_FAILURE_PERMANENT,
            [PMX_TRANSPORT_ERROR_AUTH] = PMX_FAILURE_AUTH,
            [PMX_TRANSPORT_ERROR_CONFIG] = PMX_FAILURE_CONFIG,
            [PMX_TRANSPORT_ERROR_FAILED] = PMX_FAILURE_TEMPORARY,
          };
          int code = connect_error->domain == PMX_TRANSPORT_ERROR ? connect_error->code : PMX_TRANSPORT_ERROR_FAILED;

          if (session->token == NULL)
            session->token = g_strdup ("");
          pmx_result_fail (result, classes[CLAMP (code, 0, PMX_TRANSPORT_ERROR_FAILED)], 0, NULL, "%s",
                           connect_error->message);
          pmx_result_set_session_broken (result);
          return;
        }
    }
  session->sent++;
  pmx_smtp_client_send (session->client, envelope, message, message_len, result);
}

/* o2_auth_cause - the likely cause of a refused token, or NULL */
static const char *
o2_auth_cause (guint       code,
               const char *enhanced)
{
  if (g_strcmp0 (enhanced, "5.7.139") == 0)
    return "SMTP AUTH is disabled for this mailbox or tenant: have an admin enable authenticated SMTP for it";
  if (code == 535 || code == 534)
    return "the server refused the access token: check that the app may send as this mailbox "
           "(Microsoft: SMTP.SendAsApp and an Exchange service principal with mailbox permission; "
           "Google: domain-wide delegation of https://mail.google.com/) and that username is that mailbox";
  if (code == 530)
    return "the server wants authentication first (or TLS): check security and username";
  if (code == 454 || code / 100 == 4)
    return "a temporary failure at the server: try again later";
  return NULL;
}

/* o2_check_token - `postmux doctor`'s token step: expiry and scopes, never
 * the token.  Returns: (transfer full) the token, or NULL after a FAIL line. */
static char *
o2_check_token (PmxTransport *self,
                PmxReport    *report)
{
  g_auto(PmxTokenStatus) status = { 0 };
  g_autoptr(GError) error = NULL;
  g_autofree char *expires = NULL;
  char *token = o2_get_token (self, &error);

  pmx_token_source_get_status (self->tokens, &status);
  if (token == NULL)
    {
      pmx_report_add (report, PMX_CHECK_FAIL, "token", "from %s: %s",
                      pmx_token_source_get_token_endpoint (self->tokens), error->message);
      return NULL;
    }
  if (status.expires_at > 0)
    {
      g_autoptr(GDateTime) t = g_date_time_new_from_unix_utc (status.expires_at);

      expires = t != NULL ? g_date_time_format_iso8601 (t) : NULL;
    }
  pmx_report_add (report, PMX_CHECK_OK, "token",
                  "%s grant from %s (client %s): access token valid until %s; scopes: %s",
                  status.grant != NULL ? status.grant : "-", pmx_token_source_get_token_endpoint (self->tokens),
                  pmx_token_source_get_client_id (self->tokens), expires != NULL ? expires : "-",
                  status.scopes != NULL && status.scopes[0] != '\0' ? status.scopes : "-");
  return token;
}

/* o2_check - `postmux doctor`: token, dns, connect, tls, ehlo, auth, verdict */
static gboolean
o2_check (PmxTransport *self,
          PmxReport    *report)
{
  g_autoptr(PmxSmtpClient) client = NULL;
  g_autoptr(PmxSmtpProbe) p = NULL;
  char *token = o2_check_token (self, report);

  if (token == NULL)
    {
      pmx_report_add (report, PMX_CHECK_FAIL, "verdict",
                      "cannot send through %s port %u: no access token", self->config.host, self->config.port);
      return FALSE;
    }
  client = o2_client_new (self, token);
  pmx_secret_free (token);
  p = pmx_smtp_client_probe (client);

  if (!pmx_smtp_probe_report_connection (p, self->config.host, self->config.security, self->config.tls_verify,
                                         "access token", report))
    goto verdict;

  /* auth */
  pmx_smtp_probe_report_auth (p, self->config.username, o2_auth_cause (p->auth_code, p->auth_enhanced),
                              self->hint, report);

verdict:
  return pmx_smtp_probe_report_verdict (p, self->config.host, self->config.port, report);
}

static const PmxTransportOps o2_ops = {
  .create = o2_create,
  .destroy = o2_destroy,
  .open_session = o2_open_session,
  .send = o2_send,
  .close_session = o2_close_session,
  .check = o2_check,
};

PMX_TRANSPORT_DEFINE (oauth2_smtp, "oauth2-smtp", "0.1.0", "GPL-3.0-or-later",
                      "relays through Microsoft 365, Gmail or any SMTP server with an OAuth2 "
                      "access token (XOAUTH2, OAUTHBEARER)",
                      O2_SCHEMA, &o2_ops)

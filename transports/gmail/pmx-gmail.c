/* SPDX-License-Identifier: GPL-3.0-or-later */
/*
 * pmx-gmail.c - the gmail transport: sends through the Gmail API
 * (users.messages.send) with an OAuth2 access token from the SDK token
 * service: a Google service account with domain-wide delegation (a JWT
 * bearer grant for the "subject"), or an installed app's refresh token.
 *
 * Wire (providers.md §4): a message up to 5 MiB goes as JSON
 * {"raw": base64url} to {api_url}/gmail/v1/users/{user}/messages/send; a
 * larger one as a simple media upload (Content-Type message/rfc822, the
 * bytes as they are) to {api_url}/upload/gmail/v1/users/{user}/messages/
 * send?uploadType=media, up to Gmail's 36700160 bytes (35 MB); anything
 * larger is bounced with its size in the reason.
 *
 * Envelope: Gmail has no envelope.  It delivers to the addresses in To, Cc
 * and Bcc and strips Bcc.  So that it delivers to exactly this attempt's
 * envelope recipients, a copy of the header block is rewritten: every Bcc
 * field is dropped and one Bcc field naming the envelope recipients that
 * To and Cc do not name is added (invisible to recipients, since Gmail
 * strips Bcc).  A To or Cc address that is not an envelope recipient of
 * this attempt (delivered or bounced earlier, routed elsewhere, a list
 * address) cannot stay visible without Gmail delivering to it, and taking
 * it out changes what the recipients see; so by default the attempt is
 * bounced with the addresses and the fix in the reason, and with
 * unlisted_recipients "remove" those addresses are taken out of To/Cc.
 * Every other header byte and the body are sent unchanged.
 *
 * Outcomes: 200 delivers every recipient (the Gmail message id is the
 * remote id); 401 invalidates the token, fetches a fresh one and retries
 * once; 429, rateLimitExceeded, userRateLimitExceeded and 5xx defer and
 * pause the instance (Retry-After when given, else exponential back-off
 * shared by the instance's sessions); a daily sending limit pauses for
 * daily_limit_pause (or until the "Retry after" time Gmail names); 400 and
 * other 4xx bounce; 403 domainPolicy and insufficient scope defer as a
 * CONFIG failure naming the fix (scope, domain-wide delegation).
 *
 * Trusts: the options, validated against the schema below; the credential
 * is checked (and its secrets resolved) by pmx_token_source_new() at create.
 * Never logs a token or puts one in a result or an error.
 */
#include <postmux/postmux.h>

#include "pmx-gmail-envelope.h"

#include <gmime/gmime.h>
#include <string.h>

#define GMAIL_RAW_MAX     (5 * 1024 * 1024)   /* larger: media upload */
#define GMAIL_UPLOAD_MAX  36700160            /* Gmail's mediaUpload maxSize, 35 MB */
#define GMAIL_SEND_SCOPE  "https://www.googleapis.com/auth/gmail.send"

/* A duration: seconds, or a number with a unit; @what and @dflt describe it. */
#define GMAIL_DURATION(what, dflt) "{ \"oneOf\": [ { \"type\": \"integer\", \"minimum\": 1 }, \
      { \"type\": \"string\", \"pattern\": \"^[0-9]+(ms|s|m|h)$\" } ], \"default\": \"" dflt "\", \
      \"description\": \"" what " (seconds, or a duration such as 30s, 5m, 1h)\" }"

#define GMAIL_SCHEMA "{ \
  \"$schema\": \"http://json-schema.org/draft-07/schema#\", \
  \"title\": \"gmail transport options\", \
  \"type\": \"object\", \
  \"additionalProperties\": false, \
  \"required\": [\"credential\"], \
  \"properties\": { \
    \"credential\": { \"type\": \"object\", \
      \"description\": \"the OAuth2 credential, kind google: service_account_file (the JSON key) and subject (the Workspace user to act for; default user), or client_id, client_secret and refresh_token (installed app); scopes default to scope\" }, \
    \"user\": { \"type\": \"string\", \"minLength\": 1, \"default\": \"me\", \
      \"description\": \"the sending mailbox: an address, me (the token's user), or from_envelope (the envelope sender, one token per sender; needs allowed_users)\" }, \
    \"allowed_users\": { \"type\": \"array\", \"minItems\": 1, \"items\": { \"type\": \"string\", \"minLength\": 2 }, \
      \"description\": \"required with user from_envelope: the senders that may send, as addresses or @domain; others bounce\" }, \
    \"scope\": { \"type\": \"string\", \"minLength\": 1, \"default\": \"" GMAIL_SEND_SCOPE "\", \
      \"description\": \"the OAuth2 scope asked for when the credential has no scopes\" }, \
    \"api_url\": { \"type\": \"string\", \"minLength\": 1, \"default\": \"https://gmail.googleapis.com\", \
      \"description\": \"the Gmail API base URL; http:// only on loopback (tests)\" }, \
    \"ca_file\": { \"type\": \"string\", \"minLength\": 1, \
      \"description\": \"PEM file of CAs trusted in addition to the system store\" }, \
    \"timeout\": " GMAIL_DURATION ("a whole request, upload included", "5m") ", \
    \"backoff_initial\": " GMAIL_DURATION ("the pause after a rate-limit answer without Retry-After; doubled at each one in a row, reset by a success", "30s") ", \
    \"backoff_max\": " GMAIL_DURATION ("the longest back-off pause", "1h") ", \
    \"daily_limit_pause\": " GMAIL_DURATION ("the pause after Gmail's daily sending limit, unless Gmail names a time", "1h") ", \
    \"unlisted_recipients\": { \"enum\": [\"refuse\", \"remove\"], \"default\": \"refuse\", \
      \"description\": \"a To/Cc address that is not an envelope recipient of the attempt: refuse (bounce the attempt) or remove (take it out of To/Cc)\" }, \
    \"default_from\": { \"type\": \"string\", \
      \"description\": \"sender used by postmux send --test\" } \
  } \
}"

struct _PmxTransport {
  char           *name;
  char           *api_url;          /* without a trailing slash */
  char           *user;             /* "me", an address; NULL with from_envelope */
  char          **allowed_users;    /* from_envelope: addresses and @domains */
  char           *scopes;           /* asked for (the credential's, or scope) */
  char           *client_id;        /* for messages: the key file's client_id, or the credential's */
  gboolean        service_account;
  gboolean        remove_unlisted;
  char           *ca_file;
  guint           timeout_ms;
  gint64          backoff_initial;  /* seconds */
  gint64          backoff_max;
  gint64          daily_pause;
  JsonObject     *cred_options;     /* template for per-sender sources */
  char           *store_dir;
  PmxTokenSource *tokens;           /* fixed user; NULL with from_envelope */

  GMutex          lock;             /* protects the two fields below */
  GHashTable     *sender_tokens;    /* lower-case sender -> PmxTokenSource */
  guint           backoff_level;    /* rate-limited answers since the last 200 */
};

struct _PmxSession {
  PmxTransport *transport;
  PmxHttp      *http;
};

/* gmail_destroy - free an instance and its token sources */
static void
gmail_destroy (PmxTransport *self)
{
  g_free (self->name);
  g_free (self->api_url);
  g_free (self->user);
  g_strfreev (self->allowed_users);
  g_free (self->scopes);
  g_free (self->client_id);
  g_free (self->ca_file);
  g_clear_pointer (&self->cred_options, json_object_unref);
  g_free (self->store_dir);
  g_clear_pointer (&self->tokens, pmx_token_source_unref);
  g_clear_pointer (&self->sender_tokens, g_hash_table_unref);
  g_mutex_clear (&self->lock);
  g_free (self);
}

/* gmail_mime_init - initialise GMime once for the process and leave it
 * up: the gateway uses it too (pmx-mime.c does the same), so a reload
 * must never shut it down under another thread */
static void
gmail_mime_init (void)
{
  static gsize once;

  if (g_once_init_enter (&once))
    {
      g_mime_init ();
      g_once_init_leave (&once, 1);
    }
}

/* gmail_seconds - a duration option in whole seconds (at least 1) */
static gboolean
gmail_seconds (JsonObject *o,
               const char *member,
               guint       fallback_s,
               gint64     *out)
{
  guint ms;

  if (!pmx_smtp_parse_timeout_ms (o, member, fallback_s * 1000, &ms))
    return FALSE;
  *out = MAX ((gint64) ms / 1000, 1);
  return TRUE;
}

/* gmail_sa_client_id - the numeric client_id of a service-account key file
 * (what the Admin console's domain-wide delegation lists), or NULL */
static char *
gmail_sa_client_id (const char *path)
{
  g_autoptr(JsonParser) parser = json_parser_new ();
  JsonNode *root;

  if (path == NULL || !json_parser_load_from_file (parser, path, NULL))
    return NULL;
  root = json_parser_get_root (parser);
  if (root == NULL || !JSON_NODE_HOLDS_OBJECT (root))
    return NULL;
  return g_strdup (json_object_get_string_member_with_default (json_node_get_object (root), "client_id", NULL));
}

/* gmail_credential_options - a copy of @credential with name, scopes and
 * (for a service account) subject filled in when missing */
static JsonObject *
gmail_credential_options (JsonObject *credential,
                          const char *instance_name,
                          const char *scope,
                          const char *subject)
{
  JsonObject *o = pmx_oauth2_credential_copy (credential, instance_name);

  if (!json_object_has_member (o, "scopes"))
    json_object_set_string_member (o, "scopes", scope);
  if (subject != NULL && json_object_has_member (o, "service_account_file"))
    json_object_set_string_member (o, "subject", subject);
  return o;
}

/* gmail_config_error - set a CONFIG error naming the instance */
static PmxTransport *
gmail_config_error (PmxTransport *self,
                    GError      **error,
                    const char   *what)
{
  g_set_error (error, PMX_TRANSPORT_ERROR, PMX_TRANSPORT_ERROR_CONFIG, "transport '%s': %s", self->name, what);
  gmail_destroy (self);
  return NULL;
}

/* gmail_create - read and check the options, build the token source (no network) */
static PmxTransport *
gmail_create (const PmxTransportArgs *args,
              GError                **error)
{
  JsonObject *o = args->options;
  JsonObject *credential = json_object_has_member (o, "credential")
                             ? json_object_get_object_member (o, "credential") : NULL;
  g_autoptr(GError) local_error = NULL;
  PmxTransport *self;
  const char *user, *scope, *subject;
  JsonNode *scopes;

  gmail_mime_init ();
  self = g_new0 (PmxTransport, 1);
  g_mutex_init (&self->lock);
  self->sender_tokens = g_hash_table_new_full (g_str_hash, g_str_equal, g_free,
                                               (GDestroyNotify) pmx_token_source_unref);
  self->name = g_strdup (args->instance_name);
  self->api_url = g_strdup (json_object_get_string_member_with_default (o, "api_url", "https://gmail.googleapis.com"));
  while (g_str_has_suffix (self->api_url, "/"))
    self->api_url[strlen (self->api_url) - 1] = '\0';
  self->ca_file = g_strdup (json_object_get_string_member_with_default (o, "ca_file", NULL));
  self->remove_unlisted = g_strcmp0 (json_object_get_string_member_with_default (o, "unlisted_recipients", "refuse"),
                                     "remove") == 0;
  user = json_object_get_string_member_with_default (o, "user", "me");
  scope = json_object_get_string_member_with_default (o, "scope", GMAIL_SEND_SCOPE);

  if (credential == NULL)
    return gmail_config_error (self, error, "option credential is required (kind google: service_account_file "
                                            "and subject, or client_id, client_secret and refresh_token)");
  if (g_strcmp0 (json_object_get_string_member_with_default (credential, "kind", NULL), "google") != 0)
    return gmail_config_error (self, error, "option credential: kind must be \"google\" for the Gmail API");
  if (!pmx_http_check_url (self->api_url, "api_url", &local_error))
    {
      g_autofree char *what = g_strdup_printf ("option api_url: %s", local_error->message);

      return gmail_config_error (self, error, what);
    }
  {
    guint ms;

    if (!pmx_smtp_parse_timeout_ms (o, "timeout", 300000, &ms)
        || !gmail_seconds (o, "backoff_initial", 30, &self->backoff_initial)
        || !gmail_seconds (o, "backoff_max", 3600, &self->backoff_max)
        || !gmail_seconds (o, "daily_limit_pause", 3600, &self->daily_pause))
      return gmail_config_error (self, error, "options timeout, backoff_initial, backoff_max and daily_limit_pause "
                                              "are a number of seconds or a duration such as \"30s\" or \"1h\"");
    self->timeout_ms = ms;
  }

  self->service_account = json_object_has_member (credential, "service_account_file");
  subject = json_object_get_string_member_with_default (credential, "subject", NULL);
  if (g_strcmp0 (user, "from_envelope") == 0)
    {
      JsonArray *allowed = json_object_has_member (o, "allowed_users")
                             ? json_object_get_array_member (o, "allowed_users") : NULL;
      guint n = allowed != NULL ? json_array_get_length (allowed) : 0;

      if (n == 0)
        return gmail_config_error (self, error, "option user is from_envelope but allowed_users is missing — list "
                                                "the senders (addresses or @domain) the service account may send as");
      if (!self->service_account)
        return gmail_config_error (self, error, "option user is from_envelope, which needs a service account with "
                                                "domain-wide delegation (credential.service_account_file): a refresh "
                                                "token is one user's only");
      self->allowed_users = g_new0 (char *, n + 1);
      for (guint i = 0; i < n; i++)
        self->allowed_users[i] = g_ascii_strdown (json_array_get_string_element (allowed, i), -1);
    }
  else
    {
      if (strcmp (user, "me") != 0 && strchr (user, '@') == NULL)
        return gmail_config_error (self, error, "option user must be an address, me or from_envelope");
      self->user = g_strdup (user);
      if (self->service_account && subject == NULL && strcmp (user, "me") == 0)
        return gmail_config_error (self, error, "a service account sends only as a Workspace user it impersonates: "
                                                "set credential.subject (or user) to that mailbox");
      if (subject == NULL && strcmp (user, "me") != 0)
        subject = user;
    }

  self->cred_options = gmail_credential_options (credential, self->name, scope, NULL);
  scopes = json_object_get_member (self->cred_options, "scopes");
  if (JSON_NODE_HOLDS_VALUE (scopes))
    self->scopes = g_strdup (json_node_get_string (scopes));
  else if (JSON_NODE_HOLDS_ARRAY (scopes))
    {
      JsonArray *a = json_node_get_array (scopes);
      GString *s = g_string_new (NULL);

      for (guint i = 0; i < json_array_get_length (a); i++)
        g_string_append_printf (s, "%s%s", i > 0 ? " " : "", json_array_get_string_element (a, i));
      self->scopes = g_string_free (s, FALSE);
    }
  self->store_dir = args->state_dir != NULL ? g_build_filename (args->state_dir, "tokens", NULL) : NULL;
  if (self->service_account)
    self->client_id = gmail_sa_client_id (json_object_get_string_member (credential, "service_account_file"));
  if (self->client_id == NULL)
    self->client_id = g_strdup (json_object_get_string_member_with_default (credential, "client_id", "-"));

  /* With from_envelope the sources are made per sender; building one here
   * still checks the credential (key file, secrets) at start-up. */
  {
    g_autoptr(JsonObject) options = gmail_credential_options (credential, self->name, scope, subject);

    self->tokens = pmx_token_source_new (options, self->store_dir, &local_error);
    if (self->tokens == NULL)
      {
        g_autofree char *what = g_strdup_printf ("option credential: %s", local_error->message);

        return gmail_config_error (self, error, what);
      }
    if (self->user == NULL)
      g_clear_pointer (&self->tokens, pmx_token_source_unref);
  }
  return self;
}

/* gmail_sender_allowed - is @sender (lower case) in allowed_users */
static gboolean
gmail_sender_allowed (PmxTransport *self,
                      const char   *sender)
{
  const char *at = strrchr (sender, '@');

  for (guint i = 0; self->allowed_users[i] != NULL; i++)
    {
      const char *pattern = self->allowed_users[i];

      if (pattern[0] == '@' ? (at != NULL && strcmp (at, pattern) == 0) : strcmp (sender, pattern) == 0)
        return TRUE;
    }
  return FALSE;
}

/* gmail_tokens_for - the token source and the path's user for this
 * envelope; NULL with @why set when the sender may not send (transfer full) */
static PmxTokenSource *
gmail_tokens_for (PmxTransport      *self,
                  const PmxEnvelope *envelope,
                  char             **out_user,
                  char             **why)
{
  g_autofree char *sender = NULL;
  PmxTokenSource *source;

  if (self->user != NULL)
    {
      *out_user = g_strdup (self->user);
      return pmx_token_source_ref (self->tokens);
    }
  sender = g_ascii_strdown (envelope->sender, -1);
  if (sender[0] == '\0' || !gmail_sender_allowed (self, sender))
    {
      *why = g_strdup_printf ("transport '%s': the envelope sender <%s> is not in allowed_users, so the "
                              "service account may not send as it — add it (or its @domain) to allowed_users",
                              self->name, envelope->sender);
      return NULL;
    }
  g_mutex_lock (&self->lock);
  source = g_hash_table_lookup (self->sender_tokens, sender);
  if (source == NULL)
    {
      g_autoptr(JsonObject) copy = gmail_credential_options (self->cred_options, self->name, self->scopes, sender);
      g_autoptr(GError) error = NULL;

      source = pmx_token_source_new (copy, self->store_dir, &error);
      if (source == NULL)
        *why = g_strdup_printf ("transport '%s': credential for <%s>: %s", self->name, sender, error->message);
      else
        g_hash_table_insert (self->sender_tokens, g_strdup (sender), source);
    }
  if (source != NULL)
    pmx_token_source_ref (source);
  g_mutex_unlock (&self->lock);
  *out_user = g_steal_pointer (&sender);
  return source;
}

/* ---- sending ----------------------------------------------------------- */

/* gmail_open_session - an HTTP client kept between messages (no network) */
static PmxSession *
gmail_open_session (PmxTransport *self,
                    GError      **error)
{
  PmxHttpOptions options = {
    .struct_size = sizeof (PmxHttpOptions),
    .ca_file = self->ca_file,
    .timeout_ms = self->timeout_ms,
  };
  PmxSession *session = g_new0 (PmxSession, 1);

  session->transport = self;
  session->http = pmx_http_new (&options);
  return session;
}

/* gmail_close_session - free the HTTP client */
static void
gmail_close_session (PmxSession *session)
{
  g_clear_pointer (&session->http, pmx_http_free);
  g_free (session);
}

/* gmail_token_fix - what to do about a token error, or "" (transfer full) */
static char *
gmail_token_fix (PmxTransport *self,
                 const GError *error)
{
  /* A needs-login error of the SDK already ends with `postmux auth login NAME`. */
  if (self->service_account && error->message != NULL && strstr (error->message, "unauthorized_client") != NULL)
    return g_strdup_printf (" — in the Google Admin console add client id %s with the scope %s, and check that "
                            "the user belongs to that Workspace domain", self->client_id, GMAIL_SEND_SCOPE);
  return g_strdup ("");
}

/* gmail_get_token - a token, or NULL after failing @result */
static char *
gmail_get_token (PmxTransport   *self,
                 PmxTokenSource *tokens,
                 PmxResult      *result)
{
  g_autoptr(GError) error = NULL;
  char *token = pmx_token_source_get_token (tokens, FALSE, NULL, &error);

  if (token == NULL)
    {
      g_autofree char *fix = gmail_token_fix (self, error);

      pmx_result_fail (result, pmx_oauth2_error_get_failure (error), 0, NULL, "transport '%s': %s%s",
                       self->name, error->message, fix);
    }
  return token;
}

/* gmail_clean - @text made fit for one line of a reason: valid UTF-8, no
 * control characters, at most 200 characters (transfer full) */
static char *
gmail_clean (const char *text)
{
  g_autofree char *valid = g_utf8_make_valid (text != NULL ? text : "", -1);
  GString *s = g_string_new (NULL);
  glong n = 0;

  for (const char *p = valid; *p != '\0' && n < 200; p = g_utf8_next_char (p), n++)
    {
      gunichar c = g_utf8_get_char (p);

      if (g_unichar_iscntrl (c))
        g_string_append_c (s, ' ');
      else
        g_string_append_unichar (s, c);
    }
  return g_string_free (s, FALSE);
}

typedef struct {
  guint  status;
  char  *reason;    /* errors[0].reason, or the status word, or "" */
  char  *message;   /* error.message, cleaned */
  char  *detail;    /* details[].reason (google.rpc.ErrorInfo), or NULL */
} GmailError;

/* gmail_error_clear - free a parsed error */
static void
gmail_error_clear (GmailError *e)
{
  g_free (e->reason);
  g_free (e->message);
  g_free (e->detail);
}

G_DEFINE_AUTO_CLEANUP_CLEAR_FUNC (GmailError, gmail_error_clear)

/* gmail_parse_error - the Google error body of @response, as far as given */
static void
gmail_parse_error (const PmxHttpResponse *response,
                   GmailError            *out)
{
  g_autoptr(JsonNode) root = pmx_http_response_get_json (response);
  JsonObject *error = NULL;

  out->status = response->status;
  if (root != NULL && JSON_NODE_HOLDS_OBJECT (root))
    {
      JsonNode *e = json_object_get_member (json_node_get_object (root), "error");

      error = e != NULL && JSON_NODE_HOLDS_OBJECT (e) ? json_node_get_object (e) : NULL;
    }
  if (error != NULL)
    {
      JsonNode *errors = json_object_get_member (error, "errors");
      JsonNode *details = json_object_get_member (error, "details");

      out->message = gmail_clean (json_object_get_string_member_with_default (error, "message", ""));
      if (errors != NULL && JSON_NODE_HOLDS_ARRAY (errors) && json_array_get_length (json_node_get_array (errors)) > 0)
        {
          JsonNode *first = json_array_get_element (json_node_get_array (errors), 0);

          if (JSON_NODE_HOLDS_OBJECT (first))
            out->reason = gmail_clean (json_object_get_string_member_with_default (json_node_get_object (first),
                                                                                   "reason", NULL));
        }
      if (details != NULL && JSON_NODE_HOLDS_ARRAY (details))
        {
          JsonArray *a = json_node_get_array (details);

          for (guint i = 0; i < json_array_get_length (a) && out->detail == NULL; i++)
            {
              JsonNode *d = json_array_get_element (a, i);

              if (JSON_NODE_HOLDS_OBJECT (d) && json_object_has_member (json_node_get_object (d), "reason"))
                out->detail = gmail_clean (json_object_get_string_member_with_default (json_node_get_object (d),
                                                                                       "reason", NULL));
            }
        }
      if ((out->reason == NULL || out->reason[0] == '\0') && json_object_has_member (error, "status"))
        {
          g_free (out->reason);
          out->reason = gmail_clean (json_object_get_string_member_with_default (error, "status", NULL));
        }
    }
  if (out->reason == NULL || out->reason[0] == '\0')
    {
      g_free (out->reason);
      out->reason = g_strdup ("");
    }
  if (out->message == NULL || out->message[0] == '\0')
    {
      g_free (out->message);
      out->message = g_strdup ("no error message");
    }
}

/* gmail_is_daily_limit - a per-user daily sending limit (rolling 24 h) */
static gboolean
gmail_is_daily_limit (const GmailError *e)
{
  return strcmp (e->reason, "dailyLimitExceeded") == 0
         || strstr (e->message, "Daily user sending limit exceeded") != NULL
         || strstr (e->message, "sending limit exceeded") != NULL;
}

/* gmail_is_rate_limit - an answer to back off from */
static gboolean
gmail_is_rate_limit (const GmailError *e)
{
  return e->status == 429 || e->status >= 500
         || strcmp (e->reason, "rateLimitExceeded") == 0
         || strcmp (e->reason, "userRateLimitExceeded") == 0
         || strcmp (e->reason, "backendError") == 0
         || gmail_is_daily_limit (e);
}

/* gmail_retry_after_in_text - seconds until the time in Gmail's "Retry
 * after 2026-11-23T18:00:00.000Z" message, or -1 */
static gint64
gmail_retry_after_in_text (const char *message)
{
  const char *p = strstr (message, "Retry after ");
  g_autoptr(GDateTime) when = NULL;
  g_autoptr(GDateTime) now = NULL;
  g_autofree char *stamp = NULL;

  if (p == NULL)
    return -1;
  p += strlen ("Retry after ");
  stamp = g_strndup (p, strcspn (p, " ,;)"));
  when = g_date_time_new_from_iso8601 (stamp, NULL);
  if (when == NULL)
    return -1;
  now = g_date_time_new_now_utc ();
  return MAX (g_date_time_difference (when, now) / G_TIME_SPAN_SECOND, 1);
}

/* gmail_backoff - the next exponential back-off of the instance, seconds */
static gint64
gmail_backoff (PmxTransport *self)
{
  gint64 seconds;
  guint level;

  g_mutex_lock (&self->lock);
  level = self->backoff_level < 30 ? self->backoff_level++ : self->backoff_level;
  g_mutex_unlock (&self->lock);
  seconds = self->backoff_initial;
  while (level-- > 0 && seconds < self->backoff_max)
    seconds *= 2;
  return MIN (seconds, self->backoff_max);
}

/* gmail_failed_answer - classify a non-200 answer and fill @result */
static void
gmail_failed_answer (PmxTransport          *self,
                     const char            *user,
                     const PmxHttpResponse *response,
                     PmxResult             *result)
{
  g_auto(GmailError) e = { 0 };
  g_autofree char *what = NULL;

  gmail_parse_error (response, &e);
  what = g_strdup_printf ("HTTP %u%s%s (%s)", e.status, e.reason[0] != '\0' ? " " : "", e.reason, e.message);

  if (gmail_is_rate_limit (&e))
    {
      gboolean daily = gmail_is_daily_limit (&e);
      gint64 seconds = response->retry_after >= 0 ? MAX (response->retry_after, 1)
                                                  : gmail_retry_after_in_text (e.message);
      g_autofree char *reason = NULL;

      if (seconds < 0)
        seconds = daily ? self->daily_pause : gmail_backoff (self);
      reason = g_strdup_printf ("Gmail %s for %s: %s", daily ? "daily sending limit" : "rate limit", user, what);
      pmx_result_pause_transport (result, seconds, reason);
      pmx_result_fail (result, PMX_FAILURE_TEMPORARY, e.status, "4.7.0",
                       "transport '%s': Gmail answered %s — rate limited: no new attempt for %" G_GINT64_FORMAT " s",
                       self->name, what, seconds);
      return;
    }
  if (e.status == 401)
    {
      pmx_result_fail (result, PMX_FAILURE_AUTH, e.status, "4.7.0",
                       "transport '%s': Gmail refused a fresh access token for %s: %s — check that the credential "
                       "is for this mailbox and has the scope %s", self->name, user, what, self->scopes);
      return;
    }
  if (e.status == 403 && (strcmp (e.reason, "domainPolicy") == 0))
    {
      pmx_result_fail (result, PMX_FAILURE_CONFIG, e.status, "4.7.0",
                       "transport '%s': Gmail refused to send as %s: %s — the Workspace domain's policy forbids it: "
                       "an administrator must enable the Gmail API for the domain and, for a service account, grant "
                       "client id %s domain-wide delegation of %s (Admin console > Security > API controls)",
                       self->name, user, what, self->client_id, GMAIL_SEND_SCOPE);
      return;
    }
  if (e.status == 403 && (strcmp (e.reason, "insufficientPermissions") == 0
                          || g_strcmp0 (e.detail, "ACCESS_TOKEN_SCOPE_INSUFFICIENT") == 0
                          || strstr (e.message, "insufficient authentication scopes") != NULL))
    {
      pmx_result_fail (result, PMX_FAILURE_CONFIG, e.status, "4.7.0",
                       "transport '%s': Gmail refused to send as %s: %s — the access token's scopes (%s) do not allow "
                       "users.messages.send: set scope to %s (and grant it to client id %s in domain-wide delegation, "
                       "or log in again)", self->name, user, what, self->scopes, GMAIL_SEND_SCOPE, self->client_id);
      return;
    }
  if (e.status == 403 || e.status == 404)
    {
      pmx_result_fail (result, PMX_FAILURE_CONFIG, e.status, "4.7.0",
                       "transport '%s': Gmail refused to send as %s: %s — check user, api_url and the "
                       "credential's access to this mailbox", self->name, user, what);
      return;
    }
  if (e.status == 408 || e.status == 409 || e.status == 425)
    {
      pmx_result_fail (result, PMX_FAILURE_TEMPORARY, e.status, "4.4.1",
                       "transport '%s': Gmail answered %s", self->name, what);
      return;
    }
  pmx_result_fail (result, PMX_FAILURE_PERMANENT, e.status, e.status == 413 ? "5.3.4" : "5.6.0",
                   "transport '%s': Gmail refused the message: %s — not retried", self->name, what);
}

/* gmail_delivered - a 200: every recipient delivered, the message id kept */
static void
gmail_delivered (PmxTransport          *self,
                 const PmxEnvelope     *envelope,
                 const PmxHttpResponse *response,
                 gboolean               upload,
                 PmxResult             *result)
{
  g_autoptr(JsonNode) root = pmx_http_response_get_json (response);
  g_autofree char *id = NULL;
  g_autofree char *text = NULL;

  if (root != NULL && JSON_NODE_HOLDS_OBJECT (root))
    id = gmail_clean (json_object_get_string_member_with_default (json_node_get_object (root), "id", NULL));
  g_mutex_lock (&self->lock);
  self->backoff_level = 0;
  g_mutex_unlock (&self->lock);
  if (id != NULL && id[0] != '\0')
    pmx_result_set_remote_id (result, id);
  text = g_strdup_printf ("sent by Gmail as message %s (%s)", id != NULL && id[0] != '\0' ? id : "without an id",
                          upload ? "media upload" : "raw");
  pmx_result_set_pending (result, PMX_RCPT_DELIVERED, 200, "2.0.0", text);
  g_debug ("transport '%s': queue id %s: %s", self->name, envelope->queue_id, text);
}

/* gmail_send - one message: rewrite, size check, token, POST, classify */
static void
gmail_send (PmxSession        *session,
            const PmxEnvelope *envelope,
            const guint8      *message,
            gsize              message_len,
            PmxResult         *result)
{
  PmxTransport *self = session->transport;
  g_autoptr(PmxTokenSource) tokens = NULL;
  g_autoptr(GBytes) prepared = NULL;
  g_autoptr(GPtrArray) plain = NULL;
  g_autofree char *user = NULL;
  g_autofree char *why = NULL;
  g_autofree char *escaped = NULL;
  g_autofree char *url = NULL;
  g_autofree char *json = NULL;
  g_auto(PmxHttpResponse) response = { 0 };
  PmxHttpRequest request = { 0 };
  const guint8 *data;
  GString *transcript;
  gboolean upload;
  char *token;
  gsize size;

  tokens = gmail_tokens_for (self, envelope, &user, &why);
  if (tokens == NULL)
    {
      /* A sender outside allowed_users never may; a broken credential is the operator's to fix. */
      gboolean refused = self->user == NULL && why != NULL && strstr (why, "allowed_users") != NULL;

      pmx_result_fail (result, refused ? PMX_FAILURE_PERMANENT : PMX_FAILURE_CONFIG, 0, refused ? "5.7.1" : "4.7.0",
                       "%s", why);
      return;
    }
  /* An address goes into a Bcc field: one with a control character
   * (CR, LF) would add header lines, so it is bounced, never sent. */
  plain = g_ptr_array_new ();
  for (gsize i = 0; i < envelope->n_recipients; i++)
    {
      const char *c = envelope->recipients[i];

      while (*c != '\0' && (guchar) *c >= ' ' && *c != 0x7f)
        c++;
      if (*c == '\0')
        g_ptr_array_add (plain, (gpointer) envelope->recipients[i]);
      else
        pmx_result_set_recipient (result, i, PMX_RCPT_BOUNCED, 0, "5.1.3",
                                  "the address holds a control character: not sent");
    }
  if (plain->len == 0)
    return;
  prepared = pmx_gmail_envelope_rewrite (message, message_len, (const char *const *) plain->pdata, plain->len,
                                         self->remove_unlisted, &why);
  if (prepared == NULL)
    {
      pmx_result_fail (result, PMX_FAILURE_PERMANENT, 0, "5.6.0",
                       "transport '%s': To/Cc name %s, not recipients of this attempt; Gmail has no envelope and "
                       "delivers to every To and Cc address, so sending would deliver to them too — route this "
                       "message through an SMTP transport, or set unlisted_recipients to \"remove\" to take such "
                       "addresses out of To/Cc (recipients then see the shorter list)", self->name, why);
      return;
    }
  data = g_bytes_get_data (prepared, &size);
  if (size > GMAIL_UPLOAD_MAX)
    {
      pmx_result_fail (result, PMX_FAILURE_PERMANENT, 0, "5.3.4",
                       "transport '%s': the message is %" G_GSIZE_FORMAT " bytes, over Gmail's limit of %d bytes "
                       "(35 MB) — not sent", self->name, size, GMAIL_UPLOAD_MAX);
      return;
    }

  upload = size > GMAIL_RAW_MAX;
  escaped = g_uri_escape_string (user, "@!$&'()*+,;=", FALSE);
  request.method = "POST";
  if (upload)
    {
      url = g_strdup_printf ("%s/upload/gmail/v1/users/%s/messages/send?uploadType=media", self->api_url, escaped);
      request.content_type = "message/rfc822";
      request.body = data;
      request.body_len = size;
    }
  else
    {
      g_autofree char *raw = pmx_base64url_encode (data, size);

      url = g_strdup_printf ("%s/gmail/v1/users/%s/messages/send", self->api_url, escaped);
      json = g_strdup_printf ("{\"raw\":\"%s\"}", raw);
      request.content_type = "application/json";
      request.body = (const guint8 *) json;
      request.body_len = strlen (json);
    }
  request.url = url;

  /* What `postmux send --test` shows: requests and answers, never the token. */
  transcript = pmx_result_wants_transcript (result) ? g_string_new (NULL) : NULL;
  token = gmail_get_token (self, tokens, result);
  for (int attempt = 0; token != NULL; attempt++)
    {
      g_autoptr(GError) error = NULL;

      if (transcript != NULL)
        g_string_append_printf (transcript, "> POST %s (%s, message %" G_GSIZE_FORMAT " bytes, Authorization: Bearer <redacted>)\n",
                                url, upload ? "message/rfc822" : "application/json raw", size);
      request.bearer = token;
      if (!pmx_http_send (session->http, &request, &response, NULL, &error))
        {
          pmx_result_fail (result, g_error_matches (error, PMX_TRANSPORT_ERROR, PMX_TRANSPORT_ERROR_CONFIG)
                                     ? PMX_FAILURE_CONFIG : PMX_FAILURE_TEMPORARY,
                           0, "4.4.1", "transport '%s': %s", self->name, error->message);
          pmx_result_set_session_broken (result);
          if (transcript != NULL)
            g_string_append_printf (transcript, "< no answer: %s\n", error->message);
          break;
        }
      if (transcript != NULL)
        {
          gsize len = 0;
          const char *body = response.body != NULL ? g_bytes_get_data (response.body, &len) : NULL;
          g_autofree char *text = g_strndup (body != NULL ? body : "", MIN (len, 300));
          g_autofree char *clean = gmail_clean (text);

          g_string_append_printf (transcript, "< %u %s\n", response.status, clean);
        }
      if (response.status == 401 && attempt == 0)
        {
          /* Revoked or expired early: drop only this token (another
           * session may hold a fresh one already) and try once more. */
          g_debug ("transport '%s': Gmail refused the access token; refreshing once", self->name);
          pmx_token_source_invalidate (tokens, token);
          g_clear_pointer (&token, pmx_secret_free);
          pmx_http_response_clear (&response);
          token = gmail_get_token (self, tokens, result);
          continue;
        }
      if (response.status == 200)
        gmail_delivered (self, envelope, &response, upload, result);
      else
        gmail_failed_answer (self, user, &response, result);
      break;
    }
  if (transcript != NULL)
    {
      pmx_result_set_transcript (result, transcript->str);
      g_string_free (transcript, TRUE);
    }
  pmx_secret_free (token);
}

/* ---- postmux doctor ---------------------------------------------------- */

/* gmail_scope_sends - does @scopes hold a scope that may call messages.send */
static const char *
gmail_scope_sends (const char *scopes)
{
  static const char *const senders[] = {
    GMAIL_SEND_SCOPE, "https://mail.google.com/", "https://www.googleapis.com/auth/gmail.compose",
    "https://www.googleapis.com/auth/gmail.modify", "https://www.googleapis.com/auth/gmail.addons.current.action.compose",
    NULL,
  };
  g_auto(GStrv) list = g_strsplit_set (scopes != NULL ? scopes : "", " ,", -1);

  for (guint i = 0; list[i] != NULL; i++)
    for (guint j = 0; senders[j] != NULL; j++)
      if (strcmp (list[i], senders[j]) == 0)
        return senders[j];
  return NULL;
}

/* gmail_check - `postmux doctor`: token for the user, scope, verdict */
static gboolean
gmail_check (PmxTransport *self,
             PmxReport    *report)
{
  g_autoptr(PmxTokenSource) tokens = NULL;
  g_auto(PmxTokenStatus) status = { 0 };
  g_autoptr(GError) error = NULL;
  g_autofree char *user = NULL;
  g_autofree char *expires = NULL;
  const char *scope;
  char *token;

  if (self->user != NULL)
    {
      user = g_strdup (self->user);
      tokens = pmx_token_source_ref (self->tokens);
    }
  else
    {
      PmxEnvelope envelope = { 0 };
      g_autofree char *why = NULL;

      for (guint i = 0; self->allowed_users[i] != NULL && envelope.sender == NULL; i++)
        if (self->allowed_users[i][0] != '@')
          envelope.sender = self->allowed_users[i];
      if (envelope.sender == NULL)
        {
          pmx_report_add (report, PMX_CHECK_WARN, "token",
                          "user is from_envelope and allowed_users lists only domains: no sender to get a token "
                          "for — add one address to allowed_users to let doctor check the delegation");
          pmx_report_add (report, PMX_CHECK_WARN, "verdict", "not checked: no sender address");
          return TRUE;
        }
      tokens = gmail_tokens_for (self, &envelope, &user, &why);
      if (tokens == NULL)
        {
          pmx_report_add (report, PMX_CHECK_FAIL, "token", "%s", why);
          pmx_report_add (report, PMX_CHECK_FAIL, "verdict", "cannot send through the Gmail API: no token source");
          return FALSE;
        }
    }

  token = pmx_token_source_get_token (tokens, FALSE, NULL, &error);
  pmx_token_source_get_status (tokens, &status);
  if (token == NULL)
    {
      gboolean delegation = self->service_account && strstr (error->message, "unauthorized_client") != NULL;

      pmx_report_add (report, PMX_CHECK_FAIL, "token", "for %s from %s: %s", user,
                      pmx_token_source_get_token_endpoint (tokens), error->message);
      if (delegation)
        pmx_report_add (report, PMX_CHECK_FAIL, "verdict",
                        "cannot send as %s: domain-wide delegation is not granted to this client id for gmail.send "
                        "— in the Google Admin console (Security > API controls > Domain-wide delegation) add client "
                        "id %s with the scope %s, and check that %s is a user of that Workspace domain",
                        user, self->client_id, GMAIL_SEND_SCOPE, user);
      else
        {
          g_autofree char *fix = gmail_token_fix (self, error);

          pmx_report_add (report, PMX_CHECK_FAIL, "verdict", "cannot send as %s: no access token%s", user, fix);
        }
      return FALSE;
    }
  pmx_secret_free (token);
  if (status.expires_at > 0)
    {
      g_autoptr(GDateTime) t = g_date_time_new_from_unix_utc (status.expires_at);

      expires = t != NULL ? g_date_time_format_iso8601 (t) : NULL;
    }
  pmx_report_add (report, PMX_CHECK_OK, "token", "%s grant for %s from %s (client %s): access token valid until %s",
                  status.grant != NULL ? status.grant : "-", user, pmx_token_source_get_token_endpoint (tokens),
                  pmx_token_source_get_client_id (tokens), expires != NULL ? expires : "-");

  scope = gmail_scope_sends (status.scopes != NULL && status.scopes[0] != '\0' ? status.scopes : self->scopes);
  if (scope == NULL)
    {
      pmx_report_add (report, PMX_CHECK_FAIL, "scope",
                      "the token's scopes (%s) do not allow users.messages.send — set scope to %s",
                      status.scopes != NULL ? status.scopes : self->scopes, GMAIL_SEND_SCOPE);
      pmx_report_add (report, PMX_CHECK_FAIL, "verdict", "cannot send as %s: wrong scope", user);
      return FALSE;
    }
  pmx_report_add (report, PMX_CHECK_OK, "scope", "%s allows users.messages.send", scope);
  pmx_report_add (report, PMX_CHECK_OK, "verdict", "ready to send as %s through %s", user, self->api_url);
  return TRUE;
}

static const PmxTransportOps gmail_ops = {
  .create = gmail_create,
  .destroy = gmail_destroy,
  .open_session = gmail_open_session,
  .send = gmail_send,
  .close_session = gmail_close_session,
  .check = gmail_check,
};

PMX_TRANSPORT_DEFINE (gmail, "gmail", "0.1.0", "GPL-3.0-or-later",
                      "sends through the Gmail API (users.messages.send) with a Google service account or "
                      "installed-app OAuth2 credential",
                      GMAIL_SCHEMA, &gmail_ops)

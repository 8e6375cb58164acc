/* SPDX-License-Identifier: GPL-3.0-or-later */
/*
 * pmx-graph.c - the graph transport: sends through the Microsoft Graph API
 * (POST /users/{mailbox}/sendMail) with an app registration's OAuth2
 * token, for tenants whose SMTP AUTH is switched off.
 *
 * Forms, chosen per message:
 *   mime (default)  the message travels as base64 MIME (Content-Type:
 *                   text/plain), unchanged when its To/Cc/Bcc headers are
 *                   exactly this attempt's envelope recipients; otherwise a
 *                   copy whose To/Cc/Bcc were made equal to the envelope
 *                   (pmx-graph-message.c says why and how).
 *   json            the message converted to a Graph message resource with
 *                   toRecipients/ccRecipients/bccRecipients set from the
 *                   envelope, and fileAttachments.
 *   large messages  whatever does not fit in one ~4 MB request: a draft
 *                   (POST /messages), small attachments by POST
 *                   .../attachments, those of 3 MB or more by
 *                   createUploadSession and ranged PUTs (the upload URL is
 *                   pre-authenticated: no Authorization header), then
 *                   POST .../send.  Needs Mail.ReadWrite besides Mail.Send.
 *
 * Outcomes: any 2xx = delivered (accepted by Graph: Exchange may still send
 * a non-delivery report later).  429/503/504 defer and, with Retry-After
 * (always for 429), pause the whole instance for that long.  401 drops the
 * token at the token source and retries once with a new one.  Graph's error
 * codes decide the rest (graph_outcome_from_response()).  Concurrency: at
 * most "concurrency" messages in flight per mailbox across every session
 * of the instance (Graph's MailboxConcurrency limit is 4).
 *
 * Trusts: options validated against the schema below; the credential is
 * checked by pmx_token_source_new() at create.  Never logs a token, never
 * puts one (nor the upload URL's authtoken) in a result or an error.
 * References: Microsoft Graph v1.0 user-sendmail, message-send,
 * attachment-createuploadsession, outlook-large-attachments,
 * throttling-limits, errors (see docs/configuration.md, "graph").
 */
#include <postmux/postmux.h>

#include "pmx-graph-message.h"

#include <string.h>

/* Graph refuses requests over about 4 MB (413). */
#define GRAPH_MAX_REQUEST        (4u * 1024 * 1024)
/* Attachments of this size or more go by upload session (Graph: 3 MB). */
#define GRAPH_UPLOAD_THRESHOLD   (3u * 1000 * 1000)
/* Upload chunks: under 4 MB, a multiple of 320 KiB as Microsoft advises. */
#define GRAPH_CHUNK              (10u * 320 * 1024)
/* The largest message Graph takes at all (tenant limits go up to 150 MB). */
#define GRAPH_MAX_MESSAGE        (150u * 1024 * 1024)
/* Pause after a 429 that gave no Retry-After. */
#define GRAPH_DEFAULT_PAUSE      60

#define GRAPH_SCHEMA "{ \
  \"$schema\": \"http://json-schema.org/draft-07/schema#\", \
  \"title\": \"graph transport options\", \
  \"type\": \"object\", \
  \"additionalProperties\": false, \
  \"required\": [\"credential\", \"mailbox\"], \
  \"properties\": { \
    \"credential\": { \"type\": \"object\", \
      \"description\": \"the OAuth2 credential: kind microsoft, tenant, client_id, and client_secret or certificate + private_key (client credentials), or a delegated refresh_token; scopes default to {graph host}/.default\" }, \
    \"mailbox\": { \"type\": \"string\", \"minLength\": 1, \
      \"description\": \"the user id or user principal name to send as, or from_envelope: the envelope sender, when allowed_senders lists it\" }, \
    \"allowed_senders\": { \"type\": \"array\", \"items\": { \"type\": \"string\", \"minLength\": 2 }, \
      \"description\": \"with mailbox from_envelope: addresses (user@example.com) or domains (@example.com) that may be sent as\" }, \
    \"save_to_sent_items\": { \"type\": \"boolean\", \"default\": false, \
      \"description\": \"keep a copy in the mailbox's Sent Items (json mode: Graph saves MIME sends and uploaded drafts there regardless)\" }, \
    \"mode\": { \"enum\": [\"mime\", \"json\"], \"default\": \"mime\", \
      \"description\": \"mime: the original message as base64 MIME; json: converted to a Graph message resource (subject, text or HTML body, attachments, reply-to, importance, at most five X- headers; other headers are lost)\" }, \
    \"large_messages\": { \"enum\": [\"upload\", \"reject\"], \"default\": \"upload\", \
      \"description\": \"messages over one request (4 MiB as base64, or one Graph answered 413): upload (draft and upload sessions, needs Mail.ReadWrite) or reject (bounce with the size)\" }, \
    \"max_message_size\": { \"type\": \"integer\", \"minimum\": 1, \"maximum\": 157286400, \"default\": 36700160, \
      \"description\": \"the tenant's message size limit in bytes (Exchange Online default 35 MB, at most 150 MB)\" }, \
    \"graph_url\": { \"type\": \"string\", \"minLength\": 1, \"default\": \"https://graph.microsoft.com/v1.0\", \
      \"description\": \"Graph base URL (national clouds: https://graph.microsoft.us/v1.0, https://microsoftgraph.chinacloudapi.cn/v1.0)\" }, \
    \"authority\": { \"type\": \"string\", \"minLength\": 1, \
      \"description\": \"the identity platform for the credential (default https://login.microsoftonline.com)\" }, \
    \"concurrency\": { \"type\": \"integer\", \"minimum\": 1, \"maximum\": 64, \"default\": 4, \
      \"description\": \"messages in flight per mailbox across all workers (Graph allows 4)\" }, \
    \"ca_file\": { \"type\": \"string\", \"minLength\": 1, \
      \"description\": \"PEM file of CAs trusted in addition to the system store\" }, \
    \"timeout\": { \"type\": \"integer\", \"minimum\": 1, \"default\": 300, \
      \"description\": \"seconds one HTTP request may take\" }, \
    \"default_from\": { \"type\": \"string\", \
      \"description\": \"sender used by postmux send --test\" } \
  } \
}"

struct _PmxTransport {
  char           *name;
  char           *mailbox;            /* NULL: from_envelope */
  char          **allowed_senders;    /* lower case */
  gboolean        save_to_sent_items;
  gboolean        json_mode;
  gboolean        upload;
  gsize           max_message_size;
  char           *graph_url;          /* no trailing slash */
  char           *ca_file;
  guint           timeout_ms;
  guint           concurrency;
  PmxTokenSource *tokens;             /* thread-safe; shared by every session */

  /* Messages in flight per mailbox, shared by every session. */
  GMutex          slots_lock;
  GCond           slots_cond;         /* signalled when a slot is released */
  GHashTable     *slots;              /* lower-case mailbox -> count; slots_lock */
};

struct _PmxSession {
  PmxTransport *transport;
  PmxHttp      *http;
};

/* The outcome of one send of one message (all its recipients). */
typedef struct {
  PmxFailureClass failure;            /* NONE: delivered */
  guint           code;               /* HTTP status, 0 without an answer */
  const char     *enhanced;
  char           *text;
  gint64          pause;              /* > 0: pause the instance for this long */
  gboolean        invalid_recipients; /* ErrorInvalidRecipients */
} GraphOutcome;

/* One attempt: what every request of it shares. */
typedef struct {
  PmxSession        *session;
  const PmxEnvelope *envelope;
  const char        *mailbox;
  char              *mailbox_path;    /* {graph_url}/users/{mailbox, escaped} */
  char              *token;           /* pmx_secret_free() */
  gboolean           refreshed;       /* a 401 already made us refresh once */
  GString           *transcript;      /* NULL unless the host wants one; no token, no upload URL */
} GraphAttempt;

/* graph_outcome_set - fill @out, replacing what it held */
static void
graph_outcome_set (GraphOutcome   *out,
                   PmxFailureClass failure,
                   guint           code,
                   const char     *enhanced,
                   const char     *format,
                   ...) G_GNUC_PRINTF (5, 6);

static void
graph_outcome_set (GraphOutcome   *out,
                   PmxFailureClass failure,
                   guint           code,
                   const char     *enhanced,
                   const char     *format,
                   ...)
{
  va_list args;

  g_free (out->text);
  out->failure = failure;
  out->code = code;
  out->enhanced = enhanced;
  va_start (args, format);
  out->text = g_strdup_vprintf (format, args);
  va_end (args);
}

/* graph_destroy - free an instance */
static void
graph_destroy (PmxTransport *self)
{
  g_free (self->name);
  g_free (self->mailbox);
  g_strfreev (self->allowed_senders);
  g_free (self->graph_url);
  g_free (self->ca_file);
  g_clear_pointer (&self->tokens, pmx_token_source_unref);
  g_clear_pointer (&self->slots, g_hash_table_unref);
  g_mutex_clear (&self->slots_lock);
  g_cond_clear (&self->slots_cond);
  g_free (self);
}

/* graph_default_scope - "{scheme}://{host}/.default" of the Graph URL */
static char *
graph_default_scope (const char *graph_url)
{
  g_autoptr(GUri) uri = g_uri_parse (graph_url, G_URI_FLAGS_NONE, NULL);

  if (uri == NULL || g_uri_get_host (uri) == NULL)
    return g_strdup ("https://graph.microsoft.com/.default");
  if (g_uri_get_port (uri) > 0)
    return g_strdup_printf ("%s://%s:%d/.default", g_uri_get_scheme (uri), g_uri_get_host (uri), g_uri_get_port (uri));
  return g_strdup_printf ("%s://%s/.default", g_uri_get_scheme (uri), g_uri_get_host (uri));
}

/* graph_credential_options - a copy of @credential with its name, the
 * authority option and Graph's default scopes filled in when missing */
static JsonObject *
graph_credential_options (JsonObject *credential,
                          const char *instance_name,
                          const char *authority,
                          const char *graph_url)
{
  JsonObject *o = pmx_oauth2_credential_copy (credential, instance_name);
  g_autofree char *scope = NULL;
  gboolean delegated;

  if (!json_object_has_member (o, "kind"))
    json_object_set_string_member (o, "kind", "microsoft");
  if (authority != NULL && !json_object_has_member (o, "authority"))
    json_object_set_string_member (o, "authority", authority);
  if (json_object_has_member (o, "scopes"))
    return o;

  /* App-only tokens carry the app's granted roles: {resource}/.default.
   * A delegated login asks for Mail.Send (and Mail.ReadWrite for drafts). */
  delegated = json_object_has_member (o, "refresh_token")
              || g_strcmp0 (json_object_get_string_member_with_default (o, "grant", NULL), "refresh_token") == 0;
  scope = graph_default_scope (graph_url);
  if (delegated)
    {
      g_autofree char *base = g_strndup (scope, strlen (scope) - strlen (".default"));
      g_autofree char *scopes = g_strdup_printf ("%sMail.Send %sMail.ReadWrite offline_access", base, base);

      json_object_set_string_member (o, "scopes", scopes);
    }
  else
    json_object_set_string_member (o, "scopes", scope);
  return o;
}

/* graph_create - read and check the options, build the token source (no network) */
static PmxTransport *
graph_create (const PmxTransportArgs *args,
              GError                **error)
{
  JsonObject *o = args->options;
  JsonObject *credential = json_object_has_member (o, "credential")
                             ? json_object_get_object_member (o, "credential") : NULL;
  const char *mailbox = json_object_get_string_member_with_default (o, "mailbox", NULL);
  g_autoptr(JsonObject) cred_options = NULL;
  g_autoptr(GError) local_error = NULL;
  g_autofree char *store_dir = NULL;
  PmxTransport *self = g_new0 (PmxTransport, 1);
  const char *url;

  g_mutex_init (&self->slots_lock);
  g_cond_init (&self->slots_cond);
  self->slots = g_hash_table_new_full (g_str_hash, g_str_equal, g_free, NULL);
  self->name = g_strdup (args->instance_name);
  self->save_to_sent_items = json_object_get_boolean_member_with_default (o, "save_to_sent_items", FALSE);
  self->json_mode = g_strcmp0 (json_object_get_string_member_with_default (o, "mode", "mime"), "json") == 0;
  self->upload = g_strcmp0 (json_object_get_string_member_with_default (o, "large_messages", "upload"), "reject") != 0;
  self->max_message_size = (gsize) CLAMP (json_object_get_int_member_with_default (o, "max_message_size", 35 * 1024 * 1024),
                                          1, GRAPH_MAX_MESSAGE);
  self->concurrency = (guint) CLAMP (json_object_get_int_member_with_default (o, "concurrency", 4), 1, 64);
  self->timeout_ms = (guint) CLAMP (json_object_get_int_member_with_default (o, "timeout", 300), 1, 86400) * 1000;
  self->ca_file = g_strdup (json_object_get_string_member_with_default (o, "ca_file", NULL));
  url = json_object_get_string_member_with_default (o, "graph_url", "https://graph.microsoft.com/v1.0");
  self->graph_url = g_strdup (url);
  while (g_str_has_suffix (self->graph_url, "/"))
    self->graph_url[strlen (self->graph_url) - 1] = '\0';

  if (mailbox == NULL || credential == NULL)
    {
      g_set_error (error, PMX_TRANSPORT_ERROR, PMX_TRANSPORT_ERROR_CONFIG,
                   "transport '%s': options mailbox (the user id or user principal name to send as, "
                   "or \"from_envelope\") and credential (kind microsoft, tenant, client_id, client_secret...) "
                   "are required", self->name);
      graph_destroy (self);
      return NULL;
    }
  if (strcmp (mailbox, "from_envelope") == 0)
    {
      JsonArray *allowed = json_object_has_member (o, "allowed_senders")
                             ? json_object_get_array_member (o, "allowed_senders") : NULL;
      guint n = allowed != NULL ? json_array_get_length (allowed) : 0;

      if (n == 0)
        {
          g_set_error (error, PMX_TRANSPORT_ERROR, PMX_TRANSPORT_ERROR_CONFIG,
                       "transport '%s': mailbox \"from_envelope\" needs allowed_senders, the addresses "
                       "(user@example.com) or domains (@example.com) the app may send as", self->name);
          graph_destroy (self);
          return NULL;
        }
      self->allowed_senders = g_new0 (char *, n + 1);
      for (guint i = 0; i < n; i++)
        self->allowed_senders[i] = g_ascii_strdown (json_array_get_string_element (allowed, i), -1);
    }
  else
    self->mailbox = g_strdup (mailbox);

  if (!pmx_http_check_url (self->graph_url, "graph_url", &local_error))
    {
      g_set_error (error, PMX_TRANSPORT_ERROR, PMX_TRANSPORT_ERROR_CONFIG,
                   "transport '%s': option %s", self->name, local_error->message);
      graph_destroy (self);
      return NULL;
    }

  cred_options = graph_credential_options (credential, self->name,
                                           json_object_get_string_member_with_default (o, "authority", NULL),
                                           self->graph_url);
  store_dir = args->state_dir != NULL ? g_build_filename (args->state_dir, "tokens", NULL) : NULL;
  self->tokens = pmx_token_source_new (cred_options, store_dir, &local_error);
  if (self->tokens == NULL)
    {
      g_set_error (error, PMX_TRANSPORT_ERROR, PMX_TRANSPORT_ERROR_CONFIG,
                   "transport '%s': option credential: %s", self->name, local_error->message);
      graph_destroy (self);
      return NULL;
    }
  g_mime_init ();
  return self;
}

/* graph_open_session - an HTTP client; the token comes at the first send */
static PmxSession *
graph_open_session (PmxTransport *self,
                    GError      **error)
{
  PmxHttpOptions options = {
    .struct_size = sizeof (PmxHttpOptions),
    .ca_file = self->ca_file,
    .timeout_ms = self->timeout_ms,
  };
  PmxSession *session = g_new0 (PmxSession, 1);

  (void) error;
  session->transport = self;
  session->http = pmx_http_new (&options);
  return session;
}

/* graph_close_session - free a session */
static void
graph_close_session (PmxSession *session)
{
  pmx_http_free (session->http);
  g_free (session);
}

/* graph_slot_acquire - wait until @mailbox has fewer than concurrency
 * messages in flight, then take a place */
static void
graph_slot_acquire (PmxTransport *self,
                    const char   *key)
{
  g_mutex_lock (&self->slots_lock);
  while (GPOINTER_TO_UINT (g_hash_table_lookup (self->slots, key)) >= self->concurrency)
    g_cond_wait (&self->slots_cond, &self->slots_lock);
  g_hash_table_insert (self->slots, g_strdup (key),
                       GUINT_TO_POINTER (GPOINTER_TO_UINT (g_hash_table_lookup (self->slots, key)) + 1));
  g_mutex_unlock (&self->slots_lock);
}

/* graph_slot_release - give the place back */
static void
graph_slot_release (PmxTransport *self,
                    const char   *key)
{
  guint n;

  g_mutex_lock (&self->slots_lock);
  n = GPOINTER_TO_UINT (g_hash_table_lookup (self->slots, key));
  if (n <= 1)
    g_hash_table_remove (self->slots, key);
  else
    g_hash_table_insert (self->slots, g_strdup (key), GUINT_TO_POINTER (n - 1));
  g_cond_broadcast (&self->slots_cond);
  g_mutex_unlock (&self->slots_lock);
}

/* graph_error_fields - Graph's error.code and error.message, when the body has them */
static void
graph_error_fields (const PmxHttpResponse *response,
                    char                 **out_code,
                    char                 **out_message)
{
  g_autoptr(JsonNode) root = pmx_http_response_get_json (response);
  JsonObject *error = NULL;

  *out_code = NULL;
  *out_message = NULL;
  if (root != NULL && JSON_NODE_HOLDS_OBJECT (root)
      && json_object_has_member (json_node_get_object (root), "error")
      && JSON_NODE_HOLDS_OBJECT (json_object_get_member (json_node_get_object (root), "error")))
    error = json_object_get_object_member (json_node_get_object (root), "error");
  if (error == NULL)
    return;
  *out_code = g_strdup (json_object_get_string_member_with_default (error, "code", NULL));
  *out_message = g_strdup (json_object_get_string_member_with_default (error, "message", NULL));
  if (*out_message != NULL)
    g_strdelimit (*out_message, "\r\n\t", ' ');
}

/* graph_outcome_from_response - what a non-2xx answer to @what means */
static void
graph_outcome_from_response (GraphAttempt          *a,
                             const char            *what,
                             const PmxHttpResponse *r,
                             GraphOutcome          *out)
{
  PmxTransport *self = a->session->transport;
  g_autofree char *code = NULL;
  g_autofree char *message = NULL;
  g_autofree char *said = NULL;
  guint s = r->status;

  graph_error_fields (r, &code, &message);
  said = g_strdup_printf ("transport '%s': Microsoft Graph answered %s with %u%s%s%s%s%s", self->name, what, s,
                          code != NULL ? " " : "", code != NULL ? code : "",
                          message != NULL ? " (" : "", message != NULL ? message : "", message != NULL ? ")" : "");

  if (s == 429 || s == 503 || s == 504)
    {
      gint64 wait = r->retry_after >= 0 ? MAX (r->retry_after, 1) : (s == 429 ? GRAPH_DEFAULT_PAUSE : 0);

      if (wait > 0)
        graph_outcome_set (out, PMX_FAILURE_TEMPORARY, s, s == 429 ? "4.7.0" : "4.3.0",
                           "%s — throttled: the transport pauses for %" G_GINT64_FORMAT " s%s", said, wait,
                           r->retry_after >= 0 ? " (Retry-After)" : " (no Retry-After given)");
      else
        graph_outcome_set (out, PMX_FAILURE_TEMPORARY, s, "4.3.0", "%s — Graph is busy: tried again later", said);
      out->pause = wait;
      return;
    }
  if (s == 401)
    {
      graph_outcome_set (out, PMX_FAILURE_AUTH, s, "4.7.0",
                         "%s — the access token was refused after a refresh: check the credential's tenant "
                         "and that the token is for %s", said, self->graph_url);
      return;
    }
  if (g_strcmp0 (code, "ErrorAccessDenied") == 0 && strcmp (what, "sendMail") != 0)
    {
      graph_outcome_set (out, PMX_FAILURE_PERMANENT, s, "5.7.1",
                         "%s — messages over one request are sent as a draft, which needs Mail.ReadWrite: grant "
                         "the app the Mail.ReadWrite application permission for mailbox %s, or set large_messages "
                         "to reject", said, a->mailbox);
      return;
    }
  if (g_strcmp0 (code, "NoPermissionsInAccessToken") == 0)
    {
      graph_outcome_set (out, PMX_FAILURE_PERMANENT, s, "5.7.1",
                         "%s — the token carries no permission: grant the app the Mail.Send application "
                         "permission with admin consent", said);
      return;
    }
  if (g_strcmp0 (code, "ErrorAccessDenied") == 0)
    {
      graph_outcome_set (out, PMX_FAILURE_PERMANENT, s, "5.7.1",
                         "%s — the app may not send as mailbox %s: grant the app the Mail.Send application "
                         "permission, or widen its application access policy to this mailbox", said, a->mailbox);
      return;
    }
  if (g_strcmp0 (code, "ErrorSendAsDenied") == 0)
    {
      graph_outcome_set (out, PMX_FAILURE_PERMANENT, s, "5.7.1",
                         "%s — mailbox %s may not send as the message's sender %s: give the mailbox SendAs "
                         "rights on that address, or send with a From: of the mailbox", said, a->mailbox,
                         a->envelope->sender[0] != '\0' ? a->envelope->sender : "<>");
      return;
    }
  if (g_strcmp0 (code, "MailboxNotEnabledForRESTAPI") == 0)
    {
      graph_outcome_set (out, PMX_FAILURE_PERMANENT, s, "5.2.1",
                         "%s — configuration: mailbox %s cannot send through Graph (inactive, unlicensed, "
                         "soft-deleted or on-premises): set mailbox to a licensed Exchange Online mailbox",
                         said, a->mailbox);
      return;
    }
  if (g_strcmp0 (code, "ErrorInvalidRecipients") == 0)
    {
      graph_outcome_set (out, PMX_FAILURE_PERMANENT, s, "5.1.1", "%s", said);
      out->invalid_recipients = TRUE;
      return;
    }
  if (s == 413)
    {
      graph_outcome_set (out, PMX_FAILURE_PERMANENT, s, "5.3.4", "%s — the request is too large for Graph", said);
      return;
    }
  if (s >= 400 && s < 500)
    {
      graph_outcome_set (out, PMX_FAILURE_PERMANENT, s, "5.0.0", "%s", said);
      return;
    }
  graph_outcome_set (out, PMX_FAILURE_TEMPORARY, s, "4.3.0", "%s", said);
}

/* graph_note - one transcript line: "POST /users/x/sendMail (text/plain,
 * 1234 bytes) -> 202"; @url is shown relative to graph_url, and an upload
 * URL (which carries its own credential) is never shown */
static void
graph_note (GraphAttempt *a,
            const char   *method,
            const char   *url,
            const char   *detail,
            gsize         body_len,
            guint         status)
{
  const char *graph_url = a->session->transport->graph_url;
  const char *shown = g_str_has_prefix (url, graph_url) ? url + strlen (graph_url) : "<upload URL>";

  if (a->transcript == NULL)
    return;  /* only `postmux send --test` reads one */
  g_string_append_printf (a->transcript, "%s %s (%s%s%" G_GSIZE_FORMAT " bytes) -> ", method, shown,
                          detail != NULL ? detail : "", detail != NULL ? ", " : "", body_len);
  if (status > 0)
    g_string_append_printf (a->transcript, "%u\n", status);
  else
    g_string_append (a->transcript, "no answer\n");
}

/* graph_call - one request to Graph with the bearer token; a 401 drops the
 * token at the source and tries once more with a new one.  Returns FALSE
 * with @out filled when there was no HTTP answer. */
static gboolean
graph_call (GraphAttempt       *a,
            const char         *method,
            const char         *url,
            const char         *content_type,
            const guint8       *body,
            gsize               body_len,
            PmxHttpResponse    *response,
            GraphOutcome       *out)
{
  PmxTransport *self = a->session->transport;

  for (;;)
    {
      g_autoptr(GError) error = NULL;
      PmxHttpRequest request = {
        .method = method,
        .url = url,
        .content_type = content_type,
        .body = body,
        .body_len = body_len,
      };

      if (a->token == NULL)
        {
          a->token = pmx_token_source_get_token (self->tokens, FALSE, NULL, &error);
          if (a->token == NULL)
            {
              /* The SDK's message names the fix (`postmux auth login NAME` included). */
              graph_outcome_set (out, pmx_oauth2_error_get_failure (error), 0, "4.7.0", "transport '%s': %s",
                                 self->name, error->message);
              return FALSE;
            }
        }
      request.bearer = a->token;
      memset (response, 0, sizeof *response);
      if (!pmx_http_send (a->session->http, &request, response, NULL, &error))
        {
          graph_note (a, method, url, content_type, body_len, 0);
          graph_outcome_set (out, error->domain == PMX_TRANSPORT_ERROR && error->code == PMX_TRANSPORT_ERROR_CONFIG
                                    ? PMX_FAILURE_CONFIG : PMX_FAILURE_TEMPORARY,
                             0, "4.4.1", "transport '%s': %s — Microsoft Graph did not answer: tried again later; "
                             "check graph_url and the network (postmux doctor %s)", self->name, error->message, self->name);
          return FALSE;
        }
      graph_note (a, method, url, content_type, body_len, response->status);
      if (response->status != 401 || a->refreshed)
        return TRUE;
      /* Revoked or expired early: drop only this token (another thread may
       * hold a fresh one already) and try once more. */
      g_debug ("%s: transport '%s': Graph refused the access token; refreshing once", a->envelope->queue_id, self->name);
      pmx_token_source_invalidate (self->tokens, a->token);
      g_clear_pointer (&a->token, pmx_secret_free);
      a->refreshed = TRUE;
      pmx_http_response_clear (response);
    }
}

/* graph_delivered - the outcome of a 2xx */
static void
graph_delivered (GraphOutcome *out,
                 guint         status,
                 const char   *how)
{
  graph_outcome_set (out, PMX_FAILURE_NONE, status, "2.0.0",
                     "accepted by Microsoft Graph (%u, %s); Exchange Online may still return a non-delivery report",
                     status, how);
}

/* graph_send_request - POST sendMail with @body; fills @out */
static void
graph_send_request (GraphAttempt *a,
                    const char   *content_type,
                    const guint8 *body,
                    gsize         body_len,
                    const char   *how,
                    GraphOutcome *out)
{
  g_autofree char *url = g_strconcat (a->mailbox_path, "/sendMail", NULL);
  g_auto(PmxHttpResponse) r = { 0 };

  if (!graph_call (a, "POST", url, content_type, body, body_len, &r, out))
    return;
  if (r.status / 100 == 2)
    graph_delivered (out, r.status, how);
  else
    graph_outcome_from_response (a, "sendMail", &r, out);
}

/* graph_json_bytes - @o serialized */
static GBytes *
graph_json_bytes (JsonObject *o)
{
  g_autoptr(JsonNode) node = json_node_new (JSON_NODE_OBJECT);
  gsize len = 0;
  char *text;

  json_node_set_object (node, o);
  text = json_to_string (node, FALSE);
  len = strlen (text);
  return g_bytes_new_take (text, len);
}

/* graph_json_member - a string member of a JSON answer ("id", "uploadUrl"), or NULL */
static char *
graph_json_member (const PmxHttpResponse *r,
                  const char            *member)
{
  g_autoptr(JsonNode) root = pmx_http_response_get_json (r);

  if (root == NULL || !JSON_NODE_HOLDS_OBJECT (root))
    return NULL;
  return g_strdup (json_object_get_string_member_with_default (json_node_get_object (root), member, NULL));
}

/* graph_upload_attachment - createUploadSession, then PUT the bytes in
 * chunks to the pre-authenticated upload URL (no Authorization header) */
static gboolean
graph_upload_attachment (GraphAttempt          *a,
                         const char            *message_path,
                         const GraphAttachment *att,
                         GraphOutcome          *out)
{
  PmxTransport *self = a->session->transport;
  g_autofree char *url = g_strconcat (message_path, "/attachments/createUploadSession", NULL);
  g_autoptr(JsonObject) body = json_object_new ();
  JsonObject *item = json_object_new ();
  g_autoptr(GBytes) request = NULL;
  g_autofree char *upload_url = NULL;
  gsize total = 0;
  const guint8 *data = g_bytes_get_data (att->data, &total);

  json_object_set_string_member (item, "attachmentType", "file");
  json_object_set_string_member (item, "name", att->name);
  json_object_set_int_member (item, "size", (gint64) total);
  json_object_set_string_member (item, "contentType", att->content_type);
  json_object_set_boolean_member (item, "isInline", att->is_inline);
  if (att->content_id != NULL)
    json_object_set_string_member (item, "contentId", att->content_id);
  json_object_set_object_member (body, "AttachmentItem", item);
  request = graph_json_bytes (body);
  {
    g_auto(PmxHttpResponse) r = { 0 };

    if (!graph_call (a, "POST", url, "application/json", g_bytes_get_data (request, NULL), g_bytes_get_size (request), &r, out))
      return FALSE;
    if (r.status / 100 != 2)
      {
        graph_outcome_from_response (a, "createUploadSession", &r, out);
        return FALSE;
      }
    upload_url = graph_json_member (&r, "uploadUrl");
    if (upload_url == NULL)
      {
        graph_outcome_set (out, PMX_FAILURE_TEMPORARY, r.status, "4.3.0",
                           "transport '%s': Microsoft Graph answered createUploadSession without an uploadUrl",
                           self->name);
        return FALSE;
      }
  }

  for (gsize start = 0; start < total;)
    {
      gsize len = MIN (GRAPH_CHUNK, total - start);
      g_autofree char *range = g_strdup_printf ("Content-Range: bytes %" G_GSIZE_FORMAT "-%" G_GSIZE_FORMAT "/%" G_GSIZE_FORMAT,
                                                start, start + len - 1, total);
      const char *headers[] = { range, NULL };
      PmxHttpRequest put = {
        .method = "PUT",
        .url = upload_url,
        .bearer = NULL,   /* the URL carries its own authorization */
        .content_type = "application/octet-stream",
        .body = data + start,
        .body_len = len,
        .headers = headers,
      };
      g_auto(PmxHttpResponse) r = { 0 };
      g_autoptr(GError) error = NULL;

      gboolean sent = pmx_http_send (a->session->http, &put, &r, NULL, &error);

      graph_note (a, "PUT", upload_url, range + strlen ("Content-Range: "), len, sent ? r.status : 0);
      if (!sent)
        {
          graph_outcome_set (out, PMX_FAILURE_TEMPORARY, 0, "4.4.1", "transport '%s': uploading %s: %s",
                             self->name, att->name, error->message);
          return FALSE;
        }
      if (r.status == 401 || r.status == 403 || r.status == 404)
        {
          /* The pre-authenticated URL expired or was withdrawn: a later
           * attempt starts over with a new draft and session. */
          graph_outcome_set (out, PMX_FAILURE_TEMPORARY, r.status, "4.4.0",
                             "transport '%s': the upload session of %s answered %u (expired or withdrawn): "
                             "the message is sent again later", self->name, att->name, r.status);
          return FALSE;
        }
      if (r.status / 100 != 2)
        {
          graph_outcome_from_response (a, "an attachment upload", &r, out);
          return FALSE;
        }
      start += len;
    }
  return TRUE;
}

/* graph_send_large - draft, attachments (upload sessions for the big
 * ones), send; the draft is deleted when a step fails */
static void
graph_send_large (GraphAttempt *a,
                  JsonObject   *message,
                  GPtrArray    *attachments,
                  GraphOutcome *out)
{
  PmxTransport *self = a->session->transport;
  g_autofree char *url = g_strconcat (a->mailbox_path, "/messages", NULL);
  g_autoptr(GBytes) draft = graph_json_bytes (message);
  g_autofree char *id = NULL;
  g_autofree char *escaped = NULL;
  g_autofree char *message_path = NULL;
  gboolean ok = TRUE;

  if (g_bytes_get_size (draft) > GRAPH_MAX_REQUEST)
    {
      graph_outcome_set (out, PMX_FAILURE_PERMANENT, 0, "5.3.4",
                         "transport '%s': the message text alone is %" G_GSIZE_FORMAT " bytes as a Graph message, "
                         "over Graph's request limit of %u bytes; only attachments can be uploaded in parts",
                         self->name, g_bytes_get_size (draft), GRAPH_MAX_REQUEST);
      return;
    }
  {
    g_auto(PmxHttpResponse) r = { 0 };

    if (!graph_call (a, "POST", url, "application/json", g_bytes_get_data (draft, NULL), g_bytes_get_size (draft), &r, out))
      return;
    if (r.status / 100 != 2)
      {
        graph_outcome_from_response (a, "creating the draft", &r, out);
        return;
      }
    id = graph_json_member (&r, "id");
    if (id == NULL)
      {
        graph_outcome_set (out, PMX_FAILURE_TEMPORARY, r.status, "4.3.0",
                           "transport '%s': Microsoft Graph created the draft but gave no id", self->name);
        return;
      }
  }
  escaped = g_uri_escape_string (id, NULL, FALSE);
  message_path = g_strconcat (a->mailbox_path, "/messages/", escaped, NULL);

  for (guint i = 0; ok && i < attachments->len; i++)
    {
      const GraphAttachment *att = g_ptr_array_index (attachments, i);

      if (g_bytes_get_size (att->data) >= GRAPH_UPLOAD_THRESHOLD)
        ok = graph_upload_attachment (a, message_path, att, out);
      else
        {
          g_autofree char *att_url = g_strconcat (message_path, "/attachments", NULL);
          g_autoptr(JsonObject) json = graph_attachment_to_json (att);
          g_autoptr(GBytes) body = graph_json_bytes (json);
          g_auto(PmxHttpResponse) r = { 0 };

          ok = graph_call (a, "POST", att_url, "application/json", g_bytes_get_data (body, NULL),
                           g_bytes_get_size (body), &r, out);
          if (ok && r.status / 100 != 2)
            {
              graph_outcome_from_response (a, "adding an attachment", &r, out);
              ok = FALSE;
            }
        }
    }
  if (ok)
    {
      g_autofree char *send_url = g_strconcat (message_path, "/send", NULL);
      g_auto(PmxHttpResponse) r = { 0 };

      if (graph_call (a, "POST", send_url, NULL, NULL, 0, &r, out))
        {
          if (r.status / 100 == 2)
            {
              graph_delivered (out, r.status, "draft and upload session");
              return;
            }
          graph_outcome_from_response (a, "sending the draft", &r, out);
        }
    }

  /* Do not leave a half-built draft in the mailbox. */
  {
    g_auto(PmxHttpResponse) r = { 0 };
    GraphOutcome ignored = { 0 };

    if (graph_call (a, "DELETE", message_path, NULL, NULL, 0, &r, &ignored) && r.status / 100 != 2)
      g_debug ("transport '%s': deleting draft after a failure: HTTP %u", self->name, r.status);
    g_free (ignored.text);
  }
}

/* graph_too_large - the outcome for a message that needs the upload path
 * while large_messages is reject */
static void
graph_too_large (PmxTransport *self,
                 gsize         message_len,
                 gsize         request_len,
                 GraphOutcome *out)
{
  graph_outcome_set (out, PMX_FAILURE_PERMANENT, 0, "5.3.4",
                     "transport '%s': the message is %" G_GSIZE_FORMAT " bytes (%" G_GSIZE_FORMAT
                     " bytes as a Graph request), over Graph's limit of %u bytes per request, and "
                     "large_messages is reject — set it to upload (the app then needs Mail.ReadWrite)",
                     self->name, message_len, request_len, GRAPH_MAX_REQUEST);
}

/* graph_retry_as_upload - whether a single request that Graph found too
 * large (413: its limit is not documented and users met it below 4 MB)
 * should go again by the upload path; clears @out when so */
static gboolean
graph_retry_as_upload (PmxTransport *self,
                       GraphOutcome *out)
{
  if (out->code != 413 || !self->upload)
    return FALSE;
  g_debug ("transport '%s': Graph answered 413 to one request; sending by draft and upload session", self->name);
  g_clear_pointer (&out->text, g_free);
  memset (out, 0, sizeof *out);
  return TRUE;
}

/* graph_send_one - send @raw to exactly a->envelope's recipients */
static void
graph_send_one (GraphAttempt *a,
                GraphMessage *message,
                const guint8 *raw,
                gsize         raw_len,
                GraphOutcome *out)
{
  PmxTransport *self = a->session->transport;
  g_autoptr(GPtrArray) attachments = NULL;
  g_autoptr(JsonObject) json = NULL;
  const char *from = NULL;
  const char *header_from = graph_message_get_from_address (message);

  if (!self->json_mode)
    {
      g_autoptr(GBytes) copy = NULL;
      gsize b64_len;

      /* The headers decide who Graph delivers to: use them as they are only
       * when they name exactly this attempt's recipients. */
      if (!message->headers_match)
        {
          copy = graph_message_rewrite_recipients (message, raw, raw_len, a->envelope);
          raw = g_bytes_get_data (copy, &raw_len);
        }
      b64_len = (raw_len + 2) / 3 * 4;
      if (b64_len <= GRAPH_MAX_REQUEST)
        {
          g_autofree char *b64 = g_base64_encode (raw, raw_len);

          graph_send_request (a, "text/plain", (const guint8 *) b64, b64_len,
                              message->headers_match ? "MIME" : "MIME, recipients made equal to the envelope", out);
          if (!graph_retry_as_upload (self, out))
            return;
        }
      else if (!self->upload)
        {
          graph_too_large (self, raw_len, b64_len, out);
          return;
        }
    }

  /* The JSON resource sends as the mailbox; a From: of another address is
   * kept as "from" (Graph then checks SendAs), as MIME would. */
  if (header_from != NULL && g_ascii_strcasecmp (header_from, a->mailbox) != 0)
    from = header_from;
  json = graph_message_to_json (message, a->envelope, from, &attachments);
  if (self->json_mode)
    {
      g_autoptr(JsonObject) request = json_object_new ();
      g_autoptr(GBytes) body = NULL;
      JsonArray *array = json_array_new ();

      for (guint i = 0; i < attachments->len; i++)
        json_array_add_object_element (array, graph_attachment_to_json (g_ptr_array_index (attachments, i)));
      json_object_set_object_member (request, "message", json_object_ref (json));
      if (attachments->len > 0)
        json_object_set_array_member (json, "attachments", array);
      else
        json_array_unref (array);
      json_object_set_boolean_member (request, "saveToSentItems", self->save_to_sent_items);
      body = graph_json_bytes (request);
      if (g_bytes_get_size (body) <= GRAPH_MAX_REQUEST)
        {
          graph_send_request (a, "application/json", g_bytes_get_data (body, NULL), g_bytes_get_size (body), "JSON", out);
          if (!graph_retry_as_upload (self, out))
            return;
        }
      else if (!self->upload)
        {
          graph_too_large (self, raw_len, g_bytes_get_size (body), out);
          return;
        }
      json_object_remove_member (json, "attachments");
    }
  graph_send_large (a, json, attachments, out);
}

/* graph_mailbox_for - the mailbox this message is sent as, or NULL after
 * filling @out */
static const char *
graph_mailbox_for (PmxTransport      *self,
                   const PmxEnvelope *envelope,
                   GraphOutcome      *out)
{
  const char *at;

  if (self->mailbox != NULL)
    return self->mailbox;
  at = strrchr (envelope->sender, '@');
  if (envelope->sender[0] != '\0' && at != NULL)
    for (guint i = 0; self->allowed_senders[i] != NULL; i++)
      {
        const char *allowed = self->allowed_senders[i];

        if (allowed[0] == '@' ? g_ascii_strcasecmp (at, allowed) == 0
                              : g_ascii_strcasecmp (envelope->sender, allowed) == 0)
          return envelope->sender;
      }
  graph_outcome_set (out, PMX_FAILURE_PERMANENT, 0, "5.7.1",
                     "transport '%s': mailbox is from_envelope and the sender <%s> is not in allowed_senders "
                     "— add the address or its @domain to allowed_senders, or route the sender elsewhere",
                     self->name, envelope->sender);
  return NULL;
}

/* graph_attempt_run - one send of @raw to a->envelope's recipients */
static void
graph_attempt_run (GraphAttempt *a,
                   const guint8 *raw,
                   gsize         raw_len,
                   GraphOutcome *out)
{
  g_autoptr(GraphMessage) message = graph_message_parse (raw, raw_len, a->envelope);
  PmxTransport *self = a->session->transport;

  if (message == NULL)
    {
      graph_outcome_set (out, PMX_FAILURE_PERMANENT, 0, "5.6.0",
                         "transport '%s': the message has no RFC 5322 header that Graph could read", self->name);
      return;
    }
  graph_send_one (a, message, raw, raw_len, out);
}

/* graph_apply - put @out into @result for every recipient still pending */
static void
graph_apply (const GraphOutcome *out,
             PmxResult          *result)
{
  if (out->pause > 0)
    pmx_result_pause_transport (result, out->pause, out->text);
  if (out->failure == PMX_FAILURE_NONE)
    pmx_result_set_pending (result, PMX_RCPT_DELIVERED, out->code, out->enhanced, out->text);
  else
    pmx_result_fail (result, out->failure, out->code, out->enhanced, "%s", out->text);
}

/* graph_isolate - after ErrorInvalidRecipients on several recipients:
 * Graph refused the whole message and does not say which address it
 * disliked.  Rather than bounce every recipient for one bad address, send
 * to each on its own: the good ones are delivered (their copy names only
 * them), the bad ones bounce with Graph's reason.  A throttling answer
 * stops the round: the rest are deferred. */
static void
graph_isolate (GraphAttempt *a,
               const guint8 *raw,
               gsize         raw_len,
               PmxResult    *result)
{
  const PmxEnvelope *envelope = a->envelope;
  gboolean paused = FALSE;

  for (gsize i = 0; i < envelope->n_recipients && !paused; i++)
    {
      const char *one[] = { envelope->recipients[i], NULL };
      PmxEnvelope single = *envelope;
      GraphOutcome each = { 0 };

      single.recipients = one;
      single.n_recipients = 1;
      a->envelope = &single;
      graph_attempt_run (a, raw, raw_len, &each);
      a->envelope = envelope;
      if (each.pause > 0)
        {
          pmx_result_pause_transport (result, each.pause, each.text);
          paused = TRUE;
        }
      pmx_result_set_recipient (result, i,
                                each.failure == PMX_FAILURE_NONE ? PMX_RCPT_DELIVERED
                                : each.failure == PMX_FAILURE_PERMANENT ? PMX_RCPT_BOUNCED
                                : PMX_RCPT_DEFERRED,
                                each.code, each.enhanced, each.text);
      if (paused)
        pmx_result_set_pending (result, PMX_RCPT_DEFERRED, each.code, each.enhanced, each.text);
      g_free (each.text);
    }
}

/* graph_send - one message: resolve the mailbox, take a slot, send; on
 * ErrorInvalidRecipients with several recipients find the bad one(s) */
static void
graph_send (PmxSession        *session,
            const PmxEnvelope *envelope,
            const guint8      *message,
            gsize              message_len,
            PmxResult         *result)
{
  PmxTransport *self = session->transport;
  GraphOutcome out = { 0 };
  GraphAttempt a = { 0 };
  g_autofree char *key = NULL;
  g_autofree char *escaped = NULL;

  a.session = session;
  a.envelope = envelope;
  a.transcript = pmx_result_wants_transcript (result) ? g_string_new (NULL) : NULL;
  a.mailbox = graph_mailbox_for (self, envelope, &out);
  if (a.mailbox == NULL)
    goto done;
  if (message_len > self->max_message_size)
    {
      graph_outcome_set (&out, PMX_FAILURE_PERMANENT, 0, "5.3.4",
                         "transport '%s': the message is %" G_GSIZE_FORMAT " bytes, over the tenant's message "
                         "size limit of %" G_GSIZE_FORMAT " bytes (max_message_size)",
                         self->name, message_len, self->max_message_size);
      goto done;
    }
  escaped = g_uri_escape_string (a.mailbox, G_URI_RESERVED_CHARS_ALLOWED_IN_PATH_ELEMENT, FALSE);
  a.mailbox_path = g_strconcat (self->graph_url, "/users/", escaped, NULL);
  key = g_ascii_strdown (a.mailbox, -1);

  graph_slot_acquire (self, key);
  graph_attempt_run (&a, message, message_len, &out);

  if (out.invalid_recipients && envelope->n_recipients > 1)
    {
      graph_isolate (&a, message, message_len, result);
      graph_slot_release (self, key);
      goto cleanup;
    }
  graph_slot_release (self, key);

done:
  graph_apply (&out, result);
cleanup:
  if (a.transcript != NULL)
    {
      pmx_result_set_transcript (result, a.transcript->str);
      g_string_free (a.transcript, TRUE);
    }
  g_free (out.text);
  g_free (a.mailbox_path);
  pmx_secret_free (a.token);
}

/* graph_jwt_claims - the claims of @token when it is a JWT, else NULL */
static JsonObject *
graph_jwt_claims (const char *token)
{
  const char *dot = strchr (token, '.');
  const char *dot2 = dot != NULL ? strchr (dot + 1, '.') : NULL;
  g_autofree char *part = NULL;
  g_autofree guchar *json = NULL;
  g_autoptr(JsonParser) parser = json_parser_new ();
  gsize len = 0;

  if (dot2 == NULL)
    return NULL;
  part = g_strndup (dot + 1, (gsize) (dot2 - dot - 1));
  g_strdelimit (part, "-", '+');
  g_strdelimit (part, "_", '/');
  {
    g_autofree char *padded = g_strdup_printf ("%s%s", part, (strlen (part) % 4) == 2 ? "==" : (strlen (part) % 4) == 3 ? "=" : "");

    json = g_base64_decode (padded, &len);
  }
  if (json == NULL || len == 0 || !json_parser_load_from_data (parser, (const char *) json, (gssize) len, NULL)
      || !JSON_NODE_HOLDS_OBJECT (json_parser_get_root (parser)))
    return NULL;
  return json_object_ref (json_node_get_object (json_parser_get_root (parser)));
}

/* graph_check_token - doctor's token step; returns the token or NULL after a FAIL */
static char *
graph_check_token (PmxTransport *self,
                   PmxReport    *report,
                   gboolean     *out_ok)
{
  g_auto(PmxTokenStatus) status = { 0 };
  g_autoptr(GError) error = NULL;
  g_autoptr(JsonObject) claims = NULL;
  g_autofree char *expires = NULL;
  g_autofree char *roles = NULL;
  char *token = pmx_token_source_get_token (self->tokens, FALSE, NULL, &error);

  pmx_token_source_get_status (self->tokens, &status);
  if (token == NULL)
    {
      pmx_report_add (report, PMX_CHECK_FAIL, "token", "from %s: %s%s",
                      pmx_token_source_get_token_endpoint (self->tokens), error->message,
                      g_error_matches (error, PMX_OAUTH2_ERROR, PMX_OAUTH2_ERROR_NEEDS_LOGIN)
                        ? " — run postmux auth login" : "");
      return NULL;
    }
  if (status.expires_at > 0)
    {
      g_autoptr(GDateTime) t = g_date_time_new_from_unix_utc (status.expires_at);

      expires = t != NULL ? g_date_time_format_iso8601 (t) : NULL;
    }
  claims = graph_jwt_claims (token);
  if (claims != NULL && json_object_has_member (claims, "roles")
      && JSON_NODE_HOLDS_ARRAY (json_object_get_member (claims, "roles")))
    {
      JsonArray *array = json_object_get_array_member (claims, "roles");
      GString *s = g_string_new (NULL);

      for (guint i = 0; i < json_array_get_length (array); i++)
        g_string_append_printf (s, "%s%s", i > 0 ? " " : "", json_array_get_string_element (array, i));
      roles = g_string_free (s, FALSE);
    }
  else if (claims != NULL && json_object_has_member (claims, "scp"))
    roles = g_strdup (json_object_get_string_member_with_default (claims, "scp", ""));
  if (roles != NULL && roles[0] == '\0')
    g_clear_pointer (&roles, g_free);

  pmx_report_add (report, PMX_CHECK_OK, "token",
                  "%s grant from %s (client %s): access token valid until %s; %s%s",
                  status.grant != NULL ? status.grant : "-", pmx_token_source_get_token_endpoint (self->tokens),
                  pmx_token_source_get_client_id (self->tokens), expires != NULL ? expires : "-",
                  claims == NULL ? "the token is not a JWT, its permissions cannot be read here"
                                 : roles != NULL ? "permissions in the token: " : "the token carries no roles or scopes",
                  roles != NULL ? roles : "");
  if (claims != NULL)
    {
      gboolean send = roles != NULL && strstr (roles, "Mail.Send") != NULL;
      gboolean readwrite = roles != NULL && strstr (roles, "Mail.ReadWrite") != NULL;

      *out_ok = send;
      if (!send)
        pmx_report_add (report, PMX_CHECK_FAIL, "permission",
                        "the token has no Mail.Send: grant the app the Mail.Send application permission "
                        "(with admin consent) and get a new token");
      else if (self->upload && !readwrite)
        pmx_report_add (report, PMX_CHECK_WARN, "permission",
                        "Mail.Send but no Mail.ReadWrite: messages over ~4 MB (large_messages upload) will fail "
                        "— grant Mail.ReadWrite, or set large_messages to reject");
      else
        pmx_report_add (report, PMX_CHECK_OK, "permission", "Mail.Send%s", readwrite ? " and Mail.ReadWrite" : "");
    }
  return token;
}

/* graph_check - `postmux doctor`: token, the mailbox, verdict */
static gboolean
graph_check (PmxTransport *self,
             PmxReport    *report)
{
  PmxHttpOptions options = {
    .struct_size = sizeof (PmxHttpOptions),
    .ca_file = self->ca_file,
    .timeout_ms = 30000,
  };
  g_autoptr(PmxHttp) http = NULL;
  g_autofree char *escaped = NULL;
  g_autofree char *url = NULL;
  g_autofree char *code = NULL;
  g_autofree char *message = NULL;
  g_auto(PmxHttpResponse) r = { 0 };
  g_autoptr(GError) error = NULL;
  gboolean ok = TRUE;
  char *token = graph_check_token (self, report, &ok);
  PmxHttpRequest request = { .method = "GET" };

  if (token == NULL)
    {
      pmx_report_add (report, PMX_CHECK_FAIL, "verdict", "cannot send through %s: no access token", self->graph_url);
      return FALSE;
    }
  if (self->mailbox == NULL)
    {
      pmx_report_add (report, PMX_CHECK_OK, "mailbox", "from_envelope: the sender, when in allowed_senders (%u entries)",
                      g_strv_length (self->allowed_senders));
      pmx_secret_free (token);
      goto verdict;
    }
  http = pmx_http_new (&options);
  escaped = g_uri_escape_string (self->mailbox, G_URI_RESERVED_CHARS_ALLOWED_IN_PATH_ELEMENT, FALSE);
  url = g_strconcat (self->graph_url, "/users/", escaped, NULL);
  request.url = url;
  request.bearer = token;
  if (!pmx_http_send (http, &request, &r, NULL, &error))
    {
      pmx_report_add (report, PMX_CHECK_FAIL, "mailbox", "GET /users/%s: %s", self->mailbox, error->message);
      pmx_secret_free (token);
      ok = FALSE;
      goto verdict;
    }
  pmx_secret_free (token);
  graph_error_fields (&r, &code, &message);
  if (r.status == 200)
    {
      g_autofree char *upn = graph_json_member (&r, "userPrincipalName");
      g_autofree char *mail = graph_json_member (&r, "mail");

      pmx_report_add (report, PMX_CHECK_OK, "mailbox", "%s exists (userPrincipalName %s, mail %s)", self->mailbox,
                      upn != NULL ? upn : "-", mail != NULL ? mail : "-");
    }
  else if (r.status == 403 || r.status == 401)
    pmx_report_add (report, PMX_CHECK_WARN, "mailbox",
                    "GET /users/%s answered %u%s%s: the app may not read users (User.Read.All), so the mailbox "
                    "could not be checked; sending needs only Mail.Send", self->mailbox, r.status,
                    code != NULL ? " " : "", code != NULL ? code : "");
  else if (r.status == 404 || g_strcmp0 (code, "MailboxNotEnabledForRESTAPI") == 0)
    {
      pmx_report_add (report, PMX_CHECK_FAIL, "mailbox",
                      "GET /users/%s answered %u %s%s%s%s: %s — set mailbox to the user id or user principal "
                      "name of a licensed Exchange Online mailbox", self->mailbox,
                      r.status, code != NULL ? code : "", message != NULL ? " (" : "", message != NULL ? message : "",
                      message != NULL ? ")" : "",
                      g_strcmp0 (code, "MailboxNotEnabledForRESTAPI") == 0
                        ? "the mailbox cannot use Graph (inactive, unlicensed, soft-deleted or on-premises)"
                        : "no such mailbox in the tenant");
      ok = FALSE;
    }
  else
    {
      pmx_report_add (report, r.status >= 500 ? PMX_CHECK_WARN : PMX_CHECK_FAIL, "mailbox",
                      "GET /users/%s answered %u%s%s", self->mailbox, r.status, code != NULL ? " " : "",
                      code != NULL ? code : "");
      ok = ok && r.status >= 500;
    }

verdict:
  if (ok)
    pmx_report_add (report, PMX_CHECK_OK, "verdict", "ready to send through %s as %s", self->graph_url,
                    self->mailbox != NULL ? self->mailbox : "the envelope sender");
  else
    pmx_report_add (report, PMX_CHECK_FAIL, "verdict",
                    "cannot send through %s as %s: fix the step marked FAIL above", self->graph_url,
                    self->mailbox != NULL ? self->mailbox : "the envelope sender");
  return ok;
}

static const PmxTransportOps graph_ops = {
  .create = graph_create,
  .destroy = graph_destroy,
  .open_session = graph_open_session,
  .send = graph_send,
  .close_session = graph_close_session,
  .check = graph_check,
};

PMX_TRANSPORT_DEFINE (graph, "graph", "0.1.0", "GPL-3.0-or-later",
                      "sends through the Microsoft Graph API (sendMail, upload sessions) with an OAuth2 app "
                      "registration, for tenants without SMTP AUTH",
                      GRAPH_SCHEMA, &graph_ops)

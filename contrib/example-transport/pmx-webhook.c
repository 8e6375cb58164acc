/* SPDX-License-Identifier: MIT */
/*
 * pmx-webhook.c - an example Postmux transport, built outside the Postmux
 * tree against the installed SDK only: it POSTs each message to a URL.
 *
 * One request per delivery attempt:
 *
 *   POST <url>
 *   Content-Type: application/json
 *   Idempotency-Key: <queue id>-<attempt>
 *   <each "headers" option>
 *
 *   {"queue_id": "...", "sender": "...", "recipients": ["..."],
 *    "attempt": 1, "ingress": "...", "message": "<base64 of the raw bytes>"}
 *
 * The raw message is the RFC 5322 message exactly as queued (CRLF line
 * ends), in standard base64 (RFC 4648 §4).
 *
 * Outcomes, from the receiver's HTTP status:
 *   2xx        every recipient delivered; a JSON body's "id" is kept as
 *              the remote id
 *   429        rate limited: the instance pauses for Retry-After (60 s
 *              when absent) and the recipients are deferred
 *   401, 403   credentials refused (AUTH): deferred, the host alerts
 *   408, 5xx   temporary: deferred, at Retry-After when one is given
 *   other 4xx  permanent: the recipients bounce
 * No HTTP answer at all (refused, DNS, TLS, timeout) defers the attempt
 * and marks the session broken, so the next attempt opens a new one.
 *
 * Trusts: its options, validated by the host against WEBHOOK_SCHEMA.
 * Never logs or reports a header value: the headers option is where an
 * Authorization secret goes.
 */
#include <postmux/postmux.h>

#include <string.h>

#define WEBHOOK_SCHEMA "{ \
  \"$schema\": \"http://json-schema.org/draft-07/schema#\", \
  \"title\": \"webhook transport options (example transport)\", \
  \"type\": \"object\", \
  \"additionalProperties\": false, \
  \"required\": [\"url\"], \
  \"properties\": { \
    \"url\": { \"type\": \"string\", \"minLength\": 1, \
      \"description\": \"where each message is POSTed: https://, or http:// on a loopback address\" }, \
    \"timeout\": { \"type\": \"integer\", \"minimum\": 1, \"maximum\": 600, \"default\": 30, \
      \"description\": \"seconds the whole request may take\" }, \
    \"headers\": { \"type\": \"object\", \"additionalProperties\": { \"type\": \"string\" }, \
      \"examples\": [ { \"Authorization\": \"env:WEBHOOK_AUTH\" } ], \
      \"description\": \"extra request headers; a value may be an env:NAME or file:/path secret reference\" }, \
    \"ca_file\": { \"type\": \"string\", \
      \"description\": \"PEM file of CAs trusted in addition to the system store\" } \
  } \
}"

struct _PmxTransport {
  char  *name;      /* instance name, for messages */
  char  *url;
  char  *ca_file;
  guint  timeout_ms;
  char **headers;   /* "Name: value", NULL-terminated; values are secrets */
};

/* A session owns one HTTP client: connections stay open between messages. */
struct _PmxSession {
  PmxTransport *transport;
  PmxHttp      *http;
};

/* webhook_destroy - free an instance, wiping the header values */
static void
webhook_destroy (PmxTransport *self)
{
  if (self->headers != NULL)
    for (char **h = self->headers; *h != NULL; h++)
      pmx_secret_free (*h);
  g_free (self->headers);
  g_free (self->name);
  g_free (self->url);
  g_free (self->ca_file);
  g_free (self);
}

/* webhook_create - check the URL and resolve the header values */
static PmxTransport *
webhook_create (const PmxTransportArgs *args,
                GError                **error)
{
  JsonObject *options = args->options;
  const char *url = json_object_get_string_member_with_default (options, "url", NULL);
  PmxTransport *self;

  if (!pmx_http_check_url (url, "url", error))
    return NULL;

  self = g_new0 (PmxTransport, 1);
  self->name = g_strdup (args->instance_name);
  self->url = g_strdup (url);
  self->ca_file = g_strdup (json_object_get_string_member_with_default (options, "ca_file", NULL));
  self->timeout_ms = 1000 * (guint) json_object_get_int_member_with_default (options, "timeout", 30);

  if (json_object_has_member (options, "headers"))
    {
      JsonObject *headers = json_object_get_object_member (options, "headers");
      GList *names = json_object_get_members (headers);
      guint n = 0;

      self->headers = g_new0 (char *, g_list_length (names) + 1);
      for (GList *l = names; l != NULL; l = l->next)
        {
          const char *hname = l->data;
          const char *value = json_object_get_string_member (headers, hname);
          g_autoptr(GError) local_error = NULL;
          char *resolved;

          if (strpbrk (hname, ":\r\n") != NULL || strpbrk (value, "\r\n") != NULL)
            {
              g_set_error (error, PMX_TRANSPORT_ERROR, PMX_TRANSPORT_ERROR_CONFIG,
                           "option headers.%s: a header name may not hold ':' and neither "
                           "name nor value a line break — fix the header", hname);
              g_list_free (names);
              webhook_destroy (self);
              return NULL;
            }
          resolved = pmx_secret_is_reference (value) ? pmx_secret_resolve (value, &local_error)
                                                     : g_strdup (value);
          if (resolved == NULL)
            {
              g_set_error (error, PMX_TRANSPORT_ERROR, PMX_TRANSPORT_ERROR_CONFIG,
                           "option headers.%s: %s", hname, local_error->message);
              g_list_free (names);
              webhook_destroy (self);
              return NULL;
            }
          self->headers[n++] = g_strdup_printf ("%s: %s", hname, resolved);
          pmx_secret_free (resolved);
        }
      g_list_free (names);
    }
  return self;
}

/* webhook_open_session - one HTTP client per worker */
static PmxSession *
webhook_open_session (PmxTransport *self,
                      GError      **error)
{
  PmxHttpOptions options = {
    .struct_size = sizeof (PmxHttpOptions),
    .ca_file = self->ca_file,
    .timeout_ms = self->timeout_ms,
    .user_agent = "postmux-webhook/1.0",
  };
  PmxSession *session = g_new0 (PmxSession, 1);

  session->transport = self;
  session->http = pmx_http_new (&options);
  return session;
}

/* webhook_close_session - drop the client and its connections */
static void
webhook_close_session (PmxSession *session)
{
  g_clear_pointer (&session->http, pmx_http_free);
  g_free (session);
}

/* webhook_body - the JSON document of one attempt */
static char *
webhook_body (const PmxEnvelope *envelope,
              const guint8      *message,
              gsize              message_len,
              gsize             *out_len)
{
  g_autoptr(JsonBuilder) b = json_builder_new ();
  g_autoptr(JsonGenerator) gen = json_generator_new ();
  g_autoptr(JsonNode) root = NULL;
  g_autofree char *b64 = g_base64_encode (message, message_len);

  json_builder_begin_object (b);
  json_builder_set_member_name (b, "queue_id");
  json_builder_add_string_value (b, envelope->queue_id);
  json_builder_set_member_name (b, "sender");
  json_builder_add_string_value (b, envelope->sender);
  json_builder_set_member_name (b, "recipients");
  json_builder_begin_array (b);
  for (gsize i = 0; i < envelope->n_recipients; i++)
    json_builder_add_string_value (b, envelope->recipients[i]);
  json_builder_end_array (b);
  json_builder_set_member_name (b, "attempt");
  json_builder_add_int_value (b, envelope->attempt);
  json_builder_set_member_name (b, "ingress");
  json_builder_add_string_value (b, envelope->ingress != NULL ? envelope->ingress : "");
  json_builder_set_member_name (b, "message");
  json_builder_add_string_value (b, b64);
  json_builder_end_object (b);

  root = json_builder_get_root (b);
  json_generator_set_root (gen, root);
  return json_generator_to_data (gen, out_len);
}

/* webhook_send - one POST; the status decides every recipient alike */
static void
webhook_send (PmxSession        *session,
              const PmxEnvelope *envelope,
              const guint8      *message,
              gsize              message_len,
              PmxResult         *result)
{
  PmxTransport *self = session->transport;
  g_auto(PmxHttpResponse) response = { 0, };
  g_autoptr(GError) error = NULL;
  g_autofree char *idempotency = g_strdup_printf ("Idempotency-Key: %s-%u", envelope->queue_id, envelope->attempt);
  g_autoptr(GPtrArray) headers = g_ptr_array_new ();
  gsize body_len = 0;
  g_autofree char *body = webhook_body (envelope, message, message_len, &body_len);
  PmxHttpRequest request = {
    .method = "POST",
    .url = self->url,
    .content_type = "application/json",
    .body = (const guint8 *) body,
    .body_len = body_len,
  };
  guint status;

  g_ptr_array_add (headers, idempotency);
  if (self->headers != NULL)
    for (char **h = self->headers; *h != NULL; h++)
      g_ptr_array_add (headers, *h);
  g_ptr_array_add (headers, NULL);
  request.headers = (const char *const *) headers->pdata;

  if (!pmx_http_send (session->http, &request, &response, NULL, &error))
    {
      gboolean config = g_error_matches (error, PMX_TRANSPORT_ERROR, PMX_TRANSPORT_ERROR_CONFIG);

      pmx_result_set_session_broken (result);
      pmx_result_fail (result, config ? PMX_FAILURE_CONFIG : PMX_FAILURE_TEMPORARY, 0, "4.4.1",
                       "webhook %s: %s", self->name, error->message);
      return;
    }

  status = response.status;
  if (status >= 200 && status < 300)
    {
      g_autoptr(JsonNode) json = pmx_http_response_get_json (&response);

      if (json != NULL && JSON_NODE_HOLDS_OBJECT (json))
        {
          const char *id = json_object_get_string_member_with_default (json_node_get_object (json), "id", NULL);

          if (id != NULL)
            pmx_result_set_remote_id (result, id);
        }
      pmx_result_set_pending (result, PMX_RCPT_DELIVERED, status, "2.0.0", "webhook accepted the message");
    }
  else if (status == 429)
    {
      pmx_result_pause_transport (result, response.retry_after >= 0 ? response.retry_after : 60,
                                  "the webhook answered 429 Too Many Requests");
      pmx_result_fail (result, PMX_FAILURE_TEMPORARY, status, "4.7.0",
                       "webhook %s: rate limited (HTTP 429)", self->name);
    }
  else if (status == 401 || status == 403)
    pmx_result_fail (result, PMX_FAILURE_AUTH, status, "4.7.0",
                     "webhook %s: the receiver refused our credentials (HTTP %u) — check the "
                     "Authorization value under headers", self->name, status);
  else if (status == 408 || status >= 500)
    {
      if (response.retry_after >= 0)
        pmx_result_set_retry_after (result, response.retry_after);
      pmx_result_fail (result, PMX_FAILURE_TEMPORARY, status, "4.0.0",
                       "webhook %s: the receiver failed (HTTP %u)", self->name, status);
    }
  else
    pmx_result_fail (result, PMX_FAILURE_PERMANENT, status, "5.0.0",
                     "webhook %s: the receiver refused the message (HTTP %u)", self->name, status);
}

/* webhook_check - for `postmux doctor`: the URL is usable */
static gboolean
webhook_check (PmxTransport *self,
               PmxReport    *report)
{
  g_autoptr(GError) error = NULL;

  if (!pmx_http_check_url (self->url, "url", &error))
    {
      pmx_report_add (report, PMX_CHECK_FAIL, "url", "%s", error->message);
      return FALSE;
    }
  pmx_report_add (report, PMX_CHECK_OK, "url", "%s", self->url);
  return TRUE;
}

static const PmxTransportOps webhook_ops = {
  .create = webhook_create,
  .destroy = webhook_destroy,
  .open_session = webhook_open_session,
  .send = webhook_send,
  .close_session = webhook_close_session,
  .check = webhook_check,
};

PMX_TRANSPORT_DEFINE (webhook, "webhook", "1.0.0", "MIT",
                      "POSTs each message as JSON (envelope + base64 raw bytes) to a URL",
                      WEBHOOK_SCHEMA, &webhook_ops)

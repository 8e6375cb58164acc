/* SPDX-License-Identifier: GPL-3.0-or-later */
/*
 * pmx-httpd.c - the HTTP submission API: a libsoup 3 SoupServer on the
 * main GMainContext.
 *
 * What: POST /v1/messages takes JSON (validated against
 * schemas/message.schema.json, then built into MIME by pmx-mime.c) or a
 * raw message/rfc822 body with its envelope in the query (?from=&to=&to=).
 * The request is paused while a worker thread parses, validates and builds
 * (CPU work that must not stall the loop), then while the queue commits;
 * 202 {"id": ...} is written only after the commit is durable.  GET
 * /v1/messages/{id}, /v1/health and /metrics read the queue from a worker
 * thread too.  Follows RFC 9110 (semantics, 401/403/411/413/415/429/503 and
 * Retry-After), RFC 6750 (Bearer tokens), the Prometheus text exposition
 * format 0.0.4, and the IETF Idempotency-Key header draft.
 *
 * Trusts: the config (API keys are stored as SHA-256 of the Bearer token
 * and compared in constant time).  Nothing in a request: sizes are checked
 * from Content-Length before the body is read, JSON nesting is bounded
 * before parsing, every field is validated twice (schema, then code), and
 * a key may only use its own senders, and pick a transport or route
 * (X-Postmux-Transport / X-Postmux-Route headers, matched by routes with a
 * header rule) only with may_choose_transport.  /v1/health and /metrics
 * need no key: bind the listener where only trusted clients reach it.
 *
 * Idempotency-Key: passed to the queue, which dedups per ingress
 * ("api:<key name>"); the key is remembered for as long as the first
 * message stays in the queue (delivered messages are purged after
 * queue.retention, 7 days by default), so http.idempotency_window is met
 * whenever the retention is at least as long.  A repeat answers 202 with
 * the first id and the header Idempotent-Replayed: true, and queues nothing.
 *
 * Fails: every refusal is JSON {"error": ...} with the status that says
 * why; schema problems add "problems": [{pointer, keyword, message}].
 * A queue that is busy answers 429, one that is full or closing 503, both
 * with Retry-After.  Nothing is queued for any answer but 202.
 */
#include "pmx-httpd.h"

#include "pmx-duration.h"
#include "pmx-log.h"
#include "pmx-mime.h"
#include "pmx-router.h"
#include "pmx-schema.h"
#include "postmux-resources.h"

#include <postmux/postmux.h>

#include <gio/gnetworking.h>
#include <gmime/gmime.h>
#include <libsoup/soup.h>
#include <string.h>

#define HTTPD_DEFAULT_MAX_SIZE  (25 * 1024 * 1024)
#define HTTPD_MAX_IDEMPOTENCY   255
#define HTTPD_SHUTDOWN_WAIT     (30 * G_USEC_PER_SEC)
#define HTTPD_LISTEN_BACKLOG    511   /* nginx's default; the kernel caps it at net.core.somaxconn */
#define HTTPD_STATUS_TOO_MANY_REQUESTS 429   /* RFC 6585; libsoup has no name for it */

G_DEFINE_QUARK (pmx-httpd-error-quark, pmx_httpd_error)

G_DEFINE_AUTOPTR_CLEANUP_FUNC (InternetAddressList, g_object_unref)

typedef struct {
  char     *name;
  guint8    hash[32];       /* SHA-256 of the Bearer token */
  char    **senders;
  gboolean  may_choose;     /* may_choose_transport */
} HttpdKey;

struct _PmxHttpd {
  PmxConfig   *config;      /* the listeners' config, then each reload's */
  PmxQueue    *queue;       /* borrowed; outlives the httpd */
  void       (*wake) (gpointer);
  gpointer     wake_data;
  SoupServer  *server;
  GPtrArray   *keys;        /* HttpdKey */
  gsize        max_size;
  gint64       idempotency_window;
  guint        pending;     /* jobs in a thread or in the queue (main thread only) */
  JsonNode   *(*transports_func) (gpointer);   /* set before start; any thread */
  gpointer     transports_data;
  gboolean     closing;
};

typedef enum {
  JOB_SUBMIT_JSON,
  JOB_SUBMIT_RAW,
  JOB_GET,
  JOB_HEALTH,
  JOB_METRICS,
} HttpdJobKind;

/* One paused request, from the handler to its answer. */
typedef struct {
  PmxHttpd          *httpd;
  SoupServerMessage *msg;
  gulong             finished_id;
  gboolean           gone;            /* the connection ended: answer nobody */
  HttpdJobKind       kind;
  PmxQueue          *queue;
  /* in: copied on the main thread so the worker needs no config */
  GBytes            *body;
  char              *key_name;
  char             **senders;
  gboolean           may_choose;
  char             **transports;      /* configured transport names */
  char             **routes;          /* configured route names */
  char              *env_from;        /* raw: ?from= */
  char             **env_to;          /* raw: ?to= */
  char              *id;              /* GET */
  char              *idempotency_key;
  /* out */
  guint              status;          /* 0: submit sender/recipients/data */
  char              *response;
  const char        *content_type;
  char              *sender;
  GPtrArray         *recipients;
  GBytes            *data;
} HttpdJob;

/* httpd_get_object - member @name of @obj if it is an object, else NULL */
static JsonObject *
httpd_get_object (JsonObject *obj,
                  const char *name,
                  gpointer    unused)
{
  JsonNode *node = obj != NULL ? json_object_get_member (obj, name) : NULL;

  return node != NULL && JSON_NODE_HOLDS_OBJECT (node) ? json_node_get_object (node) : NULL;
}

/* httpd_key_free - GDestroyNotify for HttpdKey */
static void
httpd_key_free (gpointer data)
{
  HttpdKey *key = data;

  g_free (key->name);
  g_strfreev (key->senders);
  memset (key->hash, 0, sizeof key->hash);
  g_free (key);
}

/* httpd_message_schema - schemas/message.schema.json, compiled once */
static PmxSchema *
httpd_message_schema (void)
{
  static gsize once;
  static PmxSchema *schema;

  if (g_once_init_enter (&once))
    {
      g_autoptr(GBytes) bytes = g_resource_lookup_data (postmux_get_resource (), "/dev/postmux/message.schema.json",
                                                        G_RESOURCE_LOOKUP_FLAGS_NONE, NULL);
      g_autoptr(GError) error = NULL;
      PmxSchema *s;

      g_assert (bytes != NULL);
      s = pmx_schema_new_from_string (g_bytes_get_data (bytes, NULL), NULL, &error);
      if (s == NULL)
        g_error ("built-in message schema: %s", error->message);
      schema = s;
      g_once_init_leave (&once, 1);
    }
  return schema;
}

/* ---- answers ------------------------------------------------------------ */

/* httpd_json_text - serialise the root of @b */
static char *
httpd_json_text (JsonBuilder *b)
{
  g_autoptr(JsonNode) root = json_builder_get_root (b);

  return json_to_string (root, FALSE);
}

/* httpd_error_text - {"error": @message} */
static char *
httpd_error_text (const char *message)
{
  g_autoptr(JsonBuilder) b = json_builder_new ();

  json_builder_begin_object (b);
  json_builder_set_member_name (b, "error");
  json_builder_add_string_value (b, message);
  json_builder_end_object (b);
  return httpd_json_text (b);
}

/* httpd_respond - set status and body of @msg */
static void
httpd_respond (SoupServerMessage *msg,
               guint              status,
               const char        *content_type,
               char              *body)   /* transfer full */
{
  soup_server_message_set_status (msg, status, NULL);
  soup_server_message_set_response (msg, content_type, SOUP_MEMORY_TAKE, body, strlen (body));
}

/* httpd_respond_error - a JSON error answer */
static void
httpd_respond_error (SoupServerMessage *msg,
                     guint              status,
                     const char        *message)
{
  httpd_respond (msg, status, "application/json", httpd_error_text (message));
}

/* ---- who is asking ----------------------------------------------------- */

/* httpd_parse_keys - auth.api_keys of @config */
static GPtrArray *
httpd_parse_keys (PmxConfig *config,
                  GError   **error)
{
  g_autoptr(GPtrArray) keys = g_ptr_array_new_with_free_func (httpd_key_free);
  JsonObject *auth = httpd_get_object (config->root, "auth", NULL);
  JsonObject *api_keys = auth != NULL ? httpd_get_object (auth, "api_keys", NULL) : NULL;
  g_autoptr(GList) names = api_keys != NULL ? json_object_get_members (api_keys) : NULL;

  for (GList *l = names; l != NULL; l = l->next)
    {
      JsonObject *k = json_object_get_object_member (api_keys, l->data);
      const char *hash = json_object_get_string_member_with_default (k, "key_hash", "");
      JsonArray *senders = json_object_get_array_member (k, "senders");
      HttpdKey *key = g_new0 (HttpdKey, 1);

      key->name = g_strdup (l->data);
      g_ptr_array_add (keys, key);
      if (!g_str_has_prefix (hash, "sha256:") || strlen (hash) != 7 + 64)
        {
          g_set_error (error, PMX_HTTPD_ERROR, PMX_HTTPD_ERROR_CONFIG,
                       "auth.api_keys.%s.key_hash: expected sha256:<64 hex digits> as `postmux passwd --api-key` prints",
                       key->name);
          return NULL;
        }
      for (guint i = 0; i < 32; i++)
        {
          int hi = g_ascii_xdigit_value (hash[7 + 2 * i]), lo = g_ascii_xdigit_value (hash[8 + 2 * i]);

          if (hi < 0 || lo < 0)
            {
              g_set_error (error, PMX_HTTPD_ERROR, PMX_HTTPD_ERROR_CONFIG,
                           "auth.api_keys.%s.key_hash: not hexadecimal", key->name);
              return NULL;
            }
          key->hash[i] = (guint8) (hi << 4 | lo);
        }
      key->senders = g_new0 (char *, (senders != NULL ? json_array_get_length (senders) : 0) + 1);
      for (guint i = 0; senders != NULL && i < json_array_get_length (senders); i++)
        key->senders[i] = g_ascii_strdown (json_array_get_string_element (senders, i), -1);
      key->may_choose = json_object_get_boolean_member_with_default (k, "may_choose_transport", FALSE);
    }
  return g_steal_pointer (&keys);
}

/* httpd_authenticate - the key whose hash matches the Bearer token, or
 * NULL; every key is compared in full, in constant time */
static HttpdKey *
httpd_authenticate (PmxHttpd          *httpd,
                    SoupServerMessage *msg)
{
  const char *auth = soup_message_headers_get_one (soup_server_message_get_request_headers (msg), "Authorization");
  g_autoptr(GChecksum) sum = NULL;
  guint8 digest[32];
  gsize digest_len = sizeof digest;
  HttpdKey *found = NULL;

  if (auth == NULL || g_ascii_strncasecmp (auth, "Bearer ", 7) != 0)
    return NULL;
  auth += 7;
  while (*auth == ' ')
    auth++;
  if (*auth == '\0')
    return NULL;
  sum = g_checksum_new (G_CHECKSUM_SHA256);
  g_checksum_update (sum, (const guchar *) auth, (gssize) strlen (auth));
  g_checksum_get_digest (sum, digest, &digest_len);
  for (guint i = 0; i < httpd->keys->len; i++)
    {
      HttpdKey *key = g_ptr_array_index (httpd->keys, i);
      guint8 diff = 0;

      for (gsize j = 0; j < sizeof digest; j++)
        diff |= (guint8) (digest[j] ^ key->hash[j]);
      if (diff == 0 && found == NULL)
        found = key;
    }
  memset (digest, 0, sizeof digest);
  return found;
}

/* httpd_unauthorized - 401 with the Bearer challenge */
static void
httpd_unauthorized (SoupServerMessage *msg)
{
  soup_message_headers_replace (soup_server_message_get_response_headers (msg), "WWW-Authenticate",
                                "Bearer realm=\"postmux\"");
  httpd_respond_error (msg, SOUP_STATUS_UNAUTHORIZED,
                       "missing or unknown API key: send Authorization: Bearer <key>");
}

/* httpd_sender_allowed - does a pattern of @senders ("a@b", "@domain",
 * "*"; lower case) allow @address */
static gboolean
httpd_sender_allowed (char *const *senders,
                      const char  *address)
{
  const char *at = strrchr (address, '@');

  for (gsize i = 0; senders != NULL && senders[i] != NULL; i++)
    {
      const char *p = senders[i];

      if (strcmp (p, "*") == 0)
        return TRUE;
      if (p[0] == '@' && at != NULL && g_ascii_strcasecmp (p + 1, at + 1) == 0)
        return TRUE;
      if (p[0] != '@' && g_ascii_strcasecmp (p, address) == 0)
        return TRUE;
    }
  return FALSE;
}

/* ---- jobs --------------------------------------------------------------- */

/* httpd_job_finished - SoupServerMessage::finished while paused */
static void
httpd_job_finished (SoupServerMessage *msg,
                    gpointer           user_data)
{
  HttpdJob *job = user_data;

  job->gone = TRUE;
}

/* httpd_job_new - pause @msg and count it as pending */
static HttpdJob *
httpd_job_new (PmxHttpd          *httpd,
               SoupServerMessage *msg,
               HttpdJobKind       kind)
{
  HttpdJob *job = g_new0 (HttpdJob, 1);

  job->httpd = httpd;
  job->msg = g_object_ref (msg);
  job->kind = kind;
  job->queue = httpd->queue;
  job->finished_id = g_signal_connect (msg, "finished", G_CALLBACK (httpd_job_finished), job);
  httpd->pending++;
  soup_server_message_pause (msg);
  return job;
}

/* httpd_job_free - free a job's data */
static void
httpd_job_free (HttpdJob *job)
{
  g_clear_pointer (&job->body, g_bytes_unref);
  g_free (job->key_name);
  g_strfreev (job->senders);
  g_strfreev (job->transports);
  g_strfreev (job->routes);
  g_free (job->env_from);
  g_strfreev (job->env_to);
  g_free (job->id);
  g_free (job->idempotency_key);
  g_free (job->response);
  g_free (job->sender);
  g_clear_pointer (&job->recipients, g_ptr_array_unref);
  g_clear_pointer (&job->data, g_bytes_unref);
  g_free (job);
}

/* httpd_job_answer - write the job's answer (unless the client left),
 * unpause, and forget the job */
static void
httpd_job_answer (HttpdJob *job)
{
  PmxHttpd *httpd = job->httpd;

  g_signal_handler_disconnect (job->msg, job->finished_id);
  if (!job->gone)
    {
      httpd_respond (job->msg, job->status, job->content_type != NULL ? job->content_type : "application/json",
                     g_steal_pointer (&job->response));
      soup_server_message_unpause (job->msg);
    }
  g_object_unref (job->msg);
  httpd_job_free (job);
  httpd->pending--;
}

/* httpd_job_fail - set an error answer */
static void
httpd_job_fail (HttpdJob   *job,
                guint       status,
                const char *message)
{
  job->status = status;
  g_free (job->response);
  job->response = httpd_error_text (message);
}

/* httpd_job_problems - 400 with schema-like problems */
static void
httpd_job_problems (HttpdJob   *job,
                    const char *message,
                    GPtrArray  *problems)   /* PmxSchemaProblem */
{
  g_autoptr(JsonBuilder) b = json_builder_new ();

  json_builder_begin_object (b);
  json_builder_set_member_name (b, "error");
  json_builder_add_string_value (b, message);
  json_builder_set_member_name (b, "problems");
  json_builder_begin_array (b);
  for (guint i = 0; i < problems->len; i++)
    {
      PmxSchemaProblem *p = g_ptr_array_index (problems, i);

      json_builder_begin_object (b);
      json_builder_set_member_name (b, "pointer");
      json_builder_add_string_value (b, p->pointer);
      json_builder_set_member_name (b, "keyword");
      json_builder_add_string_value (b, p->keyword);
      json_builder_set_member_name (b, "message");
      json_builder_add_string_value (b, p->message);
      json_builder_end_object (b);
    }
  json_builder_end_array (b);
  json_builder_end_object (b);
  job->status = SOUP_STATUS_BAD_REQUEST;
  g_free (job->response);
  job->response = httpd_json_text (b);
}

/* httpd_job_problem - 400 with one problem */
static void
httpd_job_problem (HttpdJob   *job,
                   const char *pointer,
                   const char *keyword,
                   const char *message)
{
  g_autoptr(GPtrArray) problems = g_ptr_array_new_with_free_func ((GDestroyNotify) pmx_schema_problem_free);
  PmxSchemaProblem *p = g_new0 (PmxSchemaProblem, 1);

  p->pointer = g_strdup (pointer);
  p->keyword = g_strdup (keyword);
  p->message = g_strdup (message);
  g_ptr_array_add (problems, p);
  httpd_job_problems (job, "the message is not valid", problems);
}

/* httpd_mime_keyword - the "keyword" of a pmx-mime refusal */
static const char *
httpd_mime_keyword (const GError *error)
{
  switch (error->code)
    {
    case PMX_MIME_ERROR_ADDRESS:
      return "address";
    case PMX_MIME_ERROR_RECIPIENTS:
      return "recipients";
    case PMX_MIME_ERROR_HEADER:
      return "header";
    case PMX_MIME_ERROR_ENCODING:
      return "contentEncoding";
    default:
      return "type";
    }
}

/* httpd_check_override - transport/route: allowed for the key, and known */
static gboolean
httpd_check_override (HttpdJob   *job,
                      JsonObject *obj,
                      const char *member,
                      char      **known)
{
  const char *value;
  g_autofree char *pointer = g_strconcat ("/", member, NULL);

  if (!json_object_has_member (obj, member))
    return TRUE;
  if (!job->may_choose)
    {
      g_autofree char *text = g_strdup_printf ("API key \"%s\" may not choose the %s (may_choose_transport is not set)",
                                               job->key_name, member);

      httpd_job_fail (job, SOUP_STATUS_FORBIDDEN, text);
      return FALSE;
    }
  value = json_object_get_string_member (obj, member);
  if (!g_strv_contains ((const char *const *) known, value))
    {
      g_autofree char *text = g_strdup_printf ("no %s named \"%s\" in the configuration", member, value);

      httpd_job_problem (job, pointer, "enum", text);
      return FALSE;
    }
  return TRUE;
}

/* httpd_work_json - worker: parse, validate, build a JSON submission */
static void
httpd_work_json (HttpdJob *job)
{
  g_autoptr(GError) error = NULL;
  g_autoptr(JsonObject) obj = NULL;
  g_autoptr(JsonNode) node = NULL;
  g_autoptr(GPtrArray) problems = NULL;
  g_autofree char *pointer = NULL;
  gsize len = 0;
  const char *text = g_bytes_get_data (job->body, &len);

  obj = pmx_mime_parse_request (text != NULL ? text : "", len, &error);
  if (obj == NULL)
    {
      httpd_job_fail (job, SOUP_STATUS_BAD_REQUEST, error->message);
      return;
    }
  node = json_node_new (JSON_NODE_OBJECT);
  json_node_set_object (node, obj);
  if (!pmx_schema_validate (httpd_message_schema (), node, NULL, &problems, &error))
    {
      if (error != NULL)
        httpd_job_fail (job, SOUP_STATUS_INTERNAL_SERVER_ERROR, error->message);
      else
        httpd_job_problems (job, "the message does not match schemas/message.schema.json", problems);
      return;
    }
  if (!httpd_check_override (job, obj, "transport", job->transports)
      || !httpd_check_override (job, obj, "route", job->routes))
    return;
  job->data = pmx_mime_build_full (obj, &job->sender, &job->recipients, &pointer, &error);
  if (job->data == NULL)
    {
      const char *colon = strstr (error->message, ": ");

      httpd_job_problem (job, pointer != NULL ? pointer : "", httpd_mime_keyword (error),
                         colon != NULL ? colon + 2 : error->message);
      return;
    }
  if (!httpd_sender_allowed (job->senders, job->sender))
    {
      g_autofree char *msg = g_strdup_printf ("API key \"%s\" may not send as <%s>", job->key_name, job->sender);

      g_clear_pointer (&job->data, g_bytes_unref);
      httpd_job_fail (job, SOUP_STATUS_FORBIDDEN, msg);
    }
}

/* httpd_normalize - raw message: CRLF line ends; NULL on a bare CR or NUL */
static GBytes *
httpd_normalize (GBytes *body,
                 char  **out_why)
{
  gsize len = 0;
  const guint8 *p = g_bytes_get_data (body, &len);
  GByteArray *out = g_byte_array_sized_new ((guint) len + len / 32 + 2);

  for (gsize i = 0; i < len; i++)
    {
      if (p[i] == '\0' || (p[i] == '\r' && (i + 1 == len || p[i + 1] != '\n')))
        {
          *out_why = g_strdup_printf ("the message has a %s at byte %" G_GSIZE_FORMAT " — use CRLF or LF line ends",
                                      p[i] == '\0' ? "NUL" : "bare CR", i);
          g_byte_array_unref (out);
          return NULL;
        }
      if (p[i] == '\n' && (i == 0 || p[i - 1] != '\r'))
        g_byte_array_append (out, (const guint8 *) "\r", 1);
      g_byte_array_append (out, p + i, 1);
    }
  if (out->len > 0 && out->data[out->len - 1] != '\n')
    g_byte_array_append (out, (const guint8 *) "\r\n", 2);
  return g_byte_array_free_to_bytes (out);
}

/* httpd_work_raw - worker: check a message/rfc822 submission */
static void
httpd_work_raw (HttpdJob *job)
{
  g_autofree char *why = NULL;
  g_autofree char *from = NULL;
  g_autoptr(InternetAddressList) list = NULL;
  guint n;

  if (job->env_from == NULL || !pmx_mime_address_is_valid (job->env_from))
    {
      httpd_job_fail (job, SOUP_STATUS_BAD_REQUEST,
                      "a message/rfc822 body needs the envelope sender as ?from=user@example.com");
      return;
    }
  if (job->env_to == NULL || job->env_to[0] == NULL)
    {
      httpd_job_fail (job, SOUP_STATUS_BAD_REQUEST,
                      "a message/rfc822 body needs at least one recipient as ?to=user@example.com (repeatable)");
      return;
    }
  job->recipients = g_ptr_array_new_with_free_func (g_free);
  for (guint i = 0; job->env_to[i] != NULL; i++)
    {
      if (!pmx_mime_address_is_valid (job->env_to[i]))
        {
          g_autofree char *text = g_strdup_printf ("?to=%s is not an address like user@example.com", job->env_to[i]);

          httpd_job_fail (job, SOUP_STATUS_BAD_REQUEST, text);
          return;
        }
      g_ptr_array_add (job->recipients, g_strdup (job->env_to[i]));
    }
  job->data = httpd_normalize (job->body, &why);
  if (job->data == NULL)
    {
      httpd_job_fail (job, SOUP_STATUS_BAD_REQUEST, why);
      return;
    }
  if (!job->may_choose)
    for (guint i = 0; i < 2; i++)
      {
        const char *name = i == 0 ? "X-Postmux-Transport" : "X-Postmux-Route";
        g_autofree char *value = pmx_message_dup_header (job->data, name);

        if (value != NULL)
          {
            g_autofree char *text = g_strdup_printf ("API key \"%s\" may not choose a transport: the message has %s",
                                                     job->key_name, name);

            httpd_job_fail (job, SOUP_STATUS_FORBIDDEN, text);
            return;
          }
      }
  job->sender = g_strdup (job->env_from);
  if (!httpd_sender_allowed (job->senders, job->sender))
    {
      g_autofree char *text = g_strdup_printf ("API key \"%s\" may not send as <%s>", job->key_name, job->sender);

      httpd_job_fail (job, SOUP_STATUS_FORBIDDEN, text);
      return;
    }
  from = pmx_message_dup_header (job->data, "From");
  if (from == NULL)
    {
      httpd_job_fail (job, SOUP_STATUS_BAD_REQUEST, "the message has no From: header (RFC 5322 3.6)");
      return;
    }
  list = internet_address_list_parse (NULL, from);
  n = list != NULL ? (guint) internet_address_list_length (list) : 0;
  if (n == 0)
    {
      httpd_job_fail (job, SOUP_STATUS_BAD_REQUEST, "the message's From: header holds no address");
      return;
    }
  for (guint i = 0; i < n; i++)
    {
      InternetAddress *ia = internet_address_list_get_address (list, (int) i);
      const char *addr = INTERNET_ADDRESS_IS_MAILBOX (ia) ? internet_address_mailbox_get_addr (INTERNET_ADDRESS_MAILBOX (ia)) : NULL;

      if (addr == NULL || !httpd_sender_allowed (job->senders, addr))
        {
          g_autofree char *text = g_strdup_printf ("API key \"%s\" may not send as From: <%s>", job->key_name,
                                                   addr != NULL ? addr : "(a group)");

          httpd_job_fail (job, SOUP_STATUS_FORBIDDEN, text);
          return;
        }
    }
}

/* httpd_add_time - "name": ISO 8601 of @usec (UTC) */
static void
httpd_add_time (JsonBuilder *b,
                const char  *name,
                gint64       usec)
{
  g_autoptr(GDateTime) t = g_date_time_new_from_unix_utc (usec / G_USEC_PER_SEC);
  g_autofree char *s = t != NULL ? g_date_time_format_iso8601 (t) : NULL;

  json_builder_set_member_name (b, name);
  if (s != NULL)
    json_builder_add_string_value (b, s);
  else
    json_builder_add_null_value (b);
}

/* httpd_add_string - "name": @value or null */
static void
httpd_add_string (JsonBuilder *b,
                  const char  *name,
                  const char  *value)
{
  json_builder_set_member_name (b, name);
  if (value != NULL)
    json_builder_add_string_value (b, value);
  else
    json_builder_add_null_value (b);
}

/* httpd_add_outcome - one "address state code enhanced text" line as an object */
static void
httpd_add_outcome (JsonBuilder *b,
                   const char  *line)
{
  g_auto(GStrv) f = g_strsplit (line, " ", 5);
  guint n = g_strv_length (f);

  json_builder_begin_object (b);
  httpd_add_string (b, "address", n > 0 ? f[0] : "");
  httpd_add_string (b, "state", n > 1 ? f[1] : NULL);
  json_builder_set_member_name (b, "code");
  json_builder_add_int_value (b, n > 2 ? g_ascii_strtoll (f[2], NULL, 10) : 0);
  httpd_add_string (b, "enhanced", n > 3 && strcmp (f[3], "-") != 0 ? f[3] : NULL);
  httpd_add_string (b, "text", n > 4 ? f[4] : NULL);
  json_builder_end_object (b);
}

/* httpd_work_get - worker: GET /v1/messages/{id} */
static void
httpd_work_get (HttpdJob *job)
{
  g_autoptr(GError) error = NULL;
  g_autoptr(GPtrArray) attempts = NULL;
  g_autoptr(PmxQueueMessage) m = NULL;
  g_autoptr(JsonBuilder) b = json_builder_new ();
  g_autofree char *ingress = g_strconcat ("api:", job->key_name, NULL);
  gboolean id_ok = strlen (job->id) == 16 && strspn (job->id, "0123456789ABCDEF") == 16;

  if (id_ok)
    m = pmx_queue_get (job->queue, job->id, FALSE, &attempts, &error);
  if (m == NULL && error != NULL && !g_error_matches (error, PMX_QUEUE_ERROR, PMX_QUEUE_ERROR_NOT_FOUND))
    {
      httpd_job_fail (job, SOUP_STATUS_SERVICE_UNAVAILABLE, error->message);
      return;
    }
  /* Another key's message is as unknown as a missing one. */
  if (m == NULL || strcmp (m->ingress, ingress) != 0)
    {
      g_autofree char *text = g_strdup_printf ("no message %s submitted with this API key", job->id);

      httpd_job_fail (job, SOUP_STATUS_NOT_FOUND, text);
      return;
    }

  json_builder_begin_object (b);
  httpd_add_string (b, "id", m->id);
  httpd_add_string (b, "state", pmx_msg_state_to_string (m->state));
  httpd_add_time (b, "received", m->received);
  httpd_add_string (b, "sender", m->sender);
  json_builder_set_member_name (b, "size");
  json_builder_add_int_value (b, (gint64) m->size);
  json_builder_set_member_name (b, "attempt_count");
  json_builder_add_int_value (b, m->attempts);
  if (m->state == PMX_MSG_QUEUED || m->state == PMX_MSG_DEFERRED)
    httpd_add_time (b, "next_attempt", m->next_attempt);
  httpd_add_string (b, "transport", m->transport);
  httpd_add_string (b, "last_reply", m->last_reply);
  httpd_add_string (b, "idempotency_key", m->idempotency_key);
  json_builder_set_member_name (b, "recipients");
  json_builder_begin_array (b);
  for (guint i = 0; i < m->recipients->len; i++)
    {
      PmxQueueRecipient *r = g_ptr_array_index (m->recipients, i);

      json_builder_begin_object (b);
      httpd_add_string (b, "address", r->address);
      httpd_add_string (b, "state", pmx_rcpt_state_to_string (r->state));
      json_builder_set_member_name (b, "code");
      json_builder_add_int_value (b, r->code);
      httpd_add_string (b, "enhanced", r->enhanced);
      httpd_add_string (b, "text", r->text);
      json_builder_end_object (b);
    }
  json_builder_end_array (b);
  json_builder_set_member_name (b, "attempts");
  json_builder_begin_array (b);
  for (guint i = 0; attempts != NULL && i < attempts->len; i++)
    {
      PmxQueueAttemptRecord *a = g_ptr_array_index (attempts, i);
      g_auto(GStrv) lines = g_strsplit (a->outcomes != NULL ? a->outcomes : "", "\n", -1);

      json_builder_begin_object (b);
      httpd_add_time (b, "started", a->started);
      json_builder_set_member_name (b, "duration");
      json_builder_add_double_value (b, (double) (a->finished - a->started) / G_USEC_PER_SEC);
      httpd_add_string (b, "transport", a->transport);
      httpd_add_string (b, "summary", a->summary);
      httpd_add_string (b, "remote_id", a->remote_id);
      json_builder_set_member_name (b, "outcomes");
      json_builder_begin_array (b);
      for (guint j = 0; lines[j] != NULL; j++)
        if (lines[j][0] != '\0')
          httpd_add_outcome (b, lines[j]);
      json_builder_end_array (b);
      json_builder_end_object (b);
    }
  json_builder_end_array (b);
  json_builder_end_object (b);
  job->status = SOUP_STATUS_OK;
  job->response = httpd_json_text (b);
}

/* httpd_count_states - counts of every state into @counts; FALSE on error */
static gboolean
httpd_count_states (PmxQueue *queue,
                    gint64    counts[PMX_MSG_EXPIRED + 1],
                    GError  **error)
{
  for (int s = PMX_MSG_QUEUED; s <= PMX_MSG_EXPIRED; s++)
    {
      counts[s] = pmx_queue_count (queue, (PmxMsgState) s, error);
      if (counts[s] < 0)
        return FALSE;
    }
  return TRUE;
}

/* httpd_credentials - the OAuth2 credentials of the running transports
 * (the SDK's token sources, by name): state, expiry, scopes, last refresh
 * and last error, never a token */
static JsonNode *
httpd_credentials (gboolean *out_needs_login)
{
  g_autoptr(GPtrArray) sources = pmx_token_source_list ();
  JsonObject *object = json_object_new ();
  JsonNode *node = json_node_new (JSON_NODE_OBJECT);

  for (guint i = 0; i < sources->len; i++)
    {
      PmxTokenSource *source = g_ptr_array_index (sources, i);
      g_auto(PmxTokenStatus) status = { 0 };
      const char *name = pmx_token_source_get_name (source);

      if (name == NULL)
        continue;
      pmx_token_source_get_status (source, &status);
      if (status.state == PMX_TOKEN_STATE_NEEDS_LOGIN)
        *out_needs_login = TRUE;
      json_object_set_object_member (object, name, pmx_token_status_to_json (&status));
    }
  json_node_take_object (node, object);
  return node;
}

/* httpd_work_health - worker: GET /v1/health */
static void
httpd_work_health (HttpdJob *job)
{
  g_autoptr(GError) error = NULL;
  g_autoptr(JsonBuilder) b = json_builder_new ();
  g_autoptr(JsonNode) credentials = NULL;
  gint64 counts[PMX_MSG_EXPIRED + 1];
  gboolean ok = httpd_count_states (job->queue, counts, &error);
  gboolean needs_login = FALSE;

  credentials = httpd_credentials (&needs_login);
  json_builder_begin_object (b);
  json_builder_set_member_name (b, "status");
  /* A credential that needs a login holds its mail back: degraded, not
   * down (the HTTP status stays 200; the queue still takes mail). */
  json_builder_add_string_value (b, !ok ? "error" : needs_login ? "degraded" : "ok");
  if (ok)
    {
      json_builder_set_member_name (b, "queue");
      json_builder_begin_object (b);
      for (int s = PMX_MSG_QUEUED; s <= PMX_MSG_EXPIRED; s++)
        {
          json_builder_set_member_name (b, pmx_msg_state_to_string ((PmxMsgState) s));
          json_builder_add_int_value (b, counts[s]);
        }
      json_builder_end_object (b);
    }
  else
    httpd_add_string (b, "error", error->message);
  if (job->httpd->transports_func != NULL)
    {
      json_builder_set_member_name (b, "transports");
      json_builder_add_value (b, job->httpd->transports_func (job->httpd->transports_data));
    }
  json_builder_set_member_name (b, "credentials");
  json_builder_add_value (b, g_steal_pointer (&credentials));
  json_builder_end_object (b);
  job->status = ok ? SOUP_STATUS_OK : SOUP_STATUS_SERVICE_UNAVAILABLE;
  job->response = httpd_json_text (b);
}

/* Upper bounds (seconds) of the attempt latency histogram. */
static const double httpd_buckets[] = { 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300 };

typedef struct {
  GHashTable *deliveries;   /* "transport\037outcome" -> guint64 * */
  guint64     bucket[G_N_ELEMENTS (httpd_buckets)];
  guint64     count;
  double      sum;
} HttpdStats;

/* httpd_stats_attempt - PmxQueueAttemptFunc: tally one attempt */
static void
httpd_stats_attempt (const char *transport,
                     gint64      started,
                     gint64      finished,
                     const char *outcomes,
                     gpointer    user_data)
{
  HttpdStats *st = user_data;
  double seconds = finished > started ? (double) (finished - started) / G_USEC_PER_SEC : 0.0;
  const char *line = outcomes != NULL ? outcomes : "";

  st->count++;
  st->sum += seconds;
  for (gsize i = 0; i < G_N_ELEMENTS (httpd_buckets); i++)
    if (seconds <= httpd_buckets[i])
      st->bucket[i]++;
  while (*line != '\0')
    {
      const char *eol = strchr (line, '\n');
      const char *sp = strchr (line, ' ');
      gsize len = eol != NULL ? (gsize) (eol - line) : strlen (line);

      if (sp != NULL && (gsize) (sp - line) < len)
        {
          const char *state = sp + 1;
          gsize state_len = strcspn (state, " \n");
          g_autofree char *k = g_strdup_printf ("%s\037%.*s", transport != NULL ? transport : "",
                                                (int) state_len, state);
          guint64 *n = g_hash_table_lookup (st->deliveries, k);

          if (n == NULL)
            {
              n = g_new0 (guint64, 1);
              g_hash_table_insert (st->deliveries, g_steal_pointer (&k), n);
            }
          (*n)++;
        }
      line += len;
      if (*line == '\n')
        line++;
    }
}

/* httpd_label - a Prometheus label value, escaped */
static void
httpd_label (GString    *out,
             const char *value)
{
  for (const char *p = value; *p != '\0'; p++)
    {
      if (*p == '\\')
        g_string_append (out, "\\\\");
      else if (*p == '"')
        g_string_append (out, "\\\"");
      else if (*p == '\n')
        g_string_append (out, "\\n");
      else
        g_string_append_c (out, *p);
    }
}

/* httpd_number - a float in Prometheus' (and C locale's) notation */
static void
httpd_number (GString *out,
              double   v)
{
  char buf[G_ASCII_DTOSTR_BUF_SIZE];

  g_string_append (out, g_ascii_dtostr (buf, sizeof buf, v));
}

/* httpd_work_metrics - worker: GET /metrics */
static void
httpd_work_metrics (HttpdJob *job)
{
  g_autoptr(GError) error = NULL;
  g_autoptr(GString) out = g_string_new (NULL);
  g_autoptr(GList) keys = NULL;
  HttpdStats st = { 0 };
  gint64 counts[PMX_MSG_EXPIRED + 1];
  guint64 cumulative = 0;

  st.deliveries = g_hash_table_new_full (g_str_hash, g_str_equal, g_free, g_free);
  if (!httpd_count_states (job->queue, counts, &error)
      || !pmx_queue_foreach_attempt (job->queue, httpd_stats_attempt, &st, &error))
    {
      g_hash_table_unref (st.deliveries);
      job->status = SOUP_STATUS_SERVICE_UNAVAILABLE;
      job->content_type = "text/plain; charset=utf-8";
      job->response = g_strdup_printf ("# the queue cannot be read: %s\n", error->message);
      return;
    }

  g_string_append (out, "# HELP postmux_queue_messages Messages in the queue, by state.\n"
                        "# TYPE postmux_queue_messages gauge\n");
  for (int s = PMX_MSG_QUEUED; s <= PMX_MSG_EXPIRED; s++)
    g_string_append_printf (out, "postmux_queue_messages{state=\"%s\"} %" G_GINT64_FORMAT "\n",
                            pmx_msg_state_to_string ((PmxMsgState) s), counts[s]);

  g_string_append (out, "# HELP postmux_deliveries_total Recipient outcomes of delivery attempts in the queue's attempt log, by transport and outcome.\n"
                        "# TYPE postmux_deliveries_total counter\n");
  keys = g_list_sort (g_hash_table_get_keys (st.deliveries), (GCompareFunc) strcmp);
  for (GList *l = keys; l != NULL; l = l->next)
    {
      const char *k = l->data;
      const char *sep = strchr (k, '\037');
      g_autofree char *transport = g_strndup (k, (gsize) (sep - k));
      guint64 *n = g_hash_table_lookup (st.deliveries, k);

      g_string_append (out, "postmux_deliveries_total{transport=\"");
      httpd_label (out, transport);
      g_string_append (out, "\",outcome=\"");
      httpd_label (out, sep + 1);
      g_string_append_printf (out, "\"} %" G_GUINT64_FORMAT "\n", *n);
    }

  g_string_append (out, "# HELP postmux_attempt_duration_seconds Duration of delivery attempts in the queue's attempt log.\n"
                        "# TYPE postmux_attempt_duration_seconds histogram\n");
  for (gsize i = 0; i < G_N_ELEMENTS (httpd_buckets); i++)
    {
      cumulative = st.bucket[i];
      g_string_append (out, "postmux_attempt_duration_seconds_bucket{le=\"");
      httpd_number (out, httpd_buckets[i]);
      g_string_append_printf (out, "\"} %" G_GUINT64_FORMAT "\n", cumulative);
    }
  g_string_append_printf (out, "postmux_attempt_duration_seconds_bucket{le=\"+Inf\"} %" G_GUINT64_FORMAT "\n", st.count);
  g_string_append (out, "postmux_attempt_duration_seconds_sum ");
  httpd_number (out, st.sum);
  g_string_append_printf (out, "\npostmux_attempt_duration_seconds_count %" G_GUINT64_FORMAT "\n", st.count);
  g_hash_table_unref (st.deliveries);

  job->status = SOUP_STATUS_OK;
  job->content_type = "text/plain; version=0.0.4; charset=utf-8";
  job->response = g_string_free (g_steal_pointer (&out), FALSE);
}

/* httpd_worker - GTaskThreadFunc: the job's CPU and disk work */
static void
httpd_worker (GTask        *task,
              gpointer      source,
              gpointer      task_data,
              GCancellable *cancellable)
{
  HttpdJob *job = task_data;

  switch (job->kind)
    {
    case JOB_SUBMIT_JSON:
      httpd_work_json (job);
      break;
    case JOB_SUBMIT_RAW:
      httpd_work_raw (job);
      break;
    case JOB_GET:
      httpd_work_get (job);
      break;
    case JOB_HEALTH:
      httpd_work_health (job);
      break;
    case JOB_METRICS:
      httpd_work_metrics (job);
      break;
    }
  g_task_return_boolean (task, TRUE);
}

/* httpd_submitted - the queue committed (or refused) a submission */
static void
httpd_submitted (GObject      *source,
                 GAsyncResult *res,
                 gpointer      user_data)
{
  HttpdJob *job = user_data;
  g_autoptr(GError) error = NULL;
  gboolean duplicate = FALSE;
  g_autofree char *id = pmx_queue_submit_finish (job->queue, res, &duplicate, &error);

  if (id == NULL)
    {
      const char *retry = NULL;

      if (g_error_matches (error, PMX_QUEUE_ERROR, PMX_QUEUE_ERROR_BUSY))
        {
          job->status = HTTPD_STATUS_TOO_MANY_REQUESTS;
          retry = "1";
        }
      else if (g_error_matches (error, PMX_QUEUE_ERROR, PMX_QUEUE_ERROR_FULL))
        {
          job->status = SOUP_STATUS_SERVICE_UNAVAILABLE;
          retry = "60";
        }
      else if (g_error_matches (error, PMX_QUEUE_ERROR, PMX_QUEUE_ERROR_CLOSED))
        {
          job->status = SOUP_STATUS_SERVICE_UNAVAILABLE;
          retry = "5";
        }
      else if (g_error_matches (error, PMX_QUEUE_ERROR, PMX_QUEUE_ERROR_INVALID))
        job->status = SOUP_STATUS_BAD_REQUEST;
      else
        job->status = SOUP_STATUS_INTERNAL_SERVER_ERROR;
      if (retry != NULL && !job->gone)
        soup_message_headers_replace (soup_server_message_get_response_headers (job->msg), "Retry-After", retry);
      pmx_log_warning (NULL, NULL, "http: message from <%s> (api:%s) not queued: %s", job->sender, job->key_name,
                       error->message);
      job->response = httpd_error_text (error->message);
      httpd_job_answer (job);
      return;
    }
  {
    g_autoptr(JsonBuilder) b = json_builder_new ();

    json_builder_begin_object (b);
    httpd_add_string (b, "id", id);
    json_builder_end_object (b);
    job->status = SOUP_STATUS_ACCEPTED;
    job->response = httpd_json_text (b);
  }
  if (duplicate && !job->gone)
    soup_message_headers_replace (soup_server_message_get_response_headers (job->msg), "Idempotent-Replayed", "true");
  if (!duplicate)
    pmx_log_info (id, NULL, "http: queued from <%s> for %u recipient%s (api:%s, %" G_GSIZE_FORMAT " bytes)",
                  job->sender, job->recipients->len, job->recipients->len == 1 ? "" : "s", job->key_name,
                  g_bytes_get_size (job->data));
  if (!duplicate && job->httpd->wake != NULL)
    job->httpd->wake (job->httpd->wake_data);
  httpd_job_answer (job);
}

/* httpd_worked - back on the main thread: answer, or hand to the queue */
static void
httpd_worked (GObject      *source,
              GAsyncResult *res,
              gpointer      user_data)
{
  HttpdJob *job = g_task_get_task_data (G_TASK (res));
  g_autofree char *ingress = NULL;
  PmxSubmission sub = { 0, };

  if (job->status != 0 || job->data == NULL || job->gone)
    {
      if (job->status == 0)
        httpd_job_fail (job, SOUP_STATUS_INTERNAL_SERVER_ERROR, "nothing to queue");
      httpd_job_answer (job);
      return;
    }
  ingress = g_strconcat ("api:", job->key_name, NULL);
  sub.ingress = ingress;
  sub.sender = job->sender;
  sub.recipients = (const char *const *) job->recipients->pdata;
  sub.n_recipients = job->recipients->len;
  sub.data = job->data;
  sub.idempotency_key = job->idempotency_key;
  pmx_queue_submit_async (job->queue, &sub, NULL, httpd_submitted, job);
}

/* httpd_job_run - hand @job to a worker thread */
static void
httpd_job_run (HttpdJob *job)
{
  g_autoptr(GTask) task = g_task_new (NULL, NULL, httpd_worked, NULL);

  g_task_set_task_data (task, job, NULL);
  g_task_run_in_thread (task, httpd_worker);
}

/* ---- handlers ------------------------------------------------------------ */

/* httpd_early - SoupServer early handler: refuse a POST from its headers
 * when the key is wrong or the declared size is too big.  A client that
 * sent Expect: 100-continue gets the answer at once; any other's body is
 * read and dropped as it arrives, never held in memory. */
static void
httpd_early (SoupServer        *server,
             SoupServerMessage *msg,
             const char        *path,
             GHashTable        *query,
             gpointer           user_data)
{
  PmxHttpd *httpd = user_data;
  SoupMessageHeaders *headers = soup_server_message_get_request_headers (msg);

  if (strcmp (path, "/v1/messages") != 0 || strcmp (soup_server_message_get_method (msg), "POST") != 0)
    return;
  soup_message_body_set_accumulate (soup_server_message_get_request_body (msg), FALSE);
  if (httpd->closing)
    {
      soup_message_headers_replace (soup_server_message_get_response_headers (msg), "Retry-After", "5");
      httpd_respond_error (msg, SOUP_STATUS_SERVICE_UNAVAILABLE, "postmux is shutting down");
      return;
    }
  if (httpd_authenticate (httpd, msg) == NULL)
    {
      httpd_unauthorized (msg);
      return;
    }
  if (soup_message_headers_get_encoding (headers) == SOUP_ENCODING_CHUNKED)
    {
      httpd_respond_error (msg, SOUP_STATUS_LENGTH_REQUIRED, "send the body with a Content-Length");
      return;
    }
  if (soup_message_headers_get_encoding (headers) == SOUP_ENCODING_CONTENT_LENGTH
      && (guint64) soup_message_headers_get_content_length (headers) > httpd->max_size)
    {
      g_autofree char *text = g_strdup_printf ("the body is larger than http.max_message_size (%" G_GSIZE_FORMAT " bytes)",
                                               httpd->max_size);

      httpd_respond_error (msg, SOUP_STATUS_REQUEST_ENTITY_TOO_LARGE, text);
      return;
    }
  /* Accepted so far: keep the body for the handler. */
  soup_message_body_set_accumulate (soup_server_message_get_request_body (msg), TRUE);
}

/* httpd_post_message - POST /v1/messages */
static void
httpd_post_message (PmxHttpd          *httpd,
                    SoupServerMessage *msg,
                    GHashTable        *query)
{
  SoupMessageHeaders *headers = soup_server_message_get_request_headers (msg);
  const char *ctype = soup_message_headers_get_content_type (headers, NULL);
  const char *key_header = soup_message_headers_get_one (headers, "Idempotency-Key");
  HttpdKey *key = httpd_authenticate (httpd, msg);
  g_autoptr(GBytes) body = NULL;
  HttpdJob *job;
  HttpdJobKind kind;

  if (key == NULL)
    {
      httpd_unauthorized (msg);
      return;
    }
  if (ctype != NULL && g_ascii_strcasecmp (ctype, "application/json") == 0)
    kind = JOB_SUBMIT_JSON;
  else if (ctype != NULL && g_ascii_strcasecmp (ctype, "message/rfc822") == 0)
    kind = JOB_SUBMIT_RAW;
  else
    {
      httpd_respond_error (msg, SOUP_STATUS_UNSUPPORTED_MEDIA_TYPE,
                           "send Content-Type: application/json, or message/rfc822 with ?from=&to=");
      return;
    }
  body = soup_message_body_flatten (soup_server_message_get_request_body (msg));
  if (g_bytes_get_size (body) > httpd->max_size)
    {
      httpd_respond_error (msg, SOUP_STATUS_REQUEST_ENTITY_TOO_LARGE, "the body is larger than http.max_message_size");
      return;
    }
  if (key_header != NULL)
    {
      gsize len = strlen (key_header);
      gboolean ok = len > 0 && len <= HTTPD_MAX_IDEMPOTENCY;

      for (gsize i = 0; ok && i < len; i++)
        ok = key_header[i] > ' ' && key_header[i] < 0x7f;
      if (!ok)
        {
          httpd_respond_error (msg, SOUP_STATUS_BAD_REQUEST,
                               "Idempotency-Key: 1 to 255 printable ASCII characters without spaces");
          return;
        }
    }

  job = httpd_job_new (httpd, msg, kind);
  job->body = g_steal_pointer (&body);
  job->key_name = g_strdup (key->name);
  job->senders = g_strdupv (key->senders);
  job->may_choose = key->may_choose;
  job->idempotency_key = g_strdup (key_header);
  {
    GPtrArray *t = g_ptr_array_new ();
    GPtrArray *r = g_ptr_array_new ();

    for (guint i = 0; i < httpd->config->transports->len; i++)
      g_ptr_array_add (t, g_strdup (((PmxTransportConfig *) g_ptr_array_index (httpd->config->transports, i))->name));
    for (guint i = 0; i < httpd->config->routes->len; i++)
      g_ptr_array_add (r, g_strdup (((PmxRouteConfig *) g_ptr_array_index (httpd->config->routes, i))->name));
    g_ptr_array_add (t, NULL);
    g_ptr_array_add (r, NULL);
    job->transports = (char **) g_ptr_array_free (t, FALSE);
    job->routes = (char **) g_ptr_array_free (r, FALSE);
  }
  if (kind == JOB_SUBMIT_RAW)
    {
      /* soup's query table keeps one value per name: read every ?to= */
      GUri *uri = soup_server_message_get_uri (msg);
      const char *q = g_uri_get_query (uri);
      GPtrArray *to = g_ptr_array_new ();
      char *name, *value;

      if (q != NULL)
        {
          GUriParamsIter it;

          g_uri_params_iter_init (&it, q, -1, "&", G_URI_PARAMS_WWW_FORM);
          while (g_uri_params_iter_next (&it, &name, &value, NULL))
            {
              if (strcmp (name, "to") == 0)
                g_ptr_array_add (to, g_steal_pointer (&value));
              else if (strcmp (name, "from") == 0 && job->env_from == NULL)
                job->env_from = g_steal_pointer (&value);
              g_free (name);
              g_free (value);
            }
        }
      g_ptr_array_add (to, NULL);
      job->env_to = (char **) g_ptr_array_free (to, FALSE);
    }
  httpd_job_run (job);
}

/* httpd_handle - SoupServer handler for every path */
static void
httpd_handle (SoupServer        *server,
              SoupServerMessage *msg,
              const char        *path,
              GHashTable        *query,
              gpointer           user_data)
{
  PmxHttpd *httpd = user_data;
  const char *method = soup_server_message_get_method (msg);
  gboolean get = strcmp (method, "GET") == 0;

  if (httpd->closing)
    {
      soup_message_headers_replace (soup_server_message_get_response_headers (msg), "Retry-After", "5");
      httpd_respond_error (msg, SOUP_STATUS_SERVICE_UNAVAILABLE, "postmux is shutting down");
      return;
    }
  if (strcmp (path, "/v1/messages") == 0)
    {
      if (strcmp (method, "POST") != 0)
        {
          soup_message_headers_replace (soup_server_message_get_response_headers (msg), "Allow", "POST");
          httpd_respond_error (msg, SOUP_STATUS_METHOD_NOT_ALLOWED, "use POST");
          return;
        }
      httpd_post_message (httpd, msg, query);
    }
  else if (g_str_has_prefix (path, "/v1/messages/") && strchr (path + 13, '/') == NULL && path[13] != '\0')
    {
      HttpdKey *key;
      HttpdJob *job;

      if (!get)
        {
          soup_message_headers_replace (soup_server_message_get_response_headers (msg), "Allow", "GET");
          httpd_respond_error (msg, SOUP_STATUS_METHOD_NOT_ALLOWED, "use GET");
          return;
        }
      key = httpd_authenticate (httpd, msg);
      if (key == NULL)
        {
          httpd_unauthorized (msg);
          return;
        }
      job = httpd_job_new (httpd, msg, JOB_GET);
      job->key_name = g_strdup (key->name);
      job->id = g_strdup (path + 13);
      httpd_job_run (job);
    }
  else if (strcmp (path, "/v1/health") == 0 || strcmp (path, "/metrics") == 0)
    {
      if (!get)
        {
          soup_message_headers_replace (soup_server_message_get_response_headers (msg), "Allow", "GET");
          httpd_respond_error (msg, SOUP_STATUS_METHOD_NOT_ALLOWED, "use GET");
          return;
        }
      httpd_job_run (httpd_job_new (httpd, msg, path[1] == 'v' ? JOB_HEALTH : JOB_METRICS));
    }
  else
    httpd_respond_error (msg, SOUP_STATUS_NOT_FOUND,
                         "no such endpoint: POST /v1/messages, GET /v1/messages/{id}, GET /v1/health, GET /metrics");
}

/* ---- life cycle ---------------------------------------------------------- */

/* httpd_take_config - keys and limits of @config; FALSE with @error set */
static gboolean
httpd_take_config (PmxHttpd  *httpd,
                   PmxConfig *config,
                   GError   **error)
{
  JsonObject *http = httpd_get_object (config->root, "http", NULL);
  GPtrArray *keys = httpd_parse_keys (config, error);
  gint64 window = 24 * 3600 * PMX_USEC_PER_SEC;

  if (keys == NULL)
    return FALSE;
  if (http != NULL && json_object_has_member (http, "idempotency_window")
      && !pmx_duration_parse_node (json_object_get_member (http, "idempotency_window"), &window))
    {
      g_ptr_array_unref (keys);
      g_set_error (error, PMX_HTTPD_ERROR, PMX_HTTPD_ERROR_CONFIG, "http.idempotency_window: not a duration");
      return FALSE;
    }
  g_clear_pointer (&httpd->keys, g_ptr_array_unref);
  httpd->keys = keys;
  httpd->max_size = http != NULL
                    ? (gsize) json_object_get_int_member_with_default (http, "max_message_size", HTTPD_DEFAULT_MAX_SIZE)
                    : HTTPD_DEFAULT_MAX_SIZE;
  httpd->idempotency_window = window;
  if (config != httpd->config)
    {
      g_clear_pointer (&httpd->config, pmx_config_unref);
      httpd->config = pmx_config_ref (config);
    }
  if (config->retention < window)
    pmx_log_warning (NULL, NULL, "http.idempotency_window is longer than queue.retention: an Idempotency-Key is "
                     "only remembered while its message is in the queue");
  return TRUE;
}

PmxHttpd *
pmx_httpd_new (PmxConfig  *config,
               PmxQueue   *queue,
               void      (*wake) (gpointer),
               gpointer    wake_data,
               GError    **error)
{
  PmxHttpd *httpd;

  g_return_val_if_fail (config != NULL, NULL);
  g_return_val_if_fail (queue != NULL, NULL);
  g_return_val_if_fail (error == NULL || *error == NULL, NULL);

  httpd = g_new0 (PmxHttpd, 1);
  httpd->queue = queue;
  httpd->wake = wake;
  httpd->wake_data = wake_data;
  httpd->config = pmx_config_ref (config);
  if (!httpd_take_config (httpd, config, error))
    {
      pmx_httpd_free (httpd);
      return NULL;
    }
  (void) httpd_message_schema ();   /* compile it before the first request */
  return httpd;
}

void
pmx_httpd_apply (PmxHttpd  *httpd,
                 PmxConfig *config)
{
  g_autoptr(GError) error = NULL;

  g_return_if_fail (httpd != NULL);
  if (!httpd_take_config (httpd, config, &error))
    pmx_log_warning (NULL, NULL, "http: the reloaded API keys are not usable, the old ones stay: %s", error->message);
}

/* httpd_listen_one - bind one listen.http entry */
static gboolean
httpd_listen_one (PmxHttpd   *httpd,
                  const char *address,
                  gboolean    tls,
                  GError    **error)
{
  const char *colon = strrchr (address, ':');
  g_autofree char *host = g_strndup (address, (gsize) (colon - address));
  guint64 port = g_ascii_strtoull (colon + 1, NULL, 10);
  g_autoptr(GList) addrs = NULL;
  g_autoptr(GInetAddress) numeric = NULL;
  g_autoptr(GError) local_error = NULL;

  if (host[0] == '[')
    {
      char *end = strchr (host, ']');

      if (end != NULL)
        *end = '\0';
      memmove (host, host + 1, strlen (host));
    }
  if (port > 65535)
    {
      g_set_error (error, PMX_HTTPD_ERROR, PMX_HTTPD_ERROR_CONFIG, "listen.http %s: port out of range", address);
      return FALSE;
    }
  numeric = g_inet_address_new_from_string (host);
  if (numeric != NULL)
    addrs = g_list_prepend (NULL, g_object_ref (numeric));
  else
    {
      /* Start-up, before the main loop runs: a blocking lookup is fine. */
      g_autoptr(GResolver) resolver = g_resolver_get_default ();

      addrs = g_resolver_lookup_by_name (resolver, host, NULL, &local_error);
      if (addrs == NULL)
        {
          g_set_error (error, PMX_HTTPD_ERROR, PMX_HTTPD_ERROR_LISTEN, "listen.http %s: %s", address,
                       local_error->message);
          return FALSE;
        }
    }
  for (GList *l = addrs; l != NULL; l = l->next)
    {
      g_autoptr(GSocketAddress) sa = g_inet_socket_address_new (l->data, (guint16) port);
      g_autoptr(GSocket) sock = g_socket_new (g_socket_address_get_family (sa), G_SOCKET_TYPE_STREAM,
                                              G_SOCKET_PROTOCOL_DEFAULT, &local_error);

      /* The socket is made here, as soup_server_listen() would make it
       * (IPv6 only on an IPv6 address), but with a listen backlog for a
       * burst of clients: soup_server_listen() leaves GSocket's 10, and
       * 128 clients connecting at once then wait seconds for SYN retries. */
      if (sock != NULL)
        {
          if (g_socket_address_get_family (sa) == G_SOCKET_FAMILY_IPV6)
            (void) g_socket_set_option (sock, IPPROTO_IPV6, IPV6_V6ONLY, TRUE, NULL);
          g_socket_set_listen_backlog (sock, HTTPD_LISTEN_BACKLOG);
        }
      if (sock == NULL
          || !g_socket_bind (sock, sa, TRUE, &local_error)
          || !g_socket_listen (sock, &local_error)
          || !soup_server_listen_socket (httpd->server, sock, tls ? SOUP_SERVER_LISTEN_HTTPS : 0, &local_error))
        {
          g_set_error (error, PMX_HTTPD_ERROR, PMX_HTTPD_ERROR_LISTEN, "cannot listen on %s for HTTP%s: %s",
                       address, tls ? "S" : "", local_error->message);
          g_list_free_full (g_steal_pointer (&addrs), g_object_unref);
          return FALSE;
        }
    }
  g_list_free_full (g_steal_pointer (&addrs), g_object_unref);
  return TRUE;
}

void
pmx_httpd_set_transports_func (PmxHttpd   *httpd,
                               JsonNode *(*func) (gpointer),
                               gpointer    user_data)
{
  httpd->transports_func = func;
  httpd->transports_data = user_data;
}

gboolean
pmx_httpd_start (PmxHttpd *httpd,
                 GError  **error)
{
  JsonObject *listen = httpd_get_object (httpd->config->root, "listen", NULL);
  JsonArray *http = listen != NULL ? json_object_get_array_member (listen, "http") : NULL;
  g_autoptr(GString) where = g_string_new (NULL);
  GSList *uris;

  g_return_val_if_fail (httpd != NULL, FALSE);
  g_return_val_if_fail (httpd->server == NULL, FALSE);

  httpd->server = soup_server_new ("server-header", "postmux/" PMX_VERSION " ", NULL);
  for (guint i = 0; http != NULL && i < json_array_get_length (http); i++)
    {
      JsonObject *l = json_array_get_object_element (http, i);

      if (json_object_get_boolean_member_with_default (l, "tls", FALSE)
          && soup_server_get_tls_certificate (httpd->server) == NULL)
        {
          JsonObject *tls = httpd_get_object (httpd->config->root, "tls", NULL);
          g_autoptr(GTlsCertificate) cert = NULL;
          g_autoptr(GError) local_error = NULL;

          if (tls == NULL)
            {
              g_set_error (error, PMX_HTTPD_ERROR, PMX_HTTPD_ERROR_CONFIG,
                           "listen.http[%u] has \"tls\": true but the config has no tls section (cert_file, key_file)", i);
              return FALSE;
            }
          cert = g_tls_certificate_new_from_files (json_object_get_string_member (tls, "cert_file"),
                                                   json_object_get_string_member (tls, "key_file"), &local_error);
          if (cert == NULL)
            {
              g_set_error (error, PMX_HTTPD_ERROR, PMX_HTTPD_ERROR_TLS,
                           "tls: cannot load %s and %s: %s (is glib-networking installed?)",
                           json_object_get_string_member (tls, "cert_file"),
                           json_object_get_string_member (tls, "key_file"), local_error->message);
              return FALSE;
            }
          soup_server_set_tls_certificate (httpd->server, cert);
        }
    }
  soup_server_add_early_handler (httpd->server, NULL, httpd_early, httpd, NULL);
  soup_server_add_handler (httpd->server, NULL, httpd_handle, httpd, NULL);
  for (guint i = 0; http != NULL && i < json_array_get_length (http); i++)
    {
      JsonObject *l = json_array_get_object_element (http, i);

      if (!httpd_listen_one (httpd, json_object_get_string_member (l, "address"),
                             json_object_get_boolean_member_with_default (l, "tls", FALSE), error))
        return FALSE;
    }
  uris = soup_server_get_uris (httpd->server);
  for (GSList *s = uris; s != NULL; s = s->next)
    {
      g_autofree char *u = g_uri_to_string (s->data);

      g_string_append_printf (where, "%s%s", where->len > 0 ? " " : "", u);
    }
  g_slist_free_full (uris, (GDestroyNotify) g_uri_unref);
  pmx_log_info (NULL, NULL, "http: listening on %s (%u API key%s)", where->str, httpd->keys->len,
                httpd->keys->len == 1 ? "" : "s");
  return TRUE;
}

/* httpd_wait_timeout - GSourceFunc: the shutdown wait is over */
static gboolean
httpd_wait_timeout (gpointer user_data)
{
  gboolean *expired = user_data;

  *expired = TRUE;
  return G_SOURCE_REMOVE;
}

void
pmx_httpd_shutdown (PmxHttpd *httpd)
{
  gboolean expired = FALSE;
  guint timeout_id;

  g_return_if_fail (httpd != NULL);
  if (httpd->closing)
    return;
  httpd->closing = TRUE;
  if (httpd->server != NULL)
    soup_server_disconnect (httpd->server);
  /* Jobs in a thread or in the queue answer on this context: run it until
   * they have (the queue is still open), so nothing they hold leaks and no
   * thread touches the queue after it closes. */
  timeout_id = g_timeout_add ((guint) (HTTPD_SHUTDOWN_WAIT / 1000), httpd_wait_timeout, &expired);
  while (httpd->pending > 0 && !expired)
    g_main_context_iteration (NULL, TRUE);
  if (!expired)
    g_source_remove (timeout_id);
  else
    pmx_log_warning (NULL, NULL, "http: %u request%s still unanswered at shutdown", httpd->pending,
                     httpd->pending == 1 ? "" : "s");
}

void
pmx_httpd_free (PmxHttpd *httpd)
{
  if (httpd == NULL)
    return;
  pmx_httpd_shutdown (httpd);
  g_clear_object (&httpd->server);
  g_clear_pointer (&httpd->keys, g_ptr_array_unref);
  g_clear_pointer (&httpd->config, pmx_config_unref);
  g_free (httpd);
}

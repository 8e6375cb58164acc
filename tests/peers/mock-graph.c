/* SPDX-License-Identifier: GPL-3.0-or-later */
/*
 * mock-graph.c - a Microsoft Graph mail endpoint for the tests (libsoup 3),
 * with the test identity provider (oauth2-idp.c) in the same process, so
 * that every bearer token is checked against the tokens the IdP issued.
 *
 * Usage: mock-graph --client-id ID --secret-env VAR [--mailbox UPN]...
 *                   [--disabled-mailbox UPN]... [--spool DIR] [--roles R]
 *                   [--extra-client ID:VAR:ROLES]...
 * With --roles the IdP issues JWT-shaped tokens carrying those roles, and
 * the mock checks them as Graph does (mock_permitted()).
 * Prints one JSON line on stdout: {"graph": ".../v1.0", "authority": ...,
 * "tenant": "test-tenant", "token_endpoint": ...}; runs until SIGTERM.
 *
 * Every request is checked against the documented shapes (Graph v1.0
 * user-sendmail, message-send, attachment-createuploadsession,
 * outlook-large-attachments; the [field] limits of
 * shared/reference/providers.md §1): sendMail JSON (recipients, body,
 * fileAttachments with @odata.type and standard base64, at most five
 * non-empty x- internetMessageHeaders), sendMail MIME (text/plain, base64
 * of the message), drafts, attachments, createUploadSession, ranged PUTs
 * (Content-Range arithmetic, chunks under 4 MiB, no Authorization), the
 * draft's send (empty body).  A request that breaks a rule gets the 4xx
 * Graph would give AND is recorded in "errors" of GET /_mock/state: the
 * tests require that list to be empty.
 *
 * Control (no token needed):
 *   POST /_mock/inject  {"status", "code"?, "message"?, "retry_after"?,
 *                        "count"?, "revoke"?, "after"?}: the next Graph
 *                        calls with a valid token (not upload PUTs),
 *                        after letting "after" through, get this answer;
 *                        "revoke" also revokes the token presented.
 *   POST /_mock/config  {"delay_ms"?, "invalid_recipients"?: [...]}
 *   GET  /_mock/state   messages received, requests with times, counts,
 *                       max in flight, errors, tokens the IdP issued (so
 *                       a test can look for them in logs).
 *   POST /_mock/reset   forget messages, requests, errors and counts.
 */
#include "oauth2-idp.h"

#include <gmime/gmime.h>
#include <json-glib/json-glib.h>
#include <libsoup/soup.h>
#include <glib-unix.h>
#include <stdio.h>
#include <string.h>

#define MOCK_MAX_REQUEST   (4u * 1024 * 1024)
#define MOCK_MAX_CHUNK     (4u * 1024 * 1024)
#define MOCK_UPLOAD_MIN    (3u * 1000 * 1000)
#define MOCK_UPLOAD_MAX    (150u * 1024 * 1024)
#define MOCK_TENANT        "test-tenant"

typedef struct {
  guint  status;
  char  *code;
  char  *message;
  gint64 retry_after;      /* -1: none */
  gboolean revoke;
  guint  after;            /* Graph calls to let through first */
} Inject;

typedef struct {
  char       *id;
  char       *mailbox;
  JsonObject *message;      /* the draft resource as posted */
  JsonArray  *attachments;  /* {name, size, sha256, via} */
  guint       open_uploads;
} Draft;

typedef struct {
  char       *id;
  Draft      *draft;        /* borrowed: drafts own them */
  char       *name;
  gsize       size;
  GByteArray *data;
  char       *authtoken;
} Upload;

typedef struct {
  OAuth2Idp   *idp;
  SoupServer  *server;
  char        *base;        /* http://127.0.0.1:PORT */
  char        *client_id;
  char        *spool;
  GStrv        mailboxes;
  GStrv        disabled;
  GQueue       injects;     /* Inject* */
  guint        delay_ms;
  GStrv        invalid_recipients;
  JsonArray   *messages;
  JsonArray   *requests;
  JsonArray   *errors;
  JsonArray   *upload_tokens; /* every upload URL's authtoken handed out */
  GHashTable  *drafts;      /* id -> Draft* */
  GHashTable  *uploads;     /* id -> Upload* */
  guint        next_id;
  guint        in_flight;
  guint        max_in_flight;
  guint        unauthorized;
  guint        deletes;
  gint64       t0;
} Mock;

static Mock mock;

/* mock_now - seconds since start */
static double
mock_now (void)
{
  return (double) (g_get_monotonic_time () - mock.t0) / 1e6;
}

/* mock_error - record a broken rule */
static void
mock_error (const char *format, ...) G_GNUC_PRINTF (1, 2);

static void
mock_error (const char *format, ...)
{
  va_list args;
  g_autofree char *text = NULL;

  va_start (args, format);
  text = g_strdup_vprintf (format, args);
  va_end (args);
  g_printerr ("mock-graph: REQUEST ERROR: %s\n", text);
  json_array_add_string_element (mock.errors, text);
}

/* mock_json - answer @status with @o as JSON (takes @o) */
static void
mock_json (SoupServerMessage *msg,
           guint              status,
           JsonObject        *o)
{
  g_autoptr(JsonNode) node = json_node_new (JSON_NODE_OBJECT);
  char *text;

  json_node_take_object (node, o);
  text = json_to_string (node, FALSE);
  soup_server_message_set_status (msg, status, NULL);
  soup_server_message_set_response (msg, "application/json", SOUP_MEMORY_TAKE, text, strlen (text));
}

/* mock_graph_error - answer with Graph's error body */
static void
mock_graph_error (SoupServerMessage *msg,
                  guint              status,
                  const char        *code,
                  const char        *message)
{
  JsonObject *o = json_object_new ();
  JsonObject *e = json_object_new ();
  JsonObject *inner = json_object_new ();

  json_object_set_string_member (inner, "request-id", "00000000-0000-0000-0000-000000000000");
  json_object_set_string_member (inner, "date", "2026-11-23T12:00:00");
  json_object_set_string_member (e, "code", code);
  json_object_set_string_member (e, "message", message);
  json_object_set_object_member (e, "innerError", inner);
  json_object_set_object_member (o, "error", e);
  mock_json (msg, status, o);
}

/* mock_bad - a request that breaks a documented rule: record and refuse */
static void
mock_bad (SoupServerMessage *msg,
          guint              status,
          const char        *code,
          const char        *what,
          const char        *detail)
{
  mock_error ("%s: %s (%s)", what, detail, code);
  mock_graph_error (msg, status, code, detail);
}

/* mock_sha256 - hex digest */
static char *
mock_sha256 (const guint8 *data,
             gsize         len)
{
  return g_compute_checksum_for_data (G_CHECKSUM_SHA256, data, len);
}

/* mock_strict_base64 - decode standard base64 (no URL alphabet, padded);
 * @allow_breaks lets CR/LF through (the MIME form wraps lines) */
static guint8 *
mock_strict_base64 (const char *text,
                    gsize       len,
                    gboolean    allow_breaks,
                    gsize      *out_len)
{
  g_autoptr(GString) clean = g_string_sized_new (len);
  gsize out = 0;
  guint8 *data;

  for (gsize i = 0; i < len; i++)
    {
      char c = text[i];

      if (g_ascii_isalnum (c) || c == '+' || c == '/' || c == '=')
        g_string_append_c (clean, c);
      else if (allow_breaks && (c == '\r' || c == '\n'))
        continue;
      else
        return NULL;
    }
  if (clean->len % 4 != 0)
    return NULL;
  for (gsize i = 0; i < clean->len; i++)
    if (clean->str[i] == '=' && i < clean->len - 2)
      return NULL;
  data = g_base64_decode (clean->str, &out);
  if (data == NULL && clean->len > 0)
    return NULL;
  *out_len = out;
  return data != NULL ? data : (guint8 *) g_strdup ("");
}

/* mock_check_recipients - @member is absent or an array of
 * {"emailAddress": {"address"}}; addresses go to @out (lower case) */
static const char *
mock_check_recipients (JsonObject *message,
                       const char *member,
                       JsonArray  *out)
{
  JsonArray *array;

  if (!json_object_has_member (message, member))
    return NULL;
  if (!JSON_NODE_HOLDS_ARRAY (json_object_get_member (message, member)))
    return "a recipient list is not an array";
  array = json_object_get_array_member (message, member);
  for (guint i = 0; i < json_array_get_length (array); i++)
    {
      JsonNode *n = json_array_get_element (array, i);
      JsonObject *email;
      const char *address;

      if (!JSON_NODE_HOLDS_OBJECT (n) || !json_object_has_member (json_node_get_object (n), "emailAddress")
          || !JSON_NODE_HOLDS_OBJECT (json_object_get_member (json_node_get_object (n), "emailAddress")))
        return "a recipient is not {\"emailAddress\": {...}}";
      email = json_object_get_object_member (json_node_get_object (n), "emailAddress");
      address = json_object_get_string_member_with_default (email, "address", NULL);
      if (address == NULL || strchr (address, '@') == NULL || strchr (address, ' ') != NULL)
        return "a recipient has no valid emailAddress.address";
      if (out != NULL)
        {
          g_autofree char *lower = g_ascii_strdown (address, -1);

          json_array_add_string_element (out, lower);
        }
    }
  return NULL;
}

/* mock_check_file_attachment - a #microsoft.graph.fileAttachment; its
 * decoded bytes in @out_data */
static const char *
mock_check_file_attachment (JsonObject *a,
                            GBytes    **out_data)
{
  const char *type = json_object_get_string_member_with_default (a, "@odata.type", NULL);
  const char *name = json_object_get_string_member_with_default (a, "name", NULL);
  const char *bytes = json_object_get_string_member_with_default (a, "contentBytes", NULL);
  gsize len = 0;
  guint8 *data;

  if (g_strcmp0 (type, "#microsoft.graph.fileAttachment") != 0)
    return "an attachment's @odata.type is not #microsoft.graph.fileAttachment";
  if (name == NULL || name[0] == '\0')
    return "an attachment has no name";
  if (bytes == NULL)
    return "an attachment has no contentBytes";
  if (json_object_has_member (a, "isInline")
      && json_node_get_value_type (json_object_get_member (a, "isInline")) != G_TYPE_BOOLEAN)
    return "an attachment's isInline is not a boolean";
  data = mock_strict_base64 (bytes, strlen (bytes), FALSE, &len);
  if (data == NULL)
    return "an attachment's contentBytes is not standard padded base64";
  *out_data = g_bytes_new_take (data, len);
  return NULL;
}

/* mock_attachment_record - {name, size, sha256, via} */
static JsonObject *
mock_attachment_record (const char   *name,
                        const guint8 *data,
                        gsize         len,
                        const char   *via)
{
  JsonObject *r = json_object_new ();
  g_autofree char *sum = mock_sha256 (data, len);

  json_object_set_string_member (r, "name", name);
  json_object_set_int_member (r, "size", (gint64) len);
  json_object_set_string_member (r, "sha256", sum);
  json_object_set_string_member (r, "via", via);
  return r;
}

/* mock_check_message - a Graph message resource; fills @record with its
 * recipients and attachments.  Returns the broken rule, or NULL. */
static const char *
mock_check_message (JsonObject  *m,
                    JsonObject  *record,
                    const char **out_code)
{
  JsonArray *to = json_array_new (), *cc = json_array_new (), *bcc = json_array_new ();
  JsonArray *atts = json_array_new ();
  const char *bad = NULL;

  *out_code = "ErrorInvalidRequest";
  json_object_set_array_member (record, "to", to);
  json_object_set_array_member (record, "cc", cc);
  json_object_set_array_member (record, "bcc", bcc);
  json_object_set_array_member (record, "attachments", atts);
  json_object_set_string_member (record, "subject", json_object_get_string_member_with_default (m, "subject", ""));
  if ((bad = mock_check_recipients (m, "toRecipients", to)) != NULL
      || (bad = mock_check_recipients (m, "ccRecipients", cc)) != NULL
      || (bad = mock_check_recipients (m, "bccRecipients", bcc)) != NULL
      || (bad = mock_check_recipients (m, "replyTo", NULL)) != NULL)
    return bad;
  if (json_object_has_member (m, "from"))
    {
      JsonArray *tmp = json_array_new ();
      JsonObject *holder = json_object_new ();

      json_array_add_element (tmp, json_node_copy (json_object_get_member (m, "from")));
      json_object_set_array_member (holder, "x", tmp);
      bad = mock_check_recipients (holder, "x", NULL);
      json_object_unref (holder);
      if (bad != NULL)
        return "from is not a recipient";
    }
  if (json_object_has_member (m, "body"))
    {
      JsonObject *body = JSON_NODE_HOLDS_OBJECT (json_object_get_member (m, "body")) ? json_object_get_object_member (m, "body") : NULL;
      const char *type = body != NULL ? json_object_get_string_member_with_default (body, "contentType", NULL) : NULL;

      if (body == NULL || type == NULL || (g_ascii_strcasecmp (type, "text") != 0 && g_ascii_strcasecmp (type, "html") != 0)
          || json_object_get_string_member_with_default (body, "content", NULL) == NULL)
        return "body is not {\"contentType\": \"text\"|\"html\", \"content\": string}";
      json_object_set_string_member (record, "body_type", type);
      json_object_set_string_member (record, "body", json_object_get_string_member (body, "content"));
    }
  if (json_object_has_member (m, "internetMessageHeaders"))
    {
      JsonArray *h = JSON_NODE_HOLDS_ARRAY (json_object_get_member (m, "internetMessageHeaders"))
                       ? json_object_get_array_member (m, "internetMessageHeaders") : NULL;
      JsonArray *names = json_array_new ();

      json_object_set_array_member (record, "headers", names);
      *out_code = "InvalidInternetMessageHeaderCollection";
      if (h == NULL || json_array_get_length (h) == 0 || json_array_get_length (h) > 5)
        return "internetMessageHeaders is empty or has more than 5 entries";
      *out_code = "InvalidInternetMessageHeader";
      for (guint i = 0; i < json_array_get_length (h); i++)
        {
          JsonObject *e = json_array_get_object_element (h, i);
          const char *name = json_object_get_string_member_with_default (e, "name", NULL);
          const char *value = json_object_get_string_member_with_default (e, "value", NULL);

          if (name == NULL || g_ascii_strncasecmp (name, "x-", 2) != 0)
            return "an internet message header name does not start with x-";
          if (value == NULL || value[0] == '\0')
            return "an internet message header value is empty";
          json_array_add_string_element (names, name);
        }
    }
  *out_code = "ErrorInvalidRequest";
  if (json_object_has_member (m, "attachments"))
    {
      JsonArray *a = JSON_NODE_HOLDS_ARRAY (json_object_get_member (m, "attachments"))
                       ? json_object_get_array_member (m, "attachments") : NULL;

      if (a == NULL)
        return "attachments is not an array";
      for (guint i = 0; i < json_array_get_length (a); i++)
        {
          g_autoptr(GBytes) data = NULL;
          JsonObject *att = json_array_get_object_element (a, i);

          if (att == NULL || (bad = mock_check_file_attachment (att, &data)) != NULL)
            return bad != NULL ? bad : "an attachment is not an object";
          json_array_add_object_element (atts, mock_attachment_record (json_object_get_string_member (att, "name"),
                                                                       g_bytes_get_data (data, NULL),
                                                                       g_bytes_get_size (data), "inline"));
        }
    }
  return NULL;
}

/* mock_recipient_count - to + cc + bcc of a record */
static guint
mock_recipient_count (JsonObject *record)
{
  return json_array_get_length (json_object_get_array_member (record, "to"))
         + json_array_get_length (json_object_get_array_member (record, "cc"))
         + json_array_get_length (json_object_get_array_member (record, "bcc"));
}

/* mock_invalid_recipient - whether the record names an invalid recipient */
static gboolean
mock_invalid_recipient (JsonObject *record)
{
  static const char *const lists[] = { "to", "cc", "bcc" };

  for (guint l = 0; l < G_N_ELEMENTS (lists); l++)
    {
      JsonArray *a = json_object_get_array_member (record, lists[l]);

      for (guint i = 0; i < json_array_get_length (a); i++)
        if (mock.invalid_recipients != NULL
            && g_strv_contains ((const char *const *) mock.invalid_recipients, json_array_get_string_element (a, i)))
          return TRUE;
    }
  return FALSE;
}

/* mock_cmp - g_ptr_array_sort() of strings */
static int
mock_cmp (gconstpointer a,
          gconstpointer b)
{
  return g_strcmp0 (*(const char *const *) a, *(const char *const *) b);
}

/* mock_store - all recipients sorted; appended to messages */
static void
mock_store (JsonObject *record)
{
  g_autoptr(GPtrArray) all = g_ptr_array_new ();
  static const char *const lists[] = { "to", "cc", "bcc" };
  JsonArray *sorted = json_array_new ();

  for (guint l = 0; l < G_N_ELEMENTS (lists); l++)
    {
      JsonArray *a = json_object_get_array_member (record, lists[l]);

      for (guint i = 0; i < json_array_get_length (a); i++)
        g_ptr_array_add (all, (gpointer) json_array_get_string_element (a, i));
    }
  g_ptr_array_sort (all, mock_cmp);
  for (guint i = 0; i < all->len; i++)
    json_array_add_string_element (sorted, g_ptr_array_index (all, i));
  json_object_set_array_member (record, "recipients", sorted);
  json_array_add_object_element (mock.messages, json_object_ref (record));
}

/* mock_collect - lower-case addresses of an address list (groups flattened) */
static void
mock_collect (InternetAddressList *list,
              JsonArray           *out)
{
  for (int i = 0; list != NULL && i < internet_address_list_length (list); i++)
    {
      InternetAddress *ia = internet_address_list_get_address (list, i);

      if (INTERNET_ADDRESS_IS_GROUP (ia))
        mock_collect (internet_address_group_get_members (INTERNET_ADDRESS_GROUP (ia)), out);
      else if (INTERNET_ADDRESS_IS_MAILBOX (ia))
        {
          g_autofree char *lower = g_ascii_strdown (internet_address_mailbox_get_addr (INTERNET_ADDRESS_MAILBOX (ia)), -1);

          json_array_add_string_element (out, lower);
        }
    }
}

/* mock_spool - keep @data as spool/<n>.eml when a spool is set */
static void
mock_spool (JsonObject   *record,
            const guint8 *data,
            gsize         len)
{
  g_autofree char *name = NULL;
  g_autofree char *path = NULL;

  if (mock.spool == NULL)
    return;
  name = g_strdup_printf ("%u.eml", json_array_get_length (mock.messages) + 1);
  path = g_build_filename (mock.spool, name, NULL);
  if (g_file_set_contents (path, (const char *) data, (gssize) len, NULL))
    json_object_set_string_member (record, "file", path);
}

/* mock_send_mime - sendMail with a base64 MIME body */
static void
mock_send_mime (SoupServerMessage *msg,
                const char        *mailbox,
                GBytes            *body)
{
  g_autoptr(JsonObject) record = json_object_new ();
  gsize len = 0;
  g_autofree guint8 *data = mock_strict_base64 (g_bytes_get_data (body, NULL), g_bytes_get_size (body), TRUE, &len);
  GMimeStream *stream;
  GMimeParser *parser;
  GMimeMessage *message;
  g_autofree char *sum = NULL;

  if (data == NULL || len == 0)
    {
      mock_bad (msg, 400, "ErrorMimeContentInvalidBase64String", "sendMail (MIME)", "Invalid base64 string for MIME content.");
      return;
    }
  stream = g_mime_stream_mem_new_with_buffer ((const char *) data, len);
  parser = g_mime_parser_new_with_stream (stream);
  message = g_mime_parser_construct_message (parser, NULL);
  json_object_set_array_member (record, "to", json_array_new ());
  json_object_set_array_member (record, "cc", json_array_new ());
  json_object_set_array_member (record, "bcc", json_array_new ());
  json_object_set_array_member (record, "attachments", json_array_new ());
  if (message != NULL)
    {
      const char *subject = g_mime_message_get_subject (message);

      mock_collect (g_mime_message_get_addresses (message, GMIME_ADDRESS_TYPE_TO), json_object_get_array_member (record, "to"));
      mock_collect (g_mime_message_get_addresses (message, GMIME_ADDRESS_TYPE_CC), json_object_get_array_member (record, "cc"));
      mock_collect (g_mime_message_get_addresses (message, GMIME_ADDRESS_TYPE_BCC), json_object_get_array_member (record, "bcc"));
      json_object_set_string_member (record, "subject", subject != NULL ? subject : "");
      g_object_unref (message);
    }
  g_object_unref (parser);
  g_object_unref (stream);
  if (mock_recipient_count (record) == 0)
    {
      mock_bad (msg, 400, "ErrorInvalidRecipients", "sendMail (MIME)",
                "At least one recipient isn't valid., A message can't be sent because it contains no recipients.");
      return;
    }
  if (mock_invalid_recipient (record))
    {
      mock_graph_error (msg, 400, "ErrorInvalidRecipients", "At least one recipient isn't valid.");
      return;
    }
  sum = mock_sha256 (data, len);
  json_object_set_string_member (record, "form", "mime");
  json_object_set_string_member (record, "mailbox", mailbox);
  json_object_set_string_member (record, "mime_sha256", sum);
  json_object_set_int_member (record, "mime_size", (gint64) len);
  mock_spool (record, data, len);
  mock_store (record);
  soup_server_message_set_status (msg, 202, NULL);
}

/* mock_parse_object - the request body as a JSON object, or NULL */
static JsonObject *
mock_parse_object (GBytes *body)
{
  g_autoptr(JsonParser) parser = json_parser_new ();

  if (!json_parser_load_from_data (parser, g_bytes_get_data (body, NULL), (gssize) g_bytes_get_size (body), NULL)
      || !JSON_NODE_HOLDS_OBJECT (json_parser_get_root (parser)))
    return NULL;
  return json_object_ref (json_node_get_object (json_parser_get_root (parser)));
}

/* mock_send_json - sendMail with a JSON body */
static void
mock_send_json (SoupServerMessage *msg,
                const char        *mailbox,
                GBytes            *body)
{
  g_autoptr(JsonObject) request = mock_parse_object (body);
  g_autoptr(JsonObject) record = json_object_new ();
  JsonObject *message;
  const char *bad, *code;

  if (request == NULL || !json_object_has_member (request, "message")
      || !JSON_NODE_HOLDS_OBJECT (json_object_get_member (request, "message")))
    {
      mock_bad (msg, 400, "ErrorInvalidRequest", "sendMail (JSON)", "the body is not {\"message\": {...}}");
      return;
    }
  if (json_object_has_member (request, "saveToSentItems"))
    {
      JsonNode *s = json_object_get_member (request, "saveToSentItems");
      GType t = JSON_NODE_HOLDS_VALUE (s) ? json_node_get_value_type (s) : G_TYPE_INVALID;

      if (t != G_TYPE_BOOLEAN && !(t == G_TYPE_STRING && (strcmp (json_node_get_string (s), "true") == 0
                                                          || strcmp (json_node_get_string (s), "false") == 0)))
        {
          mock_bad (msg, 400, "ErrorInvalidRequest", "sendMail (JSON)", "saveToSentItems is not a boolean");
          return;
        }
      json_object_set_boolean_member (record, "save_to_sent_items",
                                      t == G_TYPE_BOOLEAN ? json_node_get_boolean (s) : strcmp (json_node_get_string (s), "true") == 0);
    }
  message = json_object_get_object_member (request, "message");
  if ((bad = mock_check_message (message, record, &code)) != NULL)
    {
      mock_bad (msg, 400, code, "sendMail (JSON)", bad);
      return;
    }
  if (mock_recipient_count (record) == 0)
    {
      mock_bad (msg, 400, "ErrorInvalidRecipients", "sendMail (JSON)",
                "At least one recipient isn't valid., A message can't be sent because it contains no recipients.");
      return;
    }
  if (mock_invalid_recipient (record))
    {
      mock_graph_error (msg, 400, "ErrorInvalidRecipients", "At least one recipient isn't valid.");
      return;
    }
  json_object_set_string_member (record, "form", "json");
  json_object_set_string_member (record, "mailbox", mailbox);
  mock_store (record);
  soup_server_message_set_status (msg, 202, NULL);
}

/* mock_inject_free */
static void
mock_inject_free (Inject *inject)
{
  g_free (inject->code);
  g_free (inject->message);
  g_free (inject);
}

/* mock_draft_free */
static void
mock_draft_free (Draft *d)
{
  g_free (d->id);
  g_free (d->mailbox);
  json_object_unref (d->message);
  json_array_unref (d->attachments);
  g_free (d);
}

/* mock_upload_free */
static void
mock_upload_free (Upload *u)
{
  g_free (u->id);
  g_free (u->name);
  g_free (u->authtoken);
  g_byte_array_unref (u->data);
  g_free (u);
}

/* mock_create_draft - POST /users/{m}/messages */
static void
mock_create_draft (SoupServerMessage *msg,
                   const char        *mailbox,
                   GBytes            *body)
{
  g_autoptr(JsonObject) m = mock_parse_object (body);
  g_autoptr(JsonObject) record = json_object_new ();
  const char *bad, *code;
  Draft *d;
  JsonObject *answer;

  if (m == NULL)
    {
      mock_bad (msg, 400, "ErrorInvalidRequest", "create draft", "the body is not a message resource");
      return;
    }
  if ((bad = mock_check_message (m, record, &code)) != NULL)
    {
      mock_bad (msg, 400, code, "create draft", bad);
      return;
    }
  d = g_new0 (Draft, 1);
  d->id = g_strdup_printf ("AAMkAD-draft-%u=", ++mock.next_id);
  d->mailbox = g_strdup (mailbox);
  d->message = json_object_ref (record);
  d->attachments = json_array_ref (json_object_get_array_member (record, "attachments"));
  g_hash_table_insert (mock.drafts, d->id, d);
  answer = json_object_new ();
  json_object_set_string_member (answer, "id", d->id);
  json_object_set_boolean_member (answer, "isDraft", TRUE);
  mock_json (msg, 201, answer);
}

/* mock_add_attachment - POST .../messages/{id}/attachments */
static void
mock_add_attachment (SoupServerMessage *msg,
                     Draft             *d,
                     GBytes            *body)
{
  g_autoptr(JsonObject) a = mock_parse_object (body);
  g_autoptr(GBytes) data = NULL;
  const char *bad;
  JsonObject *answer;

  if (a == NULL || (bad = mock_check_file_attachment (a, &data)) != NULL)
    {
      mock_bad (msg, 400, "ErrorInvalidRequest", "add attachment", a == NULL ? "the body is not JSON" : bad);
      return;
    }
  json_array_add_object_element (d->attachments,
                                 mock_attachment_record (json_object_get_string_member (a, "name"), g_bytes_get_data (data, NULL),
                                                         g_bytes_get_size (data), "post"));
  answer = json_object_new ();
  json_object_set_string_member (answer, "id", "att");
  mock_json (msg, 201, answer);
}

/* mock_create_upload - POST .../attachments/createUploadSession */
static void
mock_create_upload (SoupServerMessage *msg,
                    Draft             *d,
                    GBytes            *body)
{
  g_autoptr(JsonObject) o = mock_parse_object (body);
  JsonObject *item = o != NULL && json_object_has_member (o, "AttachmentItem")
                       && JSON_NODE_HOLDS_OBJECT (json_object_get_member (o, "AttachmentItem"))
                       ? json_object_get_object_member (o, "AttachmentItem") : NULL;
  const char *name = item != NULL ? json_object_get_string_member_with_default (item, "name", NULL) : NULL;
  gint64 size = item != NULL ? json_object_get_int_member_with_default (item, "size", -1) : -1;
  JsonObject *answer;
  JsonArray *ranges;
  Upload *u;

  if (item == NULL || g_strcmp0 (json_object_get_string_member_with_default (item, "attachmentType", NULL), "file") != 0
      || name == NULL || name[0] == '\0')
    {
      mock_bad (msg, 400, "ErrorInvalidRequest", "createUploadSession",
                "the body is not {\"AttachmentItem\": {\"attachmentType\": \"file\", \"name\", \"size\"}}");
      return;
    }
  if (size < (gint64) MOCK_UPLOAD_MIN || size > (gint64) MOCK_UPLOAD_MAX)
    {
      mock_bad (msg, 400, "ErrorAttachmentSizeShouldNotBeLessThanMinimumSize", "createUploadSession",
                "size is not between 3 MB and 150 MB");
      return;
    }
  u = g_new0 (Upload, 1);
  u->id = g_strdup_printf ("up%u", ++mock.next_id);
  u->draft = d;
  u->name = g_strdup (name);
  u->size = (gsize) size;
  u->data = g_byte_array_new ();
  u->authtoken = g_uuid_string_random ();
  json_array_add_string_element (mock.upload_tokens, u->authtoken);
  g_hash_table_insert (mock.uploads, u->id, u);
  d->open_uploads++;
  answer = json_object_new ();
  {
    g_autofree char *url = g_strdup_printf ("%s/_upload/%s?authtoken=%s", mock.base, u->id, u->authtoken);

    json_object_set_string_member (answer, "uploadUrl", url);
  }
  json_object_set_string_member (answer, "expirationDateTime", "2026-11-23T18:00:00Z");
  ranges = json_array_new ();
  json_array_add_string_element (ranges, "0-");
  json_object_set_array_member (answer, "nextExpectedRanges", ranges);
  mock_json (msg, 201, answer);
}

/* mock_upload_put - PUT /_upload/{id}?authtoken=... */
static void
mock_upload_put (SoupServerMessage *msg,
                 const char        *id,
                 GHashTable        *query,
                 GBytes            *body)
{
  SoupMessageHeaders *h = soup_server_message_get_request_headers (msg);
  Upload *u = g_hash_table_lookup (mock.uploads, id);
  const char *range = soup_message_headers_get_one (h, "Content-Range");
  const char *type = soup_message_headers_get_content_type (h, NULL);
  guint64 start = 0, end = 0, total = 0;
  gsize len = g_bytes_get_size (body);

  if (u == NULL || query == NULL || g_strcmp0 (g_hash_table_lookup (query, "authtoken"), u->authtoken) != 0)
    {
      mock_bad (msg, 404, "ErrorItemNotFound", "upload", "unknown upload session or authtoken");
      return;
    }
  if (soup_message_headers_get_one (h, "Authorization") != NULL)
    {
      mock_bad (msg, 400, "InvalidAuthenticationToken", "upload", "an Authorization header was sent to the upload URL");
      return;
    }
  if (g_strcmp0 (type, "application/octet-stream") != 0)
    {
      mock_bad (msg, 400, "ErrorInvalidRequest", "upload", "Content-Type is not application/octet-stream");
      return;
    }
  if (range == NULL || sscanf (range, "bytes %" G_GUINT64_FORMAT "-%" G_GUINT64_FORMAT "/%" G_GUINT64_FORMAT, &start, &end, &total) != 3)
    {
      mock_bad (msg, 400, "ErrorInvalidRequest", "upload", "no Content-Range: bytes start-end/total");
      return;
    }
  if (total != u->size || start != u->data->len || end < start || end - start + 1 != len || end >= total)
    {
      g_autofree char *d = g_strdup_printf ("Content-Range %s does not follow: have %u of %" G_GSIZE_FORMAT " bytes, chunk of %" G_GSIZE_FORMAT,
                                            range, u->data->len, u->size, len);

      mock_bad (msg, 400, "ErrorInvalidRequest", "upload", d);
      return;
    }
  if (len > MOCK_MAX_CHUNK || len == 0)
    {
      mock_bad (msg, 400, "ErrorInvalidRequest", "upload", "a chunk is empty or not under 4 MiB");
      return;
    }
  if (soup_message_headers_get_content_length (h) != (goffset) len)
    {
      mock_bad (msg, 400, "ErrorInvalidRequest", "upload", "Content-Length does not match the chunk");
      return;
    }
  g_byte_array_append (u->data, g_bytes_get_data (body, NULL), (guint) len);
  if (u->data->len < u->size)
    {
      JsonObject *answer = json_object_new ();
      JsonArray *ranges = json_array_new ();

      {
        g_autofree char *next = g_strdup_printf ("%u-", u->data->len);

        json_array_add_string_element (ranges, next);
      }
      json_object_set_string_member (answer, "expirationDateTime", "2026-11-23T18:00:00Z");
      json_object_set_array_member (answer, "nextExpectedRanges", ranges);
      mock_json (msg, 200, answer);
      return;
    }
  {
    g_autofree char *location = g_strdup_printf ("%s/v1.0/users/%s/messages/%s/attachments('%s')", mock.base,
                                                 u->draft->mailbox, u->draft->id, u->id);

    json_array_add_object_element (u->draft->attachments, mock_attachment_record (u->name, u->data->data, u->data->len, "upload"));
    if (mock.spool != NULL)
      {
        g_autofree char *path = g_build_filename (mock.spool, u->id, NULL);

        g_file_set_contents (path, (const char *) u->data->data, u->data->len, NULL);
      }
    u->draft->open_uploads--;
    soup_message_headers_replace (soup_server_message_get_response_headers (msg), "Location", location);
    soup_server_message_set_status (msg, 201, NULL);
    g_hash_table_remove (mock.uploads, id);
  }
}

/* mock_send_draft - POST .../messages/{id}/send */
static void
mock_send_draft (SoupServerMessage *msg,
                 Draft             *d,
                 GBytes            *body)
{
  SoupMessageHeaders *h = soup_server_message_get_request_headers (msg);

  if (g_bytes_get_size (body) != 0 || soup_message_headers_get_content_length (h) != 0)
    {
      mock_bad (msg, 400, "ErrorInvalidRequest", "send draft", "the body is not empty (Content-Length: 0)");
      return;
    }
  if (d->open_uploads > 0)
    {
      mock_bad (msg, 400, "ErrorInvalidRequest", "send draft", "an upload session is not complete");
      return;
    }
  if (mock_recipient_count (d->message) == 0)
    {
      mock_bad (msg, 400, "ErrorInvalidRecipients", "send draft", "A message can't be sent because it contains no recipients.");
      return;
    }
  if (mock_invalid_recipient (d->message))
    {
      mock_graph_error (msg, 400, "ErrorInvalidRecipients", "At least one recipient isn't valid.");
      return;
    }
  json_object_set_string_member (d->message, "form", "draft");
  json_object_set_string_member (d->message, "mailbox", d->mailbox);
  json_object_set_array_member (d->message, "attachments", json_array_ref (d->attachments));
  mock_store (d->message);
  g_hash_table_remove (mock.drafts, d->id);
  soup_server_message_set_status (msg, 202, NULL);
}

/* mock_user - GET /users/{m} */
static void
mock_user (SoupServerMessage *msg,
           const char        *mailbox)
{
  JsonObject *o = json_object_new ();

  json_object_set_string_member (o, "id", "00000000-1111-2222-3333-444444444444");
  json_object_set_string_member (o, "displayName", "Test Mailbox");
  json_object_set_string_member (o, "mail", mailbox);
  json_object_set_string_member (o, "userPrincipalName", mailbox);
  mock_json (msg, 200, o);
}

/* mock_api - one Graph API request whose token is valid */
static void
mock_api (SoupServerMessage *msg,
          const char        *method,
          char             **seg,
          guint              n,
          GBytes            *body,
          const char        *kind)
{
  const char *mailbox = seg[3];
  const char *type = soup_message_headers_get_content_type (soup_server_message_get_request_headers (msg), NULL);
  Draft *d = n >= 6 ? g_hash_table_lookup (mock.drafts, seg[5]) : NULL;

  if (mock.disabled != NULL && g_strv_contains ((const char *const *) mock.disabled, mailbox))
    {
      mock_graph_error (msg, 404, "MailboxNotEnabledForRESTAPI", "The mailbox is either inactive, soft-deleted, or is hosted on-premise.");
      return;
    }
  if (mock.mailboxes == NULL || !g_strv_contains ((const char *const *) mock.mailboxes, mailbox))
    {
      g_autofree char *text = g_strdup_printf ("The requested user '%s' is invalid.", mailbox);

      mock_graph_error (msg, 404, "ErrorInvalidUser", text);
      return;
    }
  if (strcmp (kind, "sendMail") == 0)
    {
      if (g_strcmp0 (type, "application/json") == 0)
        mock_send_json (msg, mailbox, body);
      else if (g_strcmp0 (type, "text/plain") == 0)
        mock_send_mime (msg, mailbox, body);
      else
        mock_bad (msg, 415, "UnsupportedMediaType", "sendMail", "Content-Type is neither application/json nor text/plain");
      return;
    }
  if (strcmp (kind, "user") == 0)
    {
      mock_user (msg, mailbox);
      return;
    }
  if (strcmp (kind, "messages") == 0)
    {
      if (g_strcmp0 (type, "application/json") != 0)
        mock_bad (msg, 415, "UnsupportedMediaType", "create draft", "Content-Type is not application/json");
      else
        mock_create_draft (msg, mailbox, body);
      return;
    }
  if (d == NULL)
    {
      mock_bad (msg, 404, "ErrorItemNotFound", kind, "no such draft");
      return;
    }
  if (strcmp (kind, "delete") == 0)
    {
      mock.deletes++;
      g_hash_table_remove (mock.drafts, d->id);
      soup_server_message_set_status (msg, 204, NULL);
    }
  else if (strcmp (kind, "send") == 0)
    mock_send_draft (msg, d, body);
  else if (g_strcmp0 (type, "application/json") != 0)
    mock_bad (msg, 415, "UnsupportedMediaType", kind, "Content-Type is not application/json");
  else if (strcmp (kind, "attachments") == 0)
    mock_add_attachment (msg, d, body);
  else
    mock_create_upload (msg, d, body);
  (void) method;
}

/* mock_token_roles - the "roles" of a JWT-shaped token, NULL for an opaque one */
static GStrv
mock_token_roles (const char *token)
{
  const char *dot = strchr (token, '.');
  const char *dot2 = dot != NULL ? strchr (dot + 1, '.') : NULL;
  g_autofree char *part = NULL;
  g_autofree guchar *json = NULL;
  g_autoptr(JsonParser) parser = json_parser_new ();
  GStrvBuilder *b;
  JsonObject *claims;
  JsonArray *roles;
  GStrv out;
  gsize len = 0;

  if (dot2 == NULL)
    return NULL;
  part = g_strndup (dot + 1, (gsize) (dot2 - dot - 1));
  g_strdelimit (part, "-", '+');
  g_strdelimit (part, "_", '/');
  while (strlen (part) % 4 != 0)
    {
      char *padded = g_strconcat (part, "=", NULL);

      g_free (part);
      part = padded;
    }
  json = g_base64_decode (part, &len);
  if (!json_parser_load_from_data (parser, (const char *) json, (gssize) len, NULL)
      || !JSON_NODE_HOLDS_OBJECT (json_parser_get_root (parser)))
    return NULL;
  claims = json_node_get_object (json_parser_get_root (parser));
  roles = json_object_has_member (claims, "roles") ? json_object_get_array_member (claims, "roles") : NULL;
  b = g_strv_builder_new ();
  for (guint i = 0; roles != NULL && i < json_array_get_length (roles); i++)
    g_strv_builder_add (b, json_array_get_string_element (roles, i));
  out = g_strv_builder_end (b);
  g_strv_builder_unref (b);
  return out;
}

/* mock_permitted - Graph's permission check for tokens that carry roles:
 * sendMail needs Mail.Send; drafts and attachments Mail.ReadWrite too;
 * GET /users/{id} User.Read.All.  Opaque tokens may do everything. */
static gboolean
mock_permitted (SoupServerMessage *msg,
                const char        *token,
                const char        *kind)
{
  g_auto(GStrv) roles = mock_token_roles (token);
  const char *need = NULL;

  if (roles == NULL)
    return TRUE;
  if (strcmp (kind, "user") == 0)
    need = "User.Read.All";
  else if (!g_strv_contains ((const char *const *) roles, "Mail.Send"))
    need = "Mail.Send";
  else if (strcmp (kind, "sendMail") != 0)
    need = "Mail.ReadWrite";
  if (need == NULL || g_strv_contains ((const char *const *) roles, need))
    return TRUE;
  if (roles[0] == NULL)
    mock_graph_error (msg, 403, "NoPermissionsInAccessToken", "The token contains no permissions, or permissions can not be understood.");
  else
    mock_graph_error (msg, 403, "ErrorAccessDenied", "Access is denied. Check credentials and try again.");
  return FALSE;
}

/* mock_kind - which Graph call a request is, or NULL */
static const char *
mock_kind (const char *method,
           char      **seg,
           guint       n)
{
  if (n < 4 || strcmp (seg[1], "v1.0") != 0 || strcmp (seg[2], "users") != 0 || seg[3][0] == '\0')
    return NULL;
  if (n == 4 && strcmp (method, "GET") == 0)
    return "user";
  if (n == 5 && strcmp (method, "POST") == 0 && strcmp (seg[4], "sendMail") == 0)
    return "sendMail";
  if (n == 5 && strcmp (method, "POST") == 0 && strcmp (seg[4], "messages") == 0)
    return "messages";
  if (n == 6 && strcmp (method, "DELETE") == 0 && strcmp (seg[4], "messages") == 0)
    return "delete";
  if (n == 7 && strcmp (method, "POST") == 0 && strcmp (seg[4], "messages") == 0 && strcmp (seg[6], "send") == 0)
    return "send";
  if (n == 7 && strcmp (method, "POST") == 0 && strcmp (seg[4], "messages") == 0 && strcmp (seg[6], "attachments") == 0)
    return "attachments";
  if (n == 8 && strcmp (method, "POST") == 0 && strcmp (seg[4], "messages") == 0 && strcmp (seg[6], "attachments") == 0
      && strcmp (seg[7], "createUploadSession") == 0)
    return "createUploadSession";
  return NULL;
}

typedef struct {
  SoupServerMessage *msg;
  char              *path;
  GHashTable        *query;
  JsonObject        *entry;
} Pending;

/* mock_process - answer one Graph request (after the optional delay) */
static void
mock_process (SoupServerMessage *msg,
              const char        *path,
              GHashTable        *query,
              JsonObject        *entry)
{
  const char *method = soup_server_message_get_method (msg);
  SoupMessageBody *rb = soup_server_message_get_request_body (msg);
  g_autoptr(GBytes) body = soup_message_body_flatten (rb);
  g_auto(GStrv) seg = g_strsplit (path, "/", -1);
  guint n = g_strv_length (seg);
  const char *kind;
  const char *auth;
  Inject *inject;

  for (guint i = 0; i < n; i++)
    {
      char *u = g_uri_unescape_string (seg[i], NULL);

      if (u != NULL)
        {
          g_free (seg[i]);
          seg[i] = u;
        }
    }
  if (n == 3 && strcmp (seg[1], "_upload") == 0 && strcmp (method, "PUT") == 0)
    {
      json_object_set_string_member (entry, "kind", "upload");
      mock_upload_put (msg, seg[2], query, body);
      return;
    }
  kind = mock_kind (method, seg, n);
  json_object_set_string_member (entry, "kind", kind != NULL ? kind : "unknown");
  if (n >= 4)
    json_object_set_string_member (entry, "mailbox", seg[3]);
  if (kind == NULL)
    {
      g_autofree char *d = g_strdup_printf ("%s %s is not a Graph mail call", method, path);

      mock_bad (msg, 400, "BadRequest", "request", d);
      return;
    }
  if (g_bytes_get_size (body) > MOCK_MAX_REQUEST)
    {
      mock_bad (msg, 413, "RequestEntityTooLarge", kind, "the request is over 4 MiB");
      return;
    }
  auth = soup_message_headers_get_one (soup_server_message_get_request_headers (msg), "Authorization");
  if (auth == NULL || !g_str_has_prefix (auth, "Bearer ") || !oauth2_idp_token_is_valid (mock.idp, auth + 7))
    {
      mock.unauthorized++;
      mock_graph_error (msg, 401, "InvalidAuthenticationToken",
                        auth == NULL ? "Access token is empty." : "Access token has expired or is not yet valid.");
      return;
    }
  inject = g_queue_peek_head (&mock.injects);
  if (inject != NULL && inject->after > 0)
    {
      inject->after--;
      inject = NULL;
    }
  else
    inject = g_queue_pop_head (&mock.injects);
  if (inject != NULL)
    {
      if (inject->revoke)
        oauth2_idp_revoke_access_token (mock.idp, auth + 7);
      if (inject->retry_after >= 0)
        {
          g_autofree char *v = g_strdup_printf ("%" G_GINT64_FORMAT, inject->retry_after);

          soup_message_headers_replace (soup_server_message_get_response_headers (msg), "Retry-After", v);
        }
      if (inject->code != NULL)
        mock_graph_error (msg, inject->status, inject->code, inject->message != NULL ? inject->message : "");
      else
        soup_server_message_set_status (msg, inject->status, NULL);
      json_object_set_boolean_member (entry, "injected", TRUE);
      mock_inject_free (inject);
      return;
    }
  if (!mock_permitted (msg, auth + 7, kind))
    return;
  mock_api (msg, method, seg, n, body, kind);
}

/* mock_finish - answer, record the end, leave the in-flight count */
static void
mock_finish (Pending *p)
{
  mock_process (p->msg, p->path, p->query, p->entry);
  json_object_set_int_member (p->entry, "status", soup_server_message_get_status (p->msg));
  json_object_set_double_member (p->entry, "end", mock_now ());
  mock.in_flight--;
}

/* mock_resume - the delay is over */
static gboolean
mock_resume (gpointer data)
{
  Pending *p = data;

  mock_finish (p);
  soup_server_message_unpause (p->msg);
  g_object_unref (p->msg);
  g_free (p->path);
  g_clear_pointer (&p->query, g_hash_table_unref);
  json_object_unref (p->entry);
  g_free (p);
  return G_SOURCE_REMOVE;
}

/* mock_control - /_mock/... */
static void
mock_control (SoupServerMessage *msg,
              const char        *path)
{
  SoupMessageBody *rb = soup_server_message_get_request_body (msg);
  g_autoptr(GBytes) body = soup_message_body_flatten (rb);
  g_autoptr(JsonObject) o = g_bytes_get_size (body) > 0 ? mock_parse_object (body) : NULL;

  if (strcmp (path, "/_mock/state") == 0)
    {
      JsonObject *s = json_object_new ();

      json_object_set_array_member (s, "messages", json_array_ref (mock.messages));
      json_object_set_array_member (s, "requests", json_array_ref (mock.requests));
      json_object_set_array_member (s, "errors", json_array_ref (mock.errors));
      json_object_set_array_member (s, "upload_tokens", json_array_ref (mock.upload_tokens));
      json_object_set_int_member (s, "max_in_flight", mock.max_in_flight);
      json_object_set_int_member (s, "in_flight", mock.in_flight);
      json_object_set_int_member (s, "unauthorized", mock.unauthorized);
      json_object_set_int_member (s, "deletes", mock.deletes);
      json_object_set_int_member (s, "drafts_left", g_hash_table_size (mock.drafts));
      json_object_set_int_member (s, "injects_left", mock.injects.length);
      json_object_set_int_member (s, "token_requests", oauth2_idp_get_requests (mock.idp, NULL));
      {
        g_auto(GStrv) issued = oauth2_idp_dup_issued (mock.idp);
        JsonArray *a = json_array_new ();

        for (guint i = 0; issued != NULL && issued[i] != NULL; i++)
          json_array_add_string_element (a, issued[i]);
        json_object_set_array_member (s, "issued_tokens", a);
      }
      mock_json (msg, 200, s);
      return;
    }
  if (strcmp (path, "/_mock/reset") == 0)
    {
      json_array_unref (mock.messages);
      json_array_unref (mock.requests);
      json_array_unref (mock.errors);
      mock.messages = json_array_new ();
      mock.requests = json_array_new ();
      mock.errors = json_array_new ();
      mock.max_in_flight = mock.in_flight;
      mock.unauthorized = 0;
      mock.deletes = 0;
      soup_server_message_set_status (msg, 204, NULL);
      return;
    }
  if (o == NULL)
    {
      soup_server_message_set_status (msg, 400, NULL);
      return;
    }
  if (strcmp (path, "/_mock/inject") == 0)
    {
      gint64 count = json_object_get_int_member_with_default (o, "count", 1);

      for (gint64 i = 0; i < count; i++)
        {
          Inject *inject = g_new0 (Inject, 1);

          inject->status = (guint) json_object_get_int_member_with_default (o, "status", 503);
          inject->code = g_strdup (json_object_get_string_member_with_default (o, "code", NULL));
          inject->message = g_strdup (json_object_get_string_member_with_default (o, "message", NULL));
          inject->retry_after = json_object_get_int_member_with_default (o, "retry_after", -1);
          inject->revoke = json_object_get_boolean_member_with_default (o, "revoke", FALSE);
          inject->after = i == 0 ? (guint) json_object_get_int_member_with_default (o, "after", 0) : 0;
          g_queue_push_tail (&mock.injects, inject);
        }
      soup_server_message_set_status (msg, 204, NULL);
      return;
    }
  if (strcmp (path, "/_mock/config") == 0)
    {
      if (json_object_has_member (o, "delay_ms"))
        mock.delay_ms = (guint) json_object_get_int_member (o, "delay_ms");
      if (json_object_has_member (o, "invalid_recipients"))
        {
          JsonArray *a = json_object_get_array_member (o, "invalid_recipients");
          GStrvBuilder *b = g_strv_builder_new ();

          for (guint i = 0; i < json_array_get_length (a); i++)
            {
              g_autofree char *lower = g_ascii_strdown (json_array_get_string_element (a, i), -1);

              g_strv_builder_add (b, lower);
            }
          g_strfreev (mock.invalid_recipients);
          mock.invalid_recipients = g_strv_builder_end (b);
          g_strv_builder_unref (b);
        }
      soup_server_message_set_status (msg, 204, NULL);
      return;
    }
  soup_server_message_set_status (msg, 404, NULL);
}

/* mock_handler - every request */
static void
mock_handler (SoupServer        *server,
              SoupServerMessage *msg,
              const char        *path,
              GHashTable        *query,
              gpointer           data)
{
  JsonObject *entry;
  Pending *p;

  (void) server;
  (void) data;
  if (g_str_has_prefix (path, "/_mock/"))
    {
      mock_control (msg, path);
      return;
    }
  entry = json_object_new ();
  json_object_set_string_member (entry, "method", soup_server_message_get_method (msg));
  json_object_set_double_member (entry, "start", mock_now ());
  json_array_add_object_element (mock.requests, json_object_ref (entry));
  mock.in_flight++;
  mock.max_in_flight = MAX (mock.max_in_flight, mock.in_flight);
  json_object_set_int_member (entry, "in_flight", mock.in_flight);

  p = g_new0 (Pending, 1);
  p->msg = g_object_ref (msg);
  p->path = g_strdup (path);
  p->query = query != NULL ? g_hash_table_ref (query) : NULL;
  p->entry = entry;
  soup_server_message_pause (msg);
  g_timeout_add (mock.delay_ms, mock_resume, p);
}

/* mock_quit - SIGTERM/SIGINT */
static gboolean
mock_quit (gpointer data)
{
  g_main_loop_quit (data);
  return G_SOURCE_REMOVE;
}

int
main (int    argc,
      char **argv)
{
  g_autofree char *secret_env = NULL;
  g_autofree char *roles = NULL;
  g_auto(GStrv) extra = NULL;
  g_auto(GStrv) mailboxes = NULL;
  g_auto(GStrv) disabled = NULL;
  g_autoptr(GError) error = NULL;
  g_autoptr(GOptionContext) context = g_option_context_new ("- a mock Microsoft Graph mail API for tests");
  GOptionEntry entries[] = {
    { "client-id", 0, 0, G_OPTION_ARG_STRING, &mock.client_id, "the app's client id", "ID" },
    { "secret-env", 0, 0, G_OPTION_ARG_STRING, &secret_env, "environment variable holding the client secret", "VAR" },
    { "mailbox", 0, 0, G_OPTION_ARG_STRING_ARRAY, &mailboxes, "a mailbox that exists (repeat)", "UPN" },
    { "disabled-mailbox", 0, 0, G_OPTION_ARG_STRING_ARRAY, &disabled, "a mailbox not enabled for REST (repeat)", "UPN" },
    { "spool", 0, 0, G_OPTION_ARG_FILENAME, &mock.spool, "directory for received MIME and uploads", "DIR" },
    { "roles", 0, 0, G_OPTION_ARG_STRING, &roles, "issue JWT-shaped tokens with these roles", "\"Mail.Send ...\"" },
    { "extra-client", 0, 0, G_OPTION_ARG_STRING_ARRAY, &extra, "another client, its secret's variable and its roles (repeat)", "ID:VAR:ROLES" },
    { NULL }
  };
  g_autoptr(GMainLoop) loop = g_main_loop_new (NULL, FALSE);
  g_autoptr(JsonObject) hello = json_object_new ();
  g_autoptr(JsonNode) node = json_node_new (JSON_NODE_OBJECT);
  g_autofree char *hello_text = NULL;
  g_autofree char *graph = NULL;
  g_autofree char *token_endpoint = NULL;
  GSList *uris;
  const char *secret;

  g_option_context_add_main_entries (context, entries, NULL);
  if (!g_option_context_parse (context, &argc, &argv, &error) || mock.client_id == NULL || secret_env == NULL
      || (secret = g_getenv (secret_env)) == NULL)
    {
      g_printerr ("mock-graph: %s\n", error != NULL ? error->message : "--client-id and --secret-env (set) are required");
      return 2;
    }
  g_mime_init ();
  mock.t0 = g_get_monotonic_time ();
  mock.mailboxes = g_steal_pointer (&mailboxes);
  mock.disabled = g_steal_pointer (&disabled);
  for (guint i = 0; mock.mailboxes != NULL && mock.mailboxes[i] != NULL; i++)
    {
      char *lower = g_ascii_strdown (mock.mailboxes[i], -1);

      g_free (mock.mailboxes[i]);
      mock.mailboxes[i] = lower;
    }
  mock.messages = json_array_new ();
  mock.requests = json_array_new ();
  mock.errors = json_array_new ();
  mock.upload_tokens = json_array_new ();
  mock.drafts = g_hash_table_new_full (g_str_hash, g_str_equal, NULL, (GDestroyNotify) mock_draft_free);
  mock.uploads = g_hash_table_new_full (g_str_hash, g_str_equal, NULL, (GDestroyNotify) mock_upload_free);
  g_queue_init (&mock.injects);

  mock.idp = oauth2_idp_new ();
  oauth2_idp_add_secret_client (mock.idp, mock.client_id, secret);
  if (roles != NULL)
    oauth2_idp_set_token_roles (mock.idp, mock.client_id, roles);
  for (guint i = 0; extra != NULL && extra[i] != NULL; i++)
    {
      g_auto(GStrv) f = g_strsplit (extra[i], ":", 3);

      if (g_strv_length (f) != 3 || g_getenv (f[1]) == NULL)
        {
          g_printerr ("mock-graph: --extra-client %s: want ID:VAR:ROLES with VAR set\n", extra[i]);
          return 2;
        }
      oauth2_idp_add_secret_client (mock.idp, f[0], g_getenv (f[1]));
      oauth2_idp_set_token_roles (mock.idp, f[0], f[2]);
    }

  mock.server = soup_server_new ("server-header", "mock-graph", NULL);
  soup_server_add_handler (mock.server, NULL, mock_handler, NULL, NULL);
  if (!soup_server_listen_local (mock.server, 0, SOUP_SERVER_LISTEN_IPV4_ONLY, &error))
    {
      g_printerr ("mock-graph: cannot listen: %s\n", error->message);
      return 1;
    }
  uris = soup_server_get_uris (mock.server);
  mock.base = g_strdup_printf ("http://127.0.0.1:%d", g_uri_get_port (uris->data));
  g_slist_free_full (uris, (GDestroyNotify) g_uri_unref);

  graph = g_strdup_printf ("%s/v1.0", mock.base);
  token_endpoint = g_strdup_printf ("%s/%s/oauth2/v2.0/token", oauth2_idp_get_url (mock.idp), MOCK_TENANT);
  json_object_set_string_member (hello, "graph", graph);
  json_object_set_string_member (hello, "authority", oauth2_idp_get_url (mock.idp));
  json_object_set_string_member (hello, "tenant", MOCK_TENANT);
  json_object_set_string_member (hello, "token_endpoint", token_endpoint);
  json_object_set_string_member (hello, "control", mock.base);
  json_node_set_object (node, hello);
  hello_text = json_to_string (node, FALSE);
  printf ("%s\n", hello_text);
  fflush (stdout);

  g_unix_signal_add (SIGTERM, mock_quit, loop);
  g_unix_signal_add (SIGINT, mock_quit, loop);
  g_main_loop_run (loop);

  soup_server_disconnect (mock.server);
  g_object_unref (mock.server);
  oauth2_idp_free (mock.idp);
  g_hash_table_unref (mock.uploads);
  g_hash_table_unref (mock.drafts);
  json_array_unref (mock.messages);
  json_array_unref (mock.requests);
  json_array_unref (mock.errors);
  json_array_unref (mock.upload_tokens);
  g_queue_clear_full (&mock.injects, (GDestroyNotify) mock_inject_free);
  g_strfreev (mock.mailboxes);
  g_strfreev (mock.disabled);
  g_strfreev (mock.invalid_recipients);
  g_free (mock.base);
  g_free (mock.client_id);
  g_free (mock.spool);
  return 0;
}

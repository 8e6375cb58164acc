/* SPDX-License-Identifier: GPL-3.0-or-later */
/*
 * mock-gmail.c - a Gmail API (users.messages.send) on loopback for the
 * integration tests, with the test identity provider (oauth2-idp.c) in the
 * same process, so that every bearer token is checked to be one the IdP
 * issued, still live, for the right delegated subject and with a scope
 * that may send.
 *
 *   mock-gmail --dir DIR --service-account EMAIL --subject USER
 *              [--scopes "S1 S2"] [--client ID:SECRET]
 *
 * At start it makes an RSA key, registers the service account with the
 * IdP (allowed to act for USER with the given scopes) and writes the key
 * file DIR/service-account.json (token_uri = the IdP), then prints one JSON
 * line: {"api", "token_uri", "key_file", "client_id"}.  SIGTERM stops it.
 *
 * Every request is checked against the documented format (providers.md §4):
 *   POST /gmail/v1/users/{user}/messages/send, Content-Type
 *     application/json, body {"raw": base64url} (alphabet A-Z a-z 0-9 - _,
 *     padding optional, no + or /), no other members but threadId;
 *   POST /upload/gmail/v1/users/{user}/messages/send?uploadType=media,
 *     Content-Type message/rfc822, the message bytes.
 * A request that breaks the format is answered 400 and recorded as a
 * violation.  The decoded message is saved as DIR/msg-N.eml and its To,
 * Cc and Bcc recipients recorded.
 *
 * Control (not Gmail): POST /_mock/inject {"status", "reason", "message",
 * "count", "retry_after"} queues answers for the next sends (after the
 * token check); POST /_mock/revoke revokes every access token at the IdP;
 * POST /_mock/refresh-token returns a refresh token of the --client; GET
 * /_mock/state returns {"sends", "requests", "violations",
 * "unauthorized", "injected", "token_requests", "issued"} (issued: every
 * token the IdP gave out, for the test's leak check).
 */
#include "oauth2-idp.h"

#include <gio/gio.h>
#include <glib-unix.h>
#include <gmime/gmime.h>
#include <json-glib/json-glib.h>
#include <libsoup/soup.h>
#include <openssl/pem.h>
#include <openssl/rsa.h>
#include <stdio.h>
#include <string.h>

#define SEND_SCOPE "https://www.googleapis.com/auth/gmail.send"
#define FULL_SCOPE "https://mail.google.com/"

typedef struct {
  guint  status;
  char  *reason;
  char  *message;
  char  *retry_after;
  guint  count;
} Injection;

typedef struct {
  OAuth2Idp  *idp;
  char       *dir;
  char       *service_account;
  char       *subject;
  char       *client_id;           /* the installed-app client, or NULL */
  GQueue      injections;          /* Injection */
  JsonArray  *sends;
  JsonArray  *violations;
  guint       requests;
  guint       unauthorized;
  guint       injected;
  guint       n;
} Mock;

/* injection_free - free a queued answer */
static void
injection_free (gpointer data)
{
  Injection *inj = data;

  g_free (inj->reason);
  g_free (inj->message);
  g_free (inj->retry_after);
  g_free (inj);
}

/* reply - a JSON answer */
static void
reply (SoupServerMessage *msg,
       guint              status,
       const char        *json)
{
  soup_server_message_set_status (msg, status, NULL);
  soup_server_message_set_response (msg, "application/json; charset=UTF-8", SOUP_MEMORY_COPY, json, strlen (json));
}

/* reply_error - Google's error body (handle-errors guide) */
static void
reply_error (SoupServerMessage *msg,
             guint              status,
             const char        *domain,
             const char        *reason,
             const char        *message,
             const char        *status_word)
{
  g_autofree char *json = g_strdup_printf (
    "{\"error\":{\"code\":%u,\"message\":\"%s\",\"errors\":[{\"message\":\"%s\",\"domain\":\"%s\",\"reason\":\"%s\"}],"
    "\"status\":\"%s\"}}", status, message, message, domain, reason, status_word);

  reply (msg, status, json);
}

/* violation - record a request that breaks the documented format, answer 400 */
static void
violation (Mock              *mock,
           SoupServerMessage *msg,
           const char        *what)
{
  g_autofree char *text = g_strdup_printf ("%s %s: %s", soup_server_message_get_method (msg),
                                           g_uri_get_path (soup_server_message_get_uri (msg)), what);

  json_array_add_string_element (mock->violations, text);
  g_printerr ("mock-gmail: violation: %s\n", text);
  reply_error (msg, 400, "global", "invalidArgument", "Invalid request format", "INVALID_ARGUMENT");
}

/* b64url_decode - strict base64url (padding optional); NULL when not */
static GBytes *
b64url_decode (const char *in)
{
  gsize len = strlen (in), pad = 0, out_len = 0;
  GString *s;
  guint8 *out;

  while (pad < len && in[len - 1 - pad] == '=')
    pad++;
  if (pad > 2)
    return NULL;
  for (gsize i = 0; i < len - pad; i++)
    if (!g_ascii_isalnum (in[i]) && in[i] != '-' && in[i] != '_')
      return NULL;
  if ((len - pad) % 4 == 1 || (pad > 0 && len % 4 != 0))
    return NULL;
  s = g_string_new_len (in, (gssize) (len - pad));
  for (gsize i = 0; i < s->len; i++)
    if (s->str[i] == '-')
      s->str[i] = '+';
    else if (s->str[i] == '_')
      s->str[i] = '/';
  while (s->len % 4 != 0)
    g_string_append_c (s, '=');
  out = g_base64_decode (s->str, &out_len);
  g_string_free (s, TRUE);
  return g_bytes_new_take (out, out_len);
}

/* add_recipients - the addresses of one header into @set */
static void
add_recipients (InternetAddressList *list,
                GHashTable          *set)
{
  for (int i = 0; list != NULL && i < internet_address_list_length (list); i++)
    {
      InternetAddress *a = internet_address_list_get_address (list, i);

      if (INTERNET_ADDRESS_IS_GROUP (a))
        add_recipients (internet_address_group_get_members (INTERNET_ADDRESS_GROUP (a)), set);
      else if (INTERNET_ADDRESS_IS_MAILBOX (a))
        g_hash_table_add (set, g_ascii_strdown (internet_address_mailbox_get_addr (INTERNET_ADDRESS_MAILBOX (a)), -1));
    }
}

/* compare_strings - GPtrArray sort of strings */
static gint
compare_strings (gconstpointer a,
                 gconstpointer b)
{
  return strcmp (*(char *const *) a, *(char *const *) b);
}

/* recipients - the sorted, lower-case To/Cc/Bcc addresses of @data */
static GPtrArray *
recipients (GBytes *data)
{
  GMimeStream *stream = g_mime_stream_mem_new_with_byte_array (g_bytes_unref_to_array (g_bytes_ref (data)));
  GMimeParser *parser = g_mime_parser_new_with_stream (stream);
  GMimeMessage *message = g_mime_parser_construct_message (parser, NULL);
  g_autoptr(GHashTable) set = g_hash_table_new_full (g_str_hash, g_str_equal, g_free, NULL);
  GPtrArray *out = g_ptr_array_new_with_free_func (g_free);
  GHashTableIter iter;
  gpointer key;

  if (message != NULL)
    {
      add_recipients (g_mime_message_get_to (message), set);
      add_recipients (g_mime_message_get_cc (message), set);
      add_recipients (g_mime_message_get_bcc (message), set);
      g_object_unref (message);
    }
  g_object_unref (parser);
  g_object_unref (stream);
  g_hash_table_iter_init (&iter, set);
  while (g_hash_table_iter_next (&iter, &key, NULL))
    g_ptr_array_add (out, g_strdup (key));
  g_ptr_array_sort (out, compare_strings);
  return out;
}

/* check_token - the bearer token is live, for @user, with a sending
 * scope; answers 401/403 like Gmail and returns FALSE otherwise */
static gboolean
check_token (Mock              *mock,
             SoupServerMessage *msg,
             const char        *user,
             char             **out_sub,
             char             **out_scope)
{
  const char *auth = soup_message_headers_get_one (soup_server_message_get_request_headers (msg), "Authorization");
  g_autofree char *client = NULL;
  g_autofree char *sub = NULL;
  g_autofree char *scope = NULL;
  g_auto(GStrv) scopes = NULL;
  gboolean sends = FALSE;

  if (auth == NULL || !g_str_has_prefix (auth, "Bearer ")
      || !oauth2_idp_dup_token_grant (mock->idp, auth + 7, &client, &sub, &scope))
    {
      mock->unauthorized++;
      soup_message_headers_replace (soup_server_message_get_response_headers (msg), "WWW-Authenticate",
                                    "Bearer realm=\"https://accounts.google.com/\", error=\"invalid_token\"");
      reply_error (msg, 401, "global", "authError", "Invalid Credentials", "UNAUTHENTICATED");
      return FALSE;
    }
  if (g_strcmp0 (client, mock->service_account) == 0)
    {
      /* A delegated token acts for its subject only. */
      if (sub == NULL || (strcmp (user, "me") != 0 && g_ascii_strcasecmp (user, sub) != 0))
        {
          reply_error (msg, 403, "global", "forbidden", "Delegation denied for the requested user", "PERMISSION_DENIED");
          return FALSE;
        }
      scopes = g_strsplit (scope != NULL ? scope : "", " ", -1);
      for (guint i = 0; scopes[i] != NULL; i++)
        sends |= strcmp (scopes[i], SEND_SCOPE) == 0 || strcmp (scopes[i], FULL_SCOPE) == 0;
      if (!sends)
        {
          reply_error (msg, 403, "global", "insufficientPermissions", "Request had insufficient authentication scopes.",
                       "PERMISSION_DENIED");
          return FALSE;
        }
    }
  else if (strcmp (user, "me") != 0)
    {
      /* An installed-app token is its user's: the mock knows it as "me". */
      reply_error (msg, 403, "global", "forbidden", "Delegation denied for the requested user", "PERMISSION_DENIED");
      return FALSE;
    }
  *out_sub = g_steal_pointer (&sub);
  *out_scope = g_steal_pointer (&scope);
  return TRUE;
}

/* handle_send - both send endpoints */
static void
handle_send (Mock              *mock,
             SoupServerMessage *msg,
             const char        *path,
             GHashTable        *query,
             gboolean           upload)
{
  SoupMessageHeaders *headers = soup_server_message_get_request_headers (msg);
  SoupMessageBody *body = soup_server_message_get_request_body (msg);
  const char *prefix = upload ? "/upload/gmail/v1/users/" : "/gmail/v1/users/";
  const char *content_type = soup_message_headers_get_content_type (headers, NULL);
  g_autofree char *user_escaped = NULL;
  g_autofree char *user = NULL;
  g_autofree char *sub = NULL;
  g_autofree char *scope = NULL;
  g_autofree char *file = NULL;
  g_autofree char *id = NULL;
  g_autofree char *answer = NULL;
  g_autoptr(GBytes) data = NULL;
  g_autoptr(GBytes) request = soup_message_body_flatten (body);
  g_autoptr(GPtrArray) rcpts = NULL;
  g_autoptr(GError) error = NULL;
  JsonObject *record;
  JsonArray *list;
  gsize len;

  user_escaped = g_strndup (path + strlen (prefix), strlen (path) - strlen (prefix) - strlen ("/messages/send"));
  user = g_uri_unescape_string (user_escaped, NULL);
  if (user == NULL || user[0] == '\0' || strchr (user, '/') != NULL)
    {
      violation (mock, msg, "no user in the path");
      return;
    }
  if (strcmp (soup_server_message_get_method (msg), "POST") != 0)
    {
      violation (mock, msg, "method is not POST");
      return;
    }
  if (upload)
    {
      if (query == NULL || g_strcmp0 (g_hash_table_lookup (query, "uploadType"), "media") != 0)
        {
          violation (mock, msg, "uploadType is not media");
          return;
        }
      if (g_strcmp0 (content_type, "message/rfc822") != 0)
        {
          violation (mock, msg, "Content-Type of a media upload is not message/rfc822");
          return;
        }
      data = g_bytes_ref (request);
    }
  else
    {
      g_autoptr(JsonParser) parser = json_parser_new ();
      JsonNode *root;
      JsonObject *o;
      GList *members;
      gboolean extra = FALSE;

      if (g_strcmp0 (content_type, "application/json") != 0)
        {
          violation (mock, msg, "Content-Type is not application/json");
          return;
        }
      if (!json_parser_load_from_data (parser, g_bytes_get_data (request, NULL), (gssize) g_bytes_get_size (request), NULL)
          || (root = json_parser_get_root (parser)) == NULL || !JSON_NODE_HOLDS_OBJECT (root))
        {
          violation (mock, msg, "body is not a JSON object");
          return;
        }
      o = json_node_get_object (root);
      members = json_object_get_members (o);
      for (GList *m = members; m != NULL; m = m->next)
        extra |= strcmp (m->data, "raw") != 0 && strcmp (m->data, "threadId") != 0;
      g_list_free (members);
      if (extra || !json_object_has_member (o, "raw")
          || json_node_get_value_type (json_object_get_member (o, "raw")) != G_TYPE_STRING)
        {
          violation (mock, msg, "body is not {\"raw\": string}");
          return;
        }
      data = b64url_decode (json_object_get_string_member (o, "raw"));
      if (data == NULL)
        {
          violation (mock, msg, "raw is not base64url (A-Z a-z 0-9 - _, padding optional)");
          return;
        }
    }

  mock->requests++;
  if (!check_token (mock, msg, user, &sub, &scope))
    return;

  if (!g_queue_is_empty (&mock->injections))
    {
      Injection *inj = g_queue_peek_head (&mock->injections);

      mock->injected++;
      if (inj->retry_after != NULL)
        soup_message_headers_replace (soup_server_message_get_response_headers (msg), "Retry-After", inj->retry_after);
      reply_error (msg, inj->status, inj->status == 429 || g_str_has_suffix (inj->reason, "LimitExceeded") ? "usageLimits" : "global",
                   inj->reason, inj->message,
                   inj->status == 429 ? "RESOURCE_EXHAUSTED" : inj->status == 401 ? "UNAUTHENTICATED"
                   : inj->status == 403 ? "PERMISSION_DENIED" : inj->status == 400 ? "INVALID_ARGUMENT" : "UNAVAILABLE");
      if (--inj->count == 0)
        injection_free (g_queue_pop_head (&mock->injections));
      return;
    }

  rcpts = recipients (data);
  if (rcpts->len == 0)
    {
      reply_error (msg, 400, "global", "invalidArgument", "Recipient address required", "INVALID_ARGUMENT");
      return;
    }
  mock->n++;
  file = g_strdup_printf ("%s/msg-%u.eml", mock->dir, mock->n);
  if (!g_file_set_contents (file, g_bytes_get_data (data, &len), (gssize) g_bytes_get_size (data), &error))
    g_error ("mock-gmail: %s", error->message);
  id = g_strdup_printf ("18c%013x", mock->n * 7919u);

  record = json_object_new ();
  json_object_set_int_member (record, "n", mock->n);
  json_object_set_string_member (record, "id", id);
  json_object_set_string_member (record, "user", user);
  json_object_set_string_member (record, "kind", upload ? "media" : "raw");
  json_object_set_int_member (record, "size", (gint64) len);
  json_object_set_string_member (record, "file", file);
  json_object_set_string_member (record, "sub", sub != NULL ? sub : "");
  json_object_set_string_member (record, "scope", scope != NULL ? scope : "");
  list = json_array_new ();
  for (guint i = 0; i < rcpts->len; i++)
    json_array_add_string_element (list, rcpts->pdata[i]);
  json_object_set_array_member (record, "recipients", list);
  json_array_add_object_element (mock->sends, record);

  answer = g_strdup_printf ("{\"id\":\"%s\",\"threadId\":\"%s\",\"labelIds\":[\"SENT\"]}", id, id);
  reply (msg, 200, answer);
}

/* handle_control - the test's side door */
static void
handle_control (Mock              *mock,
                SoupServerMessage *msg,
                const char        *path,
                GHashTable        *query)
{
  SoupMessageBody *body = soup_server_message_get_request_body (msg);

  if (strcmp (path, "/_mock/state") == 0)
    {
      g_autoptr(JsonObject) o = json_object_new ();
      g_autoptr(JsonNode) node = json_node_new (JSON_NODE_OBJECT);
      g_autofree char *text = NULL;

      json_object_set_array_member (o, "sends", json_array_ref (mock->sends));
      json_object_set_array_member (o, "violations", json_array_ref (mock->violations));
      json_object_set_int_member (o, "requests", mock->requests);
      json_object_set_int_member (o, "unauthorized", mock->unauthorized);
      json_object_set_int_member (o, "injected", mock->injected);
      json_object_set_int_member (o, "pending_injections", g_queue_get_length (&mock->injections));
      json_object_set_int_member (o, "token_requests", oauth2_idp_get_requests (mock->idp, mock->service_account));
      {
        g_auto(GStrv) issued = oauth2_idp_dup_issued (mock->idp);
        JsonArray *a = json_array_new ();

        /* For the test's leak check only: a test token is no secret. */
        for (guint i = 0; issued[i] != NULL; i++)
          json_array_add_string_element (a, issued[i]);
        json_object_set_array_member (o, "issued", a);
      }
      json_node_set_object (node, o);
      text = json_to_string (node, FALSE);
      reply (msg, 200, text);
      return;
    }
  if (strcmp (path, "/_mock/inject") == 0)
    {
      g_autoptr(JsonParser) parser = json_parser_new ();
      JsonObject *o;
      Injection *inj;

      if (!json_parser_load_from_data (parser, body->data, (gssize) body->length, NULL)
          || !JSON_NODE_HOLDS_OBJECT (json_parser_get_root (parser)))
        {
          reply (msg, 400, "{\"error\":\"inject takes a JSON object\"}");
          return;
        }
      o = json_node_get_object (json_parser_get_root (parser));
      inj = g_new0 (Injection, 1);
      inj->status = (guint) json_object_get_int_member_with_default (o, "status", 503);
      inj->reason = g_strdup (json_object_get_string_member_with_default (o, "reason", "backendError"));
      inj->message = g_strdup (json_object_get_string_member_with_default (o, "message", "Backend Error"));
      inj->retry_after = g_strdup (json_object_get_string_member_with_default (o, "retry_after", NULL));
      inj->count = (guint) MAX (json_object_get_int_member_with_default (o, "count", 1), 1);
      g_queue_push_tail (&mock->injections, inj);
      reply (msg, 200, "{}");
      return;
    }
  if (strcmp (path, "/_mock/revoke") == 0)
    {
      g_auto(GStrv) issued = oauth2_idp_dup_issued (mock->idp);

      for (guint i = 0; issued[i] != NULL; i++)
        oauth2_idp_revoke_access_token (mock->idp, issued[i]);
      reply (msg, 200, "{}");
      return;
    }
  if (strcmp (path, "/_mock/refresh-token") == 0 && mock->client_id != NULL)
    {
      g_autofree char *token = oauth2_idp_issue_refresh_token (mock->idp, mock->client_id);
      g_autofree char *text = g_strdup_printf ("{\"refresh_token\":\"%s\"}", token);

      reply (msg, 200, text);
      return;
    }
  reply (msg, 404, "{\"error\":\"unknown control\"}");
}

/* handler - every request */
static void
handler (SoupServer        *server,
         SoupServerMessage *msg,
         const char        *path,
         GHashTable        *query,
         gpointer           data)
{
  Mock *mock = data;

  if (g_str_has_prefix (path, "/_mock/"))
    handle_control (mock, msg, path, query);
  else if (g_str_has_prefix (path, "/gmail/v1/users/") && g_str_has_suffix (path, "/messages/send"))
    handle_send (mock, msg, path, query, FALSE);
  else if (g_str_has_prefix (path, "/upload/gmail/v1/users/") && g_str_has_suffix (path, "/messages/send"))
    handle_send (mock, msg, path, query, TRUE);
  else
    {
      g_autofree char *what = g_strdup ("no such endpoint");

      violation (mock, msg, what);
      soup_server_message_set_status (msg, 404, NULL);
    }
}

/* write_key_file - a Google service-account key file for @key */
static char *
write_key_file (Mock       *mock,
                EVP_PKEY   *key,
                const char *token_uri)
{
  BIO *bio = BIO_new (BIO_s_mem ());
  g_autoptr(JsonBuilder) b = json_builder_new ();
  g_autoptr(JsonNode) root = NULL;
  g_autofree char *pem = NULL;
  g_autofree char *text = NULL;
  g_autoptr(GError) error = NULL;
  char *path = g_build_filename (mock->dir, "service-account.json", NULL);
  char *p;
  long n;

  if (!PEM_write_bio_PrivateKey (bio, key, NULL, NULL, 0, NULL, NULL))
    g_error ("mock-gmail: cannot write the key");
  n = BIO_get_mem_data (bio, &p);
  pem = g_strndup (p, (gsize) n);
  BIO_free (bio);

  json_builder_begin_object (b);
#define MEMBER(k, v) json_builder_set_member_name (b, k); json_builder_add_string_value (b, v)
  MEMBER ("type", "service_account");
  MEMBER ("project_id", "postmux-mock");
  MEMBER ("private_key_id", "0123456789abcdef0123456789abcdef01234567");
  MEMBER ("private_key", pem);
  MEMBER ("client_email", mock->service_account);
  MEMBER ("client_id", "103456789012345678901");
  MEMBER ("auth_uri", "https://accounts.google.com/o/oauth2/auth");
  MEMBER ("token_uri", token_uri);
  MEMBER ("universe_domain", "googleapis.com");
#undef MEMBER
  json_builder_end_object (b);
  root = json_builder_get_root (b);
  text = json_to_string (root, TRUE);
  if (!g_file_set_contents_full (path, text, -1, G_FILE_SET_CONTENTS_CONSISTENT, 0600, &error))
    g_error ("mock-gmail: %s", error->message);
  return path;
}

/* on_term - SIGTERM/SIGINT: stop */
static gboolean
on_term (gpointer data)
{
  g_main_loop_quit (data);
  return G_SOURCE_REMOVE;
}

int
main (int argc, char **argv)
{
  g_autofree char *dir = NULL, *sa = NULL, *subject = NULL, *scopes = NULL, *client = NULL;
  GOptionEntry entries[] = {
    { "dir", 0, 0, G_OPTION_ARG_FILENAME, &dir, "where the key file and messages go", "DIR" },
    { "service-account", 0, 0, G_OPTION_ARG_STRING, &sa, "client_email of the service account", "EMAIL" },
    { "subject", 0, 0, G_OPTION_ARG_STRING, &subject, "the user it may act for", "USER" },
    { "scopes", 0, 0, G_OPTION_ARG_STRING, &scopes, "scopes it may ask for", "\"S1 S2\"" },
    { "client", 0, 0, G_OPTION_ARG_STRING, &client, "an installed-app client", "ID:SECRET" },
    { NULL },
  };
  g_autoptr(GOptionContext) context = g_option_context_new ("- a mock Gmail API with its identity provider");
  g_autoptr(GError) error = NULL;
  g_autoptr(SoupServer) server = NULL;
  g_autoptr(GMainLoop) loop = NULL;
  g_autofree char *token_uri = NULL;
  g_autofree char *key_file = NULL;
  g_autofree char *line = NULL;
  EVP_PKEY *key;
  GSList *uris;
  Mock mock = { 0 };

  g_option_context_add_main_entries (context, entries, NULL);
  if (!g_option_context_parse (context, &argc, &argv, &error) || dir == NULL || sa == NULL || subject == NULL)
    {
      g_printerr ("mock-gmail: %s\n", error != NULL ? error->message : "--dir, --service-account and --subject are required");
      return 2;
    }
  g_mime_init ();
  mock.dir = dir;
  mock.service_account = sa;
  mock.subject = subject;
  mock.sends = json_array_new ();
  mock.violations = json_array_new ();
  g_queue_init (&mock.injections);
  mock.idp = oauth2_idp_new ();

  key = EVP_RSA_gen (2048);
  oauth2_idp_add_service_account (mock.idp, sa, key, subject, scopes != NULL ? scopes : SEND_SCOPE);
  token_uri = g_strdup_printf ("%s/token", oauth2_idp_get_url (mock.idp));
  key_file = write_key_file (&mock, key, token_uri);
  EVP_PKEY_free (key);
  if (client != NULL && strchr (client, ':') != NULL)
    {
      *strchr (client, ':') = '\0';
      mock.client_id = client;
      oauth2_idp_add_secret_client (mock.idp, client, client + strlen (client) + 1);
    }

  server = soup_server_new ("server-header", "ESF", NULL);
  soup_server_add_handler (server, NULL, handler, &mock, NULL);
  if (!soup_server_listen_local (server, 0, SOUP_SERVER_LISTEN_IPV4_ONLY, &error))
    {
      g_printerr ("mock-gmail: %s\n", error->message);
      return 1;
    }
  uris = soup_server_get_uris (server);
  line = g_strdup_printf ("{\"api\":\"http://127.0.0.1:%d\",\"token_uri\":\"%s\",\"key_file\":\"%s\","
                          "\"client_id\":\"103456789012345678901\"}",
                          g_uri_get_port (uris->data), token_uri, key_file);
  g_slist_free_full (uris, (GDestroyNotify) g_uri_unref);
  printf ("%s\n", line);
  fflush (stdout);

  loop = g_main_loop_new (NULL, FALSE);
  g_unix_signal_add (SIGTERM, on_term, loop);
  g_unix_signal_add (SIGINT, on_term, loop);
  g_main_loop_run (loop);

  soup_server_disconnect (server);
  oauth2_idp_free (mock.idp);
  g_queue_clear_full (&mock.injections, injection_free);
  json_array_unref (mock.sends);
  json_array_unref (mock.violations);
  g_mime_shutdown ();
  return 0;
}

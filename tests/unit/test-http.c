/* SPDX-License-Identifier: GPL-3.0-or-later */
/*
 * test-http.c - the SDK's HTTP client (postmux-http.h) against a libsoup
 * server on loopback, run in its own thread: methods and exact bodies,
 * the Authorization header only when a bearer is given, Retry-After in
 * both forms, the response size bound, connection reuse, URL checks,
 * unreachable hosts, and base64url.
 */
#include <postmux/postmux.h>

#include <string.h>
#include <libsoup/soup.h>

typedef struct {
  GThread      *thread;
  GMainContext *context;
  GMainLoop    *loop;
  SoupServer   *server;
  char         *url;
  GMutex        lock;
  GCond         cond;
  gboolean      ready;
  /* the last request, under lock */
  char         *method;
  char         *path;
  char         *authorization;
  char         *content_type;
  char         *extra;
  GBytes       *body;
  guint         requests;
  GHashTable   *connections;   /* GSocketAddress of each peer seen (as strings) */
} Server;

/* server_handler - record the request; the path chooses the answer */
static void
server_handler (SoupServer        *soup,
                SoupServerMessage *msg,
                const char        *path,
                GHashTable        *query,
                gpointer           user_data)
{
  Server *s = user_data;
  SoupMessageHeaders *req = soup_server_message_get_request_headers (msg);
  SoupMessageHeaders *resp = soup_server_message_get_response_headers (msg);
  SoupMessageBody *body = soup_server_message_get_request_body (msg);
  g_autoptr(GBytes) bytes = soup_message_body_flatten (body);
  GSocketAddress *remote = soup_server_message_get_remote_address (msg);
  g_autofree char *peer = g_strdup_printf ("%u", g_inet_socket_address_get_port (G_INET_SOCKET_ADDRESS (remote)));

  g_mutex_lock (&s->lock);
  g_free (s->method);
  g_free (s->path);
  g_free (s->authorization);
  g_free (s->content_type);
  g_free (s->extra);
  g_clear_pointer (&s->body, g_bytes_unref);
  s->method = g_strdup (soup_server_message_get_method (msg));
  s->path = g_strdup (path);
  s->authorization = g_strdup (soup_message_headers_get_one (req, "Authorization"));
  s->content_type = g_strdup (soup_message_headers_get_one (req, "Content-Type"));
  s->extra = g_strdup (soup_message_headers_get_one (req, "X-Extra"));
  s->body = g_bytes_ref (bytes);
  s->requests++;
  g_hash_table_add (s->connections, g_steal_pointer (&peer));
  g_mutex_unlock (&s->lock);

  if (strcmp (path, "/echo") == 0)
    {
      soup_server_message_set_status (msg, 200, NULL);
      soup_server_message_set_response (msg, "application/octet-stream", SOUP_MEMORY_COPY,
                                        g_bytes_get_data (bytes, NULL), g_bytes_get_size (bytes));
    }
  else if (strcmp (path, "/throttle") == 0)
    {
      soup_message_headers_append (resp, "Retry-After", "7");
      soup_server_message_set_status (msg, 429, NULL);
      soup_server_message_set_response (msg, "application/json", SOUP_MEMORY_STATIC,
                                        "{\"error\":{\"code\":\"TooManyRequests\"}}", 36);
    }
  else if (strcmp (path, "/throttle-date") == 0)
    {
      g_autoptr(GDateTime) later = g_date_time_add_seconds (g_date_time_new_now_utc (), 120);
      g_autofree char *date = soup_date_time_to_string (later, SOUP_DATE_HTTP);

      soup_message_headers_append (resp, "Retry-After", date);
      soup_server_message_set_status (msg, 503, NULL);
    }
  else if (strcmp (path, "/big") == 0)
    {
      char *big = g_malloc (64 * 1024);

      memset (big, 'x', 64 * 1024);
      soup_server_message_set_status (msg, 200, NULL);
      soup_server_message_set_response (msg, "text/plain", SOUP_MEMORY_TAKE, big, 64 * 1024);
    }
  else if (strcmp (path, "/created") == 0)
    {
      soup_message_headers_append (resp, "Location", "https://upload.example.test/session/1");
      soup_server_message_set_status (msg, 201, NULL);
      soup_server_message_set_response (msg, "application/json", SOUP_MEMORY_STATIC, "{\"id\":\"m1\"}", 11);
    }
  else
    soup_server_message_set_status (msg, 404, NULL);
}

/* server_thread - run the server's context */
static gpointer
server_thread (gpointer data)
{
  Server *s = data;
  g_autoptr(GError) error = NULL;
  GSList *uris;

  g_main_context_push_thread_default (s->context);
  s->server = soup_server_new (NULL, NULL);
  soup_server_add_handler (s->server, NULL, server_handler, s, NULL);
  g_assert_true (soup_server_listen_local (s->server, 0, SOUP_SERVER_LISTEN_IPV4_ONLY, &error));
  g_assert_no_error (error);
  uris = soup_server_get_uris (s->server);
  g_mutex_lock (&s->lock);
  s->url = g_uri_to_string (uris->data);
  if (g_str_has_suffix (s->url, "/"))
    s->url[strlen (s->url) - 1] = '\0';
  s->ready = TRUE;
  g_cond_signal (&s->cond);
  g_mutex_unlock (&s->lock);
  g_slist_free_full (uris, (GDestroyNotify) g_uri_unref);
  g_main_loop_run (s->loop);
  soup_server_disconnect (s->server);
  g_object_unref (s->server);
  g_main_context_pop_thread_default (s->context);
  return NULL;
}

static Server *
server_new (void)
{
  Server *s = g_new0 (Server, 1);

  g_mutex_init (&s->lock);
  g_cond_init (&s->cond);
  s->connections = g_hash_table_new_full (g_str_hash, g_str_equal, g_free, NULL);
  s->context = g_main_context_new ();
  s->loop = g_main_loop_new (s->context, FALSE);
  s->thread = g_thread_new ("http-server", server_thread, s);
  g_mutex_lock (&s->lock);
  while (!s->ready)
    g_cond_wait (&s->cond, &s->lock);
  g_mutex_unlock (&s->lock);
  return s;
}

static gboolean
server_quit (gpointer data)
{
  g_main_loop_quit (data);
  return G_SOURCE_REMOVE;
}

static void
server_free (Server *s)
{
  g_main_context_invoke (s->context, server_quit, s->loop);
  g_thread_join (s->thread);
  g_main_loop_unref (s->loop);
  g_main_context_unref (s->context);
  g_free (s->url);
  g_free (s->method);
  g_free (s->path);
  g_free (s->authorization);
  g_free (s->content_type);
  g_free (s->extra);
  g_clear_pointer (&s->body, g_bytes_unref);
  g_hash_table_unref (s->connections);
  g_mutex_clear (&s->lock);
  g_cond_clear (&s->cond);
  g_free (s);
}

/* A binary body with NULs, CR, LF and every byte value: sent exactly. */
static void
test_post_exact (void)
{
  Server *s = server_new ();
  g_autoptr(PmxHttp) http = pmx_http_new (NULL);
  g_auto(PmxHttpResponse) resp = { 0 };
  g_autoptr(GError) error = NULL;
  g_autofree char *url = g_strconcat (s->url, "/echo", NULL);
  const char *headers[] = { "X-Extra: one", NULL };
  guint8 body[512];
  PmxHttpRequest req = { 0 };

  for (gsize i = 0; i < sizeof body; i++)
    body[i] = (guint8) (i * 7);
  req.method = "POST";
  req.url = url;
  req.bearer = "tok-123";
  req.content_type = "text/plain";
  req.body = body;
  req.body_len = sizeof body;
  req.headers = headers;
  g_assert_true (pmx_http_send (http, &req, &resp, NULL, &error));
  g_assert_no_error (error);
  g_assert_cmpuint (resp.status, ==, 200);
  g_assert_cmpmem (g_bytes_get_data (resp.body, NULL), g_bytes_get_size (resp.body), body, sizeof body);
  g_assert_cmpstr (resp.content_type, ==, "application/octet-stream");
  g_assert_cmpint (resp.retry_after, ==, -1);
  g_mutex_lock (&s->lock);
  g_assert_cmpstr (s->method, ==, "POST");
  g_assert_cmpstr (s->authorization, ==, "Bearer tok-123");
  g_assert_cmpstr (s->content_type, ==, "text/plain");
  g_assert_cmpstr (s->extra, ==, "one");
  g_assert_cmpmem (g_bytes_get_data (s->body, NULL), g_bytes_get_size (s->body), body, sizeof body);
  g_mutex_unlock (&s->lock);
  server_free (s);
}

/* Without a bearer there is no Authorization header, even after a request
 * that had one on the same client; PUT carries its body; GET none. */
static void
test_no_bearer_and_methods (void)
{
  Server *s = server_new ();
  g_autoptr(PmxHttp) http = pmx_http_new (NULL);
  g_autoptr(GError) error = NULL;
  g_autofree char *url = g_strconcat (s->url, "/echo", NULL);
  PmxHttpRequest req = { 0 };

  for (int round = 0; round < 3; round++)
    {
      g_auto(PmxHttpResponse) resp = { 0 };

      req.method = round == 0 ? "POST" : round == 1 ? "PUT" : "GET";
      req.url = url;
      req.bearer = round == 0 ? "secret-token" : NULL;
      req.body = round == 2 ? NULL : (const guint8 *) "abc";
      req.body_len = round == 2 ? 0 : 3;
      g_assert_true (pmx_http_send (http, &req, &resp, NULL, &error));
      g_assert_no_error (error);
      g_mutex_lock (&s->lock);
      g_assert_cmpstr (s->method, ==, req.method);
      if (round == 0)
        g_assert_cmpstr (s->authorization, ==, "Bearer secret-token");
      else
        g_assert_null (s->authorization);
      g_assert_cmpuint (g_bytes_get_size (s->body), ==, round == 2 ? 0 : 3);
      g_mutex_unlock (&s->lock);
    }
  /* Three requests, one connection: the handle keeps it. */
  g_mutex_lock (&s->lock);
  g_assert_cmpuint (s->requests, ==, 3);
  g_assert_cmpuint (g_hash_table_size (s->connections), ==, 1);
  g_mutex_unlock (&s->lock);
  server_free (s);
}

static void
test_retry_after (void)
{
  Server *s = server_new ();
  g_autoptr(PmxHttp) http = pmx_http_new (NULL);
  g_autoptr(GError) error = NULL;
  g_autofree char *url1 = g_strconcat (s->url, "/throttle", NULL);
  g_autofree char *url2 = g_strconcat (s->url, "/throttle-date", NULL);
  g_auto(PmxHttpResponse) r1 = { 0 };
  g_auto(PmxHttpResponse) r2 = { 0 };
  PmxHttpRequest req = { .method = "POST", .url = url1 };
  g_autoptr(JsonNode) json = NULL;

  g_assert_true (pmx_http_send (http, &req, &r1, NULL, &error));
  g_assert_cmpuint (r1.status, ==, 429);
  g_assert_cmpint (r1.retry_after, ==, 7);
  json = pmx_http_response_get_json (&r1);
  g_assert_nonnull (json);
  g_assert_cmpstr (json_object_get_string_member (json_object_get_object_member (json_node_get_object (json), "error"), "code"),
                   ==, "TooManyRequests");

  req.url = url2;
  g_assert_true (pmx_http_send (http, &req, &r2, NULL, &error));
  g_assert_cmpuint (r2.status, ==, 503);
  g_assert_cmpint (r2.retry_after, >=, 118);
  g_assert_cmpint (r2.retry_after, <=, 120);
  g_assert_null (pmx_http_response_get_json (&r2));
  server_free (s);
}

static void
test_location_and_limit (void)
{
  Server *s = server_new ();
  PmxHttpOptions options = { .struct_size = sizeof options, .max_response = 1024 };
  g_autoptr(PmxHttp) http = pmx_http_new (&options);
  g_autoptr(GError) error = NULL;
  g_autofree char *url1 = g_strconcat (s->url, "/created", NULL);
  g_autofree char *url2 = g_strconcat (s->url, "/big", NULL);
  g_auto(PmxHttpResponse) r1 = { 0 };
  g_auto(PmxHttpResponse) r2 = { 0 };
  PmxHttpRequest req = { .method = "POST", .url = url1 };

  g_assert_true (pmx_http_send (http, &req, &r1, NULL, &error));
  g_assert_cmpuint (r1.status, ==, 201);
  g_assert_cmpstr (r1.location, ==, "https://upload.example.test/session/1");

  req.method = "GET";
  req.url = url2;
  g_assert_false (pmx_http_send (http, &req, &r2, NULL, &error));
  g_assert_error (error, PMX_TRANSPORT_ERROR, PMX_TRANSPORT_ERROR_TEMPORARY);
  g_assert_nonnull (strstr (error->message, "response larger than the limit"));
  g_assert_null (r2.body);
  server_free (s);
}

static void
test_urls (void)
{
  g_autoptr(GError) error = NULL;
  g_autoptr(PmxHttp) http = pmx_http_new (NULL);
  g_auto(PmxHttpResponse) resp = { 0 };
  PmxHttpRequest req = { .method = "GET", .url = "http://graph.example.test/v1.0/me", .bearer = "t" };

  g_assert_true (pmx_http_check_url ("https://graph.microsoft.com/v1.0", "graph_url", NULL));
  g_assert_true (pmx_http_check_url ("http://127.0.0.1:8080/x", "graph_url", NULL));
  g_assert_true (pmx_http_check_url ("http://[::1]:8080/x", "graph_url", NULL));
  g_assert_false (pmx_http_check_url ("graph.microsoft.com", "graph_url", &error));
  g_assert_error (error, PMX_TRANSPORT_ERROR, PMX_TRANSPORT_ERROR_CONFIG);
  g_assert_cmpstr (error->message, ==, "graph_url (19 characters) is not an absolute URL: write it as https://host/path");
  g_clear_error (&error);

  /* Secrets in user info or the query are never quoted back. */
  g_assert_false (pmx_http_check_url ("http://user:pw@hooks.example.test:8080/in?key=s3cr3t#f", "url", &error));
  g_assert_cmpstr (error->message, ==,
                   "url \"http://hooks.example.test:8080/in\" must use https:// (plain http is only allowed on a loopback address)");
  g_clear_error (&error);

  /* Plain http to a remote host: refused before anything is sent. */
  g_assert_false (pmx_http_send (http, &req, &resp, NULL, &error));
  g_assert_error (error, PMX_TRANSPORT_ERROR, PMX_TRANSPORT_ERROR_CONFIG);
  g_assert_cmpstr (error->message, ==,
                   "URL \"http://graph.example.test/v1.0/me\" must use https:// (plain http is only allowed on a loopback address)");
}

/* Nothing listens: a temporary error naming the host, never the token. */
static void
test_unreachable (void)
{
  g_autoptr(GError) error = NULL;
  g_autoptr(GSocket) sock = g_socket_new (G_SOCKET_FAMILY_IPV4, G_SOCKET_TYPE_STREAM, G_SOCKET_PROTOCOL_TCP, NULL);
  g_autoptr(GInetAddress) lo = g_inet_address_new_loopback (G_SOCKET_FAMILY_IPV4);
  g_autoptr(GSocketAddress) any = g_inet_socket_address_new (lo, 0);
  g_autoptr(GSocketAddress) bound = NULL;
  g_autoptr(PmxHttp) http = pmx_http_new (NULL);
  g_auto(PmxHttpResponse) resp = { 0 };
  g_autofree char *url = NULL;
  PmxHttpRequest req = { .method = "POST", .bearer = "very-secret-token" };

  /* A port bound but not listening refuses connections. */
  g_assert_true (g_socket_bind (sock, any, TRUE, NULL));
  bound = g_socket_get_local_address (sock, NULL);
  url = g_strdup_printf ("http://127.0.0.1:%u/x?token=q", g_inet_socket_address_get_port (G_INET_SOCKET_ADDRESS (bound)));
  req.url = url;
  g_assert_false (pmx_http_send (http, &req, &resp, NULL, &error));
  g_assert_error (error, PMX_TRANSPORT_ERROR, PMX_TRANSPORT_ERROR_TEMPORARY);
  g_assert_true (g_str_has_prefix (error->message, "POST 127.0.0.1: "));
  g_assert_null (strstr (error->message, "very-secret-token"));
  g_assert_null (strstr (error->message, "token=q"));
}

static void
test_base64url (void)
{
  const guint8 data[] = { 0xfb, 0xff, 0xbf, 0x3e, 0x3f };
  g_autofree char *a = pmx_base64url_encode (data, sizeof data);
  g_autofree char *b = pmx_base64url_encode ((const guint8 *) "a", 1);
  g_autofree char *c = pmx_base64url_encode ((const guint8 *) "", 0);

  g_assert_cmpstr (a, ==, "-_-_Pj8");
  g_assert_cmpstr (b, ==, "YQ");
  g_assert_cmpstr (c, ==, "");
}

int
main (int argc, char **argv)
{
  g_test_init (&argc, &argv, NULL);
  g_test_add_func ("/http/post-exact-bytes", test_post_exact);
  g_test_add_func ("/http/bearer-only-when-given", test_no_bearer_and_methods);
  g_test_add_func ("/http/retry-after", test_retry_after);
  g_test_add_func ("/http/location-and-limit", test_location_and_limit);
  g_test_add_func ("/http/urls", test_urls);
  g_test_add_func ("/http/unreachable", test_unreachable);
  g_test_add_func ("/http/base64url", test_base64url);
  return g_test_run ();
}

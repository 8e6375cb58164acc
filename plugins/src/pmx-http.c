/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * pmx-http.c - the SDK's blocking HTTP client (see postmux-http.h), on
 * one libcurl easy handle per PmxHttp.
 *
 * Reusing the easy handle keeps libcurl's connection cache, so a session
 * sending a run of messages to one API keeps its TLS connection.  Every
 * option a request sets is reset before the next (curl_easy_reset keeps
 * the connections), so nothing leaks from one request into another — in
 * particular not an Authorization header.
 */
#include "postmux-result-private.h"

#include <string.h>
#include <curl/curl.h>

#define HTTP_DEFAULT_CONNECT_TIMEOUT_MS 10000
#define HTTP_DEFAULT_TIMEOUT_MS        120000
#define HTTP_DEFAULT_MAX_RESPONSE      (1024 * 1024)

struct _PmxHttp {
  CURL  *curl;
  char  *ca_file;
  guint  connect_timeout_ms;
  guint  timeout_ms;
  gsize  max_response;
  char  *user_agent;
};

typedef struct {
  GByteArray   *body;
  gsize         max;
  gboolean      too_big;
  GCancellable *cancellable;
  char         *content_type;
  char         *retry_after;
  char         *location;
} HttpCall;

/* http_global_init - curl_global_init() once per process */
static gpointer
http_global_init (gpointer data)
{
  curl_global_init (CURL_GLOBAL_DEFAULT);
  return NULL;
}

PmxHttp *
pmx_http_new (const PmxHttpOptions *options)
{
  static GOnce once = G_ONCE_INIT;
  PmxHttp *http;

  g_once (&once, http_global_init, NULL);
  http = g_new0 (PmxHttp, 1);
  http->connect_timeout_ms = HTTP_DEFAULT_CONNECT_TIMEOUT_MS;
  http->timeout_ms = HTTP_DEFAULT_TIMEOUT_MS;
  http->max_response = HTTP_DEFAULT_MAX_RESPONSE;
  if (options != NULL)
    {
      http->ca_file = g_strdup (options->ca_file);
      if (options->connect_timeout_ms > 0)
        http->connect_timeout_ms = options->connect_timeout_ms;
      if (options->timeout_ms > 0)
        http->timeout_ms = options->timeout_ms;
      if (options->max_response > 0)
        http->max_response = options->max_response;
      http->user_agent = g_strdup (options->user_agent);
    }
  if (http->user_agent == NULL)
    http->user_agent = g_strdup ("postmux/" PMX_VERSION);
  return http;
}

void
pmx_http_free (PmxHttp *http)
{
  if (http == NULL)
    return;
  if (http->curl != NULL)
    curl_easy_cleanup (http->curl);
  g_free (http->ca_file);
  g_free (http->user_agent);
  g_free (http);
}

/* http_is_loopback - @host is a loopback name or address */
static gboolean
http_is_loopback (const char *host)
{
  g_autoptr(GInetAddress) address = NULL;

  if (g_ascii_strcasecmp (host, "localhost") == 0)
    return TRUE;
  address = g_inet_address_new_from_string (host);
  return address != NULL && g_inet_address_get_is_loopback (address);
}

/* http_url_shown - @url for a message: without user info, query and
 * fragment, where secrets travel (webhook keys, SAS tokens) */
static char *
http_url_shown (GUri *uri)
{
  return g_uri_join (G_URI_FLAGS_NONE, g_uri_get_scheme (uri), NULL, g_uri_get_host (uri),
                     g_uri_get_port (uri), g_uri_get_path (uri), NULL, NULL);
}

gboolean
pmx_http_check_url (const char  *url,
                    const char  *what,
                    GError     **error)
{
  g_autoptr(GUri) uri = url != NULL ? g_uri_parse (url, G_URI_FLAGS_NONE, NULL) : NULL;
  g_autofree char *shown = NULL;
  const char *scheme, *host;

  if (uri == NULL || g_uri_get_host (uri) == NULL || g_uri_get_host (uri)[0] == '\0')
    {
      /* Not a URL: nothing can be told apart as a secret, so say only its length. */
      g_set_error (error, PMX_TRANSPORT_ERROR, PMX_TRANSPORT_ERROR_CONFIG,
                   "%s (%" G_GSIZE_FORMAT " characters) is not an absolute URL: write it as https://host/path",
                   what, url != NULL ? strlen (url) : 0);
      return FALSE;
    }
  scheme = g_uri_get_scheme (uri);
  host = g_uri_get_host (uri);
  if (g_ascii_strcasecmp (scheme, "https") == 0)
    return TRUE;
  if (g_ascii_strcasecmp (scheme, "http") == 0 && http_is_loopback (host))
    return TRUE;
  shown = http_url_shown (uri);
  g_set_error (error, PMX_TRANSPORT_ERROR, PMX_TRANSPORT_ERROR_CONFIG,
               "%s \"%s\" must use https:// (plain http is only allowed on a loopback address)",
               what, shown);
  return FALSE;
}

/* http_write - collect the response body, bounded */
static size_t
http_write (char *ptr, size_t size, size_t nmemb, void *userdata)
{
  HttpCall *call = userdata;
  size_t n = size * nmemb;

  if (call->body->len + n > call->max)
    {
      call->too_big = TRUE;
      return 0;
    }
  g_byte_array_append (call->body, (const guint8 *) ptr, n);
  return n;
}

/* http_header_value - the value of header line @line if it is @name, else NULL */
static char *
http_header_value (const char *line, gsize len, const char *name)
{
  gsize n = strlen (name);

  if (len <= n || g_ascii_strncasecmp (line, name, n) != 0 || line[n] != ':')
    return NULL;
  return g_strstrip (g_strndup (line + n + 1, len - n - 1));
}

/* http_header - keep the response headers the caller can ask for.  A
 * response may carry several header blocks (100 Continue): the last wins. */
static size_t
http_header (char *ptr, size_t size, size_t nmemb, void *userdata)
{
  HttpCall *call = userdata;
  size_t n = size * nmemb;
  char *value;

  if (n >= 5 && g_ascii_strncasecmp (ptr, "HTTP/", 5) == 0)
    {
      g_clear_pointer (&call->content_type, g_free);
      g_clear_pointer (&call->retry_after, g_free);
      g_clear_pointer (&call->location, g_free);
    }
  else if ((value = http_header_value (ptr, n, "Content-Type")) != NULL)
    g_free (g_steal_pointer (&call->content_type)), call->content_type = value;
  else if ((value = http_header_value (ptr, n, "Retry-After")) != NULL)
    g_free (g_steal_pointer (&call->retry_after)), call->retry_after = value;
  else if ((value = http_header_value (ptr, n, "Location")) != NULL)
    g_free (g_steal_pointer (&call->location)), call->location = value;
  return n;
}

/* http_progress - abort the transfer when the caller cancels */
static int
http_progress (void *userdata, curl_off_t dltotal, curl_off_t dlnow, curl_off_t ultotal, curl_off_t ulnow)
{
  HttpCall *call = userdata;

  return g_cancellable_is_cancelled (call->cancellable) ? 1 : 0;
}

/* http_parse_retry_after - RFC 9110 §10.2.3: delta-seconds or an HTTP-date;
 * seconds from now, -1 when absent or unparsable */
static gint64
http_parse_retry_after (const char *value)
{
  char *end = NULL;
  gint64 seconds;
  time_t when;

  if (value == NULL || value[0] == '\0')
    return -1;
  if (g_ascii_isdigit (value[0]))
    {
      seconds = g_ascii_strtoll (value, &end, 10);
      return end != NULL && *end == '\0' && seconds >= 0 ? seconds : -1;
    }
  when = curl_getdate (value, NULL);
  if (when == -1)
    return -1;
  return MAX ((gint64) when - g_get_real_time () / G_USEC_PER_SEC, 0);
}

/* http_host - the host part of @url for messages, never its query */
static char *
http_host (const char *url)
{
  g_autoptr(GUri) uri = g_uri_parse (url, G_URI_FLAGS_NONE, NULL);

  return g_strdup (uri != NULL && g_uri_get_host (uri) != NULL ? g_uri_get_host (uri) : "?");
}

gboolean
pmx_http_send (PmxHttp              *http,
               const PmxHttpRequest *request,
               PmxHttpResponse      *response,
               GCancellable         *cancellable,
               GError              **error)
{
  HttpCall call = { 0 };
  char errbuf[CURL_ERROR_SIZE] = "";
  struct curl_slist *headers = NULL;
  g_autofree char *authorization = NULL;
  g_autofree char *content_type = NULL;
  long status = 0;
  CURLcode rc;

  g_return_val_if_fail (http != NULL && request != NULL && request->method != NULL, FALSE);
  g_return_val_if_fail (response != NULL, FALSE);

  memset (response, 0, sizeof *response);
  response->retry_after = -1;
  if (!pmx_http_check_url (request->url, "URL", error))
    return FALSE;

  if (http->curl == NULL && (http->curl = curl_easy_init ()) == NULL)
    {
      g_set_error (error, PMX_TRANSPORT_ERROR, PMX_TRANSPORT_ERROR_TEMPORARY,
                   "cannot create an HTTP handle (out of memory?)");
      return FALSE;
    }
  curl_easy_reset (http->curl);

  call.body = g_byte_array_new ();
  call.max = http->max_response;
  call.cancellable = cancellable;

  headers = curl_slist_append (headers, "Accept: application/json");
  /* No "Expect: 100-continue" round trip before large uploads. */
  headers = curl_slist_append (headers, "Expect:");
  if (request->bearer != NULL)
    {
      authorization = g_strconcat ("Authorization: Bearer ", request->bearer, NULL);
      headers = curl_slist_append (headers, authorization);
    }
  if (request->content_type != NULL)
    {
      content_type = g_strconcat ("Content-Type: ", request->content_type, NULL);
      headers = curl_slist_append (headers, content_type);
    }
  else
    /* libcurl would call a POSTFIELDS body form-urlencoded: say nothing. */
    headers = curl_slist_append (headers, "Content-Type:");
  for (const char *const *h = request->headers; h != NULL && *h != NULL; h++)
    headers = curl_slist_append (headers, *h);

  curl_easy_setopt (http->curl, CURLOPT_URL, request->url);
  curl_easy_setopt (http->curl, CURLOPT_PROTOCOLS_STR, "http,https");
  curl_easy_setopt (http->curl, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt (http->curl, CURLOPT_CUSTOMREQUEST, request->method);
  if (g_str_equal (request->method, "GET"))
    curl_easy_setopt (http->curl, CURLOPT_HTTPGET, 1L);
  else
    {
      /* POSTFIELDS with an explicit size: binary-safe, and an empty body
       * is sent as Content-Length: 0 rather than chunked. */
      curl_easy_setopt (http->curl, CURLOPT_POSTFIELDSIZE_LARGE,
                        (curl_off_t) (request->body != NULL ? request->body_len : 0));
      curl_easy_setopt (http->curl, CURLOPT_POSTFIELDS,
                        request->body != NULL ? (const char *) request->body : "");
    }
  curl_easy_setopt (http->curl, CURLOPT_HTTPHEADER, headers);
  curl_easy_setopt (http->curl, CURLOPT_USERAGENT, http->user_agent);
  curl_easy_setopt (http->curl, CURLOPT_FOLLOWLOCATION, 0L);
  curl_easy_setopt (http->curl, CURLOPT_SSL_VERIFYPEER, 1L);
  curl_easy_setopt (http->curl, CURLOPT_SSL_VERIFYHOST, 2L);
  if (http->ca_file != NULL)
    curl_easy_setopt (http->curl, CURLOPT_CAINFO, http->ca_file);
  curl_easy_setopt (http->curl, CURLOPT_CONNECTTIMEOUT_MS, (long) http->connect_timeout_ms);
  curl_easy_setopt (http->curl, CURLOPT_TIMEOUT_MS, (long) http->timeout_ms);
  curl_easy_setopt (http->curl, CURLOPT_WRITEFUNCTION, http_write);
  curl_easy_setopt (http->curl, CURLOPT_WRITEDATA, &call);
  curl_easy_setopt (http->curl, CURLOPT_HEADERFUNCTION, http_header);
  curl_easy_setopt (http->curl, CURLOPT_HEADERDATA, &call);
  curl_easy_setopt (http->curl, CURLOPT_XFERINFOFUNCTION, http_progress);
  curl_easy_setopt (http->curl, CURLOPT_XFERINFODATA, &call);
  curl_easy_setopt (http->curl, CURLOPT_NOPROGRESS, 0L);
  curl_easy_setopt (http->curl, CURLOPT_ERRORBUFFER, errbuf);

  rc = curl_easy_perform (http->curl);
  curl_easy_getinfo (http->curl, CURLINFO_RESPONSE_CODE, &status);
  /* The list holds a copy of the Authorization header: wipe it too. */
  for (struct curl_slist *h = headers; h != NULL; h = h->next)
    explicit_bzero (h->data, strlen (h->data));
  curl_slist_free_all (headers);
  /* The handle keeps a pointer to the header list and the body: drop them. */
  curl_easy_setopt (http->curl, CURLOPT_HTTPHEADER, NULL);
  curl_easy_setopt (http->curl, CURLOPT_POSTFIELDS, NULL);
  if (authorization != NULL)
    explicit_bzero (authorization, strlen (authorization));

  if (rc == CURLE_ABORTED_BY_CALLBACK && g_cancellable_is_cancelled (cancellable))
    {
      g_set_error (error, G_IO_ERROR, G_IO_ERROR_CANCELLED, "HTTP request cancelled");
      goto fail;
    }
  if (rc != CURLE_OK)
    {
      g_autofree char *host = http_host (request->url);

      g_set_error (error, PMX_TRANSPORT_ERROR, PMX_TRANSPORT_ERROR_TEMPORARY,
                   "%s %s: %s", request->method, host,
                   call.too_big ? "response larger than the limit"
                   : errbuf[0] != '\0' ? errbuf : curl_easy_strerror (rc));
      goto fail;
    }

  response->status = (guint) status;
  response->body = g_byte_array_free_to_bytes (g_steal_pointer (&call.body));
  response->content_type = g_steal_pointer (&call.content_type);
  response->location = g_steal_pointer (&call.location);
  response->retry_after = http_parse_retry_after (call.retry_after);
  g_free (call.retry_after);
  return TRUE;

fail:
  g_byte_array_unref (call.body);
  g_free (call.content_type);
  g_free (call.retry_after);
  g_free (call.location);
  return FALSE;
}

void
pmx_http_response_clear (PmxHttpResponse *response)
{
  if (response == NULL)
    return;
  g_clear_pointer (&response->body, g_bytes_unref);
  g_clear_pointer (&response->content_type, g_free);
  g_clear_pointer (&response->location, g_free);
  response->status = 0;
  response->retry_after = -1;
}

JsonNode *
pmx_http_response_get_json (const PmxHttpResponse *response)
{
  g_autoptr(JsonParser) parser = NULL;
  gconstpointer data;
  gsize len;

  if (response == NULL || response->body == NULL)
    return NULL;
  data = g_bytes_get_data (response->body, &len);
  if (len == 0)
    return NULL;
  parser = json_parser_new_immutable ();
  if (!json_parser_load_from_data (parser, data, (gssize) len, NULL) || json_parser_get_root (parser) == NULL)
    return NULL;
  return json_node_copy (json_parser_get_root (parser));
}

char *
pmx_base64url_encode (const guint8 *data,
                      gsize         len)
{
  char *out = g_base64_encode (data, len);
  gsize n = strlen (out);

  for (gsize i = 0; i < n; i++)
    {
      if (out[i] == '+')
        out[i] = '-';
      else if (out[i] == '/')
        out[i] = '_';
    }
  while (n > 0 && out[n - 1] == '=')
    out[--n] = '\0';
  return out;
}

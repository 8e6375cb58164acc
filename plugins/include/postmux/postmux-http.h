/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * postmux-http.h - a blocking HTTP client for transports that speak to a
 * provider's REST API (Microsoft Graph, Gmail), on libcurl.
 *
 * One #PmxHttp per session: it keeps its connections open between
 * requests, so a worker sending a run of messages pays the TLS handshake
 * once.  It is not thread-safe; sessions never share one.
 *
 * TLS is verified against the system store (plus @ca_file); plain http://
 * is accepted only for loopback addresses (tests).  Redirects are not
 * followed.  A request's Authorization header is sent only when the caller
 * gives a bearer token, so an upload URL that must not see the token
 * (Graph upload sessions) simply gets none.  Tokens and bodies never
 * appear in an error message.
 */
#pragma once

#if !defined(__PMX_H_INSIDE__) && !defined(PMX_COMPILATION)
#error "Only <postmux/postmux.h> can be included directly."
#endif

#include <gio/gio.h>
#include <json-glib/json-glib.h>

G_BEGIN_DECLS

typedef struct _PmxHttp PmxHttp;

/**
 * PmxHttpOptions:
 * @struct_size: sizeof (PmxHttpOptions).
 * @ca_file: (nullable): PEM file of extra trusted CAs.
 * @connect_timeout_ms: connect timeout, 0 for 10 s.
 * @timeout_ms: whole-request timeout, 0 for 120 s.
 * @max_response: largest response body kept, 0 for 1 MiB; a larger one
 *   fails the request (TEMPORARY).
 * @user_agent: (nullable): "postmux/<version>" when NULL.
 */
typedef struct {
  gsize       struct_size;
  const char *ca_file;
  guint       connect_timeout_ms;
  guint       timeout_ms;
  gsize       max_response;
  const char *user_agent;
  gpointer    _pmx_reserved[4];
} PmxHttpOptions;

/**
 * PmxHttpRequest:
 * @method: "GET", "POST", "PUT", "PATCH" or "DELETE".
 * @url: absolute URL.
 * @bearer: (nullable): access token for "Authorization: Bearer"; NULL
 *   sends no Authorization header.
 * @content_type: (nullable): Content-Type of @body.
 * @body: (nullable): request body; @body_len bytes.
 * @headers: (nullable): NULL-terminated extra "Name: value" headers.
 */
typedef struct {
  const char        *method;
  const char        *url;
  const char        *bearer;
  const char        *content_type;
  const guint8      *body;
  gsize              body_len;
  const char *const *headers;
  gpointer           _pmx_reserved[4];
} PmxHttpRequest;

/**
 * PmxHttpResponse:
 * @status: the HTTP status code.
 * @body: the response body (never NULL after a successful pmx_http_send()).
 * @content_type: (nullable): the Content-Type header.
 * @retry_after: seconds from now given by Retry-After (delta-seconds or an
 *   HTTP-date), -1 when absent or unparsable.
 * @location: (nullable): the Location header.
 *
 * Filled by pmx_http_send(); free the members with pmx_http_response_clear().
 */
typedef struct {
  guint   status;
  GBytes *body;
  char   *content_type;
  gint64  retry_after;
  char   *location;
  gpointer _pmx_reserved[4];
} PmxHttpResponse;

/* Returns: (transfer full): a client; @options may be NULL for defaults. */
PmxHttp *pmx_http_new  (const PmxHttpOptions *options);
void     pmx_http_free (PmxHttp *http);

/**
 * pmx_http_check_url:
 * @what: what the URL is, for the message ("graph_url").
 *
 * Returns: FALSE with a %PMX_TRANSPORT_ERROR_CONFIG error when @url is not
 *   an absolute https:// URL (or http:// on a loopback address).
 */
gboolean pmx_http_check_url (const char  *url,
                             const char  *what,
                             GError     **error);

/**
 * pmx_http_send:
 * @response: (out caller-allocates): filled on success.
 *
 * Sends one request and waits for the whole response.  Any HTTP status is
 * a success here: the caller decides what 4xx and 5xx mean.
 *
 * Returns: FALSE with @error set when there is no HTTP answer: a
 *   %PMX_TRANSPORT_ERROR_TEMPORARY error (unreachable, DNS, TLS, timeout,
 *   response too large) naming the host and the cause,
 *   %PMX_TRANSPORT_ERROR_CONFIG for a URL refused by pmx_http_check_url(),
 *   or %G_IO_ERROR_CANCELLED.
 */
gboolean pmx_http_send (PmxHttp              *http,
                        const PmxHttpRequest *request,
                        PmxHttpResponse      *response,
                        GCancellable         *cancellable,
                        GError              **error);

void pmx_http_response_clear (PmxHttpResponse *response);

/**
 * pmx_http_response_get_json:
 *
 * Returns: (transfer full) (nullable): the body parsed as JSON, or NULL
 *   when it is empty or not JSON.
 */
JsonNode *pmx_http_response_get_json (const PmxHttpResponse *response);

/* Base64 with the URL-safe alphabet (RFC 4648 §5), without padding. */
char *pmx_base64url_encode (const guint8 *data,
                            gsize         len);

G_DEFINE_AUTOPTR_CLEANUP_FUNC (PmxHttp, pmx_http_free)
G_DEFINE_AUTO_CLEANUP_CLEAR_FUNC (PmxHttpResponse, pmx_http_response_clear)

G_END_DECLS

/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * pmx-oauth2-http.c - one token endpoint request (RFC 6749 §3.2, §5) on
 * libcurl, and what its answer means.
 *
 * One easy handle per request, blocking, from a worker thread.  TLS is
 * verified; plain http:// is accepted only for loopback addresses.
 * Redirects are not followed.  The request body and the response are
 * wiped after use.  Failures become PmxOAuth2Error codes: 5xx, 429,
 * timeouts, unreachable endpoints and answers that are not a token are
 * TEMPORARY; a refused credential is AUTH; a dead refresh token or a
 * demand for user interaction is NEEDS_LOGIN.  Messages carry the
 * provider's error code and description line, never the request.
 */
#include "pmx-oauth2-private.h"

#include <string.h>
#include <curl/curl.h>

/* A token response is a few KiB; anything much larger is not one. */
#define OAUTH2_MAX_RESPONSE (256 * 1024)

typedef struct {
  GString      *body;
  GCancellable *cancellable;
  gboolean      too_big;
} HttpCall;

/* http_global_init - curl_global_init() once per process */
static gpointer
http_global_init (gpointer data)
{
  curl_global_init (CURL_GLOBAL_DEFAULT);
  return NULL;
}

/* http_write - collect the response body, bounded */
static size_t
http_write (char *ptr, size_t size, size_t nmemb, void *userdata)
{
  HttpCall *call = userdata;
  size_t n = size * nmemb;

  if (call->body->len + n > OAUTH2_MAX_RESPONSE)
    {
      call->too_big = TRUE;
      return 0;
    }
  g_string_append_len (call->body, ptr, n);
  return n;
}

/* http_progress - abort the transfer when the caller cancels */
static int
http_progress (void *userdata, curl_off_t dltotal, curl_off_t dlnow, curl_off_t ultotal, curl_off_t ulnow)
{
  HttpCall *call = userdata;

  return g_cancellable_is_cancelled (call->cancellable) ? 1 : 0;
}

/* http_wipe_string - wipe and free a GString that held secrets */
static void
http_wipe_string (GString *s)
{
  explicit_bzero (s->str, s->allocated_len);
  g_string_free (s, TRUE);
}

gboolean
pmx_oauth2_check_endpoint (const char *url,
                           GError    **error)
{
  g_autoptr(GUri) uri = g_uri_parse (url, G_URI_FLAGS_NONE, NULL);
  const char *scheme, *host;

  if (uri == NULL || g_uri_get_host (uri) == NULL || g_uri_get_host (uri)[0] == '\0')
    {
      g_set_error (error, PMX_OAUTH2_ERROR, PMX_OAUTH2_ERROR_CONFIG,
                   "token endpoint \"%s\" is not an absolute URL", url);
      return FALSE;
    }
  scheme = g_uri_get_scheme (uri);
  host = g_uri_get_host (uri);
  if (g_ascii_strcasecmp (scheme, "https") == 0)
    return TRUE;
  if (g_ascii_strcasecmp (scheme, "http") == 0
      && (g_str_equal (host, "127.0.0.1") || g_str_equal (host, "::1") || g_ascii_strcasecmp (host, "localhost") == 0))
    return TRUE;
  g_set_error (error, PMX_OAUTH2_ERROR, PMX_OAUTH2_ERROR_CONFIG,
               "token endpoint \"%s\" must use https:// (plain http is only allowed on loopback)", url);
  return FALSE;
}

/* http_first_line - the first line of @text, at most 300 bytes, valid UTF-8 */
static char *
http_first_line (const char *text)
{
  gsize n = strcspn (text, "\r\n");
  g_autofree char *line = g_strndup (text, MIN (n, 300));

  return g_utf8_make_valid (line, -1);
}

/* http_aadsts - the AADSTS code of an Entra ID error, 0 when none */
static gint64
http_aadsts (JsonObject *body, const char *description)
{
  const char *p;

  if (json_object_has_member (body, "error_codes"))
    {
      JsonNode *node = json_object_get_member (body, "error_codes");

      if (JSON_NODE_HOLDS_ARRAY (node) && json_array_get_length (json_node_get_array (node)) > 0)
        {
          JsonNode *first = json_array_get_element (json_node_get_array (node), 0);

          if (json_node_get_value_type (first) == G_TYPE_INT64)
            return json_node_get_int (first);
        }
    }
  if (description != NULL && (p = strstr (description, "AADSTS")) != NULL)
    return g_ascii_strtoll (p + strlen ("AADSTS"), NULL, 10);
  return 0;
}

/* http_fix - the human fix for a provider error, NULL when none is known */
static const char *
http_fix (const PmxOAuth2Request *req, const char *code, gint64 aadsts)
{
  switch (aadsts)
    {
    case 7000222:
      return "the client secret has expired: create a new one and update client_secret";
    case 700016:
      return "the application (client_id) was not found in the tenant: check client_id and tenant, and that an administrator consented to the app in that tenant";
    case 7000215:
      return "invalid client secret: copy the secret's Value (not its Secret ID) into client_secret";
    case 700027:
    case 700024:
      return "the client assertion was refused: upload the certificate that matches private_key to the app registration and check the clock";
    case 70011:
      return "invalid scope: app-only tokens need exactly one <resource>/.default scope";
    case 65001:
      return "consent is missing: an administrator must grant consent to the app's permissions";
    case 90002:
      return "tenant not found: check tenant";
    default:
      break;
    }
  if (g_strcmp0 (code, "unauthorized_client") == 0 && req->service_account)
    return "domain-wide delegation is not granted to this client id for the requested scope (Workspace admin console > Security > API controls)";
  if (g_strcmp0 (code, "invalid_grant") == 0 && req->service_account)
    return "the service-account JWT was refused: check the system clock, the key file and subject";
  if (g_strcmp0 (code, "invalid_client") == 0)
    return "check client_id and client_secret (or the certificate and private_key)";
  if (g_strcmp0 (code, "unauthorized_client") == 0)
    return "the app is not allowed to use this grant: check its registration at the provider";
  if (g_strcmp0 (code, "invalid_scope") == 0)
    return "check scopes against the permissions granted to the app";
  if (g_strcmp0 (code, "interaction_required") == 0 || g_strcmp0 (code, "consent_required") == 0
      || g_strcmp0 (code, "login_required") == 0 || g_strcmp0 (code, "invalid_grant") == 0)
    return "the stored login is no longer valid";
  return NULL;
}

GError *
pmx_oauth2_error_from_response (const PmxOAuth2Request *req,
                                long                    http_status,
                                JsonObject             *body)
{
  const char *code = NULL, *description = NULL;
  g_autofree char *line = NULL;
  g_autofree char *aad = NULL;
  const char *fix;
  gint64 aadsts;
  int kind;

  if (body != NULL)
    {
      code = json_object_get_string_member_with_default (body, "error", NULL);
      description = json_object_get_string_member_with_default (body, "error_description", NULL);
    }
  if (code == NULL)
    {
      /* Not an OAuth2 error body: judge by the status alone. */
      if (http_status >= 500 || http_status == 429 || http_status == 408 || http_status == 200)
        return g_error_new (PMX_OAUTH2_ERROR, PMX_OAUTH2_ERROR_TEMPORARY,
                            "%s: token endpoint %s answered HTTP %ld without a token — will retry",
                            req->label, req->endpoint, http_status);
      return g_error_new (PMX_OAUTH2_ERROR, PMX_OAUTH2_ERROR_AUTH,
                          "%s: token endpoint %s answered HTTP %ld without an OAuth2 error — check the token endpoint URL",
                          req->label, req->endpoint, http_status);
    }

  line = description != NULL ? http_first_line (description) : NULL;
  aadsts = http_aadsts (body, description);
  if (aadsts != 0 && (line == NULL || strstr (line, "AADSTS") == NULL))
    aad = g_strdup_printf ("AADSTS%" G_GINT64_FORMAT, aadsts);
  fix = http_fix (req, code, aadsts);

  if (g_str_equal (code, "temporarily_unavailable") || g_str_equal (code, "slow_down") || http_status >= 500)
    kind = PMX_OAUTH2_ERROR_TEMPORARY;
  else if (g_str_equal (code, "interaction_required") || g_str_equal (code, "consent_required")
           || g_str_equal (code, "login_required")
           || (g_str_equal (code, "invalid_grant") && g_strcmp0 (req->grant, "refresh_token") == 0))
    kind = PMX_OAUTH2_ERROR_NEEDS_LOGIN;
  else
    kind = PMX_OAUTH2_ERROR_AUTH;

  {
    g_autofree char *safe_code = g_utf8_make_valid (code, MIN (strlen (code), 64));

    g_autofree char *login = NULL;
    const char *tail = kind == PMX_OAUTH2_ERROR_TEMPORARY ? "will retry" : fix;

    if (kind == PMX_OAUTH2_ERROR_NEEDS_LOGIN)
      tail = login = g_strdup_printf ("%s: run `postmux auth login %s`", fix != NULL ? fix : "a new login is needed",
                                      req->name != NULL ? req->name : "TRANSPORT");

    return g_error_new (PMX_OAUTH2_ERROR, kind, "%s: token endpoint answered %s%s%s%s%s%s%s%s",
                        req->label, safe_code,
                        line != NULL || aad != NULL ? " (" : "",
                        aad != NULL ? aad : "",
                        aad != NULL && line != NULL ? ": " : "",
                        line != NULL ? line : "",
                        line != NULL || aad != NULL ? ")" : "",
                        tail != NULL ? " — " : "",
                        tail != NULL ? tail : "");
  }
}

JsonObject *
pmx_oauth2_post_form (const PmxOAuth2Request *req,
                      const char             *form,
                      GCancellable           *cancellable,
                      GError                **error)
{
  static GOnce once = G_ONCE_INIT;
  HttpCall call = { g_string_new (NULL), cancellable, FALSE };
  char errbuf[CURL_ERROR_SIZE] = "";
  struct curl_slist *headers = NULL;
  g_autoptr(JsonParser) parser = NULL;
  JsonObject *object = NULL;
  JsonNode *root;
  long status = 0;
  CURLcode rc;
  CURL *curl;

  g_once (&once, http_global_init, NULL);

  curl = curl_easy_init ();
  if (curl == NULL)
    {
      http_wipe_string (call.body);
      g_set_error (error, PMX_OAUTH2_ERROR, PMX_OAUTH2_ERROR_TEMPORARY, "%s: cannot create an HTTP handle", req->label);
      return NULL;
    }
  headers = curl_slist_append (headers, "Accept: application/json");
  headers = curl_slist_append (headers, "Content-Type: application/x-www-form-urlencoded");
  curl_easy_setopt (curl, CURLOPT_URL, req->endpoint);
  curl_easy_setopt (curl, CURLOPT_PROTOCOLS_STR, "http,https");
  curl_easy_setopt (curl, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt (curl, CURLOPT_HTTPHEADER, headers);
  curl_easy_setopt (curl, CURLOPT_POSTFIELDS, form);
  curl_easy_setopt (curl, CURLOPT_POSTFIELDSIZE, (long) strlen (form));
  curl_easy_setopt (curl, CURLOPT_USERAGENT, "postmux/0.1");
  curl_easy_setopt (curl, CURLOPT_FOLLOWLOCATION, 0L);
  curl_easy_setopt (curl, CURLOPT_SSL_VERIFYPEER, 1L);
  curl_easy_setopt (curl, CURLOPT_SSL_VERIFYHOST, 2L);
  if (req->ca_file != NULL)
    curl_easy_setopt (curl, CURLOPT_CAINFO, req->ca_file);
  curl_easy_setopt (curl, CURLOPT_CONNECTTIMEOUT_MS, (long) req->connect_timeout_ms);
  curl_easy_setopt (curl, CURLOPT_TIMEOUT_MS, (long) req->timeout_ms);
  curl_easy_setopt (curl, CURLOPT_WRITEFUNCTION, http_write);
  curl_easy_setopt (curl, CURLOPT_WRITEDATA, &call);
  curl_easy_setopt (curl, CURLOPT_XFERINFOFUNCTION, http_progress);
  curl_easy_setopt (curl, CURLOPT_XFERINFODATA, &call);
  curl_easy_setopt (curl, CURLOPT_NOPROGRESS, 0L);
  curl_easy_setopt (curl, CURLOPT_ERRORBUFFER, errbuf);

  rc = curl_easy_perform (curl);
  curl_easy_getinfo (curl, CURLINFO_RESPONSE_CODE, &status);
  curl_slist_free_all (headers);
  curl_easy_cleanup (curl);

  if (rc == CURLE_ABORTED_BY_CALLBACK && g_cancellable_is_cancelled (cancellable))
    {
      http_wipe_string (call.body);
      g_set_error (error, G_IO_ERROR, G_IO_ERROR_CANCELLED, "%s: token request cancelled", req->label);
      return NULL;
    }
  if (rc != CURLE_OK)
    {
      http_wipe_string (call.body);
      g_set_error (error, PMX_OAUTH2_ERROR, PMX_OAUTH2_ERROR_TEMPORARY,
                   "%s: token endpoint %s: %s — will retry",
                   req->label, req->endpoint,
                   call.too_big ? "response too large" : errbuf[0] != '\0' ? errbuf : curl_easy_strerror (rc));
      return NULL;
    }

  parser = json_parser_new ();
  if (call.body->len > 0 && json_parser_load_from_data (parser, call.body->str, call.body->len, NULL)
      && (root = json_parser_get_root (parser)) != NULL && JSON_NODE_HOLDS_OBJECT (root))
    object = json_object_ref (json_node_get_object (root));
  http_wipe_string (call.body);

  if (status == 200 && object != NULL && req->raw)
    return object;
  if (status == 200 && object != NULL)
    {
      const char *token = json_object_get_string_member_with_default (object, "access_token", NULL);
      const char *type = json_object_get_string_member_with_default (object, "token_type", "Bearer");

      if (token != NULL && token[0] != '\0' && g_ascii_strcasecmp (type, "Bearer") == 0)
        return object;
      if (token != NULL && token[0] != '\0')
        {
          json_object_unref (object);
          g_set_error (error, PMX_OAUTH2_ERROR, PMX_OAUTH2_ERROR_AUTH,
                       "%s: token endpoint %s issued a token of type other than Bearer — SMTP and mail APIs need Bearer tokens",
                       req->label, req->endpoint);
          return NULL;
        }
    }
  if (status == 200)
    {
      if (object != NULL)
        json_object_unref (object);
      g_set_error (error, PMX_OAUTH2_ERROR, PMX_OAUTH2_ERROR_TEMPORARY,
                   "%s: token endpoint %s answered 200 without an access token (not JSON, or no access_token) — will retry",
                   req->label, req->endpoint);
      return NULL;
    }
  if (req->out_error_code != NULL && object != NULL)
    *req->out_error_code = g_strdup (json_object_get_string_member_with_default (object, "error", NULL));
  g_propagate_error (error, pmx_oauth2_error_from_response (req, status, object));
  if (object != NULL)
    json_object_unref (object);
  return NULL;
}

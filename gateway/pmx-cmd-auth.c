/* SPDX-License-Identifier: GPL-3.0-or-later */
/*
 * pmx-cmd-auth.c - `postmux auth login|status|logout`: the OAuth2
 * credentials of the transports.
 *
 * Each command builds the transport instances from the config, exactly as
 * the daemon does (same plugin, same options, same token store under
 * <state_dir>/tokens), and drives the token source the transport created,
 * found by its credential name (pmx_token_source_find()).  So a login
 * writes the refresh token into the very file the daemon reads; a daemon
 * whose credential needs a login re-reads that file before each attempt
 * and adopts the login (see postmux-oauth2.h).
 *
 * login: authorization code + PKCE (RFC 7636) with a loopback redirect
 * (RFC 8252 §7.3): a libsoup listener on 127.0.0.1, a random port, one
 * unguessable state checked on the redirect; or, with --device, the device
 * code flow (RFC 8628).  Never prints a token, a code or a verifier.
 */
#include "pmx-cmd.h"

#include "pmx-control.h"
#include "pmx-instance.h"

#include <libsoup/soup.h>
#include <stdio.h>
#include <string.h>

/* auth_credential_name - the name of @tc's token source, NULL when the
 * transport has no OAuth2 credential */
static const char *
auth_credential_name (const PmxTransportConfig *tc)
{
  JsonObject *credential;

  if (tc->options == NULL || !json_object_has_member (tc->options, "credential")
      || !JSON_NODE_HOLDS_OBJECT (json_object_get_member (tc->options, "credential")))
    return NULL;
  credential = json_object_get_object_member (tc->options, "credential");
  return json_object_get_string_member_with_default (credential, "name", tc->name);
}

/* auth_time - ISO 8601 UTC for a unix time, "-" for 0 */
static char *
auth_time (gint64 unix_time)
{
  g_autoptr(GDateTime) t = unix_time > 0 ? g_date_time_new_from_unix_utc (unix_time) : NULL;

  return t != NULL ? g_date_time_format_iso8601 (t) : g_strdup ("-");
}

/* auth_open - the instance of transport @name and its token source */
static PmxInstance *
auth_open (PmxConfig        *config,
           PmxPluginLoader  *loader,
           const char       *command,
           const char       *name,
           PmxTokenSource  **out_source)
{
  g_autoptr(GError) error = NULL;
  const PmxTransportConfig *tc = pmx_config_get_transport (config, name);
  const char *credential;
  PmxInstance *instance;

  /* NAME may also be a shared credential's name (under "credentials"):
   * any transport using it opens the one token source. */
  for (guint i = 0; tc == NULL && i < config->transports->len; i++)
    {
      const PmxTransportConfig *t = g_ptr_array_index (config->transports, i);

      if (g_strcmp0 (auth_credential_name (t), name) == 0)
        tc = t;
    }
  if (tc == NULL)
    {
      g_printerr ("postmux auth %s: no transport or credential \"%s\" in %s — postmux auth status lists the transports with an OAuth2 credential\n",
                  command, name, config->path != NULL ? config->path : "the built-in config");
      return NULL;
    }
  credential = auth_credential_name (tc);
  if (credential == NULL)
    {
      g_printerr ("postmux auth %s: transport \"%s\" (%s plugin) has no OAuth2 credential (no \"credential\" option): "
                  "it needs no login\n", command, name, tc->plugin);
      return NULL;
    }
  instance = pmx_instance_new (loader, config, tc, NULL, &error);
  if (instance == NULL)
    {
      g_printerr ("postmux auth %s: %s\n", command, error->message);
      return NULL;
    }
  *out_source = pmx_token_source_find (credential);
  if (*out_source == NULL)
    {
      g_printerr ("postmux auth %s: transport \"%s\" (%s plugin) made no token source named \"%s\" — "
                  "the plugin does not use the SDK token service for its credential\n",
                  command, name, tc->plugin, credential);
      pmx_instance_unref (instance);
      return NULL;
    }
  return instance;
}

/* ------------------------------------------------------------------ */
/* login through the loopback redirect                                 */

typedef struct {
  GMainLoop *loop;
  char      *state;
  char      *code;       /* wiped */
  char      *error;      /* the provider's error, for the message */
  gboolean   timed_out;
} AuthRedirect;

/* auth_page - a small HTML answer for the browser */
static void
auth_page (SoupServerMessage *msg,
           guint              status,
           const char        *text)
{
  g_autofree char *escaped = g_markup_escape_text (text, -1);
  g_autofree char *body = g_strdup_printf ("<!doctype html><html><head><title>Postmux</title></head>"
                                           "<body><p>%s</p></body></html>\n", escaped);

  soup_server_message_set_status (msg, status, NULL);
  soup_server_message_set_response (msg, "text/html; charset=utf-8", SOUP_MEMORY_COPY, body, strlen (body));
}

/* auth_redirect_handler - GET /?code=...&state=... from the browser */
static void
auth_redirect_handler (SoupServer        *server,
                       SoupServerMessage *msg,
                       const char        *path,
                       GHashTable        *query,
                       gpointer           user_data)
{
  AuthRedirect *r = user_data;
  const char *state = query != NULL ? g_hash_table_lookup (query, "state") : NULL;
  const char *code = query != NULL ? g_hash_table_lookup (query, "code") : NULL;
  const char *error = query != NULL ? g_hash_table_lookup (query, "error") : NULL;

  if (g_strcmp0 (soup_server_message_get_method (msg), "GET") != 0 || strcmp (path, "/") != 0)
    {
      auth_page (msg, 404, "Not found.");
      return;
    }
  /* Only the redirect of our own request counts: a page that makes the
   * browser call this port with another state is ignored. */
  if (state == NULL || g_strcmp0 (state, r->state) != 0)
    {
      auth_page (msg, 400, "This sign-in answer does not belong to the running postmux auth login (state mismatch); it was ignored.");
      return;
    }
  if (r->code != NULL || r->error != NULL)
    {
      auth_page (msg, 409, "This sign-in was already answered.");
      return;
    }
  if (error != NULL || code == NULL)
    {
      const char *description = query != NULL ? g_hash_table_lookup (query, "error_description") : NULL;

      r->error = g_strdup_printf ("%s%s%s", error != NULL ? error : "no code in the redirect",
                                  description != NULL ? ": " : "", description != NULL ? description : "");
      auth_page (msg, 200, "Sign-in failed; see the terminal running postmux auth login.");
    }
  else
    {
      r->code = g_strdup (code);
      auth_page (msg, 200, "Signed in. Postmux has the authorization; you can close this window.");
    }
  g_main_loop_quit (r->loop);
}

/* auth_timeout - the user did not come back in time */
static gboolean
auth_timeout (gpointer user_data)
{
  AuthRedirect *r = user_data;

  r->timed_out = TRUE;
  g_main_loop_quit (r->loop);
  return G_SOURCE_REMOVE;
}

/* auth_random - 32 random bytes (the SDK's PKCE generator), base64url */
static char *
auth_random (void)
{
  char *random = NULL, *unused = NULL;

  pmx_oauth2_pkce_new (&random, &unused);
  g_free (unused);
  return random;
}

/* auth_login_loopback - authorization code + PKCE via 127.0.0.1 */
static gboolean
auth_login_loopback (PmxTokenSource *source,
                     const char     *transport,
                     guint           timeout_s,
                     GError        **error)
{
  g_autoptr(SoupServer) server = soup_server_new ("server-header", "postmux-login", NULL);
  g_autoptr(GMainLoop) loop = g_main_loop_new (NULL, FALSE);
  g_autofree char *redirect_uri = NULL;
  g_autofree char *url = NULL;
  char *verifier = NULL, *challenge = NULL;
  AuthRedirect r = { 0 };
  GSList *uris;
  guint timeout_id;
  gboolean ok;
  int port;

  if (!soup_server_listen_local (server, 0, SOUP_SERVER_LISTEN_IPV4_ONLY, error))
    {
      g_prefix_error (error, "cannot listen on 127.0.0.1 for the sign-in redirect: ");
      return FALSE;
    }
  uris = soup_server_get_uris (server);
  port = g_uri_get_port (uris->data);
  redirect_uri = g_strdup_printf ("http://127.0.0.1:%d/", port);
  g_slist_free_full (uris, (GDestroyNotify) g_uri_unref);

  r.loop = loop;
  r.state = auth_random ();
  pmx_oauth2_pkce_new (&verifier, &challenge);
  url = pmx_token_source_dup_authorize_url (source, redirect_uri, r.state, challenge, error);
  g_free (challenge);
  if (url == NULL)
    {
      pmx_secret_free (verifier);
      pmx_secret_free (r.state);
      return FALSE;
    }
  soup_server_add_handler (server, "/", auth_redirect_handler, &r, NULL);

  printf ("To sign in for transport %s, open this URL in a browser on this machine:\n\n  %s\n\n"
          "Waiting for the sign-in to come back to %s (%u s; Ctrl-C to cancel).\n"
          "From another machine, forward the port first: ssh -L %d:127.0.0.1:%d this-host\n",
          transport, url, redirect_uri, timeout_s, port, port);
  fflush (stdout);

  timeout_id = g_timeout_add_seconds (timeout_s, auth_timeout, &r);
  g_main_loop_run (loop);
  if (!r.timed_out)
    g_source_remove (timeout_id);
  soup_server_disconnect (server);

  if (r.timed_out)
    {
      g_set_error (error, G_IO_ERROR, G_IO_ERROR_TIMED_OUT,
                   "nobody signed in within %u s — run postmux auth login %s again (or give --timeout)",
                   timeout_s, transport);
      ok = FALSE;
    }
  else if (r.error != NULL)
    {
      g_set_error (error, G_IO_ERROR, G_IO_ERROR_PERMISSION_DENIED,
                   "the provider refused the sign-in: %s — check the app registration (redirect URI "
                   "http://127.0.0.1 allowed for a public/desktop client, scopes consented)", r.error);
      ok = FALSE;
    }
  else
    ok = pmx_token_source_redeem_code (source, r.code, redirect_uri, verifier, NULL, error);

  pmx_secret_free (verifier);
  pmx_secret_free (r.code);
  g_free (r.error);
  pmx_secret_free (r.state);
  return ok;
}

/* auth_login_device - the device code flow */
static gboolean
auth_login_device (PmxTokenSource *source,
                   GError        **error)
{
  g_auto(PmxDeviceCode) code = { 0 };

  if (!pmx_token_source_start_device_login (source, &code, NULL, error))
    return FALSE;
  if (code.message != NULL)
    printf ("%s\n", code.message);
  else
    printf ("To sign in, open %s and enter the code %s\n", code.verification_uri, code.user_code);
  printf ("Waiting for the sign-in (polling every %u s)...\n", code.interval);
  fflush (stdout);
  return pmx_token_source_finish_device_login (source, &code, NULL, error);
}

/* auth_hurry - the messages that waited for this login are due now; a
 * running daemon is woken to take them */
static void
auth_hurry (PmxConfig  *config,
            const char *name)
{
  g_autoptr(GError) error = NULL;
  g_autofree char *socket_path = NULL;
  g_autofree char *answer = NULL;
  PmxQueue *queue = pmx_queue_open (config->queue_path, &error);
  gint64 n;

  if (queue == NULL)
    {
      printf ("The waiting messages go at their next retry (the queue could not be opened: %s).\n", error->message);
      return;
    }
  n = pmx_queue_hurry_transport (queue, name, &error);
  pmx_queue_close (queue);
  if (n < 0)
    {
      printf ("The waiting messages go at their next retry (%s).\n", error->message);
      return;
    }
  socket_path = pmx_config_dup_socket_path (config);
  answer = pmx_control_call (socket_path, "wake", NULL);   /* no daemon: they go when it starts */
  printf ("%" G_GINT64_FORMAT " deferred message%s of transport %s due now%s.\n", n, n == 1 ? "" : "s", name,
          answer != NULL ? "; the daemon was told" : "; no daemon is running");
}

/* auth_login - `postmux auth login TRANSPORT` */
static int
auth_login (PmxConfig       *config,
            PmxPluginLoader *loader,
            const char      *name,
            gboolean         device,
            guint            timeout_s)
{
  g_autoptr(GError) error = NULL;
  g_autoptr(PmxTokenSource) source = NULL;
  g_auto(PmxTokenStatus) status = { 0 };
  g_autofree char *expires = NULL;
  PmxInstance *instance = auth_open (config, loader, "login", name, &source);
  gboolean ok;

  if (instance == NULL)
    return 1;
  ok = device ? auth_login_device (source, &error) : auth_login_loopback (source, name, timeout_s, &error);
  if (!ok)
    {
      g_printerr ("postmux auth login: transport %s: %s\n", name, error->message);
      pmx_instance_unref (instance);
      return 1;
    }
  pmx_token_source_get_status (source, &status);
  expires = auth_time (status.expires_at);
  printf ("Logged in: transport %s, refresh token stored in %s; access token valid until %s; scopes: %s\n",
          name, status.store_path != NULL ? status.store_path : "memory", expires,
          status.scopes != NULL ? status.scopes : "-");
  pmx_instance_unref (instance);
  auth_hurry (config, name);
  return 0;
}

/* auth_logout - `postmux auth logout TRANSPORT` */
static int
auth_logout (PmxConfig       *config,
             PmxPluginLoader *loader,
             const char      *name)
{
  g_autoptr(GError) error = NULL;
  g_autoptr(PmxTokenSource) source = NULL;
  g_auto(PmxTokenStatus) status = { 0 };
  PmxInstance *instance = auth_open (config, loader, "logout", name, &source);

  if (instance == NULL)
    return 1;
  pmx_token_source_get_status (source, &status);
  if (!pmx_token_source_forget (source, &error))
    {
      g_printerr ("postmux auth logout: transport %s: %s\n", name, error->message);
      pmx_instance_unref (instance);
      return 1;
    }
  printf ("Logged out: transport %s, stored tokens forgotten (%s removed).\n", name,
          status.store_path != NULL ? status.store_path : "no token store");
  if (g_strcmp0 (status.grant, "refresh_token") == 0)
    printf ("Its messages wait in the queue until postmux auth login %s; a running daemon keeps the "
            "access token it holds until it expires or the daemon restarts.\n", name);
  pmx_instance_unref (instance);
  return 0;
}

/* auth_status - `postmux auth status [--json]` */
static int
auth_status (PmxConfig       *config,
             PmxPluginLoader *loader,
             gboolean         as_json)
{
  g_autoptr(JsonArray) array = json_array_new ();
  guint shown = 0;
  int rc = 0;

  for (guint i = 0; i < config->transports->len; i++)
    {
      const PmxTransportConfig *tc = g_ptr_array_index (config->transports, i);
      g_autoptr(PmxTokenSource) source = NULL;
      g_auto(PmxTokenStatus) status = { 0 };
      g_autofree char *expires = NULL, *refreshed = NULL;
      const char *credential = auth_credential_name (tc);
      PmxInstance *instance;
      JsonObject *object;

      if (credential == NULL)
        continue;
      shown++;
      instance = auth_open (config, loader, "status", tc->name, &source);
      if (instance == NULL)
        {
          rc = 1;
          continue;
        }
      pmx_token_source_get_status (source, &status);
      if (as_json)
        {
          object = pmx_token_status_to_json (&status);
          json_object_set_string_member (object, "transport", tc->name);
          json_object_set_string_member (object, "credential", credential);
          json_object_set_string_member (object, "token_endpoint", pmx_token_source_get_token_endpoint (source));
          if (status.store_path != NULL)
            json_object_set_string_member (object, "token_store", status.store_path);
          else
            json_object_set_null_member (object, "token_store");
          json_array_add_object_element (array, object);
        }
      else
        {
          expires = auth_time (status.expires_at);
          refreshed = auth_time (status.last_refresh);
          printf ("%s (%s plugin, %s credential '%s')\n", tc->name, tc->plugin, status.kind, credential);
          printf ("  state:         %s%s%s\n", pmx_token_state_to_string (status.state),
                  status.state == PMX_TOKEN_STATE_NEEDS_LOGIN ? " — run postmux auth login " : "",
                  status.state == PMX_TOKEN_STATE_NEEDS_LOGIN ? tc->name : "");
          printf ("  grant:         %s (refresh token %s)\n", status.grant,
                  status.has_refresh_token ? "stored" : "none");
          printf ("  scopes:        %s\n", status.scopes != NULL ? status.scopes : "-");
          printf ("  token expires: %s\n", expires);
          printf ("  last refresh:  %s\n", refreshed);
          printf ("  last error:    %s\n", status.last_error != NULL ? status.last_error : "-");
          printf ("  token store:   %s\n", status.store_path != NULL ? status.store_path : "-");
        }
      pmx_instance_unref (instance);
    }
  if (as_json)
    {
      g_autoptr(JsonNode) root = json_node_new (JSON_NODE_OBJECT);
      g_autoptr(JsonObject) top = json_object_new ();
      g_autofree char *text = NULL;

      json_object_set_array_member (top, "credentials", json_array_ref (array));
      json_node_set_object (root, top);
      text = json_to_string (root, TRUE);
      printf ("%s\n", text);
    }
  else if (shown == 0)
    printf ("No transport in %s has an OAuth2 credential.\n", config->path != NULL ? config->path : "the built-in config");
  return rc;
}

int
pmx_cmd_auth (int    argc,
              char **argv)
{
  g_auto(PmxCmdCommon) common = { 0, };
  g_autoptr(GError) error = NULL;
  g_autoptr(PmxConfig) config = NULL;
  g_auto(GStrv) dirs = NULL;
  gboolean device = FALSE, as_json = FALSE;
  int timeout_s = 300;
  PmxPluginLoader *loader;
  const char *verb;
  int rc;
  const GOptionEntry entries[] = {
    { "device", 0, 0, G_OPTION_ARG_NONE, &device,
      "login: use the device code flow (Microsoft; a code to enter on any device) instead of a browser on this machine", NULL },
    { "timeout", 0, 0, G_OPTION_ARG_INT, &timeout_s, "login: seconds to wait for the sign-in (default 300)", "S" },
    { "json", 0, 0, G_OPTION_ARG_NONE, &as_json, "status: print JSON", NULL },
    { NULL, 0, 0, 0, NULL, NULL, NULL },
  };

  if (!pmx_cmd_parse ("auth", "login TRANSPORT|status|logout TRANSPORT",
                      "OAuth2 credentials of the transports.\n"
                      "  login TRANSPORT    sign in (authorization code + PKCE through a loopback redirect\n"
                      "                     on 127.0.0.1, or --device) and store the refresh token where\n"
                      "                     the daemon reads it\n"
                      "  status             each credential: state, token expiry, scopes, last refresh, last error\n"
                      "  logout TRANSPORT   forget the stored tokens",
                      entries, pmx_cmd_common_entries (&common), &argc, &argv))
    return 2;
  verb = argc >= 2 ? argv[1] : NULL;
  if (verb == NULL || (strcmp (verb, "status") == 0 ? argc != 2
                       : (strcmp (verb, "login") != 0 && strcmp (verb, "logout") != 0) || argc != 3))
    {
      g_printerr ("postmux auth: use login TRANSPORT, status or logout TRANSPORT (see postmux auth --help)\n");
      return 2;
    }
  if (timeout_s < 1)
    {
      g_printerr ("postmux auth: --timeout must be at least 1 second\n");
      return 2;
    }

  config = pmx_cmd_load_config (&common, NULL, &error);
  if (config == NULL)
    {
      g_printerr ("postmux auth: %s\n", error->message);
      return 1;
    }
  dirs = pmx_cmd_plugin_dirs (&common, config);
  loader = pmx_plugin_loader_new ((const char *const *) dirs);
  if (strcmp (verb, "status") == 0)
    rc = auth_status (config, loader, as_json);
  else if (strcmp (verb, "login") == 0)
    rc = auth_login (config, loader, argv[2], device, (guint) timeout_s);
  else
    rc = auth_logout (config, loader, argv[2]);
  pmx_plugin_loader_free (loader);
  return rc;
}

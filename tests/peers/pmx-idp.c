/* SPDX-License-Identifier: GPL-3.0-or-later */
/*
 * pmx-idp.c - the test identity provider (oauth2-idp.c) as a program, for
 * integration tests that need a real IdP beside the real daemon and real
 * SMTP servers (Dovecot's oauth2 passdb introspects its tokens).
 *
 * Usage: pmx-idp [--port-file FILE]
 * Prints one JSON line on stdout when ready:
 *   {"url":"http://127.0.0.1:P1","control":"http://127.0.0.1:P2"}
 * The IdP endpoints are under url (/token, /authorize, /devicecode,
 * /introspect); the test drives it through the control API, on its own
 * port so that a client of the IdP can never reach it.  Every control call
 * takes query parameters and answers JSON:
 *   /client?id&secret[&username]            a client with a secret
 *   /cert-client?id&cert=PEM-FILE[&username] a client with a certificate
 *   /service-account?email&key=PEM-FILE[&subject][&scopes][&username]
 *                                           (the public half of the key is used)
 *   /issue-refresh?client_id                {"refresh_token":...}
 *   /revoke-refresh?client_id   /revoke-access?client_id
 *   /mode?client_id&mode=ok|fail|hang       fail: HTTP 500; hang: no answer
 *   /expires-in?seconds                     lifetime of new access tokens
 *   /approve-device?user_code               the user signs in (device flow)
 *   /stats[?client_id]                      {"requests","replays","authorizations","introspections"}
 *   /issued                                 {"tokens":[every token issued]}
 *   /last-refusal                           {"reason":...}
 * Stops on SIGTERM or SIGINT.
 */
#include "oauth2-idp.h"

#include <stdio.h>
#include <string.h>
#include <glib-unix.h>
#include <json-glib/json-glib.h>
#include <libsoup/soup.h>
#include <openssl/pem.h>

static OAuth2Idp *idp;

/* ctl_reply - a JSON answer */
static void
ctl_reply (SoupServerMessage *msg, guint status, JsonBuilder *b)
{
  g_autoptr(JsonNode) root = json_builder_get_root (b);
  g_autofree char *body = json_to_string (root, FALSE);

  soup_server_message_set_status (msg, status, NULL);
  soup_server_message_set_response (msg, "application/json", SOUP_MEMORY_COPY, body, strlen (body));
}

/* ctl_error - {"error": text} with 400 */
static void
ctl_error (SoupServerMessage *msg, const char *text)
{
  g_autoptr(JsonBuilder) b = json_builder_new ();

  json_builder_begin_object (b);
  json_builder_set_member_name (b, "error");
  json_builder_add_string_value (b, text);
  json_builder_end_object (b);
  ctl_reply (msg, 400, b);
}

/* ctl_ok - {"ok": true} */
static void
ctl_ok (SoupServerMessage *msg)
{
  g_autoptr(JsonBuilder) b = json_builder_new ();

  json_builder_begin_object (b);
  json_builder_set_member_name (b, "ok");
  json_builder_add_boolean_value (b, TRUE);
  json_builder_end_object (b);
  ctl_reply (msg, 200, b);
}

/* ctl_load_key - the public half of a PEM private or public key file */
static EVP_PKEY *
ctl_load_key (const char *path)
{
  EVP_PKEY *key = NULL;
  BIO *bio = BIO_new_file (path, "r");

  if (bio == NULL)
    return NULL;
  key = PEM_read_bio_PrivateKey (bio, NULL, NULL, NULL);
  if (key == NULL)
    {
      (void) BIO_reset (bio);
      key = PEM_read_bio_PUBKEY (bio, NULL, NULL, NULL);
    }
  BIO_free (bio);
  return key;
}

/* ctl_handler - every control request */
static void
ctl_handler (SoupServer        *server,
             SoupServerMessage *msg,
             const char        *path,
             GHashTable        *query,
             gpointer           data)
{
  g_autoptr(GHashTable) empty = g_hash_table_new (g_str_hash, g_str_equal);
  GHashTable *q = query != NULL ? query : empty;
  const char *client_id = g_hash_table_lookup (q, "client_id");
  const char *id = g_hash_table_lookup (q, "id");
  const char *username = g_hash_table_lookup (q, "username");

  if (strcmp (path, "/client") == 0 && id != NULL && g_hash_table_lookup (q, "secret") != NULL)
    {
      oauth2_idp_add_secret_client (idp, id, g_hash_table_lookup (q, "secret"));
      if (username != NULL)
        oauth2_idp_set_username (idp, id, username);
      ctl_ok (msg);
    }
  else if (strcmp (path, "/cert-client") == 0 && id != NULL && g_hash_table_lookup (q, "cert") != NULL)
    {
      BIO *bio = BIO_new_file (g_hash_table_lookup (q, "cert"), "r");
      X509 *cert = bio != NULL ? PEM_read_bio_X509 (bio, NULL, NULL, NULL) : NULL;

      BIO_free (bio);
      if (cert == NULL)
        {
          ctl_error (msg, "cannot read the certificate");
          return;
        }
      oauth2_idp_add_cert_client (idp, id, cert);
      X509_free (cert);
      if (username != NULL)
        oauth2_idp_set_username (idp, id, username);
      ctl_ok (msg);
    }
  else if (strcmp (path, "/service-account") == 0 && g_hash_table_lookup (q, "email") != NULL
           && g_hash_table_lookup (q, "key") != NULL)
    {
      const char *email = g_hash_table_lookup (q, "email");
      EVP_PKEY *key = ctl_load_key (g_hash_table_lookup (q, "key"));

      if (key == NULL)
        {
          ctl_error (msg, "cannot read the key");
          return;
        }
      oauth2_idp_add_service_account (idp, email, key, g_hash_table_lookup (q, "subject"),
                                      g_hash_table_lookup (q, "scopes"));
      EVP_PKEY_free (key);
      if (username != NULL)
        oauth2_idp_set_username (idp, email, username);
      ctl_ok (msg);
    }
  else if (strcmp (path, "/issue-refresh") == 0 && client_id != NULL)
    {
      g_autofree char *token = oauth2_idp_issue_refresh_token (idp, client_id);
      g_autoptr(JsonBuilder) b = json_builder_new ();

      json_builder_begin_object (b);
      json_builder_set_member_name (b, "refresh_token");
      json_builder_add_string_value (b, token);
      json_builder_end_object (b);
      ctl_reply (msg, 200, b);
    }
  else if (strcmp (path, "/revoke-refresh") == 0 && client_id != NULL)
    {
      oauth2_idp_revoke_refresh_tokens (idp, client_id);
      ctl_ok (msg);
    }
  else if (strcmp (path, "/revoke-access") == 0 && client_id != NULL)
    {
      oauth2_idp_revoke_access_tokens (idp, client_id);
      ctl_ok (msg);
    }
  else if (strcmp (path, "/mode") == 0 && client_id != NULL && g_hash_table_lookup (q, "mode") != NULL)
    {
      const char *mode = g_hash_table_lookup (q, "mode");

      oauth2_idp_set_mode (idp, client_id, g_str_equal (mode, "fail") ? OAUTH2_IDP_MODE_FAIL_500
                                           : g_str_equal (mode, "hang") ? OAUTH2_IDP_MODE_HANG
                                           : OAUTH2_IDP_MODE_OK);
      ctl_ok (msg);
    }
  else if (strcmp (path, "/expires-in") == 0 && g_hash_table_lookup (q, "seconds") != NULL)
    {
      oauth2_idp_set_expires_in (idp, g_ascii_strtoll (g_hash_table_lookup (q, "seconds"), NULL, 10));
      ctl_ok (msg);
    }
  else if (strcmp (path, "/approve-device") == 0 && g_hash_table_lookup (q, "user_code") != NULL)
    {
      if (oauth2_idp_approve_device (idp, g_hash_table_lookup (q, "user_code")))
        ctl_ok (msg);
      else
        ctl_error (msg, "no such user code");
    }
  else if (strcmp (path, "/stats") == 0)
    {
      g_autoptr(JsonBuilder) b = json_builder_new ();

      json_builder_begin_object (b);
      json_builder_set_member_name (b, "requests");
      json_builder_add_int_value (b, oauth2_idp_get_requests (idp, client_id));
      json_builder_set_member_name (b, "replays");
      json_builder_add_int_value (b, oauth2_idp_get_replays (idp));
      json_builder_set_member_name (b, "authorizations");
      json_builder_add_int_value (b, oauth2_idp_get_authorizations (idp));
      json_builder_set_member_name (b, "introspections");
      json_builder_add_int_value (b, oauth2_idp_get_introspections (idp));
      json_builder_end_object (b);
      ctl_reply (msg, 200, b);
    }
  else if (strcmp (path, "/issued") == 0)
    {
      g_auto(GStrv) issued = oauth2_idp_dup_issued (idp);
      g_autoptr(JsonBuilder) b = json_builder_new ();

      json_builder_begin_object (b);
      json_builder_set_member_name (b, "tokens");
      json_builder_begin_array (b);
      for (guint i = 0; issued[i] != NULL; i++)
        json_builder_add_string_value (b, issued[i]);
      json_builder_end_array (b);
      json_builder_end_object (b);
      ctl_reply (msg, 200, b);
    }
  else if (strcmp (path, "/last-refusal") == 0)
    {
      g_autofree char *reason = oauth2_idp_dup_last_refusal (idp);
      g_autoptr(JsonBuilder) b = json_builder_new ();

      json_builder_begin_object (b);
      json_builder_set_member_name (b, "reason");
      if (reason != NULL)
        json_builder_add_string_value (b, reason);
      else
        json_builder_add_null_value (b);
      json_builder_end_object (b);
      ctl_reply (msg, 200, b);
    }
  else
    ctl_error (msg, "unknown control call or missing parameter (see pmx-idp.c)");
}

/* on_signal - stop the loop */
static gboolean
on_signal (gpointer data)
{
  g_main_loop_quit (data);
  return G_SOURCE_REMOVE;
}

int
main (int argc, char **argv)
{
  g_autoptr(GMainLoop) loop = g_main_loop_new (NULL, FALSE);
  g_autoptr(SoupServer) control = NULL;
  g_autoptr(GError) error = NULL;
  GSList *uris;
  guint sigterm, sigint;

  (void) argc;
  (void) argv;
  idp = oauth2_idp_new ();
  control = soup_server_new ("server-header", "postmux-test-idp-control", NULL);
  soup_server_add_handler (control, NULL, ctl_handler, NULL, NULL);
  if (!soup_server_listen_local (control, 0, SOUP_SERVER_LISTEN_IPV4_ONLY, &error))
    {
      fprintf (stderr, "pmx-idp: %s\n", error->message);
      return 1;
    }
  uris = soup_server_get_uris (control);
  printf ("{\"url\":\"%s\",\"control\":\"http://127.0.0.1:%d\"}\n", oauth2_idp_get_url (idp),
          g_uri_get_port (uris->data));
  fflush (stdout);
  g_slist_free_full (uris, (GDestroyNotify) g_uri_unref);

  sigterm = g_unix_signal_add (SIGTERM, on_signal, loop);
  sigint = g_unix_signal_add (SIGINT, on_signal, loop);
  g_main_loop_run (loop);
  g_source_remove (sigterm);
  g_source_remove (sigint);
  soup_server_disconnect (control);
  oauth2_idp_free (idp);
  return 0;
}

/* SPDX-License-Identifier: GPL-3.0-or-later */
/*
 * test-oauth2.c - PmxTokenSource against a real identity provider on
 * loopback (oauth2-idp.c): client credentials with a secret, the Entra ID
 * client assertion, the Google service-account JWT, refresh token
 * rotation across a restart, refresh ahead of expiry, single flight,
 * isolation between credentials, error meaning, the token store, and no
 * token in any log line or error message.
 *
 * Keys and certificates are made at start-up with OpenSSL, never
 * committed.  Every log line of the run is captured by the writer below.
 */
#include "pmx-oauth2-private.h"
#include "oauth2-idp.h"

#include <string.h>
#include <sys/stat.h>
#include <glib/gstdio.h>
#include <openssl/pem.h>
#include <libsoup/soup.h>
#include <openssl/x509.h>

static OAuth2Idp *idp;
static char *tmp_dir;
static EVP_PKEY *app_key;       /* the registered key */
static EVP_PKEY *other_key;     /* a key nobody registered */
static X509 *app_cert;
static X509 *other_cert;
static char *app_key_path, *app_cert_path, *other_key_path, *other_cert_path;

static GMutex captured_lock;
static GPtrArray *captured;     /* every log line and error message */

/* capture_writer - keep every log line; print it as a TAP comment */
static GLogWriterOutput
capture_writer (GLogLevelFlags   log_level,
                const GLogField *fields,
                gsize            n_fields,
                gpointer         user_data)
{
  g_autofree char *line = g_log_writer_format_fields (log_level, fields, n_fields, FALSE);
  gsize i;

  g_mutex_lock (&captured_lock);
  for (i = 0; i < n_fields; i++)
    if (g_str_equal (fields[i].key, "MESSAGE"))
      g_ptr_array_add (captured, fields[i].length < 0 ? g_strdup (fields[i].value)
                                                      : g_strndup (fields[i].value, fields[i].length));
  g_ptr_array_add (captured, g_strdup (line));
  g_mutex_unlock (&captured_lock);

  if (log_level & (G_LOG_LEVEL_ERROR | G_LOG_LEVEL_CRITICAL))
    return g_log_writer_default (log_level, fields, n_fields, user_data);
  if (log_level & (G_LOG_LEVEL_WARNING | G_LOG_LEVEL_MESSAGE))
    g_printerr ("# %s\n", line);
  return G_LOG_WRITER_HANDLED;
}

/* remember_error - keep an error message for the leak check */
static void
remember_error (const GError *error)
{
  g_mutex_lock (&captured_lock);
  g_ptr_array_add (captured, g_strdup (error->message));
  g_mutex_unlock (&captured_lock);
}

/* make_key_and_cert - an RSA key and a self-signed certificate, written 0600 */
static void
make_key_and_cert (const char *name, EVP_PKEY **out_key, X509 **out_cert, char **out_key_path, char **out_cert_path)
{
  EVP_PKEY *key = EVP_RSA_gen (2048);
  X509 *cert = X509_new ();
  X509_NAME *subject;
  g_autofree char *key_file = g_strdup_printf ("%s.key", name);
  g_autofree char *cert_file = g_strdup_printf ("%s.pem", name);
  BIO *bio;
  FILE *fp;

  g_assert_nonnull (key);
  X509_set_version (cert, 2);
  ASN1_INTEGER_set (X509_get_serialNumber (cert), g_random_int_range (1, G_MAXINT32));
  X509_gmtime_adj (X509_getm_notBefore (cert), -60);
  X509_gmtime_adj (X509_getm_notAfter (cert), 86400);
  X509_set_pubkey (cert, key);
  subject = X509_get_subject_name (cert);
  X509_NAME_add_entry_by_txt (subject, "CN", MBSTRING_ASC, (const unsigned char *) name, -1, -1, 0);
  X509_set_issuer_name (cert, subject);
  g_assert_cmpint (X509_sign (cert, key, EVP_sha256 ()), >, 0);

  *out_key_path = g_build_filename (tmp_dir, key_file, NULL);
  *out_cert_path = g_build_filename (tmp_dir, cert_file, NULL);
  fp = g_fopen (*out_key_path, "w");
  g_assert_nonnull (fp);
  g_assert_cmpint (fchmod (fileno (fp), 0600), ==, 0);
  g_assert_cmpint (PEM_write_PrivateKey (fp, key, NULL, NULL, 0, NULL, NULL), ==, 1);
  fclose (fp);
  bio = BIO_new_file (*out_cert_path, "w");
  g_assert_cmpint (PEM_write_bio_X509 (bio, cert), ==, 1);
  BIO_free (bio);
  *out_key = key;
  *out_cert = cert;
}

/* rm_rf - remove the test directory and what it holds */
static void
rm_rf (const char *path)
{
  GDir *dir = g_dir_open (path, 0, NULL);
  const char *name;

  while (dir != NULL && (name = g_dir_read_name (dir)) != NULL)
    {
      g_autofree char *child = g_build_filename (path, name, NULL);

      if (g_file_test (child, G_FILE_TEST_IS_DIR))
        rm_rf (child);
      else
        g_unlink (child);
    }
  if (dir != NULL)
    g_dir_close (dir);
  g_rmdir (path);
}

/* options_new - a JSON object from text */
static JsonObject *
options_new (const char *json)
{
  g_autoptr(JsonNode) node = json_from_string (json, NULL);

  g_assert_nonnull (node);
  return json_object_ref (json_node_get_object (node));
}

/* store_dir_new - a fresh store directory */
static char *
store_dir_new (void)
{
  static gint n;

  return g_strdup_printf ("%s/store-%d", tmp_dir, g_atomic_int_add (&n, 1));
}

/* source_new - a source from options, which must be good */
static PmxTokenSource *
source_new (JsonObject *options, const char *store_dir)
{
  g_autoptr(GError) error = NULL;
  PmxTokenSource *source = pmx_token_source_new (options, store_dir, &error);

  g_assert_no_error (error);
  g_assert_nonnull (source);
  return source;
}

/* get_token_ok - a token, which the IdP must consider valid */
static char *
get_token_ok (PmxTokenSource *source, gboolean force)
{
  g_autoptr(GError) error = NULL;
  char *token = pmx_token_source_get_token (source, force, NULL, &error);

  if (error != NULL)
    {
      g_autofree char *refusal = oauth2_idp_dup_last_refusal (idp);

      g_test_message ("IdP refusal: %s", refusal);
    }
  g_assert_no_error (error);
  g_assert_nonnull (token);
  g_assert_cmpstr (token, !=, "");
  g_assert_true (oauth2_idp_token_is_valid (idp, token));
  return token;
}

/* get_token_error - the error of a failing get_token (transfer full) */
static GError *
get_token_error (PmxTokenSource *source, gboolean force)
{
  GError *error = NULL;
  char *token = pmx_token_source_get_token (source, force, NULL, &error);

  g_assert_null (token);
  g_assert_nonnull (error);
  remember_error (error);
  return error;
}

/* generic_options - a generic client_credentials credential for @client_id */
static JsonObject *
generic_options (const char *client_id, const char *secret, const char *extra)
{
  g_autofree char *json = g_strdup_printf ("{\"kind\":\"generic\",\"name\":\"%s\",\"token_endpoint\":\"%s/token\","
                                           "\"client_id\":\"%s\",\"client_secret\":\"%s\","
                                           "\"scopes\":[\"https://outlook.office365.com/.default\"]%s%s}",
                                           client_id, oauth2_idp_get_url (idp), client_id, secret,
                                           extra != NULL ? "," : "", extra != NULL ? extra : "");
  return options_new (json);
}

static void
test_client_credentials_secret (void)
{
  g_autoptr(JsonObject) options = NULL;
  g_autoptr(JsonObject) wrong = NULL;
  g_autoptr(PmxTokenSource) source = NULL;
  g_autoptr(PmxTokenSource) bad = NULL;
  g_autoptr(GError) error = NULL;
  g_auto(PmxTokenStatus) status = { 0 };
  char *t1, *t2;

  oauth2_idp_add_secret_client (idp, "cc-app", "s3cret-value");
  g_setenv ("PMX_TEST_CC_SECRET", "s3cret-value", TRUE);
  options = generic_options ("cc-app", "env:PMX_TEST_CC_SECRET", NULL);
  source = source_new (options, NULL);

  t1 = get_token_ok (source, FALSE);
  t2 = get_token_ok (source, FALSE);
  g_assert_cmpstr (t1, ==, t2);
  g_assert_cmpuint (oauth2_idp_get_requests (idp, "cc-app"), ==, 1);
  pmx_secret_free (t1);
  pmx_secret_free (t2);

  pmx_token_source_get_status (source, &status);
  g_assert_cmpint (status.state, ==, PMX_TOKEN_STATE_OK);
  g_assert_cmpstr (status.grant, ==, "client_credentials");
  g_assert_cmpstr (status.scopes, ==, "https://outlook.office365.com/.default");
  g_assert_cmpint (status.expires_at, >, g_get_real_time () / G_USEC_PER_SEC + 3000);
  g_assert_cmpint (status.last_refresh, >, 0);
  g_assert_null (status.last_error);

  /* A wrong secret: AUTH, with the provider's code and the fix. */
  wrong = generic_options ("cc-app", "not-the-secret", NULL);
  bad = source_new (wrong, NULL);
  error = get_token_error (bad, FALSE);
  g_assert_error (error, PMX_OAUTH2_ERROR, PMX_OAUTH2_ERROR_AUTH);
  g_assert_nonnull (strstr (error->message, "invalid_client"));
  g_assert_nonnull (strstr (error->message, "AADSTS7000215"));
  g_assert_nonnull (strstr (error->message, "copy the secret's Value"));
  g_assert_null (strstr (error->message, "not-the-secret"));
}

/* microsoft_options - a microsoft certificate credential */
static JsonObject *
microsoft_options (const char *client_id, const char *cert_path, const char *key_path)
{
  g_autofree char *json = g_strdup_printf ("{\"kind\":\"microsoft\",\"name\":\"o365\",\"tenant\":\"contoso.onmicrosoft.com\","
                                           "\"authority\":\"%s/\",\"client_id\":\"%s\",\"certificate\":\"%s\","
                                           "\"private_key\":\"file:%s\",\"scopes\":\"https://outlook.office365.com/.default\"}",
                                           oauth2_idp_get_url (idp), client_id, cert_path, key_path);
  return options_new (json);
}

static void
test_microsoft_client_assertion (void)
{
  g_autoptr(JsonObject) options = NULL;
  g_autoptr(PmxTokenSource) source = NULL;
  g_autofree char *endpoint = NULL;
  char *token;

  oauth2_idp_add_cert_client (idp, "ms-cert-app", app_cert);
  options = microsoft_options ("ms-cert-app", app_cert_path, app_key_path);
  source = source_new (options, NULL);
  endpoint = g_strdup_printf ("%s/contoso.onmicrosoft.com/oauth2/v2.0/token", oauth2_idp_get_url (idp));
  g_assert_cmpstr (pmx_token_source_get_token_endpoint (source), ==, endpoint);

  token = get_token_ok (source, FALSE);
  g_assert_cmpuint (oauth2_idp_get_requests (idp, "ms-cert-app"), ==, 1);
  pmx_secret_free (token);
}

static void
test_microsoft_tampered_key (void)
{
  g_autoptr(JsonObject) mismatched = NULL;
  g_autoptr(JsonObject) unregistered = NULL;
  g_autoptr(PmxTokenSource) source = NULL;
  g_autoptr(GError) error = NULL;
  PmxTokenSource *none;

  oauth2_idp_add_cert_client (idp, "ms-tampered", app_cert);

  /* The registered certificate with another key: refused before any request. */
  mismatched = microsoft_options ("ms-tampered", app_cert_path, other_key_path);
  none = pmx_token_source_new (mismatched, NULL, &error);
  g_assert_null (none);
  g_assert_error (error, PMX_OAUTH2_ERROR, PMX_OAUTH2_ERROR_CONFIG);
  g_assert_nonnull (strstr (error->message, "does not match private_key"));
  g_clear_error (&error);

  /* A key and certificate the app registration does not know: the IdP
   * refuses the signature. */
  unregistered = microsoft_options ("ms-tampered", other_cert_path, other_key_path);
  source = source_new (unregistered, NULL);
  error = get_token_error (source, FALSE);
  g_assert_error (error, PMX_OAUTH2_ERROR, PMX_OAUTH2_ERROR_AUTH);
  g_assert_nonnull (strstr (error->message, "invalid_client"));
  g_assert_nonnull (strstr (error->message, "AADSTS700027"));
  g_assert_nonnull (strstr (error->message, "upload the certificate that matches private_key"));
  g_assert_cmpuint (oauth2_idp_get_requests (idp, "ms-tampered"), ==, 1);
}

/* write_service_account - a Google key file for @email signed by @key */
static char *
write_service_account (const char *email, const char *key_path)
{
  g_autoptr(JsonBuilder) builder = json_builder_new ();
  g_autoptr(JsonNode) root = NULL;
  g_autofree char *pem = NULL;
  g_autofree char *text = NULL;
  g_autofree char *token_uri = g_strdup_printf ("%s/token", oauth2_idp_get_url (idp));
  g_autofree char *file = g_strdup_printf ("sa-%s.json", email);
  char *path = g_build_filename (tmp_dir, file, NULL);

  g_assert_true (g_file_get_contents (key_path, &pem, NULL, NULL));
  json_builder_begin_object (builder);
  json_builder_set_member_name (builder, "type");
  json_builder_add_string_value (builder, "service_account");
  json_builder_set_member_name (builder, "project_id");
  json_builder_add_string_value (builder, "postmux-test");
  json_builder_set_member_name (builder, "private_key_id");
  json_builder_add_string_value (builder, "0123456789abcdef");
  json_builder_set_member_name (builder, "private_key");
  json_builder_add_string_value (builder, pem);
  json_builder_set_member_name (builder, "client_email");
  json_builder_add_string_value (builder, email);
  json_builder_set_member_name (builder, "token_uri");
  json_builder_add_string_value (builder, token_uri);
  json_builder_end_object (builder);
  root = json_builder_get_root (builder);
  text = json_to_string (root, TRUE);
  g_assert_true (g_file_set_contents_full (path, text, -1, G_FILE_SET_CONTENTS_CONSISTENT, 0600, NULL));
  return path;
}

/* google_options - a service-account credential */
static JsonObject *
google_options (const char *key_file, const char *subject)
{
  g_autofree char *json = g_strdup_printf ("{\"kind\":\"google\",\"name\":\"gmail\",\"service_account_file\":\"%s\","
                                           "\"subject\":\"%s\",\"scopes\":[\"https://mail.google.com/\"]}",
                                           key_file, subject);
  return options_new (json);
}

static void
test_google_service_account (void)
{
  const char *email = "mailer@postmux-test.iam.gserviceaccount.com";
  g_autofree char *key_file = write_service_account (email, app_key_path);
  g_autoptr(JsonObject) options = google_options (key_file, "alice@example.com");
  g_autoptr(JsonObject) undelegated = google_options (key_file, "bob@example.com");
  g_autoptr(PmxTokenSource) source = NULL;
  g_autoptr(PmxTokenSource) bob = NULL;
  g_autoptr(GError) error = NULL;
  char *token;

  oauth2_idp_add_service_account (idp, email, app_key, "alice@example.com", "https://mail.google.com/");
  source = source_new (options, NULL);
  token = get_token_ok (source, FALSE);
  pmx_secret_free (token);
  g_assert_cmpuint (oauth2_idp_get_requests (idp, email), ==, 1);

  /* No delegation for that subject: unauthorized_client with the admin console fix. */
  bob = source_new (undelegated, NULL);
  error = get_token_error (bob, FALSE);
  g_assert_error (error, PMX_OAUTH2_ERROR, PMX_OAUTH2_ERROR_AUTH);
  g_assert_nonnull (strstr (error->message, "unauthorized_client"));
  g_assert_nonnull (strstr (error->message, "domain-wide delegation is not granted"));
  g_assert_nonnull (strstr (error->message, "Security > API controls"));
}

static void
test_google_tampered_key (void)
{
  const char *email = "tampered@postmux-test.iam.gserviceaccount.com";
  g_autofree char *key_file = write_service_account (email, other_key_path);
  g_autoptr(JsonObject) options = google_options (key_file, "alice@example.com");
  g_autoptr(PmxTokenSource) source = NULL;
  g_autoptr(GError) error = NULL;

  /* The IdP knows the app key; the key file holds another one. */
  oauth2_idp_add_service_account (idp, email, app_key, "alice@example.com", "https://mail.google.com/");
  source = source_new (options, NULL);
  error = get_token_error (source, FALSE);
  g_assert_error (error, PMX_OAUTH2_ERROR, PMX_OAUTH2_ERROR_AUTH);
  g_assert_nonnull (strstr (error->message, "invalid_grant"));
  g_assert_nonnull (strstr (error->message, "Invalid JWT Signature"));
  g_assert_nonnull (strstr (error->message, "check the system clock, the key file"));
}

/* refresh_options - a generic refresh_token credential seeded with @seed */
static JsonObject *
refresh_options (const char *client_id, const char *seed)
{
  g_autofree char *json = g_strdup_printf ("{\"kind\":\"generic\",\"name\":\"%s\",\"token_endpoint\":\"%s/token\","
                                           "\"client_id\":\"%s\",\"client_secret\":\"pub\",\"refresh_token\":\"%s\","
                                           "\"scopes\":\"https://outlook.office.com/SMTP.Send offline_access\"}",
                                           client_id, oauth2_idp_get_url (idp), client_id, seed);
  return options_new (json);
}

/* read_store - the store file of @source as JSON */
static JsonObject *
read_store (PmxTokenSource *source)
{
  g_auto(PmxTokenStatus) status = { 0 };
  g_autofree char *text = NULL;

  pmx_token_source_get_status (source, &status);
  g_assert_nonnull (status.store_path);
  g_assert_true (g_file_get_contents (status.store_path, &text, NULL, NULL));
  return options_new (text);
}

/* assert_store_mode - the store file is 0600 */
static void
assert_store_mode (PmxTokenSource *source)
{
  g_auto(PmxTokenStatus) status = { 0 };
  struct stat st;

  pmx_token_source_get_status (source, &status);
  g_assert_cmpint (g_stat (status.store_path, &st), ==, 0);
  g_assert_cmpint (st.st_mode & 07777, ==, 0600);
}

static void
test_refresh_rotation_survives_restart (void)
{
  g_autofree char *seed = NULL;
  g_autofree char *dir = store_dir_new ();
  g_autoptr(JsonObject) options = NULL;
  g_autoptr(JsonObject) store = NULL;
  g_autofree char *rotated = NULL;
  PmxTokenSource *source;
  char *t1, *t2, *t3;

  oauth2_idp_add_secret_client (idp, "rt-app", "pub");
  seed = oauth2_idp_issue_refresh_token (idp, "rt-app");
  options = refresh_options ("rt-app", seed);

  source = source_new (options, dir);
  t1 = get_token_ok (source, FALSE);
  store = read_store (source);
  rotated = g_strdup (json_object_get_string_member (store, "refresh_token"));
  g_assert_cmpstr (rotated, !=, seed);
  g_assert_cmpstr (json_object_get_string_member (store, "access_token"), ==, t1);
  assert_store_mode (source);
  pmx_token_source_unref (source);

  /* Restart: the same configuration (still naming the first refresh token). */
  source = source_new (options, dir);
  t2 = get_token_ok (source, FALSE);
  g_assert_cmpstr (t2, ==, t1);                       /* cached across the restart */
  g_assert_cmpuint (oauth2_idp_get_requests (idp, "rt-app"), ==, 1);
  t3 = get_token_ok (source, TRUE);                   /* uses the rotated token */
  g_assert_cmpstr (t3, !=, t1);
  g_assert_cmpuint (oauth2_idp_get_requests (idp, "rt-app"), ==, 2);
  g_assert_cmpuint (oauth2_idp_get_replays (idp), ==, 0);
  g_clear_pointer (&store, json_object_unref);
  store = read_store (source);
  g_assert_cmpstr (json_object_get_string_member (store, "refresh_token"), !=, rotated);
  assert_store_mode (source);
  pmx_token_source_unref (source);
  pmx_secret_free (t1);
  pmx_secret_free (t2);
  pmx_secret_free (t3);
}

/* rewrite_store_expiry - make the stored token expire in @seconds */
static void
rewrite_store_expiry (PmxTokenSource *source, gint64 seconds)
{
  g_auto(PmxTokenStatus) status = { 0 };
  g_autoptr(JsonObject) store = read_store (source);
  g_autoptr(JsonNode) node = json_node_new (JSON_NODE_OBJECT);
  g_autofree char *text = NULL;
  gint64 now = g_get_real_time () / G_USEC_PER_SEC;

  pmx_token_source_get_status (source, &status);
  json_object_set_int_member (store, "expires_at", now + seconds);
  json_object_set_int_member (store, "last_refresh", now + seconds - 3600);
  json_node_set_object (node, store);
  text = json_to_string (node, FALSE);
  g_assert_true (g_file_set_contents_full (status.store_path, text, -1, G_FILE_SET_CONTENTS_CONSISTENT, 0600, NULL));
}

static void
test_refresh_ahead_of_expiry (void)
{
  g_autofree char *dir = store_dir_new ();
  g_autoptr(JsonObject) options = NULL;
  g_auto(PmxTokenStatus) status = { 0 };
  PmxTokenSource *source;
  char *t1, *t2, *t3;

  oauth2_idp_add_secret_client (idp, "ahead-app", "pw");
  options = generic_options ("ahead-app", "pw", "\"refresh_margin\":300");
  source = source_new (options, dir);
  t1 = get_token_ok (source, FALSE);
  rewrite_store_expiry (source, 100);   /* still valid, but inside the margin */
  pmx_token_source_unref (source);

  source = source_new (options, dir);
  t2 = get_token_ok (source, FALSE);
  g_assert_cmpstr (t2, !=, t1);
  g_assert_cmpuint (oauth2_idp_get_requests (idp, "ahead-app"), ==, 2);

  /* The same situation with the endpoint failing: the still-valid token
   * keeps working, and the status tells. */
  rewrite_store_expiry (source, 100);
  pmx_token_source_unref (source);
  source = source_new (options, dir);
  oauth2_idp_set_mode (idp, "ahead-app", OAUTH2_IDP_MODE_FAIL_500);
  t3 = pmx_token_source_get_token (source, FALSE, NULL, NULL);
  g_assert_cmpstr (t3, ==, t2);
  g_assert_cmpuint (oauth2_idp_get_requests (idp, "ahead-app"), ==, 3);
  pmx_token_source_get_status (source, &status);
  g_assert_cmpint (status.state, ==, PMX_TOKEN_STATE_ERROR);
  g_assert_nonnull (strstr (status.last_error, "HTTP 500"));
  oauth2_idp_set_mode (idp, "ahead-app", OAUTH2_IDP_MODE_OK);

  pmx_token_source_unref (source);
  pmx_secret_free (t1);
  pmx_secret_free (t2);
  pmx_secret_free (t3);
}

static void
test_short_lifetime (void)
{
  g_autoptr(JsonObject) options = NULL;
  g_autoptr(PmxTokenSource) source = NULL;
  char *t1, *t2;

  /* A token living 120 s with a 300 s margin is reused for about 60 s
   * rather than refreshed on every call. */
  oauth2_idp_add_secret_client (idp, "short-app", "pw");
  oauth2_idp_set_expires_in (idp, 120);
  options = generic_options ("short-app", "pw", NULL);
  source = source_new (options, NULL);
  t1 = get_token_ok (source, FALSE);
  t2 = get_token_ok (source, FALSE);
  oauth2_idp_set_expires_in (idp, 3599);
  g_assert_cmpstr (t1, ==, t2);
  g_assert_cmpuint (oauth2_idp_get_requests (idp, "short-app"), ==, 1);
  pmx_secret_free (t1);
  pmx_secret_free (t2);
}

typedef struct {
  PmxTokenSource *source;
  GMutex          lock;
  GCond           cond;
  gboolean        go;
  char           *tokens[32];
  GError         *errors[32];
  gint            index;
} Crowd;

/* crowd_thread - wait for the start signal, then ask for a token */
static gpointer
crowd_thread (gpointer data)
{
  Crowd *crowd = data;
  gint i = g_atomic_int_add (&crowd->index, 1);

  g_mutex_lock (&crowd->lock);
  while (!crowd->go)
    g_cond_wait (&crowd->cond, &crowd->lock);
  g_mutex_unlock (&crowd->lock);
  crowd->tokens[i] = pmx_token_source_get_token (crowd->source, FALSE, NULL, &crowd->errors[i]);
  return NULL;
}

static void
test_single_flight (void)
{
  g_autofree char *dir = store_dir_new ();
  g_autoptr(JsonObject) options = NULL;
  Crowd crowd = { 0 };
  GThread *threads[32];
  char *first;
  guint i;

  oauth2_idp_add_secret_client (idp, "crowd-app", "pw");
  options = generic_options ("crowd-app", "pw", NULL);
  crowd.source = source_new (options, dir);
  first = get_token_ok (crowd.source, FALSE);
  rewrite_store_expiry (crowd.source, -10);    /* now expired, as after a night's sleep */
  pmx_token_source_unref (crowd.source);
  crowd.source = source_new (options, dir);
  g_mutex_init (&crowd.lock);
  g_cond_init (&crowd.cond);

  /* The IdP answers slowly so that the crowd really overlaps. */
  oauth2_idp_set_delay_ms (idp, 300);
  for (i = 0; i < G_N_ELEMENTS (threads); i++)
    threads[i] = g_thread_new ("crowd", crowd_thread, &crowd);
  g_mutex_lock (&crowd.lock);
  crowd.go = TRUE;
  g_cond_broadcast (&crowd.cond);
  g_mutex_unlock (&crowd.lock);
  for (i = 0; i < G_N_ELEMENTS (threads); i++)
    g_thread_join (threads[i]);
  oauth2_idp_set_delay_ms (idp, 0);

  g_assert_cmpuint (oauth2_idp_get_requests (idp, "crowd-app"), ==, 2);  /* the first, then exactly one */
  for (i = 0; i < G_N_ELEMENTS (threads); i++)
    {
      g_assert_no_error (crowd.errors[i]);
      g_assert_cmpstr (crowd.tokens[i], ==, crowd.tokens[0]);
    }
  g_assert_cmpstr (crowd.tokens[0], !=, first);
  g_assert_true (oauth2_idp_token_is_valid (idp, crowd.tokens[0]));
  for (i = 0; i < G_N_ELEMENTS (threads); i++)
    pmx_secret_free (crowd.tokens[i]);
  pmx_secret_free (first);
  pmx_token_source_unref (crowd.source);
  g_mutex_clear (&crowd.lock);
  g_cond_clear (&crowd.cond);
}

typedef struct {
  PmxTokenSource *source;
  GError         *error;
  char           *token;
  gint            done;
} Stuck;

/* stuck_thread - ask the hanging endpoint */
static gpointer
stuck_thread (gpointer data)
{
  Stuck *stuck = data;

  stuck->token = pmx_token_source_get_token (stuck->source, FALSE, NULL, &stuck->error);
  g_atomic_int_set (&stuck->done, 1);
  return NULL;
}

static void
test_hanging_endpoint_isolated (void)
{
  g_autoptr(JsonObject) options_a = NULL;
  g_autoptr(JsonObject) options_b = NULL;
  g_autoptr(PmxTokenSource) b = NULL;
  Stuck stuck = { 0 };
  GThread *thread;
  char *token;

  oauth2_idp_add_secret_client (idp, "hang-a", "pw");
  oauth2_idp_add_secret_client (idp, "fine-b", "pw");
  oauth2_idp_set_mode (idp, "hang-a", OAUTH2_IDP_MODE_HANG);
  options_a = generic_options ("hang-a", "pw", "\"timeout\":5");
  options_b = generic_options ("fine-b", "pw", NULL);
  stuck.source = source_new (options_a, NULL);
  b = source_new (options_b, NULL);

  thread = g_thread_new ("stuck", stuck_thread, &stuck);
  while (oauth2_idp_get_requests (idp, "hang-a") == 0)
    g_usleep (10 * 1000);

  /* A is stuck at its endpoint; B gets its token meanwhile. */
  token = get_token_ok (b, FALSE);
  g_assert_cmpint (g_atomic_int_get (&stuck.done), ==, 0);
  pmx_secret_free (token);

  g_thread_join (thread);
  g_assert_null (stuck.token);
  g_assert_error (stuck.error, PMX_OAUTH2_ERROR, PMX_OAUTH2_ERROR_TEMPORARY);
  remember_error (stuck.error);
  g_clear_error (&stuck.error);
  pmx_token_source_unref (stuck.source);
}

static void
test_server_error_is_temporary (void)
{
  g_autoptr(JsonObject) options = NULL;
  g_autoptr(PmxTokenSource) source = NULL;
  g_autoptr(GError) error = NULL;
  g_auto(PmxTokenStatus) status = { 0 };

  oauth2_idp_add_secret_client (idp, "down-app", "pw");
  oauth2_idp_set_mode (idp, "down-app", OAUTH2_IDP_MODE_FAIL_500);
  options = generic_options ("down-app", "pw", NULL);
  source = source_new (options, NULL);
  error = get_token_error (source, FALSE);
  g_assert_error (error, PMX_OAUTH2_ERROR, PMX_OAUTH2_ERROR_TEMPORARY);
  g_assert_nonnull (strstr (error->message, "HTTP 500"));
  pmx_token_source_get_status (source, &status);
  g_assert_cmpint (status.state, ==, PMX_TOKEN_STATE_ERROR);
  g_assert_cmpint (status.last_error_code, ==, PMX_OAUTH2_ERROR_TEMPORARY);
  g_assert_cmpint (status.expires_at, ==, 0);
}

static void
test_unreachable_is_temporary (void)
{
  g_autoptr(JsonObject) options = NULL;
  g_autoptr(PmxTokenSource) source = NULL;
  g_autoptr(GError) error = NULL;

  /* Port 1 on loopback: nobody listens. */
  options = options_new ("{\"kind\":\"generic\",\"token_endpoint\":\"http://127.0.0.1:1/token\","
                         "\"client_id\":\"x\",\"client_secret\":\"y\",\"scopes\":\"s\"}");
  source = source_new (options, NULL);
  error = get_token_error (source, FALSE);
  g_assert_error (error, PMX_OAUTH2_ERROR, PMX_OAUTH2_ERROR_TEMPORARY);
}

static void
test_expired_secret (void)
{
  g_autoptr(JsonObject) options = NULL;
  g_autoptr(PmxTokenSource) source = NULL;
  g_autoptr(GError) error = NULL;

  oauth2_idp_add_secret_client (idp, "expired-app", "pw");
  oauth2_idp_set_error (idp, "expired-app", 401,
                        "{\"error\":\"invalid_client\",\"error_description\":\"AADSTS7000222: The provided client secret keys "
                        "for app 'expired-app' are expired.\\r\\nTrace ID: 1\\r\\nCorrelation ID: 2\\r\\nTimestamp: 2026-01-01 "
                        "00:00:00Z\",\"error_codes\":[7000222],\"trace_id\":\"1\",\"correlation_id\":\"2\"}");
  options = generic_options ("expired-app", "pw", NULL);
  source = source_new (options, NULL);
  error = get_token_error (source, FALSE);
  g_assert_error (error, PMX_OAUTH2_ERROR, PMX_OAUTH2_ERROR_AUTH);
  g_assert_nonnull (strstr (error->message, "credential 'expired-app'"));
  g_assert_nonnull (strstr (error->message, "invalid_client"));
  g_assert_nonnull (strstr (error->message, "AADSTS7000222"));
  g_assert_nonnull (strstr (error->message, "the client secret has expired: create a new one and update client_secret"));
  g_assert_null (strstr (error->message, "Trace ID"));
}

static void
test_revoked_refresh_token_needs_login (void)
{
  g_autofree char *dir = store_dir_new ();
  g_autofree char *seed = NULL;
  g_autofree char *fresh = NULL;
  g_autoptr(JsonObject) options = NULL;
  g_autoptr(PmxTokenSource) source = NULL;
  g_autoptr(GError) error = NULL;
  g_autoptr(GError) again = NULL;
  g_auto(PmxTokenStatus) status = { 0 };
  g_auto(PmxTokenStatus) after = { 0 };
  guint requests;
  char *token;

  oauth2_idp_add_secret_client (idp, "revoked-app", "pub");
  seed = oauth2_idp_issue_refresh_token (idp, "revoked-app");
  options = refresh_options ("revoked-app", seed);
  source = source_new (options, dir);
  token = get_token_ok (source, FALSE);
  pmx_secret_free (token);

  oauth2_idp_revoke_refresh_tokens (idp, "revoked-app");
  error = get_token_error (source, TRUE);
  g_assert_error (error, PMX_OAUTH2_ERROR, PMX_OAUTH2_ERROR_NEEDS_LOGIN);
  g_assert_nonnull (strstr (error->message, "invalid_grant"));
  g_assert_nonnull (strstr (error->message, "postmux auth login"));
  pmx_token_source_get_status (source, &status);
  g_assert_cmpint (status.state, ==, PMX_TOKEN_STATE_NEEDS_LOGIN);
  g_assert_cmpstr (pmx_token_state_to_string (status.state), ==, "needs_login");
  g_assert_false (status.has_refresh_token);

  /* No request is made while a login is needed. */
  requests = oauth2_idp_get_requests (idp, "revoked-app");
  again = get_token_error (source, FALSE);
  g_assert_error (again, PMX_OAUTH2_ERROR, PMX_OAUTH2_ERROR_NEEDS_LOGIN);
  g_assert_cmpuint (oauth2_idp_get_requests (idp, "revoked-app"), ==, requests);

  /* A login hands a new refresh token over. */
  fresh = oauth2_idp_issue_refresh_token (idp, "revoked-app");
  g_assert_true (pmx_token_source_set_refresh_token (source, fresh, NULL));
  token = get_token_ok (source, FALSE);
  pmx_secret_free (token);
  pmx_token_source_get_status (source, &after);
  g_assert_cmpint (after.state, ==, PMX_TOKEN_STATE_OK);
  assert_store_mode (source);
}

static void
test_invalidate_only_same_token (void)
{
  g_autoptr(JsonObject) options = NULL;
  g_autoptr(PmxTokenSource) source = NULL;
  char *t1, *t2, *t3;

  oauth2_idp_add_secret_client (idp, "inval-app", "pw");
  options = generic_options ("inval-app", "pw", NULL);
  source = source_new (options, NULL);
  t1 = get_token_ok (source, FALSE);
  pmx_token_source_invalidate (source, "some-older-token");
  t2 = get_token_ok (source, FALSE);
  g_assert_cmpstr (t2, ==, t1);
  g_assert_cmpuint (oauth2_idp_get_requests (idp, "inval-app"), ==, 1);
  oauth2_idp_revoke_access_token (idp, t1);
  pmx_token_source_invalidate (source, t1);
  t3 = get_token_ok (source, FALSE);
  g_assert_cmpstr (t3, !=, t1);
  g_assert_cmpuint (oauth2_idp_get_requests (idp, "inval-app"), ==, 2);
  pmx_secret_free (t1);
  pmx_secret_free (t2);
  pmx_secret_free (t3);
}

static void
test_config_errors (void)
{
  const char *cases[][2] = {
    { "{\"kind\":\"martian\",\"client_id\":\"x\"}", "unknown kind" },
    { "{\"kind\":\"microsoft\",\"client_id\":\"x\",\"client_secret\":\"y\"}", "needs \"tenant\"" },
    { "{\"kind\":\"generic\",\"client_id\":\"x\",\"client_secret\":\"y\"}", "needs \"token_endpoint\"" },
    { "{\"kind\":\"generic\",\"token_endpoint\":\"http://idp.example.com/token\",\"client_id\":\"x\",\"client_secret\":\"y\"}",
      "must use https://" },
    { "{\"kind\":\"generic\",\"token_endpoint\":\"https://idp.example.com/token\",\"client_id\":\"x\"}",
      "needs \"client_secret\" or \"certificate\"" },
    { "{\"kind\":\"generic\",\"token_endpoint\":\"https://idp.example.com/token\",\"client_id\":\"x\",\"client_secret\":\"y\",\"timeout\":\"soon\"}",
      "\"timeout\" must be a number" },
  };
  guint i;

  for (i = 0; i < G_N_ELEMENTS (cases); i++)
    {
      g_autoptr(JsonObject) options = options_new (cases[i][0]);
      g_autoptr(GError) error = NULL;
      PmxTokenSource *source = pmx_token_source_new (options, NULL, &error);

      g_assert_null (source);
      g_assert_error (error, PMX_OAUTH2_ERROR, PMX_OAUTH2_ERROR_CONFIG);
      g_test_message ("%s", error->message);
      g_assert_nonnull (strstr (error->message, cases[i][1]));
    }
}

/* The store key carries the credential name and the cached access token
 * is bound to the client authentication: a transport with a wrong secret
 * never uses another transport's token. */
static void
test_store_key_per_credential (void)
{
  g_autofree char *dir = store_dir_new ();
  g_autoptr(JsonObject) good_options = NULL;
  g_autoptr(JsonObject) wrong_options = NULL;
  g_autoptr(JsonObject) renamed_wrong = NULL;
  g_autoptr(PmxTokenSource) good = NULL;
  g_autoptr(PmxTokenSource) wrong = NULL;
  g_autoptr(PmxTokenSource) renamed = NULL;
  g_autoptr(GError) error = NULL;
  g_auto(PmxTokenStatus) good_status = { 0 };
  g_auto(PmxTokenStatus) wrong_status = { 0 };
  guint requests;
  char *token;

  oauth2_idp_add_secret_client (idp, "shared-app", "right-secret");
  good_options = generic_options ("shared-app", "right-secret", NULL);
  good = source_new (good_options, dir);
  token = get_token_ok (good, FALSE);
  pmx_secret_free (token);

  /* Same app registration, same endpoint and scopes, another transport
   * name and a wrong secret: its own store file, and no token. */
  wrong_options = generic_options ("shared-app", "wrong-secret", NULL);
  json_object_set_string_member (wrong_options, "name", "other-transport");
  wrong = source_new (wrong_options, dir);
  pmx_token_source_get_status (good, &good_status);
  pmx_token_source_get_status (wrong, &wrong_status);
  g_assert_cmpstr (good_status.store_path, !=, wrong_status.store_path);
  g_assert_cmpint (wrong_status.expires_at, ==, 0);
  requests = oauth2_idp_get_requests (idp, "shared-app");
  error = get_token_error (wrong, FALSE);
  g_assert_error (error, PMX_OAUTH2_ERROR, PMX_OAUTH2_ERROR_AUTH);
  g_assert_nonnull (strstr (error->message, "invalid_client"));
  g_assert_cmpuint (oauth2_idp_get_requests (idp, "shared-app"), ==, requests + 1);
  g_clear_error (&error);

  /* Same name as the good one but a wrong secret (the operator edited the
   * secret): same store file, yet the cached access token is not used. */
  renamed_wrong = generic_options ("shared-app", "wrong-secret", NULL);
  renamed = source_new (renamed_wrong, dir);
  error = get_token_error (renamed, FALSE);
  g_assert_error (error, PMX_OAUTH2_ERROR, PMX_OAUTH2_ERROR_AUTH);
  g_assert_cmpuint (oauth2_idp_get_requests (idp, "shared-app"), ==, requests + 2);
}

/* A source that needs a login adopts one that another process (postmux
 * auth login) wrote into the store. */
static void
test_needs_login_adopts_store (void)
{
  g_autofree char *dir = store_dir_new ();
  g_autofree char *seed = NULL;
  g_autofree char *fresh = NULL;
  g_autoptr(JsonObject) options = NULL;
  g_autoptr(PmxTokenSource) daemon = NULL;
  g_autoptr(PmxTokenSource) cli = NULL;
  g_autoptr(GError) error = NULL;
  g_auto(PmxTokenStatus) status = { 0 };
  guint replays;
  char *token;

  oauth2_idp_add_secret_client (idp, "adopt-app", "pub");
  seed = oauth2_idp_issue_refresh_token (idp, "adopt-app");
  options = refresh_options ("adopt-app", seed);
  daemon = source_new (options, dir);
  oauth2_idp_revoke_refresh_tokens (idp, "adopt-app");
  error = get_token_error (daemon, FALSE);
  g_assert_error (error, PMX_OAUTH2_ERROR, PMX_OAUTH2_ERROR_NEEDS_LOGIN);
  replays = oauth2_idp_get_replays (idp);

  cli = source_new (options, dir);
  pmx_token_source_get_status (cli, &status);
  g_assert_cmpint (status.state, ==, PMX_TOKEN_STATE_NEEDS_LOGIN);
  g_assert_nonnull (status.last_error);
  g_assert_nonnull (strstr (status.last_error, "invalid_grant"));
  fresh = oauth2_idp_issue_refresh_token (idp, "adopt-app");
  g_assert_true (pmx_token_source_set_refresh_token (cli, fresh, NULL));

  token = get_token_ok (daemon, FALSE);
  pmx_secret_free (token);
  g_assert_cmpuint (oauth2_idp_get_replays (idp), ==, replays);
}

/* redirect_follow - GET @url without following; the Location (transfer full) */
static char *
redirect_follow (const char *url)
{
  g_autoptr(SoupSession) session = soup_session_new ();
  g_autoptr(SoupMessage) msg = soup_message_new ("GET", url);
  g_autoptr(GBytes) body = NULL;
  g_autoptr(GError) error = NULL;

  soup_message_add_flags (msg, SOUP_MESSAGE_NO_REDIRECT);
  body = soup_session_send_and_read (session, msg, NULL, &error);
  g_assert_no_error (error);
  g_assert_cmpuint (soup_message_get_status (msg), ==, 302);
  return g_strdup (soup_message_headers_get_one (soup_message_get_response_headers (msg), "Location"));
}

/* The authorization code flow: the URL carries S256 PKCE and the state,
 * the IdP checks the verifier, the refresh token lands in the store. */
static void
test_login_authorization_code (void)
{
  g_autofree char *dir = store_dir_new ();
  g_autofree char *json = NULL;
  g_autofree char *url = NULL;
  g_autofree char *location = NULL;
  g_autoptr(JsonObject) options = NULL;
  g_autoptr(JsonObject) store = NULL;
  g_autoptr(PmxTokenSource) source = NULL;
  g_autoptr(GError) error = NULL;
  g_autoptr(GUri) back = NULL;
  g_autoptr(GHashTable) query = NULL;
  char *verifier = NULL, *challenge = NULL, *other = NULL, *other_challenge = NULL;
  const char *state = "0123456789abcdef0123456789abcdef";
  char *token;

  oauth2_idp_add_secret_client (idp, "login-app", "pub");
  json = g_strdup_printf ("{\"kind\":\"generic\",\"name\":\"login\",\"token_endpoint\":\"%s/token\","
                          "\"authorization_endpoint\":\"%s/authorize\",\"grant\":\"refresh_token\","
                          "\"client_id\":\"login-app\",\"client_secret\":\"pub\",\"scopes\":\"smtp offline_access\"}",
                          oauth2_idp_get_url (idp), oauth2_idp_get_url (idp));
  options = options_new (json);
  source = source_new (options, dir);

  pmx_oauth2_pkce_new (&verifier, &challenge);
  g_assert_cmpuint (strlen (verifier), ==, 43);
  g_assert_cmpuint (strlen (challenge), ==, 43);
  url = pmx_token_source_dup_authorize_url (source, "http://127.0.0.1:9/", state, challenge, &error);
  g_assert_no_error (error);
  g_assert_true (g_str_has_prefix (url, oauth2_idp_get_url (idp)));
  g_assert_nonnull (strstr (url, "code_challenge_method=S256"));
  g_assert_nonnull (strstr (url, "response_type=code"));
  location = redirect_follow (url);
  back = g_uri_parse (location, G_URI_FLAGS_NONE, NULL);
  g_assert_nonnull (back);
  g_assert_cmpint (g_uri_get_port (back), ==, 9);
  query = g_uri_parse_params (g_uri_get_query (back), -1, "&", G_URI_PARAMS_NONE, NULL);
  g_assert_cmpstr (g_hash_table_lookup (query, "state"), ==, state);

  /* A wrong verifier is refused, and spends the code. */
  pmx_oauth2_pkce_new (&other, &other_challenge);
  g_assert_false (pmx_token_source_redeem_code (source, g_hash_table_lookup (query, "code"), "http://127.0.0.1:9/",
                                                other, NULL, &error));
  g_assert_error (error, PMX_OAUTH2_ERROR, PMX_OAUTH2_ERROR_AUTH);
  g_assert_nonnull (strstr (error->message, "Code_Verifier"));
  remember_error (error);
  g_clear_error (&error);

  g_clear_pointer (&location, g_free);
  g_clear_pointer (&back, g_uri_unref);
  g_clear_pointer (&query, g_hash_table_unref);
  location = redirect_follow (url);
  back = g_uri_parse (location, G_URI_FLAGS_NONE, NULL);
  query = g_uri_parse_params (g_uri_get_query (back), -1, "&", G_URI_PARAMS_NONE, NULL);
  g_assert_true (pmx_token_source_redeem_code (source, g_hash_table_lookup (query, "code"), "http://127.0.0.1:9/",
                                               verifier, NULL, &error));
  g_assert_no_error (error);
  store = read_store (source);
  g_assert_nonnull (json_object_get_string_member_with_default (store, "refresh_token", NULL));
  g_assert_false (json_object_get_boolean_member (store, "needs_login"));
  assert_store_mode (source);
  token = get_token_ok (source, FALSE);
  pmx_secret_free (token);
  pmx_secret_free (verifier);
  g_free (challenge);
  pmx_secret_free (other);
  g_free (other_challenge);
}

/* The device code flow polls until the user signs in; Google refuses it. */
static void
test_login_device_code (void)
{
  g_autofree char *dir = store_dir_new ();
  g_autofree char *json = NULL;
  g_autoptr(JsonObject) options = NULL;
  g_autoptr(JsonObject) google = NULL;
  g_autoptr(PmxTokenSource) source = NULL;
  g_autoptr(PmxTokenSource) gsource = NULL;
  g_autoptr(GError) error = NULL;
  g_auto(PmxDeviceCode) code = { 0 };
  g_auto(PmxDeviceCode) gcode = { 0 };
  g_auto(PmxTokenStatus) status = { 0 };

  oauth2_idp_add_secret_client (idp, "device-app", "pub");
  json = g_strdup_printf ("{\"kind\":\"microsoft\",\"name\":\"device\",\"tenant\":\"t1\","
                          "\"token_endpoint\":\"%s/t1/oauth2/v2.0/token\",\"grant\":\"refresh_token\","
                          "\"client_id\":\"device-app\",\"client_secret\":\"pub\"}", oauth2_idp_get_url (idp));
  options = options_new (json);
  source = source_new (options, dir);
  g_assert_true (pmx_token_source_start_device_login (source, &code, NULL, &error));
  g_assert_no_error (error);
  g_assert_nonnull (code.user_code);
  g_assert_cmpuint (code.interval, ==, 1);
  g_assert_true (g_str_has_prefix (code.verification_uri, oauth2_idp_get_url (idp)));
  /* The user signs in before the first poll: one poll brings the tokens. */
  g_assert_true (oauth2_idp_approve_device (idp, code.user_code));
  g_assert_true (pmx_token_source_finish_device_login (source, &code, NULL, &error));
  g_assert_no_error (error);
  pmx_token_source_get_status (source, &status);
  g_assert_cmpint (status.state, ==, PMX_TOKEN_STATE_OK);
  g_assert_true (status.has_refresh_token);

  google = options_new ("{\"kind\":\"google\",\"name\":\"gmail\",\"grant\":\"refresh_token\","
                        "\"client_id\":\"x.apps.googleusercontent.com\",\"client_secret\":\"s\","
                        "\"scopes\":\"https://mail.google.com/\"}");
  gsource = source_new (google, NULL);
  g_assert_false (pmx_token_source_start_device_login (gsource, &gcode, NULL, &error));
  g_assert_error (error, PMX_OAUTH2_ERROR, PMX_OAUTH2_ERROR_CONFIG);
  g_assert_nonnull (strstr (error->message, "Google refuses Gmail scopes"));
  g_assert_nonnull (strstr (error->message, "service account"));
}

/* Sources are registered by name while they live. */
static void
test_registry (void)
{
  g_autoptr(JsonObject) options = NULL;
  g_autoptr(PmxTokenSource) older = NULL;
  g_autoptr(PmxTokenSource) newer = NULL;
  g_autoptr(PmxTokenSource) found = NULL;
  g_autoptr(GPtrArray) list = NULL;
  guint named = 0;

  oauth2_idp_add_secret_client (idp, "registry-app", "pw");
  options = generic_options ("registry-app", "pw", NULL);
  json_object_set_string_member (options, "name", "registry-name");
  older = source_new (options, NULL);
  newer = source_new (options, NULL);
  found = pmx_token_source_find ("registry-name");
  g_assert_true (found == newer);
  list = pmx_token_source_list ();
  for (guint i = 0; i < list->len; i++)
    named += g_strcmp0 (pmx_token_source_get_name (list->pdata[i]), "registry-name") == 0;
  g_assert_cmpuint (named, ==, 1);
  g_clear_pointer (&list, g_ptr_array_unref);
  g_clear_pointer (&found, pmx_token_source_unref);
  g_clear_pointer (&newer, pmx_token_source_unref);
  found = pmx_token_source_find ("registry-name");
  g_assert_true (found == older);
  g_clear_pointer (&found, pmx_token_source_unref);
  g_clear_pointer (&older, pmx_token_source_unref);
  g_assert_null (pmx_token_source_find ("registry-name"));
}

static void
test_no_token_in_logs (void)
{
  g_auto(GStrv) issued = oauth2_idp_dup_issued (idp);
  guint i, j, n_lines;

  g_assert_cmpuint (g_strv_length (issued), >, 10);
  g_mutex_lock (&captured_lock);
  n_lines = captured->len;
  for (i = 0; issued[i] != NULL; i++)
    for (j = 0; j < captured->len; j++)
      if (strstr (captured->pdata[j], issued[i]) != NULL)
        g_error ("an issued token appears in: %s", (const char *) captured->pdata[j]);
  g_mutex_unlock (&captured_lock);
  g_test_message ("%u tokens checked against %u log lines and error messages", g_strv_length (issued), n_lines);
  g_assert_cmpuint (n_lines, >, 10);
}

/* /oauth2/transport-helpers - how transports class token errors, and the
 * credential copy they hand to pmx_token_source_new() */
static void
test_transport_helpers (void)
{
  static const struct { int code; PmxFailureClass want; } cases[] = {
    { PMX_OAUTH2_ERROR_AUTH, PMX_FAILURE_CONFIG },
    { PMX_OAUTH2_ERROR_CONFIG, PMX_FAILURE_CONFIG },
    { PMX_OAUTH2_ERROR_NEEDS_LOGIN, PMX_FAILURE_AUTH },
    { PMX_OAUTH2_ERROR_TEMPORARY, PMX_FAILURE_TEMPORARY },
    { PMX_OAUTH2_ERROR_FAILED, PMX_FAILURE_TEMPORARY },
  };
  g_autoptr(JsonObject) cred = json_object_new ();
  g_autoptr(JsonObject) copy = NULL;
  g_autoptr(JsonObject) named = NULL;
  g_autoptr(GError) cancelled = g_error_new_literal (G_IO_ERROR, G_IO_ERROR_CANCELLED, "cancelled");

  for (gsize i = 0; i < G_N_ELEMENTS (cases); i++)
    {
      g_autoptr(GError) e = g_error_new_literal (PMX_OAUTH2_ERROR, cases[i].code, "x");

      g_assert_cmpint (pmx_oauth2_error_get_failure (e), ==, cases[i].want);
    }
  g_assert_cmpint (pmx_oauth2_error_get_failure (cancelled), ==, PMX_FAILURE_TEMPORARY);

  json_object_set_string_member (cred, "kind", "generic");
  copy = pmx_oauth2_credential_copy (cred, "t1");
  g_assert_cmpstr (json_object_get_string_member (copy, "name"), ==, "t1");
  g_assert_cmpstr (json_object_get_string_member (copy, "kind"), ==, "generic");
  g_assert_false (json_object_has_member (cred, "name"));     /* the original is untouched */
  json_object_set_string_member (cred, "name", "shared");
  named = pmx_oauth2_credential_copy (cred, "t1");
  g_assert_cmpstr (json_object_get_string_member (named, "name"), ==, "shared");
}

int
main (int argc, char **argv)
{
  int rc;

  captured = g_ptr_array_new_with_free_func (g_free);
  g_log_set_writer_func (capture_writer, NULL, NULL);
  g_test_init (&argc, &argv, NULL);

  tmp_dir = g_dir_make_tmp ("test-oauth2-XXXXXX", NULL);
  g_assert_nonnull (tmp_dir);
  make_key_and_cert ("app", &app_key, &app_cert, &app_key_path, &app_cert_path);
  make_key_and_cert ("other", &other_key, &other_cert, &other_key_path, &other_cert_path);
  idp = oauth2_idp_new ();

  g_test_add_func ("/oauth2/client-credentials/secret", test_client_credentials_secret);
  g_test_add_func ("/oauth2/microsoft/client-assertion-verified", test_microsoft_client_assertion);
  g_test_add_func ("/oauth2/microsoft/tampered-key-refused", test_microsoft_tampered_key);
  g_test_add_func ("/oauth2/google/service-account-with-subject", test_google_service_account);
  g_test_add_func ("/oauth2/google/tampered-key-refused", test_google_tampered_key);
  g_test_add_func ("/oauth2/refresh-token/rotation-survives-restart", test_refresh_rotation_survives_restart);
  g_test_add_func ("/oauth2/refresh/ahead-of-expiry", test_refresh_ahead_of_expiry);
  g_test_add_func ("/oauth2/refresh/short-lifetime-not-every-call", test_short_lifetime);
  g_test_add_func ("/oauth2/single-flight/32-threads-one-request", test_single_flight);
  g_test_add_func ("/oauth2/isolation/hanging-endpoint-does-not-delay-others", test_hanging_endpoint_isolated);
  g_test_add_func ("/oauth2/errors/server-error-is-temporary", test_server_error_is_temporary);
  g_test_add_func ("/oauth2/errors/unreachable-is-temporary", test_unreachable_is_temporary);
  g_test_add_func ("/oauth2/errors/expired-secret-says-how-to-fix", test_expired_secret);
  g_test_add_func ("/oauth2/errors/revoked-refresh-token-needs-login", test_revoked_refresh_token_needs_login);
  g_test_add_func ("/oauth2/invalidate/only-the-same-token", test_invalidate_only_same_token);
  g_test_add_func ("/oauth2/config/errors-name-the-option", test_config_errors);
  g_test_add_func ("/oauth2/store/key-per-credential-and-secret", test_store_key_per_credential);
  g_test_add_func ("/oauth2/store/needs-login-adopts-a-login-from-the-store", test_needs_login_adopts_store);
  g_test_add_func ("/oauth2/login/authorization-code-pkce", test_login_authorization_code);
  g_test_add_func ("/oauth2/login/device-code-and-google-refusal", test_login_device_code);
  g_test_add_func ("/oauth2/registry/newest-by-name", test_registry);
  g_test_add_func ("/oauth2/transport-helpers", test_transport_helpers);
  g_test_add_func ("/oauth2/logs/no-token-in-any-log-or-error", test_no_token_in_logs);

  rc = g_test_run ();

  oauth2_idp_free (idp);
  EVP_PKEY_free (app_key);
  EVP_PKEY_free (other_key);
  X509_free (app_cert);
  X509_free (other_cert);
  g_free (app_key_path);
  g_free (app_cert_path);
  g_free (other_key_path);
  g_free (other_cert_path);
  rm_rf (tmp_dir);
  g_free (tmp_dir);
  g_ptr_array_unref (captured);
  return rc;
}

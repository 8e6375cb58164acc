/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * pmx-oauth2.c - PmxTokenSource: OAuth2 access tokens for delivery
 * workers, cached, refreshed ahead of expiry, one request at a time.
 *
 * RFC 6749 §4.4 (client credentials) and §6 (refresh), RFC 7523 (JWT
 * bearer grant and client assertion), Entra ID v2.0 token endpoint,
 * Google OAuth2 service accounts.
 *
 * Concurrency: each source has one mutex and one condition variable.  The
 * first thread that finds no fresh token becomes the flight: it releases
 * the lock, asks the endpoint, takes the lock again, records the answer
 * (saving a rotated refresh token to the store first) and wakes the others,
 * who take the same answer.  Nothing is shared between sources, so one
 * credential's slow endpoint never holds up another's.
 *
 * Trusts its options and the token endpoint's TLS identity.  Fails with
 * PmxOAuth2Error codes (see postmux-oauth2.h).  Tokens and secrets are
 * wiped when freed and never logged.
 */
#include "pmx-oauth2-private.h"

#include <errno.h>
#include <string.h>
#include <glib/gstdio.h>

#define OAUTH2_DEFAULT_MARGIN        300
#define OAUTH2_DEFAULT_CONNECT_TIMEOUT 10.0
#define OAUTH2_DEFAULT_TIMEOUT       30.0
#define OAUTH2_DEFAULT_EXPIRES_IN    3600
#define OAUTH2_ASSERTION_LIFETIME    600   /* Entra: 5-10 minutes */
#define OAUTH2_GOOGLE_JWT_LIFETIME   3600  /* Google: at most 1 hour */
#define OAUTH2_MICROSOFT_AUTHORITY   "https://login.microsoftonline.com"
#define OAUTH2_GOOGLE_TOKEN_ENDPOINT "https://oauth2.googleapis.com/token"
#define OAUTH2_GOOGLE_AUTHORIZE_ENDPOINT "https://accounts.google.com/o/oauth2/v2/auth"

#define GRANT_CLIENT_CREDENTIALS "client_credentials"
#define GRANT_REFRESH_TOKEN      "refresh_token"
#define GRANT_JWT_BEARER         "jwt_bearer"

G_DEFINE_QUARK (pmx-oauth2-error-quark, pmx_oauth2_error)

/* Every live source of the process, oldest first, for `postmux auth` and
 * /v1/health.  The lock also covers the last unref of a source, so a
 * lookup never revives one that is being freed. */
static GMutex     registry_lock;
static GPtrArray *registry;

struct _PmxTokenSource {
  gatomicrefcount ref;

  /* Set at creation, then read-only: no lock needed. */
  char     *name;           /* the "name" option: transport or credential name */
  char     *label;          /* "credential 'o365'" */
  char     *kind;
  char     *grant;
  char     *endpoint;
  char     *authorize_endpoint;  /* interactive login; NULL when unknown */
  char     *device_endpoint;     /* device authorization; NULL when unknown */
  char     *client_id;      /* client_email for a service account */
  char     *client_secret;  /* wiped */
  char     *scopes;         /* space-separated, may be NULL */
  char     *subject;        /* google domain-wide delegation */
  char     *ca_file;
  char     *store_path;     /* NULL: memory only */
  char     *seed_hash;      /* hash of the configured refresh token */
  char     *client_hash;    /* hash of the client authentication (secret or key) */
  EVP_PKEY *key;            /* assertion / service-account key */
  char     *key_id;         /* google private_key_id (JWT kid) */
  char     *x5t;
  char     *x5t_s256;
  gboolean  service_account;
  gint64    margin;
  guint     connect_timeout_ms;
  guint     timeout_ms;

  GMutex    lock;           /* protects every field below */
  GCond     cond;           /* signalled when a flight lands */
  char     *refresh_token;  /* wiped */
  char     *access_token;   /* wiped */
  gint64    expires_at;     /* unix seconds */
  gint64    last_refresh;
  char     *granted_scopes;
  gboolean  needs_login;
  gboolean  store_dirty;    /* the last save failed: retry on the next change */
  gboolean  refreshing;     /* a flight is in the air */
  guint64   flights_started;
  guint64   flights_landed;
  GError   *flight_error;   /* answer of the last landed flight; NULL = token */
  char     *last_error;
  int       last_error_code;
};

/* oauth2_now - wall-clock unix seconds (token expiry is wall-clock) */
static gint64
oauth2_now (void)
{
  return g_get_real_time () / G_USEC_PER_SEC;
}

/* oauth2_sha256_hex - hex SHA-256 of @text */
static char *
oauth2_sha256_hex (const char *text)
{
  return g_compute_checksum_for_string (G_CHECKSUM_SHA256, text, -1);
}

/* ------------------------------------------------------------------ */
/* options                                                             */

/* opt_string - a string option; FALSE when present with another type */
static gboolean
opt_string (JsonObject  *options,
            const char  *name,
            const char **out_value,
            GError     **error)
{
  JsonNode *node;

  *out_value = NULL;
  if (!json_object_has_member (options, name))
    return TRUE;
  node = json_object_get_member (options, name);
  if (JSON_NODE_HOLDS_NULL (node))
    return TRUE;
  if (!JSON_NODE_HOLDS_VALUE (node) || json_node_get_value_type (node) != G_TYPE_STRING)
    {
      g_set_error (error, PMX_OAUTH2_ERROR, PMX_OAUTH2_ERROR_CONFIG,
                   "option \"%s\" must be a string", name);
      return FALSE;
    }
  *out_value = json_node_get_string (node);
  if ((*out_value)[0] == '\0')
    *out_value = NULL;
  return TRUE;
}

/* opt_seconds - a non-negative number of seconds, @def when absent */
static gboolean
opt_seconds (JsonObject *options,
             const char *name,
             double      def,
             double     *out_value,
             GError    **error)
{
  JsonNode *node;
  GType type;

  *out_value = def;
  if (!json_object_has_member (options, name))
    return TRUE;
  node = json_object_get_member (options, name);
  type = JSON_NODE_HOLDS_VALUE (node) ? json_node_get_value_type (node) : G_TYPE_INVALID;
  if ((type != G_TYPE_INT64 && type != G_TYPE_DOUBLE) || json_node_get_double (node) < 0
      || json_node_get_double (node) > 86400)
    {
      g_set_error (error, PMX_OAUTH2_ERROR, PMX_OAUTH2_ERROR_CONFIG,
                   "option \"%s\" must be a number of seconds between 0 and 86400", name);
      return FALSE;
    }
  *out_value = json_node_get_double (node);
  return TRUE;
}

/* opt_scopes - "scopes" as one space-separated string, or NULL */
static gboolean
opt_scopes (JsonObject *options,
            char      **out_scopes,
            GError    **error)
{
  JsonNode *node;

  *out_scopes = NULL;
  if (!json_object_has_member (options, "scopes"))
    return TRUE;
  node = json_object_get_member (options, "scopes");
  if (JSON_NODE_HOLDS_VALUE (node) && json_node_get_value_type (node) == G_TYPE_STRING)
    {
      *out_scopes = g_strdup (json_node_get_string (node));
      return TRUE;
    }
  if (JSON_NODE_HOLDS_ARRAY (node))
    {
      JsonArray *array = json_node_get_array (node);
      GString *joined = g_string_new (NULL);
      guint i;

      for (i = 0; i < json_array_get_length (array); i++)
        {
          JsonNode *item = json_array_get_element (array, i);

          if (!JSON_NODE_HOLDS_VALUE (item) || json_node_get_value_type (item) != G_TYPE_STRING)
            {
              g_string_free (joined, TRUE);
              g_set_error (error, PMX_OAUTH2_ERROR, PMX_OAUTH2_ERROR_CONFIG,
                           "option \"scopes\" must be a string or an array of strings");
              return FALSE;
            }
          if (joined->len > 0)
            g_string_append_c (joined, ' ');
          g_string_append (joined, json_node_get_string (item));
        }
      *out_scopes = g_string_free (joined, FALSE);
      return TRUE;
    }
  g_set_error (error, PMX_OAUTH2_ERROR, PMX_OAUTH2_ERROR_CONFIG,
               "option \"scopes\" must be a string or an array of strings");
  return FALSE;
}

/* opt_secret - resolve a secret option; NULL without error when absent */
static gboolean
opt_secret (JsonObject *options,
            const char *name,
            char      **out_secret,
            GError    **error)
{
  const char *ref = NULL;

  *out_secret = NULL;
  if (!opt_string (options, name, &ref, error))
    return FALSE;
  if (ref == NULL)
    return TRUE;
  *out_secret = pmx_secret_resolve (ref, error);
  if (*out_secret == NULL)
    {
      g_prefix_error (error, "option \"%s\": ", name);
      return FALSE;
    }
  return TRUE;
}

/* source_load_assertion_key - certificate + private_key for a client assertion */
static gboolean
source_load_assertion_key (PmxTokenSource *source,
                           JsonObject     *options,
                           const char     *certificate,
                           GError        **error)
{
  char *pem = NULL;

  if (!opt_secret (options, "private_key", &pem, error))
    return FALSE;
  if (pem == NULL)
    {
      g_set_error (error, PMX_OAUTH2_ERROR, PMX_OAUTH2_ERROR_CONFIG,
                   "option \"certificate\" needs \"private_key\" (for example \"file:/etc/postmux/app.key\")");
      return FALSE;
    }
  source->key = pmx_oauth2_load_private_key (pem, "option \"private_key\"", error);
  pmx_secret_free (pem);
  if (source->key == NULL)
    return FALSE;
  return pmx_oauth2_load_certificate (certificate, source->key, &source->x5t, &source->x5t_s256, error);
}

/* source_load_service_account - a Google service-account key file */
static gboolean
source_load_service_account (PmxTokenSource *source,
                             const char     *path,
                             GError        **error)
{
  g_autofree char *ref = g_strconcat ("file:", path, NULL);
  g_autoptr(JsonParser) parser = json_parser_new ();
  char *contents;
  JsonObject *key;
  JsonNode *root;
  const char *type, *email, *pem, *token_uri, *key_id;
  gboolean parsed;

  contents = pmx_secret_resolve (ref, error);
  if (contents == NULL)
    {
      g_prefix_error (error, "option \"service_account_file\": ");
      return FALSE;
    }
  parsed = json_parser_load_from_data (parser, contents, -1, NULL);
  pmx_secret_free (contents);
  root = parsed ? json_parser_get_root (parser) : NULL;
  if (root == NULL || !JSON_NODE_HOLDS_OBJECT (root))
    {
      g_set_error (error, PMX_OAUTH2_ERROR, PMX_OAUTH2_ERROR_CONFIG,
                   "service account key %s is not JSON — download the key file again (IAM > Service accounts > Keys)", path);
      return FALSE;
    }
  key = json_node_get_object (root);
  type = json_object_get_string_member_with_default (key, "type", NULL);
  email = json_object_get_string_member_with_default (key, "client_email", NULL);
  pem = json_object_get_string_member_with_default (key, "private_key", NULL);
  token_uri = json_object_get_string_member_with_default (key, "token_uri", NULL);
  key_id = json_object_get_string_member_with_default (key, "private_key_id", NULL);
  if (g_strcmp0 (type, "service_account") != 0 || email == NULL || pem == NULL)
    {
      if (pem != NULL)
        explicit_bzero ((char *) pem, strlen (pem));
      g_set_error (error, PMX_OAUTH2_ERROR, PMX_OAUTH2_ERROR_CONFIG,
                   "%s is not a service account key (needs type \"service_account\", client_email, private_key)", path);
      return FALSE;
    }
  source->key = pmx_oauth2_load_private_key (pem, "the service account's private_key", error);
  /* The parser's copy of the key goes with the parser: wipe it first. */
  explicit_bzero ((char *) pem, strlen (pem));
  if (source->key == NULL)
    return FALSE;
  source->client_id = g_strdup (email);
  source->key_id = g_strdup (key_id);
  if (source->endpoint == NULL)
    source->endpoint = g_strdup (token_uri != NULL ? token_uri : OAUTH2_GOOGLE_TOKEN_ENDPOINT);
  return TRUE;
}

/* source_client_hash - a hash of how the client authenticates (its secret,
 * or its key), so that a cached access token is only used by a source that
 * can prove it is the client the token was issued to */
static char *
source_client_hash (PmxTokenSource *source)
{
  GChecksum *sum = g_checksum_new (G_CHECKSUM_SHA256);
  char *hex;

  g_checksum_update (sum, (const guchar *) "postmux-client\n", -1);
  if (source->client_secret != NULL)
    g_checksum_update (sum, (const guchar *) source->client_secret, -1);
  g_checksum_update (sum, (const guchar *) "\n", 1);
  if (source->key != NULL)
    {
      unsigned char *der = NULL;
      int len = i2d_PublicKey (source->key, &der);

      if (len > 0)
        g_checksum_update (sum, der, len);
      OPENSSL_free (der);
    }
  hex = g_strdup (g_checksum_get_string (sum));
  g_checksum_free (sum);
  return hex;
}

/* source_store_name - the store file name for this credential: its name
 * (transport or credential) and identity.  The name keeps two transports
 * that share an app registration from sharing (and overwriting) tokens. */
static char *
source_store_name (PmxTokenSource *source)
{
  g_autofree char *identity = g_strjoin ("\n", source->name != NULL ? source->name : "",
                                         source->kind, source->endpoint, source->client_id,
                                         source->subject ? source->subject : "",
                                         source->scopes ? source->scopes : "", source->grant, NULL);
  g_autofree char *hash = oauth2_sha256_hex (identity);

  return g_strdup_printf ("oauth2-%s-%.24s.json", source->kind, hash);
}

/* source_configure - read the options into @source */
static gboolean
source_configure (PmxTokenSource *source,
                  JsonObject     *options,
                  GError        **error)
{
  const char *kind, *name, *grant, *client_id, *endpoint, *tenant, *authority, *certificate, *sa_file;
  const char *subject, *ca_file, *authorize, *device;
  double margin, connect_timeout, timeout;

  if (!opt_string (options, "kind", &kind, error) || !opt_string (options, "name", &name, error)
      || !opt_string (options, "grant", &grant, error) || !opt_string (options, "client_id", &client_id, error)
      || !opt_string (options, "token_endpoint", &endpoint, error)
      || !opt_string (options, "tenant", &tenant, error) || !opt_string (options, "authority", &authority, error)
      || !opt_string (options, "certificate", &certificate, error)
      || !opt_string (options, "service_account_file", &sa_file, error)
      || !opt_string (options, "subject", &subject, error) || !opt_string (options, "ca_file", &ca_file, error)
      || !opt_string (options, "authorization_endpoint", &authorize, error)
      || !opt_string (options, "device_authorization_endpoint", &device, error)
      || !opt_seconds (options, "refresh_margin", OAUTH2_DEFAULT_MARGIN, &margin, error)
      || !opt_seconds (options, "connect_timeout", OAUTH2_DEFAULT_CONNECT_TIMEOUT, &connect_timeout, error)
      || !opt_seconds (options, "timeout", OAUTH2_DEFAULT_TIMEOUT, &timeout, error)
      || !opt_scopes (options, &source->scopes, error)
      || !opt_secret (options, "client_secret", &source->client_secret, error))
    return FALSE;

  source->kind = g_strdup (kind != NULL ? kind : "generic");
  source->name = g_strdup (name);
  source->authorize_endpoint = g_strdup (authorize);
  source->device_endpoint = g_strdup (device);
  source->label = name != NULL ? g_strdup_printf ("credential '%s'", name)
                               : g_strdup_printf ("%s credential", source->kind);
  source->subject = g_strdup (subject);
  source->ca_file = g_strdup (ca_file);
  source->margin = (gint64) margin;
  source->connect_timeout_ms = MAX (1, (guint) (connect_timeout * 1000));
  source->timeout_ms = MAX (1, (guint) (timeout * 1000));

  if (g_str_equal (source->kind, "microsoft"))
    {
      if (tenant == NULL || client_id == NULL)
        {
          g_set_error (error, PMX_OAUTH2_ERROR, PMX_OAUTH2_ERROR_CONFIG,
                       "%s: a microsoft credential needs \"tenant\" and \"client_id\" (Entra admin center > App registrations)",
                       source->label);
          return FALSE;
        }
      if (endpoint != NULL)
        source->endpoint = g_strdup (endpoint);
      else
        {
          g_autofree char *base = g_strdup (authority != NULL ? authority : OAUTH2_MICROSOFT_AUTHORITY);
          g_autofree char *escaped = g_uri_escape_string (tenant, NULL, FALSE);
          gsize n = strlen (base);

          while (n > 0 && base[n - 1] == '/')
            base[--n] = '\0';
          source->endpoint = g_strdup_printf ("%s/%s/oauth2/v2.0/token", base, escaped);
        }
      /* authorize and devicecode sit beside the token endpoint. */
      if (g_str_has_suffix (source->endpoint, "/token"))
        {
          g_autofree char *stem = g_strndup (source->endpoint, strlen (source->endpoint) - strlen ("token"));

          if (source->authorize_endpoint == NULL)
            source->authorize_endpoint = g_strconcat (stem, "authorize", NULL);
          if (source->device_endpoint == NULL)
            source->device_endpoint = g_strconcat (stem, "devicecode", NULL);
        }
    }
  else if (g_str_equal (source->kind, "google"))
    {
      source->endpoint = g_strdup (endpoint);
      if (sa_file != NULL)
        {
          if (!source_load_service_account (source, sa_file, error))
            {
              g_prefix_error (error, "%s: ", source->label);
              return FALSE;
            }
          source->service_account = TRUE;
        }
      else if (source->endpoint == NULL)
        source->endpoint = g_strdup (OAUTH2_GOOGLE_TOKEN_ENDPOINT);
      if (source->authorize_endpoint == NULL)
        source->authorize_endpoint = g_strdup (OAUTH2_GOOGLE_AUTHORIZE_ENDPOINT);
    }
  else if (g_str_equal (source->kind, "generic"))
    {
      if (endpoint == NULL)
        {
          g_set_error (error, PMX_OAUTH2_ERROR, PMX_OAUTH2_ERROR_CONFIG,
                       "%s: a generic credential needs \"token_endpoint\"", source->label);
          return FALSE;
        }
      source->endpoint = g_strdup (endpoint);
    }
  else
    {
      g_set_error (error, PMX_OAUTH2_ERROR, PMX_OAUTH2_ERROR_CONFIG,
                   "%s: unknown kind \"%s\" — use generic, microsoft or google", source->label, source->kind);
      return FALSE;
    }

  if (!source->service_account)
    {
      if (client_id == NULL)
        {
          g_set_error (error, PMX_OAUTH2_ERROR, PMX_OAUTH2_ERROR_CONFIG,
                       "%s: \"client_id\" is required", source->label);
          return FALSE;
        }
      source->client_id = g_strdup (client_id);
      if (certificate != NULL && !source_load_assertion_key (source, options, certificate, error))
        {
          g_prefix_error (error, "%s: ", source->label);
          return FALSE;
        }
    }
  if (!pmx_oauth2_check_endpoint (source->endpoint, error))
    {
      g_prefix_error (error, "%s: ", source->label);
      return FALSE;
    }

  /* The grant: explicit, else what the options imply. */
  if (grant != NULL)
    source->grant = g_strdup (grant);
  else if (source->service_account)
    source->grant = g_strdup (GRANT_JWT_BEARER);
  else if (json_object_has_member (options, "refresh_token") || g_str_equal (source->kind, "google"))
    source->grant = g_strdup (GRANT_REFRESH_TOKEN);
  else
    source->grant = g_strdup (GRANT_CLIENT_CREDENTIALS);

  if (g_str_equal (source->grant, GRANT_JWT_BEARER) != source->service_account
      || (!g_str_equal (source->grant, GRANT_CLIENT_CREDENTIALS) && !g_str_equal (source->grant, GRANT_REFRESH_TOKEN)
          && !g_str_equal (source->grant, GRANT_JWT_BEARER)))
    {
      g_set_error (error, PMX_OAUTH2_ERROR, PMX_OAUTH2_ERROR_CONFIG,
                   "%s: grant \"%s\" does not fit this credential — use client_credentials or refresh_token (jwt_bearer comes with service_account_file)",
                   source->label, source->grant);
      return FALSE;
    }
  if (g_str_equal (source->grant, GRANT_CLIENT_CREDENTIALS) && source->client_secret == NULL && source->key == NULL)
    {
      g_set_error (error, PMX_OAUTH2_ERROR, PMX_OAUTH2_ERROR_CONFIG,
                   "%s: client_credentials needs \"client_secret\" or \"certificate\" + \"private_key\"", source->label);
      return FALSE;
    }
  source->client_hash = source_client_hash (source);
  return TRUE;
}

/* source_load_store - load the store and reconcile it with the configured refresh token */
static gboolean
source_load_store (PmxTokenSource *source,
                   JsonObject     *options,
                   const char     *store_dir,
                   GError        **error)
{
  PmxTokenStoreData data = { 0 };
  g_autofree char *file = NULL;
  char *seed = NULL;

  if (!opt_secret (options, "refresh_token", &seed, error))
    {
      g_prefix_error (error, "%s: ", source->label);
      return FALSE;
    }
  if (seed != NULL)
    source->seed_hash = oauth2_sha256_hex (seed);

  if (store_dir != NULL)
    {
      if (g_mkdir_with_parents (store_dir, 0700) != 0)
        {
          int saved = errno;

          pmx_secret_free (seed);
          g_set_error (error, PMX_OAUTH2_ERROR, PMX_OAUTH2_ERROR_CONFIG,
                       "%s: cannot create the token store directory %s: %s",
                       source->label, store_dir, g_strerror (saved));
          return FALSE;
        }
      file = source_store_name (source);
      source->store_path = g_build_filename (store_dir, file, NULL);
      if (!pmx_token_store_load (source->store_path, &data, error))
        {
          pmx_secret_free (seed);
          g_prefix_error (error, "%s: ", source->label);
          return FALSE;
        }
    }

  /* An access token cached for another client authentication (the secret
   * or key was changed) is not ours to use; the refresh token stays. */
  if (data.access_token != NULL && g_strcmp0 (data.client_hash, source->client_hash) == 0)
    {
      source->access_token = g_steal_pointer (&data.access_token);
      source->expires_at = data.expires_at;
    }
  source->last_error = g_steal_pointer (&data.last_error);
  source->last_error_code = data.last_error_code;
  source->last_refresh = data.last_refresh;
  source->granted_scopes = g_steal_pointer (&data.scopes);
  if (seed != NULL && g_strcmp0 (data.seed_hash, source->seed_hash) != 0)
    {
      /* A refresh token in the configuration that the store has not seen
       * yet is newer than anything stored: someone just put it there. */
      source->refresh_token = g_steal_pointer (&seed);
      source->store_dirty = source->store_path != NULL;
    }
  else
    {
      source->refresh_token = g_steal_pointer (&data.refresh_token);
      source->needs_login = data.needs_login;
    }
  if (g_str_equal (source->grant, GRANT_REFRESH_TOKEN) && source->refresh_token == NULL)
    source->needs_login = TRUE;
  pmx_secret_free (seed);
  pmx_token_store_data_clear (&data);
  return TRUE;
}

/* source_save_locked - write the store; the caller holds the lock */
static gboolean
source_save_locked (PmxTokenSource *source,
                    GError        **error)
{
  PmxTokenStoreData data = {
    .refresh_token = source->refresh_token,
    .access_token = source->access_token,
    .expires_at = source->expires_at,
    .last_refresh = source->last_refresh,
    .scopes = source->granted_scopes,
    .seed_hash = source->seed_hash,
    .client_hash = source->client_hash,
    .needs_login = source->needs_login,
    .last_error = source->last_error,
    .last_error_code = source->last_error_code,
  };

  if (source->store_path == NULL)
    return TRUE;
  if (!pmx_token_store_save (source->store_path, &data, error))
    {
      source->store_dirty = TRUE;
      g_prefix_error (error, "%s: ", source->label);
      return FALSE;
    }
  source->store_dirty = FALSE;
  return TRUE;
}

/* source_save_or_warn - write the store, logging a failure */
static void
source_save_or_warn (PmxTokenSource *source)
{
  g_autoptr(GError) error = NULL;

  if (!source_save_locked (source, &error))
    g_warning ("%s", error->message);
}

PmxTokenSource *
pmx_token_source_new (JsonObject  *options,
                      const char  *store_dir,
                      GError     **error)
{
  PmxTokenSource *source;

  g_return_val_if_fail (options != NULL, NULL);
  g_return_val_if_fail (error == NULL || *error == NULL, NULL);

  source = g_new0 (PmxTokenSource, 1);
  g_atomic_ref_count_init (&source->ref);
  g_mutex_init (&source->lock);
  g_cond_init (&source->cond);

  if (!source_configure (source, options, error) || !source_load_store (source, options, store_dir, error))
    {
      pmx_token_source_unref (source);
      return NULL;
    }

  g_mutex_lock (&registry_lock);
  if (registry == NULL)
    registry = g_ptr_array_new ();
  /* The same credential (same store file, same secret) already has a live
   * source — another transport naming a shared credential, or this one's
   * previous instance during a reload: use that one, so there is one
   * cache, one refresh at a time and one writer of the store.  A source
   * seeded with a new refresh token from the config stands alone. */
  if (source->store_path != NULL && !source->store_dirty)
    for (guint i = 0; i < registry->len; i++)
      {
        PmxTokenSource *live = registry->pdata[i];

        if (g_strcmp0 (live->store_path, source->store_path) == 0
            && g_strcmp0 (live->client_hash, source->client_hash) == 0)
          {
            g_atomic_ref_count_inc (&live->ref);
            g_mutex_unlock (&registry_lock);
            pmx_token_source_unref (source);
            return live;
          }
      }
  g_ptr_array_add (registry, source);
  g_mutex_unlock (&registry_lock);
  if (source->store_dirty)
    source_save_or_warn (source);
  return source;
}

PmxTokenSource *
pmx_token_source_ref (PmxTokenSource *source)
{
  g_return_val_if_fail (source != NULL, NULL);
  g_atomic_ref_count_inc (&source->ref);
  return source;
}

void
pmx_token_source_unref (PmxTokenSource *source)
{
  gboolean last;

  if (source == NULL)
    return;
  g_mutex_lock (&registry_lock);
  last = g_atomic_ref_count_dec (&source->ref);
  if (last && registry != NULL)
    g_ptr_array_remove (registry, source);
  g_mutex_unlock (&registry_lock);
  if (!last)
    return;
  g_free (source->name);
  g_free (source->authorize_endpoint);
  g_free (source->device_endpoint);
  g_free (source->client_hash);
  g_free (source->label);
  g_free (source->kind);
  g_free (source->grant);
  g_free (source->endpoint);
  g_free (source->client_id);
  pmx_secret_free (source->client_secret);
  g_free (source->scopes);
  g_free (source->subject);
  g_free (source->ca_file);
  g_free (source->store_path);
  g_free (source->seed_hash);
  EVP_PKEY_free (source->key);
  g_free (source->key_id);
  g_free (source->x5t);
  g_free (source->x5t_s256);
  pmx_secret_free (source->refresh_token);
  pmx_secret_free (source->access_token);
  g_free (source->granted_scopes);
  g_clear_error (&source->flight_error);
  g_free (source->last_error);
  g_mutex_clear (&source->lock);
  g_cond_clear (&source->cond);
  g_free (source);
}

/* ------------------------------------------------------------------ */
/* the token request                                                   */

/* form_add - append name=value, form-encoded; the escaped copy is wiped */
static void
form_add (GString *form, const char *name, const char *value)
{
  char *escaped = g_uri_escape_string (value, NULL, FALSE);

  if (form->len > 0)
    g_string_append_c (form, '&');
  g_string_append (form, name);
  g_string_append_c (form, '=');
  g_string_append (form, escaped);
  explicit_bzero (escaped, strlen (escaped));
  g_free (escaped);
}

/* source_sign_jwt - the client assertion or the service-account JWT */
static char *
source_sign_jwt (PmxTokenSource *source,
                 GError        **error)
{
  g_autoptr(JsonObject) header = json_object_new ();
  g_autoptr(JsonObject) claims = json_object_new ();
  gint64 now = oauth2_now ();

  json_object_set_string_member (header, "alg", "RS256");
  json_object_set_string_member (header, "typ", "JWT");
  if (source->service_account)
    {
      if (source->key_id != NULL)
        json_object_set_string_member (header, "kid", source->key_id);
      json_object_set_string_member (claims, "iss", source->client_id);
      if (source->scopes != NULL)
        json_object_set_string_member (claims, "scope", source->scopes);
      json_object_set_string_member (claims, "aud", source->endpoint);
      if (source->subject != NULL)
        json_object_set_string_member (claims, "sub", source->subject);
      json_object_set_int_member (claims, "iat", now);
      json_object_set_int_member (claims, "exp", now + OAUTH2_GOOGLE_JWT_LIFETIME);
    }
  else
    {
      g_autofree char *jti = g_uuid_string_random ();

      json_object_set_string_member (header, "x5t", source->x5t);
      json_object_set_string_member (header, "x5t#S256", source->x5t_s256);
      json_object_set_string_member (claims, "aud", source->endpoint);
      json_object_set_string_member (claims, "iss", source->client_id);
      json_object_set_string_member (claims, "sub", source->client_id);
      json_object_set_string_member (claims, "jti", jti);
      json_object_set_int_member (claims, "nbf", now);
      json_object_set_int_member (claims, "iat", now);
      json_object_set_int_member (claims, "exp", now + OAUTH2_ASSERTION_LIFETIME);
    }
  return pmx_oauth2_jwt_sign (header, claims, source->key, error);
}

/* source_build_form - the token request body for this source's grant */
static GString *
source_build_form (PmxTokenSource *source,
                   const char     *refresh_token,
                   GError        **error)
{
  GString *form = g_string_new (NULL);
  char *jwt = NULL;

  if (source->key != NULL)
    {
      jwt = source_sign_jwt (source, error);
      if (jwt == NULL)
        {
          g_string_free (form, TRUE);
          return NULL;
        }
    }
  if (source->service_account)
    {
      form_add (form, "grant_type", "urn:ietf:params:oauth:grant-type:jwt-bearer");
      form_add (form, "assertion", jwt);
    }
  else
    {
      form_add (form, "grant_type", source->grant);
      form_add (form, "client_id", source->client_id);
      if (refresh_token != NULL)
        form_add (form, "refresh_token", refresh_token);
      if (jwt != NULL)
        {
          form_add (form, "client_assertion_type", "urn:ietf:params:oauth:client-assertion-type:jwt-bearer");
          form_add (form, "client_assertion", jwt);
        }
      else if (source->client_secret != NULL)
        form_add (form, "client_secret", source->client_secret);
      if (source->scopes != NULL)
        form_add (form, "scope", source->scopes);
    }
  if (jwt != NULL)
    pmx_secret_free (jwt);
  return form;
}

/* source_request - one token request; the lock is NOT held */
static JsonObject *
source_request (PmxTokenSource *source,
                const char     *refresh_token,
                GCancellable   *cancellable,
                GError        **error)
{
  PmxOAuth2Request req = {
    .endpoint = source->endpoint,
    .label = source->label,
    .name = source->name,
    .kind = source->kind,
    .grant = source->grant,
    .service_account = source->service_account,
    .ca_file = source->ca_file,
    .connect_timeout_ms = source->connect_timeout_ms,
    .timeout_ms = source->timeout_ms,
  };
  GString *form;
  JsonObject *answer;

  form = source_build_form (source, refresh_token, error);
  if (form == NULL)
    return NULL;
  answer = pmx_oauth2_post_form (&req, form->str, cancellable, error);
  explicit_bzero (form->str, form->allocated_len);
  g_string_free (form, TRUE);
  return answer;
}

/* source_expires_in - the answer's lifetime in seconds */
static gint64
source_expires_in (JsonObject *answer)
{
  JsonNode *node = json_object_get_member (answer, "expires_in");
  gint64 value = OAUTH2_DEFAULT_EXPIRES_IN;

  if (node != NULL && JSON_NODE_HOLDS_VALUE (node))
    {
      GType type = json_node_get_value_type (node);

      if (type == G_TYPE_INT64 || type == G_TYPE_DOUBLE)
        value = (gint64) json_node_get_double (node);
      else if (type == G_TYPE_STRING)   /* some providers quote it */
        value = g_ascii_strtoll (json_node_get_string (node), NULL, 10);
    }
  return CLAMP (value, 1, 366 * 86400);
}

/* source_fresh_locked - the cached token may be handed out without a refresh */
static gboolean
source_fresh_locked (PmxTokenSource *source,
                     gint64          now)
{
  gint64 margin = source->margin;

  if (source->access_token == NULL)
    return FALSE;
  /* A token that lives shorter than the margin would be refreshed on every
   * call: refresh it half-way instead. */
  if (source->last_refresh > 0 && source->expires_at > source->last_refresh)
    margin = MIN (margin, (source->expires_at - source->last_refresh) / 2);
  return now < source->expires_at - margin;
}

/* source_land_locked - record a flight's answer; the caller holds the lock */
static void
source_land_locked (PmxTokenSource *source,
                    JsonObject     *answer,
                    GError         *flight_error)
{
  gint64 now = oauth2_now ();

  g_clear_error (&source->flight_error);
  if (answer != NULL)
    {
      const char *new_refresh = json_object_get_string_member_with_default (answer, "refresh_token", NULL);
      const char *scope = json_object_get_string_member_with_default (answer, "scope", NULL);
      gint64 expires_in = source_expires_in (answer);
      gboolean rotated = new_refresh != NULL && new_refresh[0] != '\0'
                         && g_strcmp0 (new_refresh, source->refresh_token) != 0;

      pmx_secret_free (source->access_token);
      source->access_token = g_strdup (json_object_get_string_member (answer, "access_token"));
      source->expires_at = now + expires_in;
      source->last_refresh = now;
      if (rotated)
        {
          pmx_secret_free (source->refresh_token);
          source->refresh_token = g_strdup (new_refresh);
        }
      if (scope != NULL)
        {
          g_free (source->granted_scopes);
          source->granted_scopes = g_strdup (scope);
        }
      source->needs_login = FALSE;
      g_clear_pointer (&source->last_error, g_free);
      /* Saved before anyone sees the new access token: after a crash the
       * store holds the rotated refresh token, never the spent one. */
      source_save_or_warn (source);
      g_info ("%s: new access token from %s, expires in %" G_GINT64_FORMAT " s%s",
              source->label, source->endpoint, expires_in, rotated ? ", refresh token rotated and saved" : "");
      return;
    }

  g_free (source->last_error);
  source->last_error = g_strdup (flight_error->message);
  source->last_error_code = flight_error->domain == PMX_OAUTH2_ERROR ? flight_error->code : PMX_OAUTH2_ERROR_FAILED;
  if (g_error_matches (flight_error, PMX_OAUTH2_ERROR, PMX_OAUTH2_ERROR_NEEDS_LOGIN))
    {
      /* The refresh token is dead: forget it, and the tokens it made. */
      source->needs_login = TRUE;
      g_clear_pointer (&source->refresh_token, pmx_secret_free);
      g_clear_pointer (&source->access_token, pmx_secret_free);
      source->expires_at = 0;
    }
  /* The error goes to the store too: `postmux auth status` reads it there. */
  if (!g_error_matches (flight_error, G_IO_ERROR, G_IO_ERROR_CANCELLED))
    source_save_or_warn (source);
  g_warning ("%s", flight_error->message);

  /* A refresh ahead of expiry that failed for a passing reason leaves the
   * cached token good until it expires: let callers keep using it. */
  if (g_error_matches (flight_error, PMX_OAUTH2_ERROR, PMX_OAUTH2_ERROR_TEMPORARY)
      && source->access_token != NULL && now < source->expires_at)
    return;
  if (!g_error_matches (flight_error, G_IO_ERROR, G_IO_ERROR_CANCELLED))
    source->flight_error = g_error_copy (flight_error);
}

/* source_reload_login_locked - a source that needs a login looks in its
 * store for one made by `postmux auth login` in another process; TRUE when
 * it found and adopted a new refresh token */
static gboolean
source_reload_login_locked (PmxTokenSource *source)
{
  PmxTokenStoreData data = { 0 };
  g_autoptr(GError) error = NULL;
  gboolean adopted = FALSE;

  if (source->store_path == NULL || !source->needs_login)
    return FALSE;
  if (!pmx_token_store_load (source->store_path, &data, &error))
    {
      g_debug ("%s", error->message);
      return FALSE;
    }
  if (data.refresh_token != NULL && !data.needs_login
      && g_strcmp0 (data.refresh_token, source->refresh_token) != 0)
    {
      pmx_secret_free (source->refresh_token);
      source->refresh_token = g_steal_pointer (&data.refresh_token);
      pmx_secret_free (source->access_token);
      source->access_token = NULL;
      source->expires_at = 0;
      if (data.access_token != NULL && g_strcmp0 (data.client_hash, source->client_hash) == 0)
        {
          source->access_token = g_steal_pointer (&data.access_token);
          source->expires_at = data.expires_at;
        }
      source->last_refresh = data.last_refresh;
      g_free (source->granted_scopes);
      source->granted_scopes = g_steal_pointer (&data.scopes);
      source->needs_login = FALSE;
      g_clear_pointer (&source->last_error, g_free);
      g_clear_error (&source->flight_error);
      g_message ("%s: found a new login in the token store; sending resumes", source->label);
      adopted = TRUE;
    }
  pmx_token_store_data_clear (&data);
  return adopted;
}

/* source_dup_usable_locked - the cached token if it has not expired */
static char *
source_dup_usable_locked (PmxTokenSource *source)
{
  if (source->access_token != NULL && oauth2_now () < source->expires_at)
    return g_strdup (source->access_token);
  return NULL;
}

char *
pmx_token_source_get_token (PmxTokenSource *source,
                            gboolean        force_refresh,
                            GCancellable   *cancellable,
                            GError        **error)
{
  g_autoptr(GMutexLocker) locker = NULL;
  char *token = NULL;

  g_return_val_if_fail (source != NULL, NULL);
  g_return_val_if_fail (error == NULL || *error == NULL, NULL);

  locker = g_mutex_locker_new (&source->lock);
  for (;;)
    {
      JsonObject *answer;
      GError *flight_error = NULL;
      char *refresh_token;

      if (g_cancellable_set_error_if_cancelled (cancellable, error))
        return NULL;

      if (source->refreshing)
        {
          guint64 awaited = source->flights_started;

          /* Join the flight in the air.  Wake up now and then to notice
           * cancellation: a GCond cannot wait on a GCancellable. */
          while (source->flights_landed < awaited && !g_cancellable_is_cancelled (cancellable))
            g_cond_wait_until (&source->cond, &source->lock, g_get_monotonic_time () + G_USEC_PER_SEC / 4);
          if (source->flights_landed < awaited)
            continue;  /* cancelled: reported at the top */
          if (source->flight_error != NULL)
            {
              g_propagate_error (error, g_error_copy (source->flight_error));
              return NULL;
            }
          token = source_dup_usable_locked (source);
          if (token != NULL)
            return token;
          continue;  /* the flier was cancelled: fly ourselves */
        }

      if (!force_refresh && source_fresh_locked (source, oauth2_now ()))
        return g_strdup (source->access_token);

      if (source->needs_login && g_str_equal (source->grant, GRANT_REFRESH_TOKEN)
          && !source_reload_login_locked (source))
        {
          g_set_error (error, PMX_OAUTH2_ERROR, PMX_OAUTH2_ERROR_NEEDS_LOGIN,
                       "%s: %s — run `postmux auth login %s`",
                       source->label,
                       source->last_error != NULL ? "the refresh token was refused" : "no refresh token is stored",
                       source->name != NULL ? source->name : "TRANSPORT");
          return NULL;
        }

      /* Become the flight. */
      source->refreshing = TRUE;
      source->flights_started++;
      refresh_token = g_str_equal (source->grant, GRANT_REFRESH_TOKEN) ? g_strdup (source->refresh_token) : NULL;
      g_mutex_unlock (&source->lock);

      answer = source_request (source, refresh_token, cancellable, &flight_error);
      pmx_secret_free (refresh_token);

      g_mutex_lock (&source->lock);
      source_land_locked (source, answer, flight_error);
      source->refreshing = FALSE;
      source->flights_landed = source->flights_started;
      g_cond_broadcast (&source->cond);
      if (answer != NULL)
        json_object_unref (answer);

      token = source_dup_usable_locked (source);
      if (flight_error != NULL && (token == NULL || force_refresh
                                   || g_error_matches (flight_error, G_IO_ERROR, G_IO_ERROR_CANCELLED)))
        {
          pmx_secret_free (token);
          g_propagate_error (error, flight_error);
          return NULL;
        }
      g_clear_error (&flight_error);
      if (token != NULL)
        return token;
      g_set_error (error, PMX_OAUTH2_ERROR, PMX_OAUTH2_ERROR_TEMPORARY,
                   "%s: the token endpoint issued a token that has already expired — check the system clock", source->label);
      return NULL;
    }
}

void
pmx_token_source_invalidate (PmxTokenSource *source,
                             const char     *token)
{
  g_autoptr(GMutexLocker) locker = NULL;

  g_return_if_fail (source != NULL);
  g_return_if_fail (token != NULL);

  locker = g_mutex_locker_new (&source->lock);
  if (source->access_token == NULL || !g_str_equal (source->access_token, token))
    return;
  g_clear_pointer (&source->access_token, pmx_secret_free);
  source->expires_at = 0;
  g_info ("%s: the cached access token was rejected: will refresh", source->label);
  source_save_or_warn (source);
}

gboolean
pmx_token_source_set_refresh_token (PmxTokenSource *source,
                                    const char     *refresh_token,
                                    GError        **error)
{
  g_autoptr(GMutexLocker) locker = NULL;

  g_return_val_if_fail (source != NULL, FALSE);
  g_return_val_if_fail (refresh_token != NULL && refresh_token[0] != '\0', FALSE);

  locker = g_mutex_locker_new (&source->lock);
  pmx_secret_free (source->refresh_token);
  source->refresh_token = g_strdup (refresh_token);
  g_clear_pointer (&source->access_token, pmx_secret_free);
  source->expires_at = 0;
  source->needs_login = FALSE;
  g_clear_pointer (&source->last_error, g_free);
  g_clear_error (&source->flight_error);
  return source_save_locked (source, error);
}

gboolean
pmx_token_source_forget (PmxTokenSource *source,
                         GError        **error)
{
  g_autoptr(GMutexLocker) locker = NULL;

  g_return_val_if_fail (source != NULL, FALSE);

  locker = g_mutex_locker_new (&source->lock);
  g_clear_pointer (&source->refresh_token, pmx_secret_free);
  g_clear_pointer (&source->access_token, pmx_secret_free);
  source->expires_at = 0;
  source->needs_login = g_str_equal (source->grant, GRANT_REFRESH_TOKEN);
  if (source->store_path != NULL && g_unlink (source->store_path) != 0 && errno != ENOENT)
    {
      int saved = errno;

      g_set_error (error, PMX_OAUTH2_ERROR, PMX_OAUTH2_ERROR_FAILED,
                   "%s: cannot remove the token store %s: %s", source->label, source->store_path, g_strerror (saved));
      return FALSE;
    }
  return TRUE;
}

void
pmx_token_source_get_status (PmxTokenSource *source,
                             PmxTokenStatus *out_status)
{
  g_autoptr(GMutexLocker) locker = NULL;

  g_return_if_fail (source != NULL);
  g_return_if_fail (out_status != NULL);

  locker = g_mutex_locker_new (&source->lock);
  source_reload_login_locked (source);
  memset (out_status, 0, sizeof *out_status);
  if (source->needs_login)
    out_status->state = PMX_TOKEN_STATE_NEEDS_LOGIN;
  else if (source->last_error != NULL)
    out_status->state = PMX_TOKEN_STATE_ERROR;
  else
    out_status->state = PMX_TOKEN_STATE_OK;
  out_status->kind = g_strdup (source->kind);
  out_status->grant = g_strdup (source->grant);
  out_status->scopes = g_strdup (source->granted_scopes != NULL ? source->granted_scopes : source->scopes);
  out_status->expires_at = source->access_token != NULL ? source->expires_at : 0;
  out_status->last_refresh = source->last_refresh;
  out_status->last_error = g_strdup (source->last_error);
  out_status->last_error_code = source->last_error_code;
  out_status->has_refresh_token = source->refresh_token != NULL;
  out_status->store_path = g_strdup (source->store_path);
}

void
pmx_token_status_clear (PmxTokenStatus *status)
{
  g_return_if_fail (status != NULL);
  g_clear_pointer (&status->kind, g_free);
  g_clear_pointer (&status->grant, g_free);
  g_clear_pointer (&status->scopes, g_free);
  g_clear_pointer (&status->last_error, g_free);
  g_clear_pointer (&status->store_path, g_free);
}

const char *
pmx_token_state_to_string (PmxTokenState state)
{
  switch (state)
    {
    case PMX_TOKEN_STATE_OK:
      return "ok";
    case PMX_TOKEN_STATE_NEEDS_LOGIN:
      return "needs_login";
    case PMX_TOKEN_STATE_ERROR:
    default:
      return "error";
    }
}

/* status_set_time - an ISO 8601 member, or null for 0 */
static void
status_set_time (JsonObject *object, const char *name, gint64 unix_time)
{
  g_autoptr(GDateTime) dt = unix_time > 0 ? g_date_time_new_from_unix_utc (unix_time) : NULL;

  g_autofree char *text = dt != NULL ? g_date_time_format_iso8601 (dt) : NULL;

  if (text != NULL)
    json_object_set_string_member (object, name, text);
  else
    json_object_set_null_member (object, name);
}

JsonObject *
pmx_token_status_to_json (const PmxTokenStatus *status)
{
  JsonObject *object = json_object_new ();

  g_return_val_if_fail (status != NULL, object);

  json_object_set_string_member (object, "state", pmx_token_state_to_string (status->state));
  json_object_set_string_member (object, "kind", status->kind);
  json_object_set_string_member (object, "grant", status->grant);
  if (status->scopes != NULL)
    json_object_set_string_member (object, "scopes", status->scopes);
  else
    json_object_set_null_member (object, "scopes");
  status_set_time (object, "expires_at", status->expires_at);
  status_set_time (object, "last_refresh", status->last_refresh);
  if (status->last_error != NULL)
    json_object_set_string_member (object, "last_error", status->last_error);
  else
    json_object_set_null_member (object, "last_error");
  json_object_set_boolean_member (object, "has_refresh_token", status->has_refresh_token);
  return object;
}

const char *
pmx_token_source_get_token_endpoint (PmxTokenSource *source)
{
  g_return_val_if_fail (source != NULL, NULL);
  return source->endpoint;
}

const char *
pmx_token_source_get_client_id (PmxTokenSource *source)
{
  g_return_val_if_fail (source != NULL, NULL);
  return source->client_id;
}

PmxTokenSource *
pmx_token_source_find (const char *name)
{
  PmxTokenSource *found = NULL;

  g_return_val_if_fail (name != NULL, NULL);

  g_mutex_lock (&registry_lock);
  /* Newest first: after a reload the new instance's source wins. */
  for (guint i = registry != NULL ? registry->len : 0; i > 0 && found == NULL; i--)
    {
      PmxTokenSource *source = registry->pdata[i - 1];

      if (g_strcmp0 (source->name, name) == 0)
        found = pmx_token_source_ref (source);
    }
  g_mutex_unlock (&registry_lock);
  return found;
}

GPtrArray *
pmx_token_source_list (void)
{
  GPtrArray *list = g_ptr_array_new_with_free_func ((GDestroyNotify) pmx_token_source_unref);

  g_mutex_lock (&registry_lock);
  for (guint i = registry != NULL ? registry->len : 0; i > 0; i--)
    {
      PmxTokenSource *source = registry->pdata[i - 1];
      gboolean seen = FALSE;

      for (guint j = 0; j < list->len && !seen; j++)
        seen = g_strcmp0 (((PmxTokenSource *) list->pdata[j])->name, source->name) == 0;
      if (!seen)
        g_ptr_array_add (list, pmx_token_source_ref (source));
    }
  g_mutex_unlock (&registry_lock);
  return list;
}

const char *
pmx_token_source_get_name (PmxTokenSource *source)
{
  g_return_val_if_fail (source != NULL, NULL);
  return source->name;
}

const char *
pmx_token_source_get_label (PmxTokenSource *source)
{
  return source->label;
}

const char *
pmx_token_source_get_kind (PmxTokenSource *source)
{
  return source->kind;
}

const char *
pmx_token_source_get_grant (PmxTokenSource *source)
{
  return source->grant;
}

const char *
pmx_token_source_get_scopes (PmxTokenSource *source)
{
  return source->scopes;
}

const char *
pmx_token_source_get_authorize_endpoint (PmxTokenSource *source)
{
  return source->authorize_endpoint;
}

const char *
pmx_token_source_get_device_endpoint (PmxTokenSource *source)
{
  return source->device_endpoint;
}

void
pmx_oauth2_form_add (GString *form, const char *name, const char *value)
{
  form_add (form, name, value);
}

/* source_request_for - a PmxOAuth2Request to @endpoint for @grant */
static PmxOAuth2Request
source_request_for (PmxTokenSource *source,
                    const char     *endpoint,
                    const char     *grant)
{
  PmxOAuth2Request req = {
    .endpoint = endpoint,
    .label = source->label,
    .name = source->name,
    .kind = source->kind,
    .grant = grant,
    .service_account = source->service_account,
    .ca_file = source->ca_file,
    .connect_timeout_ms = source->connect_timeout_ms,
    .timeout_ms = source->timeout_ms,
  };

  return req;
}

JsonObject *
pmx_token_source_post_raw (PmxTokenSource *source,
                           const char     *endpoint,
                           const char     *form,
                           GCancellable   *cancellable,
                           GError        **error)
{
  PmxOAuth2Request req = source_request_for (source, endpoint, "device_authorization");

  req.raw = TRUE;
  return pmx_oauth2_post_form (&req, form, cancellable, error);
}

gboolean
pmx_token_source_redeem (PmxTokenSource     *source,
                         const char         *grant_type,
                         const char *const  *fields,
                         char              **out_error_code,
                         GCancellable       *cancellable,
                         GError            **error)
{
  PmxOAuth2Request req = source_request_for (source, source->endpoint, grant_type);
  g_autoptr(GError) flight_error = NULL;
  GString *form = g_string_new (NULL);
  JsonObject *answer;
  char *jwt = NULL;
  gboolean ok;

  if (source->key != NULL && !source->service_account)
    {
      jwt = source_sign_jwt (source, error);
      if (jwt == NULL)
        {
          g_string_free (form, TRUE);
          return FALSE;
        }
    }
  form_add (form, "grant_type", grant_type);
  form_add (form, "client_id", source->client_id);
  for (guint i = 0; fields != NULL && fields[i] != NULL && fields[i + 1] != NULL; i += 2)
    form_add (form, fields[i], fields[i + 1]);
  if (jwt != NULL)
    {
      form_add (form, "client_assertion_type", "urn:ietf:params:oauth:client-assertion-type:jwt-bearer");
      form_add (form, "client_assertion", jwt);
      pmx_secret_free (jwt);
    }
  else if (source->client_secret != NULL)
    form_add (form, "client_secret", source->client_secret);
  if (source->scopes != NULL)
    form_add (form, "scope", source->scopes);

  req.out_error_code = out_error_code;
  answer = pmx_oauth2_post_form (&req, form->str, cancellable, &flight_error);
  explicit_bzero (form->str, form->allocated_len);
  g_string_free (form, TRUE);
  if (answer == NULL)
    {
      g_propagate_error (error, g_steal_pointer (&flight_error));
      return FALSE;
    }
  if (json_object_get_string_member_with_default (answer, "refresh_token", NULL) == NULL)
    {
      json_object_unref (answer);
      g_set_error (error, PMX_OAUTH2_ERROR, PMX_OAUTH2_ERROR_AUTH,
                   "%s: the login worked but %s issued no refresh token, so the gateway could not "
                   "renew access — ask for offline access (Microsoft: add the offline_access scope; "
                   "Google: the login asks with access_type=offline)", source->label, source->endpoint);
      return FALSE;
    }
  g_mutex_lock (&source->lock);
  /* The login replaces whatever refresh token was held. */
  g_clear_pointer (&source->refresh_token, pmx_secret_free);
  source_land_locked (source, answer, NULL);
  ok = !source->store_dirty;
  g_mutex_unlock (&source->lock);
  json_object_unref (answer);
  if (!ok)
    {
      g_set_error (error, PMX_OAUTH2_ERROR, PMX_OAUTH2_ERROR_FAILED,
                   "%s: the login worked but the token store %s could not be written — check the "
                   "state directory's permissions and log in again", source->label, source->store_path);
      return FALSE;
    }
  return TRUE;
}

PmxFailureClass
pmx_oauth2_error_get_failure (const GError *error)
{
  if (error == NULL || error->domain != PMX_OAUTH2_ERROR)
    return PMX_FAILURE_TEMPORARY;
  switch (error->code)
    {
    case PMX_OAUTH2_ERROR_AUTH:
    case PMX_OAUTH2_ERROR_CONFIG:
      return PMX_FAILURE_CONFIG;
    case PMX_OAUTH2_ERROR_NEEDS_LOGIN:
      return PMX_FAILURE_AUTH;
    default:
      return PMX_FAILURE_TEMPORARY;
    }
}

JsonObject *
pmx_oauth2_credential_copy (JsonObject *credential,
                            const char *default_name)
{
  JsonObject *o = json_object_new ();
  JsonObjectIter iter;
  const char *member;
  JsonNode *node;

  json_object_iter_init (&iter, credential);
  while (json_object_iter_next (&iter, &member, &node))
    json_object_set_member (o, member, json_node_copy (node));
  if (!json_object_has_member (o, "name") && default_name != NULL)
    json_object_set_string_member (o, "name", default_name);
  return o;
}

/* SPDX-License-Identifier: GPL-3.0-or-later */
/*
 * oauth2-idp.c - the test identity provider (see oauth2-idp.h).
 *
 * Runs a SoupServer on 127.0.0.1 (random port) in its own thread with its
 * own GMainContext, so a paused (hanging) request never stalls the test
 * nor other requests.  Every check a real provider makes on a token
 * request is made here: client secret, JWT signature against the
 * registered key, alg, x5t#S256, aud = the URL requested, iss/sub, exp
 * and lifetime, jti, scope, delegated subject, refresh token validity.
 * Error bodies follow Entra ID's and Google's shapes.
 */
#include "oauth2-idp.h"

#include <string.h>
#include <json-glib/json-glib.h>
#include <libsoup/soup.h>

typedef struct {
  char         *client_id;
  char         *secret;          /* secret client */
  X509         *cert;            /* cert client */
  char         *x5t_s256;
  EVP_PKEY     *key;             /* service account */
  char         *allowed_subject;
  char         *allowed_scopes;
  OAuth2IdpMode mode;
  guint         error_status;
  char         *error_body;
  guint         requests;
  char         *token_roles;     /* set: access tokens are JWT-shaped with these roles */
  char         *username;        /* introspection "username"; NULL: client_id */
} IdpClient;

/* An authorization code from /authorize, or a device code from /devicecode. */
typedef struct {
  char    *client_id;
  char    *redirect_uri;
  char    *challenge;
  char    *user_code;            /* device codes */
  gboolean approved;             /* device codes */
  gint64   expires;              /* unix seconds */
} IdpGrant;

struct _OAuth2Idp {
  GThread      *thread;
  GMainContext *context;
  GMainLoop    *loop;
  SoupServer   *server;
  char         *url;
  GPtrArray    *paused;          /* hanging messages, owned by the IdP thread */

  GMutex        lock;            /* protects everything below, and ready */
  GCond         ready_cond;
  gboolean      ready;
  GHashTable   *clients;         /* client_id -> IdpClient */
  GHashTable   *refresh_tokens;  /* token -> client_id (live ones) */
  GHashTable   *dead_refresh;    /* token -> client_id (rotated or revoked) */
  GHashTable   *access_tokens;   /* token -> client_id (live ones) */
  GHashTable   *grants;          /* access token -> GStrv {subject, scope} (JWT bearer grants) */
  GPtrArray    *issued;
  gint64        expires_in;
  guint         delay_ms;
  guint         requests;
  guint         replays;
  char         *last_refusal;
  GHashTable   *access_expiry;   /* token -> gint64 * unix expiry */
  GHashTable   *codes;           /* authorization code -> IdpGrant */
  GHashTable   *device_codes;    /* device code -> IdpGrant */
  guint         authorizations;  /* /authorize requests answered with a code */
  guint         introspections;
};

/* idp_grant_free - free an IdpGrant */
static void
idp_grant_free (gpointer data)
{
  IdpGrant *grant = data;

  g_free (grant->client_id);
  g_free (grant->redirect_uri);
  g_free (grant->challenge);
  g_free (grant->user_code);
  g_free (grant);
}

/* idp_client_free - free a client record */
static void
idp_client_free (gpointer data)
{
  IdpClient *client = data;

  g_free (client->client_id);
  g_free (client->secret);
  X509_free (client->cert);
  g_free (client->x5t_s256);
  EVP_PKEY_free (client->key);
  g_free (client->allowed_subject);
  g_free (client->allowed_scopes);
  g_free (client->error_body);
  g_free (client->token_roles);
  g_free (client->username);
  g_free (client);
}

/* idp_b64url - base64url without padding */
static char *
idp_b64url (const guint8 *data, gsize len)
{
  char *out = g_base64_encode (data, len);
  char *p;

  for (p = out; *p; p++)
    if (*p == '+')
      *p = '-';
    else if (*p == '/')
      *p = '_';
    else if (*p == '=')
      {
        *p = '\0';
        break;
      }
  return out;
}

/* idp_b64url_decode - decode base64url (padding optional) */
static guint8 *
idp_b64url_decode (const char *in, gsize len, gsize *out_len)
{
  GString *s = g_string_new_len (in, len);
  guint8 *out;
  gsize i;

  for (i = 0; i < s->len; i++)
    {
      if (s->str[i] == '-')
        s->str[i] = '+';
      else if (s->str[i] == '_')
        s->str[i] = '/';
      else if (!g_ascii_isalnum (s->str[i]))
        {
          g_string_free (s, TRUE);
          return NULL;
        }
    }
  while (s->len % 4 != 0)
    g_string_append_c (s, '=');
  out = g_base64_decode (s->str, out_len);
  g_string_free (s, TRUE);
  return out;
}

/* idp_random_token - 32 random bytes, base64url */
static char *
idp_random_token (void)
{
  guint8 bytes[32];
  gsize i;

  for (i = 0; i < sizeof bytes; i++)
    bytes[i] = (guint8) g_random_int_range (0, 256);
  return idp_b64url (bytes, sizeof bytes);
}

/* idp_parse_json_part - one decoded JWT part as an object (transfer full) */
static JsonObject *
idp_parse_json_part (const char *part, gsize len)
{
  g_autoptr(JsonParser) parser = json_parser_new ();
  g_autofree guint8 *raw = NULL;
  gsize raw_len = 0;
  JsonNode *root;

  raw = idp_b64url_decode (part, len, &raw_len);
  if (raw == NULL || !json_parser_load_from_data (parser, (const char *) raw, raw_len, NULL))
    return NULL;
  root = json_parser_get_root (parser);
  if (root == NULL || !JSON_NODE_HOLDS_OBJECT (root))
    return NULL;
  return json_object_ref (json_node_get_object (root));
}

/* idp_verify_jwt - split, verify the RS256 signature with @key, return
 * header and claims; the reason on failure */
static gboolean
idp_verify_jwt (const char  *jwt,
                EVP_PKEY    *key,
                JsonObject **out_header,
                JsonObject **out_claims,
                const char **out_reason)
{
  const char *dot1 = strchr (jwt, '.');
  const char *dot2 = dot1 != NULL ? strchr (dot1 + 1, '.') : NULL;
  g_autoptr(JsonObject) header = NULL;
  g_autoptr(JsonObject) claims = NULL;
  g_autofree guint8 *sig = NULL;
  gsize sig_len = 0;
  EVP_MD_CTX *ctx;
  int ok;

  if (dot1 == NULL || dot2 == NULL || strchr (dot2 + 1, '.') != NULL)
    {
      *out_reason = "not a compact JWS";
      return FALSE;
    }
  header = idp_parse_json_part (jwt, dot1 - jwt);
  claims = idp_parse_json_part (dot1 + 1, dot2 - dot1 - 1);
  sig = idp_b64url_decode (dot2 + 1, strlen (dot2 + 1), &sig_len);
  if (header == NULL || claims == NULL || sig == NULL)
    {
      *out_reason = "undecodable JWT";
      return FALSE;
    }
  if (g_strcmp0 (json_object_get_string_member_with_default (header, "alg", NULL), "RS256") != 0)
    {
      *out_reason = "alg is not RS256";
      return FALSE;
    }
  ctx = EVP_MD_CTX_new ();
  ok = EVP_DigestVerifyInit (ctx, NULL, EVP_sha256 (), NULL, key) == 1
       && EVP_DigestVerify (ctx, sig, sig_len, (const guint8 *) jwt, dot2 - jwt) == 1;
  EVP_MD_CTX_free (ctx);
  if (!ok)
    {
      *out_reason = "signature";
      return FALSE;
    }
  *out_header = g_steal_pointer (&header);
  *out_claims = g_steal_pointer (&claims);
  return TRUE;
}

/* idp_reply_json - set a JSON response */
static void
idp_reply_json (SoupServerMessage *msg, guint status, const char *body)
{
  soup_server_message_set_status (msg, status, NULL);
  soup_server_message_set_response (msg, "application/json", SOUP_MEMORY_COPY, body, strlen (body));
}

/* idp_refuse - an OAuth2 error answer; remembers the reason */
static void
idp_refuse (OAuth2Idp *idp, SoupServerMessage *msg, guint status, const char *error, const char *description)
{
  g_autoptr(JsonBuilder) builder = json_builder_new ();
  g_autoptr(JsonNode) root = NULL;
  g_autofree char *body = NULL;

  g_mutex_lock (&idp->lock);
  g_free (idp->last_refusal);
  idp->last_refusal = g_strdup_printf ("%s: %s", error, description);
  g_mutex_unlock (&idp->lock);

  json_builder_begin_object (builder);
  json_builder_set_member_name (builder, "error");
  json_builder_add_string_value (builder, error);
  json_builder_set_member_name (builder, "error_description");
  json_builder_add_string_value (builder, description);
  json_builder_end_object (builder);
  root = json_builder_get_root (builder);
  body = json_to_string (root, FALSE);
  idp_reply_json (msg, status, body);
}

/* idp_check_claim_times - exp in the future, lifetime within @max_lifetime */
static const char *
idp_check_claim_times (JsonObject *claims, gint64 max_lifetime)
{
  gint64 now = g_get_real_time () / G_USEC_PER_SEC;
  gint64 iat = json_object_get_int_member_with_default (claims, "iat", 0);
  gint64 exp = json_object_get_int_member_with_default (claims, "exp", 0);
  gint64 nbf = json_object_get_int_member_with_default (claims, "nbf", iat);

  if (exp == 0 || iat == 0)
    return "iat and exp are required";
  if (exp <= now)
    return "the JWT has expired";
  if (iat > now + 60 || nbf > now + 60)
    return "iat or nbf is in the future";
  if (exp - iat > max_lifetime)
    return "Token must be a short-lived token and in a reasonable timeframe. Check your iat and exp values";
  return NULL;
}

/* idp_scopes_allowed - every requested scope is in @allowed */
static gboolean
idp_scopes_allowed (const char *requested, const char *allowed)
{
  g_auto(GStrv) want = g_strsplit (requested != NULL ? requested : "", " ", -1);
  g_auto(GStrv) have = g_strsplit (allowed != NULL ? allowed : "", " ", -1);
  guint i;

  if (requested == NULL || requested[0] == '\0')
    return FALSE;
  for (i = 0; want[i] != NULL; i++)
    if (want[i][0] != '\0' && !g_strv_contains ((const char * const *) have, want[i]))
      return FALSE;
  return TRUE;
}

/* idp_find_client - the client, counting the request (lock held) */
static IdpClient *
idp_find_client_locked (OAuth2Idp *idp, const char *client_id)
{
  IdpClient *client = client_id != NULL ? g_hash_table_lookup (idp->clients, client_id) : NULL;

  if (client != NULL)
    client->requests++;
  return client;
}

/* idp_access_token - a random token, or a JWT-shaped one (unsigned:
 * "alg":"none") carrying the client's roles as an app-only Entra token
 * does, when oauth2_idp_set_token_roles() was called */
static char *
idp_access_token (OAuth2Idp *idp, const char *client_id)
{
  g_autofree char *roles = NULL;
  g_autoptr(JsonBuilder) builder = NULL;
  g_autoptr(JsonNode) root = NULL;
  g_autofree char *claims = NULL;
  g_autofree char *random = idp_random_token ();
  g_autofree char *header = NULL;
  g_autofree char *payload = NULL;
  g_auto(GStrv) names = NULL;
  IdpClient *client;

  g_mutex_lock (&idp->lock);
  client = client_id != NULL ? g_hash_table_lookup (idp->clients, client_id) : NULL;
  roles = client != NULL ? g_strdup (client->token_roles) : NULL;
  g_mutex_unlock (&idp->lock);
  if (roles == NULL)
    return g_steal_pointer (&random);

  builder = json_builder_new ();
  json_builder_begin_object (builder);
  json_builder_set_member_name (builder, "appid");
  json_builder_add_string_value (builder, client_id);
  json_builder_set_member_name (builder, "exp");
  json_builder_add_int_value (builder, g_get_real_time () / G_USEC_PER_SEC + 3600);
  json_builder_set_member_name (builder, "roles");
  json_builder_begin_array (builder);
  names = g_strsplit (roles, " ", -1);
  for (guint i = 0; names[i] != NULL; i++)
    if (names[i][0] != '\0')
      json_builder_add_string_value (builder, names[i]);
  json_builder_end_array (builder);
  json_builder_end_object (builder);
  root = json_builder_get_root (builder);
  claims = json_to_string (root, FALSE);
  header = idp_b64url ((const guint8 *) "{\"alg\":\"none\",\"typ\":\"JWT\"}", strlen ("{\"alg\":\"none\",\"typ\":\"JWT\"}"));
  payload = idp_b64url ((const guint8 *) claims, strlen (claims));
  return g_strdup_printf ("%s.%s.%s", header, payload, random);
}

/* idp_issue - answer with a new access token (and a rotated refresh token) */
static void
idp_issue (OAuth2Idp *idp, SoupServerMessage *msg, const char *client_id, const char *scope, gboolean with_refresh)
{
  g_autofree char *access = idp_access_token (idp, client_id);
  g_autofree char *refresh = with_refresh ? idp_random_token () : NULL;
  g_autoptr(JsonBuilder) builder = json_builder_new ();
  g_autoptr(JsonNode) root = NULL;
  g_autofree char *body = NULL;
  gint64 expires_in;

  g_mutex_lock (&idp->lock);
  g_hash_table_insert (idp->access_tokens, g_strdup (access), g_strdup (client_id));
  g_hash_table_insert (idp->access_expiry, g_strdup (access),
                       g_memdup2 (&(gint64) { g_get_real_time () / G_USEC_PER_SEC + idp->expires_in }, sizeof (gint64)));
  g_ptr_array_add (idp->issued, g_strdup (access));
  if (refresh != NULL)
    {
      g_hash_table_insert (idp->refresh_tokens, g_strdup (refresh), g_strdup (client_id));
      g_ptr_array_add (idp->issued, g_strdup (refresh));
    }
  expires_in = idp->expires_in;
  g_mutex_unlock (&idp->lock);

  json_builder_begin_object (builder);
  json_builder_set_member_name (builder, "token_type");
  json_builder_add_string_value (builder, "Bearer");
  json_builder_set_member_name (builder, "expires_in");
  json_builder_add_int_value (builder, expires_in);
  json_builder_set_member_name (builder, "access_token");
  json_builder_add_string_value (builder, access);
  if (refresh != NULL)
    {
      json_builder_set_member_name (builder, "refresh_token");
      json_builder_add_string_value (builder, refresh);
    }
  if (scope != NULL)
    {
      json_builder_set_member_name (builder, "scope");
      json_builder_add_string_value (builder, scope);
    }
  json_builder_end_object (builder);
  root = json_builder_get_root (builder);
  body = json_to_string (root, FALSE);
  idp_reply_json (msg, SOUP_STATUS_OK, body);
}

/* idp_record_grant - remember the subject and scope of the access token
 * idp_issue() has just issued (the last one: every request runs on the
 * IdP's one thread) */
static void
idp_record_grant (OAuth2Idp *idp, const char *subject, const char *scope)
{
  char **grant = g_new0 (char *, 3);

  grant[0] = g_strdup (subject != NULL ? subject : "");
  grant[1] = g_strdup (scope != NULL ? scope : "");
  g_mutex_lock (&idp->lock);
  g_hash_table_insert (idp->grants, g_strdup (idp->issued->pdata[idp->issued->len - 1]), grant);
  g_mutex_unlock (&idp->lock);
}

/* idp_service_account - the JWT bearer grant */
static void
idp_service_account (OAuth2Idp *idp, SoupServerMessage *msg, GHashTable *form, const char *url)
{
  const char *assertion = g_hash_table_lookup (form, "assertion");
  const char *dot = assertion != NULL ? strchr (assertion, '.') : NULL;
  g_autoptr(JsonObject) unverified = NULL;
  g_autoptr(JsonObject) header = NULL;
  g_autoptr(JsonObject) claims = NULL;
  const char *iss, *reason = NULL, *sub, *scope;
  EVP_PKEY *key = NULL;
  IdpClient *client;

  unverified = dot != NULL ? idp_parse_json_part (dot + 1, strcspn (dot + 1, ".")) : NULL;
  iss = unverified != NULL ? json_object_get_string_member_with_default (unverified, "iss", NULL) : NULL;
  g_mutex_lock (&idp->lock);
  client = idp_find_client_locked (idp, iss);
  if (client != NULL && client->key != NULL)
    key = EVP_PKEY_dup (client->key);
  g_mutex_unlock (&idp->lock);
  if (key == NULL)
    {
      idp_refuse (idp, msg, 400, "invalid_grant", "Invalid JWT: unknown issuer");
      return;
    }
  if (!idp_verify_jwt (assertion, key, &header, &claims, &reason))
    {
      EVP_PKEY_free (key);
      idp_refuse (idp, msg, 400, "invalid_grant",
                  g_str_equal (reason, "signature") ? "Invalid JWT Signature." : reason);
      return;
    }
  EVP_PKEY_free (key);
  if (g_strcmp0 (json_object_get_string_member_with_default (claims, "aud", NULL), url) != 0)
    {
      idp_refuse (idp, msg, 400, "invalid_grant", "Invalid JWT: aud is not the token endpoint");
      return;
    }
  if ((reason = idp_check_claim_times (claims, 3600)) != NULL)
    {
      idp_refuse (idp, msg, 400, "invalid_grant", reason);
      return;
    }
  sub = json_object_get_string_member_with_default (claims, "sub", NULL);
  scope = json_object_get_string_member_with_default (claims, "scope", NULL);
  if ((sub != NULL && g_strcmp0 (sub, client->allowed_subject) != 0) || !idp_scopes_allowed (scope, client->allowed_scopes))
    {
      idp_refuse (idp, msg, 401, "unauthorized_client",
                  "Client is unauthorized to retrieve access tokens using this method, or client not authorized for any of the scopes requested.");
      return;
    }
  idp_issue (idp, msg, iss, NULL, FALSE);
  idp_record_grant (idp, sub, scope);
}

/* idp_check_assertion - a client assertion for @client; NULL when good */
static const char *
idp_check_assertion (IdpClient *client, GHashTable *form, const char *url)
{
  const char *type = g_hash_table_lookup (form, "client_assertion_type");
  const char *jwt = g_hash_table_lookup (form, "client_assertion");
  g_autoptr(JsonObject) header = NULL;
  g_autoptr(JsonObject) claims = NULL;
  const char *reason = NULL;
  EVP_PKEY *key;
  gboolean ok;

  if (g_strcmp0 (type, "urn:ietf:params:oauth:client-assertion-type:jwt-bearer") != 0 || jwt == NULL)
    return "AADSTS700025: client_assertion_type is missing or wrong.";
  if (client->cert == NULL)
    return "AADSTS700027: No certificate registered for the application.";
  key = X509_get_pubkey (client->cert);
  ok = idp_verify_jwt (jwt, key, &header, &claims, &reason);
  EVP_PKEY_free (key);
  if (!ok)
    return "AADSTS700027: Client assertion contains an invalid signature.";
  if (g_strcmp0 (json_object_get_string_member_with_default (header, "x5t#S256", NULL), client->x5t_s256) != 0)
    return "AADSTS700027: The certificate with identifier x5t#S256 was not found registered on the application.";
  if (g_strcmp0 (json_object_get_string_member_with_default (claims, "aud", NULL), url) != 0)
    return "AADSTS700212: No matching federated identity record found for presented assertion audience.";
  if (g_strcmp0 (json_object_get_string_member_with_default (claims, "iss", NULL), client->client_id) != 0
      || g_strcmp0 (json_object_get_string_member_with_default (claims, "sub", NULL), client->client_id) != 0)
    return "AADSTS700021: Client assertion application identifier doesn't match 'client_id' parameter.";
  if (json_object_get_string_member_with_default (claims, "jti", NULL) == NULL)
    return "AADSTS700023: Client assertion has no jti.";
  if (idp_check_claim_times (claims, 3600) != NULL)
    return "AADSTS700024: Client assertion is not within its valid time range.";
  return NULL;
}

/* idp_token - POST .../token */
static void
idp_token (OAuth2Idp *idp, SoupServerMessage *msg, GHashTable *form, const char *url)
{
  const char *grant = g_hash_table_lookup (form, "grant_type");
  const char *client_id = g_hash_table_lookup (form, "client_id");
  const char *secret = g_hash_table_lookup (form, "client_secret");
  const char *scope = g_hash_table_lookup (form, "scope");
  IdpClient *client;
  const char *refusal = NULL;
  gboolean assertion = g_hash_table_contains (form, "client_assertion");

  g_mutex_lock (&idp->lock);
  client = idp_find_client_locked (idp, client_id);
  if (client == NULL)
    refusal = "AADSTS700016: Application with identifier was not found in the directory.";
  else if (assertion)
    refusal = idp_check_assertion (client, form, url);
  else if (client->secret == NULL || g_strcmp0 (secret, client->secret) != 0)
    refusal = "AADSTS7000215: Invalid client secret provided.";
  g_mutex_unlock (&idp->lock);
  if (refusal != NULL)
    {
      idp_refuse (idp, msg, 401, "invalid_client", refusal);
      return;
    }

  if (g_strcmp0 (grant, "client_credentials") == 0)
    {
      if (scope == NULL || !g_str_has_suffix (scope, "/.default"))
        {
          idp_refuse (idp, msg, 400, "invalid_scope", "AADSTS1002012: The provided value for scope is not valid.");
          return;
        }
      idp_issue (idp, msg, client_id, scope, FALSE);
      return;
    }
  if (g_strcmp0 (grant, "refresh_token") == 0)
    {
      const char *presented = g_hash_table_lookup (form, "refresh_token");
      gboolean live;

      g_mutex_lock (&idp->lock);
      live = presented != NULL && g_strcmp0 (g_hash_table_lookup (idp->refresh_tokens, presented), client_id) == 0;
      if (live)
        {
          /* Rotation: the presented token is spent. */
          g_hash_table_insert (idp->dead_refresh, g_strdup (presented), g_strdup (client_id));
          g_hash_table_remove (idp->refresh_tokens, presented);
        }
      else if (presented != NULL && g_hash_table_contains (idp->dead_refresh, presented))
        idp->replays++;
      g_mutex_unlock (&idp->lock);
      if (!live)
        {
          idp_refuse (idp, msg, 400, "invalid_grant",
                      "AADSTS70008: The provided authorization code or refresh token has expired due to inactivity.\r\nTrace ID: 0000\r\nCorrelation ID: 0000");
          return;
        }
      idp_issue (idp, msg, client_id, scope, TRUE);
      return;
    }
  if (g_strcmp0 (grant, "authorization_code") == 0)
    {
      const char *code = g_hash_table_lookup (form, "code");
      const char *verifier = g_hash_table_lookup (form, "code_verifier");
      const char *redirect_uri = g_hash_table_lookup (form, "redirect_uri");
      IdpGrant *record;
      const char *reason = NULL;

      g_mutex_lock (&idp->lock);
      record = code != NULL ? g_hash_table_lookup (idp->codes, code) : NULL;
      if (record == NULL)
        reason = "AADSTS70000: The provided authorization code is invalid or has been used.";
      else if (g_strcmp0 (record->client_id, client_id) != 0)
        reason = "AADSTS70000: The code was issued to another client.";
      else if (g_strcmp0 (record->redirect_uri, redirect_uri) != 0)
        reason = "AADSTS50148: The redirect_uri does not match the one of the authorization request.";
      else if (record->expires <= g_get_real_time () / G_USEC_PER_SEC)
        reason = "AADSTS54005: The authorization code has expired.";
      else
        {
          guint8 digest[32];
          gsize digest_len = sizeof digest;
          GChecksum *sum = g_checksum_new (G_CHECKSUM_SHA256);
          g_autofree char *expected = NULL;

          g_checksum_update (sum, (const guchar *) (verifier != NULL ? verifier : ""), -1);
          g_checksum_get_digest (sum, digest, &digest_len);
          g_checksum_free (sum);
          expected = idp_b64url (digest, digest_len);
          if (verifier == NULL || strlen (verifier) < 43 || g_strcmp0 (expected, record->challenge) != 0)
            reason = "AADSTS501481: The Code_Verifier does not match the code_challenge supplied in the authorization request.";
        }
      /* A code is good for one try, right or wrong (RFC 6749 §4.1.2). */
      if (record != NULL)
        g_hash_table_remove (idp->codes, code);
      g_mutex_unlock (&idp->lock);
      if (reason != NULL)
        {
          idp_refuse (idp, msg, 400, "invalid_grant", reason);
          return;
        }
      idp_issue (idp, msg, client_id, scope, TRUE);
      return;
    }
  if (g_strcmp0 (grant, "urn:ietf:params:oauth:grant-type:device_code") == 0)
    {
      const char *device_code = g_hash_table_lookup (form, "device_code");
      IdpGrant *record;
      const char *error = NULL;

      g_mutex_lock (&idp->lock);
      record = device_code != NULL ? g_hash_table_lookup (idp->device_codes, device_code) : NULL;
      if (record == NULL || g_strcmp0 (record->client_id, client_id) != 0)
        error = "bad_verification_code";
      else if (record->expires <= g_get_real_time () / G_USEC_PER_SEC)
        error = "expired_token";
      else if (!record->approved)
        error = "authorization_pending";
      else
        g_hash_table_remove (idp->device_codes, device_code);
      g_mutex_unlock (&idp->lock);
      if (error != NULL)
        {
          idp_refuse (idp, msg, 400, error, "AADSTS70016: OAuth 2.0 device flow error.");
          return;
        }
      idp_issue (idp, msg, client_id, scope, TRUE);
      return;
    }
  idp_refuse (idp, msg, 400, "unsupported_grant_type", "AADSTS70003: The app requested an unsupported grant type.");
}

/* idp_is_loopback_redirect - http://127.0.0.1:PORT/... or http://localhost:PORT/... */
static gboolean
idp_is_loopback_redirect (const char *redirect_uri)
{
  g_autoptr(GUri) uri = redirect_uri != NULL ? g_uri_parse (redirect_uri, G_URI_FLAGS_NONE, NULL) : NULL;

  return uri != NULL && g_strcmp0 (g_uri_get_scheme (uri), "http") == 0
         && (g_strcmp0 (g_uri_get_host (uri), "127.0.0.1") == 0 || g_strcmp0 (g_uri_get_host (uri), "localhost") == 0)
         && g_uri_get_port (uri) > 0 && g_uri_get_fragment (uri) == NULL;
}

/* idp_authorize - GET .../authorize: the user "signs in" at once (a test
 * IdP has no user); the redirect carries a one-time code bound to the
 * client, the redirect URI and the PKCE challenge */
static void
idp_authorize (OAuth2Idp *idp, SoupServerMessage *msg, GHashTable *query)
{
  const char *client_id = query != NULL ? g_hash_table_lookup (query, "client_id") : NULL;
  const char *redirect_uri = query != NULL ? g_hash_table_lookup (query, "redirect_uri") : NULL;
  const char *state = query != NULL ? g_hash_table_lookup (query, "state") : NULL;
  const char *challenge = query != NULL ? g_hash_table_lookup (query, "code_challenge") : NULL;
  const char *method = query != NULL ? g_hash_table_lookup (query, "code_challenge_method") : NULL;
  const char *response_type = query != NULL ? g_hash_table_lookup (query, "response_type") : NULL;
  g_autofree char *code = NULL;
  g_autofree char *location = NULL;
  g_autofree char *escaped_code = NULL;
  g_autofree char *escaped_state = NULL;
  const char *reason = NULL;
  gboolean known;

  g_mutex_lock (&idp->lock);
  known = client_id != NULL && g_hash_table_contains (idp->clients, client_id);
  g_mutex_unlock (&idp->lock);
  if (g_strcmp0 (soup_server_message_get_method (msg), "GET") != 0)
    reason = "GET the authorize endpoint";
  else if (!known)
    reason = "AADSTS700016: Application with identifier was not found in the directory.";
  else if (g_strcmp0 (response_type, "code") != 0)
    reason = "AADSTS900144: response_type must be code.";
  else if (!idp_is_loopback_redirect (redirect_uri))
    reason = "AADSTS50011: The redirect URI must be a loopback URL with a port (RFC 8252).";
  else if (state == NULL || strlen (state) < 16)
    reason = "state must be an unguessable value";
  else if (g_strcmp0 (method, "S256") != 0 || challenge == NULL || strlen (challenge) != 43)
    reason = "AADSTS9002325: Proof Key for Code Exchange (S256) is required.";
  if (reason != NULL)
    {
      /* Errors before the redirect URI is trusted are shown, not redirected. */
      idp_refuse (idp, msg, 400, "invalid_request", reason);
      return;
    }

  code = idp_random_token ();
  {
    IdpGrant *record = g_new0 (IdpGrant, 1);

    record->client_id = g_strdup (client_id);
    record->redirect_uri = g_strdup (redirect_uri);
    record->challenge = g_strdup (challenge);
    record->expires = g_get_real_time () / G_USEC_PER_SEC + 600;
    g_mutex_lock (&idp->lock);
    g_hash_table_insert (idp->codes, g_strdup (code), record);
    idp->authorizations++;
    g_mutex_unlock (&idp->lock);
  }
  escaped_code = g_uri_escape_string (code, NULL, FALSE);
  escaped_state = g_uri_escape_string (state, NULL, FALSE);
  location = g_strdup_printf ("%s%scode=%s&state=%s", redirect_uri, strchr (redirect_uri, '?') != NULL ? "&" : "?",
                              escaped_code, escaped_state);
  soup_server_message_set_redirect (msg, 302, location);
}

/* idp_devicecode - POST .../devicecode (RFC 8628 §3.1, Entra ID shape) */
static void
idp_devicecode (OAuth2Idp *idp, SoupServerMessage *msg, GHashTable *form)
{
  const char *client_id = g_hash_table_lookup (form, "client_id");
  g_autofree char *device_code = idp_random_token ();
  g_autofree char *user_code = g_strdup_printf ("%08X", g_random_int ());
  g_autofree char *verification_uri = g_strdup_printf ("%s/device", idp->url);
  g_autoptr(JsonBuilder) b = json_builder_new ();
  g_autoptr(JsonNode) root = NULL;
  g_autofree char *body = NULL;
  g_autofree char *message = NULL;
  IdpGrant *record;
  gboolean known;

  g_mutex_lock (&idp->lock);
  known = client_id != NULL && g_hash_table_contains (idp->clients, client_id);
  g_mutex_unlock (&idp->lock);
  if (!known)
    {
      idp_refuse (idp, msg, 400, "unauthorized_client", "AADSTS700016: Application with identifier was not found in the directory.");
      return;
    }
  record = g_new0 (IdpGrant, 1);
  record->client_id = g_strdup (client_id);
  record->user_code = g_strdup (user_code);
  record->expires = g_get_real_time () / G_USEC_PER_SEC + 900;
  g_mutex_lock (&idp->lock);
  g_hash_table_insert (idp->device_codes, g_strdup (device_code), record);
  g_mutex_unlock (&idp->lock);

  message = g_strdup_printf ("To sign in, use a web browser to open the page %s and enter the code %s to authenticate.",
                             verification_uri, user_code);
  json_builder_begin_object (b);
  json_builder_set_member_name (b, "device_code");
  json_builder_add_string_value (b, device_code);
  json_builder_set_member_name (b, "user_code");
  json_builder_add_string_value (b, user_code);
  json_builder_set_member_name (b, "verification_uri");
  json_builder_add_string_value (b, verification_uri);
  json_builder_set_member_name (b, "expires_in");
  json_builder_add_int_value (b, 900);
  json_builder_set_member_name (b, "interval");
  json_builder_add_int_value (b, 1);
  json_builder_set_member_name (b, "message");
  json_builder_add_string_value (b, message);
  json_builder_end_object (b);
  root = json_builder_get_root (b);
  body = json_to_string (root, FALSE);
  idp_reply_json (msg, SOUP_STATUS_OK, body);
}

/* idp_introspect - POST .../introspect (RFC 7662): what Dovecot's oauth2
 * passdb asks; "active" only for a live, unexpired access token */
static void
idp_introspect (OAuth2Idp *idp, SoupServerMessage *msg, GHashTable *form)
{
  const char *token = form != NULL ? g_hash_table_lookup (form, "token") : NULL;
  g_autoptr(JsonBuilder) b = json_builder_new ();
  g_autoptr(JsonNode) root = NULL;
  g_autofree char *body = NULL;
  const char *client_id = NULL;
  const char *username = NULL;
  gint64 exp = 0;

  g_mutex_lock (&idp->lock);
  idp->introspections++;
  if (token != NULL)
    client_id = g_hash_table_lookup (idp->access_tokens, token);
  if (client_id != NULL)
    {
      IdpClient *client = g_hash_table_lookup (idp->clients, client_id);
      gint64 *expiry = g_hash_table_lookup (idp->access_expiry, token);

      exp = expiry != NULL ? *expiry : 0;
      username = client != NULL && client->username != NULL ? client->username : client_id;
      if (exp <= g_get_real_time () / G_USEC_PER_SEC)
        client_id = NULL;
    }
  json_builder_begin_object (b);
  json_builder_set_member_name (b, "active");
  json_builder_add_boolean_value (b, client_id != NULL);
  if (client_id != NULL)
    {
      json_builder_set_member_name (b, "username");
      json_builder_add_string_value (b, username);
      json_builder_set_member_name (b, "client_id");
      json_builder_add_string_value (b, client_id);
      json_builder_set_member_name (b, "token_type");
      json_builder_add_string_value (b, "Bearer");
      json_builder_set_member_name (b, "exp");
      json_builder_add_int_value (b, exp);
    }
  json_builder_end_object (b);
  g_mutex_unlock (&idp->lock);
  root = json_builder_get_root (b);
  body = json_to_string (root, FALSE);
  idp_reply_json (msg, SOUP_STATUS_OK, body);
}

/* idp_mode_for - the mode of the client named in the request */
static OAuth2IdpMode
idp_mode_for (OAuth2Idp *idp, GHashTable *form, guint *out_status, char **out_body)
{
  const char *client_id = g_hash_table_lookup (form, "client_id");
  OAuth2IdpMode mode = OAUTH2_IDP_MODE_OK;
  IdpClient *client;

  if (client_id == NULL && g_hash_table_contains (form, "assertion"))
    {
      const char *assertion = g_hash_table_lookup (form, "assertion");
      const char *dot = strchr (assertion, '.');
      g_autoptr(JsonObject) claims = dot != NULL ? idp_parse_json_part (dot + 1, strcspn (dot + 1, ".")) : NULL;

      g_mutex_lock (&idp->lock);
      client = claims != NULL ? g_hash_table_lookup (idp->clients, json_object_get_string_member_with_default (claims, "iss", "")) : NULL;
      goto found;
    }
  g_mutex_lock (&idp->lock);
  client = client_id != NULL ? g_hash_table_lookup (idp->clients, client_id) : NULL;
found:
  if (client != NULL)
    {
      mode = client->mode;
      *out_status = client->error_status;
      *out_body = g_strdup (client->error_body);
      if (mode != OAUTH2_IDP_MODE_OK)
        client->requests++;
    }
  g_mutex_unlock (&idp->lock);
  return mode;
}

/* idp_resume - end a delay */
static gboolean
idp_resume (gpointer data)
{
  SoupServerMessage *msg = data;

  soup_server_message_unpause (msg);
  return G_SOURCE_REMOVE;
}

/* idp_handler - every request */
static void
idp_handler (SoupServer        *server,
             SoupServerMessage *msg,
             const char        *path,
             GHashTable        *query,
             gpointer           data)
{
  OAuth2Idp *idp = data;
  SoupMessageBody *request_body = soup_server_message_get_request_body (msg);
  g_autoptr(GHashTable) form = NULL;
  g_autofree char *url = NULL;
  g_autofree char *body_text = NULL;
  g_autofree char *error_body = NULL;
  GUri *uri = soup_server_message_get_uri (msg);
  const char *content_type;
  guint error_status = 0;
  guint delay;
  OAuth2IdpMode mode;

  /* Login and introspection endpoints are not token requests: they are
   * neither counted nor subject to a client's failure mode. */
  if (g_str_has_suffix (path, "/authorize"))
    {
      idp_authorize (idp, msg, query);
      return;
    }
  if (g_str_has_suffix (path, "/devicecode") || g_str_has_suffix (path, "/introspect"))
    {
      content_type = soup_message_headers_get_content_type (soup_server_message_get_request_headers (msg), NULL);
      if (g_strcmp0 (soup_server_message_get_method (msg), "POST") != 0
          || g_strcmp0 (content_type, "application/x-www-form-urlencoded") != 0)
        {
          idp_refuse (idp, msg, 400, "invalid_request", "POST application/x-www-form-urlencoded");
          return;
        }
      body_text = g_strndup (request_body->data, request_body->length);
      form = soup_form_decode (body_text);
      if (g_str_has_suffix (path, "/devicecode"))
        idp_devicecode (idp, msg, form);
      else
        idp_introspect (idp, msg, form);
      return;
    }

  g_mutex_lock (&idp->lock);
  idp->requests++;
  delay = idp->delay_ms;
  g_mutex_unlock (&idp->lock);

  content_type = soup_message_headers_get_content_type (soup_server_message_get_request_headers (msg), NULL);
  if (g_strcmp0 (soup_server_message_get_method (msg), "POST") != 0 || !g_str_has_suffix (path, "/token")
      || g_strcmp0 (content_type, "application/x-www-form-urlencoded") != 0)
    {
      idp_refuse (idp, msg, 400, "invalid_request", "POST application/x-www-form-urlencoded to .../token");
      return;
    }
  body_text = g_strndup (request_body->data, request_body->length);
  form = soup_form_decode (body_text);
  url = g_strdup_printf ("%s%s", idp->url, g_uri_get_path (uri));

  mode = idp_mode_for (idp, form, &error_status, &error_body);
  switch (mode)
    {
    case OAUTH2_IDP_MODE_FAIL_500:
      soup_server_message_set_status (msg, 500, NULL);
      soup_server_message_set_response (msg, "text/html", SOUP_MEMORY_STATIC, "<h1>oops</h1>", 13);
      return;
    case OAUTH2_IDP_MODE_HANG:
      soup_server_message_pause (msg);
      g_ptr_array_add (idp->paused, g_object_ref (msg));
      return;
    case OAUTH2_IDP_MODE_ERROR:
      idp_reply_json (msg, error_status, error_body);
      return;
    case OAUTH2_IDP_MODE_OK:
    default:
      break;
    }

  if (g_strcmp0 (g_hash_table_lookup (form, "grant_type"), "urn:ietf:params:oauth:grant-type:jwt-bearer") == 0)
    idp_service_account (idp, msg, form, url);
  else
    idp_token (idp, msg, form, url);

  if (delay > 0)
    {
      GSource *timeout = g_timeout_source_new (delay);

      soup_server_message_pause (msg);
      g_source_set_callback (timeout, idp_resume, g_object_ref (msg), g_object_unref);
      g_source_attach (timeout, idp->context);
      g_source_unref (timeout);
    }
}

/* idp_thread - the IdP's own main loop */
static gpointer
idp_thread (gpointer data)
{
  OAuth2Idp *idp = data;
  g_autoptr(GError) error = NULL;
  GSList *uris;
  guint i;

  g_main_context_push_thread_default (idp->context);
  idp->server = soup_server_new ("server-header", "postmux-test-idp", NULL);
  soup_server_add_handler (idp->server, NULL, idp_handler, idp, NULL);
  soup_server_listen_local (idp->server, 0, SOUP_SERVER_LISTEN_IPV4_ONLY, &error);
  g_assert_no_error (error);
  uris = soup_server_get_uris (idp->server);
  g_assert_nonnull (uris);

  g_mutex_lock (&idp->lock);
  idp->url = g_strdup_printf ("http://127.0.0.1:%d", g_uri_get_port (uris->data));
  idp->ready = TRUE;
  g_cond_broadcast (&idp->ready_cond);
  g_mutex_unlock (&idp->lock);
  g_slist_free_full (uris, (GDestroyNotify) g_uri_unref);

  g_main_loop_run (idp->loop);

  /* Let hanging requests go, then close everything. */
  for (i = 0; i < idp->paused->len; i++)
    {
      SoupServerMessage *msg = idp->paused->pdata[i];

      soup_server_message_set_status (msg, 503, NULL);
      soup_server_message_unpause (msg);
    }
  while (g_main_context_iteration (idp->context, FALSE))
    ;
  soup_server_disconnect (idp->server);
  while (g_main_context_iteration (idp->context, FALSE))
    ;
  g_ptr_array_set_size (idp->paused, 0);
  g_clear_object (&idp->server);
  while (g_main_context_iteration (idp->context, FALSE))
    ;
  g_main_context_pop_thread_default (idp->context);
  return NULL;
}

OAuth2Idp *
oauth2_idp_new (void)
{
  OAuth2Idp *idp = g_new0 (OAuth2Idp, 1);

  g_mutex_init (&idp->lock);
  g_cond_init (&idp->ready_cond);
  idp->clients = g_hash_table_new_full (g_str_hash, g_str_equal, NULL, idp_client_free);
  idp->refresh_tokens = g_hash_table_new_full (g_str_hash, g_str_equal, g_free, g_free);
  idp->dead_refresh = g_hash_table_new_full (g_str_hash, g_str_equal, g_free, g_free);
  idp->access_tokens = g_hash_table_new_full (g_str_hash, g_str_equal, g_free, g_free);
  idp->access_expiry = g_hash_table_new_full (g_str_hash, g_str_equal, g_free, g_free);
  idp->codes = g_hash_table_new_full (g_str_hash, g_str_equal, g_free, idp_grant_free);
  idp->device_codes = g_hash_table_new_full (g_str_hash, g_str_equal, g_free, idp_grant_free);
  idp->grants = g_hash_table_new_full (g_str_hash, g_str_equal, g_free, (GDestroyNotify) g_strfreev);
  idp->issued = g_ptr_array_new_with_free_func (g_free);
  idp->paused = g_ptr_array_new_with_free_func (g_object_unref);
  idp->expires_in = 3599;
  idp->context = g_main_context_new ();
  idp->loop = g_main_loop_new (idp->context, FALSE);
  idp->thread = g_thread_new ("test-idp", idp_thread, idp);

  g_mutex_lock (&idp->lock);
  while (!idp->ready)
    g_cond_wait (&idp->ready_cond, &idp->lock);
  g_mutex_unlock (&idp->lock);
  return idp;
}

/* idp_quit - stop the loop from inside its context */
static gboolean
idp_quit (gpointer data)
{
  OAuth2Idp *idp = data;

  g_main_loop_quit (idp->loop);
  return G_SOURCE_REMOVE;
}

void
oauth2_idp_free (OAuth2Idp *idp)
{
  g_main_context_invoke (idp->context, idp_quit, idp);
  g_thread_join (idp->thread);
  g_main_loop_unref (idp->loop);
  g_main_context_unref (idp->context);
  g_ptr_array_unref (idp->paused);
  g_hash_table_unref (idp->clients);
  g_hash_table_unref (idp->refresh_tokens);
  g_hash_table_unref (idp->dead_refresh);
  g_hash_table_unref (idp->access_tokens);
  g_hash_table_unref (idp->access_expiry);
  g_hash_table_unref (idp->codes);
  g_hash_table_unref (idp->device_codes);
  g_hash_table_unref (idp->grants);
  g_ptr_array_unref (idp->issued);
  g_free (idp->last_refusal);
  g_free (idp->url);
  g_mutex_clear (&idp->lock);
  g_cond_clear (&idp->ready_cond);
  g_free (idp);
}

const char *
oauth2_idp_get_url (OAuth2Idp *idp)
{
  return idp->url;
}

/* idp_add - register a client */
static IdpClient *
idp_add (OAuth2Idp *idp, const char *client_id)
{
  IdpClient *client = g_new0 (IdpClient, 1);

  client->client_id = g_strdup (client_id);
  g_mutex_lock (&idp->lock);
  g_hash_table_replace (idp->clients, client->client_id, client);
  g_mutex_unlock (&idp->lock);
  return client;
}

void
oauth2_idp_add_secret_client (OAuth2Idp *idp, const char *client_id, const char *secret)
{
  IdpClient *client = idp_add (idp, client_id);

  client->secret = g_strdup (secret);
}

void
oauth2_idp_add_cert_client (OAuth2Idp *idp, const char *client_id, X509 *cert)
{
  IdpClient *client = idp_add (idp, client_id);
  unsigned char *der = NULL;
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int md_len = 0;
  int der_len;

  X509_up_ref (cert);
  client->cert = cert;
  der_len = i2d_X509 (cert, &der);
  g_assert_cmpint (der_len, >, 0);
  g_assert_cmpint (EVP_Digest (der, der_len, md, &md_len, EVP_sha256 (), NULL), ==, 1);
  OPENSSL_free (der);
  client->x5t_s256 = idp_b64url (md, md_len);
}

void
oauth2_idp_add_service_account (OAuth2Idp *idp, const char *client_email, EVP_PKEY *key,
                                const char *allowed_subject, const char *allowed_scopes)
{
  IdpClient *client = idp_add (idp, client_email);

  EVP_PKEY_up_ref (key);
  client->key = key;
  client->allowed_subject = g_strdup (allowed_subject);
  client->allowed_scopes = g_strdup (allowed_scopes);
}

char *
oauth2_idp_issue_refresh_token (OAuth2Idp *idp, const char *client_id)
{
  char *token = idp_random_token ();

  g_mutex_lock (&idp->lock);
  g_hash_table_insert (idp->refresh_tokens, g_strdup (token), g_strdup (client_id));
  g_ptr_array_add (idp->issued, g_strdup (token));
  g_mutex_unlock (&idp->lock);
  return token;
}

/* idp_remove_client_tokens - drop @client_id's entries from @table */
static void
idp_remove_client_tokens (GHashTable *table, GHashTable *graveyard, const char *client_id)
{
  GHashTableIter iter;
  gpointer key, value;

  g_hash_table_iter_init (&iter, table);
  while (g_hash_table_iter_next (&iter, &key, &value))
    if (g_str_equal (value, client_id))
      {
        if (graveyard != NULL)
          g_hash_table_insert (graveyard, g_strdup (key), g_strdup (value));
        g_hash_table_iter_remove (&iter);
      }
}

void
oauth2_idp_revoke_refresh_tokens (OAuth2Idp *idp, const char *client_id)
{
  g_mutex_lock (&idp->lock);
  idp_remove_client_tokens (idp->refresh_tokens, idp->dead_refresh, client_id);
  g_mutex_unlock (&idp->lock);
}

void
oauth2_idp_revoke_access_token (OAuth2Idp *idp, const char *token)
{
  g_mutex_lock (&idp->lock);
  g_hash_table_remove (idp->access_tokens, token);
  g_mutex_unlock (&idp->lock);
}

void
oauth2_idp_set_mode (OAuth2Idp *idp, const char *client_id, OAuth2IdpMode mode)
{
  IdpClient *client;

  g_mutex_lock (&idp->lock);
  client = g_hash_table_lookup (idp->clients, client_id);
  g_assert_nonnull (client);
  client->mode = mode;
  g_mutex_unlock (&idp->lock);
}

void
oauth2_idp_set_error (OAuth2Idp *idp, const char *client_id, guint status, const char *json_body)
{
  IdpClient *client;

  g_mutex_lock (&idp->lock);
  client = g_hash_table_lookup (idp->clients, client_id);
  g_assert_nonnull (client);
  client->mode = OAUTH2_IDP_MODE_ERROR;
  client->error_status = status;
  g_free (client->error_body);
  client->error_body = g_strdup (json_body);
  g_mutex_unlock (&idp->lock);
}

void
oauth2_idp_set_token_roles (OAuth2Idp *idp, const char *client_id, const char *roles)
{
  IdpClient *client;

  g_mutex_lock (&idp->lock);
  client = g_hash_table_lookup (idp->clients, client_id);
  g_assert_nonnull (client);
  g_free (client->token_roles);
  client->token_roles = g_strdup (roles);
  g_mutex_unlock (&idp->lock);
}

void
oauth2_idp_set_expires_in (OAuth2Idp *idp, gint64 expires_in)
{
  g_mutex_lock (&idp->lock);
  idp->expires_in = expires_in;
  g_mutex_unlock (&idp->lock);
}

void
oauth2_idp_set_delay_ms (OAuth2Idp *idp, guint delay_ms)
{
  g_mutex_lock (&idp->lock);
  idp->delay_ms = delay_ms;
  g_mutex_unlock (&idp->lock);
}

guint
oauth2_idp_get_requests (OAuth2Idp *idp, const char *client_id)
{
  guint n;

  g_mutex_lock (&idp->lock);
  if (client_id == NULL)
    n = idp->requests;
  else
    {
      IdpClient *client = g_hash_table_lookup (idp->clients, client_id);

      n = client != NULL ? client->requests : 0;
    }
  g_mutex_unlock (&idp->lock);
  return n;
}

guint
oauth2_idp_get_replays (OAuth2Idp *idp)
{
  guint n;

  g_mutex_lock (&idp->lock);
  n = idp->replays;
  g_mutex_unlock (&idp->lock);
  return n;
}

gboolean
oauth2_idp_token_is_valid (OAuth2Idp *idp, const char *token)
{
  gboolean valid;

  g_mutex_lock (&idp->lock);
  valid = token != NULL && g_hash_table_contains (idp->access_tokens, token);
  g_mutex_unlock (&idp->lock);
  return valid;
}

GStrv
oauth2_idp_dup_issued (OAuth2Idp *idp)
{
  GStrv out;
  guint i;

  g_mutex_lock (&idp->lock);
  out = g_new0 (char *, idp->issued->len + 1);
  for (i = 0; i < idp->issued->len; i++)
    out[i] = g_strdup (idp->issued->pdata[i]);
  g_mutex_unlock (&idp->lock);
  return out;
}

char *
oauth2_idp_dup_last_refusal (OAuth2Idp *idp)
{
  char *reason;

  g_mutex_lock (&idp->lock);
  reason = g_strdup (idp->last_refusal);
  g_mutex_unlock (&idp->lock);
  return reason;
}

void
oauth2_idp_set_username (OAuth2Idp *idp, const char *client_id, const char *username)
{
  IdpClient *client;

  g_mutex_lock (&idp->lock);
  client = g_hash_table_lookup (idp->clients, client_id);
  g_assert_nonnull (client);
  g_free (client->username);
  client->username = g_strdup (username);
  g_mutex_unlock (&idp->lock);
}

void
oauth2_idp_revoke_access_tokens (OAuth2Idp *idp, const char *client_id)
{
  g_mutex_lock (&idp->lock);
  idp_remove_client_tokens (idp->access_tokens, NULL, client_id);
  g_mutex_unlock (&idp->lock);
}

gboolean
oauth2_idp_approve_device (OAuth2Idp *idp, const char *user_code)
{
  GHashTableIter iter;
  gpointer value;
  gboolean found = FALSE;

  g_mutex_lock (&idp->lock);
  g_hash_table_iter_init (&iter, idp->device_codes);
  while (g_hash_table_iter_next (&iter, NULL, &value))
    if (g_strcmp0 (((IdpGrant *) value)->user_code, user_code) == 0)
      {
        ((IdpGrant *) value)->approved = TRUE;
        found = TRUE;
      }
  g_mutex_unlock (&idp->lock);
  return found;
}

guint
oauth2_idp_get_authorizations (OAuth2Idp *idp)
{
  guint n;

  g_mutex_lock (&idp->lock);
  n = idp->authorizations;
  g_mutex_unlock (&idp->lock);
  return n;
}

guint
oauth2_idp_get_introspections (OAuth2Idp *idp)
{
  guint n;

  g_mutex_lock (&idp->lock);
  n = idp->introspections;
  g_mutex_unlock (&idp->lock);
  return n;
}

gboolean
oauth2_idp_dup_token_grant (OAuth2Idp *idp, const char *token, char **out_client_id,
                            char **out_subject, char **out_scope)
{
  const char *client_id;
  char **grant;

  g_mutex_lock (&idp->lock);
  client_id = token != NULL ? g_hash_table_lookup (idp->access_tokens, token) : NULL;
  grant = client_id != NULL ? g_hash_table_lookup (idp->grants, token) : NULL;
  if (out_client_id != NULL)
    *out_client_id = g_strdup (client_id);
  if (out_subject != NULL)
    *out_subject = grant != NULL && grant[0][0] != '\0' ? g_strdup (grant[0]) : NULL;
  if (out_scope != NULL)
    *out_scope = grant != NULL && grant[1][0] != '\0' ? g_strdup (grant[1]) : NULL;
  g_mutex_unlock (&idp->lock);
  return client_id != NULL;
}

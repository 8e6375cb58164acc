/* SPDX-License-Identifier: GPL-3.0-or-later */
/*
 * oauth2-idp.h - a test identity provider on loopback (libsoup 3, its own
 * thread and GMainContext) that really checks client secrets, client
 * assertion and service-account JWT signatures, audiences, expiry,
 * subjects and scopes; issues random tokens; rotates and revokes refresh
 * tokens; can be told to fail, hang or delay; counts requests.
 */
#pragma once

#include <glib.h>
#include <openssl/evp.h>
#include <openssl/x509.h>

G_BEGIN_DECLS

typedef struct _OAuth2Idp OAuth2Idp;

typedef enum {
  OAUTH2_IDP_MODE_OK,
  OAUTH2_IDP_MODE_FAIL_500,   /* HTTP 500, text body */
  OAUTH2_IDP_MODE_HANG,       /* never answer (until the IdP is freed) */
  OAUTH2_IDP_MODE_ERROR,      /* the status and JSON body set with _set_error */
} OAuth2IdpMode;

OAuth2Idp  *oauth2_idp_new              (void);
void        oauth2_idp_free             (OAuth2Idp  *idp);
/* "http://127.0.0.1:PORT" */
const char *oauth2_idp_get_url          (OAuth2Idp  *idp);

/* Clients.  A secret client authenticates with client_secret; a cert
 * client with an RS256 client assertion (x5t#S256 must match @cert); a
 * service account with a JWT bearer assertion signed by @key's private
 * half (only the public half is used), for @allowed_subject (NULL: no
 * delegation) and scopes in @allowed_scopes (space-separated). */
void  oauth2_idp_add_secret_client   (OAuth2Idp *idp, const char *client_id, const char *secret);
void  oauth2_idp_add_cert_client     (OAuth2Idp *idp, const char *client_id, X509 *cert);
void  oauth2_idp_add_service_account (OAuth2Idp *idp, const char *client_email, EVP_PKEY *key,
                                      const char *allowed_subject, const char *allowed_scopes);

/* A refresh token for @client_id, as an interactive login would give. */
char *oauth2_idp_issue_refresh_token (OAuth2Idp *idp, const char *client_id);
/* Revoke every refresh token of @client_id. */
void  oauth2_idp_revoke_refresh_tokens (OAuth2Idp *idp, const char *client_id);
/* Revoke one access token. */
void  oauth2_idp_revoke_access_token (OAuth2Idp *idp, const char *token);

void  oauth2_idp_set_mode       (OAuth2Idp *idp, const char *client_id, OAuth2IdpMode mode);
void  oauth2_idp_set_error      (OAuth2Idp *idp, const char *client_id, guint status, const char *json_body);
void  oauth2_idp_set_expires_in (OAuth2Idp *idp, gint64 expires_in);
/* From now on @client_id's access tokens are JWT-shaped (header.claims.
 * random, "alg":"none") with "roles" = @roles (space-separated), like an
 * app-only Entra ID token; NULL goes back to opaque random tokens. */
void  oauth2_idp_set_token_roles (OAuth2Idp *idp, const char *client_id, const char *roles);
void  oauth2_idp_set_delay_ms   (OAuth2Idp *idp, guint delay_ms);

/* Requests for @client_id (NULL: all, including unknown clients). */
guint oauth2_idp_get_requests     (OAuth2Idp *idp, const char *client_id);
/* Requests that presented a refresh token already rotated or revoked. */
guint oauth2_idp_get_replays      (OAuth2Idp *idp);
/* Whether @token is a live access token this IdP issued. */
gboolean oauth2_idp_token_is_valid (OAuth2Idp *idp, const char *token);
/* Whether @token is a live access token, and for whom: the client (or
 * service account) it was issued to and, for a service-account JWT grant,
 * the delegated subject (NULL without delegation) and the scope asked
 * for.  Outputs are (transfer full) and may be NULL pointers to skip. */
gboolean oauth2_idp_dup_token_grant (OAuth2Idp *idp, const char *token, char **out_client_id,
                                     char **out_subject, char **out_scope);
/* Every access and refresh token ever issued (transfer full). */
GStrv oauth2_idp_dup_issued       (OAuth2Idp *idp);
/* The reason of the last refused request, for test diagnostics. */
char *oauth2_idp_dup_last_refusal (OAuth2Idp *idp);

/* Interactive logins and token validation (for real SMTP servers):
 *   GET  /authorize   authorization code + PKCE (S256), loopback redirect
 *                     only; signs in at once and redirects with a one-time
 *                     code bound to client, redirect URI and challenge
 *   POST /token       grant_type=authorization_code (checks the verifier)
 *                     and urn:ietf:params:oauth:grant-type:device_code
 *   POST /devicecode  RFC 8628 device authorization (interval 1 s)
 *   POST /introspect  RFC 7662: {"active":true,"username",...} for a live,
 *                     unexpired access token, else {"active":false}
 * None of these count as token requests. */
/* The introspection "username" of @client_id's tokens (default: client_id). */
void  oauth2_idp_set_username          (OAuth2Idp *idp, const char *client_id, const char *username);
/* Revoke every access token of @client_id. */
void  oauth2_idp_revoke_access_tokens  (OAuth2Idp *idp, const char *client_id);
/* The user signs in for the device code @user_code; FALSE when unknown. */
gboolean oauth2_idp_approve_device     (OAuth2Idp *idp, const char *user_code);
guint oauth2_idp_get_authorizations    (OAuth2Idp *idp);
guint oauth2_idp_get_introspections    (OAuth2Idp *idp);

G_END_DECLS

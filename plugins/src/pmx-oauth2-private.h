/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * pmx-oauth2-private.h - the pieces behind PmxTokenSource: JWT signing,
 * the token endpoint request, the token store.  Never installed.
 */
#pragma once

#ifndef PMX_COMPILATION
#define PMX_COMPILATION
#endif
#include <postmux/postmux.h>

#include <openssl/evp.h>

G_BEGIN_DECLS

/* pmx-oauth2-jwt.c */
char     *pmx_oauth2_base64url        (const guint8 *data,
                                       gsize         len);
EVP_PKEY *pmx_oauth2_load_private_key (const char   *pem,
                                       const char   *what,
                                       GError      **error);
gboolean  pmx_oauth2_load_certificate (const char   *path,
                                       EVP_PKEY     *key,
                                       char        **out_x5t,
                                       char        **out_x5t_s256,
                                       GError      **error);
char     *pmx_oauth2_jwt_sign         (JsonObject   *header,
                                       JsonObject   *claims,
                                       EVP_PKEY     *key,
                                       GError      **error);

/* pmx-oauth2-http.c */
typedef struct {
  const char *endpoint;
  const char *label;            /* "credential 'o365'" for messages */
  const char *name;             /* the credential name for `postmux auth login NAME`, or NULL */
  const char *kind;             /* generic, microsoft, google */
  const char *grant;            /* grant_type short name */
  gboolean    service_account;  /* google JWT bearer */
  const char *ca_file;
  guint       connect_timeout_ms;
  guint       timeout_ms;
  gboolean    raw;              /* return any 200 JSON object (device authorization) */
  char      **out_error_code;   /* nullable: the provider's "error" code on refusal */
} PmxOAuth2Request;

gboolean    pmx_oauth2_check_endpoint (const char             *url,
                                       GError                **error);
JsonObject *pmx_oauth2_post_form      (const PmxOAuth2Request *req,
                                       const char             *form,
                                       GCancellable           *cancellable,
                                       GError                **error);
GError     *pmx_oauth2_error_from_response (const PmxOAuth2Request *req,
                                            long                    http_status,
                                            JsonObject             *body);

/* pmx-oauth2.c, for pmx-oauth2-login.c: one token request of @grant_type
 * with @fields (name, value, ..., NULL) plus the client authentication and
 * scope, whose answer is recorded like a refresh (refresh token stored). */
G_GNUC_INTERNAL gboolean    pmx_token_source_redeem            (PmxTokenSource     *source,
                                                const char         *grant_type,
                                                const char *const  *fields,
                                                char              **out_error_code,
                                                GCancellable       *cancellable,
                                                GError            **error);
/* A POST of @form to @endpoint answered by any JSON object (transfer full). */
G_GNUC_INTERNAL JsonObject *pmx_token_source_post_raw          (PmxTokenSource     *source,
                                                const char         *endpoint,
                                                const char         *form,
                                                GCancellable       *cancellable,
                                                GError            **error);
G_GNUC_INTERNAL const char *pmx_token_source_get_label         (PmxTokenSource     *source);
G_GNUC_INTERNAL const char *pmx_token_source_get_kind          (PmxTokenSource     *source);
G_GNUC_INTERNAL const char *pmx_token_source_get_grant         (PmxTokenSource     *source);
G_GNUC_INTERNAL const char *pmx_token_source_get_scopes        (PmxTokenSource     *source);
G_GNUC_INTERNAL const char *pmx_token_source_get_authorize_endpoint (PmxTokenSource *source);
G_GNUC_INTERNAL const char *pmx_token_source_get_device_endpoint    (PmxTokenSource *source);
G_GNUC_INTERNAL void        pmx_oauth2_form_add                (GString            *form,
                                                const char         *name,
                                                const char         *value);

/* pmx-token-store.c */
typedef struct {
  char  *refresh_token;
  char  *access_token;
  gint64 expires_at;
  gint64 last_refresh;
  char  *scopes;
  char  *seed_hash;      /* hash of the configured refresh token it replaced */
  char  *client_hash;    /* hash of the client authentication the access token came with */
  gboolean needs_login;
  char  *last_error;     /* the last refresh error's message (never holds a token) */
  int    last_error_code;
} PmxTokenStoreData;

gboolean pmx_token_store_load       (const char        *path,
                                     PmxTokenStoreData *out_data,
                                     GError           **error);
gboolean pmx_token_store_save       (const char              *path,
                                     const PmxTokenStoreData *data,
                                     GError                 **error);
void     pmx_token_store_data_clear (PmxTokenStoreData *data);

G_END_DECLS

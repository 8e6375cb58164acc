/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * postmux-oauth2.h - OAuth2 token sources for transports: one
 * #PmxTokenSource per credential hands out access tokens to delivery
 * worker threads.
 *
 * A source is made from a credential description (a JSON object, usually
 * a transport's "auth" options block):
 *
 *   common:     "kind": "generic" | "microsoft" | "google"
 *               "name": label used in messages (the transport or credential name)
 *               "scopes": "a b" or ["a", "b"]
 *               "grant": "client_credentials" | "refresh_token" | "jwt_bearer"
 *                        (default: refresh_token when a refresh token is
 *                        configured or stored, else the kind's app-only grant)
 *               "refresh_token": secret reference seeding the store (optional)
 *               "refresh_margin": seconds before expiry to refresh (default 300)
 *               "connect_timeout", "timeout": seconds (default 10 and 30)
 *               "ca_file": PEM file of extra trusted CAs for the token endpoint
 *               "authorization_endpoint", "device_authorization_endpoint":
 *                        for `postmux auth login` (microsoft and google have
 *                        defaults; microsoft's sit beside its token endpoint)
 *   generic:    "token_endpoint", "client_id", and "client_secret" or
 *               "certificate" + "private_key" (a client assertion, as microsoft)
 *   microsoft:  "tenant", "client_id", "client_secret" or "certificate" (path
 *               to a PEM certificate) + "private_key" (secret reference to the
 *               PEM key); "authority" (default https://login.microsoftonline.com,
 *               for national clouds). Endpoint {authority}/{tenant}/oauth2/v2.0/token.
 *               The client assertion is an RS256 JWT with "x5t#S256" (and "x5t").
 *   google:     "service_account_file" (absolute path to the JSON key; the
 *               endpoint is its token_uri) and optional "subject" for
 *               domain-wide delegation -> JWT bearer grant; or "client_id" +
 *               "client_secret" + "refresh_token" (installed app).
 *               "token_endpoint" overrides https://oauth2.googleapis.com/token.
 *
 * Every secret option takes a secret reference ("env:NAME", "file:/path")
 * resolved with pmx_secret_resolve(); secrets and tokens are wiped from
 * memory when freed and never appear in an error message or a log line.
 *
 * Token endpoints must be https://, except on a loopback address (tests).
 *
 * The token store: with a @store_dir, each source keeps one JSON file there
 * (mode 0600, replaced atomically and durably) named after the credential's
 * name and identity (name, kind, endpoint, client id, subject, scopes,
 * grant), holding the current refresh token, the cached access token with
 * its expiry and a hash of the client authentication it was issued to (a
 * changed secret or key drops the cached access token, never the refresh
 * token), and the last error.  A rotated refresh token is written before
 * the access token that came with it is handed out, so a restart never uses
 * a spent refresh token.
 *
 * Sharing the store between processes: `postmux auth login` (another
 * process) writes a new refresh token into the same file; a source in the
 * needs-login state re-reads its file before each token request and before
 * each status snapshot, and adopts the new login.
 */
#pragma once

#if !defined(__PMX_H_INSIDE__) && !defined(PMX_COMPILATION)
#error "Only <postmux/postmux.h> can be included directly."
#endif

#include <gio/gio.h>
#include <json-glib/json-glib.h>
#include <postmux/postmux-result.h>

G_BEGIN_DECLS

#define PMX_OAUTH2_ERROR (pmx_oauth2_error_quark ())

/**
 * PmxOAuth2Error:
 * @PMX_OAUTH2_ERROR_FAILED: anything else.
 * @PMX_OAUTH2_ERROR_CONFIG: the credential description is wrong (missing
 *   option, unreadable key, key and certificate do not match); found at
 *   creation.
 * @PMX_OAUTH2_ERROR_TEMPORARY: the token endpoint was unreachable, timed
 *   out, answered 5xx/429 or something that is not a token: defer and retry.
 * @PMX_OAUTH2_ERROR_AUTH: the provider refused the credential
 *   (invalid_client, unauthorized_client, invalid_scope, a bad JWT...): the
 *   configuration or the provider's app registration needs fixing.  The
 *   message carries the provider's code and the fix.
 * @PMX_OAUTH2_ERROR_NEEDS_LOGIN: the refresh token was revoked or expired,
 *   or the provider wants user interaction: run `postmux auth login`.
 *   Messages should wait in the queue.
 *
 * Cancellation is reported as %G_IO_ERROR_CANCELLED.
 */
typedef enum {
  PMX_OAUTH2_ERROR_FAILED,
  PMX_OAUTH2_ERROR_CONFIG,
  PMX_OAUTH2_ERROR_TEMPORARY,
  PMX_OAUTH2_ERROR_AUTH,
  PMX_OAUTH2_ERROR_NEEDS_LOGIN,
} PmxOAuth2Error;

GQuark pmx_oauth2_error_quark (void);

/* How a transport classes a failure to get a token (any domain): AUTH and
 * CONFIG errors are CONFIG (the app registration or options need fixing),
 * NEEDS_LOGIN is AUTH (messages wait for `postmux auth login`), anything
 * else TEMPORARY.  The error's message already names the fix. */
PmxFailureClass pmx_oauth2_error_get_failure (const GError *error);

/* A copy of a transport's "credential" option for pmx_token_source_new(),
 * named @default_name when it has no "name" (transfer full).  Transports
 * add their default scopes and other members to the copy. */
JsonObject *pmx_oauth2_credential_copy (JsonObject *credential,
                                        const char *default_name);

typedef enum {
  PMX_TOKEN_STATE_OK,           /* a token was obtained, or none asked for yet */
  PMX_TOKEN_STATE_NEEDS_LOGIN,  /* see PMX_OAUTH2_ERROR_NEEDS_LOGIN */
  PMX_TOKEN_STATE_ERROR,        /* the last refresh failed (TEMPORARY or AUTH) */
} PmxTokenState;

/**
 * PmxTokenStatus:
 * @state: see #PmxTokenState.
 * @kind: "generic", "microsoft" or "google".
 * @grant: the grant used to get tokens ("client_credentials", ...).
 * @scopes: space-separated scopes asked for (or granted, when the provider
 *   said).
 * @expires_at: unix time the cached access token expires, 0 when none.
 * @last_refresh: unix time of the last successful refresh, 0 when never.
 * @last_error: the last refresh error's message, NULL after a success.
 * @last_error_code: its #PmxOAuth2Error code (meaningless without @last_error).
 * @has_refresh_token: a refresh token is held.
 * @store_path: the token store file, NULL without a store.
 *
 * Filled by pmx_token_source_get_status(); the strings belong to the
 * struct, release them with pmx_token_status_clear().  Never holds a token.
 */
typedef struct {
  PmxTokenState state;
  char         *kind;
  char         *grant;
  char         *scopes;
  gint64        expires_at;
  gint64        last_refresh;
  char         *last_error;
  int           last_error_code;
  gboolean      has_refresh_token;
  char         *store_path;
} PmxTokenStatus;

typedef struct _PmxTokenSource PmxTokenSource;

/**
 * pmx_token_source_new:
 * @options: the credential description (see the top of this header);
 *   read during the call only.
 * @store_dir: (nullable): directory of the token store (created 0700 when
 *   missing), usually the transport's state directory; NULL keeps tokens in
 *   memory only.
 * @error: a %PMX_OAUTH2_ERROR_CONFIG (or secret) error naming the option.
 *
 * Checks the description, resolves the secrets, loads keys and the store.
 * Makes no network request.
 *
 * Returns: (transfer full): a new source, or NULL with @error set.
 */
PmxTokenSource *pmx_token_source_new   (JsonObject  *options,
                                        const char  *store_dir,
                                        GError     **error);
/* Thread-safe reference counting. */
PmxTokenSource *pmx_token_source_ref   (PmxTokenSource *source);
void            pmx_token_source_unref (PmxTokenSource *source);

/**
 * pmx_token_source_get_token:
 * @source: a source.
 * @force_refresh: ask the endpoint even when the cached token is fresh.
 *   Prefer pmx_token_source_invalidate() after a rejection: it does not
 *   cause a second request when several threads saw the same rejection.
 * @cancellable: (nullable): cancels the wait and the request.
 * @error: a %PMX_OAUTH2_ERROR or %G_IO_ERROR_CANCELLED.
 *
 * Blocking: for delivery worker threads, never for the main loop.  Returns
 * the cached access token while it is valid for more than the refresh
 * margin; otherwise one thread asks the token endpoint while any other
 * thread asking the same source waits for that one answer (token or error).
 * Separate sources never wait on each other.  When a refresh ahead of
 * expiry fails temporarily, the still-valid cached token is returned.
 * Never returns an empty or expired token.
 *
 * Returns: (transfer full): the access token (free it with
 *   pmx_secret_free()), or NULL with @error set.
 */
char *pmx_token_source_get_token  (PmxTokenSource *source,
                                   gboolean        force_refresh,
                                   GCancellable   *cancellable,
                                   GError        **error);

/**
 * pmx_token_source_invalidate:
 * @token: the token the server rejected.
 *
 * Drops the cached access token (in memory and in the store) if it is
 * still @token; a token already replaced by another thread's refresh is
 * left alone.  The next pmx_token_source_get_token() refreshes.
 */
void  pmx_token_source_invalidate (PmxTokenSource *source,
                                   const char     *token);

/**
 * pmx_token_source_set_refresh_token:
 * @refresh_token: a refresh token from an interactive login.
 *
 * Stores @refresh_token (written to the store before returning), drops the
 * cached access token and leaves the needs-login state.  For `postmux auth
 * login`.
 *
 * Returns: FALSE with @error set when the store could not be written.
 */
gboolean pmx_token_source_set_refresh_token (PmxTokenSource *source,
                                             const char     *refresh_token,
                                             GError        **error);

/**
 * pmx_token_source_forget:
 *
 * Forgets every token (memory and store file): `postmux auth logout`.
 * A refresh-token source then needs a login.
 *
 * Returns: FALSE with @error set when the store file could not be removed.
 */
gboolean pmx_token_source_forget (PmxTokenSource *source,
                                  GError        **error);

/**
 * pmx_token_source_get_status:
 * @out_status: (out caller-allocates): filled; clear with
 *   pmx_token_status_clear().
 *
 * A snapshot for `postmux auth status` and /v1/health.  No network.
 */
void        pmx_token_source_get_status (PmxTokenSource *source,
                                         PmxTokenStatus *out_status);
void        pmx_token_status_clear      (PmxTokenStatus *status);
/* Returns: (transfer full): @status as a JSON object (times in ISO 8601). */
JsonObject *pmx_token_status_to_json    (const PmxTokenStatus *status);
/* Returns: (transfer none): "ok", "needs_login" or "error". */
const char *pmx_token_state_to_string   (PmxTokenState state);

/* Returns: (transfer none): the token endpoint URL. */
const char *pmx_token_source_get_token_endpoint (PmxTokenSource *source);
/* Returns: (transfer none): the client id (client_email for a service account). */
const char *pmx_token_source_get_client_id      (PmxTokenSource *source);

/* Returns: (transfer none): the "name" option (transport or credential), or NULL. */
const char *pmx_token_source_get_name           (PmxTokenSource *source);

/**
 * pmx_token_source_find:
 * @name: a credential name (the "name" option, for a transport's own
 *   credential the transport instance name).
 *
 * Every source of the process is registered while it lives; the host uses
 * this to show and drive (`postmux auth`, /v1/health) the credentials its
 * transports created.
 *
 * Returns: (transfer full) (nullable): the newest live source named @name.
 */
PmxTokenSource *pmx_token_source_find (const char *name);
/* Returns: (transfer full): the newest live source of each name, as
 * references (the array frees them). */
GPtrArray      *pmx_token_source_list (void);

/* Interactive login (`postmux auth login`), for sources with the
 * refresh_token grant.  Blocking; for the command line, never for a
 * main loop. */

/**
 * pmx_oauth2_pkce_new:
 * @out_verifier: (out) (transfer full): a random RFC 7636 code verifier
 *   (43 characters), free with pmx_secret_free().
 * @out_challenge: (out) (transfer full): its S256 challenge.
 */
void  pmx_oauth2_pkce_new (char **out_verifier,
                           char **out_challenge);

/**
 * pmx_token_source_dup_authorize_url:
 * @redirect_uri: the loopback redirect ("http://127.0.0.1:PORT/").
 * @state: an unguessable value the redirect must carry back.
 * @code_challenge: from pmx_oauth2_pkce_new().
 *
 * The authorization request URL to open in a browser (RFC 6749 §4.1.1,
 * RFC 7636, RFC 8252 §7.3).  Google's asks for offline access.
 *
 * Returns: (transfer full): the URL, or NULL with a %PMX_OAUTH2_ERROR_CONFIG
 *   error (the grant is not refresh_token, or no authorization endpoint).
 */
char     *pmx_token_source_dup_authorize_url (PmxTokenSource *source,
                                              const char     *redirect_uri,
                                              const char     *state,
                                              const char     *code_challenge,
                                              GError        **error);
/**
 * pmx_token_source_redeem_code:
 *
 * Redeems the authorization code (grant authorization_code with the PKCE
 * verifier), stores the refresh token and access token, leaves the
 * needs-login state.
 */
gboolean  pmx_token_source_redeem_code (PmxTokenSource *source,
                                        const char     *code,
                                        const char     *redirect_uri,
                                        const char     *code_verifier,
                                        GCancellable   *cancellable,
                                        GError        **error);

/**
 * PmxDeviceCode:
 * The answer of a device authorization request (RFC 8628 §3.2): show
 * @message (or @verification_uri and @user_code) to the user.
 */
typedef struct {
  char  *device_code;      /* secret: never shown */
  char  *user_code;
  char  *verification_uri;
  char  *message;
  gint64 expires_at;       /* unix seconds */
  guint  interval;         /* seconds between polls */
  gpointer _pmx_reserved[4];
} PmxDeviceCode;

/* Asks for a device code.  Google refuses Gmail scopes in this flow: a
 * google source fails at once with a %PMX_OAUTH2_ERROR_CONFIG error that
 * says so and names the alternatives. */
gboolean  pmx_token_source_start_device_login  (PmxTokenSource *source,
                                                PmxDeviceCode  *out_code,
                                                GCancellable   *cancellable,
                                                GError        **error);
/* Polls the token endpoint every interval (slow_down adds 5 s) until the
 * user has signed in (tokens stored), declined, or the code expired. */
gboolean  pmx_token_source_finish_device_login (PmxTokenSource      *source,
                                                const PmxDeviceCode *code,
                                                GCancellable        *cancellable,
                                                GError             **error);
void      pmx_device_code_clear                (PmxDeviceCode *code);

G_DEFINE_AUTOPTR_CLEANUP_FUNC (PmxTokenSource, pmx_token_source_unref)
G_DEFINE_AUTO_CLEANUP_CLEAR_FUNC (PmxDeviceCode, pmx_device_code_clear)
G_DEFINE_AUTO_CLEANUP_CLEAR_FUNC (PmxTokenStatus, pmx_token_status_clear)

G_END_DECLS

/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * postmux-smtp.h - the SDK's SMTP client engine, shared by the smtp and
 * oauth2-smtp transports.
 *
 * One PmxSmtpClient is one (re)usable connection to one server, driven by
 * plain blocking calls from one delivery worker thread at a time.  It
 * connects (implicit TLS or STARTTLS), says EHLO, authenticates, then sends
 * any number of messages, filling a PmxResult per message with one outcome
 * per recipient and the transcript of what was said (secrets redacted).
 * It reconnects by itself between messages when the server went away.
 */
#pragma once

#if !defined(__PMX_H_INSIDE__) && !defined(PMX_COMPILATION)
#error "Only <postmux/postmux.h> can be included directly."
#endif

#include <glib.h>
#include <json-glib/json-glib.h>
#include <postmux/postmux-result.h>
#include <postmux/postmux-transport.h>

G_BEGIN_DECLS

typedef enum {
  PMX_SMTP_SECURITY_NONE,           /* plaintext; never STARTTLS */
  PMX_SMTP_SECURITY_STARTTLS,       /* STARTTLS required (RFC 3207) */
  PMX_SMTP_SECURITY_TLS,            /* implicit TLS from the first byte (RFC 8314) */
  PMX_SMTP_SECURITY_OPPORTUNISTIC,  /* STARTTLS when offered, else plaintext */
} PmxSmtpSecurity;

typedef enum {
  PMX_SMTP_AUTH_NONE,
  PMX_SMTP_AUTH_AUTO,         /* strongest offered: CRAM-MD5 > PLAIN > LOGIN */
  PMX_SMTP_AUTH_PLAIN,        /* RFC 4616 */
  PMX_SMTP_AUTH_LOGIN,        /* draft-murchison-sasl-login */
  PMX_SMTP_AUTH_CRAM_MD5,     /* RFC 2195 */
  PMX_SMTP_AUTH_XOAUTH2,      /* Google/Microsoft; the secret is the access token */
  PMX_SMTP_AUTH_OAUTHBEARER,  /* RFC 7628; the secret is the access token */
} PmxSmtpAuth;

typedef enum {
  PMX_SMTP_TLS_1_2,
  PMX_SMTP_TLS_1_3,
} PmxSmtpTlsVersion;

/**
 * PmxSmtpConfig:
 * @host: server name or address literal (also the name the certificate
 *   must carry, and the SNI).
 * @port: 0 for the default of @security (25, 587, 465, 25).
 * @security: see #PmxSmtpSecurity.
 * @helo_name: the EHLO/HELO argument; NULL for the machine's host name.
 * @tls_verify: verify the server certificate and its name (say TRUE).
 * @ca_file: PEM file of trusted CAs, in addition to the system store.
 * @tls_min_version: lowest TLS version accepted.
 * @connect_timeout_ms, @command_timeout_ms, @data_timeout_ms: per phase
 *   (0 for 30 s, 300 s, 600 s).  The data timeout covers each write of the
 *   message and the reply to the final dot.
 * @auth: mechanism; NONE ignores @username and @secret.
 * @username: authentication identity.
 * @secret: password, or access token for XOAUTH2/OAUTHBEARER (copied;
 *   the copy is wiped when replaced or freed).
 * @allow_plaintext_auth: let PLAIN, LOGIN and the OAuth mechanisms run on
 *   an unencrypted connection.
 * @max_messages_per_connection: QUIT and reconnect after this many
 *   messages (0: no limit).
 * @transcript_limit: bytes of transcript kept per message (0: 64 KiB).
 *
 * Borrowed by pmx_smtp_client_new() for the duration of the call.
 */
typedef struct {
  const char       *host;
  guint16           port;
  PmxSmtpSecurity   security;
  const char       *helo_name;
  gboolean          tls_verify;
  const char       *ca_file;
  PmxSmtpTlsVersion tls_min_version;
  guint             connect_timeout_ms;
  guint             command_timeout_ms;
  guint             data_timeout_ms;
  PmxSmtpAuth       auth;
  const char       *username;
  const char       *secret;
  gboolean          allow_plaintext_auth;
  guint             max_messages_per_connection;
  gsize             transcript_limit;
  gpointer          _pmx_reserved[8];
} PmxSmtpConfig;

/* Errors of connect/probe.  pmx_smtp_error_get_failure() says how the host
 * should class each one. */
#define PMX_SMTP_ERROR (pmx_smtp_error_quark ())
typedef enum {
  PMX_SMTP_ERROR_FAILED,               /* anything else (temporary) */
  PMX_SMTP_ERROR_RESOLVE,              /* DNS failed (temporary) */
  PMX_SMTP_ERROR_CONNECT,              /* refused, unreachable (temporary) */
  PMX_SMTP_ERROR_TIMEOUT,              /* a phase took too long (temporary) */
  PMX_SMTP_ERROR_TLS,                  /* handshake failed (temporary) */
  PMX_SMTP_ERROR_CERTIFICATE,          /* certificate not trusted (config) */
  PMX_SMTP_ERROR_CLOSED,               /* server closed, or said 421 (temporary) */
  PMX_SMTP_ERROR_PROTOCOL,             /* unparseable reply (temporary) */
  PMX_SMTP_ERROR_REJECTED,             /* greeting/EHLO refused: 4xx temporary, 5xx config */
  PMX_SMTP_ERROR_STARTTLS_UNAVAILABLE, /* security starttls, not offered (config) */
  PMX_SMTP_ERROR_AUTH_UNAVAILABLE,     /* mechanism not offered or not allowed (config) */
  PMX_SMTP_ERROR_AUTH_FAILED,          /* 535/534/530...: credentials refused (auth) */
  PMX_SMTP_ERROR_AUTH_TEMPORARY,       /* 454 and other 4xx to AUTH (temporary) */
} PmxSmtpError;

GQuark pmx_smtp_error_quark (void);

/* How a host classes @error (any domain: non-SMTP errors are TEMPORARY). */
PmxFailureClass pmx_smtp_error_get_failure (const GError *error);

/* The PMX_TRANSPORT_ERROR code open_session() should report for @error. */
PmxTransportErrorCode pmx_smtp_error_get_transport_code (const GError *error);

typedef struct _PmxSmtpClient PmxSmtpClient;

/* A client for @config; nothing is sent until connect or send.
 * (transfer full) */
PmxSmtpClient *pmx_smtp_client_new  (const PmxSmtpConfig *config);
/* QUIT if connected, close, wipe the secret and free. NULL allowed. */
void           pmx_smtp_client_free (PmxSmtpClient *client);

/* Replace the password or token (an OAuth2 transport after a refresh);
 * takes effect at the next AUTH. */
void pmx_smtp_client_set_secret (PmxSmtpClient *client,
                                 const char    *secret);

/* Connect, TLS, EHLO, AUTH: ready to send.  Does nothing when already
 * connected.  FALSE with @error in PMX_SMTP_ERROR; the server's reply, if
 * one caused it, is in pmx_smtp_client_get_last_reply(). */
gboolean pmx_smtp_client_connect (PmxSmtpClient *client,
                                  GError       **error);

/* QUIT (best effort) and close. */
void     pmx_smtp_client_disconnect (PmxSmtpClient *client);

gboolean pmx_smtp_client_is_connected (PmxSmtpClient *client);

/* Send one message: RSET/NOOP or reconnect as needed, MAIL, RCPT...,
 * DATA.  Fills @result: one outcome per recipient, or a whole-attempt
 * failure (TEMPORARY for network/TLS/timeouts/421, AUTH, CONFIG,
 * PERMANENT for a message the server can never take), the transcript of
 * this attempt, the server's queue id, and session_broken when the
 * connection is gone.  @message has CRLF line ends (bare LF is fixed). */
void     pmx_smtp_client_send (PmxSmtpClient     *client,
                               const PmxEnvelope *envelope,
                               const guint8      *message,
                               gsize              message_len,
                               PmxResult         *result);

/* The last reply read (code 0 when none); borrowed until the next call. */
guint       pmx_smtp_client_get_last_reply (PmxSmtpClient *client,
                                            const char   **out_enhanced,
                                            const char   **out_text);

/* The transcript collected since the last send() or take: "C: " and "S: "
 * lines and "*: " notes, secrets shown as <redacted>. (transfer full) */
char       *pmx_smtp_client_take_transcript (PmxSmtpClient *client);

/* The mechanism AUTH used on this connection ("PLAIN"), or NULL. */
const char *pmx_smtp_client_get_auth_mechanism (PmxSmtpClient *client);

/* Connections opened since creation (for tests and metrics). */
guint       pmx_smtp_client_get_n_connections (PmxSmtpClient *client);

/**
 * PmxSmtpProbe:
 * What `postmux doctor` shows.  Every string may be NULL when that step
 * was not reached; string arrays are NULL-terminated.
 */
typedef struct {
  char   **addresses;         /* resolved addresses of host */
  char    *connected_to;      /* "127.0.0.1:587" */
  char    *tls_version;       /* "TLSv1.3" */
  char    *tls_cipher;
  char    *cert_subject;      /* RFC 2253 */
  char    *cert_issuer;
  char    *cert_not_after;    /* "2027-01-31T12:00:00Z" */
  gboolean cert_verified;
  char    *verify_result;     /* OpenSSL's words: "ok", "self-signed certificate"... */
  char   **caps_before_tls;   /* EHLO lines before STARTTLS (or the only EHLO) */
  char   **caps_after_tls;    /* EHLO lines after STARTTLS */
  char   **auth_offered;      /* mechanisms the server offers */
  char    *auth_mechanism;    /* the one tried, NULL when AUTH was not tried */
  gboolean auth_ok;
  guint    auth_code;         /* reply to the AUTH exchange */
  char    *auth_enhanced;
  char    *auth_text;
  GError  *error;             /* why the probe stopped; NULL when all went well */
  char    *transcript;
  gpointer _pmx_reserved[8];
} PmxSmtpProbe;

/* Connect, show TLS, EHLO before/after STARTTLS, AUTH (when a username is
 * set), QUIT.  With tls_verify on, an untrusted certificate is reported
 * (details filled) and the probe stops there.  Always returns a probe;
 * probe->error says what failed.  (transfer full) */
PmxSmtpProbe *pmx_smtp_client_probe (PmxSmtpClient *client);
void          pmx_smtp_probe_free   (PmxSmtpProbe  *probe);

/* Add to @report the doctor steps a probe answers for every SMTP
 * transport, in this order:
 *   "dns"      the addresses @host resolves to (OK), or why not (FAIL);
 *   "connect"  the address connected to (OK), or why not (FAIL);
 *   "tls"      TLS version, cipher and certificate (OK when verified, FAIL
 *              when not and @tls_verify is on, WARN when @tls_verify is
 *              off), a failed handshake (FAIL), or, when the session stayed
 *              in clear, a "not encrypted" line naming @secret_noun (FAIL
 *              when @security is tls or starttls, WARN otherwise);
 *   "ehlo"     the EHLO capabilities, before and after STARTTLS (OK), or
 *              why EHLO or STARTTLS failed (FAIL).
 * @secret_noun is what crosses the network with the mail ("password",
 * "access token").  @probe and @report stay owned by the caller (transfer
 * none).  Returns FALSE after a FAIL item that ends the checks (the caller
 * then adds its verdict), TRUE when the caller should go on to its auth
 * step. */
gboolean pmx_smtp_probe_report_connection (const PmxSmtpProbe *probe,
                                           const char         *host,
                                           PmxSmtpSecurity     security,
                                           gboolean            tls_verify,
                                           const char         *secret_noun,
                                           PmxReport          *report);

/* Add the "auth" step: the mechanism and user tried and the server's reply
 * (OK when accepted; FAIL when refused, followed by @cause and @hint when
 * given — both are only shown for a refusal) or why no mechanism could be used (FAIL).  Adds nothing when the
 * probe made no login attempt and had no auth error: the caller reports
 * "no authentication configured" itself if that applies.  (transfer none) */
void     pmx_smtp_probe_report_auth       (const PmxSmtpProbe *probe,
                                           const char         *username,
                                           const char         *cause,
                                           const char         *hint,
                                           PmxReport          *report);

/* Add the last step, "verdict": ready (OK) when the probe ended without an
 * error, else what stopped it (FAIL).  Returns TRUE when ready. */
gboolean pmx_smtp_probe_report_verdict    (const PmxSmtpProbe *probe,
                                           const char         *host,
                                           guint               port,
                                           PmxReport          *report);

/**
 * PMX_SMTP_SCHEMA_CONNECTION_PROPERTIES:
 *
 * The JSON Schema properties every SMTP-speaking transport shares, as
 * pmx_smtp_config_read() reads them: host, port, security, helo_name,
 * tls_verify, ca_file, tls_min_version, timeouts,
 * max_messages_per_connection, default_from and hint.  Members of a
 * "properties" object without the braces: write the transport's own
 * properties after it, separated by a comma.
 */
#define PMX_SMTP_SCHEMA_DURATION "{ \"oneOf\": [ { \"type\": \"integer\", \"minimum\": 1 }, \
      { \"type\": \"string\", \"pattern\": \"^[0-9]+(ms|s|m|h)$\" } ] }"
#define PMX_SMTP_SCHEMA_CONNECTION_PROPERTIES " \
    \"host\": { \"type\": \"string\", \"minLength\": 1, \
      \"description\": \"the SMTP server (also the name its certificate must carry)\" }, \
    \"port\": { \"type\": \"integer\", \"minimum\": 1, \"maximum\": 65535, \
      \"description\": \"default by security: none 25, starttls 587, tls 465, opportunistic 25\" }, \
    \"security\": { \"enum\": [\"none\", \"starttls\", \"tls\", \"opportunistic\"], \"default\": \"starttls\", \
      \"description\": \"starttls requires STARTTLS; tls is implicit TLS (port 465); opportunistic uses STARTTLS when offered\" }, \
    \"helo_name\": { \"type\": \"string\", \"minLength\": 1, \
      \"description\": \"the EHLO name; default this machine's host name\" }, \
    \"tls_verify\": { \"type\": \"boolean\", \"default\": true, \
      \"description\": \"verify the server certificate and name; false only for testing\" }, \
    \"ca_file\": { \"type\": \"string\", \"minLength\": 1, \
      \"description\": \"PEM file of CAs trusted in addition to the system store\" }, \
    \"tls_min_version\": { \"enum\": [\"1.2\", \"1.3\"], \"default\": \"1.2\", \
      \"description\": \"lowest TLS version accepted from the server\" }, \
    \"timeouts\": { \"type\": \"object\", \"additionalProperties\": false, \
      \"properties\": { \
        \"connect\": " PMX_SMTP_SCHEMA_DURATION ", \
        \"command\": " PMX_SMTP_SCHEMA_DURATION ", \
        \"data\": " PMX_SMTP_SCHEMA_DURATION " \
      }, \
      \"description\": \"seconds, or 500ms/30s/5m/1h; defaults connect 30s, command 5m, data 10m\" }, \
    \"default_from\": { \"type\": \"string\", \
      \"description\": \"sender used by postmux send --test\" }, \
    \"max_messages_per_connection\": { \"type\": \"integer\", \"minimum\": 1, \"default\": 1000, \
      \"description\": \"reconnect after this many messages on one connection\" }, \
    \"hint\": { \"type\": \"string\", \
      \"description\": \"shown by postmux doctor when authentication fails (presets fill it)\" } "

/**
 * pmx_smtp_config_read:
 * @options: a transport's options, validated against a schema made with
 *   PMX_SMTP_SCHEMA_CONNECTION_PROPERTIES (plus allow_plaintext_auth).
 * @instance_name: for messages.
 * @exposed: what an unverified or plaintext connection exposes ("the
 *   password", "the access token"), for the warnings.
 * @strings: where the strings of @config are copied; free it (with
 *   g_string_chunk_free()) when @config is no longer used.
 * @config: (out caller-allocates): its connection members are set (host,
 *   port, security, helo_name, tls_verify, ca_file, tls_min_version, the
 *   three timeouts, allow_plaintext_auth, max_messages_per_connection);
 *   the others are left alone.
 *
 * Logs a warning when tls_verify is false or security is opportunistic.
 *
 * Returns: FALSE with a %PMX_TRANSPORT_ERROR_CONFIG error naming the
 *   instance and the option.
 */
gboolean pmx_smtp_config_read (JsonObject    *options,
                               const char    *instance_name,
                               const char    *exposed,
                               GStringChunk  *strings,
                               PmxSmtpConfig *config,
                               GError       **error);

/* A "timeouts" member of transport options in milliseconds: absent gives
 * @fallback_ms; a positive integer is seconds; a string is a positive
 * number with a unit "ms", "s", "m" or "h" ("30s", "5m").  FALSE (and
 * *@out_ms = @fallback_ms) when the member is of another form or out of
 * range.  @timeouts may be NULL (transfer none). */
gboolean pmx_smtp_parse_timeout_ms (JsonObject *timeouts,
                                    const char *member,
                                    guint       fallback_ms,
                                    guint      *out_ms);

/* SASL initial responses, base64 (transfer full; wipe with
 * pmx_secret_free()).  XOAUTH2: user=U^Aauth=Bearer T^A^A.  OAUTHBEARER
 * (RFC 7628): n,a=U,^Ahost=H^Aport=P^Aauth=Bearer T^A^A (host/port left
 * out when NULL/0). */
char *pmx_smtp_sasl_xoauth2     (const char *user,
                                 const char *token);
char *pmx_smtp_sasl_oauthbearer (const char *user,
                                 const char *host,
                                 guint       port,
                                 const char *token);
/* PLAIN: base64(authzid NUL user NUL password) with an empty authzid. */
char *pmx_smtp_sasl_plain       (const char *user,
                                 const char *password);
/* CRAM-MD5 reply to the decoded @challenge: base64(user " " hex hmac-md5). */
char *pmx_smtp_sasl_cram_md5    (const char   *user,
                                 const char   *password,
                                 const guint8 *challenge,
                                 gsize         challenge_len);

G_DEFINE_AUTOPTR_CLEANUP_FUNC (PmxSmtpClient, pmx_smtp_client_free)
G_DEFINE_AUTOPTR_CLEANUP_FUNC (PmxSmtpProbe, pmx_smtp_probe_free)

G_END_DECLS

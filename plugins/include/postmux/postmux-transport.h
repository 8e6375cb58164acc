/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * postmux-transport.h - the transport plugin ABI.
 *
 * A transport is a shared object named pmx-<name>.so that exports exactly one
 * symbol, pmx_transport_<name>_get_desc (dashes in <name> become
 * underscores), returning a constant PmxTransportDesc.  Write it with
 * PMX_TRANSPORT_DEFINE() as the last line of the transport's main file and
 * build with -fvisibility=hidden so nothing else escapes.
 *
 * Versioning: the host accepts a descriptor whose abi_major equals its own
 * PMX_ABI_MAJOR and whose abi_minor is not higher than its PMX_ABI_MINOR.
 * Within one major, structs only grow by taking slots of _pmx_reserved and
 * new functions are only added, so an older plugin keeps working.  The
 * checked-in plugins/abi/postmux-abi-<major>.<minor>.txt records this ABI;
 * a test fails when the headers change without the version.
 *
 * Threading, call by call:
 *   get_desc       any thread, any time; must return the same constant.
 *   create         the main thread, at start-up and on reload.  A reload
 *                  creates the new instance while the old one may still
 *                  be delivering, and a config may hold several instances
 *                  of one plugin: keep no per-instance state in globals.
 *   destroy        once, after every session of the instance has been
 *                  closed, on whichever host thread lets go of the
 *                  instance last (an instance replaced by a reload goes
 *                  when its workers are done): not necessarily the main
 *                  thread.
 *   check          the thread of `postmux doctor`, on an instance no worker
 *                  uses.
 *   open_session,
 *   send,
 *   close_session  a delivery worker thread.  A session belongs to one
 *                  worker thread, the one that opened it: calls on one
 *                  session never overlap, but sessions of one instance
 *                  run in parallel (the transport's `concurrency`).  A
 *                  session unused for a minute is closed.  Anything a
 *                  transport shares between sessions (a token source, a
 *                  counter) needs its own lock or atomics; PmxTokenSource
 *                  is already safe to share.
 *
 * What a transport may do: block in send() on network I/O, on the token
 * service and on its own locks (give every network wait a timeout: the host
 * never interrupts a send(); at shutdown it waits shutdown_timeout for it).
 * What it must never do: retry an attempt, sleep for back-off, touch the
 * queue, call exit() or abort() on bad input, install signal handlers,
 * change the process (chdir, setenv, umask, locale), run a GMainLoop on the
 * host's main context, or log or report a secret (password, token, key,
 * Authorization header).  Outcomes are data, not errors: send() fills a
 * PmxResult and the host decides retries, back-off, failover and bounces.
 *
 * Memory: everything the host passes is borrowed for the duration of the
 * call; copy what you keep.  Everything a transport returns (the instance,
 * sessions) is owned by the transport and freed by its own destroy /
 * close_session.  Strings in the descriptor are static.
 */
#pragma once

#if !defined(__PMX_H_INSIDE__) && !defined(PMX_COMPILATION)
#error "Only <postmux/postmux.h> can be included directly."
#endif

#include <glib.h>
#include <json-glib/json-glib.h>
#include <postmux/postmux-version.h>
#include <postmux/postmux-result.h>

G_BEGIN_DECLS

/* Opaque to the host: each transport defines these structs itself. */
typedef struct _PmxTransport PmxTransport;
typedef struct _PmxSession   PmxSession;

/**
 * PmxTransportArgs:
 * @struct_size: sizeof (PmxTransportArgs) as the host was built with; a
 *   transport reads a field only when @struct_size covers it (fields past
 *   what a transport knows are newer and may be ignored).
 * @instance_name: the config's name of this instance ("o365", "local"),
 *   for messages and log lines. (transfer none)
 * @options: the instance's options, already validated against the
 *   descriptor's options schema and with a preset merged in, secret
 *   references left as written (resolve them with pmx_secret_resolve()
 *   and wipe the result with pmx_secret_free()). (transfer none)
 * @state_dir: the gateway's state directory, shared by every instance:
 *   keep files under names that carry @instance_name (token stores...),
 *   mode 0600. (transfer none)
 *
 * Passed to create() only, and borrowed for the duration of that call:
 * copy what the instance keeps.  Zero-filled _pmx_reserved slots.
 */
typedef struct {
  gsize       struct_size;
  const char *instance_name;
  JsonObject *options;
  const char *state_dir;
  gpointer    _pmx_reserved[8];
} PmxTransportArgs;

/**
 * PmxEnvelope:
 * @queue_id: the host's queue id of the message (for log lines and
 *   idempotency keys; stable across attempts).
 * @sender: envelope sender (MAIL FROM), already checked against the
 *   submitter's allowed senders; "" for the null sender.
 * @recipients: (array length=n_recipients): this attempt's recipients.
 *   Deliver to exactly these: recipients delivered or bounced by an
 *   earlier attempt are not in the list.  PmxResult indexes are into
 *   this array.
 * @n_recipients: at least 1.
 * @attempt: 1 for the first attempt of this message, counting attempts on
 *   every transport of its route.
 * @ingress: who submitted the message ("local:alice", "smtp:printer",
 *   "api:shop").
 *
 * Passed to send(), borrowed for the duration of the call, never NULL.
 */
typedef struct {
  const char        *queue_id;
  const char        *sender;
  const char *const *recipients;
  gsize              n_recipients;
  guint              attempt;
  const char        *ingress;
  gpointer           _pmx_reserved[4];
} PmxEnvelope;

/**
 * PmxTransportOps:
 * @create: required.  Build an instance from validated options; do no
 *   network I/O here (the daemon must start while a provider is down).
 *   On failure return NULL with @error set (PMX_TRANSPORT_ERROR_CONFIG);
 *   the message names the option, the cause and the fix.  Returns:
 *   (transfer full) an instance only the transport frees, in @destroy.
 * @destroy: required.  Free an instance; all its sessions are closed by
 *   then.  Wipe secrets it holds.
 * @open_session: required.  Open whatever a worker keeps between messages
 *   (a connection, an HTTP handle); may block (with timeouts).  On failure
 *   return NULL with @error set in PMX_TRANSPORT_ERROR: its code classes
 *   the failure of the attempt that needed the session (TEMPORARY and
 *   AUTH defer and fail over to the route's next transport, CONFIG
 *   defers, PERMANENT bounces).  A transport using the token service
 *   refreshes the token and tries the login once more itself before it
 *   reports AUTH.  Returns: (transfer full) a session freed
 *   by @close_session.
 * @send: required.  Deliver one message to envelope->recipients and fill
 *   @result: an outcome per recipient, or pmx_result_fail() for the whole
 *   attempt.  @message is the raw RFC 5322 message, CRLF line ends, exactly
 *   as queued; @message, @envelope and @result are borrowed for the call.
 *   Recipients left without an outcome are deferred by the host.  After
 *   pmx_result_set_session_broken() the host closes the session.
 * @close_session: required.  Close and free a session (also after a
 *   broken one); must not block for long (send QUIT, do not wait minutes).
 * @check: optional (NULL allowed).  Probe the instance for `postmux doctor`
 *   (DNS, connection, TLS, login, token) and add each step to @report;
 *   return FALSE if a check failed.  @report is borrowed.
 *
 * Every function pointer is called with the instance or session it
 * created; none is called after @destroy.
 */
typedef struct {
  PmxTransport *(*create)        (const PmxTransportArgs *args,
                                  GError                **error);
  void          (*destroy)       (PmxTransport           *transport);
  PmxSession   *(*open_session)  (PmxTransport           *transport,
                                  GError                **error);
  void          (*send)          (PmxSession             *session,
                                  const PmxEnvelope      *envelope,
                                  const guint8           *message,
                                  gsize                   message_len,
                                  PmxResult              *result);
  void          (*close_session) (PmxSession             *session);
  gboolean      (*check)         (PmxTransport           *transport,
                                  PmxReport              *report);
  gpointer      _pmx_reserved[8];
} PmxTransportOps;

/**
 * PmxTransportDesc:
 * @abi_major: PMX_ABI_MAJOR the plugin was built against (the macro fills it).
 * @abi_minor: PMX_ABI_MINOR the plugin was built against (the macro fills it).
 * @name: must equal the name taken from the file (pmx-<name>.so): lower
 *   case letters, digits and dashes.
 * @version: the plugin's own version ("1.2.0").
 * @license: SPDX identifier ("MIT", "GPL-3.0-or-later").
 * @description: one line saying what the transport does (for listings).
 * @options_schema: JSON Schema (draft-07) of the instance options, an
 *   object schema; the host compiles it at load (a bad one refuses the
 *   plugin) and checks every instance's options against it.  Give each
 *   property a "description" (and "default"): the configuration reference
 *   is generated from it.
 * @ops: the operations table.
 *
 * Static and constant: the host reads it from any thread and never frees
 * it.  _pmx_reserved must be zero (PMX_TRANSPORT_DEFINE does that).
 */
typedef struct {
  guint32                abi_major;
  guint32                abi_minor;
  const char            *name;
  const char            *version;
  const char            *license;
  const char            *description;
  const char            *options_schema;
  const PmxTransportOps *ops;
  gpointer               _pmx_reserved[8];
} PmxTransportDesc;

typedef const PmxTransportDesc *(*PmxTransportGetDescFunc) (void);

/**
 * PMX_TRANSPORT_DEFINE:
 * @symname: the transport name with dashes as underscores (oauth2_smtp).
 * @name: the transport name as a string ("oauth2-smtp").
 * @version, @license, @description, @options_schema: as in PmxTransportDesc.
 * @ops: address of a static const PmxTransportOps.
 *
 * Defines and exports pmx_transport_<symname>_get_desc().
 */
#define PMX_TRANSPORT_DEFINE(symname, name, version, license, description, options_schema, ops) \
  PMX_EXPORT const PmxTransportDesc *pmx_transport_##symname##_get_desc (void);                 \
  PMX_EXPORT const PmxTransportDesc *pmx_transport_##symname##_get_desc (void)                  \
  {                                                                                             \
    static const PmxTransportDesc desc = {                                                      \
      PMX_ABI_MAJOR, PMX_ABI_MINOR, name, version, license, description, options_schema, ops,   \
      { NULL, }                                                                                 \
    };                                                                                          \
    return &desc;                                                                               \
  }

/* Errors from open_session(): the code classes the whole-attempt failure. */
#define PMX_TRANSPORT_ERROR (pmx_transport_error_quark ())
typedef enum {
  PMX_TRANSPORT_ERROR_TEMPORARY,   /* try again later: network, 4xx, timeouts */
  PMX_TRANSPORT_ERROR_PERMANENT,   /* will never work for this message */
  PMX_TRANSPORT_ERROR_AUTH,        /* credentials refused: refresh once, then defer */
  PMX_TRANSPORT_ERROR_CONFIG,      /* the instance's options are wrong */
  PMX_TRANSPORT_ERROR_FAILED,      /* generic; treated as temporary */
} PmxTransportErrorCode;

GQuark pmx_transport_error_quark (void);

G_END_DECLS

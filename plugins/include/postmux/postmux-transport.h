/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * postmux-transport.h - the transport plugin ABI.
 *
 * A transport is a shared object named pmx-<name>.so that exports exactly one
 * symbol, pmx_transport_<name>_get_desc (dashes in <name> become
 * underscores), returning a constant PmxTransportDesc.  Write it with
 * PMX_TRANSPORT_DEFINE() as the last line of the transport's main file.
 *
 * Threading: create/destroy/check run on the host's main thread.  Each
 * delivery worker thread owns one session at a time: open_session, send and
 * close_session for a given session are never called concurrently, but
 * different sessions of one transport run in parallel, so anything a
 * transport shares between sessions needs its own lock.
 *
 * Outcomes are data, not errors: send() fills a PmxResult.  Transports never
 * retry, sleep for back-off, or touch the queue: the host decides.
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
 * @struct_size: sizeof (PmxTransportArgs) as the host saw it; fields past
 *   what a transport knows are newer and may be ignored.
 * @instance_name: the config's name of this instance ("o365", "local").
 * @options: the instance's options, already validated against the
 *   descriptor's options schema, with secret references left as written
 *   (resolve them with pmx_secret_resolve()). (transfer none)
 * @state_dir: a directory the instance may keep files in (token stores...).
 *
 * Everything here is borrowed for the duration of create() only.
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
 * @queue_id: the host's queue id of the message (for log lines).
 * @sender: envelope sender (MAIL FROM); "" for the null sender.
 * @recipients: (array length=n_recipients): this attempt's recipients.
 *   Deliver to exactly these: recipients delivered or bounced by an
 *   earlier attempt are not in the list.
 * @attempt: 1 for the first attempt of this message.
 * @ingress: who submitted the message ("local", "smtp:alice", "api:key1").
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
 * @create: build an instance from validated options.  On failure return
 *   NULL with @error set; the message names the option and the fix.
 * @destroy: free an instance; all its sessions are closed by then.
 * @open_session: open whatever a worker keeps between messages (a
 *   connection, an HTTP handle).  On failure return NULL with @error set in
 *   PMX_TRANSPORT_ERROR; its code classes the failure.
 * @send: deliver one message to envelope->recipients and fill @result.
 *   @message is the raw RFC 5322 message, CRLF line ends.
 * @close_session: close and free a session.
 * @check: optional (NULL allowed): probe the instance for `postmux doctor`
 *   and add what was found to @report.  Return FALSE if a check failed.
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
 * @abi_major: PMX_ABI_MAJOR the plugin was built against.
 * @abi_minor: PMX_ABI_MINOR the plugin was built against.
 * @name: must equal the name taken from the file (pmx-<name>.so).
 * @version: the plugin's own version.
 * @license: SPDX identifier.
 * @description: one line for `postmux plugins`.
 * @options_schema: JSON Schema (draft-07) of the instance options.
 * @ops: the operations table.
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

/* SPDX-License-Identifier: GPL-3.0-or-later */
/*
 * pmx-control.h - the daemon's local control socket, and its client.
 *
 * A Unix stream socket in the state directory.  Each request is one line
 * of JSON; a "submit" request is followed by exactly "size" bytes of the
 * message.  Each answer is one line of JSON: {"ok":true,...} or
 * {"ok":false,"error":"..."}.  Several requests may share a connection.
 *
 *   {"op":"submit","sender":"a@x","recipients":["b@y"],"size":123}
 *     -> {"ok":true,"id":"0001A2B3C4D5E6F7","duplicate":false}
 *        (only after the message is durably queued)
 *   {"op":"wake"}    something is due: lease now
 *   {"op":"reload"}  re-read the config, like SIGHUP
 *   {"op":"status"}  {"ok":true,"pid":N,"version":"..."}
 *
 * The submitter's identity is taken from the socket's peer credentials
 * ("local:USER"), never from the request.
 */
#pragma once

#include "pmx-queue.h"

#include <json-glib/json-glib.h>

G_BEGIN_DECLS

#define PMX_CONTROL_ERROR (pmx_control_error_quark ())
typedef enum {
  PMX_CONTROL_ERROR_FAILED,
  PMX_CONTROL_ERROR_UNREACHABLE,   /* no daemon answers on the socket */
  PMX_CONTROL_ERROR_IN_USE,        /* another daemon already answers */
  PMX_CONTROL_ERROR_REFUSED,       /* the daemon answered ok:false */
} PmxControlErrorCode;

GQuark pmx_control_error_quark (void);

typedef struct {
  void     (*wake)   (gpointer user_data);
  gboolean (*reload) (gpointer user_data, GError **error);
  /* Each transport's state for "status" (transfer full), or NULL. */
  JsonNode *(*transports) (gpointer user_data);
  gpointer user_data;
} PmxControlHooks;

typedef struct _PmxControl PmxControl;

/* Listen on @path (removing a stale socket; refusing when a daemon answers). */
PmxControl *pmx_control_new  (const char            *path,
                              PmxQueue              *queue,
                              const PmxControlHooks *hooks,
                              GError               **error);
/* Stop listening and remove the socket file. */
void        pmx_control_free (PmxControl *control);

/* Client: submit and wait for the durable commit.  (blocking) */
char       *pmx_control_submit (const char          *path,
                                const PmxSubmission *sub,
                                gboolean            *out_duplicate,
                                GError             **error);
/* Client: "wake", "reload" or "status"; returns the answer object as text. */
char       *pmx_control_call   (const char *path,
                                const char *op,
                                GError    **error);

G_END_DECLS

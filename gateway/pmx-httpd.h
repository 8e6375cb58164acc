/* SPDX-License-Identifier: GPL-3.0-or-later */
/*
 * pmx-httpd.h - the HTTP submission API (libsoup 3 server on the main loop).
 *
 *   POST /v1/messages        JSON (schemas/message.schema.json) or
 *                            message/rfc822 with ?from=...&to=...; Bearer key
 *   GET  /v1/messages/{id}   state, recipients and attempts (same key only)
 *   GET  /v1/health          {"status":"ok","queue":{state: count}}
 *   GET  /metrics            Prometheus text format 0.0.4
 *
 * A 202 is sent only after the queue's durable commit.
 */
#pragma once

#include "pmx-config.h"
#include "pmx-queue.h"

G_BEGIN_DECLS

#define PMX_HTTPD_ERROR (pmx_httpd_error_quark ())
typedef enum {
  PMX_HTTPD_ERROR_FAILED,
  PMX_HTTPD_ERROR_CONFIG,   /* a listen.http, tls or auth.api_keys entry is unusable */
  PMX_HTTPD_ERROR_TLS,      /* the certificate or key cannot be loaded */
  PMX_HTTPD_ERROR_LISTEN,   /* cannot bind */
} PmxHttpdErrorCode;

GQuark pmx_httpd_error_quark (void);

typedef struct _PmxHttpd PmxHttpd;

/* Read the http, tls and auth.api_keys sections of @config (listen.http
 * must be present).  @wake is called after each message is queued. */
PmxHttpd *pmx_httpd_new      (PmxConfig  *config,
                              PmxQueue   *queue,
                              void      (*wake) (gpointer),
                              gpointer    wake_data,
                              GError    **error);
/* Take the API keys and limits of a reloaded config; listeners stay. */
void      pmx_httpd_apply    (PmxHttpd   *httpd,
                              PmxConfig  *config);
/* /v1/health reports @func's answer (transfer full, called from a worker
 * thread) as "transports": each transport's state (rate limits...). */
void      pmx_httpd_set_transports_func (PmxHttpd   *httpd,
                                         JsonNode *(*func) (gpointer),
                                         gpointer    user_data);
/* Bind every listen.http address and start answering. */
gboolean  pmx_httpd_start    (PmxHttpd   *httpd,
                              GError    **error);
/* Stop listening, drop idle connections, and run the main context until
 * every request already handed to a thread or the queue is answered. */
void      pmx_httpd_shutdown (PmxHttpd   *httpd);
void      pmx_httpd_free     (PmxHttpd   *httpd);

G_END_DECLS

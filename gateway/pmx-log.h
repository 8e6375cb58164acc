/* SPDX-License-Identifier: GPL-3.0-or-later */
/*
 * pmx-log.h - structured logging with the queue id on every delivery line.
 *
 * Lines go through g_log_structured() with the fields QUEUE_ID, TRANSPORT
 * and ROUTE, so journald keeps them as fields; the writer installed by
 * pmx_log_init() prints them as text ("ID: to=<...>, status=...", the way
 * Postfix puts the queue id first) or as one JSON object per line.
 * Callers never pass secrets; nothing here could tell one from a subject.
 */
#pragma once

#include <glib.h>

G_BEGIN_DECLS

typedef enum {
  PMX_LOG_TEXT,
  PMX_LOG_JSON,
} PmxLogFormat;

/* Install the writer.  @level: "debug", "info", "warning" or "error". */
void pmx_log_init       (PmxLogFormat format,
                         const char  *level);
void pmx_log_set_level  (const char  *level);
void pmx_log_set_format (PmxLogFormat format);

void pmx_log_delivery (GLogLevelFlags level,
                       const char    *queue_id,
                       const char    *transport,
                       const char    *route,
                       const char    *format,
                       ...) G_GNUC_PRINTF (5, 6);
/* The same with a finished @message (no formatting). */
void pmx_log_delivery_text (GLogLevelFlags level,
                            const char    *queue_id,
                            const char    *transport,
                            const char    *route,
                            const char    *message);

#define pmx_log_info(id, transport, ...)     pmx_log_delivery (G_LOG_LEVEL_INFO, id, transport, NULL, __VA_ARGS__)
#define pmx_log_warning(id, transport, ...)  pmx_log_delivery (G_LOG_LEVEL_WARNING, id, transport, NULL, __VA_ARGS__)
#define pmx_log_critical(id, transport, ...) pmx_log_delivery (G_LOG_LEVEL_CRITICAL, id, transport, NULL, __VA_ARGS__)

G_END_DECLS

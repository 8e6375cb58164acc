/* SPDX-License-Identifier: GPL-3.0-or-later */
/*
 * pmx-duration.h - durations as the config writes them: an integer number
 * of seconds, or a number with a unit (500ms, 30s, 5m, 1h, 5d, 1w).
 */
#pragma once

#include <json-glib/json-glib.h>

G_BEGIN_DECLS

/* Microseconds per second as a 64-bit constant: durations are gint64 usec. */
#define PMX_USEC_PER_SEC G_GINT64_CONSTANT (1000000)

/* Parse @node into microseconds.  Returns FALSE when it is not a duration. */
gboolean pmx_duration_parse_node   (JsonNode    *node,
                                    gint64      *out_usec);
gboolean pmx_duration_parse_string (const char  *text,
                                    gint64      *out_usec);
/* "5m", "1h30m", "2d" - for messages. (transfer full) */
char    *pmx_duration_format       (gint64       usec);

G_END_DECLS

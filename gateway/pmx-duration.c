/* SPDX-License-Identifier: GPL-3.0-or-later */
/*
 * pmx-duration.c - parse and print config durations.
 *
 * Trusts nothing: overflow and unknown units are rejected, never wrapped.
 */
#include "pmx-duration.h"

#include <string.h>

gboolean
pmx_duration_parse_string (const char *text,
                           gint64     *out_usec)
{
  static const struct { const char *unit; gint64 usec; } units[] = {
    { "ms", PMX_USEC_PER_SEC / 1000 },
    { "s", PMX_USEC_PER_SEC },
    { "m", 60 * PMX_USEC_PER_SEC },
    { "h", 3600 * PMX_USEC_PER_SEC },
    { "d", 86400 * PMX_USEC_PER_SEC },
    { "w", 7 * 86400 * PMX_USEC_PER_SEC },
  };
  guint64 n = 0;
  const char *end = NULL;

  g_return_val_if_fail (text != NULL, FALSE);

  if (!g_ascii_isdigit (text[0]))
    return FALSE;
  n = g_ascii_strtoull (text, (char **) &end, 10);
  for (gsize i = 0; i < G_N_ELEMENTS (units); i++)
    if (strcmp (end, units[i].unit) == 0)
      {
        if (n > (guint64) (G_MAXINT64 / units[i].usec))
          return FALSE;
        *out_usec = (gint64) n * units[i].usec;
        return TRUE;
      }
  return FALSE;
}

gboolean
pmx_duration_parse_node (JsonNode *node,
                         gint64   *out_usec)
{
  g_return_val_if_fail (out_usec != NULL, FALSE);

  if (node == NULL || !JSON_NODE_HOLDS_VALUE (node))
    return FALSE;
  if (json_node_get_value_type (node) == G_TYPE_INT64)
    {
      gint64 s = json_node_get_int (node);

      if (s < 0 || s > G_MAXINT64 / PMX_USEC_PER_SEC)
        return FALSE;
      *out_usec = s * PMX_USEC_PER_SEC;
      return TRUE;
    }
  if (json_node_get_value_type (node) == G_TYPE_STRING)
    return pmx_duration_parse_string (json_node_get_string (node), out_usec);
  return FALSE;
}

char *
pmx_duration_format (gint64 usec)
{
  gint64 s = usec / PMX_USEC_PER_SEC;

  if (usec < PMX_USEC_PER_SEC)
    return g_strdup_printf ("%" G_GINT64_FORMAT "ms", usec / 1000);
  if (s % 86400 == 0)
    return g_strdup_printf ("%" G_GINT64_FORMAT "d", s / 86400);
  if (s % 3600 == 0)
    return g_strdup_printf ("%" G_GINT64_FORMAT "h", s / 3600);
  if (s % 60 == 0)
    return g_strdup_printf ("%" G_GINT64_FORMAT "m", s / 60);
  return g_strdup_printf ("%" G_GINT64_FORMAT "s", s);
}

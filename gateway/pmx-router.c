/* SPDX-License-Identifier: GPL-3.0-or-later */
/*
 * pmx-router.c - match a message against the config's routes.
 *
 * Matching is case-insensitive on addresses and domains.  A recipient_domain
 * rule matches only when every recipient of the attempt is in its domains:
 * a route meant for some domains never carries a recipient of another.
 * Header rules read the message's header block only.
 */
#include "pmx-router.h"

#include <string.h>

struct _PmxRouter {
  PmxConfig *config;
  guint     *counters;   /* round-robin position per route; atomic */
  guint      default_counter;
};

PmxRouter *
pmx_router_new (PmxConfig *config)
{
  PmxRouter *router = g_new0 (PmxRouter, 1);

  router->config = pmx_config_ref (config);
  router->counters = g_new0 (guint, config->routes->len + 1);
  return router;
}

void
pmx_router_free (PmxRouter *router)
{
  if (router == NULL)
    return;
  pmx_config_unref (router->config);
  g_free (router->counters);
  g_free (router);
}

/* router_domain - the domain part of @address, or "" */
static const char *
router_domain (const char *address)
{
  const char *at = strrchr (address, '@');

  return at != NULL ? at + 1 : "";
}

/* router_in - is @value (any case) in @list */
static gboolean
router_in (char *const *list,
           const char  *value)
{
  for (gsize i = 0; list[i] != NULL; i++)
    if (g_ascii_strcasecmp (list[i], value) == 0)
      return TRUE;
  return FALSE;
}

char *
pmx_message_dup_header (GBytes     *data,
                        const char *name)
{
  gsize len = 0;
  const char *p = g_bytes_get_data (data, &len);
  const char *end = p + len;
  gsize name_len = strlen (name);

  while (p < end)
    {
      const char *eol = memchr (p, '\n', (gsize) (end - p));
      const char *line_end = eol != NULL ? eol : end;

      if (line_end == p || (line_end - p == 1 && p[0] == '\r'))
        return NULL;   /* end of the header block */
      if ((gsize) (line_end - p) > name_len && p[name_len] == ':'
          && g_ascii_strncasecmp (p, name, name_len) == 0)
        {
          GString *value = g_string_new_len (p + name_len + 1, line_end - p - (gssize) name_len - 1);

          /* Unfold continuation lines (RFC 5322 2.2.3). */
          while (eol != NULL && eol + 1 < end && (eol[1] == ' ' || eol[1] == '\t'))
            {
              const char *next = memchr (eol + 1, '\n', (gsize) (end - eol - 1));
              const char *next_end = next != NULL ? next : end;

              g_string_append_len (value, eol + 1, next_end - eol - 1);
              eol = next;
            }
          g_strdelimit (value->str, "\r\n", ' ');
          return g_strstrip (g_string_free (value, FALSE));
        }
      if (eol == NULL)
        break;
      p = eol + 1;
    }
  return NULL;
}

/* router_matches - does @route match @in */
static gboolean
router_matches (const PmxRouteConfig *route,
                const PmxRouteInput  *in)
{
  if (route->senders != NULL && !router_in (route->senders, in->sender))
    return FALSE;
  if (route->sender_domains != NULL && !router_in (route->sender_domains, router_domain (in->sender)))
    return FALSE;
  if (route->ingresses != NULL && !router_in (route->ingresses, in->ingress != NULL ? in->ingress : ""))
    return FALSE;
  if (route->recipient_domains != NULL)
    {
      if (in->n_recipients == 0)
        return FALSE;
      for (gsize i = 0; i < in->n_recipients; i++)
        if (!router_in (route->recipient_domains, router_domain (in->recipients[i])))
          return FALSE;
    }
  if (route->header_name != NULL)
    {
      g_autofree char *value = in->data != NULL ? pmx_message_dup_header (in->data, route->header_name) : NULL;

      if (value == NULL)
        return FALSE;
      if (route->header_value != NULL && g_ascii_strcasecmp (value, route->header_value) != 0)
        return FALSE;
    }
  return TRUE;
}

/* router_pick - choose from @transports by strategy and failover hint.
 * Failover walks the list once per retry cycle; round-robin spreads first
 * attempts and fails over once to the next transport. */
static void
router_pick (char *const      *transports,
             PmxStrategy       strategy,
             guint            *counter,
             const char       *hint,
             PmxRouteDecision *out)
{
  guint n = g_strv_length ((char **) transports);
  guint start = 0;
  gboolean hinted = FALSE;

  for (guint i = 0; hint != NULL && i < n; i++)
    if (strcmp (transports[i], hint) == 0)
      {
        start = i;
        hinted = TRUE;
        break;
      }
  if (strategy == PMX_STRATEGY_ROUND_ROBIN && !hinted)
    start = ((guint) g_atomic_int_add ((gint *) counter, 1)) % n;

  out->transport = transports[start];
  if (strategy == PMX_STRATEGY_FAILOVER)
    out->failover = start + 1 < n ? transports[start + 1] : NULL;
  else
    out->failover = !hinted && n > 1 ? transports[(start + 1) % n] : NULL;
}

void
pmx_router_decide (PmxRouter           *router,
                   const PmxRouteInput *input,
                   PmxRouteDecision    *out)
{
  PmxConfig *config = router->config;

  for (guint i = 0; i < config->routes->len; i++)
    {
      PmxRouteConfig *route = g_ptr_array_index (config->routes, i);

      if (router_matches (route, input))
        {
          out->route = route->name;
          router_pick (route->transports, route->strategy, &router->counters[i],
                       input->next_transport, out);
          return;
        }
    }
  out->route = "default";
  out->transport = config->default_transport;
  out->failover = NULL;
}

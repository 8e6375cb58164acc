/* SPDX-License-Identifier: GPL-3.0-or-later */
/*
 * pmx-router.h - which transport a message takes.
 *
 * Routes are tried in config order; the first whose every given criterion
 * matches decides.  No route matching means the default transport.  A
 * router belongs to one config: a reload makes a new router.
 */
#pragma once

#include "pmx-config.h"

G_BEGIN_DECLS

typedef struct {
  const char        *sender;           /* envelope sender, "" for <> */
  const char *const *recipients;       /* this attempt's recipients */
  gsize              n_recipients;
  const char        *ingress;
  GBytes            *data;             /* the raw message, for header rules */
  const char        *next_transport;   /* failover hint from the last attempt, or NULL */
} PmxRouteInput;

typedef struct {
  const char *route;       /* route name, or "default" */
  const char *transport;   /* transport for this attempt */
  const char *failover;    /* transport for an immediate retry after a
                            * temporary whole-attempt failure, or NULL */
} PmxRouteDecision;

typedef struct _PmxRouter PmxRouter;

PmxRouter *pmx_router_new    (PmxConfig           *config);
void       pmx_router_free   (PmxRouter           *router);
/* Strings in @out point into the router's config. Thread-safe. */
void       pmx_router_decide (PmxRouter           *router,
                              const PmxRouteInput *input,
                              PmxRouteDecision    *out);

/* Value of the first header @name in @data (unfolded, trimmed), or NULL. */
char      *pmx_message_dup_header (GBytes     *data,
                                   const char *name);

G_DEFINE_AUTOPTR_CLEANUP_FUNC (PmxRouter, pmx_router_free)

G_END_DECLS

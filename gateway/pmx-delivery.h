/* SPDX-License-Identifier: GPL-3.0-or-later */
/*
 * pmx-delivery.h - the delivery engine: a dispatcher thread that leases due
 * messages from the queue and routes them, and per-transport worker
 * threads that each keep one transport session open and reuse it.
 *
 * The engine decides every retry: per-recipient outcomes from the
 * transport become delivered (done), deferred (retried with back-off and
 * jitter, or at the transport's retry-after), bounced (dead-lettered), or
 * expired (undelivered past retry.max_age).  A temporary whole-attempt
 * failure moves the message to the next transport of its route at once.
 */
#pragma once

#include "pmx-config.h"
#include "pmx-plugin-loader.h"
#include "pmx-queue.h"

G_BEGIN_DECLS

typedef struct _PmxDelivery PmxDelivery;

/* @owner names this node in queue leases. */
PmxDelivery *pmx_delivery_new   (PmxQueue        *queue,
                                 PmxPluginLoader *loader,
                                 const char      *owner);

/* Apply @config: build the instances it names (reusing unchanged ones),
 * retire the others once their in-flight sends finish, and route every
 * message not yet in flight by it.  On failure nothing changes and @error
 * says why. */
gboolean     pmx_delivery_apply (PmxDelivery     *delivery,
                                 PmxConfig       *config,
                                 GError         **error);

/* Start the dispatcher (after the first apply). */
void         pmx_delivery_start (PmxDelivery     *delivery);

/* Something may be due now (a submission, a retry by hand). Thread-safe. */
void         pmx_delivery_wake  (PmxDelivery     *delivery);

/* Stop leasing, give back what is waiting, let in-flight sends finish for
 * up to @timeout_usec.  Returns how many were still in flight then. */
guint        pmx_delivery_stop  (PmxDelivery     *delivery,
                                 gint64           timeout_usec);

void         pmx_delivery_free  (PmxDelivery     *delivery);

/* Each transport's state for /v1/health, `postmux queue` and the control
 * socket: {"name": {"state": "ok"|"rate_limited", "rate_limited_until":
 * ISO 8601, "reason": "..."}}. (transfer full) */
JsonNode    *pmx_delivery_dup_transport_states (PmxDelivery *delivery);

/* Back-off before retry number @attempts (1 = first retry), no jitter. */
gint64       pmx_delivery_backoff (const PmxRetryConfig *retry,
                                   guint                 attempts);

G_END_DECLS

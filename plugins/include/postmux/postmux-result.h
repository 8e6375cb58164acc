/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * postmux-result.h - what a transport reports back: per-recipient outcomes
 * of one delivery attempt (PmxResult) and doctor findings (PmxReport).
 *
 * A transport fills a result; the host decides what follows: delivered
 * recipients are done, deferred ones are retried with back-off (or at the
 * retry-after the transport gives), bounced ones are dead-lettered.
 * Recipients a transport leaves unset are deferred by the host with the
 * text "transport reported no outcome".
 */
#pragma once

#if !defined(__PMX_H_INSIDE__) && !defined(PMX_COMPILATION)
#error "Only <postmux/postmux.h> can be included directly."
#endif

#include <glib.h>

G_BEGIN_DECLS

typedef enum {
  PMX_RCPT_PENDING = 0,   /* no outcome yet */
  PMX_RCPT_DELIVERED,
  PMX_RCPT_DEFERRED,
  PMX_RCPT_BOUNCED,
} PmxRcptStatus;

typedef enum {
  PMX_FAILURE_NONE = 0,
  PMX_FAILURE_TEMPORARY,  /* whole attempt: defer every pending recipient */
  PMX_FAILURE_PERMANENT,  /* whole attempt: bounce every pending recipient */
  PMX_FAILURE_AUTH,       /* credentials refused: defer; the host may refresh */
  PMX_FAILURE_CONFIG,     /* the instance is misconfigured: defer and alert */
} PmxFailureClass;

typedef struct _PmxResult PmxResult;
typedef struct _PmxReport PmxReport;

/* Per-recipient outcome.  @index is into PmxEnvelope.recipients.
 * @code is the remote reply code (0 when there is none), @enhanced an
 * RFC 3463 code such as "5.1.1" (NULL allowed), @text the remote text. */
void pmx_result_set_recipient (PmxResult    *result,
                               gsize         index,
                               PmxRcptStatus status,
                               guint         code,
                               const char   *enhanced,
                               const char   *text);

/* Give every recipient that has no outcome yet the same outcome. */
void pmx_result_set_pending  (PmxResult    *result,
                              PmxRcptStatus status,
                              guint         code,
                              const char   *enhanced,
                              const char   *text);

/* A whole-attempt failure: every recipient without an outcome gets
 * deferred (TEMPORARY, AUTH, CONFIG) or bounced (PERMANENT). */
void pmx_result_fail (PmxResult      *result,
                      PmxFailureClass failure,
                      guint           code,
                      const char     *enhanced,
                      const char     *format,
                      ...) G_GNUC_PRINTF (5, 6);

/* Ask the host not to retry before @seconds from now (HTTP Retry-After). */
void pmx_result_set_retry_after (PmxResult *result,
                                 gint64     seconds);

/* Rate limits (HTTP 429 with Retry-After, a daily sending quota): ask the
 * host to start no new attempt on this transport instance for @seconds.
 * Workers already sending finish; messages routed to the instance wait in
 * the queue without an attempt being counted, and `postmux queue` and
 * /v1/health show the instance as "rate limited until <time>" with
 * @reason.  Implies pmx_result_set_retry_after (@seconds) for this
 * attempt's deferred recipients. */
void pmx_result_pause_transport (PmxResult  *result,
                                 gint64      seconds,
                                 const char *reason);

/* The provider's id for the delivered message (kept in the attempt log). */
void pmx_result_set_remote_id (PmxResult  *result,
                               const char *remote_id);

/* What was said on the wire in this attempt, secrets already redacted
 * ("AUTH PLAIN <redacted>"), for `postmux send --test` and debug logs. */
void pmx_result_set_transcript (PmxResult  *result,
                                const char *transcript);

/* Whether the host will read a transcript of this attempt (`postmux send
 * --test`).  Ordinary deliveries do not: skip the work of recording one. */
gboolean pmx_result_wants_transcript (PmxResult *result);

/* The session is unusable after this attempt: the host closes it and opens
 * a new one for the next message. */
void pmx_result_set_session_broken (PmxResult *result);

/* Doctor findings. */
typedef enum {
  PMX_CHECK_OK,
  PMX_CHECK_WARN,
  PMX_CHECK_FAIL,
} PmxCheckStatus;

void pmx_report_add (PmxReport     *report,
                     PmxCheckStatus status,
                     const char    *step,
                     const char    *format,
                     ...) G_GNUC_PRINTF (4, 5);

G_END_DECLS

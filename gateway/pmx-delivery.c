/* SPDX-License-Identifier: GPL-3.0-or-later */
/*
 * pmx-delivery.c - dispatcher and delivery workers.
 *
 * Threads: one dispatcher leases due messages (never more than the workers
 * can take soon: twice the total concurrency plus DELIVERY_LEASE_EXTRA,
 * taken in batches) and pushes each onto the job queue of the transport
 * its route names.  Each transport has N workers;
 * a worker opens a session when it first needs one and keeps it until the
 * transport reports it broken, a whole-attempt failure, or the worker
 * stops.  Transports are plain blocking code; this file owns timing,
 * retries and accounting.
 *
 * Completion is asynchronous: after a send the worker hands the attempt
 * to pmx_queue_complete_async() and takes its next job at once; the
 * queue's writer commits attempts in groups and then runs
 * delivery_committed(), which writes the delivery's log lines and only
 * then counts the job out of delivery->inflight.  So a message stays
 * leased (inflight in the queue, counted here) until its outcome is
 * durable, at most DELIVERY_COMMIT_WINDOW outcomes wait for a commit, and
 * pmx_delivery_stop() returns only when every one has been committed.
 *
 * Locking: delivery->lock protects config, router, pools, retired,
 * stopping, wake, inflight and committing; it is never held while calling
 * a transport or the queue (the queue's writer takes it in
 * delivery_committed()).
 *
 * Failure: a queue write that fails after a send is logged as critical;
 * the message stays leased and returns to the queue when its lease expires
 * or Postmux next starts, so it may be delivered twice but is never lost.
 * A crash between a send and its commit likewise only repeats the send.
 */
#include "pmx-delivery.h"

#include "pmx-duration.h"
#include "pmx-instance.h"
#include "pmx-log.h"
#include "pmx-router.h"
#include "postmux-result-private.h"

#include <string.h>

#define DELIVERY_POLL_USEC      (1 * PMX_USEC_PER_SEC)   /* catch writes by other processes */
#define DELIVERY_IDLE_USEC      (60 * PMX_USEC_PER_SEC)  /* close a session unused this long */
#define DELIVERY_PURGE_USEC     (3600 * PMX_USEC_PER_SEC)
/* Leased beyond 2 x concurrency, so that a lease is a batch, not one
 * message, and the workers still have work while the next lease waits for
 * the queue's writer (a commit of outcomes can take a few ms): with 32, 8
 * workers to smtp-sink idled often enough to lose 10-15% of throughput. */
#define DELIVERY_LEASE_EXTRA    128
/* Sent attempts that may wait for their commit before leasing pauses. */
#define DELIVERY_COMMIT_WINDOW  1024

typedef struct {
  PmxInstance *instance;
  GAsyncQueue *jobs;      /* DeliveryJob*, or &delivery_stop */
  GPtrArray   *threads;   /* GThread* */
  PmxDelivery *delivery;
} DeliveryPool;

typedef struct {
  PmxQueueMessage *msg;
  PmxConfig       *config;      /* retry policy of the config that routed it */
  char            *route;
  char            *failover;    /* or NULL */
  PmxStrategy      strategy;
} DeliveryJob;

struct _PmxDelivery {
  PmxQueue        *queue;
  PmxPluginLoader *loader;
  char            *owner;

  GMutex           lock;
  GCond            cond;        /* dispatcher waits here */
  GCond            idle_cond;   /* stop() waits here for inflight == 0 */
  PmxConfig       *config;
  PmxRouter       *router;
  GHashTable      *pools;       /* transport name -> DeliveryPool* */
  GPtrArray       *retired;     /* DeliveryPool* winding down */
  gboolean         stopping;
  gboolean         wake;
  guint            inflight;    /* jobs queued in pools, being sent, or committing */
  guint            committing;  /* of inflight: sent, outcome not yet committed */
  GHashTable      *pauses;      /* transport name -> DeliveryPause*, kept across reloads */
  gint             n_pauses;    /* atomic: size of pauses, read without the lock */
  GThread         *dispatcher;
};

/* A transport paused by a rate limit (pmx_result_pause_transport()). */
typedef struct {
  gint64  until;    /* real time, usec */
  char   *reason;
} DeliveryPause;

/* pause_free - free a DeliveryPause */
static void
pause_free (gpointer data)
{
  DeliveryPause *pause = data;

  g_free (pause->reason);
  g_free (pause);
}

/* delivery_paused_until - when @transport's pause ends, 0 when it is not
 * paused; lock held.  An ended pause is forgotten here. */
static gint64
delivery_paused_until (PmxDelivery *delivery,
                       const char  *transport,
                       gint64       now)
{
  DeliveryPause *pause = g_hash_table_lookup (delivery->pauses, transport);

  if (pause == NULL)
    return 0;
  if (pause->until > now)
    return pause->until;
  pmx_log_info (NULL, transport, "transport %s: rate limit pause over, sending again", transport);
  g_hash_table_remove (delivery->pauses, transport);
  g_atomic_int_set (&delivery->n_pauses, (gint) g_hash_table_size (delivery->pauses));
  return 0;
}

/* delivery_pause - pause @transport until @until (never shortening a
 * longer pause); lock held */
static void
delivery_pause (PmxDelivery *delivery,
                const char  *transport,
                gint64       until,
                const char  *reason)
{
  DeliveryPause *pause = g_hash_table_lookup (delivery->pauses, transport);
  g_autoptr(GDateTime) when = NULL;
  g_autofree char *stamp = NULL;

  if (pause != NULL && pause->until >= until)
    return;
  if (pause == NULL)
    {
      pause = g_new0 (DeliveryPause, 1);
      g_hash_table_insert (delivery->pauses, g_strdup (transport), pause);
      g_atomic_int_set (&delivery->n_pauses, (gint) g_hash_table_size (delivery->pauses));
    }
  pause->until = until;
  g_free (pause->reason);
  pause->reason = g_strdup (reason);
  when = g_date_time_new_from_unix_utc (until / PMX_USEC_PER_SEC);
  stamp = g_date_time_format_iso8601 (when);
  pmx_log_warning (NULL, transport, "transport %s rate limited until %s: %s — its messages wait in the queue",
                   transport, stamp, reason);
}

static int delivery_stop_marker;

/* One log line of an attempt, written once the attempt is committed. */
typedef struct {
  GLogLevelFlags level;
  char          *text;
} DeliveryLine;

/* What delivery_committed() needs once the queue has recorded an attempt. */
typedef struct {
  PmxDelivery *delivery;
  char        *transport;
  char        *route;
  DeliveryLine lines[];   /* one per recipient, n_lines of them */
} DeliveryCommit;

/* delivery_commit_new - a commit context with room for @n lines */
static DeliveryCommit *
delivery_commit_new (PmxDelivery *delivery,
                     const char  *transport,
                     const char  *route,
                     gsize        n)
{
  DeliveryCommit *dc = g_malloc0 (sizeof (DeliveryCommit) + (n + 1) * sizeof (DeliveryLine));

  dc->delivery = delivery;
  dc->transport = g_strdup (transport);
  dc->route = g_strdup (route);
  return dc;
}

/* delivery_commit_free - free a commit context and its lines */
static void
delivery_commit_free (DeliveryCommit *dc)
{
  for (gsize i = 0; dc->lines[i].text != NULL; i++)
    g_free (dc->lines[i].text);
  g_free (dc->transport);
  g_free (dc->route);
  g_free (dc);
}

/* job_free - free a job and the message it carries */
static void
job_free (DeliveryJob *job)
{
  pmx_queue_message_free (job->msg);
  pmx_config_unref (job->config);
  g_free (job->route);
  g_free (job->failover);
  g_free (job);
}

gint64
pmx_delivery_backoff (const PmxRetryConfig *retry,
                      guint                 attempts)
{
  double delay = (double) retry->initial_delay;

  for (guint i = 1; i < attempts && delay < (double) retry->max_delay; i++)
    delay *= retry->multiplier;
  return MIN ((gint64) delay, retry->max_delay);
}

/* delivery_jitter - spread @delay by +-jitter so retries do not stampede */
static gint64
delivery_jitter (const PmxRetryConfig *retry,
                 gint64                delay)
{
  if (retry->jitter <= 0.0 || delay <= 0)
    return delay;
  return (gint64) ((double) delay * (1.0 + g_random_double_range (-retry->jitter, retry->jitter)));
}

static guint delivery_capacity (PmxDelivery *delivery);

/* delivery_send_window - leased jobs not yet sent that the pools may hold; lock held */
static guint
delivery_send_window (PmxDelivery *delivery)
{
  GHashTableIter iter;
  gpointer value;
  guint total = 0;

  g_hash_table_iter_init (&iter, delivery->pools);
  while (g_hash_table_iter_next (&iter, NULL, &value))
    total += 2 * pmx_instance_get_concurrency (((DeliveryPool *) value)->instance);
  return total + DELIVERY_LEASE_EXTRA;
}

/* delivery_kick - wake the dispatcher when half a window can be leased,
 * and stop() when nothing is in flight; lock held.  (Waking it for every
 * message would make every lease a lease of one.) */
static void
delivery_kick (PmxDelivery *delivery)
{
  if (!delivery->wake && delivery_capacity (delivery) >= delivery_send_window (delivery) / 2)
    {
      delivery->wake = TRUE;
      g_cond_signal (&delivery->cond);
    }
  if (delivery->inflight == 0 || delivery->stopping)
    g_cond_broadcast (&delivery->idle_cond);
}

/* delivery_committed - PmxQueueCompleteFunc: the attempt is durable (or
 * failed to be): log it, and only now count the job out */
static void
delivery_committed (PmxQueue     *queue,
                    const char   *id,
                    const GError *error,
                    gpointer      user_data)
{
  DeliveryCommit *dc = user_data;
  PmxDelivery *delivery = dc->delivery;

  if (error != NULL)
    pmx_log_critical (id, dc->transport,
                      "cannot record the outcome of this attempt: %s — the message stays leased and is tried again when its lease expires or postmux restarts",
                      error->message);
  else
    for (gsize i = 0; dc->lines[i].text != NULL; i++)
      pmx_log_delivery_text (dc->lines[i].level, id, dc->transport, dc->route, dc->lines[i].text);
  delivery_commit_free (dc);

  g_mutex_lock (&delivery->lock);
  delivery->committing--;
  delivery->inflight--;
  delivery_kick (delivery);
  g_mutex_unlock (&delivery->lock);
}

/* delivery_status_name - word for a recipient state in log lines */
static const char *
delivery_status_name (PmxRcptState state)
{
  switch (state)
    {
    case PMX_RCPT_STATE_DELIVERED: return "delivered";
    case PMX_RCPT_STATE_DEFERRED: return "deferred";
    case PMX_RCPT_STATE_BOUNCED: return "bounced";
    case PMX_RCPT_STATE_EXPIRED: return "expired";
    case PMX_RCPT_STATE_QUEUED:
    default: return "queued";
    }
}

/* delivery_append_uint - @value in decimal (no printf: this runs for
 * every delivery) */
static void
delivery_append_uint (GString *s,
                      guint64  value)
{
  char digits[24];
  gsize n = sizeof digits;

  do
    digits[--n] = (char) ('0' + value % 10);
  while ((value /= 10) != 0);
  g_string_append_len (s, digits + n, (gssize) (sizeof digits - n));
}

/* delivery_append_reply - "CODE ENHANCED TEXT" of @o's reply ("CODE TEXT"
 * without an enhanced code) */
static void
delivery_append_reply (GString                   *s,
                       const PmxAttemptRecipient *o)
{
  delivery_append_uint (s, o->code);
  if (o->enhanced != NULL)
    {
      g_string_append_c (s, ' ');
      g_string_append (s, o->enhanced);
    }
  g_string_append_c (s, ' ');
  if (o->text != NULL)
    g_string_append (s, o->text);
}

/* delivery_summary - one line for the attempt: each outcome once, with
 * its count and the first reply that gave it, e.g.
 * "delivered 2 (250 2.0.0 ok); bounced 1 (550 5.1.1 no such user)" */
static char *
delivery_summary (const PmxAttemptRecipient *outcomes,
                  gsize                      n)
{
  static const PmxRcptState order[] = {
    PMX_RCPT_STATE_DELIVERED, PMX_RCPT_STATE_DEFERRED, PMX_RCPT_STATE_BOUNCED, PMX_RCPT_STATE_EXPIRED,
  };
  GString *s = g_string_new (NULL);

  for (gsize k = 0; k < G_N_ELEMENTS (order); k++)
    {
      const PmxAttemptRecipient *first = NULL;
      guint count = 0;

      for (gsize i = 0; i < n; i++)
        if (outcomes[i].state == order[k])
          {
            first = first != NULL ? first : &outcomes[i];
            count++;
          }
      if (first == NULL)
        continue;
      if (s->len > 0)
        g_string_append (s, "; ");
      g_string_append (s, delivery_status_name (order[k]));
      g_string_append_c (s, ' ');
      delivery_append_uint (s, count);
      g_string_append (s, " (");
      delivery_append_reply (s, first);
      g_string_append_c (s, ')');
    }
  return g_string_free (s, FALSE);
}

/* delivery_log_line - "to=<A>, transport=T, route=R, delay=S.CC,
 * attempt=N, status=STATE (REPLY)[, retry_in=Ns | , failover=T]", the
 * Postfix-like line logged for one recipient */
static char *
delivery_log_line (const PmxAttemptRecipient *o,
                   const char                *transport,
                   const char                *route,
                   gint64                     delay_usec,
                   guint                      attempt,
                   const char                *when)
{
  GString *s = g_string_sized_new (160);
  guint64 centis = delay_usec > 0 ? ((guint64) delay_usec + 5000) / 10000 : 0;

  g_string_append (s, "to=<");
  g_string_append (s, o->address);
  g_string_append (s, ">, transport=");
  g_string_append (s, transport);
  g_string_append (s, ", route=");
  g_string_append (s, route);
  g_string_append (s, ", delay=");
  delivery_append_uint (s, centis / 100);
  g_string_append_c (s, '.');
  g_string_append_c (s, (char) ('0' + centis / 10 % 10));
  g_string_append_c (s, (char) ('0' + centis % 10));
  g_string_append (s, ", attempt=");
  delivery_append_uint (s, attempt);
  g_string_append (s, ", status=");
  g_string_append (s, delivery_status_name (o->state));
  g_string_append (s, " (");
  delivery_append_reply (s, o);
  g_string_append_c (s, ')');
  if (when != NULL)
    g_string_append (s, when);
  return g_string_free (s, FALSE);
}

/* delivery_run - one attempt of @job on @pool's transport */
static void
delivery_run (DeliveryPool *pool,
              PmxSession  **session,
              DeliveryJob  *job)
{
  PmxDelivery *delivery = pool->delivery;
  PmxQueueMessage *msg = job->msg;
  const PmxTransportOps *ops = pmx_instance_get_ops (pool->instance);
  const char *transport = pmx_instance_get_name (pool->instance);
  const PmxRetryConfig *retry = &job->config->retry;
  g_autoptr(GPtrArray) pending = g_ptr_array_new ();
  g_autoptr(PmxResult) result = NULL;
  g_autofree PmxAttemptRecipient *outcomes = NULL;
  g_autofree char *summary = NULL;
  PmxEnvelope envelope = { 0, };
  PmxAttempt attempt = { 0, };
  PmxFailureClass failure = PMX_FAILURE_NONE;
  gboolean any_deferred = FALSE;
  g_autoptr(GError) error = NULL;
  DeliveryCommit *commit;
  gint64 now;

  for (guint i = 0; i < msg->recipients->len; i++)
    {
      PmxQueueRecipient *r = g_ptr_array_index (msg->recipients, i);

      if (r->state == PMX_RCPT_STATE_QUEUED || r->state == PMX_RCPT_STATE_DEFERRED)
        g_ptr_array_add (pending, r->address);
    }
  g_ptr_array_add (pending, NULL);

  result = pmx_result_new (pending->len - 1);
  attempt.started = g_get_real_time ();
  if (*session == NULL)
    *session = ops->open_session (pmx_instance_get_transport (pool->instance), &error);
  if (*session == NULL)
    {
      PmxFailureClass klass = PMX_FAILURE_TEMPORARY;

      if (error != NULL && error->domain == PMX_TRANSPORT_ERROR)
        klass = error->code == PMX_TRANSPORT_ERROR_PERMANENT ? PMX_FAILURE_PERMANENT
                : error->code == PMX_TRANSPORT_ERROR_AUTH ? PMX_FAILURE_AUTH
                : error->code == PMX_TRANSPORT_ERROR_CONFIG ? PMX_FAILURE_CONFIG
                : PMX_FAILURE_TEMPORARY;
      pmx_result_fail (result, klass, 0, klass == PMX_FAILURE_PERMANENT ? "5.0.0" : "4.0.0",
                       "cannot open a session: %s",
                       error != NULL ? error->message : "the transport gave no reason");
    }
  else
    {
      gsize len = 0;
      const guint8 *data = g_bytes_get_data (msg->data, &len);

      envelope.queue_id = msg->id;
      envelope.sender = msg->sender;
      envelope.recipients = (const char *const *) pending->pdata;
      envelope.n_recipients = pending->len - 1;
      envelope.attempt = msg->attempts + 1;
      envelope.ingress = msg->ingress;
      ops->send (*session, &envelope, data, len, result);
    }
  attempt.finished = now = g_get_real_time ();
  failure = pmx_result_get_failure (result);
  {
    const char *reason = NULL;
    gint64 pause = pmx_result_get_pause (result, &reason);

    if (pause >= 0)
      {
        g_mutex_lock (&delivery->lock);
        delivery_pause (delivery, transport, now + MAX (pause, 1) * PMX_USEC_PER_SEC, reason);
        g_mutex_unlock (&delivery->lock);
      }
  }

  if (*session != NULL && (failure != PMX_FAILURE_NONE || pmx_result_get_session_broken (result)))
    {
      ops->close_session (*session);
      *session = NULL;
    }

  outcomes = g_new0 (PmxAttemptRecipient, MAX (pending->len - 1, 1));
  for (guint i = 0; i + 1 < pending->len; i++)
    {
      const PmxResultRecipient *rr = pmx_result_get_recipient (result, i);
      PmxAttemptRecipient *o = &outcomes[i];

      o->address = g_ptr_array_index (pending, i);
      o->code = rr->code;
      o->enhanced = rr->enhanced;
      o->text = rr->text;
      switch (rr->status)
        {
        case PMX_RCPT_DELIVERED:
          o->state = PMX_RCPT_STATE_DELIVERED;
          break;
        case PMX_RCPT_BOUNCED:
          o->state = PMX_RCPT_STATE_BOUNCED;
          break;
        case PMX_RCPT_PENDING:
          o->text = "transport reported no outcome";
          G_GNUC_FALLTHROUGH;
        case PMX_RCPT_DEFERRED:
        default:
          o->state = PMX_RCPT_STATE_DEFERRED;
          any_deferred = TRUE;
          break;
        }
    }

  /* Deferred recipients: fail over at once, or wait out the back-off; the
   * last try is at the expiry time, and a deferral then expires them with
   * the reply they got. */
  if (any_deferred)
    {
      gint64 retry_after = pmx_result_get_retry_after (result);
      gint64 deadline = msg->received + retry->max_age;
      gboolean whole_temporary = failure == PMX_FAILURE_TEMPORARY || failure == PMX_FAILURE_AUTH;

      if (whole_temporary && job->failover != NULL)
        {
          attempt.next_transport = job->failover;
          attempt.next_attempt = now;
        }
      else if (now >= deadline)
        {
          for (guint i = 0; i + 1 < pending->len; i++)
            if (outcomes[i].state == PMX_RCPT_STATE_DEFERRED)
              outcomes[i].state = PMX_RCPT_STATE_EXPIRED;
        }
      else
        {
          gint64 delay = retry_after >= 0 ? retry_after * PMX_USEC_PER_SEC
                                          : delivery_jitter (retry, pmx_delivery_backoff (retry, msg->attempts + 1));

          attempt.next_attempt = MIN (now + delay, deadline);
          if (job->strategy == PMX_STRATEGY_ROUND_ROBIN && whole_temporary)
            attempt.next_transport = job->failover;
        }
    }

  if (failure != PMX_FAILURE_NONE)
    summary = g_strdup (pmx_result_get_failure_text (result));
  else
    summary = delivery_summary (outcomes, pending->len - 1);

  attempt.transport = transport;
  attempt.recipients = outcomes;
  attempt.n_recipients = pending->len - 1;
  attempt.covers_all = attempt.n_recipients == msg->recipients->len;
  attempt.summary = summary;
  attempt.remote_id = pmx_result_get_remote_id (result);

  /* The log lines are made here, on the worker, and written by
   * delivery_committed() once the outcome is durable. */
  commit = delivery_commit_new (delivery, transport, job->route, attempt.n_recipients);
  for (guint i = 0; i < attempt.n_recipients; i++)
    {
      const PmxAttemptRecipient *o = &outcomes[i];
      g_autofree char *when = NULL;

      if (o->state == PMX_RCPT_STATE_DEFERRED)
        when = attempt.next_transport != NULL && attempt.next_attempt <= now
                 ? g_strdup_printf (", failover=%s", attempt.next_transport)
                 : g_strdup_printf (", retry_in=%" G_GINT64_FORMAT "s",
                                    (attempt.next_attempt - now + PMX_USEC_PER_SEC / 2) / PMX_USEC_PER_SEC);
      commit->lines[i].level = o->state == PMX_RCPT_STATE_DELIVERED ? G_LOG_LEVEL_INFO : G_LOG_LEVEL_WARNING;
      commit->lines[i].text = delivery_log_line (o, transport, job->route, now - msg->received,
                                                 msg->attempts + 1, when);
    }

  /* Sent: the job now waits for its commit, not for a worker. */
  g_mutex_lock (&delivery->lock);
  delivery->committing++;
  delivery_kick (delivery);
  g_mutex_unlock (&delivery->lock);
  pmx_queue_complete_async (delivery->queue, msg->id, &attempt, delivery_committed, commit);
}

/* delivery_postpone_if_paused - a job whose transport is paused goes back
 * to the queue untried: to the route's next transport at once when it has
 * one (as a temporary failure would), else due when the pause ends; TRUE
 * when @job was taken care of (and freed) */
static gboolean
delivery_postpone_if_paused (DeliveryPool *pool,
                             DeliveryJob  *job)
{
  PmxDelivery *delivery = pool->delivery;
  const char *transport = pmx_instance_get_name (pool->instance);
  g_autoptr(GError) error = NULL;
  gboolean fail_over;
  gint64 until, now;

  /* The common case, nothing paused, costs no lock per message. */
  if (g_atomic_int_get (&delivery->n_pauses) == 0)
    return FALSE;
  now = g_get_real_time ();
  g_mutex_lock (&delivery->lock);
  until = delivery_paused_until (delivery, transport, now);
  /* A failover that is paused too is no way out: wait (no ping-pong). */
  fail_over = until != 0 && job->failover != NULL && strcmp (job->failover, transport) != 0
              && delivery_paused_until (delivery, job->failover, now) == 0;
  g_mutex_unlock (&delivery->lock);
  if (until == 0)
    return FALSE;
  if (!pmx_queue_postpone (delivery->queue, job->msg->id, fail_over ? 0 : until,
                           fail_over ? job->failover : NULL, &error))
    pmx_log_warning (job->msg->id, transport, "cannot give the message back to the queue: %s — it returns when its lease expires",
                     error->message);
  else if (fail_over)
    pmx_log_info (job->msg->id, transport, "transport %s is rate limited: failover=%s", transport, job->failover);
  job_free (job);
  g_mutex_lock (&delivery->lock);
  delivery->inflight--;
  if (fail_over)
    {
      delivery->wake = TRUE;   /* due now: lease it again without waiting for the poll */
      g_cond_signal (&delivery->cond);
    }
  delivery_kick (delivery);
  g_mutex_unlock (&delivery->lock);
  return TRUE;
}

/* delivery_worker - thread body: take jobs, keep the session between them */
static gpointer
delivery_worker (gpointer data)
{
  DeliveryPool *pool = data;
  const PmxTransportOps *ops = pmx_instance_get_ops (pool->instance);
  PmxSession *session = NULL;

  for (;;)
    {
      gpointer item = g_async_queue_timeout_pop (pool->jobs, DELIVERY_IDLE_USEC);

      if (item == NULL)
        {
          if (session != NULL)
            {
              ops->close_session (session);
              session = NULL;
            }
          continue;
        }
      if (item == &delivery_stop_marker)
        break;
      if (delivery_postpone_if_paused (pool, item))
        continue;
      /* delivery_committed() counts the job out once it is recorded. */
      delivery_run (pool, &session, item);
      job_free (item);
    }
  if (session != NULL)
    ops->close_session (session);
  return NULL;
}

/* pool_new - a pool with its workers started */
static DeliveryPool *
pool_new (PmxDelivery *delivery,
          PmxInstance *instance)
{
  DeliveryPool *pool = g_new0 (DeliveryPool, 1);
  guint n = pmx_instance_get_concurrency (instance);

  pool->delivery = delivery;
  pool->instance = pmx_instance_ref (instance);
  pool->jobs = g_async_queue_new ();
  pool->threads = g_ptr_array_new ();
  for (guint i = 0; i < n; i++)
    {
      g_autofree char *name = g_strdup_printf ("pmx-%s-%u", pmx_instance_get_name (instance), i);

      g_ptr_array_add (pool->threads, g_thread_new (name, delivery_worker, pool));
    }
  return pool;
}

/* pool_drain - take every job not yet started into @drained (still
 * counted in inflight); lock held.  delivery_unlease() gives them back. */
static void
pool_drain (DeliveryPool *pool,
            GPtrArray    *drained)
{
  gpointer item;

  while ((item = g_async_queue_try_pop (pool->jobs)) != NULL)
    g_ptr_array_add (drained, item);
}

/* delivery_unlease - give drained jobs back to the queue and count them
 * out; lock NOT held, since the queue's writer may be waiting for it */
static void
delivery_unlease (PmxDelivery *delivery,
                  GPtrArray   *drained)
{
  for (guint i = 0; i < drained->len; i++)
    {
      DeliveryJob *job = g_ptr_array_index (drained, i);
      g_autoptr(GError) error = NULL;

      if (!pmx_queue_unlease (delivery->queue, job->msg->id, &error))
        pmx_log_warning (job->msg->id, NULL,
                         "cannot give the message back to the queue: %s", error->message);
    }
  g_mutex_lock (&delivery->lock);
  delivery->inflight -= drained->len;
  delivery_kick (delivery);
  g_mutex_unlock (&delivery->lock);
  g_ptr_array_set_size (drained, 0);
}

/* pool_retire - drain into @drained and tell every worker to stop; lock held */
static void
pool_retire (DeliveryPool *pool,
             PmxDelivery  *delivery,
             GPtrArray    *drained)
{
  pool_drain (pool, drained);
  for (guint i = 0; i < pool->threads->len; i++)
    g_async_queue_push (pool->jobs, &delivery_stop_marker);
  g_ptr_array_add (delivery->retired, pool);
}

/* pool_join_free - wait for a retired pool's workers and free it */
static void
pool_join_free (DeliveryPool *pool)
{
  for (guint i = 0; i < pool->threads->len; i++)
    g_thread_join (g_ptr_array_index (pool->threads, i));
  g_ptr_array_unref (pool->threads);
  g_async_queue_unref (pool->jobs);
  pmx_instance_unref (pool->instance);
  g_free (pool);
}

PmxDelivery *
pmx_delivery_new (PmxQueue        *queue,
                  PmxPluginLoader *loader,
                  const char      *owner)
{
  PmxDelivery *delivery = g_new0 (PmxDelivery, 1);

  delivery->queue = queue;
  delivery->loader = loader;
  delivery->owner = g_strdup (owner);
  g_mutex_init (&delivery->lock);
  g_cond_init (&delivery->cond);
  g_cond_init (&delivery->idle_cond);
  delivery->pools = g_hash_table_new_full (g_str_hash, g_str_equal, g_free, NULL);
  delivery->retired = g_ptr_array_new ();
  delivery->pauses = g_hash_table_new_full (g_str_hash, g_str_equal, g_free, pause_free);
  return delivery;
}

gboolean
pmx_delivery_apply (PmxDelivery *delivery,
                    PmxConfig   *config,
                    GError     **error)
{
  g_autoptr(GHashTable) built = g_hash_table_new_full (g_str_hash, g_str_equal, NULL,
                                                       (GDestroyNotify) pmx_instance_unref);
  g_autoptr(GPtrArray) drained = g_ptr_array_new_with_free_func ((GDestroyNotify) job_free);
  GHashTableIter iter;
  gpointer key, value;

  /* Build every new or changed instance first: a failure changes nothing. */
  for (guint i = 0; i < config->transports->len; i++)
    {
      PmxTransportConfig *tc = g_ptr_array_index (config->transports, i);
      DeliveryPool *pool;
      PmxInstance *instance;

      g_mutex_lock (&delivery->lock);
      pool = g_hash_table_lookup (delivery->pools, tc->name);
      instance = pool != NULL && pmx_instance_matches (pool->instance, tc) ? pool->instance : NULL;
      g_mutex_unlock (&delivery->lock);
      if (instance != NULL)
        continue;
      instance = pmx_instance_new (delivery->loader, config, tc, NULL, error);
      if (instance == NULL)
        return FALSE;
      g_hash_table_insert (built, tc->name, instance);
    }

  g_mutex_lock (&delivery->lock);
  /* Retire pools the new config drops or changes. */
  g_hash_table_iter_init (&iter, delivery->pools);
  while (g_hash_table_iter_next (&iter, &key, &value))
    {
      const PmxTransportConfig *tc = pmx_config_get_transport (config, key);

      if (tc == NULL || g_hash_table_contains (built, key))
        {
          pmx_log_info (NULL, key, "transport %s retired by the new config; its in-flight sends finish first", (char *) key);
          pool_retire (value, delivery, drained);
          g_hash_table_iter_remove (&iter);
        }
    }
  g_hash_table_iter_init (&iter, built);
  while (g_hash_table_iter_next (&iter, &key, &value))
    g_hash_table_insert (delivery->pools, g_strdup (key), pool_new (delivery, value));

  g_clear_pointer (&delivery->router, pmx_router_free);
  g_clear_pointer (&delivery->config, pmx_config_unref);
  delivery->config = pmx_config_ref (config);
  delivery->router = pmx_router_new (config);
  delivery->wake = TRUE;
  g_cond_signal (&delivery->cond);
  g_mutex_unlock (&delivery->lock);
  delivery_unlease (delivery, drained);
  return TRUE;
}

/* delivery_capacity - how many more jobs to lease now: the send window
 * minus what waits for or is in a send, and never past
 * DELIVERY_COMMIT_WINDOW outcomes waiting for their commit; lock held */
static guint
delivery_capacity (PmxDelivery *delivery)
{
  guint window = delivery_send_window (delivery);
  guint unsent = delivery->inflight - delivery->committing;
  guint room = window > unsent ? window - unsent : 0;

  if (delivery->committing >= DELIVERY_COMMIT_WINDOW)
    return 0;
  return MIN (room, DELIVERY_COMMIT_WINDOW - delivery->committing);
}

/* delivery_dispatch - route leased messages to pools; lock held */
static void
delivery_dispatch (PmxDelivery *delivery,
                   GPtrArray   *messages,
                   GPtrArray   *orphans)
{
  for (guint i = 0; i < messages->len; i++)
    {
      PmxQueueMessage *msg = g_ptr_array_index (messages, i);
      g_autoptr(GPtrArray) pending = g_ptr_array_new ();
      PmxRouteInput input = { 0, };
      PmxRouteDecision decision = { 0, };
      const PmxRouteConfig *route = NULL;
      DeliveryPool *pool;
      DeliveryJob *job;

      for (guint j = 0; j < msg->recipients->len; j++)
        {
          PmxQueueRecipient *r = g_ptr_array_index (msg->recipients, j);

          if (r->state == PMX_RCPT_STATE_QUEUED || r->state == PMX_RCPT_STATE_DEFERRED)
            g_ptr_array_add (pending, r->address);
        }
      input.sender = msg->sender;
      input.recipients = (const char *const *) pending->pdata;
      input.n_recipients = pending->len;
      input.ingress = msg->ingress;
      input.data = msg->data;
      input.next_transport = msg->next_transport;
      pmx_router_decide (delivery->router, &input, &decision);
      for (guint j = 0; j < delivery->config->routes->len; j++)
        if (strcmp (((PmxRouteConfig *) g_ptr_array_index (delivery->config->routes, j))->name, decision.route) == 0)
          route = g_ptr_array_index (delivery->config->routes, j);

      pool = g_hash_table_lookup (delivery->pools, decision.transport);
      if (pool == NULL)
        {
          /* Config checks make this unreachable; never lose the message. */
          pmx_log_critical (msg->id, decision.transport, "no workers for transport %s; the message stays queued",
                            decision.transport);
          g_ptr_array_add (orphans, g_strdup (msg->id));
          continue;
        }
      job = g_new0 (DeliveryJob, 1);
      job->msg = msg;
      job->config = pmx_config_ref (delivery->config);
      job->route = g_strdup (decision.route);
      job->failover = g_strdup (decision.failover);
      job->strategy = route != NULL ? route->strategy : PMX_STRATEGY_FAILOVER;
      messages->pdata[i] = NULL;
      delivery->inflight++;
      g_async_queue_push (pool->jobs, job);
    }
}

/* delivery_reap - free retired pools whose workers have all stopped; lock held */
static void
delivery_reap (PmxDelivery *delivery)
{
  for (guint i = 0; i < delivery->retired->len;)
    {
      DeliveryPool *pool = g_ptr_array_index (delivery->retired, i);

      /* Each worker takes exactly one stop marker and exits: none left
       * means all of them are through. */
      if (g_async_queue_length (pool->jobs) <= 0)
        {
          g_ptr_array_remove_index_fast (delivery->retired, i);
          g_mutex_unlock (&delivery->lock);
          pool_join_free (pool);
          g_mutex_lock (&delivery->lock);
        }
      else
        i++;
    }
}

/* delivery_dispatcher - thread body: lease, route, sleep until due */
static gpointer
delivery_dispatcher (gpointer data)
{
  PmxDelivery *delivery = data;
  gint64 next_purge = 0;

  g_mutex_lock (&delivery->lock);
  while (!delivery->stopping)
    {
      guint capacity = delivery_capacity (delivery);
      gint64 now = g_get_real_time ();
      gint64 wait_until = g_get_monotonic_time () + DELIVERY_POLL_USEC;
      gint64 lease = delivery->config->lease;
      g_autoptr(GError) error = NULL;

      delivery->wake = FALSE;
      delivery_reap (delivery);
      if (capacity > 0)
        {
          g_autoptr(GPtrArray) leased = NULL;
          g_autoptr(GPtrArray) orphans = g_ptr_array_new_with_free_func (g_free);

          g_mutex_unlock (&delivery->lock);
          leased = pmx_queue_lease_due (delivery->queue, now, capacity, delivery->owner, now + lease, &error);
          g_mutex_lock (&delivery->lock);
          if (leased == NULL)
            pmx_log_warning (NULL, NULL, "cannot lease due messages: %s", error->message);
          else if (leased->len > 0)
            {
              delivery_dispatch (delivery, leased, orphans);
              if (orphans->len > 0)
                {
                  g_mutex_unlock (&delivery->lock);
                  for (guint i = 0; i < orphans->len; i++)
                    (void) pmx_queue_unlease (delivery->queue, g_ptr_array_index (orphans, i), NULL);
                  g_mutex_lock (&delivery->lock);
                }
              if (leased->len == capacity)
                {
                  /* More may be due: lease again once half a window is free. */
                  while (!delivery->stopping
                         && delivery_capacity (delivery) < delivery_send_window (delivery) / 2)
                    {
                      delivery->wake = FALSE;
                      g_cond_wait (&delivery->cond, &delivery->lock);
                    }
                  continue;
                }
            }
          else
            {
              gint64 next_due;

              g_mutex_unlock (&delivery->lock);
              next_due = pmx_queue_next_due (delivery->queue, NULL);
              g_mutex_lock (&delivery->lock);
              if (next_due != G_MAXINT64 && next_due - now < DELIVERY_POLL_USEC)
                wait_until = g_get_monotonic_time () + MAX (next_due - now, 1000);
            }
        }
      if (now >= next_purge)
        {
          gint64 retention = delivery->config->retention;

          g_mutex_unlock (&delivery->lock);
          (void) pmx_queue_purge (delivery->queue, now - retention, NULL);
          g_mutex_lock (&delivery->lock);
          next_purge = now + DELIVERY_PURGE_USEC;
        }
      while (!delivery->wake && !delivery->stopping)
        if (!g_cond_wait_until (&delivery->cond, &delivery->lock, wait_until))
          break;
    }
  g_mutex_unlock (&delivery->lock);
  return NULL;
}

void
pmx_delivery_start (PmxDelivery *delivery)
{
  g_return_if_fail (delivery->config != NULL);
  g_return_if_fail (delivery->dispatcher == NULL);

  delivery->dispatcher = g_thread_new ("pmx-dispatch", delivery_dispatcher, delivery);
}

void
pmx_delivery_wake (PmxDelivery *delivery)
{
  g_mutex_lock (&delivery->lock);
  delivery->wake = TRUE;
  g_cond_signal (&delivery->cond);
  g_mutex_unlock (&delivery->lock);
}

guint
pmx_delivery_stop (PmxDelivery *delivery,
                   gint64       timeout_usec)
{
  gint64 deadline = g_get_monotonic_time () + timeout_usec;
  g_autoptr(GPtrArray) drained = g_ptr_array_new_with_free_func ((GDestroyNotify) job_free);
  GHashTableIter iter;
  gpointer value;
  guint left;

  g_mutex_lock (&delivery->lock);
  delivery->stopping = TRUE;
  g_cond_signal (&delivery->cond);
  g_mutex_unlock (&delivery->lock);
  if (delivery->dispatcher != NULL)
    g_thread_join (g_steal_pointer (&delivery->dispatcher));

  g_mutex_lock (&delivery->lock);
  g_hash_table_iter_init (&iter, delivery->pools);
  while (g_hash_table_iter_next (&iter, NULL, &value))
    {
      pool_retire (value, delivery, drained);
      g_hash_table_iter_remove (&iter);
    }
  g_mutex_unlock (&delivery->lock);
  delivery_unlease (delivery, drained);
  g_mutex_lock (&delivery->lock);
  /* inflight counts outcomes not yet committed too: every one is durable
   * before this returns 0 (and the caller closes the queue). */
  while (delivery->inflight > 0)
    if (!g_cond_wait_until (&delivery->idle_cond, &delivery->lock, deadline))
      break;
  left = delivery->inflight;
  if (left == 0)
    delivery_reap (delivery);
  g_mutex_unlock (&delivery->lock);
  return left;
}

void
pmx_delivery_free (PmxDelivery *delivery)
{
  if (delivery == NULL)
    return;
  g_return_if_fail (delivery->dispatcher == NULL);

  g_mutex_lock (&delivery->lock);
  delivery_reap (delivery);
  g_mutex_unlock (&delivery->lock);
  g_hash_table_unref (delivery->pools);
  g_ptr_array_unref (delivery->retired);
  g_hash_table_unref (delivery->pauses);
  g_clear_pointer (&delivery->router, pmx_router_free);
  g_clear_pointer (&delivery->config, pmx_config_unref);
  g_mutex_clear (&delivery->lock);
  g_cond_clear (&delivery->cond);
  g_cond_clear (&delivery->idle_cond);
  g_free (delivery->owner);
  g_free (delivery);
}

JsonNode *
pmx_delivery_dup_transport_states (PmxDelivery *delivery)
{
  g_autoptr(JsonBuilder) b = json_builder_new ();
  gint64 now = g_get_real_time ();
  g_autoptr(GList) names = NULL;

  g_mutex_lock (&delivery->lock);
  json_builder_begin_object (b);
  names = g_list_sort (g_hash_table_get_keys (delivery->pools), (GCompareFunc) strcmp);
  for (GList *l = names; l != NULL; l = l->next)
    {
      const char *name = l->data;
      gint64 until = delivery_paused_until (delivery, name, now);

      json_builder_set_member_name (b, name);
      json_builder_begin_object (b);
      json_builder_set_member_name (b, "state");
      json_builder_add_string_value (b, until > 0 ? "rate_limited" : "ok");
      if (until > 0)
        {
          DeliveryPause *pause = g_hash_table_lookup (delivery->pauses, name);
          g_autoptr(GDateTime) when = g_date_time_new_from_unix_utc (until / PMX_USEC_PER_SEC);
          g_autofree char *stamp = g_date_time_format_iso8601 (when);

          json_builder_set_member_name (b, "rate_limited_until");
          json_builder_add_string_value (b, stamp);
          json_builder_set_member_name (b, "reason");
          json_builder_add_string_value (b, pause->reason);
        }
      json_builder_end_object (b);
    }
  json_builder_end_object (b);
  g_mutex_unlock (&delivery->lock);
  return json_builder_get_root (b);
}

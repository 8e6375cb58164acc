/* SPDX-License-Identifier: GPL-3.0-or-later */
/*
 * pmx-queue.h - the durable message queue (SQLite, WAL).
 *
 * Every write goes through one writer thread that commits in groups: many
 * submissions (and delivery results) that arrive within a millisecond or two
 * share one transaction and one fsync, and each caller is answered only after
 * the commit that holds its work is durable (synchronous=FULL).
 *
 * Message states: queued -> inflight (leased) -> delivered | deferred |
 * bounced | expired.  Deferred messages return to inflight when due.
 * Recipients carry their own state; a message is final when none of its
 * recipients is queued or deferred any more.
 *
 * Several processes may open one queue file (the daemon, `postmux queue`,
 * `postmux send` when the daemon is down): SQLite's locking and a busy
 * timeout keep them apart.
 */
#pragma once

#include <gio/gio.h>

G_BEGIN_DECLS

#define PMX_QUEUE_ERROR (pmx_queue_error_quark ())
typedef enum {
  PMX_QUEUE_ERROR_FAILED,
  PMX_QUEUE_ERROR_OPEN,        /* cannot open or create the database */
  PMX_QUEUE_ERROR_BUSY,        /* locked for longer than the busy timeout */
  PMX_QUEUE_ERROR_FULL,        /* disk full */
  PMX_QUEUE_ERROR_NOT_FOUND,   /* no message with that id */
  PMX_QUEUE_ERROR_CLOSED,      /* the queue is shutting down */
  PMX_QUEUE_ERROR_INVALID,     /* bad argument from a user (empty recipients...) */
} PmxQueueErrorCode;

GQuark pmx_queue_error_quark (void);

typedef enum {
  PMX_MSG_QUEUED,
  PMX_MSG_INFLIGHT,
  PMX_MSG_DEFERRED,
  PMX_MSG_DELIVERED,
  PMX_MSG_BOUNCED,
  PMX_MSG_EXPIRED,
} PmxMsgState;

typedef enum {
  PMX_RCPT_STATE_QUEUED,
  PMX_RCPT_STATE_DELIVERED,
  PMX_RCPT_STATE_DEFERRED,
  PMX_RCPT_STATE_BOUNCED,
  PMX_RCPT_STATE_EXPIRED,
} PmxRcptState;

const char *pmx_msg_state_to_string   (PmxMsgState state);
gboolean    pmx_msg_state_from_string (const char *str, PmxMsgState *out_state);
const char *pmx_rcpt_state_to_string  (PmxRcptState state);

typedef struct {
  char        *address;
  PmxRcptState state;
  guint        code;       /* last remote reply code, 0 if none */
  char        *enhanced;   /* last RFC 3463 code, or NULL */
  char        *text;       /* last reply text, or NULL */
} PmxQueueRecipient;

typedef struct {
  char        *id;              /* 16 upper-case hex digits, time-ordered */
  gint64       received;        /* unix time, microseconds */
  char        *ingress;         /* "local", "smtp:alice", "api:key1" */
  char        *sender;          /* envelope sender, "" for <> */
  GPtrArray   *recipients;      /* PmxQueueRecipient */
  gsize        size;            /* bytes of data */
  GBytes      *data;            /* raw RFC 5322; NULL when not loaded */
  PmxMsgState  state;
  char        *transport;       /* transport of the last (or current) attempt */
  char        *next_transport;  /* failover: transport the next attempt should use, or NULL */
  guint        attempts;
  gint64       next_attempt;    /* unix time, microseconds */
  char        *last_reply;      /* text of the last outcome, or NULL */
  char        *idempotency_key; /* or NULL */
} PmxQueueMessage;

void pmx_queue_message_free (PmxQueueMessage *msg);

/* What a door into the queue hands over.  Strings are borrowed. */
typedef struct {
  const char        *ingress;
  const char        *sender;
  const char *const *recipients;
  gsize              n_recipients;
  GBytes            *data;
  const char        *idempotency_key;   /* NULL for none */
} PmxSubmission;

/* One delivery attempt's outcome for one recipient. */
typedef struct {
  const char  *address;
  PmxRcptState state;       /* DELIVERED, DEFERRED, BOUNCED or EXPIRED */
  guint        code;
  const char  *enhanced;
  const char  *text;
} PmxAttemptRecipient;

/* The outcome of one attempt, decided by the delivery engine. */
typedef struct {
  const char                *transport;
  gint64                     started;       /* microseconds */
  gint64                     finished;      /* microseconds */
  const PmxAttemptRecipient *recipients;    /* only the recipients of this attempt */
  gsize                      n_recipients;
  const char                *summary;       /* one line for the log, e.g. "451 4.3.0 try later" */
  const char                *remote_id;     /* provider's message id, or NULL */
  gint64                     next_attempt;  /* when any recipient stays deferred */
  const char                *next_transport;/* failover target, or NULL */
  gboolean                   covers_all;    /* @recipients are all the message has (a
                                             * first attempt): the message's state
                                             * follows from them without a read */
} PmxAttempt;

/* One row of the append-only attempts log. */
typedef struct {
  gint64 started;
  gint64 finished;
  char  *transport;
  char  *summary;
  char  *remote_id;
  char  *outcomes;   /* one line per recipient: "addr state code enhanced text" */
} PmxQueueAttemptRecord;

void pmx_queue_attempt_record_free (PmxQueueAttemptRecord *rec);

typedef struct _PmxQueue PmxQueue;

/* Open (creating if needed) the queue at @path and start its writer. */
PmxQueue *pmx_queue_open  (const char *path,
                           GError    **error);
/* Stop the writer after it has committed what it holds, then close. */
void      pmx_queue_close (PmxQueue   *queue);
/* Stop taking writes (they fail with PMX_QUEUE_ERROR_CLOSED), commit and
 * answer what was already handed over, stop the writer.  Reads still work
 * until pmx_queue_close().  Idempotent; pmx_queue_close() implies it. */
void      pmx_queue_shutdown (PmxQueue *queue);
const char *pmx_queue_get_path (PmxQueue *queue);

/* Submit, blocking the calling thread until the commit is durable.  Not for
 * the main-loop thread: use the async form there.  Returns the new queue
 * id, or the existing one when @sub's idempotency key was seen before from
 * the same ingress (then *@out_duplicate is TRUE). */
char     *pmx_queue_submit        (PmxQueue            *queue,
                                   const PmxSubmission *sub,
                                   gboolean            *out_duplicate,
                                   GError             **error);
/* Same, answered on the thread-default main context of the caller. */
void      pmx_queue_submit_async  (PmxQueue            *queue,
                                   const PmxSubmission *sub,
                                   GCancellable        *cancellable,
                                   GAsyncReadyCallback  callback,
                                   gpointer             user_data);
char     *pmx_queue_submit_finish (PmxQueue            *queue,
                                   GAsyncResult        *result,
                                   gboolean            *out_duplicate,
                                   GError             **error);

/* Lease up to @limit messages whose state is queued or deferred and whose
 * next attempt is due at @now, oldest due first: they become inflight,
 * owned by @owner until @lease_until.  Returns a GPtrArray of
 * PmxQueueMessage with data loaded (transfer full). */
GPtrArray *pmx_queue_lease_due    (PmxQueue   *queue,
                                   gint64      now,
                                   guint       limit,
                                   const char *owner,
                                   gint64      lease_until,
                                   GError    **error);

/* Give leased messages back: all leases held by @owner (at start-up: a
 * previous process of this node died), plus every lease that expired
 * before @now whoever holds it.  Returns how many came back. */
guint      pmx_queue_release_leases (PmxQueue   *queue,
                                     const char *owner,
                                     gint64      now,
                                     GError    **error);

/* Record an attempt on a leased message (group committed, blocking): the
 * recipients named in @attempt take their new state, the attempt joins
 * the log, attempts+1, and the message leaves inflight: delivered when all
 * recipients are delivered, deferred (at attempt->next_attempt) while any
 * is deferred, else bounced (or expired when any recipient expired). */
gboolean   pmx_queue_complete     (PmxQueue         *queue,
                                   const char       *id,
                                   const PmxAttempt *attempt,
                                   GError          **error);

/* Called once per pmx_queue_complete_async(): on the queue's writer thread
 * after the commit that holds the attempt (@error NULL), or with the error
 * that kept it from being recorded (then the message stays leased).  When
 * the queue was already shutting down it runs at once on the caller's
 * thread with PMX_QUEUE_ERROR_CLOSED.  It must be quick and must not call
 * the queue's blocking functions (the writer would wait on itself). */
typedef void (*PmxQueueCompleteFunc) (PmxQueue     *queue,
                                      const char   *id,
                                      const GError *error,
                                      gpointer      user_data);

/* Like pmx_queue_complete() without waiting: @id and @attempt are copied,
 * the attempt joins the next group commit, and @callback says how it went.
 * pmx_queue_shutdown() and pmx_queue_close() commit every completion
 * handed over before them and run its callback. */
void       pmx_queue_complete_async (PmxQueue            *queue,
                                     const char          *id,
                                     const PmxAttempt    *attempt,
                                     PmxQueueCompleteFunc callback,
                                     gpointer             user_data);

/* Put a leased message back unchanged (shutdown before it was tried):
 * inflight -> its previous state, same next attempt, no attempt logged. */
gboolean   pmx_queue_unlease      (PmxQueue   *queue,
                                   const char *id,
                                   GError    **error);

/* Put a leased message back untried and due no earlier than @until (its
 * transport is paused by a rate limit), to be tried next on
 * @next_transport when not NULL (the route's failover): no attempt is
 * counted or logged. */
gboolean   pmx_queue_postpone     (PmxQueue   *queue,
                                   const char *id,
                                   gint64      until,
                                   const char *next_transport,
                                   GError    **error);

/* Earliest next_attempt among queued/deferred messages; G_MAXINT64 if none. */
gint64     pmx_queue_next_due     (PmxQueue   *queue,
                                   GError    **error);

/* Admin. */
GPtrArray       *pmx_queue_list     (PmxQueue    *queue,
                                     const PmxMsgState *states, /* NULL: all */
                                     gsize        n_states,
                                     guint        limit,       /* 0: no limit */
                                     GError     **error);
PmxQueueMessage *pmx_queue_get      (PmxQueue    *queue,
                                     const char  *id,
                                     gboolean     with_data,
                                     GPtrArray  **out_attempts, /* PmxQueueAttemptRecord, may be NULL */
                                     GError     **error);
/* Deferred/bounced/expired recipients go back to queued, due now. */
gboolean         pmx_queue_retry    (PmxQueue    *queue,
                                     const char  *id,
                                     GError     **error);
/* Deferred messages whose last attempt was on @transport (and that wait
 * for it, not for a failover) become due now, recipients unchanged: after
 * `postmux auth login` fixed what held them.  Returns how many, or -1. */
gint64           pmx_queue_hurry_transport (PmxQueue   *queue,
                                            const char *transport,
                                            GError    **error);
gboolean         pmx_queue_delete   (PmxQueue    *queue,
                                     const char  *id,
                                     GError     **error);
/* Count messages in @state. */
gint64           pmx_queue_count    (PmxQueue    *queue,
                                     PmxMsgState  state,
                                     GError     **error);
/* Call @func on every row of the attempt log (oldest first), for metrics.
 * Runs under the queue's read lock: @func must not call the queue. */
typedef void (*PmxQueueAttemptFunc) (const char *transport,  /* may be NULL */
                                     gint64      started,    /* microseconds */
                                     gint64      finished,   /* microseconds */
                                     const char *outcomes,   /* as PmxQueueAttemptRecord.outcomes */
                                     gpointer    user_data);
gboolean         pmx_queue_foreach_attempt (PmxQueue           *queue,
                                            PmxQueueAttemptFunc func,
                                            gpointer            user_data,
                                            GError            **error);
/* Delete delivered messages finished before @before; returns how many. */
gint64           pmx_queue_purge    (PmxQueue    *queue,
                                     gint64       before,
                                     GError     **error);

/* For tests only. */
/* Transactions committed by this queue's writer so far. */
guint64  pmx_queue_get_commit_count (PmxQueue *queue);
/* While held, the writer takes no request, so the next ones share a batch. */
void     pmx_queue_test_hold_writer (PmxQueue *queue,
                                     gboolean  hold);
/* Let the file grow by @extra_pages pages at most (simulates a full disk). */
gboolean pmx_queue_test_limit_pages (PmxQueue *queue,
                                     guint     extra_pages,
                                     GError  **error);

G_DEFINE_AUTOPTR_CLEANUP_FUNC (PmxQueueMessage, pmx_queue_message_free)
G_DEFINE_AUTOPTR_CLEANUP_FUNC (PmxQueueAttemptRecord, pmx_queue_attempt_record_free)

G_END_DECLS

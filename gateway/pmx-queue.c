/* SPDX-License-Identifier: GPL-3.0-or-later */
/*
 * pmx-queue.c - the durable message queue on SQLite (WAL, synchronous=FULL).
 *
 * What: one writer thread owns the write connection.  Every write is a
 * QueueRequest pushed onto queue->pending; the writer takes all that is
 * pending (up to QUEUE_BATCH_MAX), runs them in one BEGIN IMMEDIATE ...
 * COMMIT, and answers each caller only after the COMMIT returned (group
 * commit: one fsync for many submissions).
 * pmx_queue_complete_async() requests own a copy of their attempt and are
 * answered by calling their callback on the writer thread.  No caller waits
 * for those, so the writer lets them gather (QUEUE_GROUP_MIN of them, or
 * QUEUE_GROUP_WAIT_USEC after the first) unless something else is pending,
 * which takes them along at once.  A batch of nothing but leases commits
 * without an fsync (synchronous=NORMAL, still consistent in WAL mode): a
 * lease lost to a power cut only lets the message be leased again, and the
 * next durable commit syncs it anyway, since the WAL is written in order.
 * Reads use a second connection behind queue->read_lock; WAL lets it read
 * while the writer writes.
 *
 * Trusts: the SQLite file and its directory are ours (created 0600 / 0700);
 * other processes that open the same file are Postmux processes using this
 * code.  Callers' strings are UTF-8 and NUL-terminated.
 *
 * Fails: a request-level failure (no such id, unknown recipient) is
 * answered alone: one that changed nothing is simply skipped; after one
 * that changed rows the batch is rolled back and run again with a
 * savepoint around each request (queue_run_requests()).  Anything that aborts
 * the transaction (disk full, I/O error, locked past the busy timeout) is
 * answered to every request of the batch: nothing uncommitted is ever
 * reported as done.  After pmx_queue_shutdown() writes fail with
 * PMX_QUEUE_ERROR_CLOSED.
 */
#include "pmx-queue.h"

#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <unistd.h>

#include <glib/gstdio.h>
#include <sqlite3.h>

#define QUEUE_SCHEMA_VERSION  2
#define QUEUE_BUSY_TIMEOUT_MS 5000
#define QUEUE_BATCH_MAX       512
#define QUEUE_GROUP_MIN       128
#define QUEUE_GROUP_WAIT_USEC 10000
#define QUEUE_ID_TRIES        8
#define QUEUE_ID_SEQ_BITS     20

G_DEFINE_QUARK (pmx-queue-error-quark, pmx_queue_error)

/* GTask source tag of pmx_queue_submit_async() (an object, not a function
 * pointer, so that ISO C lets it pass as a gpointer). */
static const char queue_submit_tag[] = "pmx_queue_submit_async";

/* A prepared statement borrowed from a connection's cache; g_auto() resets
 * it on scope exit so that no read snapshot or lock outlives its use. */
typedef sqlite3_stmt *QueueStmt;
G_DEFINE_AUTO_CLEANUP_FREE_FUNC (QueueStmt, sqlite3_reset, NULL)

typedef struct {
  sqlite3    *db;
  GHashTable *stmts;    /* SQL text (owned) -> sqlite3_stmt */
  GHashTable *literals; /* address of a string literal of SQL -> its statement in stmts */
  const char *path;     /* borrowed from the PmxQueue, for messages */
  int         last_rc;  /* SQLite result code of the last failure */
} QueueConn;

typedef enum {
  QUEUE_OP_SUBMIT,
  QUEUE_OP_LEASE,
  QUEUE_OP_RELEASE,
  QUEUE_OP_COMPLETE,
  QUEUE_OP_UNLEASE,
  QUEUE_OP_POSTPONE,
  QUEUE_OP_RETRY,
  QUEUE_OP_HURRY,
  QUEUE_OP_DELETE,
  QUEUE_OP_PURGE,
  QUEUE_OP_LIMIT_PAGES,
} QueueOp;

typedef struct {
  QueueOp  op;
  gboolean deferrable;   /* COMPLETE from pmx_queue_complete_async(): nobody waits */

  /* SUBMIT: owned copies, since an async caller lends @sub only for the call. */
  char        *ingress;
  char        *sender;
  GPtrArray   *recipients;   /* char*, duplicates removed */
  GBytes      *data;
  char        *key;
  gint64       received;
  GCancellable *cancellable;

  /* Other ops: borrowed from a blocking caller. */
  const char       *id;
  const char       *owner;
  const char       *transport; /* POSTPONE: the next transport, or NULL to keep it */
  gint64            now;     /* LEASE, RELEASE, RETRY; PURGE: before; LIMIT_PAGES: pages */
  gint64            until;   /* LEASE */
  guint             limit;   /* LEASE */
  const PmxAttempt *attempt; /* COMPLETE */

  /* The answer. */
  char      *out_id;
  gboolean   out_duplicate;
  GPtrArray *out_messages;
  gint64     out_count;
  GError    *error;

  /* COMPLETE from pmx_queue_complete_async(): owned copies, and whom to tell. */
  PmxAttempt           attempt_copy;
  GStringChunk        *strings;     /* every string of attempt_copy and id */
  PmxQueueCompleteFunc complete_func;
  gpointer             complete_data;

  /* How the answer travels: a GTask (async submit), complete_func, or
   * lock/cond/done. */
  GTask    *task;
  GMutex    lock;
  GCond     cond;
  gboolean  done;
} QueueRequest;

typedef struct {
  char     *id;
  gboolean  duplicate;
} QueueSubmitResult;

struct _PmxQueue {
  char *path;

  QueueConn  wconn;        /* the writer thread's, once it runs */
  GThread   *writer;

  GMutex     read_lock;    /* protects rconn */
  QueueConn  rconn;

  GMutex     lock;         /* protects pending and the four below it, closing, hold */
  GCond      cond;         /* pending grew, closing or hold changed */
  GQueue     pending;      /* QueueRequest*, oldest first */
  guint      n_urgent;     /* of pending: someone waits for these */
  guint      n_deferred;   /* of pending: deferrable */
  gint64     deferred_since; /* monotonic time the oldest deferrable one came */
  gboolean   relaxed;      /* writer only: the connection runs synchronous=NORMAL */
  gboolean   closing;
  gboolean   hold;         /* tests: writer takes nothing while set */

  guint      commits;      /* atomic: transactions committed by the writer */

  /* The checkpointer: copies the WAL into the database on its own thread
   * and connection, so a commit never waits for a checkpoint's fsyncs. */
  GThread   *checkpointer;
  sqlite3   *cdb;
  GMutex     ck_lock;      /* protects ck_due, ck_stop */
  GCond      ck_cond;
  gboolean   ck_due;
  gboolean   ck_stop;
};

/* WAL pages after which the writer asks for a checkpoint (SQLite's own
 * auto-checkpoint default, which the writer no longer runs itself). */
#define QUEUE_CHECKPOINT_PAGES 4000

static const char *const msg_state_names[] = {
  [PMX_MSG_QUEUED] = "queued",
  [PMX_MSG_INFLIGHT] = "inflight",
  [PMX_MSG_DEFERRED] = "deferred",
  [PMX_MSG_DELIVERED] = "delivered",
  [PMX_MSG_BOUNCED] = "bounced",
  [PMX_MSG_EXPIRED] = "expired",
};

static const char *const rcpt_state_names[] = {
  [PMX_RCPT_STATE_QUEUED] = "queued",
  [PMX_RCPT_STATE_DELIVERED] = "delivered",
  [PMX_RCPT_STATE_DEFERRED] = "deferred",
  [PMX_RCPT_STATE_BOUNCED] = "bounced",
  [PMX_RCPT_STATE_EXPIRED] = "expired",
};

/* The message bytes, apart from the row the lease and every attempt
 * rewrite (schema 2; schema 1 kept them in messages.data). */
#define QUEUE_BODIES_SQL \
  "CREATE TABLE bodies ("  \
  "  id   TEXT PRIMARY KEY NOT NULL REFERENCES messages (id) ON DELETE CASCADE," \
  "  data BLOB NOT NULL"   \
  ");"

static const char queue_schema_sql[] =
  "CREATE TABLE messages ("
  "  id              TEXT PRIMARY KEY NOT NULL,"
  "  received        INTEGER NOT NULL,"
  "  ingress         TEXT NOT NULL,"
  "  sender          TEXT NOT NULL,"
  "  size            INTEGER NOT NULL,"
  "  state           TEXT NOT NULL,"
  "  prev_state      TEXT,"             /* state before the lease, for unlease */
  "  transport       TEXT,"
  "  next_transport  TEXT,"
  "  attempts        INTEGER NOT NULL DEFAULT 0,"
  "  next_attempt    INTEGER NOT NULL,"
  "  last_reply      TEXT,"
  "  idempotency_key TEXT,"
  "  lease_owner     TEXT,"
  "  lease_until     INTEGER,"
  "  finished        INTEGER"
  ");"
  /* Partial: lease_due walks it in order and stops at its LIMIT. */
  "CREATE INDEX messages_due ON messages (next_attempt, id)"
  "  WHERE state IN ('queued', 'deferred');"
  "CREATE INDEX messages_finished ON messages (state, finished);"
  "CREATE UNIQUE INDEX messages_idempotency ON messages (ingress, idempotency_key)"
  "  WHERE idempotency_key IS NOT NULL;"
  "CREATE TABLE recipients ("
  "  message_id TEXT NOT NULL REFERENCES messages (id) ON DELETE CASCADE,"
  "  idx        INTEGER NOT NULL,"
  "  address    TEXT NOT NULL,"
  "  state      TEXT NOT NULL,"
  "  code       INTEGER NOT NULL DEFAULT 0,"
  "  enhanced   TEXT,"
  "  text       TEXT,"
  "  PRIMARY KEY (message_id, idx)"
  ") WITHOUT ROWID;"
  "CREATE TABLE attempts ("
  "  seq        INTEGER PRIMARY KEY,"
  "  message_id TEXT NOT NULL REFERENCES messages (id) ON DELETE CASCADE,"
  "  started    INTEGER NOT NULL,"
  "  finished   INTEGER NOT NULL,"
  "  transport  TEXT,"
  "  summary    TEXT,"
  "  remote_id  TEXT,"
  "  outcomes   TEXT NOT NULL"
  ");"
  "CREATE INDEX attempts_message ON attempts (message_id, seq);"
  QUEUE_BODIES_SQL
  "PRAGMA user_version = 2;";

#define QUEUE_MSG_COLUMNS \
  "id, received, ingress, sender, size, state, transport, next_transport, " \
  "attempts, next_attempt, last_reply, idempotency_key"
#define QUEUE_MSG_COLUMN_DATA 12

/* ---- states ---------------------------------------------------------- */

const char *
pmx_msg_state_to_string (PmxMsgState state)
{
  g_return_val_if_fail ((guint) state < G_N_ELEMENTS (msg_state_names), NULL);
  return msg_state_names[state];
}

gboolean
pmx_msg_state_from_string (const char  *str,
                           PmxMsgState *out_state)
{
  g_return_val_if_fail (str != NULL, FALSE);

  for (guint i = 0; i < G_N_ELEMENTS (msg_state_names); i++)
    {
      if (g_str_equal (str, msg_state_names[i]))
        {
          if (out_state != NULL)
            *out_state = (PmxMsgState) i;
          return TRUE;
        }
    }
  return FALSE;
}

const char *
pmx_rcpt_state_to_string (PmxRcptState state)
{
  g_return_val_if_fail ((guint) state < G_N_ELEMENTS (rcpt_state_names), NULL);
  return rcpt_state_names[state];
}

/* queue_rcpt_state_parse - a stored recipient state; unknown reads as queued */
static PmxRcptState
queue_rcpt_state_parse (const char *str)
{
  for (guint i = 0; str != NULL && i < G_N_ELEMENTS (rcpt_state_names); i++)
    if (g_str_equal (str, rcpt_state_names[i]))
      return (PmxRcptState) i;
  return PMX_RCPT_STATE_QUEUED;
}

/* queue_msg_state_parse - a stored message state; unknown reads as queued */
static PmxMsgState
queue_msg_state_parse (const char *str)
{
  PmxMsgState state = PMX_MSG_QUEUED;

  if (str != NULL)
    pmx_msg_state_from_string (str, &state);
  return state;
}

/* ---- records ---------------------------------------------------------- */

/* queue_recipient_free - free one PmxQueueRecipient */
static void
queue_recipient_free (gpointer data)
{
  PmxQueueRecipient *rcpt = data;

  g_free (rcpt->address);
  g_free (rcpt->enhanced);
  g_free (rcpt->text);
  g_free (rcpt);
}

void
pmx_queue_message_free (PmxQueueMessage *msg)
{
  if (msg == NULL)
    return;
  g_free (msg->id);
  g_free (msg->ingress);
  g_free (msg->sender);
  g_clear_pointer (&msg->recipients, g_ptr_array_unref);
  g_clear_pointer (&msg->data, g_bytes_unref);
  g_free (msg->transport);
  g_free (msg->next_transport);
  g_free (msg->last_reply);
  g_free (msg->idempotency_key);
  g_free (msg);
}

void
pmx_queue_attempt_record_free (PmxQueueAttemptRecord *rec)
{
  if (rec == NULL)
    return;
  g_free (rec->transport);
  g_free (rec->summary);
  g_free (rec->remote_id);
  g_free (rec->outcomes);
  g_free (rec);
}

/* ---- SQLite helpers ---------------------------------------------------- */

/* queue_error_code - the PmxQueueErrorCode for an SQLite result code */
static PmxQueueErrorCode
queue_error_code (int rc)
{
  switch (rc & 0xff)
    {
    case SQLITE_BUSY:
    case SQLITE_LOCKED:
      return PMX_QUEUE_ERROR_BUSY;
    case SQLITE_FULL:
      return PMX_QUEUE_ERROR_FULL;
    case SQLITE_CANTOPEN:
    case SQLITE_NOTADB:
    case SQLITE_PERM:
    case SQLITE_READONLY:
      return PMX_QUEUE_ERROR_OPEN;
    default:
      return PMX_QUEUE_ERROR_FAILED;
    }
}

/* queue_fail - set @error from SQLite result @rc while doing @what; FALSE */
static gboolean
queue_fail (QueueConn  *conn,
            int         rc,
            const char *what,
            GError    **error)
{
  const char *detail;

  conn->last_rc = rc;
  detail = (conn->db != NULL && sqlite3_extended_errcode (conn->db) == rc)
             ? sqlite3_errmsg (conn->db) : sqlite3_errstr (rc);

  switch (queue_error_code (rc))
    {
    case PMX_QUEUE_ERROR_BUSY:
      g_set_error (error, PMX_QUEUE_ERROR, PMX_QUEUE_ERROR_BUSY,
                   "queue %s: %s: still locked after %d s (%s) — another "
                   "process holds a write lock; stop it or retry later",
                   conn->path, what, QUEUE_BUSY_TIMEOUT_MS / 1000, detail);
      break;
    case PMX_QUEUE_ERROR_FULL:
      g_set_error (error, PMX_QUEUE_ERROR, PMX_QUEUE_ERROR_FULL,
                   "queue %s: %s: disk full (%s) — free space on the file "
                   "system that holds the queue", conn->path, what, detail);
      break;
    case PMX_QUEUE_ERROR_OPEN:
      g_set_error (error, PMX_QUEUE_ERROR, PMX_QUEUE_ERROR_OPEN,
                   "queue %s: %s: %s — check that the file is a Postmux queue "
                   "and that it and its directory are readable and writable "
                   "by this user", conn->path, what, detail);
      break;
    default:
      g_set_error (error, PMX_QUEUE_ERROR, PMX_QUEUE_ERROR_FAILED,
                   "queue %s: %s: %s", conn->path, what, detail);
      break;
    }
  return FALSE;
}

/* queue_prepare_text - a cached statement for the SQL text @sql, reset and
 * unbound; NULL on error */
static sqlite3_stmt *
queue_prepare_text (QueueConn  *conn,
                    const char *sql,
                    GError    **error)
{
  sqlite3_stmt *stmt = g_hash_table_lookup (conn->stmts, sql);
  int rc;

  if (stmt != NULL)
    {
      sqlite3_reset (stmt);
      sqlite3_clear_bindings (stmt);
      return stmt;
    }
  rc = sqlite3_prepare_v3 (conn->db, sql, -1, SQLITE_PREPARE_PERSISTENT, &stmt, NULL);
  if (rc != SQLITE_OK)
    {
      queue_fail (conn, rc, "preparing a statement", error);
      return NULL;
    }
  g_hash_table_insert (conn->stmts, g_strdup (sql), stmt);
  return stmt;
}

/* queue_prepare - queue_prepare_text() for @sql that is a string literal:
 * found by its address, without hashing the text each time */
static sqlite3_stmt *
queue_prepare (QueueConn  *conn,
               const char *sql,
               GError    **error)
{
  sqlite3_stmt *stmt = g_hash_table_lookup (conn->literals, sql);

  if (stmt != NULL)
    {
      sqlite3_reset (stmt);
      sqlite3_clear_bindings (stmt);
      return stmt;
    }
  stmt = queue_prepare_text (conn, sql, error);
  if (stmt != NULL)
    g_hash_table_insert (conn->literals, (gpointer) sql, stmt);
  return stmt;
}

/* queue_step - step @stmt; TRUE with *@out_row set, or FALSE and @error */
static gboolean
queue_step (QueueConn    *conn,
            sqlite3_stmt *stmt,
            const char   *what,
            gboolean     *out_row,
            GError      **error)
{
  int rc = sqlite3_step (stmt);

  if (rc == SQLITE_ROW || rc == SQLITE_DONE)
    {
      if (out_row != NULL)
        *out_row = (rc == SQLITE_ROW);
      return TRUE;
    }
  return queue_fail (conn, rc, what, error);
}

/* queue_exec - run one statement without parameters (@sql a string literal) */
static gboolean
queue_exec (QueueConn  *conn,
            const char *sql,
            const char *what,
            GError    **error)
{
  g_auto (QueueStmt) stmt = queue_prepare (conn, sql, error);

  if (stmt == NULL)
    return FALSE;
  return queue_step (conn, stmt, what, NULL, error);
}

/* queue_bind_text - bind a string that outlives the statement's next reset */
static void
queue_bind_text (sqlite3_stmt *stmt,
                 int           index,
                 const char   *str)
{
  if (str == NULL)
    sqlite3_bind_null (stmt, index);
  else
    sqlite3_bind_text (stmt, index, str, -1, SQLITE_STATIC);
}

/* queue_column_dup - a copy of a text column, NULL for SQL NULL */
static char *
queue_column_dup (sqlite3_stmt *stmt,
                  int           col)
{
  if (sqlite3_column_type (stmt, col) == SQLITE_NULL)
    return NULL;
  return g_strdup ((const char *) sqlite3_column_text (stmt, col));
}

/* queue_stmt_finalize - GDestroyNotify for the statement cache */
static void
queue_stmt_finalize (gpointer stmt)
{
  sqlite3_finalize (stmt);
}

/* queue_conn_open - open a connection with our pragmas */
static gboolean
queue_conn_open (QueueConn  *conn,
                 const char *path,
                 gboolean    reader,
                 GError    **error)
{
  int rc;

  conn->path = path;
  conn->stmts = g_hash_table_new_full (g_str_hash, g_str_equal, g_free,
                                       queue_stmt_finalize);
  conn->literals = g_hash_table_new (NULL, NULL);
  rc = sqlite3_open_v2 (path, &conn->db,
                        SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX, NULL);
  if (rc != SQLITE_OK)
    {
      g_set_error (error, PMX_QUEUE_ERROR, PMX_QUEUE_ERROR_OPEN,
                   "queue %s: cannot open the database: %s — check the path "
                   "and its permissions", path, sqlite3_errstr (rc));
      return FALSE;
    }
  sqlite3_extended_result_codes (conn->db, 1);
  sqlite3_busy_timeout (conn->db, QUEUE_BUSY_TIMEOUT_MS);

  if (reader)
    return queue_exec (conn, "PRAGMA query_only = ON", "setting query_only", error);

  /* journal_mode answers with the mode it ended up in: insist on WAL. */
  {
    g_auto (QueueStmt) stmt = queue_prepare (conn, "PRAGMA journal_mode = WAL", error);
    gboolean row = FALSE;

    if (stmt == NULL || !queue_step (conn, stmt, "switching to WAL", &row, error))
      return FALSE;
    if (!row || g_ascii_strcasecmp ((const char *) sqlite3_column_text (stmt, 0), "wal") != 0)
      {
        g_set_error (error, PMX_QUEUE_ERROR, PMX_QUEUE_ERROR_OPEN,
                     "queue %s: cannot switch the database to WAL mode — the "
                     "file system must support shared memory (not NFS)", path);
        return FALSE;
      }
  }
  return queue_exec (conn, "PRAGMA synchronous = FULL", "setting synchronous", error) &&
         queue_exec (conn, "PRAGMA foreign_keys = ON", "enabling foreign keys", error);
}

/* queue_conn_close - finalize cached statements and close */
static void
queue_conn_close (QueueConn *conn)
{
  g_clear_pointer (&conn->literals, g_hash_table_unref);
  g_clear_pointer (&conn->stmts, g_hash_table_unref);
  if (conn->db != NULL)
    sqlite3_close_v2 (conn->db);
  conn->db = NULL;
}

/* queue_migrate - create the schema or check that we know its version */
static gboolean
queue_migrate (QueueConn *conn,
               GError   **error)
{
  gint64 version;
  char *errmsg = NULL;
  int rc;

  if (!queue_exec (conn, "BEGIN IMMEDIATE", "starting the schema check", error))
    return FALSE;
  {
    g_auto (QueueStmt) stmt = queue_prepare (conn, "PRAGMA user_version", error);
    gboolean row = FALSE;

    if (stmt == NULL || !queue_step (conn, stmt, "reading the schema version", &row, error))
      goto fail;
    version = row ? sqlite3_column_int64 (stmt, 0) : 0;
  }

  if (version > QUEUE_SCHEMA_VERSION)
    {
      g_set_error (error, PMX_QUEUE_ERROR, PMX_QUEUE_ERROR_OPEN,
                   "queue %s: schema version %" G_GINT64_FORMAT " was written by a "
                   "newer Postmux (this one knows up to %d) — upgrade Postmux",
                   conn->path, version, QUEUE_SCHEMA_VERSION);
      goto fail;
    }
  if (version == 0)
    {
      rc = sqlite3_exec (conn->db, queue_schema_sql, NULL, NULL, &errmsg);
      sqlite3_free (errmsg);
      if (rc != SQLITE_OK)
        {
          queue_fail (conn, rc, "creating the schema", error);
          goto fail;
        }
    }
  else if (version < 2)
    {
      rc = sqlite3_exec (conn->db,
                         QUEUE_BODIES_SQL
                         "INSERT INTO bodies (id, data) SELECT id, data FROM messages;"
                         "ALTER TABLE messages DROP COLUMN data;"
                         "PRAGMA user_version = 2;", NULL, NULL, &errmsg);
      sqlite3_free (errmsg);
      if (rc != SQLITE_OK)
        {
          queue_fail (conn, rc, "moving message bodies to their own table (schema 1 to 2)", error);
          goto fail;
        }
    }
  /* Later versions: "if (version < 3) { ALTER ...; PRAGMA user_version = 3; }". */

  if (!queue_exec (conn, "COMMIT", "committing the schema", error))
    goto fail;
  return TRUE;

fail:
  sqlite3_exec (conn->db, "ROLLBACK", NULL, NULL, NULL);
  return FALSE;
}

/* ---- ids --------------------------------------------------------------- */

/* queue_new_id - 16 hex digits: 44 bits of ms time, 20 bits of sequence.
 * Within a process ids strictly increase; each new millisecond starts its
 * sequence at a random point so that two processes rarely meet, and the
 * primary key catches the rest (the caller draws again). */
static char *
queue_new_id (void)
{
  static GMutex lock;
  static guint64 last_ms;
  static guint32 seq;
  guint64 ms = (guint64) (g_get_real_time () / 1000);
  guint64 value;

  g_mutex_lock (&lock);
  if (ms <= last_ms)
    {
      ms = last_ms;
      if (++seq >= (1u << QUEUE_ID_SEQ_BITS))
        {
          ms++;
          seq = (guint32) g_random_int_range (0, 1 << (QUEUE_ID_SEQ_BITS - 1));
        }
    }
  else
    seq = (guint32) g_random_int_range (0, 1 << (QUEUE_ID_SEQ_BITS - 1));
  last_ms = ms;
  value = ((ms & ((G_GUINT64_CONSTANT (1) << 44) - 1)) << QUEUE_ID_SEQ_BITS) | seq;
  g_mutex_unlock (&lock);

  return g_strdup_printf ("%016" G_GINT64_MODIFIER "X", value);
}

/* ---- loading messages ------------------------------------------------- */

/* queue_message_from_row - a message from a QUEUE_MSG_COLUMNS row */
static PmxQueueMessage *
queue_message_from_row (sqlite3_stmt *stmt,
                        gboolean      with_data)
{
  PmxQueueMessage *msg = g_new0 (PmxQueueMessage, 1);

  msg->id = queue_column_dup (stmt, 0);
  msg->received = sqlite3_column_int64 (stmt, 1);
  msg->ingress = queue_column_dup (stmt, 2);
  msg->sender = queue_column_dup (stmt, 3);
  msg->size = (gsize) sqlite3_column_int64 (stmt, 4);
  msg->state = queue_msg_state_parse ((const char *) sqlite3_column_text (stmt, 5));
  msg->transport = queue_column_dup (stmt, 6);
  msg->next_transport = queue_column_dup (stmt, 7);
  msg->attempts = (guint) sqlite3_column_int64 (stmt, 8);
  msg->next_attempt = sqlite3_column_int64 (stmt, 9);
  msg->last_reply = queue_column_dup (stmt, 10);
  msg->idempotency_key = queue_column_dup (stmt, 11);
  msg->recipients = g_ptr_array_new_with_free_func (queue_recipient_free);
  if (with_data)
    msg->data = g_bytes_new (sqlite3_column_blob (stmt, QUEUE_MSG_COLUMN_DATA),
                             (gsize) sqlite3_column_bytes (stmt, QUEUE_MSG_COLUMN_DATA));
  return msg;
}

/* queue_load_recipients - fill msg->recipients, in submission order */
static gboolean
queue_load_recipients (QueueConn       *conn,
                       PmxQueueMessage *msg,
                       GError         **error)
{
  g_auto (QueueStmt) stmt = queue_prepare (conn,
      "SELECT address, state, code, enhanced, text FROM recipients "
      "WHERE message_id = ?1 ORDER BY idx", error);
  gboolean row = FALSE;

  if (stmt == NULL)
    return FALSE;
  queue_bind_text (stmt, 1, msg->id);
  for (;;)
    {
      PmxQueueRecipient *rcpt;

      if (!queue_step (conn, stmt, "reading recipients", &row, error))
        return FALSE;
      if (!row)
        return TRUE;
      rcpt = g_new0 (PmxQueueRecipient, 1);
      rcpt->address = queue_column_dup (stmt, 0);
      rcpt->state = queue_rcpt_state_parse ((const char *) sqlite3_column_text (stmt, 1));
      rcpt->code = (guint) sqlite3_column_int64 (stmt, 2);
      rcpt->enhanced = queue_column_dup (stmt, 3);
      rcpt->text = queue_column_dup (stmt, 4);
      g_ptr_array_add (msg->recipients, rcpt);
    }
}

/* queue_load_message - one message by id with its recipients; NULL and
 * NOT_FOUND when there is none */
static PmxQueueMessage *
queue_load_message (QueueConn  *conn,
                    const char *id,
                    gboolean    with_data,
                    GError    **error)
{
  g_autoptr (PmxQueueMessage) msg = NULL;
  gboolean row = FALSE;

  {
    g_auto (QueueStmt) stmt = queue_prepare (conn, with_data
        ? "SELECT " QUEUE_MSG_COLUMNS ", (SELECT data FROM bodies WHERE bodies.id = messages.id) "
          "FROM messages WHERE id = ?1"
        : "SELECT " QUEUE_MSG_COLUMNS " FROM messages WHERE id = ?1", error);

    if (stmt == NULL)
      return NULL;
    queue_bind_text (stmt, 1, id);
    if (!queue_step (conn, stmt, "reading a message", &row, error))
      return NULL;
    if (!row)
      {
        g_set_error (error, PMX_QUEUE_ERROR, PMX_QUEUE_ERROR_NOT_FOUND,
                     "queue %s: no message %s — `postmux queue list` shows "
                     "the ids it holds", conn->path, id);
        return NULL;
      }
    msg = queue_message_from_row (stmt, with_data);
  }
  if (!queue_load_recipients (conn, msg, error))
    return NULL;
  return g_steal_pointer (&msg);
}

/* queue_message_state - the stored state of @id; FALSE and NOT_FOUND if none */
static gboolean
queue_message_state (QueueConn   *conn,
                     const char  *id,
                     PmxMsgState *out_state,
                     gint64      *out_next_attempt,
                     GError     **error)
{
  g_auto (QueueStmt) stmt = queue_prepare (conn,
      "SELECT state, next_attempt FROM messages WHERE id = ?1", error);
  gboolean row = FALSE;

  if (stmt == NULL)
    return FALSE;
  queue_bind_text (stmt, 1, id);
  if (!queue_step (conn, stmt, "reading a message", &row, error))
    return FALSE;
  if (!row)
    {
      g_set_error (error, PMX_QUEUE_ERROR, PMX_QUEUE_ERROR_NOT_FOUND,
                   "queue %s: no message %s — `postmux queue list` shows the "
                   "ids it holds", conn->path, id);
      return FALSE;
    }
  *out_state = queue_msg_state_parse ((const char *) sqlite3_column_text (stmt, 0));
  if (out_next_attempt != NULL)
    *out_next_attempt = sqlite3_column_int64 (stmt, 1);
  return TRUE;
}

/* ---- write operations (writer thread, inside the batch transaction) ---- */

/* queue_do_submit - insert one message, or find its idempotent twin */
static gboolean
queue_do_submit (QueueConn    *conn,
                 QueueRequest *req,
                 GError      **error)
{
  g_autofree char *id = NULL;
  gsize size;
  const void *bytes = g_bytes_get_data (req->data, &size);

  if (req->key != NULL)
    {
      g_auto (QueueStmt) stmt = queue_prepare (conn,
          "SELECT id FROM messages WHERE ingress = ?1 AND idempotency_key = ?2", error);
      gboolean row = FALSE;

      if (stmt == NULL)
        return FALSE;
      queue_bind_text (stmt, 1, req->ingress);
      queue_bind_text (stmt, 2, req->key);
      if (!queue_step (conn, stmt, "looking up an idempotency key", &row, error))
        return FALSE;
      if (row)
        {
          req->out_id = queue_column_dup (stmt, 0);
          req->out_duplicate = TRUE;
          return TRUE;
        }
    }

  for (guint tries = 0; id == NULL; tries++)
    {
      g_auto (QueueStmt) stmt = queue_prepare (conn,
          "INSERT INTO messages (id, received, ingress, sender, size, state, "
          "attempts, next_attempt, idempotency_key) "
          "VALUES (?1, ?2, ?3, ?4, ?5, 'queued', 0, ?2, ?6)", error);
      int rc;

      if (stmt == NULL)
        return FALSE;
      id = queue_new_id ();
      queue_bind_text (stmt, 1, id);
      sqlite3_bind_int64 (stmt, 2, req->received);
      queue_bind_text (stmt, 3, req->ingress);
      queue_bind_text (stmt, 4, req->sender);
      sqlite3_bind_int64 (stmt, 5, (sqlite3_int64) size);
      queue_bind_text (stmt, 6, req->key);
      rc = sqlite3_step (stmt);
      if (rc == SQLITE_CONSTRAINT_PRIMARYKEY && tries + 1 < QUEUE_ID_TRIES)
        {
          /* Another process drew the same id in the same millisecond. */
          g_clear_pointer (&id, g_free);
          continue;
        }
      if (rc != SQLITE_DONE)
        return queue_fail (conn, rc, "storing a message", error);
    }

  {
    g_auto (QueueStmt) stmt = queue_prepare (conn, "INSERT INTO bodies (id, data) VALUES (?1, ?2)", error);

    if (stmt == NULL)
      return FALSE;
    queue_bind_text (stmt, 1, id);
    sqlite3_bind_blob64 (stmt, 2, bytes, size, SQLITE_STATIC);
    if (!queue_step (conn, stmt, "storing a message", NULL, error))
      return FALSE;
  }

  for (guint i = 0; i < req->recipients->len; i++)
    {
      g_auto (QueueStmt) stmt = queue_prepare (conn,
          "INSERT INTO recipients (message_id, idx, address, state) "
          "VALUES (?1, ?2, ?3, 'queued')", error);

      if (stmt == NULL)
        return FALSE;
      queue_bind_text (stmt, 1, id);
      sqlite3_bind_int (stmt, 2, (int) i);
      queue_bind_text (stmt, 3, g_ptr_array_index (req->recipients, i));
      if (!queue_step (conn, stmt, "storing a recipient", NULL, error))
        return FALSE;
    }

  req->out_id = g_steal_pointer (&id);
  req->out_duplicate = FALSE;
  return TRUE;
}

/* queue_message_cmp_due - GCompareFunc on PmxQueueMessage**: by next
 * attempt, then id (the order of the messages_due index) */
static int
queue_message_cmp_due (gconstpointer a,
                       gconstpointer b)
{
  const PmxQueueMessage *ma = *(PmxQueueMessage *const *) a;
  const PmxQueueMessage *mb = *(PmxQueueMessage *const *) b;

  if (ma->next_attempt != mb->next_attempt)
    return ma->next_attempt < mb->next_attempt ? -1 : 1;
  return strcmp (ma->id, mb->id);
}

/* queue_do_lease - mark due messages inflight and load them */
static gboolean
queue_do_lease (QueueConn    *conn,
                QueueRequest *req,
                GError      **error)
{
  g_autoptr (GPtrArray) msgs = g_ptr_array_new_with_free_func ((GDestroyNotify) pmx_queue_message_free);

  /* One statement leases the batch and returns the rows (RETURNING runs
   * after the update: state reads 'inflight', as a leased message's does). */
  {
    g_auto (QueueStmt) stmt = queue_prepare (conn,
        "UPDATE messages SET prev_state = state, state = 'inflight', "
        "lease_owner = ?3, lease_until = ?4 WHERE id IN ("
        "  SELECT id FROM messages INDEXED BY messages_due "
        "  WHERE state IN ('queued', 'deferred') "
        "  AND next_attempt <= ?1 ORDER BY next_attempt, id LIMIT ?2) "
        "RETURNING " QUEUE_MSG_COLUMNS ", (SELECT data FROM bodies WHERE bodies.id = messages.id)", error);
    gboolean row = FALSE;

    if (stmt == NULL)
      return FALSE;
    sqlite3_bind_int64 (stmt, 1, req->now);
    sqlite3_bind_int64 (stmt, 2, req->limit);
    queue_bind_text (stmt, 3, req->owner);
    sqlite3_bind_int64 (stmt, 4, req->until);
    for (;;)
      {
        if (!queue_step (conn, stmt, "leasing due messages", &row, error))
          return FALSE;
        if (!row)
          break;
        g_ptr_array_add (msgs, queue_message_from_row (stmt, TRUE));
      }
  }
  /* RETURNING gives rows in no promised order: oldest due first again. */
  g_ptr_array_sort (msgs, queue_message_cmp_due);
  for (guint i = 0; i < msgs->len; i++)
    if (!queue_load_recipients (conn, g_ptr_array_index (msgs, i), error))
      return FALSE;

  req->out_messages = g_steal_pointer (&msgs);
  return TRUE;
}

/* queue_do_release - give back @owner's leases and every expired one */
static gboolean
queue_do_release (QueueConn    *conn,
                  QueueRequest *req,
                  GError      **error)
{
  g_auto (QueueStmt) stmt = queue_prepare (conn,
      "UPDATE messages SET state = COALESCE(prev_state, 'queued'), "
      "prev_state = NULL, lease_owner = NULL, lease_until = NULL "
      "WHERE state = 'inflight' AND (lease_owner = ?1 OR lease_until < ?2)", error);

  if (stmt == NULL)
    return FALSE;
  queue_bind_text (stmt, 1, req->owner);
  sqlite3_bind_int64 (stmt, 2, req->now);
  if (!queue_step (conn, stmt, "releasing leases", NULL, error))
    return FALSE;
  req->out_count = sqlite3_changes (conn->db);
  return TRUE;
}

/* queue_append_outcome - one "address state code enhanced text" line */
static void
queue_append_outcome (GString                   *out,
                      const PmxAttemptRecipient *r)
{
  gsize start;

  if (out->len > 0)
    g_string_append_c (out, '\n');
  g_string_append (out, r->address);
  g_string_append_c (out, ' ');
  g_string_append (out, pmx_rcpt_state_to_string (r->state));
  g_string_append_printf (out, " %u ", r->code);
  g_string_append (out, r->enhanced != NULL && r->enhanced[0] != '\0' ? r->enhanced : "-");
  g_string_append_c (out, ' ');
  /* Multi-line replies must stay on the recipient's one line. */
  start = out->len;
  g_string_append (out, r->text != NULL ? r->text : "");
  for (gsize i = start; i < out->len; i++)
    if (out->str[i] == '\r' || out->str[i] == '\n')
      out->str[i] = ' ';
}

/* queue_state_tally - a message's state from its recipients' counts */
static PmxMsgState
queue_state_tally (guint pending,
                   guint delivered,
                   guint expired,
                   guint total)
{
  if (pending > 0)
    return PMX_MSG_DEFERRED;
  if (delivered == total)
    return PMX_MSG_DELIVERED;
  if (expired > 0)
    return PMX_MSG_EXPIRED;
  return PMX_MSG_BOUNCED;
}

/* queue_count_rcpt - count one recipient state into the tally */
static void
queue_count_rcpt (PmxRcptState state,
                  guint       *pending,
                  guint       *delivered,
                  guint       *expired)
{
  switch (state)
    {
    case PMX_RCPT_STATE_QUEUED:
    case PMX_RCPT_STATE_DEFERRED:
      (*pending)++;
      break;
    case PMX_RCPT_STATE_DELIVERED:
      (*delivered)++;
      break;
    case PMX_RCPT_STATE_EXPIRED:
      (*expired)++;
      break;
    case PMX_RCPT_STATE_BOUNCED:
    default:
      break;
    }
}

/* queue_state_from_outcomes - the state of a message whose every
 * recipient is in @a (covers_all) */
static void
queue_state_from_outcomes (const PmxAttempt *a,
                           PmxMsgState      *out_state)
{
  guint pending = 0, delivered = 0, expired = 0;

  for (gsize i = 0; i < a->n_recipients; i++)
    queue_count_rcpt (a->recipients[i].state, &pending, &delivered, &expired);
  *out_state = queue_state_tally (pending, delivered, expired, (guint) a->n_recipients);
}

/* queue_derive_state - a message's state from its recipients' */
static gboolean
queue_derive_state (QueueConn   *conn,
                    const char  *id,
                    PmxMsgState *out_state,
                    GError     **error)
{
  g_auto (QueueStmt) stmt = queue_prepare (conn,
      "SELECT state FROM recipients WHERE message_id = ?1", error);
  guint pending = 0, delivered = 0, expired = 0, total = 0;
  gboolean row = FALSE;

  if (stmt == NULL)
    return FALSE;
  queue_bind_text (stmt, 1, id);
  for (;;)
    {
      if (!queue_step (conn, stmt, "reading recipient states", &row, error))
        return FALSE;
      if (!row)
        break;
      total++;
      queue_count_rcpt (queue_rcpt_state_parse ((const char *) sqlite3_column_text (stmt, 0)),
                        &pending, &delivered, &expired);
    }
  *out_state = queue_state_tally (pending, delivered, expired, total);
  return TRUE;
}

/* queue_do_complete - record an attempt and move the message on.
 * Accepted even when the lease was lost meanwhile: the attempt happened,
 * and forgetting a delivery would deliver the message twice. */
static gboolean
queue_do_complete (QueueConn    *conn,
                   QueueRequest *req,
                   GError      **error)
{
  const PmxAttempt *a = req->attempt;
  g_autoptr (GString) outcomes = g_string_new (NULL);
  PmxMsgState state;
  gboolean final;

  for (gsize i = 0; i < a->n_recipients; i++)
    {
      const PmxAttemptRecipient *r = &a->recipients[i];
      g_auto (QueueStmt) stmt = queue_prepare (conn,
          "UPDATE recipients SET state = ?3, code = ?4, enhanced = ?5, text = ?6 "
          "WHERE message_id = ?1 AND address = ?2", error);

      if (stmt == NULL)
        return FALSE;
      queue_bind_text (stmt, 1, req->id);
      queue_bind_text (stmt, 2, r->address);
      queue_bind_text (stmt, 3, pmx_rcpt_state_to_string (r->state));
      sqlite3_bind_int64 (stmt, 4, r->code);
      queue_bind_text (stmt, 5, r->enhanced);
      queue_bind_text (stmt, 6, r->text);
      if (!queue_step (conn, stmt, "recording a recipient outcome", NULL, error))
        return FALSE;
      if (sqlite3_changes (conn->db) == 0)
        {
          /* No such message (NOT_FOUND), or no such recipient of it. */
          if (!queue_message_state (conn, req->id, &state, NULL, error))
            return FALSE;
          g_set_error (error, PMX_QUEUE_ERROR, PMX_QUEUE_ERROR_INVALID,
                       "queue %s: message %s has no recipient <%s>; attempt not "
                       "recorded", conn->path, req->id, r->address);
          return FALSE;
        }
      queue_append_outcome (outcomes, r);
    }

  if (a->covers_all)
    queue_state_from_outcomes (a, &state);
  else if (!queue_derive_state (conn, req->id, &state, error))
    return FALSE;
  final = (state != PMX_MSG_DEFERRED);

  {
    /* A final message keeps the next_attempt it had (NULL ?6). */
    g_auto (QueueStmt) stmt = queue_prepare (conn,
        "UPDATE messages SET state = ?2, attempts = attempts + 1, transport = ?3, "
        "next_transport = ?4, last_reply = ?5, next_attempt = COALESCE(?6, next_attempt), "
        "finished = ?7, prev_state = NULL, lease_owner = NULL, lease_until = NULL WHERE id = ?1", error);

    if (stmt == NULL)
      return FALSE;
    queue_bind_text (stmt, 1, req->id);
    queue_bind_text (stmt, 2, pmx_msg_state_to_string (state));
    queue_bind_text (stmt, 3, a->transport);
    queue_bind_text (stmt, 4, a->next_transport);
    queue_bind_text (stmt, 5, a->summary);
    if (!final)
      sqlite3_bind_int64 (stmt, 6, a->next_attempt);
    if (final)
      sqlite3_bind_int64 (stmt, 7, a->finished != 0 ? a->finished : g_get_real_time ());
    if (!queue_step (conn, stmt, "recording an attempt", NULL, error))
      return FALSE;
    if (sqlite3_changes (conn->db) == 0)
      {
        g_set_error (error, PMX_QUEUE_ERROR, PMX_QUEUE_ERROR_NOT_FOUND,
                     "queue %s: no message %s — `postmux queue list` shows "
                     "the ids it holds", conn->path, req->id);
        return FALSE;
      }
  }

  {
    g_auto (QueueStmt) stmt = queue_prepare (conn,
        "INSERT INTO attempts (message_id, started, finished, transport, summary, "
        "remote_id, outcomes) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)", error);

    if (stmt == NULL)
      return FALSE;
    queue_bind_text (stmt, 1, req->id);
    sqlite3_bind_int64 (stmt, 2, a->started);
    sqlite3_bind_int64 (stmt, 3, a->finished);
    queue_bind_text (stmt, 4, a->transport);
    queue_bind_text (stmt, 5, a->summary);
    queue_bind_text (stmt, 6, a->remote_id);
    queue_bind_text (stmt, 7, outcomes->str);
    if (!queue_step (conn, stmt, "logging an attempt", NULL, error))
      return FALSE;
  }
  return TRUE;
}

/* queue_do_postpone - a lease returned untried: inflight back to the state
 * it was leased from, due no earlier than req->until (UNLEASE: 0, the same
 * next attempt) */
static gboolean
queue_do_postpone (QueueConn    *conn,
                   QueueRequest *req,
                   GError      **error)
{
  g_auto (QueueStmt) stmt = NULL;
  PmxMsgState state;

  if (!queue_message_state (conn, req->id, &state, NULL, error))
    return FALSE;
  if (state != PMX_MSG_INFLIGHT)
    return TRUE;   /* lease already returned (expired and released): nothing to undo */

  stmt = queue_prepare (conn,
      "UPDATE messages SET state = COALESCE(prev_state, 'queued'), prev_state = NULL, "
      "lease_owner = NULL, lease_until = NULL, next_attempt = MAX(next_attempt, ?2), "
      "next_transport = COALESCE(?3, next_transport) WHERE id = ?1", error);
  if (stmt == NULL)
    return FALSE;
  queue_bind_text (stmt, 1, req->id);
  sqlite3_bind_int64 (stmt, 2, req->until);
  queue_bind_text (stmt, 3, req->transport);
  return queue_step (conn, stmt, "returning a lease", NULL, error);
}

/* queue_do_retry - failed and deferred recipients back to queued, due now */
static gboolean
queue_do_retry (QueueConn    *conn,
                QueueRequest *req,
                GError      **error)
{
  PmxMsgState state;

  if (!queue_message_state (conn, req->id, &state, NULL, error))
    return FALSE;
  if (state == PMX_MSG_INFLIGHT)
    {
      g_set_error (error, PMX_QUEUE_ERROR, PMX_QUEUE_ERROR_INVALID,
                   "queue %s: message %s is being delivered right now — retry "
                   "it once this attempt has ended", conn->path, req->id);
      return FALSE;
    }
  if (state == PMX_MSG_DELIVERED)
    {
      g_set_error (error, PMX_QUEUE_ERROR, PMX_QUEUE_ERROR_INVALID,
                   "queue %s: message %s was delivered to every recipient — "
                   "there is nothing to retry", conn->path, req->id);
      return FALSE;
    }

  {
    g_auto (QueueStmt) stmt = queue_prepare (conn,
        "UPDATE recipients SET state = 'queued' WHERE message_id = ?1 "
        "AND state IN ('deferred', 'bounced', 'expired')", error);

    if (stmt == NULL)
      return FALSE;
    queue_bind_text (stmt, 1, req->id);
    if (!queue_step (conn, stmt, "requeueing recipients", NULL, error))
      return FALSE;
  }
  {
    g_auto (QueueStmt) stmt = queue_prepare (conn,
        "UPDATE messages SET state = 'queued', next_attempt = ?2, finished = NULL "
        "WHERE id = ?1", error);

    if (stmt == NULL)
      return FALSE;
    queue_bind_text (stmt, 1, req->id);
    sqlite3_bind_int64 (stmt, 2, req->now);
    return queue_step (conn, stmt, "requeueing a message", NULL, error);
  }
}

/* queue_do_hurry - deferred messages of transport req->id due now */
static gboolean
queue_do_hurry (QueueConn    *conn,
                QueueRequest *req,
                GError      **error)
{
  g_auto (QueueStmt) stmt = queue_prepare (conn,
      "UPDATE messages SET next_attempt = ?2 WHERE state = 'deferred' AND transport = ?1 "
      "AND next_transport IS NULL AND next_attempt > ?2", error);

  if (stmt == NULL)
    return FALSE;
  queue_bind_text (stmt, 1, req->id);
  sqlite3_bind_int64 (stmt, 2, req->now);
  if (!queue_step (conn, stmt, "making deferred messages due", NULL, error))
    return FALSE;
  req->out_count = sqlite3_changes (conn->db);
  return TRUE;
}

/* queue_do_delete - remove a message, its recipients and its log */
static gboolean
queue_do_delete (QueueConn    *conn,
                 QueueRequest *req,
                 GError      **error)
{
  g_auto (QueueStmt) stmt = queue_prepare (conn,
      "DELETE FROM messages WHERE id = ?1", error);

  if (stmt == NULL)
    return FALSE;
  queue_bind_text (stmt, 1, req->id);
  if (!queue_step (conn, stmt, "deleting a message", NULL, error))
    return FALSE;
  if (sqlite3_changes (conn->db) == 0)
    {
      g_set_error (error, PMX_QUEUE_ERROR, PMX_QUEUE_ERROR_NOT_FOUND,
                   "queue %s: no message %s — `postmux queue list` shows the "
                   "ids it holds", conn->path, req->id);
      return FALSE;
    }
  return TRUE;
}

/* queue_do_purge - drop delivered messages finished before req->now */
static gboolean
queue_do_purge (QueueConn    *conn,
                QueueRequest *req,
                GError      **error)
{
  g_auto (QueueStmt) stmt = queue_prepare (conn,
      "DELETE FROM messages WHERE state = 'delivered' AND finished < ?1", error);

  if (stmt == NULL)
    return FALSE;
  sqlite3_bind_int64 (stmt, 1, req->now);
  if (!queue_step (conn, stmt, "purging delivered messages", NULL, error))
    return FALSE;
  req->out_count = sqlite3_changes (conn->db);
  return TRUE;
}

/* queue_do_limit_pages - tests: let the file grow by req->now pages at most */
static gboolean
queue_do_limit_pages (QueueConn    *conn,
                      QueueRequest *req,
                      GError      **error)
{
  g_autofree char *sql = NULL;
  gint64 pages;
  int rc;

  {
    g_auto (QueueStmt) stmt = queue_prepare (conn, "PRAGMA page_count", error);
    gboolean row = FALSE;

    if (stmt == NULL || !queue_step (conn, stmt, "reading the page count", &row, error))
      return FALSE;
    pages = row ? sqlite3_column_int64 (stmt, 0) : 0;
  }
  sql = g_strdup_printf ("PRAGMA max_page_count = %" G_GINT64_FORMAT, pages + req->now);
  rc = sqlite3_exec (conn->db, sql, NULL, NULL, NULL);
  if (rc != SQLITE_OK)
    return queue_fail (conn, rc, "limiting the page count", error);
  return TRUE;
}

/* queue_do_request - dispatch one request */
static gboolean
queue_do_request (QueueConn    *conn,
                  QueueRequest *req,
                  GError      **error)
{
  switch (req->op)
    {
    case QUEUE_OP_SUBMIT:      return queue_do_submit (conn, req, error);
    case QUEUE_OP_LEASE:       return queue_do_lease (conn, req, error);
    case QUEUE_OP_RELEASE:     return queue_do_release (conn, req, error);
    case QUEUE_OP_COMPLETE:    return queue_do_complete (conn, req, error);
    case QUEUE_OP_UNLEASE:
    case QUEUE_OP_POSTPONE:    return queue_do_postpone (conn, req, error);
    case QUEUE_OP_RETRY:       return queue_do_retry (conn, req, error);
    case QUEUE_OP_HURRY:       return queue_do_hurry (conn, req, error);
    case QUEUE_OP_DELETE:      return queue_do_delete (conn, req, error);
    case QUEUE_OP_PURGE:       return queue_do_purge (conn, req, error);
    case QUEUE_OP_LIMIT_PAGES: return queue_do_limit_pages (conn, req, error);
    default:
      g_assert_not_reached ();
    }
}

/* ---- requests and the writer ------------------------------------------ */

/* queue_request_free - free what a request owns (not the answer's outputs) */
static void
queue_request_free (QueueRequest *req)
{
  g_free (req->ingress);
  g_free (req->sender);
  g_clear_pointer (&req->recipients, g_ptr_array_unref);
  g_clear_pointer (&req->data, g_bytes_unref);
  g_free (req->key);
  g_clear_object (&req->cancellable);
  g_free (req->out_id);
  g_clear_pointer (&req->out_messages, g_ptr_array_unref);
  g_clear_error (&req->error);
  g_clear_object (&req->task);
  if (req->strings != NULL)
    {
      g_free ((gpointer) req->attempt_copy.recipients);
      g_string_chunk_free (req->strings);
    }
  g_free (req);
}

/* queue_submit_result_free - free an async submission's answer */
static void
queue_submit_result_free (gpointer data)
{
  QueueSubmitResult *res = data;

  g_free (res->id);
  g_free (res);
}

/* queue_answer - hand a finished request back to its caller */
static void
queue_answer (PmxQueue     *queue,
              QueueRequest *req)
{
  if (req->complete_func != NULL)
    {
      /* The writer owns async completions too. */
      req->complete_func (queue, req->id, req->error, req->complete_data);
      queue_request_free (req);
      return;
    }
  if (req->task != NULL)
    {
      /* The writer owns async requests: answer through the task, then free. */
      if (req->error != NULL)
        g_task_return_error (req->task, g_steal_pointer (&req->error));
      else
        {
          QueueSubmitResult *res = g_new0 (QueueSubmitResult, 1);

          res->id = g_steal_pointer (&req->out_id);
          res->duplicate = req->out_duplicate;
          g_task_return_pointer (req->task, res, queue_submit_result_free);
        }
      queue_request_free (req);
      return;
    }

  /* A blocking caller owns @req and may free it as soon as it sees done. */
  g_mutex_lock (&req->lock);
  req->done = TRUE;
  g_cond_signal (&req->cond);
  g_mutex_unlock (&req->lock);
}

/* queue_is_fatal - whether the last failure left the transaction unusable */
static gboolean
queue_is_fatal (QueueConn *conn)
{
  switch (conn->last_rc & 0xff)
    {
    case SQLITE_FULL:
    case SQLITE_IOERR:
    case SQLITE_NOMEM:
    case SQLITE_BUSY:
    case SQLITE_LOCKED:
    case SQLITE_CORRUPT:
    case SQLITE_NOTADB:
    case SQLITE_READONLY:
    case SQLITE_CANTOPEN:
    case SQLITE_PROTOCOL:
      return TRUE;
    default:
      /* SQLite may have rolled the whole transaction back on its own. */
      return sqlite3_get_autocommit (conn->db) != 0;
    }
}

/* queue_reset_answer - forget what running @req produced */
static void
queue_reset_answer (QueueRequest *req)
{
  g_clear_pointer (&req->out_id, g_free);
  g_clear_pointer (&req->out_messages, g_ptr_array_unref);
  req->out_duplicate = FALSE;
  req->out_count = 0;
  g_clear_error (&req->error);
}

/* queue_run_requests - run @reqs inside the open transaction.  Careful: a
 * savepoint around each, so that a request that fails is undone alone.
 * Not careful (the usual case: a savepoint copies every page a request
 * touches): a failing request that changed no row is answered alone, and
 * one that did returns FALSE, for the caller to roll back and run the
 * batch again carefully.  A failure that aborts the transaction goes to
 * @batch_error. */
static gboolean
queue_run_requests (QueueConn     *conn,
                    QueueRequest **reqs,
                    guint          n,
                    gboolean       careful,
                    GError       **batch_error)
{
  for (guint i = 0; i < n && *batch_error == NULL; i++)
    {
      QueueRequest *req = reqs[i];
      gint64 changes = sqlite3_total_changes64 (conn->db);

      if (req->cancellable != NULL &&
          g_cancellable_set_error_if_cancelled (req->cancellable, &req->error))
        continue;

      conn->last_rc = SQLITE_OK;
      if (careful && !queue_exec (conn, "SAVEPOINT req", "starting a request", batch_error))
        break;
      if (queue_do_request (conn, req, &req->error))
        {
          if (careful)
            queue_exec (conn, "RELEASE req", "ending a request", batch_error);
          continue;
        }
      if (queue_is_fatal (conn))
        {
          *batch_error = g_error_copy (req->error);
          break;
        }
      /* A request-level failure: undo just this request. */
      if (!careful)
        {
          if (sqlite3_total_changes64 (conn->db) != changes)
            return FALSE;
          continue;
        }
      if (queue_exec (conn, "ROLLBACK TO req", "undoing a request", batch_error))
        queue_exec (conn, "RELEASE req", "ending a request", batch_error);
    }
  return TRUE;
}

/* queue_run_batch - run @reqs in one transaction, then answer them all */
static void
queue_run_batch (PmxQueue      *queue,
                 QueueRequest **reqs,
                 guint          n)
{
  QueueConn *conn = &queue->wconn;
  g_autoptr (GError) batch_error = NULL;
  gboolean durable = FALSE;

  for (guint i = 0; i < n && !durable; i++)
    durable = reqs[i]->op != QUEUE_OP_LEASE;
  if (durable == queue->relaxed)
    {
      if (!queue_exec (conn, durable ? "PRAGMA synchronous = FULL" : "PRAGMA synchronous = NORMAL",
                       "setting synchronous", &batch_error))
        goto answer;
      queue->relaxed = !durable;
    }

  if (!queue_exec (conn, "BEGIN IMMEDIATE", "starting a transaction", &batch_error))
    goto answer;
  if (!queue_run_requests (conn, reqs, n, FALSE, &batch_error))
    {
      /* A request failed half done: start again, a savepoint around each. */
      sqlite3_exec (conn->db, "ROLLBACK", NULL, NULL, NULL);
      for (guint i = 0; i < n; i++)
        queue_reset_answer (reqs[i]);
      if (queue_exec (conn, "BEGIN IMMEDIATE", "starting a transaction", &batch_error))
        (void) queue_run_requests (conn, reqs, n, TRUE, &batch_error);
    }

  if (batch_error == NULL &&
      queue_exec (conn, "COMMIT", "committing", &batch_error))
    g_atomic_int_inc (&queue->commits);
  else if (!sqlite3_get_autocommit (conn->db))
    sqlite3_exec (conn->db, "ROLLBACK", NULL, NULL, NULL);

answer:
  if (batch_error != NULL)
    g_debug ("%s; %u request%s not done", batch_error->message, n, n == 1 ? "" : "s");
  for (guint i = 0; i < n; i++)
    {
      QueueRequest *req = reqs[i];

      if (batch_error != NULL)
        {
          /* Nothing of this batch is on disk: no id, no lease, no count. */
          queue_reset_answer (req);
          req->error = g_error_copy (batch_error);
        }
      queue_answer (queue, req);
    }
}

/* queue_wal_hook - sqlite3_wal_hook on the writer: a commit left @pages in
 * the WAL; past QUEUE_CHECKPOINT_PAGES wake the checkpointer */
static int
queue_wal_hook (void       *data,
                sqlite3    *db,
                const char *name,
                int         pages)
{
  PmxQueue *queue = data;

  if (pages >= QUEUE_CHECKPOINT_PAGES)
    {
      g_mutex_lock (&queue->ck_lock);
      queue->ck_due = TRUE;
      g_cond_signal (&queue->ck_cond);
      g_mutex_unlock (&queue->ck_lock);
    }
  return SQLITE_OK;
}

/* queue_checkpointer_main - the checkpointer thread: a PASSIVE checkpoint
 * each time the writer asks (it never blocks the writer; a checkpoint that
 * cannot finish now is simply done further next time) */
static gpointer
queue_checkpointer_main (gpointer data)
{
  PmxQueue *queue = data;

  for (;;)
    {
      int rc;

      g_mutex_lock (&queue->ck_lock);
      while (!queue->ck_due && !queue->ck_stop)
        g_cond_wait (&queue->ck_cond, &queue->ck_lock);
      if (queue->ck_stop)
        {
          g_mutex_unlock (&queue->ck_lock);
          break;
        }
      queue->ck_due = FALSE;
      g_mutex_unlock (&queue->ck_lock);

      rc = sqlite3_wal_checkpoint_v2 (queue->cdb, NULL, SQLITE_CHECKPOINT_PASSIVE, NULL, NULL);
      if (rc != SQLITE_OK && rc != SQLITE_BUSY)
        g_warning ("queue %s: checkpoint failed: %s — the WAL file grows until one succeeds",
                   queue->path, sqlite3_errmsg (queue->cdb));
    }
  return NULL;
}

/* queue_start_checkpointer - its connection and thread, and the writer's
 * own auto-checkpoint off; FALSE with @error set */
static gboolean
queue_start_checkpointer (PmxQueue *queue,
                          GError  **error)
{
  int rc = sqlite3_open_v2 (queue->path, &queue->cdb, SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX, NULL);

  if (rc != SQLITE_OK)
    {
      g_set_error (error, PMX_QUEUE_ERROR, PMX_QUEUE_ERROR_OPEN,
                   "queue %s: cannot open the database for checkpoints: %s", queue->path, sqlite3_errstr (rc));
      return FALSE;
    }
  sqlite3_busy_timeout (queue->cdb, QUEUE_BUSY_TIMEOUT_MS);
  /* The checkpoint writes the database file: as durable as the commits. */
  if (sqlite3_exec (queue->cdb, "PRAGMA synchronous = FULL", NULL, NULL, NULL) != SQLITE_OK
      || !queue_exec (&queue->wconn, "PRAGMA wal_autocheckpoint = 0", "turning off auto-checkpoints", error))
    {
      if (error != NULL && *error == NULL)
        g_set_error (error, PMX_QUEUE_ERROR, PMX_QUEUE_ERROR_OPEN,
                     "queue %s: cannot set up checkpoints: %s", queue->path, sqlite3_errmsg (queue->cdb));
      return FALSE;
    }
  sqlite3_wal_hook (queue->wconn.db, queue_wal_hook, queue);
  queue->checkpointer = g_thread_try_new ("pmx-queue-ckpt", queue_checkpointer_main, queue, error);
  if (queue->checkpointer == NULL)
    {
      g_prefix_error (error, "queue %s: cannot start the checkpoint thread: ", queue->path);
      return FALSE;
    }
  return TRUE;
}

/* queue_writer_ready - whether the writer should take what is pending now;
 * if not, *deadline is when it should look again (G_MAXINT64: when woken);
 * *with_deferred tells whether to take the deferrable ones too (not when
 * only leases are waited for: they would make that commit sync);
 * queue->lock held */
static gboolean
queue_writer_ready (PmxQueue *queue,
                    gint64   *deadline,
                    gboolean *with_deferred)
{
  *deadline = G_MAXINT64;
  *with_deferred = TRUE;
  if (queue->closing)
    return TRUE;
  if (queue->hold || g_queue_is_empty (&queue->pending))
    return FALSE;
  if (queue->n_deferred > 0)
    {
      *deadline = queue->deferred_since + QUEUE_GROUP_WAIT_USEC;
      if (queue->n_deferred >= QUEUE_GROUP_MIN || g_get_monotonic_time () >= *deadline)
        return TRUE;
    }
  if (queue->n_urgent == 0)
    return FALSE;
  *with_deferred = FALSE;
  for (GList *l = queue->pending.head; l != NULL && !*with_deferred; l = l->next)
    {
      QueueRequest *req = l->data;

      *with_deferred = !req->deferrable && req->op != QUEUE_OP_LEASE;
    }
  return TRUE;
}

/* queue_writer_main - the writer thread: take what is pending, commit, answer */
static gpointer
queue_writer_main (gpointer data)
{
  PmxQueue *queue = data;
  QueueRequest **batch = g_new (QueueRequest *, QUEUE_BATCH_MAX);

  for (;;)
    {
      gboolean with_deferred;
      gint64 deadline;
      guint n = 0;
      GList *l;

      g_mutex_lock (&queue->lock);
      while (!queue_writer_ready (queue, &deadline, &with_deferred))
        {
          if (deadline == G_MAXINT64)
            g_cond_wait (&queue->cond, &queue->lock);
          else
            g_cond_wait_until (&queue->cond, &queue->lock, deadline);
        }
      l = queue->pending.head;
      while (n < QUEUE_BATCH_MAX && l != NULL)
        {
          QueueRequest *req = l->data;
          GList *next = l->next;

          if (req->deferrable && !with_deferred)
            {
              l = next;
              continue;
            }
          g_queue_delete_link (&queue->pending, l);
          if (req->deferrable)
            queue->n_deferred--;
          else
            queue->n_urgent--;
          batch[n++] = req;
          l = next;
        }
      if (with_deferred && queue->n_deferred > 0)
        queue->deferred_since = g_get_monotonic_time ();
      g_mutex_unlock (&queue->lock);

      if (n == 0)
        break;   /* closing, and everything pending has been answered */
      queue_run_batch (queue, batch, n);
    }

  g_free (batch);
  return NULL;
}

/* queue_push - hand @req to the writer; FALSE and CLOSED when shutting down */
static gboolean
queue_push (PmxQueue     *queue,
            QueueRequest *req,
            GError      **error)
{
  g_mutex_lock (&queue->lock);
  if (queue->closing)
    {
      g_mutex_unlock (&queue->lock);
      g_set_error (error, PMX_QUEUE_ERROR, PMX_QUEUE_ERROR_CLOSED,
                   "queue %s is shutting down; nothing was written", queue->path);
      return FALSE;
    }
  g_queue_push_tail (&queue->pending, req);
  /* Wake the writer for what is waited for, and for deferrable ones only
   * to start their clock or when there are enough of them. */
  if (!req->deferrable)
    {
      queue->n_urgent++;
      g_cond_signal (&queue->cond);
    }
  else if (queue->n_deferred++ == 0)
    {
      queue->deferred_since = g_get_monotonic_time ();
      g_cond_signal (&queue->cond);
    }
  else if (queue->n_deferred == QUEUE_GROUP_MIN)
    g_cond_signal (&queue->cond);
  g_mutex_unlock (&queue->lock);
  return TRUE;
}

/* queue_call - run @req through the writer and wait for its commit */
static gboolean
queue_call (PmxQueue     *queue,
            QueueRequest *req,
            GError      **error)
{
  gboolean ok;

  g_mutex_init (&req->lock);
  g_cond_init (&req->cond);
  req->done = FALSE;

  ok = queue_push (queue, req, error);
  if (ok)
    {
      g_mutex_lock (&req->lock);
      while (!req->done)
        g_cond_wait (&req->cond, &req->lock);
      g_mutex_unlock (&req->lock);
      if (req->error != NULL)
        {
          g_propagate_error (error, g_steal_pointer (&req->error));
          ok = FALSE;
        }
    }

  g_cond_clear (&req->cond);
  g_mutex_clear (&req->lock);
  return ok;
}

/* ---- open and close ---------------------------------------------------- */

PmxQueue *
pmx_queue_open (const char *path,
                GError    **error)
{
  g_autofree char *dir = NULL;
  PmxQueue *queue;
  int fd;

  g_return_val_if_fail (path != NULL && path[0] != '\0', NULL);
  g_return_val_if_fail (error == NULL || *error == NULL, NULL);

  if (sqlite3_threadsafe () == 0)
    {
      g_set_error (error, PMX_QUEUE_ERROR, PMX_QUEUE_ERROR_OPEN,
                   "queue %s: this SQLite library was built without thread "
                   "support — install a threadsafe libsqlite3", path);
      return NULL;
    }

  dir = g_path_get_dirname (path);
  if (g_mkdir_with_parents (dir, 0700) != 0)
    {
      int errsv = errno;

      g_set_error (error, PMX_QUEUE_ERROR, PMX_QUEUE_ERROR_OPEN,
                   "queue %s: cannot create directory %s: %s — create it or "
                   "choose another queue path", path, dir, g_strerror (errsv));
      return NULL;
    }
  /* Create the file ourselves so that it is 0600 whatever the umask;
   * SQLite gives the -wal and -shm files the same mode. */
  fd = g_open (path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
  if (fd < 0)
    {
      int errsv = errno;

      g_set_error (error, PMX_QUEUE_ERROR, PMX_QUEUE_ERROR_OPEN,
                   "queue %s: cannot open: %s — check the path and its "
                   "permissions", path, g_strerror (errsv));
      return NULL;
    }
  close (fd);

  queue = g_new0 (PmxQueue, 1);
  queue->path = g_strdup (path);
  g_mutex_init (&queue->lock);
  g_mutex_init (&queue->read_lock);
  g_cond_init (&queue->cond);
  g_queue_init (&queue->pending);
  g_mutex_init (&queue->ck_lock);
  g_cond_init (&queue->ck_cond);

  if (!queue_conn_open (&queue->wconn, queue->path, FALSE, error) ||
      !queue_migrate (&queue->wconn, error) ||
      !queue_conn_open (&queue->rconn, queue->path, TRUE, error) ||
      !queue_start_checkpointer (queue, error))
    goto fail;

  queue->writer = g_thread_try_new ("pmx-queue-writer", queue_writer_main, queue, error);
  if (queue->writer == NULL)
    {
      g_prefix_error (error, "queue %s: cannot start the writer thread: ", path);
      goto fail;
    }
  return queue;

fail:
  queue->closing = TRUE;
  pmx_queue_close (queue);
  return NULL;
}

/**
 * pmx_queue_shutdown:
 *
 * Stop taking write requests (they fail with PMX_QUEUE_ERROR_CLOSED),
 * commit and answer everything already handed over, and stop the writer.
 * Reads keep working until pmx_queue_close().  Idempotent.
 */
void
pmx_queue_shutdown (PmxQueue *queue)
{
  g_return_if_fail (queue != NULL);

  g_mutex_lock (&queue->lock);
  queue->closing = TRUE;
  g_cond_signal (&queue->cond);
  g_mutex_unlock (&queue->lock);

  if (queue->writer != NULL)
    g_thread_join (g_steal_pointer (&queue->writer));

  g_mutex_lock (&queue->ck_lock);
  queue->ck_stop = TRUE;
  g_cond_signal (&queue->ck_cond);
  g_mutex_unlock (&queue->ck_lock);
  if (queue->checkpointer != NULL)
    g_thread_join (g_steal_pointer (&queue->checkpointer));
}

void
pmx_queue_close (PmxQueue *queue)
{
  if (queue == NULL)
    return;

  pmx_queue_shutdown (queue);
  g_assert (g_queue_is_empty (&queue->pending));

  if (queue->cdb != NULL)
    sqlite3_close_v2 (queue->cdb);
  queue_conn_close (&queue->rconn);
  /* The last connection to close checkpoints the WAL into the database. */
  if (queue->wconn.db != NULL)
    sqlite3_exec (queue->wconn.db, "PRAGMA wal_autocheckpoint = 1000", NULL, NULL, NULL);
  queue_conn_close (&queue->wconn);
  g_cond_clear (&queue->ck_cond);
  g_mutex_clear (&queue->ck_lock);
  g_cond_clear (&queue->cond);
  g_mutex_clear (&queue->read_lock);
  g_mutex_clear (&queue->lock);
  g_free (queue->path);
  g_free (queue);
}

const char *
pmx_queue_get_path (PmxQueue *queue)
{
  g_return_val_if_fail (queue != NULL, NULL);
  return queue->path;
}

/* ---- submission -------------------------------------------------------- */

/* queue_submit_request - validate @sub and copy it into a new request */
static QueueRequest *
queue_submit_request (PmxQueue            *queue,
                      const PmxSubmission *sub,
                      GError             **error)
{
  QueueRequest *req;
  g_autoptr (GHashTable) seen = NULL;

  if (sub->ingress == NULL || sub->ingress[0] == '\0')
    {
      g_set_error (error, PMX_QUEUE_ERROR, PMX_QUEUE_ERROR_INVALID,
                   "queue %s: submission without an ingress (who handed it "
                   "over)", queue->path);
      return NULL;
    }
  if (sub->sender == NULL)
    {
      g_set_error (error, PMX_QUEUE_ERROR, PMX_QUEUE_ERROR_INVALID,
                   "queue %s: submission from %s has no envelope sender — use "
                   "\"\" for the null sender <>", queue->path, sub->ingress);
      return NULL;
    }
  if (sub->n_recipients == 0 || sub->recipients == NULL)
    {
      g_set_error (error, PMX_QUEUE_ERROR, PMX_QUEUE_ERROR_INVALID,
                   "queue %s: submission from %s has no recipients — give at "
                   "least one", queue->path, sub->ingress);
      return NULL;
    }
  if (sub->data == NULL || g_bytes_get_size (sub->data) == 0)
    {
      g_set_error (error, PMX_QUEUE_ERROR, PMX_QUEUE_ERROR_INVALID,
                   "queue %s: submission from %s has an empty message — there "
                   "is nothing to deliver", queue->path, sub->ingress);
      return NULL;
    }
  for (gsize i = 0; i < sub->n_recipients; i++)
    {
      if (sub->recipients[i] == NULL || sub->recipients[i][0] == '\0')
        {
          g_set_error (error, PMX_QUEUE_ERROR, PMX_QUEUE_ERROR_INVALID,
                       "queue %s: submission from %s: recipient %" G_GSIZE_FORMAT
                       " is empty", queue->path, sub->ingress, i + 1);
          return NULL;
        }
    }

  req = g_new0 (QueueRequest, 1);
  req->op = QUEUE_OP_SUBMIT;
  req->ingress = g_strdup (sub->ingress);
  req->sender = g_strdup (sub->sender);
  req->data = g_bytes_ref (sub->data);
  req->key = g_strdup (sub->idempotency_key);
  req->received = g_get_real_time ();
  /* A recipient listed twice is delivered to once. */
  req->recipients = g_ptr_array_new_full ((guint) sub->n_recipients, g_free);
  seen = g_hash_table_new (g_str_hash, g_str_equal);
  for (gsize i = 0; i < sub->n_recipients; i++)
    if (g_hash_table_add (seen, (gpointer) sub->recipients[i]))
      g_ptr_array_add (req->recipients, g_strdup (sub->recipients[i]));
  return req;
}

char *
pmx_queue_submit (PmxQueue            *queue,
                  const PmxSubmission *sub,
                  gboolean            *out_duplicate,
                  GError             **error)
{
  QueueRequest *req;
  char *id = NULL;

  g_return_val_if_fail (queue != NULL, NULL);
  g_return_val_if_fail (sub != NULL, NULL);
  g_return_val_if_fail (error == NULL || *error == NULL, NULL);

  req = queue_submit_request (queue, sub, error);
  if (req == NULL)
    return NULL;
  if (queue_call (queue, req, error))
    {
      id = g_steal_pointer (&req->out_id);
      if (out_duplicate != NULL)
        *out_duplicate = req->out_duplicate;
    }
  queue_request_free (req);
  return id;
}

void
pmx_queue_submit_async (PmxQueue            *queue,
                        const PmxSubmission *sub,
                        GCancellable        *cancellable,
                        GAsyncReadyCallback  callback,
                        gpointer             user_data)
{
  g_autoptr (GTask) task = NULL;
  GError *error = NULL;
  QueueRequest *req;

  g_return_if_fail (queue != NULL);
  g_return_if_fail (sub != NULL);

  task = g_task_new (NULL, cancellable, callback, user_data);
  g_task_set_source_tag (task, (gpointer) queue_submit_tag);
  /* Once committed, a submission is queued even if the caller gave up:
   * report what happened, not the cancellation. */
  g_task_set_check_cancellable (task, FALSE);

  if (g_task_return_error_if_cancelled (task))
    return;
  req = queue_submit_request (queue, sub, &error);
  if (req == NULL)
    {
      g_task_return_error (task, error);
      return;
    }
  req->task = g_object_ref (task);
  req->cancellable = cancellable != NULL ? g_object_ref (cancellable) : NULL;
  if (!queue_push (queue, req, &error))
    {
      queue_request_free (req);
      g_task_return_error (task, error);
    }
}

char *
pmx_queue_submit_finish (PmxQueue      *queue,
                         GAsyncResult  *result,
                         gboolean      *out_duplicate,
                         GError       **error)
{
  QueueSubmitResult *res;
  char *id;

  g_return_val_if_fail (g_task_is_valid (result, NULL), NULL);
  g_return_val_if_fail (g_task_get_source_tag (G_TASK (result)) == queue_submit_tag, NULL);

  res = g_task_propagate_pointer (G_TASK (result), error);
  if (res == NULL)
    return NULL;
  if (out_duplicate != NULL)
    *out_duplicate = res->duplicate;
  id = g_steal_pointer (&res->id);
  queue_submit_result_free (res);
  return id;
}

/* ---- other writes ------------------------------------------------------ */

GPtrArray *
pmx_queue_lease_due (PmxQueue   *queue,
                     gint64      now,
                     guint       limit,
                     const char *owner,
                     gint64      lease_until,
                     GError    **error)
{
  QueueRequest req = { .op = QUEUE_OP_LEASE, .now = now, .limit = limit,
                       .owner = owner, .until = lease_until };

  g_return_val_if_fail (queue != NULL, NULL);
  g_return_val_if_fail (owner != NULL, NULL);
  g_return_val_if_fail (error == NULL || *error == NULL, NULL);

  if (limit == 0)
    return g_ptr_array_new_with_free_func ((GDestroyNotify) pmx_queue_message_free);
  if (!queue_call (queue, &req, error))
    return NULL;
  return g_steal_pointer (&req.out_messages);
}

guint
pmx_queue_release_leases (PmxQueue   *queue,
                          const char *owner,
                          gint64      now,
                          GError    **error)
{
  QueueRequest req = { .op = QUEUE_OP_RELEASE, .owner = owner, .now = now };

  g_return_val_if_fail (queue != NULL, 0);
  g_return_val_if_fail (error == NULL || *error == NULL, 0);

  if (!queue_call (queue, &req, error))
    return 0;
  return (guint) req.out_count;
}

gboolean
pmx_queue_complete (PmxQueue         *queue,
                    const char       *id,
                    const PmxAttempt *attempt,
                    GError          **error)
{
  QueueRequest req = { .op = QUEUE_OP_COMPLETE, .id = id, .attempt = attempt };

  g_return_val_if_fail (queue != NULL, FALSE);
  g_return_val_if_fail (id != NULL, FALSE);
  g_return_val_if_fail (attempt != NULL, FALSE);
  g_return_val_if_fail (attempt->n_recipients == 0 || attempt->recipients != NULL, FALSE);
  g_return_val_if_fail (error == NULL || *error == NULL, FALSE);

  for (gsize i = 0; i < attempt->n_recipients; i++)
    g_return_val_if_fail (attempt->recipients[i].address != NULL &&
                          (guint) attempt->recipients[i].state < G_N_ELEMENTS (rcpt_state_names),
                          FALSE);

  return queue_call (queue, &req, error);
}

/* queue_chunk_dup - @str copied into @chunk; NULL stays NULL */
static const char *
queue_chunk_dup (GStringChunk *chunk,
                 const char   *str)
{
  return str != NULL ? g_string_chunk_insert (chunk, str) : NULL;
}

void
pmx_queue_complete_async (PmxQueue            *queue,
                          const char          *id,
                          const PmxAttempt    *attempt,
                          PmxQueueCompleteFunc callback,
                          gpointer             user_data)
{
  g_autoptr(GError) error = NULL;
  PmxAttemptRecipient *rcpts;
  QueueRequest *req;
  PmxAttempt *a;

  g_return_if_fail (queue != NULL);
  g_return_if_fail (id != NULL);
  g_return_if_fail (attempt != NULL);
  g_return_if_fail (callback != NULL);
  g_return_if_fail (attempt->n_recipients == 0 || attempt->recipients != NULL);
  for (gsize i = 0; i < attempt->n_recipients; i++)
    g_return_if_fail (attempt->recipients[i].address != NULL &&
                      (guint) attempt->recipients[i].state < G_N_ELEMENTS (rcpt_state_names));

  /* One allocation for the strings, one for the recipients: the copy
   * lives until the writer has answered. */
  req = g_new0 (QueueRequest, 1);
  req->op = QUEUE_OP_COMPLETE;
  req->deferrable = TRUE;
  req->strings = g_string_chunk_new (256);
  req->complete_func = callback;
  req->complete_data = user_data;
  req->id = queue_chunk_dup (req->strings, id);
  a = &req->attempt_copy;
  *a = *attempt;
  a->transport = queue_chunk_dup (req->strings, attempt->transport);
  a->summary = queue_chunk_dup (req->strings, attempt->summary);
  a->remote_id = queue_chunk_dup (req->strings, attempt->remote_id);
  a->next_transport = queue_chunk_dup (req->strings, attempt->next_transport);
  rcpts = g_new (PmxAttemptRecipient, MAX (attempt->n_recipients, 1));
  for (gsize i = 0; i < attempt->n_recipients; i++)
    {
      const PmxAttemptRecipient *r = &attempt->recipients[i];

      rcpts[i].address = queue_chunk_dup (req->strings, r->address);
      rcpts[i].state = r->state;
      rcpts[i].code = r->code;
      rcpts[i].enhanced = queue_chunk_dup (req->strings, r->enhanced);
      rcpts[i].text = queue_chunk_dup (req->strings, r->text);
    }
  a->recipients = rcpts;
  req->attempt = a;

  if (!queue_push (queue, req, &error))
    {
      callback (queue, req->id, error, user_data);
      queue_request_free (req);
    }
}

gboolean
pmx_queue_unlease (PmxQueue   *queue,
                   const char *id,
                   GError    **error)
{
  QueueRequest req = { .op = QUEUE_OP_UNLEASE, .id = id };

  g_return_val_if_fail (queue != NULL, FALSE);
  g_return_val_if_fail (id != NULL, FALSE);
  g_return_val_if_fail (error == NULL || *error == NULL, FALSE);

  return queue_call (queue, &req, error);
}

gboolean
pmx_queue_postpone (PmxQueue   *queue,
                    const char *id,
                    gint64      until,
                    const char *next_transport,
                    GError    **error)
{
  QueueRequest req = { .op = QUEUE_OP_POSTPONE, .id = id, .until = until, .transport = next_transport };

  g_return_val_if_fail (queue != NULL, FALSE);
  g_return_val_if_fail (id != NULL, FALSE);
  g_return_val_if_fail (error == NULL || *error == NULL, FALSE);

  return queue_call (queue, &req, error);
}

gboolean
pmx_queue_retry (PmxQueue   *queue,
                 const char *id,
                 GError    **error)
{
  QueueRequest req = { .op = QUEUE_OP_RETRY, .id = id, .now = g_get_real_time () };

  g_return_val_if_fail (queue != NULL, FALSE);
  g_return_val_if_fail (id != NULL, FALSE);
  g_return_val_if_fail (error == NULL || *error == NULL, FALSE);

  return queue_call (queue, &req, error);
}

gint64
pmx_queue_hurry_transport (PmxQueue   *queue,
                           const char *transport,
                           GError    **error)
{
  QueueRequest req = { .op = QUEUE_OP_HURRY, .id = transport, .now = g_get_real_time () };

  g_return_val_if_fail (queue != NULL, -1);
  g_return_val_if_fail (transport != NULL, -1);
  g_return_val_if_fail (error == NULL || *error == NULL, -1);

  if (!queue_call (queue, &req, error))
    return -1;
  return req.out_count;
}

gboolean
pmx_queue_delete (PmxQueue   *queue,
                  const char *id,
                  GError    **error)
{
  QueueRequest req = { .op = QUEUE_OP_DELETE, .id = id };

  g_return_val_if_fail (queue != NULL, FALSE);
  g_return_val_if_fail (id != NULL, FALSE);
  g_return_val_if_fail (error == NULL || *error == NULL, FALSE);

  return queue_call (queue, &req, error);
}

gint64
pmx_queue_purge (PmxQueue *queue,
                 gint64    before,
                 GError  **error)
{
  QueueRequest req = { .op = QUEUE_OP_PURGE, .now = before };

  g_return_val_if_fail (queue != NULL, -1);
  g_return_val_if_fail (error == NULL || *error == NULL, -1);

  if (!queue_call (queue, &req, error))
    return -1;
  return req.out_count;
}

/* ---- reads ------------------------------------------------------------- */

/* queue_read_end - end a read transaction; a failure so far rolls back */
static gboolean
queue_read_end (QueueConn *conn,
                gboolean   ok,
                GError   **error)
{
  if (ok)
    return queue_exec (conn, "COMMIT", "ending a read", error);
  sqlite3_exec (conn->db, "ROLLBACK", NULL, NULL, NULL);
  return FALSE;
}

gint64
pmx_queue_next_due (PmxQueue *queue,
                    GError  **error)
{
  gint64 due = -1;

  g_return_val_if_fail (queue != NULL, -1);
  g_return_val_if_fail (error == NULL || *error == NULL, -1);

  g_mutex_lock (&queue->read_lock);
  {
    g_auto (QueueStmt) stmt = queue_prepare (&queue->rconn,
        "SELECT MIN(next_attempt) FROM messages INDEXED BY messages_due "
        "WHERE state IN ('queued', 'deferred')", error);
    gboolean row = FALSE;

    if (stmt != NULL &&
        queue_step (&queue->rconn, stmt, "finding the next due message", &row, error))
      due = (row && sqlite3_column_type (stmt, 0) != SQLITE_NULL)
              ? sqlite3_column_int64 (stmt, 0) : G_MAXINT64;
  }
  g_mutex_unlock (&queue->read_lock);
  return due;
}

GPtrArray *
pmx_queue_list (PmxQueue          *queue,
                const PmxMsgState *states,
                gsize              n_states,
                guint              limit,
                GError           **error)
{
  QueueConn *conn;
  g_autoptr (GString) sql = g_string_new ("SELECT " QUEUE_MSG_COLUMNS " FROM messages");
  g_autoptr (GPtrArray) msgs = g_ptr_array_new_with_free_func ((GDestroyNotify) pmx_queue_message_free);
  gboolean ok;

  g_return_val_if_fail (queue != NULL, NULL);
  g_return_val_if_fail (states != NULL || n_states == 0, NULL);
  g_return_val_if_fail (error == NULL || *error == NULL, NULL);

  if (states != NULL && n_states > 0)
    {
      g_string_append (sql, " WHERE state IN (");
      for (gsize i = 0; i < n_states; i++)
        {
          g_return_val_if_fail ((guint) states[i] < G_N_ELEMENTS (msg_state_names), NULL);
          g_string_append_printf (sql, "%s?%" G_GSIZE_FORMAT, i > 0 ? ", " : "", i + 1);
        }
      g_string_append (sql, ")");
    }
  g_string_append_printf (sql, " ORDER BY id LIMIT ?%" G_GSIZE_FORMAT, n_states + 1);

  conn = &queue->rconn;
  g_mutex_lock (&queue->read_lock);
  ok = queue_exec (conn, "BEGIN", "starting a read", error);
  if (ok)
    {
      g_auto (QueueStmt) stmt = queue_prepare_text (conn, sql->str, error);
      gboolean row = FALSE;

      ok = (stmt != NULL);
      for (gsize i = 0; ok && i < n_states; i++)
        queue_bind_text (stmt, (int) i + 1, msg_state_names[states[i]]);
      if (ok)
        sqlite3_bind_int64 (stmt, (int) n_states + 1, limit == 0 ? -1 : (gint64) limit);
      while (ok)
        {
          ok = queue_step (conn, stmt, "listing messages", &row, error);
          if (!ok || !row)
            break;
          g_ptr_array_add (msgs, queue_message_from_row (stmt, FALSE));
        }
      for (guint i = 0; ok && i < msgs->len; i++)
        ok = queue_load_recipients (conn, g_ptr_array_index (msgs, i), error);
      ok = queue_read_end (conn, ok, error);
    }
  g_mutex_unlock (&queue->read_lock);

  return ok ? g_steal_pointer (&msgs) : NULL;
}

/* queue_load_attempts - the attempt log of @id, oldest first */
static GPtrArray *
queue_load_attempts (QueueConn  *conn,
                     const char *id,
                     GError    **error)
{
  g_autoptr (GPtrArray) recs = g_ptr_array_new_with_free_func ((GDestroyNotify) pmx_queue_attempt_record_free);
  g_auto (QueueStmt) stmt = queue_prepare (conn,
      "SELECT started, finished, transport, summary, remote_id, outcomes "
      "FROM attempts WHERE message_id = ?1 ORDER BY seq", error);
  gboolean row = FALSE;

  if (stmt == NULL)
    return NULL;
  queue_bind_text (stmt, 1, id);
  for (;;)
    {
      PmxQueueAttemptRecord *rec;

      if (!queue_step (conn, stmt, "reading the attempt log", &row, error))
        return NULL;
      if (!row)
        return g_steal_pointer (&recs);
      rec = g_new0 (PmxQueueAttemptRecord, 1);
      rec->started = sqlite3_column_int64 (stmt, 0);
      rec->finished = sqlite3_column_int64 (stmt, 1);
      rec->transport = queue_column_dup (stmt, 2);
      rec->summary = queue_column_dup (stmt, 3);
      rec->remote_id = queue_column_dup (stmt, 4);
      rec->outcomes = queue_column_dup (stmt, 5);
      g_ptr_array_add (recs, rec);
    }
}

PmxQueueMessage *
pmx_queue_get (PmxQueue   *queue,
               const char *id,
               gboolean    with_data,
               GPtrArray **out_attempts,
               GError    **error)
{
  QueueConn *conn;
  g_autoptr (PmxQueueMessage) msg = NULL;
  g_autoptr (GPtrArray) attempts = NULL;
  gboolean ok;

  g_return_val_if_fail (queue != NULL, NULL);
  g_return_val_if_fail (id != NULL, NULL);
  g_return_val_if_fail (error == NULL || *error == NULL, NULL);

  conn = &queue->rconn;
  g_mutex_lock (&queue->read_lock);
  ok = queue_exec (conn, "BEGIN", "starting a read", error);
  if (ok)
    {
      msg = queue_load_message (conn, id, with_data, error);
      ok = (msg != NULL);
      if (ok && out_attempts != NULL)
        {
          attempts = queue_load_attempts (conn, id, error);
          ok = (attempts != NULL);
        }
      ok = queue_read_end (conn, ok, error);
    }
  g_mutex_unlock (&queue->read_lock);

  if (!ok)
    return NULL;
  if (out_attempts != NULL)
    *out_attempts = g_steal_pointer (&attempts);
  return g_steal_pointer (&msg);
}

gint64
pmx_queue_count (PmxQueue    *queue,
                 PmxMsgState  state,
                 GError     **error)
{
  gint64 count = -1;

  g_return_val_if_fail (queue != NULL, -1);
  g_return_val_if_fail ((guint) state < G_N_ELEMENTS (msg_state_names), -1);
  g_return_val_if_fail (error == NULL || *error == NULL, -1);

  g_mutex_lock (&queue->read_lock);
  {
    g_auto (QueueStmt) stmt = queue_prepare (&queue->rconn,
        "SELECT COUNT(*) FROM messages WHERE state = ?1", error);
    gboolean row = FALSE;

    if (stmt != NULL)
      {
        queue_bind_text (stmt, 1, msg_state_names[state]);
        if (queue_step (&queue->rconn, stmt, "counting messages", &row, error))
          count = row ? sqlite3_column_int64 (stmt, 0) : 0;
      }
  }
  g_mutex_unlock (&queue->read_lock);
  return count;
}

gboolean
pmx_queue_foreach_attempt (PmxQueue           *queue,
                           PmxQueueAttemptFunc func,
                           gpointer            user_data,
                           GError            **error)
{
  QueueConn *conn;
  gboolean ok;

  g_return_val_if_fail (queue != NULL, FALSE);
  g_return_val_if_fail (func != NULL, FALSE);
  g_return_val_if_fail (error == NULL || *error == NULL, FALSE);

  conn = &queue->rconn;
  g_mutex_lock (&queue->read_lock);
  ok = queue_exec (conn, "BEGIN", "starting a read", error);
  if (ok)
    {
      g_auto (QueueStmt) stmt = queue_prepare (conn,
          "SELECT transport, started, finished, outcomes FROM attempts ORDER BY seq", error);
      gboolean row = FALSE;

      ok = (stmt != NULL);
      while (ok)
        {
          ok = queue_step (conn, stmt, "reading the attempt log", &row, error);
          if (!ok || !row)
            break;
          func ((const char *) sqlite3_column_text (stmt, 0), sqlite3_column_int64 (stmt, 1),
                sqlite3_column_int64 (stmt, 2), (const char *) sqlite3_column_text (stmt, 3), user_data);
        }
      ok = queue_read_end (conn, ok, error);
    }
  g_mutex_unlock (&queue->read_lock);
  return ok;
}

/* ---- for tests --------------------------------------------------------- */

guint64
pmx_queue_get_commit_count (PmxQueue *queue)
{
  g_return_val_if_fail (queue != NULL, 0);
  return (guint) g_atomic_int_get (&queue->commits);
}

void
pmx_queue_test_hold_writer (PmxQueue *queue,
                            gboolean  hold)
{
  g_return_if_fail (queue != NULL);

  g_mutex_lock (&queue->lock);
  queue->hold = hold;
  g_cond_signal (&queue->cond);
  g_mutex_unlock (&queue->lock);
}

gboolean
pmx_queue_test_limit_pages (PmxQueue *queue,
                            guint     extra_pages,
                            GError  **error)
{
  QueueRequest req = { .op = QUEUE_OP_LIMIT_PAGES, .now = extra_pages };

  g_return_val_if_fail (queue != NULL, FALSE);
  return queue_call (queue, &req, error);
}

/* SPDX-License-Identifier: GPL-3.0-or-later */
/*
 * test-queue.c - unit tests of the durable queue (gateway/pmx-queue.c).
 *
 * Each test gets a fresh queue file in its own temporary directory.  The
 * group-commit test prints its throughput as a TAP comment; nothing here
 * asserts on time.
 */
#include "pmx-queue.h"

#include <sqlite3.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <glib/gstdio.h>

#define HOUR G_GINT64_CONSTANT (3600000000)

typedef struct {
  char     *dir;
  char     *path;
  PmxQueue *queue;
} Fixture;

/* rm_rf - remove @path and everything below it */
static void
rm_rf (const char *path)
{
  GDir *dir = g_dir_open (path, 0, NULL);

  if (dir != NULL)
    {
      const char *name;

      while ((name = g_dir_read_name (dir)) != NULL)
        {
          g_autofree char *child = g_build_filename (path, name, NULL);
          rm_rf (child);
        }
      g_dir_close (dir);
      g_assert_cmpint (g_rmdir (path), ==, 0);
    }
  else
    g_assert_cmpint (g_unlink (path), ==, 0);
}

/* fixture_setup - a fresh queue two directories deep in a temporary one */
static void
fixture_setup (Fixture       *fx,
               gconstpointer  data)
{
  g_autoptr (GError) error = NULL;

  fx->dir = g_dir_make_tmp ("pmx-queue-XXXXXX", &error);
  g_assert_no_error (error);
  fx->path = g_build_filename (fx->dir, "state", "sub", "queue.db", NULL);
  fx->queue = pmx_queue_open (fx->path, &error);
  g_assert_no_error (error);
  g_assert_nonnull (fx->queue);
}

/* fixture_teardown - close the queue and remove its directory */
static void
fixture_teardown (Fixture       *fx,
                  gconstpointer  data)
{
  g_clear_pointer (&fx->queue, pmx_queue_close);
  rm_rf (fx->dir);
  g_free (fx->dir);
  g_free (fx->path);
}

/* submit - submit a small message, asserting success; returns its id */
static char *
submit (PmxQueue          *queue,
        const char        *ingress,
        const char        *key,
        const char *const *rcpts,
        gboolean          *out_duplicate)
{
  g_autoptr (GError) error = NULL;
  g_autoptr (GBytes) data = g_bytes_new_static ("Subject: t\r\n\r\nhello\r\n", 22);
  PmxSubmission sub = {
    .ingress = ingress,
    .sender = "alice@example.org",
    .recipients = rcpts,
    .n_recipients = g_strv_length ((char **) rcpts),
    .data = data,
    .idempotency_key = key,
  };
  char *id = pmx_queue_submit (queue, &sub, out_duplicate, &error);

  g_assert_no_error (error);
  g_assert_nonnull (id);
  return id;
}

static const char *const one_rcpt[] = { "bob@example.net", NULL };
static const char *const three_rcpts[] = { "r1@example.net", "r2@example.net", "r3@example.net", NULL };

/* lease - lease due messages, asserting success */
static GPtrArray *
lease (PmxQueue   *queue,
       gint64      now,
       guint       limit,
       const char *owner,
       gint64      until)
{
  g_autoptr (GError) error = NULL;
  GPtrArray *msgs = pmx_queue_lease_due (queue, now, limit, owner, until, &error);

  g_assert_no_error (error);
  g_assert_nonnull (msgs);
  return msgs;
}

/* get - a message by id, asserting success */
static PmxQueueMessage *
get (PmxQueue   *queue,
     const char *id)
{
  g_autoptr (GError) error = NULL;
  PmxQueueMessage *msg = pmx_queue_get (queue, id, FALSE, NULL, &error);

  g_assert_no_error (error);
  g_assert_nonnull (msg);
  return msg;
}

/* count - messages in @state, asserting success */
static gint64
count (PmxQueue    *queue,
       PmxMsgState  state)
{
  g_autoptr (GError) error = NULL;
  gint64 n = pmx_queue_count (queue, state, &error);

  g_assert_no_error (error);
  return n;
}

/* rcpt - recipient @i of @msg */
static PmxQueueRecipient *
rcpt (PmxQueueMessage *msg,
      guint            i)
{
  g_assert_cmpuint (i, <, msg->recipients->len);
  return g_ptr_array_index (msg->recipients, i);
}

/* complete_all - complete @id with one outcome per address, all @state */
static void
complete_all (PmxQueue          *queue,
              const char        *id,
              const char *const *addrs,
              PmxRcptState       state,
              gint64             next_attempt,
              gint64             finished)
{
  g_autoptr (GError) error = NULL;
  g_autofree PmxAttemptRecipient *rs = NULL;
  guint n = g_strv_length ((char **) addrs);
  PmxAttempt attempt = {
    .transport = "smtp-a", .started = finished - 10, .finished = finished,
    .n_recipients = n, .summary = "summary", .next_attempt = next_attempt,
  };

  rs = g_new0 (PmxAttemptRecipient, n);
  for (guint i = 0; i < n; i++)
    rs[i] = (PmxAttemptRecipient) { .address = addrs[i], .state = state, .code = 250 };
  attempt.recipients = rs;
  g_assert_true (pmx_queue_complete (queue, id, &attempt, &error));
  g_assert_no_error (error);
}

/* is_queue_id - 16 upper-case hex digits */
static gboolean
is_queue_id (const char *id)
{
  if (strlen (id) != 16)
    return FALSE;
  for (const char *p = id; *p != '\0'; p++)
    if (!g_ascii_isdigit (*p) && !(*p >= 'A' && *p <= 'F'))
      return FALSE;
  return TRUE;
}

/* ---- open ---- */

static void
test_open_private_file (Fixture       *fx,
                        gconstpointer  data)
{
  g_autofree char *sub = g_path_get_dirname (fx->path);
  GStatBuf st;

  g_assert_cmpint (g_stat (fx->path, &st), ==, 0);
  g_assert_cmpint (st.st_mode & 0777, ==, 0600);
  g_assert_cmpint (g_stat (sub, &st), ==, 0);
  g_assert_cmpint (st.st_mode & 0777, ==, 0700);
  g_assert_cmpstr (pmx_queue_get_path (fx->queue), ==, fx->path);
  g_assert_cmpint (pmx_queue_next_due (fx->queue, NULL), ==, G_MAXINT64);
}

static void
test_open_not_a_database (void)
{
  g_autoptr (GError) error = NULL;
  g_autofree char *dir = g_dir_make_tmp ("pmx-queue-XXXXXX", NULL);
  g_autofree char *path = g_build_filename (dir, "junk.db", NULL);
  char junk[4096];

  memset (junk, 'x', sizeof junk);
  g_assert_true (g_file_set_contents (path, junk, sizeof junk, NULL));
  g_assert_null (pmx_queue_open (path, &error));
  g_assert_error (error, PMX_QUEUE_ERROR, PMX_QUEUE_ERROR_OPEN);
  g_assert_nonnull (strstr (error->message, path));
  rm_rf (dir);
}

/* sql_count - the one integer @sql gives on the database at @path */
static gint64
sql_count (const char *path,
           const char *sql)
{
  sqlite3 *db = NULL;
  sqlite3_stmt *stmt = NULL;
  gint64 n;

  g_assert_cmpint (sqlite3_open_v2 (path, &db, SQLITE_OPEN_READONLY, NULL), ==, SQLITE_OK);
  g_assert_cmpint (sqlite3_prepare_v2 (db, sql, -1, &stmt, NULL), ==, SQLITE_OK);
  g_assert_cmpint (sqlite3_step (stmt), ==, SQLITE_ROW);
  n = sqlite3_column_int64 (stmt, 0);
  sqlite3_finalize (stmt);
  sqlite3_close (db);
  return n;
}

/* /queue/open/upgrades-schema-1 - a queue written by schema 1 (bodies in
 * messages.data) opens as schema 2 with every message whole: leased with
 * its bytes, and its body gone with it when deleted */
static void
test_open_upgrades_schema_1 (void)
{
  /* Schema 1 as Postmux 0.x created it, with one queued message. */
  static const char v1[] =
    "CREATE TABLE messages (id TEXT PRIMARY KEY NOT NULL, received INTEGER NOT NULL,"
    " ingress TEXT NOT NULL, sender TEXT NOT NULL, size INTEGER NOT NULL, state TEXT NOT NULL,"
    " prev_state TEXT, transport TEXT, next_transport TEXT, attempts INTEGER NOT NULL DEFAULT 0,"
    " next_attempt INTEGER NOT NULL, last_reply TEXT, idempotency_key TEXT, lease_owner TEXT,"
    " lease_until INTEGER, finished INTEGER, data BLOB NOT NULL);"
    "CREATE INDEX messages_due ON messages (next_attempt, id) WHERE state IN ('queued', 'deferred');"
    "CREATE INDEX messages_finished ON messages (state, finished);"
    "CREATE UNIQUE INDEX messages_idempotency ON messages (ingress, idempotency_key)"
    " WHERE idempotency_key IS NOT NULL;"
    "CREATE TABLE recipients (message_id TEXT NOT NULL REFERENCES messages (id) ON DELETE CASCADE,"
    " idx INTEGER NOT NULL, address TEXT NOT NULL, state TEXT NOT NULL, code INTEGER NOT NULL DEFAULT 0,"
    " enhanced TEXT, text TEXT, PRIMARY KEY (message_id, idx)) WITHOUT ROWID;"
    "CREATE TABLE attempts (seq INTEGER PRIMARY KEY, message_id TEXT NOT NULL REFERENCES messages (id)"
    " ON DELETE CASCADE, started INTEGER NOT NULL, finished INTEGER NOT NULL, transport TEXT,"
    " summary TEXT, remote_id TEXT, outcomes TEXT NOT NULL);"
    "CREATE INDEX attempts_message ON attempts (message_id, seq);"
    "INSERT INTO messages (id, received, ingress, sender, size, state, next_attempt, data)"
    " VALUES ('0000000000000001', 1, 'smtp', 'a@example.org', 9, 'queued', 1, X'7375626A3A20780D0A');"
    "INSERT INTO recipients (message_id, idx, address, state) VALUES ('0000000000000001', 0, 'b@example.net', 'queued');"
    "PRAGMA user_version = 1;";
  g_autoptr (GError) error = NULL;
  g_autofree char *dir = g_dir_make_tmp ("pmx-queue-XXXXXX", NULL);
  g_autofree char *path = g_build_filename (dir, "queue.db", NULL);
  g_autoptr (GPtrArray) leased = NULL;
  PmxQueueMessage *msg;
  PmxQueue *queue;
  sqlite3 *db = NULL;
  gsize len = 0;

  g_assert_cmpint (sqlite3_open (path, &db), ==, SQLITE_OK);
  g_assert_cmpint (sqlite3_exec (db, v1, NULL, NULL, NULL), ==, SQLITE_OK);
  sqlite3_close (db);

  queue = pmx_queue_open (path, &error);
  g_assert_no_error (error);
  g_assert_cmpint (sql_count (path, "PRAGMA user_version"), ==, 2);
  g_assert_cmpint (sql_count (path, "SELECT COUNT(*) FROM pragma_table_info('messages') WHERE name = 'data'"), ==, 0);
  g_assert_cmpint (sql_count (path, "SELECT COUNT(*) FROM bodies"), ==, 1);

  leased = pmx_queue_lease_due (queue, 2, 10, "w", HOUR, &error);
  g_assert_no_error (error);
  g_assert_cmpuint (leased->len, ==, 1);
  msg = g_ptr_array_index (leased, 0);
  g_assert_cmpstr (msg->id, ==, "0000000000000001");
  g_assert_cmpstr (msg->sender, ==, "a@example.org");
  g_assert_cmpuint (msg->recipients->len, ==, 1);
  g_assert_cmpmem (g_bytes_get_data (msg->data, &len), g_bytes_get_size (msg->data), "subj: x\r\n", 9);
  g_assert_cmpuint (len, ==, 9);

  g_assert_true (pmx_queue_delete (queue, "0000000000000001", &error));
  g_assert_no_error (error);
  pmx_queue_close (queue);
  g_assert_cmpint (sql_count (path, "SELECT COUNT(*) FROM bodies"), ==, 0);
  g_assert_cmpint (sql_count (path, "SELECT COUNT(*) FROM recipients"), ==, 0);
  rm_rf (dir);
}

/* ---- submit ---- */

static void
test_submit_round_trip (Fixture       *fx,
                        gconstpointer  data)
{
  static const guint8 raw[] = "From: a@example.org\r\nSubject: \xc3\xa9t\xc3\xa9\r\n\r\nbody\0with nul\r\n.\r\n";
  const char *const rcpts[] = { "x@example.net", "y@example.net", "x@example.net" };
  g_autoptr (GBytes) bytes = g_bytes_new_static (raw, sizeof raw - 1);
  g_autoptr (GError) error = NULL;
  g_autoptr (PmxQueueMessage) msg = NULL;
  g_autoptr (GPtrArray) attempts = NULL;
  PmxSubmission sub = {
    .ingress = "smtp:alice", .sender = "", .recipients = rcpts, .n_recipients = 3,
    .data = bytes, .idempotency_key = NULL,
  };
  gint64 before = g_get_real_time ();
  gboolean dup = TRUE;
  g_autofree char *id = pmx_queue_submit (fx->queue, &sub, &dup, &error);
  gint64 after = g_get_real_time ();

  g_assert_no_error (error);
  g_assert_true (is_queue_id (id));
  g_assert_false (dup);

  msg = pmx_queue_get (fx->queue, id, TRUE, &attempts, &error);
  g_assert_no_error (error);
  g_assert_cmpstr (msg->id, ==, id);
  g_assert_cmpint (msg->received, >=, before);
  g_assert_cmpint (msg->received, <=, after);
  g_assert_cmpstr (msg->ingress, ==, "smtp:alice");
  g_assert_cmpstr (msg->sender, ==, "");
  g_assert_cmpuint (msg->size, ==, sizeof raw - 1);
  g_assert_nonnull (msg->data);
  g_assert_true (g_bytes_equal (msg->data, bytes));
  g_assert_cmpint (msg->state, ==, PMX_MSG_QUEUED);
  g_assert_null (msg->transport);
  g_assert_null (msg->next_transport);
  g_assert_cmpuint (msg->attempts, ==, 0);
  g_assert_cmpint (msg->next_attempt, ==, msg->received);
  g_assert_null (msg->last_reply);
  g_assert_null (msg->idempotency_key);
  /* The duplicate recipient is stored once, in submission order. */
  g_assert_cmpuint (msg->recipients->len, ==, 2);
  g_assert_cmpstr (rcpt (msg, 0)->address, ==, "x@example.net");
  g_assert_cmpint (rcpt (msg, 0)->state, ==, PMX_RCPT_STATE_QUEUED);
  g_assert_cmpuint (rcpt (msg, 0)->code, ==, 0);
  g_assert_null (rcpt (msg, 0)->enhanced);
  g_assert_null (rcpt (msg, 0)->text);
  g_assert_cmpstr (rcpt (msg, 1)->address, ==, "y@example.net");
  g_assert_cmpuint (attempts->len, ==, 0);

  /* Without data: no bytes, the size all the same. */
  g_clear_pointer (&msg, pmx_queue_message_free);
  msg = get (fx->queue, id);
  g_assert_null (msg->data);
  g_assert_cmpuint (msg->size, ==, sizeof raw - 1);
  g_assert_cmpint (pmx_queue_next_due (fx->queue, NULL), ==, msg->next_attempt);
}

static void
test_submit_ids_time_ordered (Fixture       *fx,
                              gconstpointer  data)
{
  g_autofree char *prev = NULL;

  for (guint i = 0; i < 50; i++)
    {
      char *id = submit (fx->queue, "local", NULL, one_rcpt, NULL);

      g_assert_true (is_queue_id (id));
      if (prev != NULL)
        g_assert_cmpstr (prev, <, id);
      g_free (prev);
      prev = id;
    }
  g_assert_cmpint (count (fx->queue, PMX_MSG_QUEUED), ==, 50);
}

static void
test_submit_idempotency (Fixture       *fx,
                         gconstpointer  data)
{
  gboolean dup = TRUE;
  g_autofree char *a = submit (fx->queue, "api:key1", "k-1", one_rcpt, &dup);
  g_autofree char *b = NULL;
  g_autofree char *c = NULL;
  g_autofree char *d = NULL;
  g_autofree char *e = NULL;
  g_autoptr (PmxQueueMessage) msg = NULL;

  g_assert_false (dup);
  b = submit (fx->queue, "api:key1", "k-1", three_rcpts, &dup);
  g_assert_true (dup);
  g_assert_cmpstr (b, ==, a);
  /* Same key from another ingress is another message. */
  c = submit (fx->queue, "api:key2", "k-1", one_rcpt, &dup);
  g_assert_false (dup);
  g_assert_cmpstr (c, !=, a);
  /* No key: never a duplicate. */
  d = submit (fx->queue, "api:key1", NULL, one_rcpt, &dup);
  g_assert_false (dup);
  e = submit (fx->queue, "api:key1", NULL, one_rcpt, &dup);
  g_assert_false (dup);
  g_assert_cmpstr (d, !=, e);

  g_assert_cmpint (count (fx->queue, PMX_MSG_QUEUED), ==, 4);
  msg = get (fx->queue, a);
  g_assert_cmpstr (msg->idempotency_key, ==, "k-1");
  g_assert_cmpuint (msg->recipients->len, ==, 1);
}

static void
test_submit_invalid (Fixture       *fx,
                     gconstpointer  data)
{
  g_autoptr (GBytes) bytes = g_bytes_new_static ("x", 1);
  g_autoptr (GBytes) empty = g_bytes_new_static ("", 0);
  const char *const blank[] = { "" };
  struct {
    const char        *name;
    const char        *sender;
    const char *const *rcpts;
    gsize              n_rcpts;
    GBytes            *data;
  } cases[] = {
    { "no recipients", "a@b", one_rcpt, 0, bytes },
    { "NULL sender", NULL, one_rcpt, 1, bytes },
    { "NULL data", "a@b", one_rcpt, 1, NULL },
    { "empty data", "a@b", one_rcpt, 1, empty },
    { "empty recipient", "a@b", blank, 1, bytes },
  };

  for (guint i = 0; i < G_N_ELEMENTS (cases); i++)
    {
      g_autoptr (GError) error = NULL;
      PmxSubmission sub = {
        .ingress = "local", .sender = cases[i].sender, .recipients = cases[i].rcpts,
        .n_recipients = cases[i].n_rcpts, .data = cases[i].data,
      };
      g_autofree char *id = NULL;

      g_test_message ("case: %s", cases[i].name);
      id = pmx_queue_submit (fx->queue, &sub, NULL, &error);
      g_assert_null (id);
      g_assert_error (error, PMX_QUEUE_ERROR, PMX_QUEUE_ERROR_INVALID);
      g_assert_nonnull (strstr (error->message, fx->path));
    }
  g_assert_cmpint (count (fx->queue, PMX_MSG_QUEUED), ==, 0);
  g_assert_cmpuint (pmx_queue_get_commit_count (fx->queue), ==, 0);
}

static void
test_submit_durable (Fixture       *fx,
                     gconstpointer  data)
{
  g_autoptr (GError) error = NULL;
  g_autofree char *id = submit (fx->queue, "local", "durable", three_rcpts, NULL);
  g_autoptr (PmxQueueMessage) msg = NULL;
  gboolean dup = FALSE;
  g_autofree char *again = NULL;

  pmx_queue_close (fx->queue);
  fx->queue = pmx_queue_open (fx->path, &error);
  g_assert_no_error (error);

  msg = pmx_queue_get (fx->queue, id, TRUE, NULL, &error);
  g_assert_no_error (error);
  g_assert_cmpstr (msg->id, ==, id);
  g_assert_cmpuint (msg->recipients->len, ==, 3);
  g_assert_cmpuint (g_bytes_get_size (msg->data), ==, 22);
  /* The idempotency key survives as well. */
  again = submit (fx->queue, "local", "durable", three_rcpts, &dup);
  g_assert_true (dup);
  g_assert_cmpstr (again, ==, id);
}

/* crash_dir - the directory a crash test's parent @pid and its child share */
static char *
crash_dir (pid_t pid)
{
  g_autofree char *name = g_strdup_printf ("pmx-queue-crash-%ld", (long) pid);

  return g_build_filename (g_get_tmp_dir (), name, NULL);
}

static void
test_crash_acknowledged_survives (void)
{
  g_autoptr (GError) error = NULL;
  g_autofree char *dir = NULL;
  g_autofree char *path = NULL;
  g_autoptr (GPtrArray) list = NULL;
  PmxQueue *queue;
  PmxQueueMessage *msg;

  if (g_test_subprocess ())
    {
      dir = crash_dir (getppid ());
      path = g_build_filename (dir, "queue.db", NULL);
      queue = pmx_queue_open (path, &error);
      g_assert_no_error (error);
      g_free (submit (queue, "smtp:crash", "crash-key", three_rcpts, NULL));
      /* Die right after the acknowledgement: no close, no checkpoint. */
      _exit (0);
    }

  dir = crash_dir (getpid ());
  path = g_build_filename (dir, "queue.db", NULL);
  g_assert_cmpint (g_mkdir (dir, 0700), ==, 0);
  g_test_trap_subprocess (NULL, 0, G_TEST_SUBPROCESS_DEFAULT);
  g_test_trap_assert_passed ();

  queue = pmx_queue_open (path, &error);
  g_assert_no_error (error);
  list = pmx_queue_list (queue, NULL, 0, 0, &error);
  g_assert_no_error (error);
  g_assert_cmpuint (list->len, ==, 1);
  msg = list->pdata[0];
  g_assert_cmpstr (msg->ingress, ==, "smtp:crash");
  g_assert_cmpstr (msg->idempotency_key, ==, "crash-key");
  g_assert_cmpint (msg->state, ==, PMX_MSG_QUEUED);
  g_assert_cmpuint (msg->recipients->len, ==, 3);
  pmx_queue_close (queue);
  rm_rf (dir);
}

static void
test_submit_second_handle (Fixture       *fx,
                           gconstpointer  data)
{
  g_autoptr (GError) error = NULL;
  PmxQueue *other = pmx_queue_open (fx->path, &error);
  g_autofree char *a = NULL;
  g_autofree char *b = NULL;
  g_autoptr (PmxQueueMessage) msg = NULL;
  g_autoptr (GPtrArray) list = NULL;

  g_assert_no_error (error);
  a = submit (fx->queue, "local", NULL, one_rcpt, NULL);
  msg = get (other, a);
  g_assert_cmpstr (msg->id, ==, a);

  b = submit (other, "local", NULL, one_rcpt, NULL);
  list = pmx_queue_list (fx->queue, NULL, 0, 0, &error);
  g_assert_no_error (error);
  g_assert_cmpuint (list->len, ==, 2);
  g_assert_cmpstr (((PmxQueueMessage *) list->pdata[0])->id, ==, a);
  g_assert_cmpstr (((PmxQueueMessage *) list->pdata[1])->id, ==, b);

  /* A lease taken through one handle is seen by the other. */
  g_ptr_array_unref (lease (other, G_MAXINT64, 10, "w", G_MAXINT64));
  g_assert_cmpint (count (fx->queue, PMX_MSG_INFLIGHT), ==, 2);
  pmx_queue_close (other);
}

typedef struct {
  PmxQueue  *queue;
  GMainLoop *loop;
  GThread   *thread;
  guint      pending;
  GPtrArray *ids;       /* char*, NULL for a failure */
  GPtrArray *errors;    /* GError*, NULL for a success */
  gboolean   last_dup;
} AsyncState;

/* async_done - collect one async answer; quit the loop after the last */
static void
async_done (GObject      *source,
            GAsyncResult *result,
            gpointer      user_data)
{
  AsyncState *st = user_data;
  GError *error = NULL;
  char *id;

  g_assert_null (source);
  g_assert_true (g_thread_self () == st->thread);
  id = pmx_queue_submit_finish (st->queue, result, &st->last_dup, &error);
  g_ptr_array_add (st->ids, id);
  g_ptr_array_add (st->errors, error);
  if (--st->pending == 0)
    g_main_loop_quit (st->loop);
}

/* async_submit - pmx_queue_submit_async() of a small message into @st */
static void
async_submit (PmxQueue     *queue,
              AsyncState   *st,
              gsize         size,
              const char   *key,
              GCancellable *cancellable)
{
  g_autofree char *raw = g_malloc (size);
  g_autoptr (GBytes) bytes = NULL;
  PmxSubmission sub = {
    .ingress = "api:k", .sender = "a@example.org", .recipients = one_rcpt,
    .n_recipients = 1, .idempotency_key = key,
  };

  memset (raw, 'm', size);
  bytes = g_bytes_new_take (g_steal_pointer (&raw), size);
  sub.data = bytes;
  st->queue = queue;
  st->pending++;
  pmx_queue_submit_async (queue, &sub, cancellable, async_done, st);
}

/* error_free0 - g_error_free() that takes NULL, for arrays with holes */
static void
error_free0 (gpointer error)
{
  if (error != NULL)
    g_error_free (error);
}

/* async_state_new - a state whose loop runs on a fresh thread-default context */
static AsyncState *
async_state_new (GMainContext *context)
{
  AsyncState *st = g_new0 (AsyncState, 1);

  st->loop = g_main_loop_new (context, FALSE);
  st->thread = g_thread_self ();
  st->ids = g_ptr_array_new_with_free_func (g_free);
  st->errors = g_ptr_array_new_with_free_func (error_free0);
  return st;
}

/* async_state_free - free an AsyncState */
static void
async_state_free (AsyncState *st)
{
  g_main_loop_unref (st->loop);
  g_ptr_array_unref (st->ids);
  g_ptr_array_unref (st->errors);
  g_free (st);
}

static void
test_submit_async (Fixture       *fx,
                   gconstpointer  data)
{
  g_autoptr (GMainContext) context = g_main_context_new ();
  AsyncState *st;

  g_main_context_push_thread_default (context);
  st = async_state_new (context);
  async_submit (fx->queue, st, 100, NULL, NULL);
  async_submit (fx->queue, st, 200, "same", NULL);
  async_submit (fx->queue, st, 300, NULL, NULL);
  g_main_loop_run (st->loop);
  g_assert_cmpuint (st->ids->len, ==, 3);
  for (guint i = 0; i < 3; i++)
    {
      g_assert_null (st->errors->pdata[i]);
      g_assert_true (is_queue_id (st->ids->pdata[i]));
    }
  g_assert_false (st->last_dup);

  /* The same key again: answered with the first id, as a duplicate. */
  async_submit (fx->queue, st, 200, "same", NULL);
  g_main_loop_run (st->loop);
  g_assert_cmpuint (st->ids->len, ==, 4);
  g_assert_true (st->last_dup);
  g_assert_null (st->errors->pdata[3]);
  g_assert_cmpint (count (fx->queue, PMX_MSG_QUEUED), ==, 3);

  /* Invalid submissions fail through the callback as well. */
  {
    g_autoptr (GBytes) empty = g_bytes_new_static ("", 0);
    PmxSubmission sub = { .ingress = "api:k", .sender = "", .recipients = one_rcpt,
                          .n_recipients = 1, .data = empty };

    st->queue = fx->queue;
    st->pending++;
    pmx_queue_submit_async (fx->queue, &sub, NULL, async_done, st);
    g_main_loop_run (st->loop);
    g_assert_null (st->ids->pdata[4]);
    g_assert_error ((GError *) st->errors->pdata[4], PMX_QUEUE_ERROR, PMX_QUEUE_ERROR_INVALID);
  }

  async_state_free (st);
  g_main_context_pop_thread_default (context);
}

typedef struct {
  PmxQueue  *queue;
  guint      n;
  GPtrArray *ids;
} SubmitThread;

/* submit_thread - submit t->n messages one after another */
static gpointer
submit_thread (gpointer data)
{
  SubmitThread *t = data;

  for (guint i = 0; i < t->n; i++)
    g_ptr_array_add (t->ids, submit (t->queue, "api:bench", NULL, one_rcpt, NULL));
  return NULL;
}

static void
test_submit_group_commit (Fixture       *fx,
                          gconstpointer  data)
{
  enum { N_THREADS = 8, PER_THREAD = 200 };
  SubmitThread threads[N_THREADS];
  GThread *handles[N_THREADS];
  g_autoptr (GHashTable) seen = g_hash_table_new (g_str_hash, g_str_equal);
  guint64 commits;
  gint64 start, elapsed;

  start = g_get_monotonic_time ();
  for (guint i = 0; i < N_THREADS; i++)
    {
      threads[i] = (SubmitThread) { fx->queue, PER_THREAD, g_ptr_array_new_with_free_func (g_free) };
      handles[i] = g_thread_new ("submitter", submit_thread, &threads[i]);
    }
  for (guint i = 0; i < N_THREADS; i++)
    g_thread_join (handles[i]);
  elapsed = MAX (g_get_monotonic_time () - start, 1);
  commits = pmx_queue_get_commit_count (fx->queue);

  for (guint i = 0; i < N_THREADS; i++)
    {
      g_assert_cmpuint (threads[i].ids->len, ==, PER_THREAD);
      for (guint j = 0; j < PER_THREAD; j++)
        g_assert_true (g_hash_table_add (seen, threads[i].ids->pdata[j]));
    }
  g_assert_cmpuint (g_hash_table_size (seen), ==, N_THREADS * PER_THREAD);
  g_assert_cmpint (count (fx->queue, PMX_MSG_QUEUED), ==, N_THREADS * PER_THREAD);

  g_test_message ("group commit: %d submissions from %d threads in %" G_GINT64_FORMAT
                  " ms: %.0f submissions/s, %" G_GUINT64_FORMAT " commits (%.1f per commit)",
                  N_THREADS * PER_THREAD, N_THREADS, elapsed / 1000,
                  N_THREADS * PER_THREAD * 1e6 / (double) elapsed, commits,
                  N_THREADS * PER_THREAD / (double) MAX (commits, 1));
  g_assert_cmpuint (commits, >=, 1);
  g_assert_cmpuint (commits, <=, N_THREADS * PER_THREAD / 2);

  for (guint i = 0; i < N_THREADS; i++)
    g_ptr_array_unref (threads[i].ids);
}

/* ---- lease ---- */

static void
test_lease_due_limit_order (Fixture       *fx,
                            gconstpointer  data)
{
  gint64 t0 = g_get_real_time ();
  g_autofree char *a = submit (fx->queue, "local", NULL, one_rcpt, NULL);
  g_autofree char *b = submit (fx->queue, "local", NULL, three_rcpts, NULL);
  g_autofree char *c = submit (fx->queue, "local", NULL, one_rcpt, NULL);
  gint64 now = g_get_real_time ();
  g_autoptr (GPtrArray) msgs = NULL;
  PmxQueueMessage *m;

  /* Nothing is due before it was received. */
  msgs = lease (fx->queue, t0 - 1, 10, "w1", now + HOUR);
  g_assert_cmpuint (msgs->len, ==, 0);
  g_clear_pointer (&msgs, g_ptr_array_unref);

  /* Oldest first, at most @limit, with data and recipients. */
  msgs = lease (fx->queue, now, 2, "w1", now + HOUR);
  g_assert_cmpuint (msgs->len, ==, 2);
  m = msgs->pdata[0];
  g_assert_cmpstr (m->id, ==, a);
  g_assert_cmpint (m->state, ==, PMX_MSG_INFLIGHT);
  g_assert_nonnull (m->data);
  g_assert_cmpuint (g_bytes_get_size (m->data), ==, 22);
  g_assert_cmpuint (m->recipients->len, ==, 1);
  m = msgs->pdata[1];
  g_assert_cmpstr (m->id, ==, b);
  g_assert_cmpuint (m->recipients->len, ==, 3);
  g_assert_cmpstr (rcpt (m, 2)->address, ==, "r3@example.net");
  g_clear_pointer (&msgs, g_ptr_array_unref);

  /* Leased messages are not leased again. */
  msgs = lease (fx->queue, now, 10, "w2", now + HOUR);
  g_assert_cmpuint (msgs->len, ==, 1);
  g_assert_cmpstr (((PmxQueueMessage *) msgs->pdata[0])->id, ==, c);
  g_clear_pointer (&msgs, g_ptr_array_unref);
  msgs = lease (fx->queue, G_MAXINT64, 10, "w2", now + HOUR);
  g_assert_cmpuint (msgs->len, ==, 0);
  g_clear_pointer (&msgs, g_ptr_array_unref);
  g_assert_cmpint (count (fx->queue, PMX_MSG_INFLIGHT), ==, 3);
  g_assert_cmpint (pmx_queue_next_due (fx->queue, NULL), ==, G_MAXINT64);

  /* Deferred: due at its next attempt, ordered by it rather than by id. */
  complete_all (fx->queue, a, one_rcpt, PMX_RCPT_STATE_DEFERRED, now + 3 * HOUR, now);
  complete_all (fx->queue, b, three_rcpts, PMX_RCPT_STATE_DEFERRED, now + 2 * HOUR, now);
  complete_all (fx->queue, c, one_rcpt, PMX_RCPT_STATE_DEFERRED, now + 3 * HOUR, now);
  g_assert_cmpint (pmx_queue_next_due (fx->queue, NULL), ==, now + 2 * HOUR);
  msgs = lease (fx->queue, now + HOUR, 10, "w1", now + 5 * HOUR);
  g_assert_cmpuint (msgs->len, ==, 0);
  g_clear_pointer (&msgs, g_ptr_array_unref);
  msgs = lease (fx->queue, now + 3 * HOUR, 10, "w1", now + 5 * HOUR);
  g_assert_cmpuint (msgs->len, ==, 3);
  g_assert_cmpstr (((PmxQueueMessage *) msgs->pdata[0])->id, ==, b);
  g_assert_cmpstr (((PmxQueueMessage *) msgs->pdata[1])->id, ==, a);
  g_assert_cmpstr (((PmxQueueMessage *) msgs->pdata[2])->id, ==, c);
  m = msgs->pdata[0];
  g_assert_cmpint (rcpt (m, 0)->state, ==, PMX_RCPT_STATE_DEFERRED);
  g_assert_cmpuint (m->attempts, ==, 1);
}

typedef struct {
  PmxQueue   *queue;
  const char *owner;
  GPtrArray  *ids;
} LeaseThread;

/* lease_thread - lease until nothing is left, noting every id */
static gpointer
lease_thread (gpointer data)
{
  LeaseThread *t = data;

  for (;;)
    {
      g_autoptr (GPtrArray) msgs = lease (t->queue, G_MAXINT64, 7, t->owner, G_MAXINT64);

      if (msgs->len == 0)
        return NULL;
      for (guint i = 0; i < msgs->len; i++)
        g_ptr_array_add (t->ids, g_strdup (((PmxQueueMessage *) msgs->pdata[i])->id));
    }
}

static void
test_lease_not_twice (Fixture       *fx,
                      gconstpointer  data)
{
  enum { N_THREADS = 4, N_MSGS = 100 };
  LeaseThread threads[N_THREADS];
  GThread *handles[N_THREADS];
  g_autoptr (GHashTable) seen = g_hash_table_new (g_str_hash, g_str_equal);

  for (guint i = 0; i < N_MSGS; i++)
    g_free (submit (fx->queue, "local", NULL, one_rcpt, NULL));
  for (guint i = 0; i < N_THREADS; i++)
    {
      threads[i] = (LeaseThread) { fx->queue, "w", g_ptr_array_new_with_free_func (g_free) };
      handles[i] = g_thread_new ("leaser", lease_thread, &threads[i]);
    }
  for (guint i = 0; i < N_THREADS; i++)
    g_thread_join (handles[i]);
  for (guint i = 0; i < N_THREADS; i++)
    {
      for (guint j = 0; j < threads[i].ids->len; j++)
        g_assert_true (g_hash_table_add (seen, threads[i].ids->pdata[j]));
    }
  g_assert_cmpuint (g_hash_table_size (seen), ==, N_MSGS);
  g_assert_cmpint (count (fx->queue, PMX_MSG_INFLIGHT), ==, N_MSGS);
  g_assert_cmpint (count (fx->queue, PMX_MSG_QUEUED), ==, 0);
  for (guint i = 0; i < N_THREADS; i++)
    g_ptr_array_unref (threads[i].ids);
}

/* ---- complete ---- */

static void
test_complete_mixed (Fixture       *fx,
                     gconstpointer  data)
{
  g_autoptr (GError) error = NULL;
  g_autofree char *id = submit (fx->queue, "local", NULL, three_rcpts, NULL);
  gint64 now = g_get_real_time ();
  g_autoptr (GPtrArray) msgs = lease (fx->queue, now, 1, "w1", now + HOUR);
  g_autoptr (PmxQueueMessage) msg = NULL;
  g_autoptr (GPtrArray) log = NULL;
  PmxQueueAttemptRecord *rec;
  const PmxAttemptRecipient first[] = {
    { "r1@example.net", PMX_RCPT_STATE_DELIVERED, 250, "2.0.0", "OK queued as 12" },
    { "r2@example.net", PMX_RCPT_STATE_DEFERRED, 451, "4.3.0", "try\r\nlater" },
    { "r3@example.net", PMX_RCPT_STATE_BOUNCED, 550, "5.1.1", "no such user" },
  };
  PmxAttempt attempt = {
    .transport = "smtp-a", .started = now + 1, .finished = now + 2,
    .recipients = first, .n_recipients = 3, .summary = "451 4.3.0 try later",
    .remote_id = "12", .next_attempt = now + HOUR, .next_transport = "smtp-b",
  };
  const PmxAttemptRecipient second[] = {
    { "r2@example.net", PMX_RCPT_STATE_DELIVERED, 250, NULL, NULL },
  };

  g_assert_cmpuint (msgs->len, ==, 1);
  g_assert_true (pmx_queue_complete (fx->queue, id, &attempt, &error));
  g_assert_no_error (error);

  msg = pmx_queue_get (fx->queue, id, FALSE, &log, &error);
  g_assert_no_error (error);
  g_assert_cmpint (msg->state, ==, PMX_MSG_DEFERRED);
  g_assert_cmpint (msg->next_attempt, ==, now + HOUR);
  g_assert_cmpuint (msg->attempts, ==, 1);
  g_assert_cmpstr (msg->transport, ==, "smtp-a");
  g_assert_cmpstr (msg->next_transport, ==, "smtp-b");
  g_assert_cmpstr (msg->last_reply, ==, "451 4.3.0 try later");
  g_assert_cmpint (rcpt (msg, 0)->state, ==, PMX_RCPT_STATE_DELIVERED);
  g_assert_cmpuint (rcpt (msg, 0)->code, ==, 250);
  g_assert_cmpstr (rcpt (msg, 0)->enhanced, ==, "2.0.0");
  g_assert_cmpstr (rcpt (msg, 0)->text, ==, "OK queued as 12");
  g_assert_cmpint (rcpt (msg, 1)->state, ==, PMX_RCPT_STATE_DEFERRED);
  g_assert_cmpuint (rcpt (msg, 1)->code, ==, 451);
  g_assert_cmpstr (rcpt (msg, 1)->text, ==, "try\r\nlater");
  g_assert_cmpint (rcpt (msg, 2)->state, ==, PMX_RCPT_STATE_BOUNCED);
  g_assert_cmpuint (rcpt (msg, 2)->code, ==, 550);
  g_assert_cmpstr (rcpt (msg, 2)->enhanced, ==, "5.1.1");
  g_assert_cmpint (count (fx->queue, PMX_MSG_INFLIGHT), ==, 0);
  g_assert_cmpuint (log->len, ==, 1);
  rec = log->pdata[0];
  g_assert_cmpint (rec->started, ==, now + 1);
  g_assert_cmpint (rec->finished, ==, now + 2);
  g_assert_cmpstr (rec->transport, ==, "smtp-a");
  g_assert_cmpstr (rec->summary, ==, "451 4.3.0 try later");
  g_assert_cmpstr (rec->remote_id, ==, "12");
  g_assert_cmpstr (rec->outcomes, ==,
                   "r1@example.net delivered 250 2.0.0 OK queued as 12\n"
                   "r2@example.net deferred 451 4.3.0 try  later\n"
                   "r3@example.net bounced 550 5.1.1 no such user");
  g_clear_pointer (&msg, pmx_queue_message_free);
  g_clear_pointer (&log, g_ptr_array_unref);

  /* Second attempt: r2 only; r1 delivered + r3 bounced, none pending. */
  g_clear_pointer (&msgs, g_ptr_array_unref);
  msgs = lease (fx->queue, now + HOUR, 10, "w1", now + 2 * HOUR);
  g_assert_cmpuint (msgs->len, ==, 1);
  g_assert_cmpuint (((PmxQueueMessage *) msgs->pdata[0])->recipients->len, ==, 3);
  attempt = (PmxAttempt) {
    .transport = "smtp-b", .started = now + HOUR, .finished = now + HOUR + 5,
    .recipients = second, .n_recipients = 1, .summary = "250 ok",
  };
  g_assert_true (pmx_queue_complete (fx->queue, id, &attempt, &error));
  g_assert_no_error (error);

  msg = pmx_queue_get (fx->queue, id, FALSE, &log, &error);
  g_assert_no_error (error);
  g_assert_cmpint (msg->state, ==, PMX_MSG_BOUNCED);
  g_assert_cmpuint (msg->attempts, ==, 2);
  g_assert_cmpstr (msg->transport, ==, "smtp-b");
  g_assert_null (msg->next_transport);
  g_assert_cmpstr (msg->last_reply, ==, "250 ok");
  g_assert_cmpint (rcpt (msg, 1)->state, ==, PMX_RCPT_STATE_DELIVERED);
  g_assert_null (rcpt (msg, 1)->enhanced);
  g_assert_cmpuint (log->len, ==, 2);
  g_assert_cmpstr (((PmxQueueAttemptRecord *) log->pdata[1])->outcomes, ==,
                   "r2@example.net delivered 250 - ");
  g_assert_cmpint (pmx_queue_next_due (fx->queue, NULL), ==, G_MAXINT64);
}

static void
test_complete_final_states (Fixture       *fx,
                            gconstpointer  data)
{
  const char *const two[] = { "r1@example.net", "r2@example.net", NULL };
  g_autofree char *a = submit (fx->queue, "local", NULL, two, NULL);
  g_autofree char *b = submit (fx->queue, "local", NULL, two, NULL);
  g_autoptr (PmxQueueMessage) ma = NULL;
  g_autoptr (PmxQueueMessage) mb = NULL;
  const PmxAttemptRecipient mixed[] = {
    { "r1@example.net", PMX_RCPT_STATE_DELIVERED, 250, NULL, NULL },
    { "r2@example.net", PMX_RCPT_STATE_EXPIRED, 0, NULL, "gave up after 5 days" },
  };
  PmxAttempt attempt = {
    .transport = "t", .recipients = mixed, .n_recipients = 2, .summary = "s",
  };
  g_autoptr (GError) error = NULL;

  g_ptr_array_unref (lease (fx->queue, G_MAXINT64, 10, "w", G_MAXINT64));
  complete_all (fx->queue, a, two, PMX_RCPT_STATE_DELIVERED, 0, 1000);
  g_assert_true (pmx_queue_complete (fx->queue, b, &attempt, &error));
  g_assert_no_error (error);
  ma = get (fx->queue, a);
  mb = get (fx->queue, b);
  g_assert_cmpint (ma->state, ==, PMX_MSG_DELIVERED);
  g_assert_cmpint (mb->state, ==, PMX_MSG_EXPIRED);
  g_assert_cmpint (rcpt (mb, 1)->state, ==, PMX_RCPT_STATE_EXPIRED);
}

/* covers_all: the state comes from the attempt's outcomes, without
 * reading the recipients back, and must be the same as the derived one. */
static void
test_complete_covers_all (Fixture       *fx,
                          gconstpointer  data)
{
  const char *const two[] = { "r1@example.net", "r2@example.net", NULL };
  static const struct {
    PmxRcptState first, second;
    PmxMsgState  want;
  } cases[] = {
    { PMX_RCPT_STATE_DELIVERED, PMX_RCPT_STATE_DELIVERED, PMX_MSG_DELIVERED },
    { PMX_RCPT_STATE_DELIVERED, PMX_RCPT_STATE_BOUNCED,   PMX_MSG_BOUNCED },
    { PMX_RCPT_STATE_DELIVERED, PMX_RCPT_STATE_EXPIRED,   PMX_MSG_EXPIRED },
    { PMX_RCPT_STATE_BOUNCED,   PMX_RCPT_STATE_DEFERRED,  PMX_MSG_DEFERRED },
  };

  for (gsize c = 0; c < G_N_ELEMENTS (cases); c++)
    for (int covers = 0; covers <= 1; covers++)
      {
        g_autofree char *id = submit (fx->queue, "local", NULL, two, NULL);
        g_autoptr (PmxQueueMessage) before = get (fx->queue, id);
        g_autoptr (PmxQueueMessage) msg = NULL;
        g_autoptr (GPtrArray) leased = lease (fx->queue, G_MAXINT64, 10, "w", G_MAXINT64);
        const PmxAttemptRecipient outcomes[] = {
          { "r1@example.net", cases[c].first, 250, NULL, NULL },
          { "r2@example.net", cases[c].second, 451, NULL, NULL },
        };
        PmxAttempt attempt = {
          .transport = "t", .recipients = outcomes, .n_recipients = 2, .summary = "s",
          .next_attempt = 4242, .covers_all = covers,
        };
        g_autoptr (GError) error = NULL;

        g_assert_cmpuint (leased->len, ==, 1);
        g_assert_true (pmx_queue_complete (fx->queue, id, &attempt, &error));
        g_assert_no_error (error);
        msg = get (fx->queue, id);
        g_assert_cmpint (msg->state, ==, cases[c].want);
        g_assert_cmpuint (msg->attempts, ==, 1);
        /* A deferred message is due at the attempt's next_attempt; a
         * final one keeps the one it had. */
        g_assert_cmpint (msg->next_attempt, ==,
                         cases[c].want == PMX_MSG_DEFERRED ? 4242 : before->next_attempt);
        if (cases[c].want == PMX_MSG_DEFERRED)
          g_assert_true (pmx_queue_delete (fx->queue, id, NULL));
      }
}

static void
test_complete_errors (Fixture       *fx,
                      gconstpointer  data)
{
  g_autoptr (GError) error = NULL;
  g_autofree char *id = submit (fx->queue, "local", NULL, three_rcpts, NULL);
  g_autoptr (PmxQueueMessage) msg = NULL;
  g_autoptr (GPtrArray) log = NULL;
  const PmxAttemptRecipient stranger[] = {
    { "r1@example.net", PMX_RCPT_STATE_DELIVERED, 250, NULL, NULL },
    { "nobody@example.net", PMX_RCPT_STATE_DELIVERED, 250, NULL, NULL },
  };
  PmxAttempt attempt = {
    .transport = "t", .recipients = stranger, .n_recipients = 2, .summary = "s",
  };

  g_ptr_array_unref (lease (fx->queue, G_MAXINT64, 10, "w", G_MAXINT64));
  g_assert_false (pmx_queue_complete (fx->queue, "00000000000000FF", &attempt, &error));
  g_assert_error (error, PMX_QUEUE_ERROR, PMX_QUEUE_ERROR_NOT_FOUND);
  g_clear_error (&error);

  /* An unknown recipient refuses the whole attempt: r1's update is undone. */
  g_assert_false (pmx_queue_complete (fx->queue, id, &attempt, &error));
  g_assert_error (error, PMX_QUEUE_ERROR, PMX_QUEUE_ERROR_INVALID);
  g_assert_nonnull (strstr (error->message, "nobody@example.net"));
  msg = pmx_queue_get (fx->queue, id, FALSE, &log, NULL);
  g_assert_cmpint (msg->state, ==, PMX_MSG_INFLIGHT);
  g_assert_cmpuint (msg->attempts, ==, 0);
  g_assert_cmpint (rcpt (msg, 0)->state, ==, PMX_RCPT_STATE_QUEUED);
  g_assert_cmpuint (log->len, ==, 0);
}

/* ---- asynchronous completion ---- */

/* What the completion callbacks of one test saw. */
typedef struct {
  GMutex     lock;
  GCond      cond;
  GPtrArray *ids;       /* char*, in callback order */
  GPtrArray *errors;    /* GError* or NULL, same order */
  guint64    commits;   /* commit count seen inside the first callback */
} CompleteState;

/* complete_cb - PmxQueueCompleteFunc recording what it was told */
static void
complete_cb (PmxQueue     *queue,
             const char   *id,
             const GError *error,
             gpointer      user_data)
{
  CompleteState *st = user_data;

  g_mutex_lock (&st->lock);
  if (st->ids->len == 0)
    st->commits = pmx_queue_get_commit_count (queue);
  g_ptr_array_add (st->ids, g_strdup (id));
  g_ptr_array_add (st->errors, error != NULL ? g_error_copy (error) : NULL);
  g_cond_broadcast (&st->cond);
  g_mutex_unlock (&st->lock);
}

/* complete_state_wait - until @n callbacks ran */
static void
complete_state_wait (CompleteState *st,
                     guint          n)
{
  g_mutex_lock (&st->lock);
  while (st->ids->len < n)
    g_cond_wait (&st->cond, &st->lock);
  g_mutex_unlock (&st->lock);
}

static void
complete_error_free (gpointer error)
{
  if (error != NULL)
    g_error_free (error);
}

static void
complete_state_init (CompleteState *st)
{
  g_mutex_init (&st->lock);
  g_cond_init (&st->cond);
  st->ids = g_ptr_array_new_with_free_func (g_free);
  st->errors = g_ptr_array_new_with_free_func (complete_error_free);
}

static void
complete_state_clear (CompleteState *st)
{
  g_ptr_array_unref (st->ids);
  g_ptr_array_unref (st->errors);
  g_cond_clear (&st->cond);
  g_mutex_clear (&st->lock);
}

static void
test_complete_async (Fixture       *fx,
                     gconstpointer  data)
{
  CompleteState st = { 0, };
  g_autofree char *a = submit (fx->queue, "local", NULL, one_rcpt, NULL);
  g_autofree char *b = submit (fx->queue, "local", NULL, one_rcpt, NULL);
  g_autoptr (PmxQueueMessage) ma = NULL;
  g_autoptr (PmxQueueMessage) mb = NULL;
  guint64 commits;

  complete_state_init (&st);
  g_ptr_array_unref (lease (fx->queue, G_MAXINT64, 10, "w", G_MAXINT64));
  commits = pmx_queue_get_commit_count (fx->queue);

  /* The caller's strings die at once: the queue must have copied them. */
  pmx_queue_test_hold_writer (fx->queue, TRUE);
  for (guint i = 0; i < 2; i++)
    {
      g_autofree char *id = g_strdup (i == 0 ? a : b);
      g_autofree char *addr = g_strdup (one_rcpt[0]);
      g_autofree char *text = g_strdup ("2.0.0 ok");
      PmxAttemptRecipient r = { addr, PMX_RCPT_STATE_DELIVERED, 250, "2.0.0", text };
      PmxAttempt attempt = { .transport = "smtp-a", .started = 1, .finished = 2,
                             .recipients = &r, .n_recipients = 1, .summary = "delivered 1" };

      pmx_queue_complete_async (fx->queue, id, &attempt, complete_cb, &st);
      memset (addr, 'x', strlen (addr));
      memset (text, 'x', strlen (text));
    }
  g_assert_cmpuint (st.ids->len, ==, 0);   /* nothing before the commit */
  pmx_queue_test_hold_writer (fx->queue, FALSE);
  complete_state_wait (&st, 2);

  /* Both in one commit, and the callbacks ran after it. */
  g_assert_cmpuint (pmx_queue_get_commit_count (fx->queue), ==, commits + 1);
  g_assert_cmpuint (st.commits, ==, commits + 1);
  g_assert_cmpstr (st.ids->pdata[0], ==, a);
  g_assert_cmpstr (st.ids->pdata[1], ==, b);
  g_assert_null (st.errors->pdata[0]);
  g_assert_null (st.errors->pdata[1]);
  ma = get (fx->queue, a);
  mb = get (fx->queue, b);
  g_assert_cmpint (ma->state, ==, PMX_MSG_DELIVERED);
  g_assert_cmpint (mb->state, ==, PMX_MSG_DELIVERED);
  g_assert_cmpstr (rcpt (ma, 0)->text, ==, "2.0.0 ok");
  g_assert_cmpstr (rcpt (ma, 0)->address, ==, "bob@example.net");
  complete_state_clear (&st);
}

static void
test_complete_async_close_flushes (Fixture       *fx,
                                   gconstpointer  data)
{
  CompleteState st = { 0, };
  g_autoptr (GError) error = NULL;
  g_autoptr (PmxQueueMessage) msg = NULL;
  g_autofree char *id = submit (fx->queue, "local", NULL, one_rcpt, NULL);
  const PmxAttemptRecipient r = { "bob@example.net", PMX_RCPT_STATE_DELIVERED, 250, NULL, "ok" };
  const PmxAttempt attempt = { .transport = "t", .recipients = &r, .n_recipients = 1, .summary = "s" };

  complete_state_init (&st);
  g_ptr_array_unref (lease (fx->queue, G_MAXINT64, 10, "w", G_MAXINT64));

  /* Held: the completion is pending when close starts; close commits it. */
  pmx_queue_test_hold_writer (fx->queue, TRUE);
  pmx_queue_complete_async (fx->queue, id, &attempt, complete_cb, &st);
  g_assert_cmpuint (st.ids->len, ==, 0);
  g_clear_pointer (&fx->queue, pmx_queue_close);
  g_assert_cmpuint (st.ids->len, ==, 1);
  g_assert_null (st.errors->pdata[0]);

  fx->queue = pmx_queue_open (fx->path, &error);
  g_assert_no_error (error);
  msg = get (fx->queue, id);
  g_assert_cmpint (msg->state, ==, PMX_MSG_DELIVERED);

  /* After shutdown: refused at once, on the caller's thread. */
  pmx_queue_shutdown (fx->queue);
  pmx_queue_complete_async (fx->queue, id, &attempt, complete_cb, &st);
  g_assert_cmpuint (st.ids->len, ==, 2);
  g_assert_error ((GError *) st.errors->pdata[1], PMX_QUEUE_ERROR, PMX_QUEUE_ERROR_CLOSED);
  complete_state_clear (&st);
}

static void
test_complete_async_errors (Fixture       *fx,
                            gconstpointer  data)
{
  CompleteState st = { 0, };
  g_autofree char *id = submit (fx->queue, "local", NULL, one_rcpt, NULL);
  g_autofree char *id3 = submit (fx->queue, "local", NULL, three_rcpts, NULL);
  g_autoptr (PmxQueueMessage) msg = NULL;
  g_autoptr (PmxQueueMessage) msg3 = NULL;
  const PmxAttemptRecipient ok = { "bob@example.net", PMX_RCPT_STATE_DELIVERED, 250, NULL, "ok" };
  const PmxAttemptRecipient stranger = { "nobody@example.net", PMX_RCPT_STATE_DELIVERED, 250, NULL, "ok" };
  const PmxAttemptRecipient half[] = {
    { "r1@example.net", PMX_RCPT_STATE_DELIVERED, 250, NULL, "ok" },
    { "nobody@example.net", PMX_RCPT_STATE_DELIVERED, 250, NULL, "ok" },
  };
  const PmxAttempt bad = { .transport = "t", .recipients = &stranger, .n_recipients = 1, .summary = "s" };
  const PmxAttempt half_bad = { .transport = "t", .recipients = half, .n_recipients = 2, .summary = "s" };
  const PmxAttempt good = { .transport = "t", .recipients = &ok, .n_recipients = 1, .summary = "s" };
  guint64 commits;

  complete_state_init (&st);
  g_ptr_array_unref (lease (fx->queue, G_MAXINT64, 10, "w", G_MAXINT64));
  commits = pmx_queue_get_commit_count (fx->queue);

  /* One bad request in a batch fails alone; its neighbours commit.  The
   * first two fail before changing a row; the third fails after updating
   * r1, so the batch runs again with a savepoint per request. */
  pmx_queue_test_hold_writer (fx->queue, TRUE);
  pmx_queue_complete_async (fx->queue, "00000000000000FF", &good, complete_cb, &st);
  pmx_queue_complete_async (fx->queue, id, &bad, complete_cb, &st);
  pmx_queue_complete_async (fx->queue, id3, &half_bad, complete_cb, &st);
  pmx_queue_complete_async (fx->queue, id, &good, complete_cb, &st);
  pmx_queue_test_hold_writer (fx->queue, FALSE);
  complete_state_wait (&st, 4);

  g_assert_error ((GError *) st.errors->pdata[0], PMX_QUEUE_ERROR, PMX_QUEUE_ERROR_NOT_FOUND);
  g_assert_error ((GError *) st.errors->pdata[1], PMX_QUEUE_ERROR, PMX_QUEUE_ERROR_INVALID);
  g_assert_error ((GError *) st.errors->pdata[2], PMX_QUEUE_ERROR, PMX_QUEUE_ERROR_INVALID);
  g_assert_null (st.errors->pdata[3]);
  g_assert_cmpuint (pmx_queue_get_commit_count (fx->queue), ==, commits + 1);
  msg = get (fx->queue, id);
  g_assert_cmpint (msg->state, ==, PMX_MSG_DELIVERED);
  g_assert_cmpuint (msg->attempts, ==, 1);
  msg3 = get (fx->queue, id3);
  g_assert_cmpint (msg3->state, ==, PMX_MSG_INFLIGHT);
  g_assert_cmpuint (msg3->attempts, ==, 0);
  g_assert_cmpint (rcpt (msg3, 0)->state, ==, PMX_RCPT_STATE_QUEUED);   /* r1's update undone */
  complete_state_clear (&st);
}

/* ---- release and unlease ---- */

static void
test_release_leases (Fixture       *fx,
                     gconstpointer  data)
{
  g_autoptr (GError) error = NULL;
  gint64 t = g_get_real_time ();
  g_autofree char *a = submit (fx->queue, "local", NULL, one_rcpt, NULL);
  g_autofree char *b = submit (fx->queue, "local", NULL, one_rcpt, NULL);
  g_autofree char *c = submit (fx->queue, "local", NULL, one_rcpt, NULL);
  g_autofree char *d = submit (fx->queue, "local", NULL, one_rcpt, NULL);
  g_autoptr (PmxQueueMessage) ma = NULL;
  g_autoptr (PmxQueueMessage) mb = NULL;
  g_autoptr (PmxQueueMessage) md = NULL;
  gint64 t2 = g_get_real_time ();   /* after the submissions: d is leased last */
  guint n;

  /* d is deferred first, so that release must bring it back as deferred. */
  g_ptr_array_unref (lease (fx->queue, G_MAXINT64, 4, "w0", G_MAXINT64));
  g_assert_cmpuint (pmx_queue_release_leases (fx->queue, "w0", t, &error), ==, 4);
  g_assert_no_error (error);
  complete_all (fx->queue, d, one_rcpt, PMX_RCPT_STATE_DEFERRED, t2 + 10, t);
  g_assert_cmpint (count (fx->queue, PMX_MSG_DEFERRED), ==, 1);

  g_ptr_array_unref (lease (fx->queue, G_MAXINT64, 1, "w1", t + 100 * HOUR));  /* a */
  g_ptr_array_unref (lease (fx->queue, G_MAXINT64, 1, "w2", t + 100 * HOUR));  /* b */
  g_ptr_array_unref (lease (fx->queue, G_MAXINT64, 1, "w2", t + HOUR));        /* c */
  g_ptr_array_unref (lease (fx->queue, G_MAXINT64, 1, "w1", t + 100 * HOUR));  /* d */
  g_assert_cmpint (count (fx->queue, PMX_MSG_INFLIGHT), ==, 4);

  /* w1's own (a, d) and the expired one (c, held by w2); not b. */
  n = pmx_queue_release_leases (fx->queue, "w1", t + 2 * HOUR, &error);
  g_assert_no_error (error);
  g_assert_cmpuint (n, ==, 3);
  ma = get (fx->queue, a);
  mb = get (fx->queue, b);
  md = get (fx->queue, d);
  g_assert_cmpint (ma->state, ==, PMX_MSG_QUEUED);
  g_assert_cmpint (mb->state, ==, PMX_MSG_INFLIGHT);
  g_assert_cmpint (md->state, ==, PMX_MSG_DEFERRED);
  g_assert_cmpint (md->next_attempt, ==, t2 + 10);
  g_assert_cmpint (count (fx->queue, PMX_MSG_QUEUED), ==, 2);

  /* Nobody's: only expired leases come back. */
  n = pmx_queue_release_leases (fx->queue, NULL, t + 99 * HOUR, &error);
  g_assert_no_error (error);
  g_assert_cmpuint (n, ==, 0);
  n = pmx_queue_release_leases (fx->queue, NULL, t + 101 * HOUR, &error);
  g_assert_cmpuint (n, ==, 1);
  g_assert_cmpint (count (fx->queue, PMX_MSG_INFLIGHT), ==, 0);
}

static void
test_unlease (Fixture       *fx,
              gconstpointer  data)
{
  g_autoptr (GError) error = NULL;
  g_autofree char *a = submit (fx->queue, "local", NULL, one_rcpt, NULL);
  g_autofree char *b = submit (fx->queue, "local", NULL, one_rcpt, NULL);
  g_autoptr (PmxQueueMessage) ma = NULL;
  g_autoptr (PmxQueueMessage) mb = NULL;

  g_ptr_array_unref (lease (fx->queue, G_MAXINT64, 1, "w", G_MAXINT64));
  complete_all (fx->queue, a, one_rcpt, PMX_RCPT_STATE_DEFERRED, 12345, 100);
  g_ptr_array_unref (lease (fx->queue, G_MAXINT64, 2, "w", G_MAXINT64));
  g_assert_cmpint (count (fx->queue, PMX_MSG_INFLIGHT), ==, 2);

  g_assert_true (pmx_queue_unlease (fx->queue, a, &error));
  g_assert_true (pmx_queue_unlease (fx->queue, b, &error));
  g_assert_no_error (error);
  ma = get (fx->queue, a);
  mb = get (fx->queue, b);
  g_assert_cmpint (ma->state, ==, PMX_MSG_DEFERRED);
  g_assert_cmpint (ma->next_attempt, ==, 12345);
  g_assert_cmpuint (ma->attempts, ==, 1);
  g_assert_cmpint (mb->state, ==, PMX_MSG_QUEUED);
  g_assert_cmpuint (mb->attempts, ==, 0);

  /* Not leased any more: nothing to undo. */
  g_assert_true (pmx_queue_unlease (fx->queue, b, &error));
  g_assert_no_error (error);
  g_assert_false (pmx_queue_unlease (fx->queue, "0000000000000001", &error));
  g_assert_error (error, PMX_QUEUE_ERROR, PMX_QUEUE_ERROR_NOT_FOUND);
}

/* A paused transport's message goes back untried: previous state, no
 * attempt counted, due no earlier than the pause's end (a later due time
 * it already had is kept). */
static void
test_postpone (Fixture       *fx,
               gconstpointer  data)
{
  g_autoptr (GError) error = NULL;
  g_autofree char *a = submit (fx->queue, "local", NULL, one_rcpt, NULL);
  g_autofree char *b = submit (fx->queue, "local", NULL, one_rcpt, NULL);
  g_autoptr (PmxQueueMessage) ma = NULL;
  g_autoptr (PmxQueueMessage) mb = NULL;
  g_autoptr (GPtrArray) none = NULL;
  gint64 later = g_get_real_time () + (gint64) 3600 * G_USEC_PER_SEC;
  gint64 latest = later + (gint64) 3600 * G_USEC_PER_SEC;

  g_ptr_array_unref (lease (fx->queue, G_MAXINT64, 1, "w", G_MAXINT64));
  complete_all (fx->queue, a, one_rcpt, PMX_RCPT_STATE_DEFERRED, latest, 100);
  g_ptr_array_unref (lease (fx->queue, G_MAXINT64, 2, "w", G_MAXINT64));

  g_assert_true (pmx_queue_postpone (fx->queue, a, later, NULL, &error));
  g_assert_true (pmx_queue_postpone (fx->queue, b, later, "other", &error));
  g_assert_no_error (error);
  ma = get (fx->queue, a);
  mb = get (fx->queue, b);
  g_assert_cmpint (ma->state, ==, PMX_MSG_DEFERRED);
  g_assert_cmpint (ma->next_attempt, ==, latest);
  g_assert_cmpuint (ma->attempts, ==, 1);
  g_assert_cmpint (mb->state, ==, PMX_MSG_QUEUED);
  g_assert_cmpint (mb->next_attempt, ==, later);
  g_assert_cmpstr (mb->next_transport, ==, "other");
  g_assert_null (ma->next_transport);
  g_assert_cmpuint (mb->attempts, ==, 0);

  none = lease (fx->queue, later - 1, 10, "w", G_MAXINT64);
  g_assert_cmpuint (none->len, ==, 0);
  g_assert_cmpint (pmx_queue_next_due (fx->queue, NULL), ==, later);
}

/* ---- admin ---- */

static void
test_admin (Fixture       *fx,
            gconstpointer  data)
{
  const char *const two[] = { "r1@example.net", "r2@example.net", NULL };
  const char *const r1[] = { "r1@example.net", NULL };
  const char *const r2[] = { "r2@example.net", NULL };
  g_autoptr (GError) error = NULL;
  g_autofree char *delivered = submit (fx->queue, "local", NULL, one_rcpt, NULL);
  g_autofree char *bounced = submit (fx->queue, "local", NULL, two, NULL);
  g_autofree char *deferred = submit (fx->queue, "local", NULL, one_rcpt, NULL);
  g_autofree char *queued = NULL;
  g_autoptr (GPtrArray) list = NULL;
  g_autoptr (PmxQueueMessage) msg = NULL;
  const PmxMsgState filter[] = { PMX_MSG_DEFERRED, PMX_MSG_BOUNCED };
  gint64 before;

  g_ptr_array_unref (lease (fx->queue, G_MAXINT64, 10, "w", G_MAXINT64));
  queued = submit (fx->queue, "local", NULL, one_rcpt, NULL);
  complete_all (fx->queue, delivered, one_rcpt, PMX_RCPT_STATE_DELIVERED, 0, 1000);
  complete_all (fx->queue, bounced, r1, PMX_RCPT_STATE_DELIVERED, 0, 1000);
  g_assert_cmpint (count (fx->queue, PMX_MSG_DEFERRED), ==, 1);  /* r2 still queued */
  g_ptr_array_unref (lease (fx->queue, G_MAXINT64, 10, "w", G_MAXINT64));
  complete_all (fx->queue, bounced, r2, PMX_RCPT_STATE_BOUNCED, 0, 1000);
  complete_all (fx->queue, deferred, one_rcpt, PMX_RCPT_STATE_DEFERRED, G_MAXINT64 - 1, 1000);
  /* The queued one was leased by the second lease_due: give it back. */
  g_assert_true (pmx_queue_unlease (fx->queue, queued, NULL));

  g_assert_cmpint (count (fx->queue, PMX_MSG_DELIVERED), ==, 1);
  g_assert_cmpint (count (fx->queue, PMX_MSG_BOUNCED), ==, 1);
  g_assert_cmpint (count (fx->queue, PMX_MSG_DEFERRED), ==, 1);
  g_assert_cmpint (count (fx->queue, PMX_MSG_QUEUED), ==, 1);
  g_assert_cmpint (count (fx->queue, PMX_MSG_INFLIGHT), ==, 0);
  g_assert_cmpint (count (fx->queue, PMX_MSG_EXPIRED), ==, 0);

  /* list: filters, order by id, limit, no data. */
  list = pmx_queue_list (fx->queue, filter, G_N_ELEMENTS (filter), 0, &error);
  g_assert_no_error (error);
  g_assert_cmpuint (list->len, ==, 2);
  g_assert_cmpstr (((PmxQueueMessage *) list->pdata[0])->id, ==, bounced);
  g_assert_cmpstr (((PmxQueueMessage *) list->pdata[1])->id, ==, deferred);
  g_assert_null (((PmxQueueMessage *) list->pdata[0])->data);
  g_assert_cmpuint (((PmxQueueMessage *) list->pdata[0])->recipients->len, ==, 2);
  g_clear_pointer (&list, g_ptr_array_unref);
  list = pmx_queue_list (fx->queue, NULL, 0, 3, &error);
  g_assert_no_error (error);
  g_assert_cmpuint (list->len, ==, 3);
  g_assert_cmpstr (((PmxQueueMessage *) list->pdata[0])->id, ==, delivered);
  g_clear_pointer (&list, g_ptr_array_unref);
  list = pmx_queue_list (fx->queue, NULL, 0, 0, &error);
  g_assert_cmpuint (list->len, ==, 4);
  g_assert_cmpstr (((PmxQueueMessage *) list->pdata[3])->id, ==, queued);
  g_clear_pointer (&list, g_ptr_array_unref);

  /* retry: failed recipients back to queued, due now; delivered ones stay. */
  before = g_get_real_time ();
  g_assert_true (pmx_queue_retry (fx->queue, bounced, &error));
  g_assert_no_error (error);
  msg = get (fx->queue, bounced);
  g_assert_cmpint (msg->state, ==, PMX_MSG_QUEUED);
  g_assert_cmpint (msg->next_attempt, >=, before);
  g_assert_cmpint (msg->next_attempt, <=, g_get_real_time ());
  g_assert_cmpint (rcpt (msg, 0)->state, ==, PMX_RCPT_STATE_DELIVERED);
  g_assert_cmpint (rcpt (msg, 1)->state, ==, PMX_RCPT_STATE_QUEUED);
  g_assert_cmpuint (msg->attempts, ==, 2);
  g_clear_pointer (&msg, pmx_queue_message_free);
  g_assert_true (pmx_queue_retry (fx->queue, deferred, &error));
  g_assert_no_error (error);
  g_assert_cmpint (count (fx->queue, PMX_MSG_QUEUED), ==, 3);
  g_assert_cmpint (count (fx->queue, PMX_MSG_DEFERRED), ==, 0);
  g_assert_cmpint (pmx_queue_next_due (fx->queue, NULL), <=, g_get_real_time ());

  g_assert_false (pmx_queue_retry (fx->queue, delivered, &error));
  g_assert_error (error, PMX_QUEUE_ERROR, PMX_QUEUE_ERROR_INVALID);
  g_clear_error (&error);
  g_assert_false (pmx_queue_retry (fx->queue, "0000000000000001", &error));
  g_assert_error (error, PMX_QUEUE_ERROR, PMX_QUEUE_ERROR_NOT_FOUND);
  g_clear_error (&error);

  /* delete */
  g_assert_true (pmx_queue_delete (fx->queue, queued, &error));
  g_assert_no_error (error);
  g_assert_null (pmx_queue_get (fx->queue, queued, FALSE, NULL, &error));
  g_assert_error (error, PMX_QUEUE_ERROR, PMX_QUEUE_ERROR_NOT_FOUND);
  g_clear_error (&error);
  g_assert_false (pmx_queue_delete (fx->queue, queued, &error));
  g_assert_error (error, PMX_QUEUE_ERROR, PMX_QUEUE_ERROR_NOT_FOUND);
  g_clear_error (&error);
  g_assert_cmpint (count (fx->queue, PMX_MSG_QUEUED), ==, 2);

  /* purge: only delivered ones finished before the cut-off. */
  g_assert_cmpint (pmx_queue_purge (fx->queue, 1000, &error), ==, 0);
  g_assert_cmpint (pmx_queue_purge (fx->queue, 1001, &error), ==, 1);
  g_assert_no_error (error);
  g_assert_cmpint (pmx_queue_purge (fx->queue, G_MAXINT64, &error), ==, 0);
  g_assert_cmpint (count (fx->queue, PMX_MSG_DELIVERED), ==, 0);
  list = pmx_queue_list (fx->queue, NULL, 0, 0, &error);
  g_assert_cmpuint (list->len, ==, 2);
}

static void
test_states_strings (void)
{
  PmxMsgState state = PMX_MSG_QUEUED;

  g_assert_cmpstr (pmx_msg_state_to_string (PMX_MSG_INFLIGHT), ==, "inflight");
  g_assert_cmpstr (pmx_msg_state_to_string (PMX_MSG_EXPIRED), ==, "expired");
  g_assert_cmpstr (pmx_rcpt_state_to_string (PMX_RCPT_STATE_BOUNCED), ==, "bounced");
  g_assert_true (pmx_msg_state_from_string ("deferred", &state));
  g_assert_cmpint (state, ==, PMX_MSG_DEFERRED);
  g_assert_false (pmx_msg_state_from_string ("Deferred", &state));
  g_assert_cmpint (state, ==, PMX_MSG_DEFERRED);
}

/* ---- shutdown and failing batches ---- */

static void
test_closed_refuses_writes (Fixture       *fx,
                            gconstpointer  data)
{
  g_autoptr (GError) error = NULL;
  g_autoptr (GBytes) bytes = g_bytes_new_static ("x", 1);
  g_autoptr (GMainContext) context = g_main_context_new ();
  g_autofree char *id = submit (fx->queue, "local", NULL, one_rcpt, NULL);
  PmxSubmission sub = { .ingress = "local", .sender = "", .recipients = one_rcpt,
                        .n_recipients = 1, .data = bytes };
  PmxAttempt attempt = { .transport = "t" };
  AsyncState *st;
  g_autoptr (PmxQueueMessage) msg = NULL;

  pmx_queue_shutdown (fx->queue);
  pmx_queue_shutdown (fx->queue);

  g_assert_null (pmx_queue_submit (fx->queue, &sub, NULL, &error));
  g_assert_error (error, PMX_QUEUE_ERROR, PMX_QUEUE_ERROR_CLOSED);
  g_clear_error (&error);
  g_assert_false (pmx_queue_complete (fx->queue, id, &attempt, &error));
  g_assert_error (error, PMX_QUEUE_ERROR, PMX_QUEUE_ERROR_CLOSED);
  g_clear_error (&error);
  g_assert_null (pmx_queue_lease_due (fx->queue, G_MAXINT64, 1, "w", 0, &error));
  g_assert_error (error, PMX_QUEUE_ERROR, PMX_QUEUE_ERROR_CLOSED);
  g_clear_error (&error);

  g_main_context_push_thread_default (context);
  st = async_state_new (context);
  async_submit (fx->queue, st, 10, NULL, NULL);
  g_main_loop_run (st->loop);
  g_assert_null (st->ids->pdata[0]);
  g_assert_error ((GError *) st->errors->pdata[0], PMX_QUEUE_ERROR, PMX_QUEUE_ERROR_CLOSED);
  async_state_free (st);
  g_main_context_pop_thread_default (context);

  /* Reads still work. */
  msg = get (fx->queue, id);
  g_assert_cmpint (msg->state, ==, PMX_MSG_QUEUED);
  g_assert_cmpint (count (fx->queue, PMX_MSG_QUEUED), ==, 1);
}

static void
test_batch_shares_one_commit (Fixture       *fx,
                              gconstpointer  data)
{
  g_autoptr (GMainContext) context = g_main_context_new ();
  g_autoptr (GCancellable) cancellable = g_cancellable_new ();
  AsyncState *st;
  guint64 commits = pmx_queue_get_commit_count (fx->queue);

  g_main_context_push_thread_default (context);
  st = async_state_new (context);
  pmx_queue_test_hold_writer (fx->queue, TRUE);
  async_submit (fx->queue, st, 100, NULL, NULL);
  async_submit (fx->queue, st, 100, NULL, cancellable);
  async_submit (fx->queue, st, 100, "k", NULL);
  async_submit (fx->queue, st, 100, "k", NULL);   /* duplicate of the one before, same batch */
  g_cancellable_cancel (cancellable);
  pmx_queue_test_hold_writer (fx->queue, FALSE);
  g_main_loop_run (st->loop);

  g_assert_cmpuint (pmx_queue_get_commit_count (fx->queue), ==, commits + 1);
  g_assert_cmpuint (st->ids->len, ==, 4);
  g_assert_cmpuint (count (fx->queue, PMX_MSG_QUEUED), ==, 2);
  /* Answers may come in any order; the cancelled one is the only failure. */
  {
    guint ok = 0, cancelled = 0;

    for (guint i = 0; i < 4; i++)
      {
        GError *e = st->errors->pdata[i];

        if (e == NULL)
          ok++;
        else if (g_error_matches (e, G_IO_ERROR, G_IO_ERROR_CANCELLED))
          cancelled++;
      }
    g_assert_cmpuint (ok, ==, 3);
    g_assert_cmpuint (cancelled, ==, 1);
  }
  async_state_free (st);
  g_main_context_pop_thread_default (context);
}

static void
test_batch_disk_full_fails_all (Fixture       *fx,
                                gconstpointer  data)
{
  g_autoptr (GError) error = NULL;
  g_autoptr (GMainContext) context = g_main_context_new ();
  AsyncState *st;
  guint64 commits;

  g_free (submit (fx->queue, "local", NULL, one_rcpt, NULL));
  g_assert_true (pmx_queue_test_limit_pages (fx->queue, 32, &error));
  g_assert_no_error (error);
  commits = pmx_queue_get_commit_count (fx->queue);

  g_main_context_push_thread_default (context);
  st = async_state_new (context);
  pmx_queue_test_hold_writer (fx->queue, TRUE);
  async_submit (fx->queue, st, 100, NULL, NULL);
  async_submit (fx->queue, st, 1024 * 1024, NULL, NULL);   /* does not fit */
  async_submit (fx->queue, st, 100, NULL, NULL);
  pmx_queue_test_hold_writer (fx->queue, FALSE);
  g_main_loop_run (st->loop);

  /* The small ones would have fitted, but they shared the failed commit. */
  g_assert_cmpuint (st->ids->len, ==, 3);
  for (guint i = 0; i < 3; i++)
    {
      g_assert_null (st->ids->pdata[i]);
      g_assert_error ((GError *) st->errors->pdata[i], PMX_QUEUE_ERROR, PMX_QUEUE_ERROR_FULL);
      g_assert_nonnull (strstr (((GError *) st->errors->pdata[i])->message, fx->path));
    }
  g_assert_cmpuint (pmx_queue_get_commit_count (fx->queue), ==, commits);
  g_assert_cmpint (count (fx->queue, PMX_MSG_QUEUED), ==, 1);

  /* Alone, a small one fits: the queue works on after a failed batch. */
  async_submit (fx->queue, st, 100, NULL, NULL);
  g_main_loop_run (st->loop);
  g_assert_no_error ((GError *) st->errors->pdata[3]);
  g_assert_cmpint (count (fx->queue, PMX_MSG_QUEUED), ==, 2);

  async_state_free (st);
  g_main_context_pop_thread_default (context);
}

/* hurry: a transport's deferred messages due now, nothing else changes */
static void
test_hurry_transport (Fixture       *fx,
                      gconstpointer  data)
{
  g_autoptr (GError) error = NULL;
  g_autofree char *a = submit (fx->queue, "local", NULL, one_rcpt, NULL);
  g_autofree char *b = submit (fx->queue, "local", NULL, one_rcpt, NULL);
  g_autoptr (PmxQueueMessage) msg = NULL;
  gint64 before;

  g_ptr_array_unref (lease (fx->queue, G_MAXINT64, 10, "w", G_MAXINT64));
  complete_all (fx->queue, a, one_rcpt, PMX_RCPT_STATE_DEFERRED, G_MAXINT64 - 1, 1000);
  complete_all (fx->queue, b, one_rcpt, PMX_RCPT_STATE_DELIVERED, 0, 1000);

  g_assert_cmpint (pmx_queue_hurry_transport (fx->queue, "another", &error), ==, 0);
  g_assert_no_error (error);
  g_assert_cmpint (pmx_queue_next_due (fx->queue, NULL), ==, G_MAXINT64 - 1);
  before = g_get_real_time ();
  g_assert_cmpint (pmx_queue_hurry_transport (fx->queue, "smtp-a", &error), ==, 1);
  g_assert_no_error (error);
  msg = get (fx->queue, a);
  g_assert_cmpint (msg->state, ==, PMX_MSG_DEFERRED);
  g_assert_cmpint (msg->next_attempt, >=, before);
  g_assert_cmpint (msg->next_attempt, <=, g_get_real_time ());
  g_assert_cmpuint (msg->attempts, ==, 1);
  g_assert_cmpint (rcpt (msg, 0)->state, ==, PMX_RCPT_STATE_DEFERRED);
  g_assert_cmpint (count (fx->queue, PMX_MSG_DELIVERED), ==, 1);
  /* Already due: nothing more to do. */
  g_assert_cmpint (pmx_queue_hurry_transport (fx->queue, "smtp-a", &error), ==, 0);
}

int
main (int    argc,
      char **argv)
{
  g_test_init (&argc, &argv, NULL);

#define ADD(path, fn) \
  g_test_add (path, Fixture, NULL, fixture_setup, fn, fixture_teardown)

  g_test_add_func ("/queue/states/strings-round-trip", test_states_strings);
  ADD ("/queue/open/creates-private-file-and-directory", test_open_private_file);
  g_test_add_func ("/queue/open/refuses-a-file-that-is-not-a-database", test_open_not_a_database);
  g_test_add_func ("/queue/open/upgrades-schema-1", test_open_upgrades_schema_1);
  ADD ("/queue/submit/round-trip-keeps-bytes", test_submit_round_trip);
  ADD ("/queue/submit/ids-are-time-ordered", test_submit_ids_time_ordered);
  ADD ("/queue/submit/idempotency-key-returns-first-id", test_submit_idempotency);
  ADD ("/queue/submit/invalid-is-refused", test_submit_invalid);
  ADD ("/queue/submit/durable-after-return", test_submit_durable);
  g_test_add_func ("/queue/crash/acknowledged-survives", test_crash_acknowledged_survives);
  ADD ("/queue/submit/second-handle-sees-commits", test_submit_second_handle);
  ADD ("/queue/submit/async-answers-on-callers-context", test_submit_async);
  ADD ("/queue/submit/group-commit-shares-transactions", test_submit_group_commit);
  ADD ("/queue/lease/respects-due-time-limit-and-order", test_lease_due_limit_order);
  ADD ("/queue/lease/never-leases-a-message-twice", test_lease_not_twice);
  ADD ("/queue/complete/mixed-outcomes-then-final", test_complete_mixed);
  ADD ("/queue/complete/delivered-and-expired-states", test_complete_final_states);
  ADD ("/queue/complete/covers-all-derives-the-same-state", test_complete_covers_all);
  ADD ("/queue/complete/unknown-id-or-recipient-changes-nothing", test_complete_errors);
  ADD ("/queue/complete/async-calls-back-after-the-commit", test_complete_async);
  ADD ("/queue/complete/async-close-commits-what-is-pending", test_complete_async_close_flushes);
  ADD ("/queue/complete/async-errors-reach-the-callback", test_complete_async_errors);
  ADD ("/queue/release/owners-and-expired-leases-only", test_release_leases);
  ADD ("/queue/unlease/restores-previous-state", test_unlease);
  ADD ("/queue/release/postpone-untried", test_postpone);
  ADD ("/queue/admin/retry-delete-purge-count-list", test_admin);
  ADD ("/queue/admin/hurry-a-transports-deferred-messages", test_hurry_transport);
  ADD ("/queue/close/refuses-writes-after-shutdown", test_closed_refuses_writes);
  ADD ("/queue/batch/requests-share-one-commit", test_batch_shares_one_commit);
  ADD ("/queue/batch/disk-full-fails-every-request", test_batch_disk_full_fails_all);

  return g_test_run ();
}

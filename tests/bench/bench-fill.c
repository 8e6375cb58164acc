/* SPDX-License-Identifier: GPL-3.0-or-later */
/*
 * bench-fill.c - fill a queue file for the benchmarks, fast and honestly.
 *
 *   bench-fill QUEUE.db N SIZE [THREADS]
 *
 * N messages of about SIZE bytes (one recipient each, sink<i>@example.net)
 * go in through pmx_queue_submit() from THREADS threads (default 8): the
 * same code path, the same durable group commit (synchronous=FULL) as a
 * submission through any door of the daemon, without a process or a socket
 * round trip per message.  Run it with no daemon using the queue.
 */
#include "pmx-queue.h"

#include <stdlib.h>
#include <string.h>

typedef struct {
  PmxQueue *queue;
  GBytes   *data;
  guint     n;
  gint      next;     /* atomic: next message number */
  gint      failed;   /* atomic */
} Fill;

/* fill_worker - submit until N are taken */
static gpointer
fill_worker (gpointer user_data)
{
  Fill *fill = user_data;

  for (;;)
    {
      guint i = (guint) g_atomic_int_add (&fill->next, 1);
      g_autofree char *rcpt = NULL;
      g_autofree char *id = NULL;
      g_autoptr(GError) error = NULL;
      const char *rcpts[1];
      PmxSubmission sub = { 0, };

      if (i >= fill->n)
        return NULL;
      rcpt = g_strdup_printf ("sink%u@example.net", i);
      rcpts[0] = rcpt;
      sub.ingress = "local:bench";
      sub.sender = "bench@example.test";
      sub.recipients = rcpts;
      sub.n_recipients = 1;
      sub.data = fill->data;
      id = pmx_queue_submit (fill->queue, &sub, NULL, &error);
      if (id == NULL)
        {
          g_printerr ("bench-fill: %s\n", error->message);
          g_atomic_int_inc (&fill->failed);
          return NULL;
        }
    }
}

int
main (int    argc,
      char **argv)
{
  static const char head[] = "From: bench@example.test\r\nTo: sink@example.net\r\nSubject: bench\r\n\r\n";
  g_autoptr(GError) error = NULL;
  g_autoptr(GPtrArray) threads = g_ptr_array_new ();
  g_autoptr(GString) body = g_string_new (head);
  Fill fill = { 0, };
  guint size, n_threads;
  gint64 t0;

  if (argc < 4)
    {
      g_printerr ("usage: bench-fill QUEUE.db N SIZE [THREADS]\n");
      return 2;
    }
  fill.n = (guint) strtoul (argv[2], NULL, 10);
  size = (guint) strtoul (argv[3], NULL, 10);
  n_threads = argc > 4 ? (guint) strtoul (argv[4], NULL, 10) : 8;
  /* The same body as bench-smtp.py's body(): 78-byte lines after the header. */
  for (guint lines = size > strlen (head) + 78 ? (size - (guint) strlen (head)) / 78 : 1; lines > 0; lines--)
    {
      for (guint k = 0; k < 76; k++)
        g_string_append_c (body, 'x');
      g_string_append (body, "\r\n");
    }
  fill.data = g_bytes_new (body->str, body->len);

  fill.queue = pmx_queue_open (argv[1], &error);
  if (fill.queue == NULL)
    {
      g_printerr ("bench-fill: %s\n", error->message);
      return 1;
    }
  t0 = g_get_monotonic_time ();
  for (guint i = 0; i < MAX (n_threads, 1); i++)
    g_ptr_array_add (threads, g_thread_new ("fill", fill_worker, &fill));
  for (guint i = 0; i < threads->len; i++)
    g_thread_join (g_ptr_array_index (threads, i));
  pmx_queue_close (fill.queue);
  g_bytes_unref (fill.data);
  g_print ("%u x %" G_GSIZE_FORMAT " B in %.2f s\n", fill.n, body->len,
           (double) (g_get_monotonic_time () - t0) / G_USEC_PER_SEC);
  return g_atomic_int_get (&fill.failed) > 0 ? 1 : 0;
}

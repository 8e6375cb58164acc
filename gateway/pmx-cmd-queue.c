/* SPDX-License-Identifier: GPL-3.0-or-later */
/*
 * pmx-cmd-queue.c - `postmux queue list|show|retry|delete`.
 *
 * Reads and writes the queue file directly (SQLite lets the daemon and
 * this command share it), then tells a running daemon to look again.
 */
#include "pmx-cmd.h"

#include "pmx-control.h"
#include "pmx-duration.h"
#include "pmx-queue.h"

#include <stdio.h>
#include <string.h>

/* queue_time - local time for a unix time in microseconds */
static char *
queue_time (gint64 usec)
{
  g_autoptr(GDateTime) t = g_date_time_new_from_unix_local (usec / PMX_USEC_PER_SEC);

  return t != NULL ? g_date_time_format (t, "%Y-%m-%d %H:%M:%S") : g_strdup ("-");
}

/* queue_print_transports - the running daemon's transports that are not
 * sending (rate limited, needing a login), asked over the control socket;
 * nothing when no daemon answers */
static void
queue_print_transports (const char *socket_path)
{
  g_autofree char *answer = pmx_control_call (socket_path, "status", NULL);
  g_autoptr(JsonParser) parser = json_parser_new ();
  JsonObject *root, *transports;
  g_autoptr(GList) names = NULL;

  if (answer == NULL || !json_parser_load_from_data (parser, answer, -1, NULL)
      || !JSON_NODE_HOLDS_OBJECT (json_parser_get_root (parser)))
    return;
  root = json_node_get_object (json_parser_get_root (parser));
  if (!json_object_has_member (root, "transports")
      || !JSON_NODE_HOLDS_OBJECT (json_object_get_member (root, "transports")))
    return;
  transports = json_object_get_object_member (root, "transports");
  names = g_list_sort (json_object_get_members (transports), (GCompareFunc) strcmp);
  for (GList *l = names; l != NULL; l = l->next)
    {
      JsonNode *node = json_object_get_member (transports, l->data);
      JsonObject *t = JSON_NODE_HOLDS_OBJECT (node) ? json_node_get_object (node) : NULL;
      const char *state = t != NULL ? json_object_get_string_member_with_default (t, "state", "ok") : "ok";

      if (g_str_equal (state, "rate_limited"))
        printf ("transport %s: rate limited until %s (%s)\n", (const char *) l->data,
                json_object_get_string_member_with_default (t, "rate_limited_until", "?"),
                json_object_get_string_member_with_default (t, "reason", ""));
      else if (!g_str_equal (state, "ok"))
        printf ("transport %s: %s%s%s\n", (const char *) l->data, state,
                json_object_has_member (t, "reason") ? ": " : "",
                json_object_get_string_member_with_default (t, "reason", ""));
    }
}

/* queue_list - `postmux queue list` */
static int
queue_list (PmxQueue   *queue,
            const char *state,
            int         limit)
{
  g_autoptr(GError) error = NULL;
  g_autoptr(GPtrArray) messages = NULL;
  PmxMsgState filter;

  if (state != NULL && !pmx_msg_state_from_string (state, &filter))
    {
      g_printerr ("postmux queue list: unknown state \"%s\" — use queued, inflight, deferred, delivered, bounced or expired\n", state);
      return 2;
    }
  messages = pmx_queue_list (queue, state != NULL ? &filter : NULL, state != NULL ? 1 : 0,
                             (guint) MAX (limit, 0), &error);
  if (messages == NULL)
    {
      g_printerr ("postmux queue list: %s\n", error->message);
      return 1;
    }
  printf ("%-16s  %-9s  %8s  %-19s  %3s  %-19s  %s\n", "ID", "STATE", "SIZE", "RECEIVED", "TRY", "NEXT ATTEMPT", "SENDER -> RECIPIENTS");
  for (guint i = 0; i < messages->len; i++)
    {
      PmxQueueMessage *m = g_ptr_array_index (messages, i);
      g_autofree char *received = queue_time (m->received);
      gboolean waiting = m->state == PMX_MSG_QUEUED || m->state == PMX_MSG_DEFERRED;
      g_autofree char *next = waiting ? queue_time (m->next_attempt) : g_strdup ("-");
      PmxQueueRecipient *first = m->recipients->len > 0 ? g_ptr_array_index (m->recipients, 0) : NULL;
      g_autofree char *more = m->recipients->len > 1 ? g_strdup_printf (" (+%u)", m->recipients->len - 1) : g_strdup ("");

      printf ("%-16s  %-9s  %8" G_GSIZE_FORMAT "  %-19s  %3u  %-19s  <%s> -> %s%s\n", m->id,
              pmx_msg_state_to_string (m->state), m->size, received, m->attempts, next, m->sender,
              first != NULL ? first->address : "", more);
    }
  printf ("%u message%s\n", messages->len, messages->len == 1 ? "" : "s");
  return 0;
}

/* queue_show - `postmux queue show ID` */
static int
queue_show (PmxQueue   *queue,
            const char *id)
{
  g_autoptr(GError) error = NULL;
  g_autoptr(GPtrArray) attempts = NULL;
  g_autoptr(PmxQueueMessage) m = pmx_queue_get (queue, id, FALSE, &attempts, &error);
  g_autofree char *received = NULL;

  if (m == NULL)
    {
      g_printerr ("postmux queue show: %s\n", error->message);
      return 1;
    }
  received = queue_time (m->received);
  printf ("id:           %s\n", m->id);
  printf ("state:        %s\n", pmx_msg_state_to_string (m->state));
  printf ("received:     %s\n", received);
  printf ("ingress:      %s\n", m->ingress);
  printf ("sender:       <%s>\n", m->sender);
  printf ("size:         %" G_GSIZE_FORMAT "\n", m->size);
  printf ("attempts:     %u\n", m->attempts);
  if (m->state == PMX_MSG_QUEUED || m->state == PMX_MSG_DEFERRED)
    {
      g_autofree char *next = queue_time (m->next_attempt);

      printf ("next attempt: %s%s%s\n", next, m->next_transport != NULL ? " via " : "",
              m->next_transport != NULL ? m->next_transport : "");
    }
  if (m->transport != NULL)
    printf ("transport:    %s\n", m->transport);
  if (m->last_reply != NULL)
    printf ("last reply:   %s\n", m->last_reply);
  if (m->idempotency_key != NULL)
    printf ("idempotency:  %s\n", m->idempotency_key);
  printf ("recipients:\n");
  for (guint i = 0; i < m->recipients->len; i++)
    {
      PmxQueueRecipient *r = g_ptr_array_index (m->recipients, i);

      printf ("  <%s> %s", r->address, pmx_rcpt_state_to_string (r->state));
      if (r->code != 0 || r->text != NULL)
        printf (" (%u%s%s %s)", r->code, r->enhanced != NULL ? " " : "",
                r->enhanced != NULL ? r->enhanced : "", r->text != NULL ? r->text : "");
      printf ("\n");
    }
  printf ("attempt log:\n");
  for (guint i = 0; attempts != NULL && i < attempts->len; i++)
    {
      PmxQueueAttemptRecord *a = g_ptr_array_index (attempts, i);
      g_autofree char *started = queue_time (a->started);
      g_auto(GStrv) lines = g_strsplit (a->outcomes != NULL ? a->outcomes : "", "\n", -1);

      printf ("  %u. %s via %s (%.3fs)%s%s\n", i + 1, started, a->transport,
              (double) (a->finished - a->started) / PMX_USEC_PER_SEC,
              a->remote_id != NULL ? " remote id " : "", a->remote_id != NULL ? a->remote_id : "");
      for (guint j = 0; lines[j] != NULL; j++)
        if (lines[j][0] != '\0')
          printf ("     %s\n", lines[j]);
    }
  return 0;
}

int
pmx_cmd_queue (int    argc,
               char **argv)
{
  g_auto(PmxCmdCommon) common = { 0, };
  g_autofree char *state = NULL;
  int limit = 0;
  g_autoptr(GError) error = NULL;
  g_autoptr(PmxConfig) config = NULL;
  g_autofree char *socket_path = NULL;
  PmxQueue *queue;
  const char *verb;
  int rc;
  GOptionEntry entries[] = {
    { "state", 0, 0, G_OPTION_ARG_STRING, &state, "list: only messages in this state", "STATE" },
    { "limit", 'n', 0, G_OPTION_ARG_INT, &limit, "list: at most N messages, newest first", "N" },
    { NULL, 0, 0, 0, NULL, NULL, NULL },
  };

  if (!pmx_cmd_parse ("queue", "list|show ID|retry ID|delete ID",
                      "Inspects and changes the queue.\n"
                      "  list [--state S]  messages (queued, inflight, deferred, delivered, bounced, expired)\n"
                      "  show ID           one message with its recipients and every attempt's replies\n"
                      "  retry ID          put deferred, bounced or expired recipients back, due now\n"
                      "  delete ID         remove a message",
                      entries, pmx_cmd_common_entries (&common), &argc, &argv))
    return 2;
  verb = argc > 1 ? argv[1] : NULL;
  if (verb == NULL || (strcmp (verb, "list") != 0 && argc != 3) || (strcmp (verb, "list") == 0 && argc != 2))
    {
      g_printerr ("postmux queue: use list, show ID, retry ID or delete ID (see postmux queue --help)\n");
      return 2;
    }

  config = pmx_cmd_load_paths (&common, &error);
  if (config == NULL)
    {
      g_printerr ("postmux queue: %s\n", error->message);
      return 1;
    }
  if (!g_file_test (config->queue_path, G_FILE_TEST_EXISTS))
    {
      g_printerr ("postmux queue: no queue at %s yet — nothing has been submitted with this config\n", config->queue_path);
      return 1;
    }
  queue = pmx_queue_open (config->queue_path, &error);
  if (queue == NULL)
    {
      g_printerr ("postmux queue: %s\n", error->message);
      return 1;
    }

  rc = 0;
  if (strcmp (verb, "list") == 0)
    {
      rc = queue_list (queue, state, limit);
      socket_path = pmx_config_dup_socket_path (config);
      if (rc == 0)
        queue_print_transports (socket_path);
    }
  else if (strcmp (verb, "show") == 0)
    rc = queue_show (queue, argv[2]);
  else if (strcmp (verb, "retry") == 0 || strcmp (verb, "delete") == 0)
    {
      gboolean ok = strcmp (verb, "retry") == 0 ? pmx_queue_retry (queue, argv[2], &error)
                                               : pmx_queue_delete (queue, argv[2], &error);

      if (!ok)
        {
          g_printerr ("postmux queue %s: %s\n", verb, error->message);
          rc = 1;
        }
      else
        {
          g_autofree char *answer = NULL;

          printf ("%s: %s\n", argv[2], strcmp (verb, "retry") == 0 ? "queued for delivery now" : "deleted");
          socket_path = pmx_config_dup_socket_path (config);
          answer = pmx_control_call (socket_path, "wake", NULL);   /* best effort: the daemon polls anyway */
        }
    }
  else
    {
      g_printerr ("postmux queue: unknown action \"%s\" — use list, show, retry or delete\n", verb);
      rc = 2;
    }
  pmx_queue_close (queue);
  return rc;
}

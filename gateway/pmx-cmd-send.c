/* SPDX-License-Identifier: GPL-3.0-or-later */
/*
 * pmx-cmd-send.c - `postmux send`: queue one message for the daemon.
 *
 * The message comes from a file, from stdin, or is composed from
 * --subject/--body.  Line ends are made CRLF (a file written on Unix has
 * LF); a bare CR is refused.  The message goes to the running daemon over
 * its control socket; when no daemon answers it is written straight into
 * the queue, which the daemon delivers from when it starts.  Either way the
 * queue id is printed only after the message is durably queued.
 */
#include "pmx-cmd.h"

#include "pmx-control.h"
#include "pmx-queue.h"

#include <gio/gunixinputstream.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

GBytes *
pmx_cmd_compose_message (const char         *from,
              const char *const  *to,
              const char         *subject,
              const char         *body)
{
  g_autoptr(GDateTime) now = g_date_time_new_now_local ();
  g_autofree char *date = g_date_time_format (now, "%a, %d %b %Y %H:%M:%S %z");
  g_autofree char *rcpts = g_strjoinv (", ", (char **) to);
  g_autofree char *uuid = g_uuid_string_random ();
  const char *at = strrchr (from, '@');
  GString *msg = g_string_new (NULL);
  g_autofree char *text = NULL;

  g_string_append_printf (msg, "Date: %s\nFrom: %s\nTo: %s\nSubject: %s\nMessage-ID: <%s@%s>\n"
                          "MIME-Version: 1.0\nContent-Type: text/plain; charset=utf-8\n\n%s\n",
                          date, from, rcpts, subject != NULL ? subject : "", uuid,
                          at != NULL ? at + 1 : g_get_host_name (), body != NULL ? body : "");
  text = g_string_free (msg, FALSE);
  return pmx_cmd_normalize_crlf ((const guint8 *) text, strlen (text), NULL);
}

/* send_split_recipients - --to values, commas allowed */
static GPtrArray *
send_split_recipients (char **to)
{
  GPtrArray *rcpts = g_ptr_array_new_with_free_func (g_free);

  for (guint i = 0; to != NULL && to[i] != NULL; i++)
    {
      g_auto(GStrv) parts = g_strsplit (to[i], ",", -1);

      for (guint j = 0; parts[j] != NULL; j++)
        {
          char *a = g_strstrip (parts[j]);

          if (a[0] != '\0')
            g_ptr_array_add (rcpts, g_strdup (a));
        }
    }
  return rcpts;
}

int
pmx_cmd_send (int    argc,
              char **argv)
{
  g_auto(PmxCmdCommon) common = { 0, };
  g_autofree char *from = NULL;
  g_auto(GStrv) to = NULL;
  g_autofree char *subject = NULL;
  g_autofree char *body = NULL;
  g_autofree char *key = NULL;
  g_autoptr(GError) error = NULL;
  g_autoptr(PmxConfig) config = NULL;
  g_autoptr(GPtrArray) rcpts = NULL;
  g_autoptr(GBytes) data = NULL;
  g_autofree char *id = NULL;
  gboolean duplicate = FALSE;
  gboolean direct = FALSE;
  gboolean test = FALSE;
  g_autofree char *transport = NULL;
  PmxSubmission sub = { 0, };
  GOptionEntry entries[] = {
    { "from", 'f', 0, G_OPTION_ARG_STRING, &from, "Envelope sender (MAIL FROM); \"\" for the null sender", "ADDRESS" },
    { "to", 't', 0, G_OPTION_ARG_STRING_ARRAY, &to, "Envelope recipient (repeatable, or comma-separated)", "ADDRESS" },
    { "subject", 's', 0, G_OPTION_ARG_STRING, &subject, "Compose a text message with this subject instead of reading one", "TEXT" },
    { "body", 'b', 0, G_OPTION_ARG_STRING, &body, "Body of the composed message", "TEXT" },
    { "idempotency-key", 0, 0, G_OPTION_ARG_STRING, &key, "Queue the message only once for this key", "KEY" },
    { "test", 0, 0, G_OPTION_ARG_NONE, &test, "Send a test message through --transport now, bypassing the queue, and show the exchange", NULL },
    { "transport", 0, 0, G_OPTION_ARG_STRING, &transport, "With --test: the transport to use", "NAME" },
    { NULL, 0, 0, 0, NULL, NULL, NULL },
  };

  if (!pmx_cmd_parse ("send", "[FILE]",
                      "Queues one message for delivery and prints its queue id.\n"
                      "The message is read from FILE or stdin, or composed with --subject/--body.",
                      entries, pmx_cmd_common_entries (&common), &argc, &argv))
    return 2;

  rcpts = send_split_recipients (to);
  if (test)
    return pmx_cmd_send_test (&common, transport, from, rcpts, subject, body);
  if (from == NULL)
    {
      g_printerr ("postmux send: no envelope sender — give --from ADDRESS (or --from \"\" for the null sender)\n");
      return 2;
    }
  if (from[0] != '\0' && !pmx_cmd_valid_address (from))
    {
      g_printerr ("postmux send: --from \"%s\" is not an address like user@example.com\n", from);
      return 2;
    }
  if (rcpts->len == 0)
    {
      g_printerr ("postmux send: no recipients — give --to ADDRESS (repeatable)\n");
      return 2;
    }
  for (guint i = 0; i < rcpts->len; i++)
    if (!pmx_cmd_valid_address (g_ptr_array_index (rcpts, i)))
      {
        g_printerr ("postmux send: --to \"%s\" is not an address like user@example.com\n",
                    (char *) g_ptr_array_index (rcpts, i));
        return 2;
      }
  if (argc > 2)
    {
      g_printerr ("postmux send: give at most one FILE\n");
      return 2;
    }

  if (subject != NULL || body != NULL)
    {
      g_ptr_array_add (rcpts, NULL);
      data = pmx_cmd_compose_message (from[0] != '\0' ? from : "MAILER-DAEMON", (const char *const *) rcpts->pdata, subject, body);
      g_ptr_array_remove_index (rcpts, rcpts->len - 1);
    }
  else
    {
      g_autoptr(GBytes) raw = pmx_cmd_read_all (argc > 1 ? argv[1] : NULL, &error);

      if (raw != NULL)
        data = pmx_cmd_normalize_crlf (g_bytes_get_data (raw, NULL), g_bytes_get_size (raw), &error);
      if (data == NULL)
        {
          g_printerr ("postmux send: %s: %s\n", argc > 1 ? argv[1] : "stdin", error->message);
          return 1;
        }
      if (g_bytes_get_size (data) <= 2)
        {
          g_printerr ("postmux send: %s is empty — nothing to send\n", argc > 1 ? argv[1] : "stdin");
          return 1;
        }
    }

  config = pmx_cmd_load_paths (&common, &error);
  if (config == NULL)
    {
      g_printerr ("postmux send: %s\n", error->message);
      return 1;
    }

  sub.ingress = "local";
  sub.sender = from;
  sub.recipients = (const char *const *) rcpts->pdata;
  sub.n_recipients = rcpts->len;
  sub.data = data;
  sub.idempotency_key = key;

  id = pmx_cmd_submit (config, &sub, &duplicate, &direct, &error);
  if (id == NULL)
    {
      g_printerr ("postmux send: not queued: %s\n", error->message);
      return 1;
    }
  printf ("%s\n", id);
  if (duplicate)
    g_printerr ("postmux send: already queued earlier with this idempotency key as %s\n", id);
  if (direct)
    g_printerr ("postmux send: no daemon is running; queued in %s — it is delivered when `postmux serve` starts\n",
                config->queue_path);
  return 0;
}

/* SPDX-License-Identifier: GPL-3.0-or-later */
/*
 * pmx-cmd-submit.c - what `postmux send` and `postmux sendmail` share:
 * reading a message, making its line ends CRLF, checking an address, and
 * queueing through the daemon's control socket, or straight into the
 * queue file when no daemon runs (it delivers when it starts).
 *
 * Trusts: nothing in the message; the config only for its paths.
 * Fails: a bare CR in the input (it cannot be told from a line end), an
 * unreadable input, a queue that cannot take the message; the caller
 * prints the error and exits non-zero, and nothing was queued.
 */
#include "pmx-cmd.h"

#include "pmx-control.h"

#include <errno.h>
#include <gio/gunixinputstream.h>
#include <glib/gstdio.h>
#include <string.h>
#include <unistd.h>

G_DEFINE_QUARK (pmx-cmd-submit-error-quark, pmx_cmd_submit_error)

GBytes *
pmx_cmd_normalize_crlf (const guint8 *data,
                        gsize         len,
                        GError      **error)
{
  GByteArray *out = g_byte_array_sized_new ((guint) (len + len / 32 + 2));

  for (gsize i = 0; i < len; i++)
    {
      if (data[i] == '\r')
        {
          if (i + 1 >= len || data[i + 1] != '\n')
            {
              g_byte_array_unref (out);
              g_set_error (error, G_IO_ERROR, G_IO_ERROR_INVALID_DATA,
                           "the message has a bare CR (byte %" G_GSIZE_FORMAT ") — use LF or CRLF line ends", i);
              return NULL;
            }
          g_byte_array_append (out, (const guint8 *) "\r\n", 2);
          i++;
        }
      else if (data[i] == '\n')
        g_byte_array_append (out, (const guint8 *) "\r\n", 2);
      else
        g_byte_array_append (out, &data[i], 1);
    }
  if (out->len < 2 || out->data[out->len - 1] != '\n')
    g_byte_array_append (out, (const guint8 *) "\r\n", 2);
  return g_byte_array_free_to_bytes (out);
}

GBytes *
pmx_cmd_read_all (const char *path,
                  GError    **error)
{
  g_autoptr(GInputStream) in = NULL;
  g_autoptr(GOutputStream) out = g_memory_output_stream_new_resizable ();

  if (path == NULL || strcmp (path, "-") == 0)
    in = g_unix_input_stream_new (STDIN_FILENO, FALSE);
  else
    {
      g_autoptr(GFile) file = g_file_new_for_commandline_arg (path);

      in = G_INPUT_STREAM (g_file_read (file, NULL, error));
      if (in == NULL)
        return NULL;
    }
  if (g_output_stream_splice (out, in, G_OUTPUT_STREAM_SPLICE_CLOSE_TARGET, NULL, error) < 0)
    return NULL;
  return g_memory_output_stream_steal_as_bytes (G_MEMORY_OUTPUT_STREAM (out));
}

gboolean
pmx_cmd_valid_address (const char *address)
{
  const char *at = strrchr (address, '@');

  if (at == NULL || at == address || at[1] == '\0' || strlen (address) > 254)
    return FALSE;
  for (const char *p = address; *p != '\0'; p++)
    if ((guchar) *p <= ' ' || *p == '<' || *p == '>' || *p == 0x7f)
      return FALSE;
  return TRUE;
}

char *
pmx_cmd_submit (PmxConfig     *config,
                PmxSubmission *sub,
                gboolean      *out_duplicate,
                gboolean      *out_direct,
                GError       **error)
{
  g_autofree char *socket_path = pmx_config_dup_socket_path (config);
  g_autoptr(GError) local_error = NULL;
  g_autofree char *user = NULL;
  PmxQueue *queue;
  char *id;

  *out_direct = FALSE;
  id = pmx_control_submit (socket_path, sub, out_duplicate, &local_error);
  if (id != NULL || !g_error_matches (local_error, PMX_CONTROL_ERROR, PMX_CONTROL_ERROR_UNREACHABLE))
    {
      if (id == NULL)
        g_propagate_error (error, g_steal_pointer (&local_error));
      return id;
    }

  /* No daemon: queue it ourselves; the daemon picks it up when it starts. */
  *out_direct = TRUE;
  if (g_mkdir_with_parents (config->state_dir, 0700) != 0)
    {
      int saved = errno;

      g_set_error (error, PMX_CMD_SUBMIT_ERROR, PMX_CMD_SUBMIT_ERROR_STATE_DIR,
                   "cannot create state_dir %s: %s", config->state_dir, g_strerror (saved));
      return NULL;
    }
  queue = pmx_queue_open (config->queue_path, error);
  if (queue == NULL)
    return NULL;
  user = g_strdup_printf ("local:%s", g_get_user_name ());
  sub->ingress = user;
  id = pmx_queue_submit (queue, sub, out_duplicate, error);
  sub->ingress = NULL;
  pmx_queue_close (queue);
  return id;
}

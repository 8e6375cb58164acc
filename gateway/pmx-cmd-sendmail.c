/* SPDX-License-Identifier: GPL-3.0-or-later */
/*
 * pmx-cmd-sendmail.c - `postmux sendmail`, also run when the binary is
 * invoked as `sendmail`: the interface PHP's mail(), cron, mailx and many
 * old applications call.
 *
 * Options (the subset of sendmail(8) that applications use): -t takes the
 * recipients from To:, Cc: and Bcc: (added to those given as arguments,
 * like Postfix); the Bcc: header is always removed.  -f sets the envelope
 * sender (default: the first From: address, else USER@HOST); -F sets the
 * full name used when a From: header must be added; -i / -oi: a line with
 * a single dot does not end the input.  -oem, -oep, -oeq, -oew, -odb, -odi,
 * -odq, -B, -v, -N, -R, -V, -X, -L and -bm are accepted; -bs, -bp, -bv, -bd
 * are refused.  From:, Date: and Message-ID: are added when missing, at the
 * top, as Postfix's cleanup does for local submissions.
 *
 * Queues through the daemon's control socket, or straight into the queue
 * when no daemon runs (delivered when it starts).  Silent on success.
 *
 * Exit codes (sysexits.h): 0 queued; EX_USAGE bad option or no
 * recipients; EX_DATAERR bad address, bare CR, empty message; EX_CONFIG
 * config unreadable; EX_CANTCREAT state directory; EX_TEMPFAIL the queue
 * or daemon could not take it now (try again); nothing is queued on any
 * non-zero exit.
 */
#include "pmx-cmd.h"

#include "pmx-control.h"
#include "pmx-smtpd.h"

#include <stdio.h>
#include <string.h>
#include <sysexits.h>

typedef struct {
  gboolean  extract;        /* -t */
  gboolean  ignore_dots;    /* -i, -oi */
  gboolean  verbose;        /* -v */
  char     *sender;         /* -f, or NULL */
  char     *full_name;      /* -F, or NULL */
  GPtrArray *recipients;    /* arguments */
} Sendmail;

/* sendmail_usage - say what is wrong, return EX_USAGE */
static int
sendmail_usage (const char *what)
{
  g_printerr ("sendmail: %s\n"
              "Usage: sendmail [-t] [-i] [-f sender] [-F \"Full Name\"] [-oi] [-oem|-oep] [--config FILE] [recipient...]\n",
              what);
  return EX_USAGE;
}

/* sendmail_strip_dot - the input up to a line holding only "." */
static gsize
sendmail_strip_dot (const guint8 *data,
                    gsize         len)
{
  gsize i = 0;

  while (i < len)
    {
      const guint8 *lf = memchr (data + i, '\n', len - i);
      gsize end = lf != NULL ? (gsize) (lf - data) : len;
      gsize line = end - i;

      if (line > 0 && data[end - 1] == '\r')
        line--;
      if (line == 1 && data[i] == '.')
        return i;
      i = end + 1;
    }
  return len;
}

/* sendmail_is_field - a header field line "Name: ..." */
static gboolean
sendmail_is_field (const char *line,
                   gsize       len)
{
  gsize i = 0;

  while (i < len && line[i] > ' ' && line[i] < 0x7f && line[i] != ':')
    i++;
  return i > 0 && i < len && line[i] == ':';
}

/* sendmail_field_is - does the field line start with @name: */
static gboolean
sendmail_field_is (const char *line,
                   gsize       len,
                   const char *name)
{
  gsize n = strlen (name);

  return len > n && line[n] == ':' && g_ascii_strncasecmp (line, name, n) == 0;
}

/* sendmail_display_name - @name as a phrase: quoted, or RFC 2047 encoded */
static char *
sendmail_display_name (const char *name)
{
  GString *s;

  for (const char *p = name; *p != '\0'; p++)
    if ((guchar) *p >= 0x80)
      {
        g_autofree char *b64 = g_base64_encode ((const guchar *) name, strlen (name));

        return g_strdup_printf ("=?UTF-8?B?%s?=", b64);
      }
  s = g_string_new ("\"");
  for (const char *p = name; *p != '\0'; p++)
    {
      if (*p == '"' || *p == '\\')
        g_string_append_c (s, '\\');
      if ((guchar) *p >= ' ')
        g_string_append_c (s, *p);
    }
  g_string_append_c (s, '"');
  return g_string_free (s, FALSE);
}

/* sendmail_rewrite - drop Bcc:, add From:/Date:/Message-ID: when missing;
 * @data is CRLF.  Also returns the header section for -t. (transfer full) */
static GBytes *
sendmail_rewrite (Sendmail     *sm,
                  GBytes       *data,
                  const char   *sender,
                  GBytes      **out_headers)
{
  gsize len;
  const char *msg = g_bytes_get_data (data, &len);
  GString *kept = g_string_new (NULL);
  GString *added = g_string_new (NULL);
  gsize i = 0, body;
  gboolean in_bcc = FALSE, have_from = FALSE, have_date = FALSE, have_id = FALSE;

  while (i < len)
    {
      const char *lf = memchr (msg + i, '\n', len - i);
      gsize end = lf != NULL ? (gsize) (lf - msg) + 1 : len;
      gsize line = end - i - (end - i >= 2 && msg[end - 2] == '\r' ? 2 : 0);

      if (line == 0)
        {
          i = end;   /* the empty line; one is written back below */
          break;
        }
      if ((msg[i] == ' ' || msg[i] == '\t') && kept->len + (in_bcc ? 1 : 0) > 0)
        {
          if (!in_bcc)
            g_string_append_len (kept, msg + i, (gssize) (end - i));
          i = end;
          continue;
        }
      if (!sendmail_is_field (msg + i, line))
        break;
      in_bcc = sendmail_field_is (msg + i, line, "Bcc");
      have_from |= sendmail_field_is (msg + i, line, "From");
      have_date |= sendmail_field_is (msg + i, line, "Date");
      have_id |= sendmail_field_is (msg + i, line, "Message-ID");
      if (!in_bcc)
        g_string_append_len (kept, msg + i, (gssize) (end - i));
      i = end;
    }
  body = i;
  *out_headers = g_bytes_new (msg, body);

  if (!have_from)
    {
      const char *addr = sender[0] != '\0' ? sender : "MAILER-DAEMON";

      if (sm->full_name != NULL && sm->full_name[0] != '\0')
        {
          g_autofree char *phrase = sendmail_display_name (sm->full_name);

          g_string_append_printf (added, "From: %s <%s>\r\n", phrase, addr);
        }
      else
        g_string_append_printf (added, "From: %s\r\n", addr);
    }
  if (!have_date)
    {
      g_autoptr(GDateTime) now = g_date_time_new_now_local ();
      g_autofree char *date = g_date_time_format (now, "%a, %d %b %Y %H:%M:%S %z");

      g_string_append_printf (added, "Date: %s\r\n", date);
    }
  if (!have_id)
    {
      g_autofree char *uuid = g_uuid_string_random ();
      const char *at = strrchr (sender, '@');

      g_string_append_printf (added, "Message-ID: <%s@%s>\r\n", uuid, at != NULL ? at + 1 : g_get_host_name ());
    }
  g_string_append_len (added, kept->str, (gssize) kept->len);
  g_string_append (added, "\r\n");
  g_string_append_len (added, msg + body, (gssize) (len - body));
  g_string_free (kept, TRUE);
  return g_string_free_to_bytes (added);
}

/* sendmail_add_rcpt - add unless already there (case-insensitive) */
static void
sendmail_add_rcpt (GPtrArray  *rcpts,
                   const char *address)
{
  for (guint i = 0; i < rcpts->len; i++)
    if (g_ascii_strcasecmp (g_ptr_array_index (rcpts, i), address) == 0)
      return;
  g_ptr_array_add (rcpts, g_strdup (address));
}

/* sendmail_parse - the sendmail(8) command line */
static int
sendmail_parse (Sendmail     *sm,
                PmxCmdCommon *common,
                int           argc,
                char        **argv)
{
  int i;

  for (i = 1; i < argc; i++)
    {
      const char *a = argv[i];

      if (strcmp (a, "--") == 0)
        {
          i++;
          break;
        }
      if (a[0] != '-' || a[1] == '\0')
        break;
      if (strcmp (a, "--config") == 0 || strcmp (a, "-C") == 0)
        {
          if (++i >= argc)
            return sendmail_usage ("--config needs a FILE");
          g_free (common->config_path);
          common->config_path = g_strdup (argv[i]);
        }
      else if (g_str_has_prefix (a, "--config="))
        {
          g_free (common->config_path);
          common->config_path = g_strdup (a + 9);
        }
      else if (a[1] == 'f' || a[1] == 'F' || a[1] == 'r')
        {
          const char *v = a[2] != '\0' ? a + 2 : (i + 1 < argc ? argv[++i] : NULL);
          char **slot = a[1] == 'F' ? &sm->full_name : &sm->sender;

          if (v == NULL)
            return sendmail_usage ("-f and -F need a value");
          g_free (*slot);
          *slot = g_strdup (v);
        }
      else if (a[1] == 'o' || a[1] == 'B' || a[1] == 'N' || a[1] == 'R' || a[1] == 'V'
               || a[1] == 'X' || a[1] == 'L' || a[1] == 'O')
        {
          if (strcmp (a, "-oi") == 0 || strcmp (a, "-oitrue") == 0)
            sm->ignore_dots = TRUE;
          /* -oem/-oep/-oeq/-oew (error mode), -od* (delivery mode) and the
           * rest: accepted; errors are always reported on stderr and in the
           * exit code. */
          else if (a[1] != 'o' && a[2] == '\0' && ++i >= argc)
            return sendmail_usage ("option needs a value");
          else if (a[1] == 'o' && a[2] == '\0' && ++i >= argc)
            return sendmail_usage ("-o needs a value");
        }
      else if (a[1] == 'b')
        {
          if (strcmp (a, "-bm") != 0)
            return sendmail_usage ("only -bm (the default: read a message from stdin) is supported");
        }
      else
        {
          for (const char *p = a + 1; *p != '\0'; p++)
            if (*p == 't')
              sm->extract = TRUE;
            else if (*p == 'i')
              sm->ignore_dots = TRUE;
            else if (*p == 'v')
              sm->verbose = TRUE;
            else if (*p == 'U' || *p == 'm' || *p == 'n' || *p == 'e')
              ;   /* obsolete no-ops */
            else
              {
                g_autofree char *what = g_strdup_printf ("unknown option -%c", *p);

                return sendmail_usage (what);
              }
        }
    }
  for (; i < argc; i++)
    {
      g_auto(GStrv) parts = g_strsplit (argv[i], ",", -1);

      for (guint j = 0; parts[j] != NULL; j++)
        {
          char *r = g_strstrip (parts[j]);

          if (r[0] != '\0')
            g_ptr_array_add (sm->recipients, g_strdup (r));
        }
    }
  return EX_OK;
}

int
pmx_cmd_sendmail (int    argc,
                  char **argv)
{
  g_auto(PmxCmdCommon) common = { 0, };
  Sendmail sm = { 0, };
  g_autoptr(GPtrArray) rcpts = g_ptr_array_new_with_free_func (g_free);
  g_autoptr(GError) error = NULL;
  g_autoptr(GBytes) raw = NULL;
  g_autoptr(GBytes) crlf = NULL;
  g_autoptr(GBytes) headers = NULL;
  g_autoptr(GBytes) message = NULL;
  g_autoptr(PmxConfig) config = NULL;
  g_autofree char *sender = NULL;
  g_autofree char *id = NULL;
  PmxSubmission sub = { 0, };
  gboolean duplicate = FALSE, direct = FALSE;
  int rc;

  sm.recipients = g_ptr_array_new_with_free_func (g_free);
  rc = sendmail_parse (&sm, &common, argc, argv);
  if (rc != EX_OK)
    goto out;

  raw = pmx_cmd_read_all (NULL, &error);
  if (raw == NULL)
    {
      g_printerr ("sendmail: cannot read the message from stdin: %s\n", error->message);
      rc = EX_NOINPUT;
      goto out;
    }
  {
    gsize len;
    const guint8 *d = g_bytes_get_data (raw, &len);

    if (!sm.ignore_dots)
      len = sendmail_strip_dot (d, len);
    if (len == 0)
      {
        g_printerr ("sendmail: the message is empty — nothing queued\n");
        rc = EX_DATAERR;
        goto out;
      }
    crlf = pmx_cmd_normalize_crlf (d, len, &error);
  }
  if (crlf == NULL)
    {
      g_printerr ("sendmail: %s — nothing queued\n", error->message);
      rc = EX_DATAERR;
      goto out;
    }

  /* The envelope sender: -f, else the first From: address, else USER@HOST. */
  if (sm.sender != NULL)
    {
      sender = g_strdup (strcmp (sm.sender, "<>") == 0 ? "" : sm.sender);
      if (sender[0] == '<' && g_str_has_suffix (sender, ">"))
        {
          char *inner = g_strndup (sender + 1, strlen (sender) - 2);

          g_free (sender);
          sender = inner;
        }
    }
  else
    {
      g_autoptr(GPtrArray) from = pmx_smtpd_header_addresses (g_bytes_get_data (crlf, NULL), g_bytes_get_size (crlf),
                                                              (const char *const[]) { "From", NULL }, FALSE);

      sender = from->len > 0 ? g_strdup (g_ptr_array_index (from, 0))
                             : g_strdup_printf ("%s@%s", g_get_user_name (), g_get_host_name ());
    }
  if (sender[0] != '\0' && !pmx_cmd_valid_address (sender))
    {
      g_printerr ("sendmail: sender \"%s\" is not an address like user@example.com — nothing queued\n", sender);
      rc = EX_DATAERR;
      goto out;
    }

  message = sendmail_rewrite (&sm, crlf, sender, &headers);
  for (guint i = 0; i < sm.recipients->len; i++)
    sendmail_add_rcpt (rcpts, g_ptr_array_index (sm.recipients, i));
  if (sm.extract)
    {
      g_autoptr(GPtrArray) found = pmx_smtpd_header_addresses (g_bytes_get_data (headers, NULL), g_bytes_get_size (headers),
                                                               (const char *const[]) { "To", "Cc", "Bcc", NULL }, FALSE);

      for (guint i = 0; i < found->len; i++)
        sendmail_add_rcpt (rcpts, g_ptr_array_index (found, i));
    }
  if (rcpts->len == 0)
    {
      rc = sendmail_usage (sm.extract ? "no recipients in To:, Cc: or Bcc: nor on the command line — nothing queued"
                                      : "no recipients — give them as arguments, or use -t");
      goto out;
    }
  for (guint i = 0; i < rcpts->len; i++)
    if (!pmx_cmd_valid_address (g_ptr_array_index (rcpts, i)))
      {
        g_printerr ("sendmail: recipient \"%s\" is not an address like user@example.com — nothing queued\n",
                    (char *) g_ptr_array_index (rcpts, i));
        rc = EX_DATAERR;
        goto out;
      }

  config = pmx_cmd_load_paths (&common, &error);
  if (config == NULL)
    {
      g_printerr ("sendmail: %s — nothing queued\n", error->message);
      rc = EX_CONFIG;
      goto out;
    }
  sub.ingress = "local";
  sub.sender = sender;
  sub.recipients = (const char *const *) rcpts->pdata;
  sub.n_recipients = rcpts->len;
  sub.data = message;
  id = pmx_cmd_submit (config, &sub, &duplicate, &direct, &error);
  if (id == NULL)
    {
      g_printerr ("sendmail: not queued: %s\n", error->message);
      if (g_error_matches (error, PMX_CMD_SUBMIT_ERROR, PMX_CMD_SUBMIT_ERROR_STATE_DIR))
        rc = EX_CANTCREAT;
      else if (g_error_matches (error, PMX_QUEUE_ERROR, PMX_QUEUE_ERROR_INVALID))
        rc = EX_DATAERR;
      else
        rc = EX_TEMPFAIL;
      goto out;
    }
  if (sm.verbose)
    g_printerr ("sendmail: queued as %s%s\n", id, direct ? " (no daemon running: delivered when `postmux serve` starts)" : "");
  rc = EX_OK;

out:
  g_ptr_array_unref (sm.recipients);
  g_free (sm.sender);
  g_free (sm.full_name);
  return rc;
}

/* SPDX-License-Identifier: GPL-3.0-or-later */
/*
 * pmx-maildir.c - the maildir transport: delivers into a local Maildir.
 *
 * The embedded default, and the smallest complete transport: read it first
 * when writing your own.  Delivery follows https://cr.yp.to/proto/maildir.html:
 * write tmp/<unique>, fsync it, link it to new/<unique>, unlink tmp/, fsync
 * new/.  Messages are stored with LF line ends, as Maildir readers expect;
 * like Postfix's local(8), a Return-Path: and a Delivered-To: line are
 * prepended unless add_delivery_headers is false.
 *
 * Trusts: the options, validated against the schema below, and the host's
 * envelope (addresses already parsed; one with a line break is refused all
 * the same, so it can never add a header line).
 * Fails: a full disk or quota defers (452 4.3.1), a permission or read-only
 * file system defers as a configuration failure (451 4.3.5, the host alerts),
 * any other I/O error defers (451 4.3.0).  An address unusable as a folder
 * name bounces (553 5.1.3) when per_recipient is on.
 */
#include <postmux/postmux.h>

#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <glib/gstdio.h>

/* The options, as `postmux plugins` shows them and the host checks them. */
#define MAILDIR_SCHEMA "{ \
  \"$schema\": \"http://json-schema.org/draft-07/schema#\", \
  \"title\": \"maildir transport options\", \
  \"type\": \"object\", \
  \"additionalProperties\": false, \
  \"required\": [\"path\"], \
  \"properties\": { \
    \"path\": { \"type\": \"string\", \"pattern\": \"^/\", \
      \"description\": \"Maildir root, made with cur/, new/ and tmp/ (mode 0700) if missing\" }, \
    \"per_recipient\": { \"type\": \"boolean\", \"default\": false, \
      \"description\": \"one copy per recipient, in the Maildir <path>/<address>/\" }, \
    \"add_delivery_headers\": { \"type\": \"boolean\", \"default\": true, \
      \"description\": \"prepend Return-Path: and Delivered-To: as Postfix's local(8) does\" } \
  } \
}"

struct _PmxTransport {
  char    *name;           /* instance name, for messages */
  char    *path;
  gboolean per_recipient;
  gboolean add_delivery_headers;
  char    *host;           /* host name as it goes into file names */
  gint     counter;        /* atomic: the Q part of unique names */
};

/* A Maildir needs nothing between messages. */
struct _PmxSession {
  PmxTransport *transport;
};

/* maildir_make - create @dir and its cur/, new/ and tmp/ if missing;
 * returns 0 or an errno value */
static int
maildir_make (const char *dir)
{
  static const char *const subdirs[] = { "cur", "new", "tmp" };

  if (g_mkdir_with_parents (dir, 0700) != 0)
    return errno;
  for (guint i = 0; i < G_N_ELEMENTS (subdirs); i++)
    {
      g_autofree char *sub = g_build_filename (dir, subdirs[i], NULL);

      if (g_mkdir (sub, 0700) != 0 && errno != EEXIST)
        return errno;
    }
  return 0;
}

/* maildir_host_part - the host name with the spec's escapes for '/' and ':' */
static char *
maildir_host_part (void)
{
  GString *host = g_string_new (NULL);

  for (const char *p = g_get_host_name (); *p != '\0'; p++)
    {
      if (*p == '/')
        g_string_append (host, "\\057");
      else if (*p == ':')
        g_string_append (host, "\\072");
      else
        g_string_append_c (host, *p);
    }
  return g_string_free (host, FALSE);
}

/* maildir_destroy - free an instance */
static void
maildir_destroy (PmxTransport *self)
{
  g_free (self->name);
  g_free (self->path);
  g_free (self->host);
  g_free (self);
}

/* maildir_create - read the options and make sure the Maildir exists */
static PmxTransport *
maildir_create (const PmxTransportArgs *args,
                GError                **error)
{
  JsonObject *options = args->options;
  const char *path = json_object_get_string_member_with_default (options, "path", NULL);
  PmxTransport *self;
  int err;

  if (path == NULL || !g_path_is_absolute (path))
    {
      g_set_error (error, PMX_TRANSPORT_ERROR, PMX_TRANSPORT_ERROR_CONFIG,
                   "option path: must be the absolute path of the Maildir — set it, "
                   "for example to \"/var/mail/postmux\"");
      return NULL;
    }
  err = maildir_make (path);
  if (err != 0)
    {
      g_set_error (error, PMX_TRANSPORT_ERROR, PMX_TRANSPORT_ERROR_CONFIG,
                   "option path: cannot create the Maildir %s: %s — create it, "
                   "or give the user running Postmux write access to its parent",
                   path, g_strerror (err));
      return NULL;
    }

  self = g_new0 (PmxTransport, 1);
  self->name = g_strdup (args->instance_name);
  self->path = g_strdup (path);
  self->per_recipient =
    json_object_get_boolean_member_with_default (options, "per_recipient", FALSE);
  self->add_delivery_headers =
    json_object_get_boolean_member_with_default (options, "add_delivery_headers", TRUE);
  self->host = maildir_host_part ();
  return self;
}

/* maildir_open_session - nothing to open */
static PmxSession *
maildir_open_session (PmxTransport *self,
                      GError      **error)
{
  PmxSession *session = g_new0 (PmxSession, 1);

  session->transport = self;
  return session;
}

/* maildir_close_session - free a session */
static void
maildir_close_session (PmxSession *session)
{
  g_free (session);
}

/* maildir_write_all - write every byte of @data, resuming after short writes */
static int
maildir_write_all (int         fd,
                   const char *data,
                   gsize       len)
{
  while (len > 0)
    {
      ssize_t n = write (fd, data, len);

      if (n < 0 && errno != EINTR)
        return errno;
      if (n > 0)
        {
          data += n;
          len -= (gsize) n;
        }
    }
  return 0;
}

/* maildir_fsync_dir - make a directory entry durable */
static int
maildir_fsync_dir (const char *dir)
{
  int fd = g_open (dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC, 0);
  int err = 0;

  if (fd < 0)
    return errno;
  if (fsync (fd) != 0)
    err = errno;
  close (fd);
  return err;
}

/* maildir_deliver - store @header then @body as one new message in @dir.
 * Returns 0 with *out_path the new file, or an errno value with *out_path
 * naming what failed. */
static int
maildir_deliver (PmxTransport  *self,
                 const char    *dir,
                 const GString *header,
                 const GString *body,
                 char         **out_path)
{
  gint64 now = g_get_real_time ();
  g_autofree char *unique = NULL;
  g_autofree char *tmp_path = NULL;
  g_autofree char *new_dir = NULL;
  g_autofree char *new_path = NULL;
  int fd, err;

  err = maildir_make (dir);
  if (err != 0)
    {
      *out_path = g_strdup (dir);
      return err;
    }

  /* <seconds>.M<usec>P<pid>Q<counter>.<host>; the counter is shared by all
   * sessions, so only another process with our pid could clash (O_EXCL
   * catches it, and the retry picks a new name). */
  unique = g_strdup_printf ("%" G_GINT64_FORMAT ".M%dP%dQ%d.%s", now / G_USEC_PER_SEC,
                            (int) (now % G_USEC_PER_SEC), (int) getpid (),
                            g_atomic_int_add (&self->counter, 1) + 1, self->host);
  tmp_path = g_build_filename (dir, "tmp", unique, NULL);
  new_dir = g_build_filename (dir, "new", NULL);
  new_path = g_build_filename (new_dir, unique, NULL);

  fd = g_open (tmp_path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
  if (fd < 0)
    {
      *out_path = g_steal_pointer (&tmp_path);
      return errno;
    }
  err = maildir_write_all (fd, header->str, header->len);
  if (err == 0)
    err = maildir_write_all (fd, body->str, body->len);
  if (err == 0 && fsync (fd) != 0)
    err = errno;
  if (close (fd) != 0 && err == 0)  /* NFS reports write errors here */
    err = errno;
  if (err == 0 && link (tmp_path, new_path) != 0)
    err = errno;
  g_unlink (tmp_path);  /* linked or failed: either way tmp/ is done with it */
  if (err != 0)
    {
      *out_path = g_steal_pointer (&tmp_path);
      return err;
    }

  err = maildir_fsync_dir (new_dir);
  *out_path = err == 0 ? g_steal_pointer (&new_path) : g_steal_pointer (&new_dir);
  return err;
}

/* maildir_envelope_ok - no address can break a header line */
static gboolean
maildir_envelope_ok (const PmxEnvelope *envelope)
{
  if (strpbrk (envelope->sender, "\r\n") != NULL)
    return FALSE;
  for (gsize i = 0; i < envelope->n_recipients; i++)
    if (strpbrk (envelope->recipients[i], "\r\n") != NULL)
      return FALSE;
  return TRUE;
}

/* maildir_to_lf - the message with CRLF turned into LF (a lone CR stays) */
static GString *
maildir_to_lf (const guint8 *message,
               gsize         len)
{
  GString *out = g_string_sized_new (len);
  gsize start = 0;

  for (gsize i = 0; i + 1 < len; i++)
    if (message[i] == '\r' && message[i + 1] == '\n')
      {
        g_string_append_len (out, (const char *) message + start, (gssize) (i - start));
        start = i + 1;
      }
  g_string_append_len (out, (const char *) message + start, (gssize) (len - start));
  return out;
}

/* maildir_folder - the folder of @address under the root, or NULL when the
 * address cannot safely be a directory name */
static char *
maildir_folder (PmxTransport *self,
                const char   *address)
{
  static const char *const reserved[] = { "cur", "new", "tmp", NULL };
  g_autofree char *folder = g_ascii_strdown (address, -1);

  /* Case-folded, as Postfix's local(8) does; never a path, a hidden file or
   * one of the root's own cur/, new/ and tmp/. */
  if (folder[0] == '\0' || folder[0] == '.' || strlen (folder) > 255
      || g_strv_contains (reserved, folder))
    return NULL;
  for (const char *p = folder; *p != '\0'; p++)
    if (*p == '/' || g_ascii_iscntrl (*p))
      return NULL;
  return g_build_filename (self->path, folder, NULL);
}

/* maildir_header - the delivery header lines: Return-Path, then Delivered-To
 * when @recipient is not NULL */
static GString *
maildir_header (PmxTransport *self,
                const char   *sender,
                const char   *recipient)
{
  GString *header = g_string_new (NULL);

  if (!self->add_delivery_headers)
    return header;
  g_string_append_printf (header, "Return-Path: <%s>\n", sender);
  if (recipient != NULL)
    g_string_append_printf (header, "Delivered-To: %s\n", recipient);
  return header;
}

/* maildir_outcome - record one delivery into @path for the recipient at
 * @index, or for every recipient when @index is G_MAXSIZE */
static void
maildir_outcome (PmxTransport *self,
                 PmxResult    *result,
                 gsize         index,
                 int           err,
                 const char   *path)
{
  g_autofree char *text = NULL;
  PmxRcptStatus status = PMX_RCPT_DEFERRED;
  guint code = 451;
  const char *enhanced = "4.3.0";

  if (err == EACCES || err == EPERM || err == EROFS)
    {
      /* Not this message's fault: the host defers everything and alerts. */
      pmx_result_fail (result, PMX_FAILURE_CONFIG, 451, "4.3.5",
                       "maildir '%s': cannot write %s: %s — give the user running "
                       "Postmux write access to %s, or choose another path",
                       self->name, path, g_strerror (err), self->path);
      return;
    }
  if (err == 0)
    {
      status = PMX_RCPT_DELIVERED;
      code = 250;
      enhanced = "2.0.0";
      text = g_strdup_printf ("delivered to maildir as %s", path);
    }
  else
    {
      if (err == ENOSPC || err == EDQUOT)
        {
          code = 452;
          enhanced = "4.3.1";
        }
      text = g_strdup_printf ("maildir '%s': cannot write %s: %s", self->name, path, g_strerror (err));
    }

  if (index == G_MAXSIZE)
    pmx_result_set_pending (result, status, code, enhanced, text);
  else
    pmx_result_set_recipient (result, index, status, code, enhanced, text);
}

/* maildir_send - one copy in the root, or one per recipient folder */
static void
maildir_send (PmxSession        *session,
              const PmxEnvelope *envelope,
              const guint8      *message,
              gsize              message_len,
              PmxResult         *result)
{
  PmxTransport *self = session->transport;
  g_autoptr(GString) body = NULL;

  if (!maildir_envelope_ok (envelope))
    {
      pmx_result_fail (result, PMX_FAILURE_PERMANENT, 501, "5.1.3",
                       "maildir '%s': an envelope address contains a line break", self->name);
      return;
    }
  body = maildir_to_lf (message, message_len);

  if (!self->per_recipient)
    {
      /* One file for all: Delivered-To only when it tells the truth. */
      const char *rcpt = envelope->n_recipients == 1 ? envelope->recipients[0] : NULL;
      g_autoptr(GString) header = maildir_header (self, envelope->sender, rcpt);
      g_autofree char *path = NULL;
      int err = maildir_deliver (self, self->path, header, body, &path);

      maildir_outcome (self, result, G_MAXSIZE, err, path);
      return;
    }

  for (gsize i = 0; i < envelope->n_recipients; i++)
    {
      const char *rcpt = envelope->recipients[i];
      g_autofree char *folder = maildir_folder (self, rcpt);
      g_autoptr(GString) header = NULL;
      g_autofree char *path = NULL;
      int err;

      if (folder == NULL)
        {
          pmx_result_set_recipient (result, i, PMX_RCPT_BOUNCED, 553, "5.1.3",
                                    "recipient address cannot be used as a Maildir folder name");
          continue;
        }
      header = maildir_header (self, envelope->sender, rcpt);
      err = maildir_deliver (self, folder, header, body, &path);
      maildir_outcome (self, result, i, err, path);
    }
}

/* maildir_check - for `postmux doctor`: is the Maildir there and writable? */
static gboolean
maildir_check (PmxTransport *self,
               PmxReport    *report)
{
  static const char *const dirs[] = { "", "tmp", "new" };

  for (guint i = 0; i < G_N_ELEMENTS (dirs); i++)
    {
      g_autofree char *dir = g_build_filename (self->path, dirs[i], NULL);

      if (faccessat (AT_FDCWD, dir, W_OK | X_OK, AT_EACCESS) != 0)
        {
          pmx_report_add (report, PMX_CHECK_FAIL, "maildir",
                          "%s: %s — create it (mkdir -m 0700 -p %s/cur %s/new %s/tmp) "
                          "and give the user running Postmux write access",
                          dir, g_strerror (errno), self->path, self->path, self->path);
          return FALSE;
        }
    }
  pmx_report_add (report, PMX_CHECK_OK, "maildir", "%s is a writable Maildir", self->path);
  return TRUE;
}

static const PmxTransportOps maildir_ops = {
  .create = maildir_create,
  .destroy = maildir_destroy,
  .open_session = maildir_open_session,
  .send = maildir_send,
  .close_session = maildir_close_session,
  .check = maildir_check,
};

PMX_TRANSPORT_DEFINE (maildir, "maildir", "0.1.0", "GPL-3.0-or-later",
                      "delivers into a local Maildir (cur/new/tmp)",
                      MAILDIR_SCHEMA, &maildir_ops)

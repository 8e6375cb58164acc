/* SPDX-License-Identifier: GPL-3.0-or-later */
/*
 * pmx-smtpd.c - the SMTP submission listener: legacy applications hand
 * their mail to Postmux here.
 *
 * Follows RFC 5321 (SMTP), RFC 1870 (SIZE), RFC 2920 (PIPELINING),
 * RFC 6152 (8BITMIME), RFC 2034/3463 (enhanced status codes), RFC 3207
 * (STARTTLS), RFC 8314 (implicit TLS), RFC 4954 (AUTH) with RFC 4616 (PLAIN)
 * and the LOGIN draft, RFC 6531 (SMTPUTF8).
 *
 * Runs on the main GMainContext: GSocketService accepts; reads and writes
 * are non-blocking on the (pollable) streams, tried at once and waited
 * for with a pollable source only when the socket is not ready (a GTask
 * per read and write cost more than the SMTP itself); password checks
 * run on a GTask thread, and a message is
 * answered "250 2.0.0 queued as ID" only from pmx_queue_submit_async()'s
 * callback, i.e. after the durable commit.  Bytes are read raw into a
 * buffer and split into lines here, never by GDataInputStream, so a bare
 * CR or LF is seen exactly.
 *
 * TLS: GIO's GTlsServerConnection (glib-networking; its GnuTLS backend on
 * Debian 12), because it is async on the main loop like the rest of this
 * file.  Outbound TLS (the smtp transports) is OpenSSL: one stack per
 * direction.
 *
 * Trusts: the validated config and nothing from the client.  The peer's
 * address comes from the socket.
 *
 * Fails closed, with these replies (RFC 3463 codes):
 *   554 5.5.0  bytes before the greeting (postscreen's pre-greet test: a
 *              client outside auth.networks is greeted only after
 *              smtpd.pregreet_wait, 1 s by default), or
 *              commands sent ahead without PIPELINING advertised; closes
 *   421 4.7.0  too many connections (in total / from this client); closes
 *   421 4.4.2  a state's timeout ran out; closes
 *   421 4.3.2  shutting down; closes
 *   421 4.7.0  too many errors in one session (10); closes
 *   500 5.5.2  bare CR or LF in a command line; closes
 *   500 5.5.2  command line over 512 octets (RFC 5321 4.5.3.1.4)
 *   500 5.5.1  unknown command;  501 5.5.4 bad arguments;  503 5.5.1 order
 *   538 5.7.11 AUTH without TLS (RFC 4954);  535 5.7.8 bad credentials,
 *              answered after 1, 2, 4... (at most 16) seconds per client,
 *              closing after 3 failures in a session
 *   530 5.7.0  MAIL from a client neither authenticated nor in auth.networks
 *   550 5.7.1  sender (MAIL FROM or a From: header address) not allowed
 *   552 5.3.4  SIZE= or the message over smtpd.max_message_size (DATA is
 *              read to its end first, nothing kept past the limit)
 *   452 4.5.3  more recipients than smtpd.max_recipients
 *   550 5.6.11 bare CR or LF in DATA: the whole message is refused and only
 *              CRLF.CRLF ends it, so "\n.\n", "\n.\r\n" and "\r.\r\n" are
 *              content, never an end (CVE-2023-51764 family)
 *   550 5.6.0  a text line over 1000 octets (RFC 5321 4.5.3.1.6)
 *   452 4.3.1  the queue's disk is full;  451 4.3.0 the queue is busy or
 *              failed: the client keeps the message and retries
 */
#include "pmx-smtpd.h"

#include "pmx-duration.h"
#include "pmx-log.h"

#include <crypt.h>
#include <string.h>

#define SMTPD_CMD_LIMIT        512
#define SMTPD_AUTH_LIMIT       12288   /* RFC 4954 section 4 */
#define SMTPD_TEXT_LIMIT       1000
#define SMTPD_CLOSE_GRACE_MS   30000
#define SMTPD_READ_CHUNK       16384
#define SMTPD_PUMP_READS       8       /* reads in a row before other sessions get a turn */
#define SMTPD_ACCEPT_PAUSE_MS  100     /* no accept() for this long after one failed */
#define SMTPD_MAX_ERRORS       10
#define SMTPD_MAX_AUTH_FAILS   3
#define SMTPD_AUTH_DELAY_CAP   16      /* seconds */
#define SMTPD_AUTH_FORGET      (15 * 60 * PMX_USEC_PER_SEC)

G_DEFINE_QUARK (pmx-smtpd-error-quark, pmx_smtpd_error)

typedef struct {
  GInetAddressMask *mask;
  char            **senders;
} SmtpdNetwork;

typedef struct {
  char  *hash;
  char **senders;
} SmtpdUser;

typedef struct {
  GSocketAddress *address;
  gboolean        implicit_tls;
  char           *text;       /* as the config wrote it */
  GSocket        *socket;     /* listening, from pmx_smtpd_start() */
  GSource        *source;     /* accepts when the socket is readable */
  guint           resume;     /* accepting paused after an accept() error */
  PmxSmtpd       *smtpd;
} SmtpdListen;

typedef struct {
  guint  count;
  gint64 last;
} SmtpdFailures;

struct _PmxSmtpd {
  PmxConfig       *config;
  PmxQueue        *queue;
  void           (*wake) (gpointer);
  gpointer         wake_data;

  char            *hostname;
  gsize            max_size;
  guint            max_rcpts;
  guint            max_conns;
  guint            max_per_client;
  gboolean         allow_plaintext_auth;
  gint64           command_timeout;   /* microseconds */
  gint64           pregreet_wait;     /* microseconds, for clients outside auth.networks */
  gint64           data_timeout;
  GTlsCertificate *cert;              /* NULL: no TLS */
  GPtrArray       *listens;           /* SmtpdListen */
  GPtrArray       *networks;          /* SmtpdNetwork */
  GHashTable      *users;             /* name -> SmtpdUser */

  gboolean         started;
  GHashTable      *sessions;          /* SmtpdSession set */
  GHashTable      *per_client;        /* ip -> connections */
  GHashTable      *auth_failures;     /* ip -> SmtpdFailures */
  gboolean         shutting_down;
};

typedef enum {
  SMTPD_STATE_PREGREET,    /* connected; waiting before the greeting */
  SMTPD_STATE_HANDSHAKE,   /* TLS handshake (implicit, or after STARTTLS) */
  SMTPD_STATE_COMMAND,     /* waiting for a command */
  SMTPD_STATE_AUTH,        /* waiting for an AUTH continuation line */
  SMTPD_STATE_DATA,        /* reading the message */
  SMTPD_STATE_BUSY,        /* a password check, a commit or an AUTH delay runs */
  SMTPD_STATE_CLOSING,     /* the last reply is being written */
  SMTPD_STATE_CLOSED,
} SmtpdState;

static const char *const smtpd_state_names[] = {
  "PREGREET", "HANDSHAKE", "COMMAND", "AUTH", "DATA", "BUSY", "CLOSING", "CLOSED",
};

typedef enum {
  SMTPD_MECH_PLAIN,
  SMTPD_MECH_LOGIN,
} SmtpdMech;

typedef struct {
  gint               ref;
  PmxSmtpd          *smtpd;
  PmxQueue          *queue;
  SmtpdState         state;
  GSocketConnection *conn;
  GIOStream         *stream;        /* conn, or the TLS connection over it */
  GCancellable      *cancel;
  char              *peer;          /* client IP as text */
  GInetAddress      *peer_addr;
  gboolean           loopback;
  gboolean           implicit_greeting;  /* implicit TLS: greet after the handshake */
  GSource           *timer;         /* the state's timeout (or the pre-greet wait): moved, not remade */
  gint64             deadline;      /* monotonic time it is due, or -1 */
  guint              delay;         /* AUTH failure delay */

  GByteArray        *inbuf;
  guint8            *chunk;
  GSource           *in_source;     /* waiting for the client's bytes */
  gboolean           client_eof;    /* the client half-closed while we were busy */
  GString           *outbuf;        /* replies not yet written */
  gsize              out_done;      /* of outbuf, bytes written */
  GSource           *out_source;    /* waiting for room to write */
  gboolean           close_after_flush;
  gboolean           starttls_after_flush;
  gboolean           skipping;      /* discarding an overlong command line */
  guint              errors;

  char              *helo;
  gboolean           esmtp;
  gboolean           tls;
  char              *user;          /* authenticated SMTP user, or NULL */
  char              *identity;      /* "smtp:user" or "smtp-net:ip" */
  gboolean           has_mail;
  PmxSmtpdPath       mail;
  GPtrArray         *rcpts;         /* char* */
  PmxSmtpdDataReader data;

  SmtpdMech          mech;
  guint              auth_step;
  char              *auth_user;
  guint              auth_failures;
} SmtpdSession;

static void smtpd_pump        (SmtpdSession *s);
static void smtpd_stop_waiting (SmtpdSession *s);

/* smtpd_drop_source - destroy *@source (if any) and let go of it */
static void
smtpd_drop_source (GSource **source)
{
  if (*source != NULL)
    g_source_destroy (*source);
  g_clear_pointer (source, g_source_unref);
}
static void smtpd_process     (SmtpdSession *s);
static void smtpd_finish      (SmtpdSession *s);
static void smtpd_set_state   (SmtpdSession *s,
                               SmtpdState    state);

/* ======================================================================
 * Parsing: pure functions over bytes.
 * ====================================================================== */

PmxSmtpdLineStatus
pmx_smtpd_scan_line (const guint8 *buf,
                     gsize         len,
                     gsize         limit,
                     gsize        *out_line_len,
                     gsize        *out_consumed)
{
  gsize n = MIN (len, limit);

  *out_line_len = 0;
  *out_consumed = 0;
  for (gsize i = 0; i < n; i++)
    {
      if (buf[i] == '\n')
        {
          *out_consumed = i + 1;
          return PMX_SMTPD_LINE_BARE_LF;
        }
      if (buf[i] == '\r')
        {
          if (i + 1 >= len)
            return PMX_SMTPD_LINE_MORE;
          if (buf[i + 1] != '\n')
            {
              *out_consumed = i + 1;
              return PMX_SMTPD_LINE_BARE_CR;
            }
          *out_consumed = i + 2;
          if (i + 2 > limit)
            return PMX_SMTPD_LINE_TOO_LONG;
          *out_line_len = i;
          return PMX_SMTPD_LINE_OK;
        }
    }
  if (len < limit)
    return PMX_SMTPD_LINE_MORE;
  /* @limit octets without a line end: too long, end not seen yet. */
  *out_consumed = n;
  return PMX_SMTPD_LINE_TOO_LONG;
}

PmxSmtpdVerb
pmx_smtpd_parse_verb (const char  *line,
                      gsize        len,
                      const char **out_arg,
                      gboolean    *out_bad)
{
  static const struct {
    const char  *name;
    PmxSmtpdVerb verb;
  } verbs[] = {
    { "HELO", PMX_SMTPD_CMD_HELO }, { "EHLO", PMX_SMTPD_CMD_EHLO },
    { "STARTTLS", PMX_SMTPD_CMD_STARTTLS }, { "AUTH", PMX_SMTPD_CMD_AUTH },
    { "MAIL", PMX_SMTPD_CMD_MAIL }, { "RCPT", PMX_SMTPD_CMD_RCPT },
    { "DATA", PMX_SMTPD_CMD_DATA }, { "RSET", PMX_SMTPD_CMD_RSET },
    { "NOOP", PMX_SMTPD_CMD_NOOP }, { "QUIT", PMX_SMTPD_CMD_QUIT },
    { "HELP", PMX_SMTPD_CMD_HELP }, { "VRFY", PMX_SMTPD_CMD_VRFY },
    { "EXPN", PMX_SMTPD_CMD_EXPN },
  };
  gsize vlen = 0;

  *out_arg = line + len;
  *out_bad = FALSE;
  for (gsize i = 0; i < len; i++)
    if (((guchar) line[i] < 0x20 && line[i] != '\t') || line[i] == 0x7f)
      {
        *out_bad = TRUE;
        return PMX_SMTPD_CMD_UNKNOWN;
      }
  while (vlen < len && line[vlen] != ' ')
    vlen++;
  for (gsize i = 0; i < G_N_ELEMENTS (verbs); i++)
    if (strlen (verbs[i].name) == vlen && g_ascii_strncasecmp (line, verbs[i].name, vlen) == 0)
      {
        const char *arg = line + vlen;

        while (*arg == ' ')
          arg++;
        *out_arg = arg;
        return verbs[i].verb;
      }
  return PMX_SMTPD_CMD_UNKNOWN;
}

void
pmx_smtpd_path_clear (PmxSmtpdPath *path)
{
  g_clear_pointer (&path->address, g_free);
  memset (path, 0, sizeof *path);
}

/* smtpd_valid_address - a mailbox (local@domain), quoted local part allowed */
static gboolean
smtpd_valid_address (const char *a,
                     gsize       len,
                     gboolean   *out_utf8)
{
  gboolean quoted = FALSE;
  const char *at = NULL;

  *out_utf8 = FALSE;
  if (len == 0 || len > 254 || !g_utf8_validate (a, (gssize) len, NULL))
    return FALSE;
  for (gsize i = 0; i < len; i++)
    {
      guchar c = (guchar) a[i];

      if (c >= 0x80)
        *out_utf8 = TRUE;
      if (c < 0x20 || c == 0x7f)
        return FALSE;
      if (quoted)
        {
          if (c == '\\' && i + 1 < len)
            i++;
          else if (c == '"')
            quoted = FALSE;
          continue;
        }
      if (c == '"')
        quoted = TRUE;
      else if (c == ' ' || c == '<' || c == '>' || c == '(' || c == ')' || c == ',' || c == ';' || c == '\\')
        return FALSE;
      else if (c == '@')
        at = a + i;
    }
  return !quoted && at != NULL && at != a && at + 1 < a + len;
}

const char *
pmx_smtpd_parse_path (const char   *arg,
                      const char   *prefix,
                      gboolean      is_mail,
                      PmxSmtpdPath *out)
{
  const char *syntax = is_mail ? "501 5.5.4 Syntax: MAIL FROM:<address> [SIZE=n] [BODY=8BITMIME] [SMTPUTF8]\r\n"
                               : "501 5.5.4 Syntax: RCPT TO:<address>\r\n";
  const char *bad = is_mail ? "501 5.1.7 Bad sender address syntax\r\n"
                            : "501 5.1.3 Bad recipient address syntax\r\n";
  gsize plen = strlen (prefix);
  const char *p, *start, *end;
  g_auto(GStrv) params = NULL;
  gboolean seen_size = FALSE, seen_body = FALSE;
  gboolean utf8 = FALSE;

  memset (out, 0, sizeof *out);
  if (g_ascii_strncasecmp (arg, prefix, plen) != 0)
    return syntax;
  p = arg + plen;
  while (*p == ' ')
    p++;
  if (*p == '<')
    {
      gboolean quoted = FALSE;

      start = ++p;
      for (; *p != '\0'; p++)
        {
          if (quoted && *p == '\\' && p[1] != '\0')
            p++;
          else if (*p == '"')
            quoted = !quoted;
          else if (!quoted && *p == '>')
            break;
        }
      if (*p != '>')
        return syntax;
      end = p++;
      /* An obsolete source route (@a,@b:user@c) names relays: drop it. */
      if (start < end && *start == '@')
        {
          const char *colon = memchr (start, ':', (gsize) (end - start));

          if (colon == NULL)
            return bad;
          start = colon + 1;
        }
    }
  else
    {
      /* Tolerated: an address without angle brackets (old devices). */
      start = p;
      while (*p != '\0' && *p != ' ')
        p++;
      end = p;
      if (start == end)
        return syntax;
    }
  if (*p != '\0' && *p != ' ')
    return syntax;
  if (end > start && !smtpd_valid_address (start, (gsize) (end - start), &utf8))
    return bad;
  if (end == start && !is_mail)
    return bad;

  while (*p == ' ')
    p++;
  params = g_strsplit (p, " ", -1);
  for (guint i = 0; params[i] != NULL; i++)
    {
      char *param = params[i];
      char *eq = strchr (param, '=');
      const char *value = eq != NULL ? eq + 1 : NULL;

      if (param[0] == '\0')
        continue;
      if (eq != NULL)
        *eq = '\0';
      if (!is_mail)
        return "555 5.5.4 RCPT TO parameters not supported\r\n";
      if (g_ascii_strcasecmp (param, "SIZE") == 0)
        {
          guint64 size = 0;

          if (seen_size || value == NULL || value[0] == '\0' || strlen (value) > 20)
            return "501 5.5.4 Bad SIZE= parameter\r\n";
          for (const char *v = value; *v != '\0'; v++)
            {
              if (!g_ascii_isdigit (*v))
                return "501 5.5.4 Bad SIZE= parameter\r\n";
              size = size > G_MAXUINT64 / 10 ? G_MAXUINT64 : size * 10 + (guint64) (*v - '0');
            }
          seen_size = TRUE;
          out->has_size = TRUE;
          out->size = size;
        }
      else if (g_ascii_strcasecmp (param, "BODY") == 0)
        {
          if (seen_body || value == NULL)
            return "501 5.5.4 Bad BODY= parameter\r\n";
          if (g_ascii_strcasecmp (value, "8BITMIME") == 0)
            out->body_8bit = TRUE;
          else if (g_ascii_strcasecmp (value, "7BIT") != 0)
            return "501 5.5.4 BODY= takes 7BIT or 8BITMIME\r\n";
          seen_body = TRUE;
        }
      else if (g_ascii_strcasecmp (param, "SMTPUTF8") == 0 && value == NULL)
        out->smtputf8 = TRUE;
      else if (g_ascii_strcasecmp (param, "AUTH") == 0 && value != NULL)
        ;   /* RFC 4954 section 5: the submitter's identity; we use our own */
      else
        return "555 5.5.4 Unsupported MAIL FROM parameter\r\n";
    }
  if (utf8 && is_mail && !out->smtputf8)
    return "553 5.6.7 Non-ASCII address needs the SMTPUTF8 parameter\r\n";
  out->utf8 = utf8;
  out->address = g_strndup (start, (gsize) (end - start));
  return NULL;
}

enum {
  DATA_LINE_START,   /* after CRLF (or at the start) */
  DATA_DOT,          /* "." at a line start */
  DATA_DOT_CR,       /* ".\r" at a line start */
  DATA_MID,          /* inside a line */
  DATA_CR,           /* a CR inside a line */
};

void
pmx_smtpd_data_reader_init (PmxSmtpdDataReader *reader,
                            gsize               max_size,
                            gsize               max_line)
{
  memset (reader, 0, sizeof *reader);
  reader->state = DATA_LINE_START;
  reader->max_size = max_size;
  reader->max_line = max_line;
  reader->out = g_byte_array_new ();
}

void
pmx_smtpd_data_reader_clear (PmxSmtpdDataReader *reader)
{
  g_clear_pointer (&reader->out, g_byte_array_unref);
  memset (reader, 0, sizeof *reader);
}

/* data_flag - record a problem; from now on nothing more is kept */
static void
data_flag (PmxSmtpdDataReader *r,
           guint               flag)
{
  if (r->flags == 0)
    r->bad_line = r->lines + 1;
  r->flags |= flag;
  if (r->out != NULL)
    g_byte_array_set_size (r->out, 0);
}

/* data_keep - octets of the message */
static void
data_keep (PmxSmtpdDataReader *r,
           const guint8       *p,
           gsize               n)
{
  r->size += n;
  if (r->size > r->max_size && !(r->flags & PMX_SMTPD_DATA_TOO_BIG))
    data_flag (r, PMX_SMTPD_DATA_TOO_BIG);
  if (r->flags == 0 && r->out != NULL)
    g_byte_array_append (r->out, p, (guint) n);
}

/* data_count - octets on the current line (the limit counts the wire line) */
static void
data_count (PmxSmtpdDataReader *r,
            gsize               n)
{
  r->line_len += n;
  if (r->line_len + 2 > r->max_line && !(r->flags & PMX_SMTPD_DATA_LONG_LINE))
    data_flag (r, PMX_SMTPD_DATA_LONG_LINE);
}

gsize
pmx_smtpd_data_reader_feed (PmxSmtpdDataReader *r,
                            const guint8       *buf,
                            gsize               len)
{
  gsize i = 0;

  while (i < len && !r->done)
    {
      guint8 c = buf[i];

      switch (r->state)
        {
        case DATA_LINE_START:
          if (c == '.')
            {
              r->state = DATA_DOT;
              data_count (r, 1);
              i++;
            }
          else
            r->state = DATA_MID;
          break;

        case DATA_DOT:
          if (c == '\r')
            {
              r->state = DATA_DOT_CR;
              i++;
            }
          else
            r->state = DATA_MID;   /* dot-unstuffing: the leading dot is dropped */
          break;

        case DATA_DOT_CR:
          if (c == '\n')
            {
              r->done = TRUE;
              i++;
            }
          else
            {
              data_flag (r, PMX_SMTPD_DATA_BARE_CR);
              r->state = DATA_MID;
            }
          break;

        case DATA_CR:
          if (c == '\n')
            {
              data_keep (r, (const guint8 *) "\r\n", 2);
              r->lines++;
              r->line_len = 0;
              r->state = DATA_LINE_START;
              i++;
            }
          else
            {
              /* Counted as text; a following CR starts a new check. */
              data_flag (r, PMX_SMTPD_DATA_BARE_CR);
              data_count (r, 1);
              r->state = DATA_MID;
            }
          break;

        case DATA_MID:
        default:
          {
            gsize j = i;

            while (j < len && buf[j] != '\r' && buf[j] != '\n')
              j++;
            if (j > i)
              {
                data_keep (r, buf + i, j - i);
                data_count (r, j - i);
                i = j;
              }
            else if (c == '\r')
              {
                r->state = DATA_CR;
                i++;
              }
            else
              {
                /* A bare LF ends no line: the next "." is text, so no
                 * LF-based end of data can ever be recognised. */
                data_flag (r, PMX_SMTPD_DATA_BARE_LF);
                data_count (r, 1);
                i++;
              }
          }
          break;
        }
    }
  return i;
}

/* from_add - one mailbox of a From: field, comments and display name gone */
static void
from_add (GPtrArray  *out,
          const char *text,
          gsize       len,
          gboolean    lower)
{
  GString *addr = g_string_new (NULL);
  const char *angle = NULL;
  const char *angle_end = NULL;
  int depth = 0;
  gboolean quoted = FALSE;

  /* Find a top-level <...>. */
  for (gsize i = 0; i < len; i++)
    {
      char c = text[i];

      if (c == '\\' && i + 1 < len && (quoted || depth > 0))
        i++;
      else if (quoted)
        quoted = c != '"';
      else if (c == '(')
        depth++;
      else if (c == ')' && depth > 0)
        depth--;
      else if (depth == 0 && c == '"')
        quoted = TRUE;
      else if (depth == 0 && c == '<' && angle == NULL)
        angle = text + i + 1;
      else if (depth == 0 && c == '>' && angle != NULL && angle_end == NULL)
        angle_end = text + i;
    }
  if (angle != NULL && angle_end != NULL)
    {
      text = angle;
      len = (gsize) (angle_end - angle);
    }
  depth = 0;
  quoted = FALSE;
  for (gsize i = 0; i < len; i++)
    {
      char c = text[i];

      if (quoted)
        {
          g_string_append_c (addr, c);
          if (c == '\\' && i + 1 < len)
            g_string_append_c (addr, text[++i]);
          else if (c == '"')
            quoted = FALSE;
        }
      else if (depth > 0)
        {
          if (c == '\\' && i + 1 < len)
            i++;
          else if (c == '(')
            depth++;
          else if (c == ')')
            depth--;
        }
      else if (c == '(')
        depth++;
      else if (c == '"')
        {
          quoted = TRUE;
          g_string_append_c (addr, c);
        }
      else if (c != ' ' && c != '\t' && c != '\r' && c != '\n')
        g_string_append_c (addr, c);
    }
  /* A control character (NUL included) stays visible as '?', so the
   * address is never empty and matches no pattern but "*". */
  for (gsize i = 0; i < addr->len; i++)
    if ((guchar) addr->str[i] < 0x20 || addr->str[i] == 0x7f)
      addr->str[i] = '?';
  if (addr->len > 0)
    g_ptr_array_add (out, lower ? g_ascii_strdown (addr->str, (gssize) addr->len) : g_strdup (addr->str));
  g_string_free (addr, TRUE);
}

/* from_split - the mailboxes of one From: value (groups flattened) */
static void
from_split (GPtrArray  *out,
            const char *value,
            gsize       len,
            gboolean    lower)
{
  gsize start = 0;
  int depth = 0;
  gboolean quoted = FALSE, angle = FALSE;

  for (gsize i = 0; i <= len; i++)
    {
      char c = i < len ? value[i] : ',';

      if (i < len && c == '\\' && i + 1 < len && (quoted || depth > 0))
        {
          i++;
          continue;
        }
      if (quoted)
        quoted = c != '"';
      else if (depth > 0)
        {
          if (c == '(')
            depth++;
          else if (c == ')')
            depth--;
        }
      else if (c == '"')
        quoted = TRUE;
      else if (c == '(')
        depth++;
      else if (c == '<')
        angle = TRUE;
      else if (c == '>')
        angle = FALSE;
      else if (!angle && c == ':')
        start = i + 1;   /* a group's display name */
      else if (!angle && (c == ',' || c == ';'))
        {
          from_add (out, value + start, i - start, lower);
          start = i + 1;
        }
      if (i == len && (quoted || depth > 0 || angle) && start < len)
        from_add (out, value + start, len - start, lower);
    }
}

GPtrArray *
pmx_smtpd_header_from (const guint8 *msg,
                       gsize         len)
{
  static const char *const from[] = { "From", NULL };

  return pmx_smtpd_header_addresses (msg, len, from, TRUE);
}

GPtrArray *
pmx_smtpd_header_addresses (const guint8      *msg,
                            gsize              len,
                            const char *const *names,
                            gboolean           lower)
{
  GPtrArray *out = g_ptr_array_new_with_free_func (g_free);
  GString *field = NULL;
  gsize i = 0;

  while (i < len)
    {
      gsize eol = i, next;

      while (eol < len && msg[eol] != '\n')
        eol++;
      next = eol < len ? eol + 1 : eol;
      if (eol > i && msg[eol - 1] == '\r')
        eol--;
      if (eol == i)
        break;   /* the empty line: end of the header section */
      if (msg[i] == ' ' || msg[i] == '\t')
        {
          if (field != NULL)
            g_string_append_len (field, (const char *) msg + i, (gssize) (eol - i));
        }
      else
        {
          if (field != NULL)
            {
              from_split (out, field->str, field->len, lower);
              g_string_free (field, TRUE);
              field = NULL;
            }
          for (gsize k = 0; names[k] != NULL && field == NULL; k++)
            {
              gsize nlen = strlen (names[k]);

              if (eol - i > nlen && msg[i + nlen] == ':'
                  && g_ascii_strncasecmp ((const char *) msg + i, names[k], nlen) == 0)
                field = g_string_new_len ((const char *) msg + i + nlen + 1, (gssize) (eol - i - nlen - 1));
            }
        }
      i = next;
    }
  if (field != NULL)
    {
      from_split (out, field->str, field->len, lower);
      g_string_free (field, TRUE);
    }
  return out;
}

gboolean
pmx_smtpd_sender_allowed (const char *const *patterns,
                          const char        *address)
{
  const char *at = strrchr (address, '@');

  for (gsize i = 0; patterns != NULL && patterns[i] != NULL; i++)
    {
      const char *p = patterns[i];

      if (strcmp (p, "*") == 0)
        return TRUE;
      if (address[0] == '\0')
        continue;
      if (p[0] == '@')
        {
          if (at != NULL && g_ascii_strcasecmp (at + 1, p + 1) == 0)
            return TRUE;
        }
      else if (g_ascii_strcasecmp (p, address) == 0)
        return TRUE;
    }
  return FALSE;
}

/* ======================================================================
 * Sessions.
 * ====================================================================== */

/* smtpd_ref - one more owner (an async operation in flight) */
static SmtpdSession *
smtpd_ref (SmtpdSession *s)
{
  s->ref++;
  return s;
}

/* smtpd_unref - drop an owner; the last frees the session */
static void
smtpd_unref (SmtpdSession *s)
{
  if (--s->ref > 0)
    return;
  g_clear_object (&s->stream);
  g_clear_object (&s->conn);
  g_clear_object (&s->cancel);
  g_free (s->peer);
  g_clear_object (&s->peer_addr);
  g_byte_array_unref (s->inbuf);
  g_free (s->chunk);
  g_string_free (s->outbuf, TRUE);
  g_free (s->helo);
  g_free (s->user);
  g_free (s->identity);
  pmx_smtpd_path_clear (&s->mail);
  g_ptr_array_unref (s->rcpts);
  pmx_smtpd_data_reader_clear (&s->data);
  if (s->auth_user != NULL)
    explicit_bzero (s->auth_user, strlen (s->auth_user));
  g_free (s->auth_user);
  g_free (s);
}

/* smtpd_reply - queue one reply line (with CRLF added) */
static void G_GNUC_PRINTF (2, 3)
smtpd_reply (SmtpdSession *s,
             const char   *format,
             ...)
{
  va_list ap;

  va_start (ap, format);
  g_string_append_vprintf (s->outbuf, format, ap);
  va_end (ap);
  g_string_append (s->outbuf, "\r\n");
}

/* smtpd_close - send what is queued, then close */
static void
smtpd_close (SmtpdSession *s)
{
  if (s->state == SMTPD_STATE_CLOSED)
    return;
  s->close_after_flush = TRUE;
  smtpd_set_state (s, SMTPD_STATE_CLOSING);
}

/* smtpd_error - a client error; too many of them end the session */
static void
smtpd_error (SmtpdSession *s)
{
  if (++s->errors >= SMTPD_MAX_ERRORS)
    {
      pmx_log_warning (NULL, NULL, "smtpd: client %s: too many errors, disconnecting", s->peer);
      smtpd_reply (s, "421 4.7.0 %s Error: too many errors, closing connection", s->smtpd->hostname);
      smtpd_close (s);
    }
}

/* smtpd_reset - forget the mail transaction */
static void
smtpd_reset (SmtpdSession *s)
{
  s->has_mail = FALSE;
  pmx_smtpd_path_clear (&s->mail);
  g_ptr_array_set_size (s->rcpts, 0);
  pmx_smtpd_data_reader_clear (&s->data);
}

/* smtpd_on_timer - the state's timer ran out */
static gboolean
smtpd_on_timer (gpointer user_data)
{
  SmtpdSession *s = user_data;

  switch (s->state)
    {
    case SMTPD_STATE_PREGREET:
      smtpd_reply (s, "220 %s ESMTP Postmux", s->smtpd->hostname);
      smtpd_set_state (s, SMTPD_STATE_COMMAND);
      if (s->inbuf->len > 0)
        smtpd_process (s);
      break;
    case SMTPD_STATE_CLOSING:
      smtpd_finish (s);   /* the client does not read its last reply */
      return G_SOURCE_CONTINUE;
    default:
      pmx_log_warning (NULL, NULL, "smtpd: client %s: timeout in state %s, disconnecting",
                       s->peer, smtpd_state_names[s->state]);
      smtpd_reply (s, "421 4.4.2 %s Error: timeout exceeded", s->smtpd->hostname);
      smtpd_close (s);
      break;
    }
  smtpd_pump (s);
  return G_SOURCE_CONTINUE;
}

static const char *const *smtpd_senders (SmtpdSession *s);

/* smtpd_timer_dispatch - GSourceFuncs.dispatch of the session timer: its
 * ready time came.  smtpd_arm() only moves a deadline later by recording
 * it (g_source_set_ready_time() wakes the main loop each time), so the
 * source may fire early: then it is set to the real deadline. */
static gboolean
smtpd_timer_dispatch (GSource     *source,
                      GSourceFunc  callback,
                      gpointer     user_data)
{
  SmtpdSession *s = user_data;

  if (s->deadline < 0 || g_source_get_time (source) < s->deadline)
    {
      g_source_set_ready_time (source, s->deadline);
      return G_SOURCE_CONTINUE;
    }
  s->deadline = -1;
  g_source_set_ready_time (source, -1);
  return callback (user_data);
}

/* smtpd_arm - (re)start the timer of the current state */
static void
smtpd_arm (SmtpdSession *s)
{
  gint64 usec;

  switch (s->state)
    {
    case SMTPD_STATE_PREGREET:
      /* Trusted networks are greeted at once, as postscreen does for its
       * allow-list: an app that opens a connection per message must not
       * wait a second each time. */
      usec = smtpd_senders (s) != NULL ? 0 : s->smtpd->pregreet_wait;
      break;
    case SMTPD_STATE_HANDSHAKE:
    case SMTPD_STATE_COMMAND:
    case SMTPD_STATE_AUTH:
      usec = s->smtpd->command_timeout;
      break;
    case SMTPD_STATE_DATA:
      usec = s->smtpd->data_timeout;
      break;
    case SMTPD_STATE_CLOSING:
      usec = SMTPD_CLOSE_GRACE_MS * 1000;
      break;
    case SMTPD_STATE_BUSY:
    case SMTPD_STATE_CLOSED:
    default:
      usec = -1;
      break;
    }
  s->deadline = usec < 0 ? -1 : g_get_monotonic_time () + usec;
  if (s->timer == NULL)
    {
      /* One source for the session's life; arming only moves its time. */
      static GSourceFuncs funcs = { .dispatch = smtpd_timer_dispatch };

      s->timer = g_source_new (&funcs, sizeof (GSource));
      g_source_set_callback (s->timer, smtpd_on_timer, s, NULL);
      g_source_set_ready_time (s->timer, s->deadline);
      g_source_attach (s->timer, NULL);
    }
  else if (s->deadline >= 0
           && (g_source_get_ready_time (s->timer) < 0 || s->deadline < g_source_get_ready_time (s->timer)))
    g_source_set_ready_time (s->timer, s->deadline);   /* earlier: move it now */
}

/* smtpd_set_state - the one place the state changes */
static void
smtpd_set_state (SmtpdSession *s,
                 SmtpdState    state)
{
  if (s->state == SMTPD_STATE_CLOSED)
    return;
  if (s->state == SMTPD_STATE_CLOSING && state != SMTPD_STATE_CLOSED)
    return;   /* once closing, nothing reopens the session */
  s->state = state;
  if (state == SMTPD_STATE_CLOSED)
    {
      smtpd_drop_source (&s->timer);
      g_clear_handle_id (&s->delay, g_source_remove);
      return;
    }
  smtpd_arm (s);
}

/* smtpd_closed - the socket's close finished */
static void
smtpd_closed (GObject      *source,
              GAsyncResult *res,
              gpointer      user_data)
{
  (void) g_io_stream_close_finish (G_IO_STREAM (source), res, NULL);
  smtpd_unref (user_data);
}

/* smtpd_finish - end the session now: close the socket, forget it */
static void
smtpd_finish (SmtpdSession *s)
{
  PmxSmtpd *smtpd = s->smtpd;
  guint n;

  if (s->state == SMTPD_STATE_CLOSED)
    return;
  smtpd_set_state (s, SMTPD_STATE_CLOSED);
  smtpd_stop_waiting (s);
  g_cancellable_cancel (s->cancel);
  /* Closing the base connection, not the TLS one: no close_notify that
   * could wait on a client that stopped reading. */
  g_io_stream_close_async (G_IO_STREAM (s->conn), G_PRIORITY_DEFAULT, NULL, smtpd_closed, smtpd_ref (s));
  n = GPOINTER_TO_UINT (g_hash_table_lookup (smtpd->per_client, s->peer));
  if (n <= 1)
    g_hash_table_remove (smtpd->per_client, s->peer);
  else
    g_hash_table_insert (smtpd->per_client, g_strdup (s->peer), GUINT_TO_POINTER (n - 1));
  if (g_hash_table_steal (smtpd->sessions, s))
    smtpd_unref (s);
}

static void smtpd_handshake (SmtpdSession *s);

/* smtpd_in_ready - the client's bytes can be read: the input source stays
 * while the session reads (each source added or removed wakes the main
 * loop once more: GLib signals every change of its poll set) */
static gboolean
smtpd_in_ready (gpointer user_data)
{
  smtpd_pump (user_data);
  return G_SOURCE_CONTINUE;
}

/* smtpd_out_ready - room to write again: the output source goes */
static gboolean
smtpd_out_ready (gpointer user_data)
{
  SmtpdSession *s = user_data;

  g_clear_pointer (&s->out_source, g_source_unref);
  smtpd_pump (s);
  return G_SOURCE_REMOVE;
}

/* smtpd_pollable_in_ready, smtpd_pollable_out_ready - the same as
 * GPollableSourceFuncs (TLS streams) */
static gboolean
smtpd_pollable_in_ready (GObject  *stream,
                         gpointer  user_data)
{
  return smtpd_in_ready (user_data);
}

static gboolean
smtpd_pollable_out_ready (GObject  *stream,
                          gpointer  user_data)
{
  return smtpd_out_ready (user_data);
}

/* smtpd_fd_dispatch - GSourceFuncs.dispatch of a source watching the
 * socket's fd: GLib itself makes it ready when the fd is */
static gboolean
smtpd_fd_dispatch (GSource     *source,
                   GSourceFunc  callback,
                   gpointer     user_data)
{
  return callback (user_data);
}

/* smtpd_wait_for - a source that runs smtpd_pump() when the session can
 * read (@input) or write.  Plain TCP: a source on the socket's fd (GIO's
 * pollable and socket sources wake the loop more often: a child source,
 * a ready time reset after each dispatch).  TLS: the stream's pollable
 * source, which also knows about records already buffered. */
static GSource *
smtpd_wait_for (SmtpdSession *s,
                gboolean      input)
{
  GSource *source;

  if (s->stream == G_IO_STREAM (s->conn))
    {
      static GSourceFuncs funcs = { .dispatch = smtpd_fd_dispatch };

      source = g_source_new (&funcs, sizeof (GSource));
      g_source_add_unix_fd (source, g_socket_get_fd (g_socket_connection_get_socket (s->conn)),
                            input ? G_IO_IN | G_IO_HUP | G_IO_ERR : G_IO_OUT | G_IO_HUP | G_IO_ERR);
      g_source_set_callback (source, input ? smtpd_in_ready : smtpd_out_ready, smtpd_ref (s),
                             (GDestroyNotify) smtpd_unref);
    }
  else if (input)
    {
      source = g_pollable_input_stream_create_source (
          G_POLLABLE_INPUT_STREAM (g_io_stream_get_input_stream (s->stream)), NULL);
      g_source_set_callback (source, G_SOURCE_FUNC (smtpd_pollable_in_ready), smtpd_ref (s),
                             (GDestroyNotify) smtpd_unref);
    }
  else
    {
      source = g_pollable_output_stream_create_source (
          G_POLLABLE_OUTPUT_STREAM (g_io_stream_get_output_stream (s->stream)), NULL);
      g_source_set_callback (source, G_SOURCE_FUNC (smtpd_pollable_out_ready), smtpd_ref (s),
                             (GDestroyNotify) smtpd_unref);
    }
  /* GLib blocks a source that cannot recurse around each dispatch by
   * taking its fd out of the poll set and back, and each change wakes the
   * loop once more.  Nothing here runs the main loop from inside a
   * callback, so recursion cannot happen. */
  g_source_set_can_recurse (source, TRUE);
  g_source_attach (source, NULL);
  return source;
}

/* smtpd_stop_waiting - drop the sources (and their references) */
static void
smtpd_stop_waiting (SmtpdSession *s)
{
  smtpd_drop_source (&s->in_source);
  smtpd_drop_source (&s->out_source);
}

/* smtpd_wants_input - whether to read from the client now: in the states
 * that take input, and while a commit or password check runs (bytes a
 * client pipelines then wait in inbuf), with room in inbuf and no reply
 * stuck behind a client that does not read */
static gboolean
smtpd_wants_input (SmtpdSession *s)
{
  return s->inbuf->len < 4 * SMTPD_READ_CHUNK && s->out_source == NULL && !s->client_eof
         && (s->state == SMTPD_STATE_PREGREET || s->state == SMTPD_STATE_COMMAND
             || s->state == SMTPD_STATE_AUTH || s->state == SMTPD_STATE_DATA
             || s->state == SMTPD_STATE_BUSY);
}

/* smtpd_pump - write what is queued, then close, start TLS, or read and
 * process what the client sent, for as long as the socket is ready */
static void
smtpd_pump (SmtpdSession *s)
{
  guint reads = 0;

  smtpd_ref (s);
  while (s->state != SMTPD_STATE_CLOSED)
    {
      g_autoptr(GError) error = NULL;
      gssize n;

      if (s->out_source != NULL)
        {
          /* The rest waits for room; no reading meanwhile, or a client
           * that sends but does not read would grow outbuf without end. */
          smtpd_drop_source (&s->in_source);
          break;
        }
      if (s->out_done < s->outbuf->len)
        {
          GPollableOutputStream *out = G_POLLABLE_OUTPUT_STREAM (g_io_stream_get_output_stream (s->stream));

          n = g_pollable_output_stream_write_nonblocking (out, s->outbuf->str + s->out_done,
                                                          s->outbuf->len - s->out_done, NULL, &error);
          if (n > 0)
            {
              s->out_done += (gsize) n;
              if (s->out_done == s->outbuf->len)
                {
                  g_string_truncate (s->outbuf, 0);
                  s->out_done = 0;
                }
            }
          else if (g_error_matches (error, G_IO_ERROR, G_IO_ERROR_WOULD_BLOCK))
            s->out_source = smtpd_wait_for (s, FALSE);
          else
            {
              if (s->state != SMTPD_STATE_CLOSED)
                pmx_log_info (NULL, NULL, "smtpd: client %s: write failed: %s", s->peer,
                              error != NULL ? error->message : "nothing written");
              smtpd_finish (s);
            }
          continue;
        }
      if (s->close_after_flush)
        {
          smtpd_finish (s);
          break;
        }
      if (s->starttls_after_flush)
        {
          s->starttls_after_flush = FALSE;
          smtpd_handshake (s);
          break;
        }
      if (s->client_eof && s->state != SMTPD_STATE_BUSY)
        {
          /* Its last replies are out: now it is gone. */
          pmx_log_info (NULL, NULL, "smtpd: client %s: disconnected in state %s", s->peer,
                        smtpd_state_names[s->state]);
          smtpd_finish (s);
          break;
        }
      if (!smtpd_wants_input (s))
        {
          smtpd_drop_source (&s->in_source);
          break;
        }
      {
        GPollableInputStream *in = G_POLLABLE_INPUT_STREAM (g_io_stream_get_input_stream (s->stream));

        if (reads++ == SMTPD_PUMP_READS)
          {
            /* Other sessions first: the source calls again if more is there. */
            if (s->in_source == NULL)
              s->in_source = smtpd_wait_for (s, TRUE);
            break;
          }
        n = g_pollable_input_stream_read_nonblocking (in, s->chunk, SMTPD_READ_CHUNK, NULL, &error);
        if (n > 0)
          {
            g_byte_array_append (s->inbuf, s->chunk, (guint) n);
            if (s->state == SMTPD_STATE_COMMAND || s->state == SMTPD_STATE_AUTH || s->state == SMTPD_STATE_DATA)
              smtpd_arm (s);   /* the timeouts count from the last bytes */
            smtpd_process (s);
          }
        else if (n < 0 && g_error_matches (error, G_IO_ERROR, G_IO_ERROR_WOULD_BLOCK))
          {
            if (s->in_source == NULL)
              s->in_source = smtpd_wait_for (s, TRUE);
            break;
          }
        else if (n == 0 && s->state == SMTPD_STATE_BUSY)
          {
            /* A client may send its last command and half-close: it still
             * gets the answer the commit or check it waits for. */
            s->client_eof = TRUE;
            smtpd_drop_source (&s->in_source);
            break;
          }
        else
          {
            if (s->state != SMTPD_STATE_CLOSING)
              pmx_log_info (NULL, NULL, "smtpd: client %s: %s in state %s", s->peer,
                            n == 0 ? "disconnected" : error->message, smtpd_state_names[s->state]);
            smtpd_finish (s);
          }
      }
    }
  smtpd_unref (s);
}

/* smtpd_consume - drop @n bytes from the front of the input buffer */
static void
smtpd_consume (SmtpdSession *s,
               gsize         n)
{
  g_byte_array_remove_range (s->inbuf, 0, (guint) n);
}

/* smtpd_senders - the sender patterns of the client's identity, or NULL */
static const char *const *
smtpd_senders (SmtpdSession *s)
{
  GInetAddress *addr;
  g_autoptr(GInetAddress) v4 = NULL;

  if (s->user != NULL)
    {
      SmtpdUser *u = g_hash_table_lookup (s->smtpd->users, s->user);

      return u != NULL ? (const char *const *) u->senders : NULL;
    }
  addr = s->peer_addr;
  if (g_inet_address_get_family (addr) == G_SOCKET_FAMILY_IPV6)
    {
      const guint8 *b = g_inet_address_to_bytes (addr);
      static const guint8 mapped[12] = { 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff };

      if (memcmp (b, mapped, 12) == 0)
        addr = v4 = g_inet_address_new_from_bytes (b + 12, G_SOCKET_FAMILY_IPV4);
    }
  for (guint i = 0; i < s->smtpd->networks->len; i++)
    {
      SmtpdNetwork *n = g_ptr_array_index (s->smtpd->networks, i);

      if (g_inet_address_mask_get_family (n->mask) == g_inet_address_get_family (addr)
          && g_inet_address_mask_matches (n->mask, addr))
        return (const char *const *) n->senders;
    }
  return NULL;
}

/* smtpd_auth_allowed - may AUTH be used on this connection now */
static gboolean
smtpd_auth_allowed (SmtpdSession *s)
{
  return s->tls || (s->smtpd->allow_plaintext_auth && s->loopback);
}

/* smtpd_cmd_ehlo - HELO and EHLO */
static void
smtpd_cmd_ehlo (SmtpdSession *s,
                gboolean      esmtp,
                const char   *arg)
{
  PmxSmtpd *smtpd = s->smtpd;

  if (arg[0] == '\0' || strchr (arg, ' ') != NULL)
    {
      smtpd_reply (s, "501 5.5.4 Syntax: %s hostname", esmtp ? "EHLO" : "HELO");
      smtpd_error (s);
      return;
    }
  smtpd_reset (s);
  g_free (s->helo);
  s->helo = g_strdup (arg);
  s->esmtp = esmtp;
  if (!esmtp)
    {
      smtpd_reply (s, "250 %s", smtpd->hostname);
      return;
    }
  smtpd_reply (s, "250-%s", smtpd->hostname);
  smtpd_reply (s, "250-SIZE %" G_GSIZE_FORMAT, smtpd->max_size);
  smtpd_reply (s, "250-PIPELINING");
  smtpd_reply (s, "250-8BITMIME");
  smtpd_reply (s, "250-ENHANCEDSTATUSCODES");
  if (smtpd->cert != NULL && !s->tls)
    smtpd_reply (s, "250-STARTTLS");
  if (g_hash_table_size (smtpd->users) > 0 && smtpd_auth_allowed (s))
    smtpd_reply (s, "250-AUTH PLAIN LOGIN");
  smtpd_reply (s, "250 SMTPUTF8");
}

/* smtpd_cmd_mail - MAIL FROM */
static void
smtpd_cmd_mail (SmtpdSession *s,
                const char   *arg)
{
  const char *const *senders;
  const char *reply;

  if (s->helo == NULL)
    {
      smtpd_reply (s, "503 5.5.1 Send HELO or EHLO first");
      smtpd_error (s);
      return;
    }
  if (s->has_mail)
    {
      smtpd_reply (s, "503 5.5.1 Nested MAIL command");
      smtpd_error (s);
      return;
    }
  senders = smtpd_senders (s);
  if (senders == NULL)
    {
      pmx_log_warning (NULL, NULL, "smtpd: client %s: refused MAIL: not authenticated and not in auth.networks", s->peer);
      smtpd_reply (s, "530 5.7.0 Authentication required");
      smtpd_error (s);
      return;
    }
  reply = pmx_smtpd_parse_path (arg, "FROM:", TRUE, &s->mail);
  if (reply != NULL)
    {
      g_string_append (s->outbuf, reply);
      smtpd_error (s);
      return;
    }
  if (s->mail.has_size && s->mail.size > s->smtpd->max_size)
    {
      smtpd_reply (s, "552 5.3.4 Message size exceeds fixed maximum message size (%" G_GSIZE_FORMAT ")",
                   s->smtpd->max_size);
      pmx_smtpd_path_clear (&s->mail);
      return;
    }
  if (!pmx_smtpd_sender_allowed (senders, s->mail.address))
    {
      pmx_log_warning (NULL, NULL, "smtpd: client %s (%s): refused sender <%s>: not in its senders",
                       s->peer, s->identity, s->mail.address);
      smtpd_reply (s, "550 5.7.1 <%s>: Sender address not allowed for %s", s->mail.address, s->identity);
      pmx_smtpd_path_clear (&s->mail);
      smtpd_error (s);
      return;
    }
  s->has_mail = TRUE;
  smtpd_reply (s, "250 2.1.0 Ok");
}

/* smtpd_cmd_rcpt - RCPT TO */
static void
smtpd_cmd_rcpt (SmtpdSession *s,
                const char   *arg)
{
  PmxSmtpdPath path;
  const char *reply;

  if (!s->has_mail)
    {
      smtpd_reply (s, "503 5.5.1 Need MAIL before RCPT");
      smtpd_error (s);
      return;
    }
  if (s->rcpts->len >= s->smtpd->max_rcpts)
    {
      smtpd_reply (s, "452 4.5.3 Too many recipients");
      return;
    }
  reply = pmx_smtpd_parse_path (arg, "TO:", FALSE, &path);
  if (reply != NULL)
    {
      g_string_append (s->outbuf, reply);
      smtpd_error (s);
      return;
    }
  if (path.utf8 && !s->mail.smtputf8)
    {
      smtpd_reply (s, "553 5.6.7 Non-ASCII recipient needs SMTPUTF8 in MAIL FROM");
      pmx_smtpd_path_clear (&path);
      return;
    }
  g_ptr_array_add (s->rcpts, g_steal_pointer (&path.address));
  pmx_smtpd_path_clear (&path);
  smtpd_reply (s, "250 2.1.5 Ok");
}

/* smtpd_submitted - the queue's answer for a message */
static void
smtpd_submitted (GObject      *source,
                 GAsyncResult *res,
                 gpointer      user_data)
{
  SmtpdSession *s = user_data;
  g_autoptr(GError) error = NULL;
  gboolean duplicate = FALSE;
  g_autofree char *id = pmx_queue_submit_finish (s->queue, res, &duplicate, &error);

  if (s->state == SMTPD_STATE_CLOSED)
    {
      /* The client left before the answer; a queued message stays queued. */
      if (id != NULL)
        pmx_log_info (id, NULL, "smtpd: from=<%s>, client=%s: queued, but the client left before the 250",
                      s->mail.address, s->peer);
      smtpd_unref (s);
      return;
    }
  if (id != NULL)
    {
      /* The client waits for nothing but this: the 250 goes out first
       * (the session stays BUSY, so the pump only writes and buffers),
       * then the log line and the dispatcher's wake-up. */
      smtpd_reply (s, "250 2.0.0 Ok: queued as %s", id);
      smtpd_pump (s);
      pmx_log_info (id, NULL, "smtpd: from=<%s>, nrcpt=%u, size=%" G_GSIZE_FORMAT ", client=%s, ingress=%s",
                    s->mail.address, s->rcpts->len, s->data.size, s->peer, s->identity);
      if (s->smtpd->wake != NULL)
        s->smtpd->wake (s->smtpd->wake_data);
    }
  else if (g_error_matches (error, PMX_QUEUE_ERROR, PMX_QUEUE_ERROR_FULL))
    {
      pmx_log_warning (NULL, NULL, "smtpd: client %s: message not queued, the queue's disk is full: %s", s->peer, error->message);
      smtpd_reply (s, "452 4.3.1 Insufficient system storage, try again later");
    }
  else
    {
      pmx_log_warning (NULL, NULL, "smtpd: client %s: message not queued: %s", s->peer, error->message);
      smtpd_reply (s, "451 4.3.0 Queue temporarily unavailable, try again later");
    }
  smtpd_reset (s);
  smtpd_set_state (s, SMTPD_STATE_COMMAND);
  if (s->state == SMTPD_STATE_COMMAND)
    smtpd_process (s);
  smtpd_pump (s);
  smtpd_unref (s);
}

/* smtpd_data_done - the end of data arrived: check, then queue */
static void
smtpd_data_done (SmtpdSession *s)
{
  PmxSmtpdDataReader *r = &s->data;
  const char *const *senders = smtpd_senders (s);
  g_autoptr(GPtrArray) from = NULL;
  g_autoptr(GBytes) bytes = NULL;
  PmxSubmission sub = { 0, };

  smtpd_set_state (s, SMTPD_STATE_COMMAND);
  if (r->flags & PMX_SMTPD_DATA_TOO_BIG)
    {
      pmx_log_warning (NULL, NULL, "smtpd: client %s: refused message over %" G_GSIZE_FORMAT " bytes", s->peer, s->smtpd->max_size);
      smtpd_reply (s, "552 5.3.4 Message size exceeds fixed maximum message size (%" G_GSIZE_FORMAT ")", s->smtpd->max_size);
    }
  else if (r->flags & (PMX_SMTPD_DATA_BARE_LF | PMX_SMTPD_DATA_BARE_CR))
    {
      pmx_log_warning (NULL, NULL, "smtpd: client %s: refused message with a bare %s in line %u",
                       s->peer, (r->flags & PMX_SMTPD_DATA_BARE_LF) ? "LF" : "CR", r->bad_line);
      smtpd_reply (s, "550 5.6.11 Message refused: bare %s in line %u; SMTP lines end with CRLF",
                   (r->flags & PMX_SMTPD_DATA_BARE_LF) ? "LF" : "CR", r->bad_line);
    }
  else if (r->flags & PMX_SMTPD_DATA_LONG_LINE)
    {
      pmx_log_warning (NULL, NULL, "smtpd: client %s: refused message with line %u over 1000 octets", s->peer, r->bad_line);
      smtpd_reply (s, "550 5.6.0 Message refused: line %u is longer than 1000 octets", r->bad_line);
    }
  else if (r->out->len == 0)
    smtpd_reply (s, "554 5.6.0 Message refused: empty message");
  else
    {
      from = pmx_smtpd_header_from (r->out->data, r->out->len);
      for (guint i = 0; i < from->len; i++)
        {
          const char *a = g_ptr_array_index (from, i);

          if (!pmx_smtpd_sender_allowed (senders, a))
            {
              pmx_log_warning (NULL, NULL, "smtpd: client %s (%s): refused From: <%s>: not in its senders",
                               s->peer, s->identity, a);
              smtpd_reply (s, "550 5.7.1 <%s>: From: header address not allowed for %s", a, s->identity);
              smtpd_reset (s);
              return;
            }
        }
      bytes = g_byte_array_free_to_bytes (g_steal_pointer (&r->out));
      sub.ingress = s->identity;
      sub.sender = s->mail.address;
      sub.recipients = (const char *const *) s->rcpts->pdata;
      sub.n_recipients = s->rcpts->len;
      sub.data = bytes;
      smtpd_set_state (s, SMTPD_STATE_BUSY);
      pmx_queue_submit_async (s->queue, &sub, NULL, smtpd_submitted, smtpd_ref (s));
      return;
    }
  smtpd_reset (s);
}

/* ---- AUTH ---- */

typedef struct {
  char *hash;       /* the user's, or a dummy so unknown users cost the same */
  char *password;
} SmtpdVerify;

/* verify_free - wipe and free */
static void
verify_free (gpointer data)
{
  SmtpdVerify *v = data;

  if (v->password != NULL)
    explicit_bzero (v->password, strlen (v->password));
  g_free (v->password);
  g_free (v->hash);
  g_free (v);
}

/* smtpd_verify_thread - crypt_r on a worker thread: it costs milliseconds */
static void
smtpd_verify_thread (GTask        *task,
                     gpointer      source,
                     gpointer      task_data,
                     GCancellable *cancellable)
{
  SmtpdVerify *v = task_data;
  struct crypt_data *cd = g_new0 (struct crypt_data, 1);
  const char *got = crypt_r (v->password, v->hash, cd);
  gboolean ok = FALSE;

  if (got != NULL && got[0] != '*' && strlen (got) == strlen (v->hash))
    {
      guchar diff = 0;

      for (gsize i = 0; got[i] != '\0'; i++)
        diff |= (guchar) (got[i] ^ v->hash[i]);
      ok = diff == 0;
    }
  explicit_bzero (cd, sizeof *cd);
  g_free (cd);
  g_task_return_boolean (task, ok);
}

/* smtpd_auth_fail_reply - after the delay: 535, and close after a few */
static gboolean
smtpd_auth_fail_reply (gpointer user_data)
{
  SmtpdSession *s = user_data;

  s->delay = 0;
  smtpd_reply (s, "535 5.7.8 Authentication credentials invalid");
  smtpd_set_state (s, SMTPD_STATE_COMMAND);
  if (s->auth_failures >= SMTPD_MAX_AUTH_FAILS)
    {
      pmx_log_warning (NULL, NULL, "smtpd: client %s: %u failed AUTH attempts, disconnecting", s->peer, s->auth_failures);
      smtpd_close (s);
    }
  else
    smtpd_process (s);
  smtpd_pump (s);
  return G_SOURCE_REMOVE;
}

/* smtpd_verified - the password check finished */
static void
smtpd_verified (GObject      *source,
                GAsyncResult *res,
                gpointer      user_data)
{
  SmtpdSession *s = user_data;
  PmxSmtpd *smtpd = s->smtpd;
  gboolean ok = g_task_propagate_boolean (G_TASK (res), NULL);
  g_autofree char *user = g_steal_pointer (&s->auth_user);

  if (s->state == SMTPD_STATE_CLOSED)
    ;
  else if (ok)
    {
      s->user = g_steal_pointer (&user);
      g_free (s->identity);
      s->identity = g_strdup_printf ("smtp:%s", s->user);
      g_hash_table_remove (smtpd->auth_failures, s->peer);
      pmx_log_info (NULL, NULL, "smtpd: client %s: authenticated as %s", s->peer, s->user);
      smtpd_reply (s, "235 2.7.0 Authentication successful");
      smtpd_set_state (s, SMTPD_STATE_COMMAND);
      smtpd_process (s);
      smtpd_pump (s);
    }
  else
    {
      SmtpdFailures *f = g_hash_table_lookup (smtpd->auth_failures, s->peer);
      gint64 now = g_get_monotonic_time ();
      guint delay;

      if (f == NULL || now - f->last > SMTPD_AUTH_FORGET)
        {
          f = g_new0 (SmtpdFailures, 1);
          g_hash_table_insert (smtpd->auth_failures, g_strdup (s->peer), f);
        }
      f->count++;
      f->last = now;
      s->auth_failures++;
      delay = f->count >= 5 ? SMTPD_AUTH_DELAY_CAP : MIN (1u << (f->count - 1), SMTPD_AUTH_DELAY_CAP);
      pmx_log_warning (NULL, NULL, "smtpd: client %s: AUTH failed for user \"%s\" (failure %u from this client; answering in %u s)",
                       s->peer, user != NULL ? user : "", f->count, delay);
      /* BUSY has no timer of its own; the delay answers, then COMMAND arms one. */
      s->delay = g_timeout_add (delay * 1000, smtpd_auth_fail_reply, s);  /* ms: the seconds form may fire early */
    }
  if (user != NULL)
    explicit_bzero (user, strlen (user));
  smtpd_unref (s);
}

/* smtpd_auth_check - check @user/@password on a thread */
static void
smtpd_auth_check (SmtpdSession *s,
                  const char   *user,
                  const char   *password)
{
  SmtpdUser *u = g_hash_table_lookup (s->smtpd->users, user);
  SmtpdVerify *v = g_new0 (SmtpdVerify, 1);
  g_autoptr(GTask) task = g_task_new (NULL, s->cancel, smtpd_verified, smtpd_ref (s));

  g_free (s->auth_user);
  s->auth_user = g_strdup (user);
  v->hash = g_strdup (u != NULL ? u->hash
                      : "$6$Zx3c1bJ2mJ0lqGgT$zP8vJdmCr5uF4lqz1/0T6aW3b9wN5oQdV1s2L3x4y5z6A7B8C9D0E1F2G3H4I5J6K7L8M9N0O1P2Q3R4S5T6U7");
  v->password = g_strdup (password);
  g_task_set_check_cancellable (task, FALSE);
  g_task_set_task_data (task, v, verify_free);
  smtpd_set_state (s, SMTPD_STATE_BUSY);
  g_task_run_in_thread (task, smtpd_verify_thread);
}

/* smtpd_b64 - strict base64 decode; NULL when malformed */
static guint8 *
smtpd_b64 (const char *text,
           gsize      *out_len)
{
  gsize len = strlen (text);

  if (len % 4 != 0)
    return NULL;
  for (gsize i = 0; i < len; i++)
    if (!g_ascii_isalnum (text[i]) && text[i] != '+' && text[i] != '/'
        && !(text[i] == '=' && i >= len - 2 && (i == len - 1 || text[len - 1] == '=')))
      return NULL;
  if (len == 0)
    {
      *out_len = 0;
      return (guint8 *) g_strdup ("");
    }
  return g_base64_decode (text, out_len);
}

/* smtpd_auth_response - one client response (initial or continuation) */
static void
smtpd_auth_response (SmtpdSession *s,
                     const char   *text)
{
  gsize len = 0;
  g_autofree guint8 *raw = NULL;
  char *z;

  if (strcmp (text, "*") == 0)
    {
      g_clear_pointer (&s->auth_user, g_free);
      smtpd_reply (s, "501 5.0.0 Authentication cancelled");
      smtpd_set_state (s, SMTPD_STATE_COMMAND);
      return;
    }
  raw = smtpd_b64 (text, &len);
  if (raw == NULL)
    {
      g_clear_pointer (&s->auth_user, g_free);
      smtpd_reply (s, "501 5.5.2 Cannot decode the response (base64)");
      smtpd_set_state (s, SMTPD_STATE_COMMAND);
      smtpd_error (s);
      return;
    }
  z = g_malloc (len + 1);
  memcpy (z, raw, len);
  z[len] = '\0';
  explicit_bzero (raw, len);

  if (s->mech == SMTPD_MECH_PLAIN)
    {
      /* authzid NUL authcid NUL passwd (RFC 4616) */
      const char *authzid = z;
      const char *authcid = memchr (z, '\0', len) != NULL ? z + strlen (z) + 1 : NULL;
      const char *passwd = NULL;

      if (authcid != NULL && authcid < z + len)
        passwd = authcid + strlen (authcid) + 1;
      if (passwd == NULL || passwd > z + len || passwd + strlen (passwd) != z + len
          || (authzid[0] != '\0' && strcmp (authzid, authcid) != 0))
        {
          smtpd_reply (s, "501 5.5.2 Malformed PLAIN response");
          smtpd_set_state (s, SMTPD_STATE_COMMAND);
          smtpd_error (s);
        }
      else
        smtpd_auth_check (s, authcid, passwd);
    }
  else if (s->auth_step == 1)
    {
      g_free (s->auth_user);
      s->auth_user = g_strndup (z, len);
      s->auth_step = 2;
      smtpd_reply (s, "334 UGFzc3dvcmQ6");
      smtpd_set_state (s, SMTPD_STATE_AUTH);
    }
  else
    {
      g_autofree char *user = g_steal_pointer (&s->auth_user);

      if (strlen (z) != len)
        {
          smtpd_reply (s, "501 5.5.2 Malformed LOGIN response");
          smtpd_set_state (s, SMTPD_STATE_COMMAND);
          smtpd_error (s);
        }
      else
        smtpd_auth_check (s, user, z);
    }
  explicit_bzero (z, len);
  g_free (z);
}

/* smtpd_cmd_auth - AUTH mechanism [initial-response] */
static void
smtpd_cmd_auth (SmtpdSession *s,
                const char   *arg)
{
  g_auto(GStrv) parts = g_strsplit (arg, " ", 2);

  if (s->user != NULL || s->has_mail)
    {
      smtpd_reply (s, "503 5.5.1 %s", s->user != NULL ? "Already authenticated" : "AUTH not allowed during a mail transaction");
      smtpd_error (s);
      return;
    }
  if (s->helo == NULL || !s->esmtp)
    {
      smtpd_reply (s, "503 5.5.1 Send EHLO first");
      smtpd_error (s);
      return;
    }
  if (!smtpd_auth_allowed (s))
    {
      pmx_log_warning (NULL, NULL, "smtpd: client %s: refused AUTH without TLS", s->peer);
      smtpd_reply (s, "538 5.7.11 Encryption required for requested authentication mechanism");
      smtpd_error (s);
      return;
    }
  if (g_hash_table_size (s->smtpd->users) == 0)
    {
      smtpd_reply (s, "503 5.5.1 AUTH not available: no SMTP users are configured");
      smtpd_error (s);
      return;
    }
  if (parts[0] == NULL || parts[0][0] == '\0')
    {
      smtpd_reply (s, "501 5.5.4 Syntax: AUTH mechanism [initial-response]");
      smtpd_error (s);
      return;
    }
  if (g_ascii_strcasecmp (parts[0], "PLAIN") == 0)
    s->mech = SMTPD_MECH_PLAIN;
  else if (g_ascii_strcasecmp (parts[0], "LOGIN") == 0)
    s->mech = SMTPD_MECH_LOGIN;
  else
    {
      smtpd_reply (s, "504 5.5.4 Unrecognized authentication mechanism: use PLAIN or LOGIN");
      smtpd_error (s);
      return;
    }
  s->auth_step = 1;
  if (parts[1] != NULL)
    {
      /* "=" is an empty initial response (RFC 4954 section 4). */
      smtpd_auth_response (s, strcmp (parts[1], "=") == 0 ? "" : parts[1]);
      explicit_bzero (parts[1], strlen (parts[1]));
      return;
    }
  smtpd_reply (s, s->mech == SMTPD_MECH_PLAIN ? "334 " : "334 VXNlcm5hbWU6");
  smtpd_set_state (s, SMTPD_STATE_AUTH);
}

/* ---- TLS ---- */

/* smtpd_handshaken - the TLS handshake finished */
static void
smtpd_handshaken (GObject      *source,
                  GAsyncResult *res,
                  gpointer      user_data)
{
  SmtpdSession *s = user_data;
  g_autoptr(GError) error = NULL;

  if (!g_tls_connection_handshake_finish (G_TLS_CONNECTION (source), res, &error))
    {
      if (s->state != SMTPD_STATE_CLOSED)
        pmx_log_warning (NULL, NULL, "smtpd: client %s: TLS handshake failed: %s", s->peer, error->message);
      smtpd_finish (s);
    }
  else if (s->state != SMTPD_STATE_CLOSED)
    {
      s->tls = TRUE;
      /* RFC 3207 section 4.2: forget everything learnt before TLS. */
      g_clear_pointer (&s->helo, g_free);
      s->esmtp = FALSE;
      smtpd_reset (s);
      if (s->implicit_greeting)
        {
          s->implicit_greeting = FALSE;
          smtpd_set_state (s, SMTPD_STATE_PREGREET);
        }
      else
        smtpd_set_state (s, SMTPD_STATE_COMMAND);
      smtpd_pump (s);
    }
  smtpd_unref (s);
}

/* smtpd_handshake - wrap the connection in TLS and shake hands */
static void
smtpd_handshake (SmtpdSession *s)
{
  g_autoptr(GError) error = NULL;
  GIOStream *tls = g_tls_server_connection_new (G_IO_STREAM (s->conn), s->smtpd->cert, &error);

  if (tls == NULL)
    {
      pmx_log_warning (NULL, NULL, "smtpd: client %s: cannot start TLS: %s", s->peer, error->message);
      smtpd_finish (s);
      return;
    }
  g_object_set (tls, "authentication-mode", G_TLS_AUTHENTICATION_NONE, NULL);
  smtpd_stop_waiting (s);   /* they wait on the plain streams */
  g_clear_object (&s->stream);
  s->stream = tls;
  smtpd_set_state (s, SMTPD_STATE_HANDSHAKE);
  g_tls_connection_handshake_async (G_TLS_CONNECTION (tls), G_PRIORITY_DEFAULT, s->cancel,
                                    smtpd_handshaken, smtpd_ref (s));
}

/* smtpd_cmd_starttls - STARTTLS */
static void
smtpd_cmd_starttls (SmtpdSession *s,
                    const char   *arg)
{
  if (arg[0] != '\0')
    {
      smtpd_reply (s, "501 5.5.4 Syntax: STARTTLS");
      smtpd_error (s);
    }
  else if (s->smtpd->cert == NULL)
    smtpd_reply (s, "454 4.7.0 TLS not available");
  else if (s->tls)
    {
      smtpd_reply (s, "503 5.5.1 TLS already active");
      smtpd_error (s);
    }
  else if (s->inbuf->len > 0)
    {
      /* Plaintext sent after STARTTLS would be taken as if it came over
       * TLS (CVE-2011-0411): refuse and drop. */
      pmx_log_warning (NULL, NULL, "smtpd: client %s: bytes pipelined after STARTTLS, disconnecting", s->peer);
      smtpd_reply (s, "554 5.5.0 Error: commands sent after STARTTLS before the handshake");
      smtpd_close (s);
    }
  else
    {
      smtpd_reply (s, "220 2.0.0 Ready to start TLS");
      s->starttls_after_flush = TRUE;
      smtpd_set_state (s, SMTPD_STATE_HANDSHAKE);
    }
}

/* ---- the command loop ---- */

/* smtpd_command - act on one command line */
static void
smtpd_command (SmtpdSession *s,
               const char   *line,
               gsize         len)
{
  const char *arg;
  gboolean bad;
  PmxSmtpdVerb verb = pmx_smtpd_parse_verb (line, len, &arg, &bad);

  if (bad)
    {
      pmx_log_warning (NULL, NULL, "smtpd: client %s: control character in a command, disconnecting", s->peer);
      smtpd_reply (s, "500 5.5.2 Error: control characters in a command line");
      smtpd_close (s);
      return;
    }
  if (s->smtpd->shutting_down && verb != PMX_SMTPD_CMD_QUIT)
    {
      smtpd_reply (s, "421 4.3.2 %s shutting down", s->smtpd->hostname);
      smtpd_close (s);
      return;
    }
  /* RFC 2920: only a client that was offered PIPELINING may send ahead. */
  if (!s->esmtp && s->inbuf->len > 0 && verb != PMX_SMTPD_CMD_QUIT)
    {
      pmx_log_warning (NULL, NULL, "smtpd: client %s: commands sent ahead without PIPELINING, disconnecting", s->peer);
      smtpd_reply (s, "554 5.5.0 Error: SMTP protocol synchronization (pipelining was not offered)");
      smtpd_close (s);
      return;
    }
  switch (verb)
    {
    case PMX_SMTPD_CMD_HELO:
    case PMX_SMTPD_CMD_EHLO:
      smtpd_cmd_ehlo (s, verb == PMX_SMTPD_CMD_EHLO, arg);
      break;
    case PMX_SMTPD_CMD_STARTTLS:
      smtpd_cmd_starttls (s, arg);
      break;
    case PMX_SMTPD_CMD_AUTH:
      smtpd_cmd_auth (s, arg);
      break;
    case PMX_SMTPD_CMD_MAIL:
      smtpd_cmd_mail (s, arg);
      break;
    case PMX_SMTPD_CMD_RCPT:
      smtpd_cmd_rcpt (s, arg);
      break;
    case PMX_SMTPD_CMD_DATA:
      if (arg[0] != '\0')
        {
          smtpd_reply (s, "501 5.5.4 Syntax: DATA");
          smtpd_error (s);
        }
      else if (!s->has_mail)
        {
          smtpd_reply (s, "503 5.5.1 Need MAIL and RCPT before DATA");
          smtpd_error (s);
        }
      else if (s->rcpts->len == 0)
        {
          smtpd_reply (s, "554 5.5.1 No valid recipients");
          smtpd_error (s);
        }
      else
        {
          smtpd_reply (s, "354 End data with <CR><LF>.<CR><LF>");
          pmx_smtpd_data_reader_init (&s->data, s->smtpd->max_size, SMTPD_TEXT_LIMIT);
          smtpd_set_state (s, SMTPD_STATE_DATA);
        }
      break;
    case PMX_SMTPD_CMD_RSET:
      smtpd_reset (s);
      smtpd_reply (s, "250 2.0.0 Ok");
      break;
    case PMX_SMTPD_CMD_NOOP:
      smtpd_reply (s, "250 2.0.0 Ok");
      break;
    case PMX_SMTPD_CMD_QUIT:
      smtpd_reply (s, "221 2.0.0 Bye");
      smtpd_close (s);
      break;
    case PMX_SMTPD_CMD_HELP:
      smtpd_reply (s, "214 2.0.0 Commands: EHLO HELO STARTTLS AUTH MAIL RCPT DATA RSET NOOP QUIT HELP VRFY");
      break;
    case PMX_SMTPD_CMD_VRFY:
      smtpd_reply (s, "252 2.0.0 Cannot VRFY user, but will accept message and attempt delivery");
      break;
    case PMX_SMTPD_CMD_EXPN:
      smtpd_reply (s, "502 5.5.1 EXPN not implemented");
      break;
    case PMX_SMTPD_CMD_UNKNOWN:
    default:
      smtpd_reply (s, "500 5.5.1 Command unrecognized");
      smtpd_error (s);
      break;
    }
}

/* smtpd_process - handle what the input buffer holds, as far as the
 * state allows */
static void
smtpd_process (SmtpdSession *s)
{
  while (s->inbuf->len > 0)
    {
      if (s->state == SMTPD_STATE_PREGREET)
        {
          pmx_log_warning (NULL, NULL, "smtpd: client %s: sent data before the greeting, disconnecting", s->peer);
          smtpd_reply (s, "554 5.5.0 Error: SMTP protocol violation: data sent before the greeting");
          smtpd_close (s);
          return;
        }
      if (s->state == SMTPD_STATE_DATA)
        {
          gsize used = pmx_smtpd_data_reader_feed (&s->data, s->inbuf->data, s->inbuf->len);

          smtpd_consume (s, used);
          if (s->data.done)
            smtpd_data_done (s);
          continue;
        }
      if (s->state != SMTPD_STATE_COMMAND && s->state != SMTPD_STATE_AUTH)
        return;

      if (s->skipping)
        {
          guint8 *lf = memchr (s->inbuf->data, '\n', s->inbuf->len);

          if (lf == NULL)
            {
              smtpd_consume (s, s->inbuf->len);
              return;
            }
          smtpd_consume (s, (gsize) (lf - s->inbuf->data) + 1);
          s->skipping = FALSE;
          smtpd_reply (s, "500 5.5.2 Error: line too long (limit %d octets)", SMTPD_CMD_LIMIT);
          smtpd_error (s);
          continue;
        }

      {
        gsize limit = SMTPD_CMD_LIMIT, line_len, used;
        PmxSmtpdLineStatus st;

        if (s->state == SMTPD_STATE_AUTH
            || (s->inbuf->len >= 5 && g_ascii_strncasecmp ((const char *) s->inbuf->data, "AUTH ", 5) == 0))
          limit = SMTPD_AUTH_LIMIT;
        st = pmx_smtpd_scan_line (s->inbuf->data, s->inbuf->len, limit, &line_len, &used);
        switch (st)
          {
          case PMX_SMTPD_LINE_MORE:
            return;
          case PMX_SMTPD_LINE_BARE_LF:
          case PMX_SMTPD_LINE_BARE_CR:
            pmx_log_warning (NULL, NULL, "smtpd: client %s: bare %s in a command line, disconnecting",
                             s->peer, st == PMX_SMTPD_LINE_BARE_LF ? "LF" : "CR");
            smtpd_reply (s, "500 5.5.2 Error: bare %s received; SMTP lines end with CRLF",
                         st == PMX_SMTPD_LINE_BARE_LF ? "<LF>" : "<CR>");
            smtpd_consume (s, s->inbuf->len);
            smtpd_close (s);
            return;
          case PMX_SMTPD_LINE_TOO_LONG:
            smtpd_consume (s, used);
            /* With its end seen the line is gone; else skip to the LF. */
            if (used > limit)
              {
                smtpd_reply (s, "500 5.5.2 Error: line too long (limit %d octets)", SMTPD_CMD_LIMIT);
                if (s->state == SMTPD_STATE_AUTH)
                  smtpd_set_state (s, SMTPD_STATE_COMMAND);
                smtpd_error (s);
              }
            else
              s->skipping = TRUE;
            continue;
          case PMX_SMTPD_LINE_OK:
          default:
            {
              g_autofree char *line = g_strndup ((const char *) s->inbuf->data, line_len);
              gboolean embedded_nul = strlen (line) != line_len;

              smtpd_consume (s, used);
              if (embedded_nul)
                {
                  pmx_log_warning (NULL, NULL, "smtpd: client %s: NUL in a command line, disconnecting", s->peer);
                  smtpd_reply (s, "500 5.5.2 Error: NUL in a command line");
                  smtpd_close (s);
                  return;
                }
              if (s->state == SMTPD_STATE_AUTH)
                {
                  smtpd_auth_response (s, line);
                  explicit_bzero (line, line_len);
                }
              else
                smtpd_command (s, line, line_len);
            }
            break;
          }
      }
    }
}

/* smtpd_incoming - a client connected to @l */
static void
smtpd_incoming (SmtpdListen       *l,
                GSocketConnection *conn)
{
  PmxSmtpd *smtpd = l->smtpd;
  g_autoptr(GSocketAddress) remote = g_socket_connection_get_remote_address (conn, NULL);
  SmtpdSession *s;
  guint n;

  if (remote == NULL || !G_IS_INET_SOCKET_ADDRESS (remote))
    return;   /* dropping @conn closes it */
  s = g_new0 (SmtpdSession, 1);
  s->ref = 1;
  s->smtpd = smtpd;
  s->queue = smtpd->queue;
  s->conn = g_object_ref (conn);
  s->stream = g_object_ref (G_IO_STREAM (conn));
  s->cancel = g_cancellable_new ();
  s->peer_addr = g_object_ref (g_inet_socket_address_get_address (G_INET_SOCKET_ADDRESS (remote)));
  s->peer = g_inet_address_to_string (s->peer_addr);
  s->loopback = g_inet_address_get_is_loopback (s->peer_addr);
  s->inbuf = g_byte_array_new ();
  s->chunk = g_malloc (SMTPD_READ_CHUNK);
  s->outbuf = g_string_new (NULL);
  s->rcpts = g_ptr_array_new_with_free_func (g_free);
  s->identity = g_strdup_printf ("smtp-net:%s", s->peer);
  s->state = SMTPD_STATE_PREGREET;
  g_socket_set_keepalive (g_socket_connection_get_socket (conn), TRUE);

  n = GPOINTER_TO_UINT (g_hash_table_lookup (smtpd->per_client, s->peer)) + 1;
  g_hash_table_insert (smtpd->per_client, g_strdup (s->peer), GUINT_TO_POINTER (n));
  g_hash_table_add (smtpd->sessions, s);

  if (g_hash_table_size (smtpd->sessions) > smtpd->max_conns || n > smtpd->max_per_client)
    {
      gboolean total = g_hash_table_size (smtpd->sessions) > smtpd->max_conns;

      pmx_log_warning (NULL, NULL, "smtpd: client %s: refused: too many connections (%s limit %u)", s->peer,
                       total ? "smtpd.max_connections" : "smtpd.max_connections_per_client",
                       total ? smtpd->max_conns : smtpd->max_per_client);
      smtpd_reply (s, "421 4.7.0 %s Error: too many connections%s", smtpd->hostname, total ? "" : " from your address");
      smtpd_close (s);
      smtpd_pump (s);
      return;
    }
  if (l->implicit_tls)
    {
      s->implicit_greeting = TRUE;
      smtpd_handshake (s);
      return;
    }
  smtpd_set_state (s, SMTPD_STATE_PREGREET);
  smtpd_pump (s);
}

static void smtpd_listen_watch (SmtpdListen *l);

/* smtpd_accept_resume - the pause after an accept() error is over */
static gboolean
smtpd_accept_resume (gpointer user_data)
{
  SmtpdListen *l = user_data;

  l->resume = 0;
  smtpd_listen_watch (l);
  return G_SOURCE_REMOVE;
}

/* smtpd_accept - the listening socket is readable: take the connections
 * waiting, a bounded number at a time.  (GSocketService's accept_async
 * costs a GTask, a new source and four main-loop wake-ups per
 * connection.)  When accept() fails for another reason than "nothing
 * waiting" (out of file descriptors, most likely) the connection stays in
 * the backlog and the socket stays readable: stop watching it for
 * SMTPD_ACCEPT_PAUSE_MS instead of spinning, as Postfix's master does. */
static gboolean
smtpd_accept (gpointer user_data)
{
  SmtpdListen *l = user_data;

  for (guint i = 0; i < 16; i++)
    {
      g_autoptr(GError) error = NULL;
      g_autoptr(GSocket) client = g_socket_accept (l->socket, NULL, &error);
      g_autoptr(GSocketConnection) conn = NULL;

      if (client == NULL)
        {
          if (g_error_matches (error, G_IO_ERROR, G_IO_ERROR_WOULD_BLOCK))
            break;
          pmx_log_warning (NULL, NULL, "smtpd: listen.smtp \"%s\": cannot accept a connection: %s — "
                           "not accepting for %d ms; if this repeats, raise the open-files limit "
                           "(LimitNOFILE=) or lower smtpd.max_connections",
                           l->text, error->message, SMTPD_ACCEPT_PAUSE_MS);
          smtpd_drop_source (&l->source);
          l->resume = g_timeout_add (SMTPD_ACCEPT_PAUSE_MS, smtpd_accept_resume, l);
          return G_SOURCE_REMOVE;
        }
      conn = g_socket_connection_factory_create_connection (client);
      smtpd_incoming (l, conn);
    }
  return G_SOURCE_CONTINUE;
}

/* smtpd_listen_watch - accept when @l's socket is readable */
static void
smtpd_listen_watch (SmtpdListen *l)
{
  static GSourceFuncs funcs = { .dispatch = smtpd_fd_dispatch };

  l->source = g_source_new (&funcs, sizeof (GSource));
  g_source_add_unix_fd (l->source, g_socket_get_fd (l->socket), G_IO_IN);
  g_source_set_callback (l->source, smtpd_accept, l, NULL);
  g_source_set_can_recurse (l->source, TRUE);
  g_source_attach (l->source, NULL);
}

/* ======================================================================
 * Configuration and life cycle.
 * ====================================================================== */

static void
smtpd_network_free (gpointer data)
{
  SmtpdNetwork *n = data;

  g_clear_object (&n->mask);
  g_strfreev (n->senders);
  g_free (n);
}

static void
smtpd_user_free (gpointer data)
{
  SmtpdUser *u = data;

  g_free (u->hash);
  g_strfreev (u->senders);
  g_free (u);
}

static void
smtpd_listen_free (gpointer data)
{
  SmtpdListen *l = data;

  g_clear_handle_id (&l->resume, g_source_remove);
  smtpd_drop_source (&l->source);
  if (l->socket != NULL)
    g_socket_close (l->socket, NULL);
  g_clear_object (&l->socket);
  g_clear_object (&l->address);
  g_free (l->text);
  g_free (l);
}

/* smtpd_strv - a JSON array of strings as a strv */
static char **
smtpd_strv (JsonArray *array)
{
  GStrvBuilder *b = g_strv_builder_new ();
  char **v;

  for (guint i = 0; array != NULL && i < json_array_get_length (array); i++)
    g_strv_builder_add (b, json_array_get_string_element (array, i));
  v = g_strv_builder_end (b);
  g_strv_builder_unref (b);
  return v;
}

/* smtpd_parse_address - "host:port" / "[v6]:port" into a socket address */
static GSocketAddress *
smtpd_parse_address (const char *text,
                     guint       index,
                     GError    **error)
{
  const char *colon = strrchr (text, ':');
  g_autofree char *host = NULL;
  g_autoptr(GInetAddress) addr = NULL;
  guint64 port = 0;

  if (colon == NULL || !g_ascii_string_to_unsigned (colon + 1, 10, 0, 65535, &port, NULL))
    {
      g_set_error (error, PMX_SMTPD_ERROR, PMX_SMTPD_ERROR_CONFIG,
                   "listen.smtp[%u].address \"%s\": no port — write host:port, e.g. 0.0.0.0:587", index, text);
      return NULL;
    }
  if (text[0] == '[' && colon > text && colon[-1] == ']')
    host = g_strndup (text + 1, (gsize) (colon - text - 2));
  else
    host = g_strndup (text, (gsize) (colon - text));
  if (strcmp (host, "*") == 0)
    addr = g_inet_address_new_any (G_SOCKET_FAMILY_IPV6);
  else if (strcmp (host, "localhost") == 0)
    addr = g_inet_address_new_loopback (G_SOCKET_FAMILY_IPV4);
  else
    addr = g_inet_address_new_from_string (host);
  if (addr == NULL)
    {
      g_set_error (error, PMX_SMTPD_ERROR, PMX_SMTPD_ERROR_CONFIG,
                   "listen.smtp[%u].address \"%s\": \"%s\" is not an IP address — give one such as 0.0.0.0, 127.0.0.1 or [::]",
                   index, text, host);
      return NULL;
    }
  return g_inet_socket_address_new (addr, (guint16) port);
}

/* smtpd_read_config - every setting, with errors naming the key */
static gboolean
smtpd_read_config (PmxSmtpd *smtpd,
                   GError  **error)
{
  JsonObject *root = smtpd->config->root;
  JsonObject *listen = root != NULL && json_object_has_member (root, "listen")
                       ? json_object_get_object_member (root, "listen") : NULL;
  JsonObject *o;
  JsonArray *smtp = listen != NULL && json_object_has_member (listen, "smtp")
                    ? json_object_get_array_member (listen, "smtp") : NULL;
  gboolean need_tls = FALSE;

  smtpd->hostname = g_strdup (g_get_host_name ());
  smtpd->max_size = 26214400;
  smtpd->max_rcpts = 100;
  smtpd->max_conns = 100;
  smtpd->max_per_client = 10;
  smtpd->command_timeout = 300 * PMX_USEC_PER_SEC;
  smtpd->pregreet_wait = PMX_USEC_PER_SEC;
  smtpd->data_timeout = 180 * PMX_USEC_PER_SEC;

  for (guint i = 0; smtp != NULL && i < json_array_get_length (smtp); i++)
    {
      JsonObject *l = json_array_get_object_element (smtp, i);
      SmtpdListen *sl = g_new0 (SmtpdListen, 1);

      g_ptr_array_add (smtpd->listens, sl);
      sl->text = g_strdup (json_object_get_string_member (l, "address"));
      sl->implicit_tls = g_strcmp0 (json_object_get_string_member_with_default (l, "mode", "plain"), "implicit_tls") == 0;
      need_tls |= sl->implicit_tls;
      sl->address = smtpd_parse_address (sl->text, i, error);
      if (sl->address == NULL)
        return FALSE;
    }

  if (json_object_has_member (root, "smtpd"))
    {
      JsonObject *t;

      o = json_object_get_object_member (root, "smtpd");
      if (json_object_has_member (o, "hostname"))
        {
          g_free (smtpd->hostname);
          smtpd->hostname = g_strdup (json_object_get_string_member (o, "hostname"));
        }
      smtpd->max_size = (gsize) json_object_get_int_member_with_default (o, "max_message_size", (gint64) smtpd->max_size);
      smtpd->max_rcpts = (guint) json_object_get_int_member_with_default (o, "max_recipients", smtpd->max_rcpts);
      smtpd->max_conns = (guint) json_object_get_int_member_with_default (o, "max_connections", smtpd->max_conns);
      smtpd->max_per_client = (guint) json_object_get_int_member_with_default (o, "max_connections_per_client", smtpd->max_per_client);
      smtpd->allow_plaintext_auth = json_object_get_boolean_member_with_default (o, "allow_plaintext_auth", FALSE);
      t = json_object_has_member (o, "timeouts") ? json_object_get_object_member (o, "timeouts") : NULL;
      if (t != NULL && json_object_has_member (t, "command")
          && !pmx_duration_parse_node (json_object_get_member (t, "command"), &smtpd->command_timeout))
        {
          g_set_error (error, PMX_SMTPD_ERROR, PMX_SMTPD_ERROR_CONFIG, "smtpd.timeouts.command is not a duration such as 5m");
          return FALSE;
        }
      if (json_object_has_member (o, "pregreet_wait")
          && !pmx_duration_parse_node (json_object_get_member (o, "pregreet_wait"), &smtpd->pregreet_wait))
        {
          g_set_error (error, PMX_SMTPD_ERROR, PMX_SMTPD_ERROR_CONFIG, "smtpd.pregreet_wait is not a duration such as 1s");
          return FALSE;
        }
      if (t != NULL && json_object_has_member (t, "data")
          && !pmx_duration_parse_node (json_object_get_member (t, "data"), &smtpd->data_timeout))
        {
          g_set_error (error, PMX_SMTPD_ERROR, PMX_SMTPD_ERROR_CONFIG, "smtpd.timeouts.data is not a duration such as 3m");
          return FALSE;
        }
      smtpd->command_timeout = MAX (smtpd->command_timeout, PMX_USEC_PER_SEC / 10);
      smtpd->data_timeout = MAX (smtpd->data_timeout, PMX_USEC_PER_SEC / 10);
    }

  if (json_object_has_member (root, "tls"))
    {
      g_autoptr(GError) local_error = NULL;
      const char *cert, *key;

      o = json_object_get_object_member (root, "tls");
      cert = json_object_get_string_member (o, "cert_file");
      key = json_object_get_string_member (o, "key_file");
      if (!g_tls_backend_supports_tls (g_tls_backend_get_default ()))
        {
          g_set_error (error, PMX_SMTPD_ERROR, PMX_SMTPD_ERROR_TLS,
                       "tls: GIO has no TLS backend — install glib-networking, or remove the tls section");
          return FALSE;
        }
      smtpd->cert = g_tls_certificate_new_from_files (cert, key, &local_error);
      if (smtpd->cert == NULL)
        {
          g_set_error (error, PMX_SMTPD_ERROR, PMX_SMTPD_ERROR_TLS,
                       "tls.cert_file \"%s\" / tls.key_file \"%s\": %s — give a PEM certificate chain and its private key",
                       cert, key, local_error->message);
          return FALSE;
        }
    }
  else if (need_tls)
    {
      g_set_error (error, PMX_SMTPD_ERROR, PMX_SMTPD_ERROR_CONFIG,
                   "listen.smtp: a listener has mode implicit_tls but there is no tls section — add tls.cert_file and tls.key_file");
      return FALSE;
    }

  o = json_object_has_member (root, "auth") ? json_object_get_object_member (root, "auth") : NULL;
  if (o != NULL && json_object_has_member (o, "networks"))
    {
      JsonArray *nets = json_object_get_array_member (o, "networks");

      for (guint i = 0; i < json_array_get_length (nets); i++)
        {
          JsonObject *n = json_array_get_object_element (nets, i);
          const char *cidr = json_object_get_string_member (n, "cidr");
          g_autoptr(GError) local_error = NULL;
          SmtpdNetwork *net = g_new0 (SmtpdNetwork, 1);

          g_ptr_array_add (smtpd->networks, net);
          net->mask = g_inet_address_mask_new_from_string (cidr, &local_error);
          if (net->mask == NULL)
            {
              g_set_error (error, PMX_SMTPD_ERROR, PMX_SMTPD_ERROR_CONFIG,
                           "auth.networks[%u].cidr \"%s\": %s — write an address or address/prefix, e.g. 192.168.1.0/24",
                           i, cidr, local_error->message);
              return FALSE;
            }
          if (json_object_has_member (n, "senders"))
            net->senders = smtpd_strv (json_object_get_array_member (n, "senders"));
          else
            net->senders = g_strdupv ((char *[]) { (char *) "*", NULL });
        }
    }
  else
    {
      const char *defaults[] = { "127.0.0.0/8", "::1" };

      for (gsize i = 0; i < G_N_ELEMENTS (defaults); i++)
        {
          SmtpdNetwork *net = g_new0 (SmtpdNetwork, 1);

          net->mask = g_inet_address_mask_new_from_string (defaults[i], NULL);
          net->senders = g_strdupv ((char *[]) { (char *) "*", NULL });
          g_ptr_array_add (smtpd->networks, net);
        }
    }
  if (o != NULL && json_object_has_member (o, "smtp_users"))
    {
      JsonObject *users = json_object_get_object_member (o, "smtp_users");
      g_autoptr(GList) names = json_object_get_members (users);

      for (GList *l = names; l != NULL; l = l->next)
        {
          JsonObject *u = json_object_get_object_member (users, l->data);
          SmtpdUser *user = g_new0 (SmtpdUser, 1);

          user->hash = g_strdup (json_object_get_string_member (u, "password_hash"));
          user->senders = smtpd_strv (json_object_get_array_member (u, "senders"));
          g_hash_table_insert (smtpd->users, g_strdup (l->data), user);
          /* "$6$salt$hash" or "$6$rounds=N$salt$hash": 86 characters of hash. */
          if (strlen (user->hash) < 90 || strrchr (user->hash, '$') == user->hash + 2)
            {
              g_set_error (error, PMX_SMTPD_ERROR, PMX_SMTPD_ERROR_CONFIG,
                           "auth.smtp_users.%s.password_hash is not a complete SHA-512-crypt hash — make one with `postmux passwd`",
                           (const char *) l->data);
              return FALSE;
            }
        }
    }
  return TRUE;
}

PmxSmtpd *
pmx_smtpd_new (PmxConfig *config,
               PmxQueue  *queue,
               void     (*wake) (gpointer),
               gpointer   wake_data,
               GError   **error)
{
  PmxSmtpd *smtpd = g_new0 (PmxSmtpd, 1);

  g_return_val_if_fail (config != NULL && queue != NULL, NULL);

  smtpd->config = pmx_config_ref (config);
  smtpd->queue = queue;
  smtpd->wake = wake;
  smtpd->wake_data = wake_data;
  smtpd->listens = g_ptr_array_new_with_free_func (smtpd_listen_free);
  smtpd->networks = g_ptr_array_new_with_free_func (smtpd_network_free);
  smtpd->users = g_hash_table_new_full (g_str_hash, g_str_equal, g_free, smtpd_user_free);
  smtpd->sessions = g_hash_table_new (NULL, NULL);
  smtpd->per_client = g_hash_table_new_full (g_str_hash, g_str_equal, g_free, NULL);
  smtpd->auth_failures = g_hash_table_new_full (g_str_hash, g_str_equal, g_free, g_free);
  if (!smtpd_read_config (smtpd, error))
    {
      pmx_smtpd_free (smtpd);
      return NULL;
    }
  return smtpd;
}

gboolean
pmx_smtpd_start (PmxSmtpd *smtpd,
                 GError  **error)
{
  g_return_val_if_fail (smtpd != NULL && !smtpd->started, FALSE);

  smtpd->started = TRUE;
  for (guint i = 0; i < smtpd->listens->len; i++)
    {
      SmtpdListen *l = g_ptr_array_index (smtpd->listens, i);
      g_autoptr(GSocketAddress) effective = NULL;
      g_autoptr(GError) local_error = NULL;
      g_autofree char *host = NULL;
      GInetAddress *ia;

      l->smtpd = smtpd;
      l->socket = g_socket_new (g_socket_address_get_family (l->address), G_SOCKET_TYPE_STREAM,
                                G_SOCKET_PROTOCOL_TCP, &local_error);
      if (l->socket != NULL)
        {
          g_socket_set_blocking (l->socket, FALSE);
          g_socket_set_listen_backlog (l->socket, 128);
        }
      if (l->socket == NULL
          || !g_socket_bind (l->socket, l->address, TRUE, &local_error)
          || !g_socket_listen (l->socket, &local_error)
          || (effective = g_socket_get_local_address (l->socket, &local_error)) == NULL)
        {
          g_set_error (error, PMX_SMTPD_ERROR, PMX_SMTPD_ERROR_LISTEN,
                       "listen.smtp[%u].address \"%s\": cannot listen: %s — is another server on that port?",
                       i, l->text, local_error->message);
          return FALSE;
        }
      smtpd_listen_watch (l);

      ia = g_inet_socket_address_get_address (G_INET_SOCKET_ADDRESS (effective));
      host = g_inet_address_to_string (ia);
      pmx_log_info (NULL, NULL, "smtpd: listening on %s%s%s:%u (%s)",
                    g_inet_address_get_family (ia) == G_SOCKET_FAMILY_IPV6 ? "[" : "", host,
                    g_inet_address_get_family (ia) == G_SOCKET_FAMILY_IPV6 ? "]" : "",
                    g_inet_socket_address_get_port (G_INET_SOCKET_ADDRESS (effective)),
                    l->implicit_tls ? "implicit TLS" : smtpd->cert != NULL ? "STARTTLS offered" : "plain, no TLS configured");
    }
  return TRUE;
}

void
pmx_smtpd_shutdown (PmxSmtpd *smtpd)
{
  GHashTableIter iter;
  gpointer key;
  g_autoptr(GPtrArray) idle = g_ptr_array_new ();

  g_return_if_fail (smtpd != NULL);
  if (smtpd->shutting_down)
    return;
  smtpd->shutting_down = TRUE;
  for (guint i = 0; i < smtpd->listens->len; i++)
    {
      SmtpdListen *l = g_ptr_array_index (smtpd->listens, i);

      g_clear_handle_id (&l->resume, g_source_remove);
      smtpd_drop_source (&l->source);
      if (l->socket != NULL)
        g_socket_close (l->socket, NULL);
    }
  g_hash_table_iter_init (&iter, smtpd->sessions);
  while (g_hash_table_iter_next (&iter, &key, NULL))
    {
      SmtpdSession *s = key;

      /* A session waiting for a command is at its next command now. */
      if ((s->state == SMTPD_STATE_COMMAND || s->state == SMTPD_STATE_PREGREET) && s->inbuf->len == 0)
        g_ptr_array_add (idle, s);
    }
  for (guint i = 0; i < idle->len; i++)
    {
      SmtpdSession *s = g_ptr_array_index (idle, i);

      smtpd_reply (s, "421 4.3.2 %s shutting down", smtpd->hostname);
      smtpd_close (s);
      smtpd_pump (s);
    }
}

void
pmx_smtpd_free (PmxSmtpd *smtpd)
{
  gint64 deadline;

  if (smtpd == NULL)
    return;
  pmx_smtpd_shutdown (smtpd);
  /* Let a pending commit answer and last replies flush (a few seconds at
   * most), then cut the rest off. */
  deadline = g_get_monotonic_time () + 3 * PMX_USEC_PER_SEC;
  while (g_hash_table_size (smtpd->sessions) > 0 && g_get_monotonic_time () < deadline)
    if (!g_main_context_iteration (NULL, FALSE))
      g_usleep (2000);
  while (g_hash_table_size (smtpd->sessions) > 0)
    {
      GHashTableIter iter;
      gpointer key;

      g_hash_table_iter_init (&iter, smtpd->sessions);
      if (g_hash_table_iter_next (&iter, &key, NULL))
        smtpd_finish (key);
    }
  /* Let the cancelled operations return their references. */
  deadline = g_get_monotonic_time () + PMX_USEC_PER_SEC;
  while (g_main_context_pending (NULL) && g_get_monotonic_time () < deadline)
    g_main_context_iteration (NULL, FALSE);
  g_clear_object (&smtpd->cert);
  g_ptr_array_unref (smtpd->listens);
  g_ptr_array_unref (smtpd->networks);
  g_hash_table_unref (smtpd->users);
  g_hash_table_unref (smtpd->sessions);
  g_hash_table_unref (smtpd->per_client);
  g_hash_table_unref (smtpd->auth_failures);
  g_free (smtpd->hostname);
  pmx_config_unref (smtpd->config);
  g_free (smtpd);
}

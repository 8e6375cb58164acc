/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * pmx-smtp-client.c - the SMTP client engine of the plugin SDK: one
 * connection to one server, reused for many messages, with an outcome per
 * recipient.
 *
 * Follows RFC 5321 (SMTP), 3207 (STARTTLS), 8314 (implicit TLS), 4954
 * (AUTH), 4616 (PLAIN), 2195 (CRAM-MD5), 7628 (OAUTHBEARER), 1870 (SIZE),
 * 2920 (PIPELINING), 6152 (8BITMIME), 6531 (SMTPUTF8), 2034/3463 (enhanced
 * status codes), and draft-murchison-sasl-login and Google's XOAUTH2.
 * Modelled on curl's lib/smtp.c: an explicit state enum, changed only by
 * smtp_state().  Blocking I/O on a non-blocking socket: every wait is a
 * poll() bounded by the timeout of the current phase.
 *
 * Trusts: the configuration it is given.  Trusts nothing from the server:
 * reply lines are bounded, a reply that does not parse breaks the
 * connection, and bytes the server sends ahead of the TLS handshake after
 * STARTTLS are refused (the STARTTLS command-injection attack).
 * Fails: connect/protocol errors as GError in PMX_SMTP_ERROR (classed by
 * pmx_smtp_error_get_failure()); delivery outcomes as data in PmxResult.
 * Secrets never reach the transcript or the log, and are wiped when freed.
 */
#include <postmux/postmux.h>

#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <arpa/inet.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#define SMTP_LINE_MAX          8192              /* longest reply line accepted */
#define SMTP_REPLY_LINES_MAX   256               /* longest multi-line reply */
#define SMTP_TRANSCRIPT_LIMIT  (64 * 1024)
#define SMTP_CHUNK             (64 * 1024)       /* DATA is written in chunks this big */
#define SMTP_IDLE_NOOP_USEC    (10 * G_USEC_PER_SEC)  /* idle longer: NOOP before reuse */
#define SMTP_SASL_STEPS_MAX    4

G_DEFINE_QUARK (pmx-smtp-error-quark, pmx_smtp_error)

/* The one state machine.  Only smtp_state() assigns client->state. */
typedef enum {
  SMTP_STATE_DISCONNECTED,
  SMTP_STATE_CONNECT,
  SMTP_STATE_TLS_HANDSHAKE,
  SMTP_STATE_GREETING,
  SMTP_STATE_EHLO,
  SMTP_STATE_HELO,
  SMTP_STATE_STARTTLS,
  SMTP_STATE_AUTH,
  SMTP_STATE_READY,
  SMTP_STATE_NOOP,
  SMTP_STATE_RSET,
  SMTP_STATE_MAIL,
  SMTP_STATE_RCPT,
  SMTP_STATE_DATA,
  SMTP_STATE_BODY,
  SMTP_STATE_QUIT,
  SMTP_STATE_LAST
} SmtpState;

static const char *const smtp_state_names[SMTP_STATE_LAST] = {
  "disconnected", "connect", "TLS handshake", "greeting", "EHLO", "HELO", "STARTTLS",
  "AUTH", "ready", "NOOP", "RSET", "MAIL FROM", "RCPT TO", "DATA", "end of data", "QUIT",
};

typedef enum {
  SMTP_MECH_NONE,
  SMTP_MECH_PLAIN,
  SMTP_MECH_LOGIN,
  SMTP_MECH_CRAM_MD5,
  SMTP_MECH_XOAUTH2,
  SMTP_MECH_OAUTHBEARER,
} SmtpMech;

static const char *const smtp_mech_names[] = {
  NULL, "PLAIN", "LOGIN", "CRAM-MD5", "XOAUTH2", "OAUTHBEARER",
};

/* One reply, possibly multi-line. */
typedef struct {
  guint      code;       /* 0: none read yet */
  char      *enhanced;   /* RFC 3463 code of the first line, or NULL */
  GString   *text;       /* the lines' text (codes removed) joined by spaces */
  GPtrArray *lines;      /* each line's text after "NNN-" as sent */
} SmtpReply;

/* What EHLO said. */
typedef struct {
  GPtrArray *lines;           /* keyword lines, as sent */
  gboolean   esmtp;           /* FALSE after a HELO fallback */
  gboolean   starttls;
  gboolean   pipelining;
  gboolean   eightbitmime;
  gboolean   smtputf8;
  gboolean   enhanced;
  guint64    size;            /* 0: no limit announced */
  GPtrArray *auth;            /* mechanism names, upper case */
} SmtpCaps;

struct _PmxSmtpClient {
  /* configuration (immutable after new, except the secret) */
  char            *host;
  guint16          port;
  PmxSmtpSecurity  security;
  char            *helo_name;
  gboolean         tls_verify;
  char            *ca_file;
  PmxSmtpTlsVersion tls_min_version;
  gint64           connect_timeout;   /* usec */
  gint64           command_timeout;
  gint64           data_timeout;
  PmxSmtpAuth      auth;
  char            *username;
  char            *secret;            /* wiped on replace and free */
  gboolean         allow_plaintext_auth;
  guint            max_messages;
  gsize            transcript_limit;

  /* connection */
  SmtpState        state;
  int              fd;
  SSL_CTX         *ssl_ctx;
  SSL             *ssl;
  guint8           rbuf[16384];
  gsize            rpos, rlen;
  gboolean         reply_due;         /* sent since the last read: the answer is not there yet */
  SmtpCaps         caps;
  SmtpReply        reply;
  SmtpMech         auth_done;
  guint            n_connections;
  guint            n_messages;        /* on this connection */
  gboolean         need_rset;
  gboolean         rset_pipelined;  /* the RSET goes at the head of the next envelope (RFC 2920) */
  gint64           last_used;         /* monotonic usec */

  /* diagnostics */
  GString         *transcript;
  gboolean         transcript_full;
  gboolean         transcript_off;    /* this send's result wants none */
  gboolean         trace;             /* debug output wanted (looked up once: it costs a getenv) */
  PmxSmtpProbe    *probe;             /* filled while probing, else NULL */
};

/* ---------------------------------------------------------------------- */
/* errors                                                                 */

PmxFailureClass
pmx_smtp_error_get_failure (const GError *error)
{
  if (error == NULL || error->domain != PMX_SMTP_ERROR)
    return PMX_FAILURE_TEMPORARY;
  switch ((PmxSmtpError) error->code)
    {
    case PMX_SMTP_ERROR_CERTIFICATE:
    case PMX_SMTP_ERROR_STARTTLS_UNAVAILABLE:
    case PMX_SMTP_ERROR_AUTH_UNAVAILABLE:
      return PMX_FAILURE_CONFIG;
    case PMX_SMTP_ERROR_AUTH_FAILED:
      return PMX_FAILURE_AUTH;
    case PMX_SMTP_ERROR_FAILED:
    case PMX_SMTP_ERROR_RESOLVE:
    case PMX_SMTP_ERROR_CONNECT:
    case PMX_SMTP_ERROR_TIMEOUT:
    case PMX_SMTP_ERROR_TLS:
    case PMX_SMTP_ERROR_CLOSED:
    case PMX_SMTP_ERROR_PROTOCOL:
    case PMX_SMTP_ERROR_AUTH_TEMPORARY:
    case PMX_SMTP_ERROR_REJECTED:
    default:
      return PMX_FAILURE_TEMPORARY;
    }
}

PmxTransportErrorCode
pmx_smtp_error_get_transport_code (const GError *error)
{
  switch (pmx_smtp_error_get_failure (error))
    {
    case PMX_FAILURE_CONFIG:
      return PMX_TRANSPORT_ERROR_CONFIG;
    case PMX_FAILURE_AUTH:
      return PMX_TRANSPORT_ERROR_AUTH;
    case PMX_FAILURE_PERMANENT:
      return PMX_TRANSPORT_ERROR_PERMANENT;
    case PMX_FAILURE_NONE:
    case PMX_FAILURE_TEMPORARY:
    default:
      return PMX_TRANSPORT_ERROR_TEMPORARY;
    }
}

/* ---------------------------------------------------------------------- */
/* state, transcript, replies                                              */

/* smtp_state - the one place that changes the state */
static void
smtp_state (PmxSmtpClient *c,
            SmtpState      next)
{
  if (c->trace && c->state != next)
    g_debug ("smtp %s:%u: %s -> %s", c->host, c->port,
             smtp_state_names[c->state], smtp_state_names[next]);
  c->state = next;
}

/* smtp_phase_timeout - the timeout (usec) of the current state */
static gint64
smtp_phase_timeout (PmxSmtpClient *c)
{
  switch (c->state)
    {
    case SMTP_STATE_CONNECT:
      return c->connect_timeout;
    case SMTP_STATE_BODY:
      return c->data_timeout;
    default:
      return c->command_timeout;
    }
}

/* smtp_note - add one transcript line "<who>: <text>" while there is room */
static void G_GNUC_PRINTF (3, 4)
smtp_note (PmxSmtpClient *c,
           char           who,
           const char    *format,
           ...)
{
  g_autofree char *line = NULL;
  va_list args;

  if (c->transcript_full || c->transcript_off)
    return;
  va_start (args, format);
  line = g_strdup_vprintf (format, args);
  va_end (args);
  if (c->transcript->len + strlen (line) + 4 > c->transcript_limit)
    {
      g_string_append (c->transcript, "*: transcript truncated\n");
      c->transcript_full = TRUE;
      return;
    }
  g_string_append_printf (c->transcript, "%c: %s\n", who, line);
}

/* smtp_reply_reset - forget the last reply */
static void
smtp_reply_reset (SmtpReply *r)
{
  r->code = 0;
  g_clear_pointer (&r->enhanced, g_free);
  g_string_truncate (r->text, 0);
  g_ptr_array_set_size (r->lines, 0);
}

/* smtp_parse_enhanced - length of an RFC 3463 code of class @klass at the
 * start of @text (followed by a space or the end), else 0 */
static gsize
smtp_parse_enhanced (const char *text,
                     char        klass)
{
  const char *p = text;
  int digits;

  if (*p != klass || p[1] != '.')
    return 0;
  p += 2;
  for (int part = 0; part < 2; part++)
    {
      for (digits = 0; g_ascii_isdigit (*p) && digits < 4; digits++)
        p++;
      if (digits == 0 || digits > 3)
        return 0;
      if (part == 0)
        {
          if (*p != '.')
            return 0;
          p++;
        }
    }
  if (*p != '\0' && *p != ' ')
    return 0;
  return (gsize) (p - text);
}

/* smtp_caps_clear - forget what EHLO said */
static void
smtp_caps_clear (SmtpCaps *caps)
{
  g_ptr_array_set_size (caps->lines, 0);
  g_ptr_array_set_size (caps->auth, 0);
  caps->esmtp = caps->starttls = caps->pipelining = FALSE;
  caps->eightbitmime = caps->smtputf8 = caps->enhanced = FALSE;
  caps->size = 0;
}

/* ---------------------------------------------------------------------- */
/* socket and TLS I/O                                                       */

/* smtp_close - drop the connection without a word */
static void
smtp_close (PmxSmtpClient *c)
{
  if (c->ssl != NULL)
    {
      SSL_free (c->ssl);
      c->ssl = NULL;
    }
  if (c->fd >= 0)
    {
      close (c->fd);
      c->fd = -1;
    }
  c->rpos = c->rlen = 0;
  c->reply_due = FALSE;
  c->auth_done = SMTP_MECH_NONE;
  c->n_messages = 0;
  c->need_rset = FALSE;
  c->rset_pipelined = FALSE;
  smtp_caps_clear (&c->caps);
  smtp_state (c, SMTP_STATE_DISCONNECTED);
}

/* smtp_wait - poll for @events until @deadline (monotonic usec) */
static gboolean
smtp_wait (PmxSmtpClient *c,
           short          events,
           gint64         deadline,
           GError       **error)
{
  for (;;)
    {
      struct pollfd pfd = { .fd = c->fd, .events = events };
      gint64 left = deadline - g_get_monotonic_time ();
      int n;

      if (left <= 0)
        {
          g_set_error (error, PMX_SMTP_ERROR, PMX_SMTP_ERROR_TIMEOUT,
                       "%s:%u: timed out after %" G_GINT64_FORMAT " s in %s",
                       c->host, c->port, (smtp_phase_timeout (c) + G_USEC_PER_SEC / 2) / G_USEC_PER_SEC,
                       smtp_state_names[c->state]);
          return FALSE;
        }
      n = poll (&pfd, 1, (int) MIN ((left + 999) / 1000, G_MAXINT));
      if (n > 0)
        return TRUE;
      if (n < 0 && errno != EINTR)
        {
          int saved = errno;
          g_set_error (error, PMX_SMTP_ERROR, PMX_SMTP_ERROR_FAILED,
                       "%s:%u: poll: %s", c->host, c->port, g_strerror (saved));
          return FALSE;
        }
    }
}

/* smtp_tls_error - a GError from the OpenSSL error queue */
static void
smtp_tls_error (PmxSmtpClient *c,
                GError       **error,
                const char    *what)
{
  unsigned long e = ERR_get_error ();
  char buf[256] = "connection closed";

  if (e != 0)
    ERR_error_string_n (e, buf, sizeof buf);
  ERR_clear_error ();
  g_set_error (error, PMX_SMTP_ERROR, PMX_SMTP_ERROR_TLS,
               "%s:%u: TLS %s failed: %s", c->host, c->port, what, buf);
}

/* smtp_closed_error - the server went away */
static void
smtp_closed_error (PmxSmtpClient *c,
                   GError       **error)
{
  g_set_error (error, PMX_SMTP_ERROR, PMX_SMTP_ERROR_CLOSED,
               "%s:%u: the server closed the connection in %s",
               c->host, c->port, smtp_state_names[c->state]);
}

/* smtp_read_some - read what is there (waiting until @deadline); 0 is EOF */
static gssize
smtp_read_some (PmxSmtpClient *c,
                guint8        *buf,
                gsize          len,
                gint64         deadline,
                GError       **error)
{
  for (;;)
    {
      if (c->ssl != NULL)
        {
          int n, err;

          ERR_clear_error ();
          n = SSL_read (c->ssl, buf, (int) MIN (len, G_MAXINT));
          if (n > 0)
            return n;
          err = SSL_get_error (c->ssl, n);
          if (err == SSL_ERROR_WANT_READ || err == SSL_ERROR_WANT_WRITE)
            {
              if (!smtp_wait (c, err == SSL_ERROR_WANT_READ ? POLLIN : POLLOUT, deadline, error))
                return -1;
              continue;
            }
          if (err == SSL_ERROR_ZERO_RETURN || (err == SSL_ERROR_SYSCALL && ERR_peek_error () == 0))
            return 0;
          smtp_tls_error (c, error, "read");
          return -1;
        }
      else
        {
          gssize n;

          /* Right after a write the reply cannot be there yet: wait first
           * instead of a recv() that can only say EAGAIN. */
          if (c->reply_due)
            {
              c->reply_due = FALSE;
              if (!smtp_wait (c, POLLIN, deadline, error))
                return -1;
            }
          n = recv (c->fd, buf, len, 0);
          if (n >= 0)
            return n;
          if (errno == EAGAIN || errno == EWOULDBLOCK)
            {
              if (!smtp_wait (c, POLLIN, deadline, error))
                return -1;
              continue;
            }
          if (errno == EINTR)
            continue;
          if (errno == ECONNRESET)
            return 0;
          {
            int saved = errno;
            g_set_error (error, PMX_SMTP_ERROR, PMX_SMTP_ERROR_CLOSED,
                         "%s:%u: read: %s", c->host, c->port, g_strerror (saved));
          }
          return -1;
        }
    }
}

/* smtp_tls_write - SSL_write with SIGPIPE held back for this thread, since
 * OpenSSL writes with write(2) and a closed peer would kill the process */
static int
smtp_tls_write (SSL        *ssl,
                const void *data,
                int         len)
{
  sigset_t pipe_set, old;
  int n;

  sigemptyset (&pipe_set);
  sigaddset (&pipe_set, SIGPIPE);
  pthread_sigmask (SIG_BLOCK, &pipe_set, &old);
  n = SSL_write (ssl, data, len);
  if (n <= 0 && !sigismember (&old, SIGPIPE))
    {
      struct timespec zero = { 0, 0 };
      sigset_t pending;

      sigpending (&pending);
      if (sigismember (&pending, SIGPIPE))
        sigtimedwait (&pipe_set, NULL, &zero);
    }
  pthread_sigmask (SIG_SETMASK, &old, NULL);
  return n;
}

/* smtp_write_all - write every byte before the phase's deadline */
static gboolean
smtp_write_all (PmxSmtpClient *c,
                const char    *data,
                gsize          len,
                GError       **error)
{
  gint64 deadline = g_get_monotonic_time () + smtp_phase_timeout (c);

  while (len > 0)
    {
      if (c->ssl != NULL)
        {
          int chunk = (int) MIN (len, 1 << 20);
          int n, err;

          ERR_clear_error ();
          n = smtp_tls_write (c->ssl, data, chunk);
          if (n > 0)
            {
              data += n;
              len -= (gsize) n;
              continue;
            }
          err = SSL_get_error (c->ssl, n);
          if (err == SSL_ERROR_WANT_READ || err == SSL_ERROR_WANT_WRITE)
            {
              if (!smtp_wait (c, err == SSL_ERROR_WANT_READ ? POLLIN : POLLOUT, deadline, error))
                return FALSE;
              continue;
            }
          if (err == SSL_ERROR_SYSCALL && ERR_peek_error () == 0)
            {
              smtp_closed_error (c, error);
              return FALSE;
            }
          smtp_tls_error (c, error, "write");
          return FALSE;
        }
      else
        {
          gssize n = send (c->fd, data, len, MSG_NOSIGNAL);

          if (n > 0)
            {
              data += n;
              len -= (gsize) n;
              c->reply_due = TRUE;
              continue;
            }
          if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            {
              if (!smtp_wait (c, POLLOUT, deadline, error))
                return FALSE;
              continue;
            }
          if (n < 0 && errno == EINTR)
            continue;
          if (n < 0 && errno != EPIPE && errno != ECONNRESET)
            {
              int saved = errno;
              g_set_error (error, PMX_SMTP_ERROR, PMX_SMTP_ERROR_FAILED,
                           "%s:%u: write: %s", c->host, c->port, g_strerror (saved));
              return FALSE;
            }
          smtp_closed_error (c, error);
          return FALSE;
        }
    }
  return TRUE;
}

/* smtp_read_line - one line without its CRLF (a bare LF ends one too) */
static gboolean
smtp_read_line (PmxSmtpClient *c,
                GString       *line,
                gint64         deadline,
                GError       **error)
{
  g_string_truncate (line, 0);
  for (;;)
    {
      guint8 *start = c->rbuf + c->rpos;
      guint8 *nl = memchr (start, '\n', c->rlen - c->rpos);
      gssize n;

      if (nl != NULL)
        {
          g_string_append_len (line, (const char *) start, nl - start);
          c->rpos += (gsize) (nl - start) + 1;
          if (line->len > 0 && line->str[line->len - 1] == '\r')
            g_string_truncate (line, line->len - 1);
          if (line->len > SMTP_LINE_MAX)
            break;
          return TRUE;
        }
      g_string_append_len (line, (const char *) start, (gssize) (c->rlen - c->rpos));
      c->rpos = c->rlen = 0;
      if (line->len > SMTP_LINE_MAX)
        break;
      n = smtp_read_some (c, c->rbuf, sizeof c->rbuf, deadline, error);
      if (n < 0)
        return FALSE;
      if (n == 0)
        {
          smtp_closed_error (c, error);
          return FALSE;
        }
      c->rlen = (gsize) n;
    }
  g_set_error (error, PMX_SMTP_ERROR, PMX_SMTP_ERROR_PROTOCOL,
               "%s:%u: reply line longer than %d bytes in %s",
               c->host, c->port, SMTP_LINE_MAX, smtp_state_names[c->state]);
  return FALSE;
}

/* smtp_read_reply - read one (multi-line) reply into c->reply.  A 421
 * closes the connection and fails with PMX_SMTP_ERROR_CLOSED. */
static gboolean
smtp_read_reply (PmxSmtpClient *c,
                 GError       **error)
{
  g_autoptr(GString) line = g_string_new (NULL);
  gint64 deadline = g_get_monotonic_time () + smtp_phase_timeout (c);

  smtp_reply_reset (&c->reply);
  for (guint n = 0;; n++)
    {
      const char *text;
      guint code;
      gboolean last;
      gsize elen;

      if (!smtp_read_line (c, line, deadline, error))
        return FALSE;
      smtp_note (c, 'S', "%s", line->str);
      if (line->len < 3 || !g_ascii_isdigit (line->str[0]) || !g_ascii_isdigit (line->str[1])
          || !g_ascii_isdigit (line->str[2]) || (line->len > 3 && line->str[3] != ' ' && line->str[3] != '-')
          || line->str[0] < '2' || line->str[0] > '5' || n >= SMTP_REPLY_LINES_MAX)
        {
          g_set_error (error, PMX_SMTP_ERROR, PMX_SMTP_ERROR_PROTOCOL,
                       "%s:%u: not an SMTP reply in %s: \"%.80s\"",
                       c->host, c->port, smtp_state_names[c->state], line->str);
          return FALSE;
        }
      code = (guint) g_ascii_strtoull (line->str, NULL, 10);
      if (n > 0 && code != c->reply.code)
        {
          g_set_error (error, PMX_SMTP_ERROR, PMX_SMTP_ERROR_PROTOCOL,
                       "%s:%u: reply code changed within a reply (%u then %u)",
                       c->host, c->port, c->reply.code, code);
          return FALSE;
        }
      c->reply.code = code;
      last = line->len == 3 || line->str[3] == ' ';
      text = line->len > 4 ? line->str + 4 : "";
      g_ptr_array_add (c->reply.lines, g_strdup (text));

      /* RFC 2034: each line may repeat the code; keep the first. */
      elen = code / 100 == 3 ? 0 : smtp_parse_enhanced (text, line->str[0]);
      if (elen > 0)
        {
          if (c->reply.enhanced == NULL)
            c->reply.enhanced = g_strndup (text, elen);
          text += elen;
          while (*text == ' ')
            text++;
        }
      if (*text != '\0')
        {
          if (c->reply.text->len > 0)
            g_string_append_c (c->reply.text, ' ');
          g_string_append (c->reply.text, text);
        }
      if (last)
        break;
    }
  if (c->reply.code == 421)
    {
      g_set_error (error, PMX_SMTP_ERROR, PMX_SMTP_ERROR_CLOSED,
                   "%s:%u: the server is closing the connection (in %s): 421 %s%s%s",
                   c->host, c->port, smtp_state_names[c->state],
                   c->reply.enhanced != NULL ? c->reply.enhanced : "",
                   c->reply.enhanced != NULL ? " " : "", c->reply.text->str);
      smtp_close (c);
      return FALSE;
    }
  return TRUE;
}

/* smtp_send_line - write one command with CRLF; @shown is what the
 * transcript says instead of the line (NULL: the line itself) */
static gboolean
smtp_send_line (PmxSmtpClient *c,
                const char    *line,
                const char    *shown,
                GError       **error)
{
  g_autofree char *wire = g_strconcat (line, "\r\n", NULL);
  gboolean ok;

  smtp_note (c, 'C', "%s", shown != NULL ? shown : line);
  ok = smtp_write_all (c, wire, strlen (wire), error);
  if (shown != NULL)
    explicit_bzero (wire, strlen (wire));
  return ok;
}

/* smtp_command - enter @state, send @line, read the reply */
static gboolean
smtp_command (PmxSmtpClient *c,
              SmtpState      state,
              const char    *line,
              GError       **error)
{
  smtp_state (c, state);
  return smtp_send_line (c, line, NULL, error) && smtp_read_reply (c, error);
}

/* smtp_reply_error - a GError quoting the current reply */
static void
smtp_reply_error (PmxSmtpClient *c,
                  GError       **error,
                  PmxSmtpError   code,
                  const char    *what)
{
  g_set_error (error, PMX_SMTP_ERROR, code, "%s:%u: %s: %u %s%s%s", c->host, c->port, what,
               c->reply.code, c->reply.enhanced != NULL ? c->reply.enhanced : "",
               c->reply.enhanced != NULL ? " " : "", c->reply.text->str);
}

/* ---------------------------------------------------------------------- */
/* connecting                                                               */

/* smtp_tcp_connect - resolve and connect, trying each address in turn */
static gboolean
smtp_tcp_connect (PmxSmtpClient *c,
                  GError       **error)
{
  struct addrinfo hints = { .ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM,
                            .ai_flags = AI_ADDRCONFIG };
  struct addrinfo *res = NULL;
  char port[8];
  int rc, last_err = 0;
  guint index = 0;
  gboolean timed_out = FALSE;
  g_autoptr(GPtrArray) addresses = g_ptr_array_new_with_free_func (g_free);

  g_snprintf (port, sizeof port, "%u", c->port);
  rc = getaddrinfo (c->host, port, &hints, &res);
  if (rc != 0)
    {
      smtp_note (c, '*', "cannot resolve %s: %s", c->host, gai_strerror (rc));
      g_set_error (error, PMX_SMTP_ERROR, PMX_SMTP_ERROR_RESOLVE,
                   "cannot resolve %s: %s — check the host name and the DNS", c->host,
                   rc == EAI_SYSTEM ? g_strerror (errno) : gai_strerror (rc));
      return FALSE;
    }

  for (struct addrinfo *ai = res; ai != NULL; ai = ai->ai_next)
    {
      char addr[INET6_ADDRSTRLEN] = "?";
      const void *in = ai->ai_family == AF_INET6
                         ? (const void *) &((struct sockaddr_in6 *) ai->ai_addr)->sin6_addr
                         : (const void *) &((struct sockaddr_in *) ai->ai_addr)->sin_addr;
      inet_ntop (ai->ai_family, in, addr, sizeof addr);
      g_ptr_array_add (addresses, g_strdup (addr));
    }
  if (c->probe != NULL)
    {
      g_strfreev (c->probe->addresses);
      g_ptr_array_add (addresses, NULL);
      c->probe->addresses = g_strdupv ((char **) addresses->pdata);
      g_ptr_array_remove_index (addresses, addresses->len - 1);
    }

  for (struct addrinfo *ai = res; ai != NULL && c->fd < 0; ai = ai->ai_next, index++)
    {
      const char *addr = g_ptr_array_index (addresses, index);
      gint64 deadline = g_get_monotonic_time () + c->connect_timeout;
      int fd = socket (ai->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
      int one = 1, soerr = 0;
      socklen_t slen = sizeof soerr;
      g_autoptr(GError) wait_error = NULL;

      if (fd < 0)
        {
          last_err = errno;
          continue;
        }
      c->fd = fd;
      if (connect (fd, ai->ai_addr, ai->ai_addrlen) != 0 && errno != EINPROGRESS)
        soerr = errno;
      else if (!smtp_wait (c, POLLOUT, deadline, &wait_error))
        {
          timed_out = TRUE;
          soerr = ETIMEDOUT;
        }
      else if (getsockopt (fd, SOL_SOCKET, SO_ERROR, &soerr, &slen) != 0)
        soerr = errno;
      if (soerr != 0)
        {
          smtp_note (c, '*', "connect to %s port %u: %s", addr, c->port, g_strerror (soerr));
          last_err = soerr;
          close (fd);
          c->fd = -1;
          continue;
        }
      setsockopt (fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
      smtp_note (c, '*', "connected to %s port %u", addr, c->port);
      if (c->probe != NULL)
        c->probe->connected_to = g_strdup_printf (ai->ai_family == AF_INET6 ? "[%s]:%u" : "%s:%u",
                                                  addr, c->port);
    }
  freeaddrinfo (res);
  if (c->fd >= 0)
    return TRUE;
  if (timed_out && last_err == ETIMEDOUT)
    g_set_error (error, PMX_SMTP_ERROR, PMX_SMTP_ERROR_TIMEOUT,
                 "cannot connect to %s port %u: no answer within %" G_GINT64_FORMAT " s — "
                 "check the host, the port and any firewall on the way",
                 c->host, c->port, c->connect_timeout / G_USEC_PER_SEC);
  else
    g_set_error (error, PMX_SMTP_ERROR, PMX_SMTP_ERROR_CONNECT,
                 "cannot connect to %s port %u: %s — check the host and the port",
                 c->host, c->port, g_strerror (last_err));
  return FALSE;
}

/* smtp_x509_name - an X509 name in RFC 2253 form */
static char *
smtp_x509_name (const X509_NAME *name)
{
  BIO *bio = BIO_new (BIO_s_mem ());
  char *data = NULL;
  long len;
  char *out;

  X509_NAME_print_ex (bio, name, 0, XN_FLAG_RFC2253);
  len = BIO_get_mem_data (bio, &data);
  out = g_strndup (data, (gsize) MAX (len, 0));
  BIO_free (bio);
  return out;
}

/* smtp_tls_describe - note the TLS version, cipher and certificate, and
 * fill the probe */
static void
smtp_tls_describe (PmxSmtpClient *c)
{
  X509 *cert = SSL_get1_peer_certificate (c->ssl);
  long vr = SSL_get_verify_result (c->ssl);
  g_autofree char *subject = NULL;
  g_autofree char *issuer = NULL;
  char not_after[32] = "";

  if (cert != NULL)
    {
      struct tm tm;

      subject = smtp_x509_name (X509_get_subject_name (cert));
      issuer = smtp_x509_name (X509_get_issuer_name (cert));
      if (ASN1_TIME_to_tm (X509_get0_notAfter (cert), &tm) == 1)
        strftime (not_after, sizeof not_after, "%Y-%m-%dT%H:%M:%SZ", &tm);
    }
  smtp_note (c, '*', "TLS %s, cipher %s", SSL_get_version (c->ssl), SSL_get_cipher_name (c->ssl));
  if (cert != NULL)
    smtp_note (c, '*', "certificate subject \"%s\", issuer \"%s\", expires %s, verification: %s",
               subject, issuer, not_after, X509_verify_cert_error_string (vr));
  if (c->probe != NULL)
    {
      PmxSmtpProbe *p = c->probe;

      g_free (p->tls_version);
      p->tls_version = g_strdup (SSL_get_version (c->ssl));
      g_free (p->tls_cipher);
      p->tls_cipher = g_strdup (SSL_get_cipher_name (c->ssl));
      g_free (p->cert_subject);
      p->cert_subject = g_steal_pointer (&subject);
      g_free (p->cert_issuer);
      p->cert_issuer = g_steal_pointer (&issuer);
      g_free (p->cert_not_after);
      p->cert_not_after = not_after[0] != '\0' ? g_strdup (not_after) : NULL;
      p->cert_verified = cert != NULL && vr == X509_V_OK;
      g_free (p->verify_result);
      p->verify_result = g_strdup (cert != NULL ? X509_verify_cert_error_string (vr)
                                                : "the server sent no certificate");
    }
  X509_free (cert);
}

/* smtp_ssl_ctx - the client's TLS context, made once */
static gboolean
smtp_ssl_ctx (PmxSmtpClient *c,
              GError       **error)
{
  if (c->ssl_ctx != NULL)
    return TRUE;
  c->ssl_ctx = SSL_CTX_new (TLS_client_method ());
  if (c->ssl_ctx == NULL)
    {
      smtp_tls_error (c, error, "setup");
      return FALSE;
    }
  SSL_CTX_set_min_proto_version (c->ssl_ctx, c->tls_min_version == PMX_SMTP_TLS_1_3
                                               ? TLS1_3_VERSION : TLS1_2_VERSION);
  SSL_CTX_set_mode (c->ssl_ctx, SSL_MODE_AUTO_RETRY);
  if (SSL_CTX_set_default_verify_paths (c->ssl_ctx) != 1)
    ERR_clear_error ();
  if (c->ca_file != NULL && SSL_CTX_load_verify_locations (c->ssl_ctx, c->ca_file, NULL) != 1)
    {
      unsigned long e = ERR_get_error ();
      char buf[256] = "";

      ERR_error_string_n (e, buf, sizeof buf);
      ERR_clear_error ();
      SSL_CTX_free (c->ssl_ctx);
      c->ssl_ctx = NULL;
      g_set_error (error, PMX_SMTP_ERROR, PMX_SMTP_ERROR_CERTIFICATE,
                   "cannot load ca_file %s: %s — give the path of a PEM file of CA certificates",
                   c->ca_file, buf);
      return FALSE;
    }
  return TRUE;
}

/* smtp_tls_start - TLS handshake on the connected socket, then verify */
static gboolean
smtp_tls_start (PmxSmtpClient *c,
                GError       **error)
{
  gint64 deadline;
  struct in6_addr a6;
  struct in_addr a4;
  gboolean literal = inet_pton (AF_INET, c->host, &a4) == 1 || inet_pton (AF_INET6, c->host, &a6) == 1;
  /* A probe finishes the handshake to show the certificate, then judges. */
  gboolean verify_in_handshake = c->tls_verify && c->probe == NULL;
  X509 *cert;
  long vr;

  if (!smtp_ssl_ctx (c, error))
    return FALSE;
  smtp_state (c, SMTP_STATE_TLS_HANDSHAKE);
  deadline = g_get_monotonic_time () + smtp_phase_timeout (c);
  c->ssl = SSL_new (c->ssl_ctx);
  SSL_set_fd (c->ssl, c->fd);
  SSL_set_verify (c->ssl, verify_in_handshake ? SSL_VERIFY_PEER : SSL_VERIFY_NONE, NULL);
  if (literal)
    X509_VERIFY_PARAM_set1_ip_asc (SSL_get0_param (c->ssl), c->host);
  else
    {
      SSL_set_tlsext_host_name (c->ssl, c->host);
      SSL_set1_host (c->ssl, c->host);
    }

  for (;;)
    {
      int rc, err;

      ERR_clear_error ();
      rc = SSL_connect (c->ssl);
      if (rc == 1)
        break;
      err = SSL_get_error (c->ssl, rc);
      if (err == SSL_ERROR_WANT_READ || err == SSL_ERROR_WANT_WRITE)
        {
          if (!smtp_wait (c, err == SSL_ERROR_WANT_READ ? POLLIN : POLLOUT, deadline, error))
            return FALSE;
          continue;
        }
      vr = SSL_get_verify_result (c->ssl);
      if (verify_in_handshake && vr != X509_V_OK)
        {
          ERR_clear_error ();
          smtp_note (c, '*', "TLS handshake failed: certificate verification: %s",
                     X509_verify_cert_error_string (vr));
          g_set_error (error, PMX_SMTP_ERROR, PMX_SMTP_ERROR_CERTIFICATE,
                       "%s:%u: the server's certificate is not trusted: %s — give the issuing "
                       "CA in ca_file, fix the server's certificate, or (only for testing) set "
                       "tls_verify to false", c->host, c->port, X509_verify_cert_error_string (vr));
          return FALSE;
        }
      smtp_tls_error (c, error, "handshake");
      smtp_note (c, '*', "TLS handshake failed");
      return FALSE;
    }

  smtp_tls_describe (c);
  cert = SSL_get1_peer_certificate (c->ssl);
  vr = SSL_get_verify_result (c->ssl);
  X509_free (cert);
  if (c->tls_verify && (cert == NULL || vr != X509_V_OK))
    {
      g_set_error (error, PMX_SMTP_ERROR, PMX_SMTP_ERROR_CERTIFICATE,
                   "%s:%u: the server's certificate is not trusted: %s — give the issuing "
                   "CA in ca_file, fix the server's certificate, or (only for testing) set "
                   "tls_verify to false", c->host, c->port,
                   cert == NULL ? "no certificate" : X509_verify_cert_error_string (vr));
      return FALSE;
    }
  return TRUE;
}

/* smtp_ehlo - EHLO (HELO when EHLO is refused with 5xx) and read the
 * capabilities */
static gboolean
smtp_ehlo (PmxSmtpClient *c,
           GError       **error)
{
  g_autofree char *ehlo = g_strdup_printf ("EHLO %s", c->helo_name);
  SmtpCaps *caps = &c->caps;

  smtp_caps_clear (caps);
  if (!smtp_command (c, SMTP_STATE_EHLO, ehlo, error))
    return FALSE;
  if (c->reply.code / 100 == 5)
    {
      g_autofree char *helo = g_strdup_printf ("HELO %s", c->helo_name);

      if (!smtp_command (c, SMTP_STATE_HELO, helo, error))
        return FALSE;
      if (c->reply.code / 100 != 2)
        {
          smtp_reply_error (c, error, PMX_SMTP_ERROR_REJECTED, "HELO refused");
          return FALSE;
        }
      return TRUE;
    }
  if (c->reply.code / 100 != 2)
    {
      smtp_reply_error (c, error, PMX_SMTP_ERROR_REJECTED, "EHLO refused");
      return FALSE;
    }

  caps->esmtp = TRUE;
  for (guint i = 1; i < c->reply.lines->len; i++)
    {
      const char *line = g_ptr_array_index (c->reply.lines, i);
      g_auto(GStrv) words = g_strsplit (line, " ", -1);
      g_autofree char *kw = g_ascii_strup (words[0] != NULL ? words[0] : "", -1);

      g_ptr_array_add (caps->lines, g_strdup (line));
      if (g_str_equal (kw, "STARTTLS"))
        caps->starttls = TRUE;
      else if (g_str_equal (kw, "PIPELINING"))
        caps->pipelining = TRUE;
      else if (g_str_equal (kw, "8BITMIME"))
        caps->eightbitmime = TRUE;
      else if (g_str_equal (kw, "SMTPUTF8"))
        caps->smtputf8 = TRUE;
      else if (g_str_equal (kw, "ENHANCEDSTATUSCODES"))
        caps->enhanced = TRUE;
      else if (g_str_equal (kw, "SIZE") && words[1] != NULL)
        caps->size = g_ascii_strtoull (words[1], NULL, 10);
      else if (g_str_equal (kw, "AUTH") || g_str_has_prefix (kw, "AUTH="))
        {
          /* "AUTH=PLAIN LOGIN" is the pre-RFC form some servers still send. */
          if (g_str_has_prefix (kw, "AUTH="))
            {
              g_free (words[0]);
              words[0] = g_strdup (line + 5);
            }
          else
            {
              g_free (words[0]);
              words[0] = g_strdup ("");
            }
          for (guint w = 0; words[w] != NULL; w++)
            {
              g_autofree char *mech = g_ascii_strup (words[w], -1);

              if (mech[0] != '\0' && !g_ptr_array_find_with_equal_func (caps->auth, mech, g_str_equal, NULL))
                g_ptr_array_add (caps->auth, g_steal_pointer (&mech));
            }
        }
    }
  return TRUE;
}

/* smtp_caps_strv - the EHLO lines as a strv (transfer full) */
static char **
smtp_caps_strv (SmtpCaps *caps)
{
  char **v = g_new0 (char *, caps->lines->len + 1);

  for (guint i = 0; i < caps->lines->len; i++)
    v[i] = g_strdup (g_ptr_array_index (caps->lines, i));
  return v;
}

/* smtp_auth_offered - the server's mechanisms, space-separated */
static char *
smtp_auth_offered (PmxSmtpClient *c)
{
  GString *s = g_string_new (NULL);

  for (guint i = 0; i < c->caps.auth->len; i++)
    g_string_append_printf (s, "%s%s", i > 0 ? " " : "", (char *) g_ptr_array_index (c->caps.auth, i));
  return g_string_free (s, FALSE);
}

/* smtp_mech_offered - does the server offer @mech? */
static gboolean
smtp_mech_offered (PmxSmtpClient *c,
                   SmtpMech       mech)
{
  return g_ptr_array_find_with_equal_func (c->caps.auth, smtp_mech_names[mech], g_str_equal, NULL);
}

/* smtp_mech_choose - the mechanism to use, or SMTP_MECH_NONE with @error */
static SmtpMech
smtp_mech_choose (PmxSmtpClient *c,
                  GError       **error)
{
  static const SmtpMech strongest_first[] = { SMTP_MECH_CRAM_MD5, SMTP_MECH_PLAIN, SMTP_MECH_LOGIN };
  gboolean encrypted = c->ssl != NULL;
  g_autofree char *offered = smtp_auth_offered (c);
  SmtpMech mech = SMTP_MECH_NONE;

  switch (c->auth)
    {
    case PMX_SMTP_AUTH_AUTO:
      for (guint i = 0; i < G_N_ELEMENTS (strongest_first) && mech == SMTP_MECH_NONE; i++)
        if (smtp_mech_offered (c, strongest_first[i])
            && (strongest_first[i] == SMTP_MECH_CRAM_MD5 || encrypted || c->allow_plaintext_auth))
          mech = strongest_first[i];
      if (mech != SMTP_MECH_NONE)
        return mech;
      if (c->caps.auth->len == 0)
        g_set_error (error, PMX_SMTP_ERROR, PMX_SMTP_ERROR_AUTH_UNAVAILABLE,
                     "%s:%u: the server offers no AUTH%s — remove username, or check host and "
                     "security", c->host, c->port,
                     encrypted ? "" : " on this unencrypted connection (many servers offer it only after STARTTLS)");
      else if (!encrypted && (smtp_mech_offered (c, SMTP_MECH_PLAIN) || smtp_mech_offered (c, SMTP_MECH_LOGIN)))
        g_set_error (error, PMX_SMTP_ERROR, PMX_SMTP_ERROR_AUTH_UNAVAILABLE,
                     "%s:%u: the server offers AUTH %s, but the connection is not encrypted: "
                     "refusing to send the password in clear — use security starttls or tls, or "
                     "set allow_plaintext_auth", c->host, c->port, offered);
      else
        g_set_error (error, PMX_SMTP_ERROR, PMX_SMTP_ERROR_AUTH_UNAVAILABLE,
                     "%s:%u: the server offers AUTH %s, and none of CRAM-MD5, PLAIN, LOGIN — "
                     "use a transport for those mechanisms (oauth2-smtp for XOAUTH2)",
                     c->host, c->port, offered);
      return SMTP_MECH_NONE;
    case PMX_SMTP_AUTH_PLAIN:
      mech = SMTP_MECH_PLAIN;
      break;
    case PMX_SMTP_AUTH_LOGIN:
      mech = SMTP_MECH_LOGIN;
      break;
    case PMX_SMTP_AUTH_CRAM_MD5:
      mech = SMTP_MECH_CRAM_MD5;
      break;
    case PMX_SMTP_AUTH_XOAUTH2:
      mech = SMTP_MECH_XOAUTH2;
      break;
    case PMX_SMTP_AUTH_OAUTHBEARER:
      mech = SMTP_MECH_OAUTHBEARER;
      break;
    case PMX_SMTP_AUTH_NONE:
    default:
      return SMTP_MECH_NONE;
    }
  if (!smtp_mech_offered (c, mech))
    {
      g_set_error (error, PMX_SMTP_ERROR, PMX_SMTP_ERROR_AUTH_UNAVAILABLE,
                   "%s:%u: auth is %s, but the server offers %s%s — set auth to one it offers, or auto",
                   c->host, c->port, smtp_mech_names[mech],
                   offered[0] != '\0' ? "AUTH " : "no AUTH at all", offered);
      return SMTP_MECH_NONE;
    }
  if (mech != SMTP_MECH_CRAM_MD5 && !encrypted && !c->allow_plaintext_auth)
    {
      g_set_error (error, PMX_SMTP_ERROR, PMX_SMTP_ERROR_AUTH_UNAVAILABLE,
                   "%s:%u: refusing AUTH %s on an unencrypted connection — use security "
                   "starttls or tls, or set allow_plaintext_auth", c->host, c->port,
                   smtp_mech_names[mech]);
      return SMTP_MECH_NONE;
    }
  return mech;
}

/* smtp_b64 - base64 of a string (transfer full) */
static char *
smtp_b64 (const char *s)
{
  return g_base64_encode ((const guchar *) s, strlen (s));
}

/* smtp_wipe_free - wipe and free a string that held a secret */
static void
smtp_wipe_free (char *s)
{
  if (s != NULL)
    explicit_bzero (s, strlen (s));
  g_free (s);
}

char *
pmx_smtp_sasl_plain (const char *user,
                     const char *password)
{
  gsize ul, pl;
  char *raw, *out;

  g_return_val_if_fail (user != NULL && password != NULL, NULL);
  ul = strlen (user);
  pl = strlen (password);
  raw = g_malloc (ul + pl + 2);
  raw[0] = '\0';
  memcpy (raw + 1, user, ul);
  raw[ul + 1] = '\0';
  memcpy (raw + ul + 2, password, pl);
  out = g_base64_encode ((const guchar *) raw, ul + pl + 2);
  explicit_bzero (raw, ul + pl + 2);
  g_free (raw);
  return out;
}

char *
pmx_smtp_sasl_cram_md5 (const char   *user,
                        const char   *password,
                        const guint8 *challenge,
                        gsize         challenge_len)
{
  g_autofree char *digest = NULL;
  char *raw, *out;

  g_return_val_if_fail (user != NULL && password != NULL, NULL);
  digest = g_compute_hmac_for_data (G_CHECKSUM_MD5, (const guchar *) password, strlen (password),
                                    challenge, challenge_len);
  raw = g_strdup_printf ("%s %s", user, digest);
  out = smtp_b64 (raw);
  smtp_wipe_free (raw);
  return out;
}

char *
pmx_smtp_sasl_xoauth2 (const char *user,
                       const char *token)
{
  char *raw, *out;

  g_return_val_if_fail (user != NULL && token != NULL, NULL);
  raw = g_strdup_printf ("user=%s\001auth=Bearer %s\001\001", user, token);
  out = smtp_b64 (raw);
  smtp_wipe_free (raw);
  return out;
}

char *
pmx_smtp_sasl_oauthbearer (const char *user,
                           const char *host,
                           guint       port,
                           const char *token)
{
  GString *raw;
  char *out;

  g_return_val_if_fail (user != NULL && token != NULL, NULL);
  raw = g_string_new ("n,a=");
  /* RFC 5801 saslname: ',' and '=' escaped */
  for (const char *p = user; *p != '\0'; p++)
    {
      if (*p == ',')
        g_string_append (raw, "=2C");
      else if (*p == '=')
        g_string_append (raw, "=3D");
      else
        g_string_append_c (raw, *p);
    }
  g_string_append (raw, ",\001");
  if (host != NULL)
    g_string_append_printf (raw, "host=%s\001", host);
  if (port != 0)
    g_string_append_printf (raw, "port=%u\001", port);
  g_string_append_printf (raw, "auth=Bearer %s\001\001", token);
  out = g_base64_encode ((const guchar *) raw->str, raw->len);
  explicit_bzero (raw->str, raw->len);
  g_string_free (raw, TRUE);
  return out;
}

/* smtp_sasl_step - the response to challenge number @step of @mech
 * (transfer full, a secret); @shown says what the transcript shows */
static char *
smtp_sasl_step (PmxSmtpClient *c,
                SmtpMech       mech,
                guint          step,
                const char    *challenge_b64,
                const char   **shown)
{
  const char *user = c->username != NULL ? c->username : "";
  const char *secret = c->secret != NULL ? c->secret : "";

  *shown = "<redacted>";
  switch (mech)
    {
    case SMTP_MECH_LOGIN:
      if (step == 0)
        return smtp_b64 (user);
      if (step == 1)
        return smtp_b64 (secret);
      break;
    case SMTP_MECH_CRAM_MD5:
      if (step == 0)
        {
          gsize len = 0;
          g_autofree guchar *challenge = g_base64_decode (challenge_b64, &len);

          return pmx_smtp_sasl_cram_md5 (user, secret, challenge, len);
        }
      break;
    case SMTP_MECH_XOAUTH2:
      /* A 334 after the token carries the error JSON: an empty line ends it. */
      *shown = "";
      return g_strdup ("");
    case SMTP_MECH_OAUTHBEARER:
      /* RFC 7628 3.2.3: the client answers the error with a lone ^A. */
      *shown = "AQ==";
      return g_strdup ("AQ==");
    case SMTP_MECH_PLAIN:
    case SMTP_MECH_NONE:
    default:
      break;
    }
  *shown = "*";
  return g_strdup ("*");
}

/* smtp_auth - authenticate when configured to */
static gboolean
smtp_auth (PmxSmtpClient *c,
           GError       **error)
{
  const char *user = c->username != NULL ? c->username : "";
  const char *secret = c->secret != NULL ? c->secret : "";
  g_autoptr(GError) local_error = NULL;
  char *initial = NULL;
  char *line;
  g_autofree char *shown = NULL;
  SmtpMech mech;
  gboolean ok;
  guint step;

  if (c->auth == PMX_SMTP_AUTH_NONE || (c->auth == PMX_SMTP_AUTH_AUTO && c->username == NULL))
    return TRUE;
  smtp_state (c, SMTP_STATE_AUTH);
  mech = smtp_mech_choose (c, &local_error);
  if (mech == SMTP_MECH_NONE)
    {
      smtp_note (c, '*', "%s", local_error->message);
      g_propagate_error (error, g_steal_pointer (&local_error));
      return FALSE;
    }
  if (c->probe != NULL)
    c->probe->auth_mechanism = g_strdup (smtp_mech_names[mech]);

  /* RFC 4954 initial responses where the mechanism starts with one. */
  if (mech == SMTP_MECH_PLAIN)
    initial = pmx_smtp_sasl_plain (user, secret);
  else if (mech == SMTP_MECH_XOAUTH2)
    initial = pmx_smtp_sasl_xoauth2 (user, secret);
  else if (mech == SMTP_MECH_OAUTHBEARER)
    initial = pmx_smtp_sasl_oauthbearer (user, c->host, c->port, secret);
  if (initial != NULL)
    {
      line = g_strdup_printf ("AUTH %s %s", smtp_mech_names[mech], initial);
      shown = g_strdup_printf ("AUTH %s <redacted>", smtp_mech_names[mech]);
      smtp_wipe_free (initial);
    }
  else
    line = g_strdup_printf ("AUTH %s", smtp_mech_names[mech]);
  ok = smtp_send_line (c, line, shown, error);
  smtp_wipe_free (line);
  if (!ok)
    return FALSE;

  for (step = 0;; step++)
    {
      const char *resp_shown = NULL;
      char *resp;

      if (!smtp_read_reply (c, error))
        return FALSE;
      if (c->reply.code != 334)
        break;
      resp = step < SMTP_SASL_STEPS_MAX
               ? smtp_sasl_step (c, mech, step,
                                 c->reply.lines->len > 0 ? g_ptr_array_index (c->reply.lines, 0) : "",
                                 &resp_shown)
               : g_strdup ("*");
      ok = smtp_send_line (c, resp, resp_shown != NULL ? resp_shown : "*", error);
      smtp_wipe_free (resp);
      if (!ok)
        return FALSE;
    }

  if (c->probe != NULL)
    {
      c->probe->auth_ok = c->reply.code == 235;
      c->probe->auth_code = c->reply.code;
      c->probe->auth_enhanced = g_strdup (c->reply.enhanced);
      c->probe->auth_text = g_strdup (c->reply.text->str);
    }
  if (c->reply.code / 100 == 2)
    {
      c->auth_done = mech;
      return TRUE;
    }
  {
    g_autofree char *what = g_strdup_printf ("AUTH %s as %s refused", smtp_mech_names[mech], user);

    smtp_reply_error (c, error,
                      c->reply.code / 100 == 4 ? PMX_SMTP_ERROR_AUTH_TEMPORARY
                      : c->reply.code == 504 ? PMX_SMTP_ERROR_AUTH_UNAVAILABLE
                      : PMX_SMTP_ERROR_AUTH_FAILED, what);
  }
  return FALSE;
}

/* smtp_quit - say QUIT and close; best effort, with a short wait.  The
 * last reply stays the one that led here, not QUIT's 221. */
static void
smtp_quit (PmxSmtpClient *c)
{
  if (c->fd >= 0 && c->state != SMTP_STATE_DISCONNECTED)
    {
      gint64 saved = c->command_timeout;
      guint code = c->reply.code;
      g_autofree char *enhanced = g_strdup (c->reply.enhanced);
      g_autofree char *text = g_strdup (c->reply.text->str);

      c->command_timeout = MIN (c->command_timeout, 2 * G_USEC_PER_SEC);
      if (smtp_command (c, SMTP_STATE_QUIT, "QUIT", NULL) && c->ssl != NULL)
        {
          ERR_clear_error ();
          SSL_shutdown (c->ssl);
          ERR_clear_error ();
        }
      c->command_timeout = saved;
      smtp_reply_reset (&c->reply);
      c->reply.code = code;
      c->reply.enhanced = g_steal_pointer (&enhanced);
      g_string_assign (c->reply.text, text);
    }
  smtp_close (c);
}

/* smtp_open - connect, TLS, greeting, EHLO, STARTTLS, EHLO, AUTH */
static gboolean
smtp_open (PmxSmtpClient *c,
           GError       **error)
{
  gboolean polite = FALSE;   /* on failure: QUIT first, the dialogue is intact */

  smtp_close (c);
  smtp_reply_reset (&c->reply);
  smtp_state (c, SMTP_STATE_CONNECT);
  if (!smtp_tcp_connect (c, error))
    goto fail;
  c->n_connections++;
  if (c->security == PMX_SMTP_SECURITY_TLS && !smtp_tls_start (c, error))
    goto fail;

  smtp_state (c, SMTP_STATE_GREETING);
  if (!smtp_read_reply (c, error))
    goto fail;
  if (c->reply.code != 220)
    {
      smtp_reply_error (c, error, PMX_SMTP_ERROR_REJECTED, "the server refused the session");
      goto fail;
    }
  if (!smtp_ehlo (c, error))
    goto fail;
  polite = TRUE;
  if (c->probe != NULL)
    c->probe->caps_before_tls = smtp_caps_strv (&c->caps);

  if (c->ssl == NULL && (c->security == PMX_SMTP_SECURITY_STARTTLS
                         || c->security == PMX_SMTP_SECURITY_OPPORTUNISTIC))
    {
      if (!c->caps.starttls)
        {
          if (c->security == PMX_SMTP_SECURITY_STARTTLS)
            {
              smtp_note (c, '*', "STARTTLS not offered: refusing to continue in plaintext");
              g_set_error (error, PMX_SMTP_ERROR, PMX_SMTP_ERROR_STARTTLS_UNAVAILABLE,
                           "%s:%u: the server does not offer STARTTLS, and security is "
                           "starttls: refusing to continue without TLS (no credentials were "
                           "sent) — check host and port (465 is implicit TLS: security tls)",
                           c->host, c->port);
              goto fail;
            }
          smtp_note (c, '*', "STARTTLS not offered: continuing without TLS (opportunistic)");
        }
      else
        {
          if (!smtp_command (c, SMTP_STATE_STARTTLS, "STARTTLS", error))
            goto fail;
          if (c->reply.code != 220)
            {
              if (c->security == PMX_SMTP_SECURITY_STARTTLS)
                {
                  smtp_reply_error (c, error, c->reply.code / 100 == 4 ? PMX_SMTP_ERROR_REJECTED
                                                                      : PMX_SMTP_ERROR_STARTTLS_UNAVAILABLE,
                                    "STARTTLS refused");
                  goto fail;
                }
              smtp_note (c, '*', "STARTTLS refused: continuing without TLS (opportunistic)");
            }
          else
            {
              /* Anything already buffered was sent before TLS: an injection. */
              if (c->rpos != c->rlen)
                {
                  polite = FALSE;
                  g_set_error (error, PMX_SMTP_ERROR, PMX_SMTP_ERROR_PROTOCOL,
                               "%s:%u: the server sent data after its STARTTLS reply, before "
                               "the TLS handshake: refusing the connection", c->host, c->port);
                  goto fail;
                }
              polite = FALSE;
              if (!smtp_tls_start (c, error))
                goto fail;
              /* RFC 3207 4.2: forget everything learnt before TLS. */
              if (!smtp_ehlo (c, error))
                goto fail;
              polite = TRUE;
              if (c->probe != NULL)
                c->probe->caps_after_tls = smtp_caps_strv (&c->caps);
            }
        }
    }

  if (c->probe != NULL)
    {
      g_strfreev (c->probe->auth_offered);
      c->probe->auth_offered = g_new0 (char *, c->caps.auth->len + 1);
      for (guint i = 0; i < c->caps.auth->len; i++)
        c->probe->auth_offered[i] = g_strdup (g_ptr_array_index (c->caps.auth, i));
    }
  if (!smtp_auth (c, error))
    goto fail;
  smtp_state (c, SMTP_STATE_READY);
  c->n_messages = 0;
  c->need_rset = FALSE;
  c->last_used = g_get_monotonic_time ();
  return TRUE;

fail:
  if (polite && c->fd >= 0)
    smtp_quit (c);
  else
    smtp_close (c);
  return FALSE;
}

/* ---------------------------------------------------------------------- */
/* public: lifecycle                                                         */

PmxSmtpClient *
pmx_smtp_client_new (const PmxSmtpConfig *config)
{
  static const guint16 default_ports[] = { 25, 587, 465, 25 };
  PmxSmtpClient *c;

  g_return_val_if_fail (config != NULL && config->host != NULL, NULL);
  g_return_val_if_fail ((guint) config->security <= PMX_SMTP_SECURITY_OPPORTUNISTIC, NULL);

  c = g_new0 (PmxSmtpClient, 1);
  c->trace = !g_log_writer_default_would_drop (G_LOG_LEVEL_DEBUG, G_LOG_DOMAIN);
  c->host = g_strdup (config->host);
  c->security = config->security;
  c->port = config->port != 0 ? config->port : default_ports[config->security];
  c->helo_name = g_strdup (config->helo_name != NULL ? config->helo_name : g_get_host_name ());
  c->tls_verify = config->tls_verify;
  c->ca_file = g_strdup (config->ca_file);
  c->tls_min_version = config->tls_min_version;
  c->connect_timeout = (gint64) (config->connect_timeout_ms != 0 ? config->connect_timeout_ms : 30000) * 1000;
  c->command_timeout = (gint64) (config->command_timeout_ms != 0 ? config->command_timeout_ms : 300000) * 1000;
  c->data_timeout = (gint64) (config->data_timeout_ms != 0 ? config->data_timeout_ms : 600000) * 1000;
  c->auth = config->auth;
  c->username = g_strdup (config->username);
  c->secret = g_strdup (config->secret);
  c->allow_plaintext_auth = config->allow_plaintext_auth;
  c->max_messages = config->max_messages_per_connection;
  c->transcript_limit = config->transcript_limit != 0 ? config->transcript_limit : SMTP_TRANSCRIPT_LIMIT;
  c->fd = -1;
  c->state = SMTP_STATE_DISCONNECTED;
  c->caps.lines = g_ptr_array_new_with_free_func (g_free);
  c->caps.auth = g_ptr_array_new_with_free_func (g_free);
  c->reply.text = g_string_new (NULL);
  c->reply.lines = g_ptr_array_new_with_free_func (g_free);
  c->transcript = g_string_new (NULL);
  return c;
}

void
pmx_smtp_client_free (PmxSmtpClient *c)
{
  if (c == NULL)
    return;
  smtp_quit (c);
  if (c->ssl_ctx != NULL)
    SSL_CTX_free (c->ssl_ctx);
  g_free (c->host);
  g_free (c->helo_name);
  g_free (c->ca_file);
  g_free (c->username);
  smtp_wipe_free (c->secret);
  g_ptr_array_unref (c->caps.lines);
  g_ptr_array_unref (c->caps.auth);
  g_free (c->reply.enhanced);
  g_string_free (c->reply.text, TRUE);
  g_ptr_array_unref (c->reply.lines);
  g_string_free (c->transcript, TRUE);
  g_free (c);
}

void
pmx_smtp_client_set_secret (PmxSmtpClient *c,
                            const char    *secret)
{
  g_return_if_fail (c != NULL);
  smtp_wipe_free (c->secret);
  c->secret = g_strdup (secret);
}

gboolean
pmx_smtp_client_connect (PmxSmtpClient *c,
                         GError       **error)
{
  g_return_val_if_fail (c != NULL, FALSE);
  g_return_val_if_fail (error == NULL || *error == NULL, FALSE);

  if (c->state != SMTP_STATE_DISCONNECTED)
    return TRUE;
  return smtp_open (c, error);
}

void
pmx_smtp_client_disconnect (PmxSmtpClient *c)
{
  g_return_if_fail (c != NULL);
  smtp_quit (c);
}

gboolean
pmx_smtp_client_is_connected (PmxSmtpClient *c)
{
  g_return_val_if_fail (c != NULL, FALSE);
  return c->state != SMTP_STATE_DISCONNECTED;
}

guint
pmx_smtp_client_get_last_reply (PmxSmtpClient *c,
                                const char   **out_enhanced,
                                const char   **out_text)
{
  g_return_val_if_fail (c != NULL, 0);
  if (out_enhanced != NULL)
    *out_enhanced = c->reply.enhanced;
  if (out_text != NULL)
    *out_text = c->reply.text->str;
  return c->reply.code;
}

char *
pmx_smtp_client_take_transcript (PmxSmtpClient *c)
{
  char *out;

  g_return_val_if_fail (c != NULL, NULL);
  out = g_strndup (c->transcript->str, c->transcript->len);
  g_string_truncate (c->transcript, 0);
  c->transcript_full = FALSE;
  return out;
}

const char *
pmx_smtp_client_get_auth_mechanism (PmxSmtpClient *c)
{
  g_return_val_if_fail (c != NULL, NULL);
  return smtp_mech_names[c->auth_done];
}

guint
pmx_smtp_client_get_n_connections (PmxSmtpClient *c)
{
  g_return_val_if_fail (c != NULL, 0);
  return c->n_connections;
}

/* ---------------------------------------------------------------------- */
/* sending                                                                   */

/* smtp_server_spoke - has the idle server sent something (a 421 on its
 * timeout) or closed?  Then the connection cannot be reused. */
static gboolean
smtp_server_spoke (PmxSmtpClient *c)
{
  struct pollfd pfd = { .fd = c->fd, .events = POLLIN };

  if (c->rpos != c->rlen || (c->ssl != NULL && SSL_pending (c->ssl) > 0))
    return TRUE;
  if (poll (&pfd, 1, 0) <= 0)
    return FALSE;
  if (c->ssl != NULL)
    {
      /* TLS 1.3 session tickets arrive after the handshake: records, but
       * no reply.  Only application data or a close counts. */
      guint8 byte;
      int n, err;

      ERR_clear_error ();
      n = SSL_peek (c->ssl, &byte, 1);
      err = n > 0 ? SSL_ERROR_NONE : SSL_get_error (c->ssl, n);
      ERR_clear_error ();
      return err != SSL_ERROR_WANT_READ && err != SSL_ERROR_WANT_WRITE;
    }
  return TRUE;
}

/* smtp_prepare - a connection ready for a new transaction: reuse the open
 * one (NOOP when idle, RSET after a transaction), or (re)connect */
static gboolean
smtp_prepare (PmxSmtpClient *c,
              GError       **error)
{
  if (c->state != SMTP_STATE_DISCONNECTED)
    {
      g_autoptr(GError) local_error = NULL;
      gboolean usable = TRUE;

      if (c->max_messages > 0 && c->n_messages >= c->max_messages)
        {
          smtp_note (c, '*', "%u messages on this connection: reconnecting", c->n_messages);
          smtp_quit (c);
          usable = FALSE;
        }
      else if (smtp_server_spoke (c))
        {
          /* Read what it said for the transcript; it is leaving either way. */
          gint64 saved = c->command_timeout;

          c->command_timeout = MIN (c->command_timeout, G_USEC_PER_SEC);
          smtp_read_reply (c, NULL);
          c->command_timeout = saved;
          smtp_note (c, '*', "the server ended the idle connection: reconnecting");
          smtp_close (c);
          usable = FALSE;
        }
      else if (g_get_monotonic_time () - c->last_used >= SMTP_IDLE_NOOP_USEC
               && (!smtp_command (c, SMTP_STATE_NOOP, "NOOP", &local_error) || c->reply.code / 100 != 2))
        usable = FALSE;
      else if (c->need_rset && c->caps.pipelining)
        c->rset_pipelined = TRUE;   /* RFC 2920: RSET may open the next group; saves a round trip */
      else if (c->need_rset
               && (!smtp_command (c, SMTP_STATE_RSET, "RSET", &local_error) || c->reply.code / 100 != 2))
        usable = FALSE;

      if (usable)
        {
          c->need_rset = FALSE;
          smtp_state (c, SMTP_STATE_READY);
          return TRUE;
        }
      if (c->state != SMTP_STATE_DISCONNECTED)
        {
          smtp_note (c, '*', "connection not reusable: reconnecting");
          smtp_close (c);
        }
    }
  return smtp_open (c, error);
}

/* smtp_outcome - set recipient @i from the current reply */
static void
smtp_outcome (PmxSmtpClient *c,
              PmxResult     *result,
              gsize          i)
{
  PmxRcptStatus status = c->reply.code / 100 == 2 ? PMX_RCPT_DELIVERED
                         : c->reply.code / 100 == 5 ? PMX_RCPT_BOUNCED : PMX_RCPT_DEFERRED;

  pmx_result_set_recipient (result, i, status, c->reply.code, c->reply.enhanced, c->reply.text->str);
}

/* smtp_write_body - the message, dot-stuffed, bare LF made CRLF, then
 * the final dot; written in chunks under the data timeout */
static gboolean
smtp_write_body (PmxSmtpClient *c,
                 const guint8  *msg,
                 gsize          len,
                 GError       **error)
{
  g_autoptr(GString) out = g_string_sized_new (MIN (len, SMTP_CHUNK) + 1024);
  gboolean bol = TRUE;
  gsize i = 0;

  smtp_state (c, SMTP_STATE_BODY);
  smtp_note (c, 'C', "<message, %" G_GSIZE_FORMAT " bytes>", len);
  /* A line (or SMTP_CHUNK of one) at a time: dot-stuff a line's start
   * (RFC 5321 4.5.2), and end every line with CRLF, giving a bare LF its CR. */
  while (i < len)
    {
      gsize span = MIN (len - i, SMTP_CHUNK);
      const guint8 *nl = memchr (msg + i, '\n', span);

      if (bol && msg[i] == '.')
        g_string_append_c (out, '.');
      if (nl == NULL)
        {
          g_string_append_len (out, (const char *) msg + i, (gssize) span);
          i += span;
          bol = FALSE;
        }
      else
        {
          gsize end = (gsize) (nl - msg);

          if (end == i && i > 0 && msg[i - 1] == '\r')
            g_string_append_c (out, '\n');      /* the CR went out with the last chunk */
          else
            {
              gsize text_end = end > i && msg[end - 1] == '\r' ? end - 1 : end;

              g_string_append_len (out, (const char *) msg + i, (gssize) (text_end - i));
              g_string_append_len (out, "\r\n", 2);
            }
          i = end + 1;
          bol = TRUE;
        }
      if (out->len >= SMTP_CHUNK)
        {
          if (!smtp_write_all (c, out->str, out->len, error))
            return FALSE;
          g_string_truncate (out, 0);
        }
    }
  if (len > 0 && msg[len - 1] == '\r')
    g_string_append_c (out, '\n');
  else if (len > 0 && msg[len - 1] != '\n')
    g_string_append (out, "\r\n");
  g_string_append (out, ".\r\n");
  smtp_note (c, 'C', ".");
  return smtp_write_all (c, out->str, out->len, error);
}

/* smtp_is_ascii - no byte above 127 */
static gboolean
smtp_is_ascii (const guint8 *p,
               gsize         len)
{
  for (gsize i = 0; i < len; i++)
    if (p[i] & 0x80)
      return FALSE;
  return TRUE;
}

/* smtp_remote_id - the server's queue id from "... queued as X" */
static void
smtp_remote_id (PmxSmtpClient *c,
                PmxResult     *result)
{
  const char *p = strstr (c->reply.text->str, "queued as ");

  if (p != NULL)
    {
      g_autofree char *id = NULL;
      gsize n;

      p += strlen ("queued as ");
      n = strcspn (p, " ;,)");
      if (n > 0)
        {
          id = g_strndup (p, n);
          pmx_result_set_remote_id (result, id);
        }
    }
}

/* smtp_transaction - MAIL, RCPT..., DATA on a ready connection; FALSE
 * (with @error) when the connection failed under it */
static gboolean
smtp_transaction (PmxSmtpClient     *c,
                  const PmxEnvelope *env,
                  const guint8      *msg,
                  gsize              len,
                  PmxResult         *result,
                  GError           **error)
{
  g_autoptr(GString) mail = g_string_new (NULL);
  g_autoptr(GPtrArray) rcpts = g_ptr_array_new_with_free_func (g_free);
  g_autofree gboolean *accepted = g_new0 (gboolean, MAX (env->n_recipients, 1));
  gboolean utf8 = !smtp_is_ascii ((const guint8 *) env->sender, strlen (env->sender));
  gboolean eightbit = !smtp_is_ascii (msg, len);
  gboolean mail_ok;
  gsize n_accepted = 0;

  for (gsize i = 0; i < env->n_recipients; i++)
    {
      if (!smtp_is_ascii ((const guint8 *) env->recipients[i], strlen (env->recipients[i])))
        utf8 = TRUE;
      if (strpbrk (env->recipients[i], "\r\n<>") != NULL)
        {
          pmx_result_fail (result, PMX_FAILURE_PERMANENT, 0, "5.1.3",
                           "recipient address contains a line break or angle bracket");
          return TRUE;
        }
    }
  if (strpbrk (env->sender, "\r\n<>") != NULL)
    {
      pmx_result_fail (result, PMX_FAILURE_PERMANENT, 0, "5.1.7",
                       "sender address contains a line break or angle bracket");
      return TRUE;
    }
  if (utf8 && !c->caps.smtputf8)
    {
      pmx_result_fail (result, PMX_FAILURE_PERMANENT, 0, "5.6.7",
                       "%s:%u does not offer SMTPUTF8, needed for the non-ASCII addresses of "
                       "this message (RFC 6531)", c->host, c->port);
      return TRUE;
    }
  if (c->caps.size > 0 && len > c->caps.size)
    {
      pmx_result_fail (result, PMX_FAILURE_PERMANENT, 0, "5.3.4",
                       "message of %" G_GSIZE_FORMAT " bytes exceeds the size limit of %s:%u "
                       "(SIZE %" G_GUINT64_FORMAT ")", len, c->host, c->port, c->caps.size);
      return TRUE;
    }

  c->need_rset = TRUE;
  g_string_printf (mail, "MAIL FROM:<%s>", env->sender);
  if (c->caps.size > 0)
    g_string_append_printf (mail, " SIZE=%" G_GSIZE_FORMAT, len);
  if (eightbit && c->caps.eightbitmime)
    g_string_append (mail, " BODY=8BITMIME");
  if (utf8)
    g_string_append (mail, " SMTPUTF8");
  for (gsize i = 0; i < env->n_recipients; i++)
    g_ptr_array_add (rcpts, g_strconcat ("RCPT TO:<", env->recipients[i], ">", NULL));

  if (c->caps.pipelining)
    {
      /* RFC 2920: the whole envelope and DATA in one write, replies in order. */
      g_autoptr(GString) batch = g_string_new (NULL);

      if (c->rset_pipelined)
        {
          g_string_append (batch, "RSET\r\n");
          smtp_note (c, 'C', "RSET");
        }
      smtp_state (c, SMTP_STATE_MAIL);
      g_string_append_len (batch, mail->str, (gssize) mail->len);
      g_string_append_len (batch, "\r\n", 2);
      smtp_note (c, 'C', "%s", mail->str);
      for (guint i = 0; i < rcpts->len; i++)
        {
          g_string_append (batch, g_ptr_array_index (rcpts, i));
          g_string_append_len (batch, "\r\n", 2);
          smtp_note (c, 'C', "%s", (char *) g_ptr_array_index (rcpts, i));
        }
      g_string_append (batch, "DATA\r\n");
      smtp_note (c, 'C', "DATA");
      if (!smtp_write_all (c, batch->str, batch->len, error))
        return FALSE;
      if (c->rset_pipelined)
        {
          c->rset_pipelined = FALSE;
          smtp_state (c, SMTP_STATE_RSET);
          if (!smtp_read_reply (c, error))
            return FALSE;
          if (c->reply.code / 100 != 2)
            {
              /* The old transaction may still be open: this connection
               * cannot be trusted with the envelope sent after it. */
              smtp_reply_error (c, error, PMX_SMTP_ERROR_PROTOCOL, "RSET refused");
              return FALSE;
            }
          smtp_state (c, SMTP_STATE_MAIL);
        }
      if (!smtp_read_reply (c, error))
        return FALSE;
      mail_ok = c->reply.code / 100 == 2;
      if (!mail_ok)
        for (gsize i = 0; i < env->n_recipients; i++)
          smtp_outcome (c, result, i);
      smtp_state (c, SMTP_STATE_RCPT);
      for (gsize i = 0; i < env->n_recipients; i++)
        {
          if (!smtp_read_reply (c, error))
            return FALSE;
          if (mail_ok && c->reply.code / 100 == 2)
            accepted[i] = TRUE, n_accepted++;
          else if (mail_ok)
            smtp_outcome (c, result, i);
        }
      smtp_state (c, SMTP_STATE_DATA);
      if (!smtp_read_reply (c, error))
        return FALSE;
      if (c->reply.code == 354 && n_accepted == 0)
        {
          /* A server that takes DATA with no recipient: send nothing. */
          smtp_state (c, SMTP_STATE_BODY);
          if (!smtp_send_line (c, ".", NULL, error) || !smtp_read_reply (c, error))
            return FALSE;
          return TRUE;
        }
    }
  else
    {
      if (!smtp_command (c, SMTP_STATE_MAIL, mail->str, error))
        return FALSE;
      if (c->reply.code / 100 != 2)
        {
          for (gsize i = 0; i < env->n_recipients; i++)
            smtp_outcome (c, result, i);
        }
      else
        {
          for (gsize i = 0; i < env->n_recipients; i++)
            {
              if (!smtp_command (c, SMTP_STATE_RCPT, g_ptr_array_index (rcpts, i), error))
                return FALSE;
              if (c->reply.code / 100 == 2)
                accepted[i] = TRUE, n_accepted++;
              else
                smtp_outcome (c, result, i);
            }
        }
      if (n_accepted == 0)
        {
          /* Nothing to send: leave the transaction now. */
          if (!smtp_command (c, SMTP_STATE_RSET, "RSET", error))
            return FALSE;
          c->need_rset = c->reply.code / 100 != 2;
          return TRUE;
        }
      if (!smtp_command (c, SMTP_STATE_DATA, "DATA", error))
        return FALSE;
    }

  if (n_accepted == 0)
    return TRUE;
  if (c->reply.code != 354)
    {
      for (gsize i = 0; i < env->n_recipients; i++)
        if (accepted[i])
          smtp_outcome (c, result, i);
      return TRUE;
    }

  if (!smtp_write_body (c, msg, len, error) || !smtp_read_reply (c, error))
    return FALSE;
  for (gsize i = 0; i < env->n_recipients; i++)
    if (accepted[i])
      smtp_outcome (c, result, i);
  if (c->reply.code / 100 == 2)
    smtp_remote_id (c, result);
  return TRUE;
}

void
pmx_smtp_client_send (PmxSmtpClient     *c,
                      const PmxEnvelope *env,
                      const guint8      *msg,
                      gsize              len,
                      PmxResult         *result)
{
  g_autoptr(GError) error = NULL;
  g_autofree char *transcript = NULL;

  g_return_if_fail (c != NULL && env != NULL && result != NULL);
  g_return_if_fail (msg != NULL || len == 0);

  c->transcript_off = !pmx_result_wants_transcript (result);
  if (!smtp_prepare (c, &error))
    {
      PmxFailureClass klass = pmx_smtp_error_get_failure (error);

      pmx_result_fail (result, klass, c->reply.code, c->reply.code != 0 ? c->reply.enhanced : NULL,
                       "%s", error->message);
      pmx_result_set_session_broken (result);
    }
  else if (!smtp_transaction (c, env, msg, len, result, &error))
    {
      gboolean was_421 = g_error_matches (error, PMX_SMTP_ERROR, PMX_SMTP_ERROR_CLOSED)
                         && c->reply.code == 421;

      smtp_note (c, '*', "%s", error->message);
      pmx_result_fail (result, PMX_FAILURE_TEMPORARY, was_421 ? 421 : 0,
                       was_421 ? c->reply.enhanced : NULL, "%s", error->message);
      pmx_result_set_session_broken (result);
      smtp_close (c);
    }
  else
    {
      c->n_messages++;
      c->last_used = g_get_monotonic_time ();
      if (c->state != SMTP_STATE_DISCONNECTED)
        smtp_state (c, SMTP_STATE_READY);
    }
  c->transcript_off = FALSE;
  transcript = pmx_smtp_client_take_transcript (c);
  if (transcript[0] != '\0')
    pmx_result_set_transcript (result, transcript);
}

/* ---------------------------------------------------------------------- */
/* probing                                                                   */

PmxSmtpProbe *
pmx_smtp_client_probe (PmxSmtpClient *c)
{
  PmxSmtpProbe *probe;
  GError *error = NULL;

  g_return_val_if_fail (c != NULL, NULL);

  probe = g_new0 (PmxSmtpProbe, 1);
  pmx_smtp_client_disconnect (c);
  g_free (pmx_smtp_client_take_transcript (c));
  c->probe = probe;
  if (smtp_open (c, &error))
    smtp_quit (c);
  else
    probe->error = error;
  c->probe = NULL;
  probe->transcript = pmx_smtp_client_take_transcript (c);
  return probe;
}

void
pmx_smtp_probe_free (PmxSmtpProbe *p)
{
  if (p == NULL)
    return;
  g_strfreev (p->addresses);
  g_free (p->connected_to);
  g_free (p->tls_version);
  g_free (p->tls_cipher);
  g_free (p->cert_subject);
  g_free (p->cert_issuer);
  g_free (p->cert_not_after);
  g_free (p->verify_result);
  g_strfreev (p->caps_before_tls);
  g_strfreev (p->caps_after_tls);
  g_strfreev (p->auth_offered);
  g_free (p->auth_mechanism);
  g_free (p->auth_enhanced);
  g_free (p->auth_text);
  g_clear_error (&p->error);
  g_free (p->transcript);
  g_free (p);
}

/* smtp_probe_join - a strv joined with ", ", or @none when empty */
static char *
smtp_probe_join (char *const *v,
                 const char  *none)
{
  if (v == NULL || v[0] == NULL)
    return g_strdup (none);
  return g_strjoinv (", ", (char **) v);
}

gboolean
pmx_smtp_probe_report_connection (const PmxSmtpProbe *p,
                                  const char         *host,
                                  PmxSmtpSecurity     security,
                                  gboolean            tls_verify,
                                  const char         *secret_noun,
                                  PmxReport          *report)
{
  const GError *e = p->error;
  int code = e != NULL && e->domain == PMX_SMTP_ERROR ? e->code : -1;
  gboolean want_tls = security == PMX_SMTP_SECURITY_TLS || security == PMX_SMTP_SECURITY_STARTTLS;

  /* dns */
  if (p->addresses == NULL)
    {
      pmx_report_add (report, PMX_CHECK_FAIL, "dns", "%s", e != NULL ? e->message : "not resolved");
      return FALSE;
    }
  {
    g_autofree char *addrs = smtp_probe_join (p->addresses, "-");
    pmx_report_add (report, PMX_CHECK_OK, "dns", "%s resolves to %s", host, addrs);
  }

  /* connect */
  if (p->connected_to == NULL)
    {
      pmx_report_add (report, PMX_CHECK_FAIL, "connect", "%s", e != NULL ? e->message : "no connection");
      return FALSE;
    }
  pmx_report_add (report, PMX_CHECK_OK, "connect", "connected to %s", p->connected_to);

  /* tls */
  if (p->tls_version != NULL)
    {
      PmxCheckStatus st = p->cert_verified ? PMX_CHECK_OK : tls_verify ? PMX_CHECK_FAIL : PMX_CHECK_WARN;

      pmx_report_add (report, st, "tls",
                      "%s, cipher %s; certificate subject \"%s\", issuer \"%s\", expires %s; "
                      "verification: %s%s",
                      p->tls_version, p->tls_cipher, p->cert_subject != NULL ? p->cert_subject : "-",
                      p->cert_issuer != NULL ? p->cert_issuer : "-",
                      p->cert_not_after != NULL ? p->cert_not_after : "-",
                      p->verify_result != NULL ? p->verify_result : "-",
                      st == PMX_CHECK_FAIL ? " — give the issuing CA in ca_file, or fix the server's certificate"
                      : st == PMX_CHECK_WARN ? " (tls_verify is false: not checked)" : "");
      if (st == PMX_CHECK_FAIL)
        return FALSE;
    }
  else if (code == PMX_SMTP_ERROR_TLS || code == PMX_SMTP_ERROR_CERTIFICATE
           || (security == PMX_SMTP_SECURITY_TLS && e != NULL))
    {
      pmx_report_add (report, PMX_CHECK_FAIL, "tls", "%s", e != NULL ? e->message : "no TLS");
      return FALSE;
    }
  else if (code != PMX_SMTP_ERROR_STARTTLS_UNAVAILABLE && p->caps_before_tls != NULL)
    pmx_report_add (report, want_tls ? PMX_CHECK_FAIL : PMX_CHECK_WARN, "tls",
                    "not encrypted (security %s): mail and %s cross the network in clear",
                    security == PMX_SMTP_SECURITY_NONE ? "none" : "opportunistic, STARTTLS not offered",
                    secret_noun);

  /* ehlo */
  if (p->caps_before_tls == NULL)
    {
      pmx_report_add (report, PMX_CHECK_FAIL, "ehlo", "%s", e != NULL ? e->message : "no EHLO");
      return FALSE;
    }
  {
    g_autofree char *before = smtp_probe_join (p->caps_before_tls, "(no extensions)");
    g_autofree char *after = smtp_probe_join (p->caps_after_tls, "(no extensions)");

    if (code == PMX_SMTP_ERROR_STARTTLS_UNAVAILABLE)
      {
        pmx_report_add (report, PMX_CHECK_FAIL, "ehlo", "capabilities: %s; %s", before, e->message);
        return FALSE;
      }
    if (p->caps_after_tls != NULL)
      pmx_report_add (report, PMX_CHECK_OK, "ehlo", "before STARTTLS: %s; after STARTTLS: %s", before, after);
    else
      pmx_report_add (report, PMX_CHECK_OK, "ehlo", "capabilities: %s", before);
    if (e != NULL && p->auth_mechanism == NULL && code != PMX_SMTP_ERROR_AUTH_UNAVAILABLE)
      {
        pmx_report_add (report, PMX_CHECK_FAIL, "ehlo", "%s", e->message);
        return FALSE;
      }
  }
  return TRUE;
}

gboolean
pmx_smtp_parse_timeout_ms (JsonObject *timeouts,
                           const char *member,
                           guint       fallback_ms,
                           guint      *out_ms)
{
  static const struct { const char *unit; guint64 ms; } units[] = {
    { "ms", 1 }, { "s", 1000 }, { "m", 60000 }, { "h", 3600000 },
  };
  JsonNode *node = timeouts != NULL ? json_object_get_member (timeouts, member) : NULL;
  const char *text, *end = NULL;
  guint64 n;

  *out_ms = fallback_ms;
  if (node == NULL)
    return TRUE;
  if (json_node_get_value_type (node) == G_TYPE_INT64)
    {
      gint64 s = json_node_get_int (node);

      if (s < 1 || s > G_MAXUINT / 1000)
        return FALSE;
      *out_ms = (guint) s * 1000;
      return TRUE;
    }
  if (json_node_get_value_type (node) != G_TYPE_STRING)
    return FALSE;
  text = json_node_get_string (node);
  if (!g_ascii_isdigit (text[0]))
    return FALSE;
  n = g_ascii_strtoull (text, (char **) &end, 10);
  for (gsize i = 0; i < G_N_ELEMENTS (units); i++)
    if (strcmp (end, units[i].unit) == 0)
      {
        if (n == 0 || n > G_MAXUINT / units[i].ms)
          return FALSE;
        *out_ms = (guint) (n * units[i].ms);
        return TRUE;
      }
  return FALSE;
}

void
pmx_smtp_probe_report_auth (const PmxSmtpProbe *p,
                            const char         *username,
                            const char         *cause,
                            const char         *hint,
                            PmxReport          *report)
{
  const GError *e = p->error;

  g_return_if_fail (p != NULL && report != NULL);

  if (g_error_matches (e, PMX_SMTP_ERROR, PMX_SMTP_ERROR_AUTH_UNAVAILABLE))
    pmx_report_add (report, PMX_CHECK_FAIL, "auth", "%s", e->message);
  else if (p->auth_ok)
    pmx_report_add (report, PMX_CHECK_OK, "auth", "AUTH %s as %s accepted: %u%s%s %s", p->auth_mechanism,
                    username, p->auth_code, p->auth_enhanced != NULL ? " " : "",
                    p->auth_enhanced != NULL ? p->auth_enhanced : "", p->auth_text != NULL ? p->auth_text : "");
  else if (p->auth_mechanism != NULL)
    pmx_report_add (report, PMX_CHECK_FAIL, "auth", "AUTH %s as %s refused: %u%s%s %s%s%s%s%s",
                    p->auth_mechanism, username, p->auth_code,
                    p->auth_enhanced != NULL ? " " : "", p->auth_enhanced != NULL ? p->auth_enhanced : "",
                    p->auth_text != NULL ? p->auth_text : "",
                    cause != NULL ? " — likely cause: " : "", cause != NULL ? cause : "",
                    hint != NULL ? " — hint: " : "", hint != NULL ? hint : "");
}

gboolean
pmx_smtp_probe_report_verdict (const PmxSmtpProbe *p,
                               const char         *host,
                               guint               port,
                               PmxReport          *report)
{
  g_return_val_if_fail (p != NULL && report != NULL, FALSE);

  if (p->error == NULL)
    pmx_report_add (report, PMX_CHECK_OK, "verdict", "ready: %s port %u accepts mail from this transport",
                    host, port);
  else
    pmx_report_add (report, PMX_CHECK_FAIL, "verdict", "cannot send through %s port %u: %s",
                    host, port, p->error->message);
  return p->error == NULL;
}

gboolean
pmx_smtp_config_read (JsonObject    *o,
                      const char    *instance_name,
                      const char    *exposed,
                      GStringChunk  *strings,
                      PmxSmtpConfig *config,
                      GError       **error)
{
  static const char *const securities[] = { "none", "starttls", "tls", "opportunistic", NULL };
  static const guint16 default_ports[] = { 25, 587, 465, 25 };
  JsonObject *timeouts = json_object_has_member (o, "timeouts")
                           ? json_object_get_object_member (o, "timeouts") : NULL;
  const char *security = json_object_get_string_member_with_default (o, "security", "starttls");
  int index = -1;

  for (int i = 0; securities[i] != NULL && index < 0; i++)
    if (g_str_equal (security, securities[i]))
      index = i;
  config->host = g_string_chunk_insert_const (strings, json_object_get_string_member_with_default (o, "host", ""));
  if (config->host[0] == '\0' || index < 0)
    {
      g_set_error (error, PMX_TRANSPORT_ERROR, PMX_TRANSPORT_ERROR_CONFIG,
                   "transport '%s': option host is required (the SMTP server's name) and security "
                   "must be none, starttls, tls or opportunistic", instance_name);
      return FALSE;
    }
  config->security = (PmxSmtpSecurity) index;
  config->port = (guint16) json_object_get_int_member_with_default (o, "port", default_ports[index]);
  config->helo_name = g_string_chunk_insert_const (strings,
    json_object_get_string_member_with_default (o, "helo_name", g_get_host_name ()));
  config->tls_verify = json_object_get_boolean_member_with_default (o, "tls_verify", TRUE);
  config->ca_file = json_object_has_member (o, "ca_file")
                      ? g_string_chunk_insert_const (strings, json_object_get_string_member (o, "ca_file")) : NULL;
  config->tls_min_version = g_strcmp0 (json_object_get_string_member_with_default (o, "tls_min_version", "1.2"), "1.3") == 0
                              ? PMX_SMTP_TLS_1_3 : PMX_SMTP_TLS_1_2;
  config->allow_plaintext_auth = json_object_get_boolean_member_with_default (o, "allow_plaintext_auth", FALSE);
  config->max_messages_per_connection =
    (guint) CLAMP (json_object_get_int_member_with_default (o, "max_messages_per_connection", 1000), 1, G_MAXUINT);
  if (!pmx_smtp_parse_timeout_ms (timeouts, "connect", 30000, &config->connect_timeout_ms)
      || !pmx_smtp_parse_timeout_ms (timeouts, "command", 300000, &config->command_timeout_ms)
      || !pmx_smtp_parse_timeout_ms (timeouts, "data", 600000, &config->data_timeout_ms))
    {
      g_set_error (error, PMX_TRANSPORT_ERROR, PMX_TRANSPORT_ERROR_CONFIG,
                   "transport '%s': option timeouts: each of connect, command and data is a "
                   "number of seconds or a duration such as \"30s\" or \"5m\"", instance_name);
      return FALSE;
    }

  if (!config->tls_verify && config->security != PMX_SMTP_SECURITY_NONE)
    g_warning ("transport '%s': tls_verify is false: the certificate of %s is not checked, so "
               "anyone on the path can read the mail and %s — give the CA in ca_file instead",
               instance_name, config->host, exposed);
  if (config->security == PMX_SMTP_SECURITY_OPPORTUNISTIC)
    g_warning ("transport '%s': security is opportunistic: mail to %s goes in plaintext when "
               "the server does not offer STARTTLS", instance_name, config->host);
  return TRUE;
}

/* SPDX-License-Identifier: GPL-3.0-or-later */
/*
 * pmx-smtpd.h - the SMTP submission listener (ingress for legacy apps).
 *
 * Runs on the main loop.  Reads listen.smtp, tls, smtpd and auth from the
 * config's root.  "250 2.0.0 queued as ID" is written only after the
 * queue's durable commit.
 *
 * The protocol's parsing is exposed below as pure functions over bytes,
 * so unit tests and the fuzzer (tests/fuzz/fuzz-smtpd.c) reach them
 * without sockets.
 */
#pragma once

#include "pmx-config.h"
#include "pmx-queue.h"

G_BEGIN_DECLS

#define PMX_SMTPD_ERROR (pmx_smtpd_error_quark ())
typedef enum {
  PMX_SMTPD_ERROR_FAILED,
  PMX_SMTPD_ERROR_CONFIG,   /* a config value cannot be used; the message names the key */
  PMX_SMTPD_ERROR_LISTEN,   /* cannot bind an address */
  PMX_SMTPD_ERROR_TLS,      /* certificate or key unusable, or no TLS backend */
} PmxSmtpdErrorCode;

GQuark pmx_smtpd_error_quark (void);

typedef struct _PmxSmtpd PmxSmtpd;

/* Read the listener's settings from @config (which it keeps a reference
 * to: a reload does not change a running listener).  @wake is called
 * after each message is queued. */
PmxSmtpd *pmx_smtpd_new      (PmxConfig *config,
                              PmxQueue  *queue,
                              void     (*wake) (gpointer),
                              gpointer   wake_data,
                              GError   **error);
/* Bind every listen.smtp address and start accepting. */
gboolean  pmx_smtpd_start    (PmxSmtpd  *smtpd,
                              GError   **error);
/* Stop accepting; idle sessions are told 421 4.3.2 now, busy ones at their
 * next command.  Idempotent. */
void      pmx_smtpd_shutdown (PmxSmtpd  *smtpd);
/* Shut down, give sessions a moment (on the thread-default main context)
 * to finish a pending commit and flush their last reply, close the rest,
 * free.  Call from outside a running main loop. */
void      pmx_smtpd_free     (PmxSmtpd  *smtpd);

/* ---- parsing, pure functions (for tests and the fuzzer) ---- */

typedef enum {
  PMX_SMTPD_LINE_MORE,      /* no line end yet: read more */
  PMX_SMTPD_LINE_OK,        /* a CRLF-terminated line */
  PMX_SMTPD_LINE_BARE_LF,   /* an LF not preceded by CR */
  PMX_SMTPD_LINE_BARE_CR,   /* a CR not followed by LF */
  PMX_SMTPD_LINE_TOO_LONG,  /* longer than the limit (which counts the CRLF) */
} PmxSmtpdLineStatus;

/* Look for one command line at the start of @buf.  On OK, *@out_line_len
 * is its length without CRLF.  *@out_consumed is how many bytes to drop:
 * the line with its CRLF (OK, TOO_LONG with its end seen), the bytes up to
 * and including the offending LF/CR, or everything scanned (TOO_LONG with
 * no end yet: the caller skips up to the next LF). */
PmxSmtpdLineStatus pmx_smtpd_scan_line (const guint8 *buf,
                                        gsize         len,
                                        gsize         limit,
                                        gsize        *out_line_len,
                                        gsize        *out_consumed);

typedef enum {
  PMX_SMTPD_CMD_UNKNOWN,
  PMX_SMTPD_CMD_HELO,
  PMX_SMTPD_CMD_EHLO,
  PMX_SMTPD_CMD_STARTTLS,
  PMX_SMTPD_CMD_AUTH,
  PMX_SMTPD_CMD_MAIL,
  PMX_SMTPD_CMD_RCPT,
  PMX_SMTPD_CMD_DATA,
  PMX_SMTPD_CMD_RSET,
  PMX_SMTPD_CMD_NOOP,
  PMX_SMTPD_CMD_QUIT,
  PMX_SMTPD_CMD_HELP,
  PMX_SMTPD_CMD_VRFY,
  PMX_SMTPD_CMD_EXPN,
} PmxSmtpdVerb;

/* Verb of a command line (case-insensitive); *@out_arg points at its
 * argument after the separating spaces ("" when none).  A line holding a
 * control character (other than TAB) or NUL is UNKNOWN with *@out_bad
 * TRUE. */
PmxSmtpdVerb pmx_smtpd_parse_verb (const char  *line,
                                   gsize        len,
                                   const char **out_arg,
                                   gboolean    *out_bad);

typedef struct {
  char    *address;    /* "" for the null sender <> */
  gboolean has_size;
  guint64  size;
  gboolean body_8bit;
  gboolean smtputf8;
  gboolean utf8;       /* the address has non-ASCII characters */
} PmxSmtpdPath;

void pmx_smtpd_path_clear (PmxSmtpdPath *path);

/* Parse the argument of MAIL (@prefix "FROM:") or RCPT ("TO:"): the
 * reverse/forward path and its ESMTP parameters.  Returns NULL and fills
 * @out on success, else the reply to send (static, with CRLF). */
const char *pmx_smtpd_parse_path (const char   *arg,
                                  const char   *prefix,
                                  gboolean      is_mail,
                                  PmxSmtpdPath *out);

/* What went wrong in DATA (flags). */
typedef enum {
  PMX_SMTPD_DATA_BARE_LF   = 1 << 0,
  PMX_SMTPD_DATA_BARE_CR   = 1 << 1,
  PMX_SMTPD_DATA_LONG_LINE = 1 << 2,
  PMX_SMTPD_DATA_TOO_BIG   = 1 << 3,
} PmxSmtpdDataFlags;

/* The DATA reader: dot-unstuffing, CRLF-only end of data ("\r\n.\r\n"),
 * limits enforced while reading.  Once a flag is set nothing more is kept,
 * but input is still consumed up to the real end of data. */
typedef struct {
  int         state;
  gsize       line_len;     /* octets in the current line so far, without CRLF */
  gsize       max_line;     /* including CRLF: 1000 */
  gsize       max_size;
  gsize       size;         /* octets of the message seen (kept or not) */
  guint       flags;        /* PmxSmtpdDataFlags */
  guint       bad_line;     /* 1-based line of the first problem */
  guint       lines;
  gboolean    done;
  GByteArray *out;          /* the message, CRLF line ends, unstuffed */
} PmxSmtpdDataReader;

void  pmx_smtpd_data_reader_init  (PmxSmtpdDataReader *reader,
                                   gsize               max_size,
                                   gsize               max_line);
void  pmx_smtpd_data_reader_clear (PmxSmtpdDataReader *reader);
/* Consume bytes; returns how many were used: all of @len, or fewer when
 * the end of data was reached (reader->done). */
gsize pmx_smtpd_data_reader_feed  (PmxSmtpdDataReader *reader,
                                   const guint8       *buf,
                                   gsize               len);

/* The addresses of the From: header field(s) of an RFC 5322 message,
 * lower-cased. (transfer full; element type char*) */
GPtrArray *pmx_smtpd_header_from (const guint8 *msg,
                                  gsize         len);

/* The addresses of every header field named in @names (NULL-terminated,
 * case-insensitive), in order; lower-cased when @lower.  Display names,
 * comments and groups are dropped. (transfer full; element type char*) */
GPtrArray *pmx_smtpd_header_addresses (const guint8      *msg,
                                       gsize              len,
                                       const char *const *names,
                                       gboolean           lower);

/* Does @address match one of @patterns ("a@b", "@domain", "*")?  The
 * null sender "" matches only "*". */
gboolean pmx_smtpd_sender_allowed (const char *const *patterns,
                                   const char        *address);

G_END_DECLS

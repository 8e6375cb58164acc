/* SPDX-License-Identifier: GPL-3.0-or-later */
/*
 * fuzz-smtpd.c - libFuzzer target for the SMTP listener's parsers: the
 * command line scanner, the verb and MAIL/RCPT path parser, the DATA
 * reader (dot-unstuffing, CRLF-only end of data, limits) and the From:
 * header address extraction.  No sockets: pmx-smtpd.c exposes these as
 * pure functions.
 *
 * The first input byte picks the parser; the rest is the input.  Beyond
 * "no crash, no leak, no UB" it checks invariants:
 *   - the scanner never consumes more than it was given, and OK lines hold
 *     no CR or LF;
 *   - the DATA reader gives the same result whatever the read sizes;
 *   - a message it accepts (no flags) has only CRLF line ends.
 *
 * Built with clang -fsanitize=fuzzer when available; otherwise linked with
 * fuzz-main.c, which replays the seed corpus, so `meson test --suite fuzz`
 * always runs it.
 */
#include "pmx-smtpd.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput (const uint8_t *data, size_t size);

/* fuzz_check - abort on a broken invariant (libFuzzer saves the input) */
static void
fuzz_check (gboolean    ok,
            const char *what)
{
  if (!ok)
    {
      fprintf (stderr, "invariant broken: %s\n", what);
      abort ();
    }
}

/* fuzz_commands - scan lines as the session does, parse each command */
static void
fuzz_commands (const guint8 *buf,
               gsize         len)
{
  while (len > 0)
    {
      gsize line_len = 0, used = 0;
      PmxSmtpdLineStatus st = pmx_smtpd_scan_line (buf, len, 512, &line_len, &used);

      fuzz_check (used <= len, "scan_line consumed more than given");
      if (st == PMX_SMTPD_LINE_MORE)
        break;
      fuzz_check (used > 0, "scan_line made no progress");
      if (st == PMX_SMTPD_LINE_OK)
        {
          g_autofree char *line = g_strndup ((const char *) buf, line_len);
          const char *arg;
          gboolean bad;
          PmxSmtpdVerb verb;

          fuzz_check (memchr (buf, '\r', line_len) == NULL && memchr (buf, '\n', line_len) == NULL,
                      "an OK line holds CR or LF");
          verb = pmx_smtpd_parse_verb (line, strlen (line), &arg, &bad);
          if (verb == PMX_SMTPD_CMD_MAIL || verb == PMX_SMTPD_CMD_RCPT)
            {
              PmxSmtpdPath path;
              const char *reply = pmx_smtpd_parse_path (arg, verb == PMX_SMTPD_CMD_MAIL ? "FROM:" : "TO:",
                                                        verb == PMX_SMTPD_CMD_MAIL, &path);

              if (reply == NULL)
                {
                  const char *const star[] = { "*", NULL };
                  const char *const dom[] = { "@example.test", "a@b", NULL };

                  fuzz_check (path.address != NULL && strchr (path.address, '\n') == NULL
                              && strchr (path.address, '\r') == NULL, "a parsed address holds CR or LF");
                  fuzz_check (pmx_smtpd_sender_allowed (star, path.address), "* does not match");
                  (void) pmx_smtpd_sender_allowed (dom, path.address);
                  pmx_smtpd_path_clear (&path);
                }
              else
                fuzz_check (g_str_has_suffix (reply, "\r\n") && (reply[0] == '5' || reply[0] == '4'),
                            "a refusal is not a 4xx/5xx line");
            }
        }
      buf += used;
      len -= used;
    }
}

/* fuzz_data - the DATA reader, whole and in pieces */
static void
fuzz_data (const guint8 *buf,
           gsize         len)
{
  PmxSmtpdDataReader whole, pieces;
  gsize used_whole, used_pieces = 0;
  guint step = len > 0 ? (guint) buf[0] % 7 + 1 : 1;

  pmx_smtpd_data_reader_init (&whole, 4096, 1000);
  pmx_smtpd_data_reader_init (&pieces, 4096, 1000);
  used_whole = pmx_smtpd_data_reader_feed (&whole, buf, len);
  while (used_pieces < len && !pieces.done)
    {
      gsize n = MIN (step, len - used_pieces);
      gsize u = pmx_smtpd_data_reader_feed (&pieces, buf + used_pieces, n);

      fuzz_check (u <= n, "feed used more than given");
      used_pieces += u;
      if (u < n)
        break;
      step = step % 13 + 1;
    }
  fuzz_check (used_whole <= len, "feed used more than given");
  fuzz_check (whole.done == pieces.done && used_whole == used_pieces && whole.flags == pieces.flags
              && whole.size == pieces.size, "the result depends on the read sizes");
  fuzz_check (whole.out->len == pieces.out->len
              && (whole.out->len == 0 || memcmp (whole.out->data, pieces.out->data, whole.out->len) == 0),
              "the message depends on the read sizes");
  if (whole.done && whole.flags == 0)
    {
      const guint8 *m = whole.out->data;

      for (gsize i = 0; i < whole.out->len; i++)
        {
          if (m[i] == '\n')
            fuzz_check (i > 0 && m[i - 1] == '\r', "an accepted message has a bare LF");
          if (m[i] == '\r')
            fuzz_check (i + 1 < whole.out->len && m[i + 1] == '\n', "an accepted message has a bare CR");
        }
      fuzz_check (whole.out->len <= 4096, "an accepted message is over the limit");
      {
        g_autoptr(GPtrArray) from = pmx_smtpd_header_from (whole.out->data, whole.out->len);

        (void) from;
      }
    }
  pmx_smtpd_data_reader_clear (&whole);
  pmx_smtpd_data_reader_clear (&pieces);
}

/* fuzz_headers - address extraction from a header section */
static void
fuzz_headers (const guint8 *buf,
              gsize         len)
{
  const char *const names[] = { "To", "Cc", "Bcc", NULL };
  g_autoptr(GPtrArray) from = pmx_smtpd_header_from (buf, len);
  g_autoptr(GPtrArray) rcpts = pmx_smtpd_header_addresses (buf, len, names, FALSE);

  for (guint i = 0; i < from->len; i++)
    fuzz_check (((char *) g_ptr_array_index (from, i))[0] != '\0', "an empty address");
  (void) rcpts;
}

int
LLVMFuzzerTestOneInput (const uint8_t *data,
                        size_t         size)
{
  if (size == 0)
    return 0;
  switch (data[0] % 3)
    {
    case 0:
      fuzz_commands (data + 1, size - 1);
      break;
    case 1:
      fuzz_data (data + 1, size - 1);
      break;
    default:
      fuzz_headers (data + 1, size - 1);
      break;
    }
  return 0;
}

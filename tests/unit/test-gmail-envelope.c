/* SPDX-License-Identifier: GPL-3.0-or-later */
/*
 * test-gmail-envelope.c - the gmail transport's header rewrite: table of
 * messages, envelopes and the exact bytes (or refusal) expected.
 */
#include "../../transports/gmail/pmx-gmail-envelope.h"

#include <gmime/gmime.h>
#include <string.h>

typedef struct {
  const char *path;
  const char *message;
  const char *rcpts;        /* space-separated envelope */
  gboolean    remove;
  const char *expected;     /* NULL: refused */
  const char *unlisted;     /* the refusal's addresses */
} Case;

static const Case cases[] = {
  { "/gmail-envelope/headers-match/unchanged",
    "From: s@x.test\r\nTo: a@x.test\r\nCc: b@x.test\r\n\r\nbody\r\n", "a@x.test b@x.test", FALSE,
    "From: s@x.test\r\nTo: a@x.test\r\nCc: b@x.test\r\n\r\nbody\r\n", NULL },
  { "/gmail-envelope/headers-match/case-insensitive",
    "To: Alice <Alice@Example.TEST>\r\n\r\nx\r\n", "alice@example.test", FALSE,
    "To: Alice <Alice@Example.TEST>\r\n\r\nx\r\n", NULL },
  { "/gmail-envelope/headers-match/folded-display-names",
    "To: \"Doe, John\" <john@x.test>,\r\n\tjane@x.test\r\nSubject: s\r\n\r\nx\r\n", "jane@x.test john@x.test", FALSE,
    "To: \"Doe, John\" <john@x.test>,\r\n\tjane@x.test\r\nSubject: s\r\n\r\nx\r\n", NULL },
  { "/gmail-envelope/envelope-only/one-bcc",
    "To: a@x.test\r\nSubject: s\r\n\r\nbody\r\n", "a@x.test h@y.test", FALSE,
    "To: a@x.test\r\nSubject: s\r\nBcc: h@y.test\r\n\r\nbody\r\n", NULL },
  { "/gmail-envelope/envelope-only/two-folded",
    "To: a@x.test\r\n\r\nbody\r\n", "h1@y.test a@x.test h2@y.test", FALSE,
    "To: a@x.test\r\nBcc: h1@y.test,\r\n h2@y.test\r\n\r\nbody\r\n", NULL },
  { "/gmail-envelope/envelope-only/duplicates-once",
    "To: a@x.test\r\n\r\nb\r\n", "a@x.test h@y.test H@y.test", FALSE,
    "To: a@x.test\r\nBcc: h@y.test\r\n\r\nb\r\n", NULL },
  { "/gmail-envelope/bcc/old-fields-replaced",
    "BCC: old@y.test,\r\n keep@y.test\r\nTo: a@x.test\r\nbcc: other@y.test\r\n\r\nb\r\n", "a@x.test keep@y.test", FALSE,
    "To: a@x.test\r\nBcc: keep@y.test\r\n\r\nb\r\n", NULL },
  { "/gmail-envelope/bcc/all-in-to",
    "To: a@x.test\r\nBcc: a@x.test\r\n\r\nb\r\n", "a@x.test", FALSE,
    "To: a@x.test\r\n\r\nb\r\n", NULL },
  { "/gmail-envelope/not-addressing/x-to-ignored",
    "X-To: z@x.test\r\nResent-Cc: r@x.test\r\nTo: a@x.test\r\n\r\nb\r\n", "a@x.test", FALSE,
    "X-To: z@x.test\r\nResent-Cc: r@x.test\r\nTo: a@x.test\r\n\r\nb\r\n", NULL },
  { "/gmail-envelope/unlisted/refused",
    "To: a@x.test, b@x.test\r\nCc: c@x.test\r\n\r\nb\r\n", "a@x.test", FALSE, NULL, "<b@x.test>, <c@x.test>" },
  { "/gmail-envelope/unlisted/refused-many",
    "To: a@x.test, b@x.test, c@x.test, d@x.test, e@x.test, f@x.test, g@x.test\r\n\r\nb\r\n", "a@x.test", FALSE, NULL,
    "<b@x.test>, <c@x.test>, <d@x.test>, <e@x.test>, <f@x.test> and 1 more" },
  { "/gmail-envelope/unlisted/group-refused",
    "To: team: a@x.test, b@x.test;\r\n\r\nb\r\n", "a@x.test", FALSE, NULL, "<b@x.test>" },
  { "/gmail-envelope/unlisted/removed",
    "From: s@x.test\r\nTo: a@x.test, \"Bee\" <b@x.test>\r\nCc: c@x.test\r\nSubject: s\r\n\r\nb\r\n", "a@x.test h@y.test", TRUE,
    "From: s@x.test\r\nTo: a@x.test\r\nSubject: s\r\nBcc: h@y.test\r\n\r\nb\r\n", NULL },
  { "/gmail-envelope/unlisted/removed-from-group",
    "To: team: a@x.test, b@x.test;\r\n\r\nb\r\n", "a@x.test", TRUE,
    "To: team: a@x.test;\r\n\r\nb\r\n", NULL },
  { "/gmail-envelope/edge/no-body",
    "To: a@x.test\r\nSubject: s\r\n", "a@x.test b@x.test", FALSE,
    "To: a@x.test\r\nSubject: s\r\nBcc: b@x.test\r\n", NULL },
  { "/gmail-envelope/edge/no-final-crlf",
    "To: a@x.test", "a@x.test b@x.test", FALSE,
    "To: a@x.test\r\nBcc: b@x.test\r\n", NULL },
  { "/gmail-envelope/edge/no-headers",
    "\r\nbody\r\n", "a@x.test", FALSE,
    "Bcc: a@x.test\r\n\r\nbody\r\n", NULL },
  { "/gmail-envelope/edge/body-untouched",
    "To: a@x.test\r\n\r\nTo: z@x.test\r\nBcc: y@x.test\r\n", "a@x.test", FALSE,
    "To: a@x.test\r\n\r\nTo: z@x.test\r\nBcc: y@x.test\r\n", NULL },
};

/* test_case - one row */
static void
test_case (gconstpointer data)
{
  const Case *c = data;
  g_auto(GStrv) rcpts = g_strsplit (c->rcpts, " ", -1);
  g_autofree char *unlisted = NULL;
  g_autoptr(GBytes) out = pmx_gmail_envelope_rewrite ((const guint8 *) c->message, strlen (c->message),
                                                      (const char *const *) rcpts, g_strv_length (rcpts),
                                                      c->remove, &unlisted);

  if (c->expected == NULL)
    {
      g_assert_null (out);
      g_assert_cmpstr (unlisted, ==, c->unlisted);
      return;
    }
  g_assert_nonnull (out);
  g_assert_null (unlisted);
  g_assert_cmpmem (g_bytes_get_data (out, NULL), g_bytes_get_size (out), c->expected, strlen (c->expected));
  if (strcmp (c->message, c->expected) == 0)
    g_assert_true (g_bytes_get_data (out, NULL) == (gconstpointer) c->message);   /* not copied */
}

int
main (int argc, char **argv)
{
  int rc;

  g_test_init (&argc, &argv, NULL);
  g_mime_init ();
  for (gsize i = 0; i < G_N_ELEMENTS (cases); i++)
    g_test_add_data_func (cases[i].path, &cases[i], test_case);
  rc = g_test_run ();
  g_mime_shutdown ();
  return rc;
}

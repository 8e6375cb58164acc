/* SPDX-License-Identifier: GPL-3.0-or-later */
/*
 * test-graph-message.c - the graph transport's view of a message
 * (transports/graph/pmx-graph-message.c): whether the header recipients
 * equal the envelope, the copy whose To/Cc/Bcc equal the envelope (exact
 * bytes), and the Graph message resource.
 */
#include "../../transports/graph/pmx-graph-message.h"

#include <string.h>

typedef struct {
  const char *path;
  const char *raw;
  const char *rcpts[6];
  gboolean    match;
} MatchCase;

static const MatchCase match_cases[] = {
  { "/graph-message/match/same-set-other-case",
    "From: a@x.test\r\nTo: Ann <ann@y.test>\r\nCc: bob@y.test\r\n\r\nbody\r\n",
    { "ANN@y.test", "bob@y.test", NULL }, TRUE },
  { "/graph-message/match/envelope-only-recipient",
    "From: a@x.test\r\nTo: ann@y.test\r\n\r\nbody\r\n",
    { "ann@y.test", "hidden@y.test", NULL }, FALSE },
  { "/graph-message/match/header-recipient-not-in-attempt",
    "From: a@x.test\r\nTo: ann@y.test, bob@y.test\r\n\r\nbody\r\n",
    { "ann@y.test", NULL }, FALSE },
  { "/graph-message/match/bcc-header-counts",
    "From: a@x.test\r\nTo: ann@y.test\r\nBcc: eve@y.test\r\n\r\nbody\r\n",
    { "ann@y.test", "eve@y.test", NULL }, TRUE },
  { "/graph-message/match/group-members-count",
    "From: a@x.test\r\nTo: team: ann@y.test, bob@y.test;\r\n\r\nbody\r\n",
    { "bob@y.test", "ann@y.test", NULL }, TRUE },
  { "/graph-message/match/no-recipient-headers",
    "From: a@x.test\r\nSubject: none\r\n\r\nbody\r\n",
    { "ann@y.test", NULL }, FALSE },
};

/* envelope_of - an envelope over @rcpts (borrowed) */
static PmxEnvelope
envelope_of (const char *const *rcpts)
{
  PmxEnvelope e = { 0 };

  e.queue_id = "0000000000000001";
  e.sender = "a@x.test";
  e.recipients = rcpts;
  e.n_recipients = g_strv_length ((char **) rcpts);
  e.attempt = 1;
  e.ingress = "local";
  return e;
}

static void
test_match (gconstpointer data)
{
  const MatchCase *c = data;
  PmxEnvelope e = envelope_of (c->rcpts);
  g_autoptr(GraphMessage) m = graph_message_parse ((const guint8 *) c->raw, strlen (c->raw), &e);

  g_assert_nonnull (m);
  g_assert_cmpint (m->headers_match, ==, c->match);
}

typedef struct {
  const char *path;
  const char *raw;
  const char *rcpts[6];
  const char *want;
} RewriteCase;

static const RewriteCase rewrite_cases[] = {
  /* ann delivered earlier, dan bounced, eve's copy went before; zed is
   * envelope-only.  Folded To, Cc after Subject, a Bcc header; the body
   * has a line that looks like a header. */
  { "/graph-message/rewrite/keeps-attempt-only",
    "From: A <a@x.test>\r\nTo: Ann <ann@y.test>,\r\n Bob <bob@y.test>\r\nSubject: s\r\n"
    "Cc: carl@y.test, dan@y.test\r\nBcc: eve@y.test\r\n\r\nTo: not a header\r\nbody\r\n",
    { "bob@y.test", "carl@y.test", "zed@y.test", NULL },
    "From: A <a@x.test>\r\nTo: Bob <bob@y.test>\r\nCc: carl@y.test\r\nBcc: zed@y.test\r\nSubject: s\r\n"
    "\r\nTo: not a header\r\nbody\r\n" },
  { "/graph-message/rewrite/each-address-on-its-own-line",
    "From: a@x.test\r\nTo: ann@y.test, bob@y.test, carl@y.test\r\n\r\nbody\r\n",
    { "carl@y.test", "ann@y.test", "x@y.test", "w@y.test", NULL },
    "From: a@x.test\r\nTo: ann@y.test,\r\n carl@y.test\r\nBcc: x@y.test,\r\n w@y.test\r\n\r\nbody\r\n" },
  { "/graph-message/rewrite/all-header-recipients-gone",
    "From: a@x.test\r\nTo: ann@y.test\r\nSubject: s\r\n\r\nbody\r\n",
    { "zed@y.test", NULL },
    "From: a@x.test\r\nBcc: zed@y.test\r\nSubject: s\r\n\r\nbody\r\n" },
  { "/graph-message/rewrite/no-recipient-fields",
    "From: a@x.test\r\nSubject: s\r\n\r\nbody\r\n",
    { "zed@y.test", NULL },
    "From: a@x.test\r\nSubject: s\r\nBcc: zed@y.test\r\n\r\nbody\r\n" },
  { "/graph-message/rewrite/group-flattened",
    "From: a@x.test\r\nTo: undisclosed-recipients:;\r\nCC: team: ann@y.test, bob@y.test;\r\n\r\nbody\r\n",
    { "bob@y.test", NULL },
    "From: a@x.test\r\nCc: bob@y.test\r\n\r\nbody\r\n" },
  /* Found by fuzz-graph: all header, the last line without its CRLF. */
  { "/graph-message/rewrite/header-without-line-end",
    "From: a@x.test\r\nSubject: s",
    { "zed@y.test", NULL },
    "From: a@x.test\r\nSubject: s\r\nBcc: zed@y.test\r\n" },
  { "/graph-message/rewrite/same-address-in-to-and-cc-once",
    "From: a@x.test\r\nTo: ann@y.test\r\nCc: Ann <ANN@y.test>\r\n\r\nbody\r\n",
    { "ann@y.test", "bob@y.test", NULL },
    "From: a@x.test\r\nTo: ann@y.test\r\nBcc: bob@y.test\r\n\r\nbody\r\n" },
};

static void
test_rewrite (gconstpointer data)
{
  const RewriteCase *c = data;
  PmxEnvelope e = envelope_of (c->rcpts);
  g_autoptr(GraphMessage) m = graph_message_parse ((const guint8 *) c->raw, strlen (c->raw), &e);
  g_autoptr(GBytes) out = NULL;
  g_autofree char *text = NULL;

  g_assert_nonnull (m);
  out = graph_message_rewrite_recipients (m, (const guint8 *) c->raw, strlen (c->raw), &e);
  text = g_strndup (g_bytes_get_data (out, NULL), g_bytes_get_size (out));
  g_assert_cmpstr (text, ==, c->want);
}

/* An encoded display name stays an encoded word that decodes to itself. */
static void
test_rewrite_encoded_name (void)
{
  static const char raw[] = "From: a@x.test\r\nTo: =?utf-8?q?Caf=C3=A9?= <cafe@y.test>, ann@y.test\r\n\r\nbody\r\n";
  const char *rcpts[] = { "cafe@y.test", NULL };
  PmxEnvelope e = envelope_of (rcpts);
  g_autoptr(GraphMessage) m = graph_message_parse ((const guint8 *) raw, strlen (raw), &e);
  g_autoptr(GBytes) out = graph_message_rewrite_recipients (m, (const guint8 *) raw, strlen (raw), &e);
  g_autoptr(GraphMessage) again = graph_message_parse (g_bytes_get_data (out, NULL), g_bytes_get_size (out), &e);
  InternetAddressList *to = g_mime_message_get_addresses (again->message, GMIME_ADDRESS_TYPE_TO);
  g_autofree char *text = g_strndup (g_bytes_get_data (out, NULL), g_bytes_get_size (out));

  g_assert_true (again->headers_match);
  g_assert_cmpint (internet_address_list_length (to), ==, 1);
  g_assert_cmpstr (internet_address_get_name (internet_address_list_get_address (to, 0)), ==, "Caf\xc3\xa9");
  g_assert_null (strchr (text, 0xc3));   /* still 7-bit in the header */
  g_assert_true (g_str_has_suffix (text, "\r\n\r\nbody\r\n"));
}

static void
test_json (void)
{
  static const char raw[] =
    "From: Jo <jo@x.test>\r\nTo: Ann <ann@y.test>, gone@y.test\r\nCc: carl@y.test\r\nReply-To: help@x.test\r\n"
    "Subject: =?utf-8?q?r=C3=A9sum=C3=A9?=\r\nImportance: High\r\nX-Empty:   \r\nX-A: 1\r\nX-B: 2\r\nList-Id: l\r\n"
    "X-C: 3\r\nX-D: 4\r\nX-E: 5\r\nX-F: 6\r\nMIME-Version: 1.0\r\nContent-Type: multipart/related; boundary=r\r\n\r\n"
    "--r\r\nContent-Type: multipart/alternative; boundary=a\r\n\r\n--a\r\nContent-Type: text/plain\r\n\r\nplain\r\n"
    "--a\r\nContent-Type: text/html; charset=iso-8859-1\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n"
    "<p>caf=E9 <img src=3D\"cid:logo@x\"></p>\r\n--a--\r\n"
    "--r\r\nContent-Type: image/png\r\nContent-ID: <logo@x>\r\nContent-Transfer-Encoding: base64\r\n\r\n"
    "iVBORw0KGgo=\r\n--r\r\nContent-Type: application/pdf; name=\"r.pdf\"\r\nContent-Disposition: attachment; filename=\"r.pdf\"\r\n"
    "Content-Transfer-Encoding: base64\r\n\r\nJVBERi0=\r\n--r--\r\n";
  const char *rcpts[] = { "ann@y.test", "carl@y.test", "hidden@y.test", NULL };
  PmxEnvelope e = envelope_of (rcpts);
  g_autoptr(GraphMessage) m = graph_message_parse ((const guint8 *) raw, strlen (raw), &e);
  g_autoptr(GPtrArray) attachments = NULL;
  g_autoptr(JsonObject) o = graph_message_to_json (m, &e, "jo@x.test", &attachments);
  g_autoptr(JsonNode) node = json_node_new (JSON_NODE_OBJECT);
  g_autofree char *text = NULL;
  GraphAttachment *a;

  json_node_set_object (node, o);
  text = json_to_string (node, FALSE);
  g_assert_cmpstr (text, ==,
                   "{\"subject\":\"r\xc3\xa9sum\xc3\xa9\","
                   "\"body\":{\"contentType\":\"html\",\"content\":\"<p>caf\xc3\xa9 <img src=\\\"cid:logo@x\\\"></p>\"},"
                   "\"toRecipients\":[{\"emailAddress\":{\"address\":\"ann@y.test\",\"name\":\"Ann\"}}],"
                   "\"ccRecipients\":[{\"emailAddress\":{\"address\":\"carl@y.test\"}}],"
                   "\"bccRecipients\":[{\"emailAddress\":{\"address\":\"hidden@y.test\"}}],"
                   "\"replyTo\":[{\"emailAddress\":{\"address\":\"help@x.test\"}}],"
                   "\"from\":{\"emailAddress\":{\"address\":\"jo@x.test\",\"name\":\"Jo\"}},"
                   "\"importance\":\"high\","
                   "\"internetMessageHeaders\":[{\"name\":\"X-A\",\"value\":\"1\"},{\"name\":\"X-B\",\"value\":\"2\"},"
                   "{\"name\":\"X-C\",\"value\":\"3\"},{\"name\":\"X-D\",\"value\":\"4\"},{\"name\":\"X-E\",\"value\":\"5\"}]}");

  g_assert_cmpuint (attachments->len, ==, 2);
  a = g_ptr_array_index (attachments, 0);
  g_assert_cmpstr (a->name, ==, "attachment-1");
  g_assert_cmpstr (a->content_type, ==, "image/png");
  g_assert_cmpstr (a->content_id, ==, "logo@x");
  g_assert_true (a->is_inline);
  g_assert_cmpmem (g_bytes_get_data (a->data, NULL), g_bytes_get_size (a->data), "\x89PNG\r\n\x1a\n", 8);
  a = g_ptr_array_index (attachments, 1);
  g_assert_cmpstr (a->name, ==, "r.pdf");
  g_assert_false (a->is_inline);
  g_assert_cmpmem (g_bytes_get_data (a->data, NULL), g_bytes_get_size (a->data), "%PDF-", 5);
  {
    g_autoptr(JsonObject) j = graph_attachment_to_json (a);
    g_autoptr(JsonNode) n = json_node_new (JSON_NODE_OBJECT);
    g_autofree char *t = NULL;

    json_node_set_object (n, j);
    t = json_to_string (n, FALSE);
    g_assert_cmpstr (t, ==, "{\"@odata.type\":\"#microsoft.graph.fileAttachment\",\"name\":\"r.pdf\","
                            "\"contentType\":\"application/pdf\",\"contentBytes\":\"JVBERi0=\",\"isInline\":false}");
  }
}

/* No x- header with a value: no internetMessageHeaders at all (Graph
 * refuses an empty array); a text-only message has a text body. */
static void
test_json_minimal (void)
{
  static const char raw[] = "From: a@x.test\r\nTo: ann@y.test\r\nX-Blank:\r\n\r\nhello\r\n";
  const char *rcpts[] = { "ann@y.test", NULL };
  PmxEnvelope e = envelope_of (rcpts);
  g_autoptr(GraphMessage) m = graph_message_parse ((const guint8 *) raw, strlen (raw), &e);
  g_autoptr(GPtrArray) attachments = NULL;
  g_autoptr(JsonObject) o = graph_message_to_json (m, &e, NULL, &attachments);
  g_autoptr(JsonNode) node = json_node_new (JSON_NODE_OBJECT);
  g_autofree char *text = NULL;

  json_node_set_object (node, o);
  text = json_to_string (node, FALSE);
  g_assert_cmpstr (text, ==, "{\"subject\":\"\",\"body\":{\"contentType\":\"text\",\"content\":\"hello\\r\\n\"},"
                             "\"toRecipients\":[{\"emailAddress\":{\"address\":\"ann@y.test\"}}]}");
  g_assert_cmpuint (attachments->len, ==, 0);
}

int
main (int    argc,
      char **argv)
{
  g_test_init (&argc, &argv, NULL);
  g_mime_init ();
  for (guint i = 0; i < G_N_ELEMENTS (match_cases); i++)
    g_test_add_data_func (match_cases[i].path, &match_cases[i], test_match);
  for (guint i = 0; i < G_N_ELEMENTS (rewrite_cases); i++)
    g_test_add_data_func (rewrite_cases[i].path, &rewrite_cases[i], test_rewrite);
  g_test_add_func ("/graph-message/rewrite/encoded-name", test_rewrite_encoded_name);
  g_test_add_func ("/graph-message/json/full", test_json);
  g_test_add_func ("/graph-message/json/minimal", test_json_minimal);
  return g_test_run ();
}

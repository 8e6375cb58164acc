/* SPDX-License-Identifier: GPL-3.0-or-later */
/*
 * test-mime.c - pmx_mime_build(): the MIME built from JSON, parsed back with
 * GMime and checked part by part; RFC 2047 encodings; Bcc absence; header
 * injection and malformed members refused with the right pointer.
 */
#include "pmx-mime.h"

#include <gmime/gmime.h>
#include <string.h>

G_DEFINE_AUTOPTR_CLEANUP_FUNC (GMimeMessage, g_object_unref)
G_DEFINE_AUTOPTR_CLEANUP_FUNC (GMimeParser, g_object_unref)
G_DEFINE_AUTOPTR_CLEANUP_FUNC (GMimeStream, g_object_unref)

typedef struct {
  GBytes       *bytes;
  char         *sender;
  GPtrArray    *recipients;
  GMimeMessage *message;
  char         *headers;   /* CRLF + the raw header block, CRLF line ends */
} Built;

/* built_free - drop a Built */
static void
built_free (Built *b)
{
  g_clear_pointer (&b->bytes, g_bytes_unref);
  g_free (b->sender);
  g_clear_pointer (&b->recipients, g_ptr_array_unref);
  g_clear_object (&b->message);
  g_free (b->headers);
  g_free (b);
}

G_DEFINE_AUTOPTR_CLEANUP_FUNC (Built, built_free)

/* json_object - parse @text into an object */
static JsonObject *
json_object (const char *text)
{
  g_autoptr(GError) error = NULL;
  JsonObject *obj = pmx_mime_parse_request (text, strlen (text), &error);

  g_assert_no_error (error);
  g_assert_nonnull (obj);
  return obj;
}

/* assert_crlf_only - every LF is preceded by CR, every CR followed by LF */
static void
assert_crlf_only (GBytes *bytes)
{
  gsize len = 0;
  const char *p = g_bytes_get_data (bytes, &len);

  for (gsize i = 0; i < len; i++)
    {
      if (p[i] == '\n')
        g_assert_true (i > 0 && p[i - 1] == '\r');
      if (p[i] == '\r')
        g_assert_true (i + 1 < len && p[i + 1] == '\n');
    }
}

/* build - build @json, parse the result back */
static Built *
build (const char *json)
{
  g_autoptr(JsonObject) obj = json_object (json);
  g_autoptr(GError) error = NULL;
  g_autoptr(GMimeStream) stream = NULL;
  g_autoptr(GMimeParser) parser = NULL;
  Built *b = g_new0 (Built, 1);
  const char *data;
  const char *end;
  gsize len = 0;

  b->bytes = pmx_mime_build (obj, &b->sender, &b->recipients, &error);
  g_assert_no_error (error);
  g_assert_nonnull (b->bytes);
  assert_crlf_only (b->bytes);
  data = g_bytes_get_data (b->bytes, &len);
  end = g_strstr_len (data, (gssize) len, "\r\n\r\n");
  g_assert_nonnull (end);
  /* A leading CRLF, so "\r\nName: " finds the first field too. */
  b->headers = g_strdup_printf ("\r\n%.*s", (int) (end - data) + 2, data);

  stream = g_mime_stream_mem_new_with_buffer (data, len);
  parser = g_mime_parser_new_with_stream (stream);
  b->message = g_mime_parser_construct_message (parser, NULL);
  g_assert_nonnull (b->message);
  return b;
}

/* assert_refused - building @json fails with @code at @pointer */
static void
assert_refused (const char *json,
                int         code,
                const char *pointer)
{
  g_autoptr(JsonObject) obj = json_object (json);
  g_autoptr(GError) error = NULL;
  g_autofree char *got_pointer = NULL;
  g_autofree char *sender = NULL;
  GPtrArray *rcpts = NULL;
  GBytes *bytes = pmx_mime_build_full (obj, &sender, &rcpts, &got_pointer, &error);

  g_assert_null (bytes);
  g_assert_null (rcpts);
  g_assert_error (error, PMX_MIME_ERROR, code);
  g_assert_cmpstr (got_pointer, ==, pointer);
}

/* content_text - decoded content of a leaf part as a string */
static char *
content_text (GMimeObject *obj)
{
  GMimeDataWrapper *w = g_mime_part_get_content (GMIME_PART (obj));
  GByteArray *array = g_byte_array_new ();
  g_autoptr(GMimeStream) out = g_mime_stream_mem_new_with_byte_array (array);

  g_mime_stream_mem_set_owner (GMIME_STREAM_MEM (out), FALSE);
  g_mime_data_wrapper_write_to_stream (w, out);
  g_byte_array_append (array, (const guint8 *) "", 1);
  return (char *) g_byte_array_free (array, FALSE);
}

/* assert_type - @obj is @type/@subtype */
static void
assert_type (GMimeObject *obj,
             const char  *type,
             const char  *subtype)
{
  GMimeContentType *ct = g_mime_object_get_content_type (obj);

  g_assert_cmpstr (g_mime_content_type_get_media_type (ct), ==, type);
  g_assert_cmpstr (g_mime_content_type_get_media_subtype (ct), ==, subtype);
}

static void
test_text_only (void)
{
  g_autoptr(Built) b = build ("{\"from\": \"app@example.test\", \"to\": [\"a@x.test\"], \"subject\": \"Hello\","
                              " \"text\": \"line one\\nline two\\n\"}");
  GMimeObject *body = g_mime_message_get_mime_part (b->message);
  g_autofree char *text = NULL;

  g_assert_cmpstr (b->sender, ==, "app@example.test");
  g_assert_cmpuint (b->recipients->len, ==, 1);
  g_assert_cmpstr (g_ptr_array_index (b->recipients, 0), ==, "a@x.test");
  g_assert_cmpstr (g_mime_message_get_subject (b->message), ==, "Hello");
  assert_type (body, "text", "plain");
  text = content_text (body);
  g_assert_cmpstr (text, ==, "line one\r\nline two\r\n");
  g_assert_nonnull (strstr (b->headers, "\r\nMIME-Version: 1.0\r\n"));
  g_assert_nonnull (strstr (b->headers, "\r\nDate: "));
  g_assert_nonnull (g_mime_message_get_message_id (b->message));
  g_assert_true (g_str_has_suffix (g_mime_message_get_message_id (b->message), "@example.test"));
}

static void
test_alternative (void)
{
  g_autoptr(Built) b = build ("{\"from\": \"app@example.test\", \"to\": [\"a@x.test\"], \"text\": \"plain\","
                              " \"html\": \"<p>rich</p>\"}");
  GMimeObject *body = g_mime_message_get_mime_part (b->message);
  GMimeMultipart *mp;
  g_autofree char *t0 = NULL;
  g_autofree char *t1 = NULL;

  assert_type (body, "multipart", "alternative");
  mp = GMIME_MULTIPART (body);
  g_assert_cmpint (g_mime_multipart_get_count (mp), ==, 2);
  assert_type (g_mime_multipart_get_part (mp, 0), "text", "plain");
  assert_type (g_mime_multipart_get_part (mp, 1), "text", "html");
  t0 = content_text (g_mime_multipart_get_part (mp, 0));
  t1 = content_text (g_mime_multipart_get_part (mp, 1));
  g_assert_cmpstr (t0, ==, "plain");
  g_assert_cmpstr (t1, ==, "<p>rich</p>");
}

static void
test_attachments_and_inline (void)
{
  /* "aGVsbG8=" is "hello"; "iVBORw==" four bytes of a PNG signature. */
  g_autoptr(Built) b = build (
    "{\"from\": \"app@example.test\", \"to\": [\"a@x.test\"], \"text\": \"t\", \"html\": \"<img src=cid:logo1>\","
    " \"attachments\": ["
    "  {\"filename\": \"hello.txt\", \"content_type\": \"text/plain\", \"content\": \"aGVsbG8=\"},"
    "  {\"filename\": \"logo.png\", \"content_type\": \"image/png\", \"content\": \"iVBORw==\", \"content_id\": \"logo1\"}"
    "]}");
  GMimeObject *body = g_mime_message_get_mime_part (b->message);
  GMimeMultipart *mixed, *alt, *related;
  GMimeObject *att, *img;
  g_autofree char *hello = NULL;

  assert_type (body, "multipart", "mixed");
  mixed = GMIME_MULTIPART (body);
  g_assert_cmpint (g_mime_multipart_get_count (mixed), ==, 2);
  assert_type (g_mime_multipart_get_part (mixed, 0), "multipart", "alternative");
  alt = GMIME_MULTIPART (g_mime_multipart_get_part (mixed, 0));
  assert_type (g_mime_multipart_get_part (alt, 0), "text", "plain");
  assert_type (g_mime_multipart_get_part (alt, 1), "multipart", "related");
  related = GMIME_MULTIPART (g_mime_multipart_get_part (alt, 1));
  g_assert_cmpstr (g_mime_object_get_content_type_parameter (GMIME_OBJECT (related), "type"), ==, "text/html");
  assert_type (g_mime_multipart_get_part (related, 0), "text", "html");
  img = g_mime_multipart_get_part (related, 1);
  assert_type (img, "image", "png");
  g_assert_cmpstr (g_mime_object_get_content_id (img), ==, "logo1");
  g_assert_cmpstr (g_mime_content_disposition_get_disposition (g_mime_object_get_content_disposition (img)), ==, "inline");

  att = g_mime_multipart_get_part (mixed, 1);
  assert_type (att, "text", "plain");
  g_assert_cmpstr (g_mime_part_get_filename (GMIME_PART (att)), ==, "hello.txt");
  g_assert_true (g_mime_part_is_attachment (GMIME_PART (att)));
  g_assert_cmpint (g_mime_part_get_content_encoding (GMIME_PART (att)), ==, GMIME_CONTENT_ENCODING_BASE64);
  hello = content_text (att);
  g_assert_cmpstr (hello, ==, "hello");
}

static void
test_encoded_words (void)
{
  g_autoptr(Built) b = build ("{\"from\": {\"name\": \"Zoë Çelik\", \"address\": \"zoe@example.test\"},"
                              " \"to\": [{\"name\": \"Jürgen\", \"address\": \"j@x.test\"}],"
                              " \"subject\": \"Grüße aus Köln ☕\", \"text\": \"é\","
                              " \"headers\": {\"X-Note\": \"naïve\"}}");
  InternetAddressList *from = g_mime_message_get_from (b->message);
  InternetAddress *ia = internet_address_list_get_address (from, 0);

  /* Raw headers are ASCII, with RFC 2047 encoded words. */
  for (const char *p = b->headers; *p != '\0'; p++)
    g_assert_cmpint ((guchar) *p, <, 0x80);
  g_assert_nonnull (strstr (b->headers, "Subject: =?"));
  {
    g_autofree char *lower = g_ascii_strdown (b->headers, -1);

    g_assert_nonnull (strstr (lower, "=?utf-8?"));
  }
  /* ... that decode back to the UTF-8 given. */
  g_assert_cmpstr (g_mime_message_get_subject (b->message), ==, "Grüße aus Köln ☕");
  g_assert_cmpstr (internet_address_get_name (ia), ==, "Zoë Çelik");
  g_assert_cmpstr (internet_address_mailbox_get_addr (INTERNET_ADDRESS_MAILBOX (ia)), ==, "zoe@example.test");
  ia = internet_address_list_get_address (g_mime_message_get_addresses (b->message, GMIME_ADDRESS_TYPE_TO), 0);
  g_assert_cmpstr (internet_address_get_name (ia), ==, "Jürgen");
  {
    g_autofree char *note = g_mime_utils_header_decode_text (NULL, g_mime_object_get_header (GMIME_OBJECT (b->message), "X-Note"));

    g_assert_cmpstr (note, ==, "naïve");
  }
}

static void
test_bcc_envelope_only (void)
{
  g_autoptr(Built) b = build ("{\"from\": \"app@example.test\", \"to\": [\"a@x.test\"], \"cc\": [\"c@x.test\", \"A@X.test\"],"
                              " \"bcc\": [\"secret@hidden.test\"], \"text\": \"x\"}");
  g_autofree char *lower = g_ascii_strdown (g_bytes_get_data (b->bytes, NULL), (gssize) g_bytes_get_size (b->bytes));

  g_assert_cmpuint (b->recipients->len, ==, 3);
  g_assert_cmpstr (g_ptr_array_index (b->recipients, 0), ==, "a@x.test");
  g_assert_cmpstr (g_ptr_array_index (b->recipients, 1), ==, "c@x.test");
  g_assert_cmpstr (g_ptr_array_index (b->recipients, 2), ==, "secret@hidden.test");
  g_assert_null (strstr (lower, "bcc"));
  g_assert_null (strstr (lower, "secret@hidden.test"));
  g_assert_nonnull (strstr (b->headers, "\r\nCc: c@x.test, A@X.test\r\n"));
}

static void
test_bcc_only (void)
{
  g_autoptr(Built) b = build ("{\"from\": \"app@example.test\", \"bcc\": [\"s@x.test\"], \"text\": \"x\"}");

  g_assert_cmpuint (b->recipients->len, ==, 1);
  g_assert_null (strstr (b->headers, "s@x.test"));
}

static void
test_given_date_and_id (void)
{
  g_autoptr(Built) b = build ("{\"from\": \"app@example.test\", \"to\": [\"a@x.test\"],"
                              " \"headers\": {\"Date\": \"Mon, 1 Jan 2024 00:00:00 +0000\", \"Message-ID\": \"<given@example.test>\","
                              " \"X-Mailer\": \"test\"}, \"reply_to\": \"r@example.test\"}");

  g_assert_cmpstr (g_mime_message_get_message_id (b->message), ==, "given@example.test");
  g_assert_nonnull (strstr (b->headers, "Date: Mon, 1 Jan 2024 00:00:00 +0000\r\n"));
  g_assert_null (strstr (strstr (b->headers, "Date: ") + 1, "Date: "));
  g_assert_nonnull (strstr (b->headers, "\r\nX-Mailer: test\r\n"));
  g_assert_nonnull (strstr (b->headers, "\r\nReply-To: r@example.test\r\n"));
  /* No text or html: an empty text/plain body. */
  assert_type (g_mime_message_get_mime_part (b->message), "text", "plain");
}

static void
test_postmux_headers (void)
{
  g_autoptr(Built) b = build ("{\"from\": \"app@example.test\", \"to\": [\"a@x.test\"], \"transport\": \"o365\","
                              " \"route\": \"bulk\", \"tags\": [\"welcome\", \"tenant:42\"], \"text\": \"x\"}");

  g_assert_nonnull (strstr (b->headers, "\r\nX-Postmux-Transport: o365\r\n"));
  g_assert_nonnull (strstr (b->headers, "\r\nX-Postmux-Route: bulk\r\n"));
  g_assert_nonnull (strstr (b->headers, "\r\nX-Postmux-Tags: welcome, tenant:42\r\n"));
}

static void
test_newlines_normalized (void)
{
  /* CRLF, lone CR and LF in the text all come out as CRLF. */
  g_autoptr(Built) b = build ("{\"from\": \"app@example.test\", \"to\": [\"a@x.test\"], \"text\": \"a\\r\\nb\\rc\\nd\\n.\\n\"}");
  g_autofree char *text = content_text (g_mime_message_get_mime_part (b->message));

  g_assert_cmpstr (text, ==, "a\r\nb\r\nc\r\nd\r\n.\r\n");
}

/* Table of refusals: member, error code, pointer. */
static const struct {
  const char *name;
  const char *json;
  int         code;
  const char *pointer;
} refusals[] = {
  { "subject-crlf", "{\"from\":\"a@x.test\",\"to\":[\"b@x.test\"],\"subject\":\"hi\\r\\nBcc: evil@x.test\"}",
    PMX_MIME_ERROR_HEADER, "/subject" },
  { "subject-lf", "{\"from\":\"a@x.test\",\"to\":[\"b@x.test\"],\"subject\":\"hi\\nX: y\"}", PMX_MIME_ERROR_HEADER, "/subject" },
  { "header-value-cr", "{\"from\":\"a@x.test\",\"to\":[\"b@x.test\"],\"headers\":{\"X-A\":\"v\\rX-B: w\"}}",
    PMX_MIME_ERROR_HEADER, "/headers/X-A" },
  { "header-name-lf", "{\"from\":\"a@x.test\",\"to\":[\"b@x.test\"],\"headers\":{\"X-A\\nBcc\":\"v\"}}",
    PMX_MIME_ERROR_HEADER, "/headers/X-A\nBcc" },
  { "header-name-colon", "{\"from\":\"a@x.test\",\"to\":[\"b@x.test\"],\"headers\":{\"X-A: b\":\"v\"}}",
    PMX_MIME_ERROR_HEADER, "/headers/X-A: b" },
  { "header-bcc", "{\"from\":\"a@x.test\",\"to\":[\"b@x.test\"],\"headers\":{\"Bcc\":\"v\"}}",
    PMX_MIME_ERROR_HEADER, "/headers/Bcc" },
  { "header-content-type", "{\"from\":\"a@x.test\",\"to\":[\"b@x.test\"],\"headers\":{\"content-TYPE\":\"text/html\"}}",
    PMX_MIME_ERROR_HEADER, "/headers/content-TYPE" },
  { "header-x-postmux", "{\"from\":\"a@x.test\",\"to\":[\"b@x.test\"],\"headers\":{\"X-Postmux-Transport\":\"t\"}}",
    PMX_MIME_ERROR_HEADER, "/headers/X-Postmux-Transport" },
  { "display-name-crlf", "{\"from\":{\"name\":\"A\\r\\nBcc: e@x.test\",\"address\":\"a@x.test\"},\"to\":[\"b@x.test\"]}",
    PMX_MIME_ERROR_HEADER, "/from/name" },
  { "address-crlf", "{\"from\":\"a@x.test\",\"to\":[\"b@x.test\\r\\nBcc: e@x.test\"]}", PMX_MIME_ERROR_HEADER, "/to/0" },
  { "filename-crlf", "{\"from\":\"a@x.test\",\"to\":[\"b@x.test\"],\"attachments\":[{\"filename\":\"a\\r\\nX: y\",\"content\":\"\"}]}",
    PMX_MIME_ERROR_HEADER, "/attachments/0/filename" },
  { "content-id-bracket", "{\"from\":\"a@x.test\",\"to\":[\"b@x.test\"],\"attachments\":[{\"filename\":\"a\",\"content\":\"\",\"content_id\":\"a>b\"}]}",
    PMX_MIME_ERROR_HEADER, "/attachments/0/content_id" },
  { "tag-crlf", "{\"from\":\"a@x.test\",\"to\":[\"b@x.test\"],\"tags\":[\"ok\",\"a\\r\\nb\"]}", PMX_MIME_ERROR_HEADER, "/tags/1" },
  { "bad-address", "{\"from\":\"a@x.test\",\"cc\":[\"ok@x.test\",\"not an address\"]}", PMX_MIME_ERROR_ADDRESS, "/cc/1" },
  { "bad-from", "{\"from\":\"nobody\",\"to\":[\"b@x.test\"]}", PMX_MIME_ERROR_ADDRESS, "/from" },
  { "no-recipient", "{\"from\":\"a@x.test\",\"to\":[]}", PMX_MIME_ERROR_RECIPIENTS, "" },
  { "no-from", "{\"to\":[\"b@x.test\"]}", PMX_MIME_ERROR_INVALID, "" },
  { "to-not-array", "{\"from\":\"a@x.test\",\"to\":\"b@x.test\"}", PMX_MIME_ERROR_INVALID, "/to" },
  { "subject-number", "{\"from\":\"a@x.test\",\"to\":[\"b@x.test\"],\"subject\":5}", PMX_MIME_ERROR_INVALID, "/subject" },
  { "unknown-member", "{\"from\":\"a@x.test\",\"to\":[\"b@x.test\"],\"colour\":\"red\"}", PMX_MIME_ERROR_INVALID, "/colour" },
  { "bad-base64", "{\"from\":\"a@x.test\",\"to\":[\"b@x.test\"],\"attachments\":[{\"filename\":\"a\",\"content\":\"a*b=\"}]}",
    PMX_MIME_ERROR_ENCODING, "/attachments/0/content" },
  { "base64-length", "{\"from\":\"a@x.test\",\"to\":[\"b@x.test\"],\"attachments\":[{\"filename\":\"a\",\"content\":\"abc\"}]}",
    PMX_MIME_ERROR_ENCODING, "/attachments/0/content" },
  { "bad-content-type", "{\"from\":\"a@x.test\",\"to\":[\"b@x.test\"],\"attachments\":[{\"filename\":\"a\",\"content\":\"\",\"content_type\":\"text\"}]}",
    PMX_MIME_ERROR_INVALID, "/attachments/0/content_type" },
  { "transport-name", "{\"from\":\"a@x.test\",\"to\":[\"b@x.test\"],\"transport\":\"a b\"}", PMX_MIME_ERROR_INVALID, "/transport" },
};

static void
test_refusal (gconstpointer data)
{
  guint i = GPOINTER_TO_UINT (data);

  assert_refused (refusals[i].json, refusals[i].code, refusals[i].pointer);
}

static void
test_parse_request (void)
{
  g_autoptr(GError) error = NULL;
  g_autoptr(GString) deep = g_string_new (NULL);
  JsonObject *obj;

  obj = pmx_mime_parse_request ("[1]", 3, &error);
  g_assert_null (obj);
  g_assert_error (error, PMX_MIME_ERROR, PMX_MIME_ERROR_PARSE);
  g_clear_error (&error);

  obj = pmx_mime_parse_request ("{\"a\":", 5, &error);
  g_assert_null (obj);
  g_assert_error (error, PMX_MIME_ERROR, PMX_MIME_ERROR_PARSE);
  g_clear_error (&error);

  g_string_append (deep, "{\"a\":");
  for (int i = 0; i < 100000; i++)
    g_string_append_c (deep, '[');
  obj = pmx_mime_parse_request (deep->str, deep->len, &error);
  g_assert_null (obj);
  g_assert_error (error, PMX_MIME_ERROR, PMX_MIME_ERROR_PARSE);
  g_assert_nonnull (strstr (error->message, "nested"));
  g_clear_error (&error);

  /* Brackets inside strings do not count. */
  {
    const char *text = "{\"a\":\"[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[\\\"[[[[[[\"}";

    obj = pmx_mime_parse_request (text, strlen (text), &error);
  }
  g_assert_no_error (error);
  g_assert_nonnull (obj);
  json_object_unref (obj);
}

static void
test_address_validity (void)
{
  g_assert_true (pmx_mime_address_is_valid ("a@b"));
  g_assert_true (pmx_mime_address_is_valid ("first.last+tag@sub.example.test"));
  g_assert_false (pmx_mime_address_is_valid ("@b"));
  g_assert_false (pmx_mime_address_is_valid ("a@"));
  g_assert_false (pmx_mime_address_is_valid ("a@b@c"));
  g_assert_false (pmx_mime_address_is_valid ("a b@c"));
  g_assert_false (pmx_mime_address_is_valid ("<a@b>"));
  g_assert_false (pmx_mime_address_is_valid ("a@b\r\n"));
  g_assert_false (pmx_mime_address_is_valid (""));
}

int
main (int    argc,
      char **argv)
{
  g_test_init (&argc, &argv, NULL);

  g_test_add_func ("/mime/build/text-only", test_text_only);
  g_test_add_func ("/mime/build/text-and-html-are-alternative", test_alternative);
  g_test_add_func ("/mime/build/attachments-mixed-inline-related", test_attachments_and_inline);
  g_test_add_func ("/mime/build/utf8-is-rfc2047-encoded", test_encoded_words);
  g_test_add_func ("/mime/build/bcc-is-envelope-only", test_bcc_envelope_only);
  g_test_add_func ("/mime/build/bcc-only-message", test_bcc_only);
  g_test_add_func ("/mime/build/given-date-and-message-id-win", test_given_date_and_id);
  g_test_add_func ("/mime/build/transport-route-tags-headers", test_postmux_headers);
  g_test_add_func ("/mime/build/newlines-become-crlf", test_newlines_normalized);
  for (guint i = 0; i < G_N_ELEMENTS (refusals); i++)
    {
      g_autofree char *path = g_strdup_printf ("/mime/refuse/%s", refusals[i].name);

      g_test_add_data_func (path, GUINT_TO_POINTER (i), test_refusal);
    }
  g_test_add_func ("/mime/parse/objects-only-and-bounded-depth", test_parse_request);
  g_test_add_func ("/mime/address/validity", test_address_validity);
  return g_test_run ();
}

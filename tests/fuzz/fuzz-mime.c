/* SPDX-License-Identifier: GPL-3.0-or-later */
/*
 * fuzz-mime.c - libFuzzer target for the HTTP JSON -> MIME path: the
 * request body parser, the message schema, and pmx_mime_build_full().
 *
 * Checks on every message built: CRLF line ends only, no Bcc field, a
 * sender and at least one recipient, a header block of well-formed fields
 * (no injected line), and GMime parses the result back.  Trusts nothing in
 * the input; fails by aborting (g_assert), which the fuzzer reports.
 */
#include "pmx-mime.h"
#include "pmx-schema.h"

#include <gmime/gmime.h>
#include <stdint.h>
#include <string.h>

int LLVMFuzzerTestOneInput (const uint8_t *data, size_t size);

/* fuzz_schema - schemas/message.schema.json, loaded once */
static PmxSchema *
fuzz_schema (void)
{
  static PmxSchema *schema;

  if (schema == NULL)
    {
      g_autofree char *text = NULL;
      g_autoptr(GError) error = NULL;

      if (!g_file_get_contents (PMX_MESSAGE_SCHEMA, &text, NULL, &error))
        g_error ("%s", error->message);
      schema = pmx_schema_new_from_string (text, NULL, &error);
      if (schema == NULL)
        g_error ("%s", error->message);
    }
  return schema;
}

/* fuzz_check_message - the invariants of a built message */
static void
fuzz_check_message (GBytes    *bytes,
                    const char *sender,
                    GPtrArray *recipients)
{
  gsize len = 0;
  const char *p = g_bytes_get_data (bytes, &len);
  const char *end;
  const char *line;

  g_assert_true (pmx_mime_address_is_valid (sender));
  g_assert_cmpuint (recipients->len, >, 0);
  for (gsize i = 0; i < len; i++)
    {
      if (p[i] == '\n')
        g_assert_true (i > 0 && p[i - 1] == '\r');
      if (p[i] == '\r')
        g_assert_true (i + 1 < len && p[i + 1] == '\n');
    }
  end = g_strstr_len (p, (gssize) len, "\r\n\r\n");
  g_assert_nonnull (end);
  for (line = p; line < end + 2;)
    {
      const char *eol = g_strstr_len (line, end + 2 - line, "\r\n");

      g_assert_nonnull (eol);
      if (line[0] != ' ' && line[0] != '\t')
        {
          const char *colon = memchr (line, ':', (gsize) (eol - line));

          g_assert_nonnull (colon);
          g_assert_true (colon > line);
          g_assert_false (g_ascii_strncasecmp (line, "bcc:", 4) == 0);
        }
      line = eol + 2;
    }
  {
    GMimeStream *stream = g_mime_stream_mem_new_with_buffer (p, len);
    GMimeParser *parser = g_mime_parser_new_with_stream (stream);
    GMimeMessage *message = g_mime_parser_construct_message (parser, NULL);

    g_assert_nonnull (message);
    g_object_unref (message);
    g_object_unref (parser);
    g_object_unref (stream);
  }
}

int
LLVMFuzzerTestOneInput (const uint8_t *data,
                        size_t         size)
{
  g_autoptr(JsonObject) obj = NULL;
  g_autoptr(JsonNode) node = NULL;
  g_autoptr(GPtrArray) problems = NULL;
  g_autoptr(GPtrArray) recipients = NULL;
  g_autoptr(GBytes) bytes = NULL;
  g_autoptr(GError) error = NULL;
  g_autofree char *sender = NULL;
  g_autofree char *pointer = NULL;

  obj = pmx_mime_parse_request ((const char *) data, size, NULL);
  if (obj == NULL)
    return 0;
  node = json_node_new (JSON_NODE_OBJECT);
  json_node_set_object (node, obj);
  (void) pmx_schema_validate (fuzz_schema (), node, NULL, &problems, NULL);

  /* The builder must cope with anything, schema-valid or not. */
  bytes = pmx_mime_build_full (obj, &sender, &recipients, &pointer, &error);
  if (bytes == NULL)
    {
      g_assert_nonnull (error);
      g_assert_nonnull (pointer);
      g_assert_true (error->domain == PMX_MIME_ERROR);
      return 0;
    }
  fuzz_check_message (bytes, sender, recipients);
  return 0;
}

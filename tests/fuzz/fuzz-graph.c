/* SPDX-License-Identifier: GPL-3.0-or-later */
/*
 * fuzz-graph.c - libFuzzer target for the graph transport's message module
 * (transports/graph/pmx-graph-message.c): any bytes as a stored message.
 *
 * The invariant that matters: the copy made by
 * graph_message_rewrite_recipients() names exactly this attempt's envelope
 * in To/Cc/Bcc when GMime reads it back (who Graph would deliver to), and
 * the bytes after the header block are unchanged.  The Graph message
 * resource (and each attachment's) serializes to valid UTF-8 JSON.  Fails
 * by aborting.
 *
 * The input is first made what the queue hands a transport (the ABI:
 * CRLF line ends, no bare CR or LF — the listener refuses them — and no
 * NUL): every CR, LF or CRLF becomes CRLF, NULs are dropped.
 */
#include "../../transports/graph/pmx-graph-message.h"

#include <stdint.h>
#include <string.h>

int LLVMFuzzerTestOneInput (const uint8_t *data, size_t size);

/* fuzz_body - the bytes after the first empty line (CRLF CRLF or LF LF at
 * the start of a line), or NULL when there is none */
static const guint8 *
fuzz_body (const guint8 *data,
           gsize         size,
           gsize        *out_len)
{
  for (gsize i = 0; i < size; i++)
    {
      gboolean line_start = i == 0 || data[i - 1] == '\n';

      if (!line_start)
        continue;
      if (data[i] == '\n' || (data[i] == '\r' && i + 1 < size && data[i + 1] == '\n'))
        {
          gsize start = i + (data[i] == '\n' ? 1 : 2);

          *out_len = size - start;
          return data + start;
        }
    }
  return NULL;
}

/* fuzz_crlf - @data with CRLF line ends only and no NUL */
static GByteArray *
fuzz_crlf (const uint8_t *data,
           size_t         size)
{
  GByteArray *out = g_byte_array_sized_new ((guint) size + 16);

  for (size_t i = 0; i < size; i++)
    {
      if (data[i] == '\r' || data[i] == '\n')
        {
          g_byte_array_append (out, (const guint8 *) "\r\n", 2);
          if (data[i] == '\r' && i + 1 < size && data[i + 1] == '\n')
            i++;
        }
      else if (data[i] != '\0')
        g_byte_array_append (out, data + i, 1);
    }
  return out;
}

int
LLVMFuzzerTestOneInput (const uint8_t *raw,
                        size_t         raw_size)
{
  g_autoptr(GByteArray) input = fuzz_crlf (raw, raw_size);
  const guint8 *data = input->data;
  gsize size = input->len;
  static const char *const rcpts[] = { "ann@y.test", "hidden@y.test", NULL };
  static gboolean initialized;
  PmxEnvelope e = { 0 };
  g_autoptr(GraphMessage) m = NULL;
  g_autoptr(GraphMessage) again = NULL;
  g_autoptr(GBytes) copy = NULL;
  g_autoptr(GPtrArray) attachments = NULL;
  g_autoptr(JsonObject) json = NULL;
  const guint8 *body, *copy_body;
  gsize body_len = 0, copy_body_len = 0;

  if (!initialized)
    {
      g_mime_init ();
      initialized = TRUE;
    }
  e.queue_id = "FUZZ";
  e.sender = "a@x.test";
  e.recipients = rcpts;
  e.n_recipients = 2;
  e.attempt = 2;
  e.ingress = "local";

  m = graph_message_parse (data, size, &e);
  if (m == NULL)
    return 0;
  json = graph_message_to_json (m, &e, "a@x.test", &attachments);
  {
    g_autoptr(JsonNode) node = json_node_new (JSON_NODE_OBJECT);
    g_autofree char *text = NULL;

    json_node_set_object (node, json);
    text = json_to_string (node, FALSE);
    g_assert_true (g_utf8_validate (text, -1, NULL));
    for (guint i = 0; i < attachments->len; i++)
      {
        g_autoptr(JsonObject) a = graph_attachment_to_json (g_ptr_array_index (attachments, i));
        g_autoptr(JsonNode) an = json_node_new (JSON_NODE_OBJECT);
        g_autofree char *at = NULL;

        json_node_set_object (an, a);
        at = json_to_string (an, FALSE);
        g_assert_true (g_utf8_validate (at, -1, NULL));
      }
  }
  copy = graph_message_rewrite_recipients (m, data, size, &e);
  again = graph_message_parse (g_bytes_get_data (copy, NULL), g_bytes_get_size (copy), &e);
  g_assert_nonnull (again);
  g_assert_true (again->headers_match);

  body = fuzz_body (data, size, &body_len);
  copy_body = fuzz_body (g_bytes_get_data (copy, NULL), g_bytes_get_size (copy), &copy_body_len);
  if (body != NULL)
    {
      g_assert_nonnull (copy_body);
      g_assert_cmpmem (copy_body, copy_body_len, body, body_len);
    }
  return 0;
}

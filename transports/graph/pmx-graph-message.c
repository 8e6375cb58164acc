/* SPDX-License-Identifier: GPL-3.0-or-later */
/*
 * pmx-graph-message.c - a message as Microsoft Graph needs it (see
 * pmx-graph-message.h).
 *
 * Graph's sendMail delivers to the addresses it sees: the To, Cc and Bcc
 * headers of a MIME message, or toRecipients, ccRecipients and
 * bccRecipients of a JSON message.  A gateway must deliver to the
 * envelope of the attempt instead (RFC 5321 §3.3: the envelope, not the
 * headers, says who receives a copy), so whenever the two differ this file
 * makes the set Graph sees equal to the envelope: header recipients not in
 * this attempt (delivered or bounced earlier, or the relay's other half)
 * are removed from the copy, envelope-only recipients (Bcc, split
 * recipients) are added as Bcc.  The message body is never touched.
 *
 * Trusts: the message bytes are what the queue stored (CRLF line ends);
 * anything GMime cannot parse as headers is treated as having no
 * recipients.  Follows RFC 5322 (fields, folding), RFC 2047 (encoded
 * display names, written by GMime), RFC 2045-2046 (the MIME tree).
 */
#include "pmx-graph-message.h"

#include <string.h>

/* GMime 3 has no autoptr cleanups of its own. */
G_DEFINE_AUTOPTR_CLEANUP_FUNC (GMimeStream, g_object_unref)
G_DEFINE_AUTOPTR_CLEANUP_FUNC (GMimeParser, g_object_unref)

void
graph_attachment_free (GraphAttachment *attachment)
{
  if (attachment == NULL)
    return;
  g_free (attachment->name);
  g_free (attachment->content_type);
  g_free (attachment->content_id);
  g_clear_pointer (&attachment->data, g_bytes_unref);
  g_free (attachment);
}

/* message_collect - append every mailbox of @list (groups flattened) to @out */
static void
message_collect (InternetAddressList *list,
                 GPtrArray           *out)
{
  int n = list != NULL ? internet_address_list_length (list) : 0;

  for (int i = 0; i < n; i++)
    {
      InternetAddress *ia = internet_address_list_get_address (list, i);

      if (INTERNET_ADDRESS_IS_GROUP (ia))
        message_collect (internet_address_group_get_members (INTERNET_ADDRESS_GROUP (ia)), out);
      else if (INTERNET_ADDRESS_IS_MAILBOX (ia))
        g_ptr_array_add (out, ia);
    }
}

/* message_mailboxes - the mailboxes of one address header */
static GPtrArray *
message_mailboxes (GMimeMessage     *message,
                   GMimeAddressType  type)
{
  GPtrArray *out = g_ptr_array_new ();

  message_collect (g_mime_message_get_addresses (message, type), out);
  return out;
}

/* message_addr - the address of a mailbox, never NULL */
static const char *
message_addr (InternetAddress *ia)
{
  const char *addr = internet_address_mailbox_get_addr (INTERNET_ADDRESS_MAILBOX (ia));

  return addr != NULL ? addr : "";
}

/* message_in_envelope - whether @address is one of this attempt's recipients */
static gboolean
message_in_envelope (const char        *address,
                     const PmxEnvelope *envelope)
{
  for (gsize i = 0; i < envelope->n_recipients; i++)
    if (g_ascii_strcasecmp (address, envelope->recipients[i]) == 0)
      return TRUE;
  return FALSE;
}

/* message_in_list - whether @address is the address of one of @mailboxes */
static gboolean
message_in_list (const char *address,
                 GPtrArray  *mailboxes)
{
  for (guint i = 0; i < mailboxes->len; i++)
    if (g_ascii_strcasecmp (address, message_addr (g_ptr_array_index (mailboxes, i))) == 0)
      return TRUE;
  return FALSE;
}

/* message_headers_match - header To+Cc+Bcc and the envelope are the same set */
static gboolean
message_headers_match (GMimeMessage      *message,
                       const PmxEnvelope *envelope)
{
  g_autoptr(GPtrArray) all = g_ptr_array_new ();

  message_collect (g_mime_message_get_addresses (message, GMIME_ADDRESS_TYPE_TO), all);
  message_collect (g_mime_message_get_addresses (message, GMIME_ADDRESS_TYPE_CC), all);
  message_collect (g_mime_message_get_addresses (message, GMIME_ADDRESS_TYPE_BCC), all);
  for (guint i = 0; i < all->len; i++)
    if (!message_in_envelope (message_addr (g_ptr_array_index (all, i)), envelope))
      return FALSE;
  for (gsize i = 0; i < envelope->n_recipients; i++)
    if (!message_in_list (envelope->recipients[i], all))
      return FALSE;
  return TRUE;
}

GraphMessage *
graph_message_parse (const guint8      *raw,
                     gsize              raw_len,
                     const PmxEnvelope *envelope)
{
  g_autoptr(GMimeStream) stream = g_mime_stream_mem_new_with_buffer ((const char *) raw, raw_len);
  g_autoptr(GMimeParser) parser = g_mime_parser_new_with_stream (stream);
  GMimeMessage *message = g_mime_parser_construct_message (parser, NULL);
  GraphMessage *self;

  if (message == NULL)
    return NULL;
  self = g_new0 (GraphMessage, 1);
  self->message = message;
  self->headers_match = message_headers_match (message, envelope);
  return self;
}

void
graph_message_free (GraphMessage *self)
{
  if (self == NULL)
    return;
  g_clear_object (&self->message);
  g_free (self);
}

const char *
graph_message_get_from_address (GraphMessage *self)
{
  g_autoptr(GPtrArray) from = message_mailboxes (self->message, GMIME_ADDRESS_TYPE_FROM);

  return from->len > 0 ? message_addr (g_ptr_array_index (from, 0)) : NULL;
}

/* message_append_field - "Name: a,\r\n b\r\n", each address on its own line */
static void
message_append_field (GByteArray *out,
                      const char *name,
                      GPtrArray  *mailboxes)
{
  if (mailboxes->len == 0)
    return;
  g_byte_array_append (out, (const guint8 *) name, strlen (name));
  g_byte_array_append (out, (const guint8 *) ": ", 2);
  for (guint i = 0; i < mailboxes->len; i++)
    {
      g_autofree char *text = internet_address_to_string (g_ptr_array_index (mailboxes, i), NULL, TRUE);

      if (i > 0)
        g_byte_array_append (out, (const guint8 *) ",\r\n ", 4);
      g_byte_array_append (out, (const guint8 *) text, strlen (text));
    }
  g_byte_array_append (out, (const guint8 *) "\r\n", 2);
}

/* message_split - To and Cc mailboxes that are in the envelope, and the
 * envelope recipients in neither (as new mailboxes, in @out_bcc_owned) */
static void
message_split (GMimeMessage      *message,
               const PmxEnvelope *envelope,
               GPtrArray         *out_to,
               GPtrArray         *out_cc,
               GPtrArray         *out_bcc)
{
  g_autoptr(GPtrArray) to = message_mailboxes (message, GMIME_ADDRESS_TYPE_TO);
  g_autoptr(GPtrArray) cc = message_mailboxes (message, GMIME_ADDRESS_TYPE_CC);

  for (guint i = 0; i < to->len; i++)
    if (message_in_envelope (message_addr (g_ptr_array_index (to, i)), envelope)
        && !message_in_list (message_addr (g_ptr_array_index (to, i)), out_to))
      g_ptr_array_add (out_to, g_object_ref (g_ptr_array_index (to, i)));
  for (guint i = 0; i < cc->len; i++)
    if (message_in_envelope (message_addr (g_ptr_array_index (cc, i)), envelope)
        && !message_in_list (message_addr (g_ptr_array_index (cc, i)), out_to)
        && !message_in_list (message_addr (g_ptr_array_index (cc, i)), out_cc))
      g_ptr_array_add (out_cc, g_object_ref (g_ptr_array_index (cc, i)));
  for (gsize i = 0; i < envelope->n_recipients; i++)
    if (!message_in_list (envelope->recipients[i], out_to) && !message_in_list (envelope->recipients[i], out_cc)
        && !message_in_list (envelope->recipients[i], out_bcc))
      g_ptr_array_add (out_bcc, internet_address_mailbox_new (NULL, envelope->recipients[i]));
}

/* message_is_recipient_field - whether the field starting at @line is To, Cc or Bcc */
static gboolean
message_is_recipient_field (const char *line,
                            gsize       len)
{
  static const char *const names[] = { "to", "cc", "bcc" };

  for (guint i = 0; i < G_N_ELEMENTS (names); i++)
    {
      gsize n = strlen (names[i]);
      gsize j = n;

      if (len <= n || g_ascii_strncasecmp (line, names[i], n) != 0)
        continue;
      while (j < len && (line[j] == ' ' || line[j] == '\t'))
        j++;
      if (j < len && line[j] == ':')
        return TRUE;
    }
  return FALSE;
}

GBytes *
graph_message_rewrite_recipients (GraphMessage      *self,
                                  const guint8      *raw,
                                  gsize              raw_len,
                                  const PmxEnvelope *envelope)
{
  g_autoptr(GPtrArray) to = g_ptr_array_new_with_free_func (g_object_unref);
  g_autoptr(GPtrArray) cc = g_ptr_array_new_with_free_func (g_object_unref);
  g_autoptr(GPtrArray) bcc = g_ptr_array_new_with_free_func (g_object_unref);
  GByteArray *out = g_byte_array_sized_new ((guint) MIN (raw_len + 1024, G_MAXUINT));
  const char *p = (const char *) raw;
  const char *end = p + raw_len;
  gboolean inserted = FALSE;
  gboolean dropping = FALSE;

  message_split (self->message, envelope, to, cc, bcc);

  /* Walk the header lines up to the empty line; a field's continuation
   * lines (starting with white space) go wherever the field goes. */
  while (p < end)
    {
      const char *nl = memchr (p, '\n', (gsize) (end - p));
      const char *next = nl != NULL ? nl + 1 : end;
      gsize len = (gsize) (next - p);

      if (len == 0 || p[0] == '\r' || p[0] == '\n')
        break;  /* the empty line: the body follows */
      if (p[0] == ' ' || p[0] == '\t')
        {
          if (!dropping)
            g_byte_array_append (out, (const guint8 *) p, (guint) len);
          p = next;
          continue;
        }
      dropping = message_is_recipient_field (p, len);
      if (dropping && !inserted)
        {
          message_append_field (out, "To", to);
          message_append_field (out, "Cc", cc);
          message_append_field (out, "Bcc", bcc);
          inserted = TRUE;
        }
      if (!dropping)
        g_byte_array_append (out, (const guint8 *) p, (guint) len);
      p = next;
    }
  if (!inserted)
    {
      /* A last header line without its line end (a message that is all
       * header) must not run into the new field. */
      if (out->len > 0 && out->data[out->len - 1] != '\n')
        g_byte_array_append (out, (const guint8 *) "\r\n", 2);
      message_append_field (out, "To", to);
      message_append_field (out, "Cc", cc);
      message_append_field (out, "Bcc", bcc);
    }
  g_byte_array_append (out, (const guint8 *) p, (guint) (end - p));
  return g_byte_array_free_to_bytes (out);
}

/* message_set_text - a string member, made valid UTF-8 (a header's 8-bit
 * bytes in an unknown charset would otherwise make the JSON invalid) */
static void
message_set_text (JsonObject *o,
                  const char *member,
                  const char *value)
{
  if (g_utf8_validate (value, -1, NULL))
    json_object_set_string_member (o, member, value);
  else
    {
      g_autofree char *valid = g_utf8_make_valid (value, -1);

      json_object_set_string_member (o, member, valid);
    }
}

/* message_recipient_json - {"emailAddress": {"address", "name"?}} */
static JsonNode *
message_recipient_json (const char *address,
                        const char *name)
{
  JsonObject *email = json_object_new ();
  JsonObject *rcpt = json_object_new ();
  JsonNode *node = json_node_new (JSON_NODE_OBJECT);

  message_set_text (email, "address", address);
  if (name != NULL && name[0] != '\0')
    message_set_text (email, "name", name);
  json_object_set_object_member (rcpt, "emailAddress", email);
  json_node_take_object (node, rcpt);
  return node;
}

/* message_recipients_json - an array of recipients, or NULL when @mailboxes is empty */
static JsonArray *
message_recipients_json (GPtrArray *mailboxes)
{
  JsonArray *array;

  if (mailboxes->len == 0)
    return NULL;
  array = json_array_new ();
  for (guint i = 0; i < mailboxes->len; i++)
    {
      InternetAddress *ia = g_ptr_array_index (mailboxes, i);

      json_array_add_element (array, message_recipient_json (message_addr (ia), internet_address_get_name (ia)));
    }
  return array;
}

typedef struct {
  char      *html;
  char      *text;
  GPtrArray *attachments;
} MessageWalk;

/* message_object_bytes - the decoded content of a part, or a whole embedded message */
static GBytes *
message_object_bytes (GMimeObject *object)
{
  g_autoptr(GMimeStream) mem = g_mime_stream_mem_new ();
  GByteArray *array;

  if (GMIME_IS_PART (object))
    {
      GMimeDataWrapper *content = g_mime_part_get_content (GMIME_PART (object));

      if (content != NULL)
        g_mime_data_wrapper_write_to_stream (content, mem);
    }
  else if (GMIME_IS_MESSAGE_PART (object) && g_mime_message_part_get_message (GMIME_MESSAGE_PART (object)) != NULL)
    g_mime_object_write_to_stream (GMIME_OBJECT (g_mime_message_part_get_message (GMIME_MESSAGE_PART (object))), NULL, mem);
  array = g_mime_stream_mem_get_byte_array (GMIME_STREAM_MEM (mem));
  return g_bytes_new (array->data, array->len);
}

/* message_walk_part - the first plain and HTML text parts are the body;
 * every other leaf (and each embedded message) is an attachment */
static void
message_walk_part (GMimeObject *parent,
                   GMimeObject *part,
                   gpointer     data)
{
  MessageWalk *walk = data;
  GMimeContentType *type = g_mime_object_get_content_type (part);
  GraphAttachment *attachment;
  const char *filename = NULL;
  gboolean is_attachment = FALSE;

  (void) parent;
  if (GMIME_IS_MULTIPART (part))
    return;
  if (GMIME_IS_PART (part))
    {
      is_attachment = g_mime_part_is_attachment (GMIME_PART (part));
      filename = g_mime_part_get_filename (GMIME_PART (part));
      if (!is_attachment && filename == NULL && GMIME_IS_TEXT_PART (part))
        {
          if (walk->html == NULL && g_mime_content_type_is_type (type, "text", "html"))
            {
              walk->html = g_mime_text_part_get_text (GMIME_TEXT_PART (part));
              return;
            }
          if (walk->text == NULL && g_mime_content_type_is_type (type, "text", "plain"))
            {
              walk->text = g_mime_text_part_get_text (GMIME_TEXT_PART (part));
              return;
            }
        }
    }
  attachment = g_new0 (GraphAttachment, 1);
  attachment->name = filename != NULL ? g_strdup (filename)
                                      : g_strdup_printf ("attachment-%u%s", walk->attachments->len + 1,
                                                         GMIME_IS_MESSAGE_PART (part) ? ".eml" : "");
  attachment->content_type = g_mime_content_type_get_mime_type (type);
  attachment->content_id = g_strdup (g_mime_object_get_content_id (part));
  attachment->is_inline = !is_attachment && attachment->content_id != NULL;
  attachment->data = message_object_bytes (part);
  g_ptr_array_add (walk->attachments, attachment);
}

/* message_importance - "high", "low" or NULL, from Importance or X-Priority */
static const char *
message_importance (GMimeMessage *message)
{
  const char *importance = g_mime_object_get_header (GMIME_OBJECT (message), "Importance");
  const char *priority = g_mime_object_get_header (GMIME_OBJECT (message), "X-Priority");

  if (importance != NULL)
    {
      g_autofree char *v = g_strstrip (g_strdup (importance));

      if (g_ascii_strcasecmp (v, "high") == 0)
        return "high";
      if (g_ascii_strcasecmp (v, "low") == 0)
        return "low";
      return NULL;
    }
  if (priority != NULL)
    {
      while (*priority == ' ' || *priority == '\t')
        priority++;
      if (priority[0] == '1' || priority[0] == '2')
        return "high";
      if (priority[0] == '4' || priority[0] == '5')
        return "low";
    }
  return NULL;
}

/* message_x_headers - at most five non-empty x- headers, or NULL when none
 * (Graph refuses other names, more than five, and an empty array) */
static JsonArray *
message_x_headers (GMimeMessage *message)
{
  GMimeHeaderList *headers = g_mime_object_get_header_list (GMIME_OBJECT (message));
  int n = g_mime_header_list_get_count (headers);
  JsonArray *array = NULL;

  for (int i = 0; i < n && (array == NULL || json_array_get_length (array) < 5); i++)
    {
      GMimeHeader *header = g_mime_header_list_get_header_at (headers, i);
      const char *name = g_mime_header_get_name (header);
      const char *value = g_mime_header_get_value (header);
      g_autofree char *v = value != NULL ? g_strstrip (g_strdup (value)) : NULL;
      JsonObject *h;

      if (name == NULL || g_ascii_strncasecmp (name, "x-", 2) != 0 || name[2] == '\0' || v == NULL || v[0] == '\0')
        continue;
      if (array == NULL)
        array = json_array_new ();
      h = json_object_new ();
      message_set_text (h, "name", name);
      message_set_text (h, "value", v);
      json_array_add_object_element (array, h);
    }
  return array;
}

JsonObject *
graph_message_to_json (GraphMessage      *self,
                       const PmxEnvelope *envelope,
                       const char        *from,
                       GPtrArray        **out_attachments)
{
  g_autoptr(GPtrArray) to = g_ptr_array_new_with_free_func (g_object_unref);
  g_autoptr(GPtrArray) cc = g_ptr_array_new_with_free_func (g_object_unref);
  g_autoptr(GPtrArray) bcc = g_ptr_array_new_with_free_func (g_object_unref);
  g_autoptr(GPtrArray) reply_to = message_mailboxes (self->message, GMIME_ADDRESS_TYPE_REPLY_TO);
  g_autoptr(GPtrArray) from_list = message_mailboxes (self->message, GMIME_ADDRESS_TYPE_FROM);
  MessageWalk walk = { NULL, NULL, g_ptr_array_new_with_free_func ((GDestroyNotify) graph_attachment_free) };
  JsonObject *o = json_object_new ();
  JsonObject *body = json_object_new ();
  const char *subject = g_mime_message_get_subject (self->message);
  const char *importance = message_importance (self->message);
  JsonArray *array;

  message_split (self->message, envelope, to, cc, bcc);
  g_mime_message_foreach (self->message, message_walk_part, &walk);

  message_set_text (o, "subject", subject != NULL ? subject : "");
  json_object_set_string_member (body, "contentType", walk.html != NULL ? "html" : "text");
  message_set_text (body, "content", walk.html != NULL ? walk.html : walk.text != NULL ? walk.text : "");
  json_object_set_object_member (o, "body", body);
  if ((array = message_recipients_json (to)) != NULL)
    json_object_set_array_member (o, "toRecipients", array);
  if ((array = message_recipients_json (cc)) != NULL)
    json_object_set_array_member (o, "ccRecipients", array);
  if ((array = message_recipients_json (bcc)) != NULL)
    json_object_set_array_member (o, "bccRecipients", array);
  if ((array = message_recipients_json (reply_to)) != NULL)
    json_object_set_array_member (o, "replyTo", array);
  if (from != NULL)
    {
      const char *name = NULL;

      for (guint i = 0; i < from_list->len; i++)
        if (g_ascii_strcasecmp (message_addr (g_ptr_array_index (from_list, i)), from) == 0)
          name = internet_address_get_name (g_ptr_array_index (from_list, i));
      json_object_set_member (o, "from", message_recipient_json (from, name));
    }
  if (importance != NULL)
    json_object_set_string_member (o, "importance", importance);
  if ((array = message_x_headers (self->message)) != NULL)
    json_object_set_array_member (o, "internetMessageHeaders", array);

  g_free (walk.html);
  g_free (walk.text);
  *out_attachments = walk.attachments;
  return o;
}

JsonObject *
graph_attachment_to_json (const GraphAttachment *attachment)
{
  JsonObject *o = json_object_new ();
  gsize len = 0;
  const guint8 *data = g_bytes_get_data (attachment->data, &len);
  g_autofree char *b64 = g_base64_encode (data != NULL ? data : (const guint8 *) "", len);

  json_object_set_string_member (o, "@odata.type", "#microsoft.graph.fileAttachment");
  message_set_text (o, "name", attachment->name);
  message_set_text (o, "contentType", attachment->content_type);
  json_object_set_string_member (o, "contentBytes", b64);
  json_object_set_boolean_member (o, "isInline", attachment->is_inline);
  if (attachment->content_id != NULL)
    message_set_text (o, "contentId", attachment->content_id);
  return o;
}

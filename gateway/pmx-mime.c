/* SPDX-License-Identifier: GPL-3.0-or-later */
/*
 * pmx-mime.c - JSON message (HTTP submission API) -> RFC 5322 bytes.
 *
 * What: walks the JSON object of schemas/message.schema.json and builds a
 * GMimeMessage: text and html as multipart/alternative, inline parts
 * (content_id) with the html under multipart/related, attachments under
 * multipart/mixed; writes it with CRLF line ends.  Follows RFC 5322
 * (message format), RFC 2045-2047 (MIME, encoded words), RFC 2183 and
 * RFC 2231 (Content-Disposition, encoded filenames), RFC 2387
 * (multipart/related), RFC 2392 (Content-ID).
 *
 * Trusts: nothing in the JSON.  The HTTP layer validates it against the
 * schema first for good error messages, but this file checks every type,
 * every address and every header string again: a value with CR or LF
 * never reaches a header (header injection), names the API sets itself
 * cannot be given in "headers", and Bcc never appears in the output.
 *
 * Fails: PMX_MIME_ERROR_* with the JSON pointer of the member at fault.
 * No I/O; GMime is initialised once on first use.
 */
#include "pmx-mime.h"

#include <gmime/gmime.h>
#include <string.h>

G_DEFINE_QUARK (pmx-mime-error-quark, pmx_mime_error)

/* GMime 3.2 declares no autoptr cleanups of its own. */
G_DEFINE_AUTOPTR_CLEANUP_FUNC (GMimeFormatOptions, g_mime_format_options_free)
G_DEFINE_AUTOPTR_CLEANUP_FUNC (GMimeMessage, g_object_unref)
G_DEFINE_AUTOPTR_CLEANUP_FUNC (GMimeObject, g_object_unref)
G_DEFINE_AUTOPTR_CLEANUP_FUNC (GMimePart, g_object_unref)
G_DEFINE_AUTOPTR_CLEANUP_FUNC (GMimeStream, g_object_unref)
G_DEFINE_AUTOPTR_CLEANUP_FUNC (GMimeDataWrapper, g_object_unref)
G_DEFINE_AUTOPTR_CLEANUP_FUNC (GMimeContentType, g_object_unref)

/* Header names the API sets from its own members, or must not be given. */
static const char *const mime_reserved_headers[] = {
  "from", "to", "cc", "bcc", "reply-to", "subject", "mime-version", "sender", NULL,
};

/* mime_init - initialise GMime once (postmux's main() does it before any
 * thread or plugin starts: g_mime_init() itself is not thread-safe) */
static void
mime_init (void)
{
  static gsize once;

  if (g_once_init_enter (&once))
    {
      g_mime_init ();
      g_once_init_leave (&once, 1);
    }
}

void
pmx_mime_init (void)
{
  mime_init ();
}

/* mime_pointer_append - @base + "/" + @token escaped per RFC 6901 */
static char *
mime_pointer_append (const char *base,
                     const char *token)
{
  GString *s = g_string_new (base);

  g_string_append_c (s, '/');
  for (const char *p = token; *p != '\0'; p++)
    {
      if (*p == '~')
        g_string_append (s, "~0");
      else if (*p == '/')
        g_string_append (s, "~1");
      else
        g_string_append_c (s, *p);
    }
  return g_string_free (s, FALSE);
}

/* mime_fail - set @error and the pointer of the member at fault */
G_GNUC_PRINTF (5, 6)
static gpointer
mime_fail (GError    **error,
           char      **out_pointer,
           const char *pointer,
           int         code,
           const char *format,
           ...)
{
  va_list args;
  g_autofree char *text = NULL;

  va_start (args, format);
  text = g_strdup_vprintf (format, args);
  va_end (args);
  g_set_error (error, PMX_MIME_ERROR, code, "%s: %s", pointer[0] != '\0' ? pointer : "(message)", text);
  if (out_pointer != NULL && *out_pointer == NULL)
    *out_pointer = g_strdup (pointer);
  return NULL;
}

/* mime_has_crlf - does @s hold a CR or an LF */
static gboolean
mime_has_crlf (const char *s)
{
  return strpbrk (s, "\r\n") != NULL;
}

gboolean
pmx_mime_address_is_valid (const char *address)
{
  const char *at;
  gsize len;

  if (address == NULL)
    return FALSE;
  len = strlen (address);
  at = strchr (address, '@');
  if (len == 0 || len > 254 || at == NULL || at == address || at[1] == '\0' || strchr (at + 1, '@') != NULL)
    return FALSE;
  for (const char *p = address; *p != '\0'; p++)
    {
      guchar c = (guchar) *p;

      if (c <= ' ' || c == 0x7f || strchr ("<>()[],;:\"\\", c) != NULL)
        return FALSE;
    }
  return g_utf8_validate (address, (gssize) len, NULL);
}

/* mime_get_string - the string at @node, or NULL with @error set */
static const char *
mime_get_string (JsonNode   *node,
                 const char *pointer,
                 char      **out_pointer,
                 GError    **error)
{
  if (node == NULL || !JSON_NODE_HOLDS_VALUE (node) || json_node_get_value_type (node) != G_TYPE_STRING)
    return mime_fail (error, out_pointer, pointer, PMX_MIME_ERROR_INVALID, "expected a string");
  return json_node_get_string (node);
}

/* mime_get_header_string - a string that goes into a header: no CR, no LF */
static const char *
mime_get_header_string (JsonNode   *node,
                        const char *pointer,
                        char      **out_pointer,
                        GError    **error)
{
  const char *s = mime_get_string (node, pointer, out_pointer, error);

  if (s != NULL && mime_has_crlf (s))
    return mime_fail (error, out_pointer, pointer, PMX_MIME_ERROR_HEADER,
                      "CR and LF are not allowed in a header value");
  if (s != NULL && !g_utf8_validate (s, -1, NULL))
    return mime_fail (error, out_pointer, pointer, PMX_MIME_ERROR_INVALID, "not UTF-8");
  return s;
}

/* mime_get_mailbox - "addr" or {"name":..., "address":...} */
static gboolean
mime_get_mailbox (JsonNode    *node,
                  const char  *pointer,
                  const char **out_name,
                  const char **out_address,
                  char       **out_pointer,
                  GError     **error)
{
  const char *name = NULL;
  const char *address;

  if (node != NULL && JSON_NODE_HOLDS_OBJECT (node))
    {
      JsonObject *obj = json_node_get_object (node);
      g_autofree char *addr_ptr = mime_pointer_append (pointer, "address");
      g_autoptr(GList) members = json_object_get_members (obj);

      for (GList *l = members; l != NULL; l = l->next)
        if (strcmp (l->data, "name") != 0 && strcmp (l->data, "address") != 0)
          {
            g_autofree char *p = mime_pointer_append (pointer, l->data);

            mime_fail (error, out_pointer, p, PMX_MIME_ERROR_INVALID, "unknown member: a mailbox has name and address");
            return FALSE;
          }
      if (json_object_has_member (obj, "name"))
        {
          g_autofree char *name_ptr = mime_pointer_append (pointer, "name");

          name = mime_get_header_string (json_object_get_member (obj, "name"), name_ptr, out_pointer, error);
          if (name == NULL)
            return FALSE;
        }
      address = mime_get_header_string (json_object_get_member (obj, "address"), addr_ptr, out_pointer, error);
      if (address == NULL)
        return FALSE;
      if (!pmx_mime_address_is_valid (address))
        {
          mime_fail (error, out_pointer, addr_ptr, PMX_MIME_ERROR_ADDRESS,
                     "\"%s\" is not an address like user@example.com", address);
          return FALSE;
        }
    }
  else
    {
      address = mime_get_header_string (node, pointer, out_pointer, error);
      if (address == NULL)
        return FALSE;
      if (!pmx_mime_address_is_valid (address))
        {
          mime_fail (error, out_pointer, pointer, PMX_MIME_ERROR_ADDRESS,
                     "\"%s\" is not an address like user@example.com", address);
          return FALSE;
        }
    }
  *out_name = (name != NULL && name[0] != '\0') ? name : NULL;
  *out_address = address;
  return TRUE;
}

/* mime_add_recipient - append @address unless already there (any case) */
static void
mime_add_recipient (GPtrArray  *recipients,
                    const char *address)
{
  for (guint i = 0; i < recipients->len; i++)
    if (g_ascii_strcasecmp (g_ptr_array_index (recipients, i), address) == 0)
      return;
  g_ptr_array_add (recipients, g_strdup (address));
}

/* mime_add_mailboxes - a list member: to, cc, bcc or reply_to; @type < 0
 * means envelope only (bcc) */
static gboolean
mime_add_mailboxes (GMimeMessage *message,
                    JsonObject   *msg,
                    const char   *member,
                    int           type,
                    GPtrArray    *recipients,
                    char        **out_pointer,
                    GError      **error)
{
  g_autofree char *pointer = mime_pointer_append ("", member);
  JsonNode *node = json_object_get_member (msg, member);
  JsonArray *array;

  if (node == NULL)
    return TRUE;
  if (!JSON_NODE_HOLDS_ARRAY (node))
    {
      const char *name, *address;

      if (recipients != NULL)   /* only reply_to may be a single mailbox */
        {
          mime_fail (error, out_pointer, pointer, PMX_MIME_ERROR_INVALID, "expected an array of addresses");
          return FALSE;
        }
      if (!mime_get_mailbox (node, pointer, &name, &address, out_pointer, error))
        return FALSE;
      g_mime_message_add_mailbox (message, (GMimeAddressType) type, name, address);
      return TRUE;
    }
  array = json_node_get_array (node);
  if (json_array_get_length (array) > 1000)
    {
      mime_fail (error, out_pointer, pointer, PMX_MIME_ERROR_INVALID, "at most 1000 addresses");
      return FALSE;
    }
  for (guint i = 0; i < json_array_get_length (array); i++)
    {
      g_autofree char *idx = g_strdup_printf ("%u", i);
      g_autofree char *item_ptr = mime_pointer_append (pointer, idx);
      const char *name, *address;

      if (!mime_get_mailbox (json_array_get_element (array, i), item_ptr, &name, &address, out_pointer, error))
        return FALSE;
      if (type >= 0)
        g_mime_message_add_mailbox (message, (GMimeAddressType) type, name, address);
      if (recipients != NULL)
        mime_add_recipient (recipients, address);
    }
  return TRUE;
}

/* mime_normalize_newlines - CRLF and lone CR become LF; GMime writes CRLF */
static char *
mime_normalize_newlines (const char *text)
{
  GString *s = g_string_sized_new (strlen (text));

  for (const char *p = text; *p != '\0'; p++)
    {
      if (*p == '\r')
        {
          g_string_append_c (s, '\n');
          if (p[1] == '\n')
            p++;
        }
      else
        g_string_append_c (s, *p);
    }
  return g_string_free (s, FALSE);
}

/* mime_text_part - a text/<subtype> part in UTF-8, 7bit-safe encoding */
static GMimeObject *
mime_text_part (const char *subtype,
                const char *text)
{
  g_autofree char *normalized = mime_normalize_newlines (text);
  GMimeTextPart *part = g_mime_text_part_new_with_subtype (subtype);

  g_mime_text_part_set_text (part, normalized);
  g_mime_part_set_content_encoding (GMIME_PART (part),
                                    g_mime_part_get_best_content_encoding (GMIME_PART (part),
                                                                           GMIME_ENCODING_CONSTRAINT_7BIT));
  return GMIME_OBJECT (part);
}

/* mime_base64_decode - strict RFC 4648 base64 (CR and LF skipped) */
static GBytes *
mime_base64_decode (const char *text)
{
  GString *clean = g_string_sized_new (strlen (text));
  gsize pad = 0;
  guchar *data;
  gsize len = 0;

  for (const char *p = text; *p != '\0'; p++)
    {
      char c = *p;

      if (c == '\r' || c == '\n')
        continue;
      if (c == '=')
        pad++;
      else if (pad > 0 || !(g_ascii_isalnum (c) || c == '+' || c == '/'))
        {
          g_string_free (clean, TRUE);
          return NULL;
        }
      g_string_append_c (clean, c);
    }
  if (pad > 2 || clean->len % 4 != 0)
    {
      g_string_free (clean, TRUE);
      return NULL;
    }
  if (clean->len == 0)
    {
      g_string_free (clean, TRUE);
      return g_bytes_new (NULL, 0);
    }
  data = g_base64_decode (clean->str, &len);
  g_string_free (clean, TRUE);
  return g_bytes_new_take (data, len);
}

/* mime_attachment - one attachments[] item as a part; @out_inline: it has
 * a content_id */
static GMimeObject *
mime_attachment (JsonNode   *node,
                 const char *pointer,
                 gboolean   *out_inline,
                 char      **out_pointer,
                 GError    **error)
{
  g_autofree char *fn_ptr = mime_pointer_append (pointer, "filename");
  g_autofree char *ct_ptr = mime_pointer_append (pointer, "content_type");
  g_autofree char *c_ptr = mime_pointer_append (pointer, "content");
  g_autofree char *cid_ptr = mime_pointer_append (pointer, "content_id");
  g_autoptr(GList) members = NULL;
  g_autoptr(GMimeContentType) ctype = NULL;
  g_autoptr(GMimePart) part = NULL;
  g_autoptr(GMimeStream) stream = NULL;
  g_autoptr(GMimeDataWrapper) wrapper = NULL;
  g_autoptr(GBytes) bytes = NULL;
  JsonObject *obj;
  const char *filename, *content, *type = "application/octet-stream", *cid = NULL;

  if (node == NULL || !JSON_NODE_HOLDS_OBJECT (node))
    return mime_fail (error, out_pointer, pointer, PMX_MIME_ERROR_INVALID, "expected an object");
  obj = json_node_get_object (node);
  members = json_object_get_members (obj);
  for (GList *l = members; l != NULL; l = l->next)
    if (!g_strv_contains ((const char *const[]) { "filename", "content_type", "content", "content_id", NULL }, l->data))
      {
        g_autofree char *p = mime_pointer_append (pointer, l->data);

        return mime_fail (error, out_pointer, p, PMX_MIME_ERROR_INVALID,
                          "unknown member: an attachment has filename, content_type, content and content_id");
      }
  filename = mime_get_header_string (json_object_get_member (obj, "filename"), fn_ptr, out_pointer, error);
  if (filename == NULL)
    return NULL;
  if (filename[0] == '\0' || strlen (filename) > 255)
    return mime_fail (error, out_pointer, fn_ptr, PMX_MIME_ERROR_INVALID, "expected 1 to 255 characters");
  if (json_object_has_member (obj, "content_type"))
    {
      type = mime_get_header_string (json_object_get_member (obj, "content_type"), ct_ptr, out_pointer, error);
      if (type == NULL)
        return NULL;
    }
  {
    const char *slash = strchr (type, '/');
    gboolean ok = slash != NULL && slash != type && slash[1] != '\0' && strlen (type) <= 255;

    for (const char *p = type; ok && *p != '\0'; p++)
      ok = (p == slash) || g_ascii_isalnum (*p) || strchr ("!#$&^_.+-", *p) != NULL;
    if (!ok)
      return mime_fail (error, out_pointer, ct_ptr, PMX_MIME_ERROR_INVALID,
                        "\"%s\" is not a media type like image/png", type);
  }
  if (json_object_has_member (obj, "content_id"))
    {
      cid = mime_get_header_string (json_object_get_member (obj, "content_id"), cid_ptr, out_pointer, error);
      if (cid == NULL)
        return NULL;
      if (cid[0] == '\0' || strlen (cid) > 255)
        return mime_fail (error, out_pointer, cid_ptr, PMX_MIME_ERROR_INVALID, "expected 1 to 255 characters");
      for (const char *p = cid; *p != '\0'; p++)
        if ((guchar) *p <= ' ' || (guchar) *p >= 0x7f || *p == '<' || *p == '>')
          return mime_fail (error, out_pointer, cid_ptr, PMX_MIME_ERROR_HEADER,
                            "a content_id is printable ASCII without spaces or angle brackets");
    }
  content = mime_get_string (json_object_get_member (obj, "content"), c_ptr, out_pointer, error);
  if (content == NULL)
    return NULL;
  bytes = mime_base64_decode (content);
  if (bytes == NULL)
    return mime_fail (error, out_pointer, c_ptr, PMX_MIME_ERROR_ENCODING, "not base64 (RFC 4648)");

  ctype = g_mime_content_type_parse (NULL, type);
  part = g_mime_part_new_with_type (g_mime_content_type_get_media_type (ctype),
                                    g_mime_content_type_get_media_subtype (ctype));
  stream = g_mime_stream_mem_new_with_buffer (g_bytes_get_data (bytes, NULL), g_bytes_get_size (bytes));
  wrapper = g_mime_data_wrapper_new_with_stream (stream, GMIME_CONTENT_ENCODING_DEFAULT);
  g_mime_part_set_content (part, wrapper);
  g_mime_part_set_content_encoding (part, GMIME_CONTENT_ENCODING_BASE64);
  g_mime_object_set_disposition (GMIME_OBJECT (part), cid != NULL ? "inline" : "attachment");
  g_mime_part_set_filename (part, filename);
  if (cid != NULL)
    g_mime_object_set_content_id (GMIME_OBJECT (part), cid);
  *out_inline = (cid != NULL);
  return GMIME_OBJECT (g_steal_pointer (&part));
}

/* mime_multipart - a multipart/@subtype of @first and @rest */
static GMimeObject *
mime_multipart (const char  *subtype,
                GMimeObject *first,
                GPtrArray   *rest)
{
  GMimeMultipart *mp = g_mime_multipart_new_with_subtype (subtype);

  g_mime_multipart_add (mp, first);
  for (guint i = 0; rest != NULL && i < rest->len; i++)
    g_mime_multipart_add (mp, g_ptr_array_index (rest, i));
  return GMIME_OBJECT (mp);
}

/* mime_headers - the "headers" member: checked, then set on @message */
static gboolean
mime_headers (GMimeMessage *message,
              JsonObject   *msg,
              gboolean     *out_has_date,
              gboolean     *out_has_id,
              char        **out_pointer,
              GError      **error)
{
  JsonNode *node = json_object_get_member (msg, "headers");
  g_autoptr(GList) members = NULL;
  JsonObject *obj;

  *out_has_date = *out_has_id = FALSE;
  if (node == NULL)
    return TRUE;
  if (!JSON_NODE_HOLDS_OBJECT (node))
    {
      mime_fail (error, out_pointer, "/headers", PMX_MIME_ERROR_INVALID, "expected an object of name: value");
      return FALSE;
    }
  obj = json_node_get_object (node);
  if (json_object_get_size (obj) > 100)
    {
      mime_fail (error, out_pointer, "/headers", PMX_MIME_ERROR_INVALID, "at most 100 headers");
      return FALSE;
    }
  members = json_object_get_members (obj);
  for (GList *l = members; l != NULL; l = l->next)
    {
      const char *name = l->data;
      g_autofree char *pointer = mime_pointer_append ("/headers", name);
      g_autofree char *lower = g_ascii_strdown (name, -1);
      gsize len = strlen (name);
      const char *value;

      /* RFC 5322 2.2: field-name = 1*ftext, printable ASCII but ':' */
      if (len == 0 || len > 76)
        {
          mime_fail (error, out_pointer, pointer, PMX_MIME_ERROR_HEADER, "a header name has 1 to 76 characters");
          return FALSE;
        }
      for (const char *p = name; *p != '\0'; p++)
        if ((guchar) *p < 33 || (guchar) *p > 126 || *p == ':')
          {
            mime_fail (error, out_pointer, pointer, PMX_MIME_ERROR_HEADER,
                       "a header name is printable ASCII without spaces or ':' (RFC 5322)");
            return FALSE;
          }
      if (g_strv_contains (mime_reserved_headers, lower) || g_str_has_prefix (lower, "content-")
          || g_str_has_prefix (lower, "x-postmux-"))
        {
          mime_fail (error, out_pointer, pointer, PMX_MIME_ERROR_HEADER,
                     "header \"%s\" is set by the API itself — use the message's own members%s", name,
                     g_str_has_prefix (lower, "x-postmux-") ? " (transport, route, tags)" : "");
          return FALSE;
        }
      value = mime_get_header_string (json_object_get_member (obj, name), pointer, out_pointer, error);
      if (value == NULL)
        return FALSE;
      if (strlen (value) > 4000)
        {
          mime_fail (error, out_pointer, pointer, PMX_MIME_ERROR_HEADER, "a header value has at most 4000 characters");
          return FALSE;
        }
      if (strcmp (lower, "date") == 0)
        *out_has_date = TRUE;
      if (strcmp (lower, "message-id") == 0)
        *out_has_id = TRUE;
      g_mime_object_append_header (GMIME_OBJECT (message), name, value, "utf-8");
    }
  return TRUE;
}

/* mime_postmux_headers - transport, route and tags as X-Postmux-* */
static gboolean
mime_postmux_headers (GMimeMessage *message,
                      JsonObject   *msg,
                      char        **out_pointer,
                      GError      **error)
{
  static const struct { const char *member, *header; } names[] = {
    { "transport", "X-Postmux-Transport" },
    { "route", "X-Postmux-Route" },
  };
  JsonNode *tags = json_object_get_member (msg, "tags");

  for (gsize i = 0; i < G_N_ELEMENTS (names); i++)
    {
      g_autofree char *pointer = mime_pointer_append ("", names[i].member);
      const char *value;

      if (!json_object_has_member (msg, names[i].member))
        continue;
      value = mime_get_header_string (json_object_get_member (msg, names[i].member), pointer, out_pointer, error);
      if (value == NULL)
        return FALSE;
      if (value[0] == '\0' || strlen (value) > 64 || strspn (value, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-") != strlen (value))
        {
          mime_fail (error, out_pointer, pointer, PMX_MIME_ERROR_INVALID, "expected a name like \"o365\"");
          return FALSE;
        }
      g_mime_object_set_header (GMIME_OBJECT (message), names[i].header, value, NULL);
    }
  if (tags != NULL)
    {
      g_autoptr(GString) joined = g_string_new (NULL);
      JsonArray *array;

      if (!JSON_NODE_HOLDS_ARRAY (tags) || json_array_get_length (json_node_get_array (tags)) > 20)
        {
          mime_fail (error, out_pointer, "/tags", PMX_MIME_ERROR_INVALID, "expected an array of at most 20 tags");
          return FALSE;
        }
      array = json_node_get_array (tags);
      for (guint i = 0; i < json_array_get_length (array); i++)
        {
          g_autofree char *pointer = g_strdup_printf ("/tags/%u", i);
          const char *tag = mime_get_header_string (json_array_get_element (array, i), pointer, out_pointer, error);

          if (tag == NULL)
            return FALSE;
          if (tag[0] == '\0' || strlen (tag) > 64
              || strspn (tag, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.:/=+-") != strlen (tag))
            {
              mime_fail (error, out_pointer, pointer, PMX_MIME_ERROR_INVALID,
                         "a tag has 1 to 64 letters, digits or _.:/=+-");
              return FALSE;
            }
          g_string_append_printf (joined, "%s%s", i > 0 ? ", " : "", tag);
        }
      if (joined->len > 0)
        g_mime_object_set_header (GMIME_OBJECT (message), "X-Postmux-Tags", joined->str, NULL);
    }
  return TRUE;
}

/* mime_body_text - the text/<subtype> part for the member @name of @msg,
 * which must be a UTF-8 string */
static GMimeObject *
mime_body_text (JsonObject *msg,
                const char *name,
                const char *subtype,
                char      **out_pointer,
                GError    **error)
{
  g_autofree char *pointer = g_strconcat ("/", name, NULL);
  const char *s = mime_get_string (json_object_get_member (msg, name), pointer, out_pointer, error);

  if (s == NULL)
    return NULL;
  if (!g_utf8_validate (s, -1, NULL))
    return mime_fail (error, out_pointer, pointer, PMX_MIME_ERROR_INVALID, "not UTF-8");
  return mime_text_part (subtype, s);
}

/* mime_body - the body tree: alternative/related/mixed as the parts ask */
static GMimeObject *
mime_body (JsonObject *msg,
           char      **out_pointer,
           GError    **error)
{
  g_autoptr(GPtrArray) inline_parts = g_ptr_array_new_with_free_func (g_object_unref);
  g_autoptr(GPtrArray) attachments = g_ptr_array_new_with_free_func (g_object_unref);
  g_autoptr(GMimeObject) text = NULL;
  g_autoptr(GMimeObject) html = NULL;
  g_autoptr(GMimeObject) body = NULL;
  JsonNode *node;

  if (json_object_has_member (msg, "text")
      && (text = mime_body_text (msg, "text", "plain", out_pointer, error)) == NULL)
    return NULL;
  if (json_object_has_member (msg, "html")
      && (html = mime_body_text (msg, "html", "html", out_pointer, error)) == NULL)
    return NULL;

  node = json_object_get_member (msg, "attachments");
  if (node != NULL)
    {
      JsonArray *array;

      if (!JSON_NODE_HOLDS_ARRAY (node) || json_array_get_length (json_node_get_array (node)) > 100)
        return mime_fail (error, out_pointer, "/attachments", PMX_MIME_ERROR_INVALID,
                          "expected an array of at most 100 attachments");
      array = json_node_get_array (node);
      for (guint i = 0; i < json_array_get_length (array); i++)
        {
          g_autofree char *pointer = g_strdup_printf ("/attachments/%u", i);
          gboolean is_inline = FALSE;
          GMimeObject *part = mime_attachment (json_array_get_element (array, i), pointer, &is_inline,
                                               out_pointer, error);

          if (part == NULL)
            return NULL;
          /* Inline parts belong with the html that refers to them; without
           * html they are plain attachments that keep their Content-ID. */
          g_ptr_array_add (is_inline && html != NULL ? inline_parts : attachments, part);
        }
    }

  if (html != NULL && inline_parts->len > 0)
    {
      GMimeObject *related = mime_multipart ("related", html, inline_parts);

      g_mime_content_type_set_parameter (g_mime_object_get_content_type (related), "type", "text/html");
      g_object_unref (html);
      html = related;
    }
  if (text != NULL && html != NULL)
    {
      g_autoptr(GPtrArray) rest = g_ptr_array_new ();

      g_ptr_array_add (rest, html);
      body = mime_multipart ("alternative", text, rest);
    }
  else if (text != NULL)
    body = g_steal_pointer (&text);
  else if (html != NULL)
    body = g_steal_pointer (&html);
  else
    body = mime_text_part ("plain", "");

  if (attachments->len > 0)
    return mime_multipart ("mixed", body, attachments);
  return g_steal_pointer (&body);
}

/* mime_write - the message as bytes with CRLF line ends */
static GBytes *
mime_write (GMimeMessage *message)
{
  g_autoptr(GMimeFormatOptions) options = g_mime_format_options_new ();
  GByteArray *array = g_byte_array_new ();
  g_autoptr(GMimeStream) stream = g_mime_stream_mem_new_with_byte_array (array);

  /* The stream does not own the array: it stays ours after the unref. */
  g_mime_stream_mem_set_owner (GMIME_STREAM_MEM (stream), FALSE);
  g_mime_format_options_set_newline_format (options, GMIME_NEWLINE_FORMAT_DOS);
  g_mime_object_write_to_stream (GMIME_OBJECT (message), options, stream);
  g_mime_stream_flush (stream);
  return g_byte_array_free_to_bytes (array);
}

GBytes *
pmx_mime_build_full (JsonObject  *msg,
                     char       **out_sender,
                     GPtrArray  **out_recipients,
                     char       **out_pointer,
                     GError     **error)
{
  static const char *const known[] = {
    "from", "to", "cc", "bcc", "reply_to", "subject", "text", "html", "headers",
    "attachments", "transport", "route", "tags", NULL,
  };
  g_autoptr(GMimeMessage) message = NULL;
  g_autoptr(GPtrArray) recipients = g_ptr_array_new_with_free_func (g_free);
  g_autoptr(GMimeObject) body = NULL;
  g_autoptr(GList) members = NULL;
  const char *from_name, *from_address;
  gboolean has_date, has_id;

  g_return_val_if_fail (msg != NULL, NULL);
  g_return_val_if_fail (out_sender != NULL, NULL);
  g_return_val_if_fail (out_recipients != NULL, NULL);
  g_return_val_if_fail (error == NULL || *error == NULL, NULL);

  if (out_pointer != NULL)
    *out_pointer = NULL;
  mime_init ();

  members = json_object_get_members (msg);
  for (GList *l = members; l != NULL; l = l->next)
    if (!g_strv_contains (known, l->data))
      {
        g_autofree char *pointer = mime_pointer_append ("", l->data);

        return mime_fail (error, out_pointer, pointer, PMX_MIME_ERROR_INVALID, "unknown member \"%s\"",
                          (char *) l->data);
      }
  if (!json_object_has_member (msg, "from"))
    return mime_fail (error, out_pointer, "", PMX_MIME_ERROR_INVALID, "\"from\" is required");

  message = g_mime_message_new (TRUE);
  if (!mime_get_mailbox (json_object_get_member (msg, "from"), "/from", &from_name, &from_address,
                         out_pointer, error))
    return NULL;
  g_mime_message_add_mailbox (message, GMIME_ADDRESS_TYPE_FROM, from_name, from_address);
  if (!mime_add_mailboxes (message, msg, "to", GMIME_ADDRESS_TYPE_TO, recipients, out_pointer, error)
      || !mime_add_mailboxes (message, msg, "cc", GMIME_ADDRESS_TYPE_CC, recipients, out_pointer, error)
      || !mime_add_mailboxes (message, msg, "bcc", -1, recipients, out_pointer, error)
      || !mime_add_mailboxes (message, msg, "reply_to", GMIME_ADDRESS_TYPE_REPLY_TO, NULL, out_pointer, error))
    return NULL;
  if (recipients->len == 0)
    return mime_fail (error, out_pointer, "", PMX_MIME_ERROR_RECIPIENTS,
                      "no recipient: give at least one address in to, cc or bcc");

  if (json_object_has_member (msg, "subject"))
    {
      const char *subject = mime_get_header_string (json_object_get_member (msg, "subject"), "/subject",
                                                    out_pointer, error);

      if (subject == NULL)
        return NULL;
      if (strlen (subject) > 4000)
        return mime_fail (error, out_pointer, "/subject", PMX_MIME_ERROR_INVALID, "at most 4000 characters");
      g_mime_message_set_subject (message, subject, "utf-8");
    }
  if (!mime_headers (message, msg, &has_date, &has_id, out_pointer, error)
      || !mime_postmux_headers (message, msg, out_pointer, error))
    return NULL;
  if (!has_date)
    {
      g_autoptr(GDateTime) now = g_date_time_new_now_local ();

      g_mime_message_set_date (message, now);
    }
  if (!has_id)
    {
      g_autofree char *id = g_mime_utils_generate_message_id (strchr (from_address, '@') + 1);

      g_mime_message_set_message_id (message, id);
    }

  body = mime_body (msg, out_pointer, error);
  if (body == NULL)
    return NULL;
  g_mime_message_set_mime_part (message, body);

  *out_sender = g_strdup (from_address);
  *out_recipients = g_steal_pointer (&recipients);
  return mime_write (message);
}

GBytes *
pmx_mime_build (JsonObject  *msg,
                char       **out_sender,
                GPtrArray  **out_recipients,
                GError     **error)
{
  return pmx_mime_build_full (msg, out_sender, out_recipients, NULL, error);
}

/* mime_json_depth_ok - is @text nested at most @max deep (arrays and
 * objects, outside strings); json-glib's parser recurses per level */
static gboolean
mime_json_depth_ok (const char *text,
                    gsize       length,
                    guint       max)
{
  guint depth = 0;
  gboolean in_string = FALSE;

  for (gsize i = 0; i < length; i++)
    {
      char c = text[i];

      if (in_string)
        {
          if (c == '\\')
            i++;
          else if (c == '"')
            in_string = FALSE;
        }
      else if (c == '"')
        in_string = TRUE;
      else if (c == '[' || c == '{')
        {
          if (++depth > max)
            return FALSE;
        }
      else if ((c == ']' || c == '}') && depth > 0)
        depth--;
    }
  return TRUE;
}

JsonObject *
pmx_mime_parse_request (const char *text,
                        gsize       length,
                        GError    **error)
{
  g_autoptr(JsonParser) parser = NULL;
  g_autoptr(GError) local_error = NULL;
  JsonNode *root;

  g_return_val_if_fail (text != NULL || length == 0, NULL);
  g_return_val_if_fail (error == NULL || *error == NULL, NULL);

  if (length > G_MAXSSIZE)
    length = G_MAXSSIZE;
  if (!mime_json_depth_ok (text, length, PMX_MIME_MAX_DEPTH))
    {
      g_set_error (error, PMX_MIME_ERROR, PMX_MIME_ERROR_PARSE,
                   "the JSON is nested more than %d levels deep", PMX_MIME_MAX_DEPTH);
      return NULL;
    }
  if (!g_utf8_validate (text, (gssize) length, NULL))
    {
      g_set_error (error, PMX_MIME_ERROR, PMX_MIME_ERROR_PARSE, "the body is not UTF-8");
      return NULL;
    }
  parser = json_parser_new_immutable ();
  if (!json_parser_load_from_data (parser, text, (gssize) length, &local_error))
    {
      g_set_error (error, PMX_MIME_ERROR, PMX_MIME_ERROR_PARSE, "the body is not JSON: %s", local_error->message);
      return NULL;
    }
  root = json_parser_get_root (parser);
  if (root == NULL || !JSON_NODE_HOLDS_OBJECT (root))
    {
      g_set_error (error, PMX_MIME_ERROR, PMX_MIME_ERROR_PARSE, "the body is not a JSON object");
      return NULL;
    }
  return json_object_ref (json_node_get_object (root));
}

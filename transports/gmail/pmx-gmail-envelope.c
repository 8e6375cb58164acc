/* SPDX-License-Identifier: GPL-3.0-or-later */
/*
 * pmx-gmail-envelope.c - the Gmail transport's envelope rewrite (see
 * pmx-gmail-envelope.h and the top of pmx-gmail.c for why).
 *
 * Reads only the header block (RFC 5322 2.2: a field runs to a CRLF not
 * followed by white space); address lists are parsed with GMime.  Trusts
 * nothing in the message: a field without a colon, a header block without
 * an end, an unparsable list are all kept as they are.
 */
#include "pmx-gmail-envelope.h"

#include <gmime/gmime.h>
#include <string.h>

/* gmail_lower_set_add - add @addr in lower case to @set; TRUE when new */
static gboolean
gmail_lower_set_add (GHashTable *set,
                     const char *addr)
{
  char *lower = g_ascii_strdown (addr, -1);

  if (g_hash_table_contains (set, lower))
    {
      g_free (lower);
      return FALSE;
    }
  g_hash_table_add (set, lower);
  return TRUE;
}

/* gmail_collect - every mailbox of @list (groups included) into @out */
static void
gmail_collect (InternetAddressList *list,
               GPtrArray           *out)
{
  for (int i = 0; i < internet_address_list_length (list); i++)
    {
      InternetAddress *a = internet_address_list_get_address (list, i);

      if (INTERNET_ADDRESS_IS_GROUP (a))
        gmail_collect (internet_address_group_get_members (INTERNET_ADDRESS_GROUP (a)), out);
      else if (INTERNET_ADDRESS_IS_MAILBOX (a))
        g_ptr_array_add (out, g_strdup (internet_address_mailbox_get_addr (INTERNET_ADDRESS_MAILBOX (a))));
    }
}

/* gmail_filter - remove from @list (and its groups) every mailbox not in
 * @envelope; TRUE when something was removed */
static gboolean
gmail_filter (InternetAddressList *list,
              GHashTable          *envelope)
{
  gboolean changed = FALSE;

  for (int i = internet_address_list_length (list) - 1; i >= 0; i--)
    {
      InternetAddress *a = internet_address_list_get_address (list, i);

      if (INTERNET_ADDRESS_IS_GROUP (a))
        changed |= gmail_filter (internet_address_group_get_members (INTERNET_ADDRESS_GROUP (a)), envelope);
      else if (INTERNET_ADDRESS_IS_MAILBOX (a))
        {
          g_autofree char *lower = g_ascii_strdown (internet_address_mailbox_get_addr (INTERNET_ADDRESS_MAILBOX (a)), -1);

          if (!g_hash_table_contains (envelope, lower))
            {
              internet_address_list_remove_at (list, i);
              changed = TRUE;
            }
        }
    }
  return changed;
}

typedef enum { GMAIL_FIELD_OTHER, GMAIL_FIELD_VISIBLE, GMAIL_FIELD_BCC } GmailFieldKind;

typedef struct {
  gsize                start, len;   /* raw bytes of the field, CRLF included */
  gsize                name_len;
  GmailFieldKind       kind;
  InternetAddressList *list;         /* To/Cc/Bcc parsed */
} GmailField;

/* gmail_field_clear - free a field's list */
static void
gmail_field_clear (gpointer data)
{
  GmailField *f = data;

  g_clear_object (&f->list);
}

GBytes *
pmx_gmail_envelope_rewrite (const guint8       *message,
                            gsize               len,
                            const char *const  *recipients,
                            gsize               n_recipients,
                            gboolean            remove_unlisted,
                            char              **out_unlisted)
{
  g_autoptr(GHashTable) env = g_hash_table_new_full (g_str_hash, g_str_equal, g_free, NULL);
  g_autoptr(GHashTable) visible = g_hash_table_new_full (g_str_hash, g_str_equal, g_free, NULL);
  g_autoptr(GArray) fields = g_array_new (FALSE, TRUE, sizeof (GmailField));
  g_autoptr(GPtrArray) unlisted = g_ptr_array_new_with_free_func (g_free);
  g_autoptr(GPtrArray) bcc = g_ptr_array_new ();
  g_autoptr(GByteArray) out = NULL;
  const guint8 *blank;
  gsize header_len, pos = 0;
  gboolean changed = FALSE;

  g_array_set_clear_func (fields, gmail_field_clear);
  for (gsize i = 0; i < n_recipients; i++)
    gmail_lower_set_add (env, recipients[i]);

  /* The header block ends after the CRLF before the empty line. */
  if (len >= 2 && message[0] == '\r' && message[1] == '\n')
    header_len = 0;
  else if ((blank = memmem (message, len, "\r\n\r\n", 4)) != NULL)
    header_len = (gsize) (blank - message) + 2;
  else
    header_len = len;

  while (pos < header_len)
    {
      GmailField f = { .start = pos };
      const guint8 *colon;
      gsize end = pos;

      /* A field runs to a CRLF not followed by white space (folding). */
      for (;;)
        {
          const guint8 *crlf = memmem (message + end, header_len - end, "\r\n", 2);

          end = crlf != NULL ? (gsize) (crlf - message) + 2 : header_len;
          if (end >= header_len || (message[end] != ' ' && message[end] != '\t'))
            break;
        }
      f.len = end - pos;
      colon = memchr (message + pos, ':', f.len);
      f.name_len = colon != NULL ? (gsize) (colon - (message + pos)) : 0;
      if (colon != NULL)
        {
          g_autofree char *name = g_strndup ((const char *) message + pos, f.name_len);

          g_strchomp (name);
          if (g_ascii_strcasecmp (name, "To") == 0 || g_ascii_strcasecmp (name, "Cc") == 0)
            f.kind = GMAIL_FIELD_VISIBLE;
          else if (g_ascii_strcasecmp (name, "Bcc") == 0)
            f.kind = GMAIL_FIELD_BCC;
        }
      if (f.kind != GMAIL_FIELD_OTHER)
        {
          g_autofree char *value = g_strndup ((const char *) colon + 1, f.len - f.name_len - 1);
          g_autoptr(GPtrArray) addrs = g_ptr_array_new_with_free_func (g_free);
          char *w = value;

          /* Unfold: drop the CR and LF, keep the white space after them. */
          for (char *r = value; *r != '\0'; r++)
            if (*r != '\r' && *r != '\n')
              *w++ = *r;
          *w = '\0';
          f.list = internet_address_list_parse (NULL, value);
          if (f.list == NULL)
            f.list = internet_address_list_new ();
          if (f.kind == GMAIL_FIELD_VISIBLE)
            {
              gmail_collect (f.list, addrs);
              for (guint i = 0; i < addrs->len; i++)
                {
                  g_autofree char *lower = g_ascii_strdown (addrs->pdata[i], -1);

                  if (gmail_lower_set_add (visible, lower) && !g_hash_table_contains (env, lower))
                    g_ptr_array_add (unlisted, g_strdup (addrs->pdata[i]));
                }
            }
        }
      g_array_append_val (fields, f);
      pos = end;
    }

  if (unlisted->len > 0 && !remove_unlisted)
    {
      GString *s = g_string_new (NULL);

      for (guint i = 0; i < unlisted->len && i < 5; i++)
        g_string_append_printf (s, "%s<%s>", i > 0 ? ", " : "", (char *) unlisted->pdata[i]);
      if (unlisted->len > 5)
        g_string_append_printf (s, " and %u more", unlisted->len - 5);
      *out_unlisted = g_string_free (s, FALSE);
      return NULL;
    }

  /* Envelope recipients To and Cc do not name become the one Bcc field. */
  for (gsize i = 0; i < n_recipients; i++)
    {
      g_autofree char *lower = g_ascii_strdown (recipients[i], -1);

      if (gmail_lower_set_add (visible, lower))
        g_ptr_array_add (bcc, (gpointer) recipients[i]);
    }

  out = g_byte_array_sized_new (len + 256);
  for (guint i = 0; i < fields->len; i++)
    {
      GmailField *f = &g_array_index (fields, GmailField, i);

      if (f->kind == GMAIL_FIELD_BCC)
        {
          changed = TRUE;
          continue;
        }
      if (f->kind == GMAIL_FIELD_VISIBLE && unlisted->len > 0 && gmail_filter (f->list, env))
        {
          GMimeFormatOptions *options;
          g_autoptr(GString) value = g_string_new_len ((const char *) message + f->start, f->name_len);

          changed = TRUE;
          if (internet_address_list_length (f->list) == 0)
            continue;
          options = g_mime_format_options_new ();
          g_mime_format_options_set_newline_format (options, GMIME_NEWLINE_FORMAT_DOS);
          g_string_append (value, ": ");
          internet_address_list_encode (f->list, options, value);
          g_mime_format_options_free (options);
          if (!g_str_has_suffix (value->str, "\r\n"))
            g_string_append (value, "\r\n");
          g_byte_array_append (out, (const guint8 *) value->str, value->len);
          continue;
        }
      g_byte_array_append (out, message + f->start, f->len);
    }
  if (header_len > 0 && (message[header_len - 1] != '\n'))
    g_byte_array_append (out, (const guint8 *) "\r\n", 2);   /* a header block without an end */
  if (bcc->len > 0)
    {
      changed = TRUE;
      g_byte_array_append (out, (const guint8 *) "Bcc: ", 5);
      for (guint i = 0; i < bcc->len; i++)
        {
          if (i > 0)
            g_byte_array_append (out, (const guint8 *) ",\r\n ", 4);
          g_byte_array_append (out, bcc->pdata[i], strlen (bcc->pdata[i]));
        }
      g_byte_array_append (out, (const guint8 *) "\r\n", 2);
    }
  if (!changed)
    return g_bytes_new_static (message, len);   /* @message outlives the send */
  g_byte_array_append (out, message + header_len, len - header_len);
  return g_byte_array_free_to_bytes (g_steal_pointer (&out));
}

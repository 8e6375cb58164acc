/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * pmx-token-store.c - one credential's tokens on disk: a small JSON file,
 * mode 0600, replaced atomically and durably (write to a temporary file,
 * fsync, rename, fsync the directory: g_file_set_contents_full with
 * CONSISTENT | DURABLE).
 *
 * Trusts the directory it is given (the transport's state directory).
 * A store readable by group or others is tightened to 0600 with a warning.
 * A corrupt store is an error naming the file, never its contents.  The
 * serialized text is wiped after writing and after reading.
 */
#include "pmx-oauth2-private.h"

#include <errno.h>
#include <string.h>
#include <sys/stat.h>
#include <glib/gstdio.h>

#define STORE_VERSION 1

void
pmx_token_store_data_clear (PmxTokenStoreData *data)
{
  g_clear_pointer (&data->refresh_token, pmx_secret_free);
  g_clear_pointer (&data->access_token, pmx_secret_free);
  g_clear_pointer (&data->scopes, g_free);
  g_clear_pointer (&data->seed_hash, g_free);
  g_clear_pointer (&data->client_hash, g_free);
  g_clear_pointer (&data->last_error, g_free);
  data->last_error_code = 0;
  data->expires_at = 0;
  data->last_refresh = 0;
  data->needs_login = FALSE;
}

/* store_dup_string - a member's string copy, NULL when absent or empty */
static char *
store_dup_string (JsonObject *object, const char *member)
{
  const char *value = json_object_get_string_member_with_default (object, member, NULL);

  return value != NULL && value[0] != '\0' ? g_strdup (value) : NULL;
}

gboolean
pmx_token_store_load (const char        *path,
                      PmxTokenStoreData *out_data,
                      GError           **error)
{
  g_autoptr(JsonParser) parser = NULL;
  g_autoptr(GError) local_error = NULL;
  char *contents = NULL;
  gsize len = 0;
  JsonObject *object;
  JsonNode *root;
  struct stat st;
  gboolean ok;

  memset (out_data, 0, sizeof *out_data);
  if (g_stat (path, &st) != 0)
    {
      int saved = errno;

      if (saved == ENOENT)
        return TRUE;
      g_set_error (error, PMX_OAUTH2_ERROR, PMX_OAUTH2_ERROR_FAILED,
                   "token store %s: %s", path, g_strerror (saved));
      return FALSE;
    }
  if ((st.st_mode & (S_IRWXG | S_IRWXO)) != 0)
    {
      g_warning ("token store %s was readable by group or others (mode %04o): set to 0600",
                 path, (unsigned) (st.st_mode & 07777));
      g_chmod (path, 0600);
    }
  if (!g_file_get_contents (path, &contents, &len, &local_error))
    {
      g_set_error (error, PMX_OAUTH2_ERROR, PMX_OAUTH2_ERROR_FAILED,
                   "token store: %s", local_error->message);
      return FALSE;
    }
  parser = json_parser_new ();
  ok = json_parser_load_from_data (parser, contents, len, NULL);
  explicit_bzero (contents, len);
  g_free (contents);
  root = ok ? json_parser_get_root (parser) : NULL;
  if (root == NULL || !JSON_NODE_HOLDS_OBJECT (root)
      || json_object_get_int_member_with_default (json_node_get_object (root), "version", 0) != STORE_VERSION)
    {
      g_set_error (error, PMX_OAUTH2_ERROR, PMX_OAUTH2_ERROR_FAILED,
                   "token store %s is not a version %d token store — remove it and log in again",
                   path, STORE_VERSION);
      return FALSE;
    }
  object = json_node_get_object (root);
  out_data->refresh_token = store_dup_string (object, "refresh_token");
  out_data->access_token = store_dup_string (object, "access_token");
  out_data->expires_at = json_object_get_int_member_with_default (object, "expires_at", 0);
  out_data->last_refresh = json_object_get_int_member_with_default (object, "last_refresh", 0);
  out_data->scopes = store_dup_string (object, "scopes");
  out_data->seed_hash = store_dup_string (object, "seed_hash");
  out_data->needs_login = json_object_get_boolean_member_with_default (object, "needs_login", FALSE);
  out_data->client_hash = store_dup_string (object, "client_hash");
  out_data->last_error = store_dup_string (object, "last_error");
  out_data->last_error_code = (int) json_object_get_int_member_with_default (object, "last_error_code", 0);
  return TRUE;
}

gboolean
pmx_token_store_save (const char              *path,
                      const PmxTokenStoreData *data,
                      GError                 **error)
{
  g_autoptr(JsonBuilder) builder = json_builder_new ();
  g_autoptr(JsonGenerator) generator = json_generator_new ();
  g_autoptr(JsonNode) root = NULL;
  g_autoptr(GError) local_error = NULL;
  char *text;
  gsize len = 0;
  gboolean ok;

  json_builder_begin_object (builder);
  json_builder_set_member_name (builder, "version");
  json_builder_add_int_value (builder, STORE_VERSION);
#define STORE_ADD_STRING(name, value) \
  if ((value) != NULL) \
    { \
      json_builder_set_member_name (builder, name); \
      json_builder_add_string_value (builder, value); \
    }
  STORE_ADD_STRING ("refresh_token", data->refresh_token);
  STORE_ADD_STRING ("access_token", data->access_token);
  STORE_ADD_STRING ("scopes", data->scopes);
  STORE_ADD_STRING ("seed_hash", data->seed_hash);
  STORE_ADD_STRING ("client_hash", data->client_hash);
  STORE_ADD_STRING ("last_error", data->last_error);
#undef STORE_ADD_STRING
  json_builder_set_member_name (builder, "expires_at");
  json_builder_add_int_value (builder, data->expires_at);
  json_builder_set_member_name (builder, "last_refresh");
  json_builder_add_int_value (builder, data->last_refresh);
  json_builder_set_member_name (builder, "needs_login");
  json_builder_add_boolean_value (builder, data->needs_login);
  if (data->last_error != NULL)
    {
      json_builder_set_member_name (builder, "last_error_code");
      json_builder_add_int_value (builder, data->last_error_code);
    }
  json_builder_end_object (builder);

  root = json_builder_get_root (builder);
  json_generator_set_root (generator, root);
  json_generator_set_pretty (generator, TRUE);
  text = json_generator_to_data (generator, &len);

  ok = g_file_set_contents_full (path, text, len,
                                 G_FILE_SET_CONTENTS_CONSISTENT | G_FILE_SET_CONTENTS_DURABLE,
                                 0600, &local_error);
  explicit_bzero (text, len);
  g_free (text);
  if (!ok)
    {
      g_set_error (error, PMX_OAUTH2_ERROR, PMX_OAUTH2_ERROR_FAILED,
                   "token store: %s — check that the state directory is writable", local_error->message);
      return FALSE;
    }
  return TRUE;
}

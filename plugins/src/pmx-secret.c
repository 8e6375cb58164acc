/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * pmx-secret.c - resolve "env:NAME" and "file:/path" secret references.
 *
 * Trusts the environment and the file system it is pointed at.  Refuses a
 * secret file that group or others can read.  Error messages name the
 * reference, never the secret.
 */
#include "postmux-result-private.h"

#include <errno.h>
#include <string.h>
#include <sys/stat.h>

/* A password, token or key file is small; anything bigger is a mistake. */
#define PMX_SECRET_MAX_FILE (64 * 1024)

G_DEFINE_QUARK (pmx-secret-error-quark, pmx_secret_error)

gboolean
pmx_secret_is_reference (const char *value)
{
  return value != NULL && (g_str_has_prefix (value, "env:") || g_str_has_prefix (value, "file:"));
}

/* secret_read_file - read a secret file, refusing one others may read */
static char *
secret_read_file (const char *ref,
                  const char *path,
                  GError    **error)
{
  struct stat st;
  char *contents = NULL;
  gsize len = 0;
  GError *local_error = NULL;

  if (stat (path, &st) != 0)
    {
      int saved = errno;
      g_set_error (error, PMX_SECRET_ERROR,
                   saved == ENOENT ? PMX_SECRET_ERROR_NOT_FOUND : PMX_SECRET_ERROR_FAILED,
                   "secret \"%s\": cannot read %s: %s — create the file or fix the reference",
                   ref, path, g_strerror (saved));
      return NULL;
    }
  if (!S_ISREG (st.st_mode) || st.st_size > PMX_SECRET_MAX_FILE)
    {
      g_set_error (error, PMX_SECRET_ERROR, PMX_SECRET_ERROR_FAILED,
                   "secret \"%s\": %s is not a regular file of at most 64 KiB — point the reference at the file holding the secret",
                   ref, path);
      return NULL;
    }
  if ((st.st_mode & (S_IRWXG | S_IRWXO)) != 0)
    {
      g_set_error (error, PMX_SECRET_ERROR, PMX_SECRET_ERROR_UNSAFE,
                   "secret \"%s\": %s is readable by group or others (mode %04o) — run chmod 600 %s",
                   ref, path, (unsigned) (st.st_mode & 07777), path);
      return NULL;
    }
  if (!g_file_get_contents (path, &contents, &len, &local_error))
    {
      g_set_error (error, PMX_SECRET_ERROR, PMX_SECRET_ERROR_FAILED,
                   "secret \"%s\": %s", ref, local_error->message);
      g_error_free (local_error);
      return NULL;
    }
  /* One trailing newline is an editor's, not the secret's. */
  if (len > 0 && contents[len - 1] == '\n')
    contents[--len] = '\0';
  if (len > 0 && contents[len - 1] == '\r')
    contents[--len] = '\0';
  return contents;
}

char *
pmx_secret_resolve (const char *value,
                    GError    **error)
{
  g_return_val_if_fail (value != NULL, NULL);
  g_return_val_if_fail (error == NULL || *error == NULL, NULL);

  if (g_str_has_prefix (value, "env:"))
    {
      const char *name = value + strlen ("env:");
      const char *env = name[0] != '\0' ? g_getenv (name) : NULL;

      if (env == NULL)
        {
          g_set_error (error, PMX_SECRET_ERROR, PMX_SECRET_ERROR_NOT_FOUND,
                       "secret \"%s\": environment variable %s is not set — export it in the service's environment",
                       value, name[0] != '\0' ? name : "(empty name)");
          return NULL;
        }
      return g_strdup (env);
    }
  if (g_str_has_prefix (value, "file:"))
    {
      const char *path = value + strlen ("file:");

      if (!g_path_is_absolute (path))
        {
          g_set_error (error, PMX_SECRET_ERROR, PMX_SECRET_ERROR_FAILED,
                       "secret \"%s\": the path must be absolute (file:/run/secrets/name)", value);
          return NULL;
        }
      return secret_read_file (value, path, error);
    }
  return g_strdup (value);
}

void
pmx_secret_free (char *secret)
{
  if (secret == NULL)
    return;
  explicit_bzero (secret, strlen (secret));
  g_free (secret);
}

/* SPDX-License-Identifier: GPL-3.0-or-later */
/*
 * pmx-cmd-passwd.c - `postmux passwd`: make the secrets' hashes the config
 * holds.
 *
 * Without options: reads a password (from the terminal without echo,
 * asked twice; else the first line of stdin) and prints its SHA-512-crypt
 * hash ($6$, libxcrypt, random salt) for auth.smtp_users.<name>.password_hash.
 * With --api-key: makes a random key (32 bytes from getrandom(2), written
 * "pmx_" + base64url), prints it once, and its "sha256:<hex>" for
 * auth.api_keys.<name>.key_hash.
 *
 * Trusts: the kernel's randomness.  Fails with exit 1 on an empty
 * password, a mismatch at the second prompt, or no randomness.
 */
#include "pmx-cmd.h"

#include <crypt.h>
#include <stdio.h>
#include <string.h>
#include <sys/random.h>
#include <termios.h>
#include <unistd.h>

/* passwd_read_line - one line of stdin without its line end, or NULL */
static char *
passwd_read_line (void)
{
  GString *s = g_string_new (NULL);
  int c;

  while ((c = getchar ()) != EOF && c != '\n')
    g_string_append_c (s, (char) c);
  if (c == EOF && s->len == 0)
    {
      g_string_free (s, TRUE);
      return NULL;
    }
  if (s->len > 0 && s->str[s->len - 1] == '\r')
    g_string_truncate (s, s->len - 1);
  return g_string_free (s, FALSE);
}

/* passwd_prompt - ask on the terminal with echo off */
static char *
passwd_prompt (const char *prompt)
{
  struct termios old, quiet;
  gboolean restore = FALSE;
  char *line;

  fprintf (stderr, "%s", prompt);
  fflush (stderr);
  if (tcgetattr (STDIN_FILENO, &old) == 0)
    {
      quiet = old;
      quiet.c_lflag &= ~(tcflag_t) ECHO;
      restore = tcsetattr (STDIN_FILENO, TCSAFLUSH, &quiet) == 0;
    }
  line = passwd_read_line ();
  if (restore)
    (void) tcsetattr (STDIN_FILENO, TCSAFLUSH, &old);
  fprintf (stderr, "\n");
  return line;
}

/* passwd_wipe_free - wipe a secret string and free it */
static void
passwd_wipe_free (char *s)
{
  if (s != NULL)
    {
      explicit_bzero (s, strlen (s));
      g_free (s);
    }
}

/* passwd_api_key - print a new key and its hash */
static int
passwd_api_key (void)
{
  guint8 raw[32];
  g_autofree char *b64 = NULL;
  g_autofree char *hex = NULL;
  GString *key;

  if (getrandom (raw, sizeof raw, 0) != (ssize_t) sizeof raw)
    {
      g_printerr ("postmux passwd: cannot read random bytes: %s\n", g_strerror (errno));
      return 1;
    }
  b64 = g_base64_encode (raw, sizeof raw);
  explicit_bzero (raw, sizeof raw);
  key = g_string_new ("pmx_");
  for (const char *p = b64; *p != '\0'; p++)
    if (*p == '+')
      g_string_append_c (key, '-');
    else if (*p == '/')
      g_string_append_c (key, '_');
    else if (*p != '=')
      g_string_append_c (key, *p);
  hex = g_compute_checksum_for_string (G_CHECKSUM_SHA256, key->str, (gssize) key->len);
  printf ("key:      %s\nkey_hash: sha256:%s\n", key->str, hex);
  fprintf (stderr, "Give the key to the application (it is not shown again); put key_hash in auth.api_keys.\n");
  explicit_bzero (key->str, key->len);
  explicit_bzero (b64, strlen (b64));
  g_string_free (key, TRUE);
  return 0;
}

int
pmx_cmd_passwd (int    argc,
                char **argv)
{
  gboolean api_key = FALSE;
  char *password = NULL;
  char setting[CRYPT_GENSALT_OUTPUT_SIZE];
  struct crypt_data *cd;
  const char *hash;
  int rc = 0;
  GOptionEntry entries[] = {
    { "api-key", 0, 0, G_OPTION_ARG_NONE, &api_key, "Make a random API key; print it and its sha256: hash for auth.api_keys", NULL },
    { NULL, 0, 0, 0, NULL, NULL, NULL },
  };

  if (!pmx_cmd_parse ("passwd", NULL,
                      "Prints the SHA-512-crypt hash of a password read from stdin (asked twice, without echo, on a\n"
                      "terminal), for auth.smtp_users.NAME.password_hash.  With --api-key: a new API key and its hash.",
                      entries, NULL, &argc, &argv))
    return 2;
  if (api_key)
    return passwd_api_key ();

  if (isatty (STDIN_FILENO))
    {
      char *again;

      password = passwd_prompt ("Password: ");
      again = passwd_prompt ("Again: ");
      if (password != NULL && g_strcmp0 (password, again) != 0)
        {
          g_printerr ("postmux passwd: the passwords differ\n");
          passwd_wipe_free (again);
          passwd_wipe_free (password);
          return 1;
        }
      passwd_wipe_free (again);
    }
  else
    password = passwd_read_line ();
  if (password == NULL || password[0] == '\0')
    {
      g_printerr ("postmux passwd: empty password — give one on stdin\n");
      passwd_wipe_free (password);
      return 1;
    }

  cd = g_new0 (struct crypt_data, 1);
  if (crypt_gensalt_rn ("$6$", 0, NULL, 0, setting, sizeof setting) == NULL
      || (hash = crypt_r (password, setting, cd)) == NULL || hash[0] == '*')
    {
      g_printerr ("postmux passwd: cannot hash: %s\n", g_strerror (errno));
      rc = 1;
    }
  else
    printf ("%s\n", hash);
  explicit_bzero (cd, sizeof *cd);
  g_free (cd);
  passwd_wipe_free (password);
  return rc;
}

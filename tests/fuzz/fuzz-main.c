/* SPDX-License-Identifier: GPL-3.0-or-later */
/*
 * fuzz-main.c - replay driver for fuzz targets when libFuzzer is not
 * available: feeds every file named on the command line (directories are
 * walked, in name order) to LLVMFuzzerTestOneInput once.
 *
 * Trusts: nothing in the files.  Fails: exit 1 when a path cannot be read;
 * a crash or a failed assertion in the target fails the test as it would
 * under libFuzzer.
 */
#include <glib.h>
#include <stdint.h>
#include <stdio.h>

int LLVMFuzzerTestOneInput (const uint8_t *data, size_t size);

/* fuzz_replay_file - run the target on one file; FALSE if unreadable */
static gboolean
fuzz_replay_file (const char *path)
{
  g_autofree char *data = NULL;
  g_autoptr(GError) error = NULL;
  gsize len = 0;

  if (!g_file_get_contents (path, &data, &len, &error))
    {
      fprintf (stderr, "%s\n", error->message);
      return FALSE;
    }
  (void) LLVMFuzzerTestOneInput ((const uint8_t *) data, len);
  return TRUE;
}

/* fuzz_compare - GCompareFunc on file names */
static gint
fuzz_compare (gconstpointer a,
              gconstpointer b)
{
  return g_strcmp0 (*(char *const *) a, *(char *const *) b);
}

int
main (int    argc,
      char **argv)
{
  guint n = 0;

  for (int i = 1; i < argc; i++)
    {
      if (argv[i][0] == '-')
        continue;   /* libFuzzer options: nothing to do here */
      if (g_file_test (argv[i], G_FILE_TEST_IS_DIR))
        {
          g_autoptr(GError) error = NULL;
          g_autoptr(GDir) dir = g_dir_open (argv[i], 0, &error);
          g_autoptr(GPtrArray) names = g_ptr_array_new_with_free_func (g_free);
          const char *name;

          if (dir == NULL)
            {
              fprintf (stderr, "%s\n", error->message);
              return 1;
            }
          while ((name = g_dir_read_name (dir)) != NULL)
            g_ptr_array_add (names, g_build_filename (argv[i], name, NULL));
          g_ptr_array_sort (names, fuzz_compare);
          for (guint j = 0; j < names->len; j++, n++)
            if (!fuzz_replay_file (g_ptr_array_index (names, j)))
              return 1;
        }
      else if (fuzz_replay_file (argv[i]))
        n++;
      else
        return 1;
    }
  printf ("replayed %u input%s\n", n, n == 1 ? "" : "s");
  return 0;
}

/* SPDX-License-Identifier: GPL-3.0-or-later */
/*
 * test-schema-suite.c - run the JSON-Schema-Test-Suite's draft-07 cases
 * (Debian package json-schema-test-suite) through PmxSchema.
 *
 * What: a summary test that runs every file of tests/draft7/ (not
 * optional/), prints "# draft7: N of M cases passed" and fails listing every
 * case that did not pass; then one GTest per file that reports that file's
 * cases.  The summary runs first because GTest stops at the first failing
 * test, and the count must always be printed.  Each case is validated twice, once collecting
 * problems and once stopping at the first, and both answers must agree
 * with the suite.  refRemote's http://localhost:1234/ is served from the
 * suite's remotes/ directory by the resolver.
 *
 * Trusts: the suite's files are well-formed JSON in the suite's layout.
 *
 * Fails: a missing suite is a failure naming the package to install, never
 * a skip; set JSON_SCHEMA_TEST_SUITE to use another checkout.
 */
#include "pmx-schema.h"

#include <string.h>

#define SUITE_DEFAULT_DIR   "/usr/share/json-schema-test-suite"
#define SUITE_REMOTE_PREFIX "http://localhost:1234/"

static char *suite_dir;
static GPtrArray *suite_files;    /* char *: path of each draft7 file */
static GHashTable *suite_results; /* path → SuiteResult */

/* What running one file gave. */
typedef struct {
  guint      passed;
  guint      total;
  GPtrArray *failures;   /* char *: "file: group: case: why" */
} SuiteResult;

/* suite_result_free - GDestroyNotify for suite_results */
static void
suite_result_free (gpointer data)
{
  SuiteResult *result = data;

  g_ptr_array_unref (result->failures);
  g_free (result);
}

/* suite_resolve - serve http://localhost:1234/... from remotes/ */
static JsonNode *
suite_resolve (const char *uri,
               gpointer    user_data,
               GError    **error)
{
  g_autoptr(JsonParser) parser = NULL;
  g_autofree char *path = NULL;

  if (!g_str_has_prefix (uri, SUITE_REMOTE_PREFIX))
    {
      g_set_error (error, G_IO_ERROR, G_IO_ERROR_NOT_FOUND,
                   "the test suite serves only %s, not %s", SUITE_REMOTE_PREFIX, uri);
      return NULL;
    }
  path = g_build_filename (suite_dir, "remotes", uri + strlen (SUITE_REMOTE_PREFIX), NULL);
  parser = json_parser_new ();
  if (!json_parser_load_from_file (parser, path, error))
    return NULL;
  return json_parser_steal_root (parser);
}

/* suite_run_case - validate one case both ways; NULL when both agree with
 * the suite, else why not */
static char *
suite_run_case (PmxSchema  *schema,
                JsonObject *test)
{
  g_autoptr(GPtrArray) problems = NULL;
  g_autoptr(GError) error = NULL;
  g_autoptr(GError) quick_error = NULL;
  JsonNode *data = json_object_get_member (test, "data");
  gboolean expected = json_object_get_boolean_member (test, "valid");
  gboolean valid, quick;

  valid = pmx_schema_validate (schema, data, NULL, &problems, &error);
  quick = pmx_schema_validate (schema, data, NULL, NULL, &quick_error);
  if (error != NULL)
    return g_strdup_printf ("error: %s", error->message);
  if (valid != expected || quick != expected)
    {
      g_autofree char *first = problems != NULL && problems->len > 0
                               ? pmx_schema_problem_to_string (g_ptr_array_index (problems, 0))
                               : g_strdup ("no problem reported");

      return g_strdup_printf ("expected %s, got %s (without problems: %s); %s",
                              expected ? "valid" : "invalid", valid ? "valid" : "invalid",
                              quick ? "valid" : "invalid", first);
    }
  if (!valid && (problems == NULL || problems->len == 0))
    return g_strdup ("invalid, but no problem reported");
  return NULL;
}

/* suite_run_file - every case of one suite file, run once and remembered */
static const SuiteResult *
suite_run_file (const char *path)
{
  g_autofree char *name = g_path_get_basename (path);
  g_autoptr(JsonParser) parser = json_parser_new ();
  g_autoptr(GError) error = NULL;
  SuiteResult *result;
  JsonArray *groups;
  guint g;

  result = g_hash_table_lookup (suite_results, path);
  if (result != NULL)
    return result;

  result = g_new0 (SuiteResult, 1);
  result->failures = g_ptr_array_new_with_free_func (g_free);
  g_hash_table_insert (suite_results, g_strdup (path), result);

  json_parser_load_from_file (parser, path, &error);
  g_assert_no_error (error);
  groups = json_node_get_array (json_parser_get_root (parser));

  for (g = 0; g < json_array_get_length (groups); g++)
    {
      JsonObject *group = json_array_get_object_element (groups, g);
      const char *group_name = json_object_get_string_member (group, "description");
      JsonArray *tests = json_object_get_array_member (group, "tests");
      g_autoptr(PmxSchema) schema = NULL;
      guint t;

      schema = pmx_schema_new_from_node (json_object_get_member (group, "schema"), NULL, &error);
      if (schema != NULL)
        pmx_schema_set_resolver (schema, suite_resolve, NULL);

      for (t = 0; t < json_array_get_length (tests); t++)
        {
          JsonObject *test = json_array_get_object_element (tests, t);
          g_autofree char *why = NULL;

          result->total++;
          if (schema == NULL)
            why = g_strdup_printf ("schema rejected: %s", error->message);
          else
            why = suite_run_case (schema, test);
          if (why == NULL)
            result->passed++;
          else
            g_ptr_array_add (result->failures,
                             g_strdup_printf ("%s: %s: %s: %s", name, group_name,
                                              json_object_get_string_member (test, "description"),
                                              why));
        }
      g_clear_error (&error);
    }
  return result;
}

/* test_suite_summary - the count over all files, and every failed case
 * (runs first, so that a failure cannot hide the count) */
static void
test_suite_summary (void)
{
  guint i, j, passed = 0, total = 0, failed = 0;

  for (i = 0; i < suite_files->len; i++)
    {
      const SuiteResult *result = suite_run_file (g_ptr_array_index (suite_files, i));

      passed += result->passed;
      total += result->total;
      for (j = 0; j < result->failures->len; j++, failed++)
        g_test_message ("FAILED %s", (const char *) g_ptr_array_index (result->failures, j));
    }
  g_test_message ("draft7: %u of %u cases passed", passed, total);
  g_assert_cmpuint (total, >, 0);
  g_assert_cmpuint (failed, ==, 0);
  g_assert_cmpuint (passed, ==, total);
}

/* test_suite_file - the cases of one file */
static void
test_suite_file (gconstpointer user_data)
{
  const char *path = user_data;
  const SuiteResult *result = suite_run_file (path);
  g_autofree char *name = g_path_get_basename (path);
  guint i;

  g_test_message ("%s: %u of %u cases passed", name, result->passed, result->total);
  for (i = 0; i < result->failures->len; i++)
    g_test_message ("FAILED %s", (const char *) g_ptr_array_index (result->failures, i));
  g_assert_cmpuint (result->failures->len, ==, 0);
}

/* test_suite_missing - the suite is not installed */
static void
test_suite_missing (gconstpointer user_data)
{
  g_test_fail_printf ("JSON Schema test suite not found (%s): install it with "
                      "'apt-get install json-schema-test-suite', or point "
                      "JSON_SCHEMA_TEST_SUITE at a checkout of "
                      "https://github.com/json-schema-org/JSON-Schema-Test-Suite",
                      (const char *) user_data);
}

/* suite_compare_paths - GCompareFunc for g_ptr_array_sort() of strings */
static int
suite_compare_paths (gconstpointer a,
                     gconstpointer b)
{
  return g_strcmp0 (*(const char *const *) a, *(const char *const *) b);
}

int
main (int    argc,
      char **argv)
{
  g_autofree char *draft7 = NULL;
  g_autoptr(GDir) dir = NULL;
  g_autoptr(GError) error = NULL;
  const char *entry;
  guint i;
  int status;

  g_test_init (&argc, &argv, NULL);

  suite_dir = g_strdup (g_getenv ("JSON_SCHEMA_TEST_SUITE"));
  if (suite_dir == NULL || suite_dir[0] == '\0')
    {
      g_free (suite_dir);
      suite_dir = g_strdup (SUITE_DEFAULT_DIR);
    }
  suite_files = g_ptr_array_new_with_free_func (g_free);
  suite_results = g_hash_table_new_full (g_str_hash, g_str_equal, g_free, suite_result_free);
  draft7 = g_build_filename (suite_dir, "tests", "draft7", NULL);

  dir = g_dir_open (draft7, 0, &error);
  if (dir == NULL)
    {
      g_test_add_data_func ("/schema-suite/draft7/installed", error->message, test_suite_missing);
    }
  else
    {
      while ((entry = g_dir_read_name (dir)) != NULL)
        if (g_str_has_suffix (entry, ".json"))
          g_ptr_array_add (suite_files, g_build_filename (draft7, entry, NULL));
      g_ptr_array_sort (suite_files, suite_compare_paths);

      g_test_add_func ("/schema-suite/draft7/summary", test_suite_summary);
      for (i = 0; i < suite_files->len; i++)
        {
          const char *path = g_ptr_array_index (suite_files, i);
          g_autofree char *base = g_path_get_basename (path);
          g_autofree char *test_path = NULL;

          base[strlen (base) - strlen (".json")] = '\0';
          test_path = g_strdup_printf ("/schema-suite/draft7/%s", base);
          g_test_add_data_func (test_path, path, test_suite_file);
        }
    }

  status = g_test_run ();
  g_hash_table_unref (suite_results);
  g_ptr_array_unref (suite_files);
  g_free (suite_dir);
  return status;
}

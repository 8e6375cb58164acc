/* SPDX-License-Identifier: GPL-3.0-or-later */
/*
 * test-maildir.c - the maildir transport, loaded from the build tree by the
 * real loader, delivering into a temporary directory: file contents byte
 * for byte, unique names, the per-recipient layout, tmp/ left empty, the
 * outcomes it reports, and its doctor check.
 *
 * Trusts: PMX_TEST_TRANSPORTS_DIR holds the freshly built pmx-maildir.so.
 */
#include <errno.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <glib/gstdio.h>

#include "pmx-plugin-loader.h"
#include "pmx-schema.h"
#include "postmux-result-private.h"

typedef struct {
  PmxPluginLoader       *loader;
  const PmxTransportOps *ops;
  char                  *root;      /* temporary directory */
  char                  *path;      /* the Maildir: <root>/Maildir */
  PmxTransport          *transport;
  PmxSession            *session;
} Fixture;

/* rm_rf - remove a directory tree */
static void
rm_rf (const char *path)
{
  g_autoptr(GDir) dir = g_dir_open (path, 0, NULL);
  const char *entry;

  if (dir == NULL)
    {
      g_unlink (path);
      return;
    }
  while ((entry = g_dir_read_name (dir)) != NULL)
    {
      g_autofree char *child = g_build_filename (path, entry, NULL);

      rm_rf (child);
    }
  g_rmdir (path);
}

/* fixture_setup - load the plugin; the Maildir does not exist yet */
static void
fixture_setup (Fixture      *fx,
               gconstpointer data)
{
  const char *const dirs[] = { PMX_TEST_TRANSPORTS_DIR, NULL };
  g_autoptr(GError) error = NULL;
  PmxPlugin *plugin;

  fx->loader = pmx_plugin_loader_new (dirs);
  plugin = pmx_plugin_loader_load (fx->loader, "maildir", &error);
  g_assert_no_error (error);
  fx->ops = pmx_plugin_get_desc (plugin)->ops;
  fx->root = g_dir_make_tmp ("pmx-maildir-XXXXXX", &error);
  g_assert_no_error (error);
  fx->path = g_build_filename (fx->root, "Maildir", NULL);
}

/* fixture_teardown - close, destroy and remove everything */
static void
fixture_teardown (Fixture      *fx,
                  gconstpointer data)
{
  if (fx->session != NULL)
    fx->ops->close_session (fx->session);
  if (fx->transport != NULL)
    fx->ops->destroy (fx->transport);
  rm_rf (fx->root);
  g_free (fx->path);
  g_free (fx->root);
  pmx_plugin_loader_free (fx->loader);
}

/* fixture_start - create an instance with @json_options (the Maildir path
 * is added) and open a session */
static void
fixture_start (Fixture    *fx,
               const char *json_options)
{
  g_autoptr(GError) error = NULL;
  g_autoptr(JsonNode) node = json_from_string (json_options, &error);
  JsonObject *options;
  PmxTransportArgs args = { sizeof args, "local", NULL, fx->root, { NULL, } };
  PmxPlugin *plugin = pmx_plugin_loader_load (fx->loader, "maildir", &error);

  g_assert_no_error (error);
  options = json_node_get_object (node);
  json_object_set_string_member (options, "path", fx->path);
  args.options = options;
  fx->transport = pmx_plugin_create (plugin, &args, &error);
  g_assert_no_error (error);
  g_assert_nonnull (fx->transport);
  fx->session = fx->ops->open_session (fx->transport, &error);
  g_assert_no_error (error);
  g_assert_nonnull (fx->session);
}

/* send_message - send @message from @sender to @rcpts (NULL-terminated);
 * returns the filled result */
static PmxResult *
send_message (Fixture           *fx,
              const char        *sender,
              const char *const *rcpts,
              const char        *message)
{
  PmxEnvelope envelope = { "Q1", sender, rcpts, g_strv_length ((char **) rcpts), 1, "local", { NULL, } };
  PmxResult *result = pmx_result_new (envelope.n_recipients);

  fx->ops->send (fx->session, &envelope, (const guint8 *) message, strlen (message), result);
  return result;
}

/* assert_delivered - every recipient of @result delivered with 250 2.0.0 */
static void
assert_delivered (PmxResult *result)
{
  g_assert_cmpint (pmx_result_get_failure (result), ==, PMX_FAILURE_NONE);
  for (gsize i = 0; i < pmx_result_get_n_recipients (result); i++)
    {
      const PmxResultRecipient *r = pmx_result_get_recipient (result, i);

      g_assert_cmpint (r->status, ==, PMX_RCPT_DELIVERED);
      g_assert_cmpuint (r->code, ==, 250);
      g_assert_cmpstr (r->enhanced, ==, "2.0.0");
      g_assert_true (g_str_has_prefix (r->text, "delivered to maildir as "));
    }
}

/* compare_names - GCompareFunc for a g_ptr_array_sort of strings */
static gint
compare_names (gconstpointer a,
               gconstpointer b)
{
  return strcmp (*(const char *const *) a, *(const char *const *) b);
}

/* host_part - the host name as the Maildir spec puts it in file names */
static char *
host_part (void)
{
  g_auto(GStrv) slash = g_strsplit (g_get_host_name (), "/", -1);
  g_autofree char *joined = g_strjoinv ("\\057", slash);
  g_auto(GStrv) colon = g_strsplit (joined, ":", -1);

  return g_strjoinv ("\\072", colon);
}

/* list_dir - the sorted names in @dir (transfer full) */
static GPtrArray *
list_dir (const char *dir)
{
  g_autoptr(GError) error = NULL;
  g_autoptr(GDir) d = g_dir_open (dir, 0, &error);
  GPtrArray *names = g_ptr_array_new_with_free_func (g_free);
  const char *entry;

  g_assert_no_error (error);
  while ((entry = g_dir_read_name (d)) != NULL)
    g_ptr_array_add (names, g_strdup (entry));
  g_ptr_array_sort (names, compare_names);
  return names;
}

/* read_new - the contents of every file in <maildir>/new, keyed by the
 * file name; also checks tmp/ is empty and names look like the spec's */
static GHashTable *
read_new (const char *maildir)
{
  g_autofree char *new_dir = g_build_filename (maildir, "new", NULL);
  g_autofree char *tmp_dir = g_build_filename (maildir, "tmp", NULL);
  g_autoptr(GPtrArray) names = list_dir (new_dir);
  g_autoptr(GPtrArray) leftovers = list_dir (tmp_dir);
  g_autofree char *host = host_part ();
  GHashTable *files = g_hash_table_new_full (g_str_hash, g_str_equal, g_free, g_free);

  g_assert_cmpuint (leftovers->len, ==, 0);
  for (guint i = 0; i < names->len; i++)
    {
      g_autoptr(GError) error = NULL;
      g_autofree char *file = g_build_filename (new_dir, names->pdata[i], NULL);
      char *contents = NULL;
      struct stat st;

      if (!g_regex_match_simple ("^[0-9]+\\.M[0-9]+P[0-9]+Q[0-9]+\\.[^/:]+$",
                                 names->pdata[i], 0, 0))
        g_error ("%s is not a Maildir unique name", (char *) names->pdata[i]);
      g_assert_true (g_str_has_suffix (names->pdata[i], host));
      g_assert_cmpint (g_stat (file, &st), ==, 0);
      g_assert_cmpint (st.st_mode & 0777, ==, 0600);
      g_file_get_contents (file, &contents, NULL, &error);
      g_assert_no_error (error);
      g_hash_table_insert (files, g_strdup (names->pdata[i]), contents);
    }
  return files;
}

/* assert_contents - the files of @files are exactly @expected (any order) */
static void
assert_contents (GHashTable        *files,
                 const char *const *expected)
{
  g_autoptr(GPtrArray) got = g_ptr_array_new ();
  GHashTableIter iter;
  gpointer value;

  g_hash_table_iter_init (&iter, files);
  while (g_hash_table_iter_next (&iter, NULL, &value))
    g_ptr_array_add (got, value);
  g_assert_cmpuint (got->len, ==, g_strv_length ((char **) expected));
  for (guint i = 0; expected[i] != NULL; i++)
    {
      gboolean found = FALSE;

      for (guint j = 0; j < got->len && !found; j++)
        found = g_strcmp0 (got->pdata[j], expected[i]) == 0;
      if (!found)
        g_error ("no delivered file holds:\n%s", expected[i]);
    }
}

/* assert_is_maildir - @dir has cur/, new/ and tmp/, all mode 0700 */
static void
assert_is_maildir (const char *dir)
{
  static const char *const subdirs[] = { "", "cur", "new", "tmp" };

  for (guint i = 0; i < G_N_ELEMENTS (subdirs); i++)
    {
      g_autofree char *sub = g_build_filename (dir, subdirs[i], NULL);
      struct stat st;

      g_assert_cmpint (g_stat (sub, &st), ==, 0);
      g_assert_true (S_ISDIR (st.st_mode));
      g_assert_cmpint (st.st_mode & 0777, ==, 0700);
    }
}

/* test_create_makes_maildir - a missing Maildir is created, mode 0700 */
static void
test_create_makes_maildir (Fixture      *fx,
                           gconstpointer data)
{
  fixture_start (fx, "{}");
  assert_is_maildir (fx->path);
}

/* test_three_messages - LF line ends, delivery headers, unique names */
static void
test_three_messages (Fixture      *fx,
                     gconstpointer data)
{
  const char *const one[] = { "alice@example.net", NULL };
  const char *const two[] = { "alice@example.net", "bob@example.net", NULL };
  const char *const expected[] = {
    "Return-Path: <app@example.org>\n"
    "Delivered-To: alice@example.net\n"
    "Subject: one\n\nfirst\n",

    /* Two recipients in one file: no Delivered-To could be true. */
    "Return-Path: <app@example.org>\n"
    "Subject: two\n\nsecond\r line with a lone CR\n",

    /* The null sender. */
    "Return-Path: <>\n"
    "Delivered-To: alice@example.net\n"
    "Subject: three\n\nthird, no final line end",
    NULL
  };
  g_autoptr(GHashTable) files = NULL;
  g_autoptr(PmxResult) r1 = NULL;
  g_autoptr(PmxResult) r2 = NULL;
  g_autoptr(PmxResult) r3 = NULL;

  fixture_start (fx, "{}");
  r1 = send_message (fx, "app@example.org", one, "Subject: one\r\n\r\nfirst\r\n");
  r2 = send_message (fx, "app@example.org", two, "Subject: two\r\n\r\nsecond\r line with a lone CR\r\n");
  r3 = send_message (fx, "", one, "Subject: three\r\n\r\nthird, no final line end");
  assert_delivered (r1);
  assert_delivered (r2);
  assert_delivered (r3);

  files = read_new (fx->path);
  g_assert_cmpuint (g_hash_table_size (files), ==, 3);
  assert_contents (files, expected);

  /* The result names the file it wrote. */
  {
    const char *text = pmx_result_get_recipient (r1, 0)->text;
    g_autofree char *base = g_path_get_basename (text + strlen ("delivered to maildir as "));

    g_assert_true (g_str_has_prefix (text + strlen ("delivered to maildir as "), fx->path));
    g_assert_cmpstr (g_hash_table_lookup (files, base), ==, expected[0]);
  }
}

/* test_no_delivery_headers - the message exactly, with LF line ends */
static void
test_no_delivery_headers (Fixture      *fx,
                          gconstpointer data)
{
  const char *const rcpts[] = { "alice@example.net", NULL };
  const char *const expected[] = { "From: a@example.org\nSubject: plain\n\nbody\n.\n", NULL };
  g_autoptr(GHashTable) files = NULL;
  g_autoptr(PmxResult) result = NULL;

  fixture_start (fx, "{\"add_delivery_headers\": false}");
  result = send_message (fx, "a@example.org", rcpts,
                         "From: a@example.org\r\nSubject: plain\r\n\r\nbody\r\n.\r\n");
  assert_delivered (result);
  files = read_new (fx->path);
  assert_contents (files, expected);
}

/* test_per_recipient - one Maildir per recipient, each copy with its own
 * Delivered-To; unusable folder names bounce and create nothing */
static void
test_per_recipient (Fixture      *fx,
                    gconstpointer data)
{
  const char *const rcpts[] = {
    "alice@example.net", "Bob@Example.NET", ".hidden@example.net", "a/b@example.net", "tmp", NULL
  };
  g_autoptr(PmxResult) result = NULL;
  g_autoptr(GPtrArray) top = NULL;

  fixture_start (fx, "{\"per_recipient\": true}");
  result = send_message (fx, "app@example.org", rcpts, "Subject: hi\r\n\r\nhello\r\n");

  g_assert_cmpint (pmx_result_get_recipient (result, 0)->status, ==, PMX_RCPT_DELIVERED);
  g_assert_cmpint (pmx_result_get_recipient (result, 1)->status, ==, PMX_RCPT_DELIVERED);
  for (gsize i = 2; i < 5; i++)
    {
      const PmxResultRecipient *r = pmx_result_get_recipient (result, i);

      g_assert_cmpint (r->status, ==, PMX_RCPT_BOUNCED);
      g_assert_cmpuint (r->code, ==, 553);
      g_assert_cmpstr (r->enhanced, ==, "5.1.3");
    }

  /* The root holds its own cur/new/tmp and one folder per good recipient. */
  top = list_dir (fx->path);
  g_assert_cmpuint (top->len, ==, 5);
  g_assert_cmpstr (top->pdata[0], ==, "alice@example.net");
  g_assert_cmpstr (top->pdata[1], ==, "bob@example.net");
  g_assert_cmpstr (top->pdata[2], ==, "cur");
  g_assert_cmpstr (top->pdata[3], ==, "new");
  g_assert_cmpstr (top->pdata[4], ==, "tmp");

  {
    g_autofree char *alice = g_build_filename (fx->path, "alice@example.net", NULL);
    g_autofree char *bob = g_build_filename (fx->path, "bob@example.net", NULL);
    const char *const alice_expected[] = {
      "Return-Path: <app@example.org>\nDelivered-To: alice@example.net\nSubject: hi\n\nhello\n", NULL
    };
    const char *const bob_expected[] = {
      "Return-Path: <app@example.org>\nDelivered-To: Bob@Example.NET\nSubject: hi\n\nhello\n", NULL
    };
    g_autoptr(GHashTable) alice_files = read_new (alice);
    g_autoptr(GHashTable) bob_files = read_new (bob);
    g_autoptr(GHashTable) root_files = read_new (fx->path);

    assert_is_maildir (alice);
    assert_is_maildir (bob);
    assert_contents (alice_files, alice_expected);
    assert_contents (bob_files, bob_expected);
    g_assert_cmpuint (g_hash_table_size (root_files), ==, 0);
  }
}

/* test_unique_names - many messages, no two with one name */
static void
test_unique_names (Fixture      *fx,
                   gconstpointer data)
{
  const char *const rcpts[] = { "alice@example.net", NULL };
  g_autoptr(GHashTable) files = NULL;

  fixture_start (fx, "{}");
  for (guint i = 0; i < 50; i++)
    {
      g_autofree char *message = g_strdup_printf ("Subject: %u\r\n\r\n%u\r\n", i, i);
      g_autoptr(PmxResult) result = send_message (fx, "a@example.org", rcpts, message);

      assert_delivered (result);
    }
  files = read_new (fx->path);
  g_assert_cmpuint (g_hash_table_size (files), ==, 50);
}

/* test_io_error_defers - an I/O failure defers with 451 4.3.0 and leaves
 * nothing behind */
static void
test_io_error_defers (Fixture      *fx,
                      gconstpointer data)
{
  const char *const rcpts[] = { "alice@example.net", "bob@example.net", NULL };
  g_autofree char *new_dir = g_build_filename (fx->path, "new", NULL);
  g_autoptr(PmxResult) result = NULL;

  fixture_start (fx, "{}");
  /* new/ is a file: the link into it fails with ENOTDIR. */
  g_assert_cmpint (g_rmdir (new_dir), ==, 0);
  g_assert_true (g_file_set_contents (new_dir, "", 0, NULL));

  result = send_message (fx, "a@example.org", rcpts, "Subject: x\r\n\r\nx\r\n");
  for (gsize i = 0; i < 2; i++)
    {
      const PmxResultRecipient *r = pmx_result_get_recipient (result, i);

      g_assert_cmpint (r->status, ==, PMX_RCPT_DEFERRED);
      g_assert_cmpuint (r->code, ==, 451);
      g_assert_cmpstr (r->enhanced, ==, "4.3.0");
      g_assert_nonnull (strstr (r->text, fx->path));
    }
  {
    g_autofree char *tmp_dir = g_build_filename (fx->path, "tmp", NULL);
    g_autoptr(GPtrArray) leftovers = list_dir (tmp_dir);

    g_assert_cmpuint (leftovers->len, ==, 0);
  }
}

/* test_permission_is_config - an unwritable Maildir is a config failure */
static void
test_permission_is_config (Fixture      *fx,
                           gconstpointer data)
{
  const char *const rcpts[] = { "alice@example.net", NULL };
  g_autofree char *tmp_dir = g_build_filename (fx->path, "tmp", NULL);
  g_autoptr(PmxResult) result = NULL;
  const PmxResultRecipient *r;

  if (geteuid () == 0)
    {
      g_test_skip ("root writes through any mode");
      return;
    }
  fixture_start (fx, "{}");
  g_assert_cmpint (g_chmod (tmp_dir, 0500), ==, 0);
  result = send_message (fx, "a@example.org", rcpts, "Subject: x\r\n\r\nx\r\n");
  g_assert_cmpint (g_chmod (tmp_dir, 0700), ==, 0);

  r = pmx_result_get_recipient (result, 0);
  g_assert_cmpint (pmx_result_get_failure (result), ==, PMX_FAILURE_CONFIG);
  g_assert_cmpint (r->status, ==, PMX_RCPT_DEFERRED);
  g_assert_cmpuint (r->code, ==, 451);
  g_assert_cmpstr (r->enhanced, ==, "4.3.5");
  g_assert_nonnull (strstr (r->text, "write access"));
}

/* test_line_break_refused - an address with CRLF never reaches a header */
static void
test_line_break_refused (Fixture      *fx,
                         gconstpointer data)
{
  const char *const rcpts[] = { "alice@example.net\r\nX-Evil: 1", NULL };
  g_autoptr(PmxResult) result = NULL;
  g_autoptr(GHashTable) files = NULL;

  fixture_start (fx, "{}");
  result = send_message (fx, "a@example.org", rcpts, "Subject: x\r\n\r\nx\r\n");
  g_assert_cmpint (pmx_result_get_failure (result), ==, PMX_FAILURE_PERMANENT);
  g_assert_cmpint (pmx_result_get_recipient (result, 0)->status, ==, PMX_RCPT_BOUNCED);
  files = read_new (fx->path);
  g_assert_cmpuint (g_hash_table_size (files), ==, 0);
}

/* test_check - doctor says OK for a good Maildir, FAIL once it is gone */
static void
test_check (Fixture      *fx,
            gconstpointer data)
{
  g_autoptr(PmxReport) good = pmx_report_new ();
  g_autoptr(PmxReport) bad = pmx_report_new ();
  const PmxReportItem *item;

  fixture_start (fx, "{}");
  g_assert_true (fx->ops->check (fx->transport, good));
  g_assert_cmpuint (pmx_report_get_items (good)->len, ==, 1);
  item = g_ptr_array_index (pmx_report_get_items (good), 0);
  g_assert_cmpint (item->status, ==, PMX_CHECK_OK);
  g_assert_cmpstr (item->step, ==, "maildir");

  rm_rf (fx->path);
  g_assert_false (fx->ops->check (fx->transport, bad));
  g_assert_cmpuint (pmx_report_get_items (bad)->len, ==, 1);
  item = g_ptr_array_index (pmx_report_get_items (bad), 0);
  g_assert_cmpint (item->status, ==, PMX_CHECK_FAIL);
  g_assert_nonnull (strstr (item->text, fx->path));
  g_assert_nonnull (strstr (item->text, g_strerror (ENOENT)));
}

/* test_create_relative_path - a relative path is refused by create */
static void
test_create_relative_path (Fixture      *fx,
                           gconstpointer data)
{
  g_autoptr(JsonObject) options = json_object_new ();
  PmxTransportArgs args = { sizeof args, "local", options, fx->root, { NULL, } };
  g_autoptr(GError) error = NULL;
  PmxPlugin *plugin = pmx_plugin_loader_load (fx->loader, "maildir", &error);

  g_assert_no_error (error);
  json_object_set_string_member (options, "path", "Maildir");
  g_assert_null (pmx_plugin_create (plugin, &args, &error));
  g_assert_error (error, PMX_TRANSPORT_ERROR, PMX_TRANSPORT_ERROR_CONFIG);
  g_assert_true (g_str_has_prefix (error->message, "option path:"));
}

/* test_schema - the descriptor's schema accepts good options and rejects
 * an unknown key, a missing path and a relative one */
static void
test_schema (Fixture      *fx,
             gconstpointer data)
{
  const PmxTransportDesc *desc =
    pmx_plugin_get_desc (pmx_plugin_loader_load (fx->loader, "maildir", NULL));
  g_autoptr(GError) error = NULL;
  g_autoptr(PmxSchema) schema = pmx_schema_new_from_string (desc->options_schema, NULL, &error);
  g_autoptr(JsonNode) good = json_from_string ("{\"path\": \"/var/mail/x\", \"per_recipient\": true,"
                                               " \"add_delivery_headers\": false}", NULL);
  g_autoptr(JsonNode) unknown = json_from_string ("{\"path\": \"/var/mail/x\", \"colour\": \"blue\"}", NULL);
  g_autoptr(JsonNode) missing = json_from_string ("{\"per_recipient\": true}", NULL);
  g_autoptr(JsonNode) relative = json_from_string ("{\"path\": \"Maildir\"}", NULL);
  g_autoptr(GPtrArray) problems = NULL;
  const PmxSchemaProblem *problem;

  g_assert_no_error (error);
  g_assert_true (pmx_schema_validate (schema, good, NULL, NULL, &error));
  g_assert_no_error (error);

  g_assert_false (pmx_schema_validate (schema, unknown, NULL, &problems, &error));
  g_assert_no_error (error);
  g_assert_cmpuint (problems->len, ==, 1);
  problem = problems->pdata[0];
  g_assert_cmpstr (problem->keyword, ==, "additionalProperties");
  g_clear_pointer (&problems, g_ptr_array_unref);

  g_assert_false (pmx_schema_validate (schema, missing, NULL, &problems, &error));
  g_assert_no_error (error);
  problem = problems->pdata[0];
  g_assert_cmpstr (problem->keyword, ==, "required");
  g_clear_pointer (&problems, g_ptr_array_unref);

  g_assert_false (pmx_schema_validate (schema, relative, NULL, &problems, &error));
  g_assert_no_error (error);
  problem = problems->pdata[0];
  g_assert_cmpstr (problem->pointer, ==, "/path");
  g_assert_cmpstr (problem->keyword, ==, "pattern");
}

int
main (int    argc,
      char **argv)
{
  g_test_init (&argc, &argv, NULL);

#define ADD(path, func) g_test_add (path, Fixture, NULL, fixture_setup, func, fixture_teardown)
  ADD ("/plugin/maildir/create/makes-maildir", test_create_makes_maildir);
  ADD ("/plugin/maildir/create/relative-path-refused", test_create_relative_path);
  ADD ("/plugin/maildir/deliver/three-messages", test_three_messages);
  ADD ("/plugin/maildir/deliver/without-delivery-headers", test_no_delivery_headers);
  ADD ("/plugin/maildir/deliver/per-recipient", test_per_recipient);
  ADD ("/plugin/maildir/deliver/unique-names", test_unique_names);
  ADD ("/plugin/maildir/deliver/io-error-defers", test_io_error_defers);
  ADD ("/plugin/maildir/deliver/permission-is-config", test_permission_is_config);
  ADD ("/plugin/maildir/deliver/line-break-refused", test_line_break_refused);
  ADD ("/plugin/maildir/check", test_check);
  ADD ("/plugin/maildir/schema/rejects-unknown-key", test_schema);
#undef ADD

  return g_test_run ();
}

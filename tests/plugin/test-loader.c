/* SPDX-License-Identifier: GPL-3.0-or-later */
/*
 * test-loader.c - the real plugin loader against the fake transports that
 * tests/plugin/meson.build builds from fake-transport.c: the good path and
 * every refusal, each with its exact error code and the file in the message.
 *
 * Trusts: PMX_TEST_PLUGIN_DIR holds the freshly built fakes.  Temporary
 * copies go to private directories beside them (not under /tmp, which may be
 * mounted noexec), removed at the end of each test.
 */
#include <errno.h>
#include <pwd.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <glib/gstdio.h>

#include "pmx-plugin-loader.h"
#include "postmux-result-private.h"

/* loader_new - a loader that searches only the build tree's fakes */
static PmxPluginLoader *
loader_new (void)
{
  const char *const dirs[] = { PMX_TEST_PLUGIN_DIR, NULL };

  return pmx_plugin_loader_new (dirs);
}

/* assert_names_path - the message of @error mentions @path */
static void
assert_names_path (const GError *error,
                   const char   *path)
{
  g_assert_nonnull (error);
  if (strstr (error->message, path) == NULL)
    g_error ("'%s' does not name %s", error->message, path);
}

/* fake_path - the build tree's pmx-<name>.so (transfer full) */
static char *
fake_path (const char *name)
{
  g_autofree char *file = pmx_plugin_file_name (name);

  return g_build_filename (PMX_TEST_PLUGIN_DIR, file, NULL);
}

/* expect_refusal - loading @name fails with @code and names its file */
static void
expect_refusal (const char *name,
                int         code)
{
  g_autoptr(PmxPluginLoader) loader = loader_new ();
  g_autoptr(GError) error = NULL;
  g_autofree char *path = fake_path (name);
  PmxPlugin *plugin;

  plugin = pmx_plugin_loader_load (loader, name, &error);
  g_assert_error (error, PMX_PLUGIN_ERROR, code);
  g_assert_null (plugin);
  assert_names_path (error, path);
  g_test_message ("%s", error->message);
}

/* tmp_dir_new - a new private directory in the build tree (transfer full) */
static char *
tmp_dir_new (void)
{
  char *dir = g_build_filename (PMX_TEST_PLUGIN_DIR, "tmp-loader-XXXXXX", NULL);

  g_assert_nonnull (g_mkdtemp (dir));
  return dir;
}

/* tmp_dir_remove - remove a flat temporary directory and its files */
static void
tmp_dir_remove (const char *path)
{
  g_autoptr(GDir) dir = g_dir_open (path, 0, NULL);
  const char *entry;

  g_assert_nonnull (dir);
  while ((entry = g_dir_read_name (dir)) != NULL)
    {
      g_autofree char *file = g_build_filename (path, entry, NULL);

      g_assert_cmpint (g_unlink (file), ==, 0);
    }
  g_assert_cmpint (g_rmdir (path), ==, 0);
}

/* copy_good - copy pmx-good.so to @dir with @mode; returns the new path */
static char *
copy_good (const char *dir,
           mode_t      mode)
{
  g_autoptr(GError) error = NULL;
  g_autofree char *source = fake_path ("good");
  g_autofree char *data = NULL;
  gsize len = 0;
  char *path = g_build_filename (dir, "pmx-good.so", NULL);

  g_file_get_contents (source, &data, &len, &error);
  g_assert_no_error (error);
  g_file_set_contents_full (path, data, (gssize) len, G_FILE_SET_CONTENTS_NONE, 0600, &error);
  g_assert_no_error (error);
  g_assert_cmpint (g_chmod (path, mode), ==, 0);  /* past the umask */
  return path;
}

/* test_good_loads - the descriptor comes through as the plugin wrote it */
static void
test_good_loads (void)
{
  g_autoptr(PmxPluginLoader) loader = loader_new ();
  g_autoptr(GError) error = NULL;
  g_autofree char *path = fake_path ("good");
  const PmxTransportDesc *desc;
  PmxPlugin *plugin;

  plugin = pmx_plugin_loader_load (loader, "good", &error);
  g_assert_no_error (error);
  g_assert_nonnull (plugin);
  g_assert_cmpstr (pmx_plugin_get_name (plugin), ==, "good");
  g_assert_cmpstr (pmx_plugin_get_path (plugin), ==, path);

  desc = pmx_plugin_get_desc (plugin);
  g_assert_cmpuint (desc->abi_major, ==, PMX_ABI_MAJOR);
  g_assert_cmpuint (desc->abi_minor, ==, PMX_ABI_MINOR);
  g_assert_cmpstr (desc->name, ==, "good");
  g_assert_cmpstr (desc->version, ==, "1.0");
  g_assert_cmpstr (desc->license, ==, "GPL-3.0-or-later");
  g_assert_cmpstr (desc->description, ==, "a fake transport for the loader tests");
  g_assert_cmpstr (desc->options_schema, ==, "{ \"type\": \"object\", \"additionalProperties\": false }");
  g_assert_nonnull (desc->ops);
  g_assert_nonnull (desc->ops->check);
}

/* test_good_cached - a second load, by name or by file, is the same plugin */
static void
test_good_cached (void)
{
  g_autoptr(PmxPluginLoader) loader = loader_new ();
  g_autoptr(GError) error = NULL;
  g_autofree char *path = fake_path ("good");
  PmxPlugin *first, *again, *by_file;

  first = pmx_plugin_loader_load (loader, "good", &error);
  g_assert_no_error (error);
  again = pmx_plugin_loader_load (loader, "good", &error);
  g_assert_no_error (error);
  by_file = pmx_plugin_loader_load_file (loader, path, &error);
  g_assert_no_error (error);
  g_assert_true (first == again);
  g_assert_true (first == by_file);
}

/* test_good_same_name_elsewhere - a second file with a loaded name is refused */
static void
test_good_same_name_elsewhere (void)
{
  g_autoptr(PmxPluginLoader) loader = loader_new ();
  g_autoptr(GError) error = NULL;
  g_autofree char *dir = tmp_dir_new ();
  g_autofree char *copy = copy_good (dir, 0644);
  PmxPlugin *plugin;

  plugin = pmx_plugin_loader_load (loader, "good", &error);
  g_assert_no_error (error);
  g_assert_nonnull (plugin);
  plugin = pmx_plugin_loader_load_file (loader, copy, &error);
  g_assert_error (error, PMX_PLUGIN_ERROR, PMX_PLUGIN_ERROR_FAILED);
  g_assert_null (plugin);
  assert_names_path (error, copy);
  tmp_dir_remove (dir);
}

/* load_thread - load "good" from a shared loader */
static gpointer
load_thread (gpointer data)
{
  g_autoptr(GError) error = NULL;
  PmxPlugin *plugin = pmx_plugin_loader_load (data, "good", &error);

  g_assert_no_error (error);
  return plugin;
}

/* test_good_threads - concurrent loads of one name yield one plugin */
static void
test_good_threads (void)
{
  g_autoptr(PmxPluginLoader) loader = loader_new ();
  GThread *threads[8];
  gpointer plugins[G_N_ELEMENTS (threads)];

  for (guint i = 0; i < G_N_ELEMENTS (threads); i++)
    threads[i] = g_thread_new ("load", load_thread, loader);
  for (guint i = 0; i < G_N_ELEMENTS (threads); i++)
    plugins[i] = g_thread_join (threads[i]);
  for (guint i = 0; i < G_N_ELEMENTS (threads); i++)
    {
      g_assert_nonnull (plugins[i]);
      g_assert_true (plugins[i] == plugins[0]);
    }
}

/* test_good_delivers - create, open a session, send, check, close, destroy */
static void
test_good_delivers (void)
{
  g_autoptr(PmxPluginLoader) loader = loader_new ();
  g_autoptr(GError) error = NULL;
  g_autoptr(JsonObject) options = json_object_new ();
  g_autoptr(PmxResult) result = NULL;
  g_autoptr(PmxReport) report = NULL;
  const char *const rcpts[] = { "a@example.net", "b@example.net" };
  const char message[] = "Subject: hi\r\n\r\nhello\r\n";
  PmxTransportArgs args = { sizeof args, "fake1", options, "/nonexistent", { NULL, } };
  PmxEnvelope envelope = { "Q1", "sender@example.org", rcpts, G_N_ELEMENTS (rcpts), 1, "local", { NULL, } };
  const PmxTransportOps *ops;
  const PmxReportItem *item;
  PmxTransport *transport;
  PmxSession *session;
  PmxPlugin *plugin;

  plugin = pmx_plugin_loader_load (loader, "good", &error);
  g_assert_no_error (error);
  ops = pmx_plugin_get_desc (plugin)->ops;

  transport = pmx_plugin_create (plugin, &args, &error);
  g_assert_no_error (error);
  g_assert_nonnull (transport);
  session = ops->open_session (transport, &error);
  g_assert_no_error (error);
  g_assert_nonnull (session);

  result = pmx_result_new (envelope.n_recipients);
  ops->send (session, &envelope, (const guint8 *) message, strlen (message), result);
  for (gsize i = 0; i < envelope.n_recipients; i++)
    {
      const PmxResultRecipient *r = pmx_result_get_recipient (result, i);

      g_assert_cmpint (r->status, ==, PMX_RCPT_DELIVERED);
      g_assert_cmpuint (r->code, ==, 250);
      g_assert_cmpstr (r->enhanced, ==, "2.0.0");
      g_assert_cmpstr (r->text, ==, "ok fake1");
    }

  report = pmx_report_new ();
  g_assert_true (ops->check (transport, report));
  g_assert_cmpuint (pmx_report_get_items (report)->len, ==, 1);
  item = g_ptr_array_index (pmx_report_get_items (report), 0);
  g_assert_cmpint (item->status, ==, PMX_CHECK_OK);
  g_assert_cmpstr (item->step, ==, "fake");
  g_assert_cmpstr (item->text, ==, "instance fake1 is fine");

  ops->close_session (session);
  ops->destroy (transport);
}

/* test_abi_major - another major is refused, with both versions named */
static void
test_abi_major (void)
{
  g_autofree char *want = g_strdup_printf ("built for plugin ABI %d.%d, this Postmux speaks %d.%d",
                                           PMX_ABI_MAJOR + 1, PMX_ABI_MINOR,
                                           PMX_ABI_MAJOR, PMX_ABI_MINOR);
  g_autoptr(PmxPluginLoader) loader = loader_new ();
  g_autoptr(GError) error = NULL;

  expect_refusal ("abi-major", PMX_PLUGIN_ERROR_ABI_MISMATCH);
  g_assert_null (pmx_plugin_loader_load (loader, "abi-major", &error));
  g_assert_nonnull (strstr (error->message, want));
  g_assert_nonnull (strstr (error->message, "rebuild the plugin"));
}

/* test_abi_minor_newer - a plugin newer than the host is refused */
static void
test_abi_minor_newer (void)
{
  expect_refusal ("abi-minor-newer", PMX_PLUGIN_ERROR_ABI_MISMATCH);
}

/* test_abi_minor_older - a plugin built against an older minor loads */
static void
test_abi_minor_older (void)
{
#if PMX_ABI_MINOR > 0
  g_autoptr(PmxPluginLoader) loader = loader_new ();
  g_autoptr(GError) error = NULL;
  PmxPlugin *plugin;

  plugin = pmx_plugin_loader_load (loader, "abi-minor-older", &error);
  g_assert_no_error (error);
  g_assert_nonnull (plugin);
  g_assert_cmpuint (pmx_plugin_get_desc (plugin)->abi_minor, ==, PMX_ABI_MINOR - 1);
#else
  g_test_skip ("the host's ABI minor is 0: there is no older minor");
#endif
}

/* test_name_mismatch - pmx-misnamed.so whose descriptor says "other" */
static void
test_name_mismatch (void)
{
  expect_refusal ("misnamed", PMX_PLUGIN_ERROR_NAME_MISMATCH);
}

/* test_missing_symbol - pmx-no-symbol.so exports the wrong get_desc */
static void
test_missing_symbol (void)
{
  expect_refusal ("no-symbol", PMX_PLUGIN_ERROR_NOT_A_PLUGIN);
}

/* test_null_desc - get_desc() returns NULL */
static void
test_null_desc (void)
{
  expect_refusal ("null-desc", PMX_PLUGIN_ERROR_NOT_A_PLUGIN);
}

/* test_bad_schema - an options schema that is not JSON */
static void
test_bad_schema (void)
{
  expect_refusal ("bad-schema", PMX_PLUGIN_ERROR_BAD_SCHEMA);
}

/* test_invalid_schema - JSON, but not a JSON Schema */
static void
test_invalid_schema (void)
{
  expect_refusal ("invalid-schema", PMX_PLUGIN_ERROR_BAD_SCHEMA);
}

/* create_fake - load @name and call create through the loader */
static PmxTransport *
create_fake (PmxPluginLoader *loader,
             const char      *name,
             GError         **error)
{
  g_autoptr(JsonObject) options = json_object_new ();
  PmxTransportArgs args = { sizeof args, "inst", options, "/nonexistent", { NULL, } };
  g_autoptr(GError) local = NULL;
  PmxPlugin *plugin;

  plugin = pmx_plugin_loader_load (loader, name, &local);
  g_assert_no_error (local);
  return pmx_plugin_create (plugin, &args, error);
}

/* test_create_error - the plugin's own error comes through unchanged */
static void
test_create_error (void)
{
  g_autoptr(PmxPluginLoader) loader = loader_new ();
  g_autoptr(GError) error = NULL;

  g_assert_null (create_fake (loader, "create-error", &error));
  g_assert_error (error, PMX_TRANSPORT_ERROR, PMX_TRANSPORT_ERROR_CONFIG);
  g_assert_cmpstr (error->message, ==, "option 'colour' must be blue — set it to blue");
}

/* test_create_null - NULL without an error becomes CREATE_FAILED */
static void
test_create_null (void)
{
  g_autoptr(PmxPluginLoader) loader = loader_new ();
  g_autoptr(GError) error = NULL;
  g_autofree char *path = fake_path ("create-null");

  g_assert_null (create_fake (loader, "create-null", &error));
  g_assert_error (error, PMX_PLUGIN_ERROR, PMX_PLUGIN_ERROR_CREATE_FAILED);
  assert_names_path (error, path);
}

/* test_unsafe_mode - group- or other-writable copies are refused */
static void
test_unsafe_mode (void)
{
  const mode_t modes[] = { 0666, 0646, 0664, 0620, 0602 };

  for (guint i = 0; i < G_N_ELEMENTS (modes); i++)
    {
      g_autoptr(PmxPluginLoader) loader = pmx_plugin_loader_new (NULL);
      g_autoptr(GError) error = NULL;
      g_autofree char *dir = tmp_dir_new ();
      g_autofree char *path = copy_good (dir, modes[i]);
      g_autofree char *real = realpath (path, NULL);
      g_autofree char *want = g_strdup_printf ("(mode %04o) — chmod go-w %s", (guint) modes[i], real);

      g_assert_null (pmx_plugin_loader_load_file (loader, path, &error));
      g_assert_error (error, PMX_PLUGIN_ERROR, PMX_PLUGIN_ERROR_UNSAFE_FILE);
      assert_names_path (error, path);
      g_assert_nonnull (strstr (error->message, want));
      if (strcmp (path, real) == 0)
        {
          g_autofree char *message = g_strdup_printf ("plugin %s is writable by group or others %s",
                                                      path, want);

          g_assert_cmpstr (error->message, ==, message);
        }
      tmp_dir_remove (dir);
    }
}

/* test_safe_copy - the same file, not writable by others, loads */
static void
test_safe_copy (void)
{
  const mode_t modes[] = { 0644, 0755, 0400 };

  for (guint i = 0; i < G_N_ELEMENTS (modes); i++)
    {
      const char *dirs[] = { NULL, NULL };
      g_autoptr(PmxPluginLoader) loader = NULL;
      g_autoptr(GError) error = NULL;
      g_autofree char *dir = tmp_dir_new ();
      g_autofree char *path = copy_good (dir, modes[i]);
      PmxPlugin *plugin;

      dirs[0] = dir;
      loader = pmx_plugin_loader_new (dirs);
      plugin = pmx_plugin_loader_load (loader, "good", &error);
      g_assert_no_error (error);
      g_assert_cmpstr (pmx_plugin_get_path (plugin), ==, path);
      tmp_dir_remove (dir);
    }
}

/* nobody_uid - a uid that is neither root nor us */
static uid_t
nobody_uid (void)
{
  struct passwd *pw = getpwnam ("nobody");

  return pw != NULL ? pw->pw_uid : 65534;
}

/* test_unsafe_owner - a file owned by another user is refused (root only:
 * nobody else may give a file away) */
static void
test_unsafe_owner (void)
{
  g_autoptr(PmxPluginLoader) loader = pmx_plugin_loader_new (NULL);
  g_autoptr(GError) error = NULL;
  g_autofree char *dir = NULL;
  g_autofree char *path = NULL;

  if (geteuid () != 0)
    {
      g_test_skip ("only root can chown a file to another user");
      return;
    }
  dir = tmp_dir_new ();
  path = copy_good (dir, 0644);
  g_assert_cmpint (chown (path, nobody_uid (), (gid_t) -1), ==, 0);

  g_assert_null (pmx_plugin_loader_load_file (loader, path, &error));
  g_assert_error (error, PMX_PLUGIN_ERROR, PMX_PLUGIN_ERROR_UNSAFE_FILE);
  assert_names_path (error, path);
  g_assert_nonnull (strstr (error->message, "chown"));
  tmp_dir_remove (dir);
}

/* test_unsafe_symlink_owner - a symlink owned by another user is refused
 * even when it leads to a good file */
static void
test_unsafe_symlink_owner (void)
{
  g_autoptr(PmxPluginLoader) loader = pmx_plugin_loader_new (NULL);
  g_autoptr(GError) error = NULL;
  g_autofree char *dir = NULL;
  g_autofree char *target = fake_path ("good");
  g_autofree char *link = NULL;

  if (geteuid () != 0)
    {
      g_test_skip ("only root can chown a file to another user");
      return;
    }
  dir = tmp_dir_new ();
  link = g_build_filename (dir, "pmx-good.so", NULL);
  g_assert_cmpint (symlink (target, link), ==, 0);
  g_assert_cmpint (lchown (link, nobody_uid (), (gid_t) -1), ==, 0);

  g_assert_null (pmx_plugin_loader_load_file (loader, link, &error));
  g_assert_error (error, PMX_PLUGIN_ERROR, PMX_PLUGIN_ERROR_UNSAFE_FILE);
  assert_names_path (error, link);
  tmp_dir_remove (dir);
}

/* test_symlink_to_unsafe - a symlink's target is checked, not the link */
static void
test_symlink_to_unsafe (void)
{
  g_autoptr(PmxPluginLoader) loader = pmx_plugin_loader_new (NULL);
  g_autoptr(GError) error = NULL;
  g_autofree char *dir = tmp_dir_new ();
  g_autofree char *link = g_build_filename (dir, "pmx-linked.so", NULL);
  g_autofree char *target = NULL;
  g_autofree char *unsafe = NULL;

  /* pmx-good.so (0666) ← pmx-linked.so */
  target = copy_good (dir, 0666);
  g_assert_cmpint (symlink ("pmx-good.so", link), ==, 0);

  g_assert_null (pmx_plugin_loader_load_file (loader, link, &error));
  g_assert_error (error, PMX_PLUGIN_ERROR, PMX_PLUGIN_ERROR_UNSAFE_FILE);
  assert_names_path (error, link);
  unsafe = realpath (target, NULL);
  assert_names_path (error, unsafe);
  tmp_dir_remove (dir);
}

/* test_not_elf - a text file named like a plugin cannot be opened */
static void
test_not_elf (void)
{
  g_autoptr(PmxPluginLoader) loader = pmx_plugin_loader_new (NULL);
  g_autoptr(GError) error = NULL;
  g_autofree char *dir = tmp_dir_new ();
  g_autofree char *path = g_build_filename (dir, "pmx-text.so", NULL);

  g_file_set_contents_full (path, "#!/bin/sh\necho not a plugin\n", -1,
                            G_FILE_SET_CONTENTS_NONE, 0644, &error);
  g_assert_no_error (error);

  g_assert_null (pmx_plugin_loader_load_file (loader, path, &error));
  g_assert_error (error, PMX_PLUGIN_ERROR, PMX_PLUGIN_ERROR_CANNOT_OPEN);
  assert_names_path (error, path);
  tmp_dir_remove (dir);
}

/* test_not_found - no pmx-<name>.so in any directory */
static void
test_not_found (void)
{
  g_autofree char *dir = tmp_dir_new ();
  const char *const dirs[] = { dir, PMX_TEST_PLUGIN_DIR, NULL };
  g_autoptr(PmxPluginLoader) loader = pmx_plugin_loader_new (dirs);
  g_autoptr(GError) error = NULL;

  g_assert_null (pmx_plugin_loader_load (loader, "absent", &error));
  g_assert_error (error, PMX_PLUGIN_ERROR, PMX_PLUGIN_ERROR_NOT_FOUND);
  g_assert_nonnull (strstr (error->message, "pmx-absent.so"));
  assert_names_path (error, dir);
  assert_names_path (error, PMX_TEST_PLUGIN_DIR);
  g_clear_error (&error);

  /* A name that could walk out of the directory is never looked up. */
  g_assert_null (pmx_plugin_loader_load (loader, "../good", &error));
  g_assert_error (error, PMX_PLUGIN_ERROR, PMX_PLUGIN_ERROR_NOT_FOUND);
  g_clear_error (&error);

  /* An explicit file that does not exist. */
  g_assert_null (pmx_plugin_loader_load_file (loader, "/nonexistent/pmx-x.so", &error));
  g_assert_error (error, PMX_PLUGIN_ERROR, PMX_PLUGIN_ERROR_NOT_FOUND);
  assert_names_path (error, "/nonexistent/pmx-x.so");
  tmp_dir_remove (dir);
}

/* test_bad_file_name - a file not named pmx-<name>.so is refused */
static void
test_bad_file_name (void)
{
  g_autoptr(PmxPluginLoader) loader = pmx_plugin_loader_new (NULL);
  g_autoptr(GError) error = NULL;

  g_assert_null (pmx_plugin_loader_load_file (loader, "/usr/lib/libfoo.so", &error));
  g_assert_error (error, PMX_PLUGIN_ERROR, PMX_PLUGIN_ERROR_FAILED);
  assert_names_path (error, "/usr/lib/libfoo.so");
}

/* find_plugin - the plugin called @name in @plugins, or NULL */
static PmxPlugin *
find_plugin (GPtrArray  *plugins,
             const char *name)
{
  for (guint i = 0; i < plugins->len; i++)
    if (g_strcmp0 (pmx_plugin_get_name (plugins->pdata[i]), name) == 0)
      return plugins->pdata[i];
  return NULL;
}

/* find_failure - the failure whose message names @path, or NULL */
static GError *
find_failure (GPtrArray  *failures,
              const char *path)
{
  for (guint i = 0; i < failures->len; i++)
    if (strstr (((GError *) failures->pdata[i])->message, path) != NULL)
      return failures->pdata[i];
  return NULL;
}

/* test_scan - every fake is either loaded or reported with its code */
static void
test_scan (void)
{
  static const struct {
    const char *name;
    int         code;   /* -1: loads */
  } cases[] = {
    { "good", -1 },
    { "create-error", -1 },
    { "create-null", -1 },
#if PMX_ABI_MINOR > 0
    { "abi-minor-older", -1 },
#endif
    { "abi-major", PMX_PLUGIN_ERROR_ABI_MISMATCH },
    { "abi-minor-newer", PMX_PLUGIN_ERROR_ABI_MISMATCH },
    { "misnamed", PMX_PLUGIN_ERROR_NAME_MISMATCH },
    { "no-symbol", PMX_PLUGIN_ERROR_NOT_A_PLUGIN },
    { "null-desc", PMX_PLUGIN_ERROR_NOT_A_PLUGIN },
    { "bad-schema", PMX_PLUGIN_ERROR_BAD_SCHEMA },
    { "invalid-schema", PMX_PLUGIN_ERROR_BAD_SCHEMA },
  };
  g_autofree char *missing = g_build_filename (g_get_tmp_dir (), "pmx-loader-no-such-dir", NULL);
  const char *const dirs[] = { PMX_TEST_PLUGIN_DIR, missing, NULL };
  g_autoptr(PmxPluginLoader) loader = pmx_plugin_loader_new (dirs);
  g_autoptr(GPtrArray) plugins = NULL;
  g_autoptr(GPtrArray) failures = NULL;

  plugins = pmx_plugin_loader_scan (loader, &failures);
  g_assert_nonnull (plugins);
  g_assert_nonnull (failures);
  for (guint i = 0; i < G_N_ELEMENTS (cases); i++)
    {
      g_autofree char *path = fake_path (cases[i].name);
      GError *failure = find_failure (failures, path);

      if (cases[i].code < 0)
        {
          g_assert_null (failure);
          g_assert_nonnull (find_plugin (plugins, cases[i].name));
        }
      else
        {
          g_assert_null (find_plugin (plugins, cases[i].name));
          g_assert_error (failure, PMX_PLUGIN_ERROR, cases[i].code);
        }
    }
  /* The loaded ones are cached: a second scan finds the same plugins. */
  {
    g_autoptr(GPtrArray) again = pmx_plugin_loader_scan (loader, NULL);

    g_assert_true (find_plugin (again, "good") == find_plugin (plugins, "good"));
  }
}

int
main (int    argc,
      char **argv)
{
  g_test_init (&argc, &argv, NULL);

  g_test_add_func ("/plugin/loader/good/loads", test_good_loads);
  g_test_add_func ("/plugin/loader/good/is-cached", test_good_cached);
  g_test_add_func ("/plugin/loader/good/same-name-elsewhere-refused", test_good_same_name_elsewhere);
  g_test_add_func ("/plugin/loader/good/loads-once-across-threads", test_good_threads);
  g_test_add_func ("/plugin/loader/good/creates-sends-destroys", test_good_delivers);
  g_test_add_func ("/plugin/loader/abi/other-major-refused", test_abi_major);
  g_test_add_func ("/plugin/loader/abi/newer-minor-refused", test_abi_minor_newer);
  g_test_add_func ("/plugin/loader/abi/older-minor-accepted", test_abi_minor_older);
  g_test_add_func ("/plugin/loader/name/mismatch-refused", test_name_mismatch);
  g_test_add_func ("/plugin/loader/symbol/missing-refused", test_missing_symbol);
  g_test_add_func ("/plugin/loader/symbol/null-descriptor-refused", test_null_desc);
  g_test_add_func ("/plugin/loader/schema/not-json-refused", test_bad_schema);
  g_test_add_func ("/plugin/loader/schema/not-a-schema-refused", test_invalid_schema);
  g_test_add_func ("/plugin/loader/create/error-passed-through", test_create_error);
  g_test_add_func ("/plugin/loader/create/null-without-error-is-create-failed", test_create_null);
  g_test_add_func ("/plugin/loader/file/writable-by-others-refused", test_unsafe_mode);
  g_test_add_func ("/plugin/loader/file/private-copy-accepted", test_safe_copy);
  g_test_add_func ("/plugin/loader/file/foreign-owner-refused", test_unsafe_owner);
  g_test_add_func ("/plugin/loader/file/foreign-symlink-refused", test_unsafe_symlink_owner);
  g_test_add_func ("/plugin/loader/file/symlink-target-checked", test_symlink_to_unsafe);
  g_test_add_func ("/plugin/loader/file/not-elf-cannot-open", test_not_elf);
  g_test_add_func ("/plugin/loader/file/bad-name-refused", test_bad_file_name);
  g_test_add_func ("/plugin/loader/not-found", test_not_found);
  g_test_add_func ("/plugin/loader/scan", test_scan);

  return g_test_run ();
}

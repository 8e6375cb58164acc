/* SPDX-License-Identifier: GPL-3.0-or-later */
/*
 * test-result.c - the SDK's result builder and secret references.
 */
#include "postmux-result-private.h"

#include <glib/gstdio.h>
#include <string.h>

/* /result/recipients/mixed - per-recipient outcomes are kept exactly */
static void
test_mixed (void)
{
  g_autoptr(PmxResult) r = pmx_result_new (3);
  const PmxResultRecipient *rr;

  pmx_result_set_recipient (r, 0, PMX_RCPT_DELIVERED, 250, "2.0.0", "ok");
  pmx_result_set_recipient (r, 2, PMX_RCPT_BOUNCED, 550, "5.1.1", "no such user");
  rr = pmx_result_get_recipient (r, 1);
  g_assert_cmpint (rr->status, ==, PMX_RCPT_PENDING);
  pmx_result_set_pending (r, PMX_RCPT_DEFERRED, 451, "4.3.0", "later");
  rr = pmx_result_get_recipient (r, 0);
  g_assert_cmpint (rr->status, ==, PMX_RCPT_DELIVERED);
  g_assert_cmpuint (rr->code, ==, 250);
  rr = pmx_result_get_recipient (r, 1);
  g_assert_cmpint (rr->status, ==, PMX_RCPT_DEFERRED);
  g_assert_cmpstr (rr->enhanced, ==, "4.3.0");
  rr = pmx_result_get_recipient (r, 2);
  g_assert_cmpint (rr->status, ==, PMX_RCPT_BOUNCED);
  g_assert_cmpstr (rr->text, ==, "no such user");
  g_assert_cmpint (pmx_result_get_failure (r), ==, PMX_FAILURE_NONE);
  g_assert_cmpint (pmx_result_get_retry_after (r), ==, -1);
}

/* /result/fail/keeps-given - a whole-attempt failure fills only the rest */
static void
test_fail (void)
{
  g_autoptr(PmxResult) r = pmx_result_new (2);
  const PmxResultRecipient *rr;

  pmx_result_set_recipient (r, 0, PMX_RCPT_DELIVERED, 250, NULL, "ok");
  pmx_result_fail (r, PMX_FAILURE_PERMANENT, 554, "5.3.4", "message too big for %s", "the server");
  g_assert_cmpint (pmx_result_get_failure (r), ==, PMX_FAILURE_PERMANENT);
  g_assert_cmpstr (pmx_result_get_failure_text (r), ==, "message too big for the server");
  g_assert_cmpuint (pmx_result_get_failure_code (r), ==, 554);
  g_assert_cmpint (pmx_result_get_recipient (r, 0)->status, ==, PMX_RCPT_DELIVERED);
  rr = pmx_result_get_recipient (r, 1);
  g_assert_cmpint (rr->status, ==, PMX_RCPT_BOUNCED);
  g_assert_cmpuint (rr->code, ==, 554);
  g_assert_cmpstr (rr->text, ==, "message too big for the server");

  pmx_result_set_retry_after (r, 120);
  g_assert_cmpint (pmx_result_get_retry_after (r), ==, 120);
  pmx_result_set_remote_id (r, "AAMk=");
  g_assert_cmpstr (pmx_result_get_remote_id (r), ==, "AAMk=");
}

/* /result/fail/temporary-defers - temporary classes defer */
static void
test_fail_temporary (void)
{
  g_autoptr(PmxResult) r = pmx_result_new (1);

  pmx_result_fail (r, PMX_FAILURE_AUTH, 535, "5.7.8", "bad credentials");
  g_assert_cmpint (pmx_result_get_recipient (r, 0)->status, ==, PMX_RCPT_DEFERRED);
}

/* /secret/env - env: references */
static void
test_secret_env (void)
{
  g_autoptr(GError) error = NULL;
  char *s;

  g_setenv ("PMX_TEST_SECRET", "s3cret", TRUE);
  s = pmx_secret_resolve ("env:PMX_TEST_SECRET", &error);
  g_assert_no_error (error);
  g_assert_cmpstr (s, ==, "s3cret");
  pmx_secret_free (s);
  s = pmx_secret_resolve ("plain-value", &error);
  g_assert_cmpstr (s, ==, "plain-value");
  pmx_secret_free (s);
  g_unsetenv ("PMX_TEST_SECRET");
  s = pmx_secret_resolve ("env:PMX_TEST_SECRET", &error);
  g_assert_null (s);
  g_assert_error (error, PMX_SECRET_ERROR, PMX_SECRET_ERROR_NOT_FOUND);
}

/* /secret/file - file: references, trailing newline, missing file, relative path */
static void
test_secret_file (void)
{
  g_autofree char *dir = g_dir_make_tmp ("pmx-secret-XXXXXX", NULL);
  g_autofree char *path = g_build_filename (dir, "s", NULL);
  g_autofree char *ref = g_strconcat ("file:", path, NULL);
  g_autoptr(GError) error = NULL;
  char *s;

  g_assert_true (g_file_set_contents_full (path, "tok\r\n", -1, G_FILE_SET_CONTENTS_NONE, 0600, NULL));
  s = pmx_secret_resolve (ref, &error);
  g_assert_no_error (error);
  g_assert_cmpstr (s, ==, "tok");
  pmx_secret_free (s);
  g_unlink (path);
  s = pmx_secret_resolve (ref, &error);
  g_assert_null (s);
  g_assert_error (error, PMX_SECRET_ERROR, PMX_SECRET_ERROR_NOT_FOUND);
  g_clear_error (&error);
  s = pmx_secret_resolve ("file:relative/path", &error);
  g_assert_null (s);
  g_assert_error (error, PMX_SECRET_ERROR, PMX_SECRET_ERROR_FAILED);
  g_clear_error (&error);
  /* Not a regular file: refused before anything is read. */
  s = pmx_secret_resolve ("file:/dev/zero", &error);
  g_assert_null (s);
  g_assert_error (error, PMX_SECRET_ERROR, PMX_SECRET_ERROR_FAILED);
  g_assert_nonnull (strstr (error->message, "not a regular file"));
  g_rmdir (dir);
}

int
main (int    argc,
      char **argv)
{
  g_test_init (&argc, &argv, NULL);
  g_test_add_func ("/result/recipients/mixed", test_mixed);
  g_test_add_func ("/result/fail/keeps-given", test_fail);
  g_test_add_func ("/result/fail/temporary-defers", test_fail_temporary);
  g_test_add_func ("/secret/env", test_secret_env);
  g_test_add_func ("/secret/file", test_secret_file);
  return g_test_run ();
}

/* SPDX-License-Identifier: GPL-3.0-or-later */
/*
 * test-config.c - the config loader: valid configs, defaults, presets, and
 * a table of invalid configs each giving its specific message.
 */
#include "pmx-config.h"
#include "pmx-duration.h"

#include <glib/gstdio.h>

#include <string.h>

static const char good_config[] =
  "{\n"
  "  \"state_dir\": \"/tmp/pmx-test-state\",\n"
  "  \"transports\": {\n"
  "    \"a\": { \"plugin\": \"maildir\", \"options\": { \"path\": \"/tmp/m\" }, \"concurrency\": 3 },\n"
  "    \"b\": { \"preset\": \"gmail\", \"options\": { \"port\": 465, \"security\": \"tls\" } }\n"
  "  },\n"
  "  \"default\": \"a\",\n"
  "  \"routes\": [\n"
  "    { \"name\": \"bulk\", \"match\": { \"sender_domain\": [\"News.Example\"] }, \"transports\": [\"b\", \"a\"] }\n"
  "  ],\n"
  "  \"queue\": { \"path\": \"q.db\", \"retention\": \"2d\" },\n"
  "  \"retry\": { \"initial_delay\": 60, \"multiplier\": 3, \"max_delay\": \"2h\", \"jitter\": 0, \"max_age\": \"3d\" }\n"
  "}\n";

/* /config/load/valid - every field lands where it should */
static void
test_load_valid (void)
{
  g_autoptr(GError) error = NULL;
  g_autoptr(PmxConfig) config = pmx_config_load_data (good_config, "good.json", NULL, &error);
  const PmxTransportConfig *a, *b;
  PmxRouteConfig *route;

  g_assert_no_error (error);
  g_assert_nonnull (config);
  g_assert_cmpstr (config->state_dir, ==, "/tmp/pmx-test-state");
  g_assert_cmpstr (config->queue_path, ==, "/tmp/pmx-test-state/q.db");
  g_assert_cmpstr (config->default_transport, ==, "a");
  g_assert_cmpuint (config->transports->len, ==, 2);
  a = pmx_config_get_transport (config, "a");
  g_assert_cmpstr (a->plugin, ==, "maildir");
  g_assert_cmpuint (a->concurrency, ==, 3);
  b = pmx_config_get_transport (config, "b");
  g_assert_cmpstr (b->plugin, ==, "smtp");
  g_assert_cmpstr (b->preset, ==, "gmail");
  g_assert_cmpuint (b->concurrency, ==, 2);
  /* The preset fills, explicit options override. */
  g_assert_cmpstr (json_object_get_string_member (b->options, "host"), ==, "smtp.gmail.com");
  g_assert_cmpint (json_object_get_int_member (b->options, "port"), ==, 465);
  g_assert_cmpstr (json_object_get_string_member (b->options, "security"), ==, "tls");
  g_assert_cmpuint (config->routes->len, ==, 1);
  route = g_ptr_array_index (config->routes, 0);
  g_assert_cmpstr (route->name, ==, "bulk");
  g_assert_cmpstr (route->sender_domains[0], ==, "news.example");
  g_assert_null (route->sender_domains[1]);
  g_assert_cmpstr (route->transports[0], ==, "b");
  g_assert_cmpstr (route->transports[1], ==, "a");
  g_assert_cmpint (route->strategy, ==, PMX_STRATEGY_FAILOVER);
  g_assert_cmpint (config->retention, ==, 2 * 86400 * PMX_USEC_PER_SEC);
  g_assert_cmpint (config->retry.initial_delay, ==, 60 * PMX_USEC_PER_SEC);
  g_assert_cmpfloat (config->retry.multiplier, ==, 3.0);
  g_assert_cmpint (config->retry.max_delay, ==, 7200 * PMX_USEC_PER_SEC);
  g_assert_cmpfloat (config->retry.jitter, ==, 0.0);
  g_assert_cmpint (config->retry.max_age, ==, 3 * 86400 * PMX_USEC_PER_SEC);
}

/* /config/load/defaults - Postfix-like retry defaults */
static void
test_load_defaults (void)
{
  g_autoptr(GError) error = NULL;
  g_autoptr(PmxConfig) config = pmx_config_load_data (
    "{\"state_dir\": \"/s\", \"transports\": {\"x\": {\"plugin\": \"maildir\"}}, \"default\": \"x\"}",
    "min.json", NULL, &error);

  g_assert_no_error (error);
  g_assert_cmpstr (config->queue_path, ==, "/s/queue.db");
  g_assert_cmpint (config->retry.initial_delay, ==, 300 * PMX_USEC_PER_SEC);
  g_assert_cmpfloat (config->retry.multiplier, ==, 2.0);
  g_assert_cmpint (config->retry.max_delay, ==, 3600 * PMX_USEC_PER_SEC);
  g_assert_cmpint (config->retry.max_age, ==, 5 * 86400 * PMX_USEC_PER_SEC);
  g_assert_cmpint (config->shutdown_timeout, ==, 30 * PMX_USEC_PER_SEC);
  g_assert_cmpuint (config->routes->len, ==, 0);
}

/* /config/default/maildir - the embedded default delivers into a Maildir */
static void
test_embedded_default (void)
{
  g_autoptr(PmxConfig) config = pmx_config_new_default ("/srv/pmx");
  const PmxTransportConfig *t = pmx_config_get_transport (config, config->default_transport);

  g_assert_cmpstr (config->default_transport, ==, "local");
  g_assert_cmpstr (t->plugin, ==, "maildir");
  g_assert_cmpstr (json_object_get_string_member (t->options, "path"), ==, "/srv/pmx/Maildir");
  g_assert_cmpstr (config->queue_path, ==, "/srv/pmx/queue.db");
}

typedef struct {
  const char *name;
  const char *json;
  const char *expected;   /* the one problem, exactly */
} InvalidCase;

static const InvalidCase invalid_cases[] = {
  { "wrong-type",
    "{\"transports\": {\"a\": {\"plugin\": \"maildir\", \"concurrency\": \"4\"}},\n \"default\": \"a\"}",
    "line 1: /transports/a/concurrency: expected integer, found string \"4\" (type)" },
  { "unknown-key",
    "{\"transports\": {\"a\": {\"plugin\": \"maildir\"}},\n \"default\": \"a\",\n \"retries\": {}}",
    "line 3: /retries: unknown property \"retries\" (additionalProperties is false) (additionalProperties)" },
  { "missing-transports",
    "{\"default\": \"a\"}",
    "line 1: /: missing required property \"transports\" (required)" },
  { "default-undefined",
    "{\"transports\": {\"a\": {\"plugin\": \"maildir\"}},\n \"default\": \"b\"}",
    "line 2: /default: default transport \"b\" is not defined under \"transports\" — define it or fix the name" },
  { "route-unknown-transport",
    "{\"transports\": {\"a\": {\"plugin\": \"maildir\"}},\n \"default\": \"a\",\n \"routes\": [\n  {\"match\": {\"sender\": [\"x@y\"]},\n   \"transports\": [\"a\", \"ghost\"]}]}",
    "line 5: /routes/0/transports/1: route \"routes[0]\" names transport \"ghost\", which is not defined under \"transports\" — define it or fix the name" },
  { "bad-secret-reference",
    "{\"transports\": {\"a\": {\"plugin\": \"maildir\", \"options\": {\"password\": \"env:PMX_TEST_SURELY_UNSET\"}}},\n \"default\": \"a\"}",
    "/transports/a/options/password: secret \"env:PMX_TEST_SURELY_UNSET\": environment variable PMX_TEST_SURELY_UNSET is not set — export it in the service's environment" },
  { "bad-duration",
    "{\"transports\": {\"a\": {\"plugin\": \"maildir\"}},\n \"default\": \"a\",\n \"retry\": {\"max_age\": \"5 days\"}}",
    "line 3: /retry/max_age: expected a string matching \"^[0-9]+(ms|s|m|h|d|w)$\", found \"5 days\" (pattern)" },
  { "unknown-preset",
    "{\"transports\": {\"a\": {\"preset\": \"hotmale\"}},\n \"default\": \"a\"}",
    "line 1: /transports/a: unknown preset \"hotmale\" — known presets: 163, aliyun, gmail, gmail-oauth, icloud, office365, office365-oauth, outlook, qq, sendgrid, yahoo, zoho" },
};

/* /config/invalid/<name> - each invalid config gives its specific message */
static void
test_invalid (gconstpointer data)
{
  const InvalidCase *c = data;
  g_autoptr(GError) error = NULL;
  g_autoptr(GPtrArray) problems = NULL;
  g_autoptr(PmxConfig) config = pmx_config_load_data (c->json, "bad.json", &problems, &error);

  g_assert_null (config);
  g_assert_error (error, PMX_CONFIG_ERROR, PMX_CONFIG_ERROR_INVALID);
  g_assert_nonnull (problems);
  g_assert_cmpuint (problems->len, ==, 1);
  g_assert_cmpstr (g_ptr_array_index (problems, 0), ==, c->expected);
  g_assert_true (g_str_has_prefix (error->message, "bad.json: 1 problem:\n  "));
}

/* /config/invalid/not-json - a parse error names the line */
static void
test_not_json (void)
{
  g_autoptr(GError) error = NULL;
  g_autoptr(PmxConfig) config = pmx_config_load_data ("{\n \"default\": \"a\",\n \"transports\": {,}\n}", "broken.json", NULL, &error);

  g_assert_null (config);
  g_assert_error (error, PMX_CONFIG_ERROR, PMX_CONFIG_ERROR_PARSE);
  g_assert_nonnull (strstr (error->message, "broken.json"));
  g_assert_nonnull (strstr (error->message, "3"));
}

/* /config/invalid/unreadable - a missing file says which file */
static void
test_unreadable (void)
{
  g_autoptr(GError) error = NULL;
  g_autoptr(PmxConfig) config = pmx_config_load_file ("/nonexistent/postmux.json", NULL, &error);

  g_assert_null (config);
  g_assert_error (error, PMX_CONFIG_ERROR, PMX_CONFIG_ERROR_READ);
  g_assert_nonnull (strstr (error->message, "/nonexistent/postmux.json"));
}

/* /config/secrets/file - file: references resolve, and unsafe files are refused */
static void
test_secret_file (void)
{
  g_autofree char *dir = g_dir_make_tmp ("pmx-config-XXXXXX", NULL);
  g_autofree char *path = g_build_filename (dir, "secret", NULL);
  g_autofree char *json = g_strdup_printf ("{\"transports\": {\"a\": {\"plugin\": \"maildir\", \"options\": {\"password\": \"file:%s\"}}}, \"default\": \"a\"}", path);
  g_autoptr(GError) error = NULL;
  g_autoptr(PmxConfig) ok = NULL;
  g_autoptr(PmxConfig) bad = NULL;
  g_autoptr(GPtrArray) problems = NULL;
  g_autofree char *expected = NULL;

  g_assert_true (g_file_set_contents_full (path, "hunter2\n", -1, G_FILE_SET_CONTENTS_NONE, 0600, NULL));
  ok = pmx_config_load_data (json, "s.json", NULL, &error);
  g_assert_no_error (error);
  g_assert_nonnull (ok);

  g_assert_cmpint (g_chmod (path, 0644), ==, 0);
  bad = pmx_config_load_data (json, "s.json", &problems, &error);
  g_assert_null (bad);
  g_assert_error (error, PMX_CONFIG_ERROR, PMX_CONFIG_ERROR_INVALID);
  expected = g_strdup_printf ("/transports/a/options/password: secret \"file:%s\": %s is readable by group or others (mode 0644) — run chmod 600 %s",
                              path, path, path);
  g_assert_cmpstr (g_ptr_array_index (problems, 0), ==, expected);
  /* The secret itself never appears. */
  g_assert_null (strstr (error->message, "hunter2"));
  g_unlink (path);
  g_rmdir (dir);
}

/* /config/duration/parse - units and rejects */
static void
test_duration (void)
{
  gint64 v = 0;

  g_assert_true (pmx_duration_parse_string ("500ms", &v));
  g_assert_cmpint (v, ==, 500000);
  g_assert_true (pmx_duration_parse_string ("5m", &v));
  g_assert_cmpint (v, ==, 300 * PMX_USEC_PER_SEC);
  g_assert_true (pmx_duration_parse_string ("1w", &v));
  g_assert_cmpint (v, ==, 7 * 86400 * PMX_USEC_PER_SEC);
  g_assert_false (pmx_duration_parse_string ("5", &v));
  g_assert_false (pmx_duration_parse_string ("5 m", &v));
  g_assert_false (pmx_duration_parse_string ("-5s", &v));
  g_assert_false (pmx_duration_parse_string ("99999999999999999999d", &v));
}

int
main (int    argc,
      char **argv)
{
  g_test_init (&argc, &argv, NULL);
  g_test_add_func ("/config/load/valid", test_load_valid);
  g_test_add_func ("/config/load/defaults", test_load_defaults);
  g_test_add_func ("/config/default/maildir", test_embedded_default);
  for (gsize i = 0; i < G_N_ELEMENTS (invalid_cases); i++)
    {
      g_autofree char *path = g_strdup_printf ("/config/invalid/%s", invalid_cases[i].name);

      g_test_add_data_func (path, &invalid_cases[i], test_invalid);
    }
  g_test_add_func ("/config/invalid/not-json", test_not_json);
  g_test_add_func ("/config/invalid/unreadable", test_unreadable);
  g_test_add_func ("/config/secrets/file", test_secret_file);
  g_test_add_func ("/config/duration/parse", test_duration);
  return g_test_run ();
}

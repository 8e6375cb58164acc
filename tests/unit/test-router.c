/* SPDX-License-Identifier: GPL-3.0-or-later */
/*
 * test-router.c - route matching, strategies and header lookup.
 */
#include "pmx-router.h"

static const char routes_config[] =
  "{\"state_dir\": \"/tmp/x\",\n"
  " \"transports\": {\"main\": {\"plugin\": \"maildir\"}, \"a\": {\"plugin\": \"maildir\"},\n"
  "                  \"b\": {\"plugin\": \"maildir\"}, \"c\": {\"plugin\": \"maildir\"}},\n"
  " \"default\": \"main\",\n"
  " \"routes\": [\n"
  "  {\"name\": \"ceo\", \"match\": {\"sender\": [\"CEO@corp.example\"]}, \"transports\": [\"c\"]},\n"
  "  {\"name\": \"internal\", \"match\": {\"recipient_domain\": [\"corp.example\", \"corp.test\"]}, \"transports\": [\"a\", \"b\"]},\n"
  "  {\"name\": \"app\", \"match\": {\"ingress\": [\"smtp:printer\"], \"sender_domain\": [\"corp.example\"]}, \"transports\": [\"b\"]},\n"
  "  {\"name\": \"bulk\", \"match\": {\"header\": {\"name\": \"X-Postmux-Route\", \"value\": \"bulk\"}}, \"transports\": [\"a\", \"b\", \"c\"], \"strategy\": \"round_robin\"}\n"
  " ]}";

static PmxConfig *
load (void)
{
  g_autoptr(GError) error = NULL;
  PmxConfig *config = pmx_config_load_data (routes_config, "routes.json", NULL, &error);

  g_assert_no_error (error);
  return config;
}

/* decide - run the router on a simple input */
static void
decide (PmxRouter        *router,
        const char       *sender,
        const char       *rcpts,
        const char       *ingress,
        const char       *message,
        const char       *hint,
        PmxRouteDecision *out)
{
  g_auto(GStrv) list = g_strsplit (rcpts, ",", -1);
  g_autoptr(GBytes) data = g_bytes_new (message, strlen (message));
  PmxRouteInput in = { sender, (const char *const *) list, g_strv_length (list), ingress, data, hint };

  pmx_router_decide (router, &in, out);
}

/* /router/match/criteria - first matching route wins; all criteria must hold */
static void
test_match (void)
{
  g_autoptr(PmxConfig) config = load ();
  g_autoptr(PmxRouter) router = pmx_router_new (config);
  PmxRouteDecision d;
  const char *msg = "Subject: hi\r\n\r\nbody\r\n";

  decide (router, "ceo@CORP.example", "x@elsewhere.test", "local", msg, NULL, &d);
  g_assert_cmpstr (d.route, ==, "ceo");
  g_assert_cmpstr (d.transport, ==, "c");
  g_assert_null (d.failover);

  decide (router, "u@other.test", "x@corp.example,y@Corp.Test", "local", msg, NULL, &d);
  g_assert_cmpstr (d.route, ==, "internal");
  g_assert_cmpstr (d.transport, ==, "a");
  g_assert_cmpstr (d.failover, ==, "b");

  /* One recipient outside the domains: the internal route does not match. */
  decide (router, "u@other.test", "x@corp.example,z@outside.test", "local", msg, NULL, &d);
  g_assert_cmpstr (d.route, ==, "default");
  g_assert_cmpstr (d.transport, ==, "main");

  /* ingress and sender_domain must both hold. */
  decide (router, "dev@corp.example", "z@outside.test", "smtp:printer", msg, NULL, &d);
  g_assert_cmpstr (d.route, ==, "app");
  decide (router, "dev@corp.example", "z@outside.test", "smtp:laptop", msg, NULL, &d);
  g_assert_cmpstr (d.route, ==, "default");
}

/* /router/failover/hint - the failover hint picks the next transport */
static void
test_failover_hint (void)
{
  g_autoptr(PmxConfig) config = load ();
  g_autoptr(PmxRouter) router = pmx_router_new (config);
  PmxRouteDecision d;

  decide (router, "u@other.test", "x@corp.example", "local", "\r\n", "b", &d);
  g_assert_cmpstr (d.transport, ==, "b");
  g_assert_null (d.failover);
  /* A hint that is not in the route is ignored. */
  decide (router, "u@other.test", "x@corp.example", "local", "\r\n", "c", &d);
  g_assert_cmpstr (d.transport, ==, "a");
}

/* /router/round-robin/rotates - successive messages rotate over the list */
static void
test_round_robin (void)
{
  g_autoptr(PmxConfig) config = load ();
  g_autoptr(PmxRouter) router = pmx_router_new (config);
  const char *msg = "Subject: x\r\nX-Postmux-Route:\r\n  BULK\r\n\r\nX-Postmux-Route: no\r\n";
  const char *expected[] = { "a", "b", "c", "a" };
  const char *failover[] = { "b", "c", "a", "b" };
  PmxRouteDecision d;

  for (guint i = 0; i < G_N_ELEMENTS (expected); i++)
    {
      decide (router, "n@news.test", "r@x.test", "api:k", msg, NULL, &d);
      g_assert_cmpstr (d.route, ==, "bulk");
      g_assert_cmpstr (d.transport, ==, expected[i]);
      g_assert_cmpstr (d.failover, ==, failover[i]);
    }
  /* Failed over once already: no second immediate failover. */
  decide (router, "n@news.test", "r@x.test", "api:k", msg, "c", &d);
  g_assert_cmpstr (d.transport, ==, "c");
  g_assert_null (d.failover);
}

/* /router/header/lookup - unfolding, case, end of header block */
static void
test_header (void)
{
  const char *msg = "From: a@x\r\nsubject: one\r\n two\r\n\tthree\r\nX-Empty:\r\n\r\nX-Body: not a header\r\n";
  g_autoptr(GBytes) data = g_bytes_new (msg, strlen (msg));
  g_autofree char *subject = pmx_message_dup_header (data, "Subject");
  g_autofree char *empty = pmx_message_dup_header (data, "X-Empty");
  g_autofree char *body = pmx_message_dup_header (data, "X-Body");
  g_autofree char *prefix = pmx_message_dup_header (data, "Fro");

  g_assert_cmpstr (subject, ==, "one  two \tthree");
  g_assert_cmpstr (empty, ==, "");
  g_assert_null (body);
  g_assert_null (prefix);
}

int
main (int    argc,
      char **argv)
{
  g_test_init (&argc, &argv, NULL);
  g_test_add_func ("/router/match/criteria", test_match);
  g_test_add_func ("/router/failover/hint", test_failover_hint);
  g_test_add_func ("/router/round-robin/rotates", test_round_robin);
  g_test_add_func ("/router/header/lookup", test_header);
  return g_test_run ();
}

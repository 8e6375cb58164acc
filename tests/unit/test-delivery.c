/* SPDX-License-Identifier: GPL-3.0-or-later */
/*
 * test-delivery.c - the retry schedule.
 */
#include "pmx-delivery.h"
#include "pmx-duration.h"

/* /delivery/backoff/postfix-like - 5m, 10m, 20m, 40m, then capped at 1h */
static void
test_backoff (void)
{
  PmxRetryConfig retry = { 300 * PMX_USEC_PER_SEC, 2.0, 3600 * PMX_USEC_PER_SEC, 0.0, 5 * 86400 * PMX_USEC_PER_SEC };
  const gint64 expected[] = { 300, 600, 1200, 2400, 3600, 3600, 3600 };

  for (guint i = 0; i < G_N_ELEMENTS (expected); i++)
    g_assert_cmpint (pmx_delivery_backoff (&retry, i + 1), ==, expected[i] * PMX_USEC_PER_SEC);
  /* Thousands of attempts do not overflow. */
  g_assert_cmpint (pmx_delivery_backoff (&retry, 100000), ==, 3600 * PMX_USEC_PER_SEC);
}

/* /delivery/backoff/multiplier - a multiplier of 3 from 1s */
static void
test_backoff_multiplier (void)
{
  PmxRetryConfig retry = { PMX_USEC_PER_SEC, 3.0, 60 * PMX_USEC_PER_SEC, 0.0, 86400 * PMX_USEC_PER_SEC };

  g_assert_cmpint (pmx_delivery_backoff (&retry, 1), ==, 1 * PMX_USEC_PER_SEC);
  g_assert_cmpint (pmx_delivery_backoff (&retry, 2), ==, 3 * PMX_USEC_PER_SEC);
  g_assert_cmpint (pmx_delivery_backoff (&retry, 3), ==, 9 * PMX_USEC_PER_SEC);
  g_assert_cmpint (pmx_delivery_backoff (&retry, 5), ==, 60 * PMX_USEC_PER_SEC);
}

int
main (int    argc,
      char **argv)
{
  g_test_init (&argc, &argv, NULL);
  g_test_add_func ("/delivery/backoff/postfix-like", test_backoff);
  g_test_add_func ("/delivery/backoff/multiplier", test_backoff_multiplier);
  return g_test_run ();
}

/* SPDX-License-Identifier: GPL-3.0-or-later */
/*
 * fuzz-config.c - libFuzzer target for the config loader: JSON parsing
 * with line tracking, the draft-07 validator on the config schema, presets
 * and the cross-checks.
 *
 * Invariant checked on every input: the loader either returns a config and
 * no error, or no config, an error, and at least one problem; every
 * problem is one line.  Secret references are resolved against the real
 * environment and file system, which pmx_secret_resolve() bounds (regular
 * files only, size-capped).  Fails by aborting, which the fuzzer reports.
 */
#include "pmx-config.h"

#include <stdint.h>
#include <string.h>

int LLVMFuzzerTestOneInput (const uint8_t *data, size_t size);

int
LLVMFuzzerTestOneInput (const uint8_t *data,
                        size_t         size)
{
  g_autofree char *text = g_strndup ((const char *) data, size);
  g_autoptr(GPtrArray) problems = NULL;
  g_autoptr(GError) error = NULL;
  g_autoptr(PmxConfig) config = pmx_config_load_data (text, "fuzz.json", &problems, &error);

  if (config != NULL)
    {
      g_assert_no_error (error);
      g_assert_nonnull (config->default_transport);
      g_assert_nonnull (pmx_config_get_transport (config, config->default_transport));
    }
  else
    {
      g_assert_nonnull (error);
      g_assert_nonnull (problems);
      g_assert_cmpuint (problems->len, >, 0);
      for (guint i = 0; i < problems->len; i++)
        g_assert_null (strchr (g_ptr_array_index (problems, i), '\n'));
    }
  return 0;
}

/* SPDX-License-Identifier: GPL-3.0-or-later */
/*
 * pmx-cmd-config.c - `postmux config check`: every problem of a config,
 * including each transport's options against its plugin's schema;
 * `postmux config schema`: the schemas themselves.
 */
#include "pmx-cmd.h"

#include "pmx-control.h"
#include "pmx-instance.h"
#include "postmux-resources.h"

#include <stdio.h>
#include <string.h>

/* config_schema - `postmux config schema [--transport NAME]`: print the
 * config's JSON Schema, or one transport plugin's options schema, so
 * editors, generators and the documentation use the schema the binary
 * and its plugins really apply. */
static int
config_schema (PmxCmdCommon *common,
               const char   *transport)
{
  if (transport == NULL)
    {
      g_autoptr(GBytes) bytes = g_resource_lookup_data (postmux_get_resource (), "/dev/postmux/postmux.schema.json",
                                                        G_RESOURCE_LOOKUP_FLAGS_NONE, NULL);
      gsize len = 0;
      const char *data = g_bytes_get_data (bytes, &len);

      g_assert (bytes != NULL);
      fwrite (data, 1, len, stdout);
      return 0;
    }
  else
    {
      g_autoptr(GError) error = NULL;
      g_autoptr(PmxPluginLoader) loader = NULL;
      g_auto(GStrv) dirs = pmx_cmd_plugin_dirs (common, NULL);
      PmxPlugin *plugin;
      const char *schema;

      loader = pmx_plugin_loader_new ((const char *const *) dirs);
      plugin = pmx_plugin_loader_load (loader, transport, &error);
      if (plugin == NULL)
        {
          g_printerr ("postmux config schema: %s\n", error->message);
          return 1;
        }
      schema = pmx_plugin_get_desc (plugin)->options_schema;
      printf ("%s\n", schema != NULL ? schema : "{}");
      return 0;
    }
}

int
pmx_cmd_config (int    argc,
                char **argv)
{
  g_auto(PmxCmdCommon) common = { 0, };
  g_autoptr(GError) error = NULL;
  g_autoptr(GPtrArray) problems = NULL;
  g_autoptr(PmxConfig) config = NULL;
  g_autoptr(PmxPluginLoader) loader = NULL;
  g_auto(GStrv) dirs = NULL;
  g_autofree char *transport = NULL;
  const char *origin;
  const GOptionEntry entries[] = {
    { "transport", 't', 0, G_OPTION_ARG_STRING, &transport,
      "With schema: print this transport plugin's options schema instead", "PLUGIN" },
    { NULL, 0, 0, 0, NULL, NULL, NULL },
  };

  if (!pmx_cmd_parse ("config", "check|schema",
                      "check: checks a config file and prints every problem; exits 1 if there is any.\n"
                      "schema: prints the config's JSON Schema, or with --transport a plugin's options schema.",
                      entries, pmx_cmd_common_entries (&common), &argc, &argv))
    return 2;
  if (argc == 2 && strcmp (argv[1], "schema") == 0)
    return config_schema (&common, transport);
  if (argc != 2 || strcmp (argv[1], "check") != 0 || transport != NULL)
    {
      g_printerr ("postmux config: use `postmux config check [--config FILE]` or "
                  "`postmux config schema [--transport PLUGIN]`\n");
      return 2;
    }

  origin = pmx_cmd_config_path (&common);
  config = origin != NULL ? pmx_config_load_file_for_check (origin, &problems, &error)
                          : pmx_config_new_default (NULL);
  if (config != NULL)
    {
      dirs = pmx_cmd_plugin_dirs (&common, config);
      loader = pmx_plugin_loader_new ((const char *const *) dirs);
      if (problems == NULL)
        problems = g_ptr_array_new_with_free_func (g_free);
      for (guint i = 0; i < config->transports->len; i++)
        (void) pmx_instance_check (loader, config, g_ptr_array_index (config->transports, i), problems);
    }
  if (problems != NULL && problems->len > 0)
    {
      printf ("%s: %u problem%s\n", origin != NULL ? origin : "config", problems->len, problems->len == 1 ? "" : "s");
      for (guint i = 0; i < problems->len; i++)
        printf ("  %s\n", (char *) g_ptr_array_index (problems, i));
      return 1;
    }
  if (config == NULL)
    {
      printf ("%s\n", error->message);
      return 1;
    }
  g_assert (config != NULL);
  printf ("%s: OK — %u transport%s, %u route%s, default transport %s\n",
          origin != NULL ? origin : "built-in default config",
          config->transports->len, config->transports->len == 1 ? "" : "s",
          config->routes->len, config->routes->len == 1 ? "" : "s", config->default_transport);
  return 0;
}

int
pmx_cmd_reload (int    argc,
                char **argv)
{
  g_auto(PmxCmdCommon) common = { 0, };
  g_autoptr(GError) error = NULL;
  g_autoptr(PmxConfig) config = NULL;
  g_autofree char *socket_path = NULL;
  g_autofree char *answer = NULL;

  if (!pmx_cmd_parse ("reload", NULL,
                      "Makes the running daemon re-read its config file, like SIGHUP, and\n"
                      "reports whether it took it: an invalid config is refused and the running one stays.",
                      NULL, pmx_cmd_common_entries (&common), &argc, &argv))
    return 2;
  /* Only the state dir is needed here; the daemon judges the config. */
  config = pmx_cmd_load_paths (&common, &error);
  if (config == NULL)
    {
      g_printerr ("postmux reload: %s\n", error->message);
      return 1;
    }
  socket_path = pmx_config_dup_socket_path (config);
  answer = pmx_control_call (socket_path, "reload", &error);
  if (answer == NULL)
    {
      g_printerr ("postmux reload: %s\n", error->message);
      return 1;
    }
  printf ("reloaded\n");
  return 0;
}

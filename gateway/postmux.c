/* SPDX-License-Identifier: GPL-3.0-or-later */
/*
 * postmux.c - the `postmux` command: subcommand dispatch and the helpers
 * they share.
 */
#include "pmx-cmd.h"

#include "pmx-log.h"
#include "pmx-mime.h"

#include <locale.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>

static const struct {
  const char *name;
  int       (*run) (int argc, char **argv);
  const char *summary;
} commands[] = {
  { "serve", pmx_cmd_serve, "run the gateway: queue, delivery workers, control socket" },
  { "send", pmx_cmd_send, "queue one message (from a file, stdin, or --subject/--body)" },
  { "queue", pmx_cmd_queue, "list, show, retry or delete queued messages" },
  { "config", pmx_cmd_config, "check a config file: postmux config check [--config F]" },
  { "doctor", pmx_cmd_doctor, "check one transport: DNS, connection, TLS, login, token" },
  { "auth", pmx_cmd_auth, "OAuth2 credentials: login TRANSPORT (browser or --device), status, logout TRANSPORT" },
  { "reload", pmx_cmd_reload, "make the running daemon re-read its config (like SIGHUP)" },
  { "passwd", pmx_cmd_passwd, "hash a password for auth.smtp_users, or make an API key (--api-key)" },
  { "sendmail", pmx_cmd_sendmail, "sendmail-compatible: queue a message from stdin (-t, -f, -F, -i)" },
};

const GOptionEntry *
pmx_cmd_common_entries (PmxCmdCommon *common)
{
  static GOptionEntry entries[3];

  entries[0] = (GOptionEntry) { "config", 'c', 0, G_OPTION_ARG_FILENAME, &common->config_path,
                                "Config file (default: $POSTMUX_CONFIG, /etc/postmux/postmux.json, or the built-in default)", "FILE" };
  entries[1] = (GOptionEntry) { "plugin-dir", 0, 0, G_OPTION_ARG_FILENAME_ARRAY, &common->plugin_dirs,
                                "Look for transport plugins here first (repeatable)", "DIR" };
  entries[2] = (GOptionEntry) { NULL, 0, 0, 0, NULL, NULL, NULL };
  return entries;
}

void
pmx_cmd_common_clear (PmxCmdCommon *common)
{
  g_clear_pointer (&common->config_path, g_free);
  g_clear_pointer (&common->plugin_dirs, g_strfreev);
}

const char *
pmx_cmd_config_path (PmxCmdCommon *common)
{
  const char *path = common->config_path;

  if (path == NULL)
    path = g_getenv ("POSTMUX_CONFIG");
  if (path == NULL && g_file_test ("/etc/postmux/postmux.json", G_FILE_TEST_EXISTS))
    path = "/etc/postmux/postmux.json";
  return path != NULL && path[0] != '\0' ? path : NULL;
}

PmxConfig *
pmx_cmd_load_config (PmxCmdCommon *common,
                     GPtrArray   **out_problems,
                     GError      **error)
{
  const char *path = pmx_cmd_config_path (common);

  if (path == NULL)
    return pmx_config_new_default (NULL);
  return pmx_config_load_file (path, out_problems, error);
}

PmxConfig *
pmx_cmd_load_paths (PmxCmdCommon *common,
                    GError      **error)
{
  const char *path = pmx_cmd_config_path (common);
  g_autoptr(GError) local_error = NULL;
  PmxConfig *config;

  if (path == NULL)
    return pmx_config_new_default (NULL);
  config = pmx_config_load_file_for_check (path, NULL, &local_error);
  if (config == NULL)
    g_propagate_error (error, g_steal_pointer (&local_error));
  return config;
}

char **
pmx_cmd_plugin_dirs (PmxCmdCommon *common,
                     PmxConfig    *config)
{
  g_autoptr(GStrvBuilder) b = g_strv_builder_new ();
  const char *env = g_getenv ("POSTMUX_PLUGIN_PATH");

  if (common->plugin_dirs != NULL)
    g_strv_builder_addv (b, (const char **) common->plugin_dirs);
  if (env != NULL && env[0] != '\0')
    {
      g_auto(GStrv) parts = g_strsplit (env, G_SEARCHPATH_SEPARATOR_S, -1);

      for (guint i = 0; parts[i] != NULL; i++)
        if (parts[i][0] != '\0')
          g_strv_builder_add (b, parts[i]);
    }
  if (config != NULL && config->plugin_path != NULL)
    g_strv_builder_addv (b, (const char **) config->plugin_path);
  g_strv_builder_add (b, PMX_PLUGINDIR);
  return g_strv_builder_end (b);
}

gboolean
pmx_cmd_parse (const char         *name,
               const char         *parameter,
               const char         *summary,
               const GOptionEntry *entries,
               const GOptionEntry *common_entries,
               int                *argc,
               char             ***argv)
{
  g_autoptr(GOptionContext) ctx = g_option_context_new (parameter);
  g_autoptr(GError) error = NULL;

  g_option_context_set_summary (ctx, summary);
  if (entries != NULL)
    g_option_context_add_main_entries (ctx, entries, NULL);
  if (common_entries != NULL)
    g_option_context_add_main_entries (ctx, common_entries, NULL);
  if (!g_option_context_parse (ctx, argc, argv, &error))
    {
      g_printerr ("postmux %s: %s (see postmux %s --help)\n", name, error->message, name);
      return FALSE;
    }
  return TRUE;
}

/* usage - the top-level help */
static void
usage (FILE *out)
{
  fprintf (out, "Usage: postmux COMMAND [OPTIONS]\n\nCommands:\n");
  for (gsize i = 0; i < G_N_ELEMENTS (commands); i++)
    fprintf (out, "  %-8s %s\n", commands[i].name, commands[i].summary);
  fprintf (out, "  %-8s %s\n", "version", "print the version and the plugin ABI");
  fprintf (out, "\nRun `postmux COMMAND --help` for the options of a command.\n");
}

int
main (int    argc,
      char **argv)
{
  setlocale (LC_ALL, "");
  /* A peer that closes a socket must give EPIPE, not kill a worker. */
  signal (SIGPIPE, SIG_IGN);
  pmx_log_init (PMX_LOG_TEXT, "info");
  /* Before any thread or plugin: the HTTP API and MIME-reading transports
   * share GMime, whose initialisation is not thread-safe. */
  pmx_mime_init ();

  /* Installed as (or linked to) "sendmail": behave as `postmux sendmail`. */
  {
    g_autofree char *base = g_path_get_basename (argv[0]);

    if (strcmp (base, "sendmail") == 0)
      {
        g_set_prgname ("sendmail");
        return pmx_cmd_sendmail (argc, argv);
      }
  }

  if (argc < 2 || strcmp (argv[1], "--help") == 0 || strcmp (argv[1], "-h") == 0 || strcmp (argv[1], "help") == 0)
    {
      usage (argc < 2 ? stderr : stdout);
      return argc < 2 ? 2 : 0;
    }
  if (strcmp (argv[1], "version") == 0 || strcmp (argv[1], "--version") == 0)
    {
      printf ("postmux %s (plugin ABI %d.%d)\n", PMX_VERSION, PMX_ABI_MAJOR, PMX_ABI_MINOR);
      return 0;
    }
  for (gsize i = 0; i < G_N_ELEMENTS (commands); i++)
    if (strcmp (argv[1], commands[i].name) == 0)
      {
        g_autofree char *prgname = g_strconcat ("postmux ", commands[i].name, NULL);

        g_set_prgname (prgname);
        return commands[i].run (argc - 1, argv + 1);
      }

  fprintf (stderr, "postmux: unknown command \"%s\"\n\n", argv[1]);
  usage (stderr);
  return 2;
}

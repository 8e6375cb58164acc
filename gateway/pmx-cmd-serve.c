/* SPDX-License-Identifier: GPL-3.0-or-later */
/*
 * pmx-cmd-serve.c - `postmux serve`: run the gateway in the foreground.
 *
 * Start-up refuses to run on a config that does not load, or whose used
 * transports cannot be built; a broken plugin nothing uses is a warning.
 * SIGHUP re-reads the config: an invalid one is refused and the running
 * one stays.  SIGTERM/SIGINT stop taking work, let in-flight sends finish
 * up to shutdown_timeout, leave the rest queued, and exit 0.
 */
#include "pmx-cmd.h"

#include "pmx-control.h"
#include "pmx-delivery.h"
#include "pmx-httpd.h"
#include "pmx-duration.h"
#include "pmx-instance.h"
#include "pmx-log.h"
#include "pmx-queue.h"
#include "pmx-smtpd.h"

#include <glib-unix.h>
#include <glib/gstdio.h>
#include <string.h>

typedef struct {
  PmxCmdCommon     common;
  GMainLoop       *loop;
  PmxConfig       *config;
  PmxPluginLoader *loader;
  PmxQueue        *queue;
  PmxDelivery     *delivery;
  PmxControl      *control;
  PmxHttpd        *httpd;     /* NULL unless listen.http is configured */
  PmxSmtpd        *smtpd;     /* NULL unless listen.smtp is configured */
} Serve;

/* serve_used - is transport @name the default or in any route */
static gboolean
serve_used (PmxConfig  *config,
            const char *name)
{
  if (g_strcmp0 (config->default_transport, name) == 0)
    return TRUE;
  for (guint i = 0; i < config->routes->len; i++)
    {
      PmxRouteConfig *r = g_ptr_array_index (config->routes, i);

      if (g_strv_contains ((const char *const *) r->transports, name))
        return TRUE;
    }
  return FALSE;
}

/* serve_check_unused - warn about transports and plugins nothing uses
 * that would fail, and drop such transports from @config */
static void
serve_check_unused (Serve     *serve,
                    PmxConfig *config)
{
  g_autoptr(GPtrArray) failures = NULL;
  g_autoptr(GPtrArray) plugins = pmx_plugin_loader_scan (serve->loader, &failures);

  for (guint i = 0; failures != NULL && i < failures->len; i++)
    {
      GError *e = g_ptr_array_index (failures, i);

      pmx_log_warning (NULL, NULL, "plugin not usable (no transport uses it): %s", e->message);
    }
  for (guint i = 0; i < config->transports->len;)
    {
      PmxTransportConfig *tc = g_ptr_array_index (config->transports, i);
      g_autoptr(GPtrArray) problems = g_ptr_array_new_with_free_func (g_free);

      if (!serve_used (config, tc->name) && !pmx_instance_check (serve->loader, config, tc, problems))
        {
          for (guint j = 0; j < problems->len; j++)
            pmx_log_warning (NULL, tc->name, "transport \"%s\" is not used by any route and cannot be built: %s",
                             tc->name, (char *) g_ptr_array_index (problems, j));
          g_ptr_array_remove_index (config->transports, i);
        }
      else
        i++;
    }
}

/* serve_describe - one line naming the transports, for the log */
static char *
serve_describe (PmxConfig *config)
{
  GString *s = g_string_new (NULL);

  for (guint i = 0; i < config->transports->len; i++)
    {
      PmxTransportConfig *tc = g_ptr_array_index (config->transports, i);

      g_string_append_printf (s, "%s%s (%s, %u worker%s)", i > 0 ? ", " : "", tc->name, tc->plugin,
                              tc->concurrency, tc->concurrency == 1 ? "" : "s");
    }
  return g_string_free (s, FALSE);
}

/* serve_reload - SIGHUP and the control socket's "reload" */
static gboolean
serve_reload (gpointer user_data,
              GError **error)
{
  Serve *serve = user_data;
  g_autoptr(PmxConfig) config = NULL;
  g_autoptr(GError) local_error = NULL;
  g_autofree char *described = NULL;

  config = pmx_cmd_load_config (&serve->common, NULL, &local_error);
  if (config != NULL)
    {
      serve_check_unused (serve, config);
      if (!pmx_delivery_apply (serve->delivery, config, &local_error))
        g_clear_pointer (&config, pmx_config_unref);
    }
  if (config == NULL)
    {
      pmx_log_warning (NULL, NULL, "reload refused, the running config stays: %s", local_error->message);
      g_propagate_error (error, g_steal_pointer (&local_error));
      return FALSE;
    }
  described = serve_describe (config);
  pmx_log_info (NULL, NULL, "config reloaded: default transport %s; transports: %s",
                config->default_transport, described);
  pmx_log_set_level (config->log_level);
  pmx_log_set_format (g_strcmp0 (config->log_format, "json") == 0 ? PMX_LOG_JSON : PMX_LOG_TEXT);
  g_clear_pointer (&serve->config, pmx_config_unref);
  serve->config = g_steal_pointer (&config);
  if (serve->httpd != NULL)
    pmx_httpd_apply (serve->httpd, serve->config);
  return TRUE;
}

/* serve_on_hup - SIGHUP handler on the main loop */
static gboolean
serve_on_hup (gpointer user_data)
{
  (void) serve_reload (user_data, NULL);
  return G_SOURCE_CONTINUE;
}

/* serve_on_term - SIGTERM/SIGINT handler: leave the main loop */
static gboolean
serve_on_term (gpointer user_data)
{
  Serve *serve = user_data;

  pmx_log_info (NULL, NULL, "shutting down: no new messages taken; waiting for in-flight deliveries");
  g_main_loop_quit (serve->loop);
  return G_SOURCE_CONTINUE;
}

/* serve_wake - control socket hook */
static void
serve_wake (gpointer user_data)
{
  Serve *serve = user_data;

  pmx_delivery_wake (serve->delivery);
}

/* serve_transports - each transport's state, for the control socket and /v1/health */
static JsonNode *
serve_transports (gpointer user_data)
{
  Serve *serve = user_data;

  return pmx_delivery_dup_transport_states (serve->delivery);
}

/* serve_open - everything up to the main loop; FALSE with @error set */
static gboolean
serve_open (Serve   *serve,
            GError **error)
{
  static PmxControlHooks hooks = { serve_wake, serve_reload, serve_transports, NULL };
  g_autofree char *socket_path = NULL;
  g_autofree char *described = NULL;
  g_auto(GStrv) dirs = NULL;
  g_autoptr(GError) local_error = NULL;
  guint released;

  serve->config = pmx_cmd_load_config (&serve->common, NULL, error);
  if (serve->config == NULL)
    return FALSE;
  pmx_log_init (g_strcmp0 (serve->config->log_format, "json") == 0 ? PMX_LOG_JSON : PMX_LOG_TEXT,
                serve->config->log_level);

  if (g_mkdir_with_parents (serve->config->state_dir, 0700) != 0)
    {
      int saved = errno;

      g_set_error (error, G_IO_ERROR, g_io_error_from_errno (saved), "cannot create state_dir %s: %s",
                   serve->config->state_dir, g_strerror (saved));
      return FALSE;
    }

  dirs = pmx_cmd_plugin_dirs (&serve->common, serve->config);
  serve->loader = pmx_plugin_loader_new ((const char *const *) dirs);
  serve_check_unused (serve, serve->config);

  serve->queue = pmx_queue_open (serve->config->queue_path, error);
  if (serve->queue == NULL)
    return FALSE;
  released = pmx_queue_release_leases (serve->queue, serve->config->node_name, g_get_real_time (), &local_error);
  if (local_error != NULL)
    {
      g_propagate_error (error, g_steal_pointer (&local_error));
      return FALSE;
    }
  if (released > 0)
    pmx_log_info (NULL, NULL, "%u message%s in flight when postmux last stopped returned to the queue",
                  released, released == 1 ? "" : "s");

  serve->delivery = pmx_delivery_new (serve->queue, serve->loader, serve->config->node_name);
  if (!pmx_delivery_apply (serve->delivery, serve->config, error))
    {
      g_prefix_error (error, "cannot start: ");
      return FALSE;
    }

  socket_path = pmx_config_dup_socket_path (serve->config);
  hooks.user_data = serve;
  serve->control = pmx_control_new (socket_path, serve->queue, &hooks, error);
  if (serve->control == NULL)
    return FALSE;

  /* The HTTP API keeps its listeners; a reload hands it new API keys. */
  if (json_object_has_member (serve->config->root, "listen")
      && json_object_has_member (json_object_get_object_member (serve->config->root, "listen"), "http"))
    {
      serve->httpd = pmx_httpd_new (serve->config, serve->queue, serve_wake, serve, error);
      if (serve->httpd != NULL)
        pmx_httpd_set_transports_func (serve->httpd, serve_transports, serve);
      if (serve->httpd == NULL || !pmx_httpd_start (serve->httpd, error))
        return FALSE;
    }

  /* The SMTP listener keeps the settings it started with: a reload changes
   * routes and transports, not listen.smtp, tls, smtpd or auth. */
  if (json_object_has_member (serve->config->root, "listen")
      && json_object_has_member (json_object_get_object_member (serve->config->root, "listen"), "smtp"))
    {
      serve->smtpd = pmx_smtpd_new (serve->config, serve->queue, serve_wake, serve, error);
      if (serve->smtpd == NULL || !pmx_smtpd_start (serve->smtpd, error))
        return FALSE;
    }

  pmx_delivery_start (serve->delivery);
  described = serve_describe (serve->config);
  pmx_log_info (NULL, NULL, "postmux %s ready: config %s, queue %s, control socket %s; default transport %s; transports: %s",
                PMX_VERSION, serve->config->path != NULL ? serve->config->path : "(built-in default)",
                serve->config->queue_path, socket_path, serve->config->default_transport, described);
  return TRUE;
}

/* serve_close - stop taking work, drain, free; FALSE when deliveries were
 * still in flight at the shutdown timeout (they stay leased) */
static gboolean
serve_close (Serve *serve)
{
  guint left = 0;

  g_clear_pointer (&serve->control, pmx_control_free);
  g_clear_pointer (&serve->httpd, pmx_httpd_free);
  g_clear_pointer (&serve->smtpd, pmx_smtpd_free);
  if (serve->delivery != NULL)
    left = pmx_delivery_stop (serve->delivery, serve->config->shutdown_timeout);
  if (left > 0)
    {
      /* Their leases return them to the queue when postmux starts again;
       * workers still run, so nothing they use may be freed. */
      pmx_log_warning (NULL, NULL, "%u deliver%s still in flight after the shutdown timeout; they stay leased and are retried at the next start",
                       left, left == 1 ? "y" : "ies");
      return FALSE;
    }
  g_clear_pointer (&serve->delivery, pmx_delivery_free);
  g_clear_pointer (&serve->queue, pmx_queue_close);
  g_clear_pointer (&serve->loader, pmx_plugin_loader_free);
  g_clear_pointer (&serve->loop, g_main_loop_unref);
  g_clear_pointer (&serve->config, pmx_config_unref);
  pmx_cmd_common_clear (&serve->common);
  return TRUE;
}

int
pmx_cmd_serve (int    argc,
               char **argv)
{
  Serve serve = { 0 };
  g_autoptr(GError) error = NULL;
  guint sources[3];

  if (!pmx_cmd_parse ("serve", NULL,
                      "Runs the gateway in the foreground until SIGTERM; SIGHUP re-reads the config.",
                      NULL, pmx_cmd_common_entries (&serve.common), &argc, &argv))
    {
      pmx_cmd_common_clear (&serve.common);
      return 2;
    }
  if (!serve_open (&serve, &error))
    {
      g_printerr ("postmux serve: %s\n", error->message);
      (void) serve_close (&serve);
      return 1;
    }

  serve.loop = g_main_loop_new (NULL, FALSE);
  sources[0] = g_unix_signal_add (SIGTERM, serve_on_term, &serve);
  sources[1] = g_unix_signal_add (SIGINT, serve_on_term, &serve);
  sources[2] = g_unix_signal_add (SIGHUP, serve_on_hup, &serve);
  g_main_loop_run (serve.loop);
  for (guint i = 0; i < G_N_ELEMENTS (sources); i++)
    g_source_remove (sources[i]);

  if (serve_close (&serve))
    pmx_log_info (NULL, NULL, "stopped");
  return 0;
}

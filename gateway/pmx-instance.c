/* SPDX-License-Identifier: GPL-3.0-or-later */
/*
 * pmx-instance.c - build a transport instance from its config.
 *
 * Trusts the plugin loader for the plugin's safety and ABI; checks the
 * instance options against the plugin's own schema before create() sees
 * them, so a plugin only ever gets options its schema allows.
 */
#include "pmx-instance.h"

#include "pmx-schema.h"

struct _PmxInstance {
  gint          ref_count;
  char         *name;
  char         *plugin_name;
  char         *options_json;   /* canonical text, for reload comparison */
  guint         concurrency;
  PmxPlugin    *plugin;
  PmxTransport *transport;
};

/* instance_options_json - options as compact JSON text */
static char *
instance_options_json (JsonObject *options)
{
  g_autoptr(JsonNode) node = json_node_new (JSON_NODE_OBJECT);

  json_node_set_object (node, options);
  return json_to_string (node, FALSE);
}

/* instance_validate - check @tc's options against @plugin's schema */
static gboolean
instance_validate (PmxPlugin                *plugin,
                   PmxConfig                *config,
                   const PmxTransportConfig *tc,
                   GPtrArray                *problems,
                   GError                  **error)
{
  const PmxTransportDesc *desc = pmx_plugin_get_desc (plugin);
  g_autoptr(PmxSchema) schema = NULL;
  g_autoptr(JsonNode) node = json_node_new (JSON_NODE_OBJECT);
  g_autoptr(GPtrArray) found = NULL;
  g_autoptr(GString) joined = g_string_new (NULL);
  g_autoptr(GError) local_error = NULL;

  schema = pmx_schema_new_from_string (desc->options_schema, NULL, &local_error);
  if (schema == NULL)
    {
      g_set_error (error, PMX_PLUGIN_ERROR, PMX_PLUGIN_ERROR_BAD_SCHEMA,
                   "transport \"%s\": plugin %s carries an invalid options schema: %s",
                   tc->name, pmx_plugin_get_path (plugin), local_error->message);
      return FALSE;
    }
  json_node_set_object (node, tc->options);
  if (pmx_schema_validate (schema, node, NULL, &found, &local_error))
    return TRUE;
  if (found == NULL)
    {
      g_propagate_prefixed_error (error, g_steal_pointer (&local_error),
                                  "transport \"%s\": ", tc->name);
      return FALSE;
    }
  for (guint i = 0; i < found->len; i++)
    {
      PmxSchemaProblem *p = g_ptr_array_index (found, i);
      g_autofree char *pointer = g_strdup_printf ("/transports/%s/options%s", tc->name, p->pointer);
      int n = pmx_config_get_line (config, pointer);
      g_autofree char *where = n > 0 ? g_strdup_printf ("line %d: ", n) : g_strdup ("");
      g_autofree char *line = g_strdup_printf ("%s%s: %s (%s)", where, pointer, p->message, p->keyword);

      g_string_append_printf (joined, "\n  %s", line);
      if (problems != NULL)
        g_ptr_array_add (problems, g_steal_pointer (&line));
    }
  g_set_error (error, PMX_PLUGIN_ERROR, PMX_PLUGIN_ERROR_FAILED,
               "transport \"%s\": options do not fit the %s plugin:%s",
               tc->name, tc->plugin, joined->str);
  return FALSE;
}

gboolean
pmx_instance_check (PmxPluginLoader          *loader,
                    PmxConfig                *config,
                    const PmxTransportConfig *tc,
                    GPtrArray                *problems)
{
  g_autoptr(GError) error = NULL;
  PmxPlugin *plugin = pmx_plugin_loader_load (loader, tc->plugin, &error);

  if (plugin == NULL)
    {
      g_autofree char *pointer = g_strdup_printf ("/transports/%s/plugin", tc->name);
      int n = pmx_config_get_line (config, pointer);
      g_autofree char *where = n > 0 ? g_strdup_printf ("line %d: ", n) : g_strdup ("");

      g_ptr_array_add (problems, g_strdup_printf ("%s%s: %s", where, pointer, error->message));
      return FALSE;
    }
  return instance_validate (plugin, config, tc, problems, NULL);
}

PmxInstance *
pmx_instance_new (PmxPluginLoader          *loader,
                  PmxConfig                *config,
                  const PmxTransportConfig *tc,
                  GPtrArray                *problems,
                  GError                  **error)
{
  g_autoptr(GError) local_error = NULL;
  PmxPlugin *plugin;
  PmxTransport *transport;
  PmxTransportArgs args = { 0, };
  PmxInstance *instance;

  plugin = pmx_plugin_loader_load (loader, tc->plugin, &local_error);
  if (plugin == NULL)
    {
      g_propagate_prefixed_error (error, g_steal_pointer (&local_error),
                                  "transport \"%s\": ", tc->name);
      return NULL;
    }
  if (!instance_validate (plugin, config, tc, problems, error))
    return NULL;

  args.struct_size = sizeof args;
  args.instance_name = tc->name;
  args.options = tc->options;
  args.state_dir = config->state_dir;
  transport = pmx_plugin_create (plugin, &args, &local_error);
  if (transport == NULL)
    {
      g_propagate_prefixed_error (error, g_steal_pointer (&local_error),
                                  "transport \"%s\": ", tc->name);
      return NULL;
    }

  instance = g_new0 (PmxInstance, 1);
  instance->ref_count = 1;
  instance->name = g_strdup (tc->name);
  instance->plugin_name = g_strdup (tc->plugin);
  instance->options_json = instance_options_json (tc->options);
  instance->concurrency = tc->concurrency;
  instance->plugin = plugin;
  instance->transport = transport;
  return instance;
}

PmxInstance *
pmx_instance_ref (PmxInstance *instance)
{
  g_atomic_int_inc (&instance->ref_count);
  return instance;
}

void
pmx_instance_unref (PmxInstance *instance)
{
  if (instance == NULL || !g_atomic_int_dec_and_test (&instance->ref_count))
    return;
  pmx_plugin_get_desc (instance->plugin)->ops->destroy (instance->transport);
  g_free (instance->name);
  g_free (instance->plugin_name);
  g_free (instance->options_json);
  g_free (instance);
}

const char *
pmx_instance_get_name (PmxInstance *instance)
{
  return instance->name;
}

const PmxTransportOps *
pmx_instance_get_ops (PmxInstance *instance)
{
  return pmx_plugin_get_desc (instance->plugin)->ops;
}

PmxTransport *
pmx_instance_get_transport (PmxInstance *instance)
{
  return instance->transport;
}

guint
pmx_instance_get_concurrency (PmxInstance *instance)
{
  return instance->concurrency;
}

gboolean
pmx_instance_matches (PmxInstance              *instance,
                      const PmxTransportConfig *tc)
{
  g_autofree char *json = instance_options_json (tc->options);

  return g_strcmp0 (instance->name, tc->name) == 0
         && g_strcmp0 (instance->plugin_name, tc->plugin) == 0
         && instance->concurrency == tc->concurrency
         && g_strcmp0 (instance->options_json, json) == 0;
}

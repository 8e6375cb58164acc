/* SPDX-License-Identifier: GPL-3.0-or-later */
/*
 * pmx-config.c - load the JSON config, validate it, apply presets, and
 * cross-check names.
 *
 * The config schema and the presets are compiled into the binary (GResource)
 * so an installed and an uninstalled postmux judge a file the same way.
 * Every problem is collected, not just the first, and each names the line,
 * the JSON pointer and what to change.  Secrets are only checked for being
 * resolvable here; their values are never kept or printed.
 */
#include "pmx-config.h"

#include "pmx-duration.h"
#include "pmx-schema.h"
#include "postmux-resources.h"

#define PMX_COMPILATION
#include <postmux/postmux-secret.h>

#include <string.h>
#include <unistd.h>

G_DEFINE_QUARK (pmx-config-error-quark, pmx_config_error)

/* config_builtin_json - parse a JSON file compiled into the binary */
static JsonNode *
config_builtin_json (const char *name)
{
  g_autofree char *path = g_strconcat ("/dev/postmux/", name, NULL);
  g_autoptr(GBytes) bytes = g_resource_lookup_data (postmux_get_resource (), path, G_RESOURCE_LOOKUP_FLAGS_NONE, NULL);
  g_autoptr(JsonParser) parser = json_parser_new ();
  gsize len = 0;
  const char *data;

  g_assert (bytes != NULL);
  data = g_bytes_get_data (bytes, &len);
  if (!json_parser_load_from_data (parser, data, (gssize) len, NULL))
    g_error ("built-in %s is not JSON", name);
  return json_node_copy (json_parser_get_root (parser));
}

/* config_schema - the config schema, compiled once */
static PmxSchema *
config_schema (void)
{
  static gsize once;
  static PmxSchema *schema;

  if (g_once_init_enter (&once))
    {
      g_autoptr(JsonNode) node = config_builtin_json ("postmux.schema.json");
      g_autoptr(GError) error = NULL;
      PmxSchema *s = pmx_schema_new_from_node (node, NULL, &error);

      if (s == NULL)
        g_error ("built-in config schema: %s", error->message);
      schema = s;
      g_once_init_leave (&once, 1);
    }
  return schema;
}

/* config_presets - the presets file, parsed once (transfer none) */
static JsonObject *
config_presets (void)
{
  static gsize once;
  static JsonNode *presets;

  if (g_once_init_enter (&once))
    {
      presets = config_builtin_json ("presets.json");
      g_once_init_leave (&once, 1);
    }
  return json_node_get_object (presets);
}

/* transport_config_free - GDestroyNotify for PmxTransportConfig */
static void
transport_config_free (gpointer data)
{
  PmxTransportConfig *t = data;

  g_free (t->name);
  g_free (t->plugin);
  g_free (t->preset);
  g_clear_pointer (&t->options, json_object_unref);
  g_free (t);
}

/* route_config_free - GDestroyNotify for PmxRouteConfig */
static void
route_config_free (gpointer data)
{
  PmxRouteConfig *r = data;

  g_free (r->name);
  g_strfreev (r->senders);
  g_strfreev (r->sender_domains);
  g_strfreev (r->recipient_domains);
  g_strfreev (r->ingresses);
  g_free (r->header_name);
  g_free (r->header_value);
  g_strfreev (r->transports);
  g_free (r);
}

/* config_new - an empty config with the documented defaults */
static PmxConfig *
config_new (void)
{
  PmxConfig *config = g_new0 (PmxConfig, 1);

  config->ref_count = 1;
  config->transports = g_ptr_array_new_with_free_func (transport_config_free);
  config->routes = g_ptr_array_new_with_free_func (route_config_free);
  /* Close to Postfix: minimal_backoff_time 300s, doubling, capped near an
   * hour, maximal_queue_lifetime 5d. */
  config->retry.initial_delay = 300 * PMX_USEC_PER_SEC;
  config->retry.multiplier = 2.0;
  config->retry.max_delay = 3600 * PMX_USEC_PER_SEC;
  config->retry.jitter = 0.1;
  config->retry.max_age = 5 * 86400 * PMX_USEC_PER_SEC;
  config->retention = 7 * 86400 * PMX_USEC_PER_SEC;
  config->lease = 600 * PMX_USEC_PER_SEC;
  config->shutdown_timeout = 30 * PMX_USEC_PER_SEC;
  config->log_level = g_strdup ("info");
  config->log_format = g_strdup ("text");
  config->node_name = g_strdup (g_get_host_name ());
  config->root = json_object_new ();
  return config;
}

char *
pmx_config_default_state_dir (void)
{
  const char *env = g_getenv ("POSTMUX_STATE_DIR");

  if (env != NULL && env[0] != '\0')
    return g_strdup (env);
  if (geteuid () == 0)
    return g_strdup ("/var/lib/postmux");
  return g_build_filename (g_get_user_state_dir (), "postmux", NULL);
}

/* config_finish_paths - make queue_path absolute under state_dir */
static void
config_finish_paths (PmxConfig  *config,
                     const char *queue_path)
{
  if (config->state_dir == NULL)
    config->state_dir = pmx_config_default_state_dir ();
  if (queue_path == NULL)
    queue_path = "queue.db";
  config->queue_path = g_path_is_absolute (queue_path)
                         ? g_strdup (queue_path)
                         : g_build_filename (config->state_dir, queue_path, NULL);
}

PmxConfig *
pmx_config_new_default (const char *state_dir)
{
  PmxConfig *config = config_new ();
  PmxTransportConfig *t = g_new0 (PmxTransportConfig, 1);
  g_autofree char *maildir = NULL;

  config->state_dir = state_dir != NULL ? g_strdup (state_dir) : pmx_config_default_state_dir ();
  config_finish_paths (config, NULL);
  maildir = g_build_filename (config->state_dir, "Maildir", NULL);

  t->name = g_strdup ("local");
  t->plugin = g_strdup ("maildir");
  t->options = json_object_new ();
  json_object_set_string_member (t->options, "path", maildir);
  t->concurrency = 2;
  g_ptr_array_add (config->transports, t);
  config->default_transport = g_strdup ("local");
  return config;
}

PmxConfig *
pmx_config_ref (PmxConfig *config)
{
  g_return_val_if_fail (config != NULL, NULL);
  g_atomic_int_inc (&config->ref_count);
  return config;
}

void
pmx_config_unref (PmxConfig *config)
{
  if (config == NULL || !g_atomic_int_dec_and_test (&config->ref_count))
    return;
  g_free (config->path);
  g_free (config->state_dir);
  g_free (config->queue_path);
  g_free (config->node_name);
  g_strfreev (config->plugin_path);
  g_ptr_array_unref (config->transports);
  g_free (config->default_transport);
  g_ptr_array_unref (config->routes);
  g_free (config->log_level);
  g_free (config->log_format);
  g_clear_pointer (&config->root, json_object_unref);
  g_clear_pointer ((PmxJsonDocument **) &config->doc, pmx_json_document_free);
  g_free (config);
}

const PmxTransportConfig *
pmx_config_get_transport (PmxConfig  *config,
                          const char *name)
{
  for (guint i = 0; i < config->transports->len; i++)
    {
      PmxTransportConfig *t = g_ptr_array_index (config->transports, i);

      if (g_strcmp0 (t->name, name) == 0)
        return t;
    }
  return NULL;
}

int
pmx_config_get_line (PmxConfig  *config,
                     const char *pointer)
{
  g_autofree char *p = g_strdup (pointer);

  if (config->doc == NULL)
    return 0;
  for (;;)
    {
      int line = pmx_json_document_get_line (config->doc, p);
      char *slash;

      if (line > 0 || p[0] == '\0')
        return line;
      slash = strrchr (p, '/');
      *slash = '\0';
    }
}

char *
pmx_config_dup_socket_path (PmxConfig *config)
{
  return g_build_filename (config->state_dir, "postmux.sock", NULL);
}

/* config_problem - add "line N: pointer: text" to @problems */
static void
config_problem (GPtrArray       *problems,
                PmxJsonDocument *doc,
                const char      *pointer,
                const char      *format,
                ...) G_GNUC_PRINTF (4, 5);

static void
config_problem (GPtrArray       *problems,
                PmxJsonDocument *doc,
                const char      *pointer,
                const char      *format,
                ...)
{
  g_autofree char *text = NULL;
  int line = doc != NULL ? pmx_json_document_get_line (doc, pointer) : 0;
  va_list args;

  va_start (args, format);
  text = g_strdup_vprintf (format, args);
  va_end (args);
  if (line > 0)
    g_ptr_array_add (problems, g_strdup_printf ("line %d: %s: %s", line, pointer, text));
  else
    g_ptr_array_add (problems, g_strdup_printf ("%s: %s", pointer, text));
}

void
pmx_config_check_secrets (JsonObject *options,
                          const char *pointer,
                          GPtrArray  *problems)
{
  JsonObjectIter iter;
  const char *member;
  JsonNode *node;

  json_object_iter_init (&iter, options);
  while (json_object_iter_next (&iter, &member, &node))
    {
      g_autofree char *child = g_strconcat (pointer, "/", member, NULL);

      if (JSON_NODE_HOLDS_OBJECT (node))
        pmx_config_check_secrets (json_node_get_object (node), child, problems);
      else if (JSON_NODE_HOLDS_VALUE (node) && json_node_get_value_type (node) == G_TYPE_STRING
               && pmx_secret_is_reference (json_node_get_string (node)))
        {
          g_autoptr(GError) error = NULL;
          char *secret = pmx_secret_resolve (json_node_get_string (node), &error);

          if (secret == NULL)
            g_ptr_array_add (problems, g_strdup_printf ("%s: %s", child, error->message));
          pmx_secret_free (secret);
        }
    }
}

/* config_strv - a JSON array of strings as a lower-cased strv, or NULL */
static char **
config_strv (JsonObject *obj,
             const char *member,
             gboolean    lower)
{
  JsonArray *array;
  GStrvBuilder *builder;
  char **strv;

  if (obj == NULL || !json_object_has_member (obj, member))
    return NULL;
  array = json_object_get_array_member (obj, member);
  builder = g_strv_builder_new ();
  for (guint i = 0; i < json_array_get_length (array); i++)
    {
      const char *s = json_array_get_string_element (array, i);

      g_autofree char *down = lower ? g_ascii_strdown (s, -1) : NULL;

      g_strv_builder_add (builder, lower ? down : s);
    }
  strv = g_strv_builder_end (builder);
  g_strv_builder_unref (builder);
  return strv;
}

/* config_duration - read an optional duration member into *out */
static void
config_duration (JsonObject *obj,
                 const char *member,
                 gint64     *out)
{
  if (obj != NULL && json_object_has_member (obj, member))
    (void) pmx_duration_parse_node (json_object_get_member (obj, member), out);
}

/* config_merge - copy every member of @from over @into */
static void
config_merge (JsonObject *into,
              JsonObject *from)
{
  JsonObjectIter iter;
  const char *member;
  JsonNode *node;

  json_object_iter_init (&iter, from);
  while (json_object_iter_next (&iter, &member, &node))
    json_object_set_member (into, member, json_node_copy (node));
}

/* config_resolve_credential - a transport's options.credential that names
 * an entry of /credentials becomes a copy of that entry, named after it
 * (so every transport using it shares one token source and store) */
static void
config_resolve_credential (PmxTransportConfig *t,
                           JsonObject         *root,
                           PmxJsonDocument    *doc,
                           GPtrArray          *problems)
{
  JsonNode *node = json_object_get_member (t->options, "credential");
  JsonObject *credentials = json_object_has_member (root, "credentials")
                              ? json_object_get_object_member (root, "credentials") : NULL;
  g_autofree char *pointer = NULL;
  const char *name;
  JsonObject *copy;

  if (node == NULL || !JSON_NODE_HOLDS_VALUE (node) || json_node_get_value_type (node) != G_TYPE_STRING)
    return;
  name = json_node_get_string (node);
  if (credentials == NULL || !json_object_has_member (credentials, name))
    {
      pointer = g_strconcat ("/transports/", t->name, "/options/credential", NULL);
      config_problem (problems, doc, pointer,
                      "credential \"%s\" is not defined under credentials — define it there, or write the credential object here",
                      name);
      return;
    }
  copy = json_object_new ();
  config_merge (copy, json_object_get_object_member (credentials, name));
  if (!json_object_has_member (copy, "name"))
    json_object_set_string_member (copy, "name", name);
  json_object_set_object_member (t->options, "credential", copy);
}

/* config_read_transports - build PmxTransportConfig from /transports */
static void
config_read_transports (PmxConfig       *config,
                        JsonObject      *root,
                        PmxJsonDocument *doc,
                        GPtrArray       *problems)
{
  JsonObject *transports = json_object_get_object_member (root, "transports");
  JsonObjectIter iter;
  const char *name;
  JsonNode *node;

  json_object_iter_init (&iter, transports);
  while (json_object_iter_next (&iter, &name, &node))
    {
      JsonObject *obj = json_node_get_object (node);
      PmxTransportConfig *t = g_new0 (PmxTransportConfig, 1);
      g_autofree char *pointer = g_strconcat ("/transports/", name, NULL);

      t->name = g_strdup (name);
      t->options = json_object_new ();
      t->concurrency = json_object_has_member (obj, "concurrency")
                         ? (guint) json_object_get_int_member (obj, "concurrency") : 2;
      if (json_object_has_member (obj, "preset"))
        {
          const char *preset = json_object_get_string_member (obj, "preset");
          JsonObject *presets = config_presets ();

          t->preset = g_strdup (preset);
          if (!json_object_has_member (presets, preset))
            {
              GList *names = json_object_get_members (presets);
              GString *known = g_string_new (NULL);

              names = g_list_sort (names, (GCompareFunc) g_strcmp0);
              for (GList *l = names; l != NULL; l = l->next)
                g_string_append_printf (known, "%s%s", known->len > 0 ? ", " : "", (char *) l->data);
              config_problem (problems, doc, pointer,
                              "unknown preset \"%s\" — known presets: %s", preset, known->str);
              g_string_free (known, TRUE);
              g_list_free (names);
            }
          else
            {
              JsonObject *p = json_object_get_object_member (presets, preset);

              t->plugin = g_strdup (json_object_get_string_member (p, "plugin"));
              config_merge (t->options, json_object_get_object_member (p, "options"));
            }
        }
      if (json_object_has_member (obj, "plugin"))
        {
          const char *plugin = json_object_get_string_member (obj, "plugin");

          if (t->plugin != NULL && strcmp (t->plugin, plugin) != 0)
            config_problem (problems, doc, pointer,
                            "preset \"%s\" is for the %s plugin, but plugin says \"%s\" — drop one of them",
                            t->preset, t->plugin, plugin);
          g_free (t->plugin);
          t->plugin = g_strdup (plugin);
        }
      if (json_object_has_member (obj, "options"))
        config_merge (t->options, json_object_get_object_member (obj, "options"));
      config_resolve_credential (t, root, doc, problems);
      g_ptr_array_add (config->transports, t);
    }
}

/* config_read_routes - build PmxRouteConfig from /routes and check names */
static void
config_read_routes (PmxConfig       *config,
                    JsonObject      *root,
                    PmxJsonDocument *doc,
                    GPtrArray       *problems)
{
  JsonArray *routes;

  if (!json_object_has_member (root, "routes"))
    return;
  routes = json_object_get_array_member (root, "routes");
  for (guint i = 0; i < json_array_get_length (routes); i++)
    {
      JsonObject *obj = json_array_get_object_element (routes, i);
      JsonObject *match = json_object_has_member (obj, "match")
                            ? json_object_get_object_member (obj, "match") : NULL;
      PmxRouteConfig *r = g_new0 (PmxRouteConfig, 1);

      r->name = json_object_has_member (obj, "name")
                  ? g_strdup (json_object_get_string_member (obj, "name"))
                  : g_strdup_printf ("routes[%u]", i);
      r->senders = config_strv (match, "sender", TRUE);
      r->sender_domains = config_strv (match, "sender_domain", TRUE);
      r->recipient_domains = config_strv (match, "recipient_domain", TRUE);
      r->ingresses = config_strv (match, "ingress", FALSE);
      if (match != NULL && json_object_has_member (match, "header"))
        {
          JsonObject *h = json_object_get_object_member (match, "header");

          r->header_name = g_strdup (json_object_get_string_member (h, "name"));
          r->header_value = g_strdup (json_object_get_string_member_with_default (h, "value", NULL));
        }
      r->transports = config_strv (obj, "transports", FALSE);
      r->strategy = g_strcmp0 (json_object_get_string_member_with_default (obj, "strategy", "failover"),
                               "round_robin") == 0 ? PMX_STRATEGY_ROUND_ROBIN : PMX_STRATEGY_FAILOVER;
      for (guint j = 0; r->transports[j] != NULL; j++)
        if (pmx_config_get_transport (config, r->transports[j]) == NULL)
          {
            g_autofree char *pointer = g_strdup_printf ("/routes/%u/transports/%u", i, j);

            config_problem (problems, doc, pointer,
                            "route \"%s\" names transport \"%s\", which is not defined under \"transports\" — define it or fix the name",
                            r->name, r->transports[j]);
          }
      g_ptr_array_add (config->routes, r);
    }
}

/* config_build - fill @config from a root that passed the schema */
static void
config_build (PmxConfig       *config,
              JsonObject      *root,
              PmxJsonDocument *doc,
              GPtrArray       *problems)
{
  JsonObject *queue = json_object_has_member (root, "queue") ? json_object_get_object_member (root, "queue") : NULL;
  JsonObject *retry = json_object_has_member (root, "retry") ? json_object_get_object_member (root, "retry") : NULL;
  JsonObject *log = json_object_has_member (root, "log") ? json_object_get_object_member (root, "log") : NULL;

  if (json_object_has_member (root, "state_dir"))
    config->state_dir = g_strdup (json_object_get_string_member (root, "state_dir"));
  if (json_object_has_member (root, "node_name"))
    {
      g_free (config->node_name);
      config->node_name = g_strdup (json_object_get_string_member (root, "node_name"));
    }
  config->plugin_path = config_strv (root, "plugin_path", FALSE);
  config_finish_paths (config, queue != NULL ? json_object_get_string_member_with_default (queue, "path", NULL) : NULL);
  config_duration (queue, "retention", &config->retention);
  config_duration (queue, "lease", &config->lease);
  config_duration (retry, "initial_delay", &config->retry.initial_delay);
  config_duration (retry, "max_delay", &config->retry.max_delay);
  config_duration (retry, "max_age", &config->retry.max_age);
  if (retry != NULL && json_object_has_member (retry, "multiplier"))
    config->retry.multiplier = json_object_get_double_member (retry, "multiplier");
  if (retry != NULL && json_object_has_member (retry, "jitter"))
    config->retry.jitter = json_object_get_double_member (retry, "jitter");
  config_duration (root, "shutdown_timeout", &config->shutdown_timeout);
  if (log != NULL && json_object_has_member (log, "level"))
    {
      g_free (config->log_level);
      config->log_level = g_strdup (json_object_get_string_member (log, "level"));
    }
  if (log != NULL && json_object_has_member (log, "format"))
    {
      g_free (config->log_format);
      config->log_format = g_strdup (json_object_get_string_member (log, "format"));
    }

  config_read_transports (config, root, doc, problems);
  config->default_transport = g_strdup (json_object_get_string_member (root, "default"));
  if (pmx_config_get_transport (config, config->default_transport) == NULL)
    config_problem (problems, doc, "/default",
                    "default transport \"%s\" is not defined under \"transports\" — define it or fix the name",
                    config->default_transport);
  config_read_routes (config, root, doc, problems);

  if (config->retry.max_delay < config->retry.initial_delay)
    config_problem (problems, doc, "/retry/max_delay",
                    "max_delay is shorter than initial_delay — raise max_delay or lower initial_delay");

  for (guint i = 0; i < config->transports->len; i++)
    {
      PmxTransportConfig *t = g_ptr_array_index (config->transports, i);
      g_autofree char *pointer = g_strconcat ("/transports/", t->name, "/options", NULL);

      pmx_config_check_secrets (t->options, pointer, problems);
    }
}

/* config_one_line - @text with control characters shown as \xNN, so a
 * quoted value can never break a problem list or a log line */
static char *
config_one_line (const char *text)
{
  GString *out = g_string_sized_new (strlen (text));

  for (const char *p = text; *p != '\0'; p++)
    {
      if ((guchar) *p < 0x20 || *p == 0x7f)
        g_string_append_printf (out, "\\x%02x", (guint) (guchar) *p);
      else
        g_string_append_c (out, *p);
    }
  return g_string_free (out, FALSE);
}

/* config_load - parse, validate, build; @lenient keeps a config that
 * passed the schema even when cross-checks found problems */
static PmxConfig *
config_load (const char  *text,
             const char  *origin,
             gboolean     lenient,
             GPtrArray  **out_problems,
             GError     **error)
{
  g_autoptr(GPtrArray) problems = g_ptr_array_new_with_free_func (g_free);
  g_autoptr(PmxJsonDocument) doc = NULL;
  g_autoptr(GPtrArray) schema_problems = NULL;
  g_autoptr(PmxConfig) config = NULL;
  g_autoptr(GError) local_error = NULL;
  g_autoptr(GString) joined = NULL;
  JsonNode *root;

  g_return_val_if_fail (text != NULL, NULL);

  doc = pmx_json_document_parse (text, -1, &local_error);
  if (doc == NULL)
    {
      g_ptr_array_add (problems, config_one_line (local_error->message));
      g_set_error (error, PMX_CONFIG_ERROR, PMX_CONFIG_ERROR_PARSE,
                   "%s: not valid JSON: %s", origin, (char *) g_ptr_array_index (problems, 0));
      if (out_problems != NULL)
        *out_problems = g_steal_pointer (&problems);
      return NULL;
    }
  root = pmx_json_document_get_root (doc);
  if (!pmx_schema_validate (config_schema (), root, doc, &schema_problems, &local_error))
    {
      if (schema_problems == NULL)
        {
          g_propagate_prefixed_error (error, g_steal_pointer (&local_error), "%s: ", origin);
          return NULL;
        }
      for (guint i = 0; i < schema_problems->len; i++)
        g_ptr_array_add (problems, pmx_schema_problem_to_string (g_ptr_array_index (schema_problems, i)));
    }
  else
    {
      config = config_new ();
      config->path = g_strdup (origin);
      g_clear_pointer (&config->root, json_object_unref);
      config->root = json_object_ref (json_node_get_object (root));
      config_build (config, json_node_get_object (root), doc, problems);
      config->doc = g_steal_pointer (&doc);
    }

  /* A problem quotes what the file holds; keep each on one line. */
  for (guint i = 0; i < problems->len; i++)
    {
      char *line = config_one_line (g_ptr_array_index (problems, i));

      g_free (g_ptr_array_index (problems, i));
      problems->pdata[i] = line;
    }
  if (problems->len > 0)
    {
      joined = g_string_new (NULL);
      g_string_append_printf (joined, "%s: %u problem%s:", origin, problems->len, problems->len == 1 ? "" : "s");
      for (guint i = 0; i < problems->len; i++)
        g_string_append_printf (joined, "\n  %s", (char *) g_ptr_array_index (problems, i));
      g_set_error_literal (error, PMX_CONFIG_ERROR, PMX_CONFIG_ERROR_INVALID, joined->str);
      if (out_problems != NULL)
        *out_problems = g_steal_pointer (&problems);
      return lenient ? g_steal_pointer (&config) : NULL;
    }
  if (out_problems != NULL)
    *out_problems = g_steal_pointer (&problems);
  return g_steal_pointer (&config);
}

PmxConfig *
pmx_config_load_data (const char  *text,
                      const char  *origin,
                      GPtrArray  **out_problems,
                      GError     **error)
{
  return config_load (text, origin, FALSE, out_problems, error);
}

/* config_load_file - read @path and load it */
static PmxConfig *
config_load_file (const char  *path,
                  gboolean     lenient,
                  GPtrArray  **out_problems,
                  GError     **error)
{
  g_autofree char *text = NULL;
  g_autoptr(GError) local_error = NULL;

  if (!g_file_get_contents (path, &text, NULL, &local_error))
    {
      if (out_problems != NULL)
        {
          *out_problems = g_ptr_array_new_with_free_func (g_free);
          g_ptr_array_add (*out_problems, g_strdup (local_error->message));
        }
      g_set_error (error, PMX_CONFIG_ERROR, PMX_CONFIG_ERROR_READ,
                   "config %s cannot be read: %s", path, local_error->message);
      return NULL;
    }
  return config_load (text, path, lenient, out_problems, error);
}

PmxConfig *
pmx_config_load_file (const char  *path,
                      GPtrArray  **out_problems,
                      GError     **error)
{
  return config_load_file (path, FALSE, out_problems, error);
}

PmxConfig *
pmx_config_load_file_for_check (const char  *path,
                                GPtrArray  **out_problems,
                                GError     **error)
{
  return config_load_file (path, TRUE, out_problems, error);
}

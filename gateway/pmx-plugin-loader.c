/* SPDX-License-Identifier: GPL-3.0-or-later */
/*
 * pmx-plugin-loader.c - finds, checks and loads transport plugins.
 *
 * What it does: maps a transport name to pmx-<name>.so in the plugin
 * directories, checks the file is safe to load, opens it with GModule
 * (symbols bound eagerly and locally, module made resident, never
 * unloaded), fetches pmx_transport_<name>_get_desc() and checks the
 * descriptor: ABI version, name, operations table, options schema.
 *
 * What it trusts: the plugin directories themselves (a directory writable
 * by others lets them swap a file between our stat and our dlopen), and a
 * plugin that passes the checks: it runs inside the process.  It does not
 * trust a descriptor beyond its first two fields until the ABI matches.
 *
 * How it fails: every refusal is a PMX_PLUGIN_ERROR naming the file, the
 * cause and the fix.  A refused module stays mapped (see plugin_open).
 */
#include "pmx-plugin-loader.h"

#include <errno.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <gmodule.h>
#include <glib/gstdio.h>

#include "pmx-schema.h"

G_DEFINE_QUARK (pmx-plugin-error-quark, pmx_plugin_error)

struct _PmxPlugin {
  char                   *name;
  char                   *path;   /* as found or given, for messages */
  char                   *real;   /* symlinks resolved: the file opened */
  GModule                *module; /* resident; never closed */
  const PmxTransportDesc *desc;
};

struct _PmxPluginLoader {
  char      **dirs;
  GMutex      lock;
  GHashTable *plugins;  /* name → PmxPlugin (owned); protected by lock */
};

/* plugin_free - free the bookkeeping of a plugin; its module stays mapped */
static void
plugin_free (PmxPlugin *plugin)
{
  g_free (plugin->name);
  g_free (plugin->path);
  g_free (plugin->real);
  g_free (plugin);
}

const char *
pmx_plugin_get_name (PmxPlugin *plugin)
{
  g_return_val_if_fail (plugin != NULL, NULL);
  return plugin->name;
}

const char *
pmx_plugin_get_path (PmxPlugin *plugin)
{
  g_return_val_if_fail (plugin != NULL, NULL);
  return plugin->path;
}

const PmxTransportDesc *
pmx_plugin_get_desc (PmxPlugin *plugin)
{
  g_return_val_if_fail (plugin != NULL, NULL);
  return plugin->desc;
}

PmxPluginLoader *
pmx_plugin_loader_new (const char *const *dirs)
{
  PmxPluginLoader *loader = g_new0 (PmxPluginLoader, 1);

  loader->dirs = g_strdupv ((char **) dirs);
  if (loader->dirs == NULL)
    loader->dirs = g_new0 (char *, 1);
  g_mutex_init (&loader->lock);
  loader->plugins = g_hash_table_new_full (g_str_hash, g_str_equal, NULL,
                                           (GDestroyNotify) plugin_free);
  return loader;
}

void
pmx_plugin_loader_free (PmxPluginLoader *loader)
{
  if (loader == NULL)
    return;
  g_hash_table_unref (loader->plugins);
  g_mutex_clear (&loader->lock);
  g_strfreev (loader->dirs);
  g_free (loader);
}

char *
pmx_plugin_file_name (const char *name)
{
  g_return_val_if_fail (name != NULL, NULL);
  return g_strconcat ("pmx-", name, ".so", NULL);
}

/* plugin_name_is_valid - lower-case letters, digits and inner dashes only,
 * so that the name maps to a C symbol and cannot walk out of a directory */
static gboolean
plugin_name_is_valid (const char *name)
{
  if (name[0] == '\0' || name[0] == '-')
    return FALSE;
  for (const char *p = name; *p != '\0'; p++)
    if (!g_ascii_islower (*p) && !g_ascii_isdigit (*p) && *p != '-')
      return FALSE;
  return TRUE;
}

/* plugin_name_from_path - "…/pmx-oauth2-smtp.so" → "oauth2-smtp", or NULL */
static char *
plugin_name_from_path (const char *path)
{
  g_autofree char *base = g_path_get_basename (path);
  g_autofree char *name = NULL;
  gsize len = strlen (base);

  if (!g_str_has_prefix (base, "pmx-") || !g_str_has_suffix (base, ".so")
      || len <= strlen ("pmx-.so"))
    return NULL;
  name = g_strndup (base + strlen ("pmx-"), len - strlen ("pmx-.so"));
  return plugin_name_is_valid (name) ? g_steal_pointer (&name) : NULL;
}

/* plugin_check_file - Postfix's rule: only a regular file that nobody but
 * root or ourselves can change may run inside the process.  A symlink's own
 * owner is checked too, then the file it leads to.  Returns the resolved
 * path to open, so that we load the file we checked. */
static char *
plugin_check_file (const char *path,
                   GError    **error)
{
  struct stat st;
  g_autofree char *real = NULL;
  g_autofree char *subject = NULL;

  if (g_lstat (path, &st) != 0)
    {
      int err = errno;

      g_set_error (error, PMX_PLUGIN_ERROR,
                   err == ENOENT ? PMX_PLUGIN_ERROR_NOT_FOUND : PMX_PLUGIN_ERROR_CANNOT_OPEN,
                   "plugin %s: %s — check the path and its permissions",
                   path, g_strerror (err));
      return NULL;
    }
  if (S_ISLNK (st.st_mode) && st.st_uid != 0 && st.st_uid != geteuid ())
    {
      g_set_error (error, PMX_PLUGIN_ERROR, PMX_PLUGIN_ERROR_UNSAFE_FILE,
                   "plugin %s is a symbolic link owned by uid %u, neither root nor the "
                   "user running Postmux (uid %u) — chown -h root %s",
                   path, (guint) st.st_uid, (guint) geteuid (), path);
      return NULL;
    }

  real = realpath (path, NULL);
  if (real == NULL || g_stat (real, &st) != 0)
    {
      int err = errno;

      g_set_error (error, PMX_PLUGIN_ERROR, PMX_PLUGIN_ERROR_CANNOT_OPEN,
                   "plugin %s: cannot resolve the file it points to: %s — "
                   "fix or remove the symbolic link", path, g_strerror (err));
      return NULL;
    }
  /* "plugin /a/pmx-x.so" or, when a link leads elsewhere, "… (→ /b/pmx-x.so)" */
  subject = strcmp (path, real) == 0 ? g_strdup_printf ("plugin %s", path)
                                     : g_strdup_printf ("plugin %s (→ %s)", path, real);
  if (!S_ISREG (st.st_mode))
    {
      g_set_error (error, PMX_PLUGIN_ERROR, PMX_PLUGIN_ERROR_CANNOT_OPEN,
                   "%s is not a regular file — remove it from the plugin directory",
                   subject);
      return NULL;
    }
  if ((st.st_mode & (S_IWGRP | S_IWOTH)) != 0)
    {
      g_set_error (error, PMX_PLUGIN_ERROR, PMX_PLUGIN_ERROR_UNSAFE_FILE,
                   "%s is writable by group or others (mode %04o) — chmod go-w %s",
                   subject, (guint) (st.st_mode & 07777), real);
      return NULL;
    }
  if (st.st_uid != 0 && st.st_uid != geteuid ())
    {
      g_set_error (error, PMX_PLUGIN_ERROR, PMX_PLUGIN_ERROR_UNSAFE_FILE,
                   "%s is owned by uid %u, neither root nor the user running Postmux "
                   "(uid %u) — chown root %s",
                   subject, (guint) st.st_uid, (guint) geteuid (), real);
      return NULL;
    }
  return g_steal_pointer (&real);
}

/* plugin_check_desc - accept the descriptor or say what is wrong with it */
static gboolean
plugin_check_desc (const char             *path,
                   const char             *name,
                   const PmxTransportDesc *desc,
                   GError                **error)
{
  const PmxTransportOps *ops;

  /* Only the two version fields are known to be laid out as we think. */
  if (desc->abi_major != PMX_ABI_MAJOR)
    {
      g_set_error (error, PMX_PLUGIN_ERROR, PMX_PLUGIN_ERROR_ABI_MISMATCH,
                   "plugin %s: built for plugin ABI %u.%u, this Postmux speaks %d.%d — "
                   "rebuild the plugin against the installed SDK",
                   path, desc->abi_major, desc->abi_minor, PMX_ABI_MAJOR, PMX_ABI_MINOR);
      return FALSE;
    }
  if (desc->abi_minor > PMX_ABI_MINOR)
    {
      g_set_error (error, PMX_PLUGIN_ERROR, PMX_PLUGIN_ERROR_ABI_MISMATCH,
                   "plugin %s: built for plugin ABI %u.%u, newer than this Postmux's %d.%d — "
                   "upgrade Postmux, or rebuild the plugin against the installed SDK",
                   path, desc->abi_major, desc->abi_minor, PMX_ABI_MAJOR, PMX_ABI_MINOR);
      return FALSE;
    }

  if (g_strcmp0 (desc->name, name) != 0)
    {
      g_set_error (error, PMX_PLUGIN_ERROR, PMX_PLUGIN_ERROR_NAME_MISMATCH,
                   "plugin %s: its descriptor is named '%s' but the file says '%s' — "
                   "the name given to PMX_TRANSPORT_DEFINE must match the file name "
                   "pmx-<name>.so; fix the plugin and rebuild it",
                   path, desc->name ? desc->name : "(null)", name);
      return FALSE;
    }

  ops = desc->ops;
  if (ops == NULL || ops->create == NULL || ops->destroy == NULL || ops->open_session == NULL
      || ops->send == NULL || ops->close_session == NULL)
    {
      g_set_error (error, PMX_PLUGIN_ERROR, PMX_PLUGIN_ERROR_NOT_A_PLUGIN,
                   "plugin %s: its operations table lacks create, destroy, open_session, "
                   "send or close_session — the plugin is incomplete; fix it and rebuild it",
                   path);
      return FALSE;
    }

  if (desc->options_schema == NULL)
    {
      g_set_error (error, PMX_PLUGIN_ERROR, PMX_PLUGIN_ERROR_BAD_SCHEMA,
                   "plugin %s: it has no options schema — give PMX_TRANSPORT_DEFINE "
                   "a JSON Schema, even an empty {\"type\": \"object\"}", path);
      return FALSE;
    }
  {
    g_autoptr(GError) local = NULL;
    g_autoptr(PmxSchema) schema = pmx_schema_new_from_string (desc->options_schema, NULL, &local);

    if (schema == NULL)
      {
        g_set_error (error, PMX_PLUGIN_ERROR, PMX_PLUGIN_ERROR_BAD_SCHEMA,
                     "plugin %s: bad options schema: %s — "
                     "fix the plugin's options schema and rebuild it", path, local->message);
        return FALSE;
      }
  }
  return TRUE;
}

/* plugin_open - check, open and validate one file; lock held */
static PmxPlugin *
plugin_open (PmxPluginLoader *loader,
             const char      *path,
             const char      *name,
             GError         **error)
{
  g_autoptr(GError) local = NULL;
  g_autofree char *real = NULL;
  g_autofree char *symbol = NULL;
  GModule *module;
  PmxPlugin *plugin;
  /* ISO C forbids casting gpointer to a function pointer: go via a union. */
  union {
    gpointer                ptr;
    PmxTransportGetDescFunc func;
  } get_desc = { NULL };
  const PmxTransportDesc *desc;

  real = plugin_check_file (path, error);
  if (real == NULL)
    return NULL;

  /* No G_MODULE_BIND_LAZY: every symbol is bound now, so a plugin missing
   * a library symbol fails here and not in the middle of a delivery. */
  module = g_module_open_full (real, G_MODULE_BIND_LOCAL, &local);
  if (module == NULL)
    {
      g_set_error (error, PMX_PLUGIN_ERROR, PMX_PLUGIN_ERROR_CANNOT_OPEN,
                   "plugin %s: cannot be loaded: %s — check that it is a Postmux "
                   "transport built for this system and that the libraries it needs "
                   "are installed (ldd %s)", path, local->message, real);
      return NULL;
    }
  /* Never unloaded, even when refused below: its constructors may already
   * have registered atexit handlers or started threads. */
  g_module_make_resident (module);

  symbol = g_strdelimit (g_strdup_printf ("pmx_transport_%s_get_desc", name), "-", '_');
  if (!g_module_symbol (module, symbol, &get_desc.ptr) || get_desc.ptr == NULL)
    {
      g_set_error (error, PMX_PLUGIN_ERROR, PMX_PLUGIN_ERROR_NOT_A_PLUGIN,
                   "plugin %s: does not export %s() — it is not a Postmux transport, "
                   "or its file was renamed: a transport built as '<name>' must be "
                   "installed as pmx-<name>.so", path, symbol);
      return NULL;
    }
  desc = get_desc.func ();
  if (desc == NULL)
    {
      g_set_error (error, PMX_PLUGIN_ERROR, PMX_PLUGIN_ERROR_NOT_A_PLUGIN,
                   "plugin %s: %s() returned no descriptor — the plugin is broken; "
                   "report it to its author", path, symbol);
      return NULL;
    }
  if (!plugin_check_desc (path, name, desc, error))
    return NULL;

  plugin = g_new0 (PmxPlugin, 1);
  plugin->name = g_strdup (name);
  plugin->path = g_strdup (path);
  plugin->real = g_steal_pointer (&real);
  plugin->module = module;
  plugin->desc = desc;
  g_hash_table_insert (loader->plugins, plugin->name, plugin);
  g_debug ("loaded transport plugin %s (%s %s)", path, desc->name, desc->version);
  return plugin;
}

/* plugin_load_file_locked - the cached plugin for @path, or open it; the
 * lock is held */
static PmxPlugin *
plugin_load_file_locked (PmxPluginLoader *loader,
                         const char      *path,
                         GError         **error)
{
  g_autofree char *name = plugin_name_from_path (path);
  PmxPlugin *plugin;

  if (name == NULL)
    {
      g_set_error (error, PMX_PLUGIN_ERROR, PMX_PLUGIN_ERROR_FAILED,
                   "plugin %s: a transport file must be named pmx-<name>.so, <name> in "
                   "lower-case letters, digits and dashes — rename the file", path);
      return NULL;
    }

  plugin = g_hash_table_lookup (loader->plugins, name);
  if (plugin != NULL)
    {
      g_autofree char *real = realpath (path, NULL);

      if (g_strcmp0 (real, plugin->real) == 0)
        return plugin;
      g_set_error (error, PMX_PLUGIN_ERROR, PMX_PLUGIN_ERROR_FAILED,
                   "plugin %s: a transport named '%s' is already loaded from %s — "
                   "remove one of the two", path, name, plugin->path);
      return NULL;
    }
  return plugin_open (loader, path, name, error);
}

PmxPlugin *
pmx_plugin_loader_load_file (PmxPluginLoader *loader,
                             const char      *path,
                             GError         **error)
{
  g_autoptr(GMutexLocker) locker = NULL;

  g_return_val_if_fail (loader != NULL, NULL);
  g_return_val_if_fail (path != NULL, NULL);
  g_return_val_if_fail (error == NULL || *error == NULL, NULL);

  locker = g_mutex_locker_new (&loader->lock);
  return plugin_load_file_locked (loader, path, error);
}

PmxPlugin *
pmx_plugin_loader_load (PmxPluginLoader *loader,
                        const char      *name,
                        GError         **error)
{
  g_autoptr(GMutexLocker) locker = NULL;
  g_autofree char *file = NULL;
  g_autofree char *dirs = NULL;
  PmxPlugin *plugin;

  g_return_val_if_fail (loader != NULL, NULL);
  g_return_val_if_fail (name != NULL, NULL);
  g_return_val_if_fail (error == NULL || *error == NULL, NULL);

  if (!plugin_name_is_valid (name))
    {
      g_set_error (error, PMX_PLUGIN_ERROR, PMX_PLUGIN_ERROR_NOT_FOUND,
                   "transport plugin '%s': not a valid name — transport names are "
                   "lower-case letters, digits and dashes", name);
      return NULL;
    }

  locker = g_mutex_locker_new (&loader->lock);
  plugin = g_hash_table_lookup (loader->plugins, name);
  if (plugin != NULL)
    return plugin;

  file = pmx_plugin_file_name (name);
  for (guint i = 0; loader->dirs[i] != NULL; i++)
    {
      g_autofree char *path = g_build_filename (loader->dirs[i], file, NULL);

      if (g_file_test (path, G_FILE_TEST_EXISTS | G_FILE_TEST_IS_SYMLINK))
        return plugin_load_file_locked (loader, path, error);
    }

  dirs = g_strjoinv (", ", loader->dirs);
  g_set_error (error, PMX_PLUGIN_ERROR, PMX_PLUGIN_ERROR_NOT_FOUND,
               "transport plugin '%s': no %s in %s — install the plugin, or add "
               "the directory that holds it to the plugin path",
               name, file, dirs[0] != '\0' ? dirs : "(no plugin directories)");
  return NULL;
}

/* loader_compare_names - GCompareFunc on char ** for g_ptr_array_sort */
static gint
loader_compare_names (gconstpointer a,
                      gconstpointer b)
{
  return strcmp (*(const char *const *) a, *(const char *const *) b);
}

GPtrArray *
pmx_plugin_loader_scan (PmxPluginLoader *loader,
                        GPtrArray      **out_failures)
{
  g_autoptr(GMutexLocker) locker = NULL;
  g_autoptr(GPtrArray) plugins = g_ptr_array_new ();
  g_autoptr(GPtrArray) failures = g_ptr_array_new_with_free_func ((GDestroyNotify) g_error_free);
  g_autoptr(GHashTable) seen = g_hash_table_new_full (g_str_hash, g_str_equal, g_free, NULL);

  g_return_val_if_fail (loader != NULL, NULL);

  locker = g_mutex_locker_new (&loader->lock);
  for (guint i = 0; loader->dirs[i] != NULL; i++)
    {
      g_autoptr(GError) local = NULL;
      g_autoptr(GDir) dir = g_dir_open (loader->dirs[i], 0, &local);
      g_autoptr(GPtrArray) files = g_ptr_array_new_with_free_func (g_free);
      const char *entry;

      if (dir == NULL)
        {
          /* A plugin directory that does not exist is simply empty. */
          if (!g_error_matches (local, G_FILE_ERROR, G_FILE_ERROR_NOENT))
            g_ptr_array_add (failures,
                             g_error_new (PMX_PLUGIN_ERROR, PMX_PLUGIN_ERROR_FAILED,
                                          "plugin directory %s: %s — fix its permissions",
                                          loader->dirs[i], local->message));
          continue;
        }
      while ((entry = g_dir_read_name (dir)) != NULL)
        if (g_str_has_prefix (entry, "pmx-") && g_str_has_suffix (entry, ".so"))
          g_ptr_array_add (files, g_strdup (entry));
      g_ptr_array_sort (files, loader_compare_names);

      for (guint j = 0; j < files->len; j++)
        {
          g_autofree char *path = g_build_filename (loader->dirs[i], files->pdata[j], NULL);
          g_autofree char *name = plugin_name_from_path (path);
          GError *error = NULL;
          PmxPlugin *plugin;

          /* An earlier directory shadows a later one, as in $PATH. */
          if (name != NULL && !g_hash_table_add (seen, g_strdup (name)))
            continue;
          plugin = plugin_load_file_locked (loader, path, &error);
          if (plugin != NULL)
            g_ptr_array_add (plugins, plugin);
          else
            g_ptr_array_add (failures, error);
        }
    }

  if (out_failures != NULL)
    *out_failures = g_steal_pointer (&failures);
  return g_steal_pointer (&plugins);
}

PmxTransport *
pmx_plugin_create (PmxPlugin              *plugin,
                   const PmxTransportArgs *args,
                   GError                **error)
{
  g_autoptr(GError) local = NULL;
  PmxTransport *transport;

  g_return_val_if_fail (plugin != NULL, NULL);
  g_return_val_if_fail (args != NULL, NULL);
  g_return_val_if_fail (error == NULL || *error == NULL, NULL);

  transport = plugin->desc->ops->create (args, &local);
  if (transport != NULL)
    {
      if (local != NULL)
        g_warning ("plugin %s: create() succeeded but set an error (%s) — a plugin bug",
                   plugin->path, local->message);
      return transport;
    }
  if (local == NULL)
    {
      g_set_error (error, PMX_PLUGIN_ERROR, PMX_PLUGIN_ERROR_CREATE_FAILED,
                   "plugin %s: create() failed without saying why — report this to "
                   "the plugin's author", plugin->path);
      return NULL;
    }
  /* The caller names the instance; the plugin's own domain and code stay. */
  g_propagate_error (error, g_steal_pointer (&local));
  return NULL;
}

/* SPDX-License-Identifier: GPL-3.0-or-later */
/*
 * pmx-plugin-loader.h - finds and loads transport plugins (pmx-<name>.so).
 *
 * A plugin is accepted only when its file is owned by root or by the user
 * running Postmux and is not writable by group or others (the rule of
 * Postfix's dynamicmaps.c), it exports pmx_transport_<name>_get_desc, its
 * descriptor's ABI major equals the host's and its minor is not higher, and
 * its descriptor name equals the name taken from the file.  Modules are
 * bound eagerly (no lazy symbol errors later) and never unloaded.
 */
#pragma once

#include <glib.h>
#include <postmux/postmux.h>

G_BEGIN_DECLS

#define PMX_PLUGIN_ERROR (pmx_plugin_error_quark ())
typedef enum {
  PMX_PLUGIN_ERROR_FAILED,
  PMX_PLUGIN_ERROR_NOT_FOUND,      /* no pmx-<name>.so in any plugin directory */
  PMX_PLUGIN_ERROR_CANNOT_OPEN,    /* dlopen failed (missing library, bad ELF...) */
  PMX_PLUGIN_ERROR_NOT_A_PLUGIN,   /* no pmx_transport_<name>_get_desc, or it returned NULL */
  PMX_PLUGIN_ERROR_ABI_MISMATCH,   /* major differs, or minor newer than the host's */
  PMX_PLUGIN_ERROR_NAME_MISMATCH,  /* descriptor name differs from the file's */
  PMX_PLUGIN_ERROR_UNSAFE_FILE,    /* group/other-writable, or owned by someone else */
  PMX_PLUGIN_ERROR_BAD_SCHEMA,     /* options_schema is not a valid JSON Schema */
  PMX_PLUGIN_ERROR_CREATE_FAILED,  /* ops->create returned NULL */
} PmxPluginErrorCode;

GQuark pmx_plugin_error_quark (void);

/* A loaded plugin; owned by the loader, lives as long as the process. */
typedef struct _PmxPlugin PmxPlugin;

const char             *pmx_plugin_get_name (PmxPlugin *plugin);
const char             *pmx_plugin_get_path (PmxPlugin *plugin);
const PmxTransportDesc *pmx_plugin_get_desc (PmxPlugin *plugin);

typedef struct _PmxPluginLoader PmxPluginLoader;

/* @dirs: directories searched in order (NULL-terminated, copied). */
PmxPluginLoader *pmx_plugin_loader_new    (const char *const *dirs);
void             pmx_plugin_loader_free   (PmxPluginLoader   *loader);

/* Load (or return the already loaded) plugin called @name.  Thread-safe.
 * Errors name the file, the cause and the fix. */
PmxPlugin       *pmx_plugin_loader_load   (PmxPluginLoader   *loader,
                                           const char        *name,
                                           GError           **error);

/* Load a plugin from an explicit file (name taken from the file name). */
PmxPlugin       *pmx_plugin_loader_load_file (PmxPluginLoader *loader,
                                              const char      *path,
                                              GError         **error);

/* Every pmx-*.so in the directories, loaded; those that fail to load are
 * reported in @out_failures (GPtrArray of GError*, may be NULL) and left out. */
GPtrArray       *pmx_plugin_loader_scan   (PmxPluginLoader   *loader,
                                           GPtrArray        **out_failures);

/* Name of the plugin file for @name: "pmx-" name ".so". */
char            *pmx_plugin_file_name     (const char        *name);

/* Create a transport instance; wraps ops->create and turns a NULL without
 * an error into PMX_PLUGIN_ERROR_CREATE_FAILED. */
PmxTransport    *pmx_plugin_create        (PmxPlugin              *plugin,
                                           const PmxTransportArgs *args,
                                           GError                **error);

G_DEFINE_AUTOPTR_CLEANUP_FUNC (PmxPluginLoader, pmx_plugin_loader_free)

G_END_DECLS

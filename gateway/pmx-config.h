/* SPDX-License-Identifier: GPL-3.0-or-later */
/*
 * pmx-config.h - the configuration: parsed from JSON, validated against
 * schemas/postmux.schema.json, presets applied, names cross-checked.
 *
 * A PmxConfig is immutable once loaded and shared by reference: a reload
 * builds a new one and swaps it in; whoever still holds the old one (an
 * in-flight delivery) keeps it alive.
 */
#pragma once

#include <json-glib/json-glib.h>

G_BEGIN_DECLS

#define PMX_CONFIG_ERROR (pmx_config_error_quark ())
typedef enum {
  PMX_CONFIG_ERROR_FAILED,
  PMX_CONFIG_ERROR_READ,     /* the file cannot be read */
  PMX_CONFIG_ERROR_PARSE,    /* not JSON */
  PMX_CONFIG_ERROR_INVALID,  /* fails the schema or a cross-check */
} PmxConfigErrorCode;

GQuark pmx_config_error_quark (void);

typedef enum {
  PMX_STRATEGY_FAILOVER,
  PMX_STRATEGY_ROUND_ROBIN,
} PmxStrategy;

typedef struct {
  char       *name;
  char       *plugin;
  char       *preset;       /* or NULL */
  JsonObject *options;      /* preset merged with explicit options */
  guint       concurrency;
} PmxTransportConfig;

typedef struct {
  char      *name;               /* "routes[2]" when the config gives none */
  char     **senders;            /* lower-cased; NULL when not matched on */
  char     **sender_domains;
  char     **recipient_domains;
  char     **ingresses;
  char      *header_name;        /* or NULL */
  char      *header_value;       /* or NULL: presence is enough */
  char     **transports;
  PmxStrategy strategy;
} PmxRouteConfig;

typedef struct {
  gint64 initial_delay;   /* microseconds */
  double multiplier;
  gint64 max_delay;       /* microseconds */
  double jitter;          /* fraction */
  gint64 max_age;         /* microseconds */
} PmxRetryConfig;

typedef struct _PmxConfig PmxConfig;

struct _PmxConfig {
  /*< private >*/
  gint        ref_count;
  /*< public, read-only >*/
  char       *path;              /* NULL for the embedded default */
  char       *state_dir;
  char       *queue_path;        /* absolute */
  char       *node_name;
  char      **plugin_path;       /* from the config only */
  GPtrArray  *transports;        /* PmxTransportConfig, in file order */
  char       *default_transport;
  GPtrArray  *routes;            /* PmxRouteConfig */
  PmxRetryConfig retry;
  gint64      retention;         /* microseconds */
  gint64      lease;             /* microseconds */
  gint64      shutdown_timeout;  /* microseconds */
  char       *log_level;
  char       *log_format;
  JsonObject *root;              /* the whole validated file (empty object for
                                  * the built-in default): modules such as the
                                  * listeners read their own sections from it */
  /*< private >*/
  gpointer    doc;               /* PmxJsonDocument of the file, for lines */
};

/* Load and check @path.  On failure return NULL; @error carries every
 * problem, one per line, each naming the line, the JSON pointer and the
 * rule.  @out_problems (may be NULL) receives them as strings too. */
PmxConfig *pmx_config_load_file  (const char  *path,
                                  GPtrArray  **out_problems,
                                  GError     **error);
/* Like pmx_config_load_file(), but a config that passed the schema is
 * returned even when cross-checks found problems (with @error set), so
 * `config check` can go on to check each transport's plugin options. */
PmxConfig *pmx_config_load_file_for_check (const char  *path,
                                           GPtrArray  **out_problems,
                                           GError     **error);
/* Same from text; @origin names it in messages. */
PmxConfig *pmx_config_load_data  (const char  *text,
                                  const char  *origin,
                                  GPtrArray  **out_problems,
                                  GError     **error);
/* The embedded default: the maildir transport into <state_dir>/Maildir. */
PmxConfig *pmx_config_new_default (const char *state_dir);

/* /var/lib/postmux for root, else $XDG_STATE_HOME/postmux. (transfer full) */
char      *pmx_config_default_state_dir (void);

PmxConfig *pmx_config_ref   (PmxConfig *config);
void       pmx_config_unref (PmxConfig *config);

const PmxTransportConfig *pmx_config_get_transport (PmxConfig  *config,
                                                    const char *name);

/* Secret references ("env:", "file:") anywhere in @options that do not
 * resolve are appended to @problems as "<pointer>: <why>". */
void       pmx_config_check_secrets (JsonObject *options,
                                     const char *pointer,
                                     GPtrArray  *problems);

/* Source line of the value at @pointer, or of its nearest ancestor that
 * is in the file (a missing member is reported on its object); 0 when
 * the config did not come from a file. */
int        pmx_config_get_line (PmxConfig  *config,
                                const char *pointer);

/* Control socket path inside the state dir. (transfer full) */
char      *pmx_config_dup_socket_path (PmxConfig *config);

G_DEFINE_AUTOPTR_CLEANUP_FUNC (PmxConfig, pmx_config_unref)

G_END_DECLS

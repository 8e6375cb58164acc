/* SPDX-License-Identifier: GPL-3.0-or-later */
/*
 * pmx-instance.h - one configured transport instance: its plugin, its
 * options checked against the plugin's schema, and the created transport.
 */
#pragma once

#include "pmx-config.h"
#include "pmx-plugin-loader.h"

G_BEGIN_DECLS

typedef struct _PmxInstance PmxInstance;

/* Load the plugin, validate options, create the transport.  Option
 * problems go to @problems (strings, "line?: pointer: text") when it is
 * not NULL; any failure returns NULL with @error naming the transport. */
PmxInstance *pmx_instance_new (PmxPluginLoader          *loader,
                               PmxConfig                *config,
                               const PmxTransportConfig *tc,
                               GPtrArray                *problems,
                               GError                  **error);

/* Only load and validate (for `config check`): TRUE when the options pass. */
gboolean     pmx_instance_check (PmxPluginLoader          *loader,
                                 PmxConfig                *config,
                                 const PmxTransportConfig *tc,
                                 GPtrArray                *problems);

PmxInstance *pmx_instance_ref   (PmxInstance *instance);
void         pmx_instance_unref (PmxInstance *instance);

const char             *pmx_instance_get_name      (PmxInstance *instance);
const PmxTransportOps  *pmx_instance_get_ops       (PmxInstance *instance);
PmxTransport           *pmx_instance_get_transport (PmxInstance *instance);
guint                   pmx_instance_get_concurrency (PmxInstance *instance);
/* Would @tc build the same instance (same plugin, options, concurrency)? */
gboolean                pmx_instance_matches       (PmxInstance              *instance,
                                                    const PmxTransportConfig *tc);

G_DEFINE_AUTOPTR_CLEANUP_FUNC (PmxInstance, pmx_instance_unref)

G_END_DECLS

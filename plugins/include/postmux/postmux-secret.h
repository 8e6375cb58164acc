/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * postmux-secret.h - secret references in options: "env:NAME" reads an
 * environment variable, "file:/path" reads a file (one trailing newline
 * removed); any other string is taken literally.
 */
#pragma once

#if !defined(__PMX_H_INSIDE__) && !defined(PMX_COMPILATION)
#error "Only <postmux/postmux.h> can be included directly."
#endif

#include <glib.h>

G_BEGIN_DECLS

#define PMX_SECRET_ERROR (pmx_secret_error_quark ())
typedef enum {
  PMX_SECRET_ERROR_FAILED,
  PMX_SECRET_ERROR_NOT_FOUND,   /* variable unset or file missing */
  PMX_SECRET_ERROR_UNSAFE,      /* file readable by group/others */
} PmxSecretError;

GQuark pmx_secret_error_quark (void);

gboolean pmx_secret_is_reference (const char *value);

/* Returns the secret (transfer full; free with pmx_secret_free()), or NULL
 * with @error naming the reference (never the secret) and the fix. */
char *pmx_secret_resolve (const char *value,
                          GError    **error);

/* Wipe and free a secret. NULL is allowed. */
void pmx_secret_free (char *secret);


G_END_DECLS

/* SPDX-License-Identifier: GPL-3.0-or-later */
/*
 * pmx-schema.h - JSON Schema (draft-07) validation on json-glib, and JSON
 * parsing that remembers the source line of every value.
 *
 * Used for the config file, for each transport's options, and for the HTTP
 * submission API.  Errors name the JSON pointer of the offending value, the
 * schema keyword that failed, and (where the document was parsed with
 * pmx_json_document_parse()) the line it sits on.
 */
#pragma once

#include <glib.h>
#include <json-glib/json-glib.h>

G_BEGIN_DECLS

#define PMX_SCHEMA_ERROR (pmx_schema_error_quark ())
typedef enum {
  PMX_SCHEMA_ERROR_FAILED,
  PMX_SCHEMA_ERROR_PARSE,       /* schema or document text is not JSON */
  PMX_SCHEMA_ERROR_INVALID,     /* the schema itself is not a valid schema */
  PMX_SCHEMA_ERROR_REF,         /* a $ref cannot be resolved */
  PMX_SCHEMA_ERROR_VALIDATION,  /* the instance does not satisfy the schema */
} PmxSchemaErrorCode;

GQuark pmx_schema_error_quark (void);

/* One failed rule. */
typedef struct {
  char *pointer;   /* RFC 6901 pointer into the instance, "" for the root */
  char *keyword;   /* "type", "required", "additionalProperties", ... */
  char *message;   /* human text: what was expected, what was found */
  int   line;      /* 1-based source line of the value, 0 when unknown */
} PmxSchemaProblem;

void pmx_schema_problem_free (PmxSchemaProblem *problem);

/* A document parsed from text with a line for every value. */
typedef struct _PmxJsonDocument PmxJsonDocument;

PmxJsonDocument *pmx_json_document_parse      (const char      *text,
                                               gssize           length,
                                               GError         **error);
JsonNode        *pmx_json_document_get_root   (PmxJsonDocument *doc);
/* Line of the value at @pointer, or 0 if not known. */
int              pmx_json_document_get_line   (PmxJsonDocument *doc,
                                               const char      *pointer);
void             pmx_json_document_free       (PmxJsonDocument *doc);

/* Resolves an absolute URI that a $ref names outside the schema itself.
 * Returns a new JsonNode (transfer full) or NULL with @error set. */
typedef JsonNode *(*PmxSchemaResolveFunc) (const char *uri,
                                           gpointer    user_data,
                                           GError    **error);

typedef struct _PmxSchema PmxSchema;

/* @base_uri may be NULL; the schema's own "$id" wins over it. */
PmxSchema *pmx_schema_new_from_node   (JsonNode    *schema,
                                       const char  *base_uri,
                                       GError     **error);
PmxSchema *pmx_schema_new_from_string (const char  *text,
                                       const char  *base_uri,
                                       GError     **error);
void       pmx_schema_set_resolver    (PmxSchema           *schema,
                                       PmxSchemaResolveFunc func,
                                       gpointer             user_data);
PmxSchema *pmx_schema_ref             (PmxSchema   *schema);
void       pmx_schema_unref           (PmxSchema   *schema);

/* Validate @instance.  Returns TRUE when it is valid.  When it is not and
 * @out_problems is not NULL, it receives every problem found (a GPtrArray of
 * PmxSchemaProblem, transfer full), in document order.  @doc, if given,
 * supplies the line numbers.  A $ref that cannot be resolved sets @error
 * (code PMX_SCHEMA_ERROR_REF) and returns FALSE. */
gboolean   pmx_schema_validate        (PmxSchema        *schema,
                                       JsonNode         *instance,
                                       PmxJsonDocument  *doc,
                                       GPtrArray       **out_problems,
                                       GError          **error);

/* "line 12: /transports/o365/options/port: expected integer, found string (type)" */
char      *pmx_schema_problem_to_string (const PmxSchemaProblem *problem);

G_DEFINE_AUTOPTR_CLEANUP_FUNC (PmxSchema, pmx_schema_unref)
G_DEFINE_AUTOPTR_CLEANUP_FUNC (PmxJsonDocument, pmx_json_document_free)
G_DEFINE_AUTOPTR_CLEANUP_FUNC (PmxSchemaProblem, pmx_schema_problem_free)

G_END_DECLS

/* SPDX-License-Identifier: GPL-3.0-or-later */
/*
 * pmx-schema.c - JSON Schema draft-07 validation on json-glib, and JSON
 * parsing that remembers the source line of every value.
 *
 * What: a PmxSchema holds the schema document, the documents its $refs
 * pulled in (through the resolver callback, cached for the schema's
 * lifetime) and an index of every "$id" they declare.  Validation walks
 * schema and instance together and, when the caller asks for problems,
 * evaluates every keyword so that all problems are reported, each with the
 * RFC 6901 pointer of the offending value.  Subschemas of anyOf, oneOf,
 * not, if, contains and propertyNames are evaluated quietly and summarised
 * by one problem, so a single mistake does not flood the report.  "format"
 * is an annotation and never fails.
 *
 * Trusts: schemas come from the gateway's own files or from the operator;
 * they are checked against the built-in draft-07 meta-schema when a
 * PmxSchema is created, but documents fetched for remote $refs are only
 * checked as far as each keyword is used.  Instances are untrusted: every
 * recursion is bounded (SCHEMA_MAX_DEPTH) and a $ref loop that consumes no
 * input is detected.  The JsonNode trees handed in must not be modified
 * while a schema or validation uses them.  A PmxSchema may validate from
 * several threads at once; its caches are behind PmxSchema.lock.
 *
 * Fails: text that is not JSON gives PMX_SCHEMA_ERROR_PARSE with the line
 * and column; a schema that is not a draft-07 schema (or holds a pattern
 * GRegex cannot compile) gives PMX_SCHEMA_ERROR_INVALID; a $ref that cannot
 * be resolved or that loops gives PMX_SCHEMA_ERROR_REF at validation time.
 * An invalid instance is not an error: pmx_schema_validate() returns FALSE
 * and the problems.
 *
 * Regular expressions are PCRE2 through GRegex, searched unanchored as
 * ECMA-262 does; the two dialects agree on everything but exotic corners
 * (GRegex matches \d and \w against Unicode, not only ASCII).
 */
#include "pmx-schema.h"

#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

/* Nested validate_node() calls allowed before giving up; bounds the stack
 * for deep instances and for $ref chains. */
#define SCHEMA_MAX_DEPTH        1000
/* Base URI of a schema that has neither a base URI nor an "$id". */
#define SCHEMA_ANONYMOUS_BASE   "postmux:/schema.json"
#define SCHEMA_DRAFT07_URI      "http://json-schema.org/draft-07/schema"
#define SCHEMA_DRAFT07_URI_TLS  "https://json-schema.org/draft-07/schema"
/* Longest rendering of a value inside a message, in bytes. */
#define SCHEMA_DISPLAY_MAX      60
/* Values of "enum" listed in a message before "...". */
#define SCHEMA_ENUM_SHOWN       8

G_DEFINE_QUARK (pmx-schema-error-quark, pmx_schema_error)

/* The draft-07 meta-schema (http://json-schema.org/draft-07/schema), used to
 * check every schema and served to "$ref"s that name it. */
static const char schema_draft07_text[] =
  "{\"$schema\":\"http://json-schema.org/draft-07/schema#\",\"$id\":\"http://json-schema.org/draft-07/schema#\","
  "\"title\":\"Core schema meta-schema\",\"definitions\":{\"schemaArray\":{\"type\":\"array\","
  "\"minItems\":1,\"items\":{\"$ref\":\"#\"}},\"nonNegativeInteger\":{\"type\":\"integer\","
  "\"minimum\":0},\"nonNegativeIntegerDefault0\":{\"allOf\":[{\"$ref\":\"#/definitions/nonNegativeInteger\"},"
  "{\"default\":0}]},\"simpleTypes\":{\"enum\":[\"array\",\"boolean\",\"integer\","
  "\"null\",\"number\",\"object\",\"string\"]},\"stringArray\":{\"type\":\"array\","
  "\"items\":{\"type\":\"string\"},\"uniqueItems\":true,\"default\":[]}},\"type\":[\"object\","
  "\"boolean\"],\"properties\":{\"$id\":{\"type\":\"string\",\"format\":\"uri-reference\"},"
  "\"$schema\":{\"type\":\"string\",\"format\":\"uri\"},\"$ref\":{\"type\":\"string\","
  "\"format\":\"uri-reference\"},\"$comment\":{\"type\":\"string\"},\"title\":{\"type\":\"string\"},"
  "\"description\":{\"type\":\"string\"},\"default\":true,\"readOnly\":{\"type\":\"boolean\","
  "\"default\":false},\"examples\":{\"type\":\"array\",\"items\":true},\"multipleOf\":{\"type\":\"number\","
  "\"exclusiveMinimum\":0},\"maximum\":{\"type\":\"number\"},\"exclusiveMaximum\":{\"type\":\"number\"},"
  "\"minimum\":{\"type\":\"number\"},\"exclusiveMinimum\":{\"type\":\"number\"},"
  "\"maxLength\":{\"$ref\":\"#/definitions/nonNegativeInteger\"},\"minLength\":{\"$ref\":\"#/definitions/nonNegativeIntegerDefault0\"},"
  "\"pattern\":{\"type\":\"string\",\"format\":\"regex\"},\"additionalItems\":{\"$ref\":\"#\"},"
  "\"items\":{\"anyOf\":[{\"$ref\":\"#\"},{\"$ref\":\"#/definitions/schemaArray\"}],"
  "\"default\":true},\"maxItems\":{\"$ref\":\"#/definitions/nonNegativeInteger\"},"
  "\"minItems\":{\"$ref\":\"#/definitions/nonNegativeIntegerDefault0\"},"
  "\"uniqueItems\":{\"type\":\"boolean\",\"default\":false},\"contains\":{\"$ref\":\"#\"},"
  "\"maxProperties\":{\"$ref\":\"#/definitions/nonNegativeInteger\"},\"minProperties\":{\"$ref\":\"#/definitions/nonNegativeIntegerDefault0\"},"
  "\"required\":{\"$ref\":\"#/definitions/stringArray\"},\"additionalProperties\":{\"$ref\":\"#\"},"
  "\"definitions\":{\"type\":\"object\",\"additionalProperties\":{\"$ref\":\"#\"},"
  "\"default\":{}},\"properties\":{\"type\":\"object\",\"additionalProperties\":{\"$ref\":\"#\"},"
  "\"default\":{}},\"patternProperties\":{\"type\":\"object\",\"additionalProperties\":{\"$ref\":\"#\"},"
  "\"propertyNames\":{\"format\":\"regex\"},\"default\":{}},\"dependencies\":{\"type\":\"object\","
  "\"additionalProperties\":{\"anyOf\":[{\"$ref\":\"#\"},{\"$ref\":\"#/definitions/stringArray\"}]}},"
  "\"propertyNames\":{\"$ref\":\"#\"},\"const\":true,\"enum\":{\"type\":\"array\","
  "\"items\":true},\"type\":{\"anyOf\":[{\"$ref\":\"#/definitions/simpleTypes\"},"
  "{\"type\":\"array\",\"items\":{\"$ref\":\"#/definitions/simpleTypes\"},"
  "\"minItems\":1,\"uniqueItems\":true}]},\"format\":{\"type\":\"string\"},"
  "\"contentMediaType\":{\"type\":\"string\"},\"contentEncoding\":{\"type\":\"string\"},"
  "\"if\":{\"$ref\":\"#\"},\"then\":{\"$ref\":\"#\"},\"else\":{\"$ref\":\"#\"},\"allOf\":{\"$ref\":\"#/definitions/schemaArray\"},"
  "\"anyOf\":{\"$ref\":\"#/definitions/schemaArray\"},\"oneOf\":{\"$ref\":\"#/definitions/schemaArray\"},"
  "\"not\":{\"$ref\":\"#\"}},\"default\":true}"
  ;

/* ---- JSON helpers ------------------------------------------------------ */

typedef struct {
  gboolean is_int;
  gint64   i;
  double   d;   /* also set when is_int */
} SchemaNumber;

/* json_get_number - the number in @node, FALSE when it is not a number */
static gboolean
json_get_number (JsonNode     *node,
                 SchemaNumber *out)
{
  GType type;

  if (node == NULL || JSON_NODE_TYPE (node) != JSON_NODE_VALUE)
    return FALSE;
  type = json_node_get_value_type (node);
  if (type == G_TYPE_INT64 || type == G_TYPE_INT || type == G_TYPE_UINT
      || type == G_TYPE_LONG || type == G_TYPE_UINT64)
    {
      out->is_int = TRUE;
      out->i = json_node_get_int (node);
      out->d = (double) out->i;
      return TRUE;
    }
  if (type == G_TYPE_DOUBLE || type == G_TYPE_FLOAT)
    {
      out->is_int = FALSE;
      out->i = 0;
      out->d = json_node_get_double (node);
      return TRUE;
    }
  return FALSE;
}

/* json_get_string - the string in @node, NULL when it is not a string */
static const char *
json_get_string (JsonNode *node)
{
  if (node == NULL || JSON_NODE_TYPE (node) != JSON_NODE_VALUE
      || json_node_get_value_type (node) != G_TYPE_STRING)
    return NULL;
  return json_node_get_string (node);
}

/* json_is_boolean - whether @node holds true or false */
static gboolean
json_is_boolean (JsonNode *node)
{
  return node != NULL && JSON_NODE_TYPE (node) == JSON_NODE_VALUE
         && json_node_get_value_type (node) == G_TYPE_BOOLEAN;
}

/* number_abs - |d| without libm */
static double
number_abs (double d)
{
  return d < 0 ? -d : d;
}

/* number_is_integral - whether @d is finite and has no fraction */
static gboolean
number_is_integral (double d)
{
  if (!isfinite (d))
    return FALSE;
  /* Every double this large is an integer, and too large for gint64. */
  if (number_abs (d) >= 9007199254740992.0)
    return TRUE;
  return d == (double) (gint64) d;
}

/* number_is_integer - whether @n counts as a JSON Schema "integer" */
static gboolean
number_is_integer (const SchemaNumber *n)
{
  return n->is_int || number_is_integral (n->d);
}

/* number_compare - <0, 0 or >0 as @a is below, equal to or above @b */
static int
number_compare (const SchemaNumber *a,
                const SchemaNumber *b)
{
  if (a->is_int && b->is_int)
    return (a->i > b->i) - (a->i < b->i);
  return (a->d > b->d) - (a->d < b->d);
}

/* number_is_multiple - whether @x is an integer multiple of @m (m > 0) */
static gboolean
number_is_multiple (const SchemaNumber *x,
                    const SchemaNumber *m)
{
  double q, r;

  if (x->is_int && m->is_int)
    return m->i == 0 ? FALSE : x->i % m->i == 0;
  if (m->d == 0)
    return FALSE;
  q = x->d / m->d;
  if (!isfinite (q))
    return FALSE;
  if (number_abs (q) >= 4503599627370496.0)
    return TRUE;
  /* Decimal steps such as 0.01 have no exact binary form; accept a
   * quotient within a few ulps of an integer. */
  r = (double) (gint64) (q < 0 ? q - 0.5 : q + 0.5);
  return number_abs (q - r) <= 4 * DBL_EPSILON * number_abs (q);
}

/* number_to_string - @n as JSON would write it, shortest form that reads
 * back the same */
static char *
number_to_string (const SchemaNumber *n)
{
  char buf[G_ASCII_DTOSTR_BUF_SIZE];
  char fmt[8];
  int precision;

  if (n->is_int)
    return g_strdup_printf ("%" G_GINT64_FORMAT, n->i);
  if (!isfinite (n->d))
    return g_strdup (isnan (n->d) ? "NaN" : n->d > 0 ? "Infinity" : "-Infinity");
  for (precision = 1; precision <= 17; precision++)
    {
      g_snprintf (fmt, sizeof fmt, "%%.%dg", precision);
      g_ascii_formatd (buf, sizeof buf, fmt, n->d);
      if (g_ascii_strtod (buf, NULL) == n->d)
        break;
    }
  if (strpbrk (buf, ".e") == NULL)
    return g_strconcat (buf, ".0", NULL);
  return g_strdup (buf);
}

/* json_equal - deep JSON equality; numbers compare by value, so 1 == 1.0 */
static gboolean
json_equal (JsonNode *a,
            JsonNode *b)
{
  SchemaNumber na, nb;
  JsonNodeType type = JSON_NODE_TYPE (a);

  if (json_get_number (a, &na))
    return json_get_number (b, &nb) && number_compare (&na, &nb) == 0;
  if (type != JSON_NODE_TYPE (b))
    return FALSE;

  switch (type)
    {
    case JSON_NODE_NULL:
      return TRUE;

    case JSON_NODE_VALUE:
      if (json_node_get_value_type (a) != json_node_get_value_type (b))
        return FALSE;
      if (json_is_boolean (a))
        return json_node_get_boolean (a) == json_node_get_boolean (b);
      if (json_get_string (a) != NULL)
        return g_strcmp0 (json_get_string (a), json_get_string (b)) == 0;
      return FALSE;

    case JSON_NODE_ARRAY:
      {
        JsonArray *aa = json_node_get_array (a);
        JsonArray *ab = json_node_get_array (b);
        guint i, len = json_array_get_length (aa);

        if (len != json_array_get_length (ab))
          return FALSE;
        for (i = 0; i < len; i++)
          if (!json_equal (json_array_get_element (aa, i), json_array_get_element (ab, i)))
            return FALSE;
        return TRUE;
      }

    case JSON_NODE_OBJECT:
      {
        JsonObject *oa = json_node_get_object (a);
        JsonObject *ob = json_node_get_object (b);
        JsonObjectIter iter;
        const char *name;
        JsonNode *member;

        if (json_object_get_size (oa) != json_object_get_size (ob))
          return FALSE;
        json_object_iter_init_ordered (&iter, oa);
        while (json_object_iter_next_ordered (&iter, &name, &member))
          {
            JsonNode *other = json_object_get_member (ob, name);

            if (other == NULL || !json_equal (member, other))
              return FALSE;
          }
        return TRUE;
      }

    default:
      return FALSE;
    }
}

/* json_kind - the JSON Schema type name of @node, integers as "integer" */
static const char *
json_kind (JsonNode *node)
{
  SchemaNumber n;

  if (JSON_NODE_HOLDS_NULL (node))
    return "null";
  if (JSON_NODE_HOLDS_OBJECT (node))
    return "object";
  if (JSON_NODE_HOLDS_ARRAY (node))
    return "array";
  if (json_is_boolean (node))
    return "boolean";
  if (json_get_string (node) != NULL)
    return "string";
  if (json_get_number (node, &n))
    return n.is_int ? "integer" : "number";
  return "unknown";
}

/* json_display - @node as compact JSON, cut to SCHEMA_DISPLAY_MAX bytes */
static char *
json_display (JsonNode *node)
{
  SchemaNumber n;
  char *text;
  const char *end;

  if (json_get_number (node, &n))
    return number_to_string (&n);
  text = json_to_string (node, FALSE);
  if (strlen (text) <= SCHEMA_DISPLAY_MAX)
    return text;
  /* Cut on a character boundary. */
  end = g_utf8_find_prev_char (text, text + SCHEMA_DISPLAY_MAX - 2);
  if (end == NULL)
    end = text;
  strcpy ((char *) end, "...");
  return text;
}

/* json_describe - "string \"25\"", "integer 25", "object", ... for
 * messages */
static char *
json_describe (JsonNode *node)
{
  g_autofree char *shown = NULL;
  const char *kind = json_kind (node);

  if (JSON_NODE_HOLDS_OBJECT (node) || JSON_NODE_HOLDS_ARRAY (node)
      || JSON_NODE_HOLDS_NULL (node))
    return g_strdup (kind);
  shown = json_display (node);
  return g_strdup_printf ("%s %s", kind, shown);
}

/* pointer_push_key - append "/name" (RFC 6901 escaped) to @ptr; returns the
 * old length for g_string_truncate() */
static gsize
pointer_push_key (GString    *ptr,
                  const char *name)
{
  gsize old = ptr->len;
  const char *p;

  g_string_append_c (ptr, '/');
  for (p = name; *p != '\0'; p++)
    {
      if (*p == '~')
        g_string_append (ptr, "~0");
      else if (*p == '/')
        g_string_append (ptr, "~1");
      else
        g_string_append_c (ptr, *p);
    }
  return old;
}

/* pointer_push_index - append "/i" to @ptr; returns the old length */
static gsize
pointer_push_index (GString *ptr,
                    guint    i)
{
  gsize old = ptr->len;

  g_string_append_printf (ptr, "/%u", i);
  return old;
}

/* JsonWalkFunc - called on one value with @ptr its JSON pointer; TRUE stops
 * the walk */
typedef gboolean (*JsonWalkFunc) (JsonNode *node,
                                  GString  *ptr,
                                  gpointer  user_data);

/* json_walk_pointers - call @func on @node and on every value inside it, in
 * document order, with @ptr extended to each value's pointer; TRUE when
 * @func stopped the walk, and @ptr then points at the value it stopped on */
static gboolean
json_walk_pointers (JsonNode     *node,
                    GString      *ptr,
                    JsonWalkFunc  func,
                    gpointer      user_data)
{
  if (func (node, ptr, user_data))
    return TRUE;
  if (JSON_NODE_HOLDS_OBJECT (node))
    {
      JsonObjectIter iter;
      const char *name;
      JsonNode *member;

      json_object_iter_init_ordered (&iter, json_node_get_object (node));
      while (json_object_iter_next_ordered (&iter, &name, &member))
        {
          gsize old = pointer_push_key (ptr, name);

          if (json_walk_pointers (member, ptr, func, user_data))
            return TRUE;
          g_string_truncate (ptr, old);
        }
    }
  else if (JSON_NODE_HOLDS_ARRAY (node))
    {
      JsonArray *array = json_node_get_array (node);
      guint i, len = json_array_get_length (array);

      for (i = 0; i < len; i++)
        {
          gsize old = pointer_push_index (ptr, i);

          if (json_walk_pointers (json_array_get_element (array, i), ptr, func, user_data))
            return TRUE;
          g_string_truncate (ptr, old);
        }
    }
  return FALSE;
}

/* pointer_unescape_token - RFC 6901 token to name; NULL if a '~' is bad */
static char *
pointer_unescape_token (const char *token,
                        gsize       len)
{
  GString *out = g_string_sized_new (len);
  gsize i;

  for (i = 0; i < len; i++)
    {
      if (token[i] != '~')
        {
          g_string_append_c (out, token[i]);
          continue;
        }
      if (i + 1 >= len || (token[i + 1] != '0' && token[i + 1] != '1'))
        {
          g_string_free (out, TRUE);
          return NULL;
        }
      i++;
      g_string_append_c (out, token[i] == '0' ? '~' : '/');
    }
  return g_string_free (out, FALSE);
}

/* ---- PmxSchemaProblem -------------------------------------------------- */

void
pmx_schema_problem_free (PmxSchemaProblem *problem)
{
  if (problem == NULL)
    return;
  g_free (problem->pointer);
  g_free (problem->keyword);
  g_free (problem->message);
  g_free (problem);
}

char *
pmx_schema_problem_to_string (const PmxSchemaProblem *problem)
{
  const char *pointer;

  g_return_val_if_fail (problem != NULL, NULL);

  pointer = problem->pointer != NULL && problem->pointer[0] != '\0' ? problem->pointer : "/";
  if (problem->line > 0)
    return g_strdup_printf ("line %d: %s: %s (%s)", problem->line, pointer,
                            problem->message, problem->keyword);
  return g_strdup_printf ("%s: %s (%s)", pointer, problem->message, problem->keyword);
}

/* ---- PmxJsonDocument --------------------------------------------------- */

struct _PmxJsonDocument {
  JsonNode   *root;
  GHashTable *lines;   /* JSON pointer → GINT_TO_POINTER (line) */
};

/* What the JsonParser signal handlers learn while a document is parsed. */
typedef struct {
  JsonParser *parser;
  const char *text;
  gsize       length;
  GArray     *line_starts;      /* gsize offset of each line's first byte */
  GArray     *open_lines;       /* int line of each open '{' or '[' */
  GHashTable *container_lines;  /* JsonObject* / JsonArray* → line */
  GHashTable *value_lines;      /* scalar JsonNode* → line */
  PmxJsonDocument *doc;         /* being built; its lines are filled last */
} DocumentParse;

/* document_scalar_line - line of the scalar the parser just finished.
 *
 * The object-member and array-element signals come after the value, when
 * JsonParser may already have consumed the ',' that follows it (its
 * current line and byte column then name the comma).  Step back from a
 * comma to the value itself so that "1\n, 2" still says line 1. */
static int
document_scalar_line (DocumentParse *dp)
{
  guint line = json_parser_get_current_line (dp->parser);
  guint pos = json_parser_get_current_pos (dp->parser);
  gsize offset;

  if (line == 0 || line > dp->line_starts->len || pos == 0)
    return (int) line;
  offset = g_array_index (dp->line_starts, gsize, line - 1) + pos - 1;
  if (offset >= dp->length || dp->text[offset] != ',')
    return (int) line;
  while (offset > 0)
    {
      char c = dp->text[--offset];

      if (c == '\n')
        line--;
      else if (c != ' ' && c != '\t' && c != '\r')
        break;
    }
  return (int) line;
}

/* document_record_value - remember the line of @node if it is a scalar;
 * containers were recorded by their start and end signals */
static void
document_record_value (DocumentParse *dp,
                       JsonNode      *node)
{
  if (node == NULL || JSON_NODE_HOLDS_OBJECT (node) || JSON_NODE_HOLDS_ARRAY (node))
    return;
  g_hash_table_insert (dp->value_lines, node, GINT_TO_POINTER (document_scalar_line (dp)));
}

/* document_on_start - a '{' or '[' was just read: note its line */
static void
document_on_start (JsonParser *parser,
                   gpointer    user_data)
{
  DocumentParse *dp = user_data;
  int line = (int) json_parser_get_current_line (parser);

  g_array_append_val (dp->open_lines, line);
}

/* document_on_end - close the innermost container, keyed by its address */
static void
document_on_end (DocumentParse *dp,
                 gpointer       container)
{
  int line;

  if (dp->open_lines->len == 0)
    return;
  line = g_array_index (dp->open_lines, int, dp->open_lines->len - 1);
  g_array_set_size (dp->open_lines, dp->open_lines->len - 1);
  g_hash_table_insert (dp->container_lines, container, GINT_TO_POINTER (line));
}

/* document_on_object_end - "object-end" handler */
static void
document_on_object_end (JsonParser *parser,
                        JsonObject *object,
                        gpointer    user_data)
{
  document_on_end (user_data, object);
}

/* document_on_array_end - "array-end" handler */
static void
document_on_array_end (JsonParser *parser,
                       JsonArray  *array,
                       gpointer    user_data)
{
  document_on_end (user_data, array);
}

/* document_on_object_member - "object-member" handler */
static void
document_on_object_member (JsonParser *parser,
                           JsonObject *object,
                           const char *name,
                           gpointer    user_data)
{
  document_record_value (user_data, json_object_get_member (object, name));
}

/* document_on_array_element - "array-element" handler */
static void
document_on_array_element (JsonParser *parser,
                           JsonArray  *array,
                           int         index_,
                           gpointer    user_data)
{
  document_record_value (user_data, json_array_get_element (array, (guint) index_));
}

/* document_collect_line - JsonWalkFunc: record in doc->lines the line of
 * the value at @ptr */
static gboolean
document_collect_line (JsonNode *node,
                       GString  *ptr,
                       gpointer  user_data)
{
  DocumentParse *dp = user_data;
  gpointer key = node;
  gpointer line;
  GHashTable *table = dp->value_lines;

  /* Containers are known by their JsonObject or JsonArray, scalars by
   * their JsonNode. */
  if (JSON_NODE_HOLDS_OBJECT (node) || JSON_NODE_HOLDS_ARRAY (node))
    {
      table = dp->container_lines;
      key = JSON_NODE_HOLDS_OBJECT (node) ? (gpointer) json_node_get_object (node)
                                          : (gpointer) json_node_get_array (node);
    }
  if (g_hash_table_lookup_extended (table, key, NULL, &line))
    g_hash_table_insert (dp->doc->lines, g_strdup (ptr->str), line);
  return FALSE;
}

/* document_error_from_parser - rewrite json-glib's "<data>:4:2: Parse
 * error: ..." as "line 4, column 2: ..." */
static void
document_error_from_parser (GError    **error,
                            const GError *parse_error)
{
  const char *msg = parse_error->message;
  const char *p;
  char *end;
  guint64 line, column;

  if (!g_str_has_prefix (msg, "<data>:"))
    {
      g_set_error (error, PMX_SCHEMA_ERROR, PMX_SCHEMA_ERROR_PARSE, "%s", msg);
      return;
    }
  p = msg + strlen ("<data>:");
  line = g_ascii_strtoull (p, &end, 10);
  if (end == p || *end != ':')
    {
      g_set_error (error, PMX_SCHEMA_ERROR, PMX_SCHEMA_ERROR_PARSE, "%s", msg);
      return;
    }
  p = end + 1;
  column = g_ascii_strtoull (p, &end, 10);
  if (end == p || *end != ':')
    {
      g_set_error (error, PMX_SCHEMA_ERROR, PMX_SCHEMA_ERROR_PARSE,
                   "line %" G_GUINT64_FORMAT ": %s", line, p);
      return;
    }
  p = end + 1;
  while (*p == ' ')
    p++;
  if (g_str_has_prefix (p, "Parse error: "))
    p += strlen ("Parse error: ");
  g_set_error (error, PMX_SCHEMA_ERROR, PMX_SCHEMA_ERROR_PARSE,
               "line %" G_GUINT64_FORMAT ", column %" G_GUINT64_FORMAT ": %s",
               line, column, p);
}

PmxJsonDocument *
pmx_json_document_parse (const char *text,
                         gssize      length,
                         GError    **error)
{
  g_autoptr(JsonParser) parser = NULL;
  g_autoptr(PmxJsonDocument) doc = NULL;
  g_autoptr(GError) local_error = NULL;
  g_autoptr(GString) ptr = NULL;
  DocumentParse dp = { 0, };
  JsonNode *root;
  gsize i;

  g_return_val_if_fail (text != NULL, NULL);
  g_return_val_if_fail (error == NULL || *error == NULL, NULL);

  dp.text = text;
  dp.length = length < 0 ? strlen (text) : (gsize) length;
  dp.line_starts = g_array_new (FALSE, FALSE, sizeof (gsize));
  dp.open_lines = g_array_new (FALSE, FALSE, sizeof (int));
  dp.container_lines = g_hash_table_new (NULL, NULL);
  dp.value_lines = g_hash_table_new (NULL, NULL);
  i = 0;
  g_array_append_val (dp.line_starts, i);
  for (i = 0; i < dp.length; i++)
    if (text[i] == '\n')
      {
        gsize next = i + 1;
        g_array_append_val (dp.line_starts, next);
      }

  parser = json_parser_new ();
  dp.parser = parser;
  g_signal_connect (parser, "object-start", G_CALLBACK (document_on_start), &dp);
  g_signal_connect (parser, "array-start", G_CALLBACK (document_on_start), &dp);
  g_signal_connect (parser, "object-end", G_CALLBACK (document_on_object_end), &dp);
  g_signal_connect (parser, "array-end", G_CALLBACK (document_on_array_end), &dp);
  g_signal_connect (parser, "object-member", G_CALLBACK (document_on_object_member), &dp);
  g_signal_connect (parser, "array-element", G_CALLBACK (document_on_array_element), &dp);

  if (!json_parser_load_from_data (parser, text, (gssize) dp.length, &local_error))
    {
      document_error_from_parser (error, local_error);
      goto out;
    }
  root = json_parser_get_root (parser);
  if (root == NULL)
    {
      g_set_error_literal (error, PMX_SCHEMA_ERROR, PMX_SCHEMA_ERROR_PARSE,
                           "line 1: the document is empty, expected a JSON value");
      goto out;
    }

  doc = g_new0 (PmxJsonDocument, 1);
  doc->root = json_node_ref (root);
  doc->lines = g_hash_table_new_full (g_str_hash, g_str_equal, g_free, NULL);

  if (!JSON_NODE_HOLDS_OBJECT (root) && !JSON_NODE_HOLDS_ARRAY (root))
    {
      /* A lone scalar gets no signal; it sits on the first line that is
       * not blank. */
      int line = 1;

      for (i = 0; i < dp.length && g_ascii_isspace (text[i]); i++)
        if (text[i] == '\n')
          line++;
      g_hash_table_insert (dp.value_lines, root, GINT_TO_POINTER (line));
    }
  ptr = g_string_new ("");
  dp.doc = doc;
  json_walk_pointers (root, ptr, document_collect_line, &dp);

out:
  g_array_unref (dp.line_starts);
  g_array_unref (dp.open_lines);
  g_hash_table_unref (dp.container_lines);
  g_hash_table_unref (dp.value_lines);
  return g_steal_pointer (&doc);
}

JsonNode *
pmx_json_document_get_root (PmxJsonDocument *doc)
{
  g_return_val_if_fail (doc != NULL, NULL);
  return doc->root;
}

int
pmx_json_document_get_line (PmxJsonDocument *doc,
                            const char      *pointer)
{
  g_return_val_if_fail (doc != NULL, 0);
  g_return_val_if_fail (pointer != NULL, 0);
  return GPOINTER_TO_INT (g_hash_table_lookup (doc->lines, pointer));
}

void
pmx_json_document_free (PmxJsonDocument *doc)
{
  if (doc == NULL)
    return;
  g_clear_pointer (&doc->root, json_node_unref);
  g_clear_pointer (&doc->lines, g_hash_table_unref);
  g_free (doc);
}

/* ---- PmxSchema: documents, ids and references -------------------------- */

/* Where a schema sits: the node and the base URI in effect around it (that
 * is, before the node's own "$id" applies). */
typedef struct {
  JsonNode *node;   /* borrowed from PmxSchema.documents */
  char     *base;   /* absolute URI without fragment */
} SchemaLocation;

struct _PmxSchema {
  gatomicrefcount       ref_count;
  JsonNode             *root;
  char                 *base;           /* base URI around root */
  PmxSchemaResolveFunc  resolve_func;
  gpointer              resolve_data;

  /* Filled lazily, possibly by several validating threads; entries are
   * never removed before the schema is freed, so pointers into them stay
   * valid without the lock. */
  GMutex                lock;
  GHashTable           *documents;      /* document URI → JsonNode (owned) */
  GHashTable           *ids;            /* absolute URI → SchemaLocation */
  GHashTable           *regexes;        /* pattern → GRegex */
};

/* schema_location_free - GDestroyNotify for PmxSchema.ids */
static void
schema_location_free (gpointer data)
{
  SchemaLocation *loc = data;

  g_free (loc->base);
  g_free (loc);
}

/* uri_split - the document part of @uri (new string); *out_fragment points
 * past its '#', or at "" when it has none */
static char *
uri_split (const char  *uri,
           const char **out_fragment)
{
  const char *hash = strchr (uri, '#');

  if (hash == NULL)
    {
      *out_fragment = "";
      return g_strdup (uri);
    }
  *out_fragment = hash + 1;
  return g_strndup (uri, (gsize) (hash - uri));
}

/* uri_resolve - @ref made absolute against @base (absolute, no fragment) */
static char *
uri_resolve (const char  *base,
             const char  *ref,
             GError     **error)
{
  if (ref[0] == '#')
    return g_strconcat (base, ref, NULL);
  if (ref[0] == '\0')
    return g_strdup (base);
  return g_uri_resolve_relative (base, ref, G_URI_FLAGS_ENCODED, error);
}

/* uri_key - @uri as an index key: an empty fragment ("...#") is dropped */
static char *
uri_key (const char *uri)
{
  gsize len = strlen (uri);

  if (len > 0 && uri[len - 1] == '#')
    len--;
  return g_strndup (uri, len);
}

/* schema_id_base - the base URI inside @node when its "$id" changes it
 * (new string), or NULL when it stays @base.  A "$ref" makes every sibling,
 * "$id" included, ignored; "#name" ids name a schema but keep the base. */
static char *
schema_id_base (const char *base,
                JsonNode   *node)
{
  g_autofree char *abs = NULL;
  JsonObject *obj;
  const char *id;
  const char *fragment;

  if (!JSON_NODE_HOLDS_OBJECT (node))
    return NULL;
  obj = json_node_get_object (node);
  if (json_object_has_member (obj, "$ref"))
    return NULL;
  id = json_get_string (json_object_get_member (obj, "$id"));
  if (id == NULL || id[0] == '#' || id[0] == '\0')
    return NULL;
  abs = uri_resolve (base, id, NULL);
  if (abs == NULL)
    return NULL;
  return uri_split (abs, &fragment);
}

typedef void (*SchemaChildFunc) (JsonNode *child,
                                 gpointer  user_data);

/* schema_foreach_subschema - call @func on each subschema that a keyword of
 * @node holds ("definitions" included, unknown keywords not) */
static void
schema_foreach_subschema (JsonNode        *node,
                          SchemaChildFunc  func,
                          gpointer         user_data)
{
  static const char *const singles[] = {
    "additionalItems", "additionalProperties", "contains", "propertyNames",
    "if", "then", "else", "not", "items",
  };
  static const char *const lists[] = { "items", "allOf", "anyOf", "oneOf" };
  static const char *const maps[] = {
    "properties", "patternProperties", "definitions", "dependencies",
  };
  JsonObject *obj;
  gsize k;

  if (!JSON_NODE_HOLDS_OBJECT (node))
    return;
  obj = json_node_get_object (node);

  for (k = 0; k < G_N_ELEMENTS (singles); k++)
    {
      JsonNode *child = json_object_get_member (obj, singles[k]);

      if (child != NULL && (JSON_NODE_HOLDS_OBJECT (child) || json_is_boolean (child)))
        func (child, user_data);
    }
  for (k = 0; k < G_N_ELEMENTS (lists); k++)
    {
      JsonNode *child = json_object_get_member (obj, lists[k]);
      JsonArray *array;
      guint i;

      if (child == NULL || !JSON_NODE_HOLDS_ARRAY (child))
        continue;
      array = json_node_get_array (child);
      for (i = 0; i < json_array_get_length (array); i++)
        func (json_array_get_element (array, i), user_data);
    }
  for (k = 0; k < G_N_ELEMENTS (maps); k++)
    {
      JsonNode *child = json_object_get_member (obj, maps[k]);
      JsonObjectIter iter;
      const char *name;
      JsonNode *member;

      if (child == NULL || !JSON_NODE_HOLDS_OBJECT (child))
        continue;
      json_object_iter_init_ordered (&iter, json_node_get_object (child));
      while (json_object_iter_next_ordered (&iter, &name, &member))
        if (JSON_NODE_HOLDS_OBJECT (member) || json_is_boolean (member))
          func (member, user_data);
    }
}

/* schema_index_add - register @node under @uri unless already known (lock
 * held, or @self not yet shared) */
static void
schema_index_add (PmxSchema  *self,
                  const char *uri,
                  JsonNode   *node,
                  const char *base)
{
  g_autofree char *key = uri_key (uri);
  SchemaLocation *loc;

  if (g_hash_table_contains (self->ids, key))
    return;
  loc = g_new0 (SchemaLocation, 1);
  loc->node = node;
  loc->base = g_strdup (base);
  g_hash_table_insert (self->ids, g_steal_pointer (&key), loc);
}

typedef struct {
  PmxSchema  *self;
  const char *base;
} SchemaIndexWalk;

static void schema_index_node (PmxSchema  *self,
                               JsonNode   *node,
                               const char *base);

/* schema_index_child - SchemaChildFunc of schema_index_node() */
static void
schema_index_child (JsonNode *child,
                    gpointer  user_data)
{
  SchemaIndexWalk *walk = user_data;

  schema_index_node (walk->self, child, walk->base);
}

/* schema_index_node - register every "$id" in @node and its subschemas;
 * @base is the base URI around @node (lock held, or @self not yet shared) */
static void
schema_index_node (PmxSchema  *self,
                   JsonNode   *node,
                   const char *base)
{
  g_autofree char *inner = NULL;
  SchemaIndexWalk walk;
  JsonObject *obj;
  const char *id;

  if (!JSON_NODE_HOLDS_OBJECT (node))
    return;
  obj = json_node_get_object (node);
  id = json_get_string (json_object_get_member (obj, "$id"));
  if (id != NULL && !json_object_has_member (obj, "$ref"))
    {
      g_autofree char *abs = uri_resolve (base, id, NULL);

      if (abs != NULL)
        schema_index_add (self, abs, node, base);
      inner = schema_id_base (base, node);
    }

  walk.self = self;
  walk.base = inner != NULL ? inner : base;
  schema_foreach_subschema (node, schema_index_child, &walk);
}

/* schema_lookup - the schema registered under @uri, if any */
static gboolean
schema_lookup (PmxSchema   *self,
               const char  *uri,
               JsonNode   **out_node,
               const char **out_base)
{
  g_autofree char *key = uri_key (uri);
  SchemaLocation *loc;

  g_mutex_lock (&self->lock);
  loc = g_hash_table_lookup (self->ids, key);
  g_mutex_unlock (&self->lock);
  if (loc == NULL)
    return FALSE;
  *out_node = loc->node;
  *out_base = loc->base;
  return TRUE;
}

/* schema_add_document - take @node as the document at @uri and index it */
static void
schema_add_document (PmxSchema  *self,
                     const char *uri,
                     JsonNode   *node)
{
  g_hash_table_insert (self->documents, g_strdup (uri), node);
  schema_index_add (self, uri, node, uri);
  schema_index_node (self, node, uri);
}

/* schema_load_document - make sure the document at @uri (no fragment) is
 * loaded: the built-in meta-schema, or whatever the resolver returns */
static gboolean
schema_load_document (PmxSchema   *self,
                      const char  *uri,
                      GError     **error)
{
  g_autoptr(JsonNode) node = NULL;
  g_autoptr(GError) local_error = NULL;
  gboolean known;

  g_mutex_lock (&self->lock);
  known = g_hash_table_contains (self->documents, uri);
  g_mutex_unlock (&self->lock);
  if (known)
    return TRUE;

  if (g_str_equal (uri, SCHEMA_DRAFT07_URI) || g_str_equal (uri, SCHEMA_DRAFT07_URI_TLS))
    node = json_from_string (schema_draft07_text, NULL);
  else if (g_str_has_prefix (uri, "postmux:"))
    {
      g_set_error (error, PMX_SCHEMA_ERROR, PMX_SCHEMA_ERROR_REF,
                   "no schema has the id \"%s\", and the schema has no base URI "
                   "to fetch it from (give it an \"$id\" or a base URI)", uri);
      return FALSE;
    }
  else if (self->resolve_func == NULL)
    {
      g_set_error (error, PMX_SCHEMA_ERROR, PMX_SCHEMA_ERROR_REF,
                   "\"%s\" is not part of the schema and no resolver is set "
                   "to fetch it", uri);
      return FALSE;
    }
  else
    {
      node = self->resolve_func (uri, self->resolve_data, &local_error);
      if (node == NULL)
        {
          g_set_error (error, PMX_SCHEMA_ERROR, PMX_SCHEMA_ERROR_REF,
                       "cannot fetch \"%s\": %s", uri,
                       local_error != NULL ? local_error->message : "the resolver returned nothing");
          return FALSE;
        }
    }
  if (node == NULL || (!JSON_NODE_HOLDS_OBJECT (node) && !json_is_boolean (node)))
    {
      g_set_error (error, PMX_SCHEMA_ERROR, PMX_SCHEMA_ERROR_REF,
                   "\"%s\" is not a JSON schema, expected an object or a boolean, found %s",
                   uri, node != NULL ? json_kind (node) : "nothing");
      return FALSE;
    }

  g_mutex_lock (&self->lock);
  /* Another thread may have fetched it meanwhile; the first one wins so
   * that locations handed out earlier stay valid. */
  if (!g_hash_table_contains (self->documents, uri))
    schema_add_document (self, uri, g_steal_pointer (&node));
  g_mutex_unlock (&self->lock);
  return TRUE;
}

/* schema_get_regex - the compiled @pattern, cached (transfer none) */
static GRegex *
schema_get_regex (PmxSchema   *self,
                  const char  *pattern,
                  GError     **error)
{
  GRegex *regex;
  GRegex *known;

  g_mutex_lock (&self->lock);
  regex = g_hash_table_lookup (self->regexes, pattern);
  g_mutex_unlock (&self->lock);
  if (regex != NULL)
    return regex;

  regex = g_regex_new (pattern, 0, 0, error);
  if (regex == NULL)
    {
      g_prefix_error (error, "pattern \"%s\" is not a valid regular expression: ", pattern);
      return NULL;
    }
  g_mutex_lock (&self->lock);
  known = g_hash_table_lookup (self->regexes, pattern);
  if (known != NULL)
    {
      g_regex_unref (regex);
      regex = known;
    }
  else
    g_hash_table_insert (self->regexes, g_strdup (pattern), regex);
  g_mutex_unlock (&self->lock);
  return regex;
}

typedef struct {
  PmxSchema *self;
  GError    *error;
} SchemaPatternCheck;

/* schema_check_patterns_child - SchemaChildFunc that compiles every
 * "pattern" and "patternProperties" key below the child */
static void
schema_check_patterns_child (JsonNode *node,
                             gpointer  user_data)
{
  SchemaPatternCheck *check = user_data;
  JsonObject *obj;
  JsonNode *member;
  const char *pattern;

  if (check->error != NULL || !JSON_NODE_HOLDS_OBJECT (node))
    return;
  obj = json_node_get_object (node);
  pattern = json_get_string (json_object_get_member (obj, "pattern"));
  if (pattern != NULL && schema_get_regex (check->self, pattern, &check->error) == NULL)
    return;
  member = json_object_get_member (obj, "patternProperties");
  if (member != NULL && JSON_NODE_HOLDS_OBJECT (member))
    {
      JsonObjectIter iter;
      JsonNode *value;

      json_object_iter_init_ordered (&iter, json_node_get_object (member));
      while (json_object_iter_next_ordered (&iter, &pattern, &value))
        if (schema_get_regex (check->self, pattern, &check->error) == NULL)
          return;
    }
  schema_foreach_subschema (node, schema_check_patterns_child, check);
}

/* schema_new - a PmxSchema for @node without checking it */
static PmxSchema *
schema_new (JsonNode   *node,
            const char *base_uri)
{
  PmxSchema *self = g_new0 (PmxSchema, 1);
  const char *fragment;

  g_atomic_ref_count_init (&self->ref_count);
  g_mutex_init (&self->lock);
  self->documents = g_hash_table_new_full (g_str_hash, g_str_equal, g_free,
                                           (GDestroyNotify) json_node_unref);
  self->ids = g_hash_table_new_full (g_str_hash, g_str_equal, g_free, schema_location_free);
  self->regexes = g_hash_table_new_full (g_str_hash, g_str_equal, g_free,
                                         (GDestroyNotify) g_regex_unref);
  self->base = uri_split (base_uri != NULL ? base_uri : SCHEMA_ANONYMOUS_BASE, &fragment);
  self->root = json_node_ref (node);
  schema_add_document (self, self->base, json_node_ref (node));
  return self;
}

/* ---- Validation -------------------------------------------------------- */

/* A $ref being followed: the target schema and the instance it is applied
 * to.  Meeting the same pair again before it returns is an endless loop. */
typedef struct {
  JsonNode *schema;
  JsonNode *instance;
} ValidateRefFrame;

typedef struct {
  PmxSchema       *schema;
  PmxJsonDocument *doc;
  GString         *doc_ptr;    /* pointer of the instance inside doc + ptr */
  gsize            doc_prefix; /* length of that pointer */
  GPtrArray       *problems;   /* NULL while problems are not wanted */
  GError          *error;      /* first hard error; stops validation */
  GArray          *ref_stack;  /* ValidateRefFrame */
  GStringChunk    *strings;    /* base URIs computed during this run */
  guint            depth;
} ValidateCtx;

#define VALIDATE_COLLECTING(ctx) ((ctx)->problems != NULL)

/* Record the result of one keyword; stop at the first failure when nobody
 * wants the whole list. */
#define VALIDATE_STEP(ctx, valid, expr)                                     \
  G_STMT_START {                                                            \
    if (!(expr))                                                            \
      {                                                                     \
        (valid) = FALSE;                                                    \
        if (!VALIDATE_COLLECTING (ctx) || (ctx)->error != NULL)             \
          return FALSE;                                                     \
      }                                                                     \
  } G_STMT_END

static gboolean validate_node (ValidateCtx *ctx,
                               JsonNode    *schema,
                               const char  *base,
                               JsonNode    *instance,
                               GString     *ptr);

/* validate_report - add a problem at @ptr (only when collecting) */
G_GNUC_PRINTF (4, 5)
static void
validate_report (ValidateCtx *ctx,
                 GString     *ptr,
                 const char  *keyword,
                 const char  *format,
                 ...)
{
  PmxSchemaProblem *problem;
  va_list args;

  if (!VALIDATE_COLLECTING (ctx))
    return;
  problem = g_new0 (PmxSchemaProblem, 1);
  problem->pointer = g_strdup (ptr->str);
  problem->keyword = g_strdup (keyword);
  va_start (args, format);
  problem->message = g_strdup_vprintf (format, args);
  va_end (args);
  if (ctx->doc_ptr != NULL)
    {
      g_string_truncate (ctx->doc_ptr, ctx->doc_prefix);
      g_string_append (ctx->doc_ptr, ptr->str);
      problem->line = pmx_json_document_get_line (ctx->doc, ctx->doc_ptr->str);
    }
  g_ptr_array_add (ctx->problems, problem);
}

/* validate_fail - stop validation with a hard error (the first one wins) */
G_GNUC_PRINTF (3, 4)
static void
validate_fail (ValidateCtx *ctx,
               int          code,
               const char  *format,
               ...)
{
  va_list args;

  if (ctx->error != NULL)
    return;
  va_start (args, format);
  ctx->error = g_error_new_valist (PMX_SCHEMA_ERROR, code, format, args);
  va_end (args);
}

/* problems_new - an empty problem list */
static GPtrArray *
problems_new (void)
{
  return g_ptr_array_new_with_free_func ((GDestroyNotify) pmx_schema_problem_free);
}

/* problems_free - GDestroyNotify for lists of problem lists, NULL allowed */
static void
problems_free (gpointer data)
{
  if (data != NULL)
    g_ptr_array_unref (data);
}

/* validate_quietly - validate without reporting; when @out_problems is not
 * NULL and problems are collected, it receives them instead */
static gboolean
validate_quietly (ValidateCtx  *ctx,
                  JsonNode     *schema,
                  const char   *base,
                  JsonNode     *instance,
                  GString      *ptr,
                  GPtrArray   **out_problems)
{
  GPtrArray *saved = ctx->problems;
  gboolean ok;

  ctx->problems = out_problems != NULL && saved != NULL ? problems_new () : NULL;
  ok = validate_node (ctx, schema, base, instance, ptr);
  if (out_problems != NULL)
    *out_problems = ctx->problems;
  ctx->problems = saved;
  return ok;
}

/* json_quote - @s as a JSON string literal, for messages */
static char *
json_quote (const char *s)
{
  g_autoptr(JsonNode) node = json_node_init_string (json_node_alloc (), s);

  return json_to_string (node, FALSE);
}

/* plural - @one or @many to agree with @count */
static const char *
plural (gint64      count,
        const char *one,
        const char *many)
{
  return count == 1 ? one : many;
}

/* schema_get_count - a non-negative integer keyword, FALSE if absent or not
 * one */
static gboolean
schema_get_count (JsonObject *obj,
                  const char *keyword,
                  gint64     *out)
{
  SchemaNumber n;

  if (!json_get_number (json_object_get_member (obj, keyword), &n) || !number_is_integer (&n))
    return FALSE;
  if (n.is_int)
    *out = n.i;
  else
    *out = n.d >= (double) G_MAXINT64 ? G_MAXINT64 : (gint64) n.d;
  return TRUE;
}

/* type_matches - whether @instance is of the JSON Schema type @name */
static gboolean
type_matches (const char *name,
              JsonNode   *instance)
{
  SchemaNumber n;
  const char *kind = json_kind (instance);

  if (g_str_equal (name, "number"))
    return json_get_number (instance, &n);
  if (g_str_equal (name, "integer"))
    return json_get_number (instance, &n) && number_is_integer (&n);
  return g_str_equal (name, kind);
}

/* validate_type - "type" */
static gboolean
validate_type (ValidateCtx *ctx,
               JsonObject  *obj,
               JsonNode    *instance,
               GString     *ptr)
{
  JsonNode *type = json_object_get_member (obj, "type");
  g_autoptr(GString) expected = NULL;
  g_autofree char *found = NULL;
  const char *name;

  if (type == NULL)
    return TRUE;
  if ((name = json_get_string (type)) != NULL)
    {
      if (type_matches (name, instance))
        return TRUE;
      expected = g_string_new (name);
    }
  else if (JSON_NODE_HOLDS_ARRAY (type))
    {
      JsonArray *names = json_node_get_array (type);
      guint i, len = json_array_get_length (names);

      expected = g_string_new ("");
      for (i = 0; i < len; i++)
        {
          name = json_get_string (json_array_get_element (names, i));
          if (name == NULL)
            continue;
          if (type_matches (name, instance))
            return TRUE;
          if (expected->len > 0)
            g_string_append (expected, i + 1 == len ? " or " : ", ");
          g_string_append (expected, name);
        }
    }
  else
    return TRUE;

  found = json_describe (instance);
  validate_report (ctx, ptr, "type", "expected %s, found %s", expected->str, found);
  return FALSE;
}

/* validate_enum - "enum" */
static gboolean
validate_enum (ValidateCtx *ctx,
               JsonObject  *obj,
               JsonNode    *instance,
               GString     *ptr)
{
  JsonNode *member = json_object_get_member (obj, "enum");
  g_autoptr(GString) expected = NULL;
  g_autofree char *found = NULL;
  JsonArray *values;
  guint i, len;

  if (member == NULL || !JSON_NODE_HOLDS_ARRAY (member))
    return TRUE;
  values = json_node_get_array (member);
  len = json_array_get_length (values);
  for (i = 0; i < len; i++)
    if (json_equal (instance, json_array_get_element (values, i)))
      return TRUE;
  if (!VALIDATE_COLLECTING (ctx))
    return FALSE;

  expected = g_string_new (len == 1 ? "" : "one of ");
  for (i = 0; i < len && i < SCHEMA_ENUM_SHOWN; i++)
    {
      g_autofree char *shown = json_display (json_array_get_element (values, i));

      if (i > 0)
        g_string_append (expected, ", ");
      g_string_append (expected, shown);
    }
  if (len > SCHEMA_ENUM_SHOWN)
    g_string_append (expected, ", ...");
  found = json_describe (instance);
  validate_report (ctx, ptr, "enum", "expected %s, found %s", expected->str, found);
  return FALSE;
}

/* validate_const - "const" */
static gboolean
validate_const (ValidateCtx *ctx,
                JsonObject  *obj,
                JsonNode    *instance,
                GString     *ptr)
{
  JsonNode *value = json_object_get_member (obj, "const");
  g_autofree char *expected = NULL;
  g_autofree char *found = NULL;

  if (value == NULL || json_equal (instance, value))
    return TRUE;
  if (!VALIDATE_COLLECTING (ctx))
    return FALSE;
  expected = json_display (value);
  found = json_describe (instance);
  validate_report (ctx, ptr, "const", "expected %s, found %s", expected, found);
  return FALSE;
}

/* validate_number - multipleOf, maximum, exclusiveMaximum, minimum,
 * exclusiveMinimum */
static gboolean
validate_number (ValidateCtx *ctx,
                 JsonObject  *obj,
                 JsonNode    *instance,
                 GString     *ptr)
{
  static const struct {
    const char *keyword;
    int         sign;       /* the comparison that fails: value vs limit */
    gboolean    or_equal;
    const char *expected;
  } bounds[] = {
    { "maximum",          +1, FALSE, "at most" },
    { "exclusiveMaximum", +1, TRUE,  "less than" },
    { "minimum",          -1, FALSE, "at least" },
    { "exclusiveMinimum", -1, TRUE,  "greater than" },
  };
  SchemaNumber value, limit;
  gboolean valid = TRUE;
  gsize k;

  if (!json_get_number (instance, &value))
    return TRUE;

  if (json_get_number (json_object_get_member (obj, "multipleOf"), &limit)
      && limit.d > 0 && !number_is_multiple (&value, &limit))
    {
      g_autofree char *want = number_to_string (&limit);
      g_autofree char *found = number_to_string (&value);

      validate_report (ctx, ptr, "multipleOf", "expected a multiple of %s, found %s", want, found);
      VALIDATE_STEP (ctx, valid, FALSE);
    }

  for (k = 0; k < G_N_ELEMENTS (bounds); k++)
    {
      int cmp;

      if (!json_get_number (json_object_get_member (obj, bounds[k].keyword), &limit))
        continue;
      cmp = number_compare (&value, &limit);
      if (cmp == bounds[k].sign || (bounds[k].or_equal && cmp == 0))
        {
          g_autofree char *want = number_to_string (&limit);
          g_autofree char *found = number_to_string (&value);

          validate_report (ctx, ptr, bounds[k].keyword, "expected %s %s, found %s",
                           bounds[k].expected, want, found);
          VALIDATE_STEP (ctx, valid, FALSE);
        }
    }
  return valid;
}

/* validate_count - "max<Things>" and "min<Things>" (@max_keyword and
 * @min_keyword) against @count, which is counted in @one or @many */
static gboolean
validate_count (ValidateCtx *ctx,
                JsonObject  *obj,
                GString     *ptr,
                const char  *max_keyword,
                const char  *min_keyword,
                gint64       count,
                const char  *one,
                const char  *many)
{
  gboolean valid = TRUE;
  gint64 limit;

  if (schema_get_count (obj, max_keyword, &limit) && count > limit)
    {
      validate_report (ctx, ptr, max_keyword,
                       "expected at most %" G_GINT64_FORMAT " %s, found %" G_GINT64_FORMAT,
                       limit, plural (limit, one, many), count);
      VALIDATE_STEP (ctx, valid, FALSE);
    }
  if (schema_get_count (obj, min_keyword, &limit) && count < limit)
    {
      validate_report (ctx, ptr, min_keyword,
                       "expected at least %" G_GINT64_FORMAT " %s, found %" G_GINT64_FORMAT,
                       limit, plural (limit, one, many), count);
      VALIDATE_STEP (ctx, valid, FALSE);
    }
  return valid;
}

/* validate_get_regex - the compiled @pattern (transfer none); NULL, with
 * validation stopped, when it does not compile */
static GRegex *
validate_get_regex (ValidateCtx *ctx,
                    const char  *pattern)
{
  GError *regex_error = NULL;
  GRegex *regex = schema_get_regex (ctx->schema, pattern, &regex_error);

  if (regex == NULL)
    {
      validate_fail (ctx, PMX_SCHEMA_ERROR_INVALID, "%s", regex_error->message);
      g_error_free (regex_error);
    }
  return regex;
}

/* validate_string - maxLength, minLength (in code points), pattern */
static gboolean
validate_string (ValidateCtx *ctx,
                 JsonObject  *obj,
                 JsonNode    *instance,
                 GString     *ptr)
{
  const char *s = json_get_string (instance);
  const char *pattern;
  gboolean valid = TRUE;

  if (s == NULL)
    return TRUE;
  VALIDATE_STEP (ctx, valid, validate_count (ctx, obj, ptr, "maxLength", "minLength",
                                             g_utf8_strlen (s, -1), "character", "characters"));

  pattern = json_get_string (json_object_get_member (obj, "pattern"));
  if (pattern != NULL)
    {
      GRegex *regex = validate_get_regex (ctx, pattern);

      if (regex == NULL)
        return FALSE;
      if (!g_regex_match (regex, s, 0, NULL))
        {
          g_autofree char *found = json_display (instance);

          validate_report (ctx, ptr, "pattern", "expected a string matching \"%s\", found %s",
                           pattern, found);
          VALIDATE_STEP (ctx, valid, FALSE);
        }
    }
  return valid;
}

/* validate_array - items, additionalItems, maxItems, minItems, uniqueItems,
 * contains */
static gboolean
validate_array (ValidateCtx *ctx,
                JsonObject  *obj,
                const char  *base,
                JsonNode    *instance,
                GString     *ptr)
{
  JsonArray *array;
  JsonNode *items, *additional, *contains;
  gboolean valid = TRUE;
  guint i, len, covered = 0;

  if (!JSON_NODE_HOLDS_ARRAY (instance))
    return TRUE;
  array = json_node_get_array (instance);
  len = json_array_get_length (array);

  items = json_object_get_member (obj, "items");
  if (items != NULL && JSON_NODE_HOLDS_ARRAY (items))
    {
      JsonArray *tuple = json_node_get_array (items);

      covered = MIN (len, json_array_get_length (tuple));
      for (i = 0; i < covered; i++)
        {
          gsize old = pointer_push_index (ptr, i);
          gboolean ok = validate_node (ctx, json_array_get_element (tuple, i), base,
                                       json_array_get_element (array, i), ptr);

          g_string_truncate (ptr, old);
          VALIDATE_STEP (ctx, valid, ok);
        }

      additional = json_object_get_member (obj, "additionalItems");
      for (i = covered; additional != NULL && i < len; i++)
        {
          gsize old = pointer_push_index (ptr, i);
          gboolean ok;

          if (json_is_boolean (additional) && !json_node_get_boolean (additional))
            {
              validate_report (ctx, ptr, "additionalItems",
                               "unexpected item %u (additionalItems is false, at most %u allowed)",
                               i, json_array_get_length (tuple));
              ok = FALSE;
            }
          else
            ok = validate_node (ctx, additional, base, json_array_get_element (array, i), ptr);
          g_string_truncate (ptr, old);
          VALIDATE_STEP (ctx, valid, ok);
        }
    }
  else if (items != NULL)
    {
      for (i = 0; i < len; i++)
        {
          gsize old = pointer_push_index (ptr, i);
          gboolean ok = validate_node (ctx, items, base, json_array_get_element (array, i), ptr);

          g_string_truncate (ptr, old);
          VALIDATE_STEP (ctx, valid, ok);
        }
    }

  VALIDATE_STEP (ctx, valid, validate_count (ctx, obj, ptr, "maxItems", "minItems",
                                             len, "item", "items"));

  if (json_is_boolean (json_object_get_member (obj, "uniqueItems"))
      && json_node_get_boolean (json_object_get_member (obj, "uniqueItems")))
    {
      for (i = 1; i < len; i++)
        {
          guint j;

          for (j = 0; j < i; j++)
            if (json_equal (json_array_get_element (array, i), json_array_get_element (array, j)))
              break;
          if (j < i)
            {
              gsize old = pointer_push_index (ptr, i);

              validate_report (ctx, ptr, "uniqueItems",
                               "expected unique items, found item %u equal to item %u", i, j);
              g_string_truncate (ptr, old);
              VALIDATE_STEP (ctx, valid, FALSE);
            }
        }
    }

  contains = json_object_get_member (obj, "contains");
  if (contains != NULL)
    {
      gboolean found = FALSE;

      for (i = 0; i < len && !found; i++)
        {
          gsize old = pointer_push_index (ptr, i);

          found = validate_quietly (ctx, contains, base, json_array_get_element (array, i), ptr, NULL);
          g_string_truncate (ptr, old);
          if (ctx->error != NULL)
            return FALSE;
        }
      if (!found)
        {
          if (len == 0)
            validate_report (ctx, ptr, "contains",
                             "expected an item matching the \"contains\" schema, found an empty array");
          else
            validate_report (ctx, ptr, "contains",
                             "expected an item matching the \"contains\" schema, found none among %u %s",
                             len, plural (len, "item", "items"));
          VALIDATE_STEP (ctx, valid, FALSE);
        }
    }
  return valid;
}

/* validate_member - properties, patternProperties and additionalProperties
 * for the member @name of the object at @ptr */
static gboolean
validate_member (ValidateCtx *ctx,
                 JsonObject  *obj,
                 const char  *base,
                 const char  *name,
                 JsonNode    *value,
                 GString     *ptr)
{
  JsonNode *properties = json_object_get_member (obj, "properties");
  JsonNode *patterns = json_object_get_member (obj, "patternProperties");
  JsonNode *additional = json_object_get_member (obj, "additionalProperties");
  JsonNode *sub;
  gboolean valid = TRUE;
  gboolean matched = FALSE;

  if (properties != NULL && JSON_NODE_HOLDS_OBJECT (properties)
      && (sub = json_object_get_member (json_node_get_object (properties), name)) != NULL)
    {
      matched = TRUE;
      VALIDATE_STEP (ctx, valid, validate_node (ctx, sub, base, value, ptr));
    }

  if (patterns != NULL && JSON_NODE_HOLDS_OBJECT (patterns))
    {
      JsonObjectIter iter;
      const char *pattern;

      json_object_iter_init_ordered (&iter, json_node_get_object (patterns));
      while (json_object_iter_next_ordered (&iter, &pattern, &sub))
        {
          GRegex *regex = validate_get_regex (ctx, pattern);

          if (regex == NULL)
            return FALSE;
          if (!g_regex_match (regex, name, 0, NULL))
            continue;
          matched = TRUE;
          VALIDATE_STEP (ctx, valid, validate_node (ctx, sub, base, value, ptr));
        }
    }

  if (matched || additional == NULL)
    return valid;
  if (json_is_boolean (additional) && !json_node_get_boolean (additional))
    {
      g_autofree char *quoted = json_quote (name);

      validate_report (ctx, ptr, "additionalProperties",
                       "unknown property %s (additionalProperties is false)", quoted);
      return FALSE;
    }
  VALIDATE_STEP (ctx, valid, validate_node (ctx, additional, base, value, ptr));
  return valid;
}

/* validate_object - maxProperties, minProperties, required, properties,
 * patternProperties, additionalProperties, dependencies, propertyNames */
static gboolean
validate_object (ValidateCtx *ctx,
                 JsonObject  *obj,
                 const char  *base,
                 JsonNode    *instance,
                 GString     *ptr)
{
  JsonObject *object;
  JsonNode *member;
  JsonObjectIter iter;
  const char *name;
  JsonNode *value;
  gboolean valid = TRUE;

  if (!JSON_NODE_HOLDS_OBJECT (instance))
    return TRUE;
  object = json_node_get_object (instance);

  VALIDATE_STEP (ctx, valid, validate_count (ctx, obj, ptr, "maxProperties", "minProperties",
                                             json_object_get_size (object), "property",
                                             "properties"));

  member = json_object_get_member (obj, "required");
  if (member != NULL && JSON_NODE_HOLDS_ARRAY (member))
    {
      JsonArray *required = json_node_get_array (member);
      guint i;

      for (i = 0; i < json_array_get_length (required); i++)
        {
          name = json_get_string (json_array_get_element (required, i));
          if (name != NULL && !json_object_has_member (object, name))
            {
              g_autofree char *quoted = json_quote (name);

              validate_report (ctx, ptr, "required", "missing required property %s", quoted);
              VALIDATE_STEP (ctx, valid, FALSE);
            }
        }
    }

  if (json_object_has_member (obj, "properties")
      || json_object_has_member (obj, "patternProperties")
      || json_object_has_member (obj, "additionalProperties"))
    {
      json_object_iter_init_ordered (&iter, object);
      while (json_object_iter_next_ordered (&iter, &name, &value))
        {
          gsize old = pointer_push_key (ptr, name);
          gboolean ok = validate_member (ctx, obj, base, name, value, ptr);

          g_string_truncate (ptr, old);
          VALIDATE_STEP (ctx, valid, ok);
        }
    }

  member = json_object_get_member (obj, "dependencies");
  if (member != NULL && JSON_NODE_HOLDS_OBJECT (member))
    {
      JsonNode *dependency;

      json_object_iter_init_ordered (&iter, json_node_get_object (member));
      while (json_object_iter_next_ordered (&iter, &name, &dependency))
        {
          if (!json_object_has_member (object, name))
            continue;
          if (JSON_NODE_HOLDS_ARRAY (dependency))
            {
              JsonArray *needed = json_node_get_array (dependency);
              guint i;

              for (i = 0; i < json_array_get_length (needed); i++)
                {
                  const char *other = json_get_string (json_array_get_element (needed, i));

                  if (other != NULL && !json_object_has_member (object, other))
                    {
                      g_autofree char *quoted_other = json_quote (other);
                      g_autofree char *quoted = json_quote (name);

                      validate_report (ctx, ptr, "dependencies",
                                       "missing property %s, which property %s requires",
                                       quoted_other, quoted);
                      VALIDATE_STEP (ctx, valid, FALSE);
                    }
                }
            }
          else
            VALIDATE_STEP (ctx, valid, validate_node (ctx, dependency, base, instance, ptr));
        }
    }

  member = json_object_get_member (obj, "propertyNames");
  if (member != NULL)
    {
      json_object_iter_init_ordered (&iter, object);
      while (json_object_iter_next_ordered (&iter, &name, &value))
        {
          g_autoptr(JsonNode) key = json_node_init_string (json_node_alloc (), name);
          g_autoptr(GPtrArray) problems = NULL;
          gsize old = pointer_push_key (ptr, name);
          gboolean ok = validate_quietly (ctx, member, base, key, ptr, &problems);

          if (!ok && ctx->error == NULL)
            {
              g_autofree char *quoted = json_quote (name);
              const PmxSchemaProblem *first = problems != NULL && problems->len > 0
                                              ? g_ptr_array_index (problems, 0) : NULL;

              validate_report (ctx, ptr, "propertyNames", "property name %s is not allowed: %s",
                               quoted, first != NULL ? first->message : "it fails propertyNames");
            }
          g_string_truncate (ptr, old);
          VALIDATE_STEP (ctx, valid, ok);
        }
    }
  return valid;
}

/* problems_plausible - whether @problems say the value has the right shape
 * but wrong details (no "type", "const", "enum" or false schema failed at
 * the value itself) */
static gboolean
problems_plausible (GPtrArray  *problems,
                    const char *pointer)
{
  guint i;

  if (problems == NULL || problems->len == 0)
    return FALSE;
  for (i = 0; i < problems->len; i++)
    {
      const PmxSchemaProblem *problem = g_ptr_array_index (problems, i);

      if (g_str_equal (problem->pointer, pointer)
          && (g_str_equal (problem->keyword, "type") || g_str_equal (problem->keyword, "const")
              || g_str_equal (problem->keyword, "enum") || g_str_equal (problem->keyword, "false")))
        return FALSE;
    }
  return TRUE;
}

/* validate_report_no_match - report that none of the alternatives of
 * anyOf/oneOf matched.  When exactly one alternative has the value's shape,
 * its own problems are the useful ones; otherwise say it in one line. */
static void
validate_report_no_match (ValidateCtx *ctx,
                          const char  *keyword,
                          GPtrArray   *attempts,
                          JsonNode    *instance,
                          GString     *ptr)
{
  g_autofree char *found = NULL;
  guint i, plausible = 0, which = 0;

  if (!VALIDATE_COLLECTING (ctx))
    return;
  for (i = 0; i < attempts->len; i++)
    if (problems_plausible (g_ptr_array_index (attempts, i), ptr->str))
      {
        plausible++;
        which = i;
      }
  if (plausible == 1)
    {
      GPtrArray *problems = g_ptr_array_index (attempts, which);

      for (i = 0; i < problems->len; i++)
        g_ptr_array_add (ctx->problems, g_steal_pointer (&g_ptr_array_index (problems, i)));
      g_ptr_array_set_size (problems, 0);
      return;
    }
  found = json_describe (instance);
  validate_report (ctx, ptr, keyword, "expected a value matching one of the %u allowed forms, found %s",
                   attempts->len, found);
}

/* validate_combinators - allOf, anyOf, oneOf, not */
static gboolean
validate_combinators (ValidateCtx *ctx,
                      JsonObject  *obj,
                      const char  *base,
                      JsonNode    *instance,
                      GString     *ptr)
{
  JsonNode *member;
  gboolean valid = TRUE;
  guint i;

  member = json_object_get_member (obj, "allOf");
  if (member != NULL && JSON_NODE_HOLDS_ARRAY (member))
    {
      JsonArray *all = json_node_get_array (member);

      for (i = 0; i < json_array_get_length (all); i++)
        VALIDATE_STEP (ctx, valid, validate_node (ctx, json_array_get_element (all, i), base, instance, ptr));
    }

  member = json_object_get_member (obj, "anyOf");
  if (member != NULL && JSON_NODE_HOLDS_ARRAY (member))
    {
      JsonArray *any = json_node_get_array (member);
      g_autoptr(GPtrArray) attempts = g_ptr_array_new_with_free_func (problems_free);
      gboolean matched = FALSE;

      for (i = 0; i < json_array_get_length (any) && !matched; i++)
        {
          GPtrArray *problems = NULL;

          matched = validate_quietly (ctx, json_array_get_element (any, i), base, instance, ptr, &problems);
          g_ptr_array_add (attempts, problems);
          if (ctx->error != NULL)
            return FALSE;
        }
      if (!matched)
        {
          validate_report_no_match (ctx, "anyOf", attempts, instance, ptr);
          VALIDATE_STEP (ctx, valid, FALSE);
        }
    }

  member = json_object_get_member (obj, "oneOf");
  if (member != NULL && JSON_NODE_HOLDS_ARRAY (member))
    {
      JsonArray *one = json_node_get_array (member);
      g_autoptr(GPtrArray) attempts = g_ptr_array_new_with_free_func (problems_free);
      guint len = json_array_get_length (one);
      guint matches = 0, first = 0, second = 0;

      for (i = 0; i < len && matches < 2; i++)
        {
          GPtrArray *problems = NULL;

          if (validate_quietly (ctx, json_array_get_element (one, i), base, instance, ptr, &problems))
            {
              if (matches++ == 0)
                first = i;
              else
                second = i;
            }
          g_ptr_array_add (attempts, problems);
          if (ctx->error != NULL)
            return FALSE;
        }
      if (matches == 0)
        {
          validate_report_no_match (ctx, "oneOf", attempts, instance, ptr);
          VALIDATE_STEP (ctx, valid, FALSE);
        }
      else if (matches > 1)
        {
          validate_report (ctx, ptr, "oneOf",
                           "expected exactly one of the %u allowed forms to match, found "
                           "several (forms %u and %u)", len, first + 1, second + 1);
          VALIDATE_STEP (ctx, valid, FALSE);
        }
    }

  member = json_object_get_member (obj, "not");
  if (member != NULL)
    {
      gboolean matched = validate_quietly (ctx, member, base, instance, ptr, NULL);

      if (ctx->error != NULL)
        return FALSE;
      if (matched)
        {
          g_autofree char *found = json_describe (instance);

          validate_report (ctx, ptr, "not",
                           "expected a value that does not match the \"not\" schema, found %s",
                           found);
          VALIDATE_STEP (ctx, valid, FALSE);
        }
    }
  return valid;
}

/* validate_conditional - if, then, else */
static gboolean
validate_conditional (ValidateCtx *ctx,
                      JsonObject  *obj,
                      const char  *base,
                      JsonNode    *instance,
                      GString     *ptr)
{
  JsonNode *condition = json_object_get_member (obj, "if");
  JsonNode *branch;
  gboolean holds;

  if (condition == NULL)
    return TRUE;
  holds = validate_quietly (ctx, condition, base, instance, ptr, NULL);
  if (ctx->error != NULL)
    return FALSE;
  branch = json_object_get_member (obj, holds ? "then" : "else");
  if (branch == NULL)
    return TRUE;
  return validate_node (ctx, branch, base, instance, ptr);
}

/* validate_resolve_ref - the schema that @ref names, seen from @base, and
 * the base URI around it */
static gboolean
validate_resolve_ref (ValidateCtx  *ctx,
                      const char   *ref,
                      const char   *base,
                      JsonNode    **out_node,
                      const char  **out_base)
{
  g_autoptr(GError) local_error = NULL;
  g_autofree char *abs = NULL;
  g_autofree char *doc = NULL;
  g_autofree char *pointer = NULL;
  const char *fragment;
  const char *p;
  JsonNode *node;
  const char *node_base;

  abs = uri_resolve (base, ref, &local_error);
  if (abs == NULL)
    {
      validate_fail (ctx, PMX_SCHEMA_ERROR_REF, "$ref \"%s\" is not a valid URI reference: %s",
                     ref, local_error->message);
      return FALSE;
    }
  doc = uri_split (abs, &fragment);

  /* "#name" and whole documents are looked up by id; fetch the document
   * only when nothing loaded so far declares that id. */
  if (!schema_lookup (ctx->schema, fragment[0] == '/' ? doc : abs, &node, &node_base))
    {
      if (!schema_load_document (ctx->schema, doc, &local_error))
        {
          validate_fail (ctx, PMX_SCHEMA_ERROR_REF, "cannot resolve $ref \"%s\": %s",
                         ref, local_error->message);
          return FALSE;
        }
      if (!schema_lookup (ctx->schema, fragment[0] == '/' ? doc : abs, &node, &node_base))
        {
          validate_fail (ctx, PMX_SCHEMA_ERROR_REF,
                         "cannot resolve $ref \"%s\": no schema has the id \"%s\"", ref, abs);
          return FALSE;
        }
    }

  if (fragment[0] == '/')
    {
      pointer = g_uri_unescape_string (fragment, NULL);
      if (pointer == NULL)
        {
          validate_fail (ctx, PMX_SCHEMA_ERROR_REF,
                         "cannot resolve $ref \"%s\": bad %%-escape in the fragment", ref);
          return FALSE;
        }
      for (p = pointer; *p == '/'; )
        {
          const char *start = p + 1;
          const char *end = strchrnul (start, '/');
          g_autofree char *token = pointer_unescape_token (start, (gsize) (end - start));
          g_autofree char *inner = schema_id_base (node_base, node);
          JsonNode *child = NULL;

          if (token != NULL && JSON_NODE_HOLDS_OBJECT (node))
            child = json_object_get_member (json_node_get_object (node), token);
          else if (token != NULL && JSON_NODE_HOLDS_ARRAY (node))
            {
              JsonArray *array = json_node_get_array (node);
              guint64 i;

              if (g_ascii_string_to_unsigned (token, 10, 0, G_MAXUINT, &i, NULL)
                  && (token[0] != '0' || token[1] == '\0')
                  && i < json_array_get_length (array))
                child = json_array_get_element (array, (guint) i);
            }
          if (child == NULL)
            {
              validate_fail (ctx, PMX_SCHEMA_ERROR_REF,
                             "cannot resolve $ref \"%s\": there is no \"%.*s\" in \"%s\"",
                             ref, (int) (end - start), start, doc);
              return FALSE;
            }
          if (inner != NULL)
            node_base = g_string_chunk_insert_const (ctx->strings, inner);
          node = child;
          p = end;
        }
    }

  *out_node = node;
  *out_base = node_base;
  return TRUE;
}

/* validate_ref - follow "$ref"; its siblings are ignored (draft-07 8.3) */
static gboolean
validate_ref (ValidateCtx *ctx,
              const char  *ref,
              const char  *base,
              JsonNode    *instance,
              GString     *ptr)
{
  ValidateRefFrame frame;
  const char *target_base;
  JsonNode *target;
  gboolean valid;
  guint i;

  if (!validate_resolve_ref (ctx, ref, base, &target, &target_base))
    return FALSE;
  for (i = 0; i < ctx->ref_stack->len; i++)
    {
      ValidateRefFrame *open = &g_array_index (ctx->ref_stack, ValidateRefFrame, i);

      if (open->schema == target && open->instance == instance)
        {
          validate_fail (ctx, PMX_SCHEMA_ERROR_REF,
                         "$ref \"%s\" loops back to itself without consuming any of the "
                         "value at \"%s\"", ref, ptr->len > 0 ? ptr->str : "/");
          return FALSE;
        }
    }
  frame.schema = target;
  frame.instance = instance;
  g_array_append_val (ctx->ref_stack, frame);
  valid = validate_node (ctx, target, target_base, instance, ptr);
  g_array_set_size (ctx->ref_stack, ctx->ref_stack->len - 1);
  return valid;
}

/* validate_keywords - every keyword of the object schema @obj */
static gboolean
validate_keywords (ValidateCtx *ctx,
                   JsonObject  *obj,
                   const char  *base,
                   JsonNode    *instance,
                   GString     *ptr)
{
  const char *ref = json_get_string (json_object_get_member (obj, "$ref"));
  gboolean valid = TRUE;

  if (ref != NULL)
    return validate_ref (ctx, ref, base, instance, ptr);

  VALIDATE_STEP (ctx, valid, validate_type (ctx, obj, instance, ptr));
  VALIDATE_STEP (ctx, valid, validate_enum (ctx, obj, instance, ptr));
  VALIDATE_STEP (ctx, valid, validate_const (ctx, obj, instance, ptr));
  VALIDATE_STEP (ctx, valid, validate_number (ctx, obj, instance, ptr));
  VALIDATE_STEP (ctx, valid, validate_string (ctx, obj, instance, ptr));
  VALIDATE_STEP (ctx, valid, validate_array (ctx, obj, base, instance, ptr));
  VALIDATE_STEP (ctx, valid, validate_object (ctx, obj, base, instance, ptr));
  VALIDATE_STEP (ctx, valid, validate_conditional (ctx, obj, base, instance, ptr));
  VALIDATE_STEP (ctx, valid, validate_combinators (ctx, obj, base, instance, ptr));
  return valid;
}

/* validate_node - apply @schema (with @base the base URI around it) to
 * @instance, which sits at @ptr */
static gboolean
validate_node (ValidateCtx *ctx,
               JsonNode    *schema,
               const char  *base,
               JsonNode    *instance,
               GString     *ptr)
{
  g_autofree char *inner = NULL;
  gboolean valid;

  if (ctx->error != NULL)
    return FALSE;
  if (json_is_boolean (schema))
    {
      g_autofree char *found = NULL;

      if (json_node_get_boolean (schema))
        return TRUE;
      if (VALIDATE_COLLECTING (ctx))
        {
          found = json_describe (instance);
          validate_report (ctx, ptr, "false", "expected no value here (the schema is false), found %s",
                           found);
        }
      return FALSE;
    }
  if (!JSON_NODE_HOLDS_OBJECT (schema))
    {
      validate_fail (ctx, PMX_SCHEMA_ERROR_INVALID,
                     "a subschema is %s, expected an object or a boolean", json_kind (schema));
      return FALSE;
    }
  if (ctx->depth >= SCHEMA_MAX_DEPTH)
    {
      validate_fail (ctx, PMX_SCHEMA_ERROR_REF,
                     "validation nests deeper than %d levels at \"%s\": the schema's $refs "
                     "recurse without end, or the document nests too deeply",
                     SCHEMA_MAX_DEPTH, ptr->len > 0 ? ptr->str : "/");
      return FALSE;
    }

  inner = schema_id_base (base, schema);
  if (inner != NULL)
    base = g_string_chunk_insert_const (ctx->strings, inner);
  ctx->depth++;
  valid = validate_keywords (ctx, json_node_get_object (schema), base, instance, ptr);
  ctx->depth--;
  return valid;
}

typedef struct {
  GHashTable *order;     /* JSON pointer → GUINT_TO_POINTER (place) */
  guint       counter;   /* places handed out so far */
} ProblemOrder;

/* problems_number_pointer - JsonWalkFunc: give the value at @ptr the next
 * place in document order */
static gboolean
problems_number_pointer (JsonNode *node,
                         GString  *ptr,
                         gpointer  user_data)
{
  ProblemOrder *po = user_data;

  g_hash_table_insert (po->order, g_strdup (ptr->str), GUINT_TO_POINTER (++po->counter));
  return FALSE;
}

typedef struct {
  PmxSchemaProblem *problem;
  guint             order;   /* place of its value in the document */
  guint             seq;     /* place in which it was found */
} ProblemSortEntry;

/* problems_compare - document order, then discovery order */
static int
problems_compare (gconstpointer a,
                  gconstpointer b)
{
  const ProblemSortEntry *pa = a, *pb = b;

  if (pa->order != pb->order)
    return pa->order < pb->order ? -1 : 1;
  return (pa->seq > pb->seq) - (pa->seq < pb->seq);
}

/* problems_sort - put @problems in document order */
static void
problems_sort (GPtrArray *problems,
               JsonNode  *instance)
{
  g_autoptr(GHashTable) order = NULL;
  g_autoptr(GString) ptr = NULL;
  g_autofree ProblemSortEntry *entries = NULL;
  ProblemOrder po;
  guint i;

  if (problems->len < 2)
    return;
  order = g_hash_table_new_full (g_str_hash, g_str_equal, g_free, NULL);
  ptr = g_string_new ("");
  po.order = order;
  po.counter = 0;
  json_walk_pointers (instance, ptr, problems_number_pointer, &po);

  entries = g_new (ProblemSortEntry, problems->len);
  for (i = 0; i < problems->len; i++)
    {
      PmxSchemaProblem *problem = g_ptr_array_index (problems, i);
      gpointer place;

      entries[i].problem = problem;
      entries[i].seq = i;
      entries[i].order = g_hash_table_lookup_extended (order, problem->pointer, NULL, &place)
                         ? GPOINTER_TO_UINT (place) : G_MAXUINT;
    }
  qsort (entries, problems->len, sizeof *entries, problems_compare);
  for (i = 0; i < problems->len; i++)
    problems->pdata[i] = entries[i].problem;
}

/* document_is_node - JsonWalkFunc: whether @node is the one sought (by
 * identity) */
static gboolean
document_is_node (JsonNode *node,
                  GString  *ptr,
                  gpointer  user_data)
{
  return node == user_data;
}

/* schema_validate - pmx_schema_validate() without argument checks */
static gboolean
schema_validate (PmxSchema        *self,
                 JsonNode         *instance,
                 PmxJsonDocument  *doc,
                 GPtrArray       **out_problems,
                 GError          **error)
{
  g_autoptr(GString) ptr = g_string_new ("");
  g_autoptr(GPtrArray) problems = out_problems != NULL ? problems_new () : NULL;
  ValidateCtx ctx = { 0, };
  gboolean valid;

  ctx.schema = self;
  ctx.doc = doc;
  ctx.problems = problems;
  if (doc != NULL && problems != NULL)
    {
      /* @instance may be a value inside @doc (a transport's options, say):
       * its problems then take the lines of that value's place. */
      ctx.doc_ptr = g_string_new ("");
      if (json_walk_pointers (doc->root, ctx.doc_ptr, document_is_node, instance))
        ctx.doc_prefix = ctx.doc_ptr->len;
      else
        {
          g_string_free (ctx.doc_ptr, TRUE);
          ctx.doc_ptr = NULL;
        }
    }
  ctx.ref_stack = g_array_new (FALSE, FALSE, sizeof (ValidateRefFrame));
  ctx.strings = g_string_chunk_new (256);

  valid = validate_node (&ctx, self->root, self->base, instance, ptr);

  g_array_unref (ctx.ref_stack);
  g_string_chunk_free (ctx.strings);
  if (ctx.doc_ptr != NULL)
    g_string_free (ctx.doc_ptr, TRUE);
  if (out_problems != NULL)
    *out_problems = NULL;
  if (ctx.error != NULL)
    {
      g_propagate_error (error, ctx.error);
      return FALSE;
    }
  if (valid)
    return TRUE;
  if (out_problems != NULL)
    {
      problems_sort (problems, instance);
      *out_problems = g_steal_pointer (&problems);
    }
  return FALSE;
}

/* ---- PmxSchema: public API --------------------------------------------- */

/* schema_get_draft07 - the draft-07 meta-schema, built once (transfer none) */
static PmxSchema *
schema_get_draft07 (void)
{
  static PmxSchema *draft07 = NULL;

  if (g_once_init_enter (&draft07))
    {
      g_autoptr(JsonNode) node = json_from_string (schema_draft07_text, NULL);

      g_assert_nonnull (node);
      g_once_init_leave (&draft07, schema_new (node, SCHEMA_DRAFT07_URI));
    }
  return draft07;
}

/* schema_new_checked - a PmxSchema for @node once it proved to be a
 * draft-07 schema; @doc, if given, supplies lines for the complaints */
static PmxSchema *
schema_new_checked (JsonNode         *node,
                    const char       *base_uri,
                    PmxJsonDocument  *doc,
                    GError          **error)
{
  g_autoptr(GPtrArray) problems = NULL;
  g_autoptr(PmxSchema) self = NULL;
  SchemaPatternCheck check = { NULL, NULL };

  if (base_uri != NULL && g_uri_peek_scheme (base_uri) == NULL)
    {
      g_set_error (error, PMX_SCHEMA_ERROR, PMX_SCHEMA_ERROR_INVALID,
                   "base URI \"%s\" is not an absolute URI", base_uri);
      return NULL;
    }
  if (!schema_validate (schema_get_draft07 (), node, doc, &problems, error))
    {
      g_autoptr(GString) text = NULL;
      guint i;

      if (problems == NULL)
        return NULL;
      text = g_string_new ("not a valid JSON Schema (draft-07): ");
      for (i = 0; i < problems->len && i < 5; i++)
        {
          g_autofree char *line = pmx_schema_problem_to_string (g_ptr_array_index (problems, i));

          if (i > 0)
            g_string_append (text, "; ");
          g_string_append (text, line);
        }
      if (problems->len > 5)
        g_string_append_printf (text, "; and %u more", problems->len - 5);
      g_set_error_literal (error, PMX_SCHEMA_ERROR, PMX_SCHEMA_ERROR_INVALID, text->str);
      return NULL;
    }

  self = schema_new (node, base_uri);
  check.self = self;
  schema_check_patterns_child (node, &check);
  if (check.error != NULL)
    {
      g_set_error (error, PMX_SCHEMA_ERROR, PMX_SCHEMA_ERROR_INVALID,
                   "not a valid JSON Schema (draft-07): %s", check.error->message);
      g_error_free (check.error);
      return NULL;
    }
  return g_steal_pointer (&self);
}

/**
 * pmx_schema_new_from_node:
 * @schema: (transfer none): the schema; it must not change while the
 *   returned PmxSchema lives
 * @base_uri: (nullable): absolute URI the schema was loaded from
 *
 * Returns: (transfer full): the schema, or NULL with @error set
 *   (PMX_SCHEMA_ERROR_INVALID)
 */
PmxSchema *
pmx_schema_new_from_node (JsonNode    *schema,
                          const char  *base_uri,
                          GError     **error)
{
  g_return_val_if_fail (schema != NULL, NULL);
  g_return_val_if_fail (error == NULL || *error == NULL, NULL);

  return schema_new_checked (schema, base_uri, NULL, error);
}

/**
 * pmx_schema_new_from_string:
 * @text: the schema as JSON text
 * @base_uri: (nullable): absolute URI the schema was loaded from
 *
 * Returns: (transfer full): the schema, or NULL with @error set
 *   (PMX_SCHEMA_ERROR_PARSE or PMX_SCHEMA_ERROR_INVALID, with lines)
 */
PmxSchema *
pmx_schema_new_from_string (const char  *text,
                            const char  *base_uri,
                            GError     **error)
{
  g_autoptr(PmxJsonDocument) doc = NULL;

  g_return_val_if_fail (text != NULL, NULL);
  g_return_val_if_fail (error == NULL || *error == NULL, NULL);

  doc = pmx_json_document_parse (text, -1, error);
  if (doc == NULL)
    return NULL;
  return schema_new_checked (doc->root, base_uri, doc, error);
}

/**
 * pmx_schema_set_resolver:
 * @func: (nullable): called for each document a $ref names outside the
 *   schema, once per URI; may be called from any thread that validates
 *
 * Set before the first validation; remote documents are cached for the
 * schema's lifetime.
 */
void
pmx_schema_set_resolver (PmxSchema            *schema,
                         PmxSchemaResolveFunc  func,
                         gpointer              user_data)
{
  g_return_if_fail (schema != NULL);

  schema->resolve_func = func;
  schema->resolve_data = user_data;
}

PmxSchema *
pmx_schema_ref (PmxSchema *schema)
{
  g_return_val_if_fail (schema != NULL, NULL);

  g_atomic_ref_count_inc (&schema->ref_count);
  return schema;
}

void
pmx_schema_unref (PmxSchema *schema)
{
  g_return_if_fail (schema != NULL);

  if (!g_atomic_ref_count_dec (&schema->ref_count))
    return;
  g_clear_pointer (&schema->regexes, g_hash_table_unref);
  g_clear_pointer (&schema->ids, g_hash_table_unref);
  g_clear_pointer (&schema->documents, g_hash_table_unref);
  g_clear_pointer (&schema->root, json_node_unref);
  g_clear_pointer (&schema->base, g_free);
  g_mutex_clear (&schema->lock);
  g_free (schema);
}

/**
 * pmx_schema_validate:
 *
 * @instance may be @doc's root or any value inside it (found by identity):
 * problem pointers are always relative to @instance, lines come from where
 * @instance sits in @doc.  When @instance is valid, or on an error,
 * *@out_problems is set to NULL.
 */
gboolean
pmx_schema_validate (PmxSchema        *schema,
                     JsonNode         *instance,
                     PmxJsonDocument  *doc,
                     GPtrArray       **out_problems,
                     GError          **error)
{
  g_return_val_if_fail (schema != NULL, FALSE);
  g_return_val_if_fail (instance != NULL, FALSE);
  g_return_val_if_fail (error == NULL || *error == NULL, FALSE);

  return schema_validate (schema, instance, doc, out_problems, error);
}

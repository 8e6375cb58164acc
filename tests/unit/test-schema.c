/* SPDX-License-Identifier: GPL-3.0-or-later */
/*
 * test-schema.c - PmxSchema and PmxJsonDocument: what a user is told.
 *
 * What: table-driven cases (after json-glib's tests/invalid.c) validate
 * config-like documents against a config-like schema and assert every
 * problem exactly: pointer, keyword, message and line.  Further tests pin
 * the error codes, line tracking for nested values, $ref resolution and the
 * recursion guard.  The draft-07 conformance suite is test-schema-suite.c.
 *
 * Trusts: nothing outside this file.
 *
 * Fails: through g_assert_*(); run with --tap.
 */
#include "pmx-schema.h"

#include <string.h>

static const char config_schema[] =
  "{\n"
  "  \"$id\": \"https://postmux.example/schemas/config.json\",\n"
  "  \"type\": \"object\",\n"
  "  \"required\": [\"listen\", \"transports\"],\n"
  "  \"additionalProperties\": false,\n"
  "  \"properties\": {\n"
  "    \"listen\": { \"type\": \"string\", \"pattern\": \"^[^:]+:[0-9]+$\" },\n"
  "    \"log_level\": { \"enum\": [\"debug\", \"info\", \"warning\"] },\n"
  "    \"transports\": {\n"
  "      \"type\": \"object\",\n"
  "      \"additionalProperties\": { \"$ref\": \"#/definitions/transport\" }\n"
  "    }\n"
  "  },\n"
  "  \"definitions\": {\n"
  "    \"transport\": {\n"
  "      \"type\": \"object\",\n"
  "      \"required\": [\"plugin\"],\n"
  "      \"additionalProperties\": false,\n"
  "      \"properties\": {\n"
  "        \"plugin\": { \"type\": \"string\", \"minLength\": 1 },\n"
  "        \"options\": {\n"
  "          \"type\": \"object\",\n"
  "          \"properties\": {\n"
  "            \"host\": { \"type\": \"string\" },\n"
  "            \"port\": { \"type\": \"integer\", \"minimum\": 1, \"maximum\": 65535 },\n"
  "            \"tls\": { \"type\": \"boolean\" }\n"
  "          }\n"
  "        }\n"
  "      }\n"
  "    }\n"
  "  }\n"
  "}\n";

typedef struct {
  const char *pointer;
  const char *keyword;
  const char *message;
  int         line;
} ExpectedProblem;

typedef struct {
  const char      *path;
  const char      *document;
  ExpectedProblem  problems[6];   /* ends at the first with pointer NULL */
} ConfigCase;

static const ConfigCase config_cases[] = {
  {
    "/schema/config/valid",
    "{\n"
    "  \"listen\": \"localhost:2525\",\n"
    "  \"transports\": { \"o365\": { \"plugin\": \"graph\", \"options\": { \"port\": 25.0 } } }\n"
    "}\n",
    { { NULL } },
  },
  {
    "/schema/config/wrong-type",
    "{\n"
    "  \"listen\": \"localhost:2525\",\n"
    "  \"transports\": {\n"
    "    \"o365\": {\n"
    "      \"plugin\": \"graph\",\n"
    "      \"options\": {\n"
    "        \"host\": \"smtp.office365.com\",\n"
    "        \"port\": \"25\"\n"
    "      }\n"
    "    }\n"
    "  }\n"
    "}\n",
    {
      { "/transports/o365/options/port", "type", "expected integer, found string \"25\"", 8 },
    },
  },
  {
    "/schema/config/unknown-key",
    "{\n"
    "  \"listen\": \"localhost:2525\",\n"
    "  \"transports\": {\n"
    "    \"o365\": { \"plugin\": \"graph\",\n"
    "              \"prot\": 25 }\n"
    "  }\n"
    "}\n",
    {
      { "/transports/o365/prot", "additionalProperties",
        "unknown property \"prot\" (additionalProperties is false)", 5 },
    },
  },
  {
    "/schema/config/missing-required",
    "{\n"
    "  \"listen\": \"localhost:2525\",\n"
    "  \"transports\": {\n"
    "    \"o365\": {\n"
    "      \"options\": {}\n"
    "    }\n"
    "  }\n"
    "}\n",
    {
      { "/transports/o365", "required", "missing required property \"plugin\"", 4 },
    },
  },
  {
    "/schema/config/enum",
    "{ \"listen\": \"localhost:2525\", \"transports\": {},\n"
    "  \"log_level\": \"verbose\" }\n",
    {
      { "/log_level", "enum",
        "expected one of \"debug\", \"info\", \"warning\", found string \"verbose\"", 2 },
    },
  },
  {
    "/schema/config/pattern",
    "{ \"listen\": \"localhost\", \"transports\": {} }\n",
    {
      { "/listen", "pattern",
        "expected a string matching \"^[^:]+:[0-9]+$\", found \"localhost\"", 1 },
    },
  },
  {
    /* Several problems come back in document order, not schema order. */
    "/schema/config/all-problems-in-order",
    "{\n"
    "  \"transports\": {\n"
    "    \"a\": { \"plugin\": \"\" },\n"
    "    \"b\": { \"plugin\": \"smtp\", \"options\": { \"port\": 70000, \"tls\": \"yes\" } }\n"
    "  },\n"
    "  \"lsiten\": \"localhost:25\"\n"
    "}\n",
    {
      { "", "required", "missing required property \"listen\"", 1 },
      { "/transports/a/plugin", "minLength", "expected at least 1 character, found 0", 3 },
      { "/transports/b/options/port", "maximum", "expected at most 65535, found 70000", 4 },
      { "/transports/b/options/tls", "type", "expected boolean, found string \"yes\"", 4 },
      { "/lsiten", "additionalProperties",
        "unknown property \"lsiten\" (additionalProperties is false)", 6 },
    },
  },
  {
    "/schema/config/root-type",
    "[\n  1\n]\n",
    {
      { "", "type", "expected object, found array", 1 },
    },
  },
};

/* test_config_case - validate one document and compare every problem */
static void
test_config_case (gconstpointer user_data)
{
  const ConfigCase *tc = user_data;
  g_autoptr(PmxSchema) schema = NULL;
  g_autoptr(PmxJsonDocument) doc = NULL;
  g_autoptr(GPtrArray) problems = NULL;
  g_autoptr(GError) error = NULL;
  guint expected = 0, i;
  gboolean valid;

  while (expected < G_N_ELEMENTS (tc->problems) && tc->problems[expected].pointer != NULL)
    expected++;

  schema = pmx_schema_new_from_string (config_schema, NULL, &error);
  g_assert_no_error (error);
  doc = pmx_json_document_parse (tc->document, -1, &error);
  g_assert_no_error (error);

  valid = pmx_schema_validate (schema, pmx_json_document_get_root (doc), doc, &problems, &error);
  g_assert_no_error (error);
  if (expected == 0)
    {
      g_assert_true (valid);
      g_assert_null (problems);
      return;
    }
  g_assert_false (valid);
  g_assert_nonnull (problems);
  for (i = 0; i < problems->len; i++)
    {
      g_autofree char *text = pmx_schema_problem_to_string (g_ptr_array_index (problems, i));
      g_test_message ("%s", text);
    }
  g_assert_cmpuint (problems->len, ==, expected);
  for (i = 0; i < expected; i++)
    {
      const PmxSchemaProblem *got = g_ptr_array_index (problems, i);

      g_assert_cmpstr (got->pointer, ==, tc->problems[i].pointer);
      g_assert_cmpstr (got->keyword, ==, tc->problems[i].keyword);
      g_assert_cmpstr (got->message, ==, tc->problems[i].message);
      g_assert_cmpint (got->line, ==, tc->problems[i].line);
    }

  /* Without a problem list the answer is the same. */
  g_assert_false (pmx_schema_validate (schema, pmx_json_document_get_root (doc), NULL, NULL, &error));
  g_assert_no_error (error);
}

/* test_problem_to_string - the one-line form */
static void
test_problem_to_string (void)
{
  PmxSchemaProblem problem = {
    (char *) "/transports/o365/options/port", (char *) "type",
    (char *) "expected integer, found string \"25\"", 12,
  };
  g_autofree char *with_line = NULL;
  g_autofree char *root = NULL;

  with_line = pmx_schema_problem_to_string (&problem);
  g_assert_cmpstr (with_line, ==,
                   "line 12: /transports/o365/options/port: expected integer, found string \"25\" (type)");
  problem.pointer = (char *) "";
  problem.line = 0;
  root = pmx_schema_problem_to_string (&problem);
  g_assert_cmpstr (root, ==, "/: expected integer, found string \"25\" (type)");
}

/* test_document_lines - every value knows its line, however it is laid out */
static void
test_document_lines (void)
{
  static const char text[] =
    "{\n"                                   /* 1 */
    "  \"a\": 1,\n"                         /* 2 */
    "  \"b\":\n"                            /* 3 */
    "     \"str\",\n"                       /* 4 */
    "  \"c\": {\n"                          /* 5 */
    "    \"d\": [1,\n"                      /* 6 */
    "       2,\n"                           /* 7 */
    "       {\"e\": true}\n"                /* 8 */
    "    ],\n"                              /* 9 */
    "    \"f\": null\n"                     /* 10 */
    "  },\n"                                /* 11 */
    "  \"g\": []\n"                         /* 12 */
    "  , \"h/i~j\": 3\n"                    /* 13 */
    "  , \"k\": \"\xc3\xa9\xc3\xa9\"\n"     /* 14 */
    "\n"                                    /* 15 */
    "  , \"l\": false\n"                    /* 16 */
    "}\n";
  static const struct {
    const char *pointer;
    int         line;
  } expected[] = {
    { "", 1 }, { "/a", 2 }, { "/b", 4 }, { "/c", 5 }, { "/c/d", 6 }, { "/c/d/0", 6 },
    { "/c/d/1", 7 }, { "/c/d/2", 8 }, { "/c/d/2/e", 8 }, { "/c/f", 10 }, { "/g", 12 },
    { "/h~1i~0j", 13 }, { "/k", 14 }, { "/l", 16 }, { "/nope", 0 }, { "/c/d/3", 0 },
  };
  g_autoptr(PmxJsonDocument) doc = NULL;
  g_autoptr(GError) error = NULL;
  gsize i;

  doc = pmx_json_document_parse (text, -1, &error);
  g_assert_no_error (error);
  for (i = 0; i < G_N_ELEMENTS (expected); i++)
    {
      g_test_message ("%s", expected[i].pointer);
      g_assert_cmpint (pmx_json_document_get_line (doc, expected[i].pointer), ==, expected[i].line);
    }
}

/* test_document_scalar_root - a document that is one value */
static void
test_document_scalar_root (void)
{
  g_autoptr(PmxJsonDocument) doc = NULL;
  g_autoptr(GError) error = NULL;

  doc = pmx_json_document_parse ("\n\n  42\n", -1, &error);
  g_assert_no_error (error);
  g_assert_cmpint (json_node_get_int (pmx_json_document_get_root (doc)), ==, 42);
  g_assert_cmpint (pmx_json_document_get_line (doc, ""), ==, 3);
}

/* test_document_parse_error - the line of a syntax error reaches the user */
static void
test_document_parse_error (void)
{
  static const struct {
    const char *text;
    const char *prefix;
  } cases[] = {
    { "{\n  \"a\": 1,\n  \"b\" 2\n}\n", "line 3, column " },
    { "{\n  \"a\": [1, 2,\n\n  }\n", "line 4, column " },
    { "", "line 1: " },
    { "  \n", "line 1: " },
  };
  gsize i;

  for (i = 0; i < G_N_ELEMENTS (cases); i++)
    {
      g_autoptr(PmxJsonDocument) doc = NULL;
      g_autoptr(GError) error = NULL;

      doc = pmx_json_document_parse (cases[i].text, -1, &error);
      g_assert_error (error, PMX_SCHEMA_ERROR, PMX_SCHEMA_ERROR_PARSE);
      g_assert_null (doc);
      g_test_message ("%s", error->message);
      g_assert_true (g_str_has_prefix (error->message, cases[i].prefix));
    }
}

/* test_schema_errors - schema construction fails with the right code */
static void
test_schema_errors (void)
{
  static const struct {
    const char *text;
    int         code;
    const char *message;
  } cases[] = {
    { "{ \"type\": ", PMX_SCHEMA_ERROR_PARSE, NULL },
    { "42", PMX_SCHEMA_ERROR_INVALID,
      "not a valid JSON Schema (draft-07): line 1: /: expected object or boolean, found integer 42 (type)" },
    { "{\n  \"properties\": {\n    \"port\": { \"minimum\": \"1\" }\n  }\n}",
      PMX_SCHEMA_ERROR_INVALID,
      "not a valid JSON Schema (draft-07): line 3: /properties/port/minimum: "
      "expected number, found string \"1\" (type)" },
    { "{ \"pattern\": \"[a-\" }", PMX_SCHEMA_ERROR_INVALID, NULL },
    { "{ \"patternProperties\": { \"(\": {} } }", PMX_SCHEMA_ERROR_INVALID, NULL },
  };
  gsize i;

  for (i = 0; i < G_N_ELEMENTS (cases); i++)
    {
      g_autoptr(PmxSchema) schema = NULL;
      g_autoptr(GError) error = NULL;

      schema = pmx_schema_new_from_string (cases[i].text, NULL, &error);
      g_assert_error (error, PMX_SCHEMA_ERROR, cases[i].code);
      g_assert_null (schema);
      g_test_message ("%s", error->message);
      if (cases[i].message != NULL)
        g_assert_cmpstr (error->message, ==, cases[i].message);
    }
}

/* validate_string - validate @instance_text against @schema_text */
static gboolean
validate_string (const char  *schema_text,
                 const char  *instance_text,
                 GPtrArray  **out_problems,
                 GError     **error)
{
  g_autoptr(PmxSchema) schema = NULL;
  g_autoptr(JsonNode) instance = NULL;
  g_autoptr(GError) local_error = NULL;

  schema = pmx_schema_new_from_string (schema_text, "https://postmux.example/schemas/t.json",
                                       &local_error);
  g_assert_no_error (local_error);
  instance = json_from_string (instance_text, &local_error);
  g_assert_no_error (local_error);
  return pmx_schema_validate (schema, instance, NULL, out_problems, error);
}

/* test_ref_errors - a $ref that cannot be followed is an error, not a
 * problem, and never a crash */
static void
test_ref_errors (void)
{
  static const char *const schemas[] = {
    /* loops that never consume input */
    "{ \"$ref\": \"#\" }",
    "{ \"definitions\": { \"a\": { \"$ref\": \"#/definitions/b\" },"
    "                     \"b\": { \"allOf\": [ { \"$ref\": \"#/definitions/a\" } ] } },"
    "  \"$ref\": \"#/definitions/a\" }",
    /* nothing there */
    "{ \"$ref\": \"#/definitions/missing\" }",
    "{ \"$ref\": \"#nowhere\" }",
    /* remote, and no resolver */
    "{ \"$ref\": \"other.json\" }",
  };
  gsize i;

  for (i = 0; i < G_N_ELEMENTS (schemas); i++)
    {
      g_autoptr(GPtrArray) problems = NULL;
      g_autoptr(GError) error = NULL;

      g_assert_false (validate_string (schemas[i], "{ \"x\": 1 }", &problems, &error));
      g_assert_error (error, PMX_SCHEMA_ERROR, PMX_SCHEMA_ERROR_REF);
      g_assert_null (problems);
      g_test_message ("%s", error->message);
    }
}

/* test_ref_deep_instance - recursion through $ref as deep as the instance is
 * fine; only loops are refused */
static void
test_ref_deep_instance (void)
{
  g_autoptr(GString) text = g_string_new ("");
  g_autoptr(GError) error = NULL;
  guint i;

  for (i = 0; i < 100; i++)
    g_string_append (text, "{ \"next\": ");
  g_string_append (text, "null");
  for (i = 0; i < 100; i++)
    g_string_append (text, " }");
  g_assert_true (validate_string ("{ \"type\": \"object\", \"properties\": { \"next\": "
                                  "{ \"anyOf\": [ { \"type\": \"null\" }, { \"$ref\": \"#\" } ] } } }",
                                  text->str, NULL, &error));
  g_assert_no_error (error);
}

/* test_ref_ids - "$id" names subschemas, by URI and by "#name" */
static void
test_ref_ids (void)
{
  static const char schema[] =
    "{ \"definitions\": {"
    "    \"port\": { \"$id\": \"#port\", \"type\": \"integer\" },"
    "    \"host\": { \"$id\": \"parts/host.json\", \"type\": \"string\" },"
    "    \"dir\": { \"$id\": \"parts/\", \"definitions\": {"
    "       \"tls\": { \"$id\": \"tls.json\", \"type\": \"boolean\" } } } },"
    "  \"properties\": {"
    "    \"port\": { \"$ref\": \"#port\" },"
    "    \"host\": { \"$ref\": \"parts/host.json\" },"
    "    \"tls\": { \"$ref\": \"https://postmux.example/schemas/parts/tls.json#\" },"
    "    \"tls2\": { \"$ref\": \"#/definitions/dir/definitions/tls\" },"
    "    \"odd\": { \"$ref\": \"#/definitions/%70ort\" } } }";
  g_autoptr(GPtrArray) problems = NULL;
  g_autoptr(GError) error = NULL;
  const PmxSchemaProblem *problem;

  g_assert_true (validate_string (schema, "{ \"port\": 1, \"host\": \"h\", \"tls\": true, \"tls2\": false, \"odd\": 2 }",
                                  NULL, &error));
  g_assert_no_error (error);
  g_assert_false (validate_string (schema, "{ \"port\": 1.5, \"host\": \"h\", \"tls\": 1, \"tls2\": false, \"odd\": 2 }",
                                   &problems, &error));
  g_assert_no_error (error);
  g_assert_cmpuint (problems->len, ==, 2);
  problem = g_ptr_array_index (problems, 0);
  g_assert_cmpstr (problem->pointer, ==, "/port");
  g_assert_cmpstr (problem->message, ==, "expected integer, found number 1.5");
  problem = g_ptr_array_index (problems, 1);
  g_assert_cmpstr (problem->pointer, ==, "/tls");
  g_assert_cmpstr (problem->message, ==, "expected boolean, found integer 1");
}

/* resolve_counting - serves one remote document and counts the calls */
static JsonNode *
resolve_counting (const char *uri,
                  gpointer    user_data,
                  GError    **error)
{
  gint *calls = user_data;

  g_atomic_int_inc (calls);
  if (g_str_equal (uri, "https://postmux.example/schemas/port.json"))
    return json_from_string ("{ \"type\": \"integer\", \"maximum\": 65535 }", error);
  g_set_error (error, G_IO_ERROR, G_IO_ERROR_NOT_FOUND, "no such schema: %s", uri);
  return NULL;
}

/* test_ref_remote - remote documents come from the resolver, once */
static void
test_ref_remote (void)
{
  g_autoptr(PmxSchema) schema = NULL;
  g_autoptr(JsonNode) good = json_from_string ("[1, 2, 3]", NULL);
  g_autoptr(JsonNode) bad = json_from_string ("[1, 70000]", NULL);
  g_autoptr(GPtrArray) problems = NULL;
  g_autoptr(GError) error = NULL;
  gint calls = 0;

  schema = pmx_schema_new_from_string ("{ \"items\": { \"$ref\": \"port.json\" } }",
                                       "https://postmux.example/schemas/transport.json", &error);
  g_assert_no_error (error);
  pmx_schema_set_resolver (schema, resolve_counting, &calls);
  g_assert_true (pmx_schema_validate (schema, good, NULL, NULL, &error));
  g_assert_no_error (error);
  g_assert_false (pmx_schema_validate (schema, bad, NULL, &problems, &error));
  g_assert_no_error (error);
  g_assert_cmpuint (problems->len, ==, 1);
  g_assert_cmpstr (((PmxSchemaProblem *) g_ptr_array_index (problems, 0))->pointer, ==, "/1");
  g_assert_cmpint (calls, ==, 1);
  g_clear_pointer (&schema, pmx_schema_unref);

  schema = pmx_schema_new_from_string ("{ \"$ref\": \"missing.json\" }",
                                       "https://postmux.example/schemas/transport.json", &error);
  g_assert_no_error (error);
  pmx_schema_set_resolver (schema, resolve_counting, &calls);
  g_assert_false (pmx_schema_validate (schema, good, NULL, NULL, &error));
  g_assert_error (error, PMX_SCHEMA_ERROR, PMX_SCHEMA_ERROR_REF);
  g_assert_nonnull (strstr (error->message, "no such schema"));
}

/* test_keyword_details - the corners the suite does not pin down */
static void
test_keyword_details (void)
{
  static const struct {
    const char *schema;
    const char *instance;
    const char *message;   /* NULL: valid */
  } cases[] = {
    { "{ \"maxLength\": 3 }", "\"\xc3\xa9\xc3\xa9\xc3\xa9\"", NULL },
    { "{ \"maxLength\": 2 }", "\"\xc3\xa9\xc3\xa9\xc3\xa9\"", "expected at most 2 characters, found 3" },
    { "{ \"type\": \"integer\" }", "1.0", NULL },
    { "{ \"const\": 1 }", "1.0", NULL },
    { "{ \"enum\": [ { \"a\": [1] } ] }", "{ \"a\": [1.0] }", NULL },
    { "{ \"multipleOf\": 0.01 }", "19.99", NULL },
    { "{ \"multipleOf\": 0.01 }", "19.995", "expected a multiple of 0.01, found 19.995" },
    { "{ \"pattern\": \"b\" }", "\"abc\"", NULL },
    { "{ \"format\": \"email\" }", "\"not an address\"", NULL },
    { "{ \"type\": [\"string\", \"null\"] }", "5", "expected string or null, found integer 5" },
    { "{ \"exclusiveMaximum\": 10 }", "10", "expected less than 10, found 10" },
    { "{ \"uniqueItems\": true }", "[1, 2, 1.0]", "expected unique items, found item 2 equal to item 0" },
    { "{ \"anyOf\": [ { \"type\": \"string\" }, { \"type\": \"integer\" } ] }", "true",
      "expected a value matching one of the 2 allowed forms, found boolean true" },
    /* one alternative has the right shape: its own problem is the useful one */
    { "{ \"oneOf\": [ { \"type\": \"string\" },"
      "  { \"type\": \"object\", \"required\": [\"host\"] } ] }", "{ }",
      "missing required property \"host\"" },
    { "{ \"not\": { \"type\": \"string\" } }", "\"x\"",
      "expected a value that does not match the \"not\" schema, found string \"x\"" },
    { "{ \"dependencies\": { \"tls\": [\"cert\"] } }", "{ \"tls\": true }",
      "missing property \"cert\", which property \"tls\" requires" },
    { "{ \"propertyNames\": { \"maxLength\": 3 } }", "{ \"long\": 1 }",
      "property name \"long\" is not allowed: expected at most 3 characters, found 4" },
    { "{ \"contains\": { \"const\": 5 } }", "[1, 2]",
      "expected an item matching the \"contains\" schema, found none among 2 items" },
    { "{ \"items\": [ {} ], \"additionalItems\": false }", "[1, 2]",
      "unexpected item 1 (additionalItems is false, at most 1 allowed)" },
    { "{ \"$ref\": \"#/definitions/a\", \"type\": \"string\", \"definitions\": { \"a\": {} } }", "5", NULL },
  };
  gsize i;

  for (i = 0; i < G_N_ELEMENTS (cases); i++)
    {
      g_autoptr(GPtrArray) problems = NULL;
      g_autoptr(GError) error = NULL;
      gboolean valid;

      g_test_message ("%s against %s", cases[i].instance, cases[i].schema);
      valid = validate_string (cases[i].schema, cases[i].instance, &problems, &error);
      g_assert_no_error (error);
      if (cases[i].message == NULL)
        {
          g_assert_true (valid);
          continue;
        }
      g_assert_false (valid);
      g_assert_cmpuint (problems->len, ==, 1);
      g_assert_cmpstr (((PmxSchemaProblem *) g_ptr_array_index (problems, 0))->message, ==,
                       cases[i].message);
    }
}

/* test_subtree_lines - validating one value of a document (a transport's
 * options) gives pointers relative to it and lines from the document */
static void
test_subtree_lines (void)
{
  static const char text[] =
    "{\n"
    "  \"transports\": {\n"
    "    \"o365\": {\n"
    "      \"plugin\": \"graph\",\n"
    "      \"options\": {\n"
    "        \"port\": \"25\"\n"
    "      }\n"
    "    }\n"
    "  }\n"
    "}\n";
  g_autoptr(PmxSchema) schema = NULL;
  g_autoptr(PmxJsonDocument) doc = NULL;
  g_autoptr(GPtrArray) problems = NULL;
  g_autoptr(GError) error = NULL;
  g_autofree char *shown = NULL;
  JsonObject *transport;
  JsonNode *options;

  schema = pmx_schema_new_from_string ("{ \"properties\": { \"port\": { \"type\": \"integer\" } } }",
                                       NULL, &error);
  g_assert_no_error (error);
  doc = pmx_json_document_parse (text, -1, &error);
  g_assert_no_error (error);
  transport = json_object_get_object_member (
    json_object_get_object_member (json_node_get_object (pmx_json_document_get_root (doc)), "transports"),
    "o365");
  options = json_object_get_member (transport, "options");

  g_assert_false (pmx_schema_validate (schema, options, doc, &problems, &error));
  g_assert_no_error (error);
  g_assert_cmpuint (problems->len, ==, 1);
  shown = pmx_schema_problem_to_string (g_ptr_array_index (problems, 0));
  g_assert_cmpstr (shown, ==, "line 6: /port: expected integer, found string \"25\" (type)");
}

typedef struct {
  PmxSchema *schema;
  JsonNode  *good;
  JsonNode  *bad;
} SharedSchema;

/* shared_validate_thread - validate over and over with one shared schema */
static gpointer
shared_validate_thread (gpointer user_data)
{
  SharedSchema *shared = user_data;
  guint i, failures = 0;

  for (i = 0; i < 200; i++)
    {
      g_autoptr(GPtrArray) problems = NULL;
      g_autoptr(GError) error = NULL;

      if (!pmx_schema_validate (shared->schema, shared->good, NULL, NULL, &error))
        failures++;
      if (pmx_schema_validate (shared->schema, shared->bad, NULL, &problems, &error)
          || problems == NULL || problems->len != 1)
        failures++;
    }
  return GUINT_TO_POINTER (failures);
}

/* test_shared_between_threads - one PmxSchema, several validating threads,
 * remote documents and patterns cached on first use */
static void
test_shared_between_threads (void)
{
  g_autoptr(PmxSchema) schema = NULL;
  g_autoptr(GError) error = NULL;
  SharedSchema shared;
  GThread *threads[4];
  gint calls = 0;
  guint i;

  schema = pmx_schema_new_from_string ("{ \"items\": { \"$ref\": \"port.json\" },"
                                       "  \"contains\": { \"pattern\": \"^x\" } }",
                                       "https://postmux.example/schemas/t.json", &error);
  g_assert_no_error (error);
  pmx_schema_set_resolver (schema, resolve_counting, &calls);
  shared.schema = schema;
  shared.good = json_from_string ("[1, 2]", NULL);
  shared.bad = json_from_string ("[1, 70000]", NULL);
  /* contains holds for numbers: "pattern" ignores non-strings. */
  for (i = 0; i < G_N_ELEMENTS (threads); i++)
    threads[i] = g_thread_new ("validate", shared_validate_thread, &shared);
  for (i = 0; i < G_N_ELEMENTS (threads); i++)
    g_assert_cmpuint (GPOINTER_TO_UINT (g_thread_join (threads[i])), ==, 0);
  g_assert_cmpint (calls, >=, 1);
  json_node_unref (shared.good);
  json_node_unref (shared.bad);
}

int
main (int    argc,
      char **argv)
{
  gsize i;

  g_test_init (&argc, &argv, NULL);

  for (i = 0; i < G_N_ELEMENTS (config_cases); i++)
    g_test_add_data_func (config_cases[i].path, &config_cases[i], test_config_case);
  g_test_add_func ("/schema/problem/to-string", test_problem_to_string);
  g_test_add_func ("/schema/document/lines-of-nested-values", test_document_lines);
  g_test_add_func ("/schema/document/scalar-root", test_document_scalar_root);
  g_test_add_func ("/schema/document/parse-error-has-line", test_document_parse_error);
  g_test_add_func ("/schema/errors/invalid-schema", test_schema_errors);
  g_test_add_func ("/schema/ref/unresolvable-or-looping-is-error", test_ref_errors);
  g_test_add_func ("/schema/ref/recursion-as-deep-as-instance", test_ref_deep_instance);
  g_test_add_func ("/schema/ref/ids-name-subschemas", test_ref_ids);
  g_test_add_func ("/schema/ref/remote-through-resolver", test_ref_remote);
  g_test_add_func ("/schema/keywords/details", test_keyword_details);
  g_test_add_func ("/schema/document/subtree-keeps-document-lines", test_subtree_lines);
  g_test_add_func ("/schema/threads/one-schema-many-validators", test_shared_between_threads);

  return g_test_run ();
}

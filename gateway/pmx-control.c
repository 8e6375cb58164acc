/* SPDX-License-Identifier: GPL-3.0-or-later */
/*
 * pmx-control.c - control socket server (async, main loop) and client.
 *
 * Trusts the peer's kernel credentials for its identity and nothing in the
 * request.  A request line is limited to 64 KiB and a message to
 * PMX_CONTROL_MAX_SIZE; a malformed request gets an error answer and the
 * connection is closed.  "ok" for a submission is written only after the
 * queue's commit returned.
 */
#include "pmx-control.h"

#include <gio/gunixsocketaddress.h>
#include <json-glib/json-glib.h>
#include <errno.h>
#include <pwd.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define PMX_CONTROL_MAX_LINE  (64 * 1024)
#define PMX_CONTROL_MAX_SIZE  (256 * 1024 * 1024)

G_DEFINE_QUARK (pmx-control-error-quark, pmx_control_error)

struct _PmxControl {
  char            *path;
  PmxQueue        *queue;
  PmxControlHooks  hooks;
  GSocketService  *service;
};

typedef struct {
  PmxControl       *control;
  GSocketConnection *conn;
  GDataInputStream *in;
  GOutputStream    *out;
  char             *ingress;
  JsonObject       *request;
  guint8           *data;
  gsize             size;
} ControlClient;

static void control_read_request (ControlClient *client);

/* client_free - drop a connection */
static void
client_free (ControlClient *client)
{
  g_clear_pointer (&client->request, json_object_unref);
  g_free (client->data);
  g_free (client->ingress);
  g_clear_object (&client->in);
  g_clear_object (&client->conn);
  g_free (client);
}

/* control_answered - after an answer is written: next request or close */
static void
control_answered (GObject      *source,
                  GAsyncResult *res,
                  gpointer      user_data)
{
  ControlClient *client = user_data;
  gboolean keep = GPOINTER_TO_INT (g_object_get_data (G_OBJECT (client->conn), "pmx-keep"));

  if (!g_output_stream_write_all_finish (G_OUTPUT_STREAM (source), res, NULL, NULL) || !keep)
    {
      client_free (client);
      return;
    }
  control_read_request (client);
}

/* control_answer - write one answer line; @keep: read another request after */
static void
control_answer (ControlClient *client,
                JsonBuilder   *builder,
                gboolean       keep)
{
  g_autoptr(JsonNode) root = json_builder_get_root (builder);
  g_autofree char *text = json_to_string (root, FALSE);
  char *line = g_strconcat (text, "\n", NULL);

  g_object_set_data (G_OBJECT (client->conn), "pmx-keep", GINT_TO_POINTER (keep));
  g_object_set_data_full (G_OBJECT (client->conn), "pmx-line", line, g_free);
  g_output_stream_write_all_async (client->out, line, strlen (line), G_PRIORITY_DEFAULT,
                                   NULL, control_answered, client);
}

/* control_answer_error - {"ok":false,"error":...} and close */
static void
control_answer_error (ControlClient *client,
                      const char    *message)
{
  g_autoptr(JsonBuilder) b = json_builder_new ();

  json_builder_begin_object (b);
  json_builder_set_member_name (b, "ok");
  json_builder_add_boolean_value (b, FALSE);
  json_builder_set_member_name (b, "error");
  json_builder_add_string_value (b, message);
  json_builder_end_object (b);
  control_answer (client, b, FALSE);
}

/* control_answer_ok - {"ok":true} plus optional id */
static void
control_answer_ok (ControlClient *client,
                   const char    *id,
                   gboolean       duplicate)
{
  g_autoptr(JsonBuilder) b = json_builder_new ();

  json_builder_begin_object (b);
  json_builder_set_member_name (b, "ok");
  json_builder_add_boolean_value (b, TRUE);
  if (id != NULL)
    {
      json_builder_set_member_name (b, "id");
      json_builder_add_string_value (b, id);
      json_builder_set_member_name (b, "duplicate");
      json_builder_add_boolean_value (b, duplicate);
    }
  json_builder_end_object (b);
  control_answer (client, b, TRUE);
}

/* control_submitted - the queue committed (or refused) the message */
static void
control_submitted (GObject      *source,
                   GAsyncResult *res,
                   gpointer      user_data)
{
  ControlClient *client = user_data;
  g_autoptr(GError) error = NULL;
  gboolean duplicate = FALSE;
  g_autofree char *id = pmx_queue_submit_finish (client->control->queue,
                                                 res, &duplicate, &error);

  if (id == NULL)
    {
      control_answer_error (client, error->message);
      return;
    }
  control_answer_ok (client, id, duplicate);
  if (client->control->hooks.wake != NULL)
    client->control->hooks.wake (client->control->hooks.user_data);
}

/* control_read_data - the message bytes of a submit request arrived */
static void
control_read_data (GObject      *source,
                   GAsyncResult *res,
                   gpointer      user_data)
{
  ControlClient *client = user_data;
  g_autoptr(GError) error = NULL;
  g_autoptr(GPtrArray) rcpts = g_ptr_array_new ();
  g_autoptr(GBytes) bytes = NULL;
  JsonObject *req = client->request;
  JsonArray *array;
  PmxSubmission sub = { 0, };
  gsize got = 0;

  if (!g_input_stream_read_all_finish (G_INPUT_STREAM (source), res, &got, &error) || got != client->size)
    {
      client_free (client);   /* the client went away mid-message: nothing was queued */
      return;
    }
  array = json_object_get_array_member (req, "recipients");
  for (guint i = 0; i < json_array_get_length (array); i++)
    {
      JsonNode *node = json_array_get_element (array, i);

      if (!JSON_NODE_HOLDS_VALUE (node) || json_node_get_value_type (node) != G_TYPE_STRING)
        {
          control_answer_error (client, "\"recipients\" must be an array of strings");
          return;
        }
      g_ptr_array_add (rcpts, (gpointer) json_node_get_string (node));
    }
  bytes = g_bytes_new_take (g_steal_pointer (&client->data), client->size);
  sub.ingress = client->ingress;
  sub.sender = json_object_get_string_member (req, "sender");
  sub.recipients = (const char *const *) rcpts->pdata;
  sub.n_recipients = rcpts->len;
  sub.data = bytes;
  sub.idempotency_key = json_object_get_string_member_with_default (req, "idempotency_key", NULL);
  pmx_queue_submit_async (client->control->queue, &sub, NULL, control_submitted, client);
}

/* control_handle - act on one parsed request */
static void
control_handle (ControlClient *client)
{
  JsonObject *req = client->request;
  const char *op = json_object_get_string_member_with_default (req, "op", "");

  if (strcmp (op, "submit") == 0)
    {
      gint64 size = json_object_get_int_member_with_default (req, "size", -1);

      if (!json_object_has_member (req, "sender")
          || json_node_get_value_type (json_object_get_member (req, "sender")) != G_TYPE_STRING
          || !json_object_has_member (req, "recipients")
          || !JSON_NODE_HOLDS_ARRAY (json_object_get_member (req, "recipients")))
        {
          control_answer_error (client, "submit needs \"sender\" (string) and \"recipients\" (array)");
          return;
        }
      if (size <= 0 || size > PMX_CONTROL_MAX_SIZE)
        {
          control_answer_error (client, "submit needs \"size\" between 1 and 268435456 bytes");
          return;
        }
      client->size = (gsize) size;
      client->data = g_malloc (client->size);
      g_input_stream_read_all_async (G_INPUT_STREAM (client->in), client->data, client->size,
                                     G_PRIORITY_DEFAULT, NULL, control_read_data, client);
    }
  else if (strcmp (op, "wake") == 0)
    {
      if (client->control->hooks.wake != NULL)
        client->control->hooks.wake (client->control->hooks.user_data);
      control_answer_ok (client, NULL, FALSE);
    }
  else if (strcmp (op, "reload") == 0)
    {
      g_autoptr(GError) error = NULL;

      if (client->control->hooks.reload != NULL
          && !client->control->hooks.reload (client->control->hooks.user_data, &error))
        control_answer_error (client, error->message);
      else
        control_answer_ok (client, NULL, FALSE);
    }
  else if (strcmp (op, "status") == 0)
    {
      g_autoptr(JsonBuilder) b = json_builder_new ();

      json_builder_begin_object (b);
      json_builder_set_member_name (b, "ok");
      json_builder_add_boolean_value (b, TRUE);
      json_builder_set_member_name (b, "pid");
      json_builder_add_int_value (b, getpid ());
      json_builder_set_member_name (b, "version");
      json_builder_add_string_value (b, PMX_VERSION);
      if (client->control->hooks.transports != NULL)
        {
          json_builder_set_member_name (b, "transports");
          json_builder_add_value (b, client->control->hooks.transports (client->control->hooks.user_data));
        }
      json_builder_end_object (b);
      control_answer (client, b, TRUE);
    }
  else
    control_answer_error (client, "unknown op: use submit, wake, reload or status");
}

/* control_read_line - a request line arrived */
static void
control_read_line (GObject      *source,
                   GAsyncResult *res,
                   gpointer      user_data)
{
  ControlClient *client = user_data;
  g_autoptr(GError) error = NULL;
  g_autoptr(JsonParser) parser = json_parser_new ();
  gsize len = 0;
  g_autofree char *line = g_data_input_stream_read_line_finish (G_DATA_INPUT_STREAM (source), res, &len, &error);

  if (line == NULL)
    {
      client_free (client);   /* end of stream or error: the client is done */
      return;
    }
  if (len > PMX_CONTROL_MAX_LINE || !json_parser_load_from_data (parser, line, (gssize) len, NULL)
      || !JSON_NODE_HOLDS_OBJECT (json_parser_get_root (parser)))
    {
      control_answer_error (client, "a request is one line of JSON (an object)");
      return;
    }
  g_clear_pointer (&client->request, json_object_unref);
  client->request = json_object_ref (json_node_get_object (json_parser_get_root (parser)));
  control_handle (client);
}

static void
control_read_request (ControlClient *client)
{
  g_data_input_stream_read_line_async (client->in, G_PRIORITY_DEFAULT, NULL, control_read_line, client);
}

/* control_peer_ingress - "local:USER" from the peer's credentials */
static char *
control_peer_ingress (GSocketConnection *conn)
{
  g_autoptr(GCredentials) creds = g_socket_get_credentials (g_socket_connection_get_socket (conn), NULL);
  uid_t uid;
  struct passwd *pw;

  if (creds == NULL)
    return g_strdup ("local");
  uid = g_credentials_get_unix_user (creds, NULL);
  pw = getpwuid (uid);
  if (pw != NULL)
    return g_strdup_printf ("local:%s", pw->pw_name);
  return g_strdup_printf ("local:%u", (unsigned) uid);
}

/* control_incoming - GSocketService::incoming */
static gboolean
control_incoming (GSocketService    *service,
                  GSocketConnection *conn,
                  GObject           *source,
                  gpointer           user_data)
{
  ControlClient *client = g_new0 (ControlClient, 1);

  client->control = user_data;
  client->conn = g_object_ref (conn);
  client->in = g_data_input_stream_new (g_io_stream_get_input_stream (G_IO_STREAM (conn)));
  g_data_input_stream_set_newline_type (client->in, G_DATA_STREAM_NEWLINE_TYPE_LF);
  g_buffered_input_stream_set_buffer_size (G_BUFFERED_INPUT_STREAM (client->in), 64 * 1024);
  client->out = g_io_stream_get_output_stream (G_IO_STREAM (conn));
  client->ingress = control_peer_ingress (conn);
  control_read_request (client);
  return TRUE;
}

/* control_connect - blocking client connection, typed error when nobody answers */
static GSocketConnection *
control_connect (const char *path,
                 GError    **error)
{
  g_autoptr(GSocketClient) sc = g_socket_client_new ();
  g_autoptr(GSocketAddress) addr = g_unix_socket_address_new (path);
  g_autoptr(GError) local_error = NULL;
  GSocketConnection *conn = g_socket_client_connect (sc, G_SOCKET_CONNECTABLE (addr), NULL, &local_error);

  if (conn == NULL)
    {
      gboolean gone = g_error_matches (local_error, G_IO_ERROR, G_IO_ERROR_NOT_FOUND)
                      || g_error_matches (local_error, G_IO_ERROR, G_IO_ERROR_CONNECTION_REFUSED);

      g_set_error (error, PMX_CONTROL_ERROR,
                   gone ? PMX_CONTROL_ERROR_UNREACHABLE : PMX_CONTROL_ERROR_FAILED,
                   "no postmux daemon answers on %s: %s — start it with `postmux serve`",
                   path, local_error->message);
    }
  return conn;
}

/* control_exchange - send @request (+@data), read and parse one answer */
static JsonObject *
control_exchange (const char   *path,
                  const char   *request,
                  GBytes       *data,
                  GError      **error)
{
  g_autoptr(GSocketConnection) conn = control_connect (path, error);
  g_autoptr(GDataInputStream) in = NULL;
  g_autoptr(JsonParser) parser = json_parser_new ();
  g_autofree char *line = NULL;
  GOutputStream *out;
  JsonObject *answer;

  if (conn == NULL)
    return NULL;
  out = g_io_stream_get_output_stream (G_IO_STREAM (conn));
  if (!g_output_stream_write_all (out, request, strlen (request), NULL, NULL, error)
      || (data != NULL && !g_output_stream_write_all (out, g_bytes_get_data (data, NULL),
                                                      g_bytes_get_size (data), NULL, NULL, error)))
    {
      g_prefix_error (error, "control socket %s: ", path);
      return NULL;
    }
  in = g_data_input_stream_new (g_io_stream_get_input_stream (G_IO_STREAM (conn)));
  g_data_input_stream_set_newline_type (in, G_DATA_STREAM_NEWLINE_TYPE_LF);
  line = g_data_input_stream_read_line (in, NULL, NULL, error);
  if (line == NULL)
    {
      if (error != NULL && *error == NULL)
        g_set_error (error, PMX_CONTROL_ERROR, PMX_CONTROL_ERROR_FAILED,
                     "control socket %s: the daemon closed the connection without an answer — nothing was queued; see its log", path);
      else
        g_prefix_error (error, "control socket %s: ", path);
      return NULL;
    }
  if (!json_parser_load_from_data (parser, line, -1, error) || !JSON_NODE_HOLDS_OBJECT (json_parser_get_root (parser)))
    {
      g_clear_error (error);
      g_set_error (error, PMX_CONTROL_ERROR, PMX_CONTROL_ERROR_FAILED,
                   "control socket %s: the answer is not JSON", path);
      return NULL;
    }
  answer = json_object_ref (json_node_get_object (json_parser_get_root (parser)));
  if (!json_object_get_boolean_member_with_default (answer, "ok", FALSE))
    {
      g_set_error (error, PMX_CONTROL_ERROR, PMX_CONTROL_ERROR_REFUSED, "%s",
                   json_object_get_string_member_with_default (answer, "error", "refused"));
      json_object_unref (answer);
      return NULL;
    }
  return answer;
}

char *
pmx_control_submit (const char          *path,
                    const PmxSubmission *sub,
                    gboolean            *out_duplicate,
                    GError             **error)
{
  g_autoptr(JsonBuilder) b = json_builder_new ();
  g_autoptr(JsonNode) root = NULL;
  g_autofree char *text = NULL;
  g_autofree char *request = NULL;
  JsonObject *answer;
  char *id;

  json_builder_begin_object (b);
  json_builder_set_member_name (b, "op");
  json_builder_add_string_value (b, "submit");
  json_builder_set_member_name (b, "sender");
  json_builder_add_string_value (b, sub->sender);
  json_builder_set_member_name (b, "recipients");
  json_builder_begin_array (b);
  for (gsize i = 0; i < sub->n_recipients; i++)
    json_builder_add_string_value (b, sub->recipients[i]);
  json_builder_end_array (b);
  json_builder_set_member_name (b, "size");
  json_builder_add_int_value (b, (gint64) g_bytes_get_size (sub->data));
  if (sub->idempotency_key != NULL)
    {
      json_builder_set_member_name (b, "idempotency_key");
      json_builder_add_string_value (b, sub->idempotency_key);
    }
  json_builder_end_object (b);
  root = json_builder_get_root (b);
  text = json_to_string (root, FALSE);
  request = g_strconcat (text, "\n", NULL);

  answer = control_exchange (path, request, sub->data, error);
  if (answer == NULL)
    return NULL;
  id = g_strdup (json_object_get_string_member_with_default (answer, "id", NULL));
  if (out_duplicate != NULL)
    *out_duplicate = json_object_get_boolean_member_with_default (answer, "duplicate", FALSE);
  json_object_unref (answer);
  return id;
}

char *
pmx_control_call (const char *path,
                  const char *op,
                  GError    **error)
{
  g_autofree char *request = g_strdup_printf ("{\"op\":\"%s\"}\n", op);
  g_autoptr(JsonNode) node = json_node_new (JSON_NODE_OBJECT);
  JsonObject *answer = control_exchange (path, request, NULL, error);

  if (answer == NULL)
    return NULL;
  json_node_take_object (node, answer);
  return json_to_string (node, FALSE);
}

PmxControl *
pmx_control_new (const char            *path,
                 PmxQueue              *queue,
                 const PmxControlHooks *hooks,
                 GError               **error)
{
  g_autoptr(GSocketAddress) addr = NULL;
  g_autoptr(GSocketConnection) probe = NULL;
  g_autoptr(GError) local_error = NULL;
  PmxControl *control;

  probe = control_connect (path, NULL);
  if (probe != NULL)
    {
      g_set_error (error, PMX_CONTROL_ERROR, PMX_CONTROL_ERROR_IN_USE,
                   "another postmux daemon already answers on %s — stop it first, or give this one its own state_dir",
                   path);
      return NULL;
    }
  if (unlink (path) != 0 && errno != ENOENT)
    {
      g_set_error (error, PMX_CONTROL_ERROR, PMX_CONTROL_ERROR_FAILED,
                   "cannot remove the stale control socket %s: %s", path, g_strerror (errno));
      return NULL;
    }

  control = g_new0 (PmxControl, 1);
  control->path = g_strdup (path);
  control->queue = queue;
  if (hooks != NULL)
    control->hooks = *hooks;
  control->service = g_socket_service_new ();
  addr = g_unix_socket_address_new (path);
  if (!g_socket_listener_add_address (G_SOCKET_LISTENER (control->service), addr,
                                      G_SOCKET_TYPE_STREAM, G_SOCKET_PROTOCOL_DEFAULT,
                                      NULL, NULL, &local_error))
    {
      g_set_error (error, PMX_CONTROL_ERROR, PMX_CONTROL_ERROR_FAILED,
                   "cannot listen on control socket %s: %s", path, local_error->message);
      pmx_control_free (control);
      return NULL;
    }
  /* Owner and group may submit; the state directory itself is 0700 unless
   * the operator opens it to a submitting group. */
  (void) chmod (path, 0660);
  g_signal_connect (control->service, "incoming", G_CALLBACK (control_incoming), control);
  g_socket_service_start (control->service);
  return control;
}

void
pmx_control_free (PmxControl *control)
{
  if (control == NULL)
    return;
  g_socket_service_stop (control->service);
  g_socket_listener_close (G_SOCKET_LISTENER (control->service));
  g_clear_object (&control->service);
  (void) unlink (control->path);
  g_free (control->path);
  g_free (control);
}

/* SPDX-License-Identifier: GPL-3.0-or-later */
/*
 * pmx-scripted.c - a test transport whose outcomes the test chooses.
 *
 * The local part of each recipient decides what happens to it:
 *   tempfail...   deferred, 451 4.3.0
 *   permfail...   bounced, 550 5.1.1
 *   flakyN...     deferred for the first N attempts, then delivered
 *   down...       the whole attempt fails temporarily (421 4.4.2)
 *   ratelimit...  first attempt: deferred (429) and the instance paused
 *                 for 2 s (pmx_result_pause_transport); then delivered
 *   slow...       delivered after 2 seconds
 *   anything else delivered, 250 2.0.0
 * Every outcome is appended to the "log" file as one line:
 *   <unix usec> <instance> <queue id> <attempt> <recipient> <status>
 * With "open_fails": true, open_session fails as a refused connection;
 * "delay_ms" makes every send take that long (to catch sends in flight).
 *
 * Built only for the tests; never installed.
 */
#include <postmux/postmux.h>

#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

struct _PmxTransport {
  char    *name;
  char    *log;
  gboolean open_fails;
  gint64   delay_ms;
};

struct _PmxSession {
  PmxTransport *transport;
};

static const char scripted_schema[] =
  "{"
  "  \"type\": \"object\","
  "  \"additionalProperties\": false,"
  "  \"properties\": {"
  "    \"log\": { \"type\": \"string\" },"
  "    \"open_fails\": { \"type\": \"boolean\" },"
  "    \"delay_ms\": { \"type\": \"integer\", \"minimum\": 0 }"
  "  }"
  "}";

/* scripted_create - PmxTransportOps.create */
static PmxTransport *
scripted_create (const PmxTransportArgs *args,
                 GError                **error)
{
  PmxTransport *t = g_new0 (PmxTransport, 1);

  t->name = g_strdup (args->instance_name);
  t->log = g_strdup (json_object_get_string_member_with_default (args->options, "log", NULL));
  t->open_fails = json_object_get_boolean_member_with_default (args->options, "open_fails", FALSE);
  t->delay_ms = json_object_get_int_member_with_default (args->options, "delay_ms", 0);
  return t;
}

/* scripted_destroy - PmxTransportOps.destroy */
static void
scripted_destroy (PmxTransport *t)
{
  g_free (t->name);
  g_free (t->log);
  g_free (t);
}

/* scripted_open - PmxTransportOps.open_session */
static PmxSession *
scripted_open (PmxTransport *t,
               GError      **error)
{
  PmxSession *s;

  if (t->open_fails)
    {
      g_set_error (error, PMX_TRANSPORT_ERROR, PMX_TRANSPORT_ERROR_TEMPORARY,
                   "connection refused (scripted)");
      return NULL;
    }
  s = g_new0 (PmxSession, 1);
  s->transport = t;
  return s;
}

/* scripted_close - PmxTransportOps.close_session */
static void
scripted_close (PmxSession *s)
{
  g_free (s);
}

/* scripted_log - append one outcome line */
static void
scripted_log (PmxTransport      *t,
              const PmxEnvelope *env,
              const char        *rcpt,
              const char        *status)
{
  g_autofree char *line = NULL;
  int fd;

  if (t->log == NULL)
    return;
  line = g_strdup_printf ("%" G_GINT64_FORMAT " %s %s %u %s %s\n", g_get_real_time (), t->name,
                          env->queue_id, env->attempt, rcpt, status);
  fd = open (t->log, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0600);
  if (fd < 0)
    return;
  if (write (fd, line, strlen (line)) < 0)
    g_warning ("cannot write %s", t->log);
  close (fd);
}

/* scripted_send - PmxTransportOps.send */
static void
scripted_send (PmxSession        *s,
               const PmxEnvelope *env,
               const guint8      *message,
               gsize              len,
               PmxResult         *result)
{
  if (s->transport->delay_ms > 0)
    g_usleep (s->transport->delay_ms * 1000);
  for (gsize i = 0; i < env->n_recipients; i++)
    {
      const char *r = env->recipients[i];

      if (g_str_has_prefix (r, "ratelimit") && env->attempt == 1)
        {
          scripted_log (s->transport, env, r, "ratelimited");
          pmx_result_pause_transport (result, 2, "scripted: 429 Too Many Requests, Retry-After: 2");
          pmx_result_fail (result, PMX_FAILURE_TEMPORARY, 429, "4.7.0", "429 scripted: too many requests");
          return;
        }
      if (g_str_has_prefix (r, "down"))
        {
          scripted_log (s->transport, env, r, "down");
          pmx_result_fail (result, PMX_FAILURE_TEMPORARY, 421, "4.4.2", "421 4.4.2 scripted: service not available");
          return;
        }
    }
  for (gsize i = 0; i < env->n_recipients; i++)
    {
      const char *r = env->recipients[i];
      guint n = 0;

      if (g_str_has_prefix (r, "tempfail"))
        {
          pmx_result_set_recipient (result, i, PMX_RCPT_DEFERRED, 451, "4.3.0", "scripted: try again later");
          scripted_log (s->transport, env, r, "deferred");
        }
      else if (g_str_has_prefix (r, "permfail"))
        {
          pmx_result_set_recipient (result, i, PMX_RCPT_BOUNCED, 550, "5.1.1", "scripted: no such user");
          scripted_log (s->transport, env, r, "bounced");
        }
      else if (sscanf (r, "flaky%u", &n) == 1 && env->attempt <= n)
        {
          pmx_result_set_recipient (result, i, PMX_RCPT_DEFERRED, 451, "4.3.0", "scripted: flaky");
          scripted_log (s->transport, env, r, "deferred");
        }
      else
        {
          if (g_str_has_prefix (r, "slow"))
            g_usleep (2 * G_USEC_PER_SEC);
          pmx_result_set_recipient (result, i, PMX_RCPT_DELIVERED, 250, "2.0.0", "scripted: ok");
          scripted_log (s->transport, env, r, "delivered");
        }
    }
}

static const PmxTransportOps scripted_ops = {
  .create = scripted_create,
  .destroy = scripted_destroy,
  .open_session = scripted_open,
  .send = scripted_send,
  .close_session = scripted_close,
  .check = NULL,
};

PMX_TRANSPORT_DEFINE (scripted, "scripted", "0.1.0", "GPL-3.0-or-later",
                      "Test transport: outcomes chosen by the recipient's local part",
                      scripted_schema, &scripted_ops)

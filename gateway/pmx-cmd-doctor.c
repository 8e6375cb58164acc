/* SPDX-License-Identifier: GPL-3.0-or-later */
/*
 * pmx-cmd-doctor.c - `postmux doctor NAME` and `postmux send --test`:
 * talk to one transport directly, outside the queue and the daemon.
 *
 * doctor builds the instance from the config and prints what its check()
 * found, step by step, ending with a verdict.  send --test opens a session,
 * sends one composed message and prints each recipient's reply and the
 * transport's transcript.  Both trust the transport to redact secrets from
 * what it reports; neither prints an option value.
 */
#include "pmx-cmd.h"

#include "pmx-instance.h"
#include "postmux-result-private.h"

#include <stdio.h>
#include <string.h>

/* doctor_instance - config, loader and instance for transport @name */
static PmxInstance *
doctor_instance (PmxCmdCommon     *common,
                 const char       *command,
                 const char       *name,
                 PmxPluginLoader **out_loader,
                 PmxConfig       **out_config)
{
  g_autoptr(GError) error = NULL;
  g_autoptr(PmxConfig) config = pmx_cmd_load_config (common, NULL, &error);
  g_auto(GStrv) dirs = NULL;
  const PmxTransportConfig *tc;
  PmxPluginLoader *loader;
  PmxInstance *instance;

  if (config == NULL)
    {
      g_printerr ("postmux %s: %s\n", command, error->message);
      return NULL;
    }
  tc = pmx_config_get_transport (config, name);
  if (tc == NULL)
    {
      GString *known = g_string_new (NULL);

      for (guint i = 0; i < config->transports->len; i++)
        g_string_append_printf (known, "%s%s", i > 0 ? ", " : "",
                                ((PmxTransportConfig *) g_ptr_array_index (config->transports, i))->name);
      g_printerr ("postmux %s: no transport \"%s\" in %s — transports: %s\n", command, name,
                  config->path != NULL ? config->path : "the built-in config", known->str);
      g_string_free (known, TRUE);
      return NULL;
    }
  dirs = pmx_cmd_plugin_dirs (common, config);
  loader = pmx_plugin_loader_new ((const char *const *) dirs);
  instance = pmx_instance_new (loader, config, tc, NULL, &error);
  if (instance == NULL)
    {
      g_printerr ("postmux %s: %s\n", command, error->message);
      pmx_plugin_loader_free (loader);
      return NULL;
    }
  *out_loader = loader;
  *out_config = g_steal_pointer (&config);
  return instance;
}

/* doctor_status_word - fixed-width word for a check status */
static const char *
doctor_status_word (PmxCheckStatus status)
{
  switch (status)
    {
    case PMX_CHECK_OK: return "ok  ";
    case PMX_CHECK_WARN: return "warn";
    case PMX_CHECK_FAIL:
    default: return "FAIL";
    }
}

int
pmx_cmd_doctor (int    argc,
                char **argv)
{
  g_auto(PmxCmdCommon) common = { 0, };
  g_autoptr(PmxReport) report = NULL;
  g_autoptr(PmxConfig) config = NULL;
  PmxPluginLoader *loader = NULL;
  PmxInstance *instance;
  const PmxTransportOps *ops;
  GPtrArray *items;
  guint failed = 0, warned = 0;

  if (!pmx_cmd_parse ("doctor", "TRANSPORT",
                      "Checks one transport step by step — DNS, connection, TLS, EHLO, login, token —\n"
                      "without sending mail, and ends with a verdict and the likely fix.\n"
                      "Exits 0 when every step passed, 1 otherwise.",
                      NULL, pmx_cmd_common_entries (&common), &argc, &argv))
    return 2;
  if (argc != 2)
    {
      g_printerr ("postmux doctor: name one transport from the config (postmux doctor NAME)\n");
      return 2;
    }

  instance = doctor_instance (&common, "doctor", argv[1], &loader, &config);
  if (instance == NULL)
    return 1;
  ops = pmx_instance_get_ops (instance);
  printf ("transport %s (%s plugin)\n", argv[1], pmx_config_get_transport (config, argv[1])->plugin);
  report = pmx_report_new ();
  if (ops->check == NULL)
    pmx_report_add (report, PMX_CHECK_WARN, "verdict", "the %s plugin has no checks of its own",
                    pmx_config_get_transport (config, argv[1])->plugin);
  else
    (void) ops->check (pmx_instance_get_transport (instance), report);

  items = pmx_report_get_items (report);
  for (guint i = 0; i < items->len; i++)
    {
      PmxReportItem *item = g_ptr_array_index (items, i);

      failed += item->status == PMX_CHECK_FAIL;
      warned += item->status == PMX_CHECK_WARN;
      printf ("  %s  %-8s %s\n", doctor_status_word (item->status), item->step, item->text);
    }
  printf ("%s\n", failed > 0 ? "result: FAILED" : warned > 0 ? "result: ok, with warnings" : "result: ok");
  pmx_instance_unref (instance);
  pmx_plugin_loader_free (loader);
  return failed > 0 ? 1 : 0;
}

/* test_status_word - a word for a recipient outcome */
static const char *
test_status_word (PmxRcptStatus status)
{
  switch (status)
    {
    case PMX_RCPT_DELIVERED: return "delivered";
    case PMX_RCPT_DEFERRED: return "deferred";
    case PMX_RCPT_BOUNCED: return "bounced";
    case PMX_RCPT_PENDING:
    default: return "no outcome";
    }
}

int
pmx_cmd_send_test (PmxCmdCommon *common,
                   const char   *transport,
                   const char   *from,
                   GPtrArray    *recipients,
                   const char   *subject,
                   const char   *body)
{
  g_autoptr(PmxConfig) config = NULL;
  g_autoptr(PmxResult) result = NULL;
  g_autoptr(GBytes) data = NULL;
  g_autoptr(GError) error = NULL;
  g_autofree char *default_subject = NULL;
  g_autofree char *default_body = NULL;
  PmxPluginLoader *loader = NULL;
  PmxInstance *instance;
  const PmxTransportOps *ops;
  PmxSession *session;
  PmxEnvelope envelope = { 0, };
  const char *transcript;
  guint delivered = 0;

  if (transport == NULL)
    {
      g_printerr ("postmux send --test: name the transport with --transport NAME\n");
      return 2;
    }
  if (recipients->len == 0)
    {
      g_printerr ("postmux send --test: no recipients — give --to ADDRESS\n");
      return 2;
    }
  instance = doctor_instance (common, "send --test", transport, &loader, &config);
  if (instance == NULL)
    return 1;
  if (from == NULL)
    from = json_object_get_string_member_with_default (pmx_config_get_transport (config, transport)->options,
                                                       "default_from", NULL);
  if (from == NULL)
    {
      g_printerr ("postmux send --test: no sender — give --from ADDRESS or set default_from in the transport's options\n");
      pmx_instance_unref (instance);
      pmx_plugin_loader_free (loader);
      return 2;
    }

  default_subject = g_strdup_printf ("Postmux test message via transport %s", transport);
  default_body = g_strdup_printf ("This is a test message sent by `postmux send --test` through the transport \"%s\".\n"
                                  "If you can read it, the transport works.", transport);
  g_ptr_array_add (recipients, NULL);
  data = pmx_cmd_compose_message (from, (const char *const *) recipients->pdata,
                                  subject != NULL ? subject : default_subject,
                                  body != NULL ? body : default_body);
  g_ptr_array_remove_index (recipients, recipients->len - 1);

  ops = pmx_instance_get_ops (instance);
  result = pmx_result_new (recipients->len);
  pmx_result_request_transcript (result);
  session = ops->open_session (pmx_instance_get_transport (instance), &error);
  if (session == NULL)
    pmx_result_fail (result, PMX_FAILURE_TEMPORARY, 0, NULL, "cannot open a session: %s",
                     error != NULL ? error->message : "the transport gave no reason");
  else
    {
      envelope.queue_id = "TEST";
      envelope.sender = from;
      envelope.recipients = (const char *const *) recipients->pdata;
      envelope.n_recipients = recipients->len;
      envelope.attempt = 1;
      envelope.ingress = "local:test";
      ops->send (session, &envelope, g_bytes_get_data (data, NULL), g_bytes_get_size (data), result);
      ops->close_session (session);
    }

  transcript = pmx_result_get_transcript (result);
  if (transcript != NULL)
    printf ("transcript:\n%s%s", transcript, g_str_has_suffix (transcript, "\n") ? "" : "\n");
  for (guint i = 0; i < recipients->len; i++)
    {
      const PmxResultRecipient *r = pmx_result_get_recipient (result, i);

      delivered += r->status == PMX_RCPT_DELIVERED;
      printf ("<%s> %s (%u%s%s %s)\n", (char *) g_ptr_array_index (recipients, i), test_status_word (r->status),
              r->code, r->enhanced != NULL ? " " : "", r->enhanced != NULL ? r->enhanced : "",
              r->text != NULL ? r->text : "");
    }
  printf ("%s\n", delivered == recipients->len ? "result: delivered" : "result: NOT delivered");
  pmx_instance_unref (instance);
  pmx_plugin_loader_free (loader);
  return delivered == recipients->len ? 0 : 1;
}

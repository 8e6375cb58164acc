/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * pmx-result.c - per-recipient outcomes of one delivery attempt, and doctor
 * reports.
 *
 * A transport fills a PmxResult through the public setters; the host reads
 * it through postmux-result-private.h.  The setters trust nothing: an index
 * out of range is a programmer error (g_return_if_fail), and a whole-attempt
 * failure never overwrites an outcome the transport already gave.
 */
#include "postmux-result-private.h"

#include <stdarg.h>

struct _PmxResult {
  gsize               n_recipients;
  PmxResultRecipient *recipients;
  PmxFailureClass     failure;
  guint               failure_code;
  char               *failure_text;
  gint64              retry_after;
  gint64              pause_seconds;
  char               *pause_reason;
  char               *remote_id;
  char               *transcript;
  gboolean            session_broken;
  gboolean            wants_transcript;
};

struct _PmxReport {
  GPtrArray *items;
};

G_DEFINE_QUARK (pmx-transport-error-quark, pmx_transport_error)

PmxResult *
pmx_result_new (gsize n_recipients)
{
  PmxResult *result = g_new0 (PmxResult, 1);

  result->n_recipients = n_recipients;
  result->recipients = g_new0 (PmxResultRecipient, MAX (n_recipients, 1));
  result->retry_after = -1;
  result->pause_seconds = -1;
  return result;
}

void
pmx_result_free (PmxResult *result)
{
  if (result == NULL)
    return;
  for (gsize i = 0; i < result->n_recipients; i++)
    {
      g_free (result->recipients[i].enhanced);
      g_free (result->recipients[i].text);
    }
  g_free (result->recipients);
  g_free (result->failure_text);
  g_free (result->remote_id);
  g_free (result->transcript);
  g_free (result->pause_reason);
  g_free (result);
}

/* result_set - fill one recipient slot, replacing what was there */
static void
result_set (PmxResultRecipient *r,
            PmxRcptStatus       status,
            guint               code,
            const char         *enhanced,
            const char         *text)
{
  r->status = status;
  r->code = code;
  g_free (r->enhanced);
  r->enhanced = g_strdup (enhanced);
  g_free (r->text);
  r->text = g_strdup (text);
}

void
pmx_result_set_recipient (PmxResult    *result,
                          gsize         index,
                          PmxRcptStatus status,
                          guint         code,
                          const char   *enhanced,
                          const char   *text)
{
  g_return_if_fail (result != NULL);
  g_return_if_fail (index < result->n_recipients);
  g_return_if_fail (status != PMX_RCPT_PENDING);

  result_set (&result->recipients[index], status, code, enhanced, text);
}

void
pmx_result_set_pending (PmxResult    *result,
                        PmxRcptStatus status,
                        guint         code,
                        const char   *enhanced,
                        const char   *text)
{
  g_return_if_fail (result != NULL);
  g_return_if_fail (status != PMX_RCPT_PENDING);

  for (gsize i = 0; i < result->n_recipients; i++)
    if (result->recipients[i].status == PMX_RCPT_PENDING)
      result_set (&result->recipients[i], status, code, enhanced, text);
}

void
pmx_result_fail (PmxResult      *result,
                 PmxFailureClass failure,
                 guint           code,
                 const char     *enhanced,
                 const char     *format,
                 ...)
{
  va_list args;

  g_return_if_fail (result != NULL);
  g_return_if_fail (failure != PMX_FAILURE_NONE);
  g_return_if_fail (format != NULL);

  va_start (args, format);
  g_free (result->failure_text);
  result->failure_text = g_strdup_vprintf (format, args);
  va_end (args);

  result->failure = failure;
  result->failure_code = code;
  pmx_result_set_pending (result,
                          failure == PMX_FAILURE_PERMANENT ? PMX_RCPT_BOUNCED : PMX_RCPT_DEFERRED,
                          code, enhanced, result->failure_text);
}

void
pmx_result_set_retry_after (PmxResult *result,
                            gint64     seconds)
{
  g_return_if_fail (result != NULL);
  result->retry_after = MAX (seconds, 0);
}

void
pmx_result_pause_transport (PmxResult  *result,
                            gint64      seconds,
                            const char *reason)
{
  g_return_if_fail (result != NULL);
  result->pause_seconds = MAX (seconds, 0);
  g_free (result->pause_reason);
  result->pause_reason = g_strdup (reason != NULL ? reason : "rate limited by the provider");
  pmx_result_set_retry_after (result, result->pause_seconds);
}

void
pmx_result_set_remote_id (PmxResult  *result,
                          const char *remote_id)
{
  g_return_if_fail (result != NULL);
  g_free (result->remote_id);
  result->remote_id = g_strdup (remote_id);
}

void
pmx_result_set_transcript (PmxResult  *result,
                           const char *transcript)
{
  g_return_if_fail (result != NULL);
  g_free (result->transcript);
  result->transcript = g_strdup (transcript);
}

const char *
pmx_result_get_transcript (PmxResult *result)
{
  return result->transcript;
}

void
pmx_result_set_session_broken (PmxResult *result)
{
  g_return_if_fail (result != NULL);
  result->session_broken = TRUE;
}

gsize
pmx_result_get_n_recipients (PmxResult *result)
{
  return result->n_recipients;
}

const PmxResultRecipient *
pmx_result_get_recipient (PmxResult *result,
                          gsize      index)
{
  g_return_val_if_fail (index < result->n_recipients, NULL);
  return &result->recipients[index];
}

PmxFailureClass
pmx_result_get_failure (PmxResult *result)
{
  return result->failure;
}

const char *
pmx_result_get_failure_text (PmxResult *result)
{
  return result->failure_text;
}

guint
pmx_result_get_failure_code (PmxResult *result)
{
  return result->failure_code;
}

gint64
pmx_result_get_retry_after (PmxResult *result)
{
  return result->retry_after;
}

gint64
pmx_result_get_pause (PmxResult   *result,
                      const char **out_reason)
{
  if (out_reason != NULL)
    *out_reason = result->pause_reason;
  return result->pause_seconds;
}

const char *
pmx_result_get_remote_id (PmxResult *result)
{
  return result->remote_id;
}

gboolean
pmx_result_get_session_broken (PmxResult *result)
{
  return result->session_broken;
}

/* report_item_free - GDestroyNotify for PmxReportItem */
static void
report_item_free (gpointer data)
{
  PmxReportItem *item = data;

  g_free (item->step);
  g_free (item->text);
  g_free (item);
}

PmxReport *
pmx_report_new (void)
{
  PmxReport *report = g_new0 (PmxReport, 1);

  report->items = g_ptr_array_new_with_free_func (report_item_free);
  return report;
}

void
pmx_report_free (PmxReport *report)
{
  if (report == NULL)
    return;
  g_ptr_array_unref (report->items);
  g_free (report);
}

GPtrArray *
pmx_report_get_items (PmxReport *report)
{
  return report->items;
}

void
pmx_report_add (PmxReport     *report,
                PmxCheckStatus status,
                const char    *step,
                const char    *format,
                ...)
{
  PmxReportItem *item;
  va_list args;

  g_return_if_fail (report != NULL);
  g_return_if_fail (step != NULL && format != NULL);

  item = g_new0 (PmxReportItem, 1);
  item->status = status;
  item->step = g_strdup (step);
  va_start (args, format);
  item->text = g_strdup_vprintf (format, args);
  va_end (args);
  g_ptr_array_add (report->items, item);
}

gboolean
pmx_result_wants_transcript (PmxResult *result)
{
  g_return_val_if_fail (result != NULL, FALSE);
  return result->wants_transcript;
}

void
pmx_result_request_transcript (PmxResult *result)
{
  result->wants_transcript = TRUE;
}

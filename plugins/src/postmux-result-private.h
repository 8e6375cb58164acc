/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * postmux-result-private.h - the host's side of PmxResult and PmxReport.
 * Never installed; never seen by a transport.
 */
#pragma once

#ifndef PMX_COMPILATION
#define PMX_COMPILATION
#endif
#include <postmux/postmux.h>

G_BEGIN_DECLS

typedef struct {
  PmxRcptStatus status;
  guint         code;
  char         *enhanced;
  char         *text;
} PmxResultRecipient;

PmxResult   *pmx_result_new                (gsize      n_recipients);
void         pmx_result_free               (PmxResult *result);
gsize        pmx_result_get_n_recipients   (PmxResult *result);
const PmxResultRecipient *pmx_result_get_recipient (PmxResult *result,
                                                    gsize      index);
PmxFailureClass pmx_result_get_failure     (PmxResult *result);
const char  *pmx_result_get_failure_text   (PmxResult *result);
guint        pmx_result_get_failure_code   (PmxResult *result);
gint64       pmx_result_get_retry_after    (PmxResult *result);  /* -1 when unset */
/* Seconds to pause the instance (-1 when not asked) and the reason. */
gint64       pmx_result_get_pause          (PmxResult   *result,
                                            const char **out_reason);
const char  *pmx_result_get_remote_id      (PmxResult *result);
gboolean     pmx_result_get_session_broken (PmxResult *result);
const char  *pmx_result_get_transcript     (PmxResult *result);   /* or NULL */
void         pmx_result_request_transcript (PmxResult *result);

typedef struct {
  PmxCheckStatus status;
  char          *step;
  char          *text;
} PmxReportItem;

PmxReport   *pmx_report_new        (void);
void         pmx_report_free       (PmxReport *report);
GPtrArray   *pmx_report_get_items  (PmxReport *report);   /* PmxReportItem, borrowed */

G_DEFINE_AUTOPTR_CLEANUP_FUNC (PmxResult, pmx_result_free)
G_DEFINE_AUTOPTR_CLEANUP_FUNC (PmxReport, pmx_report_free)

G_END_DECLS

/* SPDX-License-Identifier: GPL-3.0-or-later */
/*
 * pmx-graph-message.h - what the graph transport needs to know about a
 * message: its header recipients against this attempt's envelope, a copy
 * whose To/Cc/Bcc equal the envelope, and the Graph message resource
 * (JSON) with its attachments.  Internal to the graph transport.
 */
#pragma once

#include <postmux/postmux.h>
#include <gmime/gmime.h>

G_BEGIN_DECLS

/* One attachment taken out of the MIME tree, decoded. */
typedef struct {
  char    *name;
  char    *content_type;
  char    *content_id;    /* without <>, NULL when none */
  gboolean is_inline;
  GBytes  *data;
} GraphAttachment;

void graph_attachment_free (GraphAttachment *attachment);

/* A parsed message and where its header recipients stand against the
 * envelope of this attempt (addresses compared case-insensitively). */
typedef struct {
  GMimeMessage *message;
  gboolean      headers_match;    /* To+Cc+Bcc header addresses == envelope, as sets */
} GraphMessage;

/* Returns: (transfer full): the parsed message, or NULL when @raw is not a
 * message at all. */
GraphMessage *graph_message_parse (const guint8      *raw,
                                   gsize              raw_len,
                                   const PmxEnvelope *envelope);
void          graph_message_free  (GraphMessage *message);

/* graph_message_rewrite_recipients:
 * A copy of @raw whose To and Cc keep only the addresses of this attempt's
 * envelope (display names kept), and whose Bcc lists the envelope
 * recipients found in neither; every other byte is unchanged.
 * Returns: (transfer full). */
GBytes *graph_message_rewrite_recipients (GraphMessage      *message,
                                          const guint8      *raw,
                                          gsize              raw_len,
                                          const PmxEnvelope *envelope);

/* graph_message_to_json:
 * @from: (nullable): the "from" address to set (NULL: none, the mailbox
 *   sends as itself).
 * @out_attachments: (out) (transfer full) (element-type GraphAttachment):
 *   every attachment; the returned resource has none of them, the caller
 *   decides whether they go inline (graph_attachment_to_json()) or by
 *   upload session.
 * Returns: (transfer full): the Graph message resource: subject, body,
 *   toRecipients/ccRecipients/bccRecipients exactly as in
 *   graph_message_rewrite_recipients(), from, replyTo, importance and at
 *   most five non-empty x- internetMessageHeaders. */
JsonObject *graph_message_to_json (GraphMessage      *message,
                                   const PmxEnvelope *envelope,
                                   const char        *from,
                                   GPtrArray        **out_attachments);

/* Returns: (transfer full): a #microsoft.graph.fileAttachment. */
JsonObject *graph_attachment_to_json (const GraphAttachment *attachment);

/* Returns: (transfer none) (nullable): the From header's address. */
const char *graph_message_get_from_address (GraphMessage *message);

G_DEFINE_AUTOPTR_CLEANUP_FUNC (GraphMessage, graph_message_free)

G_END_DECLS

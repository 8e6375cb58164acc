/* SPDX-License-Identifier: GPL-3.0-or-later */
/*
 * pmx-gmail-envelope.h - make a message's headers say what its envelope
 * says, for an API (Gmail) that delivers to the headers and has no
 * envelope.
 */
#pragma once

#include <glib.h>

G_BEGIN_DECLS

/**
 * pmx_gmail_envelope_rewrite:
 * @message: the RFC 5322 message, CRLF line ends.
 * @recipients: (array length=n_recipients): the attempt's envelope.
 * @remove_unlisted: take To/Cc addresses outside the envelope out of the
 *   header instead of refusing.
 * @out_unlisted: (out) (transfer full): on refusal, the To/Cc addresses
 *   outside the envelope ("<a@x>, <b@y>", the first five and a count).
 *
 * Every Bcc field is dropped and one Bcc field naming the envelope
 * recipients that To and Cc do not name is appended to the header block.
 * A To/Cc address that is not an envelope recipient is refused (NULL), or
 * with @remove_unlisted removed (a field left empty is dropped; the field
 * is re-encoded, folded, CRLF).  Every other header byte and the body are
 * kept.  Addresses compare ASCII-case-insensitively; groups are looked into.
 *
 * Returns: (transfer full) (nullable): the bytes to send (@message itself,
 *   not copied, when nothing changes; it must then outlive the result), or
 *   NULL with @out_unlisted set.
 */
GBytes *pmx_gmail_envelope_rewrite (const guint8       *message,
                                    gsize               len,
                                    const char *const  *recipients,
                                    gsize               n_recipients,
                                    gboolean            remove_unlisted,
                                    char              **out_unlisted);

G_END_DECLS

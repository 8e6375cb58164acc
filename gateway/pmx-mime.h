/* SPDX-License-Identifier: GPL-3.0-or-later */
/*
 * pmx-mime.h - build an RFC 5322 message from the JSON of the HTTP
 * submission API (schemas/message.schema.json), with GMime.
 *
 * Pure: no I/O, no global state but GMime's own initialisation, safe to
 * call from any thread, so it can be unit-tested and fuzzed.
 */
#pragma once

#include <glib.h>
#include <json-glib/json-glib.h>

G_BEGIN_DECLS

#define PMX_MIME_ERROR (pmx_mime_error_quark ())
typedef enum {
  PMX_MIME_ERROR_FAILED,
  PMX_MIME_ERROR_INVALID,     /* a member has the wrong type or shape */
  PMX_MIME_ERROR_ADDRESS,     /* not an address like user@example.com */
  PMX_MIME_ERROR_RECIPIENTS,  /* no recipient in to, cc or bcc */
  PMX_MIME_ERROR_HEADER,      /* CR or LF in a header (injection), or a reserved header name */
  PMX_MIME_ERROR_ENCODING,    /* attachment content is not base64 */
  PMX_MIME_ERROR_PARSE,       /* pmx_mime_parse_request(): not a JSON object */
} PmxMimeErrorCode;

GQuark pmx_mime_error_quark (void);

/* Initialise GMime for the process: call from main() before any thread
 * starts or plugin loads.  Safe to call again. */
void   pmx_mime_init (void);

/* Deepest nesting of arrays and objects pmx_mime_parse_request() takes. */
#define PMX_MIME_MAX_DEPTH 32

/* Parse a request body: JSON text whose root is an object, nested at most
 * PMX_MIME_MAX_DEPTH deep (checked before json-glib's recursive parser
 * sees it).  Returns (transfer full) or NULL with PMX_MIME_ERROR_PARSE. */
JsonObject *pmx_mime_parse_request (const char *text,
                                    gsize       length,
                                    GError    **error);

/* Build the message described by @msg.  Never trusts @msg to have passed
 * the schema: every member is type-checked again, and CR or LF in anything
 * that lands in a header is refused.
 *
 * Text and html become multipart/alternative; attachments with a
 * content_id sit with the html under multipart/related; other attachments
 * make the whole multipart/mixed.  Non-ASCII subjects, display names and
 * header values are RFC 2047 encoded.  Date and Message-ID are added unless
 * "headers" gives them.  Bcc recipients go to @out_recipients only.  Line
 * ends are CRLF.
 *
 * @out_sender: (out) (transfer full): the envelope sender ("from" address)
 * @out_recipients: (out) (transfer full): to, cc and bcc addresses, each
 *   once (compared without case), as char *
 * @out_pointer: (out) (optional) (transfer full): on failure, the RFC 6901
 *   pointer of the member at fault ("" for the whole message)
 * Returns: (transfer full): the message bytes, or NULL with @error set. */
GBytes *pmx_mime_build_full (JsonObject  *msg,
                             char       **out_sender,
                             GPtrArray  **out_recipients,
                             char       **out_pointer,
                             GError     **error);

/* pmx_mime_build_full() without the pointer. */
GBytes *pmx_mime_build      (JsonObject  *msg,
                             char       **out_sender,
                             GPtrArray  **out_recipients,
                             GError     **error);

/* Is @address a plain addr-spec we accept (local@domain, no spaces,
 * controls or specials, at most 254 bytes)? */
gboolean pmx_mime_address_is_valid (const char *address);

G_END_DECLS

/* SPDX-License-Identifier: GPL-3.0-or-later */
/*
 * fake-transport.c - one source, many fake transports for test-loader.
 *
 * tests/plugin/meson.build builds it once per case as pmx-<case>.so with
 * FAKE_NAME set to the case ("abi-major"), FAKE_SYMNAME to its symbol form
 * (abi_major) and at most one more FAKE_* switch naming what is wrong.  Without a switch it is a small, correct
 * transport: every recipient is delivered with "250 2.0.0 ok <instance>".
 *
 * Trusts: everything; it exists to be refused.  Fails: on purpose.
 */
#include <postmux/postmux.h>

struct _PmxTransport {
  char *instance_name;
};

struct _PmxSession {
  PmxTransport *transport;
};

/* fake_create - remember the instance name, or fail as the case asks */
static PmxTransport *
fake_create (const PmxTransportArgs *args,
             GError                **error)
{
#if defined(FAKE_CREATE_ERROR)
  g_set_error (error, PMX_TRANSPORT_ERROR, PMX_TRANSPORT_ERROR_CONFIG,
               "option 'colour' must be blue — set it to blue");
  return NULL;
#elif defined(FAKE_CREATE_NULL)
  return NULL;  /* and no error: a plugin bug the host must survive */
#else
  PmxTransport *self = g_new0 (PmxTransport, 1);

  self->instance_name = g_strdup (args->instance_name);
  return self;
#endif
}

/* fake_destroy - free an instance */
static void
fake_destroy (PmxTransport *self)
{
  g_free (self->instance_name);
  g_free (self);
}

/* fake_open_session - a session only points back at its instance */
static PmxSession *
fake_open_session (PmxTransport *self,
                   GError      **error)
{
  PmxSession *session = g_new0 (PmxSession, 1);

  session->transport = self;
  return session;
}

/* fake_send - deliver every recipient */
static void
fake_send (PmxSession        *session,
           const PmxEnvelope *envelope,
           const guint8      *message,
           gsize              message_len,
           PmxResult         *result)
{
  for (gsize i = 0; i < envelope->n_recipients; i++)
    {
      g_autofree char *text = g_strdup_printf ("ok %s", session->transport->instance_name);

      pmx_result_set_recipient (result, i, PMX_RCPT_DELIVERED, 250, "2.0.0", text);
    }
}

/* fake_close_session - free a session */
static void
fake_close_session (PmxSession *session)
{
  g_free (session);
}

/* fake_check - always fine */
static gboolean
fake_check (PmxTransport *self,
            PmxReport    *report)
{
  pmx_report_add (report, PMX_CHECK_OK, "fake", "instance %s is fine", self->instance_name);
  return TRUE;
}

/* Unused by the null-desc case only. */
static const PmxTransportOps fake_ops G_GNUC_UNUSED = {
  .create = fake_create,
  .destroy = fake_destroy,
  .open_session = fake_open_session,
  .send = fake_send,
  .close_session = fake_close_session,
  .check = fake_check,
};

#if defined(FAKE_BAD_SCHEMA)
#define FAKE_SCHEMA "{ \"type\": \"object\", \"properties\": "
#elif defined(FAKE_INVALID_SCHEMA)
#define FAKE_SCHEMA "{ \"type\": \"colour\" }"
#else
#define FAKE_SCHEMA "{ \"type\": \"object\", \"additionalProperties\": false }"
#endif

/* The name in the descriptor: the file's, unless the case lies about it. */
#if defined(FAKE_DESC_NAME)
#define FAKE_DESC_NAME_STR FAKE_DESC_NAME
#else
#define FAKE_DESC_NAME_STR FAKE_NAME
#endif

/* Expand FAKE_SYMNAME before the macros below paste it into a symbol. */
#define FAKE_DEFINE(symname) \
  PMX_TRANSPORT_DEFINE (symname, FAKE_DESC_NAME_STR, "1.0", "GPL-3.0-or-later", \
                        "a fake transport for the loader tests", FAKE_SCHEMA, &fake_ops)
#define FAKE_GET_DESC_NAME(symname) G_PASTE (G_PASTE (pmx_transport_, symname), _get_desc)
#define FAKE_GET_DESC FAKE_GET_DESC_NAME (FAKE_SYMNAME)

#if defined(FAKE_ABI_MAJOR) || defined(FAKE_ABI_MINOR)

#ifndef FAKE_ABI_MAJOR
#define FAKE_ABI_MAJOR PMX_ABI_MAJOR
#endif
#ifndef FAKE_ABI_MINOR
#define FAKE_ABI_MINOR PMX_ABI_MINOR
#endif

/* Written by hand: the macro always stamps the SDK's own version. */
PMX_EXPORT const PmxTransportDesc *FAKE_GET_DESC (void);
PMX_EXPORT const PmxTransportDesc *
FAKE_GET_DESC (void)
{
  static const PmxTransportDesc desc = {
    FAKE_ABI_MAJOR, FAKE_ABI_MINOR, FAKE_DESC_NAME_STR, "1.0", "GPL-3.0-or-later",
    "a fake transport for the loader tests", FAKE_SCHEMA, &fake_ops, { NULL, }
  };
  return &desc;
}

#elif defined(FAKE_NULL_DESC)

PMX_EXPORT const PmxTransportDesc *FAKE_GET_DESC (void);
PMX_EXPORT const PmxTransportDesc *
FAKE_GET_DESC (void)
{
  return NULL;
}

#elif defined(FAKE_NO_SYMBOL)

/* Exports its get_desc under another name, as a renamed file would. */
FAKE_DEFINE (renamed)

#else

FAKE_DEFINE (FAKE_SYMNAME)

#endif

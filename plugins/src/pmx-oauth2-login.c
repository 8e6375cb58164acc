/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * pmx-oauth2-login.c - the interactive logins that give a refresh-token
 * source its first refresh token: authorization code with PKCE on a
 * loopback redirect, and the device code flow.
 *
 * RFC 6749 §4.1 (authorization code), RFC 7636 (PKCE, S256 only),
 * RFC 8252 §7.3 (loopback redirect for native apps), RFC 8628 (device
 * authorization grant; slow_down adds 5 seconds).  Entra ID v2.0
 * authorize/devicecode endpoints; Google's authorize endpoint with
 * access_type=offline.  Google refuses Gmail scopes in the device flow,
 * so a google source never starts one.
 *
 * Trusts the source it is given; the redirect listener (the caller)
 * checks the state value.  Codes, verifiers and tokens are wiped when freed
 * and never logged.
 */
#include "pmx-oauth2-private.h"

#include <string.h>
#include <openssl/rand.h>

void
pmx_oauth2_pkce_new (char **out_verifier,
                     char **out_challenge)
{
  guint8 random[32];
  guint8 digest[32];
  gsize digest_len = sizeof digest;
  GChecksum *sum;

  g_return_if_fail (out_verifier != NULL && out_challenge != NULL);

  if (RAND_bytes (random, sizeof random) != 1)
    g_error ("pmx_oauth2_pkce_new: the system has no source of random bytes");
  *out_verifier = pmx_oauth2_base64url (random, sizeof random);
  explicit_bzero (random, sizeof random);
  sum = g_checksum_new (G_CHECKSUM_SHA256);
  g_checksum_update (sum, (const guchar *) *out_verifier, -1);
  g_checksum_get_digest (sum, digest, &digest_len);
  g_checksum_free (sum);
  *out_challenge = pmx_oauth2_base64url (digest, digest_len);
}

/* login_check_grant - interactive logins only make sense for refresh tokens */
static gboolean
login_check_grant (PmxTokenSource *source,
                   GError        **error)
{
  if (g_strcmp0 (pmx_token_source_get_grant (source), "refresh_token") == 0)
    return TRUE;
  g_set_error (error, PMX_OAUTH2_ERROR, PMX_OAUTH2_ERROR_CONFIG,
               "%s uses the %s grant (app-only): it gets its tokens by itself and needs no login — "
               "for a delegated (user) login set \"grant\": \"refresh_token\" in the credential",
               pmx_token_source_get_label (source), pmx_token_source_get_grant (source));
  return FALSE;
}

char *
pmx_token_source_dup_authorize_url (PmxTokenSource *source,
                                    const char     *redirect_uri,
                                    const char     *state,
                                    const char     *code_challenge,
                                    GError        **error)
{
  const char *endpoint;
  const char *scopes;
  GString *url;

  g_return_val_if_fail (source != NULL, NULL);
  g_return_val_if_fail (redirect_uri != NULL && state != NULL && code_challenge != NULL, NULL);

  if (!login_check_grant (source, error))
    return NULL;
  endpoint = pmx_token_source_get_authorize_endpoint (source);
  if (endpoint == NULL)
    {
      g_set_error (error, PMX_OAUTH2_ERROR, PMX_OAUTH2_ERROR_CONFIG,
                   "%s: no authorization endpoint is known for a %s credential — set "
                   "\"authorization_endpoint\" (the provider's OAuth2 authorize URL)",
                   pmx_token_source_get_label (source), pmx_token_source_get_kind (source));
      return NULL;
    }
  scopes = pmx_token_source_get_scopes (source);

  url = g_string_new (NULL);
  pmx_oauth2_form_add (url, "response_type", "code");
  pmx_oauth2_form_add (url, "client_id", pmx_token_source_get_client_id (source));
  pmx_oauth2_form_add (url, "redirect_uri", redirect_uri);
  if (scopes != NULL)
    pmx_oauth2_form_add (url, "scope", scopes);
  pmx_oauth2_form_add (url, "state", state);
  pmx_oauth2_form_add (url, "code_challenge", code_challenge);
  pmx_oauth2_form_add (url, "code_challenge_method", "S256");
  if (g_str_equal (pmx_token_source_get_kind (source), "google"))
    {
      /* Without these Google issues no refresh token on a second login. */
      pmx_oauth2_form_add (url, "access_type", "offline");
      pmx_oauth2_form_add (url, "prompt", "consent");
    }
  g_string_prepend (url, strchr (endpoint, '?') != NULL ? "&" : "?");
  g_string_prepend (url, endpoint);
  return g_string_free (url, FALSE);
}

gboolean
pmx_token_source_redeem_code (PmxTokenSource *source,
                              const char     *code,
                              const char     *redirect_uri,
                              const char     *code_verifier,
                              GCancellable   *cancellable,
                              GError        **error)
{
  const char *fields[] = {
    "code", code,
    "redirect_uri", redirect_uri,
    "code_verifier", code_verifier,
    NULL,
  };

  g_return_val_if_fail (source != NULL, FALSE);
  g_return_val_if_fail (code != NULL && redirect_uri != NULL && code_verifier != NULL, FALSE);

  if (!login_check_grant (source, error))
    return FALSE;
  if (!pmx_token_source_redeem (source, "authorization_code", fields, NULL, cancellable, error))
    {
      g_prefix_error (error, "redeeming the authorization code: ");
      return FALSE;
    }
  return TRUE;
}

void
pmx_device_code_clear (PmxDeviceCode *code)
{
  g_return_if_fail (code != NULL);
  g_clear_pointer (&code->device_code, pmx_secret_free);
  g_clear_pointer (&code->user_code, g_free);
  g_clear_pointer (&code->verification_uri, g_free);
  g_clear_pointer (&code->message, g_free);
  code->expires_at = 0;
  code->interval = 0;
}

gboolean
pmx_token_source_start_device_login (PmxTokenSource *source,
                                     PmxDeviceCode  *out_code,
                                     GCancellable   *cancellable,
                                     GError        **error)
{
  g_autoptr(JsonObject) answer = NULL;
  const char *endpoint, *scopes;
  GString *form;
  gint64 expires_in, interval;

  g_return_val_if_fail (source != NULL && out_code != NULL, FALSE);
  memset (out_code, 0, sizeof *out_code);

  if (g_str_equal (pmx_token_source_get_kind (source), "google"))
    {
      g_set_error (error, PMX_OAUTH2_ERROR, PMX_OAUTH2_ERROR_CONFIG,
                   "%s: Google refuses Gmail scopes (https://mail.google.com/, gmail.send) in the device "
                   "code flow — log in without --device (a browser on this machine, or one reaching it "
                   "through an SSH tunnel to the printed loopback port), or use a service account with "
                   "domain-wide delegation (Google Workspace)", pmx_token_source_get_label (source));
      return FALSE;
    }
  if (!login_check_grant (source, error))
    return FALSE;
  endpoint = pmx_token_source_get_device_endpoint (source);
  if (endpoint == NULL)
    {
      g_set_error (error, PMX_OAUTH2_ERROR, PMX_OAUTH2_ERROR_CONFIG,
                   "%s: no device authorization endpoint is known for a %s credential — set "
                   "\"device_authorization_endpoint\", or log in without --device",
                   pmx_token_source_get_label (source), pmx_token_source_get_kind (source));
      return FALSE;
    }
  if (!pmx_oauth2_check_endpoint (endpoint, error))
    {
      g_prefix_error (error, "%s: ", pmx_token_source_get_label (source));
      return FALSE;
    }

  scopes = pmx_token_source_get_scopes (source);
  form = g_string_new (NULL);
  pmx_oauth2_form_add (form, "client_id", pmx_token_source_get_client_id (source));
  if (scopes != NULL)
    pmx_oauth2_form_add (form, "scope", scopes);
  answer = pmx_token_source_post_raw (source, endpoint, form->str, cancellable, error);
  g_string_free (form, TRUE);
  if (answer == NULL)
    return FALSE;

  out_code->device_code = g_strdup (json_object_get_string_member_with_default (answer, "device_code", NULL));
  out_code->user_code = g_strdup (json_object_get_string_member_with_default (answer, "user_code", NULL));
  out_code->verification_uri = g_strdup (json_object_get_string_member_with_default (answer, "verification_uri", NULL));
  out_code->message = g_strdup (json_object_get_string_member_with_default (answer, "message", NULL));
  expires_in = json_object_get_int_member_with_default (answer, "expires_in", 900);
  interval = json_object_get_int_member_with_default (answer, "interval", 5);
  out_code->expires_at = g_get_real_time () / G_USEC_PER_SEC + CLAMP (expires_in, 1, 86400);
  out_code->interval = (guint) CLAMP (interval, 1, 60);
  if (out_code->device_code == NULL || out_code->user_code == NULL || out_code->verification_uri == NULL)
    {
      pmx_device_code_clear (out_code);
      g_set_error (error, PMX_OAUTH2_ERROR, PMX_OAUTH2_ERROR_AUTH,
                   "%s: %s did not answer with device_code, user_code and verification_uri — "
                   "check device_authorization_endpoint", pmx_token_source_get_label (source), endpoint);
      return FALSE;
    }
  return TRUE;
}

gboolean
pmx_token_source_finish_device_login (PmxTokenSource      *source,
                                      const PmxDeviceCode *code,
                                      GCancellable        *cancellable,
                                      GError             **error)
{
  const char *fields[] = { "device_code", NULL, NULL };
  guint interval;

  g_return_val_if_fail (source != NULL && code != NULL && code->device_code != NULL, FALSE);

  fields[1] = code->device_code;
  interval = MAX (code->interval, 1);
  for (;;)
    {
      g_autoptr(GError) local_error = NULL;
      g_autofree char *error_code = NULL;

      /* RFC 8628 §3.4: wait the interval before every poll, the first too. */
      for (guint waited = 0; waited < interval * 10; waited++)
        {
          if (g_cancellable_set_error_if_cancelled (cancellable, error))
            return FALSE;
          g_usleep (G_USEC_PER_SEC / 10);
        }
      if (g_get_real_time () / G_USEC_PER_SEC >= code->expires_at)
        {
          g_set_error (error, PMX_OAUTH2_ERROR, PMX_OAUTH2_ERROR_NEEDS_LOGIN,
                       "%s: the device code expired before the sign-in was completed — run the login again",
                       pmx_token_source_get_label (source));
          return FALSE;
        }
      if (pmx_token_source_redeem (source, "urn:ietf:params:oauth:grant-type:device_code", fields,
                                   &error_code, cancellable, &local_error))
        return TRUE;
      if (g_strcmp0 (error_code, "authorization_pending") == 0)
        continue;
      if (g_strcmp0 (error_code, "slow_down") == 0)
        {
          interval += 5;
          continue;
        }
      if (g_strcmp0 (error_code, "authorization_declined") == 0 || g_strcmp0 (error_code, "access_denied") == 0)
        {
          g_set_error (error, PMX_OAUTH2_ERROR, PMX_OAUTH2_ERROR_NEEDS_LOGIN,
                       "%s: the sign-in was declined — run the login again and accept the permissions",
                       pmx_token_source_get_label (source));
          return FALSE;
        }
      if (g_strcmp0 (error_code, "expired_token") == 0)
        {
          g_set_error (error, PMX_OAUTH2_ERROR, PMX_OAUTH2_ERROR_NEEDS_LOGIN,
                       "%s: the device code expired before the sign-in was completed — run the login again",
                       pmx_token_source_get_label (source));
          return FALSE;
        }
      g_propagate_error (error, g_steal_pointer (&local_error));
      return FALSE;
    }
}

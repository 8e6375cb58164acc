/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * pmx-oauth2-jwt.c - signed JWTs for OAuth2 client authentication: the
 * Entra ID client assertion and the Google service-account JWT bearer grant.
 *
 * RFC 7515 (JWS compact serialization), RFC 7518 §3.3 (RS256 =
 * RSASSA-PKCS1-v1_5 with SHA-256), RFC 7523 (JWT bearer grant and client
 * assertion), RFC 4648 §5 (base64url, no padding).
 *
 * Trusts the key material it is given; refuses keys that are not RSA and a
 * certificate whose public key does not match the private key.  PEM copies
 * made here are wiped; OpenSSL owns the key once parsed.
 */
#include "pmx-oauth2-private.h"

#include <string.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

char *
pmx_oauth2_base64url (const guint8 *data,
                      gsize         len)
{
  char *out = g_base64_encode (data, len);
  char *p;

  for (p = out; *p != '\0'; p++)
    {
      if (*p == '+')
        *p = '-';
      else if (*p == '/')
        *p = '_';
      else if (*p == '=')
        {
          *p = '\0';
          break;
        }
    }
  return out;
}

/* jwt_openssl_reason - the first queued OpenSSL error, as text */
static char *
jwt_openssl_reason (void)
{
  unsigned long e = ERR_get_error ();
  char buf[256];

  ERR_clear_error ();
  if (e == 0)
    return g_strdup ("unknown OpenSSL error");
  ERR_error_string_n (e, buf, sizeof buf);
  return g_strdup (buf);
}

EVP_PKEY *
pmx_oauth2_load_private_key (const char *pem,
                             const char *what,
                             GError    **error)
{
  BIO *bio;
  EVP_PKEY *key;

  bio = BIO_new_mem_buf (pem, -1);
  key = PEM_read_bio_PrivateKey (bio, NULL, NULL, NULL);
  BIO_free (bio);
  if (key == NULL)
    {
      g_autofree char *reason = jwt_openssl_reason ();

      g_set_error (error, PMX_OAUTH2_ERROR, PMX_OAUTH2_ERROR_CONFIG,
                   "%s is not a PEM private key (%s) — point it at the unencrypted PEM key (-----BEGIN PRIVATE KEY-----)",
                   what, reason);
      return NULL;
    }
  if (EVP_PKEY_get_base_id (key) != EVP_PKEY_RSA)
    {
      g_set_error (error, PMX_OAUTH2_ERROR, PMX_OAUTH2_ERROR_CONFIG,
                   "%s is not an RSA key — RS256 needs an RSA key (2048 bits or more)", what);
      EVP_PKEY_free (key);
      return NULL;
    }
  return key;
}

gboolean
pmx_oauth2_load_certificate (const char *path,
                             EVP_PKEY   *key,
                             char      **out_x5t,
                             char      **out_x5t_s256,
                             GError    **error)
{
  g_autofree char *pem = NULL;
  g_autoptr(GError) local_error = NULL;
  unsigned char *der = NULL;
  unsigned char sha1[EVP_MAX_MD_SIZE], sha256[EVP_MAX_MD_SIZE];
  unsigned int sha1_len = 0, sha256_len = 0;
  X509 *cert;
  BIO *bio;
  int der_len;

  if (!g_file_get_contents (path, &pem, NULL, &local_error))
    {
      g_set_error (error, PMX_OAUTH2_ERROR, PMX_OAUTH2_ERROR_CONFIG,
                   "certificate: %s", local_error->message);
      return FALSE;
    }
  bio = BIO_new_mem_buf (pem, -1);
  cert = PEM_read_bio_X509 (bio, NULL, NULL, NULL);
  BIO_free (bio);
  if (cert == NULL)
    {
      g_autofree char *reason = jwt_openssl_reason ();

      g_set_error (error, PMX_OAUTH2_ERROR, PMX_OAUTH2_ERROR_CONFIG,
                   "certificate %s is not a PEM certificate (%s)", path, reason);
      return FALSE;
    }
  if (X509_check_private_key (cert, key) != 1)
    {
      ERR_clear_error ();
      g_set_error (error, PMX_OAUTH2_ERROR, PMX_OAUTH2_ERROR_CONFIG,
                   "certificate %s does not match private_key — configure the key the certificate was made from",
                   path);
      X509_free (cert);
      return FALSE;
    }
  der_len = i2d_X509 (cert, &der);
  X509_free (cert);
  if (der_len <= 0
      || EVP_Digest (der, der_len, sha1, &sha1_len, EVP_sha1 (), NULL) != 1
      || EVP_Digest (der, der_len, sha256, &sha256_len, EVP_sha256 (), NULL) != 1)
    {
      OPENSSL_free (der);
      g_set_error (error, PMX_OAUTH2_ERROR, PMX_OAUTH2_ERROR_CONFIG,
                   "certificate %s: cannot compute its thumbprint", path);
      return FALSE;
    }
  OPENSSL_free (der);
  *out_x5t = pmx_oauth2_base64url (sha1, sha1_len);
  *out_x5t_s256 = pmx_oauth2_base64url (sha256, sha256_len);
  return TRUE;
}

/* jwt_encode_part - base64url of a JSON object's compact text */
static char *
jwt_encode_part (JsonObject *object)
{
  g_autoptr(JsonNode) node = json_node_new (JSON_NODE_OBJECT);
  g_autofree char *text = NULL;

  json_node_set_object (node, object);
  text = json_to_string (node, FALSE);
  return pmx_oauth2_base64url ((const guint8 *) text, strlen (text));
}

char *
pmx_oauth2_jwt_sign (JsonObject *header,
                     JsonObject *claims,
                     EVP_PKEY   *key,
                     GError    **error)
{
  g_autofree char *head = jwt_encode_part (header);
  g_autofree char *body = jwt_encode_part (claims);
  g_autofree char *input = g_strconcat (head, ".", body, NULL);
  g_autofree char *sig64 = NULL;
  g_autofree guint8 *sig = NULL;
  EVP_MD_CTX *ctx = EVP_MD_CTX_new ();
  size_t sig_len = 0;

  if (ctx == NULL
      || EVP_DigestSignInit (ctx, NULL, EVP_sha256 (), NULL, key) != 1
      || EVP_DigestSign (ctx, NULL, &sig_len, (const guint8 *) input, strlen (input)) != 1
      || (sig = g_malloc (sig_len)) == NULL
      || EVP_DigestSign (ctx, sig, &sig_len, (const guint8 *) input, strlen (input)) != 1)
    {
      g_autofree char *reason = jwt_openssl_reason ();

      EVP_MD_CTX_free (ctx);
      g_set_error (error, PMX_OAUTH2_ERROR, PMX_OAUTH2_ERROR_FAILED,
                   "cannot sign the JWT: %s", reason);
      return NULL;
    }
  EVP_MD_CTX_free (ctx);
  sig64 = pmx_oauth2_base64url (sig, sig_len);
  return g_strconcat (input, ".", sig64, NULL);
}

#include <nettle/hmac.h>
#include <nettle/memops.h>

#include "auth.h"

static const char *const labels[] = { "mplua manager client", "mplua manager server" };

void mp_auth_digest(const void *key, size_t keylen, int role,
                    const unsigned char nonce[MP_AUTH_NONCE], unsigned char out[MP_AUTH_DIGEST]) {
  struct hmac_sha256_ctx ctx;
  const char *label = labels[role != MP_ROLE_CLIENT];
  size_t llen = 0;
  while (label[llen]) llen++;
  hmac_sha256_set_key(&ctx, keylen, key);
  hmac_sha256_update(&ctx, llen + 1, (const uint8_t *)label);   /* the NUL separates */
  hmac_sha256_update(&ctx, MP_AUTH_NONCE, nonce);
  hmac_sha256_digest(&ctx, MP_AUTH_DIGEST, out);
}

int mp_auth_check(const void *key, size_t keylen, int role,
                  const unsigned char nonce[MP_AUTH_NONCE], const unsigned char *digest) {
  unsigned char want[MP_AUTH_DIGEST];
  mp_auth_digest(key, keylen, role, nonce, want);
  return memeql_sec(want, digest, MP_AUTH_DIGEST);
}

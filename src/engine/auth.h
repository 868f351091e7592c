/*
** The Manager's handshake: each side proves it knows the shared authkey by
** answering a random challenge of the other with HMAC-SHA256(authkey, role
** label || challenge) (nettle). The role labels differ, so an answer can not
** be reflected back to its sender as the answer to its own challenge. Digests
** are compared in constant time. Nothing but these fixed-size records is read
** from a connection before it has authenticated.
**
**   server -> client  HELLO    magic (16), server challenge (32)
**   client -> server  AUTH     digest of the server challenge (32),
**                              client challenge (32), client identity (16)
**   server -> client  WELCOME  digest of the client challenge (32),
**                              server pid (u32 LE), server token (16)
**                  or FAILURE  (empty), and the server closes the connection
**
** The client identity (its pid and 12 random bytes, new in every process)
** names the owner of locks across the connections of one process; the server
** token names the server across the addresses it may be reached by.
** Engine code: no Lua.
*/
#ifndef MP_AUTH_H
#define MP_AUTH_H

#include <stddef.h>
#include <stdint.h>

#define MP_AUTH_MAGIC "mplua-manager-1\n"
#define MP_AUTH_MAGICLEN 16
#define MP_AUTH_NONCE 32
#define MP_AUTH_DIGEST 32
#define MP_AUTH_IDENT 16
#define MP_AUTH_TOKEN 16

#define MP_HELLO_LEN (MP_AUTH_MAGICLEN + MP_AUTH_NONCE)
#define MP_AUTH_LEN (MP_AUTH_DIGEST + MP_AUTH_NONCE + MP_AUTH_IDENT)
#define MP_WELCOME_LEN (MP_AUTH_DIGEST + 4 + MP_AUTH_TOKEN)

enum { MP_ROLE_CLIENT, MP_ROLE_SERVER };

/* out = HMAC-SHA256(key, label(role) || nonce). */
void mp_auth_digest(const void *key, size_t keylen, int role,
                    const unsigned char nonce[MP_AUTH_NONCE], unsigned char out[MP_AUTH_DIGEST]);

/* 1 when the digest is the right answer to nonce for role; constant time. */
int mp_auth_check(const void *key, size_t keylen, int role,
                  const unsigned char nonce[MP_AUTH_NONCE], const unsigned char *digest);

#endif

/*
** SipHash-2-4 (Aumasson and Bernstein): a keyed 64-bit MAC, small and fast on
** short inputs. The serializer uses it to authenticate the function bytecode it
** sends, so that only bytecode made by a process of the same family (holding
** the same key) ever reaches lua_load. Engine code: no Lua here.
*/
#ifndef MP_SIPHASH_H
#define MP_SIPHASH_H

#include <stddef.h>
#include <stdint.h>

#define MP_SIPHASH_KEYLEN 16

uint64_t mp_siphash(const unsigned char key[MP_SIPHASH_KEYLEN], const void *data, size_t len);

/* Fills key with random bytes (getrandom, else /dev/urandom): 0 or an errno. */
int mp_random_bytes(void *buf, size_t len);

#endif

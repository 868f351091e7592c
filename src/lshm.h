/*
** What the shared-value binding (lshared.c) needs from mp.SharedMemory
** (lshm.c): an Array can be a typed view of a segment.
*/
#ifndef MP_LSHM_H
#define MP_LSHM_H

#include <stddef.h>
#include <lua.h>

struct mp_class;

typedef struct mp_shm_ud {
  const struct mp_class *cls;   /* first: the class word (mp_aux.h) */
  char *base;             /* NULL once closed (or for a 0-byte segment) */
  size_t size;
  int closed;
  char name[252];
} mp_shm_ud;

/* The SharedMemory at idx, or NULL when the value is not one. */
mp_shm_ud *mp_shm_test(lua_State *L, int idx);

#endif

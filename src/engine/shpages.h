/*
** The shared-pages allocator: small blocks of anonymous MAP_SHARED memory for
** process-shared primitives and shared values. Engine code: no Lua here.
**
** Blocks come from 64 KiB chunks mapped MAP_SHARED|MAP_ANONYMOUS (never
** /dev/shm, so nothing can be left behind in the file system), one chunk per
** size class; large blocks get their own mapping. Creating thousands of locks
** costs a few pages, not a mapping each.
**
** A process allocates only from chunks it mapped itself: after a fork, the
** child forgets the free lists it inherited (the chunks stay mapped, so objects
** created before the fork keep working), and starts new chunks. Only the
** process that allocated a block frees it; see docs/sync.md for the lifetime
** rule this implies.
*/
#ifndef MP_SHPAGES_H
#define MP_SHPAGES_H

#include <stddef.h>

/* A zeroed block of at least `size` bytes, 64-byte aligned; NULL with errno set. */
void *mp_shm_alloc(size_t size);

/* Returns a block to this process's free lists (large blocks are unmapped). */
void mp_shm_free(void *p, size_t size);

#endif

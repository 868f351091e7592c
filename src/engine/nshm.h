/*
** Named POSIX shared memory (shm_open: /dev/shm on Linux) for
** mp.SharedMemory: segments any process can attach to by name, including
** processes that did not inherit them. Engine code: no Lua; returns 0 or errno.
**
** Unlike the rest of mplua's shared memory (shpages.h, anonymous and gone
** with its last process), such a segment outlives its processes until it is
** unlinked, as POSIX says. mplua creates one only when asked to, and unlinks
** it if creating fails halfway.
*/
#ifndef MP_NSHM_H
#define MP_NSHM_H

#include <stddef.h>

/* Creates "/name" (O_EXCL, mode 0600) of `size` bytes and maps it: EEXIST if it exists. */
int mp_nshm_create(const char *name, size_t size, void **base);

/* Attaches to "/name": maps all of it and sets *size. ENOENT if there is none. */
int mp_nshm_attach(const char *name, void **base, size_t *size);

/* Removes the name (the memory lives on while mapped). */
int mp_nshm_unlink(const char *name);

void mp_nshm_unmap(void *base, size_t size);

#endif

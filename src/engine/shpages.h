/*
** The shared-pages allocator: small blocks of MAP_SHARED memory for
** process-shared primitives and shared values. Engine code: no Lua here.
**
** The memory is memfd-backed (never /dev/shm, so nothing can be left behind
** in the file system), so that an fd can carry it to a process that did not
** inherit it (a fork-server child, passed with SCM_RIGHTS). Blocks up to
** MP_SHM_MAX_CLASS bytes come from chunks carved out of *arenas*: one memfd of
** MP_SHM_ARENA bytes, sparse (a page costs memory only once written), mapped
** once; a process normally holds one arena fd. Larger blocks get a memfd and
** a mapping of their own. Creating thousands of locks costs a few pages, not
** a mapping or an fd each.
**
** A process allocates only from arenas it made itself: after a fork, the
** child forgets the free lists it inherited (the arenas stay mapped, so
** objects created before the fork keep working), and starts an arena of its
** own at its first allocation. Only the process that allocated a block frees
** it; see docs/sync.md for the lifetime rule this implies.
**
** Every mapping this process has -- its own arenas, arenas inherited through
** fork, blocks received from another process -- is a *region* in one
** process-wide table, so that a block can be named by (fd, offset) to send it
** (mp_shm_export) and a received one is mapped once however many objects in
** it arrive (mp_shm_import, looked up by the file's inode).
*/
#ifndef MP_SHPAGES_H
#define MP_SHPAGES_H

#include <stddef.h>

#define MP_SHM_ARENA ((size_t)64 << 20)      /* address space per arena */
#define MP_SHM_MAX_CLASS ((size_t)1 << 20)   /* larger blocks get their own memfd */

/* A zeroed block of at least `size` bytes, 64-byte aligned; NULL with errno set. */
void *mp_shm_alloc(size_t size);

/* Returns a block to this process's free lists (own-memfd blocks are unmapped). */
void mp_shm_free(void *p, size_t size);

/*
** How to reach the block at p from another process: the fd of its region
** (owned by the table: do not close it), the region's length, and p's offset
** in it. 0, or ENOENT when p is in no region of this process.
*/
int mp_shm_export(const void *p, int *fd, size_t *maplen, size_t *offset);

/*
** Maps a region received from another process (fd, its length, as export
** gave them) and returns the block at `offset` (of at least `size` bytes) in
** *out. Takes the fd: it is kept by the table or closed. A region this
** process already maps (the same file) is reused. EINVAL when the fd is not a
** region of that length or the block does not fit in it. Every successful
** import is balanced by one mp_shm_unimport of the block.
*/
int mp_shm_import(int fd, size_t maplen, size_t offset, size_t size, void **out);

/* Lets go of an imported block: the region is unmapped when nothing uses it. */
void mp_shm_unimport(void *p);

#endif

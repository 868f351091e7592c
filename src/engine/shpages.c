#define _GNU_SOURCE   /* memfd_create */
#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "identity.h"
#include "shpages.h"

#define MIN_SHIFT 6                         /* 64-byte blocks: one cache line */
#define MAX_SHIFT 20                        /* 1 MiB: MP_SHM_MAX_CLASS */
#define NCLASSES (MAX_SHIFT - MIN_SHIFT + 1)
#define SMALL_CHUNK ((size_t)64 << 10)      /* a chunk holds at least 8 blocks, at least 64 KiB */

/*
** Regions: every memfd mapping of this process that blocks live in.
**   R_ARENA  an arena some process of this lineage made (this one, or a parent
**            before a fork): bump-allocated by its maker only;
**   R_BLOCK  one block above MP_SHM_MAX_CLASS, with its own memfd;
**   R_IMPORT a region received from another process, mapped while `refs`
**            imported blocks of this process use it.
** The table lives in process memory: a forked child gets a copy, which is
** right, since it inherits the mappings and the fds with it.
*/
enum { R_ARENA, R_BLOCK, R_IMPORT };

typedef struct region {
  char *base;
  size_t len;
  int fd;
  int kind;
  int refs;                                 /* R_IMPORT: blocks of this process using it */
  dev_t dev;
  ino_t ino;
} region;

/*
** Free blocks are linked through their first word. The lists, the arena and
** the chunk cursors are process-local; `pid` says which process they belong to.
*/
typedef struct free_block { struct free_block *next; } free_block;

static struct {
  uint32_t pid;
  free_block *free[NCLASSES];
  char *cursor[NCLASSES];                   /* next unused block of the current chunk */
  char *limit[NCLASSES];
  char *arena, *arena_end;                  /* this process's current arena: unused part */
} heap;

static region *regions;
static size_t nregions, cap_regions;

/* A host may open the library in several threads' states. */
static pthread_mutex_t heap_mutex = PTHREAD_MUTEX_INITIALIZER;

static int size_class(size_t size) {
  int c = 0;
  while (((size_t)1 << (MIN_SHIFT + c)) < size) c++;
  return c;
}

static size_t page_round(size_t size) {
  size_t page = (size_t)sysconf(_SC_PAGESIZE);
  return (size + page - 1) / page * page;
}

static int add_region(char *base, size_t len, int fd, int kind) {
  if (nregions == cap_regions) {
    size_t n = cap_regions ? cap_regions * 2 : 16;
    region *r = realloc(regions, n * sizeof *r);
    if (r == NULL) return ENOMEM;
    regions = r;
    cap_regions = n;
  }
  struct stat st;
  if (fstat(fd, &st) != 0) return errno;
  regions[nregions++] = (region){ base, len, fd, kind, kind == R_IMPORT, st.st_dev, st.st_ino };
  return 0;
}

static region *find_region(const void *p) {
  for (size_t i = 0; i < nregions; i++) {
    if ((const char *)p >= regions[i].base && (const char *)p < regions[i].base + regions[i].len)
      return &regions[i];
  }
  return NULL;
}

static void drop_region(region *r) {
  munmap(r->base, r->len);
  close(r->fd);
  *r = regions[--nregions];
}

/*
** A new memfd of `len` bytes, mapped shared. Sparse: ftruncate allocates
** nothing, pages are allocated when first written (as anonymous shared memory
** is), and MAP_NORESERVE keeps the reservation out of the commit charge.
*/
static char *map_memfd(size_t len, int kind) {
  int fd = memfd_create(kind == R_ARENA ? "mp-arena" : "mp-block", MFD_CLOEXEC);
  if (fd < 0) return NULL;
  void *p = MAP_FAILED;
  if (ftruncate(fd, (off_t)len) == 0)
    p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_NORESERVE, fd, 0);
  int err = errno;
  if (p != MAP_FAILED && (err = add_region(p, len, fd, kind)) == 0) return p;
  if (p != MAP_FAILED) munmap(p, len);
  close(fd);
  errno = err;
  return NULL;
}

/* A chunk for blocks of `bsize` bytes, from this process's arena. */
static char *new_chunk(size_t bsize, size_t *len) {
  size_t clen = bsize * 8 > SMALL_CHUNK ? bsize * 8 : SMALL_CHUNK;
  if (heap.arena == NULL || (size_t)(heap.arena_end - heap.arena) < clen) {
    /* The rest of a full arena is left unused: at most one chunk's worth. */
    char *a = map_memfd(MP_SHM_ARENA, R_ARENA);
    if (a == NULL) return NULL;
    heap.arena = a;
    heap.arena_end = a + MP_SHM_ARENA;
  }
  char *chunk = heap.arena;
  heap.arena += clen;
  *len = clen;
  return chunk;
}

void *mp_shm_alloc(size_t size) {
  if (size == 0) size = 1;
  if (size > MP_SHM_MAX_CLASS) {
    if (size > SIZE_MAX / 2) { errno = ENOMEM; return NULL; }
    pthread_mutex_lock(&heap_mutex);
    void *p = map_memfd(page_round(size), R_BLOCK);   /* fresh pages are zero */
    int err = errno;
    pthread_mutex_unlock(&heap_mutex);
    errno = err;
    return p;
  }
  int c = size_class(size);
  size_t bsize = (size_t)1 << (MIN_SHIFT + c);
  void *p = NULL;
  int err = ENOMEM;
  pthread_mutex_lock(&heap_mutex);
  uint32_t me = mp_self_pid();
  if (heap.pid != me) {                       /* inherited lists and arena belong to the parent */
    memset(&heap, 0, sizeof heap);
    heap.pid = me;
  }
  if (heap.free[c] != NULL) {
    p = heap.free[c];
    heap.free[c] = heap.free[c]->next;
  } else {
    if (heap.cursor[c] == heap.limit[c]) {
      size_t len;
      char *chunk = new_chunk(bsize, &len);
      if (chunk != NULL) {
        heap.cursor[c] = chunk;
        heap.limit[c] = chunk + len;
      } else {
        err = errno;
      }
    }
    if (heap.cursor[c] != heap.limit[c]) {
      p = heap.cursor[c];
      heap.cursor[c] += bsize;
    }
  }
  pthread_mutex_unlock(&heap_mutex);
  if (p == NULL) { errno = err; return NULL; }
  memset(p, 0, size);                         /* the rest of the block is never read */
  return p;
}

void mp_shm_free(void *p, size_t size) {
  if (p == NULL) return;
  if (size == 0) size = 1;
  pthread_mutex_lock(&heap_mutex);
  if (size > MP_SHM_MAX_CLASS) {
    region *r = find_region(p);
    if (r != NULL && r->kind == R_BLOCK && r->base == p) drop_region(r);
    pthread_mutex_unlock(&heap_mutex);
    return;
  }
  int c = size_class(size);
  size_t bsize = (size_t)1 << (MIN_SHIFT + c);
  if (heap.pid == mp_self_pid()) {            /* else: a parent's block; never reuse it */
    size_t page = (size_t)sysconf(_SC_PAGESIZE);
    /* A big block gives its pages back, all but the first (it holds the link). */
    if (bsize >= 16 * page) madvise((char *)p + page, bsize - page, MADV_REMOVE);
    free_block *b = p;
    b->next = heap.free[c];
    heap.free[c] = b;
  }
  pthread_mutex_unlock(&heap_mutex);
}

int mp_shm_export(const void *p, int *fd, size_t *maplen, size_t *offset) {
  pthread_mutex_lock(&heap_mutex);
  region *r = find_region(p);
  if (r != NULL) {
    *fd = r->fd;
    *maplen = r->len;
    *offset = (size_t)((const char *)p - r->base);
  }
  pthread_mutex_unlock(&heap_mutex);
  return r != NULL ? 0 : ENOENT;
}

int mp_shm_import(int fd, size_t maplen, size_t offset, size_t size, void **out) {
  struct stat st;
  /*
  ** The descriptor comes from another process: a region shorter than it says
  ** would fault (SIGBUS) on access beyond its end, so the file's size is
  ** checked, and the block must lie inside the region.
  */
  if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode) || maplen == 0 ||
      (uint64_t)st.st_size < maplen || offset > maplen || size > maplen - offset) {
    close(fd);
    return EINVAL;
  }
  pthread_mutex_lock(&heap_mutex);
  region *r = NULL;
  for (size_t i = 0; i < nregions; i++) {
    if (regions[i].dev == st.st_dev && regions[i].ino == st.st_ino && regions[i].len == maplen) {
      r = &regions[i];
      break;
    }
  }
  int err = 0;
  if (r != NULL) {
    close(fd);                                /* already mapped here (inherited, own or imported) */
    if (r->kind == R_IMPORT) r->refs++;
  } else {
    void *p = mmap(NULL, maplen, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_NORESERVE, fd, 0);
    if (p == MAP_FAILED) {
      err = errno;
      close(fd);
    } else if ((err = add_region(p, maplen, fd, R_IMPORT)) != 0) {
      munmap(p, maplen);
      close(fd);
    } else {
      r = &regions[nregions - 1];
    }
  }
  if (r != NULL) *out = r->base + offset;
  pthread_mutex_unlock(&heap_mutex);
  return err;
}

/*
** When mp.so is unloaded (a stock lua5.4 closing its state) the table would
** be lost with the library's data: free it. The mappings stay as they are
** (nothing can reach their objects any more).
*/
__attribute__((destructor)) static void forget_regions(void) {
  free(regions);
  regions = NULL;
  nregions = cap_regions = 0;
}

void mp_shm_unimport(void *p) {
  pthread_mutex_lock(&heap_mutex);
  region *r = find_region(p);
  if (r != NULL && r->kind == R_IMPORT && --r->refs == 0) drop_region(r);
  pthread_mutex_unlock(&heap_mutex);
}

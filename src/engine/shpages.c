#include <errno.h>
#include <pthread.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "shpages.h"
#include "sync.h"

#define CHUNK_SIZE (64 * 1024)
#define MIN_SHIFT 6                         /* 64-byte blocks: one cache line */
#define NCLASSES 7                          /* 64 .. 4096 bytes */
#define MAX_SMALL ((size_t)1 << (MIN_SHIFT + NCLASSES - 1))

/*
** Free blocks are linked through their first word. The lists and the chunk
** cursors are process-local; `pid` says which process they belong to.
*/
typedef struct free_block { struct free_block *next; } free_block;

static struct {
  uint32_t pid;
  free_block *free[NCLASSES];
  char *cursor[NCLASSES];                   /* next unused block of the current chunk */
  char *limit[NCLASSES];
} heap;

/* A host may open the library in several threads' states. */
static pthread_mutex_t heap_mutex = PTHREAD_MUTEX_INITIALIZER;

static int size_class(size_t size) {
  int c = 0;
  while (((size_t)1 << (MIN_SHIFT + c)) < size) c++;
  return c;
}

static void *map_shared(size_t size) {
  void *p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  return p == MAP_FAILED ? NULL : p;
}

static size_t page_round(size_t size) {
  size_t page = (size_t)sysconf(_SC_PAGESIZE);
  return (size + page - 1) / page * page;
}

void *mp_shm_alloc(size_t size) {
  if (size == 0) size = 1;
  if (size > MAX_SMALL) {
    if (size > SIZE_MAX / 2) { errno = ENOMEM; return NULL; }
    return map_shared(page_round(size));      /* fresh pages are zero */
  }
  int c = size_class(size);
  size_t bsize = (size_t)1 << (MIN_SHIFT + c);
  void *p = NULL;
  pthread_mutex_lock(&heap_mutex);
  uint32_t me = mp_self_pid();
  if (heap.pid != me) {                       /* inherited lists belong to the parent */
    memset(&heap, 0, sizeof heap);
    heap.pid = me;
  }
  if (heap.free[c] != NULL) {
    p = heap.free[c];
    heap.free[c] = heap.free[c]->next;
  } else {
    if (heap.cursor[c] == heap.limit[c]) {
      char *chunk = map_shared(CHUNK_SIZE);
      if (chunk != NULL) {
        heap.cursor[c] = chunk;
        heap.limit[c] = chunk + CHUNK_SIZE;
      }
    }
    if (heap.cursor[c] != heap.limit[c]) {
      p = heap.cursor[c];
      heap.cursor[c] += bsize;
    }
  }
  pthread_mutex_unlock(&heap_mutex);
  if (p == NULL) { errno = ENOMEM; return NULL; }
  memset(p, 0, bsize);
  return p;
}

void mp_shm_free(void *p, size_t size) {
  if (p == NULL) return;
  if (size == 0) size = 1;
  if (size > MAX_SMALL) {
    munmap(p, page_round(size));
    return;
  }
  int c = size_class(size);
  pthread_mutex_lock(&heap_mutex);
  if (heap.pid == mp_self_pid()) {            /* else: a parent's block; never reuse it */
    free_block *b = p;
    b->next = heap.free[c];
    heap.free[c] = b;
  }
  pthread_mutex_unlock(&heap_mutex);
}

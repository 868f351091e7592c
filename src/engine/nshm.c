#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "nshm.h"

#define PATH_LEN 256

static void path_of(const char *name, char path[PATH_LEN]) {
  snprintf(path, PATH_LEN, "/%s", name);
}

/* A mapping of fd; a zero-length segment maps nothing (mmap refuses length 0). */
static int map(int fd, size_t size, void **base) {
  if (size == 0) { *base = NULL; return 0; }
  void *p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  if (p == MAP_FAILED) return errno;
  *base = p;
  return 0;
}

int mp_nshm_create(const char *name, size_t size, void **base) {
  char path[PATH_LEN];
  path_of(name, path);
  int fd = shm_open(path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
  if (fd < 0) return errno;
  /*
  ** From here on the name exists: any failure removes it again, so that a
  ** creation that failed leaves nothing in /dev/shm.
  */
  int err = 0;
  if (ftruncate(fd, (off_t)size) < 0) err = errno;
  if (!err) err = map(fd, size, base);
  close(fd);
  if (err) shm_unlink(path);
  return err;
}

int mp_nshm_attach(const char *name, void **base, size_t *size) {
  char path[PATH_LEN];
  path_of(name, path);
  int fd = shm_open(path, O_RDWR | O_CLOEXEC, 0);
  if (fd < 0) return errno;
  struct stat st;
  int err = fstat(fd, &st) < 0 ? errno : 0;
  if (!err) {
    *size = (size_t)st.st_size;
    err = map(fd, *size, base);
  }
  close(fd);
  return err;
}

int mp_nshm_unlink(const char *name) {
  char path[PATH_LEN];
  path_of(name, path);
  return shm_unlink(path) < 0 ? errno : 0;
}

void mp_nshm_unmap(void *base, size_t size) {
  if (base != NULL && size > 0) munmap(base, size);
}

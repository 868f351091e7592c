/* pidfd_open in one place (pidfd.h). */
#define _GNU_SOURCE
#include <errno.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "pidfd.h"

static int turned_off = -1;     /* MPLUA_NO_PIDFD, read once */

int mp_pidfd_open(pid_t pid) {
  if (turned_off < 0) {
    const char *v = getenv("MPLUA_NO_PIDFD");
    turned_off = v != NULL && *v != '\0' && *v != '0';
  }
  if (turned_off) { errno = ENOSYS; return -1; }
#ifdef SYS_pidfd_open
  return (int)syscall(SYS_pidfd_open, pid, 0);
#else
  (void)pid;
  errno = ENOSYS;
  return -1;
#endif
}

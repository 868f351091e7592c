#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "identity.h"

uint32_t mp_identity_pid;
uint64_t mp_identity_tag;

/*
** Reads state letter and start time (clock ticks since boot) of a process from
** /proc/<pid>/stat. Returns 0, ENOENT when there is no such process, or another
** errno when /proc cannot tell.
*/
static int proc_stat(uint32_t pid, char *state, uint64_t *start) {
  char path[64], buf[1024];
  snprintf(path, sizeof path, "/proc/%u/stat", (unsigned)pid);
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return errno;
  ssize_t n;
  do n = read(fd, buf, sizeof buf - 1); while (n < 0 && errno == EINTR);
  int err = errno;
  close(fd);
  if (n <= 0) return n == 0 ? ENOENT : err;
  buf[n] = '\0';
  /* "pid (comm) S ppid ...": comm may hold spaces and parentheses. */
  char *p = strrchr(buf, ')');
  if (p == NULL || p[1] != ' ') return EINVAL;
  p += 2;
  *state = *p;
  /* starttime is field 22; the state letter is field 3. */
  for (int field = 3; field < 22; field++) {
    p = strchr(p, ' ');
    if (p == NULL) return EINVAL;
    p++;
  }
  *start = strtoull(p, NULL, 10);
  return 0;
}

static void forget_identity(void) {
  mp_identity_pid = 0;
  mp_identity_tag = 0;
}

static void register_fork_handler(void) {
  /* glibc unregisters handlers of a dlclose'd module, so this is safe in mp.so. */
  pthread_atfork(NULL, NULL, forget_identity);
}

void mp_identity_load_pid(void) {
  static pthread_once_t once = PTHREAD_ONCE_INIT;
  pthread_once(&once, register_fork_handler);
  mp_identity_pid = (uint32_t)getpid();
}

/* Never 0 once loaded: the pid's bits are in it, and a pid is never 0. */
void mp_identity_load_tag(void) {
  uint32_t pid = mp_self_pid();
  char state;
  uint64_t start = 0;
  if (proc_stat(pid, &state, &start) != 0) start = 0;
  mp_identity_tag = (uint64_t)(pid & MP_PID_MASK) | (start << MP_PID_BITS);
}

int mp_owner_dead(uint32_t pid, uint64_t tag) {
  if (pid == 0 || pid == mp_self_pid()) return 0;
  char state;
  uint64_t start;
  int err = proc_stat(pid, &state, &start);
  if (err == ENOENT) return 1;
  if (err != 0) return kill((pid_t)pid, 0) < 0 && errno == ESRCH;   /* no /proc */
  if (state == 'Z' || state == 'X') return 1;                       /* killed, not reaped */
  if ((uint32_t)(tag & MP_PID_MASK) == pid && (tag >> MP_PID_BITS) != 0 &&
      (tag >> MP_PID_BITS) != start)
    return 1;                                                        /* the pid was reused */
  return 0;
}

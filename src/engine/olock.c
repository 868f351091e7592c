#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "clock.h"
#include "futex.h"
#include "olock.h"

#define PID_BITS 22   /* pid_max is at most 2^22 on Linux */

/*
** This process's identity, computed once and reset in every forked child (by
** any fork, including io.popen's, hence pthread_atfork rather than mp_fork).
*/
static pid_t self_pid;
static uint64_t self_tag;
static pthread_once_t atfork_once = PTHREAD_ONCE_INIT;

static void forget_self(void) { self_pid = 0; self_tag = 0; }
static void register_atfork(void) { pthread_atfork(NULL, NULL, forget_self); }

/*
** Reads state and start time (fields 3 and 22) of /proc/<pid>/stat. Returns 0
** when the process does not exist. The comm field may hold spaces and ')'.
*/
static int read_stat(pid_t pid, char *state, uint64_t *start) {
  char path[64], buf[1024];
  snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return 0;
  ssize_t n = read(fd, buf, sizeof buf - 1);
  close(fd);
  if (n <= 0) return 0;
  buf[n] = '\0';
  char *p = strrchr(buf, ')');
  if (p == NULL || p[1] != ' ') return 0;
  p += 2;
  *state = *p;
  /* After the state: fields 4..21, then starttime. */
  int field = 3;
  while (*p != '\0' && field < 22) {
    if (*p == ' ') field++;
    p++;
  }
  unsigned long long st = 0;
  if (sscanf(p, "%llu", &st) != 1) st = 0;
  *start = st;
  return 1;
}

pid_t mp_self_pid(void) {
  if (self_pid == 0) {
    pthread_once(&atfork_once, register_atfork);
    pid_t pid = getpid();
    char state;
    uint64_t start = 0;
    read_stat(pid, &state, &start);
    self_tag = (start << PID_BITS) | (uint64_t)pid;
    self_pid = pid;
  }
  return self_pid;
}

int mp_pid_dead(pid_t pid, uint64_t start) {
  if (pid <= 0) return 0;
  if (kill(pid, 0) != 0 && errno == ESRCH) return 1;
  char state;
  uint64_t st;
  if (!read_stat(pid, &state, &st)) return 1;
  if (state == 'Z' || state == 'X') return 1;       /* killed, not yet reaped */
  return start != 0 && st != start;                  /* pid reused */
}

static int owner_dead(mp_olock *l, uint32_t word) {
  pid_t pid = (pid_t)(word & ~MP_OLOCK_WAITERS);
  uint64_t tag = atomic_load(&l->tag);
  uint64_t start = ((pid_t)(tag & ((1u << PID_BITS) - 1)) == pid) ? tag >> PID_BITS : 0;
  return mp_pid_dead(pid, start);
}

static void take(mp_olock *l) {
  mp_self_pid();
  atomic_store_explicit(&l->tag, self_tag, memory_order_relaxed);
}

/* Takes the lock from a dead owner whose word is `seen`; 1 on success. */
static int take_over(mp_olock *l, uint32_t seen) {
  uint32_t me = (uint32_t)mp_self_pid() | MP_OLOCK_WAITERS;
  if (!atomic_compare_exchange_strong(&l->word, &seen, me)) return 0;
  take(l);
  return 1;
}

int mp_olock_try(mp_olock *l) {
  uint32_t expected = 0;
  uint32_t me = (uint32_t)mp_self_pid();
  if (atomic_compare_exchange_strong_explicit(&l->word, &expected, me,
                                              memory_order_acquire, memory_order_relaxed)) {
    take(l);
    return 0;
  }
  if (expected == 0) return mp_olock_try(l);
  if (owner_dead(l, expected) && take_over(l, expected)) return EOWNERDEAD;
  return EBUSY;
}

int mp_olock_acquire(mp_olock *l, double deadline) {
  uint32_t me = (uint32_t)mp_self_pid();
  uint32_t v = 0;
  if (atomic_compare_exchange_strong_explicit(&l->word, &v, me,
                                              memory_order_acquire, memory_order_relaxed)) {
    take(l);
    return 0;
  }
  for (;;) {
    v = atomic_load(&l->word);
    if (v == 0) {
      /* We were contended: assume others wait too (Drepper's mutex, take 3). */
      if (atomic_compare_exchange_strong(&l->word, &v, me | MP_OLOCK_WAITERS)) {
        take(l);
        return 0;
      }
      continue;
    }
    if (!(v & MP_OLOCK_WAITERS)) {
      if (!atomic_compare_exchange_strong(&l->word, &v, v | MP_OLOCK_WAITERS)) continue;
      v |= MP_OLOCK_WAITERS;
    }
    int rc = mp_futex_wait(&l->word, v, deadline);
    if (rc == 0) continue;
    if (rc != EINTR && rc != ETIMEDOUT) return rc;
    uint32_t cur = atomic_load(&l->word);
    if (cur != 0 && owner_dead(l, cur)) {
      if (take_over(l, cur)) return EOWNERDEAD;
      continue;
    }
    return rc;
  }
}

void mp_olock_release(mp_olock *l) {
  uint32_t old = atomic_exchange_explicit(&l->word, 0, memory_order_release);
  if (old & MP_OLOCK_WAITERS) mp_futex_wake(&l->word, 1);
}

int mp_olock_owner_dead(mp_olock *l) {
  uint32_t cur = atomic_load(&l->word);
  return cur != 0 && owner_dead(l, cur);
}

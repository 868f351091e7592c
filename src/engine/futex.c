#include <errno.h>
#include <linux/futex.h>
#include <math.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "clock.h"
#include "futex.h"

int mp_futex_wait(_Atomic uint32_t *addr, uint32_t expected, double deadline) {
  int sliced;
  double end = mp_slice_end(deadline, &sliced);
  if (end <= mp_now()) return sliced ? EINTR : ETIMEDOUT;
  struct timespec ts = mp_timespec(end);
  /* FUTEX_WAIT_BITSET takes an absolute CLOCK_MONOTONIC time, so a retry after
  ** EINTR cannot stretch the total wait. */
  long rc = syscall(SYS_futex, (uint32_t *)addr, FUTEX_WAIT_BITSET, expected, &ts,
                    NULL, FUTEX_BITSET_MATCH_ANY);
  if (rc == 0) return 0;
  switch (errno) {
    case EAGAIN: return 0;                          /* value already changed */
    case ETIMEDOUT: return sliced ? EINTR : ETIMEDOUT;
    case EINTR: return EINTR;
    default: return errno;
  }
}

/* cpu_relax calls per microsecond, measured on first use (0: not yet; a
** race measures twice, harmlessly; a forked child inherits it). */
static _Atomic int pauses_per_us;

static int measure_pauses(void) {
  enum { N = 256 };
  double t0 = mp_now();
  for (int i = 0; i < N; i++) cpu_relax();
  double us = (mp_now() - t0) * 1e6;
  int per = us > 0 ? (int)(N / us) : 1000;
  per = per < 1 ? 1 : per > 1000 ? 1000 : per;
  atomic_store_explicit(&pauses_per_us, per, memory_order_relaxed);
  return per;
}

void mp_pause_for(double seconds) {
  int per = atomic_load_explicit(&pauses_per_us, memory_order_relaxed);
  if (per == 0) per = measure_pauses();
  for (long i = (long)(seconds * 1e6 * per); i > 0; i--) cpu_relax();
}

void mp_futex_wake(_Atomic uint32_t *addr, int n) {
  syscall(SYS_futex, (uint32_t *)addr, FUTEX_WAKE, n, NULL, NULL, 0);
}

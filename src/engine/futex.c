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

void mp_futex_wake(_Atomic uint32_t *addr, int n) {
  syscall(SYS_futex, (uint32_t *)addr, FUTEX_WAKE, n, NULL, NULL, 0);
}

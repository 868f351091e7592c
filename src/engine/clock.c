#include <errno.h>
#include <math.h>

#include "clock.h"

double mp_now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

struct timespec mp_timespec(double deadline) {
  struct timespec ts;
  double secs = floor(deadline);
  ts.tv_sec = (time_t)secs;
  ts.tv_nsec = (long)((deadline - secs) * 1e9);
  if (ts.tv_nsec >= 1000000000L) { ts.tv_sec++; ts.tv_nsec -= 1000000000L; }
  if (ts.tv_nsec < 0) ts.tv_nsec = 0;
  return ts;
}

static double wait_slice = MP_WAIT_SLICE;

void mp_set_wait_slice(double s) { wait_slice = s > 0 ? s : MP_WAIT_SLICE; }

double mp_slice_end(double deadline, int *sliced) {
  double slice = mp_now() + wait_slice;
  *sliced = slice < deadline;
  return *sliced ? slice : deadline;
}

int mp_sleep_until(double deadline) {
  int sliced;
  double end = mp_slice_end(deadline, &sliced);
  struct timespec ts = mp_timespec(end);
  int rc = clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL);
  if (rc == EINTR || sliced) return EINTR;
  return 0;
}

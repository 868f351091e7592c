/*
** Monotonic time and absolute deadlines for every blocking wait.
** Engine code: no Lua here; functions return 0 or an errno value.
*/
#ifndef MP_CLOCK_H
#define MP_CLOCK_H

#include <time.h>

/*
** Blocking waits never sleep longer than this before returning EINTR to their
** caller, so that a signal whose handler was installed with SA_RESTART (stock
** lua.c's Ctrl-C) still gets its Lua hook run within this delay.
*/
#define MP_WAIT_SLICE 0.1

/*
** The slice in force: MP_WAIT_SLICE, or shorter while work must run often at
** the wait's end (a pool's callbacks, through the pollers of mp_aux.h). Process-
** wide, as are the waits that use it; s <= 0 restores MP_WAIT_SLICE.
*/
void mp_set_wait_slice(double s);

/* Seconds on CLOCK_MONOTONIC. */
double mp_now(void);

/* An absolute CLOCK_MONOTONIC timespec for a deadline (a finite mp_now() value). */
struct timespec mp_timespec(double deadline);

/*
** The end of the next wait slice: min(deadline, now + the slice). Sets
** *sliced when the slice ends before the deadline.
*/
double mp_slice_end(double deadline, int *sliced);

/* Sleeps until `deadline`: 0 when reached, EINTR when interrupted or sliced. */
int mp_sleep_until(double deadline);

#endif

/*
** Process-shared futex waits with absolute deadlines: the one place every
** shared-memory primitive sleeps. The futex words live in MAP_SHARED memory, so
** the shared (not FUTEX_PRIVATE) operations are used.
*/
#ifndef MP_FUTEX_H
#define MP_FUTEX_H

#include <stdatomic.h>
#include <stdint.h>

/*
** Sleeps while *addr == expected, until woken or `deadline` (mp_now() seconds,
** INFINITY for none). Returns 0 when woken or when *addr already differed,
** ETIMEDOUT at the deadline, EINTR on a signal or at the end of a wait slice
** (the caller checks for interrupts and calls again).
*/
int mp_futex_wait(_Atomic uint32_t *addr, uint32_t expected, double deadline);

/* Wakes up to n waiters (INT32_MAX for all). */
void mp_futex_wake(_Atomic uint32_t *addr, int n);

/* One pause of a spin loop before a futex wait (cheap for the sibling hyperthread). */
static inline void cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  __asm__ __volatile__("yield");
#endif
}

/*
** Pauses for about `seconds` (a fraction of a microsecond to a few) without a
** system call. A pause takes 10 ns on some CPUs and 40 on others, so how many
** make a microsecond is measured once per process, on first use.
*/
void mp_pause_for(double seconds);

#endif

/*
** A process-shared lock that survives the death of its holder. The lock word
** holds the owner's pid (plus a waiters bit), so taking it is one CAS with no
** window in which the lock is held by nobody known. A waiter that sleeps wakes
** at least every MP_WAIT_SLICE and checks the owner: a pid that is gone, a
** zombie, or a pid reused by a process with another start time (read from
** /proc/<pid>/stat) means the holder died, and the waiter takes the lock over
** and is told so (EOWNERDEAD) so it can repair what the lock guards.
** Engine code: no Lua; returns 0 or an errno value.
*/
#ifndef MP_OLOCK_H
#define MP_OLOCK_H

#include <stdatomic.h>
#include <stdint.h>
#include <sys/types.h>

#include "identity.h"

typedef struct mp_olock {
  _Atomic uint32_t word;    /* 0 free, else owner pid | MP_OLOCK_WAITERS */
  _Atomic uint64_t tag;     /* owner's start time << 22 | pid, written after the CAS */
} mp_olock;

#define MP_OLOCK_WAITERS 0x80000000u


/*
** Takes the lock, waiting until `deadline` (mp_now() seconds, INFINITY for
** none). Returns 0, EOWNERDEAD (taken over from a dead holder: repair the
** state it guards), ETIMEDOUT, or EINTR at the end of a wait slice (not held:
** check for interrupts and call again).
*/
int mp_olock_acquire(mp_olock *l, double deadline);

/* Non-blocking take: 0, EOWNERDEAD or EBUSY. */
int mp_olock_try(mp_olock *l);

void mp_olock_release(mp_olock *l);

/* True when the lock is held by a process that no longer exists. */
int mp_olock_owner_dead(mp_olock *l);


#endif

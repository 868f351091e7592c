/*
** Process-shared synchronization primitives on futexes. Engine code: no Lua;
** functions return 0 or an errno value. Every struct lives in MAP_SHARED
** memory (shpages.h) created before the fork that shares it, and holds only
** plain data.
**
** Fast paths are one compare-and-swap with no system call; futex waits and
** wakes happen only under contention. Blocking calls take an absolute deadline
** on mp_now()'s clock and return EINTR when a signal arrived or a wait slice
** (MP_WAIT_SLICE) ended: the caller checks for interrupts and calls again,
** and the total wait still ends at the deadline.
*/
#ifndef MP_SYNC_H
#define MP_SYNC_H

#include <errno.h>
#include <stdatomic.h>
#include <stdint.h>

#include "identity.h"

/* ---- Mutex: Lock and RLock ---------------------------------------------- */

#define MP_MUTEX_WAITERS 0x80000000u

/*
** `state` is 0 when free, else the owner's pid, with MP_MUTEX_WAITERS set when
** someone may sleep on it. `tag` is the owner's tag, written just after the
** owner took the lock (a reader checks it names the same pid). `count` is the
** recursion depth of an RLock, touched only by its owner.
*/
typedef struct mp_mutex {
  _Atomic uint32_t state;
  uint32_t count;
  _Atomic uint64_t tag;
} mp_mutex;

/* EOWNERDEAD from a lock call means: acquired, and the previous owner had died. */

/* The uncontended path: one CAS. Returns 1 when acquired. */
static inline int mp_mutex_tryfast(mp_mutex *m) {
  uint32_t expected = 0;
  uint32_t me = mp_self_pid();
  if (atomic_compare_exchange_strong_explicit(&m->state, &expected, me,
                                              memory_order_acquire, memory_order_relaxed)) {
    atomic_store_explicit(&m->tag, mp_self_tag(), memory_order_relaxed);
    return 1;
  }
  return 0;
}

/* Non-blocking: 0, EOWNERDEAD, or EBUSY. */
int mp_mutex_trylock(mp_mutex *m);

/*
** Blocking until `deadline`: 0, EOWNERDEAD, ETIMEDOUT or EINTR (call again).
** `spin`: watch the lock for a few microseconds before sleeping. A call made
** again after EINTR passes 0: a whole wait slice went by without the lock
** coming free, and spinning at every slice end would only burn the CPU (the
** slices are short, 5 ms, while a pool has work out).
*/
int mp_mutex_lock(mp_mutex *m, double deadline, int spin);

void mp_mutex_wake(mp_mutex *m);

/* Releases whoever holds it: 0, or EPERM when it was not locked. */
static inline int mp_mutex_unlock(mp_mutex *m) {
  /*
  ** Clear the tag first: a tag left behind could name a pid that a later
  ** process reuses, and between that process's CAS and its own tag store a
  ** checker would take the stale start time for a sign that it died.
  */
  atomic_store_explicit(&m->tag, 0, memory_order_relaxed);
  uint32_t old = atomic_exchange_explicit(&m->state, 0, memory_order_release);
  if (old == 0) return EPERM;
  if (__builtin_expect((old & MP_MUTEX_WAITERS) != 0, 0)) mp_mutex_wake(m);
  return 0;
}

/* The owner's pid, 0 when free. */
static inline uint32_t mp_mutex_owner(mp_mutex *m) {
  return atomic_load_explicit(&m->state, memory_order_relaxed) & ~MP_MUTEX_WAITERS;
}

static inline int mp_mutex_is_mine(mp_mutex *m) {
  return mp_mutex_owner(m) == mp_self_pid();
}

/* ---- Semaphore ------------------------------------------------------------ */

typedef struct mp_sem {
  _Atomic uint32_t value;
  _Atomic uint32_t waiters;
  uint32_t bounded;               /* a BoundedSemaphore: release past `max` fails */
  uint32_t max;
} mp_sem;

static inline int mp_sem_trywait(mp_sem *s) {
  uint32_t v = atomic_load_explicit(&s->value, memory_order_relaxed);
  while (v > 0) {
    if (atomic_compare_exchange_weak_explicit(&s->value, &v, v - 1,
                                              memory_order_acquire, memory_order_relaxed))
      return 0;
  }
  return EAGAIN;
}

/* 0, ETIMEDOUT or EINTR (call again, with spin 0: see mp_mutex_lock). */
int mp_sem_wait(mp_sem *s, double deadline, int spin);

/* Adds n: 0, or ERANGE (bounded and over its max, or past the type's limit). */
int mp_sem_post(mp_sem *s, uint32_t n);

/* ---- Event ------------------------------------------------------------------ */

/*
** `state` is the flag (bit 0) plus the number of times it was set (the other
** bits), so a waiter that sleeps through a set() quickly followed by clear()
** still sees that a set happened, as Python's Condition-based Event does.
*/
typedef struct mp_event {
  _Atomic uint32_t state;
  _Atomic uint32_t waiters;
} mp_event;

static inline int mp_event_is_set(mp_event *e) {
  return atomic_load(&e->state) & 1;
}

/* What a waiter saw when it began: pass it to every mp_event_wait of that wait. */
static inline uint32_t mp_event_snapshot(mp_event *e) {
  return atomic_load(&e->state);
}

void mp_event_set(mp_event *e);
void mp_event_clear(mp_event *e);
/* 0 when set now or set since `seen`, ETIMEDOUT, or EINTR (call again with the same seen). */
int mp_event_wait(mp_event *e, uint32_t seen, double deadline);

/* ---- Condition variable ------------------------------------------------------ */

/*
** `nwaiters` counts waiters not yet notified, `tokens` notifications granted
** and not yet taken; a waiter takes a token only once `seq` moved past the
** value it saw when it started waiting, so a late waiter does not steal the
** wakeup of an earlier one.
*/
typedef struct mp_cond {
  _Atomic uint32_t seq;
  _Atomic uint32_t nwaiters;
  _Atomic uint32_t tokens;
} mp_cond;

/* With the lock held: registers a waiter; returns the seq to wait on. */
uint32_t mp_cond_enter(mp_cond *c);
/* Without the lock: 0 when notified, ETIMEDOUT or EINTR (call again). */
int mp_cond_wait(mp_cond *c, uint32_t seq, double deadline);
/* Leaves after a timeout or an error: returns 1 when a notification was taken after all. */
int mp_cond_cancel(mp_cond *c);
/* With the lock held: wakes up to n waiters. Returns how many were notified. */
uint32_t mp_cond_notify(mp_cond *c, uint32_t n);

/* ---- Owner liveness ------------------------------------------------------------ */

/*
** 1 when the process `pid` (with tag `tag`, if the tag names that pid) has
** ended: no such process, a zombie, or the pid now belongs to a process that
** started at another time.
*/
int mp_owner_dead(uint32_t pid, uint64_t tag);

#endif

#include <errno.h>

#include "clock.h"
#include "futex.h"
#include "olock.h"

static int owner_dead(mp_olock *l, uint32_t word) {
  return mp_owner_dead(word & ~MP_OLOCK_WAITERS, atomic_load(&l->tag));
}

static void take(mp_olock *l) {
  atomic_store_explicit(&l->tag, mp_self_tag(), memory_order_relaxed);
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

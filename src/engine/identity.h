/*
** Who a process is, for lock ownership and for finalizers that must know their
** owner: its pid, and a tag that adds the process start time
** (pid | starttime << MP_PID_BITS; pids are below 2^22 on Linux), so that a dead
** owner's pid reused by a new process is not taken for the owner.
** Cached; a fork handler (pthread_atfork, so any fork, io.popen's included)
** clears the cache in the child. Engine code: no Lua.
*/
#ifndef MP_IDENTITY_H
#define MP_IDENTITY_H

#include <stdint.h>

#define MP_PID_BITS 22
#define MP_PID_MASK ((1u << MP_PID_BITS) - 1)

/*
** The pid and the tag are loaded separately: the tag reads /proc (an open, a
** read and a close, and a page or two of stack and code), which a forked child
** that never takes a lock would pay for nothing at every process start.
*/
extern uint32_t mp_identity_pid;   /* 0 until computed in this process */
extern uint64_t mp_identity_tag;   /* 0 until computed in this process */
void mp_identity_load_pid(void);
void mp_identity_load_tag(void);

static inline uint32_t mp_self_pid(void) {
  if (__builtin_expect(mp_identity_pid == 0, 0)) mp_identity_load_pid();
  return mp_identity_pid;
}

static inline uint64_t mp_self_tag(void) {
  if (__builtin_expect(mp_identity_tag == 0, 0)) mp_identity_load_tag();
  return mp_identity_tag;
}

/*
** Whether the owner recorded as `pid` (and `tag`, 0 when unknown) is gone: no
** such process, a zombie, or the pid now used by a process with another start
** time. This process is never dead.
*/
int mp_owner_dead(uint32_t pid, uint64_t tag);

#endif

/*
** Child processes: fork, reaping, waiting, signalling, and what happens to
** children when their parent exits. Engine code: no Lua; returns 0 or errno.
**
** Every process keeps a list of the children it forked. Reaping only ever calls
** waitpid() on a pid from that list, never waitpid(-1), so the statuses of
** children made by io.popen/os.execute or by the host are never stolen.
*/
#ifndef MP_PROC_H
#define MP_PROC_H

#include <sys/types.h>

typedef struct mp_child {
  pid_t pid;
  pid_t owner;            /* the process that forked it; only it may wait */
  int pidfd;              /* readable once the child has ended: a pidfd, or a pipe's
                             read end where pidfd_open is missing; -1 if neither */
  int daemon;             /* terminated, not waited for, when the owner exits */
  int done;               /* reaped: exitcode is valid */
  int exitcode;           /* exit status, or -signum */
  int has_handle;         /* a binding object refers to it; freed when both are gone */
  struct mp_child *next;
} mp_child;

/*
** Flushes C stdio (so buffered output is not written twice), then forks.
** In the parent returns the child's pid and sets *out to its new list entry; in
** the child returns 0 after resetting per-process state (empty child list,
** stdin on /dev/null); -errno on failure.
*/
pid_t mp_fork(mp_child **out, int daemon);

/* Reaps the child if it has ended. Returns 1 when done, 0 while running. */
int mp_child_poll(mp_child *c);

/* Waits until the child ends or `deadline`: 0 done, ETIMEDOUT, or EINTR. */
int mp_child_wait(mp_child *c, double deadline);

/* Sends sig unless the child was already reaped (its pid may be reused). */
int mp_child_signal(mp_child *c, int sig);

/* The binding object let go of c: frees it now if reaped, else when reaped. */
void mp_child_release(mp_child *c);

/* Reaps every ended child of this process and frees released entries. */
void mp_children_reap(void);

/*
** What a process does with its children when it exits normally (Python's
** behaviour): terminates the daemonic ones, then waits for all of them.
** Registered with atexit at the first fork; the child exit path calls it too.
*/
void mp_children_at_exit(void);

/* Flushes stdio, runs mp_children_at_exit, and _exits: how every child ends. */
void mp_exit_child(int status) __attribute__((noreturn));

/* True in a process forked by mp_fork. */
int mp_is_child(void);

#endif

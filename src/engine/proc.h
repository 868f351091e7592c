/*
** Child processes: fork, reaping, waiting, signalling, and what happens to
** children when their parent exits. Engine code: no Lua; returns 0 or errno.
**
** Every process keeps a list of the children it started. Reaping only ever
** calls waitpid() on a pid from that list, never waitpid(-1), so the statuses
** of children made by io.popen/os.execute or by the host are never stolen.
** (The fork server, forkserver.c, reaps with waitpid(-1): in its own process,
** whose only children are those it forked.) The list is shared by the states
** of a host that runs Lua in several threads: it has its own lock.
**
** Three kinds of entries:
**   local    forked by this process (fork start method, pool workers);
**   remote   forked for this process by the fork server (forkserver.h): not
**            our child for the kernel, so its exit status comes from the
**            server over a socket (the entry's sentinel), and it is signalled
**            through a pidfd the server sent;
**   service  the fork server itself: ended by closing its lifeline, after
**            every other child, when this process exits.
** The same calls serve all three, so a Process behaves alike whichever way
** it was started.
*/
#ifndef MP_PROC_H
#define MP_PROC_H

#include <sys/types.h>

enum { MP_CHILD_LOCAL, MP_CHILD_REMOTE, MP_CHILD_SERVICE };

/* Which fork the hooks are told about (include/mplua.h: MPLUA_FORK_*). */
enum { MP_FORK_PROCESS = 1, MP_FORK_SERVER = 2, MP_FORK_SERVED = 3 };

typedef struct mp_child {
  pid_t pid;
  pid_t owner;            /* the process that started it; only it may wait */
  int kind;               /* MP_CHILD_LOCAL, _REMOTE or _SERVICE */
  int pidfd;              /* the sentinel, readable once the child has ended: a pidfd, or
                             a pipe's read end where pidfd_open is missing (local); the
                             status socket (remote); -1 if none */
  int sigfd;              /* remote: a pidfd to signal it with, or -1 (then kill(pid)) */
  int lifeline;           /* service: the write end whose closing ends it, or -1 */
  int lost;               /* remote: its server died; the sentinel is now its pidfd */
  int daemon;             /* terminated, not waited for, when the owner exits */
  int done;               /* reaped: exitcode is valid */
  int exitcode;           /* exit status, or -signum */
  int has_handle;         /* a binding object refers to it; freed when both are gone */
  struct mp_child *next;
} mp_child;

/*
** Flushes C stdio (so buffered output is not written twice), runs the fork
** hooks, then forks. In the parent returns the child's pid and sets *out to
** its new list entry; in the child returns 0 after resetting per-process
** state (empty child list, stdin on /dev/null, the fds registered with
** mp_fork_close_in_child closed); -errno on failure.
*/
pid_t mp_fork(mp_child **out, int daemon);

/*
** The same for the fork server: its entry is a service entry whose lifeline
** is `lifeline` (the write end of a pipe the server watches; the entry owns
** it). The hooks are told MP_FORK_SERVER.
*/
pid_t mp_fork_service(mp_child **out, int lifeline);

/*
** A fork that keeps no entry, for the fork server's own children (the server
** reaps them itself): flush, hooks (told `what`), fork, and in the child the
** same reset as mp_fork. Returns the pid, 0 in the child, or -errno.
*/
pid_t mp_fork_bare(int what);

/*
** Records a remote child: started by the fork server for this process.
** `status_fd` is the socket the server writes its exit status to (it becomes
** the sentinel), `sigfd` a pidfd to signal it or -1. The entry owns both fds.
** 0 or ENOMEM (then both fds are closed).
*/
int mp_child_adopt(mp_child **out, pid_t pid, int status_fd, int sigfd, int daemon);

/* A service child: closes its lifeline now (it ends once its own children have). */
void mp_child_end_service(mp_child *c);

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
** behaviour): terminates the daemonic ones, then waits for all of them; last,
** ends its fork server (closes the lifeline) and waits for it.
** Registered with atexit at the first fork; the child exit path calls it too.
*/
void mp_children_at_exit(void);

/* Flushes stdio, runs mp_children_at_exit, and _exits: how every child ends. */
void mp_exit_child(int status) __attribute__((noreturn));

/* True in a process forked by mp_fork. */
int mp_is_child(void);

/*
** Fork hooks (include/mplua.h: mplua_set_fork_hooks): prepare runs in the
** process about to fork, parent in it after the fork (also when it failed),
** child in the new process after mp's own reset. Each gets which fork it is
** (MP_FORK_*) and `ud`. Any of them may be NULL. Set them before the first fork.
*/
typedef void (*mp_fork_hook)(int what, void *ud);
void mp_fork_set_hooks(mp_fork_hook prepare, mp_fork_hook parent, mp_fork_hook child, void *ud);

/*
** Fds that no process forked from this one may keep (the fork server's
** lifeline and control connections): every fork made here closes them in the
** child. Registered fds are unregistered by mp_fork_keep_in_child before
** they are closed. 0 or ENOMEM.
*/
int mp_fork_close_in_child(int fd);
void mp_fork_keep_in_child(int fd);

/*
** Fds the fork server must not hold a copy of: the doorbells of Pipe ends,
** whose end-of-file means "every copy of the other end is closed". The
** server is a fork of its owner that lives on; in it these fds are pointed
** at /dev/null (not closed: the objects that name them stay in its copy of
** the Lua state, and a closed number could be reused under them).
** mp_fork_hide_from_server returns 0 or ENOMEM; a released fd is unregistered
** before it is closed.
*/
int mp_fork_hide_from_server(int fd);
void mp_fork_show_to_server(int fd);

#endif

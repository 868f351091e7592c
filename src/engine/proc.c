#define _GNU_SOURCE   /* pipe2 */
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdio_ext.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "clock.h"
#include "fault.h"
#include "forkserver.h"
#include "identity.h"
#include "pidfd.h"
#include "proc.h"

/*
** Process-wide state, not per lua_State: a process has one set of children
** whatever number of Lua states it runs. Reset in every forked child.
** `list_mutex` guards the list, for hosts that run Lua states in several
** threads; a forked child starts with a fresh one (the fork may have
** happened while another thread held it).
*/
static mp_child *children;
static pthread_mutex_t list_mutex = PTHREAD_MUTEX_INITIALIZER;
/*
** Reaping an entry (waitpid, reading a remote status) and recording its status
** is one step under poll_mutex: two threads polling the same child must not
** both call waitpid, or the one that loses gets ECHILD and records 255. Taken
** after list_mutex when both are held, never before it.
*/
static pthread_mutex_t poll_mutex = PTHREAD_MUTEX_INITIALIZER;
static int is_child;
static int atexit_registered;

/* Set by the host before the library is used (mplua_set_fork_hooks). */
static struct {
  mp_fork_hook prepare, parent, child;
  void *ud;
} hooks;

/* Fds no process forked from this one may keep (see mp_fork_close_in_child). */
static pthread_mutex_t closing_mutex = PTHREAD_MUTEX_INITIALIZER;
static int *closing;
static size_t nclosing, cap_closing;
/* Fds pointed at /dev/null in the fork server (mp_fork_hide_from_server); same mutex. */
static int *hidden;
static size_t nhidden, cap_hidden;

int mp_is_child(void) { return is_child; }

static void lock_list(void) { pthread_mutex_lock(&list_mutex); }
static void unlock_list(void) { pthread_mutex_unlock(&list_mutex); }

/*
** Without pidfd_open (kernels before 5.3, valgrind 3.19) a child's sentinel is
** the read end of a pipe whose only write end the child holds: it polls
** readable (EOF) once the child has ended, as Python's sentinel does.
*/
static int pidfd_works = -1;        /* unknown until the first fork */
static int own_sentinel_wfd = -1;   /* in a child: the write end that is its sentinel */

static int pidfd_supported(void) {
  if (pidfd_works < 0) {
    /* MPLUA_NO_PIDFD=1 forces the pipe (pidfd.h), so specs cover it on any kernel. */
    int fd = mp_pidfd_open(getpid());
    pidfd_works = fd >= 0;
    if (fd >= 0) close(fd);
  }
  return pidfd_works;
}

void mp_fork_set_hooks(mp_fork_hook prepare, mp_fork_hook parent, mp_fork_hook child, void *ud) {
  hooks.prepare = prepare;
  hooks.parent = parent;
  hooks.child = child;
  hooks.ud = ud;
}

static int fdset_add(int **set, size_t *n, size_t *cap, int fd) {
  pthread_mutex_lock(&closing_mutex);
  int err = 0;
  if (*n == *cap) {
    size_t c = *cap ? *cap * 2 : 8;
    int *p = realloc(*set, c * sizeof *p);
    if (p == NULL) err = ENOMEM;
    else { *set = p; *cap = c; }
  }
  if (err == 0) (*set)[(*n)++] = fd;
  pthread_mutex_unlock(&closing_mutex);
  return err;
}

static void fdset_remove(int *set, size_t *n, int fd) {
  pthread_mutex_lock(&closing_mutex);
  for (size_t i = *n; i-- > 0;) {
    if (set[i] == fd) { set[i] = set[--*n]; break; }
  }
  pthread_mutex_unlock(&closing_mutex);
}

int mp_fork_close_in_child(int fd) { return fdset_add(&closing, &nclosing, &cap_closing, fd); }
void mp_fork_keep_in_child(int fd) { fdset_remove(closing, &nclosing, fd); }
int mp_fork_hide_from_server(int fd) { return fdset_add(&hidden, &nhidden, &cap_hidden, fd); }
void mp_fork_show_to_server(int fd) { fdset_remove(hidden, &nhidden, fd); }

/* mp.so unloaded (lua_close in a stock lua5.4): the lists would be lost with it. */
__attribute__((destructor)) static void forget_fd_lists(void) {
  free(closing);
  free(hidden);
  closing = hidden = NULL;
  nclosing = cap_closing = nhidden = cap_hidden = 0;
}

/* In the new fork server: its copies of the hidden fds now read /dev/null. */
static void hide_fds(void) {
  int null = open("/dev/null", O_RDWR | O_CLOEXEC);
  if (null < 0) return;
  for (size_t i = 0; i < nhidden; i++) dup3(null, hidden[i], O_CLOEXEC);
  close(null);
  nhidden = 0;
}

/* Closes a service child's lifeline (it then ends once its own children have). */
static void end_service(mp_child *c) {
  if (c->lifeline >= 0) {
    mp_fork_keep_in_child(c->lifeline);
    close(c->lifeline);
    c->lifeline = -1;
  }
}

void mp_child_end_service(mp_child *c) {
  if (c->owner == (pid_t)mp_self_pid()) end_service(c);
}

static void unlink_child(mp_child *c) {
  if (!c->linked) return;
  for (mp_child **pp = &children; *pp != NULL; pp = &(*pp)->next) {
    if (*pp == c) { *pp = c->next; c->linked = 0; return; }
  }
}

/*
** An entry inherited through fork (owner another process) holds copies: the
** lifeline among them was already closed by reset_after_fork.
*/
static void free_child(mp_child *c) {
  if (c->pidfd >= 0) close(c->pidfd);
  if (c->sigfd >= 0) close(c->sigfd);
  if (c->owner == (pid_t)mp_self_pid()) end_service(c);
  free(c);
}

static mp_child *new_entry(int kind, int daemon) {
  mp_child *c = calloc(1, sizeof *c);
  if (c == NULL) return NULL;
  c->kind = kind;
  c->daemon = daemon;
  c->pidfd = c->sigfd = c->lifeline = -1;
  return c;
}

static void link_entry(mp_child *c, pid_t pid) {
  c->pid = pid;
  c->owner = (pid_t)mp_self_pid();
  c->has_handle = 1;
  lock_list();
  c->next = children;
  c->linked = 1;
  children = c;
  unlock_list();
}

static int register_atexit(void) {
  if (!atexit_registered) {
    if (atexit(mp_children_at_exit) != 0) return ENOMEM;
    atexit_registered = 1;
  }
  return 0;
}

/*
** Whether a read stream holds buffered input (or pushed-back characters). The
** tests before each purge are reads: every page a new child writes is a page
** the kernel copies for it (about 3 us here), and stdio's FILE structures are
** in libc's data pages. Without glibc's layout, assume there is input.
*/
static int has_input(FILE *f) {
#ifdef __GLIBC__
  return f->_IO_read_ptr != f->_IO_read_end || f->_IO_save_base != NULL ||
         f->_IO_backup_base != NULL;
#else
  (void)f;
  return 1;
#endif
}

/*
** In a new child: the parent's children are not ours. Their entries may still
** be referenced by inherited binding objects, which free them (see release);
** the fds no child may keep are closed now (a fork server's lifeline, whose
** copy here would keep the server alive after its owner).
*/
static void reset_after_fork(void) {
  pthread_mutex_init(&list_mutex, NULL);
  pthread_mutex_init(&poll_mutex, NULL);
  pthread_mutex_init(&closing_mutex, NULL);
  for (size_t i = 0; i < nclosing; i++) close(closing[i]);
  nclosing = 0;
  children = NULL;
  is_child = 1;
  /*
  ** Output the parent had buffered is the parent's: stdio was flushed just
  ** before the fork, but in a host with threads another thread may have
  ** written between that flush and the fork; written again by the child, it
  ** would appear twice. (Streams other than stdout and stderr that threads
  ** write while mp forks are the host's to handle: its fork hooks.)
  */
  if (__fpending(stdout) != 0) __fpurge(stdout);
  if (__fpending(stderr) != 0) __fpurge(stderr);
  /* stdin: the child must not steal the parent's input (Python does the same). */
  int fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
  if (fd >= 0) {
    if (fd != STDIN_FILENO) { dup2(fd, STDIN_FILENO); close(fd); }
    if (has_input(stdin)) __fpurge(stdin);
    if (ferror_unlocked(stdin) || feof_unlocked(stdin)) clearerr_unlocked(stdin);
  }
}

/*
** Every fork mp makes: the host's prepare hook, stdio flushed (so that
** buffered output is not written twice), fork, then the parent or child hook.
** `sentinel` (or NULL): a pipe whose write end becomes the child's own.
*/
static pid_t do_fork(int what, int sentinel[2]) {
  if (hooks.prepare) hooks.prepare(what, hooks.ud);
  fflush(NULL);
  MP_FAULT("fork.flushed");          /* a window where another thread may write (specs) */
  pid_t pid = fork();
  int err = errno;
  if (pid == 0) {
    /* Our parent's sentinel must not wait for us as well. */
    if (own_sentinel_wfd >= 0) {
      close(own_sentinel_wfd);
      own_sentinel_wfd = -1;
    }
    if (sentinel != NULL && sentinel[0] >= 0) {
      close(sentinel[0]);
      own_sentinel_wfd = sentinel[1];
    }
    reset_after_fork();
    if (hooks.child) hooks.child(what, hooks.ud);
    return 0;
  }
  if (hooks.parent) hooks.parent(what, hooks.ud);
  if (pid < 0) errno = err;            /* (not written otherwise: errno's page is copied once written) */
  return pid;
}

/* The part of mp_fork and mp_fork_service after the entry is made. */
static pid_t fork_entry(mp_child *c, int what, mp_child **out) {
  int err = register_atexit();
  if (err) return -err;
  int sentinel[2] = { -1, -1 };
  if (!pidfd_supported() && pipe2(sentinel, O_CLOEXEC) < 0) return -errno;
  pid_t pid = do_fork(what, sentinel);
  if (pid < 0) {
    err = errno;
    if (sentinel[0] >= 0) { close(sentinel[0]); close(sentinel[1]); }
    return -err;
  }
  if (pid == 0) return 0;
  if (sentinel[0] >= 0) {
    close(sentinel[1]);
    c->pidfd = sentinel[0];
  } else if ((c->pidfd = mp_pidfd_open(pid)) < 0) {
    /*
    ** No fd for the sentinel (EMFILE): a child nobody could wait for is not
    ** started at all. It has not run a line of the caller's code yet that
    ** matters (it only just returned from fork), so it is killed and reaped
    ** here, and the caller gets the errno.
    */
    err = errno;
    kill(pid, SIGKILL);
    while (waitpid(pid, NULL, 0) < 0 && errno == EINTR)
      ;
    return -err;                        /* the caller frees the entry */
  }
  link_entry(c, pid);
  *out = c;
  return pid;
}

/*
** The child's copy of the entry it was forked with: not freed (free() would
** write malloc's pages, each copied for the child), but kept reachable (for
** valgrind's leak check). Volatile: a store to a static nobody reads is
** otherwise removed by the optimizer.
*/
static mp_child *volatile entry_of_parent;

pid_t mp_fork(mp_child **out, int daemon) {
  mp_child *c = new_entry(MP_CHILD_LOCAL, daemon);
  if (c == NULL) return -ENOMEM;
  pid_t pid = fork_entry(c, MP_FORK_PROCESS, out);
  if (pid < 0) free(c);
  else if (pid == 0) entry_of_parent = c;
  return pid;
}

pid_t mp_fork_service(mp_child **out, int lifeline) {
  mp_child *c = new_entry(MP_CHILD_SERVICE, 0);
  if (c == NULL) return -ENOMEM;
  c->lifeline = lifeline;
  /* The lifeline is closed in every other child: only the owner keeps the server up. */
  int err = mp_fork_close_in_child(lifeline);
  if (err) { free(c); return -err; }
  pid_t pid = fork_entry(c, MP_FORK_SERVER, out);
  if (pid == 0) hide_fds();
  if (pid <= 0) {
    c->lifeline = -1;                     /* the caller still owns it on failure; gone in the child */
    free(c);
    if (pid < 0) mp_fork_keep_in_child(lifeline);
  }
  return pid;
}

pid_t mp_fork_bare(int what) {
  pid_t pid = do_fork(what, NULL);
  return pid < 0 ? -errno : pid;
}

int mp_child_adopt(mp_child **out, pid_t pid, int status_fd, int sigfd, int daemon) {
  mp_child *c = new_entry(MP_CHILD_REMOTE, daemon);
  int err = c == NULL ? ENOMEM : register_atexit();
  if (err) {
    free(c);
    close(status_fd);
    if (sigfd >= 0) close(sigfd);
    return err;
  }
  c->pidfd = status_fd;
  c->sigfd = sigfd;
  link_entry(c, pid);
  *out = c;
  return 0;
}

/* The exit code first, then `done` (read without a lock by mp_child_poll's fast path). */
static void set_done(mp_child *c, int exitcode) {
  c->exitcode = exitcode;
  __atomic_store_n(&c->done, 1, __ATOMIC_RELEASE);
}

static void record_status(mp_child *c, int status) {
  if (WIFEXITED(status)) set_done(c, WEXITSTATUS(status));
  else if (WIFSIGNALED(status)) set_done(c, -WTERMSIG(status));
  else set_done(c, 255);
}

static int poll_locked(mp_child *c);

int mp_child_poll(mp_child *c) {
  if (__atomic_load_n(&c->done, __ATOMIC_ACQUIRE)) return 1;
  if (c->owner != (pid_t)mp_self_pid()) return 0;
  pthread_mutex_lock(&poll_mutex);
  int done = poll_locked(c);
  pthread_mutex_unlock(&poll_mutex);
  return done;
}

static int poll_locked(mp_child *c) {
  if (c->done) return 1;
  int status;
  if (c->kind == MP_CHILD_REMOTE) {
    /* Not our child for the kernel: the fork server reports its status. */
    if (c->lost) {
      struct pollfd pfd = { c->pidfd, POLLIN, 0 };
      if (poll(&pfd, 1, 0) <= 0) return 0;
      set_done(c, 255);                     /* ended; its status died with the server */
      return 1;
    }
    int rc = mp_fs_read_status(c->pidfd, &status);
    if (rc == 0) { record_status(c, status); return 1; }
    if (rc == EAGAIN) return 0;
    /*
    ** The server died (killed) before reporting. The child may still run: from
    ** now on it is watched through its pidfd, put in the sentinel's place
    ** (same fd number, so a sentinel already handed out keeps working) and
    ** polled readable when the child ends. Its exit status is lost (255).
    */
    if (c->sigfd >= 0 && dup3(c->sigfd, c->pidfd, O_CLOEXEC) >= 0) {
      c->lost = 1;
      return poll_locked(c);
    }
    set_done(c, 255);
    return 1;
  }
  pid_t r;
  do r = waitpid(c->pid, &status, WNOHANG); while (r < 0 && errno == EINTR);
  if (r == c->pid) {
    record_status(c, status);
    return 1;
  }
  if (r < 0 && errno == ECHILD) {   /* reaped behind our back (SIGCHLD set to SIG_IGN) */
    set_done(c, 255);
    return 1;
  }
  return 0;
}

int mp_child_wait(mp_child *c, double deadline) {
  for (;;) {
    if (mp_child_poll(c)) return 0;
    int sliced;
    double end = mp_slice_end(deadline, &sliced);
    double left = end - mp_now();
    if (left <= 0) return sliced ? EINTR : ETIMEDOUT;
    if (c->pidfd >= 0) {
      struct pollfd pfd = { .fd = c->pidfd, .events = POLLIN };
      int ms = (int)ceil(left * 1000);
      int r = poll(&pfd, 1, ms);
      if (r < 0 && errno == EINTR) return EINTR;
      if (r == 0 && sliced) {
        if (mp_child_poll(c)) return 0;
        return EINTR;
      }
    } else {
      /* No pidfd: poll the status with a short backoff. */
      int rc = mp_sleep_until(fmin(end, mp_now() + 0.001));
      if (rc == EINTR && !mp_child_poll(c)) return EINTR;
    }
  }
}

int mp_child_signal(mp_child *c, int sig) {
  if (mp_child_poll(c)) return 0;
#ifdef SYS_pidfd_send_signal
  /* A pidfd names this very process, never a later one that reused the pid. */
  if (c->sigfd >= 0) {
    if (syscall(SYS_pidfd_send_signal, c->sigfd, sig, NULL, 0) < 0 && errno != ESRCH) return errno;
    return 0;
  }
#endif
  if (kill(c->pid, sig) < 0 && errno != ESRCH) return errno;
  return 0;
}

void mp_child_release(mp_child *c) {
  if (c->owner != (pid_t)mp_self_pid()) {
    /* An entry inherited through fork: this process's list never held it. */
    free_child(c);
    return;
  }
  /* Under the list's lock: mp_children_reap in another thread frees released entries. */
  lock_list();
  c->has_handle = 0;
  MP_FAULT("proc.release");          /* another thread's reap must wait here (specs) */
  int done = mp_child_poll(c);
  if (done) unlink_child(c);
  unlock_list();
  if (done) free_child(c);
}

/*
** An ended child leaves the list here, whether or not a handle still refers to
** it: the list is for the children still to be reaped or waited for at exit,
** and every Process start reaps, so a list that kept the ended children until
** their handles were collected would be walked whole at every start.
*/
void mp_children_reap(void) {
  lock_list();
  mp_child **pp = &children;
  while (*pp != NULL) {
    mp_child *c = *pp;
    if (mp_child_poll(c)) {
      *pp = c->next;
      c->linked = 0;
      if (!c->has_handle) free_child(c);   /* else mp_child_release frees it */
    } else {
      pp = &c->next;
    }
  }
  unlock_list();
}

/* Waits for the child without a deadline (its polls take poll_mutex, as another thread's may). */
static void wait_blocking(mp_child *c) {
  while (mp_child_wait(c, INFINITY) != 0) {}
}

void mp_children_at_exit(void) {
  /*
  ** The fork server comes last: a remote child's status travels through it,
  ** and it ends (its lifeline closed) once its own children have. The list is
  ** held meanwhile: a host thread that still starts processes waits.
  */
  lock_list();
  for (mp_child *c = children; c != NULL; c = c->next) {
    if (c->kind != MP_CHILD_SERVICE && c->daemon && !mp_child_poll(c)) mp_child_signal(c, SIGTERM);
  }
  for (mp_child *c = children; c != NULL; c = c->next) {
    if (c->kind != MP_CHILD_SERVICE && !c->done) wait_blocking(c);
  }
  for (mp_child *c = children; c != NULL; c = c->next) {
    if (c->kind == MP_CHILD_SERVICE) end_service(c);
  }
  for (mp_child *c = children; c != NULL; c = c->next) {
    if (!c->done) wait_blocking(c);
  }
  unlock_list();
  /*
  ** Entries no handle refers to any more are freed now: in a stock lua5.4 this
  ** runs when lua_close unloads mp.so, and the list would be lost with it.
  */
  mp_children_reap();
}

void mp_exit_child(int status) {
  fflush(NULL);
  mp_children_at_exit();
  fflush(NULL);
  _exit(status & 0xff);
}

#define _GNU_SOURCE   /* pipe2 */
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdio_ext.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "clock.h"
#include "identity.h"
#include "proc.h"

/*
** Process-wide state, not per lua_State: a process has one set of children
** whatever number of Lua states it runs. Reset in every forked child.
*/
static mp_child *children;
static int is_child;
static int atexit_registered;

int mp_is_child(void) { return is_child; }

static int open_pidfd(pid_t pid) {
#ifdef SYS_pidfd_open
  /* pidfd_open sets close-on-exec itself. */
  return (int)syscall(SYS_pidfd_open, pid, 0);
#else
  (void)pid;
  return -1;
#endif
}

/*
** Without pidfd_open (kernels before 5.3, valgrind 3.19) a child's sentinel is
** the read end of a pipe whose only write end the child holds: it polls
** readable (EOF) once the child has ended, as Python's sentinel does.
*/
static int pidfd_works = -1;        /* unknown until the first fork */
static int own_sentinel_wfd = -1;   /* in a child: the write end that is its sentinel */

static int pidfd_supported(void) {
  if (pidfd_works < 0) {
    /* MPLUA_NO_PIDFD=1 forces the pipe, so specs cover it on any kernel. */
    const char *force = getenv("MPLUA_NO_PIDFD");
    if (force != NULL && *force != '\0' && *force != '0') return pidfd_works = 0;
    int fd = open_pidfd(getpid());
    pidfd_works = fd >= 0;
    if (fd >= 0) close(fd);
  }
  return pidfd_works;
}

static void unlink_child(mp_child *c) {
  for (mp_child **pp = &children; *pp != NULL; pp = &(*pp)->next) {
    if (*pp == c) { *pp = c->next; return; }
  }
}

static void free_child(mp_child *c) {
  if (c->pidfd >= 0) close(c->pidfd);
  free(c);
}

/*
** In a new child: the parent's children are not ours. Their entries may still be
** referenced by inherited binding objects, which free them (see release).
*/
static void reset_after_fork(void) {
  children = NULL;
  is_child = 1;
  /* stdin: the child must not steal the parent's input (Python does the same). */
  int fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
  if (fd >= 0) {
    if (fd != STDIN_FILENO) { dup2(fd, STDIN_FILENO); close(fd); }
    __fpurge(stdin);
    clearerr(stdin);
  }
}

pid_t mp_fork(mp_child **out, int daemon) {
  mp_child *c = calloc(1, sizeof *c);
  if (c == NULL) return -ENOMEM;
  if (!atexit_registered) {
    if (atexit(mp_children_at_exit) != 0) { free(c); return -ENOMEM; }
    atexit_registered = 1;
  }
  int sentinel[2] = { -1, -1 };
  if (!pidfd_supported() && pipe2(sentinel, O_CLOEXEC) < 0) {
    int err = errno;
    free(c);
    return -err;
  }
  fflush(NULL);
  pid_t pid = fork();
  if (pid < 0) {
    int err = errno;
    free(c);
    if (sentinel[0] >= 0) { close(sentinel[0]); close(sentinel[1]); }
    return -err;
  }
  if (pid == 0) {
    free(c);
    /* Our parent's sentinel must not wait for us as well. */
    if (own_sentinel_wfd >= 0) close(own_sentinel_wfd);
    own_sentinel_wfd = sentinel[1];
    if (sentinel[0] >= 0) close(sentinel[0]);
    reset_after_fork();
    return 0;
  }
  c->pid = pid;
  c->owner = (pid_t)mp_self_pid();
  if (sentinel[0] >= 0) {
    close(sentinel[1]);
    c->pidfd = sentinel[0];
  } else if ((c->pidfd = open_pidfd(pid)) < 0) {
    /*
    ** No fd for the sentinel (EMFILE): a child nobody could wait for is not
    ** started at all. It has not run a line of the caller's code yet that
    ** matters (it only just returned from fork), so it is killed and reaped
    ** here, and the caller gets the errno.
    */
    int err = errno;
    kill(pid, SIGKILL);
    while (waitpid(pid, NULL, 0) < 0 && errno == EINTR)
      ;
    free(c);
    return -err;
  }
  c->daemon = daemon;
  c->has_handle = 1;
  c->next = children;
  children = c;
  *out = c;
  return pid;
}

static void record_status(mp_child *c, int status) {
  c->done = 1;
  if (WIFEXITED(status)) c->exitcode = WEXITSTATUS(status);
  else if (WIFSIGNALED(status)) c->exitcode = -WTERMSIG(status);
  else c->exitcode = 255;
}

int mp_child_poll(mp_child *c) {
  if (c->done) return 1;
  if (c->owner != (pid_t)mp_self_pid()) return 0;
  int status;
  pid_t r;
  do r = waitpid(c->pid, &status, WNOHANG); while (r < 0 && errno == EINTR);
  if (r == c->pid) {
    record_status(c, status);
    return 1;
  }
  if (r < 0 && errno == ECHILD) {   /* reaped behind our back (SIGCHLD set to SIG_IGN) */
    c->done = 1;
    c->exitcode = 255;
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
  if (kill(c->pid, sig) < 0 && errno != ESRCH) return errno;
  return 0;
}

void mp_child_release(mp_child *c) {
  if (c->owner != (pid_t)mp_self_pid()) {
    /* An entry inherited through fork: this process's list never held it. */
    free_child(c);
    return;
  }
  c->has_handle = 0;
  if (mp_child_poll(c)) {
    unlink_child(c);
    free_child(c);
  }
}

void mp_children_reap(void) {
  mp_child **pp = &children;
  while (*pp != NULL) {
    mp_child *c = *pp;
    if (mp_child_poll(c) && !c->has_handle) {
      *pp = c->next;
      free_child(c);
    } else {
      pp = &c->next;
    }
  }
}

static void wait_blocking(mp_child *c) {
  int status;
  pid_t r;
  do r = waitpid(c->pid, &status, 0); while (r < 0 && errno == EINTR);
  if (r == c->pid) record_status(c, status);
  else c->done = 1, c->exitcode = 255;
}

void mp_children_at_exit(void) {
  for (mp_child *c = children; c != NULL; c = c->next) {
    if (c->daemon && !mp_child_poll(c)) kill(c->pid, SIGTERM);
  }
  for (mp_child *c = children; c != NULL; c = c->next) {
    if (!c->done) wait_blocking(c);
  }
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

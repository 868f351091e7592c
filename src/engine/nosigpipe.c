/*
** mp_write_nosigpipe: the method of libpq and OpenSSL's examples for writes
** that must not raise SIGPIPE without touching the process-wide disposition.
**
** 1. Block SIGPIPE in this thread (a SIGPIPE raised by write(2) is directed
**    at the writing thread, so the thread mask is enough).
** 2. Note whether a SIGPIPE is already pending for us: if it was blocked
**    before, one may be waiting that belongs to the program, not to us.
** 3. write. If it failed with EPIPE, the kernel has queued a SIGPIPE for this
**    thread: take it back with a zero-timeout sigtimedwait, unless one was
**    pending before (standard signals do not queue twice, so the pending one
**    stands for both and stays for its owner).
** 4. Restore the mask; errno is write's.
**
** Nothing here can be left half done by a death: the mask and the pending
** set die with the process. A signal handler that runs between 1 and 4 sees
** SIGPIPE blocked, which only delays someone else's SIGPIPE until 4.
*/
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <time.h>
#include <unistd.h>

#include "nosigpipe.h"

ssize_t mp_write_nosigpipe(int fd, const void *buf, size_t n) {
  sigset_t pipe_set, old;
  sigemptyset(&pipe_set);
  sigaddset(&pipe_set, SIGPIPE);
  if (pthread_sigmask(SIG_BLOCK, &pipe_set, &old) != 0) return write(fd, buf, n);
  int was_pending = 0;
  if (sigismember(&old, SIGPIPE)) {
    /* Blocked already: a SIGPIPE may be pending that is not ours. */
    sigset_t pending;
    if (sigpending(&pending) == 0) was_pending = sigismember(&pending, SIGPIPE);
  }
  ssize_t r = write(fd, buf, n);
  int err = errno;
  if (r < 0 && err == EPIPE && !was_pending) {
    static const struct timespec zero = { 0, 0 };
    while (sigtimedwait(&pipe_set, NULL, &zero) < 0 && errno == EINTR) {}
  }
  pthread_sigmask(SIG_SETMASK, &old, NULL);
  errno = err;
  return r;
}

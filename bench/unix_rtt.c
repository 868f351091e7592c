/*
** The floor under a manager call: two C processes ping-pong 12 bytes over a
** Unix socketpair, best of 5 runs of n round trips. Prints microseconds per
** round trip. Used by bench/manager.lua.
**   unix_rtt N          blocking reads: each side sleeps until the other writes
**   unix_rtt N spin     reads that never sleep (MSG_DONTWAIT, retried), as the
**                       manager's client and server do for a while before they
**                       sleep: the floor without the kernel's wake-up
*/
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static double now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

static int spin;

static ssize_t get(int fd, char *b, size_t n) {
  if (!spin) return read(fd, b, n);
  for (;;) {
    ssize_t r = recv(fd, b, n, MSG_DONTWAIT);
    if (r >= 0 || errno != EAGAIN) return r;
  }
}

static double once(int n) {
  int sv[2];
  char b[64] = {0};
  if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv) < 0) return -1;
  pid_t pid = fork();
  if (pid == 0) {
    close(sv[0]);
    for (int i = 0; i < n; i++) {
      if (get(sv[1], b, sizeof b) <= 0) _exit(1);
      if (write(sv[1], b, 12) != 12) _exit(1);
    }
    _exit(0);
  }
  close(sv[1]);
  double t0 = now();
  for (int i = 0; i < n; i++) {
    if (write(sv[0], b, 12) != 12 || get(sv[0], b, sizeof b) <= 0) break;
  }
  double us = (now() - t0) / n * 1e6;
  close(sv[0]);
  waitpid(pid, NULL, 0);
  return us;
}

int main(int argc, char **argv) {
  int n = argc > 1 ? atoi(argv[1]) : 100000;
  spin = argc > 2;
  double best = 1e9;
  for (int r = 0; r < 5; r++) {
    double us = once(n);
    if (us > 0 && us < best) best = us;
  }
  printf("%.3f\n", best);
  return 0;
}

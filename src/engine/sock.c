#define _GNU_SOURCE   /* accept4 */
#include <arpa/inet.h>
#include <errno.h>
#include <math.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "clock.h"
#include "sock.h"

int mp_addr_parse(const char *s, mp_addr *a) {
  memset(a, 0, sizeof *a);
  size_t len = strlen(s);
  if (strchr(s, '/') != NULL) {
    if (len >= sizeof a->path) return ENAMETOOLONG;
    memcpy(a->path, s, len + 1);
    return 0;
  }
  a->tcp = 1;
  const char *colon = strrchr(s, ':');
  if (colon == NULL || colon == s) return EINVAL;
  const char *host = s, *hend = colon;
  if (s[0] == '[') {                         /* [v6]:port */
    if (colon[-1] != ']') return EINVAL;
    host = s + 1;
    hend = colon - 1;
  }
  size_t hlen = (size_t)(hend - host), plen = len - (size_t)(colon + 1 - s);
  if (hlen == 0 || hlen >= sizeof a->host || plen == 0 || plen >= sizeof a->port) return EINVAL;
  for (const char *p = colon + 1; *p; p++)
    if (*p < '0' || *p > '9') return EINVAL;
  memcpy(a->host, host, hlen);
  memcpy(a->port, colon + 1, plen);
  return 0;
}

static void tcp_options(int fd) {
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}

/* The first address of a TCP host: 0 or EADDRNOTAVAIL. The caller frees *out. */
static int resolve(const mp_addr *a, int passive, struct addrinfo **out) {
  struct addrinfo hints;
  memset(&hints, 0, sizeof hints);
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_NUMERICSERV | (passive ? AI_PASSIVE : 0);
  int rc = getaddrinfo(a->host, a->port, &hints, out);
  return rc == 0 ? 0 : EADDRNOTAVAIL;
}

static int unix_sockaddr(const mp_addr *a, struct sockaddr_un *sa) {
  memset(sa, 0, sizeof *sa);
  sa->sun_family = AF_UNIX;
  memcpy(sa->sun_path, a->path, strlen(a->path) + 1);
  return 0;
}

int mp_sock_listen(const mp_addr *a, int backlog, int *fdp) {
  int fd, err = 0;
  if (!a->tcp) {
    struct sockaddr_un sa;
    unix_sockaddr(a, &sa);
    fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0) return errno;
    if (bind(fd, (struct sockaddr *)&sa, sizeof sa) < 0 || listen(fd, backlog) < 0) err = errno;
  } else {
    struct addrinfo *ai;
    if ((err = resolve(a, 1, &ai)) != 0) return err;
    fd = socket(ai->ai_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0) { err = errno; freeaddrinfo(ai); return err; }
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(fd, ai->ai_addr, ai->ai_addrlen) < 0 || listen(fd, backlog) < 0) err = errno;
    freeaddrinfo(ai);
  }
  if (err) { close(fd); return err; }
  *fdp = fd;
  return 0;
}

int mp_sock_name(int fd, const mp_addr *a, char *buf, size_t size) {
  if (!a->tcp) {
    snprintf(buf, size, "%s", a->path);
    return 0;
  }
  struct sockaddr_storage ss;
  socklen_t len = sizeof ss;
  if (getsockname(fd, (struct sockaddr *)&ss, &len) < 0) return errno;
  char host[INET6_ADDRSTRLEN];
  int port;
  if (ss.ss_family == AF_INET6) {
    struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)&ss;
    inet_ntop(AF_INET6, &s6->sin6_addr, host, sizeof host);
    port = ntohs(s6->sin6_port);
    snprintf(buf, size, "[%s]:%d", host, port);
  } else {
    struct sockaddr_in *s4 = (struct sockaddr_in *)&ss;
    inet_ntop(AF_INET, &s4->sin_addr, host, sizeof host);
    port = ntohs(s4->sin_port);
    snprintf(buf, size, "%s:%d", host, port);
  }
  return 0;
}

/* Waits for a connect in progress on fd: 0, EINTR (slice), ETIMEDOUT, or its error. */
static int connect_wait(int fd, double deadline) {
  int sliced;
  double end = mp_slice_end(deadline, &sliced);
  double left = end - mp_now();
  int ms = left <= 0 ? 0 : (int)ceil(left * 1000);
  struct pollfd pfd = { fd, POLLOUT, 0 };
  int n = poll(&pfd, 1, ms);
  if (n < 0) return errno == EINTR ? EINTR : errno;
  if (n == 0) return sliced ? EINTR : ETIMEDOUT;
  int soerr = 0;
  socklen_t len = sizeof soerr;
  if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &len) < 0) return errno;
  return soerr;
}

int mp_sock_connect(const mp_addr *a, double deadline, int *fdp) {
  if (*fdp >= 0) {
    /* A TCP connect in progress from an earlier call. */
    int rc = connect_wait(*fdp, deadline);
    if (rc == 0) tcp_options(*fdp);
    return rc;
  }
  if (!a->tcp) {
    struct sockaddr_un sa;
    unix_sockaddr(a, &sa);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0) return errno;
    *fdp = fd;
    /*
    ** A Unix connect completes at once, or fails with EAGAIN while the
    ** listener's backlog is full: then try again shortly, until the deadline.
    */
    for (;;) {
      if (connect(fd, (struct sockaddr *)&sa, sizeof sa) == 0) return 0;
      int err = errno;
      if (err == EINTR) continue;
      if (err != EAGAIN) return err;
      if (mp_now() >= deadline) return ETIMEDOUT;
      int rc = mp_sleep_until(fmin(deadline, mp_now() + 0.001));
      if (rc == EINTR) return EINTR;
    }
  }
  struct addrinfo *ai;
  int err = resolve(a, 0, &ai);
  if (err) return err;
  int fd = socket(ai->ai_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (fd < 0) { err = errno; freeaddrinfo(ai); return err; }
  *fdp = fd;
  int rc = connect(fd, ai->ai_addr, ai->ai_addrlen);
  err = rc == 0 ? 0 : errno;
  freeaddrinfo(ai);
  if (err == 0) { tcp_options(fd); return 0; }
  if (err != EINPROGRESS && err != EINTR) return err;
  rc = connect_wait(fd, deadline);
  if (rc == 0) tcp_options(fd);
  return rc;
}

int mp_sock_accept(int lfd, int *fdp) {
  for (;;) {
    int fd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);
    if (fd >= 0) {
      struct sockaddr_storage ss;
      socklen_t len = sizeof ss;
      if (getsockname(fd, (struct sockaddr *)&ss, &len) == 0 && ss.ss_family != AF_UNIX) tcp_options(fd);
      *fdp = fd;
      return 0;
    }
    if (errno == EINTR || errno == ECONNABORTED) continue;
    return errno == EWOULDBLOCK ? EAGAIN : errno;
  }
}

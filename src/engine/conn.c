#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/uio.h>
#include <unistd.h>

#include "clock.h"
#include "conn.h"

#define READ_CHUNK 65536
#define PIPE_BYTES (1 << 20)     /* fewer wake-ups for large messages */
#define KEEP_BUF (1 << 20)       /* a larger read buffer is freed once drained */

static int make_pipe(int fds[2]) {
  if (pipe2(fds, O_CLOEXEC | O_NONBLOCK) != 0) return errno;
  fcntl(fds[1], F_SETPIPE_SZ, PIPE_BYTES);   /* best effort */
  return 0;
}

static void init(mp_conn *c, int rfd, int wfd) {
  c->rfd = rfd; c->wfd = wfd;
  c->buf = NULL; c->pos = c->end = c->cap = 0;
}

int mp_conn_pipe(mp_conn *a, mp_conn *b, int duplex) {
  init(a, -1, -1);
  init(b, -1, -1);
  int p1[2], p2[2];
  int err = make_pipe(p1);
  if (err) return err;
  if (!duplex) {
    init(a, p1[0], -1);
    init(b, -1, p1[1]);
    return 0;
  }
  err = make_pipe(p2);
  if (err) { close(p1[0]); close(p1[1]); return err; }
  init(a, p1[0], p2[1]);     /* a reads what b writes into p1, and writes into p2 */
  init(b, p2[0], p1[1]);
  return 0;
}

void mp_conn_close(mp_conn *c) {
  if (c->rfd >= 0) { close(c->rfd); c->rfd = -1; }
  if (c->wfd >= 0) { close(c->wfd); c->wfd = -1; }
  free(c->buf);
  c->buf = NULL;
  c->pos = c->end = c->cap = 0;
}

size_t mp_conn_header(char hdr[MP_CONN_MAXHDR], uint64_t len) {
  if (len < 0xffffffffu) {
    uint32_t n = (uint32_t)len;
    memcpy(hdr + MP_CONN_MAXHDR - 4, &n, 4);
    return 4;
  }
  uint32_t mark = 0xffffffffu;
  memcpy(hdr + MP_CONN_MAXHDR - 12, &mark, 4);
  memcpy(hdr + MP_CONN_MAXHDR - 8, &len, 8);
  return 12;
}

/* Waits for `events` on fd within one slice: 0 ready, ETIMEDOUT, EINTR. */
static int wait_fd(int fd, short events, double deadline) {
  int sliced;
  double end = mp_slice_end(deadline, &sliced);
  double left = end - mp_now();
  int ms = left <= 0 ? 0 : (int)ceil(left * 1000);
  struct pollfd pfd = { fd, events, 0 };
  int n = poll(&pfd, 1, ms);
  if (n > 0) return 0;
  if (n < 0) return errno == EINTR ? EINTR : errno;
  return sliced ? EINTR : ETIMEDOUT;
}

int mp_conn_write(mp_conn *c, const char *p, size_t n, const char *q, size_t m) {
  if (c->wfd < 0) return EBADF;
  size_t sent = 0, total = n + m;
  while (sent < total) {
    struct iovec iov[2];
    int cnt = 0;
    if (sent < n) { iov[cnt].iov_base = (void *)(p + sent); iov[cnt].iov_len = n - sent; cnt++; }
    if (m > 0) {
      size_t qoff = sent > n ? sent - n : 0;
      iov[cnt].iov_base = (void *)(q + qoff); iov[cnt].iov_len = m - qoff; cnt++;
    }
    ssize_t w = cnt == 1 ? write(c->wfd, iov[0].iov_base, iov[0].iov_len) : writev(c->wfd, iov, cnt);
    if (w > 0) { sent += (size_t)w; continue; }
    if (w < 0 && errno != EAGAIN && errno != EINTR) return errno;
    int rc = wait_fd(c->wfd, POLLOUT, INFINITY);
    /* Half a frame in the pipe would corrupt the stream: once started, go on. */
    if (rc == EINTR && sent == 0) return EINTR;
    if (rc != 0 && rc != EINTR) return rc;
  }
  return 0;
}

/* Reads what is there, with room for `want` buffered bytes. 0, MP_CONN_EOF, EAGAIN, errno. */
static int fill(mp_conn *c, size_t want) {
  size_t have = c->end - c->pos;
  if (have == 0) c->pos = c->end = 0;
  size_t target = want > have + READ_CHUNK ? want : have + READ_CHUNK;
  if (c->cap - c->pos < target) {
    if (c->pos > 0) {
      memmove(c->buf, c->buf + c->pos, have);
      c->pos = 0;
      c->end = have;
    }
    if (c->cap < target) {
      size_t cap = c->cap ? c->cap : READ_CHUNK;
      while (cap < target && cap <= KEEP_BUF) cap *= 2;
      if (cap < target) cap = target;    /* a large frame: exactly its size */
      char *nb = realloc(c->buf, cap);
      if (nb == NULL) return ENOMEM;
      c->buf = nb;
      c->cap = cap;
    }
  }
  ssize_t r = read(c->rfd, c->buf + c->end, c->cap - c->end);
  if (r > 0) { c->end += (size_t)r; return 0; }
  if (r == 0) return MP_CONN_EOF;
  return (errno == EINTR || errno == EAGAIN) ? EAGAIN : errno;
}

/* Parses a frame header in the buffer: 1 with *hlen, *len set; 0 if incomplete. */
static int parse(mp_conn *c, size_t *hlen, uint64_t *len) {
  size_t have = c->end - c->pos;
  if (have < 4) return 0;
  uint32_t n;
  memcpy(&n, c->buf + c->pos, 4);
  if (n != 0xffffffffu) { *hlen = 4; *len = n; return 1; }
  if (have < 12) return 0;
  memcpy(len, c->buf + c->pos + 4, 8);
  *hlen = 12;
  return 1;
}

int mp_conn_frame(mp_conn *c, double deadline, const char **payload, uint64_t *len) {
  if (c->rfd < 0) return EBADF;
  if (c->pos == c->end) {
    c->pos = c->end = 0;
    if (c->cap > KEEP_BUF) { free(c->buf); c->buf = NULL; c->cap = 0; }
  }
  for (;;) {
    size_t hlen;
    uint64_t n;
    size_t want = 4;
    if (parse(c, &hlen, &n)) {
      if (c->end - c->pos - hlen >= n) {
        *payload = c->buf + c->pos + hlen;
        *len = n;
        return 0;
      }
      if (n > SIZE_MAX - hlen) return ENOMEM;
      want = hlen + (size_t)n;
    } else if (c->end - c->pos >= 4) {
      want = 12;
    }
    int rc = fill(c, want);
    if (rc == 0) continue;
    if (rc == MP_CONN_EOF || rc == ENOMEM) return rc;   /* a partial frame at EOF is lost */
    if (rc != EAGAIN) return rc;
    rc = wait_fd(c->rfd, POLLIN, deadline);
    if (rc != 0) return rc;
  }
}

void mp_conn_consume(mp_conn *c) {
  size_t hlen;
  uint64_t n;
  if (!parse(c, &hlen, &n)) return;
  /* The bytes stay where they are until the next read: the caller may still
  ** be decoding them. */
  c->pos += hlen + (size_t)n;
}

int mp_conn_poll(mp_conn *c, double deadline) {
  if (c->rfd < 0) return EBADF;
  if (c->end > c->pos) return 0;
  return wait_fd(c->rfd, POLLIN, deadline);
}

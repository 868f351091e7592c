#include <errno.h>
#include <math.h>
#include <poll.h>
#include <sched.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "clock.h"
#include "frame.h"

#define READ_CHUNK ((size_t)64 << 10)      /* room asked for before each recv */
#define KEEP_MAX ((size_t)1 << 20)         /* an empty buffer larger than this shrinks */

static void put32(char *p, uint32_t v) {
  for (int i = 0; i < 4; i++) p[i] = (char)(v >> (8 * i));
}

static uint32_t get32(const char *p) {
  const unsigned char *u = (const unsigned char *)p;
  return (uint32_t)u[0] | (uint32_t)u[1] << 8 | (uint32_t)u[2] << 16 | (uint32_t)u[3] << 24;
}

void mp_frame_header(char *p, size_t len, uint32_t seq, int kind) {
  put32(p, (uint32_t)len);
  put32(p + 4, seq);
  p[8] = (char)kind;
  p[9] = p[10] = p[11] = 0;
}

int mp_frame_parse(mp_rbuf *rb, size_t max, mp_frame *f) {
  size_t avail = rb->end - rb->start;
  if (avail < MP_FRAME_HDR) return EAGAIN;
  const char *h = rb->data + rb->start;
  size_t len = get32(h);
  if (len > max) return EMSGSIZE;
  if (avail - MP_FRAME_HDR < len) return EAGAIN;
  f->seq = get32(h + 4);
  f->kind = (unsigned char)h[8];
  f->data = h + MP_FRAME_HDR;
  f->len = len;
  return 0;
}

void mp_frame_consume(mp_rbuf *rb, const mp_frame *f) {
  rb->start += MP_FRAME_HDR + f->len;
  if (rb->start == rb->end) {
    rb->start = rb->end = 0;
    if (rb->cap > KEEP_MAX) {              /* a huge frame passed: give the memory back */
      free(rb->data);
      rb->data = NULL;
      rb->cap = 0;
    }
  }
}

/* Makes room for at least `want` more bytes after rb->end (moving or growing). */
static int reserve(mp_rbuf *rb, size_t want) {
  if (rb->cap - rb->end >= want) return 0;
  size_t used = rb->end - rb->start;
  if (rb->start > 0 && rb->cap - used >= want) {
    memmove(rb->data, rb->data + rb->start, used);
    rb->start = 0;
    rb->end = used;
    return 0;
  }
  if (want > SIZE_MAX / 2 - used) return ENOMEM;
  size_t cap = rb->cap < READ_CHUNK ? READ_CHUNK : rb->cap;
  while (cap < used + want) cap *= 2;
  char *p = malloc(cap);
  if (p == NULL) return ENOMEM;
  if (used > 0) memcpy(p, rb->data + rb->start, used);
  free(rb->data);
  rb->data = p;
  rb->cap = cap;
  rb->start = 0;
  rb->end = used;
  return 0;
}

int mp_rbuf_fill(int fd, mp_rbuf *rb) {
  /* A frame whose header is in: make room for all of it at once. */
  size_t want = READ_CHUNK, avail = rb->end - rb->start;
  if (avail >= MP_FRAME_HDR) {
    size_t total = MP_FRAME_HDR + (size_t)get32(rb->data + rb->start);
    if (total > avail && total - avail > want) want = total - avail;
  }
  int err = reserve(rb, want);
  if (err) return err;
  int got = 0;
  while (rb->end < rb->cap) {
    ssize_t n = recv(fd, rb->data + rb->end, rb->cap - rb->end, MSG_DONTWAIT);
    if (n > 0) {
      /* A short read took all there was: no second recv() just to hear EAGAIN. */
      size_t room = rb->cap - rb->end;
      rb->end += (size_t)n;
      got = 1;
      if ((size_t)n < room) return 0;
      continue;
    }
    if (n == 0) return got ? 0 : MP_FRAME_EOF;
    if (errno == EINTR) continue;
    if (errno == EAGAIN || errno == EWOULDBLOCK) return got ? 0 : EAGAIN;
    return got ? 0 : errno;
  }
  return 0;
}

void mp_rbuf_free(mp_rbuf *rb) {
  free(rb->data);
  rb->data = NULL;
  rb->cap = rb->start = rb->end = 0;
}

int mp_fd_wait(int fd, short events, double deadline) {
  int sliced;
  double end = mp_slice_end(deadline, &sliced);
  double left = end - mp_now();
  int ms = left <= 0 ? 0 : (int)ceil(left * 1000);
  struct pollfd pfd = { fd, events, 0 };
  int n = poll(&pfd, 1, ms);
  if (n < 0) return errno == EINTR ? EINTR : errno;
  if (n == 0) return sliced ? EINTR : ETIMEDOUT;
  return 0;                /* ready, or POLLHUP/POLLERR: the next read or write says which */
}

int mp_frame_recv(int fd, mp_rbuf *rb, double deadline, double spin, size_t max, mp_frame *f) {
  double spin_end = spin > 0 ? mp_now() + spin : 0;
  for (;;) {
    int rc = mp_frame_parse(rb, max, f);
    if (rc != EAGAIN) return rc;
    if (spin_end > 0) {
      /*
      ** Look again without sleeping for a while (see MP_RECV_SPIN), yielding
      ** the CPU in between to any process that shares it -- the server may.
      */
      rc = mp_rbuf_fill(fd, rb);
      if (rc == 0) continue;
      if (rc != EAGAIN) return rc;
      if (mp_now() < spin_end) { sched_yield(); continue; }
      spin_end = 0;
    }
    rc = mp_fd_wait(fd, POLLIN, deadline);
    if (rc != 0) return rc;
    rc = mp_rbuf_fill(fd, rb);
    if (rc != 0 && rc != EAGAIN) return rc;
  }
}

int mp_frame_send(int fd, const char *buf, size_t n, size_t *done, double deadline) {
  while (*done < n) {
    ssize_t w = send(fd, buf + *done, n - *done, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (w > 0) { *done += (size_t)w; continue; }
    if (w < 0 && errno == EINTR) continue;
    if (w < 0 && errno != EAGAIN && errno != EWOULDBLOCK) return errno;
    int rc = mp_fd_wait(fd, POLLOUT, deadline);
    if (rc != 0) return rc;
  }
  return 0;
}

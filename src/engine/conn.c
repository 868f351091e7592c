#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <poll.h>
#include <stdatomic.h>
#include <string.h>
#include <unistd.h>

#include "clock.h"
#include "conn.h"
#include "proc.h"

static void empty(mp_conn *c) {
  memset(c, 0, sizeof *c);
  mp_ring_empty(&c->rx);
  mp_ring_empty(&c->tx);
}

/*
** One direction: `rx` gets the ring with the doorbell's read end, `tx` a
** second mapping of it with the write end.
*/
static int direction(mp_ring *rx, mp_ring *tx) {
  int err = mp_ring_create(rx, MP_CONN_RING, 0, 0);
  if (err) return err;
  err = mp_ring_dup(rx, tx);
  if (err) { mp_ring_unmap(rx); return err; }
  tx->bell_w = rx->bell_w;
  rx->bell_w = -1;
  /* The sender's doorbell writes never block; the receiver's fd stays as made. */
  return 0;
}

/*
** The doorbells say who holds which end: a fork server (a fork of this
** process that lives on) must not hold copies of them, or a recv would never
** see end-of-file. proc.c points them at /dev/null in the server.
*/
static int hide(mp_conn *c) {
  int fds[2] = { c->rx.bell_r, c->tx.bell_w };
  for (int i = 0; i < 2; i++) {
    if (fds[i] >= 0 && mp_fork_hide_from_server(fds[i]) != 0) {
      if (i == 1 && fds[0] >= 0) mp_fork_show_to_server(fds[0]);
      return ENOMEM;
    }
  }
  c->hidden = 1;
  return 0;
}

int mp_conn_pipe(mp_conn *a, mp_conn *b, int duplex) {
  empty(a);
  empty(b);
  int err = direction(&a->rx, &b->tx);
  if (err) return err;
  if (duplex) err = direction(&b->rx, &a->tx);
  if (err == 0) err = hide(a);
  if (err == 0) err = hide(b);
  if (err) {
    mp_conn_close(a);
    mp_conn_close(b);
  }
  return err;
}

int mp_conn_adopt(mp_conn *c) {
  return hide(c);
}

void mp_conn_close(mp_conn *c) {
  if (c->sticky && c->rx.hdr != NULL) mp_ring_signalled(&c->rx, 0);
  c->sticky = 0;
  if (c->hidden) {
    if (c->rx.bell_r >= 0) mp_fork_show_to_server(c->rx.bell_r);
    if (c->tx.bell_w >= 0) mp_fork_show_to_server(c->tx.bell_w);
    c->hidden = 0;
  }
  mp_ring_unmap(&c->rx);
  mp_ring_unmap(&c->tx);
}

int mp_conn_send(mp_conn *c, const void *p, size_t n) {
  if (c->tx.hdr == NULL) return EBADF;
  int rc = mp_ring_put(&c->tx, p, n, INFINITY);
  return rc == ETIMEDOUT ? EINTR : rc;
}

/*
** Sleeps on the doorbell until a message, EOF or the end of the slice.
** Returns 0 (look again), MP_CONN_EOF, ETIMEDOUT or EINTR.
*/
static int sleep_on_bell(mp_conn *c, double deadline) {
  mp_ring *r = &c->rx;
  if (mp_ring_spin_readable(r)) return 0;
  int ready = mp_ring_poll_begin(r);   /* producers ring from now on */
  int rc = 0, hup = 0;
  if (!ready) {
    int sliced;
    double end = mp_slice_end(deadline, &sliced);
    double left = end - mp_now();
    int ms = left <= 0 ? 0 : (int)ceil(left * 1000);
    struct pollfd pfd = { r->bell_r, POLLIN, 0 };
    int n = poll(&pfd, 1, ms);
    if (n < 0) rc = errno == EINTR ? EINTR : errno;
    else if (n == 0) rc = sliced ? EINTR : ETIMEDOUT;
    else hup = (pfd.revents & POLLHUP) != 0;
  }
  mp_ring_poll_end(r, !c->sticky);
  if (rc == EINTR) mp_ring_rescue(r);              /* a sender that died mid-send */
  if (mp_ring_readable(r)) return 0;
  if (hup) return MP_CONN_EOF;                     /* published before they closed */
  return rc;
}

int mp_conn_recv_begin(mp_conn *c, double deadline, mp_ring_msg *m) {
  if (c->rx.hdr == NULL) return EBADF;
  for (;;) {
    int rc = mp_ring_get_begin(&c->rx, -INFINITY, m);
    if (rc == EBUSY) {
      /* Another process reads this end too: queue up on its lock (and then
      ** on the ring) for one slice, instead of spinning. */
      int sliced;
      rc = mp_ring_get_begin(&c->rx, mp_slice_end(deadline, &sliced), m);
      if (rc == ETIMEDOUT && sliced) rc = EINTR;
      if (rc != ETIMEDOUT) return rc;
      continue;
    }
    if (rc != ETIMEDOUT) return rc;
    rc = sleep_on_bell(c, deadline);
    if (rc != 0) {
      /* A last look: the deadline may have passed while a message came. */
      if (rc == ETIMEDOUT && mp_ring_get_begin(&c->rx, -INFINITY, m) == 0) return 0;
      return rc;
    }
  }
}

void mp_conn_recv_end(mp_conn *c, mp_ring_msg *m) {
  mp_ring_get_end(&c->rx, m);
  if (c->sticky && m->settled > 0) {
    /* Signalled mode: one doorbell byte per message sent, one taken per message. */
    char b[64];
    ssize_t n = read(c->rx.bell_r, b, m->settled < sizeof b ? m->settled : sizeof b);
    (void)n;
  }
}

int mp_conn_wait_begin(mp_conn *c) {
  return mp_ring_poll_begin(&c->rx);
}

void mp_conn_wait_end(mp_conn *c) {
  mp_ring_poll_end(&c->rx, !c->sticky);
}

int mp_conn_poll(mp_conn *c, double deadline) {
  if (c->rx.hdr == NULL) return EBADF;
  for (;;) {
    if (mp_ring_readable(&c->rx)) return 0;
    int rc = sleep_on_bell(c, deadline);
    if (rc == MP_CONN_EOF) return 0;
    if (rc != 0) return rc;
  }
}

int mp_conn_fileno(mp_conn *c) {
  if (c->rx.hdr == NULL) return c->tx.bell_w;
  if (!c->sticky) {
    c->sticky = 1;
    mp_ring_signalled(&c->rx, 1);  /* producers ring the doorbell for every message */
  }
  return c->rx.bell_r;
}

#include <errno.h>
#include <math.h>
#include <poll.h>
#include <sched.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "clock.h"
#include "identity.h"
#include "mserver.h"
#include "siphash.h"
#include "sock.h"

#define HS_MAX 256                 /* longest handshake record */
#define HS_TIMEOUT 10.0            /* seconds a new connection has to authenticate */
#define OWNER_CHECK 0.1            /* seconds between looks at the owner */
#define OUT_KEEP ((size_t)1 << 20) /* a drained output buffer above this is freed */
/*
** After a round that read requests, the server keeps polling without sleeping
** this long (yielding its CPU in between): a client that makes calls in a loop
** sends the next one within microseconds, and waking a sleeping process on
** another CPU costs more than the call itself (see MP_RECV_SPIN in frame.h).
*/
#define SERVER_SPIN 100e-6

enum { CS_AUTH, CS_READY };

typedef struct mp_srv_conn {
  int fd;
  uint32_t id;
  int state;
  int eof;                   /* nothing more will be read: hand over what is buffered, then CLOSED */
  int opened;                /* the OPEN event was handed over */
  int dead;                  /* CLOSED handed over (or never opened): to be freed */
  uint32_t pid;
  double hs_deadline;
  mp_rbuf in;
  char *out;
  size_t outlen, outoff, outcap;
  unsigned char nonce[MP_AUTH_NONCE];
  unsigned char ident[MP_AUTH_IDENT];
} mp_srv_conn;

/* Stages of a round, in the order they run. */
enum { R_POLL, R_OPEN, R_ONEWAY, R_ALL, R_CLOSED };

int mp_srv_init(mp_srv *s, int lfd, const void *key, size_t keylen, uint32_t owner) {
  memset(s, 0, sizeof *s);
  s->lfd = lfd;
  s->owner = owner;
  s->pid = mp_self_pid();
  s->next_id = 1;
  s->phase = R_POLL;
  s->key = malloc(keylen > 0 ? keylen : 1);
  if (s->key == NULL) return ENOMEM;
  memcpy(s->key, key, keylen);
  s->keylen = keylen;
  return mp_random_bytes(s->token, sizeof s->token);
}

static void free_conn(mp_srv_conn *c) {
  if (c->fd >= 0) close(c->fd);
  mp_rbuf_free(&c->in);
  free(c->out);
  free(c);
}

void mp_srv_close(mp_srv *s) {
  for (size_t i = 0; i < s->n; i++) free_conn(s->conns[i]);
  free(s->conns);
  free(s->pfds);
  s->conns = NULL;
  s->pfds = NULL;
  s->n = s->cap = 0;
  s->held = NULL;
  if (s->lfd >= 0) close(s->lfd);
  s->lfd = -1;
  if (s->key != NULL) {
    memset(s->key, 0, s->keylen);
    free(s->key);
    s->key = NULL;
  }
}

/* Writes queued output; a client that is gone gets eof. */
static void flush_conn(mp_srv_conn *c) {
  while (c->outoff < c->outlen) {
    ssize_t w = send(c->fd, c->out + c->outoff, c->outlen - c->outoff, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (w > 0) { c->outoff += (size_t)w; continue; }
    if (w < 0 && errno == EINTR) continue;
    if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return;
    c->eof = 1;                               /* EPIPE, ECONNRESET: the client is gone */
    c->outoff = c->outlen = 0;
    return;
  }
  c->outoff = c->outlen = 0;
  if (c->outcap > OUT_KEEP) {
    free(c->out);
    c->out = NULL;
    c->outcap = 0;
  }
}

/* Queues buf after what is pending; when nothing is, writes it directly first. */
static int queue_out(mp_srv_conn *c, const char *buf, size_t n) {
  if (c->eof) return ENOTCONN;
  if (c->outoff == c->outlen) {
    c->outoff = c->outlen = 0;
    while (n > 0) {
      ssize_t w = send(c->fd, buf, n, MSG_NOSIGNAL | MSG_DONTWAIT);
      if (w > 0) { buf += w; n -= (size_t)w; continue; }
      if (w < 0 && errno == EINTR) continue;
      if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) break;
      c->eof = 1;
      return ENOTCONN;
    }
    if (n == 0) return 0;
  }
  if (c->outcap - c->outlen < n) {
    size_t used = c->outlen - c->outoff;
    if (c->outoff > 0) {                      /* slide the pending bytes to the front */
      memmove(c->out, c->out + c->outoff, used);
      c->outoff = 0;
      c->outlen = used;
    }
    if (c->outcap - c->outlen < n) {
      if (n > SIZE_MAX / 2 - used) return ENOMEM;
      size_t cap = c->outcap < 4096 ? 4096 : c->outcap;
      while (cap < used + n) cap *= 2;
      char *p = realloc(c->out, cap);
      if (p == NULL) return ENOMEM;
      c->out = p;
      c->outcap = cap;
    }
  }
  memcpy(c->out + c->outlen, buf, n);
  c->outlen += n;
  return 0;
}

static mp_srv_conn *find(mp_srv *s, uint32_t id) {
  for (size_t i = 0; i < s->n; i++)
    if (s->conns[i]->id == id) return s->conns[i];
  return NULL;
}

int mp_srv_reply(mp_srv *s, uint32_t id, const char *buf, size_t n) {
  mp_srv_conn *c = find(s, id);
  if (c == NULL || c->dead || c->state != CS_READY) return ENOTCONN;
  return queue_out(c, buf, n);
}

void mp_srv_flush(mp_srv *s, double deadline) {
  for (;;) {
    size_t k = 0;
    struct pollfd *pfds = s->pfds;
    for (size_t i = 0; i < s->n; i++) {
      mp_srv_conn *c = s->conns[i];
      if (!c->eof && c->outoff < c->outlen) {
        pfds[k].fd = c->fd;
        pfds[k].events = POLLOUT;
        k++;
      }
    }
    double left = deadline - mp_now();
    if (k == 0 || left <= 0) return;
    if (poll(pfds, k, (int)ceil(left * 1000)) < 0 && errno != EINTR) return;
    for (size_t i = 0; i < s->n; i++) {
      mp_srv_conn *c = s->conns[i];
      if (!c->eof && c->outoff < c->outlen) flush_conn(c);
    }
  }
}

static int add_conn(mp_srv *s, int fd) {
  if (s->n == s->cap) {
    size_t cap = s->cap ? s->cap * 2 : 16;
    mp_srv_conn **conns = realloc(s->conns, cap * sizeof *conns);
    if (conns == NULL) return ENOMEM;
    s->conns = conns;
    struct pollfd *pfds = realloc(s->pfds, (cap + 1) * sizeof *pfds);
    if (pfds == NULL) return ENOMEM;
    s->pfds = pfds;
    s->cap = cap;
  }
  mp_srv_conn *c = calloc(1, sizeof *c);
  if (c == NULL) return ENOMEM;
  c->fd = fd;
  c->id = s->next_id++;
  c->state = CS_AUTH;
  c->hs_deadline = mp_now() + HS_TIMEOUT;
  int err = mp_random_bytes(c->nonce, sizeof c->nonce);
  char hello[MP_FRAME_HDR + MP_HELLO_LEN];
  mp_frame_header(hello, MP_HELLO_LEN, 0, MP_HS_HELLO);
  memcpy(hello + MP_FRAME_HDR, MP_AUTH_MAGIC, MP_AUTH_MAGICLEN);
  memcpy(hello + MP_FRAME_HDR + MP_AUTH_MAGICLEN, c->nonce, MP_AUTH_NONCE);
  if (err == 0) err = queue_out(c, hello, sizeof hello);
  if (err != 0) { c->fd = -1; free(c); return err; }
  s->conns[s->n++] = c;
  return 0;
}

/* The client's AUTH record: WELCOME and ready, or FAILURE and closed. */
static void authenticate(mp_srv *s, mp_srv_conn *c) {
  mp_frame f;
  int rc = mp_frame_parse(&c->in, HS_MAX, &f);
  if (rc == EAGAIN) return;
  if (rc != 0 || f.kind != MP_HS_AUTH || f.len != MP_AUTH_LEN) {
    c->eof = 1;                                     /* not our protocol */
    return;
  }
  const unsigned char *p = (const unsigned char *)f.data;
  if (!mp_auth_check(s->key, s->keylen, MP_ROLE_CLIENT, c->nonce, p)) {
    char fail[MP_FRAME_HDR];
    mp_frame_header(fail, 0, 0, MP_HS_FAILURE);
    queue_out(c, fail, sizeof fail);
    c->eof = 1;                                     /* and nothing more is read */
    return;
  }
  const unsigned char *theirs = p + MP_AUTH_DIGEST;
  memcpy(c->ident, theirs + MP_AUTH_NONCE, MP_AUTH_IDENT);
  c->pid = (uint32_t)c->ident[0] | (uint32_t)c->ident[1] << 8 |
           (uint32_t)c->ident[2] << 16 | (uint32_t)c->ident[3] << 24;
  char w[MP_FRAME_HDR + MP_WELCOME_LEN];
  unsigned char *q = (unsigned char *)w + MP_FRAME_HDR;
  mp_frame_header(w, MP_WELCOME_LEN, 0, MP_HS_WELCOME);
  mp_auth_digest(s->key, s->keylen, MP_ROLE_SERVER, theirs, q);
  for (int i = 0; i < 4; i++) q[MP_AUTH_DIGEST + i] = (unsigned char)(s->pid >> (8 * i));
  memcpy(q + MP_AUTH_DIGEST + 4, s->token, MP_AUTH_TOKEN);
  mp_frame_consume(&c->in, &f);
  if (queue_out(c, w, sizeof w) == 0) c->state = CS_READY;
}

/* Reads what a connection has; authenticates it when it is new. Returns whether bytes came. */
static int read_conn(mp_srv *s, mp_srv_conn *c) {
  if (c->eof) return 0;
  int rc = mp_rbuf_fill(c->fd, &c->in);
  if (rc != 0 && rc != EAGAIN) c->eof = 1;         /* EOF, a reset, or no memory */
  if (c->state == CS_AUTH && !c->eof) authenticate(s, c);
  return rc == 0;
}

/* Frees the connections whose end was handed over, keeping the others' order. */
static void compact(mp_srv *s) {
  size_t k = 0;
  for (size_t i = 0; i < s->n; i++) {
    mp_srv_conn *c = s->conns[i];
    if (c->dead) free_conn(c);
    else s->conns[k++] = c;
  }
  s->n = k;
}

/* One poll and the reads it allows: 0 (a round may start), ETIMEDOUT, EINTR, ORPHAN, errno. */
static int poll_round(mp_srv *s, double deadline) {
  compact(s);
  double now = mp_now();
  if (s->owner != 0 && now >= s->next_check) {
    s->next_check = now + OWNER_CHECK;
    /*
    ** Our parent is the owner, unless a fork server started us (Manager{context
    ** = "forkserver"}): then the owner is looked up by pid.
    */
    if ((uint32_t)getppid() != s->owner && mp_owner_dead(s->owner, 0)) return MP_SRV_ORPHAN;
  }
  struct pollfd *pfds = s->pfds;
  if (pfds == NULL) {                               /* no connection yet */
    if ((pfds = s->pfds = malloc(sizeof *pfds)) == NULL) return ENOMEM;
  }
  size_t base = 0;
  if (s->lfd >= 0) {
    pfds[0].fd = s->lfd;
    pfds[0].events = POLLIN;
    base = 1;
  }
  double end = deadline;
  for (size_t i = 0; i < s->n; i++) {
    mp_srv_conn *c = s->conns[i];
    pfds[base + i].fd = c->fd;
    pfds[base + i].events = (short)((c->eof ? 0 : POLLIN) | (c->outoff < c->outlen ? POLLOUT : 0));
    if (c->state == CS_AUTH && c->hs_deadline < end) end = c->hs_deadline;
  }
  int sliced;
  end = mp_slice_end(end, &sliced);
  int got;
  for (;;) {
    double left = end - now;
    int spinning = now < s->spin_until && now < end;
    int ms = spinning || left <= 0 ? 0 : (int)ceil(left * 1000);
    got = poll(pfds, base + s->n, ms);
    if (got < 0) return errno == EINTR ? EINTR : errno;
    now = mp_now();
    if (got > 0 || !spinning) break;
    sched_yield();
  }
  for (size_t i = 0; i < s->n; i++) {               /* slow handshakes are dropped */
    mp_srv_conn *c = s->conns[i];
    if (c->state == CS_AUTH && now >= c->hs_deadline) c->eof = 1;
  }
  if (got == 0) {
    s->spin_until = 0;
    if (now >= deadline) return ETIMEDOUT;
    return EINTR;                                   /* a slice or handshake deadline ended */
  }
  size_t n = s->n;                                  /* connections accepted below are read next round */
  if (base && (pfds[0].revents & POLLIN)) {
    int fd;
    while (mp_sock_accept(s->lfd, &fd) == 0) {
      if (add_conn(s, fd) != 0) { close(fd); break; }
    }
  }
  pfds = s->pfds;                                   /* add_conn may have moved it */
  int ready = 0, any = 0;
  for (size_t i = 0; i < n; i++) {
    mp_srv_conn *c = s->conns[i];
    if (c->state == CS_READY && !c->eof) ready++;
    short re = pfds[base + i].revents;
    if (re & POLLOUT) flush_conn(c);
    if (re & (POLLIN | POLLHUP | POLLERR)) any |= read_conn(s, c);
  }
  if (any) s->spin_until = now + SERVER_SPIN;
  /* The second, non-blocking look (see mserver.h): only when several clients may race. */
  if (any && ready > 1) {
    for (size_t i = 0; i < n; i++) {
      pfds[i].fd = s->conns[i]->eof ? -1 : s->conns[i]->fd;
      pfds[i].events = POLLIN;
      pfds[i].revents = 0;
    }
    if (poll(pfds, n, 0) > 0) {
      for (size_t i = 0; i < n; i++)
        if (pfds[i].revents & (POLLIN | POLLHUP | POLLERR)) read_conn(s, s->conns[i]);
    }
  }
  return 0;
}

static void pong(mp_srv_conn *c, const mp_frame *f) {
  char h[MP_FRAME_HDR];
  mp_frame_header(h, 0, f->seq, MP_REP_PONG);
  queue_out(c, h, sizeof h);
}

/*
** The next frame of c to hand over (only one-way ones when oneway is set):
** 1 with *f, or 0 when there is none. Pings are answered on the way; a frame
** that is too large or of a kind a client never sends ends the connection.
*/
static int next_frame(mp_srv_conn *c, int oneway, mp_frame *f) {
  for (;;) {
    if (c->state != CS_READY || c->dead) return 0;
    int rc = mp_frame_parse(&c->in, MP_FRAME_MAX, f);
    if (rc == EAGAIN) return 0;
    if (rc != 0 || (f->kind != MP_REQ_CALL && f->kind != MP_REQ_SEND && f->kind != MP_REQ_PING)) {
      c->eof = 1;
      c->in.start = c->in.end = 0;
      return 0;
    }
    if (f->kind == MP_REQ_PING) {
      pong(c, f);
      mp_frame_consume(&c->in, f);
      continue;
    }
    if (oneway && f->kind != MP_REQ_SEND) return 0;
    return 1;
  }
}

int mp_srv_next(mp_srv *s, double deadline, mp_srv_event *ev) {
  if (s->held != NULL) {
    mp_frame_consume(&s->held->in, &s->heldf);
    s->held = NULL;
  }
  for (;;) {
    switch (s->phase) {
      case R_POLL: {
        int rc = poll_round(s, deadline);
        if (rc != 0) return rc;
        s->phase = R_OPEN;
        s->cursor = 0;
        break;
      }
      case R_OPEN:
        for (; s->cursor < s->n; s->cursor++) {
          mp_srv_conn *c = s->conns[s->cursor];
          if (c->state == CS_READY && !c->opened) {
            c->opened = 1;
            ev->type = MP_SRV_OPEN;
            ev->id = c->id;
            ev->pid = c->pid;
            ev->ident = c->ident;
            s->cursor++;
            return 0;
          }
        }
        s->phase = R_ONEWAY;
        s->cursor = 0;
        break;
      case R_ONEWAY:
      case R_ALL:
        for (; s->cursor < s->n; s->cursor++) {
          mp_srv_conn *c = s->conns[s->cursor];
          if (next_frame(c, s->phase == R_ONEWAY, &ev->f)) {
            ev->type = MP_SRV_MSG;
            ev->id = c->id;
            s->held = c;
            s->heldf = ev->f;
            return 0;                               /* the cursor stays: more may follow */
          }
        }
        s->phase = s->phase == R_ONEWAY ? R_ALL : R_CLOSED;
        s->cursor = 0;
        break;
      default:                                      /* R_CLOSED */
        for (; s->cursor < s->n; s->cursor++) {
          mp_srv_conn *c = s->conns[s->cursor];
          if (!c->eof || c->dead) continue;
          c->dead = 1;
          if (c->opened) {
            ev->type = MP_SRV_CLOSED;
            ev->id = c->id;
            s->cursor++;
            return 0;
          }
        }
        s->phase = R_POLL;
        break;
    }
  }
}

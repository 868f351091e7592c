#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdalign.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <poll.h>
#include <sys/mman.h>
#include <unistd.h>

#include "futex.h"
#include "nosigpipe.h"
#include "olock.h"
#include "ring.h"

#define RING_MAGIC 0x6d707267u   /* "mprg" */
#define RING_VERSION 1
#define HDR_BYTES 4096           /* the data area starts on a page */
#define REC_HDR 8                /* a record: 8-byte length, payload, pad to 8 */
#define PUNCH ((uint64_t)2 << 20)   /* consumed memory goes back to the kernel in 2 MiB steps */
#define HOT ((uint64_t)1 << 20)     /* a producer that is not ahead wraps back after this */
#define SKIP_MARK UINT64_MAX        /* record header: go on at the start of the area */

/*
** The shared header. Each side's fields share a cache line with its lock and
** only that side writes them, so producers and consumers do not bounce lines
** except to read the other side's position.
*/
struct mp_ring_hdr {
  uint32_t magic, version;
  uint64_t cap, maxsize;
  int joinable;

  /*
  ** One cache line per writer and purpose: a side's lock and private fields
  ** stay in its own cache while the other side reads what it publishes, so
  ** taking a lock never waits for a line the other side just read.
  */
  alignas(64) mp_olock wlock;           /* producers, private */
  _Atomic uint64_t nput;                /* records put (qsize = nput - nget) */
  uint64_t head_seen;                   /* the head when producers last looked */
  uint64_t nget_seen;                   /* nget then (for maxsize) */

  alignas(64) _Atomic uint64_t tail;    /* published by producers: end of the records */

  alignas(64) mp_olock rlock;           /* consumers, private */
  uint64_t rd_end;                      /* end of a streamed record being taken */
  uint64_t tail_seen;                   /* the tail when consumers last looked */
  uint64_t punched;                     /* memory before this was given back (2 MiB aligned) */
  _Atomic uint64_t ndone;               /* JoinableQueue: task_done calls (unfinished = nput - ndone) */

  alignas(64) _Atomic uint64_t head;    /* published by consumers: start of the next record */
  _Atomic uint64_t nget;

  /*
  ** Sleeping and waking: written only when somebody sleeps, so the other
  ** side's per-message look at these flags hits a clean cache line.
  */
  alignas(64) _Atomic uint32_t space_seq;   /* futex: bumped when a waiting producer may go on */
  _Atomic uint32_t writer_waiting;          /* the wlock holder sleeps for room */
  _Atomic uint32_t data_seq;                /* futex: bumped when a waiting consumer may go on */
  _Atomic uint32_t reader_waiting;          /* the rlock holder sleeps for data */
  _Atomic uint32_t join_seq;
  _Atomic uint32_t join_waiters;
  _Atomic uint32_t pollers;                 /* processes in mp.wait on this ring */
  _Atomic uint32_t bell_rung;               /* the doorbell was written since a poller looked */
  _Atomic uint32_t signalled;               /* receivers that handed out their fd (conn.h) */
};

static inline uint64_t rec_size(uint64_t len) { return REC_HDR + ((len + 7) & ~(uint64_t)7); }

int mp_ring_create(mp_ring *r, size_t cap, uint64_t maxsize, int joinable) {
  r->hdr = NULL; r->data = NULL; r->refs = NULL; r->bell_r = r->bell_w = -1;
  if (cap < 4096 || (cap & (cap - 1)) != 0) return EINVAL;
  int *refs = malloc(sizeof *refs);
  if (refs == NULL) return ENOMEM;
  *refs = 1;
  int fds[2];
  if (pipe2(fds, O_CLOEXEC | O_NONBLOCK) != 0) { free(refs); return errno; }
  void *p = MAP_FAILED;
  /* Reserve, do not commit: pages are allocated when written. */
  for (; cap >= 4096; cap >>= 1) {
    p = mmap(NULL, HDR_BYTES + cap, PROT_READ | PROT_WRITE,
             MAP_SHARED | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (p != MAP_FAILED) break;
  }
  if (p == MAP_FAILED) {
    int err = errno;
    close(fds[0]); close(fds[1]);
    free(refs);
    return err;
  }
  mp_ring_hdr *h = p;   /* zero-filled by mmap */
  h->magic = RING_MAGIC;
  h->version = RING_VERSION;
  h->cap = cap;
  h->maxsize = maxsize;
  h->joinable = joinable;
  r->hdr = h;
  r->refs = refs;
  r->data = (char *)p + HDR_BYTES;
  r->cap = cap;
  r->map_len = HDR_BYTES + cap;
  r->bell_r = fds[0];
  r->bell_w = fds[1];
  return 0;
}

int mp_ring_dup(const mp_ring *r, mp_ring *out) {
  *out = *r;
  (*r->refs)++;
  out->bell_r = out->bell_w = -1;
  return 0;
}

/*
** For a pipe's sending handle (it holds the doorbell's write end only):
** whether every copy of the read end, in every process, is closed.
*/
static int peer_gone(mp_ring *r) {
  if (r->bell_r >= 0 || r->bell_w < 0) return 0;
  struct pollfd pfd = { r->bell_w, POLLOUT, 0 };
  return poll(&pfd, 1, 0) > 0 && (pfd.revents & POLLERR);
}

/* For a pipe's receiving handle: whether every copy of the write end is closed. */
static int writers_gone(mp_ring *r) {
  if (r->bell_w >= 0 || r->bell_r < 0) return 0;
  struct pollfd pfd = { r->bell_r, POLLIN, 0 };
  return poll(&pfd, 1, 0) > 0 && (pfd.revents & POLLHUP);
}

void mp_ring_unmap(mp_ring *r) {
  if (r->hdr != NULL) {
    if (--*r->refs == 0) {
      munmap(r->hdr, r->map_len);
      free(r->refs);
    }
    r->hdr = NULL;
    r->data = NULL;
    r->refs = NULL;
  }
  if (r->bell_r >= 0) { close(r->bell_r); r->bell_r = -1; }
  if (r->bell_w >= 0) { close(r->bell_w); r->bell_w = -1; }
}

static void copy_in(mp_ring *r, uint64_t pos, const char *src, size_t n) {
  size_t off = (size_t)(pos & (r->cap - 1));
  size_t first = r->cap - off < n ? r->cap - off : n;
  memcpy(r->data + off, src, first);
  if (n > first) memcpy(r->data, src + first, n - first);
}

static void copy_out(mp_ring *r, uint64_t pos, char *dst, size_t n) {
  size_t off = (size_t)(pos & (r->cap - 1));
  size_t first = r->cap - off < n ? r->cap - off : n;
  memcpy(dst, r->data + off, first);
  if (n > first) memcpy(dst + first, r->data, n - first);
}

/*
** Gives consumed memory back to the kernel, 2 MiB at a time, from the
** consumers' watermark up to `upto` (a published head). A producer may
** already write the next lap's image of a consumed stretch (positions up to
** head + cap are free to it), so this runs holding the producers' lock, and a
** stretch whose image the tail has reached is left alone: it is in use again.
** Only tried, never waited for: if producers hold their lock, the next
** crossing of a 2 MiB boundary tries again. The first stretch is the hot zone,
** reused lap after lap: it stays. Small rings stay resident whole.
*/
static void release_consumed(mp_ring *r, uint64_t upto) {
  mp_ring_hdr *h = r->hdr;
  if (r->cap < 2 * PUNCH) return;
  uint64_t end = upto & ~(PUNCH - 1);
  if (end <= h->punched) return;
  int rc = mp_olock_try(&h->wlock);
  if (rc == EBUSY) return;
  if (rc == EOWNERDEAD) atomic_store(&h->writer_waiting, 0);
  uint64_t tail = atomic_load(&h->tail);
  for (uint64_t c = h->punched; c < end; c += PUNCH) {
    if ((c & (r->cap - 1)) != 0 && tail <= c + r->cap)
      madvise(r->data + (c & (r->cap - 1)), PUNCH, MADV_REMOVE);
  }
  h->punched = end;
  mp_olock_release(&h->wlock);
}

/* Moves the head to `to`: publishes, wakes a waiting producer, frees consumed memory. */
static void advance_head(mp_ring *r, uint64_t from, uint64_t to) {
  mp_ring_hdr *h = r->hdr;
  (void)from;
  atomic_store(&h->head, to);
  if (atomic_load(&h->writer_waiting) && atomic_exchange(&h->writer_waiting, 0)) {
    atomic_fetch_add(&h->space_seq, 1);
    mp_futex_wake(&h->space_seq, 1);
  }
  if ((to & ~(PUNCH - 1)) > h->punched) release_consumed(r, to);
}

/* Publishes the tail, wakes a sleeping consumer and rings the doorbell for pollers. */
static void publish_tail(mp_ring *r, uint64_t to) {
  mp_ring_hdr *h = r->hdr;
  atomic_store(&h->tail, to);
  /* The waker clears the flag: one wake-up per sleep, not one per message
  ** while the sleeper is still being scheduled. */
  if (atomic_load(&h->reader_waiting) && atomic_exchange(&h->reader_waiting, 0)) {
    atomic_fetch_add(&h->data_seq, 1);
    mp_futex_wake(&h->data_seq, 1);
  }
  /* Ring once for the pollers (they clear bell_rung before looking), or
  ** once per message for a receiver in signalled mode. */
  if (r->bell_w >= 0 && (atomic_load(&h->pollers) || atomic_load(&h->signalled))) {
    if (atomic_load(&h->signalled) || !atomic_exchange(&h->bell_rung, 1)) {
      /* A full doorbell is already ringing; a reader gone is found by peer_gone. */
      ssize_t n = mp_write_nosigpipe(r->bell_w, "", 1);
      (void)n;
    }
  }
}

/*
** Before sleeping, watch the other side for a few microseconds: a consumer
** that keeps up with its producer finds the ring empty after nearly every
** message, and a futex sleep and wake-up per message would cost far more
** than the message itself.
*/
#define SPIN_ROUNDS 1000   /* about 50 us here (a pause is ~50 ns) */

/* Whether a producer holding wlock may write a record of `total` bytes now. */
static int room_for(mp_ring *r, uint64_t total) {
  mp_ring_hdr *h = r->hdr;
  if (h->maxsize != 0) {
    uint64_t put = atomic_load_explicit(&h->nput, memory_order_relaxed);
    if (put - h->nget_seen >= h->maxsize) {
      h->nget_seen = atomic_load_explicit(&h->nget, memory_order_relaxed);
      if (put - h->nget_seen >= h->maxsize) return 0;
    }
  }
  uint64_t need = total <= r->cap ? total : REC_HDR;
  uint64_t tail = atomic_load_explicit(&h->tail, memory_order_relaxed);
  /* The consumers' line is read only when the last look is not enough. */
  uint64_t used = tail - h->head_seen;
  if (used <= r->cap && r->cap - used >= need) return 1;
  h->head_seen = atomic_load_explicit(&h->head, memory_order_acquire);
  return r->cap - (tail - h->head_seen) >= need;
}

/* The wlock holder sleeps until a consumer made progress. 0, ETIMEDOUT, EINTR. */
static int wait_space(mp_ring *r, uint64_t total, double deadline) {
  mp_ring_hdr *h = r->hdr;
  if (deadline > -INFINITY) {
    for (int i = 0; i < SPIN_ROUNDS; i++) {
      cpu_relax();
      if (room_for(r, total)) return 0;
    }
  }
  atomic_store(&h->writer_waiting, 1);
  uint32_t seq = atomic_load(&h->space_seq);
  int rc = 0;
  if (!room_for(r, total)) rc = mp_futex_wait(&h->space_seq, seq, deadline);
  atomic_store(&h->writer_waiting, 0);
  return rc;
}

/* The rlock holder sleeps until the tail moves past `seen`. 0, ETIMEDOUT, EINTR. */
static int wait_data(mp_ring *r, uint64_t seen, double deadline) {
  mp_ring_hdr *h = r->hdr;
  if (deadline > -INFINITY) {
    for (int i = 0; i < SPIN_ROUNDS; i++) {
      cpu_relax();
      if (atomic_load_explicit(&h->tail, memory_order_relaxed) != seen) return 0;
    }
  }
  atomic_store(&h->reader_waiting, 1);
  uint32_t seq = atomic_load(&h->data_seq);
  int rc = 0;
  if (atomic_load(&h->tail) == seen) rc = mp_futex_wait(&h->data_seq, seq, deadline);
  atomic_store(&h->reader_waiting, 0);
  return rc;
}

/* A record larger than the ring: header, then the payload as room appears. */
static int put_stream(mp_ring *r, const char *data, size_t len) {
  mp_ring_hdr *h = r->hdr;
  uint64_t tail = atomic_load_explicit(&h->tail, memory_order_relaxed);
  uint64_t end = tail + rec_size(len);
  uint64_t hdr = len;
  copy_in(r, tail, (const char *)&hdr, REC_HDR);
  atomic_store_explicit(&h->nput, atomic_load_explicit(&h->nput, memory_order_relaxed) + 1,
                        memory_order_relaxed);
  tail += REC_HDR;
  publish_tail(r, tail);
  uint64_t payload_end = tail + len;
  while (tail < end) {
    h->head_seen = atomic_load_explicit(&h->head, memory_order_acquire);
    uint64_t room = r->cap - (tail - h->head_seen);
    if (room == 0) {
      /* Slices end with EINTR: go on, unless nobody can read this any more. */
      if (wait_space(r, REC_HDR, INFINITY) == EINTR && peer_gone(r)) return EPIPE;
      continue;
    }
    uint64_t n = end - tail < room ? end - tail : room;
    if (tail < payload_end) {
      uint64_t m = payload_end - tail < n ? payload_end - tail : n;
      copy_in(r, tail, data + (len - (payload_end - tail)), (size_t)m);
    }
    tail += n;
    publish_tail(r, tail);
  }
  return 0;
}

int mp_ring_put(mp_ring *r, const void *data, size_t len, double deadline) {
  mp_ring_hdr *h = r->hdr;
  uint64_t total = rec_size(len);
  int rc = mp_olock_acquire(&h->wlock, deadline);
  if (rc == EOWNERDEAD) atomic_store(&h->writer_waiting, 0);   /* the dead one's flag */
  else if (rc != 0) return rc;
  rc = 0;
  /* A pipe whose reader is gone: EPIPE, checked when the ring is full and
  ** every quarter of the ring, not per message. */
  uint64_t tail0 = atomic_load_explicit(&h->tail, memory_order_relaxed);
  if (r->bell_r < 0 && r->bell_w >= 0 && (tail0 ^ (tail0 + total)) >= r->cap / 4 && peer_gone(r)) {
    mp_olock_release(&h->wlock);
    return EPIPE;
  }
  while (!room_for(r, total)) {
    rc = wait_space(r, total, deadline);
    if (rc != 0 && peer_gone(r)) rc = EPIPE;
    if (rc != 0) {
      mp_olock_release(&h->wlock);
      return rc;
    }
  }
  if (total > r->cap) {
    rc = put_stream(r, data, len);
  } else {
    uint64_t tail = atomic_load_explicit(&h->tail, memory_order_relaxed);
    uint64_t off = tail & (r->cap - 1);
    if (r->cap > 2 * HOT && off >= HOT && total <= HOT) {
      /*
      ** Wrap early when the consumers keep up: writing on into the reserved
      ** area would touch a fresh page every 4 KiB (a page fault each, and
      ** cold cache lines). Allowed when everything unconsumed plus this
      ** record fits before `off`, which is what the skipped bytes need.
      */
      if (tail - h->head_seen + total > off)
        h->head_seen = atomic_load_explicit(&h->head, memory_order_acquire);
      if (tail - h->head_seen + total <= off) {
        uint64_t mark = SKIP_MARK;
        copy_in(r, tail, (const char *)&mark, REC_HDR);
        tail += r->cap - off;
      }
    }
    uint64_t hdr = len;
    copy_in(r, tail, (const char *)&hdr, REC_HDR);
    copy_in(r, tail + REC_HDR, data, len);
    atomic_store_explicit(&h->nput, atomic_load_explicit(&h->nput, memory_order_relaxed) + 1,
                          memory_order_relaxed);
    publish_tail(r, tail + total);
  }
  mp_olock_release(&h->wlock);
  return rc;
}

static void count_get(mp_ring_hdr *h) {
  atomic_store_explicit(&h->nget, atomic_load_explicit(&h->nget, memory_order_relaxed) + 1,
                        memory_order_relaxed);
}

int mp_ring_get_begin(mp_ring *r, double deadline, mp_ring_msg *m) {
  mp_ring_hdr *h = r->hdr;
  int rc = mp_olock_acquire(&h->rlock, deadline);
  if (rc == EOWNERDEAD) {
    /* The previous consumer died holding the lock. Its flag goes; a streamed
    ** record it was taking is lost with it and is skipped below. */
    atomic_store(&h->reader_waiting, 0);
    if (h->rd_end > atomic_load(&h->head)) count_get(h);
  } else if (rc == ETIMEDOUT && deadline == -INFINITY) {
    return EBUSY;                      /* another consumer holds the lock */
  } else if (rc != 0) {
    return rc;
  }
  for (;;) {
    uint64_t head = atomic_load_explicit(&h->head, memory_order_relaxed);
    /* The producers' line is read only when the last look is used up. */
    uint64_t tail = h->tail_seen;
    if (tail < head + REC_HDR || head < h->rd_end)
      tail = h->tail_seen = atomic_load_explicit(&h->tail, memory_order_acquire);
    if (head < h->rd_end) {
      if (tail > head) {
        advance_head(r, head, tail < h->rd_end ? tail : h->rd_end);
        continue;
      }
    } else if (tail - head >= REC_HDR) {
      uint64_t len;
      copy_out(r, head, (char *)&len, REC_HDR);
      if (len == SKIP_MARK) {
        /* The producer wrapped early: nothing was written after the mark. */
        uint64_t next = (head | (r->cap - 1)) + 1;
        release_consumed(r, head);        /* what this lap's walk consumed */
        h->punched = next;                /* the skipped rest was not written */
        advance_head(r, next, next);
        continue;
      }
      uint64_t total = rec_size(len);
      m->len = len;
      m->streamed = total > r->cap;
      if (m->streamed) {
        h->rd_end = head + total;   /* before the head moves: a successor skips the rest */
        advance_head(r, head, head + REC_HDR);
        m->p1 = m->p2 = NULL;
        m->n1 = m->n2 = 0;
        return 0;
      }
      size_t off = (size_t)((head + REC_HDR) & (r->cap - 1));
      m->p1 = r->data + off;
      m->n1 = r->cap - off < len ? r->cap - off : (size_t)len;
      m->p2 = r->data;
      m->n2 = (size_t)len - m->n1;
      return 0;
    }
    rc = wait_data(r, tail, deadline);
    if (rc != 0 && rc != EAGAIN) {
      mp_olock_release(&h->rlock);
      return rc;
    }
  }
}

int mp_ring_read_stream(mp_ring *r, mp_ring_msg *m, char *dst) {
  mp_ring_hdr *h = r->hdr;
  uint64_t head = atomic_load_explicit(&h->head, memory_order_relaxed);
  uint64_t payload_end = head + m->len;
  uint64_t start = head;
  while (head < h->rd_end) {
    uint64_t tail = h->tail_seen = atomic_load_explicit(&h->tail, memory_order_acquire);
    if (tail == head) {
      /* A pipe whose writers are all gone will not finish this record. */
      if (wait_data(r, tail, INFINITY) == EINTR && writers_gone(r) &&
          atomic_load(&h->tail) == tail) return EPIPE;
      continue;
    }
    uint64_t to = tail < h->rd_end ? tail : h->rd_end;
    if (dst != NULL && head < payload_end) {
      uint64_t n = (to < payload_end ? to : payload_end) - head;
      copy_out(r, head, dst + (head - start), (size_t)n);
    }
    advance_head(r, head, to);
    head = to;
  }
  return 0;
}

void mp_ring_get_end(mp_ring *r, mp_ring_msg *m) {
  mp_ring_hdr *h = r->hdr;
  if (!m->streamed) {
    uint64_t head = atomic_load_explicit(&h->head, memory_order_relaxed);
    count_get(h);
    advance_head(r, head, head + rec_size(m->len));
  } else {
    count_get(h);
  }
  mp_olock_release(&h->rlock);
}

uint64_t mp_ring_count(mp_ring *r) {
  mp_ring_hdr *h = r->hdr;
  uint64_t got = atomic_load(&h->nget);
  uint64_t put = atomic_load(&h->nput);
  return put > got ? put - got : 0;
}

uint64_t mp_ring_maxsize(mp_ring *r) { return r->hdr->maxsize; }

int mp_ring_spin_readable(mp_ring *r) {
  for (int i = 0; i < SPIN_ROUNDS; i++) {
    cpu_relax();
    if (mp_ring_readable(r)) return 1;
  }
  return 0;
}

int mp_ring_readable(mp_ring *r) {
  mp_ring_hdr *h = r->hdr;
  return atomic_load(&h->tail) != atomic_load(&h->head);
}

int mp_ring_poll_begin(mp_ring *r) {
  atomic_fetch_add(&r->hdr->pollers, 1);
  atomic_store(&r->hdr->bell_rung, 0);
  return mp_ring_readable(r);
}

void mp_ring_signalled(mp_ring *r, int on) {
  if (on) atomic_fetch_add(&r->hdr->signalled, 1);
  else atomic_fetch_sub(&r->hdr->signalled, 1);
}

void mp_ring_poll_end(mp_ring *r, int drain) {
  atomic_fetch_sub(&r->hdr->pollers, 1);
  char buf[64];
  while (drain && read(r->bell_r, buf, sizeof buf) > 0) {}
}

int mp_ring_task_done(mp_ring *r) {
  mp_ring_hdr *h = r->hdr;
  uint64_t v = atomic_load(&h->ndone);
  do {
    /* Items taken (this line) bound the common case; items put (the
    ** producers' line, a cache miss) only when that is not enough. */
    if (v >= atomic_load_explicit(&h->nget, memory_order_relaxed) && v >= atomic_load(&h->nput))
      return ERANGE;
  } while (!atomic_compare_exchange_weak(&h->ndone, &v, v + 1));
  if (atomic_load(&h->join_waiters) && v + 1 >= atomic_load(&h->nput)) {
    atomic_fetch_add(&h->join_seq, 1);
    mp_futex_wake(&h->join_seq, INT32_MAX);
  }
  return 0;
}

static int all_done(mp_ring_hdr *h) {
  return atomic_load(&h->ndone) >= atomic_load(&h->nput);
}

int mp_ring_join(mp_ring *r, double deadline) {
  mp_ring_hdr *h = r->hdr;
  for (;;) {
    if (all_done(h)) return 0;
    atomic_fetch_add(&h->join_waiters, 1);
    uint32_t seq = atomic_load(&h->join_seq);
    int rc = 0;
    if (!all_done(h)) rc = mp_futex_wait(&h->join_seq, seq, deadline);
    atomic_fetch_sub(&h->join_waiters, 1);
    if (rc != 0) return rc;
  }
}

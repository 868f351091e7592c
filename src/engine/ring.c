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
#include <sys/stat.h>
#include <unistd.h>

#include "fault.h"
#include "futex.h"
#include "nosigpipe.h"
#include "olock.h"
#include "ring.h"

#define RING_MAGIC 0x6d707267u   /* "mprg" */
#define RING_VERSION 3
#define HDR_BYTES 4096           /* the data area starts on a page */
#define PUNCH ((uint64_t)2 << 20)   /* consumed memory goes back to the kernel in 2 MiB steps */
#define HOT ((uint64_t)1 << 20)     /* a producer that is not ahead wraps back after this */
#define WRAP_LAG (HOT / 16)          /* ...when its consumers are at most this far behind */
#define PAGE_GRAIN 4096              /* the smallest page: where writing on may fault */

/*
** Records. A record is an 8-byte header word, its payload, and padding to 8
** bytes. The header's top byte is the record's kind, the low 56 bits the
** payload's length:
**   WHOLE  a message (the common case: kind 0, so the word is the length);
**   FIRST  the first chunk of a message larger than the ring: the payload is
**          the message's total length (8 bytes), then its first bytes;
**   MORE   a middle chunk of that message;
**   LAST   the chunk that completes it;
**   SKIP   (all ones) nothing more this lap: go on at the start of the area;
**   JUMP   nothing more here: go on at the offset in the low bits, in this
**          lap (see jump_target: a producer that wrapped early, and whose
**          consumers had not passed the wrap, continues in the part of the
**          area that the wrap left unwritten).
** A producer copies a whole record and then publishes it with one store of the
** tail, so a consumer never sees a partial record. A message larger than the
** ring travels as FIRST, MORE..., LAST while its producer holds the producers'
** lock, so the chunks of two messages never interleave.
*/
#define REC_HDR 8
#define K_WHOLE 0x00u
#define K_FIRST 0x01u
#define K_MORE 0x02u
#define K_LAST 0x03u
#define K_JUMP 0x04u
#define K_SKIP 0xffu
#define SKIP_MARK UINT64_MAX
#define LEN_MASK (((uint64_t)1 << 56) - 1)

static inline uint64_t rec_word(unsigned kind, uint64_t n) { return ((uint64_t)kind << 56) | n; }
static inline unsigned rec_kind(uint64_t w) { return (unsigned)(w >> 56); }
static inline uint64_t rec_len(uint64_t w) { return w & LEN_MASK; }

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
  _Atomic uint64_t nput;                /* messages put (qsize = nput - nget) */
  uint64_t head_seen;                   /* the head when producers last looked */
  uint64_t nget_seen;                   /* nget then (for maxsize) */
  _Atomic uint32_t w_pending;           /* the journal below is being applied */
  uint64_t w_jtail, w_jnput;            /* journal: the tail and nput a put publishes */
  uint64_t skip_at;                     /* where the last early wrap's SKIP is (0: none) */
  uint64_t room_end;                    /* positions below this may be written whatever the
                                           head (set by a JUMP; 0: none) */
  uint64_t w_jskip, w_jroom;            /* journal: skip_at and room_end as the put leaves them */

  alignas(64) _Atomic uint64_t tail;    /* published by producers: end of the records */

  alignas(64) mp_olock rlock;           /* consumers, private */
  uint64_t tail_seen;                   /* the tail when consumers last looked */
  uint64_t punched;                     /* memory before this was given back (2 MiB aligned) */
  _Atomic uint32_t r_pending;           /* the journal below is being applied */
  uint64_t r_jhead, r_jnget;            /* journal: the head and nget a get publishes */
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

/*
** The mapping is a memfd rather than anonymous shared memory: the same shmem
** pages, so nothing on the fast paths changes, but an fd can carry it to a
** process that did not inherit it (mp_ring_export, SCM_RIGHTS). The fd is
** kept with the mapping (shared by the handles of one process, like refs).
*/
static void *map_ring(int fd, size_t len) {
  void *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_NORESERVE, fd, 0);
  return p == MAP_FAILED ? NULL : p;
}

int mp_ring_create(mp_ring *r, size_t cap, uint64_t maxsize, int joinable) {
  mp_ring_empty(r);
  if (cap < 4096 || (cap & (cap - 1)) != 0) return EINVAL;
  int *refs = malloc(sizeof *refs);
  if (refs == NULL) return ENOMEM;
  *refs = 1;
  int fds[2];
  if (pipe2(fds, O_CLOEXEC | O_NONBLOCK) != 0) { free(refs); return errno; }
  int memfd = memfd_create("mp-ring", MFD_CLOEXEC);
  void *p = NULL;
  int err = errno;
  /* Reserve, do not commit: the file is sparse, pages are allocated when written. */
  for (; memfd >= 0 && cap >= 4096; cap >>= 1) {
    if (ftruncate(memfd, (off_t)(HDR_BYTES + cap)) == 0 &&
        (p = map_ring(memfd, HDR_BYTES + cap)) != NULL) break;
    err = errno;
  }
  if (p == NULL) {
    if (memfd >= 0) close(memfd);
    close(fds[0]); close(fds[1]);
    free(refs);
    return err;
  }
  mp_ring_hdr *h = p;   /* zero-filled: a new file */
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
  r->memfd = memfd;
  r->bell_r = fds[0];
  r->bell_w = fds[1];
  return 0;
}

int mp_ring_export(const mp_ring *r, int *memfd, size_t *map_len) {
  if (r->hdr == NULL || r->memfd < 0) return EBADF;
  *memfd = r->memfd;
  *map_len = r->map_len;
  return 0;
}

/*
** The descriptor comes from another process and is not trusted: the file
** must be as long as the mapping (else an access past its end is a SIGBUS),
** and the header must be a ring's, of the capacity the length implies.
*/
int mp_ring_attach(mp_ring *r, int memfd, size_t map_len, int bell_r, int bell_w) {
  mp_ring_empty(r);
  r->memfd = memfd; r->bell_r = bell_r; r->bell_w = bell_w;
  struct stat st;
  int err = EINVAL;
  if (map_len <= HDR_BYTES || fstat(memfd, &st) != 0 || !S_ISREG(st.st_mode) ||
      (uint64_t)st.st_size < map_len) goto fail;
  size_t cap = map_len - HDR_BYTES;
  if (cap < 4096 || (cap & (cap - 1)) != 0) goto fail;
  int *refs = malloc(sizeof *refs);
  if (refs == NULL) { err = ENOMEM; goto fail; }
  mp_ring_hdr *h = map_ring(memfd, map_len);
  if (h == NULL) { err = errno; free(refs); goto fail; }
  if (h->magic != RING_MAGIC || h->version != RING_VERSION || h->cap != cap) {
    munmap(h, map_len);
    free(refs);
    goto fail;
  }
  *refs = 1;
  r->hdr = h;
  r->refs = refs;
  r->data = (char *)h + HDR_BYTES;
  r->cap = cap;
  r->map_len = map_len;
  return 0;
fail:
  mp_ring_unmap(r);
  return err;
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
      if (r->memfd >= 0) close(r->memfd);
    }
    r->hdr = NULL;
    r->data = NULL;
    r->refs = NULL;
  } else if (r->memfd >= 0) {
    close(r->memfd);                /* attached to nothing: this handle's own */
  }
  r->memfd = -1;
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
static void repair_producers(mp_ring *r);

static void release_consumed(mp_ring *r, uint64_t upto) {
  mp_ring_hdr *h = r->hdr;
  if (r->cap < 2 * PUNCH) return;
  uint64_t end = upto & ~(PUNCH - 1);
  if (end <= h->punched) return;
  int rc = mp_olock_try(&h->wlock);
  if (rc == EBUSY) return;
  if (rc == EOWNERDEAD) repair_producers(r);
  uint64_t tail = atomic_load(&h->tail);
  for (uint64_t c = h->punched; c < end; c += PUNCH) {
    if ((c & (r->cap - 1)) != 0 && tail <= c + r->cap)
      madvise(r->data + (c & (r->cap - 1)), PUNCH, MADV_REMOVE);
  }
  h->punched = end;
  mp_olock_release(&h->wlock);
}

/* Moves the head to `to`: publishes, wakes a waiting producer, frees consumed memory. */
static void advance_head(mp_ring *r, uint64_t to) {
  mp_ring_hdr *h = r->hdr;
  atomic_store(&h->head, to);
  if (atomic_load(&h->writer_waiting) && atomic_exchange(&h->writer_waiting, 0)) {
    atomic_fetch_add(&h->space_seq, 1);
    mp_futex_wake(&h->space_seq, 1);
  }
  if ((to & ~(PUNCH - 1)) > h->punched) release_consumed(r, to);
}

/*
** Publishes the tail, wakes a sleeping consumer and rings the doorbell for
** pollers. `whole`: this completes a message (a receiver in signalled mode
** takes one doorbell byte per message, so only such publications write one).
*/
static void publish_tail(mp_ring *r, uint64_t to, int whole) {
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
    int sig = atomic_load(&h->signalled) != 0;
    if ((sig && whole) || (!sig && !atomic_exchange(&h->bell_rung, 1))) {
      /* A full doorbell is already ringing; a reader gone is found by peer_gone. */
      ssize_t n = mp_write_nosigpipe(r->bell_w, "", 1);
      (void)n;
    }
  }
}

/*
** Counting. qsize is nput - nget, maxsize is checked against it and a
** JoinableQueue's unfinished count is nput - ndone, so each counter must move
** together with its position: nput exactly when a message's last byte is
** published (the tail), nget exactly when its record is consumed (the head).
** A process may die between the two stores. So each side first writes a
** journal of the pair it is about to publish, raises a pending flag, stores
** both, and lowers the flag: whoever takes the lock over from a dead holder
** finds the flag raised and stores the journal's pair again (roll forward;
** storing the same values twice is harmless). A holder that died before
** raising the flag left the published pair untouched: nothing to repair.
** Every step, as the fault points name it:
**   put: copy the record (invisible: beyond the tail) / journal + flag
**        ("ring.put.journaled") / nput ("ring.put.counted") / skip_at and
**        room_end (the producers' record of an early wrap and of a JUMP,
**        journaled with the tail that publishes them) / tail / flag down.
**   get: journal + flag ("ring.get.journaled") / nget ("ring.get.counted") /
**        head / flag down.
*/
static void commit_put(mp_ring *r, uint64_t tail, uint64_t skip_at, uint64_t room_end) {
  mp_ring_hdr *h = r->hdr;
  h->w_jtail = tail;
  h->w_jnput = atomic_load_explicit(&h->nput, memory_order_relaxed) + 1;
  h->w_jskip = skip_at;
  h->w_jroom = room_end;
  atomic_store_explicit(&h->w_pending, 1, memory_order_release);
  MP_FAULT("ring.put.journaled");
  atomic_store_explicit(&h->nput, h->w_jnput, memory_order_relaxed);
  MP_FAULT("ring.put.counted");
  h->skip_at = h->w_jskip;
  h->room_end = h->w_jroom;
  publish_tail(r, tail, 1);
  atomic_store_explicit(&h->w_pending, 0, memory_order_release);
}

static void commit_get(mp_ring *r, uint64_t head) {
  mp_ring_hdr *h = r->hdr;
  h->r_jhead = head;
  h->r_jnget = atomic_load_explicit(&h->nget, memory_order_relaxed) + 1;
  atomic_store_explicit(&h->r_pending, 1, memory_order_release);
  MP_FAULT("ring.get.journaled");
  atomic_store_explicit(&h->nget, h->r_jnget, memory_order_relaxed);
  MP_FAULT("ring.get.counted");
  advance_head(r, head);
  atomic_store_explicit(&h->r_pending, 0, memory_order_release);
}

/* The producers' lock was taken over from a dead holder: repair what it left. */
static void repair_producers(mp_ring *r) {
  mp_ring_hdr *h = r->hdr;
  atomic_store(&h->writer_waiting, 0);              /* the dead one's flag */
  if (atomic_load_explicit(&h->w_pending, memory_order_acquire)) {
    atomic_store(&h->nput, h->w_jnput);
    h->skip_at = h->w_jskip;
    h->room_end = h->w_jroom;
    publish_tail(r, h->w_jtail, 1);
    atomic_store(&h->w_pending, 0);
  }
  /*
  ** A message the dead one was streaming (FIRST, MORE... without its LAST) is
  ** left as it is: nput never counted it, the consumer reading it sees the
  ** next record is not its MORE or LAST (or that no live process holds this
  ** lock) and drops it, and a consumer that finds its chunks later skips them.
  */
}

/* The consumers' lock was taken over from a dead holder: repair what it left. */
static void repair_consumers(mp_ring *r) {
  mp_ring_hdr *h = r->hdr;
  atomic_store(&h->reader_waiting, 0);
  if (atomic_load_explicit(&h->r_pending, memory_order_acquire)) {
    atomic_store(&h->nget, h->r_jnget);
    advance_head(r, h->r_jhead);
    atomic_store(&h->r_pending, 0);
  }
  /* A streamed message the dead one was taking: its remaining chunks are
  ** skipped by get_begin (a MORE or LAST at the head belongs to nobody). */
}

/*
** A process that sleeps on the other side's progress checks, at the end of
** each wait slice, whether that side's lock is held by a dead process, and if
** so takes it over just long enough to repair: a producer that died after
** journaling a message would otherwise keep it from a waiting consumer until
** some other producer came, and a consumer that died after journaling a get
** would keep a full queue full. Only tried, never waited for (each side holds
** its own lock here), so the two locks cannot deadlock.
*/
static void rescue_producers(mp_ring *r) {
  mp_ring_hdr *h = r->hdr;
  if (mp_olock_owner_dead(&h->wlock) && mp_olock_try(&h->wlock) == EOWNERDEAD) {
    repair_producers(r);
    mp_olock_release(&h->wlock);
  }
}

static void rescue_consumers(mp_ring *r) {
  mp_ring_hdr *h = r->hdr;
  if (mp_olock_owner_dead(&h->rlock) && mp_olock_try(&h->rlock) == EOWNERDEAD) {
    repair_consumers(r);
    mp_olock_release(&h->rlock);
  }
}

/*
** Before sleeping, watch the other side for a few microseconds: a consumer
** that keeps up with its producer finds the ring empty after nearly every
** message, and a futex sleep and wake-up per message would cost far more
** than the message itself. Not again when the last wait slept through a
** whole slice (EINTR: the caller checks for interrupts and calls again) with
** nothing happening: the other side is not about to act, and spinning at
** every slice end would burn the CPU that short slices (5 ms while a pool
** has work out) are meant to spare. The flag is the handle's: this process's.
*/
#define SPIN_ROUNDS 1000   /* about 12 us on the development machine (a pause is 11 ns
                              there, 40 ns on other CPUs) */

/*
** A consumer keeping up with a streaming producer starts each wait's looks
** after LOOK_AGAIN, not at once. Such a consumer finds the ring empty after
** most messages; looking at once reads the tail's line and the record's line
** the moment the producer wrote them, so the producer's next stores must
** fetch both lines back, and both sides slow to the speed of lines moving
** between cores: 0.2-0.25 us per Queue message here instead of 0.07, from one
** run to the next depending on whether the consumer happened to catch up.
** Waiting lets the producer write a few lines of records undisturbed, which
** the consumer then takes after one look.
** The producer streams when the last STREAMING_WAITS waits each saw data
** within QUICK_LOOKS looks (the handle's quick_waits). Only waits count: a
** process taking what it put itself, or a consumer that never finds the ring
** empty, has nobody to give a head start (counting looks that found little
** made an in-process put+get pair 0.6 us instead of 0.12). A ping-pong's
** reply comes later than QUICK_LOOKS, so a round trip keeps looking at once.
** A producer waiting for room does not pause, nor does the consumer of a
** queue bounded to fewer than STREAM_ITEMS items: there the consumer frees a
** slot at a time and each is wanted at once (maxsize 4 went from 0.27 to 0.37
** us per message here with pauses; maxsize 100 from 0.27 to 0.10).
*/
#define LOOK_AGAIN 0.5e-6
#define QUICK_LOOKS 4
#define STREAMING_WAITS 2
#define STREAM_ITEMS 16     /* a queue bounded to fewer items cannot let its producer get ahead */

/* Before a consumer's wait looks: a streaming producer's head start. */
static void before_looks(mp_ring *r) {
  if (r->quick_waits >= STREAMING_WAITS) mp_pause_for(LOOK_AGAIN);
}

/* A consumer's wait saw data at look `n` (SPIN_ROUNDS: it did not, and slept or gave up). */
static void waited(mp_ring *r, int n) {
  uint64_t max = r->hdr->maxsize;
  int quick = n < QUICK_LOOKS && (max == 0 || max >= STREAM_ITEMS);
  r->quick_waits = quick ? r->quick_waits + 1 : 0;
}

/* Whether a new message may be put (maxsize items); producers' lock held. */
static int room_for_item(mp_ring *r) {
  mp_ring_hdr *h = r->hdr;
  if (h->maxsize == 0) return 1;
  uint64_t put = atomic_load_explicit(&h->nput, memory_order_relaxed);
  if (put - h->nget_seen < h->maxsize) return 1;
  h->nget_seen = atomic_load_explicit(&h->nget, memory_order_relaxed);
  return put - h->nget_seen < h->maxsize;
}

/*
** Bytes a producer may write from `tail`, as the head last seen allows: up to
** a lap after it, less REC_HDR kept free so that a JUMP record always fits
** (see jump_target); or up to room_end, where a JUMP made the rest of a lap
** free whatever the head.
*/
static uint64_t room_from(mp_ring *r, uint64_t tail) {
  mp_ring_hdr *h = r->hdr;
  uint64_t limit = h->head_seen + r->cap - REC_HDR;
  if (h->room_end > limit) limit = h->room_end;
  return limit > tail ? limit - tail : 0;
}

/* Free bytes in the ring; producers' lock held. The consumers' line is read
** only when the last look is not enough for `need` bytes. */
static uint64_t bytes_free(mp_ring *r, uint64_t need) {
  mp_ring_hdr *h = r->hdr;
  uint64_t tail = atomic_load_explicit(&h->tail, memory_order_relaxed);
  uint64_t room = room_from(r, tail);
  if (room >= need) return room;
  h->head_seen = atomic_load_explicit(&h->head, memory_order_acquire);
  return room_from(r, tail);
}

/* What a put of a record of `total` bytes (a first chunk when larger than the ring) waits for. */
static int room_for(mp_ring *r, uint64_t need, int new_item) {
  return (!new_item || room_for_item(r)) && bytes_free(r, need) >= need;
}

/* The wlock holder sleeps until a consumer made progress. 0, ETIMEDOUT, EINTR. */
static int wait_space(mp_ring *r, uint64_t need, int new_item, double deadline) {
  mp_ring_hdr *h = r->hdr;
  /* Not waiting: the sleep flags stay untouched (their line is the other side's to read). */
  if (deadline == -INFINITY) return ETIMEDOUT;
  if (!r->quiet) {
    for (int i = 0; i < SPIN_ROUNDS; i++) {
      cpu_relax();
      if (room_for(r, need, new_item)) return 0;
    }
  }
  atomic_store(&h->writer_waiting, 1);
  uint32_t seq = atomic_load(&h->space_seq);
  int rc = 0;
  if (!room_for(r, need, new_item)) rc = mp_futex_wait(&h->space_seq, seq, deadline);
  atomic_store(&h->writer_waiting, 0);
  r->quiet = rc == EINTR;
  return rc;
}

/* The rlock holder sleeps until the tail moves past `seen`. 0, ETIMEDOUT, EINTR. */
static int wait_data(mp_ring *r, uint64_t seen, double deadline) {
  mp_ring_hdr *h = r->hdr;
  /* Not waiting (get_nowait, a pipe's first try): the sleep flags stay
  ** untouched, since every put reads their line. */
  if (deadline == -INFINITY) return ETIMEDOUT;
  if (!r->quiet) {
    before_looks(r);
    for (int i = 0; i < SPIN_ROUNDS; i++) {
      if (atomic_load_explicit(&h->tail, memory_order_relaxed) != seen) {
        waited(r, i);
        return 0;
      }
      cpu_relax();
    }
  }
  waited(r, SPIN_ROUNDS);
  atomic_store(&h->reader_waiting, 1);
  uint32_t seq = atomic_load(&h->data_seq);
  int rc = 0;
  if (atomic_load(&h->tail) == seen) rc = mp_futex_wait(&h->data_seq, seq, deadline);
  atomic_store(&h->reader_waiting, 0);
  r->quiet = rc == EINTR;
  return rc;
}

/* Waits for room for `need` bytes (or one more item); the put's error or 0. */
static int await_room(mp_ring *r, uint64_t need, int new_item, double deadline) {
  while (!room_for(r, need, new_item)) {
    int rc = wait_space(r, need, new_item, deadline);
    if (rc == EINTR) {
      rescue_consumers(r);
      if (room_for(r, need, new_item)) return 0;
    }
    if (rc != 0 && peer_gone(r)) return EPIPE;
    if (rc != 0) return rc;
  }
  return 0;
}

/* Whether a record at ring offset `off` of `total` bytes is the first to write in some page. */
static inline int enters_page(uint64_t off, uint64_t total) {
  uint64_t in_page = off & (PAGE_GRAIN - 1);
  return in_page == 0 || in_page + total > PAGE_GRAIN;
}

/*
** Where a put whose record finds no room should go on instead of waiting, or
** 0. After an early wrap (the SKIP at skip_at) a producer writes the next lap
** from its start, with room only up to the consumers' place in the previous
** lap's image: consumers that stop before passing the SKIP (one waiting for
** its producer to finish) would keep it waiting although the rest of the area
** is empty. The part of this lap beyond the SKIP's image was written in
** neither lap (the consumers' data is all before it: they were at most
** WRAP_LAG behind at the wrap, which came past HOT), so the producer writes a
** JUMP record at the tail, goes on there, and may then fill this lap to its
** end (room_end) whatever the head. The JUMP always fits: room_from keeps
** REC_HDR bytes free. Producers' lock held, head_seen just read (room_for
** found too little room).
*/
static uint64_t jump_target(mp_ring *r, uint64_t tail, uint64_t total) {
  mp_ring_hdr *h = r->hdr;
  uint64_t skip = h->skip_at;
  if (skip == 0 || h->head_seen > skip) return 0;       /* no wrap, or the consumers passed it */
  uint64_t lap = (skip | (r->cap - 1)) + 1;             /* where the wrap went on */
  uint64_t to = lap + (skip & (r->cap - 1)) + REC_HDR;  /* just past the SKIP's image */
  if (tail < lap || tail >= to || to + total > lap + r->cap) return 0;
  if (!room_for_item(r)) return 0;                      /* full in items: wait for a get */
  return to;
}

/*
** A message larger than the ring, in chunks (FIRST, MORE..., LAST), each
** published as soon as it is written so that a consumer takes it while the
** rest is written. A chunk waits for a quarter of the ring (or what is left),
** so a slow consumer does not cut the message into slivers. Until FIRST is
** published nothing happened and the deadline is the put's; after it, a
** deadline that passes or a pipe whose reader is gone abandons the message:
** the producers' lock is released with the message unfinished, and its
** reader drops what it took (see read_stream). Slice ends (EINTR) mid-message
** go on: the message is finished or abandoned, never restarted.
*/
static int put_stream(mp_ring *r, const char *data, size_t len, double deadline) {
  mp_ring_hdr *h = r->hdr;
  uint64_t sent = 0;
  int first = 1;
  while (sent < len) {
    uint64_t extra = first ? 8 : 0;
    uint64_t rest = rec_size(len - sent + extra);
    uint64_t want = rest < r->cap / 4 ? rest : r->cap / 4;
    int rc;
    for (;;) {
      rc = await_room(r, want, first, deadline);
      if (rc != EINTR || first) break;
      if (peer_gone(r)) { rc = EPIPE; break; }     /* a slice ended mid-message */
    }
    if (rc != 0) return rc;
    uint64_t room = bytes_free(r, want) & ~(uint64_t)7;
    uint64_t n = room - REC_HDR - extra;           /* data bytes in this chunk */
    if (n > len - sent) n = len - sent;
    uint64_t tail = atomic_load_explicit(&h->tail, memory_order_relaxed);
    unsigned kind = first ? K_FIRST : sent + n == len ? K_LAST : K_MORE;
    uint64_t word = rec_word(kind, n + extra);
    copy_in(r, tail, (const char *)&word, REC_HDR);
    if (first) {
      uint64_t total = len;
      copy_in(r, tail + REC_HDR, (const char *)&total, 8);
    }
    copy_in(r, tail + REC_HDR + extra, data + sent, (size_t)n);
    uint64_t end = tail + rec_size(n + extra);
    sent += n;
    if (kind == K_LAST) {
      commit_put(r, end, h->skip_at, h->room_end);
    } else {
      publish_tail(r, end, 0);
      MP_FAULT(first ? "ring.stream.first" : "ring.stream.more");
    }
    first = 0;
  }
  return 0;
}

/*
** A process may die between any two steps. What each death leaves, and who
** repairs it (P = the next process to take the producers' lock, C = the next
** to take the consumers' lock; both also take a dead holder's lock over at
** the end of a wait slice, see rescue_*):
**
** put (a message that fits)
**   lock CAS / owner tag store  the lock word names a dead pid: P takes over
**                               (olock.h checks pid, zombie state, start time).
**   waiting for room            writer_waiting left 1: P clears it (repair);
**                               consumers waking nobody is harmless.
**   SKIP or JUMP, record copied beyond the tail: invisible, overwritten by P
**                               (skip_at and room_end change only through the
**                               journal, with the tail that publishes them).
**   journal + pending flag      P rolls forward: nput and tail as journaled.
**   nput stored                 P rolls forward (stores the same nput, the tail).
**   tail stored (published)     P rolls forward (same values); the message is out.
**   pending flag cleared        nothing to repair; the lock is P's to take.
** put (a message in chunks)
**   FIRST, MORE published       no count was made; the reader drops the partial
**                               message when the next record is not its chunk or
**                               no live process holds the lock (read_stream);
**                               chunks nobody is reading are skipped by C.
**   LAST                        as a message that fits (journal, roll forward).
** get
**   lock, waiting for data      reader_waiting left 1: C clears it.
**   record located / copied     nothing consumed: C takes the same message.
**   journal + pending flag      C rolls forward: nget and head as journaled (the
**                               message is gone with the dead consumer).
**   nget stored, head stored    C rolls forward (same values).
**   SKIP: punched, then head    C sees the mark again and moves on (idempotent).
**   JUMP: head                  one store: before it C follows the JUMP again.
** get (a message in chunks)
**   FIRST or MORE consumed      the rest is nobody's: C skips MORE chunks, and
**                               counts the LAST one as taken (its producer
**                               counted it) through the journal.
** release_consumed (a consumer holding the producers' lock by try)
**   madvise done, punched not   the next call punches again only stretches the
**                               tail has not reached again: harmless.
*/
int mp_ring_put(mp_ring *r, const void *data, size_t len, double deadline) {
  mp_ring_hdr *h = r->hdr;
  uint64_t total = rec_size(len);
  /* Up to a ring less the REC_HDR room_from keeps: one record; beyond: chunks. */
  int chunked = total > r->cap - REC_HDR;
  if (chunked && deadline == -INFINITY) return ETIMEDOUT;   /* cannot go without waiting */
  int rc = mp_olock_acquire(&h->wlock, deadline);
  if (rc == EOWNERDEAD) {
    repair_producers(r);
    rc = 0;
  } else if (rc != 0) {
    return rc;
  }
  MP_FAULT("ring.put.locked");
  /* A pipe whose reader is gone: EPIPE, checked when the ring is full and
  ** every quarter of the ring, not per message. */
  uint64_t tail0 = atomic_load_explicit(&h->tail, memory_order_relaxed);
  if (r->bell_r < 0 && r->bell_w >= 0 && (tail0 ^ (tail0 + total)) >= r->cap / 4 && peer_gone(r)) {
    mp_olock_release(&h->wlock);
    return EPIPE;
  }
  uint64_t jump_to = 0;
  if (chunked) {
    rc = put_stream(r, data, len, deadline);
  } else if (!room_for(r, total, 1) && (jump_to = jump_target(r, tail0, total)) == 0) {
    rc = await_room(r, total, 1, deadline);
  }
  if (!chunked && rc == 0) {
    uint64_t tail = atomic_load_explicit(&h->tail, memory_order_relaxed);
    uint64_t off = tail & (r->cap - 1);
    uint64_t skip_at = h->skip_at, room_end = h->room_end;
    if (jump_to != 0) {
      uint64_t word = rec_word(K_JUMP, jump_to & (r->cap - 1));
      copy_in(r, tail, (const char *)&word, REC_HDR);
      MP_FAULT("ring.put.jumped");
      tail = jump_to;
      room_end = (jump_to | (r->cap - 1)) + 1;
    } else if (r->cap > 2 * HOT && off >= HOT && total <= WRAP_LAG && enters_page(off, total)) {
      /*
      ** Wrap early when the consumers keep up: writing on into the reserved
      ** area would touch a fresh page every 4 KiB (a page fault each, and
      ** cold cache lines). Only when they are close behind (everything
      ** unconsumed plus this record within WRAP_LAG): after the wrap the
      ** producer has `off` less that much room before it reaches the
      ** consumers' position in the old lap; there it waits for them to pass
      ** the skip, or jumps if they stopped (jump_target). Allowing any lag
      ** that fits before `off` made a
      ** producer ahead of a slower consumer (one doing a little work per
      ** item, or a JoinableQueue reader calling task_done) wait for room in
      ** 1 MiB of a 1 GiB ring, at the consumer's pace: 0.2-0.25 us per
      ** message here instead of 0.07. A consumer further behind lets the
      ** producer write on into fresh pages, as an unbounded queue should.
      ** Asked only where the record enters a page (a page already written
      ** costs no fault), so that a producer ahead of its consumers reads
      ** their line once per page, not per message.
      */
      if (tail - h->head_seen + total > WRAP_LAG)
        h->head_seen = atomic_load_explicit(&h->head, memory_order_acquire);
      if (tail - h->head_seen + total <= WRAP_LAG) {
        uint64_t mark = SKIP_MARK;
        copy_in(r, tail, (const char *)&mark, REC_HDR);
        skip_at = tail;
        tail += r->cap - off;
      }
    }
    uint64_t word = rec_word(K_WHOLE, len);
    copy_in(r, tail, (const char *)&word, REC_HDR);
    copy_in(r, tail + REC_HDR, data, len);
    MP_FAULT("ring.put.copied");
    commit_put(r, tail + total, skip_at, room_end);
  }
  mp_olock_release(&h->wlock);
  return rc;
}

int mp_ring_get_begin(mp_ring *r, double deadline, mp_ring_msg *m) {
  mp_ring_hdr *h = r->hdr;
  int rc = mp_olock_acquire(&h->rlock, deadline);
  if (rc == EOWNERDEAD) {
    repair_consumers(r);
  } else if (rc == ETIMEDOUT && deadline == -INFINITY) {
    return EBUSY;                      /* another consumer holds the lock */
  } else if (rc != 0) {
    return rc;
  }
  MP_FAULT("ring.get.locked");
  m->settled = 0;
  for (;;) {
    uint64_t head = atomic_load_explicit(&h->head, memory_order_relaxed);
    /* The producers' line is read only when the last look is used up. */
    uint64_t tail = h->tail_seen;
    if (tail < head + REC_HDR)
      tail = h->tail_seen = atomic_load_explicit(&h->tail, memory_order_acquire);
    if (tail - head >= REC_HDR) {
      uint64_t word;
      copy_out(r, head, (char *)&word, REC_HDR);
      if (word == SKIP_MARK) {
        /* The producer wrapped early: nothing was written after the mark. */
        uint64_t next = (head | (r->cap - 1)) + 1;
        release_consumed(r, head);        /* what this lap's walk consumed */
        h->punched = next;                /* the skipped rest was not written */
        advance_head(r, next);
        continue;
      }
      unsigned kind = rec_kind(word);
      if (kind == K_JUMP) {
        /* The producer went on further in this lap (jump_target). */
        uint64_t next = (head & ~(r->cap - 1)) + rec_len(word);
        if (rec_len(word) >= r->cap || next <= head || next > tail) {
          mp_olock_release(&h->rlock);
          return EPROTO;
        }
        advance_head(r, next);
        continue;
      }
      uint64_t len = rec_len(word), size = rec_size(len);
      if (size > tail - head || kind > K_LAST) {
        /* Published records are whole: only a scribbled ring gets here. */
        mp_olock_release(&h->rlock);
        return EPROTO;
      }
      if (kind == K_MORE || kind == K_LAST) {
        /*
        ** The rest of a streamed message whose consumer died while taking it:
        ** nobody's. Skip it; its LAST was counted by its producer, so it is
        ** counted as taken (by the dead consumer) when it goes.
        */
        if (kind == K_LAST) { commit_get(r, head + size); m->settled++; }
        else advance_head(r, head + size);
        continue;
      }
      m->pos = head;
      if (kind == K_FIRST) {
        if (len < 8) { mp_olock_release(&h->rlock); return EPROTO; }
        copy_out(r, head + REC_HDR, (char *)&m->len, 8);
        m->streamed = 1;
        m->p1 = m->p2 = NULL;
        m->n1 = m->n2 = 0;
        return 0;
      }
      m->len = len;
      m->streamed = 0;
      size_t off = (size_t)((head + REC_HDR) & (r->cap - 1));
      m->p1 = r->data + off;
      m->n1 = r->cap - off < len ? r->cap - off : (size_t)len;
      m->p2 = r->data;
      m->n2 = (size_t)len - m->n1;
      return 0;
    }
    rc = wait_data(r, tail, deadline);
    if (rc == EINTR) {
      rescue_producers(r);
      if (atomic_load(&h->tail) != tail) continue;
    }
    if (rc != 0 && rc != EAGAIN) {
      mp_olock_release(&h->rlock);
      return rc;
    }
  }
}

/*
** Whether the message being streamed to this consumer is abandoned: no live
** process holds the producers' lock (its producer gave up or died) and no
** chunk came meanwhile. A dead holder's lock is taken over and repaired here,
** so that a LAST chunk it wrote but did not publish still arrives.
*/
static int stream_abandoned(mp_ring *r, uint64_t head) {
  mp_ring_hdr *h = r->hdr;
  if (atomic_load(&h->wlock.word) != 0) {
    if (!mp_olock_owner_dead(&h->wlock)) return 0;
    rescue_producers(r);
  }
  return atomic_load_explicit(&h->tail, memory_order_acquire) == head;
}

int mp_ring_read_stream(mp_ring *r, mp_ring_msg *m, char *dst) {
  mp_ring_hdr *h = r->hdr;
  uint64_t got = 0;
  for (;;) {
    uint64_t head = atomic_load_explicit(&h->head, memory_order_relaxed);
    uint64_t tail = h->tail_seen = atomic_load_explicit(&h->tail, memory_order_acquire);
    if (tail == head) {
      if (wait_data(r, tail, INFINITY) != EINTR) continue;
      /* A slice ended: is anybody still writing this message? */
      if (writers_gone(r) && atomic_load(&h->tail) == tail) return EPIPE;
      if (stream_abandoned(r, head)) return ECANCELED;
      continue;
    }
    uint64_t word;
    copy_out(r, head, (char *)&word, REC_HDR);
    if (word == SKIP_MARK) {
      uint64_t next = (head | (r->cap - 1)) + 1;
      release_consumed(r, head);
      h->punched = next;
      advance_head(r, next);
      continue;
    }
    unsigned kind = rec_kind(word);
    /* A JUMP comes only between messages (its producer held the lock): ours was abandoned. */
    if (kind == K_JUMP) return ECANCELED;
    uint64_t len = rec_len(word), size = rec_size(len);
    uint64_t left = m->len - got;
    if (size > tail - head) return EPROTO;
    if (got == 0 && head == m->pos) {
      /* FIRST, as get_begin found it: the total, then data. */
      uint64_t n = len - 8;
      if (n >= left) return EPROTO;
      if (dst != NULL) copy_out(r, head + REC_HDR + 8, dst, (size_t)n);
      got = n;
      advance_head(r, head + size);
      MP_FAULT("ring.stream.took_first");
      continue;
    }
    if (kind == K_MORE && len < left) {
      if (dst != NULL) copy_out(r, head + REC_HDR, dst + got, (size_t)len);
      got += len;
      advance_head(r, head + size);
      continue;
    }
    if (kind == K_LAST && len == left) {
      if (dst != NULL) copy_out(r, head + REC_HDR, dst + got, (size_t)len);
      commit_get(r, head + size);
      m->settled++;
      return 0;
    }
    /* Another message (or a chunk that does not fit this one): ours was abandoned. */
    return ECANCELED;
  }
}

void mp_ring_get_end(mp_ring *r, mp_ring_msg *m) {
  mp_ring_hdr *h = r->hdr;
  if (!m->streamed) {
    MP_FAULT("ring.get.copied");
    commit_get(r, m->pos + rec_size(m->len));
    m->settled++;
  }
  mp_olock_release(&h->rlock);
}

void mp_ring_rescue(mp_ring *r) {
  rescue_producers(r);
  rescue_consumers(r);
}

uint64_t mp_ring_count(mp_ring *r) {
  mp_ring_hdr *h = r->hdr;
  uint64_t got = atomic_load(&h->nget);
  uint64_t put = atomic_load(&h->nput);
  return put > got ? put - got : 0;
}

uint64_t mp_ring_maxsize(mp_ring *r) { return r->hdr->maxsize; }

int mp_ring_spin_readable(mp_ring *r) {
  before_looks(r);
  for (int i = 0; i < SPIN_ROUNDS; i++) {
    if (mp_ring_readable(r)) {
      waited(r, i);
      return 1;
    }
    cpu_relax();
  }
  waited(r, SPIN_ROUNDS);
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

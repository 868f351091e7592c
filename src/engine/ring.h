/*
** The queue engine: a byte ring in MAP_SHARED memory (inherited by every
** process forked after it is made) carrying variable-size messages between
** many producers and many consumers. The memory is a memfd, so that it can
** also be passed to a process that did not inherit it (mp_ring_export,
** mp_ring_attach: a fork-server child gets its Queue so).
**
** Shape: a single-producer/single-consumer ring made multi-producer and
** multi-consumer by two owner-checked locks (olock.h), one per side, so
** producers never contend with consumers. The positions are 64-bit counters
** that never wrap; a record is an 8-byte header and the payload, padded to 8.
** A producer copies a whole record and then publishes it with one store of
** the tail, so consumers only ever see complete records.
**
** Nobody makes a system call per message: a consumer sleeps on a futex only
** when the ring is empty (a producer wakes it only when the waiting flag is
** set), a producer only when the ring is full, and mp.wait's doorbell pipe is
** written only while some process polls the queue.
**
** Capacity: the data area is reserved large (MP_RING_DEFAULT_CAP, with
** MAP_NORESERVE) so that a 100 MiB item can be put before any consumer
** exists; pages are allocated when first written, and consumers hand every
** fully consumed 2 MiB stretch back to the kernel (MADV_REMOVE), so memory in
** use follows what is queued, not the reservation. Producers wrap back to
** the area's start early while consumers keep up (warm pages), and jump past
** such a wrap when consumers stop before it (ring.c, jump_target). A message
** larger than the whole area (less 8 bytes) travels in chunk records (first,
** more..., last) while its producer holds its lock, each published when written.
**
** Death of a process, at any instruction (ring.c reasons through each step):
** the next process that wants a dead holder's lock takes it over and repairs
** what the holder left. Counters move with their positions through a small
** journal, so qsize, maxsize and JoinableQueue.join stay exact. A producer
** that dies (or gives up at its deadline) in the middle of a chunked message
** leaves it unfinished: its reader drops it and every later message arrives
** intact; a consumer that dies taking one leaves its remaining chunks, which
** the next consumer skips.
**
** Engine code: no Lua; functions return 0 or an errno value.
*/
#ifndef MP_RING_H
#define MP_RING_H

#include <stddef.h>
#include <stdint.h>

#define MP_RING_DEFAULT_CAP ((size_t)1 << 30)

typedef struct mp_ring_hdr mp_ring_hdr;

/* One process's handle on a ring: the mapping and its doorbell pipe. */
typedef struct mp_ring {
  mp_ring_hdr *hdr;     /* NULL when not mapped */
  char *data;
  size_t cap;           /* bytes in the data area, a power of two */
  size_t map_len;
  int *refs;            /* handles on this mapping in this process (a pipe's two ends) */
  int memfd;            /* the memfd behind the mapping (shared with refs); -1 when none */
  int bell_r, bell_w;   /* doorbell for mp.wait; -1 when closed */
  int quiet;            /* this process's last wait on the ring slept through a slice:
                           the next one sleeps at once (see wait_data) */
  unsigned quick_waits; /* this process's last waits for data in a row that saw it within
                           a few looks: the producer streams (before_looks in ring.c) */
} mp_ring;

/* The safe empty state of a handle (nothing mapped, no fd), before anything can fail. */
static inline void mp_ring_empty(mp_ring *r) {
  r->hdr = NULL; r->data = NULL; r->refs = NULL;
  r->cap = r->map_len = 0;
  r->memfd = r->bell_r = r->bell_w = -1;
  r->quiet = 0;
  r->quick_waits = 0;
}

/* A message taken by mp_ring_get_begin, still in the ring (consumer lock held). */
typedef struct mp_ring_msg {
  uint64_t pos;         /* where its (first) record starts */
  uint64_t len;         /* payload bytes */
  const char *p1;       /* the payload: p1[0..n1) then p2[0..n2) when it wraps */
  size_t n1;
  const char *p2;
  size_t n2;
  int streamed;         /* larger than the ring: read it with mp_ring_read_stream */
  unsigned settled;     /* messages this get counted as taken (orphans skipped, and this
                           one once consumed): a signalled receiver takes that many bells */
} mp_ring_msg;

/* Maps a new ring; maxsize 0 means unbounded (in items). */
int mp_ring_create(mp_ring *r, size_t cap, uint64_t maxsize, int joinable);

/*
** A second handle on the same mapping in this process, with no doorbell fds.
** The mapping goes when the last handle on it is unmapped. (The count lives
** in this process's heap: a forked child gets its own copy, as it gets its
** own copy of the handles.)
*/
int mp_ring_dup(const mp_ring *r, mp_ring *out);

/*
** What another process needs to map this ring: the memfd (still owned by
** the handle: the caller duplicates or sends it) and the mapping's length.
** The doorbell ends the handle holds (bell_r, bell_w) go with it. EBADF
** when closed.
*/
int mp_ring_export(const mp_ring *r, int *memfd, size_t *map_len);

/*
** A handle on a ring received from another process: maps memfd (map_len
** bytes, as export gave it) and checks that it holds a ring. Takes the three
** fds (bell_r, bell_w may be -1) in every case: on failure they are closed
** and r is left empty. EINVAL when the fd is not a ring of that length.
*/
int mp_ring_attach(mp_ring *r, int memfd, size_t map_len, int bell_r, int bell_w);

/* Unmaps this process's mapping and closes its doorbell fds (idempotent). */
void mp_ring_unmap(mp_ring *r);

/*
** Puts one message. Waits until `deadline` for room (maxsize items, or bytes).
** Returns 0, ETIMEDOUT (full), EINTR (slice ended, nothing done: check for
** interrupts and call again), EPIPE (a pipe whose reader is gone), or an
** errno. A message larger than the ring goes in chunks: once its first chunk
** is out it runs to the end without returning EINTR, or, when the deadline
** passes or the reader is gone, is abandoned (ETIMEDOUT, EPIPE: its reader
** drops it). With deadline -INFINITY (do not wait) such a message is
** ETIMEDOUT at once: it cannot pass without waiting for a consumer.
*/
int mp_ring_put(mp_ring *r, const void *data, size_t len, double deadline);

/*
** Takes the next message, waiting until `deadline`. On 0 the consumer lock is
** held and *m describes the message in place: copy or decode it, then call
** mp_ring_get_end (or mp_ring_read_stream when m->streamed). ETIMEDOUT when
** empty, EINTR as for put; with deadline -INFINITY (do not wait), EBUSY when
** another consumer holds the lock; EPROTO when the ring is corrupt.
*/
int mp_ring_get_begin(mp_ring *r, double deadline, mp_ring_msg *m);

/*
** Copies a streamed message (m->len bytes) into dst, or drops it if dst is
** NULL. 0 when complete; ECANCELED when its producer abandoned it (died, or
** gave up at its deadline): drop what was copied, call mp_ring_get_end and
** take the next message; EPIPE when a pipe's writers all closed before the
** end of it; EPROTO when the ring is corrupt.
*/
int mp_ring_read_stream(mp_ring *r, mp_ring_msg *m, char *dst);

/* Consumes the message, releases the consumer lock and wakes a waiting producer. */
void mp_ring_get_end(mp_ring *r, mp_ring_msg *m);

/*
** Repairs what a process that died holding either side's lock left (a message
** it journaled but did not publish, a get it journaled but did not finish).
** Blocking calls do this at the end of each wait slice; a waiter that sleeps
** elsewhere (a pipe's doorbell, mp.wait) calls it at its slice ends too.
*/
void mp_ring_rescue(mp_ring *r);

/* Items in the ring now (approximate while others put and get). */
uint64_t mp_ring_count(mp_ring *r);
uint64_t mp_ring_maxsize(mp_ring *r);

/* Whether a message is ready to be taken (what mp.wait asks). */
int mp_ring_readable(mp_ring *r);

/* Watches the ring for a few microseconds (as a blocking get does before it
** sleeps); whether a message arrived. */
int mp_ring_spin_readable(mp_ring *r);

/*
** mp.wait's side: poll_begin registers this process as polling the doorbell
** (producers then ring it) and returns whether a message is already there;
** poll_end unregisters and (when `drain`) empties the doorbell.
*/
int mp_ring_poll_begin(mp_ring *r);
void mp_ring_poll_end(mp_ring *r, int drain);

/* Signalled mode on or off: producers write one doorbell byte per message. */
void mp_ring_signalled(mp_ring *r, int on);

/* JoinableQueue: unfinished tasks, counted up by put and down by task_done. */
int mp_ring_task_done(mp_ring *r);          /* 0, or ERANGE when called too often */
int mp_ring_join(mp_ring *r, double deadline);  /* 0, ETIMEDOUT or EINTR */

#endif

/*
** The pool's local transport: how task batches reach the workers of one
** machine and result messages come back. Engine code: no Lua; functions
** return 0 or an errno value.
**
** Two AF_UNIX SOCK_SEQPACKET socket pairs: the parent writes task batches into
** one that every worker reads, every worker writes result messages into one
** that the parent reads. The kernel keeps message boundaries and hands each
** message whole to exactly one reader: idle workers take the next batch, and
** a worker killed at any instant leaves no half message and no held lock.
** Messages above MP_PC_SMALL travel in a memfd passed with SCM_RIGHTS.
**
** The slot region (MAP_SHARED, inherited by the workers) starts with a header
** (magic, version, owner pid, slots) and holds one slot per worker: the batch
** it took, the task it runs, and a journal of the results it finished but has
** not sent yet, so that the parent knows exactly what a dead worker held.
**
** THE TRANSPORT SEAM. The pool's binding (src/lpool.c) drives a transport only
** through mp_pool_transport_ops below; this file is the local implementation.
** Another transport (MPI ranks, a fork server's children) implements the same
** operations and needs nothing else from the pool: it moves opaque byte
** messages, and tells which worker holds which batch when one is lost.
**
**   parent: send(batch, fds) hand one batch to some idle worker (never blocks:
**                            EAGAIN keeps it, flush retries it), with the fds
**                            of the mp objects its tasks carry (borrowed; a
**                            transport whose `fds` is 0 is never given any);
**                            a transport
**                            that holds the bytes in a file of its own (the
**                            local one: a big batch's memfd) may hand that fd
**                            to the caller to keep instead of the bytes
**           recv(msgs)       the result messages available now
**           wait(deadline)   sleep until results, a lost worker, room to send,
**                            the deadline (ETIMEDOUT; the binding passes one
**                            no later than mp's wait slice), or a signal or
**                            a slice of its own (EINTR)
**           started(i, fd)   worker i is up; fd polls readable when it ends
**           lost(i, &held)   worker i ended: what it held (batch, running
**                            task, journal of finished results); clears it
**           idle()           every batch sent has been taken by a worker
**   worker: take(i, &batch)  the next batch, named as held by worker i, and
**                            the fds that came with it (the transport's,
**                            valid until the next take: the decoder dups
**                            what it keeps)
**           begin(i, id)     task id starts (0: between tasks)
**           keep(i, result)  a finished result, safe before the next task
**           end(i)           the batch is done: its results are sent (also
**                            called outside a batch, after keep of an
**                            initializer's error: then no batch ends)
**   both:   close_tasks()    no more batches (workers' take then says EPIPE)
**           fd()             polls readable when results are in, or -1 when
**                            the transport has no fd (MPI: waits poll it)
**           after_fork(w)    in a new child: drop the parent's side (w: it
**                            is one of this transport's workers)
**           close()          release everything this process holds (idempotent)
**
** A transport built outside mp (a separate C module such as mp/mpi.so) hands
** its ops to core.pool_transport through its object's metatable (field
** __pool_ops, a light userdata); `magic` and `version` guard that handover.
**
** Framing, for every transport: a batch and a journal are a container, a
** header (MP_PC_CHDR bytes: u8 'K', pad, u32 entries, u64 first task id)
** followed by entries (u32 length, then that many bytes). Task ids in one
** batch are consecutive. What an entry holds is the binding's business.
*/
#ifndef MP_POOLCHAN_H
#define MP_POOLCHAN_H

#include <stddef.h>
#include <stdint.h>
#include <stdatomic.h>
#include <sys/types.h>

#define MP_PC_SMALL (32 * 1024)     /* larger messages go through a memfd */
#define MP_PC_RECV_BATCH 16         /* messages taken per recvmmsg */
#define MP_PC_CHDR 16               /* container header */
#define MP_PC_MAGIC 0x4c4f4f50u     /* "POOL" */
#define MP_PC_VERSION 1
/*
** fds passed with one task batch at most: SCM_MAX_FD (253) less the memfd of
** a big message, less spare. The binding closes a batch before it holds more.
*/
#define MP_PC_MAXFDS 250

/* A worker's slot, in the shared region. */
typedef struct mp_pc_slot {
  _Atomic uint64_t task;          /* the task it runs, 0 between tasks */
  _Atomic uint64_t batch_first;   /* the batch it holds: ids first .. first+count-1 */
  _Atomic uint32_t batch_count;
  _Atomic uint32_t committed;     /* journal bytes holding finished results */
  _Atomic uint32_t taking;        /* 1 from before recvmsg until the batch is named */
} mp_pc_slot;

/* What a lost worker held (see lost). journal points into the slot. */
typedef struct mp_pc_held {
  uint64_t task;                  /* the task it was running, 0 if none */
  uint64_t batch_first;
  uint32_t batch_count;
  int taking;                     /* it may have taken a batch it had not named */
  const char *journal;            /* a container of finished results */
  size_t journal_len;
} mp_pc_held;

typedef struct mp_pc_msg {
  const char *data;
  size_t len;
} mp_pc_msg;

/* A growable byte buffer (malloc'd). */
typedef struct mp_pc_buf {
  char *data;
  size_t len, cap;
} mp_pc_buf;

int mp_pc_reserve(mp_pc_buf *b, size_t extra);   /* 0 or ENOMEM */
void mp_pc_buf_free(mp_pc_buf *b);

static inline void mp_pc_put32(char *p, uint32_t v) { __builtin_memcpy(p, &v, 4); }
static inline void mp_pc_put64(char *p, uint64_t v) { __builtin_memcpy(p, &v, 8); }
static inline uint32_t mp_pc_get32(const char *p) { uint32_t v; __builtin_memcpy(&v, p, 4); return v; }
static inline uint64_t mp_pc_get64(const char *p) { uint64_t v; __builtin_memcpy(&v, p, 8); return v; }

/* The local transport's state, in each process that holds it. */
typedef struct mp_poolchan {
  int task_w, task_r;             /* tasks: the parent writes task_w, workers read task_r */
  int res_w, res_r;               /* results: workers write res_w, the parent reads res_r */
  int nslots;
  char *region;                   /* header, then the slots; NULL when closed */
  size_t region_len;
  int region_fd;                  /* the memfd behind the region (passed to fork-server workers) */
  int *sentinels;                 /* parent: each slot's worker sentinel, -1 when none */
  mp_pc_buf stall;                /* parent: a batch the socket had no room for yet */
  int stalled;
  int *stall_fds, stall_nfds;     /* parent: its fds (duplicates, closed once it is sent) */
  int rfds[MP_PC_MAXFDS];         /* worker: the fds of the batch taken last */
  int nrfds;
  char *rbuf;                     /* MP_PC_RECV_BATCH receive areas */
  void *maps[MP_PC_RECV_BATCH];   /* big messages of the last recv, unmapped at the next */
  size_t maplens[MP_PC_RECV_BATCH];
  uint32_t jn;                    /* worker: results in its journal */
  mp_pc_buf one;                  /* worker: a result too big for the journal */
} mp_poolchan;

/* The safe empty state (fds -1, nothing mapped): before anything can fail. */
void mp_poolchan_init(mp_poolchan *c);
/* Sockets and the slot region for nslots workers. On failure releases all. */
int mp_poolchan_open(mp_poolchan *c, int nslots);
/* Releases everything this process holds; idempotent. */
void mp_poolchan_close(mp_poolchan *c);
/* In a new child: drop the parent's ends (and all of them unless it is a worker). */
void mp_poolchan_after_fork(mp_poolchan *c, int worker);
/*
** Workers that did not inherit the transport (started through the fork
** server): worker_ends gives the fds a worker needs (the task socket's read
** end, the result socket's write end, the region's memfd; borrowed) and the
** region's length; attach makes a worker-side transport in such a worker from
** received fds (it takes them, and checks the region's header: they came
** from another process). 0 or errno (EBADF when this side has no ends).
*/
int mp_poolchan_worker_ends(const mp_poolchan *c, int fds[3], size_t *region_len);
int mp_poolchan_attach(mp_poolchan *c, int task_r, int res_w, int region_fd, size_t region_len, int nslots);

/* No more batches: workers read end-of-file once the queued ones are taken. */
void mp_poolchan_close_tasks(mp_poolchan *c);
/* The fd that polls readable when results are in (for waits outside the pool). */
int mp_poolchan_fd(const mp_poolchan *c);

/* The transport seam (see above). `t` is the implementation's state. */
#define MP_POOL_OPS_MAGIC 0x5350504fu   /* "OPPS" */
#define MP_POOL_OPS_VERSION 2

typedef struct mp_pool_transport_ops {
  uint32_t magic, version;          /* MP_POOL_OPS_MAGIC, MP_POOL_OPS_VERSION */
  const char *name;
  int fds;                          /* fds a batch may carry (mp objects in tasks); 0: none */
  int (*send)(void *t, const char *batch, size_t len, const int *fds, int nfds,
              int *keep);                                        /* 0, EAGAIN, errno; *keep: fd or -1 */
  int (*flush)(void *t);                                         /* 0 when nothing is kept */
  int (*recv)(void *t, mp_pc_msg *out, int max, int *n);
  int (*wait)(void *t, double deadline, int *lost);              /* 0, ETIMEDOUT, EINTR */
  void (*started)(void *t, int index, int sentinel);
  void (*lost)(void *t, int index, mp_pc_held *held);
  int (*idle)(void *t);
  int (*busy)(void *t, int index);                               /* holds a batch or takes one */
  uint64_t (*running)(void *t, int index);                       /* its task, 0 if none */
  int (*take)(void *t, int index, const char **batch, size_t *len,
              const int **fds, int *nfds);                       /* 0, EPIPE (no more), EINTR */
  void (*begin)(void *t, int index, uint64_t id);
  int (*keep)(void *t, int index, const char *result, size_t len);
  int (*end)(void *t, int index);
  void (*close_tasks)(void *t);
  int (*fd)(void *t);                                            /* -1: none */
  void (*after_fork)(void *t, int worker);
  void (*close)(void *t);
} mp_pool_transport_ops;

extern const mp_pool_transport_ops mp_poolchan_ops;

#endif

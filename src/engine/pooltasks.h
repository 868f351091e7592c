/*
** The pool's tasks in flight, on the parent's side: plain C bookkeeping that
** src/lpool.c owns (one mp_pt inside its transport object) and drives. Engine
** code: no Lua; functions return 0 or an errno value.
**
** - The open batch: task entries framed as poolchan.h says, built in `out`
**   until commit hands them to the transport as one message.
** - Tasks: a ring indexed by task id (ids are consecutive), 32 bytes a task,
**   allocated at its full first size at once and touched only as ids advance
**   (no page is faulted in, nor copied, while fewer than MP_PT_RING0 tasks are
**   in flight); grown (mp_pt_grow) while an older task holds a place. Each
**   task keeps the batch message that carried it (reference counted) and
**   where its entry is, so a task a lost worker never started is sent again
**   exactly as it was.
** - Jobs (map-like jobs: an apply task is its own job and has none): small
**   integer handles with counters (tasks outstanding, items settled); the
**   binding maps a handle to its Lua objects, and an apply task's ring slot to
**   its AsyncResult.
** - Resends: tasks to send again, one per message.
** - Spare buffers: the memory of settled batches, reused for the next ones
**   (up to MP_PT_SPARES of them), so that a steady stream of batches touches
**   no fresh page (a fresh page costs about 13 us on this machine).
** - Timed tasks (few): their limits, and per worker slot the timed task last
**   seen running and since when, to tell when one runs over its limit.
**
** - The fds of the mp objects that tasks carry (Queues, Locks, Values... as
**   arguments or upvalues: mp_travel.h): duplicated when a task is encoded
**   (the object may be collected before its batch leaves), kept with the
**   batch that carries them until its tasks settle, and passed along it, so
**   that a task sent again after its worker died carries them again.
**
** Entry header (after its u32 length): u8 kind, pad, u32 fn_id, u64 task id,
** u32 fn_len, u32 count, u32 fd_base, u32 nfds; then fn_len bytes of
** function, then the values. The task's mp objects name their fds by index
** in fds[fd_base .. fd_base + nfds) of the fds that came with its batch.
*/
#ifndef MP_POOLTASKS_H
#define MP_POOLTASKS_H

#include <stddef.h>
#include <stdint.h>

#include "engine/poolchan.h"

#define MP_PT_HDR 32                 /* entry header, after the entry's length */
#define MP_PT_TASK_FDS 200           /* fds one task may carry */
/* A batch is closed once it holds more fds than this: the next task's then fit. */
#define MP_PT_BATCH_FDS (MP_PC_MAXFDS - MP_PT_TASK_FDS)
#define MP_PT_RING0 65536            /* the task ring's first size (a power of two) */
#define MP_PT_SPARES 8
#define MP_PT_FDS 64                 /* batches kept as fds at most (the rest in memory) */

/*
** A sent batch: its bytes in memory (data), or in a file the transport handed
** over (fd); the fds of its tasks' mp objects (owned).
*/
typedef struct mp_pt_batch { int refs; size_t len, cap; char *data; int fd; int *fds, nfds; } mp_pt_batch;

typedef struct mp_pt_task {
  uint64_t id;                       /* 0: a free entry */
  int64_t off;                       /* its values go to its dest from off + 1 */
  mp_pt_batch *b;                    /* the message that carries it; NULL while open */
  uint32_t at;                       /* its entry in b (count, kind: in the entry's header) */
  int32_t job;                       /* its job's handle; 0 for an apply task */
} mp_pt_task;

typedef struct mp_pt_timed { uint64_t id; double limit; int overdue; } mp_pt_timed;

typedef struct mp_pt_job {
  int64_t outstanding;               /* tasks in flight */
  int64_t done;                      /* items settled (tasks for an apply job) */
  char used, stream, sealed;
} mp_pt_job;

typedef struct mp_pt {
  mp_pc_buf out;                     /* the open batch */
  int *ofds, onfds, ofdcap;          /* its fds (owned duplicates) */
  uint32_t batch_n, batch_fn;
  uint64_t batch_first;
  mp_pt_task *tasks;
  uint64_t mask, next_id;
  uint64_t low;                      /* no task below it is in flight: walks go low..next_id */
  int64_t inflight;
  mp_pt_job *jobs;
  int njobs, *freej, nfree;
  uint64_t *resend;
  size_t nresend, capresend;
  mp_pc_buf spare[MP_PT_SPARES];
  int nspare, nfds;
  mp_pt_timed *timed;
  int ntimed, captimed, nslots;
  uint64_t *seen_id;
  double *seen_at;
} mp_pt;

int mp_pt_init(mp_pt *p, int nslots);          /* ENOMEM; p is then freed */
void mp_pt_free(mp_pt *p);

/*
** Starts task entry id in the open batch (and the batch if none is open); the
** caller appends the values to p->out, then ends or drops the entry.
*/
int mp_pt_entry_begin(mp_pt *p, int kind, uint64_t id, uint32_t fn_id,
                      const char *fn, size_t fn_len, uint32_t count, size_t *entry);
void mp_pt_entry_end(mp_pt *p, size_t entry, uint32_t fn_id);
/* The entry's mp objects' fds (borrowed: duplicated into the open batch; at most MP_PT_TASK_FDS). */
int mp_pt_entry_fds(mp_pt *p, size_t entry, const int *fds, int nfds);
void mp_pt_entry_drop(mp_pt *p, size_t entry);
/* Whether task id's place in the ring is free (else mp_pt_grow first). */
int mp_pt_place_free(const mp_pt *p, uint64_t id);
int mp_pt_grow(mp_pt *p);
/* Records entry `at` (just ended) as task id of job h (0: an apply task). */
int mp_pt_record(mp_pt *p, uint64_t id, int h, int64_t off, size_t at, double limit);
/* The items of a task (a map chunk's count). */
uint32_t mp_pt_count(const mp_pt_task *t);
/* The bytes of batch b (read back from its fd into *tmp, to free, when kept there). */
const char *mp_pt_bytes(mp_pt_batch *b, char **tmp);
/* The open batch as a message (*b, NULL when empty), its tasks attached to it. */
int mp_pt_commit(mp_pt *p, mp_pt_batch **b);
/* The transport keeps batch b's bytes in fd (or -1): its memory is reused. */
void mp_pt_kept(mp_pt *p, mp_pt_batch *b, int fd);

mp_pt_task *mp_pt_find(mp_pt *p, uint64_t id);
/* Settles a task: 1 when its (map) job is now done: it was sealed and this was its last task. */
int mp_pt_settle(mp_pt *p, mp_pt_task *t);

int mp_pt_job_new(mp_pt *p, int stream, int *h);
void mp_pt_job_free(mp_pt *p, int h);
/* Seals job h: 1 when it is done now (nothing outstanding). */
int mp_pt_seal(mp_pt *p, int h);

int mp_pt_queue(mp_pt *p, uint64_t id);        /* to be sent again */
/* Queues every task sent and not settled (tasks nobody holds: see lpool.c). */
int mp_pt_queue_all(mp_pt *p);
/* The next queued task as a message of its own (*t NULL when none is left); its bytes in t->b->data. */
int mp_pt_next_resend(mp_pt *p, mp_pt_task **t);
void mp_pt_unqueue(mp_pt *p, mp_pt_task *t);   /* put it back: the transport had no room */

/* 1 once the timed task `running` in slot i has run over its limit (reported once). */
int mp_pt_overdue(mp_pt *p, int i, uint64_t running, double now);
/* In a forked child: closes the inherited fds of kept batches (their pages must not live on). */
void mp_pt_drop_fds(mp_pt *p);
/* Forgets every task (the pool is terminated); jobs stay for the caller to report. */
void mp_pt_forget(mp_pt *p);

#endif

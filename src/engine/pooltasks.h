/*
** The pool's tasks in flight, on the parent's side: plain C bookkeeping that
** src/lpool.c owns (one mp_pt inside its transport object) and drives. Engine
** code: no Lua; functions return 0 or an errno value.
**
** - The open batch: task entries framed as poolchan.h says, built in `out`
**   until commit hands them to the transport as one message.
** - Tasks: a ring indexed by task id (ids are consecutive), grown while an
**   older task holds a place. Each task keeps the batch message that carried
**   it (reference counted) and where its entry and its function's bytes are,
**   so a task a lost worker never started is sent again exactly as it was.
** - Jobs: small integer handles with counters (tasks outstanding, items
**   settled); the binding maps a handle to its Lua objects.
** - Resends: tasks to send again, one per message.
** - Timed tasks: per worker slot, the timed task last seen running and since
**   when, to tell when one runs over its limit.
**
** Entry header (after its u32 length): u8 kind, pad, u32 fn_id, u64 task id,
** u32 fn_len, u32 count; then fn_len bytes of function, then the values.
*/
#ifndef MP_POOLTASKS_H
#define MP_POOLTASKS_H

#include <stddef.h>
#include <stdint.h>

#include "engine/poolchan.h"

#define MP_PT_HDR 24                 /* entry header, after the entry's length */

typedef struct mp_pt_batch { int refs; size_t len; char *data; } mp_pt_batch;

typedef struct mp_pt_task {
  uint64_t id;                       /* 0: a free entry */
  int job;                           /* its job's handle */
  uint32_t count;                    /* items of a map chunk */
  int64_t off;                       /* its values go to the job's dest from off + 1 */
  mp_pt_batch *b;                    /* the message that carries it; NULL while open */
  uint32_t at, fn_at;                /* its entry, and the entry carrying its function, in b */
  float limit;                       /* seconds it may run, 0: no limit */
  int overdue;                       /* reported over its limit */
} mp_pt_task;

typedef struct mp_pt_job {
  int64_t outstanding;               /* tasks in flight */
  int64_t done;                      /* items settled (tasks for an apply job) */
  char used, stream, sealed, apply;
} mp_pt_job;

typedef struct mp_pt {
  mp_pc_buf out;                     /* the open batch */
  uint32_t batch_n, batch_fn;
  uint64_t batch_first;
  size_t batch_fn_at, carrier;       /* entries carrying function bytes: last committed, pending */
  mp_pt_task *tasks;
  uint64_t mask, next_id;
  int64_t inflight;
  mp_pt_job *jobs;
  int njobs, *freej, nfree;
  uint64_t *resend;
  size_t nresend, capresend;
  int ntimed, nslots;
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
void mp_pt_entry_drop(mp_pt *p, size_t entry);
/* Records entry `at` (just ended) as task id of job h. */
int mp_pt_record(mp_pt *p, uint64_t id, int h, int64_t off, uint32_t count, size_t at, double limit);
/* The open batch as a message (*b, NULL when empty), its tasks attached to it. */
int mp_pt_commit(mp_pt *p, mp_pt_batch **b);

mp_pt_task *mp_pt_find(mp_pt *p, uint64_t id);
/* Settles a task: 1 when its job is now done (a sealed job's last task, or an apply job). */
int mp_pt_settle(mp_pt *p, mp_pt_task *t);

int mp_pt_job_new(mp_pt *p, int stream, int apply, int *h);
void mp_pt_job_free(mp_pt *p, int h);
/* Seals job h: 1 when it is done now (nothing outstanding). */
int mp_pt_seal(mp_pt *p, int h);

int mp_pt_queue(mp_pt *p, uint64_t id);        /* to be sent again */
/* Queues every task sent and not settled (tasks nobody holds: see lpool.c). */
int mp_pt_queue_all(mp_pt *p);
/* The next queued task as a message of its own (*t NULL when none is left). */
int mp_pt_next_resend(mp_pt *p, mp_pt_task **t);
void mp_pt_unqueue(mp_pt *p, mp_pt_task *t);   /* put it back: the transport had no room */

/* 1 once the timed task `running` in slot i has run over its limit (reported once). */
int mp_pt_overdue(mp_pt *p, int i, uint64_t running, double now);
/* Forgets every task (the pool is terminated); jobs stay for the caller to report. */
void mp_pt_forget(mp_pt *p);

#endif

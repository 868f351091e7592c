/*
** The pool's MPI transport: task batches and result messages between rank 0
** (the pool's owner, "the parent") and worker ranks, behind the same seam as
** the local transport (mp_pool_transport_ops, src/engine/poolchan.h), so
** src/lpool.c and lua/mp/pool.lua run an MPI pool unchanged. Engine code: no
** Lua; functions return 0 or an errno value. Built only into mp/mpi.so.
**
** Workers are ranks 1..N-1 of MPI_COMM_WORLD (static launch, mpirun -n N),
** or processes spawned one by one with MPI_Comm_spawn, each on its own
** intercommunicator (dynamic launch: one spawned rank dying ends only its own
** MPI job, so the others go on).
**
** Push, not pull. MPI has no queue that several ranks read from, so the
** parent keeps one (`pending`: the transport takes every batch at once, as
** the local transport's socket does) and chooses the worker: each batch goes
** to the live worker with the
** fewest batches outstanding, at most `cap` each (2: the next batch is there
** when a worker ends one; 1 with maxtasksperchild, so that a worker that
** leaves after its n-th task holds nothing more). The parent therefore knows
** which batches each worker holds, in order (MPI keeps the order of messages
** between two ranks): a worker answers each batch with result containers,
** the last one flagged "end of batch" (byte 1 of the container header).
**
** No fd, so waits poll. Neither side ever blocks inside MPI (a blocking MPI
** call spins at full speed on a core): waits call MPI_Iprobe, spinning with
** sched_yield for MPC_SPIN seconds, then sleeping in steps of an eighth of
** the time waited so far (so the delay a sleep adds stays under 1/8 of the
** wait), between MPC_SLEEP_MIN and MPC_SLEEP_MAX. The parent sleeps in ppoll
** on the pidfds of the workers it spawned on this host, so their deaths wake
** it at once.
**
** Messages (tags): parent -> worker: TASK (a batch), STOP (no more tasks for
** this pool), START (index, then the worker's settings as mp.dumps made
** them), FINISH (leave: the rank exits). worker -> parent: RESULT (a
** container), HELLO (pid, host name: the answer to START), EXIT (an int:
** the worker left the pool, 0 after STOP or maxtasksperchild, 1 when its
** initializer failed).
*/
#ifndef MP_MPICHAN_H
#define MP_MPICHAN_H

#include <mpi.h>
#include "engine/poolchan.h"

enum { MPC_TASK = 1, MPC_STOP, MPC_START, MPC_FINISH, MPC_RESULT = 11, MPC_HELLO, MPC_EXIT };

#define MPC_SPIN 200e-6
#define MPC_SLEEP_MIN 20e-6
#define MPC_SLEEP_MAX 2e-3
#define MPC_END_OF_BATCH 1          /* result container, byte 1 */
#define MPC_JOURNAL_MAX (4u << 20)  /* a worker sends its results early past this */
#define MPC_HOST 64

/* Worker states, as the parent sees them. */
enum { MPC_W_NONE, MPC_W_SERVING, MPC_W_EXITED, MPC_W_DEAD };

typedef struct mpc_batch { uint64_t first; uint32_t count; } mpc_batch;

typedef struct mpc_worker {
  MPI_Comm comm;              /* MPI_COMM_WORLD, its intercommunicator, or MPI_COMM_NULL */
  int rank;                   /* its rank in comm */
  int spawned;                /* comm is its own intercommunicator */
  int state, exitcode;        /* MPC_W_*; the code its EXIT carried */
  int live;                   /* between started and lost */
  int stopped;                /* STOP sent */
  int pidfd;                  /* a spawned worker on this host: its pidfd; -1 */
  int here;                   /* a spawned worker on this host (pid is its pid here) */
  long pid;
  char host[MPC_HOST];
  mpc_batch q[2];             /* batches it holds, oldest first */
  int qn;
} mpc_worker;

typedef struct mpc_pending { MPI_Request req; char *buf; } mpc_pending;

typedef struct mpichan {
  int worker;                 /* 0: the parent's side, 1: a worker's */
  int closed;
  int foreign;                /* a forked child's copy: MPI is not ours here */
  /* parent */
  int nworkers, cap, world;   /* world: the workers are ranks of MPI_COMM_WORLD */
  mpc_worker *w;
  mpc_pending *sends;            /* Isends not yet complete (their buffers) */
  int nsends, sendcap;
  mp_pc_msg *pending;         /* batches no worker had room for yet (copies), a ring */
  int phead, pcount, pcap;
  mp_pc_buf rb[MP_PC_RECV_BATCH];   /* the last recv's messages */
  mp_pc_buf ctl;              /* control messages */
  int pending_lost;           /* an EXIT was taken: the next wait reports it */
  int nbypid;                 /* spawned workers here without a pidfd (watched by pid) */
  int next;                   /* round robin among equals */
  /* worker */
  MPI_Comm pcomm;             /* where the parent is: MPI_COMM_WORLD or the parent intercomm */
  int prank;                  /* its rank there (0) */
  mp_pc_buf in;               /* the batch being run */
  mp_pc_buf jr[2];            /* result journals: one filling, one maybe in flight */
  MPI_Request jreq[2];
  int jcur;
  uint32_t jn;
  int in_batch;               /* a TASK was taken and its end() has not come yet */
  int finish;                 /* FINISH came: the rank leaves */
} mpichan;

extern const mp_pool_transport_ops mpc_ops;

/* The safe empty state. */
void mpc_init(mpichan *c);
/* The parent's side for n workers; static: they are world ranks 1..n. */
int mpc_open_parent(mpichan *c, int n, int cap, int world);
/* A worker's side: the parent is rank prank of pcomm. */
int mpc_open_worker(mpichan *c, MPI_Comm pcomm, int prank);
void mpc_close(mpichan *c);

/* Parent: MPI_Comm_spawn one worker rank for slot i (its own intercomm). */
int mpc_spawn(mpichan *c, int i, const char *cmd, char **argv, MPI_Info info, char *why, size_t whylen);
/* Parent: START to slot i, then its HELLO; EINTR at the slice's end (call again with again=1). */
int mpc_start(mpichan *c, int i, const char *payload, size_t len, int again, double slice);
/* Parent: STOP to slot i (once). */
int mpc_stop(mpichan *c, int i);
/* Parent: waits until slot i has left (EXIT) or died; other results are dropped. */
int mpc_join(mpichan *c, int i, double deadline);
/* Parent: slot i is done with: a spawned worker gets FINISH and is disconnected. */
void mpc_release(mpichan *c, int i);
/* Parent: sends sig to slot i, a live spawned worker on this host: 0 or an errno value. */
int mpc_signal(mpichan *c, int i, int sig);

/* Worker: the next START (its payload in c->in) or FINISH (c->finish); EINTR at the slice's end. */
int mpc_wait_start(mpichan *c, double slice);
int mpc_hello(mpichan *c);
int mpc_exit(mpichan *c, int code);

/* Process-wide: a pool uses the world's ranks (rank 0: one at a time). */
extern int mpc_world_busy;

/* Process-wide: every spawned intercomm not yet released (FINISH at exit). */
void mpc_finish_all(void);
/* Sends FINISH to world ranks 1..size-1 (rank 0 at exit). */
void mpc_finish_world(int size);

#endif

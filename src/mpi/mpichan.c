/*
** The pool's MPI transport (see mpichan.h for the design). Engine code.
**
** Deaths. Under mpirun, a rank that dies makes Open MPI 4.1 end the whole
** job (Debian's build has no ULFM): nothing here can hang, because nothing is
** left running. A spawned worker is its own job: when it dies, Open MPI ends
** that job only, and the parent learns it from the worker's pidfd (workers
** spawned on this host) and reports it to the pool as a lost worker: the
** task it was running fails with WorkerLostError, the tasks it held and had
** not started are sent to other workers. MPI itself never reports the death
** of a peer here, so every wait polls, and never waits inside MPI.
*/
#define _GNU_SOURCE
#include <errno.h>
#include <poll.h>
#include <stddef.h>
#include <sched.h>
#include <stdio.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "engine/clock.h"
#include "engine/pidfd.h"
#include "mpi/mpichan.h"

#define OK(call) ((call) == MPI_SUCCESS)

/* Growable buffers (this module does not link mp's engine, whose copies these are). */
static int buf_reserve(mp_pc_buf *b, size_t extra) {
  if (b->len + extra <= b->cap) return 0;
  size_t cap = b->cap ? b->cap : 256;
  while (cap < b->len + extra) cap *= 2;
  char *d = realloc(b->data, cap);
  if (d == NULL) return ENOMEM;
  b->data = d;
  b->cap = cap;
  return 0;
}

static void buf_free(mp_pc_buf *b) {
  free(b->data);
  b->data = NULL;
  b->len = b->cap = 0;
}

/* ---- waiting ---------------------------------------------------------- */

/*
** One pause of a poll loop that started at `since`: a yield while spinning,
** then a sleep of an eighth of the time waited so far (bounded), never past
** `until`. fds (may be NULL) wake the sleep: 1 when one is readable.
*/
static double spin_time = -1;

static int pause_since(double since, double until, struct pollfd *fds, int nfds) {
  double now = mp_now(), waited = now - since;
  if (spin_time < 0) { const char *e = getenv("MPLUA_MPI_SPIN_US"); spin_time = e ? atof(e) * 1e-6 : MPC_SPIN; }
  if (waited < spin_time) { sched_yield(); return 0; }
  double step = waited / 8;
  if (step < MPC_SLEEP_MIN) step = MPC_SLEEP_MIN;
  if (step > MPC_SLEEP_MAX) step = MPC_SLEEP_MAX;
  if (now + step > until) step = until - now;
  if (step <= 0) return 0;
  struct timespec ts = { (time_t)step, (long)((step - (double)(time_t)step) * 1e9) };
  int r = ppoll(fds, (nfds_t)nfds, &ts, NULL);
  return r > 0;
}

/* ---- sends ------------------------------------------------------------ */

/* Frees the buffers of completed Isends. */
static void progress_sends(mpichan *c) {
  for (int k = 0; k < c->nsends; ) {
    int done = 0;
    if (!OK(MPI_Test(&c->sends[k].req, &done, MPI_STATUS_IGNORE))) done = 1;
    if (done) {
      free(c->sends[k].buf);
      c->sends[k] = c->sends[--c->nsends];
    } else {
      k++;
    }
  }
}

/* Isends a copy of p (the copy lives until the send completes). */
static int post(mpichan *c, const char *p, size_t len, int dest, int tag, MPI_Comm comm) {
  if (len > (size_t)0x7fffffff) return EMSGSIZE;
  if (c->nsends == c->sendcap) {
    int cap = c->sendcap ? 2 * c->sendcap : 16;
    mpc_pending *v = realloc(c->sends, (size_t)cap * sizeof *v);
    if (v == NULL) return ENOMEM;
    c->sends = v;
    c->sendcap = cap;
  }
  char *buf = malloc(len ? len : 1);
  if (buf == NULL) return ENOMEM;
  memcpy(buf, p, len);
  mpc_pending *s = &c->sends[c->nsends];
  if (!OK(MPI_Isend(buf, (int)len, MPI_BYTE, dest, tag, comm, &s->req))) { free(buf); return EIO; }
  s->buf = buf;
  c->nsends++;
  return 0;
}

/* Sends and waits for the send to complete (small control messages). */
static int send_now(mpichan *c, const char *p, size_t len, int dest, int tag, MPI_Comm comm) {
  MPI_Request req;
  if (!OK(MPI_Isend((void *)p, (int)len, MPI_BYTE, dest, tag, comm, &req))) return EIO;
  double since = mp_now();
  for (;;) {
    int done = 0;
    if (!OK(MPI_Test(&req, &done, MPI_STATUS_IGNORE))) return EIO;
    if (done) return 0;
    pause_since(since, mp_now() + MPC_SLEEP_MAX, NULL, 0);
  }
}

/* Receives the matched message into b (grown as needed); its length in *len. */
static int take_msg(mp_pc_buf *b, MPI_Message *m, MPI_Status *st, size_t *len) {
  int n = 0;
  MPI_Get_count(st, MPI_BYTE, &n);
  b->len = 0;
  if (buf_reserve(b, (size_t)n + 1) != 0) {
    MPI_Mrecv(NULL, 0, MPI_BYTE, m, MPI_STATUS_IGNORE);   /* truncated: dropped */
    return ENOMEM;
  }
  if (!OK(MPI_Mrecv(b->data, n, MPI_BYTE, m, MPI_STATUS_IGNORE))) return EIO;
  b->len = (size_t)n;
  *len = (size_t)n;
  return 0;
}

/*
** Takes the next message from rank on comm (tag: a tag or MPI_ANY_TAG) into
** b, if one is there: *n its length (st its tag), or -1 when there is none.
** 0 or an errno value.
*/
static int take_from(mp_pc_buf *b, int rank, int tag, MPI_Comm comm, MPI_Status *st, ptrdiff_t *n) {
  int flag = 0;
  MPI_Message m;
  *n = -1;
  if (!OK(MPI_Improbe(rank, tag, comm, &flag, &m, st))) return EIO;
  if (!flag) return 0;
  size_t len;
  int err = take_msg(b, &m, st, &len);
  if (err == 0) *n = (ptrdiff_t)len;
  return err;
}

/* ---- life ------------------------------------------------------------- */

void mpc_init(mpichan *c) {
  memset(c, 0, sizeof *c);
  c->pcomm = MPI_COMM_NULL;
  c->jreq[0] = c->jreq[1] = MPI_REQUEST_NULL;
  c->closed = 1;
}

int mpc_open_parent(mpichan *c, int n, int cap, int world) {
  c->w = calloc((size_t)n, sizeof *c->w);
  if (c->w == NULL) return ENOMEM;
  for (int i = 0; i < n; i++) {
    c->w[i].comm = world ? MPI_COMM_WORLD : MPI_COMM_NULL;
    c->w[i].rank = world ? i + 1 : 0;
    c->w[i].pidfd = -1;
  }
  c->nworkers = n;
  c->cap = cap;
  c->world = world;
  c->closed = 0;
  return 0;
}

int mpc_open_worker(mpichan *c, MPI_Comm pcomm, int prank) {
  c->worker = 1;
  c->pcomm = pcomm;
  c->prank = prank;
  c->closed = 0;
  return 0;
}

/* Process-wide list of spawned intercommunicators not yet released. */
static MPI_Comm *spawned;
static int nspawned, spawncap;

static void forget_spawned(MPI_Comm comm) {
  for (int k = 0; k < nspawned; k++)
    if (spawned[k] == comm) { spawned[k] = spawned[--nspawned]; return; }
}

int mpc_world_busy;

void mpc_close(mpichan *c) {
  if (c->closed) return;
  c->closed = 1;
  if (!c->worker && c->world && !c->foreign) mpc_world_busy = 0;
  if (!c->foreign) {
    /* Sends still in flight are left to MPI (their buffers leak only if MPI never completes them). */
    for (int k = 0; k < c->nsends; k++) {
      int done = 0;
      MPI_Test(&c->sends[k].req, &done, MPI_STATUS_IGNORE);
      if (done) free(c->sends[k].buf);
      else MPI_Request_free(&c->sends[k].req);
    }
  }
  free(c->sends); c->sends = NULL; c->nsends = c->sendcap = 0;
  for (int i = 0; c->w != NULL && i < c->nworkers; i++)
    if (c->w[i].pidfd >= 0) close(c->w[i].pidfd);
  free(c->w); c->w = NULL;
  for (int k = 0; k < c->pcount; k++) free((void *)c->pending[(c->phead + k) % c->pcap].data);
  free(c->pending); c->pending = NULL; c->pcount = c->pcap = 0;
  buf_free(&c->ctl);
  buf_free(&c->in);
  for (int k = 0; k < MP_PC_RECV_BATCH; k++) buf_free(&c->rb[k]);
  for (int k = 0; k < 2; k++) {
    if (!c->foreign && c->jreq[k] != MPI_REQUEST_NULL) MPI_Request_free(&c->jreq[k]);
    buf_free(&c->jr[k]);
  }
}

/* ---- parent: choosing a worker ---------------------------------------- */

/* The live worker with the fewest batches, round robin among equals; -1 if none has room. */
static int choose(mpichan *c) {
  int best = -1;
  for (int k = 0; k < c->nworkers; k++) {
    int i = (c->next + k) % c->nworkers;
    mpc_worker *w = &c->w[i];
    if (!w->live || w->state != MPC_W_SERVING || w->stopped || w->qn >= c->cap) continue;
    if (best < 0 || w->qn < c->w[best].qn) best = i;
    if (w->qn == 0) break;
  }
  if (best >= 0) c->next = (best + 1) % c->nworkers;
  return best;
}

static int place(mpichan *c, const char *batch, size_t len) {
  int i = choose(c);
  if (i < 0) return EAGAIN;
  mpc_worker *w = &c->w[i];
  int err = post(c, batch, len, w->rank, MPC_TASK, w->comm);
  if (err) return err;
  w->q[w->qn].first = mp_pc_get64(batch + 8);
  w->q[w->qn].count = mp_pc_get32(batch + 4);
  w->qn++;
  return 0;
}

/* Sends pending batches, oldest first, while a worker has room. */
static int dispatch(mpichan *c) {
  while (c->pcount > 0) {
    mp_pc_msg *m = &c->pending[c->phead];
    int err = place(c, m->data, m->len);
    if (err == EAGAIN) return 0;
    if (err) return err;
    free((void *)m->data);
    c->phead = (c->phead + 1) % c->pcap;
    c->pcount--;
  }
  return 0;
}

static int mpc_flush(void *t) {
  mpichan *c = t;
  if (c->foreign) return EPERM;
  progress_sends(c);
  return dispatch(c);
}

/*
** Takes every batch: a copy waits in `pending` until a worker has room. The
** bytes are always copied (into an Isend's buffer or `pending`): no fd to keep.
*/
static int mpc_send(void *t, const char *batch, size_t len, const int *fds, int nfds, int *keep) {
  mpichan *c = t;
  *keep = -1;
  (void)fds;
  if (c->foreign) return EPERM;
  if (nfds != 0) return EOPNOTSUPP;    /* MPI carries bytes only (ops.fds = 0: never asked) */
  if (len < MP_PC_CHDR || batch[0] != 'K') return EINVAL;
  if (c->pcount == 0) {
    int err = place(c, batch, len);
    if (err != EAGAIN) return err;
  }
  if (c->pcount == c->pcap) {
    int cap = c->pcap ? 2 * c->pcap : 64;
    mp_pc_msg *v = malloc((size_t)cap * sizeof *v);
    if (v == NULL) return ENOMEM;
    for (int k = 0; k < c->pcount; k++) v[k] = c->pending[(c->phead + k) % c->pcap];
    free(c->pending);
    c->pending = v;
    c->phead = 0;
    c->pcap = cap;
  }
  char *copy = malloc(len);
  if (copy == NULL) return ENOMEM;
  memcpy(copy, batch, len);
  c->pending[(c->phead + c->pcount) % c->pcap] = (mp_pc_msg){ copy, len };
  c->pcount++;
  return 0;
}

/* ---- parent: receiving ------------------------------------------------ */

static int index_of(mpichan *c, MPI_Comm comm, int source) {
  if (c->world) return source >= 1 && source <= c->nworkers ? source - 1 : -1;
  for (int i = 0; i < c->nworkers; i++)
    if (c->w[i].comm == comm) return i;
  return -1;
}

/*
** Matches the next message from any worker (tag: a tag or MPI_ANY_TAG).
** 1 and *i set when one is there.
*/
static int probe(mpichan *c, int tag, MPI_Message *m, MPI_Status *st, int *i) {
  int flag = 0;
  if (c->world) {
    if (!OK(MPI_Improbe(MPI_ANY_SOURCE, tag, MPI_COMM_WORLD, &flag, m, st)) || !flag) return 0;
    *i = index_of(c, MPI_COMM_WORLD, st->MPI_SOURCE);
    return 1;
  }
  for (int k = 0; k < c->nworkers; k++) {
    int j = (c->next + k) % c->nworkers;
    mpc_worker *w = &c->w[j];
    if (w->comm == MPI_COMM_NULL) continue;      /* a dead one's last messages too */
    if (OK(MPI_Improbe(0, tag, w->comm, &flag, m, st)) && flag) { *i = j; return 1; }
  }
  return 0;
}

/* A control message from worker i (HELLO, EXIT) in b. */
static void control(mpichan *c, int i, int tag, const char *p, size_t len) {
  if (i < 0) return;
  mpc_worker *w = &c->w[i];
  if (tag == MPC_HELLO && len >= 8) {
    w->pid = (long)mp_pc_get64(p);
    size_t hl = len - 8 < MPC_HOST - 1 ? len - 8 : MPC_HOST - 1;
    memcpy(w->host, p + 8, hl);
    w->host[hl] = 0;
    w->state = MPC_W_SERVING;
  } else if (tag == MPC_EXIT && len >= 4) {
    w->exitcode = (int)mp_pc_get32(p);
    w->state = MPC_W_EXITED;
    c->pending_lost = 1;
  }
}

/* A result container from worker i: the end of a batch pops the oldest it holds. */
static void result_seen(mpichan *c, int i, const char *p, size_t len) {
  if (i < 0 || len < MP_PC_CHDR || !(p[1] & MPC_END_OF_BATCH)) return;
  mpc_worker *w = &c->w[i];
  if (w->qn > 0) {
    w->q[0] = w->q[1];
    w->qn--;
  }
}

/*
** The result messages available now; control messages are taken on the way.
** The data stays valid until the next call.
*/
static int mpc_recv(void *t, mp_pc_msg *out, int max, int *count) {
  mpichan *c = t;
  *count = 0;
  if (c->foreign) return EPERM;
  if (max > MP_PC_RECV_BATCH) max = MP_PC_RECV_BATCH;
  progress_sends(c);
  while (*count < max) {
    MPI_Message m;
    MPI_Status st;
    int i = -1;
    if (!probe(c, MPI_ANY_TAG, &m, &st, &i)) break;
    size_t len;
    if (st.MPI_TAG == MPC_RESULT) {
      mp_pc_buf *b = &c->rb[*count];
      int err = take_msg(b, &m, &st, &len);
      if (err) return err;
      if (len < MP_PC_CHDR || b->data[0] != 'K') return EPROTO;
      result_seen(c, i, b->data, len);
      if (b->data[1] & MPC_END_OF_BATCH) dispatch(c);
      out[*count].data = b->data;
      out[*count].len = len;
      (*count)++;
    } else {
      int err = take_msg(&c->ctl, &m, &st, &len);
      if (err) return err;
      control(c, i, st.MPI_TAG, c->ctl.data, len);
    }
  }
  return 0;
}

/* Spawned workers' pidfds (live, not known dead) into fds; their indexes into idx. */
static int gather_fds(mpichan *c, struct pollfd *fds, int *idx, int max) {
  int n = 0;
  for (int i = 0; i < c->nworkers && n < max; i++) {
    mpc_worker *w = &c->w[i];
    if (w->pidfd >= 0 && w->state != MPC_W_DEAD) {
      fds[n] = (struct pollfd){ .fd = w->pidfd, .events = POLLIN };
      idx[n++] = i;
    }
  }
  return n;
}

/*
** A spawned worker on this host is signalled through its pidfd; where there
** are no pidfds (kernels before 5.3; valgrind, which does not know the
** system call) by its pid. The pid is the worker's for as long as its
** parent, Open MPI's daemon, has not reaped it, and the daemon reaps at
** once: a pid reused in between is a window this fallback accepts.
*/
int mpc_signal(mpichan *c, int i, int sig) {
  mpc_worker *w = &c->w[i];
  if (!w->here || w->state == MPC_W_DEAD) return ESRCH;
  if (w->pidfd >= 0) return syscall(SYS_pidfd_send_signal, w->pidfd, sig, NULL, 0) == 0 ? 0 : errno;
  return w->pid > 0 && kill((pid_t)w->pid, sig) == 0 ? 0 : errno;
}

/* Without a pidfd: the spawned workers on this host whose pid is gone are marked dead; 1 when one was. */
static int gone_by_pid(mpichan *c) {
  int found = 0;
  for (int i = 0; i < c->nworkers; i++) {
    mpc_worker *w = &c->w[i];
    if (w->here && w->pidfd < 0 && w->state != MPC_W_DEAD && w->pid > 0 &&
        kill((pid_t)w->pid, 0) < 0 && errno == ESRCH) {
      w->state = MPC_W_DEAD;
      found = 1;
    }
  }
  return found;
}

static int any_message(mpichan *c) {
  int flag = 0;
  if (c->world) return OK(MPI_Iprobe(MPI_ANY_SOURCE, MPI_ANY_TAG, MPI_COMM_WORLD, &flag, MPI_STATUS_IGNORE)) && flag;
  for (int i = 0; i < c->nworkers; i++) {
    mpc_worker *w = &c->w[i];
    if (w->comm == MPI_COMM_NULL) continue;
    if (OK(MPI_Iprobe(0, MPI_ANY_TAG, w->comm, &flag, MPI_STATUS_IGNORE)) && flag) return 1;
  }
  return 0;
}

/*
** Marks the spawned workers whose pidfd is readable dead; 1 when one was found.
**
** Then the other spawned workers are ended too. Open MPI 4.1 (no ULFM) ends
** the dead rank's job, and after that the parent's messages to the other
** spawned ranks were seen not to arrive (its TCP connections to them fail to
** reopen): a pool that kept them would wait for results that never come. So
** every spawned worker of the pool is killed and replaced: the tasks they
** were running fail with WorkerLostError, those they had not started are sent
** to the new ones. Never a hang, at the price of those tasks.
*/
static int reap(mpichan *c, struct pollfd *fds, int *idx, int n) {
  int found = gone_by_pid(c);
  for (int k = 0; k < n; k++) {
    if (!(fds[k].revents & (POLLIN | POLLHUP | POLLERR))) continue;
    mpc_worker *w = &c->w[idx[k]];
    /* Its last messages may still be in MPI: the parent drains before lost(). */
    w->state = MPC_W_DEAD;
    found = 1;
  }
  for (int i = 0; found && i < c->nworkers; i++) {
    mpc_worker *w = &c->w[i];
    if (w->here && w->state != MPC_W_DEAD) {
      mpc_signal(c, i, SIGKILL);
      w->state = MPC_W_DEAD;           /* no batch goes to it any more */
    }
  }
  return found;
}

static int mpc_wait(void *t, double deadline, int *lost) {
  mpichan *c = t;
  if (c->foreign) return EPERM;
  if (c->pending_lost) { c->pending_lost = 0; *lost = 1; return 0; }
  struct pollfd fds[256];
  int idx[256];
  int nf = gather_fds(c, fds, idx, 256);
  double since = mp_now();
  int sliced;
  double until = mp_slice_end(deadline, &sliced);     /* once: the slice runs from the call */
  for (;;) {
    progress_sends(c);
    int err = dispatch(c);
    if (err) return err;
    if (any_message(c)) return 0;
    if (mp_now() >= until) return sliced ? EINTR : ETIMEDOUT;
    int woke = pause_since(since, until, nf ? fds : NULL, nf);
    if ((woke || c->nbypid) && reap(c, fds, idx, woke ? nf : 0)) {
      *lost = 1;
      return 0;
    }
  }
}

static void mpc_started(void *t, int i, int sentinel) {
  mpichan *c = t;
  c->w[i].live = 1;
}

static const char empty_journal[MP_PC_CHDR] = { 'K' };

/*
** What worker i held when it ended: its oldest batch (it was running that
** batch's first unsettled task, as far as the parent can know: results come
** at the end of a batch) and, flagged as `taking`, any later batch, which the
** pool sends again once every worker is idle.
*/
static void mpc_lost(void *t, int i, mp_pc_held *h) {
  mpichan *c = t;
  mpc_worker *w = &c->w[i];
  memset(h, 0, sizeof *h);
  h->journal = empty_journal;
  h->journal_len = MP_PC_CHDR;
  if (w->qn > 0) {
    h->task = w->q[0].first;
    h->batch_first = w->q[0].first;
    h->batch_count = w->q[0].count;
    h->taking = w->qn > 1;
  }
  w->qn = 0;
  w->live = 0;
}

static int mpc_idle(void *t) { return ((mpichan *)t)->pcount == 0; }
static int mpc_busy(void *t, int i) { return ((mpichan *)t)->w[i].qn > 0; }

/*
** The task a worker runs, for per-task timeouts: only a spawned worker can be
** killed (a rank of mpirun's job cannot be stopped alone), so only theirs.
*/
static uint64_t mpc_running(void *t, int i) {
  mpc_worker *w = &((mpichan *)t)->w[i];
  return w->spawned && w->qn > 0 && w->q[0].count == 1 ? w->q[0].first : 0;
}

/* STOP to every worker not stopped yet: each leaves after the batches it holds. */
static void mpc_close_tasks(void *t) {
  mpichan *c = t;
  if (c->foreign || c->worker) return;
  for (int i = 0; i < c->nworkers; i++)
    if (c->w[i].live) mpc_stop(c, i);
}

static int mpc_fd(void *t) { return -1; }

static void mpc_after_fork(void *t, int worker) { ((mpichan *)t)->foreign = 1; }

/* The pool closes the parent's side; a worker's side is reused by the pools it serves. */
static void mpc_close_op(void *t) { if (!((mpichan *)t)->worker) mpc_close(t); }

/* ---- parent: worker lives --------------------------------------------- */

int mpc_spawn(mpichan *c, int i, const char *cmd, char **argv, MPI_Info info, char *why, size_t whylen) {
  mpc_worker *w = &c->w[i];
  MPI_Comm inter = MPI_COMM_NULL;
  int code = MPI_SUCCESS;
  int rc = MPI_Comm_spawn(cmd, argv, 1, info, 0, MPI_COMM_SELF, &inter, &code);
  if (rc != MPI_SUCCESS || code != MPI_SUCCESS) {
    int len = 0;
    char s[MPI_MAX_ERROR_STRING];
    MPI_Error_string(rc != MPI_SUCCESS ? rc : code, s, &len);
    snprintf(why, whylen, "%s", s);
    return EIO;
  }
  MPI_Comm_set_errhandler(inter, MPI_ERRORS_RETURN);
  if (nspawned == spawncap) {
    int cap = spawncap ? 2 * spawncap : 8;
    MPI_Comm *v = realloc(spawned, (size_t)cap * sizeof *v);
    if (v == NULL) { snprintf(why, whylen, "not enough memory"); return ENOMEM; }
    spawned = v;
    spawncap = cap;
  }
  spawned[nspawned++] = inter;
  w->comm = inter;
  w->rank = 0;
  w->spawned = 1;
  return 0;
}

int mpc_start(mpichan *c, int i, const char *payload, size_t len, int again, double slice) {
  mpc_worker *w = &c->w[i];
  if (!again) {
    w->state = MPC_W_NONE;
    w->stopped = 0;
    w->qn = 0;
    int err = send_now(c, payload, len, w->rank, MPC_START, w->comm);
    if (err) return err;
  }
  double since = mp_now(), until = since + slice;
  for (;;) {
    MPI_Status st;
    ptrdiff_t n;
    int err = take_from(&c->ctl, w->rank, MPC_HELLO, w->comm, &st, &n);
    if (err) return err;
    if (n >= 0) {
      control(c, i, MPC_HELLO, c->ctl.data, (size_t)n);
      if (w->spawned && w->pidfd < 0) {
        char host[MPC_HOST];
        gethostname(host, sizeof host);
        host[MPC_HOST - 1] = 0;
        if (strcmp(host, w->host) == 0) {
          w->here = 1;
          w->pidfd = mp_pidfd_open((pid_t)w->pid);
          if (w->pidfd < 0) c->nbypid++;       /* watched by pid (gone_by_pid) */
        }
      }
      return 0;
    }
    if (mp_now() >= until) return EINTR;
    pause_since(since, until, NULL, 0);
  }
}

int mpc_stop(mpichan *c, int i) {
  mpc_worker *w = &c->w[i];
  if (w->stopped || w->state == MPC_W_DEAD || w->state == MPC_W_EXITED) return 0;
  w->stopped = 1;
  return post(c, "", 0, w->rank, MPC_STOP, w->comm);
}

int mpc_join(mpichan *c, int i, double deadline) {
  mpc_worker *w = &c->w[i];
  struct pollfd fds[256];
  int idx[256];
  int nf = gather_fds(c, fds, idx, 256);
  double since = mp_now();
  int sliced;
  double until = mp_slice_end(deadline, &sliced);     /* once: the slice runs from the call */
  for (;;) {
    progress_sends(c);
    MPI_Message m;
    MPI_Status st;
    int j;
    while (probe(c, MPI_ANY_TAG, &m, &st, &j)) {
      size_t n;
      int err = take_msg(&c->ctl, &m, &st, &n);
      if (err) return err;
      if (st.MPI_TAG == MPC_RESULT) result_seen(c, j, c->ctl.data, n);   /* dropped */
      else control(c, j, st.MPI_TAG, c->ctl.data, n);
    }
    if (w->state == MPC_W_EXITED || w->state == MPC_W_DEAD) return 0;
    if (mp_now() >= until) return sliced ? EINTR : ETIMEDOUT;
    int woke = pause_since(since, until, nf ? fds : NULL, nf);
    if (woke || c->nbypid) reap(c, fds, idx, woke ? nf : 0);
  }
}

void mpc_release(mpichan *c, int i) {
  mpc_worker *w = &c->w[i];
  if (w->pidfd >= 0) { close(w->pidfd); w->pidfd = -1; }
  else if (w->here) c->nbypid--;
  w->here = 0;
  if (!w->spawned || w->comm == MPI_COMM_NULL) return;
  MPI_Comm comm = w->comm;
  forget_spawned(comm);
  if (w->state != MPC_W_DEAD) {
    /* It leaves at once; both sides disconnect (a collective of two). */
    send_now(c, "", 0, 0, MPC_FINISH, comm);
    MPI_Comm_disconnect(&comm);
  }
  /* A dead one's communicator is left as it is: freeing it would talk to the dead. */
  w->comm = MPI_COMM_NULL;
  w->spawned = 0;
  w->state = MPC_W_NONE;
  w->pid = 0;
  w->host[0] = 0;
}

/* At exit: FINISH, then disconnect, as mpc_release does (the spawned side does the same). */
void mpc_finish_all(void) {
  for (int k = 0; k < nspawned; k++) {
    MPI_Request req;
    if (OK(MPI_Isend("", 0, MPI_BYTE, 0, MPC_FINISH, spawned[k], &req))) MPI_Request_free(&req);
    MPI_Comm_disconnect(&spawned[k]);
  }
  nspawned = 0;
}

void mpc_finish_world(int size) {
  for (int r = 1; r < size; r++) {
    MPI_Request req;
    if (OK(MPI_Isend("", 0, MPI_BYTE, r, MPC_FINISH, MPI_COMM_WORLD, &req))) MPI_Request_free(&req);
  }
}

/* ---- worker ----------------------------------------------------------- */

int mpc_wait_start(mpichan *c, double slice) {
  double since = mp_now(), until = since + slice;
  for (;;) {
    MPI_Status st;
    ptrdiff_t n;
    int err = take_from(&c->in, c->prank, MPI_ANY_TAG, c->pcomm, &st, &n);
    if (err) return err;
    if (n >= 0) {
      if (st.MPI_TAG == MPC_START) return 0;
      if (st.MPI_TAG == MPC_FINISH) { c->finish = 1; return 0; }
      continue;            /* a STOP for a pool this worker has left */
    }
    if (mp_now() >= until) return EINTR;
    pause_since(since, until, NULL, 0);
  }
}

int mpc_hello(mpichan *c) {
  char msg[8 + MPC_HOST];
  mp_pc_put64(msg, (uint64_t)getpid());
  memset(msg + 8, 0, MPC_HOST);
  gethostname(msg + 8, MPC_HOST - 1);
  return send_now(c, msg, 8 + strlen(msg + 8), c->prank, MPC_HELLO, c->pcomm);
}

int mpc_exit(mpichan *c, int code) {
  char msg[4];
  mp_pc_put32(msg, (uint32_t)code);
  return send_now(c, msg, 4, c->prank, MPC_EXIT, c->pcomm);
}

/* Waits until journal k's send has completed (the parent takes it in its waits). */
static int settle_journal(mpichan *c, int k) {
  if (c->jreq[k] == MPI_REQUEST_NULL) return 0;
  double since = mp_now();
  for (;;) {
    int done = 0;
    if (!OK(MPI_Test(&c->jreq[k], &done, MPI_STATUS_IGNORE))) return EIO;
    if (done) return 0;
    pause_since(since, mp_now() + MPC_SLEEP_MAX, NULL, 0);
  }
}

static int mpc_take(void *t, int index, const char **data, size_t *len, const int **fds, int *nfds) {
  mpichan *c = t;
  *fds = NULL;
  *nfds = 0;
  if (c->foreign) return EPERM;
  if (c->finish) return EPIPE;
  double since = mp_now();
  int sliced;
  double until = mp_slice_end(since + 3600, &sliced);
  for (;;) {
    MPI_Status st;
    ptrdiff_t n;
    int err = take_from(&c->in, c->prank, MPI_ANY_TAG, c->pcomm, &st, &n);
    if (err) return err;
    if (n >= 0) {
      switch (st.MPI_TAG) {
        case MPC_TASK:
          if ((size_t)n < MP_PC_CHDR || c->in.data[0] != 'K') return EPROTO;
          c->in_batch = 1;
          *data = c->in.data;
          *len = (size_t)n;
          return 0;
        case MPC_STOP: return EPIPE;
        case MPC_FINISH: c->finish = 1; return EPIPE;
        default: return EPROTO;
      }
    }
    if (c->jreq[c->jcur ^ 1] != MPI_REQUEST_NULL) {
      int done = 0;
      MPI_Test(&c->jreq[c->jcur ^ 1], &done, MPI_STATUS_IGNORE);
    }
    if (mp_now() >= until) return EINTR;
    pause_since(since, until, NULL, 0);
  }
}

static void mpc_begin(void *t, int index, uint64_t id) {}

/* Sends the journal being filled (flagged when it ends a batch); the other one fills next. */
static int send_journal(mpichan *c, int end) {
  mp_pc_buf *j = &c->jr[c->jcur];
  if (j->len < MP_PC_CHDR) {
    if (buf_reserve(j, MP_PC_CHDR) != 0) return ENOMEM;
    j->len = MP_PC_CHDR;
  }
  memset(j->data, 0, MP_PC_CHDR);
  j->data[0] = 'K';
  j->data[1] = end ? MPC_END_OF_BATCH : 0;
  mp_pc_put32(j->data + 4, c->jn);
  if (j->len > (size_t)0x7fffffff) return EMSGSIZE;
  if (!OK(MPI_Isend(j->data, (int)j->len, MPI_BYTE, c->prank, MPC_RESULT, c->pcomm, &c->jreq[c->jcur])))
    return EIO;
  c->jcur ^= 1;
  c->jn = 0;
  int err = settle_journal(c, c->jcur);     /* the one to fill next may still be in flight */
  c->jr[c->jcur].len = MP_PC_CHDR;
  return err;
}

static int mpc_keep(void *t, int index, const char *r, size_t len) {
  mpichan *c = t;
  mp_pc_buf *j = &c->jr[c->jcur];
  if (j->len < MP_PC_CHDR) {
    if (buf_reserve(j, MP_PC_CHDR) != 0) return ENOMEM;
    j->len = MP_PC_CHDR;
  }
  if (buf_reserve(j, 4 + len) != 0) return ENOMEM;
  mp_pc_put32(j->data + j->len, (uint32_t)len);
  memcpy(j->data + j->len + 4, r, len);
  j->len += 4 + len;
  c->jn++;
  if (j->len > MPC_JOURNAL_MAX) return send_journal(c, 0);
  return 0;
}

/*
** The end of a batch is flagged (the parent then pops the oldest batch it
** counts this worker holding). end() outside a batch (after an initializer's
** error was kept) sends the journal unflagged: the worker may already hold a
** batch it never ran, which must stay counted so that its loss resends it.
*/
static int mpc_end(void *t, int index) {
  mpichan *c = t;
  int in_batch = c->in_batch;
  c->in_batch = 0;
  return send_journal(c, in_batch);
}

const mp_pool_transport_ops mpc_ops = {
  .magic = MP_POOL_OPS_MAGIC, .version = MP_POOL_OPS_VERSION, .name = "mpi", .fds = 0,
  .send = mpc_send, .flush = mpc_flush, .recv = mpc_recv, .wait = mpc_wait,
  .started = mpc_started, .lost = mpc_lost, .idle = mpc_idle, .busy = mpc_busy,
  .running = mpc_running, .take = mpc_take, .begin = mpc_begin, .keep = mpc_keep,
  .end = mpc_end, .close_tasks = mpc_close_tasks, .fd = mpc_fd,
  .after_fork = mpc_after_fork, .close = mpc_close_op,
};

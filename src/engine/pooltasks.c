/*
** The pool's tasks in flight (see pooltasks.h). Engine code: no Lua.
*/
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "engine/pooltasks.h"

int mp_pt_init(mp_pt *p, int nslots) {
  memset(p, 0, sizeof *p);
  p->mask = MP_PT_RING0 - 1;
  p->low = 1;
  p->nslots = nslots;
  p->tasks = calloc(p->mask + 1, sizeof(mp_pt_task));
  p->seen_id = calloc((size_t)nslots, sizeof(uint64_t));
  p->seen_at = calloc((size_t)nslots, sizeof(double));
  if (!p->tasks || !p->seen_id || !p->seen_at) { mp_pt_free(p); return ENOMEM; }
  return 0;
}

static void spare(mp_pt *p, char *data, size_t cap) {
  if (data == NULL) return;
  if (p->nspare < MP_PT_SPARES) p->spare[p->nspare++] = (mp_pc_buf){ data, 0, cap };
  else free(data);
}

static void close_all(int *fds, int *n) {
  for (int i = 0; i < *n; i++) close(fds[i]);
  *n = 0;
}

static void release(mp_pt *p, mp_pt_batch *b) {
  if (b == NULL || --b->refs > 0) return;
  if (b->fd >= 0) { close(b->fd); p->nfds--; }
  close_all(b->fds, &b->nfds);
  free(b->fds);
  spare(p, b->data, b->cap);
  free(b);
}

void mp_pt_kept(mp_pt *p, mp_pt_batch *b, int fd) {
  if (fd < 0) return;
  if (p->nfds >= MP_PT_FDS) { close(fd); return; }
  b->fd = fd;
  p->nfds++;
  spare(p, b->data, b->cap);      /* the next batch is built in the same memory */
  b->data = NULL;
}

const char *mp_pt_bytes(mp_pt_batch *b, char **tmp) {
  *tmp = NULL;
  if (b->data != NULL) return b->data;
  char *d = malloc(b->len);
  if (d == NULL) return NULL;
  for (size_t off = 0; off < b->len; ) {
    ssize_t n = pread(b->fd, d + off, b->len - off, (off_t)off);
    if (n <= 0) { if (n < 0 && errno == EINTR) continue; free(d); return NULL; }
    off += (size_t)n;
  }
  *tmp = d;
  return d;
}

void mp_pt_forget(mp_pt *p) {
  for (uint64_t id = p->low; p->tasks != NULL && id <= p->next_id; id++) {
    mp_pt_task *t = mp_pt_find(p, id);
    if (t != NULL) { release(p, t->b); *t = (mp_pt_task){ 0 }; }
  }
  p->low = p->next_id + 1;
  p->inflight = 0;
  p->nresend = 0;
  p->ntimed = 0;
  for (int i = 0; p->seen_id != NULL && i < p->nslots; i++) p->seen_id[i] = 0;
  p->batch_n = 0;
  p->out.len = 0;
  close_all(p->ofds, &p->onfds);
}

void mp_pt_drop_fds(mp_pt *p) {
  for (uint64_t id = p->low; p->tasks != NULL && id <= p->next_id; id++) {
    mp_pt_task *t = mp_pt_find(p, id);
    if (t != NULL && t->b != NULL && t->b->fd >= 0) { close(t->b->fd); t->b->fd = -1; }
    if (t != NULL && t->b != NULL) close_all(t->b->fds, &t->b->nfds);
  }
  p->nfds = 0;
  close_all(p->ofds, &p->onfds);
}

void mp_pt_free(mp_pt *p) {
  mp_pt_forget(p);
  free(p->tasks); p->tasks = NULL;
  free(p->jobs); p->jobs = NULL;
  free(p->freej); p->freej = NULL;
  free(p->resend); p->resend = NULL;
  free(p->timed); p->timed = NULL;
  while (p->nspare > 0) mp_pc_buf_free(&p->spare[--p->nspare]);
  free(p->seen_id); p->seen_id = NULL;
  free(p->seen_at); p->seen_at = NULL;
  mp_pc_buf_free(&p->out);
  free(p->ofds); p->ofds = NULL;
  p->ofdcap = 0;
}

/* ---- the open batch --------------------------------------------------- */

int mp_pt_entry_begin(mp_pt *p, int kind, uint64_t id, uint32_t fn_id,
                      const char *fn, size_t fn_len, uint32_t count, size_t *entry) {
  mp_pc_buf *b = &p->out;
  if (b->data == NULL && p->nspare > 0) *b = p->spare[--p->nspare];
  if (b->len == 0) {
    if (mp_pc_reserve(b, MP_PC_CHDR) != 0) return ENOMEM;
    memset(b->data, 0, MP_PC_CHDR);
    b->data[0] = 'K';
    b->len = MP_PC_CHDR;
    p->batch_n = 0;
    p->batch_first = id;
  }
  /*
  ** The worker that runs this task has just run the previous one: same
  ** function, no bytes (fn_id 0: a function that carries mp objects, never
  ** cached, always sent).
  */
  if (p->batch_n > 0 && p->batch_fn == fn_id && fn_id != 0) fn_len = 0;
  if (mp_pc_reserve(b, 4 + MP_PT_HDR + fn_len) != 0) return ENOMEM;
  char *e = b->data + b->len;
  memset(e, 0, 4 + MP_PT_HDR);
  e[4] = (char)kind;
  mp_pc_put32(e + 8, fn_id);
  mp_pc_put64(e + 12, id);
  mp_pc_put32(e + 20, (uint32_t)fn_len);
  mp_pc_put32(e + 24, count);
  memcpy(e + 4 + MP_PT_HDR, fn, fn_len);
  *entry = b->len;
  b->len += 4 + MP_PT_HDR + fn_len;
  return 0;
}

void mp_pt_entry_end(mp_pt *p, size_t entry, uint32_t fn_id) {
  mp_pc_buf *b = &p->out;
  mp_pc_put32(b->data + entry, (uint32_t)(b->len - entry - 4));
  p->batch_n++;
  p->batch_fn = fn_id;
  mp_pc_put32(b->data + 4, p->batch_n);
  mp_pc_put64(b->data + 8, p->batch_first);
}

int mp_pt_entry_fds(mp_pt *p, size_t entry, const int *fds, int nfds) {
  if (nfds > MP_PT_TASK_FDS) return E2BIG;
  if (p->onfds + nfds > p->ofdcap) {
    int cap = p->ofdcap ? 2 * p->ofdcap : 16;
    while (cap < p->onfds + nfds) cap *= 2;
    int *f = realloc(p->ofds, sizeof(int) * (size_t)cap);
    if (f == NULL) return ENOMEM;
    p->ofds = f;
    p->ofdcap = cap;
  }
  int base = p->onfds;
  for (int i = 0; i < nfds; i++) {
    int d = fcntl(fds[i], F_DUPFD_CLOEXEC, 3);
    if (d < 0) { int err = errno; while (p->onfds > base) close(p->ofds[--p->onfds]); return err; }
    p->ofds[p->onfds++] = d;
  }
  char *e = p->out.data + entry + 4;
  mp_pc_put32(e + 24, (uint32_t)base);
  mp_pc_put32(e + 28, (uint32_t)nfds);
  return 0;
}

void mp_pt_entry_drop(mp_pt *p, size_t entry) {
  p->out.len = p->batch_n == 0 ? 0 : entry;
}

int mp_pt_commit(mp_pt *p, mp_pt_batch **out) {
  *out = NULL;
  if (p->batch_n == 0) { p->out.len = 0; return 0; }
  mp_pt_batch *b = malloc(sizeof *b);
  if (b == NULL) return ENOMEM;
  *b = (mp_pt_batch){ (int)p->batch_n, p->out.len, p->out.cap, p->out.data, -1, NULL, 0 };
  p->out = (mp_pc_buf){ NULL, 0, 0 };
  if (p->onfds > 0) {                /* the batch takes the fds; the list is the next batch's */
    b->fds = p->ofds;
    b->nfds = p->onfds;
    p->ofds = NULL;
    p->onfds = p->ofdcap = 0;
  }
  for (uint32_t k = 0; k < p->batch_n; k++) mp_pt_find(p, p->batch_first + k)->b = b;
  p->batch_n = 0;
  *out = b;
  return 0;
}

/* ---- tasks ------------------------------------------------------------ */

mp_pt_task *mp_pt_find(mp_pt *p, uint64_t id) {
  mp_pt_task *t = &p->tasks[id & p->mask];
  return t->id == id && id != 0 ? t : NULL;
}

int mp_pt_place_free(const mp_pt *p, uint64_t id) { return p->tasks[id & p->mask].id == 0; }

int mp_pt_grow(mp_pt *p) {
  uint64_t cap = (p->mask + 1) * 2;
  mp_pt_task *n = calloc(cap, sizeof(mp_pt_task));
  if (n == NULL) return ENOMEM;
  for (uint64_t i = 0; i <= p->mask; i++)
    if (p->tasks[i].id != 0) n[p->tasks[i].id & (cap - 1)] = p->tasks[i];
  free(p->tasks);
  p->tasks = n;
  p->mask = cap - 1;
  return 0;
}

int mp_pt_record(mp_pt *p, uint64_t id, int h, int64_t off, size_t at, double limit) {
  if (limit > 0) {
    if (p->ntimed == p->captimed) {
      int cap = p->captimed ? 2 * p->captimed : 16;
      mp_pt_timed *t = realloc(p->timed, sizeof(mp_pt_timed) * (size_t)cap);
      if (t == NULL) return ENOMEM;
      p->timed = t;
      p->captimed = cap;
    }
    p->timed[p->ntimed++] = (mp_pt_timed){ id, limit, 0 };
  }
  p->tasks[id & p->mask] = (mp_pt_task){ id, off, NULL, (uint32_t)at, h };
  p->inflight++;
  if (h > 0) p->jobs[h - 1].outstanding++;
  return 0;
}

uint32_t mp_pt_count(const mp_pt_task *t) {
  char c[4];
  if (t->b == NULL) return 0;
  if (t->b->data != NULL) return mp_pc_get32(t->b->data + t->at + 4 + 20);
  return pread(t->b->fd, c, 4, (off_t)(t->at + 4 + 20)) == 4 ? mp_pc_get32(c) : 0;
}

static mp_pt_timed *timed_of(mp_pt *p, uint64_t id) {
  for (int i = 0; i < p->ntimed; i++) if (p->timed[i].id == id) return &p->timed[i];
  return NULL;
}

int mp_pt_settle(mp_pt *p, mp_pt_task *t) {
  mp_pt_timed *tm = p->ntimed > 0 ? timed_of(p, t->id) : NULL;
  if (tm != NULL) *tm = p->timed[--p->ntimed];
  int h = t->job;
  uint64_t id = t->id;
  release(p, t->b);
  *t = (mp_pt_task){ 0 };
  p->inflight--;
  if (id == p->low)                  /* the oldest settled: walks start after what is free */
    while (p->low <= p->next_id && p->tasks[p->low & p->mask].id != p->low) p->low++;
  if (h == 0) return 0;
  mp_pt_job *j = &p->jobs[h - 1];
  j->outstanding--;
  return j->sealed && j->outstanding == 0;
}

/* ---- jobs ------------------------------------------------------------- */

int mp_pt_job_new(mp_pt *p, int stream, int *h) {
  if (p->nfree > 0) *h = p->freej[--p->nfree];
  else {
    if (p->njobs % 64 == 0) {
      mp_pt_job *j = realloc(p->jobs, sizeof(mp_pt_job) * (size_t)(p->njobs + 64));
      if (j == NULL) return ENOMEM;
      p->jobs = j;
      int *f = realloc(p->freej, sizeof(int) * (size_t)(p->njobs + 64));
      if (f == NULL) return ENOMEM;
      p->freej = f;
    }
    *h = ++p->njobs;
  }
  p->jobs[*h - 1] = (mp_pt_job){ 0, 0, 1, (char)stream, 0 };
  return 0;
}

void mp_pt_job_free(mp_pt *p, int h) {
  p->jobs[h - 1].used = 0;
  p->freej[p->nfree++] = h;
}

int mp_pt_seal(mp_pt *p, int h) {
  p->jobs[h - 1].sealed = 1;
  return p->jobs[h - 1].outstanding == 0;
}

/* ---- resends ---------------------------------------------------------- */

int mp_pt_queue(mp_pt *p, uint64_t id) {
  if (p->nresend == p->capresend) {
    size_t cap = p->capresend ? 2 * p->capresend : 64;
    uint64_t *r = realloc(p->resend, sizeof(uint64_t) * cap);
    if (r == NULL) return ENOMEM;
    p->resend = r;
    p->capresend = cap;
  }
  p->resend[p->nresend++] = id;
  return 0;
}

int mp_pt_queue_all(mp_pt *p) {
  for (uint64_t id = p->low; id <= p->next_id; id++) {
    mp_pt_task *t = mp_pt_find(p, id);
    if (t != NULL && t->b != NULL) {
      int err = mp_pt_queue(p, t->id);
      if (err) return err;
    }
  }
  return 0;
}

/*
** Alone in its message, the task carries its function's bytes again (its
** batch may have sent them with an earlier task only).
*/
int mp_pt_next_resend(mp_pt *p, mp_pt_task **out) {
  *out = NULL;
  while (p->nresend > 0) {
    mp_pt_task *t = mp_pt_find(p, p->resend[--p->nresend]);
    if (t == NULL || t->b == NULL) continue;         /* settled meanwhile */
    /* The entry that carries its function: itself, or the last earlier one that did. */
    char *tmp;
    const char *data = mp_pt_bytes(t->b, &tmp);
    if (data == NULL) { p->nresend++; return ENOMEM; }
    const char *e = data + t->at, *f = e;
    uint32_t len = mp_pc_get32(e), fn_len = mp_pc_get32(e + 20), add = 0;
    if (fn_len == 0) {
      for (const char *q = data + MP_PC_CHDR; q < e; q += 4 + mp_pc_get32(q))
        if (mp_pc_get32(q + 20) > 0) f = q;
      add = mp_pc_get32(f + 20);
    }
    size_t total = MP_PC_CHDR + 4 + len + add;
    mp_pt_batch *b = malloc(sizeof *b);
    char *d = malloc(total);
    /* Its mp objects' fds go again, duplicated from its batch's, as fds[0 .. nfds). */
    uint32_t fd_base = mp_pc_get32(e + 28), nfds = mp_pc_get32(e + 32);
    int *fds = nfds > 0 ? malloc(sizeof(int) * nfds) : NULL;
    int nf = 0, dup_err = 0;
    if (nfds > 0 && fds != NULL && fd_base + nfds <= (uint32_t)t->b->nfds) {
      for (; nf < (int)nfds; nf++)
        if ((fds[nf] = fcntl(t->b->fds[fd_base + (uint32_t)nf], F_DUPFD_CLOEXEC, 3)) < 0) { dup_err = errno; break; }
    } else if (nfds > 0) dup_err = fds == NULL ? ENOMEM : EPROTO;
    if (b == NULL || d == NULL || dup_err) {
      close_all(fds, &nf);
      free(fds); free(b); free(d); free(tmp);
      p->nresend++;
      return dup_err ? dup_err : ENOMEM;
    }
    memset(d, 0, MP_PC_CHDR);
    d[0] = 'K';
    mp_pc_put32(d + 4, 1);
    mp_pc_put64(d + 8, t->id);
    char *q = d + MP_PC_CHDR;
    mp_pc_put32(q, len + add);
    memcpy(q + 4, e + 4, MP_PT_HDR);
    mp_pc_put32(q + 20, fn_len + add);
    mp_pc_put32(q + 28, 0);
    memcpy(q + 4 + MP_PT_HDR, f + 4 + MP_PT_HDR, add);
    memcpy(q + 4 + MP_PT_HDR + add, e + 4 + MP_PT_HDR, len - MP_PT_HDR);
    *b = (mp_pt_batch){ 1, total, total, d, -1, fds, nf };
    free(tmp);
    release(p, t->b);
    t->b = b;
    t->at = MP_PC_CHDR;
    *out = t;
    return 0;
  }
  return 0;
}

void mp_pt_unqueue(mp_pt *p, mp_pt_task *t) {
  p->resend[p->nresend++] = t->id;   /* its place was just freed: no growth */
}

/* ---- timed tasks ------------------------------------------------------ */

int mp_pt_overdue(mp_pt *p, int i, uint64_t running, double now) {
  mp_pt_timed *tm = running != 0 ? timed_of(p, running) : NULL;
  if (tm == NULL || tm->overdue) return 0;
  if (p->seen_id[i] != running) {
    p->seen_id[i] = running;
    p->seen_at[i] = now;
    return 0;
  }
  if (now - p->seen_at[i] < tm->limit) return 0;
  tm->overdue = 1;
  return 1;
}

/*
** The pool's binding, the parent's side: encoding tasks, the tasks in flight,
** decoding results (the codec is lpoolcodec.c, the loop a worker runs
** lpoolwork.c, what they share and the wire format lpool.h). Jobs (queueing,
** chunking, windows, callbacks, AsyncResult, the workers' lives) are
** lua/mp/pool.lua's; moving bytes is the transport's (src/engine/poolchan.h,
** reached only through its ops).
**
** What this file owns. Every task sent and not yet settled has a record here
** (a C ring indexed by task id): its job, where its values go, and the batch
** message that carried it, kept until its tasks settle so that a task a dead
** worker never started is sent again as it was. Each job with tasks in flight
** has a handle here; the job object and its result table live in the
** transport's user values (handle --> job, job --> handle; handle --> dest).
** Results are decoded straight into the result tables; Lua hears job-level
** events only (EV_* below): never a field of a Lua table is read by name.
**
** mp objects in tasks (a Queue, a Lock, a Value... as an argument, inside one,
** or captured by the task's function: beyond Python, which refuses) travel as
** the serializer's tag 19 with their fds passed along the batch (mp_travel.h):
** each task's fds are a range of its batch's (fd_base, nfds), duplicated when
** the task is encoded and kept with the batch until its tasks settle
** (pooltasks.h), so a task sent again after its worker died carries them
** again. A function that carries mp objects gets fn_id 0: it is sent with
** each task and never cached by a worker (the same bytes may name other
** objects). A transport that passes bytes only (ops->fds == 0: MPI) refuses
** them when the task is encoded, saying what works (REFUSE_FDS).
*/
#define _GNU_SOURCE
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "lpool.h"
#include "engine/clock.h"

#define REFUSE_FDS "an %s cannot travel to a worker of this pool: its transport passes bytes " \
  "only, not the fds and shared memory an mp object lives on (an MPI worker rank may run on another " \
  "machine); create the object where it is used (e.g. in the Pool's initializer, which runs on each " \
  "worker), or pass plain values"

/* Event kinds, as pool.lua names them: (job, kind, x) triples in the events table. */
enum { EV_VALUES = 1, EV_CHUNK, EV_DONE, EV_ERROR, EV_LOST, EV_OVERDUE, EV_ABANDONED, EV_INIT };

const mp_class mp_pool_tr_class = { "mp.PoolTransport", sizeof(pool_tr), NULL };
#define TR_C mp_pool_tr_class


/*
** A transport travels (mp_travel.h) to a worker started through the fork
** server (Pool{context = "forkserver"}): the worker's ends of the local
** transport, passed with SCM_RIGHTS; the child gets a worker-side transport.
*/
static int tr_export(lua_State *L, int idx, mp_travel_desc *d) {
  pool_tr *t = lua_touserdata(L, idx);
  size_t len;
  if (t->impl != NULL && t->ops != &mp_poolchan_ops)     /* another module's (mp.mpi): its own workers */
    luaL_error(L, "cannot send a pool transport of type '%s': only the local one travels", t->ops->name);
  if (t->impl == NULL || t->foreign || mp_poolchan_worker_ends(&t->local, d->fds, &len) != 0)
    luaL_error(L, "cannot send a pool transport: only its pool's process may start its workers");
  d->nfds = 3;
  mp_travel_put(d, (uint64_t)t->nworkers);
  mp_travel_put(d, len);
  return 0;
}

static void tr_import(lua_State *L, const mp_class *c, const mp_travel_desc *d, int dep) {
  size_t pos = 0;
  uint64_t n = mp_travel_get(L, d, &pos), len = mp_travel_get(L, d, &pos);
  if (d->nfds != 3 || dep || n < 1 || n > 4096) luaL_error(L, "mp.loads: corrupt pool transport description");
  pool_tr *t = mp_newself(L, c, 5);               /* as core.pool_transport's (4: none here) */
  mp_poolchan_init(&t->local);                   /* safe empty state */
  t->foreign = 1;
  t->nworkers = (int)n;
  for (int i = 1; i <= 3; i++) { lua_newtable(L); lua_setiuservalue(L, -2, i); }
  t->oob = mp_oob_new(L);
  lua_setiuservalue(L, -2, 5);
  int fds[3] = { -1, -1, -1 };
  for (int i = 0; i < 3; i++) fds[i] = mp_travel_dup(L, d->fds[i]);   /* closed by the attach below */
  int err = mp_poolchan_attach(&t->local, fds[0], fds[1], fds[2], (size_t)len, (int)n);
  if (err) mp_raise_errno(L, err, "cannot receive a pool transport");
  t->ops = &mp_poolchan_ops;
  t->impl = &t->local;
  if (mp_pt_init(&t->pt, (int)n) != 0) {
    mp_poolchan_close(&t->local);
    t->impl = NULL;
    luaL_error(L, "not enough memory");
  }
}

static const mp_travel TR_TRAVEL = { tr_export, tr_import };


static void check_mem(lua_State *L, int err) {
  if (err) luaL_error(L, "not enough memory");
}

pool_tr *mp_pool_checktr(lua_State *L) {
  pool_tr *t = mp_checkself(L, 1, &TR_C);
  if (t->impl == NULL) luaL_error(L, "pool transport is closed");
  return t;
}

static pool_tr *checkowner(lua_State *L) {
  pool_tr *t = mp_pool_checktr(L);
  if (t->foreign) luaL_error(L, "pool used from a process that did not create it");
  return t;
}

static int tr_close(lua_State *L) {
  pool_tr *t = mp_checkself(L, 1, &TR_C);
  mp_pt_free(&t->pt);
  if (t->impl != NULL) t->ops->close(t->impl);
  mp_poolchan_close(&t->local);
  free(t->live);
  t->live = NULL;
  t->impl = NULL;
  return 0;
}

/*
** The ops of a transport object made by another C module (mp/mpi.so): its
** metatable's __pool_ops, checked for the seam's magic and version. The object
** is kept in user value 4, so its memory lives as long as this transport.
*/
static const mp_pool_transport_ops *foreign_ops(lua_State *L, int idx) {
  const mp_pool_transport_ops *ops = NULL;
  if (lua_type(L, idx) == LUA_TUSERDATA && luaL_getmetafield(L, idx, "__pool_ops") != LUA_TNIL) {
    if (lua_islightuserdata(L, -1)) ops = lua_touserdata(L, -1);   /* never a block of unknown size */
    lua_pop(L, 1);
  }
  if (ops == NULL || ops->magic != MP_POOL_OPS_MAGIC)
    luaL_argerror(L, idx, "pool transport object expected");
  if (ops->version != MP_POOL_OPS_VERSION)
    luaL_argerror(L, idx, "pool transport built for another version of mp");
  return ops;
}

/*
** core.pool_transport(nworkers [, impl]): the local transport, or the one
** implemented by the object impl (see foreign_ops).
*/
static int core_pool_transport(lua_State *L) {
  lua_Integer n = luaL_checkinteger(L, 1);
  luaL_argcheck(L, n >= 1 && n <= 4096, 1, "number of workers out of range");
  const mp_pool_transport_ops *ops = lua_isnoneornil(L, 2) ? NULL : foreign_ops(L, 2);
  pool_tr *t = mp_newself(L, &TR_C, 5);
  mp_poolchan_init(&t->local);                   /* safe empty state */
  lua_newtable(L); lua_setiuservalue(L, -2, 1);  /* handle --> job, job --> handle */
  lua_newtable(L); lua_setiuservalue(L, -2, 2);  /* handle --> dest */
  lua_newtable(L); lua_setiuservalue(L, -2, 3);  /* an apply task's ring place --> its AsyncResult */
  t->oob = mp_oob_new(L);                        /* user value 5 */
  lua_setiuservalue(L, -2, 5);
  if (ops != NULL && ops->fds == 0) t->oob->refuse = REFUSE_FDS;
  if (ops != NULL) {
    lua_pushvalue(L, 2); lua_setiuservalue(L, -2, 4);   /* the implementing object, kept alive */
    t->ops = ops;
    t->impl = lua_touserdata(L, 2);
  } else {
    int err = mp_poolchan_open(&t->local, (int)n); /* releases its part on failure */
    if (err) return mp_raise_errno(L, err, "pool");
    t->ops = &mp_poolchan_ops;
    t->impl = &t->local;
  }
  t->nworkers = (int)n;
  if (mp_pt_init(&t->pt, (int)n) != 0 || (t->live = calloc((size_t)n, 1)) == NULL) {
    lua_replace(L, 1);                           /* the object, for tr_close */
    tr_close(L);
    return luaL_error(L, "not enough memory");
  }
  return 1;
}

static int tr_after_fork(lua_State *L) {
  pool_tr *t = mp_checkself(L, 1, &TR_C);
  t->foreign = 1;
  if (t->impl != NULL) {
    t->ops->after_fork(t->impl, lua_toboolean(L, 2));
    mp_pt_drop_fds(&t->pt);
  }
  return 0;
}

static int tr_close_tasks(lua_State *L) { pool_tr *t = checkowner(L); t->ops->close_tasks(t->impl); return 0; }
static int tr_fileno(lua_State *L) { pool_tr *t = checkowner(L); lua_pushinteger(L, t->ops->fd(t->impl)); return 1; }
static int tr_inflight(lua_State *L) { lua_pushinteger(L, checkowner(L)->pt.inflight); return 1; }

int mp_pool_index(lua_State *L, pool_tr *t, int arg) {
  lua_Integer i = luaL_checkinteger(L, arg);
  luaL_argcheck(L, i >= 1 && i <= t->nworkers, arg, "worker index out of range");
  return (int)i - 1;
}

/* tr:started(index, sentinel): worker index is up. */
static int tr_started(lua_State *L) {
  pool_tr *t = checkowner(L);
  int i = mp_pool_index(L, t, 2);
  t->ops->started(t->impl, i, (int)luaL_checkinteger(L, 3));
  t->pt.seen_id[i] = 0;
  t->live[i] = 1;
  return 0;
}

/* ---- jobs and events --------------------------------------------------- */

/* Pushes uservalue k of the transport at index 1. */
static int uv(lua_State *L, int k) { lua_getiuservalue(L, 1, k); return lua_gettop(L); }

/* A new handle for the map job at `job`, whose values go to the table at `dest`. */
static int job_new(lua_State *L, pool_tr *t, int jobs, int dests, int job, int dest, int stream) {
  int h;
  check_mem(L, mp_pt_job_new(&t->pt, stream, &h));
  lua_pushvalue(L, job);
  lua_rawseti(L, jobs, h);
  lua_pushvalue(L, job);
  lua_pushinteger(L, h);
  lua_rawset(L, jobs);
  lua_pushvalue(L, dest);
  lua_rawseti(L, dests, h);
  return h;
}

static void job_free(lua_State *L, pool_tr *t, int jobs, int dests, int h) {
  lua_rawgeti(L, jobs, h);
  lua_pushnil(L);
  lua_rawset(L, jobs);
  lua_pushnil(L);
  lua_rawseti(L, dests, h);
  lua_pushnil(L);
  lua_rawseti(L, jobs, h);
  mp_pt_job_free(&t->pt, h);
}

typedef struct evs { int events, jobs, dests, aps, n; } evs;

/* An apply task's key in the table of AsyncResults: its place in the ring. */
static lua_Integer ap_key(pool_tr *t, uint64_t id) { return (lua_Integer)(id & t->pt.mask) + 1; }

/* Pushes the job of task p: its map job, or its AsyncResult. */
static void push_job(lua_State *L, pool_tr *t, evs *e, mp_pt_task *p) {
  if (p->job > 0) lua_rawgeti(L, e->jobs, p->job); else lua_rawgeti(L, e->aps, ap_key(t, p->id));
}

/* Appends the event (the job below the top, kind, the value on top). */
static void emit(lua_State *L, evs *e, int kind) {
  int base = e->n * 3;
  lua_rawseti(L, e->events, base + 3);
  lua_rawseti(L, e->events, base + 1);
  lua_pushinteger(L, kind);
  lua_rawseti(L, e->events, base + 2);
  e->n++;
}

/* The task has settled; a sealed map job whose last task it was is done (EV_DONE). */
static void settle(lua_State *L, pool_tr *t, evs *e, mp_pt_task *p) {
  int h = p->job;
  if (h == 0) { lua_pushnil(L); lua_rawseti(L, e->aps, ap_key(t, p->id)); }
  if (!mp_pt_settle(&t->pt, p)) return;
  lua_rawgeti(L, e->jobs, h);
  lua_pushinteger(L, 0);
  emit(L, e, EV_DONE);
  job_free(L, t, e->jobs, e->dests, h);
}

/*
** Makes task id's place in the ring free: the ring grows (an older task holds
** the place), and the AsyncResults move to their new places.
*/
static void make_place(lua_State *L, pool_tr *t, uint64_t id) {
  if (mp_pt_place_free(&t->pt, id)) return;
  int aps = uv(L, 3);
  lua_newtable(L);
  uint64_t mask = t->pt.mask;
  check_mem(L, mp_pt_grow(&t->pt));
  for (uint64_t i = 0; i <= t->pt.mask; i++) {
    mp_pt_task *p = &t->pt.tasks[i];
    if (p->id == 0 || p->job != 0) continue;
    lua_rawgeti(L, aps, (lua_Integer)(p->id & mask) + 1);
    lua_rawseti(L, -2, ap_key(t, p->id));
  }
  lua_setiuservalue(L, 1, 3);
  lua_pop(L, 1);
}

/* ---- parent: building batches ----------------------------------------- */

/* The open batch to the transport, which keeps it when it has no room. */
static void commit(lua_State *L, pool_tr *t) {
  uint32_t n = t->pt.batch_n;
  uint64_t first = t->pt.batch_first;
  mp_pt_batch *b;
  check_mem(L, mp_pt_commit(&t->pt, &b));
  if (b == NULL) return;
  int keep;
  int err = t->ops->send(t->impl, b->data, b->len, b->fds, b->nfds, &keep);
  if (err == 0) mp_pt_kept(&t->pt, b, keep);
  else if (err == EAGAIN)          /* something else is kept: these go again, one by one */
    for (uint32_t k = 0; k < n; k++) check_mem(L, mp_pt_queue(&t->pt, first + k));
  else if (err) mp_raise_errno(L, err, "pool: sending a task");
}

/* src[k .. k+g-1] as a group read from src's array part (mp_serial_encode_slice): 1, or 0 (b unchanged). */
static int slice_group(lua_State *L, mp_pc_buf *b, int src, lua_Integer k, int g) {
  mp_wbuf *s = mp_serial_scratch(L);
  if (!mp_serial_encode_slice(L, src, k, k + g - 1, s)) return 0;
  check_mem(L, mp_pc_reserve(b, 8 + s->len));
  mp_pc_put32(b->data + b->len, (uint32_t)s->len);
  mp_pc_put32(b->data + b->len + 4, (uint32_t)g);
  memcpy(b->data + b->len + 8, s->data, s->len);
  b->len += 8 + s->len;
  return 1;
}

/* A task's function: its bytes, or the function itself when it carries mp objects. */
static void check_fn(lua_State *L, int idx) {
  int ty = lua_type(L, idx);
  if (ty != LUA_TSTRING && ty != LUA_TFUNCTION) luaL_typeerror(L, idx, "function bytes");
}

/*
** Appends one task to the open batch: src[i..j] ('M', 'S'), or src[1..j] as
** one call's arguments ('A'); the function at fnidx is its bytes (a string),
** or the function itself when it carries mp objects (fn_id 0: encoded with
** each task). Returns 0, or 1 with a message on top when an item cannot be
** sent (the task is then dropped from the batch).
*/
static int add_entry(lua_State *L, pool_tr *t, int kind, uint64_t id, uint32_t fn_id,
                     int fnidx, int src, lua_Integer i, lua_Integer j, size_t *entry) {
  mp_pc_buf *b = &t->pt.out;
  mp_oob *oob = t->oob;
  lua_Integer count = j >= i ? j - i + 1 : 0;
  oob->n = 0;                   /* this task's fds: indexes from 0 in its range of the batch's */
  size_t fn_len;
  const char *fn = lua_tolstring(L, fnidx, &fn_len);
  if (fn == NULL && mp_pool_pdump(L, fnidx, oob, &fn, &fn_len) != LUA_OK) return 1;
  /* (the scratch bytes are copied into the entry before the values reuse it) */
  check_mem(L, mp_pt_entry_begin(&t->pt, kind, id, fn_id, fn, fn_len, (uint32_t)count, entry));
  int raw = !lua_getmetatable(L, src);
  if (!raw) lua_pop(L, 1);
  int top = lua_gettop(L);
  int per = kind == 'A' ? (int)count : GROUP;
  if (kind == 'A' && count == 0) mp_pool_group(L, b, top + 1, 0, NULL);
  luaL_checkstack(L, per + 8, "too many arguments");
  for (lua_Integer k = i; k <= j; ) {
    int g = (int)((j - k + 1) < per ? (j - k + 1) : per);
    /* A map chunk of plain values is read straight from the list's array part. */
    if (kind == 'M' && raw && slice_group(L, b, src, k, g)) { k += g; continue; }
    int simple = 1;             /* numbers, strings, booleans, nils cannot fail to encode */
    for (int q = 0; q < g; q++) {
      int ty = raw ? lua_rawgeti(L, src, k + q) : lua_geti(L, src, k + q);
      simple &= ty == LUA_TNUMBER || ty == LUA_TSTRING || ty == LUA_TBOOLEAN || ty == LUA_TNIL;
    }
    if (simple) { mp_pool_group(L, b, top + 1, g, NULL); lua_settop(L, top); }
    else if (mp_pool_pgroup(L, b, top + 1, oob) != LUA_OK) {
      mp_pt_entry_drop(&t->pt, *entry);
      lua_settop(L, top);
      for (int q = 0; q < g; q++) {      /* name the first item that cannot be sent */
        if (raw) lua_rawgeti(L, src, k + q); else lua_geti(L, src, k + q);
        if (mp_pool_pitem(L, k + q, oob) != LUA_OK) break;
      }
      if (lua_gettop(L) == top) lua_pushfstring(L, "item %d: cannot be sent", (int)k);
      return 1;
    }
    k += g;
  }
  lua_settop(L, top);
  if (oob->n > 0) {
    int err = mp_pt_entry_fds(&t->pt, *entry, oob->fds, (int)oob->n);
    if (err) {
      mp_pt_entry_drop(&t->pt, *entry);
      if (err == E2BIG)
        lua_pushfstring(L, "a task may carry at most %d fds of mp objects (this one: %d)", MP_PT_TASK_FDS, (int)oob->n);
      else
        lua_pushfstring(L, "cannot send the task's mp objects: %s", strerror(err));
      return 1;
    }
  }
  mp_pt_entry_end(&t->pt, *entry, fn_id);
  return 0;
}

/*
** tr:add(job, dest, kind, fn_id, fn_bytes, src, i, stop, cs, nchunks, off, stream)
** --> chunks added [, message]: up to nchunks tasks of cs items from
** src[i..stop] into the open batch, whose values go to dest from off + 1.
** Stops at a chunk holding an item that cannot be sent, with the message.
*/
static int tr_add(lua_State *L) {
  pool_tr *t = checkowner(L);
  luaL_checktype(L, 2, LUA_TTABLE);
  luaL_checktype(L, 3, LUA_TTABLE);
  int kind = luaL_checkstring(L, 4)[0];
  uint32_t fn_id = (uint32_t)luaL_checkinteger(L, 5);
  check_fn(L, 6);
  luaL_checktype(L, 7, LUA_TTABLE);
  lua_Integer i = luaL_checkinteger(L, 8), stop = luaL_checkinteger(L, 9);
  lua_Integer cs = luaL_checkinteger(L, 10), nchunks = luaL_checkinteger(L, 11);
  lua_Integer off = luaL_checkinteger(L, 12);
  int stream = lua_toboolean(L, 13);
  luaL_argcheck(L, cs >= 1, 10, "chunksize must be at least 1");
  lua_settop(L, 13);
  int jobs = uv(L, 1), dests = uv(L, 2);
  lua_pushvalue(L, 2);
  int h = lua_rawget(L, jobs) == LUA_TNUMBER ? (int)lua_tointeger(L, -1)
                                              : job_new(L, t, jobs, dests, 2, 3, stream);
  lua_settop(L, dests);
  lua_Integer added = 0, base = i - 1;
  while (added < nchunks && i <= stop) {
    lua_Integer j = stop - i < cs ? stop : i + cs - 1;     /* i + cs may overflow */
    uint64_t id = t->pt.next_id + 1;
    size_t at;
    if (add_entry(L, t, kind, id, fn_id, 6, 7, i, j, &at)) {
      lua_pushinteger(L, added);
      lua_insert(L, -2);
      return 2;
    }
    t->pt.next_id = id;
    make_place(L, t, id);
    check_mem(L, mp_pt_record(&t->pt, id, h, off + (i - 1 - base), at, 0));
    if (t->pt.onfds > MP_PT_BATCH_FDS) commit(L, t);      /* the next task's fds must fit */
    added++;
    i = j + 1;
  }
  lua_pushinteger(L, added);
  return 1;
}

/*
** tr:apply(ar, off, fn_id, fn_bytes, args, n, timeout) --> true, or nil and a
** message: one call of fn(args[1..n]) whose values go to ar[off + 1 ...].
*/
static int tr_apply(lua_State *L) {
  pool_tr *t = checkowner(L);
  luaL_checktype(L, 2, LUA_TTABLE);
  lua_Integer off = luaL_checkinteger(L, 3);
  uint32_t fn_id = (uint32_t)luaL_checkinteger(L, 4);
  check_fn(L, 5);
  luaL_checktype(L, 6, LUA_TTABLE);
  lua_Integer n = luaL_checkinteger(L, 7);
  double limit = luaL_optnumber(L, 8, 0);
  lua_settop(L, 8);
  uint64_t id = t->pt.next_id + 1;
  size_t at;
  if (add_entry(L, t, 'A', id, fn_id, 5, 6, 1, n, &at)) {
    lua_pushnil(L);
    lua_insert(L, -2);
    return 2;
  }
  t->pt.next_id = id;
  make_place(L, t, id);
  lua_getiuservalue(L, 1, 3);
  lua_pushvalue(L, 2);
  lua_rawseti(L, -2, ap_key(t, id));
  check_mem(L, mp_pt_record(&t->pt, id, 0, off, at, limit));
  if (t->pt.onfds > MP_PT_BATCH_FDS) commit(L, t);
  lua_pushboolean(L, 1);
  return 1;
}

/* The handle of the job at index 2, or 0 when it has none. */
static int handle_of(lua_State *L, int jobs) {
  lua_pushvalue(L, 2);
  int h = lua_rawget(L, jobs) == LUA_TNUMBER ? (int)lua_tointeger(L, -1) : 0;
  lua_pop(L, 1);
  return h;
}

/* tr:seal(job) --> true when the job has nothing in flight (it is done). */
static int tr_seal(lua_State *L) {
  pool_tr *t = checkowner(L);
  lua_settop(L, 2);
  int jobs = uv(L, 1), h = handle_of(L, jobs);
  int done = h == 0 || mp_pt_seal(&t->pt, h);
  if (h != 0 && done) job_free(L, t, jobs, uv(L, 2), h);
  lua_pushboolean(L, done);
  return 1;
}

/* tr:settled(job) --> items of the job settled so far (for progress). */
static int tr_settled(lua_State *L) {
  pool_tr *t = checkowner(L);
  lua_settop(L, 2);
  int h = handle_of(L, uv(L, 1));
  lua_pushinteger(L, h ? t->pt.jobs[h - 1].done : 0);
  return 1;
}

/* Sends the queued resends while the transport takes them. 1 when none is left. */
static int send_resends(lua_State *L, pool_tr *t) {
  while (t->pt.nresend > 0) {
    int err = t->ops->flush(t->impl);
    if (err == EAGAIN) return 0;
    if (err) mp_raise_errno(L, err, "pool: sending a task");
    mp_pt_task *p;
    check_mem(L, mp_pt_next_resend(&t->pt, &p));
    if (p == NULL) break;
    int keep;
    err = t->ops->send(t->impl, p->b->data, p->b->len, p->b->fds, p->b->nfds, &keep);
    if (err == EAGAIN) { mp_pt_unqueue(&t->pt, p); return 0; }
    if (err) mp_raise_errno(L, err, "pool: sending a task");
    mp_pt_kept(&t->pt, p->b, keep);
  }
  return 1;
}

/* tr:commit(): hands the open batch to the transport (which keeps it when it has no room). */
static int tr_commit(lua_State *L) {
  commit(L, checkowner(L));
  return 0;
}

/* tr:stalled() --> true while a batch waits for room in the transport. */
static int tr_stalled(lua_State *L) {
  pool_tr *t = checkowner(L);
  int err = t->ops->flush(t->impl);
  if (err && err != EAGAIN) return mp_raise_errno(L, err, "pool: sending a task");
  lua_pushboolean(L, err == EAGAIN || !send_resends(L, t));
  return 1;
}

/* ---- parent: results -------------------------------------------------- */

/* Decodes an error's groups into a table {message, traceback, pid, value, [5] = offset}. */
static void push_error(lua_State *L, const char *p, const char *end, lua_Integer off) {
  lua_createtable(L, 5, 0);
  int t = lua_gettop(L), k = 0;
  while (end - p >= 8) {
    uint32_t glen = mp_pc_get32(p), gn = mp_pc_get32(p + 4);
    p += 8;
    if ((size_t)(end - p) < glen) break;
    if (mp_pool_pdecode(L, p, glen, NULL, 0) != LUA_OK) { lua_rawseti(L, t, 1); break; }
    int n = lua_gettop(L) - t;
    if ((uint32_t)n != gn) { lua_settop(L, t); break; }
    for (int q = n; q >= 1; q--) lua_rawseti(L, t, k + q);
    k += n;
    p += glen;
  }
  lua_pushinteger(L, off);
  lua_rawseti(L, t, 5);
}

/* One result entry: values into the job's dest, then the task settles. */
static void take_result(lua_State *L, pool_tr *t, evs *e, const char *p, size_t len) {
  if (len < HDR) return;
  char kind = p[0];
  uint64_t id = mp_pc_get64(p + 8);
  uint32_t count = mp_pc_get32(p + 16);
  const char *q = p + HDR, *end = p + len;
  if (kind == 'I') { lua_pushboolean(L, 0); push_error(L, q, end, 0); emit(L, e, EV_INIT); return; }
  mp_pt_task *tk = mp_pt_find(&t->pt, id);
  if (tk == NULL || tk->b == NULL) return;           /* settled already (a journal's copy) */
  int h = tk->job;
  if (kind == 'E') {
    push_job(L, t, e, tk);
    push_error(L, q, end, tk->off);
    emit(L, e, EV_ERROR);
    settle(L, t, e, tk);
    return;
  }
  int top = lua_gettop(L);
  push_job(L, t, e, tk);                             /* the job, kept for the event */
  if (h > 0) lua_rawgeti(L, e->dests, h); else lua_pushvalue(L, -1);
  int dest = lua_gettop(L);
  lua_Integer at = tk->off;
  uint32_t got = 0;
  while (end - q >= 8 && got < count) {
    uint32_t glen = mp_pc_get32(q), gn = mp_pc_get32(q + 4);
    q += 8;
    if ((size_t)(end - q) < glen) break;
    if (gn > 0 && mp_serial_decode_slice(L, q, glen, dest, at + got, gn)) {   /* plain values, no stack */
      got += gn;
      q += glen;
      continue;
    }
    luaL_checkstack(L, (int)gn + 4, "result too large");
    if (mp_pool_pdecode(L, q, glen, NULL, 0) != LUA_OK) {
      const char *m = lua_tostring(L, -1);
      lua_settop(L, top + 1);
      lua_createtable(L, 5, 0);
      lua_pushfstring(L, "cannot receive result: %s", m ? m : "?");
      lua_rawseti(L, -2, 1);
      lua_pushinteger(L, tk->off);
      lua_rawseti(L, -2, 5);
      emit(L, e, EV_ERROR);
      settle(L, t, e, tk);
      return;
    }
    int n = lua_gettop(L) - dest;
    for (int k = n; k >= 1; k--) lua_rawseti(L, dest, at + got + k);
    got += (uint32_t)n;
    q += glen;
  }
  lua_settop(L, top + 1);
  if (h == 0) { lua_pushinteger(L, got); emit(L, e, EV_VALUES); }
  else {
    mp_pt_job *j = &t->pt.jobs[h - 1];
    j->done += mp_pt_count(tk);
    if (j->stream) { lua_pushinteger(L, tk->off); emit(L, e, EV_CHUNK); }
    else lua_settop(L, top);
  }
  settle(L, t, e, tk);
}

/* The entries of a container. */
static void take_container(lua_State *L, pool_tr *t, evs *e, const char *p, size_t len) {
  if (len < MP_PC_CHDR || p[0] != 'K') return;
  for (const char *q = p + MP_PC_CHDR, *end = p + len; end - q >= 4; ) {
    uint32_t n = mp_pc_get32(q);
    q += 4;
    if ((size_t)(end - q) < n) break;
    take_result(L, t, e, q, n);
    q += n;
  }
}

/* Takes every result message available now. */
static void drain(lua_State *L, pool_tr *t, evs *e) {
  for (;;) {
    mp_pc_msg msgs[MP_PC_RECV_BATCH];
    int n;
    int err = t->ops->recv(t->impl, msgs, MP_PC_RECV_BATCH, &n);
    for (int i = 0; i < n; i++) take_container(L, t, e, msgs[i].data, msgs[i].len);
    if (err) mp_raise_errno(L, err, "pool: receiving results");
    if (n < MP_PC_RECV_BATCH) return;
  }
}

/*
** Tasks nobody holds. A worker killed while `taking` (see poolchan.c) may have
** taken a batch no slot names; its tasks never started. Once every batch has
** been taken and every live worker is idle, the results are drained and the
** tasks still in flight are those: they are sent again. A live worker is never
** suspected, however slow: nothing is resent on a timer.
*/
static void recover(lua_State *L, pool_tr *t, evs *e) {
  if (t->pt.inflight == 0) { t->suspect = 0; return; }
  if (t->pt.nresend > 0 || !t->ops->idle(t->impl)) return;
  for (int i = 0; i < t->nworkers; i++)
    if (t->live[i] && t->ops->busy(t->impl, i)) return;
  drain(L, t, e);
  t->suspect = 0;
  check_mem(L, mp_pt_queue_all(&t->pt));
}

/*
** tr:pump(events, timeout) --> nevents, lost: sends what waits for room,
** takes the results available (waiting up to timeout for news), reports timed
** tasks over their limit (EV_OVERDUE: the caller kills that worker), and says
** whether a worker ended (the caller then calls tr:lost for it).
*/
static int tr_pump(lua_State *L) {
  pool_tr *t = checkowner(L);
  luaL_checktype(L, 2, LUA_TTABLE);
  double deadline = mp_optdeadline(L, 3);
  lua_settop(L, 3);
  evs e = { 2, uv(L, 1), uv(L, 2), uv(L, 3), 0 };
  int lost = 0;
  for (;;) {
    int err = t->ops->flush(t->impl);
    if (err && err != EAGAIN) return mp_raise_errno(L, err, "pool: sending a task");
    send_resends(L, t);
    drain(L, t, &e);
    for (int i = 0; t->pt.ntimed > 0 && i < t->nworkers; i++) {
      if (!t->live[i]) continue;
      uint64_t id = t->ops->running(t->impl, i);
      if (mp_pt_overdue(&t->pt, i, id, mp_now())) {
        push_job(L, t, &e, mp_pt_find(&t->pt, id));
        lua_pushinteger(L, i + 1);
        emit(L, &e, EV_OVERDUE);
      }
    }
    if (t->suspect) recover(L, t, &e);
    if (e.n > 0 || lost) break;
    /*
    ** The binding slices the wait (mp's slice: 5 ms while pollers exist), so
    ** a transport built in another module, with its own copy of the clock,
    ** never sleeps past it: Ctrl-C, handlers and pollers run on time.
    */
    int sliced;
    double until = mp_slice_end(deadline, &sliced);
    err = t->ops->wait(t->impl, until, &lost);
    if (err == ETIMEDOUT && sliced) err = EINTR;
    if (err == ETIMEDOUT) break;
    if (err == EINTR) mp_check_interrupt(L);      /* a signal, or a slice's end */
    else if (err) return mp_raise_errno(L, err, "pool: waiting for results");
  }
  lua_pushinteger(L, e.n);
  lua_pushboolean(L, lost);
  return 2;
}

/*
** tr:lost(events, index) --> nevents: worker index ended. Its sent results
** are taken first, then its journal (finished, not sent); the task it was
** running fails (EV_LOST), and the tasks of its batch it had not started are
** sent again.
*/
static int tr_lost(lua_State *L) {
  pool_tr *t = checkowner(L);
  luaL_checktype(L, 2, LUA_TTABLE);
  int i = mp_pool_index(L, t, 3);
  lua_settop(L, 3);
  evs e = { 2, uv(L, 1), uv(L, 2), uv(L, 3), 0 };
  drain(L, t, &e);
  mp_pc_held held;
  t->ops->lost(t->impl, i, &held);
  t->live[i] = 0;
  t->pt.seen_id[i] = 0;
  take_container(L, t, &e, held.journal, held.journal_len);
  mp_pt_task *p = mp_pt_find(&t->pt, held.task);
  if (p != NULL && p->b != NULL) {
    push_job(L, t, &e, p);
    lua_pushinteger(L, p->off);
    emit(L, &e, EV_LOST);
    settle(L, t, &e, p);
  }
  for (uint32_t k = 0; k < held.batch_count; k++) {
    uint64_t id = held.batch_first + k;
    if (id != held.task && mp_pt_find(&t->pt, id) != NULL) check_mem(L, mp_pt_queue(&t->pt, id));
  }
  if (held.taking) t->suspect = 1;
  lua_pushinteger(L, e.n);
  return 1;
}

/* tr:abandon(events) --> nevents: every job in flight (EV_ABANDONED); forgets all tasks. */
static int tr_abandon(lua_State *L) {
  pool_tr *t = checkowner(L);
  luaL_checktype(L, 2, LUA_TTABLE);
  lua_settop(L, 2);
  evs e = { 2, uv(L, 1), uv(L, 2), uv(L, 3), 0 };
  for (uint64_t id = t->pt.low; id <= t->pt.next_id; id++) {
    mp_pt_task *p = mp_pt_find(&t->pt, id);
    if (p == NULL || p->job != 0) continue;
    push_job(L, t, &e, p);
    lua_pushinteger(L, 0);
    emit(L, &e, EV_ABANDONED);
  }
  mp_pt_forget(&t->pt);
  lua_newtable(L);
  lua_setiuservalue(L, 1, 3);
  for (int h = 1; h <= t->pt.njobs; h++) {
    if (!t->pt.jobs[h - 1].used) continue;
    lua_rawgeti(L, e.jobs, h);
    lua_pushinteger(L, 0);
    emit(L, &e, EV_ABANDONED);
    job_free(L, t, e.jobs, e.dests, h);
  }
  lua_pushinteger(L, e.n);
  return 1;
}

/* ---- small helpers ---------------------------------------------------- */

/*
** tr:dumpfn(fn) --> the serialized function; false when it carries mp objects
** (it is then encoded with each task, its objects' fds along); or nil and why
** it cannot be sent (on a transport that passes bytes only, an mp object).
*/
static int tr_dumpfn(lua_State *L) {
  pool_tr *t = checkowner(L);
  luaL_checkany(L, 2);
  t->oob->n = 0;
  const char *p;
  size_t len;
  if (mp_pool_pdump(L, 2, t->oob, &p, &len) != LUA_OK) {
    lua_pushnil(L);
    lua_insert(L, -2);
    return 2;
  }
  if (t->oob->n > 0) lua_pushboolean(L, 0); else lua_pushlstring(L, p, len);
  return 1;
}

/* core.newlist(n): a table with room for n array items (results filled out of order). */
static int core_newlist(lua_State *L) {
  lua_Integer n = luaL_checkinteger(L, 1);
  lua_createtable(L, (int)(n < 0 ? 0 : n > (1 << 28) ? 1 << 28 : n), 0);
  return 1;
}

static int core_isatty(lua_State *L) {
  lua_pushboolean(L, isatty((int)luaL_checkinteger(L, 1)));
  return 1;
}

void mp_pool_open(lua_State *L) {
  static const luaL_Reg methods[] = {
    {"add", tr_add}, {"apply", tr_apply}, {"commit", tr_commit}, {"seal", tr_seal},
    {"settled", tr_settled}, {"inflight", tr_inflight}, {"stalled", tr_stalled},
    {"pump", tr_pump}, {"lost", tr_lost}, {"started", tr_started}, {"abandon", tr_abandon},
    {"fileno", tr_fileno}, {"close_tasks", tr_close_tasks}, {"after_fork", tr_after_fork},
    {"send_init_error", mp_pool_send_init_error}, {"dumpfn", tr_dumpfn}, {"close", tr_close},
    {NULL, NULL}
  };
  static const luaL_Reg metamethods[] = { {"__gc", tr_close}, {"__close", tr_close}, {NULL, NULL} };
  static const luaL_Reg funcs[] = {
    {"pool_transport", core_pool_transport}, {"pool_work", mp_pool_work},
    {"newlist", core_newlist}, {"isatty", core_isatty},
    {NULL, NULL}
  };
  mp_newclass(L, &TR_C, methods, metamethods);
  mp_travel_register(&TR_C, &TR_TRAVEL);
  lua_pop(L, 1);
  luaL_setfuncs(L, funcs, 0);
}

/*
** Binding for mp.Queue, mp.SimpleQueue and mp.JoinableQueue: one userdata
** type per class over the shared ring (engine/ring.c). Items are encoded by
** the serializer inside put, synchronously, so an unsendable value raises
** there and a put followed by get_nowait in the same process finds the item
** (no feeder thread, unlike Python).
*/
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "mp_aux.h"
#include "mp_travel.h"
#include "serial.h"
#include "engine/clock.h"
#include "engine/ring.h"
#include "ltransport.h"

#define QUEUE_T "mp.Queue"
#define SIMPLE_T "mp.SimpleQueue"
#define JOINABLE_T "mp.JoinableQueue"

/* Messages up to this size are copied out of the ring onto the C stack and the
** consumer lock is released before decoding (decoding may raise). */
#define SMALL_MSG 8192

typedef struct queue_ud {
  const mp_class *cls;
  mp_ring ring;      /* ring.hdr == NULL once closed */
} queue_ud;

static int q_export(lua_State *L, int idx, mp_travel_desc *d);
static void q_import(lua_State *L, const mp_class *c, const mp_travel_desc *d, int dep);
static const mp_travel QUEUE_TRAVEL = { q_export, q_import };

static const mp_class QUEUE_C = { QUEUE_T, sizeof(queue_ud), NULL };
static const mp_class SIMPLE_C = { SIMPLE_T, sizeof(queue_ud), NULL };
static const mp_class JOINABLE_C = { JOINABLE_T, sizeof(queue_ud), NULL };
/* What mp.wait accepts: any of the three. */
static const mp_class *const queue_family[] = { &QUEUE_C, &SIMPLE_C, &JOINABLE_C, NULL };
static const mp_class ANY_QUEUE_C = { "mp.Queue", sizeof(queue_ud), queue_family };

/* The three classes share these functions: each checks its own (mp_upclass). */
static queue_ud *check_queue(lua_State *L) {
  queue_ud *q = mp_checkself(L, 1, mp_upclass(L));
  if (q->ring.hdr == NULL) luaL_error(L, "queue is closed");
  return q;
}

static int put_value(lua_State *L, queue_ud *q, int idx, double deadline) {
  for (;;) {
    mp_wbuf *b = mp_serial_scratch(L);
    mp_serial_encode(L, idx, 1, b, "item");
    int rc = mp_ring_put(&q->ring, b->data, b->len, deadline);
    if (rc == 0) return 0;
    /* A signal handler may use the scratch buffer: encode again after it. */
    if (rc == EINTR) { mp_check_interrupt(L); continue; }
    if (rc == ETIMEDOUT) return mp_raise(L, "Full", "queue is full");
    return mp_raise_errno(L, rc, "put");
  }
}

/* Decodes (or, raw, pushes as a string) a message in memory the caller must release. */
static int decode_thunk(lua_State *L) {
  const char *p = lua_touserdata(L, 1);
  size_t len = (size_t)lua_tointeger(L, 2);
  int raw = lua_toboolean(L, 3);
  lua_settop(L, 0);
  if (raw) {
    lua_pushlstring(L, p, len);
    return 1;
  }
  return mp_serial_decode(L, p, len);
}

static int pdecode(lua_State *L, const char *p, size_t len, int raw) {
  int base = lua_gettop(L);
  lua_pushcfunction(L, decode_thunk);
  lua_pushlightuserdata(L, (void *)p);
  lua_pushinteger(L, (lua_Integer)len);
  lua_pushboolean(L, raw);
  int status = lua_pcall(L, 3, LUA_MULTRET, 0);
  return status == LUA_OK ? lua_gettop(L) - base : -1;
}

int mp_msg_deliver(lua_State *L, mp_ring *r, mp_ring_msg *m, mp_msg_end end, void *ctx, int raw) {
  if (!m->streamed && m->len <= SMALL_MSG) {
    char buf[SMALL_MSG];
    memcpy(buf, m->p1, m->n1);
    if (m->n2) memcpy(buf + m->n1, m->p2, m->n2);
    end(ctx, m);
    if (raw) {
      lua_pushlstring(L, buf, (size_t)m->len);
      return 1;
    }
    return mp_serial_decode(L, buf, (size_t)m->len);
  }
  if (!m->streamed && m->n2 == 0) {
    /* Large and contiguous: decode in place, under pcall so the lock is released. */
    int n = pdecode(L, m->p1, m->n1, raw);
    end(ctx, m);
    if (n < 0) return lua_error(L);
    return n;
  }
  char *buf = m->len <= SIZE_MAX ? malloc((size_t)m->len) : NULL;
  int rc = 0;
  if (m->streamed) rc = mp_ring_read_stream(r, m, buf);   /* dropped when buf is NULL */
  else if (buf != NULL) {
    memcpy(buf, m->p1, m->n1);
    memcpy(buf + m->n1, m->p2, m->n2);
  }
  end(ctx, m);
  if (rc != 0) {
    free(buf);
    if (rc == ECANCELED) return -1;         /* abandoned by its producer: take the next */
    if (rc == EPIPE) return mp_raise(L, "EOFError", "the other end closed in the middle of a message");
    return mp_raise_errno(L, rc, "receive");
  }
  if (buf == NULL) return luaL_error(L, "not enough memory for a message of %I bytes",
                                     (lua_Integer)m->len);
  int n = pdecode(L, buf, (size_t)m->len, raw);
  free(buf);
  if (n < 0) return lua_error(L);
  return n;
}

static void ring_end(void *ctx, mp_ring_msg *m) { mp_ring_get_end(ctx, m); }

static int get_value(lua_State *L, queue_ud *q, double deadline) {
  for (;;) {
    mp_ring_msg m;
    int rc;
    while ((rc = mp_ring_get_begin(&q->ring, deadline, &m)) == EINTR)
      mp_check_interrupt(L);
    if (rc == ETIMEDOUT || rc == EBUSY) return mp_raise(L, "Empty", "queue is empty");
    if (rc == EPROTO) return luaL_error(L, "get: the queue's shared memory is corrupt");
    if (rc != 0) return mp_raise_errno(L, rc, "get");
    int n = mp_msg_deliver(L, &q->ring, &m, ring_end, &q->ring, 0);
    if (n >= 0) return n;
  }
}

/* q:put(v [, block [, timeout]]) */
static int q_put(lua_State *L) {
  queue_ud *q = check_queue(L);
  double deadline = mp_block_deadline(L, 3, "put");
  lua_settop(L, 2);     /* q:put() puts nil */
  put_value(L, q, 2, deadline);
  return 0;
}

/* q:get([block [, timeout]]) */
static int q_get(lua_State *L) {
  queue_ud *q = check_queue(L);
  return get_value(L, q, mp_block_deadline(L, 2, "get"));
}

static int q_put_nowait(lua_State *L) {
  queue_ud *q = check_queue(L);
  mp_checknargs(L, 2);
  lua_settop(L, 2);
  put_value(L, q, 2, -INFINITY);
  return 0;
}

static int q_get_nowait(lua_State *L) {
  queue_ud *q = check_queue(L);
  mp_checknargs(L, 1);
  return get_value(L, q, -INFINITY);
}

static int q_qsize(lua_State *L) {
  queue_ud *q = check_queue(L);
  mp_checknargs(L, 1);
  lua_pushinteger(L, (lua_Integer)mp_ring_count(&q->ring));
  return 1;
}

/* Counted as qsize is, so that empty(), qsize() and full() agree. */
static int q_empty(lua_State *L) {
  queue_ud *q = check_queue(L);
  mp_checknargs(L, 1);
  lua_pushboolean(L, mp_ring_count(&q->ring) == 0);
  return 1;
}

static int q_full(lua_State *L) {
  queue_ud *q = check_queue(L);
  mp_checknargs(L, 1);
  uint64_t max = mp_ring_maxsize(&q->ring);
  lua_pushboolean(L, max != 0 && mp_ring_count(&q->ring) >= max);
  return 1;
}

/* jq:task_done() */
static int q_task_done(lua_State *L) {
  queue_ud *q = check_queue(L);
  mp_checknargs(L, 1);
  if (mp_ring_task_done(&q->ring) == ERANGE)
    return luaL_error(L, "task_done() called too many times");
  return 0;
}

/* jq:join([timeout]) --> true, or false when the timeout passed first */
static int q_join(lua_State *L) {
  queue_ud *q = check_queue(L);
  mp_checknargs(L, 2);
  double deadline = mp_optdeadline(L, 2);
  int rc;
  while ((rc = mp_ring_join(&q->ring, deadline)) == EINTR)
    mp_check_interrupt(L);
  lua_pushboolean(L, rc == 0);
  return 1;
}

/* No feeder thread: nothing to wait for or cancel (Python's API kept). */
static int q_noop(lua_State *L) {
  mp_checkself(L, 1, mp_upclass(L));
  mp_checknargs(L, 1);
  return 0;
}

/* __gc, __close (which also gets the error): unmaps this process's mapping; others keep theirs. */
static int q_gc(lua_State *L) {
  queue_ud *q = mp_checkself(L, 1, mp_upclass(L));
  mp_ring_unmap(&q->ring);
  return 0;
}

/* q:close() */
static int q_close(lua_State *L) {
  mp_checknargs(L, 1);
  return q_gc(L);
}

static int q_tostring(lua_State *L) {
  queue_ud *q = mp_checkself(L, 1, mp_upclass(L));
  lua_getmetatable(L, 1);
  lua_getfield(L, -1, "__name");
  const char *name = lua_tostring(L, -1);
  if (strncmp(name, "mp.", 3) == 0) name += 3;
  if (q->ring.hdr == NULL) lua_pushfstring(L, "<%s closed>", name);
  else lua_pushfstring(L, "<%s size=%I>", name, (lua_Integer)mp_ring_count(&q->ring));
  return 1;
}

/* Pushes a new queue of class tname. */
static void new_queue(lua_State *L, const mp_class *cls, lua_Integer maxsize, size_t bytes, int joinable) {
  queue_ud *q = mp_newself(L, cls, 0);
  mp_ring_empty(&q->ring);                     /* safe empty state before anything can fail */
  int err = mp_ring_create(&q->ring, bytes, maxsize > 0 ? (uint64_t)maxsize : 0, joinable);
  if (err) mp_raise_errno(L, err, "cannot create queue");
}

/*
** Travelling (mp_travel.h): the ring's memfd and both doorbell ends, which a
** queue handle holds. The receiver maps the same ring: a queue made by one
** process, used by a fork-server child it was given to.
*/
static int q_export(lua_State *L, int idx, mp_travel_desc *d) {
  queue_ud *q = lua_touserdata(L, idx);
  int memfd;
  size_t len;
  if (mp_ring_export(&q->ring, &memfd, &len) != 0) luaL_error(L, "cannot send a closed queue");
  mp_travel_put(d, len);
  d->fds[d->nfds++] = memfd;
  d->fds[d->nfds++] = q->ring.bell_r;
  d->fds[d->nfds++] = q->ring.bell_w;
  return 0;
}

static void q_import(lua_State *L, const mp_class *c, const mp_travel_desc *d, int dep) {
  size_t pos = 0;
  uint64_t len = mp_travel_get(L, d, &pos);
  if (d->nfds != 3 || dep) luaL_error(L, "mp.loads: corrupt queue description");
  queue_ud *q = mp_newself(L, c, 0);
  mp_ring_empty(&q->ring);                     /* safe empty state before anything can fail */
  int memfd = mp_travel_dup(L, d->fds[0]);
  int r = -1, w = -1;
  if ((r = fcntl(d->fds[1], F_DUPFD_CLOEXEC, 3)) < 0 || (w = fcntl(d->fds[2], F_DUPFD_CLOEXEC, 3)) < 0) {
    int err = errno;
    close(memfd);
    if (r >= 0) close(r);
    mp_raise_errno(L, err, "cannot receive a queue");
  }
  int err = mp_ring_attach(&q->ring, memfd, (size_t)len, r, w);   /* takes the three fds */
  if (err) mp_raise_errno(L, err, "cannot receive a queue");
}

/* The ring size option: a power of two, at least 4096 (default: a 1 GiB reservation). */
static size_t opt_bytes(lua_State *L, int arg, lua_Integer v) {
  if (v == 0) return MP_RING_DEFAULT_CAP;
  if (v < 4096 || (v & (v - 1)) != 0) luaL_argerror(L, arg, "bytes must be a power of two >= 4096");
  return (size_t)v;
}

/* Queue(maxsize) or Queue{maxsize =, bytes =}; maxsize <= 0 means unbounded. */
static void queue_args(lua_State *L, const char *fname, lua_Integer *maxsize, size_t *bytes) {
  static const char *const keys[] = { "maxsize", "bytes", NULL };
  *maxsize = 0;
  lua_Integer b = 0;
  mp_checknargs(L, 1);
  if (lua_istable(L, 1)) {
    mp_checkoptions(L, 1, fname, keys);
    lua_getfield(L, 1, "maxsize");
    if (!lua_isnil(L, -1)) {
      if (!lua_isinteger(L, -1)) luaL_argerror(L, 1, "maxsize must be an integer");
      *maxsize = lua_tointeger(L, -1);
    }
    lua_getfield(L, 1, "bytes");
    if (!lua_isnil(L, -1)) {
      if (!lua_isinteger(L, -1)) luaL_argerror(L, 1, "bytes must be an integer");
      b = lua_tointeger(L, -1);
    }
    lua_pop(L, 2);
  } else if (!lua_isnoneornil(L, 1)) {
    *maxsize = luaL_checkinteger(L, 1);
  }
  *bytes = opt_bytes(L, 1, b);
}

static int core_queue(lua_State *L) {
  lua_Integer maxsize;
  size_t bytes;
  queue_args(L, "Queue", &maxsize, &bytes);
  new_queue(L, &QUEUE_C, maxsize, bytes, 0);
  return 1;
}

static int core_joinable_queue(lua_State *L) {
  lua_Integer maxsize;
  size_t bytes;
  queue_args(L, "JoinableQueue", &maxsize, &bytes);
  new_queue(L, &JOINABLE_C, maxsize, bytes, 1);
  return 1;
}

static int core_simple_queue(lua_State *L) {
  static const char *const keys[] = { "bytes", NULL };
  lua_Integer b = 0;
  mp_checknargs(L, 1);
  if (lua_istable(L, 1)) {
    mp_checkoptions(L, 1, "SimpleQueue", keys);
    lua_getfield(L, 1, "bytes");
    if (!lua_isnil(L, -1)) b = luaL_checkinteger(L, -1);
    lua_pop(L, 1);
  } else if (!lua_isnoneornil(L, 1)) {
    luaL_typeerror(L, 1, "nil or table");
  }
  new_queue(L, &SIMPLE_C, 0, opt_bytes(L, 1, b), 0);
  return 1;
}

/* For mp.wait (lwait.c): the ring of a queue at idx, or NULL if idx is not a queue. */
mp_ring *mp_queue_ring(lua_State *L, int idx) {
  queue_ud *q = mp_testself(L, idx, &ANY_QUEUE_C);
  if (q == NULL) return NULL;
  if (q->ring.hdr == NULL) luaL_error(L, "queue is closed");
  return &q->ring;
}

void mp_queue_open(lua_State *L) {
  static const luaL_Reg simple[] = {
    {"put", q_put}, {"get", q_get}, {"empty", q_empty}, {"close", q_close},
    {NULL, NULL}
  };
  static const luaL_Reg methods[] = {
    {"put", q_put}, {"get", q_get}, {"put_nowait", q_put_nowait}, {"get_nowait", q_get_nowait},
    {"qsize", q_qsize}, {"empty", q_empty}, {"full", q_full}, {"close", q_close},
    {"join_thread", q_noop}, {"cancel_join_thread", q_noop},
    {NULL, NULL}
  };
  static const luaL_Reg joinable[] = {
    {"put", q_put}, {"get", q_get}, {"put_nowait", q_put_nowait}, {"get_nowait", q_get_nowait},
    {"qsize", q_qsize}, {"empty", q_empty}, {"full", q_full}, {"close", q_close},
    {"join_thread", q_noop}, {"cancel_join_thread", q_noop},
    {"task_done", q_task_done}, {"join", q_join},
    {NULL, NULL}
  };
  static const luaL_Reg metamethods[] = {
    {"__gc", q_gc}, {"__close", q_gc}, {"__tostring", q_tostring},
    {NULL, NULL}
  };
  mp_newclass(L, &QUEUE_C, methods, metamethods);
  mp_newclass(L, &SIMPLE_C, simple, metamethods);
  mp_newclass(L, &JOINABLE_C, joinable, metamethods);
  lua_pop(L, 3);
  mp_travel_register(&QUEUE_C, &QUEUE_TRAVEL);
  mp_travel_register(&SIMPLE_C, &QUEUE_TRAVEL);
  mp_travel_register(&JOINABLE_C, &QUEUE_TRAVEL);
  static const luaL_Reg funcs[] = {
    {"Queue", core_queue},
    {"SimpleQueue", core_simple_queue},
    {"JoinableQueue", core_joinable_queue},
    {NULL, NULL}
  };
  luaL_setfuncs(L, funcs, 0);
}

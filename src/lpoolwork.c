/*
** The loop a pool worker runs (core.pool_work), wherever it runs: a process
** forked here, one the fork server started, an MPI rank. It takes batches
** through the transport's take, runs each task under a message handler, and
** keeps each result with the transport before the next task starts (lpool.h
** has the wire format; the parent's side is lpool.c).
*/
#define _GNU_SOURCE
#include <errno.h>
#include <string.h>

#include "lpool.h"
#include "engine/identity.h"

#define FN_CACHE_MAX 256
#define GC_FDS 256         /* a worker collects garbage after receiving this many fds */

/*
** Message handler for a task's error: {message, traceback, value, tostring(value)}, the
** traceback cut where the pool's own frames begin (upvalue 1: their depth).
*/
static int task_msgh(lua_State *L) {
  lua_settop(L, 1);
  lua_pushvalue(L, 1);                   /* 2: the raised value (lua_tostring converts a number at 1) */
  int raised = lua_type(L, 1) != LUA_TSTRING;
  const char *msg = lua_tostring(L, 1);
  if (msg == NULL) {
    if (luaL_callmeta(L, 1, "__tostring") && lua_type(L, -1) == LUA_TSTRING) msg = lua_tostring(L, -1);
    else msg = lua_pushfstring(L, "(error object is a %s value)", luaL_typename(L, 1));
  }
  int depth = (int)lua_tointeger(L, lua_upvalueindex(1));
  lua_Debug ar;
  int total = 0;
  while (lua_getstack(L, total, &ar)) total++;
  int keep = total - depth - 1;          /* the task's own frames (the handler is level 0) */
  luaL_traceback(L, L, NULL, 1);
  const char *tb = lua_tostring(L, -1), *p = tb;
  for (int lines = -1; *p && lines < keep; lines++) {
    const char *nl = strchr(p, '\n');
    if (nl == NULL) { p += strlen(p); break; }
    p = nl + 1;
  }
  size_t len = (size_t)(p - tb);
  if (len > 0 && tb[len - 1] == '\n') len--;
  lua_createtable(L, 3, 0);
  lua_pushstring(L, msg);
  lua_rawseti(L, -2, 1);
  lua_pushlstring(L, tb, len);
  lua_rawseti(L, -2, 2);
  if (raised) {                          /* the raised value, and its tostring */
    lua_pushvalue(L, 2);
    lua_rawseti(L, -2, 3);
    luaL_tolstring(L, 2, NULL);
    lua_rawseti(L, -2, 4);
  }
  return 1;
}

static void header(lua_State *L, mp_pc_buf *b, char kind, uint64_t id, uint32_t count) {
  b->len = 0;
  if (mp_pc_reserve(b, HDR) != 0) luaL_error(L, "not enough memory");
  memset(b->data, 0, HDR);
  b->data[0] = kind;
  mp_pc_put64(b->data + 8, id);
  mp_pc_put32(b->data + 16, count);
  b->len = HDR;
}

/*
** An error result for task id from the value at errv ({message, traceback,
** value} or a message): message, traceback, pid, and the raised value when it
** can be sent (else its string form).
*/
static void error_result(lua_State *L, mp_pc_buf *b, uint64_t id, int errv, char kind) {
  header(L, b, kind, id, 4);
  int top = lua_gettop(L), tab = lua_type(L, errv) == LUA_TTABLE;
  /* Pass 0 sends the raised value itself, pass 1 its string form, pass 2 none. */
  for (int pass = 0; pass < 3; pass++) {
    if (tab) { lua_rawgeti(L, errv, 1); lua_rawgeti(L, errv, 2); }
    else { const char *m = lua_tostring(L, errv); lua_pushstring(L, m ? m : "unknown error"); lua_pushnil(L); }
    lua_pushinteger(L, mp_self_pid());
    if (tab && pass < 2) lua_rawgeti(L, errv, pass == 0 ? 3 : 4); else lua_pushnil(L);
    if (mp_pool_pgroup(L, b, top + 1, NULL) == LUA_OK) break;
    lua_settop(L, top);
    b->len = HDR;
  }
  lua_settop(L, top);
}

/*
** Runs one task entry; fds[0..nfds) came with its batch. Stack: fn cache at
** `cache`, message handler at `msgh`. Leaves the result entry in b.
*/
static void run_task(lua_State *L, mp_pc_buf *b, const char *m, size_t len, const int *fds, int nfds,
                     int cache, int msgh) {
  char kind = m[0];
  uint32_t fn_id = mp_pc_get32(m + 4), fn_len = mp_pc_get32(m + 16), count = mp_pc_get32(m + 20);
  uint32_t fd_base = mp_pc_get32(m + 24), nf = mp_pc_get32(m + 28);
  uint64_t id = mp_pc_get64(m + 8);
  const char *p = m + HDR, *end = m + len;
  int base = lua_gettop(L);
  if ((size_t)(end - p) < fn_len || fd_base > (uint32_t)nfds || nf > (uint32_t)nfds - fd_base)
    luaL_error(L, "pool: corrupt task message");
  fds += fd_base;               /* this task's mp objects name their fds from 0 */
  if (fn_id == 0 || lua_rawgeti(L, cache, fn_id) == LUA_TNIL) {
    if (fn_id != 0) lua_pop(L, 1);
    if (fn_len == 0) lua_pushliteral(L, "not sent");  /* the previous task's, which failed */
    else if (mp_pool_pdecode(L, p, fn_len, fds, nf) == LUA_OK) goto cache_it;
    lua_pushfstring(L, "cannot receive the task's function: %s", lua_tostring(L, -1));
    goto fail;
cache_it:
    lua_settop(L, base + 1);
    if (fn_id != 0) {           /* 0: it carries mp objects, never cached */
      if (lua_rawlen(L, cache) >= FN_CACHE_MAX) { lua_newtable(L); lua_replace(L, cache); }
      lua_pushvalue(L, -1);
      lua_rawseti(L, cache, fn_id);
    }
  }
  int fn = base + 1;
  p += fn_len;
  header(L, b, 'R', id, count);
  uint32_t total = 0;
  while (end - p >= 8) {
    uint32_t glen = mp_pc_get32(p), gn = mp_pc_get32(p + 4);
    p += 8;
    if ((size_t)(end - p) < glen) luaL_error(L, "pool: corrupt task message");
    luaL_checkstack(L, 2 * (int)gn + 16, "too many values");
    int a = lua_gettop(L) + 1;
    if (mp_pool_pdecode(L, p, glen, fds, nf) != LUA_OK) {
      lua_pushfstring(L, "cannot receive the task's arguments: %s", lua_tostring(L, -1));
      goto fail;
    }
    p += glen;
    int n = lua_gettop(L) - a + 1;
    if (kind == 'A') {
      lua_pushvalue(L, fn);
      lua_rotate(L, a, 1);
      if (lua_pcall(L, n, LUA_MULTRET, msgh) != LUA_OK) goto fail;
      int r = lua_gettop(L) - a + 1;
      mp_pc_put32(b->data + 16, (uint32_t)r);
      if (r > 0 && mp_pool_pgroup(L, b, a, NULL) != LUA_OK) goto unsendable;
      continue;
    }
    for (int k = 0; k < n; k++) {
      lua_pushvalue(L, fn);
      int nargs = 1;
      if (kind == 'S') {
        int tt = a + k;
        if (lua_type(L, tt) != LUA_TTABLE) {
          lua_pushfstring(L, "starmap: item %d is not a table of arguments", (int)(total + (uint32_t)k + 1));
          goto fail;
        }
        lua_Integer na = lua_getfield(L, tt, "n") == LUA_TNUMBER ? lua_tointeger(L, -1) : (lua_Integer)lua_rawlen(L, tt);
        lua_pop(L, 1);
        luaL_checkstack(L, (int)na + 4, "too many arguments");
        for (lua_Integer q = 1; q <= na; q++) lua_rawgeti(L, tt, q);
        nargs = (int)na;
      } else {
        lua_pushvalue(L, a + k);
      }
      if (lua_pcall(L, nargs, 1, msgh) != LUA_OK) goto fail;
    }
    if (n > 0 && mp_pool_pgroup(L, b, a + n, NULL) != LUA_OK) goto unsendable;   /* results above args */
    lua_settop(L, a - 1);
    total += (uint32_t)n;
  }
  lua_settop(L, base);
  return;
unsendable:
  lua_pushfstring(L, "cannot send the task's result: %s", lua_tostring(L, -1));
fail:
  error_result(L, b, id, lua_gettop(L), 'E');
  lua_settop(L, base);
}

static void check_io(lua_State *L, int err, const char *what) {
  if (err) mp_raise_errno(L, err, what);
}

/*
** core.pool_work(tr, index, maxtasks): the worker's loop. Runs tasks until the
** parent closes the task socket (or maxtasks tasks were run) and returns.
*/
int mp_pool_work(lua_State *L) {
  pool_tr *t = mp_pool_checktr(L);
  int index = mp_pool_index(L, t, 2);
  lua_Integer maxtasks = luaL_optinteger(L, 3, 0);
  lua_settop(L, 1);
  mp_pc_buf *b = &t->pt.out;
  lua_newtable(L);                                   /* 2: function cache */
  lua_Debug ar;
  int depth = 0;
  while (lua_getstack(L, depth, &ar)) depth++;
  lua_pushinteger(L, depth);
  lua_pushcclosure(L, task_msgh, 1);                 /* 3: message handler */
  lua_Integer done = 0;
  int fds_seen = 0;
  while (maxtasks == 0 || done < maxtasks) {
    const char *m;
    size_t len;
    const int *fds;
    int nfds, err;
    /*
    ** The objects decoded from mp objects' fds hold fds of their own until
    ** collected, which the collector does not count: after enough of them, a
    ** full collection, so that tasks that pass a Queue each time do not run
    ** the worker out of fds.
    */
    if (fds_seen >= GC_FDS) { lua_gc(L, LUA_GCCOLLECT); fds_seen = 0; }
    while ((err = t->ops->take(t->impl, index, &m, &len, &fds, &nfds)) == EINTR) mp_check_interrupt(L);
    if (err == EPIPE) break;
    check_io(L, err, "pool: receiving a task");
    fds_seen += nfds;
    for (const char *q = m + MP_PC_CHDR, *end = m + len; end - q >= 4; done++) {
      uint32_t n = mp_pc_get32(q);
      q += 4;
      if ((size_t)(end - q) < n || n < HDR) luaL_error(L, "pool: corrupt task message");
      t->ops->begin(t->impl, index, mp_pc_get64(q + 8));
      run_task(L, b, q, n, fds, nfds, 2, 3);
      check_io(L, t->ops->keep(t->impl, index, b->data, b->len), "pool: sending a result");
      t->ops->begin(t->impl, index, 0);
      lua_settop(L, 3);
      q += n;
    }
    check_io(L, t->ops->end(t->impl, index), "pool: sending a result");
  }
  return 0;
}

/*
** tr:send_init_error(index, message, traceback): the initializer failed in
** worker index; the error goes out as a batch's only result would.
*/
int mp_pool_send_init_error(lua_State *L) {
  pool_tr *t = mp_pool_checktr(L);
  int index = mp_pool_index(L, t, 2);
  lua_settop(L, 4);
  lua_createtable(L, 2, 0);
  lua_pushvalue(L, 3);
  lua_rawseti(L, -2, 1);
  lua_pushvalue(L, 4);
  lua_rawseti(L, -2, 2);
  mp_pc_buf *b = &t->pt.out;
  error_result(L, b, 0, 5, 'I');
  check_io(L, t->ops->keep(t->impl, index, b->data, b->len), "pool: sending a result");
  check_io(L, t->ops->end(t->impl, index), "pool: sending a result");
  return 0;
}


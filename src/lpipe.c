/*
** Binding for mp.Pipe's Connections (engine/conn.c) and mp.wait.
*/
#include <errno.h>
#include <math.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "mp_aux.h"
#include "serial.h"
#include "engine/clock.h"
#include "engine/conn.h"
#include "engine/ring.h"

#define CONN_T "mp.Connection"

typedef struct conn_ud {
  mp_conn c;
  int closed;
} conn_ud;

mp_ring *mp_queue_ring(lua_State *L, int idx);   /* lqueue.c */

static conn_ud *check_open(lua_State *L) {
  conn_ud *u = mp_checkself(L, 1, "Connection");
  if (u->closed) luaL_error(L, "connection is closed");
  return u;
}

static conn_ud *check_readable(lua_State *L) {
  conn_ud *u = check_open(L);
  if (u->c.rfd < 0) luaL_error(L, "connection is write-only");
  return u;
}

static conn_ud *check_writable(lua_State *L) {
  conn_ud *u = check_open(L);
  if (u->c.wfd < 0) luaL_error(L, "connection is read-only");
  return u;
}

static void write_frame(lua_State *L, conn_ud *u, const char *p, size_t n, const char *q, size_t m) {
  int rc;
  while ((rc = mp_conn_write(&u->c, p, n, q, m)) == EINTR)
    mp_check_interrupt(L);
  if (rc != 0) mp_raise_errno(L, rc, "send");
}

/* conn:send(v): one frame holding the encoded value, written with one write(). */
static int conn_send(lua_State *L) {
  conn_ud *u = check_writable(L);
  lua_settop(L, 2);
  mp_wbuf *b = mp_serial_scratch(L);
  mp_wbuf_reserve(L, b, MP_CONN_MAXHDR);
  b->len = MP_CONN_MAXHDR;                         /* the header goes in front */
  mp_serial_encode(L, 2, 1, b, "value");
  size_t h = mp_conn_header(b->data, b->len - MP_CONN_MAXHDR);
  size_t start = MP_CONN_MAXHDR - h;
  size_t len = b->len;
  /* Interrupt handlers may reuse the scratch buffer: keep our own copy only if one runs. */
  int rc = mp_conn_write(&u->c, b->data + start, len - start, NULL, 0);
  if (rc == EINTR) {
    luaL_Buffer keep;
    char *copy = luaL_buffinitsize(L, &keep, len - start);
    memcpy(copy, b->data + start, len - start);
    luaL_pushresultsize(&keep, len - start);
    size_t n;
    const char *s = lua_tolstring(L, -1, &n);
    mp_check_interrupt(L);
    write_frame(L, u, s, n, NULL, 0);
  } else if (rc != 0) {
    mp_raise_errno(L, rc, "send");
  }
  return 0;
}

/*
** conn:send_bytes(s [, offset [, size]]): `size` bytes of s from 1-based
** position `offset` (Lua's convention; Python's offset is 0-based).
*/
static int conn_send_bytes(lua_State *L) {
  conn_ud *u = check_writable(L);
  size_t len;
  const char *s = luaL_checklstring(L, 2, &len);
  lua_Integer offset = luaL_optinteger(L, 3, 1) - 1;
  luaL_argcheck(L, offset >= 0, 3, "offset must be at least 1");
  luaL_argcheck(L, (size_t)offset <= len, 3, "offset is past the end of the string");
  lua_Integer size = luaL_optinteger(L, 4, (lua_Integer)(len - (size_t)offset));
  luaL_argcheck(L, size >= 0, 4, "size is negative");
  luaL_argcheck(L, (size_t)size <= len - (size_t)offset, 4, "offset + size is past the end of the string");
  char hdr[MP_CONN_MAXHDR];
  size_t h = mp_conn_header(hdr, (uint64_t)size);
  write_frame(L, u, hdr + MP_CONN_MAXHDR - h, h, s + offset, (size_t)size);
  return 0;
}

/* Waits for a whole frame; raises EOFError at the end. */
static const char *next_frame(lua_State *L, conn_ud *u, uint64_t *len) {
  const char *p;
  int rc;
  while ((rc = mp_conn_frame(&u->c, INFINITY, &p, len)) == EINTR)
    mp_check_interrupt(L);
  if (rc == MP_CONN_EOF) mp_raise(L, "EOFError", "the other end of the pipe is closed");
  if (rc == ENOMEM) luaL_error(L, "not enough memory for a message");
  if (rc != 0) mp_raise_errno(L, rc, "recv");
  return p;
}

/* conn:recv() --> the value sent. The frame is consumed before decoding. */
static int conn_recv(lua_State *L) {
  conn_ud *u = check_readable(L);
  uint64_t len;
  const char *p = next_frame(L, u, &len);
  mp_conn_consume(&u->c);        /* the bytes stay valid until the next read */
  lua_settop(L, 0);
  return mp_serial_decode(L, p, (size_t)len);
}

/* conn:recv_bytes([maxlength]) --> string */
static int conn_recv_bytes(lua_State *L) {
  conn_ud *u = check_readable(L);
  lua_Integer max = luaL_optinteger(L, 2, -1);
  if (!lua_isnoneornil(L, 2)) luaL_argcheck(L, max >= 0, 2, "negative maxlength");
  uint64_t len;
  const char *p = next_frame(L, u, &len);
  mp_conn_consume(&u->c);
  if (max >= 0 && len > (uint64_t)max)
    return luaL_error(L, "message of %I bytes is longer than maxlength %I", (lua_Integer)len, max);
  lua_pushlstring(L, p, (size_t)len);
  return 1;
}

/* conn:poll([timeout]) --> boolean. No argument: do not wait; nil: wait forever. */
static int conn_poll(lua_State *L) {
  conn_ud *u = check_readable(L);
  double deadline = lua_gettop(L) < 2 ? -INFINITY : mp_optdeadline(L, 2);
  int rc;
  while ((rc = mp_conn_poll(&u->c, deadline)) == EINTR)
    mp_check_interrupt(L);
  if (rc != 0 && rc != ETIMEDOUT) return mp_raise_errno(L, rc, "poll");
  lua_pushboolean(L, rc == 0);
  return 1;
}

static int conn_fileno(lua_State *L) {
  conn_ud *u = check_open(L);
  lua_pushinteger(L, u->c.rfd >= 0 ? u->c.rfd : u->c.wfd);
  return 1;
}

/* close(), __close and __gc: closes this process's copies of the fds. */
static int conn_close(lua_State *L) {
  conn_ud *u = mp_checkself(L, 1, "Connection");
  mp_conn_close(&u->c);
  u->closed = 1;
  return 0;
}

/* Fields: closed, readable, writable; then the methods (upvalue 2). */
static int conn_index(lua_State *L) {
  conn_ud *u = mp_checkself(L, 1, "Connection");
  const char *k = lua_tostring(L, 2);
  if (k != NULL) {
    if (strcmp(k, "closed") == 0) { lua_pushboolean(L, u->closed); return 1; }
    if (strcmp(k, "readable") == 0) { lua_pushboolean(L, !u->closed && u->c.rfd >= 0); return 1; }
    if (strcmp(k, "writable") == 0) { lua_pushboolean(L, !u->closed && u->c.wfd >= 0); return 1; }
  }
  lua_settop(L, 2);
  lua_gettable(L, lua_upvalueindex(2));
  return 1;
}

static int conn_tostring(lua_State *L) {
  conn_ud *u = mp_checkself(L, 1, "Connection");
  if (u->closed) lua_pushliteral(L, "<Connection closed>");
  else lua_pushfstring(L, "<Connection fd=%d%s%s>", u->c.rfd >= 0 ? u->c.rfd : u->c.wfd,
                       u->c.rfd >= 0 ? " readable" : "", u->c.wfd >= 0 ? " writable" : "");
  return 1;
}

static conn_ud *new_conn(lua_State *L) {
  conn_ud *u = lua_newuserdatauv(L, sizeof *u, 0);
  memset(u, 0, sizeof *u);
  u->c.rfd = u->c.wfd = -1;
  u->closed = 1;                          /* until the fds exist */
  luaL_setmetatable(L, CONN_T);
  return u;
}

/* core.Pipe([duplex]) or Pipe{duplex = false} --> two Connections */
static int core_pipe(lua_State *L) {
  int duplex = 1;
  if (lua_istable(L, 1)) {
    lua_getfield(L, 1, "duplex");
    if (!lua_isnil(L, -1)) duplex = lua_toboolean(L, -1);
    lua_pop(L, 1);
  } else if (!lua_isnoneornil(L, 1)) {
    luaL_checktype(L, 1, LUA_TBOOLEAN);
    duplex = lua_toboolean(L, 1);
  }
  conn_ud *a = new_conn(L);
  conn_ud *b = new_conn(L);
  mp_conn ca, cb;
  int err = mp_conn_pipe(&ca, &cb, duplex);
  if (err) return mp_raise_errno(L, err, "cannot create pipe");
  a->c = ca; a->closed = 0;
  b->c = cb; b->closed = 0;
  return 2;
}

/* For mp.wait: the Connection at idx, or NULL. */
static conn_ud *to_conn(lua_State *L, int idx) {
  if (lua_type(L, idx) != LUA_TUSERDATA || !lua_getmetatable(L, idx)) return NULL;
  luaL_getmetatable(L, CONN_T);
  int same = lua_rawequal(L, -1, -2);
  lua_pop(L, 2);
  return same ? lua_touserdata(L, idx) : NULL;
}

/*
** core.wait(list, timeout) --> the items of list that are ready: Connections
** with something to read (or at EOF), queues with an item, and integers
** (file descriptors such as Process.sentinel) that poll readable.
*/
static int core_wait(lua_State *L) {
  luaL_checktype(L, 1, LUA_TTABLE);
  double deadline = mp_optdeadline(L, 2);
  int n = (int)luaL_len(L, 1);
  struct pollfd *fds = lua_newuserdatauv(L, sizeof *fds * (size_t)(n > 0 ? n : 1), 0);
  mp_ring **rings = lua_newuserdatauv(L, sizeof *rings * (size_t)(n > 0 ? n : 1), 0);
  int *ready = lua_newuserdatauv(L, sizeof *ready * (size_t)(n > 0 ? n : 1), 0);
  /* Check every item first (may raise: nothing registered yet). */
  for (int i = 0; i < n; i++) {
    lua_geti(L, 1, i + 1);
    rings[i] = NULL;
    fds[i].fd = -1;
    fds[i].events = POLLIN;
    fds[i].revents = 0;
    conn_ud *u;
    if ((u = to_conn(L, -1)) != NULL) {
      if (u->closed || u->c.rfd < 0) luaL_error(L, "bad argument #1 to 'wait' (item %d: connection is closed or write-only)", i + 1);
      fds[i].fd = u->c.rfd;
    } else if ((rings[i] = mp_queue_ring(L, -1)) != NULL) {
      fds[i].fd = rings[i]->bell_r;
    } else if (lua_isinteger(L, -1)) {
      fds[i].fd = (int)lua_tointeger(L, -1);
    } else {
      luaL_error(L, "bad argument #1 to 'wait' (item %d: Connection, queue or file descriptor expected, got %s)",
                 i + 1, luaL_typename(L, -1));
    }
    lua_pop(L, 1);
  }
  for (;;) {
    int any = 0;
    for (int i = 0; i < n; i++) {
      ready[i] = 0;
      if (rings[i] != NULL) ready[i] = mp_ring_poll_begin(rings[i]);
      else {
        lua_geti(L, 1, i + 1);
        conn_ud *u = to_conn(L, -1);
        lua_pop(L, 1);
        if (u != NULL && mp_conn_buffered(&u->c) > 0) ready[i] = 1;
      }
      any |= ready[i];
    }
    int rc = 0;
    if (!any) {
      int sliced;
      double end = mp_slice_end(deadline, &sliced);
      double left = end - mp_now();
      int ms = left <= 0 ? 0 : (int)ceil(left * 1000);
      int got = poll(fds, (nfds_t)n, ms);
      if (got < 0) rc = errno == EINTR ? EINTR : errno;
      else if (got == 0) rc = sliced ? EINTR : ETIMEDOUT;
      for (int i = 0; i < n && got > 0; i++) {
        if (rings[i] != NULL) ready[i] = mp_ring_readable(rings[i]);
        else ready[i] = fds[i].revents != 0;
        any |= ready[i];
      }
    }
    for (int i = 0; i < n; i++)
      if (rings[i] != NULL) mp_ring_poll_end(rings[i]);
    if (any || rc == ETIMEDOUT) break;
    if (rc == EINTR) mp_check_interrupt(L);
    else if (rc != 0) return mp_raise_errno(L, rc, "wait");
  }
  lua_createtable(L, 0, 0);
  int k = 0;
  for (int i = 0; i < n; i++) {
    if (!ready[i]) continue;
    lua_geti(L, 1, i + 1);
    lua_rawseti(L, -2, ++k);
  }
  return 1;
}

void mp_pipe_open(lua_State *L) {
  static const luaL_Reg methods[] = {
    {"send", conn_send}, {"recv", conn_recv},
    {"send_bytes", conn_send_bytes}, {"recv_bytes", conn_recv_bytes},
    {"poll", conn_poll}, {"fileno", conn_fileno}, {"close", conn_close},
    {NULL, NULL}
  };
  static const luaL_Reg metamethods[] = {
    {"__gc", conn_close}, {"__close", conn_close}, {"__tostring", conn_tostring},
    {NULL, NULL}
  };
  mp_newclass(L, CONN_T, methods, metamethods);
  lua_getfield(L, -1, "__index");           /* the methods table */
  lua_pushvalue(L, -2);
  lua_insert(L, -2);                        /* metatable, methods as upvalues 1, 2 */
  lua_pushcclosure(L, conn_index, 2);
  lua_setfield(L, -2, "__index");
  lua_pop(L, 1);
  static const luaL_Reg funcs[] = {
    {"Pipe", core_pipe},
    {"wait", core_wait},
    {NULL, NULL}
  };
  luaL_setfuncs(L, funcs, 0);
}

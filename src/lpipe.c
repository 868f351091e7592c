/*
** Binding for mp.Pipe's Connections (engine/conn.c) and mp.wait.
*/
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "mp_aux.h"
#include "mp_travel.h"
#include "serial.h"
#include "engine/clock.h"
#include "engine/conn.h"
#include "engine/ring.h"
#include "ltransport.h"

#define CONN_T "mp.Connection"

typedef struct conn_ud {
  const mp_class *cls;
  mp_conn c;
  int closed;
} conn_ud;

static int conn_export(lua_State *L, int idx, mp_travel_desc *d);
static void conn_import(lua_State *L, const mp_class *c, const mp_travel_desc *d, int dep);
static const mp_travel CONN_TRAVEL = { conn_export, conn_import };
static const mp_class CONN_C = { CONN_T, sizeof(conn_ud), NULL };

static conn_ud *check_open(lua_State *L) {
  conn_ud *u = mp_checkself(L, 1, &CONN_C);
  if (u->closed) luaL_error(L, "connection is closed");
  return u;
}

static conn_ud *check_readable(lua_State *L) {
  conn_ud *u = check_open(L);
  if (!mp_conn_readable(&u->c)) luaL_error(L, "connection is write-only");
  return u;
}

static conn_ud *check_writable(lua_State *L) {
  conn_ud *u = check_open(L);
  if (!mp_conn_writable(&u->c)) luaL_error(L, "connection is read-only");
  return u;
}

static void send_raise(lua_State *L, int rc) {
  if (rc == EPIPE) luaL_error(L, "send: broken pipe (the other end is closed)");
  mp_raise_errno(L, rc, "send");
}

/* conn:send(v): the encoded value, as one message. */
static int conn_send(lua_State *L) {
  conn_ud *u = check_writable(L);
  mp_checknargs(L, 2);              /* a:send(1, 2) would send 1: an error instead */
  lua_settop(L, 2);
  for (;;) {
    mp_wbuf *b = mp_serial_scratch(L);
    mp_serial_encode(L, 2, 1, b, "value");
    int rc = mp_conn_send(&u->c, b->data, b->len);
    if (rc == 0) return 0;
    /* A signal handler may use the scratch buffer: encode again after it. */
    if (rc == EINTR) { mp_check_interrupt(L); continue; }
    send_raise(L, rc);
  }
}

/*
** conn:send_bytes(s [, offset [, size]]): `size` bytes of s from 1-based
** position `offset` (Lua's convention; Python's offset is 0-based).
*/
static int conn_send_bytes(lua_State *L) {
  conn_ud *u = check_writable(L);
  mp_checknargs(L, 4);
  size_t len;
  const char *s = luaL_checklstring(L, 2, &len);
  lua_Integer offset = luaL_optinteger(L, 3, 1) - 1;
  luaL_argcheck(L, offset >= 0, 3, "offset must be at least 1");
  luaL_argcheck(L, (size_t)offset <= len, 3, "offset is past the end of the string");
  lua_Integer size = luaL_optinteger(L, 4, (lua_Integer)(len - (size_t)offset));
  luaL_argcheck(L, size >= 0, 4, "size is negative");
  luaL_argcheck(L, (size_t)size <= len - (size_t)offset, 4, "offset + size is past the end of the string");
  int rc;
  while ((rc = mp_conn_send(&u->c, s + offset, (size_t)size)) == EINTR)
    mp_check_interrupt(L);
  if (rc != 0) send_raise(L, rc);
  return 0;
}

static void conn_end(void *ctx, mp_ring_msg *m) { mp_conn_recv_end(ctx, m); }

/* Takes the next message and delivers it (decoded, or raw bytes). */
static int receive(lua_State *L, conn_ud *u, int raw, lua_Integer max) {
  for (;;) {
    mp_ring_msg m;
    int rc;
    while ((rc = mp_conn_recv_begin(&u->c, INFINITY, &m)) == EINTR)
      mp_check_interrupt(L);
    if (rc == MP_CONN_EOF) return mp_raise(L, "EOFError", "the other end of the pipe is closed");
    if (rc == EPROTO) return luaL_error(L, "recv: the connection's shared memory is corrupt");
    if (rc != 0) return mp_raise_errno(L, rc, "recv");
    if (max >= 0 && m.len > (uint64_t)max) {
      /* Python leaves the connection unusable here; we drop the message instead. */
      uint64_t len = m.len;
      int gone = m.streamed && mp_ring_read_stream(&u->c.rx, &m, NULL) == ECANCELED;
      mp_conn_recv_end(&u->c, &m);
      if (gone) continue;                  /* abandoned by its sender: not a message */
      return luaL_error(L, "message of %I bytes is longer than maxlength %I", (lua_Integer)len, max);
    }
    int n = mp_msg_deliver(L, &u->c.rx, &m, conn_end, &u->c, raw);
    if (n >= 0) return n;
  }
}

/* conn:recv() --> the value sent */
static int conn_recv(lua_State *L) {
  conn_ud *u = check_readable(L);
  mp_checknargs(L, 1);
  return receive(L, u, 0, -1);
}

/* conn:recv_bytes([maxlength]) --> string */
static int conn_recv_bytes(lua_State *L) {
  conn_ud *u = check_readable(L);
  mp_checknargs(L, 2);
  lua_Integer max = -1;
  if (!lua_isnoneornil(L, 2)) {
    max = luaL_checkinteger(L, 2);
    luaL_argcheck(L, max >= 0, 2, "negative maxlength");
  }
  return receive(L, u, 1, max);
}

/* conn:poll([timeout]) --> boolean. No argument: do not wait; nil: wait forever. */
static int conn_poll(lua_State *L) {
  conn_ud *u = check_readable(L);
  mp_checknargs(L, 2);
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
  mp_checknargs(L, 1);
  lua_pushinteger(L, mp_conn_fileno(&u->c));
  return 1;
}

/* __gc and __close (which also gets the error): closes this process's copies of the fds. */
static int conn_gc(lua_State *L) {
  conn_ud *u = mp_checkself(L, 1, &CONN_C);
  mp_conn_close(&u->c);
  u->closed = 1;
  return 0;
}

/* conn:close() */
static int conn_close(lua_State *L) {
  mp_checknargs(L, 1);
  return conn_gc(L);
}

/* Fields: closed, readable, writable; then the methods (upvalue 1). */
static int conn_index(lua_State *L) {
  /* Methods first: this runs for every conn:send(). */
  lua_pushvalue(L, 2);
  if (lua_rawget(L, lua_upvalueindex(1)) != LUA_TNIL) return 1;
  conn_ud *u = mp_checkself(L, 1, &CONN_C);
  const char *k = lua_tostring(L, 2);
  if (k != NULL) {
    if (strcmp(k, "closed") == 0) { lua_pushboolean(L, u->closed); return 1; }
    if (strcmp(k, "readable") == 0) { lua_pushboolean(L, !u->closed && mp_conn_readable(&u->c)); return 1; }
    if (strcmp(k, "writable") == 0) { lua_pushboolean(L, !u->closed && mp_conn_writable(&u->c)); return 1; }
  }
  lua_pushnil(L);
  return 1;
}

static int conn_tostring(lua_State *L) {
  conn_ud *u = mp_checkself(L, 1, &CONN_C);
  if (u->closed) lua_pushliteral(L, "<Connection closed>");
  else lua_pushfstring(L, "<Connection%s%s>", mp_conn_readable(&u->c) ? " readable" : "",
                       mp_conn_writable(&u->c) ? " writable" : "");
  return 1;
}

static conn_ud *new_conn(lua_State *L) {
  conn_ud *u = mp_newself(L, &CONN_C, 0);
  mp_ring_empty(&u->c.rx);
  mp_ring_empty(&u->c.tx);
  u->closed = 1;                          /* until the rings exist */
  return u;
}

/* core.Pipe([duplex]) or Pipe{duplex = false} --> two Connections */
static int core_pipe(lua_State *L) {
  static const char *const keys[] = { "duplex", NULL };
  int duplex = 1;
  mp_checknargs(L, 1);
  if (lua_istable(L, 1)) {
    mp_checkoptions(L, 1, "Pipe", keys);
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

/*
** Travelling (mp_travel.h): each direction's ring (memfd) with the doorbell
** end this end holds: the read end for what it receives, the write end for
** what it sends. So the receiver's copy counts in EOF and EPIPE exactly as
** an inherited copy does.
*/
enum { C_RX = 1, C_TX = 2 };

static int conn_export(lua_State *L, int idx, mp_travel_desc *d) {
  conn_ud *u = lua_touserdata(L, idx);
  if (u->closed) luaL_error(L, "cannot send a closed connection");
  int flags = (mp_conn_readable(&u->c) ? C_RX : 0) | (mp_conn_writable(&u->c) ? C_TX : 0);
  mp_travel_put(d, (uint64_t)flags);
  int memfd;
  size_t len;
  if (flags & C_RX) {
    if (mp_ring_export(&u->c.rx, &memfd, &len) != 0) luaL_error(L, "cannot send a closed connection");
    mp_travel_put(d, len);
    d->fds[d->nfds++] = memfd;
    d->fds[d->nfds++] = u->c.rx.bell_r;
  }
  if (flags & C_TX) {
    if (mp_ring_export(&u->c.tx, &memfd, &len) != 0) luaL_error(L, "cannot send a closed connection");
    mp_travel_put(d, len);
    d->fds[d->nfds++] = memfd;
    d->fds[d->nfds++] = u->c.tx.bell_w;
  }
  return 0;
}

/* Attaches one direction from fds[0] (memfd) and fds[1] (its doorbell end). */
static void attach_direction(lua_State *L, mp_ring *r, const int *fds, uint64_t len, int reading) {
  int memfd = mp_travel_dup(L, fds[0]);
  int bell = fcntl(fds[1], F_DUPFD_CLOEXEC, 3);
  if (bell < 0) {
    int err = errno;
    close(memfd);
    mp_raise_errno(L, err, "cannot receive a connection");
  }
  int err = mp_ring_attach(r, memfd, (size_t)len, reading ? bell : -1, reading ? -1 : bell);
  if (err) mp_raise_errno(L, err, "cannot receive a connection");
}

static void conn_import(lua_State *L, const mp_class *c, const mp_travel_desc *d, int dep) {
  (void)c;
  size_t pos = 0;
  uint64_t flags = mp_travel_get(L, d, &pos);
  int want = ((flags & C_RX) ? 2 : 0) + ((flags & C_TX) ? 2 : 0);
  if (dep || flags == 0 || flags > (C_RX | C_TX) || d->nfds != want)
    luaL_error(L, "mp.loads: corrupt connection description");
  conn_ud *u = new_conn(L);                  /* closed until both directions are there */
  int k = 0;
  if (flags & C_RX) { attach_direction(L, &u->c.rx, d->fds + k, mp_travel_get(L, d, &pos), 1); k += 2; }
  if (flags & C_TX) attach_direction(L, &u->c.tx, d->fds + k, mp_travel_get(L, d, &pos), 0);
  u->closed = 0;
  if (mp_conn_adopt(&u->c) != 0) {
    mp_conn_close(&u->c);
    u->closed = 1;
    luaL_error(L, "not enough memory");
  }
}

/* For mp.wait: the Connection at idx, or NULL. */
static conn_ud *to_conn(lua_State *L, int idx) {
  return mp_testself(L, idx, &CONN_C);
}

/*
** core.wait(list [, timeout]) --> the items of list that are ready, in list
** order: Connections with a message to read or at EOF, queues with an item,
** and integers (file descriptors such as Process.sentinel) that poll
** readable. Queues and Connections are watched without a system call per
** message: while this waits they are registered as polled, so producers ring
** their doorbell (see engine/ring.h).
*/
enum { W_FD, W_CONN, W_QUEUE };

typedef struct wait_item {
  int kind;
  mp_conn *conn;
  mp_ring *ring;
  int ready;
} wait_item;

/* Pushes v.fileno when the value at idx has such a function (and returns 1); else 0. */
static int fileno_method(lua_State *L, int idx) {
  idx = lua_absindex(L, idx);
  int t = lua_type(L, idx);
  if (t != LUA_TTABLE && t != LUA_TUSERDATA) return 0;
  if (t == LUA_TUSERDATA) {          /* indexing a userdata without __index raises */
    if (luaL_getmetafield(L, idx, "__index") == LUA_TNIL) return 0;
    lua_pop(L, 1);
  }
  if (lua_getfield(L, idx, "fileno") == LUA_TFUNCTION) return 1;
  lua_pop(L, 1);
  return 0;
}

static void wait_unregister(wait_item *items, int n) {
  for (int i = 0; i < n; i++) {
    if (items[i].kind == W_CONN) mp_conn_wait_end(items[i].conn);
    else if (items[i].kind == W_QUEUE) mp_ring_poll_end(items[i].ring, 1);
  }
}

static int core_wait(lua_State *L) {
  luaL_checktype(L, 1, LUA_TTABLE);
  double deadline = mp_optdeadline(L, 2);
  int n = (int)luaL_len(L, 1);
  size_t cnt = (size_t)(n > 0 ? n : 1);
  struct pollfd *fds = lua_newuserdatauv(L, sizeof *fds * cnt, 0);
  wait_item *items = lua_newuserdatauv(L, sizeof *items * cnt, 0);
  /* Check every item first (this may raise: nothing is registered yet). */
  for (int i = 0; i < n; i++) {
    lua_geti(L, 1, i + 1);
    wait_item *it = &items[i];
    it->conn = NULL;
    it->ring = NULL;
    fds[i].events = POLLIN;
    conn_ud *u;
    if ((u = to_conn(L, -1)) != NULL) {
      if (u->closed || !mp_conn_readable(&u->c))
        luaL_error(L, "bad argument #1 to 'wait' (item %d is a closed or write-only connection)", i + 1);
      it->kind = W_CONN;
      it->conn = &u->c;
      fds[i].fd = u->c.rx.bell_r;
    } else if ((it->ring = mp_queue_ring(L, -1)) != NULL) {
      it->kind = W_QUEUE;
      fds[i].fd = it->ring->bell_r;
    } else if (lua_isinteger(L, -1)) {
      it->kind = W_FD;
      fds[i].fd = (int)lua_tointeger(L, -1);
    } else if (fileno_method(L, -1)) {
      /* Any object with a fileno method (a socket, a file wrapper), as in Python. */
      lua_pushvalue(L, -2);
      lua_call(L, 1, 1);
      if (!lua_isinteger(L, -1))
        luaL_error(L, "bad argument #1 to 'wait' (item %d: fileno() did not return an integer)", i + 1);
      it->kind = W_FD;
      fds[i].fd = (int)lua_tointeger(L, -1);
      lua_pop(L, 1);
    } else {
      luaL_error(L, "bad argument #1 to 'wait' (item %d: Connection, queue or file descriptor expected, got %s)",
                 i + 1, luaL_typename(L, -1));
    }
    lua_pop(L, 1);
  }
  for (;;) {
    int any = 0;
    for (int i = 0; i < n; i++) {
      wait_item *it = &items[i];
      it->ready = 0;
      if (it->kind == W_CONN) it->ready = mp_conn_wait_begin(it->conn);
      else if (it->kind == W_QUEUE) it->ready = mp_ring_poll_begin(it->ring);
      fds[i].revents = 0;
      any |= it->ready;
    }
    /* Poll even when something is ready already, without waiting then, so
    ** that every ready item is reported. */
    int rc = 0;
    int sliced = 0;
    double end = any ? -INFINITY : mp_slice_end(deadline, &sliced);
    double left = end - mp_now();
    int ms = left <= 0 ? 0 : (int)ceil(left * 1000);
    int got = poll(fds, (nfds_t)n, ms);
    if (got < 0) rc = errno == EINTR ? EINTR : errno;
    else if (got == 0 && !any) rc = sliced ? EINTR : ETIMEDOUT;
    for (int i = 0; i < n && got > 0; i++) {
      wait_item *it = &items[i];
      if (it->kind == W_QUEUE) it->ready = mp_ring_readable(it->ring);
      else if (it->kind == W_CONN)
        it->ready = mp_ring_readable(&it->conn->rx) || (fds[i].revents & POLLHUP);
      else it->ready = fds[i].revents != 0;
      any |= it->ready;
    }
    if (any) rc = 0;
    wait_unregister(items, n);
    if (rc == EINTR) {
      /* A slice ended: repair what a dead sender left, then look again. */
      for (int i = 0; i < n; i++) {
        if (items[i].kind == W_QUEUE) mp_ring_rescue(items[i].ring);
        else if (items[i].kind == W_CONN) mp_ring_rescue(&items[i].conn->rx);
      }
    }
    if (any || rc == ETIMEDOUT) break;
    if (rc == EINTR) mp_check_interrupt(L);
    else if (rc != 0) return mp_raise_errno(L, rc, "wait");
  }
  lua_createtable(L, 0, 0);
  int k = 0;
  for (int i = 0; i < n; i++) {
    if (!items[i].ready) continue;
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
    {"__gc", conn_gc}, {"__close", conn_gc}, {"__tostring", conn_tostring},
    {NULL, NULL}
  };
  mp_newclass(L, &CONN_C, methods, metamethods);
  mp_travel_register(&CONN_C, &CONN_TRAVEL);
  lua_getfield(L, -1, "__index");           /* the methods table, as upvalue 1 */
  lua_pushcclosure(L, conn_index, 1);
  lua_setfield(L, -2, "__index");
  lua_pop(L, 1);
  static const luaL_Reg funcs[] = {
    {"Pipe", core_pipe},
    {"wait", core_wait},
    {NULL, NULL}
  };
  luaL_setfuncs(L, funcs, 0);
}

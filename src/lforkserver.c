/*
** Binding for the fork server (engine/forkserver.c): core.forkserver_start,
** core.forkserver_spawn and friends, used by lua/mp/process.lua for the
** "forkserver" start method.
**
** One server per lua_State: the server is a fork of its owner taken when it
** starts, and its children run in that copy of the state (its globals, its
** loaded modules, the host's C functions as they were then). The state's
** handle lives in the registry: the address, the key, the owner, this
** process's control connection, and (user values) the entry function the
** children run and the init function the server runs first.
*/
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "lprocess.h"
#include "mp_aux.h"
#include "mp_signal.h"
#include "mp_travel.h"
#include "serial.h"
#include "engine/forkserver.h"
#include "engine/identity.h"
#include "engine/proc.h"

#define SERVER_T "mp.ForkServer"

enum { UV_ENTRY = 1, UV_INIT = 2 };

typedef struct server_ud {
  const mp_class *cls;
  mp_fs_addr addr;        /* meaningful while `started` */
  int started;
  pid_t owner;            /* the process that started it */
  mp_child *svc;          /* the owner's entry for the server (NULL elsewhere) */
  int conn;               /* this process's control connection, or -1 */
  pid_t conn_pid;         /* the process `conn` belongs to */
} server_ud;

static const mp_class SERVER_C = { SERVER_T, sizeof(server_ud), NULL };

/* Registry key of this state's handle. */
static const char server_key = 0;

static server_ud *get_server(lua_State *L) {
  if (lua_rawgetp(L, LUA_REGISTRYINDEX, &server_key) == LUA_TUSERDATA) {
    server_ud *s = lua_touserdata(L, -1);
    lua_pop(L, 1);
    return s;
  }
  lua_pop(L, 1);
  server_ud *s = mp_newself(L, &SERVER_C, 2);
  s->conn = -1;
  lua_rawsetp(L, LUA_REGISTRYINDEX, &server_key);
  return s;
}

/* Forgets this process's control connection (a copy inherited by fork is left alone). */
static void drop_conn(server_ud *s) {
  if (s->conn >= 0 && s->conn_pid == (pid_t)mp_self_pid()) {
    mp_fork_keep_in_child(s->conn);
    close(s->conn);
  }
  s->conn = -1;
  s->conn_pid = 0;
}

/*
** Ends the owner's server: its lifeline closes, so it stops listening and
** exits once its children are reaped (then mp's reaping collects it).
*/
static void stop_server(server_ud *s) {
  drop_conn(s);
  if (s->svc != NULL && s->owner == (pid_t)mp_self_pid()) {
    mp_child_end_service(s->svc);
    mp_child_release(s->svc);
    mp_fs_unlink(&s->addr);
  }
  s->svc = NULL;
  s->started = 0;
}

/* __gc: the state is closing (lua_close) or the handle was replaced. */
static int server_gc(lua_State *L) {
  stop_server(mp_checkself(L, 1, &SERVER_C));
  return 0;
}

/*
** The request's payload is two messages: the preparation (the process's
** name, the client's package.path and package.cpath) and then the entry's
** arguments, decoded after the preparation is applied:
**   u32 length of the preparation, the preparation, the arguments.
** Values sent by name (a module or a field of one) resolve in the child's
** state, a copy of the server's: a module the client loaded after the
** server started is required on the way, with the client's search paths, as
** Python's forkserver imports what unpickling names.
*/
static int decode_request(lua_State *L) {
  const char *p = lua_touserdata(L, 1);
  size_t len = (size_t)lua_tointeger(L, 2);
  const int *fds = lua_touserdata(L, 3);
  size_t nfds = (size_t)lua_tointeger(L, 4);
  lua_settop(L, 0);
  return mp_serial_decode_oob(L, p, len, fds, nfds);
}

/* Decodes under lua_pcall: the values, or the error message, on top. LUA_OK or not. */
static int pdecode(lua_State *L, const char *p, size_t len, const int *fds, size_t nfds) {
  lua_pushcfunction(L, decode_request);
  lua_pushlightuserdata(L, (void *)p);
  lua_pushinteger(L, (lua_Integer)len);
  lua_pushlightuserdata(L, (void *)fds);
  lua_pushinteger(L, (lua_Integer)nfds);
  return lua_pcall(L, 4, LUA_MULTRET, 0);
}

/* The module a decoding error names as not loaded (the serializer's message), or NULL. */
static const char *missing_module(lua_State *L) {
  const char *msg = lua_tostring(L, -1);
  const char *at = msg ? strstr(msg, "mp.loads: module '") : NULL;
  if (at == NULL) return NULL;
  at += strlen("mp.loads: module '");
  const char *end = strstr(at, "' is not loaded in this process");
  if (end == NULL) return NULL;
  return lua_pushlstring(L, at, (size_t)(end - at));
}

static void served_fail(const char *what, const char *msg) __attribute__((noreturn));
static void served_fail(const char *what, const char *msg) {
  fprintf(stderr, "mp: fork server child: %s: %s\n", what, msg ? msg : "?");
  mp_exit_child(1);
}

static void run_served(lua_State *L, int channel) __attribute__((noreturn));

static void run_served(lua_State *L, int channel) {
  mp_signal_after_fork();
  char *payload;
  size_t len, nfds;
  int *fds;
  int err = mp_fs_read_request(channel, &payload, &len, &fds, &nfds);
  close(channel);
  if (err) {
    /* The client gave up (or died) before the request was whole: nothing to run. */
    if (err != EPIPE) served_fail("cannot read its request", strerror(err));
    mp_exit_child(1);
  }
  uint32_t plen = 0;
  if (len >= 4) memcpy(&plen, payload, 4);
  if (len < 4 || plen > len - 4) served_fail("bad request", "truncated");
  /* The preparation: name, package.path, package.cpath. */
  int top = lua_gettop(L);
  if (pdecode(L, payload + 4, plen, NULL, 0) != LUA_OK) served_fail("bad request", lua_tostring(L, -1));
  if (lua_gettop(L) != top + 3 || lua_type(L, top + 1) != LUA_TSTRING) served_fail("bad request", "no name");
  lua_getfield(L, LUA_REGISTRYINDEX, LUA_LOADED_TABLE);
  lua_getfield(L, -1, "package");
  if (lua_istable(L, -1)) {
    if (lua_type(L, top + 2) == LUA_TSTRING) { lua_pushvalue(L, top + 2); lua_setfield(L, -2, "path"); }
    if (lua_type(L, top + 3) == LUA_TSTRING) { lua_pushvalue(L, top + 3); lua_setfield(L, -2, "cpath"); }
  }
  lua_settop(L, top + 1);                      /* the name stays, below everything */
  size_t namelen;
  const char *name = lua_tolstring(L, top + 1, &namelen);
  /* The entry and its arguments. */
  lua_getiuservalue(L, top, UV_ENTRY);
  int base = lua_gettop(L);
  const char *args = payload + 4 + plen;
  size_t alen = len - 4 - plen;
  for (int tries = 0;; tries++) {
    if (pdecode(L, args, alen, fds, nfds) == LUA_OK) break;
    const char *mod = tries < 64 ? missing_module(L) : NULL;
    if (mod == NULL) served_fail("bad request", lua_tostring(L, -1));
    lua_getglobal(L, "require");
    lua_pushvalue(L, -2);
    if (lua_pcall(L, 1, 0, 0) != LUA_OK) served_fail("bad request", lua_tostring(L, -1));
    lua_settop(L, base);
  }
  /* The objects decoded hold duplicates of what they keep. */
  for (size_t i = 0; i < nfds; i++) close(fds[i]);
  free(fds);
  free(payload);
  mp_process_run_child(L, lua_gettop(L) - base, name, namelen);
}

/*
** Starts this state's server: a fork of this process now. The handle (at
** the top of the stack) is filled in before the fork, so that the server's
** children, whose state is the server's copy, know the address too.
*/
static void start_server(lua_State *L, server_ud *s) {
  int sidx = lua_gettop(L);
  stop_server(s);
  int lfd, life[2];
  int err = mp_fs_listen(&s->addr, &lfd);
  if (err) mp_raise_errno(L, err, "cannot start the fork server (socket)");
  if (pipe2(life, O_CLOEXEC) != 0) {
    err = errno;
    close(lfd);
    mp_fs_unlink(&s->addr);
    mp_raise_errno(L, err, "cannot start the fork server (pipe)");
  }
  s->owner = (pid_t)mp_self_pid();
  s->started = 1;
  /* As core.spawn does: the server's copy binds the environments of the functions on the stack. */
  mp_serial_before_fork(L);
  mp_child *svc = NULL;
  pid_t pid = mp_fork_service(&svc, life[1]);
  if (pid < 0) {
    close(lfd);
    close(life[0]);
    close(life[1]);
    mp_fs_unlink(&s->addr);
    s->started = 0;
    mp_raise_errno(L, (int)-pid, "cannot start the fork server (fork)");
  }
  if (pid == 0) {
    /* The server. Its lifeline's write end is gone (closed in every child). */
    mp_signal_after_fork();
    /* The Lua side's fork hooks: pools drop their ends, as in any child. */
    if (lua_getiuservalue(L, sidx, UV_INIT) == LUA_TFUNCTION) {
      if (lua_pcall(L, 0, 0, 0) != LUA_OK) {
        fprintf(stderr, "mp: fork server: %s\n", lua_tostring(L, -1));
        lua_pop(L, 1);
      }
    } else {
      lua_pop(L, 1);
    }
    int channel;
    mp_fs_serve(lfd, life[0], &s->addr, &channel);   /* returns in a child only */
    lua_settop(L, sidx);                           /* the handle, on top */
    run_served(L, channel);
  }
  close(lfd);
  close(life[0]);
  s->svc = svc;
}

/* The server of this state, started if need be; the handle is pushed. */
static server_ud *ensure_server(lua_State *L) {
  server_ud *s = get_server(L);
  lua_rawgetp(L, LUA_REGISTRYINDEX, &server_key);
  /* A server of ours that ended (killed) is started again. */
  if (s->started && s->svc != NULL && s->owner == (pid_t)mp_self_pid() && mp_child_poll(s->svc))
    stop_server(s);
  if (!s->started) start_server(L, s);
  return s;
}

/* core.forkserver_start(entry, init) --> the server's pid (or nil when another process's) */
static int core_forkserver_start(lua_State *L) {
  luaL_checktype(L, 1, LUA_TFUNCTION);
  luaL_checktype(L, 2, LUA_TFUNCTION);
  server_ud *s = get_server(L);
  lua_rawgetp(L, LUA_REGISTRYINDEX, &server_key);
  lua_pushvalue(L, 1);
  lua_setiuservalue(L, -2, UV_ENTRY);
  lua_pushvalue(L, 2);
  lua_setiuservalue(L, -2, UV_INIT);
  lua_settop(L, 3);
  ensure_server(L);
  if (s->svc != NULL) lua_pushinteger(L, s->svc->pid);
  else lua_pushnil(L);
  return 1;
}

/* Connects this process to the server when it has no connection yet. */
static int connect_server(server_ud *s) {
  if (s->conn >= 0 && s->conn_pid == (pid_t)mp_self_pid()) return 0;
  s->conn = -1;                                 /* another process's copy: not ours to close */
  int conn;
  int err = mp_fs_connect(&s->addr, &conn);
  if (err) return err;
  /* A process forked from this one makes its own connection. */
  if ((err = mp_fork_close_in_child(conn)) != 0) { close(conn); return err; }
  s->conn = conn;
  s->conn_pid = (pid_t)mp_self_pid();
  return 0;
}

/*
** core.forkserver_spawn(daemon, name, ...) --> a child handle. The values
** after daemon (the name first) go to the child's entry function through the
** serializer; a server that is gone is replaced once.
*/
static int core_forkserver_spawn(lua_State *L) {
  int daemon = lua_toboolean(L, 1);
  luaL_checkstring(L, 2);
  int nvals = lua_gettop(L) - 1;
  server_ud *s = get_server(L);
  lua_rawgetp(L, LUA_REGISTRYINDEX, &server_key);
  if (lua_getiuservalue(L, -1, UV_ENTRY) != LUA_TFUNCTION)
    return luaL_error(L, "the fork server was not started (core.forkserver_start)");
  lua_pop(L, 1);
  mp_oob *oob = mp_oob_new(L);                 /* the fds of the mp objects among the values */
  /* The preparation (see run_served), then the arguments. */
  lua_getfield(L, LUA_REGISTRYINDEX, LUA_LOADED_TABLE);
  lua_getfield(L, -1, "package");
  lua_pushvalue(L, 2);
  if (lua_istable(L, -2)) {
    lua_getfield(L, -2, "path");
    lua_getfield(L, -3, "cpath");
  } else {
    lua_pushnil(L);
    lua_pushnil(L);
  }
  mp_wbuf *b = mp_serial_scratch(L);
  mp_wbuf_reserve(L, b, 4);
  b->len = 4;
  mp_serial_encode(L, -3, 3, b, "process");
  uint32_t plen = (uint32_t)(b->len - 4);
  memcpy(b->data, &plen, 4);
  lua_pop(L, 5);
  mp_serial_encode_oob(L, 3, nvals - 1, b, "process", oob);
  mp_child **slot = mp_process_new_handle(L);
  int hidx = lua_gettop(L);
  int err = 0;
  for (int attempt = 0; attempt < 2; attempt++) {
    lua_rawgetp(L, LUA_REGISTRYINDEX, &server_key);
    ensure_server(L);
    lua_settop(L, hidx);
    err = connect_server(s);
    pid_t pid;
    int status_fd, pidfd;
    if (err == 0) err = mp_fs_spawn(s->conn, b->data, b->len, oob->fds, oob->n, &pid, &status_fd, &pidfd);
    if (err == 0) {
      mp_child *c;
      err = mp_child_adopt(&c, pid, status_fd, pidfd, daemon);
      if (err) return mp_raise_errno(L, err, "cannot start process");
      *slot = c;
      return 1;
    }
    /* Gone (killed, or its owner exited): start one of our own and try again. */
    if (err != EPIPE && err != ECONNREFUSED && err != ENOENT && err != ESHUTDOWN) break;
    stop_server(s);
  }
  return mp_raise_errno(L, err, "cannot start process through the fork server");
}

/* core.forkserver_pid() --> the pid of this state's server, if this process started it */
static int core_forkserver_pid(lua_State *L) {
  server_ud *s = get_server(L);
  if (s->started && s->svc != NULL && s->owner == (pid_t)mp_self_pid() && !mp_child_poll(s->svc))
    lua_pushinteger(L, s->svc->pid);
  else
    lua_pushnil(L);
  return 1;
}

/*
** core.forkserver_info() --> {pid =, path =, dir =} of this state's server
** (pid only in the process that started it), or nil: for specs and diagnostics.
*/
static int core_forkserver_info(lua_State *L) {
  server_ud *s = get_server(L);
  if (!s->started) return 0;
  lua_createtable(L, 0, 3);
  if (s->svc != NULL && s->owner == (pid_t)mp_self_pid()) {
    lua_pushinteger(L, s->svc->pid);
    lua_setfield(L, -2, "pid");
  }
  lua_pushstring(L, s->addr.path);
  lua_setfield(L, -2, "path");
  lua_pushstring(L, s->addr.dir);
  lua_setfield(L, -2, "dir");
  return 1;
}

/* core.forkserver_stop(): ends this state's server (it exits once its children have). */
static int core_forkserver_stop(lua_State *L) {
  stop_server(get_server(L));
  return 0;
}

void mp_forkserver_open(lua_State *L) {
  static const luaL_Reg metamethods[] = {
    {"__gc", server_gc},
    {NULL, NULL}
  };
  static const luaL_Reg funcs[] = {
    {"forkserver_start", core_forkserver_start},
    {"forkserver_spawn", core_forkserver_spawn},
    {"forkserver_pid", core_forkserver_pid},
    {"forkserver_info", core_forkserver_info},
    {"forkserver_stop", core_forkserver_stop},
    {NULL, NULL}
  };
  mp_newclass(L, &SERVER_C, NULL, metamethods);
  lua_pop(L, 1);
  luaL_setfuncs(L, funcs, 0);
}

/*
** Binding for the Manager's transport (lua/mp/manager.lua builds on it):
**   core.manager_listen(address) --> listener, address as bound
**   core.manager_server(listener, authkey, owner_pid) --> server, token
**   core.manager_connect(address, authkey, timeout) --> client, server pid, token
**   core.manager_ident() --> this process's 16-byte identity
**   core.mkdtemp(template) --> a new private (0700) directory
** Requests and replies are serializer messages (serial.h) framed by
** engine/frame.h; the engine (sock, auth, mclient, mserver) does the I/O.
*/
#define _GNU_SOURCE
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "mp_aux.h"
#include "mp_travel.h"
#include "serial.h"
#include "engine/clock.h"
#include "engine/identity.h"
#include "engine/mclient.h"
#include "engine/mserver.h"
#include "engine/siphash.h"
#include "engine/sock.h"

#define LISTENER_T "mp.ManagerListener"
#define SERVER_T "mp.ManagerServer"
#define CLIENT_T "mp.ManagerClient"

/* ---- Shared helpers ---------------------------------------------------------- */

static void check_address(lua_State *L, int arg, mp_addr *a) {
  const char *s = luaL_checkstring(L, arg);
  int rc = mp_addr_parse(s, a);
  if (rc == ENAMETOOLONG)
    luaL_argerror(L, arg, lua_pushfstring(L, "socket path '%s' is longer than %d bytes", s, (int)sizeof a->path - 1));
  if (rc != 0)
    luaL_argerror(L, arg, lua_pushfstring(L, "address '%s' is neither a socket path nor 'host:port'", s));
}

/* Encodes the values idx..top after a frame header in the scratch buffer. */
static mp_wbuf *encode_frame(lua_State *L, int idx, uint32_t seq, int kind) {
  int n = lua_gettop(L) - idx + 1;
  mp_wbuf *b = mp_serial_scratch(L);
  mp_wbuf_reserve(L, b, MP_FRAME_HDR);
  b->len = MP_FRAME_HDR;
  mp_serial_encode(L, idx, n < 0 ? 0 : n, b, "value");
  size_t len = b->len - MP_FRAME_HDR;
  if (len > MP_FRAME_MAX)
    luaL_error(L, "message of %I bytes is too large for a manager (4 GiB at most)", (lua_Integer)len);
  mp_frame_header(b->data, len, seq, kind);
  return b;
}

/* Decodes a frame's payload under lua_pcall (it is untrusted input). */
typedef struct decode_args { const char *data; size_t len; } decode_args;

static int decode_frame(lua_State *L) {
  decode_args *a = lua_touserdata(L, 1);
  lua_remove(L, 1);
  return mp_serial_decode(L, a->data, a->len);
}

/* Pushes the payload's values; returns their number, or -1 with a message pushed. */
static int pdecode(lua_State *L, const mp_frame *f) {
  decode_args a = { f->data, f->len };
  int top = lua_gettop(L);
  lua_pushcfunction(L, decode_frame);
  lua_pushlightuserdata(L, &a);
  if (lua_pcall(L, 1, LUA_MULTRET, 0) != LUA_OK) return -1;
  return lua_gettop(L) - top;
}

/* ---- Listener ------------------------------------------------------------------- */

typedef struct listener_ud {
  const mp_class *cls;          /* first: the class word (mp_aux.h) */
  int fd;
  uint32_t owner;
} listener_ud;

static const mp_class LISTENER_C = { LISTENER_T, sizeof(listener_ud), NULL };

static int listener_close(lua_State *L) {
  listener_ud *u = mp_checkself(L, 1, &LISTENER_C);
  if (u->fd >= 0) close(u->fd);
  u->fd = -1;
  return 0;
}

/*
** A listener travels (mp_travel.h) to a manager server started through the
** fork server (Manager{context = "forkserver"}): its socket, passed with
** SCM_RIGHTS, is the same listening socket.
*/
static int listener_export(lua_State *L, int idx, mp_travel_desc *d) {
  listener_ud *u = lua_touserdata(L, idx);
  if (u->fd < 0) luaL_error(L, "cannot send a closed listener");
  d->fds[d->nfds++] = u->fd;
  return 0;
}

static void listener_import(lua_State *L, const mp_class *c, const mp_travel_desc *d, int dep) {
  if (d->nfds != 1 || dep) luaL_error(L, "mp.loads: corrupt listener description");
  listener_ud *u = mp_newself(L, c, 0);
  u->fd = -1;
  u->owner = mp_self_pid();
  u->fd = mp_travel_dup(L, d->fds[0]);
}

static const mp_travel LISTENER_TRAVEL = { listener_export, listener_import };

/* core.manager_listen(address) --> listener, the address as bound (a TCP port 0 filled in) */
static int core_manager_listen(lua_State *L) {
  mp_addr a;
  check_address(L, 1, &a);
  listener_ud *u = mp_newself(L, &LISTENER_C, 0);
  u->fd = -1;                          /* safe empty state before anything can fail */
  u->owner = mp_self_pid();
  int rc = mp_sock_listen(&a, 128, &u->fd);
  if (rc == EADDRNOTAVAIL && a.tcp) return luaL_error(L, "cannot listen at '%s': unknown host", lua_tostring(L, 1));
  if (rc != 0) return luaL_error(L, "cannot listen at '%s': %s", lua_tostring(L, 1), strerror(rc));
  char name[300];
  if ((rc = mp_sock_name(u->fd, &a, name, sizeof name)) != 0) return mp_raise_errno(L, rc, "getsockname");
  lua_pushstring(L, name);
  return 2;
}

/* ---- Server --------------------------------------------------------------------- */

typedef struct server_ud {
  const mp_class *cls;
  mp_srv s;
  int open;
} server_ud;

static const mp_class SERVER_C = { SERVER_T, sizeof(server_ud), NULL };

static server_ud *check_server(lua_State *L) {
  server_ud *u = mp_checkself(L, 1, &SERVER_C);
  if (!u->open) luaL_error(L, "manager server is closed");
  return u;
}

static int server_close(lua_State *L) {
  server_ud *u = mp_checkself(L, 1, &SERVER_C);
  if (u->open) mp_srv_close(&u->s);
  u->open = 0;
  return 0;
}

/* core.manager_server(listener, authkey, owner_pid) --> server, token (16 bytes) */
static int core_manager_server(lua_State *L) {
  listener_ud *l = mp_checkself(L, 1, &LISTENER_C);
  size_t keylen;
  const char *key = luaL_checklstring(L, 2, &keylen);
  lua_Integer owner = luaL_optinteger(L, 3, 0);
  if (l->fd < 0) return luaL_argerror(L, 1, "listener is closed");
  server_ud *u = mp_newself(L, &SERVER_C, 0);    /* open 0: safe empty state */
  int rc = mp_srv_init(&u->s, l->fd, key, keylen, (uint32_t)owner);
  l->fd = -1;                          /* the server owns it now, even on failure */
  u->open = 1;
  if (rc != 0) return mp_raise_errno(L, rc, "cannot start the manager server");
  lua_pushlstring(L, (const char *)u->s.token, sizeof u->s.token);
  return 2;
}

/*
** server:next([timeout]) --> one event:
**   "open", id, pid, identity          a client authenticated
**   "msg", id, seq, oneway, values...  a request (seq 0 for one-way ones)
**   "bad", id, seq, oneway, message    a request that does not decode
**   "closed", id                       a client left (after its last request)
**   "orphan"                           the owner process died
**   nothing                            the timeout passed, or a wait slice ended
**                                      (signal handlers have run: look at their effects)
*/
static int server_next(lua_State *L) {
  server_ud *u = check_server(L);
  double deadline = mp_optdeadline(L, 2);
  lua_settop(L, 1);
  mp_srv_event ev;
  int rc;
  if ((rc = mp_srv_next(&u->s, deadline, &ev)) == EINTR) {
    /* A slice ended or a signal came: its Lua handler runs now, and the loop
    ** gets control back to look at what the handler changed (stopping). */
    mp_check_interrupt(L);
    return 0;
  }
  if (rc == ETIMEDOUT) return 0;
  if (rc == MP_SRV_ORPHAN) { lua_pushliteral(L, "orphan"); return 1; }
  if (rc != 0) return mp_raise_errno(L, rc, "manager server");
  switch (ev.type) {
    case MP_SRV_OPEN:
      lua_pushliteral(L, "open");
      lua_pushinteger(L, ev.id);
      lua_pushinteger(L, ev.pid);
      lua_pushlstring(L, (const char *)ev.ident, MP_AUTH_IDENT);
      return 4;
    case MP_SRV_CLOSED:
      lua_pushliteral(L, "closed");
      lua_pushinteger(L, ev.id);
      return 2;
    default: {
      lua_pushliteral(L, "msg");
      lua_pushinteger(L, ev.id);
      lua_pushinteger(L, ev.f.seq);
      lua_pushboolean(L, ev.f.kind == MP_REQ_SEND);
      int n = pdecode(L, &ev.f);
      if (n >= 0) return 4 + n;
      lua_pushliteral(L, "bad");
      lua_replace(L, 2);
      return 5;
    }
  }
}

/* server:reply(id, seq, kind, values...) --> true, or false when that client is gone */
static int server_reply(lua_State *L) {
  server_ud *u = check_server(L);
  lua_Integer id = luaL_checkinteger(L, 2);
  lua_Integer seq = luaL_checkinteger(L, 3);
  const char *kind = luaL_checkstring(L, 4);
  int k = strcmp(kind, "ok") == 0 ? MP_REP_OK : strcmp(kind, "raise") == 0 ? MP_REP_RAISE : MP_REP_USAGE;
  mp_wbuf *b = encode_frame(L, 5, (uint32_t)seq, k);
  int rc = mp_srv_reply(&u->s, (uint32_t)id, b->data, b->len);
  if (rc == ENOMEM) return luaL_error(L, "not enough memory for a reply");
  lua_pushboolean(L, rc == 0);
  return 1;
}

/* server:flush(timeout): writes pending replies before the server exits. */
static int server_flush(lua_State *L) {
  server_ud *u = check_server(L);
  mp_srv_flush(&u->s, mp_now() + luaL_optnumber(L, 2, 1));
  return 0;
}

/* server:stop_listening(): no new clients (shutdown has begun). */
static int server_stop_listening(lua_State *L) {
  server_ud *u = check_server(L);
  if (u->s.lfd >= 0) close(u->s.lfd);
  u->s.lfd = -1;
  return 0;
}

/* ---- Client --------------------------------------------------------------------- */

typedef struct client_ud {
  const mp_class *cls;
  mp_client c;
  uint32_t owner;               /* the process that connected */
  char address[300];
} client_ud;

static const mp_class CLIENT_C = { CLIENT_T, sizeof(client_ud), NULL };

static int client_close(lua_State *L) {
  client_ud *u = mp_checkself(L, 1, &CLIENT_C);
  mp_client_close(&u->c);       /* in a forked child: closes only its own copy */
  return 0;
}

static client_ud *check_client(lua_State *L) {
  client_ud *u = mp_checkself(L, 1, &CLIENT_C);
  if (u->c.fd < 0) mp_raise(L, "ConnectionError", "the connection to the manager at %s is closed", u->address);
  if (u->owner != mp_self_pid())
    luaL_error(L, "a manager connection can only be used by the process that opened it");
  return u;
}

/* Raises the error for a failed exchange and closes the connection when it is unusable. */
static int client_fail(lua_State *L, client_ud *u, int rc, double timeout) {
  if (rc == ETIMEDOUT)
    return mp_raise(L, "TimeoutError", "the manager server (pid %d) did not answer within %f s",
                    (int)u->c.server_pid, timeout);
  int pid = (int)u->c.server_pid;
  mp_client_close(&u->c);
  if (rc == MP_FRAME_EOF || rc == EPIPE || rc == ECONNRESET)
    return mp_raise(L, "ConnectionError", "the manager server (pid %d) at %s is gone (connection closed)",
                    pid, u->address);
  if (rc == EMSGSIZE) return mp_raise(L, "ConnectionError", "bad reply from the manager at %s", u->address);
  return mp_raise(L, "ConnectionError", "manager at %s: %s", u->address, strerror(rc));
}

/* A process's identity for the server: its pid, then 12 random bytes. */
static const unsigned char *self_ident(void) {
  static unsigned char ident[MP_AUTH_IDENT];
  static uint32_t made_for;
  uint32_t pid = mp_self_pid();
  if (made_for != pid) {
    for (int i = 0; i < 4; i++) ident[i] = (unsigned char)(pid >> (8 * i));
    if (mp_random_bytes(ident + 4, MP_AUTH_IDENT - 4) != 0) {
      uint64_t tag = mp_self_tag();             /* no randomness: the start time still differs */
      memcpy(ident + 4, &tag, sizeof tag);
    }
    made_for = pid;
  }
  return ident;
}

static int core_manager_ident(lua_State *L) {
  lua_pushlstring(L, (const char *)self_ident(), MP_AUTH_IDENT);
  return 1;
}

/* core.manager_connect(address, authkey [, timeout]) --> client, server pid, token */
static int core_manager_connect(lua_State *L) {
  mp_addr a;
  check_address(L, 1, &a);
  size_t keylen;
  const char *key = luaL_checklstring(L, 2, &keylen);
  double timeout = luaL_optnumber(L, 3, INFINITY);
  double deadline = mp_now() + (timeout > 0 ? timeout : 0);
  client_ud *u = mp_newself(L, &CLIENT_C, 0);
  mp_client_init(&u->c);                        /* safe empty state before anything can fail */
  u->owner = mp_self_pid();
  snprintf(u->address, sizeof u->address, "%s", lua_tostring(L, 1));
  int rc;
  while ((rc = mp_client_connect(&u->c, &a, key, keylen, self_ident(), deadline)) == EINTR)
    mp_check_interrupt(L);
  if (rc != 0) {
    mp_client_close(&u->c);
    switch (rc) {
      case EACCES:
        return mp_raise(L, "AuthenticationError", "the manager at %s refused the authkey", u->address);
      case EPROTO:
        return mp_raise(L, "AuthenticationError",
                        "the server at %s did not prove it knows the authkey (or is no mplua manager)", u->address);
      case ETIMEDOUT:
        return mp_raise(L, "TimeoutError", "connecting to the manager at %s took longer than %f s",
                        u->address, timeout);
      case EADDRNOTAVAIL:
        return mp_raise(L, "ConnectionError", "cannot connect to the manager at %s: unknown host", u->address);
      case MP_FRAME_EOF:
        return mp_raise(L, "ConnectionError", "the manager at %s closed the connection", u->address);
      default:
        return mp_raise(L, "ConnectionError", "cannot connect to the manager at %s: %s", u->address, strerror(rc));
    }
  }
  lua_pushinteger(L, u->c.server_pid);
  lua_pushlstring(L, (const char *)u->c.token, sizeof u->c.token);
  return 3;
}

/* Sends the frame built from values idx..top, re-encoding after an interruption. */
static void client_send(lua_State *L, client_ud *u, int idx, uint32_t seq, int kind, double deadline, double timeout) {
  for (;;) {
    mp_wbuf *b = encode_frame(L, idx, seq, kind);
    int rc = mp_client_send(&u->c, b->data, b->len, deadline);
    if (rc == 0) return;
    if (rc == EINTR) { mp_check_interrupt(L); continue; }   /* nothing was sent */
    if (rc == ETIMEDOUT && u->c.broken) mp_client_close(&u->c);
    client_fail(L, u, rc, timeout);
  }
}

static int push_reply_kind(lua_State *L, int kind) {
  switch (kind) {
    case MP_REP_OK: lua_pushliteral(L, "ok"); return 1;
    case MP_REP_RAISE: lua_pushliteral(L, "raise"); return 1;
    case MP_REP_USAGE: lua_pushliteral(L, "usage"); return 1;
    default: return 0;
  }
}

/*
** client:call(timeout, values...) --> "ok" | "raise" | "usage", reply values...
** timeout nil waits as long as it takes (for a blocking call such as acquire);
** a server that dies still ends the wait (the connection closes).
*/
static int client_call(lua_State *L) {
  client_ud *u = check_client(L);
  double timeout = lua_isnil(L, 2) ? INFINITY : luaL_checknumber(L, 2);
  double deadline = mp_now() + (timeout > 0 ? timeout : 0);
  uint32_t seq = ++u->c.seq;
  if (seq == 0) seq = ++u->c.seq;               /* 0 is for one-way requests */
  int top = lua_gettop(L);
  client_send(L, u, 3, seq, MP_REQ_CALL, deadline, timeout);
  lua_settop(L, top);
  mp_frame f;
  int rc;
  while ((rc = mp_client_recv(&u->c, seq, deadline, &f)) == EINTR)
    mp_check_interrupt(L);                      /* may raise: the late reply is skipped later */
  if (rc != 0) return client_fail(L, u, rc, timeout);
  lua_settop(L, 0);
  if (!push_reply_kind(L, f.kind)) {
    mp_client_consume(&u->c, &f);
    return mp_raise(L, "ConnectionError", "bad reply kind %d from the manager at %s", f.kind, u->address);
  }
  int n = pdecode(L, &f);
  mp_client_consume(&u->c, &f);
  if (n < 0) return lua_error(L);
  return n + 1;
}

/* client:send(values...): a one-way request (no reply; see engine/mserver.h for the order). */
static int client_send_oneway(lua_State *L) {
  client_ud *u = check_client(L);
  client_send(L, u, 2, 0, MP_REQ_SEND, INFINITY, INFINITY);
  return 0;
}

/* client:ping([timeout]): a round trip the server engine answers itself. */
static int client_ping(lua_State *L) {
  client_ud *u = check_client(L);
  double timeout = luaL_optnumber(L, 2, INFINITY);
  double deadline = mp_now() + (timeout > 0 ? timeout : 0);
  uint32_t seq = ++u->c.seq;
  if (seq == 0) seq = ++u->c.seq;
  char h[MP_FRAME_HDR];
  mp_frame_header(h, 0, seq, MP_REQ_PING);
  int rc;
  while ((rc = mp_client_send(&u->c, h, sizeof h, deadline)) == EINTR) mp_check_interrupt(L);
  if (rc != 0) return client_fail(L, u, rc, timeout);
  mp_frame f;
  while ((rc = mp_client_recv(&u->c, seq, deadline, &f)) == EINTR) mp_check_interrupt(L);
  if (rc != 0) return client_fail(L, u, rc, timeout);
  mp_client_consume(&u->c, &f);
  lua_pushboolean(L, 1);
  return 1;
}

/* core.urandom(n) --> n random bytes (getrandom) */
static int core_urandom(lua_State *L) {
  lua_Integer n = luaL_checkinteger(L, 1);
  luaL_argcheck(L, n >= 0 && n <= 4096, 1, "0 to 4096 bytes");
  unsigned char buf[4096];
  int rc = mp_random_bytes(buf, (size_t)n);
  if (rc != 0) return mp_raise_errno(L, rc, "getrandom");
  lua_pushlstring(L, (const char *)buf, (size_t)n);
  return 1;
}

/* client:closed() --> whether the connection can no longer be used (closed, or another process's) */
static int client_closed(lua_State *L) {
  client_ud *u = mp_checkself(L, 1, &CLIENT_C);
  lua_pushboolean(L, u->c.fd < 0 || u->c.broken || u->owner != mp_self_pid());
  return 1;
}

/* ---- Files ------------------------------------------------------------------------ */

/* core.mkdtemp(template) --> path of a new directory only its owner may enter (mode 0700) */
static int core_mkdtemp(lua_State *L) {
  size_t len;
  const char *t = luaL_checklstring(L, 1, &len);
  char *buf = lua_newuserdatauv(L, len + 1, 0);
  memcpy(buf, t, len + 1);
  if (mkdtemp(buf) == NULL) return luaL_error(L, "cannot make a directory from '%s': %s", t, strerror(errno));
  lua_pushstring(L, buf);
  return 1;
}

void mp_manager_open(lua_State *L) {
  static const luaL_Reg listener_methods[] = { {"close", listener_close}, {NULL, NULL} };
  static const luaL_Reg listener_meta[] = { {"__gc", listener_close}, {"__close", listener_close}, {NULL, NULL} };
  static const luaL_Reg server_methods[] = {
    {"next", server_next}, {"reply", server_reply}, {"flush", server_flush},
    {"stop_listening", server_stop_listening}, {"close", server_close}, {NULL, NULL}
  };
  static const luaL_Reg server_meta[] = { {"__gc", server_close}, {"__close", server_close}, {NULL, NULL} };
  static const luaL_Reg client_methods[] = {
    {"call", client_call}, {"send", client_send_oneway}, {"ping", client_ping},
    {"close", client_close}, {"closed", client_closed}, {NULL, NULL}
  };
  static const luaL_Reg client_meta[] = { {"__gc", client_close}, {"__close", client_close}, {NULL, NULL} };
  static const luaL_Reg funcs[] = {
    {"manager_listen", core_manager_listen},
    {"manager_server", core_manager_server},
    {"manager_connect", core_manager_connect},
    {"manager_ident", core_manager_ident},
    {"mkdtemp", core_mkdtemp},
    {"urandom", core_urandom},
    {NULL, NULL}
  };
  mp_newclass(L, &LISTENER_C, listener_methods, listener_meta);
  lua_pop(L, 1);
  mp_travel_register(&LISTENER_C, &LISTENER_TRAVEL);
  mp_newclass(L, &SERVER_C, server_methods, server_meta);
  lua_pop(L, 1);
  mp_newclass(L, &CLIENT_C, client_methods, client_meta);
  lua_pop(L, 1);
  luaL_setfuncs(L, funcs, 0);
}

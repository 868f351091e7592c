/*
** Binding helpers: userdata classes, error objects, timeouts.
*/
#include <errno.h>
#include <poll.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#include "mp_aux.h"
#include "engine/clock.h"
#include "engine/fault.h"

/* Registry key of the error-object factory set by the Lua half (core.set_error_factory). */
static const char error_factory_key = 0;

void mp_newclass(lua_State *L, const mp_class *c,
                 const luaL_Reg *methods, const luaL_Reg *metamethods) {
  luaL_newmetatable(L, c->tname);
  if (metamethods != NULL) {
    lua_pushlightuserdata(L, (void *)c);
    luaL_setfuncs(L, metamethods, 1);
  }
  if (methods != NULL) {
    lua_newtable(L);
    lua_pushlightuserdata(L, (void *)c);
    luaL_setfuncs(L, methods, 1);
    lua_setfield(L, -2, "__index");
  }
}

int mp_typeerror(lua_State *L, int arg, const char *tname) {
  return luaL_typeerror(L, arg, tname);
}

void *mp_newself(lua_State *L, const mp_class *c, int nuv) {
  void *p = lua_newuserdatauv(L, c->size, nuv);
  memset(p, 0, c->size);
  *(const mp_class **)p = c;
  luaL_setmetatable(L, c->tname);
  return p;
}

int mp_raise(lua_State *L, const char *kind, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  lua_rawgetp(L, LUA_REGISTRYINDEX, &error_factory_key);
  if (lua_isfunction(L, -1)) {
    lua_pushstring(L, kind);
    lua_pushvfstring(L, fmt, ap);
    va_end(ap);
    lua_call(L, 2, 1);
  } else {
    lua_pop(L, 1);
    lua_pushfstring(L, "%s: ", kind);
    lua_pushvfstring(L, fmt, ap);
    va_end(ap);
    lua_concat(L, 2);
  }
  return lua_error(L);
}

int mp_raise_errno(lua_State *L, int err, const char *what) {
  return luaL_error(L, "%s: %s", what, strerror(err));
}

/* Edit distance of two short strings (for "did you mean"). */
static size_t distance(const char *a, const char *b) {
  size_t la = strlen(a), lb = strlen(b);
  if (la > 63 || lb > 63) return 64;
  size_t row[64];
  for (size_t j = 0; j <= lb; j++) row[j] = j;
  for (size_t i = 1; i <= la; i++) {
    size_t diag = row[0];
    row[0] = i;
    for (size_t j = 1; j <= lb; j++) {
      size_t up = row[j];
      size_t best = diag + (a[i - 1] != b[j - 1]);
      if (up + 1 < best) best = up + 1;
      if (row[j - 1] + 1 < best) best = row[j - 1] + 1;
      row[j] = best;
      diag = up;
    }
  }
  return row[lb];
}

const char *mp_option_error(lua_State *L, const char *key, const char *fname, const char *const keys[]) {
  const char *best = NULL;
  size_t best_d = 3;                       /* suggest within two edits */
  for (const char *const *k = keys; *k != NULL; k++) {
    if (strcmp(*k, key) == 0) return NULL;
    size_t d = distance(key, *k);
    if (d < best_d && d < strlen(key)) { best = *k; best_d = d; }
  }
  if (best != NULL)
    return lua_pushfstring(L, "unknown option '%s' to '%s' (did you mean '%s'?)", key, fname, best);
  luaL_Buffer b;
  luaL_buffinit(L, &b);
  lua_pushfstring(L, "unknown option '%s' to '%s' (options:", key, fname);
  luaL_addvalue(&b);
  for (const char *const *k = keys; *k != NULL; k++) {
    luaL_addchar(&b, ' ');
    luaL_addstring(&b, *k);
  }
  luaL_addchar(&b, ')');
  luaL_pushresult(&b);
  return lua_tostring(L, -1);
}

void mp_checkoptions(lua_State *L, int idx, const char *fname, const char *const keys[]) {
  idx = lua_absindex(L, idx);
  lua_pushnil(L);
  while (lua_next(L, idx) != 0) {
    lua_pop(L, 1);
    if (lua_type(L, -1) != LUA_TSTRING) {
      luaL_error(L, "bad option key to '%s' (string expected, got %s)", fname, luaL_typename(L, -1));
    }
    const char *msg = mp_option_error(L, lua_tostring(L, -1), fname, keys);
    if (msg != NULL) luaL_error(L, "%s", msg);
  }
}

void mp_nargs_error(lua_State *L, int n) {
  (void)luaL_argerror(L, n + 1, lua_pushfstring(L, "no argument expected here, got %s", luaL_typename(L, n + 1)));
  abort();                                  /* (luaL_argerror does not return) */
}

static double timeout_deadline(lua_State *L, int idx, int arg) {
  lua_Number t = lua_tonumber(L, idx);
  if (t != t) luaL_argerror(L, arg, "timeout is NaN");
  return mp_now() + (t > 0 ? t : 0);
}

double mp_block_deadline(lua_State *L, int arg, const char *fname) {
  static const char *const keys[] = { "block", "timeout", NULL };
  int type = lua_type(L, arg);
  if (type == LUA_TTABLE) {
    mp_checknargs(L, arg);
    mp_checkoptions(L, arg, fname, keys);
    lua_getfield(L, arg, "block");
    int block = lua_isnil(L, -1) || lua_toboolean(L, -1);
    int ttype = lua_getfield(L, arg, "timeout");
    if (ttype != LUA_TNIL && ttype != LUA_TNUMBER) luaL_argerror(L, arg, "timeout must be a number");
    if (!block && ttype != LUA_TNIL) luaL_argerror(L, arg, "a timeout cannot be given with block = false");
    double deadline = !block ? -INFINITY : ttype == LUA_TNIL ? INFINITY : timeout_deadline(L, -1, arg);
    lua_pop(L, 2);
    return deadline;
  }
  if (type == LUA_TNUMBER) {               /* q:get(0.5): the timeout */
    mp_checknargs(L, arg);
    return timeout_deadline(L, arg, arg);
  }
  mp_checknargs(L, arg + 1);
  if (type != LUA_TNONE && type != LUA_TNIL && type != LUA_TBOOLEAN)
    luaL_typeerror(L, arg, "boolean, number (a timeout) or table");
  int block = type != LUA_TBOOLEAN || lua_toboolean(L, arg);
  int ttype = lua_type(L, arg + 1);
  if (ttype != LUA_TNONE && ttype != LUA_TNIL && ttype != LUA_TNUMBER) luaL_typeerror(L, arg + 1, "number or nil");
  int has_timeout = ttype == LUA_TNUMBER;
  if (!block) {
    if (has_timeout) luaL_argerror(L, arg + 1, "a timeout cannot be given with block = false");
    return -INFINITY;
  }
  return has_timeout ? timeout_deadline(L, arg + 1, arg + 1) : INFINITY;
}

double mp_optdeadline(lua_State *L, int arg) {
  if (lua_isnoneornil(L, arg)) return INFINITY;
  lua_Number t = luaL_checknumber(L, arg);
  if (t != t) luaL_argerror(L, arg, "timeout is NaN");
  if (t < 0) t = 0;
  return mp_now() + t;
}

static int core_set_error_factory(lua_State *L) {
  luaL_checktype(L, 1, LUA_TFUNCTION);
  lua_settop(L, 1);
  lua_rawsetp(L, LUA_REGISTRYINDEX, &error_factory_key);
  return 0;
}

static int core_time(lua_State *L) {
  mp_checknargs(L, 0);
  lua_pushnumber(L, mp_now());
  return 1;
}

/* ---- pollers (see mp_aux.h) -------------------------------------------- */

#define MP_POLL_SLICE 0.005
static const char pollers_key = 0;      /* registry: key --> {fn, fd} */
static const char running_key = 0;      /* registry: true while pollers run */

static int pollers(lua_State *L) {
  if (lua_rawgetp(L, LUA_REGISTRYINDEX, &pollers_key) == LUA_TTABLE) return lua_gettop(L);
  lua_pop(L, 1);
  return 0;
}

/* core.poller(key, fn | nil [, fd]) */
static int core_poller(lua_State *L) {
  luaL_checkany(L, 1);
  if (!lua_isnil(L, 2)) luaL_checktype(L, 2, LUA_TFUNCTION);
  lua_Integer fd = luaL_optinteger(L, 3, -1);
  lua_settop(L, 2);
  int t = pollers(L);
  if (t == 0) {
    if (lua_isnil(L, 2)) return 0;
    lua_newtable(L);
    lua_pushvalue(L, -1);
    lua_rawsetp(L, LUA_REGISTRYINDEX, &pollers_key);
    t = lua_gettop(L);
  }
  lua_pushvalue(L, 1);
  if (lua_isnil(L, 2)) lua_pushnil(L);
  else {
    lua_createtable(L, 2, 0);
    lua_pushvalue(L, 2);
    lua_rawseti(L, -2, 1);
    lua_pushinteger(L, fd);
    lua_rawseti(L, -2, 2);
  }
  lua_rawset(L, t);
  /*
  ** While pollers exist, waits slice at 5 ms instead of 100: a callback runs
  ** within 5 ms in a call that sleeps on a futex (q:get, lock:acquire...).
  ** Each slice end costs a wake-up and a look at the pool (measured while
  ** blocked with a pool's work out: 0.35-0.45% of a core at 10 ms slices,
  ** 0.5-0.65% at 5 ms, 1.1-1.4% at 2 ms); the waits do not spin again after
  ** a slice (wait_data in ring.c, mp_mutex_lock in sync.h).
  */
  lua_pushnil(L);
  int any = lua_next(L, t);
  mp_set_wait_slice(any ? MP_POLL_SLICE : 0);
  return 0;
}

static int call_pollers(lua_State *L) {
  int n = lua_gettop(L);
  for (int i = 1; i <= n; i += 2) {
    lua_pushvalue(L, i);
    lua_pushvalue(L, i + 1);
    lua_call(L, 1, 0);
  }
  return 0;
}

void mp_run_pollers(lua_State *L) {
  int t = pollers(L);
  if (t == 0) return;
  if (lua_rawgetp(L, LUA_REGISTRYINDEX, &running_key) != LUA_TNIL) { lua_settop(L, t - 1); return; }
  lua_pop(L, 1);
  /* Their functions first: a poller may remove itself (or others) while they run. */
  lua_pushcfunction(L, call_pollers);
  int n = 0;
  lua_pushnil(L);
  while (lua_next(L, t)) {
    if (lua_type(L, -1) == LUA_TTABLE) {
      lua_rawgeti(L, -1, 1);                /* fn */
      lua_pushvalue(L, -3);                 /* its key, as the argument */
      luaL_checkstack(L, 4, NULL);
      lua_rotate(L, -4, 2);                 /* ..., fn, key, key, entry */
      lua_pop(L, 1);
      n++;
    } else {
      lua_pop(L, 1);
    }
  }
  if (n == 0) { lua_settop(L, t - 1); return; }
  lua_pushboolean(L, 1);
  lua_rawsetp(L, LUA_REGISTRYINDEX, &running_key);
  int status = lua_pcall(L, 2 * n, 0, 0);
  lua_pushnil(L);
  lua_rawsetp(L, LUA_REGISTRYINDEX, &running_key);
  if (status != LUA_OK) lua_error(L);       /* a poller's error propagates, as a handler's */
  lua_settop(L, t - 1);
}

int mp_poller_fds(lua_State *L, int *fds, int max) {
  int t = pollers(L), n = 0;
  if (t == 0) return 0;
  lua_pushnil(L);
  while (n < max && lua_next(L, t)) {
    if (lua_type(L, -1) == LUA_TTABLE && lua_rawgeti(L, -1, 2) == LUA_TNUMBER && lua_tointeger(L, -1) >= 0)
      fds[n++] = (int)lua_tointeger(L, -1);
    lua_settop(L, t + 1);
  }
  lua_settop(L, t - 1);
  return n;
}

/*
** mp.sleep(s). With pollers that have an fd, it polls them and runs the
** pollers as soon as one is readable (a pool's result of an instant task fires
** its callback now, not at the slice's end). An fd still readable after its
** poller ran (its pool was busy in an outer call) is not polled again until
** the slice ends, so the sleep never spins.
*/
static int core_sleep(lua_State *L) {
  mp_checknargs(L, 1);
  lua_Number secs = luaL_checknumber(L, 1);
  luaL_argcheck(L, secs == secs, 1, "NaN");
  double deadline = mp_now() + (secs > 0 ? secs : 0);
  for (;;) {
    int fds[16];
    int n = mp_poller_fds(L, fds, 16);
    if (n == 0) {
      if (mp_sleep_until(deadline) != EINTR) return 0;
      mp_check_interrupt(L);
      continue;
    }
    double now = mp_now();
    if (now >= deadline) return 0;
    int sliced;
    double until = mp_slice_end(deadline, &sliced);
    struct pollfd p[16];
    for (int i = 0; i < n; i++) p[i] = (struct pollfd){ .fd = fds[i], .events = POLLIN };
    int r = poll(p, (nfds_t)n, (int)((until - now) * 1000.0 + 0.999));
    if (r == 0 && !sliced) continue;
    mp_check_interrupt(L);                  /* runs the pollers */
    if (r > 0 && poll(p, (nfds_t)n, 0) > 0 && mp_sleep_until(until) == EINTR)
      mp_check_interrupt(L);
  }
}

/*
** core.option_error(opts, fname, keys) --> nil, or the message for the first
** unknown key of opts: the Lua half's mp_checkoptions (lua/mp/check.lua
** raises it at the caller's line). keys is a list of names.
*/
static int core_option_error(lua_State *L) {
  luaL_checktype(L, 1, LUA_TTABLE);
  const char *fname = luaL_checkstring(L, 2);
  luaL_checktype(L, 3, LUA_TTABLE);
  const char *keys[33];
  int n = 0;
  for (; n < 32 && lua_rawgeti(L, 3, n + 1) == LUA_TSTRING; n++) keys[n] = lua_tostring(L, -1);
  keys[n] = NULL;                          /* the names stay on the stack meanwhile */
  lua_pushnil(L);
  while (lua_next(L, 1) != 0) {
    lua_pop(L, 1);
    const char *msg;
    if (lua_type(L, -1) != LUA_TSTRING)
      msg = lua_pushfstring(L, "bad option key to '%s' (string expected, got %s)", fname, luaL_typename(L, -1));
    else
      msg = mp_option_error(L, lua_tostring(L, -1), fname, keys);
    if (msg != NULL) {
      lua_pushstring(L, msg);
      return 1;
    }
  }
  return 0;
}

#ifdef MP_FAULTS
/* core.fault_arm(spec): test builds only (engine/fault.h). */
static int core_fault_arm(lua_State *L) {
  mp_fault_arm(luaL_checkstring(L, 1));
  return 0;
}
#endif

void mp_time_open(lua_State *L) {
  static const luaL_Reg funcs[] = {
#ifdef MP_FAULTS
    {"fault_arm", core_fault_arm},
#endif
    {"set_error_factory", core_set_error_factory},
    {"option_error", core_option_error},
    {"time", core_time},
    {"sleep", core_sleep},
    {"poller", core_poller},
    {NULL, NULL}
  };
  luaL_setfuncs(L, funcs, 0);
}

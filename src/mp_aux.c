/*
** Binding helpers: userdata classes, error objects, timeouts.
*/
#include <errno.h>
#include <math.h>
#include <stdarg.h>
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
  lua_pushnumber(L, mp_now());
  return 1;
}

static int core_sleep(lua_State *L) {
  lua_Number secs = luaL_checknumber(L, 1);
  luaL_argcheck(L, secs == secs, 1, "NaN");
  double deadline = mp_now() + (secs > 0 ? secs : 0);
  while (mp_sleep_until(deadline) == EINTR)
    mp_check_interrupt(L);
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
    {"time", core_time},
    {"sleep", core_sleep},
    {NULL, NULL}
  };
  luaL_setfuncs(L, funcs, 0);
}

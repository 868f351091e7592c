/*
** luaopen_mp_core (the C core, `mp.core`) and luaopen_mp (core plus the
** embedded Lua half). Both are idempotent and keep no state in C globals beyond
** what is process-wide by nature (signals, children).
*/
#include <string.h>

#include "mplua.h"
#include "mp_aux.h"
#include "mp_embedded.h"
#include "engine/proc.h"

/* The public constants are the engine's. */
_Static_assert(MPLUA_FORK_PROCESS == MP_FORK_PROCESS && MPLUA_FORK_SERVER == MP_FORK_SERVER &&
               MPLUA_FORK_SERVED == MP_FORK_SERVED, "fork hook kinds");

typedef void (*subsystem_open)(lua_State *L);

/* Each subsystem adds its functions and metatables to the core table on top. */
static const subsystem_open subsystems[] = {
  mp_time_open,
  mp_process_open,
  mp_forkserver_open,
  mp_signal_open,
  mp_sync_open,
  mp_shared_open,
  mp_serial_open,
  mp_queue_open,     /* transport */
  mp_pipe_open,
  mp_pool_open,
  mp_manager_open,
  mp_shm_open,
  NULL
};

/*
** SIGPIPE is left as the host set it: `mplua script | head -1` ends as lua5.4
** does. mp's own writes never raise it (src/engine/nosigpipe.h, MSG_NOSIGNAL).
*/
int luaopen_mp_core(lua_State *L) {
  lua_newtable(L);
  for (int i = 0; subsystems[i] != NULL; i++) subsystems[i](L);
  lua_pushliteral(L, MPLUA_VERSION);
  lua_setfield(L, -2, "version");
  lua_pushinteger(L, MPLUA_VERSION_NUM);
  lua_setfield(L, -2, "version_num");
  return 1;
}

void mplua_set_fork_hooks(mplua_fork_hook prepare, mplua_fork_hook parent,
                          mplua_fork_hook child, void *ud) {
  mp_fork_set_hooks(prepare, parent, child, ud);
}

int mplua_forkserver_start(lua_State *L) {
  int top = lua_gettop(L);
  lua_getfield(L, LUA_REGISTRYINDEX, LUA_LOADED_TABLE);
  lua_getfield(L, -1, "mp");
  lua_remove(L, -2);
  if (!lua_istable(L, -1) || lua_getfield(L, -1, "forkserver_start") != LUA_TFUNCTION) {
    lua_settop(L, top);
    lua_pushliteral(L, "mplua_forkserver_start: mp is not open in this state (luaopen_mp)");
    return LUA_ERRRUN;
  }
  lua_remove(L, -2);
  return lua_pcall(L, 0, 0, 0);
}

static const mp_embedded_module *find_module(const char *name) {
  for (const mp_embedded_module *m = mp_embedded_modules; m->name != NULL; m++) {
    if (strcmp(m->name, name) == 0) return m;
  }
  return NULL;
}

static void load_module(lua_State *L, const mp_embedded_module *m) {
  if (luaL_loadbufferx(L, m->source, m->size, m->chunkname, "t") != LUA_OK) lua_error(L);
}

/* package.preload loader for an embedded mp.* module; upvalue 1 is its entry. */
static int preload_loader(lua_State *L) {
  const mp_embedded_module *m = lua_touserdata(L, lua_upvalueindex(1));
  load_module(L, m);
  lua_pushstring(L, m->name);
  lua_call(L, 1, 1);
  return 1;
}

int luaopen_mp(lua_State *L) {
  luaL_requiref(L, "mp.core", luaopen_mp_core, 0);
  int core = lua_gettop(L);
  luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_PRELOAD_TABLE);
  for (const mp_embedded_module *m = mp_embedded_modules; m->name != NULL; m++) {
    if (strcmp(m->name, "mp") == 0) continue;
    if (lua_getfield(L, -1, m->name) == LUA_TNIL) {
      lua_pushlightuserdata(L, (void *)m);
      lua_pushcclosure(L, preload_loader, 1);
      lua_setfield(L, -3, m->name);
    }
    lua_pop(L, 1);
  }
  lua_pop(L, 1);
  const mp_embedded_module *facade = find_module("mp");
  if (facade == NULL) return luaL_error(L, "mp: the Lua half (mp.lua) is not embedded");
  load_module(L, facade);
  lua_pushvalue(L, core);
  lua_call(L, 1, 1);
  return 1;
}

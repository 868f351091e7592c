/*
** Helpers shared by the binding files (the only C files that include lua.h
** besides the serializer and the host).
*/
#ifndef MP_AUX_H
#define MP_AUX_H

#include <lua.h>
#include <lauxlib.h>

/*
** A userdata type: luaL_newmetatable(tname) (so __name reads well in errors and
** tostring), `methods` in __index and `metamethods` in the metatable itself.
** Every function gets the metatable as upvalue 1, which lets mp_checkself test
** the type with one pointer comparison instead of a registry lookup by name
** (luaL_checkudata costs ~30 ns per call, as much as the call itself).
** Leaves the metatable on the stack.
*/
void mp_newclass(lua_State *L, const char *tname,
                 const luaL_Reg *methods, const luaL_Reg *metamethods);

/* Raises "bad argument #arg (tname expected, got X)". */
int mp_typeerror(lua_State *L, int arg, const char *tname);

/*
** The userdata at `arg` if its metatable is upvalue 1 of the running function;
** otherwise a type error naming `tname`. Only for functions set by mp_newclass.
*/
static inline void *mp_checkself(lua_State *L, int arg, const char *tname) {
  void *p = lua_touserdata(L, arg);
  if (p != NULL && lua_getmetatable(L, arg)) {
    int same = lua_rawequal(L, -1, lua_upvalueindex(1));
    lua_pop(L, 1);
    if (same) return p;
  }
  mp_typeerror(L, arg, tname);
  return NULL;
}

/* As mp_checkself for any function: compares with the metatable registered as tname. */
void *mp_checkudata(lua_State *L, int arg, const char *tname);

/* Pushes a new userdata of `size` bytes with the metatable registered as tname. */
void *mp_newudata(lua_State *L, size_t size, const char *tname);

/*
** Raises an error object of the given kind ("Empty", "TimeoutError", ...), built
** by the factory the Lua half registers (mp.errors), with a formatted message.
** Without the Lua half loaded it raises the string "kind: message".
*/
int mp_raise(lua_State *L, const char *kind, const char *fmt, ...);

/* Raises "<what>: <strerror(err)>", for syscall failures. */
int mp_raise_errno(lua_State *L, int err, const char *what);

/*
** A timeout argument: nil or absent means forever (returns INFINITY); a
** negative number is treated as 0, as Python does. Returns an absolute deadline
** on mp_now()'s clock.
*/
double mp_optdeadline(lua_State *L, int arg);

/*
** Call from a blocking loop after the engine returned EINTR (a signal arrived, or
** a wait slice ended): runs pending mp.signal handlers and a pending interrupt
** hook of the host (lua.c's Ctrl-C). Either may raise, so call it only when the
** caller holds no C resource. Returns normally when the wait should go on.
*/
void mp_check_interrupt(lua_State *L);

/* The `mp.core` table is built by one open function per subsystem. */
void mp_time_open(lua_State *L);
void mp_process_open(lua_State *L);
void mp_signal_open(lua_State *L);
void mp_sync_open(lua_State *L);
void mp_shared_open(lua_State *L);
void mp_serial_open(lua_State *L);    /* serial.h */
/* transport: queues, pipes, mp.wait */
void mp_queue_open(lua_State *L);
void mp_pipe_open(lua_State *L);
void mp_pool_open(lua_State *L);
void mp_manager_open(lua_State *L);     /* lmanager.c: the Manager's transport */
void mp_shm_open(lua_State *L);         /* lshm.c: mp.SharedMemory */

#endif

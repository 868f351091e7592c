/*
** mplua: Python-style multiprocessing for Lua 5.4.
**
** Embedding: open the library in your own lua_State after luaL_openlibs(L):
**
**   luaL_requiref(L, "mp", luaopen_mp, 1);   (also sets the global `mp`)
**   lua_pop(L, 1);
**
** luaopen_mp may be called for several states and more than once per state;
** it keeps no lua_State in C globals. What it does process-wide, once:
**   - SIGPIPE is set to SIG_IGN if it was SIG_DFL, so writing to a closed pipe
**     becomes an error instead of killing the process (a host that installed its
**     own SIGPIPE handler keeps it);
**   - the first Process started registers an atexit handler that terminates
**     daemon children and waits for the others, as Python does at exit.
** Processes are made with fork(): call into mp only from the thread that runs
** Lua, and keep the host small at fork time (fork copies page tables).
*/
#ifndef MPLUA_H
#define MPLUA_H

#include <lua.h>

#define MPLUA_VERSION "0.1.0"

#ifdef __cplusplus
extern "C" {
#endif

/* Opens the whole library (C core plus the embedded Lua half); returns the `mp` table. */
int luaopen_mp(lua_State *L);

/* Opens only the C core (`mp.core`); luaopen_mp does this itself. */
int luaopen_mp_core(lua_State *L);

#ifdef __cplusplus
}
#endif

#endif

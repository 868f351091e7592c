/*
** What the fork-server binding (lforkserver.c) shares with the process
** binding (lprocess.c): the child handle that mp.Process wraps, and the way
** every child runs its entry function and ends.
*/
#ifndef MP_LPROCESS_H
#define MP_LPROCESS_H

#include <lua.h>

#include "engine/proc.h"

/*
** Pushes a new child handle in its safe empty state and returns where its
** entry goes: set it once the child exists (the handle then owns it).
*/
mp_child **mp_process_new_handle(lua_State *L);

/*
** In a new child: calls the function below the `nargs` values on top under
** lua_pcall; on error prints "Process <name>:" and the traceback (frames of
** the parent's script cut) to stderr. Then flushes, handles its own children
** and _exits with 0 or 1. Never returns.
*/
void mp_process_run_child(lua_State *L, int nargs, const char *name, size_t namelen)
  __attribute__((noreturn));

#endif

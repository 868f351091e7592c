/*
** What the shared-value binding (lshared.c) needs from the lock binding.
*/
#ifndef MP_LSYNC_H
#define MP_LSYNC_H

#include <lua.h>

/* Pushes a new mp.Lock (recursive = 0) or mp.RLock. */
void mp_sync_new_lock(lua_State *L, int recursive);

/* True when the value at arg is an mp.Lock or mp.RLock. */
int mp_sync_is_lock(lua_State *L, int arg);

#endif

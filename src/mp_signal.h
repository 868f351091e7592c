/*
** Signals: mp.signal's Lua handlers, run at a safe point, and the interrupt
** check that blocking calls make.
*/
#ifndef MP_SIGNAL_H
#define MP_SIGNAL_H

#include <lua.h>

/* A signal number from a number or a name ("SIGINT", "INT") at `arg`. */
int mp_checksignal(lua_State *L, int arg);

/* Runs the Lua handlers of the signals that arrived since the last call. */
void mp_signal_dispatch(lua_State *L);

/*
** For a host: `handler` (or NULL) is its own default for `sig`, as lua.c's
** SIGINT handler is; mp.signal reports it as "default" and "default" restores it.
*/
void mp_signal_host_default(int sig, void (*handler)(int));

/* In a new child: signals the parent had pending are not the child's. */
void mp_signal_after_fork(void);

#endif

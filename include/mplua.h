/*
** mplua: Python-style multiprocessing for Lua 5.4.
** The embedding API (docs/embedding.md).
**
** Opening the library in a host's own lua_State, after luaL_openlibs(L):
**
**   luaL_requiref(L, "mp", luaopen_mp, 1);   (also sets the global `mp`)
**   lua_pop(L, 1);
**
** Order of calls in a host:
**   1. mplua_set_fork_hooks(...)      before opening the library in any state
**                                     (and before any thread may fork through mp);
**   2. luaopen_mp, in each state      any number of states, any number of times:
**                                     it keeps no lua_State in C globals;
**   3. mplua_forkserver_start(L)      before the host starts threads, and while it
**                                     is small: the fork server is a fork of the
**                                     process as it is at that moment;
**   4. start threads; run Lua.        Only the thread that runs a state calls into
**                                     mp for that state.
**
** Processes are made with fork(). With the "forkserver" start method
** (mp.set_start_method, Process{context =}, mp.get_context), the host itself
** never forks once the server runs: the server forks the children from its
** own single-threaded copy of the host, taken at step 3. That is the way to
** use mp from a host that runs threads: fork() copies only the calling thread,
** so a child forked from the threaded host inherits every mutex the other
** threads held at that instant, locked forever (malloc's are handled by libc;
** the host's own are not). A server started later, at first use, is a copy
** of the host as it is then, threads' locks included.
**
** What the library keeps process-wide (the OS makes it so), for every state:
**   - the list of child processes, reaped by pid only (never waitpid(-1): the
**     host's own children and io.popen's are left alone), and an atexit
**     handler, registered at the first fork, that terminates daemonic children
**     and waits for the others, as Python does at exit;
**   - the shared-memory arenas (memfds) of Locks, Values and the like;
**   - pending signals, and ONE lua_State pointer in a C global: the main thread
**     of the state that last installed a Lua handler with mp.signal (src/lsignal.c,
**     `handler_state`). A C signal handler receives no user data, so, like lua.c's
**     `globalL`, it can only reach the state through a global to set the hook
**     that runs the Lua handler at the next safe point. That state's handler
**     table resets the dispositions it installed to SIG_DFL and clears the
**     pointer when the state is closed, so a signal arriving after lua_close
**     (a SIGCHLD from a child still running, say) finds no state and is only
**     recorded. Only one state per process owns Lua signal handlers at a time.
** Per state: the fork server (one per state; it ends when its state is closed
** or the process exits), the serializer's caches, the handler table.
**
** SIGPIPE is left as the host set it; mp's own writes never raise it.
*/
#ifndef MPLUA_H
#define MPLUA_H

#include <lua.h>

#define MPLUA_VERSION_MAJOR 0
#define MPLUA_VERSION_MINOR 1
#define MPLUA_VERSION_PATCH 0
#define MPLUA_VERSION "0.1.0"
/* major * 10000 + minor * 100 + patch, to compare as LUA_VERSION_NUM is compared. */
#define MPLUA_VERSION_NUM (MPLUA_VERSION_MAJOR * 10000 + MPLUA_VERSION_MINOR * 100 + MPLUA_VERSION_PATCH)

#ifdef __cplusplus
extern "C" {
#endif

/* Opens the whole library (C core plus the embedded Lua half); returns the `mp` table. */
int luaopen_mp(lua_State *L);

/* Opens only the C core (`mp.core`); luaopen_mp does this itself. */
int luaopen_mp_core(lua_State *L);

/*
** Fork hooks. mp calls `prepare` in the process about to fork, `parent` in it
** after the fork (also when the fork failed), and `child` in the new process
** once mp's own reset is done and before any Lua runs there, for every fork it
** makes. `what` says which fork it is:
**   MPLUA_FORK_PROCESS  a Process or a Pool worker forked from this process;
**   MPLUA_FORK_SERVER   the fork server, forked from its owner;
**   MPLUA_FORK_SERVED   a child the fork server forked (the hooks then run in
**                       the server and in that child, which are copies of the
**                       host as it was when the server started).
** A child hook re-initializes the host's subsystems (random seeds, connections,
** its own mutexes if it must fork while threads run) and closes the fds it does
** not want inherited. The hooks are process-wide: set them once, before opening
** the library; any of them may be NULL.
*/
#define MPLUA_FORK_PROCESS 1
#define MPLUA_FORK_SERVER 2
#define MPLUA_FORK_SERVED 3
typedef void (*mplua_fork_hook)(int what, void *ud);
void mplua_set_fork_hooks(mplua_fork_hook prepare, mplua_fork_hook parent,
                          mplua_fork_hook child, void *ud);

/*
** Starts the fork server of state L now (mp.forkserver_start): call it after
** opening the library and before the host starts threads. Returns LUA_OK, or
** an error status with the message on the top of L's stack (as lua_pcall).
*/
int mplua_forkserver_start(lua_State *L);

#ifdef __cplusplus
}
#endif

#endif

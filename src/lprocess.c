/*
** Binding for child processes: core.spawn and the child handle that the Lua
** class mp.Process (lua/mp/process.lua) wraps.
*/
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "lprocess.h"
#include "mp_aux.h"
#include "mp_signal.h"
#include "serial.h"
#include "engine/identity.h"
#include "engine/proc.h"

#define CHILD_T "mp.ChildHandle"

typedef struct child_handle {
  const mp_class *cls;
  mp_child *c;   /* NULL once closed */
} child_handle;

static const mp_class CHILD_C = { CHILD_T, sizeof(child_handle), NULL };

static child_handle *check_handle(lua_State *L) {
  child_handle *h = mp_checkself(L, 1, &CHILD_C);
  if (h->c == NULL) luaL_error(L, "process object is closed");
  return h;
}

/* lua.c's message handler, plus a traceback for error objects with __tostring. */
static int child_msghandler(lua_State *L) {
  const char *msg = lua_tostring(L, 1);
  if (msg == NULL) {
    if (luaL_callmeta(L, 1, "__tostring") && lua_type(L, -1) == LUA_TSTRING)
      msg = lua_tostring(L, -1);
    else
      msg = lua_pushfstring(L, "(error object is a %s value)", luaL_typename(L, 1));
  }
  luaL_traceback(L, L, msg, 1);
  /*
  ** The frames below core.spawn (or the fork server's start) belong to the
  ** parent's script, which the child never returns to: cut them, as Python's
  ** traceback starts at _bootstrap.
  */
  static const char *const entries[] = {
    "\n\t[C]: in function 'mp.core.spawn'",
    "\n\t[C]: in function 'mp.core.forkserver_start'",
    "\n\t[C]: in function 'mp.core.forkserver_spawn'",
    NULL
  };
  const char *trace = lua_tostring(L, -1);
  const char *cut = NULL;
  for (int i = 0; entries[i] != NULL; i++) {
    const char *at = strstr(trace, entries[i]);
    if (at != NULL && (cut == NULL || at < cut)) cut = at;
  }
  if (cut != NULL) lua_pushlstring(L, trace, (size_t)(cut - trace));
  return 1;
}

mp_child **mp_process_new_handle(lua_State *L) {
  child_handle *h = mp_newself(L, &CHILD_C, 0);   /* h->c NULL: safe empty state */
  return &h->c;
}

void mp_process_run_child(lua_State *L, int nargs, const char *name, size_t namelen) {
  int base = lua_gettop(L) - nargs;               /* the function */
  lua_pushcfunction(L, child_msghandler);
  lua_insert(L, base);                            /* below the function */
  int status = lua_pcall(L, nargs, 0, base);
  if (status != LUA_OK) {
    fflush(stdout);
    fprintf(stderr, "Process %.*s:\n%s\n", (int)namelen, name, lua_tostring(L, -1));
  }
  mp_exit_child(status == LUA_OK ? 0 : 1);
}

/*
** core.spawn(name, daemon, bootstrap, ...) forks. The child calls
** bootstrap(...) under lua_pcall and never returns into the caller: it prints
** "Process <name>:" and the traceback on error, then flushes and _exits with 0 or 1.
** The parent gets a child handle.
*/
static int core_spawn(lua_State *L) {
  size_t namelen;
  const char *name = luaL_checklstring(L, 1, &namelen);
  int daemon = lua_toboolean(L, 2);
  luaL_checktype(L, 3, LUA_TFUNCTION);
  int nargs = lua_gettop(L) - 3;
  child_handle *h = mp_newself(L, &CHILD_C, 0);   /* h->c NULL: safe empty state */
  /* The child finds its copies of the environments on this stack by their ids. */
  mp_serial_before_fork(L);
  mp_child *c = NULL;
  pid_t pid = mp_fork(&c, daemon);
  if (pid < 0) return mp_raise_errno(L, (int)-pid, "cannot start process (fork)");
  if (pid > 0) {
    h->c = c;
    return 1;
  }
  /* The child. */
  mp_signal_after_fork();
  lua_pop(L, 1);                                     /* the handle */
  mp_process_run_child(L, nargs, name, namelen);
}

static int handle_pid(lua_State *L) {
  lua_pushinteger(L, check_handle(L)->c->pid);
  return 1;
}

static void push_exitcode(lua_State *L, mp_child *c) {
  if (c->done) lua_pushinteger(L, c->exitcode);
  else lua_pushnil(L);
}

/* handle:poll() --> exitcode or nil while running */
static int handle_poll(lua_State *L) {
  mp_child *c = check_handle(L)->c;
  mp_child_poll(c);
  push_exitcode(L, c);
  return 1;
}

/* handle:wait([timeout]) --> exitcode or nil on timeout */
static int handle_wait(lua_State *L) {
  mp_child *c = check_handle(L)->c;
  double deadline = mp_optdeadline(L, 2);
  if (c->owner != (pid_t)mp_self_pid()) return luaL_error(L, "can only join a child process");
  int rc;
  while ((rc = mp_child_wait(c, deadline)) == EINTR)
    mp_check_interrupt(L);
  push_exitcode(L, c);
  return 1;
}

/* handle:signal(signum) */
static int handle_signal(lua_State *L) {
  mp_child *c = check_handle(L)->c;
  int sig = mp_checksignal(L, 2);
  if (c->owner != (pid_t)mp_self_pid()) return luaL_error(L, "can only signal a child process");
  int err = mp_child_signal(c, sig);
  if (err) return mp_raise_errno(L, err, "kill");
  return 0;
}

/* handle:sentinel() --> an fd that polls readable once the process has ended */
static int handle_sentinel(lua_State *L) {
  mp_child *c = check_handle(L)->c;
  if (c->pidfd < 0) return luaL_error(L, "sentinel: this process has no sentinel");
  lua_pushinteger(L, c->pidfd);
  return 1;
}

/* __gc, __close and close(): one idempotent function. */
static int handle_close(lua_State *L) {
  child_handle *h = mp_checkself(L, 1, &CHILD_C);
  if (h->c != NULL) {
    mp_child_release(h->c);
    h->c = NULL;
  }
  return 0;
}

/* core.child_exit([code [, close]]): os.exit for a child process (see process.lua). */
static int core_child_exit(lua_State *L) {
  int status;
  if (lua_isboolean(L, 1)) status = lua_toboolean(L, 1) ? EXIT_SUCCESS : EXIT_FAILURE;
  else status = (int)luaL_optinteger(L, 1, EXIT_SUCCESS);
  mp_exit_child(status);
}

static int core_getpid(lua_State *L) {
  mp_checknargs(L, 0);
  lua_pushinteger(L, mp_self_pid());
  return 1;
}

static int core_getppid(lua_State *L) {
  lua_pushinteger(L, getppid());
  return 1;
}

static int core_cpu_count(lua_State *L) {
  mp_checknargs(L, 0);
  long n = sysconf(_SC_NPROCESSORS_ONLN);
  lua_pushinteger(L, n > 0 ? n : 1);
  return 1;
}

static int core_reap(lua_State *L) {
  mp_children_reap();
  return 0;
}

/* core.pid_alive(pid): for a parent_process() object (kill(pid, 0)). */
static int core_pid_alive(lua_State *L) {
  pid_t pid = (pid_t)luaL_checkinteger(L, 1);
  lua_pushboolean(L, pid > 0 && (kill(pid, 0) == 0 || errno == EPERM));
  return 1;
}

void mp_process_open(lua_State *L) {
  static const luaL_Reg methods[] = {
    {"pid", handle_pid},
    {"poll", handle_poll},
    {"wait", handle_wait},
    {"signal", handle_signal},
    {"sentinel", handle_sentinel},
    {"close", handle_close},
    {NULL, NULL}
  };
  static const luaL_Reg metamethods[] = {
    {"__gc", handle_close},
    {"__close", handle_close},
    {NULL, NULL}
  };
  static const luaL_Reg funcs[] = {
    {"spawn", core_spawn},
    {"child_exit", core_child_exit},
    {"getpid", core_getpid},
    {"getppid", core_getppid},
    {"cpu_count", core_cpu_count},
    {"reap", core_reap},
    {"pid_alive", core_pid_alive},
    {NULL, NULL}
  };
  mp_newclass(L, &CHILD_C, methods, metamethods);
  lua_pop(L, 1);
  luaL_setfuncs(L, funcs, 0);
}

/*
** mp.signal(sig, handler): Lua signal handlers.
**
** The C handler only records the signal and sets a count hook (as lua.c does for
** Ctrl-C); the Lua handler runs from that hook at the next VM instruction, or
** sooner from a blocking mp call, which returns EINTR from its wait and calls
** mp_check_interrupt. Handlers are installed without SA_RESTART so that blocking
** waits do see EINTR.
*/
#include <errno.h>
#include <signal.h>
#include <stdint.h>
#include <string.h>

#include "mp_aux.h"
#include "mp_signal.h"

/*
** Process-wide, because signal dispositions are: the pending set and the state
** (its main thread) whose registry holds the Lua handlers. Only one Lua state
** per process can own Lua signal handlers; the last one to install one wins.
*/
static volatile sig_atomic_t pending[NSIG];
static volatile sig_atomic_t pending_any;
static lua_State *volatile handler_state;

/*
** A host's own handler for a signal, standing for "default" (mplua's Ctrl-C,
** lua.c's 'laction'): reported as "default", and what "default" restores.
*/
static void (*volatile host_default[NSIG])(int);

void mp_signal_host_default(int sig, void (*handler)(int)) {
  if (sig > 0 && sig < NSIG) host_default[sig] = handler;
}

/* Registry key of this state's table signum -> handler. */
static const char handlers_key = 0;

static const struct { const char *name; int num; } signal_names[] = {
  {"SIGHUP", SIGHUP}, {"SIGINT", SIGINT}, {"SIGQUIT", SIGQUIT}, {"SIGILL", SIGILL},
  {"SIGTRAP", SIGTRAP}, {"SIGABRT", SIGABRT}, {"SIGBUS", SIGBUS}, {"SIGFPE", SIGFPE},
  {"SIGKILL", SIGKILL}, {"SIGUSR1", SIGUSR1}, {"SIGSEGV", SIGSEGV}, {"SIGUSR2", SIGUSR2},
  {"SIGPIPE", SIGPIPE}, {"SIGALRM", SIGALRM}, {"SIGTERM", SIGTERM}, {"SIGCHLD", SIGCHLD},
  {"SIGCONT", SIGCONT}, {"SIGSTOP", SIGSTOP}, {"SIGTSTP", SIGTSTP}, {"SIGTTIN", SIGTTIN},
  {"SIGTTOU", SIGTTOU}, {"SIGURG", SIGURG}, {"SIGXCPU", SIGXCPU}, {"SIGXFSZ", SIGXFSZ},
  {"SIGVTALRM", SIGVTALRM}, {"SIGPROF", SIGPROF}, {"SIGWINCH", SIGWINCH}, {"SIGIO", SIGIO},
  {"SIGPWR", SIGPWR}, {"SIGSYS", SIGSYS}, {NULL, 0}
};

int mp_checksignal(lua_State *L, int arg) {
  if (lua_type(L, arg) == LUA_TSTRING) {
    const char *name = lua_tostring(L, arg);
    for (int i = 0; signal_names[i].name != NULL; i++) {
      if (strcmp(name, signal_names[i].name) == 0 || strcmp(name, signal_names[i].name + 3) == 0)
        return signal_names[i].num;
    }
    return luaL_argerror(L, arg, lua_pushfstring(L, "unknown signal name '%s'", name));
  }
  lua_Integer sig = luaL_checkinteger(L, arg);
  luaL_argcheck(L, sig > 0 && sig < NSIG, arg, "signal number out of range");
  return (int)sig;
}

static void signal_hook(lua_State *L, lua_Debug *ar) {
  (void)ar;
  lua_sethook(L, NULL, 0, 0);
  mp_signal_dispatch(L);
}

/*
** A hook like the one lua.c sets from its SIGINT handler ("interrupted!"):
** count 1 with call/return events (lua.c 5.4 adds line events). Called directly,
** it raises in the blocked call.
*/
static int is_interrupt_hook(lua_State *L) {
  lua_Hook h = lua_gethook(L);
  return h != NULL && h != signal_hook && lua_gethookcount(L) == 1 &&
         (lua_gethookmask(L) & ~LUA_MASKLINE) == (LUA_MASKCALL | LUA_MASKRET | LUA_MASKCOUNT);
}

static void on_signal(int sig) {
  int saved = errno;
  pending[sig] = 1;
  pending_any = 1;
  lua_State *L = handler_state;
  /*
  ** A pending Ctrl-C hook is not replaced: the interrupt would be lost. The
  ** handler then runs at the next mp_check_interrupt (mplua's hook runs it too).
  */
  if (L != NULL && !is_interrupt_hook(L))
    lua_sethook(L, signal_hook, LUA_MASKCALL | LUA_MASKRET | LUA_MASKCOUNT, 1);
  errno = saved;
}

void mp_signal_dispatch(lua_State *L) {
  while (pending_any) {
    int sig = 0;
    for (int s = 1; s < NSIG; s++) {
      if (pending[s]) { sig = s; break; }
    }
    if (sig == 0) { pending_any = 0; break; }
    pending[sig] = 0;
    if (lua_rawgetp(L, LUA_REGISTRYINDEX, &handlers_key) != LUA_TTABLE) {
      lua_pop(L, 1);
      continue;
    }
    if (lua_rawgeti(L, -1, sig) == LUA_TFUNCTION) {
      lua_remove(L, -2);
      lua_pushinteger(L, sig);
      lua_call(L, 1, 0);              /* a handler's error propagates from here */
    } else {
      lua_pop(L, 2);
    }
  }
}

void mp_signal_after_fork(void) {
  for (int s = 1; s < NSIG; s++) pending[s] = 0;
  pending_any = 0;
}


/* Whether stack level `level` runs mp's own code: C, or one of mp's Lua files. */
static int in_library(lua_State *L, int level) {
  lua_Debug ar;
  if (!lua_getstack(L, level, &ar) || !lua_getinfo(L, "S", &ar)) return 0;
  if (strcmp(ar.what, "C") == 0) return 1;
  const char *src = ar.source;
  size_t n = strlen(src);
  if (n >= 6 && (src[0] == '@' || src[0] == '=') && strcmp(src + n - 4, ".lua") == 0) {
    const char *slash = strrchr(src, '/');
    if (slash != NULL && slash - src >= 3 && strncmp(slash - 2, "mp", 2) == 0 &&
        (slash - src == 3 || slash[-3] == '/')) return 1;          /* .../mp/<name>.lua */
    if (strcmp(src + 1, "mp.lua") == 0) return 1;
  }
  return 0;
}

/* lua_pcall'd: runs the host's interrupt hook (which raises "interrupted!"). */
static int run_hook(lua_State *L) {
  lua_Hook h = (lua_Hook)(uintptr_t)lua_touserdata(L, 1);
  lua_Debug ar;
  memset(&ar, 0, sizeof ar);
  ar.event = LUA_HOOKCOUNT;
  h(L, &ar);
  return 0;
}

void mp_check_interrupt(lua_State *L) {
  if (pending_any) mp_signal_dispatch(L);
  lua_rawgeti(L, LUA_REGISTRYINDEX, LUA_RIDX_MAINTHREAD);
  lua_State *main = lua_tothread(L, -1);
  lua_pop(L, 1);
  lua_State *hooked = is_interrupt_hook(L) ? L : (main != NULL && is_interrupt_hook(main)) ? main : NULL;
  if (hooked != NULL) {
    lua_Hook h = lua_gethook(hooked);
    if (hooked != L) lua_sethook(hooked, NULL, 0, 0);
    /*
    ** The hook raises where it runs, which may be deep in mp's own Lua code
    ** (a pool's loop): run it from here, where it can name no line, and give
    ** its error the position of the first caller outside mp -- the user's
    ** line, as for an interrupt during a C function of lua.c's own libraries.
    */
    lua_pushcfunction(L, run_hook);
    lua_pushlightuserdata(L, (void *)(uintptr_t)h);
    if (lua_pcall(L, 1, 0, 0) != LUA_OK) {
      if (lua_type(L, -1) == LUA_TSTRING) {
        int level = 1;
        while (in_library(L, level)) level++;
        luaL_where(L, level);
        lua_insert(L, -2);
        lua_concat(L, 2);
      }
      lua_error(L);
    }
  }
  mp_run_pollers(L);
}

/* A handler value for Lua: the function, "default" or "ignore". */
static void push_handler_value(lua_State *L, int sig) {
  struct sigaction sa;
  sigaction(sig, NULL, &sa);
  if (sa.sa_handler == on_signal) {
    if (lua_rawgetp(L, LUA_REGISTRYINDEX, &handlers_key) == LUA_TTABLE) {
      lua_rawgeti(L, -1, sig);
      lua_remove(L, -2);
      if (!lua_isnil(L, -1)) return;
    }
    lua_pop(L, 1);
    lua_pushliteral(L, "default");
  } else if (sa.sa_handler == SIG_IGN) {
    lua_pushliteral(L, "ignore");
  } else if (sa.sa_handler == SIG_DFL || (host_default[sig] != NULL && sa.sa_handler == host_default[sig])) {
    lua_pushliteral(L, "default");
  } else {
    lua_pushliteral(L, "foreign");    /* set by the host or another library */
  }
}

/* The handlers table dies with its state: restore default dispositions then. */
static int handlers_gc(lua_State *L) {
  lua_rawgeti(L, LUA_REGISTRYINDEX, LUA_RIDX_MAINTHREAD);
  lua_State *main = lua_tothread(L, -1);
  if (handler_state == main) {
    for (int s = 1; s < NSIG; s++) {
      struct sigaction sa;
      if (sigaction(s, NULL, &sa) == 0 && sa.sa_handler == on_signal) signal(s, SIG_DFL);
    }
    handler_state = NULL;
  }
  return 0;
}

static void get_handlers(lua_State *L) {
  if (lua_rawgetp(L, LUA_REGISTRYINDEX, &handlers_key) == LUA_TTABLE) return;
  lua_pop(L, 1);
  lua_newtable(L);
  lua_createtable(L, 0, 1);
  lua_pushcfunction(L, handlers_gc);
  lua_setfield(L, -2, "__gc");
  lua_setmetatable(L, -2);
  lua_pushvalue(L, -1);
  lua_rawsetp(L, LUA_REGISTRYINDEX, &handlers_key);
}

/* mp.signal(sig, handler) --> previous handler */
static int core_signal(lua_State *L) {
  mp_checknargs(L, 2);
  int sig = mp_checksignal(L, 1);
  luaL_argcheck(L, sig != SIGKILL && sig != SIGSTOP, 1, "SIGKILL and SIGSTOP cannot be caught");
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sigemptyset(&sa.sa_mask);
  if (lua_isfunction(L, 2)) {
    sa.sa_handler = on_signal;
  } else {
    const char *what = luaL_checkstring(L, 2);
    if (strcmp(what, "default") == 0) sa.sa_handler = host_default[sig] != NULL ? host_default[sig] : SIG_DFL;
    else if (strcmp(what, "ignore") == 0) sa.sa_handler = SIG_IGN;
    else return luaL_argerror(L, 2, "expected a function, \"default\" or \"ignore\"");
  }
  push_handler_value(L, sig);                   /* the previous one, returned */
  get_handlers(L);
  lua_pushvalue(L, 2);
  if (!lua_isfunction(L, 2)) { lua_pop(L, 1); lua_pushnil(L); }
  lua_rawseti(L, -2, sig);
  lua_pop(L, 1);
  if (sa.sa_handler == on_signal) {
    lua_rawgeti(L, LUA_REGISTRYINDEX, LUA_RIDX_MAINTHREAD);
    handler_state = lua_tothread(L, -1);
    lua_pop(L, 1);
  }
  if (sigaction(sig, &sa, NULL) < 0) return mp_raise_errno(L, errno, "sigaction");
  return 1;
}

/* core.kill(pid, sig): send a signal to any process (os.kill). */
static int core_kill(lua_State *L) {
  mp_checknargs(L, 2);
  pid_t pid = (pid_t)luaL_checkinteger(L, 1);
  int sig = lua_isnoneornil(L, 2) ? SIGTERM : mp_checksignal(L, 2);
  if (kill(pid, sig) < 0) return mp_raise_errno(L, errno, "kill");
  return 0;
}

void mp_signal_open(lua_State *L) {
  static const luaL_Reg funcs[] = {
    {"signal", core_signal},
    {"kill", core_kill},
    {NULL, NULL}
  };
  luaL_setfuncs(L, funcs, 0);
  lua_newtable(L);
  for (int i = 0; signal_names[i].name != NULL; i++) {
    lua_pushinteger(L, signal_names[i].num);
    lua_setfield(L, -2, signal_names[i].name);
  }
  lua_setfield(L, -2, "signals");
}

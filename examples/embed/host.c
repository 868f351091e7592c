/*
** A host that embeds Lua 5.4 and mplua the way a game or a tool does: its own
** main loop, and a thread of its own (an asset loader) that holds a mutex
** while it works. Lua scripts start processes, and those call back into the
** host (host.log), which takes that mutex.
**
**   host [--fork] [--frames N] script.lua
**
** By default the host starts mp's fork server before it starts its thread
** (mplua_forkserver_start) and sets the "forkserver" start method: children
** are forked from the server, a copy of the host taken while the mutex was
** free. With --fork, children are forked from the host itself while the
** loader holds the mutex: the child's copy of the mutex is locked by a thread
** that does not exist in the child, and the child's host.log waits forever.
** The script notices (its Queue get times out) and the host exits with 2.
**
** Each frame the main loop asks the loader to hold the mutex, runs the
** script's frame(n) (which starts processes) while it is held, then lets it
** go: the worst case, made certain, of a loader that holds it most of the time.
**
** Build from an installed mplua (see docs/embedding.md):
**   cc -o host host.c $(pkg-config --cflags --libs mplua) -pthread
*/
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <lauxlib.h>
#include <lualib.h>

#include "mplua.h"

/* ---- The host's own subsystem: an asset loader thread and its mutex ---- */

static pthread_mutex_t assets = PTHREAD_MUTEX_INITIALIZER;   /* what host.log needs */

static pthread_mutex_t ctl = PTHREAD_MUTEX_INITIALIZER;      /* main loop <-> loader */
static pthread_cond_t ctl_cv = PTHREAD_COND_INITIALIZER;
static int want_hold, holding, quitting;

static void *loader(void *arg) {
  (void)arg;
  pthread_mutex_lock(&ctl);
  while (!quitting) {
    if (!want_hold) { pthread_cond_wait(&ctl_cv, &ctl); continue; }
    pthread_mutex_unlock(&ctl);
    pthread_mutex_lock(&assets);                  /* "loading": the mutex is held */
    pthread_mutex_lock(&ctl);
    holding = 1;
    pthread_cond_broadcast(&ctl_cv);
    while (want_hold && !quitting) pthread_cond_wait(&ctl_cv, &ctl);
    holding = 0;
    pthread_mutex_unlock(&assets);
    pthread_cond_broadcast(&ctl_cv);
  }
  pthread_mutex_unlock(&ctl);
  return NULL;
}

static void set_hold(int on) {
  pthread_mutex_lock(&ctl);
  want_hold = on;
  pthread_cond_broadcast(&ctl_cv);
  while (holding != on) pthread_cond_wait(&ctl_cv, &ctl);
  pthread_mutex_unlock(&ctl);
}

/* ---- Fork hooks: what a host re-initializes in a child ---- */

static int forked_as;                  /* in a child: MPLUA_FORK_* of the fork that made it */

static void before_fork(int what, void *ud) {
  (void)what; (void)ud;
  fflush(stdout);                      /* the host's buffered output is not written twice */
}

static void in_child(int what, void *ud) {
  (void)ud;
  forked_as = what;
  srand((unsigned)getpid());           /* a child must not replay the parent's random numbers */
}

/* ---- What the host gives Lua ---- */

/* host.log(msg): the host's logger, which takes the assets mutex like everything else. */
static int host_log(lua_State *L) {
  const char *msg = luaL_checkstring(L, 1);
  pthread_mutex_lock(&assets);
  printf("[log] %s\n", msg);
  fflush(stdout);
  pthread_mutex_unlock(&assets);
  return 0;
}

/* host.forked_as() --> "process", "served" or nil: what the child hook saw. */
static int host_forked_as(lua_State *L) {
  static const char *const kinds[] = { NULL, "process", "server", "served" };
  if (forked_as > 0 && forked_as <= 3) lua_pushstring(L, kinds[forked_as]);
  else lua_pushnil(L);
  return 1;
}

static const luaL_Reg host_funcs[] = {
  {"log", host_log},
  {"forked_as", host_forked_as},
  {NULL, NULL}
};

static int report(lua_State *L, int status, const char *what) {
  if (status != LUA_OK) fprintf(stderr, "host: %s: %s\n", what, lua_tostring(L, -1));
  return status == LUA_OK;
}

int main(int argc, char **argv) {
  int use_fork = 0, frames = 3;
  const char *script = NULL;
  for (int i = 1; i < argc; i++) {
    if (strcmp(argv[i], "--fork") == 0) use_fork = 1;
    else if (strcmp(argv[i], "--frames") == 0 && i + 1 < argc) frames = atoi(argv[++i]);
    else script = argv[i];
  }
  if (script == NULL) {
    fprintf(stderr, "usage: %s [--fork] [--frames N] script.lua\n", argv[0]);
    return 1;
  }

  /* 1. Hooks, before the library is opened. */
  mplua_set_fork_hooks(before_fork, NULL, in_child, NULL);

  /* 2. A state of the host's own, with mp and the host's functions. */
  lua_State *L = luaL_newstate();
  if (L == NULL) return 1;
  luaL_openlibs(L);
  luaL_requiref(L, "mp", luaopen_mp, 1);
  lua_pop(L, 1);
  luaL_newlib(L, host_funcs);
  lua_setglobal(L, "host");

  int ok = 1;
  lua_getglobal(L, "mp");
  lua_getfield(L, -1, "set_start_method");
  lua_pushstring(L, use_fork ? "fork" : "forkserver");
  ok = report(L, lua_pcall(L, 1, 0, 0), "set_start_method");
  lua_pop(L, 1);

  /* 3. The fork server, while the host is one thread and small. */
  if (ok && !use_fork) ok = report(L, mplua_forkserver_start(L), "fork server");

  /* 4. The host's thread; then the script, and the main loop. */
  pthread_t thread;
  if (pthread_create(&thread, NULL, loader, NULL) != 0) {
    fprintf(stderr, "host: cannot start the loader thread\n");
    lua_close(L);
    return 1;
  }
  if (ok) ok = report(L, luaL_dofile(L, script), script);
  for (int n = 1; ok && n <= frames; n++) {
    set_hold(1);                                   /* the loader holds the mutex now */
    lua_getglobal(L, "frame");
    lua_pushinteger(L, n);
    ok = report(L, lua_pcall(L, 1, 1, 0), "frame");
    set_hold(0);
    if (ok) {
      printf("%s\n", lua_tostring(L, -1) ? lua_tostring(L, -1) : "(nothing)");
      fflush(stdout);
      lua_pop(L, 1);
    }
    nanosleep(&(struct timespec){ 0, 16 * 1000 * 1000 }, NULL);   /* the rest of the frame */
  }

  pthread_mutex_lock(&ctl);
  quitting = 1;
  pthread_cond_broadcast(&ctl_cv);
  pthread_mutex_unlock(&ctl);
  pthread_join(thread, NULL);
  lua_close(L);                                    /* ends the fork server too */
  return ok ? 0 : 2;
}

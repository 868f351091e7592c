/*
** A test host (spec/embed_spec.lua) for what libmplua must survive in a
** foreign host: several lua_States in one process, opening the library again
** after lua_close, states in different threads, and a SIGCHLD that arrives
** after the state that installed a Lua handler for it is closed.
**
**   states_host two | reopen | threads | sigchld | stdio | hooks | release
**
** Prints one line per step and "ok <scenario>"; exits 0, or 1 with the error.
*/
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <lauxlib.h>
#include <lualib.h>

#include "mplua.h"

static lua_State *open_state(void) {
  lua_State *L = luaL_newstate();
  if (L == NULL) { fprintf(stderr, "no memory\n"); exit(1); }
  luaL_openlibs(L);
  luaL_requiref(L, "mp", luaopen_mp, 1);
  lua_pop(L, 1);
  return L;
}

/* Runs a chunk in L; on error prints it and exits 1. */
static void run(lua_State *L, const char *chunk) {
  if (luaL_dostring(L, chunk) != LUA_OK) {
    fprintf(stderr, "states_host: %s\n", lua_tostring(L, -1));
    exit(1);
  }
}

/* A process of each start method, answering through a Queue; prints what came back. */
static const char *const WORK =
  "local tag = ...\n"
  "local q = mp.Queue()\n"
  "for _, m in ipairs{'fork', 'forkserver'} do\n"
  "  local p = mp.Process{target = function() q:put(m) end, context = m}\n"
  "  p:start(); p:join(10)\n"
  "  assert(p.exitcode == 0, m .. ' exit ' .. tostring(p.exitcode))\n"
  "  io.write(tag, ' ', q:get(10), '\\n')\n"
  "end\n";

static void work(lua_State *L, const char *tag) {
  if (luaL_loadstring(L, WORK) != LUA_OK) { fprintf(stderr, "%s\n", lua_tostring(L, -1)); exit(1); }
  lua_pushstring(L, tag);
  if (lua_pcall(L, 1, 0, 0) != LUA_OK) {
    fprintf(stderr, "states_host: %s: %s\n", tag, lua_tostring(L, -1));
    exit(1);
  }
  fflush(stdout);
}

/*
** stdio: a thread writes to stdout (not flushed) while the main thread forks
** through mp. Its line belongs to the parent: the child must not write it
** again. The fork hook wakes the writer just before mp flushes and forks; the
** fault point "fork.flushed" (a test build) widens the window between the two.
*/
static pthread_mutex_t wmutex = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t wcv = PTHREAD_COND_INITIALIZER;
static int wake, written;

static pid_t main_tid;

/* Whether thread tid of this process sleeps in nanosleep or clock_nanosleep now. */
static int in_nanosleep(pid_t tid) {
  char path[64], buf[64] = "";
  snprintf(path, sizeof path, "/proc/self/task/%d/syscall", (int)tid);
  FILE *f = fopen(path, "r");
  if (f == NULL) return 0;
  size_t n = fread(buf, 1, sizeof buf - 1, f);
  fclose(f);
  buf[n] = '\0';
  return strncmp(buf, "35 ", 3) == 0 || strncmp(buf, "230 ", 4) == 0;
}

static void *writer(void *arg) {
  (void)arg;
  pthread_mutex_lock(&wmutex);
  while (!wake) pthread_cond_wait(&wcv, &wmutex);
  pthread_mutex_unlock(&wmutex);
  /* Wait until the main thread sleeps in the fault point: after mp's flush, before its fork. */
  struct timespec tick = { 0, 1000 * 1000 };
  for (int i = 0; i < 10000 && !in_nanosleep(main_tid); i++) nanosleep(&tick, NULL);
  fputs("written by the thread\n", stdout);
  pthread_mutex_lock(&wmutex);
  written = 1;
  pthread_mutex_unlock(&wmutex);
  return NULL;
}

static void wake_writer(int what, void *ud) {
  (void)what; (void)ud;
  pthread_mutex_lock(&wmutex);
  wake = 1;
  pthread_cond_signal(&wcv);
  pthread_mutex_unlock(&wmutex);
}

/* hooks: each hook says where it ran (every line flushed at once: processes share stdout). */
static void say(const char *hook, int what) {
  printf("%s %d\n", hook, what);
  fflush(stdout);
}
static void hook_prepare(int what, void *ud) { (void)ud; say("prepare", what); }
static void hook_parent(int what, void *ud) { (void)ud; say("parent", what); }
static void hook_child(int what, void *ud) { (void)ud; say("child", what); }

/*
** release: a state in another thread reaps (mp.active_children) while this
** thread lets go of an ended child's handle; the test build's fault point
** "proc.release" holds this thread inside the release. Both free the entry
** if the release is not atomic with respect to the reap.
*/
static void *reaper(void *arg) {
  (void)arg;
  struct timespec tick = { 0, 1000 * 1000 };
  for (int i = 0; i < 10000 && !in_nanosleep(main_tid); i++) nanosleep(&tick, NULL);
  lua_State *L = open_state();
  run(L, "mp.active_children()");
  lua_close(L);
  return NULL;
}

static void *thread_work(void *arg) {
  lua_State *L = open_state();
  for (int i = 0; i < 5; i++) work(L, (const char *)arg);
  lua_close(L);
  return NULL;
}

/* Whether process pid has ended (gone, or a zombie not reaped yet). */
static int ended(pid_t pid) {
  char path[64], buf[512];
  snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
  FILE *f = fopen(path, "r");
  if (f == NULL) return 1;
  size_t n = fread(buf, 1, sizeof buf - 1, f);
  fclose(f);
  buf[n] = '\0';
  const char *p = strrchr(buf, ')');
  return p == NULL || p[1] != ' ' || p[2] == 'Z';
}

int main(int argc, char **argv) {
  const char *what = argc > 1 ? argv[1] : "";
  if (strcmp(what, "two") == 0) {
    /* Two states at once, each with its own fork server; one closes, the other goes on. */
    lua_State *a = open_state(), *b = open_state();
    work(a, "a");
    work(b, "b");
    lua_close(a);
    work(b, "b after a closed");
    lua_close(b);
  } else if (strcmp(what, "reopen") == 0) {
    for (int i = 1; i <= 3; i++) {
      lua_State *L = open_state();
      char tag[32];
      snprintf(tag, sizeof tag, "state %d", i);
      work(L, tag);
      lua_close(L);
    }
  } else if (strcmp(what, "threads") == 0) {
    pthread_t t1, t2;
    pthread_create(&t1, NULL, thread_work, "t1");
    pthread_create(&t2, NULL, thread_work, "t2");
    pthread_join(t1, NULL);
    pthread_join(t2, NULL);
  } else if (strcmp(what, "sigchld") == 0) {
    /*
    ** A Lua SIGCHLD handler, a child that outlives the state, lua_close, then
    ** the child's end: its SIGCHLD must find no state (the handler's C
    ** global was cleared when the state closed) instead of a freed one.
    */
    lua_State *L = open_state();
    run(L, "mp.signal('SIGCHLD', function() io.write('handler ran\\n') end)\n"
           "p = mp.Process{target = mp.sleep, args = {0.3}}; p:start()\n"
           "child_pid = p.pid");
    lua_getglobal(L, "child_pid");
    pid_t pid = (pid_t)lua_tointeger(L, -1);
    lua_close(L);
    printf("closed with child %d running\n", (int)pid);
    fflush(stdout);
    struct timespec nap = { 0, 10 * 1000 * 1000 };
    for (int i = 0; i < 1000 && !ended(pid); i++) nanosleep(&nap, NULL);
    if (!ended(pid)) { fprintf(stderr, "the child did not end\n"); return 1; }
    /* The signal was delivered (the child is a zombie or reaped); give a late one a chance too. */
    kill(getpid(), SIGCHLD);
    nanosleep(&nap, NULL);
    printf("child ended after lua_close\n");
  } else if (strcmp(what, "stdio") == 0) {
    pthread_t t;
    main_tid = (pid_t)syscall(SYS_gettid);
    pthread_create(&t, NULL, writer, NULL);
    mplua_set_fork_hooks(wake_writer, NULL, NULL, NULL);
    lua_State *L = open_state();
    run(L, "p = mp.Process{target = function() end}; p:start(); p:join(10); assert(p.exitcode == 0)");
    pthread_join(t, NULL);
    lua_close(L);
  } else if (strcmp(what, "hooks") == 0) {
    mplua_set_fork_hooks(hook_prepare, hook_parent, hook_child, NULL);
    lua_State *L = open_state();
    if (mplua_forkserver_start(L) != LUA_OK) { fprintf(stderr, "%s\n", lua_tostring(L, -1)); return 1; }
    run(L, "for _, m in ipairs{'fork', 'forkserver'} do\n"
           "  local p = mp.Process{target = function() end, context = m}; p:start(); p:join(10)\n"
           "end");
    lua_close(L);
  } else if (strcmp(what, "release") == 0) {
    lua_State *L = open_state();
    run(L, "local p = mp.Process{target = function() end}; p:start(); p:join(10)\n"
           "handle = p._handle");
    main_tid = (pid_t)syscall(SYS_gettid);
    pthread_t t;
    pthread_create(&t, NULL, reaper, NULL);
    run(L, "handle:close()");                 /* mp_child_release, held in the fault point */
    pthread_join(t, NULL);
    lua_close(L);
  } else {
    fprintf(stderr, "usage: states_host two|reopen|threads|sigchld|stdio|hooks|release\n");
    return 1;
  }
  printf("ok %s\n", what);
  return 0;
}

/*
** mp/mpi.so: `require "mp.mpi"`. MPI for mp's Pool, as a separate module so
** that mp itself never links MPI. This file owns MPI's life in the process:
** MPI_Init_thread (thread level single) at the first require, MPI_Finalize
** at exit, and what rank 0 must tell the workers before it (FINISH). The
** transport is src/mpi/mpichan.c; the Lua half (Pool, the workers' loop) is
** lua/mp/mpipool.lua, which this module loads and returns.
**
** MPI is process-wide, so its state here is in C globals (init_pid, the
** world's size and rank, the parent communicator of a spawned worker).
**
** Type checks use luaL_checkudata: mp's class-word check (mp_checkself) lives
** in mp's core, which this module does not link; a few tens of nanoseconds
** per call on paths that cost microseconds of MPI anyway.
*/
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <lua.h>
#include <lauxlib.h>

#include "engine/clock.h"
#include "mpi/mpichan.h"

#define PARENT_T "mp.MPITransport"
#define WORKER_T "mp.MPIWorkerSide"

static pid_t init_pid;          /* the process that initialized MPI; 0 before */
static int world_rank, world_size;
static MPI_Comm parent = MPI_COMM_NULL;   /* a spawned worker: its parent */
static int finish_received;     /* a spawned worker was told to leave (then it disconnects) */
static int world_finished;      /* rank 0: FINISH sent to the world's ranks */

/* At exit, in the process that initialized MPI (a forked child _exits, never here). */
static void at_exit(void) {
  int fin = 0;
  if (init_pid == 0 || getpid() != init_pid) return;
  MPI_Finalized(&fin);
  if (fin) return;
  /*
  ** A worker rank that leaves before rank 0 said FINISH (os.exit in a task,
  ** an error in its loop) skips MPI_Finalize, which would wait for ranks that
  ** are not finalizing: Open MPI then ends its job (all of mpirun's job, or
  ** the one spawned rank), which is what a dead worker means here.
  */
  if (parent != MPI_COMM_NULL || world_rank != 0) {
    if (!finish_received) return;
    if (parent != MPI_COMM_NULL) MPI_Comm_disconnect(&parent);
  } else {
    mpc_finish_all();
    if (world_size > 1 && !world_finished) mpc_finish_world(world_size);
  }
  fflush(NULL);
  MPI_Finalize();
}

/*
** Keeps this library loaded until the process ends: Lua unloads C modules at
** lua_close, and at_exit runs after that.
*/
static void stay_loaded(void) {
  Dl_info info;
  if (dladdr((void *)at_exit, &info) && info.dli_fname != NULL) dlopen(info.dli_fname, RTLD_NOW | RTLD_NODELETE);
}

static int mpi_error(lua_State *L, int rc, const char *what) {
  char s[MPI_MAX_ERROR_STRING];
  int len = 0;
  if (MPI_Error_string(rc, s, &len) != MPI_SUCCESS) snprintf(s, sizeof s, "MPI error %d", rc);
  return luaL_error(L, "%s: %s", what, s);
}

static void check_process(lua_State *L) {
  if (getpid() != init_pid) luaL_error(L, "mp.mpi used in a forked child (only the rank's own process may use MPI)");
}

/* ---- the parent's transport object ----------------------------------- */

static mpichan *checkparent(lua_State *L) {
  mpichan *c = luaL_checkudata(L, 1, PARENT_T);
  check_process(L);
  if (c->closed) luaL_error(L, "MPI transport is closed");
  return c;
}

static int slot(lua_State *L, mpichan *c, int arg) {
  lua_Integer i = luaL_checkinteger(L, arg);
  luaL_argcheck(L, i >= 1 && i <= c->nworkers, arg, "worker index out of range");
  return (int)i - 1;
}

static int t_gc(lua_State *L) {
  mpichan *c = lua_touserdata(L, 1);
  if (init_pid != 0 && getpid() != init_pid) c->foreign = 1;
  mpc_close(c);
  return 0;
}

/* _parent(n, cap, world) --> transport object (rank 0's side of a pool). */
static int l_parent(lua_State *L) {
  lua_Integer n = luaL_checkinteger(L, 1), cap = luaL_checkinteger(L, 2);
  int world = lua_toboolean(L, 3);
  check_process(L);
  luaL_argcheck(L, n >= 1 && n <= 4096, 1, "number of workers out of range");
  luaL_argcheck(L, cap >= 1 && cap <= 2, 2, "cap out of range");
  if (world && n > world_size - 1) luaL_argerror(L, 1, "more workers than worker ranks");
  if (world && mpc_world_busy) luaL_error(L, "the worker ranks already serve another mpi.Pool: close it first");
  mpichan *c = lua_newuserdatauv(L, sizeof *c, 0);
  mpc_init(c);
  luaL_setmetatable(L, PARENT_T);
  if (mpc_open_parent(c, (int)n, (int)cap, world) != 0) return luaL_error(L, "not enough memory");
  if (world) mpc_world_busy = 1;
  return 1;
}

/* t:spawn(i, command, {args}) --> true, or nil and MPI's reason */
static int t_spawn(lua_State *L) {
  mpichan *c = checkparent(L);
  int i = slot(L, c, 2);
  const char *cmd = luaL_checkstring(L, 3);
  luaL_checktype(L, 4, LUA_TTABLE);
  int n = (int)luaL_len(L, 4);
  char **argv = lua_newuserdatauv(L, sizeof(char *) * (size_t)(n + 1), 0);
  for (int k = 0; k < n; k++) {
    lua_geti(L, 4, k + 1);
    argv[k] = (char *)luaL_checkstring(L, -1);
    lua_pop(L, 1);                    /* still referenced by the table */
  }
  argv[n] = NULL;
  MPI_Info info;
  MPI_Info_create(&info);
  /* The spawning rank mostly sleeps: a machine whose cores all hold a rank may take one more. */
  MPI_Info_set(info, "map_by", ":OVERSUBSCRIBE");
  char why[MPI_MAX_ERROR_STRING + 1];
  int err = mpc_spawn(c, i, cmd, argv, info, why, sizeof why);
  MPI_Info_free(&info);
  if (err) {
    lua_pushnil(L);
    lua_pushstring(L, why);
    return 2;
  }
  lua_pushboolean(L, 1);
  return 1;
}

/* t:start(i, payload, again, slice) --> true once the worker answered; false at the slice's end */
static int t_start(lua_State *L) {
  mpichan *c = checkparent(L);
  int i = slot(L, c, 2);
  size_t len;
  const char *p = luaL_checklstring(L, 3, &len);
  int err = mpc_start(c, i, p, len, lua_toboolean(L, 4), luaL_optnumber(L, 5, MP_WAIT_SLICE));
  if (err == EINTR) { lua_pushboolean(L, 0); return 1; }
  if (err) return luaL_error(L, "mp.mpi: starting worker %d: %s", i + 1, strerror(err));
  lua_pushboolean(L, 1);
  return 1;
}

static int t_stop(lua_State *L) {
  mpichan *c = checkparent(L);
  int err = mpc_stop(c, slot(L, c, 2));
  if (err) return luaL_error(L, "mp.mpi: stopping a worker: %s", strerror(err));
  return 0;
}

/* t:join(i, slice) --> true once worker i has left or died */
static int t_join(lua_State *L) {
  mpichan *c = checkparent(L);
  int i = slot(L, c, 2);
  int err = mpc_join(c, i, mp_now() + luaL_optnumber(L, 3, MP_WAIT_SLICE));
  if (err == ETIMEDOUT || err == EINTR) { lua_pushboolean(L, 0); return 1; }
  if (err) return luaL_error(L, "mp.mpi: waiting for a worker: %s", strerror(err));
  lua_pushboolean(L, 1);
  return 1;
}

static int t_release(lua_State *L) {
  mpichan *c = checkparent(L);
  mpc_release(c, slot(L, c, 2));
  return 0;
}

/* t:signal(i, signum) --> true when sent (a spawned worker on this host only) */
static int t_signal(lua_State *L) {
  mpichan *c = checkparent(L);
  int i = slot(L, c, 2);
  int sig = (int)luaL_checkinteger(L, 3);
  lua_pushboolean(L, mpc_signal(c, i, sig) == 0);
  return 1;
}

/* t:info(i) --> state ("none", "serving", "exited", "dead"), exitcode, pid, host, rank, spawned */
static int t_info(lua_State *L) {
  mpichan *c = checkparent(L);
  mpc_worker *w = &c->w[slot(L, c, 2)];
  static const char *const states[] = { "none", "serving", "exited", "dead" };
  lua_pushstring(L, states[w->state]);
  lua_pushinteger(L, w->exitcode);
  lua_pushinteger(L, w->pid);
  lua_pushstring(L, w->host);
  lua_pushinteger(L, w->spawned ? -1 : w->rank);
  lua_pushboolean(L, w->spawned);
  lua_pushinteger(L, w->qn);
  return 7;
}

static int t_close(lua_State *L) {
  luaL_checkudata(L, 1, PARENT_T);
  return t_gc(L);
}

/* ---- a worker's side -------------------------------------------------- */

static mpichan *checkworker(lua_State *L) {
  mpichan *c = luaL_checkudata(L, 1, WORKER_T);
  check_process(L);
  return c;
}

/* _worker() --> the worker's side (one per process: the rank serves pool after pool). */
static int l_worker(lua_State *L) {
  check_process(L);
  mpichan *c = lua_newuserdatauv(L, sizeof *c, 0);
  mpc_init(c);
  luaL_setmetatable(L, WORKER_T);
  mpc_open_worker(c, parent != MPI_COMM_NULL ? parent : MPI_COMM_WORLD, 0);
  return 1;
}

/* w:wait_start(slice) --> payload (a START), false (FINISH: leave), nil (the slice ended) */
static int w_wait_start(lua_State *L) {
  mpichan *c = checkworker(L);
  if (c->finish) { lua_pushboolean(L, 0); return 1; }
  int err = mpc_wait_start(c, luaL_optnumber(L, 2, MP_WAIT_SLICE));
  if (err == EINTR) return 0;
  if (err) return luaL_error(L, "mp.mpi: waiting for the pool: %s", strerror(err));
  if (c->finish) { finish_received = 1; lua_pushboolean(L, 0); return 1; }
  lua_pushlstring(L, c->in.data, c->in.len);
  return 1;
}

static int w_hello(lua_State *L) {
  int err = mpc_hello(checkworker(L));
  if (err) return luaL_error(L, "mp.mpi: answering the pool: %s", strerror(err));
  return 0;
}

static int w_exit(lua_State *L) {
  mpichan *c = checkworker(L);
  int err = mpc_exit(c, (int)luaL_checkinteger(L, 2));
  if (err) return luaL_error(L, "mp.mpi: leaving the pool: %s", strerror(err));
  return 0;
}

/* w:finished() --> true once FINISH came (during a pool's take too) */
static int w_finished(lua_State *L) {
  mpichan *c = checkworker(L);
  if (c->finish) finish_received = 1;
  lua_pushboolean(L, c->finish);
  return 1;
}

static int w_gc(lua_State *L) {
  mpichan *c = lua_touserdata(L, 1);
  if (init_pid != 0 && getpid() != init_pid) c->foreign = 1;
  mpc_close(c);
  return 0;
}

/* ---- module ----------------------------------------------------------- */

/* _exe() --> the path of this process's program (spawned workers run the same) */
static int l_exe(lua_State *L) {
  char buf[4096];
  ssize_t n = readlink("/proc/self/exe", buf, sizeof buf - 1);
  if (n <= 0) return 0;
  lua_pushlstring(L, buf, (size_t)n);
  return 1;
}

static int init_mpi(lua_State *L) {
  int inited = 0, fin = 0;
  MPI_Finalized(&fin);
  if (fin) return luaL_error(L, "mp.mpi: MPI was finalized in this process");
  MPI_Initialized(&inited);
  if (!inited) {
    int provided;
    int rc = MPI_Init_thread(NULL, NULL, MPI_THREAD_SINGLE, &provided);
    if (rc != MPI_SUCCESS) return mpi_error(L, rc, "mp.mpi: MPI_Init_thread");
    init_pid = getpid();
    /* The transport's waits sleep in steps of tens of microseconds: the default
    ** 50 us timer slack would double them. */
    prctl(PR_SET_TIMERSLACK, 1000UL, 0, 0, 0);
    stay_loaded();
    atexit(at_exit);
  } else if (init_pid == 0) {
    init_pid = getpid();          /* initialized by the host: it finalizes too */
  }
  check_process(L);
  MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
  MPI_Comm_set_errhandler(MPI_COMM_SELF, MPI_ERRORS_RETURN);
  MPI_Comm_rank(MPI_COMM_WORLD, &world_rank);
  MPI_Comm_size(MPI_COMM_WORLD, &world_size);
  MPI_Comm_get_parent(&parent);
  if (parent != MPI_COMM_NULL) MPI_Comm_set_errhandler(parent, MPI_ERRORS_RETURN);
  return 0;
}

__attribute__((visibility("default"))) int luaopen_mp_mpi(lua_State *L);

int luaopen_mp_mpi(lua_State *L) {
  static const luaL_Reg tmethods[] = {
    {"spawn", t_spawn}, {"start", t_start}, {"stop", t_stop}, {"join", t_join},
    {"release", t_release}, {"signal", t_signal}, {"info", t_info}, {"close", t_close},
    {NULL, NULL}
  };
  static const luaL_Reg wmethods[] = {
    {"wait_start", w_wait_start}, {"hello", w_hello}, {"exit", w_exit}, {"finished", w_finished},
    {NULL, NULL}
  };
  init_mpi(L);
  if (luaL_newmetatable(L, PARENT_T)) {
    luaL_newlib(L, tmethods);
    lua_setfield(L, -2, "__index");
    lua_pushcfunction(L, t_gc);
    lua_setfield(L, -2, "__gc");
    lua_pushlightuserdata(L, (void *)&mpc_ops);   /* the seam, for core.pool_transport */
    lua_setfield(L, -2, "__pool_ops");
  }
  lua_pop(L, 1);
  if (luaL_newmetatable(L, WORKER_T)) {
    luaL_newlib(L, wmethods);
    lua_setfield(L, -2, "__index");
    lua_pushcfunction(L, w_gc);
    lua_setfield(L, -2, "__gc");
    lua_pushlightuserdata(L, (void *)&mpc_ops);
    lua_setfield(L, -2, "__pool_ops");
  }
  lua_pop(L, 1);
  lua_getglobal(L, "require");
  lua_pushliteral(L, "mp");                    /* its Lua files are embedded in mp */
  lua_call(L, 1, 0);
  lua_getglobal(L, "require");
  lua_pushliteral(L, "mp.mpipool");
  lua_call(L, 1, 1);                           /* the Lua half: a function of the C half */
  lua_createtable(L, 0, 8);
  lua_pushinteger(L, world_rank); lua_setfield(L, -2, "rank");
  lua_pushinteger(L, world_size); lua_setfield(L, -2, "size");
  char name[MPI_MAX_PROCESSOR_NAME];
  int len = 0;
  MPI_Get_processor_name(name, &len);
  lua_pushlstring(L, name, (size_t)len); lua_setfield(L, -2, "processor_name");
  lua_pushboolean(L, parent != MPI_COMM_NULL); lua_setfield(L, -2, "spawned");
  lua_pushcfunction(L, l_parent); lua_setfield(L, -2, "_parent");
  lua_pushcfunction(L, l_worker); lua_setfield(L, -2, "_worker");
  lua_pushcfunction(L, l_exe); lua_setfield(L, -2, "_exe");
  lua_call(L, 1, 1);
  return 1;
}

/*
** Helpers shared by the binding files (the only C files that include lua.h
** besides the serializer and the host).
*/
#ifndef MP_AUX_H
#define MP_AUX_H

#include <lua.h>
#include <lauxlib.h>

/*
** The userdata recipe. Every mp userdata type is described by one static
** mp_class, and the first word of every such userdata points at its class:
**
**   typedef struct queue_ud { const mp_class *cls; ... } queue_ud;
**   static const mp_class QUEUE_C = { "mp.Queue", sizeof(queue_ud), NULL };
**   queue_ud *q = mp_newself(L, &QUEUE_C, 0);      (zeroed, class word set, metatable set)
**   queue_ud *q = mp_checkself(L, 1, &QUEUE_C);    (in every method and metamethod)
**
** mp_checkself is the one type-check idiom: it reads that word and compares it
** with the expected class (one load and a compare, no registry lookup by name:
** luaL_checkudata costs ~30 ns per call, as much as the call itself). It first
** checks that the value is a full userdata whose block is at least as large as
** the class says (lua_rawlen is 0 for a light userdata, which could point
** anywhere), so the word is only read inside memory Lua allocated; only
** mp_newself writes a pointer to an mp_class there.
**
** A method accepts objects of its own class only. One C function that serves
** several classes (the three queues' put, the finalizers) is registered once
** per class by mp_newclass, which gives every method and metamethod its class
** as upvalue 1: it checks with mp_checkself(L, 1, mp_upclass(L)). An argument
** that may be of several classes (a Condition's lock: Lock or RLock) is
** checked against a family class whose `also` lists the accepted classes; the
** accepted pointers are read from the trusted class, never from the object.
*/
typedef struct mp_class {
  const char *tname;                   /* metatable name, also used in type errors */
  size_t size;                         /* the userdata block's size */
  const struct mp_class *const *also;  /* family: the accepted classes (NULL-terminated), or NULL */
} mp_class;

/* Whether the object's class `k` is `c` or a member of family `c`. */
static inline int mp_class_accepts(const mp_class *c, const mp_class *k) {
  if (k == c) return 1;
  if (c->also != NULL)
    for (const mp_class *const *a = c->also; *a != NULL; a++)
      if (*a == k) return 1;
  return 0;
}

/* The class of the running method (upvalue 1, set by mp_newclass). */
static inline const mp_class *mp_upclass(lua_State *L) {
  return (const mp_class *)lua_touserdata(L, lua_upvalueindex(1));
}

/* Raises "bad argument #arg to 'f' (tname expected, got X)" (or "calling 'f' on bad self"). */
int mp_typeerror(lua_State *L, int arg, const char *tname);

/* The mp object at `arg` when it is of class `c` (or of family `c`), else NULL. */
static inline void *mp_testself(lua_State *L, int arg, const mp_class *c) {
  const mp_class *const *p = lua_touserdata(L, arg);
  if (p == NULL) return NULL;
  size_t len = lua_rawlen(L, arg);
  if (len < sizeof *p || !mp_class_accepts(c, *p) || len < (*p)->size) return NULL;
  return (void *)p;
}

/* The mp object at `arg` when it is of class `c` (or of family `c`); else a type error. */
static inline void *mp_checkself(lua_State *L, int arg, const mp_class *c) {
  void *p = mp_testself(L, arg, c);
  if (p == NULL) mp_typeerror(L, arg, c->tname);
  return p;
}

/*
** Pushes a new object of class c: c->size zeroed bytes with the class word
** set, `nuv` user values, and the metatable registered as c->tname. The
** caller then sets its safe empty state (fds -1...) before anything can fail.
*/
void *mp_newself(lua_State *L, const mp_class *c, int nuv);

/*
** Registers the metatable of class `c`: luaL_newmetatable(c->tname) (so
** __name reads well in errors and tostring), `metamethods` in the metatable
** and `methods` in a table set as __index, each with the class as upvalue 1
** (mp_upclass). Leaves the metatable on the stack.
*/
void mp_newclass(lua_State *L, const mp_class *c,
                 const luaL_Reg *methods, const luaL_Reg *metamethods);

/*
** Raises an error object of the given kind ("Empty", "TimeoutError", ...), built
** by the factory the Lua half registers (mp.errors), with a formatted message.
** Without the Lua half loaded it raises the string "kind: message".
*/
int mp_raise(lua_State *L, const char *kind, const char *fmt, ...);

/* Raises "<what>: <strerror(err)>", for syscall failures. */
int mp_raise_errno(lua_State *L, int err, const char *what);

/*
** Conventions every function follows (nothing is silently ignored).
**
** mp_checkoptions: the table at idx is an options table of function `fname`:
** every key must be a string in `keys` (NULL-terminated), else "unknown
** option 'taget' to 'Process' (did you mean 'target'?)".
** mp_checknargs: at most n arguments (self included), else "bad argument #k
** to 'f' (no argument expected here...)", so that a:send(1, 2) is an error
** instead of sending 1.
** mp_block_deadline: Python's (block, timeout) at arg, arg + 1: a number in
** the block position is the timeout (q:get(0.5)); {block =, timeout =} works
** too; a timeout with block = false is an error. Returns the absolute
** deadline: -INFINITY when not blocking, INFINITY for no timeout.
*/
void mp_checkoptions(lua_State *L, int idx, const char *fname, const char *const keys[]);
void mp_nargs_error(lua_State *L, int n) __attribute__((noreturn));
static inline void mp_checknargs(lua_State *L, int n) {   /* inline: every method's fast path */
  if (__builtin_expect(lua_gettop(L) > n, 0)) mp_nargs_error(L, n);
}
double mp_block_deadline(lua_State *L, int arg, const char *fname);

/* The message for an unknown option key (with a suggestion), or NULL when k is known. */
const char *mp_option_error(lua_State *L, const char *key, const char *fname, const char *const keys[]);

/*
** A timeout argument: nil or absent means forever (returns INFINITY); a
** negative number is treated as 0, as Python does. Returns an absolute deadline
** on mp_now()'s clock.
*/
double mp_optdeadline(lua_State *L, int arg);

/*
** Call from a blocking loop after the engine returned EINTR (a signal arrived, or
** a wait slice ended): runs pending mp.signal handlers and a pending interrupt
** hook of the host (lua.c's Ctrl-C). Either may raise, so call it only when the
** caller holds no C resource. Returns normally when the wait should go on.
*/
void mp_check_interrupt(lua_State *L);

/*
** Pollers: Lua functions that every blocking mp call runs at its safe points
** (mp_check_interrupt: after a signal, at each wait slice's end), so that work
** owned by a library object -- a pool's callbacks -- goes on while the program
** blocks elsewhere. core.poller(key, fn [, fd]) registers fn under key (nil
** removes it); fd, when given, polls readable when the poller has work, and
** waits that can poll it (mp.sleep) wake on it instead of at the slice's end.
** While any poller exists, wait slices are 5 ms instead of MP_WAIT_SLICE.
** Per state (a registry table); a poller never runs inside another.
*/
void mp_run_pollers(lua_State *L);
/* The pollers' fds, up to max of them, into fds; returns how many. */
int mp_poller_fds(lua_State *L, int *fds, int max);

/* The `mp.core` table is built by one open function per subsystem. */
void mp_time_open(lua_State *L);
void mp_process_open(lua_State *L);
void mp_forkserver_open(lua_State *L);
void mp_signal_open(lua_State *L);
void mp_sync_open(lua_State *L);
void mp_shared_open(lua_State *L);
void mp_serial_open(lua_State *L);    /* serial.h */
/* transport: queues, pipes, mp.wait */
void mp_queue_open(lua_State *L);
void mp_pipe_open(lua_State *L);
void mp_pool_open(lua_State *L);
void mp_manager_open(lua_State *L);     /* lmanager.c: the Manager's transport */
void mp_shm_open(lua_State *L);         /* lshm.c: mp.SharedMemory */

#endif

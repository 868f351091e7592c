/*
** Binding for the synchronization primitives: Lock, RLock, Semaphore,
** BoundedSemaphore, Condition, Event (Barrier, `with`, `hold` and `wait_for`
** are composed in lua/mp/sync.lua).
**
** Each object is a userdata pointing at its state in shared pages (shpages.h),
** allocated when it is created; processes forked afterwards share it. The
** memory goes back to the allocator when the object is collected in the
** process that created it; a child's finalizer never frees it.
*/
#include <errno.h>
#include <math.h>
#include <stdint.h>

#include "lsync.h"
#include "mp_aux.h"
#include "mp_travel.h"
#include "engine/shpages.h"
#include "engine/sync.h"

#define LOCK_T "mp.Lock"
#define RLOCK_T "mp.RLock"
#define SEM_T "mp.Semaphore"
#define BSEM_T "mp.BoundedSemaphore"
#define COND_T "mp.Condition"
#define EVENT_T "mp.Event"

#define SLOT 64                         /* one cache line per primitive */

/* The common head of every primitive's userdata. */
typedef struct prim_ud {
  const mp_class *cls;                  /* first: the class word (mp_aux.h) */
  void *shm;                            /* NULL once collected */
  uint32_t owner;                       /* the creating process: only it frees */
  int imported;                         /* received from another process: unimported, never freed */
} prim_ud;

typedef struct lock_ud {
  prim_ud h;
  int recursive;
} lock_ud;

typedef struct cond_ud {
  prim_ud h;
  lock_ud *lock;                        /* kept alive by user value 1 */
} cond_ud;

static int prim_export(lua_State *L, int idx, mp_travel_desc *d);
static void prim_import(lua_State *L, const mp_class *c, const mp_travel_desc *d, int dep);
static const mp_travel PRIM_TRAVEL = { prim_export, prim_import };

static const mp_class LOCK_C = { LOCK_T, sizeof(lock_ud), NULL },
                      RLOCK_C = { RLOCK_T, sizeof(lock_ud), NULL },
                      SEM_C = { SEM_T, sizeof(prim_ud), NULL },
                      BSEM_C = { BSEM_T, sizeof(prim_ud), NULL },
                      COND_C = { COND_T, sizeof(cond_ud), NULL },
                      EVENT_C = { EVENT_T, sizeof(prim_ud), NULL };
/* What a Condition or a Value's lock option accepts. */
static const mp_class *const lock_family[] = { &LOCK_C, &RLOCK_C, NULL };
static const mp_class ANY_LOCK_C = { "mp.Lock or mp.RLock", sizeof(lock_ud), lock_family };

static void *collected(lua_State *L, const char *tname) {
  luaL_error(L, "%s used after it was collected", tname);
  return NULL;
}

/* The primitive at argument 1 when its class is (in) `c`, else a type error. */
static inline prim_ud *check_prim(lua_State *L, const mp_class *c) {
  prim_ud *p = mp_checkself(L, 1, c);
  /* Only reachable from another object's finalizer, but never a NULL dereference. */
  if (p->shm == NULL) return collected(L, c->tname);
  return p;
}

#define check_self(L, c) ((void *)check_prim(L, c))

/* Pushes a primitive's userdata in a safe empty state, then allocates. */
static void *new_prim(lua_State *L, const mp_class *c) {
  prim_ud *u = mp_newself(L, c, 1);
  u->owner = mp_self_pid();
  void *shm = mp_shm_alloc(SLOT);
  if (shm == NULL) mp_raise_errno(L, errno, "cannot allocate shared memory");
  u->shm = shm;
  return u;
}

/* __gc for all of them: one idempotent function (each class checks its own). */
static int prim_gc(lua_State *L) {
  prim_ud *u = mp_checkself(L, 1, mp_upclass(L));
  if (u->shm != NULL) {
    if (u->imported) mp_shm_unimport(u->shm);
    else if (u->owner == mp_self_pid()) mp_shm_free(u->shm, SLOT);
    u->shm = NULL;
  }
  return 0;
}

/*
** Travelling (mp_travel.h): the primitive's slot in the shared pages, named
** by the fd of its region and its offset there. A Condition takes its lock
** along. The receiver maps the region (once for all the objects in it) and
** uses the same slot; only the creator ever frees it, so the rule for
** inherited objects holds for these too: keep it alive in the creator while
** others use it (docs/sync.md).
*/
static int prim_export(lua_State *L, int idx, mp_travel_desc *d) {
  prim_ud *u = lua_touserdata(L, idx);
  int fd;
  size_t len, off;
  if (u->shm == NULL || mp_shm_export(u->shm, &fd, &len, &off) != 0)
    luaL_error(L, "cannot send %s: its memory is gone", u->cls->tname);
  mp_travel_put(d, len);
  mp_travel_put(d, off);
  mp_travel_put(d, (u->cls == &LOCK_C || u->cls == &RLOCK_C) ? (uint64_t)((lock_ud *)u)->recursive : 0);
  d->fds[d->nfds++] = fd;
  if (u->cls == &COND_C) {
    lua_getiuservalue(L, idx, 1);
    return 1;
  }
  return 0;
}

static void prim_import(lua_State *L, const mp_class *c, const mp_travel_desc *d, int dep) {
  size_t pos = 0;
  uint64_t len = mp_travel_get(L, d, &pos), off = mp_travel_get(L, d, &pos);
  uint64_t recursive = mp_travel_get(L, d, &pos);
  if (d->nfds != 1 || dep != (c == &COND_C)) luaL_error(L, "mp.loads: corrupt %s description", c->tname);
  lock_ud *lock = NULL;
  if (dep) {
    lock = mp_testself(L, -1, &ANY_LOCK_C);
    if (lock == NULL) luaL_error(L, "mp.loads: corrupt %s description (its lock)", c->tname);
  }
  prim_ud *u = mp_newself(L, c, 1);            /* shm NULL: safe empty state */
  int fd = mp_travel_dup(L, d->fds[0]);
  void *p;
  int err = mp_shm_import(fd, (size_t)len, (size_t)off, SLOT, &p);   /* takes fd */
  if (err) mp_raise_errno(L, err, "cannot receive a synchronization primitive");
  u->shm = p;
  u->imported = 1;
  if (c == &LOCK_C || c == &RLOCK_C) ((lock_ud *)u)->recursive = recursive != 0;
  if (dep) {
    ((cond_ud *)u)->lock = lock;
    lua_pushvalue(L, -2);
    lua_setiuservalue(L, -2, 1);
    lua_remove(L, -2);                         /* the lock: kept as user value 1 */
  }
}

/* Runs pending signal handlers and Ctrl-C under lua_pcall (for cleanup paths). */
static int check_interrupt(lua_State *L) {
  mp_check_interrupt(L);
  return 0;
}

/* ---- Lock and RLock ------------------------------------------------------ */

static int push_acquired(lua_State *L, int rc) {
  switch (rc) {
    case 0:
      lua_pushboolean(L, 1);
      return 1;
    case EOWNERDEAD:
      lua_pushboolean(L, 1);
      lua_pushliteral(L, "owner died");
      return 2;
    default:
      lua_pushboolean(L, 0);
      return 1;
  }
}

/* acquire(block, timeout) for a Lock or RLock, args from `arg`; slow paths. */
static int mutex_acquire(lua_State *L, lock_ud *u, int arg) {
  mp_mutex *m = u->h.shm;
  double deadline = mp_block_deadline(L, arg, "acquire");
  if (u->recursive && mp_mutex_is_mine(m)) {
    m->count++;
    lua_pushboolean(L, 1);
    return 1;
  }
  int rc;
  if (deadline == -INFINITY) {
    rc = mp_mutex_trylock(m);
  } else {
    int spin = 1;
    while ((rc = mp_mutex_lock(m, deadline, spin)) == EINTR) {
      mp_check_interrupt(L);
      spin = 0;
    }
  }
  if (rc == 0 || rc == EOWNERDEAD) m->count = 1;
  return push_acquired(L, rc);
}

static int mutex_release(lua_State *L, lock_ud *u) {
  mp_mutex *m = u->h.shm;
  if (u->recursive) {
    if (!mp_mutex_is_mine(m)) return luaL_error(L, "cannot release un-acquired lock");
    if (--m->count > 0) return 0;
  }
  if (mp_mutex_unlock(m) != 0) return luaL_error(L, "release unlocked lock");
  return 0;
}

static int lock_new(lua_State *L, int recursive) {
  lock_ud *u = new_prim(L, recursive ? &RLOCK_C : &LOCK_C);
  u->recursive = recursive;
  return 1;
}

static int core_lock(lua_State *L) { mp_checknargs(L, 0); return lock_new(L, 0); }
static int core_rlock(lua_State *L) { mp_checknargs(L, 0); return lock_new(L, 1); }

void mp_sync_new_lock(lua_State *L, int recursive) { lock_new(L, recursive); }

int mp_sync_is_lock(lua_State *L, int arg) {
  return mp_testself(L, arg, &ANY_LOCK_C) != NULL;
}

/* lock:acquire([block [, timeout]]) --> true [, "owner died"] | false */
static int lock_acquire(lua_State *L) {
  int nargs = lua_gettop(L);
  lock_ud *u = check_self(L, &LOCK_C);
  if (nargs == 1 && mp_mutex_tryfast(u->h.shm)) {
    lua_pushboolean(L, 1);
    return 1;
  }
  return mutex_acquire(L, u, 2);
}

static int lock_release(lua_State *L) {
  lock_ud *u = check_self(L, &LOCK_C);
  mp_checknargs(L, 1);                  /* (inline: one lua_gettop) */
  if (mp_mutex_unlock(u->h.shm) != 0) return luaL_error(L, "release unlocked lock");
  return 0;
}

static int rlock_acquire(lua_State *L) {
  int nargs = lua_gettop(L);
  lock_ud *u = check_self(L, &RLOCK_C);
  if (nargs == 1 && mp_mutex_tryfast(u->h.shm)) {
    ((mp_mutex *)u->h.shm)->count = 1;
    lua_pushboolean(L, 1);
    return 1;
  }
  return mutex_acquire(L, u, 2);
}

static int rlock_release(lua_State *L) {
  lock_ud *u = check_self(L, &RLOCK_C);
  mp_checknargs(L, 1);
  return mutex_release(L, u);
}

static int mutex_tostring(lua_State *L, lock_ud *u, const char *name) {
  mp_mutex *m = u->h.shm;
  uint32_t owner = mp_mutex_owner(m);
  if (owner == 0) lua_pushfstring(L, "%s(owner=none)", name);
  else if (u->recursive) lua_pushfstring(L, "%s(owner=%d, count=%d)", name, (int)owner, (int)m->count);
  else lua_pushfstring(L, "%s(owner=%d)", name, (int)owner);
  return 1;
}

static int lock_tostring(lua_State *L) { return mutex_tostring(L, check_self(L, &LOCK_C), "Lock"); }
static int rlock_tostring(lua_State *L) { return mutex_tostring(L, check_self(L, &RLOCK_C), "RLock"); }

/* lock:owner() --> pid of the holder (the last acquirer), or nil when free. */
static int mutex_owner(lua_State *L, lock_ud *u) {
  uint32_t owner = mp_mutex_owner(u->h.shm);
  if (owner == 0) lua_pushnil(L);
  else lua_pushinteger(L, owner);
  return 1;
}
static int lock_owner(lua_State *L) { lock_ud *u = check_self(L, &LOCK_C); mp_checknargs(L, 1); return mutex_owner(L, u); }
static int rlock_owner(lua_State *L) { lock_ud *u = check_self(L, &RLOCK_C); mp_checknargs(L, 1); return mutex_owner(L, u); }

/* ---- Semaphore and BoundedSemaphore ----------------------------------------- */

/* Semaphore([value]) or Semaphore{value = n} */
static int sem_new(lua_State *L, int bounded) {
  static const char *const keys[] = { "value", NULL };
  mp_checknargs(L, 1);
  if (lua_istable(L, 1)) {
    mp_checkoptions(L, 1, bounded ? "BoundedSemaphore" : "Semaphore", keys);
    lua_getfield(L, 1, "value");
    lua_replace(L, 1);
  }
  lua_Integer value = luaL_optinteger(L, 1, 1);
  luaL_argcheck(L, value >= 0, 1, "semaphore initial value must be >= 0");
  luaL_argcheck(L, value <= INT32_MAX, 1, "semaphore initial value too large");
  prim_ud *u = new_prim(L, bounded ? &BSEM_C : &SEM_C);
  mp_sem *s = u->shm;
  atomic_store(&s->value, (uint32_t)value);
  s->bounded = bounded;
  s->max = (uint32_t)value;
  return 1;
}

static int core_semaphore(lua_State *L) { return sem_new(L, 0); }
static int core_bounded_semaphore(lua_State *L) { return sem_new(L, 1); }

/* The methods are shared by both classes. */
static prim_ud *check_sem(lua_State *L) { return check_prim(L, mp_upclass(L)); }

/*
** acquire and release are the hot paths: each class gets its own entry point,
** with its class a constant, so that they do not read upvalue 1 (one more
** call into Lua's API, a tenth of the pair's time).
*/
static inline int sem_acquire(lua_State *L, const mp_class *c) {
  int nargs = lua_gettop(L);
  prim_ud *u = check_prim(L, c);
  mp_sem *s = u->shm;
  double deadline = nargs == 1 ? INFINITY : mp_block_deadline(L, 2, "acquire");
  if (mp_sem_trywait(s) == 0) {
    lua_pushboolean(L, 1);
    return 1;
  }
  int rc = EAGAIN;
  if (deadline != -INFINITY) {
    int spin = 1;
    while ((rc = mp_sem_wait(s, deadline, spin)) == EINTR) {
      mp_check_interrupt(L);
      spin = 0;
    }
  }
  lua_pushboolean(L, rc == 0);
  return 1;
}

/* sem:release([n]) */
static inline int sem_release(lua_State *L, const mp_class *c) {
  int nargs = lua_gettop(L);
  prim_ud *u = check_prim(L, c);
  if (nargs > 2) mp_nargs_error(L, 2);
  mp_sem *s = u->shm;
  lua_Integer n = nargs > 1 ? luaL_optinteger(L, 2, 1) : 1;
  luaL_argcheck(L, n >= 1, 2, "n must be one or more");
  if (n > INT32_MAX || mp_sem_post(s, (uint32_t)n) != 0)
    return luaL_error(L, s->bounded ? "Semaphore released too many times" : "semaphore value overflow");
  return 0;
}

static int sem_acquire_s(lua_State *L) { return sem_acquire(L, &SEM_C); }
static int sem_acquire_b(lua_State *L) { return sem_acquire(L, &BSEM_C); }
static int sem_release_s(lua_State *L) { return sem_release(L, &SEM_C); }
static int sem_release_b(lua_State *L) { return sem_release(L, &BSEM_C); }

static int sem_get_value(lua_State *L) {
  prim_ud *u = check_sem(L);
  mp_checknargs(L, 1);
  lua_pushinteger(L, atomic_load(&((mp_sem *)u->shm)->value));
  return 1;
}

static int sem_tostring(lua_State *L) {
  prim_ud *u = check_sem(L);
  mp_sem *s = u->shm;
  if (s->bounded) lua_pushfstring(L, "BoundedSemaphore(value=%d, maxvalue=%d)", (int)atomic_load(&s->value), (int)s->max);
  else lua_pushfstring(L, "Semaphore(value=%d)", (int)atomic_load(&s->value));
  return 1;
}

/* ---- Event ------------------------------------------------------------------- */

static int core_event(lua_State *L) {
  mp_checknargs(L, 0);
  new_prim(L, &EVENT_C);
  return 1;
}

static mp_event *check_event(lua_State *L) {
  return ((prim_ud *)check_self(L, &EVENT_C))->shm;
}

static int event_set(lua_State *L) { mp_event *e = check_event(L); mp_checknargs(L, 1); mp_event_set(e); return 0; }
static int event_clear(lua_State *L) { mp_event *e = check_event(L); mp_checknargs(L, 1); mp_event_clear(e); return 0; }

static int event_is_set(lua_State *L) {
  mp_event *e = check_event(L);
  mp_checknargs(L, 1);
  lua_pushboolean(L, mp_event_is_set(e));
  return 1;
}

/* event:wait([timeout]) --> true when set (even if cleared again meanwhile), false on timeout */
static int event_wait(lua_State *L) {
  mp_event *e = check_event(L);
  mp_checknargs(L, 2);
  double deadline = mp_optdeadline(L, 2);
  uint32_t seen = mp_event_snapshot(e);
  int rc;
  while ((rc = mp_event_wait(e, seen, deadline)) == EINTR)
    mp_check_interrupt(L);
  lua_pushboolean(L, rc == 0);
  return 1;
}

static int event_tostring(lua_State *L) {
  lua_pushstring(L, mp_event_is_set(check_event(L)) ? "Event(set)" : "Event(unset)");
  return 1;
}

/* ---- Condition ------------------------------------------------------------------ */


/* Condition([lock]) or Condition{lock = l}: an mp.Lock or mp.RLock, by default a new RLock. */
static int core_condition(lua_State *L) {
  static const char *const keys[] = { "lock", NULL };
  mp_checknargs(L, 1);
  if (lua_istable(L, 1)) {
    mp_checkoptions(L, 1, "Condition", keys);
    lua_getfield(L, 1, "lock");
    lua_replace(L, 1);
  }
  if (lua_isnoneornil(L, 1)) {
    lua_settop(L, 0);
    lock_new(L, 1);
  }
  lock_ud *lock = mp_checkself(L, 1, &ANY_LOCK_C);
  cond_ud *u = new_prim(L, &COND_C);
  u->lock = lock;
  lua_pushvalue(L, 1);
  lua_setiuservalue(L, -2, 1);
  return 1;
}

static cond_ud *check_cond(lua_State *L) {
  cond_ud *u = check_self(L, &COND_C);
  if (u->lock->h.shm == NULL) collected(L, "mp.Lock");
  return u;
}

static int cond_acquire(lua_State *L) {
  cond_ud *u = check_cond(L);
  lock_ud *lk = u->lock;
  if (lua_gettop(L) == 1 && mp_mutex_tryfast(lk->h.shm)) {
    ((mp_mutex *)lk->h.shm)->count = 1;
    lua_pushboolean(L, 1);
    return 1;
  }
  return mutex_acquire(L, lk, 2);
}

static int cond_release(lua_State *L) {
  cond_ud *u = check_cond(L);
  mp_checknargs(L, 1);
  return mutex_release(L, u->lock);
}

static int cond_get_lock(lua_State *L) {
  check_cond(L);
  mp_checknargs(L, 1);
  lua_getiuservalue(L, 1, 1);
  return 1;
}

/*
** Takes the lock back after a wait, ignoring interrupts (they run later).
** Returns 1 when it had to be recovered from a dead owner.
*/
static int relock(lock_ud *lk, uint32_t depth) {
  mp_mutex *m = lk->h.shm;
  int rc;
  for (int spin = 1; (rc = mp_mutex_lock(m, INFINITY, spin)) == EINTR; spin = 0) {}
  m->count = depth;
  return rc == EOWNERDEAD;
}

/*
** cond:wait([timeout]) --> true when notified, false on timeout; plus
** "owner died" when a process died holding the lock while this one waited.
*/
static int cond_wait(lua_State *L) {
  cond_ud *u = check_cond(L);
  lock_ud *lk = u->lock;
  mp_mutex *m = lk->h.shm;
  mp_cond *c = u->h.shm;
  mp_checknargs(L, 2);
  double deadline = mp_optdeadline(L, 2);
  if (!mp_mutex_is_mine(m)) return luaL_error(L, "cannot wait on un-acquired lock");
  uint32_t depth = lk->recursive ? m->count : 1;
  uint32_t seq = mp_cond_enter(c);
  mp_mutex_unlock(m);
  int notified;
  for (;;) {
    int rc = mp_cond_wait(c, seq, deadline);
    if (rc == 0) { notified = 1; break; }
    if (rc != EINTR) { notified = mp_cond_cancel(c); break; }
    lua_pushcfunction(L, check_interrupt);
    if (lua_pcall(L, 0, 0, 0) != LUA_OK) {
      /* A handler raised (Ctrl-C): leave as Python does, holding the lock again. */
      mp_cond_cancel(c);
      relock(lk, depth);
      return lua_error(L);
    }
  }
  int died = relock(lk, depth);
  lua_pushboolean(L, notified);
  if (!died) return 1;
  lua_pushliteral(L, "owner died");
  return 2;
}

/* cond:notify([n]) --> how many waiters were woken */
static int cond_notify(lua_State *L) {
  cond_ud *u = check_cond(L);
  mp_checknargs(L, 2);
  lua_Integer n = luaL_optinteger(L, 2, 1);
  if (!mp_mutex_is_mine(u->lock->h.shm)) return luaL_error(L, "cannot notify on un-acquired lock");
  if (n <= 0) return 0;
  mp_cond_notify(u->h.shm, n > UINT32_MAX ? UINT32_MAX : (uint32_t)n);
  return 0;
}

static int cond_notify_all(lua_State *L) {
  cond_ud *u = check_cond(L);
  mp_checknargs(L, 1);
  if (!mp_mutex_is_mine(u->lock->h.shm)) return luaL_error(L, "cannot notify on un-acquired lock");
  mp_cond_notify(u->h.shm, UINT32_MAX);
  return 0;
}

static int cond_tostring(lua_State *L) {
  cond_ud *u = check_cond(L);
  mp_cond *c = u->h.shm;
  lua_pushfstring(L, "Condition(waiters=%d)", (int)atomic_load(&c->nwaiters));
  return 1;
}

/* ---- Registration ------------------------------------------------------------------ */

static void new_class(lua_State *L, const mp_class *c, const luaL_Reg *methods,
                      lua_CFunction tostring) {
  luaL_Reg meta[] = {{"__gc", prim_gc}, {"__tostring", tostring}, {NULL, NULL}};
  mp_newclass(L, c, methods, meta);
  lua_pop(L, 1);
}

void mp_sync_open(lua_State *L) {
  static const luaL_Reg lock_methods[] = {
    {"acquire", lock_acquire}, {"release", lock_release}, {"owner", lock_owner}, {NULL, NULL}
  };
  static const luaL_Reg rlock_methods[] = {
    {"acquire", rlock_acquire}, {"release", rlock_release}, {"owner", rlock_owner}, {NULL, NULL}
  };
  static const luaL_Reg event_methods[] = {
    {"set", event_set}, {"clear", event_clear}, {"is_set", event_is_set},
    {"wait", event_wait}, {NULL, NULL}
  };
  static const luaL_Reg cond_methods[] = {
    {"acquire", cond_acquire}, {"release", cond_release}, {"wait", cond_wait},
    {"notify", cond_notify}, {"notify_all", cond_notify_all},
    {"get_lock", cond_get_lock}, {NULL, NULL}
  };
  static const luaL_Reg funcs[] = {
    {"Lock", core_lock}, {"RLock", core_rlock}, {"Semaphore", core_semaphore},
    {"BoundedSemaphore", core_bounded_semaphore}, {"Event", core_event},
    {"Condition", core_condition}, {NULL, NULL}
  };
  new_class(L, &LOCK_C, lock_methods, lock_tostring);
  new_class(L, &RLOCK_C, rlock_methods, rlock_tostring);
  new_class(L, &EVENT_C, event_methods, event_tostring);
  new_class(L, &COND_C, cond_methods, cond_tostring);

  /* Semaphore and BoundedSemaphore: the same functions (each checks its own class). */
  static const luaL_Reg sem_methods[] = {
    {"acquire", sem_acquire_s}, {"release", sem_release_s}, {"get_value", sem_get_value},
    {NULL, NULL}
  };
  static const luaL_Reg bsem_methods[] = {
    {"acquire", sem_acquire_b}, {"release", sem_release_b}, {"get_value", sem_get_value},
    {NULL, NULL}
  };
  new_class(L, &SEM_C, sem_methods, sem_tostring);
  new_class(L, &BSEM_C, bsem_methods, sem_tostring);
  static const mp_class *const travelling[] = { &LOCK_C, &RLOCK_C, &SEM_C, &BSEM_C, &COND_C, &EVENT_C, NULL };
  for (int i = 0; travelling[i] != NULL; i++) mp_travel_register(travelling[i], &PRIM_TRAVEL);
  luaL_setfuncs(L, funcs, 0);
}

/*
** Binding for shared memory values: mp.Value, mp.Array, mp.RawValue,
** mp.RawArray (lua/mp/sync.lua picks the lock). The elements live in shared
** pages (shpages.h) allocated at creation, so every process forked afterwards
** reads and writes the same memory.
**
** Each single read or write of an element is one aligned load or store, atomic
** by itself, so unlike Python no lock is taken per access; `v.value = v.value
** + 1` is still a read then a write, and needs the lock (or v:add).
*/
#include <errno.h>
#include <float.h>
#include <limits.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "lshm.h"
#include "lsync.h"
#include "mp_aux.h"
#include "mp_travel.h"
#include "engine/shpages.h"
#include "engine/sync.h"

#define VALUE_T "mp.Value"
#define ARRAY_T "mp.Array"

enum { K_SIGNED, K_UNSIGNED, K_FLOAT, K_CHAR };

typedef struct typeinfo {
  char code;
  unsigned char size;
  unsigned char kind;
} typeinfo;

static const typeinfo types[] = {
  {'b', 1, K_SIGNED}, {'B', 1, K_UNSIGNED}, {'h', 2, K_SIGNED}, {'H', 2, K_UNSIGNED},
  {'i', 4, K_SIGNED}, {'I', 4, K_UNSIGNED}, {'l', sizeof(long), K_SIGNED},
  {'L', sizeof(long), K_UNSIGNED}, {'q', 8, K_SIGNED}, {'Q', 8, K_UNSIGNED},
  {'f', 4, K_FLOAT}, {'d', 8, K_FLOAT}, {'c', 1, K_CHAR}, {0, 0, 0}
};

typedef struct shared_ud {
  const mp_class *cls;        /* first: the class word (mp_aux.h) */
  char *data;                 /* NULL once collected */
  size_t n;                   /* elements (1 for a Value) */
  size_t bytes;               /* allocated size */
  uint32_t owner;             /* the creating process: only it frees */
  int imported;               /* received from another process: unimported, never freed */
  const typeinfo *t;
  const mp_shm_ud *shm;       /* a view of this SharedMemory (user value 2): never freed here */
} shared_ud;

static int shared_export(lua_State *L, int idx, mp_travel_desc *d);
static void shared_import(lua_State *L, const mp_class *c, const mp_travel_desc *d, int dep);
static const mp_travel SHARED_TRAVEL = { shared_export, shared_import };

static const mp_class VALUE_C = { VALUE_T, sizeof(shared_ud), NULL },
                      ARRAY_C = { ARRAY_T, sizeof(shared_ud), NULL };
/* get_lock and the finalizer serve both: each checks its own class (mp_upclass). */
static const typeinfo *check_typecode(lua_State *L, int arg) {
  size_t len;
  const char *s = luaL_checklstring(L, arg, &len);
  if (len == 1) {
    for (const typeinfo *t = types; t->code; t++)
      if (t->code == s[0]) return t;
  }
  luaL_argerror(L, arg, lua_pushfstring(L, "unknown typecode '%s' (expected one of bBhHiIlLqQfdc)", s));
  return NULL;
}

/* ---- Elements ------------------------------------------------------------- */

static void push_elem(lua_State *L, const typeinfo *t, const char *p) {
  switch (t->code) {
    case 'b': lua_pushinteger(L, __atomic_load_n((const int8_t *)p, __ATOMIC_RELAXED)); break;
    case 'B': lua_pushinteger(L, __atomic_load_n((const uint8_t *)p, __ATOMIC_RELAXED)); break;
    case 'h': lua_pushinteger(L, __atomic_load_n((const int16_t *)p, __ATOMIC_RELAXED)); break;
    case 'H': lua_pushinteger(L, __atomic_load_n((const uint16_t *)p, __ATOMIC_RELAXED)); break;
    case 'i': lua_pushinteger(L, __atomic_load_n((const int32_t *)p, __ATOMIC_RELAXED)); break;
    case 'I': lua_pushinteger(L, __atomic_load_n((const uint32_t *)p, __ATOMIC_RELAXED)); break;
    case 'l': case 'q':
      lua_pushinteger(L, (lua_Integer)__atomic_load_n((const int64_t *)p, __ATOMIC_RELAXED));
      break;
    case 'L': case 'Q': {
      uint64_t u = __atomic_load_n((const uint64_t *)p, __ATOMIC_RELAXED);
      /* Above Lua's integers: a float, as Lua's own unsigned conversions do. */
      if (u > (uint64_t)LUA_MAXINTEGER) lua_pushnumber(L, (lua_Number)u);
      else lua_pushinteger(L, (lua_Integer)u);
      break;
    }
    case 'f': {
      uint32_t bits = __atomic_load_n((const uint32_t *)p, __ATOMIC_RELAXED);
      float f;
      memcpy(&f, &bits, sizeof f);
      lua_pushnumber(L, f);
      break;
    }
    case 'd': {
      uint64_t bits = __atomic_load_n((const uint64_t *)p, __ATOMIC_RELAXED);
      double d;
      memcpy(&d, &bits, sizeof d);
      lua_pushnumber(L, d);
      break;
    }
    default: lua_pushlstring(L, p, 1); break;
  }
}

/*
** Converts the Lua value at `idx` to element bits in *out. Returns NULL, or a
** message (pushed on the stack) saying why it does not fit.
*/
static const char *to_bits(lua_State *L, const typeinfo *t, int idx, uint64_t *out) {
  int type = lua_type(L, idx);
  if (t->kind == K_CHAR) {
    if (type == LUA_TSTRING) {
      size_t len;
      const char *s = lua_tolstring(L, idx, &len);
      if (len != 1) return lua_pushfstring(L, "a string of length 1 expected for typecode 'c', got length %d", (int)len);
      *out = (unsigned char)s[0];
      return NULL;
    }
    if (type == LUA_TNUMBER && lua_isinteger(L, idx)) {
      lua_Integer i = lua_tointeger(L, idx);
      if (i < 0 || i > 255) return lua_pushfstring(L, "value %I out of range for typecode 'c' (0..255)", i);
      *out = (uint64_t)i;
      return NULL;
    }
    return lua_pushfstring(L, "string expected for typecode 'c', got %s", luaL_typename(L, idx));
  }
  if (type != LUA_TNUMBER) return lua_pushfstring(L, "number expected, got %s", luaL_typename(L, idx));
  if (t->kind == K_FLOAT) {
    lua_Number d = lua_tonumber(L, idx);
    if (t->size == 4) {
      /* Out of float's range is inf, as ctypes gives (and no undefined cast). */
      float f = d > FLT_MAX ? INFINITY : d < -FLT_MAX ? -INFINITY : (float)d;
      uint32_t bits;
      memcpy(&bits, &f, sizeof bits);
      *out = bits;
    } else {
      memcpy(out, &d, sizeof d);
    }
    return NULL;
  }
  int isint;
  lua_Integer i = lua_tointegerx(L, idx, &isint);
  if (!isint) {
    /* Unsigned 64-bit values above Lua's integers arrive as floats. */
    lua_Number d = lua_tonumber(L, idx);
    if (t->kind == K_UNSIGNED && t->size == 8 && d == floor(d) && d >= 0 && d < 18446744073709551616.0) {
      *out = (uint64_t)d;
      return NULL;
    }
    return lua_pushfstring(L, "number has no integer representation for typecode '%c'", t->code);
  }
  int bits = t->size * 8;
  if (t->kind == K_SIGNED) {
    if (bits < 64) {
      lua_Integer lo = -((lua_Integer)1 << (bits - 1)), hi = ((lua_Integer)1 << (bits - 1)) - 1;
      if (i < lo || i > hi)
        return lua_pushfstring(L, "value %I out of range for typecode '%c' (%I..%I)", i, t->code, lo, hi);
    }
  } else {
    lua_Integer hi = bits < 64 ? ((lua_Integer)1 << bits) - 1 : LUA_MAXINTEGER;
    if (i < 0 || i > hi) {
      if (bits < 64) return lua_pushfstring(L, "value %I out of range for typecode '%c' (0..%I)", i, t->code, hi);
      return lua_pushfstring(L, "value %I out of range for typecode '%c' (0..2^64-1)", i, t->code);
    }
  }
  *out = (uint64_t)i;
  return NULL;
}

static void store_bits(const typeinfo *t, char *p, uint64_t v) {
  switch (t->size) {
    case 1: __atomic_store_n((uint8_t *)p, (uint8_t)v, __ATOMIC_RELAXED); break;
    case 2: __atomic_store_n((uint16_t *)p, (uint16_t)v, __ATOMIC_RELAXED); break;
    case 4: __atomic_store_n((uint32_t *)p, (uint32_t)v, __ATOMIC_RELAXED); break;
    default: __atomic_store_n((uint64_t *)p, v, __ATOMIC_RELAXED); break;
  }
}

/* Stores the value at `idx`, or raises why it does not fit (as bad argument `arg` if > 0). */
static void set_elem(lua_State *L, const typeinfo *t, char *p, int idx, int arg) {
  uint64_t bits;
  const char *why = to_bits(L, t, idx, &bits);
  if (why != NULL) {
    if (arg > 0) luaL_argerror(L, arg, why);
    luaL_error(L, "%s", why);
  }
  store_bits(t, p, bits);
}

/* ---- Construction ------------------------------------------------------------ */

static shared_ud *new_shared(lua_State *L, const mp_class *c, const typeinfo *t, size_t n) {
  shared_ud *u = mp_newself(L, c, 2);      /* data NULL: safe empty state; uv 2: a view's SharedMemory */
  u->owner = mp_self_pid();
  u->t = t;
  size_t bytes = n * t->size;
  char *data = mp_shm_alloc(bytes);
  if (data == NULL) mp_raise_errno(L, errno, "cannot allocate shared memory");
  u->data = data;
  u->bytes = bytes;
  u->n = n;
  return u;
}

/* Pushes field `lock` of the options table at arg (nil when there is none). */
static const char *const lock_keys[] = { "lock", NULL };
static const char *const array_keys[] = { "lock", "shm", "offset", NULL };

static int push_lock_option(lua_State *L, int arg, const char *fname) {
  const char *const *keys = strcmp(fname, "Array") == 0 ? array_keys : lock_keys;
  if (lua_isnoneornil(L, arg)) {
    lua_pushnil(L);
    return LUA_TNIL;
  }
  luaL_checktype(L, arg, LUA_TTABLE);
  mp_checkoptions(L, arg, fname, keys);
  return lua_getfield(L, arg, "lock");
}

/*
** The options at `arg` ({lock = true | false | an mp.Lock or mp.RLock}, as
** Python's lock= keyword) for the object on top: by default a new RLock.
** `raw` (RawValue, RawArray): no lock and no options.
*/
static void set_lock(lua_State *L, int arg, int raw, const char *fname) {
  if (raw) return;
  int type = push_lock_option(L, arg, fname);
  if (type == LUA_TBOOLEAN && !lua_toboolean(L, -1)) {
    lua_pop(L, 1);
    return;
  }
  if (type == LUA_TNIL || type == LUA_TBOOLEAN) {
    lua_pop(L, 1);
    mp_sync_new_lock(L, 1);
  } else if (!mp_sync_is_lock(L, -1)) {
    luaL_argerror(L, arg, lua_pushfstring(L, "lock must be a boolean, mp.Lock or mp.RLock, got %s",
                                          luaL_typename(L, -1)));
  }
  lua_setiuservalue(L, -2, 1);
}

/* Value(typecode [, init [, {lock = ...}]]) */
static int value_new(lua_State *L, int raw) {
  if (raw && !lua_isnone(L, 3)) luaL_argerror(L, 3, "no options expected (a raw object has no lock)");
  mp_checknargs(L, 3);
  lua_settop(L, 3);
  const typeinfo *t = check_typecode(L, 1);
  shared_ud *u = new_shared(L, &VALUE_C, t, 1);
  int top = lua_gettop(L);
  if (!lua_isnoneornil(L, 2)) set_elem(L, t, u->data, 2, 2);
  lua_settop(L, top);
  set_lock(L, 3, raw, "Value");
  return 1;
}

static int core_value(lua_State *L) { return value_new(L, 0); }
static int core_raw_value(lua_State *L) { return value_new(L, 1); }

/*
** The options of Array: lock (see set_lock), shm and offset. Returns the
** SharedMemory to view (NULL for none) and sets *offset.
*/
static mp_shm_ud *array_options(lua_State *L, int arg, size_t *offset) {
  *offset = 0;
  if (lua_isnoneornil(L, arg)) return NULL;
  luaL_checktype(L, arg, LUA_TTABLE);
  mp_checkoptions(L, arg, "Array", array_keys);
  lua_getfield(L, arg, "shm");
  mp_shm_ud *sm = NULL;
  if (!lua_isnil(L, -1)) {
    sm = mp_shm_test(L, -1);
    if (sm == NULL) luaL_argerror(L, arg, lua_pushfstring(L, "shm must be a SharedMemory, got %s", luaL_typename(L, -1)));
    if (sm->closed) luaL_argerror(L, arg, "the SharedMemory is closed");
  }
  lua_pop(L, 1);
  lua_getfield(L, arg, "offset");
  if (!lua_isnil(L, -1)) {
    int isint;
    lua_Integer off = lua_tointegerx(L, -1, &isint);
    if (sm == NULL) luaL_argerror(L, arg, "offset needs shm");
    if (!isint || off < 0) luaL_argerror(L, arg, "offset must be a non-negative integer (bytes)");
    *offset = (size_t)off;
  }
  lua_pop(L, 1);
  return sm;
}

/*
** A typed view of n elements of SharedMemory sm (at stack index smidx) from
** byte `offset`: the elements are the segment's bytes, which another process
** attaching by name sees; the view keeps sm alive (user value 2), never frees
** the bytes, and raises once sm is closed (see check_shared).
*/
static shared_ud *new_view(lua_State *L, const typeinfo *t, size_t n, mp_shm_ud *sm, int smidx, size_t offset) {
  if (offset % t->size != 0)
    luaL_error(L, "offset %I is not a multiple of the element size (%d for typecode '%c')",
               (lua_Integer)offset, (int)t->size, t->code);
  if (offset > sm->size || n > (sm->size - offset) / t->size)
    luaL_error(L, "%I elements of typecode '%c' from offset %I do not fit SharedMemory '%s' (%I bytes)",
               (lua_Integer)n, t->code, (lua_Integer)offset, sm->name, (lua_Integer)sm->size);
  shared_ud *u = mp_newself(L, &ARRAY_C, 2);
  u->t = t;
  u->shm = sm;
  lua_pushvalue(L, smidx);
  lua_setiuservalue(L, -2, 2);
  u->data = sm->base + offset;
  u->n = n;
  u->owner = 0;                     /* nobody frees: the SharedMemory owns the bytes */
  return u;
}

/* Array(typecode, size_or_initializer [, {lock = ..., shm = sm, offset = bytes}]) */
static int array_new(lua_State *L, int raw) {
  if (raw && !lua_isnone(L, 3)) luaL_argerror(L, 3, "no options expected (a raw object has no lock)");
  mp_checknargs(L, 3);
  lua_settop(L, 3);
  const typeinfo *t = check_typecode(L, 1);
  size_t offset;
  mp_shm_ud *sm = raw ? NULL : array_options(L, 3, &offset);
  size_t n;
  int type = lua_type(L, 2);
  if (type == LUA_TNUMBER) {
    int isint;
    lua_Integer size = lua_tointegerx(L, 2, &isint);
    luaL_argcheck(L, isint && size >= 0, 2, "array size must be a non-negative integer");
    luaL_argcheck(L, (lua_Unsigned)size <= (SIZE_MAX / 2) / t->size, 2, "array size too large");
    n = (size_t)size;
  } else if (type == LUA_TTABLE) {
    n = (size_t)luaL_len(L, 2);
  } else if (type == LUA_TSTRING && t->kind == K_CHAR) {
    n = lua_rawlen(L, 2);
  } else {
    return luaL_typeerror(L, 2, t->kind == K_CHAR ? "size, table or string" : "size or table");
  }
  shared_ud *u;
  if (sm != NULL) {
    lua_getfield(L, 3, "shm");
    u = new_view(L, t, n, sm, lua_gettop(L), offset);
    lua_remove(L, -2);
  } else {
    u = new_shared(L, &ARRAY_C, t, n);
  }
  if (type == LUA_TTABLE) {
    for (size_t i = 0; i < n; i++) {
      lua_geti(L, 2, (lua_Integer)i + 1);
      uint64_t bits;
      const char *why = to_bits(L, t, -1, &bits);
      if (why != NULL)
        return luaL_argerror(L, 2, lua_pushfstring(L, "element %d: %s", (int)i + 1, why));
      store_bits(t, u->data + i * t->size, bits);
      lua_pop(L, 1);
    }
  } else if (type == LUA_TSTRING) {
    memcpy(u->data, lua_tostring(L, 2), n);
  }
  /* A view has no lock unless asked for: a new lock would not be shared with
  ** the processes that attach by name. */
  int want_lock = 1;
  if (sm != NULL) {
    lua_getfield(L, 3, "lock");
    want_lock = !lua_isnil(L, -1);
    lua_pop(L, 1);
  }
  if (want_lock) set_lock(L, 3, raw, "Array");
  return 1;
}

static int core_array(lua_State *L) { return array_new(L, 0); }
static int core_raw_array(lua_State *L) { return array_new(L, 1); }

/*
** Travelling (mp_travel.h): the elements' block in the shared pages (the fd
** of its region, its offset), the typecode and the count; the lock goes
** along (or nil for a raw one). See lsync.c for the lifetime rule. A view of
** a SharedMemory does not travel: the segment has a name for that.
*/
static int shared_export(lua_State *L, int idx, mp_travel_desc *d) {
  shared_ud *u = lua_touserdata(L, idx);
  if (u->shm != NULL)
    luaL_error(L, "cannot send an %s that views a SharedMemory: send the segment's name "
               "and make the view in the other process", u->cls->tname);
  int fd;
  size_t len, off;
  if (u->data == NULL || mp_shm_export(u->data, &fd, &len, &off) != 0)
    luaL_error(L, "cannot send an %s: its memory is gone", u->cls->tname);
  mp_travel_put(d, len);
  mp_travel_put(d, off);
  mp_travel_put(d, (uint64_t)(unsigned char)u->t->code);
  mp_travel_put(d, u->n);
  d->fds[d->nfds++] = fd;
  lua_getiuservalue(L, idx, 1);
  return 1;
}

static void shared_import(lua_State *L, const mp_class *c, const mp_travel_desc *d, int dep) {
  size_t pos = 0;
  uint64_t len = mp_travel_get(L, d, &pos), off = mp_travel_get(L, d, &pos);
  uint64_t code = mp_travel_get(L, d, &pos), n = mp_travel_get(L, d, &pos);
  const typeinfo *t = NULL;
  for (const typeinfo *k = types; k->code; k++)
    if ((uint64_t)(unsigned char)k->code == code) t = k;
  if (d->nfds != 1 || !dep || t == NULL || (c == &VALUE_C && n != 1) || n > (SIZE_MAX / 2) / t->size ||
      (!lua_isnil(L, -1) && !mp_sync_is_lock(L, -1)))
    luaL_error(L, "mp.loads: corrupt %s description", c->tname);
  shared_ud *u = mp_newself(L, c, 2);          /* data NULL: safe empty state */
  u->t = t;
  int fd = mp_travel_dup(L, d->fds[0]);
  void *p;
  int err = mp_shm_import(fd, (size_t)len, (size_t)off, (size_t)n * t->size, &p);   /* takes fd */
  if (err) mp_raise_errno(L, err, "cannot receive a shared value");
  u->data = p;
  u->n = (size_t)n;
  u->bytes = (size_t)n * t->size;
  u->imported = 1;
  lua_pushvalue(L, -2);
  lua_setiuservalue(L, -2, 1);
  lua_remove(L, -2);                           /* the lock (or nil): user value 1 */
}

static int shared_gc(lua_State *L) {
  shared_ud *u = mp_checkself(L, 1, mp_upclass(L));
  if (u->data != NULL) {
    if (u->imported) mp_shm_unimport(u->data);
    else if (u->shm == NULL && u->owner == mp_self_pid()) mp_shm_free(u->data, u->bytes);
    u->data = NULL;
    u->n = 0;
  }
  return 0;
}

static int shared_get_lock(lua_State *L) {
  shared_ud *u = mp_checkself(L, 1, mp_upclass(L));
  mp_checknargs(L, 1);
  if (lua_getiuservalue(L, 1, 1) == LUA_TNIL)
    return luaL_error(L, "this %s has no lock (it was created with lock = false)",
                      u->cls == &VALUE_C ? "Value" : "Array");
  return 1;
}

/* ---- Value ------------------------------------------------------------------- */

/* The object at argument 1 when its class is `c`, else a type error. */
static inline shared_ud *check_shared(lua_State *L, const mp_class *c) {
  shared_ud *u = mp_checkself(L, 1, c);
  if (u->data == NULL) luaL_error(L, "%s is collected", c->tname);
  if (u->shm != NULL && u->shm->closed)
    luaL_error(L, "the SharedMemory '%s' this Array views is closed", u->shm->name);
  return u;
}

static shared_ud *check_value(lua_State *L) { return check_shared(L, &VALUE_C); }

/*
** __index: upvalue 1 is the methods table, where "value" maps to false. One
** raw lookup serves both a method (returned as is) and `.value` (the false
** marker), and a method lookup touches no object memory, so only `.value`
** pays for the type check.
*/
static int value_index(lua_State *L) {
  lua_settop(L, 2);
  if (lua_rawget(L, lua_upvalueindex(1)) == LUA_TBOOLEAN) {
    shared_ud *u = check_value(L);
    push_elem(L, u->t, u->data);
  }
  return 1;
}

static int value_newindex(lua_State *L) {
  shared_ud *u = check_value(L);
  size_t len;
  const char *k = lua_tolstring(L, 2, &len);
  if (k == NULL || len != 5 || memcmp(k, "value", 5) != 0)
    return luaL_error(L, "cannot set field '%s' of a Value (only 'value')", k ? k : luaL_typename(L, 2));
  set_elem(L, u->t, u->data, 3, 0);
  return 0;
}

static const typeinfo *check_integer_value(lua_State *L, shared_ud *u, const char *what) {
  const typeinfo *t = u->t;
  if (t->kind != K_SIGNED && t->kind != K_UNSIGNED)
    luaL_error(L, "%s needs an integer typecode, this Value is '%c'", what, t->code);
  return t;
}

/*
** v:add(n) --> the new value. One atomic fetch-add; the result wraps around
** like C. The addend itself must fit the type (for an unsigned type, either
** sign: add(-1) decrements), so that add(2^32) on an 'i' is an error instead
** of adding 2^32 mod 2^32 = 0.
*/
static int value_add(lua_State *L) {
  shared_ud *u = check_value(L);
  const typeinfo *t = check_integer_value(L, u, "add");
  mp_checknargs(L, 2);
  lua_Integer n = luaL_checkinteger(L, 2);
  if (t->size < 8) {
    int bits = t->size * 8;
    lua_Integer lo, hi;
    if (t->kind == K_SIGNED) { lo = -((lua_Integer)1 << (bits - 1)); hi = ((lua_Integer)1 << (bits - 1)) - 1; }
    else { hi = ((lua_Integer)1 << bits) - 1; lo = -hi; }
    if (n < lo || n > hi)
      return luaL_argerror(L, 2, lua_pushfstring(L, "addend %I out of range for typecode '%c' (%I..%I)",
                                                 n, t->code, lo, hi));
  }
  char *p = u->data;
  switch (t->code) {
    case 'b': lua_pushinteger(L, (int8_t)__atomic_add_fetch((uint8_t *)p, (uint8_t)n, __ATOMIC_SEQ_CST)); break;
    case 'B': lua_pushinteger(L, __atomic_add_fetch((uint8_t *)p, (uint8_t)n, __ATOMIC_SEQ_CST)); break;
    case 'h': lua_pushinteger(L, (int16_t)__atomic_add_fetch((uint16_t *)p, (uint16_t)n, __ATOMIC_SEQ_CST)); break;
    case 'H': lua_pushinteger(L, __atomic_add_fetch((uint16_t *)p, (uint16_t)n, __ATOMIC_SEQ_CST)); break;
    case 'i': lua_pushinteger(L, (int32_t)__atomic_add_fetch((uint32_t *)p, (uint32_t)n, __ATOMIC_SEQ_CST)); break;
    case 'I': lua_pushinteger(L, __atomic_add_fetch((uint32_t *)p, (uint32_t)n, __ATOMIC_SEQ_CST)); break;
    default: {
      uint64_t r = __atomic_add_fetch((uint64_t *)p, (uint64_t)n, __ATOMIC_SEQ_CST);
      if (t->kind == K_SIGNED || r <= (uint64_t)LUA_MAXINTEGER) lua_pushinteger(L, (lua_Integer)r);
      else lua_pushnumber(L, (lua_Number)r);
    }
  }
  return 1;
}

/* v:compare_and_swap(old, new) --> true | false, current */
static int value_compare_and_swap(lua_State *L) {
  shared_ud *u = check_value(L);
  const typeinfo *t = check_integer_value(L, u, "compare_and_swap");
  mp_checknargs(L, 3);
  uint64_t expected, desired;
  const char *why = to_bits(L, t, 3, &desired);
  if (why != NULL) return luaL_argerror(L, 3, why);
  if (to_bits(L, t, 2, &expected) != NULL) {     /* cannot be the current value */
    lua_pushboolean(L, 0);
    push_elem(L, t, u->data);
    return 2;
  }
  int ok;
  char *p = u->data;
  switch (t->size) {
    case 1: { uint8_t e = (uint8_t)expected; ok = __atomic_compare_exchange_n((uint8_t *)p, &e, (uint8_t)desired, 0, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST); break; }
    case 2: { uint16_t e = (uint16_t)expected; ok = __atomic_compare_exchange_n((uint16_t *)p, &e, (uint16_t)desired, 0, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST); break; }
    case 4: { uint32_t e = (uint32_t)expected; ok = __atomic_compare_exchange_n((uint32_t *)p, &e, (uint32_t)desired, 0, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST); break; }
    default: { uint64_t e = expected; ok = __atomic_compare_exchange_n((uint64_t *)p, &e, desired, 0, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST); break; }
  }
  lua_pushboolean(L, ok);
  if (ok) return 1;
  push_elem(L, t, p);
  return 2;
}

static int value_tostring(lua_State *L) {
  shared_ud *u = check_value(L);
  luaL_Buffer b;
  luaL_buffinit(L, &b);
  lua_pushfstring(L, "Value('%c', ", u->t->code);
  luaL_addvalue(&b);
  push_elem(L, u->t, u->data);
  if (u->t->kind == K_CHAR) {
    /* The byte as a Lua string literal, "\ddd" for anything but printable
    ** ASCII (lua_pushfstring has no %q). */
    unsigned char ch = (unsigned char)u->data[0];
    lua_pop(L, 1);
    if (ch >= 32 && ch < 127 && ch != '"' && ch != '\\') lua_pushfstring(L, "\"%c\"", (int)ch);
    else if (ch == '\n') lua_pushliteral(L, "\"\\n\"");
    else lua_pushfstring(L, "\"\\%d\"", (int)ch);
  } else {
    luaL_tolstring(L, -1, NULL);
    lua_remove(L, -2);
  }
  luaL_addvalue(&b);
  luaL_addchar(&b, ')');
  luaL_pushresult(&b);
  return 1;
}

/* ---- Array -------------------------------------------------------------------- */

static shared_ud *check_array(lua_State *L) { return check_shared(L, &ARRAY_C); }

static size_t check_index(lua_State *L, shared_ud *u) {
  int isint;
  lua_Integer i = lua_tointegerx(L, 2, &isint);
  if (!isint) luaL_error(L, "array index must be an integer, got %s", luaL_typename(L, 2));
  if (i < 1 || (lua_Unsigned)i > u->n)
    luaL_error(L, "array index %I out of range (1..%I)", i, (lua_Integer)u->n);
  return (size_t)(i - 1);
}

/* A 'c' array's .value: its bytes up to the first NUL (Python's c_char array). */
static size_t char_len(shared_ud *u) {
  const char *nul = memchr(u->data, 0, u->n);
  return nul ? (size_t)(nul - u->data) : u->n;
}

static int array_index(lua_State *L) {
  shared_ud *u = check_array(L);
  if (lua_type(L, 2) == LUA_TSTRING) {
    const char *k = lua_tostring(L, 2);
    if (u->t->kind == K_CHAR && strcmp(k, "value") == 0) {
      lua_pushlstring(L, u->data, char_len(u));
      return 1;
    }
    if (u->t->kind == K_CHAR && strcmp(k, "raw") == 0) {
      lua_pushlstring(L, u->data, u->n);
      return 1;
    }
    lua_pushvalue(L, 2);
    lua_rawget(L, lua_upvalueindex(1));
    return 1;
  }
  size_t i = check_index(L, u);
  push_elem(L, u->t, u->data + i * u->t->size);
  return 1;
}

static int array_newindex(lua_State *L) {
  shared_ud *u = check_array(L);
  if (lua_type(L, 2) == LUA_TSTRING && u->t->kind == K_CHAR) {
    const char *k = lua_tostring(L, 2);
    int raw = strcmp(k, "raw") == 0;
    if (raw || strcmp(k, "value") == 0) {
      size_t len;
      const char *s = luaL_checklstring(L, 3, &len);
      if (len > u->n) return luaL_error(L, "string of %I bytes too long for an Array of %I", (lua_Integer)len, (lua_Integer)u->n);
      if (raw && len != u->n) return luaL_error(L, "raw needs exactly %I bytes, got %I", (lua_Integer)u->n, (lua_Integer)len);
      memcpy(u->data, s, len);
      if (len < u->n) u->data[len] = '\0';
      return 0;
    }
  }
  if (lua_type(L, 2) == LUA_TSTRING)
    return luaL_error(L, "cannot set field '%s' of an Array", lua_tostring(L, 2));
  size_t i = check_index(L, u);
  set_elem(L, u->t, u->data + i * u->t->size, 3, 0);
  return 0;
}

static int array_len(lua_State *L) {
  shared_ud *u = check_array(L);
  lua_pushinteger(L, (lua_Integer)u->n);
  return 1;
}

static int array_tolist(lua_State *L) {
  shared_ud *u = check_array(L);
  mp_checknargs(L, 1);
  lua_createtable(L, u->n > INT_MAX ? INT_MAX : (int)u->n, 0);
  for (size_t i = 0; i < u->n; i++) {
    push_elem(L, u->t, u->data + i * u->t->size);
    lua_rawseti(L, -2, (lua_Integer)i + 1);
  }
  return 1;
}

static int array_next(lua_State *L) {
  shared_ud *u = check_array(L);
  lua_Integer i = luaL_optinteger(L, 2, 0) + 1;
  if (i < 1 || (lua_Unsigned)i > u->n) return 0;
  lua_pushinteger(L, i);
  push_elem(L, u->t, u->data + (i - 1) * u->t->size);
  return 2;
}

/* pairs(a): 1..#a in order (indexing past the end is an error, so ipairs stops there). */
static int array_pairs(lua_State *L) {
  check_array(L);
  lua_pushcfunction(L, array_next);
  lua_pushvalue(L, 1);
  lua_pushnil(L);
  return 3;
}

static int array_tostring(lua_State *L) {
  shared_ud *u = check_array(L);
  lua_pushfstring(L, "Array('%c', %I)", u->t->code, (lua_Integer)u->n);
  return 1;
}

/* ---- Registration ---------------------------------------------------------------- */

/* A class whose __index is a C function with the methods table as upvalue 1. */
static void new_class(lua_State *L, const mp_class *c, const luaL_Reg *methods,
                      const luaL_Reg *metamethods, lua_CFunction index) {
  mp_newclass(L, c, methods, metamethods);
  lua_getfield(L, -1, "__index");
  lua_pushvalue(L, -1);
  lua_setfield(L, -3, "methods");   /* for the Lua half to add methods */
  lua_pushcclosure(L, index, 1);
  lua_setfield(L, -2, "__index");
  lua_pop(L, 1);
}

void mp_shared_open(lua_State *L) {
  static const luaL_Reg value_methods[] = {
    {"get_lock", shared_get_lock}, {"add", value_add},
    {"compare_and_swap", value_compare_and_swap}, {NULL, NULL}
  };
  static const luaL_Reg value_meta[] = {
    {"__newindex", value_newindex}, {"__gc", shared_gc}, {"__tostring", value_tostring},
    {NULL, NULL}
  };
  static const luaL_Reg array_methods[] = {
    {"get_lock", shared_get_lock}, {"tolist", array_tolist}, {NULL, NULL}
  };
  static const luaL_Reg array_meta[] = {
    {"__newindex", array_newindex}, {"__len", array_len}, {"__pairs", array_pairs},
    {"__gc", shared_gc}, {"__tostring", array_tostring}, {NULL, NULL}
  };
  static const luaL_Reg funcs[] = {
    {"Value", core_value}, {"Array", core_array}, {"RawValue", core_raw_value},
    {"RawArray", core_raw_array}, {NULL, NULL}
  };
  new_class(L, &VALUE_C, value_methods, value_meta, value_index);
  luaL_getmetatable(L, VALUE_T);
  lua_getfield(L, -1, "methods");
  lua_pushboolean(L, 0);
  lua_setfield(L, -2, "value");     /* the marker value_index looks for */
  lua_pop(L, 2);
  new_class(L, &ARRAY_C, array_methods, array_meta, array_index);
  mp_travel_register(&VALUE_C, &SHARED_TRAVEL);
  mp_travel_register(&ARRAY_C, &SHARED_TRAVEL);
  luaL_setfuncs(L, funcs, 0);
}

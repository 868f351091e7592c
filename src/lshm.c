/*
** Binding for mp.SharedMemory (engine/nshm.c): Python's
** multiprocessing.shared_memory.SharedMemory with Lua's 1-based positions.
**   mp.SharedMemory{name =, size =, create =}  or  mp.SharedMemory(name, create, size)
**   sm:read(i, n) --> string     sm:write(i, s)     sm.size  sm.name
**   sm:close() (unmaps; also __close and __gc)      sm:unlink() (removes the name)
** Without a name, create makes one: "psm_<pid>_<8 hex digits>" (Python's are
** "psm_<8 hex digits>"; the pid says which process made a segment left behind).
*/
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>

#include "lshm.h"
#include "mp_aux.h"
#include "engine/identity.h"
#include "engine/nshm.h"
#include "engine/siphash.h"

#define SHM_T "mp.SharedMemory"

static const mp_class SHM_C = { SHM_T, sizeof(mp_shm_ud), NULL };

mp_shm_ud *mp_shm_test(lua_State *L, int idx) {
  return mp_testself(L, idx, &SHM_C);
}

static mp_shm_ud *check_open(lua_State *L) {
  mp_shm_ud *u = mp_checkself(L, 1, &SHM_C);
  if (u->closed) luaL_error(L, "SharedMemory '%s' is closed", u->name);
  return u;
}

/* Checks a name given by the caller; a leading '/' is allowed and dropped (as Python). */
static const char *check_name(lua_State *L, int arg, const char *s) {
  if (s[0] == '/') s++;
  size_t len = strlen(s);
  if (len == 0 || len > 250) luaL_argerror(L, arg, "name must be 1 to 250 characters long");
  if (strchr(s, '/') != NULL) luaL_argerror(L, arg, "name must not contain '/' (except a leading one)");
  return s;
}

static const char *const options[] = { "name", "create", "size", NULL };

static int core_shared_memory(lua_State *L) {
  if (lua_istable(L, 1)) {
    mp_checknargs(L, 1);
    mp_checkoptions(L, 1, "SharedMemory", options);
    lua_getfield(L, 1, "name");
    lua_getfield(L, 1, "create");
    lua_getfield(L, 1, "size");
    lua_replace(L, 1);              /* (size?) rearranged below: name, create, size at 1..3 */
    lua_settop(L, 3);
    lua_rotate(L, 1, -1);           /* name, create, size */
  }
  mp_checknargs(L, 3);
  lua_settop(L, 3);
  const char *name = NULL;
  if (!lua_isnil(L, 1)) {
    if (lua_type(L, 1) != LUA_TSTRING) return luaL_typeerror(L, 1, "string (name)");
    name = check_name(L, 1, lua_tostring(L, 1));
  }
  int create = lua_toboolean(L, 2);
  lua_Integer size = 0;
  if (!lua_isnil(L, 3)) {
    int isint;
    size = lua_tointegerx(L, 3, &isint);
    if (!isint) return luaL_typeerror(L, 3, "integer (size)");
    luaL_argcheck(L, size >= 0, 3, "size must not be negative");
  }
  if (create && size <= 0) return luaL_argerror(L, 3, "size must be a positive number of bytes to create");
  if (!create && name == NULL) return luaL_argerror(L, 1, "a name is needed to attach (create = false)");
  mp_shm_ud *u = mp_newself(L, &SHM_C, 0);
  u->closed = 1;                     /* until mapped: safe empty state */
  void *base = NULL;
  size_t got = 0;
  int err;
  if (create) {
    if (name != NULL) {
      snprintf(u->name, sizeof u->name, "%s", name);
      err = mp_nshm_create(u->name, (size_t)size, &base);
    } else {
      int tries = 0;
      do {
        unsigned char r[4];
        if ((err = mp_random_bytes(r, sizeof r)) != 0) break;
        snprintf(u->name, sizeof u->name, "psm_%u_%02x%02x%02x%02x", (unsigned)mp_self_pid(), r[0], r[1], r[2], r[3]);
        err = mp_nshm_create(u->name, (size_t)size, &base);
      } while (err == EEXIST && ++tries < 100);
    }
    got = (size_t)size;
  } else {
    snprintf(u->name, sizeof u->name, "%s", name);
    err = mp_nshm_attach(u->name, &base, &got);
    if (err == 0 && size > 0 && (size_t)size > got) {
      mp_nshm_unmap(base, got);
      return luaL_error(L, "SharedMemory '%s' has %I bytes, fewer than the %I asked for",
                        u->name, (lua_Integer)got, size);
    }
  }
  if (err == EEXIST) return luaL_error(L, "SharedMemory '%s' already exists", u->name);
  if (err == ENOENT) return luaL_error(L, "no SharedMemory named '%s'", u->name);
  if (err) return luaL_error(L, "SharedMemory '%s': %s", u->name, strerror(err));
  u->base = base;
  u->size = got;
  u->closed = 0;
  return 1;
}

/* The 0-based offset of 1-based position i for n bytes, checked against the size. */
static size_t check_range(lua_State *L, mp_shm_ud *u, lua_Integer i, size_t n, int arg) {
  if (i < 1 || (lua_Unsigned)(i - 1) > u->size)
    luaL_argerror(L, arg, lua_pushfstring(L, "position %I out of range (1..%I)", i, (lua_Integer)u->size + 1));
  size_t off = (size_t)(i - 1);
  if (n > u->size - off)
    luaL_error(L, "%I bytes from position %I go past the end of SharedMemory '%s' (%I bytes)",
               (lua_Integer)n, i, u->name, (lua_Integer)u->size);
  return off;
}

/* sm:read([i [, n]]) --> n bytes from position i (default: all of it from i) */
static int shm_read(lua_State *L) {
  mp_shm_ud *u = check_open(L);
  mp_checknargs(L, 3);
  lua_Integer i = luaL_optinteger(L, 2, 1);
  lua_Integer n;
  if (lua_isnoneornil(L, 3)) {
    n = (i >= 1 && (lua_Unsigned)(i - 1) <= u->size) ? (lua_Integer)u->size - (i - 1) : 0;
  } else {
    n = luaL_checkinteger(L, 3);
    luaL_argcheck(L, n >= 0, 3, "length must not be negative");
  }
  size_t off = check_range(L, u, i, (size_t)n, 2);
  lua_pushlstring(L, n > 0 ? u->base + off : "", (size_t)n);
  return 1;
}

/* sm:write(i, s): copies s to position i. */
static int shm_write(lua_State *L) {
  mp_shm_ud *u = check_open(L);
  mp_checknargs(L, 3);
  lua_Integer i = luaL_checkinteger(L, 2);
  size_t len;
  const char *s = luaL_checklstring(L, 3, &len);
  size_t off = check_range(L, u, i, len, 2);
  if (len > 0) memcpy(u->base + off, s, len);
  return 0;
}

/* __close (which also gets the error) and __gc: unmaps this process's view. Never unlinks. */
static int shm_gc(lua_State *L) {
  mp_shm_ud *u = mp_checkself(L, 1, &SHM_C);
  if (!u->closed) mp_nshm_unmap(u->base, u->size);
  u->base = NULL;
  u->closed = 1;
  return 0;
}

/* sm:close() */
static int shm_close(lua_State *L) {
  mp_checkself(L, 1, &SHM_C);
  mp_checknargs(L, 1);
  return shm_gc(L);
}

static int shm_unlink(lua_State *L) {
  mp_shm_ud *u = mp_checkself(L, 1, &SHM_C);
  mp_checknargs(L, 1);
  int err = mp_nshm_unlink(u->name);
  if (err == ENOENT) return luaL_error(L, "no SharedMemory named '%s' (already unlinked?)", u->name);
  if (err) return luaL_error(L, "cannot unlink SharedMemory '%s': %s", u->name, strerror(err));
  return 0;
}

static int shm_index(lua_State *L) {
  mp_shm_ud *u = mp_checkself(L, 1, &SHM_C);
  const char *k = lua_tostring(L, 2);
  if (k != NULL && strcmp(k, "name") == 0) { lua_pushstring(L, u->name); return 1; }
  if (k != NULL && strcmp(k, "size") == 0) { lua_pushinteger(L, (lua_Integer)u->size); return 1; }
  if (k != NULL && strcmp(k, "closed") == 0) { lua_pushboolean(L, u->closed); return 1; }
  lua_pushvalue(L, 2);
  lua_rawget(L, lua_upvalueindex(1));
  return 1;
}

static int shm_tostring(lua_State *L) {
  mp_shm_ud *u = mp_checkself(L, 1, &SHM_C);
  lua_pushfstring(L, "SharedMemory('%s', size=%I%s)", u->name, (lua_Integer)u->size, u->closed ? ", closed" : "");
  return 1;
}

void mp_shm_open(lua_State *L) {
  static const luaL_Reg methods[] = {
    {"read", shm_read}, {"write", shm_write}, {"close", shm_close}, {"unlink", shm_unlink},
    {NULL, NULL}
  };
  static const luaL_Reg meta[] = {
    {"__gc", shm_gc}, {"__close", shm_gc}, {"__tostring", shm_tostring}, {NULL, NULL}
  };
  mp_newclass(L, &SHM_C, methods, meta);
  lua_getfield(L, -1, "__index");           /* the methods table, as upvalue 1 */
  lua_pushcclosure(L, shm_index, 1);
  lua_setfield(L, -2, "__index");
  lua_pop(L, 1);
  lua_pushcfunction(L, core_shared_memory);
  lua_setfield(L, -2, "SharedMemory");
}

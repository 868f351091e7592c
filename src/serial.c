/*
** The value serializer (see serial.h and docs/serialization.md).
**
** Wire format, little-endian, fixed layout:
**   message  = version:u8  count  value*count
**   count    = u8 (0..254) | 0xFF u32
**   value    = tag:u8 payload
** Tags and payloads are listed with the enum below. An object (table or Lua
** function) is identified by the offset of its tag byte from the start of the
** message. The encoder sets the SHARED bit of that tag when a later REF or
** UPJOIN points at it, so the decoder remembers only the objects that are
** referenced again and a plain tree needs no bookkeeping on either side.
**
** Per-state data (no C globals) hangs off one userdata in the registry: the
** scratch buffer, the bytecode MAC key, the encoder's object memo and the
** decoder's key cache in C, and, in its user values, the Lua-side caches.
**
** Speed. Through the public API, a message costs a few Lua API calls per
** element (lua_next, key checks, type tests, pops), more than pickle spends
** per element. So:
** - on Lua 5.4 the encoder reads tables straight from Lua's own structures,
**   after a self-test of their layout (see "Tables: reading Lua 5.4's
**   layout" below); elsewhere it walks them with lua_next;
** - the encoder's memo of objects already sent is a C hash map keyed by
**   address (no Lua table insert and clear per message);
** - the decoder builds an array with one OP_SETLIST (build_array) instead of
**   one lua_rawseti per element, and pushes string keys from a small cache of
**   interned strings (key_at) instead of hashing and interning them again.
** bench/NOTES.md keeps the measurements behind each of these.
*/
#include <limits.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <lauxlib.h>

#include "mp_travel.h"
#include "serial.h"
#include "engine/siphash.h"

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "the wire format is little-endian; add byte swapping for this host"
#endif

/*
** Version 2 added T_ENV. A decoder accepts only its own version: a message is
** read by the same build of mplua that wrote it (forks of one binary), so there
** is nothing to gain from reading old formats and much to lose from guessing.
*/
#define FORMAT_VERSION 2
#define MAX_DEPTH 200          /* nested tables and functions */
#define MAC_LEN 8              /* SipHash-2-4 tag after the bytecode */
#define SCRATCH_KEEP (16u << 20)   /* a larger scratch buffer is freed on reuse */

enum {
  T_NIL,       /* - */
  T_FALSE,     /* - */
  T_TRUE,      /* - */
  T_INT8,      /* i8 */
  T_INT32,     /* i32 */
  T_INT64,     /* i64 */
  T_FLOAT,     /* f64 (IEEE 754 bits) */
  T_STR8,      /* len:u8 bytes */
  T_STR32,     /* len:u32 bytes */
  T_STR64,     /* len:u64 bytes */
  T_TABLE,     /* narr:u32 nhash:u32 value*narr (key value)*nhash */
  T_CLASS,     /* namelen:u8 name narr:u32 nhash:u32 ... (metatable by name) */
  T_FUNC,      /* codelen:u32 bytecode+mac nups:u8 upvalue*nups */
  T_REF,       /* offset:u64 of an earlier table or function */
  T_UPJOIN,    /* offset:u64 idx:u8: shares upvalue idx of that function (upvalues only) */
  T_GLOBALS,   /* - : the receiving state's global table */
  T_MODULE,    /* len:u32 name: package.loaded[name] */
  T_FIELD,     /* len:u32 name len:u32 field: package.loaded[name][field] */
  T_ENV,       /* id:u64: an exported environment, else the globals (upvalues only) */
  T_OBJECT     /* namelen:u8 name desclen:u8 desc nfds:u8 fdindex:u32*nfds dep:u8 [value]:
                  an mp object (mp_travel.h), its fds in the message's fd list */
};
#define T_SHARED 0x80

/* Registry key of the per-state userdata; its address is the key. */
static const char state_key = 0;

/* User values of the state userdata. */
enum {
  UV_FCACHE = 1,     /* function -> bytecode..mac (weak keys) */
  UV_NAMES,          /* value -> encoded T_MODULE/T_FIELD record */
  UV_CLASS_BY_MT,    /* metatable -> class name */
  UV_CLASS_BY_NAME,  /* class name -> metatable */
  UV_KEYS,           /* KEY_CACHE strings, held for key_at */
  UV_BUILD,          /* the thread build_array runs its constructor on */
  UV_ENV_IDS,        /* environment table -> id (weak keys) */
  UV_ENV_BY_ID,      /* id -> environment table (weak values) */
  UV_COUNT = UV_ENV_BY_ID
};

/* ------------------------------------------------------------------------ */
/* A map from addresses to integers, in C                                    */

/*
** Open addressing with linear probing. Entries carry the generation they were
** written in, so emptying the map for the next message is one increment: the
** encoder's memo costs no Lua table insert per object and no clearing walk.
** Keys are addresses of live objects (tables, closures, upvalues) reachable
** from the values being encoded, so no two live keys are equal.
*/
typedef struct pm_slot {
  const void *key;
  uint64_t val;
  uint32_t gen;
} pm_slot;

typedef struct ptrmap {
  pm_slot *slot;
  size_t mask;       /* capacity - 1; capacity a power of two, or 0 slots */
  size_t used;       /* entries of the current generation */
  uint32_t gen;
} ptrmap;

#define PM_KEEP 4096   /* a larger map is freed when emptied: don't hold a huge message's memo */

static inline size_t pm_hash(const void *key, size_t mask) {
  uint64_t h = (uint64_t)(uintptr_t)key;
  h = (h ^ (h >> 29)) * 0x9E3779B97F4A7C15ull;
  return (size_t)(h >> 32) & mask;
}

static void pm_free(ptrmap *m) {
  free(m->slot);
  m->slot = NULL;
  m->mask = m->used = 0;
}

/* Empties the map. */
static void pm_reset(ptrmap *m) {
  if (m->slot != NULL && m->mask + 1 > PM_KEEP) pm_free(m);
  m->used = 0;
  if (++m->gen == 0) {                    /* wrapped: old stamps would look current */
    if (m->slot != NULL) memset(m->slot, 0, (m->mask + 1) * sizeof *m->slot);
    m->gen = 1;
  }
}

static inline pm_slot *pm_find(const ptrmap *m, const void *key) {
  if (m->slot == NULL) return NULL;
  for (size_t i = pm_hash(key, m->mask);; i = (i + 1) & m->mask) {
    pm_slot *s = &m->slot[i];
    if (s->gen != m->gen) return NULL;
    if (s->key == key) return s;
  }
}

/* Doubles the map (or makes its first 64 slots); keeps the current entries. */
static void pm_grow(lua_State *L, ptrmap *m) {
  size_t cap = m->slot == NULL ? 64 : (m->mask + 1) * 2;
  pm_slot *slot = calloc(cap, sizeof *slot);
  if (slot == NULL) luaL_error(L, "not enough memory");
  uint32_t gen = m->gen == 0 ? 1 : m->gen;
  for (size_t i = 0; m->slot != NULL && i <= m->mask; i++) {
    pm_slot *s = &m->slot[i];
    if (s->gen != m->gen) continue;
    size_t j = pm_hash(s->key, cap - 1);
    while (slot[j].gen == gen) j = (j + 1) & (cap - 1);
    slot[j] = *s;
    slot[j].gen = gen;
  }
  free(m->slot);
  m->slot = slot;
  m->mask = cap - 1;
  m->gen = gen;
}

/* Sets key -> val (key must not be in the map). */
static void pm_put(lua_State *L, ptrmap *m, const void *key, uint64_t val) {
  if (m->slot == NULL || (m->used + 1) * 2 > m->mask + 1) pm_grow(L, m);
  size_t i = pm_hash(key, m->mask);
  while (m->slot[i].gen == m->gen) i = (i + 1) & m->mask;
  m->slot[i].key = key;
  m->slot[i].val = val;
  m->slot[i].gen = m->gen;
  m->used++;
}

/* ------------------------------------------------------------------------ */
/* Buffers and state                                                         */

/*
** The decoder's cache of interned string keys: KEY_CACHE slots, direct
** mapped. A slot's string is held by the UV_KEYS table at the same index, so
** `s` stays valid while the slot holds it (Lua never moves an object).
** `a` and `b` are the string's first and last 8 bytes: they decide a
** match for strings of up to 16 bytes without a memcmp.
*/
#define KEY_CACHE 128
#define KEY_CACHE_MAXLEN 40    /* Lua's short strings: the ones lua_pushlstring interns */

typedef struct key_slot {
  uint64_t a, b;
  const char *s;
  size_t len;                  /* 0: empty */
} key_slot;

typedef struct serial_state {
  mp_wbuf scratch;
  unsigned char key[MP_SIPHASH_KEYLEN];
  lua_Integer loaded_count;    /* entries of package.loaded when UV_NAMES was built; -1: none */
  ptrmap memo;                 /* encoder: object address -> offset, upvalue id -> owner<<8|n */
  ptrmap named;                /* addresses of UV_NAMES's keys: a filter before the Lua lookup */
  int named_built;             /* `named` mirrors the UV_NAMES table */
  int peek_ok;                 /* peek_selftest passed when the state was made */
  int peek;                    /* read tables' layout (peek_ok, unless a test turned it off) */
  int build_busy;              /* the build thread is running (a finalizer may re-enter) */
  lua_State *build;            /* the UV_BUILD thread, once made */
  key_slot keys[KEY_CACHE];
} serial_state;

void mp_wbuf_reserve(lua_State *L, mp_wbuf *b, size_t extra) {
  if (b->cap - b->len >= extra) return;
  if (extra > SIZE_MAX / 2 - b->len) luaL_error(L, "not enough memory (message too large)");
  size_t need = b->len + extra;
  size_t cap = b->cap < 256 ? 256 : b->cap;
  while (cap < need) cap *= 2;
  char *p = realloc(b->data, cap);
  if (p == NULL) luaL_error(L, "not enough memory for a %I-byte message", (lua_Integer)need);
  b->data = p;
  b->cap = cap;
}

static int state_gc(lua_State *L) {
  serial_state *s = lua_touserdata(L, 1);
  free(s->scratch.data);
  s->scratch.data = NULL;
  s->scratch.len = s->scratch.cap = 0;
  pm_free(&s->memo);
  pm_free(&s->named);
  s->named_built = 0;
  return 0;
}

static void push_weak_table(lua_State *L, const char *mode) {
  lua_newtable(L);
  lua_createtable(L, 0, 1);
  lua_pushstring(L, mode);
  lua_setfield(L, -2, "__mode");
  lua_setmetatable(L, -2);
}

static int peek_selftest(lua_State *L);

/* Pushes the state userdata, creating it (and the MAC key) on first use. */
static serial_state *push_state(lua_State *L) {
  if (lua_rawgetp(L, LUA_REGISTRYINDEX, &state_key) == LUA_TUSERDATA)
    return lua_touserdata(L, -1);
  lua_pop(L, 1);
  serial_state *s = lua_newuserdatauv(L, sizeof *s, UV_COUNT);
  memset(s, 0, sizeof *s);               /* safe empty state before anything can fail */
  s->loaded_count = -1;
  lua_createtable(L, 0, 2);
  lua_pushcfunction(L, state_gc);
  lua_setfield(L, -2, "__gc");
  lua_pushliteral(L, "mp.serial_state");
  lua_setfield(L, -2, "__name");
  lua_setmetatable(L, -2);
  int err = mp_random_bytes(s->key, sizeof s->key);
  if (err != 0) luaL_error(L, "mp: cannot get random bytes for the message key: %s", strerror(err));
  s->peek = s->peek_ok = peek_selftest(L);
  push_weak_table(L, "k");                /* functions are cached weakly */
  lua_setiuservalue(L, -2, UV_FCACHE);
  lua_newtable(L);
  lua_setiuservalue(L, -2, UV_CLASS_BY_MT);
  lua_newtable(L);
  lua_setiuservalue(L, -2, UV_CLASS_BY_NAME);
  /* All KEY_CACHE slots in the array part: storing into one never allocates. */
  lua_createtable(L, KEY_CACHE, 0);
  lua_setiuservalue(L, -2, UV_KEYS);
  push_weak_table(L, "k");
  lua_setiuservalue(L, -2, UV_ENV_IDS);
  push_weak_table(L, "v");
  lua_setiuservalue(L, -2, UV_ENV_BY_ID);
  lua_pushvalue(L, -1);
  lua_rawsetp(L, LUA_REGISTRYINDEX, &state_key);
  return s;
}

static mp_wbuf *scratch_of(serial_state *s) {
  mp_wbuf *b = &s->scratch;
  if (b->cap > SCRATCH_KEEP) {             /* don't hold on to a huge message's memory */
    free(b->data);
    b->data = NULL;
    b->cap = 0;
  }
  b->len = 0;
  return b;
}

mp_wbuf *mp_serial_scratch(lua_State *L) {
  serial_state *s = push_state(L);
  lua_pop(L, 1);                           /* the registry keeps it alive */
  return scratch_of(s);
}

void mp_serial_push_state(lua_State *L) { push_state(L); }

mp_wbuf *mp_serial_scratch_at(lua_State *L, int st) {
  return scratch_of(lua_touserdata(L, st));
}

/*
** A helper thread. Lua code run on it (build_array's table constructor) must
** not run hooks: mp.signal's handlers and lua.c's Ctrl-C are hooks set on
** the main thread, and a handler run in the middle of a message could use
** the same queue or scratch buffer (a queue may decode in place while it owns
** the slot). Hooks are per thread, so a thread made here with its hook
** cleared never runs one. The thread is private (held by a user value only).
*/
static lua_State *helper_thread(lua_State *L, int st, int uv, const char *code) {
  lua_State *co = lua_newthread(L);
  lua_sethook(co, NULL, 0, 0);
  if (code != NULL) {                     /* the function, kept at index 1 of the thread */
    if (luaL_loadbufferx(co, code, strlen(code), "=(mp builder)", "t") != LUA_OK)
      luaL_error(L, "mp: %s", lua_tostring(co, -1));
  }
  lua_setiuservalue(L, st, uv);           /* the state holds the thread from now on */
  return co;
}

/* ------------------------------------------------------------------------ */
/* Encoder                                                                   */

/* How the value being encoded is reached from its parent, for error paths. */
enum { SEG_INDEX, SEG_KEY, SEG_UPVALUE, SEG_ASKEY };
typedef struct seg {
  int kind;
  int idx;                 /* SEG_KEY: stack index of the key */
  lua_Integer n;           /* SEG_INDEX: array index; SEG_UPVALUE: upvalue number */
  const char *name;        /* SEG_UPVALUE: its name */
} seg;

typedef struct enc {
  lua_State *L;
  mp_wbuf *b;
  size_t base;             /* b->len when this message started */
  serial_state *s;         /* NULL until fetched (by the first table, function or userdata) */
  int st;                  /* index of the state userdata (a stack slot or an upvalue) */
  int ready;               /* need_state has run for this message */
  const void *globals;     /* address of the global table */
  int names_fresh;         /* names checked against package.loaded in this call */
  int names_rebuilt;       /* names rebuilt in this call */
  const char *root;
  int nroot, rootk;        /* number of root values; which one is being encoded */
  int depth;
  int npath;
  mp_oob *oob;             /* where mp objects' fds go; NULL: they cannot be sent */
  seg path[MAX_DEPTH + 2];
} enc;

static inline unsigned char *room(enc *e, size_t n) {
  mp_wbuf *b = e->b;
  if (b->cap - b->len < n) mp_wbuf_reserve(e->L, b, n);
  return (unsigned char *)b->data + b->len;
}

static inline void put_u8(enc *e, unsigned v) {
  unsigned char *p = room(e, 1);
  *p = (unsigned char)v;
  e->b->len++;
}

/* The host is little-endian (checked above): a number's first n bytes are its low bytes. */
static inline void put_raw(unsigned char *p, uint64_t v, int n) {
  memcpy(p, &v, (size_t)n);
}

/* tag followed by an n-byte little-endian number */
static inline void put_tagged(enc *e, unsigned tag, uint64_t v, int n) {
  unsigned char *p = room(e, 1 + (size_t)n);
  p[0] = (unsigned char)tag;
  put_raw(p + 1, v, n);
  e->b->len += 1 + (size_t)n;
}

static void put_bytes(enc *e, const void *data, size_t len) {
  unsigned char *p = room(e, len);
  memcpy(p, data, len);
  e->b->len += len;
}

static int is_identifier(const char *s, size_t len) {
  if (len == 0 || !(s[0] == '_' || ((s[0] | 32) >= 'a' && (s[0] | 32) <= 'z'))) return 0;
  for (size_t i = 1; i < len; i++) {
    char c = s[i];
    if (!(c == '_' || (c >= '0' && c <= '9') || ((c | 32) >= 'a' && (c | 32) <= 'z'))) return 0;
  }
  return 1;
}

/* Pushes the path segment for the table key at idx: .name, [3], ["odd key"], [table]. */
static void push_key(lua_State *L, int idx) {
  switch (lua_type(L, idx)) {
    case LUA_TSTRING: {
      size_t len;
      const char *s = lua_tolstring(L, idx, &len);
      if (is_identifier(s, len)) {
        lua_pushfstring(L, ".%s", s);
        break;
      }
      luaL_Buffer B;                       /* its box, if any, is the only push until the result */
      luaL_buffinit(L, &B);
      luaL_addstring(&B, "[\"");
      for (size_t i = 0; i < len && i < 60; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '"' || c == '\\') { luaL_addchar(&B, '\\'); luaL_addchar(&B, (char)c); }
        else if (c < 32 || c >= 127) {
          char esc[8];
          snprintf(esc, sizeof esc, "\\%u", c);
          luaL_addstring(&B, esc);
        } else luaL_addchar(&B, (char)c);
      }
      if (len > 60) luaL_addstring(&B, "...");
      luaL_addstring(&B, "\"]");
      luaL_pushresult(&B);
      break;
    }
    case LUA_TNUMBER: case LUA_TBOOLEAN:
      lua_pushfstring(L, "[%s]", luaL_tolstring(L, idx, NULL));
      lua_remove(L, -2);
      break;
    default:
      lua_pushfstring(L, "[%s]", luaL_typename(L, idx));
      break;
  }
}

/* Raises "<path>: <message>", the path built from one string per segment. */
static int enc_error(enc *e, const char *msg) {
  lua_State *L = e->L;
  luaL_checkstack(L, e->npath + 10, NULL);
  int first = lua_gettop(L) + 1;
  lua_pushstring(L, msg);                  /* keep msg alive: it may be a pushed string */
  lua_pushstring(L, e->root);
  if (e->nroot > 1) lua_pushfstring(L, "[%d]", e->rootk);
  for (int i = 0; i < e->npath; i++) {
    seg *s = &e->path[i];
    switch (s->kind) {
      case SEG_INDEX: lua_pushfstring(L, "[%I]", s->n); break;
      case SEG_KEY: push_key(L, s->idx); break;
      case SEG_ASKEY: lua_pushliteral(L, "[<key>]"); break;
      default:
        lua_pushfstring(L, "(upvalue %s)", s->name != NULL && s->name[0] ? s->name : "?");
    }
  }
  lua_pushliteral(L, ": ");
  lua_pushvalue(L, first);
  lua_remove(L, first);
  lua_concat(L, lua_gettop(L) - first + 1);
  return lua_error(L);
}

static int refuse(enc *e, int idx, const char *why) {
  lua_State *L = e->L;
  const char *msg = lua_pushfstring(L, "cannot send a value of type %s%s", luaL_typename(L, idx), why);
  return enc_error(e, msg);
}

/*
** Scalars and strings need no per-state data. The first table, function or
** userdata fetches the state (when the caller did not pass it), empties the
** memo for this message and notes the global table's address.
*/
static serial_state *need_state(enc *e) {
  if (e->ready) return e->s;
  lua_State *L = e->L;
  if (e->s == NULL) {
    luaL_checkstack(L, 10, "mp: message");
    e->s = push_state(L);
    e->st = lua_gettop(L);               /* a slot at the base of this message's work */
  }
  e->ready = 1;
  pm_reset(&e->s->memo);
  lua_rawgeti(L, LUA_REGISTRYINDEX, LUA_RIDX_GLOBALS);
  e->globals = lua_topointer(L, -1);
  lua_pop(L, 1);
  return e->s;
}

/*
** The reverse map of package.loaded: value -> the bytes of its T_MODULE or
** T_FIELD record, in UV_NAMES; `named` holds the addresses of its keys so
** that the common case, a table or function that has no name, costs a C
** lookup instead of a Lua one. Built lazily, rebuilt when the number of
** loaded modules changes (checked once per message) or when a C function or
** userdata is not found (at most once per message). Fields of _G count only
** when they are C functions (print, pairs...): a script's global tables and
** functions are its data and travel by value.
*/
static void add_name(lua_State *L, int map, int validx, const char *mod, size_t modlen,
                     const char *field, size_t fieldlen) {
  lua_pushvalue(L, validx);
  if (lua_rawget(L, map) != LUA_TNIL) { lua_pop(L, 1); return; }
  lua_pop(L, 1);
  luaL_Buffer B;
  lua_pushvalue(L, validx);               /* key, below the buffer */
  luaL_buffinit(L, &B);
  unsigned char hdr[5];
  hdr[0] = field != NULL ? T_FIELD : T_MODULE;
  put_raw(hdr + 1, modlen, 4);
  luaL_addlstring(&B, (const char *)hdr, 5);
  luaL_addlstring(&B, mod, modlen);
  if (field != NULL) {
    put_raw(hdr, fieldlen, 4);
    luaL_addlstring(&B, (const char *)hdr, 4);
    luaL_addlstring(&B, field, fieldlen);
  }
  luaL_pushresult(&B);
  lua_rawset(L, map);
}

static int nameable(int t) {
  return t == LUA_TTABLE || t == LUA_TFUNCTION || t == LUA_TUSERDATA || t == LUA_TLIGHTUSERDATA;
}

static lua_Integer count_entries(lua_State *L, int t) {
  lua_Integer n = 0;
  lua_pushnil(L);
  while (lua_next(L, t)) { lua_pop(L, 1); n++; }
  return n;
}

static void build_names(enc *e) {
  lua_State *L = e->L;
  serial_state *s = e->s;
  luaL_checkstack(L, 12, NULL);
  s->named_built = 0;                         /* until `named` mirrors the new map */
  lua_getfield(L, LUA_REGISTRYINDEX, LUA_LOADED_TABLE);
  int loaded = lua_gettop(L);
  lua_newtable(L);
  int map = lua_gettop(L);
  lua_Integer count = 0;
  if (lua_type(L, loaded) == LUA_TTABLE) {
    /* Modules first, so that a module is known by its own name (math, not _G.math). */
    lua_pushnil(L);
    while (lua_next(L, loaded)) {
      count++;
      if (lua_type(L, -2) == LUA_TSTRING && nameable(lua_type(L, -1))) {
        size_t len;
        const char *mod = lua_tolstring(L, -2, &len);
        add_name(L, map, lua_gettop(L), mod, len, NULL, 0);
      }
      lua_pop(L, 1);
    }
    lua_pushnil(L);
    while (lua_next(L, loaded)) {
      if (lua_type(L, -2) == LUA_TSTRING && lua_type(L, -1) == LUA_TTABLE) {
        size_t modlen;
        const char *mod = lua_tolstring(L, -2, &modlen);
        int modt = lua_gettop(L);
        int is_g = lua_topointer(L, modt) == e->globals;
        lua_pushnil(L);
        while (lua_next(L, modt)) {
          int vt = lua_type(L, -1);
          if (lua_type(L, -2) == LUA_TSTRING && nameable(vt) &&
              (!is_g || lua_iscfunction(L, -1))) {
            size_t flen;
            const char *f = lua_tolstring(L, -2, &flen);
            add_name(L, map, lua_gettop(L), mod, modlen, f, flen);
          }
          lua_pop(L, 1);
        }
      }
      lua_pop(L, 1);
    }
  }
  lua_pushvalue(L, map);
  lua_setiuservalue(L, e->st, UV_NAMES);
  /* The map holds its keys, so their addresses stay valid while it is in UV_NAMES. */
  pm_reset(&s->named);
  lua_pushnil(L);
  while (lua_next(L, map)) {
    lua_pop(L, 1);
    const void *p = lua_topointer(L, -1);
    if (pm_find(&s->named, p) == NULL) pm_put(L, &s->named, p, 1);
  }
  s->named_built = 1;
  lua_pop(L, 2);                              /* map, package.loaded */
  s->loaded_count = count;
}

/*
** Makes the names usable. Counting package.loaded's entries costs as much as
** encoding a small table, so a message checks the map against it at most once,
** and only when it holds a function or a userdata: that is where names matter
** (closures capture modules, library functions can only go by name). A plain
** data message uses the map as it is.
*/
static void ensure_names(enc *e, int check) {
  lua_State *L = e->L;
  serial_state *s = e->s;
  if (!s->named_built) {
    build_names(e);
    e->names_fresh = e->names_rebuilt = 1;
    return;
  }
  if (check && !e->names_fresh) {
    e->names_fresh = 1;
    lua_getfield(L, LUA_REGISTRYINDEX, LUA_LOADED_TABLE);
    lua_Integer n = lua_type(L, -1) == LUA_TTABLE ? count_entries(L, lua_gettop(L)) : 0;
    lua_pop(L, 1);
    if (n != s->loaded_count) {
      build_names(e);
      e->names_rebuilt = 1;
    }
  }
}

/*
** Writes the name of the value at idx (address p) if it has one; returns whether it did.
** `check`: a function or userdata (see ensure_names). `retry`: the value cannot
** be sent otherwise, so a miss is worth one rebuild per message.
*/
static int put_name(enc *e, int idx, const void *p, int check, int retry) {
  lua_State *L = e->L;
  serial_state *s = need_state(e);
  if (!s->named_built || (check && !e->names_fresh)) ensure_names(e, check);
  if (pm_find(&s->named, p) == NULL) {
    if (!retry || e->names_rebuilt) return 0;
    build_names(e);
    e->names_rebuilt = 1;
    if (pm_find(&s->named, p) == NULL) return 0;
  }
  lua_getiuservalue(L, e->st, UV_NAMES);
  lua_pushvalue(L, idx);
  if (lua_rawget(L, -2) != LUA_TSTRING) {      /* another value at a named address */
    lua_pop(L, 2);
    return 0;
  }
  size_t len;
  const char *str = lua_tolstring(L, -1, &len);
  put_bytes(e, str, len);
  lua_pop(L, 2);
  return 1;
}

/* If the object at idx was already sent, writes a REF to it and returns 1. */
static inline int put_ref(enc *e, const void *p) {
  pm_slot *slot = pm_find(&e->s->memo, p);
  if (slot == NULL) return 0;
  size_t off = (size_t)slot->val;
  ((unsigned char *)e->b->data)[e->base + off] |= T_SHARED;
  put_tagged(e, T_REF, off, 8);
  return 1;
}

static void encode(enc *e, int idx);

static void enter(enc *e) {
  if (++e->depth > MAX_DEPTH) enc_error(e, "nesting deeper than 200 levels");
  luaL_checkstack(e->L, 8, "mp: message nesting");
}

/* Encodes the child at stack index idx, reached through segment s. */
static inline void child(enc *e, int idx, seg s) {
  e->path[e->npath++] = s;
  encode(e, idx);
  e->npath--;
}

/* Writes an integer's smallest encoding at w (9 bytes of room); returns its length. */
static inline size_t put_integer_at(unsigned char *w, lua_Integer v) {
  if ((lua_Unsigned)v + 128 < 256) {
    w[0] = T_INT8;
    w[1] = (unsigned char)v;
    return 2;
  }
  if ((lua_Unsigned)v + 0x80000000u < 0x100000000u) {
    int32_t x = (int32_t)v;
    w[0] = T_INT32;
    memcpy(w + 1, &x, 4);
    return 5;
  }
  w[0] = T_INT64;
  memcpy(w + 1, &v, 8);
  return 9;
}

static inline void put_integer(enc *e, lua_Integer v) {
  unsigned char *w = room(e, 9);
  e->b->len += put_integer_at(w, v);
}

/* A string of at most 255 bytes: its tag, length and bytes (room is the caller's). */
static inline void put_str8_at(unsigned char *p, const char *s, size_t len) {
  p[0] = T_STR8;
  p[1] = (unsigned char)len;
  if (len > 16) {
    memcpy(p + 2, s, len);
  } else if (len >= 8) {
    /* A short string (most keys): two overlapping moves instead of a call to memcpy. */
    uint64_t x, y;
    memcpy(&x, s, 8);
    memcpy(&y, s + len - 8, 8);
    memcpy(p + 2, &x, 8);
    memcpy(p + 2 + len - 8, &y, 8);
  } else if (len >= 4) {
    uint32_t x, y;
    memcpy(&x, s, 4);
    memcpy(&y, s + len - 4, 4);
    memcpy(p + 2, &x, 4);
    memcpy(p + 2 + len - 4, &y, 4);
  } else {
    for (size_t i = 0; i < len; i++) p[2 + i] = (unsigned char)s[i];
  }
}

/* Writes a string's tag, length and bytes. */
static void put_string_bytes(enc *e, const char *s, size_t len) {
  mp_wbuf *b = e->b;
  if (len <= UINT8_MAX) {
    if (b->cap - b->len < 2 + len) mp_wbuf_reserve(e->L, b, 2 + len);
    put_str8_at((unsigned char *)b->data + b->len, s, len);
    b->len += 2 + len;
  } else {
    if (len <= UINT32_MAX) put_tagged(e, T_STR32, len, 4);
    else put_tagged(e, T_STR64, len, 8);
    put_bytes(e, s, len);
  }
}

static inline void put_string(enc *e, int idx) {
  size_t len;
  const char *s = lua_tolstring(e->L, idx, &len);
  put_string_bytes(e, s, len);
}

/* Encodes the value at idx, of type `type`, if it is a scalar or a string; else returns 0. */
static inline __attribute__((always_inline)) int put_scalar(enc *e, int idx, int type) {
  lua_State *L = e->L;
  switch (type) {
    case LUA_TNIL: put_u8(e, T_NIL); return 1;
    case LUA_TBOOLEAN: put_u8(e, lua_toboolean(L, idx) ? T_TRUE : T_FALSE); return 1;
    case LUA_TNUMBER:
      if (lua_isinteger(L, idx)) {
        put_integer(e, lua_tointeger(L, idx));
      } else {
        double d = (double)lua_tonumber(L, idx);
        uint64_t bits;
        memcpy(&bits, &d, 8);
        put_tagged(e, T_FLOAT, bits, 8);
      }
      return 1;
    case LUA_TSTRING: put_string(e, idx); return 1;
    default: return 0;
  }
}

/*
** Tables: reading Lua 5.4's layout.
**
** Through the public API a table costs, per entry, a lua_next (which looks
** the previous key up again), a key check, a pop, and two or three calls to
** read the value: most of the time of a 1000-integer or a 10-field message.
** Two facts about a table decide whether that can be avoided, and the API
** gives neither:
**
** 1. Whether keys 1..n (n = #t) all live in the array part, where they can be
**    read in order. (lua_next(t, n + 1) raises for a key beyond the array
**    part that has no node, but an integer key once stored in the hash part
**    and set to nil keeps its node, so that probe succeeds where the walk
**    would go wrong.)
** 2. What the array and hash parts hold, which can be read in a few
**    instructions per entry where the API takes ~100 to ~300.
**
** So the encoder reads them from Lua 5.4's own structures (lobject.h, the
** same in 5.4.0 to 5.4.7): struct Table's alimit, flags, array and node;
** TValue (an 8-byte Value and a tag byte); Node (a value, its tag, the key's
** tag, a chain link, the key); TString (lengths and bytes). Lua keeps alimit
** <= the array part's size, and after lua_rawlen, alimit >= #t whenever #t
** is inside the array part (luaH_getn), so "alimit >= n after lua_rawlen"
** proves fact 1. Numbers, booleans, nil and strings are read directly; any
** other value (a table, a function...) is pushed with lua_rawgeti or
** lua_rawget and encoded as usual; a table with a key that is not a plain
** value is walked with lua_next, the only way to push such a key.
**
** This is guarded. It is compiled for Lua 5.4 only, and peek_selftest, run
** when the state is made, builds tables of known sizes and contents and
** checks every field and tag this code reads; if anything differs (another
** Lua, another layout), every table takes the lua_next walk, which needs
** nothing but the API. Reads stay within the live table: indexes below the
** sizes just read, and after anything that can run Lua code (a nested encode
** may run a finalizer) the sizes are read again, or the encode stops with an
** error if the table was reshaped. bench/NOTES.md has the measurements that
** justify depending on a layout the manual does not promise.
*/
typedef union lua54_value {
  void *p;
  lua_Integer i;
  lua_Number n;
} lua54_value;

typedef struct lua54_tvalue {              /* TValue */
  lua54_value v;
  unsigned char tt;
} lua54_tvalue;

typedef struct lua54_node {                /* Node: a value, then its key */
  lua54_value v;
  unsigned char tt;
  unsigned char key_tt;
  int next;
  lua54_value key;
} lua54_node;

typedef struct lua54_table_head {          /* struct Table, up to `node` */
  void *next;                              /* CommonHeader: next, tt, marked */
  unsigned char tt, marked;
  unsigned char flags, lsizenode;
  unsigned int alimit;
  lua54_tvalue *array;
  lua54_node *node;
} lua54_table_head;

typedef struct lua54_string {              /* TString */
  void *next;
  unsigned char tt, marked, extra, shrlen;
  unsigned int hash;
  union { size_t lnglen; void *hnext; } u;
  char contents[1];
} lua54_string;

/* Variant tags, makevariant(type, variant) = type | variant << 4, with bit 6 for collectables. */
#define V_NIL 0x00
#define V_FALSE 0x01
#define V_INT 0x03
#define V_EMPTY 0x10                       /* an empty slot, read as nil */
#define V_TRUE 0x11
#define V_FLOAT 0x13
#define V_SHRSTR 0x44
#define V_LNGSTR 0x54
#define BITRAS 0x80                        /* flags: alimit is not the array part's size */

/* luaH_realasize: the size of the array part. */
static inline unsigned table_asize(const lua54_table_head *h) {
  unsigned a = h->alimit;
  if (!(h->flags & BITRAS) || (a & (a - 1)) == 0) return a;
  a |= a >> 1; a |= a >> 2; a |= a >> 4; a |= a >> 8; a |= a >> 16;
  return a + 1;
}

static inline int is_empty_tag(unsigned tt) { return (tt & 0x0F) == LUA_TNIL; }

/* The bytes of a string value (tag V_SHRSTR or V_LNGSTR). */
static inline const char *string_bytes(const lua54_value *v, unsigned tt, size_t *len) {
  const lua54_string *ts = v->p;
  *len = tt == V_SHRSTR ? ts->shrlen : ts->u.lnglen;
  return ts->contents;
}

/* Whether a slot's value is one encode_slot writes without the API. */
static inline int is_plain_tag(unsigned tt) {
  switch (tt) {
    case V_NIL: case V_EMPTY: case V_FALSE: case V_TRUE: case V_INT: case V_FLOAT:
    case V_SHRSTR: case V_LNGSTR:
      return 1;
    default:
      return 0;
  }
}

/* Writes a plain slot's value (is_plain_tag). */
static inline __attribute__((always_inline)) void encode_slot(enc *e, const lua54_value *v, unsigned tt) {
  switch (tt) {
    case V_INT: put_integer(e, v->i); break;
    case V_FLOAT: {
      double d = (double)v->n;
      uint64_t bits;
      memcpy(&bits, &d, 8);
      put_tagged(e, T_FLOAT, bits, 8);
      break;
    }
    case V_FALSE: put_u8(e, T_FALSE); break;
    case V_TRUE: put_u8(e, T_TRUE); break;
    case V_SHRSTR: case V_LNGSTR: {
      size_t len;
      const char *str = string_bytes(v, tt, &len);
      put_string_bytes(e, str, len);
      break;
    }
    default: put_u8(e, T_NIL); break;
  }
}

/* Pushes a plain, non-nil key read from a node. */
static void push_slot(lua_State *L, const lua54_value *v, unsigned tt) {
  switch (tt) {
    case V_INT: lua_pushinteger(L, v->i); break;
    case V_FLOAT: lua_pushnumber(L, v->n); break;
    case V_FALSE: case V_TRUE: lua_pushboolean(L, tt == V_TRUE); break;
    default: {
      size_t len;
      const char *str = string_bytes(v, tt, &len);
      lua_pushlstring(L, str, len);
    }
  }
}

#define SELFTEST_LONG "a key longer than Lua's forty-byte short strings"

static int peek_selftest(lua_State *L) {
#if LUA_VERSION_NUM == 504
  static const int sizes[][2] = { {0, 0}, {1, 0}, {3, 2}, {29, 0}, {700, 5}, {4099, 1} };
  if (lua_version(L) != 504) return 0;
  for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
    lua_createtable(L, sizes[i][0], sizes[i][1]);
    const lua54_table_head *h = lua_topointer(L, -1);
    int ok = h->tt == LUA_TTABLE && h->alimit == (unsigned)sizes[i][0] && table_asize(h) == h->alimit &&
             (sizes[i][1] == 0 || 1 << h->lsizenode >= sizes[i][1]);
    lua_pop(L, 1);
    if (!ok) return 0;
  }
  /* The array part: 42, 1.5, true, false, nil, "s", (never set), math.mininteger, -0.0 */
  lua_createtable(L, 9, 0);
  lua_pushinteger(L, 42); lua_rawseti(L, -2, 1);
  lua_pushnumber(L, 1.5); lua_rawseti(L, -2, 2);
  lua_pushboolean(L, 1); lua_rawseti(L, -2, 3);
  lua_pushboolean(L, 0); lua_rawseti(L, -2, 4);
  lua_pushnil(L); lua_rawseti(L, -2, 5);
  lua_pushliteral(L, "s"); lua_rawseti(L, -2, 6);
  lua_pushinteger(L, LUA_MININTEGER); lua_rawseti(L, -2, 8);
  lua_pushnumber(L, -0.0); lua_rawseti(L, -2, 9);
  const lua54_table_head *h = lua_topointer(L, -1);
  const lua54_tvalue *a = h->array;
  size_t len = 0;
  int ok = h->alimit == 9 && a != NULL &&
           a[0].tt == V_INT && a[0].v.i == 42 &&
           a[1].tt == V_FLOAT && a[1].v.n == 1.5 &&
           a[2].tt == V_TRUE && a[3].tt == V_FALSE &&
           is_empty_tag(a[4].tt) && is_empty_tag(a[6].tt) &&
           a[5].tt == V_SHRSTR && memcmp(string_bytes(&a[5].v, a[5].tt, &len), "s", 2) == 0 && len == 1 &&
           a[7].tt == V_INT && a[7].v.i == LUA_MININTEGER &&
           a[8].tt == V_FLOAT && a[8].v.n == 0.0 && signbit(a[8].v.n);
  lua_pop(L, 1);
  if (!ok) return 0;
  /* alimit below the array part's size: keys 1..7 stored one by one, then #t. */
  lua_newtable(L);
  for (int i = 1; i <= 7; i++) { lua_pushinteger(L, i); lua_rawseti(L, -2, i); }
  ok = lua_rawlen(L, -1) == 7;
  h = lua_topointer(L, -1);
  ok = ok && h->alimit == 7 && (h->flags & BITRAS) && table_asize(h) == 8 &&
       h->array[6].tt == V_INT && h->array[6].v.i == 7 && is_empty_tag(h->array[7].tt);
  lua_pop(L, 1);
  if (!ok) return 0;
  /* The hash part: each of these keys and values found once, and nothing else. */
  lua_createtable(L, 0, 6);
  lua_pushinteger(L, 1); lua_setfield(L, -2, "k");
  lua_pushliteral(L, SELFTEST_LONG); lua_pushnumber(L, 2.5); lua_rawset(L, -3);
  lua_pushliteral(L, "v"); lua_rawseti(L, -2, 7);
  lua_pushnumber(L, 1.5); lua_pushboolean(L, 1); lua_rawset(L, -3);
  lua_pushboolean(L, 0); lua_pushliteral(L, SELFTEST_LONG); lua_rawset(L, -3);
  h = lua_topointer(L, -1);
  int found = 0, count = 0;
  for (size_t i = 0; i < (size_t)1 << h->lsizenode; i++) {
    const lua54_node *nd = &h->node[i];
    if (is_empty_tag(nd->tt)) continue;
    count++;
    size_t kl = 0, vl = 0;
    const char *ks = nd->key_tt == V_SHRSTR || nd->key_tt == V_LNGSTR ? string_bytes(&nd->key, nd->key_tt, &kl) : NULL;
    const char *vs = nd->tt == V_SHRSTR || nd->tt == V_LNGSTR ? string_bytes(&nd->v, nd->tt, &vl) : NULL;
    if (nd->key_tt == V_SHRSTR && kl == 1 && ks[0] == 'k' && nd->tt == V_INT && nd->v.i == 1) found |= 1;
    if (nd->key_tt == V_LNGSTR && kl == sizeof SELFTEST_LONG - 1 && memcmp(ks, SELFTEST_LONG, kl) == 0 &&
        nd->tt == V_FLOAT && nd->v.n == 2.5) found |= 2;
    if (nd->key_tt == V_INT && nd->key.i == 7 && nd->tt == V_SHRSTR && vl == 1 && vs[0] == 'v') found |= 4;
    if (nd->key_tt == V_FLOAT && nd->key.n == 1.5 && nd->tt == V_TRUE) found |= 8;
    if (nd->key_tt == V_FALSE && nd->tt == V_LNGSTR && vl == sizeof SELFTEST_LONG - 1 &&
        memcmp(vs, SELFTEST_LONG, vl) == 0) found |= 16;
  }
  lua_pop(L, 1);
  return found == 31 && count == 5;
#else
  (void)L;
  return 0;
#endif
}

/*
** Encodes t[1..n] as the array part; the caller has checked that 1..n are in
** the array part. Plain values (numbers, booleans, nil, strings) are read
** straight from the slots, anything else with lua_rawgeti.
*/
static void encode_array(enc *e, int t, const lua54_table_head *h, lua_Unsigned n) {
  lua_State *L = e->L;
  mp_wbuf *b = e->b;
  int peek = 1;
  lua_Unsigned i = 0;
  while (i < n) {
    if (peek) {
      const lua54_tvalue *a = h->array;
      unsigned char *w = (unsigned char *)b->data + b->len;
      unsigned char *wend = (unsigned char *)b->data + b->cap;
      for (; i < n; i++) {
        if (wend - w < 9) {
          b->len = (size_t)(w - (unsigned char *)b->data);
          mp_wbuf_reserve(L, b, n - i < 4096 ? 9 * (size_t)(n - i) : 9 * 4096);
          w = (unsigned char *)b->data + b->len;
          wend = (unsigned char *)b->data + b->cap;
        }
        const lua54_tvalue *v = &a[i];
        switch (v->tt) {
          case V_INT: w += put_integer_at(w, v->v.i); continue;
          case V_FLOAT: {
            double d = (double)v->v.n;
            w[0] = T_FLOAT;
            memcpy(w + 1, &d, 8);
            w += 9;
            continue;
          }
          case V_NIL: case V_EMPTY: *w++ = T_NIL; continue;
          case V_FALSE: *w++ = T_FALSE; continue;
          case V_TRUE: *w++ = T_TRUE; continue;
          case V_SHRSTR: case V_LNGSTR: {
            b->len = (size_t)(w - (unsigned char *)b->data);
            encode_slot(e, &v->v, v->tt);
            w = (unsigned char *)b->data + b->len;
            wend = (unsigned char *)b->data + b->cap;
            continue;
          }
          default: break;
        }
        break;
      }
      b->len = (size_t)(w - (unsigned char *)b->data);
      if (i == n) break;
    }
    int type = lua_rawgeti(L, t, (lua_Integer)i + 1);
    if (!put_scalar(e, lua_gettop(L), type))
      child(e, lua_gettop(L), (seg){SEG_INDEX, 0, (lua_Integer)i + 1, NULL});
    lua_pop(L, 1);
    i++;
    /*
    ** A nested encode can run Lua code (a finalizer) that changes t: read the
    ** slots again only while the array part still covers 1..n.
    */
    peek = h->alimit >= n;
  }
}

/* Raises when a finalizer run by a nested encode has reshaped the table being read. */
static void check_unchanged(enc *e, const lua54_table_head *h, const void *array,
                            const void *node, unsigned asize, unsigned lsizenode) {
  if (h->array != array || h->node != node || table_asize(h) != asize || h->lsizenode != lsizenode)
    enc_error(e, "table changed while it was being sent (by a finalizer?)");
}

/*
** Encodes the entries of t that are not in 1..n (n is 0 or 1..n are in the
** array part): array slots past n, then the hash part, as key/value pairs,
** counted in *nhash. Returns 0, having written nothing, when a key is not a
** plain value (a table, a function...): such a key can only be pushed by
** lua_next, and the caller walks the table with it instead.
*/
static int encode_hash(enc *e, int t, const lua54_table_head *h, lua_Unsigned n, uint64_t *nhash) {
  lua_State *L = e->L;
  const lua54_tvalue *array = h->array;
  const lua54_node *node = h->node;
  unsigned asize = table_asize(h), lsizenode = h->lsizenode;
  size_t nnodes = (size_t)1 << lsizenode;
  for (size_t i = 0; i < nnodes; i++) {
    if (!is_empty_tag(node[i].tt) && !is_plain_tag(node[i].key_tt)) return 0;
  }
  uint64_t count = 0;
  for (lua_Unsigned i = n; i < asize; i++) {          /* array slots past #t (after a hole) */
    const lua54_tvalue *v = &array[i];
    if (is_empty_tag(v->tt)) continue;
    count++;
    put_integer(e, (lua_Integer)i + 1);
    if (is_plain_tag(v->tt)) {
      encode_slot(e, &v->v, v->tt);
      continue;
    }
    lua_pushinteger(L, (lua_Integer)i + 1);
    lua_rawgeti(L, t, (lua_Integer)i + 1);
    child(e, lua_gettop(L), (seg){SEG_KEY, lua_gettop(L) - 1, 0, NULL});
    lua_pop(L, 2);
    check_unchanged(e, h, array, node, asize, lsizenode);
  }
  for (size_t i = 0; i < nnodes; i++) {
    const lua54_node *nd = &node[i];
    if (is_empty_tag(nd->tt)) continue;
    count++;
    encode_slot(e, &nd->key, nd->key_tt);
    if (is_plain_tag(nd->tt)) {
      encode_slot(e, &nd->v, nd->tt);
      continue;
    }
    push_slot(L, &nd->key, nd->key_tt);
    lua_pushvalue(L, -1);
    lua_rawget(L, t);
    child(e, lua_gettop(L), (seg){SEG_KEY, lua_gettop(L) - 1, 0, NULL});
    lua_pop(L, 2);
    check_unchanged(e, h, array, node, asize, lsizenode);
  }
  *nhash = count;
  return 1;
}

/*
** Walks t with lua_next from the key on top of the stack and writes its
** entries: while `narr` is not NULL, the keys narr+1, narr+2... met in a row
** go out as the array part, values only (lua_next walks the array part
** first, in order); every other entry goes out as a key/value pair, counted
** in *nhash. Each step copies the key up for the next lua_next instead of
** popping the value (one lua_pushvalue against one lua_settop), and the stack
** is cut back every WALK_BATCH steps. Leaves the stack as it found it, minus
** the first key.
*/
#define WALK_BATCH 16

static void encode_walk(enc *e, int t, uint64_t *narr, uint64_t *nhash) {
  lua_State *L = e->L;
  luaL_checkstack(L, 2 * WALK_BATCH + 8, "mp: message nesting");
  int base = lua_gettop(L), k = base;
  while (lua_next(L, t)) {
    int v = k + 1;
    if (narr != NULL && lua_isinteger(L, k) && lua_tointeger(L, k) == (lua_Integer)*narr + 1) {
      ++*narr;
      if (!put_scalar(e, v, lua_type(L, v)))
        child(e, v, (seg){SEG_INDEX, 0, (lua_Integer)*narr, NULL});
    } else {
      narr = NULL;
      /* A key is named by its table's path plus "[<key>]". */
      if (!put_scalar(e, k, lua_type(L, k))) child(e, k, (seg){SEG_ASKEY, 0, 0, NULL});
      if (!put_scalar(e, v, lua_type(L, v))) child(e, v, (seg){SEG_KEY, k, 0, NULL});
      ++*nhash;
    }
    if (k - base >= 2 * WALK_BATCH) {
      lua_copy(L, k, base);
      lua_settop(L, base);
      k = base;
    } else {
      lua_pushvalue(L, k);
      k += 2;
    }
  }
  lua_settop(L, base - 1);
}

/*
** Writes the entries of table t (address h) from its layout: 1..#t as the
** array part when they are all in Lua's array part, the rest as pairs.
** Returns 0, having written nothing, when they are not (the caller walks t).
*/
static int encode_by_layout(enc *e, int t, const lua54_table_head *h, uint64_t *narr,
                            uint64_t *nhash) {
  lua_State *L = e->L;
  lua_Unsigned n = h->alimit > 0 ? lua_rawlen(L, t) : 0;   /* a record skips lua_rawlen */
  if (n > UINT32_MAX || h->alimit < n) return 0;
  if (n > 0) encode_array(e, t, h, n);
  *narr = n;
  if (!encode_hash(e, t, h, n, nhash)) {
    /* A key only lua_next can push: walk the rest, past n in the array part, then the hash. */
    if (n > 0) lua_pushinteger(L, (lua_Integer)n);
    else lua_pushnil(L);
    encode_walk(e, t, NULL, nhash);
  }
  return 1;
}

static void encode_table(enc *e, int t, const void *p) {
  lua_State *L = e->L;
  enter(e);
  size_t off = e->b->len - e->base;
  pm_put(L, &e->s->memo, p, off);
  /* Metatables travel only for registered classes, by name. */
  if (lua_getmetatable(L, t)) {
    lua_getiuservalue(L, e->st, UV_CLASS_BY_MT);
    lua_insert(L, -2);
    lua_rawget(L, -2);
    if (lua_type(L, -1) == LUA_TSTRING) {
      size_t len;
      const char *name = lua_tolstring(L, -1, &len);
      put_u8(e, T_CLASS);
      put_u8(e, (unsigned)len);
      put_bytes(e, name, len);
    } else {
      put_u8(e, T_TABLE);
    }
    lua_pop(L, 2);
  } else {
    put_u8(e, T_TABLE);
  }
  room(e, 8);
  size_t counts_at = e->b->len;
  e->b->len += 8;
  uint64_t narr = 0, nhash = 0;
  if (!e->s->peek || !encode_by_layout(e, t, p, &narr, &nhash)) {
    lua_pushnil(L);
    encode_walk(e, t, &narr, &nhash);
  }
  if (narr > UINT32_MAX || nhash > UINT32_MAX) enc_error(e, "table too large to send");
  unsigned char *counts = (unsigned char *)e->b->data + counts_at;
  put_raw(counts, narr, 4);
  put_raw(counts + 4, nhash, 4);
  e->depth--;
}

typedef struct dump_state {
  int init;
  luaL_Buffer B;
} dump_state;

/* As string.dump: the buffer starts on the first write, when lua_dump holds the function. */
static int dump_writer(lua_State *L, const void *p, size_t sz, void *ud) {
  dump_state *ds = ud;
  if (!ds->init) {
    ds->init = 1;
    luaL_buffinit(L, &ds->B);
  }
  luaL_addlstring(&ds->B, p, sz);
  return 0;
}

/* Pushes the function's bytecode followed by its MAC, cached per function. */
static void push_code(enc *e, int f) {
  lua_State *L = e->L;
  lua_getiuservalue(L, e->st, UV_FCACHE);
  int cache = lua_gettop(L);
  lua_pushvalue(L, f);
  if (lua_rawget(L, cache) == LUA_TSTRING) { lua_remove(L, cache); return; }
  lua_pop(L, 1);
  lua_pushvalue(L, f);                    /* the cache key, and what lua_dump dumps */
  dump_state ds;
  ds.init = 0;
  lua_dump(L, dump_writer, &ds, 0);       /* debug info kept: tracebacks need lines */
  if (ds.init) luaL_pushresult(&ds.B);
  else lua_pushliteral(L, "");
  size_t len;
  const char *code = lua_tolstring(L, -1, &len);
  unsigned char mac[MAC_LEN];
  put_raw(mac, mp_siphash(e->s->key, code, len), MAC_LEN);
  lua_pushlstring(L, (const char *)mac, MAC_LEN);
  lua_concat(L, 2);                       /* cache f code..mac */
  lua_pushvalue(L, -1);
  lua_insert(L, cache);                   /* code cache f code */
  lua_rawset(L, cache + 1);
  lua_pop(L, 1);                          /* the cache */
}

/*
** The id of environment table `idx` (see docs/serialization.md, "Environments"):
** a random 64-bit number given to the table the first time it is exported,
** kept in two weak tables of the state. A process forked afterwards inherits
** both, so it finds its own copy of the table under the same id; a process
** forked before does not know the id and binds the globals instead.
*/
static lua_Integer env_id(lua_State *L, int st, int idx) {
  idx = lua_absindex(L, idx);
  lua_getiuservalue(L, st, UV_ENV_IDS);
  lua_pushvalue(L, idx);
  if (lua_rawget(L, -2) == LUA_TNUMBER) {
    lua_Integer id = lua_tointeger(L, -1);
    lua_pop(L, 2);
    return id;
  }
  lua_pop(L, 1);
  uint64_t bits;
  int err = mp_random_bytes(&bits, sizeof bits);
  if (err != 0) luaL_error(L, "mp: cannot get random bytes for an environment id: %s", strerror(err));
  lua_Integer id = (lua_Integer)bits;
  lua_pushvalue(L, idx);
  lua_pushinteger(L, id);
  lua_rawset(L, -3);
  lua_pop(L, 1);
  lua_getiuservalue(L, st, UV_ENV_BY_ID);
  lua_pushvalue(L, idx);
  lua_rawseti(L, -2, id);
  lua_pop(L, 1);
  return id;
}

/* Writes the _ENV upvalue at idx: the globals, or an environment by id. */
static void put_env(enc *e, int idx) {
  lua_State *L = e->L;
  if (lua_type(L, idx) != LUA_TTABLE || lua_topointer(L, idx) == e->globals) {
    put_u8(e, T_GLOBALS);
    return;
  }
  put_tagged(e, T_ENV, (uint64_t)env_id(L, e->st, idx), 8);
}

static void encode_function(enc *e, int f, const void *p) {
  lua_State *L = e->L;
  if (lua_iscfunction(L, f)) {
    if (put_name(e, f, p, 1, 1)) return;
    refuse(e, f, " (a C function that is not a field of a loaded module)");
  }
  if (put_name(e, f, p, 1, 0)) return;
  enter(e);
  size_t off = e->b->len - e->base;
  pm_put(L, &e->s->memo, p, off);
  push_code(e, f);
  size_t len;
  const char *code = lua_tolstring(L, -1, &len);
  if (len > UINT32_MAX) enc_error(e, "function too large to send");
  put_tagged(e, T_FUNC, len, 4);
  put_bytes(e, code, len);
  lua_pop(L, 1);
  lua_Debug ar;
  lua_pushvalue(L, f);
  lua_getinfo(L, ">u", &ar);
  int nups = ar.nups;
  put_u8(e, (unsigned)nups);
  for (int i = 1; i <= nups; i++) {
    const char *name = lua_getupvalue(L, f, i);
    int up = lua_gettop(L);
    /*
    ** _ENV is where the function runs, not data: it goes as "the receiver's
    ** globals" or, for another environment, as that environment's id.
    */
    if (name != NULL && strcmp(name, "_ENV") == 0) {
      put_env(e, up);
      lua_pop(L, 1);
      continue;
    }
    void *id = lua_upvalueid(L, f, i);
    pm_slot *slot = pm_find(&e->s->memo, id);
    if (slot != NULL) {
      /* Shared with a closure sent earlier in this message: join them there too. */
      uint64_t packed = slot->val;
      size_t owner = (size_t)(packed >> 8);
      ((unsigned char *)e->b->data)[e->base + owner] |= T_SHARED;
      put_tagged(e, T_UPJOIN, owner, 8);
      put_u8(e, (unsigned)(packed & 0xFF));
      lua_pop(L, 1);
      continue;
    }
    pm_put(L, &e->s->memo, id, ((uint64_t)off << 8) | (unsigned)i);
    child(e, up, (seg){SEG_UPVALUE, 0, i, name});
    lua_pop(L, 1);
  }
  e->depth--;
}

/*
** An mp object (mp_travel.h): its class name, its description, the indexes
** of its fds in the out-of-band list, and the value that travels with it.
*/
static void encode_object(enc *e, int idx, const mp_class *c, const mp_travel *t) {
  lua_State *L = e->L;
  if (e->oob != NULL && e->oob->refuse != NULL) enc_error(e, lua_pushfstring(L, e->oob->refuse, c->tname));
  if (e->oob == NULL) {
    const char *msg = lua_pushfstring(L,
      "an %s cannot travel inside a message (a Queue item, a Pipe message, mp.dumps): "
      "pass it to the process as an argument of Process (or an upvalue of its target), "
      "or create it before the process starts (a Pool's workers inherit what exists when it starts)", c->tname);
    enc_error(e, msg);
  }
  const void *p = lua_topointer(L, idx);
  if (put_ref(e, p)) return;
  enter(e);
  pm_put(L, &e->s->memo, p, e->b->len - e->base);
  mp_travel_desc d;
  memset(&d, 0, sizeof d);
  int dep = t->export_obj(L, idx, &d);
  size_t nlen = strlen(c->tname);
  put_u8(e, T_OBJECT);
  put_u8(e, (unsigned)nlen);
  put_bytes(e, c->tname, nlen);
  put_u8(e, (unsigned)d.len);
  put_bytes(e, d.bytes, d.len);
  put_u8(e, (unsigned)d.nfds);
  for (int i = 0; i < d.nfds; i++) {
    uint64_t k = mp_oob_add(L, e->oob, d.fds[i]);
    put_raw(room(e, 4), k, 4);
    e->b->len += 4;
  }
  put_u8(e, (unsigned)dep);
  if (dep) {
    lua_pushliteral(L, "lock");
    int key = lua_gettop(L);
    child(e, key - 1, (seg){SEG_KEY, key, 0, NULL});
    lua_pop(L, 2);
  }
  e->depth--;
}

static void encode(enc *e, int idx) {
  lua_State *L = e->L;
  int type = lua_type(L, idx);
  if (put_scalar(e, idx, type)) return;
  need_state(e);
  switch (type) {
    case LUA_TTABLE: {
      const void *p = lua_topointer(L, idx);
      if (p == e->globals) { put_u8(e, T_GLOBALS); break; }
      if (put_ref(e, p) || put_name(e, idx, p, 0, 0)) break;
      encode_table(e, idx, p);
      break;
    }
    case LUA_TFUNCTION: {
      const void *p = lua_topointer(L, idx);
      if (put_ref(e, p)) break;
      encode_function(e, idx, p);
      break;
    }
    case LUA_TUSERDATA: case LUA_TLIGHTUSERDATA: {
      const mp_travel *t;
      const mp_class *c = mp_travel_class(L, idx, &t);
      if (c != NULL) { encode_object(e, idx, c, t); break; }
      if (put_name(e, idx, lua_topointer(L, idx), 1, 1)) break;
      refuse(e, idx, "");
      break;
    }
    default:
      refuse(e, idx, "");
  }
}

/*
** Encodes n values at idx; s and st: the state and its index, or NULL and 0 to
** fetch it when needed; oob: where mp objects' fds go, or NULL (refused).
*/
static void encode_values(lua_State *L, serial_state *s, int st, int idx, int n, mp_wbuf *b,
                          const char *root, mp_oob *oob) {
  idx = lua_absindex(L, idx);
  int top = lua_gettop(L);
  enc encoder;
  enc *e = &encoder;
  e->L = L;
  e->b = b;
  e->base = b->len;
  e->s = s;
  e->st = st;
  e->ready = 0;
  e->globals = NULL;
  e->names_fresh = e->names_rebuilt = 0;
  e->root = root != NULL ? root : "value";
  e->nroot = n;
  e->depth = 0;
  e->npath = 0;
  e->oob = oob;
  if (n < 0 || (lua_Unsigned)n > UINT32_MAX) luaL_error(L, "mp: bad value count");
  put_u8(e, FORMAT_VERSION);
  if (n < 0xFF) put_u8(e, (unsigned)n);
  else put_tagged(e, 0xFF, (uint64_t)n, 4);
  for (int k = 0; k < n; k++) {
    e->rootk = k + 1;
    encode(e, idx + k);
  }
  lua_settop(L, top);
}

void mp_serial_encode(lua_State *L, int idx, int n, mp_wbuf *b, const char *root) {
  encode_values(L, NULL, 0, idx, n, b, root, NULL);
}

/*
** A message of one integer, boolean, nil or string of up to 255 bytes (most
** queue items and pipe messages): written here, without encode_values' setup
** (its encoder struct, the path for error messages, restoring the stack),
** which costs more than the value. The bytes are the same. 0 when the value
** is anything else (nothing written).
*/
static int encode_scalar_message(lua_State *L, int idx, mp_wbuf *b) {
  int type = lua_type(L, idx);
  unsigned char *p;
  switch (type) {
    case LUA_TNUMBER: {
      if (!lua_isinteger(L, idx)) return 0;
      if (b->cap - b->len < 11) mp_wbuf_reserve(L, b, 11);
      p = (unsigned char *)b->data + b->len;
      b->len += 2 + put_integer_at(p + 2, lua_tointeger(L, idx));
      break;
    }
    case LUA_TSTRING: {
      size_t len;
      const char *str = lua_tolstring(L, idx, &len);
      if (len > UINT8_MAX) return 0;
      if (b->cap - b->len < 4 + len) mp_wbuf_reserve(L, b, 4 + len);
      p = (unsigned char *)b->data + b->len;
      put_str8_at(p + 2, str, len);
      b->len += 4 + len;
      break;
    }
    case LUA_TBOOLEAN: case LUA_TNIL:
      if (b->cap - b->len < 3) mp_wbuf_reserve(L, b, 3);
      p = (unsigned char *)b->data + b->len;
      p[2] = type == LUA_TNIL ? T_NIL : lua_toboolean(L, idx) ? T_TRUE : T_FALSE;
      b->len += 3;
      break;
    default:
      return 0;
  }
  p[0] = FORMAT_VERSION;
  p[1] = 1;                                 /* one value */
  return 1;
}

void mp_serial_encode_at(lua_State *L, int st, int idx, int n, mp_wbuf *b, const char *root) {
  if (n == 1 && encode_scalar_message(L, idx, b)) return;
  encode_values(L, lua_touserdata(L, st), st, idx, n, b, root, NULL);
}

void mp_serial_encode_oob(lua_State *L, int idx, int n, mp_wbuf *b, const char *root, mp_oob *oob) {
  encode_values(L, NULL, 0, idx, n, b, root, oob);
}

/*
** t[i..j] as j-i+1 values, read from the table's array part (see "Tables:
** reading Lua 5.4's layout" above); the bytes are those mp_serial_encode
** writes for the same values on the stack. Only plain values (numbers,
** booleans, nil, strings): at anything else, or when the layout cannot be
** read, b is left as it was and 0 returned (the caller goes through the
** stack). For the pool's map chunks: no per-item API call.
*/
int mp_serial_encode_slice(lua_State *L, int t, lua_Integer i, lua_Integer j, mp_wbuf *b) {
  serial_state *s = push_state(L);
  lua_pop(L, 1);
  lua_Integer n = j - i + 1;
  if (!s->peek || lua_type(L, t) != LUA_TTABLE || i < 1 || n < 1 || n > INT_MAX) return 0;
  const lua54_table_head *h = lua_topointer(L, t);
  if ((lua_Unsigned)j > table_asize(h)) return 0;
  enc encoder;                         /* only the fields the plain writers use */
  enc *e = &encoder;
  e->L = L;
  e->b = b;
  e->base = b->len;
  e->s = s;
  put_u8(e, FORMAT_VERSION);
  if (n < 0xFF) put_u8(e, (unsigned)n);
  else put_tagged(e, 0xFF, (uint64_t)n, 4);
  for (const lua54_tvalue *v = h->array + (i - 1), *end = h->array + j; v < end; v++) {
    if (!is_plain_tag(v->tt)) { b->len = e->base; return 0; }
    encode_slot(e, &v->v, v->tt);      /* (no Lua code runs: the array stays where it is) */
  }
  return 1;
}

/*
** Before a fork (core.spawn calls this in the parent): the environments of the
** Lua functions on the calling thread's stack get their ids now, so that the
** child, which inherits the id tables, can find its copy of each. This is what
** makes a function defined in a busted spec file (whose _ENV is busted's
** environment, on the stack while the spec creates its pool) run in a worker
** with that environment.
*/
void mp_serial_before_fork(lua_State *L) {
  luaL_checkstack(L, 8, NULL);
  push_state(L);
  int st = lua_gettop(L);
  lua_rawgeti(L, LUA_REGISTRYINDEX, LUA_RIDX_GLOBALS);
  const void *globals = lua_topointer(L, -1);
  lua_pop(L, 1);
  lua_Debug ar;
  for (int level = 0; lua_getstack(L, level, &ar); level++) {
    lua_getinfo(L, "f", &ar);
    int f = lua_gettop(L);
    if (!lua_iscfunction(L, f)) {
      const char *name;
      for (int i = 1; (name = lua_getupvalue(L, f, i)) != NULL; i++) {
        if (strcmp(name, "_ENV") == 0) {
          if (lua_type(L, -1) == LUA_TTABLE && lua_topointer(L, -1) != globals)
            env_id(L, st, -1);
          lua_pop(L, 1);
          break;
        }
        lua_pop(L, 1);
      }
    }
    lua_settop(L, st);
  }
  lua_pop(L, 1);
}

/* ------------------------------------------------------------------------ */
/* Decoder: every read is checked against the end of the input.              */

typedef struct dec {
  lua_State *L;
  const unsigned char *start, *p, *end;
  size_t pending;          /* elements announced by open containers, not yet read */
  serial_state *s;         /* NULL until fetched */
  int st;                  /* index of the state userdata: a slot (nil until fetched) or an upvalue */
  int memo;                /* slot: offset -> object, made when an object is shared */
  int keys;                /* slot: the UV_KEYS table, fetched with the first key */
  int keys_ready;
  int depth;
  const int *fds;          /* the fds that came with the message (mp objects), or NULL */
  size_t nfds;
} dec;

static int dec_error(dec *d, const char *msg) {
  return luaL_error(d->L, "mp.loads: %s", msg);
}

#define truncated(d) dec_error(d, "truncated message")

static inline size_t left(dec *d) { return (size_t)(d->end - d->p); }

static inline uint64_t load_le(const unsigned char *p, int n) {
  uint64_t v = 0;
  memcpy(&v, p, (size_t)n);
  return v;
}

static inline uint64_t get_num(dec *d, int n) {
  if (left(d) < (size_t)n) truncated(d);
  uint64_t v = load_le(d->p, n);
  d->p += n;
  return v;
}

static inline const char *get_bytes(dec *d, uint64_t len) {
  if (len > left(d)) truncated(d);
  const char *s = (const char *)d->p;
  d->p += len;
  return s;
}

/* Announces n more elements; each takes at least one byte, so this bounds allocations. */
static void announce(dec *d, uint64_t n) {
  if (n > left(d) || d->pending > left(d) - n) truncated(d);
  d->pending += n;
}

/* Pushes one value; returns IS_NIL for nil, IS_NAN for a NaN, else 0 (cheaper than lua_type). */
enum { IS_NIL = 1, IS_NAN = 2 };
static int decode(dec *d);

static serial_state *dec_state(dec *d) {
  if (d->s != NULL) return d->s;
  if (lua_type(d->L, d->st) != LUA_TUSERDATA) {
    push_state(d->L);
    lua_replace(d->L, d->st);
  }
  return d->s = lua_touserdata(d->L, d->st);
}

static void dec_enter(dec *d) {
  if (++d->depth > MAX_DEPTH) dec_error(d, "nesting deeper than 200 levels");
  luaL_checkstack(d->L, 8, "mp.loads: message nesting");
}

static void dec_remember(dec *d, size_t off, int idx) {
  lua_State *L = d->L;
  if (lua_type(L, d->memo) == LUA_TNIL) {
    lua_newtable(L);
    lua_replace(L, d->memo);
  }
  lua_pushvalue(L, idx);
  lua_rawseti(L, d->memo, (lua_Integer)off);
}

/* Pushes the object defined at offset off; raises if there is none (yet). */
static void push_object(dec *d, uint64_t off) {
  lua_State *L = d->L;
  if (lua_type(L, d->memo) != LUA_TTABLE || off > (uint64_t)LUA_MAXINTEGER ||
      lua_rawgeti(L, d->memo, (lua_Integer)off) == LUA_TNIL)
    dec_error(d, "reference to an undefined object");
}

/*
** Pushes the value at p if it is one of the common scalars, checking its
** length against end, and returns the position after it; returns NULL,
** pushing nothing, when decode() must handle it. The loops below keep their
** read position in a local and call this, which spares them a store and a
** reload of d->p around every Lua API call.
*/
static inline __attribute__((always_inline))
const unsigned char *scalar_at(lua_State *L, const unsigned char *p, const unsigned char *end) {
  size_t n = (size_t)(end - p);
  if (n < 1) return NULL;
  switch (p[0]) {
    case T_NIL: lua_pushnil(L); return p + 1;
    case T_FALSE: lua_pushboolean(L, 0); return p + 1;
    case T_TRUE: lua_pushboolean(L, 1); return p + 1;
    case T_INT8:
      if (n < 2) return NULL;
      lua_pushinteger(L, (int8_t)p[1]);
      return p + 2;
    case T_INT32: {
      if (n < 5) return NULL;
      int32_t v;
      memcpy(&v, p + 1, 4);
      lua_pushinteger(L, v);
      return p + 5;
    }
    case T_INT64: {
      if (n < 9) return NULL;
      int64_t v;
      memcpy(&v, p + 1, 8);
      lua_pushinteger(L, (lua_Integer)v);
      return p + 9;
    }
    case T_FLOAT: {
      if (n < 9) return NULL;
      double v;
      memcpy(&v, p + 1, 8);
      lua_pushnumber(L, (lua_Number)v);
      return p + 9;
    }
    case T_STR8:
      if (n < 2 || n - 2 < p[1]) return NULL;
      lua_pushlstring(L, (const char *)p + 2, p[1]);
      return p + 2 + p[1];
    default:
      return NULL;
  }
}

/* Pushes the next value: a scalar inline, anything else through decode(). */
static inline __attribute__((always_inline)) void decode_value(dec *d) {
  const unsigned char *q = scalar_at(d->L, d->p, d->end);
  if (q != NULL) d->p = q;
  else decode(d);
}

/*
** Pushes the string key at p, a T_STR8 of 1..KEY_CACHE_MAXLEN bytes that the
** caller has checked lies before end, and returns the position after it. A
** record's keys are a few short strings sent again and again; lua_pushlstring
** hashes and interns each one every time, a lookup in the key cache costs a
** third of that (see serial_state.keys). d->keys must hold the UV_KEYS table.
*/
static inline __attribute__((always_inline))
const unsigned char *key_at(dec *d, const unsigned char *p, const unsigned char *end) {
  lua_State *L = d->L;
  size_t len = p[1];
  const unsigned char *s = p + 2;
  uint64_t a = 0, b = 0;
  if (len >= 8) {
    memcpy(&a, s, 8);
    memcpy(&b, s + len - 8, 8);
  } else if (end - s >= 8) {                /* 8 bytes readable: mask off what follows */
    memcpy(&a, s, 8);
    a &= ~(uint64_t)0 >> (64 - 8 * len);
  } else {
    for (size_t i = 0; i < len; i++) a |= (uint64_t)s[i] << (8 * i);
  }
  uint64_t h = a ^ (a >> 29) ^ b ^ (b >> 31) ^ len;     /* fold, then Fibonacci hashing */
  unsigned i = (unsigned)((h * 0x9E3779B97F4A7C15ull) >> 57) & (KEY_CACHE - 1);
  key_slot *k = &d->s->keys[i];
  if (k->len == len && k->a == a && k->b == b &&
      (len <= 16 || memcmp(k->s + 8, s + 8, len - 16) == 0)) {
    lua_rawgeti(L, d->keys, (lua_Integer)i + 1);
    return s + len;
  }
  lua_pushlstring(L, (const char *)s, len);
  lua_pushvalue(L, -1);
  lua_rawseti(L, d->keys, (lua_Integer)i + 1);   /* an array slot: never allocates */
  k->a = a;
  k->b = b;
  k->s = lua_tostring(L, -1);
  k->len = len;
  return s + len;
}

/* Makes d->keys hold the key cache's table. */
static void need_keys(dec *d) {
  if (d->keys_ready) return;
  dec_state(d);
  lua_getiuservalue(d->L, d->st, UV_KEYS);
  lua_replace(d->L, d->keys);
  d->keys_ready = 1;
}

/*
** Lua has no API call that stores many values into a table at once, but its
** VM has an instruction that does: OP_SETLIST, which a table constructor
** `{...}` runs over all its arguments in one C loop. build_array calls such a
** constructor (on the build thread, where no hook runs) with the n values on
** top of the stack, and pushes the table it returns: about a third of the
** cost of n lua_rawseti calls. Tables that can be referenced from inside
** themselves (SHARED) must exist before their elements and take the usual path.
*/
#define BUILD_MIN 16
#define BUILD_MAX (1 << 16)

static const char builder_code[] = "return {...}";

static int can_build(dec *d, uint64_t narr) {
  if (narr < BUILD_MIN || narr > BUILD_MAX) return 0;
  serial_state *s = dec_state(d);
  if (s->build_busy || d->L == s->build) return 0;
  return lua_checkstack(d->L, (int)narr + 8);
}

static void build_array(dec *d, int n) {
  lua_State *L = d->L;
  serial_state *s = d->s;
  lua_State *co = s->build;
  if (co == NULL) {
    co = helper_thread(L, d->st, UV_BUILD, builder_code);
    s->build = co;
  }
  if (!lua_checkstack(co, n + 8)) luaL_error(L, "mp.loads: not enough memory");
  lua_pushvalue(co, 1);
  lua_xmove(L, co, n);
  s->build_busy = 1;
  int status = lua_pcall(co, n, 1, 0);
  s->build_busy = 0;
  lua_xmove(co, L, 1);                   /* the table, or the error */
  if (status != LUA_OK) lua_error(L);
}

static void decode_table(dec *d, int tag, size_t off) {
  lua_State *L = d->L;
  dec_enter(d);
  int mt = 0;
  if ((tag & ~T_SHARED) == T_CLASS) {
    size_t len = (size_t)get_num(d, 1);
    const char *name = get_bytes(d, len);
    dec_state(d);
    lua_getiuservalue(L, d->st, UV_CLASS_BY_NAME);
    lua_pushlstring(L, name, len);
    if (lua_rawget(L, -2) != LUA_TTABLE) {
      lua_pushlstring(L, name, len);
      luaL_error(L, "mp.loads: class '%s' is not registered in this process", lua_tostring(L, -1));
    }
    lua_remove(L, -2);
    mt = lua_gettop(L);
  }
  uint64_t narr = get_num(d, 4), nhash = get_num(d, 4);
  announce(d, narr + 2 * nhash);
  if (narr > INT_MAX || nhash > INT_MAX) truncated(d);
  int t;
  /*
  ** d->pending counts the elements announced and not yet started; it is set
  ** exactly before each decode() call (which may announce more), and the
  ** scalars read inline in between need not update it.
  */
  size_t pending = d->pending;
  const unsigned char *p = d->p, *end = d->end;
  if (!(tag & T_SHARED) && nhash == 0 && can_build(d, narr)) {
    for (uint64_t i = 0; i < narr; i++) {
      const unsigned char *q = scalar_at(L, p, end);
      if (q == NULL) {
        d->p = p;
        d->pending = pending - (size_t)i - 1;
        decode(d);
        q = d->p;
      }
      p = q;
    }
    d->p = p;
    d->pending = pending - narr;
    build_array(d, (int)narr);
    t = lua_gettop(L);
  } else {
    lua_createtable(L, (int)narr, (int)nhash);
    t = lua_gettop(L);
    if (tag & T_SHARED) dec_remember(d, off, t);
    for (uint64_t i = 1; i <= narr; i++) {
      if (p < end && *p == T_NIL) {          /* a hole: nothing to store */
        p++;
        continue;
      }
      const unsigned char *q = scalar_at(L, p, end);
      if (q == NULL) {
        d->p = p;
        d->pending = pending - (size_t)i;
        decode(d);
        q = d->p;
      }
      p = q;
      lua_rawseti(L, t, (lua_Integer)i);
    }
    if (nhash > 0) need_keys(d);
    for (uint64_t i = 0; i < nhash; i++) {
      if (end - p >= 3 && p[0] == T_STR8 && p[1] - 1u < KEY_CACHE_MAXLEN &&
          (size_t)(end - p) - 2 >= p[1]) {
        p = key_at(d, p, end);
      } else {
        d->p = p;
        d->pending = pending - narr - 2 * (size_t)i - 1;
        if (decode(d) != 0) dec_error(d, "invalid table key (nil or NaN)");
        p = d->p;
      }
      const unsigned char *q = scalar_at(L, p, end);
      if (q == NULL) {
        d->p = p;
        d->pending = pending - narr - 2 * (size_t)i - 2;
        decode(d);
        q = d->p;
      }
      p = q;
      lua_rawset(L, t);
    }
    d->p = p;
    d->pending = pending - narr - 2 * nhash;
  }
  if (mt) {
    lua_pushvalue(L, mt);
    lua_setmetatable(L, t);
    lua_remove(L, mt);
  }
  d->depth--;
}

/* Pushes the receiver's copy of the environment with this id, or the globals. */
static void push_env(dec *d, lua_Integer id) {
  lua_State *L = d->L;
  dec_state(d);
  lua_getiuservalue(L, d->st, UV_ENV_BY_ID);
  if (lua_rawgeti(L, -1, id) != LUA_TTABLE) {
    lua_pop(L, 1);
    lua_rawgeti(L, LUA_REGISTRYINDEX, LUA_RIDX_GLOBALS);
  }
  lua_remove(L, -2);
}

static void decode_function(dec *d, int tag, size_t off) {
  lua_State *L = d->L;
  dec_enter(d);
  size_t len = (size_t)get_num(d, 4);
  const char *code = get_bytes(d, len);
  if (len < MAC_LEN) dec_error(d, "corrupt function");
  serial_state *s = dec_state(d);
  uint64_t mac = mp_siphash(s->key, code, len - MAC_LEN), got = 0;
  for (size_t i = MAC_LEN; i-- > 0;) got = (got << 8) | (unsigned char)code[len - MAC_LEN + i];
  /*
  ** lua_load trusts bytecode: corrupt bytecode can crash the interpreter. Only
  ** bytecode authenticated with this process family's key is loaded.
  */
  if (mac != got)
    dec_error(d, "function bytecode failed authentication (not sent by a process of this family)");
  if (luaL_loadbufferx(L, code, len - MAC_LEN, "=(mp function)", "b") != LUA_OK)
    luaL_error(L, "mp.loads: cannot load a function: %s", lua_tostring(L, -1));
  int f = lua_gettop(L);
  if (tag & T_SHARED) dec_remember(d, off, f);
  unsigned nups = (unsigned)get_num(d, 1);
  announce(d, nups);
  if ((nups > 0 && lua_getupvalue(L, f, (int)nups) == NULL) ||
      lua_getupvalue(L, f, (int)nups + 1) != NULL)
    dec_error(d, "corrupt function (wrong number of upvalues)");
  lua_settop(L, f);
  for (unsigned i = 1; i <= nups; i++) {
    d->pending--;
    if (left(d) > 0 && *d->p == T_UPJOIN) {
      d->p++;
      uint64_t owner = get_num(d, 8);
      unsigned n = (unsigned)get_num(d, 1);
      push_object(d, owner);
      if (lua_type(L, -1) != LUA_TFUNCTION || lua_iscfunction(L, -1) || n == 0 ||
          lua_getupvalue(L, -1, (int)n) == NULL)
        dec_error(d, "corrupt function (bad shared upvalue)");
      lua_pop(L, 1);
      lua_upvaluejoin(L, f, (int)i, -1, (int)n);
      lua_pop(L, 1);
    } else if (left(d) > 0 && *d->p == T_ENV) {
      d->p++;
      push_env(d, (lua_Integer)get_num(d, 8));
      lua_setupvalue(L, f, (int)i);
    } else {
      decode(d);
      lua_setupvalue(L, f, (int)i);
    }
  }
  d->depth--;
}

static void decode_name(dec *d, int tag) {
  lua_State *L = d->L;
  size_t len = (size_t)get_num(d, 4);
  const char *mod = get_bytes(d, len);
  lua_getfield(L, LUA_REGISTRYINDEX, LUA_LOADED_TABLE);
  lua_pushlstring(L, mod, len);
  int t = lua_type(L, -2) == LUA_TTABLE ? lua_rawget(L, -2) : LUA_TNIL;
  if (t == LUA_TNIL) {
    lua_pushlstring(L, mod, len);
    luaL_error(L, "mp.loads: module '%s' is not loaded in this process", lua_tostring(L, -1));
  }
  lua_remove(L, -2);
  if (tag == T_FIELD) {
    size_t flen = (size_t)get_num(d, 4);
    const char *field = get_bytes(d, flen);
    if (t != LUA_TTABLE) {
      lua_pushlstring(L, mod, len);
      luaL_error(L, "mp.loads: module '%s' is not a table in this process", lua_tostring(L, -1));
    }
    lua_pushlstring(L, field, flen);
    if (lua_rawget(L, -2) == LUA_TNIL) {
      lua_pushlstring(L, mod, len);
      lua_pushlstring(L, field, flen);
      luaL_error(L, "mp.loads: '%s.%s' does not exist in this process", lua_tostring(L, -2), lua_tostring(L, -1));
    }
    lua_remove(L, -2);
  }
}

/* An mp object: its class builds a new one on the fds that came with the message. */
static void decode_object(dec *d, int tag, size_t off) {
  lua_State *L = d->L;
  dec_enter(d);
  size_t nlen = (size_t)get_num(d, 1);
  const char *name = get_bytes(d, nlen);
  const mp_travel *t;
  const mp_class *c = mp_travel_find(name, nlen, &t);
  if (c == NULL) {
    lua_pushlstring(L, name, nlen);
    luaL_error(L, "mp.loads: unknown kind of mp object '%s'", lua_tostring(L, -1));
  }
  mp_travel_desc desc;
  memset(&desc, 0, sizeof desc);
  desc.len = (size_t)get_num(d, 1);
  if (desc.len > MP_TRAVEL_DESC) dec_error(d, "corrupt mp object");
  memcpy(desc.bytes, get_bytes(d, desc.len), desc.len);
  desc.nfds = (int)get_num(d, 1);
  if (desc.nfds > MP_TRAVEL_FDS) dec_error(d, "corrupt mp object");
  for (int i = 0; i < desc.nfds; i++) {
    uint64_t k = get_num(d, 4);
    if (d->fds == NULL)
      luaL_error(L, "mp.loads: an %s arrived without its fds (it cannot travel this way)", c->tname);
    if (k >= d->nfds) dec_error(d, "corrupt mp object (fd index)");
    desc.fds[i] = d->fds[k];
  }
  int dep = (int)get_num(d, 1);
  if (dep > 1) dec_error(d, "corrupt mp object");
  if (dep) {
    announce(d, 1);
    d->pending--;
    decode(d);
  }
  t->import_obj(L, c, &desc, dep);
  if (tag & T_SHARED) dec_remember(d, off, lua_gettop(L));
  d->depth--;
}

static int decode(dec *d) {
  lua_State *L = d->L;
  if (left(d) < 1) truncated(d);
  size_t off = (size_t)(d->p - d->start);
  int tag = *d->p++;
  switch (tag) {
    case T_NIL: lua_pushnil(L); return IS_NIL;
    case T_FALSE: lua_pushboolean(L, 0); break;
    case T_TRUE: lua_pushboolean(L, 1); break;
    case T_INT8: lua_pushinteger(L, (int8_t)get_num(d, 1)); break;
    case T_INT32: lua_pushinteger(L, (int32_t)get_num(d, 4)); break;
    case T_INT64: lua_pushinteger(L, (lua_Integer)get_num(d, 8)); break;
    case T_FLOAT: {
      uint64_t bits = get_num(d, 8);
      double v;
      memcpy(&v, &bits, 8);
      lua_pushnumber(L, (lua_Number)v);
      return v != v ? IS_NAN : 0;
    }
    case T_STR8: case T_STR32: case T_STR64: {
      uint64_t len = get_num(d, tag == T_STR8 ? 1 : tag == T_STR32 ? 4 : 8);
      const char *s = get_bytes(d, len);
      lua_pushlstring(L, s, (size_t)len);
      break;
    }
    case T_TABLE: case T_TABLE | T_SHARED: case T_CLASS: case T_CLASS | T_SHARED:
      decode_table(d, tag, off);
      break;
    case T_FUNC: case T_FUNC | T_SHARED:
      decode_function(d, tag, off);
      break;
    case T_REF: {
      uint64_t target = get_num(d, 8);
      if (target >= off) dec_error(d, "reference to an undefined object");
      push_object(d, target);
      break;
    }
    case T_GLOBALS: lua_rawgeti(L, LUA_REGISTRYINDEX, LUA_RIDX_GLOBALS); break;
    case T_MODULE: case T_FIELD: decode_name(d, tag); break;
    case T_OBJECT: case T_OBJECT | T_SHARED: decode_object(d, tag, off); break;
    default:                     /* T_UPJOIN and T_ENV are valid as upvalues only */
      luaL_error(L, "mp.loads: corrupt message (bad tag %d at byte %I)", tag, (lua_Integer)off);
  }
  return 0;
}

/*
** Decodes one message. With s NULL (transports), the state and the key cache
** are fetched when needed into stack slots; mp.loads passes them as its
** upvalues (indexes st and keys). fds: what came with it for mp objects, or NULL.
*/
static int decode_values(lua_State *L, serial_state *s, int st, int keys, const char *data, size_t len,
                         const int *fds, size_t nfds) {
  dec d;
  d.L = L;
  d.fds = fds;
  d.nfds = nfds;
  d.start = d.p = (const unsigned char *)data;
  d.end = d.start + len;
  d.pending = 0;
  d.depth = 0;
  d.s = s;
  d.st = st;
  d.keys = keys;
  d.keys_ready = keys != 0;
  d.memo = 0;
  if (len < 1) dec_error(&d, "empty message");
  if (d.start[0] != FORMAT_VERSION)
    luaL_error(L, "mp.loads: unsupported message format version %d (expected %d)",
               d.start[0], FORMAT_VERSION);
  d.p++;
  uint64_t n = get_num(&d, 1);
  if (n == 0xFF) n = get_num(&d, 4);
  announce(&d, n);
  if (n > INT_MAX - 20) truncated(&d);
  luaL_checkstack(L, (int)n + 10, "mp.loads: too many values");
  int slots = 0, nslots = 0;     /* where the memo (and state and key) slots are, once pushed */
  for (uint64_t i = 0; i < n; i++) {
    /*
    ** Only tables and functions use the slots, and the first of them is
    ** always a root value: push the slots just below it.
    */
    if (slots == 0 && left(&d) > 0 && *d.p >= T_TABLE && *d.p != T_GLOBALS &&
        *d.p != T_MODULE && *d.p != T_FIELD) {
      slots = lua_gettop(L) + 1;
      lua_pushnil(L);            /* the memo, made when an object is shared */
      d.memo = slots;
      if (s == NULL) {
        lua_pushnil(L);          /* the state, fetched when a class, function or key needs it */
        lua_pushnil(L);          /* the key cache */
        d.st = slots + 1;
        d.keys = slots + 2;
        nslots = 3;
      } else {
        lua_pushvalue(L, keys);  /* a stack slot reads faster than an upvalue */
        d.keys = slots + 1;
        nslots = 2;
      }
    }
    d.pending--;
    decode_value(&d);
  }
  if (d.p != d.end) dec_error(&d, "trailing bytes after the message");
  if (slots != 0) {
    lua_rotate(L, slots, -nslots);   /* the slots to the top */
    lua_pop(L, nslots);
  }
  return (int)n;
}

int mp_serial_decode(lua_State *L, const char *data, size_t len) {
  /* A message of one scalar (see encode_scalar_message) without decode_values' setup. */
  const unsigned char *p = (const unsigned char *)data, *end = p + len;
  if (len >= 3 && p[0] == FORMAT_VERSION && p[1] == 1 && lua_checkstack(L, 1)) {
    const unsigned char *q = scalar_at(L, p + 2, end);
    if (q == end) return 1;
    if (q != NULL) lua_pop(L, 1);           /* trailing bytes: decode_values says so */
  }
  return decode_values(L, NULL, 0, 0, data, len, NULL, 0);
}

int mp_serial_decode_oob(lua_State *L, const char *data, size_t len, const int *fds, size_t nfds) {
  return decode_values(L, NULL, 0, 0, data, len, fds, nfds);
}

/*
** A message of n plain values decoded straight into t[off+1 .. off+n], for
** the pool's results. Numbers, booleans and nil are written into the slots
** of t's array part (see "Tables: reading Lua 5.4's layout"; values the
** collector does not follow, so no barrier is due); short strings go through
** lua_rawseti, which cannot move the array part of a range it already covers.
** Anything else, a message that is not exactly n values, or a range beyond
** the array part: 0, and the caller decodes the message as usual (writing
** again the slots written here). Every length is checked against len.
*/
int mp_serial_decode_slice(lua_State *L, const char *data, size_t len, int t, lua_Integer off, lua_Integer n) {
  serial_state *s = push_state(L);
  lua_pop(L, 1);
  if (!s->peek || lua_type(L, t) != LUA_TTABLE || off < 0 || n < 1 || n > INT_MAX) return 0;
  t = lua_absindex(L, t);
  const lua54_table_head *h = lua_topointer(L, t);
  if ((lua_Unsigned)off + (lua_Unsigned)n > table_asize(h)) return 0;
  const unsigned char *p = (const unsigned char *)data, *end = p + len;
  if (len < 2 || p[0] != FORMAT_VERSION) return 0;
  uint32_t count = p[1];
  p += 2;
  if (count == 0xFF) {
    if (end - p < 4) return 0;
    memcpy(&count, p, 4);
    p += 4;
  }
  if ((lua_Integer)count != n) return 0;
  for (lua_Integer k = 0; k < n; k++) {
    size_t left = (size_t)(end - p);
    lua54_tvalue *v = &h->array[off + k];
    if (left < 1) return 0;
    switch (p[0]) {
      case T_NIL: v->tt = V_NIL; p += 1; break;
      case T_FALSE: v->tt = V_FALSE; p += 1; break;
      case T_TRUE: v->tt = V_TRUE; p += 1; break;
      case T_INT8:
        if (left < 2) return 0;
        v->v.i = (int8_t)p[1];
        v->tt = V_INT;
        p += 2;
        break;
      case T_INT32: {
        if (left < 5) return 0;
        int32_t x;
        memcpy(&x, p + 1, 4);
        v->v.i = x;
        v->tt = V_INT;
        p += 5;
        break;
      }
      case T_INT64: case T_FLOAT: {
        if (left < 9) return 0;
        int64_t x;
        memcpy(&x, p + 1, 8);
        if (p[0] == T_INT64) { v->v.i = (lua_Integer)x; v->tt = V_INT; }
        else { double d; memcpy(&d, &x, 8); v->v.n = (lua_Number)d; v->tt = V_FLOAT; }
        p += 9;
        break;
      }
      case T_STR8:
        if (left < 2 || left - 2 < p[1]) return 0;
        lua_pushlstring(L, (const char *)p + 2, p[1]);
        lua_rawseti(L, t, off + k + 1);
        p += 2 + p[1];
        break;
      default:
        return 0;
    }
  }
  return p == end;
}

int mp_serial_peek(lua_State *L, int on) {
  serial_state *s = push_state(L);
  if (on >= 0) s->peek = on && s->peek_ok;
  lua_pop(L, 1);
  return s->peek;
}

/* ------------------------------------------------------------------------ */
/* Lua API: mp.core.dumps, loads, register_class                             */

/*
** Upvalue 1 of these functions is the state userdata, upvalue 2 its key cache
** table (UV_KEYS): no registry or user value lookup per call.
*/
#define STATE_UPVALUE lua_upvalueindex(1)
#define KEYS_UPVALUE lua_upvalueindex(2)

static int core_dumps(lua_State *L) {
  int n = lua_gettop(L);
  serial_state *s = lua_touserdata(L, STATE_UPVALUE);
  mp_wbuf *b = &s->scratch;
  if (b->cap > SCRATCH_KEEP) {             /* as mp_serial_scratch */
    free(b->data);
    b->data = NULL;
    b->cap = 0;
  }
  b->len = 0;
  encode_values(L, s, STATE_UPVALUE, 1, n, b, "value", NULL);
  lua_pushlstring(L, b->data, b->len);
  if (b->cap > SCRATCH_KEEP) {             /* the message now lives in the string */
    free(b->data);
    b->data = NULL;
    b->len = b->cap = 0;
  }
  return 1;
}

static int core_loads(lua_State *L) {
  size_t len;
  const char *data = luaL_checklstring(L, 1, &len);
  return decode_values(L, lua_touserdata(L, STATE_UPVALUE), STATE_UPVALUE, KEYS_UPVALUE, data, len, NULL, 0);
}

/*
** register_class(name, mt): tables whose metatable is mt travel with the class
** name and get the receiver's metatable registered under the same name. Both
** sides must register (typically before forking). Registering a name again
** replaces its metatable.
*/
static int core_register_class(lua_State *L) {
  size_t len;
  luaL_checklstring(L, 1, &len);
  luaL_argcheck(L, len > 0 && len <= 255, 1, "class name must be 1 to 255 bytes long");
  luaL_checktype(L, 2, LUA_TTABLE);
  lua_settop(L, 2);
  lua_getiuservalue(L, STATE_UPVALUE, UV_CLASS_BY_NAME);   /* 3 */
  lua_getiuservalue(L, STATE_UPVALUE, UV_CLASS_BY_MT);     /* 4 */
  lua_pushvalue(L, 1);
  if (lua_rawget(L, 3) == LUA_TTABLE) {          /* forget the old metatable's name */
    lua_pushnil(L);
    lua_rawset(L, 4);
  } else {
    lua_pop(L, 1);
  }
  lua_pushvalue(L, 2);
  if (lua_rawget(L, 4) == LUA_TSTRING) {         /* and this metatable's old name */
    lua_pushnil(L);
    lua_rawset(L, 3);
  } else {
    lua_pop(L, 1);
  }
  lua_pushvalue(L, 1);
  lua_pushvalue(L, 2);
  lua_rawset(L, 3);
  lua_pushvalue(L, 2);
  lua_pushvalue(L, 1);
  lua_rawset(L, 4);
  lua_settop(L, 2);
  return 1;
}

/*
** core.serial_key([key]) --> the family key (before the change). With a key,
** this process takes it: processes that did not fork from one another (the
** ranks of an MPI job: mp.mpi sends rank 0's key with each pool's START) then
** load each other's functions. Only a process that can already run Lua code
** here can call it.
*/
static int core_serial_key(lua_State *L) {
  size_t len = 0;
  const char *k = luaL_optlstring(L, 1, NULL, &len);
  lua_settop(L, 1);
  serial_state *s = push_state(L);
  luaL_argcheck(L, k == NULL || len == sizeof s->key, 1, "key of the wrong length");
  lua_pushlstring(L, (const char *)s->key, sizeof s->key);
  if (k != NULL) memcpy(s->key, k, len);
  return 1;
}

void mp_serial_open(lua_State *L) {
  static const luaL_Reg funcs[] = {
    {"serial_key", core_serial_key},
    {"dumps", core_dumps},
    {"loads", core_loads},
    {"register_class", core_register_class},
    {NULL, NULL}
  };
  /* The key is made now, before any fork, so that the whole family shares it. */
  push_state(L);
  lua_getiuservalue(L, -1, UV_KEYS);
  luaL_setfuncs(L, funcs, 2);
}

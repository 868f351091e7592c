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
** scratch buffer, the bytecode MAC key and, in its user values, the caches.
*/
#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <lauxlib.h>

#include "serial.h"
#include "engine/siphash.h"

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "the wire format is little-endian; add byte swapping for this host"
#endif

#define FORMAT_VERSION 1
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
  T_FIELD      /* len:u32 name len:u32 field: package.loaded[name][field] */
};
#define T_SHARED 0x80

/* Registry key of the per-state userdata; its address is the key. */
static const char state_key = 0;

/* User values of the state userdata. */
enum { UV_FCACHE = 1, UV_NAMES, UV_CLASS_BY_MT, UV_CLASS_BY_NAME, UV_MEMO, UV_COUNT = UV_MEMO };
#define MEMO_REUSE 64         /* a memo with more entries is replaced, not cleared */

typedef struct serial_state {
  mp_wbuf scratch;
  unsigned char key[MP_SIPHASH_KEYLEN];
  lua_Integer loaded_count;    /* entries of package.loaded when UV_NAMES was built; -1: none */
  size_t memo_used;            /* entries put in UV_MEMO since it was last emptied */
} serial_state;

/* ------------------------------------------------------------------------ */
/* Buffers and state                                                         */

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
  return 0;
}

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
  /* Functions are cached weakly: the cache must not keep them alive. */
  lua_newtable(L);
  lua_createtable(L, 0, 1);
  lua_pushliteral(L, "k");
  lua_setfield(L, -2, "__mode");
  lua_setmetatable(L, -2);
  lua_setiuservalue(L, -2, UV_FCACHE);
  lua_newtable(L);
  lua_setiuservalue(L, -2, UV_CLASS_BY_MT);
  lua_newtable(L);
  lua_setiuservalue(L, -2, UV_CLASS_BY_NAME);
  lua_pushvalue(L, -1);
  lua_rawsetp(L, LUA_REGISTRYINDEX, &state_key);
  return s;
}

mp_wbuf *mp_serial_scratch(lua_State *L) {
  serial_state *s = push_state(L);
  lua_pop(L, 1);                           /* the registry keeps it alive */
  mp_wbuf *b = &s->scratch;
  if (b->cap > SCRATCH_KEEP) {             /* don't hold on to a huge message's memory */
    free(b->data);
    b->data = NULL;
    b->cap = 0;
  }
  b->len = 0;
  return b;
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
  serial_state *s;
  int st;                  /* stack index of the state userdata */
  int memo;                /* stack index of object -> offset (nil until needed) */
  int memo_ready;          /* memo fetched and emptied for this message */
  int names;               /* stack index of value -> encoded name (nil until needed) */
  int names_loaded;        /* e->names holds the map */
  int names_fresh;         /* names checked against package.loaded in this call */
  int names_rebuilt;       /* names rebuilt in this call */
  const char *root;
  int nroot, rootk;        /* number of root values; which one is being encoded */
  int depth;
  int npath;
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

static inline void put_raw(unsigned char *p, uint64_t v, int n) {
  for (int i = 0; i < n; i++) p[i] = (unsigned char)(v >> (8 * i));
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

/* Scalars and strings need no per-state data: a registry lookup costs as much as they do. */
static void need_state(enc *e) {
  if (e->s != NULL) return;
  e->s = push_state(e->L);
  lua_replace(e->L, e->st);
}

/*
** The reverse map of package.loaded: value -> the bytes of its T_MODULE or
** T_FIELD record. Built lazily, rebuilt when the number of loaded modules
** changes (checked once per message) or when a C function or userdata is not
** found (at most once per message). Fields of _G count only when they are C
** functions (print, pairs...): a script's global tables and functions are its
** data and travel by value.
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
  luaL_checkstack(L, 12, NULL);
  lua_getfield(L, LUA_REGISTRYINDEX, LUA_LOADED_TABLE);
  int loaded = lua_gettop(L);
  lua_newtable(L);
  int map = lua_gettop(L);
  lua_rawgeti(L, LUA_REGISTRYINDEX, LUA_RIDX_GLOBALS);
  int globals = lua_gettop(L);
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
        int is_g = lua_rawequal(L, modt, globals);
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
  lua_pop(L, 1);                              /* globals */
  lua_pushvalue(L, map);
  lua_setiuservalue(L, e->st, UV_NAMES);
  lua_replace(L, e->names);
  lua_pop(L, 1);                              /* package.loaded */
  e->s->loaded_count = count;
}

/*
** Makes e->names usable. Counting package.loaded's entries costs as much as
** encoding a small table, so a message checks the map against it at most once,
** and only when it holds a function or a userdata: that is where names matter
** (closures capture modules, library functions can only go by name). A plain
** data message uses the map as it is.
*/
static void ensure_names(enc *e, int check) {
  lua_State *L = e->L;
  need_state(e);
  if (!e->names_loaded) {
    e->names_loaded = 1;
    if (lua_getiuservalue(L, e->st, UV_NAMES) == LUA_TTABLE) {
      lua_replace(L, e->names);
    } else {
      lua_pop(L, 1);
      build_names(e);
      e->names_fresh = e->names_rebuilt = 1;
    }
  }
  if (check && !e->names_fresh) {
    e->names_fresh = 1;
    lua_getfield(L, LUA_REGISTRYINDEX, LUA_LOADED_TABLE);
    lua_Integer n = lua_type(L, -1) == LUA_TTABLE ? count_entries(L, lua_gettop(L)) : 0;
    lua_pop(L, 1);
    if (n != e->s->loaded_count) {
      build_names(e);
      e->names_rebuilt = 1;
    }
  }
}

/*
** Writes the name of the value at idx if it has one; returns whether it did.
** `check`: a function or userdata (see ensure_names). `retry`: the value cannot
** be sent otherwise, so a miss is worth one rebuild per message.
*/
static int put_name(enc *e, int idx, int check, int retry) {
  lua_State *L = e->L;
  ensure_names(e, check);
  lua_pushvalue(L, idx);
  if (lua_rawget(L, e->names) != LUA_TSTRING && retry && !e->names_rebuilt) {
    lua_pop(L, 1);
    build_names(e);
    e->names_rebuilt = 1;
    lua_pushvalue(L, idx);
    lua_rawget(L, e->names);
  }
  if (lua_type(L, -1) != LUA_TSTRING) { lua_pop(L, 1); return 0; }
  size_t len;
  const char *str = lua_tolstring(L, -1, &len);
  put_bytes(e, str, len);
  lua_pop(L, 1);
  return 1;
}

/*
** The encoder's memo (object or upvalue id -> offset) is one weak-keyed table
** per state, emptied before reuse: a small message then allocates nothing.
** It is emptied lazily, at the next message, so that an error halfway through
** needs no cleanup.
*/
static void need_memo(enc *e) {
  lua_State *L = e->L;
  if (e->memo_ready) return;
  e->memo_ready = 1;
  need_state(e);
  serial_state *s = e->s;
  int t = lua_getiuservalue(L, e->st, UV_MEMO);
  if (t == LUA_TTABLE && s->memo_used <= MEMO_REUSE) {
    if (s->memo_used > 0) {
      int m = lua_gettop(L);
      lua_pushnil(L);
      while (lua_next(L, m)) {
        lua_pop(L, 1);
        lua_pushvalue(L, -1);
        lua_pushnil(L);
        lua_rawset(L, m);
      }
    }
  } else {
    lua_pop(L, 1);
    lua_newtable(L);
    lua_createtable(L, 0, 1);
    lua_pushliteral(L, "k");
    lua_setfield(L, -2, "__mode");
    lua_setmetatable(L, -2);
    lua_pushvalue(L, -1);
    lua_setiuservalue(L, e->st, UV_MEMO);
  }
  s->memo_used = 0;
  lua_replace(L, e->memo);
}

/* If the object at idx was already sent, writes a REF to it and returns 1. */
static int put_ref(enc *e, int idx) {
  lua_State *L = e->L;
  if (!e->memo_ready) return 0;
  lua_pushvalue(L, idx);
  if (lua_rawget(L, e->memo) != LUA_TNUMBER) { lua_pop(L, 1); return 0; }
  size_t off = (size_t)lua_tointeger(L, -1);
  lua_pop(L, 1);
  ((unsigned char *)e->b->data)[e->base + off] |= T_SHARED;
  put_tagged(e, T_REF, off, 8);
  return 1;
}

static void remember(enc *e, int idx, size_t off) {
  lua_State *L = e->L;
  need_memo(e);
  e->s->memo_used++;
  lua_pushvalue(L, idx);
  lua_pushinteger(L, (lua_Integer)off);
  lua_rawset(L, e->memo);
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

static void encode_table(enc *e, int t) {
  lua_State *L = e->L;
  enter(e);
  size_t off = e->b->len - e->base;
  remember(e, t, off);
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
  /*
  ** One lua_next pass: the keys 1, 2, 3... met first (lua_next walks the array
  ** part in order) go out as the array part, values only; every key after the
  ** first one that breaks the sequence goes out as a key/value pair.
  */
  room(e, 8);
  size_t counts_at = e->b->len;
  e->b->len += 8;
  uint64_t narr = 0, nhash = 0;
  int in_array = 1;
  int k = lua_gettop(L) + 1, v = k + 1;
  lua_pushnil(L);
  while (lua_next(L, t)) {
    if (in_array) {
      if (lua_isinteger(L, k) && lua_tointeger(L, k) == (lua_Integer)narr + 1) {
        narr++;
        child(e, v, (seg){SEG_INDEX, 0, (lua_Integer)narr, NULL});
        lua_settop(L, k);
        continue;
      }
      in_array = 0;
    }
    /* A key is named by its table's path plus "[<key>]". */
    child(e, k, (seg){SEG_ASKEY, 0, 0, NULL});
    child(e, v, (seg){SEG_KEY, k, 0, NULL});
    lua_settop(L, k);
    nhash++;
  }
  if (narr > UINT32_MAX || nhash > UINT32_MAX) enc_error(e, "table too large to send");
  unsigned char *p = (unsigned char *)e->b->data + counts_at;
  put_raw(p, narr, 4);
  put_raw(p + 4, nhash, 4);
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

static void encode_function(enc *e, int f) {
  lua_State *L = e->L;
  if (lua_iscfunction(L, f)) {
    if (put_name(e, f, 1, 1)) return;
    refuse(e, f, " (a C function that is not a field of a loaded module)");
  }
  if (put_name(e, f, 1, 0)) return;
  enter(e);
  size_t off = e->b->len - e->base;
  remember(e, f, off);
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
    /*
    ** _ENV is rebound to the receiver's globals whatever it holds here: a
    ** function's environment is where it runs, not data (busted, for one, runs
    ** specs in a proxy of _G that would otherwise be copied, minus its metatable).
    */
    const char *name = lua_getupvalue(L, f, i);
    lua_pop(L, 1);
    if (name != NULL && strcmp(name, "_ENV") == 0) {
      put_u8(e, T_GLOBALS);
      continue;
    }
    void *id = lua_upvalueid(L, f, i);
    need_memo(e);
    lua_pushlightuserdata(L, id);
    if (lua_rawget(L, e->memo) == LUA_TNUMBER) {
      /* Shared with a closure sent earlier in this message: join them there too. */
      lua_Integer packed = lua_tointeger(L, -1);
      lua_pop(L, 1);
      size_t owner = (size_t)(packed >> 8);
      ((unsigned char *)e->b->data)[e->base + owner] |= T_SHARED;
      put_tagged(e, T_UPJOIN, owner, 8);
      put_u8(e, (unsigned)(packed & 0xFF));
      continue;
    }
    lua_pop(L, 1);
    e->s->memo_used++;
    lua_pushlightuserdata(L, id);
    lua_pushinteger(L, (lua_Integer)((off << 8) | (size_t)i));
    lua_rawset(L, e->memo);
    lua_getupvalue(L, f, i);
    child(e, lua_gettop(L), (seg){SEG_UPVALUE, 0, i, name});
    lua_pop(L, 1);
  }
  e->depth--;
}

static void encode(enc *e, int idx) {
  lua_State *L = e->L;
  switch (lua_type(L, idx)) {
    case LUA_TNIL: put_u8(e, T_NIL); break;
    case LUA_TBOOLEAN: put_u8(e, lua_toboolean(L, idx) ? T_TRUE : T_FALSE); break;
    case LUA_TNUMBER:
      if (lua_isinteger(L, idx)) {
        lua_Integer v = lua_tointeger(L, idx);
        if (v >= -128 && v <= 127) put_tagged(e, T_INT8, (uint64_t)v, 1);
        else if (v >= INT32_MIN && v <= INT32_MAX) put_tagged(e, T_INT32, (uint64_t)v, 4);
        else put_tagged(e, T_INT64, (uint64_t)v, 8);
      } else {
        double d = (double)lua_tonumber(L, idx);
        uint64_t bits;
        memcpy(&bits, &d, 8);
        put_tagged(e, T_FLOAT, bits, 8);
      }
      break;
    case LUA_TSTRING: {
      size_t len;
      const char *s = lua_tolstring(L, idx, &len);
      if (len <= UINT8_MAX) {
        unsigned char *p = room(e, 2 + len);
        p[0] = T_STR8;
        p[1] = (unsigned char)len;
        memcpy(p + 2, s, len);
        e->b->len += 2 + len;
      } else {
        if (len <= UINT32_MAX) put_tagged(e, T_STR32, len, 4);
        else put_tagged(e, T_STR64, len, 8);
        put_bytes(e, s, len);
      }
      break;
    }
    case LUA_TTABLE:
      lua_rawgeti(L, LUA_REGISTRYINDEX, LUA_RIDX_GLOBALS);
      if (lua_rawequal(L, -1, idx)) { lua_pop(L, 1); put_u8(e, T_GLOBALS); break; }
      lua_pop(L, 1);
      if (put_ref(e, idx) || put_name(e, idx, 0, 0)) break;
      encode_table(e, idx);
      break;
    case LUA_TFUNCTION:
      if (put_ref(e, idx)) break;
      encode_function(e, idx);
      break;
    case LUA_TUSERDATA: case LUA_TLIGHTUSERDATA:
      if (put_name(e, idx, 1, 1)) break;
      refuse(e, idx, "");
      break;
    default:
      refuse(e, idx, "");
  }
}

void mp_serial_encode(lua_State *L, int idx, int n, mp_wbuf *b, const char *root) {
  idx = lua_absindex(L, idx);
  int top = lua_gettop(L);
  enc encoder;
  enc *e = &encoder;
  e->L = L;
  e->b = b;
  e->base = b->len;
  e->s = NULL;                    /* fetched on the first table or function */
  e->st = e->memo = e->names = 0; /* stack slots, pushed with the first table or function */
  e->memo_ready = 0;
  e->names_loaded = e->names_fresh = e->names_rebuilt = 0;
  e->root = root != NULL ? root : "value";
  e->nroot = n;
  e->depth = 0;
  e->npath = 0;
  if (n < 0 || (lua_Unsigned)n > UINT32_MAX) luaL_error(L, "mp: bad value count");
  put_u8(e, FORMAT_VERSION);
  if (n < 0xFF) put_u8(e, (unsigned)n);
  else put_tagged(e, 0xFF, (uint64_t)n, 4);
  for (int k = 0; k < n; k++) {
    e->rootk = k + 1;
    /*
    ** Only tables, functions and userdata use the slots, and the first of them
    ** is always a root value: push the slots then, at the base of the stack.
    */
    if (e->st == 0 && nameable(lua_type(L, idx + k))) {
      luaL_checkstack(L, 10, "mp: message");
      lua_pushnil(L);
      e->st = lua_gettop(L);
      lua_pushnil(L);
      e->memo = lua_gettop(L);
      lua_pushnil(L);
      e->names = lua_gettop(L);
    }
    encode(e, idx + k);
  }
  lua_settop(L, top);
}

/* ------------------------------------------------------------------------ */
/* Decoder: every read is checked against the end of the input.              */

typedef struct dec {
  lua_State *L;
  const unsigned char *start, *p, *end;
  size_t pending;          /* elements announced by open containers, not yet read */
  int st, memo;
  int depth;
} dec;

static int dec_error(dec *d, const char *msg) {
  return luaL_error(d->L, "mp.loads: %s", msg);
}

#define truncated(d) dec_error(d, "truncated message")

static inline size_t left(dec *d) { return (size_t)(d->end - d->p); }

static inline uint64_t get_num(dec *d, int n) {
  if (left(d) < (size_t)n) truncated(d);
  uint64_t v = 0;
  for (int i = n - 1; i >= 0; i--) v = (v << 8) | d->p[i];
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
  if (lua_type(d->L, d->st) != LUA_TUSERDATA) {
    push_state(d->L);
    lua_replace(d->L, d->st);
  }
  return lua_touserdata(d->L, d->st);
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
  lua_createtable(L, (int)narr, (int)nhash);
  int t = lua_gettop(L);
  if (tag & T_SHARED) dec_remember(d, off, t);
  for (uint64_t i = 1; i <= narr; i++) {
    d->pending--;
    if (decode(d) == IS_NIL) lua_pop(L, 1);
    else lua_rawseti(L, t, (lua_Integer)i);
  }
  for (uint64_t i = 0; i < nhash; i++) {
    d->pending--;
    if (decode(d) != 0) dec_error(d, "invalid table key (nil or NaN)");
    d->pending--;
    decode(d);
    lua_rawset(L, t);
  }
  if (mt) {
    lua_pushvalue(L, mt);
    lua_setmetatable(L, t);
    lua_remove(L, mt);
  }
  d->depth--;
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
    default:
      luaL_error(L, "mp.loads: corrupt message (bad tag %d at byte %I)", tag, (lua_Integer)off);
  }
  return 0;
}

int mp_serial_decode(lua_State *L, const char *data, size_t len) {
  luaL_checkstack(L, 10, "mp.loads");
  dec d;
  d.L = L;
  d.start = d.p = (const unsigned char *)data;
  d.end = d.start + len;
  d.pending = 0;
  d.depth = 0;
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
  int slots = 0;                 /* where the state and memo slots are, once pushed */
  for (uint64_t i = 0; i < n; i++) {
    /*
    ** Only tables, functions and references use the slots, and the first of
    ** them is always a root value: push the slots just below it.
    */
    if (slots == 0 && left(&d) > 0 && *d.p >= T_TABLE && *d.p != T_GLOBALS &&
        *d.p != T_MODULE && *d.p != T_FIELD) {
      lua_pushnil(L);            /* the state, fetched when a class or function needs it */
      slots = lua_gettop(L);
      lua_pushnil(L);            /* the memo, made when an object is shared */
      d.st = slots;
      d.memo = slots + 1;
    }
    d.pending--;
    decode(&d);
  }
  if (d.p != d.end) dec_error(&d, "trailing bytes after the message");
  if (slots != 0) {
    lua_rotate(L, slots, -2);    /* state and memo to the top */
    lua_pop(L, 2);
  }
  return (int)n;
}

/* ------------------------------------------------------------------------ */
/* Lua API: mp.core.dumps, loads, register_class                             */

static int core_dumps(lua_State *L) {
  int n = lua_gettop(L);
  mp_wbuf *b = mp_serial_scratch(L);
  mp_serial_encode(L, 1, n, b, "value");
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
  const char *s = luaL_checklstring(L, 1, &len);
  return mp_serial_decode(L, s, len);
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
  push_state(L);
  lua_getiuservalue(L, 3, UV_CLASS_BY_NAME);     /* 4 */
  lua_getiuservalue(L, 3, UV_CLASS_BY_MT);       /* 5 */
  lua_pushvalue(L, 1);
  if (lua_rawget(L, 4) == LUA_TTABLE) {          /* forget the old metatable's name */
    lua_pushnil(L);
    lua_rawset(L, 5);
  } else {
    lua_pop(L, 1);
  }
  lua_pushvalue(L, 2);
  if (lua_rawget(L, 5) == LUA_TSTRING) {         /* and this metatable's old name */
    lua_pushnil(L);
    lua_rawset(L, 4);
  } else {
    lua_pop(L, 1);
  }
  lua_pushvalue(L, 1);
  lua_pushvalue(L, 2);
  lua_rawset(L, 4);
  lua_pushvalue(L, 2);
  lua_pushvalue(L, 1);
  lua_rawset(L, 5);
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
  lua_pop(L, 1);
  luaL_setfuncs(L, funcs, 0);
}

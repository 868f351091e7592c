/*
** libFuzzer target for the serializer. One lua_State per process, emptied
** after every input. The first byte picks the mode:
**
**   0 (mod 3): the rest is a message. Decoding must raise or succeed; what
**         decodes must encode again and decode again (the decoder never
**         produces a value the encoder refuses).
**   2 (mod 3): byte 1 is the length of a builder program (below); its values
**         are encoded and the encoding damaged by the (u16 position, xor)
**         triples that follow, then decoded as in mode 0. Bytecode stays
**         authentic unless a triple hits it, so this reaches upvalue decoding.
**   1 (mod 3): the rest is a program for a small value builder (scalars, tables,
**         shared references, cycles, closures, closures with their own
**         _ENV, library values, class instances). The values are encoded,
**         decoded and compared structurally with the originals.
**
** Bit 7 of the first byte turns off the encoder's reading of Lua's table
** layout for that input, so both ways of walking a table are exercised.
**
** Random bytes never reach lua_load: bytecode needs a valid MAC under this
** process's random key, which only the encoder (modes 1 and 2) produces.
*/
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <lua.h>
#include <lauxlib.h>
#include <lualib.h>

#include "mplua.h"
#include "serial.h"

static lua_State *L;

/* Structural equality, cycles and shared references included (a must map 1:1 onto b). */
static const char *helpers =
  "local function same(a, b, map, rev)\n"
  "  if type(a) ~= type(b) then return false end\n"
  "  local t = type(a)\n"
  "  if t == 'number' then\n"
  "    if math.type(a) ~= math.type(b) then return false end\n"
  "    if a ~= a then return b ~= b end\n"
  "    if a == 0 and math.type(a) == 'float' then return 1/a == 1/b end\n"
  "    return a == b\n"
  "  end\n"
  "  if t ~= 'table' and t ~= 'function' then return a == b end\n"
  "  if a == _G or b == _G then return a == b end\n"
  "  if map[a] ~= nil or rev[b] ~= nil then return map[a] == b and rev[b] == a end\n"
  "  if t == 'function' then\n"
  "    if debug.getinfo(a, 'S').what == 'C' or package.loaded.math.sqrt == a then return a == b end\n"
  "    map[a] = b; rev[b] = a\n"
  "    for i = 1, 255 do\n"
  "      local na, va = debug.getupvalue(a, i)\n"
  "      local nb, vb = debug.getupvalue(b, i)\n"
  "      if na ~= nb then return false end\n"
  "      if na == nil then break end\n"
  "      if na == '_ENV' then\n"
  "        -- one process: an environment table comes back as itself, anything else as _G\n"
  "        if vb ~= (type(va) == 'table' and va or _G) then return false end\n"
  "      elseif not same(va, vb, map, rev) then return false end\n"
  "    end\n"
  "    return true\n"
  "  end\n"
  "  for _, m in pairs(package.loaded) do if m == a then return a == b end end\n"
  "  map[a] = b; rev[b] = a\n"
  "  if getmetatable(a) ~= getmetatable(b) then return false end\n"
  "  local n = 0\n"
  "  for k, v in next, a do\n"
  "    n = n + 1\n"
  "    if type(k) == 'table' or type(k) == 'function' then return false end\n"
  "    if not same(v, rawget(b, k), map, rev) then return false end\n"
  "  end\n"
  "  for _ in next, b do n = n - 1 end\n"
  "  return n == 0\n"
  "end\n"
  "return function(n, ...)\n"
  "  local args = table.pack(...)\n"
  "  local map, rev = {}, {}\n"
  "  for i = 1, n do\n"
  "    if not same(args[i], args[n + i], map, rev) then return false end\n"
  "  end\n"
  "  return true\n"
  "end\n";

/* Closures for the builder: each returns a function whose upvalues the builder fills. */
static const char *makers =
  "local M = {}\n"
  "M[1] = function(a) return function() return a end end\n"
  "M[2] = function(a, b) local function f(x) return x and f or a, b end return f end\n"
  "M[3] = function(a, b) return function() return a, b, math.sqrt end end\n"
  "M[4] = function(a) local function g() return a end; return function() a = g; return g end end\n"
  "M[5] = function(a, b) local _ENV = a; return function() return x, b end end\n"
  "return M\n";

static int same_ref, makers_ref;

static void init(void) {
  L = luaL_newstate();
  luaL_openlibs(L);
  luaL_requiref(L, "mp", luaopen_mp, 1);
  lua_getfield(L, -1, "register_class");
  lua_newtable(L);
  lua_pushvalue(L, -1);
  lua_setfield(L, LUA_REGISTRYINDEX, "fuzz.class");
  lua_pushliteral(L, "C");
  lua_insert(L, -2);
  lua_call(L, 2, 0);
  lua_pop(L, 1);
  if (luaL_dostring(L, helpers) != LUA_OK) abort();
  same_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  if (luaL_dostring(L, makers) != LUA_OK) abort();
  makers_ref = luaL_ref(L, LUA_REGISTRYINDEX);
}


/*
** Encodes the n values at 1..n, then decodes the message, which must give n
** values back. Leaves the message at n + 1 and the decoded values above it.
*/
static void encode_decode(lua_State *l, int n) {
  mp_wbuf *b = mp_serial_scratch(l);
  mp_serial_encode(l, 1, n, b, "value");
  lua_pushlstring(l, b->data, b->len);
  size_t len;
  const char *s = lua_tolstring(l, -1, &len);
  if (mp_serial_decode(l, s, len) != n) abort();
}

static int reencode(lua_State *l) {
  encode_decode(l, lua_gettop(l));
  return 0;
}

static int decode_only(lua_State *l) {
  const char *data = lua_touserdata(l, 1);
  size_t size = (size_t)lua_tointeger(l, 2);
  lua_settop(l, 0);
  return mp_serial_decode(l, data, size);
}

/* ---- builder ---- */

typedef struct reader { const uint8_t *p, *end; } reader;

static int rd(reader *r) { return r->p < r->end ? *r->p++ : -1; }

/* A stack slot among the n built values (n > 0). */
static int pick(reader *r, int base, int n) {
  int c = rd(r);
  return base + 1 + (c < 0 ? 0 : c) % n;
}

static uint64_t rd64(reader *r) {
  uint64_t v = 0;
  for (int i = 0; i < 8; i++) { int c = rd(r); v = (v << 8) | (uint64_t)(c < 0 ? 0 : c); }
  return v;
}

#define MAXVALS 64

/* Builds values on the stack of l from the program; returns how many. */
static int build(lua_State *l, reader *r) {
  int base = lua_gettop(l);
  int op;
  luaL_checkstack(l, MAXVALS + 20, NULL);
  while ((op = rd(r)) >= 0 && lua_gettop(l) - base < MAXVALS) {
    int n = lua_gettop(l) - base;
    switch (op % 14) {
      case 0: lua_pushnil(l); break;
      case 1: lua_pushboolean(l, op & 16); break;
      case 2: lua_pushinteger(l, (lua_Integer)rd64(r)); break;
      case 3: { uint64_t bits = rd64(r); double d; memcpy(&d, &bits, 8); lua_pushnumber(l, d); break; }
      case 4: {
        int len = rd(r);
        if (len < 0) len = 0;
        if (op & 16) len *= 300;           /* long strings too */
        size_t avail = (size_t)(r->end - r->p);
        if ((size_t)len <= avail) { lua_pushlstring(l, (const char *)r->p, (size_t)len); r->p += len; }
        else { char *buf = calloc(1, (size_t)len + 1); lua_pushlstring(l, buf, (size_t)len); free(buf); }
        break;
      }
      case 5: lua_newtable(l); break;
      case 6: case 7: {                      /* t[k] = v with t, k, v picked from the stack */
        if (n < 2) break;
        int t = pick(r, base, n), k = pick(r, base, n), v = pick(r, base, n);
        if (op % 14 == 7) { k = v; v = t; }   /* t[k] = t: a cycle */
        if (!lua_istable(l, t)) break;
        int kt = lua_type(l, k);
        if (kt == LUA_TNIL || kt == LUA_TTABLE || kt == LUA_TFUNCTION) break;
        if (kt == LUA_TNUMBER && lua_tonumber(l, k) != lua_tonumber(l, k)) break;
        lua_pushvalue(l, k);
        lua_pushvalue(l, v);
        lua_rawset(l, t);
        break;
      }
      case 8: {                              /* append v to t */
        if (n < 2) break;
        int t = pick(r, base, n), v = pick(r, base, n);
        if (!lua_istable(l, t) || lua_isnil(l, v)) break;
        lua_pushvalue(l, v);
        lua_rawseti(l, t, (lua_Integer)lua_rawlen(l, t) + 1);
        break;
      }
      case 9:                                /* a second reference to a value */
        if (n < 1) break;
        lua_pushvalue(l, pick(r, base, n));
        break;
      case 10: {                             /* a closure over stack values */
        if (n < 2) break;
        lua_rawgeti(l, LUA_REGISTRYINDEX, makers_ref);
        int c = rd(r);
        lua_rawgeti(l, -1, 1 + (c < 0 ? 0 : c) % 5);
        lua_remove(l, -2);
        lua_pushvalue(l, pick(r, base, n));
        lua_pushvalue(l, pick(r, base, n));
        lua_call(l, 2, 1);
        break;
      }
      case 11: {                             /* library values, sent by name */
        static const char *const code[] = { "return math.sqrt", "return string", "return _G",
                                            "return io.stdout", "return string.format" };
        int c = rd(r);
        luaL_dostring(l, code[(c < 0 ? 0 : c) % 5]);
        break;
      }
      case 12: {                             /* a class instance */
        if (n < 1) break;
        int t = pick(r, base, n);
        if (!lua_istable(l, t)) break;
        lua_getfield(l, LUA_REGISTRYINDEX, "fuzz.class");
        lua_setmetatable(l, t);
        break;
      }
      case 13: {                             /* nest: {v} */
        if (n < 1) break;
        lua_createtable(l, 1, 0);
        lua_pushvalue(l, pick(r, base, n));
        lua_rawseti(l, -2, 1);
        break;
      }
    }
  }
  return lua_gettop(l) - base;
}

static int roundtrip_mode(lua_State *l) {
  reader *r = lua_touserdata(l, 1);
  lua_settop(l, 0);
  int n = build(l, r);
  encode_decode(l, n);
  lua_remove(l, n + 1);                       /* the message */
  lua_rawgeti(l, LUA_REGISTRYINDEX, same_ref);
  lua_insert(l, 1);
  lua_pushinteger(l, n);
  lua_insert(l, 2);
  lua_call(l, 2 * n + 1, 1);
  if (!lua_toboolean(l, -1)) {
    fprintf(stderr, "round trip changed a value\n");
    abort();
  }
  return 0;
}

/* Builds values from a program and returns their encoding (a string). */
static int encode_program(lua_State *l) {
  reader *r = lua_touserdata(l, 1);
  lua_settop(l, 0);
  int n = build(l, r);
  mp_wbuf *b = mp_serial_scratch(l);
  mp_serial_encode(l, 1, n, b, "value");
  lua_pushlstring(l, b->data, b->len);
  return 1;
}

static const char *errmsg(void) {
  const char *m = lua_tostring(L, -1);
  return m != NULL ? m : "";
}

/* Decodes untrusted bytes: an "mp.loads: " error or values that encode again. */
static void check_decode(const uint8_t *data, size_t size) {
  lua_settop(L, 0);
  lua_pushcfunction(L, decode_only);
  lua_pushlightuserdata(L, (void *)data);
  lua_pushinteger(L, (lua_Integer)size);
  if (lua_pcall(L, 2, LUA_MULTRET, 0) == LUA_OK) {
    int n = lua_gettop(L);
    lua_pushcfunction(L, reencode);
    lua_insert(L, 1);
    /*
    ** The encoder may meet a shared object deeper than the message defined
    ** it (another traversal order), so the depth cap may legitimately refuse.
    */
    if (lua_pcall(L, n, 0, 0) != LUA_OK && strstr(errmsg(), "nesting deeper than") == NULL) {
      fprintf(stderr, "re-encoding a decoded message failed: %s\n", errmsg());
      abort();
    }
  } else if (strncmp(errmsg(), "mp.loads: ", 10) != 0 && strstr(errmsg(), "stack overflow") == NULL &&
             strstr(errmsg(), "not enough memory") == NULL) {
    fprintf(stderr, "unexpected decode error: %s\n", errmsg());
    abort();
  }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (L == NULL) init();
  if (size < 1) return 0;
  mp_serial_peek(L, !(data[0] & 0x80));
  switch ((data[0] & 0x7F) % 3) {
    case 0:                                   /* untrusted bytes */
      check_decode(data + 1, size - 1);
      break;
    case 1: {                                 /* round trip of built values */
      reader r = { data + 1, data + size };
      lua_pushcfunction(L, roundtrip_mode);
      lua_pushlightuserdata(L, &r);
      if (lua_pcall(L, 1, 0, 0) != LUA_OK && strstr(errmsg(), "nesting deeper than 200 levels") == NULL) {
        fprintf(stderr, "round trip failed: %s\n", errmsg());
        abort();
      }
      break;
    }
    case 2: {
      /*
      ** A real encoding (with authentic bytecode) damaged by (u16 position,
      ** xor) triples: reaches what follows a successful lua_load (upvalue
      ** counts, shared upvalues) with corrupt data. Byte 1 is the program length.
      */
      if (size < 2) break;
      size_t plen = data[1] < size - 2 ? data[1] : size - 2;
      reader r = { data + 2, data + 2 + plen };
      lua_pushcfunction(L, encode_program);
      lua_pushlightuserdata(L, &r);
      if (lua_pcall(L, 1, 1, 0) != LUA_OK) break;   /* too deep: nothing to damage */
      size_t len;
      const char *m = lua_tolstring(L, -1, &len);
      uint8_t *buf = malloc(len + 1);
      memcpy(buf, m, len);
      for (const uint8_t *p = data + 2 + plen; p + 3 <= data + size && len > 0; p += 3)
        buf[(p[0] | (size_t)p[1] << 8) % len] ^= p[2];
      check_decode(buf, len);
      free(buf);
      break;
    }
  }
  lua_settop(L, 0);
  return 0;
}

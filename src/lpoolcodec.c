/*
** The pool's codec (lpool.h): the serializer under lua_pcall, so that a value
** that cannot be sent fails its task only. Used by the parent (lpool.c) and
** the worker (lpoolwork.c).
*/
#include <stdio.h>
#include <string.h>

#include "lpool.h"
#include "serial.h"

/*
** A hook (Ctrl-C, an mp.signal handler) may raise at the call or return of
** the protected function: such an error is not the codec's and must
** propagate. `state` is 1 while the codec runs.
*/
typedef struct codec_call {
  mp_pc_buf *b; const char *p; size_t len; int state;
  mp_oob *oob;                 /* encoding: where mp objects' fds go (NULL: refused) */
  const int *fds; size_t nfds; /* decoding: the fds that came with the task */
} codec_call;

static int codec_status(lua_State *L, codec_call *cc, int status) {
  if (status != LUA_OK && cc->state != 1) lua_error(L);
  return status;
}

static int encode_values(lua_State *L) {
  codec_call *cc = lua_touserdata(L, 1);
  cc->state = 1;
  mp_pool_group(L, cc->b, 2, lua_gettop(L) - 1, cc->oob);
  cc->state = 2;
  return 0;
}

/* Encodes (and pops) the values at idx..top as a group, in protected mode. */
int mp_pool_pgroup(lua_State *L, mp_pc_buf *b, int idx, mp_oob *oob) {
  codec_call cc = { b, NULL, 0, 0, oob, NULL, 0 };
  int n = lua_gettop(L) - idx + 1;
  lua_pushcfunction(L, encode_values);
  lua_insert(L, idx);
  lua_pushlightuserdata(L, &cc);
  lua_insert(L, idx + 1);
  return codec_status(L, &cc, lua_pcall(L, n + 1, 0, 0));
}

static int decode_values(lua_State *L) {
  codec_call *cc = lua_touserdata(L, 1);
  lua_settop(L, 0);
  cc->state = 1;
  int n = mp_serial_decode_oob(L, cc->p, cc->len, cc->fds, cc->nfds);
  cc->state = 2;
  return n;
}

/* Pushes the values of one serialized message (mp objects on fds); on error pushes the message. */
int mp_pool_pdecode(lua_State *L, const char *p, size_t len, const int *fds, size_t nfds) {
  codec_call cc = { NULL, p, len, 0, NULL, fds, nfds };
  lua_pushcfunction(L, decode_values);
  lua_pushlightuserdata(L, &cc);
  return codec_status(L, &cc, lua_pcall(L, 1, LUA_MULTRET, 0));
}

/* lua_pcall'd (item, index, codec_call): encodes one item alone, to name it in an error. */
static int encode_item(lua_State *L) {
  codec_call *cc = lua_touserdata(L, 3);
  char root[32];
  snprintf(root, sizeof root, "item %lld", (long long)lua_tointeger(L, 2));
  cc->state = 1;
  mp_serial_encode_oob(L, 1, 1, mp_serial_scratch(L), root, cc->oob);
  cc->state = 2;
  return 0;
}

/* lua_pcall'd (fn, codec_call): encodes a task's function into the scratch buffer. */
static int dump_fn(lua_State *L) {
  codec_call *cc = lua_touserdata(L, 2);
  mp_wbuf *sb = mp_serial_scratch(L);
  cc->state = 1;
  mp_serial_encode_oob(L, 1, 1, sb, "function", cc->oob);
  cc->state = 2;
  cc->p = sb->data;
  cc->len = sb->len;
  return 0;
}

/*
** Encodes the function at idx into the scratch buffer (*p, *len: valid until
** its next use): LUA_OK, or an error with its message on top.
*/
int mp_pool_pdump(lua_State *L, int idx, mp_oob *oob, const char **p, size_t *len) {
  codec_call cc = { NULL, NULL, 0, 0, oob, NULL, 0 };
  lua_pushcfunction(L, dump_fn);
  lua_pushvalue(L, idx);
  lua_pushlightuserdata(L, &cc);
  int status = codec_status(L, &cc, lua_pcall(L, 2, 0, 0));
  *p = cc.p;
  *len = cc.len;
  return status;
}

/* Encodes (and pops) the item on top alone, as item k, in protected mode: its error names it. */
int mp_pool_pitem(lua_State *L, lua_Integer k, mp_oob *oob) {
  codec_call cc = { NULL, NULL, 0, 0, oob, NULL, 0 };
  lua_pushcfunction(L, encode_item);
  lua_insert(L, -2);
  lua_pushinteger(L, k);
  lua_pushlightuserdata(L, &cc);
  return codec_status(L, &cc, lua_pcall(L, 3, 0, 0));
}

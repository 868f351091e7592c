/*
** What the pool's binding files share: src/lpool.c (the parent's side: the
** transport object, tasks in flight, results), src/lpoolcodec.c (the
** serializer in protected mode) and src/lpoolwork.c (the worker's loop).
**
** Wire format of an entry (native byte order; both ends are forks of one binary):
**   task:   u8 kind ('M' map, 'S' starmap, 'A' apply), pad, u32 fn_id,
**           u64 task id, u32 fn_len, u32 count, u32 fd_base, u32 nfds,
**           fn bytes, groups
**   result: u8 kind ('R' values, 'E' task error, 'I' initializer error), pad,
**           u32 -, u64 task id, u32 count, u32 -, u32 -, u32 -, groups
**   group:  u32 bytes, u32 values, one serializer message holding those values
** Values travel in groups of up to GROUP, so the serializer's per-message cost
** is amortized and a chunk of any length never needs more Lua stack.
**
*/
#ifndef MP_LPOOL_H
#define MP_LPOOL_H

#include <string.h>
#include <lua.h>

#include "mp_aux.h"
#include "serial.h"
#include "mp_travel.h"
#include "engine/poolchan.h"
#include "engine/pooltasks.h"

#define GROUP 256
#define HDR MP_PT_HDR

/* The transport object (core.pool_transport), in the parent and in a worker. */
typedef struct pool_tr {
  const mp_class *cls;
  const mp_pool_transport_ops *ops;   /* the transport seam */
  void *impl;                         /* NULL when closed */
  mp_poolchan local;                  /* the local transport */
  mp_pt pt;                           /* the tasks in flight (engine/pooltasks.h); a worker's result buffer */
  int foreign;                        /* a forked child's copy */
  int nworkers, suspect;
  char *live;                         /* per slot: a worker is up */
  mp_oob *oob;                        /* the task being encoded: its mp objects' fds (user value 5) */
} pool_tr;

extern const mp_class mp_pool_tr_class;

pool_tr *mp_pool_checktr(lua_State *L);                 /* self at 1, not closed */
int mp_pool_index(lua_State *L, pool_tr *t, int arg);   /* a worker index argument, 0-based */

/*
** The codec. Each runs the serializer under lua_pcall: LUA_OK, or an error
** with its message on top (an error raised by a hook, not by the codec, is
** raised again). Groups: u32 bytes, u32 values, one serializer message.
*/
int mp_pool_pgroup(lua_State *L, mp_pc_buf *b, int idx, mp_oob *oob);        /* pops idx..top */
int mp_pool_pdecode(lua_State *L, const char *p, size_t len, const int *fds, size_t nfds);
int mp_pool_pitem(lua_State *L, lua_Integer k, mp_oob *oob);                 /* pops the item */
int mp_pool_pdump(lua_State *L, int idx, mp_oob *oob, const char **p, size_t *len);

/*
** The n values at idx.. as one group appended to b (mp objects' fds to oob,
** or refused), unprotected: for values that cannot fail (the per-item path,
** inline).
*/
static inline void mp_pool_group(lua_State *L, mp_pc_buf *b, int idx, int n, mp_oob *oob) {
  mp_wbuf *s = mp_serial_scratch(L);
  mp_serial_encode_oob(L, idx, n, s, n == 1 ? "item" : "items", oob);
  if (mp_pc_reserve(b, 8 + s->len) != 0) luaL_error(L, "not enough memory");
  mp_pc_put32(b->data + b->len, (uint32_t)s->len);
  mp_pc_put32(b->data + b->len + 4, (uint32_t)n);
  memcpy(b->data + b->len + 8, s->data, s->len);
  b->len += 8 + s->len;
}

/* The worker (lpoolwork.c): core.pool_work and tr:send_init_error. */
int mp_pool_work(lua_State *L);
int mp_pool_send_init_error(lua_State *L);

#endif

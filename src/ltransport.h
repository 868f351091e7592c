/*
** Shared by the queue and pipe bindings (lqueue.c, lpipe.c).
*/
#ifndef MP_LTRANSPORT_H
#define MP_LTRANSPORT_H

#include <lua.h>

#include "engine/ring.h"

/* Releases a taken message (mp_ring_get_end or mp_conn_recv_end). */
typedef void (*mp_msg_end)(void *ctx, mp_ring_msg *m);

/*
** Delivers a message taken from ring r (its consumer lock held): copies it
** out or decodes it in place, calls end(ctx, m) before anything can raise,
** then pushes the decoded value (or, with raw, the bytes as a string).
** Returns the number of values pushed, or -1 when the message turned out to
** be abandoned by its producer (a chunked message it never finished): then
** nothing was pushed and the caller takes the next message.
*/
int mp_msg_deliver(lua_State *L, mp_ring *r, mp_ring_msg *m, mp_msg_end end, void *ctx, int raw);

/* The ring of a queue at idx, or NULL when idx is not a queue. */
mp_ring *mp_queue_ring(lua_State *L, int idx);

#endif

/*
** The value serializer: one wire format for every transport (Pipe, Queue,
** Pool, Manager). Encoding raises a Lua error naming the unsendable value and
** where it sits ("args[2].handler: cannot send a value of type thread"); the
** decoder treats its input as untrusted and raises on a truncated or corrupt
** message, never crashes.
**
** Buffers: transports encode into the per-state scratch buffer, which is owned
** by a userdata in the registry, so an error raised halfway through encoding
** leaks nothing.
*/
#ifndef MP_SERIAL_H
#define MP_SERIAL_H

#include <stddef.h>
#include <lua.h>

typedef struct mp_wbuf {
  char *data;
  size_t len;   /* bytes written */
  size_t cap;   /* bytes allocated */
} mp_wbuf;

/* Makes room for `extra` more bytes after b->len; raises a memory error on failure. */
void mp_wbuf_reserve(lua_State *L, mp_wbuf *b, size_t extra);

/* The state's scratch buffer, emptied (len = 0); valid until the next call. */
mp_wbuf *mp_serial_scratch(lua_State *L);

/*
** Appends the encoding of the n values at stack indexes idx .. idx+n-1 to b.
** `root` names them in error messages ("item", "args"); with n > 1 the values
** are named root[1], root[2], ...
*/
void mp_serial_encode(lua_State *L, int idx, int n, mp_wbuf *b, const char *root);

/* Decodes one message, pushes its values and returns how many; raises on bad input. */
int mp_serial_decode(lua_State *L, const char *data, size_t len);

/*
** For bindings that encode on their hot path (conn:send, q:put): the two
** calls above find the state in the registry (a lookup per call, ~190
** instructions, as much as encoding a small integer). Such a binding keeps
** the state as an upvalue of its functions instead (mp_serial_push_state
** pushes it, made if need be) and passes its index to these, which do the
** same as mp_serial_scratch and mp_serial_encode.
*/
void mp_serial_push_state(lua_State *L);
mp_wbuf *mp_serial_scratch_at(lua_State *L, int st);
void mp_serial_encode_at(lua_State *L, int st, int idx, int n, mp_wbuf *b, const char *root);

/*
** The same for transports that pass fds (the fork server, the pool): mp
** objects (mp_travel.h) are encoded with their fds added to `oob`, which the
** transport sends along the bytes; the receiver decodes with the fds that
** came (borrowed: it closes them after). mp_serial_encode and
** mp_serial_decode refuse mp objects.
*/
struct mp_oob;
void mp_serial_encode_oob(lua_State *L, int idx, int n, mp_wbuf *b, const char *root, struct mp_oob *oob);
int mp_serial_decode_oob(lua_State *L, const char *data, size_t len, const int *fds, size_t nfds);

/*
** Appends t[i..j] (a table without a metatable) as j-i+1 values, the bytes
** mp_serial_encode would write, read straight from the table's array part:
** 1, or 0 (b unchanged) when a value is not plain (a number, a boolean, nil,
** a string) or the table's layout cannot be read.
*/
int mp_serial_encode_slice(lua_State *L, int t, lua_Integer i, lua_Integer j, mp_wbuf *b);

/*
** Decodes a message of n plain values (numbers, booleans, nil, short
** strings) straight into t[off+1 .. off+n] (a table without a metatable,
** whose array part covers them): 1, or 0 when the message holds anything
** else or the table's layout cannot be used (decode it as usual then).
*/
int mp_serial_decode_slice(lua_State *L, const char *data, size_t len, int t, lua_Integer off, lua_Integer n);

/*
** Before forking (core.spawn, in the parent): gives the environments of the Lua
** functions on the stack their ids, so the child can bind its copies of them
** (docs/serialization.md, "Environments").
*/
void mp_serial_before_fork(lua_State *L);

/*
** For tests and the fuzzer: the encoder reads Lua 5.4's table layout when its
** self-test passed (serial.c, "Arrays"); on = 0 turns that off, so every table
** goes through the lua_next walk, 1 turns it back on if the self-test passes,
** -1 only asks. Returns whether it is on.
*/
int mp_serial_peek(lua_State *L, int on);

void mp_serial_open(lua_State *L);   /* mp.core.dumps, loads, register_class */

#endif

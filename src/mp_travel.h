/*
** mp objects that travel: Queues, Pipes' Connections, Locks and the other
** primitives, Values and Arrays given to a process that did not inherit them.
**
** Their memory and fds cannot be copied into a message: they go along it, as
** fds passed with SCM_RIGHTS, on the transports that can pass fds (the fork
** server's requests, the pool's tasks). The serializer encodes such an object
** as its class name, a short description (sizes, offsets, flags) and indexes
** into the message's out-of-band fd list (mp_oob); the receiver's decoder
** gives the class the fds that came with the message, and it builds a new
** object on the same memory. Transports that carry bytes only (a Queue item,
** a Pipe message, mp.dumps) refuse them with a message that says what works.
**
** A class that travels registers its mp_travel once with mp_travel_register
** (at library open).
*/
#ifndef MP_TRAVEL_H
#define MP_TRAVEL_H

#include <stddef.h>
#include <stdint.h>
#include <lua.h>

#include "mp_aux.h"

#define MP_TRAVEL_DESC 64      /* bytes of description */
#define MP_TRAVEL_FDS 4        /* fds per object */

typedef struct mp_travel_desc {
  unsigned char bytes[MP_TRAVEL_DESC];
  size_t len;
  int fds[MP_TRAVEL_FDS];      /* export: the object's own fds (borrowed); import: received ones (borrowed) */
  int nfds;
} mp_travel_desc;

typedef struct mp_travel {
  /*
  ** Describes the object at idx (raises when it is closed). Returns 1 after
  ** pushing one Lua value that travels with it (a Value's lock), else 0.
  */
  int (*export_obj)(lua_State *L, int idx, mp_travel_desc *d);
  /*
  ** Pushes a new object of class c on what d describes; with `dep`, the
  ** value that travelled with it is on top and is consumed. The fds are
  ** borrowed: the class duplicates what it keeps. Raises on a description
  ** that does not hold (it came from another process).
  */
  void (*import_obj)(lua_State *L, const mp_class *c, const mp_travel_desc *d, int dep);
} mp_travel;

/*
** The out-of-band fd list of one message. `refuse`, when set, is the message
** (a format with one %s, the class name) with which a transport that carries
** bytes only (the MPI pool's) refuses an mp object, instead of adding its fds.
*/
typedef struct mp_oob {
  int *fds;                    /* borrowed from the objects (encode) or the transport's (decode) */
  size_t n, cap;
  const char *refuse;
} mp_oob;

/*
** Pushes a new empty list, owned by a userdata on the stack (an error
** halfway through encoding leaks nothing).
*/
mp_oob *mp_oob_new(lua_State *L);

/* Index of fd in the list, adding it if new; raises when out of memory. */
size_t mp_oob_add(lua_State *L, mp_oob *o, int fd);

/* Registers how objects of class c travel (idempotent). */
void mp_travel_register(const mp_class *c, const mp_travel *t);

/* The class of the object at idx when it is an mp object that travels (and *t its way), else NULL. */
const mp_class *mp_travel_class(lua_State *L, int idx, const mp_travel **t);

/* The registered class named name (len bytes) and *t its way, or NULL. */
const mp_class *mp_travel_find(const char *name, size_t len, const mp_travel **t);

/* Description helpers: append / read u64 values (little-endian); read raises on a short description. */
void mp_travel_put(mp_travel_desc *d, uint64_t v);
uint64_t mp_travel_get(lua_State *L, const mp_travel_desc *d, size_t *pos);

/* A close-on-exec duplicate of a received fd, or raises. */
int mp_travel_dup(lua_State *L, int fd);

#endif

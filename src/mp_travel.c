/*
** The registry of mp classes that travel, and the out-of-band fd list
** (mp_travel.h). The registry is process-wide: it holds pointers to static
** class descriptions, the same in every state.
*/
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <pthread.h>

#include "mp_travel.h"

#define MAX_CLASSES 32

static const mp_class *classes[MAX_CLASSES];
static const mp_travel *ways[MAX_CLASSES];
static int nclasses;
static pthread_mutex_t reg_mutex = PTHREAD_MUTEX_INITIALIZER;

void mp_travel_register(const mp_class *c, const mp_travel *t) {
  pthread_mutex_lock(&reg_mutex);
  int known = 0;
  for (int i = 0; i < nclasses; i++) known |= classes[i] == c;
  if (!known && nclasses < MAX_CLASSES) {
    ways[nclasses] = t;
    classes[nclasses++] = c;
  }
  pthread_mutex_unlock(&reg_mutex);
}

/*
** Reads the first word of a full userdata only (lua_rawlen says it is
** there) and compares it with the registered pointers without following it:
** a foreign userdata is never dereferenced.
*/
const mp_class *mp_travel_class(lua_State *L, int idx, const mp_travel **t) {
  if (lua_type(L, idx) != LUA_TUSERDATA || lua_rawlen(L, idx) < sizeof(void *)) return NULL;
  const mp_class *k = *(const mp_class *const *)lua_touserdata(L, idx);
  for (int i = 0; i < nclasses; i++) {
    if (classes[i] == k && lua_rawlen(L, idx) >= k->size) { *t = ways[i]; return k; }
  }
  return NULL;
}

const mp_class *mp_travel_find(const char *name, size_t len, const mp_travel **t) {
  for (int i = 0; i < nclasses; i++) {
    if (strlen(classes[i]->tname) == len && memcmp(classes[i]->tname, name, len) == 0) {
      *t = ways[i];
      return classes[i];
    }
  }
  return NULL;
}

static int oob_gc(lua_State *L) {
  mp_oob *o = luaL_checkudata(L, 1, "mp.oob");      /* a wrong self is an error, not a crash */
  free(o->fds);
  o->fds = NULL;
  o->n = o->cap = 0;
  return 0;
}

mp_oob *mp_oob_new(lua_State *L) {
  mp_oob *o = lua_newuserdatauv(L, sizeof *o, 0);
  memset(o, 0, sizeof *o);
  if (luaL_newmetatable(L, "mp.oob")) {
    lua_pushcfunction(L, oob_gc);
    lua_setfield(L, -2, "__gc");
  }
  lua_setmetatable(L, -2);
  return o;
}

size_t mp_oob_add(lua_State *L, mp_oob *o, int fd) {
  for (size_t i = 0; i < o->n; i++)
    if (o->fds[i] == fd) return i;
  if (o->n == o->cap) {
    size_t cap = o->cap ? o->cap * 2 : 8;
    int *p = realloc(o->fds, cap * sizeof *p);
    if (p == NULL) luaL_error(L, "not enough memory");
    o->fds = p;
    o->cap = cap;
  }
  o->fds[o->n] = fd;
  return o->n++;
}

void mp_travel_put(mp_travel_desc *d, uint64_t v) {
  if (d->len + 8 > MP_TRAVEL_DESC) return;    /* descriptions are fixed and short */
  for (int i = 0; i < 8; i++) d->bytes[d->len++] = (unsigned char)(v >> (8 * i));
}

uint64_t mp_travel_get(lua_State *L, const mp_travel_desc *d, size_t *pos) {
  if (*pos + 8 > d->len) luaL_error(L, "mp.loads: corrupt object description");
  uint64_t v = 0;
  for (int i = 7; i >= 0; i--) v = (v << 8) | d->bytes[*pos + (size_t)i];
  *pos += 8;
  return v;
}

int mp_travel_dup(lua_State *L, int fd) {
  int k = fcntl(fd, F_DUPFD_CLOEXEC, 3);
  if (k < 0) luaL_error(L, "cannot receive an mp object: %s", strerror(errno));
  return k;
}

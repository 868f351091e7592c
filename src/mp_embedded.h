/*
** The Lua half of the library, compiled in by cmake/embed_lua.cmake.
*/
#ifndef MP_EMBEDDED_H
#define MP_EMBEDDED_H

#include <stddef.h>

typedef struct mp_embedded_module {
  const char *name;       /* "mp", "mp.process", ... */
  const char *chunkname;  /* "@mp/process.lua": tracebacks name the source file */
  const char *source;
  size_t size;
} mp_embedded_module;

/* Terminated by an entry whose name is NULL. */
extern const mp_embedded_module mp_embedded_modules[];

#endif

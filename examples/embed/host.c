/*
** A minimal C host that embeds Lua 5.4 and opens mplua in its own state, as a
** game or tool would. Built by CMake as `embed_host`; run:
**   build/embed_host 'local p = mp.Process{target = print, args = {"hi"}}; p:start(); p:join()'
** It runs each argument as a chunk and exits 1 on the first error.
*/
#include <stdio.h>

#include <lauxlib.h>
#include <lualib.h>

#include "mplua.h"

int main(int argc, char **argv) {
  lua_State *L = luaL_newstate();
  if (L == NULL) return 1;
  luaL_openlibs(L);
  luaL_requiref(L, "mp", luaopen_mp, 1);   /* also sets the global mp */
  lua_pop(L, 1);
  int status = LUA_OK;
  for (int i = 1; i < argc && status == LUA_OK; i++) {
    status = luaL_dostring(L, argv[i]);
    if (status != LUA_OK) fprintf(stderr, "embed_host: %s\n", lua_tostring(L, -1));
  }
  lua_close(L);
  return status == LUA_OK ? 0 : 1;
}

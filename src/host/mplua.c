/* Placeholder until the host lands: runs a script with mp preloaded. */
#include <lua.h>
#include <lauxlib.h>
#include <lualib.h>
#include <stdio.h>
#include "mplua.h"
int main(int argc, char **argv) {
  lua_State *L = luaL_newstate();
  luaL_openlibs(L);
  luaL_requiref(L, "mp", luaopen_mp, 1);
  lua_pop(L, 1);
  int rc = argc > 1 ? luaL_dofile(L, argv[1]) : 0;
  if (rc) fprintf(stderr, "%s\n", lua_tostring(L, -1));
  lua_close(L);
  return rc ? 1 : 0;
}

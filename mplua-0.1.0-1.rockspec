-- LuaRocks package of mplua. Not published: `luarocks make` builds and installs
-- the checkout it runs in (it fetches nothing), with the project's CMake build.
--   luarocks --lua-version 5.4 make --tree <dir> mplua-0.1.0-1.rockspec
rockspec_format = "3.0"
package = "mplua"
version = "0.1.0-1"

source = {
  -- Required by the format; `luarocks make` does not use it.
  url = "git+file://.",
}

description = {
  summary = "Python's multiprocessing for Lua 5.4: processes, pools, queues, pipes, locks, shared memory",
  detailed = [[
mp gives Lua 5.4 real parallelism through processes (fork), pools of worker
processes, queues and pipes, process-shared locks, semaphores, conditions, events
and barriers, shared memory and managers, with Python's multiprocessing names. The rock
installs the C module (require "mp"), the mplua interpreter (Lua 5.4 with mp
preloaded), mplua-busted (busted with spec files run in parallel) and the man page.
Linux only (futex, pidfd, memfd, /proc).
]],
  license = "MIT",
  labels = { "multiprocessing", "parallel", "fork", "shared-memory" },
}

supported_platforms = { "linux" }

dependencies = {
  "lua >= 5.4, < 5.5",
}

build = {
  type = "cmake",
  -- CMake finds Lua 5.4 and nettle (the Manager's HMAC) with pkg-config: Debian's
  -- liblua5.4-dev and nettle-dev. The module and the Lua files go where LuaRocks deploys them;
  -- the C library, header and pkg-config file stay in the rock's directory
  -- (LuaRocks would otherwise move everything under LIBDIR next to mp.so).
  variables = {
    CMAKE_BUILD_TYPE = "Release",
    CMAKE_INSTALL_PREFIX = "$(PREFIX)",
    CMAKE_INSTALL_LIBDIR = "clib",
    MPLUA_INSTALL_CMOD_DIR = "$(LIBDIR)",
    MPLUA_INSTALL_LMOD_DIR = "$(LUADIR)",
  },
  copy_directories = { "docs" },
}

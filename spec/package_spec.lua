--[[
Packaging: the rockspec builds and installs with `luarocks make` into a temporary
tree, and a stock lua5.4 then uses the installed mp; `cmake --install` installs the
man page, the license and the changelog; the man page renders without warnings.

Commands run without the sanitizer run's LD_PRELOAD (LeakSanitizer would judge
luarocks, cmake and the compiler).
]]
local H = require "helper"

local ROCKSPEC = "mplua-0.1.0-1.rockspec"

-- Runs a shell command line; returns {stdout=, stderr=, status=}.
local function sh(cmd, timeout)
  return H.run{ program = "env", args = { "-u", "LD_PRELOAD", "sh", "-c", cmd }, timeout = timeout or 120 }
end

local function tmpdir()
  local d = os.tmpname()
  os.remove(d)
  assert.is_true(os.execute("mkdir -p " .. H.quote(d)))
  finally(function() os.execute("rm -rf " .. H.quote(d)) end)
  return d
end

local function exists(path)
  local f = io.open(path)
  if f then f:close() end
  return f ~= nil
end

local has_luarocks = sh("command -v luarocks").status == 0

describe("packaging", function()
  if not has_luarocks then
    pending("luarocks make: luarocks is not installed (scripts/setup installs Debian's luarocks)")
  else
    it("luarocks make builds and installs the rock in a temporary tree that a stock lua5.4 uses", function()
      local dir = tmpdir()
      local src, tree = dir .. "/src", dir .. "/tree"
      -- A copy of the checkout without build trees: LuaRocks builds in the source
      -- directory (build.luarocks/), and the suite may run this twice at once.
      local r = sh("mkdir -p " .. H.quote(src) .. " && tar -c --exclude=./.git --exclude='./build*' . | tar -x -C "
        .. H.quote(src))
      assert.equal(0, r.status, r.stderr)
      r = sh("cd " .. H.quote(src) .. " && CMAKE_BUILD_PARALLEL_LEVEL=2 luarocks --lua-version 5.4 make --tree "
        .. H.quote(tree) .. " " .. ROCKSPEC, 600)
      assert.equal(0, r.status, r.stdout .. r.stderr)
      assert.matches("mplua 0.1.0%-1 is now installed in", r.stdout)

      -- Where LuaRocks deploys modules and commands.
      for _, f in ipairs { "/lib/lua/5.4/mp.so", "/share/lua/5.4/mp.lua", "/share/lua/5.4/mp/process.lua",
                           "/bin/mplua", "/bin/mplua-busted" } do
        assert(exists(tree .. f), tree .. f .. " missing")
      end
      local rock = tree .. "/lib/luarocks/rocks-5.4/mplua/0.1.0-1"
      for _, f in ipairs { "/share/man/man1/mplua.1", "/share/doc/mplua/LICENSE", "/include/mplua.h",
                           "/clib/libmplua.a" } do
        assert(exists(rock .. f), rock .. f .. " missing")
      end
      -- The C library stays in the rock: nothing but mp.so next to it.
      assert.is_false(exists(tree .. "/lib/lua/5.4/libmplua.a"))

      -- A stock lua5.4 that can only see the tree loads mp from it and runs a process.
      local env = { LUA_PATH = tree .. "/share/lua/5.4/?.lua", LUA_CPATH = tree .. "/lib/lua/5.4/?.so" }
      r = H.run{ program = "env", args = { "-u", "LD_PRELOAD",
        "LUA_PATH=" .. env.LUA_PATH, "LUA_CPATH=" .. env.LUA_CPATH, "lua5.4", "-e", [[
          local mp = require "mp"
          io.write(package.searchpath("mp", package.path), " ", package.searchpath("mp", package.cpath), "\n")
          local p = mp.Process{ target = os.exit, args = { 4 } }
          p:start(); p:join(10)
          local pool <close> = mp.Pool(2)
          io.write(mp.version, " ", p.exitcode, " ", table.concat(pool:map(function(x) return x * x end, { 1, 2, 3 }), ","), "\n")
        ]] } }
      assert.equal(0, r.status, r.stderr)
      assert.equal(tree .. "/share/lua/5.4/mp.lua " .. tree .. "/lib/lua/5.4/mp.so\n0.1.0 4 1,4,9\n", r.stdout)

      -- The installed mplua runs alone.
      r = H.run{ program = tree .. "/bin/mplua", args = { "-e", "io.write(mp.version, ' ', mp.cpu_count() > 0 and 'ok' or '')" } }
      assert.equal("0.1.0 ok", r.stdout, r.stderr)

      -- And the rock removes cleanly.
      r = sh("luarocks --lua-version 5.4 remove --tree " .. H.quote(tree) .. " mplua")
      assert.equal(0, r.status, r.stdout .. r.stderr)
      assert.is_false(exists(tree .. "/lib/lua/5.4/mp.so"))
      assert.is_false(exists(tree .. "/bin/mplua"))
    end)
  end

  it("cmake --install puts the man page, the license and the changelog in place", function()
    local dest = tmpdir()
    local r = sh("DESTDIR=" .. H.quote(dest) .. " cmake --install " .. H.quote(H.build))
    assert.equal(0, r.status, r.stderr)
    for _, f in ipairs { "/share/man/man1/mplua.1", "/share/doc/mplua/LICENSE", "/share/doc/mplua/CHANGELOG.md",
                         "/share/doc/mplua/README.md" } do
      assert(exists(dest .. "/usr/local" .. f), dest .. "/usr/local" .. f .. " missing")
    end
    assert.equal(H.read_file("mplua.1"), H.read_file(dest .. "/usr/local/share/man/man1/mplua.1"))
  end)

  it("mplua.1 renders with groff's man macros, without a warning", function()
    local r = sh("groff -man -Tutf8 -ww mplua.1")
    assert.equal(0, r.status, r.stderr)
    assert.equal("", r.stderr)
    for _, section in ipairs { "NAME", "SYNOPSIS", "DESCRIPTION", "OPTIONS", "ENVIRONMENT", "EXIT STATUS",
                               "EXAMPLES", "PLATFORM", "SEE ALSO" } do
      assert.matches("\n" .. section .. "\n", r.stdout:gsub("\27%[[%d;]*m", ""):gsub(".\8", ""), 1, true)
    end
    -- Every option of `mplua -h` is documented.
    local usage = H.run{ args = { "-h" } }.stderr
    for opt in usage:gmatch("\n  (%-%S*)") do
      assert(r.stdout:gsub(".\8", ""):find("\n       " .. opt:gsub("%-", "%%-"), 1), "option " .. opt .. " not in mplua.1")
    end
  end)

  it("LICENSE is MIT, as Lua's, and the rockspec says so", function()
    local license = H.read_file("LICENSE")
    assert.matches("^MIT License\n\nCopyright %(C%) 2026 the mplua authors\n", license)
    assert.matches("Permission is hereby granted, free of charge", license, 1, true)
    assert.matches('license = "MIT"', H.read_file(ROCKSPEC), 1, true)
  end)
end)

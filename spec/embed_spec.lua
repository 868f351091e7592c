-- libmplua in foreign hosts (examples/embed/host.c, spec/hosts/states.c) and the installed tree.
local H = require "helper"

local EXAMPLE = "examples/embed"

-- The environment a program linked with the (possibly ASan-built) library needs.
local function asan_env(env)
  env = env or {}
  local preload = os.getenv("MPLUA_ASAN_PRELOAD")
  if preload and preload ~= "" then env.LD_PRELOAD = preload end
  return env
end

-- Tools run from a shell: without the ASan runtime the sanitizer run preloads into lua5.4.
local TOOL = "env -u LD_PRELOAD "

local function lines(s)
  local t = {}
  for l in (s or ""):gmatch("[^\n]+") do t[#t + 1] = l end
  return t
end

-- The example host's stdout, frame lines only (the workers' log lines interleave).
local function frames(out)
  local t = {}
  for _, l in ipairs(lines(out)) do if l:find("^frame") then t[#t + 1] = l end end
  return t
end

describe("the embedding example (a host with a main loop and a thread)", function()
  it("starts a Pool and a process through the fork server while its thread holds the host's mutex", function()
    local r = H.run{ program = H.build .. "/embed_host", args = { EXAMPLE .. "/game.lua" }, env = asan_env() }
    assert.equal(0, r.status, r.stderr)
    assert.same({ "frame 1: 33 (forkserver)", "frame 2: 63 (forkserver)", "frame 3: 93 (forkserver)" }, frames(r.stdout))
    -- the child hook ran in each process and pool worker (their tasks log), forked by the server
    local _, served = r.stdout:gsub("%(forked as served%)", "")
    assert.equal(9, served, r.stdout)
  end)

  it("deadlocks with plain fork, where a child needs the mutex the thread held (bounded by the script's timeout)", function()
    local r = H.run{ program = H.build .. "/embed_host", args = { "--fork", EXAMPLE .. "/game.lua" }, env = asan_env() }
    assert.equal(2, r.status, r.stderr)
    assert.matches("frame 1: no answer within 2 s: the workers are stuck on the host's mutex", r.stderr)
    assert.same({}, frames(r.stdout))
    assert.is_nil(r.stdout:find("[log]", 1, true), r.stdout)
  end)
end)

describe("libmplua in a host", function()
  for _, case in ipairs {
    { "two", "two states in one process, each with its own fork server; one closes, the other goes on",
      { "a fork", "a forkserver", "b fork", "b forkserver", "b after a closed fork", "b after a closed forkserver", "ok two" } },
    { "reopen", "opens the library again after lua_close, three times",
      { "state 1 fork", "state 1 forkserver", "state 2 fork", "state 2 forkserver", "state 3 fork", "state 3 forkserver", "ok reopen" } },
    { "sigchld", "survives a SIGCHLD that arrives after lua_close closed the state that had a Lua handler for it", nil },
  } do
    it(case[2], function()
      local r = H.run{ program = H.build .. "/states_host", args = { case[1] }, env = asan_env() }
      assert.equal(0, r.status, r.stderr)
      if case[3] then
        assert.same(case[3], lines(r.stdout))
      else
        assert.matches("^closed with child %d+ running\nchild ended after lua_close\nok sigchld\n$", r.stdout)
      end
    end)
  end

  it("runs the host's fork hooks around every fork: processes, the server, the server's children", function()
    local r = H.run{ program = H.build .. "/states_host", args = { "hooks" }, env = asan_env() }
    assert.equal(0, r.status, r.stderr)
    local got = lines(r.stdout)
    table.sort(got)
    -- MPLUA_FORK_SERVER (2): prepare and parent here, child in the server; MPLUA_FORK_PROCESS (1):
    -- a fork child; MPLUA_FORK_SERVED (3): prepare and parent in the server, child in its child
    assert.same({ "child 1", "child 2", "child 3", "ok hooks", "parent 1", "parent 2", "parent 3",
                  "prepare 1", "prepare 2", "prepare 3" }, got)
  end)

  it("runs states in two threads at once", function()
    local r = H.run{ program = H.build .. "/states_host", args = { "threads" }, env = asan_env() }
    assert.equal(0, r.status, r.stderr)
    local counts = {}
    for _, l in ipairs(lines(r.stdout)) do counts[l] = (counts[l] or 0) + 1 end
    assert.same({ ["t1 fork"] = 5, ["t1 forkserver"] = 5, ["t2 fork"] = 5, ["t2 forkserver"] = 5, ["ok threads"] = 1 }, counts)
  end)
end)

describe("the installed tree", function()
  local dest
  before_each(function()
    dest = os.tmpname()
    os.remove(dest)
  end)
  after_each(function() os.execute("rm -rf " .. H.quote(dest)) end)

  it("staged with DESTDIR, serves a stock lua5.4", function()
    assert.is_true(os.execute(TOOL .. "DESTDIR=" .. H.quote(dest) .. " cmake --install " .. H.quote(H.build) .. " >/dev/null"))
    local prefix = dest .. "/usr/local"
    for _, f in ipairs { "/bin/mplua", "/bin/mplua-busted", "/include/mplua.h", "/lib/libmplua.a", "/lib/pkgconfig/mplua.pc",
                         "/lib/lua/5.4/mp.so", "/share/lua/5.4/mp.lua", "/share/lua/5.4/mp/process.lua" } do
      assert.is_truthy(io.open(prefix .. f), prefix .. f)
    end
    -- the final location, not the staging directory
    assert.equal("#!/usr/local/bin/mplua", io.lines(prefix .. "/bin/mplua-busted")())
    local env = asan_env{ LUA_PATH = prefix .. "/share/lua/5.4/?.lua", LUA_CPATH = prefix .. "/lib/lua/5.4/?.so" }
    local r = H.run{ program = "lua5.4", env = env,
      args = { "-e", "local mp = require 'mp'; local p = mp.Process{target = os.exit, args = {4}}; p:start(); p:join(10); print(p.exitcode)" } }
    assert.equal("4\n", r.stdout, r.stderr)
  end)

  it("installed with --prefix, builds and runs the example host with pkg-config", function()
    assert.is_true(os.execute(TOOL .. "cmake --install " .. H.quote(H.build) .. " --prefix " .. H.quote(dest) .. " >/dev/null"))
    assert.equal("#!" .. dest .. "/bin/mplua", io.lines(dest .. "/bin/mplua-busted")())
    local pc = TOOL .. "PKG_CONFIG_PATH=" .. H.quote(dest .. "/lib/pkgconfig") .. " pkg-config "
    local p = io.popen(pc .. "--cflags --libs mplua")
    local flags = p:read("a")
    p:close()
    assert.matches("%-I" .. dest:gsub("%p", "%%%0") .. "/[^ ]*include", flags)
    assert.matches("%-L" .. dest:gsub("%p", "%%%0") .. "/[^ ]*lib %-lmplua", flags)
    p = io.popen(pc .. "--modversion mplua")
    local version = p:read("l")
    p:close()
    -- the header's version is the package's
    local probe = dest .. "/probe.c"
    H.write_file(probe, '#include <stdio.h>\n#include "mplua.h"\n' ..
      'int main(void) { printf("%s %d\\n", MPLUA_VERSION, MPLUA_VERSION_NUM); return 0; }\n')
    assert.is_true(os.execute(TOOL .. "cc -o " .. H.quote(dest .. "/probe") .. " " .. H.quote(probe) .. " $(" .. pc .. "--cflags mplua)"))
    local v = H.run{ program = dest .. "/probe" }
    local maj, min, pat = version:match("^(%d+)%.(%d+)%.(%d+)$")
    assert.equal(version .. " " .. (maj * 10000 + min * 100 + pat) .. "\n", v.stdout)
    -- the example host, from the installed header and library only
    local host = dest .. "/host"
    assert.is_true(os.execute(TOOL .. "cc -o " .. H.quote(host) .. " " .. EXAMPLE .. "/host.c $(" .. pc .. "--cflags --libs mplua) -pthread"))
    local env = asan_env{ LD_LIBRARY_PATH = dest .. "/lib" }
    local r = H.run{ program = host, args = { EXAMPLE .. "/game.lua" }, env = env }
    assert.equal(0, r.status, r.stderr)
    assert.same({ "frame 1: 33 (forkserver)", "frame 2: 63 (forkserver)", "frame 3: 93 (forkserver)" }, frames(r.stdout))
    r = H.run{ program = host, args = { "--fork", "--frames", "1", EXAMPLE .. "/game.lua" }, env = env }
    assert.equal(2, r.status, r.stderr)
    assert.matches("stuck on the host's mutex", r.stderr)
  end)
end)

-- The mplua command, from outside: its command line, REPL, exit statuses and
-- Ctrl-C, compared with the stock lua5.4 wherever both should agree.
local H = require "helper"
local signal = require "posix.signal"

local mp_version = require("mp").version

local read_file, write_file = H.read_file, H.write_file

-- A temporary file holding `s`, removed by `finally`.
local function temp_file(s, suffix)
  local path = os.tmpname()
  os.remove(path)
  path = path .. (suffix or ".lua")
  write_file(path, s)
  finally(function() os.remove(path) end)
  return path
end

-- stderr with the program's name (build/mplua or lua5.4) made "lua".
local function normalize(s, program)
  return ((s or ""):gsub(program:gsub("%p", "%%%0"), "lua"))
end

-- Runs opts with mplua and with lua5.4; asserts the same stdout, stderr and status.
local function same_as_lua(opts)
  local mine = H.run(opts)
  local copy = {}
  for k, v in pairs(opts) do copy[k] = v end
  copy.program = H.lua
  local lua = H.run(copy)
  assert.equal(lua.status, mine.status, mine.stderr)
  assert.equal(lua.stdout, mine.stdout)
  assert.equal(normalize(lua.stderr, H.lua), normalize(mine.stderr, H.mplua))
  return mine
end

describe("mplua command line", function()
  it("runs -e chunks in order, as lua5.4", function()
    local r = same_as_lua{ args = { "-e", "print(1+1)", "-ex=3", "-e", "print(x)" } }
    assert.equal("2\n3\n", r.stdout)
  end)

  it("has mp preloaded as a global, the same table require returns", function()
    local r = H.run{ args = { "-e", "print(type(mp), require('mp') == mp, mp.version, package.loaded.mp == mp)" } }
    assert.equal(0, r.status, r.stderr)
    assert.equal("table\ttrue\t" .. mp_version .. "\ttrue\n", r.stdout)
  end)

  it("loads modules with -l mod and -l g=mod", function()
    local dir = os.tmpname()
    os.remove(dir)
    assert(os.execute("mkdir " .. H.quote(dir)))
    finally(function() os.execute("rm -rf " .. H.quote(dir)) end)
    write_file(dir .. "/hello.lua", "print('loading', ...); return {x = 15}")
    local r = same_as_lua{ env = { LUA_PATH = dir .. "/?.lua" },
      args = { "-l", "hello", "-lg=hello", "-l", "s=string", "-e", "print(hello.x, g == hello, s.upper('ok'))" } }
    assert.equal("loading\thello\t" .. dir .. "/hello.lua\n15\ttrue\tOK\n", r.stdout)
  end)

  it("runs stdin with -, and without arguments when stdin is not a terminal", function()
    local r = same_as_lua{ args = { "-", "a", "b" }, stdin = "print(arg[0], #arg, ...)" }
    assert.equal("-\t2\ta\tb\n", r.stdout)
    r = same_as_lua{ stdin = "print(42)\nprint(#arg, ...)" }
    assert.equal("42\n0\n", r.stdout)
  end)

  it("stops handling options at --", function()
    local script = temp_file("print(...)")
    local r = same_as_lua{ args = { "--", script, "-e", "x" } }
    assert.equal("-e\tx\n", r.stdout)
    r = same_as_lua{ args = { "-e", "print(1)", "--" }, stdin = "print(2)" }
    assert.equal("1\n", r.stdout)
  end)

  it("prints mplua's version and Lua's copyright with -v", function()
    local lua = H.run{ program = H.lua, args = { "-v" } }
    local r = H.run{ args = { "-v" } }
    assert.equal(0, r.status)
    assert.equal("mplua " .. mp_version .. "\n" .. lua.stdout, r.stdout)
    assert.matches("^Lua 5%.4%.%d+  Copyright %(C%) 1994%-%d+ Lua%.org, PUC%-Rio\n$", lua.stdout)
    -- the copyright stays the last line before the chunks' output
    r = H.run{ args = { "-v", "-e", "print'hello'" } }
    assert.matches("PUC%-Rio\nhello\n$", r.stdout)
  end)

  it("rejects bad options with lua's usage message", function()
    for _, args in ipairs { { "-h" }, { "-Ex" }, { "-vv" }, { "-e" }, { "-l" }, { "---" } } do
      local r = same_as_lua{ args = args }
      assert.equal(1, r.status)
      assert.matches("usage: ", r.stderr)
    end
  end)

  it("runs LUA_INIT_5_4 or else LUA_INIT, as code or @file, before the script", function()
    local init = temp_file("x = (x or 10) + 1; print('init', arg[1])")
    local r = same_as_lua{ env = { LUA_INIT = "@" .. init }, args = { "-e", "print(x)", "--", init, "a" } }
    assert.equal("init\ta\n11\ninit\ta\n", r.stdout)
    r = same_as_lua{ env = { LUA_INIT = "print'plain'", LUA_INIT_5_4 = "print'versioned'" }, args = { "-e", "" } }
    assert.equal("versioned\n", r.stdout)
    r = same_as_lua{ env = { LUA_INIT = "error('bad init')" }, args = { "-e", "print'not reached'" } }
    assert.equal(1, r.status)
    assert.matches("^lua: LUA_INIT:1: bad init\n", normalize(r.stderr, H.mplua))
  end)

  it("ignores LUA_INIT and LUA_PATH with -E", function()
    local r = same_as_lua{ env = { LUA_INIT = "error('x')", LUA_PATH = "nowhere" }, args = { "-E", "-e", "print(package.path:find('nowhere'))" } }
    assert.equal("nil\n", r.stdout)
  end)

  it("turns warnings on with -W", function()
    local r = same_as_lua{ args = { "-e", "warn('hidden')" } }
    assert.equal("", r.stderr)
    r = same_as_lua{ args = { "-W", "-e", "warn('shown', '!')" } }
    assert.equal("Lua warning: shown!\n", r.stderr)
  end)

  it("fills arg with negative indexes and passes the script's arguments as ...", function()
    local script = temp_file("print(#arg, arg[-4], arg[-3], arg[-2], arg[-1], arg[0], arg[1], arg[2], arg[-5], select('#', ...), ...)")
    local r = H.run{ args = { "-e", "", "--", script, "a", "b c" } }
    assert.equal(0, r.status, r.stderr)
    assert.equal(table.concat({ "2", H.mplua, "-e", "", "--", script, "a", "b c", "nil", "2", "a", "b c" }, "\t") .. "\n",
      r.stdout)
    -- without a script, arg[0] is the interpreter and the options follow it
    r = H.run{ args = { "-e", "print(#arg, arg[0], arg[1], arg[2], arg[3])" } }
    assert.equal(table.concat({ "2", H.mplua, "-e", "print(#arg, arg[0], arg[1], arg[2], arg[3])", "nil" }, "\t") .. "\n", r.stdout)
  end)
end)

describe("mplua exit statuses", function()
  it("is 1 with the message and a traceback on stderr for an uncaught error", function()
    local script = temp_file("local function f() error('boom') end\nf()\n")
    local r = same_as_lua{ args = { script } }
    assert.equal(1, r.status)
    assert.equal("", r.stdout)
    assert.matches("^" .. H.mplua:gsub("%p", "%%%0") .. ": [^\n]*:1: boom\nstack traceback:\n", r.stderr)
  end)

  it("reports error objects through __tostring, without a traceback, as lua does", function()
    local r = same_as_lua{ args = { "-e", "error(setmetatable({}, {__tostring = function() return 'custom' end}))" } }
    assert.equal(1, r.status)
    assert.equal(H.mplua .. ": custom\n", r.stderr)
    r = same_as_lua{ args = { "-e", "error({})" } }
    assert.matches("^[^\n]*%(error object is a table value%)\n", r.stderr)
  end)

  it("is 1 on a syntax error", function()
    local script = temp_file("x = = 1\n")
    local r = same_as_lua{ args = { script } }
    assert.equal(1, r.status)
    assert.matches("unexpected symbol near '='", r.stderr)
  end)

  it("follows os.exit: numbers masked to 8 bits, true and false", function()
    for _, case in ipairs { { "os.exit(3)", 3 }, { "os.exit(256)", 0 }, { "os.exit(true)", 0 },
                            { "os.exit(false)", 1 }, { "os.exit()", 0 }, { "os.exit(5, true)", 5 },
                            { "os.exit(false, true)", 1 } } do
      local r = same_as_lua{ args = { "-e", "io.write('x'); " .. case[1] } }
      assert.equal(case[2], r.status, case[1])
      assert.equal("x", r.stdout, case[1])
    end
  end)

  it("closes to-be-closed variables and runs finalizers on os.exit(code, true)", function()
    local script = temp_file([[
      setmetatable({}, {__gc = function() print("gc") end})
      local x <close> = setmetatable({}, {__close = function() print("closed") end})
      os.exit(true, true)
    ]])
    local r = same_as_lua{ args = { script } }
    assert.equal("closed\ngc\n", r.stdout)
  end)
end)

describe("mplua and child processes", function()
  it("prints each line once through a pipe when the script forks", function()
    local r = H.run_script([[
      print("parent before")
      io.write("unflushed ")
      local ps = {}
      for i = 1, 3 do
        ps[i] = mp.Process{target = function() print("child " .. i) end}
        ps[i]:start()
        ps[i]:join()
      end
      print("parent after")
    ]], { pipe_to = "cat" })
    assert.equal(0, r.status, r.stderr)
    assert.equal("parent before\nunflushed child 1\nchild 2\nchild 3\nparent after\n", r.stdout)
  end)

  it("waits for non-daemonic children when the script ends, by return or by os.exit", function()
    for _, ending in ipairs { "", "os.exit(0)", "os.exit(0, true)", "error('late')" } do
      local r = H.run_script([[
        mp.Process{target = function() mp.sleep(0.2); print("child done") end}:start()
        print("parent done")
      ]] .. ending)
      assert.equal("parent done\nchild done\n", r.stdout, ending)
    end
  end)

  it("terminates daemonic children when the script ends", function()
    local t0 = os.time()
    local r = H.run_script([[
      mp.Process{target = function() mp.sleep(60) end, daemon = true}:start()
      print("parent done")
    ]], { timeout = 30 })
    assert.equal(0, r.status, r.stderr)
    assert.equal("parent done\n", r.stdout)
    assert.is_true(os.time() - t0 < 30)
  end)
end)

--[[
Runs a script in the background through io.popen; the script must print its pid
on the first line when it is ready for the signal. Returns the pid and a
function that reads the rest: stdout, stderr, exit status.
]]
local function start_script(source, args, stdin, program)
  local script = temp_file(source)
  local err = script .. ".err"
  finally(function() os.remove(err) end)
  local quoted = {}
  for i, a in ipairs(args or { script }) do quoted[i] = H.quote(a:gsub("%%SCRIPT", script)) end
  local f = assert(io.popen(string.format("timeout -k 2 20 %s %s <%s 2>%s; echo \"status=$?\"",
    program or H.quote(H.mplua), table.concat(quoted, " "), H.quote(stdin or "/dev/null"), H.quote(err))))
  local line, pid
  repeat   -- the first line that is a number (a REPL prints its banner first)
    line = f:read("l")
    pid = tonumber(line and line:match("^%d+$"))
  until pid or line == nil
  assert(pid and pid > 1, "no pid from the script")   -- never kill(0) or kill(1)
  return pid, function()
    local out = f:read("a")
    f:close()
    local status = tonumber(out:match("status=(%d+)\n$"))
    return out:gsub("status=%d+\n$", ""), read_file(err), status
  end
end

-- Waits until pid is asleep in the kernel, i.e. blocked in a wait (fails after 10 s).
local function until_blocked(pid) H.wait_blocked(pid) end

describe("mplua and SIGINT", function()
  it("stops a running script with 'interrupted!' and status 1, as lua does", function()
    local pid, finish = start_script([[
      print(mp.getpid()); io.stdout:flush()
      while true do end
    ]])
    signal.kill(pid, signal.SIGINT)
    local out, err, status = finish()
    assert.equal(1, status, err)
    assert.equal("", out)
    assert.matches("^[^\n]*: interrupted!\nstack traceback:\n", err)
  end)

  it("interrupts a script blocked in p:join(), inside pcall", function()
    local pid, finish = start_script([[
      local p = mp.Process{target = function() mp.sleep(60) end}
      p:start()
      local ok, err = pcall(function()
        print(mp.getpid()); io.stdout:flush()
        p:join()
      end)
      print(ok, err)
      p:terminate(); p:join()
      print("exitcode", p.exitcode)
    ]])
    until_blocked(pid)
    signal.kill(pid, signal.SIGINT)
    local out, err, status = finish()
    assert.equal(0, status, err)
    assert.matches("^false\t[^\n]*interrupted!\nexitcode\t%-15\n$", out)
  end)

  it("ends a script blocked in p:join() with status 1, terminating its daemon", function()
    local pid, finish = start_script([[
      local p = mp.Process{target = function() mp.sleep(60) end, daemon = true}
      p:start()
      print(mp.getpid()); io.stdout:flush()
      p:join()
      print("not reached")
    ]])
    until_blocked(pid)
    signal.kill(pid, signal.SIGINT)
    local out, err, status = finish()
    assert.equal(1, status, err)
    assert.equal("", out)
    assert.matches("interrupted!\nstack traceback:\n", err)
  end)

  it("in a stock lua5.4 with mp.so, lua.c's Ctrl-C also interrupts p:join()", function()
    -- lua.c's hook has line events too; mp_check_interrupt must recognize it
    local preload = os.getenv("MPLUA_ASAN_PRELOAD")
    local program = string.format("env LUA_CPATH=%s %s %s",
      H.quote(H.build .. "/?.so;;"), preload and preload ~= "" and "LD_PRELOAD=" .. H.quote(preload) or "", H.lua)
    local pid, finish = start_script([[
      local p = mp.Process{target = function() mp.sleep(60) end, daemon = true}
      p:start()
      print(mp.getpid()); io.stdout:flush()
      p:join()
    ]], { "-e", "mp = require 'mp'", "%SCRIPT" }, nil, program)
    until_blocked(pid)
    signal.kill(pid, signal.SIGINT)
    local out, err, status = finish()
    assert.equal(1, status, err)
    assert.matches("^lua5.4: [^\n]*interrupted!\nstack traceback:\n", err)
  end)

  it("reports the user's line for a Ctrl-C inside mp's own Lua code (mplua and lua5.4)", function()
    local preload = os.getenv("MPLUA_ASAN_PRELOAD")
    local stock = string.format("env LUA_CPATH=%s %s %s",
      H.quote(H.build .. "/?.so;;"), preload and preload ~= "" and "LD_PRELOAD=" .. H.quote(preload) or "", H.lua)
    for _, program in ipairs { H.quote(H.mplua), stock } do
      for _, call in ipairs { "p:join()", "pool:map(function() mp.sleep(60) end, { 1 })" } do
        local pid, finish = start_script([[
          local p = mp.Process{target = function() mp.sleep(60) end, daemon = true}
          p:start()
          local pool = mp.Pool(1)
          print(mp.getpid()); io.stdout:flush()
          ]] .. call .. "\n", { "-e", "mp = mp or require 'mp'", "%SCRIPT" }, nil, program)
        until_blocked(pid)
        signal.kill(pid, signal.SIGINT)
        local _, err, status = finish()
        assert.equal(1, status, err)
        assert.matches("^[^\n]*%.lua:5: interrupted!\nstack traceback:\n", err)
      end
    end
  end)

  it("interrupts a REPL line and goes on with the next one", function()
    local input = temp_file("print(mp.getpid()) io.stdout:flush() while true do end\nprint('next line')\n", ".txt")
    local pid, finish = start_script("", { "-e", "_PROMPT='' _PROMPT2=''", "-i" }, input)
    signal.kill(pid, signal.SIGINT)
    local out, err, status = finish()
    assert.equal(0, status, err)
    assert.matches("^[^\n]*interrupted!\nstack traceback:\n", err)
    assert.matches("\nnext line\n", out)
  end)

  it("runs an mp.signal SIGINT handler instead of interrupting", function()
    local pid, finish = start_script([[
      local hits = 0
      mp.signal("SIGINT", function(sig) hits = hits + 1 end)
      local p = mp.Process{target = function() io.read() end}  -- stdin is /dev/null: ends at once
      print(mp.getpid()); io.stdout:flush()
      while hits == 0 do end
      print("handled in a loop", hits)
      p:start(); p:join()
      print("joined", p.exitcode)
    ]])
    signal.kill(pid, signal.SIGINT)
    local out, err, status = finish()
    assert.equal(0, status, err)
    assert.equal("handled in a loop\t1\njoined\t0\n", out)
  end)

  it("reports its Ctrl-C handler as \"default\" to mp.signal, which restores it", function()
    local pid, finish = start_script([[
      local old = mp.signal("SIGINT", function() end)
      assert(old == "default", old)
      assert(mp.signal("SIGINT", old) ~= "default")
      print(mp.getpid()); io.stdout:flush()
      while true do end
    ]])
    signal.kill(pid, signal.SIGINT)
    local out, err, status = finish()
    assert.equal(1, status, err)
    assert.matches("interrupted!\nstack traceback:\n", err)
  end)

  it("lets an mp.signal handler decide while the script is blocked in p:join()", function()
    local pid, finish = start_script([[
      local p = mp.Process{target = function() mp.sleep(60) end}
      mp.signal("SIGINT", function() print("handler: terminating"); p:terminate() end)
      p:start()
      print(mp.getpid()); io.stdout:flush()
      p:join()
      print("joined", p.exitcode)
    ]])
    until_blocked(pid)
    signal.kill(pid, signal.SIGINT)
    local out, err, status = finish()
    assert.equal(0, status, err)
    assert.equal("handler: terminating\njoined\t-15\n", out)
  end)
end)

-- (script(1) runs without LD_PRELOAD: the sanitizer run preloads ASan into the stock lua5.4.)
describe("mplua REPL", function()
  it("prints expression values with -i, as lua5.4 does", function()
    local lua = H.run{ program = H.lua, args = { "-i" }, stdin = "x=21\nx*2\n" }
    local r = H.run{ args = { "-i" }, stdin = "x=21\nx*2\n" }
    assert.equal(0, r.status, r.stderr)
    assert.equal("mplua " .. mp_version .. "\n" .. lua.stdout, r.stdout)
    assert.matches("\n42\n", r.stdout)
  end)

  it("continues lines, reports errors without the program name, keeps going", function()
    local input = "function f(x)\nreturn x * 2\nend\n= f(4)\nerror('oops')\nprint(mp ~= nil)\n"
    local lua = H.run{ program = H.lua, args = { "-e", "_PROMPT='' _PROMPT2=''", "-i" }, stdin = input }
    local r = H.run{ args = { "-e", "_PROMPT='' _PROMPT2=''", "-i" }, stdin = input }
    assert.equal(0, r.status, r.stderr)
    assert.equal("mplua " .. mp_version .. "\n" .. lua.stdout:gsub("false\n", "true\n"), r.stdout)
    assert.equal(lua.stderr, r.stderr)
    assert.matches("^stdin:1: oops\n", r.stderr)
  end)

  it("keeps a history in ~/.mplua_history on a terminal", function()
    if not os.execute("command -v script >/dev/null") then
      pending("script(1) is not installed")
      return
    end
    local home = os.tmpname()
    os.remove(home)
    assert(os.execute("mkdir " .. H.quote(home)))
    finally(function() os.execute("rm -rf " .. H.quote(home)) end)
    local function session(input)
      return H.run{ program = "env", env = { HOME = home, TERM = "dumb" },
        args = { "-u", "LD_PRELOAD", "script", "-qec", H.quote(H.mplua), "/dev/null" }, stdin = input }
    end
    local r = session("y = 6*7\ny\n")
    assert.equal(0, r.status, r.stderr)
    assert.matches("\n42\r?\n", r.stdout)
    assert.equal("y = 6*7\ny\n", read_file(home .. "/.mplua_history"))
    -- the next session starts with it: up arrow twice recalls "y = 6*7"
    r = session("\27[A\27[A\ny + 1\n")
    assert.matches("\n43\r?\n", r.stdout)
    assert.equal("y = 6*7\ny\ny = 6*7\ny + 1\n", read_file(home .. "/.mplua_history"))
    -- the file keeps the last 1000 lines
    local lines = {}
    for i = 1, 1200 do lines[i] = "x" .. i end
    write_file(home .. "/.mplua_history", table.concat(lines, "\n") .. "\n")
    r = session("last = 1\n")
    assert.equal(0, r.status, r.stderr)
    local kept = read_file(home .. "/.mplua_history")
    local n = select(2, kept:gsub("\n", ""))
    assert.equal(1000, n)
    assert.matches("^x202\n.*\nx1200\nlast = 1\n$", kept)
  end)

  it("works without a usable HOME", function()
    if not os.execute("command -v script >/dev/null") then
      pending("script(1) is not installed")
      return
    end
    for _, env in ipairs { "HOME=/nonexistent/dir", "-u HOME" } do
      local r = H.run{ program = "sh", args = { "-c", "env -u LD_PRELOAD " .. env .. " TERM=dumb script -qec " ..
        H.quote(H.mplua) .. " /dev/null" }, stdin = "1 + 1\n" }
      assert.equal(0, r.status, r.stderr)
      assert.matches("\n2\r?\n", r.stdout)
    end
  end)
end)

describe("Lua 5.4's own interpreter tests", function()
  it("pass with mplua as the interpreter (spec/lua-tests/main.lua)", function()
    local r = H.run{ args = { "spec/lua-tests/main.lua" }, timeout = 120 }
    assert.equal(0, r.status, r.stdout .. r.stderr)
    assert.matches("\nOK\n$", r.stdout)
  end)
end)

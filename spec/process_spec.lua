local mp = require "mp"
local H = require "helper"
local unistd = require "posix.unistd"
local signal = require "posix.signal"
local poll = require "posix.poll"

-- Runs body (a function) in a child and returns the child's exit code.
local function exit_of(body, ...)
  local p = mp.Process{ target = body, args = table.pack(...) }
  p:start()
  return H.join(p)
end

-- Blocks until fd is readable or fails after `timeout` seconds.
local function readable(fd, timeout)
  local n = poll.rpoll(fd, math.floor((timeout or 10) * 1000))
  assert(n == 1, "timed out waiting for the child")
end

describe("mp.Process exit codes", function()
  it("is nil before the end and 0 when the target returns", function()
    local p = mp.Process{ target = function() end }
    assert.is_nil(p.exitcode)
    p:start()
    H.join(p)
    assert.equal(0, p.exitcode)
  end)

  it("is 1 on an uncaught error, with the name and traceback on stderr", function()
    local r = H.run_script([[
      local p = mp.Process{target = function() error("boom") end, name = "failing"}
      p:start(); p:join(10)
      print("exitcode", p.exitcode)
    ]])
    assert.equal(0, r.status)
    assert.equal("exitcode\t1\n", r.stdout)
    assert.matches("^Process failing:\n[^\n]*boom\nstack traceback:\n", r.stderr)
  end)

  it("reports error objects with their __tostring", function()
    local r = H.run_script([[
      local p = mp.Process{target = function() error(setmetatable({}, {__tostring = function() return "custom" end})) end}
      p:start(); p:join(10); print(p.exitcode)
    ]])
    assert.equal("1\n", r.stdout)
    assert.matches("^Process Process%-1:\ncustom\nstack traceback:", r.stderr)
  end)

  it("is n after os.exit(n), masked to 8 bits as a real exit status", function()
    assert.equal(3, exit_of(function() os.exit(3) end))
    assert.equal(0, exit_of(function() os.exit(256) end))
    assert.equal(3, exit_of(function() os.exit(259) end))
    assert.equal(0, exit_of(function() os.exit(true) end))
    assert.equal(1, exit_of(function() os.exit(false) end))
    assert.equal(0, exit_of(function() os.exit() end))
  end)

  it("is -signum when a signal ended the process", function()
    local r, w = unistd.pipe()
    local p = mp.Process{ target = function() unistd.write(w, "x"); mp.sleep(60) end }
    p:start()
    readable(r)
    p:terminate()
    H.join(p)
    assert.equal(-15, p.exitcode)
    local q = mp.Process{ target = function() unistd.write(w, "x"); mp.sleep(60) end }
    q:start()
    readable(r)
    q:kill()
    H.join(q)
    assert.equal(-9, q.exitcode)
    unistd.close(r); unistd.close(w)
  end)

  it("runs a Lua signal handler installed with mp.signal in the child", function()
    local r, w = unistd.pipe()
    local p = mp.Process{ target = function()
      mp.signal("SIGTERM", function() os.exit(7) end)
      unistd.write(w, "x")
      mp.sleep(60)
    end }
    p:start()
    readable(r)
    p:terminate()
    H.join(p)
    assert.equal(7, p.exitcode)
    unistd.close(r); unistd.close(w)
  end)
end)

describe("mp.Process names", function()
  it("counts Process-N in the creating process", function()
    local a, b = mp.Process{}, mp.Process{}
    local na = tonumber(a.name:match("^Process%-(%d+)$"))
    assert.is_number(na)
    assert.equal("Process-" .. (na + 1), b.name)
    assert.equal("w1", mp.Process{ name = "w1" }.name)
  end)

  it("names a child's children Process-i:j and knows its parent", function()
    local r, w = unistd.pipe()
    local outer = mp.Process{ target = function()
      local me = mp.current_process()
      local inner = mp.Process{ target = function()
        unistd.write(w, mp.current_process().name .. " " .. mp.parent_process().name .. "\n")
      end }
      inner:start(); inner:join(10)
      unistd.write(w, me.name .. " " .. mp.parent_process().name .. " "
        .. tostring(mp.parent_process().pid) .. "\n")
    end }
    outer:start()
    H.join(outer)
    readable(r)
    local out = unistd.read(r, 4096)
    local n = outer.name:match("^Process%-(%d+)$")
    assert.equal(string.format("Process-%s:1 Process-%s\nProcess-%s MainProcess %d\n",
      n, n, n, unistd.getpid()), out)
    unistd.close(r); unistd.close(w)
  end)

  it("names subclass instances after the class", function()
    local Worker = mp.Process:extend("Worker")
    function Worker:init(k) mp.Process.init(self); self.k = k end
    function Worker:run() os.exit(self.k) end
    local w = Worker(5)
    assert.matches("^Worker%-%d+$", w.name)
    assert.is_true(Worker:is(w))
    assert.is_true(mp.Process:is(w))
    w:start()
    assert.equal(5, H.join(w))
  end)

  it("is MainProcess in the main process", function()
    assert.equal("MainProcess", mp.current_process().name)
    assert.equal(mp.getpid(), mp.current_process().pid)
    assert.is_nil(mp.parent_process())
  end)
end)

describe("mp.Process lifecycle", function()
  it("join with a timeout returns while the child still runs", function()
    local r, w = unistd.pipe()
    local p = mp.Process{ target = function() unistd.read(r, 1) end }
    p:start()
    local t0 = mp.time()
    p:join(0.05)
    assert.is_true(mp.time() - t0 >= 0.05)
    assert.is_true(p:is_alive())
    assert.is_nil(p.exitcode)
    unistd.write(w, "x")
    H.join(p)
    assert.is_false(p:is_alive())
    assert.equal(0, p.exitcode)
    unistd.close(r); unistd.close(w)
  end)

  it("lists running children in active_children", function()
    local r, w = unistd.pipe()
    local p = mp.Process{ target = function() unistd.read(r, 1) end }
    p:start()
    local active = mp.active_children()
    assert.equal(1, #active)
    assert.equal(p, active[1])
    unistd.write(w, "x")
    H.join(p)
    assert.equal(0, #mp.active_children())
    unistd.close(r); unistd.close(w)
  end)

  it("gives a pollable sentinel that becomes readable when the child ends", function()
    local p = mp.Process{ target = function() end }
    p:start()
    assert.is_number(p.sentinel)
    readable(p.sentinel)
    H.join(p)
    assert.equal(0, p.exitcode)
  end)

  it("starts and joins 200 processes with no zombie left", function()
    local ps = {}
    for i = 1, 200 do
      ps[i] = mp.Process{ target = function(k) os.exit(k % 100) end, args = { i } }
      ps[i]:start()
    end
    for i = 1, 200 do assert.equal(i % 100, H.join(ps[i])) end
    assert.same({}, H.children_of(unistd.getpid()))
  end)

  it("closes a finished process and refuses to use it afterwards", function()
    local p = mp.Process{ target = function() end }
    p:start()
    H.join(p)
    p:close()
    p:close()
    assert.has_error(function() return p.exitcode end, "process object is closed")
    assert.has_error(function() p:start() end, "process object is closed")
  end)
end)

describe("mp.Process misuse", function()
  it("refuses to start twice", function()
    local p = mp.Process{ target = function() end }
    p:start()
    assert.has_error(function() p:start() end, "cannot start a process twice")
    H.join(p)
  end)

  it("refuses join, terminate and close in the wrong state", function()
    local p = mp.Process{ target = function() end }
    assert.has_error(function() p:join() end, "can only join a started process")
    assert.has_error(function() p:terminate() end, "can only terminate a started process")
    assert.has_error(function() mp.current_process():join() end, "cannot join the current process")
    local r, w = unistd.pipe()
    local q = mp.Process{ target = function() unistd.read(r, 1) end }
    q:start()
    assert.has_error(function() q:close() end,
      "Cannot close a process while it is still running. You should first call join() or terminate().")
    unistd.write(w, "x")
    H.join(q)
    unistd.close(r); unistd.close(w)
  end)

  it("names the bad argument", function()
    assert.has_error(function() mp.Process{ target = 42 } end,
      "bad argument #1 to 'Process' (target must be callable, got number)")
    assert.has_error(function() mp.Process(print, "x") end,
      "bad argument #1 to 'Process' (args must be a table, got string)")
    assert.has_error(function() mp.Process{ name = 1 } end,
      "bad argument #1 to 'Process' (name must be a string, got number)")
    local p = mp.Process{ target = function() end }
    p:start()
    assert.has_error(function() p:join("x") end, "bad argument #1 to 'join' (number expected, got string)")
    H.join(p)
  end)

  it("accepts callable tables and args with holes", function()
    local r, w = unistd.pipe()
    local target = setmetatable({}, { __call = function(_, a, b, c)
      unistd.write(w, tostring(a) .. tostring(b) .. tostring(c)) end })
    local p = mp.Process{ target = target, args = table.pack(1, nil, 3) }
    p:start()
    H.join(p)
    assert.equal("1nil3", unistd.read(r, 100))
    unistd.close(r); unistd.close(w)
  end)
end)

describe("fork discipline", function()
  it("never duplicates buffered output through a pipe", function()
    local r = H.run_script([[
      io.write("before\n")
      local p = mp.Process{target = function() io.write("child\n") end}
      p:start(); p:join(10)
      io.write("after\n")
    ]])
    assert.equal("before\nchild\nafter\n", r.stdout)
  end)

  it("never returns into the parent's script", function()
    local r = H.run_script([[
      for i = 1, 3 do
        local p = mp.Process{target = function() if i == 2 then error("x") end end}
        p:start(); p:join(10)
      end
      print("end of script")
    ]])
    assert.equal("end of script\n", r.stdout)
  end)

  it("gives the child /dev/null as stdin", function()
    local r = H.run_script([[
      local p = mp.Process{target = function() io.write("child read ", #io.read("a"), "\n") end}
      p:start(); p:join(10)
      io.write("parent read ", io.read("a"), "\n")
    ]], { stdin = "hello" })
    assert.equal("child read 0\nparent read hello\n", r.stdout)
  end)

  it("runs no finalizer of the parent's objects in the child", function()
    local r = H.run_script([[
      local me = mp.getpid()
      local function who() return mp.getpid() == me and "parent" or "child" end
      local g = setmetatable({}, {__gc = function() io.write("gc in ", who(), "\n") end})
      do
        local c <close> = setmetatable({}, {__close = function() io.write("close in ", who(), "\n") end})
        local p = mp.Process{target = function() collectgarbage() os.exit(0) end}
        p:start(); p:join(10)
        local q = mp.Process{target = function() collectgarbage() end}
        q:start(); q:join(10)
      end
    ]])
    assert.equal("close in parent\ngc in parent\n", r.stdout)
  end)

  it("leaves the statuses of io.popen and os.execute alone", function()
    local r, w = unistd.pipe()
    local p = mp.Process{ target = function() unistd.read(r, 1) end }
    p:start()
    local done = mp.Process{ target = function() end }
    done:start()
    H.join(done)
    assert.same({ nil, "exit", 3 }, { os.execute("exit 3") })
    local f = io.popen("exit 5")
    assert.same({ nil, "exit", 5 }, { f:close() })
    assert.equal(1, #mp.active_children())
    unistd.write(w, "x")
    H.join(p)
    unistd.close(r); unistd.close(w)
  end)

  it("leaves SIGPIPE to the script: one that ignores it gets write errors", function()
    -- (that a closed stdout kills a script that does not: spec/regress/closed_stdout_spec.lua)
    local r = H.run_script([[
      mp.signal("SIGPIPE", "ignore")
      local big = ("x"):rep(65536)
      local ok, err
      for _ = 1, 64 do
        ok, err = io.stdout:write(big)
        if ok then ok, err = io.stdout:flush() end
        if not ok then break end
      end
      io.stderr:write("survived: ", tostring(err), "\n")
    ]], { pipe_to = "true" })
    assert.matches("survived: .*Broken pipe", r.stderr)
  end)
end)

describe("process exit", function()
  it("terminates daemon children and joins the others", function()
    local r = H.run_script([[
      local d = mp.Process{target = function() mp.sleep(60) end, daemon = true}
      d:start()
      local n = mp.Process{target = function() mp.sleep(0.2); io.write("non-daemon done\n") end}
      n:start()
      io.write("daemon ", d.pid, "\n")
    ]])
    assert.equal(0, r.status)
    local pid = tonumber(r.stdout:match("daemon (%d+)"))
    assert.matches("non%-daemon done\n", r.stdout)
    assert.is_nil(signal.kill(pid, 0))   -- gone: not even a zombie of ours
  end)

  it("refuses children in a daemon", function()
    local r = H.run_script([[
      local d = mp.Process{target = function()
        local ok, err = pcall(function() mp.Process{target = print}:start() end)
        io.write(tostring(err), "\n")
      end, daemon = true}
      d:start(); d:join(10)
    ]])
    assert.matches("daemonic processes are not allowed to have children", r.stdout)
  end)
end)

describe("process utilities", function()
  it("reports pids, cpu count and monotonic time", function()
    assert.equal(unistd.getpid(), mp.getpid())
    assert.is_true(mp.cpu_count() >= 1)
    local t0 = mp.time()
    mp.sleep(0.02)
    local dt = mp.time() - t0
    assert.is_true(dt >= 0.02 and dt < 1, "slept " .. dt)
  end)
end)

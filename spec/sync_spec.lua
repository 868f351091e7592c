-- Lock, RLock, Semaphore, BoundedSemaphore, Condition, Event, Barrier across real processes.
local mp = require "mp"
local H = require "helper"

local spawn = H.spawn

local function join_all(ps)
  for _, p in ipairs(ps) do
    if p.pid then H.join(p) end
  end
end

-- Environment for a stock lua5.4 loading our mp.so (the ASan runtime must come first).
local function lua_env()
  local env = { LUA_CPATH = H.build .. "/?.so;;" }
  if H.build:match("asan") then
    env.LD_PRELOAD = os.getenv("LD_PRELOAD")
    if not env.LD_PRELOAD then
      local p = io.popen("cc -print-file-name=libasan.so")
      env.LD_PRELOAD = p:read("l")
      p:close()
    end
    env.ASAN_OPTIONS = "detect_leaks=0"
  end
  return env
end

local function elapsed(fn)
  local t0 = mp.time()
  local r = table.pack(fn())
  return mp.time() - t0, table.unpack(r, 1, r.n)
end

describe("mp.Lock", function()
  it("acquires, refuses a second acquire, and releases", function()
    local l = mp.Lock()
    assert.is_true(l:acquire())
    assert.is_false(l:acquire(false))
    local t, ok = elapsed(function() return l:acquire(true, 0.2) end)
    assert.is_false(ok)
    assert.is_true(t >= 0.19 and t < 2, "waited " .. t)
    l:release()
    assert.is_true(l:acquire(false))
    l:release()
    assert.is_nil(l:owner())
  end)

  it("takes Python's keywords as a table: acquire{block =, timeout =}", function()
    local l = mp.Lock()
    assert.is_true(l:acquire{ timeout = 1 })
    local t, ok = elapsed(function() return l:acquire{ timeout = 0.1 } end)
    assert.is_false(ok)
    assert.is_true(t >= 0.09 and t < 2)
    assert.is_false(l:acquire{ block = false })
    assert.is_false(mp.Semaphore(0):acquire{ timeout = 0 })
    l:release()
  end)

  it("raises on the release of an unlocked lock", function()
    local l = mp.Lock()
    assert.has_error(function() l:release() end, "release unlocked lock")
    l:acquire(); l:release()
    assert.has_error(function() l:release() end, "release unlocked lock")
  end)

  it("checks its arguments", function()
    local l = mp.Lock()
    l:acquire()
    assert.has_error(function() l:acquire(true, "soon") end)
    assert.has_error(function() l.acquire({}) end)
    assert.has_error(function() l.release(mp.RLock()) end)
    l:release()
  end)

  it("raises a clean error for a self of the wrong type, never touching it", function()
    -- Methods check self by a class word inside the block: foreign and smaller
    -- userdata, other primitives, Values and non-userdata are all refused.
    local objs = { Lock = mp.Lock(), RLock = mp.RLock(), Semaphore = mp.Semaphore(),
                   BoundedSemaphore = mp.BoundedSemaphore(), Event = mp.Event(),
                   Condition = mp.Condition() }
    local strangers = { io.stdout, mp.Value("q", 7), mp.Array("d", 100), 42, "s", {}, false }
    for name, obj in pairs(objs) do
      for mname, fn in pairs(getmetatable(obj).__index) do
        if type(fn) == "function" and mname ~= "hold" and mname ~= "with" and mname ~= "wait_for" then
          for _, bad in ipairs(strangers) do
            local ok, err = pcall(fn, bad)
            assert.is_false(ok, name .. "." .. mname)
            assert.matches("bad argument #1 to '.-' %(mp%.%a+ expected, got .-%)", err)
          end
          for other, o in pairs(objs) do
            local same = other == name or (name == "Semaphore" and other == "BoundedSemaphore")
              or (name == "BoundedSemaphore" and other == "Semaphore")
            if not same then
              local ok, err = pcall(fn, o)
              assert.is_false(ok, name .. "." .. mname .. "(" .. other .. ")")
              assert.matches("expected, got", err)
            end
          end
        end
      end
    end
  end)

  it("keeps the balance exact in 10 of 10 runs of the locked deposit/withdraw example", function()
    local function deposit(balance, lock)
      for _ = 1, 1000 do lock:acquire(); balance.value = balance.value + 1; lock:release() end
    end
    local function withdraw(balance, lock)
      for _ = 1, 1000 do lock:acquire(); balance.value = balance.value - 1; lock:release() end
    end
    for _ = 1, 10 do
      local balance, lock = mp.Value("i", 100), mp.Lock()
      local ps = { spawn(deposit, balance, lock), spawn(withdraw, balance, lock) }
      finally(function() join_all(ps) end)
      join_all(ps)
      assert.equal(100, balance.value)
    end
  end)

  it("may be released by another process, as Python's Lock", function()
    local l = mp.Lock()
    l:acquire()
    local p = spawn(function() l:release() end)
    finally(function() H.join(p) end)
    assert.equal(0, H.join(p))
    assert.is_true(l:acquire(true, 5))
    l:release()
  end)

  it("times out in another process while held, and is acquired there once released", function()
    local l, ready, result = mp.Lock(), mp.Event(), mp.RawValue("i", 0)
    l:acquire()
    local p = spawn(function()
      result.value = l:acquire(true, 0.1) and 1 or 2      -- held by the parent: times out
      ready:set()
      result.value = result.value * 10 + (l:acquire(true, 10) and 1 or 2)
      l:release()
    end)
    finally(function() H.join(p) end)
    assert.is_true(ready:wait(10))
    l:release()
    H.join(p)
    assert.equal(21, result.value)
  end)

  it("is recovered with 'owner died' when its holder was killed", function()
    local l, ready = mp.Lock(), mp.Event()
    local p = spawn(function() l:acquire(); ready:set(); mp.sleep(60) end)
    finally(function() H.join(p) end)
    assert.is_true(ready:wait(10))
    assert.equal(p.pid, l:owner())
    p:kill()
    -- Not joined yet: a zombie holder counts as dead too.
    local ok, why = l:acquire(true, 10)
    assert.is_true(ok)
    assert.equal("owner died", why)
    assert.equal(mp.getpid(), l:owner())
    l:release()
    H.join(p)
    assert.is_true(l:acquire(false))
    l:release()
  end)

  it("recovers a waiter already blocked when the holder dies", function()
    local l, ready, victim = mp.Lock(), mp.Event(), mp.RawValue("i", 0)
    local holder = spawn(function() l:acquire(); ready:set(); mp.sleep(60) end)
    assert.is_true(ready:wait(10))
    victim.value = holder.pid
    -- The killer waits until this process sleeps in acquire, then kills the holder.
    local me = mp.getpid()
    local killer = spawn(function()
      H.wait_blocked(me, { "futex" })
      mp.kill(victim.value, "SIGKILL")
    end)
    finally(function() join_all{ holder, killer } end)
    local t, ok, why = elapsed(function() return l:acquire(true, 10) end)
    join_all{ holder, killer }
    assert.is_true(ok)
    assert.equal("owner died", why)
    assert.is_true(t < 5)
    l:release()
  end)

  it("non-blocking acquire also recovers a dead owner's lock", function()
    local l, ready = mp.Lock(), mp.Event()
    local p = spawn(function() l:acquire(); ready:set(); mp.sleep(60) end)
    finally(function() H.join(p) end)
    assert.is_true(ready:wait(10))
    p:kill()
    H.join(p)
    local ok, why = l:acquire(false)
    assert.is_true(ok)
    assert.equal("owner died", why)
    l:release()
  end)

  it("is acquired with a timeout under contention", function()
    local l, counter = mp.Lock(), mp.Value("i", 0)
    local function worker()
      local got = 0
      while got < 200 do
        if l:acquire(true, 10) then
          counter.value = counter.value + 1
          got = got + 1
          l:release()
        else
          os.exit(3)
        end
      end
    end
    local ps = { spawn(worker), spawn(worker), spawn(worker) }
    finally(function() join_all(ps) end)
    for _, p in ipairs(ps) do assert.equal(0, H.join(p)) end
    assert.equal(600, counter.value)
  end)

  it("hold() returns a to-be-closed guard, released even on error", function()
    local l = mp.Lock()
    do
      local _ <close> = l:hold()
      assert.is_false(l:acquire(false))
    end
    assert.is_true(l:acquire(false)); l:release()
    local ok = pcall(function()
      local _ <close> = l:hold()
      error("inside")
    end)
    assert.is_false(ok)
    assert.is_true(l:acquire(false)); l:release()
  end)

  it("with(fn, ...) returns fn's results and releases on error, keeping the error", function()
    local l = mp.Lock()
    local a, b = l:with(function(x, y)
      assert.is_false(l:acquire(false))
      return x + y, "two"
    end, 1, 2)
    assert.equal(3, a); assert.equal("two", b)
    local obj = {}
    local ok, err = pcall(l.with, l, function() error(obj) end)
    assert.is_false(ok)
    assert.equal(obj, err)
    assert.is_true(l:acquire(false)); l:release()
  end)

  --[[
  A script that blocks in acquire while a child sends it `sig` once it sleeps
  there (its /proc state is S), then prints what acquire raised.
  ]]
  local function blocked_acquire_script(sig, setup)
    return ([[
      local mp = mp or require "mp"
      local l = mp.Lock()
      l:acquire()
      %s
      local me = mp.getpid()
      package.path = "spec/?.lua;" .. package.path
      local waits = require "waits"
      local p = mp.Process{ target = function()
        waits.blocked(me, { "futex" }, 10, mp.sleep, mp.time)
        mp.kill(me, "%s")
      end }
      p:start()
      local ok, err = pcall(l.acquire, l)
      print(ok, err)
      p:join(10)
    ]]):format(setup or "", sig)
  end

  it("is interrupted by a signal handler while blocked", function()
    local r = H.run_script(blocked_acquire_script("SIGUSR1",
      [[mp.signal("SIGUSR1", function() error("got SIGUSR1") end)]]))
    assert.equal(0, r.status, r.stderr)
    assert.matches("^false\t.*got SIGUSR1\n$", r.stdout)
  end)

  local ctrl_c_script = blocked_acquire_script("SIGINT")

  it("lets Ctrl-C (lua.c's SIGINT hook) interrupt a blocked acquire", function()
    local r = H.run_script(ctrl_c_script, { program = H.lua, env = lua_env(), timeout = 20 })
    assert.equal(0, r.status, r.stderr)
    assert.matches("^false\t.*interrupted", r.stdout)
  end)

  it("lets Ctrl-C interrupt a blocked acquire under mplua", function()
    local r = H.run_script(ctrl_c_script, { timeout = 20 })
    assert.equal(0, r.status, r.stderr)
    assert.matches("^false\t.*interrupted", r.stdout)
  end)
end)

describe("mp.RLock", function()
  it("is recursive for its owner and counts releases", function()
    local r = mp.RLock()
    assert.is_true(r:acquire())
    assert.is_true(r:acquire())
    assert.is_true(r:acquire(false))
    r:release(); r:release()
    local p = spawn(function() os.exit(r:acquire(false) and 1 or 0) end)
    finally(function() H.join(p) end)
    assert.equal(0, H.join(p))
    r:release()
    assert.has_error(function() r:release() end, "cannot release un-acquired lock")
  end)

  it("cannot be released by another process", function()
    local r = mp.RLock()
    r:acquire()
    local p = spawn(function()
      local ok, err = pcall(r.release, r)
      os.exit((not ok and err:match("cannot release un%-acquired lock")) and 0 or 1)
    end)
    finally(function() H.join(p) end)
    assert.equal(0, H.join(p))
    r:release()
  end)

  it("is recovered with 'owner died' when its holder was killed holding it twice", function()
    local r, ready = mp.RLock(), mp.Event()
    local p = spawn(function() r:acquire(); r:acquire(); ready:set(); mp.sleep(60) end)
    finally(function() H.join(p) end)
    assert.is_true(ready:wait(10))
    p:kill()
    H.join(p)
    local ok, why = r:acquire(true, 10)
    assert.is_true(ok)
    assert.equal("owner died", why)
    r:release()                         -- one release: the dead owner's depth is gone
    assert.has_error(function() r:release() end, "cannot release un-acquired lock")
  end)
end)

describe("mp.Semaphore", function()
  it("counts, times out, and reports its value", function()
    local s = mp.Semaphore(2)
    assert.equal(2, s:get_value())
    assert.is_true(s:acquire()); assert.is_true(s:acquire())
    assert.is_false(s:acquire(false))
    local t, ok = elapsed(function() return s:acquire(true, 0.15) end)
    assert.is_false(ok)
    assert.is_true(t >= 0.14 and t < 2)
    s:release(2)
    assert.equal(2, s:get_value())
    s:release()
    assert.equal(3, s:get_value())         -- unbounded
    assert.equal(1, mp.Semaphore():get_value())
    assert.equal(4, mp.Semaphore{ value = 4 }:get_value())
  end)

  it("rejects a negative initial value", function()
    assert.has_error(function() mp.Semaphore(-1) end)
    assert.has_error(function() mp.BoundedSemaphore(-1) end)
  end)

  it("never has more than N holders at once across processes", function()
    local N = 2
    local s, inside, most = mp.Semaphore(N), mp.Value("i", 0), mp.Value("i", 0)
    local function worker()
      for _ = 1, 20 do
        assert(s:acquire(true, 10))
        local now = inside:add(1)
        local seen = most.value
        while now > seen do
          local ok, cur = most:compare_and_swap(seen, now)
          if ok then break end
          seen = cur
        end
        for _ = 1, 2000 do end                 -- a little work while holding
        inside:add(-1)
        s:release()
      end
    end
    local ps = {}
    for i = 1, 4 do ps[i] = spawn(worker) end
    finally(function() join_all(ps) end)
    for _, p in ipairs(ps) do assert.equal(0, H.join(p)) end
    assert.is_true(most.value >= 1 and most.value <= N, "max holders " .. most.value)
    assert.equal(0, inside.value)
    assert.equal(N, s:get_value())
  end)

  it("wakes a waiter in another process", function()
    local s, done = mp.Semaphore(0), mp.Event()
    local p = spawn(function() if s:acquire(true, 10) then done:set() end end)
    finally(function() H.join(p) end)
    s:release()
    assert.is_true(done:wait(10))
    H.join(p)
  end)

  it("BoundedSemaphore raises when released too many times", function()
    local b = mp.BoundedSemaphore(2)
    assert.has_error(function() b:release() end, "Semaphore released too many times")
    b:acquire(); b:release()
    assert.has_error(function() b:release() end, "Semaphore released too many times")
    assert.equal(2, b:get_value())
    local z = mp.BoundedSemaphore(0)
    assert.has_error(function() z:release() end, "Semaphore released too many times")
  end)

  it("has hold() and with()", function()
    local s = mp.Semaphore(1)
    do
      local _ <close> = s:hold()
      assert.equal(0, s:get_value())
    end
    assert.equal(1, s:get_value())
    assert.equal(5, s:with(function() return 5 end))
  end)
end)

describe("mp.Event", function()
  it("wait times out with false after about the timeout", function()
    local e = mp.Event()
    local t, ok = elapsed(function() return e:wait(0.3) end)
    assert.is_false(ok)
    assert.is_true(t >= 0.29 and t < 2, "waited " .. t)
    t, ok = elapsed(function() return e:wait(0) end)
    assert.is_false(ok)
    assert.is_true(t < 0.1)
  end)

  it("sets, clears and wakes every waiter across processes", function()
    local e, woke = mp.Event(), mp.Value("i", 0)
    assert.is_false(e:is_set())
    local ps = {}
    for i = 1, 3 do ps[i] = spawn(function() if e:wait(10) then woke:add(1) end end) end
    finally(function() join_all(ps) end)
    e:set()
    join_all(ps)
    assert.equal(3, woke.value)
    assert.is_true(e:is_set())
    assert.is_true(e:wait(0))
    e:clear()
    assert.is_false(e:is_set())
  end)
end)

describe("mp.Event, set then cleared", function()
  it("still wakes a waiter that slept through both", function()
    local e, result = mp.Event(), mp.Value("i", 0)
    local p = spawn(function() result.value = e:wait(10) and 1 or 2 end)
    H.wait_blocked(p.pid, { "futex" })   -- the child sleeps in wait
    e:set()
    e:clear()
    H.join(p)
    assert.equal(1, result.value)
    assert.is_false(e:is_set())
  end)
end)

describe("mp.Condition", function()
  it("raises when used without its lock", function()
    local c = mp.Condition()
    assert.has_error(function() c:wait(0.1) end, "cannot wait on un-acquired lock")
    assert.has_error(function() c:notify() end, "cannot notify on un-acquired lock")
    assert.has_error(function() c:notify_all() end, "cannot notify on un-acquired lock")
    assert.has_error(function() c:release() end, "cannot release un-acquired lock")
    assert.has_error(function() mp.Condition(42) end)
  end)

  it("wait times out with false and holds the lock again", function()
    local c = mp.Condition(mp.Lock())
    c:acquire()
    local t, ok = elapsed(function() return c:wait(0.2) end)
    assert.is_false(ok)
    assert.is_true(t >= 0.19 and t < 2)
    assert.equal(mp.getpid(), c:get_lock():owner())
    c:release()
  end)

  it("waits and is notified across processes", function()
    local c, flag, result = mp.Condition(), mp.Value("i", 0), mp.Value("i", 0)
    local p = spawn(function()
      c:acquire()
      flag.value = 1
      c:notify_all()
      result.value = c:wait(10) and 1 or 2
      c:release()
    end)
    finally(function() H.join(p) end)
    c:acquire()
    assert.is_true(c:wait_for(function() return flag.value == 1 end, 10))
    c:notify()
    c:release()
    H.join(p)
    assert.equal(1, result.value)
  end)

  it("notify(1) wakes one waiter, notify_all the rest", function()
    local c, waiting, woke = mp.Condition(mp.Lock()), mp.Value("i", 0), mp.Value("i", 0)
    local back = mp.Condition(c:get_lock())         -- children -> parent, same lock
    local ps = {}
    for i = 1, 3 do
      ps[i] = spawn(function()
        c:acquire()
        waiting.value = waiting.value + 1
        back:notify()
        if c:wait(10) then woke.value = woke.value + 1 end
        back:notify()
        c:release()
      end)
    end
    finally(function() join_all(ps) end)
    c:acquire()
    assert.is_true(back:wait_for(function() return waiting.value == 3 end, 10))
    c:notify(1)
    assert.is_true(back:wait_for(function() return woke.value >= 1 end, 10))
    -- Nobody else may wake now.
    assert.is_false(back:wait_for(function() return woke.value > 1 end, 0.3))
    c:notify_all()
    c:release()
    join_all(ps)
    assert.equal(3, woke.value)
  end)

  it("a waiter that lost a notification to another sleeps instead of spinning", function()
    -- CPU ticks used by this process's reaped children (cutime + cstime).
    local function child_ticks()
      local f = io.open("/proc/self/stat")
      local st = f:read("a"); f:close()
      local fields = {}
      for x in st:match("%) (.*)"):gmatch("%S+") do fields[#fields + 1] = x end
      return tonumber(fields[14]) + tonumber(fields[15])
    end
    local c, waiting = mp.Condition(mp.Lock()), mp.Value("i", 0)
    local back = mp.Condition(c:get_lock())
    local ps = {}
    for i = 1, 2 do
      ps[i] = spawn(function()
        c:acquire(); waiting.value = waiting.value + 1; back:notify(); c:wait(1); c:release()
      end)
    end
    finally(function() join_all(ps) end)
    local before = child_ticks()
    c:acquire()
    assert.is_true(back:wait_for(function() return waiting.value == 2 end, 10))
    c:notify(1)
    c:release()
    join_all(ps)
    -- A spinning loser burns its whole 1 s wait (about 100 ticks).
    assert.is_true(child_ticks() - before < 30, "children used " .. (child_ticks() - before) .. " ticks")
  end)

  it("releases an RLock held twice while waiting and restores its depth", function()
    local r = mp.RLock()
    local c = mp.Condition(r)
    local p
    c:acquire(); c:acquire()
    local ready = mp.Event()
    p = spawn(function()
      assert(r:acquire(true, 10))      -- only possible while the parent waits
      ready:set()
      c:notify()
      r:release()
    end)
    finally(function() H.join(p) end)
    assert.is_true(c:wait(10))
    assert.is_true(ready:is_set())
    c:release(); c:release()
    assert.has_error(function() c:release() end, "cannot release un-acquired lock")
    H.join(p)
  end)

  it("is recovered with 'owner died' through its lock", function()
    local c, ready = mp.Condition(), mp.Event()
    local p = spawn(function() c:acquire(); ready:set(); mp.sleep(60) end)
    finally(function() H.join(p) end)
    assert.is_true(ready:wait(10))
    p:kill()
    H.join(p)
    local ok, why = c:acquire(true, 10)
    assert.is_true(ok)
    assert.equal("owner died", why)
    c:release()
  end)

  it("wait interrupted by a signal handler raises with the lock held again", function()
    local r = H.run_script([[
      local c = mp.Condition(mp.Lock())
      mp.signal("SIGUSR1", function() error("got SIGUSR1") end)
      local me = mp.getpid()
      package.path = "spec/?.lua;" .. package.path
      local waits = require "waits"
      local p = mp.Process{ target = function()
        waits.blocked(me, { "futex" }, 10, mp.sleep, mp.time)
        mp.kill(me, "SIGUSR1")
      end }
      p:start()
      c:acquire()
      local ok, err = pcall(c.wait, c, 20)
      print(ok, err)
      print(c:get_lock():owner() == me)
      c:release()
      -- The cancelled wait left no waiter behind: a notify finds nobody.
      c:acquire(); c:notify(); print(c:wait(0.05)); c:release()
      p:join(10)
    ]])
    assert.equal(0, r.status, r.stderr)
    assert.matches("^false\t.*got SIGUSR1\ntrue\nfalse\n$", r.stdout)
  end)

  it("wait returns 'owner died' when the lock's holder died meanwhile", function()
    local c, ready, victim = mp.Condition(mp.Lock()), mp.Event(), mp.RawValue("i", 0)
    c:acquire()
    local holder = spawn(function() c:acquire(true, 10); ready:set(); mp.sleep(60) end)
    victim.value = holder.pid
    local killer = spawn(function() if ready:wait(10) then mp.kill(victim.value, "SIGKILL") end end)
    finally(function() join_all{ holder, killer } end)
    -- Each wait lets the holder in; the first relock after its death recovers the lock.
    local deadline, ok, why = mp.time() + 10
    repeat ok, why = c:wait(0.2) until why or mp.time() > deadline
    join_all{ holder, killer }
    assert.is_false(ok)
    assert.equal("owner died", why)
    assert.equal(mp.getpid(), c:get_lock():owner())
    c:release()
  end)

  it("wait_for returns the predicate's value, or false on timeout", function()
    local c = mp.Condition()
    c:acquire()
    assert.equal(7, c:wait_for(function() return 7 end))
    local t, r = elapsed(function() return c:wait_for(function() return false end, 0.2) end)
    assert.is_false(r)
    assert.is_true(t >= 0.19 and t < 2)
    c:release()
  end)
end)

describe("mp.Barrier", function()
  it("releases its parties together with distinct indexes", function()
    local n = 3
    local b = mp.Barrier(n)
    local arrived, seen, index = mp.Value("i", 0), mp.Array("i", n), mp.Array("i", n)
    local ps = {}
    for i = 1, n do
      ps[i] = spawn(function()
        arrived:add(1)
        index[i] = b:wait(10)
        seen[i] = arrived.value                  -- everyone arrived before anyone left
      end)
    end
    finally(function() join_all(ps) end)
    for _, p in ipairs(ps) do assert.equal(0, H.join(p)) end
    local got = {}
    for i = 1, n do
      assert.equal(n, seen[i])
      got[index[i]] = true
    end
    assert.same({ [0] = true, [1] = true, [2] = true }, got)
    assert.equal(n, b.parties)
    assert.equal(0, b.n_waiting)
    assert.is_false(b.broken)
  end)

  it("runs its action once per cycle and can be reused", function()
    local count = mp.Value("i", 0)
    local b = mp.Barrier(2, function() count:add(1) end)
    local p = spawn(function() for _ = 1, 3 do b:wait(10) end end)
    finally(function() H.join(p) end)
    for _ = 1, 3 do b:wait(10) end
    assert.equal(0, H.join(p))
    assert.equal(3, count.value)
  end)

  it("breaks on timeout with BrokenBarrierError, and reset repairs it", function()
    local b = mp.Barrier{ parties = 2, timeout = 0.2 }
    local ok, err = pcall(b.wait, b)
    assert.is_false(ok)
    assert.is_true(mp.BrokenBarrierError:is(err), tostring(err))
    assert.equal("BrokenBarrierError", err.kind)
    assert.is_true(b.broken)
    ok, err = pcall(b.wait, b, 1)
    assert.is_true(mp.BrokenBarrierError:is(err))
    b:reset()
    assert.is_false(b.broken)
    local p = spawn(function() b:wait(10) end)
    finally(function() H.join(p) end)
    assert.is_number(b:wait(10))
    assert.equal(0, H.join(p))
  end)

  it("abort breaks it for a waiter in another process", function()
    local b, result = mp.Barrier(2), mp.Value("i", 0)
    local p = spawn(function()
      local ok, err = pcall(b.wait, b, 10)
      result.value = (not ok and mp.BrokenBarrierError:is(err)) and 1 or 2
    end)
    finally(function() H.join(p) end)
    H.wait_until(function() return b.n_waiting == 1 end, 10, "the child to wait at the barrier")
    b:abort()
    H.join(p)
    assert.equal(1, result.value)
    assert.is_true(b.broken)
  end)

  it("checks its arguments", function()
    assert.has_error(function() mp.Barrier(0) end)
    assert.has_error(function() mp.Barrier(2, 3) end)
    assert.has_error(function() mp.Barrier(1.5) end)
  end)
end)

describe("primitives", function()
  it("are cheap: 10000 locks, collected and made again, reuse the same pages", function()
    -- Shared mappings only (perms "rw-s"): where the primitives live. The heap's own
    -- mappings (ASan's allocator keeps freed memory in quarantine) are not counted.
    local function maps()
      local n = 0
      for line in io.lines("/proc/self/maps") do
        if line:match("^%S+ ...s ") then n = n + 1 end
      end
      return n
    end
    local locks = {}
    for i = 1, 10000 do locks[i] = mp.Lock() end
    for i = 1, 10000, 97 do assert.is_true(locks[i]:acquire(false)); locks[i]:release() end
    locks = nil
    collectgarbage(); collectgarbage()
    local before = maps()
    locks = {}
    for i = 1, 10000 do locks[i] = mp.Lock() end
    assert.is_true(maps() - before <= 2)
  end)

  it("survive a child's collection of inherited objects", function()
    local v, l = mp.Value("i", 42), mp.Lock()
    local p = spawn(function()
      v, l = nil, nil
      collectgarbage(); collectgarbage()
      local mine = {}
      for i = 1, 100 do mine[i] = mp.Value("i", -1) end   -- must not reuse the parent's memory
    end)
    finally(function() H.join(p) end)
    assert.equal(0, H.join(p))
    assert.equal(42, v.value)
    assert.is_true(l:acquire(false)); l:release()
  end)

  it("print readably", function()
    assert.equal("Lock(owner=none)", tostring(mp.Lock()))
    assert.equal("Semaphore(value=3)", tostring(mp.Semaphore(3)))
    assert.equal("Event(unset)", tostring(mp.Event()))
  end)
end)

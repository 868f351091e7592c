--[[
mp objects (Queues, Pipe ends, Locks and the other primitives, Values, Arrays,
Barriers) as pool-task arguments and captured upvalues, made after the pool's
workers started: their fds travel along the task batches (SCM_RIGHTS), kept by
the parent until the batch settles. Python's Pool refuses this.
]]
local mp = require "mp"
local H = require "helper"
local unistd = require "posix.unistd"
local signal = require "posix.signal"

-- This process's open fds (read in-process: a child listing them would race with its own pipe).
local function nfds()
  return #require("posix.dirent").dir("/proc/self/fd")
end

-- Every fd this process holds is closed again once results are in and garbage is collected.
local function settled_fds()
  collectgarbage()
  collectgarbage()
  return nfds()
end

local function sorted(t)
  table.sort(t)
  return table.concat(t, ",")
end

local function drain(q, n)
  local got = {}
  for i = 1, n do got[i] = q:get(10) end
  return sorted(got)
end

describe("mp objects in pool tasks", function()
  it("a Queue, a Lock and a Value made after the pool work as map, apply_async and imap arguments", function()
    local pool <close> = mp.Pool(2)
    local q, lock, v = mp.Queue(), mp.Lock(), mp.Value("i", 0)
    local r = pool:map(function(a)
      a[1]:put(a[2])
      a[3]:acquire(); a[4].value = a[4].value + a[2]; a[3]:release()
      return a[2] * 10
    end, { { q, 1, lock, v }, { q, 2, lock, v }, { q, 3, lock, v } }, 1)
    assert.same({ 10, 20, 30 }, r)
    assert.equal("1,2,3", drain(q, 3))
    assert.equal(6, v.value)
    local ar = pool:apply_async(function(qq, x) qq:put(x); return "sent" end, { q, "x" })
    assert.equal("sent", ar:get(10))
    assert.equal("x", q:get(10))
    local seen = {}
    for x in pool:imap(function(a) a.q:put(a.i); return a.i end, { { q = q, i = 7 }, { q = q, i = 8 } }) do
      seen[#seen + 1] = x
    end
    assert.same({ 7, 8 }, seen)
    assert.equal("7,8", drain(q, 2))
    pool:close(); pool:join()
  end)

  it("reach tasks nested in tables, and as upvalues of the task's function", function()
    local pool <close> = mp.Pool(2)
    local q = mp.Queue()
    local a, b = mp.Pipe()
    local arr = mp.Array("i", { 0, 0, 0 })
    local ev = mp.Event()
    local sem = mp.Semaphore(2)
    local bar = mp.Barrier(2)
    local deep = { level1 = { level2 = { conn = b, arr = arr } } }
    assert.equal("ok", pool:apply(function(t)
      t.level1.level2.conn:send("through the pipe")
      t.level1.level2.arr[2] = 42
      return "ok"
    end, { deep }))
    assert.equal("through the pipe", a:recv())
    assert.equal(42, arr[2])
    -- Captured as upvalues: the function travels with each task, never cached by the workers.
    local function task(x)
      q:put(x)
      if x == 1 then ev:set() end
      assert(sem:acquire(true, 5))
      sem:release()
      return x + 1
    end
    assert.same({ 2, 3, 4 }, pool:map(task, { 1, 2, 3 }))
    assert.equal("1,2,3", drain(q, 3))
    assert.is_true(ev:is_set())
    -- A second Queue in the same upvalue position reaches the worker as that Queue.
    local q2 = mp.Queue()
    local function put2(x) q2:put(x); return x end
    assert.equal(5, pool:apply(put2, { 5 }))
    assert.equal(5, q2:get(10))
    -- A Barrier both workers wait on, passed as an argument.
    local r = pool:map(function(bb) return bb:wait(10) end, { bar, bar }, 1)
    assert.equal(1, math.abs(r[1] - r[2]))
    pool:close(); pool:join()
  end)

  it("a batch with fds held by a worker that is killed: its other tasks are sent again intact, no fd leaks", function()
    local pool <close> = mp.Pool(1)
    local q, killed = mp.Queue(), mp.Value("i", 0)
    pool:apply(function() end)                       -- the worker is up
    local before = settled_fds()
    local function task(qq, k, i)
      if i == 10 and k.value == 0 then
        k.value = 1
        signal.kill(unistd.getpid(), signal.SIGKILL)
      end
      qq:put(i)
      return i
    end
    -- 40 tasks queued at once: they leave in batches of many, each with the Queue's and Value's fds.
    local ars = {}
    for i = 1, 40 do ars[i] = pool:apply_async(task, { q, killed, i }) end
    local ok, lost = 0, nil
    for i = 1, 40 do
      local good, r = pcall(ars[i].get, ars[i], 10)
      if good then assert.equal(i, r); ok = ok + 1 else lost = r end
    end
    assert.equal(39, ok)
    assert.is_true(mp.WorkerLostError:is(lost), tostring(lost))
    local got = {}
    for i = 1, 39 do got[#got + 1] = q:get(10) end
    table.sort(got)
    local want = {}
    for i = 1, 40 do if i ~= 10 then want[#want + 1] = i end end
    assert.same(want, got)
    assert.equal(1, killed.value)
    assert.equal(before, settled_fds())
    pool:close(); pool:join()
  end)

  it("leak no fd across 1000 tasks, in the parent or the worker", function()
    local pool <close> = mp.Pool(2)
    pool:apply(function() end)
    local before = settled_fds()
    local q = mp.Queue()
    local function worker_fds() return #require("posix.dirent").dir("/proc/self/fd") end
    local ars = {}
    for i = 1, 1000 do ars[i] = pool:apply_async(function(qq, x) return x end, { q, i }) end
    for i = 1, 1000 do assert.equal(i, ars[i]:get(10)) end
    local r = pool:map(function(qq) return qq:qsize() end, (function()
      local t = {}
      for i = 1, 1000 do t[i] = q end
      return t
    end)(), 10)
    assert.equal(1000, #r)
    -- The workers collect what they decoded: their fd count stays bounded.
    local most = 0
    for _, n in ipairs(pool:map(function() return worker_fds() end, { 1, 2, 3, 4 }, 1)) do
      most = math.max(most, n)
    end
    assert.is_true(most < 300, "a worker holds " .. most .. " fds")
    q:close()
    assert.equal(before, settled_fds())
    pool:close(); pool:join()
  end)

  it("travel to the fork server's pool workers too", function()
    local r = H.run_script [[
      mp.forkserver_start()
      local pool <close> = mp.Pool{processes = 2, context = "forkserver"}
      local q, v = mp.Queue(), mp.Value("d", 1.5)
      local lock = mp.RLock()
      print(pool:apply(function(qq, x) qq:put(x * 2); return v.value end, {q, 21}), q:get(10))
      local got = pool:map(function(t) t.lock:acquire(); t.q:put(t.i); t.lock:release(); return t.i end,
        {{q = q, lock = lock, i = 1}, {q = q, lock = lock, i = 2}}, 1)
      local a, b = q:get(10), q:get(10)
      print(got[1], got[2], math.min(a, b), math.max(a, b))
      pool:close(); pool:join()
    ]]
    assert.equal(0, r.status, r.stderr)
    assert.equal("1.5\t42\n1\t2\t1\t2\n", r.stdout)
  end)

  it("a task carrying more fds than a message may is refused, naming the limit", function()
    local pool <close> = mp.Pool(1)
    local qs = {}
    for i = 1, 70 do qs[i] = mp.Queue() end       -- 3 fds each: 210, above the 200 a task may carry
    local ok, err = pcall(pool.apply, pool, function(t) return #t end, { qs })
    assert.is_false(ok)
    assert.matches("a task may carry at most 200 fds of mp objects %(this one: 210%)", tostring(err))
    -- Many tasks of a few fds each still go, in as many batches as their fds need.
    local r = pool:map(function(t) return #t end, (function()
      local t = {}
      for i = 1, 200 do t[i] = { qs[i % 70 + 1], qs[(i + 1) % 70 + 1] } end
      return t
    end)(), 1)
    assert.equal(200, #r)
    assert.equal(2, r[200])
    for _, q in ipairs(qs) do q:close() end
    pool:close(); pool:join()
  end)
end)

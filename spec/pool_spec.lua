local mp = require "mp"
local H = require "helper"
local unistd = require "posix.unistd"
local signal = require "posix.signal"
local poll = require "posix.poll"

-- Reads a line written by a task through an inherited pipe (fails after `timeout`).
local function read_line(fd, timeout)
  local got = ""
  local deadline = mp.time() + (timeout or 10)
  while not got:find("\n") do
    local left = deadline - mp.time()
    assert(left > 0 and poll.rpoll(fd, math.floor(left * 1000)) == 1, "timed out waiting for the task")
    got = got .. assert(unistd.read(fd, 64))
  end
  return got:match("^(.-)\n")
end

-- A result list without its n field, for comparisons.
local function list(r)
  return { table.unpack(r, 1, r.n or #r) }
end

-- The live pool workers among this process's children (public: mp.active_children).
local function workers()
  local list = {}
  for _, p in ipairs(mp.active_children()) do
    if p.name:match("^PoolWorker%-") and p:is_alive() then list[#list + 1] = p end
  end
  return list
end

local function range(n)
  local t = {}
  for i = 1, n do t[i] = i end
  return t
end

describe("mp.Pool construction", function()
  it("takes a size or an options table, and defaults to cpu_count", function()
    local pool <close> = mp.Pool(2)
    assert.equal(2, #workers())
    local p2 <close> = mp.Pool{ processes = 1 }
    assert.equal(3, #workers())
    local p3 <close> = mp.Pool()
    assert.equal(3 + mp.cpu_count(), #workers())
  end)

  it("rejects bad arguments with errors naming them", function()
    assert.has_error(function() mp.Pool(0) end, "bad argument #1 to 'Pool' (processes must be at least 1)")
    assert.has_error(function() mp.Pool("x") end, "bad argument #1 to 'Pool' (processes must be an integer, got string)")
    assert.has_error(function() mp.Pool{ processes = 1, initializer = 3 } end,
      "bad argument #1 to 'Pool' (initializer must be callable, got number)")
    assert.has_error(function() mp.Pool{ processes = 1, maxtasksperchild = 0 } end,
      "bad argument #1 to 'Pool' (maxtasksperchild must be a positive integer)")
    assert.same({}, H.children_of(unistd.getpid()))
  end)
end)

describe("mp.Pool:map", function()
  local pool
  before_each(function() pool = mp.Pool(2) end)
  after_each(function() pool:terminate() end)

  it("returns results in order, for every chunksize", function()
    local xs = range(1000)
    for _, cs in ipairs { false, 1, 7, 1000, 5000 } do
      local r = pool:map(function(x) return x * x end, xs, cs or nil)
      assert.equal(1000, #r)
      for i = 1, 1000 do assert.equal(i * i, r[i]) end
    end
    pool:terminate()
  end)

  it("sends closures made after the pool started, and C functions by name", function()
    local k = 7
    local function times(x) return x * k end
    assert.same({ 7, 14, 21 }, list(pool:map(times, { 1, 2, 3 })))
    local r = pool:map(math.sqrt, { 4, 9 })
    assert.same({ 2.0, 3.0 }, { r[1], r[2] })
    local fmt = pool:map(string.format, { "%%", "a" })
    assert.same({ "%", "a" }, { fmt[1], fmt[2] })
    pool:terminate()
  end)

  it("runs each task's own function when many functions share a batch", function()
    local fns = {}
    for k = 1, 5 do fns[k] = function(x) return x * k end end   -- five encodings
    local ars = {}
    for i = 1, 2000 do ars[i] = pool:apply_async(fns[i % 5 + 1], { i }) end
    for i = 1, 2000 do assert.equal(i * (i % 5 + 1), ars[i]:get(10)) end
    local r = pool:map(fns[3], (function() local t = {} for i = 1, 1000 do t[i] = i end return t end)(), 1)
    assert.equal(3000, r[1000])
    pool:terminate()
  end)

  it("uses the current upvalues of a function sent again", function()
    local k = 1
    local function f(x) return x + k end
    assert.same({ 2 }, { pool:map(f, { 1 })[1] })
    k = 10
    assert.same({ 11 }, { pool:map(f, { 1 })[1] })
    local t = { v = 1 }
    local function g() return t.v end
    assert.equal(1, pool:apply(g))
    t.v = 2
    assert.equal(2, pool:apply(g))
    pool:terminate()
  end)

  it("keeps each call's first result, nils included (n gives the length)", function()
    local r, n = pool:map(function(x) if x % 2 == 0 then return nil, "x" end return x, "y" end, range(6))
    assert.equal(6, n)
    assert.is_nil(r.n)                 -- a plain sequence: the count is the second result
    assert.same({ 1, nil, 3, nil, 5, nil }, { r[1], r[2], r[3], r[4], r[5], r[6] })
    pool:terminate()
  end)

  it("passes tables, strings and big values both ways", function()
    local big = ("x"):rep(300000)
    local r = pool:map(function(t) return { #t.s, t.s:sub(1, 3), t.n + 1 } end,
      { { s = big, n = 1 }, { s = "abc", n = 2 } })
    assert.same({ { 300000, "xxx", 2 }, { 3, "abc", 3 } }, { r[1], r[2] })
    local back = pool:apply(function(n) return ("y"):rep(n) end, { 200000 })
    assert.equal(200000, #back)
    pool:terminate()
  end)

  it("passes results larger than a worker's journal, alone and together", function()
    local r = pool:map(function(n) return ("z"):rep(n) end, { 300000, 400000, 500000, 2000000, 3 }, 5)
    assert.same({ 300000, 400000, 500000, 2000000, 3 }, { #r[1], #r[2], #r[3], #r[4], #r[5] })
    local ars = {}
    for i = 1, 8 do ars[i] = pool:apply_async(function(n) return ("q"):rep(n) end, { 200000 * i }) end
    for i = 1, 8 do assert.equal(200000 * i, #ars[i]:get(10)) end
    pool:terminate()
  end)

  it("maps an empty list and an iterator function", function()
    assert.same(0, #pool:map(function(x) return x end, {}))
    local i = 0
    local function gen() i = i + 1; if i <= 5 then return i end end
    local r = pool:map(function(x) return -x end, gen)
    assert.same({ -1, -2, -3, -4, -5 }, { table.unpack(r, 1, 5) })
    pool:terminate()
  end)

  it("rejects bad arguments with errors naming them", function()
    assert.has_error(function() pool:map(nil, { 1 }) end, "bad argument #1 to 'map' (function expected, got nil)")
    assert.has_error(function() pool:map(print, 5) end,
      "bad argument #2 to 'map' (table or iterator function expected, got number)")
    assert.has_error(function() pool:map(print, { 1 }, 0) end,
      "bad argument #3 to 'map' (chunksize must be at least 1, got 0)")
    assert.has_error(function() pool:map(print, { 1 }, { chunksize = -2 }) end,
      "bad argument #3 to 'map' (chunksize must be at least 1, got -2)")
    assert.has_error(function() pool:imap(print, { 1 }, 0) end,
      "bad argument #3 to 'imap' (chunksize must be at least 1, got 0)")
    -- an argument that cannot be sent fails that call, and the pool goes on
    local ok, err = pcall(pool.map, pool, function(x) return x end, { 1, coroutine.create(print) })
    assert.is_false(ok)
    assert.matches("item 2", tostring(err))
    assert.matches("thread", tostring(err))
    assert.same({ 1 }, { pool:map(function(x) return x end, { 1 })[1] })
    pool:terminate()
  end)

  it("uses Python's default chunksize", function()
    local ids = pool:map(function(x) return x end, range(100))
    assert.equal(100, #ids)
    pool:terminate()
    -- One task per worker process (maxtasksperchild = 1): distinct pids count the tasks.
    local function tasks(n)
      local p <close> = mp.Pool{ processes = 2, maxtasksperchild = 1 }
      local seen, count = {}, 0
      for _, pid in ipairs(p:map(function() return mp.getpid() end, range(n))) do
        if not seen[pid] then seen[pid], count = true, count + 1 end
      end
      return count
    end
    assert.equal(8, tasks(100))     -- ceil(100 / (4 * 2)) = 13 items per task
    assert.equal(5, tasks(9))       -- ceil(9 / 8) = 2 per task
  end)
end)

describe("mp.Pool other methods", function()
  it("starmap unpacks argument tables (n kept)", function()
    local pool <close> = mp.Pool(2)
    local r = pool:starmap(function(a, b, c) return (a or 0) + (b or 0) + (c or 0) end,
      { { 1, 2, 3 }, table.pack(nil, 5), { 7 } })
    assert.same({ 6, 5, 7 }, { r[1], r[2], r[3] })
    local ar = pool:starmap_async(function(a, b) return a * b end, { { 2, 3 }, { 4, 5 } })
    assert.same({ 6, 20 }, list(ar:get(10)))
  end)

  it("imap yields in order, imap_unordered yields everything", function()
    local pool <close> = mp.Pool(2)
    local got = {}
    for r in pool:imap(function(x) return x * 2 end, range(50), 3) do got[#got + 1] = r end
    assert.same((function() local t = {} for i = 1, 50 do t[i] = 2 * i end return t end)(), got)
    local seen = {}
    for r in pool:imap_unordered(function(x) return x * 2 end, range(50)) do seen[#seen + 1] = r end
    table.sort(seen)
    assert.same(got, seen)
  end)

  it("imap pulls from an iterator lazily, with bounded read-ahead", function()
    local pool <close> = mp.Pool(2)
    local pulled = 0
    local function gen()
      pulled = pulled + 1
      if pulled <= 100000 then return pulled end
    end
    local consumed, max_ahead = 0, 0
    local mem0
    for r in pool:imap(function(x) return x + 1 end, gen, 10) do
      consumed = consumed + 1
      assert.equal(consumed + 1, r)
      max_ahead = math.max(max_ahead, pulled - consumed)
      if consumed == 1000 then collectgarbage(); mem0 = collectgarbage("count") end
    end
    assert.equal(100000, consumed)
    -- the window: max(4 chunks per worker, 1024 items) of chunks of 10 items
    assert.is_true(max_ahead <= 1030 + 10, "pulled ahead " .. max_ahead)
    collectgarbage()
    assert.is_true(collectgarbage("count") < mem0 + 1000, "memory grew")
  end)

  it("imap raises a task's error at its position", function()
    local pool <close> = mp.Pool(2)
    local got = {}
    local ok, err = pcall(function()
      for r in pool:imap(function(x) if x == 4 then error("four") end return x end, range(6), 1) do
        got[#got + 1] = r
      end
    end)
    assert.is_false(ok)
    assert.same({ 1, 2, 3 }, got)
    assert.matches("four", err.message)
  end)

  it("an error of imap's iterator fails that imap after the items before it, not the pool", function()
    local pool <close> = mp.Pool(2)
    local n = 0
    local function gen()
      n = n + 1
      if n == 6 then error("generator broke") end
      return n
    end
    local got = {}
    local ok, err = pcall(function()
      for r in pool:imap(function(x) return x end, gen, 2) do got[#got + 1] = r end
    end)
    assert.is_false(ok)
    assert.matches("generator broke", tostring(err))
    assert.same({ 1, 2, 3, 4, 5 }, got)
    assert.equal(3, pool:apply(function() return 3 end))
  end)

  it("apply returns all results; apply_async get/wait/ready/successful", function()
    local pool <close> = mp.Pool(2)
    assert.same({ n = 3, 1, nil, 3 }, table.pack(pool:apply(function(...) return ... end, table.pack(1, nil, 3))))
    assert.equal(3, select("#", pool:apply(function(...) return ... end, table.pack(1, nil, 3))))
    assert.equal(0, select("#", pool:apply(function() end)))
    local ar = pool:apply_async(function(a) return a + 1, "two" end, { 1 })
    assert.is_true(ar:wait(10))
    assert.is_true(ar:ready())
    assert.is_true(ar:successful())
    assert.same({ 2, "two" }, { ar:get() })
  end)

  it("get and wait time out", function()
    local r, w = unistd.pipe()      -- before the pool: the workers inherit it
    local pool <close> = mp.Pool(1)
    local ar = pool:apply_async(function() unistd.read(r, 1) return "late" end)
    assert.is_false(ar:wait(0.05))
    assert.is_false(ar:ready())
    assert.has_error(function() ar:successful() end, "result is not ready")
    local ok, err = pcall(ar.get, ar, 0.05)
    assert.is_false(ok)
    assert.is_true(mp.TimeoutError:is(err))
    unistd.write(w, "x")
    assert.equal("late", ar:get(10))
    unistd.close(r); unistd.close(w)
  end)

  it("runs callbacks and error callbacks in the parent", function()
    local pool <close> = mp.Pool(2)
    local me = mp.getpid()
    local got, where, errs = {}, nil, {}
    local ar = pool:apply_async(function(x) return x * 3 end, { 5 }, function(v) got[#got + 1] = v; where = mp.getpid() end)
    assert.equal(15, ar:get(10))
    assert.same({ 15 }, got)
    assert.equal(me, where)
    local bad = pool:apply_async(function() error("bad") end, {}, { error_callback = function(e) errs[#errs + 1] = e end })
    assert.is_false(bad:wait(10) and bad:successful())
    assert.equal(1, #errs)
    assert.is_true(mp.RemoteError:is(errs[1]))
    local m = pool:map_async(function(x) return x end, { 1, 2 }, function(list) got.list = list end)
    assert.same({ 1, 2 }, list(m:get(10)))
    assert.same({ 1, 2 }, list(got.list))
  end)

  it("lets a callback use the pool", function()
    local pool <close> = mp.Pool(2)
    local inner
    local ars = {}
    for i = 1, 30 do
      ars[i] = pool:apply_async(function(x) return x end, { i }, function(v)
        if v == 1 then inner = pool:apply(function() return "nested" end) end
      end)
    end
    for i = 1, 30 do assert.equal(i, ars[i]:get(10)) end
    assert.equal("nested", inner)
  end)

  it("join after an imap left unfinished completes its tasks", function()
    local pool = mp.Pool(2)
    local n = 0
    local function gen() n = n + 1; if n <= 200 then return n end end
    for r in pool:imap(function(x) return x end, gen) do
      if r == 3 then break end
    end
    pool:close()
    pool:join()
    assert.equal(201, n)
    assert.same({}, H.children_of(unistd.getpid()))
  end)

  it("routes a callback's error to that result's get; the pool keeps serving", function()
    local pool <close> = mp.Pool(2)
    local ar = pool:apply_async(function() return 1 end, {}, function() error("callback broke") end)
    local ok, err = pcall(ar.get, ar, 10)
    assert.is_false(ok)
    assert.matches("callback broke", tostring(err))
    assert.is_false(ar:successful())
    assert.equal(4, pool:apply(function() return 4 end))
  end)
end)

describe("mp.Pool errors", function()
  it("a task's error reaches the parent as a RemoteError; the pool stays usable", function()
    local pool <close> = mp.Pool(2)
    local ok, err = pcall(pool.map, pool, function(x) if x == 3 then error("three!") end return x end, range(5), 1)
    assert.is_false(ok)
    assert.is_true(mp.RemoteError:is(err))
    assert.matches("three!", err.message)
    assert.matches("stack traceback", err.traceback)
    assert.not_matches("pool_work", err.traceback)
    assert.is_number(err.pid)
    assert.not_equal(mp.getpid(), err.pid)
    assert.same({ 1, 2 }, list(pool:map(function(x) return x end, { 1, 2 })))
    local ok2, err2 = pcall(pool.apply, pool, function() error(setmetatable({}, { __tostring = function() return "custom" end })) end)
    assert.is_false(ok2)
    assert.equal("custom", err2.message)
  end)

  it("a result that cannot be sent fails its own task only", function()
    local pool <close> = mp.Pool(2)
    local a = pool:apply_async(function() return coroutine.create(print) end)
    local b = pool:apply_async(function() return "fine" end)
    local ok, err = pcall(a.get, a, 10)
    assert.is_false(ok)
    assert.matches("cannot send", tostring(err))
    assert.equal("fine", b:get(10))
  end)

  it("a worker killed mid-task fails that task with WorkerLostError; the rest completes", function()
    local r, w = unistd.pipe()      -- before the pool: the workers inherit it
    local pool <close> = mp.Pool(2)
    local victim = pool:apply_async(function()
      unistd.write(w, mp.getpid() .. "\n")
      mp.sleep(60)
    end)
    local pid = tonumber(read_line(r))
    local others = {}
    for i = 1, 20 do others[i] = pool:apply_async(function(x) return x * 2 end, { i }) end
    signal.kill(pid, signal.SIGKILL)
    local ok, err = pcall(victim.get, victim, 10)
    assert.is_false(ok)
    assert.is_true(mp.WorkerLostError:is(err), tostring(err))
    assert.matches("signal 9", err.message)
    for i = 1, 20 do assert.equal(i * 2, others[i]:get(10)) end
    assert.same({ 1, 4, 9 }, list(pool:map(function(x) return x * x end, { 1, 2, 3 })))
    assert.equal(2, #workers())
    unistd.close(r); unistd.close(w)
  end)

  it("a worker killed inside a batch of small tasks loses only the running one", function()
    local r, w = unistd.pipe()
    local pool <close> = mp.Pool(2)
    local ars = {}
    for i = 1, 400 do
      ars[i] = pool:apply_async(function(x)
        if x == 150 then
          unistd.write(w, mp.getpid() .. "\n")
          mp.sleep(60)
        end
        return x * 3
      end, { i })
    end
    local pid = tonumber(read_line(r))
    signal.kill(pid, signal.SIGKILL)
    for i = 1, 400 do
      if i == 150 then
        local ok, err = pcall(ars[i].get, ars[i], 10)
        assert.is_false(ok)
        assert.is_true(mp.WorkerLostError:is(err), tostring(err))
      else
        assert.equal(i * 3, ars[i]:get(10))
      end
    end
    unistd.close(r); unistd.close(w)
  end)

  it("a worker killed inside a chunksize-1 map fails only its chunk; every other chunk runs", function()
    local r, w = unistd.pipe()
    local dr, dw = unistd.pipe()
    local pool <close> = mp.Pool(2)
    local ar = pool:map_async(function(x)
      if x == 150 then
        unistd.write(w, mp.getpid() .. "\n")
        mp.sleep(60)
      end
      unistd.write(dw, x .. "\n")
      return x * 3
    end, (function() local t = {} for i = 1, 400 do t[i] = i end return t end)(), 1)
    local pid = tonumber(read_line(r))
    signal.kill(pid, signal.SIGKILL)
    local ok, err = pcall(ar.get, ar, 10)
    assert.is_false(ok)
    assert.is_true(mp.WorkerLostError:is(err), tostring(err))
    -- The map fails at its first error; its other chunks still run, the
    -- unstarted ones of the dead worker's batch sent again.
    local got, seen = "", {}
    local deadline = mp.time() + 10
    while select(2, got:gsub("\n", "")) < 399 and mp.time() < deadline do
      if poll.rpoll(dr, 100) == 1 then got = got .. assert(unistd.read(dr, 4096))
      else pool:apply(function() end) end   -- the pool makes progress inside its calls
    end
    for x in got:gmatch("(%d+)\n") do seen[tonumber(x)] = true end
    for i = 1, 400 do assert.equal(i ~= 150, seen[i] == true, "item " .. i) end
    assert.same({ 1, 4, 9 }, list(pool:map(function(x) return x * x end, { 1, 2, 3 }, 1)))
    unistd.close(r); unistd.close(w); unistd.close(dr); unistd.close(dw)
  end)

  it("a worker killed holding a big batch (sent in a memfd) loses only its running task", function()
    local r, w = unistd.pipe()
    local dr, dw = unistd.pipe()
    local pool <close> = mp.Pool(2)
    local pad = ("p"):rep(2000)           -- 64 tasks of 2 KB: batches above 32 KB
    local xs = {}
    for i = 1, 400 do xs[i] = { i, pad } end
    local ar = pool:map_async(function(t)
      if t[1] == 150 then
        unistd.write(w, mp.getpid() .. "\n")
        mp.sleep(60)
      end
      unistd.write(dw, t[1] .. "\n")
      return t[1] * 3
    end, xs, { chunksize = 1 })
    local pid = tonumber(read_line(r))
    signal.kill(pid, signal.SIGKILL)
    local err = H.raises(mp.WorkerLostError, ar.get, ar, 20)
    assert.matches("signal 9", err.message)
    -- Every other task ran, the unstarted ones of the dead worker's batch sent again.
    local got, seen = "", {}
    local deadline = mp.time() + 10
    while select(2, got:gsub("\n", "")) < 399 and mp.time() < deadline do
      if poll.rpoll(dr, 100) == 1 then got = got .. assert(unistd.read(dr, 4096))
      else pool:apply(function() end) end
    end
    for x in got:gmatch("(%d+)\n") do seen[tonumber(x)] = true end
    for i = 1, 400 do assert.equal(i ~= 150, seen[i] == true, "item " .. i) end
    unistd.close(dr); unistd.close(dw)
    local res, n = pool:map(function(t) return t[1] * 3 end, xs, 1)
    assert.equal(400, n)
    for i = 1, 400 do assert.equal(i * 3, res[i]) end
    unistd.close(r); unistd.close(w)
  end)

  it("survives workers killed at random moments: every task completes or is the one lost", function()
    local pool <close> = mp.Pool(2)
    local ars, kills = {}, 0
    for i = 1, 1500 do
      ars[i] = pool:apply_async(function(x) local s = 0 for k = 1, 2000 do s = s + k end return x * 2 end, { i })
      if i % 100 == 0 then
        local w = workers()[(i // 100) % 2 + 1]
        if w and w.exitcode == nil then signal.kill(w.pid, signal.SIGKILL); kills = kills + 1 end
      end
    end
    local lost = 0
    for i = 1, 1500 do
      local ok, v = pcall(ars[i].get, ars[i], 20)
      if ok then assert.equal(i * 2, v)
      else
        assert.is_true(mp.WorkerLostError:is(v), tostring(v))
        lost = lost + 1
      end
    end
    assert.is_true(lost <= kills)
  end)

  it("a worker that exits mid-task fails that task naming the exit code", function()
    local pool <close> = mp.Pool(2)
    local ok, err = pcall(pool.apply, pool, function() os.exit(3) end)
    assert.is_false(ok)
    assert.is_true(mp.WorkerLostError:is(err))
    assert.matches("exit code 3", err.message)
    local ok2, err2 = pcall(pool.map, pool, function(x) if x == 5 then os.exit(7) end return x end, range(10), 1)
    assert.is_false(ok2)
    assert.matches("exit code 7", err2.message)
    assert.same({ 1, 2 }, list(pool:map(function(x) return x end, { 1, 2 })))
  end)

  it("an initializer that raises fails the pool fast with its error", function()
    local t0 = mp.time()
    local pool <close> = mp.Pool{ processes = 2, initializer = function() error("no init") end }
    local ok, err = pcall(pool.map, pool, function(x) return x end, range(10))
    assert.is_false(ok)
    assert.matches("no init", tostring(err))
    assert.is_true(mp.time() - t0 < 5)
    assert.has_error(function() pool:apply(print) end)
    pool:terminate()
  end)

  it("terminate fails unfinished results instead of leaving them hanging", function()
    local r, w = unistd.pipe()
    local pool = mp.Pool(1)
    local ar = pool:apply_async(function() unistd.read(r, 1) end)
    pool:terminate()
    local ok = pcall(ar.get, ar, 1)
    assert.is_false(ok)
    assert.has_error(function() pool:map(print, { 1 }) end, "Pool not running")
    unistd.close(r); unistd.close(w)
  end)
end)

describe("mp.Pool workers", function()
  it("runs the initializer with initargs in each worker", function()
    local pool <close> = mp.Pool{ processes = 2, initializer = function(a, b) _G.WORKER_TAG = a .. b end, initargs = { "x", "y" } }
    local r = pool:map(function() return _G.WORKER_TAG end, range(4), 1)
    assert.same({ "xy", "xy", "xy", "xy" }, { table.unpack(r, 1, 4) })
    assert.is_nil(_G.WORKER_TAG)
  end)

  it("replaces a worker after maxtasksperchild tasks", function()
    local pool <close> = mp.Pool{ processes = 2, maxtasksperchild = 1 }
    local pids = pool:map(function() return mp.getpid() end, range(6), 1)
    local distinct = {}
    for i = 1, 6 do distinct[pids[i]] = true end
    local n = 0
    for _ in pairs(distinct) do n = n + 1 end
    assert.equal(6, n)
  end)

  it("runs nested pools inside a worker", function()
    local pool <close> = mp.Pool(2)
    local r = pool:apply(function()
      local inner <close> = mp.Pool(2)
      return inner:map(function(x) return x + 100 end, { 1, 2, 3 })
    end)
    assert.same({ 101, 102, 103 }, { r[1], r[2], r[3] })
  end)

  it("leaves no worker alive after <close>", function()
    do
      local pool <close> = mp.Pool(3)
      pool:map(function(x) return x end, range(10))
      assert.equal(3, #(function() local t = {} for pid in pairs(H.children_of(unistd.getpid())) do t[#t + 1] = pid end return t end)())
    end
    assert.same({}, H.children_of(unistd.getpid()))
  end)

  it("close and join let queued work finish", function()
    local pool = mp.Pool(2)
    local ars = {}
    for i = 1, 10 do ars[i] = pool:apply_async(function(x) return x end, { i }) end
    pool:close()
    assert.has_error(function() pool:apply(print) end, "Pool not running")
    pool:join()
    for i = 1, 10 do assert.equal(i, ars[i]:get(0)) end
    assert.same({}, H.children_of(unistd.getpid()))
    local p2 = mp.Pool(1)
    assert.has_error(function() p2:join() end, "Pool is still running")
    p2:terminate()
  end)

  it("a collected pool terminates its workers", function()
    local pool = mp.Pool(2)
    pool:map(function(x) return x end, { 1 })
    pool = nil
    collectgarbage(); collectgarbage()
    assert.same({}, H.children_of(unistd.getpid()))
  end)
end)

describe("mp.Pool from a script", function()
  it("Ctrl-C (a SIGINT handler's error) during map interrupts it within a second, leaving no worker", function()
    local r = H.run_script([[
      mp.signal("SIGINT", function() error("interrupted", 0) end)
      local pool = mp.Pool(2)
      local parent = mp.getpid()
      local t0 = mp.time()
      local ok, err = pcall(pool.map, pool, function(x)
        if x == 1 then mp.kill(parent, "SIGINT") end
        mp.sleep(30)
      end, {1, 2}, 1)
      print(ok, err, mp.time() - t0 < 1, #mp.active_children())
    ]])
    assert.equal(0, r.status, r.stderr)
    assert.equal("false\tinterrupted\ttrue\t0\n", r.stdout)
  end)

  it("Ctrl-C under a stock lua5.4 (lua.c's handler) interrupts map the same way", function()
    local r = H.run_script([[
      local mp = require "mp"
      local pool = mp.Pool(2)
      local parent = mp.getpid()
      local t0 = mp.time()
      local ok, err = pcall(pool.map, pool, function(x)
        if x == 1 then mp.kill(parent, "SIGINT") end
        mp.sleep(30)
      end, {1, 2}, 1)
      print(ok, tostring(err):match("interrupted!") ~= nil, mp.time() - t0 < 1, #mp.active_children())
    ]], { program = H.lua, env = (function()
      local env = { LUA_CPATH = H.build .. "/?.so;;" }
      local preload = os.getenv("MPLUA_ASAN_PRELOAD")    -- the sanitizer run's mp.so needs it
      if preload and preload ~= "" then env.LD_PRELOAD = preload end
      return env
    end)() })
    assert.equal(0, r.status, r.stderr)
    assert.equal("false\ttrue\ttrue\t0\n", r.stdout)
  end)

  it("draws a progress bar only when stderr is a terminal", function()
    local r = H.run_script([[
      local pool <close> = mp.Pool(2)
      local t = pool:map(function(x) return x end, {1, 2, 3}, {progress = true})
      print(#t)
    ]])
    assert.equal(0, r.status, r.stderr)
    assert.equal("3\n", r.stdout)
    assert.equal("", r.stderr)
  end)
end)

describe("the pool's transport seam", function()
  it("takes another module's transport only through a __pool_ops metafield", function()
    local core = require "mp.core"
    for _, impl in ipairs { {}, io.stdout, "x", 1, true } do
      assert.has_error(function() core.pool_transport(1, impl) end,
        "bad argument #2 to 'pool_transport' (pool transport object expected)")
    end
    -- A table is no transport object, whatever its metatable says.
    assert.has_error(function() core.pool_transport(1, setmetatable({}, { __pool_ops = {} })) end,
      "bad argument #2 to 'pool_transport' (pool transport object expected)")
    -- A userdata whose __pool_ops is not a light userdata (a block of unknown size) is refused unread.
    local f = io.tmpfile()
    f:close()
    debug.setmetatable(f, { __pool_ops = io.stdout })
    assert.has_error(function() core.pool_transport(1, f) end,
      "bad argument #2 to 'pool_transport' (pool transport object expected)")
    -- nil is the local transport.
    local tr = core.pool_transport(1, nil)
    assert.is_true(tr:fileno() >= 0)
    tr:close()
  end)
end)

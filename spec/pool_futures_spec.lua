-- Futures on the Pool: as_completed, wait modes, per-task timeouts, cancel,
-- map timeouts, imap buffersize, callbacks during other blocking calls,
-- terminate_workers/kill_workers, progress.
local mp = require "mp"
local H = require "helper"

local function range(n)
  local t = {}
  for i = 1, n do t[i] = i end
  return t
end

-- The live pool workers among this process's children.
local function workers()
  local list = {}
  for _, p in ipairs(mp.active_children()) do
    if p.name:match("^PoolWorker%-") and p:is_alive() then list[#list + 1] = p end
  end
  return list
end

-- Events made before a pool are inherited by its workers. Tasks find them in
-- package.loaded (the same table in the worker, which the fork copied; busted
-- runs spec files with globals of their own).
local function events(n)
  local ev = {}
  for i = 1, n do ev[i] = mp.Event() end
  package.loaded.pool_spec_events = ev
  return ev
end

-- A task that waits (at most 10 s) for event i, then returns i.
local function gated(i)
  assert(package.loaded.pool_spec_events[i]:wait(10), "event " .. i .. " never set")
  return i
end

describe("mp.as_completed", function()
  it("yields results in the order they complete", function()
    local ev = events(3)
    local pool <close> = mp.Pool(3)
    local ars = {}
    for i = 1, 3 do ars[i] = pool:apply_async(gated, { i }) end
    local order = {}
    local it = mp.as_completed(ars, 20)
    ev[2]:set()
    order[1] = it():get()
    ev[3]:set()
    order[2] = it():get()
    ev[1]:set()
    order[3] = it():get()
    assert.is_nil(it())
    assert.same({ 2, 3, 1 }, order)
  end)

  it("raises TimeoutError when results are still pending at the timeout", function()
    local ev = events(1)
    local pool <close> = mp.Pool(1)
    local done = pool:apply_async(function() return 0 end)
    assert.equal(0, done:get(10))
    local ars = { pool:apply_async(gated, { 1 }), done }
    local it = mp.as_completed(ars, 0.3)
    assert.equal(done, it())                 -- the finished one first
    local t0 = mp.time()
    local err = H.raises(mp.TimeoutError, it)
    assert.is_true(mp.time() - t0 < 5)
    assert.matches("1 of 2", err.message)
    ev[1]:set()
    assert.equal(1, ars[1]:get(10))
  end)

  it("rejects what is not a list of AsyncResults", function()
    assert.has_error(function() mp.as_completed(5) end, "bad argument #1 to 'as_completed' (table expected, got number)")
    assert.has_error(function() mp.as_completed({ 1 }) end,
      "bad argument #1 to 'as_completed' (item 1: AsyncResult expected, got number)")
  end)
end)

describe("mp.wait with AsyncResults", function()
  it("FIRST_EXCEPTION returns as soon as one fails, with the rest not done", function()
    local ev = events(1)
    local pool <close> = mp.Pool(2)
    local slow = pool:apply_async(gated, { 1 })
    local bad = pool:apply_async(function() error("boom") end)
    local t0 = mp.time()
    local done, not_done = mp.wait({ slow, bad }, 20, "FIRST_EXCEPTION")
    assert.is_true(mp.time() - t0 < 5, "returned late")
    assert.same({ bad }, done)
    assert.same({ slow }, not_done)
    assert.is_false(bad:successful())
    ev[1]:set()
    done = mp.wait({ slow, bad }, 20, mp.ALL_COMPLETED)
    assert.same({ slow, bad }, done)
  end)

  it("FIRST_COMPLETED and ALL_COMPLETED, mixed with a connection", function()
    local ev = events(2)
    local pool <close> = mp.Pool(2)
    local a = pool:apply_async(gated, { 1 })
    local b = pool:apply_async(gated, { 2 })
    local r, w = mp.Pipe(false)
    local done, not_done = mp.wait({ a, r, b }, 0.2)
    assert.same({}, done)
    assert.equal(3, #not_done)
    w:send("x")
    done = mp.wait({ a, r, b }, 10, "FIRST_COMPLETED")
    assert.same({ r }, done)
    ev[2]:set()
    done = mp.wait({ a, b }, 10)
    assert.same({ b }, done)
    ev[1]:set()
    done = mp.wait({ a, r, b }, 10, "ALL_COMPLETED")
    assert.same({ a, r, b }, done)
    -- Without AsyncResults it is the connections' wait, as before.
    assert.same({ r }, mp.wait({ r }, 1))
    r:close(); w:close()
  end)

  it("rejects an unknown mode naming the closest one", function()
    assert.has_error(function() mp.wait({}, 1, "FIRST_COMPLETE") end,
      "bad argument #3 to 'wait' (unknown mode 'FIRST_COMPLETE' (did you mean 'FIRST_COMPLETED'?))")
  end)
end)

describe("apply_async timeout", function()
  it("kills a stuck worker at the timeout and fails its task with TimeoutError; the pool serves on", function()
    local pool <close> = mp.Pool(2)
    local t0 = mp.time()
    local stuck = pool:apply_async(function() while true do end end, {}, { timeout = 0.5 })
    local err = H.raises(mp.TimeoutError, stuck.get, stuck, 20)
    local dt = mp.time() - t0
    assert.is_true(dt >= 0.5 and dt < 5, "failed after " .. dt .. " s")
    assert.matches("timeout of 0.5 s", err.message)
    assert.equal(6, pool:apply(function(a, b) return a * b end, { 2, 3 }))
    assert.same({ 1, 4, 9 }, { table.unpack((pool:map(function(x) return x * x end, { 1, 2, 3 }))) })
    assert.equal(2, #workers())
    -- A timed task that finishes in time is not touched.
    assert.equal("quick", pool:apply_async(function() return "quick" end, {}, { timeout = 5 }):get(10))
  end)

  it("rejects a timeout that is not a positive number, and unknown options", function()
    local pool <close> = mp.Pool(1)
    assert.has_error(function() pool:apply_async(print, {}, { timeout = 0 }) end,
      "bad argument #3 to 'apply_async' (timeout must be a positive number)")
    assert.has_error(function() pool:apply_async(print, {}, { timeuot = 1 }) end,
      "unknown option 'timeuot' to 'apply_async' (did you mean 'timeout'?)")
  end)
end)

describe("AsyncResult:cancel", function()
  it("cancels a task still queued in the parent; get raises CancelledError", function()
    local ev = events(1)
    package.loaded.pool_spec_count = mp.Value("i", 0)
    local pool <close> = mp.Pool(1)
    local first = pool:apply_async(gated, { 1 })
    local ars = {}
    for i = 1, 10 do
      ars[i] = pool:apply_async(function()
        local c = package.loaded.pool_spec_count
        c:get_lock():acquire(); c.value = c.value + 1; c:get_lock():release()
      end)
    end
    local last = ars[10]
    assert.is_true(last:cancel())
    assert.is_true(last:cancel())            -- again: still cancelled
    assert.is_true(last:cancelled())
    assert.is_true(last:ready())
    H.raises(mp.CancelledError, last.get, last, 1)
    assert.is_false(first:cancel())          -- already with a worker
    ev[1]:set()
    for i = 1, 9 do ars[i]:get(10) end
    assert.equal(1, first:get(10))
    assert.equal(9, package.loaded.pool_spec_count.value)   -- the cancelled one never ran
  end)
end)

describe("map timeout", function()
  it("raises TimeoutError instead of hanging; the pool serves on", function()
    local ev = events(1)
    local pool <close> = mp.Pool(2)
    local t0 = mp.time()
    local err = H.raises(mp.TimeoutError, pool.map, pool, function(x)
      if x == 3 then package.loaded.pool_spec_events[1]:wait(10) end
      return x
    end, range(4), { timeout = 0.3, chunksize = 1 })
    assert.is_true(mp.time() - t0 < 5)
    assert.matches("0.3 s", err.message)
    ev[1]:set()
    assert.same({ 2, 4 }, { table.unpack((pool:starmap(function(a, b) return a * b end, { { 1, 2 }, { 2, 2 } }, { timeout = 5 }))) })
  end)
end)

describe("imap buffersize", function()
  it("bounds how far ahead of the consumer items are pulled and sent", function()
    local pool <close> = mp.Pool(2)
    local function ahead(opts)
      local pulled = 0
      local function gen() pulled = pulled + 1; if pulled <= 300 then return pulled end end
      local consumed, most = 0, 0
      for r in pool:imap(function(x) return -x end, gen, opts) do
        consumed = consumed + 1
        assert.equal(-consumed, r)
        most = math.max(most, math.min(pulled, 300) - consumed)
      end
      assert.equal(300, consumed)
      return most
    end
    local bounded = ahead({ buffersize = 4 })
    assert.is_true(bounded <= 4, "pulled " .. bounded .. " ahead")
    assert.is_true(ahead(nil) > 4)           -- the default window is larger
    -- imap_unordered too
    local pulled, consumed = 0, 0
    for _ in pool:imap_unordered(function(x) return x end,
        function() pulled = pulled + 1; if pulled <= 100 then return pulled end end, { buffersize = 3 }) do
      consumed = consumed + 1
      assert.is_true(math.min(pulled, 100) - consumed <= 3)
    end
    assert.equal(100, consumed)
    assert.has_error(function() pool:imap(print, {}, { buffersize = 0 }) end,
      "bad argument #3 to 'imap' (buffersize must be a positive integer)")
  end)
end)

describe("callbacks during other blocking calls", function()
  it("fire during mp.sleep as soon as the result is in", function()
    local pool <close> = mp.Pool(2)
    assert.equal(1, pool:apply(function() return 1 end))      -- workers up
    local fired
    local t0 = mp.time()
    pool:apply_async(function() return 7 end, {}, { callback = function(v) fired = { v, mp.time() } end })
    mp.sleep(0.5)
    assert.is_not_nil(fired, "the callback did not fire during mp.sleep")
    assert.equal(7, fired[1])
    assert.is_true(fired[2] - t0 < 0.25, string.format("fired after %.3f s", fired[2] - t0))
  end)

  it("fire during get, acquire, join, poll, put, wait and an event's wait", function()
    local pool <close> = mp.Pool(2)
    local q = mp.Queue()
    local lock = mp.Lock()
    local n = 0
    local function cb() n = n + 1 end
    pool:apply_async(function() return 1 end, {}, { callback = cb })
    H.raises(mp.Empty, q.get, q, true, 0.4)
    assert.equal(1, n)
    lock:acquire()
    pool:apply_async(function() return 1 end, {}, { callback = cb })
    assert.is_false(lock:acquire(true, 0.4))
    assert.equal(2, n)
    pool:apply_async(function() return 1 end, {}, { callback = cb })
    local p = mp.Process { target = function() mp.sleep(0.4) end }
    p:start()
    p:join(10)
    assert.equal(3, n)
    lock:release()
    local r, w = mp.Pipe(false)
    pool:apply_async(function() return 1 end, {}, { callback = cb })
    assert.is_false(r:poll(0.4))
    assert.equal(4, n)
    local full = mp.Queue(1)
    full:put(1)
    pool:apply_async(function() return 1 end, {}, { callback = cb })
    H.raises(mp.Full, full.put, full, 2, true, 0.4)
    assert.equal(5, n)
    pool:apply_async(function() return 1 end, {}, { callback = cb })
    assert.same({}, mp.wait({ r }, 0.4))
    assert.equal(6, n)
    pool:apply_async(function() return 1 end, {}, { callback = cb })
    assert.is_false(mp.Event():wait(0.4))
    assert.equal(7, n)
    r:close(); w:close()
  end)
end)

describe("terminate_workers and kill_workers", function()
  it("end the workers and fail what was unfinished", function()
    for _, how in ipairs { "terminate_workers", "kill_workers" } do
      local ev = events(1)
      local pool = mp.Pool(2)
      local ar = pool:apply_async(gated, { 1 })
      local t0 = mp.time()
      pool[how](pool)
      assert.is_true(mp.time() - t0 < 5)
      H.raises(mp.ProcessError, ar.get, ar, 1)
      assert.same({}, workers())
      assert.has_error(function() pool:apply(print) end, "Pool not running")
      ev[1]:set()
    end
  end)

  it("check their self", function()
    local pool <close> = mp.Pool(1)
    assert.has_error(function() pool.map(5, print, {}) end, "bad argument #1 to 'map' (mp.Pool expected, got number)")
    assert.has_error(function() pool.kill_workers({}) end,
      "bad argument #1 to 'kill_workers' (mp.Pool expected, got table)")
    local ar = pool:apply_async(print)
    assert.has_error(function() ar.get(pool) end, "bad argument #1 to 'get' (mp.AsyncResult expected, got mp.Pool)")
  end)
end)

describe("progress", function()
  it("draws for map, imap and map_async on a terminal", function()
    local path = os.tmpname() .. ".lua"
    H.write_file(path, [[
      local pool <close> = mp.Pool(2)
      pool:map(function(x) return x end, {1, 2, 3}, {progress = true})
      for _ in pool:imap(function(x) return x end, {1, 2, 3, 4}, {progress = true}) do end
      pool:map_async(function(x) return x end, {1, 2, 3, 4, 5}, {progress = true}):get(10)
      print("done")
    ]])
    -- script(1) gives the program a terminal for its stdout and stderr (without
    -- the sanitizer run's LD_PRELOAD: script itself is not ours to check for leaks).
    local r = H.run { program = "env", args = { "-u", "LD_PRELOAD", "script", "-qec",
      H.quote(H.mplua) .. " " .. path, "/dev/null" } }
    os.remove(path)
    assert.equal(0, r.status, r.stderr)
    assert.matches("%[#+%] 3/3", r.stdout)
    assert.matches("%[#+%] 4/4", r.stdout)
    assert.matches("%[#+%] 5/5", r.stdout)
    assert.matches("done", r.stdout)
  end)
end)

describe("errors raised in tasks", function()
  it("arrive as RemoteError whose value is the raised table (its tostring when it cannot be sent)", function()
    local pool <close> = mp.Pool(1)
    local err = H.raises(mp.RemoteError, pool.apply, pool, function() error({ code = 7, why = "bad" }) end)
    assert.same({ code = 7, why = "bad" }, err.value)
    assert.matches("error object is a table value", err.message)
    err = H.raises(mp.RemoteError, pool.apply, pool, function() error({ co = coroutine.create(print) }) end)
    assert.matches("^table: ", err.value)
    err = H.raises(mp.RemoteError, pool.apply, pool, function() error("plain") end)
    assert.is_nil(err.value)
    assert.matches("plain", err.message)
    local ar = pool:map_async(function(x) if x == 2 then error(42) end return x end, { 1, 2, 3 })
    err = H.raises(mp.RemoteError, ar.get, ar, 10)
    assert.equal(42, err.value)
  end)
end)

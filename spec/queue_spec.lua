local mp = require "mp"
local H = require "helper"
local signal = require "posix.signal"

local raises = H.raises

-- Waits until process pid sleeps in a futex wait (it is blocked in get/put).
local function blocked_in_futex(pid) H.wait_blocked(pid, { "futex" }) end

describe("mp.Queue in one process", function()
  it("passes any value, nil included, and put then get_nowait finds the item", function()
    local q = mp.Queue()
    q:put(nil)
    assert.is_nil(q:get_nowait())
    local values = { 1, -0.5, 2^53, "s\0b", true, false, { a = { 1, 2 }, [3] = "x" } }
    for _, v in ipairs(values) do q:put(v) end
    assert.equal(#values, q:qsize())
    for i = 1, #values - 1 do assert.equal(values[i], q:get_nowait()) end
    assert.same(values[#values], q:get())
    assert.is_true(q:empty())
    q:close()
  end)

  it("keeps FIFO order over many wrap-arounds of a small ring", function()
    local q = mp.Queue{ bytes = 4096 }
    local n = 0
    for round = 1, 200 do
      for i = 1, 20 do q:put(round * 100 + i) end
      for i = 1, 20 do assert.equal(round * 100 + i, q:get_nowait()); n = n + 1 end
    end
    assert.equal(4000, n)
  end)

  it("raises Empty from get_nowait and from get after its timeout", function()
    local q = mp.Queue()
    raises(mp.Empty, q.get_nowait, q)
    raises(mp.Empty, q.get, q, false)
    local t0 = mp.time()
    local err = raises(mp.Empty, q.get, q, true, 0.2)
    local dt = mp.time() - t0
    assert.is_true(dt >= 0.19 and dt < 2, "waited " .. dt)
    assert.equal("Empty", err.kind)
  end)

  it("raises Full when maxsize items are queued, and reports qsize/full/empty", function()
    local q = mp.Queue(2)
    assert.is_true(q:empty())
    assert.is_false(q:full())
    q:put(1); q:put(2)
    assert.equal(2, q:qsize())
    assert.is_true(q:full())
    raises(mp.Full, q.put_nowait, q, 3)
    raises(mp.Full, q.put, q, 3, false)
    local t0 = mp.time()
    raises(mp.Full, q.put, q, 3, true, 0.2)
    local dt = mp.time() - t0
    assert.is_true(dt >= 0.19 and dt < 2, "waited " .. dt)
    assert.equal(1, q:get())
    q:put(3)
    assert.same({ 2, 3 }, { q:get(), q:get() })
  end)

  it("takes {block =, timeout =} in place of the positional arguments", function()
    local q = mp.Queue(1)
    raises(mp.Empty, q.get, q, { block = false })
    local t0 = mp.time()
    raises(mp.Empty, q.get, q, { timeout = 0.1 })
    assert.is_true(mp.time() - t0 >= 0.09)
    q:put(1, { timeout = 1 })
    raises(mp.Full, q.put, q, 2, { block = false })
    raises(mp.Full, q.put, q, 2, { timeout = 0.05 })
    assert.equal(1, q:get{ timeout = 1 })
    local ok, err = pcall(function() q:get{ timeout = "x" } end)
    assert.matches("bad argument #1 to 'get' %(timeout must be a number%)", err)
  end)

  it("refuses an unsendable value at put and stays usable", function()
    local q = mp.Queue()
    local ok, err = pcall(q.put, q, coroutine.create(function() end))
    assert.is_false(ok)
    assert.matches("thread", tostring(err))
    q:put("after")
    assert.equal("after", q:get_nowait())
    assert.is_true(q:empty())
  end)

  it("names bad arguments", function()
    local q = mp.Queue()
    local ok, err = pcall(function() q:put(1, true, "soon") end)
    assert.matches("bad argument #3 to 'put'", err)
    ok, err = pcall(function() q:get(true, {}) end)
    assert.matches("bad argument #2 to 'get'", err)
    ok, err = pcall(mp.Queue, "big")
    assert.matches("bad argument #1 to '.*Queue'", err)
    ok, err = pcall(mp.Queue, { bytes = 5000 })
    assert.matches("power of two", err)
    ok, err = pcall(q.get, {})
    assert.matches("Queue expected", err)
    q:close()
    ok, err = pcall(q.put, q, 1)
    assert.matches("queue is closed", err)
  end)

  it("SimpleQueue and JoinableQueue have their own method sets", function()
    local sq = mp.SimpleQueue()
    sq:put(nil); sq:put(5)
    assert.is_nil(sq:get()); assert.equal(5, sq:get())
    assert.is_true(sq:empty())
    assert.is_nil(sq.task_done)
    local jq = mp.JoinableQueue()
    assert.is_function(jq.task_done)
    assert.is_nil(mp.Queue().task_done)
    assert.matches("^<JoinableQueue", tostring(jq))
  end)
end)

describe("mp.Queue between processes", function()
  it("carries values from a child to its parent and back", function()
    local q, back = mp.Queue(), mp.Queue()
    local p = mp.Process{ target = function()
      for i = 1, 100 do q:put({ i = i, s = ("x"):rep(i) }) end
      q:put(nil)
      back:put(back:get() .. " pong")
    end }
    p:start()
    for i = 1, 100 do
      local v = q:get(true, 10)
      assert.equal(i, v.i); assert.equal(i, #v.s)
    end
    assert.is_nil(q:get(true, 10))
    back:put("ping")
    H.join(p)
    assert.equal("ping pong", back:get(true, 10))
  end)

  it("loses and duplicates nothing: 4 producers, 2 consumers, 1e5 items", function()
    local q, results = mp.Queue(1000), mp.Queue()
    local N, P = 100000, 4
    local procs = {}
    for k = 0, P - 1 do
      procs[#procs + 1] = mp.Process{ target = function()
        for i = k * (N // P) + 1, (k + 1) * (N // P) do q:put(i) end
      end }
    end
    for _ = 1, 2 do
      procs[#procs + 1] = mp.Process{ target = function()
        local count, sum, sq = 0, 0, 0
        while true do
          local v = q:get()
          if v == "STOP" then break end
          count, sum, sq = count + 1, sum + v, sq + v * v
        end
        results:put({ count, sum, sq })
      end }
    end
    for _, p in ipairs(procs) do p:start() end
    for i = 1, P do H.join(procs[i], 60) end
    q:put("STOP"); q:put("STOP")
    local count, sum, sq = 0, 0, 0
    for _ = 1, 2 do
      local r = results:get(true, 60)
      count, sum, sq = count + r[1], sum + r[2], sq + r[3]
    end
    for i = P + 1, #procs do H.join(procs[i], 60) end
    assert.equal(N, count)
    assert.equal(N * (N + 1) // 2, sum)
    assert.equal(N * (N + 1) * (2 * N + 1) // 6, sq)
  end)

  it("passes a 100 MiB string to a consumer started after the put", function()
    local q, results = mp.Queue(), mp.Queue()
    local big = ("0123456789abcdef"):rep(100 * 2^20 // 16)
    q:put(big)
    local p = mp.Process{ target = function()
      local s = q:get()
      results:put({ #s, s:sub(1, 16), s:sub(-16) })
    end }
    p:start()
    local r = results:get(true, 60)
    H.join(p, 60)
    assert.same({ #big, "0123456789abcdef", "0123456789abcdef" }, r)
  end)

  it("streams an item larger than the whole ring", function()
    local q = mp.Queue{ bytes = 65536 }
    local p = mp.Process{ target = function()
      q:put(("y"):rep(3 * 2^20) .. "end")
      q:put("next")
    end }
    p:start()
    local s = q:get(true, 30)
    assert.equal(3 * 2^20 + 3, #s)
    assert.equal("yend", s:sub(-4))
    assert.equal("next", q:get(true, 30))
    H.join(p)
  end)

  it("is not wedged by a consumer killed while blocked in get", function()
    local q = mp.Queue()
    local p = mp.Process{ target = function() q:get() end }
    p:start()
    blocked_in_futex(p.pid)
    p:kill()
    H.join(p)
    q:put("still works")
    assert.equal("still works", q:get(true, 5))
  end)

  it("hands the lock of a consumer killed while holding it to a waiting consumer", function()
    local q, results = mp.Queue(), mp.Queue()
    local holder = mp.Process{ target = function() q:get() end }
    holder:start()
    blocked_in_futex(holder.pid)       -- holds the consumer lock, sleeps for data
    local waiter = mp.Process{ target = function() results:put(q:get()) end }
    waiter:start()
    blocked_in_futex(waiter.pid)       -- sleeps on the lock
    holder:kill()
    H.join(holder)
    q:put("for the waiter")
    assert.equal("for the waiter", results:get(true, 5))
    H.join(waiter)
  end)

  it("skips the rest of a streamed item whose consumer was killed in the middle of it", function()
    local q, results = mp.Queue{ bytes = 65536 }, mp.Queue()
    local producer = mp.Process{ target = function()
      q:put(("z"):rep(2^20))         -- 16 times the ring: streamed
      q:put("after")
    end }
    producer:start()
    blocked_in_futex(producer.pid)     -- the ring is full, the item not finished
    signal.kill(producer.pid, signal.SIGSTOP)
    local victim = mp.Process{ target = function() q:get() end }
    victim:start()
    blocked_in_futex(victim.pid)       -- took a ring's worth, waits for the rest
    victim:kill()
    H.join(victim)
    signal.kill(producer.pid, signal.SIGCONT)
    local heir = mp.Process{ target = function() results:put(q:get()) end }
    heir:start()
    assert.equal("after", results:get(true, 10))
    H.join(heir)
    H.join(producer)
    assert.equal(0, q:qsize())
  end)

  it("gives a producer killed while blocked on a full queue's lock no power over it", function()
    local q = mp.Queue(1)
    q:put(1)
    local p = mp.Process{ target = function() q:put(2) end }
    p:start()
    blocked_in_futex(p.pid)            -- holds the producer lock, sleeps for room
    p:kill()
    H.join(p)
    assert.equal(1, q:get(true, 5))
    q:put(3, true, 5)
    assert.equal(3, q:get(true, 5))
  end)
end)

describe("blocking calls and signals", function()
  it("run Lua signal handlers while blocked in get, and release the queue when one raises", function()
    local q, results = mp.Queue(), mp.Queue()
    local p = mp.Process{ target = function()
      mp.signal("SIGUSR1", function() error("interrupted", 0) end)
      local ok, err = pcall(q.get, q)
      results:put(tostring(err))
      results:put(q:get(true, 10))     -- the consumer lock was released
    end }
    p:start()
    blocked_in_futex(p.pid)
    signal.kill(p.pid, signal.SIGUSR1)
    assert.equal("interrupted", results:get(true, 10))
    q:put("after")
    assert.equal("after", results:get(true, 10))
    H.join(p)
  end)

  it("run them while blocked in Pipe.recv", function()
    local a, b = mp.Pipe()
    local results = mp.Queue()
    local p = mp.Process{ target = function()
      mp.signal("SIGUSR1", function() error("interrupted", 0) end)
      local ok, err = pcall(b.recv, b)
      results:put(tostring(err))
      results:put(b:recv())
    end }
    p:start()
    H.wait_blocked(p.pid, { "poll", "ppoll" })
    signal.kill(p.pid, signal.SIGUSR1)
    assert.equal("interrupted", results:get(true, 10))
    a:send("after")
    assert.equal("after", results:get(true, 10))
    H.join(p)
  end)
end)

describe("mp.JoinableQueue", function()
  it("join returns once every item got its task_done", function()
    local jq, done = mp.JoinableQueue(), mp.Queue()
    for i = 1, 50 do jq:put(i) end
    assert.is_false(jq:join(0.05))
    local p = mp.Process{ target = function()
      local sum = 0
      for _ = 1, 50 do sum = sum + jq:get(); jq:task_done() end
      done:put(sum)
    end }
    p:start()
    assert.is_true(jq:join(20))
    assert.equal(1275, done:get(true, 10))
    H.join(p)
  end)

  it("says so when task_done is called too often", function()
    local jq = mp.JoinableQueue()
    jq:put("a")
    jq:get()
    jq:task_done()
    local ok, err = pcall(jq.task_done, jq)
    assert.is_false(ok)
    assert.matches("task_done%(%) called too many times", err)
    assert.is_true(jq:join())
  end)
end)

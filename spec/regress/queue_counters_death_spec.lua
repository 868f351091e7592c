--[[
Regression: a queue's counters did not survive a process dying between two
steps of put or get.
- A consumer SIGKILLed after counting its get and before moving the head: the
  next consumer took the same item and counted it again, nget passed nput and
  the unsigned difference wrapped, so a drained Queue(2) raised Full forever
  (qsize 0, empty true, full false).
- A producer SIGKILLed between counting its put and publishing it: qsize 1 on
  a drained queue, empty() true at the same time, a Queue(2) that refused its
  second item, and a JoinableQueue whose join() never returned.
Each window is hit deterministically with the fault points of the test build
(mp.core.fault_arm, src/engine/fault.h), for every step of put and get.
]]
local H = require "helper"

-- Runs `body` (a script) under the fault build; returns its stdout lines.
local function run(body)
  local r = H.run_script("local core = require 'mp.core'\n" .. body, { program = H.faults, timeout = 20 })
  assert.is_nil(r.signal, r.stderr)
  assert.equal(0, r.status, r.stdout .. r.stderr)
  return r.stdout
end

describe("regress: a consumer killed in the middle of get", function()
  for _, point in ipairs { "ring.get.locked", "ring.get.journaled", "ring.get.counted", "ring.get.copied" } do
    it("leaves the counters exact (" .. point .. ")", function()
      local out = run(string.format([[
        local q = mp.Queue(2)
        q:put(1); q:put(2)
        local c = mp.Process{ target = function() core.fault_arm(%q); q:get() end }
        c:start(); c:join(10)
        -- The item the dead consumer took is gone with it, or still there when it
        -- died before consuming it: either way the counts match what is left.
        local left = {}
        while true do
          local ok, v = pcall(q.get, q, true, 0.05)
          if not ok then break end
          left[#left + 1] = v
        end
        print(c.exitcode, #left, q:qsize(), q:empty(), q:full())
        q:put(3); q:put(4)
        print(q:full(), pcall(q.put_nowait, q, 5) == false, q:get(), q:get(), q:qsize())
      ]], point))
      local code, nleft, size, empty, full, full2, refused, g1, g2, size2 =
        out:match("^(%S+)\t(%d)\t(%d)\t(%a+)\t(%a+)\n(%a+)\t(%a+)\t(%d)\t(%d)\t(%d)\n$")
      assert.is_truthy(code, out)
      assert.equal("-9", code)
      -- Before the journal the item is still there; once journaled it is taken.
      local taken = point == "ring.get.journaled" or point == "ring.get.counted"
      assert.equal(taken and "1" or "2", nleft)
      assert.same({ "0", "true", "false" }, { size, empty, full })
      assert.same({ "true", "true", "3", "4", "0" }, { full2, refused, g1, g2, size2 })
    end)
  end
end)

describe("regress: a producer killed in the middle of put", function()
  for _, point in ipairs { "ring.put.locked", "ring.put.copied", "ring.put.journaled", "ring.put.counted" } do
    it("leaves the counters exact and join() returns (" .. point .. ")", function()
      local out = run(string.format([[
        local q = mp.JoinableQueue(2)
        local p = mp.Process{ target = function() core.fault_arm(%q); q:put("x") end }
        p:start(); p:join(10)
        -- Once journaled the put is rolled forward by the next holder of the lock.
        local got = 0
        q:put("y")
        while true do
          local ok = pcall(q.get, q, true, 0.05)
          if not ok then break end
          got = got + 1
          q:task_done()
        end
        print(p.exitcode, got, q:qsize(), q:empty(), q:full(), q:join(2))
        q:put(1); q:put(2)
        print(q:full(), pcall(q.put_nowait, q, 3) == false, q:qsize())
      ]], point))
      local code, got, size, empty, full, joined, full2, refused, size2 =
        out:match("^(%S+)\t(%d)\t(%d)\t(%a+)\t(%a+)\t(%a+)\n(%a+)\t(%a+)\t(%d)\n$")
      assert.is_truthy(code, out)
      assert.equal("-9", code)
      local delivered = point == "ring.put.journaled" or point == "ring.put.counted"
      assert.equal(delivered and "2" or "1", got)
      assert.same({ "0", "true", "false", "true" }, { size, empty, full, joined })
      assert.same({ "true", "true", "2" }, { full2, refused, size2 })
    end)
  end
end)

describe("regress: a process blocked on the other side of a dead one", function()
  it("gets the message a producer journaled before it died, with no other producer", function()
    local out = run([[
      local q = mp.Queue()
      local a, b = mp.Pipe(false)
      local p1 = mp.Process{ target = function() core.fault_arm("ring.put.counted"); q:put("from the queue") end }
      local p2 = mp.Process{ target = function() core.fault_arm("ring.put.counted"); b:send("from the pipe") end }
      p1:start(); p2:start()
      print(q:get(true, 5), a:recv(), #mp.wait({ a, q }, 0))
      p1:join(5); p2:join(5)
      print(p1.exitcode, p2.exitcode, q:qsize())
    ]])
    assert.equal("from the queue\tfrom the pipe\t0\n-9\t-9\t0\n", out)
  end)

  it("puts into a full queue whose consumer died with a get journaled", function()
    local out = run([[
      local q = mp.Queue(1)
      q:put(1)
      local c = mp.Process{ target = function() core.fault_arm("ring.get.journaled"); q:get() end }
      c:start(); c:join(5)
      local t0 = mp.time()
      q:put(2, true, 5)
      print(c.exitcode, q:get(true, 1), q:qsize(), mp.time() - t0 < 2)
    ]])
    assert.equal("-9\t2\t0\ttrue\n", out)
  end)
end)

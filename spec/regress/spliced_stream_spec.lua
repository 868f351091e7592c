--[[
Regression: a sender killed in the middle of a message larger than the ring
left it half-written, and the next sender's bytes were read as the rest of
it. Two processes shared the send end of mp.Pipe(false): A sent a 3 MiB table
(the ring is 1 MiB, so it streams) and was SIGKILLed while blocked in the
middle of it; B then sent 2,000 small tables. The receiver got "A's message"
made of B's bytes, then EOFError, and none of B's messages intact (on the
ASan build a huge allocation size read from B's payload). With a Queue of 64
KiB and a 300 KB item, the next get(true, 2) never returned.

Now a message larger than the ring travels in chunk records; a reader drops
a message whose producer died (or whose lock was taken over) and every later
message arrives intact.
]]
local mp = require "mp"
local H = require "helper"
local signal = require "posix.signal"

-- Starts A: it sends `big` through `send` and blocks mid-message (nobody reads yet).
local function start_blocked_sender(send, big)
  local a = H.spawn(function() send(big) end)
  H.wait_blocked(a.pid, { "futex" })
  return a
end

describe("regress: a sender killed in the middle of a message larger than the ring", function()
  it("does not splice the next sender's messages into it (Pipe)", function()
    local r, w = mp.Pipe(false)
    local big = { string.rep("a", 3 * 1024 * 1024) }
    local a = start_blocked_sender(function(v) w:send(v) end, big)
    signal.kill(a.pid, signal.SIGKILL)
    assert.equal(-9, H.join(a))
    local b = H.spawn(function()
      for i = 1, 2000 do w:send({ i = i, s = string.rep("b", 100) }) end
      w:send("done")
    end)
    w:close()
    local n = 0
    while true do
      local v = r:recv()
      if v == "done" then break end
      n = n + 1
      assert.same({ i = n, s = string.rep("b", 100) }, v)
    end
    assert.equal(2000, n)
    assert.equal(0, H.join(b))
    r:close()
  end)

  it("does not splice the next producer's items into it, nor hang the next get (Queue)", function()
    local q = mp.Queue{ bytes = 65536 }
    local big = string.rep("a", 300000)
    local a = start_blocked_sender(function(v) q:put(v) end, big)
    signal.kill(a.pid, signal.SIGKILL)
    assert.equal(-9, H.join(a))
    local b = H.spawn(function() for i = 1, 50 do q:put({ i, string.rep("b", 5000) }) end end)
    for i = 1, 50 do
      assert.same({ i, string.rep("b", 5000) }, q:get(true, 5))
    end
    assert.equal(0, H.join(b))
    H.raises(mp.Empty, q.get, q, true, 0.05)
    assert.equal(0, q:qsize())
    q:close()
  end)

  it("delivers a message whose sender died after writing its last chunk (roll forward)", function()
    -- The fault build kills the sender between counting its last chunk and publishing it.
    local r = H.run_script([[
      local core = require "mp.core"
      local q = mp.Queue{ bytes = 65536 }
      local big = string.rep("z", 200000)
      local p = mp.Process{ target = function()
        core.fault_arm("ring.put.counted")
        q:put(big)
      end }
      p:start()
      local v = q:get(true, 5)
      p:join(5)
      print(p.exitcode, #v, v == big, q:qsize(), q:empty())
    ]], { program = H.faults })
    assert.equal(0, r.status, r.stderr)
    assert.equal("-9\t200000\ttrue\t0\ttrue\n", r.stdout)
  end)
end)

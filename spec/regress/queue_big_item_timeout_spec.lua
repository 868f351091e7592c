--[[
Regression: for an item larger than the queue's area, put ignored its timeout
and put_nowait blocked, forever when nobody consumed: the message streamed
through the ring and, once started, ran to the end. Now the deadline holds:
put_nowait raises Full at once (such an item cannot pass without waiting for
a consumer) and put(v, timeout) raises Full when the time is up, abandoning
the unfinished message, which a later get drops before returning the next
item. Run in a subprocess: the old code hangs.
]]
local H = require "helper"

describe("regress: an item larger than the queue's area", function()
  it("honours put's timeout and put_nowait's no-wait", function()
    local r = H.run_script([[
      local q = mp.Queue{ bytes = 65536 }
      local big = string.rep("x", 300000)
      local t0 = mp.time()
      print(mp.Full:is(select(2, pcall(q.put_nowait, q, big))), mp.time() - t0 < 0.05)
      t0 = mp.time()
      local ok, err = pcall(q.put, q, big, true, 0.2)
      local dt = mp.time() - t0
      print(mp.Full:is(err), dt >= 0.19 and dt < 2)
      -- The abandoned message does not reach a consumer; the next item does
      -- (put by another process: the unfinished chunks fill the ring until read).
      local n = mp.Process{ target = function() q:put("next") end }
      n:start()
      print(q:get(true, 2), q:qsize(), q:empty())
      n:join(5)
      -- With a consumer, the same item passes whole.
      local p = mp.Process{ target = function() q:put(big, true, 10) end }
      p:start()
      print(q:get(true, 10) == big)
      p:join(10)
      print(n.exitcode, p.exitcode)
    ]], { timeout = 15 })
    assert.is_nil(r.signal, r.stderr)
    assert.equal(0, r.status, r.stderr)
    assert.equal("true\ttrue\ntrue\ttrue\nnext\t0\ttrue\ntrue\n0\t0\n", r.stdout)
  end)
end)

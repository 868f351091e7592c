--[[
Regression: an unbounded Queue's producer ran out of room after about 1 MiB
while its consumer was a little behind. Past the first MiB of the ring a
producer wraps back to its start when the consumer keeps up (to reuse warm
pages); it did so whenever everything unconsumed fitted before the wrap
point, so with the consumer 150 KB behind the producer had only the rest of
that first MiB until the consumer passed the wrap point, and put_nowait
raised Full (put waited, at the consumer's pace: the slow mode of a
JoinableQueue reader, 0.2 us per message instead of 0.07). Now it wraps only
when the consumer is at most 64 KiB behind, and otherwise writes on.
One process: the consumer's lag is set exactly by how many items it took.
]]
local H = require "helper"

describe("regress: an unbounded Queue with its consumer 150 KB behind", function()
  it("takes 2 MB more items without waiting for the consumer", function()
    local r = H.run_script([[
      local q = mp.Queue()
      local item = string.rep("x", 1000)         -- a record of about 1 KB
      for i = 1, 1000 do q:put(i .. item) end    -- about 1.0 MB, short of the first MiB
      for i = 1, 850 do assert(q:get() == i .. item) end   -- 150 KB left behind
      local put = 1000
      for i = 1001, 3000 do
        local ok, err = pcall(q.put_nowait, q, i .. item)
        if not ok then print("Full after", put, tostring(err)) break end
        put = i
      end
      local got = 850
      while not q:empty() do
        got = got + 1
        assert(q:get_nowait() == got .. item, "item " .. got)
      end
      print(put, got)
    ]], { timeout = 20 })
    assert.is_nil(r.signal, r.stderr)
    assert.equal(0, r.status, r.stderr)
    assert.equal("3000\t3000\n", r.stdout)
  end)
end)

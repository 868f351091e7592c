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
Second case: a consumer that keeps up, so that the producer does wrap, and
then stops taking items (as one that waits for its producer to finish) left
the producer the rest of the first MiB: put_nowait raised Full after about
1000 more items, put waited for good. Now the producer jumps past the wrap
point's image and goes on in the rest of the area.
One process: the consumer's lag is set exactly by how many items it took.
]]
local H = require "helper"

describe("regress: an unbounded Queue with its consumer behind", function()
  it("takes 2 MB more items, the consumer 150 KB behind", function()
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

  it("takes 3 MB more items when the consumer stops just after a wrap", function()
    -- The wrap comes at the first page past the first MiB: where exactly depends
    -- on the records' size, so the consumer stops at each of 30 places around it.
    local r = H.run_script([[
      local item = string.rep("x", 1000)              -- a record of about 1 KB
      local short = 0
      for stop = 1020, 1050 do
        local q = mp.Queue()
        local got = 0
        for i = 1, stop do                            -- 10 items behind, then it stops
          q:put(i .. item)
          if i > 10 then got = got + 1; assert(q:get() == got .. item) end
        end
        local put = stop
        for i = stop + 1, stop + 3000 do
          if not pcall(q.put_nowait, q, i .. item) then break end
          put = i
        end
        if put < stop + 3000 then short = short + 1 end
        while not q:empty() do
          got = got + 1
          assert(q:get_nowait() == got .. item, "item " .. got)
        end
        q:put("last")                                 -- and the ring goes on as usual
        assert(got == put and q:get_nowait() == "last")
        q:close()
      end
      print("stops where put_nowait ran short:", short)
    ]], { timeout = 30 })
    assert.is_nil(r.signal, r.stderr)
    assert.equal(0, r.status, r.stderr)
    assert.equal("stops where put_nowait ran short:\t0\n", r.stdout)
  end)
end)

-- The jump is one more step of put: a producer may die at it, or with the jump
-- journaled but not published; the next producer or consumer carries on.
describe("regress: a producer killed in the middle of a put that jumps", function()
  for _, point in ipairs { "ring.put.jumped", "ring.put.journaled", "ring.put.counted" } do
    it("leaves every other item in order, and the ring going (" .. point .. ")", function()
      local r = H.run_script(string.format([[
        local core = require "mp.core"
        local item = string.rep("x", 1000)
        -- The consumer 10 items behind past the first MiB, stopped before the wrap
        -- point; a child then puts on until its put jumps (where depends on the
        -- records' size: the first stop where it does).
        local function attempt(stop, fault)
          local q = mp.Queue()
          local got = 0
          for i = 1, stop do
            q:put(i .. item)
            if i > 10 then got = got + 1; assert(q:get() == got .. item) end
          end
          local n = mp.Value("i", 0)
          local c = mp.Process{ target = function()
            core.fault_arm(fault)
            for i = stop + 1, stop + 3000 do q:put(i .. item); n.value = n.value + 1 end
          end }
          c:start(); c:join(10)
          return q, got, c.exitcode, n.value
        end
        local stop, q, got, code, n
        for s = 1020, 1050 do
          q, got, code, n = attempt(s, "ring.put.jumped")
          if code == -9 then stop = s break end
          q:close()
        end
        assert(stop, "no stop made the producer jump")
        if %q ~= "ring.put.jumped" then
          q:close()
          -- The same steps, killed later in the same put: its n+1-th.
          q, got, code = attempt(stop, %q .. "@" .. (n + 1))
        end
        q:put("after")                      -- takes the dead producer's lock over
        local last = stop + n
        local delivered = {}
        while not q:empty() do
          local v = q:get_nowait()
          if v == "after" then delivered[#delivered + 1] = v
          else
            got = got + 1
            assert(v == got .. item, "item " .. got .. ": " .. v:sub(1, 8))
          end
        end
        q:put("next")
        print(code, got - last, delivered[1], q:get_nowait(), q:qsize())
      ]], point, point), { program = H.faults, timeout = 60 })
      assert.is_nil(r.signal, r.stderr)
      assert.equal(0, r.status, r.stdout .. r.stderr)
      -- Killed before its journal, the jumping put left nothing; after it, its
      -- item arrives (rolled forward by the next producer), before "after".
      local extra = point == "ring.put.jumped" and 0 or 1
      assert.equal(string.format("-9\t%d\tafter\tnext\t0\n", extra), r.stdout)
    end)
  end
end)

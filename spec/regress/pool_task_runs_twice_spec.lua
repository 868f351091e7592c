--[[
Regression: a pool task could run twice. A worker that was delayed for more
than a wait slice (0.1 s) between taking a task message from the socket and
naming its batch in its slot looked idle to the parent, which then sent the
batch again: both copies ran ("times each task ran: 1 2 1 1 ...").

The window is a few instructions wide; the test build's fault point
`pool_take` (src/engine/fault.h) stalls every worker there for 0.3 s, so each
batch passes through it. A worker killed in that window made the old code run
its task twice as well (the batch had already been resent). Both fail on the
code before the fix (29f1e88 with the fault point added there).
]]
local H = require "helper"

local faults = os.getenv("MPLUA_FAULTS_BUILD")

-- Every take of a worker stalls (a fault point acts at one hit: one entry per hit;
-- each worker takes at most 6 batches of the 12 tasks, and fault.c keeps 8 points).
local STALL_EVERY_TAKE = {}
for hit = 1, 8 do STALL_EVERY_TAKE[hit] = "pool_take@" .. hit .. "=delay:0.3" end
STALL_EVERY_TAKE = table.concat(STALL_EVERY_TAKE, ",")

describe("regress: a pool task", function()
  it("runs once when a worker stalls between taking its batch and claiming it", function()
    assert(faults, "MPLUA_FAULTS_BUILD is not set: run the specs with scripts/test")
    local r = H.run_script([[
      local n = 12
      COUNTS = mp.Array("i", n)              -- globals: inherited by the workers
      local pool <close> = mp.Pool(2)
      local res = pool:map(function(x)
        local lock = COUNTS:get_lock()
        lock:acquire()
        COUNTS[x] = COUNTS[x] + 1
        lock:release()
        return x * 10
      end, (function() local t = {} for i = 1, n do t[i] = i end return t end)(), 1)
      for i = 1, n do assert(res[i] == i * 10, "result " .. i) end
      pool:close()
      pool:join()
      print("times each task ran: " .. table.concat(COUNTS:tolist(), " "))
    ]], { program = faults .. "/mplua", env = { MPLUA_FAULT = STALL_EVERY_TAKE }, timeout = 30 })
    assert.equal(0, r.status, r.stderr)
    assert.equal("times each task ran: 1 1 1 1 1 1 1 1 1 1 1 1\n", r.stdout)
  end)

  it("runs once when its worker is killed between taking the batch and claiming it", function()
    assert(faults, "MPLUA_FAULTS_BUILD is not set: run the specs with scripts/test")
    local r = H.run_script([[
      COUNTS = mp.Array("i", 1)
      local pool <close> = mp.Pool(1)
      local worker = mp.active_children()[1]
      local ar = pool:apply_async(function()
        local lock = COUNTS:get_lock()
        lock:acquire(); COUNTS[1] = COUNTS[1] + 1; lock:release()
        return "done"
      end)
      -- Wait until the worker sleeps at the fault point (it has taken the message).
      local deadline = mp.time() + 10
      while true do
        local f = io.open("/proc/" .. worker.pid .. "/syscall")
        local nr = f and f:read("n"); if f then f:close() end
        if nr == 35 or nr == 230 then break end          -- nanosleep, clock_nanosleep
        assert(mp.time() < deadline, "the worker never reached the fault point")
        mp.sleep(0.001)
      end
      worker:kill()
      print(ar:get(20), "ran " .. COUNTS[1] .. " time(s)")
    ]], { program = faults .. "/mplua", env = { MPLUA_FAULT = "pool_take=delay:0.5" }, timeout = 30 })
    assert.equal(0, r.status, r.stderr)
    assert.equal("done\tran 1 time(s)\n", r.stdout)
  end)
end)

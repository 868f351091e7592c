-- A Barrier(2) releases two processes together while a Lock serializes their prints; two more run without it (tutorial: test_with_barrier and test_without_barrier).
-- Run: mplua examples/sync_barrier.lua
local function test_with_barrier(synchronizer, serializer)
  local name = mp.current_process().name
  synchronizer:wait()                     -- both with_barrier processes pass at once
  local now = mp.time()
  local _ <close> = serializer:hold()     -- one line at a time
  print(string.format("process %s ----> %.6f", name, now))
  io.stdout:flush()
end

local function test_without_barrier()
  local name = mp.current_process().name
  local now = mp.time()
  print(string.format("process %s ----> %.6f", name, now))
end

local synchronizer = mp.Barrier(2)
local serializer = mp.Lock()
local ps = {
  mp.Process{ name = "p1 - test_with_barrier", target = test_with_barrier, args = { synchronizer, serializer } },
  mp.Process{ name = "p2 - test_with_barrier", target = test_with_barrier, args = { synchronizer, serializer } },
  mp.Process{ name = "p3 - test_without_barrier", target = test_without_barrier },
  mp.Process{ name = "p4 - test_without_barrier", target = test_without_barrier },
}
for _, p in ipairs(ps) do p:start() end
for _, p in ipairs(ps) do p:join() end
-- (mp.time() is one monotonic clock for all processes: p1's and p2's times are close.)

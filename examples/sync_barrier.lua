-- A Barrier: three processes wait for each other, then go on together.
-- Run: mplua examples/sync_barrier.lua
local barrier = mp.Barrier(3, function() print("all three arrived") io.stdout:flush() end)

local function worker(i)
  mp.sleep(0.02 * i)
  print("worker " .. i .. " arrives")
  io.stdout:flush()
  local index = barrier:wait(10)
  print(string.format("worker %d passes (arrival index %d)", i, index))
end

local ps = {}
for i = 1, 3 do
  ps[i] = mp.Process{ target = worker, args = { i } }
  ps[i]:start()
end
for _, p in ipairs(ps) do p:join() end

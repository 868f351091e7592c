-- A Lock keeps the lines printed by several processes whole.
-- Run: mplua examples/sync_lock.lua
local function report(lock, i)
  lock:with(function()
    io.write("process ", i, " holds the lock")
    io.write(" (pid ", mp.getpid(), ")\n")
    io.stdout:flush()
  end)
end

local lock = mp.Lock()
local ps = {}
for i = 1, 4 do
  ps[i] = mp.Process{ target = report, args = { lock, i } }
  ps[i]:start()
end
for _, p in ipairs(ps) do p:join() end
print("all done")

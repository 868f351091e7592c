-- Twenty processes print under one Lock, each line written whole (tutorial: twenty processes printing under one lock).
-- Run: mplua examples/sync_lock_twenty.lua   (compare sync_nolock_twenty.lua)
local function printer(lock, i)
  local _ <close> = lock:hold()          -- Python: with lock:
  -- The line goes out in three writes; nobody else writes while the lock is held.
  io.write("process ", i); io.stdout:flush()
  io.write(" (pid ", mp.getpid(), ")"); io.stdout:flush()
  io.write(" says hello\n"); io.stdout:flush()
end

local lock = mp.Lock()
local ps = {}
for i = 1, 20 do
  ps[i] = mp.Process{ target = printer, args = { lock, i } }
  ps[i]:start()
end
for _, p in ipairs(ps) do p:join() end
print("all 20 processes printed")

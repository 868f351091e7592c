-- A Lock keeps the lines printed by several processes whole (tutorial: synchronization between processes, l.acquire() ... l.release()).
-- Run: mplua examples/sync_lock.lua
local function f(l, i)
  l:acquire()
  -- Python's try/finally: lock:with(fn) or `local _ <close> = l:hold()` release on error too.
  io.write("hello world ", i, "\n")
  io.stdout:flush()
  l:release()
end

local lock = mp.Lock()
local ps = {}
for num = 1, 10 do
  ps[num] = mp.Process{ target = f, args = { lock, num } }
  ps[num]:start()
end
for _, p in ipairs(ps) do p:join() end

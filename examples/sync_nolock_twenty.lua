-- The same twenty processes without the Lock: their writes may interleave mid-line (tutorial: the unlocked version).
-- Run: mplua examples/sync_nolock_twenty.lua   (compare sync_lock_twenty.lua)
local function printer(i)
  -- Three writes per line, as in sync_lock_twenty.lua; another process may write
  -- between any two of them, so a line can come out cut by another one's words.
  io.write("process ", i); io.stdout:flush()
  io.write(" (pid ", mp.getpid(), ")"); io.stdout:flush()
  io.write(" says hello\n"); io.stdout:flush()
end

local ps = {}
for i = 1, 20 do
  ps[i] = mp.Process{ target = printer, args = { i } }
  ps[i]:start()
end
for _, p in ipairs(ps) do p:join() end
print("all 20 processes printed")

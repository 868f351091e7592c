-- join() waits for each child; the workers run side by side (tutorial: starting several processes, then joining them all).
-- Run: mplua examples/process_join.lua [seconds]   (each worker n sleeps n * seconds, default 0.1)
local unit = tonumber(arg[1]) or 0.1

local function work(n)
  print("worker " .. n .. " starting")
  mp.sleep(unit * n)
  print("worker " .. n .. " done")
end

local t0 = mp.time()
local procs = {}
for n = 1, 3 do
  procs[n] = mp.Process{ target = work, args = { n } }
  procs[n]:start()
end
for _, p in ipairs(procs) do p:join() end
-- Side by side, the three take as long as the longest one (3 units), not 1 + 2 + 3.
print(string.format("all workers joined after %.2f s", mp.time() - t0))

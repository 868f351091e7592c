-- join() waits for the child; without it the parent runs ahead (the parent still
-- waits for non-daemon children when it exits).
local function work(n)
  print("worker " .. n .. " starting")
  mp.sleep(0.2 * n)
  print("worker " .. n .. " done")
end

local procs = {}
for n = 1, 3 do
  procs[n] = mp.Process{ target = work, args = { n } }
  procs[n]:start()
end
for _, p in ipairs(procs) do p:join() end
print("all workers joined")

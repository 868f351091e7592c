-- Pool tasks write their results into a Manager dict, under a Manager Lock:
-- eight named parameter ranges, each summed by a task, with timing.
-- (The tutorial's apply_async example, with the results shared through a Manager.)
-- Run: mplua examples/manager_pool_dict_lock.lua [scale]
local scale = tonumber(arg and arg[1]) or 1

local function work(name, first, last, results, lock)
  local s = 0.0
  for i = first, last do s = s + math.sin(i) * math.cos(i) end
  local _ <close> = lock:hold()          -- one writer at a time, across processes
  results[name] = string.format("%.6f", s)
  results.done = (results.done or 0) + 1
end

local ranges = {
  { "alpha", 1, 100000 }, { "beta", 100001, 200000 }, { "gamma", 200001, 300000 },
  { "delta", 300001, 400000 }, { "epsilon", 400001, 500000 }, { "zeta", 500001, 600000 },
  { "eta", 600001, 700000 }, { "theta", 700001, 800000 },
}

local mgr <close> = mp.Manager()
local results, lock = mgr:dict(), mgr:Lock()
local pool <close> = mp.Pool(4)
local t0 = mp.time()
local pending = {}
for i, r in ipairs(ranges) do
  pending[i] = pool:apply_async(work, { r[1], r[2] * scale, r[3] * scale, results, lock })
end
for _, ar in ipairs(pending) do ar:get(120) end
local elapsed = mp.time() - t0
pool:close()
pool:join()

for _, r in ipairs(ranges) do print(string.format("%-8s %s", r[1], results[r[1]])) end
print(string.format("%d tasks done in %.2f s", results.done, elapsed))

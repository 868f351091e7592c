-- cpu_count() and a Pool of that size (tutorial: how many CPUs, then a pool with one worker per CPU).
-- Run: mplua examples/pool_cpu_count.lua
local n = mp.cpu_count()
print("Number of CPUs: " .. n)

local pool <close> = mp.Pool(n)          -- the default size is mp.cpu_count() as well
local pids = pool:map(function() mp.sleep(0.05); return mp.getpid() end, { 1, 2, 3, 4, 5, 6, 7, 8 })
local distinct = {}
for _, pid in ipairs(pids) do distinct[pid] = true end
local workers = 0
for _ in pairs(distinct) do workers = workers + 1 end
print(string.format("8 tasks ran in %d worker processes (the pool has %d)", workers, n))
pool:close()
pool:join()

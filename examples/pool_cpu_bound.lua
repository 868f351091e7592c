-- Serial against parallel CPU work: 8 items of 2e6 iterations each.
-- Run: mplua examples/pool_cpu_bound.lua
local function work(_)
  local s = 0
  for _ = 1, 2e6 do
    s = s + math.sin(40) + math.cos(40)
  end
  return s
end

local items = { 1, 2, 3, 4, 5, 6, 7, 8 }

local t0 = mp.time()
for _, x in ipairs(items) do work(x) end
local serial = mp.time() - t0
print(string.format("serial:   %.2f s", serial))

local pool <close> = mp.Pool(mp.cpu_count())
t0 = mp.time()
pool:map(work, items)
local parallel = mp.time() - t0
print(string.format("parallel: %.2f s with %d processes (%.2fx)", parallel, mp.cpu_count(), serial / parallel))

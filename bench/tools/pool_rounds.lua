-- Best of five rounds of one pool workload in one process (bench/NOTES.md):
--   build/mplua bench/tools/pool_rounds.lua map1e6 | map1e5 | cs1 | apply
local what = arg[1]
local function range(n) local t = {} for i = 1, n do t[i] = i end return t end
local function square(x) return x * x end
local pool <close> = mp.Pool(2)
pool:map(square, range(1000))
local best = math.huge
for round = 1, 5 do
  local t0 = mp.time()
  if what == "map1e6" then local r = pool:map(square, range(1000000))
  elseif what == "map1e5" then local r = pool:map(square, range(100000))
  elseif what == "cs1" then local r = pool:map(square, range(10000), 1)
  else local rs = {} for i = 1, 10000 do rs[i] = pool:apply_async(square, { i }) end for i = 1, 10000 do rs[i]:get() end end
  local dt = mp.time() - t0
  if dt < best then best = dt end
end
print(what, string.format("%.4f us", best / (what == "map1e6" and 1e6 or what == "map1e5" and 1e5 or 1e4) * 1e6))

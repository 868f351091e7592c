--[[
One pool workload, for instruction counts of the parent (bench/NOTES.md):
  valgrind --tool=callgrind --child-silent-after-fork=yes build/mplua bench/tools/pool_count.lua WORKLOAD
WORKLOAD: none (pool start and warm-up only: subtract it), map1e6, map1e4cs1, apply1e4.
]]
local what = arg[1] or "none"
local function range(n) local t = {} for i = 1, n do t[i] = i end return t end
local function square(x) return x * x end
local pool <close> = mp.Pool(2)
pool:map(square, range(1000))
if what == "map1e6" then
  local r = pool:map(square, range(1000000)); assert(r[1000000] == 1e12)
elseif what == "map1e4cs1" then
  local r = pool:map(square, range(10000), 1); assert(r[10000] == 1e8)
elseif what == "apply1e4" then
  local rs = {}
  for i = 1, 10000 do rs[i] = pool:apply_async(square, { i }) end
  for i = 1, 10000 do assert(rs[i]:get() == i * i) end
elseif what ~= "none" then
  error("unknown workload " .. what)
end

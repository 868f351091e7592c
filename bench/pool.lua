-- Pool throughput and CPU-bound speedup; twin of bench/pool.py.
local function report(name, value, unit)
  io.write(string.format("%s\t%.4f\t%s\n", name, value, unit))
end

local function range(n)
  local t = {}
  for i = 1, n do t[i] = i end
  return t
end

local function square(x) return x * x end

local pool <close> = mp.Pool(2)
pool:map(square, range(1000))          -- warm up: workers started, function cached

for _, case in ipairs { { "1e5", 100000 }, { "1e6", 1000000 } } do
  local label, n = case[1], case[2]
  local xs = range(n)
  local t0 = mp.time()
  local r = pool:map(square, xs)
  local dt = mp.time() - t0
  assert(r[n] == n * n)
  report("map x*x " .. label .. " ints, default chunksize", dt / n * 1e6, "us/item")
end

do
  local n = 1e4
  local xs = range(n)
  local t0 = mp.time()
  local r = pool:map(square, xs, 1)
  local dt = mp.time() - t0
  assert(r[n] == n * n)
  report("map x*x 1e4 ints, chunksize 1", dt / n * 1e6, "us/item")
end

do
  local n = 1e4
  local t0 = mp.time()
  local rs = {}
  for i = 1, n do rs[i] = pool:apply_async(square, { i }) end
  for i = 1, n do assert(rs[i]:get() == i * i) end
  local dt = mp.time() - t0
  report("apply_async 1e4 tiny tasks", dt / n * 1e6, "us/task")
end

-- How soon a callback runs while the parent blocks elsewhere (a binary whose
-- pool runs callbacks only in its own calls fires it at the next one).
for _, case in ipairs {
  { "mp.sleep(0.3)", function() mp.sleep(0.3) end },
  { "q:get(true, 0.3)", function() pcall(mp.Queue().get, mp.Queue(), true, 0.3) end },
} do
  local fired
  local t0 = mp.time()
  pool:apply_async(square, { 3 }, { callback = function() fired = fired or mp.time() end })
  case[2]()
  pool:apply(square, { 1 })
  report("callback latency during " .. case[1], (fired - t0) * 1000, "ms")
end

local function cpu(_)
  local s = 0
  for _ = 1, 2e6 do s = s + math.sin(40) + math.cos(40) end
  return s
end

local items = range(8)
local t0 = mp.time()
for i = 1, #items do cpu(items[i]) end
local serial = mp.time() - t0
report("cpu-bound 8x2e6 sin+cos, serial", serial, "s")
t0 = mp.time()
pool:map(cpu, items)
local parallel = mp.time() - t0
report("cpu-bound 8x2e6 sin+cos, Pool(2)", parallel, "s")
report("cpu-bound Pool(2) time / serial time", parallel / serial, "ratio")

--[[
The Pool over MPI ranks; twin of bench/mpi4py_futures.py. Needs mpirun:
bench/mpi-run runs it (mpirun --oversubscribe -n 3: rank 0 and 2 worker
ranks), the mpi4py twin and, with MPLUA_BENCH_LOCAL=1, the same workloads on
a local mp.Pool(2) (the same core count) in one table.
]]
local function report(name, value, unit)
  io.write(string.format("%s\t%.4f\t%s\n", name, value, unit))
end

local function range(n)
  local t = {}
  for i = 1, n do t[i] = i end
  return t
end

local function square(x) return x * x end

local mpi = os.getenv("MPLUA_BENCH_LOCAL") == nil and require "mp.mpi"
local pool <close> = mpi and mpi.Pool() or mp.Pool(2)
pool:map(square, range(1000))          -- warm up: workers started, function cached

do
  local n = 10000
  local xs = range(n)
  local t0 = mp.time()
  local r = pool:map(square, xs, 1)
  local dt = mp.time() - t0
  assert(r[n] == n * n)
  report("map x*x 1e4 ints, chunksize 1", dt / n * 1e6, "us/item")
end

do
  local n = 1000000
  local xs = range(n)
  local t0 = mp.time()
  local r = pool:map(square, xs, 10000)
  local dt = mp.time() - t0
  assert(r[n] == n * n)
  report("map x*x 1e6 ints, chunksize 10000", dt / n * 1e6, "us/item")
end

do
  local n = 2000
  local t0 = mp.time()
  for i = 1, n do
    assert(pool:apply_async(square, { i }):get() == i * i)
  end
  local dt = mp.time() - t0
  report("submit + result, one at a time (2000)", dt / n * 1e6, "us/task")
end
pool:close()
pool:join()

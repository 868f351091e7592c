-- Process start+join of a trivial target; twin of bench/process.py.
local N = tonumber(arg[1]) or 300

local function noop() end

local function report(name, seconds, n)
  io.write(string.format("%s\t%.4f\tms/process\n", name, seconds / n * 1e3))
end

-- Warm up (first fork pays for page-table setup and the atexit registration).
for _ = 1, 10 do local p = mp.Process(noop); p:start(); p:join() end

local t0 = mp.time()
for _ = 1, N do
  local p = mp.Process(noop)
  p:start()
  p:join()
end
report("process start+join, sequential", mp.time() - t0, N)

t0 = mp.time()
local ps = {}
for i = 1, 100 do ps[i] = mp.Process(noop); ps[i]:start() end
for i = 1, 100 do ps[i]:join() end
report("process start 100 then join 100", mp.time() - t0, 100)

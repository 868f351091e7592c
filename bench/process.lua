-- Process start+join of a trivial target; twin of bench/process.py.
-- The floor beside it: a raw fork+_exit+wait loop in the same Lua (luaposix),
-- rounds interleaved with mp's, best round of each (the machine is shared).
local N = tonumber(arg[1]) or 200
local ROUNDS = tonumber(arg[2]) or 7

local function noop() end

local function report(name, value, unit)
  io.write(string.format("%s\t%.4f\t%s\n", name, value, unit))
end

local ok, unistd = pcall(require, "posix.unistd")
local wait = ok and require "posix.sys.wait"

local function mp_round()
  local t0 = mp.time()
  for _ = 1, N do
    local p = mp.Process(noop)
    p:start()
    p:join()
  end
  return (mp.time() - t0) / N * 1e3
end

local function raw_round()
  local fork, _exit, waitpid = unistd.fork, unistd._exit, wait.wait
  local t0 = mp.time()
  for _ = 1, N do
    local pid = fork()
    if pid == 0 then _exit(0) end
    waitpid(pid)
  end
  return (mp.time() - t0) / N * 1e3
end

-- Warm up (first fork pays for page-table setup and the atexit registration).
for _ = 1, 10 do local p = mp.Process(noop); p:start(); p:join() end

local best, best_raw = math.huge, math.huge
for _ = 1, ROUNDS do
  best = math.min(best, mp_round())
  if unistd then best_raw = math.min(best_raw, raw_round()) end
end
report("process start+join, sequential", best, "ms/process")
if unistd then
  report("raw fork+_exit+wait, same language", best_raw, "ms/process")
  report("start+join / raw fork (goal <= 1.1)", best / best_raw, "x")
end

local t0 = mp.time()
local ps = {}
for i = 1, 100 do ps[i] = mp.Process(noop); ps[i]:start() end
for i = 1, 100 do ps[i]:join() end
report("process start 100 then join 100", (mp.time() - t0) / 100 * 1e3, "ms/process")

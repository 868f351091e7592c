-- The sin/cos task over a Pool of cpu_count() workers, timed against one process (tutorial: the pool timing).
-- Run: mplua examples/sincos_pool.lua [iterations]   (per chunk, default 2e6; four chunks)
local n = math.tointeger(tonumber(arg[1])) or 2000000

local function task(c)
  local s = 0.0
  for i = c * n + 1, (c + 1) * n do
    s = s + math.sin(i) ^ 2 + math.cos(i) ^ 2
  end
  return s
end

local chunks = { 0, 1, 2, 3 }

local t0 = mp.time()
local serial = 0.0
for _, c in ipairs(chunks) do serial = serial + task(c) end
local t_serial = mp.time() - t0
print(string.format("serial:   sum = %.3f in %.2f s", serial, t_serial))

local pool <close> = mp.Pool(mp.cpu_count())
t0 = mp.time()
local sum = 0.0
for _, s in ipairs(pool:map(task, chunks, 1)) do sum = sum + s end   -- chunksize 1: one chunk per task
local t_pool = mp.time() - t0
print(string.format("parallel: sum = %.3f in %.2f s with %d processes (%.2fx)",
  sum, t_pool, mp.cpu_count(), t_serial / t_pool))

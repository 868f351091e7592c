-- The sin/cos task split between two processes, timed (tutorial: the two-process timing).
-- Run: mplua examples/sincos_two_processes.lua [iterations]   (per chunk, default 2e6; four chunks)
local n = math.tointeger(tonumber(arg[1])) or 2000000

local function task(first, count)
  local s = 0.0
  for i = first, first + count - 1 do
    s = s + math.sin(i) ^ 2 + math.cos(i) ^ 2
  end
  return s
end

-- Each process does two of the four chunks and adds its part to a shared Value.
local function half(chunks, total)
  local s = 0.0
  for _, c in ipairs(chunks) do s = s + task(c * n + 1, n) end
  total:get_lock():with(function() total.value = total.value + s end)
end

local t0 = mp.time()
local total = mp.Value("d", 0)
local p1 = mp.Process{ target = half, args = { { 0, 1 }, total } }
local p2 = mp.Process{ target = half, args = { { 2, 3 }, total } }
p1:start(); p2:start()
p1:join(); p2:join()
print(string.format("two processes: sum = %.3f in %.2f s", total.value, mp.time() - t0))

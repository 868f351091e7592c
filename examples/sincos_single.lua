-- The sin/cos task run in a single process, timed (tutorial: the single-process timing).
-- Run: mplua examples/sincos_single.lua [iterations]   (per chunk, default 2e6; four chunks)
local n = math.tointeger(tonumber(arg[1])) or 2000000

-- sin(x)^2 + cos(x)^2 is 1, so a chunk sums to n (up to rounding).
local function task(first, count)
  local s = 0.0
  for i = first, first + count - 1 do
    s = s + math.sin(i) ^ 2 + math.cos(i) ^ 2
  end
  return s
end

local t0 = mp.time()
local sum = 0.0
for c = 0, 3 do sum = sum + task(c * n + 1, n) end
print(string.format("single process: sum = %.3f in %.2f s", sum, mp.time() - t0))

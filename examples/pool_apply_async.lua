-- apply_async over eight named parameter ranges, with timing (tutorial: apply_async over named parameter ranges).
-- Run: mplua examples/pool_apply_async.lua [scale]   (each range spans 25000 * scale numbers; default 1)
local scale = tonumber(arg[1]) or 1
local width = math.max(1, math.floor(25000 * scale))

-- Counts the primes in first..last (trial division: CPU work for the workers).
local function count_primes(name, first, last)
  local count = 0
  for n = math.max(first, 2), last do
    local prime = true
    for d = 2, math.floor(math.sqrt(n)) do
      if n % d == 0 then prime = false; break end
    end
    if prime then count = count + 1 end
  end
  return name, count, mp.getpid()
end

local names = { "alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta" }
local t0 = mp.time()
local pool <close> = mp.Pool()
local pending = {}
for i, name in ipairs(names) do
  local first, last = (i - 1) * width + 1, i * width
  pending[i] = pool:apply_async(count_primes, { name, first, last })
end

local total = 0
for i, ar in ipairs(pending) do
  local name, count, pid = ar:get()      -- every result of the task, in order
  total = total + count
  print(string.format("%-8s %7d..%-7d %6d primes (worker %d)", name,
    (i - 1) * width + 1, i * width, count, pid))
end
pool:close()
pool:join()
print(string.format("%d primes below %d, in %.2f s", total, #names * width + 1, mp.time() - t0))

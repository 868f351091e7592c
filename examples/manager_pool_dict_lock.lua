-- Pool tasks over eight named parameter ranges write a Manager dict under a Manager Lock, with timing (tutorial: apply_async with a Manager dict and Lock).
-- Run: mplua examples/manager_pool_dict_lock.lua [scale]   (each range spans 25000 * scale numbers; default 1)
local scale = tonumber(arg[1]) or 1
local width = math.max(1, math.floor(25000 * scale))

-- Counts the primes in first..last and records the count in the shared dict.
local function count_primes(results, lock, name, first, last)
  local count = 0
  for n = math.max(first, 2), last do
    local prime = true
    for d = 2, math.floor(math.sqrt(n)) do
      if n % d == 0 then prime = false; break end
    end
    if prime then count = count + 1 end
  end
  local _ <close> = lock:hold()        -- Python: with lock:
  results[name] = count                -- one write: safe without the lock
  -- A read-modify-write: without the lock two tasks could read the same old value.
  results.tasks_done = (results.tasks_done or 0) + 1
end

local names = { "alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta" }
local t0 = mp.time()
local mgr <close> = mp.Manager()       -- a server process that owns the dict and the lock
local results, lock = mgr:dict(), mgr:Lock()
local pool <close> = mp.Pool()
-- Proxies travel to pool workers as arguments (mp.Lock and mp.Value cannot:
-- they are inherited at fork, and the workers were forked before them).
local pending = {}
for i, name in ipairs(names) do
  pending[i] = pool:apply_async(count_primes, { results, lock, name, (i - 1) * width + 1, i * width })
end
for _, ar in ipairs(pending) do ar:get() end   -- raises if a task failed
pool:close()
pool:join()

local total = 0
for i, name in ipairs(names) do
  total = total + results[name]
  print(string.format("%-8s %7d..%-7d %6d primes", name, (i - 1) * width + 1, i * width, results[name]))
end
print(string.format("tasks done: %d", results.tasks_done))
print(string.format("%d primes below %d, in %.2f s", total, #names * width + 1, mp.time() - t0))

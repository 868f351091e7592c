-- Locks and shared values; twin of bench/sync.py (same workload names).
local function report(name, value, unit)
  io.write(string.format("%s\t%.4g\t%s\n", name, value, unit))
end

-- Best of a few rounds: the machine is shared, the minimum is the cost.
local function best_of(rounds, fn)
  local best = math.huge
  for _ = 1, rounds do best = math.min(best, fn()) end
  return best
end

local N = 1000000
local lock = mp.Lock()
report("lock acquire+release, uncontended", best_of(10, function()
  local t0 = mp.time()
  for _ = 1, N do lock:acquire(); lock:release() end
  return (mp.time() - t0) / N * 1e9
end), "ns/pair")

report("lock acquire+release, methods in locals", best_of(10, function()
  local acquire, release = lock.acquire, lock.release
  local t0 = mp.time()
  for _ = 1, N do acquire(lock); release(lock) end
  return (mp.time() - t0) / N * 1e9
end), "ns/pair")

-- The floor for any method pair: two calls of a trivial C method (no lock, no check).
report("two calls of a trivial C method (str:len()), the floor", best_of(10, function()
  local str = "x"
  local t0 = mp.time()
  for _ = 1, N do str:len(); str:len() end
  return (mp.time() - t0) / N * 1e9
end), "ns/pair")

local rlock = mp.RLock()
report("rlock acquire+release, uncontended", best_of(10, function()
  local t0 = mp.time()
  for _ = 1, N do rlock:acquire(); rlock:release() end
  return (mp.time() - t0) / N * 1e9
end), "ns/pair")

local sem = mp.Semaphore(1)
report("semaphore acquire+release, uncontended", best_of(10, function()
  local t0 = mp.time()
  for _ = 1, N do sem:acquire(); sem:release() end
  return (mp.time() - t0) / N * 1e9
end), "ns/pair")

local v = mp.Value("i", 0)
local vlock = v:get_lock()
report("value increment under its lock, 1e6", best_of(3, function()
  local t0 = mp.time()
  for _ = 1, N do vlock:acquire(); v.value = v.value + 1; vlock:release() end
  return (mp.time() - t0) / N * 1e9
end), "ns/op")

report("value atomic add, 1e6", best_of(3, function()
  local t0 = mp.time()
  for _ = 1, N do v:add(1) end
  return (mp.time() - t0) / N * 1e9
end), "ns/op")

-- The same without the method lookup (Value's __index is a C function).
report("value atomic add via a local, 1e6", best_of(3, function()
  local add = v.add
  local t0 = mp.time()
  for _ = 1, N do add(v, 1) end
  return (mp.time() - t0) / N * 1e9
end), "ns/op")

report("create 10000 locks", best_of(3, function()
  local t0 = mp.time()
  local locks = {}
  for i = 1, 10000 do locks[i] = mp.Lock() end
  local us = (mp.time() - t0) / 10000 * 1e6
  locks = nil
  collectgarbage()
  return us
end), "us/lock")

-- Two processes incrementing one Value, including start and join.
local function two_procs(n, body)
  local counter = mp.Value("i", 0)
  local t0 = mp.time()
  local ps = {}
  for i = 1, 2 do
    ps[i] = mp.Process{ target = body, args = { counter, n } }
    ps[i]:start()
  end
  for i = 1, 2 do ps[i]:join() end
  local ms = (mp.time() - t0) * 1e3
  assert(counter.value == 2 * n, "lost increments: " .. counter.value)
  return ms
end

local function locked(counter, n)
  local lk = counter:get_lock()
  for _ = 1, n do lk:acquire(); counter.value = counter.value + 1; lk:release() end
end

local function atomic(counter, n)
  for _ = 1, n do counter:add(1) end
end

report("2 procs x 1e4 locked increments (start+join)", best_of(10, function() return two_procs(10000, locked) end), "ms")
report("2 procs x 1e5 locked increments (start+join)", best_of(3, function() return two_procs(100000, locked) end), "ms")
report("2 procs x 1e5 atomic adds (start+join)", best_of(3, function() return two_procs(100000, atomic) end), "ms")

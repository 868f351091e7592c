-- Ten processes increment one Value under its own lock, get_lock() (tutorial: Value incremented under get_lock()).
-- Run: mplua examples/shared_value_get_lock.lua [increments]   (per process, default 1000)
local n = math.tointeger(tonumber(arg[1])) or 1000

local function increment(counter)
  for _ = 1, n do
    local _ <close> = counter:get_lock():hold()   -- Python: with counter.get_lock():
    counter.value = counter.value + 1             -- read-modify-write: needs the lock
  end
end

local counter = mp.Value("i", 0)
local ps = {}
for i = 1, 10 do
  ps[i] = mp.Process{ target = increment, args = { counter } }
  ps[i]:start()
end
for _, p in ipairs(ps) do p:join() end
print(string.format("counter = %d (10 processes x %d increments)", counter.value, n))

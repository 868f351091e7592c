-- An RLock is re-entered by the process that holds it (tutorial: RLock).
-- A function that takes the lock calls another one that takes it too.
-- Run: mplua examples/sync_rlock.lua
local function add_one(lock, counter)
  local _ <close> = lock:hold()
  counter.value = counter.value + 1
end

local function add_two(lock, counter)
  local _ <close> = lock:hold()       -- held here, and again inside add_one
  add_one(lock, counter)
  add_one(lock, counter)
end

local lock = mp.RLock()
local counter = mp.Value("i", 0, { lock = false })
local ps = {}
for i = 1, 3 do
  ps[i] = mp.Process{ target = function()
    for _ = 1, 100 do add_two(lock, counter) end
  end }
  ps[i]:start()
end
for _, p in ipairs(ps) do p:join() end
print("counter = " .. counter.value .. " (expected 600)")

-- A Condition over shared memory: a consumer waits until a producer has made each item (tutorial: Condition with notify and wait_for).
-- Run: mplua examples/sync_condition.lua
local cond = mp.Condition()
local items = mp.Array("i", 5)
local count = mp.Value("i", 0)

local function consumer()
  for n = 1, 5 do
    local _ <close> = cond:hold()
    cond:wait_for(function() return count.value >= n end)
    print("consumer got " .. items[n])
    io.stdout:flush()
  end
end

local function producer()
  for n = 1, 5 do
    mp.sleep(0.01)
    local _ <close> = cond:hold()
    items[n] = n * 10
    count.value = n
    print("producer made " .. items[n])
    io.stdout:flush()
    cond:notify()
  end
end

local c = mp.Process{ target = consumer }
local p = mp.Process{ target = producer }
c:start(); p:start()
c:join(); p:join()

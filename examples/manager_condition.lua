-- A Condition over a Manager list: a producer appends items and notifies, a
-- consumer waits for each one. Bounded: it ends after five items.
-- Run: mplua examples/manager_condition.lua
local mgr <close> = mp.Manager()
local cond = mgr:Condition()
local items = mgr:list()
local N = 5

local function consumer()
  for n = 1, N do
    local _ <close> = cond:hold()
    cond:wait_for(function() return #items >= n end, 10)
    print("consumer got " .. items[n])
    io.stdout:flush()
  end
end

local function producer()
  for n = 1, N do
    mp.sleep(0.01)
    local _ <close> = cond:hold()
    items:append(n * 10)
    print("producer made " .. n * 10)
    io.stdout:flush()
    cond:notify()
  end
end

local c = mp.Process{ target = consumer }
local p = mp.Process{ target = producer }
c:start(); p:start()
c:join(); p:join()
print("done: " .. tostring(items))

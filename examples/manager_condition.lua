-- A producer and a consumer share a Manager list guarded by a Condition, bounded so it ends (tutorial: Condition producer/consumer over a manager list).
-- Run: mplua examples/manager_condition.lua [items]   (default 10)
local items = math.tointeger(tonumber(arg[1])) or 10

local function producer(cond, shared)
  for i = 1, items do
    local _ <close> = cond:hold()
    shared:append(i)
    print("producer appended " .. i .. " (list length " .. #shared .. ")")
    cond:notify()                     -- wake the consumer if it waits
  end
end

local function consumer(cond, shared)
  -- The tutorial's consumer loops forever; this one stops after `items` items.
  for _ = 1, items do
    local _ <close> = cond:hold()
    cond:wait_for(function() return #shared > 0 end)   -- releases the lock while waiting
    local item = shared:pop(1)        -- the oldest item (Python: pop(0))
    print("consumer took " .. item)
  end
end

local mgr <close> = mp.Manager()
local shared = mgr:list()
local cond = mp.Condition()
local c = mp.Process{ target = consumer, args = { cond, shared } }
local p = mp.Process{ target = producer, args = { cond, shared } }
c:start(); p:start()
c:join(); p:join()
print("left in the list: " .. #shared)

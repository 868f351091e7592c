-- Queue producer and consumer stopping at a sentinel (tutorial: producer/consumer with a sentinel).
-- A producer puts work on a Queue and a consumer takes it until it sees the
-- sentinel (nil is a valid item, so the sentinel here is false).
-- Run: mplua examples/queue_producer_consumer.lua
local SENTINEL = false

local function producer(q)
  for i = 1, 5 do
    local item = { id = i, value = i * 10 }
    q:put(item)
    print(string.format("produced item %d", i))
  end
  q:put(SENTINEL)
end

local function consumer(q)
  while true do
    local item = q:get()
    if item == SENTINEL then break end
    print(string.format("consumed item %d with value %d", item.id, item.value))
  end
  print("consumer saw the sentinel and stops")
end

local q = mp.Queue()
local p = mp.Process{ target = producer, args = { q } }
local c = mp.Process{ target = consumer, args = { q } }
p:start(); c:start()
p:join(); c:join()

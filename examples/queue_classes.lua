-- Producer and Consumer Process subclasses over one Queue, with qsize() and empty() (tutorial: exchanging objects through a queue).
-- Run: mplua examples/queue_classes.lua [items]   (default 10)
local items = math.tointeger(tonumber(arg[1])) or 10

local Producer = mp.Process:extend("Producer")

function Producer:init(queue, done)
  mp.Process.init(self)
  self.queue, self.done = queue, done
end

function Producer:run()
  for _ = 1, items do
    local item = math.random(0, 256)
    self.queue:put(item)
    print(string.format("Process Producer : item %d appended to queue %s", item, self.name))
    print(string.format("The size of queue is %d", self.queue:qsize()))
  end
  self.done:set()               -- after the last put
end

local Consumer = mp.Process:extend("Consumer")

function Consumer:init(queue, done)
  mp.Process.init(self)
  self.queue, self.done = queue, done
end

function Consumer:run()
  while true do
    -- A get that waits at most 0.1 s: a blocking get could wait for an item that
    -- never comes, if the producer's last item was already taken.
    local ok, item = pcall(self.queue.get, self.queue, 0.1)
    if ok then
      print(string.format("Process Consumer : item %d popped by %s", item, self.name))
    elseif not mp.Empty:is(item) then
      error(item, 0)
    -- Done first, then empty: when both hold, every item was put before the check
    -- and none is left. (The tutorial stops at the first empty() it sees, which
    -- may come before the producer's first put.)
    elseif self.done:is_set() and self.queue:empty() then
      print("the queue is empty")
      break
    end
  end
end

local queue, done = mp.Queue(), mp.Event()
local producer, consumer = Producer(queue, done), Consumer(queue, done)
producer:start()
consumer:start()
producer:join()
consumer:join()

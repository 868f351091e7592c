-- An Event: processes wait until another one sets it.
-- Run: mplua examples/sync_event.lua
local function waiter(event, i)
  print("waiter " .. i .. " waits")
  io.stdout:flush()
  event:wait()
  print("waiter " .. i .. " saw the event")
end

local event = mp.Event()
local ps = {}
for i = 1, 3 do
  ps[i] = mp.Process{ target = waiter, args = { event, i } }
  ps[i]:start()
end
mp.sleep(0.1)
print("main sets the event")
io.stdout:flush()
event:set()
for _, p in ipairs(ps) do p:join() end
print("is_set: " .. tostring(event:is_set()))
print("wait with a timeout on a cleared event: " .. tostring((function() event:clear(); return event:wait(0.1) end)()))

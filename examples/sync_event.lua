-- An Event waited for without a timeout and with one that expires first (tutorial: wait_for_event and wait_for_event_timeout).
-- Run: mplua examples/sync_event.lua
io.stdout:setvbuf("line")

local function wait_for_event(e)
  print("wait_for_event: starting")
  e:wait()                                -- blocks until the event is set
  print("wait_for_event: e:is_set() -> " .. tostring(e:is_set()))
end

local function wait_for_event_timeout(e, t)
  print("wait_for_event_timeout: starting")
  local set = e:wait(t)                   -- false when the timeout expired first
  print("wait_for_event_timeout: e:wait(" .. t .. ") -> " .. tostring(set) ..
        ", e:is_set() -> " .. tostring(e:is_set()))
end

local e = mp.Event()
local w1 = mp.Process{ name = "block", target = wait_for_event, args = { e } }
local w2 = mp.Process{ name = "nonblock", target = wait_for_event_timeout, args = { e, 0.2 } }
w1:start()
w2:start()
w2:join()                                 -- its timeout expires; the event is still clear
print("main: calling e:set()")
e:set()
w1:join()
print("main: both waiters ended")

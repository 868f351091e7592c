-- A child handles SIGINT with a Lua handler and carries on, until the parent terminates it (tutorial: the child catching KeyboardInterrupt).
-- Run: mplua examples/process_sigint.lua
io.stdout:setvbuf("line")
local ready, got_it = mp.Event(), mp.Event()

local function child()
  mp.signal("SIGINT", function()          -- Python: except KeyboardInterrupt
    print("child: got SIGINT, carrying on")
    got_it:set()
  end)
  ready:set()                             -- the handler is in place
  while true do mp.sleep(1) end           -- handlers run during mp's waits
end

local p = mp.Process{ target = child }
p:start()
ready:wait(10)
print("parent: sending SIGINT to the child")
mp.kill(p.pid, "SIGINT")
got_it:wait(10)
print("parent: the child is still alive: " .. tostring(p:is_alive()))
print("parent: terminating it")
p:terminate()                             -- SIGTERM has no handler: the child ends
p:join()
print("parent: child exit code " .. p.exitcode)

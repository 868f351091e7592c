-- A child handles SIGINT with a Lua handler and exits cleanly.
-- Run: mplua examples/process_sigint.lua
local ready = mp.Event()

local function child()
  mp.signal("SIGINT", function()
    print("child: got SIGINT, cleaning up")
    io.stdout:flush()
    os.exit(0)
  end)
  ready:set()                          -- the handler is in place
  mp.sleep(30)                         -- interrupted by the signal
  print("child: no signal came")
end

local p = mp.Process{ target = child }
p:start()
ready:wait(10)
print("parent: sending SIGINT to " .. p.pid)
io.stdout:flush()
mp.kill(p.pid, "SIGINT")
p:join()
print("parent: child exit code " .. p.exitcode)

-- A daemon process is terminated when the main process exits (tutorial: running a process in the background, daemon = true).
-- Run: mplua examples/process_daemon.lua
local started = mp.Event()

local function background()
  local name = mp.current_process().name
  print("Starting " .. name)
  for i = 0, 4 do print("---> " .. i) end
  io.stdout:flush()
  started:set()
  mp.sleep(60)                   -- never finishes: the main process exits first
  print("Exiting " .. name)      -- never printed
end

local p = mp.Process{ name = "background_process", target = background, daemon = true }
p:start()
started:wait(10)                 -- (so that its first lines are there before the end)
print(p.name .. " daemon: " .. tostring(p.daemon))
print("main process ends without joining it: the daemon is terminated")

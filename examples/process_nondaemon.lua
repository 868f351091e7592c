-- A non-daemon process is waited for when the main process exits, even without join (tutorial: the NO_background_process, daemon = false).
-- Run: mplua examples/process_nondaemon.lua
io.stdout:setvbuf("line")        -- each line written when printed, so the order shows
local main_done = mp.Event()

local function foreground()
  local name = mp.current_process().name
  print("Starting " .. name)
  for i = 5, 9 do print("---> " .. i) end
  main_done:wait()               -- still running when the main script reaches its end
  print("Exiting " .. name)
end

local p = mp.Process{ name = "NO_background_process", target = foreground, daemon = false }
p:start()
print(p.name .. " daemon: " .. tostring(p.daemon))
print("main script ends without joining it")
main_done:set()
-- No join: at its exit the main process waits for non-daemon children, as Python's does.

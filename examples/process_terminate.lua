-- terminate() with is_alive() before and after, and exit code -15 (tutorial: killing a process).
-- Run: mplua examples/process_terminate.lua
local function foo()
  print("Starting function")
  mp.sleep(10)
  print("Finished function")     -- never printed: terminated first
end

local p = mp.Process{ target = foo }
print("Process before execution:", tostring(p), p:is_alive())
p:start()
print("Process running:", tostring(p), p:is_alive())
p:terminate()                    -- SIGTERM; the process may not have ended yet
print("Process terminated:", tostring(p), p:is_alive())
p:join()
print("Process joined:", tostring(p), p:is_alive())
print("Process exit code:", p.exitcode)   -- -15: ended by signal 15 (SIGTERM)

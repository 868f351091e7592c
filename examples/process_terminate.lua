-- terminate() sends SIGTERM; the exit code of a process ended by a signal is -signum.
local function forever()
  while true do mp.sleep(1) end
end

local p = mp.Process{ target = forever }
p:start()
print("started", tostring(p), "alive:", p:is_alive())
p:terminate()
p:join()
print("terminated", tostring(p), "alive:", p:is_alive(), "exitcode:", p.exitcode)

local q = mp.Process{ target = function() os.exit(3) end }
q:start()
q:join()
print("os.exit(3) gives exitcode", q.exitcode)

local e = mp.Process{ target = function() error("something went wrong") end }
e:start()
e:join()
print("an uncaught error gives exitcode", e.exitcode, "(the traceback went to stderr)")

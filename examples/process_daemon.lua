-- A daemon process is terminated when the main process exits; a non-daemon one is
-- waited for.
local function daemon_work()
  print("daemon starts, would run for 60 s")
  mp.sleep(60)
  print("never printed")
end

local function normal_work()
  print("non-daemon starts")
  mp.sleep(0.3)
  print("non-daemon ends")
end

local d = mp.Process{ target = daemon_work, name = "daemon", daemon = true }
local n = mp.Process{ target = normal_work, name = "non-daemon" }
d:start()
n:start()
print(d.name, "daemon:", d.daemon, "|", n.name, "daemon:", n.daemon)
-- No join: at exit the daemon is terminated and the non-daemon joined.

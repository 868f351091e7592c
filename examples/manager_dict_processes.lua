-- Ten processes write into one Manager dict; the parent reads it back.
-- Run: mplua examples/manager_dict_processes.lua
local mgr <close> = mp.Manager()
local d = mgr:dict()

local function worker(i, shared)
  shared[i] = { pid = mp.getpid(), square = i * i }
end

local procs = {}
for i = 1, 10 do
  procs[i] = mp.Process{ target = worker, args = { i, d } }
  procs[i]:start()
end
for _, p in ipairs(procs) do p:join() end

print("entries: " .. #d)
for i = 1, 10 do print(string.format("%2d -> %3d", i, d[i].square)) end

--[[
One workload of issue 16's paths, run N times, for instruction counts:

  bench/tools/icount BUILD WORKLOAD N

runs it under callgrind for N and for 0 operations (startup cancels out) and
prints instructions per operation, the process and its children summed (a
child's instructions are in a callgrind file of its own).

Workloads:
  process  mp.Process(noop):start(); :join()            (parent and child)
  lock     lock:acquire(); lock:release()
  pipe     conn:send(i) and conn:recv(), in one process (batches of 100)
  queue    q:put(i) and q:get(), in one process (batches of 100)
]]
local what, n = arg[1], tonumber(arg[2])
local function noop() end
if what == "process" then
  for _ = 1, n do local p = mp.Process(noop); p:start(); p:join() end
elseif what == "lock" then
  local lock = mp.Lock()
  for _ = 1, n do lock:acquire(); lock:release() end
elseif what == "pipe" then
  local a, b = mp.Pipe()
  for i = 1, n, 100 do
    for j = i, i + 99 do a:send(j) end
    for j = i, i + 99 do assert(b:recv() == j) end
  end
elseif what == "queue" then
  local q = mp.Queue()
  for i = 1, n, 100 do
    for j = i, i + 99 do q:put(j) end
    for j = i, i + 99 do assert(q:get() == j) end
  end
else
  error("unknown workload " .. tostring(what))
end

-- What creating a Process object costs, and starting and joining one (tutorial: the cost of creating a Process).
-- Run: mplua examples/process_creation_cost.lua [count]   (default 1000 objects, a tenth of them started)
local count = math.tointeger(tonumber(arg[1])) or 1000

local function f() end

-- Creating the object only fills a table: no fork yet.
local t0 = mp.time()
local procs = {}
for i = 1, count do procs[i] = mp.Process{ target = f } end
local made = mp.time() - t0
print(string.format("created %d Process objects in %.4f s (%.2f us each)", count, made, made / count * 1e6))

-- start() forks; join() waits for the child and reaps it.
local started = math.max(1, count // 10)
t0 = mp.time()
for i = 1, started do
  procs[i]:start()
  procs[i]:join()
end
local ran = mp.time() - t0
print(string.format("started and joined %d of them in %.4f s (%.3f ms each)", started, ran, ran / started * 1e3))

-- A process pool running named tasks with apply_async and collecting results.
-- Run: mplua examples/pool_apply_async.lua
local function task(name, n)
  local s = 0
  for i = 1, n do s = s + i end
  return string.format("task %s summed 1..%d = %d in process %d", name, n, s, mp.getpid())
end

local pool <close> = mp.Pool(3)
local results = {}
for i, name in ipairs { "alpha", "beta", "gamma", "delta", "epsilon" } do
  results[i] = pool:apply_async(task, { name, i * 100000 }, {
    callback = function(msg) print("done: " .. msg) end,   -- runs in the parent
  })
end
for _, r in ipairs(results) do
  r:wait()
end
pool:close()
pool:join()
print("all tasks finished")

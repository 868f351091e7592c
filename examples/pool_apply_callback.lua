-- apply_async with a callback that collects each result in the parent (tutorial: apply_async with a callback).
-- Run: mplua examples/pool_apply_callback.lua
local function foo_pool(x)
  mp.sleep(0.01 * (x % 3))              -- some finish before others
  return x * x
end

local result_list = {}
local function log_result(result)
  -- Runs in the main process, during the pool's blocking calls (here, join).
  result_list[#result_list + 1] = result
end

local pool = mp.Pool()
for i = 0, 9 do
  pool:apply_async(foo_pool, { i }, { callback = log_result })   -- Python: callback=log_result
end
pool:close()
pool:join()
print("results in completion order: {" .. table.concat(result_list, ", ") .. "}")
table.sort(result_list)
print("sorted: {" .. table.concat(result_list, ", ") .. "}")

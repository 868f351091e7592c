-- Pool(4):map over 100 squares, then close() and join() (tutorial: the process pool of function_square).
-- Run: mplua examples/pool_map_close_join.lua
local function function_square(data)
  return data * data
end

local inputs = {}
for i = 0, 99 do inputs[#inputs + 1] = i end   -- Python's range(0, 100); Lua lists start at index 1

local pool = mp.Pool{ processes = 4 }          -- Python: Pool(processes=4); mp.Pool(4) too
local pool_outputs = pool:map(function_square, inputs)
pool:close()                                   -- no more tasks
pool:join()                                    -- wait for the workers to exit
print("Pool    : {" .. table.concat(pool_outputs, ", ") .. "}")

-- The same squares with Pool():map, each task printing the pid of the worker that runs it (tutorial: Pool with worker process ids).
-- Run: mplua examples/pool_squares.lua
local function square(n)
  print(string.format("Worker process id for %d: %d", n, mp.getpid()))
  return n * n
end

local mylist = { 1, 2, 3, 4, 5 }
local p = mp.Pool()                     -- one worker per CPU, mp.cpu_count()
local result = p:map(square, mylist)    -- in order, whichever worker ran each
print("{" .. table.concat(result, ", ") .. "}")
p:close()                               -- the workers end (and flush their output)
p:join()

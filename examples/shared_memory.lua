-- Named shared memory that a process which was not forked from this one attaches by name (beyond the tutorials: Python 3.8's shared_memory).
-- Here the other process is a second mplua started with io.popen.
-- Run: mplua examples/shared_memory.lua
local sm <close> = mp.SharedMemory{ create = true, size = 4 * 8 }
local a = mp.Array("q", 4, { shm = sm })        -- a typed view of the segment
for i = 1, 4 do a[i] = i * 100 end

local script = os.tmpname()
local f = assert(io.open(script, "w"))
f:write([[
  local sm <close> = mp.SharedMemory{ name = ... }
  local a = mp.Array("q", 4, { shm = sm })
  for i = 1, 4 do a[i] = a[i] + i end
  print("the other process saw " .. table.concat(a:tolist(), " "))
]])
f:close()
local first = -1                                 -- the interpreter is arg's lowest index
while arg[first - 1] do first = first - 1 end
local mplua = arg[first] or "mplua"
local p = assert(io.popen(string.format("%q %q %q", mplua, script, sm.name)))
io.write(p:read("a"))
p:close()
os.remove(script)

print("now " .. table.concat(a:tolist(), " "))
sm:unlink()                                      -- the name goes; the memory with the last close

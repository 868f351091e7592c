-- Start one process with an argument and wait for it (tutorial: the first Process program, f('bob')).
-- Run: mplua examples/process_hello.lua
local function greet(name)
  print(string.format("hello %s from process %d (parent %d)", name, mp.getpid(), mp.parent_process().pid))
end

local p = mp.Process{ target = greet, args = { "world" } }
p:start()
p:join()
print(string.format("%s finished with exit code %d", p.name, p.exitcode))

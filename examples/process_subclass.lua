-- Subclassing Process: run() overridden, default names MyProcess-N, current_process().pid (tutorial: the MyProcess subclass).
-- Run: mplua examples/process_subclass.lua [count]   (default 10 processes)
local count = math.tointeger(tonumber(arg[1])) or 10

local MyProcess = mp.Process:extend("MyProcess")

-- Optional: init(self, ...) receives what MyProcess(...) was called with.
function MyProcess:init(task)
  mp.Process.init(self)          -- keeps the default name, MyProcess-N
  self.task = task
end

function MyProcess:run()
  print(string.format("called run method in process %s (pid %d), task %d",
    self.name, mp.current_process().pid, self.task))
end

for i = 1, count do
  local p = MyProcess(i)
  p:start()
  p:join()
end

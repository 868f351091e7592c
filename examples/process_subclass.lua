-- Subclassing mp.Process: override run (and optionally init).
local Worker = mp.Process:extend("Worker")

function Worker:init(task)
  mp.Process.init(self)          -- default name Worker-N
  self.task = task
end

function Worker:run()
  print(string.format("%s (pid %d) runs %s", self.name, mp.getpid(), self.task))
end

local workers = {}
for i, task in ipairs { "download", "parse", "store" } do
  workers[i] = Worker(task)
  workers[i]:start()
end
for _, w in ipairs(workers) do w:join() end
for _, w in ipairs(workers) do print(tostring(w)) end

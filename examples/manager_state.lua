-- A state manager: a custom Manager type holds the state in its server process; workers that connect() by name update it (tutorial: the state-manager demo).
-- Workers update the state through its methods; the main process reads a
-- snapshot. It is published by name, so a process that did not inherit anything
-- (here: a connect() made in a worker) finds it.
-- Run: mplua examples/manager_state.lua
local StateManager = mp.BaseManager:extend("StateManager")
StateManager:register("State", function()
  return {
    counts = {},
    log = {},
    update = function(self, who, key, delta)
      self.counts[key] = (self.counts[key] or 0) + delta
      self.log[#self.log + 1] = string.format("%s %s%+d", who, key, delta)
      return self.counts[key]
    end,
    snapshot = function(self)
      return { counts = self.counts, events = #self.log }
    end,
  }
end)

local mgr <close> = StateManager()
local state = mgr:State()
mgr:publish("state", state)

local function worker(name, address, authkey)
  local other = StateManager.connect(address, authkey)
  local st = other:lookup("state")
  for i = 1, 3 do st:update(name, "visits", 1) end
  st:update(name, "errors", name == "w2" and 1 or 0)
end

local procs = {}
for i = 1, 4 do
  procs[i] = mp.Process{ target = worker, args = { "w" .. i, mgr.address, mgr.authkey } }
  procs[i]:start()
end
for _, p in ipairs(procs) do p:join() end

local snap = state:snapshot()
print("visits: " .. snap.counts.visits)
print("errors: " .. snap.counts.errors)
print("events: " .. snap.events)

-- Ten processes each write one key of a Manager dict (tutorial: managing state with mgr.dict() and ten workers).
-- Run: mplua examples/manager_dict_processes.lua
local function worker(dictionary, key, item)
  dictionary[key] = item
  print(string.format("key = %d value = %d", key, item))
end

local mgr <close> = mp.Manager()
local dictionary = mgr:dict()
local jobs = {}
for i = 0, 9 do
  jobs[#jobs + 1] = mp.Process{ target = worker, args = { dictionary, i, i * 2 } }
end
for _, j in ipairs(jobs) do j:start() end
for _, j in ipairs(jobs) do j:join() end

-- A dict has no order (it is a Lua table): list the keys sorted.
local keys = {}
for k in pairs(dictionary) do keys[#keys + 1] = k end
table.sort(keys)
local parts = {}
for _, k in ipairs(keys) do parts[#parts + 1] = k .. ": " .. dictionary[k] end
print("Results: {" .. table.concat(parts, ", ") .. "}")

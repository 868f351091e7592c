-- A Semaphore(2) lets at most two processes use a resource at a time (tutorial: Semaphore(2)).
-- Run: mplua examples/sync_semaphore.lua
local function use_resource(sem, inside, i)
  sem:with(function()
    local n = inside:add(1)
    print(string.format("process %d uses the resource (%d inside)", i, n))
    io.stdout:flush()
    mp.sleep(0.05)
    inside:add(-1)
  end)
end

local sem = mp.Semaphore(2)
local inside = mp.Value("i", 0)
local ps = {}
for i = 1, 5 do
  ps[i] = mp.Process{ target = use_resource, args = { sem, inside, i } }
  ps[i]:start()
end
for _, p in ipairs(ps) do p:join() end
print("all done")

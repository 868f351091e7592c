-- A Manager's server process holds a dict and a list that a child changes (Python's documentation: sharing state through a server process).
-- Run: mplua examples/manager_server_process.lua
local function f(d, l)
  d[1] = "1"
  d["2"] = 2
  d[0.25] = false                     -- Python stores None; in Lua, d[k] = nil deletes k
  l:reverse()
end

local manager <close> = mp.Manager()  -- Python: with Manager() as manager:
local d = manager:dict()
local l = manager:list{ 0, 1, 2, 3, 4, 5, 6, 7, 8, 9 }
local p = mp.Process{ target = f, args = { d, l } }
p:start()
p:join()

print(string.format("d[1] = %q, d[\"2\"] = %s, d[0.25] = %s, #d = %d", d[1], d["2"], tostring(d[0.25]), #d))
print("l = {" .. table.concat(l:copy(), ", ") .. "}")

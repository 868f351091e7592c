--[[
Every method and metamethod of every mp userdata class, called with a wrong
self (numbers, strings, tables, a foreign userdata, an object of another mp
class, nil): an error, never a crash. The walk runs in a subprocess so that a
crash fails this spec instead of killing the runner; it finds the classes by
walking their metatables, so a method added later is covered without being
listed here.
]]
local H = require "helper"

local walker = [==[
local mp = mp or require "mp"
local p = mp.Process{ target = function() end }
p:start(); p:join()
local pool = mp.Pool(1)
local a, b = mp.Pipe()
local shm = mp.SharedMemory{ create = true, size = 64 }
shm:unlink()   -- at once: a walk that fails (os.exit) leaves no /dev/shm entry
-- Objects of many classes, used as wrong selves for every other class.
local samples = {
  mp.Queue(), mp.SimpleQueue(), mp.JoinableQueue(), a, mp.Lock(), mp.RLock(), mp.Semaphore(),
  mp.BoundedSemaphore(), mp.Condition(), mp.Event(), mp.Value("i", 1), mp.Array("i", 3),
  mp.RawValue("d", 1), mp.RawArray("c", 4), rawget(p, "_handle"), shm,
}
for _, v in pairs(pool) do if type(v) == "userdata" then samples[#samples + 1] = v end end
-- Every userdata class mp registers (its metatable under an "mp." name), found,
-- not listed, so a class added later is walked too.
local classes = {}
for name, mt in pairs(debug.getregistry()) do
  if type(name) == "string" and name:find("^mp%.") and type(mt) == "table" and mt.__name == name then
    classes[name] = mt
  end
end
local function wrong_selves(mt)
  local list = { 42, 3.5, "str", {}, true, io.stdout, function() end, coroutine.create(print) }
  -- By class name: a Connection's metatable follows its state (open, closed...).
  for _, obj in ipairs(samples) do
    if getmetatable(obj).__name ~= mt.__name then list[#list + 1] = obj end
  end
  return list
end
-- Arguments after self: none, and some plausible ones (a method must fail on self first).
local argsets = { {}, { 1 }, { "value", 2 }, { 1, 2, 3 } }
local calls, errors, nclasses = 0, 0, 0
local function try(label, f, bad)
  for _, args in ipairs(argsets) do
    calls = calls + 1
    local ok = pcall(f, bad, table.unpack(args))
    if ok then
      io.write("no error: ", label, " with self ", type(bad), " args ", #args, "\n")
      os.exit(3)
    end
    errors = errors + 1
  end
end
for name, mt in pairs(classes) do
  nclasses = nclasses + 1
  local fns = {}
  for k, v in pairs(mt) do
    if type(v) == "function" then fns["metamethod " .. k] = { k, v } end
  end
  if type(mt.__index) == "table" then
    for k, v in pairs(mt.__index) do
      if type(v) == "function" then fns["method " .. k] = { k, v } end
    end
  end
  for label, entry in pairs(fns) do
    local k, f = entry[1], entry[2]
    for _, bad in ipairs(wrong_selves(mt)) do
      if k == "__index" then
        -- A method lookup needs no self (it may answer nil for an unknown key);
        -- a field that reads self must check it: no crash either way.
        for _, key in ipairs { "no_such_field", 1, "value", "closed" } do
          calls = calls + 1
          pcall(f, bad, key)
        end
      else
        try(name .. " " .. label, f, bad)
      end
    end
  end
end
pool:terminate()
shm:close()
print("ok", calls, errors, nclasses)
]==]

describe("every mp userdata method and metamethod", function()
  for _, interp in ipairs { "mplua", "lua5.4" } do
    it("raises on a wrong self instead of crashing (" .. interp .. ")", function()
      local r = H.run_script(walker, {
        program = interp == "mplua" and H.mplua or H.lua,
        env = { LUA_CPATH = H.build .. "/?.so;;",
                LD_PRELOAD = os.getenv("MPLUA_ASAN_PRELOAD") or "" },
        timeout = 60,
      })
      assert.is_nil(r.signal, "the walker died of signal " .. tostring(r.signal) .. "\n" .. r.stderr)
      assert.equal(0, r.status, r.stdout .. r.stderr)
      local calls, errors, nclasses = r.stdout:match("^ok\t(%d+)\t(%d+)\t(%d+)")
      assert.is_truthy(calls, r.stdout)
      assert.is_true(tonumber(errors) > 1000, "only " .. errors .. " erroring calls")
      assert.is_true(tonumber(nclasses) >= 18, "only " .. nclasses .. " classes found")
    end)
  end
end)

--[[
A Pool's cache of encoded task functions (lua/mp/pool.lua). A function is
encoded once (by its transport, tr:dumpfn) and gets a small id; workers cache
decoded functions by id, so a task names its function by id and carries its
bytes only when its worker may not have them.

  cache.byfn[fn] --> entry {id, bytes, snap}, while still valid (see entry)
]]
local check = require "mp.check"

local M = {}
local getupvalue = debug.getupvalue

function M.new(tr)
  return { tr = tr, byfn = setmetatable({}, { __mode = "k" }), ids = {}, n = 0 }
end

-- Upvalues that may change between calls make the cached encoding stale.
local function same_upvalues(fn, snap)
  for i = 1, snap.n do
    local name, v = getupvalue(fn, i)
    if name ~= "_ENV" and v ~= snap[i] then return false end
  end
  return true
end

--[[
fn --> its entry {id, bytes}; reused while its scalar upvalues are unchanged
(snap: their values when encoded). A function with a table, function or
userdata upvalue could change unseen: it is encoded at each call, so a task
always sees what its upvalues held when it was submitted. One that carries
mp objects (a Queue as an upvalue...) is encoded with each task, its objects'
fds along: its entry is {id = 0, bytes = fn}.
]]
local function entry(c, fn)
  local e = c.byfn[fn]
  if e and (e.snap == nil or same_upvalues(fn, e.snap)) then return e end
  local bytes, why = c.tr:dumpfn(fn)
  if bytes == false then return { id = 0, bytes = fn } end
  if bytes == nil then return nil, why end
  local id = c.ids[bytes]
  if not id then
    if c.n % 4096 == 4095 then c.ids = {} end   -- bounded
    c.n = c.n + 1
    id = c.n
    c.ids[bytes] = id
  end
  local snap, cacheable = nil, true
  if type(fn) == "function" then
    local i = 1
    while true do
      local name, v = getupvalue(fn, i)
      if name == nil then break end
      if name ~= "_ENV" then
        local t = type(v)
        if t == "table" or t == "function" or t == "userdata" or t == "thread" then cacheable = false; break end
        snap = snap or {}
        snap[i] = v
      end
      i = i + 1
    end
    if snap then snap.n = i - 1 end
  end
  e = { id = id, bytes = bytes, snap = snap }
  if cacheable then c.byfn[fn] = e end
  return e
end

-- entry, or an error naming argument 1 of fname when fn cannot be sent.
function M.of(c, fn, fname)
  local e, why = entry(c, fn)
  if e == nil then check.argerror(1, fname, (tostring(why):gsub("^function: ", ""))) end
  return e
end

return M

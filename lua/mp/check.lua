--[[
The conventions every Lua-side function of mp follows, as the C side does
with mp_checkself, mp_checkoptions and mp_checknargs (src/mp_aux.h): a method
called with `.` instead of `:` (or on a wrong object), an unknown option key
and a surplus argument are errors that name the function and point at the
caller's line -- the first frame outside mp's own Lua files, however deep in
the library (a constructor's init, a subclass chain) the check runs.
]]
local core = require "mp.core"

local M = {}
local getinfo = debug.getinfo

-- mp's own Lua files (embedded as mp/<name>.lua, or installed under .../mp/).
local function in_library(info)
  local src = info.source
  -- "mp/" must be a whole directory name: a script in /tmp/ is the user's.
  return info.what == "C" or src:find("^[@=]mp/[%w_]+%.lua$") ~= nil
    or src:find("^@.*/mp/[%w_]+%.lua$") ~= nil or src:find("^[@=]mp%.lua$") ~= nil
end

--[[
The level, as error() counts it in the function that calls this, of the
first caller outside mp: error(msg, check.level()) points at the user's line.
]]
function M.level()
  local k = 1
  while true do
    local info = getinfo(k + 1, "S")
    if info == nil then return 1 end
    if not in_library(info) then return k end
    k = k + 1
  end
end

-- error(msg) at the first caller outside mp.
function M.error(msg)
  error(msg, M.level())
end

-- The type of v as an error message names it: an mp class name, __name, or type().
local function typename(v)
  local mt = getmetatable(v)
  if type(mt) == "table" then
    local name = rawget(mt, "__name")
    if type(name) == "string" then
      return rawget(mt, "super") ~= nil and not name:find("^mp%.") and "mp." .. name or name
    end
  end
  if v == nil then return "no value" end
  return type(v)
end
M.typename = typename

--[[
An error message positioned inside one of mp's own Lua files ("mp/pool.lua:462:
interrupted!", raised by a Ctrl-C hook while the pool's loop ran) gets the
position of the first caller outside mp instead; anything else is returned as
it is. For errors caught and raised again by mp's own loops.
]]
function M.relocate(err)
  if type(err) ~= "string" then return err end
  local rest = err:match("^[^\n]-mp/[%w_]+%.lua:%d+: (.*)$") or err:match("^mp%.lua:%d+: (.*)$")
  if rest == nil then return err end
  local info = getinfo(M.level(), "Sl")
  if info == nil or info.currentline < 0 then return rest end
  return string.format("%s:%d: %s", info.short_src, info.currentline, rest)
end

-- "bad argument #n to 'fname' (msg)" at the first caller outside mp.
function M.argerror(n, fname, msg)
  error(string.format("bad argument #%d to '%s' (%s)", n, fname, msg), M.level())
end

--[[
Raises "bad argument #1 to 'fname' (mp.Class expected, got X)" unless self is
an instance of cls (or of a subclass): what a method called with `.` gets.
]]
function M.self(self, cls, fname)
  local mt = getmetatable(self)
  if mt == cls then return self end
  while type(mt) == "table" do
    mt = rawget(mt, "super")
    if mt == cls then return self end
  end
  M.argerror(1, fname, string.format("mp.%s expected, got %s", rawget(cls, "__name"), typename(self)))
end

--[[
Raises "bad argument #k to 'fname' (no argument expected here, got X)" when a
function that takes `max` arguments (self not counted) got `count`: call it as
check.nargs(fname, max, select("#", ...) + max, (...)) from a function whose
surplus arguments are `...`.
]]
function M.nargs(fname, max, count, first_surplus)
  if count > max then
    M.argerror(max + 1, fname, "no argument expected here, got " .. typename(first_surplus))
  end
end

-- Raises "unknown option 'k' to 'fname' (did you mean ...?)" unless every key of opts is in the list keys.
function M.options(opts, fname, keys)
  local msg = core.option_error(opts, fname, keys)
  if msg then M.error(msg) end
end

return M

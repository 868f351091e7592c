--[[
Start methods and contexts, as Python's multiprocessing.context:
mp.set_start_method, mp.get_start_method, mp.get_all_start_methods and
mp.get_context(method), a table with the same constructors as mp whose
processes use that method. The processes themselves are started in
lua/mp/process.lua (core.spawn for "fork", the fork server for "forkserver").
]]
local process = require "mp.process"
local check = require "mp.check"

local M = {}

local METHODS = process.METHODS
local ORDER = { "fork", "forkserver" }    -- get_all_start_methods: the default first

local function check_method(method, fname, n)
  if type(method) ~= "string" then
    check.argerror(n or 1, fname, "start method name expected, got " .. check.typename(method))
  end
  if not METHODS[method] then
    check.argerror(n or 1, fname, string.format("cannot find context for %q (start methods: %s)",
      method, table.concat(ORDER, ", ")))
  end
  return method
end

--[[
A context: what mp has, with Process and Pool bound to one start method.
Everything else (Queue, Lock, Value...) is mp's own: those objects do not
depend on how processes start. get_start_method works as a method or a field.
]]
local Context = { __name = "mp.Context" }
Context.__index = function(ctx, k) return rawget(ctx, "_mp")[k] end
Context.__newindex = function(_, k)
  error(string.format("cannot set field '%s' of a context", tostring(k)), 2)
end
Context.__tostring = function(ctx) return "<mp.Context " .. rawget(ctx, "_method") .. ">" end

local contexts = {}

local function make_context(mp, method, pool)
  local ctx = {
    _mp = mp,
    _method = method,
    Process = method == "fork" and process.ForkProcess or process.ForkServerProcess,
    -- pool(method, ...) builds a Pool whose workers start with `method`.
    Pool = function(...) return pool(method, ...) end,
    get_start_method = function() return method end,
    set_start_method = function()
      error("cannot set the start method of a context (mp.set_start_method sets the default)", 2)
    end,
  }
  ctx.get_context = function(m, ...)
    if m == ctx then m = ... end            -- ctx:get_context(m) as well as ctx.get_context(m)
    return M.get_context(m)
  end
  return setmetatable(ctx, Context)
end

-- Called once by mp.lua, when mp is complete.
function M.build(mp, pool)
  for _, method in ipairs(ORDER) do contexts[method] = make_context(mp, method, pool) end
end

-- mp.get_context([method]) --> the context of method (nil: the default method's)
function M.get_context(method, ...)
  check.nargs("get_context", 1, select("#", ...) + 1, (...))
  if method == nil then method = process.default_method(true) end
  return contexts[check_method(method, "get_context")]
end

--[[
mp.set_start_method(method [, force]): the default start method. As in
Python, it is set once: after it was set or first used (a process started,
get_start_method called) it is an error, unless force is true (or
{force = true}); set_start_method(nil, true) goes back to unset.
]]
function M.set_start_method(method, force, ...)
  check.nargs("set_start_method", 2, select("#", ...) + 2, (...))
  if type(force) == "table" then
    check.options(force, "set_start_method", { "force" })
    force = force.force
  end
  if method ~= nil then check_method(method, "set_start_method") end
  if process.default_method(false) ~= nil and not force then
    check.error("set_start_method: the start method has already been set (to '" ..
      process.default_method(false) .. "'); pass force = true to change it")
  end
  process.set_default_method(method)
end

-- mp.get_start_method([allow_none]) --> the default method (fixed now unless allow_none)
function M.get_start_method(allow_none, ...)
  check.nargs("get_start_method", 1, select("#", ...) + 1, (...))
  return process.default_method(not allow_none)
end

-- mp.get_all_start_methods() --> {"fork", "forkserver"}
function M.get_all_start_methods(...)
  check.nargs("get_all_start_methods", 0, select("#", ...), (...))
  return { table.unpack(ORDER) }
end

return M

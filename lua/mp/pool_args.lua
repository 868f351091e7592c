--[[
The Pool's argument checks (lua/mp/pool.lua): the constructor's arguments,
chunksizes, timeouts, callables, and the options tables of its calls. Errors
name the argument and the function (mp.check); unknown option keys get a
did-you-mean.
]]
local check = require "mp.check"

local M = {}
local argerror, check_keys = check.argerror, check.options
local mtype = math.type

local function callable(v)
  if type(v) == "function" then return true end
  local mt = getmetatable(v)
  return type(mt) == "table" and mt.__call ~= nil
end
M.callable = callable

local function timeout(t, n, fname, what)
  if t ~= nil and (type(t) ~= "number" or t ~= t) then
    argerror(n, fname, what .. " must be a number, got " .. (type(t) == "number" and "nan" or type(t)))
  end
  return t
end
M.timeout = timeout

function M.fn(fn, fname)
  if not callable(fn) then argerror(1, fname, "function expected, got " .. type(fn)) end
end

function M.args(args, fname)
  if args ~= nil and type(args) ~= "table" then
    argerror(2, fname, "table of arguments expected, got " .. type(args))
  end
end

--[[
A chunksize is a whole number of at least 1: a float is converted first (2.0
is 2), so 0.0 and -1.0 get the same error as 0 and -1, and what has no
integer value (NaN, infinities, 1e300, 2.5) is an error, never the default.
]]
local function chunksize(cs, n, fname)
  if cs == nil then return nil end
  local v = math.tointeger(cs)
  if v == nil or type(cs) ~= "number" then
    argerror(n, fname, "chunksize must be an integer, got " .. (type(cs) == "number" and tostring(cs) or type(cs)))
  end
  if v < 1 then argerror(n, fname, "chunksize must be at least 1, got " .. v) end
  return v
end

--[[
Pool(processes, initializer, initargs, maxtasksperchild) or Pool{processes=,
initializer=, initargs=, maxtasksperchild=, context=} --> processes,
initializer, initargs, maxtasks (0: no limit), context.
]]
function M.pool(processes, initializer, initargs, maxtasksperchild, cpu_count)
  local context
  if type(processes) == "table" then
    local o = processes
    check_keys(o, "Pool", { "processes", "initializer", "initargs", "maxtasksperchild", "context" })
    processes, initializer, initargs, maxtasksperchild = o.processes, o.initializer, o.initargs, o.maxtasksperchild
    context = o.context
  end
  if processes == nil then processes = cpu_count() end
  if mtype(processes) ~= "integer" then
    local v = type(processes) == "number" and math.tointeger(processes)
    if not v then argerror(1, "Pool", "processes must be an integer, got " .. type(processes)) end
    processes = v
  end
  if processes < 1 then argerror(1, "Pool", "processes must be at least 1") end
  if initializer ~= nil and not callable(initializer) then
    argerror(1, "Pool", "initializer must be callable, got " .. type(initializer))
  end
  if initargs ~= nil and type(initargs) ~= "table" then
    argerror(1, "Pool", "initargs must be a table, got " .. type(initargs))
  end
  if maxtasksperchild ~= nil and (mtype(maxtasksperchild) ~= "integer" or maxtasksperchild < 1) then
    argerror(1, "Pool", "maxtasksperchild must be a positive integer")
  end
  return processes, initializer, initargs or {}, maxtasksperchild or 0, context
end

M.MAP_KEYS = { "chunksize", "progress", "callback", "error_callback", "timeout" }
M.IMAP_KEYS = { "chunksize", "progress", "buffersize" }

-- A chunksize number or an options table --> options (a copy, checked).
function M.map(opts, fname, known)
  if opts == nil then return {} end
  if type(opts) == "number" then return { chunksize = chunksize(opts, 3, fname) } end
  if type(opts) ~= "table" then argerror(3, fname, "chunksize or options table expected, got " .. type(opts)) end
  check_keys(opts, fname, known)
  local o = {}
  for k, v in pairs(opts) do o[k] = v end
  o.chunksize = chunksize(opts.chunksize, 3, fname)
  for _, k in ipairs { "callback", "error_callback" } do
    if o[k] ~= nil and not callable(o[k]) then argerror(3, fname, k .. " must be callable") end
  end
  timeout(o.timeout, 3, fname, "timeout")
  if o.buffersize ~= nil and (mtype(o.buffersize) ~= "integer" or o.buffersize < 1) then
    argerror(3, fname, "buffersize must be a positive integer")
  end
  return o
end

local APPLY_KEYS = { "callback", "error_callback", "timeout" }

-- apply_async's (opts, error_callback): {callback=, error_callback=, timeout=} or two callables --> options.
function M.apply(opts, error_callback)
  local o
  if type(opts) == "table" and not callable(opts) then
    check_keys(opts, "apply_async", APPLY_KEYS)
    o = { callback = opts.callback, error_callback = opts.error_callback, timeout = opts.timeout }
  else
    o = { callback = opts, error_callback = error_callback }
  end
  if o.callback ~= nil and not callable(o.callback) then argerror(3, "apply_async", "callback must be callable") end
  if o.error_callback ~= nil and not callable(o.error_callback) then
    argerror(3, "apply_async", "error_callback must be callable")
  end
  if o.timeout ~= nil and (type(o.timeout) ~= "number" or not (o.timeout > 0)) then
    argerror(3, "apply_async", "timeout must be a positive number")
  end
  return o
end

return M

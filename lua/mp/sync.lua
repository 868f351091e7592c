--[[
The Lua half of synchronization and shared memory: constructors with Python's
arguments, `hold` and `with` for every lock-like object, Condition:wait_for,
and Barrier (Python's threading.Barrier algorithm on a Condition and two
shared integers). The primitives themselves are C (src/lsync.c, src/lshared.c).
]]
local core = require "mp.core"
local class = require "mp.class"
local errors = require "mp.errors"
local check = require "mp.check"

local M = {}

local function methods_of(obj) return getmetatable(obj).__index end

local argerror = check.argerror

-- Raises a "bad self" error at the caller of method `fname` unless self's metatable is mt.
local function check_self(self, mt, fname)
  if getmetatable(self) ~= mt then
    argerror(1, fname, string.format("%s expected, got %s", mt.__name, check.typename(self)))
  end
end

--[[
lock:hold() acquires and returns a to-be-closed guard that releases:
  local _ <close> = lock:hold()
The guard is made once per object and reused (an RLock held twice closes twice).
]]
local guards = setmetatable({}, { __mode = "k" })
local Guard = { __name = "mp.Guard" }
Guard.__index = Guard
function Guard.__close(g) g.obj:release() end
function Guard.release(g) g.obj:release() end

local function finish(self, ok, ...)
  self:release()
  if not ok then error((...), 0) end
  return ...
end

-- hold and with for the class whose metatable is mt (each checks its own self).
local function lock_helpers(mt)
  local function hold(self, ...)
    check_self(self, mt, "hold")
    check.nargs("hold", 0, select("#", ...), (...))
    self:acquire()
    local g = guards[self]
    if not g then
      g = setmetatable({ obj = self }, Guard)
      guards[self] = g
    end
    return g
  end
  -- lock:with(fn, ...) --> fn's results; releases even when fn raises.
  local function with(self, fn, ...)
    check_self(self, mt, "with")
    if type(fn) ~= "function" then argerror(1, "with", "function expected, got " .. type(fn)) end
    self:acquire()
    return finish(self, pcall(fn, ...))
  end
  return hold, with
end

-- cond:wait_for(predicate, timeout) --> the predicate's last result (any object with wait(timeout))
local function wait_for(self, predicate, timeout)
  local result = predicate()
  if result then return result end
  local deadline = timeout and core.time() + timeout
  while not result do
    if deadline then
      local left = deadline - core.time()
      if left <= 0 then break end
      self:wait(left)
    else
      self:wait()
    end
    result = predicate()
  end
  return result
end

local lock_like = { core.Lock(), core.RLock(), core.Semaphore(1), core.BoundedSemaphore(1),
                    core.Condition(core.Lock()) }
for _, obj in ipairs(lock_like) do
  local m = methods_of(obj)
  m.hold, m.with = lock_helpers(getmetatable(obj))
end
local cond_mt = getmetatable(lock_like[5])
methods_of(lock_like[5]).wait_for = function(self, predicate, timeout, ...)
  check_self(self, cond_mt, "wait_for")
  check.nargs("wait_for", 2, select("#", ...) + 2, (...))
  if type(predicate) ~= "function" then argerror(1, "wait_for", "function expected, got " .. type(predicate)) end
  if timeout ~= nil and type(timeout) ~= "number" then
    argerror(2, "wait_for", "number expected for timeout, got " .. type(timeout))
  end
  return wait_for(self, predicate, timeout)
end
lock_like = nil

-- Constructors are the C functions themselves, so argument errors point at the caller.
for _, name in ipairs{ "Lock", "RLock", "Semaphore", "BoundedSemaphore", "Event", "Condition",
                       "Value", "RawValue", "Array", "RawArray" } do
  M[name] = core[name]
end

--[[
Barrier(parties, action, timeout) or Barrier{parties=, action=, timeout=}; action and timeout are optional.
State lives in a shared Array: [1] is the state (0 filling, 1 draining,
-1 resetting, -2 broken), [2] the number of processes inside wait.
wait returns the arrival index 0 .. parties-1, as Python does, so
`if b:wait() == 0 then ... end` picks one process.
]]
local FILLING, DRAINING, RESETTING, BROKEN = 0, 1, -1, -2

local Barrier = class.Object:extend("Barrier")
M.Barrier = Barrier
-- A Barrier travels with its class (its Condition and Array go as mp objects, mp_travel.h).
core.register_class("mp.Barrier", Barrier)

local BARRIER_OPTIONS = { "parties", "action", "timeout" }

function Barrier:init(parties, action, timeout, ...)
  check.nargs("Barrier", 3, select("#", ...) + 3, (...))
  if type(parties) == "table" then
    check.options(parties, "Barrier", BARRIER_OPTIONS)
    parties, action, timeout = parties.parties, parties.action, parties.timeout
  end
  if math.type(parties) ~= "integer" or parties < 1 then
    argerror(1, "Barrier", "parties must be a positive integer")
  end
  if action ~= nil and type(action) ~= "function" then
    argerror(2, "Barrier", "function expected for action, got " .. type(action))
  end
  if timeout ~= nil and type(timeout) ~= "number" then
    argerror(3, "Barrier", "number expected for timeout, got " .. type(timeout))
  end
  rawset(self, "_parties", parties)
  rawset(self, "_action", action)
  rawset(self, "_timeout", timeout)
  rawset(self, "_cond", core.Condition(core.Lock()))
  rawset(self, "_s", core.RawArray("i", 2))     -- state, count
end

local function broken_error()
  return errors.new("BrokenBarrierError", "the barrier is broken")
end

local function break_barrier(self)
  self._s[1] = BROKEN
  self._cond:notify_all()
end

-- Blocks while the barrier drains or resets.
local function enter(self)
  local s = self._s
  while s[1] == DRAINING or s[1] == RESETTING do self._cond:wait() end
  if s[1] < 0 then error(broken_error(), 0) end
end

local function release_all(self)
  if self._action then
    local ok, err = pcall(self._action)
    if not ok then break_barrier(self); error(err, 0) end
  end
  self._s[1] = DRAINING
  self._cond:notify_all()
end

local function wait_released(self, timeout)
  local s = self._s
  if not wait_for(self._cond, function() return s[1] ~= FILLING end, timeout) then
    break_barrier(self)
    error(broken_error(), 0)
  end
  if s[1] < 0 then error(broken_error(), 0) end
end

local function leave(self)
  local s = self._s
  s[2] = s[2] - 1
  if s[2] == 0 and (s[1] == RESETTING or s[1] == DRAINING) then
    s[1] = FILLING
    self._cond:notify_all()
  end
end

-- barrier:wait([timeout]) --> arrival index; raises BrokenBarrierError.
function Barrier:wait(timeout, ...)
  check.self(self, Barrier, "wait")
  check.nargs("wait", 1, select("#", ...) + 1, (...))
  if timeout ~= nil and type(timeout) ~= "number" then
    argerror(1, "wait", "number expected for timeout, got " .. type(timeout))
  end
  if timeout == nil then timeout = self._timeout end
  local cond, s = self._cond, self._s
  cond:acquire()
  local ok, index = pcall(function()
    enter(self)
    local index = s[2]
    s[2] = index + 1
    local ok, err = pcall(function()
      if index + 1 == self._parties then release_all(self) else wait_released(self, timeout) end
    end)
    leave(self)
    if not ok then error(err, 0) end
    return index
  end)
  cond:release()
  if not ok then error(index, 0) end
  return index
end

function Barrier:reset(...)
  check.self(self, Barrier, "reset")
  check.nargs("reset", 0, select("#", ...), (...))
  local s = self._s
  self._cond:with(function()
    if s[2] > 0 then
      if s[1] == FILLING or s[1] == BROKEN then s[1] = RESETTING end
    else
      s[1] = FILLING
    end
    self._cond:notify_all()
  end)
end

function Barrier:abort(...)
  check.self(self, Barrier, "abort")
  check.nargs("abort", 0, select("#", ...), (...))
  self._cond:with(break_barrier, self)
end

Barrier.__getters.parties = function(self) return self._parties end
Barrier.__getters.n_waiting = function(self)
  if self._s[1] == FILLING then return self._s[2] end
  return 0
end
Barrier.__getters.broken = function(self) return self._s[1] == BROKEN end

function Barrier:__tostring()
  return string.format("Barrier(parties=%d, n_waiting=%d, broken=%s)",
    self.parties, self.n_waiting, tostring(self.broken))
end

M.wait_for = wait_for   -- the algorithm, for other Condition-like objects (manager proxies)

return M

--[[
AsyncResult (lua/mp/pool.lua's futures): a plain object, laid out for the
per-task path (fields set in the constructor only, so no table grows).
Array: [1] the function's cache entry {id, bytes} (a map_async result: its
job), [2] the arguments (false once sent or cancelled; true for a map_async
result), [3..] the values (the transport writes them there; a map_async
result: [3] the list). Hash: _pool, _ready (false, or the completion's
sequence number, for as_completed), _n (the values' count; -1 when failed,
with the error in [3]), _o (false, or the options: callback, error_callback,
timeout). lua/mp/futures.lua reads _ready, _n and [3].
]]
local class = require "mp.class"
local check = require "mp.check"
local errors = require "mp.errors"
local args = require "mp.pool_args"

local M = {}
local classes = errors.classes
local unpack = table.unpack

local AsyncResult = class.Object:extend("AsyncResult")
M.AsyncResult = AsyncResult
AsyncResult.__index, AsyncResult.__newindex = AsyncResult, nil

-- Completion order, for as_completed: clock.n is the last completion's number.
local clock = { n = 0 }
M.clock = clock

--[[
A new pending result: e the function's entry (or the job), args (or true),
options (or false). (apply_async, the per-task path, builds the same table
inline.)
]]
function M.new(pool, e, args, o)
  -- [3] reserves the array part for the first value; every field is set here.
  return setmetatable({ e, args, false, _pool = pool, _ready = false, _n = 0, _o = o }, AsyncResult)
end

local function check_ar(self, fname)
  if getmetatable(self) ~= AsyncResult then check.self(self, AsyncResult, fname) end
end

local function not_ready()
  return classes.TimeoutError("result not ready within the timeout")
end

-- wait([timeout]) --> true once ready (runs the pool meanwhile).
function AsyncResult:wait(timeout)
  check_ar(self, "wait")
  args.timeout(timeout, 1, "wait", "timeout")
  if not self._ready then self._pool:_wait(function() return self._ready end, timeout) end
  return self._ready and true or false
end

-- get([timeout]) --> the results; raises the task's error, or TimeoutError.
function AsyncResult:get(timeout, surplus)
  check_ar(self, "get")
  if surplus ~= nil then check.nargs("get", 1, 2, surplus) end
  if not self._ready then
    args.timeout(timeout, 1, "get", "timeout")
    self._pool:_wait(function() return self._ready end, timeout)
    if not self._ready then error(not_ready(), 2) end
  end
  local n = self._n
  if n < 0 then error(self[3], 2) end
  if self[2] == true then return self[3], n end
  return unpack(self, 3, n + 2)
end

function AsyncResult:ready() check_ar(self, "ready"); return self._ready and true or false end

function AsyncResult:successful()
  check_ar(self, "successful")
  if not self._ready then error("result is not ready", 2) end
  return self._n >= 0
end

-- The error of a finished task, or nil (concurrent.futures' exception()).
function AsyncResult:exception(timeout)
  check_ar(self, "exception")
  if not self:wait(timeout) then error(not_ready(), 2) end
  if self._n < 0 then return self[3] end
end

local function failed(ar, err)
  ar._n, ar[3] = -1, err
end

-- cancel() --> true when the task had not left the parent (get then raises CancelledError).
function AsyncResult:cancel()
  check_ar(self, "cancel")
  if self._ready then return self._n < 0 and classes.CancelledError:is(self[3]) end
  if self[2] == true then
    local job = self[1]
    if job.chunks_sent > 0 then return false end
    job.exhausted, job.cancelled = true, true
  elseif self[2] == false then
    return false
  end
  self[2] = false
  failed(self, classes.CancelledError("the task was cancelled"))
  clock.n = clock.n + 1
  self._ready = clock.n
  return true
end

function AsyncResult:cancelled()
  check_ar(self, "cancelled")
  return self._ready and self._n < 0 and classes.CancelledError:is(self[3]) or false
end

function AsyncResult:__tostring()
  return string.format("<AsyncResult %s>", self._ready and (self._n < 0 and "failed" or "ready") or "pending")
end

-- Settles an AsyncResult (err nil: its values are in place); runs its callback.
function M.settle(ar, err)
  if ar._ready then return end
  clock.n = clock.n + 1
  ar._ready = clock.n
  if err ~= nil then failed(ar, err) end
  local o = ar._o
  if o then
    local cb = err ~= nil and o.error_callback or o.callback
    if cb ~= nil then
      local ok, cerr
      if err ~= nil then ok, cerr = pcall(cb, err)
      elseif ar[2] == true then ok, cerr = pcall(cb, ar[3], ar._n)
      else ok, cerr = pcall(cb, unpack(ar, 3, ar._n + 2)) end
      if not ok then failed(ar, cerr) end        -- a callback that raises fails this result only
    end
  end
end

function M.is_result(v) return getmetatable(v) == AsyncResult end

return M

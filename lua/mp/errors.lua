--[[
Error objects: what mp raises where Python raises an exception a program is
expected to catch (queue.Empty, TimeoutError, EOFError, ...). Each is a table
with `kind` (the Python name), `message`, and for errors raised in another
process `traceback` and `pid`. `mp.Empty:is(err)` tests one; tostring(err) gives
a readable report. Misuse (wrong types, releasing an unlocked lock) raises plain
string errors instead.
]]
local class = require "mp.class"

local M = {}
local classes = {}     -- kind name --> class
M.classes = classes

local Error = class.Object:extend("Error")
classes.Error = Error

function Error:init(message, fields)
  self.kind = getmetatable(self).__name
  self.message = message ~= nil and tostring(message) or ""
  if fields then
    for k, v in pairs(fields) do self[k] = v end
  end
end

function Error:__tostring()
  local s = self.kind
  if self.message ~= "" then s = s .. ": " .. self.message end
  if self.pid then s = s .. " (in process " .. tostring(self.pid) .. ")" end
  if self.traceback then s = s .. "\n" .. self.traceback end
  return s
end

-- Python's names. ProcessError is the base of the multiprocessing-specific ones.
local function define(name, parent)
  classes[name] = parent:extend(name)
  return classes[name]
end
local ProcessError = define("ProcessError", Error)
define("Empty", Error)
define("Full", Error)
define("TimeoutError", ProcessError)
define("EOFError", Error)
define("BrokenBarrierError", Error)
define("RemoteError", ProcessError)
define("WorkerLostError", ProcessError)
define("AuthenticationError", ProcessError)
define("BufferTooShort", ProcessError)
define("CancelledError", Error)         -- concurrent.futures.CancelledError: AsyncResult:cancel()
-- A manager server that cannot be reached (gone, refused, closed the connection).
define("ConnectionError", ProcessError)

-- The factory the C core calls (mp_raise): kind name, message --> error object.
function M.new(kind, message, fields)
  local err = (classes[kind] or Error)(message, fields)
  err.kind = kind
  return err
end

return M

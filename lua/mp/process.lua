--[[
mp.Process: a Lua function run in a forked child process, with Python's
multiprocessing.Process API. Forking, waiting and reaping are done in C
(src/lprocess.c, src/engine/proc.c); naming, subclassing and bookkeeping here.
]]
local core = require "mp.core"
local class = require "mp.class"
local check = require "mp.check"

local M = {}

local getpid, spawn, fs_spawn = core.getpid, core.spawn, core.forkserver_spawn
local SIGTERM, SIGKILL = core.signals.SIGTERM, core.signals.SIGKILL

local function callable(v)
  if type(v) == "function" then return true end
  local mt = getmetatable(v)
  return type(mt) == "table" and mt.__call ~= nil
end

local function argerror(n, fname, msg) check.argerror(n, fname, msg) end

local Process = class.Object:extend("Process")
M.Process = Process
local getters, setters = Process.__getters, Process.__setters

-- What this process knows of itself. A forked child resets it in bootstrap().
local state = {
  counter = 0,      -- Process objects made here so far: names Process-1, Process-2...
  identity = {},    -- place in the process tree: {} in the main process, {1, 3} in Process-1:3
  children = {},    -- started Process objects not yet seen to end (Python's _children)
  current = nil,    -- this process's object
  parent = nil,     -- the parent's object, nil in the main process
}
local after_fork = {}   -- functions other modules run in every new child

-- Runs f() in every child right after the fork, before the target (module state resets).
-- The fork server runs them too when it starts: it is a fork of this process.
function M.at_fork(f) after_fork[#after_fork + 1] = f end

--[[
Start methods (docs/processes.md). The default method is fixed at its first
use (mp.get_start_method() or a start) unless set before; lua/mp/context.lua
holds the public API. A Process uses, in this order: its `context` option,
its class's _start_method (the classes of mp.get_context(m)), the default.
]]
local METHODS = { fork = true, forkserver = true }
M.METHODS = METHODS
local default_method = nil    -- nil: not fixed yet ("fork" when first used)

function M.default_method(fix)
  if default_method == nil and fix then default_method = "fork" end
  return default_method
end

function M.set_default_method(method) default_method = method end

local function check_closed(self)
  if rawget(self, "_closed") then check.error("process object is closed") end
end

-- Forget children that have ended, and reap those whose objects were collected.
local function reap()
  for p in pairs(state.children) do
    if p._handle:poll() ~= nil then state.children[p] = nil end
  end
  core.reap()
end

-- Default fields for every new Process, before init runs.
function Process.new(cls, ...)
  state.counter = state.counter + 1
  local identity = { table.unpack(state.identity) }
  identity[#identity + 1] = state.counter
  local self = setmetatable({
    _identity = identity,
    _name = cls.__name .. "-" .. table.concat(identity, ":"),
    _daemon = state.current._daemon,
    _creator = getpid(),
  }, cls)
  cls.init(self, ...)
  return self
end

--[[
Process{target = fn, args = {...}, name = "w", daemon = false}, or positionally
Process(target, args, name, daemon). Subclasses may override init and call
Process.init(self, options) to set these.
]]
local OPTIONS = { "target", "args", "name", "daemon", "group", "context" }

-- The method named by a context option: "fork", "forkserver", or a context of mp.get_context.
local function context_method(ctx, fname)
  if type(ctx) == "string" and METHODS[ctx] then return ctx end
  if type(ctx) == "table" then
    local ok, m = pcall(function() return ctx:get_start_method() end)
    if ok and METHODS[m] then return m end
  end
  argerror(1, fname, "context must be 'fork', 'forkserver' or a context from mp.get_context, got " ..
    (type(ctx) == "string" and string.format("%q", ctx) or check.typename(ctx)))
end
M.context_method = context_method

function Process:init(target, args, name, daemon, ...)
  local fname = getmetatable(self).__name
  check.nargs(fname, 4, select("#", ...) + 4, (...))
  if type(target) == "table" and not callable(target) and args == nil then
    local opts = target
    check.options(opts, fname, OPTIONS)
    target, args, name, daemon = opts.target, opts.args, opts.name, opts.daemon
    if opts.group ~= nil then argerror(1, fname, "group must be nil") end
    if opts.context ~= nil then self._method = context_method(opts.context, fname) end
  end
  if target ~= nil and not callable(target) then
    argerror(1, fname, "target must be callable, got " .. type(target))
  end
  if args ~= nil and type(args) ~= "table" then
    argerror(1, fname, "args must be a table, got " .. type(args))
  end
  if name ~= nil and type(name) ~= "string" then
    argerror(1, fname, "name must be a string, got " .. type(name))
  end
  self._target = target
  self._args = args or {}
  if name ~= nil then self._name = name end
  if daemon ~= nil then self._daemon = not not daemon end
end

-- A new child becomes `self`: module state resets, then run.
local function enter(self, parent)
  state.parent = parent
  state.current = self
  state.counter = 0
  state.identity = self._identity
  state.children = {}
  rawset(self, "_handle", nil)
  rawset(self, "_is_current", true)
  -- os.exit in a child ends the child cleanly: children handled, buffers flushed,
  -- no finalizer of the parent's objects run.
  os.exit = core.child_exit
  for _, f in ipairs(after_fork) do f() end
  self:run()
end

-- The child's entry point, called by core.spawn in the new process.
local function bootstrap(self)
  enter(self, M.ParentProcess(state.current._name, core.getppid()))
end

--[[
The fork server's child: the process object arrives by value (the serializer
sends tables without metatables), with the chain of its classes below the
first one this copy of the state knows by name (a subclass made after the
server started); they get their metatables back, parents first.
]]
local function fs_bootstrap(self, chain, base, parent_name, parent_pid)
  for i = #chain, 1, -1 do class.restore(chain[i]) end
  setmetatable(self, chain[1] or base)
  enter(self, M.ParentProcess(parent_name, parent_pid))
end

-- The fork server, right after it is forked: what any child does to shared state.
local function server_init()
  for _, f in ipairs(after_fork) do f() end
end

-- Classes every copy of the state knows (sent by name); others travel by value.
local known_classes = {}

-- The classes of obj from its own up to the first known one (excluded), and that one.
local function class_chain(obj)
  local chain, cls = {}, getmetatable(obj)
  while not known_classes[cls] do
    chain[#chain + 1] = cls
    cls = rawget(cls, "super")
  end
  return chain, cls
end

function Process:run()
  local target = self._target
  if target ~= nil then
    local args = self._args
    target(table.unpack(args, 1, args.n or #args))
  end
end

function Process:start(...)
  check.self(self, Process, "start")
  check.nargs("start", 0, select("#", ...), (...))
  check_closed(self)
  if self._handle ~= nil or self._is_current then check.error("cannot start a process twice") end
  if self._creator ~= getpid() then
    check.error("can only start a process object created by the current process")
  end
  -- Pool workers are daemonic (killed with their parent) yet may run pools of their own.
  if state.current._daemon and not rawget(self, "_pool_worker") then
    check.error("daemonic processes are not allowed to have children")
  end
  reap()
  local method = self._method or self._start_method or M.default_method(true)
  local handle
  if method == "forkserver" then
    M.forkserver_start()
    local chain, base = class_chain(self)
    handle = fs_spawn(self._daemon, self._name, self, chain, base, state.current._name, getpid())
  else
    handle = spawn(self._name, self._daemon, bootstrap, self)
  end
  self._handle = handle
  self._pid = handle:pid()
  state.children[self] = true
end

local function check_child(self, what)
  check_closed(self)
  if self._is_current then check.error("cannot " .. what .. " the current process") end
  if self._handle == nil then check.error("can only " .. what .. " a started process") end
  if self._creator ~= getpid() then check.error("can only " .. what .. " a child process") end
end

-- join([timeout]): waits until the process ends or the timeout (seconds) passes.
function Process:join(timeout, ...)
  check.self(self, Process, "join")
  check.nargs("join", 1, select("#", ...) + 1, (...))
  if timeout ~= nil and type(timeout) ~= "number" then
    argerror(1, "join", "number expected, got " .. type(timeout))
  end
  check_child(self, "join")
  if self._handle:wait(timeout) ~= nil then state.children[self] = nil end
end

function Process:is_alive(...)
  check.self(self, Process, "is_alive")
  check.nargs("is_alive", 0, select("#", ...), (...))
  if self._is_current then return true end
  check_closed(self)
  if self._handle == nil then return false end
  if self._creator ~= getpid() then check.error("can only test a child process") end
  if self._handle:poll() == nil then return true end
  state.children[self] = nil
  return false
end

function Process:terminate(...)
  check.self(self, Process, "terminate")
  check.nargs("terminate", 0, select("#", ...), (...))
  check_child(self, "terminate")
  self._handle:signal(SIGTERM)
end

function Process:kill(...)
  check.self(self, Process, "kill")
  check.nargs("kill", 0, select("#", ...), (...))
  check_child(self, "kill")
  self._handle:signal(SIGKILL)
end

-- close(): releases the process's resources (its sentinel); the object is unusable after.
function Process:close(...)
  check.self(self, Process, "close")
  check.nargs("close", 0, select("#", ...), (...))
  if rawget(self, "_closed") then return end
  local handle = self._handle
  if handle ~= nil then
    if handle:poll() == nil then
      check.error("Cannot close a process while it is still running. " ..
                  "You should first call join() or terminate().")
    end
    handle:close()
  end
  state.children[self] = nil
  self._closed = true
end

function getters.name(self) return self._name end
function setters.name(self, v)
  if type(v) ~= "string" then check.error("name must be a string, got " .. type(v)) end
  self._name = v
end

function getters.daemon(self) return self._daemon end
function setters.daemon(self, v)
  if self._handle ~= nil or self._is_current then check.error("process has already started") end
  self._daemon = not not v
end

function getters.pid(self)
  if self._is_current then return getpid() end
  return self._pid
end
getters.ident = getters.pid

function getters.exitcode(self)
  check_closed(self)
  if self._handle == nil then return nil end
  return self._handle:poll()
end

function getters.sentinel(self)
  check_closed(self)
  if self._handle == nil then check.error("process not started") end
  return self._handle:sentinel()
end

function Process:__tostring()
  local status
  if rawget(self, "_closed") then status = "closed"
  elseif self._is_current then status = "started"
  elseif self._handle == nil then status = "initial"
  else
    local code = self._handle:poll()
    status = code == nil and "started" or ("stopped exitcode=" .. code)
  end
  local parts = { string.format("<%s name='%s'", getmetatable(self).__name, self._name) }
  if self.pid then parts[#parts + 1] = "pid=" .. self.pid end
  parts[#parts + 1] = status
  if self._daemon then parts[#parts + 1] = "daemon" end
  return table.concat(parts, " ") .. ">"
end

--[[
mp.forkserver_start(): starts this state's fork server now, if it is not
running (a host calls it before it starts threads, and while it is small:
the server is a fork of this process as it is now). Returns its pid (nil in
a process that uses another process's server).
]]
function M.forkserver_start(...)
  check.nargs("forkserver_start", 0, select("#", ...), (...))
  return core.forkserver_start(fs_bootstrap, server_init)
end

-- mp.parent_process() in a child: name and pid of the process that started it.
local ParentProcess = class.Object:extend("ParentProcess")
M.ParentProcess = ParentProcess
function ParentProcess:init(name, pid)
  rawset(self, "name", name)
  rawset(self, "pid", pid)
  rawset(self, "ident", pid)
  rawset(self, "daemon", false)
end
function ParentProcess:is_alive()
  check.self(self, ParentProcess, "is_alive")
  return core.pid_alive(self.pid)
end
function ParentProcess:__tostring()
  return string.format("<ParentProcess name='%s' pid=%d>", self.name, self.pid)
end

--[[
The classes of the contexts (mp.get_context(m).Process): Python names them
ForkProcess and ForkServerProcess; their instances default to that method.
]]
M.ForkProcess = Process:extend("ForkProcess")
M.ForkProcess._start_method = "fork"
M.ForkServerProcess = Process:extend("ForkServerProcess")
M.ForkServerProcess._start_method = "forkserver"
known_classes[Process] = true
known_classes[M.ForkProcess] = true
known_classes[M.ForkServerProcess] = true

-- The main process: Python's _MainProcess.
state.current = setmetatable({
  _name = "MainProcess", _daemon = false, _identity = {}, _is_current = true, _creator = getpid(),
}, Process)

--[[
Makes the calling child the main process of a tree of its own: current_process()
becomes a new MainProcess, parent_process() nil, and the Process objects it makes
are named from Process-1 again. For a runner that gives each job a fresh process
which must see what it would see started alone: mplua-busted runs each spec file
so (lua/mp/busted.lua). Only in a forked child that has started no process yet:
its exit stays a child's (core.child_exit), which joins what it starts.
]]
function M.become_main()
  if state.parent == nil then error("become_main: already the main process", 2) end
  if next(state.children) ~= nil then error("become_main: this process has children", 2) end
  state.current = setmetatable({
    _name = "MainProcess", _daemon = false, _identity = {}, _is_current = true, _creator = getpid(),
  }, Process)
  state.parent = nil
  state.counter = 0
  state.identity = {}
  default_method = nil              -- a main process chooses its own start method
end

function M.current_process(...)
  check.nargs("current_process", 0, select("#", ...), (...))
  return state.current
end
function M.parent_process(...)
  check.nargs("parent_process", 0, select("#", ...), (...))
  return state.parent
end

-- mp.active_children(): the children of this process still running (also reaps).
function M.active_children(...)
  check.nargs("active_children", 0, select("#", ...), (...))
  reap()
  local list = {}
  for p in pairs(state.children) do list[#list + 1] = p end
  table.sort(list, function(a, b) return a._pid < b._pid end)
  return list
end

return M

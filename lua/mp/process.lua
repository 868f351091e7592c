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
  identity = {},    -- place in the process tree: {} in the main process, {1, 3} in Process-1:3;
                    -- nil in a child until it makes a Process (see own_identity)
  identity_up = nil, -- in a child until then: its parent's identity and its own number
  identity_n = nil,
  children = {},    -- started Process objects not yet seen to end (Python's _children);
                    -- false in a child until it starts one
  current = nil,    -- this process's object (the one object for which is_current() is true)
  parent = nil,     -- the parent's object once made (see parent_process); nil in the main process
  parent_name = nil, -- in a child: the parent's name (or its object, see name_of) and pid,
  parent_pid = nil,  -- which parent_process() shows
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

local function is_current(self) return self == state.current end

-- Forget children that have ended, and reap those whose objects were collected.
local function reap()
  local children = state.children
  if children and next(children) ~= nil then
    for p in pairs(children) do
      if rawget(p, "_handle"):poll() ~= nil then children[p] = nil end
    end
  end
  core.reap()
end

--[[
A process's name. The default one ("Process-1:3") is made when it is first
asked for: a string made for every object was a page or two written, so
copied, at every start (bench/NOTES.md, "Process start").
]]
local function name_of(self)
  local name = rawget(self, "_name")
  if name == nil then
    local up, n = rawget(self, "_up"), rawget(self, "_n")
    if up[1] == nil then
      name = string.format("%s-%d", getmetatable(self).__name, n)
    else
      name = string.format("%s-%s:%d", getmetatable(self).__name, table.concat(up, ":"), n)
    end
    rawset(self, "_name", name)
  end
  return name
end
M.name_of = name_of

-- A child's own name, for its error message (core.spawn calls it only then).
local function current_name() return name_of(state.current) end

-- A child seen to end (or closed) leaves the list of children.
local function forget(self)
  local children = state.children
  if children then children[self] = nil end
end

-- This process's identity table, made when first needed in a child (see enter).
local function own_identity()
  local identity = state.identity
  if identity == nil then
    identity = { table.unpack(state.identity_up) }
    identity[#identity + 1] = state.identity_n
    state.identity = identity
  end
  return identity
end

-- Arguments of a process given none: shared, so read-only.
local NO_ARGS = setmetatable({}, {
  __newindex = function() error("the arguments of a process given none are read-only", 2) end,
  __metatable = false,
})

--[[
Default fields for every new Process, before init runs. The constructor names
every field the object will ever hold, so that its table is made once at its
final size: a table that grows allocates a new node array, and after a fork
every page written is a page the kernel copies (bench/NOTES.md, "Process
start").
]]
function Process.new(cls, ...)
  local n = state.counter + 1
  state.counter = n
  local up = state.identity or own_identity()
  -- The object keeps its parent's identity table (shared, never changed) and its
  -- number: the child makes its own identity table only if it makes a Process.
  local self = setmetatable({
    _up = up, _n = n,
    _name = nil,                                 -- the default one made by name_of
    _daemon = state.current._daemon,
    _creator = getpid(),
    _target = nil, _args = nil, _method = nil,   -- init's
    _handle = nil, _pid = nil, _closed = nil,    -- start's and close's
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
  local extra = select("#", ...)
  if extra > 0 then check.nargs(fname, 4, extra + 4, (...)) end
  if type(target) == "table" and not callable(target) and args == nil then
    local opts = target
    check.options(opts, fname, OPTIONS)
    target, args, name, daemon = opts.target, opts.args, opts.name, opts.daemon
    if opts.group ~= nil then argerror(1, fname, "group must be nil") end
    if opts.context ~= nil then rawset(self, "_method", context_method(opts.context, fname)) end
  end
  if target ~= nil and type(target) ~= "function" and not callable(target) then
    argerror(1, fname, "target must be callable, got " .. type(target))
  end
  if args ~= nil and type(args) ~= "table" then
    argerror(1, fname, "args must be a table, got " .. type(args))
  end
  if name ~= nil and type(name) ~= "string" then
    argerror(1, fname, "name must be a string, got " .. type(name))
  end
  -- (rawset: the class's __newindex would only look for setters these fields do not have)
  rawset(self, "_target", target)
  rawset(self, "_args", args or NO_ARGS)
  if name ~= nil then rawset(self, "_name", name) end
  if daemon ~= nil then rawset(self, "_daemon", not not daemon) end
end

local child_exit = core.child_exit

local Process_run     -- Process.run, defined below

--[[
A new child becomes `self`: module state resets, then run. What a child
writes, the kernel copies for it page by page (about 3 us a page here, more
than all the Lua below): so the child writes the state table and nothing
else it can avoid (no table made, not even its own object written), makes
its parent_process() object and its identity table when they are asked for,
and calls its target without the extra level of Process.run.
]]
local function enter(self, parent, parent_pid)
  state.parent = nil
  state.parent_name = parent
  state.parent_pid = parent_pid
  state.current = self
  state.counter = 0
  state.identity = nil                         -- made by own_identity() when needed
  state.identity_up, state.identity_n = self._up, self._n
  state.children = false                       -- made by start when needed
  -- os.exit in a child ends the child cleanly: children handled, buffers flushed,
  -- no finalizer of the parent's objects run.
  if os.exit ~= child_exit then os.exit = child_exit end
  for i = 1, #after_fork do after_fork[i]() end
  local run = rawget(self, "run") or getmetatable(self).run
  if run ~= Process_run then return run(self) end
  local target, args = self._target, self._args
  if target == nil then return end
  if args == NO_ARGS then return target() end  -- (no table.unpack: one more page of code to map)
  return target(table.unpack(args, 1, args.n or #args))
end

-- The child's entry point, called by core.spawn in the new process. Its parent
-- is the process that created and started it (start checks that they are one).
local function bootstrap(self)
  return enter(self, state.current, self._creator)
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
  return enter(self, parent_name, parent_pid)
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
Process_run = Process.run

function Process:start(...)
  if getmetatable(self) ~= Process then check.self(self, Process, "start") end
  local extra = select("#", ...)
  if extra > 0 then check.nargs("start", 0, extra, (...)) end
  check_closed(self)
  if rawget(self, "_handle") ~= nil or is_current(self) then
    check.error("cannot start a process twice")
  end
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
    handle = fs_spawn(self._daemon, name_of(self), self, chain, base, name_of(state.current), getpid())
  else
    handle = spawn(current_name, self._daemon, bootstrap, self)
  end
  rawset(self, "_handle", handle)
  rawset(self, "_pid", handle:pid())
  local children = state.children
  if not children then
    children = {}
    state.children = children
  end
  children[self] = true
end

local function check_child(self, what)
  check_closed(self)
  if is_current(self) then check.error("cannot " .. what .. " the current process") end
  if self._handle == nil then check.error("can only " .. what .. " a started process") end
  if self._creator ~= getpid() then check.error("can only " .. what .. " a child process") end
end

-- join([timeout]): waits until the process ends or the timeout (seconds) passes.
function Process:join(timeout, ...)
  if getmetatable(self) ~= Process then check.self(self, Process, "join") end
  local extra = select("#", ...)
  if extra > 0 then check.nargs("join", 1, extra + 1, (...)) end
  if timeout ~= nil and type(timeout) ~= "number" then
    argerror(1, "join", "number expected, got " .. type(timeout))
  end
  local handle = rawget(self, "_handle")
  if handle == nil or rawget(self, "_closed") or is_current(self) or self._creator ~= getpid() then
    check_child(self, "join")
  end
  if handle:wait(timeout) ~= nil then forget(self) end
end

function Process:is_alive(...)
  check.self(self, Process, "is_alive")
  check.nargs("is_alive", 0, select("#", ...), (...))
  if is_current(self) then return true end
  check_closed(self)
  if self._handle == nil then return false end
  if self._creator ~= getpid() then check.error("can only test a child process") end
  if self._handle:poll() == nil then return true end
  forget(self)
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
  forget(self)
  rawset(self, "_closed", true)
end

function getters.name(self) return name_of(self) end
function setters.name(self, v)
  if type(v) ~= "string" then check.error("name must be a string, got " .. type(v)) end
  self._name = v
end

function getters.daemon(self) return self._daemon end
function setters.daemon(self, v)
  if self._handle ~= nil or is_current(self) then check.error("process has already started") end
  self._daemon = not not v
end

function getters.pid(self)
  if is_current(self) then return getpid() end
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
  elseif is_current(self) then status = "started"
  elseif self._handle == nil then status = "initial"
  else
    local code = self._handle:poll()
    status = code == nil and "started" or ("stopped exitcode=" .. code)
  end
  local parts = { string.format("<%s name='%s'", getmetatable(self).__name, name_of(self)) }
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
  _name = "MainProcess", _daemon = false, _creator = getpid(),
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
  if state.parent_name == nil then error("become_main: already the main process", 2) end
  if state.children and next(state.children) ~= nil then
    error("become_main: this process has children", 2)
  end
  state.current = setmetatable({
    _name = "MainProcess", _daemon = false, _creator = getpid(),
  }, Process)
  state.parent = nil
  state.parent_name, state.parent_pid = nil, nil
  state.counter = 0
  state.identity = {}
  state.identity_up, state.identity_n = nil, nil
  default_method = nil              -- a main process chooses its own start method
end

function M.current_process(...)
  check.nargs("current_process", 0, select("#", ...), (...))
  return state.current
end
function M.parent_process(...)
  check.nargs("parent_process", 0, select("#", ...), (...))
  local parent = state.parent
  if parent == nil and state.parent_name ~= nil then
    local name = state.parent_name
    if type(name) ~= "string" then name = name_of(name) end   -- the parent's object (fork)
    parent = M.ParentProcess(name, state.parent_pid)
    state.parent = parent
  end
  return parent
end

-- mp.active_children(): the children of this process still running (also reaps).
function M.active_children(...)
  check.nargs("active_children", 0, select("#", ...), (...))
  reap()
  local list = {}
  for p in pairs(state.children or {}) do list[#list + 1] = p end
  table.sort(list, function(a, b) return a._pid < b._pid end)
  return list
end

return M

--[[
mp.Manager, mp.BaseManager and the proxies (the client side; the server is
lua/mp/manager_server.lua, the transport src/lmanager.c and src/engine/).

A proxy is a plain table whose only raw field, "\0mp", holds where its object
lives: {a = address, k = authkey, s = server token, i = object id,
t = typeid, w = call timeout}. Its class (a metatable registered with
mp.register_class) makes it behave like the object, so a proxy crosses any
boundary a table crosses -- Process arguments, pool tasks, Queue and Pipe
items, closures' upvalues, mp.dumps -- and reconnects lazily in the process
that receives it. Every process has its own connection to each server (this
module's `conns`, emptied in every forked child), so nothing is shared
across a fork.
]]
local core = require "mp.core"
local check = require "mp.check"
local class = require "mp.class"
local errors = require "mp.errors"
local process = require "mp.process"
local server = require "mp.manager_server"

local M = {}

local KEY = "\0mp"
local DEFAULT_TIMEOUT = 30
local getpid = core.getpid
local type, rawget, select, error, setmetatable = type, rawget, select, error, setmetatable

-- This process's connections: server token --> { client =, pid =, token =, address =, oneway = }
local conns = {}
process.at_fork(function()
  -- The parent's connections are not ours: close our copies of their descriptors.
  for _, c in pairs(conns) do c.client:close() end
  conns = {}
end)

local function connection_error(msg)
  return errors.new("ConnectionError", msg)
end

-- Connects (or finds this process's connection) to the server at address.
local function connect(address, authkey, token, timeout)
  local client, spid, tok = core.manager_connect(address, authkey, timeout)
  if token and tok ~= token then
    client:close()
    error(connection_error("the server at " .. address ..
      " is not the manager this proxy belongs to (it was shut down and another one listens there)"), 0)
  end
  local c = conns[tok]
  if c and not c.client:closed() then     -- the same server under another address
    client:close()
    return c
  end
  c = {
    client = client, pid = spid, token = tok, address = address,
    -- One-way writes (see engine/mserver.h) only where a send puts the bytes on the
    -- server's side at once: Unix sockets. TCP calls all wait for their reply.
    oneway = address:find("/", 1, true) ~= nil,
  }
  conns[tok] = c
  return c
end

-- In a manager's server process: its token (a call to itself would wait for itself).
local serving

function M.serving(token) serving = token end

local function conn_of(st)
  local c = conns[st.s]
  if c == nil or c.client:closed() then
    if st.s == serving then
      check.error("a manager's own proxies cannot be used inside its server (the call would wait for itself)")
    end
    c = connect(st.a, st.k, st.s, st.w)
  end
  return c
end

-- The end of every call: its results, or the error ("usage" ones at the caller's line).
local function result(kind, ...)
  if kind == "ok" then return ... end
  if kind == "raise" then error((...), 0) end
  check.error((...))
end

local function state(self, fname)
  local st = type(self) == "table" and rawget(self, KEY)
  if type(st) ~= "table" then check.argerror(1, fname, "proxy expected, got " .. check.typename(self)) end
  return st
end

local function call(self, method, ...)
  local st = state(self, method)
  local c = conn_of(st)
  return result(c.client:call(st.w, st.i, method, ...))
end

-- How long a blocking call may wait, from Python's (block, timeout): nil for ever.
local function wait_time(block, timeout)
  if type(block) == "table" then block, timeout = block.block, block.timeout end
  if type(block) == "number" then return block end
  if block == false then return 0 end
  if type(timeout) == "number" then return timeout end
  return nil
end

-- A call that may wait `wait` seconds on the server (nil: for ever), plus the call timeout.
local function wcall(self, wait, method, ...)
  local st = state(self, method)
  local c = conn_of(st)
  return result(c.client:call(wait and wait + st.w or nil, st.i, method, ...))
end

-- One-way: a write of plain values that cannot fail on the server.
local function scalar(v)
  local t = type(v)
  return t == "number" or t == "string" or t == "boolean" or t == "nil"
end

local function write(self, method, k, v)
  local st = state(self, method)
  local c = conn_of(st)
  if c.oneway and scalar(k) and scalar(v) then return c.client:send(st.i, method, k, v) end
  return result(c.client:call(st.w, st.i, method, k, v))
end

local function check_key(k)
  if k == nil then check.error("bad key (nil) for a managed object") end
  if k ~= k then check.error("bad key (NaN) for a managed object") end
end

-- ---------------------------------------------------------------------------
-- Proxy classes

local proxy_classes = {}         -- typeid --> class

local function proxy_eq(a, b)
  local x, y = rawget(a, KEY), rawget(b, KEY)
  return type(x) == "table" and type(y) == "table" and x.s == y.s and x.i == y.i
end

local function proxy_tostring(self) return call(self, "__repr") end

local function new_proxy_class(name, typeids)
  local cls = { __name = name, __eq = proxy_eq, __tostring = proxy_tostring }
  for _, t in ipairs(typeids) do proxy_classes[t] = cls end
  core.register_class("mp." .. name, cls)
  return cls
end

-- Methods that send their arguments and return the results.
local function callers(list)
  local t = {}
  for _, name in ipairs(list) do
    t[name] = function(self, ...) return call(self, name, ...) end
  end
  return t
end

local function pairs_over(t) return next, t, nil end

-- dict
local DictProxy = new_proxy_class("DictProxy", { "dict" })
local dict_methods = callers { "get", "pop", "popitem", "update", "keys", "values", "items",
                               "copy", "clear", "setdefault", "has" }
-- d[k] and d[k] = v are the hot paths: call and write inlined.
DictProxy.__index = function(self, k)
  local m = dict_methods[k]
  if m ~= nil then return m end
  local st = rawget(self, KEY)
  local c = conns[st.s]
  if c == nil or c.client:closed() then c = conn_of(st) end
  return result(c.client:call(st.w, st.i, "__getitem", k))
end
DictProxy.__newindex = function(self, k, v)
  if k == nil or k ~= k then check_key(k) end
  local st = rawget(self, KEY)
  local c = conns[st.s]
  if c == nil or c.client:closed() then c = conn_of(st) end
  local tk, tv = type(k), type(v)
  if c.oneway and (tk == "string" or tk == "number" or tk == "boolean")
     and (tv == "string" or tv == "number" or tv == "boolean" or tv == "nil") then
    return c.client:send(st.i, "__setitem", k, v)
  end
  return result(c.client:call(st.w, st.i, "__setitem", k, v))
end
DictProxy.__len = function(self) return call(self, "__len") end
DictProxy.__pairs = function(self) return pairs_over(call(self, "copy")) end

-- list
local ListProxy = new_proxy_class("ListProxy", { "list" })
local list_methods = callers { "pop", "insert", "extend", "remove", "index", "count", "sort",
                               "reverse", "clear", "copy" }
function list_methods.append(self, v, ...)
  check.nargs("append", 1, select("#", ...) + 1, (...))
  if v == nil then check.error("bad argument #1 to 'append' (a list cannot hold nil)") end
  local st = state(self, "append")
  local c = conn_of(st)
  if c.oneway and scalar(v) then return c.client:send(st.i, "append", v) end
  return result(c.client:call(st.w, st.i, "append", v))
end
ListProxy.__index = function(self, k)
  if type(k) == "number" then return call(self, "__getitem", k) end
  return list_methods[k]
end
ListProxy.__newindex = function(self, k, v)
  if math.type(k) ~= "integer" then check.error("list index must be an integer, got " .. (math.type(k) or type(k))) end
  return call(self, "__setitem", k, v)
end
ListProxy.__len = function(self) return call(self, "__len") end
ListProxy.__pairs = function(self) return pairs_over(call(self, "copy")) end

-- Namespace: every field lives in the server.
local NamespaceProxy = new_proxy_class("NamespaceProxy", { "Namespace" })
NamespaceProxy.__index = function(self, k) return call(self, "__getattr", k) end
NamespaceProxy.__newindex = function(self, k, v)
  check_key(k)
  return write(self, "__setattr", k, v)
end
NamespaceProxy.__pairs = function(self) return pairs_over(call(self, "copy")) end

-- Value: v.value, v:get(), v:set(x)
local ValueProxy = new_proxy_class("ValueProxy", { "Value" })
local value_methods = callers { "get", "set" }
ValueProxy.__index = function(self, k)
  if k == "value" then return call(self, "get") end
  return value_methods[k]
end
ValueProxy.__newindex = function(self, k, v)
  if k ~= "value" then check.error("cannot set field '" .. tostring(k) .. "' of a Value proxy (only 'value')") end
  return call(self, "set", v)
end

-- Array: a[i] (nil past the end, so ipairs stops), a[i] = v, #a, a:tolist()
local ArrayProxy = new_proxy_class("ArrayProxy", { "Array" })
local array_methods = callers { "tolist" }
ArrayProxy.__index = function(self, k)
  if type(k) == "number" then return call(self, "__getitem", k) end
  return array_methods[k]
end
ArrayProxy.__newindex = function(self, k, v) return call(self, "__setitem", k, v) end
ArrayProxy.__len = function(self) return call(self, "__len") end
ArrayProxy.__pairs = function(self) return pairs_over(call(self, "tolist")) end

-- Locks, semaphores and conditions: acquire may wait; hold() and with() as mp.Lock's.
local guards = setmetatable({}, { __mode = "k" })
local Guard = { __name = "mp.Guard" }
Guard.__index = Guard
function Guard.__close(g) g.obj:release() end
function Guard.release(g) g.obj:release() end

local function lock_methods(extra)
  local t = callers { "release", "locked", "get_value" }
  function t.acquire(self, block, timeout, ...)
    check.nargs("acquire", 2, select("#", ...) + 2, (...))
    return wcall(self, wait_time(block, timeout), "acquire", block, timeout)
  end
  function t.hold(self)
    self:acquire()
    local g = guards[self]
    if not g then
      g = setmetatable({ obj = self }, Guard)
      guards[self] = g
    end
    return g
  end
  function t.with(self, fn, ...)
    if type(fn) ~= "function" then check.error("bad argument #1 to 'with' (function expected, got " .. type(fn) .. ")") end
    self:acquire()
    return (function(ok, ...)
      self:release()
      if not ok then error((...), 0) end
      return ...
    end)(pcall(fn, ...))
  end
  for k, v in pairs(extra or {}) do t[k] = v end
  return t
end

local function method_class(name, typeids, methods, fields)
  local cls = new_proxy_class(name, typeids)
  cls.__index = function(self, k)
    local m = methods[k]
    if m ~= nil then return m end
    if fields and fields[k] then return call(self, k) end
    return nil
  end
  cls.__newindex = function(_, k)
    check.error("cannot set field '" .. tostring(k) .. "' of a " .. name)
  end
  return cls
end

method_class("AcquirerProxy", { "Lock", "RLock", "Semaphore", "BoundedSemaphore" }, lock_methods())

local condition_methods = lock_methods(callers { "notify", "notify_all" })
function condition_methods.wait(self, timeout, ...)
  check.nargs("wait", 1, select("#", ...) + 1, (...))
  return wcall(self, timeout, "wait", timeout)
end
condition_methods.wait_for = require("mp.sync").wait_for
method_class("ConditionProxy", { "Condition" }, condition_methods)

local event_methods = callers { "set", "clear", "is_set" }
function event_methods.wait(self, timeout, ...)
  check.nargs("wait", 1, select("#", ...) + 1, (...))
  return wcall(self, timeout, "wait", timeout) end
method_class("EventProxy", { "Event" }, event_methods)

local barrier_methods = callers { "reset", "abort" }
function barrier_methods.wait(self, timeout, ...)
  check.nargs("wait", 1, select("#", ...) + 1, (...))
  return wcall(self, timeout, "wait", timeout) end
method_class("BarrierProxy", { "Barrier" }, barrier_methods, { parties = true, n_waiting = true, broken = true })

local queue_methods = callers { "put_nowait", "get_nowait", "qsize", "empty", "full", "task_done" }
function queue_methods.put(self, v, block, timeout, ...)
  check.nargs("put", 3, select("#", ...) + 3, (...))
  return wcall(self, wait_time(block, timeout), "put", v, block, timeout)
end
function queue_methods.get(self, block, timeout, ...)
  check.nargs("get", 2, select("#", ...) + 2, (...))
  return wcall(self, wait_time(block, timeout), "get", block, timeout)
end
function queue_methods.join(self, ...)
  check.nargs("join", 0, select("#", ...), (...))
  return wcall(self, nil, "join") end
method_class("QueueProxy", { "Queue", "JoinableQueue" }, queue_methods)

-- Any other (registered) type: every field is a method called by name in the server.
local Proxy = new_proxy_class("Proxy", {})
local named = setmetatable({}, { __mode = "v" })
Proxy.__index = function(_, k)
  if type(k) ~= "string" then return nil end
  local f = named[k]
  if f == nil then
    f = function(self, ...) return call(self, k, ...) end
    named[k] = f
  end
  return f
end
Proxy.__newindex = function(_, k)
  check.error("cannot set field '" .. tostring(k) .. "' of a proxy (call its methods)")
end

local function make_proxy(mgr, id, typeid)
  local st = { a = mgr.address, k = mgr.authkey, s = mgr._token, i = id, t = typeid, w = mgr.timeout }
  return setmetatable({ [KEY] = st }, proxy_classes[typeid] or Proxy)
end

-- mp.is_proxy(v) --> whether v is a proxy of a managed object
function M.is_proxy(v)
  return type(v) == "table" and type(rawget(v, KEY)) == "table"
end

-- ---------------------------------------------------------------------------
-- Managers

local BaseManager = class.Object:extend("BaseManager")
M.BaseManager = BaseManager
BaseManager._registry = {}

local counters = {}

-- Calls method of the manager object (id 0); errors at the caller of the caller.
local function manager_call(self, timeout, method, ...)
  check.self(self, BaseManager, method)
  if rawget(self, "_closed") then check.error("the manager is shut down") end
  local c = conns[self._token]
  if c == nil or c.client:closed() then c = connect(self.address, self.authkey, self._token, self.timeout) end
  local kind, a, b = c.client:call(timeout or self.timeout, 0, method, ...)
  if kind == "ok" then return a, b end
  if kind == "raise" then error(a, 0) end
  check.error(a)
end

local function create(self, typeid, ...)
  local id, t = manager_call(self, nil, "create", typeid, ...)
  return make_proxy(self, id, t)
end

local reserved = {
  shutdown = true, close = true, connect = true, publish = true, lookup = true, register = true,
  extend = true, init = true, new = true, is = true, address = true, authkey = true, pid = true,
  timeout = true, join = true, ping = true, super = true,
}

local function callable(v)
  if type(v) == "function" then return true end
  local mt = getmetatable(v)
  return type(mt) == "table" and mt.__call ~= nil
end

--[[
M:register(typeid, constructor): mgr:<typeid>(...) runs constructor(...) in the
server and returns a proxy whose methods are the object's, called by name.
Register before starting the manager: the server is forked then, and takes the
constructors it knows at that moment. Without a constructor, only names the
method on the client side (for a manager reached with connect).
]]
function BaseManager.register(cls, typeid, constructor)
  if type(cls) ~= "table" or rawget(cls, "_registry") == nil then
    check.error("bad self to 'register' (a manager class expected: M:register(typeid, constructor))")
  end
  if type(typeid) ~= "string" or not typeid:match("^[%a_][%w_]*$") then
    check.error("bad argument #1 to 'register' (typeid must be a name, got " .. tostring(typeid) .. ")")
  end
  if reserved[typeid] or typeid:sub(1, 1) == "_" then
    check.error("bad argument #1 to 'register' ('" .. typeid .. "' is taken by the manager itself)")
  end
  if constructor ~= nil and not callable(constructor) then
    check.error("bad argument #2 to 'register' (function expected, got " .. type(constructor) .. ")")
  end
  cls._registry[typeid] = constructor or false
  rawset(cls, typeid, function(self, ...) return create(self, typeid, ...) end)
end

-- Every typeid of cls and its ancestors, the nearest registration winning.
local function registry_of(cls)
  local all, chain = {}, {}
  local c = cls
  while c do
    local r = rawget(c, "_registry")
    if r then chain[#chain + 1] = r end
    c = rawget(c, "super")
  end
  for i = #chain, 1, -1 do
    for k, v in pairs(chain[i]) do all[k] = v end
  end
  return all
end

--[[
The server knows its built-in types by their constructors' identity, which a
copy made by the serializer (a server started through the fork server) would
lose: they travel as `true`, and server.run puts its own constructors back.
]]
local function builtins_by_name(registry)
  for typeid, ctor in pairs(registry) do
    local t = server.types[typeid]
    if t and t.new == ctor then registry[typeid] = true end
  end
  return registry
end

local OPTIONS = { "address", "authkey", "timeout", "initializer", "initargs", "context" }

local function check_options(opts, fname)
  check.options(opts, fname, OPTIONS)
  if opts.address ~= nil and type(opts.address) ~= "string" then
    check.error("bad argument #1 to '" .. fname .. "' (address must be a string, got " .. type(opts.address) .. ")")
  end
  if opts.authkey ~= nil and (type(opts.authkey) ~= "string" or opts.authkey == "") then
    check.error("bad argument #1 to '" .. fname .. "' (authkey must be a non-empty string)")
  end
  if opts.timeout ~= nil and (type(opts.timeout) ~= "number" or not (opts.timeout > 0)) then
    check.error("bad argument #1 to '" .. fname .. "' (timeout must be a positive number)")
  end
  if opts.initializer ~= nil and not callable(opts.initializer) then
    check.error("bad argument #1 to '" .. fname .. "' (initializer must be a function)")
  end
  if opts.context ~= nil then process.context_method(opts.context, fname) end
end

--[[
Manager{address =, authkey =, timeout =, initializer =, initargs =, context =}:
starts the server process (context: its start method, as Process's option). address: a Unix socket path or "host:port" (TCP; port 0 picks
one); default a socket in a new private directory. authkey: default 32 random
bytes. timeout: seconds a call may take (default 30) before TimeoutError.
]]
function BaseManager:init(opts)
  local cls = getmetatable(self)
  local fname = cls.__name
  if opts == nil then opts = {} end
  if type(opts) ~= "table" then
    check.error("bad argument #1 to '" .. fname .. "' (options table expected, got " .. type(opts) .. ")")
  end
  check_options(opts, fname)
  local authkey = opts.authkey or core.urandom(32)
  local address, dir, socket = opts.address, nil, nil
  if address == nil then
    local tmp = os.getenv("TMPDIR")
    if tmp == nil or tmp == "" then tmp = "/tmp" end
    dir = core.mkdtemp(tmp .. "/mplua-" .. getpid() .. "-XXXXXX")
    address = dir .. "/listener"
  end
  if address:find("/", 1, true) then socket = address end
  local ok, listener, bound = pcall(core.manager_listen, address)
  if not ok then
    if dir then os.remove(dir) end
    check.error((tostring(listener):gsub("to 'mp%.core%.manager_listen'", "to '" .. fname .. "'")))
  end
  counters[cls] = (counters[cls] or 0) + 1
  local cfg = {
    listener = listener, authkey = authkey, owner = getpid(), registry = builtins_by_name(registry_of(cls)),
    initializer = opts.initializer, initargs = opts.initargs, socket = socket, dir = dir,
  }
  -- context: the server's start method (the listener travels to a fork-server child).
  local p = process.Process { target = server.run, args = { cfg }, daemon = true,
                              name = fname .. "-" .. counters[cls], context = opts.context }
  ok, bound = pcall(function() p:start(); return bound end)
  listener:close()
  if not ok then
    if socket then os.remove(socket) end
    if dir then os.remove(dir) end
    error(bound, 0)
  end
  rawset(self, "address", bound)
  rawset(self, "authkey", authkey)
  rawset(self, "timeout", opts.timeout or DEFAULT_TIMEOUT)
  rawset(self, "pid", p.pid)
  rawset(self, "_process", p)
  rawset(self, "_owner", getpid())
  rawset(self, "_socket", socket)
  rawset(self, "_dir", dir)
  local cok, c = pcall(connect, bound, authkey, nil, self.timeout)
  if not cok then
    pcall(self.shutdown, self)
    error(c, 0)
  end
  rawset(self, "_token", c.token)
end

-- connect(address, authkey [, {timeout =}]): a manager object for a server started elsewhere.
local function connect_manager(cls, address, authkey, opts)
  if type(address) ~= "string" then
    check.error("bad argument #1 to 'connect' (address string expected, got " .. type(address) .. ")")
  end
  if type(authkey) ~= "string" then
    check.error("bad argument #2 to 'connect' (authkey string expected, got " .. type(authkey) .. ")")
  end
  local timeout = DEFAULT_TIMEOUT
  if opts ~= nil then
    if type(opts) ~= "table" then check.error("bad argument #3 to 'connect' (options table expected)") end
    check.options(opts, "connect", { "timeout" })
    timeout = opts.timeout or timeout
  end
  local c = connect(address, authkey, nil, timeout)
  local self = setmetatable({}, cls)
  rawset(self, "address", address)
  rawset(self, "authkey", authkey)
  rawset(self, "timeout", timeout)
  rawset(self, "pid", c.pid)
  rawset(self, "_token", c.token)
  return self
end

local function bind_connect(cls)
  cls.connect = function(a, ...)
    if a == cls then return connect_manager(cls, ...) end
    return connect_manager(cls, a, ...)
  end
end
bind_connect(BaseManager)

function BaseManager.extend(cls, name)
  local sub = class.Object.extend(cls, name)
  sub._registry = {}
  bind_connect(sub)
  return sub
end

-- mgr:publish(name, proxy): names an object so that other clients can lookup(name) it.
function BaseManager:publish(name, proxy, ...)
  check.self(self, BaseManager, "publish")
  check.nargs("publish", 2, select("#", ...) + 2, (...))
  if type(name) ~= "string" then check.error("bad argument #1 to 'publish' (string expected, got " .. type(name) .. ")") end
  local st = type(proxy) == "table" and rawget(proxy, KEY)
  if type(st) ~= "table" then check.error("bad argument #2 to 'publish' (proxy expected, got " .. type(proxy) .. ")") end
  if st.s ~= rawget(self, "_token") then check.error("bad argument #2 to 'publish' (a proxy of another manager)") end
  manager_call(self, nil, "publish", name, proxy)
end

-- mgr:lookup(name) --> the proxy of the object published under name
function BaseManager:lookup(name, ...)
  check.self(self, BaseManager, "lookup")
  check.nargs("lookup", 1, select("#", ...) + 1, (...))
  if type(name) ~= "string" then check.error("bad argument #1 to 'lookup' (string expected, got " .. type(name) .. ")") end
  local id, typeid = manager_call(self, nil, "lookup", name)
  return make_proxy(self, id, typeid)
end

-- mgr:ping([timeout]): one round trip the server's engine answers (a health check).
function BaseManager:ping(timeout, ...)
  check.self(self, BaseManager, "ping")
  check.nargs("ping", 1, select("#", ...) + 1, (...))
  if timeout ~= nil and type(timeout) ~= "number" then check.argerror(1, "ping", "number expected, got " .. check.typename(timeout)) end
  if rawget(self, "_closed") then check.error("the manager is shut down") end
  local c = conns[self._token]
  if c == nil or c.client:closed() then c = connect(self.address, self.authkey, self._token, self.timeout) end
  return c.client:ping(timeout or self.timeout)
end

-- mgr:count() --> the number of objects the server holds
function BaseManager:count(...)
  check.nargs("count", 0, select("#", ...), (...))
  return (manager_call(self, nil, "count"))
end

--[[
mgr:shutdown(): stops the server and removes its socket directory; proxies
then raise ConnectionError. Only the process that started the manager may;
also run by <close> and __gc (there only in that process).
]]
function BaseManager:shutdown(...)
  check.self(self, BaseManager, "shutdown")
  check.nargs("shutdown", 0, select("#", ...), (...))
  if rawget(self, "_closed") then return end
  local owner = rawget(self, "_owner")
  if owner == nil then check.error("shutdown: this manager was reached with connect; its owner shuts it down") end
  if owner ~= getpid() then check.error("shutdown: only the process that started the manager can shut it down") end
  rawset(self, "_closed", true)
  local c = conns[self._token]
  if c and not c.client:closed() then pcall(c.client.call, c.client, 5, 0, "shutdown") end
  local p = self._process
  pcall(function()
    p:join(5)
    if p:is_alive() then p:terminate(); p:join(2) end
    if p:is_alive() then p:kill(); p:join() end
  end)
  if c then
    c.client:close()
    conns[self._token] = nil
  end
  if self._socket then os.remove(self._socket) end
  if self._dir then os.remove(self._dir) end
end

function BaseManager:join(timeout, ...)
  check.self(self, BaseManager, "join")
  check.nargs("join", 1, select("#", ...) + 1, (...))
  local p = rawget(self, "_process")
  if p == nil then check.error("join: this manager was not started by this process") end
  p:join(timeout)
end

function BaseManager:__close() self:shutdown() end

function BaseManager:__gc()
  if rawget(self, "_owner") == getpid() and not rawget(self, "_closed") then pcall(self.shutdown, self) end
end

function BaseManager:__tostring()
  return string.format("<%s pid=%s address=%s%s>", getmetatable(self).__name, tostring(self.pid),
    tostring(self.address), rawget(self, "_closed") and " shut down" or "")
end

-- mp.Manager(): the standard types.
local SyncManager = BaseManager:extend("Manager")   -- Python's SyncManager, named as mp.Manager
for _, typeid in ipairs { "dict", "list", "Namespace", "Lock", "RLock", "Semaphore", "BoundedSemaphore",
                          "Condition", "Event", "Barrier", "Queue", "JoinableQueue", "Value", "Array" } do
  SyncManager:register(typeid, server.types[typeid].new)
end
M.Manager = SyncManager
M.SyncManager = SyncManager

return M

--[[
The Manager's server process: it owns the managed objects and serves every
client over one poll() loop (src/engine/mserver.c). lua/mp/manager.lua starts
it as an mp.Process whose target is M.run; the client side lives there too.

A request is (object id, method, arguments...); object 0 is the manager
itself (create, publish, lookup, shutdown). A reply is one of
  "ok", results...        the method's results
  "raise", error object   raised as it is at the caller (Empty, Full,
                          BrokenBarrierError, or RemoteError with the
                          server's traceback for an error in user code)
  "usage", message        misuse of a built-in type, raised as a plain error
                          at the caller's line (as mp.Lock's would be)

Blocking methods (acquire, wait, get, put, join...) never block the loop: a
call that must wait runs in a coroutine that parks on the object's waiter set
and is resumed when the object changes, its deadline passes, or its client
leaves. Who owns a lock is the client's identity (one per process, whatever
its connections): when the last connection of an identity closes, the
process is gone, and the locks it held are released; the next acquire
returns true, "owner died", as mp.Lock's does.

Lifetime: objects live as long as the server (see docs/manager.md for why
there is no reference counting).

Deaths. The server is the only writer of its objects and runs one request
at a time: a method runs to its end, or to a park() where the object is
consistent, before anything else. A client that dies can therefore only
leave: its reply undelivered (a Queue item handed to a getter that died
before reading the reply is lost, as in Python); its parked calls, resumed
with "gone" and unwound without taking anything; and, when it was the last
connection of its process, the locks that process held, released with
"owner died" for the next acquirer. The server dying loses every object (they
live in its memory only); clients get ConnectionError at once.
]]
local core = require "mp.core"
local errors = require "mp.errors"

local M = {}

local now = core.time
local running, yield, resume, create = coroutine.running, coroutine.yield, coroutine.resume, coroutine.create
local pack, unpack = table.pack, table.unpack
local KEY = "\0mp"                -- raw field holding a proxy's state (manager.lua)

-- ---------------------------------------------------------------------------
-- Errors

-- Misuse of a built-in type: raised as a plain error at the caller.
local Usage = {}
local function usage(fmt, ...)
  error(setmetatable({ message = string.format(fmt, ...) }, Usage), 0)
end
local function argerror(n, fname, msg)
  usage("bad argument #%d to '%s' (%s)", n, fname, msg)
end
M.usage = usage

-- An error object to raise as it is (Empty, Full, BrokenBarrierError).
local Raise = {}
local function raise(kind, message)
  error(setmetatable({ err = errors.new(kind, message) }, Raise), 0)
end

local server_pid = 0

-- xpcall's handler: usage and raise pass through; anything else becomes a RemoteError.
local function handler(e)
  local mt = getmetatable(e)
  if mt == Usage or mt == Raise then return e end
  if errors.classes.Error:is(e) then return setmetatable({ err = e }, Raise) end
  local message = type(e) == "string" and e or tostring(e)
  local ok, s = pcall(tostring, e)
  if ok then message = s end
  local fields = { traceback = debug.traceback("", 2):gsub("^\n", ""), pid = server_pid }
  if type(e) ~= "string" then fields.value = e end
  return setmetatable({ err = errors.new("RemoteError", message, fields) }, Raise)
end

-- ---------------------------------------------------------------------------
-- Waiting: coroutines parked on waiter sets

local current                 -- the client (connection record) whose call runs now
local timers = {}             -- waiter --> true, for waiters with a deadline
local runnable, nrun = {}, 0  -- waiters to resume, in order
local co_client = setmetatable({}, { __mode = "k" })   -- coroutine --> client
local seqno = 0

local function schedule(w, why)
  if w.why then return end
  w.why = why
  nrun = nrun + 1
  runnable[nrun] = w
end

--[[
Parks the running call on set q until wake(q), the deadline (absolute, nil
for none) or its client leaving. Returns "woken", "timeout" or "gone". Must run
in a coroutine (see dispatch: calls that may wait run in one).
]]
local function park(q, deadline)
  local co = running()
  local client = co_client[co]
  if client == nil then error("mp.manager: park outside a coroutine", 0) end
  if client.gone then return "gone" end
  if deadline and deadline <= now() then return "timeout" end
  seqno = seqno + 1
  local w = { co = co, client = client, deadline = deadline, seq = seqno }
  q[w] = true
  if deadline then timers[w] = true end
  client.waiters[w] = true
  local why = yield()
  q[w] = nil
  timers[w] = nil
  client.waiters[w] = nil
  current = client
  -- Woken after its client left (in the same round): it must take nothing.
  if client.gone then why = "gone" end
  return why, w
end

local function wake(q)
  for w in pairs(q) do schedule(w, "woken") end
end

-- The waiters of q in arrival order (Condition.notify wakes the oldest first).
local function in_order(q)
  local list = {}
  for w in pairs(q) do list[#list + 1] = w end
  table.sort(list, function(a, b) return a.seq < b.seq end)
  return list
end

-- Deadline of a (block, timeout) pair, Python's way; a number as block is the timeout.
-- Returns nil for forever, or an absolute time (now or before: do not wait).
local function deadline_of(block, timeout, fname)
  if type(block) == "table" then
    block, timeout = block.block, block.timeout
    if type(block) == "number" then argerror(1, fname, "block must be a boolean") end
  elseif block ~= nil and type(block) ~= "boolean" and type(block) ~= "number" then
    argerror(1, fname, "boolean, number (a timeout) or table expected, got " .. type(block))
  end
  if type(block) == "number" then block, timeout = true, block end
  if block == false then
    if timeout ~= nil then argerror(2, fname, "a timeout cannot be given with block = false") end
    return -math.huge
  end
  if timeout == nil then return nil end
  if type(timeout) ~= "number" or timeout ~= timeout then argerror(2, fname, "timeout must be a number") end
  return now() + math.max(timeout, 0)
end

-- ---------------------------------------------------------------------------
-- Lock ownership by client identity

local held = {}               -- identity --> { [lock] = true }

local function take(lock, ident, count)
  lock.owner, lock.count = ident, count or 1
  local h = held[ident]
  if not h then h = {}; held[ident] = h end
  h[lock] = true
  if lock.died then
    lock.died = false
    return true, "owner died"
  end
  return true
end

local function drop(lock)
  local h = held[lock.owner]
  if h then h[lock] = nil end
  lock.owner, lock.count = nil, 0
  wake(lock.waiters)
end

-- A process is gone: its locks go to the next acquirer, who is told "owner died".
local function owner_died(ident)
  local h = held[ident]
  held[ident] = nil
  if not h then return end
  for lock in pairs(h) do
    if lock.owner == ident then
      lock.owner, lock.count, lock.died = nil, 0, true
      wake(lock.waiters)
    end
  end
end

-- ---------------------------------------------------------------------------
-- Built-in types: a constructor and a method table each.
-- Methods get (object, args...); `current` is the calling client.

local types = {}              -- typeid --> { new = f, methods = {...}, blocking = {...} }
M.types = types

local function repr(v, depth, seen)
  local t = type(v)
  if t == "string" then return string.format("%q", v) end
  if t ~= "table" then return tostring(v) end
  local st = rawget(v, KEY)
  if type(st) == "table" then return string.format("<%s proxy #%s>", tostring(st.t), tostring(st.i)) end
  depth = depth or 0
  seen = seen or {}
  if seen[v] or depth > 3 then return "{...}" end
  seen[v] = true
  local parts, n = {}, #v
  for i = 1, n do parts[#parts + 1] = repr(v[i], depth + 1, seen) end
  local keys = {}
  for k in pairs(v) do
    if not (math.type(k) == "integer" and k >= 1 and k <= n) then keys[#keys + 1] = k end
  end
  table.sort(keys, function(a, b)
    local ta, tb = type(a), type(b)
    if ta ~= tb then return ta < tb end
    if ta == "number" or ta == "string" then return a < b end
    return tostring(a) < tostring(b)
  end)
  for _, k in ipairs(keys) do
    if #parts >= 100 then parts[#parts + 1] = "..."; break end
    local ks = type(k) == "string" and k:match("^[%a_][%w_]*$") and k or "[" .. repr(k, depth + 1, seen) .. "]"
    parts[#parts + 1] = ks .. " = " .. repr(v[k], depth + 1, seen)
  end
  seen[v] = nil
  return "{" .. table.concat(parts, ", ") .. "}"
end
M.repr = repr

local my_token
local objects = {}            -- id --> object
local object_type = {}        -- id --> typeid

-- The object behind p when p is a proxy of this very server (its own calls would wait for itself).
local function own_object(p)
  if type(p) ~= "table" then return nil end
  local st = rawget(p, KEY)
  if type(st) ~= "table" or st.s ~= my_token then return nil end
  return objects[st.i], object_type[st.i]
end

-- The contents of t for update/extend: a proxy of this server is read directly.
local function contents(t, fname)
  if type(t) ~= "table" then argerror(1, fname, "table expected, got " .. type(t)) end
  local obj, typeid = own_object(t)
  if obj == nil then return t end
  if typeid == "dict" or typeid == "list" then return obj.t end
  if typeid == "Namespace" then return obj end
  argerror(1, fname, "a table, dict, list or Namespace expected, got a " .. tostring(typeid))
end

local function check_key(k, fname)
  if k == nil then argerror(1, fname, "key is nil") end
  if k ~= k then argerror(1, fname, "key is NaN") end
end

-- dict: a Lua table and its number of keys.
types.dict = {
  new = function(init)
    local d = { t = {}, n = 0 }
    if init ~= nil then
      if type(init) ~= "table" then argerror(1, "dict", "table expected, got " .. type(init)) end
      for k, v in pairs(init) do d.t[k] = v; d.n = d.n + 1 end
    end
    return d
  end,
  methods = {
    __getitem = function(d, k) if k == nil or k ~= k then return nil end return d.t[k] end,
    __setitem = function(d, k, v)
      check_key(k, "__newindex")
      local t = d.t
      local old = t[k]
      if old == nil and v ~= nil then d.n = d.n + 1 elseif old ~= nil and v == nil then d.n = d.n - 1 end
      t[k] = v
    end,
    __len = function(d) return d.n end,
    __repr = function(d) return repr(d.t) end,
    get = function(d, k, default)
      local v = (k ~= nil and k == k) and d.t[k] or nil
      if v == nil then return default end
      return v
    end,
    pop = function(d, k, default)
      local v = (k ~= nil and k == k) and d.t[k] or nil
      if v == nil then return default end
      d.t[k] = nil
      d.n = d.n - 1
      return v
    end,
    popitem = function(d)
      local k, v = next(d.t)
      if k == nil then usage("popitem(): dictionary is empty") end
      d.t[k] = nil
      d.n = d.n - 1
      return k, v
    end,
    setdefault = function(d, k, default)
      check_key(k, "setdefault")
      local v = d.t[k]
      if v ~= nil then return v end
      if default ~= nil then d.t[k] = default; d.n = d.n + 1 end
      return default
    end,
    update = function(d, other)
      other = contents(other, "update")
      local t = d.t
      for k, v in pairs(other) do
        if t[k] == nil then d.n = d.n + 1 end
        t[k] = v
      end
    end,
    keys = function(d)
      local r, i = {}, 0
      for k in pairs(d.t) do i = i + 1; r[i] = k end
      return r
    end,
    values = function(d)
      local r, i = {}, 0
      for _, v in pairs(d.t) do i = i + 1; r[i] = v end
      return r
    end,
    items = function(d)
      local r, i = {}, 0
      for k, v in pairs(d.t) do i = i + 1; r[i] = { k, v } end
      return r
    end,
    copy = function(d) return d.t end,
    clear = function(d) d.t, d.n = {}, 0 end,
    has = function(d, k) return k ~= nil and k == k and d.t[k] ~= nil end,
  },
}

-- list: a sequence and its length; Lua's 1-based positions, negative ones count from the end.
local function list_pos(l, i, fname, arg)
  if math.type(i) ~= "integer" then
    argerror(arg or 1, fname, "integer index expected, got " .. (math.type(i) or type(i)))
  end
  if i < 0 then i = l.n + 1 + i end
  return i
end

local function check_item(v, fname, arg)
  if v == nil then argerror(arg or 1, fname, "a list cannot hold nil") end
end

types.list = {
  new = function(init)
    local l = { t = {}, n = 0 }
    if init ~= nil then
      if type(init) ~= "table" then argerror(1, "list", "table expected, got " .. type(init)) end
      local n = #init
      for i = 1, n do
        if init[i] == nil then argerror(1, "list", "a list cannot hold nil") end
        l.t[i] = init[i]
      end
      l.n = n
    end
    return l
  end,
  methods = {
    __getitem = function(l, i)
      if math.type(i) ~= "integer" then return nil end
      if i < 0 then i = l.n + 1 + i end
      return l.t[i]
    end,
    __setitem = function(l, i, v)
      i = list_pos(l, i, "__newindex")
      if v == nil then usage("cannot store nil in a list (use l:pop(i) to remove an item)") end
      if i == l.n + 1 then l.n = i
      elseif i < 1 or i > l.n then usage("list index %d out of range (1..%d)", i, l.n + 1) end
      l.t[i] = v
    end,
    __len = function(l) return l.n end,
    __repr = function(l) return repr(l.t) end,
    append = function(l, v)
      check_item(v, "append")
      local n = l.n + 1
      l.t[n] = v
      l.n = n
    end,
    extend = function(l, t)
      local own = own_object(t)
      t = contents(t, "extend")
      local n = l.n
      local count = (own and own.t == t) and own.n or #t   -- a list of this server knows its length
      for i = 1, count do
        if t[i] ~= nil then n = n + 1; l.t[n] = t[i] end
      end
      l.n = n
    end,
    insert = function(l, i, v)
      i = list_pos(l, i, "insert")
      check_item(v, "insert", 2)
      if i < 1 then i = 1 elseif i > l.n + 1 then i = l.n + 1 end   -- Python clamps
      table.insert(l.t, i, v)
      l.n = l.n + 1
    end,
    pop = function(l, i)
      if l.n == 0 then usage("pop from empty list") end
      if i == nil then i = l.n else i = list_pos(l, i, "pop") end
      if i < 1 or i > l.n then usage("pop index %d out of range (1..%d)", i, l.n) end
      local v = table.remove(l.t, i)
      l.n = l.n - 1
      return v
    end,
    remove = function(l, v)
      for i = 1, l.n do
        if l.t[i] == v then table.remove(l.t, i); l.n = l.n - 1; return end
      end
      usage("list.remove(x): x not in list")
    end,
    index = function(l, v, start, stop)
      start = start and list_pos(l, start, "index", 2) or 1
      stop = stop and list_pos(l, stop, "index", 3) or l.n
      for i = math.max(start, 1), math.min(stop, l.n) do
        if l.t[i] == v then return i end
      end
      usage("list.index(x): x not in list")
    end,
    count = function(l, v)
      local c = 0
      for i = 1, l.n do if l.t[i] == v then c = c + 1 end end
      return c
    end,
    sort = function(l, cmp)
      if cmp ~= nil and type(cmp) ~= "function" then argerror(1, "sort", "function expected, got " .. type(cmp)) end
      local ok, err = pcall(table.sort, l.t, cmp)
      if not ok then usage("sort: %s", tostring(err)) end
    end,
    reverse = function(l)
      local t, n = l.t, l.n
      for i = 1, n // 2 do t[i], t[n + 1 - i] = t[n + 1 - i], t[i] end
    end,
    clear = function(l) l.t, l.n = {}, 0 end,
    copy = function(l) return l.t end,
  },
}

-- Namespace: fields.
types.Namespace = {
  new = function(init)
    local ns = {}
    if init ~= nil then
      if type(init) ~= "table" then argerror(1, "Namespace", "table expected, got " .. type(init)) end
      for k, v in pairs(init) do ns[k] = v end
    end
    return ns
  end,
  methods = {
    __getattr = function(ns, k) if k == nil or k ~= k then return nil end return ns[k] end,
    __setattr = function(ns, k, v) check_key(k, "__newindex"); ns[k] = v end,
    __repr = function(ns)
      local s = repr(ns)
      return "Namespace(" .. s:sub(2, -2) .. ")"
    end,
    copy = function(ns) return ns end,
  },
}

-- Value and Array: typed, by mp.RawValue / mp.RawArray in the server (Python's
-- manager stores any object; typed storage gives mp.Value's checks).
local function typed(fname, f, ...)
  local ok, r = pcall(f, ...)
  if not ok then
    local msg = tostring(r):gsub("^[^\n]-:%d+: ", ""):gsub("^bad argument #(%d+) to '[^']*'", "bad argument #%1 to '" .. fname .. "'")
    usage("%s", msg)
  end
  return r
end

types.Value = {
  new = function(typecode, value)
    if type(typecode) ~= "string" then argerror(1, "Value", "typecode string expected, got " .. type(typecode)) end
    local v = typed("Value", core.RawValue, typecode, value)
    return { v = v, typecode = typecode }
  end,
  methods = {
    get = function(o) return o.v.value end,
    set = function(o, x) typed("set", function() o.v.value = x end) end,
    __repr = function(o)
      return string.format("Value(%q, %s)", o.typecode, repr(o.v.value))
    end,
  },
}

types.Array = {
  new = function(typecode, init)
    if type(typecode) ~= "string" then argerror(1, "Array", "typecode string expected, got " .. type(typecode)) end
    return { a = typed("Array", core.RawArray, typecode, init), typecode = typecode }
  end,
  methods = {
    __getitem = function(o, i)
      if math.type(i) ~= "integer" or i < 1 or i > #o.a then return nil end
      return o.a[i]
    end,
    __setitem = function(o, i, v)
      if math.type(i) ~= "integer" then argerror(1, "__newindex", "integer index expected") end
      typed("__newindex", function() o.a[i] = v end)
    end,
    __len = function(o) return #o.a end,
    tolist = function(o) return o.a:tolist() end,
    __repr = function(o) return string.format("Array(%q, %s)", o.typecode, repr(o.a:tolist())) end,
  },
}

-- Lock and RLock.
local function new_lock(recursive)
  return { recursive = recursive, owner = nil, count = 0, waiters = {}, died = false }
end

local function lock_acquire(lock, block, timeout)
  local me = current.ident
  local deadline = deadline_of(block, timeout, "acquire")
  if lock.recursive and lock.owner == me then
    lock.count = lock.count + 1
    return true
  end
  while lock.owner ~= nil do
    if deadline and deadline <= now() then return false end
    local why = park(lock.waiters, deadline)
    if why == "gone" then return false end
    me = current.ident
  end
  return take(lock, me)
end

local function lock_release(lock)
  if lock.owner == nil then
    usage(lock.recursive and "cannot release un-acquired lock" or "release unlocked lock")
  end
  if lock.recursive then
    if lock.owner ~= current.ident then usage("cannot release un-acquired lock") end
    lock.count = lock.count - 1
    if lock.count > 0 then return end
  end
  drop(lock)
end

local lock_methods = {
  acquire = lock_acquire,
  release = lock_release,
  locked = function(lock) return lock.owner ~= nil end,
  __repr = function(lock)
    return string.format("<%s %s>", lock.recursive and "RLock" or "Lock", lock.owner and "locked" or "unlocked")
  end,
}
types.Lock = { new = function() return new_lock(false) end, methods = lock_methods, blocking = { acquire = "try" } }
types.RLock = { new = function() return new_lock(true) end, methods = lock_methods, blocking = { acquire = "try" } }

-- Semaphore and BoundedSemaphore.
local function new_semaphore(fname, bounded)
  return function(value)
    if value == nil then value = 1 end
    if math.type(value) ~= "integer" then argerror(1, fname, "integer expected, got " .. type(value)) end
    if value < 0 then argerror(1, fname, "semaphore initial value must be >= 0") end
    return { value = value, initial = bounded and value or nil, waiters = {} }
  end
end

local semaphore_methods = {
  acquire = function(s, block, timeout)
    local deadline = deadline_of(block, timeout, "acquire")
    while s.value == 0 do
      if deadline and deadline <= now() then return false end
      if park(s.waiters, deadline) == "gone" then return false end
    end
    s.value = s.value - 1
    return true
  end,
  release = function(s, n)
    n = n or 1
    if math.type(n) ~= "integer" or n < 1 then argerror(1, "release", "n must be a positive integer") end
    if s.initial and s.value + n > s.initial then usage("Semaphore released too many times") end
    s.value = s.value + n
    wake(s.waiters)
  end,
  get_value = function(s) return s.value end,
  __repr = function(s) return string.format("<Semaphore value=%d>", s.value) end,
}
types.Semaphore = { new = new_semaphore("Semaphore", false), methods = semaphore_methods, blocking = { acquire = "try" } }
types.BoundedSemaphore = { new = new_semaphore("BoundedSemaphore", true), methods = semaphore_methods,
                           blocking = { acquire = "try" } }

-- Condition over a Lock or RLock of this server (default: a new RLock).

types.Condition = {
  new = function(lock)
    if lock == nil then return { lock = new_lock(true), waiters = {} } end
    local obj, typeid = own_object(lock)
    if obj == nil or (typeid ~= "Lock" and typeid ~= "RLock") then
      argerror(1, "Condition", "a Lock or RLock of this manager expected")
    end
    return { lock = obj, waiters = {} }
  end,
  methods = {
    acquire = function(c, block, timeout) return lock_acquire(c.lock, block, timeout) end,
    release = function(c) return lock_release(c.lock) end,
    wait = function(c, timeout)
      local lock = c.lock
      local me = current.ident
      if lock.owner ~= me then usage("cannot wait on un-acquired lock") end
      local deadline
      if timeout ~= nil then
        if type(timeout) ~= "number" then argerror(1, "wait", "timeout must be a number") end
        deadline = now() + math.max(timeout, 0)
      end
      local count = lock.count
      drop(lock)
      local notified = false
      while true do
        local why, w = park(c.waiters, deadline)
        if why == "gone" then return false end
        if w and w.notified then notified = true; break end
        if why == "timeout" then break end
      end
      -- Take the lock back (at the depth it had) before returning, as Python does.
      while lock.owner ~= nil do
        if park(lock.waiters, nil) == "gone" then return false end
      end
      local _, died = take(lock, me, count)
      return notified, died
    end,
    notify = function(c, n)
      n = n or 1
      if c.lock.owner ~= current.ident then usage("cannot notify on un-acquired lock") end
      for _, w in ipairs(in_order(c.waiters)) do
        if n <= 0 then break end
        if not w.notified then
          w.notified = true
          schedule(w, "woken")
          n = n - 1
        end
      end
    end,
    notify_all = function(c)
      if c.lock.owner ~= current.ident then usage("cannot notify on un-acquired lock") end
      for w in pairs(c.waiters) do w.notified = true; schedule(w, "woken") end
    end,
    __repr = function(c) return string.format("<Condition %s>", c.lock.owner and "locked" or "unlocked") end,
  },
  blocking = { acquire = "try", wait = "always" },
}

-- Event.
types.Event = {
  new = function() return { flag = false, waiters = {} } end,
  methods = {
    set = function(e) e.flag = true; wake(e.waiters) end,
    clear = function(e) e.flag = false end,
    is_set = function(e) return e.flag end,
    wait = function(e, timeout)
      local deadline = timeout ~= nil and now() + math.max(timeout, 0) or nil
      while not e.flag do
        local why = park(e.waiters, deadline)
        if why ~= "woken" then break end
      end
      return e.flag
    end,
    __repr = function(e) return string.format("<Event %s>", e.flag and "set" or "unset") end,
  },
  blocking = { wait = "try" },
}

-- Barrier: Python's threading.Barrier; the action runs in the server.
local FILLING, DRAINING, RESETTING, BROKEN = 0, 1, -1, -2

local function barrier_broken() raise("BrokenBarrierError", "the barrier is broken") end

local function barrier_break(b)
  b.state = BROKEN
  wake(b.waiters)
end

types.Barrier = {
  new = function(parties, action, timeout)
    if type(parties) == "table" then parties, action, timeout = parties.parties, parties.action, parties.timeout end
    if math.type(parties) ~= "integer" or parties < 1 then argerror(1, "Barrier", "parties must be a positive integer") end
    if action ~= nil and type(action) ~= "function" then argerror(2, "Barrier", "function expected for action") end
    if timeout ~= nil and type(timeout) ~= "number" then argerror(3, "Barrier", "number expected for timeout") end
    return { parties = parties, action = action, timeout = timeout, state = FILLING, count = 0, waiters = {} }
  end,
  methods = {
    wait = function(b, timeout)
      if timeout == nil then timeout = b.timeout end
      local deadline = timeout and now() + math.max(timeout, 0)
      while b.state == DRAINING or b.state == RESETTING do
        if park(b.waiters, nil) == "gone" then return end
      end
      if b.state < 0 then barrier_broken() end
      local index = b.count
      b.count = index + 1
      local ok, err = pcall(function()
        if index + 1 == b.parties then
          if b.action then
            local aok, aerr = pcall(b.action)
            if not aok then barrier_break(b); error(aerr, 0) end
          end
          b.state = DRAINING
          wake(b.waiters)
        else
          while b.state == FILLING do
            local why = park(b.waiters, deadline)
            if why == "gone" then barrier_break(b); return end
            if why == "timeout" and b.state == FILLING then barrier_break(b); barrier_broken() end
          end
          if b.state < 0 then barrier_broken() end
        end
      end)
      b.count = b.count - 1
      if b.count == 0 and (b.state == RESETTING or b.state == DRAINING) then
        b.state = FILLING
        wake(b.waiters)
      end
      if not ok then error(err, 0) end
      return index
    end,
    reset = function(b)
      if b.count > 0 then
        if b.state == FILLING or b.state == BROKEN then b.state = RESETTING end
      else
        b.state = FILLING
      end
      wake(b.waiters)
    end,
    abort = function(b) barrier_break(b) end,
    parties = function(b) return b.parties end,
    n_waiting = function(b) return b.state == FILLING and b.count or 0 end,
    broken = function(b) return b.state == BROKEN end,
    __repr = function(b)
      return string.format("Barrier(parties=%d, n_waiting=%d, broken=%s)", b.parties,
        b.state == FILLING and b.count or 0, tostring(b.state == BROKEN))
    end,
  },
  blocking = { wait = "always" },
}

-- Queue and JoinableQueue: a ring of items (nil kept by a marker).
local NIL = {}

local function new_queue(fname)
  return function(maxsize)
    if type(maxsize) == "table" then maxsize = maxsize.maxsize end
    maxsize = maxsize or 0
    if math.type(maxsize) ~= "integer" then argerror(1, fname, "maxsize must be an integer") end
    return { items = {}, head = 1, tail = 0, maxsize = maxsize, getters = {}, putters = {},
             unfinished = 0, joiners = {} }
  end
end

local function qsize(q) return q.tail - q.head + 1 end

local function q_put(q, v, block, timeout)
  local deadline = deadline_of(block, timeout, "put")
  while q.maxsize > 0 and qsize(q) >= q.maxsize do
    if deadline and deadline <= now() then raise("Full", "the queue is full") end
    if park(q.putters, deadline) == "gone" then return end
  end
  q.tail = q.tail + 1
  if v == nil then v = NIL end
  q.items[q.tail] = v
  q.unfinished = q.unfinished + 1
  wake(q.getters)
end

local function q_get(q, block, timeout)
  local deadline = deadline_of(block, timeout, "get")
  while qsize(q) == 0 do
    if deadline and deadline <= now() then raise("Empty", "the queue is empty") end
    if park(q.getters, deadline) == "gone" then return end
  end
  local v = q.items[q.head]
  q.items[q.head] = nil
  q.head = q.head + 1
  wake(q.putters)
  if v == NIL then return nil end
  return v
end

local queue_methods = {
  put = q_put,
  get = q_get,
  put_nowait = function(q, v) return q_put(q, v, false) end,
  get_nowait = function(q) return q_get(q, false) end,
  qsize = qsize,
  empty = function(q) return qsize(q) == 0 end,
  full = function(q) return q.maxsize > 0 and qsize(q) >= q.maxsize end,
  task_done = function(q)
    if q.unfinished <= 0 then usage("task_done() called too many times") end
    q.unfinished = q.unfinished - 1
    if q.unfinished == 0 then wake(q.joiners) end
  end,
  join = function(q)
    while q.unfinished > 0 do
      if park(q.joiners, nil) == "gone" then return end
    end
  end,
  __repr = function(q) return string.format("<Queue qsize=%d>", qsize(q)) end,
}
types.Queue = { new = new_queue("Queue"), methods = queue_methods,
                blocking = { put = "try", get = "try", join = "try" } }
types.JoinableQueue = { new = new_queue("JoinableQueue"), methods = queue_methods,
                        blocking = { put = "try", get = "try", join = "try" } }

-- The most arguments each built-in method takes: more is an error, as for mp's
-- own objects (a surplus argument is more often a mistake than not).
local function nargs(typeid, t)
  types[typeid].nargs = t
end
nargs("dict", { __getitem = 1, __setitem = 2, __len = 0, __repr = 0, get = 2, pop = 2, popitem = 0,
                setdefault = 2, update = 1, keys = 0, values = 0, items = 0, copy = 0, clear = 0, has = 1 })
nargs("list", { __getitem = 1, __setitem = 2, __len = 0, __repr = 0, append = 1, extend = 1, insert = 2,
                pop = 1, remove = 1, index = 3, count = 1, sort = 1, reverse = 0, clear = 0, copy = 0 })
nargs("Namespace", { __getattr = 1, __setattr = 2, __repr = 0, copy = 0 })
nargs("Value", { get = 0, set = 1, __repr = 0 })
nargs("Array", { __getitem = 1, __setitem = 2, __len = 0, tolist = 0, __repr = 0 })
nargs("Lock", { acquire = 2, release = 0, locked = 0, __repr = 0 })
nargs("RLock", { acquire = 2, release = 0, locked = 0, __repr = 0 })
nargs("Semaphore", { acquire = 2, release = 1, get_value = 0, __repr = 0 })
nargs("BoundedSemaphore", { acquire = 2, release = 1, get_value = 0, __repr = 0 })
nargs("Condition", { acquire = 2, release = 0, wait = 1, notify = 1, notify_all = 0, __repr = 0 })
nargs("Event", { set = 0, clear = 0, is_set = 0, wait = 1, __repr = 0 })
nargs("Barrier", { wait = 1, reset = 0, abort = 0, parties = 0, n_waiting = 0, broken = 0, __repr = 0 })
nargs("Queue", { put = 3, get = 2, put_nowait = 1, get_nowait = 0, qsize = 0, empty = 0, full = 0,
                 task_done = 0, join = 0, __repr = 0 })
nargs("JoinableQueue", types.Queue.nargs)

local function surplus(method, max, n, ...)
  if n <= max then return nil end
  local v = select(max + 1, ...)
  local what = v == nil and "nil" or type(v)
  return setmetatable({ message = string.format("bad argument #%d to '%s' (no argument expected here, got %s)",
    max + 1, method, what) }, Usage)
end

-- ---------------------------------------------------------------------------
-- The loop

local srv                     -- the engine (core.manager_server)
local clients = {}            -- connection id --> { id =, pid =, ident =, gone =, waiters =, calls = }
local idents = {}             -- identity --> number of open connections
local names = {}              -- published name --> object id
local next_id = 0
local registry                -- typeid --> constructor (from the manager class)
local stopping = false
local NEED_CO = {}            -- raised by park outside a coroutine: run the call in one
local builtin_of = {}         -- object id --> its built-in type's methods (nil: a registered type)
local blocking_of = {}        -- object id --> which of those may wait
local nargs_of = {}           -- object id --> the most arguments of each of those

local function usage_error(fmt, ...)
  return setmetatable({ message = string.format(fmt, ...) }, Usage)
end

-- Replies to a call with what xpcall(f, handler, ...) returned (nothing for one-way calls).
local function send_reply(client, seq, ok, ...)
  if seq == 0 then
    if not ok then
      local e = ...
      local text = getmetatable(e) == Usage and e.message or tostring(e.err)
      io.stderr:write("mp manager: a one-way request failed: ", text, "\n")
    end
    return
  end
  if client.gone then return end
  local sent, err
  if ok then
    sent, err = pcall(srv.reply, srv, client.id, seq, "ok", ...)
  else
    local e = ...
    if getmetatable(e) == Usage then
      sent, err = pcall(srv.reply, srv, client.id, seq, "usage", e.message)
    else
      e = e.err
      sent, err = pcall(srv.reply, srv, client.id, seq, "raise", e)
      if not sent and rawget(e, "value") ~= nil then   -- the error's value cannot travel: keep its text
        e.value = nil
        sent, err = pcall(srv.reply, srv, client.id, seq, "raise", e)
      end
    end
  end
  if not sent then
    pcall(srv.reply, srv, client.id, seq, "raise",
      errors.new("RemoteError", "the manager could not send the result: " .. tostring(err), { pid = server_pid }))
  end
end

-- After a resume: a finished coroutine replies with its results.
local function resumed(co, client, ok, ...)
  if coroutine.status(co) ~= "dead" then return end
  local seq = client.calls[co]
  client.calls[co] = nil
  if ok then return send_reply(client, seq, ...) end
  return send_reply(client, seq, false, handler((...)))
end

-- Runs f(obj, ...) in a coroutine of its own; it replies when it returns.
local function spawn(client, seq, f, obj, ...)
  local co = create(function(...) return xpcall(f, handler, ...) end)
  co_client[co] = client
  client.calls = client.calls or {}
  client.calls[co] = seq
  current = client
  return resumed(co, client, resume(co, obj, ...))
end

local function run_ready()
  local i = 1
  while i <= nrun do
    local w = runnable[i]
    runnable[i] = false
    i = i + 1
    current = w.client
    resumed(w.co, w.client, resume(w.co, w.why))
  end
  for k = 1, nrun do runnable[k] = nil end
  nrun = 0
end

local function expire_timers()
  local t = now()
  for w in pairs(timers) do
    if w.deadline <= t then schedule(w, "timeout") end
  end
end

local function next_deadline()
  local d
  for w in pairs(timers) do
    if d == nil or w.deadline < d then d = w.deadline end
  end
  return d
end

-- Object 0: the manager itself.
local manager_methods = {}

function manager_methods.create(typeid, ...)
  local ctor = registry[typeid]
  if not ctor then
    usage("the manager has no type '%s' (register it before the manager starts)", tostring(typeid))
  end
  local obj = ctor(...)
  next_id = next_id + 1
  objects[next_id] = obj
  object_type[next_id] = typeid
  local t = types[typeid]
  if t and ctor == t.new then
    builtin_of[next_id] = t.methods
    blocking_of[next_id] = t.blocking or {}
    nargs_of[next_id] = t.nargs or {}
  end
  return next_id, typeid
end

function manager_methods.publish(name, p)
  if type(name) ~= "string" then argerror(1, "publish", "name must be a string") end
  if own_object(p) == nil then argerror(2, "publish", "a proxy of this manager expected") end
  names[name] = rawget(p, KEY).i
end

function manager_methods.lookup(name)
  local id = names[name]
  if id == nil then usage("no object is published as '%s'", tostring(name)) end
  return id, object_type[id]
end

function manager_methods.shutdown() stopping = true end

function manager_methods.count()
  local n = 0
  for _ in pairs(objects) do n = n + 1 end
  return n
end

-- The method `method` of object id for a client, or nil and an error to reply.
local function find_method(id, method)
  local obj = objects[id]
  if obj == nil then return nil, usage_error("the manager has no object #%s", tostring(id)) end
  local typeid = object_type[id]
  local t = types[typeid]
  if t and registry[typeid] == t.new then
    local f = t.methods[method]
    if f == nil then return nil, usage_error("%s has no method '%s'", typeid, tostring(method)) end
    return f, obj, t.blocking and t.blocking[method]
  end
  -- A registered type: methods by name, the public ones (as Python exposes them).
  if method == "__repr" then
    return function(o)
      local mt = getmetatable(o)
      if type(mt) == "table" and mt.__tostring then return tostring(o) end
      return "<" .. typeid .. " object>"
    end, obj
  end
  if type(method) ~= "string" or method:sub(1, 1) == "_" then
    return nil, usage_error("method '%s' of %s is not exposed", tostring(method), typeid)
  end
  local ok, f = pcall(function() return obj[method] end)
  if not ok or f == nil then return nil, usage_error("%s has no method '%s'", typeid, method) end
  return f, obj
end

-- A request from client: (object id, method, args...).
-- Replies with a built-in method's results (pcall's): the common case, kept short.
local function builtin_reply(client, seq, ok, ...)
  if not ok then return send_reply(client, seq, false, handler((...))) end
  if seq == 0 or client.gone then return end
  if not pcall(srv.reply, srv, client.id, seq, "ok", ...) then return send_reply(client, seq, true, ...) end
end

local function dispatch(client, seq, id, method, ...)
  current = client
  -- The common case first: a built-in method that does not wait.
  local methods = builtin_of[id]
  if methods then
    local f = methods[method]
    local max = nargs_of[id][method]
    if max and select("#", ...) > max then
      return send_reply(client, seq, false, surplus(method, max, select("#", ...), ...))
    end
    if f ~= nil and not blocking_of[id][method] then
      return builtin_reply(client, seq, pcall(f, objects[id], ...))
    end
  end
  if id == 0 then
    local f = manager_methods[method]
    if f == nil then return send_reply(client, seq, false, usage_error("unknown manager request '%s'", tostring(method))) end
    return send_reply(client, seq, xpcall(f, handler, ...))
  end
  local f, obj, how = find_method(id, method)
  if f == nil then return send_reply(client, seq, false, obj) end
  if how == "always" then return spawn(client, seq, f, obj, ...) end
  if how == "try" then
    -- Most such calls need not wait: try in the loop; one that must park runs again in a
    -- coroutine (nothing changed before it parked). These return at most two values.
    local ok, a, b = pcall(f, obj, ...)
    if ok then return send_reply(client, seq, true, a, b) end
    if a == NEED_CO then return spawn(client, seq, f, obj, ...) end
    return send_reply(client, seq, false, handler(a))
  end
  return send_reply(client, seq, xpcall(f, handler, obj, ...))
end

-- park() outside a coroutine means the call must wait: unwind, and dispatch retries in one.
local park_in_co = park
park = function(q, deadline)
  if co_client[running()] == nil then error(NEED_CO, 0) end
  return park_in_co(q, deadline)
end

local function on_open(id, pid, ident)
  clients[id] = { id = id, pid = pid, ident = ident, calls = {}, waiters = {} }
  idents[ident] = (idents[ident] or 0) + 1
end

-- A client left: its parked calls end, and if it was its process's last
-- connection the process is gone and its locks are released.
local function on_closed(id)
  local client = clients[id]
  if client == nil then return end
  clients[id] = nil
  client.gone = true
  for w in pairs(client.waiters) do schedule(w, "gone") end
  local n = idents[client.ident] - 1
  if n > 0 then idents[client.ident] = n; return end
  idents[client.ident] = nil
  owner_died(client.ident)
end

local function event(ev, id, a, b, ...)
  if ev == "msg" then
    local client = clients[id]
    if client then return dispatch(client, b and 0 or a, ...) end
  elseif ev == "open" then
    on_open(id, a, b)
  elseif ev == "closed" then
    on_closed(id)
  elseif ev == "bad" then
    local client = clients[id]
    if client then
      send_reply(client, b and 0 or a, false, usage_error("the manager cannot decode the request: %s", tostring((...))))
    end
  elseif ev == "orphan" then
    stopping = "orphan"
  end
end

--[[
M.run(cfg): the server process's body (the target of its mp.Process). cfg:
listener, authkey, owner (pid), registry (typeid --> constructor),
initializer, initargs, socket and dir (removed at exit when set).
]]
function M.run(cfg)
  server_pid = core.getpid()
  registry = cfg.registry
  for typeid, ctor in pairs(registry) do      -- built-ins travel by name (manager.lua)
    if ctor == true and types[typeid] then registry[typeid] = types[typeid].new end
  end
  -- Ctrl-C in a terminal reaches the whole process group: the owner decides (as Python's server).
  core.signal("SIGINT", "ignore")
  core.signal("SIGTERM", function() stopping = true end)
  local token
  srv, token = core.manager_server(cfg.listener, cfg.authkey, cfg.owner)
  my_token = token
  require("mp.manager").serving(token)
  local ok, err = pcall(function()
    if cfg.initializer then
      local args = cfg.initargs or {}
      cfg.initializer(table.unpack(args, 1, args.n or #args))
    end
    while not stopping do
      local timeout
      if next(timers) then timeout = math.max(next_deadline() - now(), 0) end
      event(srv:next(timeout))
      if nrun > 0 then run_ready() end
      if next(timers) then expire_timers(); if nrun > 0 then run_ready() end end
    end
  end)
  -- The shutdown request's reply, and any other, go out before the sockets close.
  pcall(srv.flush, srv, 1)
  srv:close()
  if cfg.socket then os.remove(cfg.socket) end
  if cfg.dir then os.remove(cfg.dir) end
  if not ok then error(err, 0) end
end

return M

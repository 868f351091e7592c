--[[
The conventions of DESIGN.md "The mp API", checked for every constructor and
method from one table of signatures (luaposix-style): an unknown option key
is an error naming the key and the function (with a suggestion when one is
close), a surplus argument is an error, a method called with `.` is a "bad
self" error at the caller's line, and a number where Python takes `block` is
the timeout. Every method found on an object must be listed here, so a new
method cannot be missed.
]]
local mp = require "mp"
local H = require "helper"

--[[
Per class: make() builds an instance; methods maps each method to the number
of arguments it takes after self (its surplus test passes one more); `options`
is a constructor taking an options table and a key close to a real one.
]]
--[[
Objects make() builds that hold resources (a pool's workers, a segment) are
released at the end of the test body, before the helper's leftover check:
every test body below runs through released().
]]
local releases = {}
local function pool(o)
  local p = mp.Pool(o or 1)
  releases[#releases + 1] = function() p:terminate() end
  return p
end
local function shm(o)
  local sm = mp.SharedMemory(o or { create = true, size = 16 })
  releases[#releases + 1] = function() pcall(sm.close, sm); pcall(sm.unlink, sm) end
  return sm
end
local function released(body)
  return function()
    local ok, err = pcall(body)
    for i = #releases, 1, -1 do releases[i]() end
    releases = {}
    if not ok then error(err, 0) end
  end
end

local signatures = {
  Queue = { make = function() return mp.Queue() end,
    options = { ctor = mp.Queue, name = "Queue", near = "maxsiz", meant = "maxsize" },
    methods = { put = 3, get = 2, put_nowait = 1, get_nowait = 0, qsize = 0, empty = 0, full = 0,
                close = 0, join_thread = 0, cancel_join_thread = 0 } },
  SimpleQueue = { make = function() return mp.SimpleQueue() end,
    options = { ctor = mp.SimpleQueue, name = "SimpleQueue", near = "byte", meant = "bytes" },
    methods = { put = 3, get = 2, empty = 0, close = 0 } },
  JoinableQueue = { make = function() return mp.JoinableQueue() end,
    options = { ctor = mp.JoinableQueue, name = "JoinableQueue", near = "maxsize_", meant = "maxsize" },
    methods = { put = 3, get = 2, put_nowait = 1, get_nowait = 0, qsize = 0, empty = 0, full = 0,
                close = 0, join_thread = 0, cancel_join_thread = 0, task_done = 0, join = 1 } },
  Connection = { make = function() local a = mp.Pipe(); return a end,
    options = { ctor = mp.Pipe, name = "Pipe", near = "duplx", meant = "duplex" },
    methods = { send = 1, recv = 0, send_bytes = 3, recv_bytes = 1, poll = 1, fileno = 0, close = 0 } },
  Lock = { make = function() return mp.Lock() end,
    methods = { acquire = 2, release = 0, owner = 0, hold = 0, with = math.huge } },
  RLock = { make = function() return mp.RLock() end,
    methods = { acquire = 2, release = 0, owner = 0, hold = 0, with = math.huge } },
  Semaphore = { make = function() return mp.Semaphore(1) end,
    options = { ctor = mp.Semaphore, name = "Semaphore", near = "valeu", meant = "value" },
    methods = { acquire = 2, release = 1, get_value = 0, hold = 0, with = math.huge } },
  BoundedSemaphore = { make = function() return mp.BoundedSemaphore(1) end,
    options = { ctor = mp.BoundedSemaphore, name = "BoundedSemaphore", near = "vale", meant = "value" },
    methods = { acquire = 2, release = 1, get_value = 0, hold = 0, with = math.huge } },
  Condition = { make = function() return mp.Condition() end,
    options = { ctor = mp.Condition, name = "Condition", near = "lok", meant = "lock" },
    methods = { acquire = 2, release = 0, wait = 1, notify = 1, notify_all = 0, get_lock = 0,
                hold = 0, with = math.huge, wait_for = 2 } },
  Event = { make = function() return mp.Event() end,
    methods = { set = 0, clear = 0, is_set = 0, wait = 1 } },
  Value = { make = function() return mp.Value("i", 0) end,
    options = { ctor = function(o) return mp.Value("i", 0, o) end, name = "Value", near = "lokc", meant = "lock" },
    methods = { get_lock = 0, add = 1, compare_and_swap = 2, value = false } },
  Array = { make = function() return mp.Array("i", 2) end,
    options = { ctor = function(o) return mp.Array("i", 2, o) end, name = "Array", near = "locks", meant = "lock" },
    methods = { get_lock = 0, tolist = 0 } },
  Barrier = { make = function() return mp.Barrier(1) end,
    options = { ctor = mp.Barrier, name = "Barrier", near = "partys", meant = "parties", base = { parties = 1 } },
    methods = { wait = 1, reset = 0, abort = 0 } },
  Pool = { make = function() return pool() end,
    options = { ctor = pool,
                name = "Pool", near = "proceses", meant = "processes", base = { processes = 1 } },
    methods = { map = 3, starmap = 3, imap = 3, imap_unordered = 3, map_async = 4, starmap_async = 4,
                apply = 2, apply_async = 4, close = 0, join = 0, terminate = 0, terminate_workers = 0,
                kill_workers = 0 } },
  AsyncResult = { make = function() return pool():apply_async(function() return 1 end) end,
    methods = { get = 1, wait = 1, ready = 0, successful = 0, exception = 1, cancel = 0, cancelled = 0 } },
  SharedMemory = { make = function() return shm() end,
    options = { ctor = shm,
                name = "SharedMemory", near = "sise", meant = "size", base = { create = true, size = 16 } },
    methods = { read = 2, write = 2, close = 0, unlink = 0 } },
  Process = { make = function() return mp.Process{ target = function() end } end,
    options = { ctor = mp.Process, name = "Process", near = "taget", meant = "target" },
    methods = { start = 0, join = 1, is_alive = 0, terminate = 0, kill = 0, close = 0 } },
}

-- What every class has from mp.class (and run, which a Process subclass overrides): not methods.
local CLASS_FUNCTIONS = { new = true, extend = true, is = true, init = true, run = true }

-- The callable methods of an object: its metatable's __index table, or its class chain.
local function methods_of(obj)
  local found = {}
  local mt = getmetatable(obj)
  local index = mt and mt.__index
  if type(index) == "table" then
    for k, v in pairs(index) do
      if type(v) == "function" and type(k) == "string" and not k:find("^_") and not CLASS_FUNCTIONS[k] then
        found[k] = true
      end
    end
  elseif type(mt) == "table" and rawget(mt, "super") then
    local cls = mt
    while cls do
      for k, v in pairs(cls) do
        if type(v) == "function" and type(k) == "string" and not k:find("^_") and not CLASS_FUNCTIONS[k] then
          found[k] = true
        end
      end
      cls = rawget(cls, "super")
    end
  end
  return found
end

-- Runs `code` (with the object as `o`) as a chunk named like this file, so that
-- a method is called by a constant name (error messages name it) and errors
-- point at "spec/conventions_spec.lua:1:".
local function call(obj, code)
  local f = assert(load("local o = ...; local r = " .. code .. "; return r", "=spec/conventions_spec.lua"))
  return pcall(f, obj)
end

describe("the API's conventions, for every class", function()

  for cname, sig in pairs(signatures) do
    describe(cname, function()
      it("lists every method it has in this spec's signatures", released(function()
        for m in pairs(methods_of(sig.make())) do
          assert.is_not_nil(sig.methods[m], cname .. ":" .. m .. " has no signature in conventions_spec.lua")
        end
      end))

      for m, nargs in pairs(sig.methods) do
        if nargs then
          it(":" .. m .. " called with '.' is a bad-self error at the caller's line", released(function()
            local obj = sig.make()
            local ok, err = call(obj, "o." .. m .. "()")
            assert.is_false(ok)
            assert.matches("^spec/conventions_spec%.lua:1: bad argument #1 to '" .. m .. "' %(", err)
            ok, err = call(obj, "o." .. m .. "(42)")
            assert.is_false(ok)
            assert.matches("expected, got number%)$", err)
          end))
        end
        if nargs and nargs < math.huge then
          it(":" .. m .. " rejects a surplus argument", released(function()
            local obj = sig.make()
            local ok, err = call(obj, "o:" .. m .. "(" .. ("nil, "):rep(nargs) .. "'surplus')")
            assert.is_false(ok)
            assert.matches("^spec/conventions_spec%.lua:1: bad argument #" .. (nargs + 1) .. " to '" .. m ..
              "' %(no argument expected here, got string%)", err)
          end))
        end
      end

      if sig.options then
        it("rejects an unknown option key, suggesting a close one", released(function()
          local o = sig.options
          local opts = {}
          for k, v in pairs(o.base or {}) do opts[k] = v end
          opts[o.near] = 1
          local ok, err = pcall(function() return o.ctor(opts) end)
          assert.is_false(ok)
          assert.matches("^spec/conventions_spec%.lua:%d+: unknown option '" .. o.near .. "' to '" .. o.name ..
            "' %(did you mean '" .. o.meant .. "'%?%)$", err)
          opts[o.near], opts.zzzzzzzz = nil, 1
          ok, err = pcall(function() return o.ctor(opts) end)
          assert.is_false(ok)
          assert.matches("unknown option 'zzzzzzzz' to '" .. o.name .. "' %(options: ", err)
        end))
      end
    end)
  end

  it("covers every class the module exports", function()
    for _, name in ipairs { "Queue", "SimpleQueue", "JoinableQueue", "Lock", "RLock", "Semaphore",
                            "BoundedSemaphore", "Condition", "Event", "Value", "Array", "Barrier", "Process",
                            "Pool", "AsyncResult", "SharedMemory" } do
      assert.is_not_nil(signatures[name], name)
    end
  end)
end)

describe("a number in the block position", function()
  local function quick(f, ...)
    local t0 = mp.time()
    local ok, err = pcall(f, ...)
    return mp.time() - t0, ok, err
  end

  it("is get's and put's timeout", function()
    local q = mp.Queue(1)
    local dt, ok, err = quick(q.get, q, 0.05)
    assert.is_false(ok); assert.is_true(mp.Empty:is(err)); assert.is_true(dt >= 0.04 and dt < 2)
    q:put(1)
    dt, ok, err = quick(q.put, q, 2, 0.05)
    assert.is_false(ok); assert.is_true(mp.Full:is(err)); assert.is_true(dt >= 0.04 and dt < 2)
    assert.equal(1, q:get(0.05))
  end)

  it("is acquire's timeout for locks and semaphores", function()
    for _, l in ipairs { mp.Lock(), mp.Semaphore(1), mp.BoundedSemaphore(1) } do
      assert.is_true(l:acquire())
      local p = H.spawn(function(obj) os.exit(obj:acquire(0.05) and 1 or 0) end, l)
      assert.equal(0, H.join(p))
      l:release()
    end
  end)

  it("and a timeout with block = false is an error, not ignored", function()
    local q = mp.Queue()
    assert.has_error(function() q:get(false, 1) end)
    assert.has_error(function() q:get{ block = false, timeout = 1 } end)
    assert.has_error(function() mp.Lock():acquire(false, 1) end)
  end)
end)

describe("an error raised inside mp's own Lua code and caught by its loops", function()
  it("is given the position of the first caller outside mp", function()
    local check = require "mp.check"
    local line = debug.getinfo(1, "l").currentline + 1
    local msg = check.relocate("mp/pool.lua:462: interrupted!")
    assert.equal("spec/conventions_spec.lua:" .. line .. ": interrupted!", msg)
    assert.equal("/tmp/x/mplua.lua:3: mine", check.relocate("/tmp/x/mplua.lua:3: mine"))
    local t = {}
    assert.equal(t, check.relocate(t))
  end)
end)

-- mp.Manager: the server, every proxy type and method, boundaries, addresses, keys, failures.
local H = require "helper"
local mp = require "mp"
local signal = require "posix.signal"

local function dir_of(mgr) return mgr.address:match("^(.*)/listener$") end

local function exists(path)
  local f = io.open(path, "r")
  if f then f:close() return true end
  return os.rename(path, path) == true
end

-- Waits (up to `timeout` s) until pred() is true; fails naming `what`.
local function wait_until(pred, what, timeout)
  local deadline = mp.time() + (timeout or 10)
  while not pred() do
    if mp.time() > deadline then error("timed out waiting for " .. what, 2) end
    mp.sleep(0.005)
  end
end

local function pid_alive(pid)
  local ok = signal.kill(pid, 0)
  if not ok then return false end
  local stat = H.read_file("/proc/" .. pid .. "/stat") or ""
  return stat:match("%) (%a)") ~= "Z"
end

local function sorted(t) table.sort(t, function(a, b) return tostring(a) < tostring(b) end) return t end

describe("mp.Manager", function()
  -- Cleaning up in the body (<close>): the leftover check runs before after_each and finally.
  it("starts a server process of its own with a private socket directory", function()
    local mgr <close> = mp.Manager{ timeout = 10 }
    assert.is_number(mgr.pid)
    assert.is_not.equal(mp.getpid(), mgr.pid)
    local dir = dir_of(mgr)
    assert.truthy(dir, mgr.address)
    local f = io.popen("stat -c %a " .. H.quote(dir))
    local mode = f:read("l")
    f:close()
    assert.equal("700", mode)
    assert.is_true(mgr:ping())
    assert.matches("^<Manager pid=%d+ address=", tostring(mgr))
  end)

  describe("dict", function()
    it("indexes, assigns, counts and iterates like a table", function()
      local mgr <close> = mp.Manager{ timeout = 10 }
      local d = mgr:dict()
      d.a = 1; d[2] = "two"; d[true] = { x = 1 }
      assert.equal(1, d.a)
      assert.equal("two", d[2])
      assert.same({ x = 1 }, d[true])
      assert.is_nil(d.missing)
      assert.equal(3, #d)
      d.a = nil
      assert.equal(2, #d)
      local seen = {}
      for k, v in pairs(d) do seen[tostring(k)] = v end
      assert.same({ ["2"] = "two", ["true"] = { x = 1 } }, seen)
    end)

    it("has Python's methods", function()

      local mgr <close> = mp.Manager{ timeout = 10 }
      local d = mgr:dict{ a = 1, b = 2 }
      assert.equal(1, d:get("a"))
      assert.equal("dflt", d:get("zz", "dflt"))
      assert.equal(2, d:pop("b"))
      assert.is_nil(d:pop("b"))
      assert.equal(7, d:pop("b", 7))
      d:update{ c = 3, d = 4 }
      assert.same({ "a", "c", "d" }, sorted(d:keys()))
      assert.same({ 1, 3, 4 }, sorted(d:values()))
      local items = d:items()
      table.sort(items, function(x, y) return x[1] < y[1] end)
      assert.same({ { "a", 1 }, { "c", 3 }, { "d", 4 } }, items)
      assert.equal(5, d:setdefault("e", 5))
      assert.equal(5, d:setdefault("e", 6))
      assert.is_true(d:has("e"))
      local k, v = d:popitem()
      assert.is_nil(d[k]); assert.is_not_nil(v)
      local copy = d:copy()
      assert.is_nil(getmetatable(copy))
      copy.zzz = 1
      assert.is_nil(d.zzz)
      d:clear()
      assert.equal(0, #d)
      assert.has_error(function() d:popitem() end, "popitem(): dictionary is empty")
    end)

    it("shows its contents with tostring", function()

      local mgr <close> = mp.Manager{ timeout = 10 }
      local d = mgr:dict{ a = 1, b = "x" }
      assert.equal('{a = 1, b = "x"}', tostring(d))
    end)

    it("refuses nil and NaN keys at the caller's line", function()

      local mgr <close> = mp.Manager{ timeout = 10 }
      local d = mgr:dict()
      local ok, err = pcall(function() d[nil] = 1 end)
      assert.is_false(ok)
      assert.matches("manager_spec.lua:%d+: bad key %(nil%)", err)
      assert.has_error(function() d[0 / 0] = 1 end)
      assert.is_nil(d[0 / 0])
    end)

    it("method names win over keys of the same name (use get)", function()

      local mgr <close> = mp.Manager{ timeout = 10 }
      local d = mgr:dict()
      d.keys = 1
      assert.is_function(d.keys)
      assert.equal(1, d:get("keys"))
    end)

    it("keeps the values of any sendable type", function()

      local mgr <close> = mp.Manager{ timeout = 10 }
      local d = mgr:dict()
      d.f = 1.5; d.i = math.maxinteger; d.s = ("x"):rep(100000); d.b = false
      d.t = { 1, { 2, { 3 } } }
      assert.equal(1.5, d.f); assert.equal(math.maxinteger, d.i)
      assert.equal(100000, #d.s); assert.is_false(d.b)
      assert.same({ 1, { 2, { 3 } } }, d.t)
      assert.equal("float", math.type(d.f))
    end)
  end)

  describe("list", function()
    it("indexes from 1, counts and iterates", function()
      local mgr <close> = mp.Manager{ timeout = 10 }
      local l = mgr:list{ "a", "b" }
      l:append("c")
      assert.equal(3, #l)
      assert.equal("a", l[1]); assert.equal("c", l[3]); assert.equal("c", l[-1])
      assert.is_nil(l[4]); assert.is_nil(l[0])
      local got = {}
      for i, v in ipairs(l) do got[i] = v end
      assert.same({ "a", "b", "c" }, got)
      l[2] = "B"; l[4] = "d"             -- #l + 1 appends, as in a Lua sequence
      assert.same({ "a", "B", "c", "d" }, l:copy())
      assert.has_error(function() l[9] = 1 end, "list index 9 out of range (1..5)")
      assert.has_error(function() l[1] = nil end, "cannot store nil in a list (use l:pop(i) to remove an item)")
      assert.has_error(function() l:append(nil) end, "bad argument #1 to 'append' (a list cannot hold nil)")
      assert.equal('{"a", "B", "c", "d"}', tostring(l))
    end)

    it("has Python's methods with 1-based positions", function()

      local mgr <close> = mp.Manager{ timeout = 10 }
      local l = mgr:list{ 3, 1, 2 }
      assert.equal(2, l:pop())
      assert.equal(3, l:pop(1))
      assert.same({ 1 }, l:copy())
      l:insert(1, 0); l:insert(-1, 5); l:insert(99, 9)
      assert.same({ 0, 5, 1, 9 }, l:copy())
      l:extend{ 7, 7 }
      assert.equal(2, l:count(7))
      assert.equal(5, l:index(7))
      assert.equal(6, l:index(7, 6))
      l:remove(7)
      assert.same({ 0, 5, 1, 9, 7 }, l:copy())
      assert.has_error(function() l:remove(42) end, "list.remove(x): x not in list")
      assert.has_error(function() l:index(42) end, "list.index(x): x not in list")
      l:sort()
      assert.same({ 0, 1, 5, 7, 9 }, l:copy())
      l:sort(function(a, b) return a > b end)
      assert.same({ 9, 7, 5, 1, 0 }, l:copy())
      l:reverse()
      assert.same({ 0, 1, 5, 7, 9 }, l:copy())
      local copy = l:copy()
      assert.is_nil(getmetatable(copy))
      l:clear()
      assert.equal(0, #l)
      assert.has_error(function() l:pop() end, "pop from empty list")
    end)
  end)

  it("Namespace keeps fields", function()

    local mgr <close> = mp.Manager{ timeout = 10 }
    local ns = mgr:Namespace{ x = 1 }
    ns.y = "z"
    assert.equal(1, ns.x); assert.equal("z", ns.y); assert.is_nil(ns.none)
    ns.x = nil
    assert.is_nil(ns.x)
    assert.equal('Namespace(y = "z")', tostring(ns))
    local seen = {}
    for k, v in pairs(ns) do seen[k] = v end
    assert.same({ y = "z" }, seen)
  end)

  it("Value and Array are typed", function()

    local mgr <close> = mp.Manager{ timeout = 10 }
    local v = mgr:Value("i", 5)
    v.value = v.value + 1
    assert.equal(6, v.value); assert.equal(6, v:get())
    v:set(7)
    assert.equal('Value("i", 7)', tostring(v))
    assert.has_error(function() v.value = "x" end, "number expected, got string")
    assert.has_error(function() v.value = 2 ^ 40 end)
    assert.has_error(function() mgr:Value("x") end)
    local a = mgr:Array("d", { 1, 2, 3 })
    a[2] = 5
    assert.equal(3, #a); assert.equal(5.0, a[2]); assert.is_nil(a[4])
    assert.same({ 1.0, 5.0, 3.0 }, a:tolist())
    local got = {}
    for i, x in ipairs(a) do got[i] = x end
    assert.same({ 1.0, 5.0, 3.0 }, got)
    assert.has_error(function() a[4] = 1 end)
  end)

  describe("locks", function()
    it("Lock: acquire, release, hold, with, timeouts and misuse", function()
      local mgr <close> = mp.Manager{ timeout = 10 }
      local lock = mgr:Lock()
      assert.is_true(lock:acquire())
      assert.is_false(lock:acquire(false))
      local t0 = mp.time()
      assert.is_false(lock:acquire(0.2))
      assert.is_true(mp.time() - t0 >= 0.19)
      lock:release()
      assert.has_error(function() lock:release() end, "release unlocked lock")
      do local _ <close> = lock:hold() assert.is_true(lock:locked()) end
      assert.is_false(lock:locked())
      assert.equal(3, lock:with(function(a, b) return a + b end, 1, 2))
      assert.has_error(function() lock:with(function() error("boom", 0) end) end, "boom")
      assert.is_false(lock:locked())
    end)

    it("RLock is re-entrant per process", function()

      local mgr <close> = mp.Manager{ timeout = 10 }
      local r = mgr:RLock()
      assert.is_true(r:acquire()); assert.is_true(r:acquire())
      local p = H.spawn(function() os.exit(r:acquire(false) and 1 or 0) end)
      assert.equal(0, H.join(p))
      r:release(); r:release()
      assert.has_error(function() r:release() end, "cannot release un-acquired lock")
    end)

    it("a lock waits for its holder in another process", function()

      local mgr <close> = mp.Manager{ timeout = 10 }
      local lock, ev = mgr:Lock(), mgr:Event()
      local p = H.spawn(function()
        lock:acquire(); ev:set(); mp.sleep(0.3); lock:release()
      end)
      assert.is_true(ev:wait(10))
      local t0 = mp.time()
      assert.is_true(lock:acquire(10))
      assert.is_true(mp.time() - t0 > 0.1)
      lock:release()
      H.join(p)
    end)

    it("a lock whose holder died goes to the next acquirer, who is told", function()

      local mgr <close> = mp.Manager{ timeout = 10 }
      local lock = mgr:Lock()
      local p = H.spawn(function() lock:acquire(); os.exit(0) end)
      H.join(p)
      local ok, why = lock:acquire(10)
      assert.is_true(ok)
      assert.equal("owner died", why)
      lock:release()
    end)

    it("a waiter that dies takes nothing", function()
      local mgr <close> = mp.Manager{ timeout = 10 }
      local lock, q, started = mgr:Lock(), mgr:Queue(), mgr:Event()
      lock:acquire()
      local p = H.spawn(function() started:set(); lock:acquire(); q:get() end)
      assert.is_true(started:wait(10))
      -- Once it sleeps, it is waiting for acquire's reply (it spins first, then sleeps in poll).
      wait_until(function() return H.children_of(mp.getpid())[p.pid] == "S" end, "the child to wait in acquire")
      p:kill()
      H.join(p)
      lock:release()
      q:put("item")
      assert.is_true(lock:acquire(false))
      assert.equal("item", q:get(false))
      lock:release()
    end)

    it("a wait longer than the call timeout is not a TimeoutError", function()

      local mgr <close> = mp.Manager{ timeout = 10 }
      local m <close> = mp.Manager{ timeout = 0.3 }
      local lock = m:Lock()
      lock:acquire()
      local p = H.spawn(function() os.exit(lock:acquire(1) and 1 or 0) end)
      assert.equal(0, H.join(p))
      lock:release()
    end)

    it("Semaphore and BoundedSemaphore", function()

      local mgr <close> = mp.Manager{ timeout = 10 }
      local s = mgr:Semaphore(2)
      assert.is_true(s:acquire()); assert.is_true(s:acquire())
      assert.is_false(s:acquire(false))
      assert.equal(0, s:get_value())
      s:release(2)
      assert.equal(2, s:get_value())
      local b = mgr:BoundedSemaphore(1)
      assert.is_true(b:acquire())
      b:release()
      assert.has_error(function() b:release() end, "Semaphore released too many times")
      assert.has_error(function() mgr:Semaphore(-1) end,
        "bad argument #1 to 'Semaphore' (semaphore initial value must be >= 0)")
    end)
  end)

  it("Condition: a producer and a consumer over a manager list end", function()

    local mgr <close> = mp.Manager{ timeout = 10 }
    local cond, items = mgr:Condition(), mgr:list()
    local consumer = H.spawn(function()
      local got = {}
      for n = 1, 5 do
        local _ <close> = cond:hold()
        assert(cond:wait_for(function() return #items >= n end, 10), "no item")
        got[n] = items[n]
      end
      assert(table.concat(got, ",") == "10,20,30,40,50", table.concat(got, ","))
    end)
    local producer = H.spawn(function()
      for n = 1, 5 do
        local _ <close> = cond:hold()
        items:append(n * 10)
        cond:notify()
      end
    end)
    assert.equal(0, H.join(producer))
    assert.equal(0, H.join(consumer))
    assert.has_error(function() cond:wait(0.1) end, "cannot wait on un-acquired lock")
    assert.has_error(function() cond:notify() end, "cannot notify on un-acquired lock")
    cond:acquire()
    assert.is_false(cond:wait(0.05))
    cond:notify_all()
    cond:release()
  end)

  it("Condition over a given Lock of the manager", function()

    local mgr <close> = mp.Manager{ timeout = 10 }
    local lock = mgr:Lock()
    local cond = mgr:Condition(lock)
    cond:acquire()
    assert.is_true(lock:locked())
    cond:release()
    assert.has_error(function() mgr:Condition(mgr:dict()) end,
      "bad argument #1 to 'Condition' (a Lock or RLock of this manager expected)")
  end)

  it("Event", function()

    local mgr <close> = mp.Manager{ timeout = 10 }
    local ev = mgr:Event()
    assert.is_false(ev:is_set())
    assert.is_false(ev:wait(0.05))
    local p = H.spawn(function() mp.sleep(0.1); ev:set() end)
    assert.is_true(ev:wait(10))
    H.join(p)
    ev:clear()
    assert.is_false(ev:is_set())
  end)

  it("Barrier", function()

    local mgr <close> = mp.Manager{ timeout = 10 }
    local b = mgr:Barrier(3)
    local out = mgr:list()
    local ps = {}
    for i = 1, 2 do ps[i] = H.spawn(function() out:append(b:wait(10)) end) end
    out:append(b:wait(10))
    for _, p in ipairs(ps) do assert.equal(0, H.join(p)) end
    assert.same({ 0, 1, 2 }, sorted(out:copy()))
    assert.equal(3, b.parties)
    assert.equal(0, b.n_waiting)
    assert.is_false(b.broken)
    local err = H.raises(mp.BrokenBarrierError, function() b:wait(0.05) end)
    assert.matches("broken", err.message)
    assert.is_true(b.broken)
    b:reset()
    assert.is_false(b.broken)
    b:abort()
    H.raises(mp.BrokenBarrierError, function() b:wait(1) end)
  end)

  it("Queue and JoinableQueue", function()

    local mgr <close> = mp.Manager{ timeout = 10 }
    local q = mgr:Queue(2)
    q:put(1); q:put(nil)
    assert.is_true(q:full())
    local err = H.raises(mp.Full, function() q:put(3, 0.05) end)
    assert.equal("Full", err.kind)
    H.raises(mp.Full, function() q:put_nowait(3) end)
    assert.equal(2, q:qsize())
    assert.equal(1, q:get())
    assert.is_nil(q:get())
    assert.is_true(q:empty())
    H.raises(mp.Empty, function() q:get(0.05) end)
    H.raises(mp.Empty, function() q:get_nowait() end)
    local p = H.spawn(function() mp.sleep(0.05); q:put({ x = 1 }) end)
    assert.same({ x = 1 }, q:get(10))
    H.join(p)
    local jq = mgr:JoinableQueue()
    jq:put("a"); jq:put("b")
    local worker = H.spawn(function()
      for _ = 1, 2 do jq:get(10); jq:task_done() end
    end)
    jq:join()
    H.join(worker)
    assert.has_error(function() jq:task_done() end, "task_done() called too many times")
  end)

  it("ten processes writing one dict lose no write", function()

    local mgr <close> = mp.Manager{ timeout = 10 }
    local d = mgr:dict()
    local ps = {}
    for i = 1, 10 do
      -- Each writes and exits at once: its one-way writes must still arrive.
      ps[i] = H.spawn(function(k) for j = 1, 100 do d[k * 1000 + j] = j end end, i)
    end
    for _, p in ipairs(ps) do assert.equal(0, H.join(p)) end
    assert.equal(1000, #d)
    for i = 1, 10 do assert.equal(100, d[i * 1000 + 100]) end
  end)

  it("a write is seen by a call another process makes after it", function()

    local mgr <close> = mp.Manager{ timeout = 10 }
    local d, q = mgr:dict(), mp.Queue()
    local p = H.spawn(function()
      for i = 1, 200 do d.k = i; q:put(i) end
    end)
    for _ = 1, 200 do
      local i = q:get(10)
      assert.is_true(d.k >= i)
    end
    H.join(p)
  end)

  describe("proxies cross every boundary", function()
    it("Process arguments and inherited upvalues", function()
      local mgr <close> = mp.Manager{ timeout = 10 }
      local d = mgr:dict()
      local l = mgr:list()
      local p = H.spawn(function(dd) dd.x = 1; l:append(2) end, d)
      assert.equal(0, H.join(p))
      assert.equal(1, d.x); assert.equal(2, l[1])
    end)

    it("Queue and Pipe items", function()

      local mgr <close> = mp.Manager{ timeout = 10 }
      local d = mgr:dict()
      local q = mp.Queue()
      local a, b = mp.Pipe()
      local p = H.spawn(function()
        local got = q:get(10)
        got.from_queue = true
        local piped = b:recv()
        piped:append("from pipe")
      end)
      q:put(d)
      local l = mgr:list()
      a:send(l)
      assert.equal(0, H.join(p))
      assert.is_true(d.from_queue)
      assert.equal("from pipe", l[1])
    end)

    it("pool tasks, with the pool made before and after the manager", function()

      local mgr <close> = mp.Manager{ timeout = 10 }
      local before <close> = mp.Pool(2)
      local m <close> = mp.Manager()
      local d = m:dict()
      local after <close> = mp.Pool(2)
      before:map(function(x) d[x] = x * x end, { 1, 2, 3 })
      after:map(function(x) d[x + 10] = x end, { 1, 2, 3 })   -- d is an upvalue of the task
      local r = before:apply(function(dd) return #dd end, { d })
      assert.equal(6, r)
      assert.equal(9, d[3]); assert.equal(3, d[13])
    end)

    it("mp.dumps and mp.loads", function()

      local mgr <close> = mp.Manager{ timeout = 10 }
      local d = mgr:dict()
      local again = mp.loads(mp.dumps(d))
      again.k = "v"
      assert.equal("v", d.k)
      assert.is_true(again == d)
      assert.is_true(mp.is_proxy(again))
    end)

    it("a child uses its own connection (fork-safe)", function()

      local mgr <close> = mp.Manager{ timeout = 10 }
      local d = mgr:dict()
      d.x = 0
      local ps = {}
      for i = 1, 4 do ps[i] = H.spawn(function() for _ = 1, 50 do local _ = d.x end; d["c" .. mp.getpid()] = 1 end) end
      for _ = 1, 50 do local _ = d.x end
      for _, p in ipairs(ps) do assert.equal(0, H.join(p)) end
      assert.equal(5, #d)
    end)
  end)

  it("a managed object stored in another stays a proxy; a plain table is a copy", function()

    local mgr <close> = mp.Manager{ timeout = 10 }
    local d = mgr:dict()
    d.inner = mgr:list()
    d.inner:append(1)
    d.inner:append(2)
    assert.same({ 1, 2 }, d.inner:copy())
    d.plain = { 1 }
    local t = d.plain
    t[2] = 2
    assert.same({ 1 }, d.plain)
    local l = mgr:list()
    l:append(mgr:dict())
    l[1].k = "v"
    assert.equal("v", l[1].k)
  end)

  it("update and extend take proxies of the same manager; the server never calls itself", function()
    local mgr <close> = mp.Manager{ timeout = 10 }
    local a, b = mgr:dict{ x = 1 }, mgr:dict{ y = 2 }
    a:update(b)
    assert.same({ x = 1, y = 2 }, a:copy())
    local l = mgr:list{ 1 }
    l:extend(mgr:list{ 2, 3 })
    l:extend(l)
    assert.same({ 1, 2, 3, 1, 2, 3 }, l:copy())
    local S = mp.BaseManager:extend("SelfCaller")
    S:register("Box", function()
      return { put = function(_, d) d.k = 1 end, call = function(_, p) return p:call() end }
    end)
    local s <close> = S{ timeout = 10 }
    local box = s:Box()
    local m2 <close> = mp.Manager()
    local other = m2:dict()
    box:put(other)                          -- another manager's proxy: called from the server
    assert.equal(1, other.k)
    local err = H.raises(mp.RemoteError, function() box:call(s:Box()) end)
    assert.matches("cannot be used inside its server", err.message)
  end)

  it("publish and lookup", function()

    local mgr <close> = mp.Manager{ timeout = 10 }
    local d = mgr:dict()
    mgr:publish("shared", d)
    local other = mp.Manager.connect(mgr.address, mgr.authkey)
    other:lookup("shared").k = 1
    assert.equal(1, d.k)
    assert.has_error(function() other:lookup("nothing") end, "no object is published as 'nothing'")
    assert.has_error(function() other:shutdown() end)
  end)

  it("objects made through a connected manager", function()

    local mgr <close> = mp.Manager{ timeout = 10 }
    local other = mp.Manager.connect(mgr.address, mgr.authkey)
    local l = other:list{ 1 }
    l:append(2)
    assert.equal(2, #l)
    assert.equal(1, mgr:count())
  end)

  it("a wrong key is refused with AuthenticationError", function()

    local mgr <close> = mp.Manager{ timeout = 10 }
    local err = H.raises(mp.AuthenticationError, function() mp.Manager.connect(mgr.address, "not the key") end)
    assert.matches("refused the authkey", err.message)
    assert.is_true(mgr:ping())
  end)

  it("bad options are errors naming them", function()

    local mgr <close> = mp.Manager{ timeout = 10 }
    assert.has_error(function() mp.Manager{ adress = "x" } end, "unknown option 'adress' to 'Manager' (did you mean 'address'?)")
    assert.has_error(function() mp.Manager{ timeout = -1 } end)
    assert.has_error(function() mp.Manager.connect(1) end)
    assert.has_error(function() mgr.dict() end)
    local ok, err = pcall(function() local d = mgr:dict(); d.get("k") end)
    assert.is_false(ok)
    assert.matches("manager_spec.lua:%d+: bad argument #1 to 'get' %(proxy expected, got string%)", err)
  end)
end)

describe("custom types", function()
  local Counters = mp.BaseManager:extend("Counters")
  Counters:register("Counter", function(start)
    return {
      n = start,
      inc = function(self, k) self.n = self.n + k; return self.n end,
      get = function(self) return self.n end,
      fail = function() error("counter failed") end,
      _secret = function() return 42 end,
    }
  end)

  it("runs the constructor and methods in the server", function()
    local m <close> = Counters()
    local c = m:Counter(10)
    assert.equal(15, c:inc(5))
    assert.equal(15, c:get())
    assert.equal("<Counter object>", tostring(c))
  end)

  it("is usable from pool tasks", function()
    local m <close> = Counters()
    local c = m:Counter(0)
    local pool <close> = mp.Pool(2)
    pool:map(function() c:inc(1) end, { 1, 2, 3, 4, 5, 6, 7, 8 })
    assert.equal(8, c:get())
  end)

  it("an error in a method arrives as RemoteError with the server's traceback", function()
    local m <close> = Counters()
    local c = m:Counter(0)
    local err = H.raises(mp.RemoteError, function() c:fail() end)
    assert.matches("counter failed", err.message)
    assert.matches("stack traceback", err.traceback)
    assert.equal(m.pid, err.pid)
    assert.has_error(function() c:nothing() end, "Counter has no method 'nothing'")
    assert.has_error(function() c:_secret() end, "method '_secret' of Counter is not exposed")
  end)

  it("refuses names the manager uses and types it does not know", function()
    assert.has_error(function() Counters:register("shutdown", function() end) end)
    assert.has_error(function() Counters:register("x y", function() end) end)
    local Later = mp.BaseManager:extend("Later")
    local m <close> = Later()
    Later:register("Thing", function() return {} end)
    assert.has_error(function() m:Thing() end, "the manager has no type 'Thing' (register it before the manager starts)")
  end)

  it("TCP: used from a separately started mplua", function()
    local m <close> = Counters{ address = "127.0.0.1:0", authkey = "secret" }
    assert.matches("^127%.0%.0%.1:%d+$", m.address)
    local c = m:Counter(10)
    m:publish("counter", c)
    local r = H.run_script([[
      local address = ...
      local M = mp.BaseManager:extend("Counters")
      M:register("Counter")
      local other = M.connect(address, "secret")
      print(other:lookup("counter"):inc(1))
      local ok, err = pcall(M.connect, address, "wrong")
      print(mp.AuthenticationError:is(err))
      local c2 = other:Counter(100)
      print(c2:inc(1))
    ]], { args = { m.address } })
    assert.equal(0, r.status, r.stderr)
    assert.equal("11\ntrue\n101\n", r.stdout)
    assert.equal(11, c:get())
  end)
end)

describe("manager lifetime", function()
  it("shutdown removes the socket directory and stops the server", function()
    local m = mp.Manager()
    local dir, pid = dir_of(m), m.pid
    local d = m:dict()
    assert.is_true(exists(dir))
    m:shutdown()
    m:shutdown()                                -- idempotent
    assert.is_false(exists(dir))
    assert.is_false(pid_alive(pid))
    H.raises(mp.ConnectionError, function() return d.x end)
  end)

  it("<close> and __gc shut it down", function()
    local dir
    do
      local m <close> = mp.Manager()
      dir = dir_of(m)
    end
    assert.is_false(exists(dir))
    local m = mp.Manager()
    dir = dir_of(m)
    local pid = m.pid
    m = nil
    collectgarbage(); collectgarbage()
    assert.is_false(exists(dir))
    wait_until(function() return not pid_alive(pid) end, "the server to exit")
  end)

  it("a killed server gives an error within the timeout", function()
    local m <close> = mp.Manager{ timeout = 2 }
    local d = m:dict()
    signal.kill(m.pid, signal.SIGKILL)
    local t0 = mp.time()
    local err = H.raises(mp.ConnectionError, function() d.x = {} end)
    assert.is_true(mp.time() - t0 < 2)
    assert.matches("gone", err.message)
  end)

  it("a stopped server gives TimeoutError after the call timeout", function()
    local m <close> = mp.Manager{ timeout = 0.3 }
    local _ <close> = setmetatable({}, { __close = function() signal.kill(m.pid, signal.SIGCONT) end })
    local d = m:dict()
    signal.kill(m.pid, signal.SIGSTOP)
    local t0 = mp.time()
    H.raises(mp.TimeoutError, function() return d.x end)
    local took = mp.time() - t0
    assert.is_true(took >= 0.29 and took < 3, tostring(took))
  end)

  it("an owner that ends without shutdown, by os.exit or by an error leaves nothing", function()
    for _, how in ipairs { "end", "exit", "error" } do
      local r = H.run_script([[
        local mgr = mp.Manager()
        local d = mgr:dict()
        d.x = 1
        print(mgr.address, mgr.pid)
        io.stdout:flush()
        if ... == "exit" then os.exit(0) elseif ... == "error" then error("boom", 0) end
      ]], { args = { how } })
      local address, pid = r.stdout:match("^(%S+)\t(%d+)\n$")
      assert.truthy(address, how .. ": " .. r.stdout .. r.stderr)
      assert.equal(how == "error" and 1 or 0, r.status, r.stderr)
      wait_until(function() return not pid_alive(tonumber(pid)) end, "the server to exit")
      assert.is_false(exists((address:match("^(.*)/listener$"))), how)
    end
  end)

  it("SIGTERM stops the server cleanly", function()
    local m <close> = mp.Manager()
    local dir = dir_of(m)
    mp.kill(m.pid, "SIGTERM")
    m:join(10)
    assert.equal(0, m._process.exitcode)
    assert.is_false(exists(dir))
    H.raises(mp.ConnectionError, function() m:dict() end)
  end)

  it("clients killed at random instants leave the server consistent and its locks free", function()
    local m <close> = mp.Manager{ timeout = 10 }
    local lock, d, l = m:Lock(), m:dict{ n = 0 }, m:list()
    local function worker()
      while true do
        lock:acquire()
        d.n = d.n + 1                      -- a read, then a one-way write, under the lock
        l:append(mp.getpid())
        lock:release()
        l:append({ tag = "unlocked" })     -- a write that waits
      end
    end
    local rng = math.random
    math.randomseed(12345)
    local workers = {}
    for i = 1, 4 do workers[i] = H.spawn(worker) end
    local kills, target = 0, 0
    for _ = 1, 12 do                       -- kill one at a random instant, start another
      target = target + 40
      wait_until(function() return #l >= target end, "the workers to make progress", 20)
      local i = rng(#workers)
      mp.sleep(rng() * 0.002)
      workers[i]:kill()
      H.join(workers[i])
      kills = kills + 1
      workers[i] = H.spawn(worker)
    end
    for _, p in ipairs(workers) do p:kill(); H.join(p) end
    assert.equal(12, kills)
    local ok = lock:acquire(5)             -- free, or freed from a dead holder
    assert.is_true(ok)
    lock:release()
    assert.is_true(math.type(d.n) == "integer" and d.n > 0)
    local items = l:copy()
    for _, v in ipairs(items) do
      assert.is_true(math.type(v) == "integer" or (type(v) == "table" and v.tag == "unlocked"))
    end
    assert.is_true(m:ping())
  end)

  it("a server whose owner died exits and removes its directory", function()
    local q = mp.Queue()
    local owner = H.spawn(function()
      local m = mp.Manager()
      q:put({ m.pid, m.address })
      mp.sleep(60)
    end)
    local info = q:get(10)
    owner:kill()
    H.join(owner)
    wait_until(function() return not pid_alive(info[1]) end, "the orphaned server to exit")
    assert.is_false(exists((info[2]:match("^(.*)/listener$"))))
  end)
end)

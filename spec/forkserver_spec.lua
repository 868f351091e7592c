-- The forkserver start method (src/engine/forkserver.c, src/lforkserver.c, lua/mp/process.lua).
-- Each case runs in a fresh mplua: the server is a child of the process that starts it.
local H = require "helper"
local unistd = require "posix.unistd"

local function run(source, opts)
  local r = H.run_script('mp.set_start_method("forkserver")\n' .. source, opts)
  assert.equal(0, r.status, r.stderr)
  return r.stdout, r.stderr
end

-- Whether process pid is gone (or a zombie nobody has reaped yet: it has ended).
local function ended(pid)
  local stat = H.read_file("/proc/" .. pid .. "/stat")
  return stat == nil or stat:match("^%d+ %(.-%) (%a)") == "Z"
end

describe("forkserver processes", function()
  it("behave as forked ones: exit codes, pid, name, daemon, sentinel, is_alive, join, tostring", function()
    local out = run [[
      local unistd = require "posix.unistd"
      local function code(fn, ...) local p = mp.Process{target = fn, args = table.pack(...)}; p:start(); p:join(10); return p.exitcode end
      print(code(function() end), code(function() error("x") end), code(os.exit, 7), code(os.exit, 256), code(os.exit, false))
      local q = mp.Queue()
      local p = mp.Process{target = function()
        local me = mp.current_process()
        q:put({me.name, me.pid == mp.getpid(), me.daemon, mp.parent_process().name, mp.parent_process().pid})
        mp.sleep(60)
      end, name = "sleeper", daemon = true}
      assert(p.exitcode == nil and tostring(p):find("initial"))
      p:start()
      local t = q:get(10)
      print(t[1], t[2], t[3], t[4], t[5] == mp.getpid())
      print(p:is_alive(), p.daemon, #mp.wait({p.sentinel}, 0), #mp.active_children())
      p:join(0.05); print(p.exitcode)                     -- a timeout, still running
      assert(tostring(p):find("pid=" .. p.pid .. " started daemon", 1, true))
      p:terminate(); p:join(10)
      print(p.exitcode, p:is_alive(), #mp.wait({p.sentinel}, 0), tostring(p):find("stopped exitcode=-15", 1, true) ~= nil)
      local k = mp.Process{target = mp.sleep, args = {60}}; k:start(); k:kill(); k:join(10)
      print(k.exitcode, #mp.active_children())
      k:close(); print(pcall(function() return k.exitcode end))
      assert(not pcall(p.start, p))
    ]]
    local lines = {}
    for l in out:gmatch("[^\n]+") do lines[#lines + 1] = l end
    assert.equal("0\t1\t7\t0\t1", lines[1])
    assert.equal("sleeper\ttrue\ttrue\tMainProcess\ttrue", lines[2])
    assert.equal("true\ttrue\t0\t1", lines[3])
    assert.equal("nil", lines[4])
    assert.equal("-15\tfalse\t1\ttrue", lines[5])
    assert.equal("-9\t0", lines[6])
    assert.matches("^false\t.*process object is closed", lines[7])
  end)

  it("run closures: upvalues by value, nested functions, the server state's globals", function()
    local out = run [[
      BEFORE = "global made before the server started"
      mp.forkserver_start()
      AFTER = "global made after"
      local k, t = 3, {x = {y = 42}}
      local function helper(v) return v * k end
      local q = mp.SimpleQueue()
      local p = mp.Process{target = function(a, b)
        q:put({helper(a) + b, t.x.y, BEFORE, tostring(AFTER), string.format("%d", 5)})
      end, args = {2, 1}}
      p:start(); p:join(10)
      local r = q:get()
      print(p.exitcode, r[1], r[2], r[3], r[4], r[5])
    ]]
    assert.equal("0\t7\t42\tglobal made before the server started\tnil\t5\n", out)
  end)

  it("run subclasses defined after the server started (run, init, fields, getters)", function()
    local out = run [[
      mp.forkserver_start()
      local q = mp.SimpleQueue()
      local Base = mp.Process:extend("Base")
      function Base:init(tag) mp.Process.init(self); self.tag = tag end
      Base.__getters.shout = function(self) return self.tag:upper() end
      local Worker = Base:extend("Worker")
      function Worker:run() q:put({self.name, self.tag, self.shout, Worker:is(self), mp.Process:is(self)}) end
      local w = Worker("hi"); w:start(); w:join(10)
      local r = q:get()
      print(w.exitcode, r[1], r[2], r[3], r[4], r[5])
    ]]
    assert.equal("0\tWorker-1\thi\tHI\ttrue\ttrue\n", out)
  end)

  it("print the error and a traceback that starts in the child", function()
    local r = H.run_script [[
      mp.set_start_method("forkserver")
      local function main()
        local p = mp.Process{target = function() error("boom") end, name = "bad"}
        p:start(); p:join(10); print(p.exitcode)
      end
      main()
    ]]
    assert.equal("1\n", r.stdout)
    local err = r.stderr:gsub("%-%-%d+%-%- [^\n]*\n", "")   -- a tool's own notes (MPLUA_SPEC_WRAPPER)
    assert.matches("^Process bad:\n[^\n]*: boom\nstack traceback:\n", err)
    assert.is_nil(err:find("main chunk", 1, true), err)
    assert.is_nil(err:find("forkserver_", 1, true), err)
  end)

  it("start children of their own, through the same server; fork children use it too", function()
    local out = run [[
      local srv = mp.forkserver_start()
      local q = mp.Queue()
      local unistd = require "posix.unistd"
      local p = mp.Process{target = function()
        local c = mp.Process{target = function()
          q:put({mp.current_process().name, mp.parent_process().name, unistd.getppid() == srv})
        end}
        c:start(); c:join(10)
      end}
      p:start(); p:join(10)
      local f = mp.Process{context = "fork", target = function()
        local c = mp.Process{target = function() q:put({mp.current_process().name, mp.parent_process().name, unistd.getppid() == srv}) end}
        c:start(); c:join(10)
      end}
      f:start(); f:join(10)
      for _ = 1, 2 do local r = q:get(10); print(r[1], r[2], r[3]) end
      print(p.exitcode, f.exitcode)
    ]]
    assert.equal("Process-1:1\tProcess-1\ttrue\nProcess-2:1\tProcess-2\ttrue\n0\t0\n", out)
  end)

  it("carry a large request (a 20 MB argument)", function()
    local out = run [[
      local s = string.rep("abcd", 5 * 1024 * 1024)
      local q = mp.SimpleQueue()
      local p = mp.Process{target = function(x) q:put(#x .. " " .. x:sub(-4)) end, args = {s}}
      p:start(); print(q:get()); p:join(10); print(p.exitcode)
    ]]
    assert.equal("20971520 abcd\n0\n", out)
  end)

  it("refuse what cannot be sent, at start, naming it", function()
    local out = run [[
      local co = coroutine.create(print)
      local p = mp.Process{target = function() return co end}
      local ok, err = pcall(p.start, p)
      print(ok, err)
      print(p.pid, #mp.active_children())
    ]]
    assert.matches("^false\tprocess%[1%]._target%(upvalue co%): cannot send a value of type thread\n", out)
    assert.matches("\nnil\t0\n$", out)
  end)
end)

describe("the fork server", function()
  it("listens in a private directory, exits with its owner and leaves nothing behind", function()
    local out = run [[
      local pid = mp.forkserver_start()
      local info = require("mp.core").forkserver_info()
      local mode = io.popen("stat -c '%a %u' " .. info.dir):read("l")
      local p = mp.Process{target = function() end}; p:start(); p:join(10)
      print(pid, info.pid == pid, mode == "700 " .. require("posix.unistd").geteuid(),
            io.open(info.path) == nil and "socket" or "file", mp.forkserver_start() == pid)
      print(info.dir)
    ]]
    local pid, dir = out:match("^(%d+)\ttrue\ttrue\tsocket\ttrue\n(.-)\n$")
    assert.is_truthy(pid, out)
    H.wait_until(function() return ended(tonumber(pid)) end, 10, "the fork server to exit")
    H.wait_until(function() return io.open(dir) == nil end, 10, "its directory to be removed")
  end)

  it("exits when its owner is killed, and removes its socket", function()
    local tmp = os.tmpname()
    finally(function() os.remove(tmp) end)
    local r = H.run_script([[
      local out = io.open(arg[1], "w")
      out:write(mp.forkserver_start(), " ", require("mp.core").forkserver_info().dir, "\n"); out:close()
      mp.kill(mp.getpid(), "SIGKILL")
    ]], { args = { tmp } })
    assert.equal(128 + 9, r.status)
    local pid, dir = H.read_file(tmp):match("^(%d+) (.-)\n$")
    assert.is_truthy(pid)
    H.wait_until(function() return ended(tonumber(pid)) end, 10, "the fork server to exit")
    H.wait_until(function() return io.open(dir) == nil end, 10, "its directory to be removed")
  end)

  it("outlives Ctrl-C at the terminal (SIGINT to it is ignored); its children still get it", function()
    local out = run [[
      local srv = mp.forkserver_start()
      mp.kill(srv, "SIGINT")
      local q = mp.SimpleQueue()
      local p = mp.Process{target = function() q:put("up"); mp.sleep(60) end}
      p:start(); q:get()
      mp.kill(p.pid, "SIGINT"); p:join(10)
      print(p.exitcode ~= 0 and p.exitcode ~= nil, require("mp.core").forkserver_pid() == srv)
    ]]
    assert.equal("true\ttrue\n", out)
  end)

  it("is replaced at the next start when it was killed", function()
    local out = run [[
      local old = mp.forkserver_start()
      mp.kill(old, "SIGKILL")
      local p = mp.Process{target = function() end}; p:start(); p:join(10)
      local new = require("mp.core").forkserver_pid()
      print(p.exitcode, new ~= nil and new ~= old)
    ]]
    assert.equal("0\ttrue\n", out)
  end)

  it("when killed, leaves its running children joinable: they are watched through their pidfds", function()
    local out = run [[
      package.path = "spec/?.lua;" .. package.path
      local waits = require "waits"
      local srv = mp.forkserver_start()
      local ev = mp.Event()
      local p = mp.Process{target = function() ev:wait(30) end}
      p:start()
      mp.kill(srv, "SIGKILL")
      waits.until_true(function()
        local stat = io.open("/proc/" .. srv .. "/stat")
        local st = stat and stat:read("a"):match("%) (%a)"); if stat then stat:close() end
        return st == nil or st == "Z"
      end, 10, "the server to die", mp.sleep, mp.time)
      print(p:is_alive(), #mp.wait({p.sentinel}, 0))    -- still running: not ended with its server
      ev:set(); p:join(10)
      print(p.exitcode, p:is_alive(), #mp.wait({p.sentinel}, 0))   -- its status died with the server
    ]]
    assert.equal("true\t0\n255\tfalse\t1\n", out)
  end)

  it("refuses a client that does not know the key", function()
    local out = run [[
      mp.forkserver_start()
      local sock = require "posix.sys.socket"
      local unistd = require "posix.unistd"
      local fd = sock.socket(sock.AF_UNIX, 5, 0)   -- SOCK_SEQPACKET (Linux)
      assert(sock.connect(fd, {family = sock.AF_UNIX, path = require("mp.core").forkserver_info().path}))
      -- a HELLO record (magic "MFS1", type 1) with a wrong key: the server hangs up
      assert(sock.send(fd, string.pack("<I4I4", 0x3153464d, 1) .. string.rep("k", 32)))
      local reply = sock.recv(fd, 64)
      unistd.close(fd)
      local p = mp.Process{target = function() end}; p:start(); p:join(10)
      print(reply == "" or reply == nil, p.exitcode)
    ]]
    assert.equal("true\t0\n", out)
  end)

  it("terminates daemonic children and joins the others when the owner exits", function()
    local tmp = os.tmpname()
    finally(function() os.remove(tmp) end)
    local out = run([[
      local d = mp.Process{target = mp.sleep, args = {60}, daemon = true}; d:start()
      local p = mp.Process{target = function() mp.sleep(0.2); io.open(arg[1], "w"):write("done"):close() end}
      p:start()
      print(d.pid)
    ]], { args = { tmp } })
    assert.equal("done", H.read_file(tmp))
    local pid = tonumber(out)
    H.wait_until(function() return ended(pid) end, 10, "the daemon to be terminated")
  end)
end)

describe("mp objects through the fork server", function()
  it("Queues, Pipes, Locks, Values, Arrays and the other primitives, as arguments and upvalues", function()
    local out = run [[
      mp.forkserver_start()
      local q, jq, sq = mp.Queue(), mp.JoinableQueue(), mp.SimpleQueue()
      local a, b = mp.Pipe()
      local r, w = mp.Pipe(false)
      local lock, rlock = mp.Lock(), mp.RLock()
      local sem, bsem = mp.Semaphore(0), mp.BoundedSemaphore(1)
      local ev, cond = mp.Event(), mp.Condition()
      local v, raw = mp.Value("i", 0), mp.RawValue("d", 1.5)
      local arr, big = mp.Array("i", {1, 2, 3}), mp.Array("b", 2 * 1024 * 1024)
      local bar = mp.Barrier(2)
      local p = mp.Process{target = function(q2, lock2, arr2)
        q2:put("arg"); jq:put("joinable"); sq:put("simple")
        b:send({k = "duplex"}); w:send("one-way")
        for _ = 1, 500 do local _ <close> = lock2:hold(); v.value = v.value + 1 end
        rlock:acquire(); rlock:acquire(); rlock:release(); rlock:release()
        sem:release(); assert(bsem:acquire(1))
        arr2[2] = 20; big[#big] = 9; raw.value = raw.value * 2
        v:get_lock():acquire(); v:get_lock():release()
        cond:acquire(); ev:set(); cond:wait(10); cond:release()
        assert(bar:wait(10))
        q2:put(lock2 == lock)                 -- identity within one message is kept
      end, args = {q, lock, arr}}
      p:start()
      for _ = 1, 500 do local _ <close> = lock:hold(); v.value = v.value + 1 end
      print(q:get(10), jq:get(10), sq:get(), a:recv().k, r:recv())
      assert(sem:acquire(10))
      ev:wait(10); cond:acquire(); cond:notify(); cond:release()
      assert(bar:wait(10))
      print(q:get(10))
      p:join(10)
      print(p.exitcode, v.value, arr[2], big[#big], raw.value, bsem:get_value())
    ]]
    assert.equal("arg\tjoinable\tsimple\tduplex\tone-way\ntrue\n0\t1000\t20\t9\t3.0\t0\n", out)
  end)

  it("a Pipe end sees end-of-file once the child's copy and ours are closed (the server keeps none)", function()
    local out = run [[
      local a, b = mp.Pipe()               -- made before the server: it holds copies, pointed at /dev/null
      mp.forkserver_start()
      local p = mp.Process{target = function(c) c:send("x"); c:close() end, args = {b}}
      p:start(); b:close()
      print(a:recv())
      local ok, err = pcall(a.recv, a)
      print(ok, mp.EOFError:is(err)); p:join(10)
    ]]
    assert.equal("x\nfalse\ttrue\n", out)
  end)

  it("refuses them inside a Queue item, a Pipe message or mp.dumps, saying what works", function()
    local msg = "an mp.Queue cannot travel inside a message (a Queue item, a Pipe message, mp.dumps): " ..
                "pass it to the process as an argument of Process (or an upvalue of its target), " ..
                "or create it before the process starts (a Pool's workers inherit what exists when it starts)"
    local mp = require "mp"
    local q = mp.Queue()
    assert.has_error(function() q:put({ inner = mp.Queue() }) end, "item.inner: " .. msg)
    local a, b = mp.Pipe()
    assert.has_error(function() a:send(q) end, "value: " .. msg)
    assert.has_error(function() mp.dumps(mp.Lock()) end, "value: " .. msg:gsub("an mp.Queue", "an mp.Lock"))
    assert.has_error(function() q:put(function() return q end) end, "item(upvalue q): " .. msg)
    a:close(); b:close(); q:close()
  end)

  it("refuse an Array that views a SharedMemory, naming the way that works", function()
    local out = run [[
      local sm = mp.SharedMemory{create = true, size = 64}
      local view = mp.Array("i", 4, {shm = sm})
      local p = mp.Process{target = function() return view end}
      print(pcall(p.start, p))
      sm:close(); sm:unlink()
    ]]
    assert.matches("cannot send an mp.Array that views a SharedMemory: send the segment's name", out)
  end)
end)

describe("Manager{context = 'forkserver'}", function()
  it("starts the manager's server through the fork server; proxies work from its children", function()
    local out = run [[
      local unistd = require "posix.unistd"
      local srv = mp.forkserver_start()
      local m <close> = mp.Manager{context = "forkserver"}
      local parent = io.open("/proc/" .. m.pid .. "/stat"):read("a"):match("%) %a (%d+)")
      local d, l = m:dict(), m:list()
      d.x = 5
      local p = mp.Process{target = function() d.y = d.x * 2; l:append("child") end}
      p:start(); p:join(10)
      local C = mp.BaseManager:extend("Counters")
      C:register("Counter", function(n) return {n = n, inc = function(self, k) self.n = self.n + k; return self.n end} end)
      local cm <close> = C{context = mp.get_context("forkserver")}
      print(tonumber(parent) == srv, d.y, l[1], cm:Counter(10):inc(5))
    ]]
    assert.equal("true\t10\tchild\t15\n", out)
  end)

  it("checks the option as Process does, naming Manager", function()
    local mp = require "mp"
    assert.has_error(function() mp.Manager{ context = 5 } end,
      "bad argument #1 to 'Manager' (context must be 'fork', 'forkserver' or a context from mp.get_context, got number)")
  end)
end)

-- The mp objects a spec process made are unaffected by all this.
describe("fork server bookkeeping", function()
  it("leaves this process without children", function()
    assert.same({}, H.children_of(unistd.getpid()))
  end)
end)

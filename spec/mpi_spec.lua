--[[
mp.mpi: the Pool over MPI ranks, with real mpirun jobs (static launch) and
real MPI_Comm_spawn (dynamic launch). Skipped, saying why, only when mpirun
or mp/mpi.so is absent (scripts/setup installs Open MPI, so CI runs it).
Every run has a timeout; every rank's pid is checked gone afterwards.
]]
local H = require "spec.helper"

local mpirun, ENV, describe_mpi = H.mpi.mpirun, H.mpi.env, H.mpi.describe(describe, pending)

-- H.run_script puts the script first: mpirun needs its options and the program before it.
local function run_mpi(source, timeout, dynamic)
  local path = os.tmpname() .. ".lua"
  local f = assert(io.open(path, "wb"))
  f:write(source)
  f:close()
  local args = dynamic and { path } or { "--oversubscribe", "-n", "3", H.mplua, path }
  local r = H.run({ program = dynamic and H.mplua or mpirun, args = args, env = ENV, timeout = timeout or 60 })
  os.remove(path)
  return r
end

-- Waits (up to 10 s) until none of the pids is a live process; returns the ones left.
local function gone(pids)
  local deadline = os.time() + 10
  repeat
    local left = {}
    for _, pid in ipairs(pids) do
      local f = io.open("/proc/" .. pid .. "/stat", "r")
      if f then
        local st = f:read("a"):match("%) (%a) ")
        f:close()
        if st ~= "Z" then left[#left + 1] = pid end
      end
    end
    if #left == 0 then return left end
    require("mp").sleep(0.05)
  until os.time() > deadline
  return pids
end

local function pids_of(out, tag)
  local pids = {}
  for pid in out:gmatch(tag .. "%s+(%d+)") do pids[#pids + 1] = tonumber(pid) end
  return pids
end

describe_mpi("mp.mpi", function()
  it("runs the whole Pool API over 2 worker ranks under mpirun -n 3, and every rank exits", function()
    local r = run_mpi([[
      local mp = require "mp"
      local mpi = require "mp.mpi"
      print("rank-pid", mp.getpid())
      io.stdout:flush()
      local pool <close> = mpi.Pool{initializer = function(v) INIT = v end, initargs = {"init-ok"}}
      assert(mpi.rank == 0 and mpi.size == 3 and type(mpi.processor_name) == "string")
      local k = 7
      print("map", table.concat(pool:map(function(x) return x * k end, {1, 2, 3, 4}), ","))
      local ranks, n = {}, 0
      for _, r in ipairs(pool:map(function() local m = require "mp"; m.sleep(0.02); return require("mp.mpi").rank end,
                                  {1, 2, 3, 4, 5, 6, 7, 8}, 1)) do
        if not ranks[r] then ranks[r] = true; n = n + 1 end
      end
      print("ranks", n, ranks[0] and "rank0-ran-a-task" or "only-workers")
      local ok, err = pcall(pool.map, pool, function(x) if x == 3 then error("boom " .. x) end return x end, {1, 2, 3})
      print("remote", mp.RemoteError:is(err), err.message, err.traceback:find("stack traceback") ~= nil)
      local cb = 0
      local ars = {}
      for i = 1, 10 do
        ars[i] = pool:apply_async(function(a) return a * 2, INIT end, {i}, {callback = function() cb = cb + 1 end})
      end
      local s = 0
      for i = 1, 10 do local v, init = ars[i]:get(10); s = s + v; assert(init == "init-ok") end
      local done = 0
      for _ in mp.as_completed({pool:apply_async(math.sqrt, {4}), pool:apply_async(math.max, {1, 2})}, 10) do done = done + 1 end
      print("futures", s, cb, done)
      local t = {}
      for v in pool:imap(function(x) return x + 1 end, {1, 2, 3}) do t[#t + 1] = v end
      print("imap", table.concat(t, ","), table.concat(pool:starmap(function(a, b) return a - b end, {{5, 1}, {9, 2}}), ","))
      local pids = pool:map(function() local m = require "mp"; m.sleep(0.02); return m.getpid() end, {1, 2, 3, 4, 5, 6}, 1)
      for _, p in ipairs(pids) do print("rank-pid", p) end
      pool:close()
      pool:join()
      print("end")
    ]])
    assert.are.equal(0, r.status, r.stderr)
    assert.matches("map%s+7,14,21,28", r.stdout)
    assert.matches("ranks%s+2%s+only%-workers", r.stdout)
    assert.matches("remote%s+true%s+[^\n]*boom%s+3%s+true", r.stdout)
    assert.matches("futures%s+110%s+10%s+2", r.stdout)
    assert.matches("imap%s+2,3,4%s+4,7", r.stdout)
    assert.matches("\nend\n", r.stdout)
    local pids = pids_of(r.stdout, "rank%-pid")
    assert.is_true(#pids >= 3)
    assert.are.same({}, gone(pids))
  end)

  it("gives an MPI pool's futures the local Pool's behaviour: wait modes, cancel, callbacks, timeouts", function()
    local r = run_mpi([[
      local mp = require "mp"
      local mpi = require "mp.mpi"
      local pool <close> = mpi.Pool()
      local function slow(s) require("mp").sleep(s); return s end
      -- mp.wait: FIRST_COMPLETED, FIRST_EXCEPTION, ALL_COMPLETED, mixed with a pipe.
      local a, b = pool:apply_async(slow, {0.4}), pool:apply_async(function() return "fast" end)
      local done, not_done = mp.wait({a, b}, 10)
      print("first", #done, #not_done, done[1] == b)
      local bad = pool:apply_async(function() error("bad task") end)
      done = mp.wait({a, bad}, 10, "FIRST_EXCEPTION")
      print("exception", #done, done[1] == bad)
      done, not_done = mp.wait({a, b, bad}, 10, "ALL_COMPLETED")
      print("all", #done, #not_done)
      local rd, wr = mp.Pipe(false)
      local c = pool:apply_async(slow, {0.3})
      wr:send("x")
      done = mp.wait({c, rd}, 10)
      print("pipe", #done, done[1] == rd, c:get(10))
      -- cancel: tasks beyond 2 per worker wait in rank 0 and can be cancelled there.
      local ars = {}
      for i = 1, 10 do ars[i] = pool:apply_async(function(x) return x end, {i}) end
      print("cancel", ars[10]:cancel(), ars[10]:cancelled(), ars[1]:cancel())
      local ok, err = pcall(ars[10].get, ars[10], 1)
      local s = 0
      for i = 1, 9 do s = s + ars[i]:get(10) end
      print("cancelled", ok, mp.CancelledError:is(err), s)
      -- callbacks and error callbacks, of apply_async and map_async.
      local got, failed, mapped = nil, nil, nil
      pool:apply_async(function() return 5 end, {}, {callback = function(v) got = v end}):wait(10)
      local e = pool:apply_async(function() error("oops") end, {}, {error_callback = function(x) failed = x end})
      e:wait(10)
      pool:map_async(function(x) return -x end, {1, 2, 3}, {callback = function(v) mapped = v end}):wait(10)
      print("callbacks", got, mp.RemoteError:is(failed), failed and failed.message:find("oops") ~= nil,
        mapped and table.concat(mapped, ","))
      -- A per-task timeout on a rank of mpirun's job is not enforced: the task runs to its end.
      print("timeout", pool:apply_async(slow, {0.3}, {timeout = 0.1}):get(10))
      -- as_completed over an MPI pool and a local pool at once.
      local lp <close> = mp.Pool(1)
      local n = 0
      for _ in mp.as_completed({pool:apply_async(slow, {0.1}), lp:apply_async(slow, {0.1})}, 10) do n = n + 1 end
      print("as_completed", n)
      -- The MPI transport does not travel to a fork-server child (only the local one does).
      local child = mp.get_context("forkserver").Process{target = function() end, args = {pool._tr}}
      local okc, cerr = pcall(child.start, child)
      print("travel", okc, tostring(cerr):find("pool transport of type 'mpi'", 1, true) ~= nil)
      print("end")
    ]])
    assert.are.equal(0, r.status, r.stderr)
    assert.matches("first%s+1%s+1%s+true", r.stdout)
    assert.matches("exception%s+1%s+true", r.stdout)
    assert.matches("all%s+3%s+0", r.stdout)
    assert.matches("pipe%s+1%s+true%s+0.3", r.stdout)
    assert.matches("cancel%s+true%s+true%s+false", r.stdout)
    assert.matches("cancelled%s+false%s+true%s+45", r.stdout)
    assert.matches("callbacks%s+5%s+true%s+true%s+%-1,%-2,%-3", r.stdout)
    assert.matches("timeout%s+0.3", r.stdout)
    assert.matches("as_completed%s+2", r.stdout)
    assert.matches("travel%s+false%s+true", r.stdout)
    assert.matches("\nend\n", r.stdout)
  end)

  it("refuses mp objects in tasks, saying MPI passes bytes only and what works, and keeps serving", function()
    local r = run_mpi([[
      local mp = require "mp"
      local mpi = require "mp.mpi"
      local pool <close> = mpi.Pool()
      local q = mp.Queue()
      local function show(ok, err) print(ok, (tostring(err):gsub("^[^\n]-:%d+: ", ""))) end
      show(pcall(pool.map, pool, function(t) return 1 end, {{inner = {q}}}))
      show(pcall(pool.apply, pool, function() return q end))
      show(pcall(function() return pool:apply_async(function(l) return 1 end, {mp.Lock()}):get(10) end))
      print("still", pool:map(function(x) return x * 2 end, {1, 2})[2])
      pool:close(); pool:join()
    ]])
    assert.are.equal(0, r.status, r.stderr)
    local why = "cannot travel to a worker of this pool: its transport passes bytes only, not the fds and " ..
      "shared memory an mp object lives on %(an MPI worker rank may run on another machine%); create the " ..
      "object where it is used %(e.g. in the Pool's initializer, which runs on each worker%), or pass plain values"
    assert.matches("false\titem 1%.inner%[1%]: an mp%.Queue " .. why, r.stdout)
    assert.matches("false\tbad argument #1 to 'apply_async' %(function%(upvalue q%): an mp%.Queue " .. why .. "%)", r.stdout)
    assert.matches("false\titem 1: an mp%.Lock " .. why, r.stdout)
    assert.matches("still\t4", r.stdout)
  end)

  it("runs examples/mpi/hybrid.lua: a local pool inside each worker rank", function()
    local r = H.run({ program = mpirun, args = { "--oversubscribe", "-n", "3", H.mplua, "examples/mpi/hybrid.lua", "2000" },
                      env = ENV, timeout = 60 })
    assert.are.equal(0, r.status, r.stderr)
    assert.matches("rank 1 used a local pool of %d+", r.stdout)
    assert.matches("rank 2 used a local pool of %d+", r.stdout)
    assert.matches("sum of sin%^2 %+ cos%^2 over 2000 numbers: 2000\n", r.stdout)
  end)

  it("ends the job within seconds, with mpirun's message and a non-zero exit, when a worker rank is killed", function()
    local mp = require "mp"
    local t0 = mp.time()
    local r = run_mpi([[
      local mp = require "mp"
      local mpi = require "mp.mpi"
      print("rank-pid", mp.getpid())
      io.stdout:flush()
      local pool <close> = mpi.Pool()
      pool:map(function(x)
        local m = require "mp"
        if x == 3 then print("rank-pid", m.getpid()); io.stdout:flush(); os.execute("kill -9 " .. m.getpid()) end
        m.sleep(0.05)
        return x
      end, {1, 2, 3, 4, 5, 6, 7, 8}, 1)
      print("not reached")
    ]], 60)
    local elapsed = mp.time() - t0
    assert.are_not.equal(0, r.status)
    assert.are_not.equal(124, r.status)             -- not the timeout: mpirun ended it
    assert.is_true(elapsed < 15, "took " .. elapsed .. " s")
    assert.matches("exited on signal 9", r.stderr)
    assert.is_nil(r.stdout:find("not reached"))
    assert.are.same({}, gone(pids_of(r.stdout, "rank%-pid")))
  end)

  it("spawns worker ranks with MPI_Comm_spawn when started without mpirun", function()
    local r = run_mpi([[
      local mp = require "mp"
      local mpi = require "mp.mpi"
      assert(mpi.size == 1 and mpi.rank == 0)
      local pool <close> = mpi.Pool(2)
      local k = 3
      print("map", table.concat(pool:map(function(x) return x * k end, {1, 2, 3}), ","))
      local pids, n = {}, 0
      for _, p in ipairs(pool:map(function() local m = require "mp"; m.sleep(0.02); return m.getpid() end, {1, 2, 3, 4, 5, 6}, 1)) do
        if not pids[p] then pids[p] = true; n = n + 1; print("worker-pid", p) end
      end
      print("workers", n)
      pool:close()
      pool:join()
      print("end")
    ]], 60, true)
    assert.are.equal(0, r.status, r.stderr)
    assert.matches("map%s+3,6,9", r.stdout)
    assert.matches("workers%s+2", r.stdout)
    assert.matches("\nend\n", r.stdout)
    assert.are.same({}, gone(pids_of(r.stdout, "worker%-pid")))
  end)

  it("fails the task of a killed spawned rank with WorkerLostError and goes on with new ranks", function()
    local r = run_mpi([[
      local mp = require "mp"
      local mpi = require "mp.mpi"
      local pool <close> = mpi.Pool(2)
      local victim = pool:apply_async(function()
        local m = require "mp"
        print("worker-pid", m.getpid()); io.stdout:flush()
        os.execute("kill -9 " .. m.getpid())
        m.sleep(30)
      end)
      local ok, err = pcall(victim.get, victim, 30)
      print("victim", ok, mp.WorkerLostError:is(err))
      local r = pool:map(function(x) local m = require "mp"; print("worker-pid", m.getpid()); io.stdout:flush(); return x + 1 end, {1, 2, 3, 4}, 1)
      print("after", table.concat(r, ","))
      pool:close()
      pool:join()
      print("end")
    ]], 60, true)
    assert.are.equal(0, r.status, r.stderr)
    assert.matches("victim%s+false%s+true", r.stdout)
    assert.matches("after%s+2,3,4,5", r.stdout)
    assert.matches("\nend\n", r.stdout)
    assert.are.same({}, gone(pids_of(r.stdout, "worker%-pid")))
  end)
end)

-- Process sentinels without pidfd_open (old kernels, valgrind): a pipe per child.
local H = require "helper"

local function run_without_pidfd(src)
  return H.run_script(src, { env = { MPLUA_NO_PIDFD = "1" } })
end

describe("sentinels without pidfd_open", function()
  it("become ready when the child ends, not before, for join and mp.wait", function()
    local r = run_without_pidfd([[
      local go = mp.Event()
      local p = mp.Process{ target = function() go:wait(10) end }
      p:start()
      print(#mp.wait({ p.sentinel }, 0), p.exitcode)
      go:set()
      print(#mp.wait({ p.sentinel }, 10))
      p:join(10)
      print(p.exitcode)
    ]])
    assert.equal(0, r.status, r.stderr)
    assert.equal("0\tnil\n1\n0\n", r.stdout)
  end)

  it("of a child are not held open by the child's own children", function()
    local r = run_without_pidfd([[
      local started, release, done = mp.Event(), mp.Event(), mp.Event()
      local p = mp.Process{ target = function()
        mp.Process{ target = function() started:set(); release:wait(10); done:set() end }:start()
        started:wait(10)
        mp.kill(mp.getpid(), "SIGKILL")   -- dies with its child still running
      end }
      p:start()
      local ready = mp.wait({ p.sentinel }, 10)
      print(#ready, done:is_set())
      release:set()
      print(done:wait(10))
      p:join(10)
      print(p.exitcode)
    ]])
    assert.equal(0, r.status, r.stderr)
    assert.equal("1\tfalse\ntrue\n-9\n", r.stdout)
  end)

  it("let a pool replace a killed worker", function()
    local r = run_without_pidfd([[
      local pool <close> = mp.Pool(2)
      local pid = pool:apply(mp.getpid)
      local ok, err = pcall(pool.apply, pool, function() mp.kill(mp.getpid(), "SIGKILL") end)
      print(ok, mp.WorkerLostError:is(err), pool:apply(function() return 7 end))
    ]])
    assert.equal(0, r.status, r.stderr)
    assert.equal("false\ttrue\t7\n", r.stdout)
  end)
end)

--[[
Regression: the MPI transport's wait recomputed its slice's end at every poll,
so it never ended a slice: a wait on an mpi.Pool slept until a message came or
the caller's deadline passed. A per-task timeout on a spawned rank was never
enforced (get(20) of a stuck task with timeout 0.5 failed after 20 s with "not
ready", the rank left spinning), and a signal handler's error (Ctrl-C too)
could not interrupt get() without a timeout. Both must happen within seconds.
Dynamic launch (spawned ranks): its workers can be killed alone.
]]
local H = require "helper"

local ENV, describe_mpi = H.mpi.env, H.mpi.describe(describe, pending)

describe_mpi("mpi.Pool waits end their slices", function()
  it("kills a spawned rank whose task runs over its timeout", function()
    local r = H.run_script([[
      local mp = require "mp"
      local mpi = require "mp.mpi"
      local pool <close> = mpi.Pool(1)
      local t0 = mp.time()
      local stuck = pool:apply_async(function() while true do end end, {}, { timeout = 0.5 })
      local ok, err = pcall(stuck.get, stuck, 15)
      print("stuck", ok, mp.TimeoutError:is(err), err.message)
      print("elapsed", mp.time() - t0)
      print("after", pool:apply(function(a, b) return a * b end, { 6, 7 }))
    ]], { env = ENV, timeout = 40 })
    assert.are.equal(0, r.status, r.stderr)
    assert.matches("stuck%s+false%s+true%s+the task ran over its timeout of 0.5 s", r.stdout)
    local elapsed = tonumber(r.stdout:match("elapsed%s+([%d.]+)"))
    assert.is_true(elapsed >= 0.5 and elapsed < 10, "TimeoutError after " .. tostring(elapsed) .. " s")
    assert.matches("after%s+42", r.stdout)
  end)

  it("lets a signal handler's error interrupt get() without a timeout", function()
    local r = H.run_script([[
      local mp = require "mp"
      local mpi = require "mp.mpi"
      mp.signal("SIGUSR1", function() error("interrupted by SIGUSR1") end)
      local pool <close> = mpi.Pool(1)
      local me = mp.getpid()
      local stuck = pool:apply_async(function()
        os.execute("kill -USR1 " .. me)     -- the task runs: now interrupt rank 0's get
        while true do end
      end)
      local ok, err = pcall(stuck.get, stuck)
      print("get", ok, tostring(err))
    ]], { env = ENV, timeout = 30 })
    assert.are_not.equal(124, r.status, "get() was not interrupted")
    assert.are.equal(0, r.status, r.stderr)
    assert.matches("get%s+false%s+[^\n]*interrupted by SIGUSR1", r.stdout)
  end)
end)

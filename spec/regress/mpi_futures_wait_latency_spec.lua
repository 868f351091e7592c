--[[
Regression: mp.wait over an mpi.Pool's AsyncResult and another source (a
pipe) waited on the other source's fd for 100 ms at a time: the MPI transport
has no fd, so the pool's results were looked at only between those waits, and
each instant task took at least 100 ms to be seen (20 of them: 2 s). A pool
without an fd is now polled every few milliseconds.
]]
local H = require "helper"

local mpirun, ENV, describe_mpi = H.mpi.mpirun, H.mpi.env, H.mpi.describe(describe, pending)

describe_mpi("mp.wait on an mpi.Pool and a pipe", function()
  it("sees each result within milliseconds, not at the end of a 100 ms wait on the pipe", function()
    local path = os.tmpname() .. ".lua"
    H.write_file(path, [[
      local mp = require "mp"
      local mpi = require "mp.mpi"
      local pool <close> = mpi.Pool()
      local r, w = mp.Pipe(false)
      pool:apply(math.abs, {1})                  -- the worker rank is up and has run a task
      local t0 = mp.time()
      for i = 1, 20 do
        local ar = pool:apply_async(math.abs, {-i})
        local done, not_done = mp.wait({ar, r}, 10)
        assert(done[1] == ar and not_done[1] == r and ar:get() == i)
      end
      print("elapsed", mp.time() - t0)
    ]])
    local r = H.run {
      program = mpirun, args = { "--oversubscribe", "-n", "2", H.mplua, path }, timeout = 60, env = ENV,
    }
    os.remove(path)
    assert.are.equal(0, r.status, r.stderr)
    local elapsed = tonumber(r.stdout:match("elapsed%s+([%d.]+)"))
    -- The old code: at least 20 x 100 ms. Now a few ms each, even on a busy machine.
    assert.is_true(elapsed < 1.5, "20 waits took " .. tostring(elapsed) .. " s")
  end)
end)

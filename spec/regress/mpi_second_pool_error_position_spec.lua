--[[
Regression: a second mpi.Pool while the first one holds the world's worker
ranks raised "mp/mpipool.lua:139: the worker ranks already serve another
mpi.Pool: close it first": the position named mp's own file instead of the
caller's line, as every other misuse error of mp gives.
]]
local H = require "helper"

local mpirun, ENV, describe_mpi = H.mpi.mpirun, H.mpi.env, H.mpi.describe(describe, pending)

describe_mpi("a second mpi.Pool while the first is open", function()
  it("is an error at the caller's line", function()
    local path = os.tmpname() .. ".lua"
    H.write_file(path, [[
local mpi = require "mp.mpi"
local pool <close> = mpi.Pool()
local ok, err = pcall(function() local p = mpi.Pool(); return p end)
print("second", ok, err)
print("first still serves", pool:apply(function(a, b) return a + b end, { 40, 2 }))
]])
    local r = H.run { program = mpirun, args = { "--oversubscribe", "-n", "2", H.mplua, path }, env = ENV, timeout = 60 }
    os.remove(path)
    assert.are.equal(0, r.status, r.stderr)
    local line = r.stdout:match("second%s+false%s+([^\n]*)")
    assert.is_not_nil(line, r.stdout)
    assert.equal(path .. ":3: the worker ranks already serve another mpi.Pool: close it first", line)
    assert.matches("first still serves%s+42", r.stdout)
  end)
end)

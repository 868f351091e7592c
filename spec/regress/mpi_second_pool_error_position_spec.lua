--[[
Regression: a second mpi.Pool while the first one holds the world's worker
ranks raised "mp/mpipool.lua:139: the worker ranks already serve another
mpi.Pool: close it first": the position named mp's own file instead of the
caller's line, as every other misuse error of mp gives.
]]
local H = require "helper"

local which = io.popen("command -v mpirun 2>/dev/null")
local mpirun = which:read("l")
which:close()
local have_module = io.open(H.build .. "/mp/mpi.so", "rb")
if have_module then have_module:close() end

local ENV = {
  OMPI_ALLOW_RUN_AS_ROOT = "1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM = "1",
  OMPI_MCA_btl_tcp_if_include = "lo", OMPI_MCA_oob_tcp_if_include = "lo",
  LUA_CPATH = H.build .. "/?.so;;",
  ASAN_OPTIONS = "detect_leaks=0",        -- Open MPI's own allocations outlive MPI_Finalize
}

local describe_mpi = (mpirun and have_module) and describe or function(name)
  describe(name, function()
    pending(not mpirun and "mpirun not found: install openmpi-bin (scripts/setup does)"
      or "mp/mpi.so not built: install libopenmpi-dev (scripts/setup does) and rebuild")
  end)
end

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

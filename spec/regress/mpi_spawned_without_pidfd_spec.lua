--[[
Regression: rank 0 signalled and watched its spawned ranks only through
pidfds. Where pidfd_open does not exist (kernels before 5.3; valgrind, which
does not know the system call) a task running over its timeout was never
killed and a spawned rank that died was never noticed: get() waited forever.
Now such ranks are signalled by pid and watched with kill(pid, 0). Forced
here by running rank 0 under valgrind, whose pidfd_open fails (the spec says
so and stays pending if a valgrind ever learns the call).
]]
local H = require "helper"

local which = io.popen("command -v mpirun 2>/dev/null")
local mpirun = which:read("l")
which:close()
local have_module = io.open(H.build .. "/mp/mpi.so", "rb")
if have_module then have_module:close() end
local has_valgrind = os.execute("command -v valgrind >/dev/null 2>&1")

local ENV = {
  OMPI_ALLOW_RUN_AS_ROOT = "1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM = "1",
  OMPI_MCA_btl_tcp_if_include = "lo", OMPI_MCA_oob_tcp_if_include = "lo",
  LUA_CPATH = H.build .. "/?.so;;",
}

local why_not = not mpirun and "mpirun not found: install openmpi-bin (scripts/setup does)"
  or not have_module and "mp/mpi.so not built: install libopenmpi-dev (scripts/setup does) and rebuild"
  or not has_valgrind and "valgrind is not installed (scripts/setup installs it)"
  or (os.getenv("MPLUA_ASAN_PRELOAD") or os.getenv("MPLUA_SPEC_WRAPPER"))
     and "not under AddressSanitizer or an MPLUA_SPEC_WRAPPER: valgrind runs the plain build itself"

describe("regress: spawned MPI ranks where pidfds are missing", function()
  if why_not then pending(why_not) return end
  it("are killed at a task's timeout, and their death fails the task instead of hanging", function()
    local path = os.tmpname() .. ".lua"
    H.write_file(path, [[
      local mp = require "mp"
      local mpi = require "mp.mpi"
      local pool <close> = mpi.Pool(1)
      print(pool:apply(function() return "up" end))
      local stuck = pool:apply_async(function() while true do end end, {}, { timeout = 0.5 })
      local ok, err = pcall(stuck.get, stuck, 60)
      print("stuck", ok, mp.TimeoutError:is(err))
      local dies = pool:apply_async(function() os.exit(3) end)
      ok, err = pcall(dies.get, dies, 60)
      print("dies", ok, mp.WorkerLostError:is(err))
      print("after", pool:apply(function(a, b) return a * b end, { 6, 7 }))
    ]])
    local r = H.run {
      program = "valgrind",
      args = { "--tool=none", H.mplua, path },
      env = ENV, timeout = 180,
    }
    os.remove(path)
    if not r.stderr:find("unhandled amd64%-linux syscall: 434") then
      pending("this valgrind knows pidfd_open: the fallback is not exercised")
      return
    end
    assert.equal(0, r.status, r.stdout .. r.stderr)
    assert.equal("up\nstuck\tfalse\ttrue\ndies\tfalse\ttrue\nafter\t42\n", r.stdout)
  end)
end)

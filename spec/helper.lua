--[[
Spec helper, loaded before every spec file (see .busted) and by `require "helper"`.

It fails any test that leaves something behind: child processes (running or
zombie), new entries in /dev/shm, or a manager's socket directory. Leftover children are killed and reaped so
the next test starts clean. The check uses luaposix and /proc, an independent
view of the OS, not mp's own bookkeeping.

It also gives specs a subprocess runner for the mplua binary (H.run) and a
join with a timeout that fails instead of hanging (H.join).
]]
local unistd = require "posix.unistd"
local signal = require "posix.signal"
local wait = require "posix.sys.wait"
local dirent = require "posix.dirent"

local H = {}

H.build = os.getenv("MPLUA_BUILD") or "build"
H.mplua = H.build .. "/mplua"
-- The checkout (specs run from its top directory).
H.root = os.getenv("PWD") or "."
H.lua = "lua5.4"
-- An mplua with the fault-injection points compiled in (src/engine/fault.h):
-- scripts/test builds it; inside it, mp.core.fault_arm(spec) arms a point.
H.faults = (os.getenv("MPLUA_FAULTS_BUILD") or "build-faults") .. "/mplua"

-- The contents of a file, or nil when it cannot be opened.
local function read_file(path)
  local f = io.open(path, "rb")
  if not f then return nil end
  local s = f:read("a")
  f:close()
  return s
end
H.read_file = read_file

function H.write_file(path, s)
  local f = assert(io.open(path, "wb"))
  f:write(s)
  f:close()
end

-- pid --> state letter for every process whose parent is `ppid`.
function H.children_of(ppid)
  local found = {}
  for _, name in ipairs(dirent.dir("/proc")) do
    local pid = tonumber(name)
    if pid then
      local stat = read_file("/proc/" .. name .. "/stat") or ""
      -- "pid (comm) S ppid ...": comm may hold spaces and parentheses.
      local state, parent = stat:match("%) (%a) (%d+)")
      if parent and tonumber(parent) == ppid then found[pid] = state end
    end
  end
  return found
end

--[[
Other test runs share this machine and its /dev/shm (other checkouts run their
suites at the same time, Python's benchmark makes semaphores there): only
entries this run could have made are looked at, those whose name holds this
process's pid as a whole number. mplua names nothing in /dev/shm by itself;
mp.SharedMemory's own names are "psm_<creator pid>_<hex>", and specs name
their segments with H.shm_name, which puts the pid in. A segment created
without a name by a spec's child process carries the child's pid: specs make
those in the test process itself.
]]
local function ours(name, pid)
  return name:find("%f[%d]" .. pid .. "%f[%D]") ~= nil
end

local function shm_entries()
  local set = {}
  local pid = unistd.getpid()
  for _, name in ipairs(dirent.dir("/dev/shm") or {}) do
    if name ~= "." and name ~= ".." and ours(name, pid) then set[name] = true end
  end
  return set
end

-- A /dev/shm name for a spec, which the leftover check knows as this run's.
function H.shm_name(tag)
  return string.format("mplua_spec_%d_%s", unistd.getpid(), tag or "shm")
end

-- The manager socket directories of this process (mplua-<pid>-XXXXXX in $TMPDIR or /tmp).
local function tmp_dir() local t = os.getenv("TMPDIR"); return (t and t ~= "") and t or "/tmp" end
function H.manager_dirs()
  local set = {}
  local prefix = "mplua-" .. unistd.getpid() .. "-"
  for _, name in ipairs(dirent.dir(tmp_dir()) or {}) do
    if name:sub(1, #prefix) == prefix then set[name] = true end
  end
  return set
end

--[[
Whether a live process maps /dev/shm/name or holds it open. /dev/shm is the
machine's: spec files run side by side (mplua-busted -j) and other checkouts'
suites make entries there too. One in use by a live process was not left behind
by this test (its own children are killed before this is asked).
]]
local function shm_in_use(name)
  local path = "/dev/shm/" .. name
  for _, pid in ipairs(dirent.dir("/proc") or {}) do
    if tonumber(pid) then
      local maps = read_file("/proc/" .. pid .. "/maps")
      if maps and maps:find(path, 1, true) then return true end
      local ok, fds = pcall(dirent.dir, "/proc/" .. pid .. "/fd")
      for _, fd in ipairs(ok and fds or {}) do
        if unistd.readlink("/proc/" .. pid .. "/fd/" .. fd) == path then return true end
      end
    end
  end
  return false
end

-- Kills and reaps what a test left behind; returns a description or nil.
local function leftovers(shm_before, dirs_before)
  local problems = {}
  local me = unistd.getpid()
  local kids = H.children_of(me)
  for pid, state in pairs(kids) do
    problems[#problems + 1] = string.format("child %d left %s", pid,
      state == "Z" and "as a zombie" or "running")
    if state ~= "Z" then signal.kill(pid, signal.SIGKILL) end
    wait.wait(pid)
  end
  for name in pairs(shm_entries()) do
    if not shm_before[name] and not shm_in_use(name) then
      problems[#problems + 1] = "/dev/shm/" .. name .. " left behind"
      os.remove("/dev/shm/" .. name)
    end
  end
  for name in pairs(H.manager_dirs()) do
    if not dirs_before[name] then
      local path = tmp_dir() .. "/" .. name
      problems[#problems + 1] = path .. " (a manager's socket directory) left behind"
      os.remove(path .. "/listener")
      os.remove(path)
    end
  end
  if #problems > 0 then return table.concat(problems, "; ") end
end

--[[
Wraps every test body: the leftover check runs even when the body failed, and
a failure of the body wins over a leftover report.
]]
local function install_leftover_check()
  local ok, busted = pcall(require, "busted")
  if not ok or type(busted) ~= "table" or not busted.subscribe then return end
  -- Once per run, not once per spec file (busted insulates globals and modules).
  local registry = debug.getregistry()
  if registry.mplua_leftover_check then return end
  registry.mplua_leftover_check = true
  busted.subscribe({ "test", "start" }, function(element)
    local run = element.run
    if type(run) ~= "function" then return nil, true end
    element.run = function(...)
      local before, dirs = shm_entries(), H.manager_dirs()
      local ok_run, err = pcall(run, ...)
      local problem = leftovers(before, dirs)
      if not ok_run then error(err, 0) end
      if problem then error("test left things behind: " .. problem, 0) end
    end
    return nil, true
  end)
end
install_leftover_check()

-- Single-quotes s for /bin/sh.
function H.quote(s)
  return "'" .. tostring(s):gsub("'", "'\\''") .. "'"
end

--[[
Runs a program as a subprocess with a timeout (default 20 s).
opts: args (list), stdin (string), program (default H.mplua), env (name -->
value), timeout, pipe_to (a shell command that reads the program's stdout). Returns {stdout=, stderr=, status=, signal=} where status is
the exit status (124 when the timeout killed it).
]]
function H.run(opts)
  local tmp = os.tmpname()
  local input, out, err = tmp .. ".in", tmp .. ".out", tmp .. ".err"
  local f = assert(io.open(input, "wb"))
  f:write(opts.stdin or "")
  f:close()
  local parts = {}
  for name, value in pairs(opts.env or {}) do
    parts[#parts + 1] = name .. "=" .. H.quote(value)
  end
  -- MPLUA_SPEC_WRAPPER (e.g. "valgrind -q --error-exitcode=99 ...") runs every
  -- subprocess under a tool; timeouts are stretched to match.
  -- Under mpirun the wrapper runs the ranks (not mpirun itself); a valgrind
  -- wrapper gets suppressions for Open MPI's own allocations (H.wrapper);
  -- opts.wrapped: the command applies H.wrapper() itself (a shell that must
  -- set a limit first).
  local wrapper = os.getenv("MPLUA_SPEC_WRAPPER")
  parts[#parts + 1] = "timeout -k 2 " .. tostring((opts.timeout or 20) * (wrapper and 10 or 1))
  local program = opts.program or H.mplua
  local ranks = wrapper and program:match("mpirun$")
  if wrapper and not ranks and not opts.wrapped then parts[#parts + 1] = H.wrapper() end
  parts[#parts + 1] = H.quote(program)
  local wrapped = not ranks
  for _, a in ipairs(opts.args or {}) do
    if not wrapped and a == H.mplua then
      parts[#parts + 1] = H.wrapper()
      wrapped = true
    end
    parts[#parts + 1] = H.quote(a)
  end
  local cmd = table.concat(parts, " ") .. " <" .. input .. " 2>" .. err
  if opts.pipe_to then cmd = cmd .. " | " .. opts.pipe_to end
  cmd = cmd .. " >" .. out
  local _, how, code = os.execute(cmd)
  local result = {
    stdout = read_file(out), stderr = read_file(err),
    status = how == "exit" and code or nil, signal = how == "signal" and code or nil,
  }
  for _, p in ipairs { tmp, input, out, err } do os.remove(p) end
  return result
end

-- MPI specs: mpirun's path (nil when absent), the environment every MPI run
-- gets, and a describe that stays pending, saying why, when mpirun or
-- mp/mpi.so is missing (scripts/setup installs Open MPI, so CI runs them).
H.mpi = {}
do
  local which = io.popen("command -v mpirun 2>/dev/null")
  H.mpi.mpirun = which:read("l")
  which:close()
  local module = io.open(H.build .. "/mp/mpi.so", "rb")
  if module then module:close() end
  -- Root allowed (CI runs as root); TCP on loopback (spawned ranks talk over
  -- TCP; this machine's other interface does not reach itself); under the
  -- sanitizer build, Open MPI's own allocations outlive MPI_Finalize (LSan lists
  -- thousands, in libmpi and its plugins): memory errors still fail the run.
  H.mpi.env = {
    OMPI_ALLOW_RUN_AS_ROOT = "1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM = "1",
    OMPI_MCA_btl_tcp_if_include = "lo", OMPI_MCA_oob_tcp_if_include = "lo",
    LUA_CPATH = H.build .. "/?.so;;",
    ASAN_OPTIONS = "detect_leaks=0",
  }
  H.mpi.missing = not H.mpi.mpirun and "mpirun not found: install openmpi-bin (scripts/setup does)"
    or not module and "mp/mpi.so not built: install libopenmpi-dev (scripts/setup does) and rebuild"
    or nil
  -- H.mpi.describe(describe, pending): busted's two, from the spec file's
  -- environment (they are not globals of this module) --> a describe for MPI.
  function H.mpi.describe(describe, pending)
    return function(name, fn)
      if not H.mpi.missing then return describe(name, fn) end
      describe(name, function() pending(H.mpi.missing) end)
    end
  end
end

-- MPLUA_SPEC_WRAPPER as words for a command line ("" when unset); a valgrind
-- wrapper gets the suppressions for Open MPI's libraries (scripts/valgrind-mpi.supp).
function H.wrapper()
  local wrapper = os.getenv("MPLUA_SPEC_WRAPPER")
  if not wrapper then return "" end
  if wrapper:find("valgrind", 1, true) then
    wrapper = wrapper .. " --suppressions=" .. H.quote(H.root .. "/scripts/valgrind-mpi.supp")
    local ompi = "/usr/share/openmpi/openmpi-valgrind.supp"
    if io.open(ompi) then wrapper = wrapper .. " --suppressions=" .. ompi end
  end
  return wrapper
end

-- Writes `source` to a temporary script and runs it with H.run (opts.args follow).
function H.run_script(source, opts)
  opts = opts or {}
  local path = os.tmpname() .. ".lua"
  local f = assert(io.open(path, "wb"))
  f:write(source)
  f:close()
  local args = { path }
  for _, a in ipairs(opts.args or {}) do args[#args + 1] = a end
  local copy = {}
  for k, v in pairs(opts) do copy[k] = v end
  copy.args = args
  local result = H.run(copy)
  os.remove(path)
  return result
end

local ptime = require "posix.time"
local waits = require "waits"

-- Sleeps about `s` seconds (a poll interval for the waits below, never a synchronization).
local function nap(s)
  ptime.nanosleep({ tv_sec = 0, tv_nsec = math.floor(s * 1e9) })
end

local function now()
  local t = ptime.clock_gettime(ptime.CLOCK_MONOTONIC)
  return t.tv_sec + t.tv_nsec / 1e9
end

--[[
Waits until pred() returns a true value and returns it; fails the test (naming
`what`) if that takes longer than `timeout` seconds (default 10). The way to
wait for a state (a file present, a process blocked), never a bare sleep.
(spec/waits.lua has the same for scripts run in subprocesses.)
]]
function H.wait_until(pred, timeout, what)
  return waits.until_true(pred, timeout or 10, what, nap, now)
end

-- The name of the system call process pid is asleep in, or nil when it runs or is gone.
H.blocked_in = waits.blocked_in

--[[
Waits until process pid sleeps in a blocking system call (one of `calls`, a
list of names such as {"futex"}, when given) and returns its name; fails on
timeout. This is how a spec knows that another process has reached a blocked
get, put, acquire or join.
]]
function H.wait_blocked(pid, calls, timeout)
  return waits.blocked(pid, calls, timeout, nap, now)
end

-- Raises unless f(...) raises an error object of class cls (mp.Empty...); returns the error.
function H.raises(cls, f, ...)
  local ok, err = pcall(f, ...)
  assert(not ok, "expected an error")
  if not cls:is(err) then
    error("expected " .. tostring(cls.__name or cls) .. ", got " .. tostring(err), 2)
  end
  return err
end

-- Starts fn(...) in a new mp.Process and returns it (join it with H.join).
function H.spawn(fn, ...)
  local p = require("mp").Process{ target = fn, args = table.pack(...) }
  p:start()
  return p
end

-- Joins p within `timeout` seconds (default 10); kills it and fails if it is still alive.
function H.join(p, timeout)
  p:join(timeout or 10)
  if p:is_alive() then
    p:kill()
    p:join()
    error(string.format("%s did not finish within %gs", tostring(p), timeout or 10), 2)
  end
  return p.exitcode
end

return H

--[[
The Lua half of mp.mpi (src/mpi/lmpi.c loads it and calls it with its C half).
It owns the ranks' roles and the MPI workers' lives; jobs, tasks and results
are the Pool's (lua/mp/pool.lua and src/lpool.c, unchanged), over the MPI
transport (src/mpi/mpichan.c) through the pool's transport seam.

  rank 0 (or a process started without mpirun): mpi.Pool() is an mp Pool
    whose workers are ranks 1..N-1 (static launch) or ranks it spawns
    (dynamic launch, when the job has one rank);
  other ranks, and spawned ones: mpi.Pool() serves pools until rank 0 says
    FINISH (at its exit), then exits the process; it never returns.
]]
local core = require "mp.core"
local pool = require "mp.pool"
local check = require "mp.check"

local mtype = math.type

return function(c)
  local M = { rank = c.rank, size = c.size, processor_name = c.processor_name, spawned = c.spawned }
  local static = c.size > 1

  ---------------------------------------------------------------------------
  -- A worker rank: the pools it serves, one after another.

  -- One pool's service: initializer, then the pool's C loop until STOP. Returns the EXIT code.
  local function serve_pool(w, payload)
    local index, key, at = string.unpack("<I4s1", payload)
    core.serial_key(key)                       -- rank 0's: functions travel between ranks
    local initializer, initargs, maxtasks = core.loads(payload:sub(at))
    w:hello()
    local tr = core.pool_transport(index, w)
    return pool.serve(tr, index, initializer, initargs, maxtasks) and 0 or 1
  end

  local function serve()
    local w = c._worker()
    while true do
      local payload = w:wait_start(0.1)       -- nil at each slice's end: hooks (signals) run
      if payload == false then w:finished(); break end
      if payload then
        local code = serve_pool(w, payload)
        if w:finished() then break end
        w:exit(code)
      end
    end
    io.stdout:flush()
    os.exit(0, true)
  end
  M._serve = serve

  ---------------------------------------------------------------------------
  -- Rank 0: the workers, as the Pool sees them (pid, name, exitcode, kill...).

  local Worker = {}
  local function worker_exitcode(self)
    local state, code = self._impl:info(self._index)
    if state == "exited" then return code end
    if state == "dead" then
      return "it ended without leaving the pool (killed or crashed); Open MPI ended its job"
    end
    return nil
  end
  Worker.__index = function(self, k)
    if k == "exitcode" then return worker_exitcode(self) end
    return Worker[k]
  end
  Worker.__name = "mp.MPIWorker"

  --[[
  kill/terminate: a spawned worker on this host that holds tasks gets the
  signal (Open MPI then ends its job); any other worker is told to stop, and
  leaves once the batches it holds are done (a rank of mpirun's job cannot be
  stopped alone).
  ]]
  local function stop_worker(self, sig)
    local impl, i = self._impl, self._index
    local _, _, _, _, _, spawned, held = impl:info(i)
    if spawned and held > 0 and impl:signal(i, sig) then return end
    impl:stop(i)
  end
  function Worker:kill() stop_worker(self, 9) end
  function Worker:terminate() stop_worker(self, 15) end

  function Worker:join(timeout)
    local deadline = timeout and core.time() + timeout
    while not self._impl:join(self._index, 0.1) do
      if deadline and core.time() >= deadline then return end
    end
  end

  function Worker:close() self._impl:release(self._index) end

  local function new_worker(impl, index)
    local _, _, pid, host, rank, spawned = impl:info(index)
    local name = spawned and ("spawned MPI rank on " .. host) or ("MPI rank " .. rank .. " on " .. host)
    return setmetatable({ _impl = impl, _index = index, pid = pid, name = name, sentinel = -1 }, Worker)
  end

  -- What a spawned worker runs: this program, with this process's module paths.
  local function spawn_args()
    return c._exe() or "mplua", {
      "-e", string.format("package.path = %q; package.cpath = %q; require('mp.mpi')._serve()",
        package.path, package.cpath),
    }
  end

  local POOL_KEYS = { "processes", "initializer", "initargs", "maxtasksperchild" }

  --[[
  Pool(processes, initializer, initargs, maxtasksperchild) or Pool{...}: on
  rank 0, an mp Pool over the worker ranks; elsewhere, serves and never returns.
  ]]
  function M.Pool(processes, initializer, initargs, maxtasksperchild)
    if c.spawned or (static and c.rank ~= 0) then serve() end
    local o
    if type(processes) == "table" then
      check.options(processes, "Pool", POOL_KEYS)
      o = {}
      for k, v in pairs(processes) do o[k] = v end
    else
      o = { processes = processes, initializer = initializer, initargs = initargs,
            maxtasksperchild = maxtasksperchild }
    end
    local n = o.processes
    if static then
      if n == nil then n = c.size - 1 end
      if mtype(n) == "integer" and n > c.size - 1 then
        check.argerror(1, "Pool", string.format("%d workers asked, but the job has %d worker ranks (mpirun -n %d)",
          n, c.size - 1, c.size))
      end
    elseif n == nil then
      n = core.cpu_count()
    end
    o.processes = n
    local impl
    local backend = {}
    function backend.transport(np, maxtasks)
      -- Its errors (the world's ranks busy with another pool) at the caller's line, not
      -- this file's: called by pcall, a C function's error carries no position.
      local ok, r = pcall(c._parent, np, maxtasks > 0 and 1 or 2, static)
      if not ok then
        if type(r) == "string" then check.error(r) end
        error(r, 0)
      end
      impl = r
      return core.pool_transport(np, impl)
    end
    function backend.start(index, init, iargs, maxtasks)
      if not static and select(6, impl:info(index)) == false then
        local cmd, args = spawn_args()
        local ok, why = impl:spawn(index, cmd, args)
        if not ok then
          error(string.format("mp.mpi: cannot spawn a worker rank (MPI_Comm_spawn: %s); launch the ranks " ..
            "statically instead: mpirun -n %d %s script.lua", why, n + 1, cmd), 0)
        end
      end
      local payload = string.pack("<I4s1", index, core.serial_key()) .. core.dumps(init, iargs, maxtasks)
      local again = false
      while not impl:start(index, payload, again) do again = true end
      return new_worker(impl, index)
    end
    return pool.pool_with(backend, o)
  end

  return M
end

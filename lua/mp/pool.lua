--[[
mp.Pool: Python's multiprocessing.Pool. Lua composes jobs, chunks, results
and the life of the workers; the per-item work (encoding a chunk, running it in
the worker, decoding results straight into the result table) and the
transport are C (src/lpool.c), so no Lua-level round trip is paid per item.

A job is one call (map, imap, apply_async...). It is cut into chunks; each
chunk is one task with an id. `records[slot(id)]` says where the task's
values go (a result list and an offset), so the C side fills result tables
directly. The pool makes progress only inside its own calls (there is no
thread): blocking calls wait on results and worker sentinels together, run
callbacks, send queued chunks, and replace workers that died.
]]
local core = require "mp.core"
local class = require "mp.class"
local errors = require "mp.errors"
local process = require "mp.process"

local M = {}

local classes = errors.classes
local getpid, now = core.getpid, core.time
local unpack, pack = table.unpack, table.pack
local ceil, min, max = math.ceil, math.min, math.max

local RUN, CLOSE, TERMINATE = "running", "closed", "terminated"

--[[
Records of tasks in flight live in a ring indexed by task id modulo RING (the
C side computes the same index and checks rec.id): keys stay small and dense,
so the table keeps an array part instead of rehashing as ids grow.
]]
local RING = 65536

--[[
An apply_async job is one small table: the job, its task record and its
AsyncResult at once. Array part: [1] itself (where its values go), [2] the
offset (values land at [AV..]), [3] the arguments, [4] the function's id, [5]
its bytes; hash part: _pool, _ready, id (0 until sent), _nv. A task in flight
costs memory the pool touches (page faults are dear here): four hash fields,
and an array already sized for the first value.
]]
local AV = 6
local function is_apply(rec) return rec._nv ~= nil end
-- A queued job with nothing left to send.
local function sent_all(job)
  if job._nv ~= nil then return job.id ~= 0 or job._ready end
  return job.exhausted
end
local MAX_INFLIGHT = RING - 1024
local function rkey(id) return ((id - 1) & (RING - 1)) + 1 end

--[[
A run record stands for the consecutive tasks id..run_last of a map job,
chunks of cs items from offset [2] (the last one may be short, ending at
offset stop): one table for many small tasks. Its ring entries all point to
it until each task settles. The rare paths (a task's error, a dead worker,
resending) first split the task out into a record of its own.
]]
local function run_part(rec, id)
  local off = rec[2] + (id - rec.id) * rec.cs
  return off, min(rec.cs, rec.stop - off)
end

local function split(records, id, rec)
  local off, count = run_part(rec, id)
  local r = { rec[1], off, job = rec.job, start = off + 1, count = count, id = id }
  records[rkey(id)] = r
  return r
end

-- The record of task id (split out of its run), or nil when settled.
local function rget(records, id)
  local rec = records[rkey(id)]
  if rec == nil then return nil end
  local last = rec.run_last
  if last then
    if id >= rec.id and id <= last then return split(records, id, rec) end
  elseif rec.id == id then
    return rec
  end
end

-- The task id of ring key k holding rec.
local function key_id(rec, k) return rec.id + ((k - rkey(rec.id)) % RING) end

local signal_names = {}
for name, num in pairs(core.signals) do signal_names[num] = name end

local function argerror(n, fname, msg, level)
  error(string.format("bad argument #%d to '%s' (%s)", n, fname, msg), level + 1)
end

local function callable(v)
  if type(v) == "function" then return true end
  local mt = getmetatable(v)
  return type(mt) == "table" and mt.__call ~= nil
end

local function check_fn(fn, fname, level)
  if not callable(fn) then argerror(1, fname, "function expected, got " .. type(fn), level + 1) end
end

--[[
A chunksize is a whole number of at least 1: a float is converted first (2.0
is 2), so 0.0 and -1.0 get the same error as 0 and -1, and what has no
integer value (NaN, infinities, 1e300, 2.5) is an error, never the default.
]]
local function check_chunksize(cs, n, fname, level)
  if cs == nil then return nil end
  local v = math.tointeger(cs)
  if v == nil or type(cs) ~= "number" then
    argerror(n, fname, "chunksize must be an integer, got " .. (type(cs) == "number" and tostring(cs) or type(cs)), level + 1)
  end
  if v < 1 then argerror(n, fname, "chunksize must be at least 1, got " .. v, level + 1) end
  return v
end

-- Pools made by this process; a forked child drops their parent-side ends.
local live = setmetatable({}, { __mode = "k" })
local spawning     -- the pool whose worker is being forked
local mypid = getpid()    -- getpid is a system call: keep it
process.at_fork(function()
  mypid = getpid()
  for pool in pairs(live) do
    local chan = rawget(pool, "_chan")
    if chan then chan:after_fork(pool == spawning) end
  end
end)

---------------------------------------------------------------------------
-- AsyncResult

local AsyncResult = class.Object:extend("AsyncResult")
M.AsyncResult = AsyncResult
-- Plain method lookup, no computed fields: the class helper's __index and
-- __newindex functions would cost a call per access of an absent field.
AsyncResult.__index, AsyncResult.__newindex = AsyncResult, nil

-- wait([timeout]): blocks until the result is ready (runs the pool meanwhile).
function AsyncResult:wait(timeout)
  if timeout ~= nil and type(timeout) ~= "number" then
    argerror(1, "wait", "number expected, got " .. type(timeout), 2)
  end
  if not self._ready then
    self._pool:_wait(function() return self._ready end, timeout)
  end
  return self._ready
end

-- get([timeout]) --> the task's results; raises its error, or TimeoutError.
function AsyncResult:get(timeout)
  if timeout ~= nil and type(timeout) ~= "number" then
    argerror(1, "get", "number expected, got " .. type(timeout), 2)
  end
  if not self._ready and not self:wait(timeout) then
    error(classes.TimeoutError("result not ready within the timeout"), 2)
  end
  if self._error ~= nil then error(self._error, 2) end
  local v = self._values
  if v == nil then return unpack(self, AV, AV - 1 + self._nv) end   -- apply: values inline
  return unpack(v, 1, v.n)
end

function AsyncResult:ready() return self._ready end

function AsyncResult:successful()
  if not self._ready then error("result is not ready", 2) end
  return self._error == nil
end

function AsyncResult:__tostring()
  return string.format("<AsyncResult %s>", self._ready and (self._error and "failed" or "ready") or "pending")
end

---------------------------------------------------------------------------
-- Pool

local Pool = class.Object:extend("Pool")
M.Pool = Pool
Pool.__index, Pool.__newindex = Pool, nil

local worker_counter = 0

-- The worker's life: initializer, then the C loop until end-of-tasks or maxtasks.
local function worker_main(chan, index, initializer, initargs, maxtasks)
  -- Ctrl-C is the parent's business: it terminates the pool.
  core.signal("SIGINT", "ignore")
  if initializer ~= nil then
    local ok, err = xpcall(initializer, function(e)
      local msg = e
      if type(e) ~= "string" then
        local mt = getmetatable(e)
        msg = (mt and mt.__tostring) and tostring(e) or "(error object is a " .. type(e) .. " value)"
      end
      return { msg, debug.traceback(nil, 2) }
    end, unpack(initargs, 1, initargs.n or #initargs))
    if not ok then
      chan:send_init_error("initializer failed: " .. tostring(err[1]), err[2])
      core.child_exit(1)
    end
  end
  core.pool_work(chan, index, maxtasks)
end

local function spawn_worker(self, index)
  worker_counter = worker_counter + 1
  local p = process.Process {
    target = worker_main,
    args = { self._chan, index, self._initializer, self._initargs, self._maxtasks, n = 5 },
    name = "PoolWorker-" .. worker_counter,
    daemon = true,
  }
  p._pool_worker = true
  spawning = self
  local ok, err = pcall(p.start, p)
  spawning = nil
  if not ok then error(err, 0) end
  self._workers[index] = p
  self._chan:watch(index, p.sentinel)
end

--[[
Pool(processes, initializer, initargs, maxtasksperchild) or
Pool{processes=, initializer=, initargs=, maxtasksperchild=}.
]]
function Pool:init(processes, initializer, initargs, maxtasksperchild)
  local level = 4                        -- user code -> __call -> new -> init
  if type(processes) == "table" then
    local o = processes
    processes, initializer, initargs, maxtasksperchild = o.processes, o.initializer, o.initargs, o.maxtasksperchild
  end
  if processes == nil then processes = core.cpu_count() end
  if math.type(processes) ~= "integer" then
    if type(processes) == "number" and processes == math.floor(processes) then
      processes = math.tointeger(processes)
    else
      argerror(1, "Pool", "processes must be an integer, got " .. type(processes), level)
    end
  end
  if processes < 1 then argerror(1, "Pool", "processes must be at least 1", level) end
  if initializer ~= nil and not callable(initializer) then
    argerror(1, "Pool", "initializer must be callable, got " .. type(initializer), level)
  end
  if initargs ~= nil and type(initargs) ~= "table" then
    argerror(1, "Pool", "initargs must be a table, got " .. type(initargs), level)
  end
  if maxtasksperchild ~= nil and (math.type(maxtasksperchild) ~= "integer" or maxtasksperchild < 1) then
    argerror(1, "Pool", "maxtasksperchild must be a positive integer", level)
  end
  self._owner = getpid()
  self._processes = processes
  self._initializer = initializer
  self._initargs = initargs or {}
  self._maxtasks = maxtasksperchild or 0
  self._state = RUN
  self._workers = {}
  self._records = {}      -- task id --> its record (see rkey)
  self._evs = {}          -- events tables, one per nesting depth (callbacks may call the pool)
  self._depth = 0
  self._queue = {}        -- jobs with chunks still to send, in submission order, from _qh
  self._qh, self._qt = 1, 0
  self._resend = {}       -- records of tasks a dead worker took but never started
  self._inflight = 0      -- tasks sent and not yet answered
  self._next_id = 0
  self._fncache = setmetatable({}, { __mode = "k" })
  self._fnids = {}
  self._nfn = 0
  self._chan = core.pool_channel(processes)
  live[self] = true
  for i = 1, processes do
    local ok, err = pcall(spawn_worker, self, i)
    if not ok then
      -- A pool that cannot be built leaves nothing behind, now (not at collection).
      self._state = TERMINATE
      for _, p in pairs(self._workers) do pcall(p.kill, p) end
      self:_shutdown()
      error(string.format("Pool: cannot start worker %d of %d: %s", i, processes,
        (tostring(err):gsub("^[^:\n]+:%d+: ", ""))), level)
    end
  end
end

local function check_running(self, level)
  if self._owner ~= mypid then error("pool used from a process that did not create it", level + 1) end
  if self._broken then error(self._broken, level + 1) end
  if self._state ~= RUN then error("Pool not running", level + 1) end
end

-- Upvalues that may change between calls make the cached encoding stale.
local function same_upvalues(fn, snap)
  if type(fn) ~= "function" then return true end
  for i = 1, snap.n do
    local name, v = debug.getupvalue(fn, i)
    if name ~= "_ENV" and v ~= snap[i] then return false end
  end
  return true
end

-- fn --> its id and encoding; reused while its scalar upvalues are unchanged.
local function fn_entry(self, fn)
  local e = self._fncache[fn]
  if e and (e.snap == nil or same_upvalues(fn, e.snap)) then return e.id, e.bytes end
  local bytes, why = core.pool_dumpfn(fn)
  if bytes == nil then return nil, why end
  local id = self._fnids[bytes]
  if not id then
    if self._nfn % 4096 == 4095 then self._fnids = {} end   -- bounded
    self._nfn = self._nfn + 1
    id = self._nfn
    self._fnids[bytes] = id
  end
  -- Cache by identity when every upvalue is a scalar (a table could be mutated).
  local snap, cacheable = nil, true
  if type(fn) == "function" then
    local i = 1
    while true do
      local name, v = debug.getupvalue(fn, i)
      if name == nil then break end
      if name ~= "_ENV" then
        local t = type(v)
        if t == "table" or t == "function" or t == "userdata" or t == "thread" then cacheable = false; break end
        snap = snap or {}
        snap[i] = v
      end
      i = i + 1
    end
    if snap then snap.n = i - 1 end
  end
  if cacheable then self._fncache[fn] = { id = id, bytes = bytes, snap = snap } end
  return id, bytes
end

local function new_job(self, kind, fn, fname, level)
  local id, bytes = fn_entry(self, fn)
  if id == nil then argerror(1, fname, (tostring(bytes):gsub("^function: ", "")), level + 1) end
  return { pool = self, kind = kind, fn_id = id, fn_bytes = bytes, sent = 0, done = 0,
           chunks_sent = 0, chunks_done = 0, consumed = 0 }
end

-- A job's first error wins; its result (if any) is then complete.
-- Settles an apply_async job with its values (err nil) or an error; runs its callback.
local function finish_apply(self, ar, err)
  if ar._ready then return end
  ar._ready = true
  ar[3], ar[5] = nil, nil
  local cb
  if err ~= nil then ar._error, cb = err, ar.error_callback else cb = ar.callback end
  if cb ~= nil then
    local ok, cerr
    if err == nil then ok, cerr = pcall(cb, unpack(ar, AV, AV - 1 + ar._nv))
    else ok, cerr = pcall(cb, err) end
    -- A callback that raises fails this result only.
    if not ok then ar._error = cerr end
  end
end

local function finish(self, job)
  if job.finished then return end
  job.finished = true
  local ar = job.result
  if ar == nil then return end
  if job.error ~= nil then
    ar._error = job.error
  else
    if job.kind ~= "A" then ar._values = { job.results, n = 1 } end
  end
  ar._ready = true
  -- Callbacks run here, in the parent; one that raises fails this result only.
  local cb = job.error ~= nil and job.error_callback or job.callback
  if cb ~= nil then
    local arg = job.error
    local ok, err
    if job.error == nil then ok, err = pcall(cb, ar:get())
    else ok, err = pcall(cb, arg) end
    if not ok then ar._error = err end
  end
end

local function job_complete(job)
  return job.exhausted and job.chunks_done == job.chunks_sent
end

local function fail_chunk(self, rec, err)
  if is_apply(rec) then return finish_apply(self, rec, err) end
  local job = rec.job
  job.chunks_done = job.chunks_done + 1
  job.done = job.done + rec.count
  if job.error == nil then job.error = err end
  if job.chunk_errors then job.chunk_errors[rec.start] = err end
  if job.ready_list then job.ready_list[#job.ready_list + 1] = rec end
  rec.settled = true
  if job_complete(job) or not job.ordered_stream then finish(self, job) end
end

local function remote_error(t)
  return classes.RemoteError(t[1] or "unknown error", { traceback = t[2], pid = t[3] })
end

-- Fails everything outstanding (initializer failure, terminate).
local function fail_all(self, err)
  local records = self._records
  for k, rec in pairs(records) do
    if rec.run_last then rec = split(records, key_id(rec, k), rec) end
    records[k] = nil
    fail_chunk(self, rec, err)
  end
  self._inflight = 0
  self._resend = {}
  for k = self._qh, self._qt do
    local job = self._queue[k]
    if is_apply(job) then
      if not sent_all(job) then finish_apply(self, job, err) end
    else
      if job.error == nil then job.error = err end
      if job.chunks_done == job.chunks_sent then finish(self, job) end
      job.exhausted = true
    end
  end
  self._queue, self._qh, self._qt = {}, 1, 0
end

local function handle_events(self, ev, n)
  local records = self._records
  for k = 0, n - 1 do
    local id, kind, x = ev[3 * k + 1], ev[3 * k + 2], ev[3 * k + 3]
    ev[3 * k + 3] = nil
    if kind == "F" then
      finish(self, x)         -- a map job whose last chunk the C side settled
    elseif kind == "I" then
      if not self._broken then
        self._broken = remote_error(x)
        fail_all(self, self._broken)
      end
    else
      local key = rkey(id)
      local rec = records[key]
      local count
      if rec ~= nil then
        local last = rec.run_last
        if last then
          if id < rec.id or id > last then rec = nil
          elseif kind ~= "R" then rec = split(records, id, rec); count = rec.count
          else local _; _, count = run_part(rec, id) end
        elseif rec.id ~= id then rec = nil
        else count = rec.count end
      end
      if rec ~= nil then
        records[key] = nil
        self._inflight = self._inflight - 1
        if kind == "R" and is_apply(rec) then
          rec._nv = x
          finish_apply(self, rec, nil)
        elseif kind == "R" then
          local job = rec.job
          job.chunks_done = job.chunks_done + 1
          job.done = job.done + count
          rec.settled = true
          if job.ready_list then job.ready_list[#job.ready_list + 1] = rec end
          if job_complete(job) then finish(self, job) end
        else
          fail_chunk(self, rec, remote_error(x))
        end
      end
    end
  end
end

-- Runs fetch(chan, records, events, ...) and handles the events it reports;
-- returns how many results came in and whether a worker died.
local function take(self, fetch, ...)
  local d = self._depth + 1
  self._depth = d
  local ev = self._evs[d]
  if ev == nil then ev = {}; self._evs[d] = ev end
  -- quiet: apply_async results without callbacks, settled by the C side.
  local n, died, quiet = fetch(self._chan, self._records, ev, ...)
  self._inflight = self._inflight - quiet
  handle_events(self, ev, n)
  self._depth = d - 1
  return n + quiet, died
end

local function describe_exit(code)
  if code < 0 then
    local name = signal_names[-code]
    return "killed by signal " .. (-code) .. (name and " (" .. name .. ")" or "")
  end
  return "exit code " .. code
end

local function outstanding(self)
  return self._inflight > 0 or self._qt >= self._qh
end

-- Reaps dead workers: fails the task each was running, starts replacements.
local function check_workers(self)
  -- Results a dead worker sent before dying are queued: take them first.
  repeat
    local n = take(self, self._chan.pump, 0)
  until n == 0
  for index = 1, self._processes do
    local p = self._workers[index]
    if p ~= nil then
      local code = p.exitcode
      if code ~= nil then
        take(self, self._chan.journal, index)
        local task, first, count, taking = self._chan:slot(index)
        -- It may have taken a message it had not named: see recover_lost.
        if taking then self._lost = true end
        for id = first, first + count - 1 do
          local r = rget(self._records, id)
          if r ~= nil and id ~= task and not r.resending then
            r.resending = true
            self._resend[#self._resend + 1] = r
          end
        end
        local rec = task and rget(self._records, task)
        if rec ~= nil then
          self._records[rkey(task)] = nil
          self._inflight = self._inflight - 1
          fail_chunk(self, rec, classes.WorkerLostError(string.format(
            "worker process %d (%s) died while running a task: %s", p.pid, p.name, describe_exit(code)),
            { pid = p.pid, exitcode = code }))
        end
        self._chan:watch(index, nil)
        p:join()
        p:close()
        self._workers[index] = nil
        if not self._broken and self._state ~= TERMINATE and (self._state == RUN or outstanding(self)) then
          spawn_worker(self, index)
        end
      end
    end
  end
end

-- Next chunk of a job: table range, or items pulled from an iterator into job.buf.
local function next_chunk(job)
  local cs = job.chunksize
  if job.src then
    local i = job.sent + 1
    if i > job.n then job.exhausted = true; return nil end
    local j = min(i + cs - 1, job.n)
    return job.src, i, j, i - 1
  end
  local buf = job.buf
  if buf.pending then return buf, 1, buf.count, job.sent end
  local iter, count = job.iter, 0
  for k = 1, cs do
    -- The iterator's error fails this imap where the items end, not the pool.
    local ok, v = pcall(iter)
    if not ok then
      if job.error == nil then job.error = v end
      v = nil
    end
    if v == nil then job.iter_done = true; break end
    buf[k] = v
    count = k
  end
  for k = count + 1, buf.count or 0 do buf[k] = nil end
  if count == 0 then job.exhausted = true; return nil end
  buf.count, buf.pending = count, true
  job.pulled = (job.pulled or 0) + count
  return buf, 1, count, job.sent
end

-- Encodes one chunk of a map-like job into the batch being built; false when an
-- item cannot be sent. (apply_async jobs are added by feed itself.)
local function add_task(self, job, src, i, j, offset)
  local id = self._next_id + 1
  local ok, emsg = self._chan:add(job.kind, id, job.fn_id, job.fn_bytes, src, i, j)
  if job.buf then job.buf.pending = nil end
  if ok == nil then
    -- An item that cannot be sent fails the job (and only it).
    job.exhausted = true
    if job.error == nil then job.error = emsg end
    return false
  end
  self._next_id = id
  local count, rec = j - i + 1, nil
  -- Small: one per task in flight. A table source gives the items again if the
  -- task must be resent; an iterator's are kept (job.buf is reused).
  if job.buf then
    rec = { job.dest, offset, job = job, start = offset + 1, count = count, id = id, items = { unpack(src, i, j) } }
  else
    rec = { job.dest, offset, job = job, start = offset + 1, count = count, id = id }
  end
  self._records[rkey(id)] = rec
  self._inflight = self._inflight + 1
  job.sent = job.sent + count
  job.chunks_sent = job.chunks_sent + 1
  if job.chunk_list then job.chunk_list[job.chunks_sent] = rec end
  if job.iter_done and job.buf then job.exhausted = true end
  return true
end

--[[
Adds up to `want` chunks of a map job (a table source, results in a list) to
the batch in one C call, under one run record. Returns the chunks added.
]]
local function add_run(self, job, want)
  local first, off, cs = self._next_id + 1, job.sent, job.chunksize
  local got, emsg = self._chan:add_run(job.kind, first, job.fn_id, job.fn_bytes, job.src, off + 1, job.n, cs, want)
  if got > 0 then
    local last, stop = first + got - 1, min(off + got * cs, job.n)
    self._next_id = last
    local rec = { job.dest, off, job = job, id = first, run_last = last, cs = cs, stop = stop }
    local records = self._records
    for id = first, last do records[rkey(id)] = rec end
    self._inflight = self._inflight + got
    job.sent = stop
    job.chunks_sent = job.chunks_sent + got
  end
  if emsg ~= nil then
    -- An item that cannot be sent fails the job (and only it).
    if job.error == nil then job.error = emsg end
    job.exhausted = true
  elseif job.sent >= job.n then
    job.exhausted = true
  end
  return got
end

--[[
Tasks per message. Small backlogs go one task per message, so that idle
workers share them out; a large backlog of small tasks goes in batches (up
to 64), which saves system calls on both sides. A worker's slot names its
batch, so the tasks it had not started when it died are sent again.
]]
local function batch_limit(self)
  if self._maxtasks > 0 then return 1 end
  local queue = self._queue
  local head = queue[self._qh]
  local backlog = self._qt - self._qh
  if head and head.src then
    backlog = backlog + ceil((head.n - head.sent) / head.chunksize)
  elseif head and head.iter then
    backlog = backlog + head.window - (head.chunks_sent - head.consumed)
  end
  local per = 2 * self._processes
  if backlog < 8 * per then return 1 end
  return min(64, backlog // per)
end

-- Sends queued tasks while the task socket has room.
local function feed(self)
  local chan = self._chan
  if chan == nil or self._broken then return end
  local records, resend = self._records, self._resend
  while #resend > 0 do
    if not chan:begin() then return end
    local rec = table.remove(resend, 1)
    rec.resending = nil
    if records[rkey(rec.id)] == rec then
      local ok, emsg
      if is_apply(rec) then
        local args = rec[3]
        ok, emsg = chan:add("A", rec.id, rec[4], rec[5], args, 1, args.n or #args)
      else
        local job = rec.job
        if rec.items then
          ok, emsg = chan:add(job.kind, rec.id, job.fn_id, job.fn_bytes, rec.items, 1, rec.count)
        else
          ok, emsg = chan:add(job.kind, rec.id, job.fn_id, job.fn_bytes, job.src, rec.start, rec.start + rec.count - 1)
        end
      end
      if ok == nil then
        records[rkey(rec.id)] = nil
        self._inflight = self._inflight - 1
        fail_chunk(self, rec, emsg)
      end
      chan:commit()
    end
  end
  local queue = self._queue
  local limit = batch_limit(self)    -- one size for the whole backlog
  while self._qt >= self._qh do
    if self._inflight >= MAX_INFLIGHT or not chan:begin() then return end
    local added, k = 0, self._qh
    while added < limit and k <= self._qt do
      local job = queue[k]
      local src, i, j, offset
      if is_apply(job) then
        -- The consecutive apply_async jobs from k, in one C call.
        local got, nextk, emsg = chan:add_applies(queue, k, self._qt, self._next_id + 1, records, limit - added)
        self._next_id = self._next_id + got
        self._inflight = self._inflight + got
        added = added + got
        if emsg ~= nil then
          finish_apply(self, queue[nextk], emsg)
          nextk = nextk + 1
        end
        k = nextk - 1          -- and the next job, below
      elseif job.run and not job.exhausted then
        added = added + add_run(self, job, min(limit - added, MAX_INFLIGHT - self._inflight))
      elseif not job.exhausted and not (job.window and job.chunks_sent - job.consumed >= job.window) then
        src, i, j, offset = next_chunk(job)
      end
      if src ~= nil and add_task(self, job, src, i, j, offset) then added = added + 1 end
      if job.exhausted and not job.dequeued then
        job.dequeued = true
        if job_complete(job) then finish(self, job) end
      end
      if src == nil or job.exhausted then
        k = k + 1          -- done, or waiting for its consumer: try the next job
      end
    end
    -- Drop the finished jobs at the head (others leave when they reach it).
    while self._qh <= self._qt do
      local job = queue[self._qh]
      -- sent_all(job), inline: this loop passes over every apply_async job
      if job._nv ~= nil then
        if job.id == 0 and not job._ready then break end
      elseif not job.exhausted then
        break
      end
      queue[self._qh] = false
      self._qh = self._qh + 1
    end
    if self._qh > self._qt then self._qh, self._qt = 1, 0 end   -- the same table: no new memory
    chan:commit()
    if added == 0 then return end
  end
end

--[[
Tasks nobody holds. A worker raises its slot's `taking` flag before it takes a
message and lowers it once the batch is named; a worker killed in between
(self._lost) leaves tasks that no slot names and that never started. Once
every message has been taken and every live worker is idle (not taking, no
batch, no task), the tasks still in flight after draining the results are
those, and are sent again. Until then the check is repeated at each round.
A live worker is never suspected, however long it is delayed: nothing is
resent on a timer, so a task never runs twice.
]]
local function recover_lost(self)
  local chan = self._chan
  if self._inflight == 0 then self._lost = nil; return end
  if #self._resend > 0 or not chan:idle() then return end
  for index, p in pairs(self._workers) do
    if p.exitcode ~= nil or chan:busy(index) then return end
  end
  self._lost = nil
  -- A worker sends its results before its slot shows idle: take those first.
  repeat local n = take(self, chan.pump, 0) until n == 0
  local records = self._records
  for k, rec in pairs(records) do
    if rec.run_last then rec = split(records, key_id(rec, k), rec) end
    if not rec.resending then
      rec.resending = true
      self._resend[#self._resend + 1] = rec
    end
  end
end

-- One round: send, collect results (waiting up to timeout), handle deaths.
function Pool:_pump(timeout)
  feed(self)
  local n, died = take(self, self._chan.pump, timeout)
  if self._broken then return self:terminate() end
  if died then check_workers(self) end
  if self._lost then recover_lost(self) end
  feed(self)
end

--[[
Runs the pool until done() is true or the timeout passes; returns done().
An error while waiting (Ctrl-C, a signal handler's error) terminates the pool
before it propagates, so no worker outlives the interrupted call.
]]
function Pool:_wait(done, timeout, tick)
  if self._owner ~= mypid then error("pool used from a process that did not create it", 3) end
  local deadline = timeout and now() + max(timeout, 0) or math.huge
  local ok, err = pcall(function()
    while not done() do
      local left = deadline - now()
      if left <= 0 then return end
      if self._chan == nil then return end      -- terminated or joined: nothing more will come
      self:_pump(left < math.huge and left or nil)
      if tick then tick() end
    end
  end)
  if not ok then
    self:terminate()
    error(err, 0)
  end
  return done()
end

local function submit(self, job)
  local queue = self._queue
  self._qt = self._qt + 1
  queue[self._qt] = job
  local queued = self._qt - self._qh + 1
  -- Workers with enough to do: let small tasks gather (sent 256 at a time, a
  -- few messages of up to 64, or at the next call that waits): per message, a
  -- system call on each side and a worker's wakeup.
  if job._nv ~= nil and self._inflight >= 2 * self._processes and queued % 256 ~= 0 then return end
  feed(self)
  -- A backed-up queue: make room by taking the results that are in.
  if self._qt >= self._qh then
    local _, died = take(self, self._chan.pump, 0)
    if died then check_workers(self) end
    feed(self)
  end
end

local function default_chunksize(self, n)
  return max(1, ceil(n / (4 * self._processes)))
end

-- A table (list) or an iterator function; map materializes an iterator (as Python does).
local function as_list(iterable, fname, level)
  if type(iterable) == "table" then return iterable, #iterable end
  if type(iterable) == "function" then
    local list, n = {}, 0
    for v in iterable do n = n + 1; list[n] = v end
    return list, n
  end
  argerror(2, fname, "table or iterator function expected, got " .. type(iterable), level + 1)
end

-- map-like options: chunksize number or {chunksize=, progress=, callback=, error_callback=}.
local function map_options(opts, fname, level)
  if opts == nil then return {} end
  if type(opts) == "number" then
    return { chunksize = check_chunksize(opts, 3, fname, level + 1) }
  end
  if type(opts) ~= "table" then argerror(3, fname, "chunksize or options table expected, got " .. type(opts), level + 1) end
  local o = {}
  for k, v in pairs(opts) do o[k] = v end
  o.chunksize = check_chunksize(opts.chunksize, 3, fname, level + 1)
  for _, k in ipairs { "callback", "error_callback" } do
    if o[k] ~= nil and not callable(o[k]) then argerror(3, fname, k .. " must be callable", level + 1) end
  end
  return o
end

local function map_job(self, kind, fn, iterable, opts, fname, level)
  check_running(self, level + 1)
  check_fn(fn, fname, level + 1)
  local o = map_options(opts, fname, level + 1)
  local list, n = as_list(iterable, fname, level + 1)
  local job = new_job(self, kind, fn, fname, level + 1)
  job.src, job.n = list, n
  -- A chunk never exceeds the list: chunk ends are then computed without overflow.
  job.chunksize = min(o.chunksize or default_chunksize(self, n), max(n, 1))
  job.results = core.newlist(n)
  job.results.n = n
  job.dest = job.results
  job.callback, job.error_callback = o.callback, o.error_callback
  job.progress = o.progress
  job.run = true                        -- chunks travel under run records (add_run)
  if n == 0 then job.exhausted = true end
  return job
end

-- A progress bar on stderr (done/total, rate, ETA), drawn only on a terminal.
local function progress_bar(job)
  if not core.isatty(2) then return nil end
  local t0, last = now(), 0
  local function draw(final)
    local t = now()
    if not final and t - last < 0.1 then return end
    last = t
    local total, done = job.n, job.done
    local frac = total > 0 and done / total or 1
    local width = 30
    local fill = math.floor(frac * width)
    local rate = done / max(t - t0, 1e-9)
    local eta = rate > 0 and (total - done) / rate or 0
    io.stderr:write(string.format("\r[%s%s] %d/%d %.0f/s ETA %.1fs ", ("#"):rep(fill),
      ("."):rep(width - fill), done, total, rate, eta))
    if final then io.stderr:write("\n") end
    io.stderr:flush()
  end
  return draw
end

local function run_map(self, job)
  local draw = job.progress and progress_bar(job)
  -- Any error but the job's own (Ctrl-C...) terminates the pool: no worker outlives it.
  local okw, ok = pcall(function()
    submit(self, job)
    return self:_wait(function() return job.finished end, nil, draw)
  end)
  if not okw then
    self:terminate()
    error(ok, 0)
  end
  if draw then draw(true) end
  if not ok then error("pool terminated", 3) end
  if job.error ~= nil then error(job.error, 3) end
  return job.results
end

-- pool:map(fn, list [, chunksize | {chunksize=, progress=}]) --> results in order
function Pool:map(fn, iterable, opts)
  return run_map(self, map_job(self, "M", fn, iterable, opts, "map", 2))
end

-- pool:starmap(fn, list_of_arg_tables [, chunksize]) --> fn(unpack(args)) for each
function Pool:starmap(fn, iterable, opts)
  return run_map(self, map_job(self, "S", fn, iterable, opts, "starmap", 2))
end

-- Built directly: the class's __newindex would cost a call per field.
local function new_result(pool, job)
  return setmetatable({ _pool = pool, _ready = false }, AsyncResult)
end

local function async_job(self, job)
  local ar = new_result(self, job)
  job.result = ar
  submit(self, job)
  if job.finished then finish(self, job) end
  return ar
end

function Pool:map_async(fn, iterable, opts, error_callback)
  if callable(opts) then opts = { callback = opts, error_callback = error_callback } end
  return async_job(self, map_job(self, "M", fn, iterable, opts, "map_async", 2))
end

function Pool:starmap_async(fn, iterable, opts, error_callback)
  if callable(opts) then opts = { callback = opts, error_callback = error_callback } end
  return async_job(self, map_job(self, "S", fn, iterable, opts, "starmap_async", 2))
end

--[[
apply_async(fn, args [, {callback=, error_callback=}]) or
apply_async(fn, args, callback, error_callback) --> AsyncResult
]]
function Pool:apply_async(fn, args, opts, error_callback)
  -- The common case (a running pool, a Lua function, no callbacks) tests inline.
  if self._owner ~= mypid or self._broken or self._state ~= RUN then check_running(self, 2) end
  if type(fn) ~= "function" then check_fn(fn, "apply_async", 2) end
  if args ~= nil and type(args) ~= "table" then
    argerror(2, "apply_async", "table of arguments expected, got " .. type(args), 2)
  end
  local callback
  if opts ~= nil or error_callback ~= nil then
    if type(opts) == "table" and not callable(opts) then
      callback, error_callback = opts.callback, opts.error_callback
    elseif opts ~= nil then
      callback = opts
    end
    if callback ~= nil and not callable(callback) then argerror(3, "apply_async", "callback must be callable", 2) end
    if error_callback ~= nil and not callable(error_callback) then
      argerror(3, "apply_async", "error_callback must be callable", 2)
    end
  end
  local fn_id, fn_bytes
  local e = self._fncache[fn]
  if e and e.snap == nil then
    fn_id, fn_bytes = e.id, e.bytes
  else
    fn_id, fn_bytes = fn_entry(self, fn)
    if fn_id == nil then argerror(1, "apply_async", (tostring(fn_bytes):gsub("^function: ", "")), 2) end
  end
  -- The layout is described at AV; fields only as needed, all in the constructor.
  local job
  if callback == nil and error_callback == nil then
    job = setmetatable({ false, AV - 1, args or {}, fn_id, fn_bytes, false,
      _pool = self, _ready = false, id = 0, _nv = 0 }, AsyncResult)
  else
    job = setmetatable({ false, AV - 1, args or {}, fn_id, fn_bytes, false,
      _pool = self, _ready = false, id = 0, _nv = 0,
      callback = callback, error_callback = error_callback }, AsyncResult)
  end
  job[1] = job
  -- submit(), with its test for letting small tasks gather inline.
  local qt = self._qt + 1
  if self._inflight >= 2 * self._processes and (qt - self._qh + 1) % 256 ~= 0 then
    self._qt = qt
    self._queue[qt] = job
  else
    submit(self, job)
  end
  return job
end

-- apply(fn, args) --> fn's results (all of them)
function Pool:apply(fn, args)
  check_fn(fn, "apply", 2)
  if args ~= nil and type(args) ~= "table" then
    argerror(2, "apply", "table of arguments expected, got " .. type(args), 2)
  end
  local ar = self:apply_async(fn, args)
  ar:wait()
  if ar._error ~= nil then error(ar._error, 2) end
  return ar:get()
end

--[[
imap / imap_unordered: an iterator over the results. Items are pulled from the
table or iterator function only as the window allows (a few chunks per
worker), so a huge generator runs in flat memory. A nil result ends a generic
`for` early, as with any Lua iterator.
]]
local function imap_iter(self, fn, iterable, chunksize, fname, ordered)
  check_running(self, 3)
  check_fn(fn, fname, 3)
  local opts = map_options(chunksize, fname, 3)
  local job = new_job(self, "M", fn, fname, 3)
  if type(iterable) == "table" then
    job.src, job.n = iterable, #iterable
    job.chunksize = min(opts.chunksize or default_chunksize(self, job.n), max(job.n, 1))
    if job.n == 0 then job.exhausted = true end
  elseif type(iterable) == "function" then
    job.iter, job.buf = iterable, {}
    job.chunksize = opts.chunksize or 1
  else
    argerror(2, fname, "table or iterator function expected, got " .. type(iterable), 3)
  end
  job.dest = {}                       -- item index --> result, cleared as consumed
  -- At most this many chunks sent and not consumed: a few per worker, and for
  -- small chunks enough items (1024) for tasks to travel in batches.
  job.window = max(4 * self._processes, ceil(1024 / job.chunksize))
  job.chunk_errors = {}
  job.ordered_stream = true
  if ordered then job.chunk_list = {} else job.ready_list = {} end
  submit(self, job)
  local chunk, pos, ci = nil, 0, 1
  local function has_next()
    if ordered then
      local rec = job.chunk_list[ci]
      return rec ~= nil and rec.settled
    end
    return #job.ready_list > 0
  end
  local function finished() return job.exhausted and job.chunks_done == job.chunks_sent and not has_next() end
  return function()
    while true do
      if chunk ~= nil then
        if pos < chunk.count then
          pos = pos + 1
          local i = chunk.start + pos - 1
          local v = job.dest[i]
          job.dest[i] = nil
          return v
        end
        chunk = nil
        job.consumed = job.consumed + 1
        -- Refill when half the window is free: tasks then leave in batches.
        if 2 * (job.chunks_sent - job.consumed) <= job.window then feed(self) end
      end
      if not has_next() then
        if finished() then
          if job.error ~= nil and not job.raised then job.raised = true; error(job.error, 2) end
          return nil
        end
        self:_wait(function() return has_next() or finished() end)
      end
      if has_next() then
        local rec
        if ordered then
          rec = job.chunk_list[ci]
          job.chunk_list[ci] = nil
          ci = ci + 1
        else
          rec = table.remove(job.ready_list, 1)
        end
        local err = job.chunk_errors[rec.start]
        if err ~= nil then
          job.chunk_errors[rec.start] = nil
          job.consumed = job.consumed + 1
          job.raised = true
          error(err, 2)
        end
        chunk, pos = rec, 0
      end
    end
  end
end

function Pool:imap(fn, iterable, chunksize)
  return imap_iter(self, fn, iterable, chunksize, "imap", true)
end

function Pool:imap_unordered(fn, iterable, chunksize)
  return imap_iter(self, fn, iterable, chunksize, "imap_unordered", false)
end

-- close(): no more tasks; workers exit once the queued ones are done.
function Pool:close()
  if self._owner ~= mypid then error("pool used from a process that did not create it", 2) end
  if self._state == RUN then self._state = CLOSE end
end

-- join(): waits for the workers to exit; close() or terminate() first.
function Pool:join()
  if self._owner ~= mypid then error("pool used from a process that did not create it", 2) end
  if self._state == RUN then error("Pool is still running", 2) end
  if self._chan == nil then return end
  -- An imap whose consumer stopped would wait for it forever: send the rest (as Python does).
  for k = self._qh, self._qt do
    local job = self._queue[k]
    if job then job.window = nil end
  end
  self:_wait(function() return not outstanding(self) end)
  if self._chan == nil then return end
  self._chan:close_tasks()
  self:_wait(function()
    for _, p in pairs(self._workers) do if p.exitcode == nil then return false end end
    return true
  end)
  self:_shutdown()
end

-- Releases the channel and the worker objects (all workers have ended).
function Pool:_shutdown()
  for index, p in pairs(self._workers) do
    if self._chan then self._chan:watch(index, nil) end
    p:join()
    p:close()
    self._workers[index] = nil
  end
  if self._chan then self._chan:close() end
  self._chan = nil
  live[self] = nil
end

-- terminate(): stops the workers now; unfinished results fail.
function Pool:terminate()
  if self._owner ~= mypid or self._chan == nil then return end
  self._state = TERMINATE
  --[[
  SIGKILL, where Python sends SIGTERM: a worker inherits the parent's mp.signal
  handlers, and one for SIGTERM would keep it alive (or, caught in the instant
  after the fork, run the parent's handler there). SIGTERM's default action ends
  a process just as abruptly, so nothing a worker could rely on is lost.
  ]]
  for _, p in pairs(self._workers) do
    if p.exitcode == nil then pcall(p.kill, p) end
  end
  for _, p in pairs(self._workers) do p:join() end
  fail_all(self, classes.ProcessError("the pool was terminated before the task completed"))
  self:_shutdown()
end

Pool.__close = Pool.terminate
Pool.__gc = function(self) pcall(Pool.terminate, self) end

function Pool:__tostring()
  return string.format("<Pool processes=%d state=%s>", self._processes, self._state)
end

return M

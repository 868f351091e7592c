--[[
mp.Pool: Python's multiprocessing.Pool, with futures. This file owns jobs:
the queue in submission order, chunking, the imap window, callbacks,
AsyncResult, progress, and the workers' lives. It never touches a task: the
transport object (`tr`, src/lpool.c over the local transport
src/engine/poolchan.c) encodes tasks, keeps the tasks in flight, decodes
results straight into result tables and reports job-level events.

The seam (docs/pool.md, "The transport seam"):
  tr:add(job, dest, kind, fn_id, fn, src, i, stop, cs, nchunks, off, stream)
  tr:apply(ar, off, fn_id, fn, args, n, timeout)   tr:commit()   tr:seal(job)
  tr:pump(events, timeout) --> n, lost        tr:lost(events, index) --> n
  tr:started(index, sentinel)   tr:abandon(events)   tr:inflight()   tr:stalled()
Events are triples (job, kind, x) in `events`, kinds as below.

There is no thread: the pool makes progress inside its own calls and, through
a poller (core.poller), inside any other blocking mp call of this process.

Its helpers, each in a file of its own: mp.pool_args (argument checks),
mp.pool_fncache (encoded task functions), mp.pool_result (AsyncResult),
mp.pool_imap (imap's iterator), mp.pool_progress (the progress bar).
]]
local core = require "mp.core"
local class = require "mp.class"
local errors = require "mp.errors"
local process = require "mp.process"
local check = require "mp.check"
local argcheck = require "mp.pool_args"      -- argument checks
local fncache = require "mp.pool_fncache"    -- encoded task functions
local result = require "mp.pool_result"      -- AsyncResult
local imap_iterator = require "mp.pool_imap"
local progress_bar = require "mp.pool_progress"

local M = {}
local classes = errors.classes
local getpid, now = core.getpid, core.time
local unpack = table.unpack
local ceil, min, max = math.ceil, math.min, math.max
local argerror, callable = check.argerror, argcheck.callable
local AsyncResult, new_result, settle_ar, clock = result.AsyncResult, result.new, result.settle, result.clock
M.AsyncResult = AsyncResult

-- Event kinds (src/lpool.c)
local VALUES, CHUNK, DONE, ERROR, LOST, OVERDUE, ABANDONED, INIT = 1, 2, 3, 4, 5, 6, 7, 8
local RUN, CLOSE, TERMINATE = "running", "closed", "terminated"
local MAX_INFLIGHT = 65536          -- tasks sent and not settled, at most (bounds memory)

local signal_names = {}
for name, num in pairs(core.signals) do signal_names[num] = name end

---------------------------------------------------------------------------
-- Pools of this process; a forked child drops their parent-side ends.

local live = setmetatable({}, { __mode = "k" })
local spawning          -- the pool whose worker is being forked
local mypid = getpid()
process.at_fork(function()
  mypid = getpid()
  for pool in pairs(live) do
    core.poller(pool, nil)
    local tr = rawget(pool, "_tr")
    if tr then tr:after_fork(pool == spawning) end
  end
end)

---------------------------------------------------------------------------
-- Pool

local Pool = class.Object:extend("Pool")
M.Pool = Pool
Pool.__index, Pool.__newindex = Pool, nil

local function check_pool(self, fname)
  if getmetatable(self) ~= Pool then check.self(self, Pool, fname) end
end

local worker_counter = 0

--[[
A worker's service of one pool, wherever the worker runs (a process forked
here, or one another transport started: an MPI rank, lua/mp/mpipool.lua):
the initializer, then the C loop until the transport says no more tasks or
maxtasks tasks ran. Returns true, or false when the initializer failed (its
error has gone to the parent as the worker's result).
]]
local function serve(tr, index, initializer, initargs, maxtasks)
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
      tr:send_init_error(index, "initializer failed: " .. tostring(err[1]), err[2])
      return false
    end
  end
  core.pool_work(tr, index, maxtasks)
  return true
end
M.serve = serve

-- A forked worker's life: its signals, then serve; it exits when serve returns.
local function worker_main(tr, index, initializer, initargs, maxtasks)
  core.signal("SIGINT", "ignore")          -- Ctrl-C is the parent's business
  core.signal("SIGTERM", "default")        -- terminate_workers() ends it
  if not serve(tr, index, initializer, initargs, maxtasks) then core.child_exit(1) end
end

local function spawn_worker(self, index)
  local backend = self._backend
  if backend then                        -- another transport starts its own workers
    local w = backend.start(index, self._initializer, self._initargs, self._maxtasks)
    self._workers[index] = w
    self._tr:started(index, w.sentinel)
    return
  end
  worker_counter = worker_counter + 1
  local p = process.Process {
    target = worker_main,
    args = { self._tr, index, self._initializer, self._initargs, self._maxtasks, n = 5 },
    name = "PoolWorker-" .. worker_counter,
    daemon = true,
    context = self._method,
  }
  p._pool_worker = true
  spawning = self
  local ok, err = pcall(p.start, p)
  spawning = nil
  if not ok then error(err, 0) end
  self._workers[index] = p
  self._tr:started(index, p.sentinel)
end

--[[
Pool(processes, initializer, initargs, maxtasksperchild) or
Pool{processes=, initializer=, initargs=, maxtasksperchild=}.
]]
function Pool:init(processes, initializer, initargs, maxtasksperchild)
  local maxtasks, context
  processes, initializer, initargs, maxtasks, context =
    argcheck.pool(processes, initializer, initargs, maxtasksperchild, core.cpu_count)
  -- the workers' start method (docs/processes.md): the transport travels to fork-server workers
  if context ~= nil then self._method = process.context_method(context, "Pool") end
  self._owner = mypid
  self._processes = processes
  self._initializer = initializer
  self._initargs = initargs
  self._maxtasks = maxtasks
  self._state = RUN
  self._workers = {}
  self._evs = {}          -- events tables, one per nesting depth (callbacks may call the pool)
  self._depth = 0
  self._queue = {}        -- jobs with tasks still to send, in submission order, from _qh
  self._qh, self._qt = 1, 0
  self._killed = {}       -- worker index --> "timeout" when killed for a task's timeout
  self._bars = {}         -- progress bars of async jobs
  self._polling = false
  local backend = rawget(self, "_backend")
  self._tr = backend and backend.transport(processes, maxtasks) or core.pool_transport(processes)
  self._fns = fncache.new(self._tr)
  live[self] = true
  for i = 1, processes do
    local ok, err = pcall(spawn_worker, self, i)
    if not ok then
      -- A pool that cannot be built leaves nothing behind, now (not at collection).
      self._state = TERMINATE
      for _, p in pairs(self._workers) do pcall(p.kill, p) end
      self:_shutdown()
      check.error(string.format("Pool: cannot start worker %d of %d: %s", i, processes,
        (tostring(err):gsub("^[^:\n]+:%d+: ", ""))))
    end
  end
end

local function check_running(self, fname)
  check_pool(self, fname)
  if self._owner ~= mypid then check.error("pool used from a process that did not create it") end
  if self._broken then error(self._broken, check.level()) end
  if self._state ~= RUN then check.error("Pool not running") end
end

local function remote_error(x)
  local value = x[4]
  return classes.RemoteError(x[1] or "unknown error", { traceback = x[2], pid = x[3], value = value })
end

local function describe_exit(code)
  if type(code) == "string" then return code end      -- a worker that says how it ended
  if code < 0 then
    local name = signal_names[-code]
    return "killed by signal " .. (-code) .. (name and " (" .. name .. ")" or "")
  end
  return "exit code " .. code
end

---------------------------------------------------------------------------
-- Jobs (map, starmap, imap, their async forms). Fields: kind, fn_id, fn,
-- src and n (a table) or iter and buf (an iterator), chunksize, sent (items),
-- chunks_sent, exhausted (nothing more to send), dest, error, stream (imap:
-- chunk_of = offset --> chunk), window, consumed (chunks), ar, draw.

local function finish(self, job)
  if job.finished then return end
  job.finished = true
  if job.draw then job.draw(true); self._bars[job] = nil end
  local ar = job.ar
  if ar ~= nil then
    if job.error == nil then ar[3], ar._n = job.dest, job.n end
    settle_ar(ar, job.error)
  end
end

-- The job has nothing more to send: it is done once its tasks settle.
local function seal(self, job)
  if job.sealed then return end
  job.sealed = true
  if self._tr:seal(job) then finish(self, job) end
end

local function chunk_failed(job, off, err)
  if job.error == nil then job.error = err end
  if job.stream then
    local c = job.chunk_of[off]
    if c then
      c.err, c.settled = err, true
      if not job.ordered then job.ready_list[#job.ready_list + 1] = c end
    end
  end
end

local function lost_error(self, info)
  if info.timeout then
    return classes.TimeoutError(string.format("the task ran over its timeout of %g s; worker process %d (%s) was killed",
      info.timeout, info.pid, info.name), { pid = info.pid })
  end
  return classes.WorkerLostError(string.format("worker process %d (%s) died while running a task: %s",
    info.pid, info.name, describe_exit(info.code)), { pid = info.pid, exitcode = info.code })
end

local function handle_events(self, ev, n, info)
  for k = 0, n - 1 do
    local job, kind, x = ev[3 * k + 1], ev[3 * k + 2], ev[3 * k + 3]
    ev[3 * k + 1], ev[3 * k + 3] = nil, nil
    if kind == VALUES then
      job._n = x
      if job._o then settle_ar(job, nil) else clock.n = clock.n + 1; job._ready = clock.n end
    elseif kind == CHUNK then
      local c = job.chunk_of[x]
      c.settled = true
      if not job.ordered then job.ready_list[#job.ready_list + 1] = c end
    elseif kind == DONE then
      finish(self, job)
    elseif kind == ERROR or kind == LOST then
      local err = kind == ERROR and remote_error(x) or lost_error(self, info)
      if job._pool ~= nil then settle_ar(job, err) else chunk_failed(job, kind == ERROR and x[5] or x, err) end
    elseif kind == OVERDUE then
      -- The worker is killed; its death fails the task with TimeoutError (LOST).
      local p = self._workers[x]
      if p and p.exitcode == nil then
        self._killed[x] = job._o.timeout
        pcall(p.kill, p)
      end
    elseif kind == ABANDONED then
      if job._pool ~= nil then settle_ar(job, info) else
        if job.error == nil then job.error = info end
        finish(self, job)
      end
    elseif kind == INIT and not self._broken then
      self._broken = remote_error(x)
    end
  end
end

-- Runs fetch(tr, events, ...) and handles the events it reports; returns their number.
local function take(self, fetch, info, ...)
  local d = self._depth + 1
  self._depth = d
  local ev = self._evs[d]
  if ev == nil then ev = {}; self._evs[d] = ev end
  local ok, n, lost = pcall(fetch, self._tr, ev, ...)
  if not ok then self._depth = d - 1; error(n, 0) end
  handle_events(self, ev, n, info)
  self._depth = d - 1
  return n, lost
end

local function outstanding(self)
  return self._qt >= self._qh or self._tr:inflight() > 0
end

-- Reaps dead workers: their tasks are settled or sent again; replacements start.
local function check_workers(self)
  for index = 1, self._processes do
    local p = self._workers[index]
    if p ~= nil and p.exitcode ~= nil then
      local t = self._killed[index]
      self._killed[index] = nil
      take(self, self._tr.lost, { pid = p.pid, name = p.name, code = p.exitcode, timeout = t }, index)
      p:join()
      p:close()
      self._workers[index] = nil
      if not self._broken and self._state ~= TERMINATE and (self._state == RUN or outstanding(self)) then
        spawn_worker(self, index)
      end
    end
  end
end

-- The next chunk of an iterator job into job.buf: count of items pulled.
local function pull(job)
  local buf, iter, count = job.buf, job.iter, 0
  for k = 1, job.chunksize do
    local ok, v = pcall(iter)         -- the iterator's error fails this imap, not the pool
    if not ok then
      if job.error == nil then job.error = v end
      v = nil
    end
    if v == nil then job.iter_done = true; break end
    buf[k] = v
    count = k
  end
  for k = count + 1, #buf do buf[k] = nil end
  return count
end

-- Adds up to `want` chunks of a map-like job to the open batch; returns the number added.
local function add_chunks(self, job, want)
  local tr, got, emsg = self._tr, 0, nil
  if job.src then
    local cs = job.chunksize
    got, emsg = tr:add(job, job.dest, job.kind, job.fn_id, job.fn, job.src, job.sent + 1, job.n, cs, want,
      job.sent, job.stream)
    for c = 1, job.stream and got or 0 do
      local off = job.sent + (c - 1) * cs
      job.chunk_of[off] = { off = off, count = min(cs, job.n - off) }
      job.order[job.chunks_sent + c] = job.chunk_of[off]
    end
    job.sent = min(job.sent + got * cs, job.n)
    if job.sent >= job.n then job.exhausted = true end
  else
    while got < want and not job.iter_done do
      local count = pull(job)
      if count == 0 then break end
      local off = job.sent
      local g
      g, emsg = tr:add(job, job.dest, job.kind, job.fn_id, job.fn, job.buf, 1, count, count, 1, off, true)
      if g == 0 then break end
      job.chunk_of[off] = { off = off, count = count }
      job.order[job.chunks_sent + got + 1] = job.chunk_of[off]
      job.sent, job.n = off + count, off + count
      got = got + 1
    end
    if job.iter_done then job.exhausted = true end
  end
  job.chunks_sent = job.chunks_sent + got
  if emsg ~= nil then                 -- an item that cannot be sent fails the job (only it)
    if job.error == nil then job.error = emsg end
    job.exhausted = true
  end
  return got
end

--[[
Tasks per message. Small backlogs go one task per message, so that idle
workers share them out; a large backlog of small tasks goes in batches (up
to 64), which saves system calls on both sides.
]]
local function batch_limit(self)
  if self._maxtasks > 0 then return 1 end
  local head = self._queue[self._qh]
  local backlog = self._qt - self._qh
  if head and head.src then
    backlog = backlog + ceil((head.n - head.sent) / head.chunksize)
  elseif head and head.iter then
    backlog = backlog + (head.window or 0) - (head.chunks_sent - head.consumed)
  end
  local per = 2 * self._processes
  if backlog < 8 * per then return 1 end
  return min(64, backlog // per)
end

-- Sends queued tasks while the transport takes them.
local function feed(self)
  local tr = self._tr
  if tr == nil or self._broken then return end
  local queue, limit = self._queue, batch_limit(self)
  while self._qt >= self._qh do
    if tr:stalled() or tr:inflight() >= MAX_INFLIGHT then return end
    local added, k = 0, self._qh
    while added < limit and k <= self._qt do
      local job = queue[k]
      local a = job and job[2]
      if a then                                     -- an apply_async job, not sent yet
        local e, o = job[1], job._o
        local ok, emsg = tr:apply(job, 2, e.id, e.bytes, a, a.n or #a, o and o.timeout or nil)
        job[2] = false
        if ok then added = added + 1 else settle_ar(job, emsg) end
        k = k + 1
      elseif a == false then                        -- sent, or cancelled
        k = k + 1
      else
        local got, room = 0, min(limit - added, MAX_INFLIGHT - tr:inflight())
        if job.window then room = min(room, job.window - (job.chunks_sent - job.consumed)) end
        if not job.exhausted and room > 0 then
          got = add_chunks(self, job, room)
          added = added + got
        end
        if job.exhausted then seal(self, job) end
        -- Done, waiting for its consumer, or no room: the next job.
        if got == 0 or job.exhausted or (job.window and job.chunks_sent - job.consumed >= job.window) then k = k + 1 end
      end
    end
    -- Drop the jobs at the head with nothing left to send.
    while self._qh <= self._qt do
      local job = queue[self._qh]
      if job then
        local a = job[2]
        if a or (a == nil and not job.exhausted) then break end
      end
      queue[self._qh] = false
      self._qh = self._qh + 1
    end
    if self._qh > self._qt then self._qh, self._qt = 1, 0 end
    tr:commit()
    if added == 0 then return end
  end
end

-- Progress bars of async jobs, redrawn when the pool runs.
local stop      -- defined with terminate, below

local function draw_bars(self)
  for _, draw in pairs(self._bars) do draw() end
end

-- One round: send, collect results (waiting up to timeout), handle deaths.
function Pool:_pump(timeout)
  feed(self)
  local _, lost = take(self, self._tr.pump, nil, timeout)
  if self._broken then return stop(self, "SIGKILL", self._broken) end
  if lost then check_workers(self) end
  feed(self)
  if next(self._bars) then draw_bars(self) end
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
      if left <= 0 or self._tr == nil then return end
      self:_pump(left < math.huge and left or nil)
      if tick then tick() end
    end
  end)
  if not ok then
    self:terminate()
    error(check.relocate(err), 0)
  end
  return done()
end

--[[
The poller: while this pool has work out, any blocking mp call of this process
(mp.sleep, get, join, acquire, recv, put, mp.wait) runs it at its safe points
(and mp.sleep and mp.wait wake on the results' fd), so callbacks fire and
queued tasks leave while the program does something else.
]]
local function poll_pool(self)
  if self._depth > 0 or self._owner ~= mypid or self._tr == nil then return end
  local ok = pcall(self._pump, self, 0)
  if not ok or self._tr == nil or not outstanding(self) then
    core.poller(self, nil)
    self._polling = false
  end
end

local function start_polling(self)
  if not self._polling then
    self._polling = true
    core.poller(self, poll_pool, self._tr:fileno())
  end
end

local function submit(self, job)
  local qt = self._qt + 1
  self._qt = qt
  self._queue[qt] = job
  feed(self)
  -- A backed-up queue: make room by taking the results that are in.
  if self._qt >= self._qh then self:_pump(0) end
end

local function default_chunksize(self, n)
  return max(1, ceil(n / (4 * self._processes)))
end

local function new_job(self, kind, fn, iterable, o, fname, stream)
  local e = fncache.of(self._fns, fn, fname)
  local job = { kind = kind, fn_id = e.id, fn = e.bytes, sent = 0, chunks_sent = 0, consumed = 0 }
  if type(iterable) == "table" then
    job.src, job.n = iterable, #iterable
  elseif type(iterable) == "function" and stream then
    job.iter, job.buf, job.n = iterable, {}, 0
  elseif type(iterable) == "function" then            -- map materializes an iterator, as Python does
    local list, n = {}, 0
    for v in iterable do n = n + 1; list[n] = v end
    job.src, job.n = list, n
  else
    argerror(2, fname, "table or iterator function expected, got " .. type(iterable))
  end
  -- A chunk never exceeds the list: chunk ends are then computed without overflow.
  local cs = o.chunksize or (job.src and default_chunksize(self, job.n) or 1)
  job.chunksize = job.src and min(cs, max(job.n, 1)) or cs
  job.dest = stream and {} or core.newlist(job.n)
  if stream then
    job.stream, job.chunk_of, job.order, job.ready_list = true, {}, {}, {}
    -- At most this many chunks sent and not consumed: a few per worker, and for
    -- small chunks enough items (1024) for tasks to travel in batches.
    job.window = o.buffersize or max(4 * self._processes, ceil(1024 / job.chunksize))
  end
  if o.progress then
    local tr = self._tr
    job.draw = progress_bar(function()
      if job.finished and not job.stream then return job.n end
      return job.stream and job.items_consumed or tr:settled(job)
    end, function() return (job.src or job.iter_done) and job.n or nil end)
    job.items_consumed = 0
  end
  if job.src and job.n == 0 then job.exhausted = true end
  return job
end

local function map_job(self, kind, fn, iterable, opts, fname)
  check_running(self, fname)
  argcheck.fn(fn, fname)
  local o = argcheck.map(opts, fname, argcheck.MAP_KEYS)
  local job = new_job(self, kind, fn, iterable, o, fname)
  job.timeout = o.timeout
  return job, o
end

local function run_map(self, job)
  -- Any error but the job's own (Ctrl-C...) terminates the pool: no worker outlives it.
  local okw, ok = pcall(function()
    submit(self, job)
    if job.exhausted then seal(self, job) end
    return self:_wait(function() return job.finished end, job.timeout, job.draw)
  end)
  if not okw then
    self:terminate()
    error(check.relocate(ok), 0)
  end
  if not ok then
    if job.timeout and self._tr ~= nil then
      job.exhausted, job.cancelled = true, true       -- nothing more is sent; results are dropped
      seal(self, job)
      error(classes.TimeoutError(string.format("map did not complete within %g s", job.timeout)), 3)
    end
    error("pool terminated", 3)
  end
  if job.draw then job.draw(true) end
  if job.error ~= nil then error(job.error, 3) end
  return job.dest, job.n
end

-- pool:map(fn, list [, chunksize | {chunksize=, progress=, timeout=}]) --> results in order, n
function Pool:map(fn, iterable, opts)
  return run_map(self, map_job(self, "M", fn, iterable, opts, "map"))
end

-- pool:starmap(fn, list_of_arg_tables [, chunksize | options]) --> fn(unpack(args)) for each, n
function Pool:starmap(fn, iterable, opts)
  return run_map(self, map_job(self, "S", fn, iterable, opts, "starmap"))
end

local function async_job(self, job, o)
  local ar = new_result(self, job, true, o)
  job.ar = ar
  if job.draw then self._bars[job] = job.draw end
  submit(self, job)
  if job.exhausted then seal(self, job) end
  start_polling(self)
  return ar
end

function Pool:map_async(fn, iterable, opts, error_callback)
  if callable(opts) then opts = { callback = opts, error_callback = error_callback } end
  return async_job(self, map_job(self, "M", fn, iterable, opts, "map_async"))
end

function Pool:starmap_async(fn, iterable, opts, error_callback)
  if callable(opts) then opts = { callback = opts, error_callback = error_callback } end
  return async_job(self, map_job(self, "S", fn, iterable, opts, "starmap_async"))
end

--[[
apply_async(fn, args [, {callback=, error_callback=, timeout=}]) or
apply_async(fn, args, callback, error_callback) --> AsyncResult
]]
function Pool:apply_async(fn, args, opts, error_callback, surplus)
  -- The per-task path tests inline: self, a surplus argument, a running pool.
  if getmetatable(self) ~= Pool then check.self(self, Pool, "apply_async") end
  if surplus ~= nil then check.nargs("apply_async", 4, 5, surplus) end
  if self._owner ~= mypid or self._broken or self._state ~= RUN then check_running(self, "apply_async") end
  if type(fn) ~= "function" then argcheck.fn(fn, "apply_async") end
  if args == nil then args = {} elseif type(args) ~= "table" then argcheck.args(args, "apply_async") end
  local o = (opts ~= nil or error_callback ~= nil) and argcheck.apply(opts, error_callback)
  local fns = self._fns
  local e = fns.byfn[fn]
  if not e or e.snap ~= nil then e = fncache.of(fns, fn, "apply_async") end
  -- As result.new (mp.pool_result), inline: [3] reserves the array part for the first value.
  local ar = setmetatable({ e, args, false, _pool = self, _ready = false, _n = 0, _o = o }, AsyncResult)
  local qt = self._qt + 1
  self._qt = qt
  self._queue[qt] = ar
  -- Workers with enough to do: let small tasks gather (sent 256 at a time, in a
  -- few messages, or at the next call that waits).
  if (qt - self._qh + 1) % 256 == 0 or self._tr:inflight() < 2 * self._processes then
    feed(self)
    if self._qt >= self._qh and (qt - self._qh + 1) % 256 == 0 then self:_pump(0) end
  end
  if not self._polling then start_polling(self) end
  return ar
end

-- apply(fn, args) --> fn's results (all of them)
function Pool:apply(fn, args)
  check_running(self, "apply")
  argcheck.fn(fn, "apply")
  argcheck.args(args, "apply")
  local ar = self:apply_async(fn, args)
  ar:wait()
  if ar._n < 0 then error(ar[3], 2) end
  return unpack(ar, 3, ar._n + 2)
end

--[[
imap / imap_unordered: an iterator over the results. Items are pulled from the
table or iterator function only as the window allows (buffersize chunks, or a
few per worker), so a huge generator runs in flat memory. A nil result ends a
generic `for` early, as with any Lua iterator.
]]
local function imap_iter(self, fn, iterable, opts, fname, ordered)
  check_running(self, fname)
  argcheck.fn(fn, fname)
  local o = argcheck.map(opts, fname, argcheck.IMAP_KEYS)
  local job = new_job(self, "M", fn, iterable, o, fname, true)
  job.ordered = ordered
  submit(self, job)
  if job.exhausted then seal(self, job) end
  return imap_iterator(self, job, feed)
end

function Pool:imap(fn, iterable, opts)
  return imap_iter(self, fn, iterable, opts, "imap", true)
end

function Pool:imap_unordered(fn, iterable, opts)
  return imap_iter(self, fn, iterable, opts, "imap_unordered", false)
end

-- close(): no more tasks; workers exit once the queued ones are done.
function Pool:close()
  check_pool(self, "close")
  if self._owner ~= mypid then error("pool used from a process that did not create it", 2) end
  if self._state == RUN then self._state = CLOSE end
end

-- join(): waits for the workers to exit; close() or terminate() first.
function Pool:join()
  check_pool(self, "join")
  if self._owner ~= mypid then error("pool used from a process that did not create it", 2) end
  if self._state == RUN then error("Pool is still running", 2) end
  if self._tr == nil then return end
  -- An imap whose consumer stopped would wait for it forever: send the rest (as Python does).
  for k = self._qh, self._qt do
    local job = self._queue[k]
    if job and job._pool == nil then job.window = nil end
  end
  self:_wait(function() return not outstanding(self) end)
  if self._tr == nil then return end
  self._tr:close_tasks()
  self:_wait(function()
    for _, p in pairs(self._workers) do if p.exitcode == nil then return false end end
    return true
  end)
  self:_shutdown()
end

-- Releases the transport and the worker objects (all workers have ended).
function Pool:_shutdown()
  core.poller(self, nil)
  self._polling = false
  for index, p in pairs(self._workers) do
    p:join()
    p:close()
    self._workers[index] = nil
  end
  if self._tr then self._tr:close() end
  self._tr = nil
  live[self] = nil
end

-- Fails everything unfinished with err, ends the workers with sig, releases all.
function stop(self, sig, err)
  if self._owner ~= mypid or self._tr == nil then return end
  self._state = TERMINATE
  for _, p in pairs(self._workers) do
    if p.exitcode == nil then pcall(sig == "SIGTERM" and p.terminate or p.kill, p) end
  end
  for _, p in pairs(self._workers) do
    if sig ~= "SIGKILL" and p.exitcode == nil then
      p:join(1)
      if p.exitcode == nil then pcall(p.kill, p) end
    end
    p:join()
  end
  take(self, self._tr.abandon, err)
  for k = self._qh, self._qt do
    local job = self._queue[k]
    if job and job._pool ~= nil then settle_ar(job, err)
    elseif job then
      if job.error == nil then job.error = err end
      finish(self, job)
    end
  end
  self._queue, self._qh, self._qt = {}, 1, 0
  self:_shutdown()
end

--[[
terminate(): stops the workers now with SIGKILL; unfinished results fail.
(Python sends SIGTERM; a worker inherits the parent's mp.signal handlers, and
one for SIGTERM, caught in the instant after the fork, would keep it alive.)
]]
function Pool:terminate()
  if getmetatable(self) ~= Pool then check_pool(self, "terminate") end
  stop(self, "SIGKILL", classes.ProcessError("the pool was terminated before the task completed"))
end

--[[
A pool over another transport (mp.mpi): `backend` makes the transport object
and starts each worker, which need not be a local process.
  backend.transport(processes, maxtasks) --> core.pool_transport(processes, impl)
  backend.start(index, initializer, initargs, maxtasks) --> a worker object:
    pid, name, sentinel (an fd, or -1), exitcode (nil while it serves; a number,
    or a string saying how it ended), kill(), terminate(), join([timeout]), close()
The worker serves with M.serve(tr, index, initializer, initargs, maxtasks)
over its side of that transport (core.pool_transport(index, its_impl)).
Everything else (jobs, results, callbacks, futures) is this file's, unchanged.
]]
function M.pool_with(backend, ...)
  local self = setmetatable({ _backend = backend }, Pool)
  self:init(...)
  return self
end

-- Python 3.14's executor: SIGTERM (then SIGKILL after 1 s), or SIGKILL; the pool is shut down.
function Pool:terminate_workers()
  check_pool(self, "terminate_workers")
  stop(self, "SIGTERM", classes.ProcessError("the pool's workers were terminated before the task completed"))
end

function Pool:kill_workers()
  check_pool(self, "kill_workers")
  stop(self, "SIGKILL", classes.ProcessError("the pool's workers were killed before the task completed"))
end

Pool.__close = Pool.terminate
Pool.__gc = function(self) pcall(Pool.terminate, self) end

function Pool:__tostring()
  return string.format("<Pool processes=%d state=%s>", self._processes, self._state)
end

-- For lua/mp/futures.lua.
M.is_result = result.is_result
M.check_timeout = argcheck.timeout

--[[
Every other public method checks, before anything else, that it was called
with `:` on an object of its class and that no surplus argument was passed
(mp.check: errors at the caller's line). The wrapper ends in a tail call, so
the method's own errors still count levels from the caller.
]]
local function guard(cls, methods)
  for name, max in pairs(methods) do
    local f = cls[name]
    cls[name] = function(self, ...)
      if getmetatable(self) ~= cls then check.self(self, cls, name) end
      local n = select("#", ...)
      if n > max then check.nargs(name, max, n, (select(max + 1, ...))) end
      return f(self, ...)
    end
  end
end
guard(Pool, { map = 3, starmap = 3, imap = 3, imap_unordered = 3, map_async = 4, starmap_async = 4,
              apply = 2, close = 0, join = 0, terminate = 0, terminate_workers = 0, kill_workers = 0 })
guard(AsyncResult, { wait = 1, ready = 0, successful = 0, exception = 1, cancel = 0, cancelled = 0 })

return M

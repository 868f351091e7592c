--[[
The mp facade: what `require "mp"` returns and what mplua preloads as `mp`.
luaopen_mp runs this chunk with the C core table (`mp.core`) as its argument.
When an installed copy is found on package.path instead, `...` is the module
name and the core comes from mp.so (whose luaopen_mp_core serves "mp.core").
]]
local core = ...
if type(core) ~= "table" then core = require "mp.core" end

local mp = {}
mp.version = core.version

local errors = require "mp.errors"
core.set_error_factory(errors.new)
for name, cls in pairs(errors.classes) do mp[name] = cls end

local process = require "mp.process"
mp.Process = process.Process
mp.current_process = process.current_process
mp.parent_process = process.parent_process
mp.active_children = process.active_children

mp.cpu_count = core.cpu_count
mp.getpid = core.getpid
mp.sleep = core.sleep
mp.time = core.time
mp.signal = core.signal
mp.kill = core.kill
mp.signals = core.signals

local sync = require "mp.sync"
for _, name in ipairs{ "Lock", "RLock", "Semaphore", "BoundedSemaphore", "Condition", "Event",
                       "Barrier", "Value", "RawValue", "Array", "RawArray" } do
  mp[name] = sync[name]
end
mp.dumps = core.dumps
mp.loads = core.loads
mp.register_class = core.register_class
-- Error objects keep their class across processes (a worker's error reaches the parent).
for name, cls in pairs(errors.classes) do core.register_class("mp." .. name, cls) end

-- Queues and pipes (src/lqueue.c, src/lpipe.c)
mp.Queue = core.Queue
mp.SimpleQueue = core.SimpleQueue
mp.JoinableQueue = core.JoinableQueue
mp.Pipe = core.Pipe

-- Pools and futures (lua/mp/pool.lua); mp.wait takes AsyncResults too.
local pool = require "mp.pool"
mp.Pool = pool.Pool
mp.AsyncResult = pool.AsyncResult
local futures = require "mp.futures"
mp.as_completed = futures.as_completed
mp.wait = futures.wait
mp.FIRST_COMPLETED, mp.FIRST_EXCEPTION, mp.ALL_COMPLETED = "FIRST_COMPLETED", "FIRST_EXCEPTION", "ALL_COMPLETED"

-- Managers (lua/mp/manager.lua) and named shared memory (src/lshm.c)
local manager = require "mp.manager"
mp.Manager = manager.Manager
mp.BaseManager = manager.BaseManager
mp.SyncManager = manager.SyncManager
mp.is_proxy = manager.is_proxy
mp.SharedMemory = core.SharedMemory

-- Start methods and contexts (lua/mp/context.lua, docs/processes.md)
local context = require "mp.context"
mp.set_start_method = context.set_start_method
mp.get_start_method = context.get_start_method
mp.get_all_start_methods = context.get_all_start_methods
mp.get_context = context.get_context
mp.forkserver_start = process.forkserver_start
-- A context's Pool: Pool{..., context = method} (positional arguments become options).
context.build(mp, function(method, processes, ...)
  local opts = processes
  if type(processes) ~= "table" then
    local initializer, initargs, maxtasksperchild = ...
    opts = { processes = processes, initializer = initializer, initargs = initargs,
             maxtasksperchild = maxtasksperchild }
  else
    local copy = {}
    for k, v in pairs(opts) do copy[k] = v end
    opts = copy
  end
  if opts.context == nil then opts.context = method end
  return pool.Pool(opts)
end)

return mp

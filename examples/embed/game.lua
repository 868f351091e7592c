--[[
The script examples/embed/host.c runs: frame(n) is called once per frame, while
the host's loader thread holds the host's mutex. Each frame gives two tasks to a
Pool and starts a worker process; all of them log through the host (host.log
takes that mutex) and answer, the process on a Queue. Started through the fork
server they answer; forked from the threaded host (host --fork), they wait
forever for a mutex nobody in them will release, and the frame says so instead
of hanging.
]]
local results = mp.Queue()
local pool                                         -- made at the first frame, while the mutex is held

local function stuck(n)
  error(string.format("frame %d: no answer within 2 s: the workers are stuck on the host's mutex", n), 0)
end

local function worker(n, q)
  host.log(string.format("frame %d, worker up (forked as %s)", n, host.forked_as()))
  q:put(n * 10)
end

local function task(n, k)
  host.log(string.format("frame %d, pool task %d (forked as %s)", n, k, host.forked_as()))
  return n * 10 + k
end

function frame(n)
  pool = pool or mp.Pool(2)
  local p = mp.Process{ target = worker, args = { n, results } }
  p:start()
  local tasks = { pool:apply_async(task, { n, 1 }), pool:apply_async(task, { n, 2 }) }
  local ok, from_process = pcall(results.get, results, 2)
  if not ok then p:kill(); p:join(); pool:terminate(); stuck(n) end
  local sum = from_process
  for _, ar in ipairs(tasks) do
    local done, v = pcall(ar.get, ar, 2)
    if not done then p:join(); pool:terminate(); stuck(n) end
    sum = sum + v
  end
  p:join()
  return string.format("frame %d: %d (%s)", n, sum, mp.get_start_method())
end

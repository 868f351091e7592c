--[[
The script examples/embed/host.c runs: frame(n) is called once per frame, while
the host's loader thread holds the host's mutex. Each frame starts two worker
processes that log through the host (host.log takes that mutex) and answer on a
Queue. Started through the fork server they answer; forked from the threaded
host (host --fork), they wait forever for a mutex nobody in them will release,
and the frame says so instead of hanging.
]]
local results = mp.Queue()

local function worker(n, k)
  host.log(string.format("frame %d, worker %d up (forked as %s)", n, k, host.forked_as()))
  results:put(n * 10 + k)
end

function frame(n)
  local workers = {}
  for k = 1, 2 do
    workers[k] = mp.Process{ target = worker, args = { n, k } }
    workers[k]:start()
  end
  local sum = 0
  for _ = 1, 2 do
    local ok, v = pcall(results.get, results, 2)
    if not ok then
      for _, p in ipairs(workers) do p:kill(); p:join() end
      error(string.format("frame %d: no answer within 2 s: the workers are stuck on the host's mutex", n), 0)
    end
    sum = sum + v
  end
  for _, p in ipairs(workers) do p:join() end
  return string.format("frame %d: %d (%s)", n, sum, mp.get_start_method())
end

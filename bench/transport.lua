-- Pipe, Queue and JoinableQueue throughput: the tutorial's programs. The parent
-- sends N integers and a "DONE" sentinel to one reader process; the time runs
-- from starting the reader to joining it. Twin of bench/transport.py.
-- Counts: 1e4, 1e5 and 1e6 (BENCH_QUICK=1 leaves out 1e6, which takes Python
-- about 30 s in all). Then a Queue and a Pipe used by one process alone (put and
-- take its own items). Also peak RSS of the children.
local counts = { 10000, 100000 }
if os.getenv("BENCH_QUICK") ~= "1" then counts[#counts + 1] = 1000000 end
-- Best of a few rounds (interleaved), as bench/transport.py: the machine is shared.
local ROUNDS = tonumber(os.getenv("BENCH_ROUNDS")) or 3

local function report(name, seconds, n)
  io.write(string.format("%s\t%.4f\tus/msg\n", name, seconds / n * 1e6))
  io.flush()
end

-- Peak resident set of this process in KiB (what ru_maxrss reports).
local function peak_rss()
  local f = io.open("/proc/self/status")
  if not f then return 0 end
  local kb = f:read("a"):match("VmHWM:%s*(%d+)")
  f:close()
  return tonumber(kb) or 0
end

local readers_peak = mp.Queue()   -- each reader reports its peak RSS here
local function report_peak() readers_peak:put(peak_rss()) end

local function pipe_reader(out, inp)
  inp:close()
  while true do
    if out:recv() == "DONE" then break end
  end
  report_peak()
end

local function pipe_run(n)
  local out, inp = mp.Pipe()
  local p = mp.Process{ target = pipe_reader, args = { out, inp } }
  local t0 = mp.time()
  p:start()
  out:close()
  for i = 0, n - 1 do inp:send(i) end
  inp:send("DONE")
  p:join()
  inp:close()
  return mp.time() - t0
end

local function queue_reader(q)
  while true do
    if q:get() == "DONE" then break end
  end
  report_peak()
end

local function joinable_reader(q)
  while true do
    local msg = q:get()
    q:task_done()
    if msg == "DONE" then break end
  end
  report_peak()
end

local function queue_run(n, make, reader)
  local q = make()
  local p = mp.Process{ target = reader, args = { q } }
  local t0 = mp.time()
  p:start()
  for i = 0, n - 1 do q:put(i) end
  q:put("DONE")
  p:join()
  return mp.time() - t0
end

for _, n in ipairs(counts) do
  local label = n >= 1000000 and "1e6" or n >= 100000 and "1e5" or "1e4"
  local best = { math.huge, math.huge, math.huge }
  for _ = 1, ROUNDS do
    best[1] = math.min(best[1], pipe_run(n))
    best[2] = math.min(best[2], queue_run(n, mp.Queue, queue_reader))
    best[3] = math.min(best[3], queue_run(n, mp.JoinableQueue, joinable_reader))
  end
  report("Pipe " .. label .. " integers", best[1], n)
  report("Queue " .. label .. " integers", best[2], n)
  report("JoinableQueue " .. label .. " integers", best[3], n)
end

-- One process putting and taking its own items: nobody to wait for.
do
  local n = 100000
  local best = { math.huge, math.huge }
  for _ = 1, ROUNDS do
    local q = mp.Queue()
    local t0 = mp.time()
    for i = 1, n do q:put(i); q:get() end
    best[1] = math.min(best[1], mp.time() - t0)
    q:close()
    local a, b = mp.Pipe()
    t0 = mp.time()
    for i = 1, n do a:send(i); b:recv() end
    best[2] = math.min(best[2], mp.time() - t0)
    a:close(); b:close()
  end
  report("Queue put+get in one process, 1e5", best[1], n)
  report("Pipe send+recv in one process, 1e5", best[2], n)
end

local readers = 0
while not readers_peak:empty() do readers = math.max(readers, readers_peak:get()) end
io.write(string.format("peak RSS, writer\t%d\tKiB\n", peak_rss()))
io.write(string.format("peak RSS, largest reader\t%d\tKiB\n", readers))

-- JoinableQueue throughput with task_done and join (tutorial: Pipe vs Queue, the JoinableQueue timing for 1e4, 1e5, 1e6 messages).
-- Puts N integers on a JoinableQueue for a reader process that marks each one
-- done; the writer waits with join(). Prints how long it took.
-- Run: mplua examples/joinable_queue_throughput.lua [count]
-- (default: 1e4, 1e5 and 1e6, as in the tutorial).
local function reader_proc(queue)
  while true do
    local msg = queue:get()
    queue:task_done()
    if msg == "DONE" then break end
  end
end

local function writer(count, queue)
  for i = 0, count - 1 do queue:put(i) end
  queue:put("DONE")
end

local counts = arg and arg[1] and { math.tointeger(tonumber(arg[1])) } or { 10^4, 10^5, 10^6 }
for _, count in ipairs(counts) do
  count = math.tointeger(count)
  local queue = mp.JoinableQueue()
  local reader_p = mp.Process{ target = reader_proc, args = { queue }, daemon = true }
  reader_p:start()
  local start = mp.time()
  writer(count, queue)
  queue:join()                 -- every item marked done
  reader_p:join()
  print(string.format("Sending %d numbers to JoinableQueue() took %.3f seconds", count, mp.time() - start))
end

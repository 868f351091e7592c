-- Queue throughput: N integers to a reader process (tutorial: Pipe vs Queue, the Queue timing for 1e4, 1e5, 1e6 messages).
-- Puts N integers on a Queue for a reader process that stops at "DONE";
-- prints how long it took. Run: mplua examples/queue_throughput.lua [count]
-- (default: 1e4, 1e5 and 1e6, as in the tutorial).
local function reader_proc(queue)
  while true do
    if queue:get() == "DONE" then break end
  end
end

local function writer(count, queue)
  for i = 0, count - 1 do queue:put(i) end
  queue:put("DONE")
end

local counts = arg and arg[1] and { math.tointeger(tonumber(arg[1])) } or { 10^4, 10^5, 10^6 }
for _, count in ipairs(counts) do
  count = math.tointeger(count)
  local queue = mp.Queue()
  local reader_p = mp.Process{ target = reader_proc, args = { queue }, daemon = true }
  reader_p:start()
  local start = mp.time()
  writer(count, queue)
  reader_p:join()
  print(string.format("Sending %d numbers to Queue() took %.3f seconds", count, mp.time() - start))
end

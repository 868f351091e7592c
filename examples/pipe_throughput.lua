-- Pipe throughput: N integers to a reader process (tutorial: Pipe vs Queue, the Pipe timing for 1e4, 1e5, 1e6 messages).
-- Sends N integers through a Pipe to a reader process that stops at "DONE";
-- prints how long it took. Run: mplua examples/pipe_throughput.lua [count]
-- (default: 1e4, 1e5 and 1e6, as in the tutorial).
local function reader_proc(p_output, p_input)
  p_input:close()              -- only the writer holds the sending end
  while true do
    if p_output:recv() == "DONE" then break end
  end
end

local function writer(count, p_input)
  for i = 0, count - 1 do p_input:send(i) end
  p_input:send("DONE")
end

local counts = arg and arg[1] and { math.tointeger(tonumber(arg[1])) } or { 10^4, 10^5, 10^6 }
for _, count in ipairs(counts) do
  count = math.tointeger(count)
  local output_p, input_p = mp.Pipe()
  local reader_p = mp.Process{ target = reader_proc, args = { output_p, input_p }, daemon = true }
  reader_p:start()
  output_p:close()
  local start = mp.time()
  writer(count, input_p)
  input_p:close()
  reader_p:join()
  print(string.format("Sending %d numbers to Pipe() took %.3f seconds", count, mp.time() - start))
end

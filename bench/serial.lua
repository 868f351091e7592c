-- mp.dumps + mp.loads of typical values; twin of bench/serial.py (pickle protocol 5).
-- Prints ns per dumps+loads pair: the best of ROUNDS rounds of about BUDGET/ROUNDS
-- seconds each, in process CPU time (os.clock), so that other jobs on a shared
-- machine slow the measurement down less; serial.py measures the same way.
local BUDGET = tonumber(arg and arg[1]) or 0.4
local ROUNDS = 5
local dumps, loads = mp.dumps, mp.loads
local clock = os.clock

local record = {}
for i = 1, 10 do record["field" .. i] = i * 1.5 end
local array = {}
for i = 1, 1000 do array[i] = i end

local k = 3
local workloads = {
  { "small int", 42 },
  { "short string", "hello world" },
  { "10-field table", record },
  { "1000-element array", array },
  { "1 MiB string", string.rep("x", 2^20) },
  { "closure with upvalue", function(x) return x * k end },
}

-- Seconds per operation: the fastest of ROUNDS rounds of n operations.
local function measure(v)
  local n, elapsed = 1, 0
  while true do                                  -- n such that a round takes BUDGET/ROUNDS
    local t0 = clock()
    for _ = 1, n do loads(dumps(v)) end
    elapsed = clock() - t0
    if elapsed > BUDGET / ROUNDS / 4 then break end
    n = n * 4
  end
  n = math.max(1, math.floor(n * BUDGET / ROUNDS / elapsed))
  local best = math.huge
  for _ = 1, ROUNDS do
    local t0 = clock()
    for _ = 1, n do loads(dumps(v)) end
    best = math.min(best, (clock() - t0) / n)
  end
  return best
end

for _, w in ipairs(workloads) do
  io.write(string.format("%s\t%.0f\tns/dumps+loads\n", w[1], measure(w[2]) * 1e9))
end

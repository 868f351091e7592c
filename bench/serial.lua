-- mp.dumps + mp.loads of typical values; twin of bench/serial.py (pickle protocol 5).
-- Each workload runs for about BUDGET seconds; prints ns per dumps+loads pair.
local BUDGET = tonumber(arg and arg[1]) or 0.4
local dumps, loads = mp.dumps, mp.loads

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

local function measure(v)
  local n, elapsed = 1, 0
  while true do
    local t0 = mp.time()
    for _ = 1, n do loads(dumps(v)) end
    elapsed = mp.time() - t0
    if elapsed > BUDGET / 4 then break end
    n = n * 4
  end
  local reps = math.max(1, math.floor(n * BUDGET / elapsed))
  local t0 = mp.time()
  for _ = 1, reps do loads(dumps(v)) end
  return (mp.time() - t0) / reps
end

for _, w in ipairs(workloads) do
  io.write(string.format("%s\t%.0f\tns/dumps+loads\n", w[1], measure(w[2]) * 1e9))
end

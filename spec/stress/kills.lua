--[[
Fault-injection stress: SIGKILLs producers, consumers and workers at random
instants while a Queue, a JoinableQueue, a Pipe, locks and a Pool are in use,
replaces each victim, and checks afterwards that nothing was lost or
duplicated among the survivors, that the counters agree, and that nothing
hangs. Every blocking step has a deadline; a hang is a failure.

    mplua spec/stress/kills.lua [kills per transport (default 300)] [transport ...]

Prints one line per transport and a last line "stress: ok" (exit 0), or the
first violation (exit 1). spec/stress_spec.lua runs it with a small count.

What "nothing lost" means when processes die: a consumer killed after taking
an item takes it with it, so at most one acknowledged item per consumer kill
may be missing; a producer killed after its item went out but before it
recorded that may leave one unacknowledged item delivered per producer kill.
Anything beyond that, any duplicate, and any corrupt payload (another
message's bytes inside an item) is a failure.
]]
local kills_wanted = tonumber(arg[1]) or 300
local only = {}
for i = 2, #arg do only[arg[i]] = true end
local function wanted(name) return next(only) == nil or only[name] end

local N_ITEMS = 1 << 20        -- item ids (never reached)
local NPROD, NCONS = 3, 3

local function fail(fmt, ...)
  io.write("stress: FAILED: ", string.format(fmt, ...), "\n")
  io.stdout:flush()
  for _, p in ipairs(mp.active_children()) do pcall(p.kill, p) end
  os.exit(1)
end

-- A payload whose every byte derives from its id, of a size that sometimes
-- exceeds the ring (so messages also travel in chunks).
local function payload(id)
  local size = (id % 17 == 0) and 70000 + id % 5000 or id % 300
  return string.rep(string.char(65 + id % 26), size)
end

local function check_item(v)
  if type(v) ~= "table" or math.type(v.id) ~= "integer" or v.s ~= payload(v.id) then
    fail("corrupt item: %s", type(v) == "table" and ("id " .. tostring(v.id) .. ", " .. #tostring(v.s) .. " bytes") or tostring(v))
  end
  return v.id
end

local rng = math.random
math.randomseed(os.time(), mp.getpid())

-- Kills one random process of `pool` (a list of {role=, proc=}) every few ms and
-- replaces it with spawn(role), until `want` kills; returns kills per role.
local function killer(procs, spawn, want)
  local kills = {}
  for _ = 1, want do
    mp.sleep(rng() * 0.01)
    local i = rng(#procs)
    local entry = procs[i]
    if entry.proc:is_alive() then entry.proc:kill() end
    entry.proc:join(10)
    if entry.proc.exitcode == nil then fail("a %s did not die within 10 s of SIGKILL", entry.role) end
    kills[entry.role] = (kills[entry.role] or 0) + 1
    procs[i] = { role = entry.role, proc = spawn(entry.role) }
  end
  return kills
end

local function start(fn, ...)
  local p = mp.Process{ target = fn, args = table.pack(...) }
  p:start()
  return p
end

local function join_all(procs, what)
  for _, e in ipairs(procs) do
    e.proc:join(20)
    if e.proc.exitcode == nil then fail("%s: a %s did not finish within 20 s", what, e.role) end
  end
end

-- Producer/consumer stress over a transport given as put(v), get(timeout) --> v or nil.
local function queue_like(name, t)
  local next_id = mp.RawValue("q", 0)
  local acked = mp.RawArray("B", N_ITEMS)     -- 1: the producer's put returned
  local got = mp.RawArray("B", N_ITEMS)       -- times a consumer received the id
  local stop = mp.Event()
  local function producer()
    while not stop:is_set() do
      local id = next_id:add(1)
      t.put({ id = id, s = payload(id) })
      acked[id] = 1
    end
  end
  local function consumer()
    while true do
      local v = t.get(0.05)
      if v == nil then
        if stop:is_set() then return end
      else
        local id = check_item(v)
        got[id] = got[id] + 1
        if t.task_done then t.task_done() end
      end
    end
  end
  local function spawn(role) return start(role == "producer" and producer or consumer) end
  local procs = {}
  for _ = 1, NPROD do procs[#procs + 1] = { role = "producer", proc = spawn("producer") } end
  for _ = 1, NCONS do procs[#procs + 1] = { role = "consumer", proc = spawn("consumer") } end
  local kills = killer(procs, spawn, kills_wanted)
  stop:set()
  -- Producers may be blocked on a full queue: drain here while they finish.
  local deadline = mp.time() + 20
  for _, e in ipairs(procs) do
    while e.role == "producer" and e.proc:is_alive() do
      if mp.time() > deadline then fail("%s: a producer did not finish within 20 s", name) end
      local v = t.get(0.01)
      if v ~= nil then
        local id = check_item(v)
        got[id] = got[id] + 1
        if t.task_done then t.task_done() end
      end
    end
  end
  join_all(procs, name)
  -- What is left (the consumers stop once stop is set and a get times out).
  while true do
    local v = t.get(0.05)
    if v == nil then break end
    local id = check_item(v)
    got[id] = got[id] + 1
    if t.task_done then t.task_done() end
  end
  local last = next_id.value
  local dup, lost, unacked = 0, 0, 0
  for id = 1, last do
    local g = got[id]
    if g > 1 then dup = dup + 1 end
    if g == 0 and acked[id] == 1 then lost = lost + 1 end
    if g == 1 and acked[id] == 0 then unacked = unacked + 1 end
  end
  local kp, kc = kills.producer or 0, kills.consumer or 0
  if dup > 0 then fail("%s: %d items received twice", name, dup) end
  if lost > kc then fail("%s: %d acknowledged items lost with only %d consumer kills", name, lost, kc) end
  if unacked > kp then fail("%s: %d unacknowledged items delivered with only %d producer kills", name, unacked, kp) end
  local extra = t.check and t.check(kc) or ""
  io.write(string.format("%-14s kills %3d (producers %d, consumers %d), items %d checked, lost with dead consumers %d, delivered for dead producers %d%s\n",
    name, kp + kc, kp, kc, last, lost, unacked, extra))
  io.stdout:flush()
end

local function queue_transport(q, joinable)
  local t = {
    put = function(v) q:put(v, true, 30) end,
    get = function(timeout)
      local ok, v = pcall(q.get, q, true, timeout)
      if ok then return v end
      if not mp.Empty:is(v) then fail("get: %s", tostring(v)) end
    end,
    check = function(consumer_kills)
      if q:qsize() ~= 0 or not q:empty() or q:full() then
        fail("counters after draining: qsize %d empty %s full %s", q:qsize(), tostring(q:empty()), tostring(q:full()))
      end
      if not joinable then return "" end
      -- Items taken by killed consumers were never marked done: at most one per kill.
      local missing = 0
      while not q:join(0) do
        q:task_done()
        missing = missing + 1
        if missing > consumer_kills then fail("JoinableQueue: more unfinished tasks than consumer kills") end
      end
      return string.format(", unfinished tasks of dead consumers %d", missing)
    end,
  }
  if joinable then t.task_done = function() q:task_done() end end
  return t
end

if wanted("Queue") then queue_like("Queue", queue_transport(mp.Queue{ maxsize = 64, bytes = 65536 })) end
if wanted("JoinableQueue") then
  queue_like("JoinableQueue", queue_transport(mp.JoinableQueue{ maxsize = 64, bytes = 65536 }, true))
end
if wanted("Pipe") then
  local r, w = mp.Pipe(false)
  -- Several readers share the receiving end: poll then recv must be one step
  -- (another reader could take the message in between), so they take turns.
  local turn = mp.Lock()
  queue_like("Pipe", {
    put = function(v) w:send(v) end,
    get = function(timeout)
      turn:acquire()
      local v = r:poll(timeout) and r:recv() or nil
      turn:release()
      return v
    end,
  })
  r:close(); w:close()
end

if wanted("Lock") then
  local lock, counter = mp.Lock(), mp.RawValue("q", 0)
  local acks = mp.RawArray("q", kills_wanted + 8)   -- one slot per process
  local slot_of = mp.RawValue("q", 0)
  local function worker()
    local slot = slot_of:add(1)
    while true do
      lock:acquire()
      counter.value = counter.value + 1
      acks[slot] = acks[slot] + 1
      lock:release()
    end
  end
  local procs = {}
  local function spawn() return start(worker) end
  for _ = 1, 4 do procs[#procs + 1] = { role = "worker", proc = spawn() } end
  local kills = killer(procs, spawn, kills_wanted)
  for _, e in ipairs(procs) do e.proc:kill(); e.proc:join(10) end
  local sum = 0
  for i = 1, #acks do sum = sum + acks[i] end
  local total_kills = kills.worker + #procs
  local ok, why = lock:acquire(true, 5)
  if not ok then fail("Lock: not acquirable after the kills") end
  lock:release()
  local diff = counter.value - sum
  if diff < 0 or diff > total_kills then
    fail("Lock: counter %d against %d acknowledged increments after %d kills", counter.value, sum, total_kills)
  end
  io.write(string.format("%-14s kills %3d, increments %d checked, %d done by dying holders%s\n",
    "Lock", total_kills, counter.value, diff, why and ", recovered from a dead owner" or ""))
  io.stdout:flush()
end

if wanted("Pool") then
  local pool = mp.Pool(3)
  local me = mp.getpid()
  local kills = mp.RawValue("q", 0)
  local stop = mp.Event()
  -- A sibling process kills random pool workers (the main process is busy in map).
  local k = start(function()
    local workers = {}
    while kills.value < kills_wanted and not stop:is_set() do
      mp.sleep(0.002 + rng() * 0.01)
      local f = io.popen("ls /proc")
      workers = {}
      for name in f:lines() do
        local pid = tonumber(name)
        if pid and pid ~= mp.getpid() then
          local st = io.open("/proc/" .. pid .. "/stat")
          local s = st and st:read("a") or ""
          if st then st:close() end
          local state, ppid = s:match("%) (%a) (%d+)")
          if tonumber(ppid) == me and state ~= "Z" then workers[#workers + 1] = pid end
        end
      end
      f:close()
      -- A worker may have ended (and been reaped) since the listing: not a kill.
      if #workers > 0 and pcall(mp.kill, workers[rng(#workers)], "SIGKILL") then
        kills:add(1)
      end
    end
  end)
  local maps, lost, items, slowest = 0, 0, 0, 0
  local deadline = mp.time() + 120
  while kills.value < kills_wanted do
    if mp.time() > deadline then
      fail("Pool: %d kills in 120 s (killer alive: %s, slowest map %.2f s)", kills.value, tostring(k:is_alive()), slowest)
    end
    local t0 = mp.time()
    local n = 50 + rng(200)
    local xs = {}
    for i = 1, n do xs[i] = i end
    -- A task long enough (~20 us) that kills land in the middle of some.
    local function square(x)
      local s = 0
      for _ = 1, 2000 do s = s + 1 end
      return x * x + s - 2000
    end
    local ok, res
    if maps % 2 == 0 then
      ok, res = pcall(pool.map, pool, square, xs, rng(8))
    else
      ok, res = pcall(function()
        local out = {}
        for v in pool:imap(square, xs, rng(8)) do out[#out + 1] = v end
        return out
      end)
    end
    maps = maps + 1
    slowest = math.max(slowest, mp.time() - t0)
    if ok then
      for i = 1, n do if res[i] ~= i * i then fail("Pool: wrong result %s for %d", tostring(res[i]), i) end end
      items = items + n
    elseif mp.WorkerLostError:is(res) then
      lost = lost + 1
    else
      fail("Pool: map raised %s", tostring(res))
    end
  end
  stop:set()
  k:join(10)
  -- After the kills the pool still serves, whole.
  local res = pool:map(function(x) return x + 1 end, { 1, 2, 3 })
  if res[1] ~= 2 or res[3] ~= 4 then fail("Pool: broken after the kills") end
  pool:close()
  pool:join()
  io.write(string.format("%-14s kills %3d, maps and imaps %d (%d failed with WorkerLostError), %d results checked\n",
    "Pool", kills.value, maps, lost, items))
  io.stdout:flush()
end

if #mp.active_children() > 0 then fail("children left: %d", #mp.active_children()) end
print("stress: ok")

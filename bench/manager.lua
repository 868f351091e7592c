-- Manager proxies: the cost of a call, one and two clients; twin of bench/manager.py.
--   pair:   d[k] = v followed by d[k] (a write and a read of a managed dict)
--   append: l:append(v), timed up to a final #l (so the server did them all)
-- "2 clients" runs the same loop in two processes at once; the figure is the
-- wall time over the total number of operations. The floor rows are the
-- cheapest round trips: the manager's ping (answered by the server's C engine,
-- no Lua) and a C ping-pong over a Unix socketpair (bench/unix_rtt.c, when a
-- C compiler is there), with blocking reads and with reads that spin as the
-- manager's do before sleeping. BENCH_QUICK=1 runs fewer rounds.
local quick = os.getenv("BENCH_QUICK") == "1"
local N = quick and 5000 or 20000
local ROUNDS = quick and 2 or 5

local function report(name, value, unit)
  io.write(string.format("%s\t%.4g\t%s\n", name, value, unit))
  io.flush()
end

local function best_of(rounds, fn)
  local best = math.huge
  for _ = 1, rounds do best = math.min(best, fn()) end
  return best
end

local mgr <close> = mp.Manager()

local function pairs_loop(d, n)
  for i = 1, n do
    d.k = i
    local _ = d.k
  end
end

local function table_pairs_loop(d, n)
  local t = { 1 }
  for _ = 1, n do
    d.k = t
    local _ = d.k
  end
end

local function append_loop(l, n)
  for i = 1, n do l:append(i) end
  local _ = #l
end

local function one_client(make, loop)
  return best_of(ROUNDS, function()
    local obj = make()
    local t0 = mp.time()
    loop(obj, N)
    return (mp.time() - t0) / N * 1e6
  end)
end

-- Two processes run loop(obj, N) together; wall time from the moment both are ready.
local function two_clients(make, loop)
  return best_of(ROUNDS, function()
    local obj = make()
    local ready = mp.Barrier(3)
    local ps = {}
    for i = 1, 2 do
      ps[i] = mp.Process{ target = function() ready:wait(); loop(obj, N) end }
      ps[i]:start()
    end
    ready:wait()
    local t0 = mp.time()
    for i = 1, 2 do ps[i]:join() end
    return (mp.time() - t0) / (2 * N) * 1e6
  end)
end

local function dict() return mgr:dict() end
local function list() return mgr:list() end

report("1 client: d[k] = v + d[k] pair", one_client(dict, pairs_loop), "us/pair")
report("1 client: l:append(v)", one_client(list, append_loop), "us/op")
report("1 client: d[k] = {1} + d[k] pair (both wait)", one_client(dict, table_pairs_loop), "us/pair")
report("2 clients: d[k] = v + d[k] pair", two_clients(dict, pairs_loop), "us/pair")
report("2 clients: l:append(v)", two_clients(list, append_loop), "us/op")

report("floor: manager ping round trip", best_of(ROUNDS, function()
  local t0 = mp.time()
  for _ = 1, N do mgr:ping() end
  return (mp.time() - t0) / N * 1e6
end), "us/op")

-- The kernel's floor: C processes ping-ponging 12 bytes over a socketpair.
local dir = arg[0]:match("^(.*)/[^/]*$") or "."
local exe = os.tmpname()
if os.execute("cc -O2 -o " .. exe .. " " .. dir .. "/unix_rtt.c 2>/dev/null") then
  for _, mode in ipairs { "", " spin" } do
    local p = io.popen(exe .. " " .. N * 5 .. mode)
    local us = tonumber(p:read("a"))
    p:close()
    local how = mode == "" and "blocking reads" or "spinning reads"
    if us then report("floor: C round trip over a Unix socketpair, " .. how, us, "us/op") end
  end
end
os.remove(exe)

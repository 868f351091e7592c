--[[
Start+join of a trivial process from a parent that has touched 10 MB and then
500 MB of Lua data, with the fork start method and through the fork server;
twin of bench/forkserver.py (Python's fork and forkserver, same names).

The fork server is started first, while the parent is small (as a host does
with mp.forkserver_start() before it loads anything): it is a copy of the
parent taken then. fork copies the parent's page tables at every start, so its
cost grows with the parent; the server's does not.
]]
local N_SMALL = tonumber(arg[1]) or 200
local N_BIG = tonumber(arg[2]) or 40

mp.forkserver_start()

local function noop() end

local data, n = {}, 0
-- Lua data up to `mb` megabytes (strings of ~100 bytes in one table), touched as it is made.
local function grow(mb)
  while collectgarbage("count") < mb * 1024 do
    n = n + 1
    data[n] = string.rep("x", 90) .. n
  end
end

local function bench(label, method, count)
  for _ = 1, 5 do local p = mp.Process{target = noop, context = method}; p:start(); p:join() end
  local t0 = mp.time()
  for _ = 1, count do
    local p = mp.Process{target = noop, context = method}
    p:start()
    p:join()
  end
  io.write(string.format("start+join, %s parent, %s\t%.4f\tms/process\n", label, method, (mp.time() - t0) / count * 1e3))
  io.stdout:flush()
end

grow(10)
bench("10 MB", "fork", N_SMALL)
bench("10 MB", "forkserver", N_SMALL)
grow(500)
bench("500 MB", "fork", N_BIG)
bench("500 MB", "forkserver", N_BIG)

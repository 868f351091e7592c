-- Five processes, each joined right after it starts, so they run one after the other (tutorial: joining each process as soon as it starts).
-- Run: mplua examples/process_five_joined.lua [seconds]   (process i sleeps i * seconds, default 0.05)
local unit = tonumber(arg[1]) or 0.05

local function fun(val)
  print(string.format("starting fun with %g s", val * unit))
  mp.sleep(val * unit)
  print(string.format("finishing fun with %g s", val * unit))
end

local t0 = mp.time()
for i = 1, 5 do
  local p = mp.Process{ target = fun, args = { i } }
  p:start()
  p:join()            -- waits here: the next process starts only after this one ended
end
-- One after the other: 1 + 2 + 3 + 4 + 5 = 15 units in all.
print(string.format("elapsed %.2f s (15 units of %g s)", mp.time() - t0, unit))

--[[
The Pool's progress bar (lua/mp/pool.lua): `[#####.....] done/total rate/s
ETA` on stderr, or `done rate/s` while the total is not known yet (an
iterator not yet exhausted); redrawn at most every 0.1 s, and drawn only
when stderr is a terminal.
]]
local core = require "mp.core"

local now, max = core.time, math.max

-- count() --> items done; total() --> items in all, or nil. Returns draw(final), or nil off a terminal.
return function(count, total)
  if not core.isatty(2) then return nil end
  local t0, last = now(), 0
  return function(final)
    local t = now()
    if not final and t - last < 0.1 then return end
    last = t
    local done, n = count(), total()
    local rate = done / max(t - t0, 1e-9)
    local s
    if n then
      local fill = math.floor((n > 0 and done / n or 1) * 30)
      s = string.format("\r[%s%s] %d/%d %.0f/s ETA %.1fs ", ("#"):rep(fill), ("."):rep(30 - fill),
        done, n, rate, rate > 0 and (n - done) / rate or 0)
    else
      s = string.format("\r%d done %.0f/s ", done, rate)
    end
    io.stderr:write(s, final and "\n" or "")
    io.stderr:flush()
  end
end

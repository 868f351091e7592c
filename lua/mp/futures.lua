--[[
Futures across pools (concurrent.futures' module functions): mp.as_completed
and mp.wait, which takes AsyncResults mixed with what core.wait takes. They
only read an AsyncResult's public state (_ready, _n, [3]: see pool.lua) and
run its pool while they wait.
]]
local core = require "mp.core"
local errors = require "mp.errors"
local pool = require "mp.pool"

local M = {}
local classes = errors.classes
local now = core.time
local min, max = math.min, math.max
local check = require "mp.check"
local argerror, typename, check_timeout = check.argerror, check.typename, pool.check_timeout
local is_ar = pool.is_result

local POLL_FDLESS = 0.002      -- seconds between polls of a pool without an fd

--[[
core.wait, its argument errors (a bad source) at the caller's line rather
than this file's: called by pcall, core.wait's errors carry no position, and
check.error gives them the first one outside mp. Any other error (a signal
handler's, Ctrl-C's) goes on as it came.
]]
local function cwait(list, timeout, where)
  local ok, r = pcall(core.wait, list, timeout)
  if ok then return r end
  if type(r) == "string" and r:find("^bad argument") then
    -- `where`: list's positions in the caller's list (the sources that are not AsyncResults).
    if where then r = r:gsub("item (%d+)", function(i) return "item " .. (where[tonumber(i)] or i) end, 1) end
    check.error(r)
  end
  error(r, 0)
end

-- Runs the pools of the pending results until one more is ready or the deadline.
local function wait_any(pending, deadline, others)
  local pools = {}
  for _, ar in ipairs(pending) do if not ar._ready then pools[ar._pool] = true end end
  local one = next(pools)
  if one ~= nil and next(pools, one) == nil and not others then
    local left = deadline - now()
    one:_wait(function()
      for _, ar in ipairs(pending) do if ar._ready then return true end end
    end, left < math.huge and max(left, 0) or nil)
    return
  end
  --[[
  Several pools, or other sources: wait on all their fds at once, then pump.
  A pool whose transport has no fd (mp.mpi's) can only be polled: the wait
  is then cut to POLL_FDLESS, so its results are seen within that.
  ]]
  local fds, fdless = {}, false
  for _, s in ipairs(others or {}) do fds[#fds + 1] = s end
  for p in pairs(pools) do
    local fd = p._tr and p._tr:fileno() or -1
    if fd >= 0 then fds[#fds + 1] = fd elseif p._tr then fdless = true end
  end
  local left = min(deadline - now(), fdless and POLL_FDLESS or 0.1)
  if left > 0 then cwait(fds, left) end
  for p in pairs(pools) do if p._tr then p:_pump(0) end end
end

local function check_list(list, fname, what)
  if type(list) ~= "table" then argerror(1, fname, "table expected, got " .. type(list), 3) end
  for i = 1, #list do
    if what == "ars" and not is_ar(list[i]) then
      argerror(1, fname, "item " .. i .. ": AsyncResult expected, got " .. typename(list[i]), 3)
    end
  end
end

--[[
mp.as_completed(ars [, timeout]): an iterator over the results as they
complete (those already complete first, in completion order). Raises
TimeoutError when the timeout passes before all have completed.
]]
function M.as_completed(ars, timeout)
  check_list(ars, "as_completed", "ars")
  check_timeout(timeout, 2, "as_completed", "timeout", 2)
  local deadline = timeout and now() + max(timeout, 0) or math.huge
  local pending, ready = {}, {}
  for i = 1, #ars do pending[i] = ars[i] end
  return function()
    while true do
      if #ready == 0 then
        local rest = {}
        for _, ar in ipairs(pending) do
          if ar._ready then ready[#ready + 1] = ar else rest[#rest + 1] = ar end
        end
        pending = rest
        table.sort(ready, function(a, b) return a._ready > b._ready end)   -- popped from the end
      end
      if #ready > 0 then return table.remove(ready) end
      if #pending == 0 then return nil end
      if now() >= deadline then
        error(classes.TimeoutError(string.format("%d of %d results not completed within the timeout", #pending, #ars)), 2)
      end
      wait_any(pending, deadline)
    end
  end
end

local MODES = { FIRST_COMPLETED = true, FIRST_EXCEPTION = true, ALL_COMPLETED = true }

--[[
mp.wait(sources, timeout [, mode]) --> the ready sources (in the given order),
and those not ready. Sources mix AsyncResults with what core.wait takes
(connections, queues, sentinels, fds). Modes as concurrent.futures.wait;
without AsyncResults, FIRST_COMPLETED is core.wait itself.
]]
function M.wait(sources, timeout, mode)
  if type(sources) ~= "table" then argerror(1, "wait", "table expected, got " .. type(sources), 2) end
  check_timeout(timeout, 2, "wait", "timeout", 2)
  mode = mode or "FIRST_COMPLETED"
  if not MODES[mode] then
    local msg = type(mode) == "string" and
      core.option_error({ [mode] = true }, "wait", { "FIRST_COMPLETED", "FIRST_EXCEPTION", "ALL_COMPLETED" })
    local s = msg and msg:match("did you mean '([^']+)'")
    argerror(3, "wait", "unknown mode '" .. tostring(mode) .. "'" .. (s and " (did you mean '" .. s .. "'?)" or ""))
  end
  local ars, others, where = {}, {}, {}
  for i = 1, #sources do
    local s = sources[i]
    if is_ar(s) then ars[#ars + 1] = s else others[#others + 1] = s; where[#others] = i end
  end
  if #ars == 0 and mode ~= "ALL_COMPLETED" then return cwait(sources, timeout) end
  local deadline = timeout and now() + max(timeout, 0) or math.huge
  while true do
    local ready = {}
    if #others > 0 then for _, s in ipairs(cwait(others, 0, where)) do ready[s] = true end end
    local nready, anyfailed = 0, false
    for i = 1, #sources do
      local s = sources[i]
      if is_ar(s) then
        if s._ready then ready[s] = true; anyfailed = anyfailed or s._n < 0 end
      end
      if ready[s] then nready = nready + 1 end
    end
    local all = nready == #sources
    if all or now() >= deadline or (mode == "FIRST_COMPLETED" and nready > 0)
       or (mode == "FIRST_EXCEPTION" and anyfailed) then
      local done, not_done = {}, {}
      for i = 1, #sources do
        local s = sources[i]
        if ready[s] then done[#done + 1] = s else not_done[#not_done + 1] = s end
      end
      return done, not_done
    end
    local pend = {}
    for _, ar in ipairs(ars) do if not ar._ready then pend[#pend + 1] = ar end end
    if #pend == 0 then cwait(others, min(deadline - now(), 0.1), where)
    else wait_any(pend, min(deadline, now() + 0.1), #others > 0 and others or nil) end
  end
end

return M

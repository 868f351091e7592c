--[[
Argument checks shared by the Lua half, in the project's conventions:
"bad argument #n to 'f' (...)" raised at the caller's level, unknown option
keys named with a did-you-mean, a timeout that is a number (not NaN).
]]
local M = {}
local min = math.min

local function argerror(n, fname, msg, level)
  error(string.format("bad argument #%d to '%s' (%s)", n, fname, msg), level + 1)
end

local function callable(v)
  if type(v) == "function" then return true end
  local mt = getmetatable(v)
  return type(mt) == "table" and mt.__call ~= nil
end

local function typename(v)
  local mt = getmetatable(v)
  return type(mt) == "table" and type(mt.__name) == "string" and mt.__name or type(v)
end

-- The closest known key (edit distance at most 2), for "did you mean".
local function suggest(key, known)
  local best, bd = nil, 3
  for _, k in ipairs(known) do
    local a, b = key, k
    local prev = {}
    for j = 0, #b do prev[j] = j end
    for i = 1, #a do
      local cur = { [0] = i }
      for j = 1, #b do
        cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (a:byte(i) == b:byte(j) and 0 or 1))
      end
      prev = cur
    end
    if prev[#b] < bd then best, bd = k, prev[#b] end
  end
  return best
end

-- Unknown keys of an options table are errors naming the key and the function.
local function keys(opts, known, fname, level)
  for k in pairs(opts) do
    local ok = false
    for _, name in ipairs(known) do if k == name then ok = true; break end end
    if not ok then
      local s = type(k) == "string" and suggest(k, known)
      error(string.format("unknown option '%s' to '%s'%s", tostring(k), fname,
        s and " (did you mean '" .. s .. "'?)" or ""), level + 1)
    end
  end
end

local function timeout(t, n, fname, what, level)
  if t ~= nil and (type(t) ~= "number" or t ~= t) then
    argerror(n, fname, what .. " must be a number, got " .. (type(t) == "number" and "nan" or type(t)), level + 1)
  end
  return t
end

M.argerror, M.callable, M.typename, M.suggest, M.keys, M.timeout =
  argerror, callable, typename, suggest, keys, timeout

return M

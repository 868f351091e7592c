--[[
Regression: chunksize edges. A float chunksize <= 0 (0.0, -1.0) passed the
check, failed deep inside (`bad argument #8 to 'add_run'`) and terminated the
pool; -math.huge silently became the default chunksize; chunksize =
math.maxinteger made map hang forever (the chunk's end overflowed).
]]
local mp = require "mp"
local H = require "helper"

local function range(n)
  local t = {}
  for i = 1, n do t[i] = i end
  return t
end

local function sq(x) return x * x end

-- The message of f(...)'s error, without its position.
local function message(f, ...)
  local ok, err = pcall(f, ...)
  assert(not ok, "expected an error")
  return (tostring(err):gsub("^[^:]*:%d+: ", ""))
end

describe("regress: pool chunksize", function()
  it("<= 0 as a float is the same argument error as an integer", function()
    local pool <close> = mp.Pool(2)
    for _, fname in ipairs { "map", "starmap", "imap", "imap_unordered", "map_async", "starmap_async" } do
      local f = fname:find("star") and function(...) return ... end or sq
      local xs = fname:find("star") and { { 1 }, { 2 } } or { 1, 2 }
      for _, pair in ipairs { { 0, 0.0 }, { -1, -1.0 } } do
        local want = message(pool[fname], pool, f, xs, pair[1])
        assert.equal(string.format("bad argument #3 to '%s' (chunksize must be at least 1, got %d)", fname, pair[1]), want)
        assert.equal(want, message(pool[fname], pool, f, xs, pair[2]))
        assert.equal(want, message(pool[fname], pool, f, xs, { chunksize = pair[2] }))
      end
    end
    -- The pool was not terminated by any of it.
    assert.same({ 1, 4, 9 }, { table.unpack(pool:map(sq, { 1, 2, 3 }), 1, 3) })
  end)

  it("that is not a whole number of range is an error, not the default", function()
    local pool <close> = mp.Pool(2)
    for _, cs in ipairs { -math.huge, math.huge, 0 / 0, 1e300, 2.5, "4" } do
      local m = message(pool.map, pool, sq, { 1, 2 }, { chunksize = cs })
      assert.matches("^bad argument #3 to 'map' %(chunksize must be an integer, got ", m)
    end
    assert.same({ 1, 4 }, { table.unpack(pool:map(sq, { 1, 2 }), 1, 2) })
  end)

  it("of math.maxinteger is one chunk, for every form", function()
    local r = H.run_script([[
      local pool <close> = mp.Pool(2)
      local xs = {}
      for i = 1, 100 do xs[i] = i end
      local big = math.maxinteger
      local m = pool:map(function(x) return x + 1 end, xs, big)
      local s = pool:starmap(function(a, b) return a + b end, { { 1, 2 }, { 3, 4 } }, big)
      local sum = 0
      for v in pool:imap(function(x) return x end, xs, big) do sum = sum + v end
      for v in pool:imap_unordered(function(x) return x end, xs, big) do sum = sum + v end
      local it = 0
      for v in pool:imap(function(x) return x end, function() it = it + 1; return it <= 10 and it or nil end, big) do sum = sum + v end
      print(m[1], m[100], s[1], s[2], sum, pool:map_async(function(x) return -x end, xs, big):get(10)[100])
    ]], { timeout = 20 })
    assert.equal(0, r.status, r.stderr)
    assert.equal("2\t101\t3\t7\t10155\t-100\n", r.stdout)
  end)
end)

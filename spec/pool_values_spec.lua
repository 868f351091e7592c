--[[
Every kind of value through map's chunk path: plain values (numbers,
booleans, nil, short strings) are read straight from the list's array part
and results written straight into the result list (mp_serial_encode_slice,
mp_serial_decode_slice); anything else, or a list that is not a plain array,
goes through the stack. Both must give the same results.
]]
local mp = require "mp"

local function same(a, b, n)
  for i = 1, n do
    local x, y = a[i], b[i]
    if x ~= y and not (x ~= x and y ~= y) then
      if type(x) ~= "table" or type(y) ~= "table" or x[1] ~= y[1] then
        return false, string.format("item %d: %s ~= %s", i, tostring(x), tostring(y))
      end
    end
    if math.type(x) ~= math.type(y) then return false, "item " .. i .. ": number subtype differs" end
  end
  return true
end

describe("map's chunk path", function()
  local plain = { 0, 1, -1, 127, -128, 128, -129, 2^31 - 1, -2^31, 2^31, math.maxinteger, math.mininteger,
                  0.5, -0.0, 1/0, -1/0, 0/0, 1e300, true, false, "", "s", ("x"):rep(255), ("y"):rep(256),
                  ("z"):rep(70000) }

  it("gives back every plain value as it was, in any chunksize", function()
    local pool <close> = mp.Pool(2)
    local xs = {}
    for i = 1, 3000 do xs[i] = plain[i % #plain + 1] end
    for _, cs in ipairs { 1, 7, 256, 257, 3000 } do
      local r, n = pool:map(function(x) return x end, xs, cs)
      assert.equal(3000, n)
      assert(same(r, xs, 3000))
    end
  end)

  it("keeps nil results and holes in the list", function()
    local pool <close> = mp.Pool(2)
    local xs = {}
    for i = 1, 1000 do xs[i] = i end
    local r, n = pool:map(function(x) if x % 3 == 0 then return nil end return x end, xs, 100)
    assert.equal(1000, n)
    for i = 1, 1000 do
      if i % 3 == 0 then assert.is_nil(r[i]) else assert.equal(i, r[i]) end
    end
    local holes = { 1, nil, 3, nil, 5 }
    local r2, n2 = pool:map(function(x) return x == nil and "nil" or x end, holes, 2)
    assert.equal(5, n2)
    assert.same({ 1, "nil", 3, "nil", 5 }, r2)
  end)

  it("mixes plain values with tables and functions in one chunk, both ways", function()
    local pool <close> = mp.Pool(2)
    local xs = {}
    for i = 1, 600 do xs[i] = (i % 50 == 0) and { i } or i end
    local r = pool:map(function(x) if type(x) == "table" then return { x[1] * 2 } end return x * 2 end, xs, 300)
    for i = 1, 600 do
      if i % 50 == 0 then assert.equal(2 * i, r[i][1]) else assert.equal(2 * i, r[i]) end
    end
    local fs = pool:map(function(x) if x == 10 then return function() return "f" end end return x end, xs, 600)
    assert.equal("f", fs[10]())
  end)

  it("reads lists with a metatable, a hash part or keys beyond the array part through the stack", function()
    local pool <close> = mp.Pool(2)
    local proxied = setmetatable({}, { __index = function(_, i) return i * 10 end, __len = function() return 5 end })
    assert.same({ 10, 20, 30, 40, 50 }, (pool:map(function(x) return x end, proxied)))
    local hashed = {}
    for i = 100, 1, -1 do hashed[i] = i end          -- filled backwards: in the hash part
    local r = pool:map(function(x) return x + 1 end, hashed, 10)
    for i = 1, 100 do assert.equal(i + 1, r[i]) end
  end)

  it("writes apply results into the AsyncResult as before", function()
    local pool <close> = mp.Pool(2)
    assert.equal(42, pool:apply_async(function() return 42 end):get(10))
    assert.equal("s", pool:apply_async(function() return "s" end):get(10))
    assert.same({ 1, nil, 3 }, { pool:apply(function() return 1, nil, 3 end) })
    assert.is_nil(pool:apply(function() return nil end))
  end)
end)

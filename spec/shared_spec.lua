-- mp.Value, mp.Array, mp.RawValue, mp.RawArray: typecodes, ranges, sharing, atomics.
local mp = require "mp"
local H = require "helper"

local spawn = H.spawn

-- typecode --> smallest and largest value it holds
local ranges = {
  b = { -128, 127 }, B = { 0, 255 }, h = { -32768, 32767 }, H = { 0, 65535 },
  i = { -2147483648, 2147483647 }, I = { 0, 4294967295 },
  l = { math.mininteger, math.maxinteger }, q = { math.mininteger, math.maxinteger },
  L = { 0, math.maxinteger }, Q = { 0, math.maxinteger },
}

describe("mp.Value", function()
  it("raises a clean error for a self of the wrong type", function()
    local v, a = mp.Value("i", 1), mp.Array("i", 4)
    local vmt, amt = getmetatable(v), getmetatable(a)
    for _, bad in ipairs({ io.stdout, mp.Lock(), a, 42, "value", {} }) do
      assert.has_error(function() v.add(bad, 1) end)
      assert.has_error(function() v.compare_and_swap(bad, 1, 2) end)
      assert.has_error(function() vmt.__index(bad, "value") end)
      assert.has_error(function() vmt.__newindex(bad, "value", 1) end)
      assert.has_error(function() vmt.__tostring(bad) end)
    end
    for _, bad in ipairs({ io.stdout, mp.Lock(), v, 42, {} }) do
      assert.has_error(function() amt.__index(bad, 1) end)
      assert.has_error(function() amt.__newindex(bad, 1, 1) end)
      assert.has_error(function() a.tolist(bad) end)
    end
    local ok, err = pcall(v.add, io.stdout, 1)
    assert.matches("mp.Value expected, got", err)
    assert.is_false(ok)
    assert.equal(1, v.value)
    assert.equal(3, v:add(2))
    assert.is_nil(v.nothing)
    assert.is_function(v.add)
  end)

  for code, r in pairs(ranges) do
    it("typecode '" .. code .. "' holds its range and rejects what does not fit", function()
      local v = mp.Value(code)
      assert.equal(0, v.value)
      assert.equal(math.type(v.value), "integer")
      v.value = r[1]; assert.equal(r[1], v.value)
      v.value = r[2]; assert.equal(r[2], v.value)
      v.value = 3.0; assert.equal(3, v.value)
      assert.has_error(function() v.value = 1.5 end)
      assert.has_error(function() v.value = "7" end)
      assert.has_error(function() v.value = true end)
      if r[1] > math.mininteger then
        assert.has_error(function() v.value = r[1] - 1 end)
        assert.has_error(function() mp.Value(code, r[1] - 1) end)
      end
      if r[2] < math.maxinteger then
        assert.has_error(function() v.value = r[2] + 1 end)
        assert.has_error(function() mp.Value(code, r[2] + 1) end)
      end
      assert.equal(5, mp.Value(code, 5).value)
    end)
  end

  it("reads unsigned 64-bit values above maxinteger as floats", function()
    local v = mp.RawValue("Q", 2^63)
    assert.equal(2^63, v.value)
    v.value = 2^64 - 2048
    assert.equal(2^64 - 2048, v.value)
    assert.has_error(function() v.value = 2^64 end)
    assert.has_error(function() v.value = -1 end)
  end)

  it("holds floats and doubles", function()
    local d = mp.Value("d", 2.5)
    assert.equal(2.5, d.value)
    d.value = 1 / 3
    assert.equal(1 / 3, d.value)
    d.value = 7
    assert.equal(7.0, d.value)
    assert.equal("float", math.type(d.value))
    local f = mp.Value("f", 0.1)
    assert.is_true(math.abs(f.value - 0.1) < 1e-7)
    assert.is_true(f.value ~= 0.1)                  -- single precision
    assert.equal(math.huge, mp.Value("d", math.huge).value)
    assert.equal(math.huge, mp.Value("f", 1e300).value)
    assert.equal(-math.huge, mp.Value("f", -1e300).value)
    local nan = mp.Value("f", 0 / 0).value
    assert.is_true(nan ~= nan)
    assert.has_error(function() f.value = "x" end)
  end)

  it("holds one byte with 'c'", function()
    local c = mp.Value("c")
    assert.equal("\0", c.value)
    c.value = "A"
    assert.equal("A", c.value)
    c.value = 66
    assert.equal("B", c.value)
    assert.has_error(function() c.value = "AB" end)
    assert.has_error(function() c.value = 256 end)
    assert.equal("z", mp.Value("c", "z").value)
  end)

  it("rejects unknown typecodes and fields", function()
    assert.has_error(function() mp.Value("x") end)
    assert.has_error(function() mp.Value("ii") end)
    assert.has_error(function() mp.Value() end)
    local v = mp.Value("i")
    assert.has_error(function() v.other = 1 end)
    assert.is_nil(v.other)
  end)

  it("has an RLock by default, none with lock = false, or the lock given", function()
    local v = mp.Value("i", 0)
    assert.matches("^RLock", tostring(v:get_lock()))
    assert.equal(v:get_lock(), v:get_lock())
    local raw = mp.Value("i", 0, { lock = false })
    assert.has_error(function() raw:get_lock() end,
      "this Value has no lock (it was created with lock = false)")
    assert.has_error(function() mp.RawValue("i", 0):get_lock() end)
    local l = mp.Lock()
    assert.equal(l, mp.Value("d", 0, { lock = l }):get_lock())
    assert.has_error(function() mp.Value("i", 0, { lock = 3 }) end)
    assert.has_error(function() mp.Value("i", 0, 3) end)
    assert.has_error(function() mp.RawValue("i", 0, { lock = true }) end)
  end)

  it("is shared with child processes", function()
    local v = mp.Value("d", 1.5)
    local p = spawn(function() v.value = v.value * 2 end)
    assert.equal(0, H.join(p))
    assert.equal(3.0, v.value)
  end)

  it("add is atomic: 2 processes x 100000 adds give the exact sum", function()
    local v = mp.Value("q", 0)
    local function adder() for _ = 1, 100000 do v:add(1) end end
    local ps = { spawn(adder), spawn(adder) }
    for _, p in ipairs(ps) do assert.equal(0, H.join(p)) end
    assert.equal(200000, v.value)
  end)

  it("add returns the new value and wraps around like C", function()
    local v = mp.Value("i", 10)
    assert.equal(15, v:add(5))
    assert.equal(12, v:add(-3))
    v.value = 2147483647
    assert.equal(-2147483648, v:add(1))
    local b = mp.Value("B", 255)
    assert.equal(0, b:add(1))
    assert.has_error(function() v:add(1.5) end)
    assert.has_error(function() mp.Value("d"):add(1) end, "add needs an integer typecode, this Value is 'd'")
  end)

  it("compare_and_swap swaps only from the expected value", function()
    local v = mp.Value("h", 5)
    assert.is_true(v:compare_and_swap(5, 6))
    assert.equal(6, v.value)
    local ok, cur = v:compare_and_swap(5, 7)
    assert.is_false(ok)
    assert.equal(6, cur)
    ok, cur = v:compare_and_swap(1e9, 7)            -- cannot be current: not even tried
    assert.is_false(ok)
    assert.equal(6, cur)
    assert.has_error(function() v:compare_and_swap(6, 40000) end)
    assert.has_error(function() mp.Value("f"):compare_and_swap(0, 1) end)
  end)

  it("prints its typecode and value", function()
    assert.equal("Value('i', 3)", tostring(mp.Value("i", 3)))
  end)
end)

describe("mp.Array", function()
  it("is 1-based, has a length, and rejects out-of-range indexes", function()
    local a = mp.Array("i", 4)
    assert.equal(4, #a)
    assert.same({ 0, 0, 0, 0 }, a:tolist())
    a[1] = 10; a[4] = 40
    assert.equal(10, a[1]); assert.equal(40, a[4])
    assert.has_error(function() return a[0] end, "array index 0 out of range (1..4)")
    assert.has_error(function() return a[5] end, "array index 5 out of range (1..4)")
    assert.has_error(function() a[5] = 1 end, "array index 5 out of range (1..4)")
    assert.has_error(function() return a[1.5] end)
    assert.has_error(function() a[2] = 2^40 end)
    assert.has_error(function() a.x = 1 end)
  end)

  it("is built from a table and checks every element", function()
    local a = mp.Array("d", { 1, 2.5, 3 })
    assert.same({ 1.0, 2.5, 3.0 }, a:tolist())
    assert.has_error(function() mp.Array("b", { 1, 200 }) end)
    assert.has_error(function() mp.Array("i", { 1, "x" }) end)
    assert.has_error(function() mp.Array("i", -1) end)
    assert.has_error(function() mp.Array("i", "abc") end)
    assert.equal(0, #mp.Array("i", 0))
  end)

  it("iterates with pairs in index order", function()
    local a = mp.Array("i", { 5, 6, 7 })
    local seen = {}
    for i, x in pairs(a) do seen[#seen + 1] = i .. "=" .. x end
    assert.equal("1=5 2=6 3=7", table.concat(seen, " "))
  end)

  it("holds bytes with 'c', with value and raw", function()
    local s = mp.Array("c", "hello")
    assert.equal(5, #s)
    assert.equal("h", s[1])
    assert.equal("hello", s.value)
    local b = mp.Array("c", 8)
    b.value = "abc"
    assert.equal("abc", b.value)
    assert.equal("abc\0\0\0\0\0", b.raw)
    assert.has_error(function() b.value = "123456789" end)
    assert.same({ "a", "b", "c", "\0", "\0", "\0", "\0", "\0" }, b:tolist())
  end)

  it("is shared with child processes, locked or raw", function()
    local a, r = mp.Array("i", 10), mp.RawArray("d", 3)
    local p = spawn(function()
      local lk = a:get_lock()
      lk:acquire()
      for i = 1, #a do a[i] = i * i end
      lk:release()
      r[2] = 0.5
    end)
    assert.equal(0, H.join(p))
    assert.same({ 1, 4, 9, 16, 25, 36, 49, 64, 81, 100 }, a:tolist())
    assert.same({ 0.0, 0.5, 0.0 }, r:tolist())
    assert.has_error(function() r:get_lock() end)
    assert.has_error(function() mp.Array("i", 2, { lock = false }):get_lock() end)
  end)

  it("makes large arrays in their own mapping", function()
    local a = mp.RawArray("q", 100000)
    a[100000] = 7
    assert.equal(7, a[100000])
    local p = spawn(function() a[1] = a[100000] + 1 end)
    assert.equal(0, H.join(p))
    assert.equal(8, a[1])
  end)

  it("gets non-overlapping memory for many sizes, freed and reused", function()
    local arrays, sizes = {}, { 1, 7, 8, 9, 15, 16, 17, 100, 511, 512, 513, 1000, 5000 }
    for round = 1, 3 do
      for i = 1, 60 do
        local n = sizes[(i * 7 + round) % #sizes + 1]
        local a = mp.RawArray("q", n)
        for j = 1, n do a[j] = i * 100000 + j end
        arrays[i] = a
      end
      for i = 1, 60, 2 do arrays[i] = nil end       -- free every other one
      collectgarbage(); collectgarbage()
      for i = 1, 60, 2 do
        local n = sizes[(i * 3 + round) % #sizes + 1]
        local a = mp.RawArray("q", n)
        for j = 1, n do a[j] = -(i * 100000 + j) end
        arrays[i] = a
      end
      for i = 1, 60 do
        local a, sign = arrays[i], i % 2 == 1 and -1 or 1
        for j = 1, #a, 13 do assert.equal(sign * (i * 100000 + j), a[j]) end
      end
    end
  end)

  it("prints its typecode and size", function()
    assert.equal("Array('i', 3)", tostring(mp.Array("i", 3)))
  end)
end)

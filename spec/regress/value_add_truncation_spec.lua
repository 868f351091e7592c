--[[
Regression: Value:add truncated its addend to the type's width, so
mp.Value("i", 0):add(2^32) returned 0 and :add(math.maxinteger) returned -1,
while `.value = 2^32` raised a range error. The addend must now fit the type.
]]
local mp = require "mp"

describe("regress: Value:add with an addend that does not fit the type", function()
  it("raises a range error and leaves the value alone", function()
    local v = mp.Value("i", 0)
    assert.has_error(function() v:add(2^32) end,
      "bad argument #1 to 'add' (addend 4294967296 out of range for typecode 'i' (-2147483648..2147483647))")
    assert.has_error(function() v:add(math.maxinteger) end)
    assert.has_error(function() mp.Value("B", 0):add(256) end)
    assert.has_error(function() mp.Value("h", 0):add(-32769) end)
    assert.equal(0, v.value)
  end)

  it("still takes addends of either sign that fit, and wraps the result like C", function()
    assert.equal(-5, mp.Value("i", 0):add(-5))
    assert.equal(2, mp.Value("B", 3):add(-1))
    assert.equal(0, mp.Value("B", 1):add(255))
    assert.equal(math.maxinteger, mp.Value("q", 0):add(math.maxinteger))
    assert.equal(math.mininteger, mp.Value("q", math.maxinteger):add(1))
  end)
end)

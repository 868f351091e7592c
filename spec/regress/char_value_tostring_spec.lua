--[[
tostring of a Value of typecode 'c' raised "invalid option '%q' to
'lua_pushfstring'" (lua_pushfstring has no %q): the byte is now written as a
Lua string literal, escaped unless it is printable ASCII.
]]
local mp = require "mp"

describe("tostring of a 'c' Value", function()
  it("shows its byte as a Lua string literal", function()
    assert.equal([[Value('c', "a")]], tostring(mp.Value("c", "a")))
    assert.equal([[Value('c', "\0")]], tostring(mp.Value("c")))
    assert.equal([[Value('c', "\34")]], tostring(mp.Value("c", '"')))
    assert.equal([[Value('c', "\92")]], tostring(mp.Value("c", "\\")))
    assert.equal([[Value('c', "\n")]], tostring(mp.Value("c", "\n")))
    assert.equal([[Value('c', "\255")]], tostring(mp.RawValue("c", 255)))
    -- What the literal says is the byte.
    for _, b in ipairs { 0, 10, 34, 65, 92, 127, 255 } do
      local s = tostring(mp.Value("c", b))
      assert.equal(string.char(b), load("return " .. s:match("^Value%('c', (.*)%)$"))())
    end
  end)

  it("of the other typecodes is unchanged", function()
    assert.equal("Value('i', 7)", tostring(mp.Value("i", 7)))
    assert.equal("Value('d', 1.5)", tostring(mp.Value("d", 1.5)))
  end)
end)

--[[
Regression: inside a pool task, busted's `assert.are.equal` failed with
"attempt to index a function value": the task's _ENV was rebound to the
worker's globals, where `assert` is Lua's function, not busted's table.
]]
local mp = require "mp"

describe("a pool task defined in a spec file", function()
  it("sees busted's assert", function()
    local pool <close> = mp.Pool(1)
    local r = pool:apply(function(x)
      assert.are.equal(3, x)
      return type(assert)
    end, { 3 })
    assert.are.equal("table", r)
  end)
end)

--[[
The fault-injection stress (spec/stress/kills.lua) with a small number of
random kills per transport, so that every run of the suite exercises it; the
full run (300 kills per transport) is `build/mplua spec/stress/kills.lua`.
]]
local H = require "helper"

describe("random SIGKILLs of producers, consumers, lock holders and pool workers", function()
  it("lose nothing beyond what the dead took, duplicate nothing, and hang nothing", function()
    local r = H.run({ args = { "spec/stress/kills.lua", "40" }, timeout = 180 })
    assert.is_nil(r.signal, r.stderr)
    assert.equal(0, r.status, r.stdout .. r.stderr)
    assert.matches("stress: ok\n$", r.stdout)
    for _, name in ipairs { "Queue", "JoinableQueue", "Pipe", "Lock", "Pool" } do
      assert.matches("\n?" .. name .. " +kills +%d+", r.stdout)
    end
  end)
end)

-- Pool workers and the parent's signal handlers.
local H = require "helper"

describe("Pool workers", function()
  it("die of terminate() even when the parent handles SIGTERM itself", function()
    local r = H.run_script([[
      mp.signal("SIGTERM", function() print("handler ran in", mp.current_process().name) end)
      local pool = mp.Pool(2)
      assert(pool:apply(function() return 1 end) == 1)
      local t0 = mp.time()
      pool:terminate()
      print(string.format("terminated in under 0.5 s: %s", tostring(mp.time() - t0 < 0.5)))
    ]])
    assert.equal(0, r.status, r.stderr)
    assert.equal("terminated in under 0.5 s: true\n", r.stdout)
  end)
end)

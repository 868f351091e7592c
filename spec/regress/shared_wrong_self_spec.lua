--[[
Regression: Value's get_lock read the user value of whatever it was given, and
the iterator from pairs(Array) trusted any userdata: `mp.Value("i", 1).get_lock`
called on 42 crashed the interpreter (SIGSEGV). Both now check self with the
one type-check idiom (mp_checkself). Run in a subprocess: a crash must fail
this spec, not kill the runner.
]]
local H = require "helper"

describe("regress: shared memory methods given a wrong self", function()
  it("raise instead of crashing", function()
    local r = H.run_script([[
      local get_lock = mp.Value("i", 1).get_lock
      local ok, err = pcall(get_lock, 42)
      print(ok, err)
      local iter, a = pairs(mp.Array("i", 3))
      print(pcall(iter, io.stdout, 0))
      print(pcall(iter, mp.Value("i", 1), 0))
      print(iter(a, 0))
    ]])
    assert.is_nil(r.signal, r.stderr)
    assert.equal(0, r.status, r.stderr)
    local lines = {}
    for l in r.stdout:gmatch("[^\n]+") do lines[#lines + 1] = l end
    assert.matches("^false\t.*bad argument #1 to '.-' %(mp%.Value expected, got number%)", lines[1])
    assert.matches("^false\t.*mp%.Array expected, got FILE%*", lines[2])
    assert.matches("^false\t.*mp%.Array expected, got mp%.Value", lines[3])
    assert.equal("1\t0", lines[4])
  end)
end)

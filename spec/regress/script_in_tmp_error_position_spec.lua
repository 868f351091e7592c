-- Regression: mp's Lua-side checks took any file in a directory whose name ends
-- in "mp" (/tmp/x.lua) for one of mp's own files, so an error in a script kept
-- in /tmp pointed at mp/check.lua instead of the script's line.
local H = require "helper"

describe("an error raised by mp's Lua-side checks", function()
  it("points at the line of a script kept in /tmp", function()
    local r = H.run_script([[
      local m <close> = mp.Manager()
      local q = m:Queue()
      local ok, err = pcall(q.put, q, 1, 2, 3, 4)
      print(err)
      ok, err = pcall(function() local b = mp.Barrier(0) end)
      print(err)
    ]])
    assert.equal(0, r.status, r.stderr)
    local first, second = r.stdout:match("^([^\n]*)\n([^\n]*)\n$")
    assert.matches("^/tmp/[^:]+%.lua:3: bad argument #4 to 'put'", first)
    assert.matches("^/tmp/[^:]+%.lua:5: bad argument #1 to 'Barrier'", second)
  end)
end)

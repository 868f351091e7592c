--[[
mp.wait's errors about a bad source (raised by core.wait) named a line of
mp/futures.lua, which called it, instead of the caller's line, as every other
argument error of mp does (DESIGN.md: errors point at the caller); next to
an AsyncResult, the item it named was its place among the other sources.
]]
local mp = require "mp"

local FILE = "spec/regress/wait_error_position_spec.lua"

-- Calls mp.wait(...) from a chunk named after this file (line 1) and returns its error.
local function wait_error(...)
  local f = assert(load("local r = mp.wait(...) return r", "=" .. FILE, "t", { mp = mp }))
  local ok, err = pcall(f, ...)
  assert.is_false(ok)
  return err
end

describe("mp.wait given a bad source", function()
  local r, w = mp.Pipe(false)
  teardown(function() r:close(); w:close() end)

  it("names the caller's line, in every mode", function()
    for _, mode in ipairs { mp.FIRST_COMPLETED, mp.FIRST_EXCEPTION, mp.ALL_COMPLETED } do
      local err = wait_error({ r, "x" }, 0, mode)
      assert.matches("^" .. FILE:gsub("%p", "%%%0") .. ":1: bad argument #1 to 'wait' %(item 2: Connection, queue " ..
        "or file descriptor expected, got string%)$", err)
      err = wait_error({ { fileno = function() return "no" end } }, 0, mode)
      assert.matches("^" .. FILE:gsub("%p", "%%%0") .. ":1: bad argument #1 to 'wait' %(item 1: fileno%(%) did not " ..
        "return an integer%)$", err)
      err = wait_error({ w }, 0, mode)
      assert.matches("^" .. FILE:gsub("%p", "%%%0") .. ":1: .*closed or write%-only connection", err)
    end
  end)

  it("next to an AsyncResult, too", function()
    local pool <close> = mp.Pool(1)      -- terminated before the leftover check
    local ar = pool:apply_async(function() return 1 end)
    for _, mode in ipairs { mp.FIRST_COMPLETED, mp.FIRST_EXCEPTION, mp.ALL_COMPLETED } do
      local err = wait_error({ ar, "x" }, 5, mode)
      assert.matches("^" .. FILE:gsub("%p", "%%%0") .. ":1: bad argument #1 to 'wait' %(item 2: Connection", err)
      err = wait_error({ r, ar, ar, 7.5 }, 5, mode)
      assert.matches("^" .. FILE:gsub("%p", "%%%0") .. ":1: bad argument #1 to 'wait' %(item 4: Connection", err)
    end
    assert.equal(1, ar:get(5))
  end)
end)

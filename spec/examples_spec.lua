-- Every program in examples/ runs to completion under mplua, with no error output.
local H = require "helper"

local function examples()
  local list = {}
  local p = assert(io.popen("ls examples/*.lua"))
  for path in p:lines() do list[#list + 1] = path end
  p:close()
  return list
end

-- What some examples must print (the others only need to run cleanly).
local expect = {
  ["examples/pool_squares.lua"] = "squares: 1, 4, 9, 16, 25\n",
  ["examples/pool_apply_async.lua"] = "all tasks finished\n",
  ["examples/pool_cpu_bound.lua"] = "parallel: ",
}

describe("examples", function()
  for _, path in ipairs(examples()) do
    it(path .. " runs cleanly", function()
      local r = H.run{ args = { path }, timeout = 60 }
      assert.equal(0, r.status, r.stderr)
      -- Examples that show a failing child say so by printing its traceback;
      -- anything else on stderr is a problem.
      if not path:match("terminate") then assert.equal("", r.stderr) end
      assert.is_true(#r.stdout > 0)
      if expect[path] then assert.is_truthy(r.stdout:find(expect[path], 1, true), r.stdout) end
    end)
  end
end)

-- Every program in examples/ runs to completion under mplua, with no error output.
local H = require "helper"

local function examples()
  local list = {}
  local p = assert(io.popen("ls examples/*.lua"))
  for path in p:lines() do list[#list + 1] = path end
  p:close()
  return list
end

-- What some examples must print (a Lua pattern matched against stdout).
local expected = {
  ["examples/sync_race_locked.lua"] = "^" .. ("Final balance = 100\n"):rep(10) .. "$",
  ["examples/sync_rlock.lua"] = "counter = 600",
  ["examples/shared_value_array.lua"] = "squares: 1, 4, 9, 16, 25\nsum: 55\n",
  ["examples/process_sigint.lua"] = "child: got SIGINT.*child exit code 0\n$",
  ["examples/pool_squares.lua"] = "squares: 1, 4, 9, 16, 25\n",
  ["examples/pool_apply_async.lua"] = "all tasks finished\n",
  ["examples/pool_cpu_bound.lua"] = "parallel: ",
  ["examples/manager_pool_dict_lock.lua"] = "^alpha +%-0%.017453\n.*theta +%-0%.009500\n8 tasks done in [%d.]+ s\n$",
  ["examples/manager_dict_processes.lua"] = "^entries: 10\n 1 %->   1\n.*\n10 %-> 100\n$",
  ["examples/manager_condition.lua"] = "consumer got 50\ndone: {10, 20, 30, 40, 50}\n$",
  ["examples/manager_state.lua"] = "^visits: 12\nerrors: 1\nevents: 16\n$",
  ["examples/shared_memory.lua"] = "^the other process saw 101 202 303 404\nnow 101 202 303 404\n$",
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
      if expected[path] then assert.matches(expected[path], r.stdout) end
    end)
  end
end)

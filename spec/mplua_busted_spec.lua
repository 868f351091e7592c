-- mplua-busted from outside: a directory of spec files that pass, fail, raise, call
-- os.exit and crash, run under both interpreters; busted's report formats; options.
local H = require "helper"
local json = require "dkjson"

local function absolute(p)
  return p:sub(1, 1) == "/" and p or os.getenv("PWD") .. "/" .. p
end
local runner = absolute(H.build .. "/mplua-busted")

-- The two ways to run it: the #! line (mplua) and a stock lua5.4 loading mp.so.
local interpreters = {
  { name = "mplua", command = H.quote(runner) },
  { name = "lua5.4", command = (function()
      local preload = os.getenv("MPLUA_ASAN_PRELOAD")   -- the sanitizer run's mp.so needs it
      local env = preload and preload ~= "" and "env LD_PRELOAD=" .. H.quote(preload) .. " " or ""
      return env .. H.lua .. " " .. H.quote(runner)
    end)() },
}

-- A temporary directory holding files (name --> contents); removed by `finally`.
local function project(files)
  local dir = os.tmpname()
  os.remove(dir)
  assert.is_true(os.execute("mkdir -p " .. H.quote(dir .. "/spec")))
  finally(function() os.execute("rm -rf " .. H.quote(dir)) end)
  for name, text in pairs(files) do
    local sub = name:match("^(.*)/[^/]*$")
    if sub then assert.is_true(os.execute("mkdir -p " .. H.quote(dir .. "/" .. sub))) end
    H.write_file(dir .. "/" .. name, text)
  end
  return dir
end

--[[
Runs `command args...` in dir; returns H.run's result. In the sanitizer run,
ASan must leave SIGSEGV alone, so that a spec file killed by it dies of it.
]]
local function run_in(dir, command, args, timeout)
  local quoted = {}
  for i, a in ipairs(args) do quoted[i] = H.quote(a) end
  return H.run{ program = "sh", timeout = timeout or 60, args = { "-c",
    'ASAN_OPTIONS="${ASAN_OPTIONS:+$ASAN_OPTIONS:}handle_segv=0"; export ASAN_OPTIONS; '
    .. "cd " .. H.quote(dir) .. " && exec " .. command .. " " .. table.concat(quoted, " ") } }
end

-- The suite of the issue: passing, failing, erroring and crashing files.
local MIXED = {
  ["spec/pass_spec.lua"] = [[
describe("pass", function()
  it("one", function() assert.equal(1, 1) end)
  it("two", function() assert.is_true(true) end)
  pending("three")
end)
]],
  ["spec/fail_spec.lua"] = [[
describe("fail", function()
  it("passes", function() end)
  it("compares", function() assert.are.same({ 1 }, { 2 }) end)
end)
]],
  ["spec/raise_spec.lua"] = [[
describe("raise", function()
  it("raises", function() error("boom") end)
end)
]],
  ["spec/exit_spec.lua"] = [[
describe("exit", function()
  it("passes first", function() end)
  it("calls os.exit", function() os.exit(3) end)
  it("is never run", function() end)
end)
]],
  ["spec/segv_spec.lua"] = [[
local mp = require "mp"
describe("segv", function()
  it("dies by SIGSEGV", function() mp.kill(mp.getpid(), "SIGSEGV") end)
end)
]],
  ["spec/load_spec.lua"] = "describe('load', function() end)\nlocal x = = 1\n",
  ["spec/zlast_spec.lua"] = [[
describe("after the crashes", function()
  it("still runs", function() end)
end)
]],
}

-- The summary line of busted's plain output.
local function summary(out)
  return out:match("\n(%d+ successes? / %d+ failures? / %d+ errors? / %d+ pending : [%d.]+ seconds)\n")
end

for _, interp in ipairs(interpreters) do
  describe("mplua-busted under " .. interp.name, function()
    it("merges every file into busted's report, each crash failing only its file", function()
      local dir = project(MIXED)
      local r = run_in(dir, interp.command, { "-j", "3", "-o", "plainTerminal", "spec" })
      assert.equal(1, r.status, r.stderr)
      local line = summary(r.stdout)
      assert.is_not_nil(line, r.stdout)
      -- pass 2 + fail 1 + exit 1 + zlast 1 successes; the os.exit, the signal,
      -- the raise and the load error are errors; the comparison is the failure.
      assert.matches("^5 successes / 1 failure / 4 errors / 1 pending : ", line)
      assert.matches("\nFailure %-> spec/fail_spec%.lua @ 3\nfail compares\nspec/fail_spec%.lua:3: ", r.stdout)
      assert.matches("\nError %-> spec/exit_spec%.lua @ 3\nexit calls os%.exit\n"
        .. "spec/exit_spec%.lua: the process running this spec file exited with status 3 before the file ended\n",
        r.stdout)
      assert.matches("\nError %-> spec/segv_spec%.lua @ 3\nsegv dies by SIGSEGV\n"
        .. "spec/segv_spec%.lua: the process running this spec file was killed by signal 11 %(SIGSEGV%)\n",
        r.stdout)
      assert.matches("\nError %-> spec/load_spec%.lua @ 2\nspec/load_spec%.lua\nspec/load_spec%.lua:2: ", r.stdout)
      assert.matches("\nError %-> spec/raise_spec%.lua @ 2\nraise raises\nspec/raise_spec%.lua:2: boom\n", r.stdout)
      assert.equal("", r.stderr)
    end)

    it("writes TAP that parses: a plan, numbered lines in file order, failures with file and line", function()
      local dir = project(MIXED)
      local r = run_in(dir, interp.command, { "-j", "2", "-o", "TAP", "spec" })
      assert.equal(1, r.status, r.stderr)
      local n, names, oks, fails = 0, {}, 0, 0
      for l in r.stdout:gmatch("[^\n]+") do
        local neg, num, name = l:match("^(n?o?t? ?)ok (%d+) %- (.*)$")
        if num then
          n = n + 1
          assert.equal(n, tonumber(num))
          names[#names + 1] = name
          if neg == "" then oks = oks + 1 else fails = fails + 1 end
        elseif not l:match("^# ") then
          assert.equal("1.." .. n, l)
        end
      end
      assert.equal(11, n)
      assert.equal(6, oks)       -- five successes and the pending test (# SKIP)
      assert.equal(5, fails)
      assert.matches("\n1%.%.11$", r.stdout:gsub("\n$", ""))
      assert.same({ "exit passes first", "exit calls os.exit", "fail passes", "fail compares",
                    "spec/load_spec.lua", "pass one", "pass two", "# SKIP pass three", "raise raises",
                    "segv dies by SIGSEGV", "after the crashes still runs" }, names)
      assert.matches("\nnot ok 4 %- fail compares\n# spec/fail_spec%.lua @ 3\n", r.stdout)
    end)

    it("writes json that parses, with exact counts", function()
      local dir = project(MIXED)
      local r = run_in(dir, interp.command, { "-j", "2", "-o", "json", "spec" })
      assert.equal(1, r.status, r.stderr)
      local doc, _, err = json.decode(r.stdout)
      assert.is_table(doc, err)
      assert.equal(5, #doc.successes)
      assert.equal(1, #doc.failures)
      assert.equal(4, #doc.errors)
      assert.equal(1, #doc.pendings)
      assert.equal("fail compares", doc.failures[1].name)
      assert.equal("spec/fail_spec.lua", doc.failures[1].element.trace.short_src)
      assert.equal(3, doc.failures[1].element.trace.currentline)
      assert.is_number(doc.duration)
    end)

    it("exits 0 when every test passes, and runs the files at the same time", function()
      -- Each file waits for the other's mark: only two processes at once finish.
      local wait_for = [[
local function wait_for(path)
  local mp = require "mp"
  local t0 = mp.time()
  while mp.time() - t0 < 10 do
    local f = io.open(path) if f then f:close() return true end
    mp.sleep(0.01)
  end
  return false
end
]]
      local dir = project{
        ["spec/a_spec.lua"] = wait_for .. [[
it("meets b", function()
  io.open("a.mark", "w"):close()
  assert.is_true(wait_for("b.mark"))
end)
]],
        ["spec/b_spec.lua"] = wait_for .. [[
it("meets a", function()
  io.open("b.mark", "w"):close()
  assert.is_true(wait_for("a.mark"))
end)
]],
      }
      local r = run_in(dir, interp.command, { "-j", "2", "spec" })
      assert.equal(0, r.status, r.stdout .. r.stderr)
      assert.matches("\n2 successes / 0 failures / 0 errors / 0 pending : ", r.stdout)
    end)
  end)
end

describe("mplua-busted", function()
  local command = interpreters[1].command

  it("runs each file in a fresh main process: its own globals, MainProcess, mp children, busted's assert", function()
    local dir = project{
      ["spec/a_spec.lua"] = [[
local mp = require "mp"
it("sets a global", function() LEAK = 1 end)
it("is the main process", function()
  assert.equal("MainProcess", mp.current_process().name)
  assert.is_nil(mp.parent_process())
  local p = mp.Process{ target = function() assert.equal(1, 2) end }
  assert.equal("Process-1", p.name)
  p:start(); p:join(10)
  assert.equal(1, p.exitcode)      -- busted's assert failed in the child
end)
]],
      ["spec/b_spec.lua"] = [[
it("does not see a's global", function() assert.is_nil(LEAK) end)
]],
    }
    local r = run_in(dir, command, { "-j", "1", "spec" })
    assert.equal(0, r.status, r.stdout .. r.stderr)
    assert.matches("\n3 successes / 0 failures / 0 errors / 0 pending : ", r.stdout)
    assert.matches("Process Process%-1:\n[^\n]*Expected objects to be equal", r.stderr)
  end)

  it("honours .busted, --tags, --exclude-tags, --pattern, --lpath and --helper", function()
    local dir = project{
      [".busted"] = [[return { default = { lpath = "lib/?.lua", helper = "spec/helper.lua", pattern = "_test" } }]],
      ["spec/helper.lua"] = [[HELPED = "yes"]],
      ["lib/mod.lua"] = [[return { answer = 42 }]],
      ["spec/t_test.lua"] = [[
it("loads from lpath #fast", function() assert.equal(42, require("mod").answer) end)
it("saw the helper #fast", function() assert.equal("yes", HELPED) end)
it("is slow #slow", function() end)
]],
      ["spec/x_spec.lua"] = [[it("is not a _test file", function() error("ran") end)]],
    }
    local r = run_in(dir, command, { "-j", "2", "--tags=fast", "spec" })
    assert.equal(0, r.status, r.stdout .. r.stderr)
    assert.matches("\n2 successes / 0 failures / 0 errors / 0 pending : ", r.stdout)
    r = run_in(dir, command, { "-j", "2", "--exclude-tags=slow,fast", "spec" })
    assert.matches("\n0 successes / 0 failures / 0 errors / 0 pending : ", r.stdout)
    r = run_in(dir, command, { "-j", "2", "--pattern=_spec", "spec" })
    assert.equal(1, r.status)
    assert.matches("\n0 successes / 0 failures / 1 error / 0 pending : ", r.stdout)
    -- --list prints what busted itself prints.
    r = run_in(dir, command, { "-j", "2", "--list", "spec" })
    assert.equal(0, r.status, r.stderr)
    local busted = run_in(dir, "busted", { "--list", "spec" })
    assert.equal(0, busted.status, busted.stderr)
    assert.equal("loads from lpath #fast\nsaw the helper #fast\nis slow #slow\n", busted.stdout)
    assert.equal(busted.stdout, r.stdout)
  end)

  it("stops the run when the helper cannot be loaded, as busted", function()
    local dir = project{ ["spec/a_spec.lua"] = [[it("x", function() end)]] }
    local r = run_in(dir, command, { "-j", "2", "--helper=spec/missing.lua", "spec" })
    assert.equal(1, r.status)
    assert.matches("^mplua%-busted: failed running the specified helper %(spec/missing%.lua%)", r.stderr)
  end)

  it("refuses bad job counts and the options it does not support", function()
    local dir = project{ ["spec/a_spec.lua"] = [[it("x", function() end)]] }
    for _, args in ipairs{ { "-j", "0" }, { "-jx" }, { "--jobs=1.5" }, { "-j" } } do
      local r = run_in(dir, command, args)
      assert.equal(1, r.status, table.concat(args, " "))
      assert.matches("^mplua%-busted: error: [^\n]*%-j", r.stderr)
      assert.equal("", r.stdout)
    end
    local r = run_in(dir, command, { "--coverage", "spec" })
    assert.equal(1, r.status)
    assert.matches("^mplua%-busted: error: %-%-coverage: ", r.stderr)
    r = run_in(dir, command, { "--no-such-option", "spec" })
    assert.equal(1, r.status)
    assert.equal("mplua-busted: error: unknown/bad flag: --no-such-option; re-run with --help for usage.\n",
      r.stderr)
  end)

  it("with --no-keep-going starts no file after the first failure", function()
    local files = {}
    for i = 1, 4 do
      files[string.format("spec/f%d_spec.lua", i)] = string.format(
        [[it("t%d", function() %s end)]], i, i == 1 and "error('first')" or "")
    end
    local dir = project(files)
    local r = run_in(dir, command, { "-j", "1", "--no-keep-going", "spec" })
    assert.equal(1, r.status)
    assert.matches("\n0 successes / 0 failures / 1 error / 0 pending : ", r.stdout)
  end)
end)

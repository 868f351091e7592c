-- Start methods and contexts: mp.set_start_method, get_start_method, get_context (lua/mp/context.lua).
local mp = require "mp"
local H = require "helper"

-- Runs a script in a fresh mplua (the default method is per process) and returns its stdout.
local function run(source)
  local r = H.run_script(source)
  assert.equal(0, r.status, r.stderr)
  return r.stdout
end

describe("start methods", function()
  it("lists fork (the default) and forkserver", function()
    assert.same({ "fork", "forkserver" }, mp.get_all_start_methods())
  end)

  it("defaults to fork, fixed at first use as in Python", function()
    assert.equal("nil fork fork\n", run [[
      io.write(tostring(mp.get_start_method(true)), " ", mp.get_start_method(), " ")
      local ok, err = pcall(mp.set_start_method, "forkserver")
      assert(not ok and err:find("already been set", 1, true), err)
      print(mp.get_start_method())
    ]])
  end)

  it("is set once, then only with force", function()
    assert.equal("forkserver fork nil\n", run [[
      mp.set_start_method("forkserver")
      io.write(mp.get_start_method(), " ")
      assert(not pcall(mp.set_start_method, "fork"))
      mp.set_start_method("fork", true)
      io.write(mp.get_start_method(), " ")
      mp.set_start_method(nil, {force = true})
      print(mp.get_start_method(true))
    ]])
  end)

  it("a process started with no method fixes the default", function()
    assert.equal("fork\n", run [[
      local p = mp.Process{target = function() end}; p:start(); p:join(10)
      assert(not pcall(mp.set_start_method, "forkserver"))
      print(mp.get_start_method(true))
    ]])
  end)

  it("rejects unknown methods and options, naming them", function()
    assert.has_error(function() mp.set_start_method("spawn") end,
      "bad argument #1 to 'set_start_method' (cannot find context for \"spawn\" (start methods: fork, forkserver))")
    assert.has_error(function() mp.get_context("thread") end,
      "bad argument #1 to 'get_context' (cannot find context for \"thread\" (start methods: fork, forkserver))")
    assert.has_error(function() mp.set_start_method(1) end,
      "bad argument #1 to 'set_start_method' (start method name expected, got number)")
    assert.has_error(function() mp.set_start_method("fork", { forse = true }) end,
      "unknown option 'forse' to 'set_start_method' (did you mean 'force'?)")
    assert.has_error(function() mp.get_context("fork", 1) end,
      "bad argument #2 to 'get_context' (no argument expected here, got number)")
    assert.has_error(function() mp.Process{ target = print, contxt = "fork" } end,
      "unknown option 'contxt' to 'Process' (did you mean 'context'?)")
    assert.has_error(function() mp.Process{ target = print, context = "spawn" } end,
      "bad argument #1 to 'Process' (context must be 'fork', 'forkserver' or a context from mp.get_context, got \"spawn\")")
    assert.has_error(function() mp.Process{ target = print, context = {} } end,
      "bad argument #1 to 'Process' (context must be 'fork', 'forkserver' or a context from mp.get_context, got table)")
  end)
end)

describe("mp.get_context", function()
  it("has mp's constructors, with Process bound to its method", function()
    local ctx = mp.get_context("forkserver")
    assert.equal(mp.get_context("forkserver"), ctx)
    assert.equal("forkserver", ctx.get_start_method())
    assert.equal("forkserver", ctx:get_start_method())
    assert.equal("fork", mp.get_context("fork"):get_start_method())
    for _, name in ipairs { "Queue", "SimpleQueue", "JoinableQueue", "Pipe", "Lock", "RLock", "Semaphore",
                            "BoundedSemaphore", "Condition", "Event", "Barrier", "Value", "RawValue",
                            "Array", "RawArray", "Manager", "cpu_count", "current_process", "active_children" } do
      assert.equal(mp[name], ctx[name], name)
    end
    assert.is_true(mp.Process:is(ctx.Process{ target = print }))
    assert.equal(ctx, ctx:get_context("forkserver"))
    assert.equal("<mp.Context forkserver>", tostring(ctx))
    assert.has_error(function() ctx.set_start_method("fork") end,
      "cannot set the start method of a context (mp.set_start_method sets the default)")
    assert.has_error(function() ctx.Queue = 1 end, "cannot set field 'Queue' of a context")
  end)

  it("names its processes as Python does (ForkServerProcess-N), and starts them with its method", function()
    assert.equal("ForkServerProcess-1 forkserver\nForkProcess-2 fork\nnil\n", run [[
      local parent = mp.getpid()
      for _, m in ipairs{"forkserver", "fork"} do
        local q = mp.Queue()
        local ctx = mp.get_context(m)
        local p = ctx.Process{target = function()
          -- a forkserver child's OS parent is the server, a fork child's is us
          q:put(require("posix.unistd").getppid() == parent and "fork" or "forkserver")
        end}
        p:start(); p:join(10)
        print(p.name .. " " .. q:get(10))
      end
      print(mp.get_start_method(true))   -- a context's processes leave the default unset
    ]])
  end)

  it("passes context = to a Process, as a name or a context", function()
    assert.equal("forkserver forkserver fork\n", run [[
      local parent = mp.getpid()
      local unistd = require "posix.unistd"
      local out = {}
      for _, c in ipairs{"forkserver", mp.get_context("forkserver"), "fork"} do
        local q = mp.SimpleQueue()
        local p = mp.Process{target = function() q:put(unistd.getppid() == parent and "fork" or "forkserver") end,
                             context = c}
        p:start(); p:join(10)
        out[#out + 1] = q:get()
      end
      print(table.concat(out, " "))
    ]])
  end)

  it("a subclass of a context's Process keeps its method", function()
    assert.equal("Worker-1 forkserver\n", run [[
      local unistd = require "posix.unistd"
      local parent = mp.getpid()
      local Worker = mp.get_context("forkserver").Process:extend("Worker")
      local q = mp.SimpleQueue()
      function Worker:run() q:put(unistd.getppid() == parent and "fork" or "forkserver") end
      local w = Worker(); w:start(); w:join(10)
      print(w.name .. " " .. q:get())
    ]])
  end)

  it("builds pools with the fork context", function()
    local pool <close> = mp.get_context("fork").Pool(2)
    local r = pool:map(function(x) return x * x end, { 1, 2, 3 })
    assert.same({ 1, 4, 9 }, { r[1], r[2], r[3] })
  end)
end)

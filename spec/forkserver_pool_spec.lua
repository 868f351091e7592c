-- Pool{context = "forkserver"}: the local transport's worker ends travel to fork-server workers.
local H = require "helper"

local function run(source)
  local r = H.run_script(source)
  assert.equal(0, r.status, r.stderr)
  return r.stdout
end

describe("Pool{context = 'forkserver'}", function()
  it("runs closures in workers forked by the fork server", function()
    local out = run [[
      local unistd = require "posix.unistd"
      local srv = mp.forkserver_start()
      local pool <close> = mp.Pool{processes = 2, context = "forkserver"}
      local k = 3
      local r = pool:map(function(x) return x * k end, {1, 2, 3})
      local ppid = pool:apply(function() return unistd.getppid() end)
      print(r[1], r[2], r[3], ppid == srv)
    ]]
    assert.equal("3\t6\t9\ttrue\n", out)
  end)

  it("comes from a context and from the default method too", function()
    local out = run [[
      local unistd = require "posix.unistd"
      local srv = mp.forkserver_start()
      local a <close> = mp.get_context("forkserver").Pool(2)
      mp.set_start_method("forkserver")
      local b <close> = mp.Pool(2)
      local f = function() return unistd.getppid() end
      print(a:apply(f) == srv, b:apply(f) == srv)
    ]]
    assert.equal("true\ttrue\n", out)
  end)

  it("replaces a worker that died, through the server", function()
    local out = run [[
      local pool <close> = mp.Pool{processes = 1, context = "forkserver", maxtasksperchild = 1}
      local pids = {}
      for i = 1, 3 do pids[pool:apply(mp.getpid)] = true end
      local n = 0
      for _ in pairs(pids) do n = n + 1 end
      print(n)
    ]]
    assert.equal("3\n", out)
  end)

  it("checks the option as Process does, naming Pool", function()
    local mp = require "mp"
    assert.has_error(function() mp.Pool{ processes = 1, context = "spawn" } end,
      "bad argument #1 to 'Pool' (context must be 'fork', 'forkserver' or a context from mp.get_context, got \"spawn\")")
  end)
end)

--[[
Regression: `mp.Pool(64)` under `ulimit -n 64` failed with "sentinel: this
process has no sentinel" (a worker was forked, but its pidfd could not be
opened) and left 57 workers and 65 fds alive until garbage collection. A pool
whose construction fails must say which resource ran out and leave no worker,
fd or mapping behind, at once.
]]
local H = require "helper"

-- Runs `source` with mplua under `ulimit -n limit`.
local function run_limited(limit, source)
  local path = os.tmpname() .. ".lua"
  H.write_file(path, source)
  -- Under MPLUA_SPEC_WRAPPER the limit is set first, then the tool starts
  -- (valgrind keeps fds of its own below the limit it finds).
  local r = H.run { program = "sh", wrapped = true,
                    args = { "-c", "ulimit -n " .. limit .. " && exec " .. H.wrapper() .. " \"$0\" \"$1\"", H.mplua, path } }
  os.remove(path)
  return r
end

-- What the script reports: new fds, children, mappings of the pool.
local census = [[
  -- The fds open now, as a set, less the one that lists them (luaposix; fails
  -- clearly when no fd is left to look with).
  local dirent, unistd = require "posix.dirent", require "posix.unistd"
  local function fdset()
    local dir = "/proc/" .. mp.getpid() .. "/fd"
    local set = {}
    for _, name in ipairs(assert(dirent.dir(dir), "no fd left to count fds")) do
      if name:match("^%d+$") and unistd.readlink(dir .. "/" .. name) ~= dir then set[name] = true end
    end
    return set
  end
  -- Fds opened since `before` (those inherited from the runner may come and go).
  local function new_fds(before)
    local n = 0
    for name in pairs(fdset()) do if not before[name] then n = n + 1 end end
    return n
  end
  local function maps()
    local n = 0
    local f = assert(io.open("/proc/self/maps"), "no fd left to read the mappings")
    for l in f:lines() do if l:find("zero %(deleted%)") then n = n + 1 end end
    f:close()
    return n
  end
]]

describe("regress: a pool that cannot be built", function()
  it("names the resource and leaves no worker, fd or mapping (out of fds for sentinels)", function()
    local r = run_limited(64, census .. [[
      local fds0, kids0, maps0 = fdset(), #mp.active_children(), maps()
      local ok, err = pcall(mp.Pool, 64)
      print(ok, (tostring(err):gsub("^[^:]*:%d+: ", "")))
      print("fds", new_fds(fds0), "children", #mp.active_children() - kids0, "maps", maps() - maps0)
      local pool <close> = mp.Pool(2)                -- still usable
      print(pool:apply(function() return "ok" end))
    ]])
    assert.equal(0, r.status, r.stderr)
    local first = r.stdout:match("^[^\n]*")
    assert.matches("^false\tPool: cannot start worker %d+ of 64: cannot start process %(fork%): Too many open files$", first)
    assert.matches("\nfds\t0\tchildren\t0\tmaps\t0\nok\n$", r.stdout)
  end)

  it("names the resource and leaves nothing behind (out of fds for the channel)", function()
    local r = run_limited(64, census .. [[
      local fds0, kids0, maps0 = fdset(), #mp.active_children(), maps()
      local hold = {}
      while true do                                 -- use up the descriptors
        local f = io.open("/dev/null")
        if not f then break end
        hold[#hold + 1] = f
      end
      for _ = 1, 3 do hold[#hold]:close(); hold[#hold] = nil end   -- room for one socket pair only
      local ok, err = pcall(mp.Pool, 2)
      for _, f in ipairs(hold) do f:close() end
      print(ok, (tostring(err):gsub("^[^:]*:%d+: ", "")))
      print("fds", new_fds(fds0), "children", #mp.active_children() - kids0, "maps", maps() - maps0)
    ]])
    assert.equal(0, r.status, r.stderr)
    assert.matches("^false\t[^\n]*[Tt]oo many open files\nfds\t0\tchildren\t0\tmaps\t0\n$", r.stdout)
  end)
end)

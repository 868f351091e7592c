--[[
Regression: loading mp set SIGPIPE to "ignore" for the whole process, so
`mplua script | head -1` (or a stock lua5.4 that required mp) never ended when the
script printed in a loop: print ignores write errors. Now mp leaves SIGPIPE as it
found it, and keeps it out of its own writes (MSG_NOSIGNAL on sockets, the
doorbell writes through src/engine/nosigpipe.c), so its transports still see EPIPE.

Every command runs under `env --default-signal=PIPE`, so an ignored SIGPIPE
inherited from whatever started the suite cannot hide or fake the behaviour.
]]
local H = require "helper"

-- The two interpreters, each a shell command prefix; lua5.4 loads the built mp.so.
local function interpreters()
  local preload = os.getenv("MPLUA_ASAN_PRELOAD")   -- the sanitizer run's mp.so needs it
  local lua = string.format("env LUA_CPATH=%s %s %s", H.quote(H.build .. "/?.so;;"),
    preload and preload ~= "" and "LD_PRELOAD=" .. H.quote(preload) or "", H.lua)
  return {
    { name = "mplua", command = H.quote(H.mplua) },
    { name = "lua5.4 with mp.so", command = lua },
    { name = "plain lua5.4", command = H.lua, plain = true },   -- the reference
  }
end

-- A temporary script file; removed by `finally`.
local function script(source)
  local path = os.tmpname() .. ".lua"
  H.write_file(path, source)
  finally(function() os.remove(path) end)
  return path
end

--[[
Runs `command script | head -1` with a 20 s timeout on the script. Returns head's
output, the script's exit status as the shell reports it (128 + signal when a
signal ended it; 124 when the timeout did) and its stderr.
]]
local function into_head(command, path)
  local tmp = os.tmpname()
  local out, err, status = tmp .. ".out", tmp .. ".err", tmp .. ".status"
  local cmd = string.format(
    "(env --default-signal=PIPE timeout -k 2 20 %s %s 2>%s; echo $? >%s) | head -1 >%s",
    command, H.quote(path), err, status, out)
  assert.is_true(os.execute(cmd))
  local r = { stdout = H.read_file(out), stderr = H.read_file(err),
              status = tonumber(H.read_file(status)) }
  for _, p in ipairs { tmp, out, err, status } do os.remove(p) end
  return r
end

describe("a closed stdout", function()
  it("ends `script | head -1` as lua5.4 does, for mplua and for lua5.4 with mp", function()
    local forever = script([[
      local ok, mp = pcall(require, "mp")
      if ok then
        -- Use mp before printing: a queue, a pipe, a process.
        local q = mp.Queue(); q:put(1); assert(q:get() == 1)
        local r, w = mp.Pipe(false); w:send("x"); assert(r:recv() == "x")
        local p = mp.Process{ target = function() end }; p:start(); p:join()
      end
      local i = 0
      while true do i = i + 1; print("line " .. i) end
    ]])
    local statuses = {}
    for _, interp in ipairs(interpreters()) do
      local r = into_head(interp.command, forever)
      assert.equal("line 1\n", r.stdout, interp.name)
      assert.equal("", r.stderr, interp.name)         -- no traceback
      assert.are_not.equal(124, r.status, interp.name .. " did not end")
      statuses[interp.name] = r.status
    end
    assert.same({ ["mplua"] = 128 + 13, ["lua5.4 with mp.so"] = 128 + 13, ["plain lua5.4"] = 128 + 13 },
      statuses)                                         -- death by SIGPIPE, as lua5.4
  end)

  it("is left to the program: loading mp does not change SIGPIPE's disposition", function()
    local path = script([[
      local mp = require "mp"
      print(mp.signal("SIGPIPE", "default"))
    ]])
    for _, interp in ipairs(interpreters()) do
      if not interp.plain then
        local r = H.run{ program = "sh", args = { "-c",
          "exec env --default-signal=PIPE " .. interp.command .. " " .. H.quote(path) } }
        assert.equal(0, r.status, r.stderr)
        assert.equal("default\n", r.stdout, interp.name)
      end
    end
  end)
end)

describe("mp's own transports", function()
  --[[
  The receiving end asked for its fd (signalled mode: the sender rings a pipe(2)
  doorbell for every message) and was then killed, so the doorbell's read end is
  gone while the sender still rings it: each ring is a write(2) to a broken pipe,
  which must be EPIPE inside mp, not SIGPIPE for the process.
  ]]
  it("still fail with EPIPE, without dying, when the reader of a Pipe is gone", function()
    local path = script([[
      local mp = require "mp"
      local r, w = mp.Pipe(false)
      local q = mp.Queue()
      local p = mp.Process{ target = function() r:fileno(); q:put("ready"); mp.sleep(60) end }
      p:start()
      assert(q:get(true, 10) == "ready")
      r:close()
      p:kill(); p:join(10)
      local ok, err, n = true, nil, 0
      while ok and n < 1000 do
        n = n + 1
        ok, err = pcall(w.send_bytes, w, ("z"):rep(65536))
      end
      print(ok, err, n > 1)
    ]])
    for _, interp in ipairs(interpreters()) do
      if not interp.plain then
        local r = H.run{ program = "sh", args = { "-c",
          "exec env --default-signal=PIPE " .. interp.command .. " " .. H.quote(path) } }
        assert.equal(0, r.status, interp.name .. ": " .. tostring(r.stderr))
        assert.matches("^false\t[^\n]*broken pipe[^\n]*\ttrue\n$", r.stdout)
      end
    end
  end)
end)

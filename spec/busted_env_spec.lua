--[[
Functions defined in a spec file run with busted's environment (its assert,
spy, describe...), which is not the global table. A pool task or a function
sent to another process must see that environment there too: the serializer
sends the environment by id and the receiving process, forked while this file
was running, binds its own copy of it (docs/serialization.md, "Environments").
]]
local mp = require "mp"
local H = require "helper"
local unistd = require "posix.unistd"
local poll = require "posix.poll"

-- Everything the fd gives until EOF, failing instead of hanging.
local function read_all(fd)
  local chunks = {}
  while true do
    assert(poll.rpoll(fd, 10000) == 1, "timed out reading the pipe")
    local s = assert(unistd.read(fd, 65536))
    if s == "" then break end
    chunks[#chunks + 1] = s
  end
  return table.concat(chunks)
end

describe("busted's environment in other processes", function()
  it("is the environment of a pool task: assert and spy work there", function()
    assert.are_not.equal(_G, _ENV)              -- the premise: busted runs specs in its own environment
    local pool <close> = mp.Pool(2)
    local r = pool:map(function(x)
      assert.are.equal(x, x + 0)
      assert.is_true(x > 0)
      local s = spy.new(function() end)
      s(x)
      assert.spy(s).was.called_with(x)
      return x * 2
    end, { 1, 2, 3 })
    assert.are.equal(2, r[1])
    assert.are.equal(4, r[2])
    assert.are.equal(6, r[3])
  end)

  it("makes a failing assertion in a pool task arrive as a RemoteError naming it", function()
    local pool <close> = mp.Pool(1)
    local err = H.raises(mp.RemoteError, pool.apply, pool, function(a, b)
      assert.are.equal(a, b)
    end, { 1, 2 })
    assert.matches("Expected objects to be equal", tostring(err.message))
    assert.matches("Expected objects to be equal", tostring(err))
  end)

  it("is the environment of an mp.Process target", function()
    local p = mp.Process{ target = function()
      assert.is_true(true)
      assert.are.equal("same", "same")
    end }
    p:start()
    assert.are.equal(0, H.join(p))
  end)

  it("ends an mp.Process whose assertion fails with exit code 1 and the assertion's message", function()
    local r, w = unistd.pipe()
    local p = mp.Process{ target = function()
      unistd.close(r)
      unistd.dup2(w, 2)                         -- the child's report goes to the pipe
      assert.are.equal(1, 2)
    end }
    p:start()
    unistd.close(w)
    local report = read_all(r)
    unistd.close(r)
    assert.are.equal(1, H.join(p))
    assert.matches("Process Process%-%d+:", report)
    assert.matches("Expected objects to be equal", report)
  end)

  it("is the environment of a function sent to a running process", function()
    local parent, child = mp.Pipe()
    local p = mp.Process{ target = function()
      while true do
        assert(child:poll(10), "no request from the parent")
        local f = child:recv()
        if f == "stop" then break end
        local ok, err = pcall(f)
        child:send({ ok, ok and "" or tostring(err) })
      end
    end }
    p:start()
    local function ask(f)
      parent:send(f)
      assert.is_true(parent:poll(10), "no answer from the child")
      return table.unpack(parent:recv())
    end
    local ok, msg = ask(function() assert.is_true(1 < 2) end)
    assert.is_true(ok, msg)
    ok, msg = ask(function() assert.is_true(2 < 1) end)
    assert.is_false(ok)
    assert.matches("Expected objects to be the same", msg)
    parent:send("stop")
    assert.are.equal(0, H.join(p))
  end)
end)

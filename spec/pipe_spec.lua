local mp = require "mp"
local H = require "helper"
local poll = require "posix.poll"

local raises = H.raises

describe("mp.Pipe", function()
  it("is duplex by default: both ends send and receive", function()
    local a, b = mp.Pipe()
    assert.is_true(a.readable and a.writable and b.readable and b.writable)
    a:send({ x = 1 }); b:send("back")
    assert.same({ x = 1 }, b:recv())
    assert.equal("back", a:recv())
    a:close(); b:close()
    assert.is_true(a.closed)
  end)

  it("Pipe(false) gives a receive-only and a send-only end", function()
    local r, w = mp.Pipe(false)
    assert.is_true(r.readable); assert.is_false(r.writable)
    assert.is_false(w.readable); assert.is_true(w.writable)
    assert.matches("read%-only", select(2, pcall(r.send, r, 1)))
    assert.matches("write%-only", select(2, pcall(w.recv, w)))
    w:send(nil)
    assert.is_nil(r:recv())
    local r2, w2 = mp.Pipe{ duplex = false }
    assert.is_false(r2.writable); assert.is_false(w2.readable)
  end)

  it("keeps closed, readable and writable right through close(), <close> and collection", function()
    local r, w = mp.Pipe(false)
    assert.equal("mp.Connection", getmetatable(r).__name)
    assert.is_false(r.closed); assert.is_false(w.closed)
    do
      local c <close> = w
      assert.is_true(c.writable)
    end
    assert.is_true(w.closed); assert.is_false(w.writable); assert.is_false(w.readable)
    assert.equal("mp.Connection", getmetatable(w).__name)
    assert.equal("<Connection closed>", tostring(w))
    assert.matches("connection is closed", select(2, pcall(w.send, w, 1)))
    assert.matches("connection is closed", select(2, pcall(function() w:send(1) end)))
    w:close()                                       -- again: nothing to do
    assert.is_true(r.readable); assert.is_false(r.closed)
    r:close()
    assert.is_true(r.closed); assert.is_false(r.readable)
    assert.is_nil(r.nosuchfield)
    -- Methods of the closed state are the same functions, and a wrong self is refused.
    assert.equal(mp.Pipe().send, w.send)
    assert.matches("mp.Connection expected", select(2, pcall(w.send, {}, 1)))
    local a, b = mp.Pipe()
    a, b = nil, nil
    collectgarbage(); collectgarbage()
  end)

  it("round-trips values through a child process", function()
    local parent, child = mp.Pipe()
    local p = mp.Process{ target = function()
      while true do
        local v = child:recv()
        if v == "stop" then break end
        child:send({ v, type(v) })
      end
    end }
    p:start()
    for _, v in ipairs { 42, 1.5, "text", true, { 1, { 2 } } } do
      parent:send(v)
      local r = parent:recv()
      assert.same({ v, type(v) }, r)
    end
    parent:send("stop")
    H.join(p)
  end)

  it("send_bytes takes a 1-based offset and a size; recv_bytes checks maxlength", function()
    local a, b = mp.Pipe()
    a:send_bytes("hello world")
    a:send_bytes("hello world", 7)
    a:send_bytes("hello world", 7, 3)
    a:send_bytes("")
    assert.equal("hello world", b:recv_bytes())
    assert.equal("world", b:recv_bytes())
    assert.equal("wor", b:recv_bytes(3))
    assert.equal("", b:recv_bytes())
    a:send_bytes("too long")
    assert.matches("longer than maxlength 3", select(2, pcall(b.recv_bytes, b, 3)))
    a:send("next")
    assert.equal("next", b:recv())
  end)

  it("recv of bytes that are not a message raises and the connection goes on", function()
    local a, b = mp.Pipe()
    a:send_bytes("not a message")
    a:send_bytes(("\255"):rep(20000))     -- large: decoded in place
    a:send("fine")
    assert.is_false(pcall(b.recv, b))
    assert.is_false(pcall(b.recv, b))
    assert.equal("fine", b:recv())
  end)

  it("names bad arguments", function()
    local a, b = mp.Pipe()
    local ok, err = pcall(function() a:send_bytes({}) end)
    assert.matches("bad argument #1 to 'send_bytes' %(string expected", err)
    ok, err = pcall(function() a:send_bytes("abc", 0) end)
    assert.matches("bad argument #2 to 'send_bytes'", err)
    ok, err = pcall(function() a:send_bytes("abc", 2, 5) end)
    assert.matches("bad argument #3 to 'send_bytes'", err)
    ok, err = pcall(function() b:recv_bytes(-1) end)
    assert.matches("bad argument #1 to 'recv_bytes'", err)
    ok, err = pcall(function() b:poll("x") end)
    assert.matches("bad argument #1 to 'poll'", err)
    ok, err = pcall(mp.Pipe, 1)
    assert.matches("bad argument #1", err)
    ok, err = pcall(function() a:send(coroutine.create(print)) end)
    assert.matches("thread", err)
    a:close()
    ok, err = pcall(function() a:send(1) end)
    assert.matches("connection is closed", err)
  end)

  it("poll waits up to its timeout; without argument it does not wait", function()
    local a, b = mp.Pipe()
    assert.is_false(b:poll())
    local t0 = mp.time()
    assert.is_false(b:poll(0.2))
    local dt = mp.time() - t0
    assert.is_true(dt >= 0.19 and dt < 2, "waited " .. dt)
    a:send(1)
    assert.is_true(b:poll())
    assert.is_true(b:poll(0))
    assert.equal(1, b:recv())
  end)

  it("poll wakes when a child sends", function()
    local a, b = mp.Pipe()
    local p = mp.Process{ target = function() a:send("late") end }
    p:start()
    assert.is_true(b:poll(10))
    assert.equal("late", b:recv())
    H.join(p)
  end)

  it("fileno is a pollable fd, readable while a message waits", function()
    local a, b = mp.Pipe()
    local fd = b:fileno()
    assert.is_number(fd)
    assert.equal(0, poll.rpoll(fd, 0))
    local p = mp.Process{ target = function() a:send("x") end }
    p:start()
    assert.equal(1, poll.rpoll(fd, 10000))
    assert.equal("x", b:recv())
    H.join(p)
    assert.equal(0, poll.rpoll(fd, 0))
  end)

  it("raises EOFError once every copy of the other end is closed and nothing is left", function()
    local r, w = mp.Pipe(false)
    local go = mp.Queue()
    local first = mp.Process{ target = function() w:send("a"); w:close() end }
    local second = mp.Process{ target = function() go:get(); w:send("b") end }
    first:start(); second:start()
    w:close()                                   -- the parent's copy
    assert.equal("a", r:recv())
    H.join(first)
    assert.is_false(r:poll(0.1))                -- the second child still holds w
    go:put(true)
    assert.equal("b", r:recv())
    H.join(second)
    raises(mp.EOFError, r.recv, r)
    assert.is_true(r:poll(0))                   -- EOF counts as readable
    raises(mp.EOFError, r.recv_bytes, r)
  end)

  it("delivers what was sent before the sender exited, then EOFError", function()
    local r, w = mp.Pipe(false)
    local p = mp.Process{ target = function() for i = 1, 1000 do w:send(i) end end }
    p:start()
    w:close()
    H.join(p)
    local sum = 0
    for _ = 1, 1000 do sum = sum + r:recv() end
    assert.equal(500500, sum)
    raises(mp.EOFError, r.recv, r)
  end)

  it("send fails with a broken pipe once no copy of the reading end is left", function()
    local r, w = mp.Pipe(false)
    r:close()
    local ok, err
    for _ = 1, 10000 do
      ok, err = pcall(w.send_bytes, w, ("z"):rep(1000))
      if not ok then break end
    end
    assert.is_false(ok)
    assert.matches("broken pipe", err)
  end)

  it("passes a 100 MiB string to a consumer that starts reading late", function()
    local r, w = mp.Pipe(false)
    local p = mp.Process{ target = function()
      w:send(("0123456789abcdef"):rep(100 * 2^20 // 16) .. "!")
    end }
    p:start()
    w:close()
    mp.sleep(0.2)                               -- late, on purpose (not for synchronization)
    local s = r:recv()
    assert.equal(100 * 2^20 + 1, #s)
    assert.equal("0123456789abcdef", s:sub(1, 16))
    assert.equal("ef!", s:sub(-3))
    H.join(p, 60)
    raises(mp.EOFError, r.recv, r)
  end)

  it("lets several processes read one end: each message goes to one of them", function()
    local r, w = mp.Pipe(false)
    local results = mp.Queue()
    local readers = {}
    for k = 1, 2 do
      readers[k] = mp.Process{ target = function()
        local sum, n = 0, 0
        while true do
          local v = r:recv()
          if v == "STOP" then break end
          sum, n = sum + v, n + 1
        end
        results:put({ sum, n })
      end }
      readers[k]:start()
    end
    for i = 1, 20000 do w:send(i) end
    w:send("STOP"); w:send("STOP")
    local sum, n = 0, 0
    for _ = 1, 2 do
      local res = results:get(true, 30)
      sum, n = sum + res[1], n + res[2]
    end
    for k = 1, 2 do H.join(readers[k]) end
    assert.equal(20000, n)
    assert.equal(20000 * 20001 // 2, sum)
  end)

  it("streams large messages back to back, then small ones", function()
    local r, w = mp.Pipe(false)
    local p = mp.Process{ target = function()
      for i = 1, 3 do w:send_bytes(("%d"):format(i):rep(2 * 2^20 + i)) end
      for i = 1, 100 do w:send(i) end
    end }
    p:start()
    w:close()
    for i = 1, 3 do
      local s = r:recv_bytes()
      assert.equal(2 * 2^20 + i, #s)
      assert.equal(("%d"):format(i):rep(8), s:sub(-8))
    end
    for i = 1, 100 do assert.equal(i, r:recv()) end
    H.join(p)
  end)

  it("raises EOFError when the sender dies in the middle of a large message", function()
    local r, w = mp.Pipe(false)
    local p = mp.Process{ target = function()
      local big = ("x"):rep(8 * 2^20)
      w:send_bytes("ready")
      w:send_bytes(big)
    end }
    p:start()
    w:close()
    assert.equal("ready", r:recv_bytes())
    p:kill()
    H.join(p)
    local ok, err = pcall(r.recv_bytes, r)
    -- Either the whole message made it before the kill, or EOFError.
    if not ok then assert.is_true(mp.EOFError:is(err), tostring(err)) end
  end)
end)

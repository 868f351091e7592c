-- Two processes exchange messages both ways over one duplex Pipe (tutorial: the two-process Pipe exchange).
-- Run: mplua examples/pipe_exchange.lua
io.stdout:setvbuf("line")

local function first(conn)
  conn:send("hello from the first process")
  print("first received: " .. conn:recv())    -- the second one's reply
  conn:send({ question = "how many?", n = 3 })
  print("first received: " .. conn:recv())
  conn:close()
end

local function second(conn)
  print("second received: " .. conn:recv())
  conn:send("hello from the second process")
  local msg = conn:recv()
  print("second received: " .. msg.question .. " " .. msg.n)
  conn:send("three, counted: " .. table.concat({ 1, 2, 3 }, ","))
  conn:close()
end

local a, b = mp.Pipe()          -- duplex: each end sends and receives
local p1 = mp.Process{ target = first, args = { a } }
local p2 = mp.Process{ target = second, args = { b } }
p1:start(); p2:start()
a:close(); b:close()            -- the parent uses neither end
p1:join(); p2:join()

-- Two processes talk over a Pipe: one sends messages, the other prints them
-- until "END". Run: mplua examples/pipe_exchange.lua
local function sender(conn, msgs)
  for _, msg in ipairs(msgs) do
    conn:send(msg)
    print("Sent the message: " .. msg)
  end
  conn:close()
end

local function receiver(conn)
  while true do
    local msg = conn:recv()
    if msg == "END" then break end
    print("Received the message: " .. msg)
  end
end

local msgs = { "hello", "hey", "hru?", "END" }
local parent_conn, child_conn = mp.Pipe()
local p1 = mp.Process{ target = sender, args = { parent_conn, msgs } }
local p2 = mp.Process{ target = receiver, args = { child_conn } }
p1:start(); p2:start()
p1:join(); p2:join()

-- A sender process and a receiver process over a Pipe, until "END" (tutorial: the sender/receiver Pipe).
-- Run: mplua examples/pipe_sender_receiver.lua
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

local msgs = { "hey", "hru?", "I'm fine", "END" }
local parent_conn, child_conn = mp.Pipe()
local p1 = mp.Process{ target = sender, args = { parent_conn, msgs } }
local p2 = mp.Process{ target = receiver, args = { child_conn } }
p1:start(); p2:start()
p1:join(); p2:join()

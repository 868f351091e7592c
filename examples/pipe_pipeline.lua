-- A two-stage pipeline over Pipes that ends on EOFError (tutorial: create_items and multiply_items).
-- A pipeline of processes joined by Pipes: a generator sends numbers, a
-- squarer squares them, the main process prints the results. Each stage stops
-- at EOFError, raised once every copy of the sending end is closed, so every
-- process closes the ends it does not use (as in Python).
-- Run: mplua examples/pipe_pipeline.lua
local function generate(out_conn, n)
  for i = 1, n do out_conn:send(i) end
  out_conn:close()
end

local function square(in_conn, out_conn)
  while true do
    local ok, x = pcall(in_conn.recv, in_conn)
    if not ok then
      if mp.EOFError:is(x) then break end
      error(x, 0)
    end
    out_conn:send(x * x)
  end
  out_conn:close()
end

local numbers_r, numbers_w = mp.Pipe(false)
local squares_r, squares_w = mp.Pipe(false)

local gen = mp.Process{ target = function() numbers_r:close(); squares_r:close(); squares_w:close()
  generate(numbers_w, 10) end }
local sq = mp.Process{ target = function() numbers_w:close(); squares_r:close()
  square(numbers_r, squares_w) end }
gen:start(); sq:start()
-- The parent only reads squares: it closes its copies of everything else.
numbers_r:close(); numbers_w:close(); squares_w:close()

while true do
  local ok, v = pcall(squares_r.recv, squares_r)
  if not ok then
    if mp.EOFError:is(v) then break end
    error(v, 0)
  end
  print("square:", v)
end
print("end of the pipeline")
gen:join(); sq:join()

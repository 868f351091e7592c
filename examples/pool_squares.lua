-- Pool squares: the tutorial's first Pool program.
-- Run: mplua examples/pool_squares.lua
local function square(x)
  return x * x
end

local pool <close> = mp.Pool(4)
local numbers = { 1, 2, 3, 4, 5 }
local squares = pool:map(square, numbers)
print("squares: " .. table.concat(squares, ", "))

-- imap yields results one by one, in order, as they arrive.
for r in pool:imap(square, { 6, 7, 8 }) do
  print("imap result", r)
end

-- Squares computed one after the other in a single process (tutorial: the serial squares, before the Pool).
-- Run: mplua examples/pool_squares_serial.lua   (then see pool_squares.lua)
local function square(n)
  return n * n
end

local mylist = { 1, 2, 3, 4, 5 }
local result = {}
for _, num in ipairs(mylist) do
  result[#result + 1] = square(num)
end
print("{" .. table.concat(result, ", ") .. "}")

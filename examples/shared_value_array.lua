-- Shared memory: a child fills an Array with squares and a Value with their sum (tutorial: sharing data with Value and Array).
-- Run: mplua examples/shared_value_array.lua
local function square_all(numbers, total)
  for i = 1, #numbers do
    numbers[i] = numbers[i] * numbers[i]
    total:add(numbers[i])             -- atomic: no lock needed
  end
  local pi = mp.Value("d")            -- a child may make its own too
  pi.value = 3.14159
end

local numbers = mp.Array("i", { 1, 2, 3, 4, 5 })
local total = mp.Value("i", 0)
local p = mp.Process{ target = square_all, args = { numbers, total } }
p:start()
p:join()
print("squares: " .. table.concat(numbers:tolist(), ", "))
print("sum: " .. total.value)

local letters = mp.Array("c", 16)
letters.value = "shared bytes"
print("bytes: " .. letters.value .. " (" .. #letters .. " bytes)")

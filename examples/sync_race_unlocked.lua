-- A race: two processes update a shared balance without a lock, ten runs (tutorial: withdraw/deposit without a Lock).
-- Each read-modify-write of balance.value can interleave with the other
-- process's, so updates get lost and the final balance is often not 100.
-- Run: mplua examples/sync_race_unlocked.lua   (then see sync_race_locked.lua)
local function deposit(balance)
  for _ = 1, 100 do
    local b = balance.value
    for _ = 1, 2000 do end            -- some work between the read and the write
    balance.value = b + 1
  end
end

local function withdraw(balance)
  for _ = 1, 100 do
    local b = balance.value
    for _ = 1, 2000 do end
    balance.value = b - 1
  end
end

local function perform_transactions()
  local balance = mp.Value("i", 100)
  local p1 = mp.Process{ target = deposit, args = { balance } }
  local p2 = mp.Process{ target = withdraw, args = { balance } }
  p1:start(); p2:start()
  p1:join(); p2:join()
  print("Final balance = " .. balance.value)
end

for _ = 1, 10 do perform_transactions() end

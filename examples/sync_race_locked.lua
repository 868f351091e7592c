-- The same race cured by a Lock around each update: the final balance is 100 every time (tutorial: withdraw/deposit with a Lock).
-- Run: mplua examples/sync_race_locked.lua
local function deposit(balance, lock)
  for _ = 1, 100 do
    lock:acquire()
    local b = balance.value
    for _ = 1, 2000 do end
    balance.value = b + 1
    lock:release()
  end
end

local function withdraw(balance, lock)
  for _ = 1, 100 do
    local _ <close> = lock:hold()       -- the same, released at the end of the scope
    local b = balance.value
    for _ = 1, 2000 do end
    balance.value = b - 1
  end
end

local function perform_transactions()
  local balance = mp.Value("i", 100)
  local lock = mp.Lock()
  local p1 = mp.Process{ target = deposit, args = { balance, lock } }
  local p2 = mp.Process{ target = withdraw, args = { balance, lock } }
  p1:start(); p2:start()
  p1:join(); p2:join()
  print("Final balance = " .. balance.value)
end

for _ = 1, 10 do perform_transactions() end

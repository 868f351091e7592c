--[[
Waiting for a state instead of sleeping, for specs and for the scripts they
run in subprocesses (which have mp but not luaposix or busted):

    package.path = "spec/?.lua;" .. package.path
    local waits = require "waits"
    waits.blocked(pid, { "futex" }, 10, mp.sleep, mp.time)

Every wait fails with an error naming what it waited for when the timeout
passes; none gives up silently.
]]
local W = {}

local function read_file(path)
  local f = io.open(path, "rb")
  if not f then return nil end
  local s = f:read("a")
  f:close()
  return s
end

--[[
Waits until pred() returns a true value and returns it; raises (naming `what`)
when that takes longer than `timeout` seconds. nap(s) sleeps s seconds and
now() is a monotonic clock in seconds.
]]
function W.until_true(pred, timeout, what, nap, now)
  local t0 = now()
  while true do
    local v = pred()
    if v then return v end
    if now() - t0 > timeout then
      error("timed out after " .. timeout .. "s waiting for " .. (what or "a condition"), 3)
    end
    nap(0.002)
  end
end

-- Syscall numbers of the calls a process blocks in, by name (x86_64, aarch64).
local blocking_syscalls = {
  x86_64 = { [0] = "read", [7] = "poll", [23] = "select", [34] = "pause", [35] = "nanosleep",
             [43] = "accept", [45] = "recvfrom", [47] = "recvmsg", [61] = "wait4", [202] = "futex",
             [230] = "clock_nanosleep", [232] = "epoll_wait", [270] = "pselect6", [271] = "ppoll",
             [288] = "accept4", [128] = "rt_sigtimedwait", [130] = "rt_sigsuspend" },
  aarch64 = { [63] = "read", [73] = "ppoll", [72] = "pselect6", [98] = "futex", [101] = "nanosleep",
              [115] = "clock_nanosleep", [202] = "accept", [207] = "recvfrom", [212] = "recvmsg",
              [260] = "wait4", [242] = "accept4", [22] = "epoll_pwait", [137] = "rt_sigtimedwait",
              [133] = "rt_sigsuspend" },
}
local arch
do
  local f = io.popen("uname -m")
  arch = f:read("l")
  f:close()
end

-- The name of the system call process pid is asleep in, or nil when it runs or is gone.
function W.blocked_in(pid)
  local s = read_file("/proc/" .. pid .. "/syscall")
  local num = s and tonumber(s:match("^(%d+) "))
  if num == nil then return nil end
  local state = (read_file("/proc/" .. pid .. "/stat") or ""):match("%) (%a) ")
  if state ~= "S" and state ~= "D" and state ~= "t" and state ~= "T" then return nil end
  return (blocking_syscalls[arch] or {})[num] or ("syscall " .. num)
end

--[[
Waits until process pid sleeps in a blocking system call (one of `calls`, a
list of names such as {"futex"}, when given) and returns its name. This is how
a spec knows another process has reached a blocked get, put, acquire or join.
]]
function W.blocked(pid, calls, timeout, nap, now)
  local want
  if calls then want = {}; for _, c in ipairs(calls) do want[c] = true end end
  return W.until_true(function()
    local name = W.blocked_in(pid)
    if name and (want == nil or want[name]) then return name end
  end, timeout or 10, "process " .. pid .. " to block" .. (calls and (" in " .. table.concat(calls, "/")) or ""),
  nap, now)
end

return W

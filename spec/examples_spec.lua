--[[
Every program in examples/ runs under mplua (with a small size where it takes
one) and prints what it should: each has an entry below that checks its output,
not only its exit status, so an example cannot rot unnoticed. What is
deterministic is checked exactly (counts, final values, exit codes, the order
that the program guarantees); pids, timings and the interleaving of processes
are matched loosely. An example without an entry, or an entry without an
example, fails the first test.
]]
local H = require "helper"

-- The examples, by file name.
local function example_files()
  local list = {}
  local p = assert(io.popen("ls examples/*.lua"))
  for path in p:lines() do list[#list + 1] = path:match("[^/]+$") end
  p:close()
  table.sort(list)
  return list
end

local function lines_of(s)
  local t = {}
  for line in s:gmatch("([^\n]*)\n") do t[#t + 1] = line end
  return t
end

-- The lines of s that match pattern, with their captures: { {cap1, cap2...}, ... }.
local function matching(s, pattern)
  local found = {}
  for _, line in ipairs(lines_of(s)) do
    local caps = table.pack(line:match(pattern))
    if caps[1] ~= nil then found[#found + 1] = caps end
  end
  return found
end

local function count(s, pattern)
  local n = 0
  for _ in s:gmatch(pattern) do n = n + 1 end
  return n
end

-- Asserts that the patterns match s in this order, each after the end of the previous one.
local function in_order(s, patterns)
  local pos = 1
  for i, p in ipairs(patterns) do
    local _, e = s:find(p, pos)
    assert(e, string.format("pattern %d (%q) not found after position %d in:\n%s", i, p, pos, s))
    pos = e + 1
  end
end

local function has(s, pattern)
  assert(s:find(pattern), string.format("%q not found in:\n%s", pattern, s))
end

local function has_not(s, pattern)
  assert(not s:find(pattern), string.format("%q found in:\n%s", pattern, s))
end

local function exactly(s, expected)
  assert.equal(expected, s)
end

-- Asserts that the captured numbers (first capture of each match) are 1..n in any order.
local function each_once(found, n, what)
  assert.equal(n, #found, what .. ": expected " .. n .. " lines")
  local seen = {}
  for _, caps in ipairs(found) do
    local i = tonumber(caps[1])
    assert(i and i >= 1 and i <= n and not seen[i], what .. ": unexpected or repeated " .. tostring(caps[1]))
    seen[i] = true
  end
end

local function seq(first, last, f)
  local t = {}
  for i = first, last do t[#t + 1] = f and f(i) or i end
  return t
end

local cpus = tonumber(H.run{ args = { "-e", "io.write(mp.cpu_count())" } }.stdout)

-- Primes in each of eight ranges of 2500 numbers (scale 0.1 of the 25000 default).
local primes_per_range = { 367, 302, 281, 279, 263, 262, 260, 248 }
local range_names = { "alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta" }

local function check_throughput(kind)
  return function(out)
    local pat = "^Sending 2000 numbers to " .. kind .. "%(%) took %d+%.%d%d%d seconds\n$"
    has(out, pat)
  end
end

local function check_sincos(label)
  return function(out)
    has(out, label .. "sum = 80000%.000 in %d+%.%d%d s")
  end
end

--[[
file --> { args = {...} (a small size), timeout = seconds (default 30),
           check = function(stdout) }
]]
local E = {}

---------------------------------------------------------------- processes
E["process_hello.lua"] = { check = function(out)
  has(out, "^hello world from process %d+ %(parent %d+%)\nProcess%-1 finished with exit code 0\n$")
end }

E["process_join.lua"] = { args = { "0.02" }, check = function(out)
  each_once(matching(out, "^worker (%d) starting$"), 3, "starting")
  each_once(matching(out, "^worker (%d) done$"), 3, "done")
  has(out, "\nall workers joined after %d+%.%d%d s\n$")
end }

E["process_five_joined.lua"] = { args = { "0.01" }, check = function(out)
  -- Each process is joined before the next starts: the order is fixed.
  local expected = {}
  for i = 1, 5 do
    expected[#expected + 1] = string.format("starting fun with %g s\nfinishing fun with %g s\n", i * 0.01, i * 0.01)
  end
  has(out, "^" .. table.concat(expected):gsub("%.", "%%.") .. "elapsed %d+%.%d%d s %(15 units of 0%.01 s%)\n$")
end }

E["process_subclass.lua"] = { args = { "4" }, check = function(out)
  local want = {}
  for i = 1, 4 do
    want[i] = "called run method in process MyProcess%-" .. i .. " %(pid %d+%), task " .. i .. "\n"
  end
  has(out, "^" .. table.concat(want) .. "$")
end }

E["process_daemon.lua"] = {
  -- The daemon sleeps 60 s: finishing well within the timeout shows it was terminated.
  timeout = 30,
  check = function(out)
    in_order(out, { "Starting background_process\n", "%-%-%-> 0\n", "%-%-%-> 4\n" })
    has(out, "background_process daemon: true\nmain process ends without joining it: the daemon is terminated\n")
    has_not(out, "Exiting")
  end }

E["process_nondaemon.lua"] = { check = function(out)
  has(out, "Starting NO_background_process\n")
  in_order(out, { "%-%-%-> 5\n", "%-%-%-> 9\n" })
  has(out, "NO_background_process daemon: false\n")
  -- Joined at the main process's exit: its last line comes after the main script's last.
  in_order(out, { "main script ends without joining it\n", "Exiting NO_background_process\n$" })
end }

E["process_terminate.lua"] = { check = function(out)
  in_order(out, {
    "^Process before execution:\t<Process name='Process%-1' initial>\tfalse\n",
    "Process running:\t<Process name='Process%-1' pid=%d+ started>\ttrue\n",
    "Process terminated:\t<Process name='Process%-1' pid=%d+ %a+[^>]*>\t%a+\n",
    "Process joined:\t<Process name='Process%-1' pid=%d+ stopped exitcode=%-15>\tfalse\n",
    "Process exit code:\t%-15\n$",
  })
  has_not(out, "Finished function")
end }

E["process_sigint.lua"] = { check = function(out)
  exactly(out, "parent: sending SIGINT to the child\n" ..
    "child: got SIGINT, carrying on\n" ..
    "parent: the child is still alive: true\n" ..
    "parent: terminating it\n" ..
    "parent: child exit code -15\n")
end }

E["process_creation_cost.lua"] = { args = { "50" }, check = function(out)
  has(out, "^created 50 Process objects in %d+%.%d+ s %([%d.]+ us each%)\n" ..
    "started and joined 5 of them in %d+%.%d+ s %([%d.]+ ms each%)\n$")
end }

E["pool_cpu_count.lua"] = { check = function(out)
  local n = tonumber(out:match("^Number of CPUs: (%d+)\n"))
  assert.equal(cpus, n)
  local workers, size = out:match("\n8 tasks ran in (%d+) worker processes %(the pool has (%d+)%)\n$")
  assert.equal(cpus, tonumber(size))
  assert(tonumber(workers) >= 1 and tonumber(workers) <= cpus, out)
end }

---------------------------------------------------------------- synchronization
E["sync_race_unlocked.lua"] = { check = function(out)
  local found = matching(out, "^Final balance = (%-?%d+)$")
  assert.equal(10, #found)
  assert.equal(10, #lines_of(out))
  for _, caps in ipairs(found) do
    local b = tonumber(caps[1])          -- lost updates move it anywhere in 0..200
    assert(b >= 0 and b <= 200, out)
  end
end }

E["sync_race_locked.lua"] = { check = function(out)
  exactly(out, ("Final balance = 100\n"):rep(10))
end }

E["sync_lock.lua"] = { check = function(out)
  each_once(matching(out, "^hello world (%d+)$"), 10, "hello world")
  assert.equal(10, #lines_of(out))
end }

E["sync_lock_twenty.lua"] = { check = function(out)
  -- Under the lock every line is whole.
  each_once(matching(out, "^process (%d+) %(pid %d+%) says hello$"), 20, "whole lines")
  assert.equal(21, #lines_of(out))
  has(out, "\nall 20 processes printed\n$")
end }

E["sync_nolock_twenty.lua"] = { check = function(out)
  -- Lines may be cut by other processes' writes, but every piece is there.
  local seen = {}
  for i in out:gmatch("process (%d+)") do
    i = tonumber(i)
    assert(not seen[i], "process " .. i .. " printed twice")
    seen[i] = true
  end
  for i = 1, 20 do assert(seen[i], "process " .. i .. " missing:\n" .. out) end
  assert.equal(20, count(out, " %(pid %d+%)"))
  assert.equal(20, count(out, " says hello"))
  has(out, "\nall 20 processes printed\n$")
end }

E["sync_rlock.lua"] = { check = function(out)
  exactly(out, "counter = 600 (expected 600)\n")
end }

E["sync_semaphore.lua"] = { check = function(out)
  local found = matching(out, "^process (%d) uses the resource %((%d) inside%)$")
  each_once(found, 5, "users")
  for _, caps in ipairs(found) do
    assert(caps[2] == "1" or caps[2] == "2", "more than two inside:\n" .. out)
  end
  has(out, "\nall done\n$")
end }

E["sync_condition.lua"] = { check = function(out)
  in_order(out, seq(1, 5, function(n) return "producer made " .. n * 10 .. "\n" end))
  in_order(out, seq(1, 5, function(n) return "consumer got " .. n * 10 .. "\n" end))
  -- The consumer waits for each item: it never reports one before it was made.
  in_order(out, { "producer made 50\n", "consumer got 50\n$" })
end }

E["sync_event.lua"] = { check = function(out)
  has(out, "wait_for_event: starting\n")
  has(out, "wait_for_event_timeout: starting\n")
  in_order(out, {
    "wait_for_event_timeout: e:wait%(0%.2%) %-> false, e:is_set%(%) %-> false\n",
    "main: calling e:set%(%)\n",
    "wait_for_event: e:is_set%(%) %-> true\n",
    "main: both waiters ended\n$",
  })
end }

E["sync_barrier.lua"] = { check = function(out)
  local times = {}
  for name, t in out:gmatch("process (p%d %- test_with?o?u?t?_barrier) %-%-%-%-> (%d+%.%d+)\n") do
    assert(not times[name], name .. " printed twice")
    times[name] = tonumber(t)
  end
  assert(times["p1 - test_with_barrier"] and times["p2 - test_with_barrier"], out)
  assert(times["p3 - test_without_barrier"] and times["p4 - test_without_barrier"], out)
  assert.equal(4, #lines_of(out))
  -- Released together by the barrier (generous: the machine may be loaded).
  assert(math.abs(times["p1 - test_with_barrier"] - times["p2 - test_with_barrier"]) < 2, out)
end }

E["shared_value_get_lock.lua"] = { args = { "200" }, check = function(out)
  exactly(out, "counter = 2000 (10 processes x 200 increments)\n")
end }

E["shared_value_array.lua"] = { check = function(out)
  exactly(out, "squares: 1, 4, 9, 16, 25\nsum: 55\nbytes: shared bytes (16 bytes)\n")
end }

---------------------------------------------------------------- pipes and queues
E["pipe_exchange.lua"] = { check = function(out)
  exactly(out, "second received: hello from the first process\n" ..
    "first received: hello from the second process\n" ..
    "second received: how many? 3\n" ..
    "first received: three, counted: 1,2,3\n")
end }

E["pipe_sender_receiver.lua"] = { check = function(out)
  in_order(out, { "Sent the message: hey\n", "Sent the message: hru%?\n",
    "Sent the message: I'm fine\n", "Sent the message: END\n" })
  in_order(out, { "Received the message: hey\n", "Received the message: hru%?\n",
    "Received the message: I'm fine\n" })
  has_not(out, "Received the message: END")
  assert.equal(7, #lines_of(out))
end }

E["pipe_pipeline.lua"] = { check = function(out)
  exactly(out, table.concat(seq(1, 10, function(i) return "square:\t" .. i * i .. "\n" end)) ..
    "end of the pipeline\n")
end }

E["queue_producer_consumer.lua"] = { check = function(out)
  in_order(out, seq(1, 5, function(i) return "produced item " .. i .. "\n" end))
  in_order(out, seq(1, 5, function(i) return "consumed item " .. i .. " with value " .. i * 10 .. "\n" end))
  -- The consumer's last line follows its fifth item; the producer's own lines may
  -- come between the two (it prints after each put, the consumer may be faster).
  in_order(out, { "consumed item 5 with value 50\n", "consumer saw the sentinel and stops\n" })
  has_not(out, "consumer saw the sentinel and stops\n.*consumed item")
  assert.equal(11, #lines_of(out))
end }

E["queue_classes.lua"] = { args = { "5" }, check = function(out)
  local put = matching(out, "^Process Producer : item (%d+) appended to queue Producer%-1$")
  local got = matching(out, "^Process Consumer : item (%d+) popped by Consumer%-2$")
  assert.equal(5, #put)
  assert.equal(5, #got)
  for i = 1, 5 do assert.equal(put[i][1], got[i][1]) end   -- first in, first out
  local sizes = matching(out, "^The size of queue is (%d+)$")
  assert.equal(5, #sizes)
  for _, caps in ipairs(sizes) do assert(tonumber(caps[1]) <= 5, out) end
  -- The consumer stops once the producer is done and nothing is left: after its
  -- last pop (the two processes' lines interleave in any order otherwise).
  assert.equal(1, count(out, "the queue is empty"))
  local last_pop = 0
  for at in out:gmatch("()popped by Consumer%-2") do last_pop = at end
  assert.is_true(out:find("the queue is empty\n", 1, true) > last_pop, out)
end }

E["pipe_throughput.lua"] = { args = { "2000" }, check = check_throughput("Pipe") }
E["queue_throughput.lua"] = { args = { "2000" }, check = check_throughput("Queue") }
E["joinable_queue_throughput.lua"] = { args = { "2000" }, check = check_throughput("JoinableQueue") }

---------------------------------------------------------------- pools
E["pool_squares_serial.lua"] = { check = function(out)
  exactly(out, "{1, 4, 9, 16, 25}\n")
end }

E["pool_squares.lua"] = { check = function(out)
  local found = matching(out, "^Worker process id for (%d): (%d+)$")
  each_once(found, 5, "worker lines")
  local pids = {}
  for _, caps in ipairs(found) do pids[caps[2]] = true end
  local n = 0
  for _ in pairs(pids) do n = n + 1 end
  assert(n >= 1 and n <= cpus, "more workers than the pool has:\n" .. out)
  has(out, "\n?{1, 4, 9, 16, 25}\n")
  assert.equal(6, #lines_of(out))
end }

E["pool_map_close_join.lua"] = { check = function(out)
  exactly(out, "Pool    : {" .. table.concat(seq(0, 99, function(i) return i * i end), ", ") .. "}\n")
end }

E["pool_apply_callback.lua"] = { check = function(out)
  local order = out:match("^results in completion order: {([%d, ]+)}\n")
  assert(order, out)
  local got = {}
  for v in order:gmatch("%d+") do got[#got + 1] = tonumber(v) end
  table.sort(got)
  local squares = seq(0, 9, function(i) return i * i end)
  assert.same(squares, got)
  has(out, "\nsorted: {" .. table.concat(squares, ", ") .. "}\n$")
end }

E["pool_apply_async.lua"] = { args = { "0.1" }, check = function(out)
  local want = {}
  for i, name in ipairs(range_names) do
    want[i] = string.format("%-8s %7d..%-7d %6d primes %%(worker %%d+%%)\n",
      name, (i - 1) * 2500 + 1, i * 2500, primes_per_range[i]):gsub("%.%.", "%%.%%.")
  end
  has(out, "^" .. table.concat(want) .. "2262 primes below 20001, in %d+%.%d%d s\n$")
end }

E["sincos_single.lua"] = { args = { "20000" }, check = check_sincos("^single process: ") }
E["sincos_two_processes.lua"] = { args = { "20000" }, check = check_sincos("^two processes: ") }
E["sincos_pool.lua"] = { args = { "20000" }, check = function(out)
  has(out, "^serial:   sum = 80000%.000 in %d+%.%d%d s\n")
  has(out, "\nparallel: sum = 80000%.000 in %d+%.%d%d s with " .. cpus .. " processes %([%d.]+x%)\n$")
end }

---------------------------------------------------------------- managers
E["manager_state.lua"] = { check = function(out)
  -- Four workers: three visits each, one error from w2; 4 x 4 updates logged.
  exactly(out, "visits: 12\nerrors: 1\nevents: 16\n")
end }

E["manager_server_process.lua"] = { check = function(out)
  exactly(out, 'd[1] = "1", d["2"] = 2, d[0.25] = false, #d = 3\n' ..
    "l = {9, 8, 7, 6, 5, 4, 3, 2, 1, 0}\n")
end }

E["manager_dict_processes.lua"] = { check = function(out)
  local found = matching(out, "^key = (%d) value = (%d+)$")
  assert.equal(10, #found)
  local seen = {}
  for _, caps in ipairs(found) do
    local k, v = tonumber(caps[1]), tonumber(caps[2])
    assert(not seen[k] and v == 2 * k, out)
    seen[k] = true
  end
  has(out, "\nResults: {" .. table.concat(seq(0, 9, function(i) return i .. ": " .. 2 * i end), ", ") .. "}\n$")
end }

E["manager_condition.lua"] = { args = { "5" }, check = function(out)
  in_order(out, seq(1, 5, function(i) return "producer appended " .. i .. " %(list length %d%)\n" end))
  in_order(out, seq(1, 5, function(i) return "consumer took " .. i .. "\n" end))
  has(out, "\nleft in the list: 0\n$")
  assert.equal(11, #lines_of(out))
end }

E["manager_pool_dict_lock.lua"] = { args = { "0.1" }, check = function(out)
  local want = {}
  for i, name in ipairs(range_names) do
    want[i] = string.format("%-8s %7d..%-7d %6d primes\n",
      name, (i - 1) * 2500 + 1, i * 2500, primes_per_range[i]):gsub("%.%.", "%%.%%.")
  end
  has(out, "^" .. table.concat(want) .. "tasks done: 8\n2262 primes below 20001, in %d+%.%d%d s\n$")
end }

E["shared_memory.lua"] = { check = function(out)
  exactly(out, "the other process saw 101 202 303 404\nnow 101 202 303 404\n")
end }

describe("examples", function()
  it("each example in examples/ has an expected-output entry here, and each entry an example", function()
    local files = example_files()
    local present = {}
    for _, name in ipairs(files) do
      present[name] = true
      assert(E[name], "examples/" .. name .. " has no expected-output entry in spec/examples_spec.lua")
    end
    for name in pairs(E) do
      assert(present[name], "spec/examples_spec.lua has an entry for examples/" .. name .. ", which does not exist")
    end
  end)

  it("examples/README.md maps every example, and every file it links exists", function()
    local readme = assert(H.read_file("examples/README.md"))
    local linked = {}
    for target in readme:gmatch("%]%(([%w_]+%.lua)%)") do linked[target] = true end
    for _, name in ipairs(example_files()) do
      assert(linked[name], "examples/" .. name .. " is not in examples/README.md")
    end
    for name in pairs(linked) do
      assert(H.read_file("examples/" .. name), "examples/README.md links " .. name .. ", which does not exist")
    end
  end)

  it("each example opens with a one-line comment naming what it shows and the program it mirrors", function()
    local sources = { ["tutorial"] = true, ["Python's documentation"] = true, ["beyond the tutorials"] = true }
    for _, name in ipairs(example_files()) do
      local first = assert(H.read_file("examples/" .. name)):match("^[^\n]*")
      local source = first:match("^%-%- .+ %(([^:()]+): .+%)%.$")
      assert(sources[source], "examples/" .. name .. ": first line " .. first)
    end
  end)

  for _, name in ipairs(example_files()) do
    local entry = E[name]
    local path = "examples/" .. name
    if entry then
      it(path .. " prints what it should and leaves nothing behind", function()
        -- The example's pid, written by a chunk that runs before the script.
        local pidfile = os.tmpname()
        finally(function() os.remove(pidfile) end)
        local args = { "-e", string.format("local f = io.open(%q, 'w'); f:write(mp.getpid()); f:close()", pidfile), path }
        for _, a in ipairs(entry.args or {}) do args[#args + 1] = a end
        local r = H.run{ args = args, timeout = entry.timeout or 30 }
        assert.equal(0, r.status, "exit status " .. tostring(r.status) .. "; stderr:\n" .. tostring(r.stderr))
        assert.equal("", r.stderr)
        entry.check(r.stdout)
        -- What an example makes in its main process carries its pid: /dev/shm
        -- names and Manager socket directories must be gone once it has ended.
        local pid = assert(tonumber(H.read_file(pidfile)), "no pid written")
        local left = {}
        for _, dir in ipairs { "/dev/shm", os.getenv("TMPDIR") or "/tmp" } do
          local p = assert(io.popen("ls " .. H.quote(dir)))
          for name in p:lines() do
            if name:find("%f[%d]" .. pid .. "%f[%D]") and (name:find("^psm_") or name:find("^mplua%-")) then
              left[#left + 1] = dir .. "/" .. name
              os.execute("rm -rf " .. H.quote(dir .. "/" .. name))   -- the next test starts clean
            end
          end
          p:close()
        end
        assert(#left == 0, path .. " left behind: " .. table.concat(left, ", "))
      end)
    end
  end
end)

--[[
mp.busted: busted's command-line runner with the spec files spread over N
processes. `mplua-busted -j N [busted options] [paths]` is this module's main()
(docs/busted.md).

How it runs:
- This process (the coordinator) parses the command line with busted's own
  modules (cli, .busted configuration, -C, --lpath/--cpath, -e), finds the spec
  files as busted does, and loads the output handler into a busted core of its
  own, which never runs a test.
- Each spec file runs in a process of its own, an mp.Process forked from the
  coordinator, at most N at a time. There a fresh busted core runs that one file
  as `busted file` would (helper, filters, file loaders, execute), and every
  event it publishes about files, blocks and tests is copied, as plain data,
  to the coordinator over an mp.Pipe.
- The coordinator publishes those events again to its own core, file after
  file in the order busted would have run them, so the report is the output
  handler's own (utfTerminal, plainTerminal, TAP, json, junit...) with one
  summary line and exact counts.
- A file whose process ends before it reported its end (os.exit, a crash, a
  signal) fails alone: an error naming the file, and the test that was running
  if any, is published in place of what was lost. The other files go on.
]]
local mp = require "mp"
local process = require "mp.process"

local M = {}

-- Options busted has that this runner refuses rather than ignore (docs/busted.md).
local UNSUPPORTED = {
  coverage = "--coverage: each process would write its own LuaCov statistics over the others'",
  ["coverage-config-file"] = "--coverage-config-file: --coverage is not supported",
}

-- Event channels copied from a file's process; suite, register and exit stay there.
local FORWARDED = { file = true, describe = true, test = true, pending = true,
                    failure = true, error = true }

local ELEMENT = "__mp_busted_element"   -- marks an element reference in a copied event

local app = "mplua-busted"

local function usage_error(msg)
  io.stderr:write(app, ": error: ", msg, "\n")
  return 1
end

--[[
Takes -j N, -jN, --jobs=N and --jobs N out of args. Returns the job count (nil
when not given) and the rest, with arg[0] and below kept, for busted's parser.
]]
function M.split_jobs(args)
  local rest, jobs = {}, nil
  local i = 0
  while args[i - 1] ~= nil do i = i - 1 end
  for k = i, 0 do rest[k] = args[k] end
  local k = 1
  local function take(value, opt)
    local n = math.tointeger(tonumber(value))
    if n == nil or n < 1 then
      error(string.format("argument to %s must be a positive integer, got '%s'", opt, tostring(value)), 0)
    end
    jobs = n
  end
  while k <= #args do
    local a = args[k]
    if a == "--" then
      for j = k, #args do rest[#rest + 1] = args[j] end
      break
    elseif a == "-j" or a == "--jobs" then
      if args[k + 1] == nil then error("option " .. a .. " needs a number", 0) end
      take(args[k + 1], a)
      k = k + 1
    elseif a:match("^%-j.") then
      take(a:sub(3), "-j")
    elseif a:match("^%-%-jobs=") then
      take(a:sub(8), "--jobs")
    else
      rest[#rest + 1] = a
    end
    k = k + 1
  end
  return jobs, rest
end

-- A plain copy of v: tables without metatables, functions dropped, other values as strings.
local function plain(v, seen, depth)
  local t = type(v)
  if t == "nil" or t == "boolean" or t == "number" or t == "string" then return v end
  if t == "function" then return nil end
  if t ~= "table" then return tostring(v) end
  seen = seen or {}
  if seen[v] then return seen[v] end
  if (depth or 0) > 32 then return tostring(v) end
  local copy = {}
  seen[v] = copy
  for k, x in next, v do
    local tk = type(k)
    if tk == "string" or tk == "number" or tk == "boolean" then
      copy[k] = plain(x, seen, (depth or 0) + 1)
    end
  end
  return copy
end

-- ---------------------------------------------------------------------------
-- In a file's process
-- ---------------------------------------------------------------------------

--[[
Event encoder for one busted core: an element (a context busted knows: a file,
describe, test, hook, or the root) becomes a reference by number carrying its
current fields; its parent is sent along the first time, so the coordinator can
rebuild the tree that busted's output handlers walk (busted.parent).
]]
local function element_encoder(busted)
  local ids, n = setmetatable({}, { __mode = "k" }), 0
  local root = busted.context.get()
  local function is_element(t)
    return t == root or busted.context.parent(t) ~= nil
  end
  local function fields(e)
    local copy = {}
    for k, v in next, e do
      if type(k) == "string" and k ~= "env" and k ~= "run" and type(v) ~= "function" then
        -- Lists of child blocks (ctx.it, ctx.before_each...) are not the element's data.
        if not (type(v) == "table" and type(v[1]) == "table" and is_element(v[1])) then
          copy[k] = plain(v)
        end
      end
    end
    return copy
  end
  local ref
  function ref(e)
    if e == root then return { [ELEMENT] = 0 } end
    local id, parent = ids[e], nil
    if id == nil then
      n = n + 1
      id = n
      ids[e] = id
      parent = ref(busted.context.parent(e))
    end
    return { [ELEMENT] = id, fields = fields(e), parent = parent }
  end
  return function(v)
    if type(v) == "table" and is_element(v) then return ref(v) end
    return plain(v)
  end
end

-- Runs one spec file under a fresh busted core; every event goes out on conn.
local function run_file(job, conn, opts)
  process.become_main()
  local cli = opts.cli
  local function send(msg) conn:send(msg) end

  local busted = require "busted.core"()
  local encode = element_encoder(busted)
  local publish = busted.publish
  local list = cli.list
  -- Copied where busted publishes, before any subscriber runs or stops the event.
  function busted.publish(channel, ...)
    local top = channel[1]
    if FORWARDED[top] and not (list and (top == "file" or top == "describe" or top == "test")) then
      local n = select("#", ...)
      local args = { ... }
      for i = 1, n do args[i] = encode(args[i]) end
      send({ "event", { channel[1], channel[2] }, args, n })
    end
    return publish(channel, ...)
  end
  -- busted's public module binds itself to one core: a fresh one for this core.
  package.loaded.busted, package.loaded["busted.init"] = nil, nil
  require "busted"(busted)

  if not cli["auto-insulate"] then busted.register("file", "file", {}) end
  if cli.lazy then
    busted.register("setup", "lazy_setup")
    busted.register("teardown", "lazy_teardown")
  end
  -- busted's runner: with --no-keep-going, skip everything after the first error.
  local quit = not cli["keep-going"]
  busted.subscribe({ "error" }, function() busted.skipAll = quit; return nil, true end)
  busted.subscribe({ "failure" }, function() busted.skipAll = quit; return nil, true end)
  busted.sort = cli["sort-tests"]
  busted.randomize = cli["shuffle-tests"]
  busted.randomseed = opts.seed
  require "busted.languages.en"
  if cli.lang ~= "en" then require("busted.languages." .. cli.lang) end
  require "busted.luajit"()

  if list then
    -- --list prints the test names from busted's filter; they go to the
    -- coordinator so that files do not mix their lines.
    _G.print = function(...)
      local parts = table.pack(...)
      for i = 1, parts.n do parts[i] = tostring(parts[i]) end
      send({ "out", table.concat(parts, "\t", 1, parts.n) .. "\n" })
    end
  end

  if cli.helper and cli.helper ~= "" then
    local ok, err = require "busted.modules.helper_loader"()(busted, cli.helper, {
      verbose = cli.verbose, language = cli.lang, arguments = cli.Xhelper,
    })
    if not ok then
      send({ "fatal", "failed running the specified helper (" .. cli.helper .. "), error: " .. tostring(err) })
      return
    end
  end

  require "busted.modules.filter_loader"()(busted, {
    tags = cli.tags, excludeTags = cli["exclude-tags"], filter = cli.filter,
    filterOut = cli["filter-out"], list = cli.list, nokeepgoing = quit,
    suppressPending = cli["suppress-pending"],
  })
  local load_files = require "busted.modules.test_file_loader"(busted, cli.loaders)
  load_files({ job.file }, cli.pattern, {
    excludes = cli["exclude-pattern"], verbose = cli.verbose, recursive = cli.recursive,
  })
  require "busted.execute"(busted)(1, { seed = cli.seed, shuffle = false, sort = false })
  busted.publish({ "exit" })
  send({ "done" })
end

-- ---------------------------------------------------------------------------
-- In the coordinator
-- ---------------------------------------------------------------------------

local signal_names = {}
for name, num in pairs(mp.signals) do
  if not signal_names[num] or #name < #signal_names[num] then signal_names[num] = name end
end

local function describe_end(code, reported_done)
  if code == nil then return "ended in an unknown way" end
  if code < 0 then
    return string.format("was killed by signal %d (%s)", -code, signal_names[-code] or "?")
  end
  if reported_done then return string.format("exited with status %d after its tests", code) end
  return string.format("exited with status %d before the file ended", code)
end

--[[
The replay side: rebuilds each file's elements under the coordinator's root
and publishes the file's events to the coordinator's busted core.
]]
local function replayer(busted)
  local ctx = busted.context
  local root = ctx.get()
  local R = { handler_errors = 0 }

  -- Puts child under parent in busted's context tree (busted.parent(child) == parent).
  local function attach(child, parent)
    if parent == root then
      ctx.attach(child)
    else
      ctx.push(parent)
      ctx.attach(child)
      ctx.pop()
    end
  end

  local function proxy(job, ref)
    local id = ref[ELEMENT]
    if id == 0 then return root end
    local p = job.proxies[id]
    if p == nil then
      p = {}
      job.proxies[id] = p
      attach(p, ref.parent and proxy(job, ref.parent) or root)
    end
    for k, v in pairs(ref.fields or {}) do p[k] = v end
    return p
  end

  local function decode(job, v)
    if type(v) == "table" and v[ELEMENT] ~= nil then return proxy(job, v) end
    return v
  end

  local function channel_of(e)
    local d = e.descriptor
    if d == "it" or d == "pending" then return "test" end
    return d
  end

  -- Publishes one event, keeping the list of blocks open in this file.
  local function emit(job, channel, args, n)
    local head, tail = channel[1], channel[2]
    if (head == "file" or head == "describe" or head == "test") and type(args[1]) == "table" then
      if tail == "start" then
        job.open[#job.open + 1] = args[1]
      elseif tail == "end" then
        for i = #job.open, 1, -1 do
          if job.open[i] == args[1] then table.remove(job.open, i); break end
        end
      end
    end
    if (head == "error" or head == "failure") and type(args[1]) == "table" then
      -- A file busted could not load has no trace: give the handlers (TAP prints
      -- the trace's file and line) the place the message names.
      local e, trace = args[1], args[4]
      if not e.trace and not (type(trace) == "table" and trace.short_src) then
        local msg = type(args[3]) == "string" and args[3] or ""
        local file, line = msg:match("^([^\n]-):(%d+): ")
        trace = type(trace) == "table" and trace or {}
        trace.short_src = file or job.file
        trace.currentline = tonumber(line) or 0
        args[4] = trace
        n = math.max(n, 4)
      end
    end
    -- busted runs subscribers under busted.safe; here an output handler that
    -- raises loses this event only, and counts as an error.
    local ok, err = pcall(busted.publish, channel, table.unpack(args, 1, n))
    if not ok then
      io.stderr:write(app, ": error: the output handler failed on ", channel[1], " ",
                      tostring(channel[2]), " of ", job.file, ": ", tostring(err), "\n")
      R.handler_errors = R.handler_errors + 1
    end
  end

  function R.event(job, msg)
    local args, n = msg[3], msg[4]
    for i = 1, n do args[i] = decode(job, args[i]) end
    emit(job, msg[2], args, n)
  end

  --[[
  A file whose process ended without reporting its end: an error on the test
  that was running (or on the file), then the ends of the blocks still open.
  ]]
  function R.lost(job, reason)
    local message = job.file .. ": the process running this spec file " .. reason
    if #job.open == 0 then
      local f = { descriptor = "file", name = job.file, attributes = {} }
      attach(f, root)
      emit(job, { "file", "start" }, { f }, 1)
    end
    local e = job.open[#job.open]
    local parent = ctx.parent(e)
    local trace = {}
    for k, v in pairs(e.trace or {}) do trace[k] = v end
    trace.short_src = trace.short_src or job.file
    trace.currentline = trace.currentline or 0
    trace.message = message
    trace.traceback = trace.traceback or ""
    emit(job, { "error", e.descriptor }, { e, parent, message, trace }, 4)
    while #job.open > 0 do
      local top = job.open[#job.open]
      if channel_of(top) == "test" then
        emit(job, { "test", "end" }, { top, ctx.parent(top), "error" }, 3)
      else
        emit(job, { channel_of(top), "end" }, { top, ctx.parent(top) }, 2)
      end
    end
  end

  return R
end

--[[
Runs the files once (one busted "run" of --repeat), N at a time, and replays
their events in file order: the first unfinished file's events as they come,
the others' when their turn comes. Returns nil, or an error message that ends
the whole run (a helper that cannot be loaded).
]]
local function run_once(busted, files, opts, R)
  local jobs = {}
  for i, f in ipairs(files) do jobs[i] = { file = f, proxies = {}, open = {}, queue = {} } end
  local next_start, next_replay = 1, 1
  local running = {}
  local fatal
  local stop = false   -- --no-keep-going saw an error: start no more files

  local function start(job)
    local r, w = mp.Pipe(false)
    local p = mp.Process{ target = run_file, args = { job, w, opts }, name = "busted " .. job.file }
    p:start()
    w:close()
    job.proc, job.conn = p, r
    running[#running + 1] = job
  end

  local function take(job, msg)
    local kind = msg[1]
    if kind == "done" then
      job.done = true
    elseif kind == "fatal" then
      fatal = fatal or msg[2]
    else
      if kind == "event" and (msg[2][1] == "error" or msg[2][1] == "failure") and opts.quit then
        stop = true
      end
      job.queue[#job.queue + 1] = msg
    end
  end

  -- Takes every message waiting on the job's pipe (EOF or a bad message ends it).
  local function drain(job)
    while job.conn ~= nil and job.conn:poll() do
      local ok, msg = pcall(job.conn.recv, job.conn)
      if not ok then
        if not mp.EOFError:is(msg) then job.garbled = tostring(msg) end
        job.conn:close()
        job.conn = nil
      else
        take(job, msg)
      end
    end
  end

  local function replay(job)
    local queue = job.queue
    job.queue = {}
    for _, msg in ipairs(queue) do
      if msg[1] == "out" then io.write(msg[2]) else R.event(job, msg) end
    end
  end

  local function finish(job)
    local code = job.proc.exitcode
    job.proc:close()
    if job.conn then job.conn:close(); job.conn = nil end
    if not job.done or code ~= 0 then
      local reason = describe_end(code, job.done)
      if job.garbled then reason = reason .. " (" .. job.garbled .. ")" end
      job.lost = reason
    end
    job.finished = true
  end

  local ok, err = pcall(function()
    while next_replay <= #jobs do
      while #running < opts.jobs and next_start <= #jobs and not stop and not fatal do
        start(jobs[next_start])
        next_start = next_start + 1
      end
      if #running == 0 then break end
      local sources = {}
      for _, job in ipairs(running) do
        if job.conn then sources[#sources + 1] = job.conn end
        sources[#sources + 1] = job.proc.sentinel
      end
      mp.wait(sources)
      for i = #running, 1, -1 do
        local job = running[i]
        drain(job)
        if not job.proc:is_alive() then
          drain(job)   -- what it sent before it ended is all there now
          finish(job)
          table.remove(running, i)
        end
      end
      if fatal then break end
      while next_replay <= #jobs do
        local job = jobs[next_replay]
        replay(job)
        if not job.finished then break end
        if job.lost and not opts.list then R.lost(job, job.lost) end
        next_replay = next_replay + 1
      end
    end
  end)
  if not ok or fatal then
    for _, job in ipairs(running) do
      if job.proc:is_alive() then job.proc:terminate() end
      job.proc:join()
    end
  end
  if not ok then error(err, 0) end
  return fatal
end

--[[
main(args): the whole command; args as Lua's `arg`. Returns the exit status:
0 when every test passed, 1 otherwise (as busted).
]]
function M.main(args)
  local ok_split, jobs, rest = pcall(M.split_jobs, args)
  if not ok_split then return usage_error(jobs) end

  local term = require "term"
  local tablex = require "pl.tablex"
  local path = require "pl.path"
  local utils = require "busted.utils"
  local isatty = io.type(io.stdout) == "file" and term.isatty(io.stdout)
  local options = tablex.update(require "busted.options", { standalone = false })
  options.output = options.output or (isatty and "utfTerminal" or "plainTerminal")

  local busted = require "busted.core"()
  local cli = require "busted.modules.cli"(options)
  require "busted"(busted)
  cli:set_name(app)

  -- --lua re-runs busted under another interpreter: done here, with -j kept.
  local run_ignore = {}
  for k, v in pairs(rest) do run_ignore[k] = v end
  table.insert(run_ignore, 1, "--ignore-lua")
  local help = false
  for _, a in ipairs(rest) do help = help or a == "-h" or a == "--help" end
  local cliArgs, err = cli:parse(run_ignore)
  if help then
    -- busted's parser answers --help with its usage as an error message.
    local prefix = "^" .. app:gsub("%p", "%%%0") .. ": error: "
    local usage = (err or ""):gsub(prefix, ""):gsub("; re%-run with %-%-help for usage%.$", "")
    io.write("Usage: ", app, " [-j N | --jobs=N] [busted options] [ROOT-1 [ROOT-2 [...]]]\n\n",
      "Runs busted with the spec files spread over N processes, one per file\n",
      "(N = mp.cpu_count() by default), and prints one merged report.\n",
      "  -j, --jobs=N                run N spec files at a time\n",
      "busted's options follow, except -c/--coverage and --coverage-config-file.\n\n",
      usage, "\n")
    return 0
  end
  if not cliArgs then
    io.stderr:write(err .. "\n")
    return 1
  end
  local ignore_lua = false
  for _, a in ipairs(rest) do if a == "--ignore-lua" then ignore_lua = true end end
  if cliArgs.lua and not ignore_lua then
    local quote = function(s) return "'" .. tostring(s):gsub("'", "'\\''") .. "'" end
    local cmd = { quote(cliArgs.lua), quote(rest[0]), "--ignore-lua" }
    if jobs then cmd[#cmd + 1] = "--jobs=" .. jobs end
    for _, a in ipairs(rest) do cmd[#cmd + 1] = quote(a) end
    local _, _, code = os.execute(table.concat(cmd, " "))
    return code or 1
  end

  if cliArgs.version then
    print(busted.version)
    return 0
  end
  for key, why in pairs(UNSUPPORTED) do
    if cliArgs[key] then return usage_error(why .. " (see docs/busted.md)") end
  end

  local _, cderr = path.chdir(path.normpath(cliArgs.directory))
  if cderr then return usage_error(cderr) end

  if #cliArgs.lpath > 0 then package.path = (cliArgs.lpath .. ";" .. package.path):gsub(";;", ";") end
  if #cliArgs.cpath > 0 then package.cpath = (cliArgs.cpath .. ";" .. package.cpath):gsub(";;", ";") end
  -- -e runs here, once, before any file's process starts (they inherit what it did).
  for _, v in ipairs(cliArgs.e) do assert(load(v, "=(command line)"))() end

  -- The coordinator's core: output handler and counts, as busted's runner.
  local failures, errors = 0, 0
  local quit = not cliArgs["keep-going"]
  busted.subscribe({ "error", "output" }, function(element, _, message)
    io.stderr:write(app .. ": error: Cannot load output library: " .. element.name .. "\n" .. message .. "\n")
    return nil, true
  end)
  busted.subscribe({ "error" }, function()
    errors = errors + 1
    busted.skipAll = quit
    return nil, true
  end)
  busted.subscribe({ "failure" }, function(element)
    if element.descriptor == "it" then failures = failures + 1 else errors = errors + 1 end
    busted.skipAll = quit
    return nil, true
  end)
  busted.sort = cliArgs["sort-tests"]
  busted.randomize = cliArgs["shuffle-tests"]
  busted.randomseed = tonumber(cliArgs.seed) or utils.urandom() or os.time()

  require "busted.modules.output_handler_loader"()(busted, cliArgs.output, {
    defaultOutput = options.output,
    enableSound = cliArgs["enable-sound"],
    verbose = cliArgs.verbose,
    suppressPending = cliArgs["suppress-pending"],
    language = cliArgs.lang,
    deferPrint = cliArgs["defer-print"],
    arguments = cliArgs.Xoutput,
  })

  local files = {}
  if cliArgs.ROOT then
    local _, _, find = require "busted.modules.test_file_loader"(busted, cliArgs.loaders)
    files = find(cliArgs.ROOT, cliArgs.pattern, {
      excludes = cliArgs["exclude-pattern"], verbose = cliArgs.verbose, recursive = cliArgs.recursive,
    })
    if #files == 0 then
      local s = require "say"
      local pattern = cliArgs.pattern[1]
      if #cliArgs.pattern > 1 then pattern = "\n\t" .. table.concat(cliArgs.pattern, "\n\t") end
      busted.publish({ "error" }, {}, nil, s("output.no_test_files_match"):format(pattern), {})
    end
  end

  local opts = {
    cli = cliArgs,
    jobs = jobs or mp.cpu_count(),
    seed = busted.randomseed,
    quit = quit,
    list = cliArgs.list,
  }
  local R = replayer(busted)
  local root = busted.context.get()
  local runs = cliArgs["repeat"]
  for i = 1, runs do
    if i > 1 then busted.safe_publish("suite", { "suite", "reset" }, root, i, runs) end
    local order = { table.unpack(files) }
    if cliArgs["sort-files"] then
      table.sort(order)
    elseif cliArgs["shuffle-files"] then
      root.randomseed = busted.randomseed
      utils.shuffle(order, busted.randomseed)
    end
    local seed = busted.randomize and busted.randomseed or nil
    if opts.list or busted.safe_publish("suite", { "suite", "start" }, root, i, runs, seed) then
      local fatal = run_once(busted, order, opts, R)
      if fatal then
        io.stderr:write(app .. ": " .. fatal .. "\n")
        return 1
      end
    end
    if not opts.list then busted.safe_publish("suite", { "suite", "end" }, root, i, runs) end
    if busted.skipAll then break end
  end
  busted.publish({ "exit" })
  return (failures > 0 or errors > 0 or R.handler_errors > 0) and 1 or 0
end

return M

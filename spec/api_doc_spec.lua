--[[
The API reference (docs/api.md and docs/api/*.md) documents every public
name, found by walking the module at run time (spec/api_names.lua): every
field of `mp`, the methods and attributes of an instance of every class
(every proxy class a Manager's typeids make included), the class helper, the
names of `require "mp.mpi"` (in a subprocess: it initializes MPI), the
declarations of include/mplua.h, and the two commands. So a new public name
fails here until it has an entry.

An entry is a Markdown heading (level 3 or deeper) whose code spans name what it documents
(docs/api.md, "How to read an entry"): `mp.Queue(...)`, `Queue:put(...)`,
`Process.pid`; a name is a code span's text up to its first "(", "{", "[" or
space, and `Class:m` and `Class.m` are the same name.

Also checked: documented names that do not exist (a stale entry) for the
module and the walked classes; README.md links every docs/*.md and docs/api.md
every docs/api/*.md; and every relative link of the docs reaches a file and,
with "#anchor", a heading of it.
]]
local mp = require "mp"
local H = require "helper"
local A = require "api_names"

local function lines(path)
  local s = assert(H.read_file(path), "cannot read " .. path)
  local t = {}
  for line in (s .. "\n"):gmatch("([^\n]*)\n") do t[#t + 1] = line end
  return t, s
end

local function ls(dir, pattern)
  local p = io.popen("ls " .. H.quote(dir) .. " 2>/dev/null")
  local out = {}
  for name in p:lines() do
    if name:match(pattern) then out[#out + 1] = name end
  end
  p:close()
  table.sort(out)
  return out
end

local REFERENCE = { "docs/api.md" }
for _, f in ipairs(ls("docs/api", "%.md$")) do REFERENCE[#REFERENCE + 1] = "docs/api/" .. f end

-- The names the reference documents: { [normalized name] = "file:line" }.
local function documented()
  local names = {}
  for _, path in ipairs(REFERENCE) do
    local inside_code = false
    for n, line in ipairs((lines(path))) do
      if line:match("^```") then inside_code = not inside_code end
      if not inside_code and line:match("^###+%s") then
        for span in line:gmatch("`([^`]+)`") do
          local name = span:match("^([^%(%{%[%s]+)")
          if name then names[(name:gsub(":", "."))] = names[(name:gsub(":", "."))] or (path .. ":" .. n) end
        end
      end
    end
  end
  return names
end

local function normal(name) return (name:gsub(":", ".")) end

-- Error classes: mp.Error and its subclasses.
local function is_error_class(v)
  local c = v
  while type(c) == "table" do
    if c == mp.Error then return true end
    c = rawget(c, "super")
  end
  return false
end

-- The constructors of mp whose instances are walked under another class name.
local INSTANCE_OF = { RawValue = "Value", RawArray = "Array", Pipe = "Connection",
                      Manager = "Manager", SyncManager = "Manager", BaseManager = "Manager" }

--[[
Walks the module and an instance of every class; returns the names found
(api_names.names) and the set of class names walked. Everything made is
released before it returns (the helper checks for leftover processes).
]]
local function walk()
  local releases = {}
  local function keep(f) releases[#releases + 1] = f end
  local ok, names, classes = pcall(function()
    local pool = mp.Pool(1)
    keep(function() pool:terminate() end)
    local mgr = mp.Manager()
    keep(function() mgr:shutdown() end)
    local Custom = mp.BaseManager:extend("ApiDocCustom")
    Custom:register("Thing", function() return { x = 1 } end)
    local cm = Custom()
    keep(function() cm:shutdown() end)
    local sm = mp.SharedMemory { create = true, size = 16 }
    keep(function() sm:close(); sm:unlink() end)
    local ok1, remote = pcall(pool.apply, pool, function() error({ code = 1 }) end)
    local ok2, lost = pcall(pool.apply, pool, function() os.exit(3) end)
    assert(not ok1 and mp.RemoteError:is(remote) and not ok2 and mp.WorkerLostError:is(lost))
    local lock = mp.Lock()
    local makers = {
      Process = function() return mp.Process { target = function() end } end,
      ParentProcess = function() return require("mp.process").ParentProcess("MainProcess", mp.getpid()) end,
      Pool = function() return pool end,
      AsyncResult = function() local ar = pool:apply_async(function() end); ar:get(10); return ar end,
      Queue = function() return mp.Queue() end,
      SimpleQueue = function() return mp.SimpleQueue() end,
      JoinableQueue = function() return mp.JoinableQueue() end,
      Connection = function() return (mp.Pipe()) end,
      Lock = function() return mp.Lock() end,
      RLock = function() return mp.RLock() end,
      Semaphore = function() return mp.Semaphore() end,
      BoundedSemaphore = function() return mp.BoundedSemaphore() end,
      Condition = function() return mp.Condition() end,
      Event = function() return mp.Event() end,
      Barrier = function() return mp.Barrier(2) end,
      Guard = function() local g = lock:hold(); g:release(); return g end,
      Value = function() return mp.Value("i") end,
      Array = function() return mp.Array("i", 2) end,
      ["Array#c"] = function() return mp.Array("c", "ab") end,
      SharedMemory = function() return sm end,
      Manager = function() return mgr end,
      Context = function() return mp.get_context("fork") end,
      ["Error#remote"] = function() return remote end,
      ["Error#lost"] = function() return lost end,
      Proxy = function() return cm:Thing() end,
    }
    -- Every typeid of mp.Manager, its proxy walked under its class's name.
    local ARGS = { Value = { "i", 0 }, Array = { "i", 2 }, Barrier = { 1 } }
    for typeid in pairs(mp.Manager._registry) do
      local proxy = mgr[typeid](mgr, table.unpack(ARGS[typeid] or {}))
      local cname = getmetatable(proxy).__name
      makers[cname .. "#" .. typeid] = function() return proxy end
    end
    local classes = {}
    for key in pairs(makers) do classes[(key:gsub("#.*$", ""))] = true end
    return A.names(mp, makers), classes
  end)
  for i = #releases, 1, -1 do releases[i]() end
  if not ok then error(names, 0) end
  return names, classes
end

-- The names of `require "mp.mpi"`, from a subprocess; nil when the module is not built.
local function mpi_names()
  local so = io.open(H.build .. "/mp/mpi.so", "rb")
  if not so then return nil end
  so:close()
  local r = H.run {
    args = { "-e", "for k in pairs(require 'mp.mpi') do print(k) end" },
    env = { LUA_CPATH = H.build .. "/?.so;;", OMPI_ALLOW_RUN_AS_ROOT = "1",
            OMPI_ALLOW_RUN_AS_ROOT_CONFIRM = "1", ASAN_OPTIONS = "detect_leaks=0" },
    timeout = 60,
  }
  assert(r.status == 0, "require 'mp.mpi' failed: " .. r.stderr)
  local names = {}
  for k in r.stdout:gmatch("[^\n]+") do
    if k:match("^%a[%w_]*$") then names["mpi." .. k] = "a field of require 'mp.mpi'" end
  end
  return names
end

-- The declarations of include/mplua.h: functions, the hook type and the macros.
local function header_names()
  local names = {}
  local _, src = lines("include/mplua.h")
  src = src:gsub("/%*.-%*/", "")
  for name in src:gmatch("\n%s*int%s+([%w_]+)%s*%(") do names[name] = "a function of include/mplua.h" end
  for name in src:gmatch("\n%s*void%s+([%w_]+)%s*%(") do names[name] = "a function of include/mplua.h" end
  for name in src:gmatch("typedef[^;]-%(%*%s*([%w_]+)%)") do names[name] = "a type of include/mplua.h" end
  for name in src:gmatch("#define%s+(MPLUA_[%w_]+)") do names[name] = "a macro of include/mplua.h" end
  names.MPLUA_H = nil                                 -- the include guard
  return names
end

local function report(missing, what)
  table.sort(missing)
  return #missing .. " " .. what .. ":\n  " .. table.concat(missing, "\n  ")
end

describe("the API reference", function()
  local docs = documented()

  it("has an entry for every public name of mp and of an instance of every class", function()
    local names, classes = walk()
    for k in pairs(A.CLASS_FUNCTIONS) do names["Class." .. k] = "the class helper (lua/mp/class.lua)" end
    local missing = {}
    for name, where in pairs(names) do
      if not docs[normal(name)] then missing[#missing + 1] = name .. "  (" .. where .. ")" end
    end
    assert(#missing == 0, report(missing, "public names without an entry in docs/api.md or docs/api/*.md"))

    -- An entry for a name that does not exist is stale.
    local stale = {}
    local exists = {}
    for name in pairs(names) do exists[normal(name)] = true end
    for name, at in pairs(docs) do
      local cls, field = name:match("^([%w_]+)%.([%w_]+)$")
      if cls == "mp" and mp[field] == nil then stale[#stale + 1] = name .. "  (" .. at .. ")" end
      if cls and cls ~= "mp" and classes[cls] and not exists[name] and not A.CLASS_FUNCTIONS[field] then
        stale[#stale + 1] = name .. "  (" .. at .. ")"
      end
    end
    assert(#stale == 0, report(stale, "entries for names that do not exist"))
  end)

  it("covers every constructor of the module with an instance", function()
    local _, classes = walk()
    local missing = {}
    for k, v in pairs(mp) do
      if type(k) == "string" and k:match("^%u") and type(v) ~= "string" and not is_error_class(v) and not classes[k]
         and not classes[INSTANCE_OF[k] or ""] then
        missing[#missing + 1] = "mp." .. k
      end
    end
    assert(#missing == 0, report(missing, "constructors with no instance walked: add a maker in spec/api_doc_spec.lua"))
  end)

  local have_mpi = io.open(H.build .. "/mp/mpi.so", "rb")
  if have_mpi then have_mpi:close() end
  if not have_mpi then pending("mp/mpi.so not built: install libopenmpi-dev (scripts/setup does) and rebuild") end
  local it_mpi = have_mpi and it or function() end

  it_mpi("has an entry for every name of mp.mpi", function()
    local names = assert(mpi_names())
    assert.is_not_nil(next(names))
    local missing = {}
    for name in pairs(names) do if not docs[name] then missing[#missing + 1] = name end end
    for name, at in pairs(docs) do
      if name:match("^mpi%.") and not names[name] then missing[#missing + 1] = name .. " (stale: " .. at .. ")" end
    end
    assert(#missing == 0, report(missing, "mp.mpi names without an entry (or entries without a name)"))
  end)

  it("has an entry for every declaration of include/mplua.h and for both commands", function()
    local names = header_names()
    assert.is_not_nil(names.luaopen_mp)
    assert.is_not_nil(names.mplua_fork_hook)
    assert.is_not_nil(names.MPLUA_VERSION_NUM)
    names.mplua, names["mplua-busted"] = "a command", "a command"
    local missing = {}
    for name, where in pairs(names) do
      if not docs[name] then missing[#missing + 1] = name .. "  (" .. where .. ")" end
    end
    assert(#missing == 0, report(missing, "C API names or commands without an entry"))
  end)

  it("fails for a name it does not document (the check can fail)", function()
    assert.is_nil(documented()["mp.no_such_name"])
    local names = A.names({ no_such_name = 1 }, {})
    assert.equal("a field of the module table", names["mp.no_such_name"])
    local out = {}
    A.walk_instance(out, "Thing", setmetatable({}, { __index = { frob = function() end, _hidden = print } }))
    assert.same({ ["Thing:frob"] = "its metatable's __index" }, out)
  end)
end)

-- GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens.
local function slug(heading)
  local s = heading:lower():gsub("[^%w%s_%-]", ""):gsub("%s", "-")
  return s
end

local function anchors(path)
  local set, seen = {}, {}
  local inside_code = false
  for _, line in ipairs((lines(path))) do
    if line:match("^```") then inside_code = not inside_code end
    local text = not inside_code and line:match("^#+%s+(.-)%s*$")
    if text then
      local a = slug(text)
      if seen[a] then seen[a] = seen[a] + 1; a = a .. "-" .. seen[a] else seen[a] = 0 end
      set[a] = true
    end
  end
  return set
end

describe("the docs' links", function()
  local DOCS = { "README.md" }
  for _, f in ipairs(ls("docs", "%.md$")) do DOCS[#DOCS + 1] = "docs/" .. f end
  for _, f in ipairs(ls("docs/api", "%.md$")) do DOCS[#DOCS + 1] = "docs/api/" .. f end

  local function links_of(path)
    local _, s = lines(path)
    s = s:gsub("\n```.-\n```", "")                   -- not inside code blocks
    local out = {}
    for target in s:gmatch("%]%(([^%)%s]+)%)") do out[#out + 1] = target end
    return out
  end

  local function dir_of(path) return path:match("^(.*)/") or "." end

  it("README.md links every doc in docs/, and docs/api.md every page of docs/api/", function()
    local function linked(from, prefix)
      local set = {}
      for _, t in ipairs(links_of(from)) do set[(t:gsub("#.*$", ""))] = true end
      return function(file) return set[prefix .. file] end
    end
    local in_readme, in_index = linked("README.md", "docs/"), linked("docs/api.md", "api/")
    local missing = {}
    for _, f in ipairs(ls("docs", "%.md$")) do
      if not in_readme(f) then missing[#missing + 1] = "README.md does not link docs/" .. f end
    end
    for _, f in ipairs(ls("docs/api", "%.md$")) do
      if not in_index(f) then missing[#missing + 1] = "docs/api.md does not link docs/api/" .. f end
    end
    assert(#missing == 0, table.concat(missing, "\n"))
  end)

  it("reach a file, and a heading of it when they name an anchor", function()
    local bad = {}
    local cache = {}
    for _, path in ipairs(DOCS) do
      for _, target in ipairs(links_of(path)) do
        if not target:match("^%a[%w+.-]*:") then          -- not http:, mailto:...
          local file, anchor = target:match("^([^#]*)#?(.*)$")
          local full = file == "" and path or (dir_of(path) .. "/" .. file)
          full = full:gsub("/%./", "/"):gsub("^%./", "")
          while full:find("[^/]+/%.%./") do full = full:gsub("[^/]+/%.%./", "", 1) end
          local f = io.open(full, "rb")
          if not f then
            bad[#bad + 1] = path .. ": " .. target .. " (no file " .. full .. ")"
          else
            f:close()
            if anchor ~= "" and full:match("%.md$") then
              cache[full] = cache[full] or anchors(full)
              if not cache[full][anchor] then bad[#bad + 1] = path .. ": " .. target .. " (no such heading)" end
            end
          end
        end
      end
    end
    assert(#bad == 0, #bad .. " broken links:\n  " .. table.concat(bad, "\n  "))
  end)
end)

local mp = require "mp"
local H = require "helper"
local unistd = require "posix.unistd"
local poll = require "posix.poll"

local function rt(...) return mp.loads(mp.dumps(...)) end

local function is_nan(x) return x ~= x end

-- Reads everything from fd until EOF, failing instead of hanging.
local function read_all(fd, timeout)
  local chunks = {}
  while true do
    assert(poll.rpoll(fd, math.floor((timeout or 10) * 1000)) == 1, "timed out reading the pipe")
    local s = assert(unistd.read(fd, 65536))
    if s == "" then break end
    chunks[#chunks + 1] = s
  end
  return table.concat(chunks)
end

describe("mp.dumps/mp.loads scalars", function()
  it("round-trips nil, booleans, integers and floats keeping the subtype", function()
    local v = table.pack(rt(nil, true, false, 0, 1, -1, 127, -128, 128, -129, 2^31 | 0,
      -(2^31 | 0), 2^40 | 0, math.maxinteger, math.mininteger, 0.5, 1.0, -2.0, 1e308, 5e-324))
    assert.equal(20, v.n)
    assert.is_nil(v[1]); assert.is_true(v[2]); assert.is_false(v[3])
    local ints = { 0, 1, -1, 127, -128, 128, -129, 2^31 | 0, -(2^31 | 0), 2^40 | 0,
      math.maxinteger, math.mininteger }
    for i, x in ipairs(ints) do
      assert.equal(x, v[i + 3])
      assert.equal("integer", math.type(v[i + 3]))
    end
    for i, x in ipairs({ 0.5, 1.0, -2.0, 1e308, 5e-324 }) do
      assert.equal(x, v[i + 15])
      assert.equal("float", math.type(v[i + 15]))
    end
  end)

  it("keeps NaN, infinities and the sign of zero", function()
    local nan, inf, ninf, nzero, zero = rt(0 / 0, 1 / 0, -1 / 0, -0.0, 0.0)
    assert.is_true(is_nan(nan))
    assert.equal(math.huge, inf)
    assert.equal(-math.huge, ninf)
    assert.equal(-math.huge, 1 / nzero)
    assert.equal(math.huge, 1 / zero)
    assert.equal("float", math.type(zero))
  end)

  it("round-trips binary strings of every length class", function()
    for _, s in ipairs({ "", "a", "\0", "a\0b\255", string.rep("x", 255), string.rep("y", 256),
                         string.rep("\0\1\2", 70000) }) do
      assert.equal(s, rt(s))
    end
  end)

  it("round-trips a 100 MiB string", function()
    local s = string.rep("0123456789abcdef", 100 * 2^16)
    local m = mp.dumps(s)
    assert.is_true(#m > 100 * 2^20 and #m < 100 * 2^20 + 16)
    assert.is_true(mp.loads(m) == s)
  end)

  it("returns every value, trailing nils included, and nothing for no values", function()
    assert.equal(0, select("#", rt()))
    assert.equal(3, select("#", rt(nil, nil, nil)))
    local many = {}
    for i = 1, 1000 do many[i] = i end
    local back = table.pack(rt(table.unpack(many)))
    assert.equal(1000, back.n)
    assert.same(many, { table.unpack(back, 1, back.n) })
  end)
end)

describe("mp.dumps/mp.loads tables", function()
  it("deep-copies nested tables with every kind of key", function()
    local t = { 1, 2, "three", nil, 5, x = { y = { z = "deep" } }, [1.5] = "float key",
                [true] = "bool key", ["odd key"] = { 1 }, [-7] = "negative", [2^53] = "big" }
    local u = rt(t)
    assert.are_not.equal(t, u)
    assert.same(t, u)
    assert.equal("float", math.type(next({ [1.5] = 1 })))
  end)

  it("preserves shared references and cycles", function()
    local shared = { "shared" }
    local t = { a = shared, b = shared, list = { shared, shared } }
    t.self = t
    t.list.parent = t
    local u = rt(t)
    assert.equal(u, u.self)
    assert.equal(u, u.list.parent)
    assert.equal(u.a, u.b)
    assert.equal(u.a, u.list[1])
    assert.equal(u.a, u.list[2])
    assert.equal("shared", u.a[1])
    assert.are_not.equal(shared, u.a)
  end)

  it("keeps identity across the values of one message", function()
    local s = {}
    local a, b, c = rt(s, s, { s })
    assert.equal(a, b)
    assert.equal(a, c[1])
  end)

  it("keeps order and identity when scalars and objects mix", function()
    local t = { 1 }
    local f = function() return t end
    local v = table.pack(rt(1, "x", t, nil, t, f, 2.5, _G, math.sqrt, f))
    assert.equal(10, v.n)
    assert.equal(1, v[1]); assert.equal("x", v[2]); assert.is_nil(v[4])
    assert.equal(v[3], v[5]); assert.same({ 1 }, v[3])
    assert.equal(v[6], v[10]); assert.equal(v[3], v[6]())
    assert.equal(2.5, v[7]); assert.equal(_G, v[8]); assert.equal(math.sqrt, v[9])
  end)

  it("sends tables as keys, with shared identity", function()
    local k = { name = "key" }
    local t = { [k] = k }
    local u = rt(t)
    local key, value = next(u)
    assert.equal(key, value)
    assert.equal("key", key.name)
  end)

  it("sends metatables only for registered classes", function()
    local Point = {}
    Point.__index = Point
    function Point:norm2() return self.x * self.x + self.y * self.y end
    mp.register_class("spec.Point", Point)
    local p = rt(setmetatable({ x = 3, y = 4 }, Point))
    assert.equal(Point, getmetatable(p))
    assert.equal(25, p:norm2())
    local plain = rt(setmetatable({ x = 1 }, { __index = function() return "meta" end }))
    assert.is_nil(getmetatable(plain))
    assert.is_nil(plain.y)
  end)

  it("keeps the class of mp's error objects", function()
    local err = rt(mp.Empty("nothing there"))
    assert.is_true(mp.Empty:is(err))
    assert.equal("Empty: nothing there", tostring(err))
  end)

  it("checks register_class arguments", function()
    assert.has_error(function() mp.register_class("", {}) end,
      "bad argument #1 to 'register_class' (class name must be 1 to 255 bytes long)")
    assert.has_error(function() mp.register_class("x", "not a table") end)
  end)

  it("does not run metamethods while reading a table", function()
    local t = setmetatable({ real = 1 }, {
      __index = function() error("__index ran") end,
      __pairs = function() error("__pairs ran") end,
      __len = function() error("__len ran") end,
    })
    assert.same({ real = 1 }, rt(t))
  end)

  it("sends global tables by value, not by name", function()
    _G.serial_spec_global = { n = 1 }
    finally(function() _G.serial_spec_global = nil end)
    local u = rt(serial_spec_global)
    assert.are_not.equal(serial_spec_global, u)
    assert.same({ n = 1 }, u)
  end)
end)

describe("mp.dumps/mp.loads functions", function()
  it("sends closures with their upvalues by value", function()
    local k = 10
    local f = rt(function(x) return x * k end)
    assert.equal(70, f(7))
    k = 20
    assert.equal(70, f(7))
  end)

  it("keeps upvalues shared between closures of one message", function()
    local n = 0
    local function inc() n = n + 1 return n end
    local function get() return n end
    local inc2, get2 = rt(inc, get)
    inc2(); inc2()
    assert.equal(2, get2())
    assert.equal(0, n)
    local t = rt({ inc = inc, get = get })
    t.inc()
    assert.equal(1, t.get())
  end)

  it("sends recursive local functions", function()
    local function fact(n) if n <= 1 then return 1 end return n * fact(n - 1) end
    assert.equal(3628800, rt(fact)(10))
  end)

  it("sends library functions and modules by name", function()
    local sqrt, fmt, m, pr, out, g = rt(math.sqrt, string.format, math, print, io.stdout, _G)
    assert.equal(math.sqrt, sqrt)
    assert.equal(string.format, fmt)
    assert.equal(math, m)
    assert.equal(print, pr)
    assert.equal(io.stdout, out)
    assert.equal(_G, g)
    local f = rt(function(x) return math.sqrt(x) + select("#", string.byte("ab", 1, 2)) end)
    assert.equal(5, f(9))
  end)

  it("sends the Lua functions of loaded modules by name", function()
    local class = require "mp.class"
    local fresh = { helper = function() return "fresh" end }
    package.loaded["spec.fresh_module"] = fresh
    finally(function() package.loaded["spec.fresh_module"] = nil end)
    local a, b, m = rt(class.class, fresh.helper, fresh)
    assert.equal(class.class, a)
    assert.equal(fresh.helper, b)           -- a module loaded after earlier messages
    assert.equal(fresh, m)
  end)

  it("binds _ENV to the receiving state's globals", function()
    local f = rt(function() return serial_spec_env end)
    _G.serial_spec_env = "global"
    finally(function() _G.serial_spec_env = nil end)
    assert.equal("global", f())
  end)

  it("keeps a custom _ENV within one process", function()
    local env = { x = 42, math = math }
    local f = load("return x, math", "=sandbox", "t", env)
    local g = rt(f)
    local x, m = g()
    assert.equal(42, x)
    assert.equal(math, m)
    assert.equal(env, select(2, debug.getupvalue(g, 1)))
  end)

  it("sends a non-table _ENV as the receiver's globals", function()
    local f = load("return math ~= nil", "=odd", "t", "not a table")
    assert.is_false(f())                   -- indexes the string library here
    assert.is_true(rt(f)())
  end)

  it("keeps line information for tracebacks", function()
    local f = rt(function() error("from a sent function") end)
    local ok, err = pcall(f)
    assert.is_false(ok)
    assert.matches("serial_spec%.lua:%d+: from a sent function", err)
  end)
end)

describe("mp.dumps/mp.loads table layouts", function()
  -- Deep equality that also compares integer/float subtypes and table-valued keys' contents.
  local function same(a, b, seen)
    if type(a) ~= type(b) then return false end
    if type(a) ~= "table" then
      if a ~= a then return b ~= b end
      return a == b and math.type(a) == math.type(b)
    end
    seen = seen or {}
    if seen[a] then return seen[a] == b end
    seen[a] = b
    local n = 0
    for k, v in next, a do
      n = n + 1
      if type(k) == "table" then return false end
      if not same(v, rawget(b, k), seen) then return false end
    end
    for _ in next, b do n = n - 1 end
    return n == 0
  end
  local function check(t) assert.is_true(same(t, rt(t)), "round trip changed the table") end

  it("sends sequences whose keys live in the hash part", function()
    local t = { x = 1, y = 2, z = 3 }    -- a hash of four nodes, one free
    t[1] = "a"                           -- key 1 goes to the free node
    check(t)
    for i = 2, 40 do t[i] = i end
    check(t)
  end)

  it("sends tables whose integer keys were stored and removed (dead keys)", function()
    local t = { x = 1, y = 2, z = 3 }
    t[1] = "a"; t[2] = "b"; t[2] = nil   -- key 2 keeps its node, with a nil value
    check(t)
    local u = {}
    for i = 1, 100 do u[i] = i end
    for i = 100, 51, -1 do u[i] = nil end
    u.k = "v"
    check(u)
    assert.equal(50, #rt(u))
  end)

  it("sends arrays with holes, entries past the border and a moved array limit", function()
    check({ 1, 2, nil, 4 })
    check({ nil, nil, 3 })
    local t = {}
    for i = 1, 7 do t[i] = i end
    local _ = #t                        -- Lua 5.4 may now keep 7 as the array's limit
    t[10] = 10
    check(t)
    local big = {}
    for i = 1, 1000 do big[i] = i end
    big[500] = nil
    check(big)
  end)

  it("keeps every kind of plain value in an array", function()
    local t = { 0, -1, 127, 128, -129, 2^31 | 0, math.maxinteger, math.mininteger,
                0.5, -0.0, 1/0, -1/0, true, false, "", "x", string.rep("y", 41),
                string.rep("z", 300), { 1 }, math.sqrt }
    t[#t + 1] = 0/0
    local u = rt(t)
    assert.equal(#t, #u)
    for i = 1, #t - 1 do
      if type(t[i]) == "table" then assert.same(t[i], u[i])
      else
        assert.equal(t[i], u[i])
        assert.equal(math.type(t[i]), math.type(u[i]))
      end
    end
    assert.equal(-math.huge, 1 / u[10])
    assert.is_true(u[#u] ~= u[#u])
  end)

  it("sends arrays of every size, nested, shared and with a class", function()
    for _, n in ipairs { 1, 15, 16, 17, 1000, 65536, 65537, 200000 } do
      local t = {}
      for i = 1, n do t[i] = i * 3 end
      local u = rt(t)
      assert.equal(n, #u)
      assert.equal(3, u[1])
      assert.equal(n * 3, u[n])
    end
    local inner = {}
    for i = 1, 20 do inner[i] = { i, { i } } end
    check(inner)
    local shared = {}
    for i = 1, 20 do shared[i] = i end
    shared[21] = shared                -- the array refers to itself
    local u = rt({ shared, shared })
    assert.equal(u[1], u[2])
    assert.equal(u[1], u[1][21])
    assert.equal(20, u[1][20])
    local C = {}
    mp.register_class("spec.Vector", C)
    local v = setmetatable({}, C)
    for i = 1, 30 do v[i] = i + 0.5 end
    local w = rt(v)
    assert.equal(C, getmetatable(w))
    assert.equal(30.5, w[30])
  end)

  it("decodes string keys right whatever their length and however often they repeat", function()
    local keys = { "a", "ab", "abcdefg", "abcdefgh", "abcdefghi", string.rep("k", 16), string.rep("k", 17),
                   string.rep("q", 40), string.rep("q", 41), "a\0b", "\0" }
    -- equal first and last 8 bytes, different middles: the cache must compare them all
    keys[#keys + 1] = "AAAAAAAA" .. "x" .. "BBBBBBBB"
    keys[#keys + 1] = "AAAAAAAA" .. "y" .. "BBBBBBBB"
    keys[#keys + 1] = "AAAAAAAA" .. string.rep("m", 20) .. "BBBBBBBB"
    keys[#keys + 1] = "AAAAAAAA" .. string.rep("n", 20) .. "BBBBBBBB"
    local t = {}
    for i, k in ipairs(keys) do t[k] = i end
    for _ = 1, 3 do check(t) end
    for _, k in ipairs(keys) do check({ [k] = true }) end   -- a key at the very end of a message
    local many = {}
    for i = 1, 500 do many["key" .. i] = i end               -- more keys than the cache holds
    for _ = 1, 2 do check(many) end
  end)
end)

describe("values that cannot be sent", function()
  local co = coroutine.create(function() end)

  it("raise an error naming the type and the path", function()
    assert.has_error(function() mp.dumps(co) end, "value: cannot send a value of type thread")
    assert.has_error(function() mp.dumps(1, { handler = co }) end,
      "value[2].handler: cannot send a value of type thread")
    assert.has_error(function() mp.dumps({ a = { [3] = { ["odd key"] = co } } }) end,
      'value.a[3]["odd key"]: cannot send a value of type thread')
    assert.has_error(function() mp.dumps({ [co] = true }) end,
      "value[<key>]: cannot send a value of type thread")
    assert.has_error(function() mp.dumps({ 1, 2, function() return co end }) end,
      "value[3](upvalue co): cannot send a value of type thread")
  end)

  it("refuse foreign userdata and C functions outside package.loaded", function()
    local f = io.tmpfile()
    finally(function() f:close() end)
    assert.has_error(function() mp.dumps({ file = f }) end,
      "value.file: cannot send a value of type userdata")
    local wrapped = coroutine.wrap(function() end)
    assert.has_error(function() mp.dumps({ wrapped }) end,
      "value[1]: cannot send a value of type function (a C function that is not a field of a loaded module)")
  end)

  it("cap the nesting depth at 200 levels", function()
    local function nest(n)
      local root = {}
      local cur = root
      for _ = 2, n do cur[1] = {}; cur = cur[1] end
      return root
    end
    assert.equal(200, (function()
      local t, d = rt(nest(200)), 0
      while t do d = d + 1; t = t[1] end
      return d
    end)())
    local ok, err = pcall(mp.dumps, nest(201))
    assert.is_false(ok)
    assert.equal("value" .. string.rep("[1]", 200) .. ": nesting deeper than 200 levels", err)
    ok, err = pcall(mp.dumps, nest(100000))
    assert.is_false(ok)
    assert.matches("nesting deeper than 200 levels$", err)
  end)

  it("name long paths in full", function()
    local long = string.rep("long_name_", 10)
    local root = {}
    local cur = root
    for i = 1, 90 do cur[long] = { [i + 0.5] = {} }; cur = cur[long][i + 0.5] end
    cur[string.rep("odd key ", 20)] = { [true] = co }
    local expected = { "value" }
    for i = 1, 90 do expected[#expected + 1] = "." .. long .. "[" .. (i + 0.5) .. "]" end
    expected[#expected + 1] = '["' .. string.rep("odd key ", 20):sub(1, 60) .. '..."][true]'
    expected[#expected + 1] = ": cannot send a value of type thread"
    local ok, err = pcall(mp.dumps, root)
    assert.is_false(ok)
    assert.equal(table.concat(expected), err)
  end)

  it("leave the scratch buffer usable after an error", function()
    assert.has_error(function() mp.dumps(string.rep("x", 1000), co) end)
    assert.equal("ok", rt("ok"))
    -- a failure after many objects leaves a large memo behind (once a crash)
    local many = {}
    for i = 1, 100 do many[i] = { co = i == 100 and co or nil } end
    assert.has_error(function() mp.dumps(many) end)
    assert.same({ { 1 } }, rt({ { 1 } }))
  end)
end)

describe("environments (_ENV) across processes", function()
  -- Sends f to a child over a pipe; the child calls it and sends back what it returns.
  local function run_in(p, parent, f)
    parent:send(f)
    assert.is_true(parent:poll(10), "no answer from the child")
    return table.unpack(parent:recv())
  end

  local function server(child)
    return function()
      while true do
        assert(child:poll(10), "no request from the parent")
        local f = child:recv()
        if f == "stop" then break end
        child:send(table.pack(pcall(f)))
      end
    end
  end

  it("binds the child's copy of an environment that was on the stack at the fork", function()
    local env = setmetatable({ x = 42 }, { __index = _G })
    local parent, child = mp.Pipe()
    local p = mp.Process{ target = server(child) }
    -- start() runs in a function whose _ENV is env: env gets its id before the fork
    load("local p = ... p:start()", "=starter", "t", env)(p)
    env.x = 43                                -- after the fork: the child keeps its copy
    local ok, x, same_table = run_in(p, parent,
      load("return x, getmetatable(_ENV).__index == _G", "=task", "t", env))
    parent:send("stop")
    assert.equal(0, H.join(p))
    assert.is_true(ok)
    assert.equal(42, x)
    assert.is_true(same_table)
  end)

  it("falls back to the child's globals for an environment made after the fork", function()
    local parent, child = mp.Pipe()
    local p = mp.Process{ target = server(child) }
    p:start()
    local env = setmetatable({ x = 42 }, { __index = _G })
    local ok, x, has_math = run_in(p, parent, load("return x, math ~= nil", "=task", "t", env))
    parent:send("stop")
    assert.equal(0, H.join(p))
    assert.is_true(ok)
    assert.is_nil(x)
    assert.is_true(has_math)
  end)

  it("binds the globals for an environment id it does not know, never another table", function()
    local env = { x = 42 }
    local m = mp.dumps(load("return x, math", "=task", "t", env))
    -- the _ENV upvalue is the last value: tag 18 (T_ENV) and an 8-byte id
    assert.equal(18, m:byte(#m - 8))
    for _, id in ipairs { "\0\0\0\0\0\0\0\0", "\255\255\255\255\255\255\255\127", "\1\2\3\4\5\6\7\8" } do
      local x, mth = mp.loads(m:sub(1, -9) .. id)()
      assert.is_nil(x)
      assert.equal(math, mth)
    end
    assert.equal(42, (mp.loads(m)()))
  end)

  it("accepts an environment id only as an upvalue", function()
    assert.has_error(function() mp.loads("\2\1\18" .. string.rep("\0", 8)) end,
      "mp.loads: corrupt message (bad tag 18 at byte 2)")
    assert.has_error(function() mp.loads("\2\1\10\1\0\0\0\0\0\0\0\18" .. string.rep("\0", 8)) end,
      "mp.loads: corrupt message (bad tag 18 at byte 11)")
  end)
end)

describe("mp.loads on bad input", function()
  local function samples()
    local shared = { "s" }
    local t = { 1, 2.5, "str", shared, shared, x = { y = true }, [false] = -1e300 }
    t.cycle = t
    local k = 3
    local function f(x) return x + k end
    local function g() return f(1) end
    local n = 0
    local function inc() n = n + 1 return n end
    local function get() return n, k end
    return {
      mp.dumps(inc, get, { inc }),       -- a shared upvalue after authentic bytecode
      mp.dumps(t),
      mp.dumps(1, nil, "two", { 3 }),
      mp.dumps(f, g, math.sqrt, string, _G),
      mp.dumps(string.rep("z", 300), 2^40 | 0, -0.0),
    }
  end

  it("raises clear errors", function()
    assert.has_error(function() mp.loads("") end, "mp.loads: empty message")
    assert.has_error(function() mp.loads("\1\0") end,
      "mp.loads: unsupported message format version 1 (expected 2)")
    assert.has_error(function() mp.loads("\3\0") end,
      "mp.loads: unsupported message format version 3 (expected 2)")
    assert.has_error(function() mp.loads("\2\1") end, "mp.loads: truncated message")
    assert.has_error(function() mp.loads("\2\1\99") end,
      "mp.loads: corrupt message (bad tag 99 at byte 2)")
    assert.has_error(function() mp.loads(mp.dumps(1) .. "x") end,
      "mp.loads: trailing bytes after the message")
    -- a REF (tag 13) to offset 0, where no object is defined
    assert.has_error(function() mp.loads("\2\1\13" .. string.rep("\0", 8)) end,
      "mp.loads: reference to an undefined object")
    -- a table announcing more elements than the message holds
    assert.has_error(function() mp.loads("\2\1\10\255\255\255\127\0\0\0\0") end,
      "mp.loads: truncated message")
    assert.has_error(function() mp.loads({}) end)
  end)

  it("refuses function bytecode that fails authentication", function()
    local m = mp.dumps(function() return 1 end)
    -- the function's bytecode starts after version, count, tag and length (7 bytes)
    local i = 7 + 10
    local forged = m:sub(1, i - 1) .. string.char(m:byte(i) ~ 1) .. m:sub(i + 1)
    assert.has_error(function() mp.loads(forged) end,
      "mp.loads: function bytecode failed authentication (not sent by a process of this family)")
  end)

  it("raises or returns values for every truncation and bit flip, never crashes", function()
    for _, m in ipairs(samples()) do
      for n = 0, #m - 1 do
        local ok = pcall(mp.loads, m:sub(1, n))
        assert.is_false(ok)
      end
      for i = 1, #m do
        for _, bit in ipairs({ 0x01, 0x10, 0x80, 0xFF }) do
          local flipped = m:sub(1, i - 1) .. string.char(m:byte(i) ~ bit) .. m:sub(i + 1)
          local ok, err = pcall(mp.loads, flipped)
          if not ok then assert.matches("^mp%.loads: ", err) end
        end
      end
    end
  end)

  it("refuses unknown classes and modules", function()
    local m = mp.dumps(setmetatable({}, (function()
      local C = {}
      mp.register_class("spec.Gone", C)
      return C
    end)()))
    mp.register_class("spec.Gone", {})   -- the name now points at another metatable
    assert.is_table(mp.loads(m))
    -- T_MODULE "nosuchmod"
    local name = "nosuchmod"
    local msg = "\2\1\16" .. string.pack("<I4", #name) .. name
    assert.has_error(function() mp.loads(msg) end,
      "mp.loads: module 'nosuchmod' is not loaded in this process")
  end)
end)

describe("messages between processes", function()
  it("decodes in the parent what a child encoded", function()
    local r, w = unistd.pipe()
    local p = mp.Process{ target = function()
      unistd.close(r)
      local base = 100
      local t = { list = { 1, 2, 3 }, f = function(x) return x + base end, sqrt = math.sqrt }
      t.self = t
      local m = mp.dumps(t, -0.0, "done")
      local off = 1
      while off <= #m do off = off + assert(unistd.write(w, m:sub(off, off + 65535))) end
      unistd.close(w)
    end }
    p:start()
    unistd.close(w)
    local ok, err = pcall(function()
      local t, z, s = mp.loads(read_all(r))
      assert.equal(t, t.self)
      assert.same({ 1, 2, 3 }, t.list)
      assert.equal(142, t.f(42))
      assert.equal(math.sqrt, t.sqrt)
      assert.equal(-math.huge, 1 / z)
      assert.equal("done", s)
    end)
    unistd.close(r)
    assert.equal(0, H.join(p))
    assert(ok, err)
  end)

  it("refuses bytecode from an unrelated process, accepts its data", function()
    local r = H.run_script([[io.write(mp.dumps({ 1, "two", math.pi }))]])
    assert.equal(0, r.status)
    assert.same({ 1, "two", math.pi }, mp.loads(r.stdout))
    r = H.run_script([[io.write(mp.dumps(function() return 1 end))]])
    assert.equal(0, r.status)
    assert.has_error(function() mp.loads(r.stdout) end,
      "mp.loads: function bytecode failed authentication (not sent by a process of this family)")
  end)
end)

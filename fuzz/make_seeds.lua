--[[
Writes the seed corpus fuzz/corpus/serial/ from real encodings. From the
repository root: LUA_CPATH='build/?.so;;' lua5.4 fuzz/make_seeds.lua
Decode-mode seeds start with byte 0, round-trip seeds with byte 1 followed by
a builder program, damaged-encoding seeds with byte 2, the program's length,
the program and (u16 position, xor) triples (see serial_fuzz.c).
Function bytecode in these seeds carries the MAC of the generating process, so
in the fuzzer it exercises the authentication failure path only.
]]
local mp = require "mp"
local dir = arg and arg[1] or "fuzz/corpus/serial"
local n = 0
local function seed(name, bytes)
  n = n + 1
  local f = assert(io.open(string.format("%s/%s", dir, name), "wb"))
  f:write(bytes)
  f:close()
end
local function msg(name, ...) seed("msg-" .. name, "\0" .. mp.dumps(...)) end

local P = {}
mp.register_class("C", P)
local shared = { "s" }
local cyc = { 1, 2 }
cyc.self = cyc
local k = 7
msg("scalars", nil, true, false, 0, -1, 127, 128, -129, 2^31 | 0, math.mininteger, 0.5, -0.0, 0/0, 1/0)
msg("strings", "", "abc", string.rep("x", 255), string.rep("y", 256), "a\0b")
msg("array", { 1, 2, 3, "four", 5.5, true })
msg("record", { name = "n", value = 3, nested = { deeper = { "x" } }, [1.5] = 1, [false] = 0 })
msg("holes", { 1, nil, 3, [10] = 10 })
msg("shared", { a = shared, b = shared, shared })
msg("cycle", cyc)
msg("class", setmetatable({ x = 1 }, P))
msg("named", math.sqrt, string.format, math, _G, io.stdout, print)
msg("closure", function(x) return x * k end)
msg("closures-shared", (function()
  local c = 0
  return { inc = function() c = c + 1 end, get = function() return c end }
end)())
msg("many", table.unpack((function() local t = {} for i = 1, 300 do t[i] = i end return t end)()))
local deep = {}
local cur = deep
for _ = 1, 150 do cur[1] = {}; cur = cur[1] end
msg("deep", deep)
msg("empty")
local arr = {}
for i = 1, 100 do arr[i] = i % 3 == 0 and i * 0.5 or i % 5 == 0 and ("s" .. i) or i * 1000 end
msg("array-mixed", arr, { 1, 2, nil, 4 })
local rec = {}
for i = 1, 10 do rec["field" .. i] = i * 1.5 end
rec[string.rep("long", 12)] = true
msg("record", rec)
msg("env", load("return x", "=env", "t", { x = 1 }))
-- round-trip mode programs: ops are described in serial_fuzz.c (op % 14);
-- a first byte of 0x81 is the same program with the table layout reading off
seed("rt-table-walk", "\129\5\2\0\0\0\0\0\0\0\1\4\1k\6\0\2\1\8\0\1\9\0")
seed("rt-scalars", "\1\0\1\17\2\0\0\0\0\0\0\0\42\3\127\248\0\0\0\0\0\0\4\3abc")
seed("rt-table", "\1\5\2\0\0\0\0\0\0\0\1\4\1k\6\0\2\1\8\0\1\9\0")
seed("rt-cycle", "\1\5\4\4self\7\0\1\0\13\0\12\0")
seed("rt-env", "\1\5\2\0\0\0\0\0\0\0\7\10\4\0\1\10\4\1\0")
seed("rt-closure", "\1\5\2\0\0\0\0\0\0\0\9\10\1\0\1\10\3\1\0\11\0\11\2")
local closures = "\5\2\0\0\0\0\0\0\0\9\10\1\0\1\10\3\1\0\10\0\2\3\11\0\11\2"
local function damaged(name, prog, triples)
  seed("mut-" .. name, "\2" .. string.char(#prog) .. prog .. triples)
end
damaged("none", closures, "")
damaged("upvalue-count", closures, string.pack("<I2B", 120, 1))
damaged("shared-upvalue", closures, string.pack("<I2BI2B", 150, 3, 160, 128))
damaged("table", "\5\2\0\0\0\0\0\0\0\1\4\1k\6\0\2\1\8\0\1\9\0\7\0\0\0", string.pack("<I2B", 4, 255))
io.write(n, " seeds in ", dir, "\n")

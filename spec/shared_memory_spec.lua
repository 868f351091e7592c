-- mp.SharedMemory: named POSIX shared memory, and mp.Array views of it.
local H = require "helper"
local mp = require "mp"

local function exists(name)
  local f = io.open("/dev/shm/" .. name, "rb")
  if f then f:close() return true end
  return false
end

-- Runs `source` in a separately started mplua (io.popen) and returns its output.
local function popen_mplua(source, ...)
  local path = os.tmpname() .. ".lua"
  H.write_file(path, source)
  local args = {}
  for i, a in ipairs{ ... } do args[i] = H.quote(a) end
  local f = assert(io.popen(H.quote(H.mplua) .. " " .. H.quote(path) .. " " .. table.concat(args, " ") .. " 2>&1"))
  local out = f:read("a")
  local ok, how, code = f:close()
  os.remove(path)
  return out, ok, how, code
end

describe("mp.SharedMemory", function()
  it("creates a named segment, reads and writes it with 1-based positions", function()
    local name = H.shm_name("rw")
    local sm <close> = mp.SharedMemory{ name = name, create = true, size = 16 }
    assert.equal(name, sm.name)
    assert.equal(16, sm.size)
    assert.is_true(exists(name))
    assert.equal(("\0"):rep(16), sm:read())
    sm:write(1, "hello")
    sm:write(14, "end")
    assert.equal("hello", sm:read(1, 5))
    assert.equal("end", sm:read(14, 3))
    assert.equal("end", sm:read(14))
    assert.equal("", sm:read(17, 0))
    assert.matches("^SharedMemory%('mplua_spec_%d+_rw', size=16%)$", tostring(sm))
    sm:unlink()
    assert.is_false(exists(name))
  end)

  it("is read and written by a process started with io.popen", function()
    local name = H.shm_name("popen")
    local sm <close> = mp.SharedMemory(name, true, 64)
    sm:write(1, "from parent")
    local out, ok = popen_mplua([[
      local sm <close> = mp.SharedMemory{ name = ..., create = false }
      io.write(sm:read(1, 11), " ", sm.size, "\n")
      sm:write(33, "from child")
    ]], name)
    assert.is_true(ok, out)
    assert.equal("from parent 64\n", out)
    assert.equal("from child", sm:read(33, 10))
    sm:unlink()
  end)

  it("Array views a segment typed; another process attaching by name sees it", function()
    local name = H.shm_name("array")
    local sm <close> = mp.SharedMemory{ name = name, create = true, size = 64 }
    local a = mp.Array("i", 4, { shm = sm, offset = 8 })
    a[1] = 10; a[4] = -7
    assert.equal(4, #a)
    local b = mp.Array("d", { 1.5, 2.5 }, { shm = sm, offset = 32 })
    assert.same({ 1.5, 2.5 }, b:tolist())
    local out, ok = popen_mplua([[
      local sm <close> = mp.SharedMemory{ name = ... }
      local a = mp.Array("i", 4, { shm = sm, offset = 8 })
      local b = mp.Array("d", 2, { shm = sm, offset = 32 })
      print(a[1], a[4], b[2])
      a[2] = 99
    ]], name)
    assert.is_true(ok, out)
    assert.equal("10\t-7\t2.5\n", out)
    assert.equal(99, a[2])
    local bytes = sm:read(9, 4)
    assert.equal(10, string.unpack("<i4", bytes))
    -- The view has no lock unless given one: a new lock would not be shared by name.
    assert.has_error(function() a:get_lock() end)
    local locked = mp.Array("i", 1, { shm = sm, lock = true })
    assert.is_not_nil(locked:get_lock())
    sm:unlink()
  end)

  it("checks positions, sizes and options", function()
    local name = H.shm_name("checks")
    local sm <close> = mp.SharedMemory{ name = name, create = true, size = 8 }
    finally(function() pcall(sm.unlink, sm) end)
    assert.has_error(function() sm:read(0, 1) end)
    assert.has_error(function() sm:read(9, 1) end)
    assert.has_error(function() sm:write(8, "ab") end)
    assert.has_error(function() sm:write(1, "x", 2) end)
    assert.has_error(function() mp.Array("i", 3, { shm = sm }) end)
    assert.has_error(function() mp.Array("i", 1, { shm = sm, offset = 2 }) end)
    assert.has_error(function() mp.Array("i", 1, { shm = sm, ofset = 0 }) end, "unknown option 'ofset' to 'Array' (did you mean 'offset'?)")
    assert.has_error(function() mp.Array("i", 1, { shm = {} }) end)
    assert.has_error(function() mp.SharedMemory{ name = name, create = true, size = 8 } end)
    assert.has_error(function() mp.SharedMemory{ name = H.shm_name("none") } end)
    assert.has_error(function() mp.SharedMemory{ name = name, size = 100 } end)
    assert.has_error(function() mp.SharedMemory{ create = true, size = 0 } end)
    assert.has_error(function() mp.SharedMemory{ name = "a/b", create = true, size = 1 } end)
    assert.has_error(function() mp.SharedMemory{ nmae = "x" } end, "unknown option 'nmae' to 'SharedMemory' (did you mean 'name'?)")
    assert.has_error(function() mp.SharedMemory() end)
    sm:unlink()
    assert.has_error(function() sm:unlink() end)
  end)

  it("a closed segment and its views raise instead of touching unmapped memory", function()
    local name = H.shm_name("closed")
    local sm = mp.SharedMemory{ name = name, create = true, size = 8 }
    local a = mp.Array("B", 8, { shm = sm })
    a[1] = 1
    sm:close()
    sm:close()                                  -- idempotent
    assert.is_true(sm.closed)
    assert.has_error(function() return a[1] end)
    assert.has_error(function() for _ in pairs(a) do end end)
    assert.has_error(function() sm:read(1, 1) end)
    sm:unlink()                                 -- the name is still there to remove
    assert.is_false(exists(name))
  end)

  it("makes a psm_<pid>_ name when none is given", function()
    local sm <close> = mp.SharedMemory{ create = true, size = 4 }
    assert.matches("^psm_" .. mp.getpid() .. "_%x%x%x%x%x%x%x%x$", sm.name)
    assert.is_true(exists(sm.name))
    local other <close> = mp.SharedMemory(sm.name)
    other:write(1, "abcd")
    assert.equal("abcd", sm:read(1, 4))
    sm:unlink()
    assert.is_false(exists(sm.name))
  end)

  it("is shared with forked children too", function()
    local sm <close> = mp.SharedMemory{ name = H.shm_name("fork"), create = true, size = 4 }
    local p = H.spawn(function()
      local again <close> = mp.SharedMemory{ name = sm.name }
      again:write(1, "kid!")
    end)
    assert.equal(0, H.join(p))
    assert.equal("kid!", sm:read(1, 4))
    sm:unlink()
  end)
end)

--[[
A small class helper. A class is its instances' metatable; `Class(...)` calls
`Class:new(...)`, which calls `init(self, ...)` when the class has one.
Classes may declare computed fields: `Class.__getters.name = function(self) end`
and `Class.__setters.name = function(self, v) end`; an assignment to a field
with a getter and no setter is an error.
]]
local M = {}

local function copy_metamethods(from, to)
  for k, v in pairs(from) do
    if type(k) == "string" and k:sub(1, 2) == "__" and to[k] == nil then
      to[k] = v
    end
  end
end

local function class_meta(cls, parent)
  return {
    __index = parent,
    __call = function(c, ...) return c:new(...) end,
    __tostring = function() return "class " .. rawget(cls, "__name") end,
  }
end

local CLASS_ONLY = { __index = true, __newindex = true, __name = true, __getters = true, __setters = true }

function M.class(name, parent)
  local cls = {}
  if parent then
    -- Lua looks metamethods up with rawget: subclasses need their own copies.
    for k, v in pairs(parent) do
      if type(k) == "string" and k:sub(1, 2) == "__" and not CLASS_ONLY[k] then cls[k] = v end
    end
  end
  cls.__name = name
  cls.super = parent
  local getters = setmetatable({}, { __index = parent and parent.__getters })
  local setters = setmetatable({}, { __index = parent and parent.__setters })
  cls.__getters, cls.__setters = getters, setters
  cls.__index = function(self, k)
    local get = getters[k]
    if get then return get(self) end
    return cls[k]
  end
  cls.__newindex = function(self, k, v)
    local set = setters[k]
    if set then
      set(self, v)
    elseif getters[k] then
      error(string.format("field '%s' of %s is read-only", k, name), 2)
    else
      rawset(self, k, v)
    end
  end
  return setmetatable(cls, class_meta(cls, parent))
end

local Object = M.class("Object")
M.Object = Object

function Object.new(cls, ...)
  local self = setmetatable({}, cls)
  if cls.init then cls.init(self, ...) end
  return self
end

-- Class:extend("Name") --> a subclass
function Object.extend(cls, name)
  if type(name) ~= "string" then
    error("bad argument #1 to 'extend' (class name expected, got " .. type(name) .. ")", 2)
  end
  return M.class(name, cls)
end

-- Class:is(value) --> true when value is an instance of Class or of a subclass
function Object.is(cls, value)
  local mt = getmetatable(value)
  while type(mt) == "table" do
    if mt == cls then return true end
    mt = rawget(mt, "super")
  end
  return false
end

--[[
class.restore(cls): a class that arrived by value from another process (the
serializer sends tables without their metatables) gets back what M.class
gave it: its own metatable, and the links of its getters and setters to the
parent's. Its `super` must already be a working class (restore the parents
first). Returns cls.
]]
function M.restore(cls)
  local parent = rawget(cls, "super")
  local getters, setters = rawget(cls, "__getters"), rawget(cls, "__setters")
  if type(getters) == "table" then setmetatable(getters, { __index = parent and parent.__getters }) end
  if type(setters) == "table" then setmetatable(setters, { __index = parent and parent.__setters }) end
  return setmetatable(cls, class_meta(cls, parent))
end

M.copy_metamethods = copy_metamethods
return M

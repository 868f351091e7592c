--[[
The public names of mp, found by walking the module rather than by reading
a list: every field of the module table, and for one instance of every class
its methods and attributes. spec/api_doc_spec.lua checks that each has an
entry in the API reference (docs/api.md and docs/api/*.md).

names(mp) --> { [name] = where }, names spelled as the reference spells them:
  mp.Queue              a field of the module table
  Queue:put             a method (the reference may write Queue.put as well)
  Process.pid           an attribute
where says how the name was found (for the failure message).

What is not a name of its own: fields starting with "_" (private), the
metamethods, and what every class made with mp.class has (new, extend, is,
init, super: documented once as Class:new, Class:extend...).
]]
local M = {}

-- What mp.class gives every class: documented once, under "Class".
M.CLASS_FUNCTIONS = { new = true, extend = true, is = true, init = true, super = true }

--[[
Attributes served by a C __index function (src/l*.c), which no walk can list:
each is checked to read as a value on the instance, so a name listed here that
disappears fails the spec; a new one must be added here.
]]
M.C_ATTRIBUTES = {
  Connection = { "closed", "readable", "writable" },
  SharedMemory = { "name", "size", "closed" },
  Value = { "value" },
  ["Array#c"] = { "value", "raw" },  -- typecode 'c' arrays only
  ValueProxy = { "value" },
}

-- A name a program writes as obj.k or obj:k(): an identifier not starting with "_".
local function public(k)
  return type(k) == "string" and k:find("^[%a][%w_]*$") ~= nil
end

-- Adds the methods and attributes of instance obj, shown as class `cname`.
local function walk_instance(out, cname, obj, ignore)
  ignore = ignore or {}
  local function add(sep, k, where)
    if public(k) and not M.CLASS_FUNCTIONS[k] and not ignore[k] then
      local name = cname .. sep .. k
      if out[name] == nil then out[name] = where end
    end
  end
  -- Fields of the instance itself (a Manager's address, an error's kind...).
  if type(obj) == "table" then
    for k, v in pairs(obj) do add(type(v) == "function" and ":" or ".", k, "a field of the instance") end
  end
  local mt = getmetatable(obj)
  if type(mt) ~= "table" then return end
  local index = rawget(mt, "__index")
  if type(index) == "table" and rawget(mt, "super") == nil then
    for k, v in pairs(index) do add(type(v) == "function" and ":" or ".", k, "its metatable's __index") end
  end
  -- A class of mp.class: its chain's functions, and the computed fields (__getters).
  if rawget(mt, "super") ~= nil or rawget(mt, "__getters") ~= nil then
    local cls = mt
    while type(cls) == "table" do
      for k, v in pairs(cls) do
        if type(v) == "function" then add(":", k, "its class " .. tostring(rawget(cls, "__name"))) end
      end
      local getters = rawget(cls, "__getters")
      if type(getters) == "table" then
        for k in pairs(getters) do add(".", k, "a computed field of " .. tostring(rawget(cls, "__name"))) end
      end
      cls = rawget(cls, "super")
    end
  end
  --[[
  An __index function: the tables of functions among its upvalues are the
  methods it serves (a C function's methods table; a proxy class's method
  table), an upvalue named `fields` the attributes it serves.
  ]]
  if type(index) == "function" and rawget(mt, "super") == nil and rawget(mt, "__getters") == nil then
    for i = 1, 255 do
      local uname, v = debug.getupvalue(index, i)
      if uname == nil then break end
      if type(v) == "table" and next(v) ~= nil then
        if uname == "fields" then
          for k in pairs(v) do add(".", k, "an attribute its __index serves") end
        else
          local all = true
          for k, f in pairs(v) do
            if type(k) ~= "string" or (type(f) ~= "function" and f ~= false) then all = false; break end
          end
          if all then
            for k, f in pairs(v) do
              if type(f) == "function" then add(":", k, "a method its __index serves") end
            end
          end
        end
      end
    end
  end
end

M.walk_instance = walk_instance

--[[
The instances walked: one per class, made here. `makers` maps a class name
(with an optional "#tag" for a second instance of one class) to a function
returning an instance; `release` is called with every instance
made, in reverse order, once the walk is done.
]]
function M.names(mp, makers, release)
  local out = {}
  for k in pairs(mp) do
    if public(k) then out["mp." .. k] = "a field of the module table" end
  end
  local made = {}
  for key, make in pairs(makers) do
    local obj, ignore = make()
    made[#made + 1] = obj
    local cname = key:gsub("#.*$", "")     -- "Array#c": another Array
    walk_instance(out, cname, obj, ignore)
    for _, k in ipairs(M.C_ATTRIBUTES[key] or M.C_ATTRIBUTES[cname] or {}) do
      if obj[k] == nil then error(key .. "." .. k .. " is listed in C_ATTRIBUTES but reads nil", 0) end
      if out[cname .. "." .. k] == nil then out[cname .. "." .. k] = "an attribute of the C object" end
    end
  end
  if release then for i = #made, 1, -1 do release(made[i]) end end
  return out
end

return M

-- libmplua in a foreign host (examples/embed/host.c) and the installed tree.
local H = require "helper"

describe("embedding", function()
  it("opens mp in a C host's own state", function()
    local r = H.run{ program = H.build .. "/embed_host", args = {
      "p = mp.Process{target = function() io.write('child ', mp.current_process().name, '\\n') end}",
      "p:start(); p:join(10); io.write('exit ', p.exitcode, ' ', tostring(require('mp') == mp), '\\n')",
    } }
    assert.equal(0, r.status, r.stderr)
    assert.equal("child Process-1\nexit 0 true\n", r.stdout)
  end)

  it("installs a tree that a stock lua5.4 can use", function()
    local dest = os.tmpname()
    os.remove(dest)
    finally(function() os.execute("rm -rf " .. H.quote(dest)) end)
    assert.is_true(os.execute("DESTDIR=" .. H.quote(dest) .. " cmake --install " .. H.quote(H.build) .. " >/dev/null"))
    local prefix = dest .. "/usr/local"
    for _, f in ipairs { "/bin/mplua", "/include/mplua.h", "/lib/libmplua.a", "/lib/pkgconfig/mplua.pc",
                         "/lib/lua/5.4/mp.so", "/share/lua/5.4/mp.lua", "/share/lua/5.4/mp/process.lua" } do
      assert.is_truthy(io.open(prefix .. f), prefix .. f)
    end
    local env = { LUA_PATH = prefix .. "/share/lua/5.4/?.lua", LUA_CPATH = prefix .. "/lib/lua/5.4/?.so" }
    -- An ASan-built mp.so needs the ASan runtime loaded first into the stock lua5.4.
    local preload = os.getenv("MPLUA_ASAN_PRELOAD")
    if preload and preload ~= "" then env.LD_PRELOAD = preload end
    local r = H.run{ program = "lua5.4", env = env,
      args = { "-e", "local mp = require 'mp'; local p = mp.Process{target = os.exit, args = {4}}; p:start(); p:join(10); print(p.exitcode)" } }
    assert.equal("4\n", r.stdout, r.stderr)
  end)
end)

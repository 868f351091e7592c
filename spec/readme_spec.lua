-- The README's tour is a program: it must run and print what its comments say.
local H = require "helper"

describe("README tour", function()
  it("runs and prints what its comments promise", function()
    local readme = assert(H.read_file("README.md"))
    local tour = assert(readme:match("## A short tour\n\n```lua\n(.-)\n```"), "no tour in README.md")
    local dir = os.tmpname()
    os.remove(dir)
    assert.is_true(os.execute("mkdir " .. H.quote(dir)))
    finally(function() os.execute("rm -rf " .. H.quote(dir)) end)
    H.write_file(dir .. "/tour.lua", tour)
    local mplua = H.mplua:sub(1, 1) == "/" and H.mplua or os.getenv("PWD") .. "/" .. H.mplua
    local r = H.run{ program = "sh", args = { "-c", "cd " .. H.quote(dir) .. " && exec " .. H.quote(mplua) .. " tour.lua" } }
    assert.equal(0, r.status, r.stderr)
    assert.equal("", r.stderr)
    -- The Worker runs concurrently: its line may come anywhere after the first.
    local out, workers = r.stdout:gsub("Worker%-2\t%d+\n", "")
    assert.equal(1, workers, r.stdout)
    -- Self-contained: it needs no file but itself, and leaves none.
    local ls = io.popen("ls -A " .. H.quote(dir))
    assert.equal("tour.lua\n", ls:read("a"))
    ls:close()
    assert.matches("^3\n0\n%d+\tMainProcess\t[%d.]+\n0\n3\t4%.0\n42\nhi\n%d\ntrue\tfloat\ttrue\n3 6 9\n1\n4\n9\n7\t10\ntrue\nfalse\ntrue\n3\t9\nhi\n42\n$", out)
  end)
end)

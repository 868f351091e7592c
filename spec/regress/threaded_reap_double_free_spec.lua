--[[
Two states in two threads of one host: one let go of an ended child's handle
(mp_child_release marked the entry unreferenced, then freed it) while the
other reaped (mp_children_reap frees ended, unreferenced entries): both freed
the entry, and the host crashed ("double free"). A release is now one step
under the children list's lock, and two threads polling one child no longer
both call waitpid (the loser recorded exit code 255). The test build's fault
point "proc.release" holds the releasing thread inside the release while the
other thread reaps (spec/hosts/states.c, scenario release).
]]
local H = require "helper"

describe("a host with states in two threads", function()
  it("survives one thread reaping while the other releases a child's handle", function()
    local dir = H.faults:match("^(.*)/[^/]*$")
    local r = H.run{ program = dir .. "/states_host", args = { "release" },
                     env = { MPLUA_FAULT = "proc.release=delay:0.5" } }
    assert.equal(0, r.status, r.stderr)
    assert.equal("ok release\n", r.stdout)
  end)
end)

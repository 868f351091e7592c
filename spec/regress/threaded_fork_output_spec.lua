--[[
A host thread's output written between mp's flush and its fork was in the
child's copy of the stdout buffer, and the child wrote it again at its exit:
the line appeared twice. The child now drops the buffered output it inherits
(src/engine/proc.c, reset_after_fork). The test build's fault point
"fork.flushed" holds the forking thread between the flush and the fork while
the host's other thread writes (spec/hosts/states.c, scenario stdio).
]]
local H = require "helper"

describe("a child forked from a threaded host", function()
  it("does not write again what another thread had buffered when mp forked", function()
    local dir = H.faults:match("^(.*)/[^/]*$")
    local r = H.run{ program = dir .. "/states_host", args = { "stdio" },
                     env = { MPLUA_FAULT = "fork.flushed=delay:0.5" } }
    assert.equal(0, r.status, r.stderr)
    assert.equal("written by the thread\nok stdio\n", r.stdout)
  end)
end)

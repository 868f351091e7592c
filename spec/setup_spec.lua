--[[
scripts/apt-add-trixie (used by scripts/setup): the trixie source is derived from
the machine's own bookworm source, in both of apt's formats, idempotently. Each
test runs it on a scratch etc/apt under a temporary root, never on this machine's.
]]
local H = require "helper"

local script = "scripts/apt-add-trixie"

-- A temporary root holding files (path under root --> contents); removed by `finally`.
local function root_with(files)
  local root = os.tmpname()
  os.remove(root)
  assert.is_true(os.execute("mkdir -p " .. H.quote(root .. "/etc/apt/sources.list.d")
    .. " " .. H.quote(root .. "/etc/apt/preferences.d")))
  finally(function() os.execute("rm -rf " .. H.quote(root)) end)
  for name, text in pairs(files) do H.write_file(root .. "/" .. name, text) end
  return root
end

-- (bash must not inherit the sanitizer run's LD_PRELOAD: LeakSanitizer would judge it)
local function run(root)
  return H.run{ program = "env", args = { "-u", "LD_PRELOAD", script, root } }
end

-- The files under root/etc/apt, as path --> contents.
local function tree(root)
  local found = {}
  local p = assert(io.popen("cd " .. H.quote(root) .. " && find etc -type f | sort"))
  for path in p:lines() do found[path] = H.read_file(root .. "/" .. path) end
  p:close()
  return found
end

local PIN = "Package: *\nPin: release n=trixie\nPin-Priority: 100\n"

describe("scripts/apt-add-trixie", function()
  it("derives a deb822 trixie source from the bookworm stanza: same mirror, components and options", function()
    local root = root_with{
      ["etc/apt/sources.list.d/debian.sources"] = [[
Types: deb
URIs: http://mirror.example/debian-security
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://disabled.example/debian
Suites: bookworm
Components: main
Enabled: no

Types: deb deb-src
# http://snapshot.debian.org/archive/debian/20250520T000000Z
URIs: http://mirror.example/debian
Suites: bookworm bookworm-updates
Components: main contrib
Check-Valid-Until: no
Signed-By:
 -----BEGIN PGP PUBLIC KEY BLOCK-----
 .
 mQINBGPL0BUBEADmW5NlOJ1bNB7sAOWkcYTcCNkh4wAHLWjz
 -----END PGP PUBLIC KEY BLOCK-----
]],
    }
    local r = run(root)
    assert.equal(0, r.status, r.stderr)
    local files = tree(root)
    assert.equal("# Added by mplua's scripts/setup (for lua-posix), derived from "
      .. root .. "/etc/apt/sources.list.d/debian.sources\n" .. [[
Types: deb
URIs: http://mirror.example/debian
Suites: trixie
Components: main contrib
Check-Valid-Until: no
Signed-By:
 -----BEGIN PGP PUBLIC KEY BLOCK-----
 .
 mQINBGPL0BUBEADmW5NlOJ1bNB7sAOWkcYTcCNkh4wAHLWjz
 -----END PGP PUBLIC KEY BLOCK-----
]], files["etc/apt/sources.list.d/mplua-trixie.sources"])
    assert.equal(PIN, files["etc/apt/preferences.d/mplua-trixie-low"])

    -- Idempotent: a second run changes nothing.
    r = run(root)
    assert.equal(0, r.status, r.stderr)
    assert.matches("trixie is configured already", r.stderr)
    assert.same(files, tree(root))
  end)

  it("derives a one-line trixie source from sources.list, options kept", function()
    local root = root_with{
      ["etc/apt/sources.list"] = [[
# deb http://old.example/debian bookworm main
deb-src http://mirror.local/debian bookworm main
deb http://mirror.local/debian-security bookworm-security main
deb [ arch=amd64 signed-by=/usr/share/keyrings/local.gpg ] http://mirror.local/debian bookworm main non-free-firmware # local
]],
    }
    local r = run(root)
    assert.equal(0, r.status, r.stderr)
    local files = tree(root)
    assert.equal("# Added by mplua's scripts/setup (for lua-posix), derived from " .. root .. "/etc/apt/sources.list\n"
      .. "deb [ arch=amd64 signed-by=/usr/share/keyrings/local.gpg ] http://mirror.local/debian trixie main non-free-firmware\n",
      files["etc/apt/sources.list.d/mplua-trixie.list"])
    assert.is_nil(files["etc/apt/sources.list.d/mplua-trixie.sources"])
    r = run(root)
    assert.equal(0, r.status, r.stderr)
    assert.same(files, tree(root))
  end)

  it("adds no source when trixie is configured already, and no pin when one exists", function()
    local root = root_with{
      ["etc/apt/sources.list.d/debian.sources"] = "Types: deb\nURIs: http://a.example/debian\nSuites: bookworm\nComponents: main\n",
      ["etc/apt/sources.list.d/trixie.list"] = "deb http://deb.debian.org/debian trixie main\n",
      ["etc/apt/preferences.d/trixie-low"] = PIN,
    }
    local before = tree(root)
    local r = run(root)
    assert.equal(0, r.status, r.stderr)
    assert.matches("trixie is configured already %(" .. root:gsub("%p", "%%%0") .. "/etc/apt/sources.list.d/trixie.list%)", r.stderr)
    assert.same(before, tree(root))
  end)

  it("fails with a message, writing nothing, when no bookworm source is configured", function()
    local root = root_with{
      ["etc/apt/sources.list.d/other.sources"] = "Types: deb\nURIs: http://a.example/debian\nSuites: bullseye\nComponents: main\n",
    }
    local before = tree(root)
    local r = run(root)
    assert.equal(1, r.status)
    assert.matches("no enabled 'deb' source for bookworm", r.stderr)
    assert.same(before, tree(root))
  end)
end)

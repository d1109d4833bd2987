-- luarocks_spec.lua: rockspecs/market-*.rockspec, built with Debian's
-- luarocks the way docs/packaging.md says, from a clean copy of the
-- checkout (its files, not its build directories) into a fresh tree with
-- a fresh HOME; then the installed interpreter runs, and plain lua5.4
-- finds the module with nothing but the tree's paths (`luarocks path`).
--
-- The copy keeps its build-rock/ between runs, under a lock, in
-- /tmp/market-rock-<checkout>/ (ninja then rebuilds only what changed);
-- the tree and HOME are made anew each run.
package.path = "spec/support/?.lua;" .. package.path

local H = require "helpers"
local slurp = H.slurp

local sh = H.sh_plain
local dir, root = H.scratch("rock")
local src, tree, home = dir .. "/src", dir .. "/tree", dir .. "/home"

-- The files in rockspecs/ (paths from the root).
local function rockspec_file()
  local p = assert(io.popen("ls rockspecs/*.rockspec"))
  local names = {}
  for l in p:lines() do names[#names + 1] = l end
  p:close()
  return names
end

describe("luarocks", function()
  local status, out, err

  setup(function()
    -- The checkout's own files (tracked, and new ones not ignored), not
    -- build/ nor build-rock/: what a fresh clone would hold (from a
    -- tarball: everything but build*).
    status, out, err = H.sh_locked(dir, ([[
      mkdir -p %s
      cd %s
      if git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
        git ls-files -z --cached --others --exclude-standard |
          tar --null -T - --ignore-failed-read -cf - 2>/dev/null
      else
        tar --exclude='./build*' -cf - .
      fi | tar -xf - -C %s
      rm -rf %s %s
      mkdir -p %s
      cd %s
      HOME=%s luarocks --lua-version 5.4 --tree %s make
    ]]):format(src, H.quote(root), src, tree, home, home, src, home, tree))
  end)

  it("there is one rockspec, in rockspecs/, for meson's version of the project", function()
    local names = rockspec_file()
    assert.equal(1, #names)
    local version = slurp("meson.build"):match("version%s*:%s*'([^']+)'")
    assert.equal("rockspecs/market-" .. version .. "-1.rockspec", names[1])
  end)

  it("`luarocks make` installs the module and the interpreter into a fresh tree", function()
    assert.equal(0, status, out .. err)
    assert.truthy(out:find("market 0.1.0-1 is now installed in " .. tree, 1, true), out)
    assert.truthy(slurp(tree .. "/lib/lua/5.4/market.so"), "no module")
    assert.truthy(slurp(tree .. "/bin/market"), "no interpreter")
    local st, o, e = sh(("HOME=%s luarocks --lua-version 5.4 --tree %s list --porcelain")
                        :format(home, tree))
    assert.equal(0, st, e)
    assert.truthy(o:find("market\t0.1.0-1\tinstalled\t", 1, true), o)
  end)

  it("the installed interpreter runs a script with its drivers", function()
    assert.equal(0, status, out .. err)
    local st, o, e = sh(("cd / && %s/bin/market -e %s"):format(tree, H.quote(
      "local timer = require 'market.timer'; timer.sleep(10); " ..
      "print(require('market').VERSION, 'slept')")))
    assert.equal(0, st, e)
    assert.equal("0.1.0\tslept\n", o)
  end)

  it("lua5.4 loads the module from the tree with `luarocks path` alone", function()
    assert.equal(0, status, out .. err)
    -- From / and with LUA_CPATH and LUA_PATH as luarocks sets them: the
    -- build directories of the checkout are not on the path.
    local st, o, e = sh(([[
      cd / && eval "$(HOME=%s luarocks --lua-version 5.4 --tree %s path)" && lua5.4 -e '
        local market = require "market"
        print(package.searchpath("market", package.cpath))
        print(market.ground_vm(function()
          local tcp = require "market.tcp"
          print("in", tcp.listener(0) ~= nil)
        end))'
    ]]):format(home, tree))
    assert.equal(0, st, e)
    assert.equal(tree .. "/lib/lua/5.4/market.so\nin\ttrue\ntrue\n", o)
  end)
end)

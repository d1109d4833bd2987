-- install_spec.lua: `meson install` into a temporary prefix, then build
-- examples/embed against the installed library with nothing but
--   cc host.c $(pkg-config --cflags --libs market)
-- and run it; the installed interpreter, Lua module and man page work too.
--
-- The build and prefix live in /tmp/market-install-<checkout>/ and are
-- reused (ninja rebuilds only what changed), under a lock, so the spec
-- costs a full build only the first time.
package.path = "spec/support/?.lua;" .. package.path

local H = require "helpers"
local slurp = H.slurp

local sh = H.sh_plain
local dir, root = H.scratch("install")
local build, prefix = dir .. "/build", dir .. "/prefix"
local pcpath = prefix .. "/lib/pkgconfig"

describe("meson install", function()
  local status, out, err

  setup(function()
    status, out, err = H.sh_locked(dir, ([[
      if [ ! -f %s/build.ninja ]; then
        rm -rf %s %s
        meson setup %s %s --prefix=%s --libdir=lib --buildtype=debugoptimized
      fi
      meson install -C %s --quiet
    ]]):format(build, build, prefix, build, root, prefix, build))
  end)

  it("installs the library, headers, market.pc, the interpreter, the Lua module and the man page",
     function()
    assert.equal(0, status, out .. err)
    for _, f in ipairs {
      "/lib/libmarket.so", "/lib/libmarket.a", "/lib/pkgconfig/market.pc",
      "/include/market/market.h", "/include/market/term.h", "/include/market/vm.h",
      "/include/market/ground.h", "/include/market/route.h", "/include/market/pool.h",
      "/bin/market", "/lib/lua/5.4/market.so", "/share/man/man1/market.1",
    } do
      assert.truthy(slurp(prefix .. f), "not installed: " .. f)
    end
    assert.truthy(slurp(prefix .. "/share/man/man1/market.1"):find(".TH MARKET 1", 1, true))
  end)

  it("builds and runs examples/embed with pkg-config --cflags --libs market alone", function()
    assert.equal(0, status, out .. err)
    local exe = dir .. "/embed"
    local st, o, e = sh(("cc %s/examples/embed/host.c $(PKG_CONFIG_PATH=%s pkg-config " ..
                         "--cflags --libs market) -o %s"):format(root, pcpath, exe))
    assert.equal(0, st, o .. e)
    -- The prefix is not on the loader's path: say where libmarket.so is.
    st, o, e = sh(("printf 'one\\ntwo\\n' | LD_LIBRARY_PATH=%s/lib %s %s/examples/embed/actor.lua")
                  :format(prefix, exe, root))
    assert.equal(0, st, e)
    assert.truthy(o:find("host: reply 1: echo: ONE\nhost: reply 2: echo: TWO\n", 1, true), o)
    assert.truthy(o:find("host: done\n", 1, true), o)
  end)

  it("the installed interpreter runs a script, and lua5.4 finds the installed module", function()
    assert.equal(0, status, out .. err)
    local st, o, e = sh(prefix .. "/bin/market -e 'print(require(\"market\").VERSION)'")
    assert.equal(0, st, e)
    assert.truthy(o:match("^%d+%.%d+%.%d+\n$"), o)
    st, o, e = sh(("LUA_CPATH='%s/lib/lua/5.4/?.so' lua5.4 -e " ..
                   "'local m = require \"market\"; print(m.ground_vm(function() print(\"in\") end))'")
                  :format(prefix))
    assert.equal(0, st, e)
    assert.equal("in\ntrue\n", o)
  end)

  it("market.pc names the include directory and the libraries a host links", function()
    assert.equal(0, status, out .. err)
    local st, o = sh(("PKG_CONFIG_PATH=%s pkg-config --cflags --libs market"):format(pcpath))
    assert.equal(0, st)
    assert.truthy(o:find("-I" .. prefix .. "/include/market", 1, true), o)
    assert.truthy(o:find("-lmarket", 1, true) and o:find("-lev", 1, true) and
                  o:find("-llua5.4", 1, true), o)
  end)
end)

-- ring_spec.lua: market.ring, a bounded ring of trace lines (docs/inspect.md,
-- "Rings").
package.path = "spec/support/?.lua;" .. package.path
local market = require "market"
local J = require "jsonread"
local H = require "helpers"
local P, T = market.perform, market.transition

local function decoded(lines)
  local t = {}
  for i, l in ipairs(lines) do t[i] = assert(J.decode(l)) end
  return t
end

-- Runs f() in a ground VM where "sub" subscribes to {"m", _} and "other"
-- to "x"; f may send and pause.
local function scene(f)
  H.kept(function()
    P(market.spawn(function()
      return T(nil, market.subscriber({ "m", market._ }, { name = "in", on_message = function() end }))
    end, { name = "sub" }))
    P(market.spawn(function()
      return T(nil, market.subscriber("x", { name = "in", on_message = function() end }))
    end, { name = "other" }))
    market.pause()
    f()
  end)
end

describe("market.ring", function()
  it("keeps the JSON lines of its filter, read since the last read", function()
    local first, second, third
    scene(function()
      local r = market.ring { topic = { "m", market._ }, kind = "send" }
      P(market.publisher({ "m", market._ }), market.send({ "m", 1 }), market.send("x"),
        market.send({ "m", 2 }))
      market.pause()
      first = { r:read() }
      second = { r:read() }
      P(market.send({ "m", 3 }))
      third = { r:read() }
      r:close()
    end)
    local l = decoded(first[1])
    assert.equal(0, first[2])
    assert.equal(2, #l)
    assert.same({ "send", "send" }, { l[1].kind, l[2].kind })
    assert.same({ { "m", 1 }, { "m", 2 } }, { l[1].message, l[2].message })
    assert.equal("ground", l[1].vm)
    assert.same({ {}, 0 }, second)
    assert.same({ "m", 3 }, decoded(third[1])[1].message)
  end)

  it("filters by pid, name and kind; several rings at once, beside the trace", function()
    local byname, bypid, path = nil, nil, os.tmpname()
    scene(function()
      local other
      for _, p in ipairs(market.snapshot().vm.processes) do
        if p.name == "other" then other = p.pid end
      end
      market.trace { kind = "message", file = path }
      local a <close> = market.ring { name = "s*", kind = { "message" } }
      local b <close> = market.ring { pid = other }
      P(market.publisher({ "m", market._ }), market.publisher("x"),
        market.send({ "m", 1 }), market.send("x"))
      market.pause()
      byname, bypid = decoded((a:read())), decoded((b:read()))
      market.trace(false)
    end)
    assert.equal(1, #byname)
    assert.same({ "sub", "message", "in" }, { byname[1].name, byname[1].kind, byname[1].endpoint })
    assert.is_true(#bypid >= 1)
    for _, l in ipairs(bypid) do assert.equal("other", l.name) end
    assert.equal("message", bypid[#bypid].kind)
    local f = assert(io.open(path))
    local traced = f:read("a")
    f:close()
    os.remove(path)
    assert.equal(2, select(2, traced:gsub(": message in ", "")))   -- the trace's own lines

  end)

  it("is bounded: the oldest lines go, and read says how many", function()
    local got
    scene(function()
      local r = market.ring { kind = "send", size = 3 }
      P(market.publisher({ "m", market._ }))
      for i = 1, 10 do P(market.send({ "m", i })) end
      got = { r:read() }
      P(market.send({ "m", 11 }))
      got[3] = { r:read() }
      r:close()
    end)
    local l = decoded(got[1])
    assert.equal(3, #l)
    assert.same({ { "m", 8 }, { "m", 9 }, { "m", 10 } }, { l[1].message, l[2].message, l[3].message })
    assert.equal(7, got[2])
    assert.equal(1, #got[3][1])
    assert.equal(0, got[3][2])
  end)

  it("keeps nothing once closed, and a closed ring cannot be read", function()
    local r, after
    scene(function()
      r = market.ring { kind = "send" }
      r:close()
      r:close()                               -- twice is fine
      P(market.publisher({ "m", market._ }), market.send({ "m", 1 }))
      do
        local c <close> = market.ring { kind = "send" }
        after = c
      end
    end)
    assert.has_error(function() r:read() end, "market.ring: the ring is closed")
    assert.has_error(function() after:read() end, "market.ring: the ring is closed")
    assert.equal("market.ring (closed)", tostring(r))
  end)

  -- ring:read() pushes each line in Lua, which may run a finalizer that
  -- closes the ring: the read went on with the freed ring (ASan:
  -- heap-use-after-free in mk_ring_read).
  it("may be closed by a finalizer while it is read", function()
    local status, out, err = H.sh(("timeout 60 env LUA_CPATH=%s lua5.4 -e %s"):format(
      H.quote(package.cpath), H.quote([[
        local market = require "market"
        assert(market.ground_vm(function()
          local r = market.ring { size = 5000 }
          for i = 1, 2000 do market.perform(market.send({ "x", i })) end
          setmetatable({}, { __gc = function() r:close() end })
          collectgarbage("incremental", 1, 1000)   -- a step at nearly each allocation
          local lines = r:read()
          collectgarbage("incremental", 200, 100)
          print(#lines > 0, #lines < 2000 + 10, pcall(r.read, r))
        end))
      ]])))
    assert.equal(0, status, err)
    assert.equal("true\ttrue\tfalse\tmarket.ring: the ring is closed\n", out)
  end)

  -- The VM globs were kept as bare pointers while size was read: its
  -- __index dropped them and collected them before the ring copied them
  -- (ASan: heap-use-after-free in strs_dup).
  it("keeps the globs it was given though the options' __index drops them", function()
    local lines
    scene(function()
      local vms, junk = { "gro*", ("g"):rep(60) .. "*" }, {}    -- held by the list alone
      local r = market.ring(setmetatable({ vm = vms, kind = "send" }, { __index = function(_, k)
        if k == "size" then
          vms[1], vms[2] = nil, nil
          collectgarbage(); collectgarbage()
          for i = 1, 1000 do junk[i] = ("J"):rep(61) .. i end
        end
      end }))
      P(market.send("x"))
      lines = r:read()
      r:close()
    end)
    assert.equal(1, #lines)
    assert.same({ "ground", "x" }, { decoded(lines)[1].vm, decoded(lines)[1].message })
  end)

  it("keeps no line for a filter given an empty list", function()
    local got = {}
    scene(function()
      for _, f in ipairs { "pid", "name", "vm", "kind" } do
        local r, all = market.ring { [f] = {} }, market.ring {}
        P(market.send({ "m", f }))
        market.pause()
        got[f] = { #r:read(), #all:read() > 0 }
        r:close()
        all:close()
      end
    end)
    for _, f in ipairs { "pid", "name", "vm", "kind" } do assert.same({ 0, true }, got[f], f) end
  end)

  it("outlives its ground VM, and refuses bad options", function()
    local r
    scene(function() r = market.ring { kind = "send" } end)
    assert.same({ {}, 0 }, { r:read() })
    r:close()
    assert.has_error(function() market.ring { kind = "send" } end,
      "market.ring: no ground VM is running")
    scene(function()
      assert.has_error(function() market.ring { size = 0 } end,
        "market.ring: size must be a number of lines from 1 to 2147483647, got 0")
      -- A string that reads as a number was once taken for one.
      assert.has_error(function() market.ring { size = "5" } end,
        "market.ring: size must be a number of lines from 1 to 2147483647, got 5")
      -- Too many was refused as if it were not ">= 1".
      assert.has_error(function() market.ring { size = 1 << 31 } end,
        "market.ring: size must be a number of lines from 1 to 2147483647, got 2147483648")
      assert.has_error(function() market.ring { pid = "1" } end,
        "market.ring: pid must be a pid or a list of pids, got string")
      assert.has_error(function() market.ring { name = { "a\0b" } } end,
        "market.ring: name[1] must hold no NUL byte")
      assert.has_error(function() market.ring { kind = "nope" } end)
      assert.has_error(function() market.ring { colour = 1 } end,
        "market.ring: no option colour (pid, name, vm, kind, topic, size)")
      -- Once "bad argument #1 to 'ring'", without market's name.
      local line = debug.getinfo(1, "l").currentline + 1
      local _, err = pcall(function() market.ring "x" end)
      assert.equal(("spec/ring_spec.lua:%d: market.ring: expected a table of options, got string")
                   :format(line), err)
    end)
  end)

  -- Its lines and their array were plain malloc's, which the memory limit
  -- did not count: a ring of a million long lines grew the program past
  -- --max-memory (184 MB under 50), and size = 2^31 - 1 took 16 GiB of
  -- address space at once.
  it("counts with the memory limit: a ring past it is refused, its lines are counted", function()
    local status, out, err = H.run_script([[
      local market = require "market"
      print((select(2, pcall(market.ring, { size = 2^31 - 1 }))))
      local r = market.ring { size = 100000 }
      local before = select(2, market.memory_limit())
      for i = 1, 200 do market.perform(market.send({ i, ("z"):rep(1000) })) end
      local after = select(2, market.memory_limit())
      local lines, bytes = r:read(), 0       -- (each cut to a length: inspect.md)
      for _, l in ipairs(lines) do bytes = bytes + #l end
      print(bytes >= 200 * 200 and after - before >= bytes, #lines)
    ]], "--no-drivers --max-memory 64M")
    assert.equal(0, status, err)
    assert.equal("not enough memory\ntrue\t200\n", out)
  end)
end)

-- detail_spec.lua: detail mode, market.inspect_detail (docs/inspect.md,
-- "Detail mode"): CPU time and memory per process, messages per
-- conversation, bytes per TCP connection, shown by snapshots only while on.
package.path = "spec/support/?.lua;" .. package.path
local market = require "market"
local N = require "net"
local H = require "helpers"
local P, T = market.perform, market.transition

local function byname(vm, name)
  for _, p in ipairs(vm.processes) do if p.name == name then return p end end
end

local function conv(vm, pubname, subname)
  local pub, sub = byname(vm, pubname), byname(vm, subname)
  for _, c in ipairs(vm.conversations) do
    if c.publisher.pid == pub.pid and c.subscriber.pid == sub.pid then return c end
  end
end

local ground = H.kept

describe("market.inspect_detail", function()
  -- Each ground VM caches freed blocks in front of the state's allocator
  -- while it runs, and detail wraps whatever is in front: a wrapper made
  -- in one VM must not outlive it, nor be reused over a cache that is gone.
  it("wraps the allocator of each ground VM afresh, on, off or left on", function()
    local sizes = {}
    for round = 1, 3 do
      ground(function()
        market.inspect_detail(true)
        local t = {}
        for i = 1, 2000 do t[i] = { i, tostring(i) } end
        sizes[round] = #t
        if round == 1 then market.inspect_detail(false) end   -- rounds 2, 3: left on
      end)
      collectgarbage()
    end
    assert.same({ 2000, 2000, 2000 }, sizes)
  end)

  it("returns the setting before, and is off by default", function()
    local seen = {}
    ground(function()
      seen[1] = market.inspect_detail()
      seen[2] = market.inspect_detail(true)
      seen[3] = market.inspect_detail(true)
      seen[4] = market.inspect_detail(false)
      seen[5] = market.inspect_detail()
    end)
    assert.same({ false, false, true, true, false }, seen)
    assert.is_false(market.inspect_detail())      -- no ground VM: off
    assert.has_error(function() market.inspect_detail(true) end,
      "market.inspect_detail: no ground VM is running")
    ground(function()
      -- Once "bad argument #1 to 'inspect_detail'", without market's name.
      assert.has_error(function() market.inspect_detail(1) end,
        "market.inspect_detail: on must be true or false, got number")
    end)
  end)

  it("leaves the fields out while off", function()
    local s
    ground(function()
      P(market.spawn(function()
        return T(nil, market.subscriber("x", { name = "in", on_message = function() end }))
      end, { name = "sub" }))
      P(market.publisher("x", { name = "out" }), market.send("x"))
      market.pause()
      s = market.snapshot()
    end)
    local sub = byname(s.vm, "sub")
    assert.is_nil(sub.cpu_ms)
    assert.is_nil(sub.memory)
    assert.is_true(#s.vm.conversations > 0)
    for _, c in ipairs(s.vm.conversations) do assert.is_nil(c.messages) end
    assert.is_nil(market.snapshot_json(s):find('"cpu_ms"'))
  end)

  it("gives cpu_ms: it grows for a busy process, not for an idle one", function()
    local s1, s2
    ground(function()
      market.inspect_detail(true)
      P(market.spawn(function()
        return T(nil, market.subscriber("work", { on_message = function()
          local x = 0
          for i = 1, 3e6 do x = x + i % 7 end
          return T(x)
        end }))
      end, { name = "busy" }))
      P(market.spawn(function()
        return T(nil, market.subscriber("none", { on_message = function() end }))
      end, { name = "idle" }))
      market.pause()
      s1 = market.snapshot()
      P(market.publisher("work"), market.send("work"), market.send("work"))
      market.pause()
      s2 = market.snapshot()
      market.inspect_detail(false)
    end)
    local b1, b2 = byname(s1.vm, "busy"), byname(s2.vm, "busy")
    local i1, i2 = byname(s1.vm, "idle"), byname(s2.vm, "idle")
    assert.equal("number", type(b1.cpu_ms))
    assert.is_true(b2.cpu_ms > b1.cpu_ms + 1, b1.cpu_ms .. " -> " .. b2.cpu_ms)
    assert.is_true(i2.cpu_ms == i1.cpu_ms, i1.cpu_ms .. " -> " .. i2.cpu_ms)
    assert.is_true(b2.cpu_ms > 10 * i2.cpu_ms)
  end)

  it("gives memory: larger for a process holding a big table", function()
    local s
    ground(function()
      market.inspect_detail(true)
      P(market.spawn(function()
        local held
        return T(nil, market.subscriber("fill", { on_message = function()
          held = {}
          for i = 1, 100000 do held[i] = i end
        end }))
      end, { name = "big" }))
      P(market.spawn(function()
        return T(nil, market.subscriber("none", { on_message = function() end }))
      end, { name = "small" }))
      market.pause()
      P(market.publisher("fill"), market.send("fill"))
      market.pause()
      s = market.snapshot()
    end)
    local big, small = byname(s.vm, "big"), byname(s.vm, "small")
    assert.is_true(small.memory > 0)                    -- its records at least
    assert.is_true(big.memory > small.memory + 800000, big.memory .. " vs " .. small.memory)
  end)

  it("counts messages exactly per pair, two subscribers included", function()
    local s
    ground(function()
      market.inspect_detail(true)
      for _, name in ipairs { "a", "b" } do
        P(market.spawn(function()
          return T(nil, market.subscriber({ "m", market._ }, { name = "in", on_message = function() end }),
                   market.subscriber("other", { name = "o", on_message = function() end }))
        end, { name = name }))
      end
      P(market.spawn(function()
        return T(nil, market.publisher({ "m", market._ }, { name = "out" }),
                 market.publisher("other", { name = "out2" }),
                 market.send({ "m", 1 }), market.send({ "m", 2 }), market.send({ "m", 3 }),
                 market.send("other"))
      end, { name = "pub" }))
      market.pause()
      s = market.snapshot()
    end)
    local function count(sub, ep)
      local n = 0
      for _, c in ipairs(s.vm.conversations) do
        if c.publisher.pid == byname(s.vm, "pub").pid and c.publisher.endpoint == ep
           and c.subscriber.pid == byname(s.vm, sub).pid then
          n = n + 1
          assert.equal("number", type(c.messages))
          if c.messages > 0 then return c.messages end
        end
      end
      return n == 0 and nil or 0
    end
    assert.equal(3, count("a", "out"))
    assert.equal(3, count("b", "out"))
    assert.equal(1, count("a", "out2"))
    assert.equal(1, count("b", "out2"))
  end)
end)

describe("detail mode's bookkeeping", function()
  it("survives a handler turning it off, nested activations and endpoints going", function()
    local s1, s2
    ground(function()
      market.inspect_detail(true)
      -- a nested VM whose process is killed with it from a handler: its
      -- last activations run inside that handler's
      P(market.nested_vm(function()
        return T(nil, market.at_meta_level(market.subscriber("boom", { name = "up" })),
                 market.subscriber("inner", { on_absence = function() local t = {} for i = 1, 100 do t[i] = i end end }),
                 market.publisher("inner"))
      end, { name = "box" }))
      P(market.spawn(function()
        return T(nil, market.subscriber("kill", { on_message = function()
          local box
          for _, p in ipairs(market.snapshot().vm.processes) do
            if p.name == "box" then box = p.pid end
          end
          local t = {}
          for i = 1, 1000 do t[i] = {} end
          return T(nil, market.quit(box))
        end }), market.subscriber("off", { on_message = function()
          market.inspect_detail(false)
          local t = {}
          for i = 1, 1000 do t[i] = {} end
        end }))
      end, { name = "killer" }))
      -- a sender whose pair of endpoints goes, many times over: swept
      for i = 1, 200 do
        P(market.spawn(function()
          return T(nil, market.subscriber({ "n", i }, { name = "in", on_message = function()
            return T(nil, market.quit()) end }))
        end))
      end
      market.pause()
      P(market.publisher({ "n", market._ }))
      for i = 1, 200 do P(market.send({ "n", i })) end
      P(market.publisher("kill"), market.send("kill"))
      market.pause()
      s1 = market.snapshot()
      P(market.publisher("off"), market.send("off"))
      market.pause()
      s2 = market.snapshot()
    end)
    assert.is_nil(byname(s1.vm, "box"))
    assert.is_true(byname(s1.vm, "killer").memory > 0)
    assert.is_nil(byname(s2.vm, "killer").memory)
  end)
end)

describe("market.tcp.inspect in detail mode", function()
  -- A client says "hello" (5 bytes), the server's session answers "you
  -- said hello" (14 bytes); snapshot(), then the client closes.
  local function exchange(detail)
    return N.snapshot_connected(function(log) return log[2] == "data you said hello" end,
      { on_connect = function(out) return T(nil, out("hello")) end },
      function() if detail then market.inspect_detail(true) end end)
  end

  it("lists the connections, with exact bytes in and out", function()
    local tcp = require "market.tcp"
    local s, port = exchange(true)
    local conns = s.drivers.tcp.connections
    assert.equal(2, #conns)
    local byaddr = {}
    for _, c in ipairs(conns) do byaddr[tostring(c.address)] = c end
    local client = byaddr[tostring(tcp.handle(1))]
    local server = byaddr[tostring(tcp.listener(0))]
    assert.is_truthy(client and server)
    assert.same({ 5, 14, 0 }, { client.bytes_out, client.bytes_in, client.buffered })
    assert.same({ 5, 14, 0 }, { server.bytes_in, server.bytes_out, server.buffered })
    assert.equal("ground", server.vm)
    assert.equal(port, client.peer.port)
    assert.equal(byname(s.vm, "client 1").pid, client.session)
    assert.equal(byname(s.vm, "session").pid, server.session)
    for _, c in ipairs(conns) do
      for _, p in ipairs(s.vm.processes) do
        if p.pid == c.pid then assert.equal("tcp", p.kind) end
      end
    end
  end)

  it("leaves the bytes out while off", function()
    local s = exchange(false)
    local conns = s.drivers.tcp.connections
    assert.equal(2, #conns)
    for _, c in ipairs(conns) do
      assert.is_nil(c.bytes_in)
      assert.is_nil(c.bytes_out)
      assert.is_nil(c.buffered)
      assert.equal("number", type(c.pid))
    end
  end)
end)

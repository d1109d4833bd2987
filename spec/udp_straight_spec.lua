-- udp_straight_spec.lua: sockets for straight-line code (docs/udp.md,
-- "Straight-line sockets"): udp.open, sock:sendto, sock:receivefrom and
-- sock:close.  In one ground VM with its drivers, over loopback, ports
-- the kernel picks.
package.path = "spec/support/?.lua;" .. package.path
local market = require "market"
local udp = require "market.udp"
local timer = require "market.timer"
local H = require "helpers"
local N = require "net"

describe("udp.open", function()
  it("sends and receives datagrams, with their sender", function()
    local got = N.run(function()
      local a, b = assert(udp.open()), assert(udp.open(0))
      assert(a:sendto("ping", "127.0.0.1", b.port))
      local data, host, port = b:receivefrom(10000)
      assert(b:sendto(data .. "/pong", host, port))
      local reply = { a:receivefrom(10000) }
      local ports = { a.port, b.port }
      local none = { a:receivefrom(50) }
      a:close()
      b:close()
      local closed = { a:receivefrom(0) }
      return { data = data, host = host, from_a = port == ports[1], reply = reply[1],
               reply_from_b = reply[3] == ports[2], none = none, closed = closed }
    end)
    assert.same({ data = "ping", host = "127.0.0.1", from_a = true, reply = "ping/pong",
                  reply_from_b = true, none = { nil, "timeout" }, closed = { nil, "closed" } }, got)
  end)

  it("says why a socket cannot be bound, as nil and the reason", function()
    local got = N.run(function()
      local a = assert(udp.open())
      local out = { select(2, udp.open(a.port)), select(2, udp.open(70000)) }
      a:close()
      return out
    end)
    assert.equal("cannot bind udp port " .. "%d: address already in use",
                 (got[1]:gsub("port %d+", "port %%d", 1)))
    assert.equal("cannot bind udp port 70000: port out of range (0 to 65535)", got[2])
  end)

  it("opens a socket again as soon as it is closed, with or without a pause between", function()
    -- The driver stopped the old socket and at once spawned a new one for
    -- the same local: udp.open took the old one's presence for its own,
    -- and that one's absence for the socket closing (nil, "closed").
    local port = N.free_port("udp")
    local got = N.run(function()
      local tx, out = assert(udp.open()), {}
      for _, where in ipairs({ udp.handle("again"), port }) do
        for i = 1, 8 do
          local s = assert(udp.open(where))
          tx:sendto("ping" .. i, "127.0.0.1", s.port)
          out[#out + 1] = table.concat({ tostring((s:receivefrom(5000))) })
          s:close()
          for _ = 1, i % 4 do market.pause() end
        end
      end
      tx:close()
      return out
    end)
    local want = {}
    for _ = 1, 2 do
      for i = 1, 8 do want[#want + 1] = "ping" .. i end
    end
    assert.same(want, got)
  end)

  it("gives each udp.open() and udp.open(0) a socket of its own", function()
    -- udp.open(0) was udp.listener(0), one socket for all: each of two
    -- heard the other's datagrams.
    local got = N.run(function()
      local a, b, c = assert(udp.open(0)), assert(udp.open(0)), assert(udp.open())
      local out = { distinct = a.port ~= b.port and b.port ~= c.port and a.port ~= c.port }
      c:sendto("for a", "127.0.0.1", a.port)
      c:sendto("for b", "127.0.0.1", b.port)
      out.a = a:receivefrom(5000)
      out.b = b:receivefrom(5000)
      out.taken = select(2, udp.open(a.port))
      a:close(); b:close(); c:close()
      return out
    end)
    assert.same({ distinct = true, a = "for a", b = "for b",
                  taken = "cannot bind udp port " .. "%d: address already in use" },
                { distinct = got.distinct, a = got.a, b = got.b,
                  taken = (got.taken:gsub("port %d+", "port %%d", 1)) })
  end)

  it("keeps at most MAX_QUEUED bytes of datagrams not yet received, dropping the rest", function()
    local old, before = udp.MAX_QUEUED, udp.stats.dropped
    udp.MAX_QUEUED = 1000
    local ok, got = pcall(N.run, function()
      local a, b = assert(udp.open()), assert(udp.open())
      for i = 1, 20 do a:sendto(("%03d"):format(i) .. ("x"):rep(97), "127.0.0.1", b.port) end
      timer.sleep(200)
      local seen = {}
      while true do
        local d = b:receivefrom(0)
        if not d then break end
        seen[#seen + 1] = d:sub(1, 3)
      end
      a:close()
      b:close()
      return seen
    end)
    udp.MAX_QUEUED = old
    assert(ok, got)
    -- 1000 bytes hold eight of 100 bytes (each counted with 16 more).
    assert.same({ "001", "002", "003", "004", "005", "006", "007", "008" }, got)
    assert.equal(before + 12, udp.stats.dropped)
  end)

  it("takes a wildcard message, which reaches every subscriber, for no datagram", function()
    local got = N.run(function()
      local a = assert(udp.open())
      market.perform(market.send(market._))
      local out = { a:receivefrom(100) }
      a:close()
      return out
    end)
    assert.same({ nil, "timeout" }, got)
  end)

  it("raises on misuse", function()
    local got = N.run(function()
      local out = {}
      local function try(f) out[#out + 1] = H.outcome(f, "spec/udp_straight_spec.lua") end
      local a = assert(udp.open())
      try(function() a:sendto(1, "127.0.0.1", 9) end)
      try(function() a:sendto("x", "127.0.0.1", "9") end)
      try(function() a.receivefrom(5) end)
      -- (wait_until's error, which named market.udp's line)
      try(function() a:receivefrom(-1) end)
      -- A pattern binds nothing: udp.open waited for ever.
      try(function() udp.open(udp.listener(market._)) end)
      try(function() udp.open(udp.handle({ "conn", market._ })) end)
      try(function() udp.open(market._) end)
      local err
      market.perform(market.spawn(function()
        local ok, e = pcall(a.receivefrom, a)
        err = tostring(ok) .. " " .. e:gsub("process %d+ of ground", "process N of ground")
      end))
      N.wait_until(function() return err end)
      out[#out + 1] = err
      a:close()
      return out
    end)
    local ok, err = pcall(udp.open)
    assert.is_false(ok)
    assert.matches("udp.open: not inside a market process", err, 1, true)
    assert.same({
      "false udp.socket:sendto: data must be a string, got number",
      "false udp.socket:sendto: want a host (a string) and a port (an integer), got string and string",
      "false udp.socket:receivefrom: not a socket (call it as sock:receivefrom(...))",
      "false udp.socket:receivefrom: the timeout must be a number of milliseconds >= 0 (or nil: " ..
        "none), got -1",
      "false udp.open: udp-listener(_) is a pattern (it holds the wildcard), which binds no socket",
      'false udp.open: udp-handle(["conn", _]) is a pattern (it holds the wildcard), which binds no socket',
      "false udp.open: udp-listener(_) is a pattern (it holds the wildcard), which binds no socket",
      "false udp.socket:receivefrom: the socket belongs to process N of ground, not to this " ..
        "one (its datagrams go to that process)",
    }, got)
  end)
end)

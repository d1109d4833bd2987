-- udp_driver_spec.lua: the UDP driver in-process (DESIGN §3, docs/udp.md).
package.path = "spec/support/?.lua;" .. package.path
local market = require "market"
local udp = require "market.udp"
local timer = require "market.timer"
local N = require "net"
local ANY = market._
local send, T, quit = market.send, market.transition_no_state, market.quit

-- A server on udp.listener(port) answering each datagram with reply(body).
local function server(port, reply)
  local here = udp.listener(port)
  return market.spawn(function()
    return market.transition(nil,
      market.subscriber(udp.packet(ANY, here, ANY), {
        on_message = function(_, m)
          return T(send(udp.packet(here, m.source, reply(m.body))))
        end }),
      market.subscriber({ "stop-udp-server" }, { on_message = function() return T(quit()) end }))
  end, { name = "udp server" })
end

-- Straight-line: subscribe to udp.bound(sock, _) and return the next event.
local function bound_event(sock, name)
  market.perform(market.subscriber(udp.bound(sock, ANY), name))
  return market.wait_for(function(e) return e.endpoint == name end)
end

-- Straight-line: an echo server on port 0 and a handle whose replies are
-- appended to got; returns the server's port and the handle.
local function echo_pair(name, got)
  market.perform(server(0, function(body) return body end))
  local port = bound_event(udp.listener(0), "b").role.topic.port
  local me = udp.handle(name)
  market.perform(market.subscriber(udp.packet(ANY, me, ANY), {
    name = "rx", on_message = function(_, m) got[#got + 1] = m.body end }))
  bound_event(me, "mine")
  return port, me
end

-- Straight-line: wait up to 3 s for n replies in got.
local function await_replies(got, n)
  for _ = 1, 300 do
    if #got >= n then return end
    timer.sleep(10)
  end
end

describe("udp driver", function()
  it("round-trips a 65,507-byte datagram between a handle and a listener on port 0", function()
    local payload = {}
    for i = 1, 65507 do payload[i] = string.char(i * 7 % 251) end
    payload = table.concat(payload)
    local reply, from, sport
    N.run(function()
      market.perform(server(0, function(body) return body:reverse() end))
      sport = bound_event(udp.listener(0), "server-bound").role.topic.port
      local me = udp.handle("client")
      -- Subscribing to packets for the handle binds its socket.
      market.perform(market.subscriber(udp.packet(ANY, me, ANY), "rx"))
      local ev = bound_event(me, "client-bound")
      assert.equal("presence", ev.type)
      market.perform(send(udp.packet(me, udp.remote_address("127.0.0.1", sport), payload)))
      local got = market.wait_for(function(e) return e.endpoint == "rx" end)
      reply, from = got.message.body, got.message.source
      market.perform(send({ "stop-udp-server" }))
    end)
    assert.is_true(math.type(sport) == "integer" and sport > 0)
    assert.equal(65507, #reply)
    assert.equal(payload:reverse(), reply)
    assert.equal(udp.remote_address("127.0.0.1", sport), from)
  end)

  it("sends to a host name through the resolver", function()
    local reply
    N.run(function()
      market.perform(server(0, function(body) return "echo:" .. body end))
      local port = bound_event(udp.listener(0), "b").role.topic.port
      local me = udp.handle("named")
      market.perform(market.subscriber(udp.packet(ANY, me, ANY), "rx"))
      bound_event(me, "mine")
      market.perform(send(udp.packet(me, udp.remote_address("localhost", port), "hi")))
      reply = market.wait_for(function(e) return e.endpoint == "rx" end).message.body
      market.perform(send({ "stop-udp-server" }))
    end)
    assert.equal("echo:hi", reply)
  end)

  it("reports a socket that cannot be bound as an absence with a reason", function()
    local events = {}
    N.run(function()
      local bad = udp.listener(70000)
      market.perform(market.subscriber(udp.packet(ANY, bad, ANY), {
        name = "rx",
        on_presence = function() events[#events + 1] = "presence" end,
        on_absence = function(_, _, reason) events[#events + 1] = "absence " .. tostring(reason) end }))
      timer.sleep(50)
    end)
    assert.are.same({ "presence", "absence cannot bind udp port 70000: port out of range (0 to 65535)" }, events)
  end)

  it("names a port that is not an integer as the term it is", function()
    local reasons = {}
    N.run(function()
      for i, port in ipairs { "x", { 1 }, 2 ^ 63 } do
        market.perform(market.subscriber(udp.packet(ANY, udp.listener(port), ANY), {
          name = "rx" .. i, on_absence = function(_, _, reason) reasons[i] = reason end }))
      end
      timer.sleep(50)
    end)
    assert.same({
      'cannot bind udp port "x": the port must be an integer',
      "cannot bind udp port [1]: the port must be an integer",
      "cannot bind udp port 9.2233720368547758e+18: the port must be an integer",
    }, reasons)
  end)

  it("reports a port in use as the listener's absence with a reason", function()
    local sys = require "market.sys"
    local held = assert(sys.udp_bind(0))
    local port = held:local_port()
    finally(function() held:close() end)
    local ev
    N.run(function()
      market.perform(market.subscriber(udp.packet(ANY, udp.listener(port), ANY), "rx"))
      ev = market.wait_for(function(e) return e.endpoint == "rx" and e.type == "absence" end)
    end)
    assert.equal(("cannot bind udp port %d: address already in use"):format(port), ev.reason)
  end)

  it("closes the socket when the last subscriber goes", function()
    local seen = {}
    N.run(function()
      local me = udp.handle("brief")
      market.perform(market.subscriber(udp.packet(ANY, me, ANY), "rx"),
        market.subscriber(udp.bound(me, ANY), {
          name = "bound",
          on_presence = function(_, role) seen[#seen + 1] = "bound " .. math.type(role.topic.port) end,
          on_absence = function(_, _, reason) seen[#seen + 1] = "unbound " .. tostring(reason) end }))
      timer.sleep(20)
      market.perform(market.delete_endpoint("rx"))
      timer.sleep(20)
    end)
    assert.are.same({ "bound integer", "unbound nil" }, seen)
  end)

  it("keeps the socket for a subscriber that comes as the last one goes", function()
    -- The driver stopped the socket and at once spawned another for the
    -- same local: the newcomer saw the old one's presence, its absence
    -- with no reason, then the new one's.
    local port = N.free_port("udp")
    local seen, got = {}, {}
    N.run(function()
      local here = udp.listener(port)
      local function sub(name)
        return market.subscriber(udp.packet(ANY, here, ANY), {
          name = name,
          on_presence = function() seen[#seen + 1] = name .. " presence" end,
          on_absence = function(_, _, reason, _, deleted)
            seen[#seen + 1] = name .. (deleted and " deleted" or " absence " .. tostring(reason))
          end,
          on_message = function(_, m) got[#got + 1] = name .. " " .. m.body end })
      end
      local tx = assert(udp.open())
      market.perform(sub("a"))
      bound_event(here, "b")
      market.perform(market.delete_endpoint("a"), sub("again"))
      tx:sendto("one", "127.0.0.1", port)
      N.wait_until(function() return #got == 1 end)
      -- Once every subscriber has gone, it closes; a later one binds anew.
      market.perform(market.delete_endpoint("again"))
      market.wait_for(function(e) return e.endpoint == "b" and e.type == "absence" end)
      market.perform(sub("later"))
      N.wait_until(function() return seen[#seen] == "later presence" end)
      tx:sendto("two", "127.0.0.1", port)
      N.wait_until(function() return #got == 2 end)
      market.perform(market.delete_endpoint("later"), market.delete_endpoint("b"))
      tx:close()
    end)
    assert.same({ "a presence", "a deleted", "again presence", "again deleted",
                  "later presence" }, seen)
    assert.same({ "again one", "later two" }, got)
  end)

  it("binds no socket for a handle that holds the wildcard inside, an observer's pattern", function()
    -- Only a wildcard at the top (udp.handle(_)) was a pattern: a handle
    -- of {"conn", _} got a socket, which sent every datagram of
    -- udp.handle({"conn", 1}) a second time.
    local got, names = {}, {}
    N.run(function()
      local rx = assert(udp.open())
      market.perform(market.subscriber(udp.packet(ANY, udp.handle({ "conn", ANY }), ANY), "sniff"))
      local c1 = udp.handle({ "conn", 1 })
      market.perform(market.subscriber(udp.packet(ANY, c1, ANY), "c1"))
      bound_event(c1, "c1 bound")
      for _, p in ipairs(market.snapshot().vm.processes) do
        if p.name:find("^udp ") then names[#names + 1] = p.name:gsub("udp%-open%(%d+%)", "udp-open(N)") end
      end
      market.perform(send(udp.packet(c1, udp.remote_address("127.0.0.1", rx.port), "once")))
      got[1] = rx:receivefrom(5000)
      got[2] = select(2, rx:receivefrom(200))
      rx:close()
    end)
    table.sort(names)
    assert.same({ 'udp udp-handle(["conn", 1])', "udp udp-handle(udp-open(N))" }, names)
    assert.same({ "once", "timeout" }, got)
  end)

  it("closes the socket at once when its process is killed", function()
    -- A killed process runs no more handlers: its socket waited for a
    -- collection (stopped here), the port taken, and binding it again
    -- failed with "address already in use".
    local port = N.free_port("udp")
    local seen = {}
    N.no_collections(finally)
    N.run(function()
      local here = udp.listener(port)
      local function bind()
        market.perform(market.subscriber(udp.packet(ANY, here, ANY), "rx"),
                       market.subscriber(udp.bound(here, ANY), "b"))
        local ev = market.wait_for(function(e)
          return e.endpoint == "rx" and e.type == "absence" or e.endpoint == "b"
        end)
        seen[#seen + 1] = ev.type .. " " .. tostring(ev.reason or ev.role.topic.port)
        market.perform(market.delete_endpoint("b"))
      end
      bind()
      N.kill_named("^udp ")
      market.perform(market.delete_endpoint("rx"))
      market.pause()
      bind()
      market.perform(market.delete_endpoint("rx"))
    end)
    assert.same({ "presence " .. port, "presence " .. port }, seen)
  end)

  it("ends a driver's sockets with it: a driver started again binds in their place", function()
    -- As for tcp listeners (tcp_driver_spec): an orphan socket held the
    -- port, and the new driver's could not bind it.
    local port = N.free_port("udp")
    local seen = {}
    N.no_collections(finally)
    local ok, err = market.ground_vm(function()
      local here = udp.listener(port)
      local first = market.perform(market.spawn(udp.driver, { name = "first driver" }))
      market.perform(market.subscriber(udp.packet(ANY, here, ANY), "rx"),
                     market.subscriber(udp.bound(here, ANY), "b"))
      local function next_status()
        -- (A bind that fails is the absence of the packets' publisher,
        -- which also goes with the driver, as its bound record does.)
        local ev = market.wait_for(function(e)
          return e.endpoint == "b" or e.endpoint == "rx" and e.type == "absence" and
            not tostring(e.reason):find("driver ended", 1, true)
        end, 2000)
        if not ev then seen[#seen + 1] = "none in 2 s"; return end
        seen[#seen + 1] = ev.endpoint .. " " .. ev.type .. " " ..
          tostring(ev.type == "presence" and ev.role.topic.port or ev.reason)
      end
      next_status()
      market.perform(market.quit(first, "failed"))
      next_status()
      market.perform(market.spawn(udp.driver, { name = "second driver" }))
      next_status()
      market.perform(market.delete_endpoint("rx"), market.delete_endpoint("b"))
    end)
    assert(ok, err)
    assert.same({ "b presence " .. port, 'b absence the udp driver ended: "failed"',
                  "b presence " .. port }, seen)
  end)

  it("holds what waits for names within udp.MAX_QUEUED and udp.MAX_RESOLVING", function()
    -- A resolver that is slow (or never answers) must not make a socket
    -- grow: what waits for names is bounded, the rest dropped and counted.
    local sys = require "market.sys"
    local max_queued, max_resolving = udp.MAX_QUEUED, udp.MAX_RESOLVING
    finally(function()
      udp.MAX_QUEUED, udp.MAX_RESOLVING = max_queued, max_resolving
      sys.set_resolve_delay(0)
    end)
    local got, dropped, by_name = {}, {}, nil
    N.run(function()
      local port, me = echo_pair("held", got)
      udp.MAX_QUEUED, udp.MAX_RESOLVING = 230, 2
      sys.set_resolve_delay(300)
      local before = udp.stats.dropped
      -- Ten datagrams of 50 bytes for one name, at once: three fit in 230
      -- bytes (each counted with its 16-byte slot), seven are dropped.
      local sends = {}
      for i = 1, 10 do
        sends[i] = send(udp.packet(me, udp.remote_address("localhost", port), ("%02d"):format(i):rep(25)))
      end
      market.perform(table.unpack(sends))
      market.pause()
      dropped[1] = udp.stats.dropped - before
      -- Two names are being resolved at most: a second one fits (1 byte),
      -- a third is dropped, while a numeric address goes at once.
      market.perform(send(udp.packet(me, udp.remote_address("localhost", 9), "x")),
                     send(udp.packet(me, udp.remote_address("localhost", 10), "y")),
                     send(udp.packet(me, udp.remote_address("127.0.0.1", port), "numeric")))
      market.pause()
      dropped[2] = udp.stats.dropped - before
      await_replies(got, 4)
      by_name = #got
      market.perform(send({ "stop-udp-server" }))
    end, 20000)
    assert.same({ 7, 8 }, dropped)
    assert.equal(4, by_name)
    assert.same({ "numeric", ("01"):rep(25), ("02"):rep(25), ("03"):rep(25) }, got)
  end)

  it("counts what it still holds when the socket closes as dropped", function()
    local sys = require "market.sys"
    finally(function() sys.set_resolve_delay(0) end)
    local dropped
    N.run(function()
      local got = {}
      local port, me = echo_pair("closing", got)
      sys.set_resolve_delay(300)
      local before = udp.stats.dropped
      market.perform(send(udp.packet(me, udp.remote_address("localhost", port), "a")),
                     send(udp.packet(me, udp.remote_address("localhost", port), "b")))
      market.pause()
      -- The last subscriber goes while the name resolves: the socket closes.
      market.perform(market.delete_endpoint("rx"))
      market.wait_for(function(e) return e.endpoint == "mine" and e.type == "absence" end)
      dropped = udp.stats.dropped - before
      market.perform(send({ "stop-udp-server" }))
    end)
    assert.equal(2, dropped)
  end)

  it("closes a name's resolver pipe with the socket when its process is killed", function()
    -- Before, a killed socket process's pending lookups kept their pipes
    -- until a collection happened to find them.
    local sys = require "market.sys"
    finally(function() sys.set_resolve_delay(0) end)
    -- (The pipe closed before counting again: the collector is stopped
    -- below, and would not close it.)
    local function fds()
      local n, ls = 0, io.popen("ls /proc/" .. select(2, sys.host_pid()) .. "/fd")
      for _ in ls:lines() do n = n + 1 end
      ls:close()
      return n
    end
    local bound, killed
    N.run(function()
      local port, me = echo_pair("killed", {})
      bound = fds()
      sys.set_resolve_delay(300)
      market.perform(send(udp.packet(me, udp.remote_address("localhost", port), "a")))
      market.pause()
      local pid
      for _, p in ipairs(market.snapshot().vm.processes) do
        if p.name == 'udp udp-handle("killed")' then pid = p.pid end
      end
      assert(pid, "the socket's process")
      collectgarbage("stop")
      market.perform(market.quit(pid, "killed"))
      market.pause()
      -- Until the lookup's thread is done (its delay 300 ms, then the
      -- lookup), 5 s at most: a fixed 400 ms left a loaded machine 100.
      for _ = 1, 100 do
        timer.sleep(50)
        killed = fds()
        if killed == bound - 2 then break end
      end
      collectgarbage("restart")
      market.perform(send({ "stop-udp-server" }))
    end)
    assert.equal(bound - 2, killed)      -- the socket and the pipe went
  end)

  it("holds empty datagrams for a full socket buffer within udp.MAX_QUEUED too", function()
    -- A full send buffer (sendto would block) is made here by making
    -- sendto say so; on loopback it never does.  Each datagram held counts
    -- with its 16-byte slot, as for names, or empty ones would never fill
    -- the queue.
    local methods = debug.getregistry()["market.sys.socket"].__index
    local sendto, max_queued = methods.sendto, udp.MAX_QUEUED
    finally(function() methods.sendto, udp.MAX_QUEUED = sendto, max_queued end)
    local got, dropped = {}, nil
    N.run(function()
      local port, me = echo_pair("full", got)
      udp.MAX_QUEUED = 160
      methods.sendto = function() return false end
      local before, sends = udp.stats.dropped, {}
      for i = 1, 20 do sends[i] = send(udp.packet(me, udp.remote_address("127.0.0.1", port), "")) end
      market.perform(table.unpack(sends))
      market.pause()
      dropped = udp.stats.dropped - before
      methods.sendto = sendto
      await_replies(got, 10)
      timer.sleep(20)
      market.perform(send({ "stop-udp-server" }))
    end)
    assert.equal(10, dropped)
    assert.equal(10, #got)
  end)

  it("drops a datagram for a host name holding a NUL byte", function()
    -- The resolver reads a C string: "127.0.0.1\0x" would be 127.0.0.1.
    local got, dropped = {}, nil
    N.run(function()
      local port, me = echo_pair("nul", got)
      local before = udp.stats.dropped
      market.perform(send(udp.packet(me, udp.remote_address("127.0.0.1\0x", port), "nul")),
                     send(udp.packet(me, udp.remote_address("127.0.0.1", port), "plain")))
      await_replies(got, 1)
      timer.sleep(20)
      dropped = udp.stats.dropped - before
      market.perform(send({ "stop-udp-server" }))
    end)
    assert.equal(1, dropped)
    assert.same({ "plain" }, got)
  end)

  it("drops a packet whose destination or body is a wildcard, and keeps the socket", function()
    -- udp.packet(me, _, body) unifies with the socket's subscription to
    -- udp.packet(me, udp.remote_address(_, _), _) and arrives as sent, not
    -- refined: its destination is no udp.remote_address.
    local got, dropped, lost = {}, nil, {}
    N.run(function()
      local here = udp.listener(0)
      market.perform(market.subscriber(udp.packet(ANY, here, ANY), {
        name = "srx", on_message = function(_, m)
          -- Only datagrams: the wildcard packets reach this subscriber too.
          if udp.remote_address:is(m.source) then got[#got + 1] = m.body end
        end }))
      local port = bound_event(here, "b").role.topic.port
      local me = udp.handle("wild")
      market.perform(market.subscriber(udp.packet(ANY, me, ANY), {
        name = "rx", on_absence = function(_, _, reason) lost[#lost + 1] = tostring(reason) end }))
      bound_event(me, "mine")
      local before = udp.stats.dropped
      market.perform(send(udp.packet(me, ANY, "to anyone")),
                     send(udp.packet(me, udp.remote_address("127.0.0.1", port), ANY)),
                     send(udp.packet(me, udp.remote_address("127.0.0.1", port), "still here")))
      await_replies(got, 1)
      dropped = udp.stats.dropped - before
    end)
    assert.same({}, lost)
    assert.equal(2, dropped)
    assert.same({ "still here" }, got)
  end)

  it("remembers the kinds of problem it warned of, not every host name that had one", function()
    -- One warning per socket and kind of problem: a host name in the
    -- kind made every name that failed a kind of its own, kept for the
    -- socket's life.
    local dropped, grown
    N.run(function()
      local got = {}
      local port, me = echo_pair("names", got)
      local pad, sends = ("x"):rep(5000), {}
      for i = 1, 2000 do
        sends[i] = send(udp.packet(me, udp.remote_address(pad .. "\0" .. i, port), "lost"))
      end
      collectgarbage("collect")
      local before, was = collectgarbage("count"), udp.stats.dropped
      market.perform(table.unpack(sends))
      sends = nil
      market.pause()
      collectgarbage("collect")
      grown = collectgarbage("count") - before
      dropped = udp.stats.dropped - was
      market.perform(send({ "stop-udp-server" }))
    end)
    assert.equal(2000, dropped)
    assert.is_true(grown < 2000, ("the socket grew by %.0f KiB"):format(grown))
  end)

  it("warns of each kind of problem of each socket once, the log's rate limit or not", function()
    -- The log allows one place 5 lines in 10 s (docs/inspect.md), and all
    -- the drops' lines were one place: the sixth kind in 10 s, on any
    -- socket, was never said, though udp.stats.dropped counted it.
    local lines, dropped, got = {}, nil, {}
    N.run(function()
      market.log.sink(function(level, _, message)
        if level == "warn" and message:find("dropping a datagram", 1, true) then
          lines[#lines + 1] = message
        end
      end)
      local port, me = echo_pair("kinds", got)
      local to = udp.remote_address("127.0.0.1", port)
      local before = udp.stats.dropped
      market.perform(send(udp.packet(me, to, 42)),
                     send(udp.packet(me, udp.remote_address("255.255.255.255", port), "x")),
                     send(udp.packet(me, udp.remote_address("127.0.0.1\0x", port), "x")),
                     send(udp.packet(me, udp.remote_address("127.0.0.1", 0), "x")),
                     send(udp.packet(me, to, ("x"):rep(70000))),
                     send(udp.packet(me, udp.remote_address("", port), "x")),
                     send(udp.packet(me, udp.remote_address("127.0.0.1", 0), "x")),   -- a kind again
                     send(udp.packet(me, to, "still here")))
      await_replies(got, 1)
      dropped = udp.stats.dropped - before
      market.log.sink(nil)
      market.perform(send({ "stop-udp-server" }))
    end)
    assert.equal(7, dropped)
    assert.equal(6, #lines, table.concat(lines, "\n"))
    assert.truthy(table.concat(lines, "\n"):find("destination port not 1 to 65535", 1, true))
    assert.same({ "still here" }, got)
  end)

  it("drops a datagram for an unknown host, and keeps the socket", function()
    local dropped, reply
    N.run(function()
      market.perform(server(0, function(body) return body:upper() end))
      local port = bound_event(udp.listener(0), "b").role.topic.port
      local me = udp.handle("lost")
      market.perform(market.subscriber(udp.packet(ANY, me, ANY), "rx"))
      bound_event(me, "mine")
      local before = udp.stats.dropped
      market.perform(send(udp.packet(me, udp.remote_address("no-such-host.invalid", 9), "lost")))
      -- The resolver answers on its own time (a busy machine, no DNS
      -- server): wait up to 30 s for the drop, not a fixed 2.
      for _ = 1, 3000 do
        if udp.stats.dropped > before then break end
        timer.sleep(10)
      end
      dropped = udp.stats.dropped - before
      market.perform(send(udp.packet(me, udp.remote_address("127.0.0.1", port), "still here")))
      reply = market.wait_for(function(e) return e.endpoint == "rx" end).message.body
      market.perform(send({ "stop-udp-server" }))
    end, 40000)
    assert.equal(1, dropped)
    assert.equal("STILL HERE", reply)
  end)
end)

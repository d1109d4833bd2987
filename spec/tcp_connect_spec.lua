-- tcp_connect_spec.lua: outbound connections (docs/tcp.md, "Connecting"):
-- the connect timeout, and presence from the driver meaning connected.
--
-- A peer that never answers, on loopback and without privileges: a
-- listening socket nobody accepts from, with a listen queue of 0 that one
-- connection fills.  Linux then drops further SYNs, and a client stays in
-- SYN_SENT, sending its SYN again after 1 s, 3 s, ...; once the server
-- accepts the connection in the queue, the next SYN gets through.
package.path = "spec/support/?.lua;" .. package.path
local market = require "market"
local tcp = require "market.tcp"
local timer = require "market.timer"
local sys = require "market.sys"
local N = require "net"
local ANY = market._
local send, T, quit = market.send, market.transition_no_state, market.quit

-- Straight-line: a listener whose queue is full: the socket, its port,
-- and the one connection in its queue (connected: the handshake is done).
local function full_listener()
  local l = assert(sys.tcp_listen(0, 0))
  local port = l:local_port()
  return l, port, N.connect(port)
end

-- A client process for tcp.handle(id) to address a.  It records in `log`
-- "presence" (its publisher's: the driver's outbound subscription), with
-- the time in log.presence_at, and "eof" or "absence <reason>" (its
-- subscriber's), then quits and sends {"done", id}.  At presence it sends `greeting`, if
-- any.  opts: settings published for its handle first (tcp.options).
local function client(id, a, log, greeting, opts)
  local h = tcp.handle(id)
  return market.spawn(function()
    if opts then market.perform(tcp.options(h, opts)) end
    return market.transition(nil,
      market.subscriber(tcp.channel(a, h, ANY), {
        on_message = function(_, m)
          if m.subpacket == market.EOF then
            log[#log + 1] = "eof"
            return T(send({ "done", id }), quit())
          end
        end,
        on_absence = function(_, _, reason)
          log[#log + 1] = "absence " .. tostring(reason)
          return T(send({ "done", id }), quit())
        end }),
      market.publisher(tcp.channel(h, a, ANY), {
        on_presence = function()
          log[#log + 1] = "presence"
          log.presence_at = market.now()
          if greeting then return T(send(tcp.channel(h, a, greeting))) end
        end }))
  end, { name = "client " .. tostring(id) })
end

-- Straight-line: read s until it has given `want` bytes (or its end).
local function read_bytes(s, want)
  local got = ""
  while #got < want do
    N.wait_fd(s:fd())
    local data, err = s:read()
    if data then got = got .. data elseif data == nil then return got, err end
  end
  return got
end

describe("tcp connect", function()
  local saved
  before_each(function() saved = tcp.CONNECT_TIMEOUT end)
  after_each(function() tcp.CONNECT_TIMEOUT = saved end)

  it("has a timeout setting of 30 s by default, checked like the others", function()
    assert.equal(30000, tcp.CONNECT_TIMEOUT)
    assert.has_error(function() tcp.options(tcp.handle(1), { connect_timeout = -1 }) end,
      "tcp.options: connect_timeout must be an integer from 0 to 2305843009213693951, got -1")
    assert.has_error(function() tcp.options(tcp.handle(1), { connect_timeout = 0.5 }) end)
  end)

  it("ends a connect that gets no answer after its timeout, with a reason that says so", function()
    local log, t0, l, port, filler = {}, nil, nil, nil, nil
    N.run(function()
      l, port, filler = full_listener()
      t0 = market.now()
      market.perform(client("late", tcp.address("127.0.0.1", port), log, "lost",
                            { connect_timeout = 300 }))
      N.await({ "done", "late" })
    end)
    local took = log.presence_at - t0
    filler:close()
    l:close()
    -- The flows appear only to go at once, with the reason.
    assert.are.same({ "presence", "absence connect timed out after 300 ms" }, { table.unpack(log) })
    assert.is_true(took >= 290 and took < 5000, took)
  end)

  -- A message with a wildcard in it (send(market._), or here one aimed at
  -- every ground alarm of either clock) reaches the connection's watch of
  -- its deadline: it was taken for the deadline, and the connect timed out
  -- at once.
  it("keeps its deadline when a process sends a wildcard alarm", function()
    local log, t0, l, port, filler = {}, nil, nil, nil, nil
    N.run(function()
      l, port, filler = full_listener()
      t0 = market.now()
      market.perform(client("kept", tcp.address("127.0.0.1", port), log, "lost",
                            { connect_timeout = 400 }))
      timer.sleep(50)
      market.perform(market.send(market.ground.alarm(ANY)), market.send(market.ground.monotonic_alarm(ANY)))
      N.await({ "done", "kept" })
    end)
    local took = log.presence_at - t0
    filler:close()
    l:close()
    assert.are.same({ "presence", "absence connect timed out after 400 ms" }, { table.unpack(log) })
    assert.is_true(took >= 390 and took < 5000, took)
  end)

  it("takes the module's default when no setting names the connection", function()
    local log, l, port, filler = {}, nil, nil, nil
    tcp.CONNECT_TIMEOUT = 200
    N.run(function()
      l, port, filler = full_listener()
      market.perform(client("dflt", tcp.address("127.0.0.1", port), log))
      N.await({ "done", "dflt" })
    end)
    filler:close()
    l:close()
    assert.are.same({ "presence", "absence connect timed out after 200 ms" }, { table.unpack(log) })
  end)

  it("fails the connection, not the driver, when a module default is bad", function()
    -- defaults() raised in the driver's own handler: the driver died, and
    -- with it every later listen and connect of the VM (no absence came).
    local bad, good = {}, {}
    local l = assert(sys.tcp_listen(0, 8, false, "127.0.0.1"))
    local a = tcp.address("127.0.0.1", l:local_port())
    local saved_hw = tcp.HIGH_WATER
    N.run(function()
      tcp.HIGH_WATER = -1
      market.perform(client("bad", a, bad))
      N.await({ "done", "bad" })
      -- (Withdrawn a step after the presence, the failure missed
      -- tcp.connect's look: it returned a connection.)
      bad.connect = { tcp.connect(a) }
      tcp.HIGH_WATER = saved_hw
      market.perform(client("good", a, good, "x"))
      local s = N.accept(l)
      s:close()
      N.await({ "done", "good" })
    end)
    tcp.HIGH_WATER = saved_hw
    l:close()
    assert.are.same({ "presence", "absence market.tcp: tcp.HIGH_WATER: high_water must be an " ..
                      "integer from 1 to 576460752303423487, got -1" }, { table.unpack(bad) })
    assert.same({ nil, "market.tcp: tcp.HIGH_WATER: high_water must be an integer from 1 to " ..
                       "576460752303423487, got -1" }, bad.connect)
    assert.equal("presence", good[1])
  end)

  it("moves the deadline when a setting comes while connecting", function()
    local log, l, port, filler = {}, nil, nil, nil
    N.run(function()
      l, port, filler = full_listener()
      market.perform(client("moved", tcp.address("127.0.0.1", port), log))
      timer.sleep(50)
      -- (30 s by default: the spec's watchdog would end it first.)
      market.perform(tcp.options(tcp.handle("moved"), { connect_timeout = 200 }))
      N.await({ "done", "moved" })
    end)
    filler:close()
    l:close()
    assert.are.same({ "presence", "absence connect timed out after 200 ms" }, { table.unpack(log) })
  end)

  it("shows the flows once connected: what is sent at presence reaches a server accepting late",
     function()
    local log, accepting_at, got, l, port, filler = {}, nil, nil, nil, nil, nil
    N.run(function()
      l, port, filler = full_listener()
      market.perform(client("c", tcp.address("127.0.0.1", port), log, "hello"))
      timer.sleep(300)
      -- The server makes room: the client's next SYN gets through.
      accepting_at = market.now()
      local first = N.accept(l)
      local s = N.accept(l)
      got = read_bytes(s, 5)
      -- The client sees the end of the stream and goes.
      s:close()
      first:close()
      N.await({ "done", "c" })
    end, 20000)
    filler:close()
    l:close()
    assert.equal("hello", got)
    assert.equal("presence", log[1])
    assert.is_true(log.presence_at >= accepting_at,
      ("presence at %.0f ms, before the server accepted (%.0f ms)"):format(log.presence_at,
                                                                        accepting_at))
  end)

  it("stops connecting when its users go, and connects anew for the same handle later", function()
    local log1, log2, l, filler = {}, {}, nil, nil
    N.run(function()
      local port
      l, port, filler = full_listener()
      local a = tcp.address("127.0.0.1", port)
      -- A user that gives up while the connect is pending.
      market.perform(market.spawn(function()
        local h = tcp.handle("again")
        market.perform(market.subscriber(tcp.channel(a, h, ANY), "in"),
                       market.publisher(tcp.channel(h, a, ANY), {
                         name = "out", on_presence = function() log1[#log1 + 1] = "presence" end }))
        timer.sleep(100)
        market.perform(send({ "done", "first" }), quit())
      end, { name = "quitter" }))
      N.await({ "done", "first" })
      -- Room in the queue, and the same handle asked for again: a new
      -- connection, not the memory of the abandoned one.
      local first = N.accept(l)
      market.perform(client("again", a, log2, "x"))
      local s = N.accept(l)
      assert.equal("x", read_bytes(s, 1))
      s:close()
      first:close()
      N.await({ "done", "again" })
    end, 20000)
    filler:close()
    l:close()
    assert.are.same({}, log1)
    assert.are.same({ "presence", "eof" }, { table.unpack(log2) })
  end)
end)

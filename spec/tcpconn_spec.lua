-- tcpconn_spec.lua: corners of the TCP connection managers, the native
-- processes of drivers/tcpconn.c (docs/tcp.md), that tcp_driver_spec.lua
-- does not reach: bad addresses, a sender's non-string subpackets, the
-- linger bound on flushing, tcp.stats, and many connections at once.
package.path = "spec/support/?.lua;" .. package.path
local market = require "market"
local tcp = require "market.tcp"
local sys = require "market.sys"
local N = require "net"
local ANY, EOF = market._, market.EOF
local send, T, quit = market.send, market.transition_no_state, market.quit

local bound = N.bound

local serve = N.tcp_serve

-- Straight-line raw clients (spec/support/net.lua).
local connect, write_all, read_all, wait_until = N.connect, N.write_all, N.read_all, N.wait_until

-- A session that sends back what it reads, and half-closes and goes at
-- the end of it.
local function echo(remote, here)
  return function()
    return market.transition(nil,
      market.subscriber(tcp.channel(remote, here, ANY), {
        on_message = function(_, m)
          if m.subpacket == EOF then return T(send(tcp.channel(here, remote, EOF)), quit()) end
          return T(send(tcp.channel(here, remote, m.subpacket)))
        end }),
      market.publisher(tcp.channel(here, remote, ANY)))
  end
end

-- How many TCP connection managers (processes of kind "tcp") the VM
-- snapshot `vm` and those nested in it hold.
local function managers(vm)
  local n = 0
  for _, p in ipairs(vm.processes) do
    if p.kind == "tcp" then n = n + 1 end
    if p.vm then n = n + managers(p.vm) end
  end
  return n
end

describe("tcp connection managers", function()
  local saved
  before_each(function()
    saved = { tcp.LINGER_MS, tcp.HIGH_WATER }
    tcp.stats.max_queued, tcp.stats.pauses, tcp.stats.overflows = 0, 0, 0
  end)
  after_each(function()
    tcp.LINGER_MS, tcp.HIGH_WATER = saved[1], saved[2]
  end)

  it("reads and sets tcp.stats like a table, and refuses unknown fields", function()
    tcp.stats.pauses = 3
    assert.equal(3, tcp.stats.pauses)
    assert.equal(0, tcp.stats.max_queued)
    assert.is_nil(tcp.stats.nonsense)
    assert.has_error(function() tcp.stats.nonsense = 1 end)
    assert.matches("max_queued = 0, pauses = 3", tostring(tcp.stats))
  end)

  it("fails a connection to a bad address with a reason", function()
    local reasons = {}
    N.run(function()
      for i, a in ipairs { tcp.address("127.0.0.1", 0), tcp.address("127.0.0.1", 70000),
                           tcp.address(42, 80), tcp.address("127.0.0.1\0evil.example", 80),
                           tcp.address("", 80) } do
        local h = tcp.handle("bad" .. i)
        market.perform(market.spawn(function()
          return market.transition(nil,
            market.subscriber(tcp.channel(a, h, ANY), {
              on_absence = function(_, _, why)
                reasons[i] = why
                return T(send({ "done", i }), quit())
              end }),
            market.publisher(tcp.channel(h, a, ANY)))
        end))
        N.await({ "done", i })
      end
    end)
    assert.equal('bad address tcp-address("127.0.0.1", 0): want tcp.address(host, port 1..65535)'
                 .. ' or tcp.address(path, "unix")', reasons[1])
    assert.matches("^bad address tcp%-address%(\"127.0.0.1\", 70000%)", reasons[2])
    assert.matches("^bad address tcp%-address%(42, 80%)", reasons[3])
    -- Not 127.0.0.1: the resolver would have read the name only to its NUL.
    assert.matches("^bad address .*: host name holds a NUL byte$", reasons[4])
    -- (It was "cannot resolve : empty host name".)
    assert.equal('bad address tcp-address("", 80): empty host name', reasons[5])
  end)

  it("ignores a subpacket that is not a string and goes on", function()
    local got
    N.run(function()
      market.perform(serve(0, function(remote, here)
        return function()
          return market.transition(nil,
            market.subscriber(tcp.channel(remote, here, ANY)),
            market.publisher(tcp.channel(here, remote, ANY), {
              on_presence = function()
                return T(send(tcp.channel(here, remote, "one ")), send(tcp.channel(here, remote, 42)),
                         send(tcp.channel(here, remote, { "a", "list" })),
                         send(tcp.channel(here, remote, "")),
                         send(tcp.channel(here, remote, "two")), send(tcp.channel(here, remote, EOF)),
                         quit())
              end }))
        end
      end))
      local p = bound(0)
      local raw = assert(sys.tcp_connect(assert(sys.resolve("127.0.0.1", p))[1].sa))
      got = table.pack(read_all(raw))
      raw:close()
      market.perform(send({ "stop-server", 0 }))
    end)
    assert.equal("one two", got[1])
    assert.equal("eof", got[2])
  end)

  it("closes a connection whose output is not taken within tcp.LINGER_MS", function()
    tcp.LINGER_MS = 300
    local total, got, ended, waited = 16 * 1024 * 1024, nil, nil, nil
    N.run(function()
      market.perform(serve(0, function(remote, here)
        return function()
          return market.transition(nil,
            market.publisher(tcp.channel(here, remote, ANY), {
              -- Everything at once, then go: the manager lingers.
              on_presence = function()
                return T(send(tcp.channel(here, remote, ("q"):rep(total))), send({ "sent" }), quit())
              end }))
        end
      end))
      local p = bound(0)
      market.perform(market.subscriber({ "sent" }, "sent"))
      local t0 = market.now()   -- the linger time runs from after this
      local raw = assert(sys.tcp_connect(assert(sys.resolve("127.0.0.1", p))[1].sa))
      -- Once the session has sent everything and gone (so the manager
      -- lingers), do not read until the manager has closed the connection.
      -- Waiting for it, rather than for a fixed time, keeps the test right
      -- on a machine too loaded to run the manager within a second.
      market.wait_for(function(e) return e.type == "message" and e.endpoint == "sent" end)
      while managers(market.snapshot().vm) > 0 and market.now() - t0 < 30000 do
        market.yield(50)
      end
      got, ended = read_all(raw)
      waited = market.now() - t0
      raw:close()
      market.perform(send({ "stop-server", 0 }))
    end)
    -- What the kernel had taken arrives, the rest was dropped at close.
    assert.is_true(#got > 0 and #got < total, #got .. " bytes")
    assert.is_true(ended == "eof" or ended == "connection reset by peer", ended)
    assert.is_true(waited >= 300, waited .. " ms")
  end)

  it("serves many connections at once, each its own bytes", function()
    local n, bad = 300, 0
    N.run(function()
      market.perform(serve(0, echo))
      local p = bound(0)
      local sa = assert(sys.resolve("127.0.0.1", p))[1].sa
      local socks = {}
      for i = 1, n do
        socks[i] = assert(sys.tcp_connect(sa))
      end
      -- Write once writable (connected), then half-close.
      for i = 1, n do
        local s = socks[i]
        market.perform(market.subscriber(market.ground.writable(s:fd()), "w"))
        market.wait_for(function(e) return e.type == "message" and e.endpoint == "w" end)
        market.perform(market.delete_endpoint("w"))
        assert(s:write("conn " .. i) == #("conn " .. i))
        assert(s:shutdown())
      end
      for i = 1, n do
        local data, how = read_all(socks[i])
        if data ~= "conn " .. i or how ~= "eof" then bad = bad + 1 end
        socks[i]:close()
      end
      market.perform(send({ "stop-server", 0 }))
    end, 30000)
    assert.equal(0, bad)
  end)

  -- Chunks about as large as the last are read into their term in place
  -- (drivers/tcpconn.c, on_readable): as large (kept), longer (the rest
  -- read into the driver's buffer and joined), much shorter (copied into a
  -- term that fits), past read_size, and under the size read in place.
  -- Every byte must come back, in order, whatever path it took.
  local function chunks_come_back(sizes, options)
    local got, want, lens = {}, {}, {}
    N.run(function()
      local here = tcp.listener(0)
      if options then market.perform(tcp.options(here, options)) end
      market.perform(serve(0, function(remote, h)
        return function()
          return market.transition(nil,
            market.subscriber(tcp.channel(remote, h, ANY), {
              on_message = function(_, m)
                if m.subpacket == EOF then return T(send(tcp.channel(h, remote, EOF)), quit()) end
                lens[#lens + 1] = #m.subpacket
                return T(send(tcp.channel(h, remote, m.subpacket)))
              end }),
            market.publisher(tcp.channel(h, remote, ANY)))
        end
      end))
      local s = connect(bound(0))
      for i, n in ipairs(sizes) do
        -- bytes that differ from chunk to chunk and within one
        local t = {}
        for j = 1, n do t[j] = string.char((i * 31 + j * 7) % 256) end
        want[i] = table.concat(t)
        assert(write_all(s, want[i]))
        -- the whole chunk back before the next is written: each comes
        -- to the server apart from the others
        local back = {}
        local have = 0
        while have < n do
          N.wait_fd(s:fd())
          local data = s:read()
          if data then back[#back + 1] = data; have = have + #data end
        end
        got[i] = table.concat(back)
      end
      assert(s:shutdown())
      local rest, how = read_all(s)
      s:close()
      got.rest, got.how = rest, how
      market.perform(send({ "stop-server", 0 }))
    end, 30000)
    for i = 1, #sizes do
      assert.equal(#want[i], #got[i], "chunk " .. i)
      assert.is_true(want[i] == got[i], "chunk " .. i .. "'s bytes")
    end
    assert.equal("", got.rest)
    assert.equal("eof", got.how)
    return lens
  end

  it("reads raw chunks in place, longer, shorter and past read_size, every byte in order", function()
    local sizes = { 3000, 3000, 2900, 10000, 10000, 500, 20000, 2000, 4096, 4096, 70000, 65536,
                    100, 1 }
    local lens = chunks_come_back(sizes)
    local total, seen = 0, 0
    for _, n in ipairs(sizes) do total = total + n end
    for _, n in ipairs(lens) do
      seen = seen + n
      assert.is_true(n <= 65536, "a chunk of at most tcp.READ_SIZE bytes")
    end
    assert.equal(total, seen)
  end)

  it("reads in place within a small read_size", function()
    local lens = chunks_come_back({ 1500, 1500, 5000, 300, 1500 }, { read_size = 1200 })
    for _, n in ipairs(lens) do assert.is_true(n <= 1200, "a chunk of at most read_size bytes") end
  end)

  it("stops watching for its listener's closing once a session has taken the connection", function()
    -- Until a session appears, a manager closes its connection when the
    -- listener closes (boot in tcpconn.c); once one has, that no longer
    -- concerns it, and an idle connection should not hold the endpoint.
    local closed = market.record("tcp-driver:listener-closed", "port")
    local watching, peak, data, how = 0, 0, nil, nil
    N.run(function()
      market.perform(market.spawn(function()
        return market.transition(nil,
          market.observe_subscribers(closed(ANY), {
            on_presence = function()
              watching = watching + 1
              peak = math.max(peak, watching)
            end,
            on_absence = function() watching = watching - 1 end }),
          market.subscriber({ "stop-watch" }, {
            on_message = function() return T(quit()) end }))
      end))
      market.perform(serve(0, echo))
      local s = connect(bound(0))
      assert(write_all(s, "taken"))
      -- The echo is back: the session took the connection.
      N.wait_fd(s:fd())
      data = s:read()
      N.wait_until(function() return watching == 0 end)
      assert(s:shutdown())
      local rest
      rest, how = read_all(s)
      data = data .. rest
      s:close()
      market.perform(send({ "stop-server", 0 }), send({ "stop-watch" }))
    end)
    assert.equal("taken", data)
    assert.equal("eof", how)
    assert.equal(1, peak)           -- the manager watched until the session came
    assert.equal(0, watching)
  end)

  it("tells the ground before it closes: a watch shared on its socket ends, and a new socket with the same number is heard", function()
    local fd, shared, reused, got
    N.run(function()
      market.perform(serve(0, echo))
      local p = bound(0)
      -- The server's descriptor for client s, once it has accepted it, and
      -- the socket's inode.
      local function server_end(s)
        local ino, sfd
        wait_until(function()
          ino = N.socket_inode(p, s:local_port())
          sfd = ino and ino ~= 0 and N.fd_of_inode(ino)
          return sfd
        end)
        return sfd, ino
      end
      local a = connect(p)
      local ino
      fd, ino = server_end(a)
      -- Another process shares the manager's read watch (and goes when the
      -- watch does, as a subscriber that sees the ground's absence should).
      market.perform(market.spawn(function()
        return market.transition(nil, market.subscriber(market.ground.readable(fd), {
          on_absence = function(_, _, why) shared = why; return T(quit()) end }))
      end, { name = "sharer" }))
      assert(write_all(a, "one"))
      assert(a:shutdown())
      assert.same({ "one", "eof" }, { read_all(a) })
      a:close()
      -- The manager has closed fd (the client hung up first: nothing to
      -- drain).  The next socket the server accepts gets the same number.
      wait_until(function() return N.fd_of_inode(ino) == nil end)
      local b = connect(p)
      reused = server_end(b) == fd
      assert(write_all(b, "two"))
      assert(b:shutdown())
      -- (Joined to the old watch, b's manager would never hear it: the
      -- watchdog would end the spec.)
      got = { read_all(b) }
      b:close()
      market.perform(send({ "stop-server", 0 }))
    end)
    assert.is_true(reused, "the second connection did not get the first one's descriptor")
    assert.equal(("fd %d was closed"):format(fd), shared)
    assert.same({ "two", "eof" }, got)
  end)
end)

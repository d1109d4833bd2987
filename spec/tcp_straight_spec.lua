-- tcp_straight_spec.lua: connections for straight-line code (docs/tcp.md,
-- "Straight-line connections"): tcp.connect, tcp.serve and the connection
-- object's receive, lines, send, shutdown and close; and the setting
-- reading = false that holds a connection's input without loss.  In one
-- ground VM with its drivers, over loopback, ports the kernel picks.
package.path = "spec/support/?.lua;" .. package.path
local market = require "market"
local tcp = require "market.tcp"
local timer = require "market.timer"
local H = require "helpers"
local N = require "net"

-- A deterministic payload of n bytes (no two 4-byte pieces at the same
-- offset alike, so a lost or doubled chunk shows).
local function payload(n)
  local t, i = {}, 0
  while 16 * #t < n do
    t[#t + 1] = ("%015d\n"):format(i)
    i = i + 1
  end
  return table.concat(t):sub(1, n)
end

-- Everything conn receives until its end of stream (or failure: the
-- reason then, after the data).
local function drain(conn)
  local t = {}
  while true do
    local d, why = conn:receive()
    if d == nil then return table.concat(t), why end
    t[#t + 1] = d
  end
end

describe("tcp.connect and tcp.serve", function()
  it("connect, send and receive lines, and see the end of stream", function()
    local got = N.run(function()
      local srv = assert(tcp.serve(0, function(conn)
        for line in conn:lines() do
          if line == "quit" then break end
          assert(conn:send(line:upper() .. "\n"))
        end
        conn:send("bye\n")
      end, { framing = "line" }))
      local c = assert(tcp.connect("127.0.0.1", srv.port, { framing = "line" }))
      local out = {}
      assert(c:send("hello\nworld\n"))
      out[1], out[2] = c:receive(), c:receive()
      c:send("quit\n")
      out[3] = c:receive()
      out[4] = tostring(c:receive())             -- the session went: end of stream
      out[5] = tostring(c:receive())             -- and again
      c:close()
      srv:close()
      return out
    end)
    assert.same({ "HELLO", "WORLD", "bye", "nil", "nil" }, got)
  end)

  it("gives two servers on port 0 two ports, each with its own connections", function()
    local got = N.run(function()
      local seen = { a = 0, b = 0 }
      local function server(name)
        return assert(tcp.serve(0, function(conn)
          seen[name] = seen[name] + 1
          conn:send(name)
        end))
      end
      local a, b = server("a"), server("b")
      local out = { a.port ~= b.port }
      for _, srv in ipairs { a, b, a } do
        local c = assert(tcp.connect("127.0.0.1", srv.port))
        out[#out + 1] = c:receive(5000)
        c:close()
      end
      a:close()
      b:close()
      out[#out + 1] = seen
      return out
    end)
    assert.same({ true, "a", "b", "a", { a = 2, b = 1 } }, got)
  end)

  it("says why a connect or a listen failed, as nil and the reason", function()
    local free = N.free_port()
    local got = N.run(function()
      local out = {}
      out[1] = select(2, tcp.connect("127.0.0.1", free))
      out[2] = select(2, tcp.connect(tcp.address("127.0.0.1", 70000)))
      local srv = assert(tcp.serve(0, function() end))
      out[3] = select(2, tcp.serve(srv.port, function() end))
      srv:close()
      -- Nothing of the failed ones is left.
      local me, left = market.self(), 0
      for _, p in ipairs(market.snapshot().vm.processes) do
        if p.pid == me then
          for _, ep in ipairs(p.endpoints) do
            if ep.name:find("^tcp") then left = left + 1 end
          end
        end
      end
      out[4] = left
      return out
    end)
    assert.same({ "connection refused",
                  'bad address tcp-address("127.0.0.1", 70000): want tcp.address(host, port 1..65535) ' ..
                    'or tcp.address(path, "unix")',
                  "cannot listen on port " .. "%d" .. ": address already in use", 0 },
                { got[1], got[2], got[3] and got[3]:gsub("%d+:", "%%d:", 1), got[4] })
  end)

  it("keeps what arrives while the code waits for something else, and out of market.yield()",
     function()
    local got = N.run(function()
      local srv = assert(tcp.serve(0, function(conn)
        conn:send("one")
        timer.sleep(20)
        conn:send("two")
        conn:shutdown()
        while conn:receive() do end            -- until the client goes
      end))
      local c = assert(tcp.connect("127.0.0.1", srv.port))
      -- The server's observer of its connections gets these chunks too:
      -- they were kept for this process's market.yield() (and piled up
      -- for as long as it waited) ...
      c:send("three")
      c:send("four")
      -- ... and the absence of each connection that ends.
      assert(tcp.connect("127.0.0.1", srv.port)):close()
      timer.sleep(200)
      -- What the spec's own endpoints had (a presence of its watchdog's),
      -- but nothing of the connection's, nor of the server's.
      local strays = {}
      while true do
        local ev = market.yield(0)
        if not ev then break end
        if ev.endpoint:find("^tcp") then strays[#strays + 1] = ev.endpoint end
      end
      local data = drain(c)
      c:close()
      srv:close()
      return { strays, data }
    end)
    assert.same({ {}, "onetwo" }, got)
  end)

  it("times a receive out, and receives what comes later", function()
    local got = N.run(function()
      local srv = assert(tcp.serve(0, function(conn)
        conn:receive()                         -- "go"
        conn:send("late")
        conn:receive()
      end))
      local c = assert(tcp.connect("127.0.0.1", srv.port))
      local out = { c:receive(50) }
      c:send("go")
      out[3] = c:receive(10000)
      c:close()
      srv:close()
      return out
    end)
    assert.same({ nil, "timeout", "late" }, got)
  end)

  it("holds at most MAX_UNREAD bytes unreceived, then reads on without loss; a sender " ..
     "waits while paused", function()
    local data = payload(4 << 20)
    local old = tcp.MAX_UNREAD
    tcp.MAX_UNREAD = 64 * 1024
    local overflows = tcp.stats.overflows
    local ok, got = pcall(N.run, function()
      local srv = assert(tcp.serve(0, function(conn)
        -- 4 MiB in 16 KiB pieces: past high_water (1 MiB) the sends wait.
        for i = 1, #data, 16384 do assert(conn:send(data:sub(i, i + 16383))) end
        conn:shutdown()
        conn:receive()
      end))
      local c = assert(tcp.connect("127.0.0.1", srv.port))
      timer.sleep(300)
      -- Held: what was read before the hold, one read (64 KiB) at most past it.
      local held = c.unread
      local all, why = drain(c)
      c:close()
      srv:close()
      return { held = held, n = #all, same = all == data, why = why }
    end, 60000)
    tcp.MAX_UNREAD = old
    assert(ok, got)
    assert.is_true(got.held > 0 and got.held <= 64 * 1024 + 65536, "held " .. got.held)
    assert.same({ 4 << 20, true }, { got.n, got.same })
    assert.is_nil(got.why)
    assert.equal(overflows, tcp.stats.overflows)
  end)

  -- send looked at the pause only each 64 KiB: with a hard limit below
  -- that, pieces of 1,000 bytes went on into the pause and failed the
  -- connection ("... bytes sent despite backpressure").
  it("waits in a pause before a hard limit below 64 KiB, whoever set it", function()
    local got = N.run(function()
      local result = {}
      local function flood(conn, who)
        local ok, why
        repeat ok, why = conn:send(("y"):rep(1000), 300) until not ok
        result[who] = why
      end
      local srv = assert(tcp.serve(0, function(conn) flood(conn, "server") end,
                                   { high_water = 32768, hard_limit = 32768 }))
      local s = N.connect(srv.port)            -- a raw socket that never reads
      local sink = assert(tcp.serve(0, function(conn)
        N.wait_until(function() return result.client end)
        conn:close()
      end, { reading = false }))
      local c = assert(tcp.connect("127.0.0.1", sink.port, { high_water = 8192, hard_limit = 4000 }))
      flood(c, "client")
      N.wait_until(function() return result.server end)
      c:close()
      s:close()
      srv:close()
      sink:close()
      return result
    end, 30000)
    assert.same({ server = "timeout", client = "timeout" }, got)
  end)

  it("gives up a send after ms while the peer reads nothing, and sends nothing of it", function()
    local got = N.run(function()
      local result
      local srv = assert(tcp.serve(0, function(conn)
        local sent, ok, why = 0, nil, nil
        repeat
          ok, why = conn:send(("z"):rep(4096), 200)
          if ok then sent = sent + 4096 end
        until not ok
        result = { sent = sent, why = why }
      end, { high_water = 16384 }))
      local s = N.connect(srv.port)            -- a raw socket that never reads
      N.wait_until(function() return result end)
      s:close()
      srv:close()
      return result
    end, 30000)
    assert.equal("timeout", got.why)
    -- At least the high-water mark went, and not without end: the kernel's
    -- buffers took some more before the pause.
    assert.is_true(got.sent >= 16384 and got.sent < 64 << 20, "sent " .. got.sent)
  end)

  it("reads n bytes across the chunks they came in, and fewer only at the end of stream",
     function()
    local got = N.run(function()
      local srv = assert(tcp.serve(0, function(conn)
        for _, piece in ipairs { "ab", "cdef", "gh", "ijklmnop" } do
          conn:send(piece)
          timer.sleep(20)                      -- a chunk each, as read
        end
        conn:shutdown()
        conn:receive()
      end))
      local c = assert(tcp.connect("127.0.0.1", srv.port))
      local out = {}
      out[1] = c:read(3)                       -- "ab" and "c" of "cdef"
      out[2] = c:read(1)                       -- "d": the rest of that chunk stays
      out[3] = c:receive()                     -- "ef": receive takes what is left of it
      out[4] = c:read(4)                       -- "gh" and "ij"
      out[5] = c:read(100)                     -- the rest, then the end of stream
      out[6] = tostring(c:read(1))             -- nil: the end of stream
      out[7] = tostring(c:receive())           -- and again
      c:close()
      srv:close()
      return out
    end)
    assert.same({ "abc", "d", "ef", "ghij", "klmnop", "nil", "nil" }, got)
  end)

  it("reads a length-prefixed protocol, a message larger than MAX_UNREAD among them", function()
    local big = payload(3 << 20)
    local msgs = { "hello", "", big, "after the big one" }
    local old = tcp.MAX_UNREAD
    tcp.MAX_UNREAD = 64 * 1024
    local ok, got = pcall(N.run, function()
      local srv = assert(tcp.serve(0, function(conn)
        -- All but the last in one send; the last in two, its length alone.
        local t = {}
        for i = 1, #msgs - 1 do t[i] = string.pack(">s4", msgs[i]) end
        assert(conn:send(table.concat(t)))
        local last = string.pack(">s4", msgs[#msgs])
        conn:send(last:sub(1, 4))
        timer.sleep(50)
        conn:send(last:sub(5))
        conn:shutdown()
        conn:receive()
      end))
      local c = assert(tcp.connect("127.0.0.1", srv.port))
      local out = {}
      while true do
        local head = c:read(4, 20000)
        if not head then break end
        local len = string.unpack(">I4", head)
        out[#out + 1] = len == 0 and "" or assert(c:read(len, 20000))
      end
      c:close()
      srv:close()
      return out
    end, 60000)
    tcp.MAX_UNREAD = old
    assert(ok, got)
    assert.equal(#msgs, #got)
    for i = 1, #msgs do assert.is_true(got[i] == msgs[i], "message " .. i) end
  end)

  it("times a read out with nothing taken, and reads it whole later", function()
    local got = N.run(function()
      local srv = assert(tcp.serve(0, function(conn)
        conn:send("12345")
        conn:receive()                         -- "go"
        conn:send("67890")
        conn:receive()
      end))
      local c = assert(tcp.connect("127.0.0.1", srv.port))
      local out = { c:read(10, 100) }
      c:send("go")
      out[3] = c:read(10, 10000)
      c:close()
      out[4] = select(2, c:read(1))            -- closed: the reason
      srv:close()
      return out
    end)
    assert.same({ nil, "timeout", "1234567890", "closed" }, got)
  end)

  it("ends a session that fails, not its server", function()
    local got = N.run(function()
      local srv = assert(tcp.serve(0, function(conn)
        local line = conn:receive()
        if line == "boom" then error("session failed on purpose") end
        conn:send("fine")
        conn:shutdown()
        conn:receive()
      end))
      local out = {}
      local a = assert(tcp.connect("127.0.0.1", srv.port))
      a:send("boom")
      out[1] = { a:receive() }
      a:close()
      local b = assert(tcp.connect("127.0.0.1", srv.port))
      b:send("hello")
      out[2] = drain(b)
      b:close()
      srv:close()
      return out
    end)
    -- The failed session's connection closes: its end of stream.
    assert.same({ {}, "fine" }, got)
  end)

  it("takes a wildcard message, which reaches every subscriber, for no data", function()
    local got = N.run(function()
      local srv = assert(tcp.serve(0, function(conn) conn:receive() end))
      local c = assert(tcp.connect("127.0.0.1", srv.port))
      market.perform(market.send(market._))
      local out = { c:receive(100) }
      c:close()
      srv:close()
      return out
    end)
    assert.same({ nil, "timeout" }, got)
  end)

  it("raises on misuse, at the caller's line", function()
    local got = N.run(function()
      local out = {}
      -- f's error, said at this file's line (the call in f), that prefix off.
      local function try(f) out[#out + 1] = H.outcome(f, "spec/tcp_straight_spec.lua") end
      local srv = assert(tcp.serve(0, function(conn) conn:receive() end))
      local c = assert(tcp.connect("127.0.0.1", srv.port))
      try(function() c:send(42) end)
      try(function() c.receive("c") end)
      try(function() c:read(0) end)
      try(function() c:read(1.5) end)
      try(function() c:read("*l") end)
      -- A bad timeout, whether the call would have waited or not.
      try(function() c:send("x", -5) end)
      try(function() c:send("x", "bad") end)
      try(function() c:receive("x") end)
      try(function() c:receive(-1) end)
      try(function() c:read(3, 0 / 0) end)
      try(function() c:lines({}) end)
      try(function() tcp.connect("127.0.0.1", srv.port, { framing = "lines" }) end)
      try(function() tcp.serve(0, "session") end)
      try(function() tcp.serve(0, function() end, { no_such = 1 }) end)
      -- Another process may not use it: its events come here.
      local err
      market.perform(market.spawn(function()
        local ok, e = pcall(c.receive, c)
        err = tostring(ok) .. " " .. e:gsub("process %d+ of ground", "process N of ground")
      end))
      N.wait_until(function() return err end)   -- (its change is no event here)
      out[#out + 1] = err
      c:close()
      c:close()                                  -- again: nothing
      srv:close()
      return out
    end)
    local ok, err = pcall(tcp.connect, "127.0.0.1", 1)
    assert.is_false(ok)
    assert.matches("tcp.connect: not inside a market process", err, 1, true)
    local bad_ms = "the timeout must be a number of milliseconds >= 0 (or nil: none), got "
    assert.same({
      "false tcp.connection:send: data must be a string, got number",
      "false tcp.connection:receive: not a connection (call it as conn:receive(...))",
      "false tcp.connection:read: n must be a positive integer, got 0",
      "false tcp.connection:read: n must be a positive integer, got 1.5",
      "false tcp.connection:read: n must be a positive integer, got string",
      "false tcp.connection:send: " .. bad_ms .. "-5",
      "false tcp.connection:send: " .. bad_ms .. "string",
      "false tcp.connection:receive: " .. bad_ms .. "string",
      "false tcp.connection:receive: " .. bad_ms .. "-1",
      "false tcp.connection:read: " .. bad_ms .. tostring(0 / 0),
      "false tcp.connection:lines: " .. bad_ms .. "table",
      'false tcp.connect: framing must be "raw", "line", "u16" or "u32", got "lines"',
      "false tcp.serve: session must be a function, got string",
      'false tcp.serve: unknown setting "no_such"',
      "false tcp.connection:receive: the connection belongs to process N of ground, not to " ..
        "this one (its events go to that process)",
    }, got)
  end)
end)

describe("tcp.options reading = false", function()
  it("stops reading a connection, keeping its subscription; true again reads on, nothing lost",
     function()
    local data = payload(1 << 20)
    local got = N.run(function()
      local srv = assert(tcp.serve(0, function(conn)
        assert(conn:send(data))
        conn:shutdown()
        conn:receive()
      end))
      local here = tcp.handle("held")
      local a = tcp.address("127.0.0.1", srv.port)
      local chunks, bytes = {}, 0
      market.perform(tcp.options(here, { reading = false, read_size = 4096 }, "hold"),
                     market.publisher(tcp.channel(here, a, market._), "out"),
                     market.subscriber(tcp.channel(a, here, market._), {
                       name = "in",
                       on_message = function(_, m)
                         if m.subpacket ~= market.EOF then
                           chunks[#chunks + 1] = m.subpacket
                           bytes = bytes + #m.subpacket
                         end
                       end }))
      timer.sleep(300)
      local held = bytes
      market.perform(market.delete_endpoint("hold"))
      market.wait_until(function() return bytes == #data end, 20000)
      market.perform(market.delete_endpoint("in"), market.delete_endpoint("out"))
      srv:close()
      return { held = held, same = table.concat(chunks) == data }
    end, 30000)
    -- Connected with reading off: nothing was read while it was so.
    assert.same({ held = 0, same = true }, got)
  end)

  it("is a boolean", function()
    local ok, err = pcall(tcp.options, tcp.listener(0), { reading = 1 })
    assert.is_false(ok)
    assert.matches("tcp.options: reading must be a boolean, got 1", err, 1, true)
  end)
end)

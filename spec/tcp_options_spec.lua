-- tcp_options_spec.lua: what tcp.options sets for a connection (docs/tcp.md):
-- framing (lines, u16 and u32 length prefixes, each with a maximum),
-- settings merged in presence order, the idle timeout, a listener's cap on
-- connections, options for outbound connections, and the orderly close
-- (FIN, not RST) of a connection whose session goes with input unread.
-- In-process, over loopback, against raw sockets the spec writes piece by
-- piece (with pauses, so that the pieces arrive as separate reads).
package.path = "spec/support/?.lua;" .. package.path
local market = require "market"
local tcp = require "market.tcp"
local timer = require "market.timer"
local N = require "net"
local ANY, EOF = market._, market.EOF
local send, T, quit = market.send, market.transition_no_state, market.quit
local pack = string.pack

local bound = N.bound

-- Straight-line raw clients (spec/support/net.lua).
local connect, write_all, read_all = N.connect, N.write_all, N.read_all
local wait_until = N.wait_until

-- Straight-line: write each piece, pausing ms between them.
local function write_pieces(s, pieces, ms)
  for i, piece in ipairs(pieces) do
    if i > 1 then timer.sleep(ms or 30) end
    assert(write_all(s, piece))
  end
end

-- Straight-line: half-close s, read it to the end, close it; returns
-- what read_all returns.
local function hang_up(s)
  assert(s:shutdown())
  local data, how = read_all(s)
  s:close()
  return data, how
end

-- Straight-line: each of streams on a connection of its own to port p,
-- written whole, then hung up, one after the other.
local function send_each(p, streams)
  for _, bytes in ipairs(streams) do
    local s = connect(p)
    assert(write_all(s, bytes))
    hang_up(s)
  end
end

-- A server on listener(0) whose sessions log what their inbound flow
-- brings: each message (EOF as "<eof>") and the flow's absence ("<gone:
-- reason>").  opts.boot(remote, here): actions the session starts with
-- (before it subscribes); opts.on_data(d, out): a transition for message
-- d (or nil for the default), out(x) sending x to the client; opts.on_gone(reason, out) likewise;
-- opts.out: the handlers of the outbound publisher.  By default a session
-- echoes nothing, half-closes on EOF and goes, and goes when the flow does.
local function recorder(log, opts)
  opts = opts or {}
  return N.tcp_serve(0, function(remote, here)
    return function()
      local function out(x) return send(tcp.channel(here, remote, x)) end
      local actions = { opts.boot and opts.boot(remote, here) or nil }
      actions[#actions + 1] = market.subscriber(tcp.channel(remote, here, ANY), {
        name = "in",
        on_message = function(_, m)
          local d = m.subpacket
          -- (long ones shortened, for readable failures)
          log[#log + 1] = d == EOF and "<eof>" or
            #d > 40 and ("<%d bytes of %s>"):format(#d, d:sub(1, 1)) or d
          local t = opts.on_data and opts.on_data(d, out)
          if t then return t end
          if d == EOF then return T(out(EOF), quit()) end
        end,
        on_absence = function(_, _, why)
          log[#log + 1] = "<gone: " .. tostring(why) .. ">"
          if opts.on_gone then return opts.on_gone(why, out) end
          return T(quit())
        end })
      actions[#actions + 1] = market.publisher(tcp.channel(here, remote, ANY), opts.out or "out")
      return market.transition(nil, actions)
    end
  end)
end

-- A recorder whose k-th connection takes the settings settings(k), which
-- its session publishes for that connection only before it subscribes.
local function recorder_each(log, settings)
  local k = 0
  return recorder(log, {
    boot = function(remote, here)
      k = k + 1
      return tcp.options(here, remote, settings(k))
    end })
end

local here0 = tcp.listener(0)

describe("tcp.options", function()
  local saved
  before_each(function()
    saved = { tcp.HIGH_WATER, tcp.LINGER_MS }
    tcp.stats.refused, tcp.stats.timeouts = 0, 0
  end)
  after_each(function() tcp.HIGH_WATER, tcp.LINGER_MS = saved[1], saved[2] end)

  it("checks its arguments at the call site", function()
    local function err(f) local ok, e = pcall(f); assert.is_false(ok); return e end
    assert.matches('framing must be "raw", "line", "u16" or "u32", got "lines"',
      err(function() tcp.options(here0, { framing = "lines" }) end))
    assert.matches("unknown setting \"max_line\"",
      err(function() tcp.options(here0, { max_line = 10 }) end))
    assert.matches("max_frame must be an integer from 1 to 2147483648, got 0",
      err(function() tcp.options(here0, { max_frame = 0 }) end))
    assert.matches("idle_timeout must be an integer from 0 to %d+, got 1.5",
      err(function() tcp.options(here0, tcp.address("::1", 5), { idle_timeout = 1.5 }) end))
    assert.matches("the local end must be a tcp.listener or a tcp.handle, got 5999",
      err(function() tcp.options(5999, { framing = "line" }) end))
    assert.matches("settings must be a table, got nil", err(function() tcp.options(here0) end))
    -- A value that is no term is named by its type (repr raised on it).
    assert.matches("tcp_options_spec.lua:%d+: tcp.options: the local end must be a tcp.listener " ..
                   "or a tcp.handle, got function$", err(function() tcp.options(print, {}) end))
    assert.matches("tcp_options_spec.lua:%d+: tcp.options: framing must be .*, got function$",
      err(function() tcp.options(here0, { framing = print }) end))
    assert.matches("tcp_options_spec.lua:%d+: tcp.options: max_frame must be an integer from 1 " ..
                   "to 2147483648, got table$", err(function() tcp.options(here0, { max_frame = { x = 1 } }) end))
    assert.matches("tcp_options_spec.lua:%d+: tcp.options: unknown setting function$",
      err(function() tcp.options(here0, { [print] = 1 }) end))
    -- The error points at the caller.
    assert.matches("tcp_options_spec.lua:%d+:", err(function() tcp.options(here0, { x = 1 }) end))
    -- A good call is a publisher of tcp-options(local, remote, sorted pairs).
    local a = tcp.options(here0, { max_frame = 10, framing = "line" }, "opts")
    assert.is_true(market.is_action(a))
    assert.equal('tcp-options(tcp-listener(0), _, [["framing", "line"], ["max_frame", 10]])',
      market.repr(a.topic))
    assert.equal("opts", a.name)
  end)

  it("splits lines across reads, drops their \\r\\n, and gives the last one at EOF", function()
    local log = {}
    N.run(function()
      market.perform(tcp.options(here0, { framing = "line" }), recorder(log))
      local s = connect(bound(0))
      write_pieces(s, { "one\r\ntw", "o\n\nthr", "ee\r", "\nfour" })
      assert.same({ "", "eof" }, { hang_up(s) })
      market.perform(send({ "stop-server", 0 }))
    end)
    assert.same({ "one", "two", "", "three", "four", "<eof>" }, log)
  end)

  it("takes a hand-made set's key whole: \"framing\\0x\" is no framing", function()
    -- The managers compared keys and framings as C strings: a key or a
    -- value with a NUL byte in it was taken for what comes before the NUL.
    local log = {}
    N.run(function()
      market.perform(market.publisher(tcp.options_record(here0, ANY, { { "framing\0x", "line" },
                                                                        { "max_frame", 4 } })),
                     market.publisher(tcp.options_record(here0, ANY, { { "framing", "u16\0" } })),
                     recorder(log))
      local s = connect(bound(0))
      write_pieces(s, { "a\nb\n" })
      assert.same({ "", "eof" }, { hang_up(s) })
      market.perform(send({ "stop-server", 0 }))
    end)
    assert.same({ "a\nb\n", "<eof>" }, log)
  end)

  it("splits u16 and u32 length-prefixed frames anywhere, the length too, from the first byte", function()
    local log = {}
    N.run(function()
      -- The listener says u16; a session asks for u32 on its own
      -- connection before it subscribes, so that applies from the start.
      local per_conn = false
      market.perform(tcp.options(here0, { framing = "u16" }), recorder(log, {
        boot = function(remote, here)
          if per_conn then
            return tcp.options(here, remote, { framing = "u32", max_frame = 100000 })
          end
        end }))
      local p = bound(0)
      local s = connect(p)
      local bytes = pack(">s2", "hello") .. pack(">s2", "") .. pack(">s2", ("x"):rep(300))
      write_pieces(s, { bytes:sub(1, 1), bytes:sub(2, 5), bytes:sub(6, 100), bytes:sub(101) })
      hang_up(s)
      per_conn = true
      s = connect(p)
      bytes = pack(">s4", "hello") .. pack(">s4", ("y"):rep(70000)) .. pack(">s4", "")
      write_pieces(s, { bytes:sub(1, 3), bytes:sub(4, 7), bytes:sub(8, 20000), bytes:sub(20001) })
      hang_up(s)
      market.perform(send({ "stop-server", 0 }))
    end)
    assert.same({ "hello", "", "<300 bytes of x>", "<eof>",
                  "hello", "<70000 bytes of y>", "", "<eof>" }, log)
  end)

  it("delivers frames and lines cut at random places whole (a fixed seed)", function()
    local log, want = {}, {}
    math.randomseed(8)
    local function payload(no_newline)
      local t = {}
      for i = 1, math.random(0, 300) do
        local b = math.random(0, 255)
        if no_newline and (b == 10 or b == 13) then b = 65 end
        t[i] = string.char(b)
      end
      return table.concat(t)
    end
    local streams = {}
    for k, fmt in ipairs { ">s2", ">s4", "line" } do
      local parts = {}
      for i = 1, 150 do
        local p = payload(fmt == "line")
        want[#want + 1] = #p > 40 and ("<%d bytes of %s>"):format(#p, p:sub(1, 1)) or p
        parts[i] = fmt == "line" and p .. (i % 2 == 0 and "\r\n" or "\n") or string.pack(fmt, p)
      end
      want[#want + 1] = "<eof>"
      streams[k] = table.concat(parts)
    end
    N.run(function()
      local framing = { "u16", "u32", "line" }
      market.perform(recorder_each(log, function(k) return { framing = framing[k], max_frame = 300 } end))
      local p = bound(0)
      for _, bytes in ipairs(streams) do
        local s, i = connect(p), 1
        while i <= #bytes do
          local j = math.min(#bytes, i + math.random(1, 600))
          assert(write_all(s, bytes:sub(i, j)))
          i = j + 1
          timer.sleep(1)
        end
        hang_up(s)
      end
      market.perform(send({ "stop-server", 0 }))
    end, 30000)
    assert.same(want, log)
  end)

  it("delivers a burst of many frames in batches, all of them, in order, with nothing more coming", function()
    local log, n, most = {}, 1000, {}
    N.run(function()
      local framing = { "u16", "line" }
      market.perform(recorder_each(log, function(k) return { framing = framing[k] } end))
      local p = bound(0)
      for _, fmt in ipairs { ">s2", "line" } do
        local burst = {}
        for i = 1, n do burst[i] = fmt == "line" and i .. "\n" or string.pack(fmt, tostring(i)) end
        local s = connect(p)
        -- A tick at every turn of the event loop (the client's socket is
        -- always writable): how many frames arrived since the last one.
        local before, last, seen = #log, 0, 0
        market.perform(market.subscriber(market.ground.writable(s:fd()), {
          name = "tick",
          on_message = function()
            seen = math.max(seen, #log - before - last)
            last = #log - before
          end }))
        -- One write, far more frames than are delivered per event; the
        -- connection stays quiet until all have arrived.
        assert(write_all(s, table.concat(burst)))
        wait_until(function() return #log == before + n end)
        market.perform(market.delete_endpoint("tick"))
        most[#most + 1] = math.max(seen, #log - before - last)
        hang_up(s)
      end
      market.perform(send({ "stop-server", 0 }))
    end)
    local want = {}
    for _ = 1, 2 do
      for i = 1, n do want[#want + 1] = tostring(i) end
      want[#want + 1] = "<eof>"
    end
    assert.same(want, log)
    -- At most 128 frames per event (a readable socket, or the alarm that
    -- goes on with what is left), so others run between batches: a peer
    -- streaming empty frames cannot hold the VM for a whole read.
    for _, m in ipairs(most) do assert.is_true(m <= 2 * 128, m .. " frames in one turn") end
  end)

  it("holds what has come of a frame cut short, not the length it announces", function()
    local log, held = {}, {}
    N.run(function()
      local framing = { "u16", "u32" }
      market.perform(recorder_each(log, function(k) return { framing = framing[k], max_frame = 1 << 20 } end))
      local p = bound(0)
      for i, fmt in ipairs { ">I2", ">I4" } do
        local len = i == 1 and 65535 or 1 << 20
        local s = connect(p)
        tcp.stats.max_input = 0
        -- A frame, then the length of the next one and nothing of it, in
        -- one write (one read): once the first is delivered, the length
        -- has been seen.
        local before = #log
        assert(write_all(s, pack(fmt, 1) .. "x" .. pack(fmt, len)))
        wait_until(function() return #log == before + 1 end)
        held[#held + 1] = tcp.stats.max_input
        -- The frame, in as many reads as it takes: room follows the bytes,
        -- and stops at the frame's end.
        assert(write_all(s, ("y"):rep(len)))
        wait_until(function() return #log == before + 2 end)
        held[#held + 1] = tcp.stats.max_input - #pack(fmt, 0) - len
        hang_up(s)
      end
      market.perform(send({ "stop-server", 0 }))
    end)
    assert.same({ "x", "<65535 bytes of y>", "<eof>", "x", "<1048576 bytes of y>", "<eof>" }, log)
    -- (Before: 128 KiB and 2 MiB for a length alone, twice the frame after.)
    assert.is_true(held[1] <= 256 and held[3] <= 256, "held for a length alone: " .. held[1] .. ", " .. held[3])
    assert.same({ 0, 0 }, { held[2], held[4] })
  end)

  it("ends the inbound flow of a line over max_frame with a reason; the goodbye arrives, then FIN", function()
    local log, got = {}, nil
    N.run(function()
      market.perform(tcp.options(here0, { framing = "line", max_frame = 10 }), recorder(log, {
        on_gone = function(why, out) return T(out("bye: " .. why .. "\n"), quit()) end }))
      local s = connect(bound(0))
      -- A short line, then one that never ends (more than the socket
      -- buffers hold, so some is still unread when the session goes).
      assert(write_all(s, "short\n" .. ("x"):rep(1024 * 1024)))
      got = { hang_up(s) }
      market.perform(send({ "stop-server", 0 }))
    end)
    assert.same({ "short", "<gone: line longer than 10 bytes>" }, log)
    assert.same({ "bye: line longer than 10 bytes\n", "eof" }, got)
  end)

  -- A line may be one byte over max_frame while it ends in "\r" (a "\n"
  -- may follow); at the end of stream none does, and such a last line was
  -- delivered whole, longer than max_frame.
  it("refuses an unfinished last line over max_frame at the end of stream, a \"\\r\" and all", function()
    local log = {}
    N.run(function()
      market.perform(tcp.options(here0, { framing = "line", max_frame = 16 }), recorder(log))
      local p = bound(0)
      send_each(p, { "0123456789abcdef\r", "0123456789abcde\r" })
      market.perform(send({ "stop-server", 0 }))
    end)
    assert.same({ "<gone: line longer than 16 bytes>", "0123456789abcde\r", "<eof>" }, log)
  end)

  it("ends the inbound flow of a frame over max_frame, or cut by the end of stream, with a reason", function()
    local log = {}
    N.run(function()
      local framing = { "u16", "u32", "u16", "u16" }
      market.perform(recorder_each(log, function(k)
        return { framing = framing[k], max_frame = k == 1 and 100 or 65536 }
      end))
      local p = bound(0)
      send_each(p, { pack(">I2", 5000) .. "abc", pack(">I4", 70000), "\0\10abc", "\0" })
      market.perform(send({ "stop-server", 0 }))
    end)
    assert.same({ "<gone: frame of 5000 bytes is longer than max_frame (100)>",
                  "<gone: frame of 70000 bytes is longer than max_frame (65536)>",
                  "<gone: end of stream inside a frame (3 of 10 bytes)>",
                  "<gone: end of stream inside a frame's length>" }, log)
  end)

  it("merges option sets, later over earlier, and re-frames what is buffered when they change", function()
    local log = {}
    N.run(function()
      local remote, here
      market.perform(tcp.options(here0, { framing = "line", max_frame = 100 }), recorder(log, {
        boot = function(r, h) remote, here = r, h end,
        on_data = function(d)
          if d == "mine" then
            return T(tcp.options(here, remote, { framing = "u16" }, "mine"))
          elseif d == "abc" then
            return T(market.delete_endpoint("mine"))
          end
        end }))
      local s = connect(bound(0))
      local function step(bytes, want)
        local n = #log
        assert(write_all(s, bytes))
        wait_until(function() return #log > n end)
        assert.equal(want, log[n + 1])
      end
      step("mine\n", "mine")
      -- Still lines: this waits for its "\n", until the session's own set
      -- (u16, max_frame still 100) re-frames it.
      step("\0\5hello", "hello")
      step("\0\3abc", "abc")
      -- The session's set withdrawn: lines again.
      timer.sleep(30)
      step("x\r\n", "x")
      hang_up(s)
      market.perform(send({ "stop-server", 0 }))
    end)
    assert.same({ "mine", "hello", "abc", "x", "<eof>" }, log)
  end)

  it("closes a connection idle for idle_timeout, with that reason on both flows", function()
    local log, reasons, times = {}, {}, {}
    N.run(function()
      market.perform(tcp.options(here0, { idle_timeout = 1000 }), recorder(log, {
        out = { on_absence = function(_, _, why) reasons[#reasons + 1] = why; return T(quit()) end },
        on_gone = function(why) reasons[#reasons + 1] = why end }))
      local s = connect(bound(0))
      local t0 = market.now()
      -- Busy for longer than the timeout, a byte every 200 ms (a slow
      -- machine has 800 ms to spare at each), keeps it open.
      write_pieces(s, { "a", "b", "c", "d", "e", "f", "g" }, 200)
      times.busy = market.now() - t0
      local data, how = read_all(s)
      times.closed = market.now() - t0
      times.how = data .. "|" .. how
      s:close()
      market.perform(send({ "stop-server", 0 }))
    end, 30000)
    assert.same({ "a", "b", "c", "d", "e", "f", "g", "<gone: idle timeout>" }, log)
    assert.same({ "idle timeout", "idle timeout" }, reasons)
    assert.equal("|eof", times.how)
    assert.is_true(times.busy > 1000, ("busy for %.0f ms"):format(times.busy))
    -- (the manager stamps bytes with a coarse clock, which may lag)
    assert.is_true(times.closed >= times.busy + 900, ("closed at %.0f ms"):format(times.closed))
    assert.is_true(times.closed < times.busy + 15000, ("closed at %.0f ms"):format(times.closed))
    assert.equal(1, tcp.stats.timeouts)
  end)

  -- The listener hands its managers the module's defaults as parsed once
  -- (sys.tcp_defaults), and parses them again only when a tunable changed.
  it("starts each connection from the tunables as they are then: a change applies to the next", function()
    local log, saved = {}, tcp.IDLE_TIMEOUT
    N.run(function()
      market.perform(recorder(log))
      local first = connect(bound(0))
      assert(write_all(first, "one"))
      wait_until(function() return #log == 1 end)
      tcp.IDLE_TIMEOUT = 100
      local second = connect(bound(0))
      assert(write_all(second, "two"))
      local data, how = read_all(second)          -- closed for idleness
      second:close()
      log[#log + 1] = "second: " .. data .. "|" .. how
      tcp.IDLE_TIMEOUT = saved
      assert(write_all(first, "three"))           -- the first keeps the default
      wait_until(function() return #log == 5 end)
      hang_up(first)
      market.perform(send({ "stop-server", 0 }))
    end, 30000)
    tcp.IDLE_TIMEOUT = saved
    assert.same({ "one", "two", "<gone: idle timeout>", "second: |eof", "three", "<eof>" }, log)
  end)

  it("refuses connections beyond max_connections, says why, and takes new ones when others go", function()
    local refused, sessions, log = {}, 0, {}
    N.run(function()
      market.perform(tcp.options(here0, { max_connections = 2 }),
        market.subscriber(tcp.refused(here0, ANY, ANY), {
          on_message = function(_, m) refused[#refused + 1] = m end }),
        recorder(log, { boot = function() sessions = sessions + 1 end }))
      local p = bound(0)
      local a = connect(p)
      wait_until(function() return sessions == 1 end)
      local b = connect(p)
      wait_until(function() return sessions == 2 end)
      local c = connect(p)
      wait_until(function() return #refused == 1 end)
      local data, how = read_all(c)
      refused.client = data .. "|" .. how
      c:close()
      -- One goes: there is room again once its manager has closed the
      -- socket, which it does as it withdraws the flows (the client hung
      -- up first: nothing is left to drain).
      local a_gone = false
      market.perform(market.observe_publishers(
        tcp.channel(tcp.address("127.0.0.1", a:local_port()), here0, ANY), {
          on_absence = function() a_gone = true end }))
      hang_up(a)
      wait_until(function() return a_gone end)
      local d = connect(p)
      wait_until(function() return sessions == 3 end)
      hang_up(b)
      hang_up(d)
      market.perform(send({ "stop-server", 0 }))
    end)
    assert.equal(3, sessions)
    local m = refused[1]
    assert.equal(here0, m.listener)
    assert.equal("127.0.0.1", m.remote.host)
    assert.equal("too many connections (2)", m.reason)
    assert.is_true(refused.client == "|eof" or refused.client == "|connection reset by peer",
      refused.client)
    assert.equal(1, tcp.stats.refused)
  end)

  it("closes the listening socket when a bad default ends the listener", function()
    -- defaults() raised in the listener's accept handler: the process
    -- died, but its socket stayed open (until a garbage collection), the
    -- client waited in its queue and the port could not be listened on.
    local reason, client_saw, again
    local saved_mc = tcp.MAX_CONNECTIONS
    N.run(function()
      local here = tcp.listener(tcp.address("127.0.0.1", 0))
      market.perform(market.observe_publishers(tcp.channel(ANY, here, ANY), "obs"))
      local p = bound(here.port)
      tcp.MAX_CONNECTIONS = -1
      market.perform(market.subscriber(tcp.listening(here.port, ANY), {
        on_absence = function(_, _, why) reason = why end }))
      collectgarbage("stop")    -- (a collection would close it anyway)
      local c = connect(p)
      wait_until(function() return reason ~= nil end)
      local data, how = read_all(c)
      client_saw = data .. "|" .. how
      c:close()
      local l = require("market.sys").tcp_listen(p, 8, false, "127.0.0.1")
      again = l ~= nil
      if l then l:close() end
      collectgarbage("restart")
    end)
    collectgarbage("restart")
    tcp.MAX_CONNECTIONS = saved_mc
    assert.equal("market.tcp: tcp.MAX_CONNECTIONS: max_connections must be an integer from 0 " ..
                 "to 9223372036854775807, got -1", reason)
    assert.is_true(client_saw == "|eof" or client_saw == "|connection reset by peer", client_saw)
    assert.is_true(again)
  end)

  it("takes patterns for the ends: every listener, every connection from a host", function()
    local log = {}
    N.run(function()
      -- Lines for every listener, and short ones from 127.0.0.1.
      market.perform(tcp.options(tcp.listener(ANY), { framing = "line" }),
        tcp.options(tcp.listener(ANY), tcp.address("127.0.0.1", ANY), { max_frame = 5 }),
        recorder(log))
      local s = connect(bound(0))
      assert(write_all(s, "short\nlonger\n"))
      hang_up(s)
      market.perform(send({ "stop-server", 0 }))
    end)
    assert.same({ "short", "<gone: line longer than 5 bytes>" }, log)
  end)

  it("applies to outbound connections through their tcp.handle", function()
    local log = {}
    N.run(function()
      market.perform(N.tcp_serve(0, function(remote, here)
        return function()
          return market.transition(nil,
            market.subscriber(tcp.channel(remote, here, ANY)),
            market.publisher(tcp.channel(here, remote, ANY), {
              on_presence = function()
                return T(send(tcp.channel(here, remote, "first\r\nsec")),
                         send(tcp.channel(here, remote, "ond\nthird")),
                         send(tcp.channel(here, remote, EOF)), quit())
              end }))
        end
      end))
      local a, h = tcp.address("127.0.0.1", bound(0)), tcp.handle("lines")
      market.perform(tcp.options(h, { framing = "line" }), market.spawn(function()
        return market.transition(nil,
          market.subscriber(tcp.channel(a, h, ANY), {
            on_message = function(_, m)
              log[#log + 1] = m.subpacket == EOF and "<eof>" or m.subpacket
              if m.subpacket == EOF then return T(send({ "done" }), quit()) end
            end }),
          market.publisher(tcp.channel(h, a, ANY)))
      end))
      N.await({ "done" })
      market.perform(send({ "stop-server", 0 }))
    end)
    assert.same({ "first", "second", "third", "<eof>" }, log)
  end)

  it("closes with FIN, not RST, when the session goes with the client's input unread", function()
    local got, wrote
    N.run(function()
      market.perform(recorder({}, {
        on_data = function(_, out) return T(out("enough\n"), quit()) end }))
      local s = connect(bound(0))
      -- More than the socket buffers take: unread when the session goes.
      -- A reset would fail the writing (and then reads see only EOF).
      wrote = { write_all(s, ("z"):rep(8 * 1024 * 1024)) }
      s:shutdown()
      got = { read_all(s) }
      s:close()
      market.perform(send({ "stop-server", 0 }))
    end, 20000)
    assert.same({ true }, wrote)
    assert.same({ "enough\n", "eof" }, got)
  end)
end)

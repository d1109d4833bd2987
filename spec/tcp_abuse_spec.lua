-- tcp_abuse_spec.lua: the example servers against clients that misbehave
-- (issue 8): readers that never read, a writer one byte at a time, a line
-- of a megabyte, a storm of connections reset at once, more clients than
-- descriptors, and a stream of empty DNS frames.  Each server is a
-- subprocess on a port the kernel picks; the clients are nc, socat, dig and
-- spec/support/abuse.pl, all bounded by `timeout`; every process is gone at
-- the end.  Bounds are generous liveness bounds, not timings; memory is
-- measured on the plain build only (AddressSanitizer keeps freed memory in
-- quarantine).
package.path = "spec/support/?.lua;" .. package.path
local N = require "net"
local q, capture = N.q, N.capture

local ABUSE = "perl spec/support/abuse.pl"

local function rss_kib(pid)
  local s = N.slurp("/proc/" .. pid .. "/status") or ""
  return tonumber(s:match("VmRSS:%s*(%d+)"))
end

-- Whether process pid runs with AddressSanitizer, whose allocator keeps
-- freed memory in quarantine: its RSS says nothing about the server's.
local function sanitized(pid)
  return (N.slurp("/proc/" .. pid .. "/maps") or ""):find("libasan", 1, true) ~= nil
end

local function nfds(pid)
  local out = capture("ls /proc/" .. pid .. "/fd | wc -l", 5)
  return tonumber(out:match("%d+"))
end

-- A file holding s (removed by the caller).
local function file_with(s)
  local name = os.tmpname()
  local f = assert(io.open(name, "wb"))
  f:write(s)
  f:close()
  return name
end

-- A background client command (see N.start_cmd), bounded by `timeout`.
local function client(secs, cmd)
  return N.start_cmd(("exec timeout %d %s"):format(secs, cmd))
end

-- Wait (at most secs) until pred() holds; returns whether it did.
local function eventually(pred, secs)
  for _ = 1, math.floor((secs or 5) / 0.05) do
    if pred() then return true end
    N.sleep(0.05)
  end
  return pred()
end

-- A DNS query for name (type A), id 0x1234.
local function dns_query(name)
  local q = { string.pack(">I2I2I2I2I2I2", 0x1234, 0x0100, 1, 0, 0, 0) }
  for label in name:gmatch("[^.]+") do q[#q + 1] = string.pack("s1", label) end
  q[#q + 1] = "\0" .. string.pack(">I2I2", 1, 1)
  return table.concat(q)
end

-- The longest "Query time" of n UDP queries (ms), or nil if one went
-- unanswered for 5 s.
local function udp_worst(port, n)
  local worst = 0
  for _ = 1, n do
    local out = capture(("dig +tries=1 +time=5 @127.0.0.1 -p %d www.example.test A"):format(port), 10)
    local ms = tonumber(out:match("Query time: (%d+) msec"))
    if not ms then return nil, out end
    worst = math.max(worst, ms)
  end
  return worst
end

describe("examples/chat.lua under abuse", function()
  local server, port
  before_each(function() server, port = N.start_server("examples/chat.lua") end)
  after_each(function() server.kill() end)

  it("stays small while readers never read, and gives the memory back when they go", function()
    -- Warm up (a user comes and goes), then measure from there.
    capture(("printf 'hello\\n' | nc -N 127.0.0.1 %d"):format(port), 5)
    N.sleep(0.3)
    local base = rss_kib(server.pid)
    local mute = client(30, ("%s mute %d 8 20"):format(ABUSE, port))
    N.sleep(0.5)
    -- 6 MB of short lines, each sent on to the 8 that never read.
    local lines = {}
    for i = 1, 60000 do lines[i] = ("%099d"):format(i) end
    local f = file_with(table.concat(lines, "\n") .. "\n")
    local writer = client(30, ("%s send %d %s"):format(ABUSE, port, f))
    local peak = 0
    repeat
      peak = math.max(peak, rss_kib(server.pid))
      N.sleep(0.1)
    until not writer.running()
    local status = writer.exited()
    peak = math.max(peak, rss_kib(server.pid))
    mute.kill()
    writer.kill()
    os.remove(f)
    -- The server's memory comes back down once they are gone.
    local after
    eventually(function() after = rss_kib(server.pid); return after - base < 12 * 1024 end, 3)
    assert.equal(0, status)
    if not sanitized(server.pid) then
      assert.is_true(peak - base < 30 * 1024, ("RSS grew from %d to %d KiB"):format(base, peak))
      assert.is_true(after - base < 12 * 1024, ("RSS %d KiB after, from %d KiB"):format(after, base))
    end
    -- And it still serves.
    local out = capture(("(sleep 0.3) | nc -N 127.0.0.1 %d"):format(port), 5)
    assert.matches("^welcome, you are user%d+; here: nobody else\n$", out)
  end)

  it("serves others while a line of a megabyte comes in, then says why and closes with FIN", function()
    -- user1 sees the others come.
    local watcher = client(20, ("nc -d 127.0.0.1 %d"):format(port))
    assert.is_true(eventually(function() return watcher.stdout():find("welcome") ~= nil end))
    local f = file_with(("x"):rep(1024 * 1024))
    local big = client(20, ("%s send %d %s"):format(ABUSE, port, f))
    assert.is_true(eventually(function() return watcher.stdout():find("user2 joined") ~= nil end))
    -- Another user is greeted meanwhile.
    local out = capture(("(sleep 0.2) | nc -N 127.0.0.1 %d"):format(port), 5)
    local status = big.wait_exit(15)
    local got = big.stdout()
    big.kill()
    watcher.kill()
    os.remove(f)
    assert.matches("^welcome, you are user3; here: user1", out)
    -- abuse.pl exits 3 on a reset: the goodbye and an orderly end of stream
    -- (user3 may come and go before the line is refused).
    assert.equal(0, status)
    assert.equal("welcome, you are user2; here: user1\nline longer than 4096 bytes: bye\n",
      (got:gsub("user3 %a+\n", "")))
  end)

  it("takes lines written one byte at a time, whole, and stays responsive meanwhile", function()
    local listener = client(10, ("nc -d 127.0.0.1 %d"):format(port))
    assert.is_true(eventually(function() return listener.stdout():find("welcome") ~= nil end))
    local f = file_with("hello there\r\nsecond line\n")
    local slow = client(20, ("%s bytes %d %s 80000"):format(ABUSE, port, f))
    assert.is_true(eventually(function() return listener.stdout():find("user2 joined") ~= nil end))
    -- Someone else comes and goes while the bytes trickle in.
    local other = capture(("(sleep 0.2) | nc -N 127.0.0.1 %d"):format(port), 5)
    local status = slow.wait_exit(15)
    slow.kill()
    os.remove(f)
    assert.is_true(eventually(function() return listener.stdout():find("user2 left") ~= nil end))
    local heard = listener.stdout()
    listener.kill()
    assert.equal(0, status)
    assert.matches("^welcome, you are user3; here: user1, user2\n", other)
    -- user3 comes and goes while user2's lines trickle in, which arrive
    -- whole, each once.
    assert.matches("\nuser3 joined\n.*user3 left\n", heard)
    assert.equal("welcome, you are user1; here: nobody else\nuser2 joined\n" ..
                 "user2: hello there\nuser2: second line\nuser2 left\n",
      (heard:gsub("user3 %a+\n", "")))
  end)

  it("survives 2,000 connections reset at once, and keeps no session of theirs", function()
    local storm = client(30, ("%s reset %d 2000"):format(ABUSE, port))
    assert.equal(0, storm.wait_exit(30))
    storm.kill()
    -- Every session went: a newcomer finds nobody else here.
    local out
    eventually(function()
      out = capture(("(sleep 0.2) | nc -N 127.0.0.1 %d"):format(port), 5)
      return out:find("here: nobody else", 1, true) ~= nil
    end, 10)
    assert.matches("^welcome, you are user%d+; here: nobody else\n$", out)
  end)
end)

describe("examples/echo.lua under abuse", function()
  it("survives 2,000 connections reset at once, and holds no descriptor of theirs", function()
    local server, port = N.start_server("examples/echo.lua")
    local before = nfds(server.pid)
    local storm = client(30, ("%s reset %d 2000"):format(ABUSE, port))
    local status = storm.wait_exit(30)
    storm.kill()
    local settled = eventually(function() return nfds(server.pid) <= before end, 10)
    local fds = nfds(server.pid)
    local out = capture(("printf 'still here\\n' | nc -N 127.0.0.1 %d"):format(port), 5)
    server.kill()
    assert.equal(0, status)
    assert.is_true(settled, ("%d descriptors, %d before"):format(fds, before))
    assert.equal("still here\n", out)
  end)

  -- `market ARGS` (examples/echo.lua on port 0) under `ulimit -n 256`
  -- against 400 clients: those that do not fit are closed at once instead
  -- of waiting in the listen queue, those that fit are served, and once
  -- they are gone new clients are served again.
  local function out_of_descriptors(args)
    local server = N.start_cmd(("ulimit -n 256; exec %s %s"):format(q(N.market_bin()), args))
    local port
    eventually(function()
      port = tonumber(server.stderr():match("listening on port (%d+)"))
      return port ~= nil
    end, 15)
    assert(port, "echo did not start: " .. server.stderr())
    local hold = client(30, ("%s hold %d 400 3"):format(ABUSE, port))
    local status = hold.wait_exit(25)
    local said = hold.stdout()
    hold.kill()
    local open, closed = said:match("open (%d+) closed (%d+)")
    local echoed = tonumber(said:match("echoed (%d+)"))
    open, closed = tonumber(open), tonumber(closed)
    -- They are gone: new clients are served again.
    local out
    eventually(function()
      out = capture(("printf 'back\\n' | nc -N 127.0.0.1 %d"):format(port), 5)
      return out == "back\n"
    end, 10)
    local err = server.stderr()
    server.kill()
    assert.equal(0, status)
    assert.is_true(open and open > 100 and open < 256, said)
    assert.equal(400, open + closed)
    assert.equal(open, echoed)
    assert.equal("back\n", out)
    assert.truthy(err:find("too many open files: refusing connections", 1, true), err)
  end

  it("tells clients no when descriptors run out, and serves again when they come back", function()
    out_of_descriptors("examples/echo.lua 0")
  end)

  it("tells them no at once also after the spare descriptor was lost", function()
    -- Another thread can take the spare's slot while a refusal has it
    -- closed; market.sys.lose_spare does what that does, as soon as echo
    -- listens.  The next accept must open it again.
    out_of_descriptors("-e " .. q([[
      local market, tcp, sys = require "market", require "market.tcp", require "market.sys"
      market.perform(market.subscriber(tcp.listening(market._, market._), {
        on_presence = function() sys.lose_spare() end }))
      return assert(loadfile("examples/echo.lua"))(...)]]) .. " 0")
  end)
end)

describe("examples/dns.lua under abuse", function()
  local server, port
  before_each(function() server, port = N.start_server("examples/dns.lua") end)
  after_each(function() server.kill() end)

  it("answers over UDP while clients stream empty TCP frames", function()
    -- A liveness bound, not a timing: that others are served between
    -- batches of frames is tcp_options_spec's (at most 128 frames per
    -- event), and how long a query takes meanwhile is a figure of
    -- bench-echo (dns-under-flood-ms).
    local floods = {}
    for i = 1, 4 do
      floods[i] = client(30, ("socat -u OPEN:/dev/zero TCP:127.0.0.1:%d"):format(port))
    end
    N.sleep(0.5)
    local worst, out = udp_worst(port, 10)
    local alive = floods[1].running()
    for _, f in ipairs(floods) do f.kill() end
    assert.is_true(alive, "the flood stopped early")
    assert.is_not_nil(worst, out)
  end)

  it("answers a query written one byte at a time, and answers UDP meanwhile", function()
    local f = file_with(string.pack(">s2", dns_query("www.example.test")))
    local slow = client(20, ("%s bytes %d %s 20000"):format(ABUSE, port, f))
    local worst, out = udp_worst(port, 3)
    local status = slow.wait_exit(15)
    local reply = slow.stdout()
    slow.kill()
    os.remove(f)
    assert.is_not_nil(worst, out)
    assert.equal(0, status)
    local len = string.unpack(">I2", reply)
    assert.equal(#reply - 2, len)
    local id, flags, qd, an = string.unpack(">I2I2I2I2", reply, 3)
    assert.equal(0x1234, id)
    assert.equal(0, flags & 0xF)          -- NOERROR
    assert.equal(1, qd)
    assert.equal(2, an)                   -- www is a CNAME to example.test, which has an A
  end)
end)

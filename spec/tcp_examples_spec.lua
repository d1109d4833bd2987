-- tcp_examples_spec.lua: examples/echo.lua, chat.lua and chat-client.lua
-- end to end: each runs as a subprocess of $MARKET_BUILD/market on
-- loopback (on ports the kernel picks), driven by real clients (nc, socat), every
-- client bounded by `timeout`, every server killed at the end.
package.path = "spec/support/?.lua;" .. package.path
local N = require "net"
local q, capture = N.q, N.capture

local function rss_kib(pid)
  local s = N.slurp("/proc/" .. pid .. "/status") or ""
  return tonumber(s:match("VmRSS:%s*(%d+)"))
end

describe("examples/echo.lua", function()
  local PORT, server
  before_each(function() server, PORT = N.start_server("examples/echo.lua") end)
  after_each(function() server.kill() end)

  it("echoes what nc sends, then closes when nc half-closes", function()
    local out, status = capture(("printf 'hello\\nworld\\n' | nc -N 127.0.0.1 %d"):format(PORT), 5)
    assert.equal(0, status)
    assert.equal("hello\nworld\n", out)
  end)

  it("serves IPv6 clients too", function()
    local out = capture(("printf 'over six\\n' | nc -N ::1 %d"):format(PORT), 5)
    assert.equal("over six\n", out)
  end)

  it("runs one session per connection: concurrent clients get their own bytes", function()
    local cmd = {}
    for i = 1, 5 do
      cmd[#cmd + 1] = ("( (printf 'client %d says hi\\n'; sleep 0.3; printf 'client %d again\\n') | nc -N 127.0.0.1 %d > %s.%d ) &")
        :format(i, i, PORT, "$base", i)
    end
    local script = "base=$(mktemp); " .. table.concat(cmd, " ") .. " wait; " ..
      "for i in 1 2 3 4 5; do cat $base.$i; echo '|'; rm -f $base.$i; done; rm -f $base"
    local out = capture(script, 10)
    local want = {}
    for i = 1, 5 do want[#want + 1] = ("client %d says hi\nclient %d again\n|\n"):format(i, i) end
    assert.equal(table.concat(want), out)
  end)

  -- 300 connections are 600 processes, past MK_GROUND_PREFETCH_PROCS: the
  -- ground prefetches each batch of wake-ups before it runs it (ground.h),
  -- which the sanitized pass of spec/run checks here too.
  it("gives 300 connections talking at once each its own bytes back, round after round", function()
    local out, status = capture(("timeout 60 perl spec/support/abuse.pl chatter %d 300 20")
      :format(PORT), 70)
    assert.equal(0, status)
    assert.equal("ok 6000 bad 0\n", out)
  end)

  it("echoes a megabyte of random bytes intact (socat)", function()
    local out, status = capture(([[
      f=$(mktemp); g=$(mktemp)
      head -c 1048576 /dev/urandom > $f
      socat -t 10 -T 10 - TCP:127.0.0.1:%d < $f > $g
      cmp $f $g && echo same; wc -c < $g; rm -f $f $g]]):format(PORT), 20)
    assert.equal(0, status)
    assert.equal("same\n1048576\n", out)
  end)

  it("does not grow when a client sends without reading (backpressure)", function()
    local before = rss_kib(server.pid)
    -- socat -u only writes to the connection and never reads from it.
    local flood = N.start_cmd(("exec socat -u OPEN:/dev/zero TCP:127.0.0.1:%d"):format(PORT))
    N.sleep(2)
    local during = rss_kib(server.pid)
    local alive = flood.running()
    N.sleep(1)
    local later = rss_kib(server.pid)
    flood.kill()
    -- Still connected (not dropped at the hard limit), and the server's
    -- memory stayed flat while the client kept trying to send.
    assert.is_true(alive, "the flooding client was disconnected")
    assert.is_true(during - before < 40 * 1024, ("RSS grew from %d to %d KiB"):format(before, during))
    assert.is_true(later - during < 4 * 1024, ("RSS grew from %d to %d KiB"):format(during, later))
    -- And the server still serves others.
    assert.equal("still here\n", (capture(("printf 'still here\\n' | nc -N 127.0.0.1 %d"):format(PORT), 5)))
  end)

  it("exits cleanly on SIGTERM", function()
    assert.equal(0, server.stop("TERM"))
    assert.equal("echo: listening on port " .. PORT .. "\n", server.stderr())
  end)

  it("reports a port already in use and exits with status 1", function()
    local second = N.start("examples/echo.lua", PORT)
    local status = second.wait_exit(5)
    local err = second.stderr()
    second.kill()
    assert.equal(1, status)
    assert.truthy(err:find("echo: cannot listen on port " .. PORT .. ": address already in use", 1, true), err)
  end)
end)

describe("examples/chat.lua", function()
  local PORT, server
  local HEARD = require("helpers").HEARD
  before_each(function() server, PORT = N.start_server("examples/chat.lua") end)
  after_each(function() server.kill() end)

  it("greets, relays lines to the others and announces joins and leaves", function()
    -- Each step waits for what it answers, not for a time: A speaks once
    -- B has joined and leaves once B has; B comes once A is greeted,
    -- speaks once greeted and leaves once it has heard A.
    local out = capture(([[
      %s
      a=$(mktemp); b=$(mktemp)
      (heard $a 'user2 joined'; printf 'hello all\n'; heard $a 'user2 left') | nc -N 127.0.0.1 %d > $a &
      heard $a welcome
      (heard $b welcome; printf 'hi A\n'; heard $b 'user1: hello all') | nc -N 127.0.0.1 %d > $b
      wait
      cat $a; echo '|'; cat $b; rm -f $a $b]]):format(HEARD, PORT, PORT), 20)
    assert.equal(table.concat({
      "welcome, you are user1; here: nobody else",
      "user2 joined",
      "user2: hi A",
      "user2 left",
      "|",
      "welcome, you are user2; here: user1",
      "user1: hello all",
      "" }, "\n"), out)
  end)

  it("works with examples/chat-client.lua", function()
    local out = capture(([[
      %s
      a=$(mktemp); c=$(mktemp)
      (heard $a 'user2 left') | nc -N 127.0.0.1 %d > $a &
      heard $a welcome
      printf 'from the client\n' | %s examples/chat-client.lua 127.0.0.1 %d > $c
      echo "client status $?"
      wait
      cat $c; echo '|'; cat $a; rm -f $a $c]]):format(HEARD, PORT, q(N.market_bin()), PORT), 20)
    assert.equal(table.concat({
      "client status 0",
      "welcome, you are user2; here: user1",
      "|",
      "welcome, you are user1; here: nobody else",
      "user2 joined",
      "user2: from the client",
      "user2 left",
      "" }, "\n"), out)
  end)

  it("tells connected users when it shuts down, then exits cleanly", function()
    -- nc -d: reads nothing from stdin, exits when the server closes.
    local a = N.start_cmd(("exec nc -d 127.0.0.1 %d"):format(PORT))
    for _ = 1, 200 do                  -- greeted: the server has it
      if a.stdout():find("welcome", 1, true) then break end
      N.sleep(0.05)
    end
    local status = server.stop("TERM")
    local done = a.wait_exit(3)
    local heard = a.stdout()
    a.kill()
    assert.equal(0, status)
    assert.equal("welcome, you are user1; here: nobody else\nserver shutting down\n", heard)
    assert.is_not_nil(done, "the client's connection was not closed")
  end)
end)

describe("examples/chat-client.lua", function()
  it("fails with a readable reason when the server is not there", function()
    local port = N.free_port()
    local out, status = capture(("%s examples/chat-client.lua 127.0.0.1 %d </dev/null 2>&1")
      :format(q(N.market_bin()), port), 5)
    assert.equal(1, status)
    -- The reason alone: a connection that fails is no crash (no report).
    assert.equal("chat-client: connection refused\n", out)
  end)

  it("fails with a readable reason for an unknown host", function()
    local out, status = capture(("%s examples/chat-client.lua no-such-host.invalid 5999 </dev/null 2>&1")
      :format(q(N.market_bin())), 30)
    assert.equal(1, status)
    assert.truthy(out:find("chat-client: unknown host no-such-host.invalid", 1, true), out)
  end)
end)

describe("the examples' arguments", function()
  it("a bad one is a usage line and status 2, not a crash report", function()
    for script, args in pairs { ["echo.lua"] = "abc", ["chat.lua"] = "x", ["dns.lua"] = "y",
                                ["nested.lua"] = "0 0", ["chat-client.lua"] = "" } do
      local out, status = capture(("%s examples/%s %s </dev/null 2>&1")
        :format(q(N.market_bin()), script, args), 10)
      assert.equal(2, status, script)
      assert.truthy(out:find("^usage: market examples/" .. script:gsub("%p", "%%%0") .. " [^\n]*\n$"), out)
    end
  end)
end)

describe("the example servers' TCP limits", function()
  -- Run example `script` on port 0 behind `market -e` code that prints
  -- the settings of every tcp.options set published for a listener.
  local function settings_of(script)
    local code = ([[
      local market, tcp = require "market", require "market.tcp"
      market.perform(market.observe_publishers(tcp.options_record(tcp.listener(market._), market._, market._), {
        on_presence = function(_, role)
          for _, kv in ipairs(role.topic.settings) do io.stderr:write("set ", kv[1], " ", tostring(kv[2]), "\n") end
        end }))
      arg[0] = %q
      return assert(loadfile(arg[0]))(...)]]):format(script)
    local server = N.start_cmd(("exec %s -e %s 0"):format(q(N.market_bin()), q(code)))
    N.await_listening(server, script)
    local set = {}
    for k, v in server.stderr():gmatch("set (%S+) (%S+)\n") do set[k] = math.tointeger(tonumber(v)) or v end
    server.kill()
    return set
  end

  -- What a server may hold for clients that do not read: each connection's
  -- queue reaches high_water before its senders are told to pause, then
  -- hard_limit more before the connection fails (docs/tcp.md).
  for _, script in ipairs { "examples/echo.lua", "examples/chat.lua", "examples/dns.lua" } do
    it(script .. " sizes its output limits for its connection cap", function()
      local set = settings_of(script)
      assert.is_not_nil(set.max_connections, script .. " sets no connection cap")
      assert.is_not_nil(set.high_water, script .. " leaves high_water at 1 MiB")
      assert.is_not_nil(set.hard_limit, script .. " leaves hard_limit at 8 MiB")
      local worst = set.max_connections * (set.high_water + set.hard_limit)
      assert.is_true(worst <= 512 * 1024 * 1024, ("%s may hold %d MiB"):format(script, worst >> 20))
    end)
  end
end)

-- The footprint of an idle connection (issue 10: at most 4 KiB of RSS per
-- connection at 10,000; docs/performance.md has the breakdown): echo.lua
-- runs with a process beside it that reports the heap in use
-- (market.memory(), after full collections) and the connections open,
-- every 100 ms (bench/echo_footprint.lua, bench-footprint's own), while
-- 300 clients hold their connections open.
describe("examples/echo.lua's idle connections", function()
  local CONNS = 300

  -- The last report's heap with n connections open, or nil.
  local function heap_at(server, n)
    local heap
    for h, c in server.stderr():gmatch("heap (%d+) lua %d+ connections (%d+)") do
      if tonumber(c) == n then heap = tonumber(h) end
    end
    return heap
  end

  local function eventually(pred, secs)
    for _ = 1, math.floor(secs / 0.05) do
      if pred() then return true end
      N.sleep(0.05)
    end
    return pred()
  end

  it("cost at most 4,500 bytes of heap each (7,038 before issue 10, 4,100 after)", function()
    local server = N.start_cmd(("exec %s bench/echo_footprint.lua examples/echo.lua 100 0")
      :format(q(N.market_bin())))
    local port, base, held
    eventually(function()
      port = tonumber(server.stderr():match("listening on port (%d+)"))
      return port ~= nil and heap_at(server, 0) ~= nil
    end, 10)
    base = heap_at(server, 0)
    local hold = N.start_cmd(("exec timeout 20 perl spec/support/abuse.pl hold %d %d 4")
      :format(port or 0, CONNS))
    -- Two reports with every connection open: the sessions have booted.
    eventually(function()
      local _, n = server.stderr():gsub("connections " .. CONNS .. "\n", "")
      return n >= 2
    end, 10)
    held = heap_at(server, CONNS)
    local asan = (N.slurp("/proc/" .. server.pid .. "/maps") or ""):find("libasan", 1, true)
    hold.kill()
    server.kill()
    assert(base and held, "no reports: " .. server.stderr())
    -- AddressSanitizer's allocator keeps its own books.
    if not asan then
      local each = (held - base) / CONNS
      assert.is_true(each <= 4500, ("%.0f bytes of heap per idle connection"):format(each))
    end
  end)
end)

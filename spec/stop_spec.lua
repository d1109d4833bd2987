-- stop_spec.lua: stopping a program (DESIGN §8, docs/semantics.md
-- "Stopping"): market.stop and market.ground.stopping in a ground VM,
-- ground_vm{drain=} and the `market` interpreter under SIGTERM with real
-- clients, and SIGPIPE.  Every server and client is a bounded subprocess,
-- killed at the end.  The host API (mk_host_stop_on_signals, mk_host_stop,
-- mk_host_exit_status) is in spec/c/test_host.c.
package.path = "spec/support/?.lua;" .. package.path
local market = require "market"
local H = require "helpers"
local N = require "net"
local _ = market._
local ground = market.ground
local q = N.q

-- Work that would last 10 s: a process holding a publisher `name` and an
-- alarm.  A stop's drain ends it.
local function work(name)
  return market.spawn(function()
    return market.transition(nil, market.publisher(name),
      market.subscriber(ground.alarm(math.floor(market.now()) + 10000)))
  end, { name = name })
end

describe("market.stop", function()
  it("stopping(_) watches nothing and keeps nothing alive", function()
    local t0 = os.time()
    H.ground(function()
      market.perform(market.subscriber(ground.stopping(_)))
    end)
    assert.is_true(os.time() - t0 <= 2)
  end)

  it("publishes stopping(deadline) at once; what is left at the deadline is killed with the reason",
     function()
    local log, t0 = H.log(), os.time()
    H.ground(function()
      local start
      market.perform(work("job"), market.spawn(function()
        return market.transition(nil,
          market.subscriber("job", { on_absence = function(_, _, why) log("job went: %s", why) end }),
          market.subscriber(ground.stopping(_), { on_presence = function(_, role)
            log("stopping, %d ms left", role.topic.deadline_ms - start)
          end }))
      end))
      market.pause()
      start = math.floor(market.now())
      market.stop(100)
      market.stop(0)                -- a stop under way is left as it is
    end)
    assert.same({ "stopping, 100 ms left", "job went: stopped: the drain time (100 ms) ran out" },
                log.lines)
    assert.is_true(os.time() - t0 <= 5)
  end)

  it("ends sooner when the work does", function()
    local t0 = os.time()
    H.ground(function()
      market.perform(market.spawn(function()
        return market.transition(nil,
          market.subscriber(ground.alarm(math.floor(market.now()) + 10000)),
          market.subscriber(ground.stopping(_), {
            on_presence = function() return market.transition_no_state(market.quit()) end }))
      end))
      market.pause()
      market.stop(8000)
    end)
    assert.is_true(os.time() - t0 <= 3)
  end)

  it("takes a drain time of 0 ms or more, and needs a running ground VM", function()
    for _i, bad in ipairs { -1, 0 / 0, math.huge, "soon" } do
      H.ground(function()
        local ok, err = pcall(market.stop, bad)
        assert.is_false(ok)
        assert.matches("market.stop: the drain time must be a number of milliseconds, 0 or more", err)
      end)
    end
    assert.has_error(function() market.stop() end, "market.stop: no ground VM is running")
    assert.has_error(function() market.ground_vm(function() end, { drain = -5 }) end)
  end)
end)

describe("ground_vm{drain=} under SIGTERM", function()
  local script
  setup(function()
    script = H.tempfile([[
      local market = require "market"
      local drain = tonumber((...))
      local ok, why, status = market.ground_vm(function()
        market.perform(market.subscriber(market.ground.alarm(math.floor(market.now()) + 10000)),
          market.subscriber(market.ground.stopping(market._), {
            on_presence = function() io.stderr:write("stopping\n") end }))
        io.stderr:write("ready\n")
      end, { drain = drain })
      io.stderr:write(("returned %s %s %s\n"):format(tostring(ok), tostring(why), tostring(status)))
      os.exit(status or 0)]])
  end)
  teardown(function() os.remove(script) end)

  local function start(drain)
    -- The child finds market.so where this Lua did (.busted's cpath or LUA_CPATH).
    local p = N.start_cmd(("exec env LUA_CPATH=%s lua5.4 %s %d"):format(q(package.cpath),
                                                                          q(script), drain))
    assert.is_true(p.wait_for("ready"), p.stderr())
    return p
  end

  -- SIGTERM p, wait for it (bounded): its status and what it printed.
  local function term(p)
    local status = p.stop("TERM")
    local err = p.stderr()
    p.kill()
    return status, err
  end

  it("stops gracefully: stopping, then the drain, then ground_vm returns true", function()
    local status, err = term(start(200))
    assert.equal(0, status)
    assert.equal("ready\nstopping\nreturned true nil nil\n", err)
  end)

  it("a second SIGTERM ends the stop at once: nil, the reason, 128 + 15", function()
    local p = start(10000)
    os.execute("kill -TERM " .. p.pid)
    assert.is_true(p.wait_for("stopping"), p.stderr())
    local status, err = term(p)
    assert.equal(143, status)
    assert.equal("ready\nstopping\nreturned nil stopped by a second signal 143\n", err)
  end)
end)

-- SIGTERM, and SIGINT (Ctrl-C): the same stop, once and twice.
for _i, sig in ipairs { { name = "TERM", status = 143 }, { name = "INT", status = 130 } } do
  describe("market under SIG" .. sig.name .. ", with an idle client (examples/echo.lua)", function()
    local server, port, idle
    local function start(drain)
      server, port = N.await_listening(N.start_cmd(("exec %s --drain %d examples/echo.lua 0")
        :format(q(N.market_bin()), drain)), "examples/echo.lua")
      -- nc -d reads nothing: an idle client, until the server closes.
      idle = N.start_cmd(("exec nc -d 127.0.0.1 %d"):format(port))
      -- The server has accepted it (its end of the connection has a file),
      -- then serves a round trip: the idle one has its session.
      local accepted = false
      for _i = 1, 250 do
        accepted = N.accepted(port)
        if accepted then break end
        N.sleep(0.02)
      end
      assert.is_true(accepted, "the server did not accept the idle client")
      assert.equal("hi\n", (N.capture(("printf 'hi\\n' | nc -N 127.0.0.1 %d"):format(port), 5)))
    end
    -- Wait (bounded) until connecting is refused: the listener is closed.
    local function refused()
      for _i = 1, 100 do
        local _o, status = N.capture(("nc -z 127.0.0.1 %d"):format(port), 5)
        if status ~= 0 then return true end
        N.sleep(0.02)
      end
      return false
    end
    local function signal() os.execute("kill -" .. sig.name .. " " .. server.pid) end
    after_each(function() idle.kill(); server.kill() end)

    it("closes the listener at once, gives the session the drain time, then exits 0", function()
      start(2000)
      signal()
      assert.is_true(refused(), "the listener still accepts connections")
      assert.is_true(server.running(), "the server did not wait for the drain")
      assert.is_not_nil(idle.wait_exit(5), "the idle client was not cut")
      assert.equal(0, server.wait_exit(5))
      assert.equal("echo: listening on port " .. port .. "\n", server.stderr())
    end)

    it("stops at once on a second SIG" .. sig.name .. ", with status " .. sig.status, function()
      start(10000)
      signal()
      assert.is_true(refused(), "the listener still accepts connections")
      signal()
      assert.equal(sig.status, server.wait_exit(3))
      assert.is_not_nil(idle.wait_exit(3), "the idle client was not cut")
    end)
  end)
end

describe("market --drain", function()
  it("takes milliseconds, 0 or more; anything else is a usage error", function()
    for _i, bad in ipairs { "", "soon", "-5", "nan", "inf" } do
      local out, status = N.capture(("%s --drain %s -e 'print(1)'"):format(q(N.market_bin()), q(bad)), 5)
      assert.equal(2, status)
      assert.matches("--drain needs a number of milliseconds", out, 1, true)
    end
    local out, status = N.capture(("%s --drain 0 -e 'print(1)'"):format(q(N.market_bin())), 5)
    assert.equal(0, status)
    assert.equal("1\n", out)
    out = N.capture(("%s --help"):format(q(N.market_bin())), 5)
    assert.matches("--drain MS", out, 1, true)
  end)
end)

describe("SIGPIPE", function()
  it("kills nothing: a driver's warning to a closed stderr is lost, the program goes on", function()
    -- The udp driver warns about a datagram it drops; stderr is a pipe
    -- whose reader has gone by then.
    local code = [[
      local market = require "market"
      local udp = require "market.udp"
      local me = udp.handle("me")
      market.perform(market.subscriber(udp.bound(me, market._), "bound"),
                     market.subscriber(udp.packet(market._, me, market._)))
      market.wait_for(function(e) return e.endpoint == "bound" end)
      market.perform(market.subscriber(market.ground.alarm(math.floor(market.now()) + 300), "later"))
      market.wait_for(function(e) return e.type == "message" end)
      market.perform(market.send(udp.packet(me, udp.remote_address("127.0.0.1", 9), 42)))
      market.pause()
      print("still here")
      market.perform(market.quit())]]
    local out, st = os.tmpname(), os.tmpname()
    N.sh(("(timeout 10 %s -e %s 2>&1 >%s; echo $? >%s) | true"):format(q(N.market_bin()), q(code), out, st))
    local status, printed = N.slurp(st), N.slurp(out)
    os.remove(out)
    os.remove(st)
    assert.equal("0\n", status)
    assert.equal("still here\n", printed)
  end)
end)

-- A second signal must work when the loop cannot: the first cannot begin a
-- stop while a handler is stuck where the activation budget cannot reach
-- it (here the budget is off), and before, the second was ignored too.
describe("a second signal while the loop is stuck", function()
  it("ends the program at once, with 128 + the signal", function()
    local status, _, err = H.sh(([[
      e=$(mktemp)
      timeout 90 %s --max-activation 0 -e 'io.stderr:write("ready\n"); while true do end' 2>$e & pid=$!
]] .. N.AWAIT_READY .. [[
      kill -TERM $pid; sleep 0.6; kill -INT $pid; wait $pid; s=$?; rm -f $e; exit $s]]):format(q(N.market_bin())))
    assert.equal(130, status, err)
  end)
end)

-- One signal delivered twice by one sender (`timeout` sends it to the
-- process, then to its group; here the shell's builtin kill, twice) is one
-- request, even when the loop took the first before the second came:
-- before, that second ended the drain at once with 143.
describe("the same signal twice in quick succession", function()
  it("is one request: the drain runs and the program ends with 0", function()
    local status, _, err = H.sh(([[
      e=$(mktemp)
      %s --drain 300 -e '
        local market = require "market"
        market.perform(market.subscriber(market.ground.alarm(math.floor(market.now()) + 10000)),
          market.subscriber(market.ground.stopping(market._), { on_presence = function()
            io.stderr:write("stopping\n") end }))
        io.stderr:write("ready\n")' 2>$e & pid=$!
      (sleep 90; kill -KILL $pid 2>/dev/null) & w=$!
]] .. N.AWAIT_READY .. [[
      kill -TERM $pid
      for i in $(seq 1 250); do grep -q stopping $e && break; sleep 0.002; done
      kill -TERM $pid; wait $pid; s=$?; kill $w 2>/dev/null; cat $e >&2; rm -f $e; exit $s]]):format(
      q(N.market_bin())))
    assert.equal(0, status, err)
    assert.matches("stopping", err, 1, true)
  end)
end)

-- Processes that replace each other as they go (supervisors) do not keep
-- a stop (or the teardown after it) from ending: while the ground kills
-- everything, no spawn is taken.  Before, the program spun for ever.
describe("a stop among processes that respawn each other", function()
  it("ends at the drain's deadline all the same", function()
    local path = H.tempfile([[
      local market = require "market"
      local function peer(name)
        return function()
          return market.transition(nil,
            market.publisher({ "alive", name }),
            market.subscriber({ "alive", market._ }, { on_absence = function(_, role)
              local who = role.topic[2]
              return market.transition_no_state(market.spawn(peer(who), { name = who }))
            end }),
            market.subscriber(market.ground.alarm(math.floor(market.now()) + 3600000)))
        end
      end
      market.perform(market.spawn(peer("a"), { name = "a" }), market.spawn(peer("b"), { name = "b" }))
      io.stderr:write("ready\n")]])
    local status, _, err = H.sh(([[
      e=$(mktemp)
      timeout 90 %s --drain 200 %s 2>$e & pid=$!
]] .. N.AWAIT_READY .. [[
      kill -TERM $pid; wait $pid; s=$?; cat $e >&2; rm -f $e; exit $s]]):format(q(N.market_bin()), q(path)))
    os.remove(path)
    assert.equal(0, status, err)
  end)
end)

describe("signal dispositions", function()
  it("a watched signal goes back to what it was: SIGPIPE stays ignored", function()
    -- libev leaves a signal at SIG_DFL when its last watcher stops; before,
    -- watching SIGPIPE once made the next write to a closed pipe fatal.
    local out, status = N.capture(("%s --no-drivers -e %s"):format(q(N.market_bin()), q([[
      local market = require "market"
      market.perform(market.subscriber(market.ground.signal(13), "pipe"))
      market.perform(market.delete_endpoint("pipe"))
      local f = io.popen("true", "w")
      os.execute("sleep 0.1")
      print(f:write(("x"):rep(100000)) and f:flush())
      print("still here")]])), 10)
    assert.equal(0, status, out)
    assert.matches("still here\n$", out)
  end)
end)


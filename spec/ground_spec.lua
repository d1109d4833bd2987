-- ground_spec.lua: ground events (runtime/ground.h, docs/semantics.md
-- "Ground events"): the ground publishes what it watches, checks what it is
-- asked to watch, and ends a watch whose descriptor went with a reason; an
-- event relay carries all of it down into nested VMs.  Cases that crashed
-- or hung the program run as subprocesses, so the old failure is a failed
-- assertion.  The C side (closed descriptors behind market's back, libev's
-- errors, two loops) is in spec/c/test_vm.c.
package.path = "spec/support/?.lua;" .. package.path
local market = require "market"
local sys = require "market.sys"
local relay = require "market.event_relay"
local H = require "helpers"
local N = require "net"
local _ = market._
local ground = market.ground

-- `market --no-drivers -e code`: its output and exit status (bounded).
local function run_code(code)
  return N.capture(("%s --no-drivers -e %s"):format(N.q(N.market_bin()), N.q(code)), 10)
end

-- SIGRTMAX - 1, the activation budget's signal (kill -l knows SIGRTMAX).
local function budget_signal()
  local _s, out = H.sh("bash -c 'kill -l SIGRTMAX'")
  return assert(tonumber(out)) - 1
end

-- A record like the ground's, built by hand: no constructor checks it.
local function by_hand(kind, field, v)
  return market.record("market:" .. kind, field)(v)
end

describe("ground event constructors", function()
  -- The error is the caller's: it points at this line.
  local function call(f, ...) local r = f(...); return r end
  local here = "^spec/ground_spec.lua:%d+: "

  it("reject what can never be watched, at the caller's line", function()
    local cases = {
      { ground.readable, -1, "market.ground.readable: the fd must be an integer 0..2147483647 (or market._), got -1" },
      { ground.readable, 3.5, "market.ground.readable: the fd must be an integer 0..2147483647 (or market._), got 3.5" },
      { ground.readable, 2^31, "market.ground.readable: the fd must be an integer 0..2147483647 (or market._), got 2147483648.0" },
      { ground.readable, "3", "market.ground.readable: the fd must be an integer 0..2147483647 (or market._), got string" },
      { ground.writable, -1, "market.ground.writable: the fd must be an integer 0..2147483647 (or market._), got -1" },
      { ground.alarm, math.huge, "market.ground.alarm: msecs must be a finite number (or market._), got inf" },
      { ground.alarm, {}, "market.ground.alarm: msecs must be a finite number (or market._), got table" },
      { ground.stopping, "soon", "market.ground.stopping: deadline_ms must be a number (or market._), got string" },
    }
    for _i, c in ipairs(cases) do
      local ok, err = pcall(call, c[1], c[2])
      assert.is_false(ok)
      assert.matches(here, err)
      assert.equal(c[3], (err:gsub(here, "")))
    end
    local ok, err = pcall(call, ground.readable, 0 / 0)
    assert.is_false(ok)
    assert.matches(here .. "market.ground.readable: the fd must be an integer", err)
    ok, err = pcall(call, ground.alarm, 0 / 0)
    assert.matches(here .. "market.ground.alarm: msecs must be a finite number", err)
    for _i, signum in ipairs { 0, -15, 9, 19, 65, 2^31, 1.5 } do
      ok, err = pcall(call, ground.signal, signum)
      assert.is_false(ok)
      assert.matches(here .. "market.ground.signal: signum must be an integer 1..64 other than " ..
                     "SIGKILL %(9%) and SIGSTOP %(19%)", err)
    end
    ok, err = pcall(call, ground.readable)
    assert.equal("market.ground.readable takes 1 field, got 0", (err:gsub(here, "")))
    ok, err = pcall(call, ground.signal, 1, 2)
    assert.equal("market.ground.signal takes 1 field, got 2", (err:gsub(here, "")))
  end)

  it("take the wildcard and integral floats, and read like record constructors", function()
    assert.equal(ground.readable(3), ground.readable(3.0))
    assert.equal(ground.readable(3), by_hand("readable", "fd", 3))
    assert.equal("market:readable(_)", market.repr(ground.readable(_)))
    assert.equal("market:signal(15)", market.repr(ground.signal(15)))
    assert.equal("market:alarm(1.5)", market.repr(ground.alarm(1.5)))
    assert.equal("market:stopping(_)", market.repr(ground.stopping(_)))
    assert.equal("market:readable", ground.readable.label)
    assert.equal(1, ground.writable.arity)
    assert.same({ "deadline_ms" }, ground.stopping.fields)
    assert.is_true(ground.readable:is(ground.readable(0)))
    assert.is_false(ground.readable:is(ground.writable(0)))
    assert.equal("record market:alarm/1", tostring(ground.alarm))
  end)
end)

describe("the ground VM", function()
  it("a record with no fields is an ordinary topic: subscriber, observer, unsubscribe", function()
    -- It crashed the ground's check of ground events (issue 8).
    local out, status = run_code([[
      local market = require "market"
      local ping = market.record("ping")
      market.perform(market.subscriber(ping(), "sub"), market.observe_publishers(ping(), "obs"))
      market.perform(market.send(ping()))
      local ev = market.yield()
      print(ev.type, ev.endpoint, market.repr(ev.message))
      market.perform(market.delete_endpoint("sub"), market.delete_endpoint("obs"))
      print("alive")]])
    assert.equal(0, status)
    assert.equal("message\tsub\tping()\nalive\n", out)
  end)

  it("a subscriber sees the ground's presence, then its messages; observers see the ground's publishers",
     function()
    local log, fd = H.log(), nil
    N.run(function()
      local s = assert(sys.udp_bind(0))
      local to = assert(sys.resolve("127.0.0.1", s:local_port(), "udp"))[1].sa
      fd = s:fd()
      market.perform(market.spawn(function()
        return market.transition(nil, market.observe_publishers(ground.readable(_), H.logging(log, "observer")))
      end))
      local function rd(e) return e.endpoint == "rd" end
      market.perform(market.subscriber(ground.readable(fd), "rd"))
      local ev = market.wait_for(rd)
      log("%s %s %s", ev.type, ev.endpoint, H.role(ev.role))
      assert(s:sendto("ping", to))
      ev = market.wait_for(rd)
      log("%s %s %s", ev.type, ev.endpoint, market.repr(ev.message))
      assert.equal("ping", (s:recvfrom()))
      market.perform(market.delete_endpoint("rd"))
      market.pause()
      s:close()
    end, 5000)
    local rd = ("market:readable(%d)"):format(fd)
    assert.same({
      "presence rd publisher/participant " .. rd,
      "observer presence #1 publisher/participant " .. rd,
      "message rd " .. rd,
      "observer message #1 " .. rd,         -- observers receive messages too
      "observer absence #1 publisher/participant " .. rd .. " nil",
    }, log.lines)
  end)

  it("closing a watched socket through market ends the watch first: absence 'fd N was closed'", function()
    local got, fd
    N.run(function()
      local s = assert(sys.udp_bind(0))
      fd = s:fd()
      market.perform(market.subscriber(ground.readable(fd), "rd"))
      local ev = market.wait_for(function(e) return e.endpoint == "rd" end)
      assert(ev.type == "presence", ev.type)
      s:close()
      ev = market.wait_for(function(e) return e.endpoint == "rd" end)
      got = ev.type .. " " .. tostring(ev.reason)
    end, 3000)
    assert.equal(("absence fd %d was closed"):format(fd), got)
  end)

  it("an alarm that went off reaches a subscriber that comes later, once, and nobody twice", function()
    -- Two subscriptions to one alarm share its watch.  Before, the second,
    -- made after the alarm went off while the first was still there, got
    -- nothing and waited for ever.
    local log = H.log()
    H.ground(function()
      local t = ground.alarm(math.floor(market.now()))
      local function who(name)
        return market.spawn(function()
          return market.transition(nil, market.subscriber(t, {
            on_message = function()
              log("%s got the alarm", name)
              return market.transition_no_state(market.send({ "got", name }))
            end }))
        end, { name = name })
      end
      market.perform(market.subscriber({ "got", _ }, "got"), who("early"))
      market.wait_for(function(e) return e.type == "message" end)   -- the loop ran
      log("later comes")
      market.perform(who("late"))
      H.settle()
      market.perform(market.quit())
    end)
    assert.same({ "early got the alarm", "later comes", "late got the alarm" }, log.lines)
  end)

  it("refuses to watch an event loop's own descriptor (epoll watching itself aborted libev)", function()
    local out, status = run_code([[
      local market = require "market"
      -- the loop's epoll descriptor, found through /proc ($PPID: market)
      local f = io.popen("for f in /proc/$PPID/fd/*; do " ..
        "[ \"$(readlink $f)\" = 'anon_inode:[eventpoll]' ] && basename $f; done")
      local fd = math.tointeger(tonumber(f:read("l")))
      f:close()
      market.perform(market.subscriber(market.ground.readable(fd), {
        on_absence = function(_, _, why) print(why) end }))]])
    assert.equal(0, status, out)
    assert.matches("^market:readable%(%d+%): an event loop's own descriptor %(epoll%)\n$", out)
  end)

  it("records libev cannot take are published and withdrawn at once, with the reason", function()
    -- Each of them aborted the program inside libev, or hung it (2e9); a
    -- fault signal's handler would spin, and the budget's signal taken over
    -- by libev would be restored to its default action (termination).
    local out, status = run_code(("local SIGBUDGET = %d\n"):format(budget_signal()) .. [[
      local market = require "market"
      local R = market.record
      local bad = { R("market:readable", "fd")(-1), R("market:writable", "fd")(-1),
        R("market:readable", "fd")(3.5), R("market:readable", "fd")(2e9),
        R("market:signal", "signum")(0), R("market:signal", "signum")(65),
        R("market:signal", "signum")(2^31), R("market:alarm", "msecs")(1/0),
        market.ground.signal(11), market.ground.signal(7), market.ground.signal(SIGBUDGET) }
      for i, t in ipairs(bad) do
        market.perform(market.subscriber(t, { name = "e" .. i,
          on_presence = function(_, role) print("presence " .. market.repr(role.topic)) end,
          on_absence = function(_, role, why) print("absence " .. tostring(why)) end }))
      end]])
    assert.equal(0, status)
    local want = {}
    for _i, c in ipairs {
      { "market:readable(-1)", "not an open file descriptor" },
      { "market:writable(-1)", "not an open file descriptor" },
      { "market:readable(3.5)", "not an open file descriptor" },
      { "market:readable(2000000000)", "not an open file descriptor" },
      { "market:signal(0)", "not a signal that can be caught" },
      { "market:signal(65)", "not a signal that can be caught" },
      { "market:signal(2147483648)", "not a signal that can be caught" },
      { "market:alarm(inf)", "not a finite time" },
      { "market:signal(11)", "a fault signal: it cannot be handled as an event" },
      { "market:signal(7)", "a fault signal: it cannot be handled as an event" },
      { ("market:signal(%d)"):format(budget_signal()), "reserved: market's activation budget uses it" },
    } do
      want[#want + 1] = "presence " .. c[1] .. "\nabsence " .. c[1] .. ": " .. c[2] .. "\n"
    end
    assert.equal(table.concat(want), out)
  end)
end)

describe("event relays carry the ground's presence and absence", function()
  -- inner runs `depth` VMs down, each VM with its relay.
  local function nested(depth, inner)
    local boot = function()
      market.perform(relay.event_relay("depth " .. depth))
      market.pause()
      inner()
    end
    for level = depth - 1, 1, -1 do
      local below = boot
      boot = function()
        market.perform(relay.event_relay("depth " .. level), market.nested_vm(below))
      end
    end
    return market.nested_vm(boot)
  end

  -- send(body) performed `depth` VMs up.
  local function send_up(depth, body)
    local a = market.send(body)
    for _i = 1, depth do a = market.at_meta_level(a) end
    return a
  end

  for _i, depth in ipairs { 1, 2 } do
    it("down to depth " .. depth .. ", with the reasons", function()
      local log, fd = H.log(), nil
      local function show(ev)
        log("%s %s %s %s", ev.type, ev.endpoint, market.repr(ev.role.topic), tostring(ev.reason))
      end
      N.run(function()
        market.perform(nested(depth, function()
          local s = assert(sys.udp_bind(0))
          fd = s:fd()
          market.perform(market.subscriber(ground.readable(fd), "rd"))
          show(market.yield())
          s:close()                    -- through market: the ground withdraws
          show(market.yield())
          market.perform(market.delete_endpoint("rd"),
                         market.subscriber(by_hand("readable", "fd", -1), "bad"))
          show(market.yield())
          show(market.yield())
          market.perform(market.delete_endpoint("bad"), send_up(depth, { "depth", depth, "done" }))
        end))
        N.await({ "depth", depth, "done" })
      end, 5000)
      local rd = ("market:readable(%d)"):format(fd)
      assert.same({
        "presence rd " .. rd .. " nil",
        ("absence rd %s fd %d was closed"):format(rd, fd),
        "presence bad market:readable(-1) nil",
        "absence bad market:readable(-1) market:readable(-1): not an open file descriptor",
      }, log.lines)
    end)

    it("and a new subscription after a failed watch tries it again, at depth " .. depth, function()
      -- In the ground VM a later subscription to a record whose watch
      -- failed starts the watch again, and every subscriber still there
      -- sees it (docs/semantics.md §12): so through relays.
      local log, same = H.log(), nil
      local function show(ev)
        log("%s %s %s", ev.type, ev.endpoint, tostring(ev.reason ~= nil))
      end
      N.run(function()
        market.perform(nested(depth, function()
          local s1 = assert(sys.udp_bind(0))
          local fd = s1:fd()
          market.perform(market.subscriber(ground.readable(fd), "A"))
          show(market.yield())
          s1:close()                   -- A stays, as a careless subscriber would
          show(market.yield())
          local s2 = assert(sys.udp_bind(0))
          same = s2:fd() == fd
          market.perform(market.subscriber(ground.readable(fd), "B"))
          local c = assert(sys.udp_bind(0))
          c:sendto("x", sys.resolve("127.0.0.1", s2:local_port(), "udp")[1].sa)
          for _i = 1, 3 do show(market.yield()) end
          s2:close()
          c:close()
          market.perform(market.delete_endpoint("A"), market.delete_endpoint("B"),
                         send_up(depth, { "depth", depth, "retried" }))
        end))
        N.await({ "depth", depth, "retried" })
      end, 5000)
      assert.is_true(same)
      assert.same({
        "presence A false", "absence A true",
        "presence A false", "presence B false", "message A false",
      }, log.lines)
    end)

    it("and the stop, to stopping(_) subscriptions at depth " .. depth, function()
      local log, t0 = H.log(), os.time()
      H.ground(function()
        market.perform(nested(depth, function()
          market.perform(market.subscriber(ground.stopping(_), {
            on_presence = function(_, role)
              log("stopping seen, %d ms left", role.topic.deadline_ms - math.floor(market.now()))
            end }),
            -- Work that would take 10 s: the drain's end kills it.
            market.subscriber(ground.alarm(math.floor(market.now()) + 10000)))
        end))
        market.pause()
        market.stop(50)
      end)
      assert.same({ "stopping seen, 50 ms left" }, log.lines)
      assert.is_true(os.time() - t0 <= 5)
    end)

    it("and a message only when it is the watched event, once, at depth " .. depth, function()
      -- A wildcard message sent in the ground unifies with every one of a
      -- relay's subscriptions above: carried down by each, it reached
      -- every subscriber below once per relayed watch, and that many
      -- times again at each level.  It is no ground event (docs/semantics.md
      -- §4), nor is a stopping record sent as a message (the ground
      -- publishes stopping, never sends it): neither goes down.  An
      -- alarm record, as the ground sends it, does, once.
      local got, far
      N.run(function()
        far = math.floor(market.now()) + 1000000000     -- alarms that never fire
        market.perform(nested(depth, function()
          local log = {}
          market.perform(market.subscriber(ground.alarm(far), "a0"),
                         market.subscriber(ground.alarm(far + 1), "a1"),
                         market.subscriber(ground.alarm(far + 2), "a2"),
                         market.subscriber(ground.stopping(_), "stop"),
                         market.subscriber({ "private", _ }, "private"))
          local watched = 0
          while watched < 3 do        -- the relays' publishers of the three alarms
            if market.yield().type == "presence" then watched = watched + 1 end
          end
          market.perform(send_up(depth, { "depth", depth, "ready" }))
          repeat
            local ev = market.yield()
            if ev.type == "message" then
              log[#log + 1] = ev.endpoint .. " " .. market.repr(ev.message)
            end
          until ev.type == "message" and ev.message == ground.alarm(far + 2)
          market.perform(send_up(depth, { "depth", depth, "got", table.concat(log, "; ") }),
                         market.quit())
        end))
        N.await({ "depth", depth, "ready" })
        market.perform(market.subscriber({ "depth", depth, "got", _ }, "got"),
                       market.send(_), market.send(ground.alarm(_)),
                       market.send(ground.stopping(far)), market.send(ground.alarm(far)),
                       market.send(ground.alarm(far + 2)))
        got = market.wait_for(function(e)
          return e.endpoint == "got" and type(e.message) == "table"   -- (not the `_` sent)
        end).message[4]
      end, 5000)
      assert.equal(("a0 market:alarm(%d); a2 market:alarm(%d)"):format(far, far + 2), got)
    end)
  end
end)

-- The timer driver and the event relay (DESIGN §3), in-process.
local market = require "market"
local timer = require "market.timer"
local relay = require "market.event_relay"
local _ = market._

-- Run boot in a fresh ground VM with the timer driver; fail on boot error.
local function ground(boot)
  local ok, err = market.ground_vm(function()
    market.perform(market.spawn(timer.driver, { name = "timer-driver" }))
    return boot()
  end)
  assert(ok, err)
end

-- A process that records the labels of expired timers in `log`, until it
-- has n.  (A wildcard message body, which some specs send, is no expiry.)
local function recorder(log, n)
  return market.spawn(function()
    return market.transition(0, market.subscriber(timer.expired(_, _), {
      on_message = function(count, m)
        if not timer.expired:is(m) then return end
        log[#log + 1] = { label = m.label, at = m.msecs, now = market.now() }
        if count + 1 == n then return market.transition(count + 1, market.quit()) end
        return market.transition(count + 1)
      end }))
  end, { name = "recorder" })
end

describe("timer driver", function()
  it("answers relative and absolute timers in deadline order", function()
    local log, start = {}, nil
    ground(function()
      start = market.now()
      market.perform(recorder(log, 3))
      market.pause()
      market.perform(market.send(timer.set("late", 60, "relative")),
                     market.send(timer.set("abs", start + 30, "absolute")),
                     market.send(timer.set("early", 10, "relative")))
    end)
    assert.same({ "early", "abs", "late" }, { log[1].label, log[2].label, log[3].label })
    assert.is_true(log[1].at >= start + 10)
    assert.is_true(log[2].at >= start + 30)
    assert.is_true(log[3].at >= start + 60)
  end)

  it("replaces the deadline when a label is set again", function()
    local log, start = {}, nil
    ground(function()
      start = market.now()
      market.perform(recorder(log, 2))
      market.pause()
      market.perform(market.send(timer.set("x", 10, "relative")),
                     market.send(timer.set("x", 50, "relative")),
                     market.send(timer.set("y", 80, "relative")))
    end)
    assert.equal(2, #log)
    assert.equal("x", log[1].label)
    assert.is_true(log[1].at >= start + 50)
    assert.equal("y", log[2].label)
  end)

  it("keeps 100,000 outstanding timers and fires each once, in order", function()
    local N, log = 100000, {}
    ground(function()
      market.perform(recorder(log, N))
      market.pause()
      local start = market.now()
      for i = 1, N do
        market.perform(market.send(timer.set(i, (i * 7919) % 200, "relative")))
      end
      assert(market.now() == start or true)
    end)
    assert.equal(N, #log)
    local seen = {}
    for i = 1, N do
      assert(not seen[log[i].label], "fired twice")
      seen[log[i].label] = true
      if i > 1 then assert(log[i].at >= log[i - 1].at, "out of order") end
    end
  end)

  it("lets a straight-line process sleep while others run", function()
    local order = {}
    ground(function()
      market.perform(market.spawn(function()
        timer.sleep(40)
        order[#order + 1] = "sleeper"
      end, { name = "sleeper" }))
      market.perform(market.spawn(function()
        timer.sleep(5)
        order[#order + 1] = "quick"
      end, { name = "quick" }))
    end)
    assert.same({ "quick", "sleeper" }, order)
  end)

  it("ignores malformed requests and keeps serving", function()
    local log = {}
    ground(function()
      market.perform(recorder(log, 1))
      market.pause()
      market.perform(market.send(timer.set("bad", "soon", "relative")),
                     market.send(timer.set("bad2", 5, "sometime")),
                     market.send(timer.set("good", 5, "relative")))
    end)
    assert.equal(1, #log)
    assert.equal("good", log[1].label)
  end)

  it("ignores times that are not finite: no ground alarm can be set for them", function()
    local log, held = {}, nil
    ground(function()
      market.perform(recorder(log, 2), market.spawn(function()
        -- After a second: which ground alarms are subscribed to, besides
        -- this one?  (The driver, pid 2, goes then: an alarm it held for
        -- ever would keep the program alive.)
        local seen = {}
        local mine = market.ground.alarm(math.floor(market.now()) + 1000)
        return market.transition(nil,
          market.observe_subscribers(market.ground.alarm(_), {
            on_presence = function(_, role) seen[market.repr(role.topic)] = true end,
            on_absence = function(_, role) seen[market.repr(role.topic)] = nil end }),
          market.subscriber(mine, { on_message = function()
            seen[market.repr(mine)] = nil
            held = next(seen) or "none"
            return market.transition_no_state(market.quit(2), market.quit())
          end }))
      end, { name = "checker" }))
      market.pause()
      market.perform(market.send(timer.set("inf", math.huge, "relative")),
                     market.send(timer.set("nan", 0 / 0, "absolute")),
                     market.send(timer.set("-inf", -math.huge, "absolute")),
                     market.send(timer.set("good", 5, "relative")),
                     market.send(timer.set("good2", 10, "relative")))
    end)
    assert.equal(2, #log)
    assert.equal("good", log[1].label)
    assert.equal("good2", log[2].label)
    assert.equal("none", held)
  end)

  it("ignores a wildcard message body, which reaches its subscriptions but is no request", function()
    local log = {}
    ground(function()
      market.perform(recorder(log, 1))
      market.pause()
      market.perform(market.send(_),
                     market.send(timer.set("good", 5, "relative")))
    end)
    assert.equal(1, #log)
    assert.equal("good", log[1].label)
  end)
end)

describe("event relay", function()
  -- A nested VM with a relay and its own timer driver: the timer driver
  -- runs unchanged, its ground alarm carried up by the relay.
  local function vm_with_timer(depth, log)
    local function inner()
      market.perform(relay.event_relay("level"), market.spawn(timer.driver, "timer-driver"))
      market.perform(market.spawn(function()
        return market.transition(nil,
          market.subscriber(timer.expired("t", _), { on_message = function(_, m)
            local pid, name, path = market.self()
            log[#log + 1] = path
            return market.transition(nil, market.quit())
          end }),
          market.send(timer.set("t", 20, "relative")))
      end, "user"))
    end
    local boot = inner
    for _ = 2, depth do
      local below = boot
      boot = function() market.perform(relay.event_relay("mid"), market.nested_vm(below)) end
    end
    return market.nested_vm(boot)
  end

  it("carries the timer driver's alarms into a nested VM", function()
    local log = {}
    assert(market.ground_vm(function() market.perform(vm_with_timer(1, log)) end))
    assert.equal(1, #log)
    assert.matches("^ground/%d+$", log[1])
  end)

  it("carries them two levels deep", function()
    local log = {}
    assert(market.ground_vm(function() market.perform(vm_with_timer(2, log)) end))
    assert.equal(1, #log)
    assert.matches("^ground/%d+/%d+$", log[1])
  end)

  it("withdraws the relayed subscription when the last subscriber goes", function()
    local gone = false
    assert(market.ground_vm(function()
      -- An observer in the ground sees the nested VM's relayed alarm
      -- subscription appear and then go.
      market.perform(market.spawn(function()
        return market.transition(0, market.observe_subscribers(market.ground.alarm(_), {
          on_presence = function(n) return market.transition(n + 1) end,
          on_absence = function(n)
            gone = true
            return market.transition(n, market.quit())
          end }))
      end, "watcher"))
      market.perform(vm_with_timer(1, {}))
    end))
    assert.is_true(gone)
  end)
end)

-- timeout_spec.lua: market.wait_for(pred, ms) and market.yield(ms), timed
-- waits of straight-line code (docs/semantics.md §6, "Timeouts").  None of
-- these runs the timer driver: the ground's own clock wakes the waits.
package.path = "spec/support/?.lua;" .. package.path
local market = require "market"
local H = require "helpers"
local _ = market._

local function never() return false end

-- Liveness bounds only: a timed wait ends no sooner than asked (less 1 ms
-- for the clocks' rounding: market.now() is the loop's wall clock, and
-- timeouts run on the monotonic one), and well within this of it,
-- however busy the machine.
local SLACK = 5000

-- The wall-clock seconds a ground VM running boot took (os.time: a
-- program kept alive by a forgotten 60 s timeout takes a minute).
local function seconds(boot)
  local t0 = os.time()
  H.ground(boot)
  return os.time() - t0
end

describe("timed waits", function()
  it("wait_for(pred, ms) returns nil, \"timeout\" when nothing matches in time, with no " ..
     "timer driver and no endpoint", function()
    local log = H.log()
    H.ground(function()
      H.step(market.spawn(function()
        local t0 = market.now()
        local ev, why = market.wait_for(never, 200)
        local took = market.now() - t0
        log("%s %s %s", tostring(ev), why, tostring(took >= 199 and took < 200 + SLACK))
      end, { name = "sleeper" }))
    end)
    assert.same({ "nil timeout true" }, log.lines)
  end)

  it("market.yield(ms) returns nil, \"timeout\" when no unhandled event comes in time", function()
    local log = H.log()
    H.ground(function()
      local t0 = market.now()
      local ev, why = market.yield(150)
      local took = market.now() - t0
      log("%s %s %s", tostring(ev), why, tostring(took >= 149 and took < 150 + SLACK))
    end)
    assert.same({ "nil timeout true" }, log.lines)
  end)

  it("an event that matches before the deadline is returned; those passed over are kept " ..
     "for market.yield()", function()
    local log = H.log()
    H.ground(function()
      H.step(market.spawn(function()
        market.perform(market.subscriber({ "in", _ }, "in"))
        local ev, why = market.wait_for(function(e) return e.message[2] == 2 end, 60000)
        log("wait_for %s %s", ev.message, tostring(why))
        ev = market.yield(60000)
        log("yield %s", ev.message)
        ev, why = market.yield(50)
        log("then %s %s", tostring(ev), why)
      end))
      H.step(market.send({ "in", 1 }), market.send({ "in", 2 }))
    end)
    assert.same({ 'wait_for ["in", 2] nil', 'yield ["in", 1]', "then nil timeout" }, log.lines)
  end)

  it("events that handlers take do not end a timed wait, nor push its deadline back", function()
    -- A ticker sends every 20 ms for at most 200 rounds; a wait that a
    -- tick restarted would outlast it.
    local log = H.log()
    H.ground(function()
      H.step(market.spawn(function()
        local ticks = 0
        market.perform(market.subscriber("tick", { on_message = function() ticks = ticks + 1 end }))
        local ev, why = market.wait_for(never, 300)
        market.perform(market.send("stop"))
        log("%s %s, ticks before the end: %s", tostring(ev), why, tostring(ticks > 0 and ticks < 200))
      end, { name = "waiter" }))
      H.step(market.spawn(function()
        market.perform(market.subscriber("stop", "stop"))
        for _ = 1, 200 do
          if market.yield(20) then return end
          market.perform(market.send("tick"))
        end
      end, { name = "ticker" }))
    end)
    assert.same({ "nil timeout, ticks before the end: true" }, log.lines)
  end)

  it("a timeout of 0 sees only what is already queued", function()
    local log = H.log()
    H.ground(function()
      H.step(market.spawn(function()
        market.perform(market.subscriber({ "in", _ }, "in"))
        market.perform(market.send({ "in", 1 }), market.send({ "in", 2 }))
        local ev = market.wait_for(function(e) return e.message[2] == 2 end, 0)
        log("queued: %s", ev.message)
        log("kept: %s", market.yield(0).message)
        local none, why = market.yield(0)
        log("nothing queued: %s %s", tostring(none), why)
        none, why = market.wait_for(never, 0)
        log("nothing matching: %s %s", tostring(none), why)
      end))
    end)
    assert.same({ 'queued: ["in", 2]', 'kept: ["in", 1]', "nothing queued: nil timeout",
                  "nothing matching: nil timeout" }, log.lines)
  end)

  it("works in nested VMs at any depth, with no event relay", function()
    local log = H.log()
    H.ground(function()
      H.step(market.nested_vm(function()
        market.perform(market.nested_vm(function()
          local t0 = market.now()
          local ev, why = market.wait_for(never, 100)
          local took = market.now() - t0
          log("depth 2: %s %s %s", tostring(ev), why, tostring(took >= 99 and took < 100 + SLACK))
          market.perform(market.at_meta_level(market.subscriber("deep", "deep")))
          ev = market.wait_for(function(e) return e.type == "message" end, 60000)
          log("depth 2 got %s", ev.message)
        end))
        local ev, why = market.yield(50)
        log("depth 1: %s %s", tostring(ev), why)
        ev, why = market.yield(200)
        market.perform(market.send("deep"))
        log("depth 1 again: %s %s", tostring(ev), why)
      end))
    end)
    assert.same({ "depth 1: nil timeout", "depth 2: nil timeout true",
                  "depth 1 again: nil timeout", "depth 2 got deep" }, log.lines)
  end)

  it("a timeout due after its wait ended never wakes a later wait", function()
    -- wait_for(pred, 0) queues its wake behind the events queued now: the
    -- match before it ends the wait, and the wake comes while the next
    -- wait, an untimed one, is suspended.
    local log = H.log()
    H.ground(function()
      H.step(market.spawn(function()
        market.perform(market.subscriber({ "in", _ }, "in"))
        market.perform(market.send({ "in", 1 }))
        log("first: %s", market.wait_for(function() return true end, 0).message)
        log("untimed: %s", market.yield().message)
        log("timed: %s", market.wait_for(function() return true end, 60000).message)
        local ev, why = market.wait_for(never, 30)
        log("then: %s %s", tostring(ev), why)
        log("later: %s", market.yield().message)
      end, { name = "waiter" }))
      H.step(market.spawn(function()
        for i = 2, 4 do
          market.yield(100)
          market.perform(market.send({ "in", i }))
        end
      end, { name = "sender" }))
    end)
    assert.same({ 'first: ["in", 1]', 'untimed: ["in", 2]', 'timed: ["in", 3]',
                  "then: nil timeout", 'later: ["in", 4]' }, log.lines)
  end)

  it("a wait ended by a match, by a kill or by an error caught under it leaves no timer " ..
     "to keep the program", function()
    local log = H.log()
    local took = seconds(function()
      local matched = market.perform(market.spawn(function()
        market.perform(market.subscriber("go", "go"))
        log("matched: %s", market.wait_for(function() return true end, 60000).message)
      end, { name = "matched" }))
      local victim = market.perform(market.spawn(function()
        market.perform(market.subscriber("never", "never"))
        market.wait_for(never, 60000)
        log("not reached")
      end, { name = "victim" }))
      market.perform(market.spawn(function()
        market.perform(market.subscriber("go", "go"))
        local ok, err = pcall(market.wait_for, function() error("pred fails") end, 60000)
        log("caught: %s %s", tostring(ok), tostring(err):match("pred fails"))
      end, { name = "catcher" }))
      H.settle()
      market.perform(market.send("go"), market.quit(victim, "killed"))
      H.settle()
      market.perform(market.quit(matched))
      log("then the boot's own: %s", select(2, market.yield(20)))
    end)
    assert.same({ "matched: go", "caught: false pred fails", "then the boot's own: timeout" },
                log.lines)
    assert.is_true(took < 30, "the ground VM took " .. took .. " s to end")
  end)

  it("many processes wait with timeouts at once; each times out once, none early", function()
    local n, log, late = 2000, H.log(), 0
    H.ground(function()
      local t0 = market.now()
      for i = 1, n do
        local ms = 10 + (i * 7919) % 200
        market.perform(market.spawn(function()
          local ev, why = market.wait_for(never, ms)
          local took = market.now() - t0
          if ev == nil and why == "timeout" and took >= ms - 1 then log("ok") else late = late + 1 end
        end))
      end
    end)
    assert.equal(n, #log.lines)
    assert.equal(0, late)
  end)

  it("a handler run during a timed wait may wait with its own timeout; the outer " ..
     "deadline holds", function()
    local log = H.log()
    H.ground(function()
      H.step(market.spawn(function()
        market.perform(market.subscriber("h", { on_message = function()
          local ev, why = market.yield(30)
          log("inner %s %s", tostring(ev), why)
        end }))
        local t0 = market.now()
        local ev, why = market.wait_for(never, 200)
        local took = market.now() - t0
        log("outer %s %s %s", tostring(ev), why, tostring(took >= 199 and took < 200 + SLACK))
      end))
      H.step(market.send("h"))
    end)
    assert.same({ "inner nil timeout", "outer nil timeout true" }, log.lines)
  end)

  it("a timeout of nil or math.huge waits for ever, as an untimed wait", function()
    local log = H.log()
    H.ground(function()
      H.step(market.spawn(function()
        market.perform(market.subscriber({ "in", _ }, "in"))
        log("%s", market.wait_for(function() return true end, math.huge).message)
        log("%s", market.wait_for(function() return true end, nil).message)
        log("%s", market.yield(math.huge).message)
      end))
      H.step(market.spawn(function()
        for i = 1, 3 do
          market.yield(50)
          market.perform(market.send({ "in", i }))
        end
      end))
    end)
    assert.same({ '["in", 1]', '["in", 2]', '["in", 3]' }, log.lines)
  end)

  it("a timeout that is not a number >= 0 is misuse, raised at the call", function()
    local log = H.log()
    H.ground(function()
      for _, bad in ipairs { -1, 0 / 0, "100", {}, true } do
        local ok, err = pcall(market.wait_for, never, bad)
        log("wait_for %s: %s", tostring(ok), err)
        ok, err = pcall(market.yield, bad)
        log("yield %s: %s", tostring(ok), err)
      end
    end)
    local n = 0
    for _, line in ipairs(log.lines) do
      n = n + 1
      assert.is_truthy(line:match("^wait_for false: .*market%.wait_for: the timeout must be a " ..
                                  "number of milliseconds >= 0") or
                       line:match("^yield false: .*market%.yield: the timeout must be a " ..
                                  "number of milliseconds >= 0") or
                       line:match("^yield false: .*market%.yield: the argument must be a " ..
                                  "function k %(the yield action%) or a timeout"), line)
    end
    assert.equal(10, n)
  end)
end)

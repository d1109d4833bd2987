-- wait_until_spec.lua: market.wait_until(cond [, ms]), straight-line code
-- waiting for what its own handlers change (docs/semantics.md §6).
package.path = "spec/support/?.lua;" .. package.path
local market = require "market"
local H = require "helpers"
local _ = market._

describe("market.wait_until", function()
  it("waits until what the process's handlers change makes cond true, and returns its value",
     function()
    local log = H.log()
    H.ground(function()
      H.step(market.spawn(function()
        local got = {}
        market.perform(market.subscriber({ "n", _ }, {
          on_message = function(_, m) got[#got + 1] = m[2] end }))
        log("%s", market.wait_until(function() return #got >= 3 and table.concat(got, " ") end))
      end, { name = "waiter" }))
      H.step(market.send({ "n", 1 }), market.send({ "n", 2 }))
      H.step(market.send({ "n", 3 }))
    end)
    assert.same({ "1 2 3" }, log.lines)
  end)

  it("returns at once when cond holds already, without letting the VM run", function()
    local log = H.log()
    H.ground(function()
      H.step(market.spawn(function()
        market.perform(market.subscriber("late", "late"))
        log("%s", market.wait_until(function() return "now" end))
        -- Had it waited, the message sent below would have come first.
        market.perform(market.send("late"))
        log("%s", market.yield(0).endpoint)
      end))
    end)
    assert.same({ "now", "late" }, log.lines)
  end)

  it("keeps the events no handler takes for market.yield(), in order", function()
    local log = H.log()
    H.ground(function()
      H.step(market.spawn(function()
        local done = false
        market.perform(market.subscriber("done", { on_message = function() done = true end }),
                       market.subscriber({ "other", _ }, "other"))
        H.step(market.send({ "other", 1 }), market.send({ "other", 2 }), market.send("done"))
        market.wait_until(function() return done end)
        log("%s %s", market.yield(0).message, market.yield(0).message)
        local none, why = market.yield(0)
        log("%s %s", tostring(none), why)
      end))
    end)
    assert.same({ '["other", 1] ["other", 2]', "nil timeout" }, log.lines)
  end)

  it("drops the events an endpoint refuses with a handler false, and keeps the others", function()
    -- A waiting process's observer with on_message = false (tcp.serve's
    -- of its connections) must not keep every message that fits its
    -- topic for a market.yield() that never comes: they piled up.
    local log = H.log()
    H.ground(function()
      H.step(market.spawn(function()
        local done = false
        market.perform(market.subscriber("done", { on_message = function() done = true end }),
                       market.observe_publishers({ "refused", _ }, { name = "refusing",
                         on_message = false, on_presence = function() log("presence") end }),
                       market.subscriber({ "kept", _ }, { name = "kept", on_presence = false }))
        H.step(market.spawn(function()
          return market.transition(nil, market.publisher({ "refused", 0 }),
                                   market.publisher({ "kept", 0 }))
        end))
        H.step(market.send({ "refused", 1 }), market.send({ "kept", 2 }),
               market.send({ "refused", 3 }), market.send("done"))
        market.wait_until(function() return done end)
        local ev = market.yield(0)
        log("%s %s", ev.endpoint, ev.message)
        local none, why = market.yield(0)
        log("%s %s", tostring(none), why)
      end))
    end)
    assert.same({ "presence", 'kept ["kept", 2]', "nil timeout" }, log.lines)
  end)

  it("warns when the events kept for market.yield() reach 10,000, and at every tenfold", function()
    local warned = {}
    H.ground(function()
      market.log.sink(function(level, _, message)
        if level == "warn" then warned[#warned + 1] = message end
      end)
      H.step(market.spawn(function()
        local done = false
        market.perform(market.subscriber("done", { on_message = function() done = true end }),
                       market.subscriber({ "unread", _ }, { name = "unread" }))
        local sends = {}
        for i = 1, 10001 do sends[i] = market.send({ "unread", i }) end
        H.step(table.unpack(sends))
        H.step(market.send("done"))
        market.wait_until(function() return done end)
      end))
      market.log.sink(nil)
    end)
    assert.same({ "10000 events kept for market.yield(), the last for endpoint unread: " ..
                  "take them, or refuse them with a handler false" }, warned)
  end)

  it("refuses a handler that is neither a function nor false", function()
    local log = H.log()
    H.ground(function()
      for _, v in ipairs { true, 0 } do
        local ok, err = pcall(market.subscriber, "x", { on_message = v })
        log("%s %s", tostring(ok), err)
      end
    end)
    assert.same({ "false market.subscriber: handler on_message is not a function (nor false)",
                  "false market.subscriber: handler on_message is not a function (nor false)" },
                log.lines)
  end)

  it("returns nil, \"timeout\" when ms go by first; 0 sees only what is queued", function()
    local log = H.log()
    H.ground(function()
      H.step(market.spawn(function()
        local n = 0
        market.perform(market.subscriber("tick", { on_message = function() n = n + 1 end }))
        market.perform(market.send("tick"))
        log("%s", market.wait_until(function() return n == 1 and "queued" end, 0))
        local t0 = market.now()
        local v, why = market.wait_until(function() return n == 2 end, 100)
        log("%s %s %s", tostring(v), why, tostring(market.now() - t0 >= 99))
        v, why = market.wait_until(function() return n == 2 end, 0)
        log("%s %s", tostring(v), why)
      end))
    end)
    assert.same({ "queued", "nil timeout true", "nil timeout" }, log.lines)
  end)

  it("raises on misuse: a cond that is not a function, a bad timeout, outside a process", function()
    local log = H.log()
    H.ground(function()
      for _, args in ipairs { { 5 }, { function() end, -1 }, { function() end, "10" } } do
        local ok, err = pcall(market.wait_until, table.unpack(args))
        log("%s %s", tostring(ok), err)
      end
      local ok, err = pcall(function() table.sort({ 2, 1 }, function(a, b)
        return market.wait_until(function() return false end) and a < b end) end)
      log("%s %s", tostring(ok), (err:gsub("^.-: ", "", 1)))
    end)
    local ok, err = pcall(market.wait_until, function() return true end)
    assert.is_false(ok)
    assert.matches("market.wait_until: not inside a market process", err, 1, true)
    assert.same({
      "false market.wait_until: cond must be a function",
      "false market.wait_until: the timeout must be a number of milliseconds >= 0 (or nil: none), got -1",
      "false market.wait_until: the timeout must be a number of milliseconds >= 0 (or nil: none), got string",
      "false market.wait_until: cannot wait inside a C function (a metamethod, or a function that " ..
        "table.sort, string.gsub and the like call): the process cannot be suspended there",
    }, log.lines)
  end)
end)

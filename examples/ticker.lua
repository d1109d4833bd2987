-- examples/ticker.lua: timers, relative and absolute.
--
--   market examples/ticker.lua [ticks] [interval_ms]
--
-- A ticker process asks the timer driver for a relative timer again and
-- again and prints each tick; a second process sets one absolute timer
-- (wall-clock ms) for the moment the last tick is due and prints when it
-- fires.  Both are Marketplace-style handler processes; the last part is a
-- straight-line process that sleeps.
local market = require "market"
local timer = require "market.timer"
local _ = market._

local ticks = tonumber(arg[1]) or 5
local interval = tonumber(arg[2]) or 200
local start = market.now()

local function elapsed() return math.floor(market.now() - start + 0.5) end

market.perform(market.spawn(function()
  return market.transition(1,
    market.subscriber(timer.expired("tick", _), { on_message = function(n)
      print(("tick %d at +%d ms"):format(n, elapsed()))
      if n == ticks then return market.transition(n, market.quit()) end
      return market.transition(n + 1, market.send(timer.set("tick", interval, "relative")))
    end }),
    market.send(timer.set("tick", interval, "relative")))
end, { name = "ticker" }))

market.perform(market.spawn(function()
  local due = start + ticks * interval
  return market.transition(nil,
    market.subscriber(timer.expired("deadline", _), { on_message = function(_, m)
      print(("absolute deadline reached at +%d ms (late by %d ms)"):format(elapsed(),
        math.max(0, math.floor(m.msecs - due))))
      return market.transition(nil, market.quit())
    end }),
    market.send(timer.set("deadline", due, "absolute")))
end, { name = "deadline" }))

market.perform(market.spawn(function()
  timer.sleep(interval // 2)
  print(("sleeper woke at +%d ms"):format(elapsed()))
end, { name = "sleeper" }))

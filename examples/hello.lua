-- examples/hello.lua: both process styles in a dozen lines.
local market = require "market"
local greeting = market.record("greeting", "who", "text")
local _ = market._

-- Marketplace style: handlers return transitions.
market.perform(market.spawn(function()
  return market.transition(0, market.subscriber(greeting(_, _), {
    on_message = function(count, msg)
      print(msg.who .. " says " .. msg.text)
      return market.transition(count + 1, market.quit())
    end }))
end, { name = "listener" }))

-- Straight-line style: wait for the listener, then speak.
market.perform(market.spawn(function()
  market.perform(market.publisher(greeting(_, _), { name = "out" }))
  local ev = market.yield()              -- presence of the listener
  assert(ev.type == "presence")
  market.perform(market.send(greeting("alice", "hello")))
end, { name = "talker" }))

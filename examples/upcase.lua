-- examples/upcase.lua: standard input to standard output, upper-cased,
-- line by line, through the stdio driver (docs/stdio.md).
--
--   build/market examples/upcase.lua < file
--   some-command | build/market examples/upcase.lua | less
--
-- Flow control end to end: when standard output is not read fast enough,
-- the driver publishes stdio.backpressure("stdout"); while it does, this
-- process publishes stdio.backpressure("stdin"), and the driver stops
-- reading standard input, so the writer into the pipe waits instead of
-- this program's memory growing.  At the end of input it ends standard
-- output (the driver writes what is queued first) and quits.
local market = require "market"
local stdio = require "market.stdio"
local _, EOF = market._, market.EOF
local T, send = market.transition_no_state, market.send

market.perform(market.spawn(stdio.driver, { name = "stdio" }))

return market.transition(nil,
  -- Lines are sent only once the driver's subscription to stdout is
  -- there: a message nobody subscribes to is lost.
  market.publisher(stdio.stdout(_), {
    name = "out",
    on_presence = function()
      return T(market.subscriber(stdio.stdin(_), {
        name = "in",
        on_message = function(_, m)
          if m.data == EOF then return T(send(stdio.stdout(EOF)), market.quit()) end
          return T(send(stdio.stdout(m.data:upper() .. "\n")))
        end,
        on_absence = function(_, _, reason)
          if reason then error("upcase: standard input: " .. tostring(reason), 0) end
        end }))
    end,
    on_absence = function(_, _, reason)
      if reason then error("upcase: standard output: " .. tostring(reason), 0) end
    end }),
  market.observe_publishers(stdio.backpressure("stdout"), {
    name = "slow",
    on_presence = function() return T(market.publisher(stdio.backpressure("stdin"), "hold")) end,
    on_absence = function() return T(market.delete_endpoint("hold")) end }))

-- bench/echo_footprint.lua ECHO MS [echo.lua's arguments]: runs the echo
-- server at path ECHO (examples/echo.lua) with a process beside it that
-- reports on stderr, every MS milliseconds,
--   heap H lua L connections C
-- the heap in use (market.memory(), after two full collections), the Lua
-- heap's part of it (collectgarbage("count")) and the connections open.
-- Used by bench/footprint.sh and tcp_examples_spec's footprint bound.
local market, tcp, timer = require "market", require "market.tcp", require "market.timer"
local echo, ms = ...
ms = math.tointeger(tonumber(ms))
if not echo or not ms then
  error("usage: market bench/echo_footprint.lua ECHO MS [echo.lua's arguments]", 0)
end
local _, conns = market._, 0
local function report() return market.send(timer.set("footprint", ms, "relative")) end
market.perform(market.spawn(function()
  return market.transition(nil,
    market.observe_publishers(tcp.channel(_, tcp.listener(_), _), {
      on_presence = function() conns = conns + 1 end,
      on_absence = function() conns = conns - 1 end }),
    market.subscriber(timer.expired("footprint", _), {
      on_message = function()
        collectgarbage(); collectgarbage()
        io.stderr:write(("heap %d lua %d connections %d\n"):format(
          market.memory(), math.floor(collectgarbage("count") * 1024), conns))
        return market.transition_no_state(report())
      end }),
    report())
end))
return assert(loadfile(echo))(select(3, ...))

-- actor.lua: the Lua half of examples/embed (see host.c).
--
-- An ordinary market process: it answers request(id, text) with
-- reply(id, PREFIX: TEXT) and quits when its client goes away.  It does not
-- know that the client is a C program.  The host passes PREFIX as `...`.
local market = require "market"
local _ = market._
local request = market.record("request", "id", "text")
local reply = market.record("reply", "id", "text")

local prefix = ... or "echo"

return market.transition(0,
  market.publisher(reply(_, _)),
  market.subscriber(request(_, _), {
    on_presence = function(served)
      print("actor: a client is here")
    end,
    on_message = function(served, m)
      return market.transition(served + 1,
        market.send(reply(m.id, prefix .. ": " .. m.text:upper())))
    end,
    on_absence = function(served)
      print(("actor: the client left after %d requests; quitting"):format(served))
      return market.transition(served, market.quit())
    end,
  }))

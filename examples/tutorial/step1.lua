-- examples/tutorial/step1.lua: a TCP echo server (docs/tutorial.md, step 1).
--
--   build/market examples/tutorial/step1.lua [port]     (default 5999; 0: any)
local market = require "market"
local tcp = require "market.tcp"
local _ = market._

local port = math.tointeger(tonumber((...) or 5999))
if not port then error("usage: market step1.lua [port]", 0) end
local here = tcp.listener(port)

-- One process per connection: what it reads, it sends back.
local function session(remote)
  return function()
    local function bye() return market.transition_no_state(market.quit()) end
    return market.transition(nil,
      market.subscriber(tcp.channel(remote, here, _), {
        on_message = function(_, m)
          if m.subpacket == market.EOF then return bye() end   -- the client is done
          return market.transition_no_state(market.send(tcp.channel(here, remote, m.subpacket)))
        end,
        on_absence = bye,                                       -- the connection went
      }),
      market.publisher(tcp.channel(here, remote, _)))
  end
end

return market.transition(nil,
  -- Observing who publishes into the listener makes the driver listen;
  -- each connection's manager is such a publisher, from the remote end.
  market.observe_publishers(tcp.channel(_, here, _), {
    on_presence = function(_, role)
      return market.transition_no_state(market.spawn(session(role.topic.source)))
    end,
  }),
  -- The driver says when it listens, on which port, or why it cannot.
  market.subscriber(tcp.listening(port, _), {
    on_presence = function(_, role)
      if role.topic.bound_port then
        io.stderr:write(("listening on port %d\n"):format(role.topic.bound_port))
      end
    end,
    on_absence = function(_, _, reason)
      if reason then error(reason, 0) end
    end,
  }))

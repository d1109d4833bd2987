-- examples/tutorial/step2.lua: lines and names (docs/tutorial.md, step 2).
--
--   build/market examples/tutorial/step2.lua [port]     (default 5999; 0: any)
local market = require "market"
local tcp = require "market.tcp"
local _ = market._

local port = math.tointeger(tonumber((...) or 5999))
if not port then error("usage: market step2.lua [port]", 0) end
local here = tcp.listener(port)

local function session(remote, name)
  return function()
    local function out(text) return market.send(tcp.channel(here, remote, text)) end
    local function bye() return market.transition_no_state(market.quit()) end

    return market.transition(nil,
      market.subscriber(tcp.channel(remote, here, _), {
        name = "in",
        on_message = function(_, m)
          local line = m.subpacket     -- one line, without its "\n"
          if line == market.EOF then return bye() end
          return market.transition_no_state(out(name .. ": " .. line .. "\n"))
        end,
        on_absence = bye,
      }),
      market.publisher(tcp.channel(here, remote, _), "out"),
      -- The connection's manager subscribes to this flow from the start:
      -- what we send now reaches the client.
      out("welcome, you are " .. name .. "\n"))
  end
end

local count = 0

return market.transition(nil,
  -- Deliver the input line by line: settings for every connection of here.
  tcp.options(here, { framing = "line" }),
  market.observe_publishers(tcp.channel(_, here, _), {
    name = "accept",
    on_presence = function(_, role)
      count = count + 1
      local name = "user" .. count
      return market.transition_no_state(market.spawn(session(role.topic.source, name), { name = name }))
    end,
  }),
  market.subscriber(tcp.listening(port, _), {
    name = "listening",
    on_presence = function(_, role)
      if role.topic.bound_port then
        io.stderr:write(("listening on port %d\n"):format(role.topic.bound_port))
      end
    end,
    on_absence = function(_, _, reason)
      if reason then error(reason, 0) end
    end,
  }))

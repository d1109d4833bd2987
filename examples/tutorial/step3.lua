-- examples/tutorial/step3.lua: everyone hears every line (docs/tutorial.md,
-- step 3).
--
--   build/market examples/tutorial/step3.lua [port]     (default 5999; 0: any)
local market = require "market"
local tcp = require "market.tcp"
local _ = market._

-- What a user said: the message kind of the chat.
local said = market.record("chat-said", "who", "text")

local port = math.tointeger(tonumber((...) or 5999))
if not port then error("usage: market step3.lua [port]", 0) end
local here = tcp.listener(port)

local function session(remote, name)
  return function()
    local function out(text) return market.send(tcp.channel(here, remote, text)) end
    local function bye() return market.transition_no_state(market.quit()) end

    return market.transition(nil,
      market.subscriber(tcp.channel(remote, here, _), {
        name = "in",
        on_message = function(_, m)
          local line = m.subpacket
          if line == market.EOF then return bye() end
          -- Said to whoever listens: every session, this one included.
          if line ~= "" then return market.transition_no_state(market.send(said(name, line))) end
        end,
        on_absence = bye,
      }),
      market.publisher(tcp.channel(here, remote, _), "out"),
      market.publisher(said(name, _), "speak"),
      market.subscriber(said(_, _), {
        name = "hear",
        on_message = function(_, m)
          if m.who == name then return end
          return market.transition_no_state(out(m.who .. ": " .. m.text .. "\n"))
        end,
      }),
      out("welcome, you are " .. name .. "\n"))
  end
end

local count = 0

return market.transition(nil,
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

-- examples/tutorial/step4.lua: joins and leaves, from presence and absence
-- (docs/tutorial.md, step 4).
--
--   build/market examples/tutorial/step4.lua [port]     (default 5999; 0: any)
local market = require "market"
local tcp = require "market.tcp"
local _ = market._

local said = market.record("chat-said", "who", "text")

local port = math.tointeger(tonumber((...) or 5999))
if not port then error("usage: market step4.lua [port]", 0) end
local here = tcp.listener(port)

local function session(remote, name)
  return function()
    local settled = false            -- presences before this were users already here
    local here_now = {}              -- (only for the greeting)

    local function out(text) return market.send(tcp.channel(here, remote, text)) end
    local function bye() return market.transition_no_state(market.quit()) end

    return market.transition(nil,
      market.subscriber(tcp.channel(remote, here, _), {
        name = "in",
        on_message = function(_, m)
          local line = m.subpacket
          if line == market.EOF then return bye() end
          if line ~= "" then return market.transition_no_state(market.send(said(name, line))) end
        end,
        on_absence = bye,
      }),
      market.publisher(tcp.channel(here, remote, _), "out"),
      market.publisher(said(name, _), "speak"),
      market.subscriber(said(_, _), {
        name = "hear",
        -- Another session's "speak" publisher: a user is here.
        on_presence = function(_, role)
          local who = role.topic.who
          if who == name then return end
          if not settled then here_now[#here_now + 1] = who; return end
          return market.transition_no_state(out(who .. " joined\n"))
        end,
        -- ... and gone: its process quit, whatever the reason.
        on_absence = function(_, role)
          local who = role.topic.who
          if who == name then return end
          return market.transition_no_state(out(who .. " left\n"))
        end,
        on_message = function(_, m)
          if m.who == name then return end
          return market.transition_no_state(out(m.who .. ": " .. m.text .. "\n"))
        end,
      }),
      -- Once the presence events of the users already here are in, greet.
      market.yield(function()
        settled = true
        table.sort(here_now)
        local others = #here_now > 0 and table.concat(here_now, ", ") or "nobody else"
        here_now = nil
        return market.transition_no_state(
          out(("welcome, you are %s; here: %s\n"):format(name, others)))
      end))
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

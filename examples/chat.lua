-- examples/chat.lua: a chat server.
--
--   build/market examples/chat.lua [port]        (default port 5999)
--
-- Connect with `nc localhost 5999` or examples/chat-client.lua.  A
-- newcomer is told its name and who is here; every line a user sends is
-- shown to the others as "name: text"; arrivals and departures are
-- announced.
--
-- There are no lists of users.  Each session publishes said(its name, _)
-- and subscribes to said(_, _): a session's presence *is* the publisher, so
-- the others hear of arrivals and departures as presence and absence
-- events, and a line is a message said(name, text) that every session's
-- subscription receives.  The sessions also subscribe to the server's
-- presence record: when the program stops (SIGINT/SIGTERM: the ground
-- publishes market.ground.stopping), the server quits, and the sessions
-- say so and go.
local market = require "market"
local tcp = require "market.tcp"
local _ = market._

local said = market.record("chat-said", "who", "text")
local server = market.record("chat-server", "port")

local port = math.tointeger(tonumber((...) or 5999))
if not port then error("usage: market examples/chat.lua [port]", 0) end
local here = tcp.listener(port)

local function session(remote, name)
  return function()
    local buffered = ""              -- an incomplete last line
    local settled = false            -- presences before this were users already here
    local here_now = {}              -- (only for the greeting)

    local function out(text) return market.send(tcp.channel(here, remote, text)) end
    local function bye() return market.transition_no_state(market.quit()) end

    return market.transition(nil,
      market.subscriber(tcp.channel(remote, here, _), {
        name = "in",
        on_message = function(_, m)
          local data = m.subpacket
          if data == market.EOF then return bye() end
          buffered = buffered .. data
          local actions = {}
          for line in buffered:gmatch("([^\n]*)\n") do
            line = line:gsub("\r$", "")
            if line ~= "" then actions[#actions + 1] = market.send(said(name, line)) end
          end
          buffered = buffered:match("[^\n]*$")
          if #buffered > 4096 then             -- a line that long is abuse
            actions[#actions + 1] = out("line too long: bye\n")
            actions[#actions + 1] = market.quit()
          end
          return market.transition_no_state(actions)
        end,
        on_absence = bye,
      }),
      market.publisher(tcp.channel(here, remote, _), { name = "out", on_absence = bye }),
      market.publisher(said(name, _), "speak"),
      market.subscriber(said(_, _), {
        name = "hear",
        on_presence = function(_, role)
          local who = role.topic.who
          if who == name then return end
          if not settled then here_now[#here_now + 1] = who; return end
          return market.transition_no_state(out(who .. " joined\n"))
        end,
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
      market.subscriber(server(port), {
        name = "server",
        on_absence = function()
          return market.transition_no_state(out("server shutting down\n"), market.quit())
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
  market.publisher(server(port), "running"),
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
      if math.type(role.topic.bound_port) == "integer" then
        io.stderr:write(("chat: listening on port %d\n"):format(role.topic.bound_port))
      end
    end,
    on_absence = function(_, _, reason)
      if reason then error("chat: " .. tostring(reason), 0) end
    end,
  }),
  market.subscriber(market.ground.stopping(_), {
    name = "stopping",
    on_presence = function() return market.transition_no_state(market.quit()) end,
  }))

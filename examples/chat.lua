-- examples/chat.lua: a chat server.
--
--   build/market examples/chat.lua [port]        (default port 5999)
--
-- Connect with `nc localhost 5999` or examples/chat-client.lua.  A
-- newcomer is told its name and who is here; every line a user sends is
-- shown to the others as "name: text"; arrivals and departures are
-- announced.
--
-- The driver splits the input into lines (tcp.options, below: lines of at
-- most 4 KiB, without their "\r\n"), closes connections idle for an hour,
-- takes at most 1,000 users, and drops a user whose output it holds past
-- a small limit (one who does not read what the others say).
--
-- There are no lists of users.  Each session publishes said(its name, _)
-- and subscribes to said(_, _): a session's presence *is* the publisher, so
-- the others hear of arrivals and departures as presence and absence
-- events, and a line is a message said(name, text) that every session's
-- subscription receives.  The sessions also subscribe to the server's
-- presence record: when the program stops (SIGINT/SIGTERM: the ground
-- publishes market.ground.stopping), the server quits, and the sessions
-- say so and go.
--
-- With `market --cluster nats://HOST:PORT chat.lua` on several machines (or
-- several times on one, each with its own port), the room is one room
-- across all of them (docs/cluster.md): the said(...) topics are wrapped
-- in cluster.topic, so users elsewhere are present, absent and heard as
-- the local ones are, and user names carry the node's name (user1@node).
local market = require "market"
local tcp = require "market.tcp"
local cluster = require "market.cluster"
local _ = market._

local node = cluster.node            -- nil without --cluster: one machine
local chat_said = market.record("chat-said", "who", "text")
-- said(who, text) as a topic, and said_of(topic) back.
local said, said_of = chat_said, function(t) return t end
if node then
  said = function(who, text) return cluster.topic(chat_said(who, text)) end
  said_of = function(t) return t.topic end
end
local server = market.record("chat-server", "port")

local port = math.tointeger(tonumber((...) or 5999))
if not port then
  io.stderr:write("usage: market examples/chat.lua [port]\n")
  market.perform(market.exit(2))      -- a usage error: no crash report
end
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
          local line = m.subpacket     -- one line
          if line == market.EOF then return bye() end
          if line ~= "" then return market.transition_no_state(market.send(said(name, line))) end
        end,
        -- With a reason ("line longer than 4096 bytes"), the connection is
        -- still open the other way: say why before going.
        on_absence = function(_, _, reason)
          if not reason then return bye() end
          return market.transition_no_state(out(reason .. ": bye\n"), market.quit())
        end,
      }),
      market.publisher(tcp.channel(here, remote, _), { name = "out", on_absence = bye }),
      market.publisher(said(name, _), "speak"),
      market.subscriber(said(_, _), {
        name = "hear",
        on_presence = function(_, role)
          local who = said_of(role.topic).who
          if who == name then return end
          if not settled then here_now[#here_now + 1] = who; return end
          return market.transition_no_state(out(who .. " joined\n"))
        end,
        on_absence = function(_, role)
          local who = said_of(role.topic).who
          if who == name then return end
          return market.transition_no_state(out(who .. " left\n"))
        end,
        on_message = function(_, m)
          m = said_of(m)
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
  tcp.options(here, { framing = "line", max_frame = 4096, idle_timeout = 3600 * 1000,
                      max_connections = 1000, high_water = 64 * 1024, hard_limit = 256 * 1024 }),
  market.publisher(server(port), "running"),
  market.observe_publishers(tcp.channel(_, here, _), {
    name = "accept",
    on_presence = function(_, role)
      count = count + 1
      local name = "user" .. count .. (node and "@" .. node or "")
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

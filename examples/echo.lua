-- examples/echo.lua: a TCP echo server, one session process per connection.
--
--   build/market examples/echo.lua [port [max_connections]]
--       (default port 5999, at most 1,000 connections at once)
--
-- The boot process observes publishers of tcp.channel(_, tcp.listener(port),
-- _): that makes the driver listen.  Each accepted connection appears as the
-- presence of a publisher tcp.channel(remote, listener, _); a session is
-- spawned for it.  The session sends back what it reads, honours the
-- driver's backpressure (it stops the driver reading its input while its
-- output is queued past the high-water mark, so a client that sends but
-- never reads cannot make the server grow), half-closes on end of stream and then goes, which
-- closes the connection.  The driver closes connections idle for five
-- minutes and refuses those beyond max_connections (tcp.options), and
-- the output limits are sized for that many: a session pauses at 64 KiB
-- queued, as in chat.lua, where the driver's default of 1 MiB would come
-- to a gigabyte for 1,000 clients that do not read.
-- Stopping is the runtime's (SIGINT or SIGTERM): the listener closes at
-- once, the open sessions get the drain time.
local market = require "market"
local tcp = require "market.tcp"
local _, EOF = market._, market.EOF
local channel, send, transition_no_state = tcp.channel, market.send, market.transition_no_state

local args = { ... }
local port = math.tointeger(tonumber(args[1] or 5999))
local max_connections = math.tointeger(tonumber(args[2] or 1000))
if not port or not max_connections then
  io.stderr:write("usage: market examples/echo.lua [port [max_connections]]\n")
  market.perform(market.exit(2))      -- a usage error: no crash report
end
local here = tcp.listener(port)

-- A session's state is the remote address: the handler tables below are
-- made once and shared by every session, so an idle connection costs its
-- process and endpoints, not a set of closures and tables of its own.
local session_in = {
  name = "in",
  on_message = function(remote, m)
    local data = m.subpacket
    if data == EOF then
      -- Half-close our side too, then go: the driver flushes and closes.
      return transition_no_state(send(channel(here, remote, EOF)), market.quit())
    end
    return transition_no_state(send(channel(here, remote, data)))
  end,
  -- The manager went, so do we.
  on_absence = function() return transition_no_state(market.quit()) end,
}

local session_out = {
  name = "out",
  -- The connection's manager went (the peer reset, say): so do we.
  on_absence = function() return transition_no_state(market.quit()) end,
}

-- Output queued past the high-water mark: the manager reads no more
-- until it drains (reading = false).  The subscription to "in" stays:
-- withdrawn, a chunk already on its way to it would be dropped.
local session_backpressure = {
  name = "backpressure",
  on_presence = function(remote)
    return transition_no_state(tcp.options(here, remote, { reading = false }, "hold"))
  end,
  on_absence = function() return transition_no_state(market.delete_endpoint("hold")) end,
}

local function session(remote)
  return market.transition(remote,
    market.subscriber(channel(remote, here, _), session_in),
    market.publisher(channel(here, remote, _), session_out),
    market.observe_publishers(tcp.backpressure(here, remote), session_backpressure))
end

return market.transition(nil,
  tcp.options(here, { idle_timeout = 300 * 1000, max_connections = max_connections,
                      high_water = 64 * 1024, hard_limit = 256 * 1024 }),
  market.observe_publishers(tcp.channel(_, here, _), {
    name = "accept",
    on_presence = function(_, role)
      local remote = role.topic.source
      return market.transition_no_state(
        market.spawn(function() return session(remote) end,
                     { name = "echo " .. remote.host .. ":" .. remote.port }))
    end,
  }),
  market.subscriber(tcp.listening(port, _), {
    name = "listening",
    on_presence = function(_, role)
      if math.type(role.topic.bound_port) == "integer" then
        io.stderr:write(("echo: listening on port %d\n"):format(role.topic.bound_port))
      end
    end,
    on_absence = function(_, _, reason)
      if reason then error("echo: " .. tostring(reason), 0) end
    end,
  }))

-- market.tcp: the TCP driver (DESIGN §3; the user's view is docs/tcp.md).
--
-- Written against ground events only (market.ground.readable / writable /
-- alarm subscriptions), never libev, so it runs unchanged in a nested VM
-- with an event relay.  The system calls are market.sys (drivers/lsys.c):
-- non-blocking, errors as values.
--
-- Processes:
--   the driver        observes who observes listeners (interest "everything")
--                     and who subscribes to outbound flows; spawns the rest.
--   a listener        one per listened port: accepts, spawns a manager per
--                     connection, publishes tcp.listening(port, bound_port).
--   a manager         one per connection: publishes the inbound flow,
--                     subscribes to the outbound flow, owns the socket.  A
--                     native process (drivers/tcpconn.c), spawned through
--                     sys.tcp_accept and sys.tcp_manage.
local market, sys = ...
local M = {}

local _ = market._
local repr, P = market.repr, market.perform
local mtype, floor = math.type, math.floor
local readable, alarm = market.ground.readable, market.ground.alarm

local channel = market.record("tcp-channel", "source", "destination", "subpacket")
local address = market.record("tcp-address", "host", "port")
local handle = market.record("tcp-handle", "id")
local listener = market.record("tcp-listener", "port")
-- Published by a listener while it listens (bound_port: the kernel's port
-- when port is 0); its absence's reason says why listening failed.
local listening = market.record("tcp-listening", "port", "bound_port")
-- Published by a manager while the flow channel(source, destination, _) has
-- more queued output than the high-water mark: senders should pause.
local backpressure = market.record("tcp-backpressure", "source", "destination")
M.channel, M.address, M.handle, M.listener = channel, address, handle, listener
M.listening, M.backpressure = listening, backpressure

-- Internal messages between the driver's processes.
local stop_listener = market.record("tcp-driver:stop-listener", "port")
local listener_closed = market.record("tcp-driver:listener-closed", "port")

-- Tunables, read when a connection starts.
M.HIGH_WATER = 1 << 20      -- bytes queued for output before backpressure is published
M.LOW_WATER = nil           -- withdrawn again at or below this (default HIGH_WATER // 2)
M.HARD_LIMIT = nil          -- bytes a sender may add while backpressure is published
                            -- before the connection fails (default 8 * HIGH_WATER)
M.READ_SIZE = 65536         -- largest chunk read at once
M.LINGER_MS = 30000         -- how long a closing connection may take to flush
M.BACKLOG = 4096            -- the listen queue (the kernel caps it at net.core.somaxconn)
-- For tests and monitoring (M.stats, below): the largest output queue any
-- connection had, how often backpressure was published, how many senders
-- overran the hard limit.

-- Through Lua's warn(): the host decides where warnings go (market.h's
-- mk_host_on_warning; `market` prints them, plain lua5.4 only with -W).
local lua_warn = warn
local function warn(fmt, ...)
  lua_warn("market.tcp: ", fmt:format(...))
end

local function is_wild(v) return v == _ end

-- ---- a connection's manager ------------------------------------------------

-- The managers are native processes (drivers/tcpconn.c): they carry every
-- byte, so they are C.  They speak the protocol of docs/tcp.md by
-- themselves; here is only what they start with: the tunables as they are
-- when the connection starts, and the counters they share.
M.stats = sys.tcp_stats()

local function config()
  local high = M.HIGH_WATER
  return high, M.LOW_WATER or high // 2, M.HARD_LIMIT or 8 * high, M.READ_SIZE,
    M.LINGER_MS, M.stats
end

-- ---- a listener ------------------------------------------------------------

local function listener_proc(port)
  return function()
    local s, err = sys.tcp_listen(port, M.BACKLOG)
    if not s then
      local reason = ("cannot listen on port %s: %s"):format(tostring(port), err)
      local told = false
      P(market.publisher(listening(port, nil), {
        name = "status", on_presence = function() told = true end }))
      -- Whoever watches tcp.listening(port, _) hears why; nobody else would.
      P(market.yield(function()
        if not told then warn("%s", reason) end
        P(market.quit(nil, reason))
      end))
      return
    end
    local fd, loc = s:fd(), listener(port)
    local on_accept

    local function close()
      P(market.delete_endpoint("accept"))
      s:close()
      P(market.send(listener_closed(port)), market.quit())
    end

    function on_accept()
      -- A manager per connection, spawned by this process (at most 64 per
      -- turn: the others' events are not held up by a burst of connects).
      local n, err = sys.tcp_accept(s, loc, port, 64, config())
      if n then return end
      -- Out of descriptors, say: back off instead of spinning.
      warn("accept on port %d: %s", port, err)
      P(market.delete_endpoint("accept"),
        market.subscriber(alarm(floor(market.now()) + 100), {
          name = "backoff",
          on_message = function()
            P(market.delete_endpoint("backoff"),
              market.subscriber(readable(fd), { name = "accept", on_message = on_accept }))
          end }))
    end

    P(market.publisher(listening(port, s:local_port()), "status"),
      market.subscriber(stop_listener(port), { name = "stop", on_message = close }),
      -- A graceful stop (docs/semantics.md): no new connections from now on.
      market.subscriber(market.ground.stopping(_), { name = "stopping", on_presence = close }),
      market.subscriber(readable(fd), { name = "accept", on_message = on_accept }))
  end
end

-- ---- the driver ------------------------------------------------------------

-- The driver's boot function: run it with market.spawn(tcp.driver).
function M.driver()
  local listeners = {}      -- port -> observers
  -- Outbound, per (address, handle): subs = the users' subscriptions seen,
  -- manager = nil | "spawned" | "alive".  A manager is spawned when a first
  -- subscription appears and none is alive, so a process may withdraw its
  -- subscription and subscribe again (to stop reading for a while) without
  -- a second connection being made.
  local outbound = {}

  local function listen_port(role)
    if role.interest == "participant" then return nil end   -- sessions, not observers
    local port = role.topic.destination.port
    if mtype(port) ~= "integer" then return nil end
    return port
  end

  local function out_entry(role, create)
    local t = role.topic
    local a, h = t.source, t.destination
    if is_wild(a.host) or is_wild(a.port) or is_wild(h.id) then return nil end
    local key = repr(a) .. " " .. repr(h)
    local e = outbound[key]
    if not e and create then
      e = { key = key, subs = 0, manager = nil }
      outbound[key] = e
    end
    return e, a, h
  end

  local function forget(e)
    if e.subs == 0 and not e.manager then outbound[e.key] = nil end
  end

  return market.transition(nil,
    market.observe_subscribers_everything(channel(_, listener(_), _), {
      name = "listen",
      on_presence = function(_, role)
        local port = listen_port(role)
        if not port then return end
        local n = (listeners[port] or 0) + 1
        listeners[port] = n
        if n == 1 then
          P(market.spawn(listener_proc(port), { name = "tcp-listener " .. port }))
        end
      end,
      on_absence = function(_, role)
        local port = listen_port(role)
        if not port or not listeners[port] then return end
        local n = listeners[port] - 1
        listeners[port] = n > 0 and n or nil
        if n == 0 then P(market.send(stop_listener(port))) end
      end,
    }),
    -- Users asking for outbound connections: their inbound-flow subscriptions.
    market.observe_subscribers(channel(address(_, _), handle(_), _), {
      name = "connect",
      on_presence = function(_, role)
        local e, a, h = out_entry(role, true)
        if not e then return end
        e.subs = e.subs + 1
        if not e.manager then
          e.manager = "spawned"
          sys.tcp_manage(a, h, "tcp " .. repr(h) .. " -> " .. repr(a), config())
        end
      end,
      on_absence = function(_, role)
        local e = out_entry(role, false)
        if not e then return end
        e.subs = e.subs - 1
        forget(e)
      end,
    }),
    -- Outbound managers themselves: their inbound-flow publishers.
    market.observe_publishers(channel(address(_, _), handle(_), _), {
      name = "managers",
      on_presence = function(_, role)
        local e = out_entry(role, true)
        if e then e.manager = "alive" end
      end,
      on_absence = function(_, role)
        local e = out_entry(role, false)
        if not e then return end
        e.manager = nil
        forget(e)
      end,
    }))
end

return M

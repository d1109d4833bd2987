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
--                     subscribes to the outbound flow, owns the socket.
local market, sys = ...
local M = {}

local _, EOF = market._, market.EOF
local repr, P = market.repr, market.perform
local mtype, floor = math.type, math.floor
local readable, writable, alarm = market.ground.readable, market.ground.writable,
  market.ground.alarm

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
M.BACKLOG = 128
-- For tests and monitoring: the largest output queue any connection had.
M.stats = { max_queued = 0, pauses = 0, overflows = 0 }

-- Through Lua's warn(): the host decides where warnings go (market.h's
-- mk_host_on_warning; `market` prints them, plain lua5.4 only with -W).
local lua_warn = warn
local function warn(fmt, ...)
  lua_warn("market.tcp: ", fmt:format(...))
end

local function is_wild(v) return v == _ end

-- ---- a connection's manager ------------------------------------------------

-- c = { remote = tcp.address, loc = tcp.handle | tcp.listener,
--       sock = an accepted socket (inbound) | nil (outbound: connect),
--       lport = the listener's port (inbound) }
local function manager(c)
  return function()
    local remote, loc = c.remote, c.loc
    local high = M.HIGH_WATER
    local low = M.LOW_WATER or high // 2
    local hard = M.HARD_LIMIT or 8 * high
    local readsize = M.READ_SIZE
    local sock, fd = c.sock, c.sock and c.sock:fd()
    local connected = sock ~= nil
    local resolver, addrs, ai, lasterr
    local readers, senders, seen = 0, 0, false
    local q, qh, qt, qbytes, off = {}, 1, 0, 0, 1     -- output queue: strings, EOF
    local overrun = 0                                 -- bytes queued while paused
    local paused, eof_in, eof_out, closing = false, false, false, false
    local watching = {}                               -- ground-event endpoints held
    local warned = false

    local function watch(name, topic, fn)
      if watching[name] then return end
      watching[name] = true
      P(market.subscriber(topic, { name = name, on_message = fn }))
    end
    local function unwatch(name)
      if not watching[name] then return end
      watching[name] = nil
      P(market.delete_endpoint(name))
    end

    -- Stop watching, then close (never the other way round: the fd number
    -- may be reused at once), then quit with reason.
    local function finish(reason)
      for name in pairs(watching) do P(market.delete_endpoint(name)) end
      watching = {}
      if resolver then resolver:close(); resolver = nil end
      if sock then sock:close(); sock = nil end
      P(market.quit(nil, reason))
    end

    local on_readable, flush

    local function update_reading()
      if connected and not eof_in and not closing and readers > 0 then
        watch("rd", readable(fd), on_readable)
      else
        unwatch("rd")
      end
    end

    function on_readable()
      local data, err = sock:read(readsize)
      if data then
        P(market.send(channel(remote, loc, data)))
      elseif data == nil then
        if err ~= "eof" then return finish(err) end
        eof_in = true
        update_reading()
        P(market.send(channel(remote, loc, EOF)))
      end
    end

    -- After the queue changed: backpressure, the writable watch, closing.
    local function update_flow()
      if qbytes > M.stats.max_queued then M.stats.max_queued = qbytes end
      if overrun > hard then
        M.stats.overflows = M.stats.overflows + 1
        return finish(("%d bytes sent despite backpressure: the peer is not reading"):format(overrun))
      end
      if not paused and qbytes > high then
        paused = true
        M.stats.pauses = M.stats.pauses + 1
        P(market.publisher(backpressure(loc, remote), "bp"))
      elseif paused and qbytes <= low then
        paused, overrun = false, 0
        P(market.delete_endpoint("bp"))
      end
      if not connected then return end
      if qh <= qt then
        watch("wr", writable(fd), flush)
      else
        unwatch("wr")
        if closing then return finish(nil) end
      end
    end

    function flush()
      while qh <= qt do
        local item = q[qh]
        if item == EOF then
          q[qh], qh = nil, qh + 1
          local ok, err = sock:shutdown()
          if not ok then return finish(err) end
        else
          local n, err = sock:write(item, off)
          if not n then return finish(err) end
          qbytes = qbytes - n
          off = off + n
          if off <= #item then break end     -- the socket is full
          q[qh], qh, off = nil, qh + 1, 1
        end
      end
      update_flow()
    end

    local function on_out(_, m)
      local d = m.subpacket
      if eof_out or closing then return end
      if d == EOF then
        eof_out = true
      elseif type(d) ~= "string" then
        if not warned then
          warned = true
          warn("%s: ignoring a non-string subpacket %s", repr(remote), repr(d))
        end
        return
      elseif #d == 0 then
        return
      else
        qbytes = qbytes + #d
        if paused then overrun = overrun + #d end
      end
      qt = qt + 1
      q[qt] = d
      -- Write at once unless already waiting for the socket to drain.
      if connected and not watching.wr then flush() else update_flow() end
    end

    -- Peers: readers subscribe to the inbound flow, senders publish the
    -- outbound one.  When the last of them goes, flush and close.
    local function peers_changed()
      update_reading()
      if not seen or readers + senders > 0 or closing then return end
      closing = true
      update_reading()
      if not connected or qh > qt then return finish(nil) end
      watch("linger", alarm(floor(market.now()) + M.LINGER_MS), function()
        finish("closed with unsent output after " .. M.LINGER_MS .. " ms")
      end)
    end

    local function on_connected()
      connected = true
      unwatch("conn")
      update_reading()
      flush()
    end

    local function try_next()
      while true do
        ai = ai + 1
        local a = addrs[ai]
        if not a then return finish(lasterr or "no address") end
        local s, how = sys.tcp_connect(a.sa)
        if s then
          sock, fd = s, s:fd()
          if how == "connected" then return on_connected() end
          return watch("conn", writable(fd), function()
            local err = sock:so_error()
            if not err then return on_connected() end
            lasterr = err
            unwatch("conn")
            sock:close()
            sock = nil
            try_next()
          end)
        end
        lasterr = how
      end
    end

    local function connect()
      local host, port = remote.host, remote.port
      if type(host) ~= "string" or mtype(port) ~= "integer" or port < 1 or port > 65535 then
        return finish("bad address " .. repr(remote) .. ": want tcp.address(host, port 1..65535)")
      end
      local r, err = sys.resolve(host, port, "tcp")
      if type(r) == "table" then
        addrs, ai = r, 0
        return try_next()
      elseif not r then
        return finish(("cannot resolve %s: %s"):format(host, err))
      end
      resolver = r
      watch("resolve", readable(r:fd()), function()
        local res, rerr = resolver:result()
        if res == false then return end          -- not yet
        unwatch("resolve")
        resolver:close()
        resolver = nil
        if not res then return finish(("unknown host %s (%s)"):format(host, rerr)) end
        addrs, ai = res, 0
        try_next()
      end)
    end

    P(market.publisher(channel(remote, loc, _), {
        name = "in",
        on_presence = function() readers, seen = readers + 1, true; peers_changed() end,
        on_absence = function() readers = readers - 1; peers_changed() end,
      }),
      market.subscriber(channel(loc, remote, _), {
        name = "out",
        on_message = on_out,
        on_presence = function() senders, seen = senders + 1, true; peers_changed() end,
        on_absence = function() senders = senders - 1; peers_changed() end,
      }))

    if c.lport then
      -- Inbound: the observer spawns a session when it sees us.  If the
      -- listener closes before anyone took this connection, close it.
      P(market.subscriber(listener_closed(c.lport), {
        name = "listener",
        on_message = function() if not seen then finish(nil) end end,
      }))
    else
      -- Outbound: the process that asked is here already; if it went away
      -- meanwhile, there is nobody to connect for.
      P(market.yield(function() if not seen then finish(nil) end end))
      connect()
    end
  end
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
      for _ = 1, 64 do
        local cs, host, rport = s:accept()
        if cs then
          P(market.spawn(manager { sock = cs, remote = address(host, rport), loc = loc, lport = port },
                         { name = ("tcp %s:%d"):format(host, rport) }))
        elseif cs == false then
          return
        else
          -- Out of descriptors, say: back off instead of spinning.
          warn("accept on port %d: %s", port, host)
          P(market.delete_endpoint("accept"),
            market.subscriber(alarm(floor(market.now()) + 100), {
              name = "backoff",
              on_message = function()
                P(market.delete_endpoint("backoff"),
                  market.subscriber(readable(fd), { name = "accept", on_message = on_accept }))
              end }))
          return
        end
      end
    end

    P(market.publisher(listening(port, s:local_port()), "status"),
      market.subscriber(stop_listener(port), { name = "stop", on_message = close }),
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
          P(market.spawn(manager { remote = a, loc = h },
                         { name = "tcp " .. repr(h) .. " -> " .. repr(a) }))
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

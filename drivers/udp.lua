-- market.udp: the UDP driver (DESIGN §3; the user's view is docs/udp.md).
--
-- Subscribing to udp.packet(_, local, _), where local is udp.handle(id) or
-- udp.listener(port), makes the driver bind a socket for local (handle: any
-- free port; listener: that port) and keep it while such subscribers
-- remain.  The socket's process publishes udp.packet(udp.remote_address(_,
-- _), local, _) (its presence means "bound"; an absence with a reason
-- means the bind failed) and udp.bound(local, port), and subscribes to
-- udp.packet(local, udp.remote_address(_, _), _): each such message is sent
-- as one datagram.  Written against ground events only, like market.tcp.
local market, sys = ...
local M = {}

local _ = market._
local repr, P = market.repr, market.perform
local mtype = math.type
local readable, writable = market.ground.readable, market.ground.writable

local packet = market.record("udp-packet", "source", "destination", "body")
local remote_address = market.record("udp-remote-address", "host", "port")
local handle = market.record("udp-handle", "id")
local listener = market.record("udp-listener", "port")
local bound = market.record("udp-bound", "socket", "port")
M.packet, M.remote_address, M.handle, M.listener, M.bound =
  packet, remote_address, handle, listener, bound

local stop = market.record("udp-driver:stop", "socket")

M.MAX_QUEUED = 1 << 20     -- bytes waiting for a full socket buffer before dropping
                           -- (and, apart, bytes waiting for names to resolve)
M.MAX_RESOLVING = 64       -- names a socket resolves at once (a thread each)
local SLOT = 16            -- bytes a held datagram costs beside its own
local SHOWN = 200          -- bytes of a term a warning shows (as MK_REPR_SHOWN)
M.CACHE_MS = 60000         -- how long a resolved host name is remembered
-- Listeners share their port with other processes' (SO_REUSEPORT), which the
-- kernel spreads datagrams over: on by default in the workers of `market
-- --workers N` (docs/workers.md).
M.REUSEPORT = market.worker.count > 1
M.stats = { received = 0, sent = 0, dropped = 0 }

-- Through market.log (docs/inspect.md, "Logging"): stderr unless a sink
-- is set; one place warning again and again is rate-limited.
local function warn(fmt, ...)
  market.log.warn("market.udp: " .. fmt, ...)
end

-- entry: the driver's record of this socket ({n = its subscribers, up =,
-- forget = a function}), which the socket reads when told to stop.
local function socket_proc(loc, driver, entry)
  return function()
    local port = listener:is(loc) and loc.port or 0
    local in_topic = packet(remote_address(_, _), loc, _)
    local s, err
    if mtype(port) ~= "integer" then
      err = "the port must be an integer"
    else
      s, err = sys.udp_bind(port, port ~= 0 and M.REUSEPORT)
    end
    if not s then
      -- Presence, then absence with the reason, for the subscribers.
      P(market.publisher(in_topic, "in"),
        market.quit(nil, ("cannot bind udp port %s: %s"):format(repr(port, SHOWN), err)))
      return
    end
    sys.close_at_end(s)     -- when killed, too: as a tcp listener's (tcp.lua)
    local fd = s:fd()
    local q, qh, qt, qbytes = {}, 1, 0, 0       -- datagrams waiting: {data, sa}
    local cache, ncache = {}, 0                 -- "host port" -> {sa, expires}
    local resolving = {}                        -- key -> {req, datagrams...}
    local nres, nresolving, pbytes = 0, 0, 0    -- pbytes: held in `resolving`
    local watching = {}
    local warned = {}
    local close

    -- A watch the ground ends with a reason (the descriptor closed behind
    -- market's back, an error from libev; in a nested VM, its event relay
    -- gone) hears nothing more: the socket ends with that reason, so that
    -- its subscribers are told, rather than staying up deaf.
    local function lost(_, _, reason, _, deleted)
      if reason ~= nil and not deleted then return close(reason) end
    end

    local function watch(name, topic, fn)
      if watching[name] then return end
      watching[name] = true
      P(market.subscriber(topic, { name = name, on_message = fn, on_absence = lost }))
    end
    local function unwatch(name)
      if not watching[name] then return end
      watching[name] = nil
      P(market.delete_endpoint(name))
    end

    -- One warning per reason; a term shown after it (what) does not make
    -- a new reason, or every bad body would be remembered here (and every
    -- host name that fails: a name goes in `what`, never in `why`).  The
    -- socket and the reason are in the line's format, which is its place
    -- for the log's rate limit (docs/inspect.md): with one format for all,
    -- the sixth reason in ten seconds, on any socket, was suppressed, and
    -- never said since it counted as warned.
    local function drop(why, what)
      M.stats.dropped = M.stats.dropped + 1
      if not warned[why] then
        warned[why] = true
        local place = (repr(loc, SHOWN) .. ": dropping a datagram: " .. why):gsub("%%", "%%%%")
        warn(place .. "%s", what ~= nil and " " .. repr(what, SHOWN) or "")
      end
    end

    -- Each datagram queued counts with its slot, as for names: empty ones
    -- must fill the queue too.
    local flush
    local function transmit(data, sa)
      if qh <= qt then                          -- keep the order
        if qbytes + #data + SLOT > M.MAX_QUEUED then return drop("send queue full") end
        qt = qt + 1
        q[qt] = { data, sa }
        qbytes = qbytes + #data + SLOT
        return
      end
      local n, serr = s:sendto(data, sa)
      if n then
        M.stats.sent = M.stats.sent + 1
      elseif n == false then
        qt = qt + 1
        q[qt] = { data, sa }
        qbytes = qbytes + #data + SLOT
        watch("wr", writable(fd), flush)
      else
        drop(serr)
      end
    end

    function flush()
      while qh <= qt do
        local d = q[qh]
        local n, serr = s:sendto(d[1], d[2])
        if n == false then return end
        if n then M.stats.sent = M.stats.sent + 1 else drop(serr) end
        q[qh], qh = nil, qh + 1
        qbytes = qbytes - #d[1] - SLOT
      end
      unwatch("wr")
    end

    local function remember(key, sa, numeric)
      if ncache >= 1024 then cache, ncache = {}, 0 end
      ncache = ncache + 1
      cache[key] = { sa, numeric and math.huge or market.monotonic() + M.CACHE_MS }
    end

    local function on_out(_, m)
      -- A message arrives as sent, not refined to the topic: a wildcard
      -- (the whole message, or its destination) unifies with it and has
      -- no fields to read.
      if not packet:is(m) then return drop("not a udp.packet:", m) end
      local data, dst = m.body, m.destination
      if type(data) ~= "string" then return drop("the body is not a string:", data) end
      local host, rport
      if remote_address:is(dst) then host, rport = dst.host, dst.port end
      if type(host) ~= "string" or mtype(rport) ~= "integer" then
        return drop("bad destination", dst)
      end
      -- (The kernel's word for port 0 is "invalid argument".)
      if rport < 1 or rport > 65535 then return drop("destination port not 1 to 65535:", dst) end
      local key = host .. " " .. rport
      local hit = cache[key]
      if hit and hit[2] > market.monotonic() then return transmit(data, hit[1]) end
      -- What waits for a name is held within the send queue's bound
      -- (all names together, pbytes, each datagram counted with its slot,
      -- so that empty ones count too): a resolver that never answers must
      -- not make the socket grow without end.
      local full = pbytes + #data + SLOT > M.MAX_QUEUED
      local pend = resolving[key]
      if pend then
        if full then return drop("send queue full") end
        pend[#pend + 1] = data
        pbytes = pbytes + #data + SLOT
        return
      end
      local r, rerr = sys.resolve(host, rport, "udp", true)
      if r == false then                        -- a name: a lookup, if there is room
        if full then return drop("send queue full") end
        if nresolving >= M.MAX_RESOLVING then return drop("too many names being resolved") end
        r, rerr = sys.resolve(host, rport, "udp")
        -- Its pipe closes as the socket does, when the driver is killed.
        if r then sys.close_at_end(r) end
      end
      if type(r) == "table" then
        remember(key, r[1].sa, true)
        return transmit(data, r[1].sa)
      elseif not r then
        return drop(("cannot resolve (%s):"):format(rerr), dst)
      end
      nresolving = nresolving + 1
      nres = nres + 1
      local name = "resolve#" .. nres
      pend = { r, data }
      pbytes = pbytes + #data + SLOT
      resolving[key] = pend
      watch(name, readable(r:fd()), function()
        local res, e = r:result()
        if res == false then return end
        unwatch(name)
        r:close()
        resolving[key] = nil
        nresolving = nresolving - 1
        for i = 2, #pend do pbytes = pbytes - #pend[i] - SLOT end
        if not res then
          for i = 2, #pend do drop(("unknown host (%s):"):format(e), host) end
          return
        end
        remember(key, res[1].sa, false)
        for i = 2, #pend do transmit(pend[i], res[1].sa) end
      end)
    end

    local function on_readable()
      for _ = 1, 64 do
        local data, host, rport = s:recvfrom()
        if not data then return end             -- false: nothing more; nil: an error, try later
        M.stats.received = M.stats.received + 1
        P(market.send(packet(remote_address(host, rport), loc, data)))
      end
    end

    function close(reason)
      for name in pairs(watching) do P(market.delete_endpoint(name)) end
      watching = {}
      -- What it still holds is dropped, and counted as every datagram
      -- the driver cannot send.
      for _ = qh, qt do drop("the socket closed") end
      for _, pend in pairs(resolving) do
        pend[1]:close()
        for _ = 2, #pend do drop("the socket closed") end
      end
      s:close()
      P(market.quit(nil, reason))
    end

    P(market.publisher(in_topic, "in"),
      market.publisher(bound(loc, s:local_port()), "bound"),
      market.subscriber(packet(loc, remote_address(_, _), _), { name = "out", on_message = on_out }),
      -- The driver sends stop when the last subscriber went; one may have
      -- come since (a socket closed and opened again at once).  The
      -- socket goes only if none has once everything queued has run (the
      -- driver's count then has it), and it goes in that turn, so that a
      -- subscriber coming later sees no socket about to close, and the
      -- driver binds a new one for it (the port free at once).
      -- (Not the wildcard message, send(market._), which reaches every
      -- subscriber: it closed every socket.)
      market.subscriber(stop(loc), { name = "stop", on_message = function(_, m)
        if not stop:is(m) then return end
        P(market.yield(function()
          if entry.up and entry.n == 0 then
            entry.forget()
            close()
          end
        end))
      end }),
      -- It goes with the driver that spawned it, as a tcp listener does
      -- (tcp.lua): a driver started again binds the port in its place.
      market.observe_publishers(market.lifeline(driver), { name = "driver",
        on_absence = function(_, _, reason)
          close(("the udp driver ended: %s"):format(repr(reason, SHOWN)))
        end }))
    watch("rd", readable(fd), on_readable)
  end
end

-- True when the wildcard occurs in v, at any depth: v is a pattern (an
-- observer's udp.handle({"conn", _})), not a socket's name, and gets no
-- socket of its own.
local holds_wild = sys.holds_wild

-- The driver's boot function: run it with market.spawn(udp.driver).
function M.driver()
  -- repr(local) -> {n = subscribers, up = its socket's process runs,
  -- forget}: one socket process at a time for a local, so a new one is
  -- spawned only once the old one has gone (its port free), and the old
  -- one is not mistaken for it.
  local sockets = {}

  local function key_of(role)
    local loc = role.topic.destination
    if holds_wild(loc) then return nil end
    return repr(loc), loc
  end

  local function spawn(key, loc)
    local e = { n = 1, up = true }
    e.forget = function()
      e.up = false
      if sockets[key] == e then sockets[key] = nil end
    end
    sockets[key] = e
    local pid = P(market.spawn(socket_proc(loc, market.self(), e), { name = "udp " .. key }))
    -- However it ends (a failed bind, killed), the next subscriber after
    -- the last of these gets a new one.
    P(market.monitor(pid, function()
      e.up = false
      if e.n == 0 then e.forget() end
    end, "socket " .. pid))
  end

  local handlers = {
    on_presence = function(_, role)
      local key, loc = key_of(role)
      if not key then return end
      local e = sockets[key]
      if not e then return spawn(key, loc) end
      e.n = e.n + 1
    end,
    on_absence = function(_, role)
      local key, loc = key_of(role)
      local e = key and sockets[key]
      if not e then return end
      e.n = e.n - 1
      if e.n > 0 then return end
      if e.up then P(market.send(stop(loc))) else e.forget() end
    end,
  }
  return market.transition(nil,
    market.observe_subscribers(packet(_, handle(_), _),
      { name = "handles", on_presence = handlers.on_presence, on_absence = handlers.on_absence }),
    market.observe_subscribers(packet(_, listener(_), _),
      { name = "listeners", on_presence = handlers.on_presence, on_absence = handlers.on_absence }))
end

-- ---- sockets for straight-line code: udp.open ----------------------------------
--
-- A socket as an object, as luasocket gives one: sock:receivefrom() waits
-- for the next datagram, sock:sendto(data, host, port) sends one.  Its
-- endpoints have handlers (as tcp.connect's, drivers/tcp.lua): datagrams
-- that come while the code waits for something else are kept in the
-- object, at most MAX_QUEUED bytes of them (each counted with SLOT more);
-- past that they are dropped and counted, as UDP may.

local Sock = { __name = "udp.socket" }
Sock.__index = Sock
local OPEN = {}          -- a socket's `closed` until it closes (then the reason; false: none)
local getmt = debug.getmetatable    -- (as tcp.lua's owned: no __metatable to look for)
local is_packet, is_remote = packet.is, remote_address.is   -- (no lookup through __index)
local open_id = market.record("udp-open", "serial")
local serial = 0

function Sock.__tostring(k) return ("udp.socket %s (port %s)"):format(repr(k.here), tostring(k.port)) end

-- Raises unless k is a socket of the running process.
local function mine(k, what)
  if getmt(k) ~= Sock then
    error(("udp.socket:%s: not a socket (call it as sock:%s(...))"):format(what, what), 3)
  end
  if k.ctx ~= nil and sys.owner() == k.ctx then return end   -- (the common case: tcp.lua's owned)
  local ok, pid, _name, path = pcall(market.self)
  if not ok then error(("udp.socket:%s: not inside a market process"):format(what), 3) end
  if pid ~= k.owner or path ~= k.path then
    error(("udp.socket:%s: the socket belongs to process %d of %s, not to this one " ..
           "(its datagrams go to that process)"):format(what, k.owner, k.path), 3)
  end
end

-- sock = udp.open([port]): a socket on port (an integer, or a
-- udp.listener or udp.handle; none or 0: a port the kernel picks, for
-- this socket alone), once bound; nil, reason when it cannot be bound.
-- sock.port: the port bound.
function M.open(port)
  local here
  if port == nil or port == 0 then
    -- A handle of its own, as tcp.serve(0) has: as udp.listener(0), two
    -- would share one socket, each hearing the other's datagrams.
    serial = serial + 1
    here = handle(open_id(serial))
  elseif listener:is(port) or handle:is(port) then
    here = port
  else
    here = listener(port)
  end
  if holds_wild(here) then
    error(("udp.open: %s is a pattern (it holds the wildcard), which binds no socket")
          :format(repr(here, SHOWN)), 2)
  end
  local ok, pid, _name, path = pcall(market.self)
  if not ok then error("udp.open: not inside a market process", 2) end
  serial = serial + 1
  local tag = "udp#" .. serial
  -- (Every field a method reads is there from the start, as tcp.lua's
  -- connection objects have theirs.)  live: the socket processes whose
  -- presence it has; opened: udp.open has returned it.
  local k = setmetatable({ here = here, owner = pid, path = path, ctx = sys.owner(), tag = tag,
                           q = {}, qfirst = 1, qlast = 0, held = 0, closed = OPEN, done = false,
                           live = 0, opened = false, warned = false }, Sock)
  -- receivefrom's wait, made once (as tcp.lua's `arrived`).
  k.arrived = function() return k.qfirst <= k.qlast or k.closed ~= OPEN end
  P(market.subscriber(bound(here, _), {
      name = tag .. " bound",
      on_presence = function(_, role) if not k.opened then k.port = role.topic.port end end,
      on_absence = function() if not k.opened then k.port = nil end end }),
    market.subscriber(packet(_, here, _), {
      name = tag .. " in",
      on_presence = function() k.live = k.live + 1 end,
      on_message = function(_, m)
        if not is_packet(packet, m) then return end   -- send(market._): no datagram
        local body, src = m.body, m.source
        if type(body) ~= "string" or not is_remote(remote_address, src) then return end
        if k.held + #body + SLOT > M.MAX_QUEUED then
          M.stats.dropped = M.stats.dropped + 1
          if not k.warned then
            k.warned = true
            warn("%s: dropping a datagram: more than udp.MAX_QUEUED bytes not yet received",
                 repr(here, SHOWN))
          end
          return
        end
        k.held = k.held + #body + SLOT
        k.qlast = k.qlast + 1
        k.q[k.qlast] = m
      end,
      on_absence = function(_, _, reason)
        k.live = k.live - 1
        if k.closed ~= OPEN then return end
        -- Without a reason, while opening: a socket that was closing as
        -- this one came (its last subscriber had just gone); the driver
        -- binds a new one (docs/udp.md).
        if reason then k.closed = reason elseif k.opened and k.live == 0 then k.closed = false end
      end }))
  local function settled() return (k.live > 0 and k.port ~= nil) or k.closed ~= OPEN end
  repeat
    market.wait_until(settled)
    -- A socket whose presence came may be one about to close: it closes
    -- in a continuation queued before this subscription reached the
    -- driver (the socket's stop handler, above).  After one pause that has
    -- run, after a second its absence has come.
    if k.closed == OPEN then
      market.pause()
      market.pause()
    end
  until settled()
  if k.closed ~= OPEN then
    local why = k.closed or "closed"
    k:close()
    return nil, why
  end
  k.opened = true
  return k
end

-- data, host, port = sock:receivefrom([ms]): the next datagram and its
-- sender; nil, "timeout" when none came within ms; nil, reason when the
-- socket can hear no more (closed: "closed").
function Sock:receivefrom(ms)
  mine(self, "receivefrom")
  -- (checked here, at the caller's line: wait_until's error named this file)
  if ms ~= nil and not (type(ms) == "number" and ms >= 0) then
    error(("udp.socket:receivefrom: the timeout must be a number of milliseconds >= 0 (or nil: " ..
           "none), got %s"):format(mtype(ms) and tostring(ms) or type(ms)), 2)
  end
  if self.qfirst > self.qlast and self.closed == OPEN then
    local ok, err = market.wait_until(self.arrived, ms)
    if not ok then return nil, err end
  end
  if self.qfirst <= self.qlast then
    local m = self.q[self.qfirst]
    self.q[self.qfirst] = nil
    self.qfirst = self.qfirst + 1
    self.held = self.held - #m.body - SLOT
    return m.body, m.source.host, m.source.port
  end
  return nil, self.closed or "closed"
end

-- ok = sock:sendto(data, host, port): true once the datagram is on its
-- way (UDP promises no more: one that cannot go is dropped and counted,
-- docs/udp.md); nil, reason when the socket is closed.
function Sock:sendto(data, host, port)
  mine(self, "sendto")
  if type(data) ~= "string" then
    error("udp.socket:sendto: data must be a string, got " .. type(data), 2)
  end
  if type(host) ~= "string" or mtype(port) ~= "integer" then
    error(("udp.socket:sendto: want a host (a string) and a port (an integer), got %s and %s")
          :format(type(host), mtype(port) or type(port)), 2)
  end
  if self.closed ~= OPEN then return nil, self.closed or "closed" end
  sys.send(packet, self.here, remote_address(host, port), data)   -- (as tcp.lua's send)
  return true
end

-- sock:close(): its endpoints go, and with the last subscriber the socket
-- closes.  Again: nothing.
function Sock:close()
  mine(self, "close")
  if self.done then return end
  self.done = true
  if self.closed == OPEN then self.closed = false end
  P(market.delete_endpoint(self.tag .. " in"), market.delete_endpoint(self.tag .. " bound"))
end

-- For market.snapshot (docs/inspect.md, "Snapshots"): the counters above.
function M.inspect()
  local s = M.stats
  return { received = s.received, sent = s.sent, dropped = s.dropped }
end

return M

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
--   a listener        one per listened port (or Unix socket path): accepts,
--                     spawns a manager per connection, publishes
--                     tcp.listening(port, bound_port).
--   a manager         one per connection: publishes the inbound flow,
--                     subscribes to the outbound flow (an outbound one once
--                     connected), owns the socket.  A native process
--                     (drivers/tcpconn.c), spawned through sys.tcp_accept
--                     and sys.tcp_manage.
local market, sys = ...
local M = {}

local _ = market._
local repr, P = market.repr, market.perform
-- A value an error names: a term as repr writes it, anything else by its
-- type (repr raises on a non-term, in place of the error meant).
local function show(v) return market.is_term(v) and repr(v) or type(v) end
local mtype, floor = math.type, math.floor
-- (debug's: getmetatable's look for a __metatable field is a third of an
-- owner check, and these objects' metatables have none.)
local getmt, owner = debug.getmetatable, sys.owner
local readable, alarm = market.ground.readable, market.ground.monotonic_alarm

local channel = market.record("tcp-channel", "source", "destination", "subpacket")
local is_channel = channel.is      -- (is_channel(channel, m): no lookup through the type's __index)
local address = market.record("tcp-address", "host", "port")
local handle = market.record("tcp-handle", "id")
local listener = market.record("tcp-listener", "port")
-- Published by a listener while it listens (bound_port: the kernel's port
-- when port is 0); its absence's reason says why listening failed.
local listening = market.record("tcp-listening", "port", "bound_port")
-- Published by a manager while the flow channel(source, destination, _) has
-- more queued output than the high-water mark: senders should pause.
local backpressure = market.record("tcp-backpressure", "source", "destination")
-- Settings for the connections between a local end and a remote one (the
-- wildcard: every connection of that local end), published by whoever sets
-- them (tcp.options, below); settings is a sequence of {key, value} pairs.
local options_rec = market.record("tcp-options", "local", "remote", "settings")
-- A TLS configuration (tcp.tls, below; drivers/tls.c): paths, flags and
-- the serial of the tcp.tls call that made it.
local tls_rec = market.record("tcp-tls", "cert", "key", "ca", "verify", "server_name", "serial",
                              "pin", "sni")
-- Sent by a listener for each connection it closed at once instead of
-- taking it (a connection cap, no descriptors left), with the reason.
local refused = market.record("tcp-refused", "listener", "remote", "reason")
-- Published by a TLS connection's manager once its handshake is over, for
-- as long as it lives: the certificate the peer gave (a tcp-certificate
-- record, drivers/tls.c), or false.
local peer_certificate = market.record("tcp-peer-certificate", "source", "destination",
                                       "certificate")
local certificate = market.record("tcp-certificate", "subject", "issuer", "names", "serial",
                                  "fingerprint", "not_before", "not_after", "pem")
M.channel, M.address, M.handle, M.listener = channel, address, handle, listener
M.listening, M.backpressure, M.refused = listening, backpressure, refused
M.peer_certificate, M.certificate = peer_certificate, certificate
M.options_record, M.tls_record = options_rec, tls_rec

-- Internal messages between the driver's processes.
local stop_listener = market.record("tcp-driver:stop-listener", "port")
local listener_closed = market.record("tcp-driver:listener-closed", "port")

-- Defaults, read when a connection starts; tcp.options overrides them per
-- local end or per connection (the keys in brackets).
M.FRAMING = "raw"           -- [framing] "raw" (chunks as read), "line", "u16", "u32"
M.MAX_FRAME = 65536         -- [max_frame] the longest line or frame taken
M.IDLE_TIMEOUT = 0          -- [idle_timeout] ms without a byte either way (0: none)
M.MAX_CONNECTIONS = 0       -- [max_connections] per listener, at once (0: no cap)
M.HIGH_WATER = 1 << 20      -- [high_water] bytes held for output before backpressure is published
M.LOW_WATER = nil           -- [low_water] withdrawn again at or below this (default HIGH_WATER // 2)
M.HARD_LIMIT = nil          -- [hard_limit] bytes a sender may add while backpressure is
                            -- published before the connection fails (default 8 * HIGH_WATER)
M.READ_SIZE = 65536         -- [read_size] largest chunk read at once
M.LINGER_MS = 30000         -- [linger] how long a closing connection may take to flush
M.CONNECT_TIMEOUT = 30000   -- [connect_timeout] ms an outbound connect may take (0: no limit)
M.BACKLOG = 4096            -- the listen queue (the kernel caps it at net.core.somaxconn)
-- [reuseport] listeners share their port with other processes' (SO_REUSEPORT):
-- on by default in the workers of `market --workers N` (docs/workers.md).
M.REUSEPORT = market.worker.count > 1
-- For tests and monitoring (M.stats, below): the largest output queue any
-- connection had, how often backpressure was published, how many senders
-- overran the hard limit, how many connections listeners refused, how
-- many idle connections were closed, the largest unfinished line or frame
-- buffer any connection had.

-- Through market.log (docs/inspect.md, "Logging"): stderr unless a sink
-- is set; one place warning again and again is rate-limited.
local function warn(fmt, ...)
  market.log.warn("market.tcp: " .. fmt, ...)
end

local function is_wild(v) return v == _ end

-- True when the wildcard occurs in v at any depth: a listener's port or
-- a connection's end so is a pattern (an observer's tcp.handle({"c", _})),
-- which gets no listener or connection of its own.
local holds_wild = sys.holds_wild

-- ---- settings ----------------------------------------------------------------

-- key -> {smallest, largest} (framing: the list of framings), as the
-- connection managers (drivers/tcpconn.c) take them: they are the one list.
local KEYS = sys.tcp_settings()
local FRAMINGS, framing_names = {}, {}
for i, f in ipairs(KEYS.framing) do FRAMINGS[f], framing_names[i] = true, repr(f) end
framing_names = table.concat(framing_names, ", ", 1, #framing_names - 1) .. " or " ..
  framing_names[#framing_names]

-- nil when v is a good value for setting k, else what is wrong.
local function bad_setting(k, v)
  local bounds = KEYS[k]
  if k == "framing" then
    if not FRAMINGS[v] then
      return ("framing must be %s, got %s"):format(framing_names, show(v))
    end
  elseif k == "tls" then
    if not (type(v) == "boolean" or tls_rec:is(v)) then
      return ("tls must be a configuration tcp.tls made, or a boolean, got %s"):format(show(v))
    end
  elseif k == "reuseport" or k == "reading" then
    if type(v) ~= "boolean" then return ("%s must be a boolean, got %s"):format(k, show(v)) end
  elseif bounds == nil then
    return ("unknown setting %s"):format(show(k))
  elseif mtype(v) ~= "integer" or v < bounds[1] or v > bounds[2] then
    return ("%s must be an integer from %d to %d, got %s"):format(k, bounds[1], bounds[2], show(v))
  end
end

-- Raises "fname: what is wrong" at the caller's caller's line unless
-- settings (nil: none) is a table of good settings.
local function check_settings(settings, fname)
  if settings == nil then return end
  if type(settings) ~= "table" then
    error(("%s: settings must be a table, got %s"):format(fname, type(settings)), 3)
  end
  for k, v in pairs(settings) do
    local why = type(k) ~= "string" and ("unknown setting " .. show(k)) or bad_setting(k, v)
    if why then error(fname .. ": " .. why, 3) end
  end
end

-- tcp.options(local, [remote,] settings [, handlers]): the action that
-- publishes settings for the connections of local end `local` (a
-- tcp.listener or a tcp.handle) with `remote` (default: the wildcard,
-- every one).  While it is published, connections starting and running
-- follow it; later publications win over earlier ones key by key, and
-- withdrawing it (delete_endpoint, quit) restores what was there before.
-- handlers: as for market.publisher (a name, to withdraw it by).  The
-- settings travel as {key, value} pairs sorted by key, so that equal
-- tables make equal topics.
function M.options(loc, ...)
  local remote, settings, handlers
  if type((...)) == "table" then
    remote, settings, handlers = _, ...
  else
    remote, settings, handlers = ...
  end
  if not (listener:is(loc) or handle:is(loc)) then
    error("tcp.options: the local end must be a tcp.listener or a tcp.handle, got " .. show(loc), 2)
  end
  if type(settings) ~= "table" then
    error("tcp.options: settings must be a table, got " .. type(settings), 2)
  end
  check_settings(settings, "tcp.options")
  local tls = settings.tls
  if tls == true then
    tls = M.TLS_CLIENT
  elseif tls and listener:is(loc) and not tls.cert then
    error("tcp.options: tls: a server needs a certificate (tcp.tls{cert = ..., key = ...})", 2)
  end
  local keys, seq = {}, {}
  for k in pairs(settings) do keys[#keys + 1] = k end
  table.sort(keys)
  for i, k in ipairs(keys) do seq[i] = { k, k == "tls" and tls or settings[k] } end
  if remote == nil then remote = _ end
  return market.publisher(options_rec(loc, remote, seq), handlers)
end

-- config = tcp.tls{cert =, key =, ca =, verify =, server_name =}: a TLS
-- configuration for the tls setting (docs/tcp.md, "TLS"), its files read
-- now (nil, why when they cannot be); or the same, made of the
-- system's CA certificates, with no argument.
local TLS_KEYS = { cert = "string", key = "string", ca = "string", verify = "boolean",
                   server_name = "string", pin = "pin", sni = "sni" }

-- sni: {[name] = configuration}, a server's other certificates by the
-- host a client names (a name, or "*.domain"): a sequence of {name,
-- configuration} pairs, sorted by name so that equal tables give equal
-- terms; nil and why when it is not one.
local function snis(v)
  if type(v) ~= "table" or next(v) == nil then return nil, "a table of names and configurations" end
  local out = {}
  for name, cfg in pairs(v) do
    if type(name) ~= "string" or not name:match("^[%w%*][%w%-%.]*$") or name:find("*", 2, true) then
      return nil, "a host name (or *.domain) as each key, got " .. show(name)
    end
    if not tls_rec:is(cfg) or not cfg.cert then
      return nil, ("a tcp.tls configuration with a certificate for %s, got %s"):format(name, show(cfg))
    end
    out[#out + 1] = { name:lower(), cfg }
  end
  table.sort(out, function(a, b) return a[1] < b[1] end)
  return out
end

-- pin: a SHA-256 fingerprint (64 hexadecimal digits, colons between the
-- bytes or not, as openssl x509 -fingerprint -sha256 prints it), or a
-- list of them: a sequence of lower-case ones, or nil when it is none.
local function pins(v)
  local list = type(v) == "table" and v or { v }
  local out = {}
  if type(v) ~= "string" and (type(v) ~= "table" or #v == 0) then return nil end
  for i, fp in ipairs(list) do
    if type(fp) ~= "string" then return nil end
    fp = fp:gsub(":", ""):lower()
    if #fp ~= 64 or fp:find("[^0-9a-f]") then return nil end
    out[i] = fp
  end
  return out
end

function M.tls(t)
  if t == nil then t = {} end
  if type(t) ~= "table" then error("tcp.tls: want a table of settings, got " .. type(t), 2) end
  local pin, sni = false, false
  for k, v in pairs(t) do
    local want = TLS_KEYS[k]
    if not want then error("tcp.tls: unknown setting " .. show(k), 2) end
    if want == "sni" then
      local why
      sni, why = snis(v)
      if not sni then error("tcp.tls: sni must be " .. why, 2) end
    elseif want == "pin" then
      pin = pins(v)
      if not pin then
        error("tcp.tls: pin must be a SHA-256 fingerprint (64 hexadecimal digits) or a list " ..
              "of them, got " .. show(v), 2)
      end
    elseif type(v) ~= want or (want == "string" and (v == "" or v:find("\0", 1, true))) then
      error(("tcp.tls: %s must be a %s%s, got %s"):format(k, want,
        want == "string" and " (not empty, no NUL)" or "", show(v)), 2)
    end
  end
  if t.key and not t.cert then error("tcp.tls: a key without its certificate (cert)", 2) end
  if sni and not t.cert then error("tcp.tls: sni is a server's: its own certificate (cert) too", 2) end
  local config = tls_rec(t.cert or false, t.key or false, t.ca or false, t.verify ~= false,
                         t.server_name or false, sys.tls_serial(), pin, sni)
  local ok, why = sys.tls_check(config)
  if not ok then return nil, why end
  return config
end
-- What tls = true stands for: a client's, verifying against the system's
-- CA certificates (serial 0: read at its first connection).
M.TLS_CLIENT = tls_rec(false, false, false, true, false, 0, false, false)

-- A settings sequence's value for key, the last one given, or nil.
local function setting(seq, key)
  local v
  if type(seq) == "table" then
    for _, kv in ipairs(seq) do
      if type(kv) == "table" and kv[1] == key then v = kv[2] end
    end
  end
  return v
end

-- ---- a connection's manager ------------------------------------------------

-- The managers are native processes (drivers/tcpconn.c): they carry every
-- byte, so they are C.  They speak the protocol of docs/tcp.md by
-- themselves; here is only what they start with: the tunables as they are
-- when the connection starts, and the counters they share.
M.stats = sys.tcp_stats()

-- The module's defaults as a settings sequence (low_water and hard_limit
-- left out while nil: they follow high_water).  A bad one is an error of
-- the process that starts a connection.
local FIELDS = {
  { "framing", "FRAMING" }, { "max_frame", "MAX_FRAME" }, { "idle_timeout", "IDLE_TIMEOUT" },
  { "high_water", "HIGH_WATER" }, { "low_water", "LOW_WATER" }, { "hard_limit", "HARD_LIMIT" },
  { "read_size", "READ_SIZE" }, { "linger", "LINGER_MS" },
  { "connect_timeout", "CONNECT_TIMEOUT" },
}
local function default(k, field)
  local v = M[field]
  local why = bad_setting(k, v)
  if why then error(("market.tcp: tcp.%s: %s"):format(field, why), 0) end
  return v
end
-- Checked and parsed once (sys.tcp_defaults), and again only when one of
-- the tunables changed: a listener asks at every accept.
local made, made_from = nil, {}
local function defaults()
  local same = made ~= nil
  for i = 1, #FIELDS do
    if M[FIELDS[i][2]] ~= made_from[i] then same = false; break end
  end
  if same then return made end
  local t = {}
  for _, f in ipairs(FIELDS) do
    if M[f[2]] ~= nil or (f[1] ~= "low_water" and f[1] ~= "hard_limit") then
      t[#t + 1] = { f[1], default(f[1], f[2]) }
    end
  end
  made = sys.tcp_defaults(t)
  for i, f in ipairs(FIELDS) do made_from[i] = M[f[2]] end
  return made
end

-- ---- a listener ------------------------------------------------------------

-- port: an integer (TCP, every address of the machine), a tcp.handle (as
-- 0, but a socket of this listener's alone, as tcp.serve(0) wants), a
-- tcp.address(host, port) (TCP on that one numeric address: "127.0.0.1",
-- "::1"; its port a tcp.handle: a port the kernel picks, for this
-- listener alone), or a string, the path of a Unix socket.
-- Anything else (a port of 1.5, NaN, a tcp.address(1, 2)) is reported as
-- a listener that cannot listen: never silent (docs/tcp.md).
local function listener_proc(port, driver)
  local unix = type(port) == "string"
  local on_host = address:is(port) and type(port.host) == "string" and
    (mtype(port.port) == "integer" or handle:is(port.port))
  local own = handle:is(port) and not is_wild(port.id)
  local bad = not (unix or on_host or own or mtype(port) == "integer")
  -- A port read from the command line and not made a number ("5999")
  -- would be a socket file of that name: a mistake far likelier than a
  -- path of digits, which "./5999" still gives.
  local digits = unix and port:find("^%d+$")
  -- A handle in the port field names the listener, not the port: bind 0.
  local number = on_host and (handle:is(port.port) and 0 or port.port)
  -- (A host with a NUL byte in it, or none, is shown quoted: the NUL would
  -- cut the text short.)
  local where = unix and repr(port) or on_host and ("%s port %d"):format(
      (port.host == "" or port.host:find("\0", 1, true)) and repr(port.host) or port.host, number)
    or "port " .. (mtype(port) == "integer" and port or repr(port))
  return function()
    local loc = listener(port)
    local s, err, stopped, close
    -- The option sets for every connection of this port (remote: the
    -- wildcard), in presence order: for max_connections, and reuseport.
    local sets = {}
    local function last(key, field)
      local v = M[field]
      for i = 1, #sets do
        local x = setting(sets[i].settings, key)
        if x ~= nil and not bad_setting(key, x) then v = x end
      end
      return v
    end
    -- reason: why it stops (nil: asked to).
    local function stop(reason)
      if s then close(reason) else stopped = { reason } end
    end
    P(market.observe_publishers(options_rec(loc, _, _), {
        name = "options",
        on_presence = function(_, role)
          if is_wild(role.topic.remote) then sets[#sets + 1] = role.topic end
        end,
        on_absence = function(_, role)
          for i = #sets, 1, -1 do
            if sets[i] == role.topic then table.remove(sets, i); return end
          end
        end }),
      -- (Not the wildcard message, send(market._), which reaches every
      -- subscriber: it closed every listener.)
      market.subscriber(stop_listener(port), { name = "stop", on_message = function(_, m)
        if stop_listener:is(m) then return stop() end
      end }),
      -- A graceful stop (docs/semantics.md): no new connections from now on.
      market.subscriber(market.ground.stopping(_), { name = "stopping",
                                                     on_presence = function() return stop() end }),
      -- It goes with the driver that spawned it: a driver started again
      -- (by a supervisor) spawns its own listener for the port, which an
      -- orphan held, and nothing would ever stop the orphan.  A quit, not
      -- a link's kill: that is a failure, with a crash report.
      market.observe_publishers(market.lifeline(driver), { name = "driver",
        on_absence = function(_, _, reason)
          return stop(("the tcp driver ended: %s"):format(show(reason)))
        end }))
    -- The socket is made once the option sets already published have been
    -- seen (their presence comes before this continuation): reuseport is
    -- one of them, and it must be set before bind.
    P(market.yield(function()
      if stopped then
        P(market.send(listener_closed(port)), market.quit(nil, stopped[1]))
        return
      end
      if bad then
        err = "want an integer port, a tcp.handle, a tcp.address(host, port) or a Unix socket path"
      elseif digits then
        err = ('a path of digits only (a port given as a string?): give a port as an integer, ' ..
               'a path as "./%s"'):format(port)
      elseif unix then
        s, err = sys.unix_listen(port, M.BACKLOG)
      else
        default("reuseport", "REUSEPORT")              -- checked
        local reuse = last("reuseport", "REUSEPORT")
        if on_host then
          s, err = sys.tcp_listen(number, M.BACKLOG, reuse, port.host)
        else
          s, err = sys.tcp_listen(own and 0 or port, M.BACKLOG, reuse)
        end
      end
      if not s then
        local reason = ("cannot listen on %s: %s"):format(where, err)
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
      -- Closed with the process, however it ends: killed (quit(pid), its
      -- VM's end), it runs no handler that would close it, and the port
      -- stayed taken until a collection.
      sys.close_at_end(s)
      local fd = s:fd()
      local on_accept
      -- The count of the connections this listener's managers hold open.
      local conns, exhausted = sys.tcp_conns(), false
      -- The TLS configuration of the latest set that names one (false:
      -- plain), for every connection accepted from now on.
      local function tls_of()
        local tls
        for i = 1, #sets do
          local x = setting(sets[i].settings, "tls")
          if x ~= nil then tls = x end
        end
        return tls_rec:is(tls) and tls or nil
      end
      local function max_connections()
        default("max_connections", "MAX_CONNECTIONS")   -- checked
        return last("max_connections", "MAX_CONNECTIONS")
      end

      -- reason: why it closes (nil: stopped).
      function close(reason)
        P(market.delete_endpoint("accept"))
        s:close()
        P(market.send(listener_closed(port)), market.quit(nil, reason))
      end

      -- A watch the ground ends with a reason (the descriptor closed behind
      -- market's back; in a nested VM, its event relay gone) hears nothing
      -- more: the listener closes with that reason, so that its observers
      -- are told, rather than staying up deaf.
      local function lost(_, _, reason, _, deleted)
        if reason ~= nil and not deleted then return close(reason) end
      end
      local function watch_accept()
        return market.subscriber(readable(fd), { name = "accept", on_message = on_accept,
                                                 on_absence = lost })
      end

      function on_accept()
        -- A bad default (tcp.MAX_CONNECTIONS = -1) ends the listener with
        -- that reason; raised, it left the socket open until a collection,
        -- its clients waiting in the queue and the port taken.
        local ok, maxconn, settings = pcall(function() return max_connections(), defaults() end)
        if not ok then
          warn("listener on %s closed: %s", where, (tostring(maxconn):gsub("^market%.tcp: ", "")))
          return close(maxconn)
        end
        -- A manager per connection, spawned by this process (at most 64 per
        -- turn: the others' events are not held up by a burst of connects).
        local n, err = sys.tcp_accept(s, loc, port, 64, maxconn, conns, settings, M.stats,
                                      tls_of())
        if n then
          -- Out of descriptors (err): connections are refused meanwhile.
          if err and not exhausted then
            warn("accept on %s: %s: refusing connections", where, err)
          end
          exhausted = err ~= nil
          return
        end
        -- Out of descriptors, with none spare, say: back off instead of spinning.
        warn("accept on %s: %s", where, err)
        P(market.delete_endpoint("accept"),
          market.subscriber(alarm(floor(market.monotonic()) + 100), {
            name = "backoff",
            on_message = function(_, m)
              if not alarm:is(m) then return end   -- send(market._): not the back-off's end
              P(market.delete_endpoint("backoff"), watch_accept())
            end,
            on_absence = lost }))
      end

      P(market.publisher(listening(port, unix and port or s:local_port()), "status"),
        watch_accept())
    end))
  end
end

-- ---- the driver ------------------------------------------------------------

-- In place of a manager when the module's defaults are bad: a connect
-- that failed (docs/tcp.md, "Connecting"), the flows shown and withdrawn
-- in one step with the reason, as a manager's failed connect is (withdrawn
-- a step later, the absence missed tcp.connect's look, and it returned a
-- connection).
local function failed_connect(a, h, reason)
  return function()
    P(market.publisher(channel(a, h, _), "in"), market.subscriber(channel(h, a, _), "out"),
      market.quit(nil, reason))
  end
end

-- The driver's boot function: run it with market.spawn(tcp.driver).
function M.driver()
  -- repr(port) -> observers: equal terms have equal text, and unequal
  -- ones other text (the listener's name, label below, does not keep the
  -- path "H:7" apart from tcp.address("H", 7)).
  local listeners = {}
  -- Outbound, per (address, handle): subs = the users' subscriptions seen,
  -- manager = nil | "spawned" | "alive".  A manager is spawned when a first
  -- subscription appears and none is alive, so a process may withdraw its
  -- subscription and subscribe again (to stop reading for a while) without
  -- a second connection being made.
  local outbound = {}

  -- A listened port as the listener's name shows it.  A handle in the
  -- port field keeps its listener apart from every other one.  Other ports
  -- (not one to listen on: reported by the listener) by their text, which
  -- a NaN has too.
  local function label(port)
    if mtype(port) == "integer" or type(port) == "string" then return port end
    if address:is(port) and type(port.host) == "string" then
      if mtype(port.port) == "integer" then return ("%s:%d"):format(port.host, port.port) end
      if handle:is(port.port) then return ("%s:%s"):format(port.host, repr(port.port)) end
    end
    return repr(port)
  end

  -- true and the port an observer of listener(port) asks for: any value
  -- but a pattern, the wildcard anywhere in it (an observer of every
  -- listener, of an address's every host or port, or of tcp.handle({"l",
  -- _}), asks for none: false).  nil and false are values
  -- too, which the listener refuses with its reason (they were taken for
  -- no port, and tcp.serve(nil) waited for ever).
  local function listen_port(role)
    if role.interest == "participant" then return false end   -- sessions, not observers
    local port = role.topic.destination.port
    if holds_wild(port) then return false end
    return true, port
  end

  local function out_entry(role, create)
    local t = role.topic
    local a, h = t.source, t.destination
    if holds_wild(a) or holds_wild(h) then return nil end
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
        local asks, port = listen_port(role)
        if not asks then return end
        local k = repr(port)
        local n = (listeners[k] or 0) + 1
        listeners[k] = n
        if n == 1 then
          P(market.spawn(listener_proc(port, market.self()), { name = "tcp-listener " .. label(port) }))
        end
      end,
      on_absence = function(_, role)
        local asks, port = listen_port(role)
        local k = asks and repr(port)
        if not asks or not listeners[k] then return end
        local n = listeners[k] - 1
        listeners[k] = n > 0 and n or nil
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
          local name = "tcp " .. repr(h) .. " -> " .. repr(a)
          -- A bad default (tcp.HIGH_WATER = -1) is this connection's
          -- failure: raised here, it killed the driver, and every later
          -- listen and connect of the VM waited for ever.
          local ok, settings = pcall(defaults)
          if ok then
            sys.tcp_manage(a, h, name, settings, M.stats)
          else
            P(market.spawn(failed_connect(a, h, settings), { name = name }))
          end
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

-- ---- connections for straight-line code: tcp.connect, tcp.serve ------------
--
-- A connection as an object, as cqueues and luasocket give one:
-- conn:receive() waits for the next chunk, line or frame, conn:send(data)
-- waits while the connection is paused.  Underneath are the endpoints of
-- docs/tcp.md, with handlers, so that what comes while the code waits for
-- something else (a sleep, another connection) lands in the object, never
-- in the process's market.yield() backlog; the waits are
-- market.wait_until on the object's fields.  What the code has not
-- received yet is bounded: past tcp.MAX_UNREAD bytes the object publishes
-- reading = false for its connection until half of it is taken, and the
-- kernel pushes back on the peer (withdrawing the subscription instead
-- would drop what is on its way to it).

M.MAX_UNREAD = 1 << 20     -- bytes a connection object holds unreceived before it stops reading

local EOF = market.EOF
local Conn = { __name = "tcp.connection" }
local OPEN = {}          -- a connection's in_closed or out_closed before that side closes
Conn.__index = Conn
local connect_id = market.record("tcp-connect", "serial")
local serve_id = market.record("tcp-serve", "serial")
local serial = 0
-- A sender lets the VM run (market.pause) before a send would take it
-- past this many bytes since the last look, so that the manager can write
-- them and publish backpressure before more go; past half the hard limit
-- when that is less, so that what goes out during a pause before the
-- sender sees it stays under the limit.
local SEND_CHECK = 1 << 16

-- The bytes a connection with settings (tcp.connect's or tcp.serve's
-- table, or nil) may send between two looks at its backpressure.
local function send_check(settings)
  local t = type(settings) == "table" and settings or {}
  local hw = mtype(t.high_water) == "integer" and t.high_water or M.HIGH_WATER
  local hard = t.hard_limit or M.HARD_LIMIT
  if mtype(hard) ~= "integer" then hard = mtype(hw) == "integer" and 8 * hw or SEND_CHECK end
  return math.max(1, math.min(SEND_CHECK, hard // 2))
end

function Conn.__tostring(c) return "tcp.connection " .. repr(c.remote) end

-- The running process, as market.self gives it; raises as fname's outside
-- a process.  level: where the error points.
local function self_of(fname, level)
  local ok, pid, _name, path = pcall(market.self)
  if not ok then error(fname .. ": not inside a market process", level + 1) end
  return pid, path
end

-- The object for the connection between here and remote, and the actions
-- that make its endpoints (settings, if any, published first, so that
-- they apply from the first byte).  tls: the connection's TLS setting
-- (a configuration, true, or false/nil: plain).
local function open(here, remote, settings, tls, server_settings)
  serial = serial + 1
  local tag = "tcp#" .. serial
  local pid, path = self_of("tcp", 2)
  -- Every field a method reads is there from the start, false where it
  -- would be nil: a field missing from the object is looked for in Conn
  -- (its __index) first, and a request of tcp.serve's read six of them.
  -- in_closed and out_closed: OPEN, then the reason their side closed
  -- (false: none given).
  local c = setmetatable({ here = here, remote = remote, owner = pid, path = path,
                           ctx = owner(), q = {}, qfirst = 1, qlast = 0, qoff = 0, odd = 0,
                           want = 0, unread = 0, unsent = 0, tag = tag,
                           check = send_check(settings or server_settings),
                           in_closed = OPEN, out_closed = OPEN, at_eof = false, holding = false,
                           paused = false, shut = false, closed = false,
                           ready_in = false, ready_out = false, tls = tls or false }, Conn)
  -- cert: the peer's certificate table once heard (peer_certificate),
  -- false for none (a plain connection has none); nil until then.
  if not tls then c.cert = false end
  -- receive's wait: something to take (made once: a connection's every
  -- receive may wait).
  c.arrived = function() return c.qfirst <= c.qlast or c.in_closed ~= OPEN end
  local acts = {}
  if settings ~= nil then acts[1] = M.options(here, remote, settings, tag .. " options") end
  acts[#acts + 1] = market.publisher(channel(here, remote, _), {
    name = tag .. " out",
    on_presence = function() c.ready_out = true end,
    on_absence = function(_, _, reason)
      if c.out_closed == OPEN then c.out_closed = reason or false end
    end })
  acts[#acts + 1] = market.observe_publishers(backpressure(here, remote), {
    name = tag .. " pause",
    on_presence = function() c.paused = true end,
    on_absence = function() c.paused = false end })
  acts[#acts + 1] = market.subscriber(channel(remote, here, _), {
    name = tag .. " in",
    on_presence = function() c.ready_in = true end,
    on_message = function(_, m)
      if not is_channel(channel, m) then return end   -- send(market._): no bytes
      -- The flow's publisher went: bytes now are another connection's,
      -- from the same address and port once its manager has gone.
      if c.in_closed ~= OPEN then return end
      local d = m.subpacket
      c.qlast = c.qlast + 1
      c.q[c.qlast] = d
      if type(d) ~= "string" then
        c.odd = c.odd + 1
        if d == EOF and c.input_ended then c.input_ended(c) end
        return
      end
      c.unread = c.unread + #d
      if c.unread > M.MAX_UNREAD and c.unread > c.want and not c.holding then
        c.holding = true
        return market.transition_no_state(M.options(here, remote, { reading = false }, tag .. " hold"))
      end
    end,
    on_absence = function(_, _, reason)
      if c.in_closed == OPEN then c.in_closed = reason or false end
      if c.input_ended then c.input_ended(c) end
    end })
  -- (c.input_ended, unset here: a function called with c from these
  -- handlers when the input ends, by the end of stream or the flow's
  -- absence, even while the process waits for something else; http.lua
  -- closes a kept connection so.)
  return c, acts
end

-- Raises unless obj is one of kind's objects (mt: Conn or Server) and
-- the running process's: method `what` of it was called.  kind names the
-- type ("connection"), var the variable the hint calls it by ("conn").
-- (Every method call passes here: the function's name is made only for
-- an error.)
local function owned(obj, mt, kind, var, what)
  if getmt(obj) ~= mt then
    error(("tcp.%s:%s: not a %s (call it as %s:%s(...))"):format(kind, what, kind, var, what), 3)
  end
  if obj.ctx ~= nil and owner() == obj.ctx then return end   -- (the common case)
  local ok, pid, _name, path = pcall(market.self)
  if not ok then self_of(("tcp.%s:%s"):format(kind, what), 3) end
  if pid ~= obj.owner or path ~= obj.path then
    error(("tcp.%s:%s: the %s belongs to process %d of %s, not to this one " ..
           "(its events go to that process)"):format(kind, what, kind, obj.owner, obj.path), 3)
  end
end

-- Raises unless c is a connection of the running process.
-- (A tail call: the errors point at the method's caller either way.)
-- receive, read and send make owned's first check themselves, without
-- calling: `if getmt(self) ~= Conn or self.ctx ~= owner() then mine(...)`
-- (two calls fewer a request; outside a process owner() is nil).
local function mine(c, what) return owned(c, Conn, "connection", "conn", what) end

local function ready(c)
  return (c.ready_in and c.ready_out) or c.in_closed ~= OPEN or c.out_closed ~= OPEN
end

-- Raises, at the line that called method `what`, that ms is not a
-- timeout (a number >= 0; nil, none, is not passed here).  Checked by
-- the methods themselves, before they wait: send waits only while paused,
-- so that a bad timeout went unseen, and wait_until's error pointed at
-- this file's line.
local function bad_timeout(ms, what)
  error(("tcp.connection:%s: the timeout must be a number of milliseconds >= 0 (or nil: none), " ..
         "got %s"):format(what, mtype(ms) and tostring(ms) or type(ms)), 3)
end

-- The connection reads again (its reading = false withdrawn).
local function release(c)
  c.holding = false
  P(market.delete_endpoint(c.tag .. " hold"))
end

-- Takes the head of c's queue (n of its bytes, when given and a string's
-- head is longer), and lets the connection read again once half of
-- MAX_UNREAD is free.  c.odd counts what the queue holds that is not a
-- string (the end of stream, a term sent by a process); c.qoff, the
-- bytes of the head string a read took already (so that many small reads
-- of one large chunk copy nothing twice).
local function take(c, n)
  local d, off = c.q[c.qfirst], c.qoff
  if c.odd == 0 or type(d) == "string" then    -- (odd == 0: only strings queued)
    local len = #d - off
    if n and n < len then
      c.qoff = off + n
      d = d:sub(off + 1, off + n)
    else
      if off > 0 then d = d:sub(off + 1) end
      c.q[c.qfirst], c.qfirst, c.qoff = nil, c.qfirst + 1, 0
    end
    c.unread = c.unread - #d
    if c.holding and c.unread <= M.MAX_UNREAD // 2 then release(c) end
  else
    c.q[c.qfirst], c.qfirst, c.odd = nil, c.qfirst + 1, c.odd - 1
  end
  return d
end

-- data = conn:receive([ms]): the next chunk (or line, or frame: the
-- connection's framing); nil at the peer's end of stream; nil, reason
-- when the connection failed or closed (the reason of its absence, or
-- "closed"); nil, "timeout" when nothing came within ms.
function Conn:receive(ms)
  if getmt(self) ~= Conn or self.ctx ~= owner() then mine(self, "receive") end
  if ms ~= nil and not (type(ms) == "number" and ms >= 0) then bad_timeout(ms, "receive") end
  if self.qfirst > self.qlast and not self.at_eof and self.in_closed == OPEN then
    local ok, err = market.wait_until(self.arrived, ms)
    if not ok then return nil, err end
  end
  if self.qfirst <= self.qlast then
    local d = take(self)
    if d == EOF then self.at_eof = true; return nil end
    return d
  end
  if self.at_eof then return nil end
  return nil, self.in_closed or "closed"
end

-- data = conn:read(n [, ms]): the next n bytes of the stream, across the
-- chunks it came in (framing "raw": with another framing the lines or
-- frames are joined without their delimiters).  Fewer than n only when
-- the stream ended or failed after them (the next call says which: nil,
-- or nil and the reason); nil, "timeout" after ms, nothing taken.
function Conn:read(n, ms)
  if getmt(self) ~= Conn or self.ctx ~= owner() then mine(self, "read") end
  if math.type(n) ~= "integer" or n < 1 then
    error("tcp.connection:read: n must be a positive integer, got " ..
          (math.type(n) and tostring(n) or type(n)), 2)
  end
  if ms ~= nil and not (type(ms) == "number" and ms >= 0) then bad_timeout(ms, "read") end
  if self.unread < n and self.odd == 0 and not self.at_eof and self.in_closed == OPEN then
    -- A read of more than MAX_UNREAD holds that much: the connection
    -- reads on until it is there (c.want: the hold waits past it).
    if self.holding then release(self) end
    self.want = n
    local ok, err = market.wait_until(function()
      return self.unread >= n or self.odd > 0 or self.in_closed ~= OPEN
    end, ms)
    self.want = 0
    if not ok then return nil, err end
  end
  local t, got = {}, 0
  while got < n and self.qfirst <= self.qlast and type(self.q[self.qfirst]) == "string" do
    local d = take(self, n - got)
    t[#t + 1] = d
    got = got + #d
  end
  if got > 0 then return table.concat(t) end
  -- Nothing of bytes at the head: the end of stream, a failure, or a
  -- term another process sent on the channel (given as receive gives it).
  return self:receive()
end

-- for data in conn:lines([ms]) do ... end: receive until it returns nil
-- (receive then says why, again).
function Conn:lines(ms)
  mine(self, "lines")
  if ms ~= nil and not (type(ms) == "number" and ms >= 0) then bad_timeout(ms, "lines") end
  return function() return (self:receive(ms)) end
end

-- ok = conn:send(data [, ms]): true once data is on its way; nil, reason
-- when the connection cannot take it.  Waits while the connection is
-- paused (its output over high_water: docs/tcp.md, Flow control), at most
-- ms: then nil, "timeout", and nothing of data was sent.
function Conn:send(data, ms)
  if getmt(self) ~= Conn or self.ctx ~= owner() then mine(self, "send") end
  if type(data) ~= "string" then
    error("tcp.connection:send: data must be a string, got " .. type(data), 2)
  end
  if ms ~= nil and not (type(ms) == "number" and ms >= 0) then bad_timeout(ms, "send") end
  if self.shut then return nil, "shut down for sending (conn:shutdown)" end
  if self.unsent > 0 and self.unsent + #data > self.check then
    self.unsent = 0
    market.pause()
  end
  if self.paused and self.out_closed == OPEN then
    local ok, err = market.wait_until(function() return not self.paused or self.out_closed ~= OPEN end, ms)
    if not ok then return nil, err end
  end
  if self.out_closed ~= OPEN then return nil, self.out_closed or "closed" end
  sys.send(channel, self.here, self.remote, data)   -- (P(market.send(channel(...))), without a box)
  self.unsent = self.unsent + #data
  return true
end

-- cert = conn:peer_certificate(): the certificate the peer gave in the
-- TLS handshake, as a table (subject, issuer, names, serial, fingerprint,
-- not_before, not_after, pem: docs/tcp.md, "TLS"); nil when it gave none
-- (a client, unless the server's configuration has `ca`) or the
-- connection is not TLS; nil, reason when the connection closed before
-- its manager told.  Asked once: the manager's word (its
-- tcp.peer_certificate) is kept.  The manager publishes it as long as it
-- lives, so only both flows' ends tell that it will not: an inbound flow
-- that failed alone (a line over max_frame) leaves the manager and its
-- word there.
function Conn:peer_certificate()
  mine(self, "peer_certificate")
  if self.cert == nil then
    local name = self.tag .. " peer"
    P(market.observe_publishers(peer_certificate(self.remote, self.here, _), {
      name = name,
      on_presence = function(_, role)
        local t = role.topic.certificate
        if t then
          local names = {}
          for i = 1, #t.names do names[i] = t.names[i] end
          t = { subject = t.subject, issuer = t.issuer, names = names, serial = t.serial,
                fingerprint = t.fingerprint, not_before = t.not_before, not_after = t.not_after,
                pem = t.pem }
        end
        self.cert = t
      end }))
    market.wait_until(function()
      return self.cert ~= nil or (self.in_closed ~= OPEN and self.out_closed ~= OPEN)
    end)
    P(market.delete_endpoint(name))
    if self.cert == nil then return nil, self.in_closed or self.out_closed or "closed" end
  end
  return self.cert or nil
end

-- conn:shutdown(): the end of what this side sends (a half-close); the
-- peer reads its end of stream after the rest.  receive goes on.
function Conn:shutdown()
  mine(self, "shutdown")
  if self.shut or self.out_closed ~= OPEN then return end
  self.shut = true
  P(market.send(channel(self.here, self.remote, EOF)))
end

-- conn:close(): its endpoints go; the manager writes what is queued and
-- closes the socket (docs/tcp.md, End of stream and closing).  Again:
-- nothing.
function Conn:close()
  mine(self, "close")
  if self.closed then return end
  self.closed = true
  if self.in_closed == OPEN then self.in_closed = false end
  if self.out_closed == OPEN then self.out_closed = false end
  -- (Deleting an endpoint it never made, options or hold, does nothing.)
  local tag = self.tag
  P(market.delete_endpoint(tag .. " in"), market.delete_endpoint(tag .. " out"),
    market.delete_endpoint(tag .. " pause"), market.delete_endpoint(tag .. " options"),
    market.delete_endpoint(tag .. " hold"))
end

-- conn = tcp.connect(host, port [, settings]), or tcp.connect(address
-- [, settings]): waits until connected; nil, reason when the connect
-- failed (docs/tcp.md, Failures).  settings: as tcp.options takes them,
-- for this connection (connect_timeout among them).
function M.connect(host, port, settings)
  local a
  if address:is(host) then a, settings = host, port else a = address(host, port) end
  self_of("tcp.connect", 2)
  check_settings(settings, "tcp.connect")
  serial = serial + 1
  local c, acts = open(handle(connect_id(serial)), a, settings, settings and settings.tls)
  P(table.unpack(acts))
  market.wait_until(function() return ready(c) end)
  -- A connect that failed shows its endpoints and withdraws them in one
  -- step: their absence is queued right behind the presence.
  if c.in_closed == OPEN and c.out_closed == OPEN then
    market.wait_until(function() return c.in_closed ~= OPEN end, 0)
  end
  if c.in_closed ~= OPEN or c.out_closed ~= OPEN then
    local why = c.in_closed ~= OPEN and c.in_closed or c.out_closed ~= OPEN and c.out_closed
                or "closed"
    c:close()
    return nil, why
  end
  return c
end

-- A session's process: its connection, then session(conn), then quit
-- (the manager flushes and closes).
local function session_proc(here, remote, session, settings)
  return function()
    local c, acts = open(here, remote, nil, settings and settings.tls, settings)
    P(table.unpack(acts))
    market.wait_until(function() return ready(c) end)
    session(c)
    P(market.quit())
  end
end

local Server = { __name = "tcp.server" }
Server.__index = Server
function Server.__tostring(s)
  return ("tcp.server %s (port %s)"):format(repr(s.here), tostring(s.port))
end

-- server:close(): no new connections (the listener closes when no one
-- else observes it); sessions running go on.
function Server:close()
  owned(self, Server, "server", "server", "close")
  if self.closed then return end
  self.closed = true
  P(market.delete_endpoint(self.tag), market.delete_endpoint(self.tag .. " listening"),
    market.delete_endpoint(self.tag .. " options"))
end

-- server = tcp.serve(port, session [, settings]): listens on port (as
-- tcp.listener takes it, or a tcp.listener), and runs session(conn) in a
-- process of its own for each connection.  Waits until listening: the
-- server (server.port: the port bound), or nil, reason.  It serves while
-- the calling process has its endpoints (server:close, or its end, stops
-- it).  settings: as tcp.options takes them, for every connection (and
-- max_connections, reuseport: the listener's).
function M.serve(port, session, settings)
  if type(session) ~= "function" then
    error("tcp.serve: session must be a function, got " .. type(session), 2)
  end
  local pid, path = self_of("tcp.serve", 2)
  check_settings(settings, "tcp.serve")
  serial = serial + 1
  -- Port 0: a socket of this server's own.  tcp.listener(0) names one
  -- socket for every observer of it, so two servers on port 0 would share
  -- a port and each see the other's connections.
  if port == 0 then port = handle(serve_id(serial)) end
  local here = listener:is(port) and port or listener(port)
  if holds_wild(here) then    -- an observer's pattern: no listener binds it, nothing would come
    error(("tcp.serve: %s is a pattern (it holds the wildcard), which binds no listener")
          :format(repr(here)), 2)
  end
  local tag = "tcp.serve#" .. serial
  local srv = setmetatable({ here = here, owner = pid, path = path, ctx = owner(), tag = tag },
                           Server)
  local acts = {}
  if settings ~= nil then acts[1] = M.options(here, settings, tag .. " options") end
  acts[#acts + 1] = market.subscriber(listening(here.port, _), {
    name = tag .. " listening",
    on_presence = function(_, role)
      if role.topic.bound_port ~= nil and srv.port == nil then srv.port = role.topic.bound_port end
    end,
    on_absence = function(_, _, reason)
      if srv.failed == nil then srv.failed = reason or false end
    end })
  -- The observer of the connections gets every chunk they carry (DESIGN
  -- §1) and each one's absence as it ends: refused (false), or they would
  -- be kept for market.yield() while the server's owner waits, and pile up.
  acts[#acts + 1] = market.observe_publishers(channel(_, here, _), {
    name = tag,
    on_message = false,
    on_absence = false,
    on_presence = function(_, role)
      local remote = role.topic.source
      return market.transition_no_state(market.spawn(
        session_proc(here, remote, session, settings),
        "session " .. repr(remote)))
    end })
  P(table.unpack(acts))
  market.wait_until(function() return srv.port ~= nil or srv.failed ~= nil end)
  if srv.port == nil then
    srv:close()
    return nil, srv.failed or "closed"
  end
  return srv
end

-- For market.snapshot (docs/inspect.md, "Snapshots"): the counters of
-- M.stats, and the connections: each manager's pid and VM, its local
-- address and its peer, its session's pid, and in detail mode the bytes
-- in, out and buffered.  Connections and listeners are processes of the
-- snapshot's tree too (kind "tcp" for a connection's manager).
-- inspect([max]): with max (market.snapshot's max_processes), only the
-- connections whose managers are among the first max processes.
function M.inspect(max)
  local s, t = M.stats, {}
  for _, k in ipairs { "max_queued", "pauses", "overflows", "refused", "timeouts", "max_input",
                       "tls_failures" } do
    t[k] = s[k]
  end
  t.connections = sys.tcp_inspect(max)
  return t
end

return M

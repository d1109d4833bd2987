-- examples/dns.lua: an authoritative DNS server for one small zone, over
-- UDP (and TCP on the same port, for truncated answers and for clients such
-- as dig that ask ANY over TCP).
--
--   build/market examples/dns.lua [port [zonefile]]
--       (default port 5300, zone examples/example.zone)
--   dig @127.0.0.1 -p 5300 www.example.test A
--
-- Answers A, AAAA, TXT, CNAME and SOA queries (and ANY) from the zone file,
-- following CNAME chains inside the zone; a name with no records is
-- NXDOMAIN, a name without records of the asked type gets an empty answer
-- (both with the zone's SOA in the authority section).  Queries that are
-- not queries (responses, packets shorter than a header) are dropped; a
-- malformed question gets FORMERR, another opcode NOTIMP, a class other
-- than IN REFUSED.  EDNS(0) is understood (payload size only).
--
-- The server is one process.  It observes the publishers of
-- tcp.channel(_, tcp.listener(port), _), which makes the TCP driver listen;
-- the driver splits the stream into the two-byte length-prefixed messages
-- of RFC 1035 (tcp.options: framing "u16") and each connection gets a
-- session that answers them.  Once it listens (port 0: on a port the kernel
-- picks) the server subscribes to udp.packet(_, udp.listener(that port), _),
-- which makes the UDP driver bind the same port.  The DNS message code
-- (zone file, queries, answers) is examples/dnsmsg.lua, loaded from beside
-- this file.
local market = require "market"
local udp = require "market.udp"
local tcp = require "market.tcp"
local _ = market._
local T, send = market.transition_no_state, market.send
local pack = string.pack

local args = { ... }
local port = math.tointeger(tonumber(args[1] or 5300))
local here_dir = (arg and arg[0] and arg[0]:match("^(.*)/")) or "."
local zonefile = args[2] or (here_dir .. "/example.zone")
if not port then
  io.stderr:write("usage: market examples/dns.lua [port [zonefile]]\n")
  market.perform(market.exit(2))      -- a usage error: no crash report
end

-- The message code (zone file, queries, answers) is a module of its own.
local dns = assert(loadfile(here_dir .. "/dnsmsg.lua"))()
local zone = dns.load_zone(zonefile)


-- ---- the server process ------------------------------------------------------

local tcp_here = tcp.listener(port)

local function tcp_session(remote)
  return function()
    local function bye() return T(market.quit()) end
    return market.transition(nil,
      market.subscriber(tcp.channel(remote, tcp_here, _), {
        on_message = function(_, m)
          -- A message comes as sent: the wildcard (send(market._) reaches
          -- every subscriber) has no fields, and another process's
          -- channel record may carry anything.
          if not tcp.channel:is(m) then return end
          local msg = m.subpacket             -- one message, without its length
          if msg == market.EOF then
            return T(send(tcp.channel(tcp_here, remote, market.EOF)), market.quit())
          end
          if type(msg) ~= "string" then return end
          local q = dns.parse(msg)
          if q then return T(send(tcp.channel(tcp_here, remote, pack(">s2", dns.answer(q, zone, 65535))))) end
        end,
        on_absence = bye,
      }),
      market.publisher(tcp.channel(tcp_here, remote, _), { on_absence = bye }))
  end
end

-- Over UDP on bound_port, the TCP listener's.  (With port 0 the kernel
-- picks it for TCP, where a port is harder to come by: a client's
-- connection in TIME_WAIT keeps its port from listeners for a minute,
-- while UDP sockets are few.)
local function serve_udp(bound_port)
  local here = udp.listener(bound_port)
  return market.subscriber(udp.packet(_, here, _), {
      name = "queries",
      on_message = function(_, m)
        -- (As a session's: the wildcard message has no body.)
        if not udp.packet:is(m) or type(m.body) ~= "string" then return end
        local q = dns.parse(m.body)
        if not q then return end
        return T(send(udp.packet(here, m.source, dns.answer(q, zone))))
      end,
      on_absence = function(_, _, reason)
        if reason then error("dns: " .. tostring(reason), 0) end
      end,
    }),
    market.subscriber(udp.bound(here, _), {
      name = "bound",
      on_presence = function()
        io.stderr:write(("dns: serving %s, listening on port %d (udp and tcp)\n")
          :format(zone.origin, bound_port))
      end,
    })
end

-- Over TCP, clients get 10 s between queries (RFC 7766 suggests seconds),
-- at most 256 of them at once.  A client that queries without reading the
-- answers is dropped once 64 KiB of them wait for it and 128 KiB more
-- pile up: with the driver's defaults (1 MiB, then 8 MiB more) 256 such
-- clients could hold over 2 GiB; so at most about 64 MiB.
return market.transition(nil,
  tcp.options(tcp_here, { framing = "u16", max_frame = 65535, idle_timeout = 10000,
                          max_connections = 256, high_water = 64 * 1024, hard_limit = 128 * 1024 }),
  market.observe_publishers(tcp.channel(_, tcp_here, _), {
    name = "tcp",
    on_presence = function(_, role)
      return T(market.spawn(tcp_session(role.topic.source), { name = "dns/tcp" }))
    end,
  }),
  market.subscriber(tcp.listening(port, _), {
    name = "tcp-listening",
    on_presence = function(_, role)
      local bound = role.topic.bound_port
      if math.type(bound) == "integer" then return T(serve_udp(bound)) end
    end,
    on_absence = function(_, _, reason)
      if reason then error("dns: " .. tostring(reason), 0) end
    end,
  }),
  -- Stopping (SIGINT, SIGTERM): the server goes, and with it its UDP
  -- socket; the listener closes, TCP sessions get the drain time.
  market.subscriber(market.ground.stopping(_), {
    name = "stopping",
    on_presence = function() return T(market.quit()) end,
  }))

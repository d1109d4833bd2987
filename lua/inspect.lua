-- market.inspect: the live inspector (docs/inspect.md, "The live inspector").
--
-- An HTTP server made of market processes on market's own tcp driver: a
-- server process that observes its listener, and one process per HTTP
-- connection.  Read-only: it answers GET and HEAD, runs nothing it is
-- sent, and binds loopback unless told otherwise.  Requests are parsed by
-- http_parser (lua/lhttp.c, the `http` argument).
--
-- Routes: /  the page (below, self-contained); /events  Server-Sent Events,
-- a snapshot a second; /api/snapshot; /api/process/PID?vm=PATH (the
-- process and its recent events); /api/conversation/PUB/EP/SUB/EP?vm=PATH
-- (the conversation and the messages through it).
--
-- Also the client of `market inspect HOST:PORT` (M.cli): the snapshot
-- fetched and printed as a table, like ps.
local market, sys, http = ...
local tcp = require "market.tcp"
local timer = require "market.timer"
local M = {}

local _ = market._
local P, T = market.perform, market.transition_no_state
local json = market.snapshot_json     -- encodes any table of plain values and terms

-- Published by the server while it serves: url, e.g. "http://127.0.0.1:4711/".
local listening = market.record("market-inspector", "url")
-- Published by each live page (its /events stream) while it is open: the
-- server counts them to turn detailed counters on and off.
local viewer = market.record("market-inspector:viewer", "id")
M.listening = listening

M.MAX_REQUEST = 8192        -- bytes a request may take (head and body)
M.PUSH_MS = 1000            -- how often /events pushes a snapshot
M.KEEP_EVENTS = 200         -- recent events kept per inspected process or conversation
M.RING_IDLE_MS = 10000      -- a view nobody asked for this long is closed
M.CLI_TIMEOUT_MS = 5000     -- how long `market inspect` waits for the whole answer
-- Its connections are the program's descriptors, and the inspector may
-- listen beyond loopback: it holds this many at once (the tcp driver
-- refuses the rest), and ends one with no byte either way this long (a
-- page's /events stream gets a snapshot every PUSH_MS).
M.MAX_CONNECTIONS = 64
M.IDLE_TIMEOUT_MS = 30000
-- A request must be whole this long after its connection came, or it is
-- answered 408 and closed: the idle timeout alone let a client that sends
-- a byte every few seconds hold a connection for ever, and MAX_CONNECTIONS
-- such clients shut everyone else out.
M.REQUEST_TIMEOUT_MS = 10000
-- Processes a snapshot of the inspector's lists, in the whole tree (the
-- lowest pids of each VM; each VM says how many it left out, `omitted`).
-- A whole snapshot of 200,000 processes took two seconds of CPU, over
-- the activation budget: the connection asking for it was killed, and a
-- page's pushes would have held the program every second.
M.MAX_PROCESSES = 1000
-- Conversations of a snapshot, in the whole tree (those of each VM's
-- lowest publishers; each VM says how many it left out,
-- `conversations_omitted`).  They grow as the square of a room: 300 chat
-- users made 90,000, an 8.7 MB snapshot that took a second to build, and
-- a page's pushes held the whole program that long every second.
M.MAX_CONVERSATIONS = 5000
-- ... and endpoints: one process of 150,000 made a snapshot of 20 MB,
-- which no request finished within the activation budget.
M.MAX_ENDPOINTS = 20000
-- Pages and requests within this many ms of a snapshot get that one's
-- text: however many pages are open, the program builds at most two
-- snapshots a second for them (each page had its own, every PUSH_MS).
M.SHARE_MS = 500

-- ---- addresses ---------------------------------------------------------------

-- Whether host is written as a numeric IP address: four decimal numbers,
-- or hex digits and colons (the listener's getaddrinfo checks the rest).
local function numeric(host)
  local a, b, c, d = host:match("^(%d+)%.(%d+)%.(%d+)%.(%d+)$")
  if a then
    return tonumber(a) < 256 and tonumber(b) < 256 and tonumber(c) < 256 and tonumber(d) < 256
  end
  return host:find(":", 1, true) ~= nil and host:match("^[%x:%.]+$") ~= nil
end

-- "[HOST:]PORT" (HOST may be an IPv6 address in brackets) -> host, port;
-- or nil, why.  The host defaults to 127.0.0.1: loopback only.  With
-- listen, HOST must be numeric (a server's own address: no name is looked
-- up), so that a name is a bad address at once, not a listener that fails.
function M.parse_address(s, listen)
  if math.type(s) == "integer" then s = tostring(s) end
  if type(s) ~= "string" then return nil, "want [HOST:]PORT, got a " .. type(s) end
  local host, port = s:match("^%[([^%]]+)%]:(%d+)$")
  if not host then host, port = s:match("^([^:]+):(%d+)$") end
  if not host then host, port = "127.0.0.1", s:match("^(%d+)$") end
  port = tonumber(port)
  if not port or port > 65535 then
    return nil, ("bad address %q: want [HOST:]PORT, PORT 0..65535 (0: any)"):format(s)
  end
  if listen and not numeric(host) then
    return nil, ("bad address %q: HOST must be a numeric IP address (no name is looked up)"):format(s)
  end
  return host, math.tointeger(port)
end

-- "HOST:PORT" as a URL and a Host header have it: an IPv6 address in
-- brackets (RFC 3986 3.2.2), or its colons would run into the port's.
local function host_port(host, port)
  return ("%s:%d"):format(host:find(":", 1, true) and "[" .. host .. "]" or host, port)
end

local function url_of(host, port)
  return "http://" .. host_port(host, port) .. "/"
end

-- Whether a Host header names this machine's loopback: a page of another
-- site whose name was made to point at 127.0.0.1 (DNS rebinding) sends its
-- own name, and is refused.
local function loopback_host(h)
  h = h and h:lower():gsub(":%d+$", "") or ""
  return h == "localhost" or h == "[::1]" or h:match("^127%.%d+%.%d+%.%d+$") ~= nil
end

local function is_loopback(host)
  return host == "::1" or host == "localhost" or host:match("^127%.") ~= nil
end

-- ---- detail and event rings --------------------------------------------------

-- The views open in pages: key -> {ring =, lines = {...}, used = ms}.
-- Shared by the connection processes (one Lua state); the server closes
-- those nobody asked for lately and all of them when the last page goes.
local views = {}

local function close_view(k)
  local v = views[k]
  views[k] = nil
  if v and v.ring then v.ring:close() end
end

-- Closes the views idle for RING_IDLE_MS (all of them: all true); the
-- milliseconds until the next of the others would be, or nil if none is left.
local function sweep(all)
  local now, due = market.monotonic(), nil
  for k, v in pairs(views) do
    local left = v.used + M.RING_IDLE_MS - now
    if all or left <= 0 then close_view(k)
    elseif not due or left < due then due = left end
  end
  return due and math.ceil(due)
end

-- The servers' timer for sweeping the views: set by each request for a
-- view, so that a view a page stops asking for is closed without a page's
-- /events stream (whose pushes sweep too) and without a timer ticking
-- while nothing is open.
local SWEEP = { "market-inspector", "sweep" }

local function arm_sweep(ms)
  return market.send(timer.cancel(SWEEP)), market.send(timer.set(SWEEP, ms, "relative"))
end

-- The recent events of view k (the JSON lines, oldest first) and how many
-- its ring let go unread since it opened, opening it with opts the first
-- time (keeping KEEP_EVENTS lines between two reads); nil when the ring
-- cannot be opened.  The filter is the ring's own, all of it: lines the
-- view would drop afterwards (another VM's process of the same pid) took
-- the ring's room, and pushed the view's own out.
local function view_lines(k, opts)
  local v = views[k]
  P(arm_sweep(M.RING_IDLE_MS))
  if not v then
    opts.size = M.KEEP_EVENTS
    local ok, ring = pcall(market.ring, opts)
    if not ok then
      market.log.warn("market.inspect: cannot record events: %s", tostring(ring))
      return nil
    end
    v = { ring = ring, lines = {}, dropped = 0 }
    views[k] = v
  end
  v.used = market.monotonic()
  local lines, dropped = v.ring:read()
  v.dropped = v.dropped + dropped
  table.move(lines, 1, #lines, #v.lines + 1, v.lines)
  local n, extra = #v.lines, #v.lines - M.KEEP_EVENTS
  if extra > 0 then                  -- the oldest go
    table.move(v.lines, extra + 1, n, 1)
    for i = n - extra + 1, n do v.lines[i] = nil end
  end
  return v.lines, v.dropped
end

-- A VM path as a glob that matches it alone (market.ring's vm =).
local function exactly(path)
  return (path:gsub("[][*?\\]", "\\%0"))
end

local detail = market.inspect_detail

-- ---- snapshots for the page -----------------------------------------------

local function snapshot(extra)
  local s = market.snapshot { max_processes = M.MAX_PROCESSES,
                              max_conversations = M.MAX_CONVERSATIONS,
                              max_endpoints = M.MAX_ENDPOINTS }
  s.inspector = extra
  return s
end

-- The JSON text of a snapshot for the server whose info is `extra`: the
-- last one made for it, if made less than SHARE_MS ago.
local shared = setmetatable({}, { __mode = "k" })
local function snapshot_text(extra)
  local now, last = market.monotonic(), shared[extra]
  if last and now - last.at < M.SHARE_MS then return last.text end
  last = { at = now, text = json(snapshot(extra)) }
  shared[extra] = last
  return last.text
end

-- The VM at path in snapshot s, or nil.
local function find_vm(vm, path)
  if vm.path == path then return vm end
  for _, p in ipairs(vm.processes) do
    if p.vm then
      local found = find_vm(p.vm, path)
      if found then return found end
    end
  end
end

local function find_proc(vm, pid)
  for _, p in ipairs(vm.processes) do
    if p.pid == pid then return p end
  end
end

local function find_endpoint(p, name)
  for _, e in ipairs(p and p.endpoints or {}) do
    if e.name == name and e.level == 0 then return e end
  end
end

-- JSON object text `obj` with "events": [lines] added (the lines are JSON
-- objects already: a trace's --trace-format json lines).
local function with_events(obj, lines)
  local head = json(obj)
  return head:sub(1, -2) .. (head == "{}" and "" or ",") .. '"events":[' ..
    table.concat(lines or {}, ",") .. "]}"
end

local function unescape(s)
  return (s:gsub("%%(%x%x)", function(h) return string.char(tonumber(h, 16)) end))
end

local function query_vm(q)
  local vm = q and ("&" .. q):match("&vm=([^&]*)")
  return vm and unescape(vm) or "ground"
end

-- The path ?vm= names, and that VM in a snapshot of processes (its
-- conversations left out), or nil.
local function vm_of(q)
  local path = query_vm(q)
  return path, find_vm(market.snapshot { max_processes = M.MAX_PROCESSES, max_conversations = 1,
                                         max_endpoints = M.MAX_ENDPOINTS }.vm, path)
end

-- /api/process/PID: the process as the snapshot has it and its recent events.
local function process_view(pid, q)
  local path, vm = vm_of(q)
  local p = vm and find_proc(vm, pid)
  local lines, dropped
  if p then lines, dropped = view_lines("p " .. path .. " " .. pid, { vm = exactly(path), pid = pid }) end
  return with_events({ vm = path, pid = pid, process = p, recording = lines ~= nil,
                       dropped = dropped }, lines)
end

-- /api/conversation/PUB/EP/SUB/EP: the conversation and the messages its
-- publisher sent that its subscriber's topic takes.
local function conversation_view(pub, pep, sub, sep, q)
  local path, vm = vm_of(q)
  local pp, sp = vm and find_proc(vm, pub), vm and find_proc(vm, sub)
  local pe, se = find_endpoint(pp, pep), find_endpoint(sp, sep)
  local lines, dropped
  if pe and se then
    lines, dropped = view_lines(table.concat({ "c", path, pub, pep, sub, sep }, " "),
      { vm = exactly(path), pid = pub, topic = se.topic, kind = "send" })
  end
  return with_events({ vm = path, publisher = { pid = pub, endpoint = pep, process = pp and pp.name,
                                                topic = pe and pe.topic },
                       subscriber = { pid = sub, endpoint = sep, process = sp and sp.name,
                                      topic = se and se.topic },
                       recording = lines ~= nil, dropped = dropped }, lines)
end

-- ---- HTTP ------------------------------------------------------------------

local REASONS = { [200] = "OK", [400] = "Bad Request", [403] = "Forbidden", [404] = "Not Found",
                  [405] = "Method Not Allowed", [408] = "Request Timeout", [413] = "Content Too Large",
                  [431] = "Request Header Fields Too Large", [500] = "Internal Server Error",
                  [505] = "HTTP Version Not Supported" }

local function response(status, ctype, body, head_only, extra)
  local h = { ("HTTP/1.1 %d %s\r\n"):format(status, REASONS[status]),
              "Content-Type: ", ctype, "\r\n",
              "Content-Length: ", #body, "\r\n",
              "Cache-Control: no-store\r\n",
              "X-Content-Type-Options: nosniff\r\n",
              extra or "",
              "Connection: close\r\n\r\n" }
  if not head_only then h[#h + 1] = body end
  return table.concat(h)
end

local function error_response(status, why, head_only, extra)
  return response(status, "text/plain; charset=utf-8", ("%d %s: %s\n"):format(status, REASONS[status], why),
                  head_only, extra)
end

local PAGE   -- the page's HTML, at the end of this file

-- The head of an /events stream (no length: the close ends it), a HEAD's
-- answer too (it said Content-Length: 0, which the GET does not).
local EVENTS_HEAD = "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-store\r\n" ..
                    "X-Content-Type-Options: nosniff\r\nConnection: close\r\n\r\n"

-- What a finished request is answered with: the response's text, or
-- "events" for the Server-Sent Events stream.
local function route(req, info, loopback_only)
  local method, head_only = req.method, req.method == "HEAD"
  if method ~= "GET" and method ~= "HEAD" then
    return error_response(405, "the inspector is read-only: GET and HEAD only", false,
                          "Allow: GET, HEAD\r\n")
  end
  if loopback_only and not loopback_host(req.headers.host) then
    return error_response(403, "Host " .. (req.headers.host or "(none)") ..
                          " is not this machine's loopback", head_only)
  end
  local path, q = req.target:match("^([^?#]*)%??([^#]*)")
  if path == "/" then
    return response(200, "text/html; charset=utf-8", PAGE, head_only,
      "Content-Security-Policy: default-src 'none'; script-src 'unsafe-inline'; " ..
      "style-src 'unsafe-inline'; connect-src 'self'; img-src data:\r\n")
  elseif path == "/events" then
    if head_only then return EVENTS_HEAD end
    return "events"
  elseif path == "/api/snapshot" then
    return response(200, "application/json", snapshot_text(info), head_only)
  end
  -- (A pid past an integer's range names no process: tonumber makes it a
  -- float, which named none and was answered 200 without a pid.)
  local pid = math.tointeger(tonumber(path:match("^/api/process/(%d+)$")))
  if pid then
    return response(200, "application/json", process_view(pid, q), head_only)
  end
  local a, b, c, d = path:match("^/api/conversation/(%d+)/([^/]+)/(%d+)/([^/]+)$")
  a, c = math.tointeger(tonumber(a)), math.tointeger(tonumber(c))
  if a and c then
    return response(200, "application/json",
      conversation_view(a, unescape(b), c, unescape(d), q), head_only)
  end
  return error_response(404, "no such page: " .. path, head_only)
end

local conn_count = 0

-- One HTTP connection: parse one request, answer it, go (the manager
-- flushes and closes).  /events stays, pushing a snapshot every PUSH_MS
-- while the page reads: while tcp's backpressure is published (the page
-- reads slower than we push), pushes are skipped, not queued.
local function connection(remote, here, info, loopback_only)
  conn_count = conn_count + 1
  local id = conn_count
  return function()
    local parser = http.request(M.MAX_REQUEST)
    local function out(s) return market.send(tcp.channel(here, remote, s)) end
    local paused, streaming, label = false, false, { "market-inspector", id }
    local deadline = { "market-inspector request", id }

    local function push()
      sweep(false)
      return out("data: " .. snapshot_text(info) .. "\n\n")
    end

    -- The last actions: the answer (nil: none), the timers dropped, gone.
    local function finish(answer)
      return T(answer, market.send(timer.cancel(label)), market.send(timer.cancel(deadline)),
               market.quit())
    end
    local function stop() return finish() end

    -- /events: the head, a snapshot now and one every PUSH_MS.
    local function stream()
      streaming = true
      P(market.send(timer.cancel(deadline)))
      -- On before the first push (the server's count of viewers, which
      -- turns it off after the last, hears of this one only later).
      detail(true)
      P(market.observe_publishers(tcp.backpressure(here, remote), {
          name = "backpressure",
          on_presence = function() paused = true end,
          on_absence = function() paused = false end }),
        market.publisher(viewer(id), "viewer"),
        market.subscriber(timer.expired(label, _), {
          name = "tick",
          on_message = function() if not paused then return T(push()) end end }),
        out(EVENTS_HEAD .. "retry: 1000\n\n"),
        push(),
        market.send(timer.every(label, M.PUSH_MS)))
    end

    return market.transition(nil,
      market.subscriber(tcp.channel(remote, here, _), {
        name = "in",
        on_message = function(_, m)
          if not tcp.channel:is(m) then return end   -- send(market._): no bytes
          local data = m.subpacket
          if streaming then       -- the page closing its side ends the stream
            if data == market.EOF then return stop() end
            return
          end
          local done, why, status = parser:feed(data == market.EOF and "" or data)
          if done == false then
            if data == market.EOF then return finish() end   -- gone mid-request
            return
          end
          if not done then
            return finish(out(error_response(status, why)))
          end
          local ok, r = pcall(route, parser:message(), info, loopback_only)
          if not ok then
            market.log.error("market.inspect: %s", r)
            return finish(out(error_response(500, "the inspector failed; see the program's log")))
          end
          if r == "events" then return stream() end
          return finish(out(r))
        end,
        on_absence = stop }),
      market.publisher(tcp.channel(here, remote, _), { name = "out", on_absence = stop }),
      market.subscriber(timer.expired(deadline, _), {
        name = "deadline",
        on_message = function()
          if streaming then return end
          return finish(out(error_response(408, ("no whole request within %d ms")
                                                :format(M.REQUEST_TIMEOUT_MS))))
        end }),
      market.send(timer.set(deadline, M.REQUEST_TIMEOUT_MS, "relative")),
      -- The program stops: an /events stream would otherwise hold the
      -- drain (docs/semantics.md) for its whole time, a page never ending
      -- it; a request not yet whole is not worth the wait either.
      market.subscriber(market.ground.stopping(_), { name = "stopping", on_presence = stop }))
  end
end

-- server([addr [, on_listening]]): the inspector's boot function (a
-- host spawns it: mk_host_inspect); start(...) the action that spawns it
-- as a process named "inspector".  It serves on addr ("[HOST:]PORT", or a port number; default
-- "127.0.0.1:0": loopback, a port the kernel picks).  Once it listens it
-- publishes inspect.listening(url) and calls on_listening(url); if it
-- cannot listen, on_listening(nil, why) and it quits.  It stops with the
-- program (market.ground.stopping).
local servers = 0

local function server(addr, on_listening, fname)
  local host, port = M.parse_address(addr == nil and "127.0.0.1:0" or addr, true)
  if not host then error(fname .. ": " .. port, 3) end
  if on_listening ~= nil and type(on_listening) ~= "function" then
    error(fname .. ": on_listening must be a function, got " .. type(on_listening), 3)
  end
  -- The tcp driver shares one socket among the observers of one listener
  -- term: on port 0, tcp.listener(tcp.address(host, 0)) would be the
  -- program's own "any port" listener, or another inspector's.  A handle
  -- in the port field gets a socket (and a port) of this server's own.
  servers = servers + 1
  local here = tcp.listener(tcp.address(host, port ~= 0 and port or
                                        tcp.handle("market-inspector " .. servers)))
  local loopback_only = is_loopback(host)
  local info = { url = nil }
  local viewers = 0
  -- On a port given, `here` is the term a program uses for its own
  -- listener on that address, and the driver would give both one socket:
  -- every connection to both.  So an observer of its connections other
  -- than our "accept" ends the inspector, as a port in use would.  They
  -- are watched as the driver watches listeners, through a pattern with a
  -- wildcard listener, so that the role each presence shows keeps its own
  -- listener field: `here` for a program's listener, a wildcard for a
  -- monitor of every listener's connections, for which the driver opens
  -- no socket (through tcp.channel(_, here, _) both showed `here`).
  local acceptors = 0
  local shared = port ~= 0 and ("%s: the program accepts connections there too " ..
    "(it observes tcp.channel(_, %s, _)): the inspector needs an address of its own")
    :format(host_port(host, port), market.repr(here))
  local function accepts_here(role)      -- an observer of connections to `here`
    return role.interest == "observer" and role.topic.destination == here
  end

  return function()
    local function told(url, why)
      if on_listening then on_listening(url, why) end
    end
    return market.transition(nil,
      -- First: the listener takes the settings published when it starts.
      tcp.options(here, { max_connections = M.MAX_CONNECTIONS, idle_timeout = M.IDLE_TIMEOUT_MS },
                  "limits"),
      market.observe_publishers(tcp.channel(_, here, _), {
        name = "accept",
        on_presence = function(_, role)
          local remote = role.topic.source
          return T(market.spawn(connection(remote, here, info, loopback_only),
                                { name = ("inspector %s:%s"):format(remote.host, remote.port) }))
        end }),
      market.subscriber(tcp.listening(here.port, _), {
        name = "listening",
        on_presence = function(_, role)
          -- A listener that failed shows itself with no port, then goes
          -- with the reason (on_absence).
          if math.type(role.topic.bound_port) ~= "integer" then return end
          info.url = url_of(host, role.topic.bound_port)
          told(info.url)
          return T(market.publisher(listening(info.url), "url"))
        end,
        on_absence = function(_, _, why)
          if why then
            -- Told only of a listener that never listened: one that did
            -- goes when the program does (the tcp driver's "exit"), and
            -- on_listening's NULL means "cannot listen" (docs/embedding.md).
            if not info.url then told(nil, why) end
            return T(market.quit(nil, why))
          end
        end }),
      shared and market.observe_subscribers_everything(tcp.channel(_, tcp.listener(_), _), {
        name = "acceptors",
        on_presence = function(_s, role)
          if not accepts_here(role) then return end
          acceptors = acceptors + 1
          if acceptors > 1 then
            told(nil, shared)
            return T(market.quit(nil, shared))
          end
        end,
        on_absence = function(_s, role)
          if accepts_here(role) then acceptors = acceptors - 1 end
        end }),
      market.observe_publishers(viewer(_), {
        name = "viewers",
        on_presence = function()
          viewers = viewers + 1
          if viewers == 1 then detail(true) end
        end,
        on_absence = function()
          viewers = viewers - 1
          if viewers == 0 then detail(false); sweep(true) end
        end }),
      market.subscriber(timer.expired(SWEEP, _), {
        name = "sweep",
        on_message = function()
          local due = sweep(false)
          if due then return T(arm_sweep(due)) end
        end }),
      market.subscriber(market.ground.stopping(_), {
        name = "stopping",
        on_presence = function() sweep(true); return T(market.quit()) end }))
  end
end

function M.server(addr, on_listening)
  return server(addr, on_listening, "market.inspect.server")
end

function M.start(addr, on_listening)
  return market.spawn(server(addr, on_listening, "market.inspect.start"), { name = "inspector" })
end

-- ---- the client: market inspect HOST:PORT --------------------------------

-- A JSON reader for the snapshot (what runtime/json.c writes: RFC 8259).
-- null reads as nil.  Raises on malformed text, and on arrays and objects
-- nested deeper than MAX_JSON_DEPTH: a snapshot's deepest (VMs 1,000
-- levels down, topics as deep as the term depth limit allows) is far
-- less, and an answer of five million "[" ran the Lua stack out ("stack
-- overflow", at a line of this file).
local MAX_JSON_DEPTH = 50000
local function decode(s)
  local i, value, depth = 1, nil, 0
  local ESC = { ['"'] = '"', ["\\"] = "\\", ["/"] = "/", b = "\b", f = "\f", n = "\n", r = "\r", t = "\t" }
  local function ws() i = s:find("[^ \t\r\n]", i) or #s + 1 end
  local function bad(what) error(("market inspect: bad JSON at byte %d: %s"):format(i, what), 0) end
  local function str()
    local parts, j = {}, i + 1
    while true do
      local k = s:find('["\\]', j)
      if not k then bad("unterminated string") end
      parts[#parts + 1] = s:sub(j, k - 1)
      if s:sub(k, k) == '"' then i = k + 1; return table.concat(parts) end
      local e = s:sub(k + 1, k + 1)
      if e == "u" then
        local cp = tonumber(s:sub(k + 2, k + 5), 16) or bad("bad \\u escape")
        j = k + 6
        if cp >= 0xD800 and cp < 0xDC00 and s:sub(j, j + 1) == "\\u" then
          local lo = tonumber(s:sub(j + 2, j + 5), 16) or bad("bad \\u escape")
          cp, j = 0x10000 + (cp - 0xD800) * 0x400 + (lo - 0xDC00), j + 6
        end
        parts[#parts + 1] = utf8.char(cp)
      else
        parts[#parts + 1] = ESC[e] or bad("bad escape")
        j = k + 2
      end
    end
  end
  function value()
    ws()
    local c = s:sub(i, i)
    if c == "{" or c == "[" then
      local t, close, n = {}, c == "{" and "}" or "]", 0
      depth = depth + 1
      if depth > MAX_JSON_DEPTH then bad(("nested deeper than %d levels"):format(MAX_JSON_DEPTH)) end
      i = i + 1
      ws()
      if s:sub(i, i) == close then i, depth = i + 1, depth - 1; return t end
      while true do
        if close == "}" then
          ws()
          if s:sub(i, i) ~= '"' then bad("expected a key") end
          local k = str()
          ws()
          if s:sub(i, i) ~= ":" then bad("expected ':'") end
          i = i + 1
          t[k] = value()
        else
          n = n + 1
          t[n] = value()
        end
        ws()
        c = s:sub(i, i)
        i = i + 1
        if c == close then depth = depth - 1; return t end
        if c ~= "," then bad("expected ',' or '" .. close .. "'") end
      end
    elseif c == '"' then return str()
    elseif s:sub(i, i + 3) == "true" then i = i + 4; return true
    elseif s:sub(i, i + 4) == "false" then i = i + 5; return false
    elseif s:sub(i, i + 3) == "null" then i = i + 4; return nil
    end
    local num = s:match("^-?%d+%.?%d*[eE]?[-+]?%d*", i)
    if not num or not tonumber(num) then bad("expected a value") end
    i = i + #num
    return math.tointeger(tonumber(num)) or tonumber(num)
  end
  local v = value()
  ws()
  if i <= #s then bad("text after the value") end
  return v
end

-- A name as a line of text shows it (json.h, mk_jbuf_addname): control
-- bytes as \n, \r, \t or \xHH.  What the answer holds is another
-- program's, or any server's: none of it may break a row or drive the
-- terminal.
local function name_text(s)
  return (tostring(s):gsub("[%c\127]", function(c)
    if c == "\n" then return "\\n" elseif c == "\r" then return "\\r"
    elseif c == "\t" then return "\\t" end
    return ("\\x%02x"):format(c:byte())
  end))
end

-- A string as market.repr writes it (term.c, addquoted): printable ASCII
-- stays, but for " and \\; every other byte is escaped, C1 controls and
-- the bytes of UTF-8 text too.
local ESCAPES = { ['"'] = '\\"', ["\\"] = "\\\\", ["\n"] = "\\n", ["\t"] = "\\t", ["\r"] = "\\r" }
local function quoted(s)
  return '"' .. s:gsub('[\0\1-\31"\\\127-\255]', function(c)
    return ESCAPES[c] or ("\\x%02x"):format(c:byte())
  end) .. '"'
end

-- A record's label bare, as market.repr writes one that reads back as
-- itself (term.c, barelabel); any other as a string.
local function label_text(l)
  if type(l) ~= "string" then l = tostring(l) end
  if l ~= "" and not l:find('[\0\1- ()%[%],"\127-\255]') then return l end
  return quoted(l)
end

-- A term in its JSON form (docs/inspect.md, "Terms in JSON") as traces
-- and market.repr show it: label(fields), [items], "text", _.  What the
-- JSON form does not keep stays lost (a float with an integer's value is
-- an integer there, a label's bytes that are not UTF-8 are U+FFFD), and
-- what no term has the form of (an answer may be any server's) is shown
-- quoted, escaped as a string is.
local function term_text(t)
  local ty = type(t)
  if t == nil then return "nil" end
  if ty == "boolean" then return tostring(t) end
  if math.type(t) == "integer" then return ("%d"):format(t) end
  if ty == "number" then          -- term.c, addfloat: a float reads back as a float
    local f = ("%.17g"):format(t)
    return f:find("^[-0-9]+$") and f .. ".0" or f
  end
  if ty == "string" then return quoted(t) end
  if ty ~= "table" then return quoted(tostring(t)) end
  if t.wildcard == true then return "_" end
  if t.eof == true then return "#eof" end
  if type(t.bytes) == "string" then
    local raw = #t.bytes % 2 == 0 and t.bytes:find("^%x*$") and
      t.bytes:gsub("%x%x", function(h) return string.char(tonumber(h, 16)) end)
    return quoted(raw or t.bytes)
  end
  if t.float == "nan" or t.float == "inf" or t.float == "-inf" then return t.float end
  if t.cut ~= nil then            -- market.repr's text already, cut short
    return (tostring(t.cut):gsub("[^\32-\126]", function(c) return ("\\x%02x"):format(c:byte()) end))
  end
  local items = {}
  for k, v in ipairs(t.fields or t) do items[k] = term_text(v) end
  if t.record ~= nil then return label_text(t.record) .. "(" .. table.concat(items, ", ") .. ")" end
  return "[" .. table.concat(items, ", ") .. "]"
end

local function cut(s, n)
  s = name_text(s)
  return #s > n and s:sub(1, n - 1) .. "~" or s
end

-- The snapshot as rows like ps's, nested VMs after their process.
local function print_tree(snap, write)
  write(("%-12s %6s  %-22s %-9s %6s %6s %4s %4s  %s\n"):format(
    "VM", "PID", "NAME", "KIND", "QUEUED", "ACTS", "EPS", "CONV", "TOPICS"))
  local function vm_rows(vm)
    local convs = {}
    for _, c in ipairs(vm.conversations or {}) do
      for _, side in ipairs { c.publisher, c.subscriber } do
        convs[side.pid] = (convs[side.pid] or 0) + 1
      end
    end
    for _, p in ipairs(vm.processes or {}) do
      local topics, seen = {}, {}
      for _, e in ipairs(p.endpoints or {}) do
        local text = term_text(e.topic)
        if not seen[text] then seen[text] = true; topics[#topics + 1] = text end
      end
      write(("%-12s %6d  %-22s %-9s %6d %6s %4d %4d  %s\n"):format(
        cut(vm.path, 12), p.pid, cut(p.name or "-", 22), cut(p.kind, 9), p.queued or 0,
        p.activations and tostring(p.activations) or "-",
        #(p.endpoints or {}) +
          (math.type(p.endpoints_omitted) == "integer" and p.endpoints_omitted or 0),
        convs[p.pid] or 0, table.concat(topics, " ")))
      if p.vm then vm_rows(p.vm) end
    end
    if math.type(vm.omitted) == "integer" and vm.omitted > 0 then
      write(("%-12s %6s  %d more processes not shown\n"):format(cut(vm.path, 12), "...", vm.omitted))
    end
    if math.type(vm.conversations_omitted) == "integer" and vm.conversations_omitted > 0 then
      write(("%-12s %6s  %d more conversations not counted in CONV\n"):format(cut(vm.path, 12), "...",
                                                                        vm.conversations_omitted))
    end
  end
  vm_rows(snap.vm)
end

-- ps(): this program's processes as `market inspect` prints another's,
-- one row each (the lowest MAX_PROCESSES pids): the text, without its
-- last newline, for print() or the prompt of `market -i`.  Through the
-- JSON the inspector serves, so that the rows are the command's.
function M.ps()
  local rows = {}
  print_tree(decode(json(snapshot())), function(s) rows[#rows + 1] = s end)
  return (table.concat(rows):gsub("\n$", ""))
end

-- The most of an answer M.cli reads (an inspector's snapshot is bounded;
-- 1 GiB, before, let any server that answered make the client hold that
-- much).
local CLI_MAX = 64 << 20

-- cli(addr): the boot function of `market inspect HOST:PORT`: fetch
-- /api/snapshot and print it; exit 1 (a message on stderr) when there is
-- nothing to fetch, or no whole answer within CLI_TIMEOUT_MS (a port that
-- takes the connection and says nothing, an inspector stopped with
-- SIGSTOP: the connect alone would wait forever).
function M.cli(addr)
  local host, port = M.parse_address(addr)
  local failed = false
  local function fail(why, status)
    if failed then return end      -- both flows go when a connect fails
    failed = true
    io.stderr:write("market inspect: ", why, "\n")
    return T(market.exit(status or 1))
  end
  -- A bad address is a usage error, as it is for --inspect; so is port 0,
  -- which a listener may take but nothing can be reached at.
  if not host then return fail(port .. " (try market --help)", 2) end
  if port == 0 then
    return fail(("bad address %q: a client needs a PORT 1..65535 (try market --help)"):format(addr), 2)
  end
  local a, h = tcp.address(host, port), tcp.handle("market-inspect")
  local parser = http.response(CLI_MAX)
  local where = host_port(host, port)
  local function got(data)
    local done, why = parser:feed(data)
    if done == false then
      if data == "" then return fail(("%s closed the connection mid-response"):format(where)) end
      return
    end
    if not done then return fail(("%s: bad HTTP response: %s"):format(where, why)) end
    local r = parser:message()
    if r.status ~= 200 then
      return fail(("%s answered %d %s"):format(where, r.status, r.reason))
    end
    local ok, snap = pcall(decode, r.body)
    if not ok or type(snap) ~= "table" or type(snap.vm) ~= "table" then
      return fail(("%s: not a snapshot: %s"):format(where, ok and "no vm" or snap))
    end
    -- JSON of another shape (a process without a pid, say) is an answer
    -- that is not an inspector's, not a crash: the rows are made first,
    -- so that nothing of a table cut short is printed.
    local rows = {}
    ok, why = pcall(print_tree, snap, function(s) rows[#rows + 1] = s end)
    if not ok then
      return fail(("%s: not a snapshot: %s"):format(where, tostring(why):gsub("^[^:]*:%d+: ", "")))
    end
    io.stdout:write(table.concat(rows))
    io.stdout:flush()
    return T(market.quit())
  end
  local deadline = math.floor(market.monotonic()) + M.CLI_TIMEOUT_MS
  return market.transition(nil,
    market.subscriber(market.ground.monotonic_alarm(deadline), {
      name = "deadline",
      on_message = function()
        return fail(("no answer from http://%s/api/snapshot in %g s"):format(where,
                                                                            M.CLI_TIMEOUT_MS / 1000))
      end }),
    market.subscriber(tcp.channel(a, h, _), {
      name = "in",
      on_message = function(_, m)
        if not tcp.channel:is(m) then return end     -- send(market._): no bytes
        return got(m.subpacket == market.EOF and "" or m.subpacket)
      end,
      on_absence = function(_, _, why)
        if why then return fail(("cannot fetch http://%s/api/snapshot: %s"):format(where, why)) end
      end }),
    market.publisher(tcp.channel(h, a, _), {
      name = "out",
      on_presence = function()
        return T(market.send(tcp.channel(h, a,
          ("GET /api/snapshot HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n"):format(where))))
      end }))
end

-- ---- the page ---------------------------------------------------------------

PAGE = [==[
<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>market inspector</title>
<style>
:root { --bg:#f6f7f9; --panel:#fff; --ink:#1d2330; --dim:#6b7385; --line:#e3e6ec;
        --accent:#2f6fde; --pub:#b8570f; --sub:#1f7a4d; --sel:#e8f0fe; }
* { box-sizing: border-box; }
body { margin:0; font:13px/1.4 system-ui, -apple-system, "Segoe UI", sans-serif; background:var(--bg); color:var(--ink); }
header { display:flex; align-items:center; gap:16px; padding:10px 18px; background:#1d2330; color:#fff; position:sticky; top:0; z-index:2; }
header h1 { font-size:16px; margin:0; font-weight:600; letter-spacing:.2px; }
header .url { color:#aab3c5; font-family:ui-monospace, monospace; }
header .stats { color:#d5dae4; margin-left:auto; white-space:nowrap; }
#live { display:inline-block; width:9px; height:9px; border-radius:50%; background:#999; margin-right:6px; vertical-align:middle; }
#live.on { background:#34c26a; box-shadow:0 0 6px #34c26a; }
#filter { width:240px; padding:5px 9px; border-radius:6px; border:1px solid #3a4356; background:#2a3242; color:#fff; font:inherit; }
main { display:grid; grid-template-columns: minmax(0,3fr) minmax(0,2fr); gap:14px; padding:14px 18px; }
section { background:var(--panel); border:1px solid var(--line); border-radius:8px; overflow:hidden; }
section h2 { margin:0; padding:8px 12px; font-size:12px; text-transform:uppercase; letter-spacing:.6px; color:var(--dim); border-bottom:1px solid var(--line); background:#fafbfc; display:flex; gap:8px; }
section h2 .count { margin-left:auto; text-transform:none; letter-spacing:0; }
.scroll { max-height:calc(100vh - 150px); overflow:auto; }
table { border-collapse:collapse; width:100%; }
th, td { text-align:left; padding:4px 8px; border-bottom:1px solid var(--line); vertical-align:top; }
th { font-weight:600; color:var(--dim); font-size:11px; position:sticky; top:0; background:#fff; }
td.n, th.n { text-align:right; font-variant-numeric: tabular-nums; }
tr.vm td { background:#eef1f6; font-weight:600; color:#39425a; }
tr.proc, tr.conv { cursor:pointer; }
tr.proc:hover, tr.conv:hover { background:#f3f6fb; }
tr.selected { background:var(--sel) !important; }
.mono, .topic { font-family:ui-monospace, "DejaVu Sans Mono", monospace; font-size:12px; }
.ep { display:block; white-space:nowrap; overflow:hidden; text-overflow:ellipsis; max-width:22vw; }
#convs, #res { table-layout:fixed; }
#convs td, #res td { overflow:hidden; text-overflow:ellipsis; overflow-wrap:anywhere; }
.convs-topic { white-space:nowrap; }
.o-publisher { color:var(--pub); } .o-subscriber { color:var(--sub); }
.tag { display:inline-block; padding:0 5px; border-radius:4px; background:#eef1f6; color:#4a5368; font-size:11px; margin-right:4px; }
.kind { color:var(--dim); }
.dim { color:var(--dim); }
#side { display:flex; flex-direction:column; gap:14px; }
#detail { grid-column:1 / -1; }
#detail .body { padding:10px 12px; }
#detail pre { margin:0; }
.bar { display:inline-block; height:8px; background:var(--accent); border-radius:2px; vertical-align:middle; margin-right:6px; opacity:.7; }
.empty { padding:10px 12px; color:var(--dim); }
</style>
</head>
<body>
<header>
  <h1><span id="live"></span>market inspector</h1>
  <span class="url" id="where"></span>
  <input id="filter" placeholder="filter: name, pid, topic, kind" autocomplete="off">
  <span class="stats" id="summary" data-processes="0" data-conversations="0">connecting...</span>
</header>
<main>
  <section>
    <h2>Processes <span class="count" id="pcount"></span></h2>
    <div class="scroll"><table id="procs"><thead><tr>
      <th class="n">PID</th><th>Name</th><th>Kind</th><th>Endpoints</th>
      <th class="n">Queued</th><th class="n">Acts</th><th class="n">CPU&nbsp;ms</th><th class="n">Memory</th>
    </tr></thead><tbody></tbody></table></div>
  </section>
  <div id="side">
    <section>
      <h2>Conversations <span class="count" id="ccount"></span></h2>
      <div class="scroll" style="max-height:calc(55vh - 80px)"><table id="convs"><thead><tr>
        <th style="width:28%">Publisher</th><th style="width:28%">Subscriber</th><th>Topic</th><th class="n" style="width:10%">Msgs</th><th class="n" style="width:11%">Rate/s</th>
      </tr></thead><tbody></tbody></table></div>
    </section>
    <section>
      <h2>Resources</h2>
      <div class="scroll" style="max-height:calc(45vh - 100px)"><table id="res"><thead><tr>
        <th style="width:36%">Resource</th><th>Process</th><th class="n" style="width:13%">In</th><th class="n" style="width:13%">Out</th><th class="n" style="width:14%">Buffered</th>
      </tr></thead><tbody></tbody></table></div>
    </section>
  </div>
  <section id="detail" hidden>
    <h2><span id="dtitle"></span><span class="count"><a href="#" id="dclose">close</a></span></h2>
    <div class="body" id="dbody"></div>
  </section>
</main>
<script>
"use strict";
const $ = (id) => document.getElementById(id);
const esc = (s) => String(s).replace(/[&<>"']/g, (c) => ({"&":"&amp;","<":"&lt;",">":"&gt;","\"":"&quot;","'":"&#39;"}[c]));
const dash = (v) => (v === undefined || v === null) ? "-" : v;
function bytes(v) {
  if (v === undefined || v === null) return "-";
  if (v < 1024) return v + " B";
  if (v < 1048576) return (v / 1024).toFixed(1) + " KiB";
  return (v / 1048576).toFixed(1) + " MiB";
}
function term(t) {
  if (t === null || t === undefined) return "nil";
  if (typeof t === "string") return JSON.stringify(t);
  if (typeof t !== "object") return String(t);
  if (Array.isArray(t)) return "[" + t.map(term).join(", ") + "]";
  if (t.wildcard) return "_";
  if (t.eof) return "#eof";
  if (t.bytes !== undefined) return "#x" + t.bytes;
  if (t.float !== undefined) return t.float;
  if (t.cut !== undefined) return t.cut;
  if (t.record !== undefined) return t.record + "(" + (t.fields || []).map(term).join(", ") + ")";
  return JSON.stringify(t);
}
let snap = null, prevCounts = new Map(), prevTime = null, rates = new Map(), selected = null, detailTimer = null;
function matches(text) {
  const f = $("filter").value.trim().toLowerCase();
  return !f || text.toLowerCase().includes(f);
}
function eachVM(vm, depth, fn) {
  fn(vm, depth);
  for (const p of vm.processes || []) if (p.vm) eachVM(p.vm, depth + 1, fn);
}
function procName(vm, pid) {
  for (const p of vm.processes || []) if (p.pid === pid) return p.name || "";
  return "";
}
function endpointOf(vm, pid, name) {
  for (const p of vm.processes || []) if (p.pid === pid)
    for (const e of p.endpoints || []) if (e.name === name && e.level === 0) return e;
  return null;
}
function convKey(vm, c) {
  return JSON.stringify([vm.path, c.publisher.pid, c.publisher.endpoint, c.subscriber.pid, c.subscriber.endpoint]);
}
function render() {
  if (!snap) return;
  let procRows = [], convRows = [], resRows = [], np = 0, nc = 0;
  const conns = (snap.drivers && snap.drivers.tcp && snap.drivers.tcp.connections) || [];
  const connBy = new Map();
  // A connection's counters go with its manager process: by pid, or by name.
  for (const c of conns) {
    if (c.pid !== undefined) connBy.set("pid " + c.pid, c);
    if (c.name !== undefined) connBy.set("name " + c.name, c);
  }
  eachVM(snap.vm, 0, (vm, depth) => {
    procRows.push(`<tr class="vm"><td colspan="8" style="padding-left:${10 + depth * 18}px">VM ${esc(vm.path)} <span class="dim">(${(vm.processes || []).length} processes${vm.omitted ? `, ${vm.omitted} more not shown` : ""}, ${vm.queued} queued)</span></td></tr>`);
    for (const p of vm.processes || []) {
      const eps = (p.endpoints || []).map((e) =>
        `<span class="ep"><span class="o-${esc(e.orientation)}">${e.orientation === "publisher" ? "pub" : "sub"}</span>` +
        `${e.interest !== "participant" ? ` <span class="tag">${esc(e.interest)}</span>` : ""}` +
        `${e.level ? ` <span class="tag">up ${e.level}</span>` : ""} <span class="topic" title="${esc(e.name)}: ${esc(term(e.topic))}">${esc(term(e.topic))}</span></span>`).join("");
      const text = [vm.path, p.pid, p.name || "", p.kind, eps].join(" ");
      if (!matches(text)) continue;
      np++;
      const sel = selected && selected.type === "p" && selected.vm === vm.path && selected.pid === p.pid;
      procRows.push(`<tr class="proc${sel ? " selected" : ""}" data-vm="${esc(vm.path)}" data-pid="${p.pid}" data-name="${esc(p.name || "")}">` +
        `<td class="n mono" style="padding-left:${10 + depth * 18}px">${p.pid}</td><td>${esc(p.name || "-")}</td><td class="kind">${esc(p.kind)}</td>` +
        `<td>${eps || '<span class="dim">none</span>'}${p.endpoints_omitted ? ` <span class="dim">${p.endpoints_omitted} more not shown</span>` : ""}</td><td class="n">${p.queued}</td><td class="n">${dash(p.activations)}</td>` +
        `<td class="n">${p.cpu_ms === undefined ? "-" : Number(p.cpu_ms).toFixed(1)}</td><td class="n">${bytes(p.memory)}</td></tr>`);
      const where = esc(vm.path + " #" + p.pid);
      if (/^tcp-listener /.test(p.name || "")) resRows.push([`listener ${esc(p.name.slice(13))}`, where, "-", "-", "-", text]);
      else if (/^udp /.test(p.name || "")) resRows.push([`UDP socket ${esc(p.name.slice(4))}`, where, "-", "-", "-", text]);
      else if (p.kind === "tcp") {
        const c = connBy.get("pid " + p.pid) || connBy.get("name " + p.name) || {};
        const tls = c.tls ? ` <span class="tag">${esc(c.tls)}</span>` +
          (c.peer_subject ? ` <span class="tag" title="${esc(c.peer_fingerprint || "")}">${esc(c.peer_subject)}</span>` : "") : "";
        resRows.push([`connection ${esc((p.name || "").replace(/^tcp /, ""))}${tls}`, where, bytes(c.bytes_in), bytes(c.bytes_out), bytes(c.buffered), text + (c.tls ? " " + c.tls : "") + (c.peer_subject ? " " + c.peer_subject : "")]);
      }
    }
    for (const c of vm.conversations || []) {
      const pe = endpointOf(vm, c.publisher.pid, c.publisher.endpoint);
      const topic = pe ? term(pe.topic) : "";
      const pub = `#${c.publisher.pid} ${procName(vm, c.publisher.pid)}:${c.publisher.endpoint}`;
      const sub = `#${c.subscriber.pid} ${procName(vm, c.subscriber.pid)}:${c.subscriber.endpoint}`;
      if (!matches([vm.path, pub, sub, topic].join(" "))) continue;
      nc++;
      const k = convKey(vm, c), r = rates.get(k);
      const sel = selected && selected.type === "c" && selected.key === k;
      convRows.push(`<tr class="conv${sel ? " selected" : ""}" data-key="${esc(k)}" data-topic="${esc(topic)}">` +
        `<td><span class="o-publisher">${esc(pub)}</span>${vm.path !== "ground" ? ` <span class="tag">${esc(vm.path)}</span>` : ""}</td>` +
        `<td><span class="o-subscriber">${esc(sub)}</span></td><td class="topic convs-topic" title="${esc(topic)}">${esc(topic)}</td>` +
        `<td class="n">${dash(c.messages)}</td><td class="n">${r === undefined ? "-" : `<span class="bar" style="width:${Math.min(40, 4 + r * 2)}px"></span>${r.toFixed(1)}`}</td></tr>`);
    }
  });
  const timer = snap.drivers && snap.drivers.timer;
  if (timer) resRows.push([`timers${timer.pending !== undefined ? ": " + timer.pending + " pending" : ""}`, "timer-driver", "-", "-", "-", "timer"]);
  $("procs").tBodies[0].innerHTML = procRows.join("");
  $("convs").tBodies[0].innerHTML = convRows.join("") || `<tr><td colspan="5" class="empty">no conversations</td></tr>`;
  $("res").tBodies[0].innerHTML = resRows.filter((r) => matches(r[5])).map((r) =>
    `<tr><td>${r[0]}</td><td class="mono">${r[1]}</td><td class="n">${r[2]}</td><td class="n">${r[3]}</td><td class="n">${r[4]}</td></tr>`).join("") ||
    `<tr><td colspan="5" class="empty">none</td></tr>`;
  $("pcount").textContent = np + " shown";
  $("ccount").textContent = nc + " shown";
  let total = 0, convs = 0, omitted = 0, comitted = 0;
  eachVM(snap.vm, 0, (vm) => { total += (vm.processes || []).length; convs += (vm.conversations || []).length; omitted += vm.omitted || 0; comitted += vm.conversations_omitted || 0; });
  const s = $("summary");
  s.dataset.processes = total; s.dataset.conversations = convs; s.dataset.time = snap.time;
  const mem = snap.memory;
  s.dataset.memory = mem ? mem.used : "";
  s.textContent = `${total} processes${omitted ? ` (${omitted} more not shown)` : ""} · ${convs} conversations${comitted ? ` (${comitted} more not shown)` : ""}` +
    (mem ? ` · memory ${bytes(mem.used)}${mem.limit ? ` of ${bytes(mem.limit)}` : ""}` : "") +
    ` · ${new Date(snap.time).toISOString().slice(11, 19)} UTC`;
}
function update(s) {
  const now = s.time, counts = new Map();
  eachVM(s.vm, 0, (vm) => { for (const c of vm.conversations || []) if (c.messages !== undefined) counts.set(convKey(vm, c), c.messages); });
  rates = new Map();
  if (prevTime !== null && now > prevTime)
    for (const [k, n] of counts) if (prevCounts.has(k)) rates.set(k, Math.max(0, n - prevCounts.get(k)) * 1000 / (now - prevTime));
  prevCounts = counts; prevTime = now; snap = s;
  if (s.inspector && s.inspector.url) $("where").textContent = s.inspector.url;
  render();
}
function eventRows(events) {
  if (!events.length) return `<div class="empty">no events yet</div>`;
  return `<table><thead><tr><th>Time</th><th>Process</th><th>Kind</th><th>Endpoint</th><th>Term</th></tr></thead><tbody>` +
    events.slice().reverse().map((e) => `<tr><td class="mono">${esc((e.time || "").slice(11, 23))}</td><td>#${e.pid} ${esc(e.name || "")}</td>` +
      `<td>${esc(e.kind)}</td><td>${esc(e.endpoint || "")}</td><td class="topic">${esc(e.message !== undefined ? term(e.message) : e.topic !== undefined ? term(e.topic) : e.reason !== undefined ? term(e.reason) : "")}</td></tr>`).join("") +
    `</tbody></table>`;
}
function showDetail() {
  const sel = selected;
  if (!sel) return;
  fetch(sel.url).then((r) => r.json()).then((d) => {
    if (selected !== sel) return;      // another view was opened meanwhile
    let head;
    if (sel.type === "p") {
      const p = d.process;
      $("dtitle").textContent = p ? `process ${d.vm} #${d.pid} ${p.name || ""} (${p.kind})` : `process ${d.vm} #${d.pid}: gone`;
      head = p ? `<p class="dim">${(p.endpoints || []).length + (p.endpoints_omitted || 0)} endpoints, ${p.queued} queued, ${dash(p.activations)} activations</p>` : "";
    } else {
      $("dtitle").textContent = `conversation #${d.publisher.pid} ${d.publisher.process || ""}:${d.publisher.endpoint} → #${d.subscriber.pid} ${d.subscriber.process || ""}:${d.subscriber.endpoint}`;
      head = `<p class="topic">${esc(term(d.publisher.topic))} ⟷ ${esc(term(d.subscriber.topic))}</p>`;
    }
    if (d.dropped) head += `<p class="dim">${d.dropped} events came and went between two looks: not shown</p>`;
    $("dbody").innerHTML = head + (d.recording ? eventRows(d.events || []) :
      `<div class="empty">recent events cannot be recorded: see the program's log</div>`);
  }).catch(() => {});
}
function select(sel) {
  selected = sel;
  clearInterval(detailTimer);
  $("detail").hidden = !sel;
  if (sel) { showDetail(); detailTimer = setInterval(showDetail, 1000); }
  render();
}
$("procs").addEventListener("click", (ev) => {
  const tr = ev.target.closest("tr.proc");
  if (!tr) return;
  const vm = tr.dataset.vm, pid = Number(tr.dataset.pid);
  select({ type: "p", vm, pid, url: `/api/process/${pid}?vm=${encodeURIComponent(vm)}` });
});
$("convs").addEventListener("click", (ev) => {
  const tr = ev.target.closest("tr.conv");
  if (!tr) return;
  const [vm, pp, pe, sp, se] = JSON.parse(tr.dataset.key);
  select({ type: "c", key: tr.dataset.key,
           url: `/api/conversation/${pp}/${encodeURIComponent(pe)}/${sp}/${encodeURIComponent(se)}?vm=${encodeURIComponent(vm)}` });
});
$("dclose").addEventListener("click", (ev) => { ev.preventDefault(); select(null); });
$("filter").addEventListener("input", render);
fetch("/api/snapshot").then((r) => r.json()).then(update).catch(() => {});
const es = new EventSource("/events");
es.onopen = () => $("live").classList.add("on");
es.onerror = () => $("live").classList.remove("on");
es.onmessage = (ev) => update(JSON.parse(ev.data));
</script>
</body>
</html>
]==]

return M

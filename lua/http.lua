-- market.http: HTTP/1.1 over market.tcp's connection objects, for
-- straight-line code (the user's view is docs/http.md).
--
-- http.serve(port, handler [, settings]) runs a tcp.serve whose sessions
-- read requests with the parser of lua/lhttp.c (Node's http_parser),
-- call handler(req) for each (once the head is whole, with stream_body:
-- the handler reads the body as it comes), and write what it returns; a
-- connection keeps alive between requests, pipelined ones included.
-- http.request(url [, options]) makes one request and returns the
-- response; the connection is kept for the process's next request to the
-- same server (keep_alive ms), redirects are followed if asked, the
-- request's body may come from a function as it is sent, and the
-- response's may go to a sink as it comes.
-- Both wait, so both run in processes.
-- https:// and TLS servers through the TCP driver's tls setting.
local market, tcp, parser, sys = ...
local M = {}

local mtype, fmt = math.type, string.format
local head = parser.head

M.MAX_REQUEST = 1 << 20        -- [max_request] bytes of a request's body, and of its head (80 KiB
                               -- at most: lhttp.c)
M.MAX_RESPONSE = 64 << 20      -- [max_response] bytes of a response's body (http.request)
M.TIMEOUT = 30000              -- [timeout] ms a request may take to arrive whole (serve), or
                               -- a whole exchange (request)
M.KEEP_ALIVE = 60000           -- [keep_alive] ms a connection waits for its next request (serve),
                               -- or is kept for the next request to its server (request)

local REASONS = {
  [100] = "Continue", [101] = "Switching Protocols",
  [200] = "OK", [201] = "Created", [202] = "Accepted", [204] = "No Content",
  [206] = "Partial Content",
  [301] = "Moved Permanently", [302] = "Found", [303] = "See Other", [304] = "Not Modified",
  [307] = "Temporary Redirect", [308] = "Permanent Redirect",
  [400] = "Bad Request", [401] = "Unauthorized", [403] = "Forbidden", [404] = "Not Found",
  [405] = "Method Not Allowed", [408] = "Request Timeout", [409] = "Conflict",
  [410] = "Gone", [411] = "Length Required", [413] = "Content Too Large",
  [414] = "URI Too Long", [415] = "Unsupported Media Type", [422] = "Unprocessable Content",
  [429] = "Too Many Requests", [431] = "Request Header Fields Too Large",
  [500] = "Internal Server Error", [501] = "Not Implemented", [502] = "Bad Gateway",
  [503] = "Service Unavailable", [504] = "Gateway Timeout", [505] = "HTTP Version Not Supported",
}

-- "HTTP/1.1 200 OK\r\n", made once for each status answered.
local STATUS_LINES = setmetatable({}, { __index = function(t, status)
  local line = fmt("HTTP/1.1 %d %s\r\n", status, REASONS[status] or "")
  t[status] = line
  return line
end })

-- ---- settings ----------------------------------------------------------

local function positive(v) return mtype(v) == "integer" and v > 0 end
local function non_negative(v) return mtype(v) == "integer" and v >= 0 end
local function is_tls(v) return tcp.tls_record:is(v) end
local function is_table(v) return type(v) == "table" end
-- A time in ms, or math.huge: none.
local function ms_or_huge(v) return positive(v) or v == math.huge end

-- Cookie jars' metatable (http.cookies, below).
local Jar = {}
Jar.__index = Jar
local function is_jar(v) return getmetatable(v) == Jar end

-- The longest connect_timeout the TCP driver takes (0 is none).
local CONNECT_MAX = sys.tcp_settings().connect_timeout[2]

-- The ms to wait for the next event: until the deadline (ms since the
-- epoch, or math.huge), but no longer than idle (ms, or math.huge); and
-- whether the deadline is what ends it.  At least 0.
local function wait_ms(deadline, idle)
  local left = deadline - market.monotonic()
  if left <= 0 then return 0, true end
  if idle < left then return idle, false end
  return left == math.huge and left or math.ceil(left), true
end

-- wait_ms's ms as a connect_timeout: 0 is no limit to the driver, and
-- past its largest is as good as none.
local function connect_ms(ms)
  return ms == math.huge and 0 or math.min(ms, CONNECT_MAX)
end

-- A connect's failure, why, as a request tells it: when the limit the
-- connect had was the whole exchange's (whole: wait_ms's), its running
-- out is the exchange's "timeout", not the driver's "connect timed out
-- after N ms" (which is idle_timeout's, as documented).
local function connect_failure(why, whole)
  if whole and type(why) == "string" and why:find("^connect timed out after") then return "timeout" end
  return why
end

-- Is v an HTTP token (RFC 9110 5.6.2: a method, a WebSocket subprotocol)?
local function is_token(v) return type(v) == "string" and v:match("^[%w!#$%%&'*+.^_`|~-]+$") ~= nil end

-- What each function takes, and its check.
local SERVE_KEYS = { max_request = positive, timeout = positive, keep_alive = positive,
                     stream_body = function(v) return type(v) == "boolean" end,
                     max_connections = non_negative,
                     reuseport = function(v) return type(v) == "boolean" end,
                     tls = is_tls }
local REQUEST_KEYS = { method = is_token,
                       headers = is_table,
                       body = function(v) return type(v) == "string" or type(v) == "function" end,
                       length = non_negative,
                       timeout = ms_or_huge, idle_timeout = ms_or_huge, max_response = positive,
                       keep_alive = non_negative,
                       redirects = non_negative,
                       tls = is_tls,
                       sink = function(v) return type(v) == "function" end,
                       cookies = is_jar }

local function check(t, keys, fname)
  if t == nil then return {} end
  if type(t) ~= "table" then error(fname .. ": settings must be a table, got " .. type(t), 3) end
  for k, v in pairs(t) do
    local ok = keys[k]
    if not ok then error(fname .. ": unknown setting " .. market.repr(k), 3) end
    if not ok(v) then error(("%s: bad %s: %s"):format(fname, k, market.repr(v)), 3) end
  end
  return t
end

-- ---- headers -------------------------------------------------------------

-- The Date header's value, made at most once a second.
local date_at, date_text = -1, nil
local function http_date()
  local now = os.time()
  if now ~= date_at then date_at, date_text = now, os.date("!%a, %d %b %Y %H:%M:%S GMT", now) end
  return date_text
end

-- ---- the server --------------------------------------------------------

local SERVER_OWN = { ["content-length"] = true, ["transfer-encoding"] = true,
                     ["date"] = true, ["connection"] = "close" }

-- An answer market writes itself (a malformed request, a handler that
-- failed): a short text, and the connection closes.
local function plain(status, text)
  return fmt("HTTP/1.1 %d %s\r\nContent-Type: text/plain; charset=utf-8\r\n" ..
             "Content-Length: %d\r\nDate: %s\r\nConnection: close\r\n\r\n%s",
             status, REASONS[status] or "", #text + 1, http_date(), text .. "\n")
end

-- The request table handed to the handler: the parser's message (method,
-- target, path, query, version, headers, body, keep_alive), remote, and
-- the client's certificate where the server asks for one (its TLS
-- configuration has `ca` or `pin`; asked of the connection once, then
-- kept).
local function request_of(msg, conn)
  msg.remote = conn.remote
  local tls = conn.tls
  if tls and tls ~= true and (tls.ca or tls.pin) then msg.certificate = conn:peer_certificate() end
  return msg
end

-- Does the request (the parser's message, its head whole) wait for
-- "100 Continue" before it sends its body?
local function expects_continue(m)
  local e = m.headers.expect
  return e ~= nil and e:lower() == "100-continue" and m.version == "1.1"
end

-- The handler's answer as the bytes of its head (and body, when a
-- string), or raises saying what is wrong with it: status, headers, body
-- (a string, or a function returning the next piece, nil at the end:
-- sent chunked).  keep: the request lets the connection stay open.
-- Returns the bytes, whether the connection stays open, and whether a
-- body function is to be streamed after them.
local function answer(req, keep, status, headers, body)
  if mtype(status) ~= "integer" or status < 100 or status > 999 then
    error("http.serve: the handler must return a status (an integer from 100 to 999), got " ..
          market.repr(status), 0)
  end
  local btype = type(body)
  if body ~= nil and btype ~= "string" and btype ~= "function" then
    error("http.serve: the body must be a string or a function, got " .. btype, 0)
  end
  local bodiless = status < 200 or status == 204 or status == 304
  local chunked = btype == "function" and not bodiless
  if chunked and req.version == "1.0" then keep = false end   -- the close ends its body
  local length                                  -- (nil: no length header)
  if bodiless then
    length = nil
  elseif chunked then
    length = req.version ~= "1.0" and -1 or nil
  else
    length = body and #body or 0
  end
  local head_only = req.method == "HEAD" or bodiless
  -- (Connection is market's, but a handler may ask it to close: asked.)
  -- An HTTP/1.0 client that asked to keep the connection is told it is
  -- kept, or it waits for the close that ends a 1.0 answer (unless the
  -- handler's own Connection header says close: head checks it).
  local first = STATUS_LINES[status]
  if keep and req.version == "1.0" then
    local own = false
    for name in pairs(type(headers) == "table" and headers or {}) do
      if type(name) == "string" and name:lower() == "connection" then own = true end
    end
    if not own then first = first .. "Connection: keep-alive\r\n" end
  end
  local bytes, asked = head(first, headers, SERVER_OWN, "http.serve", http_date(),
                            length, not keep, not head_only and btype == "string" and body or nil)
  return bytes, keep and not asked, chunked and not head_only
end

-- Streams a body function's pieces (chunked, or raw for HTTP/1.0, whose
-- close ends the body).  Returns whether all went; a body function that
-- fails is logged, and the connection closes on a body cut short.
local function stream(conn, req, body)
  local raw = req.version == "1.0"
  while true do
    local ok, piece = pcall(body)
    if ok and piece ~= nil and type(piece) ~= "string" then
      ok, piece = false, "the body function must return strings (nil at the end), got " ..
                         type(piece)
    end
    if not ok then
      market.log.error("http.serve: %s %s: %s", req.method, req.target, tostring(piece))
      return false
    end
    if piece == nil then break end
    if #piece > 0 and not conn:send(raw and piece or fmt("%x\r\n%s\r\n", #piece, piece)) then
      return false
    end
  end
  return raw or conn:send("0\r\n\r\n") ~= nil
end

-- A request's body as it comes (http.serve's stream_body): the function
-- the handler gets as req.body, and the state the session reads after the
-- answer.  Each call gives the next piece (a string, not empty), nil at
-- the end, or nil and why once the body cannot be had (then again at each
-- call): the client's close, no piece within timeout ms, a malformed
-- chunk.  `done`: the parser has the whole message (the body may be in
-- it still, unread); `rest`: what followed the message; `continue`: the
-- client waits for "100 Continue" before it sends the body, which the
-- first call sends (a handler that answers without reading it, a 401 or
-- a 413, spares the client the upload), or the session before a head
-- whose body function may read (then never again: session); `open`
-- while the answer is made.
local function body_reader(conn, p, cfg, done, rest, continue)
  local st = { done = done, rest = rest, continue = continue, open = true, ended = false,
               failed = nil }
  local ctx = sys.owner()
  st.read = function()
    if not st.open or sys.owner() ~= ctx then
      error("http.serve: req.body: a request's body is read in its connection's process, " ..
            "while its answer is made", 2)
    end
    if st.failed then return nil, st.failed end
    if st.ended then return nil end
    while true do
      local piece = p:take()
      if piece ~= "" then return piece end
      if st.done then st.ended = true; return nil end
      if st.continue then
        st.continue = false
        if not conn:send("HTTP/1.1 100 Continue\r\n\r\n") then
          st.failed = "the connection closed"
          return nil, st.failed
        end
      end
      local data, err = conn:receive(cfg.timeout)
      if data == nil then
        st.failed = err == "timeout" and ("no piece of the body within %d ms"):format(cfg.timeout)
                    or err or "the client closed before the body's end"
        return nil, st.failed
      end
      local d, why = p:feed(data)
      if d == nil then
        st.failed = why
        return nil, why
      end
      if d then st.done, st.rest = true, why end
    end
  end
  return st
end

-- ---- WebSockets (RFC 6455) -------------------------------------------

-- The requests whose handlers run now and that may become WebSockets: the
-- connection, what came after the request (the first frames of a client
-- that did not wait for the answer), the process, and the socket once
-- http.websocket made it.  Weak: a request kept by the program does not
-- keep its connection.
local upgradable = setmetatable({}, { __mode = "k" })

local OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING = 1, 2, 8, 9
local KINDS = { [OP_TEXT] = "text", [OP_BINARY] = "binary" }
M.MAX_MESSAGE = 1 << 20        -- [max_message] bytes of a message a WebSocket takes
M.CLOSE_WAIT = 1000            -- ms a closing WebSocket waits for the other side's close

local WS = {}
WS.__index = WS

local function mine_ws(ws, what)
  if getmetatable(ws) ~= WS then
    error(("http.websocket: %s: not a WebSocket (call it with ':')"):format(what), 3)
  end
  if sys.owner() ~= ws.ctx then
    error(("http.websocket: %s: a WebSocket is used in its connection's process"):format(what), 3)
  end
end

-- What wslay has to send (pongs, closes, messages queued), sent within ms
-- (nil: no limit) after what an earlier flush could not send in time
-- (ws.unsent: first, as the frames were queued): true; nil, "timeout",
-- the bytes kept in ws.unsent for the next flush (conn:send takes all of
-- them or, timed out, none: no frame goes in part, none twice); or nil and
-- why (then the socket has failed).
local function flush(ws, ms)
  local bytes = ws.s:output()
  if ws.unsent then bytes, ws.unsent = ws.unsent .. bytes, nil end
  if bytes == "" then return true end
  local ok, why = ws.conn:send(bytes, ms)
  if why == "timeout" then
    ws.unsent = bytes
    return nil, why
  end
  if not ok then
    ws.failed = ws.failed or "the connection closed" .. (why and ": " .. why or "")
    return nil, ws.failed
  end
  return true
end

-- The socket can do no more: why kept for every later call, the
-- connection closed.
local function fail(ws, why)
  ws.failed = why
  ws.conn:close()
  return nil, why
end

-- data, kind = ws:receive([ms]): the next message ("text" or "binary");
-- nil, "closed", code, reason once the other side closed; nil, "timeout"; nil
-- and why when the connection failed or the other side broke the protocol.
-- wslay answers pings and the other side's close; what of its answers
-- cannot go within ms waits in ws.unsent (flush).
function WS:receive(ms)
  mine_ws(self, "receive")
  if ms ~= nil and ms ~= math.huge and (mtype(ms) ~= "integer" or ms < 0) then
    error("http.websocket: receive: ms must be a non-negative integer or math.huge, got " ..
          market.repr(ms), 2)
  end
  local deadline = ms and market.monotonic() + ms or math.huge
  while true do
    if self.failed then return nil, self.failed end
    if self.peer_closed then return nil, "closed", self.peer_code, self.peer_reason end
    local op, payload, code = self.s:next()
    if op == OP_TEXT or op == OP_BINARY then
      return payload, KINDS[op]
    elseif op == OP_CLOSE then
      flush(self, wait_ms(deadline, math.huge))   -- the close wslay answered with
      self.peer_closed, self.peer_code = true, code ~= 0 and code or nil
      self.peer_reason = payload:sub(3)
      self.conn:close()
      -- (wslay checks a reason that came in pieces only in part)
      if not utf8.len(self.peer_reason) then
        return fail(self, "protocol error (a close whose reason is not UTF-8)")
      end
    elseif op == nil then
      if not self.reading then
        -- wslay reads no more without a close from the other side: it
        -- broke the protocol, and the close wslay queued says how.
        flush(self, wait_ms(deadline, math.huge))
        local _, _, _, sent = self.s:status()
        return fail(self, sent == 1005 and "protocol error (closed without a code)" or
                          ("protocol error (closed with %d)"):format(sent))
      end
      local wait = wait_ms(deadline, math.huge)
      if wait <= 0 then return nil, "timeout" end
      -- Pongs an earlier call could not send go before more is read: a
      -- peer that does not read is not read either, or its pings would
      -- pile up pongs without end.
      local ok, why = true, nil
      if self.unsent then ok, why = flush(self, wait) end
      if why == "timeout" then return nil, why end
      if not ok then return fail(self, why) end
      local data, err = self.conn:receive(wait_ms(deadline, math.huge))
      if data == nil then
        if err == "timeout" then return nil, "timeout" end
        return fail(self, "the connection closed" .. (err and ": " .. err or ""))
      end
      self.reading = self.s:feed(data)
      -- Pongs, and a close: within the time left, or kept for the next
      -- call (a peer that floods pings and reads nothing held receive
      -- until it closed).  Timed out, the loop hands out a message that
      -- came, or finds the time gone.
      ok, why = flush(self, wait_ms(deadline, math.huge))
      if not ok and why ~= "timeout" then return fail(self, why) end
    end                                         -- (a ping or a pong: answered already)
  end
end

-- What ws:send and ws:ping queue, sent: true, or nil and why.
local function put(ws, op, data)
  if ws.failed then return nil, ws.failed end
  if ws.done or not ws.s:queue(op, data) then return nil, "closed" end
  return flush(ws)
end

-- ok = ws:send(data [, kind]): a message, text (UTF-8: raises otherwise)
-- unless kind is "binary"; nil and why once the socket closes.
function WS:send(data, kind)
  mine_ws(self, "send")
  if type(data) ~= "string" then
    error("http.websocket: send: data must be a string, got " .. type(data), 2)
  end
  if kind ~= nil and kind ~= "text" and kind ~= "binary" then
    error("http.websocket: send: kind must be \"text\" or \"binary\", got " .. market.repr(kind), 2)
  end
  if kind ~= "binary" and not utf8.len(data) then
    error("http.websocket: send: a text message must be UTF-8 (send it as \"binary\")", 2)
  end
  return put(self, kind == "binary" and OP_BINARY or OP_TEXT, data)
end

-- ok = ws:ping([data]): a ping (the client answers with a pong, which
-- receive drops); nil and why once the socket closes.
function WS:ping(data)
  mine_ws(self, "ping")
  if data ~= nil and (type(data) ~= "string" or #data > 125) then
    error("http.websocket: ping: data must be a string of at most 125 bytes", 2)
  end
  return put(self, OP_PING, data or "")
end

-- ws:close([code [, reason]]): the close handshake (code 1000 unless
-- told; reason at most 123 bytes of UTF-8), waiting CLOSE_WAIT ms at most
-- for the other side's close (messages meanwhile are dropped), then the
-- connection closed.  Closing again does nothing.
function WS:close(code, reason)
  mine_ws(self, "close")
  if code ~= nil and (mtype(code) ~= "integer" or code < 1000 or code > 4999 or
                      code == 1004 or code == 1005 or code == 1006 or code == 1015) then
    error("http.websocket: close: code must be an integer a close frame may carry " ..
          "(1000 to 4999 but 1004 to 1006 and 1015), got " .. market.repr(code), 2)
  end
  if reason ~= nil and (type(reason) ~= "string" or #reason > 123 or not utf8.len(reason)) then
    error("http.websocket: close: reason must be UTF-8 of at most 123 bytes", 2)
  end
  if self.failed or self.done then return true end
  self.done = true
  self.s:close(code or 1000, reason)
  -- The close goes (after pongs still unsent) within CLOSE_WAIT too: a
  -- peer that read nothing held it for as long as it kept the connection.
  local deadline = market.monotonic() + M.CLOSE_WAIT
  if flush(self, M.CLOSE_WAIT) then
    while not self.peer_closed and not self.failed do
      local wait = wait_ms(deadline, math.huge)
      if wait <= 0 or self:receive(wait) == nil and not self.peer_closed then break end
    end
  end
  self.conn:close()
  return true
end

-- A WebSocket on conn, used by the process ctx, a client's if client,
-- taking messages of at most max bytes (nil: MAX_MESSAGE), having agreed
-- on protocol (or nil), rest what came after the handshake.
local function new_ws(conn, ctx, max, client, protocol, rest)
  local ws = setmetatable({ conn = conn, ctx = ctx, reading = true, protocol = protocol,
                            remote = conn.remote, peer_closed = false,
                            s = parser.ws_session(max or M.MAX_MESSAGE, client) }, WS)
  if rest ~= "" then
    ws.reading = ws.s:feed(rest)
    flush(ws)
  end
  -- arrived(): whether something came for receive (for wait_until): a
  -- message, the end, or bytes (docs/http.md says when receive may still
  -- wait: part of a frame, pongs the other side has not read).
  ws.arrived = function() return ws.s:ready() or not ws.reading or ws.conn.arrived() end
  return ws
end

local WS_KEYS = { max_message = positive,
                  protocol = is_token }

-- s without its leading and trailing blanks, in time linear in #s.  Not
-- s:match("^%s*(.-)%s*$"): that backtracks over the blanks after each
-- byte it takes, quadratic in a run of inner blanks (a peer's header of
-- 77 KB of blanks held the VM for 35 s).
local function trim(s)
  local i = s:find("%S")
  if not i then return "" end
  local _, j = s:find("^.*%S", i)       -- (back from the end: linear)
  return s:sub(i, j)
end

-- Does the comma-separated header value v list token (any case)?
local function lists(v, token)
  for t in (v or ""):gmatch("[^,]+") do
    if trim(t):lower() == token then return true end
  end
  return false
end

-- ws = http.websocket(req [, options]): the handler's request taken up
-- to a WebSocket (the 101 answer sent); nil and why when it is no
-- WebSocket handshake (the handler then answers as it will: 400).
function M.websocket(req, options)
  local up = type(req) == "table" and upgradable[req]
  if not up or sys.owner() ~= up.ctx then
    error("http.websocket: req must be the request an http.serve handler was given, " ..
          "in that handler", 2)
  end
  if up.ws then error("http.websocket: the request is a WebSocket already", 2) end
  options = check(options, WS_KEYS, "http.websocket")
  local h, why = req.headers, nil
  if req.method ~= "GET" or req.version ~= "1.1" then why = "not a GET of HTTP/1.1"
  elseif not lists(h.upgrade, "websocket") then why = "no Upgrade: websocket"
  elseif not lists(h.connection, "upgrade") then why = "no Connection: Upgrade"
  elseif h["sec-websocket-version"] ~= "13" then why = "Sec-WebSocket-Version is not 13"
  end
  local accept = not why and parser.ws_accept(h["sec-websocket-key"] or "")
  if not why and not accept then why = "no Sec-WebSocket-Key of 16 bytes in base64" end
  if why then return nil, "not a WebSocket handshake: " .. why end
  local protocol = options.protocol and lists(h["sec-websocket-protocol"], options.protocol:lower())
                   and options.protocol or nil
  local ok, err = up.conn:send("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n" ..
    "Connection: Upgrade\r\nSec-WebSocket-Accept: " .. accept .. "\r\n" ..
    (protocol and "Sec-WebSocket-Protocol: " .. protocol .. "\r\n" or "") .. "\r\n")
  if not ok then return nil, err end
  up.ws = new_ws(up.conn, up.ctx, options.max_message, false, protocol, up.rest)
  return up.ws
end

-- The program's stop, which a session watches (made once, not for every
-- connection).
local STOPPING = market.ground.stopping(market._)

-- One connection: requests until it ends, a request says close, the
-- handler fails, or it waits keep_alive ms for the next one.
local function session(handler, cfg)
  return function(conn)
    local stopping = false
    market.perform(market.subscriber(STOPPING, {
      name = "http stopping",
      on_presence = function() stopping = true end }))
    local p, rest = parser.request(cfg.max_request, cfg.stream_body), ""
    -- (conn.arrived: whether receive would return at once, the
    -- connection's own wait: tcp.lua's `open`.)
    local function woken() return stopping or conn.arrived() end
    while not stopping do
      local done, why, status
      if #rest > 0 then
        done, why, status = p:feed(rest)
      else
        -- Idle: the next request, or nothing for keep_alive ms, or the
        -- program stopping (a drain should not wait for idle clients).
        local ok = market.wait_until(woken, cfg.keep_alive)
        if not ok or stopping then return end
        done = false
      end
      local deadline = market.monotonic() + cfg.timeout
      local headed, fed = false, #rest > 0
      while done == false do
        if fed and not headed then
          local m = p:message()
          if m.keep_alive ~= nil then             -- (there once the head is whole)
            headed = true
            if cfg.stream_body then break end     -- the handler reads the body
            local len = tonumber(m.headers["content-length"])
            if len and len > cfg.max_request then
              conn:send(plain(413, "body too large"))
              return
            end
            -- A client that asks before it sends a large body (curl does).
            if expects_continue(m) then conn:send("HTTP/1.1 100 Continue\r\n\r\n") end
          end
        end
        local left = deadline - market.monotonic()
        local ms = left > 0 and math.ceil(left) or 0
        -- A head still coming is no request being handled: the program's
        -- stop closes its connection at once, as an idle one's (a client
        -- that sent half a head held the drain for its whole time).
        local ok, err, data = true, nil, nil
        if not headed then
          ok, err = market.wait_until(woken, ms)
          if stopping then return end
        end
        if ok then data, err = conn:receive(ms) end
        if data == nil then
          if err == "timeout" then
            conn:send(plain(408, ("no whole request within %d ms"):format(cfg.timeout)))
          end
          return                                  -- gone, or failed, mid-request
        end
        done, why, status = p:feed(data)
        fed = true
      end
      if done == nil then
        conn:send(plain(status, why))
        return
      end
      local msg = p:message()
      local reader
      if cfg.stream_body then
        reader = body_reader(conn, p, cfg, done, done and why or nil, expects_continue(msg))
        msg.body = reader.read
      else
        rest = why                                -- (feed's second value when done)
        p:reset()
      end
      local req = request_of(msg, conn)
      local up = nil
      if msg.headers.upgrade then
        up = { conn = conn, ctx = sys.owner(), rest = reader and (reader.rest or "") or rest }
        upgradable[req] = up
      end
      local ok, st, headers, body = pcall(handler, req)
      if up then
        upgradable[req] = nil
        if up.ws then                           -- HTTP is over on this connection
          if not ok then
            market.log.error("http.serve: %s %s (a WebSocket): %s", req.method, req.target,
                             tostring(st))
          end
          if not up.ws.done and not up.ws.failed then
            up.ws:close(ok and 1000 or 1011)
          end
          return
        end
      end
      local err, bytes, keep, streamed = st, nil, nil, nil
      if ok then
        -- A body the handler left unread (or that failed) is not read on
        -- for the next request: the connection closes after the answer.
        local whole = reader == nil or reader.done and not reader.failed
        ok, bytes, keep, streamed = pcall(answer, req, msg.keep_alive and not stopping and whole,
                                          st, headers, body)
        err = bytes
      end
      if not ok then
        market.log.error("http.serve: %s %s: %s", req.method, req.target, tostring(err))
        conn:send(plain(500, "the handler failed; see the server's log"))
        return
      end
      if reader then
        -- An interim answer comes before the final one (RFC 9110 15.2);
        -- after its head, "100 Continue" would be read as the body's
        -- bytes.  A body function streaming the answer may read req.body,
        -- so a client still waiting is told to send first; once the head
        -- has gone, no read sends it (a client that has a final status
        -- sends the body without it, or not at all).
        if reader.continue and streamed and not reader.done and
           not conn:send("HTTP/1.1 100 Continue\r\n\r\n") then
          return
        end
        reader.continue = false
      end
      if not conn:send(bytes) then return end
      if streamed and not stream(conn, req, body) then return end
      if not keep then return end
      if reader then
        reader.open = false
        rest = reader.rest
        p:reset()
      end
    end
  end
end

-- server = http.serve(port, handler [, settings]): as tcp.serve, with
-- handler(req) -> status, headers, body for each request.
function M.serve(port, handler, settings)
  if type(handler) ~= "function" then
    error("http.serve: handler must be a function, got " .. type(handler), 2)
  end
  settings = check(settings, SERVE_KEYS, "http.serve")
  local cfg = { max_request = settings.max_request or M.MAX_REQUEST,
                timeout = settings.timeout or M.TIMEOUT, stream_body = settings.stream_body,
                keep_alive = settings.keep_alive or M.KEEP_ALIVE }
  if settings.tls and not settings.tls.cert then
    error("http.serve: tls: a server needs a certificate (tcp.tls{cert = ..., key = ...})", 2)
  end
  local tcp_settings
  if settings.max_connections ~= nil or settings.reuseport ~= nil or settings.tls ~= nil then
    tcp_settings = { max_connections = settings.max_connections, reuseport = settings.reuseport,
                     tls = settings.tls }
  end
  local ok, srv, why = pcall(tcp.serve, port, session(handler, cfg), tcp_settings)
  if not ok then error((tostring(srv):gsub("tcp%.serve", "http.serve")), 2) end
  return srv, why
end

-- ---- the client --------------------------------------------------------

-- host, port, authority (for Host), target of an http:// or https:// URL,
-- and whether it is https; or nil, why.
-- schemes: to whether they are secure (HTTP_SCHEMES unless given).
local HTTP_SCHEMES, WS_SCHEMES = { http = false, https = true }, { ws = false, wss = true }
local function parse_url(url, schemes)
  local scheme, rest = url:match("^(%a[%w+.-]*)://(.*)$")
  if not scheme then return nil, "not an absolute URL: " .. url end
  scheme = scheme:lower()
  schemes = schemes or HTTP_SCHEMES
  local secure = schemes[scheme]
  if secure == nil then
    return nil, (schemes == WS_SCHEMES and "not a ws URL: " or "not an http URL: ") .. url
  end
  local authority, target = rest:match("^([^/?#]*)(.*)$")
  target = target:gsub("#.*$", "")
  if target == "" then target = "/" elseif target:sub(1, 1) == "?" then target = "/" .. target end
  if authority:find("@", 1, true) then return nil, "user information in a URL is not supported: " .. url end
  local host, after = authority:match("^%[([^%]]+)%](.*)$")
  if not host then host, after = authority:match("^([^:]*)(.*)$") end
  if host == "" then return nil, "no host in " .. url end
  if host:find("[%s%c]") then return nil, "a space or control character in " .. url end
  local port = after == "" and "" or after:match("^:(%d*)$")   -- (":-1", ":abc" were "no host")
  if not port then return nil, "bad port in " .. url end
  port = port == "" and (secure and 443 or 80) or math.tointeger(tonumber(port))
  if not port or port < 1 or port > 65535 then return nil, "bad port in " .. url end
  if target:find("[%s%c]") then return nil, "a space or control character in " .. url end
  return host, port, authority, target, secure
end

local CLIENT_OWN = { ["content-length"] = true, ["transfer-encoding"] = true,
                     ["host"] = true, ["connection"] = true }

-- Connections kept for a process's next request: per process (its
-- context table, weakly: a process that ends takes its connections'
-- endpoints with it), one per "host:port" with the time it may be kept
-- until.  One is enough: a process makes one request at a time.  A kept
-- connection closes when its time passes or its server closes it, even
-- while the process does something else: one alarm endpoint a process
-- (KEPT, for the earliest time), and the connection object's
-- input_ended (drivers/tcp.lua), which its own handlers call; and when
-- the process's boot function returns (sys.at_return).
local kept = setmetatable({}, { __mode = "k" })
local KEPT = "http.request kept"
local alarm = market.ground.monotonic_alarm

-- pool.conns[key]'s connection, taken out of the pool.
local function take(pool, key)
  local conn = pool.conns[key].conn
  pool.conns[key] = nil
  conn.input_ended = nil
  return conn
end

-- pool.conns[key] taken out and closed.
local function drop(pool, key) take(pool, key):close() end

-- The pool's alarm withdrawn (sweep arms it again while it keeps any).
local function disarm(pool)
  pool.at = false
  market.perform(market.delete_endpoint(KEPT))
end

-- The pool's connections past their time, or that their server closed or
-- spoke on unasked, closed; then the alarm armed for the earliest time
-- left, unless it is armed for one before it already.
local function sweep(pool, now)
  local first
  for key, e in pairs(pool.conns) do
    if now >= e.until_ms or e.conn.arrived() then
      drop(pool, key)
    elseif first == nil or e.until_ms < first then
      first = e.until_ms
    end
  end
  if first ~= nil and not (pool.at and pool.at <= first) then
    pool.at = first
    -- (The ground's presence that comes with each alarm, and an absence,
    -- refused: kept for market.yield(), one a sweep would pile up in a
    -- process that waits.)
    market.perform(market.delete_endpoint(KEPT),
                   market.subscriber(alarm(math.ceil(first)), { name = KEPT, on_message = pool.rang,
                                                               on_presence = false,
                                                               on_absence = false }))
  end
end

-- The running process's pool, swept.
local function kept_of(now)
  local ctx = sys.owner()
  local pool = kept[ctx]
  if not pool then
    pool = { conns = {}, at = false }
    pool.rang = function(_, m)
      if not alarm:is(m) then return end          -- send(market._): not the alarm
      disarm(pool)
      sweep(pool, market.monotonic())
    end
    -- (called by the connection's handlers: its server closed it)
    pool.ended = function(conn)
      for key, e in pairs(pool.conns) do
        if e.conn == conn then return drop(pool, key) end
      end
    end
    -- The process's own code is done (a script's, a tcp.serve session's):
    -- nothing of it can ask again, and a kept connection would hold the
    -- process, and the program, until its time passed.
    sys.at_return(function()
      for key in pairs(pool.conns) do drop(pool, key) end
      disarm(pool)
    end)
    kept[ctx] = pool
  end
  sweep(pool, now)
  return pool
end

-- The connection kept for key, if it is still good: anything that came
-- on it while idle (most often the server's close) makes it useless.
-- wait_until tries at once, then (a wait of 0 ms) after what is already
-- queued for the process, so that a process busy since its last request
-- sees the close.  (conn.arrived: whether receive would return at once:
-- tcp.lua's `open`.)
local function reuse(pool, key)
  if not pool.conns[key] then return nil end
  local conn = take(pool, key)
  if market.wait_until(conn.arrived, 0) then
    conn:close()
    return nil
  end
  return conn
end

-- Keep conn for key until keep_ms from now (the pool has none for key).
local function keep_conn(pool, key, conn, keep_ms)
  local now = market.monotonic()
  pool.conns[key] = { conn = conn, until_ms = now + keep_ms }
  conn.input_ended = pool.ended
  sweep(pool, now)                                 -- (arms the alarm)
end

-- Methods a client may send again when a kept connection closed before
-- any of the answer came (RFC 9110, 9.2.2): the server may have closed
-- it idle just as the request went.
local IDEMPOTENT = { GET = true, HEAD = true, PUT = true, DELETE = true, OPTIONS = true,
                     TRACE = true }

-- A body function's pieces sent on conn after the head: chunked, or as
-- they are when the caller gave their length.  true; or nil and why when
-- the connection took no more (the server may have answered already) or
-- the time ran out; raises what the function raises, and when it gives
-- what is no string, or other than length bytes in all.
local function send_pieces(conn, body, length, deadline, idle)
  local sent = 0
  local function put(bytes)
    local ms, whole = wait_ms(deadline, idle)
    if ms <= 0 then return nil, "timeout" end
    local ok, why = conn:send(bytes, ms)
    if why == "timeout" then why = whole and "timeout" or "idle timeout" end
    return ok, why
  end
  while true do
    local piece = body()
    if piece == nil then break end
    if type(piece) ~= "string" then
      error("http.request: the body function must return strings (nil at the end), got " ..
            type(piece), 0)
    end
    sent = sent + #piece
    if length and sent > length then
      error(("http.request: the body function gave more than length (%d bytes)"):format(length), 0)
    end
    if #piece > 0 then
      local ok, why = put(length and piece or fmt("%x\r\n%s\r\n", #piece, piece))
      if not ok then return nil, why end
    end
  end
  if length and sent < length then
    error(("http.request: the body function gave %d bytes, not length (%d)"):format(sent, length), 0)
  end
  if length then return true end
  return put("0\r\n\r\n")
end

-- One exchange on conn: the response, and whether the connection may be
-- kept; or nil, why, and whether nothing of an answer came (the
-- connection closed or failed before a byte of it: not a timeout); or
-- nil, the error, false, true when the sink or the body function raised
-- it.  body: nil, or a function whose pieces follow the head (bytes),
-- length of them in all if given.  The server may keep silent for idle
-- ms at most (math.huge: no limit).  stream(status), if given, says once
-- a final response's head is whole whether its body goes to a sink as it
-- comes (the sink, or nil: kept whole in res.body).
local function exchange(conn, bytes, body, length, method, deadline, idle, max_response, stream)
  local ok, why = conn:send(bytes)
  if not ok then return nil, why, true end
  -- A server may answer before the body is all sent (a 413) and close:
  -- its answer is read still, and the failure to send said without one.
  local unsent = nil
  if body then
    local fine
    fine, ok, why = pcall(send_pieces, conn, body, length, deadline, idle)
    if not fine then return nil, ok, false, true end
    if not ok then
      if why == "timeout" or why == "idle timeout" then return nil, why end
      unsent = why
    end
  end
  -- (max_response bounds the body; the head has lhttp.c's bound, 80 KiB)
  local p = parser.response(max_response, method == "HEAD")
  local heard = false
  local sink = nil                    -- false: this response is kept whole
  -- The body come so far to the sink, once the head has chosen one: true,
  -- or false and the sink's error.
  local function pour()
    if sink == nil and stream then
      local st = p:status()
      if st and (st >= 200 or st < 100) then sink = stream(st) or false end
    end
    if not sink then return true end
    local piece = p:take()
    if piece == "" then return true end
    return pcall(sink, piece)
  end
  while true do
    local ms, whole = wait_ms(deadline, idle)
    if ms <= 0 then return nil, "timeout" end
    local data, e = conn:receive(ms)
    if e == "timeout" then return nil, whole and "timeout" or "idle timeout" end
    if data == nil and e then return nil, unsent or e, not heard and not body end
    heard = heard or data ~= nil
    local done, rest, status = p:feed(data or "")          -- "": the end of stream
    if done == nil and data ~= nil then
      return nil, ((status == 400 or status == 505) and "malformed response: " or "response too large: ") .. rest
    end
    while done do
      local poured, err = pour()
      if not poured then return nil, err, false, true end
      local m = p:message()
      if m.status >= 200 or m.status < 100 then
        return { status = m.status, reason = m.reason, version = m.version,
                 headers = m.headers, body = m.body, set_cookies = m.set_cookies },
               m.keep_alive and rest == "" and data ~= nil and not unsent
      end
      -- An interim answer (100 Continue, 103 Early Hints): the real one
      -- follows, maybe in what came with it.
      p:reset()
      done = false
      if #rest > 0 then
        done, rest, status = p:feed(rest)
        if done == nil then return nil, "malformed response: " .. rest end
      end
    end
    local poured, err = pour()
    if not poured then return nil, err, false, true end
    -- The end of stream before the whole response, whether the parser
    -- took it as an error or not (before any byte it does not: a kept
    -- connection closed as the request went ends here, unheard).
    if data == nil then
      return nil, unsent or "the connection closed before the whole response", not heard and not body
    end
  end
end

-- ---- redirects -------------------------------------------------------

-- path with its "." and ".." segments taken out (RFC 3986, 5.2.4); path
-- starts with "/".
local function remove_dots(path)
  local segs, out, n = {}, {}, 0
  for seg in path:gmatch("/([^/]*)") do segs[#segs + 1] = seg end
  for i, seg in ipairs(segs) do
    if seg == "." or seg == ".." then
      if seg == ".." and n > 0 then out[n], n = nil, n - 1 end
      if i == #segs then n = n + 1; out[n] = "" end       -- "a/.." names the folder: "a/"
    else
      n = n + 1; out[n] = seg
    end
  end
  return "/" .. table.concat(out, "/")
end

-- url = http.resolve(base, ref): the URL that ref (a Location header's
-- value, a link) names, read from base (RFC 3986, 5.2), without a
-- fragment; or nil, why when base is not an absolute URL.
function M.resolve(base, ref)
  if type(base) ~= "string" then error("http.resolve: base must be a string, got " .. type(base), 2) end
  if type(ref) ~= "string" then error("http.resolve: ref must be a string, got " .. type(ref), 2) end
  ref = ref:gsub("#.*$", "")
  if ref:match("^%a[%w+.-]*:") then                 -- absolute already
    local scheme, rest = ref:match("^([^:]*):(.*)$")
    local authority, path, query = rest:match("^//([^/?]*)([^?]*)(.*)$")
    if not authority then return ref end           -- mailto:, urn:, ...: as it is
    return scheme .. "://" .. authority .. (path == "" and "" or remove_dots(path)) .. query
  end
  local scheme, authority, path, query = base:match("^(%a[%w+.-]*)://([^/?#]*)([^?#]*)([^#]*)")
  if not scheme then return nil, "not an absolute URL: " .. base end
  if ref:sub(1, 2) == "//" then return M.resolve(base, scheme .. ":" .. ref) end
  local rpath, rquery = ref:match("^([^?]*)(.*)$")
  if rpath == "" then
    return scheme .. "://" .. authority .. path .. (rquery ~= "" and rquery or query)
  end
  if rpath:sub(1, 1) ~= "/" then                   -- relative to base's folder
    rpath = (path == "" and "/" or path:match("^(.*/)") or "/") .. rpath
  end
  return scheme .. "://" .. authority .. remove_dots(rpath) .. rquery
end

-- The statuses whose Location a request follows (options.redirects), and
-- when the next request is a GET without the body: after a 303 always
-- (but for a HEAD), after a 301 or 302 for a POST (what browsers and
-- other clients do, and RFC 9110, 15.4.2 and 15.4.3, allow), after a 307
-- or 308 never.
local REDIRECTS = { [301] = "post", [302] = "post", [303] = "all", [307] = "none", [308] = "none" }

-- Headers sent only to the server the caller named, not to another that
-- a redirect names: credentials.
local CREDENTIALS = { authorization = true, ["proxy-authorization"] = true, cookie = true }

-- headers (the caller's: any case) without those named in drop (lower
-- case); the same table when it has none of them.
local function without(headers, drop)
  if headers == nil then return nil end
  local out, dropped = {}, false
  for k, v in pairs(headers) do
    if type(k) == "string" and drop[k:lower()] then dropped = true else out[k] = v end
  end
  return dropped and out or headers
end

-- ---- cookies (RFC 6265) ------------------------------------------------

M.MAX_COOKIES = 3000           -- cookies a jar keeps (the oldest go first)
local MAX_PER_DOMAIN = 50      -- (RFC 6265, 6.1: at least 50 a domain)
-- Set-Cookie values one answer may bring into a jar: each costs a look
-- through the jar, and 80 KiB of head holds 8,000 of them (0.7 s).
M.MAX_SET_COOKIES = 200
local MAX_COOKIE = 4096        -- bytes of a cookie's name, value and attributes

local MONTHS = { jan = 1, feb = 2, mar = 3, apr = 4, may = 5, jun = 6, jul = 7, aug = 8,
                 sep = 9, oct = 10, nov = 11, dec = 12 }

-- Days from 1970-01-01 to y-m-d (proleptic Gregorian).
local function days(y, m, d)
  y = m <= 2 and y - 1 or y
  local era = y // 400
  local yoe = y - era * 400
  local doy = (153 * (m + (m > 2 and -3 or 9)) + 2) // 5 + d - 1
  return era * 146097 + yoe * 365 + yoe // 4 - yoe // 100 + doy - 719468
end

-- A cookie date (RFC 6265, 5.1.1: "Wed, 21 Oct 2015 07:28:00 GMT" and
-- its looser kin) as ms since the epoch; nil when it is none.
local function cookie_date(s)
  local time, day, month, year
  for token in s:gmatch("[^\t !\"#$%%&'()*+,%-./;<=>?@%[\\%]^_`{|}~]+") do
    local h, mi, se = token:match("^(%d%d?):(%d%d?):(%d%d?)")
    if not time and h then
      time = { tonumber(h), tonumber(mi), tonumber(se) }
    elseif not day and token:match("^%d%d?%f[%D]") then
      day = tonumber(token:match("^%d+"))
    elseif not month and MONTHS[token:sub(1, 3):lower()] then
      month = MONTHS[token:sub(1, 3):lower()]
    elseif not year and token:match("^%d%d%d?%d?%f[%D]") then
      year = tonumber(token:match("^%d+"))
    end
  end
  if not (time and day and month and year) then return nil end
  if year >= 70 and year <= 99 then year = year + 1900 elseif year <= 69 then year = year + 2000 end
  if day < 1 or day > 31 or year < 1601 or time[1] > 23 or time[2] > 59 or time[3] > 59 then
    return nil
  end
  return ((days(year, month, day) * 24 + time[1]) * 60 + time[2]) * 60000 + time[3] * 1000
end

-- Is host an address (IPv4, or IPv6 as URLs bracket it)?
local function is_address(host)
  return host:match("^%d+%.%d+%.%d+%.%d+$") ~= nil or host:find(":", 1, true) ~= nil
end

-- Does host domain-match domain (RFC 6265, 5.1.3)?
local function domain_match(host, domain)
  return host == domain or not is_address(host) and #host > #domain and
         host:sub(-#domain - 1) == "." .. domain
end

-- Does the request path path-match the cookie path cpath (5.1.4)?
local function path_match(path, cpath)
  return path == cpath or path:sub(1, #cpath) == cpath and
         (cpath:sub(-1) == "/" or path:sub(#cpath + 1, #cpath + 1) == "/")
end

-- jar = http.cookies(): an empty cookie jar, for the cookies option.  Its
-- cookies are kept by domain (by_domain[domain]: a list, oldest first, as
-- `made` counts), so that a request looks at its host's and its parent
-- domains' lists, not at every cookie (a full jar: 3000); n counts them.
function M.cookies()
  return setmetatable({ by_domain = {}, n = 0, made = 0 }, Jar)
end

local function checkjar(jar, what)
  if getmetatable(jar) ~= Jar then
    error(("http.cookies: %s: not a cookie jar (call it with ':')"):format(what), 3)
  end
end

-- The cookies of domain past their time taken out; its list (or nil).
local function expire(jar, domain, now)
  local list, n = jar.by_domain[domain], 0
  if not list then return nil end
  for i = 1, #list do
    local c = list[i]
    if not c.expires or c.expires > now then n = n + 1; list[n] = c end
  end
  jar.n = jar.n - (#list - n)
  for i = #list, n + 1, -1 do list[i] = nil end
  if n == 0 then jar.by_domain[domain] = nil; return nil end
  return list
end

-- Cookie i of domain's list taken out (1: its oldest).
local function drop_cookie(jar, domain, i)
  local list = jar.by_domain[domain]
  table.remove(list, i)
  jar.n = jar.n - 1
  if #list == 0 then jar.by_domain[domain] = nil end
end

-- s split at its first "=", both sides trimmed; s trimmed and nil
-- without one.
local function split_eq(s)
  local eq = s:find("=", 1, true)
  if not eq then return trim(s), nil end
  return trim(s:sub(1, eq - 1)), trim(s:sub(eq + 1))
end

-- A Set-Cookie value heard from host (lower case) for path (the request's,
-- without its query), secure when over TLS, taken into the jar (5.2, 5.3):
-- true, or nil and why it was not.
local function store(jar, line, host, path, secure, now)
  if #line > MAX_COOKIE then return nil, ("longer than %d bytes"):format(MAX_COOKIE) end
  -- (A parser never gives these; jar:set may, and a Cookie header
  -- holding one made every later request to the host raise.)
  if line:find("[\r\n%z]") then return nil, "holds a CR, LF or NUL" end
  local pair, attrs = line:match("^([^;]*)(.*)$")
  local name, value = split_eq(pair)
  if not value or name == "" then return nil, "no name=value" end
  local c = { name = name, value = value, domain = host, path = nil, secure = false,
              http_only = false, host_only = true, expires = nil }
  local max_age, expires, domain
  for attr in attrs:gmatch(";([^;]*)") do
    local k, v = split_eq(attr)
    k = k:lower()
    if k == "expires" and v then
      expires = cookie_date(v) or expires
    elseif k == "max-age" and v and v:match("^%-?%d+$") then
      -- Past an integer's range, tonumber gives a float: still a number
      -- of seconds (a huge negative one deletes, 5.2.2), not nothing.
      max_age = tonumber(v)
    elseif k == "domain" and v and v ~= "" then
      domain = v:gsub("^%.", ""):lower()
    elseif k == "path" and v and v:sub(1, 1) == "/" then
      c.path = v
    elseif k == "secure" then
      c.secure = true
    elseif k == "httponly" then
      c.http_only = true
    end
  end
  if max_age then
    c.expires = max_age <= 0 and -math.huge or now + max_age * 1000.0   -- (a float: no wrap)
  elseif expires then
    c.expires = expires
  end
  if domain then
    -- Not for another site, nor for a public suffix ("com", "co.uk",
    -- "github.io": every site under it would be sent the cookie), unless
    -- the host is that suffix: then for the host alone (5.3, step 5).
    if not domain_match(host, domain) then
      return nil, ("domain %s is not %s's"):format(domain, host)
    end
    local public, why = parser.public_suffix(domain)
    if public == nil then return nil, why end          -- (no list: none for a domain)
    if public then
      if domain ~= host then return nil, ("domain %s is a public suffix"):format(domain) end
    else
      c.domain, c.host_only = domain, false
    end
  end
  if not c.path then                         -- the request path's directory
    c.path = path:sub(1, 1) == "/" and path:match("^(.*)/") or ""
    if c.path == "" then c.path = "/" end
  end
  if c.secure and not secure then return nil, "secure, and heard over plain http" end
  local list = expire(jar, c.domain, now) or {}
  for i, old in ipairs(list) do
    if old.name == c.name and old.path == c.path then
      -- the same cookie: in its place, as old as it was (5.3, step 11)
      c.made = old.made
      if c.expires and c.expires <= now then        -- (a delete)
        drop_cookie(jar, c.domain, i)
      else
        list[i] = c
      end
      return true
    end
  end
  if c.expires and c.expires <= now then return true end
  jar.made = jar.made + 1
  c.made = jar.made
  -- Past a limit, the oldest go: of this domain, or of all (once those
  -- past their time have gone: the others' lists are expired lazily).
  if #list >= MAX_PER_DOMAIN then drop_cookie(jar, c.domain, 1) end
  if jar.n >= M.MAX_COOKIES then
    for d in pairs(jar.by_domain) do expire(jar, d, now) end
  end
  while jar.n >= M.MAX_COOKIES and next(jar.by_domain) do
    local oldest
    for d, l in pairs(jar.by_domain) do
      if not oldest or l[1].made < jar.by_domain[oldest][1].made then oldest = d end
    end
    drop_cookie(jar, oldest, 1)
  end
  list = jar.by_domain[c.domain] or list
  jar.by_domain[c.domain] = list
  list[#list + 1] = c
  jar.n = jar.n + 1
  return true
end

-- The Cookie header's value for host, path, secure (nil: none), the
-- longest paths first, then the oldest (5.4).
local function cookie_header(jar, host, path, secure, now)
  local chosen, domain = {}, host
  while domain do                              -- the host, then its parents
    for _, c in ipairs(expire(jar, domain, now) or {}) do
      if (not c.host_only or domain == host) and path_match(path, c.path) and
         (secure or not c.secure) then
        chosen[#chosen + 1] = c
      end
    end
    domain = not is_address(host) and domain:match("^[^.]*%.(.+)$") or nil
  end
  if #chosen == 0 then return nil end
  table.sort(chosen, function(a, b)
    if #a.path ~= #b.path then return #a.path > #b.path end
    return a.made < b.made
  end)
  for i, c in ipairs(chosen) do chosen[i] = c.name .. "=" .. c.value end
  return table.concat(chosen, "; ")
end

-- headers (the caller's, or nil) with the jar's cookies for a request to
-- host and target: after a Cookie header of the caller's, if any.
local function with_cookies(headers, jar, host, target, secure)
  local c = jar and cookie_header(jar, host:lower(), target:match("^[^?]*"), secure, market.now())
  if not c then return headers end
  local out, own = {}, nil
  for k, v in pairs(headers or {}) do
    if type(k) == "string" and k:lower() == "cookie" then
      own = type(v) == "table" and table.concat(v, "; ") or tostring(v)
    else
      out[k] = v
    end
  end
  out.Cookie = own and own .. "; " .. c or c
  return out
end

-- The Set-Cookie values of an answer from host to target, into the jar:
-- the first http.MAX_SET_COOKIES of them.
local function take_cookies(jar, lines, host, target, secure)
  local now = market.now()
  host, target = host:lower(), target:match("^[^?]*")
  for i = 1, math.min(#(lines or {}), M.MAX_SET_COOKIES) do
    store(jar, lines[i], host, target, secure, now)
  end
end

-- The host, path and whether secure of a jar method's url (http, https,
-- ws or wss); raises when it is not a string; nil, why when it is no such
-- url.
local function jar_url(url, what)
  if type(url) ~= "string" then
    error(("http.cookies: %s: url must be a string, got %s"):format(what, type(url)), 3)
  end
  local scheme = url:match("^(%a[%w+.-]*):")
  local host, why, _, target, secure = parse_url(url, scheme and WS_SCHEMES[scheme:lower()] ~= nil
                                                      and WS_SCHEMES or HTTP_SCHEMES)
  if not host then return nil, why end
  return host:lower(), target:match("^[^?]*"), secure
end

-- header = jar:header(url): what a request to url sends (nil: nothing).
function Jar:header(url)
  checkjar(self, "header")
  local host, path, secure = jar_url(url, "header")
  if not host then return nil end
  return cookie_header(self, host, path, secure, market.now())
end

-- ok, why = jar:set(url, set_cookie): a Set-Cookie value taken as if an
-- answer from url had brought it: true, or nil and why the jar refused it.
function Jar:set(url, line)
  checkjar(self, "set")
  if type(line) ~= "string" then
    error("http.cookies: set: set_cookie must be a string, got " .. type(line), 2)
  end
  local host, path, secure = jar_url(url, "set")
  if not host then return nil, path end
  return store(self, line, host, path, secure, market.now())
end

-- jar:list(): the cookies kept, each a table (name, value, domain, path,
-- secure, http_only, host_only, expires: ms since the epoch or nil).
function Jar:list()
  checkjar(self, "list")
  local now, all, out = market.now(), {}, {}
  local domains = {}
  for d in pairs(self.by_domain) do domains[#domains + 1] = d end
  for _, d in ipairs(domains) do
    for _, c in ipairs(expire(self, d, now) or {}) do all[#all + 1] = c end
  end
  table.sort(all, function(a, b) return a.made < b.made end)     -- oldest first
  for i, c in ipairs(all) do
    out[i] = { name = c.name, value = c.value, domain = c.domain, path = c.path, secure = c.secure,
               http_only = c.http_only, host_only = c.host_only, expires = c.expires }
  end
  return out
end

-- jar:clear(): every cookie gone.
function Jar:clear()
  checkjar(self, "clear")
  self.by_domain, self.n = {}, 0
end

-- ---- requests ----------------------------------------------------------

-- One request's bytes sent to host:port (over TLS with configuration
-- tls, or plain: nil), with a body function's pieces after them (body,
-- length: as exchange's), on the process's kept connection there or a
-- new one, and its response read (stream: as exchange's): the response,
-- or nil and why, and true after them when the sink or the body function
-- raised it.
local function ask(host, port, tls, bytes, body, length, method, deadline, idle, keep_ms,
                   max_response, stream)
  local now = market.monotonic()
  -- (a connection made with one TLS configuration is not another's)
  local key = (tls and ("https#%d:"):format(tls == true and 0 or tls.serial) or "") .. host .. ":" .. port
  local pool = kept_of(now)
  local conn = nil
  if keep_ms > 0 then conn = reuse(pool, key) end
  local res, keep, fresh, raised
  while true do
    local reused = conn ~= nil
    if not conn then
      local ms, whole = wait_ms(deadline, idle)
      if ms <= 0 then return nil, "timeout" end
      local why
      conn, why = tcp.connect(host, port, { connect_timeout = connect_ms(ms), tls = tls })
      if not conn then return nil, connect_failure(why, whole) end
      -- The server's certificate, asked now, while the connection is
      -- surely open; the connection keeps it for the requests after.
      if tls then conn:peer_certificate() end
    end
    res, keep, fresh, raised = exchange(conn, bytes, body, length, method, deadline, idle,
                                        max_response, stream)
    if res and tls then res.certificate = conn:peer_certificate() end
    if res or raised or not (reused and fresh and IDEMPOTENT[method]) then break end
    conn:close()                                -- closed idle as the request went: again
    conn = nil
  end
  if res and keep and keep_ms > 0 and pool.conns[key] == nil then
    keep_conn(pool, key, conn, keep_ms)
  else
    conn:close()
  end
  if not res then return nil, keep, raised end  -- (exchange's why)
  return res
end

-- res = http.request(url [, options]): one request, its response
-- {status=, reason=, version=, headers=, body=, url=, certificate=}
-- (certificate: the server's, https only), after the
-- redirects options.redirects allows; nil, why on failure.
function M.request(url, options)
  if type(url) ~= "string" then error("http.request: url must be a string, got " .. type(url), 2) end
  if not pcall(market.self) then error("http.request: not inside a market process", 2) end
  options = check(options, REQUEST_KEYS, "http.request")
  local method, headers, body = options.method or "GET", options.headers, options.body
  if options.length ~= nil and type(body) ~= "function" then
    error("http.request: length goes with a body function (a string's is its own)", 2)
  end
  local keep_ms = options.keep_alive or M.KEEP_ALIVE
  local max_response = options.max_response or M.MAX_RESPONSE
  local redirects, followed = options.redirects or 0, 0
  local sink = options.sink
  -- A response's body goes to the sink as it comes, but a redirect's
  -- while redirects are followed: kept whole, it goes to the sink only if
  -- it is the answer after all (no Location).
  local stream = sink and function(status)
    if redirects > 0 and REDIRECTS[status] then return nil end
    return sink
  end
  local deadline = market.monotonic() + (options.timeout or M.TIMEOUT)
  local idle = options.idle_timeout or math.huge
  local jar = options.cookies
  local host, port, authority, target, secure = parse_url(url)
  if not host then return nil, port end
  local tls = options.tls or true
  local function origin_of() return (secure and "https://" or "http://") .. host:lower() .. ":" .. port end
  local origin = origin_of()
  while true do
    local length                                -- (nil: no length header; -1: chunked)
    local pieces = type(body) == "function" and body or nil
    if pieces then
      length = options.length or -1
    elseif body or method == "POST" or method == "PUT" or method == "PATCH" then
      length = body and #body or 0
    end
    local ok, bytes = pcall(head, fmt("%s %s HTTP/1.1\r\nHost: %s\r\n", method, target, authority),
                            with_cookies(headers, jar, host, target, secure), CLIENT_OWN,
                            "http.request", nil, length, keep_ms == 0, not pieces and body or nil)
    if not ok then error(bytes, 2) end
    local res, why, raised = ask(host, port, secure and tls or nil, bytes, pieces, options.length,
                                 method, deadline, idle, keep_ms, max_response, stream)
    if raised then error(why, 0) end              -- the sink's or the body's error, as it raised it
    if not res then return nil, why end
    if jar then take_cookies(jar, res.set_cookies, host, target, secure) end
    local turn, location = REDIRECTS[res.status], res.headers.location
    -- A body function's pieces are gone: a redirect that would send the
    -- body again is the answer.
    local again = not (turn == "all" and method ~= "HEAD" or turn == "post" and method == "POST")
    if redirects == 0 or not turn or not location or pieces and again then
      if sink then
        if res.body ~= "" then sink(res.body) end   -- (kept whole: a redirect's)
        res.body = ""
      end
      res.url = url
      return res
    end
    if followed == redirects then
      return nil, ("too many redirects (%d followed): %d to %s"):format(followed, res.status, location)
    end
    followed = followed + 1
    local to = M.resolve(url, location)
    host, port, authority, target, secure = parse_url(to)
    if not host then return nil, ("redirected to %s: %s"):format(to, port) end
    url = to
    if not again then
      method, body = "GET", nil
      headers = without(headers, { ["content-type"] = true })
    end
    if origin_of() ~= origin then                   -- (and not back: once gone, gone)
      headers = without(headers, CREDENTIALS)
    end
  end
end

-- ---- WebSocket clients -------------------------------------------------

local CONNECT_KEYS = {
  headers = is_table,
  protocols = function(v)
    if type(v) ~= "table" or #v == 0 then return false end
    for _, p in ipairs(v) do
      if not is_token(p) then return false end
    end
    return true
  end,
  timeout = ms_or_huge, max_message = positive, cookies = is_jar,
  tls = is_tls }
-- (what the handshake's head says itself)
local WS_CLIENT_OWN = { ["content-length"] = true, ["transfer-encoding"] = true, host = true,
                        connection = true, upgrade = true, ["sec-websocket-key"] = true,
                        ["sec-websocket-version"] = true, ["sec-websocket-protocol"] = true,
                        ["sec-websocket-extensions"] = true }
local MAX_ANSWER = 64 * 1024   -- bytes of the handshake's answer (its head)

-- ws = http.websocket_connect(url [, options]): a WebSocket to a ws:// or
-- wss:// URL, its handshake done within options.timeout; nil and why.
function M.websocket_connect(url, options)
  if type(url) ~= "string" then
    error("http.websocket_connect: url must be a string, got " .. type(url), 2)
  end
  if not pcall(market.self) then error("http.websocket_connect: not inside a market process", 2) end
  options = check(options, CONNECT_KEYS, "http.websocket_connect")
  local host, port, authority, target, secure = parse_url(url, WS_SCHEMES)
  if not host then return nil, port end
  local key, protocols = parser.ws_key(), options.protocols
  local ok, bytes = pcall(head, fmt("GET %s HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\n" ..
    "Connection: Upgrade\r\nSec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n%s", target,
    authority, key, protocols and "Sec-WebSocket-Protocol: " .. table.concat(protocols, ", ") .. "\r\n"
    or ""), with_cookies(options.headers, options.cookies, host, target, secure), WS_CLIENT_OWN,
    "http.websocket_connect", nil, nil, false)
  if not ok then error(bytes, 2) end
  local deadline = market.monotonic() + (options.timeout or M.TIMEOUT)
  local conn, why = tcp.connect(host, port, {
    connect_timeout = connect_ms(wait_ms(deadline, math.huge)),
    tls = secure and (options.tls or true) or nil })
  if not conn then return nil, connect_failure(why, true) end
  local function failed(reason)
    conn:close()
    return nil, reason
  end
  ok, why = conn:send(bytes)
  if not ok then return failed(why) end
  -- The answer's head: a 101 ends there (what follows is frames).
  local p, rest = parser.response(MAX_ANSWER, false, MAX_ANSWER), ""
  while not p:status() do
    local wait = wait_ms(deadline, math.huge)
    if wait <= 0 then return failed("timeout") end
    local data, e = conn:receive(wait)
    if data == nil then
      return failed(e == "timeout" and "timeout" or e or "the connection closed before the answer")
    end
    local done, r = p:feed(data)
    if done == nil then return failed("malformed answer: " .. r) end
    if done then rest = r end
  end
  local m = p:message()
  local h = m.headers
  if options.cookies then take_cookies(options.cookies, m.set_cookies, host, target, secure) end
  if m.status ~= 101 then
    return failed(("not a WebSocket answer: %d %s"):format(m.status, m.reason))
  elseif not lists(h.upgrade, "websocket") or not lists(h.connection, "upgrade") then
    return failed("not a WebSocket answer: no Upgrade: websocket and Connection: Upgrade")
  elseif h["sec-websocket-accept"] ~= parser.ws_accept(key) then
    return failed("not a WebSocket answer: a wrong Sec-WebSocket-Accept")
  elseif h["sec-websocket-extensions"] then
    return failed("not a WebSocket answer: an extension nobody asked for (" ..
                  h["sec-websocket-extensions"] .. ")")
  end
  local protocol = h["sec-websocket-protocol"]
  if protocol then
    local offered = false
    for _, p2 in ipairs(protocols or {}) do offered = offered or p2 == protocol end
    if not offered then
      return failed("not a WebSocket answer: a subprotocol not offered (" .. protocol .. ")")
    end
  end
  return new_ws(conn, sys.owner(), options.max_message, true, protocol, rest)
end

return M

-- http_spec.lua: market.http (docs/http.md): http.serve's requests,
-- answers, keep-alive, pipelining, limits and failures, and
-- http.request's.  In one ground VM with its drivers, over loopback, on
-- ports the kernel picks; raw requests go through tcp.connect.
package.path = "spec/support/?.lua;" .. package.path
local market = require "market"
local http = require "market.http"
local tcp = require "market.tcp"
local timer = require "market.timer"
local H = require "helpers"
local N = require "net"

local function url(srv, path) return ("http://127.0.0.1:%d%s"):format(srv.port, path) end

-- What a handler saw of each request, as one line.
local function echo(req)
  local names = {}
  for k in pairs(req.headers) do names[#names + 1] = k end
  table.sort(names)
  return 200, { ["Content-Type"] = "text/plain", ["X-Seen"] = table.concat(names, ","),
                ["X-Buzz"] = "fizz buzz", ["Set-Cookie"] = { "a=1", "b=2" } },
    ("%s %s path=%s query=%s body=%s"):format(req.method, req.target, req.path,
                                              tostring(req.query), req.body)
end

-- Raw bytes to a server, and everything it says until it closes (or ms).
local function raw(srv, bytes, ms)
  local c = assert(tcp.connect("127.0.0.1", srv.port))
  assert(c:send(bytes))
  local t = {}
  while true do
    local d = c:receive(ms or 5000)
    if not d then break end
    t[#t + 1] = d
  end
  c:close()
  return table.concat(t)
end

-- A PUT of "hello" that says Expect: 100-continue: what the server says
-- before the body is sent, and its answer's body after.
local function continued(srv, path)
  local c = assert(tcp.connect("127.0.0.1", srv.port))
  c:send(("PUT %s HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n"):format(path))
  local first = c:receive(5000)
  c:send("hello")
  local answer = (c:receive(5000) or ""):match("\r\n\r\n(.*)$")
  c:close()
  return first, answer
end

-- A server written by hand on tcp.serve, for what http.serve would not
-- do.  For each request head that comes (no bodies here), answer(head, n),
-- n the head's number on its connection, gives the bytes to send, or nil
-- to close answering nothing, and true after them to close once they are
-- sent; gone() is called when a client closes.
local function by_hand(answer, gone)
  return assert(tcp.serve(0, function(conn)
    local buf, n = "", 0
    while true do
      local data = conn:receive()
      if not data then
        if gone then gone() end
        return
      end
      buf = buf .. data
      local at = select(2, buf:find("\r\n\r\n", 1, true))
      while at do
        local head = buf:sub(1, at)
        buf, n = buf:sub(at + 1), n + 1
        local reply, close = answer(head, n)
        if not reply then return end
        conn:send(reply)
        if close then return end
        at = select(2, buf:find("\r\n\r\n", 1, true))
      end
    end
  end))
end

-- The log lines of level `level` written while f runs.
local function logged(level, f)
  local lines = {}
  market.log.sink(function(l, _, message) if l == level then lines[#lines + 1] = message end end)
  local ok, r = pcall(f)
  market.log.sink(nil)
  assert(ok, r)
  return lines, r
end

describe("http.serve and http.request", function()
  it("serve a request and give back the response: status, reason, headers, body", function()
    local got = N.run(function()
      local srv = assert(http.serve(0, echo))
      local out = {}
      local r = assert(http.request(url(srv, "/a/b?x=1&y=2")))
      out[1] = { r.status, r.reason, r.version, r.headers["content-type"], r.headers["x-seen"], r.body,
                 r.headers["x-buzz"], r.headers["set-cookie"] }
      r = assert(http.request(url(srv, "/post"), { method = "POST", body = "hello",
                                                    headers = { ["X-Thing"] = 42 } }))
      out[2] = { r.status, r.headers["x-seen"], r.body, r.headers["content-length"] }
      r = assert(http.request(url(srv, "/head"), { method = "HEAD" }))
      out[3] = { r.status, r.body, r.headers["content-length"] }
      srv:close()
      return out
    end)
    assert.same({ 200, "OK", "1.1", "text/plain", "host",
                  "GET /a/b?x=1&y=2 path=/a/b query=x=1&y=2 body=", "fizz buzz", "a=1, b=2" }, got[1])
    assert.same({ 200, "content-length,host,x-thing", "POST /post path=/post query=nil body=hello",
                  "42" }, got[2])
    assert.same({ 200, "", "37" }, got[3])   -- HEAD: a GET's length, no body
  end)

  it("writes every header it is given: many, sequences, numbers", function()
    local got = N.run(function()
      local srv = assert(http.serve(0, function()
        local h = { ["X-Count"] = 7, ["X-List"] = { "a", 2, "c" } }
        for i = 1, 300 do h["X-H" .. i] = "v" .. i end
        return 200, h, "ok"
      end))
      local r = assert(http.request(url(srv, "/")))
      srv:close()
      return r.headers
    end)
    assert.equal("7", got["x-count"])
    assert.equal("a, 2, c", got["x-list"])
    for i = 1, 300 do assert.equal("v" .. i, got["x-h" .. i]) end
  end)

  it("keeps a connection alive, answering pipelined requests in order, and closes after an " ..
     "HTTP/1.0 one", function()
    local got = N.run(function()
      local srv = assert(http.serve(0, function(req) return 200, nil, req.path end))
      local out = raw(srv, "GET /1 HTTP/1.1\r\nHost: x\r\n\r\n" ..
                           "POST /2 HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc" ..
                           "GET /3 HTTP/1.0\r\n\r\n" ..
                           "GET /never HTTP/1.1\r\nHost: x\r\n\r\n")
      srv:close()
      return out
    end)
    local bodies, closes = {}, 0
    for head, body in got:gmatch("(HTTP/1%.1 200 OK\r\n.-\r\n\r\n)(/%d)") do
      bodies[#bodies + 1] = body
      if head:find("Connection: close", 1, true) then closes = closes + 1 end
    end
    assert.same({ "/1", "/2", "/3" }, bodies)
    assert.equal(1, closes)
  end)

  it("tells an HTTP/1.0 client that asked for keep-alive that the connection stays", function()
    local got = N.run(function()
      local srv = assert(http.serve(0, function(req) return 200, nil, req.path end))
      local c = assert(tcp.connect("127.0.0.1", srv.port))
      local out = {}
      for _, p in ipairs { "/a", "/b" } do
        c:send("GET " .. p .. " HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        out[#out + 1] = c:receive(5000)
      end
      c:close()
      srv:close()
      return out
    end)
    assert.equal(2, #got)
    for i, p in ipairs { "/a", "/b" } do
      assert.matches("^HTTP/1%.1 200 OK\r\nConnection: keep%-alive\r\n", got[i])
      assert.matches(p .. "$", got[i])
    end
  end)

  it("streams a body function's pieces chunked, and raw to an HTTP/1.0 client", function()
    local got = N.run(function()
      local srv = assert(http.serve(0, function()
        local i = 0
        return 200, { ["content-type"] = "text/plain" }, function()
          i = i + 1
          if i <= 3 then return ("piece %d;"):format(i) end
        end
      end))
      local r = assert(http.request(url(srv, "/")))
      local old = raw(srv, "GET / HTTP/1.0\r\n\r\n")
      srv:close()
      return { r.headers["transfer-encoding"], r.body, old:match("\r\n\r\n(.*)$"),
               old:find("Transfer-Encoding", 1, true) == nil }
    end)
    assert.same({ "chunked", "piece 1;piece 2;piece 3;", "piece 1;piece 2;piece 3;", true }, got)
  end)

  it("answers a handler that fails with 500, logs why, and goes on serving", function()
    local got = N.run(function()
      local srv = assert(http.serve(0, function(req)
        if req.path == "/boom" then error("broken on purpose") end
        if req.path == "/bad" then return "two hundred" end
        if req.path == "/hdr" then return 200, { ["X-Evil"] = "a\r\nSet-Cookie: x=1" }, "" end
        if req.path == "/own" then return 200, { ["Content-Length"] = "5" }, "" end
        if req.path == "/conn" then return 200, { Connection = "keep-alive" }, "" end
        if req.path == "/key" then return 200, { "positional" }, "" end
        return 200, nil, "fine"
      end))
      local out = {}
      local lines = logged("error", function()
        for _, p in ipairs { "/boom", "/bad", "/hdr", "/own", "/conn", "/key", "/ok" } do
          local r = assert(http.request(url(srv, p)))
          out[#out + 1] = r.status .. " " .. r.body
        end
      end)
      out[#out + 1] = lines
      srv:close()
      return out
    end)
    local lines = table.remove(got)
    local failed = "500 the handler failed; see the server's log\n"
    assert.same({ failed, failed, failed, failed, failed, failed, "200 fine" }, got)
    -- The sixth is over the log's rate limit (5 lines in 10 s from one
    -- place: docs/limits.md), answered all the same.
    assert.equal(5, #lines)
    assert.matches("http.serve: GET /boom: spec/http_spec.lua:%d+: broken on purpose", lines[1])
    assert.matches('GET /bad: http.serve: the handler must return a status %(an integer from 100 to 999%), ' ..
                   'got "two hundred"', lines[2])
    assert.matches("GET /hdr: http.serve: header X%-Evil holds a CR, LF or NUL", lines[3])
    assert.matches("GET /own: http.serve: the header Content%-Length is market's to write", lines[4])
    assert.matches('GET /conn: http.serve: the only Connection header a handler may give is "close", ' ..
                   'got "keep%-alive"', lines[5])
  end)

  it("answers malformed and oversized requests with 400, 413, 431 and 505, a coding it does not " ..
     "know with 501, and slow ones with 408",
     function()
    local got = N.run(function()
      local srv = assert(http.serve(0, echo, { max_request = 1024, timeout = 200 }))
      local out = {}
      local function status(bytes) out[#out + 1] = raw(srv, bytes):match("^HTTP/1%.1 (%d+)") end
      status("NOT HTTP AT ALL\r\n\r\n")
      -- 413 as soon as the head says how long the body is: none is sent.
      status("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 2000\r\n\r\n")
      -- A chunked body says no length first: 413 once it is past the limit.
      status("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n" ..
             "7d0\r\n" .. ("x"):rep(2000) .. "\r\n0\r\n\r\n")
      status("GET / HTTP/1.1\r\nHost: x\r\nX-Big: " .. ("y"):rep(2000) .. "\r\n\r\n")
      -- Only HTTP/1.x: 9.9 was answered as 1.1.
      status("GET / HTTP/9.9\r\nHost: x\r\n\r\n")
      -- http_parser takes a list ending in chunked as chunked alone: the
      -- handler had the bytes still gzipped for the body.
      status("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n" ..
             "3\r\nabc\r\n0\r\n\r\n")
      local slow = raw(srv, "GET / HTTP/1.1\r\nHost: x\r\n")     -- the head never ends
      out[#out + 1] = slow:match("^HTTP/1%.1 (%d+)")
      out[#out + 1] = slow:match("no whole request within 200 ms") ~= nil
      -- A client that says Expect: 100-continue hears 100 before it sends the body.
      local first, answer = continued(srv, "/up")
      out[#out + 1] = first
      out[#out + 1] = answer and answer:match("body=(%w+)$")
      srv:close()
      return out
    end)
    assert.same({ "400", "413", "413", "431", "505", "501", "408", true, "HTTP/1.1 100 Continue\r\n\r\n",
                  "hello" }, got)
  end)

  -- http_parser lets whitespace before a header's colon through, and
  -- frames by "Content-Length :" all the same: the handler saw the name
  -- with its space ("content-length " beside the framing, two hosts).
  it("refuses whitespace before a request header's colon (400), and reads a response's " ..
     "header name without it", function()
    local got = N.run(function()
      local srv = assert(http.serve(0, echo))
      local out = {}
      local function answer(bytes)
        local r = raw(srv, bytes)
        out[#out + 1] = r:match("^HTTP/1%.1 (%d+)") .. " " .. r:match("\r\n\r\n(.-)\n?$")
      end
      answer("GET / HTTP/1.1\r\nHost: good\r\nHost : evil\r\nConnection: close\r\n\r\n")
      answer("POST / HTTP/1.1\r\nHost: x\r\nContent-Length\t: 5\r\nConnection: close\r\n\r\nhello")
      answer("GET / HTTP/1.1\r\nHo st: x\r\nConnection: close\r\n\r\n")
      srv:close()
      local fake = assert(tcp.serve(0, function(conn)
        conn:receive()
        conn:send("HTTP/1.1 200 OK\r\nContent-Length : 2\r\nX-A  : b\r\nConnection: close\r\n\r\nok")
      end))
      local r = assert(http.request("http://127.0.0.1:" .. fake.port .. "/"))
      fake:close()
      out[#out + 1] = { r.status, r.body, r.headers["content-length"], r.headers["x-a"],
                        r.headers["content-length "] }
      return out
    end)
    assert.same({ "400 whitespace before a header's colon",
                  "400 invalid character in header",          -- (a tab: http_parser's own)
                  "400 invalid character in a header name", { 200, "ok", "2", "b" } }, got)
  end)

  it("answers a head past the parser's 80 KiB with 431 whatever max_request allows", function()
    local got = N.run(function()
      local out = {}
      for _, stream in ipairs({ false, true }) do
        local srv = assert(http.serve(0, function() return 200, nil, "ok" end,
                                      { max_request = 4 << 20, stream_body = stream }))
        for _, n in ipairs({ 70000, 90000, 200000 }) do
          out[#out + 1] = raw(srv, "GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\nX-Big: " ..
                                   ("y"):rep(n) .. "\r\n\r\n"):match("^HTTP/1%.1 (%d+[^\r]*)")
        end
        srv:close()
      end
      return out
    end)
    local too_large = "431 Request Header Fields Too Large"
    assert.same({ "200 OK", too_large, too_large, "200 OK", too_large, too_large }, got)
  end)

  it("drops a chunked body's trailer fields: never merged into the headers or the cookies",
     function()
    local got = N.run(function()
      local out = {}
      local chunked = "POST / HTTP/1.1\r\nHost: good\r\nTransfer-Encoding: chunked\r\n\r\n" ..
                      "5\r\nhello\r\n0\r\nHost: evil\r\nX-Last: 1\r\n\r\n"
      for _, stream in ipairs({ false, true }) do
        local srv = assert(http.serve(0, function(req)
          local before = req.headers.host
          local body = req.body
          if stream then
            body = ""
            for piece in req.body do body = body .. piece end
          end
          return 200, nil, ("%s %s %s %s\n"):format(before, req.headers.host,
                                                  tostring(req.headers["x-last"]), body)
        end, { stream_body = stream }))
        -- (and the next request on the connection is read as ever)
        local r = raw(srv, chunked .. "GET /next HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        local bodies = {}
        for b in r:gmatch("\r\n\r\n([^\n]*)\n") do bodies[#bodies + 1] = b end
        out[#out + 1] = { bodies[1], #bodies }
        srv:close()
      end
      local srv = by_hand(function()
        return "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" ..
               "3\r\nabc\r\n0\r\nSet-Cookie: sid=evil\r\nX-Last: 1\r\n\r\n"
      end)
      local jar = http.cookies()
      local res = assert(http.request(url(srv, "/"), { cookies = jar, keep_alive = 0 }))
      out[#out + 1] = { res.body, tostring(res.headers["set-cookie"]), tostring(res.headers["x-last"]),
                        #res.set_cookies, tostring(jar:header(url(srv, "/"))) }
      srv:close()
      return out
    end)
    assert.same({ "good good nil hello", 2 }, got[1])
    assert.same({ "good good nil hello", 2 }, got[2])
    assert.same({ "abc", "nil", "nil", 0, "nil" }, got[3])
  end)

  it("hands a request's body to the handler as it comes with stream_body: pieces past " ..
     "max_request, 100 Continue at the first read, failures as nil and why, the connection " ..
     "kept only after a whole body", function()
    local got = N.run(function()
      local failed, saved = {}, nil
      local srv = assert(http.serve(0, function(req)
        if req.path == "/count" then
          local n, pieces = 0, 0
          while true do
            local piece, err = req.body()
            if not piece then
              if err then
                failed[#failed + 1] = err
                return 400, nil, "failed: " .. err
              end
              break
            end
            n, pieces = n + #piece, pieces + 1
          end
          assert(req.body() == nil)              -- the end, again
          return 200, nil, ("%d bytes in %s"):format(n, pieces > 1 and "pieces" or "one")
        elseif req.path == "/save" then
          saved = req.body
        elseif req.path == "/saved" then
          return 200, nil, select(2, pcall(saved))
        end
        return 200, nil, req.method .. " " .. req.path         -- the body left unread
      end, { stream_body = true, max_request = 1024, timeout = 200 }))
      local out = {}
      local function status_body(bytes)
        local r = raw(srv, bytes)
        local n = 0
        for _ in r:gmatch("HTTP/1%.1 %d+") do n = n + 1 end
        return r:match("^HTTP/1%.1 (%d+)"), r:match("\r\n\r\n(.*)$"), n
      end
      local res = assert(http.request(url(srv, "/count"), { method = "POST", body = ("x"):rep(300000) }))
      out[#out + 1] = res.body
      -- Chunked, then a pipelined request on the same connection.
      local r = raw(srv, "POST /count HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n" ..
                         "5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n" ..
                         "GET /next HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", 2000)
      out[#out + 1] = select(2, r:gsub("11 bytes in", "")) + select(2, r:gsub("GET /next", ""))
      -- 100 Continue only once the handler reads: not at all when it answers first.
      out[#out + 1], out[#out + 2] = continued(srv, "/count")
      out[#out + 1] = raw(srv, "PUT /refuse HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n" ..
                               "Expect: 100-continue\r\n\r\n"):match("^HTTP/1%.1 %d+ [^\r]*\r\n")
      -- A body left unread but whole keeps the connection; one still coming closes it.
      out[#out + 1] = select(3, status_body("POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhi" ..
                                            "GET /b HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"))
      out[#out + 1] = select(3, status_body("POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 20\r\n\r\nhi"))
      -- Failures: too slow, malformed, the client gone.
      out[#out + 1] = { status_body("POST /count HTTP/1.1\r\nHost: x\r\nContent-Length: 20\r\n\r\nhi") }
      out[#out + 1] = { status_body("POST /count HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n") }
      local c = assert(tcp.connect("127.0.0.1", srv.port))
      c:send("POST /count HTTP/1.1\r\nHost: x\r\nContent-Length: 20\r\n\r\nhi")
      timer.sleep(50)
      c:close()
      for _ = 1, 100 do if #failed == 2 then break end timer.sleep(10) end
      out[#out + 1] = tostring(failed[2])
      -- Read from elsewhere, or after its answer: misuse.
      out[#out + 1] = select(2, status_body("GET /save HTTP/1.1\r\nHost: x\r\n\r\n" ..
                                            "GET /saved HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"))
      out[#out + 1] = select(2, pcall(saved))
      srv:close()
      return out
    end)
    assert.same({ "300000 bytes in pieces", 2, "HTTP/1.1 100 Continue\r\n\r\n", "5 bytes in one",
                  "HTTP/1.1 200 OK\r\n", 2, 1,
                  { "400", "failed: no piece of the body within 200 ms", 1 } }, { table.unpack(got, 1, 8) })
    assert.equal("400", got[9][1])
    assert.matches("invalid character in chunk size", got[9][2])
    assert.equal("the client closed before the body's end", got[10])
    local misuse = "http.serve: req.body: a request's body is read in its connection's process, " ..
                   "while its answer is made"
    assert.matches(misuse, got[11], 1, true)
    assert.matches(misuse, got[12], 1, true)
  end)

  it("with stream_body, sends 100 Continue before the head of an answer whose body function " ..
     "reads the body, and never after it", function()
    local got = N.run(function()
      local srv = assert(http.serve(0, function(req)
        if req.path == "/late" then                 -- reads only after a first piece has gone
          local sent = false
          return 200, nil, function()
            if not sent then sent = true; return "first " end
            return (req.body())
          end
        end
        return 200, nil, function() return (req.body()) end
      end, { stream_body = true, timeout = 2000 }))
      local out = {}
      for _, path in ipairs({ "/echo", "/late" }) do
        local c = assert(tcp.connect("127.0.0.1", srv.port))
        c:send(("PUT %s HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
               :format(path))
        -- What comes before the body is sent: up to the final head's end.
        local t = ""
        while not t:find("HTTP/1%.1 200 OK\r\n.-\r\n\r\n") do
          local d = c:receive(2000)
          if not d then break end
          t = t .. d
        end
        c:send("hello")
        while true do
          local d = c:receive(2000)
          if not d then break end
          t = t .. d
        end
        c:close()
        out[#out + 1] = { t:match("^(.-)HTTP/1%.1 200 OK\r\n"), t:match("\r\n\r\n(%x+\r\n.*)$") }
      end
      srv:close()
      return out
    end)
    assert.same({ "HTTP/1.1 100 Continue\r\n\r\n", "5\r\nhello\r\n0\r\n\r\n" }, got[1])
    assert.same({ "HTTP/1.1 100 Continue\r\n\r\n", "6\r\nfirst \r\n5\r\nhello\r\n0\r\n\r\n" }, got[2])
  end)

  it("sends a body function's pieces, chunked or of the length given, and reads an answer " ..
     "that came before the body's end", function()
    local got = N.run(function()
      local srv = assert(http.serve(0, function(req)
        if req.path == "/refuse" then return 413, nil, "too large" end
        if req.path == "/moved" then return 307, { location = "/count" }, "" end
        if req.path == "/other" then return 303, { location = "/count" }, "" end
        local n, chunks = 0, 0
        while true do
          local piece, err = req.body()
          if not piece then
            if err then return 400, nil, err end
            break
          end
          n, chunks = n + #piece, chunks + 1
        end
        return 200, nil, ("%s %s %d %s %s"):format(req.method, req.path, n,
          tostring(req.headers["content-length"]), tostring(req.headers["transfer-encoding"]))
      end, { stream_body = true }))
      local function pieces(list)
        local i = 0
        return function() i = i + 1; return list[i] end
      end
      local out = {}
      local function ask(path, options)
        local ok, r, why = pcall(http.request, url(srv, path), options)
        out[#out + 1] = not ok and r or r and (r.status .. " " .. r.body) or why
      end
      ask("/count", { method = "POST", body = pieces({ "hello", "", " world", ("x"):rep(100000) }) })
      ask("/count", { method = "PUT", body = pieces({ "hello", " world" }), length = 11 })
      ask("/count", { method = "PUT", body = pieces({ "hello" }), length = 11 })
      ask("/count", { method = "PUT", body = pieces({ "hello", " world!" }), length = 11 })
      ask("/count", { method = "PUT", body = function() error("disk read failed", 0) end })
      ask("/count", { method = "PUT", body = pieces({ "a", 42 }) })
      ask("/count", { method = "PUT", body = "text", length = 4 })
      -- A redirect that would send the body again is the answer; one to a GET is followed.
      ask("/moved", { method = "PUT", body = pieces({ "hello" }), redirects = 3 })
      ask("/other", { method = "PUT", body = pieces({ "hello" }), redirects = 3 })
      -- 12.8 MB the server does not read: its 413 is the answer.
      local big = ("z"):rep(65536)
      local n = 0
      ask("/refuse", { method = "PUT", body = function()
        n = n + 1
        return n <= 200 and big or nil
      end })
      -- A server that answers as soon as the head came, and closes (its
      -- side lingers, taking what still comes): its answer is the response.
      local early = by_hand(function()
        return "HTTP/1.1 401 Unauthorized\r\nContent-Length: 2\r\nConnection: close\r\n\r\nno", true
      end)
      n = 0
      local ok, r = pcall(http.request, "http://127.0.0.1:" .. early.port .. "/", { method = "PUT",
        body = function()
          n = n + 1
          if n > 1 then timer.sleep(100) end
          return n <= 20 and big or nil
        end })
      out[#out + 1] = ok and r and (r.status .. " " .. r.body) or tostring(r)
      early:close()
      out[#out + 1] = assert(http.request(url(srv, "/count"))).body     -- the client goes on
      srv:close()
      return out
    end)
    assert.same({ "200 POST /count 100011 nil chunked", "200 PUT /count 11 11 nil",
                  "http.request: the body function gave 5 bytes, not length (11)",
                  "http.request: the body function gave more than length (11 bytes)",
                  "disk read failed",
                  "http.request: the body function must return strings (nil at the end), got number" },
                { table.unpack(got, 1, 6) })
    assert.matches("length goes with a body function", got[7], 1, true)
    assert.same({ "307 ", "200 GET /count 0 nil nil", "413 too large", "401 no",
                  "GET /count 0 nil nil" }, { table.unpack(got, 8, 12) })
  end)

  it("closes a connection idle for keep_alive ms, and one the handler asks to close", function()
    local got = N.run(function()
      local srv = assert(http.serve(0, function(req)
        if req.path == "/close" then return 200, { connection = "close" }, "bye" end
        return 200, nil, "ok"
      end, { keep_alive = 100 }))
      local out = {}
      local c = assert(tcp.connect("127.0.0.1", srv.port))
      c:send("GET / HTTP/1.1\r\nHost: x\r\n\r\n")
      local t0 = market.now()
      local all = {}
      for d in c:lines(5000) do all[#all + 1] = d end    -- until the server closes
      out[1] = table.concat(all):match("ok$")
      out[2] = market.now() - t0 < 4000
      c:close()
      out[3] = raw(srv, "GET /close HTTP/1.1\r\nHost: x\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n")
      srv:close()
      return out
    end)
    assert.same({ "ok", true }, { got[1], got[2] })
    assert.matches("Connection: close\r\n", got[3], 1, true)
    assert.matches("bye$", got[3])
    assert.is_nil(got[3]:find("ok", 1, true))      -- the second request was not answered
  end)

  it("skips a response's interim 1xx answers, in the same read or apart", function()
    local got = N.run(function()
      local srv = assert(tcp.serve(0, function(conn)
        conn:receive()
        conn:send("HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n")
        timer.sleep(20)
        conn:send("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        conn:receive()
      end))
      local r = assert(http.request("http://127.0.0.1:" .. srv.port .. "/"))
      srv:close()
      return { r.status, r.body, r.headers.link }
    end)
    assert.same({ 200, "ok" }, got)
  end)

  it("reads no body after a 1xx, 204 or 304, whatever Content-Length or Transfer-Encoding " ..
     "says", function()
    -- A 304's Content-Length is the length a 200 would have (RFC 9110
    -- 8.6): it was waited for until the timeout; a 103's took the real
    -- answer's status line for its body.
    local got = N.run(function()
      local srv = by_hand(function(head, n)
        local path = head:match("^%u+ (%S+)")
        if path == "/early" then
          return "HTTP/1.1 103 Early Hints\r\nLink: </a>\r\nContent-Length: 5\r\n\r\n" ..
                 "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
        elseif path == "/same" then
          return "HTTP/1.1 304 Not Modified\r\nETag: \"x\"\r\nContent-Length: 1234\r\n\r\n"
        elseif path == "/none" then
          return "HTTP/1.1 204 No Content\r\nTransfer-Encoding: chunked\r\n\r\n"
        end
        return "HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n" .. n   -- (its head's number)
      end)
      local out = {}
      for _, path in ipairs({ "/early", "/same", "/none", "/after" }) do
        local r, why = http.request(url(srv, path), { timeout = 1000 })
        out[#out + 1] = r and { r.status, r.body } or why
      end
      srv:close()
      return out
    end)
    -- One connection, kept throughout: nothing after a head was taken for a body.
    assert.same({ { 200, "ok" }, { 304, "" }, { 204, "" }, { 200, "4" } }, got)
  end)

  it("keeps a client's connection for its next request to the same server, unless told not to",
     function()
    local got = N.run(function()
      -- Each answer says which client port it came in on.
      local srv = assert(http.serve(0, function(req)
        if req.path == "/close" then return 200, { Connection = "close" }, tostring(req.remote.port) end
        return 200, nil, tostring(req.remote.port)
      -- 1 s: the requests below that expect the same connection must
      -- each come within it, and a loaded machine made 100 ms too short.
      end, { keep_alive = 1000 }))
      local function port(path, options) return assert(http.request(url(srv, path), options)).body end
      local out = {}
      local a = port("/")
      out[#out + 1] = port("/") == a                        -- kept: the same connection
      out[#out + 1] = port("/close") == a                   -- kept, and the server closes it after
      local b = port("/")
      out[#out + 1] = b ~= a                                -- a new one
      timer.sleep(1500)                                     -- the server closes it idle
      local c = port("/")
      out[#out + 1] = c ~= b
      out[#out + 1] = port("/", { keep_alive = 0 }) ~= c    -- one of its own, closed after
      out[#out + 1] = port("/") == c                        -- the kept one still
      out[#out + 1] = select(2, pcall(http.request, url(srv, "/"), { keep_alive = -1 }))
      -- Nothing of the client's or the server's is kept for this process's
      -- market.yield(): each alarm set for the kept connections brought
      -- the ground's presence, each connection that ended its absence.
      local strays = {}
      while true do
        local ev = market.yield(0)
        if not ev then break end
        if ev.endpoint:find("^http") or ev.endpoint:find("^tcp") then
          strays[#strays + 1] = ev.type .. " " .. ev.endpoint
        end
      end
      out[#out + 1] = table.concat(strays, ", ")
      srv:close()
      return out
    end)
    assert.same({ true, true, true, true, true, true,
                  "http.request: bad keep_alive: -1", "" }, got)
  end)

  -- A kept connection is closed when its time passes, or when its server
  -- closes it, while the process does something else: it stayed open
  -- until the process's next request or its end (and one its server had
  -- closed held its descriptor meanwhile).
  it("closes a kept connection when its time passes or its server closes it, between requests",
     function()
    local got = N.run(function()
      -- Answers each request keeping the connection; closes it after
      -- answering /bye.  Counts the connections whose client closed.
      local closed = 0
      local srv = by_hand(function(head)
        -- /bye: the server's close
        return "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", head:find("^GET /bye ") ~= nil
      end, function() closed = closed + 1 end)
      local function clients()                        -- this process's connections to srv
        local n = 0
        for _, c in ipairs(tcp.inspect().connections) do
          if c.peer.port == srv.port then n = n + 1 end
        end
        return n
      end
      local out = {}
      assert(http.request(url(srv, "/"), { keep_alive = 100 }))
      out[1] = clients()                              -- kept
      timer.sleep(400)                                -- no request meanwhile
      out[2] = closed                                 -- the client closed it after 100 ms
      out[3] = clients()
      assert(http.request(url(srv, "/bye")))          -- kept for 60 s, closed by the server
      timer.sleep(100)
      out[4] = clients()                              -- the client closed its side too
      srv:close()
      return out
    end)
    assert.same({ 1, 1, 0, 0 }, got)
  end)

  -- A script that asks once and returns ends then: it waited for ever,
  -- the connection kept for its next request (and its socket watch)
  -- holding the program; its boot function's return closes it.
  it("lets a script that asked once end when it returns", function()
    local server, port = N.await_listening(N.start_cmd(("exec %s -e %s"):format(N.q(N.market_bin()),
      N.q([[
        local http = require "market.http"
        local srv = assert(http.serve(0, function() return 200, nil, "hi" end))
        io.stderr:write(("listening on port %d\n"):format(srv.port))
      ]]))), "the server")
    local script = H.tempfile(([[
      local http = require "market.http"
      local r = assert(http.request("http://127.0.0.1:%d/"))   -- kept for 60 s
      print(r.status, r.body)
    ]]):format(port))
    local client = N.start(script)
    local status = client.wait_exit(10)
    local out = client.stdout() .. client.stderr()
    client.kill()
    server.kill()
    os.remove(script)
    assert.equal(0, status, out)
    assert.equal("200\thi\n", out)
  end)

  -- A server may close a kept connection idle just as the client's next
  -- request goes.  This one answers the first request of each connection
  -- (keep-alive) and closes on the second, answering nothing.
  it("sends an idempotent request again on a new connection when the kept one closes unanswered",
     function()
    local got = N.run(function()
      local conns = 0
      local flaky = by_hand(function(_, n)
        if n > 1 then return nil end                  -- closes, answering nothing
        conns = conns + 1                             -- (a connection's first request)
        return ("HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%d"):format(#tostring(conns), conns)
      end)
      local function ask(method)
        local res, why = http.request("http://127.0.0.1:" .. flaky.port .. "/", { method = method })
        return res and res.body or why
      end
      local out = {}
      out[1] = ask("GET")                               -- connection 1
      out[2] = ask("GET")                               -- 1 closes unanswered: again on 2
      out[3] = ask("POST")                              -- 2 closes unanswered: not again
      out[4] = conns
      flaky:close()
      return out
    end)
    assert.same({ "1", "2", "the connection closed before the whole response", 2 }, got)
  end)

  it("reports a client's failures as nil and the reason", function()
    local free = N.free_port()
    local got = N.run(function()
      local out = {}
      out[1] = select(2, http.request("https://127.0.0.1:" .. free .. "/"))
      out[2] = select(2, http.request("ftp://127.0.0.1/"))
      out[3] = select(2, http.request("127.0.0.1/"))
      out[4] = select(2, http.request("http://127.0.0.1:99999/"))
      out[5] = select(2, http.request("http://127.0.0.1:" .. free .. "/"))
      -- A server that says nothing, then one that answers garbage, then
      -- one whose body is larger than max_response.
      local mute = assert(tcp.serve(0, function(conn) conn:receive(); conn:receive(5000) end))
      out[6] = select(2, http.request("http://127.0.0.1:" .. mute.port .. "/", { timeout = 100 }))
      local junk = assert(tcp.serve(0, function(conn) conn:receive(); conn:send("SPAM\r\n\r\n") end))
      out[7] = select(2, http.request("http://127.0.0.1:" .. junk.port .. "/"))
      local big = assert(http.serve(0, function() return 200, nil, ("z"):rep(5000) end))
      out[8] = select(2, http.request(url(big, "/"), { max_response = 1000 }))
      local cut = assert(tcp.serve(0, function(conn)
        conn:receive()
        conn:send("HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
      end))
      out[9] = select(2, http.request("http://127.0.0.1:" .. cut.port .. "/"))
      local two = assert(tcp.serve(0, function(conn)
        conn:receive()
        conn:send("HTTP/2.0 200 OK\r\nContent-Length: 0\r\n\r\n")
      end))
      out[10] = select(2, http.request("http://127.0.0.1:" .. two.port .. "/"))
      local long = assert(tcp.serve(0, function(conn)
        conn:receive()
        conn:send("HTTP/1.1 200 OK\r\nX-Long: " .. ("h"):rep(90000) .. "\r\n\r\n")
      end))
      out[11] = select(2, http.request("http://127.0.0.1:" .. long.port .. "/"))
      -- (Each of these three said "no host in"; a space went to the resolver.)
      out[12] = select(2, http.request("http://127.0.0.1:-1/"))
      out[13] = select(2, http.request("http://[::1]80/"))
      out[14] = select(2, http.request("http://127.0.0.1 /"))
      -- (It was status 0.)
      local zero = assert(tcp.serve(0, function(conn)
        conn:receive()
        conn:send("HTTP/1.1 000 OK\r\nContent-Length: 0\r\n\r\n")
      end))
      out[15] = select(2, http.request("http://127.0.0.1:" .. zero.port .. "/"))
      mute:close(); junk:close(); big:close(); cut:close(); two:close(); long:close(); zero:close()
      return out
    end)
    assert.same({ "connection refused",
                  "not an http URL: ftp://127.0.0.1/",
                  "not an absolute URL: 127.0.0.1/",
                  "bad port in http://127.0.0.1:99999/",
                  "connection refused", "timeout" }, { table.unpack(got, 1, 6) })
    assert.matches("^malformed response: ", got[7])
    assert.matches("^response too large: ", got[8])
    assert.equal("the connection closed before the whole response", got[9])
    -- (It said "response too large".)
    assert.equal("malformed response: HTTP version not supported: only 1.x", got[10])
    -- (A response's head was called a request's.)
    assert.equal("response too large: response head too large", got[11])
    assert.same({ "bad port in http://127.0.0.1:-1/", "bad port in http://[::1]80/",
                  "a space or control character in http://127.0.0.1 /",
                  "malformed response: a status outside 100..599" }, { table.unpack(got, 12, 15) })
  end)

  it("bounds a response's body by max_response, and its head by 80 KiB alone", function()
    -- max_response = 64 refused an ordinary head of 90 bytes with a body of 2.
    local got = N.run(function()
      local srv = by_hand(function(head)
        local kind, n = head:match("^%u+ /(%a+)/(%d+)")
        n = tonumber(n)
        if kind == "head" then
          return "HTTP/1.1 200 OK\r\nX-Long: " .. ("h"):rep(n) .. "\r\nContent-Length: 2\r\n\r\nok"
        end
        return "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nServer: spec\r\n" ..
               "Content-Length: " .. n .. "\r\n\r\n" .. ("b"):rep(n)
      end)
      local out = {}
      for _, path in ipairs({ "/body/2", "/body/64", "/body/65", "/head/2000", "/head/80000",
                              "/head/82000" }) do
        local r, why = http.request(url(srv, path), { max_response = 64, timeout = 2000 })
        out[#out + 1] = r and #r.body or why
      end
      srv:close()
      return out
    end)
    assert.same({ 2, 64, "response too large: body too large", 2, 2,
                  "response too large: response head too large" }, got)
  end)

  it("follows redirects when asked: relative Locations, the method a status keeps, credentials " ..
     "kept from another server, a limit", function()
    local got = N.run(function()
      local function seen(who, req)
        return 200, nil, ("%s %s %s auth=%s cookie=%s type=%s body=%s"):format(who, req.method,
          req.target, tostring(req.headers.authorization), tostring(req.headers.cookie),
          tostring(req.headers["content-type"]), req.body)
      end
      local other = assert(http.serve(0, function(req) return seen("other", req) end))
      local moves = {
        ["/a"] = { 302, "b/c?x=1" }, ["/b/c"] = { 301, "../d#part" }, ["/loop"] = { 302, "/loop" },
        ["/303"] = { 303, "/end" }, ["/307"] = { 307, "/end" }, ["/308"] = { 308, "/end" },
        ["/away"] = { 302, "http://127.0.0.1:" .. other.port .. "/there" },
        ["/ftp"] = { 301, "ftp://127.0.0.1/x" }, ["/nowhere"] = { 302, nil },
      }
      local srv = assert(http.serve(0, function(req)
        local move = moves[req.path]
        if not move then return seen("here", req) end
        return move[1], { location = move[2] }, "moved"
      end))
      local out = {}
      local function ask(path, options)
        local r, e = http.request(url(srv, path), options)
        out[#out + 1] = r and { r.status, (r.url:gsub(":%d+/", ":P/")), r.body } or { e }
      end
      local form = { ["Content-Type"] = "text/plain" }
      ask("/a")                                               -- not followed unless asked
      ask("/a", { redirects = 5 })
      ask("/a", { redirects = 1 })
      ask("/loop", { redirects = 3 })
      ask("/a", { redirects = 5, method = "POST", body = "hi", headers = form })
      ask("/307", { redirects = 5, method = "POST", body = "hi", headers = form })
      ask("/308", { redirects = 5, method = "PUT", body = "hi" })
      ask("/303", { redirects = 5, method = "PUT", body = "hi", headers = form })
      ask("/303", { redirects = 5, method = "HEAD" })
      ask("/307", { redirects = 5, headers = { Authorization = "secret", Cookie = "c=1" } })
      ask("/away", { redirects = 5, headers = { Authorization = "secret", cookie = "c=1" } })
      ask("/ftp", { redirects = 5 })
      ask("/nowhere", { redirects = 5 })
      srv:close(); other:close()
      return out
    end)
    assert.same({
      { 302, "http://127.0.0.1:P/a", "moved" },
      { 200, "http://127.0.0.1:P/d", "here GET /d auth=nil cookie=nil type=nil body=" },
      { "too many redirects (1 followed): 301 to ../d#part" },
      { "too many redirects (3 followed): 302 to /loop" },
      { 200, "http://127.0.0.1:P/d", "here GET /d auth=nil cookie=nil type=nil body=" },
      { 200, "http://127.0.0.1:P/end", "here POST /end auth=nil cookie=nil type=text/plain body=hi" },
      { 200, "http://127.0.0.1:P/end", "here PUT /end auth=nil cookie=nil type=nil body=hi" },
      { 200, "http://127.0.0.1:P/end", "here GET /end auth=nil cookie=nil type=nil body=" },
      { 200, "http://127.0.0.1:P/end", "" },
      { 200, "http://127.0.0.1:P/end", "here GET /end auth=secret cookie=c=1 type=nil body=" },
      { 200, "http://127.0.0.1:P/there", "other GET /there auth=nil cookie=nil type=nil body=" },
      { "redirected to ftp://127.0.0.1/x: not an http URL: ftp://127.0.0.1/x" },
      { 302, "http://127.0.0.1:P/nowhere", "moved" },
    }, got)
  end)

  it("hands a response's body to a sink as it comes, past max_response, and not a followed " ..
     "redirect's", function()
    local got = N.run(function()
      local srv = assert(http.serve(0, function(req)
        if req.path == "/stream" then
          local i = 0
          return 200, nil, function()        -- four pieces, 50 ms apart
            i = i + 1
            if i > 4 then return nil end
            timer.sleep(50)
            return "piece " .. i .. ";"
          end
        elseif req.path == "/big" then
          return 200, nil, ("x"):rep(3000000)
        elseif req.path == "/moved" then
          return 302, { location = "/stream" }, "redirect body"
        elseif req.path == "/nowhere" then
          return 302, nil, "no location body"
        end
      end))
      local out = {}
      local function ask(path, options, keep)
        local pieces = {}
        options.sink = function(piece) pieces[#pieces + 1] = keep and keep(piece) or piece end
        local r = assert(http.request(url(srv, path), options))
        out[#out + 1] = { r.status, r.body, table.concat(pieces, "|") }
      end
      local t0 = market.now()
      ask("/stream", {}, function() return tostring(market.now() - t0) end)
      ask("/big", { max_response = 100000 }, function(piece) return tostring(#piece) end)
      ask("/moved", { redirects = 3 })
      ask("/nowhere", { redirects = 3 })
      ask("/moved", {})
      out[#out + 1] = H.outcome(function()
        http.request(url(srv, "/stream"), { sink = function() error("disk full") end })
      end, "spec/http_spec.lua")
      out[#out + 1] = assert(http.request(url(srv, "/stream"))).body   -- the connection after
      srv:close()
      return out
    end)
    -- Each piece came as it was sent (50 ms apart), not all at the end.
    local at = {}
    for ms in got[1][3]:gmatch("[%d.]+") do at[#at + 1] = tonumber(ms) end
    assert.same({ 200, "", 4 }, { got[1][1], got[1][2], #at })
    assert.is_true(at[4] - at[1] >= 100, got[1][3])
    local big = 0
    for n in got[2][3]:gmatch("%d+") do big = big + tonumber(n) end
    assert.same({ 200, "", 3000000 }, { got[2][1], got[2][2], big })
    assert.same({ 200, "", "piece 1;|piece 2;|piece 3;|piece 4;" }, got[3])
    assert.same({ 302, "", "no location body" }, got[4])
    assert.same({ 302, "", "redirect body" }, got[5])
    assert.equal("false disk full", got[6])
    assert.equal("piece 1;piece 2;piece 3;piece 4;", got[7])
  end)

  it("bounds a request by the server's silence (idle_timeout), its whole by any integer or " ..
     "math.huge (timeout)", function()
    local got = N.run(function()
      local srv = assert(http.serve(0, function(req)
        local i, stall = 0, tonumber(req.query)
        return 200, { ["content-type"] = "text/event-stream" }, function()
          i = i + 1                          -- four events, 50 ms apart, or a stall before the third
          if i > 4 then return nil end
          timer.sleep(i == 3 and stall or 50)
          return "data: " .. i .. "\n\n"
        end
      end))
      local out = {}
      local function ask(path, options)
        local n = 0
        options.sink = function() n = n + 1 end
        local r, why = http.request(url(srv, path), options)
        out[#out + 1] = { r and r.status or why, n }
      end
      ask("/?50", { timeout = math.huge, idle_timeout = 2000 })
      ask("/?50", { timeout = math.maxinteger })
      ask("/?50", { timeout = 1 << 62, idle_timeout = math.huge })
      ask("/?3000", { timeout = math.huge, idle_timeout = 300 })     -- silent for 3 s: given up
      -- A kept connection whose server goes silent: given up, not sent again.
      local heads = 0
      local mute = by_hand(function()
        heads = heads + 1
        if heads == 1 then return "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok" end
        return ""                            -- heard, never answered
      end)
      local base = "http://127.0.0.1:" .. mute.port .. "/"
      out[#out + 1] = assert(http.request(base)).body
      out[#out + 1] = select(2, http.request(base, { idle_timeout = 200 }))
      out[#out + 1] = select(2, http.request(base, { timeout = 200 }))
      out[#out + 1] = heads
      -- It bounds the connect too: a TLS handshake the server never answers.
      local silent = assert(tcp.serve(0, function(conn) repeat until not conn:receive(5000) end))
      out[#out + 1] = select(2, http.request("https://127.0.0.1:" .. silent.port .. "/",
                                             { timeout = math.huge, idle_timeout = 200 }))
      -- The same within timeout alone: nothing whole in time, "timeout"
      -- (it said "connect timed out after 200 ms").
      out[#out + 1] = select(2, http.request("https://127.0.0.1:" .. silent.port .. "/",
                                             { timeout = 200 }))
      for _, bad in ipairs({ 0, -1, 1.5, "100", -math.huge, 0 / 0 }) do
        out[#out + 1] = select(2, pcall(http.request, base, { idle_timeout = bad }))
      end
      out[#out + 1] = select(2, pcall(http.request, base, { timeout = -math.huge }))
      srv:close(); mute:close(); silent:close()
      return out
    end)
    assert.same({ { 200, 4 }, { 200, 4 }, { 200, 4 }, { "idle timeout", 2 }, "ok", "idle timeout",
                  "timeout", 3, "connect timed out after 200 ms", "timeout",
                  "http.request: bad idle_timeout: 0", "http.request: bad idle_timeout: -1",
                  "http.request: bad idle_timeout: 1.5", 'http.request: bad idle_timeout: "100"',
                  "http.request: bad idle_timeout: -inf", "http.request: bad idle_timeout: nan",
                  "http.request: bad timeout: -inf" }, got)
  end)

  it("keeps cookies in a jar: what a server sets goes back where it belongs, redirects " ..
     "included, and goes when it expires or is deleted", function()
    local got = N.run(function()
      local srv = assert(http.serve(0, function(req)
        local set = {
          ["/login"] = { "session=abc; Path=/; HttpOnly", "theme=dark; Max-Age=3600",
                         "gone=1; Max-Age=0", "old=x; Expires=Wed, 21 Oct 2015 07:28:00 GMT",
                         "far=y; expires=Fri, 01-Jan-2100 00:00:00 GMT", "sub=z; Path=/app",
                         "sec=s; Secure", "evil=e; Domain=example.com", "nameless",
                         "dom=d; Domain=127.0.0.1" },
          ["/logout"] = { "session=; Max-Age=0", "theme=light" },
          ["/hop"] = { "hop=1" },
        }
        local headers = { ["set-cookie"] = set[req.path] }
        if req.path == "/hop" then headers.location = "/app/x"; return 302, headers, "" end
        return 200, headers, tostring(req.headers.cookie)
      end))
      local jar = http.cookies()
      local function ask(path, options)
        options = options or {}
        options.cookies = jar
        return assert(http.request(url(srv, path), options)).body
      end
      local out = {}
      local res = assert(http.request(url(srv, "/login"), { cookies = jar }))
      out[#out + 1] = #res.set_cookies                            -- each value apart
      out[#out + 1] = ask("/")
      out[#out + 1] = ask("/app/page")
      out[#out + 1] = ask("/application")                          -- not under /app
      out[#out + 1] = ask("/", { headers = { Cookie = "mine=1" } })
      out[#out + 1] = jar:header("http://127.0.0.1:1/app")
      out[#out + 1] = tostring(jar:header("http://localhost/"))
      out[#out + 1] = ask("/hop", { redirects = 1 })              -- set on the way, sent after
      ask("/logout")
      out[#out + 1] = ask("/")
      local names = {}
      for _, c in ipairs(jar:list()) do
        names[#names + 1] = ("%s=%s %s %s %s"):format(c.name, c.value, c.path, tostring(c.host_only),
                                                      tostring(c.expires))
      end
      table.sort(names)
      out[#out + 1] = names
      jar:clear()
      out[#out + 1] = ask("/")
      out[#out + 1] = select(2, pcall(http.request, url(srv, "/"), { cookies = {} }))
      srv:close()
      return out
    end)
    assert.same({ 10,
                  "session=abc; theme=dark; far=y; dom=d",
                  "sub=z; session=abc; theme=dark; far=y; dom=d",
                  "session=abc; theme=dark; far=y; dom=d",
                  "mine=1; session=abc; theme=dark; far=y; dom=d",
                  "sub=z; session=abc; theme=dark; far=y; dom=d",
                  "nil" }, { table.unpack(got, 1, 7) })
    assert.equal("sub=z; session=abc; theme=dark; far=y; dom=d; hop=1", got[8])
    assert.equal("theme=light; far=y; dom=d; hop=1", got[9])
    assert.matches("^dom=d / false nil$", got[10][1])
    assert.equal("far=y / true 4102444800000", got[10][2])
    assert.equal("nil", got[11])
    assert.matches("http.request: bad cookies", got[12], 1, true)
  end)

  it("reads a cookie's Expires in the forms servers write, Max-Age first, keeps at most " ..
     "50 cookies a host, and takes at most http.MAX_SET_COOKIES values of an answer", function()
    local got = N.run(function()
      local srv = assert(http.serve(0, function(req)
        if req.path == "/many" then
          local set = {}
          for i = 1, 60 do set[i] = ("c%d=%d"):format(i, i) end
          return 200, { ["set-cookie"] = set }, ""
        end
        if req.path == "/flood" then
          local set = { "first=1" }
          for i = 2, http.MAX_SET_COOKIES do set[i] = "nameless" end
          set[#set + 1] = "late=1"
          return 200, { ["set-cookie"] = set }, ""
        end
        return 200, { ["set-cookie"] = {
          "a=1; Expires=Sun, 06 Nov 2094 08:49:37 GMT", "b=1; Expires=Sunday, 06-Nov-94 08:49:37 GMT",
          "c=1; Expires=Sun Nov  6 08:49:37 2094", "d=1; Expires=not a date",
          "e=1; Expires=Sun, 06 Nov 2094 08:49:37 GMT; Max-Age=60", "f=1; expires=6 nov 2094 8:49:37" } }, ""
      end))
      local jar = http.cookies()
      local t0 = market.now()
      assert(http.request(url(srv, "/dates"), { cookies = jar }))
      local out = {}
      for _, c in ipairs(jar:list()) do
        out[c.name] = c.name == "e" and (c.expires - t0 >= 59000 and c.expires - t0 <= 61000) or
                      tostring(c.expires)
      end
      local other = http.cookies()
      assert(http.request(url(srv, "/many"), { cookies = other }))
      local names = {}
      for _, c in ipairs(other:list()) do names[#names + 1] = c.name end
      out.many = table.concat(names, " ")
      -- the first http.MAX_SET_COOKIES values of an answer, not the rest
      local third = http.cookies()
      assert(http.request(url(srv, "/flood"), { cookies = third }))
      names = {}
      for _, c in ipairs(third:list()) do names[#names + 1] = c.name end
      out.flood = table.concat(names, " ")
      srv:close()
      return out
    end)
    local when = tostring(3939871777 * 1000)      -- date -u -d "2094-11-06 08:49:37" +%s
    assert.same({ a = when, c = when, d = "nil", e = true, f = when }, { a = got.a, b = got.b, c = got.c,
                  d = got.d, e = got.e, f = got.f })
    local kept = {}
    for i = 11, 60 do kept[#kept + 1] = "c" .. i end
    assert.equal(table.concat(kept, " "), got.many)
    assert.equal("first", got.flood)
  end)

  it("refuses a cookie for a public suffix or another site, and says why (jar:set)", function()
    local got = N.run(function()
      local jar, out = http.cookies(), {}
      local function set(u, line) out[#out + 1] = table.concat({ tostring((jar:set(u, line))),
                                                                  select(2, jar:set(u, line)) or "" }, " ") end
      set("http://evil.co.uk/", "a=1; Domain=co.uk")             -- ICANN's suffix
      set("http://x.github.io/", "b=1; Domain=github.io")        -- a private one
      set("http://a.example/", "c=1; Domain=example")            -- no rule: a top-level domain
      set("http://www.example.com/docs/x", "d=1; Domain=example.com")
      set("http://co.uk/", "e=1; Domain=CO.UK")                  -- the suffix itself: host-only
      set("http://other.org/", "f=1; Domain=example.com")
      set("http://www.example.com/", "g=1; Secure")
      set("https://www.example.com/", "g=1; Secure")
      set("http://www.example.com/", "nameless")
      set("http://www.example.com/", "h=" .. ("x"):rep(5000))
      set("ftp://www.example.com/", "i=1")
      -- (Kept, they made every later request to the host raise.)
      set("http://www.example.com/", "k=b\r\nX-Injected: 1")
      set("http://www.example.com/", "l=1\0")
      -- A Max-Age past an integer's range is still seconds: this deletes d.
      set("http://www.example.com/docs/x", "d=2; Domain=example.com; Max-Age=-99999999999999999999")
      -- blanks trimmed around the name, the value and the attributes, kept inside
      local inner = (" "):rep(1500)
      set("http://blank.example/", "  j  =  x" .. inner .. "y  ;  Path  =  /p" .. inner .. "q  ")
      local j = jar:list()[#jar:list()]
      out[#out] = out[#out] .. " " .. j.name .. " " .. #j.value .. " " .. #j.path
      out[#out + 1] = tostring(jar:header("https://www.example.com/docs/a"))
      out[#out + 1] = tostring(jar:header("https://shop.example.com/docs/a"))
      out[#out + 1] = tostring(jar:header("http://co.uk/"))
      out[#out + 1] = tostring(jar:header("http://foo.co.uk/"))
      out[#out + 1] = tostring(jar:header("http://y.github.io/"))
      out[#out + 1] = select(2, pcall(jar.set, jar, "http://a/", 42))
      out[#out + 1] = select(2, pcall(jar.set, jar, 42, "a=1"))
      out[#out + 1] = select(2, pcall(jar.set, {}, "http://a/", "a=1"))
      return out
    end)
    assert.same({
      "nil domain co.uk is a public suffix",
      "nil domain github.io is a public suffix",
      "nil domain example is a public suffix",
      "true ",
      "true ",
      "nil domain example.com is not other.org's",
      "nil secure, and heard over plain http",
      "true ",
      "nil no name=value",
      "nil longer than 4096 bytes",
      "nil not an http URL: ftp://www.example.com/",
      "nil holds a CR, LF or NUL",
      "nil holds a CR, LF or NUL",
      "true ",
      "true  j 1502 1503",
      "g=1",
      "nil",                                 -- g is www.example.com's alone
      "e=1",
      "nil",
      "nil",
    }, { table.unpack(got, 1, 20) })
    assert.matches("http.cookies: set: set_cookie must be a string, got number", got[21], 1, true)
    assert.matches("http.cookies: set: url must be a string, got number", got[22], 1, true)
    assert.matches("http.cookies: set: not a cookie jar", got[23], 1, true)
  end)

  it("keeps a jar's cookies by domain: past http.MAX_COOKIES the expired go first, then the " ..
     "oldest of all domains, and a request is sent its host's and parent domains' alone", function()
    local saved = http.MAX_COOKIES
    http.MAX_COOKIES = 6
    local ok, got = pcall(N.run, function()
      local timer = require "market.timer"
      local jar, out = http.cookies(), {}
      local function names()
        local t = {}
        for _, c in ipairs(jar:list()) do t[#t + 1] = c.name end
        return table.concat(t, " ")
      end
      for _, u in ipairs({ "http://a.example/", "http://b.example/", "http://c.example/" }) do
        local h = u:match("//(%a)")
        assert(jar:set(u, h .. "1=1"))
        assert(jar:set(u, h .. "2=1"))
      end
      assert(jar:set("http://d.example/", "d1=1"))                -- a1 goes: the oldest of all
      out[#out + 1] = names()
      assert(jar:set("http://b.example/", "b1=2"))                -- the same cookie: keeps its age
      assert(jar:set("http://d.example/", "d2=1"))                -- a2 goes
      out[#out + 1] = names()
      assert(jar:set("http://c.example/", "c2=1; Max-Age=1"))
      timer.sleep(1100)                                           -- c2 is past its time
      assert(jar:set("http://d.example/", "d3=1"))                -- c2 goes, not b1
      out[#out + 1] = names()
      assert(jar:set("http://www.shop.example/", "w=1"))          -- b1 goes
      assert(jar:set("http://www.shop.example/", "s=1; Domain=shop.example"))   -- b2 goes
      out[#out + 1] = tostring(jar:header("http://www.shop.example/"))
      out[#out + 1] = tostring(jar:header("http://x.www.shop.example/"))
      out[#out + 1] = tostring(jar:header("http://shop.example/"))
      out[#out + 1] = names()
      return out
    end)
    http.MAX_COOKIES = saved
    assert(ok, got)
    assert.same({
      "a2 b1 b2 c1 c2 d1",
      "b1 b2 c1 c2 d1 d2",
      "b1 b2 c1 d1 d2 d3",
      "w=1; s=1",
      "s=1",
      "s=1",
      "c1 d1 d2 d3 w s",
    }, got)
  end)

  it("resolves a reference against a base URL as RFC 3986 does", function()
    -- RFC 3986, 5.4.1 and 5.4.2 (the strict reading of "http:g"), base
    -- http://a/b/c/d;p?q; and a few of its own.
    local base, cases = "http://a/b/c/d;p?q", {
      { "g:h", "g:h" }, { "g", "http://a/b/c/g" }, { "./g", "http://a/b/c/g" },
      { "g/", "http://a/b/c/g/" }, { "/g", "http://a/g" }, { "//g", "http://g" },
      { "?y", "http://a/b/c/d;p?y" }, { "g?y", "http://a/b/c/g?y" }, { "#s", "http://a/b/c/d;p?q" },
      { "g#s", "http://a/b/c/g" }, { "g?y#s", "http://a/b/c/g?y" }, { ";x", "http://a/b/c/;x" },
      { "g;x", "http://a/b/c/g;x" }, { "", "http://a/b/c/d;p?q" }, { ".", "http://a/b/c/" },
      { "./", "http://a/b/c/" }, { "..", "http://a/b/" }, { "../", "http://a/b/" },
      { "../g", "http://a/b/g" }, { "../..", "http://a/" }, { "../../", "http://a/" },
      { "../../g", "http://a/g" }, { "../../../g", "http://a/g" }, { "../../../../g", "http://a/g" },
      { "/./g", "http://a/g" }, { "/../g", "http://a/g" }, { "g.", "http://a/b/c/g." },
      { ".g", "http://a/b/c/.g" }, { "g..", "http://a/b/c/g.." }, { "..g", "http://a/b/c/..g" },
      { "./../g", "http://a/b/g" }, { "./g/.", "http://a/b/c/g/" }, { "g/./h", "http://a/b/c/g/h" },
      { "g/../h", "http://a/b/c/h" }, { "g;x=1/./y", "http://a/b/c/g;x=1/y" },
      { "g;x=1/../y", "http://a/b/c/y" }, { "g?y/./x", "http://a/b/c/g?y/./x" },
      { "g?y/../x", "http://a/b/c/g?y/../x" }, { "g#s/./x", "http://a/b/c/g" },
      { "g#s/../x", "http://a/b/c/g" }, { "http:g", "http:g" },
      { "//h/x/../y?z", "http://h/y?z" }, { "HTTP://X/a/./b", "HTTP://X/a/b" },
    }
    for _, c in ipairs(cases) do assert.equal(c[2], http.resolve(base, c[1]), c[1]) end
    assert.equal("http://a/g", http.resolve("http://a", "g"))
    assert.equal("http://a?q", http.resolve("http://a?q", ""))
    assert.same({ nil, "not an absolute URL: /b/c" }, { http.resolve("/b/c", "g") })
    assert.matches("base must be a string", select(2, pcall(http.resolve, nil, "g")), 1, true)
  end)

  it("raises on misuse", function()
    local got = N.run(function()
      local out = {}
      local function try(f) out[#out + 1] = H.outcome(f, "spec/http_spec.lua") end
      try(function() http.serve(0, "handler") end)
      try(function() http.serve(0, echo, { max_request = 0 }) end)
      try(function() http.serve(0, echo, { nope = true }) end)
      try(function() http.request(42) end)
      try(function() http.request("http://127.0.0.1/", { method = "GET POST" }) end)
      try(function() http.request("http://127.0.0.1/", { headers = { Host = "x" } }) end)
      try(function() http.request("http://127.0.0.1/", { headers = { ["Bad Name"] = "x" } }) end)
      try(function() http.request("http://127.0.0.1/", { redirects = -1 }) end)
      try(function() http.request("http://127.0.0.1/", { sink = "file" }) end)
      return out
    end)
    assert.same({
      "false http.serve: handler must be a function, got string",
      "false http.serve: bad max_request: 0",
      'false http.serve: unknown setting "nope"',
      "false http.request: url must be a string, got number",
      'false http.request: bad method: "GET POST"',
      "false http.request: the header Host is market's to write",
      'false http.request: bad header name "Bad Name"',
      "false http.request: bad redirects: -1",
      'false http.request: bad sink: "file"',
    }, got)
    local ok, err = pcall(http.request, "http://127.0.0.1/")
    assert.is_false(ok)
    assert.matches("not inside a market process", err, 1, true)
  end)
end)

describe("market.http under the interpreter", function()
  -- A server run with a drain of 20 s, and nc sending it `requests` and
  -- then holding the connection; once the first answer came (and `settle`
  -- seconds more), the server is sent SIGTERM.  Whether it answered, its
  -- exit status (nil: still running after 10 s) and its stderr.
  local function stop_with_client(requests, settle)
    local script = H.tempfile([[
      local http = require "market.http"
      local srv = assert(http.serve(0, function() return 200, nil, "hi" end))
      io.stderr:write("listening on port ", srv.port, "\n")
    ]])
    local server, port = N.await_listening(N.start_cmd(("exec %s --drain 20000 %s")
      :format(N.q(N.market_bin()), N.q(script))), "the http server")
    local client = N.start_cmd(("(printf '%s'; sleep 10) | exec nc 127.0.0.1 %d"):format(requests, port))
    local answered = false
    for _ = 1, 250 do
      answered = client.stdout():find("hi", 1, true) ~= nil
      if answered then break end
      N.sleep(0.02)
    end
    N.sleep(settle)
    os.execute("kill -TERM " .. server.pid)
    local status = server.wait_exit(10)          -- the drain would take 20 s
    local err = server.stderr()
    server.kill()
    client.kill()
    os.remove(script)
    return answered, status, err
  end

  it("ends idle keep-alive connections when the program stops, not at the drain's end", function()
    -- One request answered, then the connection stays open, idle.
    local answered, status, err = stop_with_client("GET / HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n", 0)
    assert.is_true(answered, "no answer")
    assert.equal(0, status, err)
  end)

  it("closes a connection whose request head is still coming when the program stops", function()
    -- One request answered, then half of the next one's head (sent with
    -- it: the server has it once the first is answered).
    local answered, status, err = stop_with_client("GET / HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n" ..
                                                   "GET /partial HTTP/1.1\\r\\nHost: x\\r\\n", 0.2)
    assert.is_true(answered, "no answer")
    assert.equal(0, status, err)
  end)
end)

-- tls_spec.lua: TLS on the TCP driver's connections (docs/tcp.md, "TLS"):
-- tcp.tls configurations, tcp.serve and tcp.connect with the tls setting,
-- the handler-style listener's, https in market.http, and real clients
-- (openssl s_client, curl) against market's servers.  Certificates are
-- made for the run by the openssl command in a temporary directory; every
-- server listens on a port the kernel picks, on loopback.
package.path = "spec/support/?.lua;" .. package.path
local market = require "market"
local tcp = require "market.tcp"
local http = require "market.http"
local timer = require "market.timer"
local H = require "helpers"
local N = require "net"
local P, _ = market.perform, market._

-- A CA and, signed by it, a server's certificate for localhost and
-- 127.0.0.1 and a client's; another CA's server certificate; the server's
-- certificate and key in one file.
local dir
local function pem(name) return dir .. "/" .. name end

local function make_certificates()
  dir = os.tmpname()
  os.remove(dir)
  local status, _, err = H.sh_plain(([[
set -e
mkdir -p %s && cd %s
key() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null; }
ca() { key "$1.key"; openssl req -x509 -new -key "$1.key" -out "$1.pem" -days 2 -subj "/CN=$1" 2>/dev/null; }
signed() {   # name ca subject-alt-names
  key "$1.key"
  openssl req -new -key "$1.key" -out "$1.csr" -subj "/CN=$1" 2>/dev/null
  printf 'subjectAltName=%%s\n' "$3" >"$1.ext"
  openssl x509 -req -in "$1.csr" -CA "$2.pem" -CAkey "$2.key" -CAcreateserial -out "$1.pem" \
    -days 2 -extfile "$1.ext" 2>/dev/null
}
ca ca
ca other-ca
signed server ca "DNS:localhost,IP:127.0.0.1"
signed client ca "DNS:client"
signed stranger other-ca "DNS:localhost,IP:127.0.0.1"
signed other ca "DNS:other.test"
signed wild ca "DNS:*.wild.test"
cat server.pem server.key >both.pem
]]):format(H.quote(dir), H.quote(dir)))
  assert(status == 0, "openssl could not make the certificates: " .. err)
end

local function remove_certificates()
  if dir then os.execute("rm -rf " .. H.quote(dir)) end
end

-- A line-echo server over TLS with configuration `cfg` (its sessions
-- counted in count[1]).
local function echo_server(cfg, count)
  return assert(tcp.serve(0, function(conn)
    if count then count[1] = count[1] + 1 end
    for line in conn:lines() do conn:send("echo: " .. line .. "\n") end
  end, { framing = "line", tls = cfg }))
end

-- What a client with configuration cfg gets back for "me" from echo_server at port: the line, or why not;
-- after the subject of the server's certificate when `subject`.
local function echoed(port, cfg, subject)
  local c, why = tcp.connect("127.0.0.1", port, { framing = "line", tls = cfg })
  if not c then return why end
  local said = subject and c:peer_certificate().subject .. " " or ""
  c:send("me\n")
  local line, e = c:receive(5000)
  c:close()
  return said .. (line or e or "closed")
end

describe("TLS on TCP connections", function()
  setup(make_certificates)
  teardown(remove_certificates)

  it("carries lines, megabytes each way and a half-close over TLS", function()
    local got = N.run(function()
      local server_cfg = assert(tcp.tls{ cert = pem("server.pem"), key = pem("server.key") })
      local client_cfg = assert(tcp.tls{ ca = pem("ca.pem") })
      local out = {}
      local srv = echo_server(server_cfg)
      local c = assert(tcp.connect("127.0.0.1", srv.port, { framing = "line", tls = client_cfg }))
      c:send("hello\nworld\n")
      out[1] = { c:receive(), c:receive() }
      out[3] = {}                              -- the client's manager's and the server's
      for _, e in ipairs(tcp.inspect().connections) do out[3][#out[3] + 1] = e.tls end
      c:close()
      -- 4 MiB up to a reader that sleeps, then the sender's end of stream,
      -- then the count back; then 8 MiB down to this process.
      local chunk = ("z"):rep(65536)
      local sink = assert(tcp.serve(0, function(conn)
        local total = 0
        for data in conn:lines() do total = total + #data; timer.sleep(1) end
        conn:send("got " .. total)
        for _ = 1, 128 do conn:send(chunk) end
      end, { tls = server_cfg }))
      c = assert(tcp.connect("localhost", sink.port, { tls = client_cfg }))
      for _ = 1, 64 do assert(c:send(chunk)) end
      c:shutdown()
      local parts = {}
      for data in c:lines(20000) do parts[#parts + 1] = data end
      local all = table.concat(parts)
      out[2] = { all:sub(1, 11), #all - 11 }
      c:close()
      srv:close(); sink:close()
      return out
    end, 30000)
    assert.same({ "echo: hello", "echo: world" }, got[1])
    assert.same({ "got 4194304", 8388608 }, got[2])
    assert.same({ "TLSv1.3", "TLSv1.3" }, got[3])
  end)

  -- OpenSSL's memory (some 10 KB a session) was outside the memory
  -- limit's count: ten thousand idle TLS connections could pass a
  -- cgroup's limit while the count stayed under its own.  A hundred
  -- connections, both ends in one program, plain and then over TLS (so
  -- that TLS meets the pool's cache as warm as plain left it): TLS's
  -- count grows by what OpenSSL holds besides.
  it("counts OpenSSL's memory with the memory limit's", function()
    local status, out, err = H.run_script(([[
      local market = require "market"
      local tcp = require "market.tcp"
      local function used() return select(2, market.memory_limit()) end
      local function per_connection(server_cfg, client_cfg)
        local srv = assert(tcp.serve(0, function(conn)
          for line in conn:lines() do conn:send(line .. "\n") end
        end, { framing = "line", tls = server_cfg }))
        local function open()
          local c = assert(tcp.connect("127.0.0.1", srv.port, { framing = "line", tls = client_cfg }))
          c:send("hi\n")
          assert(c:receive() == "hi")
          return c
        end
        local first = open()
        collectgarbage(); collectgarbage()
        local before, conns = used(), {}
        for i = 1, 100 do conns[i] = open() end
        collectgarbage(); collectgarbage()
        local grew = (used() - before) / 100
        for _, c in ipairs(conns) do c:close() end
        first:close(); srv:close()
        return grew
      end
      local plain = per_connection(nil, nil)
      local tls = per_connection(assert(tcp.tls{ cert = %q, key = %q }),
                                 assert(tcp.tls{ ca = %q }))
      print(math.floor(plain), math.floor(tls))
    ]]):format(pem("server.pem"), pem("server.key"), pem("ca.pem")), "--max-activation 0")
    assert.equal(0, status, err)
    local plain, tls = out:match("^(%d+)\t(%d+)\n$")
    assert(plain, out)
    assert(tonumber(tls) - tonumber(plain) > 8000, out)
  end)

  it("delivers what a TLS record holds beyond read_size, framed, without waiting for the socket",
     function()
    local got = N.run(function()
      local server_cfg = assert(tcp.tls{ cert = pem("server.pem"), key = pem("server.key") })
      local client_cfg = assert(tcp.tls{ ca = pem("ca.pem") })
      local lines = {}
      for i = 1, 3000 do lines[i] = ("line %05d"):format(i) end
      -- 33 KB of lines (records of 16 KB, each hundreds of lines: more
      -- than a framing turn takes), then a 40 KB line cut by the close.
      local blob = table.concat(lines, "\n") .. "\n" .. ("r"):rep(40000)
      local srv = assert(tcp.serve(0, function(conn) conn:receive(); conn:send(blob) end,
                                   { tls = server_cfg }))
      local out = {}
      for _, size in ipairs { 7, 100, 65536 } do
        local c = assert(tcp.connect("127.0.0.1", srv.port, { tls = client_cfg, read_size = size,
                                                              framing = "line" }))
        c:send("go")
        local n, last = 0, nil
        for line in c:lines(5000) do n, last = n + 1, line end
        out[#out + 1] = { size, n, #last, (c:receive()) }
        c:close()
      end
      srv:close()
      return out
    end, 20000)
    assert.same({ { 7, 3001, 40000 }, { 100, 3001, 40000 }, { 65536, 3001, 40000 } }, got)
  end)

  it("fails a connect whose certificate does not verify, with the reason", function()
    local got = N.run(function()
      local srv = echo_server(assert(tcp.tls{ cert = pem("server.pem"), key = pem("server.key") }))
      local stranger = echo_server(assert(tcp.tls{ cert = pem("stranger.pem"),
                                                   key = pem("stranger.key") }))
      local trusting = assert(tcp.tls{ ca = pem("ca.pem") })
      local out = {}
      local function try(port, settings, host)
        local c, why = tcp.connect(host or "127.0.0.1", port, settings)
        if c then
          c:send("hi\n")
          why = c:receive()
          c:close()
        end
        out[#out + 1] = why
      end
      try(stranger.port, { framing = "line", tls = trusting })          -- another CA's
      try(srv.port, { tls = true })                                     -- the system's CAs
      try(srv.port, { tls = assert(tcp.tls{ ca = pem("ca.pem"), server_name = "example.com" }) })
      try(srv.port, { framing = "line", tls = trusting }, "localhost")  -- by name
      try(stranger.port, { framing = "line", tls = assert(tcp.tls{ verify = false }) })
      srv:close(); stranger:close()
      return out
    end, 20000)
    assert.same({
      "tls: certificate verify failed (unable to get local issuer certificate)",
      "tls: certificate verify failed (unable to get local issuer certificate)",
      "tls: certificate verify failed (hostname mismatch)",
      "echo: hi",
      "echo: hi",
    }, got)
  end)

  -- A Unix connect completes inside the call: the manager started it
  -- before it had seen the option sets, found no TLS configuration and
  -- went plain, sending in clear what was to be encrypted (a TCP connect
  -- escaped by taking a turn).  Straight-line (tcp.connect's settings)
  -- and handler-style (tcp.options published before subscribing).
  it("speaks TLS over Unix sockets: a plain server fails the connect, a TLS one handshakes",
     function()
    local got = N.run(function()
      local out, heard = {}, {}
      local plain = assert(tcp.serve(pem("plain.sock"), function(conn)
        conn:send("hello, in clear\n")
        for line in conn:lines(5000) do heard[#heard + 1] = line end
      end, { framing = "line" }))
      local srv = assert(tcp.serve(pem("tls.sock"), function(conn)
        for line in conn:lines() do conn:send("echo: " .. line .. "\n") end
      end, { framing = "line", tls = assert(tcp.tls{ cert = pem("server.pem"),
                                                        key = pem("server.key") }) }))
      local cfg = assert(tcp.tls{ ca = pem("ca.pem"), server_name = "localhost" })
      local c, why = tcp.connect(tcp.address(pem("plain.sock"), "unix"),
                                 { framing = "line", tls = cfg, connect_timeout = 5000 })
      if c then c:send("secret\n"); c:close() end
      out.plain = why
      c = assert(tcp.connect(tcp.address(pem("tls.sock"), "unix"), { framing = "line", tls = cfg }))
      c:send("me\n")
      out.echo = { c:receive(5000) }
      out.subject = (c:peer_certificate() or {}).subject
      c:close()
      local log, a, h = {}, tcp.address(pem("tls.sock"), "unix"), tcp.handle("unix-tls")
      local subject
      P(market.observe_publishers(tcp.peer_certificate(a, h, _), {
        on_presence = function(_, role) subject = role.topic.certificate.subject end }))
      P(N.tcp_client("unix-tls", a, log, {
        settings = { framing = "line", tls = cfg },
        on_connect = function(send) return market.transition_no_state(send("you\n")) end,
        on_data = function(_, send) return market.transition_no_state(send(market.EOF)) end }))
      N.await({ "done", "unix-tls" })
      out.log, out.handler_subject = log, subject
      plain:close(); srv:close()
      out.heard = heard
      return out
    end, 20000)
    assert.is_string(got.plain)
    assert.matches("^tls: ", got.plain)
    assert.same({ "echo: me" }, got.echo)
    assert.equal("CN=server", got.subject)
    assert.same({ "connected", "data echo: you", "eof" }, got.log)
    assert.equal("CN=server", got.handler_subject)
    for _, line in ipairs(got.heard) do assert.not_matches("secret", line) end
  end)

  it("gives no session to a client that does not speak TLS, closes a silent one after " ..
     "connect_timeout, and serves on", function()
    local before = tcp.stats.tls_failures
    local saved, level = tcp.CONNECT_TIMEOUT, market.log.level()
    local logged = {}
    market.log.level("info")
    market.log.sink(function(l, _, message) if l == "info" then logged[#logged + 1] = message end end)
    local got = N.run(function()
      tcp.CONNECT_TIMEOUT = 200
      local sessions = { 0 }
      local srv = echo_server(assert(tcp.tls{ cert = pem("server.pem"), key = pem("server.key") }),
                              sessions)
      local out = {}
      local plain = assert(tcp.connect("127.0.0.1", srv.port))
      plain:send("GET / HTTP/1.0\r\n\r\n")
      out[1] = plain:receive(5000) == nil
      plain:close()
      local mute = assert(tcp.connect("127.0.0.1", srv.port))
      local t0 = market.now()
      out[2] = { mute:receive(5000) }
      out[3] = market.now() - t0 >= 150
      mute:close()
      local c = assert(tcp.connect("127.0.0.1", srv.port,
                                   { framing = "line", tls = assert(tcp.tls{ ca = pem("ca.pem") }) }))
      c:send("still\n")
      out[4] = c:receive()
      c:close()
      out[5] = sessions[1]
      srv:close()
      return out
    end, 20000)
    tcp.CONNECT_TIMEOUT = saved
    market.log.sink(nil)
    market.log.level(level)
    assert.is_true(got[1])                    -- closed, no answer
    assert.same({}, got[2])                   -- closed: the end of stream
    assert.is_true(got[3])
    assert.equal("echo: still", got[4])
    assert.equal(1, got[5])                   -- only the TLS client had a session
    assert.equal(2, tcp.stats.tls_failures - before)
    -- Why, at level info: the plain client's, then the silent one's.
    assert.equal(2, #logged)
    assert.matches('^market%.tcp: tcp%-address%("127%.0%.0%.1", %d+%): tls: ', logged[1])
    assert.matches('^market%.tcp: tcp%-address%("127%.0%.0%.1", %d+%): tls: no handshake within 200 ms$',
                   logged[2])
  end)

  it("asks clients for their certificate when the server is given CA certificates", function()
    local got = N.run(function()
      local srv = echo_server(assert(tcp.tls{ cert = pem("both.pem"), ca = pem("ca.pem") }))
      local out = {}
      for i, cfg in ipairs {
        assert(tcp.tls{ ca = pem("ca.pem"), cert = pem("client.pem"), key = pem("client.key") }),
        assert(tcp.tls{ ca = pem("ca.pem") }),
      } do
        out[i] = echoed(srv.port, cfg)
      end
      srv:close()
      return out
    end, 20000)
    assert.equal("echo: me", got[1])
    -- TLS 1.3: the client is done before the server has read its (absent)
    -- certificate; the server then ends the connection.
    assert.is_not.equal("echo: me", got[2])
  end)

  -- The certificate is published as long as the manager lives: an
  -- inbound flow that failed alone (a line over max_frame) does not end
  -- it, and conn:peer_certificate still has it to give.
  it("gives the peer's certificate after the inbound flow failed alone", function()
    local got = N.run(function()
      local out = {}
      local srv = assert(tcp.serve(0, function(conn)
        conn:send("a very long line\n")
        out.server = conn:receive(5000)
      end, { framing = "line",
             tls = assert(tcp.tls{ cert = pem("server.pem"), key = pem("server.key") }) }))
      local c = assert(tcp.connect("127.0.0.1", srv.port, {
        framing = "line", max_frame = 4, tls = assert(tcp.tls{ ca = pem("ca.pem") }) }))
      out.receive = { c:receive(5000) }
      local cert, why = c:peer_certificate()
      out.cert = { cert and cert.subject, why }
      out.send = c:send("x\n")
      N.wait_until(function() return out.server ~= nil end)
      c:close(); srv:close()
      return out
    end, 20000)
    assert.same({ nil, "line longer than 4 bytes" }, got.receive)
    assert.same({ "CN=server" }, got.cert)
    assert.is_true(got.send)
    assert.equal("x", got.server)
  end)

  it("tells each side the certificate the other gave: conn:peer_certificate, " ..
     "tcp.peer_certificate, http.serve's req.certificate, http.request's res.certificate", function()
    local got = N.run(function()
      local out = {}
      local server_cfg = assert(tcp.tls{ cert = pem("both.pem"), ca = pem("ca.pem") })
      local client_cfg = assert(tcp.tls{ ca = pem("ca.pem"), cert = pem("client.pem"),
                                         key = pem("client.key") })
      -- A tcp.serve session reads its client's; the client its server's.
      local srv = assert(tcp.serve(0, function(conn)
        local cert = conn:peer_certificate()
        out.session = cert
        out.again = conn:peer_certificate() == cert          -- kept, not asked again
        for line in conn:lines() do conn:send(line .. " from " .. cert.subject .. "\n") end
      end, { framing = "line", tls = server_cfg }))
      local c = assert(tcp.connect("localhost", srv.port, { framing = "line", tls = client_cfg }))
      out.client = c:peer_certificate()
      c:send("hi\n")
      market.wait_until(function() return out.session ~= nil end, 5000)
      out.inspect = {}                 -- tcp.inspect: who is at the other end of each
      for _, e in ipairs(tcp.inspect().connections) do
        out.inspect[#out.inspect + 1] = e.peer_subject .. " " .. #e.peer_fingerprint
      end
      table.sort(out.inspect)
      out.line = c:receive(5000)
      c:close()
      srv:close()
      -- A server without `ca` asks for none: nil; a plain connection: nil.
      local plain = assert(tcp.serve(0, function(conn)
        out.plain = { conn:peer_certificate() }
        conn:send("x\n")
      end, { framing = "line" }))
      c = assert(tcp.connect("127.0.0.1", plain.port, { framing = "line" }))
      c:receive(5000)
      c:close()
      plain:close()
      local anon = echo_server(assert(tcp.tls{ cert = pem("both.pem") }))
      c = assert(tcp.connect("127.0.0.1", anon.port, { framing = "line", tls = client_cfg }))
      out.anon_client = c:peer_certificate().subject
      c:close()
      local no_cert = {}
      anon:close()
      anon = assert(tcp.serve(0, function(conn)
        no_cert[1] = { conn:peer_certificate() }
        conn:send("x\n")
      end, { framing = "line", tls = assert(tcp.tls{ cert = pem("both.pem") }) }))
      c = assert(tcp.connect("127.0.0.1", anon.port, { framing = "line", tls = client_cfg }))
      c:receive(5000)
      c:close()
      anon:close()
      out.no_cert = no_cert[1]
      -- Handler-style: the manager's tcp.peer_certificate, heard before any byte.
      local here = tcp.listener(0)
      local order = {}
      P(tcp.options(here, { tls = server_cfg }),
        market.observe_publishers(tcp.channel(_, here, _), { name = "accept",
          on_presence = function(_, role)
            local remote, any = role.topic.source, market._
            return market.transition_no_state(market.spawn(function()
              return market.transition(nil,
                market.observe_publishers(tcp.peer_certificate(remote, here, any), {
                  on_presence = function(_, r)
                    order[#order + 1] = "cert " .. r.topic.certificate.names[1]
                  end }),
                market.subscriber(tcp.channel(remote, here, any), {
                  on_message = function(_, m)
                    if m.subpacket == market.EOF then
                      return market.transition_no_state(market.quit())
                    end
                    order[#order + 1] = "bytes"
                  end }))
            end))
          end }),
        market.subscriber(tcp.listening(0, _), { name = "bound",
          on_presence = function(_, role) out.port = role.topic.bound_port end }))
      market.wait_until(function() return out.port ~= nil end)
      c = assert(tcp.connect("127.0.0.1", out.port, { tls = client_cfg }))
      c:send("bytes")
      c:shutdown()
      c:receive(5000)
      c:close()
      market.wait_until(function() return #order >= 2 end, 5000)
      out.order = order
      P(market.delete_endpoint("accept"), market.delete_endpoint("bound"))
      -- http.serve: the client's certificate in the request.
      local hs = assert(http.serve(0, function(req)
        return 200, {}, req.certificate and req.certificate.names[1] or "none"
      end, { tls = server_cfg }))
      local res = assert(http.request(("https://localhost:%d/"):format(hs.port),
                                      { tls = client_cfg }))
      out.http = res.body
      out.http_server = res.certificate and res.certificate.subject
      res = assert(http.request(("https://localhost:%d/again"):format(hs.port),
                                { tls = client_cfg }))     -- the kept connection's
      out.http_again = res.certificate and res.certificate.names[2]
      hs:close()
      return out
    end, 30000)
    local cert = got.session
    assert.equal("CN=client", cert.subject)
    assert.equal("CN=ca", cert.issuer)
    assert.same({ "client" }, cert.names)
    assert.matches("^%x+$", cert.serial)
    assert.matches("^" .. ("%x"):rep(64) .. "$", cert.fingerprint)
    assert.is_true(cert.not_before <= os.time() and cert.not_after > os.time())
    assert.is_true(cert.not_after - cert.not_before >= 2 * 86400 - 60)
    assert.matches("^%-%-%-%-%-BEGIN CERTIFICATE%-%-%-%-%-\n", cert.pem)
    assert.is_true(got.again)
    assert.same({ "CN=client 64", "CN=server 64" }, got.inspect)
    assert.equal("hi from CN=client", got.line)
    assert.equal("CN=server", got.client.subject)
    assert.same({ "localhost", "127.0.0.1" }, got.client.names)
    assert.are_not.equal(cert.fingerprint, got.client.fingerprint)
    assert.same({}, got.plain)
    assert.equal("CN=server", got.anon_client)
    assert.same({}, got.no_cert)
    assert.same({ "cert client", "bytes" }, got.order)
    assert.equal("client", got.http)
    assert.equal("CN=server", got.http_server)               -- http.request's res.certificate
    assert.equal("127.0.0.1", got.http_again)
  end)

  it("pins certificates: a client takes only the server's, a server only its clients'", function()
    local function fingerprint(name, colons)
      local f = assert(io.popen(("openssl x509 -in %s -noout -fingerprint -sha256"):format(H.quote(pem(name)))))
      local fp = assert(f:read("a"):match("=([%x:]+)"))
      f:close()
      return colons and fp or fp:gsub(":", ""):lower()
    end
    local server_fp, client_fp = fingerprint("server.pem", true), fingerprint("client.pem")
    local got = N.run(function()
      local out = {}
      local srv = echo_server(assert(tcp.tls{ cert = pem("both.pem") }))
      -- A client: verify = false with a pin trusts that certificate only
      -- (a self-signed server); with verify, both must hold.
      out[1] = echoed(srv.port, assert(tcp.tls{ verify = false, pin = server_fp }))
      out[2] = echoed(srv.port, assert(tcp.tls{ verify = false, pin = { ("0"):rep(64), server_fp } }))
      out[3] = echoed(srv.port, assert(tcp.tls{ verify = false, pin = client_fp }))
      out[4] = echoed(srv.port, assert(tcp.tls{ ca = pem("ca.pem"), pin = client_fp }))
      srv:close()
      -- A server pinning its clients' certificates, without CAs to verify them.
      local count = { 0 }
      srv = echo_server(assert(tcp.tls{ cert = pem("both.pem"), pin = client_fp }), count)
      out[5] = echoed(srv.port, assert(tcp.tls{ verify = false, cert = pem("client.pem"),
                                             key = pem("client.key") }))
      out[6] = echoed(srv.port, assert(tcp.tls{ verify = false, cert = pem("stranger.pem"),
                                             key = pem("stranger.key") }))
      out[7] = echoed(srv.port, assert(tcp.tls{ verify = false }))
      out.sessions = count[1]
      srv:close()
      -- http.serve pinning its clients: the request carries the certificate.
      local hs = assert(http.serve(0, function(req)
        return 200, {}, req.certificate and req.certificate.subject or "none"
      end, { tls = assert(tcp.tls{ cert = pem("both.pem"), pin = client_fp }) }))
      local res = assert(http.request(("https://127.0.0.1:%d/"):format(hs.port), {
        tls = assert(tcp.tls{ verify = false, pin = server_fp, cert = pem("client.pem"),
                              key = pem("client.key") }) }))
      out.http = res.body
      hs:close()
      return out
    end, 30000)
    local refused = "tls: the peer's certificate is not the one pinned (sha256 " ..
                    server_fp:gsub(":", ""):lower() .. ")"
    assert.equal("echo: me", got[1])
    assert.equal("echo: me", got[2])
    assert.equal(refused, got[3])
    assert.equal(refused, got[4])
    assert.equal("echo: me", got[5])
    assert.is_not.equal("echo: me", got[6])       -- (TLS 1.3: refused after the client is done)
    assert.is_not.equal("echo: me", got[7])
    assert.equal(1, got.sessions)                 -- only the pinned client got a session
    assert.equal("CN=client", got.http)
    for _, bad in ipairs { "xyz", ("g"):rep(64), {}, { 1 }, true } do
      local ok, err = pcall(tcp.tls, { pin = bad })
      assert.is_false(ok)
      assert.matches("tcp.tls: pin must be a SHA-256 fingerprint (64 hexadecimal digits) or a list " ..
                     "of them, got ", err, 1, true)
    end
  end)

  it("serves another certificate to a client that names another host (sni)", function()
    local got = N.run(function()
      local out = {}
      local srv = echo_server(assert(tcp.tls{ cert = pem("both.pem"), sni = {
        ["Other.test"] = assert(tcp.tls{ cert = pem("other.pem"), key = pem("other.key") }),
        ["*.wild.test"] = assert(tcp.tls{ cert = pem("wild.pem"), key = pem("wild.key") }) } }))
      for i, name in ipairs { "other.test", "a.wild.test", "localhost", "nobody.test", "b.a.wild.test" } do
        out[i] = echoed(srv.port, assert(tcp.tls{ ca = pem("ca.pem"), server_name = name }), true)
      end
      srv:close()
      -- A server that asks for client certificates verifies them against
      -- its own CAs whichever name was asked for (the name's has none).
      srv = echo_server(assert(tcp.tls{ cert = pem("both.pem"), ca = pem("ca.pem"), sni = {
        ["other.test"] = assert(tcp.tls{ cert = pem("other.pem"), key = pem("other.key") }) } }))
      out.client = echoed(srv.port, assert(tcp.tls{ ca = pem("ca.pem"), server_name = "other.test",
                                                    cert = pem("client.pem"), key = pem("client.key") }), true)
      srv:close()
      return out
    end, 30000)
    assert.equal("CN=other echo: me", got[1])
    assert.equal("CN=wild echo: me", got[2])
    assert.equal("CN=server echo: me", got[3])                   -- the server's own
    assert.equal("CN=other echo: me", got.client)
    assert.matches("tls: certificate verify failed %(hostname mismatch%)", got[4])   -- (its own, then)
    assert.matches("tls: certificate verify failed %(hostname mismatch%)", got[5])   -- one label only
    for _, bad in ipairs { { [1] = "x" }, { ["a b"] = true }, { ok = tcp.tls{ ca = pem("ca.pem") } }, "x" } do
      local ok, err = pcall(tcp.tls, { cert = pem("both.pem"), sni = bad })
      assert.is_false(ok)
      assert.matches("tcp.tls: sni must be ", err, 1, true)
    end
    local ok, err = pcall(tcp.tls, { sni = { a = tcp.tls{ cert = pem("both.pem") } } })
    assert.is_false(ok)
    assert.matches("tcp.tls: sni is a server's: its own certificate (cert) too", err, 1, true)
  end)

  -- The configurations kept are the process's, told apart by serial
  -- where their records are equal: a module loaded again (another Lua
  -- state, package.loaded cleared between spec files) must not count
  -- serials from 1 again, or two configurations of the same files made
  -- before and after a renewal were one.
  it("numbers configurations for the whole process, across a new load of market.tcp", function()
    local first = assert(tcp.tls{ ca = pem("ca.pem") }).serial
    package.loaded["market.tcp"] = nil
    local ok, again = pcall(require, "market.tcp")
    package.loaded["market.tcp"] = tcp
    assert.is_true(ok, again)
    assert.is_true(assert(again.tls{ cert = pem("both.pem") }).serial > first)
  end)


  -- A configuration's files are read by tcp.tls, once: it keeps what
  -- they held for as long as it is in use.  The contexts built were a
  -- cache of eight, and one pushed out was built again from the files as
  -- they were then: gone here (its connections failed), or a renewed or
  -- half-written certificate taken by a configuration made before it.
  it("keeps what its files held when tcp.tls read them, however many configurations there are",
     function()
    local function copy(from, to)
      assert(os.execute(("cp %s %s"):format(H.quote(pem(from)), H.quote(pem(to)))))
    end
    copy("server.pem", "renewed.pem"); copy("server.key", "renewed.key")
    local got = N.run(function()
      local out = {}
      local server_cfg = assert(tcp.tls{ cert = pem("renewed.pem"), key = pem("renewed.key") })
      local client_cfg = assert(tcp.tls{ ca = pem("ca.pem"), server_name = "localhost" })
      local srv = echo_server(server_cfg)
      local other = echo_server(assert(tcp.tls{ cert = pem("server.pem"), key = pem("server.key") }))
      out[1] = echoed(srv.port, client_cfg, true)
      -- The files change: a renewal for another name, then half of it.
      copy("other.pem", "renewed.pem"); copy("other.key", "renewed.key")
      local renewed = echo_server(assert(tcp.tls{ cert = pem("renewed.pem"), key = pem("renewed.key") }))
      assert(io.open(pem("renewed.key"), "w")):close()
      for i = 1, 12 do out[1 + i] = echoed(other.port, assert(tcp.tls{ ca = pem("ca.pem") })) end
      -- The configurations dropped go (at the next tcp.tls); those held,
      -- by a variable or only by a listener, stay.
      collectgarbage()
      out[14] = echoed(renewed.port, assert(tcp.tls{ ca = pem("ca.pem"), server_name = "other.test" }),
                       true)
      out[15] = echoed(srv.port, client_cfg, true)
      -- A record made by hand has no context: its connection fails.
      local forged = tcp.tls_record(false, false, pem("ca.pem"), true, false, 1 << 40, false, false)
      out[16] = echoed(srv.port, forged)
      srv:close(); other:close(); renewed:close()
      return out
    end, 30000)
    assert.equal("CN=server echo: me", got[1])
    for i = 2, 13 do assert.equal("echo: me", got[i]) end
    assert.equal("CN=other echo: me", got[14])
    assert.equal("CN=server echo: me", got[15])
    assert.equal("tls: not a configuration that tcp.tls made in this program", got[16])
  end)

  -- The system's CA certificates are read once per process, into one
  -- store that every configuration verifying against them shares (where
  -- OpenSSL's default bundle is a hashed directory's own, Debian's layout,
  -- only the directory is read, as chains ask: the first spec above).  A
  -- bundle given by SSL_CERT_FILE is read whole wherever it lies, beside
  -- SSL_CERT_DIR's.  Each layout in a program of its own (the store is the
  -- process's): tls = true, then a tcp.tls() of its own, then one with a
  -- server_name the certificate does not have.
  it("verifies against the system's CA certificates: SSL_CERT_FILE's and SSL_CERT_DIR's",
     function()
    local status, _, err = H.sh_plain(([[
set -e
cd %s
mkdir -p hashed plain empty
cp other-ca.pem hashed/other.pem && cat ca.pem >hashed/bundle.crt && openssl rehash hashed
cat other-ca.pem ca.pem >plain/bundle.crt
cp ca.pem plain/ca.pem && openssl rehash plain
cp other-ca.pem empty/other.pem && openssl rehash empty
]]):format(H.quote(dir)))
    assert(status == 0, "openssl rehash: " .. err)
    local script = ([[
      local tcp = require "market.tcp"
      local srv = assert(tcp.serve(0, function(conn)
        for line in conn:lines() do conn:send("echo: " .. line .. "\n") end
      end, { framing = "line", tls = assert(tcp.tls{ cert = %q, key = %q }) }))
      local out = {}
      for _, tls in ipairs({ true, assert(tcp.tls()), assert(tcp.tls{ server_name = "other.test" }) }) do
        local c, why = tcp.connect("localhost", srv.port, { framing = "line", tls = tls })
        if c then c:send("hi\n"); why = c:receive(5000); c:close() end
        out[#out + 1] = why
      end
      srv:close()
      print(table.concat(out, "|"))
    ]]):format(pem("server.pem"), pem("server.key"))
    local function run(file, cert_dir)
      local path = H.tempfile(script)
      local st, out, e = H.sh(("SSL_CERT_FILE=%s SSL_CERT_DIR=%s timeout 60 %s %s </dev/null"):format(
        H.quote(pem(file)), H.quote(pem(cert_dir)), H.quote(H.market_bin()), H.quote(path)))
      os.remove(path)
      return st .. " " .. out .. e
    end
    local mismatch = "tls: certificate verify failed (hostname mismatch)"
    local unknown = "tls: certificate verify failed (unable to get local issuer certificate)"
    assert.equal("0 echo: hi|echo: hi|" .. mismatch .. "\n", run("hashed/bundle.crt", "hashed"))
    assert.equal("0 echo: hi|echo: hi|" .. mismatch .. "\n", run("plain/bundle.crt", "empty"))
    assert.equal("0 echo: hi|echo: hi|" .. mismatch .. "\n", run("empty/other.pem", "plain"))
    assert.equal(("0 %s|%s|%s\n"):format(unknown, unknown, unknown), run("empty/other.pem", "empty"))
  end)
  it("says why a configuration cannot be used, and raises on misuse", function()
    local got = N.run(function()
      local out = {}
      local function try(f) out[#out + 1] = H.outcome(f, "spec/tls_spec.lua") end
      out[#out + 1] = select(2, tcp.tls{ cert = pem("nope.pem") })
      out[#out + 1] = select(2, tcp.tls{ cert = pem("server.pem"), key = pem("client.key") })
      out[#out + 1] = select(2, tcp.tls{ cert = pem("ca.srl") })
      out[#out + 1] = select(2, tcp.tls{ ca = dir .. "/nowhere" })
      try(function() tcp.tls{ key = pem("server.key") } end)
      try(function() tcp.tls{ cert = 42 } end)
      try(function() tcp.tls{ certificate = "x" } end)
      try(function() tcp.tls("x") end)
      try(function() tcp.connect("127.0.0.1", 1, { tls = "yes" }) end)
      try(function() tcp.options(tcp.listener(1), { tls = assert(tcp.tls{}) }) end)
      try(function() http.serve(0, function() end, { tls = true }) end)
      return out
    end)
    assert.equal("tls: cannot read the certificate " .. pem("nope.pem") ..
                 ": no such file or directory", got[1])
    assert.equal("tls: the key " .. pem("client.key") .. ": key values mismatch", got[2])
    assert.matches("^tls: the certificate .*ca%.srl: ", got[3])
    assert.equal("tls: cannot read the CA certificates " .. dir .. "/nowhere" ..
                 ": no such file or directory", got[4])
    assert.same({
      "false tcp.tls: a key without its certificate (cert)",
      "false tcp.tls: cert must be a string (not empty, no NUL), got 42",
      'false tcp.tls: unknown setting "certificate"',
      "false tcp.tls: want a table of settings, got string",
      'false tcp.connect: tls must be a configuration tcp.tls made, or a boolean, got "yes"',
      "false tcp.options: tls: a server needs a certificate (tcp.tls{cert = ..., key = ...})",
      "false http.serve: bad tls: true",
    }, { table.unpack(got, 5) })
  end)

  -- OpenSSL asks for a key's passphrase on the terminal, or on stdin when
  -- there is none: the whole VM waited there, at tcp.tls and at every
  -- connection, and took the program's input.  Here, without a terminal
  -- (setsid) and with the passphrase on stdin, as OpenSSL would have read
  -- it: tcp.tls refuses, and the program still reads its own input.
  it("refuses an encrypted key without asking for its passphrase", function()
    local status, _, err = H.sh_plain(("cd %s && openssl pkey -in server.key -aes256 " ..
                                       "-passout pass:secret -out enc.key"):format(H.quote(dir)))
    assert(status == 0, "openssl pkey: " .. err)
    local path = H.tempfile(([[
      local tcp = require "market.tcp"
      print(tcp.tls{ cert = %q, key = %q })
      print(io.read("l"))
    ]]):format(pem("server.pem"), pem("enc.key")))
    local st, out, e = H.sh(("printf 'secret\n' | setsid timeout 30 %s %s"):format(
      H.quote(H.market_bin()), H.quote(path)))
    os.remove(path)
    assert.equal(0, st, e)
    assert.equal(("nil\ttls: the key %s is encrypted: a key with a passphrase is not supported\n" ..
                  "secret\n"):format(pem("enc.key")), out)
  end)

  it("speaks https: http.request to http.serve over TLS, a kept connection, a redirect to " ..
     "https", function()
    local got = N.run(function()
      local server_cfg = assert(tcp.tls{ cert = pem("server.pem"), key = pem("server.key") })
      local client_cfg = assert(tcp.tls{ ca = pem("ca.pem") })
      local srv = assert(http.serve(0, function(req)
        return 200, { ["content-type"] = "text/plain", ["x-port"] = req.remote.port },
          req.method .. " " .. req.path .. " " .. #req.body
      end, { tls = server_cfg }))
      local plain = assert(http.serve(0, function(req)
        return 302, { location = ("https://localhost:%d/moved"):format(srv.port) }, ""
      end))
      local out = {}
      local base = ("https://127.0.0.1:%d"):format(srv.port)
      local r = assert(http.request(base .. "/a", { tls = client_cfg, method = "POST",
                                                    body = ("b"):rep(100000) }))
      out[1] = { r.status, r.body }
      r = assert(http.request(base .. "/b", { tls = client_cfg }))
      out[2] = { r.status, r.body }
      out[3] = select(2, http.request(base .. "/c"))            -- the system's CAs
      r, out[4] = http.request(("http://127.0.0.1:%d/"):format(plain.port),
                               { redirects = 1, tls = client_cfg })
      out[5] = r and { r.status, r.body, (r.url:gsub(":%d+/", ":P/")) }
      local ports = {}
      for i = 1, 3 do
        local k = assert(http.request(base .. "/k" .. i, { tls = client_cfg }))
        out[5 + i] = k.body
        ports[k.headers["x-port"]] = true
      end
      out[9] = 0
      for _ in pairs(ports) do out[9] = out[9] + 1 end
      srv:close(); plain:close()
      return out
    end, 20000)
    assert.same({ 200, "POST /a 100000" }, got[1])
    assert.same({ 200, "GET /b 0" }, got[2])
    assert.equal("tls: certificate verify failed (unable to get local issuer certificate)", got[3])
    assert.is_nil(got[4])
    assert.same({ 200, "GET /moved 0", "https://localhost:P/moved" }, got[5])
    assert.same({ "GET /k1 0", "GET /k2 0", "GET /k3 0" }, { got[6], got[7], got[8] })
    assert.equal(1, got[9])                   -- one kept TLS connection (one client port) for the three
  end)
end)

describe("TLS with real clients", function()
  setup(make_certificates)
  teardown(remove_certificates)

  it("serves openssl s_client on a handler-style listener, and curl on http.serve", function()
    local script = H.tempfile(([[
local market = require "market"
local tcp = require "market.tcp"
local http = require "market.http"
local cfg = assert(tcp.tls{ cert = %q, key = %q })
local here = tcp.listener(0)
market.perform(tcp.options(here, { tls = cfg, framing = "line" }),
  market.subscriber(tcp.listening(0, market._), { on_presence = function(_, role)
    io.stderr:write("echo on port ", role.topic.bound_port, "\n")
  end }),
  market.observe_publishers(tcp.channel(market._, here, market._), {
    on_presence = function(_, role)
      local remote = role.topic.source
      return market.transition_no_state(market.spawn(function()
        return market.transition(nil, market.subscriber(tcp.channel(remote, here, market._), {
          on_message = function(_, m)
            if m.subpacket == market.EOF then return market.transition_no_state(market.quit()) end
            return market.transition_no_state(market.send(tcp.channel(here, remote, "tls: " .. m.subpacket .. "\n")))
          end }), market.publisher(tcp.channel(here, remote, market._)))
      end))
    end }))
local srv = assert(http.serve(0, function(req) return 200, nil, "hello " .. req.path .. "\n" end, { tls = cfg }))
io.stderr:write("http on port ", srv.port, "\n")
]]):format(pem("server.pem"), pem("server.key")), ".lua")
    local server = N.start(script)
    local _, echo_port = N.await_listening(server, "the TLS servers", 2, "echo on port (%d+)")
    local _, http_port = N.await_listening(server, "the TLS servers", 2, "http on port (%d+)")
    local said = N.capture(("(printf 'hello\\n'; sleep 1) | env -u LD_PRELOAD openssl s_client -quiet -verify_return_error " ..
                            "-CAfile %s -connect 127.0.0.1:%d 2>/dev/null"):format(pem("ca.pem"), echo_port), 10)
    local curled = N.capture(("env -u LD_PRELOAD curl -s --cacert %s https://localhost:%d/x https://127.0.0.1:%d/y")
                             :format(pem("ca.pem"), http_port, http_port), 10)
    local refused = N.capture(("env -u LD_PRELOAD curl -s -o /dev/null -w '%%{http_code}' https://127.0.0.1:%d/z")
                              :format(http_port), 10)
    server.stop()
    local err = server.stderr()
    server.kill()
    os.remove(script)
    assert.equal("tls: hello\n", said)
    assert.equal("hello /x\nhello /y\n", curled)
    assert.equal("000", refused)              -- curl trusts not this CA
    assert.not_matches("failed", err)
  end)
end)

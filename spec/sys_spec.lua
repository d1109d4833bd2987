-- sys_spec.lua: market.sys (drivers/lsys.c), the drivers' internal socket
-- calls: non-blocking, errors as values.  Plain Lua, no VM.
local sys = require "market.sys"

-- Poll f() (non-blocking) until it returns something other than false.
local function poll(f)
  for _ = 1, 200 do
    local a, b, c = f()
    if a ~= false then return a, b, c end
    os.execute("sleep 0.01")
  end
  error("poll: still would block")
end

local function pair()
  local l = assert(sys.tcp_listen(0))
  local port = l:local_port()
  local c, how = sys.tcp_connect(sys.resolve("127.0.0.1", port)[1].sa)
  assert(c, how)
  local s, host = poll(function() return l:accept() end)
  assert(s, host)
  l:close()
  return c, s, host, port
end

describe("market.sys", function()
  it("resolves numeric addresses at once, names on a thread", function()
    local a = sys.resolve("127.0.0.1", 80)
    assert.equal("table", type(a))
    assert.same({ "127.0.0.1", 80, 4 }, { a[1].host, a[1].port, a[1].family })
    local six = sys.resolve("::1", 53, "udp")
    assert.same({ "::1", 53, 6 }, { six[1].host, six[1].port, six[1].family })
    -- A link-local address keeps its interface, which getaddrinfo reads
    -- back: without it, a peer's address named no one (and two peers on
    -- two interfaces were one topic).
    local ll = sys.resolve("fe80::1%lo", 53, "udp")
    assert.same({ "fe80::1%lo", 53, 6 }, { ll[1].host, ll[1].port, ll[1].family })
    local req = sys.resolve("localhost", 8080)
    assert.equal("userdata", type(req))
    assert.equal("number", math.type(req:fd()) and "number")
    local addrs = poll(function() return req:result() end)
    req:close()
    assert.equal(8080, addrs[1].port)
    assert.is_true(addrs[1].host == "127.0.0.1" or addrs[1].host == "::1")
    local bad = sys.resolve("no-such-host.invalid", 1)
    local r, err = poll(function() return bad:result() end)
    bad:close()
    assert.is_nil(r)
    -- Whatever the resolver says: "name or service not known" where a DNS
    -- server answers, "temporary failure in name resolution" where none does.
    assert.is_string(err)
    assert.is_true(#err > 0)
    -- An abandoned request cleans up after itself.
    sys.resolve("localhost", 1):close()
    assert.same({ nil, "empty host name" }, { sys.resolve("", 1) })
    -- The words of a listener's port out of range: resolve's said only
    -- "port out of range", and the udp driver's warning carried that.
    assert.same({ nil, "port out of range (0 to 65535)" }, { sys.resolve("127.0.0.1", 70000) })
    assert.same({ nil, "port out of range (0 to 65535)" }, { sys.resolve("127.0.0.1", -1, "udp") })
  end)

  it("reports a port in use as a value", function()
    local l = assert(sys.tcp_listen(0))
    local port = l:local_port()
    assert.is_true(port > 0)
    assert.same({ nil, "address already in use" }, { sys.tcp_listen(port) })
    l:close()
  end)

  it("ties a socket to the calling process only inside one", function()
    local l = assert(sys.tcp_listen(0))
    finally(function() l:close() end)
    local ok, err = pcall(sys.close_at_end, l)
    assert.is_false(ok)
    assert.matches("sys.close_at_end: not inside a market process$", err)
    assert.is_false(pcall(sys.close_at_end, 7))   -- not a socket
    assert.is_true(l:local_port() > 0)            -- still open
  end)

  it("reads, writes partially, half-closes, and tells would-block from end of stream", function()
    local c, s, host = pair()
    assert.equal("127.0.0.1", host)
    assert.is_nil(c:so_error())
    assert.equal(false, s:read())                      -- nothing yet: would block
    assert.equal(5, c:write("hello"))
    assert.equal("hello", poll(function() return s:read() end))
    -- A large write is partial, then would block (returns 0).
    local big = ("x"):rep(32 * 1024 * 1024)
    local n = c:write(big)
    assert.is_true(n > 0 and n < #big, "wrote " .. n)
    assert.equal(0, c:write(big, n + 1))
    -- Half-close: the peer drains, then sees end of stream, and can still write.
    c:close()
    local c2, s2 = pair()
    c2:write("last")
    assert.is_true(c2:shutdown())
    assert.equal("last", poll(function() return s2:read() end))
    assert.same({ nil, "eof" }, { poll(function() return s2:read() end) })
    assert.equal(4, s2:write("back"))
    assert.equal("back", poll(function() return c2:read() end))
    s:close(); c2:close(); s2:close()
    assert.has_error(function() s:read() end, "market.sys: socket is closed")
  end)

  it("reports a refused connection through SO_ERROR", function()
    local l = assert(sys.tcp_listen(0))
    local port = l:local_port()
    l:close()
    local c, how = sys.tcp_connect(sys.resolve("127.0.0.1", port)[1].sa)
    if c then
      assert.equal("inprogress", how)
      local err = poll(function() local e = c:so_error(); if e then return e end; return false end)
      assert.equal("connection refused", err)
      c:close()
    else
      assert.equal("connection refused", how)
    end
  end)

  it("sends and receives the largest IPv4 UDP datagram", function()
    local a, b = assert(sys.udp_bind(0)), assert(sys.udp_bind(0))
    local to_b = sys.resolve("127.0.0.1", b:local_port(), "udp")[1].sa
    local payload = ("0123456789abcdef"):rep(4094) .. ("z"):rep(65507 - 16 * 4094)
    assert.equal(65507, a:sendto(payload, to_b))
    local data, host, port = poll(function() return b:recvfrom() end)
    assert.equal(payload, data)
    assert.equal("127.0.0.1", host)
    assert.equal(a:local_port(), port)
    assert.same({ nil, "message too long" }, { a:sendto(("y"):rep(65508), to_b) })
    assert.equal(false, b:recvfrom())
    a:close(); b:close()
  end)

  it("refuses a udp port in use, and port 0 never hands one out", function()
    local a = assert(sys.udp_bind(0))
    local port = a:local_port()
    assert.same({ nil, "address already in use" }, { sys.udp_bind(port) })
    -- With SO_REUSEADDR on both, Linux's bind(0) picks a held port about
    -- once in 30,000 binds; 100,000 would find it nearly always.
    for _ = 1, 100000 do
      local b = assert(sys.udp_bind(0))
      local bport = b:local_port()
      b:close()
      assert.are_not.equal(port, bport)
    end
    a:close()
  end)

  it("reads file descriptors without blocking", function()
    assert.same({ nil, "bad file descriptor" }, { sys.fd_read(12345) })
  end)
end)

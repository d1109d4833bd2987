-- dns_example_spec.lua: examples/dns.lua end to end with dig (and socat for
-- malformed packets), on a loopback port the kernel picks (UDP and TCP
-- alike), the server killed at the end.
package.path = "spec/support/?.lua;" .. package.path
local N = require "net"

local PORT

-- The answer section of `dig name type`, one record per line, whitespace
-- collapsed; and the status line's rcode.
local function dig(args)
  local out = N.capture(("dig +tries=1 +time=2 @127.0.0.1 -p %d %s +noall +answer +authority +comments")
    :format(PORT, args), 10)
  local status = out:match("status: (%u+)")
  local flags = out:match(";; flags: ([%w ]+);")
  local lines = {}
  for line in out:gmatch("[^\n]+") do
    if not line:match("^;") and line:match("%S") then
      lines[#lines + 1] = (line:gsub("%s+", " "))
    end
  end
  return lines, status, flags, out
end

-- Send raw bytes (written as octal escapes for sh's printf) over UDP; the
-- reply as hex bytes separated by spaces ("" for none within a second).
local function raw(octal)
  local out = N.capture(("printf '%s' | socat -T 1 - UDP:127.0.0.1:%d | od -An -v -tx1")
    :format(octal, PORT), 5)
  return (out:gsub("%s+", " "):gsub("^ ", ""):gsub(" $", ""))
end

describe("examples/dns.lua", function()
  local server
  setup(function() server, PORT = N.start_server("examples/dns.lua") end)
  teardown(function() server.kill() end)

  it("answers A authoritatively", function()
    local lines, status, flags = dig("example.test A")
    assert.equal("NOERROR", status)
    assert.equal("qr aa rd", flags)
    assert.are.same({ "example.test. 300 IN A 192.0.2.1" }, lines)
  end)

  it("answers AAAA and several A records", function()
    assert.are.same({ "mail.example.test. 300 IN AAAA 2001:db8:0:1::25" }, (dig("mail.example.test AAAA")))
    assert.are.same({ "mail.example.test. 300 IN A 192.0.2.25", "mail.example.test. 300 IN A 192.0.2.26" },
      (dig("mail.example.test A")))
  end)

  it("answers TXT with several strings", function()
    assert.are.same({ 'mail.example.test. 300 IN TXT "hello world" "a second string; with a semicolon"' },
      (dig("mail.example.test TXT")))
  end)

  it("follows CNAME chains inside the zone", function()
    assert.are.same({
      "alias.example.test. 300 IN CNAME www.example.test.",
      "www.example.test. 300 IN CNAME example.test.",
      "example.test. 300 IN AAAA 2001:db8::1" }, (dig("alias.example.test AAAA")))
    assert.are.same({ "www.example.test. 300 IN CNAME example.test." }, (dig("www.example.test CNAME")))
    -- A CNAME out of the zone is answered as it is.
    assert.are.same({ "away.example.test. 300 IN CNAME example.org." }, (dig("away.example.test A")))
  end)

  it("keeps the case of the question", function()
    local lines = dig("WwW.Example.TEST A")
    assert.equal("WwW.Example.TEST. 300 IN CNAME example.test.", lines[1])
    assert.equal("example.test. 300 IN A 192.0.2.1", lines[2])
  end)

  it("answers NXDOMAIN for a name not in the zone, with the SOA", function()
    local lines, status = dig("nothing.example.test A")
    assert.equal("NXDOMAIN", status)
    assert.are.same({ "example.test. 3600 IN SOA ns.example.test. hostmaster.example.test. 2024010101 3600 600 86400 300" }, lines)
    local other, st2 = dig("example.org A")
    assert.equal("NXDOMAIN", st2)
    assert.are.same({}, other)
  end)

  it("answers an empty NOERROR for a type the name does not have", function()
    local lines, status = dig("www.example.test MX")
    assert.equal("NOERROR", status)
    -- www is a CNAME: the chain is followed to example.test, which has no MX.
    assert.are.same({ "www.example.test. 300 IN CNAME example.test.",
      "example.test. 3600 IN SOA ns.example.test. hostmaster.example.test. 2024010101 3600 600 86400 300" }, lines)
  end)

  it("answers over TCP too (dig asks ANY over TCP)", function()
    local lines, status = dig("example.test ANY")
    assert.equal("NOERROR", status)
    assert.equal(4, #lines)
    assert.equal("example.test. 300 IN A 192.0.2.1", lines[2])
    assert.are.same({ "ns.example.test. 300 IN A 192.0.2.53" }, (dig("+tcp ns.example.test A")))
  end)

  it("drops packets that are not queries and answers a malformed question with FORMERR", function()
    -- Shorter than a header: dropped.
    assert.equal("", raw("hello"))
    -- A header with QR set (a response): dropped.
    assert.equal("", raw("\\022\\064\\201\\000\\000\\001\\000\\000\\000\\000\\000\\000"))
    -- One question, cut off in its name: FORMERR (rcode 1), no question.
    assert.equal("12 34 81 01 00 00 00 00 00 00 00 00",
      raw("\\022\\064\\001\\000\\000\\001\\000\\000\\000\\000\\000\\000\\007exam"))
    -- And the server is still there.
    assert.are.same({ "example.test. 300 IN A 192.0.2.1" }, (dig("example.test A")))
  end)

  it("exits cleanly on SIGTERM", function()
    assert.equal(0, server.stop("TERM"))
    assert.equal("dns: serving example.test., listening on port " .. PORT .. " (udp and tcp)\n",
                 server.stderr())
  end)
end)

describe("examples/dnsmsg.lua", function()
  local dns = dofile("examples/dnsmsg.lua")

  -- load_zone's outcome for a zone file of these lines.
  local function load(text)
    local path = os.tmpname()
    local f = assert(io.open(path, "w"))
    f:write(text)
    f:close()
    local ok, err = pcall(dns.load_zone, path)
    os.remove(path)
    return ok and "loaded" or (err:gsub("^dns: [^:]+:", "dns: ZONE:"))
  end

  local function query(id, name)
    local q = ""
    for label in name:gmatch("[^.]+") do q = q .. string.pack("s1", label) end
    return string.pack(">I2I2I2I2I2I2", id, 0x100, 1, 0, 0, 0) .. q .. "\0" .. string.pack(">I2I2", 1, 1)
  end

  it("refuses at load a zone whose numbers or names do not fit the wire, naming the line", function()
    -- They loaded, and the first query for the name raised in answer (a
    -- TTL of -1: "bad argument #4 to 'pack' (unsigned overflow)"), which
    -- killed the server; a label too long raised a bare assertion.
    local head = "$ORIGIN example.test.\n@ 3600 SOA ns hm 1 2 3 4 5\n"
    local long = ("a"):rep(64)
    local got = {}
    for _, line in ipairs({
      "neg -1 A 192.0.2.1",
      "big 4294967296 A 192.0.2.2",
      "@ 3600 SOA ns hm 1 2 3 4 -5",
      "@ 3600 SOA ns hm 4294967296 2 3 4 5",
      "x 300 CNAME " .. long,
      "x 300 NS " .. long .. ".example.org.",
      "@ 3600 SOA " .. long .. " hm 1 2 3 4 5",
      "@ 3600 SOA ns a.." .. " 1 2 3 4 5",
      long .. " 300 A 192.0.2.3",
      "$ORIGIN " .. long .. ".",
      "x 300 CNAME " .. ("abcdefg."):rep(32),
      "t 300 TXT" .. (' "' .. ("t"):rep(255) .. '"'):rep(257),
    }) do
      got[#got + 1] = load(head .. line .. "\n")
    end
    local lname = long .. ".example.test."
    assert.same({
      "dns: ZONE:3: TTL out of range (0 to 4294967295): -1",
      "dns: ZONE:3: TTL out of range (0 to 4294967295): 4294967296",
      "dns: ZONE:3: SOA number out of range (0 to 4294967295): -5",
      "dns: ZONE:3: SOA number out of range (0 to 4294967295): 4294967296",
      "dns: ZONE:3: bad name " .. lname .. ": a label longer than 63 bytes",
      "dns: ZONE:3: bad name " .. long .. ".example.org.: a label longer than 63 bytes",
      "dns: ZONE:3: bad name " .. lname .. ": a label longer than 63 bytes",
      "dns: ZONE:3: bad name a..: an empty label",
      "dns: ZONE:3: bad name " .. lname .. ": a label longer than 63 bytes",
      "dns: ZONE:3: bad name " .. long .. ".: a label longer than 63 bytes",
      "dns: ZONE:3: bad name " .. ("abcdefg."):rep(32) .. ": longer than 255 bytes on the wire",
      "dns: ZONE:3: TXT data longer than 65535 bytes",
    }, got)
    -- The largest numbers load, and are answered.
    local path = os.tmpname()
    local f = assert(io.open(path, "w"))
    f:write(head:gsub("1 2 3 4 5", "4294967295 0 0 0 4294967295"), "top 4294967295 A 192.0.2.4\n",
            ("a"):rep(63), " 0 A 192.0.2.5\n")
    f:close()
    local zone = dns.load_zone(path)
    os.remove(path)
    local reply = dns.answer(dns.parse(query(7, "top.example.test")), zone)
    local id, flags, _, an = string.unpack(">I2I2I2I2", reply)
    assert.same({ 7, 0, 1 }, { id, flags & 0xF, an })
    -- The record ends with its TTL, its data's length and the address.
    assert.equal("\255\255\255\255\0\4\192\0\2\4", reply:sub(-10))
  end)
end)

describe("examples/dns.lua in a ground VM", function()
  it("takes a wildcard message (send(market._)) for no query, over UDP and TCP alike", function()
    -- Its handlers read m.body and m.subpacket: the wildcard has no
    -- fields, and the server (or the session) died of it.
    local market = require "market"
    local udp, tcp = require "market.udp", require "market.tcp"
    local ANY = market._
    local function query(id)
      return string.pack(">I2I2I2I2I2I2", id, 0x100, 1, 0, 0, 0) .. "\7example\4test\0" ..
        string.pack(">I2I2", 1, 1)
    end
    local function head(reply)
      if type(reply) ~= "string" then return tostring(reply) end
      local id, flags, _, an = string.unpack(">I2I2I2I2", reply)
      return ("id %d rcode %d answers %d"):format(id, flags & 0xF, an)
    end
    local chunk = assert(loadfile("examples/dns.lua"))
    local function boot()
      -- (The chunk's globals are _G, not the spec's environment.)
      local saved = _G.arg
      _G.arg = { [0] = "examples/dns.lua" }  -- where dns.lua finds dnsmsg.lua and the zone
      local ok, t = pcall(chunk, "0")
      _G.arg = saved
      if not ok then error(t, 0) end
      return t
    end
    local got = N.run(function()
      local pid = market.perform(market.spawn(boot, { name = "dns" }))
      market.perform(market.subscriber(udp.bound(udp.listener(ANY), ANY), "bound"))
      local port = market.wait_for(function(e) return e.endpoint == "bound" end).role.topic.port
      local conn = assert(tcp.connect("127.0.0.1", port, { framing = "u16" }))
      assert(conn:send(string.pack(">s2", query(1))))
      local out = { head(conn:receive(5000)) }
      market.perform(market.send(ANY))
      local s = assert(udp.open())
      s:sendto(query(2), "127.0.0.1", port)
      out[#out + 1] = head(s:receivefrom(5000))
      assert(conn:send(string.pack(">s2", query(3))))
      out[#out + 1] = head(conn:receive(5000))
      s:close()
      conn:close()
      market.perform(market.quit(pid))
      return out
    end)
    assert.same({ "id 1 rcode 0 answers 1", "id 2 rcode 0 answers 1", "id 3 rcode 0 answers 1" }, got)
  end)
end)

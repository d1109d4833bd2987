-- inspect_spec.lua: the live inspector (docs/inspect.md, "The live
-- inspector"): its HTTP routes, errors and limits, the Server-Sent Events,
-- `market inspect`, the Lua and C ways to start it, and the page in a real
-- browser (headless chromium, driven over its DevTools protocol).  Every
-- server listens on a port the kernel picks, every client runs under
-- `timeout`, every server and browser is killed by pid at the end.
package.path = "spec/support/?.lua;" .. package.path
local N = require "net"
local J = require "jsonread"
local H = require "helpers"
local market = require "market"
local q, capture = N.q, N.capture

-- `market --inspect 127.0.0.1:0 script 0 ...`: the server and the
-- inspector's port, read from "market: inspector on http://127.0.0.1:N/".
local function start_inspected(script, ...)
  local args = {}
  for i = 1, select("#", ...) do args[i] = q(select(i, ...)) end
  local server = N.start_cmd(("exec %s --inspect 127.0.0.1:0 %s %s"):format(
    q(N.market_bin()), q(script), table.concat(args, " ")))
  return N.await_listening(server, "the inspector", 3,
    "market: inspector on http://127%.0%.0%.1:(%d+)/\n")
end

-- Send text as it is to the inspector; the raw response.
local function raw(port, text)
  return (capture(("printf '%%s' %s | nc -N 127.0.0.1 %d"):format(q(text), port), 10))
end

local function get(port, path, method, host)
  return raw(port, ("%s %s HTTP/1.1\r\nHost: %s\r\n\r\n"):format(method or "GET", path,
                                                                 host or "127.0.0.1:" .. port))
end

-- status, headers (lower-cased names), body of a response.
local function parse(resp)
  local head, body = resp:match("^(.-)\r\n\r\n(.*)$")
  assert(head, "no HTTP response: " .. resp:sub(1, 200))
  local status = tonumber(head:match("^HTTP/1%.1 (%d+)"))
  local headers = {}
  for k, v in head:gmatch("\r\n([^:]+): ([^\r]*)") do headers[k:lower()] = v end
  return status, headers, body
end

local function json_get(port, path)
  local status, headers, body = parse(get(port, path))
  assert.equal(200, status, body)
  assert.equal("application/json", headers["content-type"])
  return assert(J.decode(body))
end

local function find_proc(snap, pred)
  for _, p in ipairs(snap.vm.processes) do
    if pred(p) then return p end
  end
end

local function named(name) return function(p) return p.name == name end end

describe("the inspector's HTTP server", function()
  local server, port
  before_each(function() server, port = start_inspected("examples/chat.lua", "0") end)
  after_each(function() server.kill() end)

  it("serves the page at /: one HTML document that fetches nothing from elsewhere", function()
    local status, headers, body = parse(get(port, "/"))
    assert.equal(200, status)
    assert.equal("text/html; charset=utf-8", headers["content-type"])
    assert.equal(#body, tonumber(headers["content-length"]))
    assert.truthy(body:find("^<!DOCTYPE html>"))
    assert.truthy(body:find("<style>", 1, true) and body:find("<script>", 1, true))
    assert.falsy(body:find("<link", 1, true))
    assert.falsy(body:find("src=", 1, true))
    assert.falsy(body:find("https?://"))
    assert.truthy(headers["content-security-policy"]:find("default-src 'none'", 1, true))
  end)

  it("serves the snapshot at /api/snapshot, with its own URL", function()
    local snap = json_get(port, "/api/snapshot")
    assert.equal("ground", snap.vm.path)
    assert.equal(("http://127.0.0.1:%d/"):format(port), snap.inspector.url)
    assert.truthy(find_proc(snap, named("inspector")))
    assert.truthy(find_proc(snap, named("examples/chat.lua")))
    assert.truthy(snap.drivers.tcp)
  end)

  it("serves a process at /api/process/PID and a conversation at /api/conversation/...", function()
    local snap = json_get(port, "/api/snapshot")
    local driver = find_proc(snap, named("tcp-driver"))
    local view = json_get(port, "/api/process/" .. driver.pid)
    assert.equal("ground", view.vm)
    assert.equal(driver.pid, view.pid)
    assert.equal("tcp-driver", view.process.name)
    assert.equal("table", type(view.events))
    assert.equal("boolean", type(view.recording))
    -- The ground VM's pid 0 and the tcp driver, say.
    local c = snap.vm.conversations[1]
    view = json_get(port, ("/api/conversation/%d/%s/%d/%s?vm=ground"):format(
      c.publisher.pid, c.publisher.endpoint, c.subscriber.pid, c.subscriber.endpoint))
    assert.equal(c.publisher.pid, view.publisher.pid)
    assert.equal(c.subscriber.endpoint, view.subscriber.endpoint)
    assert.truthy(view.publisher.topic)
    -- A pid that is not there: no process, still an answer.
    view = json_get(port, "/api/process/99999")
    assert.is_nil(view.process)
  end)

  it("answers 404 for other paths", function()
    -- (A pid past an integer's range was answered 200, without a pid.)
    for _, path in ipairs { "/api/process/99999999999999999999999", "/api/process/9223372036854775808",
                            "/api/conversation/99999999999999999999/p/6/%231" } do
      assert.equal(404, (parse(get(port, path))), path)
    end
    local status, _, body = parse(get(port, "/etc/passwd"))
    assert.equal(404, status)
    assert.truthy(body:find("no such page", 1, true))
    assert.equal(404, (parse(get(port, "/api/process/abc"))))
  end)

  it("is read-only: 405 for anything but GET and HEAD", function()
    for _, m in ipairs { "POST", "PUT", "DELETE", "OPTIONS" } do
      local status, headers = parse(raw(port, ("%s /api/snapshot HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\n\r\n"):format(m)))
      assert.equal(405, status, m)
      assert.equal("GET, HEAD", headers.allow)
    end
  end)

  it("answers HEAD with GET's head and no body", function()
    local _, gh, gbody = parse(get(port, "/"))
    local resp = get(port, "/", "HEAD")
    local status, headers, body = parse(resp)
    assert.equal(200, status)
    assert.equal(tostring(#gbody), headers["content-length"])
    assert.equal(gh["content-type"], headers["content-type"])
    assert.equal("", body)
    -- /events too: a stream's head, no length (a HEAD said Content-Length: 0).
    local stream = capture(("printf 'GET /events HTTP/1.1\\r\\nHost: 127.0.0.1\\r\\n\\r\\n' | " ..
                            "timeout 5 nc -N 127.0.0.1 %d"):format(port), 10)
    local ghead = stream:match("^(.-\r\n\r\n)")
    assert.truthy(ghead, stream)
    assert.equal(ghead, get(port, "/events", "HEAD"))
    assert.falsy(ghead:lower():find("content-length", 1, true))
  end)

  it("answers 400 to what is not HTTP, and closes", function()
    local status, headers = parse(raw(port, "HELLO THERE\r\n\r\n"))
    assert.equal(400, status)
    assert.equal("close", headers.connection)
    assert.equal(400, (parse(raw(port, "GET / HTTP/1.1\r\nHost 127.0.0.1\r\n\r\n"))))
  end)

  it("takes empty pieces: an empty header value, an empty Host, the path *", function()
    -- (Under ASan+UBSan these once stopped the server: memcpy of 0 bytes
    -- to a buffer not yet made.)
    assert.equal(200, (parse(raw(port, "GET /api/snapshot HTTP/1.1\r\nX:\r\nHost: 127.0.0.1\r\n\r\n"))))
    assert.equal(403, (parse(raw(port, "GET / HTTP/1.1\r\nHost:\r\n\r\n"))))
    assert.equal(404, (parse(raw(port, "GET * HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"))))
    assert.equal(200, (parse(get(port, "/api/snapshot"))))
  end)

  it("bounds a request: 431 past 8 KiB of head", function()
    local status = parse(get(port, "/" .. ("a"):rep(9000)))
    assert.equal(431, status)
    status = parse(raw(port, "GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nX: " .. ("b"):rep(9000) .. "\r\n\r\n"))
    assert.equal(431, status)
    -- And still serves.
    assert.equal(200, (parse(get(port, "/api/snapshot"))))
  end)

  it("bounds a body: 413 past 8 KiB, though it comes with the head", function()
    local status, _, body = parse(raw(port, "POST /api/snapshot HTTP/1.1\r\nHost: 127.0.0.1\r\n" ..
                                      "Content-Length: 9000\r\n\r\n" .. ("c"):rep(9000)))
    assert.equal(413, status, body)
    -- 413 as soon as the head says so, the body not sent (it was 408 at
    -- REQUEST_TIMEOUT_MS); a chunk's size the same.
    for _, head in ipairs { "Content-Length: 9000", "Content-Length: 99999999999",
                            "Transfer-Encoding: chunked\r\n\r\nffffffffffff" } do
      local t0 = os.time()
      status, _, body = parse(raw(port, "GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n" .. head .. "\r\n\r\n"))
      assert.equal(413, status, body)
      assert.is_true(os.time() - t0 < 5, head)
    end
    -- Only HTTP/1.x (9.9 was answered 200, as 1.1).
    status = parse(raw(port, "GET /api/snapshot HTTP/9.9\r\nHost: 127.0.0.1\r\n\r\n"))
    assert.equal(505, status)
    -- A head and a small body past the limit together: the body is no head.
    status = parse(raw(port, "POST /api/snapshot HTTP/1.1\r\nHost: 127.0.0.1\r\nX: " .. ("d"):rep(7900) ..
                              "\r\nContent-Length: 500\r\n\r\n" .. ("e"):rep(500)))
    assert.equal(405, status)
  end)

  it("puts together a request that comes in pieces", function()
    local out = capture(("(printf 'GET /api/snap'; sleep 0.3; printf 'shot HTTP/1.1\\r\\nHo'; sleep 0.3; " ..
      "printf 'st: 127.0.0.1\\r\\n\\r\\n') | nc -N 127.0.0.1 %d"):format(port), 10)
    local status, _, body = parse(out)
    assert.equal(200, status)
    assert.equal("ground", J.decode(body).vm.path)
  end)

  it("refuses a Host that is not loopback (a page of another site, DNS rebinding)", function()
    local status = parse(get(port, "/api/snapshot", "GET", "evil.example:" .. port))
    assert.equal(403, status)
    assert.equal(200, (parse(get(port, "/api/snapshot", "GET", "localhost:" .. port))))
  end)

  it("listens on loopback only", function()
    local found
    for line in (N.slurp("/proc/net/tcp") or ""):gmatch("[^\n]+") do
      local addr, lport, st = line:match("^%s*%d+: (%x+):(%x+) %x+:%x+ (%x+)")
      if addr and tonumber(lport, 16) == port and st == "0A" then found = addr end
    end
    assert.equal("0100007F", found)
  end)

  it("pushes a snapshot at least once a second on /events, and forgets a client that goes", function()
    local out = capture(("(printf 'GET /events HTTP/1.1\\r\\nHost: 127.0.0.1\\r\\n\\r\\n'; sleep 4) | " ..
      "timeout 5 nc 127.0.0.1 %d"):format(port), 10)
    local status, headers, body = parse(out)
    assert.equal(200, status)
    assert.equal("text/event-stream", headers["content-type"])
    local events = {}
    for data in body:gmatch("data: ([^\n]*)\n\n") do events[#events + 1] = data end
    -- One at once and one a second after: a liveness bound, not a timing.
    assert.is_true(#events >= 3, "events in 4 s: " .. #events)
    assert.equal("ground", J.decode(events[#events]).vm.path)
    -- Gone with its client: only the connection of this request is left.
    local snap
    for _ = 1, 100 do
      snap = json_get(port, "/api/snapshot")
      local n = 0
      for _, p in ipairs(snap.vm.processes) do
        if (p.name or ""):find("^inspector ") then n = n + 1 end
      end
      if n == 1 then break end
      N.sleep(0.05)
    end
    local conns = {}
    for _, p in ipairs(snap.vm.processes) do
      if (p.name or ""):find("^inspector ") then conns[#conns + 1] = p.name end
    end
    assert.equal(1, #conns, table.concat(conns, ", "))
  end)
end)

describe("market --inspect", function()
  it("ends an open /events stream at once when the program stops, not at the drain's end", function()
    local server, port = N.await_listening(N.start_cmd(("exec %s --drain 20000 --inspect 127.0.0.1:0 -e 'print(1)'")
      :format(q(N.market_bin()))), "the inspector", 2, "market: inspector on http://127%.0%.0%.1:(%d+)/\n")
    local page = N.start_cmd(("(printf 'GET /events HTTP/1.1\\r\\nHost: 127.0.0.1\\r\\n\\r\\n'; sleep 30) | " ..
      "exec nc 127.0.0.1 %d"):format(port))
    for _ = 1, 250 do
      if page.stdout():find("data: ", 1, true) then break end
      N.sleep(0.02)
    end
    os.execute("kill -TERM " .. server.pid)
    -- The page keeps its side open: the connection's orderly close waits
    -- up to 2 s for it (docs/tcp.md), far less than the 20 s drain.
    local status = server.wait_exit(8)
    page.kill()
    server.kill()
    assert.equal(0, status)
  end)

  -- The listener's absence at the end (the tcp driver's "exit") was told
  -- as a failure to listen after the inspector had listened.
  it("says nothing more when a program that it served ends with market.exit", function()
    local script = H.tempfile([[
local market = require "market"
require("market.timer").sleep(300)        -- (time for the inspector to listen)
market.perform(market.exit(0))
]])
    local out, status = capture(("%s --inspect 127.0.0.1:0 %s"):format(q(N.market_bin()), q(script)), 10)
    os.remove(script)
    assert.equal(0, status, out)
    assert.matches("^market: inspector on http://127%.0%.0%.1:%d+/\n$", out)
  end)

  it("says why it cannot listen and exits 1", function()
    local busy = N.start_cmd(("exec %s --inspect 127.0.0.1:0 examples/chat.lua 0"):format(q(N.market_bin())))
    local _, port = N.await_listening(busy, "chat")
    for _ = 1, 250 do
      if busy.stderr():find("inspector on", 1, true) then break end
      N.sleep(0.02)
    end
    local iport = tonumber(busy.stderr():match("inspector on http://127%.0%.0%.1:(%d+)/"))
    local out, status = capture(("%s --inspect 127.0.0.1:%d -e 'print(1)'"):format(q(N.market_bin()), iport), 10)
    busy.kill()
    assert.equal(1, status)
    assert.truthy(out:find(("market: --inspect: cannot listen on 127.0.0.1 port %d: address already in use"):format(iport), 1, true), out)
    assert.truthy(port)
  end)

  it("on a port the program listens on with the same term, says so and exits 1", function()
    -- The tcp driver gives observers of one listener term one socket: the
    -- inspector and the program would both take every connection.
    local port = N.free_port()
    local script = H.tempfile(([[
local market = require "market"
local tcp = require "market.tcp"
local here = tcp.listener(tcp.address("127.0.0.1", %d))
return market.transition(nil, market.observe_publishers(tcp.channel(market._, here, market._)))
]]):format(port))
    local out, status = capture(("%s --inspect 127.0.0.1:%d %s"):format(q(N.market_bin()), port, q(script)), 10)
    assert.equal(1, status, out)
    assert.truthy(out:find(("market: --inspect: 127.0.0.1:%d: the program accepts connections there too")
                           :format(port), 1, true), out)
    -- Observing the listener otherwise (an "everything" monitor) is no clash.
    script = H.tempfile(([[
local market = require "market"
local tcp = require "market.tcp"
local here = tcp.listener(tcp.address("127.0.0.1", %d))
market.perform(market.observe_publishers_everything(tcp.channel(market._, here, market._)))
require("market.timer").sleep(300)        -- (time for the inspector to see it)
market.perform(market.exit(0))
]]):format(port))
    out, status = capture(("%s --inspect 127.0.0.1:%d %s"):format(q(N.market_bin()), port, q(script)), 10)
    assert.equal(0, status, out)
    -- Nor is a monitor of every listener's connections (observers of
    -- channels to any listener): the driver opens no socket for it.
    for _, pattern in ipairs { "tcp.channel(_, _, _)", "tcp.channel(_, tcp.listener(_), _)" } do
      script = H.tempfile(([[
local market = require "market"
local tcp = require "market.tcp"
local _ = market._
market.perform(market.observe_publishers(%s))
require("market.timer").sleep(300)        -- (time for the inspector to see it)
market.perform(market.exit(0))
]]):format(pattern))
      out, status = capture(("%s --inspect 127.0.0.1:%d %s"):format(q(N.market_bin()), port, q(script)), 10)
      assert.equal(0, status, pattern .. ": " .. out)
    end
  end)

  it("refuses an address that is not [HOST:]PORT (usage error)", function()
    local out, status = capture(("%s --inspect 99999 -e 'print(1)'"):format(q(N.market_bin())), 10)
    assert.equal(2, status)
    assert.truthy(out:find('market: --inspect: bad address "99999"', 1, true), out)
    -- A name, even one that resolves: the host is to listen on, not looked up.
    for _, addr in ipairs { "no-such-host:0", "localhost:0" } do
      out, status = capture(("%s --inspect %s -e 'print(1)'"):format(q(N.market_bin()), addr), 10)
      assert.equal(2, status, out)
      assert.equal(('market: --inspect: bad address "%s": HOST must be a numeric IP address ' ..
                    "(no name is looked up)\n"):format(addr), out)
    end
  end)
end)

describe("market --inspect 0", function()
  -- docs/tcp.md's "One address" example: the program's own loopback
  -- listener on a port the kernel picks, echoing with a prefix.
  local APP = [[
local market = require "market"
local tcp = require "market.tcp"
local _, T = market._, market.transition_no_state
local here = tcp.listener(tcp.address("127.0.0.1", 0))
return market.transition(nil,
  market.subscriber(tcp.listening(here.port, _), { on_presence = function(_s, role)
    io.stderr:write("app: listening on port ", tostring(role.topic.bound_port), "\n") end }),
  market.observe_publishers(tcp.channel(_, here, _), { on_presence = function(_s, role)
    local remote = role.topic.source
    return T(market.spawn(function()
      return market.transition(nil,
        market.subscriber(tcp.channel(remote, here, _), { on_message = function(_s, m)
          if m.subpacket == market.EOF then return T(market.quit()) end
          return T(market.send(tcp.channel(here, remote, "APP: " .. m.subpacket)))
        end }),
        market.publisher(tcp.channel(here, remote, _)))
    end))
  end }))
]]

  it("listens on a port of its own, not on the program's loopback listener", function()
    local script = H.tempfile(APP)
    local server = N.start_cmd(("exec %s --inspect 0 %s"):format(q(N.market_bin()), q(script)))
    local _, iport = N.await_listening(server, "the inspector", 2,
      "market: inspector on http://127%.0%.0%.1:(%d+)/\n")
    local _, aport = N.await_listening(server, "the app", 2)
    local app = capture(("printf 'hi' | nc -N 127.0.0.1 %d"):format(aport), 10)
    local status = parse(get(iport, "/api/snapshot"))
    server.kill()
    os.remove(script)
    assert.are_not.equal(iport, aport)
    assert.equal("APP: hi", app)
    assert.equal(200, status)
  end)
end)

describe("inspect.ps()", function()
  it("gives this program's processes as market inspect prints another's", function()
    local text
    local ok, err = market.ground_vm(function()
      market.perform(market.spawn(function()
        return market.transition(nil, market.subscriber({ "ps-topic", market._ }, "in"))
      end, { name = "listed" }))
      market.pause()
      text = require("market.inspect").ps()
    end)
    assert(ok, err)
    local lines = {}
    for l in text:gmatch("[^\n]+") do lines[#lines + 1] = l end
    assert.equal(4, #lines, text)                   -- the heading, the ground, the boot, "listed"
    assert.truthy(lines[1]:find("^VM%s+PID%s+NAME%s+KIND%s+QUEUED%s+ACTS%s+EPS%s+CONV%s+TOPICS$"), text)
    assert.truthy(lines[2]:find("^ground%s+0%s+ground%s+ground%s"), text)
    assert.truthy(lines[4]:find('^ground +%d+  listed +lua +%d+ +%d+ +1 +0  %["ps%-topic", _%]$'), text)
  end)

  -- Strings went through %q, which escaped C0 controls only, and floats,
  -- cuts and labels through the names' escaping (C0 and DEL): a peer's C1
  -- controls (CSI, OSC) reached the terminal raw, and UTF-8 text and
  -- labels did not read as market.repr writes them.
  it("shows topics as market.repr writes them, every byte but printable ASCII escaped", function()
    local text, topics
    local ok, err = market.ground_vm(function()
      local odd, plain = market.record("odd label\xc2\x9b", "f"), market.record("plain-1", "f")
      topics = { "peer said \xc2\x9b2J\xc2\x9d0;owned\x07", "caf\xc3\xa9", "\xff\xfe", 'q"\\\n\t\r\127',
                 odd(1), plain(-3), 1.5, 0 / 0, math.huge, -math.huge, 2 ^ 70,
                 { market._, market.EOF, true, false, { "x" } } }
      market.perform(market.spawn(function()
        for i, t in ipairs(topics) do market.perform(market.subscriber(t, "in" .. i)) end
        market.pause()
      end, { name = "listed" }))
      market.pause()
      text = require("market.inspect").ps()
    end)
    assert(ok, err)
    local row = text:match("\n(ground +%d+  listed [^\n]*)")
    assert.truthy(row, text)
    assert.falsy(text:find("[^\n\32-\126]"), text)
    for _, t in ipairs(topics) do
      assert.truthy(row:find(" " .. market.repr(t), 1, true), market.repr(t) .. " in " .. row)
    end
    assert.truthy(row:find(' "odd label\\xc2\\x9b"(1) ', 1, true), row)
    assert.truthy(row:find(" plain-1(-3) ", 1, true), row)
  end)
end)

describe("market inspect HOST:PORT", function()
  it("prints the processes like ps", function()
    local server, iport = start_inspected("examples/chat.lua", "0")
    local _, cport = N.await_listening(server, "chat")
    local client = N.start_cmd(("exec timeout 30 nc -d 127.0.0.1 %d"):format(cport))
    local out, status
    for _ = 1, 100 do
      out, status = capture(("%s inspect 127.0.0.1:%d"):format(q(N.market_bin()), iport), 10)
      if out:find("user1", 1, true) then break end
      N.sleep(0.05)
    end
    client.kill()
    server.kill()
    assert.equal(0, status, out)
    local lines = {}
    for l in out:gmatch("[^\n]+") do lines[#lines + 1] = l end
    assert.truthy(lines[1]:find("^VM%s+PID%s+NAME%s+KIND%s+QUEUED%s+ACTS%s+EPS%s+CONV%s+TOPICS$"), lines[1])
    assert.truthy(lines[2]:find("^ground%s+0%s+ground%s+ground%s"), lines[2])
    local user = out:match("\n(ground +%d+  user1 [^\n]*)")
    assert.truthy(user, out)
    -- A chat session: a Lua process with its five endpoints, in
    -- conversation with the others and its connection.
    local kind, queued, acts, eps, conv, topics = user:match("user1 +(%S+) +(%d+) +(%d+) +(%d+) +(%d+)  (.*)$")
    assert.equal("lua", kind)
    assert.equal("0", queued)
    assert.truthy(tonumber(acts) >= 1)
    assert.equal("5", eps)
    assert.truthy(tonumber(conv) >= 3)
    assert.truthy(topics:find("chat-said(\"user1\", _)", 1, true), topics)
    assert.truthy(out:find("\nground +%d+  inspector +lua "))
  end)

  it("lists inspect.MAX_PROCESSES, and says how many more a VM has", function()
    local script = os.tmpname()
    local f = assert(io.open(script, "w"))
    f:write([[
      local market = require "market"
      local boot = function() return market.transition(nil, market.subscriber({ "idle", market._ })) end
      for _ = 1, 1500 do market.perform(market.spawn(boot)) end
      io.stderr:write("spawned\n")]])
    f:close()
    local server, iport = start_inspected(script)
    finally(function() server.kill(); os.remove(script) end)
    assert.is_true(server.wait_for("spawned\n", 20), server.stderr())
    local out, status = capture(("%s inspect 127.0.0.1:%d"):format(q(N.market_bin()), iport), 10)
    assert.equal(0, status, out)
    local rows, more = 0, nil
    for l in out:gmatch("[^\n]+") do
      if l:find("^ground +%d+ ") then rows = rows + 1 end
      more = l:match("^ground +%.%.%.  (%d+) more processes not shown$") or more
    end
    assert.equal(1000, rows)
    local snap = json_get(iport, "/api/snapshot")
    assert.equal(1000, #snap.vm.processes)
    assert.equal(snap.vm.omitted, tonumber(more))
    assert.is_true(snap.vm.omitted > 500)
  end)

  it("reaches an inspector on [::1], naming it [::1] in its Host", function()
    local server, iport = N.await_listening(N.start_cmd(("exec %s --inspect '[::1]:0' -e 'print(1)'")
      :format(q(N.market_bin()))), "the inspector", 2, "market: inspector on http://%[::1%]:(%d+)/\n")
    local out, status = capture(("%s inspect '[::1]:%d'"):format(q(N.market_bin()), iport), 10)
    server.kill()
    assert.equal(0, status, out)
    assert.truthy(out:find("\nground +%d+  inspector +lua "), out)
  end)

  it("says so and exits 1 when nothing answers", function()
    local port = N.free_port()
    local out, status = capture(("%s inspect 127.0.0.1:%d"):format(q(N.market_bin()), port), 10)
    assert.equal(1, status)
    assert.equal(("market inspect: cannot fetch http://127.0.0.1:%d/api/snapshot: connection refused\n"):format(port), out)
  end)

  it("takes a bad address as a usage error: the message and status 2, as --inspect does", function()
    -- (port 0 passed, and the client failed at the connect with status 1)
    for _, addr in ipairs { "99999", "127.0.0.1:", "[::1", "0", "127.0.0.1:0" } do
      local out, status = capture(("%s inspect '%s'"):format(q(N.market_bin()), addr), 10)
      assert.equal(2, status, addr)
      assert.truthy(out:find('^market inspect: bad address "' .. addr:gsub("%p", "%%%0") ..
                             '": [^\n]+ %(try market %-%-help%)\n$'), out)
    end
  end)

  it("says what it does with -h or --help, and a missing address is a usage error", function()
    for _, flag in ipairs { "-h", "--help" } do
      local out, status = capture(("%s inspect %s"):format(q(N.market_bin()), flag), 10)
      assert.equal(0, status, flag)
      assert.truthy(out:find("^usage: market inspect %[HOST:%]PORT\n\nmarket inspect %[HOST:%]PORT " ..
                             "prints the processes of a program run with\n%-%-inspect"), out)
    end
    local out, status = capture(("%s inspect"):format(q(N.market_bin())), 10)
    assert.equal(2, status)
    assert.equal("market inspect: want one [HOST:]PORT (try market --help)\n", out)
  end)

  -- `nc -l` on a free port, answering with the shell command `answer`'s
  -- output; returned once the port listens.
  local function fake(answer)
    local port = N.free_port()
    local nc = N.start_cmd(("%s | exec nc -N -l 127.0.0.1 %d >/dev/null"):format(answer, port))
    local hex = ("%04X"):format(port)
    for _ = 1, 250 do
      if (N.slurp("/proc/net/tcp") or ""):find(":" .. hex .. " 00000000:0000 0A", 1, true) then break end
      N.sleep(0.02)
    end
    return nc, port
  end

  it("gives up after inspect.CLI_TIMEOUT_MS (5 s) when what answers says nothing", function()
    local nc, port = fake("sleep 30")
    local out, status = capture(("%s inspect 127.0.0.1:%d"):format(q(N.market_bin()), port), 20)
    nc.kill()
    assert.equal(1, status, out)
    assert.equal(("market inspect: no answer from http://127.0.0.1:%d/api/snapshot in 5 s\n"):format(port), out)
  end)

  it("says so and exits 1 when a 200 answer is JSON of another shape", function()
    local body = '{"vm":{"processes":[{}]}}'
    local nc, port = fake(("printf 'HTTP/1.1 200 OK\\r\\nContent-Length: %d\\r\\n\\r\\n%%s' %s"):format(#body, q(body)))
    local out, status = capture(("%s inspect 127.0.0.1:%d"):format(q(N.market_bin()), port), 10)
    nc.kill()
    assert.equal(1, status, out)
    assert.truthy(out:find(("^market inspect: 127.0.0.1:%d: not a snapshot: [^\n]*\n$"):format(port)), out)
  end)

  it("says so and exits 1 when a 200 answer nests deeper than any snapshot", function()
    -- Five million "[" ran the reader's Lua stack out: "not a snapshot:
    -- market.inspect:503: stack overflow", a line of market's own.
    local nc, port = fake("{ printf 'HTTP/1.1 200 OK\\r\\nContent-Length: 3000000\\r\\n\\r\\n'; " ..
                          "head -c 3000000 /dev/zero | tr '\\0' '['; }")
    local out, status = capture(("%s inspect 127.0.0.1:%d"):format(q(N.market_bin()), port), 20)
    nc.kill()
    assert.equal(1, status, out)
    assert.equal(("market inspect: 127.0.0.1:%d: not a snapshot: market inspect: bad JSON at byte 50001: " ..
                  "nested deeper than 50000 levels\n"):format(port), out)
  end)

  it("shows what an answer holds with its control bytes escaped: one row a process", function()
    -- A hostile server (or a program's own names) cannot add rows or
    -- drive the terminal.
    local body = '{"vm":{"path":"ground\\u001b[2J","processes":[{"pid":1,"name":"a\\nb","kind":"lua\\r",' ..
      '"queued":0,"endpoints":[{"topic":{"record":"r\\u001b[31m","fields":["x\\ny"]}}]}],"conversations":[]}}'
    local nc, port = fake(("printf 'HTTP/1.1 200 OK\\r\\nContent-Length: %d\\r\\n\\r\\n%%s' %s"):format(#body, q(body)))
    local out, status = capture(("%s inspect 127.0.0.1:%d"):format(q(N.market_bin()), port), 10)
    nc.kill()
    assert.equal(0, status, out)
    local lines = {}
    for l in out:gmatch("[^\n]+") do lines[#lines + 1] = l end
    assert.equal(2, #lines, out)
    assert.falsy(out:find("[\r\27]"), out)
    assert.truthy(lines[2]:find('^ground\\x1b%[~ +1  a\\nb '), lines[2])   -- (the VM column cut)
    assert.truthy(lines[2]:find('lua\\r', 1, true), lines[2])
    assert.truthy(lines[2]:find('"r\\x1b[31m"("x\\ny")', 1, true), lines[2])
  end)

  it("says so and exits 1 when what answers is not an inspector", function()
    local server, port = N.start_server("examples/echo.lua")
    local out, status = capture(("%s inspect 127.0.0.1:%d"):format(q(N.market_bin()), port), 10)
    server.kill()
    assert.equal(1, status)
    assert.truthy(out:find("^market inspect: 127.0.0.1:%d+: bad HTTP response"), out)
  end)
end)

describe("require 'market.inspect'", function()
  local inspect = require "market.inspect"

  -- Straight-line, in a ground VM: starts the inspector on loopback, on a
  -- port the kernel picks, and returns that port once it listens.
  local function start_here()
    market.perform(inspect.start("127.0.0.1:0"),
                   market.subscriber(inspect.listening(market._), "url"))
    local url = market.wait_for(function(e) return e.endpoint == "url" end).role.topic.url
    return tonumber(url:match(":(%d+)/$"))
  end

  it("parses [HOST:]PORT", function()
    assert.same({ "127.0.0.1", 80 }, { inspect.parse_address("80") })
    assert.same({ "0.0.0.0", 0 }, { inspect.parse_address("0.0.0.0:0") })
    assert.same({ "::1", 8080 }, { inspect.parse_address("[::1]:8080") })
    assert.same({ "127.0.0.1", 7 }, { inspect.parse_address(7) })
    local ok, why = inspect.parse_address("70000")
    assert.is_nil(ok)
    assert.truthy(why:find("bad address", 1, true))
    assert.is_nil((inspect.parse_address("::1:80")))
    assert.same({ "localhost", 80 }, { inspect.parse_address("localhost:80") })   -- a client's
    assert.is_nil((inspect.parse_address("localhost:80", true)))
    assert.is_nil((inspect.parse_address("256.0.0.1:80", true)))
    assert.same({ "::1", 0 }, { inspect.parse_address("[::1]:0", true) })
    assert.same({ "0.0.0.0", 0 }, { inspect.parse_address("0.0.0.0:0", true) })
    assert.has_error(function() inspect.start("localhost:0") end,
      'market.inspect.start: bad address "localhost:0": HOST must be a numeric IP address (no name is looked up)')
    assert.has_error(function() inspect.start("x") end,
      'market.inspect.start: bad address "x": want [HOST:]PORT, PORT 0..65535 (0: any)')
    assert.has_error(function() inspect.start("0", 5) end,
      "market.inspect.start: on_listening must be a function, got number")
  end)

  it("starts from a process, tells its URL and publishes it; stops with the program", function()
    local told, published, resp
    N.run(function()
      market.perform(inspect.start("127.0.0.1:0", function(url) told = url end))
      market.perform(market.subscriber(inspect.listening(market._), "url"))
      published = market.wait_for(function(e) return e.endpoint == "url" end).role.topic.url
      local port = tonumber(published:match(":(%d+)/$"))
      local s = N.connect(port)
      assert(N.write_all(s, "GET /api/snapshot HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"))
      resp = N.read_all(s)
      s:close()
      market.stop(0)
    end)
    assert.truthy(told:find("^http://127%.0%.0%.1:%d+/$"), told)
    assert.equal(told, published)
    local status, _, body = parse(resp)
    assert.equal(200, status)
    assert.truthy(find_proc(J.decode(body), named("inspector")))
  end)

  -- The inspector's connections were not bounded: a client (the inspector
  -- may listen beyond loopback) could hold any number open without a word,
  -- each with a descriptor of the program's and a process.
  it("holds at most MAX_CONNECTIONS, and ends one silent for IDLE_TIMEOUT_MS", function()
    local saved = { inspect.MAX_CONNECTIONS, inspect.IDLE_TIMEOUT_MS }
    inspect.MAX_CONNECTIONS, inspect.IDLE_TIMEOUT_MS = 2, 300
    local ends, took = {}, nil
    local ok, err = pcall(N.run, function()
      local port = start_here()
      local t0 = market.now()
      local a, b = N.connect(port), N.connect(port)
      require("market.timer").sleep(50)                -- (both taken before the third)
      local c = N.connect(port)
      for i, s in ipairs { c, a, b } do
        local data, how = N.read_all(s)
        ends[i] = ("%d %s"):format(#data, how)
        s:close()
      end
      took = market.now() - t0
      market.stop(0)
    end)
    inspect.MAX_CONNECTIONS, inspect.IDLE_TIMEOUT_MS = saved[1], saved[2]
    assert(ok, err)
    -- The third is refused at once; the two silent ones end after 300 ms.
    assert.same({ "0 eof", "0 eof", "0 eof" }, ends)
    -- (Around 300 ms: the driver stamps the last byte with the loop's
    -- time, which may lag the clock read here by a few ms.)
    assert.is_true(took >= 250 and took < 5000, took)
  end)

  -- A byte every 100 ms kept the idle timeout from ever running out: a
  -- few such clients held every one of the inspector's connections.
  it("answers 408 to a request not whole within REQUEST_TIMEOUT_MS, though bytes keep coming", function()
    local saved = inspect.REQUEST_TIMEOUT_MS
    inspect.REQUEST_TIMEOUT_MS = 300
    local resp, took
    local ok, err = pcall(N.run, function()
      local s = N.connect(start_here())
      local t0 = market.now()
      assert(N.write_all(s, "GET / HTTP/1.1\r\n"))
      for _ = 1, 2 do                     -- a header trickling in (then the
        require("market.timer").sleep(100) -- idle timeout of 30 s would end it)
        assert(N.write_all(s, "X"))
      end
      resp = N.read_all(s)
      took = market.now() - t0
      s:close()
      market.stop(0)
    end)
    inspect.REQUEST_TIMEOUT_MS = saved
    assert(ok, err)
    local status, _, body = parse(resp)
    assert.equal(408, status)
    assert.equal("408 Request Timeout: no whole request within 300 ms\n", body)
    assert.is_true(took >= 250 and took < 5000, took)
  end)

  -- GET path from the inspector on port, from a process (straight-line).
  local function fetch(port, path)
    local s = N.connect(port)
    assert(N.write_all(s, ("GET %s HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"):format(path)))
    local resp = N.read_all(s)
    s:close()
    local status, _, body = parse(resp)
    assert.equal(200, status, body)
    return J.decode(body)
  end

  -- 64 pages of a program of 300 chat users, each built its own 8.7 MB
  -- snapshot every second: the whole program stood still for up to 28 s
  -- at a time, and took 750 MB.
  it("gives pages and requests within SHARE_MS one snapshot, of at most MAX_CONVERSATIONS", function()
    local saved = { inspect.SHARE_MS, inspect.MAX_CONVERSATIONS }
    inspect.SHARE_MS, inspect.MAX_CONVERSATIONS = 60000, 7
    local a, b, c
    local ok, err = pcall(N.run, function()
      for i = 1, 10 do
        market.perform(market.spawn(function()
          return market.transition(nil, market.publisher({ "room", i, market._ }, "say"),
                                   market.subscriber({ "room", market._, market._ }, "hear"))
        end, { name = "member " .. i }))
      end
      local port = start_here()
      a = fetch(port, "/api/snapshot")
      market.perform(market.spawn(function()
        return market.transition(nil, market.publisher("late", "late"))
      end, { name = "late" }))
      b = fetch(port, "/api/snapshot")
      inspect.SHARE_MS = 0
      c = fetch(port, "/api/snapshot")
      market.stop(0)
    end)
    inspect.SHARE_MS, inspect.MAX_CONVERSATIONS = saved[1], saved[2]
    assert(ok, err)
    assert.same(a, b)
    assert.is_nil(find_proc(b, named("late")))
    assert.truthy(find_proc(c, named("late")))
    assert.equal(7, #c.vm.conversations)
    assert.is_true(c.vm.conversations_omitted >= 100 - 7, c.vm.conversations_omitted)
  end)

  it("keeps inspect.KEEP_EVENTS of a view's events, and closes a view idle for RING_IDLE_MS", function()
    local idle = inspect.RING_IDLE_MS
    inspect.RING_IDLE_MS = 300
    local kept, again
    local ok, err = pcall(N.run, function()
      local timer = require "market.timer"
      market.perform(market.spawn(function()
        return market.transition(nil, market.subscriber({ "poke", market._ }, "poke"))
      end, { name = "poked" }))
      local port = start_here()
      local pid = find_proc(market.snapshot(), named("poked")).pid
      local path = "/api/process/" .. pid
      fetch(port, path)                              -- opens the view
      for i = 1, 150 do market.perform(market.send({ "poke", i })) end
      timer.sleep(50)
      kept = #fetch(port, path).events               -- past the 100 of a default ring
      timer.sleep(1000)                              -- nobody asks: closed
      again = #fetch(port, path).events              -- a fresh view: nothing since
      market.stop(0)
    end)
    inspect.RING_IDLE_MS = idle
    assert(ok, err)
    assert.truthy(kept > 100 and kept <= inspect.KEEP_EVENTS, kept)
    assert.equal(0, again)
  end)

  -- The views' rings took every VM's lines of the pid (and a conversation's
  -- every VM's sends of the topic), and the view kept its own VM's after:
  -- a busy process of the same pid in a nested VM pushed the view's
  -- events out of its ring, and the view showed none, without a word.
  it("records a view's own events though another VM has a busy process of its pid", function()
    local proc, conv, later
    local ok, err = pcall(N.run, function()
      local timer = require "market.timer"
      market.perform(market.spawn(function()
        return market.transition(nil, market.publisher({ "said", market._ }, "out"),
          market.subscriber({ "poke", market._ }, { name = "poke", on_message = function(s, m)
            return market.transition(s, market.send({ "said", m[2] }))
          end }))
      end, { name = "poked" }))
      market.perform(market.spawn(function()
        return market.transition(nil, market.subscriber({ "said", market._ }, "hear"))
      end, { name = "hearer" }))
      local port = start_here()
      local pid = find_proc(market.snapshot(), named("poked")).pid
      local hearer = find_proc(market.snapshot(), named("hearer")).pid
      market.perform(market.nested_vm(function()
        for _ = 1, pid do
          market.perform(market.spawn(function()
            if market.self() ~= pid then return end
            market.perform(market.at_meta_level(market.subscriber("go", "go")))
            market.wait_for(function(e) return e.endpoint == "go" end)
            for j = 1, 300 do market.perform(market.send({ "said", j })) end
            market.pause()
          end, { name = "noisy" }))
        end
        market.pause()
      end, { name = "box" }))
      timer.sleep(50)
      local box = find_proc(market.snapshot(), named("box"))
      assert.truthy(find_proc(box, function(p) return p.pid == pid and p.name == "noisy" end))
      local ppath = "/api/process/" .. pid
      local cpath = ("/api/conversation/%d/out/%d/hear?vm=ground"):format(pid, hearer)
      fetch(port, ppath)                          -- opens the views
      fetch(port, cpath)
      for i = 1, 10 do market.perform(market.send({ "poke", i })) end
      timer.sleep(50)
      market.perform(market.send("go"))           -- after: pushes them out of a shared ring
      timer.sleep(50)
      proc, conv = fetch(port, ppath), fetch(port, cpath)
      for i = 1, 250 do market.perform(market.send({ "poke", i })) end
      timer.sleep(50)
      later = fetch(port, ppath)
      market.stop(0)
    end)
    assert(ok, err)
    local sends = {}
    for _, e in ipairs(proc.events) do
      assert.same({ "ground", "poked" }, { e.vm, e.name })
      if e.kind == "send" then sends[#sends + 1] = e.message[2] end
    end
    assert.same({ 1, 2, 3, 4, 5, 6, 7, 8, 9, 10 }, sends)
    assert.equal(0, proc.dropped)
    sends = {}
    for _, e in ipairs(conv.events) do
      assert.same({ "ground", "poked", "send" }, { e.vm, e.name, e.kind })
      sends[#sends + 1] = e.message[2]
    end
    assert.same({ 1, 2, 3, 4, 5, 6, 7, 8, 9, 10 }, sends)
    assert.equal(0, conv.dropped)
    -- 500 lines between two looks: the ring's 200 kept, the others told.
    assert.equal(inspect.KEEP_EVENTS, #later.events)
    assert.equal(300, later.dropped)
  end)

  it("gives each server on port 0 a port of its own", function()
    local urls = {}
    N.run(function()
      for _ = 1, 2 do
        market.perform(inspect.start("127.0.0.1:0", function(url) urls[#urls + 1] = url end))
      end
      market.perform(market.subscriber(inspect.listening(market._), "url"))
      market.wait_for(function(e) return e.endpoint == "url" end)
      market.wait_for(function(e) return e.endpoint == "url" end)
      market.stop(0)
    end)
    assert.equal(2, #urls)
    assert.truthy(urls[1]:find("^http://127%.0%.0%.1:%d+/$"), urls[1])
    assert.are_not.equal(urls[1], urls[2])
  end)
end)

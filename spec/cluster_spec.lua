-- The cluster driver over NATS (docs/cluster.md, DESIGN §7): nats-server
-- on loopback, market nodes as separate OS processes.
local S = require "spec.support.nats"
local H = require "spec.support.helpers"

if not S.available() then
  describe("market.cluster", function()
    pending("nats-server is not installed (apt-get install nats-server): cluster specs skipped")
  end)
  return
end

local function sys()
  require "market.udp"
  return package.loaded["market.sys"]
end

-- next(conn, secs): conn's next event, waiting at most secs.
local function next_event(conn, secs)
  local ev
  S.wait(function()
    ev = table.pack(conn:next())
    return ev[1] ~= nil
  end, secs or 10)
  return table.unpack(ev, 1, ev.n)
end

-- dial(urls, name [, timeout_ms [, tls]]): a connection once connected, or nil,
-- why (nats_connect returns at once; the first connect ends with the
-- event "connected" or "failed", why).
local function dial(urls, name, timeout, tls)
  local c, err = sys().nats_connect(urls, name, timeout, tls)
  if not c then return nil, err end
  local ev, why = next_event(c, 15)
  if ev == "connected" then return c end
  c:close()
  return nil, ev == "failed" and why or ("no first connection: " .. tostring(ev))
end


-- Two chat users, A on port pa and B on port pb: B joins a second after
-- A was greeted (A's presence crosses to B's node meanwhile) and says "hi
-- A" once greeted; A says "hello all" once B has joined, and each leaves
-- once it has heard the other.  What each saw, A's then "|" then B's.
local function two_chatters(pa, pb)
  local f = assert(io.popen(("timeout 30 sh -c %s 2>&1"):format(H.quote(([[
    %s
    A=$(mktemp); B=$(mktemp)
    (heard $A joined; printf 'hello all\n'; heard $A left) | timeout 20 nc -N 127.0.0.1 %d > $A &
    heard $A welcome; sleep 1
    (heard $B welcome; printf 'hi A\n'; heard $B 'hello all') | timeout 20 nc -N 127.0.0.1 %d > $B
    wait
    cat $A; echo '|'; cat $B; rm -f $A $B]]):format(H.HEARD, pa, pb)))))
  local out = f:read("a")
  f:close()
  return out
end

describe("the NATS connection (market.sys, drivers/lcluster.c)", function()
  after_each(S.cleanup)

  it("publishes and delivers through a queue, byte strings intact", function()
    local srv = S.server()
    local a = assert(dial({ srv.url }, "a"))
    local b = assert(dial({ srv.url }, "b"))
    assert.equal("integer", math.type(b:fd()))
    local sid = assert(b:subscribe("spec.x"))
    assert.is_nil(b:next())                -- nothing yet
    S.sleep(0.2)                           -- the subscription reaches the server
    local t0 = sys().cluster_clock()
    assert.is_true(a:publish("spec.x", "one\0two"))
    assert.is_true(a:publish("spec.y", "not subscribed"))
    assert.is_true(a:publish("spec.x", ""))
    S.wait(function() return b:waiting() ~= nil end, 10)
    assert.is_number(b:waiting())          -- when the oldest waiting arrived (ms)
    local got = { next_event(b) }
    -- The time it reached the queue, in cluster_clock()'s milliseconds.
    assert.is_true(got[4] >= t0 and got[4] <= sys().cluster_clock(), tostring(got[4]))
    assert.same({ "message", "spec.x", "one\0two" }, { got[1], got[2], got[3] })
    got = { next_event(b) }
    assert.same({ "message", "spec.x", "" }, { got[1], got[2], got[3] })
    assert.is_nil(b:waiting())             -- nothing waits now
    b:unsubscribe(sid)
    assert.has_error(function() b:unsubscribe(sid) end)
    a:close()
    b:close()
    b:close()                              -- twice is fine
    assert.has_error(function() b:publish("spec.x", "") end, "the NATS connection is closed")
  end)

  it("speaks TLS to a server that asks for it: its CA trusted, its name checked", function()
    local certs = S.certificates()
    local srv = S.server({ tls = certs })
    assert.truthy(srv.url:match("^tls://localhost:%d+$"), srv.url)
    local c = assert(dial({ srv.url }, "c", 5000, { ca = certs.ca, host = "localhost" }))
    c:close()
    -- The name the certificate must have, the CA it must come from.
    local _, err = dial({ srv.url }, "d", 5000, { ca = certs.ca, host = "elsewhere.example" })
    assert.matches("hostname mismatch", err)
    _, err = dial({ srv.url }, "e", 5000)              -- the system's CAs: not this one
    assert.matches("unable to get local issuer certificate", err)
    _, err = dial({ "nats://127.0.0.1:" .. srv.port }, "f", 5000)   -- the server asks for TLS
    assert.matches("unable to get local issuer certificate", err)
    c = assert(dial({ srv.url }, "g", 5000, { verify = false }))
    c:close()
  end)

  it("says nil and why when no server answers", function()
    local srv = S.server()
    local port = srv.port
    S.stop(srv.pid)
    local c, err = dial({ "nats://127.0.0.1:" .. port }, "c", 500)
    assert.is_nil(c)
    assert.matches("no server", err)
  end)

  it("waits for the servers given at most its timeout in all", function()
    -- Two servers that take the connection and say nothing (stopped):
    -- libnats waits the timeout for each in turn, and the loop with it.
    local s1, s2 = S.server(), S.server()
    os.execute(("kill -STOP %d %d"):format(s1.pid, s2.pid))
    local t0 = S.clock()
    local c, err = dial({ s1.url, s2.url }, "c", 1000)
    local took = S.clock() - t0
    assert.is_nil(c)
    assert.matches("timeout", err)
    assert(took < 1.6, ("waited %.1f s"):format(took))
  end)

  it("keeps the counters the driver and its forwarder share (cluster.stats)", function()
    local s = sys().cluster_stats()
    assert.same({ 0, 0, 0, 0, 0 }, { s.sent, s.received, s.delivered, s.dropped, s.malformed })
    s.sent = s.sent + 2
    assert.equal(2, s.sent)
    assert.is_nil(s.other)
    assert.has_error(function() s.other = 1 end, "cluster.stats has no field 'other'")
    assert.has_error(function() s.sent = "many" end)
    assert.equal(2, s.sent)
  end)

  it("lets lua5.4 exit with connections open (libnats calls back late)", function()
    -- libnats's threads finish with a connection after the Lua state
    -- closed it, when lua5.4 has unloaded market.so: one run in a dozen
    -- or so crashed there before market.so pinned itself.
    local srv = S.server()
    local code = ([[
require "market.udp"
local sys = package.loaded["market.sys"]
local conns = {}
local function connected(c)
  for _ = 1, 1000 do
    local ev = c:next()
    if ev == "connected" then return c end
    assert(ev == nil, ev)
    os.execute("sleep 0.01")
  end
  error("no first connection")
end
for i = 1, 5 do
  conns[i] = connected(assert(sys.nats_connect({ URL }, "spec")))
  assert(conns[i]:subscribe("spec.a"))
  assert(conns[i]:subscribe("spec.b"))
end
conns[1]:close()
-- Two whose first connect (a thread's) may still run at the exit, one
-- of them closed already: the thread closes what it makes.
conns[6] = assert(sys.nats_connect({ URL }, "late"))
assert(sys.nats_connect({ URL }, "late")):close()]]):gsub("URL", ("%q"):format(srv.url))
    local failed = {}
    for i = 1, 25 do
      -- The market.so this busted loaded (under spec/run's ASan suite,
      -- with its preloads inherited).
      local status, _, err = H.sh(("LUA_CPATH=%s timeout 20 lua5.4 -e %s"):format(
        H.quote(package.cpath), H.quote(code)))
      if status ~= 0 then failed[#failed + 1] = ("run %d: status %d %s"):format(i, status, err) end
    end
    assert.same({}, failed)
  end)

  it("reports disconnection and reconnection, and resubscribes", function()
    local srv = S.server()
    local a = assert(dial({ srv.url }, "a"))
    local b = assert(dial({ srv.url }, "b"))
    assert(b:subscribe("spec.x"))
    S.stop(srv.pid)
    assert.equal("disconnected", (next_event(b)))
    local again = S.server({ port = srv.port })
    assert.equal("reconnected", (next_event(b, 15)))
    assert.equal("disconnected", (next_event(a)))
    assert.equal("reconnected", (next_event(a, 15)))
    S.sleep(0.2)
    assert.is_true(a:publish("spec.x", "after"))
    local ev, subject, data = next_event(b)
    assert.same({ "message", "spec.x", "after" }, { ev, subject, data })
    b:close()
    a:close()
    S.stop(again.pid)
  end)
end)

-- What every node's script starts with: log(fmt, ...) prints a line, and
-- logging(who) is handlers that print each event as
--   "<who> presence <orientation>/<interest> <topic>"
--   "<who> absence <orientation>/<interest> <topic> <reason>"
--   "<who> message <body>".
local PRELUDE = [[
local market = require "market"
local cluster = require "market.cluster"
local _, T, repr = market._, cluster.topic, market.repr
local function log(fmt, ...) print(string.format(fmt, ...)) end
local function role(r) return r.orientation .. "/" .. r.interest .. " " .. repr(r.topic) end
local function logging(who, extra)
  local h = {
    name = who,
    on_presence = function(_, r) log("%s presence %s", who, role(r)) end,
    on_absence = function(_, r, why) log("%s absence %s %s", who, role(r), tostring(why)) end,
    on_message = function(_, m) log("%s message %s", who, repr(m)) end,
  }
  for k, v in pairs(extra or {}) do h[k] = v end
  return h
end
]]

-- nodes(srv, {name = script, ...}): start each as a node of cluster "spec".
local function nodes(srv, scripts)
  local out = {}
  for name, script in pairs(scripts) do
    out[name] = S.node(PRELUDE .. script, { url = srv.url, name = name })
  end
  return out
end

-- by_hand(srv): node a, whose subscriber of p(_) logs as "a", and z, a
-- connection of this spec's that speaks docs/cluster.md by hand,
-- subscribed to everything a may say to it.
local function by_hand(srv)
  local a = S.node(PRELUDE .. [[market.perform(market.subscriber(T({"p", _}), logging("a")))]],
                   { url = srv.url, name = "a" })
  local z = assert(dial({ srv.url }, "z"))
  assert(z:subscribe("market.spec.node.z"))
  assert(z:subscribe("market.spec.all"))
  return a, z
end

-- Node a with its driver given `limits` (Lua: "max_roles = 3"), a raw
-- connection z beside it, and all(...): z publishes [2, ...] to every
-- node.  Returns a, z and all once a has said something.
local function limited(limits)
  local market = require "market"
  local srv = S.server()
  local a = S.node(PRELUDE .. ([[
market.perform(cluster.driver{ url = %q, cluster = "spec", node = "a", %s })
market.perform(market.subscriber(T({"p", _}), logging("a")))]]):format(srv.url, limits),
                   { url = srv.url, name = "a", own_driver = true })
  local z = assert(dial({ srv.url }, "z"))
  assert(z:subscribe("market.spec.all"))
  assert(S.wait(function() return z:next() == "message" end, 10), "nothing from a")
  return a, z, function(...) assert(z:publish("market.spec.all", market.to_cbor({ 2, ... }))) end
end

-- A connection of this spec's that is node z of cluster "spec" by hand
-- (docs/cluster.md): it hears node a's hello, says its own, and waits for
-- a's answer to it, so that a takes what it sends as z's.  Returns it and
-- what batches are made of by hand: the wrapper, the envelope [2, "send",
-- "z", 7] past its array head, and item(x), a term's encoding past the
-- wrapper.
local function as_z(srv)
  local market = require "market"
  local c = assert(dial({ srv.url }, "spec"))
  local function heard(subject)
    assert(S.wait(function()
      local ev, subj = c:next()
      return ev == "message" and subj == subject
    end, 10), "nothing from a on " .. subject)
  end
  assert(c:subscribe("market.spec.all"))
  assert(c:subscribe("market.spec.node.z"))
  heard("market.spec.all")
  assert.is_true(c:publish("market.spec.all", market.to_cbor({ 2, "hello", "z", 7, 0, {} })))
  heard("market.spec.node.z")
  return c, market.to_cbor(nil):sub(1, 7), market.to_cbor({ 2, "send", "z", 7 }):sub(9),
         function(x) return market.to_cbor(x):sub(8) end
end

-- A publisher participant role p(x) as the wire has it.
local function pub(id, x) return { id, "publisher", "participant", { "p", x } } end

-- holed(kind, ...): the message [2, kind, ...] with the sequence [nil, 5]
-- (a hole, as no Lua term has one) in place of the one list ["HOLE"] in
-- it: 82 f6 05 for 81 44 "HOLE".
local function holed(...)
  local market = require "market"
  local bytes = market.to_cbor({ 2, ... })
  local i = assert(bytes:find("\x81\x44HOLE", 1, true))
  return bytes:sub(1, i - 1) .. "\x82\xf6\x05" .. bytes:sub(i + 6)
end

describe("market.cluster", function()
  after_each(S.cleanup)

  it("gives presence across nodes with the topic refined to the intersection", function()
    local srv = S.server()
    local n = nodes(srv, {
      a = [[market.perform(market.subscriber(T({"greet", _, "a"}), logging("sub")))]],
      b = [[market.perform(market.publisher(T({"greet", "b", _}), logging("pub")))]],
      c = [[market.perform(market.publisher(T({"other"}), logging("other")))]],
    })
    n.a.wait('sub presence publisher/participant market-cluster(["greet", "b", "a"])')
    n.b.wait('pub presence subscriber/participant market-cluster(["greet", "b", "a"])')
    S.sleep(1)           -- c's role never intersects: nobody sees it, it sees nobody
    assert.equal(1, n.a.count("presence"))
    assert.equal(1, n.b.count("presence"))
    assert.equal(0, n.c.count("presence"))
  end)

  it("fails a second driver of one cluster in a VM, saying which runs, the first unmoved", function()
    -- A script that starts its own driver, run with --cluster on the same
    -- cluster: the two took each other's stand-ins for roles of their own
    -- and announced them to each other without end.
    local srv = S.server()
    local n = nodes(srv, {
      a = ([[
local pid = market.perform(cluster.driver{ url = URL, cluster = "spec", node = "a-again" })
market.perform(market.monitor(pid, function(_, reason) log("second driver: %s", tostring(reason)) end))
market.perform(market.subscriber(T({"greet", _}), logging("sub")))]]):gsub("URL", ("%q"):format(srv.url)),
      b = [[market.perform(market.publisher(T({"greet", "b"}), logging("pub")))]],
    })
    n.a.wait("second driver: a driver of cluster spec already runs in this VM (pid ")
    assert.truthy(n.a.has("one driver per cluster and VM"), n.a.out())
    n.a.wait('sub presence publisher/participant market-cluster(["greet", "b"])')
    n.b.wait('pub presence subscriber/participant market-cluster(["greet", "b"])')
    S.sleep(1)
    assert.equal(1, n.a.count("sub presence"))
    assert.equal(1, n.b.count("pub presence"))
    assert.is_true(S.alive(n.a.pid))
  end)

  it("tells a node that joins late the roles still held, after many have gone", function()
    -- The driver keeps its roles' ids in the order of their adds, the
    -- gone ones taken out once they are half of them: a hello to a node
    -- that joins takes the rest from there, in order.  a's roles go once
    -- it sees b's, so that its driver has joined and announced them.
    local srv = S.server()
    local n = nodes(srv, {
      a = [[
for k = 1, 10 do market.perform(market.publisher(T({"r", k}), "r" .. k)) end
market.perform(market.subscriber(T({"go"}), "go"))
market.wait_for(function(e) return e.endpoint == "go" and e.type == "presence" end)
for k = 1, 8 do market.perform(market.delete_endpoint("r" .. k)) end
for k = 11, 12 do market.perform(market.publisher(T({"r", k}), "r" .. k)) end
log("held")]],
      b = [[market.perform(market.publisher(T({"go"}), logging("go")))]],
    })
    n.a.wait("held")
    S.sleep(0.5)
    local c = nodes(srv, { c = [[market.perform(market.subscriber(T({"r", _}), logging("sub")))]] }).c
    for _, k in ipairs { 9, 10, 11, 12 } do
      c.wait(('sub presence publisher/participant market-cluster(["r", %d])'):format(k))
    end
    S.sleep(1)
    assert.equal(4, c.count("sub presence"), c.out())
  end)

  it("runs over TLS: --cluster tls://, a driver's tls = tcp.tls{...}, and says why it cannot", function()
    local certs = S.certificates()
    local srv = S.server({ tls = certs })
    -- a: --cluster tls://localhost:PORT/spec, the CA by SSL_CERT_FILE (the
    -- system's place for it, as OpenSSL reads it); b: its own driver, the
    -- CA in its configuration.
    local a = S.node(PRELUDE .. [[market.perform(market.subscriber(T({"greet", _}), logging("sub")))]],
                     { url = srv.url, name = "a", env = { SSL_CERT_FILE = certs.ca } })
    local b = S.node(PRELUDE .. ([[
local tcp = require "market.tcp"
market.perform(cluster.driver{ url = %q, cluster = "spec", node = "b",
                               tls = assert(tcp.tls{ ca = %q }) })
market.perform(market.publisher(T({"greet", "b"}), logging("pub")))]]):format(srv.url, certs.ca),
                     { url = srv.url, name = "b", own_driver = true })
    a.wait('sub presence publisher/participant market-cluster(["greet", "b"])', 15)
    b.wait('pub presence subscriber/participant market-cluster(["greet", "b"])', 15)
    -- c trusts only the system's CAs: the driver fails, the program ends (1).
    local c = S.node(PRELUDE, { url = srv.url, name = "c" })
    assert(S.wait(function() return not S.alive(c.pid) end, 15), "c did not end")
    assert.matches("market: %-%-cluster: cannot connect to NATS at tls://localhost:%d+: " ..
                   "SSL handshake error: 20:unable to get local issuer certificate", c.out())
    -- An address in the URL is checked against the certificate's (it was
    -- not checked at all): d's server has none, e's has 127.0.0.1.
    local named = S.certificates("DNS:localhost")
    local by_name = S.server({ tls = named })
    local d = S.node(PRELUDE, { url = "tls://127.0.0.1:" .. by_name.port, name = "d",
                                env = { SSL_CERT_FILE = named.ca } })
    assert(S.wait(function() return not S.alive(d.pid) end, 15), "d did not end")
    assert.matches("cannot connect to NATS at tls://127%.0%.0%.1:%d+: SSL handshake error: " ..
                   "64:IP address mismatch", d.out())
    local e = S.node(PRELUDE .. [[market.perform(market.subscriber(T({"greet", _}), logging("sub")))]],
                     { url = "tls://127.0.0.1:" .. srv.port, name = "e", env = { SSL_CERT_FILE = certs.ca } })
    e.wait('sub presence publisher/participant market-cluster(["greet", "b"])', 15)
  end)

  -- libnats connects on a thread of its own: a program that exited while
  -- that thread was in the TLS handshake met OpenSSL's cleanup at exit in
  -- it (a segfault, status 139, in about one exit of four).
  it("exits with its own status while its TLS connection is being made", function()
    local certs = S.certificates()
    local srv = S.server({ tls = certs })
    local path = H.tempfile(([[
local market = require "market"
local cluster = require "market.cluster"
local tcp = require "market.tcp"
market.perform(cluster.driver{ url = %q, node = "x", tls = assert(tcp.tls{ ca = %q }) })
market.perform(market.exit(3))]]):format(srv.url, certs.ca))
    local bad = {}
    for _ = 1, 40 do
      local status, _, err = H.sh(H.quote(H.market_bin()) .. " " .. path)
      if status ~= 3 then bad[#bad + 1] = ("status %s: %s"):format(status, err) end
    end
    assert.same({}, bad)
  end)

  it("carries messages and feedback both ways, once to each node, never back", function()
    local srv = S.server()
    local chat = [[
local me = "%s"
local subs = 0
market.perform(
  market.publisher(T({"chat", me, _}), "speak"),
  market.subscriber(T({"chat", _, _}), logging("hear")),
  market.observe_subscribers(T({"chat", _, _}), { name = "watch", on_presence = function()
    subs = subs + 1
    if subs == 3 then return market.transition_no_state(market.send(T({"chat", me, "hi"}))) end
  end }))
]]
    local n = nodes(srv, {
      a = chat:format("a") .. [[market.perform(market.publisher(T({"fb", _}), logging("fb")))]],
      b = chat:format("b") .. [[
market.perform(market.observe_publishers(T({"fb", _}), { on_presence = function()
  return market.transition_no_state(market.feedback(T({"fb", "from b"})))
end }))]],
      c = chat:format("c") .. [[
local heard = 0         -- (an observer: the others count participants)
market.perform(market.observe_publishers(T({"chat", _, _}), { on_message = function()
  heard = heard + 1
  if heard == 3 then
    return market.transition_no_state(market.subscriber(market.ground.alarm(market.now() + 1500),
      { on_message = function() log("delivered %d", cluster.inspect().delivered) end }))
  end
end }))]],
    })
    for _, name in ipairs { "a", "b", "c" } do
      for _, from in ipairs { "a", "b", "c" } do
        n[name].wait(('hear message market-cluster(["chat", "%s", "hi"])'):format(from))
      end
    end
    n.a.wait('fb message market-cluster(["fb", "from b"])')
    n.c.wait("delivered")
    for _, name in ipairs { "a", "b", "c" } do
      assert.equal(3, n[name].count("hear message"), n[name].out())
    end
    assert.equal(1, n.a.count("fb message"))
    -- c has no publisher of fb(_): the feedback was not sent to it.
    assert.truthy(n.c.has("delivered 2"), n.c.out())
  end)

  it("follows the visibility rules of one VM: observers and everything", function()
    local srv = S.server()
    local ep = {
      P = [[market.publisher(T({"vis", 1}), logging("P"))]],
      S = [[market.subscriber(T({"vis", _}), logging("S"))]],
      OP = [[market.observe_publishers(T({"vis", _}), logging("OP"))]],
      EP = [[market.observe_publishers_everything(T({"vis", _}), logging("EP"))]],
      OS = [[market.observe_subscribers(T({"vis", _}), logging("OS"))]],
      ES = [[market.observe_subscribers_everything(T({"vis", _}), logging("ES"))]],
    }
    local function script(names)
      local list = {}
      for _, name in ipairs(names) do list[#list + 1] = ep[name] end
      return "market.perform(" .. table.concat(list, ",\n") .. ")\n"
    end
    -- The same six endpoints in one VM (a node alone in its own cluster)
    -- and spread over three nodes.
    local one = S.node(PRELUDE .. script { "P", "S", "OP", "EP", "OS", "ES" },
                       { url = srv.url, name = "one", cluster = "ref" })
    local n = nodes(srv, { a = script { "P", "OS" }, b = script { "S", "EP" },
                           c = script { "OP", "ES" } })
    local function lines(text)
      local t = {}
      for l in text:gmatch("[^\n]+") do t[#t + 1] = l end
      table.sort(t)
      return t
    end
    local function spread()
      return lines(n.a.out() .. n.b.out() .. n.c.out())
    end
    -- Participants and observers see participants; everything sees all
    -- (and the cluster driver's own two observers, in one VM as well).
    local expected = lines(table.concat({
      'EP presence publisher/everything market-cluster(["vis", _])',
      'EP presence publisher/everything market-cluster(["vis", _])',
      'EP presence publisher/observer market-cluster(["vis", _])',
      'EP presence publisher/participant market-cluster(["vis", 1])',
      'ES presence subscriber/everything market-cluster(["vis", _])',
      'ES presence subscriber/everything market-cluster(["vis", _])',
      'ES presence subscriber/observer market-cluster(["vis", _])',
      'ES presence subscriber/participant market-cluster(["vis", _])',
      'OP presence publisher/participant market-cluster(["vis", 1])',
      'OS presence subscriber/participant market-cluster(["vis", _])',
      'P presence subscriber/participant market-cluster(["vis", 1])',
      'S presence publisher/participant market-cluster(["vis", 1])',
    }, "\n"))
    assert(S.wait(function() return #lines(one.out()) >= #expected end, 10), one.out())
    assert(S.wait(function() return #spread() >= #expected end, 10))
    S.sleep(1)             -- nothing more comes
    assert.same(expected, lines(one.out()))
    assert.same(expected, spread())
  end)

  -- The wildcard as a message, send(market._), reaches the driver's own
  -- subscription to cluster.leave's record: the node left its cluster.
  it("keeps a node in its cluster when one of its processes sends the wildcard", function()
    local srv = S.server()
    local n = nodes(srv, {
      a = [[market.perform(market.subscriber(T({"w", _}), logging("w")))]],
      b = [[
local timer = require "market.timer"
market.perform(market.publisher(T({"w", "b"})))
timer.sleep(300)
market.perform(market.send(_), market.feedback(_))
timer.sleep(300)
market.perform(market.publisher(T({"w", "after"})))]],
    })
    n.a.wait('w presence publisher/participant market-cluster(["w", "b"])')
    n.a.wait('w presence publisher/participant market-cluster(["w", "after"])')
    assert.equal(0, n.a.count("w absence"))
  end)

  it("publishes a heartbeat per heartbeat_ms, whatever wildcards its processes send", function()
    -- send(market._) reached the driver's alarm subscription: each one
    -- published a heartbeat at once (and checked for lost nodes).
    local market = require "market"
    local srv = S.server()
    local z = assert(dial({ srv.url }, "z"))
    assert(z:subscribe("market.spec.all"))
    local a = S.node(PRELUDE .. [[
market.perform(market.spawn(function()
  for _i = 1, 100 do
    market.yield(10)
    market.perform(market.send(_))
  end
  log("a done")
end))]], { url = srv.url, name = "a" })
    local beats = 0
    assert(S.wait(function()
      repeat
        local ev, _, data = z:next()
        local m = ev == "message" and market.from_cbor(data)
        if m and m[2] == "heartbeat" and m[3] == "a" then beats = beats + 1 end
      until not ev
      return a.has("a done")
    end, 20), a.out())
    z:close()
    -- 100 wildcards over a second or more: a few heartbeats (one per
    -- 500 ms), not one each.
    assert(beats < 10, ("%d heartbeats"):format(beats))
  end)

  it("makes a node that stops absent as left, one killed as lost within 3 s", function()
    local srv = S.server()
    local n = nodes(srv, {
      a = [[
market.perform(market.subscriber(T({"w", _}), logging("w", {
  on_presence = function(_, r)
    log("w presence %s", role(r))
    if r.topic.topic[2] == "crash" then return market.transition_no_state(market.send(T({"boom"}))) end
  end })))]],
      b = [[
market.perform(market.publisher(T({"w", "b"})),
  market.spawn(function()
    return market.transition(nil, market.publisher(T({"w", "crash"})),
      market.subscriber(T({"boom"}), { on_message = function() error("boom!", 0) end }))
  end))]],
      c = [[market.perform(market.publisher(T({"w", "c"})))]],
    })
    n.a.wait('w presence publisher/participant market-cluster(["w", "b"])')
    n.a.wait('w presence publisher/participant market-cluster(["w", "c"])')
    -- A process that fails: its peers elsewhere see its error as the reason.
    n.a.wait('w absence publisher/participant market-cluster(["w", "crash"]) boom!')
    S.stop(n.b.pid, "TERM")
    n.a.wait('w absence publisher/participant market-cluster(["w", "b"]) cluster: node b left')
    local t0 = S.clock()
    S.stop(n.c.pid, "KILL")
    n.a.wait('w absence publisher/participant market-cluster(["w", "c"]) cluster: node c lost (no heartbeat for 2000 ms)')
    local took = S.clock() - t0
    -- The driver's bound is 2.5 s (lost after 2000 ms, checked every
    -- 500 ms); the rest is slack for a busy machine.
    assert(took < 5, ("the loss was seen after %.1f s"):format(took))
    assert.equal(3, n.a.count("w presence"))
    assert.equal(3, n.a.count("w absence"))
  end)

  it("keeps within NATS's max_payload: snapshots in parts, batches split, too large said", function()
    -- A server that takes at most 4 KiB a message.  a holds 150 roles
    -- (about 11 KB: its snapshot for b goes in parts) and one role
    -- larger than a message (never announced, said so); b sends a's
    -- subscriber 100 topics of 110 bytes in one activation (batches
    -- split below 4 KiB) and one larger than a message (dropped, said
    -- so).  Then a adds a role: b, in step, sees it.
    local srv = S.server({ max_payload = 4096 })
    local a = S.node(PRELUDE .. [[
local eps = {}
for i = 1, 150 do eps[i] = market.publisher(T({"p", i, ("x"):rep(60)})) end
eps[#eps + 1] = market.publisher(T({"p", 0, ("y"):rep(5000)}))
local heard = 0
eps[#eps + 1] = market.subscriber(T({"big", _}), { on_message = function(_, m)
  heard = heard + 1
  if m.topic[2] ~= heard .. ("w"):rep(100) then log("out of order at %d", heard) end
  if heard == 100 then
    log("a heard 100")
    return market.transition_no_state(market.publisher(T({"p", 999, "late"})))
  end
end })
market.perform(table.unpack(eps))
log("a ready")
]], { url = srv.url, name = "a" })
    a.wait("a ready")
    local b = S.node(PRELUDE .. [[
local seen = 0
market.perform(market.observe_publishers(T({"p", _, _}), { on_presence = function(_, r)
  if r.topic.topic[2] == 999 then log("b saw late") return end
  seen = seen + 1
  if seen < 150 then return end
  log("b saw %d", seen)
  local sends = { market.send(T({"big", ("v"):rep(5000)})) }
  for i = 1, 100 do sends[#sends + 1] = market.send(T({"big", i .. ("w"):rep(100)})) end
  return market.transition_no_state(table.unpack(sends))
end }))
]], { url = srv.url, name = "b" })
    b.wait("b saw 150")
    a.wait("a heard 100")
    b.wait("b saw late")
    b.wait("1 sends or feedback over NATS's max_payload (4096 bytes) not sent to other nodes")
    assert.is_false(b.has("b saw 151"), b.out())
    assert.is_false(a.has("out of order"), a.out())
    assert.truthy(a.has("over NATS's max_payload (4096): other nodes do not see it"), a.out())
    assert.is_false(b.has("yyyy"), b.out())
  end)

  it("carries a reason larger than NATS's max_payload cut short, not lost", function()
    -- A del too large for one message was not published: the others saw
    -- a gap, and the role went with the snapshot that repaired it, its
    -- reason lost (nil).
    local srv = S.server({ max_payload = 4096 })
    local n = nodes(srv, {
      a = [[market.perform(market.subscriber(T({"r", _}), logging("a")))]],
      b = [[market.perform(market.publisher(T({"r", 1}), { on_presence = function()
  error(("x"):rep(5000), 0)
end }))]],
    })
    n.a.wait('a presence publisher/participant market-cluster(["r", 1])')
    n.a.wait('a absence publisher/participant market-cluster(["r", 1])')
    assert.truthy(n.a.has('a absence publisher/participant market-cluster(["r", 1]) xxxxxxxxxx'), n.a.out())
    assert.truthy(n.a.has("xxx...\n"), n.a.out())
    assert.is_false(n.b.has("cannot publish"), n.b.out())
  end)

  it("keeps roles and reasons past the term limits inside a message out, not failing", function()
    -- A legal topic or reason may pass the term limits once a message
    -- wraps it, and to_cbor raised: the driver failed and the node
    -- exited 1.  a runs with small limits (50 levels, 1000 nodes): a
    -- topic as deep as a term may be (its hello nests it two levels
    -- deeper), one as large (its add is larger), 150 roles (more nodes
    -- than a hello may have: it goes in parts), and a role deleted with a
    -- reason as deep as a term may be (it goes as its text).  b comes
    -- once a has announced its roles, for a snapshot of them all.
    local market = require "market"
    local srv = S.server()
    local z = assert(dial({ srv.url }, "z"))
    assert(z:subscribe("market.spec.all"))
    local a = S.node(PRELUDE .. [[
local deep = "leaf"
while pcall(T, { deep }) do deep = { deep } end
local big = {}
while pcall(T, big) do big[#big + 1] = 0 end
big[#big] = nil
local reason = "why"
while market.is_term({ reason }) do reason = { reason } end
local eps = { market.subscriber(T(deep)), market.subscriber(T(big)),
  market.publisher(T({"r", 1}), { name = "r1", on_presence = function()
    log("a dropped %d", cluster.inspect().dropped)
    return market.transition_no_state(market.delete_endpoint("r1", reason))
  end }) }
for i = 1, 150 do eps[#eps + 1] = market.publisher(T({"m", i})) end
market.perform(table.unpack(eps))
]], { url = srv.url, name = "a", options = "--max-term-depth 50 --max-term-size 1000" })
    assert(S.wait(function()
      repeat                                                  -- (all that waits)
        local ev, _, data = z:next()
        local m = ev == "message" and market.from_cbor(data)
        if m and m[2] == "add" and m[9][1] == "m" and m[9][2] == 150 then return true end
      until not ev
    end, 10), "a did not announce its roles: " .. a.out())
    z:close()
    local b = S.node(PRELUDE .. [[
local seen = 0
market.perform(market.subscriber(T({"r", _}), logging("b")),
  market.observe_subscribers(T(_), logging("o")),
  market.observe_publishers(T({"m", _}), { on_presence = function()
    seen = seen + 1
    if seen == 150 then log("b saw 150") end
  end }))
]], { url = srv.url, name = "b" })
    b.wait("b saw 150")
    b.wait('b absence publisher/participant market-cluster(["r", 1]) ' .. ("["):rep(50) .. '"why"' .. ("]"):rep(50))
    assert.truthy(a.has("a dropped 2"), a.out())
    assert.truthy(a.has("cannot be sent (market.to_cbor: a table nested more than 50 levels deep"), a.out())
    assert.truthy(a.has("cannot be sent (market.to_cbor: a term of more than 1000 nodes)"), a.out())
    assert.equal(1, b.count("o presence"), b.out())       -- (b's own subscriber)
    assert.is_true(S.alive(a.pid), a.out())
  end)

  it("survives a restart of nats-server: absence, then presence again, nothing twice", function()
    local srv = S.server()
    local n = nodes(srv, {
      a = [[market.perform(market.subscriber(T({"r", _}), logging("r")))]],
      b = [[market.perform(market.publisher(T({"r", "b"}), logging("p")))]],
    })
    n.a.wait('r presence publisher/participant market-cluster(["r", "b"])')
    n.b.wait('p presence subscriber/participant market-cluster(["r", "b"])')
    S.stop(srv.pid, "KILL")
    n.a.wait('r absence publisher/participant market-cluster(["r", "b"]) cluster: node b lost (disconnected from NATS)')
    n.a.wait("market.cluster: disconnected from NATS")
    n.b.wait('p absence subscriber/participant market-cluster(["r", "b"]) cluster: node a lost (disconnected from NATS)')
    local again = S.server({ port = srv.port })
    assert(S.wait(function() return n.a.count("r presence") == 2 end, 15), n.a.out())
    assert(S.wait(function() return n.b.count("p presence") == 2 end, 15), n.b.out())
    S.sleep(2)             -- heartbeats and snapshots go on: nothing more
    assert.equal(2, n.a.count("presence"))
    assert.equal(1, n.a.count("absence"))
    assert.equal(2, n.b.count("presence"))
    assert.equal(1, n.b.count("absence"))
    S.stop(again.pid)
  end)

  it("fails the driver, saying why, when NATS closes the connection for good", function()
    -- A server restarted with another password refuses the node's
    -- reconnection, and libnats gives up ("closed"): the driver went on
    -- as if disconnected, out of its cluster for ever and saying nothing.
    local srv = S.server({ auth = "u:p" })
    local url = srv.url:gsub("^nats://", "nats://u:p@")
    local a = S.node(PRELUDE .. [[market.perform(market.subscriber(T({"c", _}), logging("a")))]],
                     { url = url, name = "a" })
    local z = assert(dial({ url }, "z"))
    assert(z:subscribe("market.spec.all"))
    assert(S.wait(function() return z:next() == "message" end, 10), "nothing from a: " .. a.out())
    z:close()
    S.stop(srv.pid)
    S.server({ port = srv.port, auth = "u:other" })
    a.wait("was closed: Authorization Violation")
    assert(S.wait(function() return not S.alive(a.pid) end, 10), a.out())
    local shown = srv.url:gsub("^nats://", "nats://***@")     -- (not the password)
    assert.truthy(a.has("market: --cluster: the connection to NATS at " .. shown .. " was closed: "), a.out())
  end)

  it("works across two nats-servers joined by routes", function()
    local s1 = S.server({ cluster = true })
    local s2 = S.server({ routes = s1.route })
    local a = S.node(PRELUDE .. [[
market.perform(market.observe_subscribers(T({"x", _}), logging("a", { on_presence = function(_, r)
  log("a presence %s", role(r))
  if r.topic.topic[2] == "b" then return market.transition_no_state(market.send(T({"x", "b"}))) end
end })))]], { url = s1.url, name = "a" })
    local b = S.node(PRELUDE .. [[
market.perform(market.subscriber(T({"x", "b"}), logging("b1")),
  market.subscriber(T({"x", _}), logging("b2")))]], { url = s2.url, name = "b" })
    a.wait('a presence subscriber/participant market-cluster(["x", "b"])', 15)
    -- Two endpoints of b match: one delivery to the node, sent there once.
    b.wait('b1 message market-cluster(["x", "b"])', 15)
    b.wait('b2 message market-cluster(["x", "b"])')
    S.sleep(0.5)
    assert.equal(2, b.count("message"))
    S.stop(b.pid, "TERM")
    a.wait('a absence subscriber/participant market-cluster(["x", "b"]) cluster: node b left')
  end)

  it("makes examples/chat.lua on two nodes one room", function()
    local srv = S.server()
    local a = S.node(nil, { url = srv.url, name = "a", file = "examples/chat.lua", args = "0" })
    local b = S.node(nil, { url = srv.url, name = "b", file = "examples/chat.lua", args = "0" })
    local pa, pb = a.port(), b.port()
    local out = two_chatters(pa, pb)
    assert.equal(table.concat({
      "welcome, you are user1@a; here: nobody else",
      "user1@b joined",
      "user1@b: hi A",
      "user1@b left",
      "|",
      "welcome, you are user1@b; here: user1@a",
      "user1@a: hello all",
      "" }, "\n"), out)
  end)

  it("ignores malformed messages with a warning, and goes on", function()
    local srv = S.server()
    local n = nodes(srv, {
      a = [[market.perform(market.subscriber(T({"m", _}), logging("a", {
  on_absence = function(_, r, why)
    log("a absence %s %s", role(r), tostring(why))
    log("counted: malformed %d", cluster.inspect().malformed)
  end })))]],
    })
    local market = require "market"
    local c = assert(dial({ srv.url }, "spec"))
    S.sleep(0.5)
    local function add(...) return market.to_cbor({ 2, "add", "z", 7, ... }) end
    for _, bytes in ipairs {
      "not cbor at all",
      market.to_cbor("a string"),
      market.to_cbor({ 1, "hello", "z", 7, 0, {} }),               -- version 1
      market.to_cbor({ 2, "shout", "z", 7 }),                      -- an unknown kind
      market.to_cbor({ 2, "hello", "z z", 7, 0, {} }),             -- not a NATS token
      market.to_cbor({ 2, "hello", "z", 7, 0, "not a list" }),
      market.to_cbor({ 2, "snapshot", "z", 7, 0, { { 1, "sideways", "participant", 1 } } }),
      add(1, 1, "publisher", "bystander", T and 1),
      add("one", 1, "publisher", "participant", { "m", 1 }),
    } do
      assert.is_true(c:publish("market.spec.all", bytes))
      assert.is_true(c:publish("market.spec.node.a", bytes))
    end
    -- A peer that repeats itself is heard once.
    local hello = market.to_cbor({ 2, "hello", "z", 7, 1, { { 1, "publisher", "participant", { "m", 1 } } } })
    assert.is_true(c:publish("market.spec.all", hello))
    assert.is_true(c:publish("market.spec.all", hello))
    assert.is_true(c:publish("market.spec.all", add(1, 1, "publisher", "participant", { "m", 1 })))
    n.a.wait('a presence publisher/participant market-cluster(["m", 1])')
    assert.is_true(c:publish("market.spec.all", market.to_cbor({ 2, "bye", "z", 7 })))
    n.a.wait('a absence publisher/participant market-cluster(["m", 1]) cluster: node z left')
    n.a.wait("counted: ")
    c:close()
    assert.equal(1, n.a.count("presence"))
    assert.truthy(n.a.has("counted: malformed 18"), n.a.out())
    -- The warnings say why (the first ones: the log is rate-limited).
    assert.truthy(n.a.has("market.cluster: ignoring a malformed message: market.from_cbor: "), n.a.out())
    assert.truthy(n.a.has("ignoring a malformed message: not a sequence"), n.a.out())
  end)

  it("refuses a null inside a sequence, in roles, topics and reasons, and goes on", function()
    -- from_cbor read [nil, 5] as a table with a hole.  A list of roles
    -- [nil, 5] passed the check (ipairs stops at the hole) and a part's
    -- roles are gathered by their length: with the next part's roles
    -- filling the hole, the driver read 5 as a role and failed ("attempt
    -- to index a number value").  And a table with a hole is no term:
    -- wrapping a topic [nil, 5] in cluster.topic (or deleting a stand-in
    -- with it as the reason) raised, and the driver failed.
    local market = require "market"
    local a, z = by_hand(S.server())
    assert(S.wait(function() return z:next() == "message" end, 10), "nothing from a")
    for _, m in ipairs {
      { "market.spec.all", holed("hello-part", "x", 7, 1, 1, 2, { "HOLE" }) },
      { "market.spec.all", market.to_cbor({ 2, "hello-part", "x", 7, 1, 2, 2, { pub(1, "x1") } }) },
      { "market.spec.all", holed("add", "x", 7, 1, 1, "publisher", "participant", { "HOLE" }) },
      { "market.spec.all", holed("hello", "y", 8, 1, { { 1, "publisher", "participant", { "HOLE" } } }) },
      { "market.spec.all", market.to_cbor({ 2, "hello", "z", 7, 1, { pub(1, "z1") } }) },
      { "market.spec.all", holed("del", "z", 7, 2, 1, { "HOLE" }) },
      { "market.spec.node.a", holed("send", "v", 9, { "HOLE" }) },
      { "market.spec.all", market.to_cbor({ 2, "hello", "w", 9, 1, { pub(1, "w1") } }) },
    } do
      assert(z:publish(m[1], m[2]))
    end
    a.wait('a presence publisher/participant market-cluster(["p", "w1"])')
    z:close()
    -- (5 warnings: the log's limit for one place in 10 s; from_cbor
    -- refuses each of the five whole)
    assert.equal(5, a.count("market.from_cbor: a null inside a sequence (Lua would read it as a hole)"), a.out())
    assert.truthy(a.has('a presence publisher/participant market-cluster(["p", "z1"])'), a.out())
    assert.is_false(a.has('"x1"'), a.out())
    assert.is_false(a.has("a absence"), a.out())
  end)

  it("refuses node names too long for a NATS subject, its own and those heard", function()
    -- A peer named by 4100 letters was asked for a snapshot on
    -- market.spec.node.<name>: nats-server refused the line ("maximum
    -- control line exceeded") and closed the connection, and every node
    -- of the cluster exited with status 1.
    local market = require "market"
    local srv = S.server()
    local a, z = by_hand(srv)
    assert(S.wait(function() return z:next() == "message" end, 10), "nothing from a")
    local longest = ("v"):rep(255)
    assert(z:subscribe("market.spec.node." .. longest))
    local function all(...) assert(z:publish("market.spec.all", market.to_cbor({ 2, ... }))) end
    all("heartbeat", ("x"):rep(4100), 1, 0)
    all("hello", ("y"):rep(5000), 1, 0, {})
    all("hello", ("w"):rep(256), 1, 0, {})
    -- 255 bytes is a name: heard, and answered on its subject.
    all("hello", longest, 1, 1, { pub(1, "v1") })
    a.wait('a presence publisher/participant market-cluster(["p", "v1"])')
    assert(S.wait(function()
      local ev, subject, data = z:next()
      local m = ev == "message" and subject == "market.spec.node." .. longest and market.from_cbor(data)
      return m and m[2] == "snapshot" and m[3] == "a"
    end, 5), "no snapshot from a: " .. a.out())
    z:close()
    assert.is_true(S.alive(a.pid), a.out())
    assert.equal(3, a.count("a node name longer than 255 bytes: "), a.out())
    -- This node's own names, and the cluster's, are bounded alike.
    local cluster = require "market.cluster"
    local function err(opts)
      local ok, e = pcall(cluster.driver, opts)
      assert.is_false(ok)
      return e
    end
    assert.matches("market%.cluster%.driver: node must be at most 255 bytes %(a NATS subject holds it%), got 256$",
                   err { url = srv.url, node = ("n"):rep(256) })
    assert.matches("market%.cluster%.driver: cluster must be at most 255 bytes %(a NATS subject holds it%), got 4100$",
                   err { url = srv.url, node = "n", cluster = ("c"):rep(4100) })
    assert(pcall(cluster.driver, { url = srv.url, node = longest, cluster = ("c"):rep(255) }))
    local status, _, e = H.run(("--cluster %s/spec --node %s -e 'local x = 1'"):format(srv.url, ("n"):rep(300)))
    assert.equal(2, status)     -- checked with the options
    assert.matches("market: %-%-node: 'n+' is not a name of 1 to 255 letters", e)
  end)

  it("cuts off a node that would hold more than max_roles roles, until it restarts", function()
    -- Each role of a peer is an endpoint here: one peer (buggy, or not a
    -- node at all) grew them without end, by hello, parts or adds.
    local a, z, all = limited("max_roles = 3")
    -- x: three roles, then a fourth added.
    all("hello", "x", 7, 3, { pub(1, "x1"), pub(2, "x2"), pub(3, "x3") })
    a.wait('a presence publisher/participant market-cluster(["p", "x3"])')
    all("add", "x", 7, 4, 4, "publisher", "participant", { "p", "x4" })
    a.wait('a absence publisher/participant market-cluster(["p", "x1"]) cluster: node x lost (more than 3 roles)')
    -- Cut off: what this incarnation says next is not heard.
    all("hello", "x", 7, 1, { pub(9, "x9") })
    -- y: a hello of four roles; w: parts of two and two.
    all("hello", "y", 8, 4, { pub(1, "y1"), pub(2, "y2"), pub(3, "y3"), pub(4, "y4") })
    all("hello-part", "w", 9, 4, 1, 2, { pub(1, "w1"), pub(2, "w2") })
    all("hello-part", "w", 9, 4, 2, 2, { pub(3, "w3"), pub(4, "w4") })
    -- x restarted (a new incarnation) is heard again.
    all("hello", "x", 70, 1, { pub(1, "again") })
    a.wait('a presence publisher/participant market-cluster(["p", "again"])')
    z:close()
    assert.equal(4, a.count("a presence"), a.out())   -- x1..x3, again
    assert.equal(3, a.count("a absence"), a.out())
    assert.is_false(a.has('"x4"') or a.has('"x9"') or a.has('"y') or a.has('"w'), a.out())
    assert.equal(3, a.count("cut off until it restarts"), a.out())
  end)

  it("applies a large hello in steps, what came after it taken after it", function()
    -- A node may hold max_roles roles, each a stand-in here: a hello of
    -- 100,000 made them all in one activation, 1-2 s, and the activation
    -- budget killed the driver.  Here 6,000 roles in 4 parts, then a del
    -- and an add that must not overtake them; the most the driver did in
    -- one activation is counted (cluster.stats.max_steps).
    local market = require "market"
    local srv = S.server()
    local N, PARTS = 6000, 4
    -- (z says no heartbeat: lost_after_ms outlasts the spec)
    local a = S.node(PRELUDE .. ([[
market.perform(cluster.driver{ url = %q, cluster = "spec", node = "a", lost_after_ms = 600000 })
local n = 0
market.perform(market.subscriber(T({"p", _}), logging("a", { on_presence = function(_, r)
  log("a presence %%s", role(r))
  n = n + 1
  if n == %d then log("a has them all, max_steps %%s", tostring(cluster.inspect().max_steps)) end
end })))]]):format(srv.url, N), { url = srv.url, name = "a", own_driver = true })
    local z = assert(dial({ srv.url }, "z"))
    assert(z:subscribe("market.spec.all"))
    assert(S.wait(function() return z:next() == "message" end, 10), "nothing from a")
    local per = N // PARTS
    for k = 1, PARTS do
      local list = {}
      for id = (k - 1) * per + 1, k * per do list[#list + 1] = pub(id, id) end
      assert(z:publish("market.spec.all", market.to_cbor({ 2, "hello-part", "z", 7, 0, k, PARTS, list })))
    end
    assert(z:publish("market.spec.all", market.to_cbor({ 2, "del", "z", 7, 1, 1, "gone" })))
    assert(z:publish("market.spec.all",
                     market.to_cbor({ 2, "add", "z", 7, 2, N + 1, "publisher", "participant", { "p", "last" } })))
    a.wait('a absence publisher/participant market-cluster(["p", 1]) gone', 30)
    a.wait('a presence publisher/participant market-cluster(["p", "last"])', 30)
    z:close()
    local steps = a.out():match("a has them all, max_steps (%w+)")
    assert.is_truthy(math.tointeger(tonumber(steps)), a.out():sub(-2000))
    assert.equal(256, tonumber(steps))            -- (the bound, reached: more were due)
    -- Every role once; the del after its presence, the add last.
    assert.equal(N + 1, a.count("a presence"), a.out():sub(-2000))
    assert.equal(1, a.count("a absence"))
    local out = a.out()
    assert.is_true(out:find('market-cluster(["p", 1])', 1, true) < out:find("a absence", 1, true))
    assert.is_true(out:find('["p", ' .. N .. '])', 1, true) < out:find('["p", "last"]', 1, true))
  end)

  it("delivers a send from a node not known yet in steps, 256 topics an activation", function()
    -- The Lua path (a node not known under that incarnation) delivered
    -- every topic of a message in one activation: a million of them, in
    -- one megabyte from anybody, killed the driver.
    local market = require "market"
    local srv = S.server()
    local N = 3000
    local a = S.node(PRELUDE .. ([[
local n = 0
market.perform(market.subscriber(T(_), { on_message = function(_, m)
  n = n + 1
  if n == %d then log("a got them all, the last %%s, max_steps %%s", repr(m), tostring(cluster.inspect().max_steps)) end
end }))
market.perform(market.subscriber(T("ready"), logging("a")))]]):format(N), { url = srv.url, name = "a" })
    local z = assert(dial({ srv.url }, "z"))
    assert(z:subscribe("market.spec.all"))
    assert(S.wait(function() return z:next() == "message" end, 10), "nothing from a")
    local m = { 2, "send", "z", 7 }
    for i = 1, N do m[#m + 1] = i end
    assert(z:publish("market.spec.node.a", market.to_cbor(m)))
    a.wait("a got them all", 30)
    z:close()
    local last, steps = a.out():match("a got them all, the last market%-cluster%((%d+)%), max_steps (%w+)")
    assert.equal(tostring(N), last, a.out())
    assert.is_truthy(math.tointeger(tonumber(steps)), a.out())
    assert.equal(256, tonumber(steps))            -- (the bound, reached: more were due)
  end)

  it("hears at most max_nodes nodes, and remembers that many names of replaced ones", function()
    -- Names made up by the million each made a node record (and a want
    -- asked of it), and every name whose incarnation changed stayed in a
    -- table for good.
    local a, z, all = limited("max_nodes = 1")
    all("hello", "x", 1, 1, { pub(1, "x1") })
    all("hello", "y", 1, 1, { pub(1, "y1") })          -- a second node: not heard
    a.wait('a presence publisher/participant market-cluster(["p", "x1"])')
    -- x restarts (incarnation 1 retired), then leaves; y is heard then.
    all("hello", "x", 2, 1, { pub(1, "x2") })
    a.wait('a presence publisher/participant market-cluster(["p", "x2"])')
    all("bye", "x", 2)
    all("hello", "y", 1, 1, { pub(1, "y1") })
    a.wait('a presence publisher/participant market-cluster(["p", "y1"])')
    -- y restarts too: its name takes the place of x's among the replaced,
    -- so x's incarnation 1 is no longer known as replaced (the one name
    -- max_nodes keeps), and is heard once y has left.
    all("hello", "y", 2, 1, { pub(1, "y2") })
    all("bye", "y", 2)
    all("hello", "x", 1, 1, { pub(1, "x1 again") })
    a.wait('a presence publisher/participant market-cluster(["p", "x1 again"])')
    z:close()
    assert.truthy(a.has("more than 1 nodes (max_nodes): ignoring node y"), a.out())
    assert.equal(1, a.count('presence publisher/participant market-cluster(["p", "y1"])'), a.out())
  end)

  it("forgets the oldest replaced names however many come, keeping max_nodes", function()
    -- The queue of replaced names found its end by #past, its front set
    -- to nil: a border the length operator may pick anywhere, so names
    -- were kept for good (with max_nodes = 1, n4 of n1..n6 stayed).
    local a, z, all = limited("max_nodes = 1")
    for i = 1, 6 do
      local name = "n" .. i
      all("hello", name, 1, 1, { pub(1, name) })
      all("hello", name, 2, 1, { pub(1, name .. " again") })  -- incarnation 1 replaced
      all("bye", name, 2)
    end
    -- Only n6 is known as replaced now: n4's incarnation 1 is heard.
    all("hello", "n4", 1, 1, { pub(1, "n4 back") })
    all("bye", "n4", 1)
    all("hello", "n6", 1, 1, { pub(1, "n6 back") })
    all("bye", "n6", 1)
    all("hello", "end", 1, 1, { pub(1, "end") })
    a.wait('a presence publisher/participant market-cluster(["p", "end"])')
    z:close()
    assert.truthy(a.has('a presence publisher/participant market-cluster(["p", "n4 back"])'), a.out())
    assert.is_false(a.has('"n6 back"'), a.out())
    assert.equal(2, a.count("ignoring node n6's incarnation 1, which a later one replaced"), a.out())  -- (hello, bye)
    assert.is_false(a.has("ignoring node n4"), a.out())
  end)

  it("asks a node first heard of through a want, a send or feedback for a snapshot", function()
    -- docs/cluster.md: a node heard of first through anything but hello
    -- or snapshot is asked for a snapshot; one heard of through want or
    -- send was not, and its roles stayed unknown until its heartbeat.
    local market = require "market"
    local a, z = by_hand(S.server())
    assert(z:subscribe("market.spec.node.y"))
    assert(S.wait(function() return z:next() == "message" end, 10), "nothing from a")
    assert(z:publish("market.spec.node.a", market.to_cbor({ 2, "want", "z", 7 })))
    assert(z:publish("market.spec.node.a", market.to_cbor({ 2, "send", "y", 8, { "p", 1 } })))
    local asked = {}
    assert(S.wait(function()
      local ev, subject, data = z:next()
      local m = ev == "message" and market.from_cbor(data)
      if m and m[2] == "want" and m[3] == "a" then asked[subject] = true end
      return asked["market.spec.node.z"] and asked["market.spec.node.y"]
    end, 3), a.out())
    z:close()
  end)

  it("delivers a peer's sends and feedback read from their bytes, and refuses bad ones", function()
    -- The driver reads [2, "send", node, inc, X...] from a node it knows
    -- without decoding the envelope (drivers/lcluster.c, batch_begin): a name
    -- longer than 23 bytes (a CBOR header of two bytes), a send with
    -- trailing bytes, one cut short and one of another incarnation must
    -- go the long way, and be told as the long way tells them.
    local srv = S.server()
    local n = nodes(srv, {
      a = [[market.perform(market.subscriber(T({"s", _}), logging("a")),
  market.publisher(T({"f", _}), logging("f")),
  market.subscriber(T({"done"}), { on_message = function()
    log("counted: malformed %d delivered %d", cluster.inspect().malformed, cluster.inspect().delivered)
  end }))]],
    })
    local market = require "market"
    local c = assert(dial({ srv.url }, "spec"))
    local z = ("z"):rep(30)
    local function msg(...) return market.to_cbor({ 2, ... }) end
    -- Once a is heard it listens; once it answers z's hello it knows z.
    local function heard(subject)
      repeat local ev, subj = next_event(c) until ev == "message" and subj == subject
    end
    assert(c:subscribe("market.spec.all"))
    assert(c:subscribe("market.spec.node." .. z))
    heard("market.spec.all")
    assert.is_true(c:publish("market.spec.all", msg("hello", z, 7, 0, {})))
    heard("market.spec.node." .. z)
    local good = msg("send", z, 7, { "s", 1 })
    for _, bytes in ipairs {
      good,
      good .. "\0",                                             -- trailing bytes
      good:sub(1, -2),                                          -- cut short
      msg("feedback", z, 7, { "f", 3 }),
      msg("send", ("y"):rep(30), 7, { "s", 4 }),                -- a node not known yet
    } do
      assert.is_true(c:publish("market.spec.node.a", bytes))
    end
    -- Another incarnation of z: z restarted, and is heard.
    assert.is_true(c:publish("market.spec.node.a", msg("send", z, 8, { "s", 5 })))
    assert.is_true(c:publish("market.spec.node.a", msg("send", z, 8, { "done" })))
    n.a.wait("counted: ")        -- (the warnings say "malformed" too)
    c:close()
    assert.equal(1, n.a.count('a message market-cluster(["s", 1])'), n.a.out())
    assert.equal(1, n.a.count('f message market-cluster(["f", 3])'), n.a.out())
    assert.equal(1, n.a.count('a message market-cluster(["s", 4])'), n.a.out())
    assert.equal(1, n.a.count('a message market-cluster(["s", 5])'), n.a.out())
    assert.equal(4, n.a.count(" message market-cluster"), n.a.out())
    assert.truthy(n.a.has("counted: malformed 2 delivered 5"), n.a.out())
  end)

  it("carries a burst of sends and feedback whole and in order, several to a NATS message", function()
    -- a sends 3000 messages to b in one activation, every 100th a feedback
    -- (b holds a subscriber and a publisher): the forwarder batches them
    -- (docs/cluster.md, "Messages across nodes"), a batch ending at 32 KiB
    -- and at each change of kind, b delivers them 256 at a time, in the
    -- middle of a batch.  b hears them in the order a made them.
    local srv = S.server()
    local N = 3000
    local n = nodes(srv, {
      a = ([[
local N = %d
market.perform(market.subscriber(T({"done", _}), { on_message = function()
  log("a sent %%d NATS messages for %%d", cluster.inspect().sent, N)
end }), market.observe_publishers(T({"fb", _}), { on_presence = function()
  return market.transition_no_state(market.spawn(function()
    local pad = ("p"):rep(40)
    for i = 1, N do
      if i %% 100 == 0 then market.perform(market.feedback(T({"fb", i})))
      else market.perform(market.send(T({"burst", i, pad}))) end
    end
  end))
end }))]]):format(N),
      b = ([[
local N, last, got, wrong = %d, 0, 0, 0
local function hear(i)
  got = got + 1
  if i ~= last + 1 then wrong = wrong + 1 end
  last = i
  if got == N then
    log("b got %%d, %%d out of order", got, wrong)
    return market.transition_no_state(market.send(T({"done", got})))
  end
end
market.perform(market.subscriber(T({"burst", _, _}), { on_message = function(_, m) return hear(m.topic[2]) end }),
  market.publisher(T({"fb", _}), { on_message = function(_, m) return hear(m.topic[2]) end }))]]):format(N),
    })
    n.b.wait("b got 3000, 0 out of order", 30)
    n.a.wait("a sent", 10)
    local sent = math.tointeger(tonumber(n.a.out():match("a sent (%d+) NATS messages")))
    -- One NATS message for each before the batches (announcements,
    -- heartbeats and snapshots come on top: a few dozen at most).
    assert(sent < N / 10, n.a.out())
  end)

  it("delivers the sends made before a role went before its absence", function()
    -- a's process sends 50 messages and deletes its endpoint in one
    -- transition: the del that announces it must not overtake the batch
    -- holding the messages (conn:publish publishes the batches first).
    local srv = S.server()
    local n = nodes(srv, {
      a = [[
market.perform(market.subscriber(T({"gone", "a"}), { name = "gone", on_presence = function()
  local acts = {}
  for i = 1, 50 do acts[i] = market.send(T({"d", i})) end
  acts[#acts + 1] = market.delete_endpoint("gone")
  return market.transition_no_state(table.unpack(acts))
end }))]],
      b = [[
local got = 0
market.perform(market.subscriber(T({"d", _}), { on_message = function() got = got + 1 end }),
  market.publisher(T({"gone", _}), { on_absence = function(_, r, why)
    log("b absence after %d messages", got)
  end }))]],
    })
    n.b.wait("b absence after", 15)
    assert.truthy(n.b.has("b absence after 50 messages"), n.b.out())
  end)

  it("refuses a malformed batch: counted, reported, nothing past the bad topic", function()
    -- Node z is this spec.  A batch whose topics are not framed as its
    -- head says is dropped whole; one whose topic does not decode is
    -- delivered up to that topic, and no further.
    local srv = S.server()
    local n = nodes(srv, {
      a = [[market.perform(market.subscriber(T({"s", _}), logging("a")),
  market.subscriber(T({"done"}), { on_message = function()
    log("counted: malformed %d delivered %d", cluster.inspect().malformed, cluster.inspect().delivered)
  end }))]],
    })
    -- [2, "send", "z", 7, X...] by hand: the wrapper, the array head, the
    -- envelope's items, the topics' items (docs/cluster.md).
    local c, wrapper, envelope, item = as_z(srv)
    local function batch(count, ...)
      return wrapper .. string.char(0x80 + 4 + count) .. envelope .. table.concat({ ... })
    end
    local unknown_tag = "\xd8\x63\x01"                          -- tag 99 around 1
    for _, bytes in ipairs {
      batch(3, item({ "s", 1 }), item({ "s", 2 }), item({ "s", 3 })),
      batch(3, item({ "s", 4 }), unknown_tag, item({ "s", 6 })),  -- 4 only
      batch(3, item({ "s", 7 }), item({ "s", 8 })),               -- one short: none
      batch(2, item({ "s", 9 }), item({ "s", 10 }), "\0"),        -- bytes after: none
      batch(2, item({ "s", 11 }), "\xa1\x01\x02"),                -- a map: none
      batch(1, item({ "done" })),
    } do
      assert.is_true(c:publish("market.spec.node.a", bytes))
    end
    n.a.wait("counted: ")        -- (the warnings say "malformed" too)
    c:close()
    local seen = {}
    for i in n.a.out():gmatch('a message market%-cluster%(%["s", (%d+)%]%)') do seen[#seen + 1] = tonumber(i) end
    assert.same({ 1, 2, 3, 4 }, seen)
    assert.truthy(n.a.has("counted: malformed 4 delivered 5"), n.a.out())
    assert.truthy(n.a.has("ignoring a malformed message: send from z: topic 2 of 3: an unknown tag"), n.a.out())
    assert.truthy(n.a.has("ignoring a malformed message: send from z: topic 3 of 3 is cut short or not a term's CBOR"), n.a.out())
    assert.truthy(n.a.has("ignoring a malformed message: send from z: bytes after the last topic"), n.a.out())
    assert.truthy(n.a.has("ignoring a malformed message: send from z: topic 2 of 2 is cut short or not a term's CBOR"), n.a.out())
  end)

  it("names a batch's count past 2^63 as its head says it, unsigned", function()
    -- A head counting 0xffffffffffffffff items was shown as a signed
    -- integer: "topic 2 of -5".
    local srv = S.server()
    local n = nodes(srv, {
      a = [[market.perform(market.subscriber(T({"s", _}), logging("a")),
  market.subscriber(T({"done"}), { on_message = function()
    log("counted: malformed %d", cluster.inspect().malformed)
  end }))]],
    })
    local c, wrapper, envelope, item = as_z(srv)
    -- An array of 2^64 - 1 items (9b ff..ff), of which one follows.
    assert.is_true(c:publish("market.spec.node.a",
      wrapper .. "\x9b" .. ("\xff"):rep(8) .. envelope .. item({ "s", 1 })))
    assert.is_true(c:publish("market.spec.node.a", wrapper .. "\x85" .. envelope .. item({ "done" })))
    n.a.wait("counted: ")
    c:close()
    assert.truthy(n.a.has("counted: malformed 1"), n.a.out())
    assert.truthy(n.a.has("ignoring a malformed message: send from z: topic 2 of 18446744073709551611 " ..
                          "is cut short or not a term's CBOR"), n.a.out())
    assert.is_false(n.a.has("a message market-cluster"), n.a.out())
  end)

  it("announces a role before a message sent after it, as one VM orders them", function()
    -- a subscribes to back(_) and sends o(1) in one transition; b answers
    -- o(1) with back(1), which reaches a only if b knew of a's subscriber
    -- first: the forwarder hands the role to the Lua driver, which
    -- announces it, before it forwards the message.
    local srv = S.server()
    local n = nodes(srv, {
      a = [[market.perform(market.observe_subscribers(T({"o", _}), { on_presence = function()
  return market.transition_no_state(market.subscriber(T({"back", _}), logging("a")),
                                    market.send(T({"o", 1})))
end }))]],
      b = [[market.perform(market.subscriber(T({"o", _}), { on_message = function(_, m)
  return market.transition_no_state(market.send(T({"back", m.topic[2]})))
end }))]],
    })
    n.a.wait('a message market-cluster(["back", 1])')
  end)

  it("ends the driver's forwarder with the driver, and forwards nothing after", function()
    -- The driver's observers belong to a native process of its own
    -- (drivers/lcluster.c, "The forwarder"), which goes when the driver
    -- goes, whatever the way: here the driver is killed.
    local srv = S.server()
    local b = S.node(PRELUDE .. [[market.perform(market.subscriber(T({"k", _}), logging("b")))]],
                     { url = srv.url, name = "b" })
    local a = S.node(PRELUDE .. ([[
local function named(name)
  for _, p in ipairs(market.snapshot().vm.processes) do
    if p.name == name then return p.pid end
  end
end
market.perform(cluster.driver{ url = URL, cluster = "spec", node = "a" },
  market.observe_subscribers_everything(T(_), logging("E", { on_presence = function(_, r)
    log("E presence %s", role(r))
    if repr(r.topic) ~= "market-cluster(_)" then
      -- b's subscriber: a message reaches it, then the driver is killed.
      log("forwarder %s", tostring(named("cluster a data") ~= nil))
      return market.transition_no_state(market.send(T({"k", 1})), market.quit(named("cluster a"), "killed"))
    end
  end, on_absence = function(_, r, why)
    log("E absence %s %s", role(r), tostring(why))
    if r.interest == "everything" then         -- (the forwarder's observer of publishers)
      log("forwarder %s", tostring(named("cluster a data") ~= nil))
      return market.transition_no_state(market.send(T({"k", 2})))
    end
  end })))]]):gsub("URL", ("%q"):format(srv.url)), { url = srv.url, name = "a", own_driver = true })
    a.wait("forwarder true")
    a.wait('E absence subscriber/everything market-cluster(_) nil')
    a.wait('E absence subscriber/participant market-cluster(["k", _]) killed')
    b.wait('b message market-cluster(["k", 1])')
    S.sleep(1)
    assert.equal(1, a.count("forwarder false"), a.out())
    assert.equal(1, b.count("b message"), b.out())
  end)

  it("does not take a live node for lost while its own loop was held up", function()
    local srv = S.server()
    local a = S.node(PRELUDE .. [[market.perform(market.publisher(T({"busy", 1}), logging("a")))]],
                     { url = srv.url, name = "a" })
    -- b's loop is held 3.5 s (past lost_after_ms, 2 s) by one activation;
    -- a's heartbeats wait in b's queue meanwhile, and are heard after.
    local b = S.node(PRELUDE .. [[
market.perform(market.subscriber(T({"busy", _}), logging("b", { on_presence = function(_, r)
  log("b presence %s", role(r))
  local t = os.clock() + 3.5
  while os.clock() < t do end
  log("b woke")
  return market.transition_no_state(market.spawn(function()
    market.yield(2500)
    log("b done")
  end))
end })))]], { url = srv.url, name = "b", options = "--max-activation 20000" })
    b.wait("b woke", 20)
    b.wait("b done", 20)
    a.wait("a presence subscriber/participant")
    assert.is_false(b.has("b absence"), b.out())
  end)

  -- Under ThreadSanitizer (docs/testing.md) libfaketime's own
  -- pthread_cond_timedwait, which calls the C library's past the
  -- sanitizer, hides the mutex's release inside the wait from it: it then
  -- reports a "double lock" in libnats that is not there.
  local tsan = io.popen("ldd " .. H.quote(H.market_bin()) .. " 2>/dev/null"):read("a")
                 :find("libtsan", 1, true) ~= nil
  ;(tsan and pending or it)("does not take a live node for lost when the wall clock steps forward", function()
    -- libfaketime moves b's wall clock (market.now()) a minute ahead while
    -- it runs, as NTP or a resumed machine may; its monotonic clock goes
    -- on.  a's heartbeats (every 40 s) are well within b's lost_after_ms
    -- (50 s), but the next is not due before b's next checks (every 500 ms),
    -- which measured a minute of silence.
    local lib = io.popen("ls /usr/lib/*/faketime/libfaketimeMT.so.1 2>/dev/null"):read("l")
    assert(lib, "libfaketime is not installed (apt-get install faketime)")
    local srv = S.server()
    local stamp = S.dir .. "/faketime"
    local function offset(text)
      local f = assert(io.open(stamp, "w"))
      f:write(text, "\n")
      f:close()
    end
    offset("+0")
    local function driver(name, opts)
      return ([[market.perform(cluster.driver{ url = %q, cluster = "spec", node = %q, %s })
]]):format(srv.url, name, opts)
    end
    local a = S.node(PRELUDE .. driver("a", "heartbeat_ms = 40000") ..
                     [[market.perform(market.publisher(T({"step", 1}), logging("a")))]],
                     { url = srv.url, name = "a", own_driver = true })
    local b = S.node(PRELUDE .. driver("b", "lost_after_ms = 50000") .. [[
market.perform(market.subscriber(T({"step", _}), logging("b")))
local t0 = market.now()
while market.now() - t0 < 30000 do market.yield(100) end
log("b stepped")
market.yield(1500)             -- three checks of b's
log("b done")]], { url = srv.url, name = "b", own_driver = true, env = {
      -- (after the sanitizers' runtimes, which must come first)
      LD_PRELOAD = ((os.getenv("LD_PRELOAD") or "") .. " " .. lib), FAKETIME_TIMESTAMP_FILE = stamp, FAKETIME_NO_CACHE = "1",
      DONT_FAKE_MONOTONIC = "1" } })
    b.wait("b presence publisher/participant", 20)
    offset("+60s")
    b.wait("b stepped", 20)
    b.wait("b done", 20)
    assert.is_false(b.has("b absence"), b.out())
  end)

  it("runs in a nested VM through an event relay, and leaves when told", function()
    local srv = S.server()
    local a = S.node(PRELUDE .. [[market.perform(market.subscriber(T({"nest", _}), logging("a")))]],
                     { url = srv.url, name = "a" })
    local nest = S.node(PRELUDE .. ([[
local relay = require "market.event_relay"
market.perform(market.nested_vm(function()
  market.perform(relay("nest"), cluster.driver{ url = URL, cluster = "spec", node = "nest" })
  market.perform(market.publisher(T({"nest", 1}), logging("in", { on_presence = function(_, r)
    log("in presence %s", role(r))
    return market.transition_no_state(cluster.leave())
  end })))
end))]]):gsub("URL", ("%q"):format(srv.url)), { url = srv.url, name = "nest", own_driver = true })
    nest.wait('in presence subscriber/participant market-cluster(["nest", 1])')
    a.wait('a presence publisher/participant market-cluster(["nest", 1])')
    a.wait('a absence publisher/participant market-cluster(["nest", 1]) cluster: node nest left')
    nest.wait('in absence subscriber/participant market-cluster(["nest", 1]) nil')
  end)

  it("market --cluster: no server is exit status 1 with the reason; bad names are usage errors", function()
    local srv = S.server()
    local port = srv.port
    S.stop(srv.pid)
    local status, out, err = H.run(("--cluster nats://127.0.0.1:%d/spec -e 'print(\"ran\")'"):format(port))
    assert.equal(1, status)
    assert.equal("ran\n", out)
    assert.matches("market: %-%-cluster: cannot connect to NATS at nats://127.0.0.1:" .. port, err)
    -- A bad name ran the script without its cluster, and said so at its end.
    for _, bad in ipairs { "127.0.0.1:4222", "nats://", "nats:///spec", "tls://", "https://x:1",
                           "nats://127.0.0.1:1/a.b", "nats://127.0.0.1:1/" } do
      status, out, err = H.run(("--cluster %s -e 'print(\"ran\")'"):format(bad))
      assert.equal(2, status)
      assert.equal("", out)
      assert.equal(("market: --cluster: '%s' is not nats://HOST:PORT[/NAME] (or tls://), NAME of " ..
                    "letters, digits, '-' and '_'\n"):format(bad), err)
    end
    for _, bad in ipairs { "bad name!", "", ("n"):rep(256) } do
      status, out, err = H.run(("--node '%s' --cluster nats://127.0.0.1:1/x -e 'print(\"ran\")'"):format(bad))
      assert.equal(2, status)
      assert.equal("", out)
      assert.equal(("market: --node: '%s' is not a name of 1 to 255 letters, digits, '-' and '_'\n")
                   :format(bad), err)
    end
    status, out, err = H.run("--node lonely -e 'print(\"ran\")'")
    assert.equal(2, status)
    assert.equal("", out)
    assert.equal("market: --node names this node in a cluster: give --cluster too\n", err)
    -- A name the driver refuses still (each worker's NAME-i one byte too
    -- long) ends the program at once, before the script gets far.
    status, out, err = H.run(("--workers 2 --node %s --cluster nats://127.0.0.1:1/x " ..
      "-e 'require(\"market.timer\").sleep(300) print(\"ran\")'"):format(("n"):rep(254)))
    assert.equal(1, status)
    assert.equal("", out)
    assert.matches("market: %-%-cluster: market%.cluster%.driver: node must be at most 255 bytes", err)
  end)

  it("goes on while its first connect waits: a silent server freezes nothing", function()
    -- The connect waited on the loop's thread: every timer, connection
    -- and process of the program stood still for up to 2 s.
    local srv = S.server()
    os.execute(("kill -STOP %d"):format(srv.pid))   -- takes the connection, says nothing
    local status, _, err = H.run_script(([[
local market, cluster, timer = require "market", require "market.cluster", require "market.timer"
local ticks = 0
market.perform(market.subscriber(timer.expired("tick", market._), { on_message = function()
  ticks = ticks + 1 end }), market.send(timer.every("tick", 20)))
local pid = market.perform(cluster.driver { url = URL, cluster = "spec", node = "n" })
market.perform(market.monitor(pid, function(_, reason)
  io.stderr:write(("ticks %d; driver ended: %s\n"):format(ticks, tostring(reason)))
  return market.transition_no_state(market.exit(0))
end))]]):gsub("URL", ("%q"):format(srv.url)), "--quiet")
    os.execute(("kill -CONT %d"):format(srv.pid))
    assert.equal(0, status, err)
    local ticks, why = err:match("^ticks (%d+); driver ended: (.*)\n$")
    assert.truthy(ticks, err)
    -- 2 s of 20 ms ticks is 100; a slow machine gets fewer, never none.
    assert.is_true(tonumber(ticks) >= 20, err)
    assert.equal("cannot connect to NATS at " .. srv.url .. ": timeout", why)
  end)

  it("names the servers without their passwords or tokens in its reasons", function()
    local srv = S.server()
    local port = srv.port
    S.stop(srv.pid)
    for _, secret in ipairs { "u:secret", "secret" } do
      local status, _, err = H.run(("--cluster nats://%s@127.0.0.1:%d/spec -e 'local x = 1'"):format(secret, port))
      assert.equal(1, status)
      assert.matches("cannot connect to NATS at nats://%*%*%*@127%.0%.0%.1:" .. port .. ": ", err)
      assert.is_nil(err:find("secret", 1, true), err)
    end
  end)

  it("checks the driver's options at the call, a value that is no term named by its type", function()
    -- (market.repr raised on it: "market.cluster:56: market.repr: a function is not a term")
    local cluster = require "market.cluster"
    local function err(opts)
      local ok, e = pcall(function() local _d = cluster.driver(opts) end)
      assert.is_false(ok)
      return e
    end
    local here = "^spec/cluster_spec%.lua:%d+: market%.cluster%.driver: "
    assert.matches(here .. "node must be a non%-empty string of letters, digits, '%-' and '_', got function$",
                   err { url = "nats://127.0.0.1:1", node = print })
    assert.matches(here .. "cluster must be .*, got table$", err { url = "nats://127.0.0.1:1", cluster = { a = 1 } })
    assert.matches(here .. "URL 1 must be a string nats://HOST:PORT %(or tls://%), got function$",
                   err { urls = { print } })
    assert.matches(here .. 'URL 1 must be a string nats://HOST:PORT %(or tls://%), got "127.0.0.1:4222"$',
                   err { urls = { "127.0.0.1:4222" } })
    assert.matches(here .. "tls must be a tcp.tls configuration or true, got \"yes\"$",
                   err { url = "tls://127.0.0.1:1", tls = "yes" })
    assert.matches(here .. "tls: the NATS connection cannot pin %(no pin%)$",
                   err { url = "tls://127.0.0.1:1", tls = require("market.tcp").tls{ pin = ("a"):rep(64) } })
    -- libnats checks one name for all the servers, and none unless told:
    -- several hosts took any trusted certificate from any of them.  Any
    -- tls:// URL makes it TLS, not the first only (the second list's
    -- tls:// went unchecked).
    local several = "tls: the URLs name 2 hosts %(a%.example, b%.example%), and libnats checks " ..
      "every server's certificate against one name: give tls%.server_name, a name all of their " ..
      "certificates carry$"
    assert.matches(here .. several, err { urls = { "tls://a.example:1", "tls://u:p@b.example:2",
                                                   "tls://A.example:3" } })
    assert.matches(here .. several, err { urls = { "nats://a.example:1", "tls://b.example:1" } })
    assert.matches(here .. several, err { urls = { "nats://a.example:1", "nats://b.example:1" },
                                          tls = true })
    -- (tls = false beside a tls:// URL: libnats spoke TLS, checking nothing)
    assert.matches(here .. "tls = false, but a URL says tls://$",
                   err { urls = { "nats://a.example:1", "tls://a.example:1" }, tls = false })
    local tcp = require "market.tcp"
    for _, ok in ipairs { { urls = { "tls://a.example:1", "tls://a.example:2" } },
                          { urls = { "tls://[::1]:1", "nats://[::1]:2" } },
                          { urls = { "tls://a.example:1", "tls://b.example:1" },
                            tls = tcp.tls{ server_name = "nats.example" } },
                          { urls = { "tls://a.example:1", "tls://b.example:1" },
                            tls = tcp.tls{ verify = false } } } do
      assert(pcall(cluster.driver, ok))
    end
    -- Every URL up to the list's length: a hole is no URL (it failed the
    -- driver later, in nats_connect, with "bad argument #1").
    assert.matches(here .. "URL 2 must be a string nats://HOST:PORT %(or tls://%), got nil$",
                   err { urls = { "nats://127.0.0.1:1", nil, "nats://127.0.0.1:2" } })
    -- A string is shown as one, not as the number it reads as.
    assert.matches(here .. 'heartbeat_ms must be a number of milliseconds above 0, got "500"$',
                   err { url = "nats://127.0.0.1:1", heartbeat_ms = "500" })
    assert.matches(here .. "lost_after_ms must be .*, got table$",
                   err { url = "nats://127.0.0.1:1", lost_after_ms = { x = 1 } })
    assert.matches(here .. "max_roles must be an integer above 0, got 0$",
                   err { url = "nats://127.0.0.1:1", max_roles = 0 })
    assert.matches(here .. "max_roles must be an integer above 0, got 1.5$",
                   err { url = "nats://127.0.0.1:1", max_roles = 1.5 })
    assert.matches(here .. 'max_nodes must be an integer above 0, got "9"$',
                   err { url = "nats://127.0.0.1:1", max_nodes = "9" })
    -- A misspelt key was ignored: the node was named after the host.
    assert.matches(here .. "no option nodes %(url, urls, cluster, node, heartbeat_ms, " ..
                   "lost_after_ms, max_roles, max_nodes, tls%)$",
                   err { url = "nats://127.0.0.1:1", nodes = "n1" })
    -- cluster.node names the last driver made: not one refused.
    local node = cluster.node
    err { url = "nats://127.0.0.1:1", node = "refused", lost_after_ms = -1 }
    assert.equal(node, cluster.node)
  end)

  it("speaks the documented protocol: a peer by hand, gaps repaired by snapshots", function()
    local market = require "market"
    -- Node z is this spec, speaking docs/cluster.md by hand.
    local a, z = by_hand(S.server())
    local function say(subject, ...) assert(z:publish(subject, market.to_cbor({ 2, ... }))) end
    -- hear(kind): the next message of that kind a sends us.
    local function hear(kind)
      local m
      assert(S.wait(function()
        local ev, _, data = z:next()
        if ev == "message" then
          local v = market.from_cbor(data)
          if v[2] == kind and v[3] == "a" then m = v end
        end
        return m
      end, 10), "no " .. kind .. " from a")
      return m
    end
    -- Heard of a first by its heartbeat: ask for a snapshot.
    hear("heartbeat")
    say("market.spec.node.a", "want", "z", 42)
    local snap = hear("snapshot")
    assert.equal("integer", math.type(snap[4]))              -- a's incarnation
    assert.equal(1, snap[5])                                  -- one announcement so far
    assert.same({ 1, "subscriber", "participant" }, { snap[6][1][1], snap[6][1][2], snap[6][1][3] })
    assert.equal('["p", _]', market.repr(snap[6][1][4]))
    say("market.spec.all", "hello", "z", 42, 1, { pub(1, "one") })
    a.wait('a presence publisher/participant market-cluster(["p", "one"])')
    hear("snapshot")                                  -- the answer to our hello
    say("market.spec.all", "add", "z", 42, 2, 2, "publisher", "participant", { "p", "two" })
    a.wait('a presence publisher/participant market-cluster(["p", "two"])')
    -- A gap (3 is lost): a asks for a snapshot and drops 4 until it comes.
    say("market.spec.all", "add", "z", 42, 4, 4, "publisher", "participant", { "p", "four" })
    hear("want")
    S.sleep(0.3)
    assert.is_false(a.has("four"))
    say("market.spec.node.a", "snapshot", "z", 42, 4, { pub(1, "one"), pub(3, "three"), pub(4, "four") })
    a.wait('a presence publisher/participant market-cluster(["p", "four"])')
    a.wait('a absence publisher/participant market-cluster(["p", "two"]) nil')
    assert.truthy(a.has('a presence publisher/participant market-cluster(["p", "three"])'))
    -- A heartbeat that says we are further on: another question.
    say("market.spec.all", "heartbeat", "z", 42, 5)
    hear("want")
    -- A new incarnation of z: the old one's roles are lost.
    say("market.spec.all", "hello", "z", 43, 0, {})
    a.wait('a absence publisher/participant market-cluster(["p", "one"]) cluster: node z lost (restarted)')
    assert.equal(4, a.count("presence"))
    assert.equal(4, a.count("absence"))
    -- The old incarnation still talking (late, or another node under z's
    -- name): ignored with a warning, so nothing flaps; nor does its bye
    -- end the new one.
    say("market.spec.all", "add", "z", 43, 1, 1, "publisher", "participant", { "p", "new" })
    a.wait('a presence publisher/participant market-cluster(["p", "new"])')
    say("market.spec.all", "hello", "z", 42, 9, { pub(1, "old") })
    say("market.spec.all", "bye", "z", 42)
    a.wait("ignoring node z's incarnation 42, which a later one replaced")
    S.sleep(0.3)
    assert.is_false(a.has('"old"'))
    assert.is_false(a.has("cluster: node z left"))
    -- Another node under a's own name: a says so, and hears none of it.
    say("market.spec.all", "hello", "a", 1, 1, { pub(1, "impostor") })
    a.wait("market.cluster: another node calls itself a")
    assert.is_false(a.has("impostor"))
    -- A hello in parts is taken once its last part is in; a part out of
    -- turn (x's 1 of 2 lost) is not taken at all.
    say("market.spec.all", "hello-part", "x", 7, 1, 2, 2, { pub(1, "x-half") })
    say("market.spec.all", "hello-part", "y", 8, 2, 1, 2, { pub(1, "y1") })
    S.sleep(0.3)
    assert.is_false(a.has("y1"))
    say("market.spec.all", "hello-part", "y", 8, 2, 2, 2, { pub(2, "y2") })
    a.wait('a presence publisher/participant market-cluster(["p", "y2"])')
    assert.truthy(a.has('a presence publisher/participant market-cluster(["p", "y1"])'))
    assert.is_false(a.has("x-half"))
    z:close()
  end)

  it("gives up a hello in parts whose last part does not come, and asks for a snapshot", function()
    -- The node's adds, dels and heartbeats are held from part 1 on: with
    -- the last part lost (or a part 1 forged in its name, which any NATS
    -- client may publish), they were held for ever and nothing asked for
    -- a snapshot, so its roles froze as they were.
    local market = require "market"
    local a, z = by_hand(S.server())
    local function say(subject, ...) assert(z:publish(subject, market.to_cbor({ 2, ... }))) end
    assert(S.wait(function() return z:next() == "message" end, 10), "nothing from a")
    say("market.spec.all", "hello-part", "z", 42, 1, 1, 2, { pub(1, "one") })   -- 2 of 2 never comes
    say("market.spec.all", "add", "z", 42, 2, 2, "publisher", "participant", { "p", "two" })
    -- z's heartbeats keep it known; a asks once it gives the parts up
    -- (lost_after_ms, 2 s, after part 1).
    local asked, beats = false, 0
    assert(S.wait(function()
      beats = beats + 1
      if beats % 4 == 0 then say("market.spec.all", "heartbeat", "z", 42, 2) end
      repeat
        local ev, subject, data = z:next()
        local m = ev == "message" and subject == "market.spec.node.z" and market.from_cbor(data)
        asked = asked or (m and m[2] == "want" and m[3] == "a")
      until not ev
      return asked
    end, 10), "a never asked z for a snapshot")
    say("market.spec.node.a", "snapshot", "z", 42, 2, { pub(1, "one"), pub(2, "two") })
    a.wait('a presence publisher/participant market-cluster(["p", "two"])')
    assert.truthy(a.has('a presence publisher/participant market-cluster(["p", "one"])'))
    assert.is_false(a.has("node z lost"))
    z:close()
  end)

  it("ends a node's stand-ins in the order they were made, not by id", function()
    -- A snapshot's leftovers and a forgotten node's roles are walked in
    -- the order of their adds: never collected and sorted, which held the
    -- VM 20 to 45 ms longer for a node of 95,000 roles.
    local market = require "market"
    local a, z = by_hand(S.server())
    local function say(...) assert(z:publish("market.spec.all", market.to_cbor({ 2, ... }))) end
    local function absent(x, why)
      return ('a absence publisher/participant market-cluster(["p", "%s"]) %s'):format(x, why)
    end
    local out
    local function at(line) return assert(out:find(line, 1, true), line .. " missing from\n" .. out) end
    -- (a's driver is in the cluster once it speaks: a hello before then is lost)
    assert(S.wait(function() return z:next() == "message" end, 10), "nothing from a")
    say("hello", "z", 42, 1, { pub(9, "nine"), pub(2, "two"), pub(5, "five"), pub(7, "seven"), pub(4, "four") })
    a.wait('a presence publisher/participant market-cluster(["p", "four"])')
    say("del", "z", 42, 2, 2)
    a.wait(absent("two", "nil"))
    say("add", "z", 42, 3, 1, "publisher", "participant", { "p", "one" })
    a.wait('a presence publisher/participant market-cluster(["p", "one"])')
    -- A snapshot that keeps five and four: nine, seven and one go, so.
    say("snapshot", "z", 42, 4, { pub(5, "five"), pub(4, "four") })
    a.wait(absent("one", "nil"))
    out = a.out()
    assert.is_true(at(absent("nine", "nil")) < at(absent("seven", "nil")))
    assert.is_true(at(absent("seven", "nil")) < at(absent("one", "nil")))
    say("bye", "z", 42)
    a.wait(absent("four", "cluster: node z left"))
    out = a.out()
    assert.is_true(at(absent("five", "cluster: node z left")) < at(absent("four", "cluster: node z left")))
    z:close()
  end)

  it("makes examples/chat.lua on --workers 2 with --cluster one room", function()
    local srv = S.server()
    local probe = assert(sys().tcp_listen(0))     -- a free port, given to both workers
    local port = probe:local_port()
    probe:close()
    local w = S.node(nil, { url = srv.url, name = "w", file = "examples/chat.lua", args = tostring(port),
                            options = "--workers 2" })
    assert(S.wait(function() return w.count("listening on port " .. port) == 2 end, 15), w.out())
    S.sleep(1)             -- the two drivers meet (hello, snapshots)
    local out = two_chatters(port, port)
    -- Which worker took which user is the kernel's choice: names say it.
    local a, b = out:match("^welcome, you are (user%d@w%-%d); here: nobody else\n.*|\nwelcome, you are (user%d@w%-%d); ")
    assert(a and b, out)
    assert.equal(table.concat({
      ("welcome, you are %s; here: nobody else"):format(a),
      b .. " joined", b .. ": hi A", b .. " left", "|",
      ("welcome, you are %s; here: %s"):format(b, a), a .. ": hello all", "" }, "\n"), out)
    S.stop(w.pid)          -- the parent passes SIGTERM on; both workers leave
  end)
end)

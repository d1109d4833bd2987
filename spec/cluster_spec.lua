-- The cluster driver over NATS (docs/cluster.md, DESIGN §7): nats-server
-- on loopback, market nodes as separate OS processes.
local S = require "spec.support.nats"

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

describe("the NATS connection (market.sys, drivers/lcluster.c)", function()
  after_each(S.cleanup)

  it("publishes and delivers through a queue, byte strings intact", function()
    local srv = S.server()
    local a = assert(sys().nats_connect({ srv.url }, "a"))
    local b = assert(sys().nats_connect({ srv.url }, "b"))
    assert.equal("integer", math.type(b:fd()))
    local sid = assert(b:subscribe("spec.x"))
    assert.is_nil(b:next())                -- nothing yet
    S.sleep(0.2)                           -- the subscription reaches the server
    assert.is_true(a:publish("spec.x", "one\0two"))
    assert.is_true(a:publish("spec.y", "not subscribed"))
    assert.is_true(a:publish("spec.x", ""))
    assert.same({ "message", "spec.x", "one\0two" }, { next_event(b) })
    assert.same({ "message", "spec.x", "" }, { next_event(b) })
    b:unsubscribe(sid)
    assert.has_error(function() b:unsubscribe(sid) end)
    a:close()
    b:close()
    b:close()                              -- twice is fine
    assert.has_error(function() b:publish("spec.x", "") end, "the NATS connection is closed")
  end)

  it("says nil and why when no server answers", function()
    local srv = S.server()
    local port = srv.port
    S.stop(srv.pid)
    local c, err = sys().nats_connect({ "nats://127.0.0.1:" .. port }, "c", 500)
    assert.is_nil(c)
    assert.matches("no server", err)
  end)

  it("reports disconnection and reconnection, and resubscribes", function()
    local srv = S.server()
    local a = assert(sys().nats_connect({ srv.url }, "a"))
    local b = assert(sys().nats_connect({ srv.url }, "b"))
    assert(b:subscribe("spec.x"))
    S.stop(srv.pid)
    assert.equal("disconnected", (next_event(b)))
    local again = S.server({ port = srv.port })
    assert.equal("reconnected", (next_event(b, 15)))
    assert.equal("disconnected", (next_event(a)))
    assert.equal("reconnected", (next_event(a, 15)))
    S.sleep(0.2)
    assert.is_true(a:publish("spec.x", "after"))
    assert.same({ "message", "spec.x", "after" }, { next_event(b) })
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
end)

-- messages_spec.lua: send, feedback, matching, wildcards, no buffering,
-- edges not counts (DESIGN §1 "Messages", §2).
package.path = "spec/support/?.lua;" .. package.path
local market = require "market"
local H = require "helpers"
local _ = market._
local T = market.transition

local function holder(name, ...)
  local acts = table.pack(...)
  return market.spawn(function() return T(0, table.unpack(acts, 1, acts.n)) end, { name = name })
end

-- An endpoint that logs "<who> <endpoint> <message>" for each message.
local function rx(log, who)
  return { name = who, on_message = function(s, m, ep)
    log("%s %s %s", who, ep, market.repr(m))
  end }
end

describe("send", function()
  it("reaches every matching subscriber, whatever its interest, the sender's own included",
     function()
    local log = H.log()
    H.ground(function()
      H.step(holder("subs",
        market.subscriber({ "m", _ }, rx(log, "participant")),
        market.observe_publishers({ "m", _ }, rx(log, "observer")),
        market.observe_publishers_everything({ "m", _ }, rx(log, "everything")),
        market.publisher({ "m", _ }, rx(log, "publisher")),            -- not a subscriber
        market.subscriber({ "other", _ }, rx(log, "nomatch"))))
      H.step(holder("sender", market.subscriber({ "m", "self" }, rx(log, "own")),
        market.subscriber("go", { on_message = function(s)
          return T(s, market.send({ "m", "self" }))
        end })))
      H.step(market.send("go"))
    end)
    table.sort(log.lines)
    assert.same({ 'everything everything ["m", "self"]', 'observer observer ["m", "self"]',
                  'own own ["m", "self"]', 'participant participant ["m", "self"]' }, log.lines)
  end)

  it("a process with several matching endpoints gets one delivery per endpoint, " ..
     "each naming its endpoint (edges, not counts)", function()
    local log = H.log()
    H.ground(function()
      H.step(holder("twice",
        market.subscriber({ "d", 1 }, rx(log, "first")),
        market.subscriber({ "d", 1 }, rx(log, "second")),   -- a duplicate role, another name
        market.subscriber({ "d", _ }, rx(log, "wild"))))
      H.step(market.send({ "d", 1 }))
    end)
    assert.same({ 'first first ["d", 1]', 'second second ["d", 1]', 'wild wild ["d", 1]' },
                log.lines)
  end)

  it("needs no endpoint of the sender's own, and is gone if nobody matches (no buffering)",
     function()
    local log = H.log()
    H.ground(function()
      market.perform(market.send({ "early", 1 }))         -- before anyone listens
      H.settle()
      H.step(holder("late", market.subscriber({ "early", _ }, rx(log, "late"))))
      H.step(market.send({ "early", 2 }))
    end)
    assert.same({ 'late late ["early", 2]' }, log.lines)
  end)

  it("events of one sender arrive in the order sent", function()
    local log = H.log()
    H.ground(function()
      H.step(holder("l", market.subscriber({ "seq", _ }, rx(log, "l"))))
      local acts = {}
      for i = 1, 20 do acts[i] = market.send({ "seq", i }) end
      H.step(table.unpack(acts))
    end)
    assert.equal(20, #log.lines)
    for i = 1, 20 do assert.equal(('l l ["seq", %d]'):format(i), log.lines[i]) end
  end)
end)

-- A record crosses into the receiving handler as the box the sender sent,
-- not a copy per delivery (lproc.c, pushmessage): boxes are immutable, and
-- a box kept beyond its activation, by the sender or any receiver, stays
-- whole after the others let theirs go.
describe("records delivered to handlers", function()
  local rec = market.record("shared", "n", "data")

  it("are the box the sender sent, for every receiver", function()
    local got, sent = {}, nil
    H.ground(function()
      local function keeper(who)
        return market.subscriber(rec(_, _), { on_message = function(_, m) got[who] = m end })
      end
      H.step(holder("a", keeper("a")), holder("b", keeper("b")))
      sent = rec(1, "x")
      H.step(market.send(sent))
    end)
    assert.is_true(rawequal(sent, got.a))
    assert.is_true(rawequal(sent, got.b))
  end)

  it("stay whole when kept in state beyond the activation and sent again later", function()
    local log = H.log()
    H.ground(function()
      -- keeper stores every record it gets; on "replay" it sends them all
      -- again, to an echo endpoint that logs what it reads from them.
      H.step(market.spawn(function()
        return T({}, market.subscriber(rec(_, _), { on_message = function(kept, m)
          kept[#kept + 1] = m
          return T(kept)
        end }), market.subscriber("replay", { on_message = function(kept)
          local acts = {}
          for i, m in ipairs(kept) do acts[i] = market.send({ "again", m }) end
          return T(kept, acts)
        end }))
      end, { name = "keeper" }))
      H.step(holder("reader", market.subscriber({ "again", _ }, { on_message = function(_, m)
        log("%d %s %s", m[2].n, m[2].data, tostring(m[2]))
      end })))
      -- Senders that make a record per message and quit: nothing but the
      -- keeper's state holds the records once they are collected.
      for i = 1, 3 do
        H.step(market.spawn(function()
          market.perform(market.send(rec(i, ("payload %d"):format(i))))
        end))
      end
      collectgarbage()
      collectgarbage()
      H.step(market.send("replay"))
      collectgarbage()
      H.step(market.send("replay"))
    end)
    local once = { '1 payload 1 shared(1, "payload 1")', '2 payload 2 shared(2, "payload 2")',
                   '3 payload 3 shared(3, "payload 3")' }
    assert.same({ once[1], once[2], once[3], once[1], once[2], once[3] }, log.lines)
  end)
end)

describe("feedback", function()
  it("reaches publishers (of any interest), never subscribers", function()
    local log = H.log()
    H.ground(function()
      H.step(holder("eps",
        market.publisher({ "f", _ }, rx(log, "publisher")),
        market.observe_subscribers({ "f", _ }, rx(log, "observer")),
        market.observe_subscribers_everything({ "f", _ }, rx(log, "everything")),
        market.subscriber({ "f", _ }, rx(log, "subscriber"))))
      H.step(market.feedback({ "f", "back" }))
    end)
    table.sort(log.lines)
    assert.same({ 'everything everything ["f", "back"]', 'observer observer ["f", "back"]',
                  'publisher publisher ["f", "back"]' }, log.lines)
  end)

  it("and send does not reach publishers", function()
    local log = H.log()
    H.ground(function()
      H.step(holder("p", market.publisher({ "f", _ }, rx(log, "publisher")),
                    market.subscriber({ "f", _ }, rx(log, "subscriber"))))
      H.step(market.send({ "f", 1 }), market.feedback({ "f", 2 }))
    end)
    assert.same({ 'subscriber subscriber ["f", 1]', 'publisher publisher ["f", 2]' }, log.lines)
  end)
end)

describe("matching", function()
  local function deliveries(topics, messages)
    local log = H.log()
    H.ground(function()
      local acts = {}
      for i, t in ipairs(topics) do acts[i] = market.subscriber(t, rx(log, "s" .. i)) end
      H.step(holder("subs", table.unpack(acts)))
      local sends = {}
      for i, m in ipairs(messages) do sends[i] = market.send(m) end
      H.step(table.unpack(sends))
    end)
    local seen = {}
    for _, l in ipairs(log.lines) do seen[#seen + 1] = l:match("^(%S+)") .. " <- " .. l:match("%S+ %S+ (.*)") end
    return seen
  end

  it("a wildcard in a topic matches anything there, at any depth", function()
    local rec = market.record("pair", "a", "b")
    local got = deliveries({ _, rec(1, _), rec(_, { "x", _ }), rec(2, _), { 1, _ } },
                           { rec(1, { "x", "y" }) })
    table.sort(got)
    assert.same({ 's1 <- pair(1, ["x", "y"])', 's2 <- pair(1, ["x", "y"])',
                  's3 <- pair(1, ["x", "y"])' }, got)
  end)

  it("a wildcard in a message body reaches every topic it unifies with", function()
    local log = deliveries({ { "a", 1 }, { "b", 1 }, { "a", 2 }, { _, _ }, { _, 3 }, "a", { _, 1, _ } },
                           { { _, 1 } })
    table.sort(log)
    assert.same({ 's1 <- [_, 1]', 's2 <- [_, 1]', 's4 <- [_, 1]' }, log)
  end)

  -- A message that is the wildcard reaches every subscriber of the
  -- program, the drivers' own among them.  They took it for what their
  -- subscriptions stand for: the stdio driver died reading its fields,
  -- listeners and udp sockets took it for their stop, timer.sleep for its
  -- expiry, a connecting tcp connection for its connect timeout.  Each is
  -- checked on after a send(_) and a feedback(_).
  it("the wildcard as a message is no command to the drivers, nor a timer's expiry", function()
    local H = require "helpers"
    local status, out, err = H.run_script([[
local market = require "market"
local timer = require "market.timer"
local tcp = require "market.tcp"
local udp = require "market.udp"
local stdio = require "market.stdio"
local _ = market._
local T = market.transition_no_state
market.perform(market.spawn(stdio.driver, { name = "stdio" }))
local lis = tcp.listener(tcp.address("127.0.0.1", 0))
local port
market.perform(market.observe_publishers(tcp.channel(_, lis, _), { name = "acc",
  on_presence = function(_s, role)
    return T(market.subscriber(tcp.channel(role.topic.source, lis, _), { on_message = function(_s2, m)
      -- (the wildcard comes here too)
      if tcp.channel:is(m) and type(m.subpacket) == "string" then print("tcp got " .. m.subpacket) end
    end }))
  end }),
  market.subscriber(tcp.listening(lis.port, _), { name = "l", on_presence = function(_s, role)
    port = role.topic.bound_port end }))
local me = udp.listener(0)
market.perform(market.subscriber(udp.packet(_, me, _), { name = "u",
  on_message = function(_s, m) if udp.packet:is(m) then print("udp got " .. m.body) end end }),
  market.publisher(stdio.stdout(_), { name = "out" }))
local uport
market.perform(market.subscriber(udp.bound(me, _), { on_presence = function(_s, role)
  uport = role.topic.port end }))
timer.sleep(50)
local t0 = market.now()
market.perform(market.spawn(function()
  timer.sleep(300)
  print(("sleeper woke after %s"):format(market.now() - t0 >= 300 and "300 ms or more" or "less"))
end))
timer.sleep(20)
market.perform(market.send(_), market.feedback(_))
timer.sleep(100)
market.perform(market.send(stdio.stdout("stdout still written\n")))
local client, server = tcp.handle("client"), tcp.address("127.0.0.1", port)
market.perform(market.subscriber(tcp.channel(server, client, _)),
  market.publisher(tcp.channel(client, server, _), { name = "cout" }))
market.wait_for(function(ev) return ev.type == "presence" and ev.endpoint == "cout" end)
market.perform(market.send(tcp.channel(client, server, "hello\n")))
market.perform(market.send(udp.packet(me, udp.remote_address("127.0.0.1", uport), "hello")))
timer.sleep(400)
market.perform(market.exit(0))
]], "")
    assert.equal(0, status, err)
    local lines = {}
    for l in out:gmatch("[^\n]+") do lines[#lines + 1] = l end
    table.sort(lines)
    assert.same({ "sleeper woke after 300 ms or more", "stdout still written", "tcp got hello",
                  "udp got hello" }, lines)
    assert.is_nil(err:find("failed", 1, true), err)
  end)

  it("the message arrives as sent, wildcards included (not refined to the topic)", function()
    assert.same({ 's1 <- ["q", _]' }, deliveries({ { "q", 5 } }, { { "q", _ } }))
  end)

  it("sequences match only sequences of the same length", function()
    assert.same({ 's2 <- [1, 2]' },
                deliveries({ { 1 }, { 1, 2 }, { 1, 2, 3 }, { { 1, 2 } } }, { { 1, 2 } }))
  end)

  it("records match by label and arity, field by field", function()
    local a2 = market.record("a", "x", "y")
    local a1 = market.record("a", "x")
    local b2 = market.record("b", "x", "y")
    assert.same({ "s1 <- a(1, 2)", "s4 <- a(1, 2)" },
                deliveries({ a2(1, 2), a1(1), b2(1, 2), a2(_, _), a2(1, 3), { 1, 2 } },
                           { a2(1, 2) }))
  end)

  it("3.0 and 3 are the same term; a float that is not integral is not", function()
    assert.same({ "s1 <- 3", "s2 <- 3", "s3 <- 3.5" },
                deliveries({ 3, 3.0, 3.5 }, { 3.0, 3.5 }))
  end)

  it("strings are byte strings: embedded zeros and high bytes match exactly", function()
    assert.same({ 's1 <- "a\\x00b\\xff"' },
                deliveries({ "a\0b\255", "a\0c\255", "a" }, { "a\0b\255" }))
  end)

  it("booleans, nil and EOF are distinct atoms", function()
    local l = deliveries({ true, false, market.EOF, "nil-holder" }, { false, market.EOF })
    assert.same({ "s2 <- false", "s3 <- #eof" }, l)
  end)
end)

describe("delivery to an endpoint deleted before the event is handled", function()
  it("is dropped, even if an endpoint of the same name is added again", function()
    local log = H.log()
    H.ground(function()
      H.step(holder("p", market.subscriber({ "x", _ }, { name = "e", on_message = function(s, m)
        log("old handler %s", m)
        if m[2] == 1 then
          return T(s, market.delete_endpoint("e"), market.subscriber({ "x", _ }, {
            name = "e", on_message = function(s2, m2) log("new handler %s", m2) end }))
        end
      end })))
      -- 1, 2 and 3 are queued for the first endpoint before it handles 1.
      H.step(market.send({ "x", 1 }), market.send({ "x", 2 }), market.send({ "x", 3 }))
      H.step(market.send({ "x", 4 }))
    end)
    assert.same({ 'old handler ["x", 1]', 'new handler ["x", 4]' }, log.lines)
  end)

  it("presence for an endpoint added and deleted in one transition is dropped; " ..
     "its peers see presence then absence; it hears its own absence", function()
    local log = H.log()
    H.ground(function()
      H.step(holder("peer", market.subscriber({ "blip", _ }, H.logging(log, "peer"))))
      H.step(holder("blipper", market.publisher({ "blip", 1 }, H.logging(log, "blipper",
        { name = "b" })), market.delete_endpoint("b", "blink")))
    end)
    assert.same({ 'peer presence #1 publisher/participant ["blip", 1]',
                  'blipper absence b subscriber/participant ["blip", 1] blink',
                  'peer absence #1 publisher/participant ["blip", 1] blink' }, log.lines)
  end)
end)

describe("handler tables", function()
  it("may supply handlers through a metatable", function()
    local log = H.log()
    H.ground(function()
      local handlers = setmetatable({ name = "e" }, { __index = {
        on_message = function(s, m) log("got %s", m) end } })
      H.step(holder("p", market.subscriber({ "x", _ }, handlers)))
      H.step(market.send({ "x", 1 }))
    end)
    assert.same({ 'got ["x", 1]' }, log.lines)
  end)

  it("which handlers an endpoint has is fixed when it is added; " ..
     "a handler replaced later is the one called", function()
    local log = H.log()
    H.ground(function()
      local late = { name = "late" }
      local swapped = { name = "swapped", on_message = function() log("first") end }
      H.step(holder("p", market.subscriber({ "x", _ }, late),
                         market.subscriber({ "y", _ }, swapped)))
      late.on_message = function() log("late") end        -- too late: no handler at add
      swapped.on_message = function() log("second") end
      H.step(market.send({ "x", 1 }), market.send({ "y", 1 }))
    end)
    assert.same({ "second" }, log.lines)
  end)

  -- A presence or absence handler of a plain table is the activation's
  -- body (lproc.c, peerhandler); tables with a metatable, even one set
  -- after the add, go through market.lua's dispatch.  Each way, a
  -- handler gets the role, in whatever way it takes its arguments.
  it("presence and absence handlers get the role however they are found and declared",
     function()
    local log = H.log()
    local function show(...)
      local n, role = select("#", ...), select(2, ...)
      return ("%d args, %s"):format(n, H.role(role))
    end
    H.ground(function()
      local later = { on_presence = function(...) log("later %s", show(...)) end }
      local swapped = { on_absence = function() log("replaced") end }
      H.step(holder("p",
        market.subscriber({ "r", _ }, { name = "varargs",
          on_presence = function(...) log("varargs %s", show(...)) end,
          on_absence = function(...) log("varargs gone %s", show(...)) end }),
        market.subscriber({ "r", _ }, setmetatable({ name = "meta" }, { __index = {
          on_presence = function(s, role) log("meta %s", H.role(role)) end,
          on_absence = function(s, role, reason) log("meta gone %s %s", H.role(role), reason) end,
        } })),
        market.subscriber({ "r", _ }, { name = "named",
          on_presence = function(s, role, ep) log("%s %s", ep, H.role(role)) end }),
        market.subscriber({ "r", _ }, later),
        market.subscriber({ "r", _ }, swapped)))
      setmetatable(later, {})
      swapped.on_absence = function(s, role, reason, ep)
        log("replaced %s %s %s", ep, H.role(role), reason)
      end
      local pid = market.perform(market.spawn(function()
        return T(0, market.publisher({ "r", 1 }))
      end))
      H.settle()
      H.step(market.quit(pid, "bye"))
    end)
    table.sort(log.lines)
    assert.same({
      'later 3 args, publisher/participant ["r", 1]',
      'meta gone publisher/participant ["r", 1] bye',
      'meta publisher/participant ["r", 1]',
      'named publisher/participant ["r", 1]',
      'replaced #2 publisher/participant ["r", 1] bye',
      'varargs 3 args, publisher/participant ["r", 1]',
      'varargs gone 4 args, publisher/participant ["r", 1]',
    }, log.lines)
  end)

  -- A message handler of a plain table is the activation's body, as a
  -- presence handler is (lproc.c, messagehandler), and a transition of
  -- sends alone that it returns is applied in C after it returns; other
  -- tables, other handlers and other transitions go through market.lua.
  -- Every way, the handler gets (state, message, endpoint) and nothing
  -- more, and its transition is applied in order.
  it("a message handler runs with no frame of market.lua's under it", function()
    local frames
    H.ground(function()
      H.step(holder("p", market.subscriber({ "x", _ }, { name = "in", on_message = function()
        local t, level = {}, 1
        local info = debug.getinfo(level, "S")
        while info do
          t[#t + 1] = info.what == "C" and "C" or info.short_src:match("[^/]*$")
          level = level + 1
          info = debug.getinfo(level, "S")
        end
        frames = table.concat(t, " ")
      end })))
      H.step(market.send({ "x", 1 }))
    end)
    -- Before, market.lua's deliver lay under it: "messages_spec.lua market".
    assert.equal("messages_spec.lua", frames)
  end)

  it("message handlers get state, message and endpoint however they are found and declared",
     function()
    local log = H.log()
    local function show(...)
      local n, s, m, ep = select("#", ...), ...
      return ("%d args, %s %s %s"):format(n, s, market.repr(m), ep)
    end
    H.ground(function()
      local later = { name = "later", on_message = function(...) log("later %s", show(...)) end }
      local callable = { name = "callable", on_message = function() end }
      H.step(holder("p",
        market.subscriber({ "x", _ }, { name = "varargs",
          on_message = function(...) log("varargs %s", show(...)) end }),
        market.subscriber({ "x", _ }, setmetatable({ name = "meta" }, { __index = {
          on_message = function(...) log("meta %s", show(...)) end } })),
        market.subscriber({ "x", _ }, later),
        market.subscriber({ "x", _ }, callable)))
      setmetatable(later, {})
      callable.on_message = setmetatable({}, { __call = function(_, ...)
        log("callable %s", show(...))
      end })
      H.step(market.send({ "x", 1 }))
    end)
    table.sort(log.lines)
    assert.same({ 'callable 3 args, 0 ["x", 1] callable',
                  'later 3 args, 0 ["x", 1] later',
                  'meta 3 args, 0 ["x", 1] meta',
                  'varargs 3 args, 0 ["x", 1] varargs' }, log.lines)
  end)

  it("a message handler's transition is applied in order, whatever it holds", function()
    local log = H.log()
    H.ground(function()
      H.step(holder("logger", market.subscriber({ "out", _ }, { on_message = function(_, m)
        log("%s", m)
      end })))
      H.step(holder("p", market.subscriber({ "in", _ }, { on_message = function(n, m)
        local what = m[2]
        if what == "sends" then       -- sends alone, with nothing between them
          return T(n + 1, market.send({ "out", n .. "a" }), nil, false,
                   market.send({ "out", n .. "b" }))
        elseif what == "mixed" then   -- a send, another action, a send
          return T(n + 1, market.send({ "out", n .. "a" }), market.spawn(function()
            return T(nil, market.send({ "out", "spawned" }))
          end), market.send({ "out", n .. "b" }))
        elseif what == "keep" then    -- no state: the state stays
          return market.transition_no_state(market.send({ "out", n .. "kept" }))
        elseif what == "waits" then   -- waits, then returns sends
          local ev = market.yield()
          return T(n + 1, market.send({ "out", n .. " after " .. ev.type }))
        end
      end })))
      for _, what in ipairs({ "sends", "keep", "mixed", "waits", "sends" }) do
        H.step(market.send({ "in", what }))
      end
      H.step(holder("q", market.publisher({ "in", "x" })))
    end)
    assert.same({ '["out", "0a"]', '["out", "0b"]', '["out", "1kept"]', '["out", "1a"]',
                  '["out", "1b"]', '["out", "spawned"]', '["out", "2a"]', '["out", "2b"]',
                  '["out", "2 after presence"]' }, log.lines)
  end)

  it("a transition of sends changed through the debug library since is applied as it is",
     function()
    -- C applies a transition made of sends alone; one whose action was
    -- replaced since (here by a list) has the rest applied by market.lua.
    local log = H.log()
    H.ground(function()
      H.step(holder("logger", market.subscriber({ "out", _ }, { on_message = function(_, m)
        log("%s", m)
      end })))
      local tr = market.transition_no_state(market.send({ "out", 1 }),
        market.send({ "out", 2 }), market.send({ "out", 3 }))
      debug.setuservalue(tr, { market.send({ "out", "a" }), market.send({ "out", "b" }) }, 2)
      H.step(holder("p", market.subscriber({ "in", _ }, { on_message = function() return tr end })))
      H.step(market.send({ "in", 1 }))
    end)
    assert.same({ '["out", 1]', '["out", "a"]', '["out", "b"]', '["out", 3]' }, log.lines)
  end)

  it("an event no handler takes still reaches straight-line code in market.yield()",
     function()
    local log = H.log()
    H.ground(function()
      H.step(market.spawn(function()
        market.perform(market.subscriber({ "x", _ }, { name = "bare" }))
        local ev = market.yield()
        while ev.type ~= "message" do ev = market.yield() end
        log("%s %s %s", ev.type, ev.endpoint, ev.message)
      end))
      H.step(market.send({ "x", 1 }))
    end)
    assert.same({ 'message bare ["x", 1]' }, log.lines)
  end)
end)

describe("events for endpoints without a handler", function()
  -- A process with a bare endpoint, whose "go" handler waits for an event.
  local function waiter(log)
    return holder("p", market.subscriber({ "x", _ }, { name = "bare" }),
      market.subscriber("go", { name = "go", on_message = function()
        local ev = market.yield()
        log("%s %s %s", ev.type, ev.endpoint, ev.message)
      end }))
  end

  it("are kept for a handler that waits in market.yield() when they arrive behind " ..
     "the event it handles", function()
    local log = H.log()
    H.ground(function()
      H.step(waiter(log))
      H.step(market.send("go"), market.send({ "x", 1 }))
    end)
    assert.same({ 'message bare ["x", 1]' }, log.lines)
  end)

  it("are dropped when they find the process idle", function()
    local log = H.log()
    H.ground(function()
      H.step(waiter(log))
      H.step(market.send({ "x", 1 }))
      H.step(market.send("go"))
      H.step(market.send({ "x", 2 }))
    end)
    assert.same({ 'message bare ["x", 2]' }, log.lines)
  end)
end)

-- Consecutive events for one process are handled on one resume
-- (docs/architecture.md, "The message path"): these pin what must not
-- change with that, whatever the queue holds.
describe("a burst of events for one process", function()
  -- A process "name" logging "<name> <n>" for each {tag, n}; on_n(n, s)
  -- may return a transition, or do anything else.
  local function counter(log, name, tag, on_n)
    return holder(name, market.subscriber({ tag, _ }, { name = "in", on_message = function(s, m)
      log("%s %s", name, market.repr(m[2]))
      if on_n then return on_n(m[2], s) end
    end }))
  end

  local function sends(tag, ...)
    local t = {}
    for i, n in ipairs({ ... }) do t[i] = market.send({ tag, n }) end
    return table.unpack(t)
  end

  it("is handled in the queue's order, others' events and the events it causes " ..
     "where they were queued", function()
    local log = H.log()
    H.ground(function()
      H.step(counter(log, "A", "a", function(n)
        if n == 2 then return T(0, market.send({ "b", "from A" })) end
      end), counter(log, "B", "b"))
      H.step(market.send({ "a", 1 }), market.send({ "a", 2 }), market.send({ "a", 3 }),
             market.send({ "b", 1 }), market.send({ "a", 4 }), market.send({ "a", 5 }),
             market.send({ "b", 2 }))
    end)
    assert.same({ "A 1", "A 2", "A 3", "B 1", "A 4", "A 5", "B 2", 'B "from A"' }, log.lines)
  end)

  it("ends where a handler fails: its process goes with the reason, and what is " ..
     "queued behind for it is not handled", function()
    local log = H.log()
    H.ground(function()
      H.step(counter(log, "A", "a", function(n) if n == 3 then error("boom at 3", 0) end end))
      H.step(market.observe_subscribers({ "a", _ }, { on_absence = function(s, r, reason)
        log("absence %s", reason)
      end }))
      H.step(sends("a", 1, 2, 3, 4, 5))
      H.step(counter(log, "C", "c"))
      H.step(market.send({ "c", 1 }))
    end, nil, { on_crash = function(r) log("crash %s", r.name) end })
    assert.same({ "A 1", "A 2", "A 3", "crash A", "absence boom at 3", "C 1" }, log.lines)
  end)

  it("ends where a handler quits its process or deletes the endpoint", function()
    local log = H.log()
    H.ground(function()
      H.step(counter(log, "A", "a", function(n, s)
        if n == 2 then return T(s, market.quit()) end
      end), counter(log, "D", "d", function(n, s)
        if n == 2 then return T(s, market.delete_endpoint("in")) end
      end), holder("keep", market.subscriber("never")))
      H.step(sends("a", 1, 2, 3, 4))
      H.step(sends("d", 1, 2, 3, 4))
    end)
    assert.same({ "A 1", "A 2", "D 1", "D 2" }, log.lines)
  end)

  it("goes to the handlers in place at each event: replaced in the table, or by a new add",
     function()
    local log = H.log()
    H.ground(function()
      local h = { name = "in" }
      function h.on_message(s, m)
        log("first %s", market.repr(m[2]))
        h.on_message = function(_, m2) log("second %s", market.repr(m2[2])) end
      end
      H.step(holder("A", market.subscriber({ "a", _ }, h)))
      H.step(sends("a", 1, 2))
      H.step(holder("B", market.subscriber({ "b", _ }, { name = "in", on_message = function(s, m)
        log("old %s", market.repr(m[2]))
        return T(s, market.subscriber({ "b", _ }, { name = "in", on_message = function(_, m2)
          log("new %s", market.repr(m2[2]))
        end }))
      end })))
      H.step(sends("b", 1, 2, 3))
    end)
    assert.same({ "first 1", "second 2", "old 1", "new 2", "new 3" }, log.lines)
  end)

  it("lets a handler wait: what arrives meanwhile reaches it, and the burst goes on after",
     function()
    local log = H.log()
    H.ground(function()
      H.step(holder("A", market.subscriber({ "a", _ }, { name = "in", on_message = function(s, m)
        log("start %s", market.repr(m[2]))
        if m[2] == 1 then
          market.pause()
          log("end 1")
          return T(s, market.send({ "b", "after 1" }))
        end
      end })), counter(log, "B", "b"))
      H.step(sends("a", 1, 2, 3))
      H.step(market.send({ "a", 4 }), market.send({ "a", 5 }), market.send({ "b", 1 }))
    end)
    assert.same({ "start 1", "start 2", "start 3", "end 1", 'B "after 1"',
                  "start 4", "start 5", "B 1" }, log.lines)
  end)

  it("drops the events for an endpoint without a handler of their kind, and handles the rest",
     function()
    local log = H.log()
    H.ground(function()
      H.step(holder("A", market.subscriber({ "a", _ }, { name = "in", on_message = function(s, m)
        log("in %s", market.repr(m[2]))
      end }), market.subscriber({ "a", 2 }, { name = "bare" })))
      H.step(sends("a", 1, 2, 3))
    end)
    assert.same({ "in 1", "in 2", "in 3" }, log.lines)
  end)

  -- n processes "w1".."wn" publishing {"w", i}, an observer of them all
  -- with the handlers h, then all n killed at once, wi with reason "ki".
  local function watched_go(n, h)
    local pids, quits = {}, {}
    for i = 1, n do
      pids[i] = market.perform(holder("w" .. i, market.publisher({ "w", i })))
    end
    H.settle()
    H.step(holder("obs", market.observe_publishers({ "w", _ }, h)))
    for i = 1, n do quits[i] = market.quit(pids[i], "k" .. i) end
    H.step(table.unpack(quits))
  end

  it("gives the role to each handler that can see it, whichever took the events before",
     function()
    local log = H.log()
    H.ground(function()
      local calls, h = 0, { name = "all" }
      function h.on_absence()               -- cannot see the role: gets none
        calls = calls + 1
        log("first")
        if calls == 2 then
          h.on_absence = function(_, role) log("then %s", market.repr(role.topic)) end
        end
      end
      watched_go(4, h)
    end)
    assert.same({ "first", "first", 'then ["w", 3]', 'then ["w", 4]' }, log.lines)
  end)

  it("is an observer's absences as what it watches is killed, each with its reason, " ..
     "in order, until its handler fails", function()
    local log = H.log()
    H.ground(function()
      watched_go(5, { on_absence = function(s, r, why)
        log("gone %s %s", market.repr(r.topic[2]), why)
        if why == "k4" then error("observer fails", 0) end
      end })
    end, nil, { on_crash = function(r) log("crash %s", r.name) end })
    assert.same({ "gone 1 k1", "gone 2 k2", "gone 3 k3", "gone 4 k4", "crash obs" }, log.lines)
  end)
end)

-- visibility_spec.lua: who sees whom (DESIGN §1 "Endpoints and roles":
-- visibility, presence, absence, refined roles, edges not counts).
package.path = "spec/support/?.lua;" .. package.path
local market = require "market"
local H = require "helpers"
local _ = market._

local INTERESTS = { "participant", "observer", "everything" }
local OTHER = { publisher = "subscriber", subscriber = "publisher" }
local CTOR = {
  publisher = { participant = market.publisher, observer = market.observe_subscribers,
                everything = market.observe_subscribers_everything },
  subscriber = { participant = market.subscriber, observer = market.observe_publishers,
                 everything = market.observe_publishers_everything },
}
local mx = market.record("mx", "a", "b")

-- DESIGN §1: L is told about R when R is a participant or L's interest is
-- everything.
local function sees(seer, seen) return seen == "participant" or seer == "everything" end

local function copy(t) local c = {} for i, v in ipairs(t) do c[i] = v end return c end

-- The two endpoints of a case: A is added first, B second.  Their topics
-- differ but unify; the intersection is mx("x", 1).
local TOPIC = { A = mx("x", _), B = mx(_, 1) }
local MEET = 'mx("x", 1)'

local function run_case(layout, oA, iA, iB, removal, first)
  local oB = OTHER[oA]
  local O = { A = oA, B = oB }
  local I = { A = iA, B = iB }
  local second = first == "A" and "B" or "A"
  local log = H.log()
  local function ep(who)
    return CTOR[O[who]][I[who]](TOPIC[who], H.logging(log, who, { name = who }))
  end
  local snapshot
  H.ground(function()
    if layout == "two processes" then
      local function proc(who)
        return H.controlled(who, {
          delete = function() return market.delete_endpoint(who, "bye") end,
          quit = function() return market.quit(nil, "bye") end,
          crash = function() error("boom", 0) end,
        }, ep(who))
      end
      log("step add A"); H.step(proc("A"))
      log("step add B"); H.step(proc("B"))
      log("step remove %s", first); H.step(H.ctl(first, removal))
      log("step remove %s", second); H.step(H.ctl(second, "delete"))
    else
      H.step(H.controlled("AB", {
        addA = function() return ep("A") end,
        addB = function() return ep("B") end,
        deleteA = function() return market.delete_endpoint("A", "bye") end,
        deleteB = function() return market.delete_endpoint("B", "bye") end,
        quit = function() return market.quit(nil, "bye") end,
        crash = function() error("boom", 0) end,
      }))
      log("step add A"); H.step(H.ctl("AB", "addA"))
      log("step add B"); H.step(H.ctl("AB", "addB"))
      log("step remove %s", first)
      H.step(H.ctl("AB", removal == "delete" and "delete" .. first or removal))
      log("step remove %s", second); H.step(H.ctl("AB", "delete" .. second))
    end
    log("end")
    snapshot = copy(log.lines)
  end)
  return snapshot
end

local function expected(layout, oA, iA, iB, removal, first)
  local O = { A = oA, B = OTHER[oA] }
  local I = { A = iA, B = iB }
  local second = first == "A" and "B" or "A"
  local function role(who) return O[who] .. "/" .. I[who] .. " " .. MEET end
  local e = { "step add A", "step add B" }
  -- The new endpoint's presence event comes first, then the old one's.
  if sees(I.B, I.A) then e[#e + 1] = "B presence B " .. role("A") end
  if sees(I.A, I.B) then e[#e + 1] = "A presence A " .. role("B") end
  e[#e + 1] = "step remove " .. first
  -- A deleted endpoint hears of the peer it saw (as in Marketplace), first;
  -- a departing process's own endpoints hear nothing.
  if removal == "delete" and sees(I[first], I[second]) then
    e[#e + 1] = ("%s absence %s %s bye"):format(first, first, role(second))
  end
  -- A deleted endpoint of a live process is heard of by every peer that saw it.
  local peer_hears = layout == "two processes" or removal == "delete"
  if peer_hears and sees(I[second], I[first]) then
    e[#e + 1] = ("%s absence %s %s %s"):format(second, second, role(first),
                                                removal == "delete" and "bye" or
                                                removal == "quit" and "bye" or "boom")
  end
  e[#e + 1] = "step remove " .. second
  e[#e + 1] = "end"
  return e
end

describe("visibility matrix", function()
  -- Every orientation x interest of both sides x which goes first x how it
  -- goes x same/different process: the exact events.
  for _, layout in ipairs { "two processes", "one process" } do
    for _, oA in ipairs { "publisher", "subscriber" } do
      for _, iA in ipairs(INTERESTS) do
        for _, iB in ipairs(INTERESTS) do
          for _, removal in ipairs { "delete", "quit", "crash" } do
            for _, first in ipairs { "A", "B" } do
              local name = ("%s: A=%s/%s then B=%s/%s, %s %s first"):format(
                layout, oA, iA, OTHER[oA], iB, removal, first)
              it(name, function()
                assert.same(expected(layout, oA, iA, iB, removal, first),
                            run_case(layout, oA, iA, iB, removal, first))
              end)
            end
          end
        end
      end
    end
  end
end)

local T = market.transition
local function holder(name, ...)
  local acts = table.pack(...)
  return market.spawn(function() return T(0, table.unpack(acts, 1, acts.n)) end, { name = name })
end

describe("no intersection, no events", function()
  it("same orientation never intersects, even with equal topics", function()
    local log = H.log()
    H.ground(function()
      H.step(holder("a", market.publisher("t", H.logging(log, "a")),
                         market.observe_publishers_everything("u", H.logging(log, "a"))))
      H.step(holder("b", market.publisher("t", H.logging(log, "b")),
                         market.observe_publishers_everything("u", H.logging(log, "b")),
                         market.subscriber("t", H.logging(log, "b-sub"))))
      log("end")
    end, log)
    -- Only the b-sub/publisher pairs (a's and b's own publisher) intersect.
    assert.same({
      'b-sub presence #3 publisher/participant "t"',
      'a presence #1 subscriber/participant "t"',
      'b-sub presence #3 publisher/participant "t"',
      'b presence #1 subscriber/participant "t"',
      "end" }, log.lines)
  end)

  it("topics that do not unify do not intersect", function()
    local log = H.log()
    H.ground(function()
      H.step(holder("a", market.publisher({ "x", 1 }, H.logging(log, "a")),
                         market.publisher({ "x", 1, 2 }, H.logging(log, "a")),
                         market.publisher(mx("x", 1), H.logging(log, "a"))))
      H.step(holder("b", market.observe_publishers_everything({ "x", 2 }, H.logging(log, "b")),
                         market.observe_publishers_everything({ "y", _ }, H.logging(log, "b")),
                         market.observe_publishers_everything(mx("x", 2), H.logging(log, "b"))))
      log("end")
    end, log)
    assert.same({ "end" }, log.lines)
  end)
end)

describe("presence", function()
  it("a new endpoint hears of every visible pre-existing peer, in its own process too",
     function()
    local log = H.log()
    H.ground(function()
      H.step(holder("p1", market.publisher({ "pre", 1 }, H.logging(log, "p1"))))
      H.step(holder("p2", market.publisher({ "pre", 2 }, H.logging(log, "p2")),
                          market.observe_subscribers({ "pre", 99 }, H.logging(log, "p2obs"))))
      H.step(holder("both", market.publisher({ "pre", 3 }, H.logging(log, "own")),
                            market.subscriber({ "pre", _ }, H.logging(log, "new"))))
      log("end")
    end, log)
    local lines = {}
    for i, l in ipairs(log.lines) do lines[i] = l end
    table.sort(lines)
    assert.same({
      "end",
      'new presence #2 publisher/participant ["pre", 1]',
      'new presence #2 publisher/participant ["pre", 2]',
      'new presence #2 publisher/participant ["pre", 3]',
      'own presence #1 subscriber/participant ["pre", 3]',
      'p1 presence #1 subscriber/participant ["pre", 1]',
      'p2 presence #1 subscriber/participant ["pre", 2]',
      'p2obs presence #2 subscriber/participant ["pre", 99]',
    }, lines)
    assert.equal("end", log.lines[#log.lines])
  end)

  it("the role is the peer's, its topic refined to the intersection, values readable",
     function()
    local chan = market.record("chan", "src", "dst", "data")
    local addr = market.record("addr", "host", "port")
    local listener = market.record("listener", "port")
    local seen
    H.ground(function()
      H.step(holder("server", market.observe_publishers(chan(_, listener(80), _), {
        on_presence = function(s, role, ep)
          seen = { role = role, ep = ep }
        end })))
      H.step(holder("conn", market.publisher(chan(addr("10.0.0.1", 5555), _, _))))
    end)
    assert.equal("publisher", seen.role.orientation)
    assert.equal("participant", seen.role.interest)
    assert.equal('chan(addr("10.0.0.1", 5555), listener(80), _)', market.repr(seen.role.topic))
    assert.equal("10.0.0.1", seen.role.topic.src.host)
    assert.equal(5555, seen.role.topic.src.port)
    assert.equal(80, seen.role.topic.dst.port)
    assert.equal("#1", seen.ep)   -- anonymous endpoints are named #1, #2, ...
  end)

  -- One endpoint announced to many peers hands each the same topic (the
  -- runtime shares its box, lua/lproc.c): the role tables around it are
  -- still each handler's own, whole after the activation, and writing into
  -- one changes no other.
  it("many peers told of one endpoint each get a role table of their own, kept whole",
     function()
    local feed = market.record("feed", "channel", "item")
    local n, seen, gone = 20, {}, {}
    H.ground(function()
      for i = 1, n do
        H.step(holder("s" .. i, market.subscriber(feed("news", _), {
          on_presence = function(_, role)
            seen[i] = role
            role.orientation, role.mine = "scribbled", i
          end,
          on_absence = function(_, role, reason) gone[i] = { role = role, reason = reason } end })))
      end
      local pid = market.perform(market.spawn(function()
        return T(0, market.publisher(feed("news", _)))
      end))
      H.settle()
      collectgarbage()
      H.step(market.quit(pid, "done"))
      collectgarbage()
    end)
    for i = 1, n do
      local role = assert(seen[i], "no presence for subscriber " .. i)
      assert.equal(i, role.mine)
      assert.equal("scribbled", role.orientation)
      assert.equal("participant", role.interest)
      assert.equal('feed("news", _)', market.repr(role.topic))
      assert.equal("news", role.topic.channel)
      for j = 1, i - 1 do assert.is_false(rawequal(role, seen[j])) end
      -- one box for the one intersection, not a box (and a finalizer) each
      assert.is_true(rawequal(seen[1].topic, role.topic))
      local a = assert(gone[i], "no absence for subscriber " .. i)
      assert.is_false(rawequal(a.role, role))
      assert.same({ "publisher", "participant", 'feed("news", _)', "done", nil },
                  { a.role.orientation, a.role.interest, market.repr(a.role.topic), a.reason,
                    a.role.mine })
    end
  end)

  -- Peers on one leaf of the routing index have equal topics, so a pattern
  -- announced to them is intersected once per leaf (runtime/vm.c, on_peer):
  -- peers of several leaves, met one leaf after the other, each get the
  -- intersection with their own topic, on presence and on absence.
  it("a pattern announced to peers of several topics gives each its own intersection",
     function()
    local feed = market.record("feed", "channel", "item")
    local topics = { feed("news", _), feed(_, "x"), feed(_, _), feed("news", 7), feed(_, "y") }
    local meet = { 'feed("news", _)', 'feed("news", "x")', 'feed("news", _)',
                   'feed("news", 7)', 'feed("news", "y")' }
    local seen, gone = {}, {}
    H.ground(function()
      for k = 1, 3 do
        for i, topic in ipairs(topics) do
          local who = i .. "." .. k
          H.step(holder("s" .. who, market.subscriber(topic, {
            on_presence = function(_, role) seen[who] = market.repr(role.topic) end,
            on_absence = function(_, role) gone[who] = market.repr(role.topic) end })))
        end
      end
      local pid = market.perform(market.spawn(function()
        return T(0, market.publisher(feed("news", _)))
      end))
      H.settle()
      H.step(market.quit(pid))
    end)
    for k = 1, 3 do
      for i = 1, #topics do
        local who = i .. "." .. k
        assert.equal(meet[i], seen[who], "presence of subscriber " .. who)
        assert.equal(meet[i], gone[who], "absence of subscriber " .. who)
      end
    end
  end)

  -- A burst of absences for one observer runs on one resume (lua/lproc.c,
  -- batch), which keeps the last handler and whether it takes the role:
  -- handlers that alternate each get what they declare.
  it("absences alternating between a handler that takes the role and one that does not",
     function()
    local feed = market.record("feed", "channel", "item")
    local got, n = {}, 5
    H.ground(function()
      H.step(holder("obs",
        market.observe_publishers(feed("x", _), { name = "a",
          on_absence = function(_, role) got[#got + 1] = "a " .. type(role) end }),
        market.observe_publishers(feed("x", _), { name = "c",
          on_absence = function() got[#got + 1] = "c" end }),
        market.observe_publishers(feed("x", _), { name = "b",
          on_absence = function(...) got[#got + 1] = "b " .. select("#", ...) end })))
      local pids = {}
      for i = 1, n do
        pids[i] = market.perform(market.spawn(function()
          return T(0, market.publisher(feed("x", i)))
        end))
      end
      H.settle()
      for i = 1, n do market.perform(market.quit(pids[i])) end
      H.settle()
    end)
    assert.equal(3 * n, #got)
    local counts = {}
    for _, line in ipairs(got) do counts[line] = (counts[line] or 0) + 1 end
    assert.same({ ["a table"] = n, ["b 4"] = n, ["c"] = n }, counts)
  end)

  it("the absence event carries the same refined role as the presence event", function()
    local log = H.log()
    H.ground(function()
      H.step(holder("w", market.subscriber({ _, "b", _ }, H.logging(log, "w"))))
      H.step(holder("p", market.publisher({ "a", _, _ }), market.subscriber("bye", {
        on_message = function() return T(0, market.quit(nil, "bye")) end })))
      H.step(market.send("bye"))
    end, log)
    assert.same({ 'w presence #1 publisher/participant ["a", "b", _]',
                  'w absence #1 publisher/participant ["a", "b", _] bye' }, log.lines)
  end)

  it("edges, not counts: two matching subscribers mean two presence events, " ..
     "and each one's removal one absence", function()
    local log = H.log()
    H.ground(function()
      H.step(holder("pub", market.publisher("e", H.logging(log, "pub"))))
      H.step(H.controlled("s1", { quit = function() return market.quit() end },
                          market.subscriber("e")))
      H.step(H.controlled("s2", { quit = function() return market.quit() end },
                          market.subscriber("e"), market.subscriber("e")))
      log("quit s1"); H.step(H.ctl("s1", "quit"))
      log("quit s2"); H.step(H.ctl("s2", "quit"))
    end, log)
    assert.same({
      'pub presence #1 subscriber/participant "e"',
      'pub presence #1 subscriber/participant "e"',
      'pub presence #1 subscriber/participant "e"',
      "quit s1",
      'pub absence #1 subscriber/participant "e" nil',
      "quit s2",
      'pub absence #1 subscriber/participant "e" nil',
      'pub absence #1 subscriber/participant "e" nil' }, log.lines)
  end)

  it("many matching peers with equal topics: presence in the order they were added", function()
    local log = H.log()
    H.ground(function()
      for i = 1, 5 do
        H.step(holder("p" .. i, market.publisher("same", { on_presence = function()
          log("p%d presence", i)
        end })))
      end
      H.step(holder("s", market.subscriber("same", { on_presence = function(st, role)
        log("s presence")
      end })))
    end, log)
    -- The new endpoint's event about each peer is queued just before that
    -- peer's event about it.
    assert.same({ "s presence", "p1 presence", "s presence", "p2 presence", "s presence",
                  "p3 presence", "s presence", "p4 presence", "s presence", "p5 presence" },
                log.lines)
  end)

  it("observers see participants but not observers; everything sees observers", function()
    local log = H.log()
    H.ground(function()
      H.step(holder("listener-port", market.observe_publishers("port", H.logging(log, "obs")),
                    market.observe_publishers_everything("port", H.logging(log, "all"))))
      H.step(holder("observer-of-port", market.observe_subscribers("port",
                                                                   H.logging(log, "watcher"))))
      H.step(holder("user", market.publisher("port", H.logging(log, "user"))))
    end, log)
    assert.same({
      -- the observer of subscribers is seen only by `everything`
      'all presence #2 publisher/observer "port"',
      -- a participant publisher: all of them see it; it sees participants only
      'obs presence #1 publisher/participant "port"',
      'all presence #2 publisher/participant "port"',
    }, (function()
      local l = {}
      for _, v in ipairs(log.lines) do l[#l + 1] = v end
      return l
    end)())
  end)
end)

-- A process's own events that it has no handler for are dropped at the end
-- of the activation that queued them (runtime/vm.c, decline_queued), not
-- when each comes up: these pin that nothing it would have heard is lost.
describe("events a process queued for itself and has no handler for", function()
  it("are still heard by a handler added for them later in the same activation, " ..
     "and by one that an earlier event's handler adds", function()
    local log = H.log()
    H.ground(function()
      for i, t in ipairs({ "pa", "pb", "pc", "pd" }) do
        H.step(holder("s" .. i, market.subscriber({ t, _ })))
      end
      H.step(market.spawn(function()
        market.perform(market.publisher({ "pa", 1 }, { name = "a" }))   -- no on_presence yet
        market.perform(market.publisher({ "pb", 1 }, { name = "b", on_presence = function(s)
          log("b")
          -- "c" heard of s3 after this event was queued: it hears it now
          return market.transition(s, market.publisher({ "pc", 1 }, { name = "c",
            on_presence = function() log("c") end }))
        end }))
        market.perform(market.publisher({ "pc", 1 }, { name = "c" }))
        market.perform(market.publisher({ "pd", 1 }, { name = "d" }))   -- never: dropped
        -- the same endpoint again, now with a handler: a's event is heard
        return market.transition(0, market.publisher({ "pa", 1 }, { name = "a",
          on_presence = function() log("a") end }))
      end, { name = "p" }))
    end)
    assert.same({ "a", "b", "c" }, log.lines)
  end)

  it("reach straight-line code that waits for them", function()
    local log = H.log()
    H.ground(function()
      H.step(holder("s", market.subscriber({ "w", _ })))
      H.step(market.spawn(function()
        market.perform(market.publisher({ "w", 1 }, { name = "bare" }))
        local ev = market.yield()
        log("%s %s", ev.type, ev.endpoint)
      end, { name = "p" }))
    end)
    assert.same({ "presence bare" }, log.lines)
  end)

  -- A boot whose transition's last action adds an endpoint without
  -- on_presence runs nothing after it: its own presences there are not
  -- queued at all (runtime/vm.h, mk_add_endpoint_tagged), but only while
  -- nothing could yet hear them.
  it("are heard by a handler a later action of the same transition gives the endpoint",
     function()
    local log = H.log()
    H.ground(function()
      for i = 1, 3 do H.step(holder("s" .. i, market.subscriber({ "r", _ }))) end
      H.step(holder("p", market.publisher({ "r", 1 }, { name = "x" }),
        market.publisher({ "r", 1 }, { name = "x", on_presence = function() log("x") end })))
    end)
    assert.same({ "x", "x", "x" }, log.lines)
  end)

  it("are heard when an event of the process's own, queued before them, " ..
     "has its handler re-add the endpoint with one", function()
    local log, order = H.log(), {}
    local function heard(who)
      return { on_presence = function() order[#order + 1] = who end }
    end
    H.ground(function()
      H.step(holder("s3", market.subscriber({ "m", 1, _ }, heard("s3"))))
      H.step(holder("s4", market.subscriber({ _, _, _ }, heard("s4"))))
      H.step(holder("p",
        market.subscriber({ "m", 1, 2 }, { name = "in", on_presence = function(s)
          order[#order + 1] = "in"
          return T(s, market.publisher({ "m", 1, 2 }, { name = "out3",
            on_presence = function(_, role) log(market.repr(role.topic)) end }))
        end }),
        market.publisher({ "m", 1, 2 }, { name = "out3" })))
    end)
    -- out3's own presences queued after in's event are heard by the
    -- handler in's handler gave it; those before it were dropped
    local want, after = {}, false
    local topic = { s3 = '["m", 1, 2]', s4 = '["m", 1, 2]', ["in"] = '["m", 1, 2]' }
    for _, who in ipairs(order) do
      if after and topic[who] then want[#want + 1] = topic[who] end
      if who == "in" then after = true end
    end
    assert.is_true(#want > 0, "in was the last to hear of out3: " .. table.concat(order, " "))
    assert.same(want, log.lines)
  end)

  it("reach straight-line code that waits, when a handler's transition adds the endpoint",
     function()
    local log = H.log()
    H.ground(function()
      H.step(holder("s", market.subscriber({ "w2", _ })))
      H.step(market.spawn(function()
        market.perform(market.subscriber({ "go" }, { name = "go", on_message = function(s)
          return T(s, market.publisher({ "w2", 1 }, { name = "late" }))
        end }))
        market.perform(market.send({ "go" }))
        local ev = market.yield()
        log("%s %s", ev.type, ev.endpoint)
      end, { name = "p" }))
    end)
    assert.same({ "presence late" }, log.lines)
  end)

  it("are not counted as queued once dropped", function()
    local counts = {}
    H.ground(function()
      for i = 1, 3 do
        H.step(holder("s" .. i, market.subscriber({ "q", _ }, { on_presence = function()
          if #counts == 0 then
            local snap = market.snapshot()
            counts[1] = snap.vm.queued
            for _, p in ipairs(snap.vm.processes) do
              if p.name == "pub" then counts[2] = p.queued end
            end
          end
        end })))
      end
      H.step(holder("pub", market.publisher({ "q", 1 })))
    end)
    -- Behind the first subscriber's presence: the two others' and the boot
    -- process's wake (the publisher's three were dropped when its boot
    -- ended; before, they were queued until each came up: 5 and 2).
    assert.same({ 3, 0 }, counts)
  end)
end)

-- term_limits_spec.lua: the depth and size limits of terms (docs/terms.md,
-- issue 8).
--
-- Each deep-term case here once crashed the whole program (a C stack
-- overflow), and each large-term case froze it or ran it out of memory, so
-- each runs in a child `market` process: a crash is a failed assertion on
-- its exit status, not a dead busted.  The scripts build their terms as the
-- issue did (150k cells, 100k levels, a million levels, sixty doublings)
-- in a pcall that ends where the limit does, then use the largest term they
-- got.
package.path = "spec/support/?.lua;" .. package.path
local market = require "market"
local H = require "helpers"
local run = H.run_script

-- The scripts' prelude.  deepest(make, n, start): apply make(t, i) for i =
-- 1..n from start, as far as the depth limit lets it; the term and the
-- number of levels made.  err(f, ...): the error f raises, without the
-- position it was raised at.
local PRELUDE = [[
local market = require "market"
local _ = market._
local function err(f, ...)
  local ok, e = pcall(f, ...)
  return (tostring(e):gsub("^[^\n]-:%d+: ", ""))
end
local function deepest(make, n, start)
  local t, levels = start, 0
  pcall(function()
    for i = 1, n do t = make(t, i); levels = i end
  end)
  return t, levels
end
]]

describe("the term depth limit", function()
  it("stops a right-nested list of 150k cells where it is built: that process fails", function()
    local status, out, err = run(PRELUDE .. [[
      local cons = market.record("cons", "head", "tail")
      market.perform(market.subscriber("building", "watch"))
      market.perform(market.spawn(function()
        market.perform(market.publisher("building"))
        market.pause()
        local list = nil
        for i = 1, 150000 do list = cons(i, list) end
        print("built", #tostring(list))
      end, { name = "builder" }))
      local ev = market.wait_for(function(e) return e.type == "absence" end)
      print("absence: " .. ev.reason:gsub("^[^\n]-:%d+: ", ""))
      -- the longest list one may build prints whole
      local list, n = deepest(function(l, i) return cons(i, l) end, 150000)
      print("longest", n, #tostring(list))
    ]])
    local want = #"nil"
    for i = 1, 1000 do want = want + #("cons(" .. i .. ", )") end
    assert.equal(0, status, err)
    assert.equal("absence: record cons, field 2: a term nested more than 1000 levels deep\n"
                 .. "longest\t1000\t" .. want .. "\n", out)
  end)

  it("stops 100k-deep terms with wildcards; unification and presence work at the limit",
     function()
    local status, out, err = run(PRELUDE .. [[
      local l = market.record("l", "head", "tail")
      -- wildcards on both sides at every level: the unifier is made anew
      local a, na = deepest(function(t) return l(_, t) end, 100000, 1)
      local b, nb = deepest(function(t, i) return l(i, t) end, 100000, _)
      print("levels", na, nb, err(l, _, a))
      local u, ok = market.unify(a, b)
      print("unify", ok, u == deepest(function(t, i) return l(i, t) end, 1000, 1))
      -- presence refines the peer's topic to the same intersection
      market.perform(market.subscriber(a, "sub"), market.publisher(b, "pub"))
      local ev = market.wait_for(function(e) return e.endpoint == "sub" end)
      print(ev.type, ev.endpoint, ev.role.topic == u)
      -- a table deeper than the limit (or a cycle) is no term either
      local t = {}
      t[1] = t
      print(err(market.unify, t, _))
    ]])
    assert.equal(0, status, err)
    assert.equal("levels\t1000\t1000\trecord l, field 2: a term nested more than 1000 levels deep\n"
                 .. "unify\ttrue\ttrue\n"
                 .. "presence\tsub\ttrue\n"
                 .. "market.unify: a table nested more than 1000 levels deep (a cycle?)\n", out)
  end)

  it("stops million-deep left-nested terms; equality, repr and a quit reason work at the limit",
     function()
    local status, out, err = run(PRELUDE .. [[
      local p = market.record("p", "left", "right")
      local function left(t, i) return p(t, i) end
      local a, n = deepest(left, 1e6, 0)
      local b = deepest(left, 1e6, 0)
      print("levels", n, a == b, a ~= deepest(left, 999, 0))
      local text = market.repr(a)
      print("repr", #text, text == tostring(b), market.repr(a, 12))
      -- a quit reason: the victim's peer sees it in the absence
      market.perform(market.subscriber("victim", "watch"))
      local pid = market.perform(market.spawn(function()
        market.perform(market.publisher("victim"))
        market.yield()
      end))
      market.wait_for(function(e) return e.type == "presence" end)
      market.perform(market.quit(pid, a))
      local ev = market.wait_for(function(e) return e.type == "absence" end)
      print("reason", ev.reason == a)
    ]])
    local want = #"0"
    for i = 1, 1000 do want = want + #("p(, " .. i .. ")") end
    assert.equal(0, status, err)
    assert.equal("levels\t1000\ttrue\ttrue\n"
                 .. "repr\t" .. want .. "\ttrue\tp(p(p(p(p(p(...\n"
                 .. "reason\ttrue\n", out)
  end)

  it("can be raised to 10000 levels, and every term algorithm still fits the C stack", function()
    local status, out, err = run(PRELUDE .. [[
      print(market.term_depth_limit())
      local p = market.record("p", "left", "right")
      local a, n = deepest(function(t, i) return p(t, i) end, 1e6, _)
      local b = deepest(function(t, i) return p(t, _) end, 1e6, 0)
      local seq = deepest(function(t) return { t } end, 10000, 1)
      local u, ok = market.unify(a, b)
      print(n, a == b, ok, #market.repr(u) > 10000, market.unify(seq, _) ~= nil,
            #market.repr(seq))
    ]], "--no-drivers --max-term-depth 10000")
    assert.equal(0, status, err)
    assert.equal("10000\n10000\tfalse\ttrue\ttrue\ttrue\t20001\n", out)
  end)
end)

describe("market.term_depth_limit", function()
  after_each(function() market.term_depth_limit(1000) end)

  it("returns the limit in force, after setting it when given one", function()
    assert.equal(1000, market.term_depth_limit())
    assert.equal(3, market.term_depth_limit(3))
    assert.equal(3, market.term_depth_limit(nil))
    local r = market.record("r", "x")
    assert.equal("r(r(r(1)))", market.repr(r(r(r(1)))))
    assert.has_error(function() return r(r(r(r(1)))) end,
                     "record r, field 1: a term nested more than 3 levels deep")
    assert.has_error(function() return market.unify({ { { {} } } }, 1) end,
                     "market.unify: a table nested more than 3 levels deep (a cycle?)")
    assert.is_false(market.is_term({ { { {} } } }))
    assert.is_true(market.is_term({ { {} } }))
    -- a box inside a table counts with its own depth
    assert.has_error(function() return market.repr({ r(r(r(1))), 2 }) end,
                     "market.repr: a term nested more than 3 levels deep")
  end)

  it("refuses a limit that is not an integer from 1 to 10000", function()
    for _, bad in ipairs { 0, -1, 10001, 2^40 } do
      local ok, e = pcall(market.term_depth_limit, bad)
      assert.is_false(ok)
      assert.matches("bad argument #1 to '[%w.]*term_depth_limit' %(the limit must be from 1 to 10000%)", e)
    end
    assert.has_error(function() market.term_depth_limit(2.5) end)
    assert.has_error(function() market.term_depth_limit("many") end)
    assert.equal(1000, market.term_depth_limit())
  end)
end)

-- Terms share subterms: t = pair(t, t) sixty times over is 61 terms in
-- memory but 2^61 - 1 nodes as the tree that routing, equality and repr
-- walk.  Before the size limit, routing such a message, comparing two such
-- terms built apart or a timer label like it froze the program or ran it
-- out of memory: run_script kills a child that outlives its minute.

-- doubled(n [, leaf]): pair(t, t) as many times over as the limit lets, up
-- to n, from leaf ("x"); k times is 2^(k+1) - 1 nodes.
local DOUBLE = PRELUDE .. [[
local pair = market.record("pair", "a", "b")
local function doubled(n, leaf)
  return deepest(function(t) return pair(t, t) end, n, leaf or "x")
end
]]

describe("the term size limit", function()
  it("stops the doubling bomb at the level that crosses it: that process fails, the VM goes on",
     function()
    local status, out, err = run(DOUBLE .. [[
      market.perform(market.subscriber("building", "watch"))
      market.perform(market.spawn(function()
        market.perform(market.publisher("building"))
        market.pause()
        local t = "x"
        for _ = 1, 60 do t = pair(t, t) end
        market.perform(market.send(t))
        print("sent")
      end, { name = "builder" }))
      local ev = market.wait_for(function(e) return e.type == "absence" end)
      print("absence: " .. tostring(ev.reason):gsub("^[^\n]-:%d+: ", ""))
      -- the largest one may build, and one level more
      local t, n = doubled(60)
      print("levels", n, err(pair, t, t))
      -- the largest one routes
      market.perform(market.subscriber(pair(_, "x"), "no"), market.subscriber(pair(_, _), "in"))
      market.perform(market.send(t))
      local ev = market.wait_for(function(e) return e.type == "message" end)
      print(ev.endpoint, ev.message == t)
    ]])
    assert.equal(0, status, err)
    assert.equal("absence: record pair: a term of more than 1048576 nodes\n"
                 .. "levels\t19\trecord pair: a term of more than 1048576 nodes\n"
                 .. "in\ttrue\n", out)
  end)

  it("stops a table that holds another many times over; copies compare in linear time",
     function()
    -- Lua tables are not shared as terms: converting one costs its nodes,
    -- up to the limit (lowered here, to cost little in any build).
    local status, out, err = run(DOUBLE .. [[
      local T = {}
      for _ = 1, 60 do T = { T, T } end
      print(err(market.send, T))
      print(err(market.subscriber, T))
      print(market.is_term(T), err(market.repr, T), err(pair, 1, T))
    ]], "--no-drivers --max-term-size 65536")
    assert.equal(0, status, err)
    assert.equal("market.send: body: a term of more than 65536 nodes\n"
                 .. "market.subscriber: topic: a term of more than 65536 nodes\n"
                 .. "false\tmarket.repr: a term of more than 65536 nodes"
                 .. "\trecord pair: a term of more than 65536 nodes\n", out)
    -- two copies built apart, as large as allowed, compared node by node
    status, out, err = run(DOUBLE .. [[
      local a, n = doubled(60)
      local b = doubled(60)
      local c = doubled(60, "y")
      print(n, a == b, a == c, market.unify(a, b) == a)
    ]])
    assert.equal(0, status, err)
    assert.equal("19\ttrue\tfalse\ttrue\n", out)
  end)

  it("lets a timer, a message and a subscription use a shared term as large as allowed",
     function()
    local status, out, err = run(DOUBLE .. [[
      local timer = require "market.timer"
      local t = doubled(19)                      -- 2^20 - 1 nodes
      -- timer.set(label, msecs, kind) is three nodes more than its label:
      -- the limit is raised by those three
      print(market.term_size_limit())
      market.perform(market.subscriber(timer.expired(t, _), "expired"))
      market.perform(market.send(timer.set(t, 5, "relative")))
      local ev = market.wait_for(function(e) return e.endpoint == "expired" end)
      print("expired", ev.message.label == t)
      -- a topic and a message built apart
      market.perform(market.subscriber(doubled(19), "same"), market.send(t))
      ev = market.wait_for(function(e) return e.endpoint == "same" end)
      print("same", ev.message == t, #market.repr(ev.message) == #market.repr(t))
      market.perform(market.quit())
    ]], "--max-term-size 1048578")
    assert.equal(0, status, err)
    assert.equal("1048578\n"
                 .. "expired\ttrue\n"
                 .. "same\ttrue\ttrue\n", out)
  end)
end)

describe("market.term_size_limit", function()
  after_each(function() market.term_size_limit(1048576) end)
  local _ = market._
  local r = market.record("r", "x", "y")
  -- the error f raises, without the position it was raised at
  local function err(f, ...)
    local ok, e = pcall(f, ...)
    assert.is_false(ok)
    return (tostring(e):gsub("^[^\n]-:%d+: ", ""))
  end

  it("returns the limit in force, after setting it when given one", function()
    assert.equal(1048576, market.term_size_limit())
    assert.equal(5, market.term_size_limit(5))
    assert.equal(5, market.term_size_limit(nil))
    assert.equal("r(r(1, 2), 3)", market.repr(r(r(1, 2), 3)))
    assert.equal("record r: a term of more than 5 nodes", err(r, r(1, 2), r(3, 4)))
    assert.equal("market.repr: a term of more than 5 nodes", err(market.repr, { 1, 2, 3, 4, 5 }))
    assert.is_true(market.is_term({ 1, 2, { 3 } }))
    assert.is_false(market.is_term({ 1, 2, { 3, 4 } }))
    -- a box inside a table counts with its own size
    assert.equal("market.repr: a term of more than 5 nodes", err(market.repr, { r(r(1, 2), 3) }))
    assert.equal(1, market.term_size_limit(1))
    assert.equal("[]", market.repr({}))
    assert.equal("record r: a term of more than 1 node", err(r, 1, 2))
  end)

  it("lets a unifier exceed it, but takes no term larger than it", function()
    local a, b, want = r(r(1, 2), _), r(_, r(3, 4)), r(r(1, 2), r(3, 4))
    market.term_size_limit(5)
    local u, ok = market.unify(a, b)
    assert.is_true(ok)
    -- read, printed and compared as any term
    assert.equal("r(r(1, 2), r(3, 4))", tostring(u))
    assert.equal("r(r(1, 2), r(3, 4))", market.repr(u))
    assert.equal(4, u.y[2])
    assert.is_true(u == want)
    -- but not a term market takes
    assert.is_false(market.is_term(u))
    local more = "a term of more than 5 nodes"
    assert.equal("market.send: body: " .. more, err(market.send, u))
    assert.equal("market.feedback: body: " .. more, err(market.feedback, u))
    assert.equal("market.subscriber: topic: " .. more, err(market.subscriber, u))
    assert.equal("market.quit: reason: " .. more, err(market.quit, nil, u))
    assert.equal("market.unify: " .. more, err(market.unify, u, _))
    assert.equal("record r: " .. more, err(r, u, 1))
    assert.equal("record r, field 2: a function is not a term", err(r, 1, print))
    assert.equal("market.repr: " .. more, err(market.repr, { u }))
    -- nor is a term made before the limit was lowered
    market.term_size_limit(9)
    local big = r(u, 5)
    market.term_size_limit(4)
    assert.equal("market.send: body: a term of more than 4 nodes", err(market.send, big))
    market.term_size_limit(9)
    assert.is_true(market.is_term(big) and market.is_term(u))
  end)

  it("is the program's: a process reads it but cannot set it; market takes it as an option",
     function()
    local status, out, err = run([[
      local market = require "market"
      print(market.term_size_limit(), market.term_depth_limit())
      print(pcall(market.term_size_limit, 100))
      print(pcall(market.term_depth_limit, 1))
    ]], "--no-drivers --max-term-size 4096 --max-term-depth 50")
    assert.equal(0, status, err)
    assert.equal("4096\t50\n"
      .. "false\tmarket.term_size_limit: the term limits are the whole program's: set them "
      .. "before the ground VM runs (market --max-term-size, or from the host), not from a process\n"
      .. "false\tmarket.term_depth_limit: the term limits are the whole program's: set them "
      .. "before the ground VM runs (market --max-term-depth, or from the host), not from a process\n",
      out)
    status, out, err = H.run("--max-term-size 0 -e ''")
    assert.equal(2, status)
    assert.equal("market: --max-term-size: '0' is not a number from 1 to 16777216\n", err)
    status, out, err = H.run("--max-term-depth many -e ''")
    assert.equal(2, status)
    assert.equal("market: --max-term-depth: 'many' is not a number from 1 to 10000\n", err)
  end)

  it("refuses a limit that is not an integer from 1 to 2^24", function()
    for _, bad in ipairs { 0, -1, 2^24 + 1, 2^31, 2^40 } do
      local e = err(market.term_size_limit, bad)
      assert.matches("bad argument #1 to '[%w.]*term_size_limit' %(the limit must be from 1 to 16777216%)", e)
    end
    assert.equal(2^24, market.term_size_limit(2^24))
    assert.has_error(function() market.term_size_limit(2.5) end)
    assert.has_error(function() market.term_size_limit("many") end)
    assert.equal(2^24, market.term_size_limit())
  end)
end)

describe("market.repr(v, max)", function()
  it("shows at most max bytes of the text, then ...", function()
    local r = market.record("chat-line", "who", "text")
    assert.equal('chat-line("bob", "hi")', market.repr(r("bob", "hi"), 22))
    assert.equal('chat-line("bob", "h...', market.repr(r("bob", "hi"), 19))
    assert.equal("...", market.repr({ 1 }, 0))
    assert.equal('"\\x00\\x0...', market.repr("\0\1", 8))
    assert.equal("[1, 2, 3]", market.repr({ 1, 2, 3 }, nil))
    assert.has_error(function() market.repr(1, -1) end)
    assert.has_error(function() market.repr(1, 1.5) end)
  end)

  it("stops early on a term that shares subterms, however large its whole text", function()
    local pair = market.record("pair", "a", "b")
    local function shared(levels)
      local t = "x"
      for _ = 1, levels do t = pair(t, t) end   -- 2^levels leaves, levels + 1 terms
      return t
    end
    local want = ("pair("):rep(8) .. "..."
    assert.equal(want, market.repr(shared(19), 40))  -- 6 MB of text in all
    -- at the highest size limit: 2^24 - 1 nodes, 100 MB of text
    market.term_size_limit(2^24)
    local ok, text = pcall(function() return market.repr(shared(23), 40) end)
    market.term_size_limit(1048576)
    assert.is_true(ok, text)
    assert.equal(want, text)
  end)
end)

-- What the runtime prints of a term it did not choose is cut short: the
-- drivers' warnings and --trace showed the whole term, and at a million
-- levels crashed on it.
describe("terms the runtime shows", function()
  -- The line of err that matches pattern, checked to show the deep term
  -- cut short.
  local function shown(err, pattern)
    local line = err:match(pattern .. "[^\n]*")
    assert.is_truthy(line, err:sub(1, 2000))
    assert.matches("p%(p%(p%(.*%.%.%.$", line)
    assert.is_true(#line < 600, #line .. " bytes")
    return line
  end

  local DEEP = PRELUDE .. [[
local p = market.record("p", "left", "right")
-- as deep as a subpacket or a body may be: its record adds a level
local deep = deepest(function(t, i) return p(t, i) end, 1e6, 0)[1]
]]

  it("--trace shows a deep message cut short", function()
    local status, out, err = run(DEEP .. [[
      market.perform(market.subscriber(_, "all"))
      market.perform(market.send(deep))
      print(market.yield().message == deep)
    ]], "--no-drivers --trace")
    assert.equal(0, status, err)
    assert.equal("true\n", out)
    shown(err, "[^\n]*: send p%(p%(p%(")
  end)

  it("a deep non-string TCP subpacket: the connection manager warns (briefly) and goes on",
     function()
    local status, out, err = run(DEEP .. [[
      local tcp, sys = require "market.tcp", require "market.sys"
      local ANY, T, send = market._, market.transition_no_state, market.send
      local here = tcp.listener(0)
      market.perform(market.spawn(function()
        return market.transition(nil, market.observe_publishers(tcp.channel(ANY, here, ANY), {
          on_presence = function(_, role)
            local remote = role.topic.source
            return T(market.spawn(function()
              return market.transition(nil,
                market.subscriber(tcp.channel(remote, here, ANY)),
                market.publisher(tcp.channel(here, remote, ANY), {
                  on_presence = function()
                    return T(send(tcp.channel(here, remote, "one ")),
                             send(tcp.channel(here, remote, deep)),
                             send(tcp.channel(here, remote, "two")), market.quit())
                  end }))
            end), market.quit())
          end }))
      end))
      market.perform(market.subscriber(tcp.listening(0, ANY), "listening"))
      local port = market.yield().role.topic.bound_port
      local s = assert(sys.tcp_connect(assert(sys.resolve("127.0.0.1", port))[1].sa))
      market.perform(market.subscriber(market.ground.readable(s:fd()), "raw"))
      local got = {}
      while true do
        market.wait_for(function(e) return e.endpoint == "raw" end)
        local data = s:read()
        if data then got[#got + 1] = data elseif data == nil then break end
      end
      s:close()
      print(table.concat(got))
      market.perform(market.quit())
    ]], "")
    assert.equal(0, status, err)
    assert.equal("one two\n", out)
    shown(err, "market%.tcp: [^\n]*ignoring a non%-string subpacket p%(")
  end)

  it("a TCP connection to a bad address: the reason shows the address cut short", function()
    local status, out, err = run(PRELUDE .. [[
      local tcp = require "market.tcp"
      local there, me = tcp.address({ ("x"):rep(1000) }, 80), tcp.handle("me")
      market.perform(market.subscriber(tcp.channel(there, me, _), "in"),
                     market.publisher(tcp.channel(me, there, _), "out"))
      local ev = market.wait_for(function(e) return e.type == "absence" end)
      print(#ev.reason < 400, ev.reason:sub(1, 36), ev.reason:match("%.%.%.: want .*$"))
      market.perform(market.quit())
    ]], "")
    assert.equal(0, status, err)
    assert.equal('true\tbad address tcp-address(["xxxxxxxxxx\t'
                 .. '...: want tcp.address(host, port 1..65535) or tcp.address(path, "unix")\n', out)
  end)

  it("a deep UDP body: the socket's process warns (briefly, once), drops it and goes on",
     function()
    local status, out, err = run(DEEP .. [[
      local udp = require "market.udp"
      local me = udp.handle("me")
      market.perform(market.subscriber(udp.packet(_, me, _), "rx"),
                     market.subscriber(udp.bound(me, _), "bound"))
      local port = market.wait_for(function(e) return e.endpoint == "bound" end).role.topic.port
      local there = udp.remote_address("127.0.0.1", port)
      market.perform(market.send(udp.packet(me, there, deep)))
      market.perform(market.send(udp.packet(me, there, 42)))   -- the same reason
      market.perform(market.send(udp.packet(me, there, "still here")))
      print(market.wait_for(function(e) return e.endpoint == "rx" end).message.body)
      market.perform(market.quit())
    ]], "")
    assert.equal(0, status, err)
    assert.equal("still here\n", out)
    shown(err, "market%.udp: [^\n]*dropping a datagram: the body is not a string: p%(")
    local _, warnings = err:gsub("dropping a datagram", "")
    assert.equal(1, warnings)
  end)
end)

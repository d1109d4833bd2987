-- snapshot_spec.lua: market.snapshot and market.snapshot_json
-- (docs/inspect.md, "Snapshots").
package.path = "spec/support/?.lua;" .. package.path
local market = require "market"
local N = require "net"
local H = require "helpers"
local J = require "jsonread"
local P, T = market.perform, market.transition

local function decode(s) return assert(J.decode(s)) end

local function byname(vm, name)
  for _, p in ipairs(vm.processes) do if p.name == name then return p end end
end

-- Runs f(snapshot) in a ground VM where "pub" publishes news and "sub"
-- subscribes to anything, and a nested VM "box" holds "inner", which
-- subscribes to news one level up and publishes "local" in its own VM.
local function scene(f)
  local ok, err = market.ground_vm(function()
    P(market.publisher("keep", { name = "keep" }))
    P(market.spawn(function()
      return T(nil, market.publisher("news", { name = "out" }))
    end, { name = "pub" }))
    P(market.spawn(function()
      return T(nil, market.subscriber(market._, { name = "in", on_message = function() end }))
    end, { name = "sub" }))
    P(market.nested_vm(function()
      return T(nil, market.spawn(function()
        return T(nil, market.at_meta_level(market.subscriber("news", { name = "up" })),
          market.publisher(market.record("local", "x")(1), { name = "mine" }))
      end, { name = "inner" }))
    end, { name = "box" }))
    market.pause()
    f()
    P(market.delete_endpoint("keep"))
  end)
  assert(ok, err)
end

describe("market.snapshot", function()
  it("says what the memory limit counts, and the limit when there is one", function()
    local snap, json
    scene(function()
      snap = market.snapshot()
      json = decode(market.snapshot_json())
    end)
    assert.is_nil((market.memory_limit()))      -- busted's lua5.4: no limit set
    assert.equal("integer", math.type(snap.memory.used))
    assert.is_true(snap.memory.used > 0)
    assert.is_nil(snap.memory.limit)
    assert.equal("number", type(json.memory.used))
    -- Under the interpreter with --max-memory, the limit too.
    local _, out = H.sh(("%s --max-memory 64M -e %s"):format(H.quote(H.market_bin()), H.quote([[
      local s = require("market").snapshot().memory
      print(s.limit, math.type(s.used), s.used < s.limit)]])))
    assert.equal("67108864\tinteger\ttrue\n", out)
  end)

  it("counts a new process's activations from its boot, in memory a process had before", function()
    local counts = {}
    local ok, err = market.ground_vm(function()
      -- Processes that handle a few events and go, leaving their records to malloc.
      for _ = 1, 50 do
        P(market.spawn(function()
          local n = 0
          return T(nil, market.subscriber("tick", { on_message = function()
            n = n + 1
            if n == 5 then return market.transition_no_state(market.quit()) end
          end }))
        end, { name = "old" }))
      end
      market.pause()
      for _ = 1, 5 do P(market.send("tick")); market.pause() end
      for _ = 1, 50 do
        P(market.spawn(function()
          return T(nil, market.subscriber("stop", { on_message = function()
            return market.transition_no_state(market.quit())
          end }))
        end, { name = "new" }))
      end
      market.pause()
      for _, p in ipairs(market.snapshot().vm.processes) do
        if p.name == "new" then counts[#counts + 1] = p.activations end
      end
      P(market.send("stop"))
    end)
    assert(ok, err)
    assert.equal(50, #counts)
    for _, n in ipairs(counts) do assert.equal(1, n) end
  end)

  it("shows the VM tree, processes, endpoints and a nested VM", function()
    local s
    scene(function() s = market.snapshot() end)
    assert.equal("ground", s.vm.path)
    assert.equal(0, s.vm.processes[1].pid)            -- the ground's resident
    local pub, sub, box = byname(s.vm, "pub"), byname(s.vm, "sub"), byname(s.vm, "box")
    assert.equal("lua", pub.kind)
    assert.same({ name = "out", level = 0, orientation = "publisher",
                  interest = "participant", topic = "news" }, pub.endpoints[1])
    assert.equal(market._, sub.endpoints[1].topic)
    assert.is_true(sub.activations >= 1)
    assert.equal("nested-vm", box.kind)
    assert.equal("ground/" .. box.pid, box.vm.path)
    assert.equal(box.pid, box.vm.pid)
    local inner = byname(box.vm, "inner")
    assert.equal("lua", inner.kind)
    assert.equal(2, #inner.endpoints)
    assert.same({ "mine", 0 }, { inner.endpoints[1].name, inner.endpoints[1].level })
    assert.same({ "up", 1 }, { inner.endpoints[2].name, inner.endpoints[2].level })
    assert.equal(market.record("local", "x")(1), inner.endpoints[1].topic)
    -- the nested VM holds "inner"'s endpoint up here under its prefixed name
    assert.equal(inner.pid .. "/up", box.endpoints[1].name)
  end)

  it("lists conversations: pairs whose roles intersect", function()
    local s
    scene(function() s = market.snapshot() end)
    local pairs_ = {}
    for _, c in ipairs(s.vm.conversations) do
      pairs_[#pairs_ + 1] = c.publisher.endpoint .. "->" .. c.subscriber.endpoint
    end
    table.sort(pairs_)
    local box = byname(s.vm, "box")
    assert.same({ "keep->in", "out->" .. byname(box.vm, "inner").pid .. "/up", "out->in" }, pairs_)
    assert.same({}, byname(s.vm, "box").vm.conversations)
  end)

  it("lists at most max_processes, the lowest pids, each VM before those nested in it", function()
    -- A whole snapshot of 200,000 processes took two seconds (the
    -- inspector's connection was killed by the activation budget).
    local s4, full, whole, n
    scene(function()
      whole = market.snapshot()
      n = #whole.vm.processes
      s4 = market.snapshot { max_processes = 4 }
      full = market.snapshot { max_processes = n }
    end)
    local function pids(vm)
      local t = {}
      for i, p in ipairs(vm.processes) do t[i] = p.pid end
      return t
    end
    assert.is_nil(whole.vm.omitted)
    local all = pids(whole.vm)
    assert.same({ table.unpack(all, 1, 4) }, pids(s4.vm))
    assert.equal(n - 4, s4.vm.omitted)
    -- conversations of listed processes only: "box" is left out
    local pairs_ = {}
    for _, c in ipairs(s4.vm.conversations) do
      pairs_[#pairs_ + 1] = c.publisher.endpoint .. "->" .. c.subscriber.endpoint
    end
    table.sort(pairs_)
    assert.same({ "keep->in", "out->in" }, pairs_)
    -- as many as the ground VM has: all of its own, none of the nested VM's
    assert.same(all, pids(full.vm))
    assert.is_nil(full.vm.omitted)
    local box = byname(full.vm, "box")
    assert.same({}, box.vm.processes)
    assert.equal(#byname(whole.vm, "box").vm.processes, box.vm.omitted)
    assert.truthy(market.snapshot_json(full):find('"omitted":1', 1, true))
    local ok, err = pcall(market.snapshot, { max_processes = 0 })
    assert.is_false(ok)
    assert.matches("market.snapshot: max_processes must be an integer above 0", err, 1, true)
    ok, err = pcall(market.snapshot, { max = 5 })
    assert.is_false(ok)
    assert.matches("market.snapshot: no option max (max_processes, max_conversations, max_endpoints)",
                   err, 1, true)
    ok, err = pcall(market.snapshot, { max_conversations = 1.5 })
    assert.is_false(ok)
    assert.matches("market.snapshot: max_conversations must be an integer above 0", err, 1, true)
  end)

  it("lists at most max_conversations, the lowest publishers', and counts the rest", function()
    -- A room of 300 chat users is 90,000 conversations: an 8.7 MB
    -- snapshot that took a second, every second, for each inspector page.
    local whole, s5
    local ok, err = market.ground_vm(function()
      for i = 1, 12 do
        P(market.spawn(function()
          local _ = market._
          return market.transition(nil, market.publisher({ "room", i, _ }, { name = "say" }),
                                   market.subscriber({ "room", _, _ }, { name = "hear" }))
        end, { name = "member " .. i }))
      end
      for _ = 1, 3 do market.pause() end
      whole = market.snapshot()
      s5 = market.snapshot { max_conversations = 5 }
    end)
    assert(ok, err)
    assert.equal(144, #whole.vm.conversations)
    assert.is_nil(whole.vm.conversations_omitted)
    assert.equal(5, #s5.vm.conversations)
    assert.equal(139, s5.vm.conversations_omitted)
    -- the first publisher's five: the lowest pid's "say"
    local first = whole.vm.conversations[1].publisher.pid
    for _, c in ipairs(s5.vm.conversations) do
      assert.equal(first, c.publisher.pid)
      assert.equal("say", c.publisher.endpoint)
    end
    assert.truthy(market.snapshot_json(s5):find('"conversations_omitted":139', 1, true))
  end)

  it("lists at most max_endpoints, a tenth of them in any one process, and counts the rest", function()
    -- One process of 150,000 endpoints made a 20 MB snapshot that no
    -- inspector request finished within the activation budget.
    local whole, s
    local ok, err = market.ground_vm(function()
      P(market.spawn(function()
        local acts = {}
        for i = 1, 300 do acts[i] = market.subscriber({ "big", i }, { name = "b" .. i }) end
        return market.transition(nil, acts)
      end, { name = "big" }))
      P(market.spawn(function()
        return market.transition(nil, market.publisher({ "big", 1 }, { name = "one" }),
                                 market.publisher({ "big", 300 }, { name = "last" }))
      end, { name = "small" }))
      for _ = 1, 3 do market.pause() end
      whole = market.snapshot()
      s = market.snapshot { max_endpoints = 100 }
    end)
    assert(ok, err)
    local big, small = byname(whole.vm, "big"), byname(s.vm, "small")
    assert.equal(300, #big.endpoints)
    assert.is_nil(big.endpoints_omitted)
    big = byname(s.vm, "big")
    assert.equal(10, #big.endpoints)                     -- a tenth of the bound
    assert.equal(290, big.endpoints_omitted)
    assert.equal("b1", big.endpoints[1].name)
    assert.equal(2, #small.endpoints)                    -- the others keep theirs
    -- big(1)'s conversation is listed; big(300)'s, whose subscriber is
    -- left out, is counted
    assert.equal(2, #whole.vm.conversations)
    assert.equal(1, #s.vm.conversations)
    assert.equal("b1", s.vm.conversations[1].subscriber.endpoint)
    assert.equal(1, s.vm.conversations_omitted)
    assert.truthy(market.snapshot_json(s):find('"endpoints_omitted":290', 1, true))
  end)

  it("leaves out a process that ended", function()
    local before, after
    local ok, err = market.ground_vm(function()
      P(market.publisher("keep", { name = "keep" }))
      P(market.spawn(function()
        return T(nil, market.subscriber("x", { name = "x",
          on_message = function() return T(nil, market.quit()) end }))
      end, { name = "short" }))
      market.pause()
      before = market.snapshot()
      P(market.send("x"))
      market.pause()
      after = market.snapshot()
      P(market.delete_endpoint("keep"))
    end)
    assert(ok, err)
    assert.is_truthy(byname(before.vm, "short"))
    assert.is_nil(byname(after.vm, "short"))
  end)

  it("shows a tcp session: its manager, its session and their conversations", function()
    local s, port, log = N.snapshot_connected(function(log) return log[1] == "connected" end)
    local kinds, session, managers = {}, byname(s.vm, "session"), {}
    for _, p in ipairs(s.vm.processes) do
      kinds[p.kind] = (kinds[p.kind] or 0) + 1
      if p.kind == "tcp" then managers[p.pid] = p end
    end
    assert.equal(2, kinds.tcp)                  -- the accepted end and the client's
    assert.is_truthy(session)
    assert.is_truthy(byname(s.vm, "client 1"))
    assert.is_truthy(byname(s.vm, "server 0"))
    -- the session's outbound flow reaches the accepted end's manager, and
    -- that manager's inbound flow the session
    local out, into = false, false
    for _, c in ipairs(s.vm.conversations) do
      if c.publisher.pid == session.pid and managers[c.subscriber.pid] then out = true end
      if c.subscriber.pid == session.pid and managers[c.publisher.pid] then into = true end
    end
    assert.is_true(out and into)
    assert.same({ "connected", "data bye", "eof" }, log)
    assert.equal("number", type(s.drivers.tcp.max_queued))
    assert.equal("number", type(s.drivers.timer.max_heap))
  end)

  it("works from an on_crash function and beside an open ground VM", function()
    local seen
    local ok = market.ground_vm(function()
      P(market.spawn(function() error("boom") end, { name = "bad" }))
    end, { on_crash = function() seen = byname(market.snapshot().vm, "bad") end })
    assert.is_true(ok)
    assert.equal("bad", seen.name)              -- it still holds its place
    local g = market.open_ground_vm(function()
      return T(nil, market.publisher("x", { name = "x" }))
    end)
    g:step()
    local s = market.snapshot()
    g:close()
    assert.equal("x", s.vm.processes[2].endpoints[1].topic)
  end)

  -- A topic made before the size limit was lowered past it is still a
  -- term, read and printed: the JSON failed whole ("cannot encode a
  -- userdata"), the inspector's /api/snapshot with it.
  it("writes a topic past a size limit lowered since it was made", function()
    local r = market.record("snap-r", "x")
    local g = market.open_ground_vm(function()
      P(market.subscriber(r(r(r(r(1)))), { name = "held" }))
      market.wait_for(function() return false end)
    end, { drivers = false })
    g:step(0)
    local old = market.term_size_limit()
    market.term_size_limit(4)
    local ok, text = pcall(market.snapshot_json)
    market.term_size_limit(old)
    g:close()
    assert(ok, text)
    decode(text)
    assert.truthy(text:find('"topic":{"record":"snap-r","fields":[{"record":"snap-r"', 1, true), text)
  end)

  -- mk_host_free freed the ground, then allocated in Lua (the trace's
  -- end) before the state let go of it: a finalizer run by that
  -- allocation read the freed ground (SEGV; ASan: heap-use-after-free).
  it("reads no freed ground from a finalizer run as the ground VM ends", function()
    local status, out, err = H.sh(("timeout 60 env LUA_CPATH=%s lua5.4 -e %s"):format(
      H.quote(package.cpath), H.quote([[
        local market = require "market"
        local live, seen = true, 0
        local function arm()
          setmetatable({}, { __gc = function()
            if not live then return end
            seen = seen + 1
            pcall(market.snapshot)
            arm()
          end })
        end
        collectgarbage("incremental", 1, 1000)   -- a step at nearly each allocation
        for _ = 1, 20 do
          assert(market.ground_vm(function() for _ = 1, 20 do arm() end end))
        end
        live = false
        print(seen > 0)
      ]])))
    assert.equal(0, status, err)
    assert.equal("true\n", out)
  end)

  -- Taking, converting and freeing a snapshot recurses once per nested VM:
  -- as deep as VMs may be nested (1000 levels below the ground), whole.
  it("shows the deepest tree of nested VMs whole", function()
    local s, j
    local function nest(k)
      if k == 0 then
        P(market.subscriber("hold", "hold"))
        s = market.snapshot()
        j = market.snapshot_json(s)
        return P(market.delete_endpoint("hold"))
      end
      P(market.nested_vm(function() nest(k - 1) end, { name = "n" .. k }))
    end
    assert(market.ground_vm(function() nest(1000) end))
    local levels, vm, last = 0, s.vm, nil
    while vm do
      last = byname(vm, "n" .. (1000 - levels))
      vm, levels = last and last.vm, levels + 1
    end
    assert.equal(1001, levels)               -- the ground VM and 1000 below it
    assert.truthy(j:find('"name":"n1"', 1, true))
  end)

  it("is an error outside a ground VM", function()
    assert.has_error(function() market.snapshot() end,
      "market.snapshot: no ground VM is running")
  end)
end)

describe("market.snapshot_json", function()
  it("round-trips a snapshot, terms mapped as documented", function()
    local s, j
    scene(function() s = market.snapshot(); j = market.snapshot_json(s) end)
    local d = decode(j)
    assert.equal("ground", d.vm.path)
    assert.equal(#s.vm.processes, #d.vm.processes)
    assert.equal(#s.vm.conversations, #d.vm.conversations)
    local sub = byname(d.vm, "sub")
    assert.same({ wildcard = true }, sub.endpoints[1].topic)
    local inner = byname(byname(d.vm, "box").vm, "inner")
    assert.same({ record = "local", fields = { 1 } }, inner.endpoints[1].topic)
  end)

  it("escapes strings and maps every kind of term", function()
    local t = market.record("r\"q", "a", "b", "c", "d", "e", "f", "g")
    local v = t("a\"\\\n\1é", 1.5, 3, true, market._, { 1, "x" }, "\255")
    local j = market.snapshot_json({ v = v, n = 0.0 / 0.0, i = 1 / 0 })
    assert.equal('{"i":{"float":"inf"},"n":{"float":"nan"},"v":{"record":"r\\"q","fields":'
      .. '["a\\"\\\\\\n\\u0001é",1.5,3,true,{"wildcard":true},[1,"x"],{"bytes":"ff"}]}}', j)
    local d = decode(j)
    assert.equal("a\"\\\n\1é", d.v.fields[1])
    assert.same({ bytes = "ff" }, d.v.fields[7])          -- a term's bytes that are not UTF-8
    -- the snapshot's own strings (names) that are not UTF-8: U+FFFD
    assert.equal('{"name":"a\\ufffd"}', market.snapshot_json({ name = "a\255" }))
  end)

  it("writes a topic's bytes that are not UTF-8 in hex, as a term's", function()
    -- A topic comes back from snapshot() as a Lua string (or table): its
    -- stray bytes were written as U+FFFD, as a name's, losing them.
    local j
    assert(market.ground_vm(function()
      market.perform(market.subscriber("\255\0b", "bytes"))
      market.perform(market.subscriber({ "\254", "ok" }, "seq"))
      j = market.snapshot_json()
    end))
    local eps = decode(j).vm.processes[2].endpoints
    assert.same({ bytes = "ff0062" }, eps[1].topic)
    assert.same({ { bytes = "fe" }, "ok" }, eps[2].topic)
    assert.equal('{"name":"a\\ufffd","topic":{"bytes":"61ff"}}',
                 market.snapshot_json({ name = "a\255", topic = "a\255" }))
  end)

  it("writes a key holding a NUL whole, and reads each value raw", function()
    -- Keys were C strings: "a\0b" and "a\0c" both came out as "a", with
    -- the value of a key "a" (null), which __index was asked for.
    local t = setmetatable({ ["a\0b"] = 1, ["a\0c"] = 2, a = 3 },
      { __index = function() error("__index asked") end })
    assert.equal('{"a":3,"a\\u0000b":1,"a\\u0000c":2}', market.snapshot_json(t))
  end)

  -- A finalizer run by an allocation of the writer may change the table
  -- being written: keys added after they were counted were written past
  -- the end of the keys' array (ASan: heap-buffer-overflow in addtable).
  it("raises for a table a finalizer changes while it is written", function()
    local status, out, err = H.sh(("timeout 60 env LUA_CPATH=%s lua5.4 -e %s"):format(
      H.quote(package.cpath), H.quote([[
        local market = require "market"
        local t, grown = {}, 0
        for i = 1, 20000 do t[("k"):rep(50) .. i] = i end
        local function arm()
          setmetatable({}, { __gc = function()
            if grown < 5 and debug.traceback():find("snapshot_json", 1, true) then
              grown = grown + 1
              for i = 1, 1000 do t["n" .. grown .. "_" .. i] = i end
            end
            if grown < 5 then arm() end
          end })
        end
        collectgarbage("incremental", 1, 1000)   -- a step at nearly each allocation
        arm()
        local outcome
        for _ = 1, 20 do
          local ok, e = pcall(market.snapshot_json, t)
          if not ok then outcome = e break end
        end
        print(outcome)
      ]])))
    assert.equal(0, status, err)
    assert.equal("market.snapshot_json: a table changed while it was written\n", out)
  end)

  it("holds a topic as deep as the term depth limit allows", function()
    -- Once refused past 200 levels, which made the whole snapshot (and the
    -- inspector's /api/snapshot) an error for one legal endpoint.
    local before = market.term_depth_limit()
    market.term_depth_limit(10000)
    finally(function() market.term_depth_limit(before) end)
    local j
    assert(market.ground_vm(function()
      local deep = 1
      for _ = 1, 9999 do deep = { deep } end
      market.perform(market.subscriber(deep, "deep"))
      j = market.snapshot_json()
    end))
    assert.truthy(j:find(("["):rep(9999) .. "1" .. ("]"):rep(9999), 1, true))
  end)

  it("refuses what JSON cannot hold", function()
    local t = {}
    t.self = t
    assert.has_error(function() market.snapshot_json(t) end,
      "market.snapshot_json: tables nested more than 10064 levels deep (a cycle?)")
    assert.has_error(function() market.snapshot_json({ print }) end,
      "market.snapshot_json: cannot encode a function")
    assert.has_error(function() market.snapshot_json(5) end,
      "market.snapshot_json: a snapshot table expected, got number")
  end)
end)

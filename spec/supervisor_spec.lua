-- Lifelines, monitors and supervisors (docs/supervision.md), in-process,
-- in a ground VM without drivers: none of them needs one.
local market = require "market"
local H = require "spec.support.helpers"
local _ = market._

-- Run boot in a fresh ground VM; fail on a boot error.
local function ground(boot, opts)
  local ok, err = market.ground_vm(boot, opts)
  assert(ok == true, "ground_vm failed: " .. tostring(err))
end

-- A boot function that logs "<id> up <pid>", holds a subscription (so it
-- lives), and then does what `fate` says at once: nil (live on), "quit"
-- (a normal quit), "crash" (an error), "done" (withdraw: an implicit exit).
local function child(log, id, fate)
  return function(pid)
    log("%s up", id)
    if fate == "crash" then error(id .. " crashed", 0) end
    if fate == "quit" then return market.transition(nil, market.quit()) end
    if fate ~= "done" then
      return market.transition(nil, market.subscriber({ "child", id }, { name = "work" }))
    end
  end
end

-- Starts of a child id, in the log.
local function count(log, line)
  local n = 0
  for _, l in ipairs(log.lines) do if l == line then n = n + 1 end end
  return n
end

describe("lifelines", function()
  it("a subscriber to market.lifeline(pid) sees the process there, then gone with its reason", function()
    local log = H.log()
    ground(function()
      local crash, quits = market.perform(
        market.spawn(function() return market.transition(nil, market.subscriber("a", {})) end),
        market.spawn(function() return market.transition(nil, market.subscriber("b", {})) end))
      for _, pid in ipairs { crash, quits } do
        market.perform(market.observe_publishers(market.lifeline(pid), H.logging(log, "w" .. pid)))
      end
      market.perform(market.observe_publishers(market.lifeline(999), H.logging(log, "w999")))
      market.pause()
      market.perform(market.quit(crash, "boom"), market.quit(quits))
      market.pause()
    end)
    assert.same({
      "w2 presence #1 publisher/participant market:lifeline(2)",
      "w3 presence #2 publisher/participant market:lifeline(3)",
      "w999 presence #3 publisher/participant market:lifeline(999)",
      "w999 absence #3 publisher/participant market:lifeline(999) no such process",
      "w2 absence #1 publisher/participant market:lifeline(2) boom",
      "w3 absence #2 publisher/participant market:lifeline(3) nil",
    }, log.lines)
  end)

  it("does not keep its process alive, hears nothing, and cannot be deleted by it", function()
    local log = H.log()
    ground(function()
      -- A participant subscriber to every lifeline: a lifeline that heard
      -- anything would hear of it, and straight-line code waiting in
      -- market.yield() would get that event.
      market.perform(market.subscriber(market.lifeline(_), { name = "all" }))
      local pid = market.perform(market.spawn(function()
        market.perform(market.subscriber("work", { name = "work" }))
        local ev = market.yield()           -- the poke; nothing before it
        log("%s %s %s", ev.type, ev.endpoint, ev.message)
        market.perform(market.delete_endpoint("market:lifeline", "lie"))
        market.perform(market.delete_endpoint("work"))
        log("still here")
      end))
      market.perform(market.observe_publishers(market.lifeline(pid), H.logging(log, "w")))
      market.perform(market.feedback(market.lifeline(pid)))
      market.pause()
      market.perform(market.send("work"))
      market.pause()
      market.perform(market.delete_endpoint("all"))
    end)
    assert.same({
      "w presence #1 publisher/participant market:lifeline(2)",
      "message work work",
      "still here",
      "w absence #1 publisher/participant market:lifeline(2) nil",
    }, log.lines)
  end)
end)

describe("market.monitor", function()
  it("turns the end of a pid into one call with the reason, and goes", function()
    local log = H.log()
    ground(function()
      local pid = market.perform(market.spawn(child(log, "c")))
      local function down(_, reason, role) log("down %s %s", reason, role.topic) end
      market.perform(market.monitor(pid, down, "m"), market.monitor(12345, down))
      market.pause()
      market.perform(market.quit(pid, { "gone", 1 }))
      market.pause()
      -- The monitor deleted itself: a second end could not reach it.
      market.perform(market.publisher(market.lifeline(pid), { name = "fake" }))
      market.perform(market.delete_endpoint("fake", "again"))
      market.pause()
    end)
    assert.same({
      "c up",
      "down no such process market:lifeline(12345)",
      "down [\"gone\", 1] market:lifeline(2)",
    }, log.lines)
  end)

  it("turns the end of a conversation into one call, when the last peer it saw goes", function()
    local log = H.log()
    ground(function()
      local topic = { "room", _ }
      market.perform(market.monitor(topic, function(_, reason) log("room over: %s", reason) end))
      market.perform(market.monitor({ "room", _ }, function(_, reason) log("listeners gone: %s", reason) end,
                                    { subscribers = true }))
      local a, b = market.perform(
        market.spawn(function() return market.transition(nil, market.publisher({ "room", 1 }, {})) end),
        market.spawn(function() return market.transition(nil, market.publisher({ "room", 2 }, {}),
                                                          market.subscriber({ "room", 2 }, {})) end))
      market.pause()
      market.perform(market.quit(a, "a left"))
      market.pause()
      log("after a")
      market.perform(market.quit(b, "b left"))
      market.pause()
    end)
    -- (The two monitors are told in routing-index order: sorted here.)
    table.sort(log.lines)
    assert.same({ "after a", "listeners gone: b left", "room over: b left" }, log.lines)
  end)

  it("keeps none of the conversation's messages for market.yield() while its process waits",
     function()
    local log = H.log()
    ground(function()
      market.perform(market.monitor({ "room", _ }, function() end, "watch"))
      market.perform(market.spawn(function()
        return market.transition(nil, market.publisher({ "room", 1 }, {}),
                                 market.send({ "room", 1 }), market.send({ "room", 2 }))
      end))
      market.pause()
      market.pause()
      while true do
        local ev = market.yield(0)
        if not ev then break end
        log("%s %s", ev.type, ev.endpoint)
      end
      log("drained")
    end)
    assert.same({ "drained" }, log.lines)
  end)

  it("one monitor action serves every process that performs it, each on its own", function()
    local log = H.log()
    ground(function()
      local target = market.perform(market.spawn(child(log, "t")))
      local m = market.monitor(target, function(_, reason) log("%s saw %s", market.self(), reason) end)
      market.perform(market.spawn(function() return market.transition(nil, m) end),
                     market.spawn(function() return market.transition(nil, m) end))
      market.pause()
      market.perform(market.quit(target, "bye"))
    end)
    table.sort(log.lines)
    assert.same({ "3 saw bye", "4 saw bye", "t up" }, log.lines)
  end)

  it("is cancelled by deleting its endpoint: no call", function()
    local log = H.log()
    ground(function()
      local pid = market.perform(market.spawn(child(log, "c")))
      market.perform(market.monitor(pid, function() log("called") end, "m"))
      market.pause()
      market.perform(market.delete_endpoint("m"), market.quit(pid, "bye"))
      market.pause()
    end)
    assert.same({ "c up" }, log.lines)
  end)

  it("checks its arguments at the caller's line", function()
    local line = debug.getinfo(1, "l").currentline
    local ok, err = pcall(market.monitor, 1, "not a function")
    assert.is_false(ok)
    assert.matches("market.monitor: on_down must be a function, got string", err, 1, true)
    ok, err = pcall(function() local m = market.monitor(function() end, function() end); return m end)
    assert.is_false(ok)
    assert.matches("supervisor_spec.lua:" .. (line + 4) .. ": market.monitor: pattern", err, 1, true)
    ok, err = pcall(market.monitor, 1, function() end, 7)
    assert.matches("options must be a table or a name", err, 1, true)
    ok, err = pcall(market.monitor, 1, function() end, { subscribers = true })
    assert.matches("a pid's lifeline has no subscribers", err, 1, true)
  end)
end)

describe("market.link", function()
  -- A process that holds a subscription to `name` until it is killed.
  local function holder(name)
    return market.spawn(function() return market.transition(nil, market.subscriber(name, {})) end)
  end

  it("ends the linked process when the other one ends, normally or not, with a reason naming it", function()
    local log = H.log()
    ground(function()
      local a, b = market.perform(holder("a"), holder("b"))                  -- 2, 3
      local la = market.perform(market.spawn(function()
        market.perform(market.link(a), market.link(a), market.subscriber("la", {}))
      end))
      local lb = market.perform(holder("lb"))
      market.perform(market.link(b, lb))           -- linked by another process
      for _, pid in ipairs { la, lb } do
        market.perform(market.monitor(pid, function(_, reason) log("%d ended: %s", pid, reason) end))
      end
      market.pause()
      log("both alive")
      market.perform(market.quit(a, "boom"))
      market.pause()
      market.perform(market.quit(b))
    end)
    assert.same({
      "both alive",
      '4 ended: linked process 2 ended: "boom"',
      "5 ended: linked process 3 ended: nil",
    }, log.lines)
  end)

  it("kills without a failure: no crash report, whatever the other's reason", function()
    -- A kill, as quit(pid) is: a supervisor tree stopped in order
    -- (quit(sup)) made one crash report per child, and `market --strict`
    -- exited 3.  A crash that ends the other process is reported once,
    -- as its own.
    local log, reports, line = H.log(), {}, nil
    ground(function()
      for _, how in ipairs { "nil", "shutdown", "boom", "crash" } do
        local a = market.perform(market.spawn(function()
          return market.transition(nil, market.subscriber("a-" .. how, { on_message = function()
            line = debug.getinfo(1, "l").currentline + 1
            error("a crashed")
          end }))
        end, { name = "a-" .. how }))
        local l = market.perform(holder("linked-" .. how))
        market.perform(market.link(a, l),
          market.monitor(l, function(_, reason) log("%s: %s", how, reason) end))
        market.pause()
        if how == "crash" then market.perform(market.send("a-crash"))
        else market.perform(market.quit(a, how ~= "nil" and how or nil)) end
        market.pause()
      end
      market.perform(market.link(99, market.perform(holder("linked-late"))))
    end, { on_crash = function(r) reports[#reports + 1] = r.pid .. ": " .. tostring(r.reason) end })
    assert.same({ "nil: linked process 2 ended: nil",
                  'shutdown: linked process 4 ended: "shutdown"',
                  'boom: linked process 6 ended: "boom"',
                  'crash: linked process 8 ended: "spec/supervisor_spec.lua:' .. line .. ': a crashed"' },
                log.lines)
    assert.same({ "8: spec/supervisor_spec.lua:" .. line .. ": a crashed" }, reports)
  end)

  it("stops a tree in order without a failure: market --strict exits 0", function()
    local status, _, err = H.run_script([[
local market = require "market"
local sup = market.perform(market.supervisor {
  children = { { id = "a", start = function() return market.transition(nil, market.subscriber("a", {})) end },
               { id = "s", start = market.supervisor { children = {
                   { id = "b", start = function() return market.transition(nil, market.subscriber("b", {})) end } } } } },
})
market.pause(); market.pause()
market.perform(market.quit(sup))
]], "--no-drivers --strict")
    assert.equal(0, status, err)
    assert.equal("", err)
  end)

  it("does not keep its process alive, hears nothing, and cannot be deleted by it", function()
    local log = H.log()
    ground(function()
      local a = market.perform(holder("a"))
      local pid = market.perform(market.spawn(function()
        market.perform(market.link(a), market.subscriber("work", { name = "work" }))
        local ev = market.yield()           -- the poke; nothing before it
        log("%s %s %s", ev.type, ev.endpoint, ev.message)
        market.perform(market.delete_endpoint("market:link/" .. a, "lie"))
        market.perform(market.delete_endpoint("work"))
        log("still here")
      end))
      market.perform(market.monitor(pid, function(_, reason) log("ended: %s", reason) end))
      market.pause()
      market.perform(market.send("work"))
      market.pause()
      market.pause()                        -- its deletion told, it has finished
      market.perform(market.quit(a))
    end)
    assert.same({ "message work work", "still here", "ended: nil" }, log.lines)
  end)

  it("to a pid that names no live process, kills at once", function()
    local log = H.log()
    ground(function()
      local pid = market.perform(market.spawn(function()
        market.perform(market.subscriber("work", {}), market.link(999))
        log("not reached")
      end))
      market.perform(market.monitor(pid, function(_, reason) log("ended: %s", reason) end))
    end)
    assert.same({ 'ended: linked process 999 ended: "no such process"' }, log.lines)
  end)

  it("checks its arguments at the caller's line, and is not performed at meta level", function()
    local line = debug.getinfo(1, "l").currentline
    local ok, err = pcall(function() local l = market.link("2"); return l end)
    assert.is_false(ok)
    assert.matches("supervisor_spec.lua:" .. (line + 1) .. ": market.link: pid must be an integer pid, got string",
                   err, 1, true)
    ok, err = pcall(market.link, 1.5)
    assert.matches("market.link: pid must be an integer pid, got 1.5", err, 1, true)
    ok, err = pcall(market.link, 1, {})
    assert.matches("market.link: who must be an integer pid, got table", err, 1, true)
    assert.equal("link", market.link(3.0).kind)
    local meta
    ground(function()
      meta = select(2, pcall(market.perform, market.at_meta_level(market.link(1))))
    end)
    assert.matches("market.link: cannot be performed at meta level", meta, 1, true)
  end)
end)

describe("market.supervisor", function()
  it("ends its children when it is killed from outside, however: they are linked to it", function()
    local log, ended, names, sups = H.log(), {}, {}, {}
    ground(function()
      local function named(id)
        return function(pid) names[pid] = id; return child(log, id)(pid) end
      end
      -- Two trees, one after the other: sup, a, sub, c get pids in turn.
      for i = 1, 2 do
        local sup = market.perform(market.supervisor {
          children = {
            { id = "a", start = named("a" .. i) },
            { id = "sub", start = market.supervisor { children = { { id = "c", start = named("c" .. i) } } } },
          },
        })
        for _ = 1, 3 do market.pause() end         -- the tree is up
        names[sup], names[sup + 2], sups[i] = "sup" .. i, "sub" .. i, sup
      end
      for pid, name in pairs(names) do
        market.perform(market.monitor(pid, function(_, reason) ended[name] = reason end))
      end
      market.perform(market.quit(sups[1], "killed"), market.quit(sups[2]))
      for _ = 1, 5 do market.pause() end
      -- Whatever is left (nothing, with links) goes now, so the VM ends.
      for pid in pairs(names) do market.perform(market.quit(pid, "left over")) end
    end)
    assert.same({ "a1 up", "c1 up", "a2 up", "c2 up" }, log.lines)
    local s1, s2 = sups[1], sups[2]
    assert.same({
      sup1 = "killed",
      a1 = ('linked process %d ended: "killed"'):format(s1),
      sub1 = ('linked process %d ended: "killed"'):format(s1),
      c1 = ('linked process %d ended: "linked process %d ended: \\"killed\\""'):format(s1 + 2, s1),
      sup2 = nil,
      a2 = ("linked process %d ended: nil"):format(s2),
      sub2 = ("linked process %d ended: nil"):format(s2),
      c2 = ('linked process %d ended: "linked process %d ended: nil"'):format(s2 + 2, s2),
    }, ended)
    assert.is_true(names[s2] == "sup2" and ended.sup2 == nil)
  end)

  it("still stops its children newest first, with \"shutdown\", when it gives up", function()
    local log = H.log()
    ground(function()
      local sup = market.perform(market.supervisor {
        intensity = 0,
        children = {
          { id = "s1", start = child(log, "s1") },
          { id = "s2", start = child(log, "s2") },
          { id = "flaky", start = function()
              log("flaky up")
              return market.transition(nil, market.subscriber({ "child", "flaky" }, {
                on_message = function() error("flaky crashed", 0) end }))
            end },
        },
      })
      for _ = 1, 3 do market.pause() end           -- the children are up
      for pid, id in pairs { [sup] = "sup", [sup + 1] = "s1", [sup + 2] = "s2" } do
        market.perform(market.monitor(pid, function(_, reason) log("%s ended: %s", id, reason) end))
      end
      market.perform(market.send({ "child", "flaky" }))
    end)
    assert.same({
      "s1 up", "s2 up", "flaky up",
      "s2 ended: shutdown", "s1 ended: shutdown",
      'sup ended: market.supervisor: more than 0 restarts in 5 s; child "flaky" ended: "flaky crashed"',
    }, log.lines)
  end)

  it("one_for_one restarts only the child that failed", function()
    local log, n = H.log(), 0
    ground(function()
      market.perform(market.supervisor {
        strategy = "one_for_one", intensity = 5,
        children = {
          { id = "a", start = child(log, "a") },
          { id = "b", start = function(pid)
              n = n + 1
              return child(log, "b", n == 1 and "crash" or nil)(pid)
            end },
          { id = "c", start = child(log, "c") },
        },
      })
    end)
    assert.same({ "a up", "b up", "c up", "b up" }, log.lines)
  end)

  it("one_for_all stops the others newest first, then starts all in order", function()
    local log, n, pids = H.log(), 0, {}
    ground(function()
      market.perform(market.supervisor {
        strategy = "one_for_all", intensity = 5,
        children = {
          { id = "a", start = function(pid) pids[pid] = "a"; return child(log, "a")(pid) end },
          { id = "b", start = function(pid)
              pids[pid] = "b"
              n = n + 1
              return child(log, "b", n == 1 and "crash" or nil)(pid)
            end },
          { id = "c", start = function(pid) pids[pid] = "c"; return child(log, "c")(pid) end },
          { id = "d", start = function(pid) pids[pid] = "d"; return child(log, "d")(pid) end },
        },
      })
      market.pause()                 -- the supervisor has started them
      -- Watch the lifelines of the first a, c and d from here: their
      -- ends come in the order they were stopped.
      for pid = 3, 6 do
        market.perform(market.monitor(pid, function(_, reason)
          log("%s stopped: %s", pids[pid], reason)
        end))
      end
    end)
    assert.same({ "a up", "b up", "c up", "d up", "b stopped: b crashed",
                  "d stopped: shutdown", "c stopped: shutdown", "a stopped: shutdown",
                  "a up", "b up", "c up", "d up" }, log.lines)
  end)

  it("restarts permanent children always, transient ones after a failure, temporary ones never", function()
    local log, tries = H.log(), {}
    local function once(id, restart, fate)
      return { id = id, restart = restart, start = function(pid)
        tries[id] = (tries[id] or 0) + 1
        return child(log, id, tries[id] == 1 and fate or nil)(pid)
      end }
    end
    ground(function()
      market.perform(market.supervisor {
        intensity = 10,
        children = {
          once("perm-quit", "permanent", "quit"), once("perm-crash", "permanent", "crash"),
          once("perm-done", "permanent", "done"),
          once("trans-quit", "transient", "quit"), once("trans-crash", "transient", "crash"),
          once("trans-done", "transient", "done"),
          once("temp-quit", "temporary", "quit"), once("temp-crash", "temporary", "crash"),
        },
      })
    end)
    assert.same({ ["perm-quit"] = 2, ["perm-crash"] = 2, ["perm-done"] = 2,
                  ["trans-quit"] = 1, ["trans-crash"] = 2, ["trans-done"] = 1,
                  ["temp-quit"] = 1, ["temp-crash"] = 1 }, tries)
  end)

  it("quits with a reason saying so when restarts exceed the intensity, its parent sees it go", function()
    local log, starts = H.log(), 0
    ground(function()
      local sup = market.perform(market.supervisor {
        intensity = 2, period = 60, name = "sup",
        children = {
          { id = "steady", start = child(log, "steady") },
          { id = "flaky", start = function(pid)
              starts = starts + 1
              return child(log, "flaky", "crash")(pid)
            end },
        },
      })
      -- The parent's view: the supervisor's absence, with its reason.
      market.perform(market.monitor(sup, function(_, reason) log("sup down: %s", reason) end))
      market.perform(market.observe_subscribers({ "child", "steady" }, H.logging(log, "parent")))
    end)
    assert.equal(3, starts)            -- the first start and two restarts
    assert.same({
      "steady up", "flaky up",
      "parent presence #1 subscriber/participant [\"child\", \"steady\"]",
      "flaky up", "flaky up",
      "parent absence #1 subscriber/participant [\"child\", \"steady\"] shutdown",
      "sup down: market.supervisor: more than 2 restarts in 60 s; child \"flaky\" ended: \"flaky crashed\"",
    }, log.lines)
  end)

  it("forgets restarts older than its period", function()
    local starts, gave_up = 0, nil
    ground(function()
      local sup = market.perform(market.supervisor {
        intensity = 1, period = 0.2,
        children = { { id = "x", start = function()
          starts = starts + 1
          if starts == 1 then error("first", 0) end
          if starts == 2 then market.yield(300); error("second, after the period", 0) end
          return market.transition(nil, market.subscriber("live"))    -- the third lives
        end } },
      })
      market.perform(market.monitor(sup, function(_, why) gave_up = why end))
      market.yield(600)
      market.perform(market.quit(sup))
    end)
    assert.equal(3, starts)
    assert.is_nil(gave_up)
  end)

  it("waits the back-off before a restart, longer each time, up to its cap", function()
    local times = {}
    ground(function()
      market.perform(market.supervisor {
        intensity = 3, period = 60, backoff = { initial = 100, factor = 3, max = 250 },
        children = { { id = "x", restart = "transient", start = function()
          times[#times + 1] = market.now()
          if #times <= 3 then error("again", 0) end
        end } },
      })
    end)
    assert.equal(4, #times)
    assert.is_true(times[2] - times[1] >= 100, "first back-off")
    assert.is_true(times[3] - times[2] >= 250, "second back-off: 300, capped at 250")
    assert.is_true(times[4] - times[3] >= 250, "third back-off: the cap")
    assert.is_true(times[4] - times[1] < 5000, "liveness")
  end)

  -- The wildcard as a message, send(market._), reaches the back-off's
  -- alarm subscription too: it was taken for the alarm, and the child came
  -- back at once.
  it("waits its back-off out when a process sends the wildcard meanwhile", function()
    local times = {}
    ground(function()
      market.perform(market.supervisor {
        intensity = 3, period = 60, backoff = 300,
        children = { { id = "x", restart = "transient", start = function()
          times[#times + 1] = market.now()
          if #times == 1 then error("again", 0) end
        end } },
      })
      market.perform(market.subscriber(market.ground.alarm(math.floor(market.now()) + 50), "soon"))
      market.wait_for(function(e) return e.type == "message" and e.endpoint == "soon" end)
      market.perform(market.delete_endpoint("soon"), market.send(_))
    end)
    assert.equal(2, #times)
    assert.is_true(times[2] - times[1] >= 300, "the back-off: " .. (times[2] - times[1]))
  end)

  it("gives up with a reason when its back-off's alarm can no longer fire", function()
    -- In a nested VM the alarm is the event relay's: when the relay goes,
    -- the alarm goes with its reason, and the child would wait for ever.
    local relay = require "market.event_relay"
    local reason
    ground(function()
      market.perform(market.subscriber({ "sup-ended", _ }, "ended"),
        market.subscriber(market.ground.alarm(math.floor(market.now()) + 3000), "limit"))
      local vm = market.perform(market.nested_vm(function()
        local r = market.perform(relay.event_relay("below"))
        local sup = market.perform(market.supervisor {
          intensity = 5, backoff = 60000,
          children = { { id = "x", start = function() error("down", 0) end } } })
        market.perform(market.monitor(sup, function(_, why)
          return market.transition_no_state(market.at_meta_level(market.send({ "sup-ended", why })))
        end))
        -- Wait until the relay publishes the back-off's alarm here (a
        -- monotonic one: a delay).
        market.perform(market.observe_publishers(market.ground.monotonic_alarm(_), "watched"))
        market.wait_for(function(e) return e.endpoint == "watched" end)
        market.perform(market.quit(r, "relay gone"))
      end))
      local ev = market.wait_for(function(e) return e.type == "message" end)
      if ev.endpoint == "ended" then reason = ev.message[2] end
      market.perform(market.quit(vm), market.delete_endpoint("limit"))
    end)
    assert.equal("market.supervisor: the back-off's alarm went: \"relay gone\"", reason)
  end)

  it("under one_for_all, stops the others at once and starts the whole group after the back-off", function()
    local log, n, t = H.log(), 0, {}
    ground(function()
      market.perform(market.supervisor {
        strategy = "one_for_all", intensity = 5, backoff = 100,
        children = {
          { id = "a", start = function(pid) t[#t + 1] = market.now(); return child(log, "a")(pid) end },
          { id = "b", start = function(pid)
              n = n + 1
              return child(log, "b", n == 1 and "crash" or nil)(pid)
            end },
        },
      })
      market.pause()
      market.perform(market.monitor(3, function(_, reason) log("a stopped: %s", reason) end))
    end)
    assert.same({ "a up", "b up", "a stopped: shutdown", "a up", "b up" }, log.lines)
    assert.is_true(t[2] - t[1] >= 100, "the back-off")
  end)

  it("takes \"shutdown\" for a normal end of a transient child, as OTP does", function()
    local log = H.log()
    ground(function()
      market.perform(market.supervisor {
        children = { { id = "t", restart = "transient", start = child(log, "t") } } })
      market.pause()                 -- the supervisor's boot: t is spawned,
      market.pause()                 -- and boots
      market.perform(market.quit(3, "shutdown"))
    end)
    assert.same({ "t up" }, log.lines)
  end)

  it("supervises supervisors: a child's restart intensity is its parent's failure", function()
    local log = H.log()
    ground(function()
      market.perform(market.supervisor {
        intensity = 1, name = "top",
        children = {
          { id = "inner", start = market.supervisor {
              intensity = 0, name = "inner",
              children = { { id = "bad", start = child(log, "bad", "crash") } } } },
        },
      })
    end)
    -- bad: one start per inner supervisor (intensity 0); inner: started
    -- twice, then top gives up.
    assert.same({ "bad up", "bad up" }, log.lines)
  end)

  it("supervises a nested VM as any child", function()
    local log, n = H.log(), 0
    ground(function()
      market.perform(market.supervisor {
        intensity = 2,
        children = { { id = "vm", start = market.nested_vm(function()
          n = n + 1
          log("inside %s", select(3, market.self()))
          -- The VM ends with its last process: a crash the first time.
          if n == 1 then return market.transition(nil, market.at_meta_level(market.quit(nil, "vm down"))) end
          return market.transition(nil, market.subscriber("stay", {}))
        end) } },
      })
    end)
    assert.same({ "inside ground/3", "inside ground/4" }, log.lines)
  end)

  it("restarts a transient nested VM whose last process crashed", function()
    -- The VM ends with its last process's reason: a crash inside is the
    -- VM's failure, not a normal end that a transient child stays down for.
    local log, n, line = H.log(), 0, nil
    ground(function()
      market.perform(market.supervisor {
        intensity = 2,
        children = { { id = "vm", restart = "transient", start = market.nested_vm(function()
          n = n + 1
          log("inside, run %d", n)
          if n == 1 then line = debug.getinfo(1, "l").currentline; error("broke inside") end
          return market.transition(nil, market.subscriber("stay", {}))
        end) } },
      })
    end, { on_crash = function(r) log("crash: %s", r.reason) end })
    assert.same({ "inside, run 1", "crash: spec/supervisor_spec.lua:" .. line .. ": broke inside",
                  "inside, run 2" }, log.lines)
  end)

  it("ends, like any process, when none of its children is left to watch", function()
    local log = H.log()
    ground(function()
      local sup = market.perform(market.supervisor {
        children = { { id = "t", restart = "temporary", start = child(log, "t", "crash") },
                     { id = "u", restart = "transient", start = child(log, "u", "quit") } } })
      market.perform(market.monitor(sup, function(_, reason) log("sup ended: %s", reason) end))
    end)
    assert.same({ "t up", "u up", "sup ended: nil" }, log.lines)
  end)

  it("checks its spec at the caller's line", function()
    local function err_of(spec)
      local ok, err = pcall(function() local s = market.supervisor(spec); return s end)
      assert.is_false(ok)
      return err
    end
    local line = debug.getinfo(1, "l").currentline
    assert.matches("supervisor_spec.lua:" .. (line - 4) .. ": market.supervisor: the spec must be a table",
                   err_of(nil), 1, true)
    local f = function() end
    for bad, msg in pairs {
      [{ strategy = "rest_for_one", children = {} }] = "strategy must be",
      -- A value that is no term by its type (repr raised on it).
      [{ strategy = print, children = {} }] = "strategy must be \"one_for_one\" or \"one_for_all\", got function",
      [{ children = { { id = "a", start = f, restart = print } } }] =
        "child \"a\": restart must be \"permanent\", \"transient\" or \"temporary\", got function",
      [{ intensity = -1, children = {} }] = "intensity must be an integer",
      [{ period = 0, children = {} }] = "period must be",
      [{ backoff = -5, children = {} }] = "backoff must be",
      [{ backoff = { initial = 10, max = 5 }, children = {} }] = "backoff.max must be",
      [{ backoff = { initial = 10, step = 5 }, children = {} }] = "unknown backoff key 'step'",
      [{}] = "children must be a list",
      -- Keyed by id, they were not seen at all: a supervisor of nothing.
      [{ children = { db = { id = "db", start = f } } }] = "children must be a list of child specs, not keyed by \"db\"",
      [{ children = { [2] = { id = "b", start = f } } }] = "children must be a list of child specs, not keyed by 2",
      [{ children = {}, strtegy = "one_for_all" }] = "unknown key 'strtegy'",
      [{ children = { { start = f } } }] = "child 1: id must be",
      [{ children = { { id = "a", start = f }, { id = "a", start = f } } }] = "child 2: id \"a\" is taken by child 1",
      [{ children = { { id = "a", start = f, restart = "always" } } }] = "child \"a\": restart must be",
      [{ children = { { id = "a", start = 5 } } }] = "child \"a\": start must be a boot function or a spawn action",
      [{ children = { { id = "a", start = market.spawn(f, { k = f }) } } }] = "child \"a\": a start action with a continuation k",
      [{ children = { { id = "a", start = f, restrat = "temporary" } } }] = "child \"a\": unknown key 'restrat'",
      [{ children = { { id = "a", start = f, name = 5 } } }] = "child \"a\": name must be a string",
      -- (Beside a spawn action, a name was dropped without a word, a number too.)
      [{ children = { { id = "a", start = market.spawn(f), name = "a" } } }] =
        "child \"a\": name is a boot function's; a spawn action names its process itself",
      [{ children = { { id = "a", start = market.spawn(f), name = 5 } } }] = "child \"a\": name must be a string",
    } do
      assert.matches("market.supervisor: " .. msg, err_of(bad), 1, true)
    end
  end)
end)

-- lifecycle_spec.lua: processes: spawn, continuations, yield, quit, crash,
-- implicit exit, VM exit, straight-line code (DESIGN §1, §4).
package.path = "spec/support/?.lua;" .. package.path
local market = require "market"
local H = require "helpers"
local _ = market._
local T, S = market.transition, market.transition_no_state

-- A process that just holds `actions` (from its boot transition).
local function holder(name, ...)
  local acts = table.pack(...)
  return market.spawn(function() return T(0, table.unpack(acts, 1, acts.n)) end, { name = name })
end

describe("spawn", function()
  it("a spawn continuation receives the new pid, which the child sees as its own", function()
    local log = H.log()
    H.ground(function()
      H.step(market.spawn(function()
        return T("parent-state", market.spawn(function(pid)
          log("child boot arg %d self %d", pid, (market.self()))
        end, { name = "child", k = function(state, pid)
          log("k state %s pid %d", state, pid)
        end }))
      end, { name = "parent" }))
    end)
    -- boot is pid 1, the parent 2, the child 3; the child boots first (its
    -- boot was queued by the spawn, the continuation after it).
    assert.same({ "child boot arg 3 self 3", "k state parent-state pid 3" }, log.lines)
  end)

  it("perform(spawn) returns each pid, in order, and pids are unique and increasing", function()
    local log = H.log()
    H.ground(function()
      local a, b, c = market.perform(market.spawn(function() end), market.send("x"),
                                     market.spawn(function() end), market.spawn(function() end))
      log("%d %d %d", a, b, c)
    end)
    assert.same({ "2 3 4" }, log.lines)
  end)

  -- perform(spawn) alone is done in C (lua/laction.c, dospawn) unless the
  -- action has a continuation or is a nested VM, which market.lua does.
  it("perform(spawn) with a continuation or a name: each is kept", function()
    local log = H.log()
    H.ground(function()
      local named = market.perform(market.spawn(function()
        log("named %s", select(2, market.self()))
      end, { name = "named" }))
      local plain = market.perform(market.spawn(function() end))
      local child = market.perform(market.spawn(function() end, {
        k = function(_, pid) log("k got %d", pid) end }))
      log("pids %d %d %d", named, plain, child)
      market.pause()
    end)
    assert.same({ "pids 2 3 4", "named named", "k got 4" }, log.lines)
  end)

  -- Several actions in one perform: C does them in order until one it
  -- leaves to market.lua (a continuation's spawn, an anonymous endpoint),
  -- which does that one and all after it (lua/laction.c, f_perform).
  it("perform of several actions keeps their order and every spawn's pid across C and Lua",
     function()
    local log = H.log()
    H.ground(function()
      local a, b, c, d = market.perform(
        market.subscriber({ "seen", _ }, { name = "named", on_message = function(_, m)
          log("named %s", m[2])
        end }),
        market.spawn(function() end),
        market.send({ "seen", 1 }),
        market.spawn(function() end, { k = function(_, pid) log("k got %d", pid) end }),
        market.subscriber({ "seen", _ }, { on_message = function(_, m) log("anonymous %s", m[2]) end }),
        market.spawn(function() end),
        market.send({ "seen", 2 }),
        market.spawn(function() end))
      log("pids %d %d %d %d", a, b, c, d)
      market.pause()
    end)
    assert.same({ "pids 2 3 4 5", "named 1", "k got 3", "named 2", "anonymous 2" }, log.lines)
  end)

  it("perform with a bad argument does the actions before it, then names it", function()
    local log = H.log()
    H.ground(function()
      H.step(holder("watch", market.subscriber("before", { on_message = function() log("got it") end })))
      local ok, err = pcall(market.perform, market.send("before"), market.spawn(function() end), 42)
      log("%s %s", tostring(ok), err)
      market.pause()
    end)
    assert.same({ "false market.perform: argument 3 is not an action", "got it" }, log.lines)
  end)

  it("the child's boot transition sets its initial state and actions", function()
    local log = H.log()
    H.ground(function()
      H.step(holder("a", market.subscriber("go", { on_message = function(s, m)
        log("state %s", s)
        return T(s + 1)
      end })))
      H.step(market.send("go"), market.send("go"), market.send("go"))
    end)
    assert.same({ "state 0", "state 1", "state 2" }, log.lines)
  end)

  it("transition_no_state keeps the state", function()
    local log = H.log()
    H.ground(function()
      H.step(market.spawn(function()
        return T("kept", market.subscriber("go", { on_message = function(s)
          log("state %s", s)
          return S()
        end }))
      end))
      H.step(market.send("go"), market.send("go"))
    end)
    assert.same({ "state kept", "state kept" }, log.lines)
  end)

  it("a transition's actions all run, in order, however many follow its sends", function()
    for _k, count in ipairs { 1, 7, 8, 20 } do   -- 2, 8, 9, 21 left over
      local log = H.log()
      H.ground(function()
        H.step(holder("rx", market.subscriber({ "n", _ }, { on_message = function(s, m)
          log("%d", m[2])
        end })))
        local acts = { market.send({ "n", 0 }) }
        for i = 1, count do
          -- a spawn in between: the sends after it are left to market.lua
          acts[#acts + 1] = i % 2 == 1 and market.spawn(function() end) or market.send({ "n", i })
        end
        acts[#acts + 1] = market.send({ "n", count + 1 })
        H.step(market.spawn(function() return T(0, table.unpack(acts)) end))
      end)
      local want = { "0" }
      for i = 2, count, 2 do want[#want + 1] = tostring(i) end
      want[#want + 1] = tostring(count + 1)
      assert.same(want, log.lines, "with " .. count .. " actions after the first send")
    end
  end)

  it("a process spawned after others died has a context of its own", function()
    -- The registry slots that held dead processes' contexts are reused
    -- for the next ones (lproc.c, newproc): none may see another's state
    -- or handlers.
    local log = H.log()
    H.ground(function()
      for wave = 1, 3 do
        local pids = {}
        for i = 1, 50 do
          pids[i] = market.perform(market.spawn(function()
            return T(wave * 100 + i, market.subscriber({ "ctx", i }, { name = "in",
              on_message = function(s, m)
                if s ~= wave * 100 + m[2] then log("wave %d: %d got state %s", wave, m[2], s) end
                return T(s)
              end }))
          end))
        end
        market.pause()
        for i = 1, 50 do market.perform(market.send({ "ctx", i })) end
        market.pause()
        for i = 1, 50 do market.perform(market.quit(pids[i])) end
        market.pause()
      end
      log("done")
    end)
    assert.same({ "done" }, log.lines)
  end)

  -- A dead process's context table is emptied and becomes the next
  -- process's (lproc.c, spare_ctx), up to as many as the last run of
  -- spawns took spare slots.  drain() leaves none kept and a run going
  -- that has taken 1,000 (more than the earlier tests leave kept): a
  -- crowd spawned, killed, and spawned again, holding on.  What a dead
  -- process kept in its context (events wait_for passed over, the count
  -- naming anonymous endpoints) is not the next one's.
  local function drain()
    for round = 1, 2 do
      local pids = {}
      for i = 1, 1000 do
        pids[i] = market.perform(market.spawn(function()
          return T(nil, market.subscriber({ "crowd", i }, "in"))
        end))
      end
      market.pause()
      if round == 1 then
        for i = 1, 1000 do market.perform(market.quit(pids[i])) end
        market.pause()
      end
    end
  end

  it("a process spawned after one died waiting does not get the events it kept", function()
    local log = H.log()
    H.kept(function()
      drain()
      local waiter = market.perform(market.spawn(function()
        market.perform(market.subscriber({ "kept", _ }, { name = "in" }))
        market.wait_for(function() return false end)
      end))
      market.pause()
      market.perform(market.send({ "kept", 1 }))
      market.pause()
      market.perform(market.quit(waiter))
      market.pause()
      market.perform(market.spawn(function()
        log("next: %s %s", market.yield(0))
      end))
      market.pause()
    end)
    assert.same({ "next: nil timeout" }, log.lines)
  end)

  it("processes spawned after others died name their first anonymous endpoint #1", function()
    local log = H.log()
    H.kept(function()
      local function anon(who)
        return market.spawn(function()
          return T(nil, market.subscriber({ "anon", _ }, {
            on_message = function(_, _, name) log("%s: %s", who, name) end }))
        end)
      end
      drain()
      for _, who in ipairs({ "first", "next" }) do
        local pids = {}
        for i = 1, 5 do pids[i] = market.perform(anon(who)) end
        market.pause()
        market.perform(market.send({ "anon", who }))
        market.pause()
        for i = 1, 5 do market.perform(market.quit(pids[i])) end
        market.pause()
      end
    end)
    assert.same({ "first: #1", "first: #1", "first: #1", "first: #1", "first: #1",
                  "next: #1", "next: #1", "next: #1", "next: #1", "next: #1" }, log.lines)
  end)
end)

describe("yield", function()
  it("k runs after everything queued before it, and before what is queued after", function()
    local log = H.log()
    H.ground(function()
      H.step(holder("listener", market.subscriber({ "m", _ }, { on_message = function(s, m)
        log("listener %s", m[2])
      end })))
      H.step(holder("yielder", market.subscriber("go", { on_message = function(s)
        return T(s, market.send({ "m", 1 }), market.send({ "m", 2 }),
                 market.yield(function(state)
                   log("k state %s", state)
                   return T(state + 10, market.send({ "m", 3 }))
                 end),
                 market.send({ "m", 4 }))
      end })))
      H.step(market.send("go"))
    end)
    assert.same({ "listener 1", "listener 2", "k state 0", "listener 4", "listener 3" },
                log.lines)
  end)

  it("a process whose only work is a pending continuation is kept until it runs", function()
    local log = H.log()
    H.ground(function()
      H.step(market.spawn(function()
        return T(7, market.yield(function(s)
          log("k ran with %d", s)
          return T(s, market.yield(function(s2) log("second k %d", s2) end))
        end))
      end))
    end)
    assert.same({ "k ran with 7", "second k 7" }, log.lines)
  end)
end)

describe("quit", function()
  it("actions after a quit in the same transition are not applied", function()
    local log = H.log()
    H.ground(function()
      H.step(holder("listener", market.subscriber({ "q", _ }, { on_message = function(s, m)
        log("got %s", m[2])
      end })))
      H.step(market.spawn(function()
        return T(0, market.send({ "q", "before" }), market.quit(), market.send({ "q", "after" }),
                 market.spawn(function() log("spawned after quit") end))
      end))
      log("end")
    end)
    assert.same({ "got before", "end" }, log.lines)
  end)

  it("a process quitting in the middle of its own transition: earlier actions stand", function()
    local log = H.log()
    H.ground(function()
      H.step(holder("obs", market.observe_publishers({ "mid", _ }, H.logging(log, "obs"))))
      H.step(market.spawn(function()
        return T(0, market.publisher({ "mid", 1 }), market.quit(nil, "done"),
                 market.publisher({ "mid", 2 }))
      end))
    end)
    -- The observer's presence event was queued before the quit's absence.
    -- (It is an observer: publishers are participants, so it sees them.)
    assert.same({ 'obs presence #1 publisher/participant ["mid", 1]',
                  'obs absence #1 publisher/participant ["mid", 1] done' }, log.lines)
  end)

  it("straight-line code does not run another line after perform(quit())", function()
    local log = H.log()
    H.ground(function()
      H.step(market.spawn(function()
        log("before")
        market.perform(market.quit())
        log("after")
      end))
      log("end")
    end)
    assert.same({ "before", "end" }, log.lines)
  end)

  it("quit(pid) kills another process; its peers, the killer among them, see the absence",
     function()
    local log = H.log()
    H.ground(function()
      local victim = market.perform(holder("victim", market.publisher({ "v", 1 }, "pub")))
      H.step(holder("bystander", market.subscriber({ "v", _ }, H.logging(log, "bystander"))))
      H.step(holder("killer", market.subscriber({ "v", _ }, H.logging(log, "killer", {
        name = "watch",
        on_presence = function(s, role, ep)
          log("killer presence %s %s", ep, role)
          return T(s, market.quit(victim, "killed"))
        end,
      }))))
      log("end")
    end)
    assert.same({
      'bystander presence #1 publisher/participant ["v", 1]',
      'killer presence watch publisher/participant ["v", 1]',
      'bystander absence #1 publisher/participant ["v", 1] killed',
      'killer absence watch publisher/participant ["v", 1] killed',
      "end" }, log.lines)
  end)

  it("quit(pid) of a pid that does not exist changes nothing", function()
    local log = H.log()
    H.ground(function()
      H.step(holder("a", market.subscriber("x", { on_message = function() log("a alive") end })))
      H.step(market.quit(999, "nobody"))
      H.step(market.send("x"))
    end)
    assert.same({ "a alive" }, log.lines)
  end)

  -- perform(quit(pid, reason)) alone is done in C (lua/laction.c), and a
  -- quit action is a value that cannot change, as a send is.
  it("perform(quit(pid, reason)) kills with the reason; a quit action cannot be changed",
     function()
    local log, why = H.log(), market.record("why", "code")
    local reasons, gone, failure = {}, {}, nil
    H.ground(function()
      local pids = {}
      for i = 1, 3 do pids[i] = market.perform(holder("p" .. i, market.publisher({ "q", i }))) end
      H.step(holder("obs", market.observe_publishers({ "q", _ }, {
        on_absence = function(_, role, reason)
          gone[role.topic[2]] = true
          reasons[role.topic[2]] = reason
        end })))
      market.perform(market.quit(pids[1], why(7)))
      market.perform(market.quit(pids[2]))
      H.settle()
      log("alive")
      local a = market.quit(pids[3], "r")
      local ok, err = pcall(function() a[1] = pids[1] end)
      failure = not ok and tostring(err)
      assert.same({ "quit", pids[3], "r", pids[3], "r" }, { a.kind, a.pid, a.reason, a[1], a[2] })
      assert.equal("action quit", tostring(a))
      market.perform(a)
      H.settle()
      log("alive after the quit")
    end)
    assert.equal('why(7)', market.repr(reasons[1]))
    assert.is_nil(reasons[2])
    assert.equal("r", reasons[3])
    assert.same({ true, true, true }, gone)
    assert.same({ "alive", "alive after the quit" }, log.lines)
    assert.matches("lifecycle_spec.lua:%d+: market.action: an action cannot be changed", failure)
  end)

  it("quit(0) and negative pids name no process: only quit() with no pid is this process", function()
    local log = H.log()
    H.ground(function()
      for _, pid in ipairs { 0, -1, math.mininteger } do
        market.perform(market.quit(pid, "nobody"))
        log("alive after quit(%d)", pid)
      end
      market.perform(market.quit())
      log("not reached")
    end)
    assert.same({ "alive after quit(0)", "alive after quit(-1)",
                  "alive after quit(" .. math.mininteger .. ")" }, log.lines)
  end)
end)

describe("absence reasons", function()
  local function scenario(how)
    local log = H.log()
    H.ground(function()
      H.step(holder("obs", market.subscriber({ "r", _ }, H.logging(log, "obs"))))
      H.step(holder("pub", market.publisher({ "r", 1 }, "p"),
        market.subscriber("go", { on_message = function(s)
          if how == "delete" then return T(s, market.delete_endpoint("p"))
          elseif how == "delete with reason" then
            return T(s, market.delete_endpoint("p", { "moved", 42 }))
          elseif how == "quit" then return T(s, market.quit())
          elseif how == "quit with reason" then return T(s, market.quit(nil, "tired"))
          elseif how == "crash" then error("kaboom in handler")
          elseif how == "crash with a term" then error(market.record("oops", "code")(17))
          elseif how == "crash with a non-term" then error(function() end)
          end
        end })))
      H.step(market.send("go"))
      log("end")
    end)
    return log.lines
  end

  it("delete_endpoint without a reason: nil", function()
    assert.same({ 'obs presence #1 publisher/participant ["r", 1]',
                  'obs absence #1 publisher/participant ["r", 1] nil', "end" },
                scenario("delete"))
  end)
  it("delete_endpoint with a reason: the reason, any term", function()
    assert.same({ 'obs presence #1 publisher/participant ["r", 1]',
                  'obs absence #1 publisher/participant ["r", 1] ["moved", 42]', "end" },
                scenario("delete with reason"))
  end)
  it("quit without a reason: nil", function()
    assert.same({ 'obs presence #1 publisher/participant ["r", 1]',
                  'obs absence #1 publisher/participant ["r", 1] nil', "end" },
                scenario("quit"))
  end)
  it("quit with a reason: the reason", function()
    assert.same({ 'obs presence #1 publisher/participant ["r", 1]',
                  'obs absence #1 publisher/participant ["r", 1] tired', "end" },
                scenario("quit with reason"))
  end)
  it("crash: the error message, with its position", function()
    local lines = scenario("crash")
    assert.equal(3, #lines)
    assert.matches('^obs absence #1 publisher/participant %["r", 1%] ' ..
                   'spec/lifecycle_spec%.lua:%d+: kaboom in handler$', lines[2])
  end)
  it("crash with a term as the error value: that term", function()
    assert.same({ 'obs presence #1 publisher/participant ["r", 1]',
                  'obs absence #1 publisher/participant ["r", 1] oops(17)', "end" },
                scenario("crash with a term"))
    -- the term itself, not its text (the log shows both alike)
    local oops, got = market.record("oops", "code"), nil
    H.ground(function()
      H.step(holder("obs", market.subscriber({ "r", _ }, {
        on_absence = function(_, _, reason) got = reason end })))
      H.step(holder("pub", market.publisher({ "r", 1 }, "p"),
        market.subscriber("go", { on_message = function() error(oops(17)) end })))
      H.step(market.send("go"))
    end)
    assert.is_true(oops:is(got), tostring(got))
    assert.equal(17, got.code)
  end)
  it("crash with a value that is no term: its tostring", function()
    local lines = scenario("crash with a non-term")
    assert.matches('^obs absence #1 publisher/participant %["r", 1%] function: 0x%x+$', lines[2])
  end)
end)

describe("crash isolation", function()
  it("one process's error neither stops the others nor the VM", function()
    local log = H.log()
    H.ground(function()
      H.step(holder("steady", market.subscriber({ "tick", _ }, { on_message = function(s, m)
        log("steady %d", m[2])
      end })))
      H.step(holder("fragile", market.subscriber({ "tick", _ }, { on_message = function(s, m)
        log("fragile %d", m[2])
        if m[2] == 2 then error("fragile breaks") end
      end })))
      for i = 1, 4 do H.step(market.send({ "tick", i })) end
      log("boot goes on")
    end)
    assert.same({ "steady 1", "fragile 1", "steady 2", "fragile 2", "steady 3", "steady 4",
                  "boot goes on" }, log.lines)
  end)

  it("a crash in a spawned process's boot kills only it; ground_vm still succeeds", function()
    local log = H.log()
    local ok, err = market.ground_vm(function()
      H.step(market.spawn(function() error("bad boot") end))
      log("after")
    end)
    assert.same({ "after" }, log.lines)
    assert.is_true(ok)
    assert.is_nil(err)
  end)

  it("a handler returning something that is not a transition kills only its process", function()
    local log = H.log()
    H.ground(function()
      H.step(holder("obs", market.subscriber({ "bad", _ }, H.logging(log, "obs"))))
      H.step(holder("wrong", market.publisher({ "bad", 1 }),
        market.subscriber("go", { on_message = function() return 42 end })))
      H.step(holder("right", market.publisher({ "bad", 2 }),
        market.subscriber("go", { on_message = function() log("right handled go") end })))
      H.step(market.send("go"))
      H.step(market.send("go"))
    end)
    assert.same({
      'obs presence #1 publisher/participant ["bad", 1]',
      'obs presence #1 publisher/participant ["bad", 2]',
      -- "go" reached both at once; the absence is queued behind it.
      "right handled go",
      'obs absence #1 publisher/participant ["bad", 1] ' ..
        'handler returned a number, not a transition (use market.transition)',
      "right handled go" }, log.lines)
  end)

  it("re-adding an endpoint name with a different role kills only that process", function()
    local log = H.log()
    H.ground(function()
      H.step(holder("obs", market.subscriber({ "re", _ }, H.logging(log, "obs"))))
      H.step(holder("readder", market.publisher({ "re", 1 }, "e"),
        market.subscriber("go", { on_message = function(s)
          return T(s, market.publisher({ "re", 2 }, "e"))
        end })))
      H.step(holder("other", market.subscriber("go", { on_message = function()
        log("other handled go")
      end })))
      H.step(market.send("go"))
    end)
    assert.same({
      'obs presence #1 publisher/participant ["re", 1]',
      "other handled go",     -- "go" reached both before the absence was queued
      'obs absence #1 publisher/participant ["re", 1] ' ..
        "endpoint 'e' re-added with a different role" }, log.lines)
  end)

  it("re-adding an endpoint with an equal role replaces its handlers, no new presence", function()
    local log = H.log()
    H.ground(function()
      H.step(holder("obs", market.subscriber({ "same", _ }, H.logging(log, "obs"))))
      H.step(holder("readder", market.publisher({ "same", 1 }, "e"),
        market.subscriber("go", { name = "go", on_message = function(s)
          log("old handler")
          return T(s, market.subscriber("go", { name = "go", on_message = function()
            log("new handler")
          end }), market.publisher({ "same", 1 }, "e"))
        end })))
      H.step(market.send("go"))
      H.step(market.send("go"))
      H.step(market.send("go"))
    end)
    assert.same({ 'obs presence #1 publisher/participant ["same", 1]',
                  "old handler", "new handler", "new handler" }, log.lines)
  end)

  it("the boot process's failure is ground_vm's: nil and a traceback; the rest still ran",
     function()
    local log = H.log()
    local ok, err = market.ground_vm(function()
      market.perform(holder("other", market.subscriber("x", { on_message = function()
        log("other got x")
      end })))
      market.pause()
      market.perform(market.send("x"))
      error("boot failed here")
    end)
    assert.is_nil(ok)
    assert.matches("boot failed here", err)
    assert.matches("stack traceback", err)
    assert.same({ "other got x" }, log.lines)
  end)
end)

describe("implicit exit and VM exit", function()
  it("ground_vm returns once nothing is left to do", function()
    local log = H.log()
    local ok = market.ground_vm(function()
      market.perform(market.spawn(function() log("child ran") end))
      log("boot ran")
    end)
    assert.is_true(ok)
    assert.same({ "boot ran", "child ran" }, log.lines)
  end)

  it("a quiescent ground VM exits even though processes hold endpoints; they are torn down " ..
     "in pid order and the survivors see normal absence", function()
    local log = H.log()
    H.ground(function()
      market.perform(holder("p", market.publisher("t", H.logging(log, "p"))))
      market.perform(holder("s", market.subscriber("t", H.logging(log, "s"))))
      H.settle()
      log("boot done")
    end)
    assert.same({ 's presence #1 publisher/participant "t"',
                  'p presence #1 subscriber/participant "t"',
                  "boot done",
                  's absence #1 publisher/participant "t" nil' }, log.lines)
  end)

  it("a process with no endpoints, actions or continuations left is removed", function()
    -- Observed through --trace: the process's quit follows its last event.
    local script = H.tempfile([[
      local market = require "market"
      market.perform(market.spawn(function()
        return market.transition(0, market.subscriber("x", { name = "only", on_message = function()
          return market.transition(0, market.delete_endpoint("only"))
        end }))
      end, { name = "finisher" }))
      market.pause()
      market.perform(market.send("x"))
      market.pause()
      market.pause()
      io.stderr:write("BOOT END\n")
    ]])
    local status, out, err = H.run("--no-drivers --trace " .. script)
    os.remove(script)
    assert.equal(0, status)
    local delete = err:find("#2 finisher: delete only", 1, true)
    local quit = err:find("#2 finisher: quit", 1, true)
    local boot_end = err:find("BOOT END", 1, true)
    assert.truthy(delete, err)
    assert.truthy(quit, err)
    assert.truthy(delete < quit and quit < boot_end, err)
  end)
end)

describe("straight-line processes", function()
  it("market.yield() waits for an unhandled event while the others keep running", function()
    local log = H.log()
    H.ground(function()
      H.step(market.spawn(function()
        market.perform(market.subscriber({ "sl", _ }, "in"))
        log("waiting")
        local ev = market.yield()
        log("got %s on %s: %s", ev.type, ev.endpoint, ev.message)
        ev = market.yield()
        log("got %s on %s: %s", ev.type, ev.endpoint, ev.message)
      end, { name = "straight" }))
      H.step(holder("busy", market.subscriber("work", { on_message = function(s)
        log("busy works %d", s)
        return T(s + 1)
      end })))
      H.step(market.send("work"), market.send("work"))
      H.step(market.send({ "sl", 1 }))
      H.step(market.send("work"))
      H.step(market.send({ "sl", 2 }))
    end)
    assert.same({ "waiting", "busy works 0", "busy works 1", 'got message on in: ["sl", 1]',
                  "busy works 2", 'got message on in: ["sl", 2]' }, log.lines)
  end)

  it("market.yield() returns presence and absence as tables with the refined role", function()
    local log = H.log()
    H.ground(function()
      H.step(market.spawn(function()
        market.perform(market.subscriber({ "p", _ }, "watch"))
        for _ = 1, 2 do
          local ev = market.yield()
          log("%s %s %s %s %s", ev.type, ev.endpoint, ev.role, tostring(ev.reason), ev.meta)
        end
      end))
      H.step(holder("pub", market.publisher({ _, 5 }), market.subscriber("bye", {
        on_message = function() return T(0, market.quit(nil, "gone")) end })))
      H.step(market.send("bye"))
    end)
    assert.same({ 'presence watch publisher/participant ["p", 5] nil 0',
                  'absence watch publisher/participant ["p", 5] gone 0' }, log.lines)
  end)

  it("handlers registered by straight-line code take their events; yield returns the rest",
     function()
    local log = H.log()
    H.ground(function()
      H.step(market.spawn(function()
        market.perform(market.subscriber("handled", { on_message = function(s, m)
          log("handler %s", m)
        end }), market.subscriber("raw", "raw"))
        local ev = market.yield()
        log("yield %s", ev.message)
      end))
      H.step(market.send("handled"), market.send("handled"), market.send("raw"))
    end)
    assert.same({ "handler handled", "handler handled", "yield raw" }, log.lines)
  end)

  it("a boot function that waited and then returns a transition has it applied", function()
    -- examples/nested.lua's innermost VM: pause, then return a transition.
    local log = H.log()
    H.ground(function()
      H.step(market.spawn(function()
        market.perform(market.subscriber("first", "first"))
        market.pause()
        local ev = market.yield()
        log("yield %s", ev.message)
        return market.transition("s", market.subscriber("second", { on_message = function(s, m)
          log("%s got %s", s, m)
        end }))
      end))
      H.step(market.send("first"))
      H.step(market.send("second"))
    end)
    assert.same({ "yield first", "s got second" }, log.lines)
  end)

  it("a handler run while straight-line code waits may wait too; each wait gets its event",
     function()
    -- The handler runs inside the boot's market.yield() (lproc.c calls
    -- dispatch with a continuation), and its own waits yield through it.
    local log = H.log()
    H.ground(function()
      H.step(market.spawn(function()
        market.perform(market.subscriber({ "h", _ }, { on_message = function(_, m)
          log("handler got %s", m)
          market.pause()
          local ev = market.yield()
          log("handler's yield got %s", ev.message)
        end }), market.subscriber({ "y", _ }, "y"))
        local ev = market.yield()
        log("boot's yield got %s", ev.message)
        ev = market.wait_for(function(e) return e.message[2] == 4 end)
        log("boot's wait_for got %s", ev.message)
        log("then yield gets %s", market.yield().message)
      end))
      H.step(market.send({ "h", 1 }))
      H.step(market.send({ "y", 2 }))
      H.step(market.send({ "y", 2.5 }))
      H.step(market.send({ "y", 3 }), market.send({ "y", 4 }))
    end)
    assert.same({ 'handler got ["h", 1]', 'handler\'s yield got ["y", 2]',
                  'boot\'s yield got ["y", 2.5]', 'boot\'s wait_for got ["y", 4]',
                  'then yield gets ["y", 3]' }, log.lines)
  end)

  it("market.perform applies at once: a send reaches peers before the code goes on", function()
    local log = H.log()
    H.ground(function()
      H.step(holder("l", market.subscriber("now", { on_message = function() log("l got now") end })))
      market.perform(market.send("now"))
      log("boot after perform")
      market.pause()
      log("boot after pause")
    end)
    -- perform queues the delivery at once; it runs when the boot process waits.
    assert.same({ "boot after perform", "l got now", "boot after pause" }, log.lines)
  end)

  it("market.state and set_state read and write the state of straight-line code", function()
    local log = H.log()
    H.ground(function()
      H.step(market.spawn(function()
        market.set_state(5)
        market.perform(market.subscriber("inc", { on_message = function(s)
          log("handler sees %d", s)
          return T(s + 1)
        end }), market.subscriber("done", "done"))
        local ev = market.wait_for(function(e) return e.endpoint == "done" end)
        log("state now %d after %s", market.state(), ev.message)
      end))
      H.step(market.send("inc"), market.send("done"))
    end)
    assert.same({ "handler sees 5", "state now 6 after done" }, log.lines)
  end)
end)

describe("handlers", function()
  it("an event with no handler of its kind is ignored by a transition-style process",
     function()
    local log = H.log()
    H.ground(function()
      H.step(holder("quiet", market.subscriber({ "q", _ }, { name = "no-message-handler",
        on_presence = function(s, role) log("presence %s", role) return T(s + 1) end }),
        market.subscriber("state?", { on_message = function(s) log("state %d", s) end })))
      H.step(holder("pub", market.publisher({ "q", 1 })))
      H.step(market.send({ "q", 1 }), market.send("state?"))
    end, log)
    assert.same({ 'presence publisher/participant ["q", 1]', "state 1" }, log.lines)
  end)

  it("market.perform inside a handler acts at once; if the handler then fails, what it " ..
     "performed stands and what it would have returned never happens", function()
    local log = H.log()
    H.ground(function()
      H.step(holder("l", market.subscriber({ "pf", _ }, { on_message = function(s, m)
        log("got %s", m[2])
      end })))
      H.step(holder("p", market.subscriber("go", { on_message = function(s)
        market.perform(market.send({ "pf", "performed" }))
        if s == 0 then error("after perform", 0) end
      end })))
      H.step(market.send("go"))
      H.step(market.send("go"))       -- p is gone: nothing more
    end, log)
    assert.same({ "got performed" }, log.lines)
  end)

  it("nested lists of actions in a transition are flattened in order, nil and false skipped",
     function()
    local log = H.log()
    H.ground(function()
      H.step(holder("l", market.subscriber({ "flat", _ }, { on_message = function(s, m)
        log("got %s", m[2])
      end })))
      H.step(holder("p", market.subscriber("go", { on_message = function(s)
        return T(s, { market.send({ "flat", 1 }), { market.send({ "flat", 2 }), false,
                      { { market.send({ "flat", 3 }) } } }, {} }, nil, market.send({ "flat", 4 }))
      end })))
      H.step(market.send("go"))
    end, log)
    assert.same({ "got 1", "got 2", "got 3", "got 4" }, log.lines)
  end)

  it("a list of actions that holds something else, or itself, is refused when made", function()
    local loop = {}
    loop[1] = loop
    assert.has_error(function() T(0, { market.send("a"), { market.send("b"), 7 } }) end,
                     "market.transition: element 2 of argument 2 (a list) is not an action")
    assert.has_error(function() T(0, { setmetatable({}, {}) }) end,
                     "market.transition: element 1 of argument 2 (a list) is not an action")
    assert.has_error(function() S(loop) end,
                     "market.transition_no_state: lists of actions in argument 1 nest deeper than 32")
  end)

  it("performed actions come before the returned transition's actions", function()
    local log = H.log()
    H.ground(function()
      H.step(holder("l", market.subscriber({ "order", _ }, { on_message = function(s, m)
        log("got %s", m[2])
      end })))
      H.step(holder("p", market.subscriber("go", { on_message = function(s)
        market.perform(market.send({ "order", 1 }))
        return T(s, market.send({ "order", 3 }))
      end })))
      H.step(market.send("go"))
    end, log)
    assert.same({ "got 1", "got 3" }, log.lines)   -- 1 performed, 3 returned
  end)

  -- A presence or absence handler is its activation's body (lproc.c), and
  -- what it returns is applied when it returns, after a wait or at once.
  it("a presence or absence handler may wait, and what it returns is applied after", function()
    local log = H.log()
    H.ground(function()
      H.step(holder("obs", market.subscriber({ "pw", _ }, H.logging(log, "obs")),
                           market.subscriber("p", H.logging(log, "obs"))))
      H.step(holder("p",
        market.subscriber({ "pw", _ }, {
          on_presence = function(s)
            local ev = market.yield()
            log("presence handler's yield got %s", ev.message)
            return T(s + 10, market.send("told"))
          end,
          on_absence = function(s, role, reason)
            log("absence %s with state %d", reason, s)
            return 42
          end }),
        market.publisher("p", "p"),
        market.subscriber({ "bare", _ }, "bare"),
        market.subscriber("state?", { on_message = function(s) log("state %d", s) end })))
      H.step(holder("l", market.subscriber("told", { on_message = function() log("told") end })))
      local pid = market.perform(market.spawn(function()
        return T(0, market.publisher({ "pw", 1 }))
      end))
      H.settle()
      H.step(market.send({ "bare", 1 }))
      H.step(market.send("state?"))
      H.step(market.quit(pid, "gone"))
    end, log)
    assert.same({
      'obs presence #2 publisher/participant "p"',
      'obs presence #1 publisher/participant ["pw", 1]',
      'presence handler\'s yield got ["bare", 1]',
      "told",
      "state 10",
      'obs absence #1 publisher/participant ["pw", 1] gone',
      "absence gone with state 10",
      'obs absence #2 publisher/participant "p" ' ..
        "handler returned a number, not a transition (use market.transition)" }, log.lines)
  end)
end)

-- footprint_spec.lua: what a process costs the Lua heap (issue 10).  Every
-- Lua object a process keeps is the collector's work for as long as it
-- lives, and every object a spawn makes is its work in the next cycle: a
-- VM that keeps spawning pays for both.  These bounds say what the runtime
-- itself keeps and makes per process, apart from the program's own values
-- (handler tables, closures, topics), which the processes here share.
package.path = "spec/support/?.lua;" .. package.path
local market = require "market"
local H = require "helpers"

local N = 2000

-- Lua heap bytes per process: live while N processes sit idle, each with
-- the endpoint its boot adds (after a full collection), and made by their
-- spawns and boots (with the collector stopped).
local function footprint(boot)
  local live, made
  local spawn = market.spawn(boot)
  H.ground(function()
    collectgarbage()
    collectgarbage()
    local before = collectgarbage("count")
    collectgarbage("stop")
    for _ = 1, N do market.perform(spawn) end
    market.pause()             -- every process has booted and added its endpoint
    made = (collectgarbage("count") - before) * 1024 / N
    collectgarbage("restart")
    collectgarbage()
    collectgarbage()
    live = (collectgarbage("count") - before) * 1024 / N
    for pid = 2, N + 1 do market.perform(market.quit(pid)) end
  end, nil, { max_activation = 0 })
  return live, made
end

-- Lua heap bytes per value make(i) returns, N of them kept (so none is
-- collected meanwhile).
local keep = {}
local function bytes(make)
  for i = 1, N do keep[i] = false end
  collectgarbage()
  collectgarbage("stop")
  local before = collectgarbage("count")
  for i = 1, N do keep[i] = make(i) end
  local per = (collectgarbage("count") - before) * 1024 / N
  collectgarbage("restart")
  return per
end

describe("per-process footprint", function()
  it("an idle handler process keeps one table of the runtime's, its context", function()
    -- The context holds the state and the endpoints' handler tables; with
    -- a separate endpoint table each process kept two (about 180 bytes).
    local add = market.subscriber("footprint", { name = "in", on_message = function() end })
    local live = footprint(function() return market.transition(nil, add) end)
    assert.is_true(live < 150, ("%.0f bytes of Lua heap per idle process"):format(live))
  end)

  it("an endpoint given only a name keeps no handler table", function()
    -- Each kept a table { name = name } (about 190 bytes with the context).
    local live = footprint(function()
      return market.transition(nil, market.subscriber("footprint", "in"))
    end)
    assert.is_true(live < 150, ("%.0f bytes of Lua heap per idle process"):format(live))
  end)

  it("a spawn whose boot adds one endpoint makes little garbage", function()
    -- The context, the add action, the transition.  The add action had
    -- its six fields in a hash part of eight nodes (about 425 bytes in
    -- all); it keeps all but kind in its array part.
    local _, made = footprint(function()
      return market.transition(nil, market.subscriber("footprint", "in"))
    end)
    assert.is_true(made < 400, ("%.0f bytes of Lua heap made per spawn"):format(made))
  end)

  it("spawns after a smaller run of kills still take the contexts kept", function()
    -- A burst of 4N spawns and kills (twice: the second run keeps 4N
    -- emptied contexts), then runs of N.  Each run of N kills leaves its
    -- slots with the kept contexts; the spawns after them must take the
    -- contexts, not make new ones over slots pushed on top of them.
    local boot = function()
      return market.transition(nil, market.subscriber("footprint", "in"))
    end
    local spawn = market.spawn(boot)
    local made = {}
    H.ground(function()
      local function run(n)
        local pids = {}
        local before = collectgarbage("count")
        collectgarbage("stop")
        for i = 1, n do pids[i] = market.perform(spawn) end
        market.pause()
        local bytes = (collectgarbage("count") - before) * 1024 / n
        collectgarbage("restart")
        for i = 1, n do market.perform(market.quit(pids[i])) end
        market.pause()
        collectgarbage()
        return bytes
      end
      run(4 * N)
      run(4 * N)
      for r = 1, 3 do made[r] = run(N) end
    end, nil, { max_activation = 0 })
    -- A context made is a table with two hash slots: about 120 bytes.
    assert.is_true(made[3] - made[1] < 60,
      ("a spawn made %.0f bytes, then %.0f, then %.0f"):format(made[1], made[2], made[3]))
  end)

  it("a process waiting in market.yield() or wait_for keeps its stack short", function()
    -- A waiting process keeps its coroutine: the lua_State (208 bytes),
    -- a CallInfo (64) per frame and one spare, and its stack, which the
    -- collector shrinks to twice the slots its frames use (16 bytes each).
    -- The C function that yields reserves 20 slots, so each slot of the
    -- frames under it counts twice.  With market.lua's main and wait loop
    -- under the boot function (five frames, 35 slots, a stack of 85) it
    -- was about 2,000 bytes; with the boot function at the bottom and the
    -- wait in C, about 1,380: two frames, 25 slots, a stack of 55.  That
    -- stack was one market.perform had doubled (perform_rest, perform_one
    -- and core.add under it took more than the 40 slots a coroutine starts
    -- with); with a lone add performed in C, it stays at 45: about 1,260.
    local function boot()
      market.perform(market.subscriber("footprint", "in"))
      market.yield()
    end
    local pred = function() return false end
    local live = footprint(boot)
    assert.is_true(live < 1320, ("%.0f bytes of Lua heap per waiting process"):format(live))
    live = footprint(function()
      market.perform(market.subscriber("footprint", "in"))
      market.wait_for(pred)
    end)
    assert.is_true(live < 1320, ("%.0f bytes of Lua heap per process in wait_for"):format(live))
  end)

  it("a process that spawns before it waits keeps its stack short too", function()
    -- market.perform(market.spawn(boot)) went through market.lua's
    -- perform_rest and perform_one to core.spawn, past the 40 slots a
    -- coroutine starts with: the stack doubled, and the waiting process
    -- kept it (about 1,490 bytes).  Performed in C, it stays at 45 slots
    -- (about 1,360, some 100 of them the registry's slots for the
    -- children, which are gone by then).
    local child = market.spawn(function() end)
    local live = footprint(function()
      market.perform(child)
      market.perform(market.subscriber("footprint", "in"))
      market.yield()
    end)
    assert.is_true(live < 1420, ("%.0f bytes of Lua heap per waiting process"):format(live))
  end)

  it("under a wait lie only the program's frames and the C function that waits", function()
    local cos, frames = {}, {}
    local never = function() return false end
    local waits = {
      yield = function() cos.yield = coroutine.running(); market.yield() end,
      wait_for = function() cos.wait_for = coroutine.running(); market.wait_for(never) end,
      pause = function() cos.pause = coroutine.running(); market.pause() end,
    }
    H.ground(function()
      for name, wait in pairs(waits) do
        market.perform(market.spawn(function()
          market.perform(market.subscriber("frames", name))
          wait()
        end))
      end
      -- Every process has booted and waits (pause's wait ends only when
      -- its continuation runs, after this process's).
      market.perform(market.spawn(function()
        for name, co in pairs(cos) do
          local t, level = {}, 0
          local info = debug.getinfo(co, level, "S")
          while info do
            t[#t + 1] = info.what == "C" and "C" or info.short_src:match("[^/]*$")
            level = level + 1
            info = debug.getinfo(co, level, "S")
          end
          frames[name] = table.concat(t, " ")
        end
        for pid = 2, 4 do market.perform(market.quit(pid)) end
      end))
    end)
    -- market.yield and market.wait_for are the C functions that wait;
    -- pause, short-lived, is Lua waiting in core.wait.  Before, market.lua's
    -- main lay at the bottom of each, and yield and wait_for were Lua
    -- functions of it waiting in core.wait: "C market footprint_spec.lua
    -- footprint_spec.lua market".
    assert.same({ yield = "C footprint_spec.lua footprint_spec.lua",
                  wait_for = "C footprint_spec.lua footprint_spec.lua",
                  pause = "C market footprint_spec.lua footprint_spec.lua" }, frames)
  end)

  it("an add action, a spawn action and a quit action are small", function()
    local boot = function() end
    -- With named fields in a hash part: 208 and 152 bytes (an add, 248).
    -- As tables with their fields in an array part, kind in a hash part:
    -- a spawn and an add 160 each, a quit 112, in three allocations each.
    -- A quit as a userdata (one block, the reason its user value:
    -- lua/laction.c), 80; a spawn and an add as fixed actions, 136, in one;
    -- an add with its orientation and interest in the block, 104.  A
    -- quit without a reason has no user value, 56 (a kill makes one).
    local spawn = bytes(function() return market.spawn(boot) end)
    local quit = bytes(function(pid) return market.quit(pid) end)
    local why = bytes(function(pid) return market.quit(pid, "why") end)
    local h = { name = "n" }
    local add = bytes(function() return market.subscriber("t", h) end)
    assert.is_true(spawn < 150, ("%.0f bytes per spawn action"):format(spawn))
    assert.is_true(quit <= 56, ("%.0f bytes per quit action"):format(quit))
    assert.is_true(why <= 80, ("%.0f bytes per quit action with a reason"):format(why))
    assert.is_true(add <= 104, ("%.0f bytes per add action"):format(add))
  end)

  it("a transition holds no state it is not given", function()
    -- A transition is a userdata, its state and actions user values: one
    -- with a nil state (a boot's transition(nil, add)) holds no user value
    -- for it, 72 bytes with one action where it took 88.
    local send = market.send("x")
    local none = bytes(function() return market.transition(nil, send) end)
    local state = bytes(function(i) return market.transition(i, send) end)
    local kept = bytes(function() return market.transition_no_state(send) end)
    assert.is_true(none <= 72, ("%.0f bytes per transition(nil, action)"):format(none))
    assert.is_true(state <= 88, ("%.0f bytes per transition(state, action)"):format(state))
    assert.is_true(kept <= 72, ("%.0f bytes per transition_no_state(action)"):format(kept))
  end)

  it("a transition with a nil state still sets it, and a quit without a reason reads so",
     function()
    local log = H.log()
    H.ground(function()
      local spawn = market.spawn(function()
        local st = market.transition("first", market.subscriber("st", { on_message = function()
          log("%s", tostring(market.state()))
          if market.state() == "first" then return market.transition(nil) end
          return market.transition(nil, market.quit())
        end }))
        return st
      end)
      local pid = market.perform(spawn)
      market.pause()
      market.perform(market.send("st"))
      market.pause()
      market.perform(market.send("st"))
      market.pause()
      local q = market.quit(pid)
      log("%s %s %s", q.kind, tostring(q.pid == pid), tostring(q.reason))
    end, nil, { max_activation = 0 })
    assert.same({ "first", "nil", "quit true nil" }, log.lines)
  end)

  it("those actions still read by name", function()
    local h = { name = "n", on_message = print }
    local add = market.subscriber("t", h)
    assert.same({ "add", "n", 1, 0, "t", h },
                { add.kind, add.name, add.orientation, add.interest, add.topic, add.handlers })
    local spawn = market.nested_vm(print, { name = "v", k = print, max_activation = 5 })
    assert.same({ "spawn", print, "v", print, true, 5 },
                { spawn.kind, spawn.boot, spawn.name, spawn.k, spawn.nested, spawn.budget })
    local quit = market.quit(3, "why")
    assert.same({ "quit", 3, "why" }, { quit.kind, quit.pid, quit.reason })
    assert.is_nil(quit.name)
    -- Fields not given read as nil, as before.
    local bare = market.spawn(print)
    assert.same({ "spawn", print }, { bare.kind, bare.boot, bare.name, bare.k, bare.nested })
    local self = market.quit()
    assert.is_nil(self.pid)
    assert.is_nil(self.reason)
    local del = market.delete_endpoint("n")
    assert.same({ "delete", "n" }, { del.kind, del.name, del.reason })
    assert.is_false(market.subscriber(false).topic)
  end)
end)

describe("per-event garbage", function()
  local _ = market._
  local feed = market.record("footprint-feed", "channel", "item")

  -- Lua heap bytes made per presence and per absence event (the collector
  -- stopped meanwhile): N subscribers with the handlers handlers(count)
  -- makes, and one publisher that appears and then quits.  count() counts
  -- an event; made returns when N presences and then N absences came.
  local function made(handlers)
    local seen, appear, leave = 0, 0, 0
    local function count() seen = seen + 1 end
    H.ground(function()
      local spawn = market.spawn(function()
        return market.transition(nil, market.subscriber(feed("news", _), handlers(count)))
      end)
      for _ = 1, N do market.perform(spawn) end
      market.pause()               -- every subscriber has its endpoint
      local function per(run)
        collectgarbage()
        collectgarbage()
        collectgarbage("stop")
        local before = collectgarbage("count")
        seen = 0
        run()
        repeat market.pause() until seen == N
        local bytes = (collectgarbage("count") - before) * 1024 / N
        collectgarbage("restart")
        return bytes
      end
      local pid
      appear = per(function()
        pid = market.perform(market.spawn(function()
          return market.transition(nil, market.publisher(feed("news", _), "out"))
        end))
      end)
      leave = per(function() market.perform(market.quit(pid)) end)
      for p = 2, N + 1 do market.perform(market.quit(p)) end
    end, nil, { max_activation = 0 })
    return appear, leave
  end

  it("a presence or absence handler that declares no role gets no table made", function()
    -- The role table took 152 bytes (a table with a hash part of four
    -- nodes) per event, and the collector's work on it was about half of
    -- what a presence cost (docs/architecture.md).
    local appear, leave = made(function(count)
      return { on_presence = function(_) count() end, on_absence = function() count() end }
    end)
    assert.is_true(appear < 40, ("%.0f bytes of Lua heap per presence"):format(appear))
    assert.is_true(leave < 40, ("%.0f bytes of Lua heap per absence"):format(leave))
  end)
end)

describe("the registry", function()
  -- The registry holds every process's context.  Under the generational
  -- collector (the market interpreter's) a table given a new value since
  -- the last collection is traversed whole by the next young one: a
  -- registry written at every event made every young collection read the
  -- header of every context (at 10,000 connections 14,000 cache misses
  -- each).  What events write as they go (the last box delivered or sent,
  -- the last topic, the last endpoint name) lives elsewhere.
  it("is not written by messages, presences and absences handled", function()
    local T, _ = market.transition, market._
    local pt = market.record("registry-pt", "x")
    local changed
    local function snapshot()
      local t = {}
      for k, v in pairs(debug.getregistry()) do t[k] = v end
      return t
    end
    H.ground(function()
      local got = 0
      local function rx() got = got + 1 end
      H.step(market.spawn(function()
        return T(nil,
          market.subscriber(pt(_), { name = "a", on_message = rx }),
          market.subscriber(pt(_), { name = "b", on_message = rx,
                                     on_presence = function() end,
                                     on_absence = function() end }))
      end))
      H.step(market.send(pt(0)))                 -- settles what a first event makes
      local before = snapshot()
      local peer = market.spawn(function() return T(nil, market.publisher(pt(_), "p")) end)
      H.step(peer)
      for i = 1, 20 do H.step(market.send(pt(i))) end
      H.step(market.quit(3))
      assert.equal(42, got)
      local after = snapshot()
      -- A kill leaves false where its context was (spare_ctx): a value
      -- the collector has nothing to look at, so no barrier.
      for k, v in pairs(after) do
        if not rawequal(before[k], v) and type(v) ~= "boolean" then
          changed = ("[%s] = %s"):format(tostring(k), tostring(v))
        end
      end
      market.perform(market.quit(2))
    end)
    assert.is_nil(changed)
  end)
end)

describe("a crowd of processes gone", function()
  -- The market interpreter collects generationally (host.c), and a
  -- process's state grows old while it lives: once it dies, only a major
  -- collection frees it, and without one the heap stays at the crowd's
  -- size, and with it every minor collection (issue 10).  So when the
  -- live processes fall to a quarter of a peak of 1,000 or more, the next
  -- activation starts with a full collection, if the heap has grown by
  -- half since the last one.  Each process's state here counts its own
  -- finalization; a full collection first makes every one old, so that
  -- no minor collection can free it.  crowds(sizes, opts) runs one crowd
  -- after another and returns how many of each were finalized once it had
  -- ended and two more activations had run.
  local function crowds(sizes, opts)
    opts = opts or {}
    local status, out, err = H.run_script(([[
      local market = require "market"
      local sizes, stopped, keep = { %s }, %s, {}
      for i = 1, %d do keep[i] = ("%%d live"):format(i) end
      local function crowd(n)
        local finalized = 0
        local counted = { __gc = function() finalized = finalized + 1 end }
        local spawn = market.spawn(function()
          return market.transition(setmetatable({}, counted),
            market.subscriber("crowd", { name = "in",
              on_message = function() return market.transition_no_state(market.quit()) end }))
        end)
        for _ = 1, n do market.perform(spawn) end
        market.pause()
        collectgarbage()
        collectgarbage()
        if stopped then collectgarbage("stop") end
        market.perform(market.send("crowd"))
        market.pause()
        market.pause()
        return finalized
      end
      local counts = {}
      for i, n in ipairs(sizes) do counts[i] = tostring(crowd(n)) end
      print(table.concat(counts, " "), collectgarbage("isrunning"))
    ]]):format(table.concat(sizes, ", "), tostring(opts.stopped or false), opts.keep or 0))
    assert.equal(0, status, err)
    local counts, running = out:match("^([%d ]+)\t(%a+)\n$")
    assert.is_string(counts, out)
    assert.equal(tostring(not opts.stopped), running)
    local t = {}
    for c in counts:gmatch("%d+") do t[#t + 1] = tonumber(c) end
    return t
  end

  it("is collected fully at the next activation", function()
    local n = crowds({ 2000, 2000 })
    assert.is_true(n[1] >= 1500, n[1])
    assert.is_true(n[2] >= 1500, n[2])
  end)

  it("of fewer than 1,000 is left to the collector's own pace", function()
    assert.same({ 0 }, crowds({ 900 }))
  end)

  it("is not collected when the program stopped the collector", function()
    assert.same({ 0 }, crowds({ 2000 }, { stopped = true }))
  end)

  it("is left to the collector when it is small beside the live heap", function()
    -- 300,000 strings kept (about 15 MB): the first crowd's drop collects
    -- fully, the second's, a tenth of that heap, does not.
    local n = crowds({ 2000, 2000 }, { keep = 300000 })
    assert.is_true(n[1] >= 1500, n[1])
    assert.equal(0, n[2])
  end)
end)

describe("minor collections in a small heap", function()
  -- The market interpreter makes a minor collection each 2% of the heap
  -- allocated, but keeps them 32 KiB apart at least (lua/lproc.c,
  -- young_floor, looked at every 256 activations): in a heap of a few
  -- hundred KiB, 2% came every 6 KiB. minors(first) runs 300 activations
  -- (spawns), then counts the collections, by a finalizer that makes its
  -- successor, while 4 MB of garbage are made (two strings of 1 KB a
  -- turn); `first` is run before.
  local function minors(first)
    local status, out, err = H.run_script(([[
      local market = require "market"
      %s
      local spawn = market.spawn(function() return market.transition(nil) end)
      for _ = 1, 300 do market.perform(spawn) end
      market.pause()
      market.pause()
      local count = 0
      local function arm() setmetatable({}, { __gc = function() count = count + 1; arm() end }) end
      arm()
      for i = 1, 2000 do local s = ("x"):rep(1000) .. i end
      print(count, collectgarbage("count") < 4096, (collectgarbage("incremental")))
    ]]):format(first or ""))
    assert.equal(0, status, err)
    local count, small, mode = out:match("^(%d+)\t(%a+)\t(%a+)\n$")
    assert.equal("true", small, out)
    return tonumber(count), mode
  end

  it("come no closer than 32 KiB apart", function()
    local count, mode = minors()
    assert.equal("generational", mode)
    -- 4 MB / 32 KiB: 122 (at 2% of the heap, some 6 KiB: about 700)
    assert.is_true(count >= 40 and count <= 250, count)
  end)

  it("leave a program's choice of the incremental collector alone", function()
    local _, mode = minors('collectgarbage("incremental")')
    assert.equal("incremental", mode)
  end)
end)

-- fidelity_spec.lua: where market once departed from Marketplace (issue 9):
-- what a process held at every level goes with it, a deleted endpoint's
-- own absences, and spawn with a continuation at meta level.
package.path = "spec/support/?.lua;" .. package.path
local market = require "market"
local H = require "helpers"
local _ = market._
local T = market.transition

-- at_meta_level applied n times.
local function up(n, a)
  for _ = 1, n do a = market.at_meta_level(a) end
  return a
end

-- A chain of `depth` nested VMs whose innermost runs boot; every VM on
-- the way has only the next one in it (its boot process exits at once).
local function chain(depth, boot, opts)
  local f = boot
  for _ = 2, depth do
    local inner = f
    f = function() return T(0, market.nested_vm(inner)) end
  end
  return market.nested_vm(f, opts)
end

describe("a process that ends takes what it held at every level, with its reason", function()
  -- The innermost process x holds a publisher and a "kick" subscriber at
  -- the ground, `depth` levels up; the kick makes it end by `how`.  With
  -- `keep`, a sibling holds an endpoint inside, so the innermost VM (and
  -- so every VM of the chain) lives on after x.
  local function run(depth, how, keep)
    local log = H.log()
    H.ground(function()
      H.step(market.spawn(function()
        return T(0, market.observe_publishers({ "deep", _ }, {
          on_absence = function(s, role, reason)
            log("publisher absent %s %s", role.topic, reason)
          end }),
          market.observe_subscribers({ "kick", _ }, {
          on_absence = function(s, role, reason)
            log("subscriber absent %s %s", role.topic, reason)
          end }))
      end, { name = "watch" }))
      H.step(chain(depth, function()
        local function x()
          local acts = { up(depth, market.publisher({ "deep", depth })) }
          if how ~= "kill" then
            acts[2] = up(depth, market.subscriber({ "kick", depth }, { on_message = function()
              if how == "crash" then error("crashed", 0) end
              return T(0, market.quit(nil, "quit"))
            end }))
          end
          return T(0, table.unpack(acts))
        end
        local acts = {}
        if how == "kill" then
          -- A sibling kills x, then (unless a keeper holds on) ends too.
          acts[1] = market.spawn(x, { k = function(_, xpid)
            return T(0, market.spawn(function()
              return T(0, up(depth, market.subscriber({ "kick", depth }, { on_message = function()
                if keep then return T(0, market.quit(xpid, "killed")) end
                return T(0, market.quit(xpid, "killed"), market.quit())
              end })))
            end))
          end })
        else
          acts[1] = market.spawn(x)
        end
        if keep then
          acts[2] = market.spawn(function() return T(0, market.subscriber("keep")) end)
        end
        return T(0, table.unpack(acts))
      end))
      H.settle(depth * 2 + 4)
      H.step(market.send({ "kick", depth }))
      H.settle(depth * 2 + 4)
      -- Nothing of x's is routable any more: a kick now reaches nobody.
      H.step(market.send({ "kick", depth }))
      log("end")
    end, log)
    return log.lines
  end

  local reason = { quit = "quit", crash = "crashed", kill = "killed" }
  for depth = 1, 5 do
    for _, how in ipairs({ "quit", "crash", "kill" }) do
      for _, keep in ipairs({ true, false }) do
        local label = string.format("%s at depth %d, %s", how, depth,
                                    keep and "its VM living on" or "its VMs ending after it")
        it(label, function()
          local lines = run(depth, how, keep)
          local want = {
            string.format('publisher absent ["deep", %d] %s', depth, reason[how]),
            "end" }
          if how ~= "kill" then
            table.insert(want, 1,
              string.format('subscriber absent ["kick", %d] %s', depth, reason[how]))
          elseif not keep then
            -- The killer ends normally after the kill.
            table.insert(want, 1, string.format('subscriber absent ["kick", %d] nil', depth))
          end
          table.sort(want, function(a, b) return a ~= "end" and (b == "end" or a < b) end)
          table.sort(lines, function(a, b) return a ~= "end" and (b == "end" or a < b) end)
          assert.same(want, lines)
        end)
      end
    end
  end
end)

describe("delete_endpoint: the deleted endpoint hears its own absences", function()
  local function peer(log, name, ep)
    return market.spawn(function()
      return T(0, ep(H.logging(log, name)))
    end, { name = name })
  end

  it("once per peer it could see, with the reason, after its peers' presence", function()
    local log = H.log()
    H.ground(function()
      H.step(peer(log, "p1", function(h) return market.publisher({ "t", 1 }, h) end),
             peer(log, "p2", function(h) return market.publisher({ "t", 2 }, h) end))
      H.step(H.controlled("s", { drop = function()
        return market.delete_endpoint("x", "bye")
      end }, market.subscriber({ "t", _ }, H.logging(log, "s", { name = "x" }))))
      for k in pairs(log.lines) do log.lines[k] = nil end   -- the presences
      H.step(H.ctl("s", "drop"))
    end, log)
    local lines = log.lines
    table.sort(lines)
    assert.same({
      'p1 absence #1 subscriber/participant ["t", 1] bye',
      'p2 absence #1 subscriber/participant ["t", 2] bye',
      's absence x publisher/participant ["t", 1] bye',
      's absence x publisher/participant ["t", 2] bye',
    }, lines)
  end)

  it("an observer hears of the participants it saw; a participant not of observers", function()
    local log = H.log()
    local function segment()
      local lines = {}
      for i, l in ipairs(log.lines) do lines[i] = l; log.lines[i] = nil end
      table.sort(lines)
      return lines
    end
    local x, o
    H.ground(function()
      H.step(peer(log, "pub", function(h) return market.publisher({ "t", 1 }, h) end),
             peer(log, "watch", function(h) return market.observe_subscribers({ "t", _ }, h) end))
      H.step(H.controlled("s", {
        drop_x = function() return market.delete_endpoint("x", "bye") end,
        drop_o = function() return market.delete_endpoint("o", "bye") end,
      }, market.subscriber({ "t", _ }, H.logging(log, "s", { name = "x" })),
         market.observe_publishers({ "t", _ }, H.logging(log, "s", { name = "o" }))))
      segment()
      H.step(H.ctl("s", "drop_x"))
      x = segment()
      H.step(H.ctl("s", "drop_o"))
      o = segment()
    end, log)
    -- x, a participant, saw pub but not the observer "watch"; both see x go.
    assert.same({
      'pub absence #1 subscriber/participant ["t", 1] bye',
      's absence x publisher/participant ["t", 1] bye',
      'watch absence #1 subscriber/participant ["t", _] bye',
    }, x)
    -- o, an observer, saw pub; pub, a participant, never saw o.
    assert.same({ 's absence o publisher/participant ["t", 1] bye' }, o)
  end)

  it("nothing when it saw nobody; a new endpoint of the same name is not told", function()
    local log = H.log()
    H.ground(function()
      H.step(H.controlled("s", {
        alone = function() return market.delete_endpoint("lonely") end,
        swap = function()
          return { market.delete_endpoint("x", "swapped"),
                   market.subscriber({ "t", _ }, H.logging(log, "new", { name = "x" })) }
        end,
      }, market.subscriber({ "nobody" }, H.logging(log, "lonely", { name = "lonely" })),
         market.subscriber({ "t", _ }, H.logging(log, "old", { name = "x" }))))
      H.step(H.ctl("s", "alone"))
      log("--")
      H.step(market.spawn(function() return T(0, market.publisher({ "t", 1 })) end))
      H.step(H.ctl("s", "swap"))
      log("--")
      H.step(H.ctl("s", "swap"))
    end, log)
    assert.same({
      "--",
      'old presence x publisher/participant ["t", 1]',
      'old absence x publisher/participant ["t", 1] swapped',
      'new presence x publisher/participant ["t", 1]',
      "--",
      'new absence x publisher/participant ["t", 1] swapped',
      'new presence x publisher/participant ["t", 1]',
    }, log.lines)
  end)

  for depth = 1, 4 do
    it(string.format("at meta level %d too, once per peer up there", depth), function()
      local log = H.log()
      H.ground(function()
        H.step(market.spawn(function()
          return T(0, market.publisher({ "m", 1 }), market.publisher({ "m", 2 }),
                   market.observe_subscribers({ "m", _ }, { on_absence = function(s, role, r)
                     log("ground sees %s go: %s", role.topic, r)
                   end }))
        end))
        H.step(chain(depth, function()
          return T(0, up(depth, market.subscriber({ "m", _ }, {
            name = "up",
            on_presence = function(s, role, ep)
              if s == 1 then return T(2, up(depth, market.delete_endpoint("up", "done"))) end
              return T(s + 1)
            end,
            on_absence = function(s, role, r, ep) log("%s absence %s %s", ep, role.topic, r) end,
          })), market.subscriber("stay"))
        end))
        H.settle(depth * 2 + 4)
      end, log)
      table.sort(log.lines)
      assert.same({ 'ground sees ["m", _] go: done',
                    'up absence ["m", 1] done', 'up absence ["m", 2] done' }, log.lines)
    end)
  end

  -- The endpoint deleted up there was its process's last: the process is
  -- kept until its own absences (and the end of them) have come down,
  -- and then ends, and with it every VM of the chain, as at depth 0.
  -- Ground peers m1 and m2; m1 quits when it gets {"go"}.  `how`:
  --   delete    at its second presence it deletes the endpoint,
  --   peer goes at its second presence it sends {"go"} up, then deletes:
  --             m1 goes while the absences are on their way down,
  --   one turn  it adds and deletes the endpoint in its boot,
  --   nobody    the same, with an endpoint that meets no peer,
  --   VM goes   at its second presence it deletes the endpoint and quits
  --             its VM: it is told nothing, and nothing is left behind.
  local function last_endpoint(depth, how)
    local log = H.log()
    local topic = how == "nobody" and { "nobody" } or { "m", _ }
    local function child()
      local h = {
        name = "up",
        on_presence = function(s)
          if s == 0 then return T(1) end
          local acts = {}
          if how == "peer goes" then acts[#acts + 1] = up(depth, market.send({ "go" })) end
          acts[#acts + 1] = up(depth, market.delete_endpoint("up", "done"))
          if how == "VM goes" then acts[#acts + 1] = market.at_meta_level(market.quit(nil, "bye")) end
          return T(2, table.unpack(acts))
        end,
        on_absence = function(s, role, r, ep, deleted)
          log("%s absence %s %s %s", ep, role.topic, r, tostring(deleted))
        end,
      }
      if how == "one turn" or how == "nobody" then
        return T(0, up(depth, market.subscriber(topic, h)),
                 up(depth, market.delete_endpoint("up", "done")))
      end
      return T(0, up(depth, market.subscriber(topic, h)))
    end
    H.ground(function()
      H.step(market.spawn(function()
        return T(0, market.publisher({ "m", 1 }), market.subscriber({ "go" }, {
          on_message = function() return T(0, market.quit()) end }))
      end, { name = "m1" }), market.spawn(function()
        return T(0, market.publisher({ "m", 2 }),
                 market.observe_subscribers({ "m", _ }, { on_absence = function(s, role, r)
                   log("ground sees %s go: %s", role.topic, r)
                 end }))
      end, { name = "m2" }))
      H.step(market.spawn(function()
        return T(0, chain(depth, child, { k = function(s, pid)
          return T(s, market.observe_publishers(market.lifeline(pid), { on_absence = function(_, _, r)
            log("its VMs gone: %s", r)
          end }))
        end }))
      end, { name = "watch" }))
      H.settle(depth * 2 + 6)
    end, log)
    return log.lines
  end

  for depth = 1, 2 do
    for _, how in ipairs({ "delete", "peer goes", "one turn", "nobody", "VM goes" }) do
      it(string.format("at meta level %d, its last endpoint (%s): it hears them, then ends",
                       depth, how), function()
        local lines = last_endpoint(depth, how)
        local own = { 'up absence ["m", 1] done true', 'up absence ["m", 2] done true' }
        local want, gone = { 'ground sees ["m", _] go: done' }, "its VMs gone: nil"
        if how == "nobody" then want = {}
        elseif how == "VM goes" then
          -- Its VM goes with "bye"; a VM above it, whose last process that
          -- VM was, ends with the same reason (docs/semantics.md §8).
          gone = "its VMs gone: bye"
        else
          table.move(own, 1, #own, 2, want)
        end
        -- The VMs go last: after the process has heard its own absences.
        assert.equal(gone, table.remove(lines))
        table.sort(lines)
        assert.same(want, lines)
      end)
    end
  end

  it("straight-line code: they go to on_absence (told it is the deleted one); " ..
     "market.yield() never returns one", function()
    local got = {}
    H.ground(function()
      H.step(market.spawn(function() return T(0, market.publisher("p")) end))
      H.step(market.spawn(function()
        market.perform(market.subscriber("p", { name = "h", on_absence = function(s, role, r, ep, deleted)
          got[#got + 1] = string.format("handler %s %s %s", ep, r, tostring(deleted))
        end }), market.subscriber("p", "plain"))
        market.perform(market.delete_endpoint("h", "bye"), market.delete_endpoint("plain", "bye"),
                       market.subscriber("q", "q"), market.send("q"))
        local ev = market.yield()
        while ev.type == "presence" do ev = market.yield() end
        got[#got + 1] = ev.type .. " " .. ev.endpoint
      end))
    end)
    assert.same({ "handler h bye true", "message q" }, got)
  end)

  it("a process that quits is not told: it runs no more handlers", function()
    local log = H.log()
    H.ground(function()
      H.step(market.spawn(function() return T(0, market.publisher("p")) end))
      H.step(H.controlled("s", { go = function() return market.quit(nil, "gone") end },
        market.subscriber("p", H.logging(log, "s"))))
      H.step(H.ctl("s", "go"))
    end, log)
    assert.same({ 's presence #1 publisher/participant "p"' }, log.lines)
  end)
end)

describe("spawn with a continuation at meta level", function()
  for depth = 1, 4 do
    it(string.format("%d level(s) up: the child starts up there; k runs here with its pid",
                     depth), function()
      local log = H.log()
      H.ground(function()
        H.step(chain(depth, function()
          return T("state", up(depth, market.spawn(function()
            local pid, _, path = market.self()
            log("child pid %d in %s", pid, path)
            return T(0, market.subscriber("child-" .. depth))
          end, { k = function(s, pid)
            local _, _, path = market.self()
            log("k in %s with state %s: pid %d", path, s, pid)
            return T(s, market.subscriber("stay"))
          end })))
        end))
        H.settle(depth * 2 + 4)
      end, log)
      assert.equal(2, #log.lines, table.concat(log.lines, "\n"))
      local pid, where = log.lines[1]:match("^child pid (%d+) in (%S+)$")
      assert.equal("ground", where)
      assert.matches("^k in ground/%d+" .. ("/%d+"):rep(depth - 1) ..
                     " with state state: pid " .. pid .. "$", log.lines[2])
    end)
  end

  it("from two levels down, one level up: the pids are those of the VM in between " ..
     "(a process and a nested VM)", function()
    local log = H.log()
    H.ground(function()
      H.step(market.nested_vm(function()
        return T(0, market.nested_vm(function()
          return T(0, up(1, market.spawn(function()
            log("child in %s", select(3, market.self()))
            return T(0, market.subscriber("x"))
          end, { k = function(s, pid) log("k got %d", pid); return T(s, market.subscriber("y")) end })),
            up(1, market.nested_vm(function()
              log("vm in %s", select(3, market.self()))
              return T(0, market.subscriber("z"))
            end, { k = function(s, pid) log("k got vm %d", pid) end })))
        end))
      end))
      H.settle(10)
    end, log)
    -- ground/2 is the VM in between: its boot is pid 1, the inner VM pid 2.
    assert.same({ "child in ground/2", "k got 3", "vm in ground/2/4", "k got vm 4" }, log.lines)
  end)

  it("a child that is gone when the pid comes back: nothing runs, nothing leaks", function()
    local log = H.log()
    H.ground(function()
      H.step(market.nested_vm(function()
        return T(0, market.spawn(function()
          return T(0, up(1, market.spawn(function()
            log("child runs")
          end, { k = function() log("k must not run") end })), market.quit())
        end), market.subscriber("keep"))
      end))
      H.settle(10)
    end, log)
    assert.same({ "child runs" }, log.lines)
  end)
end)

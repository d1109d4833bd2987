-- nested_spec.lua: nested VMs and at_meta_level (DESIGN §1).
package.path = "spec/support/?.lua;" .. package.path
local market = require "market"
local H = require "helpers"
local _ = market._
local T = market.transition
local M = market.at_meta_level

local function holder(name, ...)
  local acts = table.pack(...)
  return market.spawn(function() return T(0, table.unpack(acts, 1, acts.n)) end, { name = name })
end

describe("nested VMs", function()
  it("a nested VM's boot process runs inside it; the VM path names the nesting", function()
    local log = H.log()
    H.ground(function()
      log("ground %s", select(3, market.self()))
      H.step(market.nested_vm(function()
        log("level 1 %s pid %d", select(3, market.self()), (market.self()))
        return T(0, market.nested_vm(function()
          log("level 2 %s pid %d", select(3, market.self()), (market.self()))
        end))
      end, { name = "outer", k = function(s, pid) log("k: nested vm is pid %d", pid) end }))
    end, log)
    -- The nested VM runs everything its boot causes inside it (level 2's
    -- boot included) while handling its own boot event; the continuation
    -- is the next event of the ground VM.
    assert.same({ "ground ground", "level 1 ground/2 pid 1", "level 2 ground/2/2 pid 1",
                  "k: nested vm is pid 2" }, log.lines)
  end)

  it("a VM nested more than 1000 levels deep fails at its boot; the rest runs on", function()
    -- Each level runs inside its parent's activation: 30,000 levels ran
    -- the C stack out (SEGV), the whole program gone.
    local ran, crashes, after = 0, {}, false
    local ok, err = market.ground_vm(function()
      local function nest(k)
        ran = ran + 1
        if k == 0 then return end
        market.perform(market.nested_vm(function() nest(k - 1) end, { name = "n" .. k }))
      end
      nest(1005)
      after = true
    end, { on_crash = function(r) crashes[#crashes + 1] = r.name .. ": " .. tostring(r.reason) end })
    assert(ok, err)
    assert.equal(1001, ran)             -- the ground's boot and 1000 levels
    assert.same({ "n5: a VM nested more than 1000 levels deep" }, crashes)   -- level 1001
    assert.is_true(after)
  end)

  it("a process one level down subscribes at meta level and gets ground messages " ..
     "(meta = 1, its own endpoint name)", function()
    local log = H.log()
    H.ground(function()
      H.step(market.nested_vm(function()
        market.perform(M(market.subscriber({ "ground-news", _ }, "up")))
        for _ = 1, 2 do
          local ev = market.yield()
          log("%s on %s meta %d: %s", ev.type, ev.endpoint, ev.meta, ev.message)
        end
      end))
      H.step(market.send({ "ground-news", 1 }), market.send({ "ground-news", 2 }))
    end, log)
    assert.same({ 'message on up meta 1: ["ground-news", 1]',
                  'message on up meta 1: ["ground-news", 2]' }, log.lines)
  end)

  it("two levels down: at_meta_level(at_meta_level(subscriber)) receives a ground message " ..
     "and a send at meta-meta level reaches the ground", function()
    local log = H.log()
    H.ground(function()
      H.step(holder("ground-listener",
        market.subscriber({ "reply", _ }, { on_message = function(s, m)
          log("ground got %s", m)
        end }),
        market.observe_subscribers({ "question", _ }, { on_presence = function(s, role)
          log("ground sees deep subscriber %s", role)
          return T(s, market.send({ "question", "what?" }))
        end })))
      H.step(market.nested_vm(function()
        return T(0, market.nested_vm(function()
          return T(0, M(M(market.subscriber({ "question", _ }, {
            name = "deep",
            on_message = function(s, m, ep)
              log("deep got %s on %s", m, ep)
              return T(s, M(M(market.send({ "reply", "42" }))))
            end }))))
        end, { name = "inner" }))
      end, { name = "outer" }))
    end, log)
    assert.same({ 'ground sees deep subscriber subscriber/participant ["question", _]',
                  'deep got ["question", "what?"] on deep',
                  'ground got ["reply", "42"]' }, log.lines)
  end)

  it("meta events two levels down carry meta = 2", function()
    local log = H.log()
    H.ground(function()
      H.step(market.nested_vm(function()
        return T(0, market.nested_vm(function()
          market.perform(M(M(market.subscriber("deep-news", "dn"))),
                         M(market.subscriber("deep-news", "dn")))
          for _ = 1, 2 do
            local ev = market.yield()
            log("%s %s meta %d", ev.type, ev.endpoint, ev.meta)
          end
        end), M(market.subscriber("go", { on_message = function(s)
          return T(s, market.send("deep-news"))      -- sent in the level-1 VM
        end })))
      end))
      H.step(market.send("deep-news"))               -- sent in the ground VM
      H.step(market.send("go"))
    end, log)
    -- The same name at two levels is two endpoints (level 2 and level 1).
    table.sort(log.lines)
    assert.same({ "message dn meta 1", "message dn meta 2" }, log.lines)
  end)

  it("a subscriber 300 levels up gets what the ground sends, and no other does",
     function()
    -- The level an event came down from was a byte: at 256 levels up the
    -- event was lost, at 257 it went to the process's endpoint one level
    -- up, of another topic.
    local got = {}
    local ok, err = market.ground_vm(function()
      local function boot(d)
        return function()
          if d < 300 then market.perform(market.nested_vm(boot(d + 1))) return end
          local far = market.subscriber("x", { name = "e", on_message = function(_, m)
            got[#got + 1] = "far " .. tostring(m)
          end })
          for _ = 1, 300 do far = M(far) end
          local near = market.subscriber("y", { name = "e", on_message = function(_, m)
            got[#got + 1] = "near " .. tostring(m)
          end })
          market.perform(far, M(near))
        end
      end
      market.perform(market.nested_vm(boot(1)))
      for _ = 1, 5 do market.pause() end
      market.perform(market.send("x"))
      for _ = 1, 5 do market.pause() end
      market.perform(market.exit(0))
    end)
    assert(ok, err)
    assert.same({ "far x" }, got)
  end)

  it("refuses an at_meta_level nested past 1000 levels where it is made", function()
    -- No VM is that deep; 100,000 levels crashed the program when the
    -- action was freed, and took time as the square of the depth.
    local a = market.send(1)
    for _ = 1, 1000 do a = M(a) end
    local ok, err = pcall(M, a)
    assert.is_false(ok)
    assert.matches("market.at_meta_level: nested more than 1000 levels deep (no VM is)", err, 1, true)
    assert.is_false(pcall(M, market.send(1), a))
  end)

  it("presence and absence cross levels with the refined role and the reason", function()
    local log = H.log()
    H.ground(function()
      H.step(market.nested_vm(function()
        return T(0, M(market.subscriber({ "svc", _, _ }, H.logging(log, "inner", { name = "w" }))))
      end))
      H.step(H.controlled("svc", { crash = function() error("svc died", 0) end },
                          market.publisher({ "svc", "db", _ })))
      H.step(H.ctl("svc", "crash"))
    end, log)
    assert.same({ 'inner presence w publisher/participant ["svc", "db", _]',
                  'inner absence w publisher/participant ["svc", "db", _] svc died' }, log.lines)
  end)

  it("feedback at meta level reaches ground publishers", function()
    local log = H.log()
    H.ground(function()
      H.step(holder("pub", market.publisher({ "fb", _ }, { on_message = function(s, m)
        log("ground publisher got %s", m)
      end })))
      H.step(market.nested_vm(function()
        return T(0, M(market.feedback({ "fb", "from below" })))
      end))
    end, log)
    assert.same({ 'ground publisher got ["fb", "from below"]' }, log.lines)
  end)

  it("spawn at meta level starts a process in the parent VM", function()
    local log = H.log()
    H.ground(function()
      H.step(market.nested_vm(function()
        return T(0, M(market.spawn(function()
          log("spawned in %s", select(3, market.self()))
        end)))
      end))
    end, log)
    assert.same({ "spawned in ground" }, log.lines)
  end)

  it("a crash inside a nested VM kills only that process; its meta endpoints go " ..
     "with the error as reason; its siblings and the VM go on", function()
    local log = H.log()
    H.ground(function()
      H.step(holder("watch", market.observe_subscribers({ "inner", _ }, H.logging(log, "ground"))))
      H.step(market.nested_vm(function()
        return T(0,
          market.spawn(function()
            return T(0, M(market.subscriber({ "inner", "fragile" })),
                     M(market.subscriber("kick", { on_message = function() error("inner boom", 0) end })))
          end),
          market.spawn(function()
            return T(0, M(market.subscriber({ "inner", "steady" }, { on_message = function(s, m)
              log("steady got %s", m)
            end })))
          end))
      end))
      H.step(market.send("kick"))
      H.step(market.send({ "inner", "steady" }))
    end, log)
    assert.equal(4, #log.lines)
    local presences = { log.lines[1], log.lines[2] }
    table.sort(presences)
    assert.same({ 'ground presence #1 subscriber/participant ["inner", "fragile"]',
                  'ground presence #1 subscriber/participant ["inner", "steady"]' }, presences)
    assert.equal('ground absence #1 subscriber/participant ["inner", "fragile"] inner boom',
                 log.lines[3])
    assert.equal('steady got ["inner", "steady"]', log.lines[4])
  end)

  it("at_meta_level(quit()) quits the whole nested VM; everything it held above goes", function()
    local log = H.log()
    H.ground(function()
      H.step(holder("watch", market.observe_subscribers({ "n", _ }, H.logging(log, "ground"))))
      H.step(market.nested_vm(function()
        return T(0,
          market.spawn(function() return T(0, M(market.subscriber({ "n", "a" }))) end),
          market.spawn(function()
            return T(0, M(market.subscriber({ "n", "b" })),
                     market.subscriber("inner-log", { on_message = function() end }),
                     M(market.subscriber("stop", { on_message = function()
                       return T(0, M(market.quit(nil, "stopping")))
                     end })))
          end))
      end))
      H.step(market.send("stop"))
    end, log)
    local sorted = {}
    for i, l in ipairs(log.lines) do sorted[i] = l end
    table.sort(sorted)
    assert.same({ 'ground absence #1 subscriber/participant ["n", "a"] stopping',
                  'ground absence #1 subscriber/participant ["n", "b"] stopping',
                  'ground presence #1 subscriber/participant ["n", "a"]',
                  'ground presence #1 subscriber/participant ["n", "b"]' }, sorted)
  end)

  it("quit(pid) of a nested VM from the parent takes its processes' meta endpoints", function()
    local log = H.log()
    H.ground(function()
      H.step(holder("watch", market.observe_publishers({ "np", _ }, H.logging(log, "ground"))))
      local vm = market.perform(market.nested_vm(function()
        return T(0, M(market.publisher({ "np", 1 })))
      end))
      H.settle()
      H.step(market.quit(vm, "shutdown"))
      log("end")
    end, log)
    assert.same({ 'ground presence #1 publisher/participant ["np", 1]',
                  'ground absence #1 publisher/participant ["np", 1] shutdown',
                  "end" }, log.lines)
  end)

  it("when a nested VM goes, the processes inside see each other go with its reason",
     function()
    local log = H.log()
    H.ground(function()
      local vm = market.perform(market.nested_vm(function()
        return T(0,
          market.spawn(function()
            return T(0, market.publisher("inner-a"), M(market.subscriber("keep-a")))
          end),
          market.spawn(function()
            return T(0, market.subscriber("inner-a", H.logging(log, "b")),
                     M(market.subscriber("keep-b")))
          end))
      end))
      H.settle()
      H.step(market.quit(vm, "shutdown"))
      log("end")
    end, log)
    assert.same({ 'b presence #1 publisher/participant "inner-a"',
                  'b absence #1 publisher/participant "inner-a" shutdown',
                  "end" }, log.lines)
  end)

  it("a nested VM whose last process exits quits its own process in the parent", function()
    -- Observed with --trace: the nested VM's process (pid 2, "box") quits
    -- right after its only child does, while the boot process waits on.
    local script = H.tempfile([[
      local market = require "market"
      market.perform(market.nested_vm(function()
        return market.transition(0, market.subscriber("local", { on_message = function() end }),
          market.at_meta_level(market.subscriber("x", { name = "x-up",
            on_message = function() return market.transition(0, market.quit()) end })))
      end, { name = "box" }))
      for _ = 1, 3 do market.pause() end
      market.perform(market.send("x"))
      for _ = 1, 5 do market.pause() end
      io.stderr:write("BOOT END\n")
    ]])
    local status, out, err = H.run("--no-drivers --trace " .. script)
    os.remove(script)
    assert.equal(0, status, err)
    local child_quit = err:find("ground/2 #1 box: quit", 1, true)
    local vm_quit = err:find("ground #2 box: quit", 1, true)
    local boot_end = err:find("BOOT END", 1, true)
    assert.truthy(child_quit, err)
    assert.truthy(vm_quit, err)
    assert.truthy(child_quit < vm_quit and vm_quit < boot_end, err)
  end)

  it("a nested VM whose last process crashes ends with that reason; one that quits, with its", function()
    -- Each VM ends with its last process's reason, crash or not: a monitor
    -- (or a supervisor, supervisor_spec) of the VM sees the failure, which
    -- an end with nil would hide.  Each VM's processes wait for ["go", n]
    -- from the ground, sent once the VM is watched.
    local log, crashes = H.log(), {}
    local function on_go(n, fn) return M(market.subscriber({ "go", n }, { on_message = fn })) end
    local function fail(n) return function() error({ "broke", n }) end end
    local vms = {
      { "crashed", function() return T(0, on_go(1, fail(1))) end },
      -- Two levels: the inner VM ends with the error, the outer with it.
      { "two levels", function() return T(0, market.nested_vm(function() return T(0, M(on_go(2, fail(2)))) end)) end },
      -- One process crashes, then the last one quits (on ["go", -3], sent
      -- after ["go", 3]): nil.
      { "crash then quit", function()
        return T(0, market.spawn(function() return T(0, on_go(3, fail(3))) end),
                 on_go(-3, function() return T(0, market.quit()) end))
      end },
      { "quit", function() return T(0, on_go(4, function() return T(0, market.quit(nil, "done")) end)) end },
    }
    H.ground(function()
      for n, vm in ipairs(vms) do
        H.step(market.nested_vm(vm[2], { k = function(_, pid)
          return T(0, market.observe_publishers(market.lifeline(pid), { on_absence = function(_, _, r)
            log("%s gone: %s", vm[1], market.repr(r))
          end }), market.send({ "go", n }), market.send({ "go", -n }))
        end }))
      end
      H.settle(10)
    end, log, { on_crash = function(r) crashes[#crashes + 1] = r end })
    table.sort(log.lines)
    assert.same({ 'crash then quit gone: nil', 'crashed gone: ["broke", 1]',
                  'quit gone: "done"', 'two levels gone: ["broke", 2]' }, log.lines)
    assert.equal(3, #crashes)
  end)

  -- The names a process holds above it are a table (vm.c, metaname_find):
  -- a list made each add a walk of them all, 40,000 adds 13.7 s.
  it("a process holding hundreds of meta endpoints at two levels keeps each apart", function()
    local script = H.tempfile([[
      local market = require "market"
      local M = market.at_meta_level
      market.perform(market.nested_vm(function()
        return market.transition(0, market.nested_vm(function()
          for i = 1, 300 do
            market.perform(M(market.subscriber({ "one", i }, "e" .. i)),
                           M(M(market.subscriber({ "two", i }, "e" .. i))))
          end
          market.perform(M(market.subscriber({ "one", 7 }, "e7")))    -- the same role: no change
          for i = 1, 300 do market.perform(M(market.delete_endpoint("e" .. i))) end
          market.yield(20)
          print("alive after the deletes at one level")
          market.perform(M(M(market.subscriber({ "other" }, "e150"))))
          print("not reached")
        end, { name = "inner" }))
      end, { name = "outer" }))
    ]])
    local status, out, err = H.run("--no-drivers " .. script)
    os.remove(script)
    assert.equal(0, status, err)
    assert.equal("alive after the deletes at one level\n", out)
    assert.truthy(err:find("endpoint 'e150' re-added with a different role", 1, true), err)
  end)

  it("names meta endpoints after the child and the endpoint, one prefix per level", function()
    local script = H.tempfile([[
      local market = require "market"
      local M = market.at_meta_level
      market.perform(market.nested_vm(function()
        return market.transition(0, market.nested_vm(function()
          return market.transition(0, M(M(market.subscriber("deep", "ep"))), M(market.subscriber("mid", "ep")))
        end, { name = "inner" }))
      end, { name = "outer" }))
    ]])
    local status, out, err = H.run("--no-drivers --trace " .. script)
    os.remove(script)
    assert.equal(0, status, err)
    -- ground: process 2 (outer VM) holds "2/1/ep" for child 1 of inner VM 2.
    assert.truthy(err:find('ground #2 outer: add 2/1/ep subscriber/participant "deep"', 1, true), err)
    -- inner VM (pid 2 of outer) holds "1/ep" one level up for its child 1.
    assert.truthy(err:find('ground/2 #2 inner: add 1/ep subscriber/participant "mid"', 1, true), err)
  end)
end)

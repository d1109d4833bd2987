-- exit_spec.lua: ending the program (docs/semantics.md "Ending the
-- program"): market.exit(status) from the ground VM and from nested VMs,
-- what the other processes see, what ground_vm returns, the interpreter's
-- exit status and the drivers' sockets after an exit.  The host API
-- (mk_host_exit, mk_host_exited) is in spec/c/test_host.c; Ctrl-C
-- (SIGINT), once and twice, in spec/stop_spec.lua.  Every server and client is a bounded subprocess,
-- killed at the end.
package.path = "spec/support/?.lua;" .. package.path
local market = require "market"
local tcp = require "market.tcp"
local H = require "helpers"
local N = require "net"
local _ = market._
local q = N.q

-- Run a ground VM (drivers with opts.drivers) and return all it returned;
-- the crash reports of the processes these specs make fail are dropped.
local function run(boot, opts)
  opts = opts or {}
  opts.on_crash = function() end
  return table.pack(market.ground_vm(boot, opts))
end

-- A process that logs, as "<who> saw <name> go: <reason>", the absence of
-- each publisher of "peer" it saw, and publishes ("peer", who) itself.
local function peer(log, who)
  return market.spawn(function()
    return market.transition(nil, market.publisher({ "peer", who }),
      market.subscriber({ "peer", _ }, { on_absence = function(_s, role, why)
        log("%s saw %s go: %s", who, role.topic[2], why)
      end }))
  end, { name = who })
end

describe("market.exit", function()
  it("ends the program from the ground VM: the others see 'exit', ground_vm returns nil, 'exit', 3",
     function()
    local log = H.log()
    local r = run(function()
      market.perform(peer(log, "a"), peer(log, "b"))
      market.perform(market.publisher({ "peer", "boot" }))
      market.pause()
      market.perform(market.exit(3))
      log("boot went on")                -- never: the process quit
    end)
    assert.same({ n = 3, nil, "exit", 3 }, r)
    -- Oldest first: the boot process quits at once, then a is killed.
    assert.same({ "a saw boot go: exit", "b saw boot go: exit", "b saw a go: exit" }, log.lines)
  end)

  it("from a process two nested VMs down, with a ground peer seeing 'exit'", function()
    local log = H.log()
    local up2 = function(a) return market.at_meta_level(market.at_meta_level(a)) end
    local r = run(function()
      market.perform(peer(log, "ground"), market.nested_vm(function()
        market.perform(market.nested_vm(function()
          market.perform(up2(market.publisher({ "peer", "deep" })),
            up2(market.subscriber({ "peer", "ground" })))
          market.yield()                 -- the ground peer's presence
          market.perform(market.exit(3))
          log("deep went on")
        end))
      end))
    end)
    assert.same({ n = 3, nil, "exit", 3 }, r)
    assert.same({ "ground saw deep go: exit" }, log.lines)
  end)

  -- A burst longer than the ground's slice (10 ms, docs/semantics.md §1
  -- "Turns") for the young processes, then a message for the oldest: the
  -- kills, oldest first, wait until it is delivered.
  it("delivers what was queued before it first, a burst longer than a slice included", function()
    local got, last = 0, false
    local r = run(function()
      local procs, sends = {}, {}
      procs[1] = market.spawn(function()
        return market.transition(nil, market.subscriber({ "last" }, { on_message = function()
          last = true
        end }))
      end)
      for i = 1, 100 do
        procs[i + 1] = market.spawn(function()
          return market.transition(nil, market.subscriber({ "burst", i }, { on_message = function()
            got = got + 1
            local t = os.clock()
            while os.clock() - t < 0.0005 do end    -- 0.5 ms each: 50 ms in all
          end }))
        end)
        sends[i] = market.send({ "burst", i })
      end
      sends[101] = market.send({ "last" })
      market.perform(table.unpack(procs))
      market.pause()
      market.perform(table.unpack(sends))
      market.perform(market.exit(0))
    end, { drivers = false })
    assert.same({ true, "exit", 0, n = 3 }, r)
    assert.equal(100, got)
    assert.is_true(last)
  end)

  it("exit(0) and exit() end it with true, 'exit', 0", function()
    assert.same({ n = 3, true, "exit", 0 },
                run(function() market.perform(market.subscriber("x"), market.exit(0)) end))
    assert.same({ n = 3, true, "exit", 0 },
                run(function() return market.transition(nil, market.subscriber("x"), market.exit()) end))
  end)

  it("drops the rest of a transition, as quit does, and the first exit of a turn wins", function()
    local log = H.log()
    local function exits(status)
      return market.spawn(function()
        return market.transition(nil, market.subscriber("go", { on_message = function()
          log("exit(%d)", status)
          return market.transition(nil, market.exit(status), market.exit(9), market.send("after"))
        end }))
      end)
    end
    local r = run(function()
      market.perform(exits(4), exits(5), market.subscriber("after", { on_message = function()
        log("after was sent")
      end }))
      market.pause()
      market.perform(market.send("go"))
      market.perform(market.subscriber("forever"))
      market.yield()
    end)
    -- exit(4) ran first; the other handler still got its message (what is
    -- queued is delivered before the teardown), and its exit changed nothing.
    assert.same({ n = 3, nil, "exit", 4 }, r)
    assert.same({ "exit(4)", "exit(5)" }, log.lines)
  end)

  it("takes an integer 0..255 (nil: 0); anything else is an error where it is made", function()
    for _i, bad in ipairs { -1, 256, 2.5, 0 / 0, "3", true, {} } do
      local ok, err = pcall(function() local a = market.exit(bad); return a end)
      assert.is_false(ok)
      assert.matches("^[^:]*exit_spec.lua:%d+: market.exit: the status must be an integer 0..255, got ", err)
    end
    local a = market.exit(3.0)
    assert.equal("exit", a.kind)
    assert.equal(3, a.status)
    assert.equal(0, market.exit().status)
    assert.has_error(function() a.status = 4 end,
                     "market.action: an action cannot be changed; make another")
  end)

  it("cannot go inside at_meta_level: that process fails, the program goes on", function()
    local log = H.log()
    local r = run(function()
      market.perform(market.spawn(function()
        market.perform(market.publisher("p"), market.nested_vm(function()
          market.perform(market.at_meta_level(market.exit(2)))
        end))
      end), market.subscriber("p"))
      market.perform(market.nested_vm(function()
        market.perform(market.at_meta_level(market.subscriber("q", { on_absence = function(_s, _r, why)
          log("%s", why)
        end })), market.spawn(function()
          market.perform(market.at_meta_level(market.publisher("q")))
          market.pause()
          market.perform(market.at_meta_level(market.exit(2)))
        end))
      end))
    end)
    assert.same({ n = 1, true }, r)
    assert.same({ "market.exit: cannot be performed at meta level (it ends the program from any VM)" },
                log.lines)
  end)

  it("during a stop's drain ends it at once, with its status", function()
    local t0 = os.time()
    local r = run(function()
      market.perform(market.subscriber(market.ground.alarm(math.floor(market.now()) + 10000)),
        market.subscriber(market.ground.stopping(_), { on_presence = function()
          return market.transition(nil, market.exit(6))
        end }))
      market.stop(10000)
    end)
    assert.same({ n = 3, nil, "exit", 6 }, r)
    assert.is_true(os.time() - t0 <= 5)
  end)

  it("a boot failure before the exit: nil, the traceback, the status", function()
    local r = run(function()
      market.perform(market.spawn(function()
        market.perform(market.subscriber("go"))
        market.yield()
        market.perform(market.exit(0))
      end))
      market.pause()
      market.perform(market.send("go"))
      error("boot broke")
    end)
    assert.equal(3, r.n)
    assert.is_nil(r[1])
    assert.matches("boot broke", r[2])
    assert.equal(0, r[3])
  end)
end)

describe("after an exit", function()
  it("a TCP listener's port refuses connections once ground_vm has returned", function()
    -- The listener's observer is not the process that exits, and is
    -- younger than the tcp driver: killed after it, so nobody tells the
    -- listener to close; it is the teardown that closes its socket.
    local port
    local r = run(function()
      market.perform(market.spawn(function()
        market.perform(market.observe_publishers(tcp.channel(_, tcp.listener(0), _)),
          market.subscriber(tcp.listening(0, _)))
        local ev = market.wait_for(function(e) return e.type == "presence" end)
        market.perform(market.send({ "port", ev.role.topic.bound_port }))
        -- A liveness bound: without the exit, the listener would hold the
        -- program for ever.
        market.perform(market.subscriber(market.ground.alarm(math.floor(market.now()) + 10000)))
        market.yield()
        market.perform(market.quit(nil, "no exit within 10 s"))
      end), market.subscriber({ "port", _ }))
      local ev = market.wait_for(function(e) return e.type == "message" end)
      port = ev.message[2]
      local _o, status = N.capture(("nc -z 127.0.0.1 %d"):format(port), 5)
      assert.equal(0, status, "the listener did not accept")
      market.perform(market.exit(3))
    end, { drivers = true })
    assert.same({ n = 3, nil, "exit", 3 }, r)
    local _o, status = N.capture(("nc -z 127.0.0.1 %d"):format(port), 5)
    assert.is_not.equal(0, status, "the listener still accepts connections")
  end)
end)

describe("market (the interpreter) and exit", function()
  it("exits with the status, from the script and from a nested VM", function()
    local status = H.run([[-e 'local m = require "market"; m.perform(m.exit(3))']])
    assert.equal(3, status)
    local script = H.tempfile([[
      local market = require "market"
      market.perform(market.nested_vm(function()
        market.perform(market.nested_vm(function()
          io.stderr:write("exiting\n")
          market.perform(market.exit(3))
          io.stderr:write("went on\n")
        end))
      end, { name = "outer" }))]])
    local st, out, err = H.run(q(script))
    os.remove(script)
    assert.equal(3, st)
    assert.equal("", out)
    assert.equal("exiting\n", err)
  end)

  it("a boot failure and then exit(0): the traceback is printed, the status is 0", function()
    local st, _o, err = H.run([[--no-drivers -e 'local m = require "market"
      m.perform(m.spawn(function() m.perform(m.subscriber("go")); m.yield(); m.perform(m.exit(0)) end))
      m.pause(); m.perform(m.send("go")); error("boot broke")']])
    assert.equal(0, st)
    assert.matches("boot broke", err)
  end)

  it("closes its connections: the client reads what was sent, then the end of stream", function()
    -- A server that answers the first line with "bye" and exits with 5.
    local script = H.tempfile([[
      local market = require "market"
      local tcp = require "market.tcp"
      local _ = market._
      market.perform(market.observe_publishers(tcp.channel(_, tcp.listener(0), _), {
        on_presence = function(_s, role)
          local remote, loc = role.topic.source, role.topic.destination
          market.perform(market.spawn(function()
            market.perform(market.publisher(tcp.channel(loc, remote, _)),
              market.subscriber(tcp.channel(remote, loc, _)))
            while true do
              local ev = market.yield()
              if ev.type == "message" then
                market.perform(market.send(tcp.channel(loc, remote, "bye\n")), market.exit(5))
              end
            end
          end))
        end }), market.subscriber(tcp.listening(0, _), { on_presence = function(_s, role)
          io.stderr:write("listening on port " .. role.topic.bound_port .. "\n")
        end }))]])
    local server, port = N.await_listening(N.start(script), "the exiting server")
    local out, st = N.capture(("printf 'hi\\n' | nc 127.0.0.1 %d"):format(port), 5)
    local status = server.wait_exit(5)
    server.kill()
    os.remove(script)
    assert.equal(5, status)
    assert.equal("bye\n", out)
    assert.equal(0, st, "the client was not given the end of stream")
  end)
end)

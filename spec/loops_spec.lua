-- loops_spec.lua: market and other event loops (docs/loops.md).  A ground
-- VM opened with market.open_ground_vm and stepped by a plain Lua loop, or
-- polled by a cqueues controller or a luv loop; a cqueues controller
-- (examples/cqueues.lua) and luv's loop run inside market by a process.
-- The C side (mk_host_turn, mk_host_timeout, mk_host_pollfd) is in
-- spec/c/test_host.c.
package.path = "spec/support/?.lua;" .. package.path
local market = require "market"
local H = require "helpers"
local timer = require "market.timer"
local tcp = require "market.tcp"
local cqueues = require "cqueues"
local socket = require "cqueues.socket"
local uv = require "luv"
local N = require "net"
local _, EOF = market._, market.EOF

-- A process that counts n timer expiries, 20 ms apart, into `log`, then quits.
local function ticker(log, n)
  return function()
    market.perform(market.spawn(function()
      return market.transition(1,
        market.subscriber(timer.expired("tick", _), { on_message = function(i)
          log[#log + 1] = "tick " .. i
          if i == n then return market.transition(i, market.quit()) end
          return market.transition(i + 1, market.send(timer.set("tick", 20, "relative")))
        end }),
        market.send(timer.set("tick", 20, "relative")))
    end, { name = "ticker" }))
  end
end

describe("market.open_ground_vm", function()
  it("a plain Lua loop steps it to the end, then closes it", function()
    local log = {}
    local g = market.open_ground_vm(ticker(log, 3), { drivers = true })
    assert.equal(0, g:timeout())                 -- the boot is queued
    local steps, more = 0, true
    while more do
      more = g:step()                            -- waits until something happens
      steps = steps + 1
      assert(steps < 10000, "the ground never finished")
    end
    assert.is_false(more)
    assert.same({ "tick 1", "tick 2", "tick 3" }, log)
    assert.is_nil(g:timeout())                   -- finished: nothing timed
    assert.is_false(g:step(0))
    g:close()
    g:close()                                    -- again: nothing
    assert.matches("closed", tostring(g))
    assert.has_error(function() g:step(0) end, "market: step on a closed ground VM")
    assert.has_error(function() g:pollfd() end, "market: pollfd on a closed ground VM")
  end)

  it("step(0) does not wait, and timeout() says how long the loop may", function()
    local fired = false
    local g <close> = market.open_ground_vm(function()
      return market.transition(nil, market.subscriber(
        market.ground.alarm(math.floor(market.now()) + 300),
        { on_message = function() fired = true; return market.transition(nil, market.quit()) end }))
    end)
    assert.is_true(g:step(0))                    -- booted: the alarm holds it
    assert.is_false(fired)
    local t = g:timeout()
    assert.is_true(t >= 0 and t <= 0.3, tostring(t))
    assert.is_true(g:step(0.01))                 -- a bounded wait: not due yet
    assert.is_false(fired)
    while g:step(g:timeout()) do end             -- wait as long as it says
    assert.is_true(fired)
  end)

  it("a timed wait holds it, and timeout() counts down to the wait's deadline", function()
    local got
    local g <close> = market.open_ground_vm(function()
      got = select(2, market.wait_for(function() return false end, 200))
    end)
    assert.is_true(g:step(0))                    -- booted, waiting: the timeout holds it
    local t = g:timeout()
    assert.is_true(t ~= nil and t >= 0 and t <= 0.2, tostring(t))
    while g:step(g:timeout()) do end
    assert.equal("timeout", got)
  end)

  it("takes on_crash as ground_vm does: a failing process's report goes to it", function()
    local reports = {}
    local g <close> = market.open_ground_vm(function()
      market.perform(market.spawn(function() error("kaboom") end, { name = "fragile" }))
    end, { on_crash = function(r) reports[#reports + 1] = r end })
    while g:step(g:timeout()) do end
    assert.equal(1, #reports)
    assert.equal("fragile", reports[1].name)
    assert.matches("kaboom", reports[1].message)
  end)

  it("a cqueues controller polls it: market's TCP server and a cqueues client, one thread", function()
    local port, served = nil, {}
    -- An upper-casing server; its session stops it at the client's end of stream.
    local function session(remote, here)
      return function()
        return market.transition(nil,
          market.subscriber(tcp.channel(remote, here, _), { on_message = function(_, m)
            if m.subpacket == EOF then
              return market.transition_no_state(market.send({ "stop-server", 0 }), market.quit())
            end
            served[#served + 1] = m.subpacket
            return market.transition_no_state(market.send(tcp.channel(here, remote, m.subpacket:upper())))
          end }),
          market.publisher(tcp.channel(here, remote, _)))
      end
    end
    local g <close> = market.open_ground_vm(function()
      market.perform(N.tcp_serve(0, session))
      port = N.bound(0)
    end, { drivers = true })
    assert.equal("r", g:events())
    assert.equal("integer", math.type(g:pollfd()))

    local cq = cqueues.new()
    local answer, ended
    cq:wrap(function()                           -- market, polled by cqueues
      while true do
        local more, err = g:step(0)
        assert(more ~= nil, err)
        if not more then break end
        cqueues.poll(g)                          -- g:pollfd(), g:events(), g:timeout()
      end
      ended = true
    end)
    cq:wrap(function()                           -- a cqueues client of market's server
      for _i = 1, 500 do
        if port then break end
        cqueues.sleep(0.01)
      end
      assert(port, "market never listened")
      local s = assert(socket.connect("127.0.0.1", port))
      s:setmode("b", "b")                        -- no "\r\n" for "\n" (text mode's)
      assert(s:write("hello\n"))
      answer = s:read("*l")
      s:close()
    end)
    local deadline = os.time() + 30
    while not cq:empty() do
      assert(cq:step(1))
      assert(os.time() < deadline, "the loops did not finish")
    end
    assert.equal("HELLO", answer)
    assert.equal("hello\n", table.concat(served))
    assert.is_true(ended)                        -- market finished: step said false
  end)

  it("a luv loop polls it: uv.new_poll on pollfd, a uv timer for timeout", function()
    local log = {}
    local g = market.open_ground_vm(ticker(log, 3), { drivers = true })
    local poll, wake = uv.new_poll(g:pollfd()), uv.new_timer()
    local function turn()
      local more, err = g:step(0)
      assert(more ~= nil, err)
      if not more then poll:close(); wake:close(); g:close(); return end
      local t = g:timeout()
      wake:stop()
      if t then wake:start(math.ceil(t * 1000), 0, turn) end
    end
    poll:start("r", turn)
    turn()
    local luv_ticks = 0                          -- luv's own work meanwhile
    local own = uv.new_timer()
    own:start(10, 10, function()
      luv_ticks = luv_ticks + 1
      if luv_ticks == 5 then own:close() end
    end)
    uv.run()
    assert.same({ "tick 1", "tick 2", "tick 3" }, log)
    assert.equal(5, luv_ticks)
    assert.matches("closed", tostring(g))
  end)

  it("a signal reaches it through the descriptor: SIGTERM with drain stops it", function()
    -- In a lua5.4 of its own: the signal is sent to the whole process.
    local code = [[
      local market = require "market"
      local cqueues = require "cqueues"
      local g <close> = market.open_ground_vm(function()
        market.perform(market.spawn(function()
          return market.transition(nil, market.subscriber("waiter", { on_absence = function(_, _, why)
            print("waiter gone: " .. tostring(why)) end }))
        end))
        return market.transition(nil, market.publisher("waiter"),
          market.subscriber(market.ground.alarm(math.floor(market.now()) + 60000)))
      end, { drain = 0 })
      assert(g:step(0))
      print("timeout over 50 s:", g:timeout() > 50)
      local pid = io.open("/proc/self/stat"):read("n")
      local cq = cqueues.new()
      cq:wrap(function()
        os.execute("kill -TERM " .. pid)
        while g:step(0) do cqueues.poll(g) end
        print("done")
      end)
      assert(cq:loop())]]
    local out, status = N.capture(("LUA_CPATH=%s lua5.4 -e %s"):format(N.q(package.cpath), N.q(code)), 30)
    assert.equal(0, status, out)
    assert.equal("timeout over 50 s:\ttrue\nwaiter gone: stopped: the drain time (0 ms) ran out\ndone\n", out)
  end)

  it("reports the boot process's failure once, from the step it happened in", function()
    local g <close> = market.open_ground_vm(function() error("boom") end)
    local more, err = g:step(0)
    assert.is_nil(more)
    assert.matches("boom", err)
    assert.is_false(g:step(0))                   -- nothing left: done
  end)

  it("checks its options and its calls as ground_vm does", function()
    assert.has_error(function() market.open_ground_vm(42) end,
      "market.open_ground_vm: the boot argument must be a function, got number")
    assert.has_error(function() market.open_ground_vm(function() end, { drain = -1 }) end,
      "market.open_ground_vm: the drain time must be a number of milliseconds, 0 or more, got -1")
    local g = market.open_ground_vm(function()
      return market.transition(nil, market.subscriber(market.ground.alarm(math.floor(market.now()) + 60000)))
    end)
    -- One ground VM per Lua state, stepped from outside its processes.
    assert.has_error(function() market.open_ground_vm(function() end) end,
      "market.open_ground_vm: a ground VM is already running in this Lua state")
    assert.has_error(function() market.ground_vm(function() end) end,
      "market.ground_vm: a ground VM is already running in this Lua state")
    assert.has_error(function() g:step(-1) end)
    g:close()                                    -- the waiting process goes with it
    local inner
    g = market.open_ground_vm(function()
      inner = select(2, pcall(function() g:step(0) end))
    end)
    assert.is_false(g:step(0))
    assert.matches("step called from inside a process of the ground VM it steps", inner)
    g:close()
  end)

  -- on_crash runs inside the turn: a close there killed every process
  -- mid-turn, was then refused by mk_host_free (busy), and left the
  -- ground half closed and leaked, with the Lua state refusing any new
  -- one; a step there returned false, as if the ground were done.
  it("step and close from its on_crash raise an error, and the ground goes on", function()
    local g, said
    local went = false
    g = market.open_ground_vm(function()
      market.perform(market.spawn(function() error("kaboom") end, { name = "fragile" }),
                     market.publisher("holder"),
                     market.spawn(function()
                       return market.transition(nil, market.subscriber("holder",
                         { on_absence = function() went = true end }))
                     end))
      return market.transition(nil,
        market.subscriber(market.ground.alarm(math.floor(market.now()) + 60000)))
    end, { on_crash = function(r)
      said = { r.name, H.outcome(function() g:step(0) end, "spec/loops_spec.lua"),
               H.outcome(function() g:close() end, "spec/loops_spec.lua") }
    end })
    for _ = 1, 100 do
      assert.is_true(g:step(0))
      if said then break end
    end
    assert.same({ "fragile",
      "false market: step called inside a turn of the ground VM it steps (from its on_crash)",
      "false market: close called inside a turn of the ground VM it closes (from its on_crash)" },
      said)
    assert.is_false(went)                        -- nothing was torn down
    assert.matches("open", tostring(g))
    assert.is_true(g:step(0))
    g:close()
    assert.is_true(went)
    local g2 <close> = market.open_ground_vm(function() end)   -- freed: a new one opens
    assert.is_false(g2:step(0))
  end)

  it("a spawn performed while close ends the processes is not taken: its pid is 0", function()
    local got, ran = {}, false
    local g = market.open_ground_vm(function()
      market.perform(market.publisher("holder"), market.spawn(function()
        return market.transition(nil, market.subscriber("holder", { on_absence = function()
          got = { market.perform(market.spawn(function() ran = true end,
                                              { k = function() ran = true end })) }
        end }))
      end))
      market.yield()
    end)
    assert.is_false(g:step(0))                   -- booted; nothing watched: left to close
    assert.same({}, got)
    g:close()
    assert.same({ 0 }, got)
    assert.is_false(ran)
  end)

  it("a ground VM nobody closes is closed when collected: its processes end", function()
    local went
    do
      local g = market.open_ground_vm(function()
        market.perform(market.publisher("holder"), market.spawn(function()
          return market.transition(nil, market.subscriber("holder",
            { on_absence = function() went = true end }))
        end))
        return market.transition(nil,
          market.subscriber(market.ground.alarm(math.floor(market.now()) + 60000)))
      end)
      assert.is_true(g:step(0))
      assert.is_nil(went)
    end
    collectgarbage()
    collectgarbage()
    assert.is_true(went)
    -- Freed: a new one may open.
    local g2 <close> = market.open_ground_vm(function() end)
    assert.is_false(g2:step(0))
  end)

  -- lua_close takes no new finalizers once it has begun: the term boxes a
  -- handler made for the teardown's events were never finalized, and their
  -- terms leaked (LeakSanitizer: the listener's record, its address...).
  -- Now no process's code runs once the state closes; under the ASan
  -- suite the child checks for leaks.
  it("a ground VM open when the Lua state closes is freed without running process code", function()
    local preload = os.getenv("LD_PRELOAD") or ""
    local asan = preload:find("libasan", 1, true) ~= nil
    local env = asan and ("LD_PRELOAD=%s ASAN_OPTIONS=detect_leaks=1"):format(
      H.quote(preload .. " " .. H.build_dir() .. "/lua/market.so")) or ""
    local status, out, err = H.sh(("timeout 20 env %s LUA_CPATH=%s lua5.4 -e %s"):format(
      env, H.quote(package.cpath), H.quote([[
        local market = require "market"
        local tcp = require "market.tcp"
        local g = market.open_ground_vm(function()
          local lis = tcp.listener(tcp.address("127.0.0.1", 0))
          market.perform(market.publisher("holder"),
                         market.subscriber(tcp.channel(market._, lis, market._)),
                         market.spawn(function()
                           return market.transition(nil, market.subscriber("holder",
                             { on_absence = function() print("handler ran") end }))
                         end))
          market.yield()
        end, { drivers = true })
        for _ = 1, 3 do g:step(0.01) end
        _G.g = g
        print("exiting")]])))
    assert.equal("", err)
    assert.equal(0, status)
    assert.equal("exiting\n", out)
  end)

  -- os.exit(status, true) in a process closes the Lua state while its
  -- ground VM runs, and the host is never freed.  The cache in front of
  -- lua5.4's allocator (lproc.c, keep_freed) stayed installed, and Lua's
  -- last frees, once lua5.4 had unloaded market.so, jumped into unmapped
  -- code: a SIGSEGV.  (No cache under ASan: there the plain build alone
  -- can fail.)
  it("os.exit(status, true) in a process exits with that status, the state closed", function()
    local cases = {
      { [[market.ground_vm(function() print("boot") os.exit(0, true) end)]], 0, "boot\n" },
      { [[local g = market.open_ground_vm(function() print("boot") os.exit(0, true) end)
          g:step(0)]], 0, "boot\n" },
      { [[local tcp = require "market.tcp"
          local g = market.open_ground_vm(function()
            local lis = tcp.listener(tcp.address("127.0.0.1", 0))
            market.perform(market.subscriber(tcp.channel(market._, lis, market._)))
            market.yield(20)
            print("boot")
            os.exit(3, true)
          end, { drivers = true })
          while g:step(g:timeout()) do end]], 3, "boot\n" },
    }
    for i, case in ipairs(cases) do
      local status, out, err = H.sh(("timeout 20 env LUA_CPATH=%s lua5.4 -e %s"):format(
        H.quote(package.cpath), H.quote('local market = require "market"\n' .. case[1])))
      assert.equal(case[2], status, ("case %d: %s"):format(i, err))
      assert.equal(case[3], out, "case " .. i)
    end
  end)
end)

describe("cqueues inside market", function()
  it("examples/cqueues.lua: a process steps a controller whose client talks to market's server",
     function()
    local out, status = N.capture(N.q(N.market_bin()) .. " examples/cqueues.lua 'hi there'", 30)
    assert.equal(0, status, out)
    assert.equal("cqueues got: HI THERE\n", out)
  end)
end)

describe("luv inside market", function()
  it("a process runs luv's loop: its backend descriptor and its timeout as ground events", function()
    local got, ticks = nil, 0
    local ok, err = market.ground_vm(function()
      -- The recipe of docs/loops.md, for luv's default loop.
      local turn
      local function alarm()
        local t = uv.backend_timeout()           -- ms, -1: nothing timed
        if t < 0 then return nil end
        return market.subscriber(market.ground.monotonic_alarm(math.ceil(market.monotonic() + t)),
                                 { name = "uv-alarm", on_message = function() return turn() end })
      end
      turn = function()
        if not uv.run("nowait") then return market.transition_no_state(market.quit()) end
        return market.transition_no_state(market.delete_endpoint("uv-alarm"), alarm())
      end
      -- luv's side: a timer, and a TCP server and client of its own.
      local t = uv.new_timer()
      t:start(20, 20, function()
        ticks = ticks + 1
        if ticks == 3 then t:close() end
      end)
      local server = uv.new_tcp()
      assert(server:bind("127.0.0.1", 0))
      assert(server:listen(8, function()
        local c = uv.new_tcp()
        server:accept(c)
        c:read_start(function(_, data)
          if data then c:write(data:upper()) else c:close(); server:close() end
        end)
      end))
      local client = uv.new_tcp()
      client:connect("127.0.0.1", server:getsockname().port, function()
        client:read_start(function(_, data) got = data; client:close() end)
        client:write("hello")
      end)
      return market.transition(nil,
        market.subscriber(market.ground.readable(uv.backend_fd()), { name = "uv-fd", on_message = turn }),
        alarm())
    end)
    assert(ok, err)
    assert.equal("HELLO", got)
    assert.equal(3, ticks)
  end)
end)

-- workers_spec.lua: `market --workers N` (docs/workers.md): N processes
-- of one program sharing their listeners' ports (SO_REUSEPORT), the parent
-- passing signals on and reporting the workers that fail; and the
-- `reuseport` setting of a plain listener.  Servers listen on loopback on
-- a port free when the spec starts (workers bind it each: port 0 would
-- give each its own), every client runs under `timeout`, every process is
-- killed at the end.
package.path = "spec/support/?.lua;" .. package.path
local N = require "net"
local market = require "market"
local q, capture = N.q, N.capture

-- Start `market --workers n whoami.lua PORT` and wait until every worker
-- listens.  Returns the server (N.start_cmd), the port and the workers'
-- pids (a set).
local function start_workers(n)
  local port = N.free_port()
  local server = N.start_cmd(("exec %s --workers %d spec/support/whoami.lua %d")
    :format(q(N.market_bin()), n, port))
  local pids = {}
  for _ = 1, 1500 do
    pids = {}
    local count = 0
    for pid in server.stderr():gmatch("pid (%d+) listening on port") do
      pids[pid] = true
      count = count + 1
    end
    if count == n or server.exited() then break end
    N.sleep(0.02)
  end
  return server, port, pids
end

local function alive(pid) return N.slurp("/proc/" .. pid .. "/stat") ~= nil end

-- Kill the workers left (by pid) and the parent.
local function cleanup(server, pids)
  for pid in pairs(pids) do os.execute("kill -KILL " .. pid .. " 2>/dev/null") end
  server.kill()
end

describe("market --workers N", function()
  it("runs N workers that all serve one port", function()
    local server, port, pids = start_workers(2)
    finally(function() cleanup(server, pids) end)
    local n = 0
    for _ in pairs(pids) do n = n + 1 end
    assert.equal(2, n, server.stderr())
    -- The kernel spreads connections over the workers by their addresses:
    -- forty connections all landing on one worker would be a 1 in 2^39 chance.
    local out = capture(("for i in $(seq 40); do nc -N 127.0.0.1 %d </dev/null; done"):format(port), 60)
    local seen, lines = {}, 0
    for index, pid in out:gmatch("worker (%d)/2 pid (%d+)\n") do
      assert.is_true(pids[pid], "an answer from an unknown process: " .. out)
      seen[pid] = index
      lines = lines + 1
    end
    assert.equal(40, lines, out)
    local indexes = {}
    for _, index in pairs(seen) do indexes[#indexes + 1] = index end
    table.sort(indexes)
    assert.same({ "1", "2" }, indexes)
  end)

  it("stops every worker on SIGTERM to the parent, and exits 0", function()
    local server, port, pids = start_workers(3)
    finally(function() cleanup(server, pids) end)
    assert.equal("worker", (capture(("nc -N 127.0.0.1 %d </dev/null"):format(port), 5)):match("^%a+"))
    assert.equal(0, server.stop("TERM"))
    for pid in pairs(pids) do assert.is_false(alive(pid), "worker " .. pid .. " still runs") end
    assert.is_nil(server.stderr():find("market: worker", 1, true), server.stderr())
  end)

  -- A worker took SIGINT and SIGTERM by their default action until its
  -- program had set its stop on them: one passed on soon after the start
  -- killed it ("killed by signal 15", status 143).  Here the worker is
  -- held before then, reading its script from a FIFO nobody writes yet.
  it("stops a worker gracefully on a signal passed on while it starts", function()
    local fifo = os.tmpname()
    os.remove(fifo)
    assert(os.execute("mkfifo " .. fifo))
    local server = N.start_cmd(("exec %s --workers 1 --drain 0 %s"):format(q(N.market_bin()), q(fifo)))
    local worker
    finally(function()
      if worker then os.execute("kill -KILL " .. worker .. " 2>/dev/null") end
      server.kill()
      os.remove(fifo)
    end)
    -- The worker runs market (execv'd): its command line has no --workers.
    for _ = 1, 500 do
      local children = N.slurp(("/proc/%s/task/%s/children"):format(server.pid, server.pid)) or ""
      worker = children:match("%d+")
      local cmdline = worker and N.slurp("/proc/" .. worker .. "/cmdline") or ""
      if cmdline ~= "" and not cmdline:find("--workers", 1, true) then break end
      worker = nil
      N.sleep(0.02)
    end
    assert.truthy(worker, "the worker never started: " .. server.stderr())
    os.execute("kill -TERM " .. server.pid)
    -- Passed on: the worker holds it pending (SIGTERM, bit 15 of the
    -- masks), or (before the fix) was killed by it.
    local held
    for _ = 1, 500 do
      local st = N.slurp("/proc/" .. worker .. "/status") or ""
      if st == "" or st:match("State:%s*Z") then break end
      local shd, sig = st:match("ShdPnd:%s*(%x+)"), st:match("SigPnd:%s*(%x+)")
      held = (tonumber(shd, 16) | tonumber(sig, 16)) & (1 << 14) ~= 0
      if held then break end
      N.sleep(0.02)
    end
    -- Its script (the FIFO unblocks once a writer opens it): wait a minute,
    -- or until stopped (--drain 0: at once).
    capture(("printf %%s %s >%s"):format(q([[
      local market = require "market"
      return market.transition(nil, market.subscriber(market.ground.alarm(math.floor(market.now()) + 60000)))]]),
      q(fifo)), 5)
    assert.equal(0, server.wait_exit(10), server.stderr())
    assert.equal("", server.stderr())
    assert.is_true(held)
  end)

  it("reports a worker that was killed, and exits with its status", function()
    local server, _, pids = start_workers(2)
    finally(function() cleanup(server, pids) end)
    local victim = next(pids)
    os.execute("kill -KILL " .. victim)
    assert.is_true(server.wait_for(("(pid %s) was killed by signal 9"):format(victim), 10),
                   server.stderr())
    -- The other worker serves on; the parent stops it on SIGTERM.
    assert.is_true(server.running())
    assert.equal(137, server.stop("TERM"))
  end)

  it("goes on when its standard error's reader has gone (no SIGPIPE)", function()
    -- A log pipe whose reader died: the report of a worker's end was the
    -- parent's death by SIGPIPE, and the other workers stopped with it.
    local fifo = os.tmpname()
    os.remove(fifo)
    assert(os.execute("mkfifo " .. fifo))
    local reader = N.start_cmd("exec cat " .. q(fifo))
    local port = N.free_port()
    local server = N.start_cmd(("exec %s --workers 2 spec/support/whoami.lua %d 2>%s")
      :format(q(N.market_bin()), port, q(fifo)))
    local pids = {}
    finally(function() reader.kill(); cleanup(server, pids); os.remove(fifo) end)
    for _ = 1, 1500 do
      local count = 0
      for pid in reader.stdout():gmatch("pid (%d+) listening on port") do
        pids[pid] = true
        count = count + 1
      end
      if count == 2 or server.exited() then break end
      N.sleep(0.02)
    end
    local victim, other = next(pids)
    other = next(pids, victim)
    assert.truthy(other, reader.stdout())
    reader.kill()                          -- nobody reads standard error now
    os.execute("kill -KILL " .. victim)
    for _ = 1, 25 do N.sleep(0.02) end
    assert.is_true(server.running(), "the parent ended with status " .. tostring(server.exited()))
    assert.is_true(alive(other))
    assert.equal("worker", (capture(("nc -N 127.0.0.1 %d </dev/null"):format(port), 5)):match("^%a+"))
    assert.equal(137, server.stop("TERM"))
  end)

  it("reports a worker that failed, and exits with the first failure's status", function()
    local out, status = capture(("%s --workers 3 -e %s 2>&1"):format(q(N.market_bin()), q([[
      local market = require "market"
      if market.worker.index == 2 then error("worker two fails", 0) end]])), 30)
    assert.equal(1, status, out)
    assert.truthy(out:find("worker two fails", 1, true), out)
    assert.truthy(out:find("market: worker 2 of 3 %(pid %d+%) exited with status 1"), out)
    assert.is_nil(out:find("worker 1 of", 1, true), out)
    assert.is_nil(out:find("worker 3 of", 1, true), out)
  end)

  it("tells each worker its number: market.worker and MARKET_WORKER", function()
    local out, status = capture(("%s --workers 3 -e %s a --workers b"):format(q(N.market_bin()), q([[
      local market = require "market"
      print(market.worker.index, market.worker.count, os.getenv("MARKET_WORKER"), ...)]])), 30)
    assert.equal(0, status, out)
    local lines = {}
    for l in out:gmatch("[^\n]+") do lines[#lines + 1] = l end
    table.sort(lines)
    assert.same({ "1\t3\t1/3\ta\t--workers\tb", "2\t3\t2/3\ta\t--workers\tb",
                  "3\t3\t3/3\ta\t--workers\tb" }, lines)
    -- Without --workers: the one worker of one.
    out = capture(("%s -e %s"):format(q(N.market_bin()), q([[
      local market = require "market"
      print(market.worker.index, market.worker.count)]])), 10)
    assert.equal("1\t1\n", out)
  end)

  -- One rule (mk_worker) for market.worker, the memory limit's share and
  -- the cluster's node name.  The limit took any "i/n" with atol: 5/3 was a
  -- third of --max-memory where market.worker said 1 of 1, and
  -- 1/99999999999999999999 a limit of 1 byte, "cannot create a Lua state:
  -- out of memory"; "x" made --node's name nil .. "-".  Past --workers's
  -- bound, 1/2000000 was taken, and its share of the memory limit was too
  -- small to load the market module.
  it("ignores a MARKET_WORKER that is not i/n with 1 <= i <= n <= 1024, everywhere alike", function()
    local code = q("local w = require('market').worker print(w.index, w.count)")
    for _, bad in ipairs { "5/3", "1/99999999999999999999", "1/2000000", "1/1025", "0/2", " 1/2",
                           "1/2x", "x", "" } do
      local out, status = capture(("MARKET_WORKER=%s %s --log-level info --max-memory 1G -e %s 2>&1")
                                  :format(q(bad), q(N.market_bin()), code), 10)
      assert.equal(0, status, out)
      assert.matches(" warn %-: market: MARKET_WORKER=" .. bad:gsub("%p", "%%%0") ..
                     " ignored: not i/n with 1 <= i <= n <= 1024 %(docs/workers.md%)\n" ..
                     "[^\n]* info %-: market: memory limit 1024 MiB %(%-%-max%-memory%)\n1\t1\n$", out, 1, bad)
    end
    local top = capture(("MARKET_WORKER=1024/1024 %s -e %s 2>&1"):format(q(N.market_bin()), code), 10)
    assert.equal("1024\t1024\n", top)
    local out = capture(("MARKET_WORKER=2/3 %s --log-level info --max-memory 1G -e %s 2>&1")
                        :format(q(N.market_bin()), code), 10)
    assert.matches(" info %-: market: memory limit 341 MiB %(%-%-max%-memory, a worker's share%)\n2\t3\n$",
                   out)
    -- Nothing listens on port 1: the driver fails, named after its node.
    for w, node in pairs { x = "n", ["2/3"] = "n%-2" } do
      out = capture(("MARKET_WORKER=%s %s --cluster nats://127.0.0.1:1 --node n -e '' 2>&1")
                    :format(w, q(N.market_bin())), 20)
      assert.matches("ground #%d+ cluster " .. node .. " failed: ", out, 1, w)
    end
  end)

  it("stops the workers when the parent is killed", function()
    local server, _, pids = start_workers(2)
    finally(function() cleanup(server, pids) end)
    os.execute("kill -KILL " .. server.pid)
    -- Each gets SIGTERM (PR_SET_PDEATHSIG) and stops gracefully.
    for pid in pairs(pids) do
      for _ = 1, 500 do
        if not alive(pid) then break end
        N.sleep(0.02)
      end
      assert.is_false(alive(pid), "worker " .. pid .. " outlived its parent")
    end
  end)

  it("refuses a count that is not a number from 1 to 1024", function()
    for _, bad in ipairs({ "0", "1025", "x", "2x", "" }) do
      local out, status = capture(("%s --workers %s -e 'print(1)' 2>&1"):format(q(N.market_bin()), q(bad)), 10)
      assert.equal(2, status, bad)
      assert.equal("market: --workers needs a number from 1 to 1024\n", out)
    end
  end)

  it("refuses --inspect beside --workers: one port cannot serve N programs", function()
    local out, status = capture(("%s --workers 2 --inspect 0 -e 'print(1)' 2>&1"):format(q(N.market_bin())), 10)
    assert.equal(2, status)
    assert.equal("market: --inspect cannot be given with --workers (docs/workers.md)\n", out)
  end)
end)

describe("a listener's reuseport setting", function()
  local tcp = require "market.tcp"
  local sys = require "market.sys"
  local _ = market._

  -- Listen on a port another socket holds with SO_REUSEPORT (the spec's
  -- own); the bound port, or nil and the reason listening failed.
  local function listen_beside(settings)
    local port = N.free_port()
    local other = assert(sys.tcp_listen(port, 16, true))
    local got, why = N.run(function()
      if settings then market.perform(tcp.options(tcp.listener(port), settings)) end
      market.perform(market.observe_publishers(tcp.channel(_, tcp.listener(port), _), "listen"),
        market.subscriber(tcp.listening(port, _), "status"))
      local function status() return market.wait_for(function(e) return e.endpoint == "status" end) end
      local ev = status()
      -- A listener that failed is present a moment, with no port, then absent.
      if math.type(ev.role.topic.bound_port) == "integer" then return ev.role.topic.bound_port end
      if ev.type == "presence" then ev = status() end
      return nil, ev.reason
    end)
    other:close()
    return got, why, port
  end

  it("lets a listener share its port when set, as it is read before bind", function()
    local got, why, port = listen_beside({ reuseport = true })
    assert.equal(port, got, why)
  end)

  it("is off by default outside --workers: the port is in use", function()
    assert.is_false(tcp.REUSEPORT)
    local got, why, port = listen_beside(nil)
    assert.is_nil(got)
    assert.equal(("cannot listen on port %d: address already in use"):format(port), why)
    got, why = listen_beside({ reuseport = false })
    assert.is_nil(got)
    assert.truthy(why:find("address already in use", 1, true))
  end)

  it("follows tcp.REUSEPORT when no setting says otherwise", function()
    finally(function() tcp.REUSEPORT = false end)
    tcp.REUSEPORT = true
    local got, why, port = listen_beside(nil)
    assert.equal(port, got, why)
  end)

  it("must be a boolean", function()
    assert.has_error(function() tcp.options(tcp.listener(1), { reuseport = 1 }) end,
                     "tcp.options: reuseport must be a boolean, got 1")
  end)
end)

describe("udp.REUSEPORT", function()
  local udp = require "market.udp"
  local sys = require "market.sys"
  local _ = market._

  it("spreads a udp.listener's datagrams over the processes on its port", function()
    local port = N.free_port("udp")
    local other = assert(sys.udp_bind(port, true))      -- as another worker's
    local senders, mine, theirs = {}, 0, 0
    finally(function()
      udp.REUSEPORT = false
      other:close()
      for _, s in ipairs(senders) do s:close() end
    end)
    udp.REUSEPORT = true
    N.run(function()
      market.perform(market.subscriber(udp.packet(_, udp.listener(port), _), {
        name = "rx", on_message = function() mine = mine + 1 end }))
      market.wait_for(function(e) return e.endpoint == "rx" end)   -- bound
      -- Each datagram from a socket of its own: the kernel picks the
      -- receiver by the sender's address, so 32 all landing on one side
      -- would be a 1 in 2^31 chance.
      local sa = assert(sys.resolve("127.0.0.1", port, "udp"))[1].sa
      for i = 1, 32 do
        senders[i] = assert(sys.udp_bind(0))
        assert(senders[i]:sendto("x", sa))
      end
      N.wait_until(function()
        while other:recvfrom() do theirs = theirs + 1 end
        return mine + theirs == 32
      end)
    end)
    assert.is_true(mine > 0 and theirs > 0, ("market %d, the other socket %d"):format(mine, theirs))
  end)

  it("is false outside --workers", function()
    assert.is_false(udp.REUSEPORT)
  end)
end)

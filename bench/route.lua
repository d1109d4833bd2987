-- bench/route.lua: routing and process figures (issue: core runtime).
--
--   ninja -C build bench-route
--   (or: LUA_CPATH='build/lua/?.so' lua5.4 bench/route.lua [N]: it runs its own
--   ground VMs, so not under the market interpreter, which already has one;
--   with MARKET=build/market it also runs the sustained spawns under it)
--
-- Prints Lua-to-Lua messages per second in one VM (one publisher, one
-- subscriber, a 3-field record topic), the same with 100,000 extra
-- subscriber endpoints on non-matching topics, their ratio
-- (route-scaling-ratio), the same with the activation budget off (what the
-- budget costs: budget-cost-ratio, docs/limits.md), idle memory per process
-- for 100,000 Lua processes with one endpoint each, handler-style and
-- straight-line waiting in market.yield(), the spawn rate, the spawn rate
-- sustained over ten waves of spawns and kills in one VM (here, and under
-- the market interpreter, whose collector settings are its own), and the
-- CPU time per presence and absence event (docs/performance.md).
local market = require "market"
local _ = market._
local N = tonumber(arg and arg[1]) or 2000000
local BATCH = 1000
local rec = market.record("bench-msg", "a", "b", "c")
local other = market.record("bench-other", "i", "b", "c")

local clock = os.clock
local function wall()
  -- os.clock is CPU time of this process: exactly what one VM thread costs.
  return clock()
end

local function messages(extra, budget)
  local received, t0, t1 = 0, 0, 0
  market.ground_vm(function()
    if extra > 0 then
      market.perform(market.spawn(function()
        local acts = {}
        for i = 1, extra do
          acts[i] = market.subscriber(other(i, _, _), { name = "x" .. i,
            on_message = function() end })
        end
        return market.transition(nil, acts)
      end, { name = "crowd" }))
      market.pause()
    end
    market.perform(market.spawn(function()
      return market.transition(0, market.subscriber(rec(_, _, _), {
        on_message = function()
          received = received + 1
          if received == N then t1 = wall(); return market.transition(nil, market.quit()) end
        end }))
    end, { name = "subscriber" }))
    market.pause()
    market.perform(market.spawn(function()
      local send = market.send(rec(1, "two", 3.5))
      local perform, pause = market.perform, market.pause
      t0 = wall()
      for _ = 1, N // BATCH do
        for _ = 1, BATCH do perform(send) end
        pause()
      end
    end, { name = "publisher" }))
    if extra > 0 then market.perform(market.quit()) end
  end, { max_activation = budget })
  assert(received == N, "lost messages: " .. received .. " of " .. N)
  return N / (t1 - t0)
end

local function rss_kib()
  local f = io.open("/proc/self/statm")
  local _, res = f:read("n", "n")
  f:close()
  return res * 4
end

-- spawn_many(n, boot, ready): spawns n processes running boot in a fresh
-- ground VM and lets them run until ready() is true (default: until every
-- boot has run).  Returns the heap (market.memory) and resident bytes per
-- process once they are all there, the rate of spawns with their boots,
-- and the rate of spawn actions alone.
local function spawn_many(n, boot, ready, finish)
  local per, per_rss, rate, created
  market.ground_vm(function()
    collectgarbage()
    collectgarbage()
    local before, before_heap = rss_kib(), market.memory()
    local t0 = wall()
    local spawn = market.spawn(boot)
    for _ = 1, n do market.perform(spawn) end
    local tspawned = wall()   -- n processes exist, none has booted yet
    repeat market.pause() until not ready or ready()
    local t1 = wall()
    created = n / (tspawned - t0)
    collectgarbage()
    collectgarbage()
    per = (market.memory() - before_heap) / n
    per_rss = (rss_kib() - before) * 1024 / n
    rate = n / (t1 - t0)
    if finish then finish() end
  end, { max_activation = 0 })     -- as in waves()
  assert(rate, "the spawn run did not finish")
  return per, per_rss, rate, created
end

-- Handler-style processes with one endpoint each.
local function processes(n)
  return spawn_many(n, function(pid)
    return market.transition(nil, market.subscriber(other(pid, _, _), { name = "in",
      on_message = function() end }))
  end)
end

-- Straight-line processes, each with one endpoint, suspended in
-- market.yield() waiting for a message that never comes (issue 10:
-- at most 2 KiB each).  Ready once every one has reached its yield.
-- timed: in market.yield(ms) instead, with a timeout of an hour (issue
-- 12), and a stop ends them once measured.
local function waiting(n, timed)
  local suspended = 0
  local per, per_rss = spawn_many(n, function(pid)
    market.perform(market.subscriber(other(pid, _, _), { name = "in" }))
    suspended = suspended + 1
    market.yield(timed and 3600000 or nil)
  end, function() return suspended == n end, timed and function() market.stop(0) end)
  return per, per_rss
end

-- Presence and absence (issue 10: at most 1 µs per event delivered).
-- n subscriber processes, each with an on_presence and an on_absence
-- handler that count, then one publisher whose topic they all match
-- appears: CPU time from its spawn until the n-th subscriber's on_presence
-- ran, per event.  Then the publisher is killed: the same until the n-th
-- on_absence.  Both times include the publisher's side (its own n
-- presence events if the runtime delivers them) and the kill itself.
--
-- With stop ("setup", "appear" or "leave"), the program exits right after
-- that stage, without the VM's teardown: bench/callgrind.sh counts the
-- instructions of each stage as the difference of two such runs.
local feed = market.record("bench-feed", "channel", "item")
local function exit_at(stop, stage) if stop == stage then os.exit(0) end end

local function presence(n, stop)
  local seen, gone, t0, t1, t2, t3 = 0, 0, 0, 0, 0, 0
  local ok, err = market.ground_vm(function()
    local spawn = market.spawn(function()
      return market.transition(nil, market.subscriber(feed("news", _), { name = "in",
        on_presence = function()
          seen = seen + 1
          if seen == n then t1 = wall() end
        end,
        on_absence = function()
          gone = gone + 1
          if gone == n then t3 = wall() end
        end }))
    end)
    for _ = 1, n do market.perform(spawn) end
    market.pause()            -- every subscriber has its endpoint
    exit_at(stop, "setup")
    t0 = wall()
    local pid = market.perform(market.spawn(function()
      return market.transition(nil, market.publisher(feed("news", _), { name = "out" }))
    end))
    repeat market.pause() until seen == n
    exit_at(stop, "appear")
    t2 = wall()
    market.perform(market.quit(pid))
    repeat market.pause() until gone == n
    exit_at(stop, "leave")
  end, { max_activation = 0 })
  assert(ok, err)
  assert(seen == n and gone == n, ("presence %d, absence %d of %d"):format(seen, gone, n))
  return (t1 - t0) / n * 1e6, (t3 - t2) / n * 1e6
end

-- n processes, each holding one endpoint, and one observer of them all
-- counting absences; then all n are killed: CPU time from the first kill
-- until the observer's n-th on_absence ran, per event.  stop: "setup" or
-- "killed", as for presence.
local function absence(n, stop)
  local present, gone, t0, t1 = 0, 0, 0, 0
  local ok, err = market.ground_vm(function()
    local pids = {}
    local spawn = market.spawn(function(pid)
      return market.transition(nil, market.publisher(feed("item", pid), { name = "out" }))
    end)
    for i = 1, n do pids[i] = market.perform(spawn) end
    market.perform(market.spawn(function()
      return market.transition(nil, market.observe_publishers(feed("item", _), { name = "all",
        on_presence = function() present = present + 1 end,
        on_absence = function()
          gone = gone + 1
          if gone == n then t1 = wall() end
        end }))
    end))
    repeat market.pause() until present == n
    exit_at(stop, "setup")
    t0 = wall()
    for i = 1, n do market.perform(market.quit(pids[i])) end
    repeat market.pause() until gone == n
    exit_at(stop, "killed")
  end, { max_activation = 0 })
  assert(ok, err)
  assert(gone == n, ("absence %d of %d"):format(gone, n))
  return (t1 - t0) / n * 1e6
end

-- Sustained spawning: `waves` waves in one long-lived VM, each spawning n
-- processes (booted, each adding its endpoint) then killing them all.
-- Returns the median and the slowest wave's spawn rate: a VM that keeps
-- spawning pays for collecting the waves before (issue 10).
-- hosted: run in the process calling it (under `market`, the boot
-- process), not in a ground VM of its own.
local function waves(n, count, hosted)
  local rates = {}
  local function run()
    local boot = function(pid)
      return market.transition(nil, market.subscriber(other(pid, _, _), { name = "in",
        on_message = function() end }))
    end
    local spawn, pids = market.spawn(boot), {}
    for w = 1, count do
      local t0 = wall()
      for i = 1, n do pids[i] = market.perform(spawn) end
      market.pause()
      rates[w] = n / (wall() - t0)
      for i = 1, n do market.perform(market.quit(pids[i])) end
      market.pause()
    end
  end
  if hosted then
    run()
  else
    -- 100,000 spawns from one activation may take more than the default
    -- budget of CPU on a slow machine: this measures spawning, not budgets.
    assert(market.ground_vm(run, { max_activation = 0 }))
  end
  table.sort(rates)
  return (rates[count // 2] + rates[count // 2 + 1]) / 2, rates[1]
end

-- The same waves with the script the boot process of the `market`
-- interpreter (route.lua --hosted-waves, run by `market`): the collector
-- is then the interpreter's (lua/host.c), not lua5.4's.
if arg and arg[1] == "--hosted-waves" then
  local median, slowest = waves(100000, 10, true)
  print(median, slowest)
  os.exit(0)
end

-- The memory figures come from a fresh interpreter each (this script run
-- as `route.lua --fresh WHAT`): in this one, the runs before have freed
-- memory that the allocator keeps and hands out again, so the resident
-- size would hardly grow (the heap figures, counted by the allocator,
-- would not change).
if arg and arg[1] == "--fresh" then
  local run = ({ processes = processes, waiting = waiting,
                 ["waiting-timed"] = function(n) return waiting(n, true) end,
                 waves = function(n) return waves(n, 10) end })[arg[2]]
  print(run(100000))
  os.exit(0)
end
-- For bench/callgrind.sh: n Lua-to-Lua messages as messages() sends them
-- (stops "setup", before the first, and "sent", once all are handled)...
local function message_stages(n, stop)
  local received = 0
  market.ground_vm(function()
    market.perform(market.spawn(function()
      return market.transition(0, market.subscriber(rec(_, _, _), {
        on_message = function() received = received + 1 end }))
    end))
    market.pause()
    exit_at(stop, "setup")
    local send = market.send(rec(1, "two", 3.5))
    local perform, pause = market.perform, market.pause
    for _ = 1, n // BATCH do
      for _ = 1, BATCH do perform(send) end
      pause()
    end
    repeat pause() until received == n
    exit_at(stop, "sent")
  end, { max_activation = 0 })
end

-- ... and waves of n spawns then kills as waves() makes them (stops "two"
-- and "four", after that many waves: their difference is two waves in a
-- VM that has already spawned and killed, collector included).
local function spawn_stages(n, stop)
  market.ground_vm(function()
    local boot = function(pid)
      return market.transition(nil, market.subscriber(other(pid, _, _), { name = "in",
        on_message = function() end }))
    end
    local spawn, pids = market.spawn(boot), {}
    for w = 1, 4 do
      for i = 1, n do pids[i] = market.perform(spawn) end
      market.pause()
      for i = 1, n do market.perform(market.quit(pids[i])) end
      market.pause()
      exit_at(stop, ({ "one", "two", "three", "four" })[w])
    end
  end, { max_activation = 0 })
end

-- route.lua --stage KIND-STOP N, KIND presence, absence, messages or spawns
-- (bench/callgrind.sh).
if arg and arg[1] == "--stage" then
  local kind, stop = arg[2]:match("^(%a+)-(%a+)$")
  local run = ({ presence = presence, absence = absence, messages = message_stages,
                spawns = spawn_stages })[kind]
  assert(run, "bench/route: no stage " .. arg[2])
  run(assert(math.tointeger(tonumber(arg[3])), "bench/route: --stage NAME N"), stop)
  error("bench/route: no stage " .. arg[2])
end
-- fresh(what): this script's `--fresh what` run in a fresh interpreter,
-- its numbers; fresh(what, market): `what` run by that market interpreter.
local function fresh(what, interpreter)
  local function quote(s) return "'" .. s:gsub("'", [['\'']]) .. "'" end
  local command = interpreter and ("%s --max-activation 0 %s %s"):format(quote(interpreter), quote(arg[0]), what)
                  or ("%s %s --fresh %s"):format(quote(arg[-1]), quote(arg[0]), what)
  local f = assert(io.popen(command))
  local out = f:read("a")
  assert(f:close(), "bench/route: the fresh " .. what .. " run failed")
  local t = {}
  for v in out:gmatch("%S+") do t[#t + 1] = tonumber(v) end
  return table.unpack(t)
end

-- With and without the budget, interleaved, the best of three each: the
-- two differ by less than the machine's noise, which is the point.
local base, unbudgeted = 0, 0
for _ = 1, 3 do
  base = math.max(base, messages(0))
  unbudgeted = math.max(unbudgeted, messages(0, 0))
end
local crowd = messages(100000)
print(("messages-per-second: %.0f"):format(base))
print(("messages-per-second-with-100k-endpoints: %.0f"):format(crowd))
print(("route-scaling-ratio: %.3f  (target <= 1.5)"):format(base / crowd))
print(("messages-per-second-without-budget: %.0f"):format(unbudgeted))
print(("budget-cost-ratio: %.3f  (without / with the activation budget; 1.0: free)"):format(unbudgeted / base))
local per, per_rss, rate, created = fresh("processes")
print(("idle-bytes-per-process: %.0f  (heap in use; target <= 1024)"):format(per))
print(("idle-rss-bytes-per-process: %.0f  (resident, allocator slack included)"):format(per_rss))
print(("spawns-per-second: %.0f  (spawned and booted, each adding its endpoint; target >= 300000)"):format(rate))
print(("spawn-actions-per-second: %.0f  (processes created, before their boot runs)"):format(created))
local wper, wper_rss = fresh("waiting")
print(("waiting-bytes-per-process: %.0f  (heap in use; straight-line, suspended in market.yield(); target <= 2048)"):format(wper))
print(("waiting-rss-bytes-per-process: %.0f  (resident, allocator slack included)"):format(wper_rss))
local tper, tper_rss = fresh("waiting-timed")
print(("waiting-timed-bytes-per-process: %.0f  (heap in use; the same in market.yield(ms), with a timeout; target <= 2048)"):format(tper))
print(("waiting-timed-rss-bytes-per-process: %.0f  (resident, allocator slack included)"):format(tper_rss))
-- The waves in a fresh interpreter, as the memory figures: in this one
-- the garbage of the message runs above is still being collected, and
-- lua5.4's incremental collector makes the spawns pay for it (a third of
-- their rate, bench/route.lua in docs/performance.md).  The same waves
-- here are printed after, for what a program's own garbage costs them.
-- And the same under the `market` interpreter (bench/meson.build gives
-- its path as MARKET), whose Lua state collects as lua/host.c sets it.
-- One fresh run of each is not enough on a shared host: the same binary
-- gave 224,534 and then 312,882 a second, back to back, and the two
-- interpreters, which callgrind counts doing the same work, differed by
-- a quarter in single runs (docs/performance.md, "Round 19").  So each
-- is run three times, the two interleaved, and the line is the median of
-- the three runs' medians (each run's own figure beside it) and the
-- slowest wave of all.
local interpreter = os.getenv("MARKET")
-- The middle value of an odd number of figures (t is sorted in place).
local function middle(t)
  table.sort(t)
  return t[(#t + 1) // 2]
end
local function sustained(runs)
  local medians, shown, slowest = {}, {}, math.huge
  for i, r in ipairs(runs) do
    medians[i] = r[1]
    shown[i] = ("%.0f"):format(r[1])
    slowest = math.min(slowest, r[2])
  end
  return middle(medians), slowest, table.concat(shown, " ")
end
local lua_runs, market_runs = {}, {}
for i = 1, 3 do
  lua_runs[i] = { fresh("waves") }
  if interpreter then market_runs[i] = { fresh("--hosted-waves", interpreter) } end
end
local median, slowest, runs = sustained(lua_runs)
print(("spawns-per-second-sustained: %.0f  (ten waves of 100,000 spawns then kills in one VM, in each of three fresh interpreters: the median of their median waves (%s); slowest wave %.0f; target >= 300000)"):format(median, runs, slowest))
local amedian, aslowest = waves(100000, 10)
print(("spawns-per-second-sustained-after-messages: %.0f  (the same waves in this interpreter, after the message runs; slowest %.0f)"):format(amedian, aslowest))
if interpreter then
  local hmedian, hslowest, hruns = sustained(market_runs)
  print(("spawns-per-second-sustained-market: %.0f  (the same waves under the market interpreter, the script its boot process, three runs interleaved with those above (%s); slowest %.0f)"):format(hmedian, hruns, hslowest))
end
-- Each the median of five runs, each in a fresh VM (a run takes a
-- fraction of a second).
local function median5(f)
  local a, b = {}, {}
  for i = 1, 5 do a[i], b[i] = f() end
  return middle(a), middle(b)
end
local appear, leave = median5(function() return presence(10000) end)
local killed = median5(function() return absence(10000) end)
print(("presence-us-per-event: %.3f  (10k subscribers, one publisher appears; target <= 1)"):format(appear))
print(("absence-us-per-event: %.3f  (10k processes killed, one observer; target <= 1)"):format(killed))
print(("publisher-absence-us-per-event: %.3f  (10k subscribers, their one publisher is killed; target <= 1)"):format(leave))

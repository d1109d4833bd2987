-- bench/route.lua: routing and process figures (issue: core runtime).
--
--   ninja -C build bench-route
--   (or: LUA_CPATH='build/lua/?.so' lua5.4 bench/route.lua [N]: it runs its own
--   ground VMs, so not under the market interpreter, which already has one)
--
-- Prints Lua-to-Lua messages per second in one VM (one publisher, one
-- subscriber, a 3-field record topic), the same with 100,000 extra
-- subscriber endpoints on non-matching topics, their ratio
-- (route-scaling-ratio), the same with the activation budget off (what the
-- budget costs: budget-cost-ratio, docs/limits.md), idle memory per process
-- for 100,000 Lua processes with one endpoint each, the spawn rate, and the
-- spawn rate sustained over ten waves of spawns and kills in one VM.
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

local function processes(n)
  local per, per_rss, rate, created
  market.ground_vm(function()
    collectgarbage()
    collectgarbage()
    local before, before_heap = rss_kib(), market.memory()
    local t0 = wall()
    local boot = function(pid)
      return market.transition(nil, market.subscriber(other(pid, _, _), { name = "in",
        on_message = function() end }))
    end
    local spawn = market.spawn(boot)
    for _ = 1, n do market.perform(spawn) end
    local tspawned = wall()   -- n processes exist, none has booted yet
    market.pause()            -- every process has booted and added its endpoint
    local t1 = wall()
    created = n / (tspawned - t0)
    collectgarbage()
    collectgarbage()
    per = (market.memory() - before_heap) / n
    per_rss = (rss_kib() - before) * 1024 / n
    rate = n / (t1 - t0)
  end, { max_activation = 0 })     -- as in waves()
  assert(rate, "the spawn run did not finish")
  return per, per_rss, rate, created
end

-- Sustained spawning: `waves` waves in one long-lived VM, each spawning n
-- processes (booted, each adding its endpoint) then killing them all.
-- Returns the median and the slowest wave's spawn rate: a VM that keeps
-- spawning pays for collecting the waves before (issue 10).
local function waves(n, count)
  local rates = {}
  local ok, err = market.ground_vm(function()
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
  -- 100,000 spawns from one activation may take more than the default
  -- budget of CPU on a slow machine: this measures spawning, not budgets.
  end, { max_activation = 0 })
  assert(ok, err)
  table.sort(rates)
  return (rates[count // 2] + rates[count // 2 + 1]) / 2, rates[1]
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
local per, per_rss, rate, created = processes(100000)
print(("idle-bytes-per-process: %.0f  (heap in use; target <= 1024)"):format(per))
print(("idle-rss-bytes-per-process: %.0f  (resident, allocator slack included)"):format(per_rss))
print(("spawns-per-second: %.0f  (spawned and booted, each adding its endpoint; target >= 300000)"):format(rate))
print(("spawn-actions-per-second: %.0f  (processes created, before their boot runs)"):format(created))
local median, slowest = waves(100000, 10)
print(("spawns-per-second-sustained: %.0f  (median of ten waves of 100,000 spawns then kills in one VM; slowest %.0f; target >= 300000)"):format(median, slowest))

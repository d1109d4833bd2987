-- bench/cluster_node.lua ROLE N SIZE [PINGS]: one node of bench/cluster.sh,
-- run as `market --cluster URL --node ROLE bench/cluster_node.lua ROLE N SIZE`.
--   recv  counts N messages cluster.topic({"b", i, payload}) and prints
--         messages-per-second, first arrival to last, and the node's CPU
--         time per message over that window; answers every
--         cluster.topic({"ping", i}) with cluster.topic({"pong", i}).
--   send  once recv's three subscribers are present, sends the N messages (a
--         pause every 256, so that the driver forwards as they go), then
--         PINGS (default N / 10, at least 100) pings one at a time, and
--         prints its CPU time per message from its first send to the
--         first pong (which waits behind the stream) and the round trip
--         halved (one way) at p50 and p99, in microseconds.
-- Each prints its lines and exits 0; market.now() is the loop's clock,
-- read when an event arrives; os.clock() is the process's CPU time, every
-- thread's (libnats's too).
local market = require "market"
local cluster = require "market.cluster"
local _, T = market._, cluster.topic
local role, N, SIZE = ..., math.tointeger(tonumber((select(2, ...)))), math.tointeger(tonumber((select(3, ...))))
local PINGS = math.tointeger(tonumber((select(4, ...)))) or math.max(N // 10, 100)
io.stdout:setvbuf("line")

if role == "recv" then
  local n, t0, c0 = 0, nil, nil
  market.perform(
    market.subscriber(T({ "b", _, _ }), { on_message = function()
      n = n + 1
      if n == 1 then t0, c0 = market.now(), os.clock() end
      if n == N then
        local ms, cpu = market.now() - t0, os.clock() - c0
        print(("messages-per-second: %.0f  (%d messages of %d bytes, node to node)"):format(N / ms * 1000, N, SIZE))
        print(("cpu-us-per-message: %.2f  (the receiving node, all threads)"):format(cpu * 1e6 / N))
      end
    end }),
    market.subscriber(T({ "ping", _ }), { on_message = function(_, m)
      return market.transition_no_state(market.send(T({ "pong", m.topic[2] })))
    end }),
    market.subscriber(T({ "done" }), { on_message = function()
      return market.transition_no_state(market.exit(0))
    end }))
  return
end

local payload = ("x"):rep(SIZE)
-- recv's roles may arrive one by one (docs/cluster.md, "What differs from
-- one VM"): a message sent before its subscriber is known here is not
-- sent at all, so the sending waits for all three.
local seen, started = {}, false
local function ready(what) return { on_presence = function()
  seen[what] = true
  if started or not (seen.b and seen.ping and seen.done) then return end
  started = true
  market.perform(market.spawn(function()
    local c0 = os.clock()
    for i = 1, N do
      market.perform(market.send(T({ "b", i, payload })))
      if i % 256 == 0 then market.pause() end
    end
    -- Pings: one in flight; the first ones wait for the stream to drain.
    market.perform(market.subscriber(T({ "pong", _ }), "pong"))
    local pings, rtt = PINGS, {}
    for i = 1, pings do
      local t0 = market.now()
      market.perform(market.send(T({ "ping", i })))
      repeat
        local ev = market.yield()
      until ev.type == "message" and ev.message.topic[2] == i
      rtt[#rtt + 1] = market.now() - t0
      if i == 1 then
        print(("sender-cpu-us-per-message: %.2f  (the sending node, all threads)"):format((os.clock() - c0) * 1e6 / N))
      end
    end
    -- The first tenth waited behind the stream: not counted.
    local kept = {}
    for i = pings // 10 + 1, pings do kept[#kept + 1] = rtt[i] end
    table.sort(kept)
    local function pct(p) return kept[math.max(1, math.ceil(#kept * p))] * 1000 / 2 end
    print(("latency-us-p50: %.1f"):format(pct(0.5)))
    print(("latency-us-p99: %.1f  (one way: the round trip halved, one message in flight, %d samples)"):format(pct(0.99), #kept))
    market.perform(market.send(T({ "done" })), market.exit(0))
  end, { name = "sender" }))
end } end
market.perform(market.observe_subscribers(T({ "b", _, _ }), ready("b")),
  market.observe_subscribers(T({ "ping", _ }), ready("ping")),
  market.observe_subscribers(T({ "done" }), ready("done")))

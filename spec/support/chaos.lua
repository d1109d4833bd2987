-- spec/support/chaos.lua SEED MS: a storm for chaos_spec.lua (run by the
-- market interpreter, drivers on).  For MS milliseconds it starts bursts
-- of tcp clients against its own echo server on loopback, and nested VMs
-- with an event relay, their own udp and timer drivers and udp sends; at
-- random the clients and sessions fail, quit, withdraw their output, get
-- killed, and send the wildcard as a message.  Then one well-behaved
-- client must still get its echo: the drivers and the VM came through.
-- Failures it causes itself say "client chaos" or "server chaos".
local market = require "market"
local tcp = require "market.tcp"
local udp = require "market.udp"
local timer = require "market.timer"
local relay = require "market.event_relay"
local _ = market._
local T = market.transition_no_state
math.randomseed(tonumber(arg[1]) or 1)
local rnd = math.random
local lis = tcp.listener(tcp.address("127.0.0.1", 0))
local port
-- Sessions misbehave while the storm lasts, not for the last client.
local storming = true
-- echo server
market.perform(market.observe_publishers(tcp.channel(_, lis, _), { on_presence = function(_s, role)
  local remote = role.topic.source
  return T(market.spawn(function()
    return market.transition(nil, market.subscriber(tcp.channel(remote, lis, _), { on_message = function(_s2, m)
      if not tcp.channel:is(m) then return end
      if m.subpacket == market.EOF or storming and rnd() < 0.05 then return T(market.quit()) end
      if storming and rnd() < 0.02 then error("server chaos") end
      return T(market.send(tcp.channel(lis, remote, m.subpacket)))
    end }), market.publisher(tcp.channel(lis, remote, _)))
  end))
end }), market.subscriber(tcp.listening(lis.port, _), { on_presence = function(_s, r) port = r.topic.bound_port end }))
market.pause()
while not port do market.yield(10) end
-- This process's open descriptors, and the ground VM's processes.
local function fds()
  local n = 0
  for _ in io.popen("ls /proc/" .. io.open("/proc/self/stat"):read("n") .. "/fd"):lines() do n = n + 1 end
  return n
end
local function procs() return #market.snapshot().vm.processes end
local fds0, procs0 = fds(), procs()
local n = 0
local function client(i)
  local h = tcp.handle("c" .. i .. "-" .. rnd(1e9))
  local a = tcp.address("127.0.0.1", port)
  return market.spawn(function()
    market.perform(market.subscriber(tcp.channel(a, h, _), { name = "in" }),
      market.publisher(tcp.channel(h, a, _), { name = "out" }))
    for k = 1, rnd(1, 20) do
      local ev = market.yield(rnd(0, 30))
      if rnd() < 0.5 then market.perform(market.send(tcp.channel(h, a, string.rep("x", rnd(1, 5000))))) end
      if rnd() < 0.03 then market.perform(market.send(_)) end
      if rnd() < 0.03 then error("client chaos") end
      if rnd() < 0.05 then market.perform(market.delete_endpoint("out")) end
    end
    market.perform(market.quit())       -- (holding its endpoints it would live on)
  end)
end
local function nested(i)
  return market.nested_vm(function()
    market.perform(relay.event_relay("nest" .. i))
    local u = udp.listener(0)
    market.perform(market.spawn(udp.driver), market.spawn(timer.driver))
    market.pause()                      -- the drivers' endpoints, before they are needed
    market.perform(market.subscriber(udp.packet(_, u, _)))
    for k = 1, rnd(1, 10) do
      market.perform(market.send(udp.packet(u, udp.remote_address("127.0.0.1", rnd(20000, 20010)), "hi")))
      timer.sleep(rnd(0, 20))
      if rnd() < 0.1 then market.perform(market.send(_)) end
    end
    market.perform(market.at_meta_level(market.quit()))   -- the VM, drivers and all
  end)
end
local deadline = market.now() + tonumber(arg[2] or 10000)
while market.now() < deadline do
  n = n + 1
  local acts = {}
  for k = 1, rnd(1, 5) do acts[#acts + 1] = client(n * 10 + k) end
  if rnd() < 0.3 then acts[#acts + 1] = nested(n) end
  local pids = { market.perform(table.unpack(acts)) }
  if rnd() < 0.3 then market.perform(market.quit(pids[rnd(#pids)], "killed")) end
  timer.sleep(rnd(0, 20))
end
-- The storm is over: one more client, well behaved, must be echoed.  Its
-- session would quit at its "ping" one time in twenty, or fail one in
-- fifty, if the sessions still misbehaved: the echo would be "#eof".
storming = false
local h, a = tcp.handle("last"), tcp.address("127.0.0.1", port)
market.perform(market.subscriber(tcp.channel(a, h, _), { name = "last-in" }),
  market.publisher(tcp.channel(h, a, _), { name = "last-out" }))
local got = ""
while true do
  local ev = market.yield(5000)
  if not ev then break end
  if ev.endpoint == "last-out" and ev.type == "presence" then
    market.perform(market.send(tcp.channel(h, a, "ping")))
  elseif ev.endpoint == "last-in" and ev.type == "message" and tcp.channel:is(ev.message) then
    got = got .. tostring(ev.message.subpacket)
    if got == "ping" then break end
  end
end
-- What the storm made has gone once its last clients are done (a second
-- at most): nothing is left holding a descriptor or a process.
timer.sleep(1000)
collectgarbage()
print(("rounds %d, last echo %q, %d more descriptors, %d more processes"):format(
  n, got, fds() - fds0, procs() - procs0))
market.perform(market.exit(0))

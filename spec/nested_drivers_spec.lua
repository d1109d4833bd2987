-- nested_drivers_spec.lua: the drivers unchanged inside nested VMs, one
-- and two levels down, each VM with its own event relay (DESIGN §3: "the
-- test of whether the layering is real"), serving real sockets.
package.path = "spec/support/?.lua;" .. package.path
local market = require "market"
local udp = require "market.udp"
local tcp = require "market.tcp"
local timer = require "market.timer"
local relay = require "market.event_relay"
local N = require "net"
local ANY = market._
local send, T = market.send, market.transition_no_state

-- boot wrapped in `depth` nested VMs, each running its own event relay.
local function nest(depth, boot)
  for level = depth, 1, -1 do
    local below = boot
    local inside = function()
      market.perform(relay.event_relay("level " .. level))
      return below()
    end
    boot = function() market.perform(market.nested_vm(inside, "vm" .. level)) end
  end
  return boot
end

describe("examples/nested.lua (echo.lua inside nested VMs)", function()
  for depth = 1, 2 do
    it(("echoes over real TCP %d level%s down"):format(depth, depth > 1 and "s" or ""), function()
      local server, port = N.start_server("examples/nested.lua", depth)
      local ok, err = pcall(function()
        local out, status = N.capture(("printf 'one\\ntwo\\n' | nc -N 127.0.0.1 %d"):format(port), 5)
        assert.equal(0, status)
        assert.equal("one\ntwo\n", out)
        assert.equal(0, server.stop("TERM"))
      end)
      server.kill()
      assert(ok, err)
    end)
  end
end)

describe("the udp and timer drivers two levels down", function()
  it("answer a datagram from the ground after a timer fires below", function()
    local port = N.free_port("udp")
    local reply
    N.run(function()
      local inner = function()
        local here = udp.listener(port)
        market.perform(market.spawn(udp.driver, "udp-driver"),
                       market.spawn(timer.driver, "timer-driver"))
        market.pause()
        market.perform(market.spawn(function()
          return market.transition(nil,
            -- Each datagram: wait 10 ms on the (relayed) timer, then answer.
            market.subscriber(udp.packet(ANY, here, ANY), { on_message = function(_, m)
              return T(send(timer.set({ "reply", m.source, m.body }, 10, "relative")))
            end }),
            market.subscriber(timer.expired({ "reply", ANY, ANY }, ANY), { on_message = function(_, m)
              local to, body = m.label[2], m.label[3]
              return T(send(udp.packet(here, to, "below:" .. body)),
                       market.quit())
            end }),
            -- Tell the ground we are bound (two levels up).
            market.subscriber(udp.bound(here, ANY), { on_presence = function()
              return T(market.at_meta_level(market.at_meta_level(send({ "bound-below" }))))
            end }))
        end, "udp server"))
      end
      market.perform(market.subscriber({ "bound-below" }, "bound?"))
      market.perform(market.spawn(nest(2, inner), "outer"))
      market.wait_for(function(e) return e.endpoint == "bound?" end)
      local me = udp.handle("ground-client")
      market.perform(market.subscriber(udp.packet(ANY, me, ANY), "rx"),
                     market.subscriber(udp.bound(me, ANY), "me-bound"))
      market.wait_for(function(e) return e.endpoint == "me-bound" end)
      market.perform(send(udp.packet(me, udp.remote_address("127.0.0.1", port), "ping")))
      local got = market.wait_for(function(e) return e.type == "message" and e.endpoint == "rx" end)
      reply = got.message.body
    end)
    assert.equal("below:ping", reply)
  end)
end)

describe("the udp driver in a nested VM whose relay goes", function()
  it("ends the socket with the reason, not a socket that hears nothing", function()
    -- The socket's readable watch is the relay's: when it goes, the
    -- socket can receive no more, and its subscribers are told so.
    local events = {}
    N.run(function()
      market.perform(market.subscriber({ "udp-below", ANY }, {
        name = "below", on_message = function(_, m) events[#events + 1] = m[2] end }))
      local vm = market.perform(market.nested_vm(function()
        local r = market.perform(relay.event_relay("below"))
        market.perform(market.spawn(udp.driver, "udp-driver"))
        market.pause()
        local me = udp.handle("below")
        local function up(what) return T(market.at_meta_level(send({ "udp-below", what }))) end
        market.perform(market.subscriber(udp.packet(ANY, me, ANY), {
          name = "rx",
          on_presence = function() return up("bound") end,
          on_absence = function(_, _, reason) return up("gone: " .. tostring(reason)) end }))
        -- The socket watches its descriptor through the relay: wait until
        -- the relay publishes that watch here.
        market.perform(market.observe_publishers(market.ground.readable(ANY), "watched"))
        market.wait_for(function(e) return e.endpoint == "watched" end)
        market.perform(market.quit(r, "relay gone"))
        market.perform(market.subscriber("stay", {}))
      end, "vm"))
      for _ = 1, 50 do
        if #events >= 2 then break end
        market.perform(market.subscriber(market.ground.alarm(math.floor(market.now()) + 10), "tick"))
        market.wait_for(function(e) return e.endpoint == "tick" and e.type == "message" end)
        market.perform(market.delete_endpoint("tick"))
      end
      market.perform(market.quit(vm))
    end)
    assert.same({ "bound", "gone: relay gone" }, events)
  end)
end)

describe("the event relay, when a watched descriptor closes below", function()
  it("withdraws its stand-in of the ground's watch, as the ground withdrew", function()
    -- The ground's absence for the closed descriptor was queued for the
    -- relay's meta-level subscription when the relay deleted it (its last
    -- subscriber gone): dropped with it, and the relay went on publishing
    -- readable(fd) below for good, where later subscribers took it for a
    -- watch and never heard that there was none.
    local said
    N.run(function()
      market.perform(market.subscriber({ "said", ANY }, {
        name = "said", on_message = function(_, m) said = m[2] end }))
      local vm = market.perform(market.nested_vm(function()
        market.perform(relay.event_relay("below"), market.spawn(udp.driver, "udp-driver"),
                       market.observe_publishers(market.ground.readable(ANY), "watched"))
        market.pause()
        local function next_watch()
          local ev = market.wait_for(function(e) return e.endpoint == "watched" end, 2000)
          return ev and ev.type or "nothing"
        end
        local s = assert(udp.open())
        local first = next_watch()
        s:close()
        market.perform(market.at_meta_level(send({ "said", first .. " " .. next_watch() })))
        market.perform(market.subscriber("stay", {}))
      end, "vm"))
      N.wait_until(function() return said end)
      market.perform(market.quit(vm))
    end)
    assert.equal("presence absence", said)
  end)
end)

-- With the collector stopped (no collection may close a socket for it):
-- vm("first") is run until it has said two things, killed, and vm("second")
-- started in its place is run until it has said one.  They say them as
-- {key, text}; the texts, in the order they came.
local function killed_then_again(key, vm)
  local seen = {}
  N.no_collections(finally)
  N.run(function()
    market.perform(market.subscriber({ key, ANY }, "st"))
    local function next_state()
      return market.wait_for(function(e) return e.endpoint == "st" and e.type == "message" end).message[2]
    end
    local first = market.perform(vm("first"))
    seen[#seen + 1] = next_state()
    seen[#seen + 1] = next_state()
    market.perform(market.quit(first, "killed"))
    local second = market.perform(vm("second"))
    seen[#seen + 1] = next_state()
    market.pause()
    market.perform(market.quit(second))
  end)
  return seen
end

describe("a nested VM with the udp driver, killed", function()
  it("frees its port at once: the socket goes with the relay's watch, not at a collection", function()
    -- A killed process runs no more handlers, so only its socket's
    -- collection would close it; the relay goes before the socket (it is
    -- older), and with it the socket's watch, whose absence closes it.
    local port = N.free_port("udp")
    local function vm(tag)
      return market.nested_vm(function()
        market.perform(relay.event_relay(tag), market.spawn(udp.driver, "udp-driver"))
        market.pause()
        market.perform(market.spawn(function()
          local function up(what) return T(market.at_meta_level(send({ "udp-vm", tag .. " " .. what }))) end
          return market.transition(nil,
            market.subscriber(udp.packet(ANY, udp.listener(port), ANY), {
              on_absence = function(_, _, reason) return up(tostring(reason)) end }),
            market.subscriber(udp.bound(udp.listener(port), ANY), {
              on_presence = function() return up("bound") end }),
            -- The socket's readable watch, once the relay has made it.
            market.observe_publishers(market.ground.readable(ANY), {
              on_presence = function() return up("watched") end }))
        end, "user"))
      end, tag)
    end
    local seen = killed_then_again("udp-vm", vm)
    assert.same({ "first bound", "first watched", "second bound" }, seen)
  end)
end)

describe("a nested VM with the tcp driver, killed", function()
  it("frees its listening port at once: the socket goes with the relay's watch", function()
    -- As for udp (above): a killed listener runs no more handlers, and
    -- its socket stayed open until a collection, the port taken (a VM
    -- started again in its place could not listen: address already in use).
    local port = N.free_port("tcp")
    local function vm(tag)
      return market.nested_vm(function()
        market.perform(relay.event_relay(tag), market.spawn(tcp.driver, "tcp-driver"))
        market.pause()
        market.perform(market.spawn(function()
          local function up(what) return T(market.at_meta_level(send({ "tcp-vm", tag .. " " .. what }))) end
          return market.transition(nil,
            market.observe_publishers(tcp.channel(ANY, tcp.listener(port), ANY)),
            market.subscriber(tcp.listening(port, ANY), {
              on_presence = function(_, role)
                if role.topic.bound_port then return up("listening") end
              end,
              on_absence = function(_, _, reason) return up(tostring(reason)) end }),
            market.observe_publishers(market.ground.readable(ANY), {
              on_presence = function() return up("watched") end }))
        end, "user"))
      end, tag)
    end
    local seen = killed_then_again("tcp-vm", vm)
    table.sort(seen, function(a, b) return a < b end)
    assert.same({ "first listening", "first watched", "second listening" }, seen)
  end)
end)

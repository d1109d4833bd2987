-- spec/support/whoami.lua: a TCP server for workers_spec.  It answers each
-- connection with one line, "worker I/N pid P", and closes it; it says
-- "whoami: worker I/N pid P listening on port PORT" on stderr once it
-- listens.
--
--   market [--workers N] spec/support/whoami.lua PORT
local market = require "market"
local tcp = require "market.tcp"
local _, EOF, send = market._, market.EOF, market.send
local T = market.transition_no_state

local port = math.tointeger(tonumber((...)))
local f = assert(io.open("/proc/self/stat"))
local pid = f:read("n")
f:close()
local me = ("worker %d/%d pid %d"):format(market.worker.index, market.worker.count, pid)
local here = tcp.listener(port)

local function session(remote)
  return market.transition(nil,
    market.subscriber(tcp.channel(remote, here, _), "in"),
    market.publisher(tcp.channel(here, remote, _), {
      name = "out",
      on_presence = function()
        return T(send(tcp.channel(here, remote, me .. "\n")), send(tcp.channel(here, remote, EOF)),
                 market.quit())
      end }))
end

return market.transition(nil,
  market.observe_publishers(tcp.channel(_, here, _), {
    name = "accept",
    on_presence = function(_, role)
      local remote = role.topic.source
      return T(market.spawn(function() return session(remote) end))
    end }),
  market.subscriber(tcp.listening(port, _), {
    name = "listening",
    on_presence = function(_, role)
      io.stderr:write(("whoami: %s listening on port %d\n"):format(me, role.topic.bound_port))
    end,
    on_absence = function(_, _, reason)
      if reason then error("whoami: " .. tostring(reason), 0) end
    end }))

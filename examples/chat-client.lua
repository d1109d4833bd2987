-- examples/chat-client.lua: a line client for examples/chat.lua (or any
-- TCP server): relays standard input to the server and prints what arrives.
--
--   build/market examples/chat-client.lua HOST PORT
--
-- Standard input is read through the ground event market.ground.readable(0)
-- (never a blocking read), and only once the driver's manager for the
-- connection is present, so no line is sent into the void.  At the end of
-- input the client half-closes and waits for the server to finish.  A
-- failed connection ends the program with status 1 and the reason.
local market = require "market"
local tcp = require "market.tcp"
local sys = require "market.sys"      -- internal: a non-blocking read of fd 0
local _ = market._
local T, send, quit = market.transition_no_state, market.send, market.quit

local host, port = ...
port = math.tointeger(tonumber(port))
if not host or not port then
  io.stderr:write("usage: market examples/chat-client.lua HOST PORT\n")
  market.perform(market.exit(2))      -- a usage error: no crash report
end

local server, me = tcp.address(host, port), tcp.handle("chat-client")

local function read_stdin()
  local data, err = sys.fd_read(0, 4096)
  if data then return T(send(tcp.channel(me, server, data))) end
  if data == false then return end                  -- nothing after all
  if err ~= "eof" then io.stderr:write("chat-client: standard input: ", err, "\n") end
  return T(market.delete_endpoint("stdin"), send(tcp.channel(me, server, market.EOF)))
end

return market.transition(nil,
  market.subscriber(tcp.channel(server, me, _), {
    name = "in",
    on_message = function(_, m)
      if m.subpacket == market.EOF then return T(quit()) end
      io.stdout:write(m.subpacket)
      io.stdout:flush()
    end,
    on_absence = function(_, _, reason)
      -- A connection that failed (refused, an unknown host) is no crash:
      -- the reason, and status 1.
      if reason then
        io.stderr:write("chat-client: ", tostring(reason), "\n")
        return T(market.exit(1))
      end
      return T(quit())
    end,
  }),
  market.publisher(tcp.channel(me, server, _), {
    name = "out",
    on_presence = function()
      return T(market.subscriber(market.ground.readable(0), { name = "stdin", on_message = read_stdin }))
    end,
  }),
  -- Ctrl-C: nothing to drain for an interactive client.
  market.subscriber(market.ground.stopping(_), {
    name = "stopping",
    on_presence = function() return T(quit()) end,
  }))

-- examples/cqueues.lua: a cqueues controller running inside market.
--
--   build/market examples/cqueues.lua [text]
--
-- A market TCP server on a port the kernel picks answers each line in
-- upper case; a cqueues coroutine, in the same program and thread,
-- connects to it with cqueues.socket, writes the text, prints the answer
-- and closes.  The controller is driven by one market process,
-- run_cqueues below (docs/loops.md): it watches the controller's
-- descriptor with market.ground.readable and its timeout with
-- market.ground.monotonic_alarm, and steps it without waiting when either fires.
-- When the controller has no coroutine left, the process quits; then the
-- server goes too, and the program ends.  Needs lua-cqueues.
local market = require "market"
local tcp = require "market.tcp"
local cqueues = require "cqueues"
local socket = require "cqueues.socket"
local _, EOF = market._, market.EOF

local text = ... or "hello from cqueues"

-- The recipe: a process that runs the controller cq until it is empty.
-- A coroutine that raises makes cq:step fail: so does the process, with
-- that error as its reason.
local function run_cqueues(cq)
  local turn
  -- The controller's next deadline as a ground alarm; nil when it has none.
  local function alarm()
    local t = cq:timeout()              -- seconds, or nil
    if t == nil then return nil end
    return market.subscriber(market.ground.monotonic_alarm(math.ceil(market.monotonic() + t * 1000)),
                             { name = "cq-alarm", on_message = function() return turn() end })
  end
  turn = function()
    local ok, err = cq:step(0)
    if not ok then error("cqueues: " .. tostring(err), 0) end
    if cq:empty() then return market.transition_no_state(market.quit()) end
    -- The deadline may have moved: arm the alarm again.
    return market.transition_no_state(market.delete_endpoint("cq-alarm"), alarm())
  end
  return function()
    return market.transition(nil,
      market.subscriber(market.ground.readable(cq:pollfd()), { name = "cq-fd", on_message = turn }),
      alarm())
  end
end

-- The cqueues side: a client of the server below.
local function client(port)
  return function()
    local s = assert(socket.connect("127.0.0.1", port))
    assert(s:write(text, "\n"))
    local line = assert(s:read("*l"))
    print("cqueues got: " .. line)
    s:close()
  end
end

-- The market side: an upper-casing line server, one session per
-- connection, which goes at the client's end of stream.
local here = tcp.listener(0)

local function session(remote)
  return market.transition(nil,
    market.subscriber(tcp.channel(remote, here, _), {
      on_message = function(_, m)
        if m.subpacket == EOF then return market.transition_no_state(market.quit()) end
        return market.transition_no_state(
          market.send(tcp.channel(here, remote, m.subpacket:upper() .. "\n")))
      end,
      on_absence = function() return market.transition_no_state(market.quit()) end }),
    market.publisher(tcp.channel(here, remote, _)))
end

-- Once listening, start the controller with the client in it; when the
-- controller's process is gone, stop listening (quit), and the program ends.
return market.transition(nil,
  tcp.options(here, { framing = "line" }),
  market.observe_publishers(tcp.channel(_, here, _), { on_presence = function(_, role)
    local remote = role.topic.source
    return market.transition_no_state(market.spawn(function() return session(remote) end))
  end }),
  market.subscriber(tcp.listening(0, _), {
    on_presence = function(_, role)
      local port = role.topic.bound_port
      if math.type(port) ~= "integer" then return end
      local cq = cqueues.new()
      cq:wrap(client(port))
      local run = run_cqueues(cq)
      return market.transition_no_state(market.spawn(function()
        market.perform(market.publisher({ "cqueues", "running" }))
        return run()
      end, { name = "cqueues" }), market.subscriber({ "cqueues", "running" }, {
        on_absence = function(_, _, reason)
          if reason then error("cqueues example: " .. tostring(reason), 0) end
          return market.transition_no_state(market.quit())
        end }))
    end,
    on_absence = function(_, _, reason)
      if reason then error("cqueues example: " .. tostring(reason), 0) end
    end }))

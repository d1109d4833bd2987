-- examples/wschat.lua: a chat room for browsers.  http.serve gives the
-- page at / and takes each browser's WebSocket at /ws; the room is a
-- market conversation, as in chat.lua: each socket's process publishes
-- what its browser says and subscribes to what everybody says, and the
-- presence and absence of the others' publishers are the "joined" and
-- "left" lines.
--
--   build/market examples/wschat.lua [port]     (default 8080; 0: any)
--
-- then open http://127.0.0.1:8080/ in two browsers.
local market = require "market"
local http = require "market.http"
local _ = market._

local port = math.tointeger(tonumber((...) or 8080))
if not port then
  io.stderr:write("usage: market examples/wschat.lua [port]\n")
  market.perform(market.exit(2))
end

local said = market.record("wschat-said", "who", "text")

local PAGE = [[<!doctype html>
<meta charset="utf-8">
<title>market chat</title>
<style>body { font: 15px sans-serif; margin: 2em } #log { white-space: pre-wrap }</style>
<div id="log"></div>
<form id="say"><input id="text" size="60" autofocus> <button>say</button></form>
<script>
const log = document.getElementById("log");
const line = (s) => { log.textContent += s + "\n"; };
const ws = new WebSocket(`ws://${location.host}/ws`);
ws.onmessage = (e) => line(e.data);
ws.onclose = (e) => line(`(disconnected: ${e.code})`);
document.getElementById("say").onsubmit = (e) => {
  e.preventDefault();
  const t = document.getElementById("text");
  if (t.value !== "") ws.send(t.value);
  t.value = "";
};
</script>
]]

local guests = 0

-- The room's lines a guest may be behind by.  They wait in its outbox
-- while its socket's send waits for the browser to read: one that never
-- reads, while the others talk, is dropped past this many (as chat.lua
-- drops a user who does not read), or it would make the server grow
-- without bound.
local MAX_BEHIND = 1000

-- One browser's socket, in its connection's process: the room's lines
-- (handlers, below) go to an outbox that the loop sends; what the browser
-- says goes to the room.
local function guest(ws)
  guests = guests + 1
  local me, outbox = "guest" .. guests, {}
  local function tell(text)
    if #outbox >= MAX_BEHIND then
      return market.transition_no_state(market.quit(nil, "too far behind: not reading"))
    end
    outbox[#outbox + 1] = text
  end
  market.perform(
    market.publisher(said(me, _)),
    market.subscriber(said(_, _), { on_message = function(_, m) return tell(m.who .. ": " .. m.text) end }),
    market.observe_publishers(said(_, _), {          -- the others (we see ourselves too)
      -- An observer gets the lines said too (the subscriber above takes
      -- them): refused, or they would be kept for a market.yield() this
      -- process never calls, every line for as long as the guest stays.
      on_message = false,
      on_presence = function(_, role)
        if role.topic.who ~= me then return tell(role.topic.who .. " joined") end
      end,
      on_absence = function(_, role)
        if role.topic.who ~= me then return tell(role.topic.who .. " left") end
      end }))
  tell("you are " .. me)
  while true do
    market.wait_until(function() return #outbox > 0 or ws.arrived() end)
    for i = 1, #outbox do
      if not ws:send(outbox[i]) then return end
    end
    outbox = {}
    if ws.arrived() then
      local data, kind = ws:receive()
      if not data then return end                 -- gone: the others see us leave
      -- The room is text: a binary message (the page sends none) said
      -- to it would be sent on as text, which must be UTF-8.
      if kind == "text" then
        market.perform(market.send(said(me, data)))
      else
        tell("(only text is said to the room)")
      end
    end
  end
end

local server = assert(http.serve(port, function(req)
  if req.path == "/" then
    return 200, { ["content-type"] = "text/html; charset=utf-8" }, PAGE
  elseif req.path == "/ws" then
    local ws, why = http.websocket(req, { max_message = 4096 })
    if not ws then return 400, nil, why .. "\n" end
    guest(ws)
  else
    return 404, nil, "no such page\n"
  end
end))
io.stderr:write(("wschat: listening on port %d\n"):format(server.port))

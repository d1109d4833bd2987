-- examples/kv.lua: a key-value store over HTTP (docs/http.md).
--
-- The store is one process; each HTTP connection is another, whose
-- handler asks the store by message and waits for its answer, so the
-- requests of every connection meet in one place, one at a time.
--
--   build/market examples/kv.lua [port]                 (default 8080)
--   curl -X PUT --data-binary hello http://127.0.0.1:8080/kv/greeting
--   curl http://127.0.0.1:8080/kv/greeting               -> hello
--   curl -X DELETE http://127.0.0.1:8080/kv/greeting
local market = require "market"
local http = require "market.http"
local _ = market._

local port = math.tointeger(tonumber((...) or 8080))
if not port then
  io.stderr:write("usage: market examples/kv.lua [port]\n")
  market.perform(market.exit(2))
end

-- op is "get", "put" or "delete"; the reply carries the value the key had
-- before (false: none).
local request = market.record("kv-request", "id", "op", "key", "value")
local reply = market.record("kv-reply", "id", "value")

market.perform(market.spawn(function()
  local data = {}
  return market.transition(nil, market.subscriber(request(_, _, _, _), {
    on_message = function(_, m)
      if not request:is(m) then return end          -- send(market._): no request
      local old = data[m.key] or false
      if m.op == "put" then data[m.key] = m.value elseif m.op == "delete" then data[m.key] = nil end
      return market.transition_no_state(market.send(reply(m.id, old)))
    end }))
end, { name = "kv-store" }))

-- Serve once the store listens: a request sent before would reach no one.
market.perform(market.observe_subscribers(request(_, _, _, _), "store"))
market.wait_for(function(e) return e.endpoint == "store" and e.type == "presence" end)

-- Runs in a connection's process: the store's answer to op on key.
local serial = 0
local function call(op, key, value)
  serial = serial + 1
  local id = serial
  market.perform(market.subscriber(reply(id, _), "reply"))
  market.perform(market.send(request(id, op, key, value or false)))
  local ev = market.wait_for(function(e) return e.endpoint == "reply" and e.type == "message" end, 2000)
  market.perform(market.delete_endpoint("reply"))
  return assert(ev, "the store did not answer").message.value
end

local server = assert(http.serve(port, function(req)
  local key = req.path:match("^/kv/([^/]+)$")
  if not key then return 404, nil, "no such page: try /kv/NAME\n" end
  if req.method == "GET" or req.method == "HEAD" then
    local value = call("get", key)
    if not value then return 404, nil, "no key " .. key .. "\n" end
    return 200, { ["content-type"] = "application/octet-stream" }, value
  elseif req.method == "PUT" then
    return call("put", key, req.body) and 200 or 201, nil, nil
  elseif req.method == "DELETE" then
    return call("delete", key) and 204 or 404, nil, nil
  end
  return 405, { allow = "GET, HEAD, PUT, DELETE" }, "method not allowed\n"
end, { max_request = 64 * 1024 }))
io.stderr:write(("kv: listening on port %d\n"):format(server.port))

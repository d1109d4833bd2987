-- wsclient.lua: a WebSocket client (RFC 6455's client side: masked
-- frames) on market.tcp's connections, for the specs of http.websocket.
-- Straight-line code: call it inside N.run.
local tcp = require "market.tcp"
local W = {}

W.KEY = "dGhlIHNhbXBsZSBub25jZQ=="           -- RFC 6455's example key, 1.3

-- A client's frame: masked, fin unless told false.
function W.frame(op, payload, fin, unmasked)
  local n, key = #payload, unmasked and "" or "\55\250\33\61"
  local h = string.char((fin == false and 0 or 0x80) | op)
  local m = unmasked and 0 or 0x80
  if n < 126 then h = h .. string.char(m | n)
  elseif n < 65536 then h = h .. string.char(m | 126) .. string.pack(">I2", n)
  else h = h .. string.char(m | 127) .. string.pack(">I8", n) end
  if unmasked then return h .. payload end
  local out = {}
  for i = 1, n do out[i] = string.char(payload:byte(i) ~ key:byte((i - 1) % 4 + 1)) end
  return h .. key .. table.concat(out)
end

-- A client on port: open(path, headers) sends the handshake and returns
-- the answer's head; send(op, payload, fin, unmasked); next() the
-- server's next frame: op, payload (nil when the connection ended).
function W.client(port, path, headers, early)
  local c = assert(tcp.connect("127.0.0.1", port))
  local buf = ""
  local self = {}
  local function more()
    local d = c:receive(5000)
    if not d then return false end
    buf = buf .. d
    return true
  end
  function self.open()
    c:send(("GET %s HTTP/1.1\r\nHost: x\r\n%s\r\n"):format(path or "/", headers or
      ("Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: %s\r\n" ..
       "Sec-WebSocket-Version: 13\r\n"):format(W.KEY)) .. (early or ""))
    while not buf:find("\r\n\r\n", 1, true) do if not more() then break end end
    local head, rest = buf:match("^(.-\r\n)\r\n(.*)$")
    buf = rest or ""
    return head or buf
  end
  function self.send(...) return c:send(W.frame(...)) end
  function self.raw(bytes) return c:send(bytes) end
  function self.next()
    while true do
      if #buf >= 2 then
        local op, n, at = buf:byte(1) & 15, buf:byte(2) & 127, 3
        if n == 126 and #buf >= 4 then n, at = string.unpack(">I2", buf, 3), 5
        elseif n == 127 and #buf >= 10 then n, at = string.unpack(">I8", buf, 3), 11 end
        if n < 126 or at > 3 then
          if #buf >= at + n - 1 then
            local payload = buf:sub(at, at + n - 1)
            buf = buf:sub(at + n)
            return op, payload
          end
        end
      end
      if not more() then return nil end
    end
  end
  function self.rest()                        -- all that follows the head, to the end
    while more() do end
    return buf
  end
  function self.close() c:close() end
  return self
end

return W

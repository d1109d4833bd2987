-- cdp.lua: a headless chromium for the browser specs, started and
-- stopped, and just enough of its DevTools protocol to read what it
-- shows: a WebSocket client (RFC 6455) on market.sys sockets, to evaluate
-- JavaScript in the page and to take a screenshot.  open and what it
-- returns are straight-line code: call them inside N.run.
local N = require "net"
local J = require "jsonread"
local C = {}

local function read_more(s, buf)
  N.wait_fd(s:fd())
  local data, err = s:read()
  if data then return buf .. data end
  if data == nil then error("devtools connection: " .. tostring(err)) end
  return buf
end

-- GET path from chromium's DevTools HTTP port: the body (as long as its
-- Content-Length says: chromium keeps the connection open).
local function http_get(port, path)
  local s = N.connect(port)
  assert(N.write_all(s, ("GET %s HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n\r\n"):format(path, port)))
  local buf = ""
  while not buf:find("\r\n\r\n", 1, true) do buf = read_more(s, buf) end
  local head, body = buf:match("^(.-)\r\n\r\n(.*)$")
  local len = assert(tonumber(head:lower():match("content%-length:%s*(%d+)")), "no length: " .. head)
  while #body < len do body = read_more(s, body) end
  s:close()
  return body
end

local function jstr(s)
  return '"' .. s:gsub('[%c"\\]', function(c)
    return ({ ['"'] = '\\"', ["\\"] = "\\\\", ["\n"] = "\\n" })[c] or ("\\u%04x"):format(c:byte())
  end) .. '"'
end

C.CHROMIUM = "/usr/bin/chromium"

-- Is chromium installed?  The browser specs skip, saying so, where not.
function C.available()
  local f = io.open(C.CHROMIUM)
  if f then f:close() end
  return f ~= nil
end

-- A headless chromium showing url (its window size, "W,H", if given):
-- the browser (N.start_cmd's), the port of its DevTools and its profile
-- directory, for stop.  Outside the sanitizers' LD_PRELOAD (the ASan
-- pass): chromium is not ours.
function C.start(url, size)
  local f = io.popen("mktemp -d")
  local profile = f:read("l")
  f:close()
  local browser = N.start_cmd(("exec env -u LD_PRELOAD -u ASAN_OPTIONS -u UBSAN_OPTIONS %s " ..
    "--headless --no-sandbox --disable-gpu --no-proxy-server --no-first-run --user-data-dir=%s " ..
    "--remote-debugging-port=0 %s%s"):format(C.CHROMIUM, N.q(profile),
    size and "--window-size=" .. size .. " " or "", url))
  local dport
  for _ = 1, 3000 do
    dport = tonumber(browser.stderr():match("DevTools listening on ws://127%.0%.0%.1:(%d+)/"))
    if dport or browser.exited() then break end
    N.sleep(0.02)
  end
  if not dport then
    local err = browser.stderr()
    C.stop(browser, profile)
    error("chromium did not start: " .. err, 2)
  end
  return browser, dport, profile
end

-- The browser stopped and its profile removed (either may be nil).
function C.stop(browser, profile)
  if browser then browser.stop("TERM"); browser.kill() end
  if profile then os.execute("rm -rf " .. N.q(profile)) end
end

-- open(port): a session with the first page target of the chromium whose
-- DevTools listen on port; :eval(js) -> the value, :screenshot(path).
function C.open(port)
  local target
  for _, t in ipairs(assert(J.decode(http_get(port, "/json/list")))) do
    if t.type == "page" then target = t; break end
  end
  assert(target, "chromium shows no page")
  local path = assert(target.webSocketDebuggerUrl:match("^ws://[^/]+(/.*)$"))
  local s = N.connect(port)
  assert(N.write_all(s, ("GET %s HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nUpgrade: websocket\r\n" ..
    "Connection: Upgrade\r\nSec-WebSocket-Key: bWFya2V0LWluc3BlY3Q=\r\n" ..
    "Sec-WebSocket-Version: 13\r\n\r\n"):format(path, port)))
  local buf = ""
  while not buf:find("\r\n\r\n", 1, true) do buf = read_more(s, buf) end
  assert(buf:match("^HTTP/1.1 101"), "no websocket: " .. buf:sub(1, 80))
  buf = buf:match("\r\n\r\n(.*)$")

  local self, ids = {}, 0
  local function need(n) while #buf < n do buf = read_more(s, buf) end end
  -- One message (text frames; a fragmented one put together).
  local function receive()
    local parts = {}
    while true do
      need(2)
      local b1, b2 = buf:byte(1, 2)
      local len, at = b2 & 0x7f, 3
      if len == 126 then need(4); len = string.unpack(">I2", buf, 3); at = 5
      elseif len == 127 then need(10); len = string.unpack(">I8", buf, 3); at = 11 end
      need(at - 1 + len)
      parts[#parts + 1] = buf:sub(at, at - 1 + len)
      buf = buf:sub(at + len)
      if b1 & 0x80 ~= 0 then return table.concat(parts) end
    end
  end
  -- A client's frames are masked; the mask 0 leaves the payload as it is.
  local function send(text)
    local n, head = #text, nil
    if n < 126 then head = string.pack("BB", 0x81, 0x80 | n)
    elseif n < 65536 then head = string.pack(">BBI2", 0x81, 0x80 | 126, n)
    else head = string.pack(">BBI8", 0x81, 0x80 | 127, n) end
    assert(N.write_all(s, head .. "\0\0\0\0" .. text))
  end
  -- call(method, params_json): the result of that command.
  function self.call(method, params)
    ids = ids + 1
    send(('{"id":%d,"method":"%s","params":%s}'):format(ids, method, params or "{}"))
    while true do
      local m = assert(J.decode(receive()))
      if m.id == ids then
        assert(not m.error, method .. ": " .. tostring(m.error and m.error.message))
        return m.result
      end
    end
  end
  -- eval(js): the value of the expression js in the page (JSON values).
  function self.eval(js)
    local r = self.call("Runtime.evaluate", ('{"expression":%s,"returnByValue":true}'):format(jstr(js)))
    assert(not r.exceptionDetails, "page error: " .. tostring(r.exceptionDetails and r.exceptionDetails.text))
    return r.result.value
  end
  -- screenshot(path): the page as a PNG file.
  function self.screenshot(file)
    local data = self.call("Page.captureScreenshot", '{"format":"png"}').data
    local b64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    local out = {}
    data = data:gsub("[^%w+/]", "")
    for i = 1, #data, 4 do
      local n, k = 0, 0
      for j = i, i + 3 do
        local c = data:sub(j, j)
        n = n * 64 + (c ~= "" and (b64:find(c, 1, true) - 1) or 0)
        if c ~= "" then k = k + 1 end
      end
      local bytes = string.pack(">I3", n)
      out[#out + 1] = bytes:sub(1, k - 1)
    end
    local f = assert(io.open(file, "wb"))
    f:write(table.concat(out))
    f:close()
  end
  function self.close() s:close() end
  return self
end

return C

-- bench/http_servers.lua KIND PORT: the market servers of bench/http.sh,
-- each answering every request with the hello-world response that
-- bench/http_floor.c sends.
--   http     http.serve and a handler: what a program writes
--   objects  tcp.serve, a fixed answer to each chunk read (wrk's requests
--            come one a read): the connection objects under http.serve,
--            without HTTP
local http = require "market.http"
local tcp = require "market.tcp"

local kind, port = ...
port = math.tointeger(tonumber(port))
local RESPONSE = "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 13\r\n\r\nhello, world\n"
local server
if kind == "http" then
  server = assert(http.serve(port, function()
    return 200, { ["Content-Type"] = "text/plain" }, "hello, world\n"
  end))
elseif kind == "objects" then
  server = assert(tcp.serve(port, function(conn)
    while conn:receive() do conn:send(RESPONSE) end
  end))
else
  error("usage: market bench/http_servers.lua http|objects PORT", 0)
end
io.stderr:write(("%s: listening on port %d\n"):format(kind, server.port))

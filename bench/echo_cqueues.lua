-- bench/echo_cqueues.lua: the comparison server for bench/echo: a TCP echo
-- server on cqueues (Debian's lua-cqueues), one coroutine per connection,
-- written as a cqueues user would write it.
--
--   lua5.4 bench/echo_cqueues.lua [port]    (default 0: the kernel picks)
--
-- Prints "echo_cqueues: listening on port N" on stderr once it listens.
-- Each client's coroutine reads whatever has arrived (up to 64 KiB) and
-- writes it back, in binary mode without buffering (so each write goes
-- out at once, as examples/echo.lua's do), with TCP_NODELAY as in the
-- floor and echo.lua.  The bench measures the server, not its robustness:
-- a client that fails ends its own coroutine only.
local cqueues = require "cqueues"
local socket = require "cqueues.socket"

local port = math.tointeger(tonumber(arg[1] or 0))
if not port then error("usage: lua5.4 bench/echo_cqueues.lua [port]", 0) end

local loop = cqueues.new()
local srv = assert(socket.listen { host = "127.0.0.1", port = port, reuseaddr = true })
assert(srv:listen())  -- bind now, so the port can be told before a client comes
local _, _, bound = srv:localname()
io.stderr:write(("echo_cqueues: listening on port %d\n"):format(bound))

-- cqueues raises socket errors by default; a peer that resets its
-- connection is ordinary for a server, so errors come back as values.
local function as_value(_, _, err) return err end

local function session(con)
  con:onerror(as_value)
  con:setmode("bn", "bn")
  while true do
    -- A negative count reads what is there, up to that many bytes,
    -- waiting (yielding to the loop) only when nothing is.
    local data = con:xread(-65536)
    if not data or not con:xwrite(data) then break end
  end
  con:close()
end

loop:wrap(function()
  for con in srv:clients { nodelay = true } do loop:wrap(session, con) end
end)

while not loop:empty() do
  local ok, err = loop:step()
  if not ok then error("echo_cqueues: " .. tostring(err), 0) end
end

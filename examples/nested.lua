-- examples/nested.lua: the echo server (examples/echo.lua, unchanged)
-- running inside a nested VM, with its own tcp driver and an event relay
-- that carries the driver's ground events (socket readiness) to the
-- ground VM.  Nothing in the VM knows it is not the ground.
--
--   market examples/nested.lua [port]      (default 5999)
--   market examples/nested.lua [port] [depth]   echo.lua `depth` VMs down
local market = require "market"
local relay = require "market.event_relay"
local tcp = require "market.tcp"

local port = (...) or "5999"
local depth = math.tointeger(tonumber(select(2, ...) or 1))
if not depth or depth < 1 then
  io.stderr:write("usage: market examples/nested.lua [port] [depth >= 1]\n")
  market.perform(market.exit(2))      -- a usage error: no crash report
end
local dir = (arg and arg[0] or ""):match("^(.*)/") or "."
local echo = assert(loadfile(dir .. "/echo.lua"))

-- The innermost VM: a relay, a tcp driver, and echo.lua as its boot code.
local function innermost()
  market.perform(relay.event_relay("echo-vm"),
                 market.spawn(tcp.driver, { name = "tcp-driver" }))
  market.pause()            -- the driver is up before echo.lua listens
  return echo(port)
end

-- Each level above it: a relay (for the level below) and the nested VM.
local boot = innermost
for level = depth - 1, 1, -1 do
  local below = boot
  boot = function()
    market.perform(relay.event_relay("level " .. level), market.nested_vm(below, { name = "vm" }))
  end
end
market.perform(market.nested_vm(boot, { name = "echo-vm" }))

-- fairness_spec.lua: a process that keeps its VM busy without end (one
-- short activation after another: each message it gets makes the next)
-- shares the program with everything else.  The ground runs its VM for a
-- slice, then polls (docs/semantics.md, "Turns"): timers fire, sockets are
-- served, signals stop the program, a host's step returns, and a nested VM
-- busy so is a process among its parent's.  Each case runs as a
-- subprocess with a time bound: before, every one of them hung.
package.path = "spec/support/?.lua;" .. package.path
local H = require "helpers"
local N = require "net"

-- A process that sends itself a message at every activation, counting
-- them in `count` (a global of the script's chunk, read by the others).
local STORM = [[
local market = require "market"
local _ = market._
count = 0
local function storm()
  return market.transition(0,
    market.subscriber({ "storm", _ }, { on_message = function(n)
      count = count + 1
      return market.transition(n + 1, market.send({ "storm", n + 1 }))
    end }),
    market.publisher({ "storm", _ }, {}),
    market.send({ "storm", 0 }))
end
]]

-- A straight-line process that waits 20 ms five times, then says how long
-- that took and how far the storm got, and exits.
local TICKER = [[
local function ticker()
  local t0 = market.now()
  for _i = 1, 5 do market.yield(20) end
  io.stderr:write(("ticks done in %d ms, storm at %d\n"):format(math.floor(market.now() - t0), count))
  market.perform(market.exit(0))
end
]]

-- Run a command (exec'd: its pid is the program's) for at most `secs`
-- seconds: its stderr and stdout, and its exit status (nil while it still
-- ran, when it is killed by pid: a hang leaves nothing running behind).
local function run(command, secs)
  local p = N.start_cmd("exec " .. command)
  local status = p.wait_exit(secs)
  local out = p.stderr() .. p.stdout()
  p.kill()
  return out, status
end

local function run_market(args) return run(N.q(N.market_bin()) .. " " .. args, 20) end

-- A script file of STORM, TICKER and body.
local function script(body) return H.tempfile(STORM .. TICKER .. body) end

-- Run the script made of STORM, TICKER and body under `market
-- --no-drivers`, and check what the ticker said: five waits of 20 ms,
-- late by a slice each at most, while the storm went on.
local function ticks(body)
  local path = script(body)
  local out, status = run_market("--no-drivers " .. N.q(path))
  os.remove(path)
  assert.equal(0, status, out)
  local ms, count = out:match("ticks done in (%d+) ms, storm at (%d+)")
  assert.is_not_nil(ms, out)
  assert.is_true(tonumber(ms) < 2000, out)
  assert.is_true(tonumber(count) > 1000, out)
end

describe("a process that keeps its VM busy", function()
  it("leaves timers their turn, goes on itself, and ends with an exit", function()
    ticks([[
return market.transition(nil, market.spawn(ticker), market.spawn(storm))
]])
  end)

  -- Two messages in the queue for each one taken: the process's events
  -- came back to back, and it took them all in one step (a batch of
  -- handlers) that never ended: no timer fired, one SIGTERM did nothing.
  it("leaves timers their turn when its events come back to back", function()
    ticks([[
local function storm2()
  return market.transition(nil,
    market.subscriber("ping", { on_message = function()
      count = count + 1
      return market.transition_no_state(market.send("ping"))
    end }),
    market.publisher("ping", {}), market.send("ping"), market.send("ping"))
end
return market.transition(nil, market.spawn(ticker), market.spawn(storm2))
]])
  end)

  it("busy inside a nested VM, leaves the ground's timers their turn", function()
    ticks([[
return market.transition(nil, market.nested_vm(function()
  return market.transition(nil, market.spawn(storm))
end), market.spawn(ticker))
]])
  end)

  -- Each step also sends one message at meta level, which the nested VM's
  -- own process hears in the ground: every such event ran the nested VM
  -- another slice, which made thousands more, and the ground's queue grew
  -- faster than it drained (no timer fired, memory grew without bound).
  it("busy inside a nested VM that hears its own meta-level sends, leaves the ground's timers their turn", function()
    ticks([[
local M = market.at_meta_level
return market.transition(nil, market.nested_vm(function()
  return market.transition(nil,
    M(market.subscriber("echo", { on_message = function() end })),
    M(market.publisher("echo", {})),
    market.subscriber("loop", { on_message = function()
      count = count + 1
      return market.transition_no_state(M(market.send("echo")), market.send("loop"))
    end }),
    market.publisher("loop", {}), market.send("loop"))
end), market.spawn(ticker))
]])
  end)

  -- The exit kills the processes oldest first: "a" while "b" is busy.
  it("two nested VMs busy at once both go on, and end with an exit", function()
    local path = script([[
local counts = {}
local function busy(name)
  return market.nested_vm(function()
    return market.transition(0,
      market.subscriber({ "storm", _ }, { on_message = function(n)
        counts[name] = (counts[name] or 0) + 1
        return market.transition(n + 1, market.send({ "storm", n + 1 }))
      end }),
      market.publisher({ "storm", _ }, {}),
      market.send({ "storm", 0 }))
  end)
end
return market.transition(nil, busy("a"), busy("b"), market.spawn(function()
  market.yield(300)
  io.stderr:write(("a %d b %d\n"):format(counts.a or 0, counts.b or 0))
  market.perform(market.exit(0))
end))
]])
    local out, status = run_market("--no-drivers " .. N.q(path))
    os.remove(path)
    assert.equal(0, status, out)
    local a, b = out:match("a (%d+) b (%d+)")
    assert.is_not_nil(a, out)
    assert.is_true(tonumber(a) > 1000 and tonumber(b) > 1000, out)
  end)

  -- When the drain ends its processes are killed oldest first: the one
  -- that waits, then the storm.
  it("is stopped by one SIGTERM, as any program is", function()
    local path = script([[
return market.transition(nil, market.spawn(function()
  market.yield(60000)
end), market.spawn(storm), market.spawn(function()
  io.stderr:write("storming\n")
end))
]])
    local server = N.start_cmd(("exec %s --no-drivers --drain 200 %s"):format(N.q(N.market_bin()), N.q(path)))
    finally(function() server.kill(); os.remove(path) end)
    assert.is_true(server.wait_for("storming", 10), server.stderr())
    N.sleep(0.2)
    local status = server.stop("TERM")
    assert.is_not_nil(status, "still running 5 s after SIGTERM")
    assert.equal(0, status, server.stderr())
  end)

  it("leaves a TCP server in the same VM answering", function()
    local path = script(([[
local echo = assert(loadfile(%q))
return market.transition(nil, market.spawn(storm), market.spawn(function()
  return echo("0")
end))
]]):format("examples/echo.lua"))
    local server = N.start_cmd(("exec %s %s"):format(N.q(N.market_bin()), N.q(path)))
    finally(function() server.kill(); os.remove(path) end)
    local _s, port = N.await_listening(server, "the storm with echo.lua")
    local out = N.capture(("printf 'hello, busy server' | nc -N 127.0.0.1 %d"):format(port), 10)
    assert.equal("hello, busy server", out)
    assert.is_true(server.running())
  end)
end)

describe("a host driving a busy ground from its own loop", function()
  it("gets each step back", function()
    local code = STORM .. [[
local g = market.open_ground_vm(function()
  return market.transition(nil, market.spawn(storm))
end, { drivers = false })
local seen = {}
for i = 1, 3 do
  assert(g:step(0) == true, "the ground should have more to do")
  seen[i] = count
end
g:close()
assert(seen[1] > 0 and seen[3] > seen[1], ("storm at %d, then %d"):format(seen[1], seen[3]))
print("stepped")
]]
    local out, status = run(("env LUA_CPATH=%s lua5.4 -e %s"):format(N.q(package.cpath), N.q(code)), 20)
    assert.equal(0, status, out)
    assert.equal("stepped\n", out)
  end)
end)

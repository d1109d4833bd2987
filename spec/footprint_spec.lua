-- footprint_spec.lua: what a process costs the Lua heap (issue 10).  Every
-- Lua object a process keeps is the collector's work for as long as it
-- lives, and every object a spawn makes is its work in the next cycle: a
-- VM that keeps spawning pays for both.  These bounds say what the runtime
-- itself keeps and makes per process, apart from the program's own values
-- (handler tables, closures, topics), which the processes here share.
package.path = "spec/support/?.lua;" .. package.path
local market = require "market"
local H = require "helpers"

local N = 2000

-- Lua heap bytes per process: live while N processes sit idle, each with
-- the endpoint its boot adds (after a full collection), and made by their
-- spawns and boots (with the collector stopped).
local function footprint(boot)
  local live, made
  local spawn = market.spawn(boot)
  H.ground(function()
    collectgarbage()
    collectgarbage()
    local before = collectgarbage("count")
    collectgarbage("stop")
    for _ = 1, N do market.perform(spawn) end
    market.pause()             -- every process has booted and added its endpoint
    made = (collectgarbage("count") - before) * 1024 / N
    collectgarbage("restart")
    collectgarbage()
    collectgarbage()
    live = (collectgarbage("count") - before) * 1024 / N
    for pid = 2, N + 1 do market.perform(market.quit(pid)) end
  end, nil, { max_activation = 0 })
  return live, made
end

describe("per-process footprint", function()
  it("an idle handler process keeps one table of the runtime's, its context", function()
    -- The context holds the state and the endpoints' handler tables; with
    -- a separate endpoint table each process kept two (about 180 bytes).
    local add = market.subscriber("footprint", { name = "in", on_message = function() end })
    local live = footprint(function() return market.transition(nil, add) end)
    assert.is_true(live < 150, ("%.0f bytes of Lua heap per idle process"):format(live))
  end)

  it("an endpoint given only a name keeps no handler table", function()
    -- Each kept a table { name = name } (about 190 bytes with the context).
    local live = footprint(function()
      return market.transition(nil, market.subscriber("footprint", "in"))
    end)
    assert.is_true(live < 150, ("%.0f bytes of Lua heap per idle process"):format(live))
  end)
end)

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

  it("a spawn whose boot adds one endpoint makes little garbage", function()
    -- The context, the add action, the transition.  The add action had
    -- its six fields in a hash part of eight nodes (about 425 bytes in
    -- all); it keeps all but kind in its array part.
    local _, made = footprint(function()
      return market.transition(nil, market.subscriber("footprint", "in"))
    end)
    assert.is_true(made < 400, ("%.0f bytes of Lua heap made per spawn"):format(made))
  end)

  it("a spawn action and a quit action are small", function()
    -- Lua heap bytes per action, kept (so none is collected meanwhile).
    local keep = {}
    local function bytes(make)
      for i = 1, N do keep[i] = false end
      collectgarbage()
      collectgarbage("stop")
      local before = collectgarbage("count")
      for i = 1, N do keep[i] = make(i) end
      local per = (collectgarbage("count") - before) * 1024 / N
      collectgarbage("restart")
      return per
    end
    local boot = function() end
    -- With named fields in a hash part: 208 and 152 bytes.
    local spawn = bytes(function() return market.spawn(boot) end)
    local quit = bytes(function(pid) return market.quit(pid) end)
    assert.is_true(spawn < 180, ("%.0f bytes per spawn action"):format(spawn))
    assert.is_true(quit < 140, ("%.0f bytes per quit action"):format(quit))
  end)

  it("those actions still read by name", function()
    local h = { name = "n", on_message = print }
    local add = market.subscriber("t", h)
    assert.same({ "add", "n", 1, 0, "t", h },
                { add.kind, add.name, add.orientation, add.interest, add.topic, add.handlers })
    local spawn = market.nested_vm(print, { name = "v", k = print, max_activation = 5 })
    assert.same({ "spawn", print, "v", print, true, 5 },
                { spawn.kind, spawn.boot, spawn.name, spawn.k, spawn.nested, spawn.budget })
    local quit = market.quit(3, "why")
    assert.same({ "quit", 3, "why" }, { quit.kind, quit.pid, quit.reason })
    assert.is_nil(quit.name)
    -- Fields not given read as nil, as before.
    local bare = market.spawn(print)
    assert.same({ "spawn", print }, { bare.kind, bare.boot, bare.name, bare.k, bare.nested })
    local self = market.quit()
    assert.is_nil(self.pid)
    assert.is_nil(self.reason)
    local del = market.delete_endpoint("n")
    assert.same({ "delete", "n" }, { del.kind, del.name, del.reason })
    assert.is_false(market.subscriber(false).topic)
  end)
end)

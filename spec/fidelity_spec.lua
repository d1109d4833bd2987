-- fidelity_spec.lua: where market once departed from Marketplace (issue 9):
-- what a process held at every level goes with it, a deleted endpoint's
-- own absences, and spawn with a continuation at meta level.
package.path = "spec/support/?.lua;" .. package.path
local market = require "market"
local H = require "helpers"
local _ = market._
local T = market.transition

-- at_meta_level applied n times.
local function up(n, a)
  for _ = 1, n do a = market.at_meta_level(a) end
  return a
end

-- A chain of `depth` nested VMs whose innermost runs boot; every VM on
-- the way has only the next one in it (its boot process exits at once).
local function chain(depth, boot)
  local f = boot
  for _ = 2, depth do
    local inner = f
    f = function() return T(0, market.nested_vm(inner)) end
  end
  return market.nested_vm(f)
end

describe("a process that ends takes what it held at every level, with its reason", function()
  -- The innermost process x holds a publisher and a "kick" subscriber at
  -- the ground, `depth` levels up; the kick makes it end by `how`.  With
  -- `keep`, a sibling holds an endpoint inside, so the innermost VM (and
  -- so every VM of the chain) lives on after x.
  local function run(depth, how, keep)
    local log = H.log()
    H.ground(function()
      H.step(market.spawn(function()
        return T(0, market.observe_publishers({ "deep", _ }, {
          on_absence = function(s, role, reason)
            log("publisher absent %s %s", role.topic, reason)
          end }),
          market.observe_subscribers({ "kick", _ }, {
          on_absence = function(s, role, reason)
            log("subscriber absent %s %s", role.topic, reason)
          end }))
      end, { name = "watch" }))
      H.step(chain(depth, function()
        local function x()
          local acts = { up(depth, market.publisher({ "deep", depth })) }
          if how ~= "kill" then
            acts[2] = up(depth, market.subscriber({ "kick", depth }, { on_message = function()
              if how == "crash" then error("crashed", 0) end
              return T(0, market.quit(nil, "quit"))
            end }))
          end
          return T(0, table.unpack(acts))
        end
        local acts = {}
        if how == "kill" then
          -- A sibling kills x, then (unless a keeper holds on) ends too.
          acts[1] = market.spawn(x, { k = function(_, xpid)
            return T(0, market.spawn(function()
              return T(0, up(depth, market.subscriber({ "kick", depth }, { on_message = function()
                if keep then return T(0, market.quit(xpid, "killed")) end
                return T(0, market.quit(xpid, "killed"), market.quit())
              end })))
            end))
          end })
        else
          acts[1] = market.spawn(x)
        end
        if keep then
          acts[2] = market.spawn(function() return T(0, market.subscriber("keep")) end)
        end
        return T(0, table.unpack(acts))
      end))
      H.settle(depth * 2 + 4)
      H.step(market.send({ "kick", depth }))
      H.settle(depth * 2 + 4)
      -- Nothing of x's is routable any more: a kick now reaches nobody.
      H.step(market.send({ "kick", depth }))
      log("end")
    end, log)
    return log.lines
  end

  local reason = { quit = "quit", crash = "crashed", kill = "killed" }
  for depth = 1, 5 do
    for _, how in ipairs({ "quit", "crash", "kill" }) do
      for _, keep in ipairs({ true, false }) do
        local label = string.format("%s at depth %d, %s", how, depth,
                                    keep and "its VM living on" or "its VMs ending after it")
        it(label, function()
          local lines = run(depth, how, keep)
          local want = {
            string.format('publisher absent ["deep", %d] %s', depth, reason[how]),
            "end" }
          if how ~= "kill" then
            table.insert(want, 1,
              string.format('subscriber absent ["kick", %d] %s', depth, reason[how]))
          elseif not keep then
            -- The killer ends normally after the kill.
            table.insert(want, 1, string.format('subscriber absent ["kick", %d] nil', depth))
          end
          table.sort(want, function(a, b) return a ~= "end" and (b == "end" or a < b) end)
          table.sort(lines, function(a, b) return a ~= "end" and (b == "end" or a < b) end)
          assert.same(want, lines)
        end)
      end
    end
  end
end)

-- market.event_relay: ground events for a nested VM (DESIGN §3).
--
-- event_relay(self_id) is a spawn action.  The relay process observes, in
-- its own VM, subscriptions to the ground events (market.ground.readable,
-- writable, alarm, signal); for each distinct concrete one it makes the
-- same subscription one level up (at_meta_level), and sends every message
-- that arrives there back into its VM.  So drivers that only use ground
-- events run unchanged inside a nested VM, and relays stack: a relay in a
-- VM two levels down reaches the ground through the relay one level down.
local market = ...
local M = {}

local ground = market.ground
local _, repr = market._, market.repr
local transition_no_state, send = market.transition_no_state, market.send

-- A ground event subscription names concrete values: a wildcard field
-- watches nothing in the ground VM, so it is not relayed either.
local function concrete(topic)
  local v = topic[1]
  return type(v) == "number"
end

local function boot(self_id)
  return function()
    local counts = {}       -- repr(topic) -> number of subscriptions seen

    local function relay_message(_, m)
      return transition_no_state(send(m))
    end

    local function on_presence(_, role)
      local topic = role.topic
      if not concrete(topic) then return end
      local key = repr(topic)
      local n = (counts[key] or 0) + 1
      counts[key] = n
      if n == 1 then
        return transition_no_state(market.at_meta_level(
          market.subscriber(topic, { name = key, on_message = relay_message })))
      end
    end

    local function on_absence(_, role)
      local topic = role.topic
      if not concrete(topic) then return end
      local key = repr(topic)
      local n = (counts[key] or 0) - 1
      if n > 0 then counts[key] = n; return end
      counts[key] = nil
      return transition_no_state(market.at_meta_level(market.delete_endpoint(key)))
    end

    local actions = {}
    for _i, kind in ipairs { "readable", "writable", "alarm", "signal" } do
      actions[#actions + 1] = market.observe_subscribers(ground[kind](_), {
        name = kind, on_presence = on_presence, on_absence = on_absence })
    end
    return market.transition(nil, actions)
  end
end

function M.event_relay(self_id)
  return market.spawn(boot(self_id), { name = "event-relay " .. tostring(self_id) })
end

return setmetatable(M, { __call = function(_, self_id) return M.event_relay(self_id) end })

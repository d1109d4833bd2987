-- market.event_relay: ground events for a nested VM (DESIGN §3).
--
-- event_relay(self_id) is a spawn action.  The relay process observes, in
-- its own VM, subscriptions to the ground events (market.ground.readable,
-- writable, alarm, signal, stopping); for each distinct one it makes the
-- same subscription one level up (at_meta_level), and carries down what
-- happens there:
--   - a message that arrives is sent into its VM when it is the watched
--     event itself: the record subscribed to, as the ground sends it.  A
--     message with a wildcard is no ground event (docs/semantics.md §4),
--     and it unifies with every subscription the relay holds above:
--     carried down by each, it reached every subscriber below once per
--     relayed watch, and that many times again at each level.  Stopping
--     is published by the ground, never sent: a stopping record sent as a
--     message is no event either;
--   - the presence of a publisher above (the ground, which publishes every
--     record it watches) makes the relay publish the same (refined) topic in
--     its VM, and that publisher's absence withdraws it with the same reason.
-- So a subscriber sees the same presence, messages and absence as it would
-- in the ground VM, and drivers that only use ground events run unchanged
-- inside a nested VM.  Relays stack: a relay in a VM two levels down
-- reaches the ground through the relay one level down.
local market = ...
local M = {}

local ground = market.ground
local _, repr = market._, market.repr
local transition_no_state, send = market.transition_no_state, market.send

-- A subscription to readable, writable, alarm or signal with a wildcard
-- (or any non-number) field watches nothing in the ground VM, so it is not
-- relayed.  Stopping is relayed as it is: one waits for stopping(_).
local KINDS = { "readable", "writable", "alarm", "monotonic_alarm", "signal", "stopping" }
local function relayed(kind, topic)
  return kind == "stopping" or type(topic[1]) == "number"
end

local function boot(self_id)
  return function()
    -- key (repr of a topic subscribed to here) -> {n = subscriptions,
    -- seen = {repr of a refined topic above -> presences of it},
    -- lost = a publisher above went while the subscription stayed}
    local subs = {}
    -- repr of a topic published here -> presences above it stands for
    local pubs = {}

    local function publish(rkey, topic)
      local n = (pubs[rkey] or 0) + 1
      pubs[rkey] = n
      if n == 1 then return market.publisher(topic, { name = "ground " .. rkey }) end
    end

    local function withdraw(rkey, reason)
      local n = pubs[rkey] - 1
      if n > 0 then pubs[rkey] = n; return end
      pubs[rkey] = nil
      return market.delete_endpoint("ground " .. rkey, reason)
    end

    -- The meta-level subscription for key: what a publisher above does is
    -- done here by the relay's own publisher, and the event it watches,
    -- sent above, is sent here (only that: the header).
    local function upward(kind, key, topic)
      local s = subs[key]
      local seen = s.seen
      local event = kind ~= "stopping" and topic or nil
      return market.subscriber(topic, {
        name = key,
        on_message = function(_, m)
          if m == event then return transition_no_state(send(m)) end
        end,
        on_presence = function(_, role)
          if s.gone then return end
          local rkey = repr(role.topic)
          seen[rkey] = (seen[rkey] or 0) + 1
          return transition_no_state(publish(rkey, role.topic))
        end,
        on_absence = function(_, role, reason, _, deleted)
          local rkey = repr(role.topic)
          if s.gone or not seen[rkey] then return end
          seen[rkey] = seen[rkey] > 1 and seen[rkey] - 1 or nil
          if not deleted then s.lost = true end
          return transition_no_state(withdraw(rkey, reason))
        end,
      })
    end

    local function observer(kind)
      return {
        name = kind,
        on_presence = function(_, role)
          local topic = role.topic
          if not relayed(kind, topic) then return end
          local key = repr(topic)
          local s = subs[key]
          if s then
            s.n = s.n + 1
            -- The watch above failed (the ground withdrew with a reason)
            -- and nothing is published there now: in the ground VM a new
            -- subscription starts the watch again, and every subscriber
            -- still there sees how that goes (docs/semantics.md §12).  So
            -- here: subscribe above anew.  The old endpoint saw nobody
            -- there, so deleting it withdraws nothing here.
            if s.lost and next(s.seen) == nil then
              s.lost = false
              return transition_no_state(market.at_meta_level(market.delete_endpoint(key),
                                                              upward(kind, key, topic)))
            end
            return
          end
          subs[key] = { n = 1, seen = {} }
          return transition_no_state(market.at_meta_level(upward(kind, key, topic)))
        end,
        on_absence = function(_, role)
          local topic = role.topic
          if not relayed(kind, topic) then return end
          local key = repr(topic)
          local s = subs[key]
          if not s then return end
          if s.n > 1 then s.n = s.n - 1; return end
          subs[key] = nil
          -- What the publishers it saw above stand for here is withdrawn
          -- now, not by the deleted endpoint's own absences: one whose
          -- absence (the ground's, its descriptor closed) was still queued
          -- for it is dropped with the endpoint, and that publisher stayed
          -- here for good (a readable(fd) after a socket's close).
          s.gone = true
          local acts = { market.at_meta_level(market.delete_endpoint(key)) }
          for rkey, count in pairs(s.seen) do
            for _i = 1, count do acts[#acts + 1] = withdraw(rkey) end
          end
          return transition_no_state(table.unpack(acts))
        end,
      }
    end

    local actions = {}
    for _i, kind in ipairs(KINDS) do
      actions[#actions + 1] = market.observe_subscribers(ground[kind](_), observer(kind))
    end
    return market.transition(nil, actions)
  end
end

function M.event_relay(self_id)
  return market.spawn(boot(self_id), { name = "event-relay " .. tostring(self_id) })
end

return setmetatable(M, { __call = function(_, self_id) return M.event_relay(self_id) end })

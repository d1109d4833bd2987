-- market.timer: the timer driver (DESIGN §3).
--
-- A process that listens for timer.set(label, msecs, kind) and, when due,
-- sends timer.expired(label, now_msecs).  kind is "relative" (msecs from
-- now) or "absolute" (ms since the epoch).  Setting a label again replaces
-- its deadline.  Outstanding timers live in one binary heap; the driver
-- holds a single ground alarm for the earliest deadline, so a hundred
-- thousand timers cost one watcher.
local market = ...
local M = {}

local set = market.record("timer-set", "label", "msecs", "kind")
local expired = market.record("timer-expired", "label", "msecs")
M.set, M.expired = set, expired
local alarm = market.ground.alarm
local _ = market._
local repr, ceil, huge = market.repr, math.ceil, math.huge

-- The heap holds entries {deadline, seq, label, key}; an entry is live while
-- current[key] is its seq (re-setting a label leaves the old entry stale).
local function push(h, e)
  local n = h.n + 1
  h.n = n
  while n > 1 do
    local p = n // 2
    local pe = h[p]
    if pe[1] < e[1] or (pe[1] == e[1] and pe[2] <= e[2]) then break end
    h[n] = pe
    n = p
  end
  h[n] = e
end

local function pop(h)
  local top, n = h[1], h.n
  local last = h[n]
  h[n] = nil
  n = n - 1
  h.n = n
  if n > 0 then
    local i = 1
    while true do
      local c = 2 * i
      if c > n then break end
      if c < n then
        local a, b = h[c], h[c + 1]
        if b[1] < a[1] or (b[1] == a[1] and b[2] < a[2]) then c = c + 1 end
      end
      local ce = h[c]
      if last[1] < ce[1] or (last[1] == ce[1] and last[2] <= ce[2]) then break end
      h[i] = ce
      i = c
    end
    h[i] = last
  end
  return top
end

-- The driver's boot function: run it with market.spawn(timer.driver).
function M.driver()
  local heap, current, seq = { n = 0 }, {}, 0
  local armed = nil                      -- deadline of the ground alarm held

  -- Hold one ground alarm, for the earliest live deadline.
  local function rearm(actions)
    while heap.n > 0 and current[heap[1][4]] ~= heap[1][2] do pop(heap) end
    local want = heap.n > 0 and heap[1][1] or nil
    if want == armed then return end
    if armed then actions[#actions + 1] = market.delete_endpoint("alarm") end
    if want then
      actions[#actions + 1] = market.subscriber(alarm(want), { name = "alarm", on_message = function()
        local now = market.now()
        -- The ground alarm fires once: drop it, then arm the next one.
        local out = { market.delete_endpoint("alarm") }
        armed = nil
        while heap.n > 0 and (current[heap[1][4]] ~= heap[1][2] or heap[1][1] <= now) do
          local e = pop(heap)
          if current[e[4]] == e[2] then
            current[e[4]] = nil
            out[#out + 1] = market.send(expired(e[3], now))
          end
        end
        rearm(out)
        return market.transition_no_state(out)
      end })
    end
    armed = want
  end

  local function on_set(_, m)
    -- Malformed requests are ignored: nobody to answer.  (A wildcard
    -- message body reaches this subscription too, and is no record.)
    if not set:is(m) then return end
    local msecs, kind = m.msecs, m.kind
    if type(msecs) ~= "number" or (kind ~= "relative" and kind ~= "absolute") then return end
    local deadline = kind == "absolute" and msecs or market.now() + msecs
    -- NaN or infinite: no ground alarm can be set for it (ground.h).
    if deadline ~= deadline or deadline == huge or deadline == -huge then return end
    deadline = ceil(deadline)   -- never before the time asked for
    local key = repr(m.label)
    seq = seq + 1
    current[key] = seq
    push(heap, { deadline, seq, m.label, key })
    local actions = {}
    rearm(actions)
    return market.transition_no_state(actions)
  end

  return market.transition(nil, market.subscriber(set(_, _, _), { name = "set", on_message = on_set }))
end

-- sleep(msecs): for straight-line processes; suspends this process only.
local sleeps = 0
function M.sleep(msecs)
  sleeps = sleeps + 1
  local pid = market.self()
  local label = { "sleep", pid, sleeps }
  local name = "sleep#" .. sleeps
  market.perform(market.subscriber(expired(label, _), { name = name }),
                 market.send(set(label, msecs, "relative")))
  market.wait_for(function(ev) return ev.type == "message" and ev.endpoint == name end)
  market.perform(market.delete_endpoint(name))
end

return M

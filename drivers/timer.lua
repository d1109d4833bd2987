-- market.timer: the timer driver (DESIGN §3).
--
-- A process that listens for timer.set(label, msecs, kind) and, when due,
-- sends timer.expired(label, now_msecs).  kind is "relative" (msecs from
-- now) or "absolute" (ms since the epoch).  As in Marketplace, a label
-- names what an expiry is about, not a slot: every set gives exactly one
-- expiry, so setting a label twice gives two, in deadline order (equal
-- deadlines in the order they were set).  timer.cancel(label) is market's
-- own (Marketplace has none): it cancels every outstanding timer with that
-- label, so "cancel, then set" replaces.  timer.every(label, msecs), also
-- market's own, is a periodic timer: an expiry every msecs until the label
-- is cancelled.
--
-- Outstanding timers live in two binary heaps, one per clock (relative
-- timers on the monotonic clock, absolute ones on the wall clock: M.driver);
-- the driver holds a single ground alarm for each heap's earliest deadline,
-- so a hundred thousand timers cost at most two watchers.  Expiries due
-- together go out in batches, one activation each (expire, below).  A
-- cancel does not search the heap: it marks the label's entries stale at
-- once (a per-label count and cut, below) and they are dropped when they
-- reach the top, or by a compaction when stale entries come to outnumber
-- live ones (a scan of the heaps that takes them out, paid for by the sets
-- that made them).  Both go in steps, a bounded number an activation
-- (STEPS, below), like the batches of expiries.
local market = ...
local M = {}

local set = market.record("timer-set", "label", "msecs", "kind")
local cancel = market.record("timer-cancel", "label")
local expired = market.record("timer-expired", "label", "msecs")
local every = market.record("timer-every", "label", "msecs")
M.set, M.cancel, M.expired, M.every = set, cancel, expired, every
local _ = market._
local repr, ceil, huge = market.repr, math.ceil, math.huge
-- A value an error names: a term as repr writes it, anything else by its
-- type (repr raises on a non-term, in place of the error meant).
local function show(v) return market.is_term(v) and repr(v) or type(v) end

-- For tests and monitoring, across every timer driver of this Lua state:
-- the most entries (live and stale) a driver's heaps held together, how
-- often a driver began a compaction to drop stale entries, how many
-- activations sent expiries (one per batch), and the most steps (below)
-- one activation took.
M.stats = { max_heap = 0, compactions = 0, batches = 0, max_steps = 0 }
local stats = M.stats

-- Expiries sent in one activation at most: firing a hundred thousand at
-- once took half a second of CPU, half the default activation budget.
local BATCH = 1000

-- Steps one activation takes at most, a step being a stale entry dropped
-- or an entry a compaction looks at; a continuation does the rest.
-- Dropping fifty thousand cancelled entries in one activation ran the
-- driver over a 100 ms budget, and it failed with every timer it held.
local STEPS = 1000

-- The heap holds entries {deadline, seq, label, key[, period, origin]},
-- ordered by deadline, then by seq (the order of the sets); key is
-- repr(label); a periodic entry (timer.every) has its period in ms and the
-- time of its request, from which its beats are counted.
local function before(a, b)
  return a[1] < b[1] or (a[1] == b[1] and a[2] < b[2])
end

-- Put e into the hole at i, moving later parents down.
local function up(h, i, e)
  while i > 1 do
    local p = i // 2
    local pe = h[p]
    if before(pe, e) then break end
    h[i] = pe
    i = p
  end
  h[i] = e
end

local function push(h, e)
  local n = h.n + 1
  h.n = n
  up(h, n, e)
end

-- Put e into the hole at i, moving smaller children up.
local function sink(h, i, e)
  local n = h.n
  while true do
    local c = 2 * i
    if c > n then break end
    if c < n and before(h[c + 1], h[c]) then c = c + 1 end
    local ce = h[c]
    if before(e, ce) then break end
    h[i] = ce
    i = c
  end
  h[i] = e
end

local function pop(h)
  local top, n = h[1], h.n
  local last = h[n]
  h[n] = nil
  h.n = n - 1
  if n > 1 then sink(h, 1, last) end
  return top
end

-- Take out the entry at i; the last one takes its place, moved up or down.
local function remove(h, i)
  local e, n = h[i], h.n
  local last = h[n]
  h[n] = nil
  h.n = n - 1
  if i < n then
    if i > 1 and before(last, h[i // 2]) then up(h, i, last) else sink(h, i, last) end
  end
  return e
end

-- The driver's boot function: run it with market.spawn(timer.driver).
function M.driver()
  -- Two clocks, a heap and a ground alarm each.  Relative timers and
  -- every's beats are kept on the monotonic clock, so that setting the
  -- wall clock (an NTP step, `date -s`) neither delays nor hastens them;
  -- absolute ones on the wall clock, whose alarm libev moves when the
  -- clock is set, so that one set forward past a deadline fires it then.
  -- `armed`: the deadline of the ground alarm held, named `name`; `scan`:
  -- where a compaction under way looks next (compact, below).
  local mono = { heap = { n = 0 }, alarm = market.ground.monotonic_alarm, name = "alarm" }
  local wall = { heap = { n = 0 }, alarm = market.ground.alarm, name = "wall alarm" }
  local clocks = { mono, wall }
  local seq = 0
  -- Per label key: live[key], how many of its entries will fire; cut[key],
  -- the seq of its last cancel (its entries with seq <= cut are stale);
  -- stale[key], how many of those are still in the heaps, so that cut[key]
  -- goes with the last of them.  nstale counts all stale entries.
  local live, cut, stale, nstale = {}, {}, {}, 0
  local pending = false       -- a continuation (go_on) is queued: it rearms
  local compacting = false    -- a compaction is under way
  local steps = 0             -- taken in this activation (STEPS)

  -- Take a step, if this activation has one left.
  local function step()
    if steps == STEPS then return false end
    steps = steps + 1
    if steps > stats.max_steps then stats.max_steps = steps end
    return true
  end

  local function is_live(e)
    local c = cut[e[4]]
    return c == nil or e[2] > c
  end

  -- Account for a stale entry that left a heap.
  local function dropped(e)
    local key = e[4]
    local s = stale[key] - 1
    if s == 0 then stale[key], cut[key] = nil, nil else stale[key] = s end
    nstale = nstale - 1
  end

  -- Go on with the compaction under way: scan each heap from its end to
  -- its top, taking out in place the stale entries met, a step each
  -- entry looked at; false when the steps ran out first.  Positions past
  -- c.scan hold entries looked at: after a removal the position is looked
  -- at again (what took its place may not have been), and a pop moves
  -- into them only entries looked at.  (A push may move one more there:
  -- what the scan misses waits for the top or the next compaction.)
  local function compact()
    for _i, c in ipairs(clocks) do
      local h, i = c.heap, c.scan
      if i then
        if i > h.n then i = h.n end
        while i > 0 do
          if not step() then c.scan = i; return false end
          if is_live(h[i]) then i = i - 1
          else
            dropped(remove(h, i))
            if i > h.n then i = h.n end
          end
        end
        c.scan = nil
      end
    end
    compacting = false
    return true
  end

  -- Drop the stale entries at the heaps' tops; false when the steps ran
  -- out first.
  local function drop_stale()
    for _i, c in ipairs(clocks) do
      local heap = c.heap
      while heap.n > 0 and not is_live(heap[1]) do
        if not step() then return false end
        dropped(pop(heap))
      end
    end
    return true
  end

  local go_on

  -- Queue a continuation to go on where this activation stopped.
  local function later(actions)
    if pending then return end
    pending = true
    actions[#actions + 1] = market.yield(go_on)
  end

  -- Hold one ground alarm per clock, for its earliest live deadline.
  -- Called after every change to the heaps, it begins a compaction when
  -- stale entries (a cancel makes them, and expiries leave them behind)
  -- come to outnumber live ones, and goes on with one under way; what the
  -- steps left undone a continuation does, which rearms when done.
  local expire
  local function rearm(actions)
    local clear = drop_stale()
    if not compacting and 2 * nstale > mono.heap.n + wall.heap.n then
      compacting = true
      for _i, c in ipairs(clocks) do c.scan = c.heap.n end
      stats.compactions = stats.compactions + 1
    end
    if compacting then compact() end
    if not clear or compacting then later(actions) end
    if pending then return end
    for _i, c in ipairs(clocks) do
      local want = c.heap.n > 0 and c.heap[1][1] or nil
      if want ~= c.armed then
        if c.armed then actions[#actions + 1] = market.delete_endpoint(c.name) end
        if want then
          actions[#actions + 1] = market.subscriber(c.alarm(want), { name = c.name, on_message = function()
            -- The ground alarm fires once: drop it, then arm the next one.
            c.armed = nil
            return market.transition_no_state(expire({ market.delete_endpoint(c.name) }))
          end })
        end
        c.armed = want
      end
    end
  end

  go_on = function()
    pending = false
    return market.transition_no_state(expire({}))
  end

  -- The wall clock's lead on the monotonic one, to put the two heaps'
  -- deadlines in one order.  market.now() is the loop's time, read when
  -- the loop last woke, so now() - monotonic() is short of the lead by as
  -- long as the loop has run since: the most seen is kept, and a change of
  -- more than a second (the wall clock was set) replaces it.
  local lead
  local function lead_now(nm, nw)
    local o = nw - nm
    if not lead or o > lead or o < lead - 1000 then lead = o end
    return lead
  end

  -- The clock whose heap's top is due next at these times (nil: none is
  -- due), its stale tops dropped first (nil, true: the steps ran out
  -- first).  Both due: the one whose deadline came first, the wall's
  -- taken to the monotonic clock; equal deadlines in the order of the
  -- sets.
  local function due(nm, nw, off)
    local em, ew
    if not drop_stale() then return nil, true end
    if mono.heap.n > 0 and mono.heap[1][1] <= nm then em = mono.heap[1] end
    if wall.heap.n > 0 and wall.heap[1][1] <= nw then ew = wall.heap[1] end
    if not ew then return em and mono end
    if not em then return wall end
    local wm = ew[1] - off
    return (wm < em[1] or (wm == em[1] and ew[2] < em[2])) and wall or mono
  end

  -- Add to out the expiries now due, at most BATCH of them (and STEPS
  -- steps): the rest are sent by a continuation, after what was queued
  -- meanwhile, so that no number of timers due at once, or cancelled,
  -- makes one activation run over its budget (docs/limits.md) and the
  -- receivers run in between.  Then rearm.
  expire = function(out)
    local nm, nw, sent = market.monotonic(), market.now(), 0
    local off = lead_now(nm, nw)
    steps = 0
    while true do
      local c, blocked = due(nm, nw, off)
      if not c and not blocked then break end
      if blocked or sent == BATCH then
        if sent > 0 then stats.batches = stats.batches + 1 end
        later(out)
        return out
      end
      local e = pop(c.heap)
      local key, period = e[4], e[5]
      if period then
        -- Back in at its next beat after now: the n-th is due at
        -- ceil(origin + n * period), so that beats do not drift, not even
        -- by the rounding of a fractional period (rounded once, every(5.5)
        -- beat every 6 ms); beats missed while the VM was busy are
        -- skipped, not sent in a burst.  (The second try: a product that
        -- rounds down to now.)  It stays live, and takes a new seq: among
        -- equal deadlines it now comes after the timers set before this
        -- beat.
        local origin = e[6]
        local n = (nm - origin) // period + 1
        local d = ceil(origin + n * period)
        if d <= nm then d = ceil(origin + (n + 1) * period) end
        seq = seq + 1
        e[1], e[2] = d, seq
        push(c.heap, e)
      else
        local n = live[key] - 1
        live[key] = n > 0 and n or nil
      end
      -- The expiry says the wall clock, as Marketplace's does.
      out[#out + 1] = market.send(expired(e[3], nw))
      sent = sent + 1
    end
    if sent > 0 then stats.batches = stats.batches + 1 end
    rearm(out)
    return out
  end

  -- Add a timer due at deadline (ms on clock c; when period is given,
  -- repeating every period ms counted from origin).
  local function add(c, label, deadline, period, origin)
    local key = repr(label)
    seq = seq + 1
    live[key] = (live[key] or 0) + 1
    push(c.heap, { ceil(deadline), seq, label, key, period, origin })   -- ceil: never early
    local held = mono.heap.n + wall.heap.n
    if held > stats.max_heap then stats.max_heap = held end
    local actions = {}
    steps = 0
    rearm(actions)
    return market.transition_no_state(actions)
  end

  local function finite(x) return x == x and x ~= huge and x ~= -huge end

  local function on_set(_, m)
    -- Malformed requests are ignored: nobody to answer.  (A wildcard
    -- message body reaches this subscription too, and is no record.)
    if not set:is(m) then return end
    local msecs, kind = m.msecs, m.kind
    if type(msecs) ~= "number" or (kind ~= "relative" and kind ~= "absolute") then return end
    -- NaN or infinite: no ground alarm can be set for it (ground.h).
    if not finite(msecs) then return end
    if kind == "absolute" then return add(wall, m.label, msecs) end
    return add(mono, m.label, market.monotonic() + msecs)
  end

  local function on_every(_, m)
    if not every:is(m) then return end
    local msecs = m.msecs
    -- A period is a finite number of ms above 0, kept as it is (beats
    -- due at fractions are rounded up one by one, in expire); under 1 ms
    -- it is 1 ms, no more than a beat a millisecond.
    if type(msecs) ~= "number" or not finite(msecs) or not (msecs > 0) then return end
    local period, origin = msecs < 1 and 1 or msecs, market.monotonic()
    return add(mono, m.label, origin + period, period, origin)
  end

  local function on_cancel(_, m)
    if not cancel:is(m) then return end
    local key = repr(m.label)
    local n = live[key]
    if not n then return end   -- nothing outstanding: nothing to do
    live[key], cut[key] = nil, seq
    stale[key] = (stale[key] or 0) + n
    nstale = nstale + n
    local actions = {}
    steps = 0
    rearm(actions)
    return market.transition_no_state(actions)
  end

  return market.transition(nil,
    market.subscriber(set(_, _, _), { name = "set", on_message = on_set }),
    market.subscriber(every(_, _), { name = "every", on_message = on_every }),
    market.subscriber(cancel(_), { name = "cancel", on_message = on_cancel }))
end

-- sleep(msecs): for straight-line processes; suspends this process only.
-- A timed wait of the process's own (market.wait_for with a timeout), not
-- a timer of the driver's: it needs no driver in the VM, and it goes with
-- its process.  Through the driver, a sleep in a VM without one was lost
-- and never ended, a driver that went left its sleepers waiting for ever,
-- and a sleeper killed (Ctrl-C at market -i) left its timer behind, which
-- held a stop for its whole drain.
local function never() return false end

function M.sleep(msecs)
  -- A sleep of NaN or of infinity would never end: misuse, said here.
  if type(msecs) ~= "number" or msecs ~= msecs or msecs == huge or msecs == -huge then
    error("timer.sleep: msecs must be a finite number, got " .. show(msecs), 2)
  end
  -- No time (or a time past) still lets the others run, as a sleep
  -- through the driver did; a wait of 0 would not suspend.
  local ok, err
  if msecs > 0 then ok, err = pcall(market.wait_for, never, msecs)
  else ok, err = pcall(market.pause) end
  if not ok then   -- its misuse (outside a process, in a C function) as ours
    error("timer.sleep: " .. tostring(err):gsub("^.-market%.[%w_]+: ", ""), 2)
  end
end

-- For market.snapshot (docs/inspect.md, "Snapshots"): the counters above.
function M.inspect()
  local s = M.stats
  return { max_heap = s.max_heap, compactions = s.compactions, batches = s.batches,
           max_steps = s.max_steps }
end

return M

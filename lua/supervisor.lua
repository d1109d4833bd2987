-- market.supervisor: supervision on the model of Erlang/OTP's supervisor,
-- in market's terms (docs/supervision.md).
--
-- A supervisor is an ordinary process.  It learns that a child ended the
-- way every process learns that a peer went: it observes the child's
-- lifeline (market.lifeline(pid), which the VM publishes from the child
-- for as long as it lives, runtime/vm.h) and hears its absence, with the
-- child's reason.  The other way, each child is linked to it
-- (market.link, runtime/vm.h): it ends when the supervisor does, however
-- that comes.  Back-off waits on a ground alarm, so no driver has to run
-- for it in the ground VM.
local market = ...
local M = {}

-- (Back-off and the restart window are durations: on the monotonic clock,
-- which setting the wall clock does not move.)
local lifeline, alarm, now, repr = market.lifeline, market.ground.monotonic_alarm, market.monotonic, market.repr
-- A value an error names: a term as repr writes it, anything else by its
-- type (repr raises on a non-term, in place of the error meant).
local function show(v) return market.is_term(v) and repr(v) or type(v) end
local perform, observe, delete, quit, link = market.perform, market.observe_publishers,
  market.delete_endpoint, market.quit, market.link

local STRATEGIES = { one_for_one = true, one_for_all = true }
local RESTARTS = { permanent = true, transient = true, temporary = true }

-- The defaults are OTP's: at most 1 restart in 5 s, no back-off.
local DEFAULT_INTENSITY, DEFAULT_PERIOD = 1, 5
-- A back-off given as a table: its maximum and factor when left out.
local DEFAULT_BACKOFF_MAX, DEFAULT_BACKOFF_FACTOR = 30000, 2

-- The reason a supervisor gives the children it stops.
M.SHUTDOWN = "shutdown"

local function finite(x) return type(x) == "number" and x == x and x > -math.huge and x < math.huge end

local function bad(level, fmt, ...)
  error("market.supervisor: " .. fmt:format(...), level + 1)
end

-- The back-off as {initial=, max=, factor=} in ms, or nil for none.
local function check_backoff(b, level)
  if b == nil or b == 0 then return nil end
  if type(b) == "number" then
    if not finite(b) or b < 0 then bad(level + 1, "backoff must be a number of ms, 0 or more, or a table") end
    return { initial = b, max = b, factor = 1 }
  end
  if type(b) ~= "table" then bad(level + 1, "backoff must be a number of ms or a table, got %s", type(b)) end
  local initial, max, factor = b.initial, b.max or DEFAULT_BACKOFF_MAX, b.factor or DEFAULT_BACKOFF_FACTOR
  if not finite(initial) or initial <= 0 then bad(level + 1, "backoff.initial must be a number of ms above 0") end
  if not finite(max) or max < initial then bad(level + 1, "backoff.max must be a number of ms, at least backoff.initial") end
  if not finite(factor) or factor < 1 then bad(level + 1, "backoff.factor must be a number, at least 1") end
  for k in pairs(b) do
    if k ~= "initial" and k ~= "max" and k ~= "factor" then bad(level + 1, "unknown backoff key '%s'", tostring(k)) end
  end
  return { initial = initial, max = max, factor = factor }
end

-- A child spec, checked, with its start as a spawn action.
local function check_child(c, i, ids, level)
  if type(c) ~= "table" then bad(level + 1, "child %d must be a table, got %s", i, type(c)) end
  local id = c.id
  if type(id) ~= "string" and math.type(id) ~= "integer" then
    bad(level + 1, "child %d: id must be a string or an integer", i)
  end
  if ids[id] then bad(level + 1, "child %d: id %s is taken by child %d", i, repr(id), ids[id]) end
  ids[id] = i
  local restart = c.restart or "permanent"
  if not RESTARTS[restart] then
    bad(level + 1, "child %s: restart must be \"permanent\", \"transient\" or \"temporary\", got %s",
        repr(id), show(restart))
  end
  local start, spawn = c.start, nil
  if c.name ~= nil and type(c.name) ~= "string" then bad(level + 1, "child %s: name must be a string", repr(id)) end
  if type(start) == "function" then
    spawn = market.spawn(start, { name = c.name or tostring(id) })
  elseif market.is_action(start) and start.kind == "spawn" then
    -- (a name given beside it was dropped without a word)
    if c.name ~= nil then
      bad(level + 1, "child %s: name is a boot function's; a spawn action names its process itself " ..
          "(market.spawn(f, { name = ... }))", repr(id))
    end
    if start.k ~= nil then
      bad(level + 1, "child %s: a start action with a continuation k (the supervisor's state is its own)", repr(id))
    end
    spawn = start
  else
    bad(level + 1, "child %s: start must be a boot function or a spawn action, got %s", repr(id), type(start))
  end
  for k in pairs(c) do
    if k ~= "id" and k ~= "start" and k ~= "restart" and k ~= "name" then
      bad(level + 1, "child %s: unknown key '%s'", repr(id), tostring(k))
    end
  end
  return { id = id, spawn = spawn, restart = restart }
end

-- The supervisor's boot function for a checked spec.
local function boot(cfg)
  return function()
    -- Its children, in start order: {id=, spawn=, restart=, pid=, ep=,
    -- times=}.  pid and ep while it runs; times: when it was restarted,
    -- within the period (its back-off).
    local children = {}
    for i, c in ipairs(cfg.children) do
      children[i] = { id = c.id, spawn = c.spawn, restart = c.restart, times = {} }
    end
    local history = {}     -- when restarts were decided, within the period
    local waits = 0        -- back-off alarms asked for so far (their names)
    local period_ms = cfg.period * 1000
    local me = market.self()
    local ended

    -- Start c, link it to the supervisor and observe its lifeline.  The
    -- spawn is performed at once, so both are made before the child's boot
    -- runs: the supervisor hears of its end even if its boot fails, and
    -- it cannot outlive the supervisor however soon that goes.
    local function start(c)
      local pid = perform(c.spawn)
      c.pid, c.ep = pid, "child#" .. pid
      perform(link(me, pid), observe(lifeline(pid), { name = c.ep,
        on_absence = function(_, _, reason, _, deleted)
          if not deleted then return ended(c, reason) end
        end }))
    end

    -- Stop c: forget its lifeline first (no end to hear of), then kill it.
    local function stop(c)
      if c.pid then
        perform(delete(c.ep), quit(c.pid, M.SHUTDOWN))
        c.pid, c.ep = nil, nil
      end
    end

    -- Stop every child but `except`, newest first; temporary ones are
    -- stopped for good.
    local function stop_all(except)
      for i = #children, 1, -1 do
        local c = children[i]
        if c ~= except then
          stop(c)
          if c.restart == "temporary" then table.remove(children, i) end
        end
      end
    end

    local function forget(c)
      for i, x in ipairs(children) do
        if x == c then table.remove(children, i) return end
      end
    end

    -- The times are in the order they were added: the scan stops at the
    -- first one kept.  (It went over them all: a child failing at its
    -- boot restarts many times in one turn of the loop, where now() stands
    -- still, and an intensity of 20,000 took 11 s of CPU.)
    local function prune(times, t)
      local n, first = #times, 1
      while first <= n and times[first] <= t - period_ms do first = first + 1 end
      if first > 1 then
        table.move(times, first, n, 1)
        for i = n - first + 2, n do times[i] = nil end
      end
    end

    -- The back-off before c's restart: exponential in its restarts within
    -- the period, capped.
    local function delay(c, t)
      local b = cfg.backoff
      prune(c.times, t)
      local n = #c.times
      c.times[n + 1] = t
      if not b then return 0 end
      return math.min(b.max, b.initial * b.factor ^ n)
    end

    -- Start the group in order, now or after ms (a ground alarm).  While
    -- it waits, none of the group runs, so nothing can end or stop it;
    -- a supervisor that gives up meanwhile quits before the alarm.
    local function restart(group, ms)
      if ms <= 0 then
        for _, c in ipairs(group) do start(c) end
        return
      end
      waits = waits + 1
      local name = "backoff#" .. waits
      perform(market.subscriber(alarm(now() + ms), { name = name,
        on_message = function(_, m)
          if not alarm:is(m) then return end   -- send(market._): not the back-off's end
          perform(delete(name))
          for _, c in ipairs(group) do start(c) end
        end,
        -- The alarm's watch ended with a reason (in a nested VM, its event
        -- relay went): it will not fire, and the group would wait for
        -- ever.  Give up, as on too many restarts, so that it is seen.
        on_absence = function(_, _, reason, _, deleted)
          if reason == nil or deleted then return end
          stop_all(nil)
          return market.transition_no_state(
            quit(nil, "market.supervisor: the back-off's alarm went: " .. repr(reason)))
        end }))
    end

    ended = function(c, reason)
      perform(delete(c.ep))
      c.pid, c.ep = nil, nil
      if c.restart == "temporary" or
         (c.restart == "transient" and (reason == nil or reason == M.SHUTDOWN)) then
        forget(c)
        return
      end
      local t = now()
      prune(history, t)
      history[#history + 1] = t
      if #history > cfg.intensity then
        stop_all(nil)
        return market.transition_no_state(quit(nil, ("market.supervisor: more than %d restart%s in %g s; child %s ended: %s")
          :format(cfg.intensity, cfg.intensity == 1 and "" or "s", cfg.period, repr(c.id), repr(reason))))
      end
      local ms = delay(c, t)
      if cfg.strategy == "one_for_all" then
        stop_all(c)
        restart(children, ms)
      else
        restart({ c }, ms)
      end
    end

    for _, c in ipairs(children) do start(c) end
  end
end

-- supervisor{strategy=, intensity=, period=, backoff=, children=, name=}:
-- a spawn action for a supervisor (docs/supervision.md).
function M.supervisor(spec)
  if type(spec) ~= "table" then bad(2, "the spec must be a table, got %s", type(spec)) end
  local strategy = spec.strategy or "one_for_one"
  if not STRATEGIES[strategy] then
    bad(2, "strategy must be \"one_for_one\" or \"one_for_all\", got %s", show(strategy))
  end
  local intensity = spec.intensity or DEFAULT_INTENSITY
  if math.type(intensity) ~= "integer" or intensity < 0 then
    bad(2, "intensity must be an integer, 0 or more")
  end
  local period = spec.period or DEFAULT_PERIOD
  if not finite(period) or period <= 0 then bad(2, "period must be a number of seconds above 0") end
  local backoff = check_backoff(spec.backoff, 2)
  if type(spec.children) ~= "table" then bad(2, "children must be a list of child specs") end
  if spec.name ~= nil and type(spec.name) ~= "string" then bad(2, "name must be a string") end
  for k in pairs(spec) do
    if k ~= "strategy" and k ~= "intensity" and k ~= "period" and k ~= "backoff" and
       k ~= "children" and k ~= "name" then
      bad(2, "unknown key '%s'", tostring(k))
    end
  end
  -- A list: children keyed otherwise (by id, say) would not be seen by
  -- the loop below, and the supervisor would start without them.
  local n = #spec.children
  for k in pairs(spec.children) do
    if math.type(k) ~= "integer" or k < 1 or k > n then
      bad(2, "children must be a list of child specs, not keyed by %s",
          type(k) == "string" and repr(k) or tostring(k))
    end
  end
  local children, ids = {}, {}
  for i = 1, n do children[i] = check_child(spec.children[i], i, ids, 2) end
  return market.spawn(boot {
    strategy = strategy, intensity = intensity, period = period, backoff = backoff,
    children = children,
  }, { name = spec.name or "supervisor" })
end

return M

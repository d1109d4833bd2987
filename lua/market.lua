-- market.lua: the Lua surface of market (DESIGN §4).
--
-- Actions are plain values made by the constructors below; a handler
-- returns them inside a transition, and straight-line code performs them
-- with market.perform.  A process's boot function, and each event after
-- it, runs on a coroutine that C (lua/lproc.c) resumes: the handler
-- itself for most events, else this file's dispatch, which hands the
-- event to the endpoint's handler.

local core = ...          -- the C half, passed by luaopen_market
local M = {}

local PRESENCE, ABSENCE, MESSAGE = core.PRESENCE, core.ABSENCE, core.MESSAGE
local SPAWNED, RESUME, DELETED = core.SPAWNED, core.RESUME, core.DELETED
local csend = core.send
local cwait                -- core.waits makes it, with market.yield (below)
local isyieldable = coroutine.isyieldable
local type, select, error, getmetatable, tostring =
  type, select, error, getmetatable, tostring

local PUB, SUB = 0, 1
local PARTICIPANT, OBSERVER, EVERYTHING = 0, 1, 2

-- Terms and records come from C.
for k, v in pairs(core.terms) do M[k] = v end
local _ = M._

-- ---- actions -------------------------------------------------------------

local Action = { __name = "market.action" }
function Action.__tostring(a) return "action " .. a.kind end

-- The actions made for every process (add, spawn, delete) are fixed
-- actions (lua/laction.c): userdata of one allocation, which cannot be
-- changed once made, holding their fields by position (a[1], a[2], ...:
-- add: name, orientation, interest, topic, handlers; spawn: boot, name,
-- k, nested, budget; delete: name, reason), and reading by name too.  A
-- field not given is nil or false, read by name as nil; none of them can
-- be false otherwise (a false reason means none), except a topic, which
-- is never left out.  Sends and quits are userdata too (below); other
-- actions are tables.
local function unchangeable()
  error("market.action: an action cannot be changed; make another", 2)
end
local FixedAction = { __name = "market.action", __newindex = unchangeable }
function FixedAction.__tostring(a) return "action " .. a.kind end

-- Sends and quits are userdata of their own (lua/laction.c), reading as
-- actions: laction.c gives this metatable their __index.
local SendAction = { __name = "market.action", __newindex = unchangeable }
function SendAction.__tostring(a) return "action " .. a.kind end

-- send(body), transition(state, action...) and transition_no_state(...)
-- are made in C (lua/laction.c), with these metatables: they are most of
-- what a process does per message.  So are the checks below, which Lua's
-- getmetatable would make slower than the rest of a spawn's bookkeeping.
local Transition = { __name = "market.transition" }
local fast = core.fastpath(Action, Transition, SendAction, FixedAction)
M.send = fast.send

local action, fixed, is_action, is_box = fast.action, fast.fixed, fast.is_action, fast.is_box
M.is_action = is_action

-- v checked as a term.  core.term raises from C, so its message would point
-- into this file ("market:94: subscriber topic: ..."); re-raise it at the
-- caller of the market.* function, named after it (misuse_spec).
local cterm = core.term
local function term(v, what)
  local tv = type(v)
  -- Atoms and boxes are terms as they are: no need to convert.
  if tv == "string" or tv == "number" or tv == "boolean" or tv == "nil" or
     tv == "userdata" and is_box(v) then
    return v
  end
  local ok, t = pcall(cterm, v, what)
  if ok then return t end
  error((tostring(t):gsub("^market:%d+: ", "")), 3)
end

function M.feedback(...)
  local n = select("#", ...)
  if n == 0 then error("market.feedback: a message body is required", 2) end
  if n > 1 then   -- as market.send (laction.c onebody)
    error(("market.feedback: one message body, got %d arguments (a topic and its data " ..
           "go in one term: a record or a sequence)"):format(n), 2)
  end
  return action { kind = "feedback", body = term((...), "market.feedback: body") }
end

-- An activation budget in ms (vm.h): a number >= 0, 0 for none.
local function check_budget(ms, fname, level)
  if ms ~= nil and (type(ms) ~= "number" or not (ms >= 0)) then
    error(fname .. ": max_activation must be a number of milliseconds >= 0 (0: no budget)", level + 1)
  end
  return ms
end

-- An options table holds only the keys in `keys` (a list, in the order
-- the error names them): a misspelt one ({nmae = ...}) was ignored
-- without a word, as a misspelt handler key is not.  The error is worded
-- as market.trace's (ltrace.c) and raised at `level`.
local function only_keys(opts, keys, fname, level)
  for key in next, opts do
    local known = false
    for i = 1, #keys do if keys[i] == key then known = true; break end end
    if not known then
      error(("%s: no option %s (%s)"):format(fname, tostring(key), table.concat(keys, ", ")),
            level + 1)
    end
  end
end

local NO_OPTS = {}
local SPAWN_KEYS = { "name", "k" }
local NESTED_KEYS = { "name", "k", "max_activation" }
local function check_opts(opts, fname, keys)
  if opts == nil then return NO_OPTS end
  if type(opts) == "string" then opts = { name = opts } end
  if type(opts) ~= "table" then
    error(fname .. ": options must be a table or a name, got " .. type(opts), 3)
  end
  only_keys(opts, keys, fname, 3)
  if opts.k ~= nil and type(opts.k) ~= "function" then
    error(fname .. ": the continuation k must be a function", 3)
  end
  -- Checked here, not when performed (inside market.lua then).
  local name = opts.name
  if name ~= nil and type(name) ~= "string" and type(name) ~= "number" then
    error(fname .. ": the name must be a string, got " .. type(name), 3)
  end
  check_budget(opts.max_activation, fname, 3)
  return opts
end

-- Text the C half keeps as a C string (a process's name, a log line),
-- with each NUL in it written as \0: there a NUL ended the text, and the
-- rest was lost.  Anything else as it is.
local function cstring(s)
  if type(s) == "string" and s:find("\0", 1, true) then return (s:gsub("\0", "\\0")) end
  return s
end

-- spawn(boot [, {name=, k=}]): boot runs in the new process; it returns a
-- transition (initial state and actions) or runs as straight-line code.
function M.spawn(boot, opts)
  if type(boot) ~= "function" then
    error("market.spawn: the boot argument must be a function, got " .. type(boot), 2)
  end
  -- A name alone: no options table to make and check (a server spawns a
  -- session so for every connection).
  if type(opts) == "string" then return fixed("spawn", boot, cstring(opts), false, false, false) end
  opts = check_opts(opts, "market.spawn", SPAWN_KEYS)
  return fixed("spawn", boot, cstring(opts.name) or false, opts.k or false, false, false)
end

-- nested_vm(boot [, opts]): spawn a VM whose first process runs boot.
function M.nested_vm(boot, opts)
  if type(boot) ~= "function" then
    error("market.nested_vm: the boot argument must be a function, got " .. type(boot), 2)
  end
  opts = check_opts(opts, "market.nested_vm", NESTED_KEYS)
  return fixed("spawn", boot, cstring(opts.name) or "nested-vm", opts.k or false, true,
               opts.max_activation or false)
end

-- quit([pid [, reason]]): quit this process, or kill pid.  Made in C
-- (lua/laction.c), as send is: processes are killed one by one in loops.
M.quit = fast.quit

-- The endpoint constructors are made in C (lua/laction.c): one runs for
-- every endpoint a process adds.  A process without handlers, or with only
-- a name, shares this table (market.lua never writes into handler tables).
local NO_HANDLERS = {}
local function endpoint(fname, orientation, interest)
  return fast.endpoint("market." .. fname, orientation, interest, NO_HANDLERS)
end

M.publisher = endpoint("publisher", PUB, PARTICIPANT)
M.subscriber = endpoint("subscriber", SUB, PARTICIPANT)
-- Observing subscribers means taking the publisher side, and vice versa.
M.observe_subscribers = endpoint("observe_subscribers", PUB, OBSERVER)
M.observe_publishers = endpoint("observe_publishers", SUB, OBSERVER)
M.observe_subscribers_everything = endpoint("observe_subscribers_everything", PUB, EVERYTHING)
M.observe_publishers_everything = endpoint("observe_publishers_everything", SUB, EVERYTHING)

function M.delete_endpoint(name, reason)
  if type(name) ~= "string" then error("market.delete_endpoint: name must be a string", 2) end
  if name:find("\0", 1, true) then
    error("market.delete_endpoint: name must not contain a NUL byte", 2)
  end
  return fixed("delete", name,
               reason ~= nil and term(reason, "market.delete_endpoint: reason") or false)
end

-- exit([status]): end the whole program with status (an integer 0..255,
-- default 0), from any VM: this process quits at once, and then every
-- process is killed with the reason "exit" (docs/semantics.md, "Ending the
-- program").  It needs no at_meta_level, and cannot go inside one.
function M.exit(status)
  if status == nil then status = 0 end
  local s = math.type(status) and math.tointeger(status)
  if not s or s < 0 or s > 255 then
    error("market.exit: the status must be an integer 0..255, got " ..
          (type(status) == "number" and tostring(status) or type(status)), 2)
  end
  return fixed("exit", s)
end

-- No VM is more than NEST_MAX levels deep (vm.h, MK_NEST_MAX), so an
-- action wrapped deeper could never be performed: it is refused here.
-- 100,000 levels crashed the program (freed recursively, in C) and took
-- time as the square of the depth to perform.
local NEST_MAX = core.NEST_MAX

function M.at_meta_level(...)
  local n = select("#", ...)
  local list = { ... }
  local depth = 1
  for i = 1, n do
    local a = list[i]
    if not is_action(a) then
      error("market.at_meta_level: argument " .. i .. " is not an action", 2)
    end
    if a.kind == "meta" and a.depth >= depth then depth = a.depth + 1 end
  end
  if depth > NEST_MAX then
    error(("market.at_meta_level: nested more than %d levels deep (no VM is)"):format(NEST_MAX), 2)
  end
  return action { kind = "meta", n = n, list = list, depth = depth }
end

-- ---- transitions ---------------------------------------------------------

M.transition = fast.transition
M.transition_no_state = fast.transition_no_state
function M.is_transition(v) return getmetatable(v) == Transition and type(v) == "userdata" end

-- ---- performing ----------------------------------------------------------

local perform

-- A process's context, ctx, is one table (made by lproc.c at spawn): the
-- handler tables of its endpoints (level 0) under their names, which are
-- strings, and everything else under the integer keys below, made when
-- first needed.  One table rather than a context holding an endpoint
-- table: every table a process keeps is the collector's work for as long
-- as it lives (issue 10).  STATE (lproc.c, laction.c) holds the state,
-- and the boot function until the boot event.
local STATE = core.CTX_STATE
local METAS = core.CTX_METAS -- [level]: the handlers of endpoints `level` VMs up
local AT_RETURN = core.CTX_AT_RETURN   -- (lproc.c's: sys.at_return)
local GONE = AT_RETURN + 1  -- [level]: those kept for deleted endpoints' own absences
local CONTS = AT_RETURN + 2 -- continuations by id, and the last id given
local NEXTCONT = AT_RETURN + 3
local ANON = AT_RETURN + 4  -- anonymous endpoints named so far
local BACKLOG = AT_RETURN + 5   -- events kept for market.yield()
local MONITORS = AT_RETURN + 6  -- [monitor's endpoint name]: how many peers it sees

-- ctx[field][level], a table made when first needed (METAS, GONE).
local function per_level(ctx, field, level)
  local t = ctx[field]
  if not t then t = {}; ctx[field] = t end
  local m = t[level]
  if not m then m = {}; t[level] = m end
  return m
end

-- The same, or nil when there is none yet.
local function at_level(ctx, field, level)
  local t = ctx[field]
  return t and t[level]
end

local function endpoints_at(ctx, level)
  if level == 0 then return ctx end
  return per_level(ctx, METAS, level)
end

local function register_cont(ctx, k)
  local id = (ctx[NEXTCONT] or 0) + 1
  ctx[NEXTCONT] = id
  local conts = ctx[CONTS]
  if not conts then conts = {}; ctx[CONTS] = conts end
  conts[id] = k
  return id
end

local handler_tag = fast.handler_tag

local function perform_one(ctx, a, level)
  local kind = a.kind
  if kind == "send" then
    csend(a.body, level)
  elseif kind == "add" then
    -- Its fields by position (FixedAction; laction.c, f_addendpoint).
    local name = a[1]
    if not name then
      local n = (ctx[ANON] or 0) + 1
      ctx[ANON] = n
      name = "#" .. n
    end
    local h = a[5]
    endpoints_at(ctx, level)[name] = h
    -- Which handlers exist, for C to skip events nobody takes (lproc.c).
    core.add(name, a[2], a[3], a[4], level, handler_tag(h))
  elseif kind == "delete" then
    local eps, name = endpoints_at(ctx, level), a[1]
    local h = eps[name]
    eps[name] = nil
    -- As in Marketplace, the endpoint hears its own absences, one per peer
    -- it could see, after this handler; its on_absence is kept aside for
    -- them until DELETED says they are all in (dispatch).
    if core.delete(name, a[2] or nil, level) and h and h.on_absence then
      local g = per_level(ctx, GONE, level)
      local kept = g[name]
      if kept then kept.h, kept.n = h, kept.n + 1 else g[name] = { h = h, n = 1 } end
    end
  elseif kind == "feedback" then
    core.feedback(a.body, level)
  elseif kind == "spawn" then
    local id = 0
    -- At meta level, k gets the new pid in the VM above (as in Marketplace).
    if a[3] then id = register_cont(ctx, a[3]) end
    return core.spawn(a[1], a[2] or nil, id, level, a[4], a[5] or nil)
  elseif kind == "quit" then
    return core.quit(a[1] or nil, a[2] or nil, level)
  elseif kind == "link" then
    return core.link(a.pid, a.who, level)
  elseif kind == "yield" then
    if level > 0 then error("market.yield: cannot be performed at meta level", 0) end
    core.yield(register_cont(ctx, a.k))
  elseif kind == "exit" then
    if level > 0 then
      error("market.exit: cannot be performed at meta level (it ends the program from any VM)", 0)
    end
    core.exit(a[1])
  elseif kind == "meta" then
    for i = 1, a.n do perform(ctx, a.list[i], level + 1) end
  end
end

function perform(ctx, a, level)
  if is_action(a) then return perform_one(ctx, a, level) end
  if type(a) == "table" then
    for i = 1, #a do perform(ctx, a[i], level) end
  end
end

-- Sends are applied in C; the first other action and all after it here.
local action_at = fast.action_at
local function perform_each(ctx, a)
  if is_action(a) then perform_one(ctx, a, 0)
  elseif a then perform(ctx, a, 0) end
end

-- Actions i..n of transition tr, which C (fast.apply) left to perform here.
local function rest(ctx, tr, i, n)
  for j = i, n do perform_each(ctx, action_at(tr, j)) end
end

-- apply(ctx, tr): apply the transition a handler returned (nil: none):
-- capply, then rest for what it left, in C (laction.c, f_apply_all).
local apply = fast.make_apply(rest)

local function current(fname)
  local ctx = core.current()
  if not ctx then
    error(core.outside(fname), 3)
  end
  return ctx
end

-- perform(action...): straight-line code does what the actions say, now.
-- Returns the pid of each spawn, in order.  market.perform is C (laction.c)
-- and does a lone send, quit, named add or plain spawn itself; it calls this for
-- everything else, so the errors here name the caller two levels up, past
-- the C function.
local function perform_rest(a1, ...)
  local ctx = core.current()
  if not ctx then error(core.outside("perform"), 3) end
  local nargs = select("#", ...)
  if nargs == 0 then         -- one action: without garbage
    if not is_action(a1) then error("market.perform: argument 1 is not an action", 3) end
    local r = perform_one(ctx, a1, 0)
    if a1.kind == "spawn" then return r end
    return
  end
  local pids, n = {}, 0
  for i = 1, nargs + 1 do
    local a = i == 1 and a1 or select(i - 1, ...)
    if not is_action(a) then
      error("market.perform: argument " .. i .. " is not an action", 3)
    end
    local r = perform_one(ctx, a, 0)
    if a.kind == "spawn" then n = n + 1; pids[n] = r end
  end
  return table.unpack(pids, 1, n)
end
M.perform = fast.make_perform(perform_rest)

-- ---- events --------------------------------------------------------------

-- role(o, i, topic): the table a handler gets, from an event's fields.
local role = core.role

-- The handler tables of the endpoints at a level, if any.
local function handlers_at(ctx, level)
  if level == 0 then return ctx end
  return at_level(ctx, METAS, level)
end

-- The handlers kept for a deleted endpoint's own absences (perform_one).
local function kept(ctx, level, name)
  local g = at_level(ctx, GONE, level)
  return g and g[name], g
end

-- h[field], endpoint name's handler: nil or false (none, or refused) or a
-- function (or what has a __call).  Anything else was put in the table
-- after the endpoint was added (its constructor checked it then): the
-- process ends saying so, not with Lua's "attempt to call a string value"
-- in this file.
local function handler(h, field, name)
  local fn = h[field]
  if fn and type(fn) ~= "function" then
    local mt = getmetatable(fn)
    if not (type(mt) == "table" and mt.__call) then
      error(("handler %s of endpoint %q is not a function (nor false), got a %s")
            :format(field, tostring(name), type(fn)), 0)
    end
  end
  return fn
end

-- Run the handler for one event; false when no handler wants it.
local function dispatch(ctx, kind, a, b, c, d, e, f, g)
  if kind == MESSAGE then
    local eps = b == 0 and ctx or handlers_at(ctx, b)    -- (handlers_at, without its call)
    local h = eps and eps[a]
    local fn = h and handler(h, "on_message", a)
    if not fn then return fn == false end    -- false: refused, never kept
    apply(ctx, fn(ctx[STATE], c, a))
    return true
  elseif g then
    -- A deleted endpoint's own absence goes to its on_absence only, with
    -- true after the endpoint's name; straight-line code waiting in
    -- market.yield() never sees one (it would pile up in wait_for's
    -- backlog, a timer.sleep at a time).
    local k = kept(ctx, b, a)
    local fn = k and handler(k.h, "on_absence", a)
    if fn then apply(ctx, fn(ctx[STATE], role(c, d, e), f, a, true)) end
    return true
  elseif kind == DELETED then
    local k, level = kept(ctx, b, a)
    if k then
      k.n = k.n - 1
      if k.n == 0 then level[a] = nil end
    end
    return true
  elseif kind == PRESENCE or kind == ABSENCE then
    local eps = handlers_at(ctx, b)
    local h = eps and eps[a]
    if not h then return true end          -- endpoint gone: nobody to tell
    if kind == PRESENCE then
      local fn = handler(h, "on_presence", a)
      if not fn then return fn == false end
      apply(ctx, fn(ctx[STATE], role(c, d, e), a))
    else
      local fn = handler(h, "on_absence", a)
      if not fn then return fn == false end
      apply(ctx, fn(ctx[STATE], role(c, d, e), f, a))
    end
    return true
  elseif kind == SPAWNED or kind == RESUME then
    local conts = ctx[CONTS]
    local k = conts and conts[a]
    if k then conts[a] = nil end
    if k then
      if kind == SPAWNED then apply(ctx, k(ctx[STATE], b)) else apply(ctx, k(ctx[STATE])) end
    end
    return true
  end
  return true
end

local KIND = { [PRESENCE] = "presence", [ABSENCE] = "absence", [MESSAGE] = "message" }

local function event_table(kind, a, b, c, d, e, f)
  if kind == MESSAGE then
    return { type = "message", endpoint = a, meta = b, message = c }
  end
  return { type = KIND[kind], endpoint = a, meta = b, role = role(c, d, e), reason = f }
end

-- yield(k): the action "run everything pending, then k(state)".
-- yield():  straight-line code waits for the next event that no handler
--           takes, and returns it as a table {type=, endpoint=, message=,
--           role=, reason=, meta=}.
-- wait_for(pred): straight-line code waits for the first event for which
-- pred(event) is true and returns it; the events passed over meanwhile are
-- kept, in order, for the next market.yield() calls.
-- wait_until(cond [, ms]): straight-line code waits until cond() returns
-- a true value, and returns it.  cond is tried at once, then after every
-- event the process gets, handled or not: what it reads is what the
-- process's handlers change.  nil, "timeout" when ms went by first.
-- Events no handler takes meanwhile are kept for market.yield(), as
-- pause keeps them.
--
-- All three are C (lproc.c, await): a process that waits keeps its coroutine's
-- stack, and a frame of this file's under the wait would cost it twice its
-- size.  These are their Lua parts: the action, and the events kept.
local function yield_action(k)
  return action { kind = "yield", k = k }
end

-- keep(ctx, ev): an event no handler took, for market.yield().  A process
-- that waits for something else keeps them without bound, and may never
-- ask for them: a warning at KEPT_WARN of them and at every tenfold
-- after, naming the endpoint of the last.
local KEPT_WARN = 10000
local function keep(ctx, ev)
  local backlog = ctx[BACKLOG]
  if not backlog then backlog = { first = 1, last = 0 }; ctx[BACKLOG] = backlog end
  backlog.last = backlog.last + 1
  backlog[backlog.last] = ev
  local n = backlog.last - backlog.first + 1
  if n >= (backlog.warn or KEPT_WARN) then
    backlog.warn = n * 10
    M.log.warn("%d events kept for market.yield(), the last for endpoint %s: take them, " ..
               "or refuse them with a handler false", n, ev.endpoint)
  end
end

-- The oldest event kept, or nil.
local function unkeep(ctx)
  local backlog = ctx[BACKLOG]
  if backlog and backlog.first <= backlog.last then
    local ev = backlog[backlog.first]
    backlog[backlog.first] = nil
    backlog.first = backlog.first + 1
    return ev
  end
end
M.yield, M.wait_for, M.wait_until, cwait = core.waits(yield_action, unkeep, keep)

-- pause(): straight-line code lets the VM run everything now pending (the
-- yield action), then goes on.  Events no handler takes meanwhile are kept
-- for market.yield().  cwait() returns after every event, the event's
-- table if no handler took it.
function M.pause()
  local ctx = current("pause")
  -- Before the yield action: its continuation must not outlive a pause
  -- that cannot wait (market.yield's check in C says the same).
  if not isyieldable() then error(core.nowait("pause"), 2) end
  local done = false
  core.yield(register_cont(ctx, function() done = true end))
  while not done do
    local ev = cwait()
    if ev then keep(ctx, ev) end
  end
end

-- The state of the running process (straight-line code may set it too).
function M.state() return current("state")[STATE] end
function M.set_state(s) current("set_state")[STATE] = s end

-- pid, name, VM path of the running process.
function M.self() current("self"); return core.self() end

-- A process runs one activation at a time, each on a coroutine C lends it
-- (lproc.c): its boot function for the boot event and the handler itself
-- for a message, presence or absence at level 0 (each followed by apply,
-- for the transition it returns, when it does not hold sends alone, which
-- C applies, or by rest for what C left of it), and dispatch for any
-- other event that finds it idle.  Only
-- straight-line code waiting in market.yield() keeps a coroutine between
-- events.
core.init(apply, rest, dispatch, event_table)

-- A drain time in ms: a finite number, 0 or more (nil: none given).
-- level: where the error points (default 3: the caller of fname).
local function check_drain(ms, fname, level)
  if ms ~= nil and (type(ms) ~= "number" or not (ms >= 0) or ms == math.huge) then
    error(fname .. ": the drain time must be a number of milliseconds, 0 or more, got "
          .. tostring(ms), level or 3)
  end
  return ms
end

-- The options of ground_vm and open_ground_vm checked, and the boot
-- function that starts the drivers first when asked.
local GROUND_KEYS = { "drivers", "trace", "drain", "max_activation", "on_crash" }
local function ground_boot(boot, opts, fname)
  if type(boot) ~= "function" then
    error(fname .. ": the boot argument must be a function, got " .. type(boot), 3)
  end
  opts = opts or {}
  if type(opts) ~= "table" then
    error(fname .. ": options must be a table, got " .. type(opts), 3)
  end
  only_keys(opts, GROUND_KEYS, fname, 3)
  check_budget(opts.max_activation, fname, 3)
  check_drain(opts.drain, fname, 4)
  if opts.on_crash ~= nil and type(opts.on_crash) ~= "function" then
    error(fname .. ": on_crash must be a function, got " .. type(opts.on_crash), 3)
  end
  if not opts.drivers then return boot, opts end
  return function(pid)
    for _, name in ipairs { "timer", "tcp", "udp" } do
      local d = require("market." .. name)
      M.perform(M.spawn(d.driver, { name = name .. "-driver" }))
    end
    -- "Already running" (DESIGN §4): let the drivers boot and subscribe
    -- before the script runs, or its first timer.set (say) is sent to
    -- nobody and lost (no buffering).  interpreter_spec.
    M.pause()
    return boot(pid)
  end, opts
end

-- trace(opts | true | false): which lines the program's trace shows, from
-- now on, in every VM: opts = {pid=, name=, vm=, kind=, topic=, format=,
-- file=} (docs/inspect.md, "Traces"); true: every line; false: none.
-- Returns true, or nil and why when the file cannot be opened.
M.trace = core.trace

-- ground_vm(boot [, {drivers=, trace=, drain=, max_activation=, on_crash=}]): run a
-- ground VM until it has nothing left to do.  Returns true, or nil and the
-- boot failure's traceback.  trace: what trace() takes.  max_activation:
-- the CPU ms one activation of a handler may take (default 1000; 0: no
-- budget; docs/limits.md).  With drain (ms), SIGINT and SIGTERM stop it gracefully
-- (docs/semantics.md, "Stopping"); a second signal ends the stop at once,
-- and ground_vm then returns nil, "stopped by a second signal", 128 + signum.
-- on_crash(report): told of every process failure instead of the report
-- printed to stderr (docs/inspect.md, "Crash reports").
function M.ground_vm(boot, opts)
  local start
  start, opts = ground_boot(boot, opts, "market.ground_vm")
  return core.ground_vm(start, opts.trace, opts.drain, opts.max_activation, opts.on_crash)
end

-- open_ground_vm(boot [, opts]): the same ground VM (same options), not
-- run: the caller drives it from a loop of its own with g:step(timeout),
-- g:pollfd(), g:events(), g:timeout() (a cqueues controller's methods,
-- in seconds) and ends it with g:close().  docs/loops.md.
function M.open_ground_vm(boot, opts)
  local start
  start, opts = ground_boot(boot, opts, "market.open_ground_vm")
  return core.open_ground_vm(start, opts.trace, opts.drain, opts.max_activation, opts.on_crash)
end

-- stop([drain_ms]): begin a graceful stop of the whole program, as SIGTERM
-- does (default drain: the one set for signals, else 5000 ms).  Processes
-- see market.ground.stopping(deadline_ms) appear at once; nothing is
-- killed before the drain ends.  A stop under way is left as it is.
function M.stop(drain_ms)
  if not core.stop(check_drain(drain_ms, "market.stop")) then
    error("market.stop: no ground VM is running", 2)
  end
end

-- ---- lifelines and monitors (docs/supervision.md) ------------------------

-- Subscribing to lifeline(pid) makes the VM publish it from that process
-- until the process ends (runtime/vm.h, "Lifelines"): its absence, with
-- the process's reason, is how others learn of its end.  The record type
-- is declared when first used, not at load: one declared at load changed
-- the instructions of every message of bench-callgrind's (a table keyed
-- by record types, whose chains it lengthened), in programs that never
-- use it.  M.lifeline reads like its constructor, as market.ground's do.
local lifeline_type
local function lifeline_rec()
  if not lifeline_type then lifeline_type = M.record("market:lifeline", "pid") end
  return lifeline_type
end
local function lifeline(pid) return lifeline_rec()(pid) end
M.lifeline = setmetatable({ is = function(_self, v) return lifeline_rec():is(v) end }, {
  __index = function(_self, k) return lifeline_rec()[k] end,
  __tostring = function() return tostring(lifeline_rec()) end,
  __call = function(_self, ...)
    local n = select("#", ...)
    if n ~= 1 then error(("market.lifeline takes 1 field, got %d"):format(n), 2) end
    return lifeline((...))
  end,
})

-- link(pid [, who]): who (default: the process that performs it) ends when
-- pid does, whatever the reason, with the reason "linked process <pid>
-- ended: <reason>" (runtime/vm.h, "Links").  One way, made on pid's
-- lifeline: nothing is added to pid, and the link does not keep who alive.
local function check_pid(v, what)
  local pid = type(v) == "number" and math.tointeger(v)   -- 3.0 is 3 (§9)
  if not pid then
    error(("market.link: %s must be an integer pid, got %s"):format(what,
          type(v) == "number" and tostring(v) or type(v)), 3)
  end
  return pid
end
function M.link(pid, who)
  pid = check_pid(pid, "pid")
  if who ~= nil then who = check_pid(who, "who") end
  return action { kind = "link", pid = pid, who = who }
end

local monitors = 0    -- names given to anonymous monitors, in this Lua state

-- monitor(pid_or_pattern, on_down [, opts]): an endpoint action that turns
-- the end of a process (an integer pid: its lifeline) or of a conversation
-- (a pattern: its publishers, or its subscribers with opts.subscribers)
-- into one call, on_down(state, reason, role), when the last peer it saw
-- goes; the monitor then deletes itself.  opts: a name, or {name=,
-- subscribers=}.  The count of peers lives in the monitoring process's
-- context, so one monitor action may be performed by many processes.
local MONITOR_KEYS = { "name", "subscribers" }
function M.monitor(target, on_down, opts)
  if type(on_down) ~= "function" then
    error("market.monitor: on_down must be a function, got " .. type(on_down), 2)
  end
  if type(opts) == "string" then opts = { name = opts } end
  if opts ~= nil and type(opts) ~= "table" then
    error("market.monitor: options must be a table or a name, got " .. type(opts), 2)
  end
  opts = opts or NO_OPTS
  only_keys(opts, MONITOR_KEYS, "market.monitor", 2)
  local name = opts.name
  if name == nil then
    monitors = monitors + 1
    name = "monitor#" .. monitors
  elseif type(name) ~= "string" then
    error("market.monitor: the name must be a string, got " .. type(name), 2)
  elseif name:find("\0", 1, true) then
    error("market.monitor: the name must not contain a NUL byte", 2)
  end
  if opts.subscribers ~= nil and type(opts.subscribers) ~= "boolean" then
    error("market.monitor: subscribers must be true or false, got " .. type(opts.subscribers), 2)
  end
  local observe, topic = M.observe_publishers, nil
  local pid = type(target) == "number" and math.tointeger(target)   -- 3.0 is 3 (§9)
  if pid then
    if opts.subscribers then
      error("market.monitor: a pid's lifeline has no subscribers to watch", 2)
    end
    topic = lifeline(pid)
  else
    topic = term(target, "market.monitor: pattern")
    if opts.subscribers then observe = M.observe_subscribers end
  end
  local function seen(d)
    local ctx = current("monitor")
    local counts = ctx[MONITORS]
    if not counts then counts = {}; ctx[MONITORS] = counts end
    local n = (counts[name] or 0) + d
    counts[name] = n > 0 and n or nil
    return n
  end
  return observe(topic, {
    name = name,
    -- An observer gets the conversation's messages (or feedback) too:
    -- refused, or a waiting process would keep each for market.yield().
    on_message = false,
    on_presence = function() seen(1) end,
    on_absence = function(state, role, reason, _, deleted)
      -- Its own deletion tells it of each peer it saw: not an end.
      if seen(-1) > 0 or deleted then return end
      M.perform(M.delete_endpoint(name))
      return on_down(state, reason, role)
    end,
  })
end

-- supervisor(spec): a spawn action for a supervisor process (lua/supervisor.lua,
-- loaded when first used).
function M.supervisor(spec)
  return require("market.supervisor").supervisor(spec)
end

M.now = core.now
-- monotonic(): ms on a clock that setting the wall clock does not move
-- (its origin is arbitrary: for deadlines and durations, not dates).
M.monotonic = core.monotonic
-- memory(): bytes of heap in use by the whole program (C and Lua), for
-- benchmarks and leak hunting.
M.memory = core.memory
-- memory_limit([bytes]): the memory limit (market --max-memory) or nil,
-- and the bytes it counts; with bytes (0 or false: none), set first.
M.memory_limit = core.memory_limit

-- Ground events (see runtime/ground.h): subscribe to these in the ground VM
-- (or through an event relay) to hear of operating-system readiness.  The
-- ground publishes each watched record: its absence, with a reason, says
-- that the watch failed (a descriptor that is not open, say).
--
-- The constructors reject what can never be watched (a negative or
-- fractional descriptor, NaN, a signal out of range) at the caller's line,
-- and take the wildcard.  Whether a descriptor is open is found out by the
-- ground, when the subscription starts the watch.  Records built by hand
-- (market.record("market:readable", "fd")(-1)) are checked there too.
local INT_MAX, NSIG, SIGKILL, SIGSTOP = core.INT_MAX, core.NSIG, core.SIGKILL, core.SIGSTOP

local function integer_in(v, lo, hi)
  local i = type(v) == "number" and math.tointeger(v)
  return i and i >= lo and i <= hi and i
end

local ground_checks = {
  readable = function(v)
    if not integer_in(v, 0, INT_MAX) then return "the fd must be an integer 0.." .. INT_MAX end
  end,
  alarm = function(v)
    if type(v) ~= "number" or v ~= v or v == math.huge or v == -math.huge then
      return "msecs must be a finite number"
    end
  end,
  signal = function(v)
    local i = integer_in(v, 1, NSIG - 1)
    if not i or i == SIGKILL or i == SIGSTOP then
      return ("signum must be an integer 1..%d other than SIGKILL (%d) and SIGSTOP (%d)")
        :format(NSIG - 1, SIGKILL, SIGSTOP)
    end
  end,
  stopping = function(v)
    if type(v) ~= "number" then return "deadline_ms must be a number" end
  end,
}
ground_checks.writable = ground_checks.readable
ground_checks.monotonic_alarm = ground_checks.alarm

-- A constructor that checks its field first, and otherwise reads like the
-- record constructor (label, arity, fields, is).
local function ground_event(kind, field)
  local rec = M.record("market:" .. kind, field)
  local fname, check = "market.ground." .. kind, ground_checks[kind]
  return setmetatable({ is = function(_self, v) return rec:is(v) end }, {
    __index = rec,
    __tostring = function() return tostring(rec) end,
    __call = function(_self, ...)
      local n, v = select("#", ...), ...
      if n ~= 1 then error(("%s takes 1 field, got %d"):format(fname, n), 2) end
      local problem = v ~= _ and check(v)
      if problem then
        error(("%s: %s (or market._), got %s"):format(fname, problem,
          type(v) == "number" and tostring(v) or type(v)), 2)
      end
      return rec(v)
    end,
  })
end

M.ground = {
  readable = ground_event("readable", "fd"),
  writable = ground_event("writable", "fd"),
  alarm = ground_event("alarm", "msecs"),
  monotonic_alarm = ground_event("monotonic_alarm", "msecs"),
  signal = ground_event("signal", "signum"),
  stopping = ground_event("stopping", "deadline_ms"),
}
M.PUBLISHER, M.SUBSCRIBER = "publisher", "subscriber"
M.VERSION = core.VERSION
-- {index = i, count = N}: worker i of `market --workers N` (lua/lmarket.c;
-- docs/workers.md); 1 of 1 otherwise.
M.worker = core.worker

-- log.error(fmt, ...), log.warn, log.info, log.debug: one line each,
-- string.format(fmt, ...) (fmt alone: tostring(fmt)), prefixed with the
-- time, the level and the process; log.level([name]) -> the threshold
-- (before a change); log.sink(f|nil): f(level, line, message) gets every
-- line instead of stderr (docs/inspect.md, "Logging").
M.log = { level = core.log_level, sink = core.log_sink }
for level, name in ipairs { "error", "warn", "info", "debug" } do
  level = level - 1
  M.log[name] = function(fmt, ...)
    if level > core.log_threshold() then return end
    local msg
    if select("#", ...) > 0 then
      if type(fmt) ~= "string" then
        error("market.log." .. name .. ": the format must be a string, got " .. type(fmt), 2)
      end
      -- A format that does not fit its arguments is the caller's error,
      -- at the caller's line, counted as log's arguments are.
      local ok, m = pcall(string.format, fmt, ...)
      if not ok then
        error("market.log." .. name .. ": " .. (tostring(m):gsub(" to '[%w_.]*format'", "", 1)), 2)
      end
      msg = m
    else
      msg = tostring(fmt)
    end
    core.log(level, type(fmt) == "string" and fmt or nil, cstring(msg))
  end
end

-- snapshot() -> the VM tree as it is now, with the drivers' resources;
-- snapshot_json([snap]) -> it as JSON text (lua/lsnap.c; docs/inspect.md,
-- "Snapshots").  C functions: closures here cost every spawn some
-- hundreds of instructions (bench-callgrind), by the collector's pace.
-- inspect_detail([on]) -> the setting before: detail mode (lua/lsnap.c;
-- docs/inspect.md, "Detail mode").  ring{pid=, name=, vm=, kind=, topic=,
-- size=}: the last `size` trace lines (JSON) that pass the filter, while
-- open: ring:read(), ring:close() (lua/ltrace.c; docs/inspect.md, "Rings").
M.snapshot, M.snapshot_json, M.inspect_detail, M.ring = core.snapshot, core.snapshot_json,
  core.inspect_detail, core.ring

return M

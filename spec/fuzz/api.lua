-- spec/fuzz/api.lua: the Lua half of the fuzz_api target (fuzz_api.c).
--
-- The boot process of a ground VM reads the fuzzer's input (the global
-- FUZZ) as a program: every byte picks what to do next, so the same input
-- always makes the same calls.  It calls every market.* function with
-- hostile values (non-terms, NaN, huge and negative numbers, NUL bytes,
-- cyclic and deep tables, deep records, record constructors of every
-- arity, ground-event records with bad fields), performs the actions it
-- gets, spawns processes, nested VMs and supervisors whose boots and
-- handlers are more of the same program, links and monitors them, returns
-- garbage from handlers, raises errors with odd values, yields where it
-- must not, and resumes or closes coroutines of other processes, waiting
-- or ended.  Errors are expected: every call is
-- protected.  What must never happen is what the harness catches: a crash,
-- a sanitizer report, a hang, a leak.
--
-- Every handler consumes input, so a program ends when its bytes do:
-- nothing here loops on its own.
local market = require "market"
local data, pos = FUZZ or "", 0
FUZZ = nil

local function byte()
  pos = pos + 1
  return data:byte(pos)
end
local function left() return pos < #data end
local function pick(t) return t[(byte() or 0) % #t + 1] end

local recs = {
  market.record("f0"), market.record("f1", "a"), market.record("f2", "a", "b"),
  market.record("f3", "a", "b", "c"),
}
local ground = { "readable", "writable", "alarm", "signal" }

local atoms = {
  false, true, 0, 1, -1, 2, 10, 65, 2 ^ 31, 2 ^ 53, -2 ^ 63, math.maxinteger,
  math.mininteger, 0.5, -0.0, 3.5, 1 / 0, -1 / 0, 0 / 0, 1e300, "", "a", "b",
  "a\0b", ("x"):rep(300), market._, market.EOF, print, io.stdout,
  coroutine.create(print), recs[1], recs[3],
}

local value, handlers, action, step

local depth = 0
function value()
  local b = byte()
  if b == nil or b % 16 == 0 then return nil end
  local k = b % 16
  if k <= 7 or depth > 5 then return pick(atoms) end
  depth = depth + 1
  local v
  if k <= 10 then                           -- a record, maybe of non-terms
    local rt = pick(recs)
    local args = {}
    for i = 1, rt.arity do args[i] = value() end
    local ok, r = pcall(rt, table.unpack(args, 1, rt.arity))
    v = ok and r or args[1]
  elseif k <= 12 then                       -- a table: a sequence, with holes, or keyed
    local t = {}
    for i = 1, (byte() or 0) % 5 do t[i] = value() end
    if k == 12 and left() then t[pick { "x", 0, 1.5 }] = value() end
    v = t
  elseif k == 13 then                       -- deep, or doubled by sharing: past the limits
    local inner, double = value(), (byte() or 0) % 2 == 0
    for _ = 1, (byte() or 0) * 8 do           -- up to 2040 levels
      local ok, r
      if double then ok, r = pcall(recs[3], inner, inner) else ok, r = pcall(recs[2], inner) end
      if not ok then break end
      inner = r
    end
    v = inner
  elseif k == 14 then                       -- a ground event, fields as they come
    local ok, r = pcall(market.ground[pick(ground)], value())
    v = ok and r or nil
  else                                      -- a cycle
    local t = {}
    t[1] = t
    v = t
  end
  depth = depth - 1
  return v
end

-- Endpoint names collide often, so roles get re-added, equal or not.
local function name() return pick { "a", "b", "#1", "x/1", "", value() } end
local function pid() return pick { 0, 1, 2, 3, -1, 2 ^ 40, 1.5, value() } end

local function program(...) return step(...) end
local function cont(...) return step(...) end

-- Coroutines the program came across (its own, and the processes' own,
-- from coroutine.running()), for any process to resume or close later:
-- waiting, ended, pooled or running.
local threads = {}
local function thread() return threads[(byte() or 0) % (#threads + 1)] end

local function opts()
  return pick {
    nil, "name", { name = "n" }, { k = cont }, { name = value(), k = cont },
    { max_activation = 5 }, { max_activation = value() }, { k = 5 }, 7,
  }
end

function handlers()
  local h = {}
  local b = byte() or 0
  if b & 1 ~= 0 then h.on_message = program end
  if b & 2 ~= 0 then h.on_presence = program end
  if b & 4 ~= 0 then h.on_absence = program end
  if b & 8 ~= 0 then h.name = name() end
  if b & 16 ~= 0 then h[pick { "bogus", 1 }] = program end
  if b & 32 ~= 0 then return pick { "named", 5, true } end
  return h
end

local makers = {
  function() return market.send(value()) end,
  function() return market.feedback(value()) end,
  function() return market.publisher(value(), handlers()) end,
  function() return market.subscriber(value(), handlers()) end,
  function() return market.observe_publishers(value(), handlers()) end,
  function() return market.observe_subscribers(value(), handlers()) end,
  function() return market.observe_publishers_everything(value(), handlers()) end,
  function() return market.observe_subscribers_everything(value(), handlers()) end,
  function() return market.delete_endpoint(name(), value()) end,
  function() return market.quit(pid(), value()) end,
  function() return market.quit() end,
  function() return market.spawn(program, opts()) end,
  function() return market.nested_vm(program, opts()) end,
  function() return market.spawn(value(), opts()) end,
  function() return market.yield(cont) end,
  function() return market.yield(value()) end,
  function() return market.at_meta_level(action(), action()) end,
  function() return market.at_meta_level(action()) end,
  function() return market.link(pid(), pick { nil, pid() }) end,
  function() return market.monitor(pick { pid(), value() }, program, pick { nil, "m", { subscribers = true }, value() }) end,
  function() return market.subscriber(market.lifeline(pid()), handlers()) end,
  function() return market.observe_publishers(market.lifeline(pid()), handlers()) end,
  function()
    return market.supervisor { strategy = pick { nil, "one_for_all", value() },
      intensity = pick { nil, 0, 2, value() }, period = pick { nil, 0.01, value() },
      backoff = pick { nil, 1, { initial = 1, max = 2 }, value() },
      children = { { id = pick { "a", 1, value() }, start = program, restart = pick { nil, "transient", "temporary", value() } },
                   pick { nil, { id = "b", start = market.spawn(program) }, value() } } }
  end,
  function() return market.transition(value(), action()) end,
  function() return value() end,            -- not an action at all
}

function action()
  if not left() then return nil end
  local ok, a = pcall(pick(makers))
  if ok then return a end
  return nil
end

-- Straight-line calls; each is protected by the caller.
local calls = {
  function() market.perform(action()) end,
  function() market.perform(action(), action(), action()) end,
  function() market.pause() end,
  function() market.yield() end,
  function() market.wait_for(function() return (byte() or 0) % 2 == 0 end) end,
  function() market.wait_for(value()) end,
  function() market.set_state(value()) end,
  function() return market.state() end,
  function() return market.self() end,
  function() return market.repr(value()) end,
  function() return market.unify(value(), value()) end,
  function() return market.from_cbor(market.to_cbor(value())) end,
  function() return market.from_cbor(value()) end,
  function()                               -- the next bytes as CBOR, after the version tag
    local n = byte() or 0
    local s = data:sub(pos + 1, pos + n)
    pos = pos + n
    return market.from_cbor("\xda\x6d\x6b\x00\x00\x82\x01" .. s)
  end,
  function() return market.is_term(value()) end,
  function() return market.is_action(value()) end,
  function() return market.is_transition(value()) end,
  function() return tostring(value()) end,
  function() return value() == value() end,
  function() local v = value(); return v[value()] end,
  function() local v = value(); v[value()] = value() end,
  function() return #value() end,
  function() return market.record(value(), value(), value()) end,
  function() return market.ground_vm(program) end,
  function() return market.term_depth_limit(pick { 2, 5, 20, 1000, 10000, 0, value() }) end,
  function() return market.term_size_limit(pick { 2, 50, 1000, 2 ^ 20, 2 ^ 31, 0, value() }) end,
  function() return market.now() end,
  function() return market.memory() end,
  function() coroutine.yield(value()) end,
  function() threads[#threads + 1] = coroutine.running() end,
  function() local co = thread(); if co then return coroutine.resume(co, value()) end end,
  function() local co = thread(); if co then return coroutine.close(co) end end,
  function() local co = thread(); if co then return coroutine.status(co) end end,
  function() return coroutine.wrap(program)(value()) end,
  function()
    local co = coroutine.create(program)
    threads[#threads + 1] = co
    return coroutine.resume(co, value())
  end,
  function() return market.snapshot() end,
  function() return market.snapshot_json() end,
  function() return market.snapshot_json(value()) end,
  function()
    local ok, r = pcall(market.ring, pick { {}, { size = 2 }, { pid = pid() }, { kind = "send" }, { topic = value() }, value() })
    if ok then
      for _ = 1, (byte() or 0) % 3 do pcall(pick { r.read, r.close }, r) end
    end
  end,
  function() error(value()) end,
  function()                               -- the metamethods, called as the debug library can
    local mt = debug.getmetatable(pick(atoms) or market._)
    local f = mt and rawget(mt, pick { "__gc", "__index", "__len", "__eq", "__tostring", "__call", "__newindex" })
    if type(f) == "function" then return f(value(), value(), value()) end
  end,
}

-- What a boot, a handler or a continuation does: some straight-line calls,
-- then a result that is a transition, nothing, garbage, or an error.
function step()
  local b = byte()
  if b == nil then return end
  for _ = 1, b % 4 do pcall(pick(calls)) end
  local r = (byte() or 0) % 7
  if r == 1 then return market.transition(value(), action(), action())
  elseif r == 2 then return market.transition_no_state({ action(), action() })
  elseif r == 3 then return market.transition_no_state(action(), { action(), { action() } })
  elseif r == 4 then return value()
  elseif r == 5 then error(value(), pick { 0, 1, 2 })
  elseif r == 6 then return market.transition(value(), value())
  end
end

-- The boot process itself keeps going while there is input.
while left() do
  pcall(pick(calls))
  local ok, tr = pcall(step)
  if ok and market.is_transition(tr) then pcall(market.perform, action()) end
end

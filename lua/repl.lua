-- market.repl: the interactive interpreter (`market` at a terminal,
-- `market -i`; the user's view is docs/reference.md, "The interpreter").
--
-- One process, the prompt.  It reads standard input itself, one read(2)
-- per market.ground.readable(0), on a descriptor left blocking: the
-- programs a chunk runs may print to the same terminal, which made
-- non-blocking (the stdio driver's way) loses what a full terminal does
-- not take.  sys.fd_read polls first, so that a readable message that was
-- no such event (a process may send one) cannot hold the VM in read(2).
--
-- Each chunk runs as a process of its own, straight-line code: it may
-- perform, wait and sleep, its endpoints are its own, and what it spawns
-- lives on after it.  A chunk that returns a transition lives on too, as
-- a handler-style process.  The prompt waits for the chunk's end (or its
-- transition), then prints what it returned, as lua(1) does.  Chunks
-- share one table of globals, whose misses read _G; `market` and `ps`
-- (inspect.ps: the processes, as `market inspect` prints them) are in it.
--
-- Ctrl-C kills the chunk running, with the reason "interrupted"; at the
-- prompt it clears the line, and a second one in a row stops the program
-- (the host leaves SIGINT to us: lua/main.c).  A Ctrl-C pressed while a
-- chunk held the thread (in a C call, or in a loop until its budget ran
-- out) is read by the ground only after the chunk's end: the prompt takes
-- it then as meant for that chunk (late), not as one at the prompt.
-- Ctrl-D, the end of input, stops the program gracefully, as SIGTERM does.
local market, sys = ...
local M = {}

local _, P = market._, market.perform
local SIGINT, SIGTERM = 2, 15

-- What the prompt uses, taken now: chunks share the standard library and
-- the market table with it, and one that set string.sub, io or
-- market.yield to nil made the prompt itself fail, and the program end.
-- (What a chunk's own process runs, show() and run()'s body, may fail
-- with it: that is the chunk's failure.)
local find, sub, format, concat, pack, unpack = string.find, string.sub, string.format,
  table.concat, table.pack, table.unpack
local load, setmetatable, getmetatable, type, tostring, tonumber, require =
  load, setmetatable, getmetatable, type, tostring, tonumber, require
local stdout, stderr = io.stdout, io.stderr
local fwrite, fflush = stdout.write, stdout.flush
local subscriber, yield, delete_endpoint, spawn, send, quit, stop_program =
  market.subscriber, market.yield, market.delete_endpoint, market.spawn, market.send,
  market.quit, market.stop
local observe_publishers, lifeline, is_transition, is_term, repr, record, monotonic =
  market.observe_publishers, market.lifeline, market.is_transition, market.is_term,
  market.repr, market.record, market.monotonic

-- A chunk's end: n is the chunk's number (the text of its values is in
-- `results`).
local finished = record("market:repl-finished", "n")

-- The text of a chunk's values, made in the chunk's own process: a
-- __tostring that fails or loops fails that process, not the prompt.
local function show(...)
  local out = pack(...)
  for i = 1, out.n do
    local v = out[i]
    -- A sequence reads as a term, not as "table: 0x..." (a table with a
    -- metatable as its __tostring has it).
    if type(v) == "table" and getmetatable(v) == nil and is_term(v) then
      out[i] = repr(v)
    else out[i] = tostring(v) end
  end
  return concat(out, "\t", 1, out.n)
end

-- Compile a chunk as lua(1) does: an expression first (its values are
-- printed), if it is one line, else statements.  nil, "incomplete" when
-- more lines may finish it.
local function compile(text, env, first)
  local f = first and load("return " .. text, "=stdin", "t", env)
  if f then return f end
  local err
  f, err = load(text, "=stdin", "t", env)
  if f then return f end
  if sub(err, -5) == "<eof>" then return nil, "incomplete" end
  return nil, err
end

-- What an event is to the prompt: "stdin", "sigint", "sigterm",
-- "finished" (and the chunk's number), or nil.  By the message's type,
-- not only its endpoint: a chunk's send(market._) reaches every
-- subscriber, and read as a readable descriptor it made the prompt block
-- the whole program in read(2).
local readable, signal = market.ground.readable, market.ground.signal
local function what(ev)
  -- Standard input cannot be watched (closed when market started): the
  -- ground's absence, with the reason.
  if ev.type == "absence" and ev.endpoint == "stdin" and ev.reason then
    return "unwatched", ev.reason
  end
  if ev.type ~= "message" then return nil end
  local ep, m = ev.endpoint, ev.message
  if ep == "stdin" and readable:is(m) then return "stdin" end
  if (ep == "sigint" or ep == "sigterm") and signal:is(m) then return ep end
  if ep == "finished" and finished:is(m) then return "finished", m.n end
  return nil
end

local function write(s)
  fwrite(stdout, s)
  fflush(stdout)
end

-- boot(drain_ms): the prompt's boot function.  drain_ms: the drain of a
-- stop that SIGTERM or the end of input begins (market --drain).
function M.boot(drain_ms)
  drain_ms = tonumber(drain_ms)
  local env = setmetatable({
    market = market,
    ps = function() return require("market.inspect").ps() end,   -- the processes, as rows
  }, { __index = _G })
  local results, chunks = {}, 0
  -- Bytes read, from `at` on not yet taken as lines; the pieces of a line
  -- longer than one read (joined once its end comes: each read appended
  -- to the rest copied and searched it all again, and an 8 MB line took
  -- 4 s), while there are any `pending` is empty; the chunk so far.
  local pending, at, long, text = "", 1, {}, nil
  local eof, interrupts = false, 0
  -- When the prompt last let the VM run (line, below).
  local ran = monotonic()

  P(subscriber(finished(_), "finished"),
    subscriber(signal(SIGINT), "sigint"),
    subscriber(signal(SIGTERM), "sigterm"))
  write(format("market %s (%s): each chunk runs as a process; Ctrl-C stops it, " ..
               "Ctrl-D leaves\n", market.VERSION, _VERSION))

  -- A graceful stop of the whole program; the prompt goes (its endpoints
  -- would hold it, and so the program, for the whole drain).
  local function stop()
    stop_program(drain_ms)
    P(quit())
  end

  -- The next line of input, nil at its end.  Reads only while it waits
  -- here: a readable descriptor nobody reads would fire at every turn.
  -- Lines already read are taken in turn without a wait, and a chunk of
  -- thousands of them, compiled again at each (as lua(1) does), ran in one
  -- activation past the prompt's budget, which ended the program: past
  -- SLICE ms, the VM runs first.
  local SLICE = 100
  local function line()
    if monotonic() - ran > SLICE then market.pause(); ran = monotonic() end
    while true do
      local nl = find(pending, "\n", at, true)
      if nl then
        local l = sub(pending, at, nl - 1)
        at = nl + 1
        return l
      end
      pending, at = sub(pending, at), 1
      if eof then
        if #long > 0 then pending = concat(long); long = {} end
        if pending ~= "" then local l = pending; pending = ""; return l end
        return nil
      end
      P(subscriber(readable(0), "stdin"))
      local kind, why
      repeat kind, why = what(yield()) until kind and kind ~= "finished"
      P(delete_endpoint("stdin"))
      ran = monotonic()
      if kind ~= "stdin" and kind ~= "unwatched" then return nil, kind end
      local data, err
      if kind == "stdin" then data, err = sys.fd_read(0) else err = tostring(why) end
      if data and not find(data, "\n", 1, true) then
        if pending ~= "" then long[#long + 1] = pending end
        long[#long + 1] = data
        pending = ""
      elseif data then
        if #long > 0 then long[#long + 1] = data; data = concat(long); long = {} end
        pending = pending .. data
      elseif data == nil then       -- the end, or an error: the end too
        if err ~= "eof" then fwrite(stderr, "market: standard input: ", err, "\n") end
        eof = true
      end
    end
  end

  -- After a chunk that ran for HELD ms or more: the Ctrl-Cs pressed while
  -- it held the thread, which the ground reads at the loop's next poll
  -- (LATE ms are time for one), and what that poll queued beside the
  -- wait's own timeout (at most DRAIN events already queued).  They were
  -- meant for the chunk, which has ended: taken here, they neither clear
  -- the next line nor count towards the two that leave.  A SIGTERM among
  -- them is still a stop (returns "sigterm"); whatever else comes is
  -- dropped, as in run.  Bounded in time and events: processes that
  -- flood the prompt with messages cannot keep it here.
  local HELD, LATE, DRAIN = 50, 20, 64
  local function late(kind)
    local until_ms, drained = monotonic() + LATE, 0
    while drained < DRAIN do
      local ms = until_ms - monotonic()
      local ev = yield(ms > 0 and ms or 0)
      if ev == nil then
        if ms <= 0 then return kind end
      elseif what(ev) == "sigterm" then
        return "sigterm"
      elseif ms <= 0 then
        drained = drained + 1
      end
    end
    return kind
  end

  -- Run f as chunk n's process; wait for its end.
  local function run(f)
    chunks = chunks + 1
    local n = chunks
    local began = monotonic()
    local pid = P(spawn(function()
      local out = pack(f())
      if is_transition(out[1]) then
        results[n] = ""
        P(send(finished(n)))
        return out[1]              -- lives on, as a handler-style process
      end
      results[n] = out.n > 0 and show(unpack(out, 1, out.n)) .. "\n" or ""
      P(send(finished(n)))
    end, { name = "stdin:" .. n }))
    local watch = "chunk" .. n
    P(observe_publishers(lifeline(pid), { name = watch }))
    local kind, of
    while true do
      -- Every event is taken (yield), the ones of no interest dropped:
      -- kept for later (wait_for), they would pile up chunk after chunk.
      local ev = yield()
      kind, of = what(ev)
      if kind == "sigint" then
        P(quit(pid, "interrupted"))
        write("interrupted\n")
        break
      elseif kind == "sigterm" then
        break
      elseif kind == "finished" and of == n and results[n] then
        -- (A chunk may forge finished(n) before its text is made: wait.)
        write(results[n])
        break
      elseif ev.endpoint == watch and ev.type == "absence" then
        break                      -- failed (its crash report says why) or killed
      end                          -- (else an earlier chunk's end, a presence, ...)
    end
    results[n] = nil
    P(delete_endpoint(watch))
    if kind ~= "sigint" and kind ~= "sigterm" and monotonic() - began >= HELD then
      kind = late(kind)
    end
    return kind
  end

  while true do
    write(text and ">> " or "> ")
    local l, why = line()
    if why == "sigint" then
      -- A line cleared; a second Ctrl-C in a row (no line between) leaves.
      interrupts = interrupts + 1
      text = nil
      if interrupts >= 2 then write("\n") stop() end
      write("\n(Ctrl-C again or Ctrl-D to leave)\n")
    elseif why == "sigterm" or l == nil then
      write("\n")
      stop()
    else
      interrupts = 0
      local first = text == nil
      text = text and text .. "\n" .. l or l
      local f, err = compile(text, env, first)
      if f then
        text = nil
        if run(f) == "sigterm" then write("\n") stop() end
      elseif err ~= "incomplete" then
        text = nil
        fwrite(stderr, err, "\n")
      end
    end
  end
end

return M

-- market.stdio: standard input and output as conversations (the user's
-- view is docs/stdio.md).
--
-- One process, the driver (market.spawn(stdio.driver)).  It speaks the
-- tcp driver's channel model (docs/tcp.md) with the terminal, the pipe or
-- the file on descriptors 0 and 1:
--   input   it publishes stdio.stdin(_) and, while some process subscribes
--           to it, reads standard input and sends stdio.stdin(line) per
--           line (or per chunk read), then stdio.stdin(market.EOF).  A
--           reader that cannot keep up publishes stdio.backpressure("stdin")
--           and reading stops while it does.  A failure (a read error, a
--           line too long) withdraws the flow, with the reason.
--   output  it subscribes to stdio.stdout(_) and writes what it receives,
--           queueing what standard output does not take at once; while the
--           queue holds more than HIGH_WATER it publishes
--           stdio.backpressure("stdout").  stdio.stdout(market.EOF) ends
--           standard output once the queue is written.  A failure (a
--           broken pipe, a sender over the hard limit) withdraws the flow,
--           with the reason.
-- Written against ground events only (market.ground.readable / writable),
-- never libev, so it runs unchanged in a nested VM with an event relay.
-- The descriptors are market.sys streams (drivers/lsys.c, sys.std_take):
-- non-blocking while the driver holds them, given back as they were.
local market, sys = ...
local M = {}

local _, EOF = market._, market.EOF
local repr, P = market.repr, market.perform
-- A value an error names: a term as repr writes it, anything else by its
-- type (repr raises on a non-term, in place of the error meant).
local function show(v) return market.is_term(v) and repr(v) or type(v) end
local mtype = math.type
local readable, writable = market.ground.readable, market.ground.writable
local find, sub, byte, concat = string.find, string.sub, string.byte, table.concat

local stdin = market.record("stdio-stdin", "data")
local stdout = market.record("stdio-stdout", "data")
-- Published while the stream named ("stdin", "stdout") should be held back:
-- by a reader of stdin, to stop the driver reading; by the driver, while
-- its queue for stdout is over HIGH_WATER.
local backpressure = market.record("stdio-backpressure", "stream")
M.stdin, M.stdout, M.backpressure = stdin, stdout, backpressure

-- Read when the driver starts.
M.FRAMING = "line"          -- "line" (one message per line) or "raw" (chunks as read)
M.MAX_LINE = 1 << 20        -- the longest line taken, in bytes (line framing)
M.READ_SIZE = 65536         -- the largest chunk read at once (1 to 65536)
M.HIGH_WATER = 1 << 20      -- queued output over this: backpressure is published
M.LOW_WATER = nil           -- withdrawn again at or below this (default HIGH_WATER // 2)
M.HARD_LIMIT = nil          -- bytes a sender may add while backpressure is published
                            -- before the output flow fails (default 8 * HIGH_WATER)
-- For tests and monitoring: the most memory the output queue held, how
-- often backpressure was published, how many senders overran the limit.
M.stats = { max_queued = 0, pauses = 0, overflows = 0 }

-- A queued message costs its bytes and this (a Lua string's header and its
-- slot in the queue): thousands of one-byte messages are not free.
local ENTRY_COST = 40
-- Lines sent per turn: a read of tiny lines does not hold up everyone
-- else (the rest go after the events pending meanwhile).
local BATCH = 128
-- Queued pieces shorter than this are joined before they are written, so
-- that a queue of small messages is not one system call each.
local WRITE_SIZE = 65536

-- Through market.log (docs/inspect.md, "Logging").
local function warn(fmt, ...)
  market.log.warn("market.stdio: " .. fmt, ...)
end

local function setting(field, lo, hi, default)
  local v = M[field]
  if v == nil and default ~= nil then return default end
  if mtype(v) ~= "integer" or v < lo or v > hi then
    error(("stdio.%s must be an integer from %d to %d, got %s"):format(field, lo, hi, show(v)), 0)
  end
  return v
end

-- The settings as the driver starts; an error names the bad one.
local function settings()
  local framing = M.FRAMING
  if framing ~= "line" and framing ~= "raw" then
    error(('stdio.FRAMING must be "line" or "raw", got %s'):format(show(framing)), 0)
  end
  local high = setting("HIGH_WATER", 1, 1 << 48)
  return framing, setting("MAX_LINE", 1, 1 << 40), setting("READ_SIZE", 1, 65536), high,
         setting("LOW_WATER", 0, high, high // 2), setting("HARD_LIMIT", 0, 1 << 52, 8 * high)
end

-- sys.std_take(fd), the stream given back when this driver ends, however
-- it ends: a driver killed without a word (its VM went, say) runs no
-- handler that could, and a new driver can take the descriptor at once.
local function take(fd)
  local s, err = sys.std_take(fd)
  if s then sys.close_at_end(s) end
  return s, err
end

-- The driver's boot function: run it with market.spawn(stdio.driver).
function M.driver()
  local ok, framing, max_line, read_size, high, low, hard = pcall(settings)
  if not ok then
    -- Nobody may watch the driver: say it, as well as quitting with it.
    warn("%s", framing)
    return market.transition(nil, market.quit(nil, framing))
  end
  local stats = M.stats
  local stopping = false

  -- ---- input ----------------------------------------------------------------

  local input                   -- sys.std_take(0), while reading may happen
  local readers, holds = 0, 0   -- subscribers of stdin(_); publishers of backpressure("stdin")
  -- Read, not yet sent: lines or chunks, then EOF or {reason} (a failure).
  local pend, ph, pt = {}, 1, 0
  local part, plen = {}, 0      -- the unfinished line: its pieces, its length
  local ended = false           -- EOF or a failure is in pend, or was sent
  local reading, more = false, false
  local update_input

  local function push(v)
    pt = pt + 1
    pend[pt] = v
  end

  local function let_go_input()
    if input then input:close(); input = nil end
  end

  local function fail_input(reason)
    push({ reason })
    ended = true
    part, plen = {}, 0
  end

  local function too_long()
    fail_input(("line longer than %d bytes"):format(max_line))
  end

  -- Split data into lines; each byte is looked at once, and an unfinished
  -- line is kept as pieces, joined once when its end comes.
  local function split(data)
    local pos = 1
    while true do
      local nl = find(data, "\n", pos, true)
      if not nl then break end
      if plen + nl - pos > max_line then return too_long() end
      local line
      if plen > 0 then
        part[#part + 1] = sub(data, pos, nl - 1)
        line, part, plen = concat(part), {}, 0
      else
        line = sub(data, pos, nl - 1)
      end
      if byte(line, -1) == 13 then line = sub(line, 1, -2) end
      push(line)
      pos = nl + 1
    end
    if pos <= #data then
      plen = plen + #data - pos + 1
      if plen > max_line then return too_long() end
      part[#part + 1] = sub(data, pos)
    end
  end

  -- Send what was read, BATCH at a time, while someone reads and nobody
  -- holds input back.
  local function deliver()
    local budget = BATCH
    while ph <= pt and readers > 0 and holds == 0 do
      if budget == 0 then
        if not more then
          more = true
          P(market.yield(function() more = false; deliver() end))
        end
        break
      end
      local v = pend[ph]
      pend[ph], ph = nil, ph + 1
      if type(v) == "table" then
        let_go_input()
        P(market.delete_endpoint("in", v[1]))
        break
      end
      P(market.send(stdin(v)))
      budget = budget - 1
    end
    update_input()
  end

  local function on_readable()
    local data, err = input:read(read_size)
    if data == false then return end                -- nothing after all
    if data then
      if framing == "raw" then push(data) else split(data) end
    elseif err == "eof" then
      if plen > 0 then push(concat(part)); part, plen = {}, 0 end
      push(EOF)
      ended = true
    else
      fail_input(err)
    end
    deliver()
  end

  -- Watch standard input exactly while a read would be sent at once.
  function update_input()
    local want = readers > 0 and holds == 0 and ph > pt and not ended and not stopping
    if want and not input then
      local err
      input, err = take(0)
      if not input then
        fail_input(err)
        return deliver()
      end
    end
    if want == reading then return end
    reading = want
    if want then
      P(market.subscriber(readable(input:fd()), {
        name = "rd",
        on_message = on_readable,
        on_absence = function(_, _, reason, _, deleted)
          if deleted or not reason then return end
          reading = false
          fail_input(reason)
          deliver()
        end }))
    else
      P(market.delete_endpoint("rd"))
      if ended then let_go_input() end
    end
  end

  -- ---- output ---------------------------------------------------------------

  local output                  -- sys.std_take(1), from the first message on
  local q, qh, qt, qoff = {}, 1, 0, 1   -- queued strings; the next byte of q[qh]
  local held = 0                -- what the queue costs: bytes left + ENTRY_COST each
  local unflushed = 0           -- what was queued since the last write
  local paused, overrun = false, 0
  local out_eof, out_done = false, false  -- EOF asked for; the flow ended or failed
  local writing, soon, warned = false, false, false
  local flush, fail_output

  local function watch_output(want)
    if want == writing then return end
    writing = want
    if want then
      P(market.subscriber(writable(output:fd()), {
        name = "wr",
        on_message = function() flush() end,
        on_absence = function(_, _, reason, _, deleted)
          if deleted or not reason then return end
          writing = false
          fail_output(reason)
        end }))
    else
      P(market.delete_endpoint("wr"))
    end
  end

  local function unpause()
    if paused then paused = false; P(market.delete_endpoint("pause")) end
  end

  function fail_output(reason)
    if out_done then return end
    out_done = true
    q, qh, qt, qoff, held = {}, 1, 0, 1, 0
    unpause()
    watch_output(false)
    if output then output:close(); output = nil end
    P(market.delete_endpoint("out", reason))
  end

  local function take_output()
    if output then return true end
    local err
    output, err = take(1)
    if not output then fail_output(err) end
    return output ~= nil
  end

  local function finish_output()
    out_done = true
    unpause()
    watch_output(false)
    if take_output() then output:close(true); output = nil end
  end

  -- Write what standard output takes now; watch for more room if needed.
  function flush()
    unflushed = 0
    while qh <= qt do
      local s = q[qh]
      if #s - qoff + 1 < WRITE_SIZE and qh < qt then
        -- Join the small pieces in front into one write.
        local pieces, n, k = { sub(s, qoff) }, #s - qoff + 1, qh
        while k < qt and n + #q[k + 1] <= WRITE_SIZE do
          k = k + 1
          pieces[#pieces + 1] = q[k]
          n = n + #q[k]
        end
        if k > qh then
          for i = qh, k - 1 do q[i] = nil end
          held = held - (k - qh) * ENTRY_COST
          s, qh, qoff = concat(pieces), k, 1
          q[qh] = s
        end
      end
      local n, err = output:write(s, qoff)
      if not n then return fail_output(err) end
      if n == 0 then break end
      qoff, held = qoff + n, held - n
      if qoff > #s then
        q[qh], qh, qoff, held = nil, qh + 1, 1, held - ENTRY_COST
      end
    end
    if paused and held <= low then unpause() end
    if qh > qt and out_eof then return finish_output() end
    watch_output(qh <= qt)
  end

  -- Written after the events pending now: the messages a turn brings
  -- make one write, not one each.
  local function flush_soon()
    if soon or writing then return end
    soon = true
    P(market.yield(function() soon = false; if not out_done then flush() end end))
  end

  local function enqueue(data)
    qt = qt + 1
    q[qt] = data
    local cost = #data + ENTRY_COST
    held = held + cost
    if held > stats.max_queued then stats.max_queued = held end
    -- Small messages wait for the end of the turn to be joined into one
    -- write; a write's worth goes at once.  Held back for the turn, a
    -- batch of a few MiB was all queued before the first write, past the
    -- hard limit, and the flow failed, though its sender honoured
    -- backpressure (which it could not yet have seen) and a file or a
    -- reader that keeps up would have taken every byte.
    unflushed = unflushed + cost
    if unflushed >= WRITE_SIZE then
      flush()
      if out_done then return end
    end
    if paused then
      overrun = overrun + cost
      if overrun > hard then
        stats.overflows = stats.overflows + 1
        return fail_output(("%d bytes sent despite backpressure: standard output is not read")
                           :format(overrun))
      end
    elseif held > high then
      paused, overrun = true, 0
      stats.pauses = stats.pauses + 1
      P(market.publisher(backpressure("stdout"), "pause"))
    end
    flush_soon()
  end

  local function on_out(_, m)
    -- A wildcard message body, send(market._), reaches this subscription
    -- too, and is no record: reading its field killed the driver.
    if not stdout:is(m) then return end
    local data = m.data
    if out_eof or out_done then return end          -- after EOF or a failure: dropped
    if data == EOF then
      out_eof = true
      if qh > qt then return finish_output() end
      return
    end
    if type(data) ~= "string" then
      if not warned then
        warned = true
        warn("ignoring a non-string message %s", repr(m, 200))
      end
      return
    end
    if #data > 0 and take_output() then enqueue(data) end
  end

  return market.transition(nil,
    market.publisher(stdin(_), "in"),
    market.observe_subscribers(stdin(_), {
      name = "readers",
      on_presence = function() readers = readers + 1; deliver() end,
      on_absence = function() readers = readers - 1; update_input() end }),
    market.observe_publishers(backpressure("stdin"), {
      name = "holds",
      on_presence = function() holds = holds + 1; update_input() end,
      on_absence = function() holds = holds - 1; deliver() end }),
    market.subscriber(stdout(_), { name = "out", on_message = on_out }),
    -- A graceful stop (docs/semantics.md): no more input; output drains.
    market.subscriber(market.ground.stopping(_), {
      name = "stopping",
      on_presence = function() stopping = true; update_input() end }))
end

return M

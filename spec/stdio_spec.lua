-- stdio_spec.lua: the stdio driver (drivers/stdio.lua, docs/stdio.md),
-- end to end: build/market runs scripts with standard input and output
-- piped, redirected from files, /dev/null, or a terminal (script(1)).
local H = require "spec.support.helpers"

local market_bin = H.quote(H.market_bin())
local dir = os.tmpname()
os.remove(dir)
assert(os.execute("mkdir -p " .. dir))

local function path(name) return dir .. "/" .. name end

local function write(name, text)
  local f = assert(io.open(path(name), "wb"))
  f:write(text)
  f:close()
  return path(name)
end

-- A script run as `market SCRIPT args`: the stdio driver, and a process
-- that reports on standard error what it hears on its input, then quits
-- at EOF or at the input's absence.  Settings of market.stdio come in
-- through the environment (STDIO_MAX_LINE, STDIO_FRAMING).
write("reader.lua", [[
local market = require "market"
local stdio = require "market.stdio"
local _ = market._
stdio.MAX_LINE = tonumber(os.getenv("STDIO_MAX_LINE")) or stdio.MAX_LINE
stdio.FRAMING = os.getenv("STDIO_FRAMING") or stdio.FRAMING
market.perform(market.spawn(stdio.driver))
local out = assert(io.open(arg[1], "wb"))
local function done(how) out:write(how, "\n"); out:close(); return market.transition_no_state(market.quit()) end
return market.transition(nil, market.subscriber(stdio.stdin(_), {
  on_message = function(_, m)
    if m.data == market.EOF then return done("EOF") end
    out:write(#m.data, " ", (m.data:sub(1, 40):gsub("[\r\n]", "|")), "\n")
  end,
  on_absence = function(_, _, reason) return done("absence " .. tostring(reason)) end }))
]])

-- A writer of N bytes in messages of SIZE bytes (the last line ends with
-- "\n"), with a high-water mark of 64 KiB; it pauses while the driver
-- publishes backpressure unless told to ignore it, creates FLAG when it
-- first sees backpressure, and writes its report to standard error.
write("writer.lua", [[
local market = require "market"
local stdio = require "market.stdio"
local _ = market._
local total, size, ignore, flag = tonumber(arg[1]), tonumber(arg[2]), arg[3] == "ignore", arg[4]
stdio.HIGH_WATER = 65536
market.perform(market.spawn(stdio.driver))
-- One pump at a time: an absence of backpressure that came while a pump
-- was still waiting for its turn started a second one beside it, and every
-- such pause added another batch of 64 messages a turn.
local sent, paused, pumping = 0, false, false
local piece = ("0123456789abcdef"):rep(size // 16 + 1):sub(1, size - 1) .. "\n"
local function report(what)
  io.stderr:write(what, (" max_queued=%d pauses=%d overflows=%d\n"):format(
    stdio.stats.max_queued, stdio.stats.pauses, stdio.stats.overflows))
end
local function pump()
  pumping = false
  local acts = {}
  while sent < total and (ignore or not paused) and #acts < 64 do
    acts[#acts + 1] = market.send(stdio.stdout(piece))
    sent = sent + size
  end
  if sent >= total then
    report("sent")
    acts[#acts + 1] = market.send(stdio.stdout(market.EOF))
    acts[#acts + 1] = market.quit()
  elseif ignore or not paused then
    pumping = true
    acts[#acts + 1] = market.yield(pump)
  end
  return market.transition_no_state(acts)
end
return market.transition(nil,
  market.publisher(stdio.stdout(_), {
    on_presence = function() return pump() end,
    on_absence = function(_, _, reason)
      report("absence " .. tostring(reason))
      return market.transition_no_state(market.quit())
    end }),
  market.observe_publishers(stdio.backpressure("stdout"), {
    on_presence = function()
      paused = true
      if flag then assert(io.open(flag, "w")):close() end
    end,
    on_absence = function()
      paused = false
      if not pumping then return pump() end
    end }))
]])

-- Shell text that waits (at most a minute) for the file FLAG.
local function await(flag)
  return ("for i in $(seq 1 3000); do [ -e %s ] && break; sleep 0.02; done"):format(flag)
end

local function lines_of(s)
  local t = {}
  for l in s:gmatch("([^\n]*)\n") do t[#t + 1] = l end
  return t
end

local function report_of(name) return lines_of(H.slurp(path(name)) or "") end

describe("market.stdio", function()
  teardown(function() os.execute("rm -rf " .. dir) end)

  it("upcases lines from a pipe (examples/upcase.lua): CRLF, a last line without newline, EOF", function()
    local status, out, err = H.sh(("printf 'hello\\nworld\\r\\n\\n  last' | timeout 60 %s examples/upcase.lua")
                                  :format(market_bin))
    assert.equal("", err)
    assert.equal(0, status)
    assert.equal("HELLO\nWORLD\n\n  LAST\n", out)
  end)

  it("upcases a large file, every byte in order (examples/upcase.lua)", function()
    local t = {}
    for i = 1, 100000 do t[i] = ("line %d of a large input, %s"):format(i, ("x"):rep(i % 97)) end
    local text = table.concat(t, "\n") .. "\n"
    local input = write("large.txt", text)
    local status, out, err = H.sh(("timeout 120 %s examples/upcase.lua < %s"):format(market_bin, input))
    assert.equal("", err)
    assert.equal(0, status)
    assert.equal(#text, #out)
    assert.is_true(out == text:upper(), "the output differs from the input upper-cased")
  end)

  it("hears EOF at once from /dev/null, and from an empty pipe", function()
    local status, _, err = H.sh(("timeout 60 %s %s %s < /dev/null")
                                :format(market_bin, path("reader.lua"), path("r1")))
    assert.equal("", err)
    assert.equal(0, status)
    assert.same({ "EOF" }, report_of("r1"))
    status = H.sh(("printf '' | timeout 60 %s %s %s"):format(market_bin, path("reader.lua"), path("r2")))
    assert.equal(0, status)
    assert.same({ "EOF" }, report_of("r2"))
  end)

  it("reads a terminal line by line, EOF at ^D", function()
    -- script(1) runs the program on a pseudo-terminal fed from the pipe.
    local status = H.sh(("(printf 'one\\ntwo\\n'; %s; printf 'three\\n'; sleep 0.2; printf '\\004') | "
                         .. "timeout 60 script -qec '%s %s %s' /dev/null")
                        :format(await(path("r3")), H.market_bin(), path("reader.lua"), path("r3")))
    -- (r3 exists as soon as the reader opened it: the lines before it wait in the terminal.)
    assert.equal(0, status)
    assert.same({ "3 one", "3 two", "5 three", "EOF" }, report_of("r3"))
  end)

  it("takes lines up to MAX_LINE whole, without a fixed buffer, and refuses a longer one", function()
    local long = ("y"):rep(3 * 1024 * 1024)
    local input = write("long.txt", "short\n" .. long .. "\nafter\n")
    local status = H.sh(("STDIO_MAX_LINE=%d timeout 60 %s %s %s < %s")
                        :format(4 * 1024 * 1024, market_bin, path("reader.lua"), path("r4"), input))
    assert.equal(0, status)
    assert.same({ "5 short", #long .. " " .. long:sub(1, 40), "5 after", "EOF" }, report_of("r4"))
    -- Over the limit: the lines before it, then the flow's absence with the reason.
    status = H.sh(("STDIO_MAX_LINE=%d timeout 60 %s %s %s < %s")
                  :format(1024 * 1024, market_bin, path("reader.lua"), path("r5"), input))
    assert.equal(0, status)
    assert.same({ "5 short", "absence line longer than 1048576 bytes" }, report_of("r5"))
    -- The same, known before the line's end: 2 MiB without a newline.
    input = write("nonl.txt", long:sub(1, 2 * 1024 * 1024))
    status = H.sh(("STDIO_MAX_LINE=%d timeout 60 %s %s %s < %s")
                  :format(1024 * 1024, market_bin, path("reader.lua"), path("r6"), input))
    assert.equal(0, status)
    assert.same({ "absence line longer than 1048576 bytes" }, report_of("r6"))
  end)

  it("delivers chunks as read with raw framing", function()
    local text = ("abc\r\n"):rep(50000)
    local input = write("raw.txt", text)
    local status = H.sh(("STDIO_FRAMING=raw timeout 60 %s %s %s < %s")
                        :format(market_bin, path("reader.lua"), path("r7"), input))
    assert.equal(0, status)
    local report, total = report_of("r7"), 0
    assert.equal("EOF", report[#report])
    for i = 1, #report - 1 do total = total + tonumber(report[i]:match("^(%d+) ")) end
    assert.equal(#text, total)
    assert.is_true(#report - 1 >= 4, "chunks of at most 64 KiB")
  end)

  it("holds a writer back while stdout's reader is slow: the queue stays bounded, nothing is lost", function()
    local flag, total = path("flag1"), 4000000
    local status, out, err = H.sh(("timeout 60 %s %s %d 1000 honour %s | (%s; cat)")
                                  :format(market_bin, path("writer.lua"), total, flag, await(flag)))
    assert.equal(0, status)
    assert.equal(total, #out)
    local queued, pauses = err:match("^sent max_queued=(%d+) pauses=(%d+) overflows=0\n$")
    assert.is_truthy(queued, err)
    assert.is_true(tonumber(pauses) >= 1)
    -- Over the high-water mark by what was in flight when it was published
    -- (a few batches of 64 messages), nowhere near the 4 MiB sent.
    assert.is_true(tonumber(queued) < 4 * 65536, "max_queued " .. queued)
  end)

  -- A batch of messages was written only after the turn that brought it:
  -- a batch of 4 MiB (64 messages of 64 KiB) was all queued first, past
  -- the hard limit (8 * 64 KiB here), and the flow failed, though the
  -- writer honours backpressure and the file takes every byte at once.
  it("writes a batch as it comes: a file or /dev/null takes a batch past the hard limit whole", function()
    local total = 16 * 1024 * 1024
    local file = path("burst.out")
    for _, dest in ipairs { file, "/dev/null" } do
      local status, out, err = H.sh(("timeout 60 %s %s %d 65536 honour > %s")
                                    :format(market_bin, path("writer.lua"), total, dest))
      assert.equal(0, status)
      assert.equal("", out)
      assert.matches("^sent max_queued=%d+ pauses=0 overflows=0\n$", err)
    end
    local f = assert(io.open(file, "rb"))
    assert.equal(total, f:seek("end"))
    f:close()
  end)

  it("fails the output flow of a sender that ignores backpressure, at the hard limit", function()
    local flag = path("flag2")
    local status, out, err = H.sh(("timeout 60 %s %s %d 1000 ignore %s | (%s; cat)")
                                  :format(market_bin, path("writer.lua"), 64 * 1024 * 1024, flag, await(flag)))
    assert.equal(0, status)
    local overrun, queued = err:match(
      "^absence (%d+) bytes sent despite backpressure: standard output is not read max_queued=(%d+) pauses=%d+ overflows=1\n$")
    assert.is_truthy(overrun, err)
    -- The hard limit is 8 * HIGH_WATER: one message past it fails the flow.
    assert.is_true(tonumber(overrun) > 8 * 65536 and tonumber(overrun) <= 8 * 65536 + 1040)
    -- At most one message past the high-water mark when it was published,
    -- and one past the hard limit.
    assert.is_true(tonumber(queued) <= 9 * 65536 + 2 * 1040, "max_queued " .. queued)
    assert.is_true(#out < 64 * 1024 * 1024)
  end)

  it("survives a reader that goes away (EPIPE): the flow's absence says why, no SIGPIPE", function()
    local status, out, err = H.sh(("(timeout 60 %s %s %d 1000; echo \"status $?\" >&2) | head -c 10")
                                  :format(market_bin, path("writer.lua"), 64 * 1024 * 1024))
    assert.equal(0, status)
    assert.equal("0123456789", out)
    assert.matches("^absence broken pipe max_queued=%d+ pauses=%d+ overflows=0\nstatus 0\n$", err)
  end)

  it("gives standard input and output back as it found them (blocking)", function()
    -- The reader quits after the first line; `cat` then reads the same
    -- pipe: had the driver left it non-blocking, cat would fail at once
    -- with "resource temporarily unavailable" instead of waiting for "b".
    write("first.lua", [[
local market = require "market"
local stdio = require "market.stdio"
market.perform(market.spawn(stdio.driver))
return market.transition(nil, market.subscriber(stdio.stdin(market._), {
  on_message = function(_, m) print(m.data); return market.transition_no_state(market.quit()) end }))
]])
    local flag = path("flag3")
    local status, out, err = H.sh(("(printf 'a\\n'; %s; printf 'b\\n') | (timeout 60 %s %s; touch %s; timeout 60 cat)")
                                  :format(await(flag), market_bin, path("first.lua"), flag))
    assert.equal("", err)
    assert.equal(0, status)
    assert.equal("a\nb\n", out)
    -- Standard output: after the writer, `cat` fills the same pipe while
    -- its reader waits; non-blocking, cat would fail with EAGAIN.
    flag = path("flag4")
    local big = write("big.txt", ("z"):rep(1024 * 1024))
    status, out, err = H.sh(("(timeout 60 %s %s 1000 100; touch %s; timeout 60 cat %s) | (%s; sleep 0.2; wc -c)")
                            :format(market_bin, path("writer.lua"), flag, big, await(flag)))
    assert.equal(0, status)
    assert.matches("^sent ", err)
    assert.equal(1000 + 1024 * 1024, tonumber(out))
  end)

  -- A second signal ends a program whose loop is stuck with _exit, which
  -- skips the atexit handler: standard input stayed non-blocking, and the
  -- next reader of the pipe failed with EAGAIN.  (<&3: sh gives a
  -- background command /dev/null for its input, before its redirections.)
  it("gives standard input back blocking when a second signal ends a stuck program", function()
    local flag = path("flag5")
    local stuck = write("stuck.lua", ([[
local market = require "market"
local stdio = require "market.stdio"
market.perform(market.spawn(stdio.driver), market.subscriber(stdio.stdin(market._)))
require("market.timer").sleep(100)
io.open(%q, "w"):close()
while true do end
]]):format(flag))
    local status, out, err = H.sh(("(sleep 3; printf 'after\\n') | { exec 3<&0; %s --max-activation 0 %s <&3 3<&- & p=$!; %s; "
                                   .. "kill -INT $p; sleep 0.5; kill -INT $p; wait $p; echo \"status $?\" >&2; "
                                   .. "timeout 60 cat; }"):format(market_bin, stuck, await(flag)))
    assert.equal(0, status, err)
    assert.matches("status 130\n$", err)
    assert.equal("after\n", out)
  end)

  it("gives a terminal or socket that is both standard input and output back blocking", function()
    -- Descriptors 0 and 1 are one open file here (a terminal: script(1);
    -- a socket: socat's EXEC), and O_NONBLOCK is the open file's: taking
    -- descriptor 1 finds it non-blocking already, because of descriptor 0.
    -- The flags of the open file (from /proc/self/fdinfo/0, O_NONBLOCK is
    -- 04000) are printed before and after the program by the same shell.
    local flags = write("flags.sh", 'grep ^flags /proc/self/fdinfo/0\n"$@"\ngrep ^flags /proc/self/fdinfo/0\n')
    local function nonblocking(out)
      local t = {}
      for f in out:gmatch("flags:%s+(%d+)") do t[#t + 1] = tonumber(f, 8) & 0x800 ~= 0 end
      return t
    end
    local status, out = H.sh(("(printf 'hi\\n'; sleep 0.5; printf '\\004') | "
                              .. "timeout 60 script -qec 'sh %s %s examples/upcase.lua' /dev/null")
                             :format(flags, H.market_bin()))
    assert.equal(0, status)
    assert.matches("HI\r\n", out)
    assert.same({ false, false }, nonblocking(out))
    status, out = H.sh(("printf 'hi\\n' | timeout 60 socat -t 30 - EXEC:'sh %s %s examples/upcase.lua'")
                       :format(flags, H.market_bin()))
    assert.equal(0, status)
    assert.matches("\nHI\n", out)
    assert.same({ false, false }, nonblocking(out))
  end)

  it("says so when standard output was closed at the start, and loses nothing in secret", function()
    -- Closed, number 1 went to the event loop's epoll instance (>&-) or
    -- its eventfd (<&- >&-), which took any 8 bytes as a wake-up count.
    -- `market` now keeps the number (main.c, std_reserve), and the driver
    -- refuses it, saying why.
    local script = write("closed_out.lua", [[
local market = require "market"
local stdio = require "market.stdio"
market.perform(market.spawn(stdio.driver))
market.perform(market.publisher(stdio.stdout(market._), "out"))
market.wait_for(function(e) return e.endpoint == "out" end)
market.perform(market.send(stdio.stdout("12345678")))
local ev = market.wait_for(function(e) return e.endpoint == "out" end)
io.stderr:write("out ", ev.type, ": ", tostring(ev.reason), "\n")
]])
    for _, redirect in ipairs({ ">&-", "<&- >&-" }) do
      local status, _, err = H.sh(("timeout 20 %s %s %s"):format(market_bin, script, redirect))
      assert.equal(0, status, err)
      assert.equal("out absence: standard output was closed when the program started\n", err)
    end
    -- A program embedding market (here lua5.4 and the module) keeps no
    -- numbers: the driver names what took it.
    local embedded = write("closed_out_embedded.lua", ([[
package.cpath = %q .. "/lua/?.so;" .. package.cpath
local market = require "market"
assert(market.ground_vm(function() %s end))
]]):format(H.build_dir(), (io.open(script):read("a"):gsub("^[^\n]*\n", ""):gsub("\n", " "))))
    local status, _, err = H.sh(("timeout 20 lua5.4 %s >&-"):format(embedded))
    assert.equal(0, status, err)
    assert.matches("^out absence: descriptor 1 is anon_inode:%[event%a+%], not standard output: " ..
                   "it was closed when the program started\n$", err)
  end)

  it("writes nothing of its own into a file the program opened, with 0, 1 and 2 closed", function()
    -- With all three closed, the loop took 0 and 1 and the program's
    -- first file took 2: crash reports and log lines went into it.
    local data = path("data.txt")
    local script = write("closed_all.lua", ([[
local market = require "market"
local f = assert(io.open(%q, "w"))
f:write("data\n")
f:flush()
market.perform(market.spawn(function() error("a crash report, not data") end))
market.log.error("a log line, not data")
market.pause()
f:close()
]]):format(data))
    local status, _, err = H.sh(("timeout 20 %s %s <&- >&- 2>&-"):format(market_bin, script))
    assert.equal(0, status, err)
    local f = assert(io.open(data, "rb"))
    local got = f:read("a")
    f:close()
    assert.equal("data\n", got)
  end)

  it("gives standard input back at once when the driver is killed", function()
    -- A killed driver runs no handler: before, the descriptor stayed
    -- non-blocking and held until a collection found its stream, so a
    -- blocking read by the program failed with EAGAIN.  The collector is
    -- stopped here so that nothing but the kill can give it back.
    write("killed.lua", [[
local market = require "market"
local stdio = require "market.stdio"
collectgarbage("stop")
local driver = market.perform(market.spawn(stdio.driver, { name = "stdio" }))
return market.transition(nil, market.subscriber(stdio.stdin(market._), {
  on_message = function(_, m)
    io.stderr:write("driver: ", tostring(m.data), "\n")
    return market.transition_no_state(market.quit(driver, "killed"))
  end,
  on_absence = function(_, _, reason)
    io.stderr:write("absence: ", tostring(reason), "\n")
    assert(io.open(arg[1], "w")):close()       -- now the shell writes "b"
    local line, why = io.read("l")
    io.stderr:write("read: ", tostring(line), why and " " .. why or "", "\n")
    return market.transition_no_state(market.quit())
  end }))
]])
    local flag = path("flag-killed")
    local status, out, err = H.sh(("(printf 'a\\n'; %s; printf 'b\\n') | timeout 60 %s %s %s 2>&1")
                                  :format(await(flag), market_bin, path("killed.lua"), flag))
    assert.equal(0, status, out .. err)
    assert.equal("driver: a\nabsence: killed\nread: b\n", out)
  end)

  it("lets one driver at a time hold standard input", function()
    write("two.lua", [[
local market = require "market"
local stdio = require "market.stdio"
local _ = market._
market.perform(market.spawn(stdio.driver), market.spawn(stdio.driver))
local n = 0
return market.transition(nil, market.subscriber(stdio.stdin(_), {
  on_message = function(_, m) if m.data == market.EOF then io.stderr:write("EOF\n") end end,
  on_absence = function(_, _, reason) io.stderr:write("absence ", tostring(reason), "\n") end }))
]])
    local status, _, err = H.sh(("timeout 60 %s %s < /dev/null"):format(market_bin, path("two.lua")))
    assert.equal(0, status)
    local got = lines_of(err)
    table.sort(got)
    assert.same({ "EOF", "absence held by another stdio driver" }, got)
  end)

  it("runs in a nested VM with an event relay", function()
    write("nested.lua", [[
local market = require "market"
local relay = require "market.event_relay"
local upcase = assert(loadfile("examples/upcase.lua"))
market.perform(market.nested_vm(function()
  market.perform(relay.event_relay("vm"))
  market.pause()
  return upcase()
end, { name = "vm" }))
]])
    local status, out, err = H.sh(("seq 1 20000 | timeout 60 %s %s | tail -n 2"):format(market_bin, path("nested.lua")))
    assert.equal("", err)
    assert.equal(0, status)
    assert.equal("19999\n20000\n", out)
  end)

  it("says what is wrong with a bad setting, and does not start", function()
    local status, out, err = H.sh(("timeout 60 %s -e %s < /dev/null"):format(market_bin, H.quote([[
local market = require "market"
local stdio = require "market.stdio"
stdio.FRAMING = "lines"
market.perform(market.spawn(stdio.driver), market.subscriber(stdio.stdin(market._)))
]])))
    assert.equal(0, status)
    assert.equal("", out)
    -- A log line (docs/inspect.md): time, level, the driver, the message.
    assert.matches('^%S+Z warn ground #%d+: market%.stdio: stdio%.FRAMING must be "line" or "raw", ' ..
                   'got "lines"\n$', err)
    -- One that is no term is named by its type (repr raised on it).
    status, out, err = H.sh(("timeout 60 %s -e %s < /dev/null"):format(market_bin, H.quote([[
local market = require "market"
local stdio = require "market.stdio"
stdio.HIGH_WATER = print
market.perform(market.spawn(stdio.driver), market.subscriber(stdio.stdin(market._)))
]])))
    assert.equal(0, status)
    assert.matches('^%S+Z warn ground #%d+: market%.stdio: stdio%.HIGH_WATER must be an integer ' ..
                   'from 1 to %d+, got function\n$', err)
  end)

  it("stops reading while a reader publishes backpressure on stdin", function()
    -- The reader holds input after its first line and quits 50 turns of
    -- the event loop later; what it did not take is still in the file for
    -- `wc`.
    write("hold.lua", [[
local market = require "market"
local stdio = require "market.stdio"
local _, T = market._, market.transition_no_state
market.perform(market.spawn(stdio.driver))
local got, turns = 0, 0
-- An alarm already due fires at the event loop's next turn, which polls
-- standard input too: 50 turns would read 50 chunks, but for the hold.
local function tick()
  turns = turns + 1
  if turns == 50 then io.stderr:write(got, "\n"); return T(market.quit()) end
  return T(market.delete_endpoint("tick" .. turns - 1),
    market.subscriber(market.ground.alarm(math.floor(market.now())), { name = "tick" .. turns, on_message = tick }))
end
return market.transition(nil, market.subscriber(stdio.stdin(_), {
  on_message = function()
    got = got + 1
    if got == 1 then return T(market.publisher(stdio.backpressure("stdin")), market.yield(tick)) end
  end }))
]])
    local line = ("w"):rep(999) .. "\n"
    local input = write("hold.txt", line:rep(2000))
    local status, out, err = H.sh(("(timeout 60 %s %s; wc -c) < %s"):format(market_bin, path("hold.lua"), input))
    assert.equal(0, status)
    -- One batch at most reaches it after the hold; one read at most was taken.
    assert.is_true(tonumber(err) <= 128 + 1, "lines taken: " .. err)
    assert.is_true(tonumber(out) >= 2000 * 1000 - 65536, "bytes left: " .. out)
  end)
end)

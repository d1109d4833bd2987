-- trace_spec.lua: traces you can aim (issue 11, item 3; docs/inspect.md,
-- "Traces"): filters by pid, name, VM path, kind and topic, timestamps,
-- JSON lines, --trace-file, and changes made at run time from Lua.
package.path = "spec/support/?.lua;" .. package.path
local H = require "helpers"
local J = require "jsonread"
local market = require "market"

-- Each line must be one JSON object; arrays are marked, so [] is no {}.
local function json(s) return J.decode(s, true) end

-- The program the specs trace: two sessions and a talker in the ground VM,
-- and a nested VM "box" whose process "inner" subscribes one level up.
local PROGRAM = [[
  local market = require "market"
  local chat, _ = market.record("chat", "who", "text"), market._
  local function session(name)
    market.perform(market.spawn(function()
      return market.transition(0, market.subscriber(chat(_, _), { name = "in",
        on_message = function(n) if n == 1 then return market.transition(n, market.quit()) end
          return market.transition(n + 1) end }))
    end, { name = name }))
  end
  session("sess-1")
  session("sess-2")
  market.perform(market.nested_vm(function()
    return market.transition(0, market.at_meta_level(market.subscriber(chat("eve", _),
      { name = "up", on_message = function() return market.transition(0, market.quit()) end })))
  end, { name = "box" }))
  market.pause(); market.pause(); market.pause()
  market.perform(market.spawn(function()
    return market.transition(0, market.publisher(chat(_, _), { name = "out" }),
      market.send(chat("bob", "hi")), market.send(chat("eve", "tab\there \"q\"")),
      market.quit())
  end, { name = "talker" }))
]]

local TIME = "^%d%d%d%d%-%d%d%-%d%dT%d%d:%d%d:%d%d%.%d%d%dZ "

-- Run PROGRAM with the options; the trace's lines (stderr, or the file
-- the options name as @FILE), without their times, and the status.
local function lines_of(text)
  local lines = {}
  for l in text:gmatch("[^\n]+") do lines[#lines + 1] = l end
  return lines
end

local function trace(options)
  local file = os.tmpname()
  local status, out, err = H.run_script(PROGRAM, "--no-drivers " .. options:gsub("@FILE", file))
  local text = options:find("@FILE", 1, true) and H.slurp(file) or err
  os.remove(file)
  return lines_of(text), status, err
end

local function untimed(lines)
  local t = {}
  for i, l in ipairs(lines) do
    assert.truthy(l:match(TIME), l)
    t[i] = l:gsub(TIME, "")
  end
  return t
end

-- The lines of `lines` that contain `s`.
local function grep(lines, s)
  local t = {}
  for _, l in ipairs(lines) do if l:find(s, 1, true) then t[#t + 1] = l end end
  return t
end

describe("--trace", function()
  it("starts every line with the time, in UTC to the millisecond", function()
    local lines, status, err = trace("--trace")
    assert.equal(0, status, err)
    assert.is_true(#lines > 20, err)
    for _, l in ipairs(lines) do assert.matches(TIME .. "ground", l) end
    -- A day and time near now.
    local y, mo, d, h, mi = lines[1]:match("^(%d+)%-(%d+)%-(%d+)T(%d+):(%d+)")
    local t = os.time({ year = y, month = mo, day = d, hour = h, min = mi, sec = 0 })
    local now = os.time(os.date("!*t"))
    assert.is_true(math.abs(now - t) < 600, lines[1])
  end)

  it("--trace-pid shows the lines about those pids, in every VM", function()
    local lines = untimed(trace("--trace-pid 2"))
    assert.is_true(#lines > 0)
    for _, l in ipairs(lines) do assert.matches("^ground[/%d]* #2 ", l) end
    assert.truthy(grep(lines, "ground #2 sess-1: message")[1], table.concat(lines, "\n"))
    assert.same({}, grep(lines, "#1 "))
    local two = untimed(trace("--trace-pid 2,5 --trace-pid 3"))
    for _, l in ipairs(two) do assert.matches(" #[235] ", l) end
    assert.truthy(grep(two, "#3 sess-2")[1])
    assert.truthy(grep(two, "#5 talker")[1])
  end)

  it("--trace-name takes a glob", function()
    local lines = untimed(trace("--trace-name 'sess-*'"))
    assert.truthy(grep(lines, "sess-1: spawn lua")[1])
    assert.truthy(grep(lines, "sess-2: spawn lua")[1])
    for _, l in ipairs(lines) do assert.matches("^ground #%d sess%-[12]: ", l) end
    local exact = untimed(trace("--trace-name talker --trace-name box"))
    for _, l in ipairs(exact) do
      local name = l:match("^%S+ #%d+ (%S+): ")
      assert.is_true(name == "talker" or name == "box", l)
    end
    assert.truthy(grep(exact, "talker: send")[1])
    assert.truthy(grep(exact, "ground #4 box: spawn nested-vm")[1])
    assert.truthy(grep(exact, "ground/4 #1 box: spawn lua")[1])   -- its boot takes its name
  end)

  it("--trace-vm shows the lines of a nested VM", function()
    local lines = untimed(trace("--trace-vm 'ground/*'"))
    assert.is_true(#lines >= 3)
    for _, l in ipairs(lines) do assert.matches("^ground/4 ", l) end
    assert.truthy(grep(lines, "ground/4 #1 box: at_meta_level")[1], table.concat(lines, "\n"))
    assert.truthy(grep(lines, 'ground/4 #1 box: message up subscriber/participant chat("eve", _)')[1])
    local ground = untimed(trace("--trace-vm ground"))
    assert.same({}, grep(ground, "ground/"))
    assert.truthy(grep(ground, "ground #4 box: add 1/up")[1])
  end)

  it("--trace-kind shows the lines of those kinds", function()
    local lines = untimed(trace("--trace-kind send,spawn"))
    for _, l in ipairs(lines) do
      local kind = l:match(": (%S+)")
      assert.is_true(kind == "send" or kind == "spawn", l)
    end
    assert.equal(2, #grep(lines, ": send "))
    assert.equal(6, #grep(lines, ": spawn "))    -- boot, 2 sessions, box, its boot, talker
    assert.same({ 'ground #5 talker: send chat("bob", "hi")' },
                untimed(trace("--trace-kind send --trace-topic 'chat(\"bob\", _)'")))
  end)

  it("--trace-topic unifies the pattern with each line's message, or else its topic", function()
    local lines = untimed(trace("--trace-topic 'chat(\"eve\", _)'"))
    local text = table.concat(lines, "\n")
    -- Messages: only eve's; roles: those whose topic unifies with it.
    assert.same({}, grep(lines, '"bob"'), text)
    assert.equal(1, #grep(lines, 'talker: send chat("eve"'), text)
    assert.truthy(grep(lines, 'sess-1: message in subscriber/participant chat(_, _) chat("eve"')[1], text)
    assert.truthy(grep(lines, "sess-1: add in subscriber/participant chat(_, _)")[1], text)
    assert.truthy(grep(lines, 'box: add 1/up subscriber/participant chat("eve", _)')[1], text)
    assert.same({}, grep(lines, ": spawn "))         -- no message and no topic
    assert.same({}, grep(lines, ": quit"))
    local none = trace("--trace-topic 'other(_)'")
    assert.same({}, none)
  end)

  it("combines filters: every one must match", function()
    local lines = untimed(trace("--trace-name 'sess-*' --trace-kind message --trace-pid 3"))
    assert.same({ 'ground #3 sess-2: message in subscriber/participant chat(_, _) chat("bob", "hi")',
                  'ground #3 sess-2: message in subscriber/participant chat(_, _) chat("eve", "tab\\there \\"q\\"")' },
                lines)
  end)

  it("--trace-file writes the lines there, and nothing to stderr", function()
    local lines, status, err = trace("--trace-kind send --trace-file @FILE")
    assert.equal(0, status, err)
    assert.equal("", err)
    assert.equal(2, #untimed(lines))
    local _, status2, err2 = trace("--trace-file /nonexistent/dir/trace.log")
    assert.equal(1, status2)
    assert.matches("market: %-%-trace%-file: cannot open '/nonexistent/dir/trace.log'", err2)
    -- A FIFO no one reads: fopen waited for a reader, for ever, as
    -- market.trace{file = ...} does not.
    local fifo = os.tmpname()
    os.remove(fifo)
    assert.equal(0, (H.sh("mkfifo " .. H.quote(fifo))))
    local _, status3, err3 = trace("--trace-file " .. H.quote(fifo))
    os.remove(fifo)
    assert.equal(1, status3)
    assert.matches("market: %-%-trace%-file: cannot open '[^']+': No such device or address", err3)
  end)

  it("--trace-format json writes one JSON object a line, terms in their JSON form", function()
    local lines = trace("--trace-format json")
    assert.is_true(#lines > 20)
    local seen = {}
    for _, l in ipairs(lines) do
      local o, why = json(l)
      assert.truthy(o, (why or "") .. ": " .. l)
      assert.matches("^%d%d%d%d%-%d%d%-%d%dT%d%d:%d%d:%d%d%.%d%d%dZ$", o.time)
      assert.is_string(o.vm)
      assert.is_number(o.pid)
      seen[o.kind] = seen[o.kind] or o
    end
    local spawn = seen.spawn
    assert.same({ "ground", 1, "lua" }, { spawn.vm, spawn.pid, spawn.behavior })
    local add = seen.add
    assert.same({ "in", "subscriber", "participant" }, { add.endpoint, add.orientation, add.interest })
    assert.same({ record = "chat", fields = { json_array = true, { wildcard = true }, { wildcard = true } } },
                add.topic)
    local sends = {}
    for _, l in ipairs(lines) do
      local o = json(l)
      if o.kind == "send" then sends[#sends + 1] = o.message end
    end
    assert.same({ record = "chat", fields = { json_array = true, "bob", "hi" } }, sends[1])
    assert.same({ record = "chat", fields = { json_array = true, "eve", 'tab\there "q"' } }, sends[2])
  end)

  it("shows every kind of term in JSON, bytes that are not UTF-8 in hex", function()
    local file = os.tmpname()
    local status, _, err = H.run_script([[
      local market = require "market"
      market.perform(market.send({ 1, -2.5, true, false, market.EOF, market._, "é\0\31",
        "\xff\x00a", 0 / 0, 1 / 0, {}, market.record("r", "a")("x") }))
    ]], "--no-drivers --trace-kind send --trace-format json --trace-file " .. file)
    local text = H.slurp(file)
    os.remove(file)
    assert.equal(0, status, err)
    local o, why = json(text:gsub("\n$", ""))
    assert.truthy(o, (why or "") .. ": " .. text)
    assert.same({ json_array = true, 1, -2.5, true, false, { eof = true }, { wildcard = true },
                  "é\0\31", { bytes = "ff0061" }, { float = "nan" }, { float = "inf" },
                  { json_array = true }, { record = "r", fields = { json_array = true, "x" } } },
                o.message)
    assert.matches('"é\\u0000\\u001f"', text, 1, true)
  end)

  it("shows a huge term cut short in JSON, as {\"cut\": text}", function()
    local file = os.tmpname()
    local status, _, err = H.run_script([[
      local market = require "market"
      local t = {}
      for i = 1, 5000 do t[i] = i end
      market.perform(market.send(t))
    ]], "--no-drivers --trace-kind send --trace-format json --trace-file " .. file)
    local text = H.slurp(file)
    os.remove(file)
    assert.equal(0, status, err)
    assert.is_true(#text < 1500, #text .. " bytes")
    local o = assert(json(text:gsub("\n$", "")))
    assert.matches("^%[1, 2, 3, .*%.%.%.$", o.message.cut)
  end)

  -- Every line was lost without a word, and market exited 0.
  it("says once that the file cannot be written, and stops the trace", function()
    local status, out, err = H.run_script([[
      local market = require "market"
      for i = 1, 3 do market.perform(market.send({ "x", i })) end
      print("ran")
    ]], "--no-drivers --trace-file /dev/full")
    assert.equal(0, status, err)
    assert.equal("ran\n", out)
    assert.equal("market: --trace-file: cannot write to '/dev/full': No space left on device; "
                 .. "the trace stops\n", err)
  end)

  it("refuses bad filters with a usage error (status 2)", function()
    local cases = {
      { "--trace-kind mesage", "%-%-trace%-kind: 'mesage' is not a kind of trace line" },
      { "--trace-kind send,", "%-%-trace%-kind: '' is not a kind of trace line" },
      { "--trace-pid 2,x", "%-%-trace%-pid: 'x' is not a pid" },
      { "--trace-pid -1", "%-%-trace%-pid: '%-1' is not a pid" },
      { "--trace-pid 99999999999999999999999", "%-%-trace%-pid: '99999999999999999999999' is not a pid" },
      { "--trace-topic 'chat(_,'", "%-%-trace%-topic: expected a term, at byte 7 of 'chat%(_,'" },
      { "--trace-topic '\"open'", "%-%-trace%-topic: unterminated string" },
      { "--trace-topic '1 2'", "%-%-trace%-topic: more text after the term, at byte 2" },
      { "--trace-topic 'nul'", "%-%-trace%-topic: not a term %(nil, true" },
      { "--trace-topic 'x(_)' --trace-topic 'y(_)'", "%-%-trace%-topic given twice" },
      { "--trace-format xml", "%-%-trace%-format: 'xml' is neither text nor json" },
      { "--trace-name", "%-%-trace%-name needs an argument" },   -- the last argument
    }
    for _, c in ipairs(cases) do
      local status, out, err = H.run(c[1] .. (c[1] == "--trace-name" and "" or " /dev/null"))
      assert.equal(2, status, c[1] .. ": " .. err)
      assert.equal("", out)
      assert.matches("^market: " .. c[2], err)
    end
  end)
end)

describe("market.trace", function()
  it("changes the filter, the format and the file at run time, in nested VMs too", function()
    local a, b = os.tmpname(), os.tmpname()
    local status, out, err = H.run_script(([[
      local market = require "market"
      market.perform(market.nested_vm(function()
        return market.transition(0, market.at_meta_level(market.subscriber("inner", { name = "x",
          on_message = function(_, m) return market.transition(0, market.quit()) end })))
      end, { name = "box" }))
      market.pause()
      market.perform(market.send("before"))          -- not traced: nothing asked yet
      print(market.trace { kind = "message", file = %q })
      market.perform(market.send("inner"))           -- told to the box, and inside it
      market.pause(); market.pause(); market.pause()
      print(market.trace { kind = { "send" }, name = "t*", format = "json", file = %q })
      market.perform(market.send("mine"))            -- the boot's name: the script's path
      market.perform(market.spawn(function() return market.transition(0, market.send("t1")) end,
                                  { name = "t1" }))
      market.pause()
      print(market.trace(false))
      market.perform(market.spawn(function() return market.transition(0, market.send("t2")) end,
                                  { name = "t2" }))
      market.pause()
      print(market.trace { pid = 1, kind = "send" })  -- back to the last place it wrote
      market.perform(market.send("again"))
      print(market.trace { file = "/nonexistent/dir/x" })
    ]]):format(a, b))
    local ta, tb = H.slurp(a), H.slurp(b)
    os.remove(a)
    os.remove(b)
    assert.equal(0, status, err)
    assert.equal("true\ntrue\ntrue\ntrue\nnil\tmarket.trace: cannot open '/nonexistent/dir/x': "
                 .. "No such file or directory\n", out)
    assert.equal("", err)
    assert.same({ 'ground #2 box: message 1/x subscriber/participant "inner" "inner"',
                  'ground/2 #1 box: message x subscriber/participant "inner" "inner"' },
                untimed(lines_of(ta)))
    local lb = lines_of(tb)
    assert.equal(2, #lb, tb)
    local t1 = assert(json(lb[1]))
    assert.same({ "t1", "send", "t1" }, { t1.name, t1.kind, t1.message })
    assert.matches(TIME .. 'ground #1 %S+: send "again"$', lb[2])
  end)

  it("is ground_vm's trace option, in plain Lua", function()
    local path = os.tmpname()
    local ok, e = market.ground_vm(function()
      market.perform(market.send({ "seen", 1 }))
      market.perform(market.send({ "unseen", 2 }))
    end, { trace = { kind = "send", topic = { "seen", market._ }, file = path } })
    local text = H.slurp(path)
    os.remove(path)
    assert.equal(true, ok, e)
    assert.matches(TIME .. 'ground #1 boot: send %["seen", 1%]\n$', text)
    assert.has_error(function() market.ground_vm(function() end, { trace = { kind = "x" } }) end,
                     "market.ground_vm: market.trace: no kind of line 'x' (spawn, quit, add, "
                     .. "delete, send, feedback, at_meta_level, presence, absence, message, spawned, "
                     .. "resume, meta, deleted)")
    -- At the caller's line, as ground_vm's other options are (not market.lua's).
    local line = debug.getinfo(1, "l").currentline + 1
    local _, err = pcall(function() market.open_ground_vm(print, { trace = { format = "xml" } }) end)
    assert.equal(("spec/trace_spec.lua:%d: market.open_ground_vm: market.trace: format must be "
                  .. "\"text\" or \"json\", got xml"):format(line), err)
  end)

  -- lua_close finalized the trace's file (closed it) before the ground VM
  -- left open, whose processes were then traced ending into the closed
  -- FILE: a use after free (valgrind), and those lines were lost.
  it("writes the lines of a ground VM left open to the end, as the state closes", function()
    local path = os.tmpname()
    local status, _, err = H.sh(("timeout 60 env LUA_CPATH=%s lua5.4 -e %s"):format(
      H.quote(package.cpath), H.quote(([[
        local market = require "market"
        local g = market.open_ground_vm(function()
          market.trace { kind = "quit", file = %q }
          market.perform(market.spawn(function()
            return market.transition(nil, market.publisher("y", { name = "p" }))
          end, { name = "kid" }))
        end)
        for _ = 1, 5 do g:step() end
      ]]):format(path))))
    local text = H.slurp(path)
    os.remove(path)
    assert.equal(0, status, err)
    assert.matches("boot: quit\n" .. TIME:sub(2) .. "ground #2 kid: quit\n$", text)
  end)

  -- fopen of a FIFO blocks until a reader opens it: the whole program
  -- stopped in market.trace.
  it("refuses a FIFO that no one reads, and does not wait for a reader", function()
    local fifo = os.tmpname()
    os.remove(fifo)
    assert.equal(0, (H.sh("mkfifo " .. H.quote(fifo))))
    local status, out, err = H.sh(("timeout 10 env LUA_CPATH=%s lua5.4 -e %s"):format(
      H.quote(package.cpath), H.quote(([[
        local market = require "market"
        assert(market.ground_vm(function() print(market.trace { file = %q }) end))
      ]]):format(fifo))))
    os.remove(fifo)
    assert.equal(0, status, err)
    assert.equal(("nil\tmarket.trace: cannot open '%s': No such device or address\n"):format(fifo), out)
  end)

  it("works from a coroutine of the process's own", function()
    -- It asked for the process whose coroutine ran it, and a coroutine.wrap
    -- inside the boot was "not inside a market process".
    local path = os.tmpname()
    local ok, e = market.ground_vm(function()
      coroutine.wrap(function() assert(market.trace { kind = "send", file = path }) end)()
      market.perform(market.send("x"))
    end)
    local text = H.slurp(path)
    os.remove(path)
    assert.equal(true, ok, e)
    assert.matches(TIME .. 'ground #1 boot: send "x"\n$', text)
  end)

  it("shows each event of a burst handled on one resume, before what its handler did",
     function()
    local path = os.tmpname()
    local ok, e = market.ground_vm(function()
      market.perform(market.spawn(function()
        return market.transition(0, market.subscriber({ "a", market._ }, { name = "in",
          on_message = function(s, m) return market.transition(s, market.send({ "r", m[2] })) end }))
      end, { name = "A" }))
      market.pause()
      for i = 1, 3 do market.perform(market.send({ "a", i })) end
      market.pause()
    end, { trace = { kind = { "message", "send" }, name = "A", file = path } })
    local text = H.slurp(path)
    os.remove(path)
    assert.equal(true, ok, e)
    local want = {}
    for i = 1, 3 do
      want[#want + 1] = ('ground #2 A: message in subscriber/participant ["a", _] ["a", %d]'):format(i)
      want[#want + 1] = ('ground #2 A: send ["r", %d]'):format(i)
    end
    assert.same(want, untimed(lines_of(text)))
  end)

  -- The names' strings were kept as bare pointers while the other fields
  -- were read: an __index of the options (or a finalizer) could drop them
  -- from their list and collect them before the trace copied them (ASan:
  -- heap-use-after-free in strs_dup), and the filter held what took their
  -- place.
  it("keeps the globs it was given though the options' __index drops them", function()
    local status, out, err = H.run_script([[
      local market = require "market"
      local names, junk = { ("s"):rep(60) .. "*" }, {}     -- held by the list alone
      print(market.trace(setmetatable({ name = names, kind = "send" }, { __index = function(_, k)
        if k == "vm" then
          names[1] = nil
          collectgarbage(); collectgarbage()
          for i = 1, 1000 do junk[i] = ("J"):rep(61) .. i end
        end
      end })))
      market.perform(market.spawn(function() market.perform(market.send("seen")) end,
                                  { name = ("s"):rep(60) .. "x" }))
      market.pause()
    ]], "--no-drivers")
    assert.equal(0, status, err)
    assert.equal("true\n", out)
    assert.same({ ("ground #2 %sx: send \"seen\""):format(("s"):rep(60)) }, untimed(lines_of(err)))
  end)

  -- market.trace returned true and every line was lost without a word.
  it("says once that its file cannot be written, stops, and starts again on stderr", function()
    local status, out, err = H.run_script([[
      local market = require "market"
      print(market.trace { file = "/dev/full", kind = "send" })
      for i = 1, 3 do market.perform(market.send({ "lost", i })) end
      print(market.trace { kind = "send" })
      market.perform(market.send("shown"))
    ]], "--no-drivers")
    assert.equal(0, status, err)
    assert.equal("true\ntrue\n", out)
    local lines = lines_of(err)
    assert.equal(2, #lines, err)
    assert.equal("market.trace: cannot write to '/dev/full': No space left on device; the trace stops",
                 lines[1])
    assert.matches(TIME .. 'ground #1 %S+: send "shown"$', lines[2])
  end)

  -- An empty list gave a count of 0, which the trace took for no filter:
  -- {pid = {}} showed every line.
  it("shows no line for a filter given an empty list", function()
    for _, f in ipairs { "pid", "name", "vm", "kind" } do
      local path = os.tmpname()
      local ok, e = market.ground_vm(function()
        market.perform(market.send("hidden"))
        assert(market.trace { kind = "send", file = path })     -- the filter alone changes
        market.perform(market.send("shown"))
        assert(market.trace { [f] = {} })
        market.perform(market.send("hidden"))
      end, { trace = { [f] = {}, file = path } })
      local text = H.slurp(path)
      os.remove(path)
      assert.equal(true, ok, e)
      assert.same({ 'ground #1 boot: send "shown"' }, untimed(lines_of(text)), f)
    end
  end)

  it("refuses what is not an option, and is for processes only", function()
    local status, out, err = H.run_script([[
      local market = require "market"
      for _, bad in ipairs { { kinds = "send" }, { pid = "x" }, { pid = -1 }, { name = 3 },
                             { name = { "a", 2 } }, { format = "xml" }, { format = 1 }, { file = {} }, 42,
                             { pid = "1" }, { file = 5 }, { file = "a\0b" }, { vm = "g\0" } } do
        print((select(2, pcall(market.trace, bad))))
      end
      print((select(2, pcall(market.trace))))         -- nil is not false: a mistake, not "every line"
    ]])
    assert.equal(0, status, err)
    assert.equal(table.concat({
      "market.trace: no option kinds (pid, name, vm, kind, topic, format, file)",
      "market.trace: pid must be a pid or a list of pids, got string",
      "market.trace: pid must be a pid or a list of pids, got number",
      "market.trace: name must be a string or a list of strings, got number",
      "market.trace: name[2] must be a string, got number",
      "market.trace: format must be \"text\" or \"json\", got xml",
      "market.trace: format must be \"text\" or \"json\", got 1",
      "market.trace: file must be a path, got table",
      "market.trace: expected a table of options, true or false, got number",
      -- Once taken: "1" as pid 1, 5 as a file named "5", a path or glob cut at its NUL.
      "market.trace: pid must be a pid or a list of pids, got string",
      "market.trace: file must be a path, got number",
      "market.trace: file must be a path, got a string with a NUL byte",
      "market.trace: vm must hold no NUL byte",
      "market.trace: expected a table of options, true or false, got nil", "" }, "\n"), out)
    assert.has_error(function() market.trace(true) end,
                     "market.trace: not inside a market process (ground_vm takes a trace option)")
  end)
end)

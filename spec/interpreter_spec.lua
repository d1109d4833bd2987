-- interpreter_spec.lua: the `market` program (DESIGN §4), run as a child
-- process from $MARKET_BUILD/market.
package.path = "spec/support/?.lua;" .. package.path
local H = require "helpers"

local function script(text)
  return H.tempfile(text)
end

-- market ARGS with INPUT on a pipe as its standard input, for at most 20
-- s.  (INPUT is printf's format: \n a newline, no %.)
local function piped(input, args)
  return H.sh(("printf %s | timeout 20 %s %s"):format(H.quote(input), H.quote(H.market_bin()), args))
end

describe("market script.lua", function()
  it("runs the script with its arguments in `arg` and `...`, and exits 0", function()
    local path = script([[
      print("arg0", arg[0] == (...) and "same" or arg[0]:match("[^/]*$"))
      print("args", arg[1], arg[2], #arg, select("#", ...), ...)
      print("neg", arg[-1] ~= nil)
    ]])
    local status, out, err = H.run(H.quote(path) .. " a 'b c'")
    os.remove(path)
    assert.equal(0, status, err)
    assert.equal(("arg0\t%s\nargs\ta\tb c\t2\t2\ta\tb c\nneg\ttrue\n"):format(path:match("[^/]*$")),
                 out)
    assert.equal("", err)
  end)

  -- open(2) of a FIFO with no writer blocks: the stop a SIGTERM began there
  -- was never served, and the program ran on until killed.
  it("is ended by one SIGTERM while it waits to read the script (a FIFO)", function()
    local dir = os.tmpname()
    os.remove(dir)
    local status, out = H.sh(([[
      mkdir %s && mkfifo %s/fifo || exit 9
      %s %s/fifo & pid=$!
      sleep 0.5; kill -TERM $pid; sleep 1
      kill -0 $pid 2>/dev/null && { echo "still running"; kill -KILL $pid; }
      wait $pid; echo "status $?"; rm -rf %s]]):format(H.quote(dir), H.quote(dir), H.quote(H.market_bin()),
                                                   H.quote(dir), H.quote(dir)))
    assert.equal(0, status, out)
    assert.equal("status 143\n", out)
  end)

  it("top-level code is the boot process: it performs actions and waits with market.yield",
     function()
    local path = script([[
      local market = require "market"
      local pid = market.perform(market.spawn(function()
        return market.transition(0, market.subscriber("ping", { on_message = function(s)
          return market.transition(s, market.send("pong"), market.quit())
        end }))
      end))
      market.perform(market.subscriber("pong", "pong"))
      market.pause()
      market.perform(market.send("ping"))
      local ev = market.yield()
      print("boot", select(3, market.self()), "got", ev.message, "on", ev.endpoint, "child", pid)
    ]])
    local status, out, err = H.run("--no-drivers " .. H.quote(path))
    os.remove(path)
    assert.equal(0, status, err)
    assert.equal("boot\tground\tgot\tpong\ton\tpong\tchild\t2\n", out)
  end)

  it("a script may return a transition: its state and actions, handlers included", function()
    local path = script([[
      local market = require "market"
      return market.transition(10, market.subscriber("tick", { on_message = function(s)
        print("tick", s)
        if s == 12 then return market.transition(s, market.quit()) end
        return market.transition(s + 1)
      end }), market.send("tick"), market.send("tick"), market.send("tick"))
    ]])
    local status, out, err = H.run("--no-drivers " .. H.quote(path))
    os.remove(path)
    assert.equal(0, status, err)
    assert.equal("tick\t10\ntick\t11\ntick\t12\n", out)
  end)

  it("starts the timer driver (and the others) unless --no-drivers", function()
    local path = script([[
      local market = require "market"
      local timer = require "market.timer"
      market.perform(market.subscriber(timer.expired("t", market._), "t"))
      market.perform(market.send(timer.set("t", 5, "relative")))
      local ev = market.yield()
      print("expired", ev.message.label, math.type(ev.message.msecs) ~= nil)
    ]])
    local status, out, err = H.run(H.quote(path))
    os.remove(path)
    assert.equal(0, status, err)
    assert.equal("expired\tt\ttrue\n", out)
  end)

  -- docs/semantics.md §2: the host spawns the drivers before the script;
  -- ground_vm{drivers = true} spawns them from its boot process.
  it("runs the script as pid 4, after the drivers (1 to 3); as pid 1 with --no-drivers; " ..
     "ground_vm{drivers = true} boots as pid 1 and spawns the drivers as 2 to 4",
     function()
    local path = script([[
      local market = require "market"
      local pid, _, path = market.self()
      print(pid, path)
    ]])
    local status, out, err = H.run(H.quote(path))
    local status2, out2, err2 = H.run("--no-drivers " .. H.quote(path))
    os.remove(path)
    assert.equal(0, status, err)
    assert.equal("4\tground\n", out)
    assert.equal(0, status2, err2)
    assert.equal("1\tground\n", out2)
    local market = require "market"
    -- In process: the boot is pid 1, the three drivers take 2 to 4.
    local pids = {}
    assert(market.ground_vm(function(me)
      pids = { me, market.perform(market.spawn(function() end)) }
    end, { drivers = true }))
    assert.same({ 1, 5 }, pids)
  end)

  it("exits non-zero with the error and a traceback when the boot script fails", function()
    local path = script([[
      local function deeper() error("the script broke") end
      deeper()
    ]])
    local status, out, err = H.run("--no-drivers " .. H.quote(path))
    os.remove(path)
    assert.equal(1, status)
    assert.matches("^market: [^\n]*:1: the script broke\n", err)
    assert.matches("stack traceback:", err)
    assert.matches("in %a* ?%a* ?'?deeper'?", err)
  end)

  it("exits 1 with the reason and a traceback when the boot script calls coroutine.yield()",
     function()
    local path = script([[
      local function wait() coroutine.yield() end
      wait()
      print("not reached")
    ]])
    local status, out, err = H.run("--no-drivers " .. H.quote(path))
    os.remove(path)
    assert.equal(1, status, err)
    assert.equal("", out)
    assert.matches("^market: ground #%d+ [^\n]* failed: coroutine.yield%(%) outside " ..
                   "market.yield%(%): a process suspends only through market\nstack traceback:\n", err)
    assert.matches("in %a* ?%a* ?'?wait'?", err)
  end)

  it("a crash of a spawned process is not the program's failure", function()
    local path = script([[
      local market = require "market"
      market.perform(market.spawn(function() error("child broke") end))
      market.pause()
      print("boot done")
    ]])
    local status, out, err = H.run("--no-drivers " .. H.quote(path))
    os.remove(path)
    assert.equal(0, status, err)
    assert.equal("boot done\n", out)
  end)

  it("a syntax error or a missing script is reported, non-zero", function()
    local path = script("this is not lua\n")
    local status, out, err = H.run(H.quote(path))
    os.remove(path)
    assert.equal(1, status)
    assert.matches("^market: [^\n]*:1: syntax error", err)
    status, out, err = H.run("/nonexistent/script.lua")
    assert.equal(1, status)
    assert.matches("^market: cannot open /nonexistent/script%.lua", err)
  end)
end)

describe("the collector under market", function()
  -- A minor collection that falls due while handlers run is made after the
  -- slice of deliveries instead, once its writes are made
  -- (lua/lproc.c, settle_gc): a program allocating a little per
  -- activation, in activations a timer wakes one by one, meets none in
  -- its own code.  The first loop takes the heap past the collector's
  -- start (its first major collections and the long pause after them).
  it("makes the minor collections between activations, not inside them", function()
    local path = script([[
      local market = require "market"
      for _ = 1, 300 do for _ = 1, 200 do local _ = {} end market.yield(0) end
      local inside, collections = 0, 0
      local last = collectgarbage("count")
      for _ = 1, 400 do
        local before = collectgarbage("count")
        if before < last then collections = collections + 1 end
        for _ = 1, 10 do local _ = {} end
        last = collectgarbage("count")
        if last < before then inside = inside + 1; collections = collections + 1 end
        market.yield(1)
      end
      print(inside, collections)
    ]])
    local status, out, err = H.run("--no-drivers " .. H.quote(path))
    os.remove(path)
    assert.equal(0, status, err)
    local inside, collections = out:match("^(%d+)\t(%d+)\n$")
    assert.is_truthy(inside, out)
    assert.is_true(tonumber(collections) >= 3, out)     -- the loop did collect
    assert.equal(0, tonumber(inside), out)
  end)
end)

describe("market -e", function()
  it("runs CODE as the boot process; further arguments are its arguments", function()
    local status, out, err = H.run("-e " .. H.quote([[
      local market = require "market"
      market.perform(market.spawn(function() print("child", select(3, market.self())) end))
      print("code", select("#", ...), arg[1], arg[2], ...)
    ]]) .. " x y")
    assert.equal(0, status, err)
    assert.equal("code\t2\tx\ty\tx\ty\nchild\tground\n", out)
  end)

  it("has the code as arg[0], also with options or -- between it and its arguments", function()
    local quoted = H.quote("print(arg[0]:sub(1, 12) == 'print(arg[0]', arg[1], arg[2], #arg, ...)")
    for _, between in ipairs { "", "--strict", "--", "--quiet --", "--drain 10 --no-drivers --" } do
      local status, out, err = H.run("-e " .. quoted .. " " .. between .. " a b")
      assert.equal(0, status, err)
      assert.equal("true\ta\tb\t2\ta\tb\n", out, between)
    end
    -- The options stay with the interpreter, at the negative indices.
    local status, out = H.run("-e " .. H.quote("print(arg[-3], arg[-2], arg[-1])") .. " --strict -- a")
    assert.equal(0, status)
    assert.equal("-e\t--strict\t--\n", out)
  end)

  it("fails like a script", function()
    local status, out, err = H.run("-e " .. H.quote("error('from -e')"))
    assert.equal(1, status)
    assert.matches("^market: ground #%d+ %(command line%) failed: %(command line%):1: from %-e\n",
                   err)
    assert.matches("stack traceback", err)
  end)

  it("without CODE is a usage error", function()
    local status, out, err = H.run("-e")
    assert.equal(2, status)
    assert.matches("%-e needs an argument", err)
  end)

  -- The second replaced the first: only B ran.
  it("given twice is a usage error; after the code, -e is the code's argument", function()
    local status, out, err = H.run("-e 'print(1)' -e 'print(2)'")
    assert.equal(2, status)
    assert.equal("", out)
    assert.equal("market: -e given twice: the code is one chunk (join the pieces with ';')\n", err)
    status, out, err = H.run("-e 'print(...)' x -e y")
    assert.equal(0, status, err)
    assert.equal("x\t-e\ty\n", out)
  end)
end)

-- The script `-` is standard input, as lua(1) has it ("cannot open -"
-- before).
describe("market -", function()
  local function sh(script, args) return piped(script, "- " .. (args or "")) end

  it("reads the script from standard input; arg[0] is -, the rest its arguments", function()
    local status, out, err = sh("print(arg[0], select('#', ...), ...)\n", "a b")
    assert.equal(0, status, err)
    assert.equal("-\t2\ta\tb\n", out)
  end)

  it("names the chunk stdin in errors and tracebacks", function()
    local status, _, err = sh("\nerror('from stdin')\n")
    assert.equal(1, status)
    assert.matches("^market: ground #%d+ stdin failed: stdin:2: from stdin\n", err)
    status, _, err = sh("local x =\n")
    assert.equal(1, status)
    assert.matches("^market: stdin:2: unexpected symbol near <eof>\n$", err)
  end)

  -- As luaL_loadfilex skips them in a script given by name, and lua5.4 -
  -- on standard input ("stdin:1: unexpected symbol near '#'" before).
  it("skips a UTF-8 BOM and a first line starting with #, still counted as line 1", function()
    for _, head in ipairs { "#!/usr/bin/env market\n", "\239\187\191#!/usr/bin/env market\n",
                            "# a comment\r\n" } do
      local status, out, err = sh(head .. "print('ok', ...)\nerror('at 3')\n", "a")
      assert.equal(1, status, head)
      assert.equal("ok\ta\n", out, head)
      assert.matches("^market: ground #%d+ stdin failed: stdin:3: at 3\n", err, 1, head)
    end
    local status, out, err = sh("\239\187\191print('bom')\n")
    assert.equal(0, status, err)
    assert.equal("bom\n", out)
    status, out, err = sh("#!/usr/bin/env market")       -- that line alone
    assert.equal(0, status, err)
    assert.equal("", out .. err)
  end)

  -- As a script given by name: it was cut at its first NUL ("unfinished
  -- string") and a precompiled chunk refused ("attempt to load a binary
  -- chunk (mode is 't')").
  it("takes the whole input, NUL bytes and precompiled (luac) chunks too", function()
    local status, out, err = sh("print(#'a\\0b', ...)\n", "x")   -- printf makes the NUL
    assert.equal(0, status, err)
    assert.equal("3\tx\n", out)
    local chunk = string.dump(load("print('dumped', ...)"))
    for _, head in ipairs { "", "\239\187\191", "#!/usr/bin/env market\n" } do
      local path = H.tempfile(head .. chunk, ".luac")
      status, out, err = H.sh(("timeout 20 %s - y <%s"):format(H.quote(H.market_bin()), H.quote(path)))
      os.remove(path)
      assert.equal(0, status, err)
      assert.equal("dumped\ty\n", out)
    end
  end)

  it("says so when standard input is closed, and with --workers", function()
    local status, _, err = H.sh(("timeout 20 %s - <&-"):format(H.quote(H.market_bin())))
    assert.equal(1, status)
    assert.equal("market: cannot read the script from standard input: Bad file descriptor\n", err)
    status, _, err = H.sh(("echo 'print(1)' | timeout 20 %s --workers 2 -"):format(H.quote(H.market_bin())))
    assert.equal(2, status)
    assert.equal("market: the script - (standard input) cannot be given with --workers\n", err)
  end)

  -- A standard descriptor closed at start keeps its number on /dev/null
  -- opened with O_PATH, which epoll refuses: watched, libev aborted the
  -- program (134), market -i <&- among them.
  it("refuses to watch a standard descriptor closed at start, and -i ends", function()
    local bin = H.quote(H.market_bin())
    local status, out, err = H.sh(("timeout 20 %s -e %s <&-"):format(bin, H.quote([[
local m = require "market"
m.perform(m.subscriber(m.ground.readable(0), "in"))
local ev = m.wait_for(function(e) return e.endpoint == "in" and e.type == "absence" end)
print(ev.reason)]])))
    assert.same({ 0, "market:readable(0): not an open file descriptor\n", "" }, { status, out, err })
    status, out, err = H.sh(("timeout 20 %s -i <&-"):format(bin))
    assert.equal(0, status, err)
    assert.matches("^market [^\n]*\n> \n$", out)
    assert.equal("market: standard input: market:readable(0): not an open file descriptor\n", err)
  end)
end)

describe("market options", function()
  it("--help explains itself and exits 0", function()
    for _, opt in ipairs { "--help", "-h" } do
      local status, out, err = H.run(opt)
      assert.equal(0, status)
      assert.matches("^usage: market %[options%] %[script %[args%.%.%.%]%]", out)
      for _, word in ipairs { "%-e CODE", "%-%-trace", "%-%-no%-drivers", "%-%-version", "arg" } do
        assert.matches(word, out)
      end
    end
  end)

  it("--version prints the version", function()
    local status, out = H.run("--version")
    assert.equal(0, status)
    assert.matches("^market %d+%.%d+[%.%d]* %(Lua 5%.4[%.%d]*%)\n$", out)
  end)

  it("an unknown option is a usage error (status 2)", function()
    local status, out, err = H.run("--frobnicate")
    assert.equal(2, status)
    assert.matches("unknown option '%-%-frobnicate'", err)
  end)

  -- "no script given" (status 2) before, where lua(1) runs its input.
  it("without a script runs standard input when it is not a terminal, as lua(1)", function()
    local status, out, err = piped('print(1 + 1, select("#", ...))', "")
    assert.equal(0, status, err)
    assert.equal("2\t0\n", out)
    status, out, err = H.run("")
    assert.equal(0, status, err)
    assert.equal("", out)
  end)

  it("--trace prints one line per event and action to stderr", function()
    local path = script([[
      local market = require "market"
      market.perform(market.spawn(function()
        return market.transition(0, market.subscriber({ "hello", market._ }, { name = "in",
          on_message = function(s, m) return market.transition(s, market.quit(nil, "done")) end }))
      end, { name = "greeter" }))
      market.pause()
      market.perform(market.send({ "hello", 42 }))
    ]])
    local status, out, err = H.run("--no-drivers --trace " .. H.quote(path))
    os.remove(path)
    assert.equal(0, status, err)
    local lines = {}
    -- The boot process is named after the script (or "boot").
    local quoted = path:gsub("%p", "%%%0")
    -- Each line starts with the time (UTC, to the millisecond): TIME below.
    for l in err:gmatch("[^\n]+") do
      l = l:gsub("^%d%d%d%d%-%d%d%-%d%dT%d%d:%d%d:%d%d%.%d%d%dZ ", "TIME ")
      lines[#lines + 1] = (l:gsub(quoted, "boot"))
    end
    local want = {
      "TIME ground #1 boot: spawn lua",
      "TIME ground #2 greeter: spawn lua",
      'TIME ground #2 greeter: add in subscriber/participant ["hello", _]',
      "TIME ground #1 boot: resume",
      'TIME ground #1 boot: send ["hello", 42]',
      "TIME ground #1 boot: quit",
      'TIME ground #2 greeter: message in subscriber/participant ["hello", _] ["hello", 42]',
      'TIME ground #2 greeter: quit "done"',
      'TIME ground #2 greeter: delete in subscriber/participant ["hello", _] "done"',
    }
    assert.same(want, lines)
  end)
end)

describe("byte strings in the market program's own Lua state", function()
  -- Its allocator tells the string cache whether a long string's block can
  -- have been reused (lua/lterm.c): long strings of one length, made and
  -- collected in turn, each read back as itself.
  it("keep their own bytes when long, whatever strings came and went before them", function()
    local status, out, err = H.run_script([[
      local market = require "market"
      local blob, _ = market.record("blob", "data"), market._
      local keep = {}
      for round = 1, 200 do
        local s = ("%08d"):format(round):rep(128)                 -- 1 KiB
        local r = blob(s)
        assert(r.data == s and market.unify(s, _) == s, "round " .. round)
        keep[#keep + 1] = r
        if round % 4 == 0 then keep = {} end
        s, r = nil, nil
        collectgarbage()
      end
      for round = 1, 50 do
        local s = ("%08d"):format(round):rep(128)
        local got = blob(("%08d"):format(round):rep(128)).data    -- a fresh Lua copy
        assert(blob(got).data == s, "copy " .. round)
        got = nil
        collectgarbage()
      end
      print("ok")
    ]])
    assert.equal(0, status, err)
    assert.equal("ok\n", out)
  end)
end)

-- The prompt: `market` at a terminal, or -i.  Standard input here is a
-- pipe or a FIFO, so -i is given.
describe("market -i", function()
  local BANNER = "^market %S+ %(Lua 5%.4%): each chunk runs as a process; Ctrl%-C stops it, Ctrl%-D leaves\n"

  local function repl(input, args) return piped(input, "-i " .. (args or "")) end

  it("runs each chunk as a process and prints what it returns, as lua(1)", function()
    local status, out, err = repl(table.concat({
      "x = 6 * 7",                                           -- globals are shared
      "x",
      "{1, 2, market._}",                                    -- a term as market.repr shows it
      "local t = require 'market.timer'; t.sleep(10) return 'slept', market.self() ~= nil",
      "function f(a)",                                       -- a chunk over three lines
      "  return a + 1",
      "end",
      "f(1)",
      "return market.transition(nil, market.subscriber('ping', " ..
        "{ on_message = function() print('pong') end }))",  -- lives on
      "market.perform(market.send('ping'))",
      "market.perform(market.send(market._))",             -- reaches the prompt's endpoints too
      "'still here'",
      "ps():find('  repl ', 1, true) ~= nil",              -- the processes, as rows
      "" }, "\n"))
    assert.equal(0, status, err)
    assert.equal("", err)
    local rest = out:gsub(BANNER, "")
    assert.is_true(rest ~= out, out)
    assert.equal("> > 42\n> [1, 2, _]\n> slept\ttrue\n> >> >> > 2\n> > pong\n> pong\n> still here\n> true\n> \n",
                 rest)
  end)

  it("keeps the prompt when a chunk fails or does not compile", function()
    local status, out, err = repl("error('boom')\nlocal = 1\n" ..
      "setmetatable({}, { __tostring = function() error('no text') end })\n'still here'\n")
    assert.equal(0, status, err)
    assert.equal("> > > > still here\n> \n", (out:gsub(BANNER, "")))
    assert.matches("^market: ground #%d+ stdin:1 failed: stdin:1: boom\n", err)
    assert.matches("\nstdin:1: <name> expected near '='\n", err)
    -- (The value's text is made in the chunk's process, which fails.)
    assert.matches("\nmarket: ground #%d+ stdin:2 failed: stdin:1: no text\n", err)
  end)

  -- Lines already read were taken in one activation, each compiling the
  -- chunk so far again: a chunk of 6,000 lines passed the prompt's budget,
  -- which failed it and ended the program (status 1).  A line longer than
  -- a read was appended to and searched again at each read.
  it("takes a chunk of thousands of lines, and a line of megabytes, from a pipe", function()
    local input = H.tempfile("t = {\n" .. ("1,\n"):rep(6000) .. "}\n#t\n" ..
                             "s = '" .. ("a"):rep(3000000) .. "'\n#s\n")
    local status, out, err = H.sh(("timeout -k 5 60 %s -i < %s"):format(H.quote(H.market_bin()),
                                                                       H.quote(input)))
    os.remove(input)
    assert.equal(0, status, err)
    assert.equal("", err)
    assert.matches("> 6000\n> > 3000000\n> \n$", out)
  end)

  -- A chunk that sends the prompt's own record for its end before its
  -- values are made: the prompt wrote nil and failed, and the program ended.
  it("is not ended by a chunk that forges the record of its end", function()
    local status, out, err = repl("market.perform(market.send(market.record('market:repl-finished', 'n')(1))) " ..
      "require('market.timer').sleep(50) return 'done'\n'next'\n")
    assert.equal(0, status, err)
    assert.equal("", err)
    assert.equal("> done\n> next\n> \n", (out:gsub(BANNER, "")))
  end)

  -- Chunks share the standard library and the market table with the
  -- prompt: "market.repl:117: attempt to call a nil value (field 'io')",
  -- and the program ended.  (The string library is the runtime's too:
  -- market.lua calls its methods, so a chunk that takes it away breaks
  -- every process, as it would any Lua library.)
  it("keeps its prompt when a chunk takes away what the prompt uses", function()
    local status, out, err = repl(table.concat({
      "local m = market; m.yield, m.subscriber, m.spawn, m.send, m.quit = nil, nil, nil, nil, nil; " ..
        "io, load, table = nil, nil, nil",
      "1 + 1",
    }, "\n") .. "\n")
    assert.equal(0, status, err)
    assert.matches("> > 2\n> \n$", out)
  end)

  it("starts a script given first, with its arguments", function()
    local path = script("print(select('#', ...), ...)\n")
    local status, out, err = repl("1 + 1\n", H.quote(path) .. " a b")
    os.remove(path)
    assert.equal(0, status, err)
    assert.matches("^2\ta\tb\n", out)
    assert.matches("> 2\n> \n$", out)
  end)

  -- market -i reading a FIFO that `feed` (shell lines, with H.HEARD's
  -- `heard`) writes to on descriptor 3 and signals ($pid) as it goes,
  -- once the interpreter has written its banner (a signal sent before it
  -- has started, as a loaded machine may make it, would find the default
  -- action); the exit status and what the prompt wrote after its banner.
  local function fifo_session(feed)
    local dir = os.tmpname()
    os.remove(dir)
    assert(os.execute("mkdir " .. H.quote(dir)))
    local status, out, err = H.sh(([[
      %s
      exec 2>&1; cd %s && mkfifo in || exit 9
      %s -i <in >out 2>err & pid=$!
      exec 3>in
      for i in $(seq 300); do [ -s out ] && break; sleep 0.05; done
      %s
      exec 3>&-
      (sleep 15; kill -KILL $pid 2>/dev/null) & guard=$!
      wait $pid; echo "status $?"; kill $guard
      cat out err]]):format(H.HEARD, H.quote(dir), H.quote(H.market_bin()), feed))
    os.execute("rm -rf " .. H.quote(dir))
    assert.equal(0, status, err)
    local code, rest = out:match("^status (%d+)\n(.*)$")
    return tonumber(code), ((rest or out):gsub(BANNER, ""))
  end

  it("stops the chunk running at Ctrl-C, and the program at two in a row", function()
    local status, out = fifo_session([[
      echo 'require("market.timer").sleep(60000) print("not interrupted")' >&3; sleep 0.5
      kill -INT $pid; sleep 0.3
      echo '"after"' >&3; sleep 0.3
      kill -INT $pid; sleep 0.3
      kill -INT $pid]])
    assert.equal(0, status, out)
    assert.equal("> interrupted\n> after\n> \n(Ctrl-C again or Ctrl-D to leave)\n> \n", out)
  end)

  -- A Ctrl-C pressed while a chunk holds the thread (a loop, here) is read
  -- by the ground once the chunk has ended: it was the chunk's, and must
  -- neither clear the next line nor count as the first of two that leave.
  it("takes a Ctrl-C pressed while a chunk held the thread as that chunk's", function()
    local status, out = fifo_session([[
      echo 'io.write("held ") io.flush() local t = os.clock() while os.clock() - t < 0.6 do end' >&3
      heard out held
      kill -INT $pid; sleep 1.5
      echo '"after"' >&3; sleep 0.3]])
    assert.equal(0, status, out)
    assert.equal("> held > after\n> \n", out)
  end)

  -- The prompt takes Ctrl-C as an event: a chunk stuck where nothing
  -- reaches it (a finaliser that loops, a loop with no budget) ran on
  -- through any number of SIGINTs and SIGTERMs; only SIGKILL ended it.
  it("ends at the second Ctrl-C when a chunk is stuck where the prompt cannot run", function()
    local status, out = fifo_session([[
      echo 'setmetatable({}, { __gc = function() while true do end end }) collectgarbage()' >&3
      sleep 0.5
      kill -INT $pid; sleep 0.5
      kill -INT $pid; sleep 0.5]])
    assert.equal(130, status, out)
    assert.equal("> ", out)
  end)

  -- The prompt begins a graceful stop at SIGTERM and goes; a process that
  -- holds the program meanwhile (a sleeper) kept it for the drain, and the
  -- next SIGTERM killed it by the default action: no teardown (no
  -- finaliser ran), and its status was the signal's, not 143.
  it("ends at a signal during the stop the prompt began, through the teardown", function()
    local status, out = fifo_session([[
      echo 'kept = setmetatable({}, { __gc = function() print("closed") end }) ' \
           'market.perform(market.spawn(function() require("market.timer").sleep(8000) end))' >&3
      sleep 0.5
      kill -TERM $pid; sleep 0.5
      kill -TERM $pid; sleep 0.5]])
    assert.equal(143, status, out)
    assert.equal("> > \nclosed\n", out)     -- the Lua state closed, as at any end
  end)

  it("is what market without a script is at a terminal (script(1) makes one)", function()
    local status, out, err = H.sh(("printf '1 + 1\\n' | timeout 20 script -qfec %s /dev/null")
                                  :format(H.quote(H.quote(H.market_bin()))))
    assert.equal(0, status, err)
    out = out:gsub("\r", "")
    assert.matches("\nmarket %S+ %(Lua 5%.4%): each chunk runs as a process", out)
    assert.matches("\n> 2\n> \n$", out)
  end)

  it("is not held in read(2) by a readable event some process forged", function()
    local status, out = fifo_session([[
      echo 't0 = market.now() market.perform(market.spawn(function() ' \
           'require("market.timer").sleep(100) market.perform(market.send(market.ground.readable(0))) ' \
           'require("market.timer").sleep(200) print("tick", market.now() - t0 < 900) end))' >&3
      sleep 1.5; echo '"alive"' >&3]])
    assert.equal(0, status, out)
    assert.equal("> > tick\ttrue\nalive\n> \n", out)
  end)

  it("is a usage error with --workers or the script -", function()
    local status, _, err = H.run("-i --workers 2 x.lua")
    assert.equal(2, status)
    assert.matches("%-i cannot be given with %-%-workers", err)
    status, _, err = H.run("-i -")
    assert.equal(2, status)
    assert.matches("%-i reads standard input: the script cannot be %- too", err)
  end)
end)

-- crash_spec.lua: crash reports (docs/inspect.md, "Crash reports"): every
-- process failure prints one report to stderr, --quiet and --strict, the
-- boot process's failure, and market.ground_vm's on_crash.
package.path = "spec/support/?.lua;" .. package.path
local H = require "helpers"
local market = require "market"

-- The reports in stderr text: their first lines.
local function heads(err)
  local t = {}
  for line in err:gmatch("[^\n]+") do
    if line:find("^market: .* failed: ") then t[#t + 1] = line end
  end
  return t
end

local function count(s, pat)
  return select(2, s:gsub(pat, ""))
end

describe("crash reports", function()
  it("a handler that fails: VM, pid, name, reason, traceback without market's frames, endpoints",
     function()
    local status, out, err = H.run_script([[
      local market = require "market"
      local _ = market._
      market.perform(market.spawn(function()
        return market.transition(0, market.subscriber({"job", _}, {
          name = "jobs",
          on_message = function(n, job)
            local function work(j) return j.spec.size end
            return market.transition(n + work(job[2]))
          end }), market.publisher("status", { name = "status" }))
      end, { name = "worker" }))
      market.pause()
      market.perform(market.send({"job", {}}))
      print("boot done")
    ]])
    assert.equal(0, status, err)
    assert.equal("boot done\n", out)
    assert.equal(1, #heads(err), err)
    assert.matches("^market: ground #%d+ worker failed: [^\n]*:7: attempt to index a nil value " ..
                   "%(field 'spec'%)\n", err)
    assert.matches("\nstack traceback:\n\t[^\n]*:7: in local 'work'\n\t[^\n]*:8: in function <[^\n]*:6>\n",
                   err)
    assert.matches("\nendpoints:\n\tjobs: subscriber participant %[\"job\", _%]\n" ..
                   "\tstatus: publisher participant \"status\"\n$", err)
    -- Nothing of market's own (market.lua, the drivers, the chunk wrapper).
    assert.falsy(err:find("\n\tmarket", 1, true), err)
  end)

  it("the boot process's failure is reported once and exits 1", function()
    local status, _, err = H.run_script([[
      local market = require "market"
      market.perform(market.publisher("p", { name = "mine" }))
      local function deeper() error("the script broke") end
      deeper()
    ]])
    assert.equal(1, status)
    assert.equal(1, #heads(err), err)
    assert.matches("^market: ground #%d+ [^\n]* failed: [^\n]*:3: the script broke\nstack traceback:\n", err)
    assert.matches("\nendpoints:\n\tmine: publisher participant \"p\"\n$", err)
  end)

  -- The report is text: a NUL in the reason ended it ("failed: a"); the
  -- reason is shown as a term then, whole.  The peers get it as it is.
  it("shows a reason with a NUL byte in it whole", function()
    local status, out, err = H.run_script([[
      local market = require "market"
      market.perform(market.spawn(function()
        market.perform(market.publisher("x"))
        market.yield(5)
        error("a\0b", 0)
      end, { name = "nul" }))
      market.perform(market.subscriber("x", { on_absence = function(_, _, why) print(why == "a\0b") end }))
    ]])
    assert.equal(0, status, err)
    assert.equal("true\n", out)
    assert.matches('^market: ground #%d+ nul failed: "a\\x00b"\nstack traceback:\n', err)
  end)

  -- A name may be made of what a peer sent ("session " .. nick): written
  -- raw, a newline in it forged a line of its own, and an escape drove
  -- the terminal.  Every text line shows its control bytes escaped.
  it("shows names with control bytes escaped, in reports, log lines and trace lines", function()
    local status, _, err = H.run_script([[
      local market = require "market"
      market.perform(market.spawn(function()
        market.log.warn("said")
        return market.transition(nil, market.subscriber("x", { name = "ep\nfake\t2" }),
          market.subscriber("y", { on_message = function() error("boom", 0) end }))
      end, { name = "evil\nforged line\r\27[31m" }))
      market.pause()
      market.perform(market.send("y"))
    ]], "--no-drivers --trace-kind add")
    assert.equal(0, status, err)
    local TIME = "%d%d%d%d%-%d%d%-%d%dT%d%d:%d%d:%d%d%.%d%d%dZ "
    local name = "evil\\nforged line\\r\\x1b%[31m"
    local want = {
      "^" .. TIME .. "warn ground #2 " .. name .. ": said$",
      "^" .. TIME .. "ground #2 " .. name .. ": add ep\\nfake\\t2 subscriber/participant \"x\"$",
      "^" .. TIME .. "ground #2 " .. name .. ": add #1 subscriber/participant \"y\"$",
      "^market: ground #2 " .. name .. " failed: boom$",
      "^stack traceback:$",
    }
    local lines = {}
    for l in err:gmatch("[^\n]*") do
      if l:find("ground #2", 1, true) or l:find("^stack") or l:find("^\t") then lines[#lines + 1] = l end
    end
    for i, pattern in ipairs(want) do assert.matches(pattern, lines[i]) end
    assert.equal("\tep\\nfake\\t2: subscriber participant \"x\"", lines[#lines - 1])
    assert.falsy(err:find("\27", 1, true), err)
    assert.falsy(err:find("forged line", 1, true) and not err:find("\\nforged line", 1, true))
  end)

  it("shows at most 256 bytes of a name, in reports, log lines and trace lines", function()
    -- 255 a's and then "é": the limit falls inside the character
    local status, _, err = H.run_script([[
      local market = require "market"
      market.perform(market.spawn(function()
        market.log.warn("said")
        return market.transition(nil, market.subscriber("x", { name = string.rep("e", 300) }),
          market.subscriber("y", { on_message = function() error("boom", 0) end }))
      end, { name = string.rep("a", 255) .. "\195\169" .. string.rep("b", 1000) }))
      market.pause()
      market.perform(market.send("y"))
    ]], "--no-drivers --trace-kind add")
    assert.equal(0, status, err)
    local name = string.rep("a", 255) .. " %.%.%. %(1002 bytes more%)"
    local ep = string.rep("e", 256) .. " %.%.%. %(44 bytes more%)"
    local TIME = "%d%d%d%d%-%d%d%-%d%dT%d%d:%d%d:%d%d%.%d%d%dZ "
    assert.matches("\n" .. TIME .. "warn ground #2 " .. name .. ": said\n", "\n" .. err)
    assert.matches("\n" .. TIME .. "ground #2 " .. name .. ": add " .. ep .. " subscriber/participant \"x\"\n",
                   "\n" .. err)
    assert.matches("\nmarket: ground #2 " .. name .. " failed: boom\nstack traceback:\n", "\n" .. err)
    assert.matches("\n\t" .. ep .. ": subscriber participant \"x\"\n", err)
    assert.falsy(err:find("b", 1, true) and err:find(string.rep("b", 10), 1, true), err)
  end)

  -- A message is the program's, but what it says is often a peer's
  -- ("bad request: " .. line): a line break in it forged a log line or a
  -- report of its own, and ESC drove the terminal.  Its lines stay lines,
  -- each after the first begun with a tab; control bytes, C1 controls and
  -- bytes that are no UTF-8 are \xHH.  A Lua sink still gets the message
  -- as it was said, beside the line.
  it("shows messages with later lines indented and control bytes escaped, in log lines and reports",
     function()
    local status, out, err = H.run_script([[
      local market = require "market"
      local forged = "one\n2026-12-06T00:00:00.000Z error - forged\r\nmarket: ground #1 x failed: no" ..
        "\rover\27[2J\1\127 \194\155 \255 caf\195\169\ttab \\ end"
      market.log.warn("said %s", forged)
      local lines = {}
      market.log.sink(function(level, line, message) lines[#lines + 1] = {line, message} end)
      market.log.warn("said %s", forged)
      market.log.sink(nil)
      io.write(lines[1][1], "|", tostring(lines[1][2] == "said " .. forged), "\n")
      market.perform(market.spawn(function() error("bad: " .. forged, 0) end, { name = "p" }))
    ]], "--no-drivers")
    assert.equal(0, status, err)
    local shown = "one\n\t2026%-12%-06T00:00:00%.000Z error %- forged\n\tmarket: ground #1 x failed: " ..
      "no\\rover\\x1b%[2J\\x01\\x7f \\xc2\\x9b \\xff café\ttab \\ end"
    local TIME = "%d%d%d%d%-%d%d%-%d%dT%d%d:%d%d:%d%d%.%d%d%dZ "
    assert.matches("^" .. TIME .. "warn ground #1 [^\n]*: said " .. shown .. "\n", err)
    assert.matches("^" .. TIME .. "warn ground #1 [^\n]*: said " .. shown .. "|true\n$", out)
    assert.matches("\nmarket: ground #%d+ p failed: bad: " .. shown .. "\nstack traceback:\n", err)
    assert.equal(1, #heads(err), err)
    assert.falsy(err:find("\27", 1, true), err)
    assert.falsy(err:find("\n2026-12-06T00:00:00", 1, true), err)
  end)

  it("shows at most 16 KiB of a message in a log line or a report, and the program still has it whole",
     function()
    local status, out, err = H.run_script([[
      local market = require "market"
      local huge = string.rep("y", 1024 * 1024)
      market.log.warn("said %s", huge)
      local got
      market.log.sink(function(_, line, message) got = {line, message} end)
      market.log.warn("said %s", huge)
      market.log.sink(nil)
      io.write(#got[1], " ", tostring(got[2] == "said " .. huge), "\n")
      local r = market.record("huge-ping")
      market.perform(market.spawn(function()
        return market.transition(nil, market.subscriber(r(), { on_message = function()
          error(huge, 0)
        end }))
      end, { name = "p" }))
      market.perform(market.publisher(r()))
      assert(market.yield().type == "presence")
      market.perform(market.send(r()))
      local ev = market.yield()
      io.write(ev.type, " ", tostring(ev.reason == huge), "\n")
    ]], "--no-drivers")
    assert.equal(0, status, err)
    -- "said " and 16,379 y's: the limit is on the message, the line's
    -- head (time, level, VM, pid, name) comes before it
    local cut = " ... (" .. (1024 * 1024 + 5 - 16384) .. " bytes more)"
    local logline = err:match("warn ground #1 [^\n]*: (said y+ %.%.%. %(%d+ bytes more%))\n")
    assert.is_not_nil(logline, err:sub(1, 300))
    assert.equal("said " .. string.rep("y", 16384 - 5) .. cut, logline)
    local len, whole = out:match("^(%d+) (%a+)\n")
    assert.equal("true", whole)
    assert.is_true(tonumber(len) < 16384 + 200, len)
    -- the report: the reason cut the same way, the traceback and endpoints after it
    local reason = err:match("\nmarket: ground #%d+ p failed: (y+ %.%.%. %(%d+ bytes more%))\nstack traceback:\n")
    assert.equal(string.rep("y", 16384) .. " ... (" .. (1024 * 1024 - 16384) .. " bytes more)", reason)
    assert.matches("\nendpoints:\n\t[^\n]*subscriber participant huge%-ping%(%)\n", err)
    assert.is_true(#err < 3 * 16384 + 2000, #err)
    -- what the peers see is the whole error
    assert.matches("absence true\n$", out)
  end)

  it("a strict error (an endpoint re-added with another role) points at the program's line",
     function()
    local status, _, err = H.run_script([[
      local market = require "market"
      market.perform(market.spawn(function()
        market.perform(market.subscriber("a", { name = "x" }))
        market.perform(market.publisher("b", { name = "x" }))
      end, { name = "strict" }))
    ]])
    assert.equal(0, status, err)
    assert.matches("^market: ground #%d+ strict failed: endpoint 'x' re%-added with a different role\n" ..
                   "stack traceback:\n\t%[C%]: in function 'market.perform'\n\t[^\n]*:4: in function <",
                   err)
    assert.matches("\nendpoints:\n\tx: subscriber participant \"a\"\n$", err)
  end)

  it("a continuation, a budget exceeded, a coroutine.yield() and a nested VM's process", function()
    local status, _, err = H.run_script([[
      local market = require "market"
      market.perform(market.spawn(function()
        return market.transition(0, market.spawn(function() end, { k = function(s, pid)
          error("continuation broke for " .. pid)
        end }))
      end, { name = "parent" }))
      market.perform(market.spawn(function()
        return market.transition(0, market.subscriber("spin", { on_message = function()
          while true do end
        end }))
      end, { name = "spinner" }))
      market.perform(market.spawn(function()
        return market.transition(0, market.subscriber("y", { on_message = function()
          coroutine.yield()
        end }))
      end, { name = "yielder" }))
      market.perform(market.nested_vm(function()
        market.perform(market.at_meta_level(market.subscriber("go", { name = "up" })))
        market.yield()
        error("inside")
      end, { name = "inner" }))
      market.pause()
      market.perform(market.send("spin"), market.send("y"), market.send("go"))
    ]], "--no-drivers --max-activation 100")
    assert.equal(0, status, err)
    assert.equal(4, #heads(err), err)
    assert.matches("\nmarket: ground #%d+ parent failed: [^\n]*:4: continuation broke for %d+\n" ..
                   "stack traceback:\n\t%[C%]: in function 'error'\n\t[^\n]*:4: in ", "\n" .. err)
    assert.matches("\nmarket: ground #%d+ spinner failed: activation budget exceeded\n" ..
                   "stack traceback:\n\t[^\n]*:%d: in function <", "\n" .. err)
    assert.matches("\nmarket: ground #%d+ yielder failed: coroutine.yield%(%) outside " ..
                   "market.yield%(%)[^\n]*\nstack traceback:\n\t%[C%]: in function 'coroutine.yield'\n",
                   "\n" .. err)
    assert.matches("\nmarket: ground/%d+ #1 inner failed: [^\n]*:20: inside\n", "\n" .. err)
    assert.matches("\n\tup %(1 up%): subscriber participant \"go\"\n", err)
  end)

  it("--quiet prints none but the boot process's; --strict exits 3 if any process failed",
     function()
    local child = [[
      local market = require "market"
      market.perform(market.spawn(function() error("child broke") end, { name = "child" }))
      market.pause()
    ]]
    local status, _, err = H.run_script(child, "--no-drivers --quiet")
    assert.equal(0, status)
    assert.equal("", err)
    status, _, err = H.run_script(child, "--no-drivers --strict")
    assert.equal(3, status)
    assert.equal(1, #heads(err))
    status, _, err = H.run_script(child, "--no-drivers --strict --quiet")
    assert.equal(3, status)
    assert.equal("", err)
    status, _, err = H.run_script("print('fine')", "--no-drivers --strict")
    assert.equal(0, status, err)
    status, _, err = H.run_script("error('boot broke')", "--no-drivers --strict --quiet")
    assert.equal(1, status)
    assert.equal(1, #heads(err), err)
    assert.matches("boot broke", err)
  end)

  -- At the end the survivors see each other go and their handlers run
  -- (docs/semantics.md §7); that teardown ran inside the host's free,
  -- which reports nothing: a handler failing there was silent, and
  -- --strict exited 0.  Under market and under market.ground_vm alike.
  it("reports a handler that fails in the teardown at the end, and --strict exits 3", function()
    local program = [[
      market.perform(market.spawn(function()
        return market.transition(0, market.publisher("a")) end, { name = "holder" }))
      market.perform(market.spawn(function()
        return market.transition(0, market.subscriber("a", { on_absence = function()
          error("broke in the teardown") end }))
      end, { name = "mourner" }))
    ]]
    local status, _, err = H.run_script("local market = require 'market'\n" .. program ..
                                        "market.pause()", "--no-drivers --strict")
    assert.equal(3, status)
    assert.equal(1, #heads(err), err)
    assert.matches("^market: ground #%d+ mourner failed: [^\n]*: broke in the teardown\n", err)
    local out
    status, out, err = H.sh(("timeout 20 lua5.4 -e %s"):format(H.quote(
      ("package.cpath = %q .. '/lua/?.so;' .. package.cpath\n"):format(H.build_dir()) ..
      "local market = require 'market'\nprint(market.ground_vm(function()\n" .. program ..
      "\nend, { drivers = false }))")))
    assert.equal(0, status, err)
    assert.equal("true\n", out)
    assert.matches("^market: ground #%d+ mourner failed: [^\n]*: broke in the teardown\n", err)
  end)
end)

-- Memory runs out two ways: malloc fails (ulimit -v here), or the
-- program reaches its memory limit (market --max-memory; by default 7/8
-- of a cgroup's or of the machine's memory, where malloc never fails and
-- the kernel kills the whole program at the cgroup's own).  Each must end the process whose event ran
-- memory out, alone.
for _, mode in ipairs({ "ulimit -v", "--max-memory" }) do
describe("a process that runs out of memory (" .. mode .. ")", function()
  -- Its error is "not enough memory", and making that reason a term needs
  -- memory too, which is just what there is none of: peers saw the
  -- absence with reason nil, a normal end.  ulimit -v under a plain
  -- build only: a sanitizer's shadow memory does not fit in the address
  -- space allowed.
  local sanitized = (os.getenv("LD_PRELOAD") or ""):find("asan", 1, true) ~= nil
  local it_plain = (sanitized and mode == "ulimit -v") and pending or it

  -- `market [options] script` under ulimit -v 200000 (200 MB), or with
  -- --max-memory 64M, bounded in time: its status, stdout and stderr.
  local function capped(script, options)
    local path = H.tempfile(script)
    local cmd = mode == "ulimit -v"
      and "ulimit -v 200000; timeout 60 %s %s%s </dev/null"
      or "timeout 60 %s --max-memory 64M %s%s </dev/null"
    local status, out, err = H.sh(cmd:format(H.quote(H.market_bin()), options or "", H.quote(path)))
    os.remove(path)
    return status, out, err
  end

  it_plain("is seen to fail with the reason \"not enough memory\"", function()
    local status, out = capped([[
      local market = require "market"
      local pid = market.perform(market.spawn(function()
        local t = {}
        for i = 1, 1e9 do t[i] = { i } end
      end, { name = "hog" }))
      market.perform(market.monitor(pid, function(_, r) print("hog down: " .. tostring(r)) end))
    ]], "--no-drivers --max-activation 0 ")
    assert.equal(0, status)
    assert.equal("hog down: not enough memory\n", out)
  end)

  -- A process that sends two messages for each it gets fills any memory
  -- with its queued events, and the allocation that fails may be the VM's
  -- own (a queue block), not the process's: the program aborted there
  -- ("market: out of memory"), or in libev, beside the memory the pool
  -- kept.  The pool's reserve lets that event finish; the process whose
  -- event spent it ends with "not enough memory" (as Lua's own failed
  -- allocation ends one), and the rest goes on.
  local function storm_then_ticker(storm)
    return capped([[
      local market = require "market"
      local timer = require "market.timer"
      local ping = market.record("ping", "n")
      local function storm()
        return market.transition(nil,
          market.subscriber(ping(market._), { name = "in", on_message = function(_, m)
            return market.transition_no_state(market.send(ping(m.n + 1)), market.send(ping(m.n + 2)))
          end }),
          market.send(ping(0)))
      end
      local pid = market.perform(]] .. storm .. [[)
      market.perform(market.monitor(pid, function(_, r)
        print("storm down: " .. tostring(r))
        -- The program goes on: timers fire, processes start.
        return market.transition_no_state(market.spawn(function()
          for _ = 1, 5 do timer.sleep(20) end
          print("ticker done")
          market.perform(market.exit(0))
        end, { name = "ticker" }))
      end))
    ]])
  end

  it_plain("that sends two messages for each it gets is ended with \"not enough memory\", alone",
           function()
    local status, out, err = storm_then_ticker([[market.spawn(storm, { name = "storm" })]])
    assert.equal(0, status, err)
    assert.equal("storm down: not enough memory\nticker done\n", out)
    assert.matches("storm failed: not enough memory", err, 1, true)
  end)

  -- A request larger than all memory fails as it did (the reserve is for
  -- what could fit): under pcall, the process goes on.
  it_plain("that asks for more than there is, under pcall, goes on", function()
    local status, out, err = capped([[
      local market = require "market"
      local timer = require "market.timer"
      local pid = market.perform(market.spawn(function()
        print(pcall(string.rep, "x", 1 << 30))   -- 1 GiB, past ulimit -v
        timer.sleep(20)
        print("still here")
        market.perform(market.exit(0))
      end, { name = "asker" }))
      market.perform(market.monitor(pid, function(_, r) print("asker down: " .. tostring(r)) end))
    ]])
    assert.equal(0, status, err)
    assert.equal("false\tnot enough memory\nstill here\nasker down: exit\n", out)
  end)

  it_plain("inside a nested VM is ended there, and its VM with it", function()
    local status, out, err = storm_then_ticker([[market.nested_vm(storm, { name = "vm" })]])
    assert.equal(0, status, err)
    assert.equal("storm down: not enough memory\nticker done\n", out)
    assert.matches("vm failed: not enough memory", err, 1, true)
  end)
end)
end

describe("market --max-memory", function()
  local function run(options)
    return H.sh(("timeout 20 %s %s </dev/null"):format(H.quote(H.market_bin()), options))
  end

  it("sets the limit market.memory_limit() reads, with what it counts", function()
    local status, out, err = run([[--max-memory 1G -e 'local m = require "market"
      local limit, used = m.memory_limit()
      print(limit, math.type(used), used > 0 and used < limit)']])
    assert.equal(0, status, err)
    assert.equal("1073741824\tinteger\ttrue\n", out)
    status, out = run([[--max-memory 300k -e 'print((require "market").memory_limit())' ]])
    assert.equal(0, status)
    assert.matches("^307200\t%d+\n$", out)
    status, out = run([[--max-memory 0 -e 'print((require "market").memory_limit())' ]])
    assert.equal(0, status)
    assert.matches("^nil\t%d+\n$", out)
  end)

  it("is by default 7/8 of the cgroup's memory limit or of the machine's memory", function()
    local f = assert(io.open("/proc/meminfo"))
    local ram = tonumber(f:read("a"):match("MemTotal:%s*(%d+) kB")) * 1024
    f:close()
    local status, out, err = run([[-e 'print((require "market").memory_limit())']])
    assert.equal(0, status, err)
    local limit = tonumber(out:match("^(%d+)\t%d+\n$"))
    assert.is_true(limit ~= nil and limit > 0 and limit <= ram - ram // 8, out)
  end)

  it("says at log level info what the limit is, and where it came from", function()
    local _, _, err = run("--log-level info --max-memory 300M -e ''")
    assert.matches("info %-: market: memory limit 300 MiB %(%-%-max%-memory%)\n", err)
    _, _, err = run("--log-level info --max-memory 0 -e ''")
    assert.matches("info %-: market: no memory limit %(%-%-max%-memory 0%)\n", err)
    _, _, err = run("--log-level info -e ''")
    assert.matches("info %-: market: memory limit %d+ MiB %(7/8 of the [a-z' ]+memory[a-z ]*%)\n", err)
    _, _, err = run("--max-memory 300M -e ''")      -- (not at the default level, warn)
    assert.equal("", err)
  end)

  it("gives each of N workers 1/N", function()
    local status, out, err = run([[--workers 2 --max-memory 1G -e 'print((require "market").memory_limit())']])
    assert.equal(0, status, err)
    assert.equal("536870912\n536870912\n", out:gsub("\t%d+", ""))
  end)

  -- Under lua5.4 (require "market"), which sets no limit: set from Lua,
  -- it counts the lua5.4 state's heap while a ground VM runs on it (not
  -- under AddressSanitizer, where that heap has no cache in front of it
  -- to count it: lproc.c, keep_freed).
  local sanitized = (os.getenv("LD_PRELOAD") or ""):find("asan", 1, true) ~= nil
  local it_plain = sanitized and pending or it
  it_plain("is market.memory_limit(bytes) under lua5.4, counting its Lua heap", function()
    local status, out, err = H.sh(("cd %s && LUA_CPATH=%s timeout 60 lua5.4 -e %s </dev/null"):format(
      H.quote(os.getenv("PWD")), H.quote(H.build_dir() .. "/lua/?.so;;"), H.quote([[
      local market = require "market"
      io.write(tostring(market.memory_limit()), "\n")
      io.write(market.memory_limit(32 * 1024 * 1024), "\n")
      market.ground_vm(function()
        local _, before = market.memory_limit()
        local keep = {}
        for i = 1, 1000 do keep[i] = { i } end
        local _, after = market.memory_limit()
        io.write(tostring(after - before >= 1000 * 40), "\n")
        local pid = market.perform(market.spawn(function()
          local t = {}
          for i = 1, 1e9 do t[i] = { i } end
        end, { name = "hog" }))
        market.perform(market.monitor(pid, function(_, r) io.write("hog down: ", tostring(r), "\n") end))
      end, { max_activation = 0, on_crash = function() end })
      io.write(tostring(market.memory_limit(0)), "\n")
      io.write(tostring(pcall(market.memory_limit, -1)), "\n")]])))
    assert.equal(0, status, err)
    assert.equal("nil\n33554432\ntrue\nhog down: not enough memory\nnil\nfalse\n", out)
  end)

  it("takes bytes or a number with K, M or G, else is a usage error", function()
    for _, bad in ipairs({ "12X", "-5", "M", "1.5G", "99999999999999999999" }) do
      local status, out, err = run("--max-memory " .. bad .. " -e 'print(1)'")
      assert.equal(2, status, bad)
      assert.equal("", out)
      assert.equal(("market: --max-memory: '%s' is not a size (bytes, or a number with K, M or G)\n")
                   :format(bad), err)
    end
    local status, _, err = run("--max-memory")
    assert.equal(2, status)
    assert.equal("market: --max-memory needs a size\n", err)
  end)
end)

-- The case the memory limit is for: a cgroup's memory limit, where malloc
-- never fails and the kernel kills the whole program at the limit.  The
-- spec makes a cgroup of 64 MiB (root, a writable cgroup file system: v2
-- memory.max or v1 memory.limit_in_bytes) and runs the 2-for-1 storm in
-- it with market's default limit (7/8 of the cgroup's): the storm ends,
-- the program goes on.  Without market's limit the kernel killed the
-- program there (status 137; not asserted: with swap, it would swap).
-- Where no cgroup can be made (not root, a container's read-only
-- /sys/fs/cgroup) it says so and is pending; under a sanitizer too.
describe("a process that runs out of memory in a cgroup", function()
  local sanitized = (os.getenv("LD_PRELOAD") or ""):find("asan", 1, true) ~= nil
  -- Make a cgroup of `bytes`: its directory, or nil and why not.
  local function make_cgroup(bytes)
    local name = "market-spec-" .. tostring(os.time()) .. "-" .. tostring(math.random(1e9))
    local status, out, err = H.sh(([[
      set -e
      if [ -f /sys/fs/cgroup/cgroup.controllers ]; then
        grep -qw memory /sys/fs/cgroup/cgroup.subtree_control ||
          echo +memory > /sys/fs/cgroup/cgroup.subtree_control
        d=/sys/fs/cgroup/%s
        mkdir "$d"
        echo %d > "$d/memory.max"
      else
        d=/sys/fs/cgroup/memory/%s
        mkdir "$d"
        echo %d > "$d/memory.limit_in_bytes"
      fi
      echo "$d"]]):format(name, bytes, name, bytes))
    if status ~= 0 then return nil, (err:gsub("\n+$", "")) end
    return (out:gsub("\n$", ""))
  end

  local dir, why
  if not sanitized then dir, why = make_cgroup(64 * 1024 * 1024) end
  local it_cg = dir and it or pending
  if not dir then
    io.stderr:write("crash_spec: no cgroup of its own: " .. (why or "a sanitizer runs") .. "\n")
  end
  teardown(function() if dir then os.execute("rmdir " .. H.quote(dir) .. " 2>/dev/null") end end)

  it_cg("under a cgroup's memory limit ends the storm, not the program", function()
    local path = H.tempfile([[
      local market = require "market"
      local timer = require "market.timer"
      local ping = market.record("ping", "n")
      local limit = market.memory_limit()
      print("limit", limit)
      local pid = market.perform(market.spawn(function()
        return market.transition(nil,
          market.subscriber(ping(market._), { name = "in", on_message = function(_, m)
            return market.transition_no_state(market.send(ping(m.n + 1)), market.send(ping(m.n + 2)))
          end }),
          market.send(ping(0)))
      end, { name = "storm" }))
      market.perform(market.monitor(pid, function(_, r)
        print("storm down: " .. tostring(r))
        return market.transition_no_state(market.spawn(function()
          timer.sleep(20)
          print("ticker done")
          market.perform(market.exit(0))
        end, { name = "ticker" }))
      end))
    ]])
    -- (sh -c: $$ is then the shell that execs market, not its parent)
    local status, out, err = H.sh("sh -c " .. H.quote(
      ("echo $$ > %s/cgroup.procs && exec timeout 60 %s %s </dev/null")
        :format(H.quote(dir), H.quote(H.market_bin()), H.quote(path))))
    os.remove(path)
    assert.equal(0, status, err)
    assert.equal(("limit\t%d\nstorm down: not enough memory\nticker done\n"):format(56 * 1024 * 1024), out)
  end)
end)

describe("market.ground_vm's on_crash", function()
  it("receives each report as a table, instead of stderr", function()
    local reports = {}
    local ok, why = market.ground_vm(function()
      market.perform(market.spawn(function()
        market.perform(market.subscriber({"in", market._}, { name = "in" }))
        market.pause()
        error({"custom", 42})
      end, { name = "w" }))
    end, { on_crash = function(r) reports[#reports + 1] = r end })
    assert.is_true(ok, why)
    assert.equal(1, #reports)
    local r = reports[1]
    assert.equal("ground", r.vm)
    assert.equal(2, r.pid)
    assert.equal("w", r.name)
    assert.is_true(market.unify(r.reason, {"custom", 42}) ~= nil)
    assert.equal('["custom", 42]', r.message)
    assert.is_false(r.boot)
    assert.matches("^stack traceback:\n\t%[C%]: in function 'error'\n", r.traceback)
    assert.equal(1, #r.endpoints)
    local e = r.endpoints[1]
    assert.equal("in", e.name)
    assert.equal(0, e.level)
    assert.equal("subscriber", e.orientation)
    assert.equal("participant", e.interest)
    assert.equal('["in", _]', market.repr(e.topic))
  end)

  it("an error in on_crash is reported with the report, and the program goes on", function()
    local path = H.tempfile([[
      local market = require "market"
      local ok, why = market.ground_vm(function()
        market.perform(market.spawn(function() error("child broke") end, { name = "child" }))
        market.pause()
        print("boot goes on")
      end, { on_crash = function(r) error("on_crash broke on " .. r.name) end })
      print("ground_vm", ok, why)
    ]])
    local status, out, err = H.sh(("LUA_CPATH=%s timeout 60 lua5.4 %s </dev/null"):format(
      H.quote(H.build_dir() .. "/lua/?.so;;"), H.quote(path)))
    os.remove(path)
    assert.equal(0, status, err)
    assert.equal("boot goes on\nground_vm\ttrue\tnil\n", out)
    assert.matches("market: ground #2 child failed: [^\n]*: child broke\n", err)
    assert.matches("\nmarket: on_crash failed: [^\n]*:6: on_crash broke on child\n$", err)
  end)

  it("on_crash must be a function", function()
    assert.has_error(function() market.ground_vm(function() end, { on_crash = 1 }) end,
                     "market.ground_vm: on_crash must be a function, got number")
  end)
end)

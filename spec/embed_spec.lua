-- embed_spec.lua: the embedding example (examples/embed) and the market
-- interpreter, both clients of market.h, and lua5.4 with the module, run
-- to the end without leaking.
--
-- On the plain build they run under valgrind (every block freed, no
-- error); on the sanitized build (spec/run's second suite) the programs
-- link ASan themselves, so they run without valgrind and with
-- LeakSanitizer on instead.
package.path = "spec/support/?.lua;" .. package.path
local H = require "helpers"

local build = H.build_dir()
local example = build .. "/embed-example"
local actor = "examples/embed/actor.lua"
local sanitized = (os.getenv("LD_PRELOAD") or ""):find("asan", 1, true) ~= nil

local function have(cmd)
  return os.execute("command -v " .. cmd .. " >/dev/null 2>&1") == true
end

-- The command prefix that runs a program of this build with a leak check.
local function checked()
  if sanitized then
    return "env -u LD_PRELOAD ASAN_OPTIONS=detect_leaks=1:exitcode=9 "
  end
  return "valgrind -q --leak-check=full --errors-for-leak-kinds=all --error-exitcode=9 "
    .. "--suppressions=spec/support/dl.supp "
end

local sh = H.sh

local function lines(s)
  local t = {}
  for l in s:gmatch("[^\n]+") do t[#t + 1] = l end
  return t
end

describe("examples/embed", function()
  if not sanitized and not have("valgrind") then
    pending("valgrind is not installed")
    return
  end

  it("exchanges messages with the Lua actor through its native process and exits cleanly",
     function()
    local status, out, err = sh("printf 'hello\\nworld\\nno newline' | " .. checked() ..
                                example .. " " .. actor .. " shout")
    assert.equal(0, status, err)
    assert.same({
      "actor: a client is here",
      "host: the actor is listening",
      "host: reply 1: shout: HELLO",
      "host: reply 2: shout: WORLD",
      "host: reply 3: shout: NO NEWLINE",
      "actor: the client left after 3 requests; quitting",
      "host: done",
    }, lines(out))
    assert.equal("", err)
  end)

  it("with no input, the actor still sees its client go", function()
    local status, out, err = sh(checked() .. example .. " " .. actor .. " </dev/null")
    assert.equal(0, status, err)
    assert.truthy(out:find("actor: the client left after 0 requests; quitting\nhost: done\n",
                           1, true), out)
  end)

  it("on SIGTERM it ends the conversation, frees everything and exits 0", function()
    -- stdin stays open (a fifo held by a sleeping writer); the signal
    -- comes once the first reply is out.
    local script = ([[
      dir=$(mktemp -d); fifo=$dir/in
      mkfifo $fifo
      (echo hi; exec sleep 60) >$fifo & writer=$!
      %s%s %s <$fifo >$dir/out 2>$dir/err & pid=$!
      i=0
      while ! grep -q 'reply 1' $dir/out && [ $i -lt 600 ]; do sleep 0.05; i=$((i+1)); done
      kill -TERM $pid; wait $pid; rc=$?
      kill $writer 2>/dev/null; wait $writer 2>/dev/null
      cat $dir/out; cat $dir/err >&2; rm -rf $dir
      exit $rc
    ]]):format(checked(), example, actor)
    local status, out, err = sh(script)
    assert.equal(0, status, err)
    assert.same({
      "actor: a client is here",
      "host: the actor is listening",
      "host: reply 1: echo: HI",
      "host: signal 15",
      "actor: the client left after 1 requests; quitting",
      "host: done",
    }, lines(out))
  end)

  it("reports a script that does not load, and still frees everything", function()
    local status, out, err = sh(checked() .. example .. " /nonexistent/actor.lua </dev/null")
    assert.equal(1, status, err)
    assert.truthy(err:find("host: cannot open /nonexistent/actor.lua", 1, true), err)
  end)
end)

describe("the market interpreter (a client of market.h)", function()
  if not sanitized and not have("valgrind") then
    pending("valgrind is not installed")
    return
  end

  it("runs a script with the drivers and exits without leaking", function()
    local script = H.tempfile([[
      local market = require "market"
      local timer = require "market.timer"
      print("args", ...)
      timer.sleep(5)
      print("slept")
    ]])
    local status, out, err = sh(checked() .. H.market_bin() .. " " .. script .. " a b </dev/null")
    os.remove(script)
    assert.equal(0, status, err)
    assert.equal("args\ta\tb\nslept\n", out)
  end)

  it("a failing boot script: traceback, exit 1, and still no leak", function()
    local status, out, err = sh(checked() .. H.market_bin() ..
                                " -e 'error(\"boom\")' </dev/null")
    assert.equal(1, status, err)
    assert.truthy(err:find("(command line) failed: (command line):1: boom", 1, true), err)
    assert.truthy(err:find("stack traceback", 1, true), err)
  end)
end)

describe("lua5.4 with require \"market\"", function()
  if sanitized or not have("valgrind") then
    pending("runs under valgrind on the plain build only")
    return
  end

  it("runs a ground VM and frees everything when the Lua state closes", function()
    -- lua5.4 unloads market.so when it closes its state: what only the
    -- module's statics pointed to (cached term and pool blocks) would be
    -- lost then, had the last state's close not given it back.
    local code = [[local m = require "market"
      local topic = m.repr("x")
      assert(m.ground_vm(function()
        m.perform(m.spawn(function() return m.transition(nil, m.subscriber("x")) end))
        m.perform(m.send("x"))
      end))]]
    local status, _, err = sh(("LUA_CPATH=%s %s lua5.4 -e %s </dev/null"):format(
      H.quote(build .. "/lua/?.so;;"), checked(), H.quote(code)))
    assert.equal(0, status, err)
  end)
end)

-- misuse_spec.lua: wrong uses raise clear Lua errors naming the problem, at
-- the caller; inside a process they end that process only (DESIGN §1
-- "strict and isolated", §4).
package.path = "spec/support/?.lua;" .. package.path
local market = require "market"
local H = require "helpers"
local T = market.transition
local THIS = "spec/misuse_spec%.lua:%d+: "

-- The error a call raises, checked to point at this file.
local function err_of(f, ...)
  local ok, e = pcall(f, ...)
  assert.is_false(ok, "expected an error")
  return e
end

describe("constructing actions", function()
  it("a topic that is not a term (a function) is an error naming the constructor", function()
    assert.matches(THIS .. "market%.subscriber: topic: a function is not a term$",
                   err_of(function() local _x = market.subscriber(print) end))
    assert.matches(THIS .. "market%.observe_publishers_everything: topic: a coroutine is not a term$",
                   err_of(function()
                     local _x = market.observe_publishers_everything(coroutine.create(print))
                   end))
  end)

  -- These named themselves "unify:", "repr:", "ring:" and "trace:".
  it("a non-term given to unify, repr, ring or trace names the function and the option", function()
    assert.matches(THIS .. "market%.unify: a function is not a term$",
                   err_of(function() local _x = market.unify(print, 1) end))
    assert.matches(THIS .. "market%.unify: a function is not a term$",
                   err_of(function() local _x = market.unify(1, print) end))
    assert.matches(THIS .. "market%.repr: a function is not a term$",
                   err_of(function() local _x = market.repr(print) end))
    -- (No value at all was "a light userdata is not a term".)
    assert.matches(THIS .. "market%.repr: a term is required %(no value given%)$",
                   err_of(function() local _x = market.repr() end))
    assert.matches(THIS .. "market%.unify: a term is required %(no value given%)$",
                   err_of(function() local _x = market.unify(1) end))
    local ring, trace
    H.ground(function()
      ring = err_of(function() local _x = market.ring { topic = print } end)
      trace = err_of(function() market.trace { topic = print } end)
    end)
    assert.matches(THIS .. "market%.ring: topic: a function is not a term$", ring)
    assert.matches(THIS .. "market%.trace: topic: a function is not a term$", trace)
  end)

  -- The VM keeps endpoint names as C strings: "a\0b" and "a\0c" were
  -- one name, 'a' (a re-add with another role, said of 'a').
  it("an endpoint name with a NUL byte is an error naming the constructor", function()
    assert.matches(THIS .. "market%.subscriber: endpoint name must not contain a NUL byte$",
                   err_of(function() local _x = market.subscriber("x", { name = "a\0b" }) end))
    assert.matches(THIS .. "market%.observe_publishers: endpoint name must not contain a NUL byte$",
                   err_of(function() local _x = market.observe_publishers("x", "a\0b") end))
    assert.matches(THIS .. "market%.delete_endpoint: name must not contain a NUL byte$",
                   err_of(function() local _x = market.delete_endpoint("a\0b") end))
    assert.matches(THIS .. "market%.monitor: the name must not contain a NUL byte$",
                   err_of(function() local _x = market.monitor(1, print, "a\0b") end))
  end)

  -- Anonymous endpoints are named #1, #2, ...: a subscriber the process
  -- named "#1" itself was taken for the first anonymous one's re-add (one
  -- endpoint where there were two, or a failure for another role).
  it("an endpoint named like an anonymous one (#1, #2, ...) is an error", function()
    assert.matches(THIS .. "market%.subscriber: endpoint name '#1' is reserved %(anonymous endpoints are named #1, #2, ...%)$",
                   err_of(function() local _x = market.subscriber("x", "#1") end))
    assert.matches(THIS .. "market%.publisher: endpoint name '#20' is reserved",
                   err_of(function() local _x = market.publisher("x", { name = "#20" }) end))
    for _, fine in ipairs({ "#", "#a", "#1a", "1", "a#1" }) do
      assert.is_not_nil(market.subscriber("x", fine))
    end
    assert.is_not_nil(market.delete_endpoint("#1"))   -- an anonymous one can go
  end)

  -- A spawn's name is checked where it is made: a table or a boolean
  -- raised "market:271: bad argument #2 to 'spawn'" when performed.  A
  -- NUL, which ended the name the VM keeps, is written as \0.
  it("a spawn's name that is no string is an error naming the constructor; a NUL is \\0", function()
    assert.matches(THIS .. "market%.spawn: the name must be a string, got table$",
                   err_of(function() local _x = market.spawn(print, { name = {} }) end))
    assert.matches(THIS .. "market%.nested_vm: the name must be a string, got boolean$",
                   err_of(function() local _x = market.nested_vm(print, { name = true }) end))
    assert.is_true(market.is_action(market.spawn(print, { name = 5 })))
    local name
    H.ground(function()
      market.perform(market.spawn(function() name = select(2, market.self()) end, "n\0m"))
    end)
    assert.equal("n\\0m", name)
  end)

  it("tables that are not sequences are not terms", function()
    assert.matches(THIS .. "market%.publisher: topic: a table with non%-sequence keys",
                   err_of(function() local _x = market.publisher({ a = 1 }) end))
    assert.matches(THIS .. "market%.publisher: topic: a table with holes is not a term",
                   err_of(function() local _x = market.publisher({ 1, nil, 3 }) end))
    assert.matches(THIS .. "market%.publisher: topic: a table nested more than 1000 levels deep %(a cycle%?%)",
                   err_of(function() local t = {}; t[1] = t; local _x = market.publisher(t) end))
    assert.matches(THIS .. "market%.send: body: a userdata is not a term",
                   err_of(function() local _x = market.send(io.stdout) end))
    assert.matches(THIS .. "market%.send: body: a record constructor is not a term",
                   err_of(function() local _x = market.send(market.record("misuse-one", "a")) end))
  end)

  it("a missing topic or body is an error; nil given explicitly is the term nil", function()
    assert.matches(THIS .. "market%.subscriber: a topic is required",
                   err_of(function() local _x = market.subscriber() end))
    assert.matches(THIS .. "market%.send: a message body is required",
                   err_of(function() local _x = market.send() end))
    assert.matches(THIS .. "market%.feedback: a message body is required",
                   err_of(function() local _x = market.feedback() end))
    assert.matches(THIS .. "market%.send: one message body, got 2 arguments %(a topic and " ..
                   "its data go in one term: a record or a sequence%)$",
                   err_of(function() local _x = market.send("chat", "hello") end))
    assert.matches(THIS .. "market%.feedback: one message body, got 3 arguments",
                   err_of(function() local _x = market.feedback(1, nil, nil) end))
    assert.is_true(market.is_action(market.send(nil)))
    assert.is_true(market.is_action(market.subscriber(nil)))
  end)

  it("a send action reads as one: its kind and its body, converted to a term", function()
    local seq = { 1, 2 }
    local a = market.send(seq)
    seq[2] = 99                                   -- the action keeps what was sent
    assert.equal("send", a.kind)
    assert.same({ 1, 2 }, a.body)
    assert.is_nil(a.other)
    assert.equal("action send", tostring(a))
    assert.is_false(market.is_action(seq))
  end)

  it("a table borrowing the metatable of a send or a transition is neither", function()
    local fake = setmetatable({}, getmetatable(market.send(1)))
    local faketr = setmetatable({}, getmetatable(market.transition(0)))
    assert.is_false(market.is_action(fake))
    assert.is_false(market.is_transition(faketr))
    assert.is_nil(fake.body)
    assert.matches(THIS .. "market%.transition: argument 2 is not an action %(table%)",
                   err_of(function() local _x = market.transition(0, fake) end))
  end)

  it("handlers must be functions, under known keys", function()
    assert.matches(THIS .. "market%.subscriber: handler on_message is not a function",
                   err_of(function() local _x = market.subscriber("x", { on_message = 5 }) end))
    assert.matches(THIS .. "market%.publisher: unknown handler key 'on_mesage'",
                   err_of(function()
                     local _x = market.publisher("x", { on_mesage = function() end })
                   end))
    assert.matches(THIS .. "market%.subscriber: handlers must be a table, got number",
                   err_of(function() local _x = market.subscriber("x", 5) end))
    assert.matches(THIS .. "market%.subscriber: endpoint name must be a string",
                   err_of(function() local _x = market.subscriber("x", { name = 5 }) end))
  end)

  it("a handler key is known only when it is spelt exactly", function()
    -- Each has the length of a known key (laction.c compares by length first).
    for _, key in ipairs({ "nome", "on_messagf", "on_mbsence", "on_absencf", "on_presencf",
                           "On_message", "on_absence\0" }) do
      -- (the message shows a key up to its first zero byte)
      assert.matches(THIS .. "market%.subscriber: unknown handler key '" .. key:match("^[^%z]*"),
                     err_of(function() local _x = market.subscriber("x", { [key] = print }) end))
    end
    local log = H.log()
    H.ground(function()
      market.perform(market.subscriber("x", { name = "mine",
        on_message = function() end, on_absence = function() end,
        on_presence = function(_, _, ep) log("presence at %s", ep) end }),
        market.publisher("x"))
    end)
    assert.same({ "presence at mine" }, log.lines)
  end)

  it("a handler table is checked as pairs() and indexing see it", function()
    -- Keys a __pairs metamethod yields are checked; an inherited name counts.
    local hidden = setmetatable({}, { __pairs = function()
      return next, { on_mesage = print }, nil
    end })
    assert.matches(THIS .. "market%.subscriber: unknown handler key 'on_mesage'",
                   err_of(function() local _x = market.subscriber("x", hidden) end))
    assert.matches(THIS .. "market%.subscriber: unknown handler key '1'",
                   err_of(function() local _x = market.subscriber("x", { print }) end))
    local log = H.log()
    local named = setmetatable({}, { __index = { name = "inherited",
      on_presence = function(_, _, ep) log("presence at %s", ep) end } })
    H.ground(function()
      market.perform(market.subscriber("x", named), market.publisher("x"))
    end)
    assert.same({ "presence at inherited" }, log.lines)
  end)

  it("other constructors check their arguments", function()
    assert.matches(THIS .. "market%.spawn: the boot argument must be a function, got number",
                   err_of(function() local _x = market.spawn(5) end))
    assert.matches(THIS .. "market%.spawn: the continuation k must be a function",
                   err_of(function() local _x = market.spawn(print, { k = 5 }) end))
    -- A misspelt option was ignored; max_activation is a nested VM's only.
    assert.matches(THIS .. "market%.spawn: no option nmae %(name, k%)$",
                   err_of(function() local _x = market.spawn(print, { nmae = "x" }) end))
    assert.matches(THIS .. "market%.spawn: no option max_activation %(name, k%)$",
                   err_of(function() local _x = market.spawn(print, { max_activation = 5 }) end))
    assert.matches(THIS .. "market%.nested_vm: no option 1 %(name, k, max_activation%)$",
                   err_of(function() local _x = market.nested_vm(print, { "x" }) end))
    assert.is_true(market.is_action(market.nested_vm(print, { name = "n", k = print, max_activation = 5 })))
    assert.matches(THIS .. "market%.monitor: no option nmae %(name, subscribers%)$",
                   err_of(function() local _x = market.monitor(1, print, { nmae = "x" }) end))
    -- (5 was taken for true.)
    assert.matches(THIS .. "market%.monitor: subscribers must be true or false, got number$",
                   err_of(function() local _x = market.monitor("p", print, { subscribers = 5 }) end))
    assert.matches(THIS .. "market%.ground_vm: no option drviers " ..
                   "%(drivers, trace, drain, max_activation, on_crash%)$",
                   err_of(function() market.ground_vm(print, { drviers = true }) end))
    assert.matches(THIS .. "market%.open_ground_vm: no option drian",
                   err_of(function() market.open_ground_vm(print, { drian = 5 }) end))
    assert.matches(THIS .. "market%.nested_vm: the boot argument must be a function",
                   err_of(function() local _x = market.nested_vm("x") end))
    assert.matches(THIS .. "market%.quit: pid must be an integer or nil, got string " ..
                   "%(market%.quit%(nil, reason%) quits with a reason%)$",
                   err_of(function() local _x = market.quit("x") end))
    -- (An integral float is the integer, as for link and monitor: 3.0 raised.)
    assert.matches(THIS .. "market%.quit: pid must be an integer or nil, got 3%.5 ",
                   err_of(function() local _x = market.quit(3.5) end))
    assert.equal(3, market.quit(3.0).pid)
    assert.matches(THIS .. "market%.quit: reason: a function is not a term",
                   err_of(function() local _x = market.quit(nil, print) end))
    assert.matches(THIS .. "market%.delete_endpoint: name must be a string",
                   err_of(function() local _x = market.delete_endpoint(5) end))
    assert.matches(THIS .. "market%.delete_endpoint: reason: a function is not a term",
                   err_of(function() local _x = market.delete_endpoint("e", print) end))
    assert.matches(THIS .. "market%.at_meta_level: argument 2 is not an action",
                   err_of(function() local _x = market.at_meta_level(market.send(1), 5) end))
    assert.matches(THIS .. "market%.yield: the argument must be a function k %(the yield " ..
                   "action%) or a timeout in milliseconds, got string",
                   err_of(function() local _x = market.yield("x") end))
    -- A number is a timeout: a wait, and only a process waits.
    assert.matches(THIS .. "market%.yield: not inside a market process",
                   err_of(function() local _x = market.yield(5) end))
    assert.matches(THIS .. "market%.wait_for: the timeout must be a number of " ..
                   "milliseconds >= 0 %(or nil: none%), got %-1",
                   err_of(function() local _x = market.wait_for(print, -1) end))
    -- At once, not when the first event comes.
    assert.matches(THIS .. "market%.wait_for: pred must be a function",
                   err_of(function() local _x = market.wait_for(5) end))
    assert.matches(THIS .. "market%.ground_vm: the boot argument must be a function",
                   err_of(function() local _x = market.ground_vm(5) end))
  end)

  it("a transition holding a non-action is an error at the transition call", function()
    assert.matches(THIS .. "market%.transition: argument 2 is not an action %(number%)",
                   err_of(function() local _x = market.transition(0, 5) end))
    assert.matches(THIS .. "market%.transition: element 2 of argument 2 %(a list%) is not an action",
                   err_of(function() local _x = market.transition(0, { market.send(1), "x" }) end))
    assert.matches(THIS .. "market%.transition_no_state: argument 2 is not an action %(string%)",
                   err_of(function() local _x = market.transition_no_state(market.send(1), "x") end))
  end)

  it("more than 60000 actions must come as one list", function()
    local many = {}
    for i = 1, 60001 do many[i] = market.send(i) end
    assert.matches(THIS .. "market%.transition: more than 60000 actions %(give them as one list%)",
                   err_of(function() local _x = market.transition(0, table.unpack(many)) end))
    assert.is_true(market.is_transition(market.transition(0, many)))
    assert.is_false(market.is_transition({ market.send(1) }))
  end)

  it("records check their arity and fields, and are immutable", function()
    -- A label of this file's own: record types are one per label and
    -- arity in the process, and other specs declare r/2 with other fields.
    local r = market.record("pair", "a", "b")
    assert.matches(THIS .. "record pair takes 2 fields, got 1", err_of(function() local _x = r(1) end))
    assert.matches(THIS .. "record pair, field 2: a function is not a term",
                   err_of(function() local _x = r(1, print) end))
    assert.matches(THIS .. "record pair has no field 'c'",
                   err_of(function() local _x = r(1, 2).c end))
    assert.matches(THIS .. "terms are immutable",
                   err_of(function() local x = r(1, 2); x.a = 3 end))
  end)
end)

describe("performing outside a process", function()
  it("is an error naming the function", function()
    assert.matches(THIS .. "market%.perform: not inside a market process",
                   err_of(function() market.perform(market.send("x")) end))
    assert.matches(THIS .. "market%.yield: not inside a market process",
                   err_of(function() local _x = market.yield() end))
    assert.matches(THIS .. "market%.pause: not inside a market process",
                   err_of(function() market.pause() end))
    assert.matches(THIS .. "market%.wait_for: not inside a market process",
                   err_of(function() local _x = market.wait_for(print) end))
    assert.matches(THIS .. "market%.self: not inside a market process",
                   err_of(function() local _x = market.self() end))
    assert.matches(THIS .. "market%.state: not inside a market process",
                   err_of(function() local _x = market.state() end))
  end)

  -- These raised inside market.lua or the timer module ("market:566:",
  -- "market.timer:257: market.self: ..."), or named market.snapshot.
  it("and with no ground VM, at the caller's line, naming the function called", function()
    assert.matches(THIS .. "timer%.sleep: not inside a market process$",
                   err_of(function() require("market.timer").sleep(5) end))
    assert.matches(THIS .. "market%.stop: no ground VM is running$",
                   err_of(function() market.stop() end))
    assert.matches(THIS .. "market%.snapshot_json: no ground VM is running$",
                   err_of(function() local _x = market.snapshot_json() end))
  end)

  it("includes a coroutine of a process's own making, and the reason says so", function()
    local errs = {}
    H.ground(function()
      for _, f in ipairs({ function() market.perform(market.send("x")) end,
                           function() market.perform(market.send("x"), market.send("y")) end,
                           function() local _x = market.yield(5) end,
                           function() local _x = market.self() end }) do
        local _, e = coroutine.resume(coroutine.create(f))
        errs[#errs + 1] = e
      end
    end)
    local tail = ": not inside a market process: called from a coroutine the process runs " ..
                 "itself %(coroutine%.wrap or resume%), and only the process's own code may act or wait$"
    assert.matches(THIS .. "market%.perform" .. tail, errs[1])
    assert.matches(THIS .. "market%.perform" .. tail, errs[2])
    assert.matches(THIS .. "market%.yield" .. tail, errs[3])
    assert.matches(THIS .. "market%.self" .. tail, errs[4])
  end)

  -- A process's coroutine waiting in market.yield or market.wait_for is
  -- resumed by its VM only.  Another process's coroutine.resume ran the
  -- waiter's code inside its own activation (and swallowed its event), a
  -- close pulled the stack from under it, and after the VM had ended a
  -- resume read a freed process record (SEGV).
  local WAITING = "cannot resume a coroutine that waits in market.yield or market.wait_for " ..
                  "(its process's VM resumes it)"

  it("excludes another process's waiting coroutine: resume and close refused, the wait goes on", function()
    local log, co = {}, nil
    H.ground(function()
      market.perform(market.spawn(function()
        co = coroutine.running()
        market.perform(market.subscriber("real"))
        local ev = market.wait_for(function(e) return e.type == "message" end)
        log[#log + 1] = "waiter got " .. ev.message
      end, "waiter"), market.spawn(function()
        market.yield(1)
        local ok, e = coroutine.resume(co, { type = "message", message = "forged" })
        log[#log + 1] = tostring(ok) .. " " .. e
        ok, e = pcall(coroutine.close, co)
        log[#log + 1] = tostring(ok) .. " " .. e
        log[#log + 1] = coroutine.status(co)
        market.perform(market.send("real"))
      end, "thief"))
    end)
    assert.same({ "false " .. WAITING,
                  "false cannot close a coroutine that waits in market.yield or market.wait_for " ..
                  "(its process's VM resumes it)",
                  "suspended", "waiter got real" }, log)
  end)

  -- A process that has ended runs no further line: before, resuming the
  -- coroutine it left suspended ran the rest of it as the resumer's own.
  local ENDED = "cannot resume the coroutine of a process that has ended"

  it("excludes the coroutine of a process that has ended: quit, stopped by the budget, or killed", function()
    local log, cos = {}, {}
    H.ground(function()
      market.perform(market.spawn(function()
        cos.quit = coroutine.running()
        market.perform(market.quit())
        log[#log + 1] = "the quitter ran on"
      end), market.spawn(function()
        cos.budget = coroutine.running()
        local t = os.clock()
        while os.clock() - t < 0.5 do end
        log[#log + 1] = "the looper ran on"
      end), market.spawn(function()
        local pid = market.perform(market.spawn(function()
          cos.killed = coroutine.running()
          market.yield()
          log[#log + 1] = "the killed one ran on"
        end))
        market.yield(1)
        market.perform(market.quit(pid, "killed"))
      end))
      market.perform(market.spawn(function()
        market.yield(700)
        for _, k in ipairs { "quit", "budget", "killed" } do
          local ok, e = coroutine.resume(cos[k])
          log[#log + 1] = k .. " " .. tostring(ok) .. " " .. tostring(e)
          ok, e = pcall(coroutine.close, cos[k])
          log[#log + 1] = k .. " close " .. tostring(ok) .. " " .. tostring(e)
        end
      end))
    end, nil, { max_activation = 100 })
    assert.same({
      "quit false " .. ENDED, "quit close false cannot close the coroutine of a process that has ended",
      "budget false " .. ENDED, "budget close false cannot close the coroutine of a process that has ended",
      "killed false " .. ENDED, "killed close false cannot close the coroutine of a process that has ended",
    }, log)
  end)

  it("excludes a waiting coroutine of a ground VM that has ended", function()
    local co
    H.ground(function()
      market.perform(market.spawn(function()
        co = coroutine.running()
        market.yield()
      end))
    end)
    assert.equal("suspended", coroutine.status(co))
    assert.same({ false, ENDED }, { coroutine.resume(co) })
  end)

  it("keeps the wait when a wrapper made before market resumes it (lcorolib's resume)", function()
    local status, out, err = H.sh(("timeout 10 env LUA_CPATH=%s lua5.4 -e %s"):format(
      H.quote(package.cpath), H.quote([[
        local resume = coroutine.resume
        coroutine.resume = function(...) return resume(...) end
        local market = require "market"
        local co, got
        market.ground_vm(function()
          market.perform(market.spawn(function()
            co = coroutine.running()
            market.perform(market.subscriber("real"))
            got = market.yield().message
            market.yield()                   -- still waiting when the VM ends
          end), market.spawn(function()
            market.yield(1)
            print(coroutine.resume(co, { type = "message", message = "forged" }))
            market.perform(market.send("real"))
          end))
        end)
        print(got)
        print(coroutine.resume(co))]])))
    assert.equal("", err)
    assert.equal(0, status)
    assert.equal(("true\t%s\nreal\ntrue\t%s\n"):format(WAITING, WAITING), out)
  end)

  it("a ground VM inside a running ground VM is an error", function()
    local e
    H.ground(function()
      local ok
      ok, e = pcall(market.ground_vm, function() end)
    end)
    assert.matches("market%.ground_vm: a ground VM is already running", e)
  end)
end)

describe("acting from a finaliser (__gc)", function()
  -- A finaliser runs in whichever process the collector is in when it
  -- finds the object: an ended process's object quit another (B) with its
  -- reason, and spoke in that one's name.
  it("is refused: it acts for no process, and the one it ran in goes on", function()
    local status, out, err = H.run_script([[
      local market = require "market"
      market.perform(market.spawn(function()
        setmetatable({}, { __gc = function()
          market.perform(market.quit(nil, "from a finaliser"))
        end })
      end, "A"))
      market.pause()
      local b = market.perform(market.spawn(function()
        market.perform(market.subscriber("keep", "keep"))
        for _ = 1, 3 do collectgarbage() end
        print("B goes on")
        market.pause()
        print("B still here")
        market.perform(market.quit())
      end, "B"))
      for _ = 1, 5 do market.pause() end
    ]], "")
    assert.equal(0, status, err)
    assert.equal("B goes on\nB still here\n", out)
    assert.truthy(err:find("warn ground #%d+ B: error in __gc %(.*market%.quit: not inside a " ..
                           "market process: called from a finaliser %(__gc%)"), err)
    assert.falsy(err:find("from a finaliser\"", 1, true), err)
  end)
end)

describe("a hook on a handler's thread, kept", function()
  -- Handlers run on pooled threads: a process that kept the one it ran on
  -- and set a hook on it had the hook run in the next process to borrow
  -- the thread, as that process (market.self() said B; its quit was B's).
  it("is gone before another process runs on that thread", function()
    local status, out, err = H.run_script([[
      local market = require "market"
      local kept
      market.perform(market.spawn(function()
        return market.transition(nil, market.subscriber("a", { on_message = function()
          kept = coroutine.running()
        end }))
      end, "A"))
      market.perform(market.spawn(function()
        return market.transition(nil, market.subscriber("b", { on_message = function()
          local _x = 1
          print("B handled its message")
        end }))
      end, "B"))
      market.pause()
      market.perform(market.send("a"))
      market.pause()
      debug.sethook(kept, function()
        debug.sethook(kept)
        print("hook runs as", select(2, market.self()))
        market.perform(market.quit(nil, "killed by A's hook"))
      end, "l")
      market.perform(market.send("b"))
      market.pause()
    ]], "")
    assert.equal(0, status, err)
    assert.equal("B handled its message\n", out)
  end)
end)

describe("waiting where a process cannot be suspended", function()
  -- Inside a function C calls (table.sort's comparator, string.gsub's
  -- replacement, a metamethod) a coroutine cannot yield.  The wait is an
  -- error there, raised before anything is set up for it: a pcall that
  -- catches it leaves a process that handles its next events as before
  -- (once it was left marked as waiting and the next event crashed the VM).
  local NOWAIT = "cannot wait inside a C function %(a metamethod, or a function that "
    .. "table%.sort, string%.gsub and the like call%): the process cannot be suspended there$"

  local function after_caught(wait)
    local log = H.log()
    H.ground(function()
      market.perform(market.spawn(function()
        market.perform(market.subscriber("ping", { on_message = function(_, m)
          log("ping %s", m)
          return T(nil, market.quit())
        end }))
        local ok, e = pcall(table.sort, { 3, 1, 2 }, function(a, b) wait(); return a < b end)
        log("%s %s", tostring(ok), e)
        ok, e = pcall(string.gsub, "ab", ".", function() wait() end)
        log("%s %s", tostring(ok), e)
        -- A metamethod table.sort calls (one Lua calls may wait: 5.4 lets
        -- a coroutine yield across it).
        local mt = { __lt = function() wait(); return true end }
        ok, e = pcall(table.sort, { setmetatable({}, mt), setmetatable({}, mt) })
        log("%s %s", tostring(ok), e)
      end, { name = "waiter" }))
      H.settle()
      H.step(market.send("ping"))
    end, log)
    assert.equal(4, #log.lines, table.concat(log.lines, "\n"))
    assert.equal("ping ping", log.lines[4])
    return log.lines
  end

  it("market.yield(), with a timeout or without, is an error the process may catch", function()
    for _, wait in ipairs({ function() market.yield() end, function() market.yield(5) end }) do
      local lines = after_caught(wait)
      for i = 1, 3 do
        assert.matches("^false spec/misuse_spec%.lua:%d+: market%.yield: " .. NOWAIT, lines[i])
      end
    end
  end)

  it("market.wait_for(), with a timeout or without", function()
    for _, wait in ipairs({ function() market.wait_for(function() return true end) end,
                            function() market.wait_for(function() return true end, 5) end }) do
      local lines = after_caught(wait)
      for i = 1, 3 do
        assert.matches("^false spec/misuse_spec%.lua:%d+: market%.wait_for: " .. NOWAIT, lines[i])
      end
    end
  end)

  it("market.pause(), whose continuation is then not left behind", function()
    local lines = after_caught(function() market.pause() end)
    for i = 1, 3 do
      assert.matches("^false spec/misuse_spec%.lua:%d+: market%.pause: " .. NOWAIT, lines[i])
    end
  end)
end)

describe("a process that ends where it cannot be suspended", function()
  -- An action ending the process in table.sort's comparator, under a
  -- pcall: the process is dead, and a dead process runs no further line,
  -- caught or not.  Its endpoints are withdrawn and its peers see it go,
  -- as after any quit.
  local function ends_in_sort(die, reason)
    local log = H.log()
    H.ground(function()
      H.step(market.spawn(function()
        return T(0, market.subscriber({ "mortal", market._ }, H.logging(log, "watch")))
      end))
      market.perform(market.spawn(function()
        market.perform(market.publisher({ "mortal", 1 }))
        for _ = 1, 2 do
          local ok, e = pcall(table.sort, { 1, 2, 3 }, function(a, b)
            die()
            log("sort goes on")
            return a < b
          end)
          log("after the pcall: %s %s", tostring(ok), e)
        end
        market.perform(market.publisher({ "mortal", 2 }))
        log("after another action")
      end, { name = "mortal" }))
      H.settle()
    end, log)
    assert.same({ 'watch presence #1 publisher/participant ["mortal", 1]',
                  'watch absence #1 publisher/participant ["mortal", 1] ' .. (reason or "nil") },
                log.lines)
  end

  it("quit() alone", function()
    ends_in_sort(function() market.perform(market.quit()) end)
  end)

  it("quit() after a send, in one perform", function()
    ends_in_sort(function() market.perform(market.send("x"), market.quit()) end)
  end)

  it("a kill of itself (its reason: who killed it)", function()
    ends_in_sort(function() market.perform(market.quit(market.self())) end, "mortal")
  end)
end)

describe("misuse inside a process ends that process only, with the error as reason", function()
  local function victim_reason(bad, extra)
    local log = H.log()
    H.ground(function()
      H.step(market.spawn(function()
        return T(0, market.subscriber({ "victim", market._ }, H.logging(log, "watch")))
      end))
      H.step(market.spawn(function()
        return T(0, market.publisher({ "victim", 1 }),
                 market.subscriber("go", { on_message = bad }), extra)
      end))
      H.step(market.spawn(function()
        return T(0, market.subscriber("go", { on_message = function() log("other runs") end }))
      end))
      H.step(market.send("go"))
    end, log)
    assert.equal(3, #log.lines, table.concat(log.lines, "\n"))
    assert.equal('watch presence #1 publisher/participant ["victim", 1]', log.lines[1])
    assert.equal("other runs", log.lines[2])
    return (log.lines[3]:match('^watch absence #1 publisher/participant %["victim", 1%] (.*)$'))
  end

  it("a bad topic raised in a handler", function()
    assert.matches("^spec/misuse_spec%.lua:%d+: market%.subscriber: topic: a function is not a term$",
                   victim_reason(function(s) return T(s, market.subscriber(print)) end))
  end)

  it("at_meta_level in the ground VM", function()
    assert.equal("at_meta_level in the ground VM: there is no VM above it",
                 victim_reason(function(s) return T(s, market.at_meta_level(market.send("x"))) end))
  end)

  it("an endpoint added at meta level in the ground VM", function()
    assert.equal("at_meta_level in the ground VM: no VM above it (endpoint 'up')",
                 victim_reason(function(s)
                   return T(s, market.at_meta_level(market.subscriber("x", "up")))
                 end))
  end)

  -- The constructor checks a handler; the table is read at each event, so
  -- one replaced later was called as it was: "attempt to call a string
  -- value", in market.lua's dispatch.
  it("a handler replaced after its endpoint was added by what is not a function", function()
    local h = { name = "again", on_message = function() end }
    assert.equal('handler on_message of endpoint "again" is not a function (nor false), got a string',
                 victim_reason(function(s)
                   h.on_message = "oops"
                   return T(s, market.send("again"))
                 end, market.subscriber("again", h)))
  end)

  it("coroutine.yield() instead of market.yield()", function()
    assert.equal("coroutine.yield() outside market.yield(): a process suspends only through market",
                 victim_reason(function() coroutine.yield() end))
  end)

  it("a handler returning a table that is not a transition", function()
    assert.equal("handler returned a table, not a transition (use market.transition)",
                 victim_reason(function(s) return { market.send("x") } end))
    local faketr = setmetatable({}, getmetatable(market.transition(0)))
    assert.equal("handler returned a table, not a transition (use market.transition)",
                 victim_reason(function(s) return faketr end))
  end)

  -- What a watcher of a process's publisher logs when the process's boot
  -- function returns ret().
  local function booted_returning(ret)
    local log = H.log()
    H.ground(function()
      H.step(market.spawn(function()
        return T(0, market.subscriber({ "booted", market._ }, H.logging(log, "watch")))
      end))
      H.step(market.spawn(function()
        market.perform(market.publisher({ "booted", 1 }))
        return ret()
      end))
    end, log)
    return log.lines
  end

  it("a handler or boot function returning a lone action: the reason says how to wrap it", function()
    local want = "handler returned an action, not a transition (use market.transition_no_state(action))"
    assert.equal(want, victim_reason(function(s) return market.send("x") end))
    assert.equal(want, victim_reason(function(s) return market.quit() end))
    assert.equal(want, victim_reason(function(s) return market.subscriber({ "y", market._ }) end))
    assert.same({ 'watch presence #1 publisher/participant ["booted", 1]',
                  'watch absence #1 publisher/participant ["booted", 1] ' ..
                    "boot function returned an action, not a transition " ..
                    "(use market.transition_no_state(action))" },
                booted_returning(function() return market.send("z") end))
  end)

  it("a boot function returning what is not a transition: the reason says boot function", function()
    assert.same({ 'watch presence #1 publisher/participant ["booted", 1]',
                  'watch absence #1 publisher/participant ["booted", 1] ' ..
                    "boot function returned a number, not a transition (use market.transition)" },
                booted_returning(function() return 42 end))
  end)

  it("a handler returning another userdata given a transition's or a send's metatable", function()
    -- Through the debug library; its block was read as a transition's, and
    -- a file handle's made one of some thousands of actions.
    local file = io.tmpfile()
    local filemt = debug.getmetatable(file)
    debug.setmetatable(file, getmetatable(market.transition(0)))
    local reason = victim_reason(function(s) return file end)
    debug.setmetatable(file, getmetatable(market.send(1)))
    local ok_send = pcall(market.transition_no_state, file)
    debug.setmetatable(file, filemt)
    file:close()
    assert.equal("handler returned a userdata, not a transition (use market.transition)", reason)
    assert.is_false(ok_send)
  end)
end)

describe("actions that make no sense at meta level end the process", function()
  local function reason_of(action)
    local log = H.log()
    H.ground(function()
      H.step(market.nested_vm(function()
        return T(0, market.at_meta_level(market.subscriber("go", { on_message = function(s)
          log("handling go")
          return T(s, action())
        end })), market.at_meta_level(market.publisher("watched")))
      end))
      H.step(market.spawn(function()
        return T(0, market.subscriber("watched", H.logging(log, "w")))
      end))
      H.step(market.send("go"))
    end, log)
    assert.equal(3, #log.lines, table.concat(log.lines, "\n"))
    assert.equal('w presence #1 publisher/participant "watched"', log.lines[1])
    assert.equal("handling go", log.lines[2])
    return log.lines[3]:match('^w absence #1 publisher/participant "watched" (.*)$')
  end

  -- (Their reasons said "market:314: ...", a line of market.lua's.)
  it("quit(pid) at meta level (a VM quits only itself)", function()
    assert.equal("market.quit: at_meta_level quits the whole VM; it takes no pid",
                 reason_of(function() return market.at_meta_level(market.quit(1)) end))
  end)

  it("link at meta level", function()
    assert.equal("market.link: cannot be performed at meta level (pids are a VM's own)",
                 reason_of(function() return market.at_meta_level(market.link(1)) end))
  end)

  it("yield at meta level", function()
    assert.equal("market.yield: cannot be performed at meta level",
                 reason_of(function() return market.at_meta_level(market.yield(print)) end))
  end)
end)

describe("misuse at meta level in a nested VM ends the offending process only, at any depth",
         function()
  -- A VM `depth` levels down holds a sibling and an offender, both with
  -- endpoints in the ground VM.  On "go" the offender does what bad(up)
  -- returns (up: at_meta_level to the ground).  The ground watcher sees the
  -- offender go with the reason and the sibling stay; the sibling still
  -- answers a ping afterwards, so its VM lives on.
  local function offend(depth, bad)
    local _ = market._
    local log = H.log()
    local function up(...)
      local a = market.at_meta_level(...)
      for _ = 2, depth do a = market.at_meta_level(a) end
      return a
    end
    local function inner()
      return T(0,
        market.spawn(function()
          return T(0, up(market.publisher({ "held", "sibling" })),
                   up(market.subscriber("ping", { on_message = function(s)
                     return T(s, up(market.send({ "pong", "sibling" })))
                   end })))
        end, { name = "sibling" }),
        market.spawn(function()
          return T(0, up(market.publisher({ "held", "offender" }, "e")),
                   up(market.subscriber("go", { on_message = function(s)
                     return T(s, bad(up))
                   end })))
        end, { name = "offender" }))
    end
    local boot = inner
    for _ = 2, depth do
      local b = boot
      boot = function() return T(0, market.nested_vm(b)) end
    end
    H.ground(function()
      H.step(market.spawn(function()
        return T(0, market.subscriber({ "held", _ }, H.logging(log, "w")),
                 market.subscriber({ "pong", _ }, { on_message = function(s, m)
                   log("pong from %s", m[2])
                 end }))
      end))
      H.step(market.nested_vm(boot, { name = "vm" }))
      H.step(market.send("go"))
      H.step(market.send("ping"))
    end, log)
    return log.lines
  end

  local function offender_only(depth, bad, reason)
    assert.same({ 'w presence #1 publisher/participant ["held", "sibling"]',
                  'w presence #1 publisher/participant ["held", "offender"]',
                  'w absence #1 publisher/participant ["held", "offender"] ' .. reason,
                  "pong from sibling" }, offend(depth, bad))
  end

  for depth = 1, 2 do
    describe("depth " .. depth, function()
      it("re-adding an endpoint with another role names it as the process did", function()
        offender_only(depth, function(up)
          return up(market.subscriber({ "held", "offender" }, "e"))
        end, "endpoint 'e' re-added with a different role")
      end)

      -- Its endpoints go newest first, as any process's do.
      it("a re-add later in the same at_meta_level list: what came before stands, then goes",
         function()
        assert.same({ 'w presence #1 publisher/participant ["held", "sibling"]',
                      'w presence #1 publisher/participant ["held", "offender"]',
                      'w presence #1 publisher/participant ["held", "first"]',
                      'w absence #1 publisher/participant ["held", "first"] ' ..
                        "endpoint 'f' re-added with a different role",
                      'w absence #1 publisher/participant ["held", "offender"] ' ..
                        "endpoint 'f' re-added with a different role",
                      "pong from sibling" },
                    offend(depth, function(up)
                      return up(market.publisher({ "held", "first" }, "f"),
                                market.subscriber({ "held", "first" }, "f"),
                                market.publisher({ "held", "never" }, "g"))
                    end))
      end)

      -- Deleted, a name is free again at once, also while the deletion's
      -- own absences are still on their way down to the process.
      it("deleting an endpoint, then adding its name with another role, is no re-add",
         function()
        assert.same({ 'w presence #1 publisher/participant ["held", "sibling"]',
                      'w presence #1 publisher/participant ["held", "offender"]',
                      'w absence #1 publisher/participant ["held", "offender"] nil',
                      'w presence #1 publisher/participant ["held", "again"]',
                      "pong from sibling" },
                    offend(depth, function(up)
                      return up(market.delete_endpoint("e"),
                                market.publisher({ "held", "again" }, "e"))
                    end))
      end)

      it("a send aimed above the ground VM", function()
        offender_only(depth, function(up)
          return market.at_meta_level(up(market.send("x")))
        end, "at_meta_level in the ground VM: there is no VM above it")
      end)

      it("an endpoint added above the ground VM", function()
        offender_only(depth, function(up)
          return market.at_meta_level(up(market.publisher({ "held", "above" }, "p")))
        end, "at_meta_level in the ground VM: there is no VM above it")
      end)
    end)
  end
end)

describe("harmless no-ops", function()
  it("deleting an endpoint that does not exist changes nothing", function()
    local log = H.log()
    H.ground(function()
      H.step(market.spawn(function()
        return T(0, market.subscriber("x", { on_message = function(s)
          log("x %d", s)
          return T(s + 1, market.delete_endpoint("no-such-endpoint"))
        end }))
      end))
      H.step(market.send("x"))
      H.step(market.send("x"))
    end, log)
    assert.same({ "x 0", "x 1" }, log.lines)
  end)
end)

-- The metatables of boxes, record types and sends are within reach of the
-- debug library, and their functions with them: given a userdata that is
-- not theirs, they raise an error instead of reading or writing it (this
-- once freed a FILE* as a term).  In a child process: the old crash.
describe("metamethods called by hand", function()
  it("refuse a foreign userdata with an error, and leave it whole", function()
    local status, out, err = H.run_script([[
      local market = require "market"
      local r = market.record("r", "x")
      local metas = {
        box = debug.getmetatable(market._), record = debug.getmetatable(r),
        send = debug.getmetatable(market.send(1)),
        fixed = debug.getmetatable(market.spawn(print)),
      }
      local names = {}
      for what, mt in pairs(metas) do
        local keys = {}
        for k in pairs(mt) do keys[k] = true end
        -- A box's __gc may sit one metatable further, where Lua does not
        -- take it for a finalizer (lua/lterm.c, "Boxes without finalizers").
        if mt.__gc then keys.__gc = true end
        for k in pairs(keys) do
          local f = mt[k]
          if type(f) == "function" and k ~= "__tostring" or
             what ~= "send" and what ~= "fixed" and k == "__tostring" then
            names[#names + 1] = what .. "." .. k
          end
        end
      end
      table.sort(names)
      for _, name in ipairs(names) do
        local what, k = name:match("(%a+)%.(.*)")
        local ok, e = pcall(metas[what][k], io.stdout, 1, 2)
        print(name, ok, (tostring(e):gsub("^.-%((.*)%)$", "%1")))
      end
      -- a light userdata with the box metatable set by hand is no box either
      local lu = debug.upvalueid(function() return r end, 1)
      debug.setmetatable(lu, metas.box)
      local ok, e = pcall(function() return lu.x end)
      print("light", ok, (tostring(e):gsub("^.-%((.*)%)$", "%1")), market.is_term(lu))
      debug.setmetatable(lu, nil)
      io.stdout:write("stdout still works\n")
    ]])
    assert.equal(0, status, err)
    assert.equal(table.concat({
      "box.__eq\ttrue\tfalse",
      "box.__gc\tfalse\tmarket.term expected, got FILE*",
      "box.__index\tfalse\tmarket.term expected, got FILE*",
      "box.__len\tfalse\tmarket.term expected, got FILE*",
      "box.__newindex\tfalse\tterms are immutable",
      "box.__tostring\tfalse\tmarket.term expected, got FILE*",
      "fixed.__index\tfalse\tmarket.action expected, got FILE*",
      "fixed.__newindex\tfalse\tmarket.action: an action cannot be changed; make another",
      "record.__call\tfalse\trecord constructor expected, got FILE*",
      "record.__gc\tfalse\trecord constructor expected, got FILE*",
      "record.__index\tfalse\trecord constructor expected, got FILE*",
      "record.__tostring\tfalse\trecord constructor expected, got FILE*",
      "send.__index\tfalse\tmarket.action expected, got FILE*",
      "send.__newindex\tfalse\tmarket.action: an action cannot be changed; make another",
      "light\tfalse\tmarket.term expected, got market.term\tfalse",
      "stdout still works", "" }, "\n"), out)
  end)

  -- In a state the runtime made a box has no finalizer of its own: one
  -- that a finalized object reaches is whole in its __gc, and may be kept
  -- (lua/lterm.c, "Boxes without finalizers"; docs/terms.md).
  it("a box made after an object with a __gc is whole in that __gc", function()
    local status, out, err = H.run_script([[
      local market = require "market"
      local r = market.record("r", "x")
      local kept
      do
        local holder = setmetatable({}, { __gc = function(h) print(h.box.x); kept = h.box end })
        holder.box = r(42)
      end
      collectgarbage()
      collectgarbage()
      print(kept.x, market.repr(kept))
    ]])
    assert.equal(0, status, err)
    assert.equal("42\n42\tr(42)\n", out)
  end)

  it("a box whose __gc was called by hand is no term any more; _ and EOF stay whole", function()
    local status, out, err = H.run_script([[
      local market = require "market"
      local r = market.record("r", "x")
      local b = r(1)
      local gc = debug.getmetatable(b).__gc
      gc(b)
      gc(b)                                -- twice: still nothing to free
      print(market.is_term(b), select(2, pcall(function() return b.x end)))
      gc(market._)
      gc(market.EOF)
      print(market.repr({ market._, market.EOF }))
    ]])
    assert.equal(0, status, err)
    assert.matches("^false\t.*bad argument #1 to '.-' %(a term box whose __gc has run%)\n"
                   .. "%[_, #eof%]\n$", out)
  end)

  -- One record delivered to several processes comes to each in the same
  -- box, kept from one delivery to the next (lua/lproc.c, pushshared):
  -- one whose __gc a handler called by hand is not handed on empty.
  it("a delivered box whose __gc a handler called is not the next delivery's", function()
    local status, out, err = H.run_script([[
      local market = require "market"
      local r = market.record("r", "x")
      for _ = 1, 3 do
        market.perform(market.spawn(function()
          return market.transition(nil, market.subscriber(r(market._), {
            on_message = function(_, m)
              print(m.x)
              debug.getmetatable(m).__gc(m)
            end }))
        end))
      end
      market.pause()
      market.perform(market.send(r(1)))
    ]])
    assert.equal(0, status, err)
    assert.equal("1\n1\n1\n", out)
  end)

  -- The same for a burst of one record to one process, whose handler runs
  -- for each on one resume with the box kept in its frame (lproc.c, batch):
  -- the third handler empties the box the first three got.
  it("a box a handler emptied is not the next one of its burst", function()
    local status, out, err = H.run_script([[
      local market = require "market"
      local r = market.record("r", "x")
      market.perform(market.spawn(function()
        local n = 0
        return market.transition(nil, market.subscriber(r(market._), {
          on_message = function(_, m)
            n = n + 1
            print(m.x)
            if n == 3 then debug.getmetatable(m).__gc(m) end
          end }))
      end))
      market.pause()
      local m = r(1)
      for _ = 1, 6 do market.perform(market.send(m)) end
    ]])
    assert.equal(0, status, err)
    assert.equal(("1\n"):rep(6), out)
  end)
end)

-- Labels and field names are C strings underneath (runtime/term.h): a NUL
-- byte in one would cut it short ("a\0b" printed as a/1).
describe("record labels and field names", function()
  it("may not name one field twice: r.a could read only one of them", function()
    assert.matches("bad argument #4 to '[%w.]*record' %(field 'a' is named twice%)$",
                   select(2, pcall(market.record, "twice", "a", "b", "a")))
    assert.matches("bad argument #3 to '[%w.]*record' %(field '1' is named twice%)$",
                   select(2, pcall(market.record, "twice", "1", 1)))
    -- Many fields are checked through a table of the names seen (compared
    -- each with every other, 100,000 took seconds in one C call).
    local names = {}
    for i = 1, 5000 do names[i] = "f" .. i end
    assert.equal(5000, #market.record("many", table.unpack(names))(table.unpack(names)))
    names[4000] = 1
    names[5000] = "1"
    assert.matches("bad argument #5001 to '[%w.]*record' %(field '1' is named twice%)$",
                   select(2, pcall(market.record, "many twice", table.unpack(names))))
  end)

  it("may not be empty", function()
    assert.matches("bad argument #1 to '[%w.]*record' %(a record label must not be empty%)$",
                   select(2, pcall(market.record, "")))
    assert.matches("bad argument #2 to '[%w.]*record' %(a field name must not be empty%)$",
                   select(2, pcall(market.record, "a", "", "y")))
  end)

  it("may not contain a NUL byte", function()
    assert.matches("bad argument #1 to '[%w.]*record' %(a record label must not contain a NUL byte%)",
                   select(2, pcall(market.record, "a\0b")))
    assert.matches("bad argument #3 to '[%w.]*record' %(a field name must not contain a NUL byte%)",
                   select(2, pcall(market.record, "a", "x", "y\0z")))
    local r = market.record("r", "x")
    assert.equal("record r/1", tostring(r))
    assert.matches("record r has no field 'x\0y'$", err_of(function() return r(1)["x\0y"] end))
    assert.equal(1, r(1).x)
  end)
end)

-- A process's error value becomes its reason: a string or a term as it is,
-- anything else as tostring() shows it.  Its __tostring is the program's
-- code, run by the VM outside any activation: before, one that raised
-- aborted the whole program ("unprotected error"), and one that looped hung
-- it.  Each runs in a child market.
-- The reason a peer sees, shown by `show` (a Lua expression of `why`),
-- when a process that publishes "x" runs `body`, in a child market run
-- with `options`.
local function peer_sees(body, show, options)
  local status, out, err = H.run_script(([[
    local market = require "market"; LOOPER = coroutine.create(function() while true do end end)
    market.perform(market.spawn(function()
      market.perform(market.publisher("x"))
      market.pause()
      %s
    end))
    market.perform(market.subscriber("x", { on_absence = function(_, _, why)
      print(%s)
    end }))
  ]]):format(body, show), options)
  assert.equal(0, status, err)
  return (out:gsub("\n$", ""))
end

describe("an error value with a __tostring", function()
  local function reason(value) return peer_sees("error(" .. value .. ")", "market.repr(why)") end

  it("gives the reason it says, or says why it could not", function()
    assert.equal('"nice reason"',
                 reason('setmetatable({ 1 }, { __tostring = function() return "nice reason" end })'))
    assert.matches('^"%(a table error value; its __tostring failed: [^"]*:5: boom%)"$',
                   reason('setmetatable({ x = 1 }, { __tostring = function() error("boom") end })'))
    assert.equal('"(a table error value; its __tostring failed: __tostring ran too long)"',
                 reason('setmetatable({}, { __tostring = function() while true do end end })'))
    -- in a coroutine made before, which had no hook; the count is shared
    assert.equal('"(a table error value; its __tostring failed: __tostring ran too long)"',
                 reason('setmetatable({}, { __tostring = function() while true do ' ..
                        'coroutine.resume(LOOPER) end end })'))
    assert.equal('"(a table error value; its __tostring failed: \'__tostring\' must return a string)"',
                 reason('setmetatable({}, { __tostring = function() return {} end })'))
    assert.equal("[1, 2]", reason("{ 1, 2 }"))
  end)

  -- The limit's error was raised once: a __tostring that caught it looped
  -- on, and an xpcall's handler, which Lua runs inside the hook with hooks
  -- off, was out of its reach.  Each hung the program (the timeout's 60 s).
  it("is stopped when it catches the limit's error, or loops in an xpcall's handler", function()
    local spent = '"(a table error value; its __tostring failed: __tostring ran too long)"'
    assert.equal(spent, reason('setmetatable({}, { __tostring = function() ' ..
                               'while true do pcall(function() while true do end end) end end })'))
    assert.equal(spent, reason('setmetatable({}, { __tostring = function() return ' ..
                               'select(2, xpcall(error, function() while true do end end, "x")) end })'))
    -- (coroutine.wrap puts where it was on the error it passes on)
    assert.matches('^"%(a table error value; its __tostring failed: [^"]*__tostring ran too long%)"$',
                   reason('setmetatable({}, { __tostring = function() local co = ' ..
                          'coroutine.wrap(function() while true do pcall(function() ' ..
                          'while true do end end) end end) co() end })'))
  end)
end)

-- A process that fails leaves its pending to-be-closed variables unclosed,
-- as Lua leaves those of a coroutine nobody closes.  Before, clearing the
-- failed coroutine's stack ran their __close outside any protection or
-- budget: one that raised aborted the program, one that looped hung it.
describe("a process that fails with a <close> variable pending", function()
  local function reason(body) return peer_sees(body, "why", "--no-drivers --max-activation 100") end

  it("fails with its own reason; the __close does not run", function()
    assert.equal("activation budget exceeded", reason([[
        local x <close> = setmetatable({}, { __close = function() error("close boom") end })
        while true do end]]))
    assert.matches(":%d+: y$", reason([[
        local x <close> = setmetatable({}, { __close = function() while true do end end })
        error("y")]]))
  end)
end)

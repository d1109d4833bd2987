-- log_spec.lua: market.log (docs/inspect.md, "Logging"): levels, the line's
-- prefix, the threshold (--log-level, MARKET_LOG, market.log.level), the
-- Lua sink, rate-limited warnings, and the drivers' warnings through it.
package.path = "spec/support/?.lua;" .. package.path
local H = require "helpers"
local market = require "market"

local TIME = "%d%d%d%d%-%d%d%-%d%dT%d%d:%d%d:%d%d%.%d%d%dZ"

local function lines(err)
  local t = {}
  for line in err:gmatch("[^\n]+") do t[#t + 1] = line end
  return t
end

local LEVELS = [[
  local market = require "market"
  market.log.debug("debug %d", 1)
  market.log.info("info %d", 2)
  market.log.warn("warn %d", 3)
  market.log.error("error %d", 4)
]]

describe("market.log", function()
  it("prefixes each line with the time, level, VM path, pid and name; warn and up by default",
     function()
    local status, out, err = H.run_script([[
      local market = require "market"
      market.perform(market.spawn(function()
        market.log.warn("from the %s, %d", "child", 7)
        market.log.info("not shown")
      end, { name = "kid" }))
      market.pause()
      market.perform(market.nested_vm(function() market.log.error({"a", "table"}) end))
      market.pause()
      print(market.log.level())
    ]])
    assert.equal(0, status, err)
    assert.equal("warn\n", out)
    local l = lines(err)
    assert.equal(2, #l, err)
    assert.matches("^" .. TIME .. " warn ground #%d+ kid: from the child, 7$", l[1])
    assert.matches("^" .. TIME .. " error ground/%d+ #1 nested%-vm: table: 0x%x+$", l[2])
  end)

  it("--log-level and MARKET_LOG set the threshold; a bad one is said", function()
    local path = H.tempfile(LEVELS)
    local bin = H.quote(H.market_bin()) .. " --no-drivers "
    -- (the script's lines: not the interpreter's own, at info, about its
    -- memory limit)
    local function levels(err)
      local t = {}
      for _, line in ipairs(lines(err)) do
        if not line:find(" -: market: memory limit ", 1, true) then
          t[#t + 1] = line:match("^" .. TIME .. " (%a+) ")
        end
      end
      return table.concat(t, " ")
    end
    local status, _, err = H.sh(bin .. "--log-level debug " .. path)
    assert.equal(0, status, err)
    assert.equal("debug info warn error", levels(err))
    assert.matches(" info %-: market: memory limit %d+ MiB ", err)   -- (said first, at info)
    status, _, err = H.sh("MARKET_LOG=info " .. bin .. path)
    assert.equal("info warn error", levels(err))
    status, _, err = H.sh("MARKET_LOG=info " .. bin .. "--log-level error " .. path)
    assert.equal("error", levels(err))
    status, _, err = H.sh(bin .. "--log-level loud " .. path)
    assert.equal(2, status)
    assert.equal("market: --log-level needs a level: error, warn, info or debug\n", err)
    status, _, err = H.sh("MARKET_LOG=loud " .. bin .. path)
    assert.equal(0, status)
    assert.matches("^market: MARKET_LOG: 'loud' is not a level", err)
    assert.equal("warn error", levels(err:gsub("^[^\n]*\n", "")))
    os.remove(path)
  end)

  it("market.log.level sets the threshold, and refuses what is not a level", function()
    local before = market.log.level()
    assert.equal(before, market.log.level("debug"))
    assert.equal("debug", market.log.level(before))
    assert.has_error(function() market.log.level("loud") end,
                     "market.log.level: 'loud' is not a level (error, warn, info, debug)")
    -- Once "bad argument #1 to '?'", and "error\0x" was taken for "error".
    assert.has_error(function() market.log.level({}) end,
                     "market.log.level: a level name expected (error, warn, info, debug), got table")
    assert.has_error(function() market.log.level("error\0x") end,
                     "market.log.level: a level name holds no NUL byte")
    assert.equal(before, market.log.level())
    assert.has_error(function() market.log.warn(42, "x") end,
                     "market.log.warn: the format must be a string, got number")
    -- A format its arguments do not fit: the caller's line, not market's.
    local line = debug.getinfo(1, "l").currentline + 1
    local ok, err = pcall(function() market.log.warn("%d", "many"); return 0 end)
    assert.is_false(ok)
    assert.equal(("spec/log_spec.lua:%d: market.log.warn: bad argument #2 (number expected, got string)")
                 :format(line), err)
  end)

  it("a Lua sink gets every line instead of stderr; nil gives them back; its errors are said",
     function()
    local status, out, err = H.run_script([[
      local market = require "market"
      market.log.sink(function(level, line, message)
        print("sink", level, message, line:match("ground #%d+ [^:]*"))
      end)
      market.log.warn("one")
      market.log.sink(function() error("sink broke\n2026-01-01T00:00:00.000Z forged\27[2J") end)
      market.log.warn("two")
      market.log.sink(nil)
      market.log.warn("three")
      print(pcall(market.log.sink, 1))
    ]])
    assert.equal(0, status, err)
    assert.matches("^sink\twarn\tone\tground #%d+ [^\n]*\nfalse\t[^\n]*market.log.sink: the sink must " ..
                   "be a function or nil, got number\n$", out)
    local l = lines(err)
    assert.equal(4, #l, err)
    -- (what the sink raised is said as a message is: its own lines indented)
    assert.matches("^market: the log sink failed: [^\n]*sink broke$", l[1])
    assert.equal("\t2026-01-01T00:00:00.000Z forged\\x1b[2J", l[2])
    assert.matches("^" .. TIME .. " warn ground #%d+ [^\n]*: two$", l[3])
    assert.matches("^" .. TIME .. " warn ground #%d+ [^\n]*: three$", l[4])
  end)

  -- Lines travel as C strings (a host's mk_host_on_log takes one): a NUL
  -- byte in a message cut it short there, and the rest was lost.
  it("writes a NUL byte in a message as \\0, not as the end of the line", function()
    local status, out, err = H.run_script([[
      local market = require "market"
      market.log.sink(function(_, line, message) print(message, #line > #message) end)
      market.log.warn("a\0b")
      market.log.warn("%s and %s", "c\0d", "\0")
      market.log.sink(nil)
      market.log.warn("e\0f")
    ]])
    assert.equal(0, status, err)
    assert.equal("a\\0b\ttrue\nc\\0d and \\0\ttrue\n", out)
    assert.matches("^" .. TIME .. " warn ground #%d+ [^\n]*: e\\0f\n$", err)
  end)

  it("rate-limits a warning repeated from one place and says how many it suppressed", function()
    local status, _, err = H.run_script([[
      local market = require "market"
      local timer = require "market.timer"
      for i = 1, 12 do market.log.warn("again %d", i) end
      for i = 1, 3 do market.log.warn("elsewhere %d", i) end
      for i = 1, 8 do market.log.info("info %d", i) end
      timer.sleep(10100)
      market.log.warn("again %d", 13)
    ]], "--log-level info")
    assert.equal(0, status, err)
    local _, again = err:gsub(" warn [^\n]*again %d+", "")
    local _, elsewhere = err:gsub(" warn [^\n]*elsewhere %d", "")
    local _, info = err:gsub(" info [^\n]*info %d", "")
    assert.equal(6, again, err)
    assert.equal(3, elsewhere, err)
    assert.equal(8, info, err)
    assert.matches(": again 5\n", err)
    assert.falsy(err:find(": again 6\n", 1, true), err)
    assert.matches(": again 13 %(7 more suppressed%)\n$", err)
  end)

  -- The places were kept in a direct-mapped table where a place reset the
  -- window of the one it displaced: these two formats share a slot of it,
  -- and logged in turn, neither was ever limited (2000 lines).
  it("limits places that alternate, however many they are", function()
    local status, _, err = H.run_script([[
      local market = require "market"
      for i = 1, 1000 do
        market.log.warn("disk A full: %s", i)
        market.log.warn("disk B232 full: %s", i)
      end
      for r = 1, 20 do
        for k = 1, 100 do market.log.warn("place " .. k .. ": %d", r) end
      end
    ]])
    assert.equal(0, status, err)
    local _, a = err:gsub(" warn [^\n]*disk A full", "")
    local _, b = err:gsub(" warn [^\n]*disk B232 full", "")
    assert.same({ 5, 5 }, { a, b })
    -- 62 places keep an entry each; the others share one more window.
    local per, total = {}, 0
    for k in err:gmatch(" warn [^\n]*place (%d+): %d+\n") do
      per[k] = (per[k] or 0) + 1
      total = total + 1
    end
    for k, n in pairs(per) do assert.is_true(n <= 5, k .. ": " .. n) end
    assert.equal(62 * 5 + 5, total)
  end)

  it("the drivers' warnings go through it", function()
    local status, out, err = H.run_script([[
      local market = require "market"
      local udp = require "market.udp"
      market.log.sink(function(level, line) print(level, line) end)
      local me = udp.handle("me")
      market.perform(market.subscriber(udp.packet(market._, me, market._), "rx"),
                     market.subscriber(udp.bound(me, market._), "bound"))
      local port = market.wait_for(function(e) return e.endpoint == "bound" end).role.topic.port
      local there = udp.remote_address("127.0.0.1", port)
      market.perform(market.send(udp.packet(me, there, 42)),
                     market.send(udp.packet(me, there, "after")))
      print(market.wait_for(function(e) return e.endpoint == "rx" end).message.body)
      market.perform(market.quit())
    ]], "")
    assert.equal(0, status, err)
    assert.matches("^warn\t" .. TIME .. " warn ground #%d+ [^\n]*: market%.udp: [^\n]*dropping a " ..
                   "datagram[^\n]*\nafter\n$", out)
    assert.equal("", err)
  end)

  -- Lua's warn() and a finalizer's error came to stderr bare: no time, no
  -- process, no sink, and what the message held written raw.
  it("the interpreter logs Lua's warnings: warn() and an error in __gc", function()
    local status, out, err = H.run_script([[
      local market = require "market"
      market.log.sink(function(level, line, message) print(level, message) end)
      market.perform(market.spawn(function()
        warn("disk ", "almost full")
        setmetatable({}, { __gc = function() error("finalizer broke", 0) end })
        collectgarbage()
      end, { name = "w" }))
      market.pause()
      market.log.sink(nil)
      warn("said\nforged")
    ]], "--no-drivers")
    assert.equal(0, status, err)
    assert.equal("warn\tdisk almost full\nwarn\terror in __gc (finalizer broke)\n", out)
    assert.matches("^" .. TIME .. " warn ground #%d+ [^\n]*: said\n\tforged\n$", err)
    status, _, err = H.run_script("warn('quiet')", "--no-drivers --log-level error")
    assert.equal(0, status, err)
    assert.equal("", err)
  end)
end)

-- websocket_browser_spec.lua: examples/wschat.lua with a real browser.
-- The example runs as `market examples/wschat.lua 0`; headless chromium
-- opens its page, whose script speaks WebSocket to it, and the spec reads
-- the page over the DevTools protocol (spec/support/cdp.lua) while a
-- second guest, spec/support/wsclient.lua's, joins, talks and leaves.
-- Skipped, saying so, where /usr/bin/chromium is absent.
package.path = "spec/support/?.lua;" .. package.path
local N = require "net"
local market = require "market"
local q = N.q

local cdp = require "cdp"

describe("examples/wschat.lua in headless chromium", function()
  if not cdp.available() then
    it("is skipped: " .. cdp.CHROMIUM .. " is absent (apt-get install chromium)", function()
      io.stderr:write("websocket_browser_spec: SKIPPED: no " .. cdp.CHROMIUM .. "\n")
    end)
    return
  end

  local server, browser, profile = nil, nil, nil
  after_each(function()
    cdp.stop(browser, profile)
    if server then server.kill() end
  end)

  it("carries a browser's lines to another guest and back, with joins and leaves", function()
    local port
    server, port = N.await_listening(N.start_cmd(("exec %s examples/wschat.lua 0")
      :format(q(N.market_bin()))), "wschat")
    local dport
    browser, dport, profile = cdp.start(("http://127.0.0.1:%d/"):format(port))

    local W = require "wsclient"
    local seen, heard = {}, {}
    N.run(function()
      local timer = require "market.timer"
      local page = cdp.open(dport)
      -- The page's log once it shows what `want` finds, within 15 s.
      local function shown(want)
        local log, deadline = "", market.now() + 15000
        repeat
          log = page.eval([[(document.getElementById("log") || {}).textContent || ""]])
          if log:find(want) then break end
          timer.sleep(50)
        until market.now() > deadline
        return log
      end
      seen[1] = shown("you are guest1\n")
      local other = W.client(port, "/ws")
      other.open()
      local function next_text()
        local op, text = other.next()
        return op == 1 and text or tostring(op)
      end
      heard[1] = next_text()                         -- "you are guest2"
      heard[2] = next_text()                         -- the guests already there
      seen[2] = shown("guest2 joined\n")
      page.eval([[(() => { document.getElementById("text").value = "hello from chromium";
        document.querySelector("#say button").click(); return 1; })()]])
      heard[3] = next_text()
      other.send(1, "hi, browser ✓")
      heard[4] = next_text()                         -- our own line, from the room
      seen[3] = shown("guest2: hi, browser ✓\n")
      other.send(8, string.pack(">I2", 1000))
      heard[5] = other.next()
      seen[4] = shown("guest2 left\n")
      page.close()
    end, 60000)

    assert.equal("you are guest1\n", seen[1])
    assert.same({ "you are guest2", "guest1 joined", "guest1: hello from chromium",
                  "guest2: hi, browser ✓", 8 }, heard)
    assert.equal("you are guest1\nguest2 joined\n", seen[2])
    assert.equal("you are guest1\nguest2 joined\nguest1: hello from chromium\n" ..
                 "guest2: hi, browser ✓\n", seen[3])
    assert.equal(seen[3] .. "guest2 left\n", seen[4])
  end)
end)

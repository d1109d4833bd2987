-- inspect_browser_spec.lua: the inspector's page in a real browser.
-- examples/chat.lua runs with --inspect and three nc clients; headless
-- chromium shows the page, and the spec reads what it shows over the
-- DevTools protocol (spec/support/cdp.lua): three sessions and their
-- conversations and the memory it holds against its limit, then two
-- within two seconds of one client leaving.  A
-- screenshot goes to $TMPDIR (its path is printed).  Skipped, saying so,
-- where /usr/bin/chromium is absent.
package.path = "spec/support/?.lua;" .. package.path
local N = require "net"
local J = require "jsonread"
local market = require "market"
local q = N.q

local cdp = require "cdp"

-- What the page shows: the snapshot's time, the chat sessions' names and
-- the conversations about what they say.
local SHOWN = [[(() => {
  const s = document.getElementById("summary");
  if (!s) return JSON.stringify({ time: 0, users: [], said: 0 });    // not loaded yet
  const users = [...document.querySelectorAll("tr.proc")].map((r) => r.dataset.name)
    .filter((n) => /^user\d+$/.test(n)).sort();
  const said = [...document.querySelectorAll("tr.conv")]
    .filter((r) => r.dataset.topic.startsWith("chat-said(")).length;
  return JSON.stringify({ time: Number(s.dataset.time || 0), users: users, said: said,
                          summary: s.textContent });
})()]]

describe("the inspector's page in headless chromium", function()
  if not cdp.available() then
    it("is skipped: " .. cdp.CHROMIUM .. " is absent (apt-get install chromium)", function()
      io.stderr:write("inspect_browser_spec: SKIPPED: no " .. cdp.CHROMIUM .. "\n")
    end)
    return
  end

  local server, clients, browser, profile = nil, {}, nil, nil
  after_each(function()
    cdp.stop(browser, profile)
    for _, c in ipairs(clients) do c.kill() end
    if server then server.kill() end
  end)

  it("shows three chat sessions and their conversations, and a departing one goes within 2 s", function()
    server = N.start_cmd(("exec %s --max-memory 256M --inspect 127.0.0.1:0 examples/chat.lua 0")
      :format(q(N.market_bin())))
    local _, cport = N.await_listening(server, "chat")
    local iport
    for _ = 1, 250 do
      iport = tonumber(server.stderr():match("inspector on http://127%.0%.0%.1:(%d+)/"))
      if iport then break end
      N.sleep(0.02)
    end
    assert(iport, server.stderr())
    for i = 1, 3 do
      clients[i] = N.start_cmd(("exec timeout 120 nc -d 127.0.0.1 %d"):format(cport))
    end
    local dport
    browser, dport, profile = cdp.start(("http://127.0.0.1:%d/"):format(iport), "1600,1000")

    local shot = (os.getenv("TMPDIR") or "/tmp") .. "/market-inspector-" .. server.pid .. ".png"
    local before, states, gone_at, filtered, detail, conv, cpu = nil, {}, nil, nil, nil, nil, nil
    N.run(function()
      local timer = require "market.timer"
      local page = cdp.open(dport)
      local function shown() return assert(J.decode(page.eval(SHOWN))) end
      -- Three sessions (the clients connect as the browser starts).
      local deadline = market.now() + 30000
      repeat
        before = shown()
        if #before.users == 3 then break end
        timer.sleep(100)
      until market.now() > deadline
      -- The filter box keeps the rows that mention what is typed.
      local function filter(text)
        page.eval(('(() => { const f = document.getElementById("filter"); f.value = %q; ' ..
          'f.dispatchEvent(new Event("input")); return 1; })()'):format(text))
        return shown()
      end
      filtered = filter("user2")
      -- A click on a process opens its view.
      page.eval([[(() => { document.querySelector('tr.proc[data-name="user2"]').click(); return 1; })()]])
      deadline = market.now() + 10000
      repeat
        timer.sleep(100)
        detail = page.eval([[(() => { const d = document.getElementById("detail");
          return d.hidden ? "" : document.getElementById("dtitle").textContent; })()]])
      until detail:find("user2", 1, true) or market.now() > deadline
      -- And on a conversation, the messages through it.
      page.eval([[(() => { [...document.querySelectorAll("tr.conv")]
        .find((r) => r.dataset.topic.startsWith("chat-said(\"user2\"")).click(); return 1; })()]])
      deadline = market.now() + 10000
      repeat
        timer.sleep(100)
        conv = page.eval([[document.getElementById("dtitle").textContent]])
      until conv:find("^conversation") or market.now() > deadline
      page.eval([[(() => { document.querySelector('tr.proc[data-name="user2"]').click(); return 1; })()]])
      filter("user")
      -- Detail mode is on while the page is open: the sessions' CPU time
      -- and memory are shown, not "-".
      deadline = market.now() + 10000
      repeat
        timer.sleep(100)
        cpu = page.eval([[(() => [...document.querySelectorAll('tr.proc[data-name="user1"] td')]
          .map((td) => td.textContent).slice(-2).join(" "))()]])
      until cpu:find("^%d+%.%d %d+") or market.now() > deadline
      page.screenshot(shot)
      filter("")
      -- One client leaves; the page shows the others only.
      clients[1].stop("TERM")
      gone_at = market.now()
      deadline = gone_at + 15000
      repeat
        timer.sleep(100)
        local s = shown()
        states[#states + 1] = s
      until #s.users == 2 or market.now() > deadline
      page.close()
    end, 60000)
    print("\ninspect_browser_spec: screenshot in " .. shot)

    assert.same({ "user1", "user2", "user3" }, before.users)
    -- The header: counts, the memory limit's count and the limit, time.
    assert.matches("^%d+ processes · %d+ conversations · memory [%d.]+ [KM]i?B of 256%.0 MiB · " ..
                   "%d%d:%d%d:%d%d UTC$", before.summary)
    assert.matches("^%d+%.%d %d+", cpu)          -- CPU ms and memory of user1
    -- Each session publishes what it says and hears everyone: 3 x 3.
    assert.equal(9, before.said)
    assert.same({ "user2" }, filtered.users)
    assert.truthy(detail:find("^process ground #%d+ user2 %(lua%)"), detail)
    assert.truthy(conv:find("^conversation #%d+ user2:speak → #%d+ user%d:hear$"), conv)
    local last = states[#states]
    assert.equal(2, #last.users)
    assert.equal(4, last.said)
    -- Every snapshot the page showed from 2 s after the client left on
    -- had it gone (the page is pushed one a second).
    for _, s in ipairs(states) do
      if s.time >= gone_at + 2000 then
        assert.equal(2, #s.users, ("3 sessions shown %d ms after one left"):format(s.time - gone_at))
      end
    end
    local f2 = io.open(shot, "rb")
    assert.truthy(f2, "no screenshot")
    assert.equal("\137PNG", f2:read(4))
    f2:close()
  end)
end)

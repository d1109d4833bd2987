-- kv_example_spec.lua: examples/kv.lua end to end with curl, on a
-- loopback port the kernel picks, the server killed at the end.
package.path = "spec/support/?.lua;" .. package.path
local N = require "net"

local PORT

-- curl runs unsanitized: under spec/run's second suite the sanitizer
-- preloads would be curl's too, and it hangs with them.
local CURL = "env -u LD_PRELOAD -u ASAN_OPTIONS -u UBSAN_OPTIONS curl"

-- curl's answer: the body and the status code (curl's -w line, last).
local function curl(args)
  local out = N.capture((CURL .. " -s -m 5 -w '\\n%%{http_code}' %s"):format(
    args:gsub("URL", ("http://127.0.0.1:%d"):format(PORT))), 10)
  local body, code = out:match("^(.*)\n(%d+)$")
  return body, tonumber(code)
end

describe("examples/kv.lua", function()
  local server
  setup(function() server, PORT = N.start_server("examples/kv.lua") end)
  teardown(function() server.kill() end)

  it("puts, gets, replaces and deletes a key", function()
    assert.same({ "", 201 }, { curl("-X PUT --data-binary hello URL/kv/greeting") })
    assert.same({ "hello", 200 }, { curl("URL/kv/greeting") })
    assert.same({ "", 200 }, { curl("-X PUT --data-binary bye URL/kv/greeting") })
    assert.same({ "bye", 200 }, { curl("URL/kv/greeting") })
    assert.same({ "", 204 }, { curl("-X DELETE URL/kv/greeting") })
    assert.same({ "no key greeting\n", 404 }, { curl("URL/kv/greeting") })
    assert.same({ "", 404 }, { curl("-X DELETE URL/kv/greeting") })
  end)

  it("answers HEAD with a GET's head, and other methods and pages with 405 and 404", function()
    curl("-X PUT --data-binary 12345 URL/kv/five")
    local head = N.capture((CURL .. " -s -m 5 -I http://127.0.0.1:%d/kv/five"):format(PORT), 10)
    assert.matches("^HTTP/1%.1 200 OK\r\n", head)
    assert.matches("\r\nContent%-Length: 5\r\n", head)
    assert.same({ "method not allowed\n", 405 }, { curl("-X POST URL/kv/five") })
    assert.same({ "no such page: try /kv/NAME\n", 404 }, { curl("URL/elsewhere") })
  end)

  it("takes many clients at once, each key kept", function()
    local cmds = {}
    for i = 1, 40 do
      cmds[#cmds + 1] = (CURL .. " -s -m 10 -X PUT --data-binary v%d http://127.0.0.1:%d/kv/k%d &")
        :format(i, PORT, i)
    end
    N.capture(table.concat(cmds, " ") .. " wait", 20)
    local urls = {}
    for i = 1, 40 do urls[i] = ("http://127.0.0.1:%d/kv/k%d"):format(PORT, i) end
    -- One curl, one connection kept alive for all forty.
    local out = N.capture(CURL .. " -s -m 10 " .. table.concat(urls, " "), 20)
    local want = {}
    for i = 1, 40 do want[i] = "v" .. i end
    assert.equal(table.concat(want), out)
  end)

  it("refuses a body larger than its 64 KiB with 413, and keeps serving", function()
    local big = os.tmpname()
    local f = assert(io.open(big, "wb"))
    f:write(("x"):rep(100 * 1024))
    f:close()
    local _body, code = curl("-X PUT --data-binary @" .. big .. " URL/kv/big")
    os.remove(big)
    assert.equal(413, code)
    assert.same({ "no key big\n", 404 }, { curl("URL/kv/big") })
    assert.is_true(server.running())
  end)
end)

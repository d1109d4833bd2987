-- coming_from_spec.lua: the Lua examples of docs/coming-from.md compile,
-- and its two market programs do what the page says: the gen_server-like
-- counter prints "1 2", the straight-line echo server echoes lines (on a
-- free port, driven by nc, bounded by `timeout`, killed at the end).
package.path = "spec/support/?.lua;" .. package.path
local N = require "net"
local H = require "helpers"

local PAGE = "docs/coming-from.md"

local function blocks()
  local page, found = assert(N.slurp(PAGE), "no " .. PAGE), {}
  for code in page:gmatch("```lua\n(.-)```") do found[#found + 1] = code end
  return found
end

-- The market program among the blocks that holds `marker`, as a file.
local function program(marker)
  for _, code in ipairs(blocks()) do
    if code:find('require "market', 1, true) and code:find(marker, 1, true) then
      return H.tempfile(code)
    end
  end
  error(PAGE .. " has no market program with " .. marker)
end

describe("docs/coming-from.md", function()
  it("has Lua examples that compile", function()
    local all = blocks()
    assert.is_true(#all >= 3, "only " .. #all .. " Lua examples")
    for i, code in ipairs(all) do assert(load(code, "=example " .. i)) end
  end)

  it("has a counter that answers calls: 1 2", function()
    local path = program("counter-incr")
    local out, status = N.capture(("%s %s"):format(N.q(N.market_bin()), N.q(path)), 20)
    os.remove(path)
    assert.equal(0, status)
    assert.equal("1\t2\n", out)
  end)

  it("has a straight-line echo server that echoes lines", function()
    local path, port = program("tcp.serve"), N.free_port()
    local server = N.start(path, port)
    local ok, out = pcall(N.capture, ([[
      for i in $(seq 1 200); do printf 'one\r\ntwo\n' | nc -N 127.0.0.1 %d 2>/dev/null && break; sleep 0.05; done]])
      :format(port), 30)
    server.kill()
    os.remove(path)
    assert(ok, out)
    assert.equal("one\ntwo\n", out)
  end)
end)

-- readme_spec.lua: the Lua examples of README.md's "A taste" run and print
-- what their comments say (each as a script of its own, bounded by
-- `timeout`).
package.path = "spec/support/?.lua;" .. package.path
local N = require "net"
local H = require "helpers"

local function examples()
  local page = assert(N.slurp("README.md"), "no README.md")
  local taste = assert(page:match("\n## A taste\n(.-)\n## "), "README.md has no \"A taste\"")
  local found = {}
  for code in taste:gmatch("```lua\n(.-)```") do found[#found + 1] = code end
  return found
end

-- What `market` prints running code as a script, and its status.
local function run(code)
  local path = H.tempfile(code, ".lua")
  local out, status = N.capture(("%s %s"):format(N.q(N.market_bin()), N.q(path)), 20)
  os.remove(path)
  return out, status
end

describe("README.md, A taste", function()
  it("has two Lua examples", function()
    assert.equal(2, #examples())
  end)

  it("greets: alice says hello", function()
    assert.same({ "alice says hello\n", 0 }, { run(examples()[1]) })
  end)

  it("echoes a line through a server and a client, both straight-line", function()
    assert.same({ "hello\n", 0 }, { run(examples()[2]) })
  end)
end)

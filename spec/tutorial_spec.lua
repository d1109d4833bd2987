-- tutorial_spec.lua: docs/tutorial.md shows each step's program exactly as
-- the file it names, and every step runs: each is started as
-- $MARKET_BUILD/market on a port the kernel picks and driven by nc on
-- loopback, every client bounded by `timeout`, every server killed at the
-- end.  The clients wait for what they expect to read (polling their own
-- output), never for a fixed time.
package.path = "spec/support/?.lua;" .. package.path
local N = require "net"

local TUTORIAL = "docs/tutorial.md"
local STEPS = {
  "examples/tutorial/step1.lua", "examples/tutorial/step2.lua",
  "examples/tutorial/step3.lua", "examples/tutorial/step4.lua", "examples/chat.lua",
}

-- The code blocks of the page, by the file named in the line before each:
-- "`examples/tutorial/step1.lua`:" or "This is `examples/chat.lua`, ...:".
local function shown()
  local page, blocks = assert(N.slurp(TUTORIAL), "no " .. TUTORIAL), {}
  for file, code in page:gmatch("`(examples/[%w/_%-]+%.lua)`[^\n]*:\n\n```lua\n(.-)```") do
    assert(blocks[file] == nil, file .. " is shown twice")
    blocks[file] = code
  end
  return blocks
end

-- w FILE TEXT: wait until FILE holds TEXT (up to 20 s; the caller's
-- `timeout` bounds the whole script anyway).
local WAIT = [[
w() { i=0; until grep -q "$2" "$1"; do sleep 0.05; i=$((i+1)); [ $i -gt 400 ] && break; done; }
]]

-- Run a client script against a step started on a port the kernel picks;
-- returns what the script printed.
local function with_server(step, script)
  local server, port = N.start_server(step)
  local ok, out = pcall(N.capture, WAIT .. script:gsub("PORT", tostring(port)), 30)
  server.kill()
  assert(ok, out)
  return out
end

-- Two users: user1 waits for user2's hi (and, from step 4, for user2 to
-- leave); user2 comes once user1 is greeted, says hi and leaves.
local function two_users(until_a)
  return ([[
    a=$(mktemp); b=$(mktemp)
    ( w $a '%s' ) | nc -N 127.0.0.1 PORT > $a &
    w $a welcome
    ( w $b welcome; printf 'hi\n' ) | nc -N 127.0.0.1 PORT > $b
    wait
    cat $a; echo '|'; cat $b; rm -f $a $b]]):format(until_a)
end

describe("docs/tutorial.md", function()
  it("shows every step's program as its file is", function()
    local blocks = shown()
    for _, file in ipairs(STEPS) do
      assert(blocks[file], TUTORIAL .. " does not show " .. file)
      assert.equal(N.slurp(file), blocks[file], file)
    end
    -- And every file of examples/tutorial/ is a step.
    local ls = io.popen("ls examples/tutorial")
    for name in ls:lines() do
      assert(blocks["examples/tutorial/" .. name], "examples/tutorial/" .. name .. " is not in the tutorial")
    end
    ls:close()
  end)

  it("step 1 echoes what it reads", function()
    assert.equal("hello\nworld\n",
      with_server(STEPS[1], [[printf 'hello\nworld\n' | nc -N 127.0.0.1 PORT]]))
  end)

  it("step 2 greets the user by name and frames lines", function()
    assert.equal("welcome, you are user1\nuser1: hello\nuser1: world\n",
      with_server(STEPS[2], [[printf 'hello\r\nworld\n' | nc -N 127.0.0.1 PORT]]))
  end)

  it("step 3 shows each line to the others", function()
    assert.equal("welcome, you are user1\nuser2: hi\n|\nwelcome, you are user2\n",
      with_server(STEPS[3], two_users("user2: hi")))
  end)

  for i = 4, 5 do
    it(("step %d announces joins and leaves, and greets with who is here"):format(i), function()
      assert.equal(table.concat({
        "welcome, you are user1; here: nobody else",
        "user2 joined",
        "user2: hi",
        "user2 left",
        "|",
        "welcome, you are user2; here: user1",
        "" }, "\n"), with_server(STEPS[i], two_users("user2 left")))
    end)
  end
end)

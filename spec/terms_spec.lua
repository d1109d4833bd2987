local market = require "market"

describe("terms", function()
  it("records have named and positional fields and print readably", function()
    local line = market.record("chat-line", "who", "text")
    local r = line("bob", "hi")
    assert.equal("bob", r.who)
    assert.equal("hi", r[2])
    assert.equal('chat-line("bob", "hi")', tostring(r))
    assert.equal(2, #r)
    assert.is_true(line:is(r))
  end)
end)

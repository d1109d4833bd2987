-- chaos_spec.lua: a storm of connections, crashes, kills, nested VMs with
-- relays and wildcard messages (spec/support/chaos.lua), a few seconds
-- with fixed seeds, in the interpreter with its drivers.  What must hold:
-- the program ends as it says, every process failure is one the storm
-- caused on purpose, and a last client is still echoed.  Under the ASan
-- suite it is a search for use-after-free between the drivers and the VMs.
package.path = "spec/support/?.lua;" .. package.path
local H = require "helpers"

describe("a storm of connections, failures, kills and nested VMs", function()
  for _, seed in ipairs { 1, 7 } do
    it("leaves the drivers serving (seed " .. seed .. ")", function()
      local status, out, err = H.sh(("timeout 120 %s spec/support/chaos.lua %d 2000 </dev/null")
                                    :format(H.quote(H.market_bin()), seed))
      assert.equal(0, status, err)
      assert.matches('^rounds %d+, last echo "ping"\n$', out)
      local failures = 0
      for line in err:gmatch("[^\n]*failed:[^\n]*") do
        failures = failures + 1
        assert.truthy(line:find("client chaos", 1, true) or line:find("server chaos", 1, true), line)
      end
      assert.is_true(failures > 0, "the storm caused no failure: it tested nothing")
    end)
  end
end)

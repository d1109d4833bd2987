-- chaos_spec.lua: a storm of connections, crashes, kills, nested VMs with
-- relays and wildcard messages (spec/support/chaos.lua), a few seconds
-- with fixed seeds, in the interpreter with its drivers.  What must hold:
-- the program ends as it says, every process failure is one the storm
-- caused on purpose, a last client is still echoed, and what the storm
-- made is gone after it (no descriptor, no process left over).  Under the ASan
-- suite it is a search for use-after-free between the drivers and the VMs.
package.path = "spec/support/?.lua;" .. package.path
local H = require "helpers"

describe("a storm of connections, failures, kills and nested VMs", function()
  for _, seed in ipairs { 1, 7 } do
    it("leaves the drivers serving (seed " .. seed .. ")", function()
      local status, out, err = H.sh(("timeout 120 %s spec/support/chaos.lua %d 2000 </dev/null")
                                    :format(H.quote(H.market_bin()), seed))
      assert.equal(0, status, err)
      local more_fds, more_procs = out:match('^rounds %d+, last echo "ping", (%-?%d+) more descriptors, ' ..
                                             '(%-?%d+) more processes\n$')
      assert.truthy(more_fds, out)
      -- The last client's connection (its two ends, their managers, the
      -- session), with room for a straggler on a slow machine: a leak of
      -- the storm's hundreds of connections would be hundreds.
      assert.is_true(tonumber(more_fds) <= 10, out)
      assert.is_true(tonumber(more_procs) <= 10, out)
      local failures = 0
      for line in err:gmatch("[^\n]*failed:[^\n]*") do
        failures = failures + 1
        assert.truthy(line:find("client chaos", 1, true) or line:find("server chaos", 1, true), line)
      end
      assert.is_true(failures > 0, "the storm caused no failure: it tested nothing")
    end)
  end
end)

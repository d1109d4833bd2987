-- reference_spec.lua: docs/reference.md is complete and names nothing
-- that is not there.  It walks the public tables of the modules below and
-- the options `market --help` lists, and fails for any without a `###`
-- heading in the reference; every Lua example in it compiles; and the
-- links of the new pages (reference, tutorial, coming-from) lead to
-- headings and files that exist.
package.path = "spec/support/?.lua;" .. package.path
local H = require "helpers"

-- The modules the reference covers: the prefix its headings use (as a
-- program names the module: `local tcp = require "market.tcp"`) and the
-- table.  A new public module or sub-table gets a line here.
local MODULES = {
  { prefix = "market", get = function() return require "market" end },
  { prefix = "market.ground", get = function() return require("market").ground end },
  { prefix = "market.log", get = function() return require("market").log end },
  { prefix = "timer", get = function() return require "market.timer" end },
  { prefix = "tcp", get = function() return require "market.tcp" end },
  { prefix = "udp", get = function() return require "market.udp" end },
  { prefix = "relay", get = function() return require "market.event_relay" end },
  { prefix = "stdio", get = function() return require "market.stdio" end },
  { prefix = "supervisor", get = function() return require "market.supervisor" end },
  { prefix = "inspect", get = function() return require "market.inspect" end },
  { prefix = "cluster", get = function() return require "market.cluster" end },
  { prefix = "http", get = function() return require "market.http" end },
}

-- Public fields that are nil until a program sets them (so pairs() never
-- sees them), documented all the same.
local NIL_BY_DEFAULT = { ["tcp.LOW_WATER"] = true, ["tcp.HARD_LIMIT"] = true,
                         ["stdio.LOW_WATER"] = true, ["stdio.HARD_LIMIT"] = true,
                         ["cluster.node"] = true }

local REFERENCE = "docs/reference.md"

local function reference() return assert(H.slurp(REFERENCE), "no " .. REFERENCE) end

-- Every word of every `###` heading: "### market.yield()" names
-- market.yield, "### --help, -h" names --help and -h.
local function headings()
  local names = {}
  for line in reference():gmatch("[^\n]+") do
    local h = line:match("^###%s+(.+)$")
    if h then
      for word in h:gmatch("[%w%._%-]+") do names[word] = true end
    end
  end
  return names
end

local function sorted_keys(t)
  local ks = {}
  for k in pairs(t) do ks[#ks + 1] = k end
  table.sort(ks)
  return ks
end

-- The module a dotted name belongs to (the longest prefix) and the rest.
local function split(name)
  local best
  for _, m in ipairs(MODULES) do
    if name:sub(1, #m.prefix + 1) == m.prefix .. "." and (not best or #m.prefix > #best.prefix) then
      best = m
    end
  end
  if best then return best, name:sub(#best.prefix + 2) end
end

describe("docs/reference.md", function()
  it("has a heading for every public name of every module", function()
    local names, missing = headings(), {}
    for _, m in ipairs(MODULES) do
      local t = m.get()
      assert.is_table(t, m.prefix)
      for _, k in ipairs(sorted_keys(t)) do
        if type(k) == "string" and not names[m.prefix .. "." .. k] then
          missing[#missing + 1] = m.prefix .. "." .. k
        end
      end
    end
    for name in pairs(NIL_BY_DEFAULT) do
      if not names[name] then missing[#missing + 1] = name end
    end
    assert.same({}, missing)
  end)

  it("names nothing the modules do not have", function()
    local stale = {}
    for _, name in ipairs(sorted_keys(headings())) do
      local m, key = split(name)
      -- Sub-tables have their own entry (market.ground.readable is
      -- market.ground's readable, not market's "ground.readable").
      if m and not key:find(".", 1, true) and m.get()[key] == nil and not NIL_BY_DEFAULT[name] then
        stale[#stale + 1] = name
      end
    end
    assert.same({}, stale)
  end)

  it("has a heading for every option `market --help` lists", function()
    local f = assert(io.popen(H.quote(H.market_bin()) .. " --help"))
    local out = f:read("a")
    f:close()
    local names, options, missing = headings(), {}, {}
    for line in out:gmatch("[^\n]+") do
      -- "  --drain MS     on SIGINT ...": the options before the text
      local opts = line:match("^  (%-.-)%s%s") or line:match("^  (%-.*)$")
      if opts then
        for o in opts:gmatch("%-%-?%a[%w%-]*") do options[#options + 1] = o end
      end
    end
    assert.is_true(#options >= 10, "too few options found in market --help:\n" .. out)
    for _, o in ipairs(options) do
      if not names[o] then missing[#missing + 1] = o end
    end
    assert.same({}, missing)
  end)

  it("has Lua examples that compile", function()
    local n = 0
    for block in reference():gmatch("```lua\n(.-)```") do
      n = n + 1
      local f, err = load(block, "=reference example " .. n)
      assert(f, err)
    end
    assert.is_true(n >= 10, "only " .. n .. " Lua examples found")
  end)
end)

-- GitHub's anchor for a heading: lower case, punctuation but - and _
-- dropped, spaces as -; the n-th repeat of one gets -n.
local function anchors(path)
  local text, seen, set = assert(H.slurp(path), "no " .. path), {}, {}
  for h in text:gmatch("\n#+ ([^\n]+)") do
    local a = h:lower():gsub("[^%w%- _]", ""):gsub(" ", "-")
    if seen[a] then seen[a] = seen[a] + 1; a = a .. "-" .. seen[a] else seen[a] = 0 end
    set[a] = true
  end
  return set
end

describe("the new pages' links", function()
  for _, page in ipairs { "docs/reference.md", "docs/tutorial.md", "docs/coming-from.md" } do
    it(page .. " points only at headings and files that exist", function()
      local bad = {}
      for target in assert(H.slurp(page)):gmatch("%]%(([^)%s]+)%)") do
        if not target:match("^%a+://") then
          local file, anchor = target:match("^([^#]*)#?(.*)$")
          local path = file == "" and page or "docs/" .. file
          if not H.slurp(path) then
            bad[#bad + 1] = target .. " (no file)"
          elseif anchor ~= "" and not anchors(path)[anchor] then
            bad[#bad + 1] = target
          end
        end
      end
      assert.same({}, bad)
    end)
  end
end)

-- market.to_cbor / market.from_cbor: terms on the wire (docs/cluster.md,
-- "Terms on the wire"; the C side is spec/c/test_cbor.c).
local market = require "market"
local R = market.repr

local function back(v) return market.from_cbor(market.to_cbor(v)) end

-- The version wrapper that starts every encoding: tag 0x6d6b0000, [1, ...]
local WRAP = "\xda\x6d\x6b\x00\x00\x82\x01"

describe("market.to_cbor and market.from_cbor", function()
  it("round-trip every kind of term as the same Lua value", function()
    assert.is_nil(back(nil))
    assert.is_false(back(false))
    assert.is_true(back(true))
    for _, v in ipairs({ 0, 1, -1, 23, 24, -25, 1000000, math.maxinteger, math.mininteger,
                         1.5, -0.25, 1e300, math.huge, -math.huge, "", "hi",
                         "\0\255\xc3(binary" }) do
      local got = back(v)
      assert.equal(math.type(v), math.type(got))
      assert.equal(v, got)
    end
    local nan = back(0 / 0)
    assert.is_true(nan ~= nan)
    assert.equal(market._, back(market._))
    assert.equal(market.EOF, back(market.EOF))
    assert.same({ 1, { "a", {} }, true }, back({ 1, { "a", {} }, true }))
    local line = market.record("chat-line", "who", "text")
    local r = back(line("bob", { 1, market._ }))
    assert.is_true(line:is(r))
    assert.equal("bob", r.who)
    assert.equal('chat-line("bob", [1, _])', R(r))
  end)

  it("write strings as byte strings and records under their tag, as documented", function()
    assert.equal(WRAP .. "\x42hi", market.to_cbor("hi"))
    assert.equal(WRAP .. "\xf6", market.to_cbor(nil))
    assert.equal(WRAP .. "\xda\x6d\x6b\x00\x01\x82\x41f\x01",
                 market.to_cbor(market.record("f", "x")(1)))
    assert.equal(WRAP .. "\xda\x6d\x6b\x00\x02\xf6", market.to_cbor(market._))
  end)

  it("read text strings and text labels as their bytes", function()
    assert.equal("abc", market.from_cbor(WRAP .. "\x63abc"))
    assert.equal('f("xyz")', R(market.from_cbor(WRAP .. "\xda\x6d\x6b\x00\x01\x82\x61f\x63xyz")))
  end)

  it("answer nil and the reason for bytes that are no term", function()
    local cases = {
      [""] = "truncated CBOR",
      ["\xf6"] = "not a market term (no version tag)",
      [WRAP .. "\xf6\xf6"] = "trailing bytes after the term",
      [WRAP] = "truncated CBOR",
      [WRAP:sub(1, 6)] = "truncated CBOR",                -- the wrapper cut short
      [WRAP:sub(1, 6) .. "\x02"] = "an unsupported version",
      [WRAP .. "\xa0"] = "a map (no term is one)",
      [WRAP .. "\xd8\x20\x60"] = "an unknown tag",
      ["\xda\x6d\x6b\x00\x00\x82\x02\xf6"] = "an unsupported version",
      [WRAP .. "\x9b\0\0\0\1\0\0\0\0\0"] = "truncated CBOR",
      -- [1, nil], [nil, 1], and f([nil]): Lua would read a hole
      [WRAP .. "\x82\x01\xf6"] = "a null inside a sequence (Lua would read it as a hole)",
      [WRAP .. "\x82\xf6\x01"] = "a null inside a sequence (Lua would read it as a hole)",
      [WRAP .. "\xda\x6d\x6b\0\x01\x82\x61f\x81\xf7"] =
        "a null inside a sequence (Lua would read it as a hole)",
    }
    for bytes, why in pairs(cases) do
      local v, err = market.from_cbor(bytes)
      assert.is_nil(v)
      assert.equal("market.from_cbor: " .. why, err)
    end
  end)

  -- The decoder reads the heads a term is written with itself and leaves
  -- the others to libcbor (runtime/cbor.c); together they read every head
  -- as libcbor alone did.  spec/fuzz/fuzz_cbor.c compares the two on
  -- whatever the fuzzer finds; these are the edges, each form of a head.
  it("read every form of a head, shortest or not, as libcbor does", function()
    local same = {
      ["\x05"] = 5, ["\x18\x05"] = 5, ["\x19\0\x05"] = 5, ["\x1a\0\0\0\x05"] = 5,
      ["\x1b\0\0\0\0\0\0\0\x05"] = 5, ["\x1b\x7f\xff\xff\xff\xff\xff\xff\xff"] = math.maxinteger,
      ["\x24"] = -5, ["\x38\x04"] = -5, ["\x39\0\x04"] = -5, ["\x3a\0\0\0\x04"] = -5,
      ["\x3b\x7f\xff\xff\xff\xff\xff\xff\xff"] = math.mininteger,
      ["\x42hi"] = "hi", ["\x58\x02hi"] = "hi", ["\x59\0\x02hi"] = "hi",
      ["\x5a\0\0\0\x02hi"] = "hi", ["\x5b\0\0\0\0\0\0\0\x02hi"] = "hi",
      ["\x62hi"] = "hi", ["\x78\x02hi"] = "hi", ["\x79\0\x02hi"] = "hi",
      ["\x7a\0\0\0\x02hi"] = "hi", ["\x7b\0\0\0\0\0\0\0\x02hi"] = "hi",
      ["\x62\xff\xfe"] = "\xff\xfe",                 -- text, not UTF-8: its bytes
      ["\xf9\x3e\x00"] = 1.5, ["\xfa\x3f\xc0\0\0"] = 1.5, ["\xfb\x3f\xf8\0\0\0\0\0\0"] = 1.5,
      ["\xf4"] = false, ["\xf5"] = true,
    }
    for bytes, v in pairs(same) do
      local got, why = market.from_cbor(WRAP .. bytes)
      assert.is_nil(why)
      assert.equal(math.type(v), math.type(got))
      assert.equal(v, got)
    end
    for _, bytes in ipairs({ "\xf6", "\xf7" }) do   -- null and undefined
      assert.same({ nil, nil }, { market.from_cbor(WRAP .. bytes) })
    end
    assert.same({ 1, { "a" } }, market.from_cbor(WRAP .. "\x98\x02\x01\x99\0\x01\x41a"))
    assert.same({}, market.from_cbor(WRAP .. "\x9b\0\0\0\0\0\0\0\0"))
    assert.equal(market._, market.from_cbor(WRAP .. "\xdb\0\0\0\0\x6d\x6b\0\x02\xf6"))
    assert.equal("f(1)", R(market.from_cbor(WRAP .. "\xda\x6d\x6b\0\x01\x82\x61f\x01")))
    -- a whole term past the small stack the decoder starts with
    local t = {}
    for _ = 1, 12 do t = { t, "x" } end
    assert.same(t, back(t))
  end)

  it("refuse every form of head a term is not written with, as libcbor does", function()
    local big = "\xff\xff\xff\xff\xff\xff\xff\xff"
    local cases = {
      -- truncated: in the argument, in a string's bytes, in a float
      ["\x18"] = "truncated CBOR", ["\x19\0"] = "truncated CBOR", ["\x3b\0\0"] = "truncated CBOR",
      ["\x43hi"] = "truncated CBOR", ["\x59\0"] = "truncated CBOR", ["\x7a\0\0\0\x03hi"] = "truncated CBOR",
      ["\x5b" .. big .. "hi"] = "truncated CBOR", ["\x7b" .. big] = "truncated CBOR",
      ["\xd8"] = "truncated CBOR", ["\xfa\0\0"] = "truncated CBOR", ["\xfb\0"] = "truncated CBOR",
      ["\xf9\0"] = "truncated CBOR", ["\x82\x01"] = "truncated CBOR", ["\x9a\0\0\x01\0\x01"] = "truncated CBOR",
      -- beyond 64 bits signed
      ["\x1b\x80\0\0\0\0\0\0\0"] = "an integer beyond 64 bits signed",
      ["\x3b\x80\0\0\0\0\0\0\0"] = "an integer beyond 64 bits signed",
      -- indefinite lengths, and the break alone
      ["\x5f\x41a\xff"] = "an indefinite length (terms are written with definite ones)",
      ["\x7f\x61a\xff"] = "an indefinite length (terms are written with definite ones)",
      ["\x9f\xff"] = "an indefinite length (terms are written with definite ones)",
      ["\xbf\xff"] = "an indefinite length (terms are written with definite ones)",
      ["\xff"] = "malformed CBOR",
      -- reserved additional information, unassigned simple values
      ["\x1c"] = "malformed CBOR", ["\x3d"] = "malformed CBOR", ["\x5e"] = "malformed CBOR",
      ["\x7c"] = "malformed CBOR", ["\x9e"] = "malformed CBOR", ["\xbc"] = "malformed CBOR",
      ["\xdf"] = "malformed CBOR", ["\xfc"] = "malformed CBOR",
      ["\xe0"] = "malformed CBOR", ["\xf3"] = "malformed CBOR", ["\xf8\x20"] = "malformed CBOR",
      -- tags: libcbor takes the one-byte tags 6 to 20 for malformed
      ["\xc0\xf6"] = "an unknown tag", ["\xd5\xf6"] = "an unknown tag",
      ["\xc6\xf6"] = "malformed CBOR", ["\xd2\xf6"] = "malformed CBOR", ["\xd4\xf6"] = "malformed CBOR",
      ["\xdb" .. big .. "\xf6"] = "an unknown tag",
      ["\xda\x6d\x6b\0\x02\xf5"] = "a wildcard or EOF tag around something else than null",
      ["\xda\x6d\x6b\0\x01\x80"] = "a record tag around something else than [label, field...]",
      ["\xda\x6d\x6b\0\x01\x81\x01"] = "a record whose label is not a string",
      ["\xb8\x01\x01\x01"] = "a map (no term is one)",
    }
    for bytes, why in pairs(cases) do
      assert.same({ nil, "market.from_cbor: " .. why }, { market.from_cbor(WRAP .. bytes) })
    end
    -- the wrapper itself, in the forms libcbor reads
    assert.same({ nil, "market.from_cbor: a version that is not an unsigned integer" },
                { market.from_cbor("\xda\x6d\x6b\x00\x00\x82\x20\xf6") })
    assert.same({ 5 }, { market.from_cbor("\xdb\0\0\0\0\x6d\x6b\x00\x00\x98\x02\x18\x01\x05") })
  end)

  it("hold decoded terms to the depth and size limits in force", function()
    local t = {}
    for _ = 1, 20 do t = { t } end               -- 21 deep
    local s = market.to_cbor(t)
    local depth, size = market.term_depth_limit(), market.term_size_limit()
    finally(function()
      market.term_depth_limit(depth)
      market.term_size_limit(size)
    end)
    market.term_depth_limit(20)
    assert.same({ nil, "market.from_cbor: a term nested deeper than the depth limit" },
                { market.from_cbor(s) })
    market.term_depth_limit(21)
    assert.same(t, market.from_cbor(s))
    market.term_size_limit(20)
    assert.same({ nil, "market.from_cbor: a term of more nodes than the size limit" },
                { market.from_cbor(s) })
  end)

  it("are errors when misused", function()
    assert.has_error(function() market.to_cbor(print) end,
                     "market.to_cbor: a function is not a term")
    assert.has_error(function() market.to_cbor() end)
    assert.has_error(function() market.from_cbor(12) end)
    assert.has_error(function() market.from_cbor() end)
    local c = {}
    c[1] = c
    assert.has_error(function() market.to_cbor(c) end)
  end)

  it("work inside a process, where a bad input fails nothing", function()
    local got = {}
    local ok, err = market.ground_vm(function()
      got.v = market.from_cbor(market.to_cbor({ "x", market.EOF }))
      got.bad, got.why = market.from_cbor("\xff")
    end)
    assert.is_true(ok, err)
    assert.same({ "x", market.EOF }, got.v)
    assert.is_nil(got.bad)
    assert.equal("market.from_cbor: not a market term (no version tag)", got.why)
  end)
end)

-- A program in another language reads what market writes and writes what
-- market reads: Python's cbor2 (Debian's python3-cbor2).
describe("terms on the wire, read by Python's cbor2", function()
  local py = "/usr/bin/python3"
  local have = os.execute(py .. " -c 'import cbor2' >/dev/null 2>&1")
  if not have then
    pending("python3-cbor2 is not installed (apt-get install python3-cbor2)")
    return
  end

  local function run(script, input)
    local dir = os.tmpname()
    os.remove(dir)
    assert(os.execute("mkdir " .. dir))
    local f = assert(io.open(dir .. "/in", "wb"))
    f:write(input)
    f:close()
    f = assert(io.open(dir .. "/t.py", "w"))
    f:write(script)
    f:close()
    local p = io.popen("timeout 20 " .. py .. " " .. dir .. "/t.py < " .. dir .. "/in 2>&1")
    local out = p:read("a")
    p:close()
    os.execute("rm -rf " .. dir)
    return out
  end

  local show = [[
import sys, cbor2, math
def show(v):
    if isinstance(v, cbor2.CBORTag):
        if v.tag == 0x6d6b0001:
            return v.value[0].decode() + "(" + ", ".join(show(x) for x in v.value[1:]) + ")"
        if v.tag == 0x6d6b0002 and v.value is None: return "_"
        if v.tag == 0x6d6b0003 and v.value is None: return "#eof"
        return "tag?"
    if v is None: return "nil"
    if v is True: return "true"
    if v is False: return "false"
    if isinstance(v, bytes): return "b" + repr(v)[1:]
    if isinstance(v, float):
        return "nan" if math.isnan(v) else repr(v)
    if isinstance(v, list): return "[" + ", ".join(show(x) for x in v) + "]"
    return repr(v)
t = cbor2.loads(sys.stdin.buffer.read())
assert isinstance(t, cbor2.CBORTag) and t.tag == 0x6d6b0000 and t.value[0] == 1
print(show(t.value[1]))
]]

  it("Python reads a term market wrote", function()
    local line = market.record("chat-line", "who", "text")
    local term = { line("bob", "h\0i"), -7, 2.5, 0 / 0, true, "after", market._, market.EOF,
                   { math.mininteger } }
    assert.equal(
      "[chat-line(b'bob', b'h\\x00i'), -7, 2.5, nan, true, b'after', _, #eof, [-9223372036854775808]]\n",
      run(show, market.to_cbor(term)))
  end)

  it("market reads a term Python wrote, text strings and all", function()
    local out = run([[
import sys, cbor2
from cbor2 import CBORTag
rec = lambda label, *fields: CBORTag(0x6d6b0001, [label, *fields])
term = rec("all", rec("chat-line", "bob", b"hi\x00"), -(2**63), 1.0, 1.5, None, False,
           CBORTag(0x6d6b0002, None), CBORTag(0x6d6b0003, None), [], "caf\u00e9")
sys.stdout.buffer.write(cbor2.dumps(CBORTag(0x6d6b0000, [1, term])))
]], "")
    local t, why = market.from_cbor(out)
    assert.is_nil(why)
    assert.equal('all(chat-line("bob", "hi\\x00"), -9223372036854775808, 1, 1.5, nil, false, _, #eof, [], "caf\\xc3\\xa9")',
                 R(t))
  end)
end)

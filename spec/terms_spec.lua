local market = require "market"

describe("terms", function()
  it("records have named and positional fields and print readably", function()
    local line = market.record("chat-line", "who", "text")
    local r = line("bob", "hi")
    assert.equal("bob", r.who)
    assert.equal("hi", r[2])
    assert.equal("hi", r[2.0])           -- as a table's t[2.0] is t[2]
    assert.is_nil(r[3.0])
    assert.has_error(function() return r["2"] end, "record chat-line has no field '2'")
    assert.equal('chat-line("bob", "hi")', tostring(r))
    assert.equal(2, #r)
    assert.is_true(line:is(r))
  end)
end)

-- DESIGN §2: terms, records, sequences, the wildcard, unification.
local _ = market._
local R = market.repr

local function U(a, b)
  local u, ok = market.unify(a, b)
  local v, ok2 = market.unify(b, a)
  assert.equal(ok, ok2, "unification must be symmetric")
  if ok then assert.equal(R(u), R(v), "unification must be symmetric") end
  return ok and R(u) or "no"
end

describe("unification", function()
  it("atoms unify with equal atoms only", function()
    assert.equal("1", U(1, 1))
    assert.equal("no", U(1, 2))
    assert.equal('"a"', U("a", "a"))
    assert.equal("no", U("a", "b"))
    assert.equal("no", U("1", 1))
    assert.equal("true", U(true, true))
    assert.equal("no", U(true, false))
    assert.equal("no", U(false, nil))
    assert.equal("nil", U(nil, nil))
  end)

  it("the wildcard unifies with anything, on either side, at any depth", function()
    assert.equal("1", U(_, 1))
    assert.equal("nil", U(_, nil))
    assert.equal("_", U(_, _))
    assert.equal('["a", 1]', U({ "a", _ }, { _, 1 }))
    assert.equal('[[1, 2], [3, 4]]', U({ { 1, _ }, { _, 4 } }, { { _, 2 }, { 3, _ } }))
    assert.equal("no", U({ "a", _ }, { "b", _ }))
    local r = market.record("r-ab", "a", "b")
    assert.equal('r-ab(1, ["x", 2])', U(r(1, { _, 2 }), r(_, { "x", _ })))
    assert.equal('r-ab(1, ["x", 2])', U(_, r(1, { "x", 2 })))
  end)

  it("the result is the most general unifier: wildcards remain where both sides have one",
     function()
    assert.equal('["a", _, 3]', U({ "a", _, _ }, { _, _, 3 }))
  end)

  it("unify says whether it succeeded: nil is a term and a possible unifier", function()
    assert.same({ nil, true }, { market.unify(nil, _) })
    assert.same({ nil, false }, { market.unify(nil, false) })
  end)

  it("sequences unify element-wise and only with sequences of the same length", function()
    assert.equal("[1, 2]", U({ 1, 2 }, { 1, 2 }))
    assert.equal("no", U({ 1, 2 }, { 1, 2, 3 }))
    assert.equal("no", U({ 1 }, 1))
    assert.equal("[]", U({}, {}))
    assert.equal("no", U({}, { _ }))
  end)

  it("records unify with records of the same label and arity, field by field", function()
    local a2, a1, b2 = market.record("a", "x", "y"), market.record("a", "x"),
                       market.record("b", "x", "y")
    assert.equal("a(1, 2)", U(a2(1, _), a2(_, 2)))
    assert.equal("no", U(a2(1, 2), a1(1)))
    assert.equal("no", U(a2(1, 2), b2(1, 2)))
    assert.equal("no", U(a2(1, 2), { 1, 2 }))
    assert.equal("no", U(a2(1, 2), a2(1, 3)))
  end)

  it("integral floats are integers: 3.0 and 3 are the same term", function()
    assert.equal("3", U(3.0, 3))
    local u = market.unify(3.0, _)
    assert.equal("integer", math.type(u))
    assert.equal("3.5", U(3.5, 3.5))
    assert.equal("no", U(3.5, 3))
    assert.equal("0", U(-0.0, 0))
    local r = market.record("n", "v")
    assert.is_true(r(3.0) == r(3))
    assert.equal("n(3)", R(r(3.0)))
    assert.equal("integer", math.type(r(3.0).v))
    -- Out of the integer range a float stays a float.
    assert.equal("float", math.type(market.unify(2.0^63, _)))
    assert.equal("no", U(1/0, 1))
    assert.equal(R(1/0), U(1/0, 1/0))
    -- NaN is a term equal to itself (terms compare by value, not IEEE ==).
    assert.equal(R(0/0), U(0/0, 0/0))
    assert.equal("no", U(0/0, 1))
  end)

  it("strings are byte strings", function()
    assert.equal("no", U("a\0b", "a\0c"))
    assert.equal("a\0b\255", (market.unify("a\0b\255", _)))
  end)

  it("EOF is a distinct term", function()
    assert.equal("#eof", U(market.EOF, market.EOF))
    assert.equal("#eof", U(market.EOF, _))
    assert.equal("no", U(market.EOF, "eof"))
    assert.equal("no", U(market.EOF, nil))
    assert.equal("no", U(market.EOF, {}))
    assert.is_true(market.unify(market.EOF, _) == market.EOF)
  end)
end)

describe("terms as Lua values", function()
  it("sequences come back as fresh Lua arrays", function()
    local t = { 1, { "a", true } }
    local u = market.unify(t, _)
    assert.same(t, u)
    assert.is_false(rawequal(t, u))
  end)

  it("records compare structurally, print readably, and are immutable", function()
    local p = market.record("point", "x", "y")
    local a, b = p(1, { 2, 3 }), p(1, { 2, 3 })
    assert.is_false(rawequal(a, b))
    assert.is_true(a == b)
    assert.is_false(a == p(1, { 2, 4 }))
    assert.equal('point(1, [2, 3])', tostring(a))
    assert.same({ 2, 3 }, a.y)
    assert.equal(1, a[1])
    assert.is_nil(a[3])
    assert.equal(2, #a)
    assert.has_error(function() a.x = 5 end)
    assert.equal(1, a.x)
  end)

  it("term boxes keep their metatable to themselves", function()
    local a = market.record("point", "x", "y")(1, 2)
    assert.equal("market.term", getmetatable(a))
    assert.equal("market.term", getmetatable(market._))
    assert.has_error(function() setmetatable(a, {}) end)   -- userdata: never
    assert.equal(2, a.y)
  end)

  it("a userdata given the term metatable through the debug library is no term", function()
    -- A record constructor was a userdata of a box's size: with the box
    -- metatable, it passed for one and its record type was read as a term.
    local ctor = market.record("disguised", "a")
    local rtmt = debug.getmetatable(ctor)
    debug.setmetatable(ctor, debug.getmetatable(market._))
    local ok_term = market.is_term(ctor)
    local ok_str, str = pcall(tostring, ctor)
    local ok_send = pcall(market.send, ctor)
    debug.setmetatable(ctor, rtmt)
    assert.is_false(ok_term)
    assert.is_false(ok_str)
    assert.matches("market.term expected", str)
    assert.is_false(ok_send)
    assert.equal("disguised(1)", tostring(ctor(1)))
  end)

  it("a record constructor knows its label, arity and fields, and recognises its records",
     function()
    local line = market.record("chat-line", "who", "text")
    assert.equal("chat-line", line.label)
    assert.equal(2, line.arity)
    assert.same({ "who", "text" }, line.fields)
    assert.is_true(line:is(line("a", "b")))
    assert.is_false(line:is(market.record("other", "who", "text")("a", "b")))
    assert.is_false(line:is({ "a", "b" }))
    assert.is_false(line:is("chat-line"))
  end)

  it("records with the same label and arity are the same type", function()
    local r1 = market.record("same", "a")
    local r2 = market.record("same", "a")
    assert.is_true(r1(1) == r2(1))
    assert.is_true(r1:is(r2(1)))
    assert.is_false(market.record("same", "a", "b")(1, 2) == r1(1))
    assert.equal(1, r2(1).a)
  end)

  it("a second declaration with other field names is an error, never a rename", function()
    local pt = market.record("rename-pt", "x", "y")
    local ok, err = pcall(market.record, "rename-pt", "a", "b")
    assert.is_false(ok)
    assert.equal("market.record: rename-pt/2 is declared with the fields (x, y) already; "
                 .. "it cannot be declared again with (a, b) (one label and arity is one type: "
                 .. "use the same names, or another label)", err)
    -- The first declaration's fields are untouched.
    assert.equal(1, pt(1, 2).x)
    assert.same({ "x", "y" }, pt.fields)
    assert.has_error(function() return pt(1, 2).a end, "record rename-pt has no field 'a'")
    -- The same names again, another arity or another label: all fine.
    assert.is_true(market.record("rename-pt", "x", "y")(1, 2) == pt(1, 2))
    assert.same({ "a" }, market.record("rename-pt", "a").fields)
    assert.same({ "a", "b" }, market.record("rename-pt2", "a", "b").fields)
  end)

  it("the wildcard and EOF are unique values", function()
    assert.is_true(rawequal(market._, market.unify(market._, market._)))
    assert.equal("_", tostring(market._))
    assert.equal("#eof", tostring(market.EOF))
    assert.is_false(market._ == market.EOF)
  end)

  it("is_term tells what can be a topic or a message", function()
    for _, v in ipairs { 1, 1.5, "s", true, false, {}, { 1, { 2 } }, market._, market.EOF,
                         market.record("r-a", "a")(1) } do
      assert.is_true(market.is_term(v), tostring(v))
    end
    assert.is_true(market.is_term(nil))
    for _, v in ipairs { print, { a = 1 }, io.stdout, coroutine.create(print),
                         market.record("r-a", "a") } do
      assert.is_false(market.is_term(v), tostring(v))
    end
  end)

  it("repr writes every kind of term", function()
    assert.equal('[true, false, 1, 1.5, "s\\n", _, #eof, r-a(["x"])]',
                 R({ true, false, 1, 1.5, "s\n", _, market.EOF, market.record("r-a", "a")({ "x" }) }))
    assert.equal("nil", R(nil))
  end)
end)

-- Byte strings cross between Lua and terms by copy; lterm.c keeps the
-- string terms it last converted, so that a payload read from a record and
-- put into a new one (an echo) is not copied again.
describe("byte strings between Lua and terms", function()
  local blob = market.record("blob", "data")

  it("a record made from a string read out of a term shares its bytes", function()
    local big = string.rep("0123456789abcdef", 2048)              -- 32 KiB
    local data = market.unify(blob(big), _).data                 -- a fresh Lua copy
    collectgarbage()
    collectgarbage()
    local before = market.memory()
    local keep = {}
    for i = 1, 100 do keep[i] = blob(data) end
    local grown = market.memory() - before
    -- 100 copies would be 3.2 MiB.
    assert.is_true(grown < 256 * 1024, ("grew by %d bytes"):format(grown))
    assert.equal(big, keep[100].data)
  end)

  it("keep their own bytes whatever strings came and went before them", function()
    -- Strings of one length, made and collected in turn: a new one may
    -- take the address of one converted before.
    for round = 1, 50 do
      local s = ("%08d"):format(round):rep(4)
      assert.equal(s, blob(s).data)
      assert.equal(s, market.unify(s, _))
      collectgarbage()
    end
    local seq = {}
    for i = 1, 300 do seq[i] = ("k%05d"):format(i) end
    local back = market.unify(seq, _)
    for i = 1, 300 do assert.equal(("k%05d"):format(i), back[i]) end
  end)
end)

-- A table is converted in one pass over its keys (lua/lterm.c, totable),
-- converting the values as the keys come; what it refuses, and why, is
-- what a check of every key before any value gives.
describe("tables as sequences", function()
  local function why(v)
    local ok, err = pcall(market.repr, v)
    assert.is_false(ok)
    return (err:gsub("^.-repr: ", ""))
  end

  it("are read in order whatever part of the table holds their keys", function()
    local t = {}
    for i = 40, 1, -1 do t[i] = i * 10 end        -- integer keys in the hash part
    local want = {}
    for i = 1, 40 do want[i] = i * 10 end
    assert.same(want, market.unify(t, _))
    assert.equal("[1, [2, 3], \"x\"]", market.repr({ 1, { 2, 3 }, "x" }))
    assert.equal("[]", market.repr({}))
  end)

  it("give the keys' fault before any item's", function()
    assert.equal("a table with non-sequence keys is not a term (sequences are arrays 1..n)",
                 why({ print, x = 1 }))
    assert.equal("a table with non-sequence keys is not a term (sequences are arrays 1..n)",
                 why({ { print }, [1.5] = 1 }))
    local holes = { print, 2, 3 }
    holes[2] = nil
    assert.equal("a table with holes is not a term", why(holes))
    assert.equal("a table with non-sequence keys is not a term (sequences are arrays 1..n)",
                 why({ 1, { 2, x = 3 } }))
  end)

  it("give the first wrong item's fault, in order, wherever the keys are", function()
    assert.equal("a function is not a term", why({ 1, print, coroutine.create(print) }))
    for _ = 1, 20 do
      local t = {}
      t[3] = io.stdout
      t[2] = print
      t[1] = coroutine.create(print)
      assert.equal("a coroutine is not a term", why(t))
      t[1] = 1
      assert.equal("a function is not a term", why(t))
    end
  end)

  it("are too large before any item is read when their length says so", function()
    local size = market.term_size_limit()
    finally(function() market.term_size_limit(size) end)
    market.term_size_limit(4)
    assert.equal("a term of more than 4 nodes", why({ print, 2, 3, 4 }))
    assert.equal("a function is not a term", why({ 1, print, 3 }))
    assert.equal("a term of more than 4 nodes", why({ 1, { 2 }, 3 }))
    assert.equal("[1, 2, 3]", market.repr({ 1, 2, 3 }))
  end)
end)

-- jsonread.lua: a strict JSON reader (RFC 8259) for the specs that check
-- what market writes as JSON (trace_spec, snapshot_spec); Debian's
-- bookworm has no Lua JSON module installed by default.
--
-- decode(s [, mark_arrays]) -> the value, or nil and where it went wrong.
-- null reads as J.null; with mark_arrays, an array carries json_array =
-- true, so that [] and {} differ.
local J = {}
J.null = setmetatable({}, { __tostring = function() return "null" end })

function J.decode(s, mark_arrays)
  local i = 1
  local value
  local function fail(why) error({ at = i, why = why }) end
  local function blank() i = s:find("[^ \t\r\n]", i) or #s + 1 end
  local function lit(word, v)
    if s:sub(i, i + #word - 1) ~= word then fail("expected " .. word) end
    i = i + #word
    return v
  end
  local function str()
    local out = {}
    i = i + 1
    while true do
      local c = s:sub(i, i)
      if c == "" then fail("unterminated string") end
      if c == '"' then i = i + 1; return table.concat(out) end
      if c:byte() < 0x20 then fail("a control byte in a string") end
      if c == "\\" then
        local e = s:sub(i + 1, i + 1)
        local simple = { ['"'] = '"', ["\\"] = "\\", ["/"] = "/", b = "\b", f = "\f",
                         n = "\n", r = "\r", t = "\t" }
        if simple[e] then out[#out + 1] = simple[e]; i = i + 2
        elseif e == "u" and s:sub(i + 2, i + 5):match("^%x%x%x%x$") then
          out[#out + 1] = utf8.char(tonumber(s:sub(i + 2, i + 5), 16))
          i = i + 6
        else fail("bad escape") end
      else
        out[#out + 1] = c
        i = i + 1
      end
    end
  end
  function value()
    blank()
    local c = s:sub(i, i)
    if c == "{" then
      local t = {}
      i = i + 1
      blank()
      if s:sub(i, i) == "}" then i = i + 1; return t end
      while true do
        blank()
        if s:sub(i, i) ~= '"' then fail("expected a key") end
        local k = str()
        blank()
        if s:sub(i, i) ~= ":" then fail("expected :") end
        i = i + 1
        t[k] = value()
        blank()
        c = s:sub(i, i)
        i = i + 1
        if c == "}" then return t end
        if c ~= "," then fail("expected , or }") end
      end
    elseif c == "[" then
      local t = mark_arrays and { json_array = true } or {}
      i = i + 1
      blank()
      if s:sub(i, i) == "]" then i = i + 1; return t end
      while true do
        t[#t + 1] = value()
        blank()
        c = s:sub(i, i)
        i = i + 1
        if c == "]" then return t end
        if c ~= "," then fail("expected , or ]") end
      end
    elseif c == '"' then return str()
    elseif c == "t" then return lit("true", true)
    elseif c == "f" then return lit("false", false)
    elseif c == "n" then return lit("null", J.null)
    else
      local num = s:match("^-?%d+%.?%d*[eE]?[-+]?%d*", i)
      if not num or num == "" or num == "-" then fail("expected a value") end
      i = i + #num
      return math.tointeger(tonumber(num)) or tonumber(num)
    end
  end
  local ok, v = pcall(function()
    local v = value()
    blank()
    if i <= #s then fail("text after the value") end
    return v
  end)
  if ok then return v end
  return nil, type(v) == "table" and (v.why .. " at byte " .. v.at) or tostring(v)
end

return J

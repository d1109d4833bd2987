-- examples/dnsmsg.lua: the DNS message code of examples/dns.lua: zone files
-- in, queries parsed, answers built (RFC 1035; EDNS(0) payload size only).
-- Pure Lua with no market in it, so that it can be tested and fuzzed on its
-- own (spec/fuzz/fuzz_dns.c).  A packet, however malformed, must come out
-- of parse as a query or nil and of answer as a reply, never as an error:
-- an error here would end the server's process.
--
--   local dns = dofile("examples/dnsmsg.lua")
--   local zone = dns.load_zone("examples/example.zone")   -- raises on a bad file
--   local q = dns.parse(packet)                           -- nil: drop the packet
--   if q then reply = dns.answer(q, zone, 512) end        -- 512 over UDP
local pack, unpack = string.pack, string.unpack

local TYPE = { A = 1, NS = 2, CNAME = 5, SOA = 6, TXT = 16, AAAA = 28 }
local T_CNAME, T_SOA, T_OPT, T_ANY = 5, 6, 41, 255
local C_IN, C_ANY = 1, 255
local NOERROR, FORMERR, NXDOMAIN, NOTIMP, REFUSED = 0, 1, 3, 4, 5

-- ---- names ------------------------------------------------------------------

-- Names are kept lower-case, absolute, with the final dot ("." is the root).
local function absolute(s, origin)
  if s == "@" then return origin end
  if s:sub(-1) ~= "." then s = s .. (origin == "." and "." or "." .. origin) end
  return s:lower()
end

local function encode_name(name)
  if name == "." then return "\0" end
  local out = {}
  for label in name:gmatch("([^.]+)%.") do
    assert(#label <= 63, "label too long: " .. label)
    out[#out + 1] = string.char(#label) .. label
  end
  out[#out + 1] = "\0"
  return table.concat(out)
end

-- Why name cannot go on the wire (nil: it can): each label 1 to 63 bytes,
-- the whole at most 255 (the final zero byte and a length byte a label).
local function bad_name(name)
  if name == "." then return nil end
  if #name > 254 then return "longer than 255 bytes on the wire" end
  for label in name:gmatch("([^.]*)%.") do
    if #label == 0 then return "an empty label" end
    if #label > 63 then return "a label longer than 63 bytes" end
  end
end

local function in_zone(name, origin)
  return name == origin or name:sub(-#origin - 1) == "." .. origin
end

-- ---- the zone file ----------------------------------------------------------

local function ipv4(s)
  local a, b, c, d = s:match("^(%d+)%.(%d+)%.(%d+)%.(%d+)$")
  a, b, c, d = tonumber(a), tonumber(b), tonumber(c), tonumber(d)
  if not (a and a < 256 and b < 256 and c < 256 and d < 256) then return nil end
  return string.char(a, b, c, d)
end

local function ipv6(s)
  local function groups(part)
    local g = {}
    if part == "" then return g end
    for x in (part .. ":"):gmatch("([^:]*):") do
      if not x:match("^%x%x?%x?%x?$") then return nil end
      g[#g + 1] = tonumber(x, 16)
    end
    return g
  end
  local head, tail = s:match("^(.-)::(.*)$")
  local g
  if head then
    local h, t = groups(head), groups(tail)
    if not h or not t or #h + #t > 7 then return nil end
    for _ = 1, 8 - #h - #t do h[#h + 1] = 0 end
    for _, v in ipairs(t) do h[#h + 1] = v end
    g = h
  else
    g = groups(s)
    if not g or #g ~= 8 then return nil end
  end
  return pack(">I2I2I2I2I2I2I2I2", table.unpack(g))
end

-- Split a line into words and quoted strings; ";" outside quotes starts a comment.
local function tokens(line)
  local out, i, n = {}, 1, #line
  while i <= n do
    local c = line:sub(i, i)
    if c == ";" then break
    elseif c:match("%s") then i = i + 1
    elseif c == '"' then
      local buf, j = {}, i + 1
      while j <= n and line:sub(j, j) ~= '"' do
        local d = line:sub(j, j)
        if d == "\\" then j = j + 1; d = line:sub(j, j) end
        buf[#buf + 1] = d
        j = j + 1
      end
      if j > n then return nil, "unterminated string" end
      out[#out + 1] = { quoted = true, text = table.concat(buf) }
      i = j + 1
    else
      local j = line:find("[%s;]", i) or n + 1
      out[#out + 1] = { text = line:sub(i, j - 1) }
      i = j
    end
  end
  return out
end

-- zone: { origin = name, soa = record, names = { [name] = { records... } } }
-- record: { name, type, ttl, rdata (wire form) }
local function load_zone(path)
  local f, err = io.open(path, "r")
  if not f then error("dns: cannot read the zone file: " .. err, 0) end
  local zone = { origin = ".", names = {} }
  local lineno = 0
  for line in f:lines() do
    lineno = lineno + 1
    local function bad(why) error(("dns: %s:%d: %s"):format(path, lineno, why), 0) end
    -- The name text stands for, refused here if it could not be put in
    -- an answer (there, pack or encode_name would raise).
    local function name_of(text, origin)
      local n = absolute(text, origin or zone.origin)
      local why = bad_name(n)
      if why then bad(("bad name %s: %s"):format(n, why)) end
      return n
    end
    -- A TTL or an SOA number: an unsigned 32-bit integer on the wire.
    local function u32(text, what)
      local v = math.tointeger(tonumber(text)) or bad(("bad %s %s"):format(what, text))
      if v < 0 or v > 0xFFFFFFFF then bad(("%s out of range (0 to 4294967295): %s"):format(what, text)) end
      return v
    end
    local tk, terr = tokens(line)
    if not tk then bad(terr) end
    if #tk > 0 then
      if tk[1].text == "$ORIGIN" then
        zone.origin = name_of(tk[2] and tk[2].text or bad("$ORIGIN needs a name"), ".")
      else
        if #tk < 4 then bad("want NAME TTL TYPE DATA") end
        local name = name_of(tk[1].text)
        local ttl = u32(tk[2].text, "TTL")
        local tname = tk[3].text:upper()
        local ty = TYPE[tname] or bad("unsupported type " .. tname)
        local rdata
        if tname == "A" then
          rdata = ipv4(tk[4].text) or bad("bad IPv4 address " .. tk[4].text)
        elseif tname == "AAAA" then
          rdata = ipv6(tk[4].text) or bad("bad IPv6 address " .. tk[4].text)
        elseif tname == "CNAME" or tname == "NS" then
          rdata = encode_name(name_of(tk[4].text))
        elseif tname == "TXT" then
          local parts = {}
          for i = 4, #tk do
            if #tk[i].text > 255 then bad("TXT string longer than 255 bytes") end
            parts[#parts + 1] = pack("s1", tk[i].text)
          end
          rdata = table.concat(parts)
          if #rdata > 65535 then bad("TXT data longer than 65535 bytes") end
        elseif tname == "SOA" then
          if #tk < 10 then bad("SOA wants MNAME RNAME SERIAL REFRESH RETRY EXPIRE MINIMUM") end
          local nums = {}
          for i = 6, 10 do nums[#nums + 1] = u32(tk[i].text, "SOA number") end
          rdata = encode_name(name_of(tk[4].text)) ..
                  encode_name(name_of(tk[5].text)) .. pack(">I4I4I4I4I4", table.unpack(nums))
        end
        local rec = { name = name, type = ty, ttl = ttl, rdata = rdata }
        local list = zone.names[name]
        if not list then list = {}; zone.names[name] = list end
        list[#list + 1] = rec
        if ty == T_SOA then zone.soa = rec end
        if ty == T_CNAME then list.cname = absolute(tk[4].text, zone.origin) end
      end
    end
  end
  f:close()
  for name, list in pairs(zone.names) do
    if list.cname and #list > 1 then
      error(("dns: %s: %s has a CNAME and other records"):format(path, name), 0)
    end
  end
  return zone
end

-- ---- queries and answers ----------------------------------------------------

-- The query in pkt, or nil (drop it).  q.err = FORMERR when the question
-- cannot be read.
local function parse(pkt)
  if #pkt < 12 then return nil end
  local id, flags, qd, an, ns, ar = unpack(">I2I2I2I2I2I2", pkt)
  if flags & 0x8000 ~= 0 then return nil end          -- a response: never answer one
  local q = { id = id, flags = flags, opcode = (flags >> 11) & 0xF }
  if qd ~= 1 then q.err = FORMERR; return q end
  local pos, labels, total = 13, {}, 0
  while true do
    local len = pkt:byte(pos)
    if not len or len > 63 then q.err = FORMERR; return q end   -- (no compression in a question)
    if len == 0 then pos = pos + 1; break end
    local label = pkt:sub(pos + 1, pos + len)
    total = total + len + 1
    if #label < len or total > 254 or label:find(".", 1, true) then q.err = FORMERR; return q end
    labels[#labels + 1] = label
    pos = pos + 1 + len
  end
  if #pkt < pos + 3 then q.err = FORMERR; return q end
  q.qtype, q.qclass = unpack(">I2I2", pkt, pos)
  q.question = pkt:sub(13, pos + 3)
  q.name = #labels == 0 and "." or (table.concat(labels, ".") .. "."):lower()
  pos = pos + 4
  -- EDNS(0): an OPT record (root name, type 41) in the additional section.
  if ar >= 1 and an == 0 and ns == 0 and pkt:byte(pos) == 0 and #pkt >= pos + 10 then
    local ty, size = unpack(">I2I2", pkt, pos + 1)
    if ty == T_OPT then q.edns = math.max(512, math.min(size, 4096)) end
  end
  return q
end

local function rr(owner, rec)
  return owner .. pack(">I2I2I4s2", rec.type, C_IN, rec.ttl, rec.rdata)
end

-- The answer to q from zone (a string) fitting in limit bytes (else
-- truncated, TC).
local function answer(q, zone, limit)
  local rcode, answers, authority = NOERROR, {}, {}
  local flags = 0x8000 | (q.flags & 0x7900)          -- QR, opcode, RD copied
  if q.err then
    rcode = q.err
  elseif q.opcode ~= 0 then
    rcode = NOTIMP
  elseif q.qclass ~= C_IN and q.qclass ~= C_ANY then
    rcode = REFUSED
  else
    flags = flags | 0x0400                             -- AA: this zone is ours
    local name, qtype, seen, nodata = q.name, q.qtype, {}, false
    local function owner(n) return n == q.name and "\xC0\x0C" or encode_name(n) end
    while true do
      local list = zone.names[name]
      if not list then
        if in_zone(name, zone.origin) or name == q.name then rcode = NXDOMAIN end
        break
      end
      if list.cname and qtype ~= T_CNAME and qtype ~= T_ANY then
        answers[#answers + 1] = rr(owner(name), list[1])
        seen[name] = true
        name = list.cname
        if seen[name] or #answers > 8 then break end   -- a loop: stop here
      else
        local found = 0
        for _, rec in ipairs(list) do
          if qtype == T_ANY or rec.type == qtype then
            answers[#answers + 1] = rr(owner(name), rec)
            found = found + 1
          end
        end
        nodata = found == 0
        break
      end
    end
    if (nodata or rcode == NXDOMAIN) and in_zone(name, zone.origin) then
      if zone.soa then authority[1] = rr(encode_name(zone.soa.name), zone.soa) end
    end
  end
  local additional = q.edns and ("\0" .. pack(">I2I2I4s2", T_OPT, 1232, 0, "")) or ""
  local question = (q.err or not q.question) and "" or q.question
  local function message(f, an, ns)
    return pack(">I2I2I2I2I2I2", q.id, f | rcode, question ~= "" and 1 or 0, #an, #ns,
                q.edns and 1 or 0) .. question .. table.concat(an) .. table.concat(ns) .. additional
  end
  -- (More than 65,535 records, a name's ANY, fit in no message: the count
  -- would not even pack.)
  local msg = #answers <= 65535 and message(flags, answers, authority)
  if not msg or #msg > (limit or q.edns or 512) then msg = message(flags | 0x0200, {}, {}) end   -- TC
  return msg
end

return { load_zone = load_zone, parse = parse, answer = answer }

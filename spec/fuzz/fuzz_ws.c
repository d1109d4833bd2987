/*
** fuzz_ws.c: libFuzzer target for lua/lws.c, the WebSocket sessions of
** http.websocket (wslay's frames read from anybody a server lets in).
**
** Input: byte 0 picks the side (bit 7: a client's session, reading a
** server's frames; else a server's) and the largest message (bits 0-6:
** 1 .. 127 bytes, or 1 MiB when 0); byte 1 the size of the pieces (1 ..
** 256); the rest is what the other side sends.  It is fed once whole and once in those pieces, each piece
** followed by every message next() then gives and by output(), and both
** must give the same messages, the same frames out (but pongs, which a
** close queued when the client broke the protocol may overtake) and the
** same end: the session keeps nothing of how the bytes were cut (but for
** a close with a reason, whose UTF-8 wslay checks piece by piece: see
** reasoned() below; lua/http.lua checks it again).  Each message must be
** one RFC 6455 allows a server to hear (a data message within the limit,
** text in UTF-8; a control message of at most 125 bytes), ready() must
** say whether next() has one, feed() must stop reading for good once it
** says so, and what the session writes must be whole frames, masked by a
** client (compared unmasked: the masks are random) and not by a server.
** A check that fails is a Lua error, and the target aborts with it.
*/
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include <lua.h>
#include <lauxlib.h>
#include <lualib.h>

#include "mkl.h"

static const char check[] =
  "local http, data, max, step, client = ...\n"
  "-- the server's frames in out, each checked, as one line each\n"
  "local function frames(out)\n"
  "  local t, at = {}, 1\n"
  "  while at <= #out do\n"
  "    assert(#out - at + 1 >= 2, 'a frame cut short')\n"
  "    local b1, b2 = out:byte(at, at + 1)\n"
  "    assert((b2 & 0x80 ~= 0) == client, client and 'a client frame unmasked' or 'a server frame masked')\n"
  "    local n, head = b2 & 127, 2\n"
  "    if n == 126 then n, head = string.unpack('>I2', out, at + 2), 4\n"
  "    elseif n == 127 then n, head = string.unpack('>I8', out, at + 2), 10 end\n"
  "    local payload\n"
  "    if client then\n"
  "      local key = out:sub(at + head, at + head + 3)\n"
  "      head = head + 4\n"
  "      payload = out:sub(at + head, at + head + n - 1):gsub('()(.)', function(i, c)\n"
  "        return string.char(c:byte() ~ key:byte((i - 1) % 4 + 1)) end)\n"
  "    else\n"
  "      payload = out:sub(at + head, at + head + n - 1)\n"
  "    end\n"
  "    assert(at + head + n - 1 <= #out, 'a frame cut short')\n"
  "    -- (a pong queued as the client broke the protocol may go or not,\n"
  "    -- as the bytes were cut: the close wslay queued then wins)\n"
  "    if b1 ~= 0x8a then t[#t + 1] = ('%x %s'):format(b1, payload) end\n"
  "    at = at + head + n\n"
  "  end\n"
  "  return t\n"
  "end\n"
  "local function run(cut)\n"
  "  local s, got, out, i, reading = http.ws_session(max, client), {}, {}, 1, true\n"
  "  while i <= #data and reading do\n"
  "    reading = s:feed(data:sub(i, i + cut - 1))\n"
  "    i = i + cut\n"
  "    while true do\n"
  "      local ready = s:ready()\n"
  "      local op, payload, code = s:next()\n"
  "      assert(ready == (op ~= nil), 'ready() and next() disagree')\n"
  "      if op == nil then break end\n"
  "      assert(op == 1 or op == 2 or op == 8 or op == 9 or op == 10, 'opcode ' .. tostring(op))\n"
  "      if op <= 2 then assert(#payload <= max, 'a message past the limit') end\n"
  "      if op == 1 then assert(utf8.len(payload), 'text that is not UTF-8') end\n"
  "      if op >= 8 then assert(#payload <= 125, 'a control message too long') end\n"
  "      assert(math.type(code) == 'integer', 'a code')\n"
  "      got[#got + 1] = op .. ' ' .. code .. ' ' .. payload\n"
  "    end\n"
  "    out[#out + 1] = s:output()\n"
  "  end\n"
  "  if not reading then\n"
  "    assert(s:feed('\\129\\128\\0\\0\\0\\0') == false and not s:ready(), 'read after the end')\n"
  "  end\n"
  "  local f = frames(table.concat(out))\n"
  "  local rcv, sent, crcv, csent = s:status()\n"
  "  return table.concat(got, '\\0') .. '\\1' .. table.concat(f, '\\0') .. '\\1' ..\n"
  "    table.concat({ tostring(reading), tostring(rcv), tostring(sent), crcv, csent }, ' ')\n"
  "end\n"
  "-- Does the client send a close with a reason?  wslay checks a close's\n"
  "-- reason is UTF-8 as the pieces come, skipping the first two bytes of\n"
  "-- each piece (meant for the code): cut fine, a bad reason may pass.\n"
  "local function reasoned()\n"
  "  local at = 1\n"
  "  while at + 1 <= #data do\n"
  "    local b1, b2 = data:byte(at, at + 1)\n"
  "    local n, head = b2 & 127, 2\n"
  "    if n == 126 and at + 3 <= #data then n, head = string.unpack('>I2', data, at + 2), 4\n"
  "    elseif n == 127 and at + 9 <= #data then n, head = string.unpack('>I8', data, at + 2), 10\n"
  "    elseif n >= 126 then return false end\n"
  "    if b1 & 15 == 8 and n > 2 then return true end\n"
  "    if n > #data then return false end\n"
  "    at = at + head + (b2 & 0x80 ~= 0 and 4 or 0) + n\n"
  "  end\n"
  "  return false\n"
  "end\n"
  "local whole, pieces = run(#data + 1), run(step)\n"
  "if whole ~= pieces and not reasoned() then\n"
  "  error(('cut in pieces of %d, another session:\\n%q\\n%q'):format(step, whole, pieces))\n"
  "end\n";

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  lua_State *L;
  if (size < 2) return 0;
  L = luaL_newstate();
  if (L == NULL) abort();
  luaL_openlibs(L);
  if (luaL_loadbuffer(L, check, sizeof check - 1, "=fuzz_ws") != LUA_OK) abort();
  mkl_open_http(L);
  lua_pushlstring(L, (const char *)data + 2, size - 2);
  lua_pushinteger(L, (data[0] & 127) == 0 ? 1 << 20 : data[0] & 127);
  lua_pushinteger(L, (lua_Integer)data[1] + 1);
  lua_pushboolean(L, data[0] & 128);
  if (lua_pcall(L, 5, 0, 0) != LUA_OK) {
    fprintf(stderr, "fuzz_ws: %s\n", lua_tostring(L, -1));
    abort();
  }
  lua_close(L);
  return 0;
}

/*
** fuzz_http.c: libFuzzer target for lua/lhttp.c, the HTTP/1.x parsers of
** the live inspector (a server that may listen beyond loopback) and of its
** client, `market inspect`.
**
** Input: byte 0 picks the side (bit 0: request or response) and the limit
** (bits 1-7: 1 .. 128 bytes, or 1 MiB when all set); byte 1 the size of
** the pieces (1 .. 256), and, for a response, whose limit bounds the body
** alone, its head's limit (odd: the same; even: lhttp.c's own, 80 KiB);
** the rest is the stream.  It is fed once whole and
** once in those pieces, each followed by the end of the stream (""), and
** both must come to the same verdict and the same message: the parser
** says it keeps nothing of how the bytes were cut (of a message it did
** not complete, only the verdict: the headers so far depend on where the
** parser last stopped, which the pieces decide).  Each verdict must be
** one lhttp.c documents (true and the piece's rest; false; nil, a reason
** and 400, 413, 431 or 505), and what message() returns no larger than the
** limits.  What follows a complete message (its rest, and the pieces after
** it) must be the same however the bytes were cut, and a parser reset
** takes it as the first bytes of a new message alike.  A request is
** parsed a third way too, as http.serve's stream_body does (the body
** taken after every piece): each piece taken no longer than the piece
** fed, and the same verdict, body and rest as whole, but that the limit
** then bounds the head alone (no 413).  A Set-Cookie value heard is also
** asked of the public suffix list (libpsl: the cookie jar's look-up, on
** whatever bytes a server sends).  A check that fails is a Lua error, and
** the target aborts with it.
*/
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include <lua.h>
#include <lauxlib.h>
#include <lualib.h>

#include "mkl.h"

static const char check[] =
  "local http, data, response, max, step = ...\n"
  "local head = response and step % 2 == 1 and 80 * 1024 or max   -- (byte 1 even)\n"
  "local function run(cut)\n"
  "  local p = response and http.response(max, false, head) or http.request(max)\n"
  "  local i, ok, why, status = 1\n"
  "  repeat\n"
  "    local piece = data:sub(i, i + cut - 1)\n"
  "    i = i + cut\n"
  "    ok, why, status = p:feed(piece)\n"
  "    if ok == nil then\n"
  "      assert(type(why) == 'string' and #why > 0, 'a failure without a reason')\n"
  "      assert(status == 400 or status == 413 or status == 431 or status == 505,\n"
  "             'status ' .. tostring(status))\n"
  "    elseif ok then\n"
  "      assert(type(why) == 'string' and #why <= #piece, 'a rest longer than its piece')\n"
  "      assert(piece:sub(#piece - #why + 1) == why, 'a rest that is not the end of its piece')\n"
  "    else\n"
  "      assert(ok == false and why == nil, 'a verdict that is not one')\n"
  "    end\n"
  "    local m = p:message()\n"
  "    assert(#m.body <= max and #(m.path or m.reason) <= head, 'a field past the limit')\n"
  "    if #m.set_cookies > 0 then\n"
  "      assert(table.concat(m.set_cookies, ', ') == m.headers['set-cookie'], 'set_cookies')\n"
  "      local public = http.public_suffix(m.set_cookies[1]:lower())\n"
  "      assert(public == true or public == false, 'public_suffix')\n"
  "    end\n"
  "    for k, v in pairs(m.headers) do\n"
  "      assert(type(k) == 'string' and type(v) == 'string', 'a header that is not text')\n"
  "      assert(k == k:lower(), 'a header name not lower-cased')\n"
  "    end\n"
  "  until ok ~= false or piece == ''\n"
  "  if ok ~= true then return tostring(ok) .. ' ' .. tostring(status), ok, status end\n"
  "  local tail = why .. data:sub(i)\n"
  "  local m = p:message()\n"
  "  p:reset()\n"
  "  local again, _, st2 = p:feed(tail)\n"
  "  local names = {}\n"
  "  for k in pairs(m.headers) do names[#names + 1] = k end\n"
  "  table.sort(names)\n"
  "  for j, k in ipairs(names) do names[j] = k .. '=' .. m.headers[k] end\n"
  "  if m.target then\n"
  "    assert(m.target == m.path .. (m.query and '?' .. m.query or ''), 'target, path, query')\n"
  "  end\n"
  "  return table.concat({ tostring(ok), tostring(status), tostring(m.method),\n"
  "    tostring(m.path), tostring(m.query), tostring(m.status), tostring(m.reason), m.version,\n"
  "    m.body, tostring(m.keep_alive), table.concat(names, '\\n'), tail,\n"
  "    tostring(again) .. ' ' .. tostring(st2) }, '\\0'), ok, status, m.body, tail\n"
  "end\n"
  "local function streamed(cut)\n"
  "  local p = http.request(max, true)\n"
  "  local i, ok, why, status, body = 1, nil, nil, nil, {}\n"
  "  repeat\n"
  "    local piece = data:sub(i, i + cut - 1)\n"
  "    i = i + cut\n"
  "    ok, why, status = p:feed(piece)\n"
  "    local taken = p:take()\n"
  "    assert(#taken <= #piece, 'streamed: a piece taken longer than the piece fed')\n"
  "    body[#body + 1] = taken\n"
  "  until ok ~= false or piece == ''\n"
  "  if ok ~= true then return tostring(ok) .. ' ' .. tostring(status) end\n"
  "  return 'true ' .. table.concat(body) .. '\\0' .. why .. data:sub(i)\n"
  "end\n"
  "local whole, ok, status, body, tail = run(#data + 1)\n"
  "local pieces = run(step)\n"
  "if whole ~= pieces then\n"
  "  error(('cut in pieces of %d, another message:\\n%q\\n%q'):format(step, whole, pieces))\n"
  "end\n"
  "if not response then\n"
  "  local s1, s2 = streamed(#data + 1), streamed(step)\n"
  "  if s1 ~= s2 then\n"
  "    error(('streamed, cut in pieces of %d, another outcome:\\n%q\\n%q'):format(step, s1, s2))\n"
  "  end\n"
  "  if ok == true then\n"
  "    assert(s1 == 'true ' .. body .. '\\0' .. tail, 'streamed: another body or rest')\n"
  "  elseif status == 413 then\n"
  "    assert(not s1:find(' 41[13]$'), 'streamed: the body bounded')\n"
  "  else\n"
  "    assert(s1 == tostring(ok) .. ' ' .. tostring(status), 'streamed: another verdict')\n"
  "  end\n"
  "end\n";

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  lua_State *L;
  int limit;
  if (size < 2) return 0;
  L = luaL_newstate();
  if (L == NULL) abort();
  luaL_openlibs(L);
  if (luaL_loadbuffer(L, check, sizeof check - 1, "=fuzz_http") != LUA_OK) abort();
  mkl_open_http(L);
  lua_pushlstring(L, (const char *)data + 2, size - 2);
  lua_pushboolean(L, data[0] & 1);
  limit = data[0] >> 1;
  lua_pushinteger(L, limit == 127 ? 1 << 20 : limit + 1);
  lua_pushinteger(L, (lua_Integer)data[1] + 1);
  if (lua_pcall(L, 5, 0, 0) != LUA_OK) {
    fprintf(stderr, "fuzz_http: %s\n", lua_tostring(L, -1));
    abort();
  }
  lua_close(L);
  return 0;
}

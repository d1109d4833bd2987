/*
** fuzz_dns.c: libFuzzer target for the DNS example's message code (issue 8
** section 4).
**
** examples/dns.lua serves queries with examples/dnsmsg.lua, pure Lua: a
** Lua error there on some packet would end the server's process, so every
** input must come out of dnsmsg.parse as a query or nil, and every query
** must come out of dnsmsg.answer as a well-formed reply, without an error.
** Each input is tried as a UDP datagram (answers cut at 512 bytes) and as a
** TCP frame (65,535).  A Lua error aborts with its message; a loop is
** caught by libFuzzer's -timeout.
**
** Built and run by spec/fuzz/run, which defines DNS_DIR, the examples/
** directory (dnsmsg.lua and example.zone).
*/
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include <lua.h>
#include <lauxlib.h>
#include <lualib.h>

#ifndef DNS_DIR
#error "DNS_DIR must name the examples directory"
#endif

static lua_State *L;

/* Lua: check(pkt): parse, answer both ways, and check each reply's header
** against the query's (the id is echoed, QR is set). */
static const char check_lua[] =
  "local dns, zone = ...\n"
  "return function(pkt)\n"
  "  local q = dns.parse(pkt)\n"
  "  if q == nil then return end\n"
  "  for _, limit in ipairs { 512, 65535 } do\n"
  "    local r = dns.answer(q, zone, limit)\n"
  "    assert(type(r) == 'string' and #r >= 12 and #r <= limit, 'bad reply length')\n"
  "    local id, flags = string.unpack('>I2I2', r)\n"
  "    assert(id == q.id and flags & 0x8000 ~= 0, 'bad reply header')\n"
  "  end\n"
  "end\n";

static int traceback(lua_State *L1) {
  luaL_traceback(L1, L1, lua_tostring(L1, 1), 1);
  return 1;
}

int LLVMFuzzerInitialize(int *argc, char ***argv) {
  (void)argc;
  (void)argv;
  L = luaL_newstate();
  if (L == NULL) abort();
  luaL_openlibs(L);
  lua_pushcfunction(L, traceback);
  if (luaL_loadbufferx(L, check_lua, sizeof check_lua - 1, "=check", "t") != LUA_OK ||
      luaL_dofile(L, DNS_DIR "/dnsmsg.lua") != LUA_OK) {
    fprintf(stderr, "fuzz_dns: %s\n", lua_tostring(L, -1));
    abort();
  }
  lua_getfield(L, -1, "load_zone");
  lua_pushliteral(L, DNS_DIR "/example.zone");
  if (lua_pcall(L, 1, 1, 1) != LUA_OK) {
    fprintf(stderr, "fuzz_dns: %s\n", lua_tostring(L, -1));
    abort();
  }
  /* stack: traceback, chunk, dns, zone -> traceback, check */
  if (lua_pcall(L, 2, 1, 1) != LUA_OK) {
    fprintf(stderr, "fuzz_dns: %s\n", lua_tostring(L, -1));
    abort();
  }
  return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  lua_pushvalue(L, 2);
  lua_pushlstring(L, (const char *)data, size);
  if (lua_pcall(L, 1, 0, 1) != LUA_OK) {
    fprintf(stderr, "fuzz_dns: the DNS code raised an error:\n%s\n", lua_tostring(L, -1));
    abort();
  }
  lua_settop(L, 2);
  lua_gc(L, LUA_GCSTEP, 0);
  return 0;
}

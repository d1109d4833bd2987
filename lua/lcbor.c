/*
** lcbor.c: market.to_cbor and market.from_cbor, terms on the wire from
** Lua (runtime/cbor.h; docs/cluster.md, "Terms on the wire").
*/
#include <stdlib.h>

#include "mkl.h"

/* market.to_cbor(value) -> the bytes of value, anything market.send takes
** as a message; anything else is an error. */
static int l_to_cbor(lua_State *L) {
  mk_term *t;
  unsigned char *b;
  size_t len = 0;
  luaL_checkany(L, 1);
  t = mkl_checkterm(L, 1, "market.to_cbor");
  b = mk_cbor_encode(t, &len);
  mk_unref(t);
  if (b == NULL) return luaL_error(L, "market.to_cbor: out of memory");
  lua_pushlstring(L, (const char *)b, len);
  free(b);
  return 1;
}

/* market.from_cbor(s) -> the term s encodes, or nil and the reason; s
** not a string is an error. */
static int l_from_cbor(lua_State *L) {
  size_t len;
  const char *s, *why = NULL;
  mk_term *t;
  luaL_argexpected(L, lua_type(L, 1) == LUA_TSTRING, 1, "string");
  s = lua_tolstring(L, 1, &len);
  t = mk_cbor_decode((const unsigned char *)s, len, &why);
  if (t == NULL) {
    luaL_pushfail(L);
    lua_pushfstring(L, "market.from_cbor: %s", why);
    return 2;
  }
  mkl_pushterm(L, t);
  mk_unref(t);
  return 1;
}

void mkl_open_cbor(lua_State *L) {
  static const luaL_Reg funcs[] = {
    {"to_cbor", l_to_cbor}, {"from_cbor", l_from_cbor}, {NULL, NULL}};
  luaL_setfuncs(L, funcs, 0);
}

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

/* A sequence in t holds nil (CBOR null, which other writers may put in
** an array): Lua would read it as a hole, [1, nil] as {1} and [nil, 1] as
** a table no term is.  One level of C recursion per level of t, which the
** depth limit bounds (term.h, "Depth"); shared subterms are walked once
** per place, as mkl_pushterm walks them. */
static int holds_hole(const mk_term *t) {
  uint32_t i;
  int kind = mk_kindof(t);
  if (kind != MK_SEQ && kind != MK_REC) return 0;
  for (i = 0; i < t->n; i++) {
    const mk_term *it = mk_items(t)[i];
    if ((kind == MK_SEQ && mk_kindof(it) == MK_NIL) || holds_hole(it)) return 1;
  }
  return 0;
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
  if (t != NULL && holds_hole(t)) {
    mk_unref(t);
    t = NULL;
    why = "a null inside a sequence (Lua would read it as a hole)";
  }
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

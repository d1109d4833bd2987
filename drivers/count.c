/*
** count.c: sets of named counters that a driver's C code counts into
** without entering Lua, and that Lua reads and sets like a table's fields
** (tcp.stats, a listener's live managers, cluster.stats).  See mkd.h.
*/
#include <stdlib.h>
#include <string.h>

#include <lua.h>
#include <lauxlib.h>

#include "mkd.h"

#define COUNT_MT "market.sys.count"

/* The userdata holds the set's first reference. */
typedef struct countbox { mkd_count *n; } countbox;

void mkd_count_release(mkd_count *n) {
  if (n != NULL && --n->refs == 0) free(n);
}

mkd_count *mkd_testcount(lua_State *L, int idx, const char *const *names) {
  countbox *b = luaL_testudata(L, idx, COUNT_MT);
  return b && b->n && b->n->names == names ? b->n : NULL;
}

mkd_count *mkd_checkcount(lua_State *L, int idx, const char *const *names) {
  mkd_count *n = ((countbox *)luaL_checkudata(L, idx, COUNT_MT))->n;
  if (names != NULL && (n == NULL || n->names != names))
    luaL_argerror(L, idx, "not the counters expected");
  return n;
}

/* The index of the counter named at idx, or -1 (also for a key that is
** no string). */
static int field(const mkd_count *n, lua_State *L, int idx) {
  const char *k = lua_type(L, idx) == LUA_TSTRING ? lua_tostring(L, idx) : NULL;
  int i;
  for (i = 0; k != NULL && n->names[i]; i++)
    if (strcmp(n->names[i], k) == 0) return i;
  return -1;
}

static int count_index(lua_State *L) {
  mkd_count *n = mkd_checkcount(L, 1, NULL);
  int i = field(n, L, 2);
  if (i >= 0) lua_pushinteger(L, n->v[i]); else lua_pushnil(L);
  return 1;
}

static int count_newindex(lua_State *L) {
  mkd_count *n = mkd_checkcount(L, 1, NULL);
  int i = field(n, L, 2);
  if (i < 0) return luaL_error(L, "%s has no field '%s'", n->what, luaL_tolstring(L, 2, NULL));
  n->v[i] = luaL_checkinteger(L, 3);
  return 0;
}

static int count_gc(lua_State *L) {
  countbox *b = luaL_checkudata(L, 1, COUNT_MT);
  mkd_count_release(b->n);
  b->n = NULL;
  return 0;
}

/* e.g. "tcp.stats {max_queued = 0, pauses = 3, ...}" */
static int count_tostring(lua_State *L) {
  mkd_count *n = mkd_checkcount(L, 1, NULL);
  luaL_Buffer b;
  int i;
  luaL_buffinit(L, &b);
  luaL_addstring(&b, n->what);
  for (i = 0; n->names[i]; i++) {
    lua_pushfstring(L, "%s%s = %I", i ? ", " : " {", n->names[i], n->v[i]);
    luaL_addvalue(&b);
  }
  luaL_addchar(&b, '}');
  luaL_pushresult(&b);
  return 1;
}

mkd_count *mkd_newcount(lua_State *L, const char *what, const char *const *names) {
  countbox *b = lua_newuserdatauv(L, sizeof *b, 0);
  size_t k = 0;
  b->n = NULL;
  luaL_setmetatable(L, COUNT_MT);
  while (names[k]) k++;
  b->n = calloc(1, sizeof *b->n + k * sizeof b->n->v[0]);
  if (b->n == NULL) luaL_error(L, "not enough memory");
  b->n->refs = 1;
  b->n->what = what;
  b->n->names = names;
  return b->n;
}

void mkd_open_count(lua_State *L) {
  static const luaL_Reg count_mt[] = {
    {"__index", count_index}, {"__newindex", count_newindex}, {"__gc", count_gc},
    {"__tostring", count_tostring}, {NULL, NULL}};
  if (luaL_newmetatable(L, COUNT_MT)) luaL_setfuncs(L, count_mt, 0);
  lua_pop(L, 1);
}

/*
** lmarket.c: the `market` Lua module and its driver submodules.
**
** One shared object serves every name: Lua's all-in-one C loader finds
** luaopen_market_tcp in market.so for require "market.tcp".  The Lua half
** of each module is compiled in (lua/embed.lua), so nothing needs to be
** installed beside the .so.
*/
#include <dlfcn.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mkl.h"

#define MKL_VERSION MKL_VERSION_STRING

/* core.term(v, what): v checked as a term: atoms and boxes as they are,
** tables frozen into a box.  Raises "what: problem" otherwise. */
static int c_term(lua_State *L) {
  const char *what = luaL_optstring(L, 2, "term");
  switch (lua_type(L, 1)) {
    case LUA_TNIL: case LUA_TBOOLEAN: case LUA_TNUMBER: case LUA_TSTRING:
      lua_settop(L, 1);
      return 1;
    default:
      if (mkl_testbox(L, 1)) { lua_settop(L, 1); return 1; }
      mkl_pushbox(L, mkl_checkterm(L, 1, what));
      return 1;
  }
}

int mkl_builtin(const char *name) {
  const mkl_source *s;
  for (s = mkl_sources; s->name; s++)
    if (strcmp(s->name, name) == 0) return 1;
  return 0;
}

/* Run an embedded chunk with the narg values on top as its arguments;
** leaves its result.  Its bytecode, unless this liblua refuses it (a
** header of another version or number format: lundump checks them all,
** so a refusal is an error, never a crash); then its source. */
static int run_embedded(lua_State *L, const char *name, int narg) {
  const mkl_source *s;
  for (s = mkl_sources; s->name && strcmp(s->name, name) != 0; s++) {}
  if (s->name == NULL) return luaL_error(L, "market: module '%s' is not built in", name);
  if (luaL_loadbufferx(L, s->code, s->codelen, s->chunk, "b") != LUA_OK) {
    lua_pop(L, 1);
    if (luaL_loadbufferx(L, s->src, s->len, s->chunk, "t") != LUA_OK) return lua_error(L);
  }
  if (narg) lua_insert(L, -1 - narg);
  lua_call(L, narg, 1);
  return 1;
}

/* market.h.  Digits only: strtol alone would take spaces and a sign.
** Past LONG_MAX it gives LONG_MAX, which is past the bound: refused.  The
** bound is --workers's: MARKET_WORKER=1/2000000 was taken, and the memory
** limit's share (main.c) was then too small to load the market module. */
int mk_worker(int *index, int *count) {
  const char *env = getenv("MARKET_WORKER");
  char *end;
  long i, n;
  *index = *count = 1;
  if (env == NULL || *env < '0' || *env > '9') return 0;
  i = strtol(env, &end, 10);
  if (*end != '/' || end[1] < '0' || end[1] > '9') return 0;
  n = strtol(end + 1, &end, 10);
  if (*end != '\0' || i < 1 || i > n || n > MK_WORKERS_MAX) return 0;
  *index = (int)i;
  *count = (int)n;
  return 1;
}

void *mkl_dlopen(const char *const *sonames, const char *what, const char *package,
                 char *why, size_t n) {
  const char *const *name;
  const char *e;
  for (name = sonames; *name != NULL; name++) {
    void *lib = dlopen(*name, RTLD_NOW | RTLD_LOCAL | RTLD_NODELETE);
    if (lib != NULL) return lib;
  }
  e = dlerror();
  snprintf(why, n, "cannot load %s (%s; Debian: apt-get install %s): %s", what, sonames[0],
           package, e ? e : "not found");
  return NULL;
}

int mkl_dlsym(void *lib, const char *name, void **slot, const char *what, const char *soname,
              char *why, size_t n) {
  if ((*slot = dlsym(lib, name)) != NULL) return 1;
  snprintf(why, n, "%s (%s) has no %s", what, soname, name);
  return 0;
}

int luaopen_market(lua_State *L) {
  /* For the checks of market.ground's constructors and of at_meta_level
  ** (market.lua). */
  static const struct { const char *name; lua_Integer value; } limits[] = {
    {"INT_MAX", INT_MAX}, {"NSIG", NSIG}, {"SIGKILL", SIGKILL}, {"SIGSTOP", SIGSTOP},
    {"NEST_MAX", MK_NEST_MAX}};
  size_t i;
  int index, count;
  mkl_open_core(L);                       /* core */
  lua_newtable(L);
  mkl_open_terms(L);
  mkl_open_cbor(L);
  lua_setfield(L, -2, "terms");
  lua_pushcfunction(L, c_term);
  lua_setfield(L, -2, "term");
  lua_pushliteral(L, MKL_VERSION);
  lua_setfield(L, -2, "VERSION");
  for (i = 0; i < sizeof limits / sizeof limits[0]; i++) {
    lua_pushinteger(L, limits[i].value);
    lua_setfield(L, -2, limits[i].name);
  }
  mk_worker(&index, &count);
  lua_createtable(L, 0, 2);
  lua_pushinteger(L, index);
  lua_setfield(L, -2, "index");
  lua_pushinteger(L, count);
  lua_setfield(L, -2, "count");
  lua_setfield(L, -2, "worker");
  return run_embedded(L, "market", 1);
}

int luaopen_market_sys(lua_State *L);     /* drivers/lsys.c */

/* The drivers' Lua halves get `market` and `market.sys` (the internal
** socket calls) as their arguments. */
static int open_driver(lua_State *L, const char *name) {
  luaL_requiref(L, "market", luaopen_market, 0);
  luaL_requiref(L, "market.sys", luaopen_market_sys, 0);
  return run_embedded(L, name, 2);
}

int luaopen_market_timer(lua_State *L) { return open_driver(L, "timer"); }
int luaopen_market_tcp(lua_State *L) { return open_driver(L, "tcp"); }
int luaopen_market_udp(lua_State *L) { return open_driver(L, "udp"); }
int luaopen_market_stdio(lua_State *L) { return open_driver(L, "stdio"); }
int luaopen_market_event_relay(lua_State *L) { return open_driver(L, "event_relay"); }
int luaopen_market_cluster(lua_State *L) { return open_driver(L, "cluster"); }
int luaopen_market_repl(lua_State *L) { return open_driver(L, "repl"); }

/* The inspector's Lua half gets the HTTP parser (lhttp.c) as well. */
int luaopen_market_inspect(lua_State *L) {
  luaL_requiref(L, "market", luaopen_market, 0);
  luaL_requiref(L, "market.sys", luaopen_market_sys, 0);
  mkl_open_http(L);
  return run_embedded(L, "inspect", 3);
}

/* Not a driver: HTTP is market.tcp's connections and the parser. */
int luaopen_market_http(lua_State *L) {
  luaL_requiref(L, "market", luaopen_market, 0);
  luaL_requiref(L, "market.tcp", luaopen_market_tcp, 0);
  mkl_open_http(L);
  luaL_requiref(L, "market.sys", luaopen_market_sys, 0);
  return run_embedded(L, "http", 4);
}

/* Not a driver: supervision is plain market (lua/supervisor.lua). */
int luaopen_market_supervisor(lua_State *L) {
  luaL_requiref(L, "market", luaopen_market, 0);
  return run_embedded(L, "supervisor", 1);
}

/*
** main.c: the `market` interpreter.  Runs a script as the boot process of
** a fresh ground VM, with the timer, tcp and udp drivers already running.
*/
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <lualib.h>

#include "mkl.h"

int luaopen_market_timer(lua_State *L);
int luaopen_market_tcp(lua_State *L);
int luaopen_market_udp(lua_State *L);
int luaopen_market_event_relay(lua_State *L);

static const char usage[] =
  "usage: market [options] [script [args...]]\n"
  "\n"
  "Runs an actor script (Lua 5.4) as the boot process of a fresh ground VM\n"
  "with the timer, tcp and udp drivers already running, and exits when no\n"
  "process has anything left to do.\n"
  "\n"
  "options:\n"
  "  -e CODE        run CODE as the boot process (instead of a script)\n"
  "  --trace        print every event and action to stderr, one per line\n"
  "  --no-drivers   do not start the timer, tcp and udp drivers\n"
  "  -h, --help     show this help and exit\n"
  "  -v, --version  show the version and exit\n"
  "\n"
  "The script sees its arguments in the global `arg` (arg[0] is the script)\n"
  "and as `...`.  Exit status: 0 when every process finished, 1 when the\n"
  "boot process failed (its traceback is printed), 2 for a usage error.\n";

static void preload(lua_State *L, const char *name, lua_CFunction f) {
  luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_PRELOAD_TABLE);
  lua_pushcfunction(L, f);
  lua_setfield(L, -2, name);
  lua_pop(L, 1);
}

/* Protected body: argv already checked. */
static int pmain(lua_State *L) {
  int argc = (int)lua_tointeger(L, 1);
  char **argv = lua_touserdata(L, 2);
  int trace = 0, drivers = 1, i, first;
  const char *code = NULL, *script = NULL;
  luaL_openlibs(L);
  preload(L, "market", luaopen_market);
  preload(L, "market.timer", luaopen_market_timer);
  preload(L, "market.tcp", luaopen_market_tcp);
  preload(L, "market.udp", luaopen_market_udp);
  preload(L, "market.event_relay", luaopen_market_event_relay);
  for (i = 1; i < argc; i++) {
    if (strcmp(argv[i], "--trace") == 0) trace = 1;
    else if (strcmp(argv[i], "--no-drivers") == 0) drivers = 0;
    else if (strcmp(argv[i], "-e") == 0) code = argv[++i];
    else if (strcmp(argv[i], "--") == 0) { i++; break; }
    else break;
  }
  first = i;
  if (code == NULL) {
    if (first >= argc) return luaL_error(L, "no script given (try market --help)");
    script = argv[first];
  }
  /* arg: like lua(1), arg[0] is the script, arg[1..] its arguments. */
  lua_createtable(L, argc - first, first + 1);
  for (i = 0; i < argc; i++) {
    lua_pushstring(L, argv[i]);
    lua_rawseti(L, -2, i - (code ? first - 1 : first));
  }
  lua_setglobal(L, "arg");
  lua_getglobal(L, "require");
  lua_pushliteral(L, "market");
  lua_call(L, 1, 1);
  lua_getfield(L, -1, "ground_vm");
  if ((code ? luaL_loadbuffer(L, code, strlen(code), "=(command line)")
            : luaL_loadfile(L, script)) != LUA_OK)
    return lua_error(L);
  /* boot = function() return chunk(args...) end, built in Lua for brevity */
  luaL_loadstring(L, "local chunk, args = ...\n"
                     "return function() return chunk(table.unpack(args, 1, args.n)) end");
  lua_insert(L, -2);
  lua_createtable(L, argc, 1);
  for (i = code ? first : first + 1; i < argc; i++) {
    lua_pushstring(L, argv[i]);
    lua_rawseti(L, -2, (lua_Integer)lua_rawlen(L, -2) + 1);
  }
  lua_pushinteger(L, (lua_Integer)lua_rawlen(L, -1));
  lua_setfield(L, -2, "n");
  lua_call(L, 2, 1);
  lua_createtable(L, 0, 2);
  lua_pushboolean(L, drivers);
  lua_setfield(L, -2, "drivers");
  lua_pushboolean(L, trace);
  lua_setfield(L, -2, "trace");
  lua_call(L, 2, 2);
  if (lua_isnil(L, -2)) {
    fprintf(stderr, "market: %s\n", lua_tostring(L, -1));
    lua_pushinteger(L, 1);
  } else {
    lua_pushinteger(L, 0);
  }
  return 1;
}

int main(int argc, char **argv) {
  lua_State *L;
  int status, i;
  for (i = 1; i < argc; i++) {
    if (strcmp(argv[i], "-h") == 0 || strcmp(argv[i], "--help") == 0) {
      fputs(usage, stdout);
      return 0;
    }
    if (strcmp(argv[i], "-v") == 0 || strcmp(argv[i], "--version") == 0) {
      printf("market %s (%s)\n", MKL_VERSION_STRING, LUA_RELEASE);
      return 0;
    }
    if (strcmp(argv[i], "-e") == 0) {
      if (++i >= argc) { fputs("market: -e needs an argument\n", stderr); return 2; }
      continue;
    }
    if (strcmp(argv[i], "--trace") == 0 || strcmp(argv[i], "--no-drivers") == 0) continue;
    if (argv[i][0] == '-' && strcmp(argv[i], "--") != 0 && strcmp(argv[i], "-") != 0) {
      fprintf(stderr, "market: unknown option '%s' (try market --help)\n", argv[i]);
      return 2;
    }
    break;
  }
  L = luaL_newstate();
  if (L == NULL) { fputs("market: cannot create a Lua state\n", stderr); return 1; }
  lua_pushcfunction(L, pmain);
  lua_pushinteger(L, argc);
  lua_pushlightuserdata(L, argv);
  status = lua_pcall(L, 2, 1, 0);
  if (status != LUA_OK) {
    fprintf(stderr, "market: %s\n", lua_tostring(L, -1));
    lua_close(L);
    return 1;
  }
  status = (int)lua_tointeger(L, -1);
  lua_close(L);
  return status;
}

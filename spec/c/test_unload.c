/*
** test_unload.c: market.so loaded by a Lua state, as stock lua5.4 loads it,
** then the state closed (which unloads its C modules) while the process
** goes on, as a C host may.  Code of market's that outlives the state must
** stay mapped: OpenSSL's allocator, once market gave it one (drivers/tls.c,
** mkd_pin_self).  Before, the next OpenSSL allocation of anybody's jumped
** into unmapped memory.  MARKET_SO is the module's path (meson.build).
*/
#include <dlfcn.h>
#include <stdio.h>
#include <string.h>

#include <lua.h>
#include <lauxlib.h>
#include <lualib.h>

#include "check.h"

static void openssl_after_close (void) {
  lua_State *L = luaL_newstate();
  const char *code =
    "package.cpath = ...\n"
    "local tcp = require 'market.tcp'\n"
    "assert(tcp.tls{ verify = false })\n";
  char cpath[4096];
  void *ssl;
  void *(*method)(void);
  void *(*ctx_new)(void *);
  void (*ctx_free)(void *);
  const char *slash = strrchr(MARKET_SO, '/');
  CHECK(L != NULL && slash != NULL);
  luaL_openlibs(L);
  snprintf(cpath, sizeof cpath, "%.*s/?.so", (int)(slash - MARKET_SO), MARKET_SO);
  CHECK(luaL_loadstring(L, code) == LUA_OK);
  lua_pushstring(L, cpath);
  if (lua_pcall(L, 1, 0, 0) != LUA_OK) {
    fprintf(stderr, "  %s\n", lua_tostring(L, -1));
    CHECK(0);
  }
  lua_close(L);
  /* OpenSSL, loaded by market's TLS configuration, used by somebody else */
  ssl = dlopen("libssl.so.3", RTLD_NOW | RTLD_NOLOAD);
  CHECK(ssl != NULL);
  if (ssl == NULL) return;
  *(void **)&method = dlsym(ssl, "TLS_method");
  *(void **)&ctx_new = dlsym(ssl, "SSL_CTX_new");
  *(void **)&ctx_free = dlsym(ssl, "SSL_CTX_free");
  CHECK(method != NULL && ctx_new != NULL && ctx_free != NULL);
  if (method && ctx_new && ctx_free) {
    void *ctx = ctx_new(method());
    CHECK(ctx != NULL);
    ctx_free(ctx);
  }
  dlclose(ssl);
}

int main (void) {
  RUN(openssl_after_close);
  return CHECK_DONE();
}

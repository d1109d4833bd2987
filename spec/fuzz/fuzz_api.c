/*
** fuzz_api.c: libFuzzer target for the Lua API (issue 8 section 4).
**
** Each input is a program for spec/fuzz/api.lua, run as the boot process of
** a fresh host (a ground VM and its Lua state, no drivers: nothing reaches
** the network) with a small activation budget.  The host is stepped a
** bounded number of times (a step never blocks), then freed.  Besides what
** ASan and UBSan catch, each input must leave nothing behind: every term
** released, every descriptor closed, the term limits as they were.
**
** Built and run by spec/fuzz/run, which defines API_SCRIPT, the path of
** api.lua.
*/
#include <dirent.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include <lua.h>
#include <lauxlib.h>

#include "market.h"

#ifndef API_SCRIPT
#error "API_SCRIPT must name spec/fuzz/api.lua"
#endif

#define STEPS 64          /* host steps per input */
#define BUDGET_MS 20      /* activation budget per input */

static char *script;

static int open_fds(void) {
  DIR *d = opendir("/proc/self/fd");
  struct dirent *e;
  int n = 0;
  if (d == NULL) return -1;
  while ((e = readdir(d)) != NULL) n += e->d_name[0] != '.';
  closedir(d);
  return n;
}

int LLVMFuzzerInitialize(int *argc, char ***argv) {
  FILE *f = fopen(API_SCRIPT, "rb");
  long n;
  (void)argc;
  (void)argv;
  if (f == NULL || fseek(f, 0, SEEK_END) != 0 || (n = ftell(f)) < 0) abort();
  rewind(f);
  script = malloc((size_t)n + 1);
  if (script == NULL || fread(script, 1, (size_t)n, f) != (size_t)n) abort();
  script[n] = 0;
  fclose(f);
  return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  size_t terms = mk_term_live();
  size_t depth = mk_term_depth_limit(), nodes = mk_term_size_limit();
  int fds = open_fds(), i;
  mk_error err;
  mk_host *h = mk_host_new(NULL, &err);
  lua_State *L;
  if (h == NULL) abort();
  mk_host_set_max_activation(h, BUDGET_MS);
  L = mk_host_lua(h);
  lua_pushlstring(L, (const char *)data, size);
  lua_setglobal(L, "FUZZ");
  if (mk_host_spawn_string(h, script, "api.lua", 0, NULL) == 0) abort();
  for (i = 0; i < STEPS; i++)
    if (mk_host_step(h) == 0) break;
  mk_host_free(h);
  /* What the program changed for the whole process goes back, and what it
  ** made is all released. */
  if (mk_term_depth_limit() != depth) mk_term_set_depth_limit(depth);
  if (mk_term_size_limit() != nodes) mk_term_set_size_limit(nodes);
  if (mk_term_live() != terms) {
    fprintf(stderr, "fuzz_api: %zu terms leaked\n", mk_term_live() - terms);
    abort();
  }
  if (open_fds() != fds) {
    fprintf(stderr, "fuzz_api: %d descriptors leaked\n", open_fds() - fds);
    abort();
  }
  return 0;
}

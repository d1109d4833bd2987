/*
** test_host.c: market.h, the embedding interface: hosts, Lua and native
** processes, messages in and out, failures, stepping, teardown.
*/
#include <ev.h>
#include <math.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <lua.h>
#include <lauxlib.h>
#include <lualib.h>

#include "market.h"
#include "check.h"
#include "json.h"      /* mk_text_escaped */
#include "pool.h"      /* MK_SANITIZED */
#include "term.h"      /* mk_term_live */
#include "stackuse.h"

/* ---- a log the processes write to ---------------------------------------- */

static char logbuf[8192];

static void logf_(const char *fmt, ...) {
  va_list ap;
  size_t n = strlen(logbuf);
  va_start(ap, fmt);
  vsnprintf(logbuf + n, sizeof logbuf - n, fmt, ap);
  va_end(ap);
  n = strlen(logbuf);
  if (n + 1 < sizeof logbuf) { logbuf[n] = '\n'; logbuf[n + 1] = 0; }
}

static int has(const char *s) { return strstr(logbuf, s) != NULL; }

/* Lua: note(s) appends s to the log. */
static int l_note(lua_State *L) {
  logf_("%s", luaL_checkstring(L, 1));
  return 0;
}

static mk_host *newhost(void) {
  mk_error err;
  mk_host *h = mk_host_new(NULL, &err);
  CHECK(h != NULL);
  CHECK(err.code == MK_OK && err.message[0] == 0);
  if (h) {
    lua_State *L = mk_host_lua(h);
    lua_pushcfunction(L, l_note);
    lua_setglobal(L, "note");
  }
  logbuf[0] = 0;
  return h;
}

static char *repr(const mk_term *t) { return mk_repr(t, NULL); }

/* ---- a native process that logs everything -------------------------------- */

typedef struct probe {
  const char *who;
  mk_term *sub, *pub;        /* topics to take at boot (owned), or NULL */
  int exits;
  int run_busy, free_busy;   /* results of calling run/free from a handler */
  mk_host *h;
} probe;

static void p_boot(mk_proc *self, void *ud) {
  probe *p = ud;
  logf_("%s boot", p->who);
  if (p->sub) mk_add_subscriber(self, "sub", p->sub);
  if (p->pub) mk_add_publisher(self, "pub", p->pub);
  if (p->h) {
    p->run_busy = mk_host_run(p->h);
    mk_host_free(p->h);               /* refused: must do nothing */
    p->free_busy = mk_host_errcode(p->h);
  }
}

static void p_presence(mk_proc *self, void *ud, const mk_role *peer, const char *ep) {
  probe *p = ud;
  char *t = repr(peer->topic);
  logf_("%s presence %s %s", p->who, ep, t);
  free(t);
}

static void p_absence(mk_proc *self, void *ud, const mk_role *peer, mk_term *reason,
                      const char *ep) {
  probe *p = ud;
  char *t = repr(peer->topic), *r = reason ? repr(reason) : NULL;
  logf_("%s absence %s %s %s", p->who, ep, t, r ? r : "nil");
  free(t);
  free(r);
}

static void p_message(mk_proc *self, void *ud, mk_term *m, const char *ep) {
  probe *p = ud;
  char *t = repr(m);
  logf_("%s message %s %s", p->who, ep, t);
  free(t);
}

static void p_exit(mk_proc *self, void *ud) {
  probe *p = ud;
  p->exits++;
  logf_("%s exit", p->who);
  mk_unref(p->sub);
  mk_unref(p->pub);
  p->sub = p->pub = NULL;
}

static const mk_native probe_handlers = {
  p_boot, p_presence, p_absence, p_message, NULL, p_exit
};

/* ---- tests ------------------------------------------------------------------ */

static void new_and_free(void) {
  size_t base = mk_term_live();
  mk_host *h = newhost();
  CHECK(mk_host_errcode(h) == MK_OK);
  CHECK(strcmp(mk_host_error(h), "") == 0);
  CHECK(mk_host_loop(h) != NULL && mk_host_vm(h) != NULL && mk_host_ground(h) != NULL);
  CHECK(mk_host_run(h) == MK_OK);       /* nothing to do */
  CHECK(mk_host_step(h) == 0);
  mk_host_free(h);
  mk_host_free(NULL);
  CHECK(mk_term_live() == base);
  CHECK(strcmp(mk_version(), MK_VERSION_STRING) == 0);
  CHECK(strncmp(mk_lua_release(), "Lua 5.4", 7) == 0);
  CHECK(strcmp(mk_status_name(MK_EFAILED), "MK_EFAILED") == 0);
}

/* A host's Lua state finalizes no term box: a box's term is released as
** the pool frees the box's block (lua/lterm.c, "Boxes without
** finalizers"), and __gc, for a call by hand, sits one metatable further.
** Boxes kept stay whole; the terms of those dropped go with them. */
static void boxes_released(void) {
  mk_host *h = newhost();
  lua_State *L = mk_host_lua(h);
  size_t base;
  CHECK(luaL_dostring(L,
    "market = require 'market'\n"
    "r = market.record('r', 'x', 'y')\n"
    "local mt = debug.getmetatable(r(1, 2))\n"
    "assert(rawget(mt, '__gc') == nil and type(mt.__gc) == 'function')\n"
    "collectgarbage()\n") == LUA_OK);
  base = mk_term_live();
  CHECK(luaL_dostring(L,
    "kept = {}\n"
    "for i = 1, 20000 do\n"
    "  local b = r(i, { i, 'a payload of some length ' .. i })\n"
    "  if i % 200 == 0 then kept[#kept + 1] = b end\n"
    "end\n"
    "collectgarbage()\n"
    "collectgarbage()\n") == LUA_OK);
  /* The 100 kept: a record, its integer, its sequence, the sequence's
  ** integer and string each; besides, lterm.c's string cache holds the
  ** terms of the last 16 strings it converted at most. */
  CHECK(mk_term_live() >= base + 100 * 5 && mk_term_live() <= base + 100 * 5 + 16);
  CHECK(luaL_dostring(L,
    "for k, b in ipairs(kept) do assert(b.x == k * 200 and b.y[1] == k * 200) end\n"
    "kept = nil\n"
    "collectgarbage()\n") == LUA_OK);
  CHECK(mk_term_live() <= base + 16);
  mk_host_free(h);
}

static void spawn_errors(void) {
  mk_host *h = newhost();
  const char *argv[1] = { "x" };
  CHECK(mk_host_spawn_file(h, "/nonexistent/script.lua", 0, NULL) == 0);
  CHECK(mk_host_errcode(h) == MK_EIO);
  CHECK(strstr(mk_host_error(h), "/nonexistent/script.lua") != NULL);
  CHECK(mk_host_spawn_string(h, "this is not lua", "broken", 0, NULL) == 0);
  CHECK(mk_host_errcode(h) == MK_ELUA);
  CHECK(strstr(mk_host_error(h), "broken:1:") != NULL);
  CHECK(mk_host_spawn_string(h, NULL, "x", 0, NULL) == 0);
  CHECK(mk_host_errcode(h) == MK_EINVAL);
  CHECK(mk_host_spawn_string(h, "return", "x", 1, NULL) == 0);
  CHECK(mk_host_errcode(h) == MK_EINVAL);
  CHECK(mk_host_spawn_string(h, "return", "x", -1, argv) == 0);
  CHECK(mk_host_errcode(h) == MK_EINVAL);
  CHECK(mk_host_spawn_native(h, NULL, NULL, "x") == 0);
  CHECK(mk_host_errcode(h) == MK_EINVAL);
  CHECK(mk_host_kill(h, 999, NULL) == MK_ENOPROC);
  CHECK(mk_host_send(h, NULL) == MK_EINVAL);
  CHECK(mk_host_subscribe(h, NULL, NULL, NULL) == 0);
  CHECK(mk_vm_nprocs(mk_host_vm(h)) == 0);
  CHECK(mk_host_run(h) == MK_OK);
  mk_host_free(h);
}

/* lua_dump's writer: into a dumped buffer. */
typedef struct dumped { char b[4096]; size_t n; } dumped;

static int dump_into(lua_State *L, const void *p, size_t sz, void *ud) {
  dumped *d = ud;
  (void)L;
  if (sz > sizeof d->b - d->n) return 1;
  memcpy(d->b + d->n, p, sz);
  d->n += sz;
  return 0;
}

/* mk_host_spawn_buffer loads exactly len bytes (NULs kept, no NUL needed
** at the end) in the mode asked for; a precompiled chunk only where the
** mode allows it. */
static void spawn_buffer(void) {
  static const char nul[] = "note('nul ' .. #'a\0b' .. ' ' .. ...)";
  const char *argv[1] = { "x" };
  mk_host *h = newhost();
  lua_State *L = mk_host_lua(h);
  dumped bin;
  bin.n = 0;
  CHECK(luaL_loadstring(L, "note('bin ' .. ...)") == LUA_OK);
  CHECK(lua_dump(L, dump_into, &bin, 1) == 0 && bin.n > 0);
  lua_pop(L, 1);
  CHECK(mk_host_spawn_buffer(h, nul, sizeof nul - 1, "nul", "t", 1, argv) != 0);
  CHECK(mk_host_spawn_buffer(h, "note('cut')error('not loaded')", 11, "cut", "t", 0, NULL) != 0);
  CHECK(mk_host_spawn_buffer(h, bin.b, bin.n, "bin", NULL, 1, argv) != 0);
  CHECK(mk_host_spawn_buffer(h, bin.b, bin.n, "bin", "b", 1, argv) != 0);
  CHECK(mk_host_run(h) == MK_OK);
  CHECK(has("nul 3 x\ncut\nbin x\nbin x\n"));
  CHECK(mk_host_spawn_buffer(h, bin.b, bin.n, "bin", "t", 0, NULL) == 0);
  CHECK(mk_host_errcode(h) == MK_ELUA);
  CHECK(strstr(mk_host_error(h), "attempt to load a binary chunk (mode is 't')") != NULL);
  CHECK(mk_host_spawn_buffer(h, "return", 6, "txt", "b", 0, NULL) == 0);
  CHECK(mk_host_errcode(h) == MK_ELUA);
  CHECK(strstr(mk_host_error(h), "attempt to load a text chunk (mode is 'b')") != NULL);
  CHECK(mk_host_spawn_buffer(h, bin.b, bin.n - 4, "short", NULL, 0, NULL) == 0);
  CHECK(mk_host_errcode(h) == MK_ELUA);
  CHECK(strstr(mk_host_error(h), "truncated") != NULL);
  CHECK(mk_host_spawn_buffer(h, "x x", 3, NULL, NULL, 0, NULL) == 0);
  CHECK(mk_host_errcode(h) == MK_ELUA);
  CHECK(strstr(mk_host_error(h), "(string):1:") != NULL);
  CHECK(mk_host_spawn_buffer(h, NULL, 0, "x", NULL, 0, NULL) == 0);
  CHECK(mk_host_errcode(h) == MK_EINVAL);
  CHECK(mk_host_spawn_buffer(h, "return", 6, "x", NULL, 1, NULL) == 0);
  CHECK(mk_host_errcode(h) == MK_EINVAL);
  CHECK(mk_host_spawn_buffer(NULL, "return", 6, "x", NULL, 0, NULL) == 0);
  CHECK(mk_vm_nprocs(mk_host_vm(h)) == 0);
  mk_host_free(h);
}

/* mk_worker: MARKET_WORKER=i/n exactly, n at most MK_WORKERS_MAX, or 1 of 1. */
static void worker_env(void) {
  static const char *const bad[] = { "5/3", "0/2", "1/99999999999999999999", "1/1025",
                                     "1/2000000", " 1/2", "+1/2", "1/2x", "1/", "/2", "x", "",
                                     NULL };
  const char *const *b;
  int i = 0, n = 0;
  CHECK(setenv("MARKET_WORKER", "2/3", 1) == 0);
  CHECK(mk_worker(&i, &n) == 1 && i == 2 && n == 3);
  CHECK(setenv("MARKET_WORKER", "1024/1024", 1) == 0);
  CHECK(mk_worker(&i, &n) == 1 && i == 1024 && n == 1024);
  for (b = bad; *b; b++) {
    CHECK(setenv("MARKET_WORKER", *b, 1) == 0);
    i = n = 0;
    CHECK(mk_worker(&i, &n) == 0 && i == 1 && n == 1);
  }
  CHECK(unsetenv("MARKET_WORKER") == 0);
  CHECK(mk_worker(&i, &n) == 0 && i == 1 && n == 1);
}

/* A Lua process and a native one talk; the Lua chunk sees its arguments. */
static void lua_and_native(void) {
  size_t base = mk_term_live();
  mk_host *h = newhost();
  probe p = { "native", NULL, NULL, 0, 0, 0, NULL };
  const char *argv[2] = { "alpha", "beta" };
  mk_pid np, lp;
  p.sub = mk_record("pong", 2, mk_wild(), mk_wild());
  p.pub = mk_record("ping", 1, mk_wild());
  np = mk_host_spawn_native(h, &probe_handlers, &p, "probe");
  lp = mk_host_spawn_string(h,
    "local market = require 'market'\n"
    "local a, b = ...\n"
    "local ping, pong = market.record('ping', 'n'), market.record('pong', 'n', 'who')\n"
    "return market.transition(0,\n"
    "  market.subscriber(ping(market._), { on_message = function(s, m)\n"
    "    note('lua got ping ' .. m.n)\n"
    "    return market.transition(s, market.send(pong(m.n, a .. '+' .. b)), market.quit())\n"
    "  end }),\n"
    "  market.publisher(pong(market._, market._)))\n",
    "pinger", 2, argv);
  CHECK(np == 1 && lp == 2);
  CHECK(mk_host_step(h) == 0);    /* both booted, presence seen; nothing watched */
  CHECK(has("native boot"));
  CHECK(has("native presence pub ping(_)"));
  CHECK(has("native presence sub pong(_, _)"));
  {
    mk_term *m = mk_record("ping", 1, mk_int(7));
    CHECK(mk_host_send(h, m) == MK_OK);
    mk_unref(m);
  }
  CHECK(mk_host_run(h) == MK_OK);
  CHECK(has("lua got ping 7"));
  CHECK(has("native message sub pong(7, \"alpha+beta\")"));
  CHECK(has("native absence pub ping(_) nil"));        /* the Lua process quit */
  CHECK(mk_vm_nprocs(mk_host_vm(h)) == 1);
  CHECK(p.exits == 0);
  mk_host_free(h);
  CHECK(p.exits == 1 && has("native exit"));
  CHECK(mk_term_live() == base);
}

/* Records made in C and in Lua are the same terms. */
static void terms_across(void) {
  mk_host *h = newhost();
  mk_term *got = NULL;
  probe p = { "native", NULL, NULL, 0, 0, 0, NULL };
  mk_term *t = mk_record("chat-line", 2, mk_cstr("bob"), mk_cstr("hi"));
  int64_t i;
  double d;
  size_t len;
  CHECK(mk_is_record(t, "chat-line", 2) && !mk_is_record(t, "chat-line", 3));
  CHECK(strcmp(mk_record_label(t), "chat-line") == 0);
  CHECK(strcmp(mk_tostring(mk_field(t, 0), &len), "bob") == 0 && len == 3);
  CHECK(mk_field(t, 2) == NULL && mk_field_named(t, "who") == NULL);
  /* A builder inside that failed fails the record, never a nil field. */
  CHECK(mk_record("chat-line", 2, mk_cstr("bob"), NULL) == NULL);
  CHECK(mk_record("x", 1, mk_record("y", 1, mk_str("z", (size_t)1 << 40))) == NULL);
  p.sub = mk_record("chat-line", 2, mk_wild(), mk_wild());
  mk_host_spawn_native(h, &probe_handlers, &p, "probe");
  mk_host_spawn_string(h,
    "local market = require 'market'\n"
    "local line = market.record('chat-line', 'who', 'text')\n"
    "market.perform(market.send(line('ann', 'yo')), market.send({1, 2.5, true}))\n",
    "sender", 0, NULL);
  CHECK(mk_host_run(h) == MK_OK);
  CHECK(has("native message sub chat-line(\"ann\", \"yo\")"));
  /* The Lua side named the fields: C can read them by name now. */
  CHECK(strcmp(mk_tostring(mk_field_named(t, "text"), NULL), "hi") == 0);
  got = mk_record("x", 3, mk_int(5), mk_float(2.5), mk_float(3.0));
  CHECK(mk_tointeger(mk_field(got, 0), &i) && i == 5);
  CHECK(!mk_tointeger(mk_field(got, 1), &i) && mk_tonumber(mk_field(got, 1), &d) && d == 2.5);
  CHECK(mk_tointeger(mk_field(got, 2), &i) && i == 3);
  CHECK(mk_tostring(got, NULL) == NULL && mk_record_label(mk_field(got, 0)) == NULL);
  mk_unref(got);
  mk_unref(t);
  mk_host_free(h);
}

/* mk_host_subscribe: a callback per message, from Lua and from C. */
static int nsub;
static void on_sub(mk_host *h, mk_term *m, void *ud) {
  char *s = repr(m);
  logf_("%s got %s", (const char *)ud, s);
  free(s);
  nsub++;
}

static void subscribe(void) {
  mk_host *h = newhost();
  mk_term *topic = mk_record("news", 1, mk_wild()), *m;
  mk_pid pid = mk_host_subscribe(h, topic, on_sub, "cb");
  mk_unref(topic);
  CHECK(pid != 0);
  mk_host_spawn_string(h,
    "local market = require 'market'\n"
    "market.perform(market.send(market.record('news', 'what')('lua')))\n", "n", 0, NULL);
  nsub = 0;
  /* The subscription exists once its process has booted: before that, a
  ** message sent from C finds nobody (no buffering). */
  CHECK(mk_host_step(h) == 0 && nsub == 1);
  m = mk_record("news", 1, mk_cstr("c"));
  mk_host_send(h, m);
  mk_unref(m);
  CHECK(mk_host_run(h) == MK_OK);
  CHECK(nsub == 2 && has("cb got news(\"lua\")") && has("cb got news(\"c\")"));
  CHECK(mk_host_kill(h, pid, NULL) == MK_OK);
  m = mk_record("news", 1, mk_cstr("late"));
  mk_host_send(h, m);
  mk_unref(m);
  CHECK(mk_host_run(h) == MK_OK);
  CHECK(nsub == 2);
  mk_host_free(h);
}

/* A failing Lua process: MK_EFAILED with the traceback, the callback, and
** the peers see absence with the error. */
static int nfail;
static void on_fail(mk_host *h, mk_pid pid, const char *name, const char *tb, void *ud) {
  logf_("failed %llu %s", (unsigned long long)pid, name);
  CHECK(strstr(tb, "kaboom") != NULL && strstr(tb, "stack traceback") != NULL);
  nfail++;
}

static void failure(void) {
  mk_host *h = newhost();
  probe p = { "watcher", NULL, NULL, 0, 0, 0, NULL };
  p.sub = mk_cstr("doomed");
  mk_host_on_failure(h, on_fail, NULL);
  mk_host_spawn_native(h, &probe_handlers, &p, "watcher");
  mk_host_spawn_string(h,
    "local market = require 'market'\n"
    "market.perform(market.publisher('doomed'))\n"
    "market.pause()\n"
    "error('kaboom')\n", "bomb", 0, NULL);
  nfail = 0;
  CHECK(mk_host_run(h) == MK_EFAILED);
  CHECK(mk_host_errcode(h) == MK_EFAILED);
  CHECK(strstr(mk_host_error(h), "bomb:4: kaboom") != NULL);
  CHECK(strstr(mk_host_error(h), "stack traceback") != NULL);
  CHECK(nfail == 1 && has("failed 2 bomb"));
  CHECK(has("watcher absence sub \"doomed\" \"bomb:4: kaboom\""));
  CHECK(mk_host_run(h) == MK_OK);     /* reported once */
  mk_host_free(h);
}

/* Crash reports (mk_host_on_crash): every failure, native and Lua, boot
** or not, with its VM, pid, name, reason, traceback and the endpoints it
** held (still held when the report is made); the text mk_crash_format
** makes of one; and the count. */
static void on_crash(mk_host *h, const mk_crash *c, void *ud) {
  char *text = mk_crash_format(c), *topics = NULL;
  size_t i;
  (void)ud;
  CHECK(text != NULL);
  logf_("crash %s %llu %s boot=%d [%s] tb=%s eps=%zu", c->vm, (unsigned long long)c->pid,
        c->name ? c->name : "-", c->boot, c->message, c->traceback ? "yes" : "no",
        c->nendpoints);
  for (i = 0; i < c->nendpoints; i++) {
    topics = repr(c->endpoints[i].role.topic);
    logf_("  ep %s %d %s %s", c->endpoints[i].name, c->endpoints[i].level,
          mk_orientation_name(c->endpoints[i].role.orientation), topics);
    free(topics);
  }
  /* The process still holds its endpoints: no peer has seen it go. */
  if (c->name && strcmp(c->name, "nat") == 0) CHECK(!has("absence sub \"native-pub\""));
  CHECK(mk_host_run(h) == MK_EBUSY && mk_host_step(h) == MK_EBUSY);
  logf_("%s", text);
  free(text);
  CHECK(mk_host_crashes(h) >= 1);
}

static void n_fail(mk_proc *self, void *ud) {
  mk_term *t = mk_cstr("native-pub");
  mk_add_publisher(self, "out", t);
  mk_unref(t);
  mk_failf(self, "native trouble %d", 7);
}

static const mk_native failing_native = { n_fail, NULL, NULL, NULL, NULL, NULL };

static void crash_reports(void) {
  mk_host *h = newhost();
  probe p = { "watcher", NULL, NULL, 0, 0, 0, NULL };
  p.sub = mk_cstr("native-pub");
  CHECK(mk_host_crashes(h) == 0);
  mk_host_on_crash(h, on_crash, NULL);
  mk_host_spawn_native(h, &probe_handlers, &p, "watcher");
  mk_host_spawn_native(h, &failing_native, NULL, "nat");
  mk_host_spawn_string(h,
    "local market = require 'market'\n"
    "market.perform(market.spawn(function()\n"
    "  market.perform(market.subscriber({'job', market._}, {name = 'jobs'}))\n"
    "  local function work(t) return t.x.y end\n"
    "  work({})\n"
    "end, {name = 'child'}))\n"
    "market.pause()\n"
    "market.perform(market.publisher('p', {name = 'mine'}))\n"
    "error('boot broke')\n", "bootstr", 0, NULL);
  CHECK(mk_host_run(h) == MK_EFAILED);
  CHECK(mk_host_crashes(h) == 3);
  CHECK(has("crash ground 2 nat boot=0 [native trouble 7] tb=no eps=1\n  ep out 0 publisher \"native-pub\""));
  CHECK(has("watcher absence sub \"native-pub\" \"native trouble 7\""));
  CHECK(has("crash ground 4 child boot=0 [bootstr:4: attempt to index a nil value (field 'x')] "
            "tb=yes eps=1\n  ep jobs 0 subscriber [\"job\", _]"));
  CHECK(has("stack traceback:\n\tbootstr:4: in local 'work'\n\tbootstr:5: in function <bootstr:2>\n"));
  CHECK(has("crash ground 3 bootstr boot=1 [bootstr:9: boot broke] tb=yes eps=1"));
  CHECK(has("market: ground #3 bootstr failed: bootstr:9: boot broke\nstack traceback:\n"
            "\t[C]: in function 'error'\n\tbootstr:9: in main chunk\n\t(...tail calls...)\n"
            "endpoints:\n\tmine: publisher participant \"p\"\n"));
  CHECK(strstr(mk_host_error(h), "bootstr:9: boot broke\nstack traceback:") == mk_host_error(h));
  /* market's own frames are left out. */
  CHECK(!has("\tmarket"));
  mk_host_on_crash(h, NULL, NULL);     /* the default again: stderr */
  mk_host_free(h);
}

/* The activation budget: a Lua handler that loops is ended with the reason
** "activation budget exceeded", its native peer sees it go, and the host
** goes on; the setting is checked. */
static void budget(void) {
  mk_host *h = newhost();
  probe p = { "watcher", NULL, NULL, 0, 0, 0, NULL };
  p.sub = mk_cstr("spinning");
  CHECK(mk_host_set_max_activation(h, -1) == MK_EINVAL);
  CHECK(mk_host_set_max_activation(h, 0.0 / 0.0) == MK_EINVAL);
  CHECK(mk_host_set_max_activation(h, 50) == MK_OK);
  CHECK(mk_vm_budget(mk_host_vm(h)) == 50);
  mk_host_spawn_native(h, &probe_handlers, &p, "watcher");
  mk_host_spawn_string(h,
    "local market = require 'market'\n"
    "market.perform(market.publisher('spinning'))\n"
    "market.pause()\n"
    "while true do end\n", "spinner", 0, NULL);
  CHECK(mk_host_run(h) == MK_EFAILED);
  CHECK(strstr(mk_host_error(h), "activation budget exceeded") != NULL);
  CHECK(has("watcher absence sub \"spinning\" \"activation budget exceeded\""));
  mk_host_free(h);
}

/* Freeing the host: every process sees the others' absence, Lua ones too. */
static void teardown(void) {
  size_t base = mk_term_live();
  mk_host *h = newhost();
  probe a = { "a", NULL, NULL, 0, 0, 0, NULL };
  a.sub = mk_cstr("t");
  mk_host_spawn_native(h, &probe_handlers, &a, "a");
  mk_host_spawn_string(h,
    "local market = require 'market'\n"
    "return market.transition(0, market.publisher('t', { on_absence = function(s, r)\n"
    "  note('lua absence ' .. market.repr(r.topic)) end }),\n"
    "  market.subscriber('t', { on_absence = function(s, r)\n"
    "  note('lua sub absence ' .. market.repr(r.topic)) end }))\n", "luap", 0, NULL);
  CHECK(mk_host_run(h) == MK_OK);
  CHECK(has("a presence sub \"t\""));
  CHECK(!has("absence"));
  CHECK(mk_vm_nprocs(mk_host_vm(h)) == 2);
  mk_host_free(h);
  /* a (pid 1) goes first: the Lua process sees it; then the Lua process,
  ** with nobody left to see it. */
  CHECK(has("a exit"));
  CHECK(has("lua absence \"t\""));
  CHECK(!has("lua sub absence"));
  CHECK(mk_term_live() == base);
}

/* run, step and free are refused from inside a handler. */
static void busy(void) {
  mk_host *h = newhost();
  probe p = { "b", NULL, NULL, 0, 0, 0, NULL };
  p.h = h;
  mk_host_spawn_native(h, &probe_handlers, &p, "b");
  CHECK(mk_host_run(h) == MK_OK);
  CHECK(p.run_busy == MK_EBUSY && p.free_busy == MK_EBUSY);
  CHECK(p.exits == 1);    /* no endpoints: finished after boot */
  mk_host_free(h);
}

/* Continuations of native processes: spawn with a token, yield. */
static int tokens[2];
static void c_boot(mk_proc *self, void *ud) {
  probe *child = ud;
  (void)child;
  CHECK(mk_spawn_native(self, &probe_handlers, ud, "child", &tokens[0]) != 0);
  mk_yield(self, &tokens[1]);
}
static void c_continue(mk_proc *self, void *ud, void *token, mk_pid spawned) {
  logf_("continue %s %llu", token == &tokens[0] ? "spawn" : token == &tokens[1] ? "yield" : "?",
        (unsigned long long)spawned);
}
static void continuations(void) {
  mk_host *h = newhost();
  probe child = { "child", NULL, NULL, 0, 0, 0, NULL };
  mk_native parent = { c_boot, NULL, NULL, NULL, c_continue, NULL };
  mk_host_spawn_native(h, &parent, &child, "parent");
  CHECK(mk_host_run(h) == MK_OK);
  CHECK(has("child boot"));
  CHECK(has("continue spawn 2"));
  CHECK(has("continue yield 0"));
  CHECK(child.exits == 1);
  mk_host_free(h);
}

/* The host's own loop, stepped; drivers; arg. */
static int own_fired;
static void own_cb(struct ev_loop *loop, ev_timer *w, int revents) { own_fired++; }

static void own_loop_step(void) {
  ev_timer own;
  struct ev_loop *loop = ev_loop_new(EVFLAG_AUTO);
  mk_error err;
  mk_host *h = mk_host_new(loop, &err);
  const char *argv[3] = { "market", "script.lua", "one" };
  int r, steps = 0;
  lua_State *L;
  CHECK(h != NULL && mk_host_loop(h) == loop);
  L = mk_host_lua(h);
  lua_pushcfunction(L, l_note);
  lua_setglobal(L, "note");
  logbuf[0] = 0;
  CHECK(mk_host_set_arg(h, 3, argv, 1) == MK_OK);
  CHECK(mk_host_set_arg(h, 3, argv, 4) == MK_EINVAL);
  CHECK(mk_host_start_drivers(h) == MK_OK);
  CHECK(mk_host_start_drivers(h) == MK_OK);      /* once */
  mk_host_spawn_string(h,
    "local market = require 'market'\n"
    "local timer = require 'market.timer'\n"
    "note('arg ' .. arg[-1] .. ' ' .. arg[0] .. ' ' .. arg[1])\n"
    "timer.sleep(20)\n"
    "note('slept')\n", "sleeper", 0, NULL);
  /* A watcher of ours on the same loop gets its turn in a step. */
  ev_timer_init(&own, own_cb, 0, 0);
  ev_timer_start(loop, &own);
  own_fired = 0;
  while ((r = mk_host_step(h)) == 1 && steps < 100000) steps++;
  CHECK(r == 0);
  CHECK(own_fired == 1);
  CHECK(has("arg market script.lua one"));
  CHECK(has("slept"));
  mk_host_free(h);
  ev_loop_destroy(loop);
}

/* Trace lines go to the host's function, nowhere else. */
static int ntrace;
static void trace_fn(void *ud, const char *line) {
  if (strstr(line, "traced")) ntrace++;
}
static void trace(void) {
  mk_host *h = newhost();
  mk_host_trace(h, trace_fn, NULL);
  mk_host_spawn_string(h, "local m = require 'market'; m.perform(m.send('x'))", "traced", 0, NULL);
  ntrace = 0;
  CHECK(mk_host_run(h) == MK_OK);
  CHECK(ntrace > 0);
  mk_host_free(h);
}

/* The host's callbacks run with the VM, or mkl_log, still using the host:
** free and run are refused from them as from a handler (a free there was a
** use after free under ASan). */
static int cb_busy, cb_calls;
static void trace_frees(void *ud, const char *line) {
  mk_host *h = ud;
  (void)line;
  cb_calls++;
  mk_host_free(h);
  if (mk_host_errcode(h) == MK_EBUSY && mk_host_run(h) == MK_EBUSY) cb_busy++;
}
static void log_frees(mk_host *h, int level, const char *line, void *ud) {
  (void)level; (void)line; (void)ud;
  cb_calls++;
  mk_host_free(h);
  if (mk_host_errcode(h) == MK_EBUSY && mk_host_step(h) == MK_EBUSY) cb_busy++;
}
static void callbacks_busy(void) {
  mk_host *h = newhost();
  mk_host_trace(h, trace_frees, h);
  mk_host_spawn_string(h, "local m = require 'market'; m.perform(m.send('x'))", "traced", 0, NULL);
  cb_busy = cb_calls = 0;
  CHECK(mk_host_run(h) == MK_OK);
  CHECK(cb_calls > 0 && cb_busy == cb_calls);
  mk_host_trace(h, NULL, NULL);
  mk_host_on_log(h, log_frees, NULL);
  cb_busy = cb_calls = 0;
  CHECK(mk_host_log(h, MK_LOG_ERROR, "from outside") == MK_OK);
  CHECK(cb_calls == 1 && cb_busy == 1);
  mk_host_free(h);
}

/* A trace callback runs in the middle of the change its line tells: the
** add of an endpoint before it is in the index, its delete before it is
** out.  A kill of the process there freed the endpoint under the change
** (a use after free in mk_index_add, then in endpoint_remove): refused. */
static mk_host *kill_host;
static mk_pid kill_pid;
static const char *kill_at;
static int kill_busy;
static void trace_kills(void *ud, const char *line) {
  (void)ud;
  if (kill_pid != 0 && strstr(line, kill_at) != NULL &&
      mk_host_kill(kill_host, kill_pid, NULL) == MK_EBUSY &&
      mk_host_errcode(kill_host) == MK_EBUSY)
    kill_busy++;
}
static void adds_and_deletes(mk_proc *self, void *ud) {
  mk_term *t = mk_record("ping", 0);
  (void)ud;
  CHECK(mk_add_subscriber(self, "in", t) == 0);
  CHECK(mk_delete_endpoint(self, "in", 0, NULL) == 0);
  mk_unref(t);
}
static const mk_native adder = { .on_boot = adds_and_deletes };
static void trace_cannot_kill(void) {
  static const char *const at[] = { ": add ", ": delete " };
  size_t i;
  for (i = 0; i < 2; i++) {
    mk_host *h = kill_host = newhost();
    kill_at = at[i];
    kill_busy = 0;
    kill_pid = 0;
    mk_host_trace(h, trace_kills, NULL);
    kill_pid = mk_host_spawn_native(h, &adder, NULL, "victim");
    CHECK(kill_pid != 0);
    CHECK(mk_host_run(h) == MK_OK);
    CHECK(kill_busy == 1);
    mk_host_trace(h, NULL, NULL);
    /* Outside the callback the same kill is taken (the process is gone by
    ** now: no such process). */
    CHECK(mk_host_kill(h, kill_pid, NULL) == MK_ENOPROC);
    mk_host_free(h);
  }
  kill_pid = 0;
}

/* Two hosts on one loop: a Lua handler of one that runs the other (step,
** run or turn) would serve the first one's watchers again while its own
** process is still in its handler.  Refused, for every host. */
static mk_host *other_host;
static int other_steps[3];
static int l_run_other(lua_State *L) {
  other_steps[0] = mk_host_step(other_host);
  other_steps[1] = mk_host_run(other_host);
  other_steps[2] = mk_host_turn(other_host, 0);
  return 0;
}
static void two_hosts_not_nested(void) {
  mk_host *a = newhost();
  mk_error err;
  other_host = mk_host_new(mk_host_loop(a), &err);
  CHECK(other_host != NULL);
  lua_register(mk_host_lua(a), "run_other", l_run_other);
  mk_host_spawn_string(a, "local m = require 'market'\n"
    "local t = m.record('t', 'x')\n"
    "return m.transition(0, m.subscriber(t(m._), { on_message = function(_, x)\n"
    "  note('enter ' .. x.x)\n"
    "  if x.x == 1 then run_other() end\n"
    "  note('leave ' .. x.x)\n"
    "end }), m.publisher(t(m._)), m.send(t(1)), m.send(t(2)))\n", "a", 0, NULL);
  CHECK(mk_host_run(a) == MK_OK);
  CHECK(other_steps[0] == MK_EBUSY && other_steps[1] == MK_EBUSY && other_steps[2] == MK_EBUSY);
  CHECK(strcmp(logbuf, "enter 1\nleave 1\nenter 2\nleave 2\n") == 0);
  mk_host_free(other_host);
  mk_host_free(a);
}

/* mk_host_free ends the ground, then closes the Lua state: a finalizer
** that reaches the host through a C function finds the ground gone. */
static mk_host *freed_host;
static int gc_calls[3];
static int l_gc_calls(lua_State *L) {
  mk_term *m = mk_record("closed", 1, mk_int(1));
  gc_calls[0] = mk_host_send(freed_host, m);
  gc_calls[1] = (int)mk_host_spawn_string(freed_host, "note('spawned late')", "late", 0, NULL);
  gc_calls[2] = mk_host_kill(freed_host, 1, NULL);
  mk_unref(m);
  return 0;
}
static void finalizer_after_free(void) {
  freed_host = newhost();
  gc_calls[0] = gc_calls[1] = gc_calls[2] = 1;
  lua_register(mk_host_lua(freed_host), "gc_calls", l_gc_calls);
  mk_host_spawn_string(freed_host, "local m = require 'market'\n"
    "held = setmetatable({}, { __gc = function() gc_calls() end })\n"
    "return m.transition(0, m.subscriber(m.record('t', 'x')(m._)))\n", "holder", 0, NULL);
  CHECK(mk_host_run(freed_host) == MK_OK);
  mk_host_free(freed_host);
  CHECK(gc_calls[0] == MK_EBUSY && gc_calls[1] == 0 && gc_calls[2] == MK_EBUSY);
}

/* A log line from a Lua process runs the host's log function while that
** process's coroutine runs: spawning a Lua process from it uses the host's
** Lua state meanwhile, and must work. */
static int log_spawned;
static void log_spawns(mk_host *h, int level, const char *line, void *ud) {
  (void)level; (void)ud;
  if (strstr(line, "spawn one") != NULL &&
      mk_host_spawn_string(h, "note('spawned from the log')", "fromlog", 0, NULL) != 0)
    log_spawned++;
}
static void log_callback_spawns(void) {
  mk_host *h = newhost();
  mk_host_on_log(h, log_spawns, NULL);
  log_spawned = 0;
  mk_host_spawn_string(h, "local m = require 'market'\n"
                          "m.log.warn('spawn one')\n"
                          "note('after the log line')\n", "logger", 0, NULL);
  CHECK(mk_host_run(h) == MK_OK);
  CHECK(log_spawned == 1);
  CHECK(has("after the log line") && has("spawned from the log"));
  mk_host_free(h);
}

/* mk_host_trace_opts: a filter and a format, set before the trace
** function or after it, and changed between runs. */
static char tracebuf[4096];
static void trace_keep(void *ud, const char *line) {
  size_t n = strlen(tracebuf);
  (void)ud;
  snprintf(tracebuf + n, sizeof tracebuf - n, "%s\n", line + (line[0] == '{' ? 0 : 25));
}
static void trace_opts(void) {
  static const char *const names[] = {"talk*"};
  const char *const bad[] = {NULL};
  mk_pid pids[] = {4};
  mk_trace_opts o;
  mk_host *h = newhost();
  const char *talk = "local m = require 'market'\n"
                     "m.perform(m.send(m.record('chat', 'who')('x')))\n"
                     "m.perform(m.send({'other'}))\n";
  memset(&o, 0, sizeof o);
  o.names = names;
  o.nnames = 1;
  o.kinds = 1u << MK_TK_SEND;
  CHECK(mk_host_trace_opts(h, &o) == MK_OK);       /* before the function: kept */
  mk_host_trace(h, trace_keep, NULL);
  tracebuf[0] = '\0';
  mk_host_spawn_string(h, talk, "talker", 0, NULL);
  mk_host_spawn_string(h, talk, "other", 0, NULL);
  CHECK(mk_host_run(h) == MK_OK);
  CHECK(strcmp(tracebuf, "ground #1 talker: send chat(\"x\")\n"
                         "ground #1 talker: send [\"other\"]\n") == 0);
  /* A pid, a topic pattern, JSON. */
  memset(&o, 0, sizeof o);
  o.pids = pids;
  o.npids = 1;
  o.topic = mk_record("chat", 1, mk_wild());
  o.json = 1;
  CHECK(mk_host_trace_opts(h, &o) == MK_OK);
  mk_unref(o.topic);                               /* the trace holds its own */
  tracebuf[0] = '\0';
  mk_host_spawn_string(h, talk, "talker", 0, NULL);
  mk_host_spawn_string(h, talk, "talker", 0, NULL);
  CHECK(mk_host_run(h) == MK_OK);
  CHECK(strstr(tracebuf, "\"vm\":\"ground\",\"pid\":4,\"name\":\"talker\",\"kind\":\"send\","
                         "\"message\":{\"record\":\"chat\",\"fields\":[\"x\"]}}\n") != NULL);
  CHECK(strstr(tracebuf, "\"pid\":3") == NULL && strstr(tracebuf, "other") == NULL);
  CHECK(strstr(tracebuf, "spawn") == NULL);        /* no topic, no match */
  CHECK(strncmp(tracebuf, "{\"time\":\"20", 11) == 0);
  /* Malformed options change nothing. */
  memset(&o, 0, sizeof o);
  o.kinds = 1u << MK_TK_COUNT;
  CHECK(mk_host_trace_opts(h, &o) == MK_EINVAL);
  o.kinds = 0;
  o.nvms = 1;
  CHECK(mk_host_trace_opts(h, &o) == MK_EINVAL);
  o.vms = bad;
  o.nvms = 0;
  CHECK(mk_host_trace_opts(NULL, &o) == MK_EINVAL);
  o.nvms = 1;                                      /* a NULL glob (was a crash in strlen) */
  CHECK(mk_host_trace_opts(h, &o) == MK_EINVAL);
  o.vms = NULL;
  o.nvms = 0;
  o.names = bad;
  o.nnames = 1;
  CHECK(mk_host_trace_opts(h, &o) == MK_EINVAL);
  o.names = NULL;
  o.nnames = 0;
  /* NULL: every line again, as text. */
  CHECK(mk_host_trace_opts(h, NULL) == MK_OK);
  tracebuf[0] = '\0';
  mk_host_spawn_string(h, "return", "quiet", 0, NULL);
  CHECK(mk_host_run(h) == MK_OK);
  CHECK(strcmp(tracebuf, "ground #5 quiet: spawn lua\nground #5 quiet: quit\n") == 0);
  CHECK(mk_trace_kind("at_meta_level") == MK_TK_AT_META_LEVEL && mk_trace_kind("x") == -1);
  CHECK(strcmp(mk_trace_kind_name(MK_TK_DELETED), "deleted") == 0 && !mk_trace_kind_name(99));
  mk_host_free(h);
}

/* market.trace(false) kept its file to go back to; a later file closed
** it, and once the host stopped the trace, market.trace(true) wrote to
** the closed FILE (valgrind: invalid read in vfprintf), not the file
** the lines last went to. */
static int l_host_untrace(lua_State *L) {
  mk_host_trace(lua_touserdata(L, lua_upvalueindex(1)), NULL, NULL);
  return 0;
}
static void trace_file_kept(void) {
  mk_host *h = newhost();
  lua_State *L = mk_host_lua(h);
  char a[] = "/tmp/market-trace-a-XXXXXX", b[] = "/tmp/market-trace-b-XXXXXX", text[256] = "";
  char script[512];
  FILE *f;
  int fa = mkstemp(a), fb = mkstemp(b);
  CHECK(fa >= 0 && fb >= 0);
  lua_pushlightuserdata(L, h);
  lua_pushcclosure(L, l_host_untrace, 1);
  lua_setglobal(L, "host_untrace");
  snprintf(script, sizeof script, "local m = require 'market'\n"
           "m.trace { file = '%s' }\n"
           "m.trace(false)\n"
           "m.trace { file = '%s', kind = 'send' }\n"
           "host_untrace()\n"
           "m.trace(true)\n"
           "m.perform(m.send('last'))\n", a, b);
  mk_host_spawn_string(h, script, "tracer", 0, NULL);
  CHECK(mk_host_run(h) == MK_OK);
  mk_host_free(h);
  if ((f = fopen(b, "r")) != NULL) {
    text[fread(text, 1, sizeof text - 1, f)] = '\0';
    fclose(f);
  }
  CHECK(strstr(text, "tracer: send \"last\"") != NULL);
  close(fa);
  close(fb);
  unlink(a);
  unlink(b);
}

/* Warnings from Lua's warn() go to the host's callback, or nowhere. */
static void on_warning(mk_host *h, const char *message, void *ud) {
  logf_("warning [%s]", message);
}
static void warnings(void) {
  mk_host *h = newhost();
  mk_host_spawn_string(h, "warn('lost')", "w1", 0, NULL);
  CHECK(mk_host_run(h) == MK_OK);
  mk_host_on_warning(h, on_warning, NULL);
  mk_host_spawn_string(h, "warn('@on'); warn('market.x: ', 'in ', 'pieces'); warn('@off')",
                       "w2", 0, NULL);
  CHECK(mk_host_run(h) == MK_OK);
  CHECK(strcmp(logbuf, "warning [market.x: in pieces]\n") == 0);
  mk_host_free(h);
}

/* A warning raised inside the warning callback (a function of the host's
** called there, lua_warning on its state, a finalizer that warns) came to
** the same buffer: the inner line was the outer's with its own appended,
** and the outer callback's message was freed under it (ASan: a use after
** free; the plain build printed garbage). */
static int warn_depth;
static void on_warning_nested(mk_host *h, const char *message, void *ud) {
  logf_("warning %d [%s]", warn_depth, message);
  if (warn_depth++ == 0) {
    lua_warning(mk_host_lua(h), "inner", 0);
    logf_("outer still [%s]", message);
  }
  warn_depth--;
}
static void warnings_nested(void) {
  mk_host *h = newhost();
  mk_host_on_warning(h, on_warning_nested, NULL);
  lua_warning(mk_host_lua(h), "outer", 0);
  CHECK(strcmp(logbuf, "warning 0 [outer]\nwarning 1 [inner]\nouter still [outer]\n") == 0);
  mk_host_free(h);
}

/* The log (mk_host_on_log): lines from Lua and from the host, with their
** level and prefix, up to the threshold. */
static void on_log(mk_host *h, int level, const char *line, void *ud) {
  const char *rest = strchr(line, ' ');      /* past the time */
  (void)h;
  (*(int *)ud)++;
  logf_("log %s [%s]", mk_log_level_name(level), rest ? rest + 1 : line);
}

static void logging(void) {
  mk_host *h = newhost();
  int n = 0;
  CHECK(mk_log_level_parse("debug") == MK_LOG_DEBUG && mk_log_level_parse("loud") == -1);
  CHECK(mk_log_level_parse(NULL) == -1);
  CHECK(strcmp(mk_log_level_name(MK_LOG_WARN), "warn") == 0);
  CHECK(strcmp(mk_log_level_name(9), "?") == 0);
  CHECK(mk_host_set_log_level(h, 4) == MK_EINVAL && mk_host_set_log_level(h, -1) == MK_EINVAL);
  CHECK(mk_host_log(h, 7, "x") == MK_EINVAL && mk_host_log(h, MK_LOG_WARN, NULL) == MK_EINVAL);
  mk_host_on_log(h, on_log, &n);
  CHECK(mk_host_set_log_level(h, MK_LOG_INFO) == MK_OK);
  mk_host_spawn_string(h,
    "local market = require 'market'\n"
    "market.log.info('hello %s', 'there')\n"
    "market.log.debug('not shown')\n", "logger", 0, NULL);
  CHECK(mk_host_run(h) == MK_OK);
  CHECK(mk_host_log(h, MK_LOG_ERROR, "from the host") == MK_OK);
  CHECK(mk_host_log(h, MK_LOG_DEBUG, "not shown either") == MK_OK);
  CHECK(n == 2);
  CHECK(strcmp(logbuf, "log info [info ground #1 logger: hello there]\n"
                       "log error [error -: from the host]\n") == 0);
  mk_host_free(h);
}

/* mk_host_log from a C function a Lua process calls is that process's (as
** the interpreter's warning callback relies on), and the host's outside. */
static mk_host *log_host;
static int l_hostlog(lua_State *L) {
  (void)L;
  mk_host_log(log_host, MK_LOG_ERROR, "by the host");
  return 0;
}
static void logging_host_in_process(void) {
  int n = 0;
  mk_host *h = log_host = newhost();
  mk_host_on_log(h, on_log, &n);
  lua_register(mk_host_lua(h), "hostlog", l_hostlog);
  mk_host_spawn_string(h, "hostlog()", "some-process", 0, NULL);
  CHECK(mk_host_run(h) == MK_OK);
  l_hostlog(NULL);
  CHECK(n == 2);
  CHECK(strcmp(logbuf, "log error [error ground #1 some-process: by the host]\n"
                       "log error [error -: by the host]\n") == 0);
  mk_host_free(h);
}

/* ---- the Lua binding at the deepest terms (term.h, "Depth") --------------- */

typedef struct chunk { lua_State *L; const char *src; int status; } chunk;

static void run_chunk(void *ud) {
  chunk *c = ud;
  c->status = luaL_dostring(c->L, c->src);
}

/* market.unify converts a table to a term and the unifier back: at the
** deepest term one may make, within the stack term.h promises. */
static void deep_lua(void) {
  static const char setup[] =
    "local m = require 'market'\n"
    "deep, shallow = 1, {1}\n"
    "for i = 1, m.term_depth_limit() do deep = {deep} end\n";
  mk_host *h = newhost();
  lua_State *L = mk_host_lua(h);
  chunk c;
  size_t none, used, perlevel;
  c.L = L;
  c.status = -1;
  CHECK(mk_term_set_depth_limit(MK_TERM_DEPTH_MAX) == 0);
  CHECK(luaL_dostring(L, setup) == LUA_OK);
  c.src = "local m = require 'market'; assert(select(2, m.unify(shallow, m._)))";
  none = stack_used(run_chunk, &c);
  CHECK(c.status == LUA_OK);
  c.status = -1;
  c.src = "local m = require 'market'; local u, ok = m.unify(deep, m._)\n"
          "for i = 1, m.term_depth_limit() do u = u[1] end\n"
          "assert(ok and u == 1)";
  used = stack_used(run_chunk, &c);
  CHECK(c.status == LUA_OK && none != SIZE_MAX && used != SIZE_MAX);
  if (c.status != LUA_OK) fprintf(stderr, "  %s\n", lua_tostring(L, -1));
  perlevel = used > none ? (used - none) / MK_TERM_DEPTH_MAX : 0;
  if (perlevel > PERLEVEL || getenv("MK_SHOW_STACK"))
    fprintf(stderr, "  Lua conversions: %zu bytes of stack a level (bound %d)\n",
            perlevel, PERLEVEL);
  CHECK(perlevel <= PERLEVEL);
  CHECK(mk_term_set_depth_limit(MK_TERM_DEPTH_DEFAULT) == 0);
  mk_host_free(h);
}

/* ---- stopping ------------------------------------------------------------- */

/* Lua: raise_term() sends this program SIGTERM. */
static int l_raise_term(lua_State *L) {
  raise(SIGTERM);
  return 0;
}

/* The boot process watches for the stop (in mode "again" it signals again
** 150 ms after the stop begins: sooner, the same signal from the same
** sender is taken for one sent twice; in mode "quit" it quits, which ends
** its work);
** pid 2 holds work: a publisher 'job' and an alarm 10 s ahead; pid 3 notes
** why 'job' went. */
static const char stop_script[] =
  "local market = require 'market'\n"
  "local mode = ...\n"
  "local alarm = market.ground.alarm(math.floor(market.now()) + 10000)\n"
  "market.perform(market.spawn(function()\n"
  "  return market.transition(nil, market.publisher('job'), market.subscriber(alarm))\n"
  "end), market.spawn(function()\n"
  "  return market.transition(nil, market.subscriber('job', { on_absence = function(_, _, why)\n"
  "    note('job went: ' .. tostring(why)) end }))\n"
  "end))\n"
  "return market.transition(nil, market.subscriber(alarm),\n"
  "  market.subscriber(market.ground.stopping(market._), { on_presence = function(_, role)\n"
  "    note(('stopping, %d ms left'):format(role.topic.deadline_ms - math.floor(market.now())))\n"
  "    if mode == 'again' then return market.transition_no_state(market.subscriber(\n"
  "      market.ground.alarm(math.floor(market.now()) + 150), { on_message = raise_term })) end\n"
  "    if mode == 'quit' then return market.transition_no_state(market.quit(2), market.quit()) end\n"
  "  end }))\n";

static mk_host *stop_host(const char *mode) {
  mk_host *h = newhost();
  const char *argv[1];
  argv[0] = mode;
  lua_pushcfunction(mk_host_lua(h), l_raise_term);
  lua_setglobal(mk_host_lua(h), "raise_term");
  CHECK(mk_host_spawn_string(h, stop_script, "stopper", 1, argv) == 1);
  CHECK(mk_host_step(h) == 1);                /* booted: the alarms hold it */
  return h;
}

static void stop_on_signals(void) {
  mk_host *h;
  double t0;
  CHECK(mk_host_stop_on_signals(NULL, 100) == MK_EINVAL);
  CHECK(mk_host_stop(NULL, 0) == MK_EINVAL && mk_host_exit_status(NULL) == 0);
  /* One signal: the drain, then every process left is killed; status 0. */
  h = stop_host("once");
  CHECK(mk_host_stop_on_signals(h, NAN) == MK_EINVAL);
  CHECK(strstr(mk_host_error(h), "not a finite number") != NULL);
  CHECK(mk_host_stop_on_signals(h, 100) == MK_OK);
  t0 = ev_time();
  raise(SIGTERM);
  CHECK(mk_host_run(h) == MK_OK);
  CHECK(ev_time() - t0 < 5);
  CHECK(has("stopping, 100 ms left") || has("stopping, 99 ms left"));
  CHECK(has("job went: stopped: the drain time (100 ms) ran out"));
  CHECK(mk_host_exit_status(h) == 0);
  CHECK(mk_vm_nprocs(mk_host_vm(h)) == 0);
  mk_host_free(h);
  /* A second signal during the drain: at once, 128 + SIGTERM. */
  h = stop_host("again");
  CHECK(mk_host_stop_on_signals(h, 10000) == MK_OK);
  t0 = ev_time();
  raise(SIGTERM);
  CHECK(mk_host_run(h) == MK_OK);
  CHECK(ev_time() - t0 < 5);
  CHECK(has("job went: stopped by a second signal"));
  CHECK(mk_host_exit_status(h) == 128 + SIGTERM);
  mk_host_free(h);
}

/* Two hosts on one loop may both stop on signals (libev allows one loop
** per signal, not one watcher): one SIGTERM begins both stops, and the
** second host keeps its watch, and the original disposition comes back,
** whichever is freed first. */
static mk_host *stop_host_on(struct ev_loop *loop, const char *mode) {
  mk_error err;
  mk_host *h = mk_host_new(loop, &err);
  const char *argv[1];
  argv[0] = mode;
  CHECK(h != NULL);
  lua_pushcfunction(mk_host_lua(h), l_note);
  lua_setglobal(mk_host_lua(h), "note");
  lua_pushcfunction(mk_host_lua(h), l_raise_term);
  lua_setglobal(mk_host_lua(h), "raise_term");
  CHECK(mk_host_spawn_string(h, stop_script, "stopper", 1, argv) == 1);
  CHECK(mk_host_step(h) == 1);
  return h;
}

static void stop_two_hosts(void) {
  struct ev_loop *loop = ev_loop_new(0);
  struct sigaction before, on, now;
  mk_host *a, *b;
  int round;
  sigaction(SIGTERM, NULL, &before);
  for (round = 0; round < 2; round++) {
    logbuf[0] = 0;
    a = stop_host_on(loop, "once");
    b = stop_host_on(loop, "once");
    CHECK(mk_host_stop_on_signals(a, 100) == MK_OK);
    CHECK(mk_host_stop_on_signals(b, 100) == MK_OK);
    sigaction(SIGTERM, NULL, &on);       /* the handler that sees a stuck loop */
    raise(SIGTERM);
    CHECK(mk_host_run(a) == MK_OK);
    CHECK(mk_host_run(b) == MK_OK);
    CHECK(strstr(logbuf, "stopping, 100 ms left\nstopping, 100 ms left\n") != NULL ||
          strstr(logbuf, "stopping, 99 ms left") != NULL);
    CHECK(strstr(logbuf, "job went: stopped: the drain time (100 ms) ran out\n"
                         "job went: stopped: the drain time (100 ms) ran out") != NULL);
    CHECK(mk_vm_nprocs(mk_host_vm(a)) == 0 && mk_vm_nprocs(mk_host_vm(b)) == 0);
    /* Freeing either first leaves the other's handler in place. */
    mk_host_free(round == 0 ? a : b);
    sigaction(SIGTERM, NULL, &now);
    CHECK(now.sa_sigaction == on.sa_sigaction && (now.sa_flags & SA_SIGINFO));
    mk_host_free(round == 0 ? b : a);
    sigaction(SIGTERM, NULL, &now);
    CHECK(now.sa_handler == before.sa_handler);
  }
  ev_loop_destroy(loop);
}

static void stop_from_host(void) {
  mk_host *h;
  double t0;
  /* Drain 0: the processes still see the stop begin, then go. */
  h = stop_host("once");
  CHECK(mk_host_stop(h, 0) == MK_OK);
  CHECK(mk_host_run(h) == MK_OK);
  CHECK(has("stopping, 0 ms left") || has("stopping, -1 ms left"));
  CHECK(has("job went: stopped: the drain time (0 ms) ran out"));
  CHECK(mk_host_exit_status(h) == 0);
  mk_host_free(h);
  /* The work ends before the drain does: so does the run. */
  h = stop_host("quit");
  t0 = ev_time();
  CHECK(mk_host_stop(h, 5000) == MK_OK);
  CHECK(mk_host_run(h) == MK_OK);
  CHECK(ev_time() - t0 < 2.5);
  CHECK(has("job went: nil"));
  mk_host_free(h);
}

/* ---- exit -------------------------------------------------------------------- */

/* A native process that ends the program with status 9 when it boots. */
static void exit_boot(mk_proc *self, void *ud) {
  mk_term *t = mk_cstr("held");
  mk_add_publisher(self, "held", t);
  mk_unref(t);
  CHECK(mk_host_exit(ud, 9) == MK_OK);
}

static void exit_program(void) {
  static const mk_native exiter = { exit_boot, NULL, NULL, NULL, NULL, NULL };
  mk_host *h;
  double t0;
  CHECK(mk_host_exit(NULL, 0) == MK_EINVAL && mk_host_exited(NULL) == 0);
  /* From the host: every process goes with "exit", at once, not after the
  ** 10 s alarm; the first exit wins. */
  h = stop_host("once");
  CHECK(mk_host_exit(h, 256) == MK_EINVAL && mk_host_exit(h, -1) == MK_EINVAL);
  CHECK(strstr(mk_host_error(h), "0..255") != NULL);
  CHECK(mk_host_exited(h) == 0);
  t0 = ev_time();
  CHECK(mk_host_exit(h, 7) == MK_OK && mk_host_exit(h, 8) == MK_OK);
  CHECK(mk_host_run(h) == MK_OK);
  CHECK(ev_time() - t0 < 5);
  CHECK(has("job went: exit"));
  CHECK(mk_host_exit_status(h) == 7 && mk_host_exited(h) == 1);
  CHECK(mk_vm_nprocs(mk_host_vm(h)) == 0);
  mk_host_free(h);
  /* From a Lua process, with status 0: exited, all the same. */
  h = stop_host("once");
  CHECK(mk_host_spawn_string(h, "local m = require 'market'; m.perform(m.exit(0))", "exit0", 0,
                             NULL) != 0);
  CHECK(mk_host_run(h) == MK_OK);
  CHECK(has("job went: exit"));
  CHECK(mk_host_exit_status(h) == 0 && mk_host_exited(h) == 1);
  mk_host_free(h);
  /* From a native handler, stepping. */
  h = stop_host("once");
  CHECK(mk_host_spawn_native(h, &exiter, h, "exiter") != 0);
  CHECK(mk_host_step(h) == 0);
  CHECK(has("job went: exit"));
  CHECK(mk_host_exit_status(h) == 9 && mk_host_exited(h) == 1);
  mk_host_free(h);
  /* A stop's deadline ends it first: an exit in the teardown changes nothing. */
  h = stop_host("once");
  CHECK(mk_host_spawn_string(h,
    "local m = require 'market'\n"
    "return m.transition(nil, m.subscriber('job', { on_absence = function()\n"
    "  return m.transition(nil, m.exit(4)) end }))", "late", 0, NULL) != 0);
  CHECK(mk_host_stop(h, 0) == MK_OK);
  CHECK(mk_host_run(h) == MK_OK);
  CHECK(has("job went: stopped: the drain time (0 ms) ran out"));
  CHECK(mk_host_exit_status(h) == 0 && mk_host_exited(h) == 0);
  mk_host_free(h);
}

/* Nothing in market dies of SIGPIPE: a host ignores it, unless the program
** chose otherwise. */
static void on_pipe(int sig) { (void)sig; }

static void sigpipe(void) {
  struct sigaction sa;
  mk_host *h;
  signal(SIGPIPE, SIG_DFL);
  h = newhost();
  CHECK(sigaction(SIGPIPE, NULL, &sa) == 0 && sa.sa_handler == SIG_IGN);
  mk_host_free(h);
  signal(SIGPIPE, on_pipe);
  h = newhost();
  CHECK(sigaction(SIGPIPE, NULL, &sa) == 0 && sa.sa_handler == on_pipe);
  mk_host_free(h);
  signal(SIGPIPE, SIG_IGN);
}


/* A loop outside (poll(2) here) drives a host: mk_host_pollfd shows what
** the processes watch, mk_host_timeout bounds the wait, mk_host_turn runs
** what came (docs/loops.md). */
static const char *outside_script =
  "local market = require 'market'\n"
  "local fd = math.tointeger(tonumber((...)))\n"
  "local busy = mk_turn_from_handler\n"
  "return market.transition(0,\n"
  "  market.subscriber(market.ground.alarm(math.floor(market.now()) + 50), {\n"
  "    on_message = function() note('alarm')\n"
  "      return market.transition(0, market.subscriber(market.ground.readable(fd), {\n"
  "        on_message = function()\n"
  "          note('readable: turn from a handler: ' .. busy())\n"
  "          return market.transition(0, market.quit())\n"
  "        end }))\n"
  "    end }))\n";

static mk_host *outside_host;

/* Lua: mk_turn_from_handler() -> the status mk_host_turn gives there */
static int l_turn_from_handler(lua_State *L) {
  lua_pushstring(L, mk_status_name(mk_host_turn(outside_host, 0)));
  return 1;
}

static void outside_loop(void) {
  mk_host *h = newhost();
  int fds[2], pfd, i;
  char path[64], target[64], fdarg[16];
  const char *argv[1] = { fdarg };
  ssize_t n;
  double t, t0;
  struct pollfd p;
  CHECK(mk_host_turn(NULL, 0) == MK_EINVAL);
  CHECK(mk_host_timeout(NULL) == -1 && mk_host_pollfd(NULL) == -1);
  CHECK(pipe(fds) == 0);
  snprintf(fdarg, sizeof fdarg, "%d", fds[0]);
  outside_host = h;
  lua_pushcfunction(mk_host_lua(h), l_turn_from_handler);
  lua_setglobal(mk_host_lua(h), "mk_turn_from_handler");
  CHECK(mk_host_spawn_string(h, outside_script, "waiter", 1, argv) == 1);
  CHECK(mk_host_timeout(h) == 0);              /* its boot is queued */
  /* libev's backend: an epoll instance, asked of libev once. */
  pfd = mk_host_pollfd(h);
  CHECK(pfd >= 0 && mk_host_pollfd(h) == pfd);
  snprintf(path, sizeof path, "/proc/self/fd/%d", pfd);
  n = readlink(path, target, sizeof target - 1);
  CHECK(n > 0 && (target[n] = 0, strcmp(target, "anon_inode:[eventpoll]") == 0));
  CHECK(mk_host_turn(h, 0) == 1);              /* booted: the alarm is set */
  t = mk_host_timeout(h);
  CHECK(t >= 0 && t <= 0.05);
  p.fd = pfd;
  p.events = POLLIN;
  CHECK(poll(&p, 1, 0) == 0);                  /* nothing ready yet */
  /* A bounded turn waits for about that long when nothing comes. */
  t0 = ev_time();
  CHECK(mk_host_turn(h, 0.01) == 1);
  CHECK(ev_time() - t0 >= 0.009 && ev_time() - t0 < 5);
  /* Wait as a loop outside would: the alarm is due first. */
  for (i = 0; i < 100 && !has("alarm"); i++) {
    t = mk_host_timeout(h);
    CHECK(poll(&p, 1, t < 0 ? 5000 : (int)ceil(t * 1000)) >= 0);
    CHECK(mk_host_turn(h, 0) == 1);
  }
  CHECK(has("alarm") && !has("readable"));
  /* The alarm went, and its handler watched the pipe: that watch, made in
  ** the turn, was handed to the kernel before the turn ended.  What is
  ** left to time is the audit of watched descriptors. */
  t = mk_host_timeout(h);
  CHECK(t >= 0 && t <= 1.0);
  /* The pipe: the backend descriptor becomes readable, the turn delivers. */
  CHECK(write(fds[1], "x", 1) == 1);
  CHECK(poll(&p, 1, 5000) == 1 && (p.revents & POLLIN));
  CHECK(mk_host_turn(h, 0) == 0);              /* it read, then quit: done */
  CHECK(has("readable: turn from a handler: MK_EBUSY"));
  CHECK(mk_host_timeout(h) == -1);
  mk_host_free(h);
  close(fds[0]);
  close(fds[1]);
}

/* ---- snapshots ------------------------------------------------------------ */

static const mk_snap_proc *snap_named(const mk_snap_vm *s, const char *name) {
  size_t i;
  for (i = 0; i < s->nprocs; i++)
    if (s->procs[i].name && strcmp(s->procs[i].name, name) == 0) return &s->procs[i];
  return NULL;
}

static void snap_boot(mk_proc *self, void *ud) {
  mk_term *t = mk_cstr("news");
  (void)ud;
  mk_add_subscriber(self, "in", t);
  mk_unref(t);
}

static void snapshots(void) {
  static const mk_native listener = { snap_boot, NULL, NULL, NULL, NULL, NULL };
  size_t base = mk_term_live(), i;
  mk_host *h = newhost();
  mk_snap_vm *s;
  const mk_snap_proc *pub, *nat, *box, *inner;
  mk_pid npid;
  char *json;
  int conv = 0;
  CHECK(mk_host_spawn_string(h,
    "local market = require 'market'\n"
    "return market.transition(nil, market.publisher('news', {name = 'out'}),\n"
    "  market.nested_vm(function()\n"
    "    return market.transition(nil, market.spawn(function()\n"
    "      return market.transition(nil, market.at_meta_level(\n"
    "        market.subscriber('news', {name = 'up'})))\n"
    "    end, {name = 'inner'}))\n"
    "  end, {name = 'box'}))\n", "pub", 0, NULL) != 0);
  npid = mk_host_spawn_native(h, &listener, NULL, "listener");
  CHECK(npid != 0);
  while (mk_host_step(h) > 0) {}
  s = mk_host_snapshot(h);
  CHECK(s != NULL && strcmp(s->path, "ground") == 0 && s->pid == 0);
  pub = snap_named(s, "pub");
  nat = snap_named(s, "listener");
  box = snap_named(s, "box");
  CHECK(pub && nat && box);
  if (pub && nat && box) {
    CHECK(strcmp(pub->kind, "lua") == 0 && pub->activations >= 1);
    CHECK(pub->nendpoints == 1 && strcmp(pub->endpoints[0].name, "out") == 0);
    CHECK(pub->endpoints[0].role.orientation == MK_PUBLISHER);
    CHECK(strcmp(mk_tostring(pub->endpoints[0].role.topic, NULL), "news") == 0);
    CHECK(strcmp(nat->kind, "native") == 0 && nat->activations == -1 && nat->pid == npid);
    CHECK(strcmp(box->kind, "nested-vm") == 0 && box->vm != NULL);
    inner = box->vm ? snap_named(box->vm, "inner") : NULL;
    CHECK(inner != NULL && inner->nendpoints == 1 && inner->endpoints[0].level == 1);
    CHECK(box->vm && box->vm->pid == box->pid && box->vm->nconvs == 0);
    /* the publisher's conversations: the native subscriber and the one
    ** the nested VM holds for "inner" */
    for (i = 0; i < s->nconvs; i++) {
      const mk_snap_conv *c = &s->convs[i];
      if (&s->procs[c->pub_proc] != pub) continue;
      if (&s->procs[c->sub_proc] == nat && c->sub_endpoint == 0) conv |= 1;
      if (&s->procs[c->sub_proc] == box) conv |= 2;
    }
    CHECK(conv == 3);
  }
  mk_snapshot_free(s);
  mk_snapshot_free(NULL);
  CHECK(mk_host_snapshot(NULL) == NULL);
  json = mk_host_snapshot_json(h);
  CHECK(json != NULL);
  if (json) {
    CHECK(strstr(json, "\"path\":\"ground\"") != NULL);
    CHECK(strstr(json, "\"kind\":\"native\",\"name\":\"listener\"") != NULL);
    free(json);
  }
  mk_host_free(h);
  CHECK(mk_term_live() == base);
}

/* ---- the inspector ---------------------------------------------------------- */

static char inspect_url[128], inspect_why[256];

static void inspect_told(mk_host *h, const char *url, const char *why, void *ud) {
  CHECK(ud == &inspect_url);
  CHECK((url == NULL) != (why == NULL));
  if (url) snprintf(inspect_url, sizeof inspect_url, "%s", url);
  if (why) {
    snprintf(inspect_why, sizeof inspect_why, "%s", why);
    mk_host_exit(h, 1);
  }
}

static void inspector(void) {
  size_t base = mk_term_live();
  mk_host *a, *b;
  char again[64];
  int port = 0, i;
  CHECK(mk_host_inspect(NULL, "0", NULL, NULL) == MK_EINVAL);
  a = newhost();
  CHECK(mk_host_inspect(a, NULL, NULL, NULL) == MK_EINVAL);
  CHECK(mk_host_inspect(a, "nope", inspect_told, &inspect_url) == MK_EINVAL);
  CHECK(strcmp(mk_host_error(a), "bad address \"nope\": want [HOST:]PORT, PORT 0..65535 (0: any)") == 0);
  /* The inspector's Lua failing is MK_ELUA, not a bad address. */
  CHECK(luaL_dostring(mk_host_lua(a), "package.loaded['market.inspect'], saved_inspect = "
                      "{ parse_address = function() return true end }, "
                      "package.loaded['market.inspect']") == LUA_OK);
  CHECK(mk_host_inspect(a, "0", inspect_told, &inspect_url) == MK_ELUA);
  CHECK(strstr(mk_host_error(a), "mk_host_inspect: ") == mk_host_error(a));
  CHECK(luaL_dostring(mk_host_lua(a), "package.loaded['market.inspect'] = saved_inspect") == LUA_OK);
  /* Listening: the URL, told from the loop. */
  inspect_url[0] = inspect_why[0] = 0;
  CHECK(mk_host_inspect(a, "127.0.0.1:0", inspect_told, &inspect_url) == MK_OK);
  for (i = 0; i < 500 && inspect_url[0] == 0; i++) mk_host_turn(a, 0.01);
  CHECK(sscanf(inspect_url, "http://127.0.0.1:%d/", &port) == 1 && port > 0);
  /* A second inspector on that port is told why not, and its host ends. */
  b = newhost();
  snprintf(again, sizeof again, "127.0.0.1:%d", port);
  CHECK(mk_host_inspect(b, again, inspect_told, &inspect_url) == MK_OK);
  CHECK(mk_host_run(b) == MK_OK);
  CHECK(strstr(inspect_why, "address already in use") != NULL);
  CHECK(mk_host_exit_status(b) == 1);
  mk_host_free(b);
  /* The first one stops with its program. */
  CHECK(mk_host_stop(a, 0) == MK_OK);
  CHECK(mk_host_run(a) == MK_OK);
  mk_host_free(a);
  CHECK(mk_term_live() == base);
}

/* Detail mode from the host: the fields are set only while it is on, the
** nested VM takes it, and the messages are counted exactly. */
static void detail(void) {
  static const mk_native listener = { snap_boot, NULL, NULL, NULL, NULL, NULL };
  size_t base = mk_term_live(), i;
  mk_host *h = newhost();
  mk_snap_vm *s;
  const mk_snap_proc *pub, *nat, *box;
  char *json;
  const char *at;
  int found = 0;
  CHECK(mk_host_inspect_detail(NULL, 1) == MK_EINVAL);
  CHECK(mk_host_inspect_detail(h, 1) == 0);
  CHECK(mk_host_inspect_detail(h, 1) == 1);
  CHECK(mk_host_spawn_native(h, &listener, NULL, "listener") != 0);
  CHECK(mk_host_spawn_string(h,
    "local market = require 'market'\n"
    "local t = {}\n"
    "for i = 1, 1000 do t[i] = {i} end\n"
    "return market.transition(t, market.publisher('news', {name = 'out'}),\n"
    "  market.send('news'), market.send('news'), market.send('news'),\n"
    "  market.nested_vm(function() return market.transition(nil, market.subscriber('x')) end,\n"
    "    {name = 'box'}))\n", "pub", 0, NULL) != 0);
  while (mk_host_step(h) > 0) {}
  s = mk_host_snapshot(h);
  CHECK(s != NULL && s->detail == 1);
  pub = snap_named(s, "pub");
  nat = snap_named(s, "listener");
  box = snap_named(s, "box");
  CHECK(pub && nat && box);
  if (pub && nat && box) {
    CHECK(pub->cpu_ms > 0 && pub->memory > 16000);       /* 1,000 tables, held */
    CHECK(nat->memory > 0 && nat->memory < pub->memory);  /* its records only */
    CHECK(box->vm != NULL && box->vm->detail == 1);
    for (i = 0; i < s->nconvs; i++) {
      const mk_snap_conv *c = &s->convs[i];
      if (&s->procs[c->pub_proc] == pub && &s->procs[c->sub_proc] == nat) {
        CHECK(c->messages == 3);
        found = 1;
      }
    }
    CHECK(found);
  }
  mk_snapshot_free(s);
  json = mk_host_snapshot_json(h);
  CHECK(json != NULL && strstr(json, "\"messages\":3") != NULL && strstr(json, "\"cpu_ms\"") != NULL);
  free(json);
  CHECK(mk_host_inspect_detail(h, 0) == 1);
  s = mk_host_snapshot(h);
  CHECK(s != NULL && s->detail == 0 && s->convs[0].messages == 0);
  mk_snapshot_free(s);
  json = mk_host_snapshot_json(h);
  CHECK(json != NULL && strstr(json, "\"messages\"") == NULL && strstr(json, "\"cpu_ms\"") == NULL);
  /* no process's "memory" (a number); the snapshot's own, the memory
  ** limit's count (an object), stays */
  for (at = json; at != NULL && (at = strstr(at, "\"memory\":")) != NULL; at += 9) CHECK(at[9] == '{');
  free(json);
  mk_host_free(h);
  CHECK(mk_term_live() == base);
}

/* ---- a Lua state another host made ------------------------------------- */

/* A strict allocator, as another host's may be: each block carries the
** size it was lent for, and every free or resize must name that size.
** Counts the blocks out and the calls that named another size. */
static long strict_live, strict_wrong;
typedef struct { size_t n; size_t pad; } strict_hdr;

static void *strict_alloc(void *ud, void *ptr, size_t osize, size_t nsize) {
  strict_hdr *h = ptr ? (strict_hdr *)ptr - 1 : NULL;
  (void)ud;
  if (h != NULL && h->n != osize) strict_wrong++;
  if (nsize == 0) {
    if (h != NULL) { strict_live--; free(h); }
    return NULL;
  }
  h = realloc(h, sizeof *h + nsize);
  if (h == NULL) return NULL;
  if (ptr == NULL) strict_live++;
  h->n = nsize;
  return h + 1;
}

/* Lua: which() -> "strict" while the state's allocator is the host's
** own, "over" while it is another (the cache in front of it: pool.h,
** mk_pool_over). */
static int l_which(lua_State *L) {
  lua_pushstring(L, lua_getallocf(L, NULL) == strict_alloc ? "strict" : "over");
  return 1;
}

int luaopen_market(lua_State *L);

/* A state on strict_alloc with the standard libraries, market loaded and
** the global fname calling fn; NULL (checked) when out of memory. */
static lua_State *strict_state(const char *fname, lua_CFunction fn) {
  lua_State *L;
  strict_live = strict_wrong = 0;
  L = lua_newstate(strict_alloc, NULL);
  CHECK(L != NULL);
  if (L == NULL) return NULL;
  luaL_openlibs(L);
  luaL_requiref(L, "market", luaopen_market, 0);
  lua_pop(L, 1);
  lua_register(L, fname, fn);
  return L;
}

/* Close L: every block went back to strict_alloc, as the size it lent. */
static void strict_close(lua_State *L) {
  lua_close(L);
  CHECK(strict_wrong == 0);
  CHECK(strict_live == 0);
}

/* While a ground VM runs on a state with an allocator of its own, the Lua
** blocks its processes free are kept in front of that allocator for the
** next of their size; afterwards the allocator is the host's again, and
** every block went back to it as the size it lent (docs/performance.md,
** "Sustained spawns"). */
static void foreign_allocator(void) {
  static const char script[] =
    "local market = require 'market'\n"
    "local _ = market._\n"
    "local r = market.record('over-t', 'i', 's')\n"
    "local seen = {}\n"
    "local ok, err = market.ground_vm(function()\n"
    "  seen[1] = which()\n"
    "  local spawn, pids = market.spawn(function(pid)\n"
    "    local pad = ('x'):rep(pid % 200)\n"
    "    return market.transition(pad, market.subscriber(r(pid, _),\n"
    "      { name = 'in', on_message = function() end }))\n"
    "  end), {}\n"
    "  for w = 1, 3 do\n"
    "    for i = 1, 2000 do pids[i] = market.perform(spawn) end\n"
    "    market.pause()\n"
    "    for i = 1, 2000 do market.perform(market.quit(pids[i])) end\n"
    "    market.pause()\n"
    "    collectgarbage()\n"
    "  end\n"
    "  seen[2] = which()\n"
    "end)\n"
    "assert(ok, err)\n"
    "seen[3] = which()\n"
    "return table.concat(seen, ' ')\n";
  lua_State *L = strict_state("which", l_which);
  if (L == NULL) return;
  CHECK(luaL_dostring(L, script) == LUA_OK);
  if (MK_SANITIZED) CHECK(strcmp(lua_tostring(L, -1), "strict strict strict") == 0);
  else CHECK(strcmp(lua_tostring(L, -1), "over over strict") == 0);
  strict_close(L);
}

/* An allocator a module puts in front of whatever the state had, as a
** profiler may: it passes every call on. */
static lua_Alloc front_f;
static void *front_ud;
static void *front_alloc(void *ud, void *ptr, size_t osize, size_t nsize) {
  (void)ud;
  return front_f(front_ud, ptr, osize, nsize);
}

static int l_front(lua_State *L) {
  front_f = lua_getallocf(L, &front_ud);
  lua_setallocf(L, front_alloc, NULL);
  return 0;
}

/* One installed while the VM runs stays: the cache stays behind it,
** passing every call on, and every block still reaches the host's
** allocator as the size it lent. */
static void foreign_allocator_wrapped(void) {
  static const char script[] =
    "local market = require 'market'\n"
    "assert(market.ground_vm(function()\n"
    "  local t = {}\n"
    "  for i = 1, 1000 do t[i] = { i } end\n"
    "  t = nil\n"
    "  collectgarbage()\n"
    "  front()\n"
    "  for i = 1, 1000 do t = { i } end\n"
    "end))\n"
    "local t = {}\n"
    "for i = 1, 1000 do t[i] = { i } end\n";
  lua_State *L = strict_state("front", l_front);
  if (L == NULL) return;
  CHECK(luaL_dostring(L, script) == LUA_OK);
  CHECK(lua_getallocf(L, NULL) == front_alloc);
  strict_close(L);
}

/* Spawns from a handler while mk_host_free ends every process are refused
** (mk_vm_kill_all): 0 and MK_EBUSY, and on_exit is not called for a
** process that never was.  mk_host_subscribe freed its state twice then
** (the refused spawn's on_exit freed it, then the failed spawn's cleanup),
** and no error was set. */
static int late_codes[6], late_exits;
static mk_host *late_host;
static void late_exit_fn(mk_proc *self, void *ud) { late_exits++; }
static void late_msg(mk_host *h, mk_term *m, void *ud) {}
static void late_exit(mk_proc *self, void *ud) {
  mk_host *h = late_host;
  p_exit(self, ud);
  static const mk_native quiet = { NULL, NULL, NULL, NULL, NULL, late_exit_fn };
  mk_term *t = mk_cstr("late");
  late_codes[0] = mk_host_subscribe(h, t, late_msg, NULL) == 0 ? mk_host_errcode(h) : MK_OK;
  late_codes[1] = mk_host_spawn_native(h, &quiet, NULL, "late") == 0 ? mk_host_errcode(h) : MK_OK;
  late_codes[2] = mk_host_spawn_string(h, "return 1", "late", 0, NULL) == 0 ? mk_host_errcode(h) : MK_OK;
  late_codes[3] = strstr(mk_host_error(h), "ending every process") != NULL;
  /* The inspector too, whether or not the drivers run (before, the
  ** refused spawn went unsaid: MK_OK, and no inspector ever told fn). */
  late_codes[4] = mk_host_inspect(h, "127.0.0.1:0", NULL, NULL);
  late_codes[5] = strstr(mk_host_error(h), "ending every process") != NULL;
  mk_unref(t);
}
static void spawn_while_ending(void) {
  size_t base = mk_term_live();
  static const mk_native late = { p_boot, NULL, NULL, NULL, NULL, late_exit };
  int drivers;
  for (drivers = 0; drivers < 2; drivers++) {
    mk_host *h = newhost();
    probe a = { "a", NULL, NULL, 0, 0, 0, NULL };
    a.sub = mk_cstr("t");
    memset(late_codes, 0, sizeof late_codes);
    late_exits = 0;
    late_host = h;
    if (drivers) CHECK(mk_host_start_drivers(h) == MK_OK);
    CHECK(mk_host_spawn_native(h, &late, &a, "a") != 0);
    CHECK(mk_host_run(h) == MK_OK);
    mk_host_free(h);                 /* a's on_exit runs in it */
    CHECK(a.exits == 1);
    CHECK(late_codes[0] == MK_EBUSY && late_codes[1] == MK_EBUSY && late_codes[2] == MK_EBUSY);
    CHECK(late_codes[3] == 1);
    CHECK(late_codes[4] == MK_EBUSY && late_codes[5] == 1);
    CHECK(late_exits == 0);
  }
  CHECK(mk_term_live() == base);
}

/* A watcher of the program's own on the host's loop, served while
** mk_host_run runs it, is no place to free the host or run it again:
** refused with MK_EBUSY (the free was a use after free under ASan). */
static mk_host *watcher_host;
static int watcher_codes[2];
static void watcher_frees(struct ev_loop *loop, ev_timer *w, int revents) {
  ev_timer_stop(loop, w);
  mk_host_free(watcher_host);
  watcher_codes[0] = mk_host_errcode(watcher_host);
  watcher_codes[1] = mk_host_run(watcher_host);
}
static void free_from_watcher(void) {
  struct ev_loop *loop = ev_loop_new(0);
  mk_error err;
  ev_timer t;
  watcher_host = mk_host_new(loop, &err);
  CHECK(watcher_host != NULL && mk_host_start_drivers(watcher_host) == MK_OK);
  mk_host_spawn_string(watcher_host, "local m = require 'market'\n"
    "require('market.timer').sleep(50)", "sleeper", 0, NULL);
  ev_timer_init(&t, watcher_frees, 0.01, 0);
  ev_timer_start(loop, &t);
  watcher_codes[0] = watcher_codes[1] = 0;
  CHECK(mk_host_run(watcher_host) == MK_OK);
  CHECK(watcher_codes[0] == MK_EBUSY && watcher_codes[1] == MK_EBUSY);
  mk_host_free(watcher_host);
  ev_loop_destroy(loop);
}

/* ---- messages in text (json.h, mk_text_escaped) ------------------------- */

/* Whether text (n bytes) is safe in a line: no control byte but tabs,
** and newlines (with breaks) each followed by a tab; every other byte part
** of a UTF-8 character that is no C1 control. */
static int safe_text(const char *text, size_t n, int breaks) {
  const unsigned char *u = (const unsigned char *)text;
  size_t i = 0;
  while (i < n) {
    size_t len = 1, k;
    if (u[i] == '\n') {
      if (!breaks || i + 1 >= n || u[i + 1] != '\t') return 0;
    } else if (u[i] < 0x20 ? u[i] != '\t' : u[i] == 0x7f) {
      return 0;
    } else if (u[i] >= 0x80) {
      /* the second byte's range for each lead byte: no overlong form, no
      ** surrogate, nothing past U+10FFFF, no C1 control (RFC 3629) */
      unsigned lo = 0x80, hi = 0xbf;
      len = u[i] > 0xf4 ? 0 : u[i] >= 0xf0 ? 4 : u[i] >= 0xe0 ? 3 : u[i] >= 0xc2 ? 2 : 0;
      if (u[i] == 0xc2) lo = 0xa0;
      if (u[i] == 0xe0) lo = 0xa0;
      if (u[i] == 0xed) hi = 0x9f;
      if (u[i] == 0xf0) lo = 0x90;
      if (u[i] == 0xf4) hi = 0x8f;
      if (len == 0 || i + len > n || u[i + 1] < lo || u[i + 1] > hi) return 0;
      for (k = 2; k < len; k++) if ((u[i + k] & 0xc0) != 0x80) return 0;
    }
    i += len;
  }
  return 1;
}

static void text_escaped(void) {
  static const struct { const char *in, *out; } cases[] = {
    {"plain text, caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80\ttab \\ back", NULL},
    {"one\ntwo", "one\n\ttwo"},
    {"one\r\ntwo\n", "one\n\ttwo\n\t"},
    {"over\rwrite", "over\\rwrite"},
    {"\x1b[2J\x01\x7f", "\\x1b[2J\\x01\\x7f"},
    {"c1 \xc2\x9b and \xc2\xa0", "c1 \\xc2\\x9b and \xc2\xa0"},
    {"bad \xff \xc0\xaf \xed\xa0\x80 cut \xe2\x82", "bad \\xff \\xc0\\xaf \\xed\\xa0\\x80 cut \\xe2\\x82"},
  };
  unsigned char buf[64];
  size_t i, j;
  unsigned seed = 12345;
  for (i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    char *t = mk_text_escaped(cases[i].in, strlen(cases[i].in));
    if (cases[i].out == NULL) CHECK(t == NULL);
    else CHECK(t != NULL && strcmp(t, cases[i].out) == 0);
    free(t);
  }
  {   /* a NUL inside is a control byte like the others */
    char *t = mk_text_escaped("a\0b", 3);
    CHECK(t != NULL && strcmp(t, "a\\x00b") == 0);
    free(t);
  }
  {   /* past MK_TEXT_MAX bytes, a message is cut, never inside a
      ** character or a CR LF, and says how much more it had */
    size_t n = MK_TEXT_MAX + 100000, k;
    char *big = malloc(n), *t, want[64];
    CHECK(big != NULL);
    if (big == NULL) return;
    memset(big, 'x', n);
    t = mk_text_escaped(big, n);
    snprintf(want, sizeof want, " ... (%zu bytes more)", n - MK_TEXT_MAX);
    CHECK(t != NULL && strlen(t) == MK_TEXT_MAX + strlen(want) &&
          strcmp(t + MK_TEXT_MAX, want) == 0 && t[MK_TEXT_MAX - 1] == 'x');
    free(t);
    /* the limit inside a 4-byte character, at each of its bytes */
    for (k = 1; k <= 3; k++) {
      memset(big, 'x', n);
      memcpy(big + MK_TEXT_MAX - k, "\xf0\x9f\x98\x80", 4);
      t = mk_text_escaped(big, n);
      snprintf(want, sizeof want, " ... (%zu bytes more)", n - (MK_TEXT_MAX - k));
      CHECK(t != NULL && strlen(t) == MK_TEXT_MAX - k + strlen(want) &&
            strcmp(t + MK_TEXT_MAX - k, want) == 0 && safe_text(t, strlen(t), 0));
      free(t);
    }
    /* and between a CR and its LF */
    memset(big, 'x', n);
    memcpy(big + MK_TEXT_MAX - 1, "\r\n", 2);
    t = mk_text_escaped(big, n);
    CHECK(t != NULL && strstr(t, "\\r") == NULL && t[MK_TEXT_MAX - 2] == 'x' &&
          strncmp(t + MK_TEXT_MAX - 1, " ... (", 6) == 0);
    free(t);
    /* exactly MK_TEXT_MAX bytes: whole, nothing to change */
    memset(big, 'x', n);
    CHECK(mk_text_escaped(big, MK_TEXT_MAX) == NULL);
    free(big);
  }
  {   /* a name: at most MK_NAME_MAX bytes, escaped, never cut inside a
      ** character */
    char name[MK_NAME_MAX + 100], *t;
    memset(name, 'n', sizeof name - 1);
    name[sizeof name - 1] = '\0';
    t = mk_name_escaped(name);
    CHECK(t != NULL && strlen(t) == MK_NAME_MAX + strlen(" ... (99 bytes more)") &&
          strcmp(t + MK_NAME_MAX, " ... (99 bytes more)") == 0);
    free(t);
    memcpy(name + MK_NAME_MAX - 1, "\xc3\xa9", 2);
    name[0] = '\n';
    t = mk_name_escaped(name);
    CHECK(t != NULL && strncmp(t, "\\nnn", 4) == 0 &&
          strcmp(t + 1 + MK_NAME_MAX - 1, " ... (100 bytes more)") == 0);
    free(t);
    name[MK_NAME_MAX] = '\0';            /* MK_NAME_MAX bytes: whole */
    name[0] = 'n';
    CHECK(mk_name_escaped(name) == NULL);
  }
  /* Every byte, every pair of bytes but those led by NUL, and random
  ** strings of up to 63 bytes drawn from the bytes that matter: the text
  ** is safe, and nothing to change means the string was safe already,
  ** with no line break. */
  for (i = 0; i < 65536 + 200000; i++) {
    size_t n;
    char *t;
    if (i < 65536) {
      n = i < 256 ? 1 : 2;
      buf[0] = (unsigned char)(n == 1 ? i : i >> 8);
      buf[1] = (unsigned char)i;
    } else {
      static const unsigned char pick[] = {'a', ' ', '\t', '\n', '\r', 0, 0x1b, 0x7f, 0x80, 0x9b,
                                           0xbf, 0xc2, 0xc3, 0xe2, 0xed, 0xf0, 0xf4, 0xff};
      seed = seed * 1103515245u + 12345u;
      n = (seed >> 16) % sizeof buf;
      for (j = 0; j < n; j++) {
        seed = seed * 1103515245u + 12345u;
        buf[j] = pick[(seed >> 16) % sizeof pick];
      }
    }
    t = mk_text_escaped((const char *)buf, n);
    if (t == NULL) CHECK(safe_text((const char *)buf, n, 0));
    else CHECK(safe_text(t, strlen(t), 1) && !safe_text((const char *)buf, n, 0));
    free(t);
    if (check_failed_now) break;
  }
}

int main(void) {
  RUN(text_escaped);
  RUN(new_and_free);
  RUN(boxes_released);
  RUN(spawn_errors);
  RUN(spawn_buffer);
  RUN(worker_env);
  RUN(lua_and_native);
  RUN(terms_across);
  RUN(subscribe);
  RUN(failure);
  RUN(crash_reports);
  RUN(budget);
  RUN(teardown);
  RUN(spawn_while_ending);
  RUN(busy);
  RUN(continuations);
  RUN(own_loop_step);
  RUN(free_from_watcher);
  RUN(trace);
  RUN(callbacks_busy);
  RUN(trace_cannot_kill);
  RUN(log_callback_spawns);
  RUN(two_hosts_not_nested);
  RUN(finalizer_after_free);
  RUN(trace_opts);
  RUN(trace_file_kept);
  RUN(warnings);
  RUN(warnings_nested);
  RUN(logging);
  RUN(logging_host_in_process);
  RUN(deep_lua);
  RUN(stop_on_signals);
  RUN(stop_two_hosts);
  RUN(stop_from_host);
  RUN(exit_program);
  RUN(sigpipe);
  RUN(outside_loop);
  RUN(snapshots);
  RUN(inspector);
  RUN(detail);
  RUN(foreign_allocator);
  RUN(foreign_allocator_wrapped);
  return CHECK_DONE();
}

/*
** host.c: market.h, the embedding interface: a ground VM plus the Lua
** state of its Lua processes, native C processes, and term helpers.
**
** Every Lua call made here runs protected (lua_pcall of a small C
** function), so a Lua error becomes a status and a message, never a panic.
** Nothing here prints or exits.
*/
#include <ev.h>
#include <math.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <lualib.h>

#include "json.h"
#include "mkl.h"
#include "pool.h"

/* The generational collector's multipliers (percent) of the state a host
** makes (host_make): a minor collection each GEN_MINOR percent of the
** heap allocated, a major one once the heap has grown by GEN_MAJOR. */
#define GEN_MINOR 2
#define GEN_MAJOR 300
/* ... and minor collections at least this far apart (lproc.c, young_floor). */
#define YOUNG_FLOOR_KB 32

struct mk_host {
  struct ev_loop *loop;
  mk_ground *g;              /* owned; NULL once mk_host_free has ended it */
  lua_State *L;
  uint8_t own_loop, own_L, drivers, freeing;
  int code;                 /* last error */
  char *msg;                /* owned, or NULL */
  char *failure;            /* owned: first unreported process failure */
  mk_failure_fn on_failure;
  void *failure_ud;
  mk_log_fn on_log;         /* NULL: stderr (llog.c) */
  void *log_ud;
  mk_crash_fn on_crash;     /* NULL: print (mk_crash_format) */
  void *crash_ud;
  unsigned long crashes;
  mk_warning_fn on_warning;
  void *warning_ud;
  mk_trace_fn on_trace;     /* NULL: no trace set with mk_host_trace */
  void *trace_ud;
  char *warning;            /* owned: a warning being assembled, or NULL */
  size_t warnlen;
  int warnpieces;
};

/* Native handlers and the host program's callbacks (failure, crash, log,
** warning, trace) running now (any host; market is single-threaded): run,
** step and free are refused from inside one, whose caller still uses the
** host when it returns. */
static int native_depth;

/* Hosts whose run, step or turn is on the stack now: a watcher of the
** program's own that a loop serves may not free a host or run one again
** (busy), nor run a second host, which on a shared loop would serve the
** first one's watchers (its VM mid-delivery) again. */
static int running_hosts;

/* Trace callbacks running now: each is called in the middle of a change
** to the VM (vm.c traces an add before the endpoint is in the index, a
** delete before it is out), where a kill would free the endpoint under
** the change: mk_host_kill is refused. */
static int trace_depth;

const char *mk_version(void) { return MK_VERSION_STRING; }
const char *mk_lua_release(void) { return LUA_RELEASE; }

const char *mk_status_name(int code) {
  switch (code) {
    case MK_OK: return "MK_OK";
    case MK_ENOMEM: return "MK_ENOMEM";
    case MK_EINVAL: return "MK_EINVAL";
    case MK_ELOOP: return "MK_ELOOP";
    case MK_EIO: return "MK_EIO";
    case MK_ELUA: return "MK_ELUA";
    case MK_ENOPROC: return "MK_ENOPROC";
    case MK_EFAILED: return "MK_EFAILED";
    case MK_EBUSY: return "MK_EBUSY";
    default: return "?";
  }
}

/* ---- errors ------------------------------------------------------------- */

/* Record an error on h and return its code (so: return seterr(...)). */
static int seterr(mk_host *h, int code, const char *fmt, ...) {
  va_list ap;
  free(h->msg);
  va_start(ap, fmt);
  h->msg = mkl_vformat(fmt, ap);
  va_end(ap);
  h->code = code;
  return code;
}

static void fillerr(mk_error *err, int code, const char *fmt, ...) {
  va_list ap;
  if (err == NULL) return;
  err->code = code;
  va_start(ap, fmt);
  vsnprintf(err->message, sizeof err->message, fmt, ap);
  va_end(ap);
}

const char *mk_host_error(const mk_host *h) {
  if (h == NULL) return "no host (NULL)";
  if (h->msg == NULL) return h->code == MK_ENOMEM ? "out of memory" : "";
  return h->msg;
}

int mk_host_errcode(const mk_host *h) { return h ? h->code : MK_EINVAL; }

/* Any host's handler, callback or run is on the stack, or any Lua process
** runs (mkl_busy: whatever its state): run, step, turn and free are
** refused, as market.h says, whichever host they are called for. */
static int busy(mk_host *h) {
  return native_depth > 0 || running_hosts > 0 || mkl_busy();
}

int mkl_host_busy(void) { return busy(NULL); }

/* h's ground is gone: mk_host_free has ended it and now closes the Lua
** state, whose finalizers may still call the host (through C functions
** the program registered).  What would reach the ground is refused. */
static int ended(mk_host *h, const char *what) {
  if (h->g != NULL) return 0;
  seterr(h, MK_EBUSY, "%s: the host is being freed", what);
  return 1;
}

/* The status of a failed lua_pcall, recorded with the message on top of
** h->L (popped). */
static int luaerr(mk_host *h, int status, int code, const char *what) {
  const char *m = lua_tostring(h->L, -1);
  if (status == LUA_ERRMEM) code = MK_ENOMEM;
  seterr(h, code, "%s%s%s", what, what[0] ? ": " : "", m ? m : "(error object is not a string)");
  lua_pop(h->L, 1);
  return code;
}

/* A spawn the ground VM refused: it is ending every process (mk_host_free,
** an exit, a stop's end; mk_vm_kill_all), and a handler that runs
** meanwhile spawning would keep it going.  The error, and 0 for the pid. */
static mk_pid halting(mk_host *h, const char *what) {
  seterr(h, MK_EBUSY, "%s: the ground VM is ending every process (mk_host_free, an exit, "
         "a stop): no spawn is taken", what);
  return 0;
}

/* ---- process failures --------------------------------------------------- */

/* The endpoints of a failing process, gathered for its report. */
typedef struct eplist {
  mk_crash_endpoint *ep;     /* owned; names and roles borrowed */
  size_t n, max;
  int nomem;
} eplist;

static void gather(void *ud, const char *name, int level, const mk_role *role) {
  eplist *l = ud;
  if (l->n == l->max) {
    size_t max = l->max ? 2 * l->max : 8;
    mk_crash_endpoint *ep = max < SIZE_MAX / sizeof *ep ? realloc(l->ep, max * sizeof *ep) : NULL;
    if (ep == NULL) { l->nomem = 1; return; }
    l->ep = ep;
    l->max = max;
  }
  l->ep[l->n].name = name;
  l->ep[l->n].level = level;
  l->ep[l->n].role = *role;
  l->n++;
}

/* Append to *buf (length *len, owned, NULL after a failure) what fmt
** makes. */
static void append(char **buf, size_t *len, const char *fmt, ...) {
  va_list ap;
  char *more, *grown;
  size_t n;
  if (*buf == NULL) return;
  va_start(ap, fmt);
  more = mkl_vformat(fmt, ap);
  va_end(ap);
  n = more ? strlen(more) : 0;
  grown = more ? realloc(*buf, *len + n + 1) : NULL;
  if (grown == NULL) {
    free(*buf);
    *buf = NULL;
  } else {
    memcpy(grown + *len, more, n + 1);
    *buf = grown;
    *len += n;
  }
  free(more);
}

char *mk_crash_format(const mk_crash *c) {
  size_t len = 0, i;
  char *s = calloc(1, 1), *name, *message;
  if (c == NULL) return s;
  /* Names with their control bytes escaped, the reason as a message is
  ** in a log line (json.h): neither a name nor an error made of what a
  ** peer sent can add lines to the report or drive a terminal. */
  name = c->name ? mk_name_escaped(c->name) : NULL;
  message = mk_text_escaped(c->message, strlen(c->message));
  append(&s, &len, "market: %s #%llu%s%s failed: %s\n", c->vm, (unsigned long long)c->pid,
         c->name ? " " : "", name ? name : c->name ? c->name : "",
         message ? message : c->message);
  free(name);
  free(message);
  if (c->traceback) append(&s, &len, "%s\n", c->traceback);
  append(&s, &len, c->nendpoints ? "endpoints:\n" : "endpoints: none\n");
  for (i = 0; i < c->nendpoints; i++) {
    const mk_crash_endpoint *e = &c->endpoints[i];
    char *topic = mk_repr_max(e->role.topic, MK_REPR_SHOWN, NULL);
    char level[32] = "";
    if (e->level > 0) snprintf(level, sizeof level, " (%d up)", e->level);
    name = mk_name_escaped(e->name);
    append(&s, &len, "\t%s%s: %s %s %s\n", name ? name : e->name, level,
           mk_orientation_name(e->role.orientation), mk_interest_name(e->role.interest),
           topic ? topic : "?");
    free(name);
    free(topic);
  }
  return s;
}

static void print_crash(const mk_crash *c) {
  char *text = mk_crash_format(c);
  if (text == NULL) {
    fprintf(stderr, "market: %s #%llu failed (out of memory for its report)\n", c->vm,
            (unsigned long long)c->pid);
    return;
  }
  fputs(text, stderr);
  free(text);
}

/* mkl_fail_fn: p is failing (lproc.c, crashed).  Its report goes to the
** host's callback or stderr; a boot process's reason and traceback are
** the failure mk_host_run and mk_host_step return. */
static void failed(void *ud, mk_proc *p, mk_term *reason, const char *traceback, int boot) {
  mk_host *h = ud;
  mk_crash c;
  eplist eps = { NULL, 0, 0, 0 };
  char *shown = NULL;
  if (h->freeing) return;
  c.vm = mk_vm_path(mk_proc_vm(p));
  c.pid = mk_proc_pid(p);
  c.name = mk_proc_name(p);
  c.reason = reason;
  /* A string as it is, unless a NUL in it would cut it short: shown then. */
  if (reason != NULL && reason->kind == MK_STR && strlen(mk_strdata(reason)) == reason->n)
    c.message = mk_strdata(reason);
  else c.message = shown = reason ? mk_repr_max(reason, MK_REPR_SHOWN, NULL) : NULL;
  if (c.message == NULL) c.message = reason ? "(out of memory)" : "(no reason)";
  c.traceback = traceback;
  c.boot = boot;
  mk_proc_each_endpoint(p, gather, &eps);
  c.endpoints = eps.ep;
  c.nendpoints = eps.n;
  /* The callbacks run inside the VM's run, as handlers do: run, step and
  ** free are refused from them (busy). */
  native_depth++;
  if (boot) {
    char *tb = traceback ? mkl_format("%s\n%s", c.message, traceback) : strdup(c.message);
    if (h->failure == NULL && tb != NULL) h->failure = strdup(tb);
    if (h->on_failure && tb != NULL) h->on_failure(h, c.pid, c.name, tb, h->failure_ud);
    free(tb);
  }
  h->crashes++;
  if (h->on_crash != NULL) h->on_crash(h, &c, h->crash_ud);
  else print_crash(&c);
  native_depth--;
  free(eps.ep);
  free(shown);
}

void mk_host_on_crash(mk_host *h, mk_crash_fn fn, void *ud) {
  if (h == NULL) return;
  h->on_crash = fn;
  h->crash_ud = ud;
}

unsigned long mk_host_crashes(const mk_host *h) { return h ? h->crashes : 0; }

/* After run or step: a failure not yet reported becomes the last error. */
static int report(mk_host *h) {
  if (h->failure == NULL) return MK_OK;
  free(h->msg);
  h->msg = h->failure;
  h->failure = NULL;
  h->code = MK_EFAILED;
  return MK_EFAILED;
}

void mk_host_on_failure(mk_host *h, mk_failure_fn fn, void *ud) {
  if (h == NULL) return;
  h->on_failure = fn;
  h->failure_ud = ud;
}

/* ---- logging ------------------------------------------------------------ */

static void logged(void *ud, int level, const char *line) {
  mk_host *h = ud;
  native_depth++;
  h->on_log(h, level, line, h->log_ud);
  native_depth--;
}

void mk_host_on_log(mk_host *h, mk_log_fn fn, void *ud) {
  if (h == NULL) return;
  h->on_log = fn;
  h->log_ud = ud;
  mkl_log_set_sink(h->L, fn ? logged : NULL, h);
}

int mk_host_set_log_level(mk_host *h, int level) {
  if (h == NULL) return MK_EINVAL;
  if (mkl_log_set_level(h->L, level) != 0)
    return seterr(h, MK_EINVAL, "mk_host_set_log_level: %d is not a level", level);
  return MK_OK;
}

int mk_host_log(mk_host *h, int level, const char *message) {
  if (h == NULL) return MK_EINVAL;
  if (level < MK_LOG_ERROR || level > MK_LOG_DEBUG || message == NULL)
    return seterr(h, MK_EINVAL, "mk_host_log: a level out of range, or no message");
  mkl_log(h->L, NULL, level, NULL, message);
  return MK_OK;
}

/* ---- warnings ----------------------------------------------------------- */

/* An error outside any protected call (luaL_newstate's panic function). */
static int panicf(lua_State *L) {
  const char *msg = lua_tostring(L, -1);
  fprintf(stderr, "market: unprotected Lua error: %s\n", msg ? msg : "(not a string)");
  return 0;   /* Lua then aborts */
}

/* Lua's warning function for a host's own state: assemble the pieces of
** one warn() call and hand the line to the host's callback, if any. */
static void warnf(void *ud, const char *msg, int tocont) {
  mk_host *h = ud;
  size_t n = strlen(msg);
  int control;
  char *w = realloc(h->warning, h->warnlen + n + 1);
  if (w != NULL) {
    memcpy(w + h->warnlen, msg, n + 1);
    h->warning = w;
    h->warnlen += n;
  }
  h->warnpieces++;
  if (tocont) return;
  /* The line is taken out of h before the callback runs: a warning raised
  ** inside it (lua_warning on mk_host_lua, a finalizer that warns) came
  ** here again, appended to the same buffer and freed it, while the outer
  ** callback still read its message. */
  w = h->warning;
  control = h->warnpieces == 1 && w != NULL && w[0] == '@';
  h->warning = NULL;
  h->warnlen = 0;
  h->warnpieces = 0;
  if (w != NULL && h->on_warning != NULL && !h->freeing && !control) {
    native_depth++;
    h->on_warning(h, w, h->warning_ud);
    native_depth--;
  }
  free(w);
}

void mk_host_on_warning(mk_host *h, mk_warning_fn fn, void *ud) {
  if (h == NULL) return;
  h->on_warning = fn;
  h->warning_ud = ud;
}

/* ---- life --------------------------------------------------------------- */

static void preload(lua_State *L, const char *name, lua_CFunction f) {
  luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_PRELOAD_TABLE);
  lua_pushcfunction(L, f);
  lua_setfield(L, -2, name);
  lua_pop(L, 1);
}

/* Protected: open a fresh state's libraries and load "market". */
static int p_setup(lua_State *L) {
  luaL_openlibs(L);
  preload(L, "market", luaopen_market);
  preload(L, "market.timer", luaopen_market_timer);
  preload(L, "market.tcp", luaopen_market_tcp);
  preload(L, "market.udp", luaopen_market_udp);
  preload(L, "market.stdio", luaopen_market_stdio);
  preload(L, "market.event_relay", luaopen_market_event_relay);
  preload(L, "market.cluster", luaopen_market_cluster);
  preload(L, "market.supervisor", luaopen_market_supervisor);
  preload(L, "market.http", luaopen_market_http);
  preload(L, "market.inspect", luaopen_market_inspect);
  preload(L, "market.repl", luaopen_market_repl);
  lua_getglobal(L, "require");
  lua_pushliteral(L, "market");
  lua_call(L, 1, 0);
  return 0;
}

/* Nothing in market dies of SIGPIPE (market.h): a write to a peer that
** went away is that connection's error (EPIPE), and a warning written to a
** closed stderr is lost, not the end of a server. */
static void ignore_sigpipe(void) {
  struct sigaction sa;
  if (sigaction(SIGPIPE, NULL, &sa) != 0) return;
  if ((sa.sa_flags & SA_SIGINFO) || sa.sa_handler != SIG_DFL) return;   /* someone's choice */
  sa.sa_handler = SIG_IGN;
  sigaction(SIGPIPE, &sa, NULL);
}

static mk_host *host_make(lua_State *L, struct ev_loop *loop, mk_error *err) {
  mk_host *h = calloc(1, sizeof *h);
  int st;
  if (h == NULL) { fillerr(err, MK_ENOMEM, "out of memory"); return NULL; }
  ignore_sigpipe();
  if (loop == NULL) {
    loop = ev_loop_new(EVFLAG_AUTO);
    if (loop == NULL) {
      fillerr(err, MK_ELOOP, "libev cannot create an event loop");
      free(h);
      return NULL;
    }
    h->own_loop = 1;
  }
  h->loop = loop;
  if (L == NULL) {
    /* Lua's small objects come from the block cache too (pool.h). */
    L = lua_newstate(mk_pool_lalloc, NULL);
    if (L == NULL) { fillerr(err, MK_ENOMEM, "cannot create a Lua state: out of memory"); goto fail; }
    /* Generational collection: a process's garbage (boxes, the tables of
    ** actions and transitions) dies young, and is then freed while still
    ** in the cache; the incremental collector freed it cold, a sweep
    ** later.  bench/echo: 0.35 us less CPU per round trip, 10% of the
    ** user time.  A script may still choose collectgarbage("incremental").
    ** A major collection comes once the heap has grown to four times what
    ** the last one left (GEN_MAJOR; Lua's default is twice): a program
    ** that keeps spawning and killing makes old garbage, the processes of
    ** a wave having grown old before they die, and only a major collection
    ** frees that.  Ten waves of 100,000 spawns and kills ran 1.2 times as
    ** fast; messages, echo's round trips (their garbage is young, freed by
    ** minor collections as before) and the memory of an idle process or
    ** connection did not move.  The price is old garbage held: up to three
    ** times the live heap before a major collection frees it, and a major
    ** collection, when it comes, sweeps that much more (docs/performance.md,
    ** "Sustained spawns, round 7").  A minor collection comes each 2% of
    ** the heap allocated (GEN_MINOR; Lua's default is 20%), so that the
    ** young garbage is swept, and its blocks, the terms its boxes let go
    ** included, are reused while they are still in the cache: the Lua heap
    ** of 10,000 idle connections is only a few MiB, and at 20% the round
    ** trips between two collections touched several MiB of other memory.
    ** echo.lua at 10,000 connections missed a 1 MiB cache 28 times per
    ** round trip instead of 54 (at 1,000, 24 instead of 35).  It needs the
    ** full collection once a crowd of processes has gone (below,
    ** mkl_collect_drops): without it the heap stays at the crowd's size,
    ** and so does each minor collection, too often then for the p999
    ** (docs/performance.md, "Young garbage swept while in the cache").
    ** In a small heap 2% is a few KiB, and each minor collection has a
    ** fixed part: they are kept YOUNG_FLOOR_KB apart at least
    ** (mkl_young_floor, below).  One nearly due is made between slices of
    ** deliveries, not inside a handler (mkl_attach: lproc.c, settle_gc). */
    lua_gc(L, LUA_GCGEN, GEN_MINOR, GEN_MAJOR);
    h->L = L;
    h->own_L = 1;
    lua_atpanic(L, panicf);
    lua_setwarnf(L, warnf, h);
    lua_pushcfunction(L, p_setup);
    if ((st = lua_pcall(L, 0, 0, 0)) != LUA_OK) {
      const char *m = lua_tostring(L, -1);
      fillerr(err, st == LUA_ERRMEM ? MK_ENOMEM : MK_ELUA, "cannot load the market module: %s",
              m ? m : "?");
      goto fail;
    }
  }
  h->L = L;
  h->g = mk_ground_new(loop);
  if (h->g == NULL) { fillerr(err, MK_ENOMEM, "cannot create the ground VM: out of memory"); goto fail; }
  if (mkl_attach(L, h->g) != 0) {
    fillerr(err, MK_EINVAL, "this Lua state already runs a ground VM");
    goto fail;
  }
  mkl_on_fail(L, failed, h);
  if (h->own_L) {                             /* the collector set above */
    mkl_collect_drops(L, 1);
    mkl_young_floor(L, GEN_MINOR, YOUNG_FLOOR_KB);
  }
  fillerr(err, MK_OK, "%s", "");
  return h;
fail:
  if (h->g) mk_ground_free(h->g, NULL);
  if (h->own_L && h->L) lua_close(h->L);
  if (h->own_loop) ev_loop_destroy(h->loop);
  free(h);
  return NULL;
}

mk_host *mk_host_new(struct ev_loop *loop, mk_error *err) {
  return host_make(NULL, loop, err);
}

mk_host *mkl_host_new(lua_State *L, struct ev_loop *loop, mk_error *err) {
  if (L == NULL) { fillerr(err, MK_EINVAL, "no Lua state"); return NULL; }
  return host_make(L, loop, err);
}

void mk_host_free(mk_host *h) {
  if (h == NULL) return;
  if (busy(h)) { seterr(h, MK_EBUSY, "mk_host_free: called from inside a handler"); return; }
  h->freeing = 1;
  mk_ground_free(h->g, NULL);      /* every process sees the others go */
  h->g = NULL;                     /* ended: for finalizers that call us */
  /* At once: what follows may allocate in Lua (mkl_trace_end), and so run
  ** a finalizer, whose market.snapshot or market.now read the freed ground
  ** while the state still named it. */
  mkl_detach(h->L);
  mkl_trace_end(h->L);             /* no tracer is left to write to its file */
  mkl_on_fail(h->L, NULL, NULL);
  if (h->on_log) mkl_log_set_sink(h->L, NULL, NULL);   /* the state may outlive h */
  if (h->own_L) lua_close(h->L);
  mk_pool_trim();
  if (h->own_loop) ev_loop_destroy(h->loop);
  free(h->msg);
  free(h->failure);
  free(h->warning);
  free(h);
}

struct ev_loop *mk_host_loop(mk_host *h) { return h ? h->loop : NULL; }
mk_ground *mk_host_ground(mk_host *h) { return h ? h->g : NULL; }
mk_vm *mk_host_vm(mk_host *h) { return h && h->g ? mk_ground_vm(h->g) : NULL; }
struct lua_State *mk_host_lua(mk_host *h) { return h ? h->L : NULL; }

/* The VMs call this for the host program's trace function: one call
** deeper, so that the function cannot free the host under the VM. */
static void traced(void *ud, const char *line) {
  mk_host *h = ud;
  native_depth++;
  trace_depth++;
  h->on_trace(h->trace_ud, line);
  trace_depth--;
  native_depth--;
}

void mk_host_trace(mk_host *h, mk_trace_fn fn, void *ud) {
  if (h == NULL || ended(h, "mk_host_trace")) return;
  h->on_trace = fn;
  h->trace_ud = ud;
  mk_vm_set_trace(mk_ground_vm(h->g), fn ? traced : NULL, fn ? h : NULL);
}

int mk_host_trace_opts(mk_host *h, const mk_trace_opts *opts) {
  int rc;
  if (h == NULL) return MK_EINVAL;
  if (ended(h, "mk_host_trace_opts")) return MK_EBUSY;
  rc = mk_vm_set_trace_opts(mk_ground_vm(h->g), opts);
  if (rc == -1) return seterr(h, MK_EINVAL, "mk_host_trace_opts: an array NULL with a count, or unknown kind bits");
  if (rc != 0) return seterr(h, MK_ENOMEM, "mk_host_trace_opts: out of memory");
  return MK_OK;
}

int mk_host_set_max_activation(mk_host *h, double ms) {
  if (h == NULL || !(ms >= 0))      /* NaN too */
    return h ? seterr(h, MK_EINVAL, "the activation budget must be a number of ms >= 0") : MK_EINVAL;
  if (ended(h, "mk_host_set_max_activation")) return MK_EBUSY;
  mk_vm_set_budget(mk_ground_vm(h->g), ms);
  return MK_OK;
}

/* ---- Lua processes ------------------------------------------------------ */

static const char *const driver_names[] = {"timer", "tcp", "udp", NULL};

/* Protected: require each built-in driver and spawn its `driver`. */
static int p_drivers(lua_State *L) {
  mk_host *h = lua_touserdata(L, 1);
  const char *const *d;
  char name[32];
  for (d = driver_names; *d; d++) {
    if (!mkl_builtin(*d)) continue;
    lua_getglobal(L, "require");
    lua_pushfstring(L, "market.%s", *d);
    lua_call(L, 1, 1);
    lua_getfield(L, -1, "driver");
    if (lua_type(L, -1) != LUA_TFUNCTION)
      return luaL_error(L, "market.%s has no driver function", *d);
    snprintf(name, sizeof name, "%s-driver", *d);
    if (mkl_spawn(L, mk_ground_vm(h->g), name, 0) == 0)  /* pops the driver function */
      return 0;                                 /* refused: the VM is ending (halting) */
    lua_settop(L, 1);
  }
  lua_pushboolean(L, 1);
  return 1;
}

int mk_host_start_drivers(mk_host *h) {
  int st;
  if (h == NULL) return MK_EINVAL;
  if (ended(h, "mk_host_start_drivers")) return MK_EBUSY;
  if (h->drivers) return MK_OK;
  lua_pushcfunction(h->L, p_drivers);
  lua_pushlightuserdata(h->L, h);
  if ((st = lua_pcall(h->L, 1, 1, 0)) != LUA_OK) return luaerr(h, st, MK_ELUA, "starting the drivers");
  st = lua_toboolean(h->L, -1);
  lua_pop(h->L, 1);
  if (!st) {       /* not marked started: none runs */
    halting(h, "mk_host_start_drivers");
    return MK_EBUSY;
  }
  h->drivers = 1;
  return MK_OK;
}

/* ---- the inspector -------------------------------------------------------- */

/* What the inspector's on_listening closure calls back: a userdata, its
** upvalue, so that it lives as long as the closure. */
typedef struct inspect_cb { mk_host *h; mk_inspect_fn fn; void *ud; } inspect_cb;

static int inspect_told(lua_State *L) {
  inspect_cb *cb = lua_touserdata(L, lua_upvalueindex(1));
  if (cb->fn) cb->fn(cb->h, lua_tostring(L, 1), lua_tostring(L, 2), cb->ud);
  return 0;
}

/* Protected: the inspector's boot function, spawned in the ground VM. */
static int p_inspect(lua_State *L) {
  mk_host *h = lua_touserdata(L, 1);
  const char *addr = lua_tostring(L, 2);
  lua_getglobal(L, "require");
  lua_pushliteral(L, "market.inspect");
  lua_call(L, 1, 1);
  lua_getfield(L, -1, "parse_address");
  lua_pushstring(L, addr);
  lua_pushboolean(L, 1);                      /* to listen on: a numeric host */
  lua_call(L, 2, 2);
  if (lua_isnil(L, -2)) return 2;             /* a bad address: nil, its message */
  lua_pop(L, 2);
  lua_getfield(L, -1, "server");
  lua_pushstring(L, addr);
  lua_pushvalue(L, 3);
  lua_pushcclosure(L, inspect_told, 1);
  lua_call(L, 2, 1);
  lua_pushboolean(L, mkl_spawn(L, mk_ground_vm(h->g), "inspector", 0) != 0);
  return 1;                                   /* false: refused (halting) */
}

int mk_host_inspect(mk_host *h, const char *addr, mk_inspect_fn fn, void *ud) {
  inspect_cb *cb;
  int st;
  if (h == NULL) return MK_EINVAL;
  if (addr == NULL) return seterr(h, MK_EINVAL, "mk_host_inspect: no address");
  if ((st = mk_host_start_drivers(h)) != MK_OK) return st;
  lua_pushcfunction(h->L, p_inspect);
  lua_pushlightuserdata(h->L, h);
  lua_pushstring(h->L, addr);
  cb = lua_newuserdatauv(h->L, sizeof *cb, 0);
  cb->h = h;
  cb->fn = fn;
  cb->ud = ud;
  if ((st = lua_pcall(h->L, 3, 2, 0)) != LUA_OK) return luaerr(h, st, MK_ELUA, "mk_host_inspect");
  if (lua_isnil(h->L, -2)) {
    seterr(h, MK_EINVAL, "%s", lua_tostring(h->L, -1));
    st = MK_EINVAL;
  } else if (!lua_toboolean(h->L, -2)) {
    halting(h, "mk_host_inspect");
    st = MK_EBUSY;
  }
  lua_pop(h->L, 2);
  return st;
}

/* ---- snapshots ------------------------------------------------------------ */

mk_snap_vm *mk_host_snapshot(mk_host *h) {
  return h && h->g ? mk_vm_snapshot(mk_host_vm(h)) : NULL;
}

static int p_detail(lua_State *L) {
  lua_pushboolean(L, mkl_set_detail(L, (int)lua_toboolean(L, 1)));
  return 1;
}

int mk_host_inspect_detail(mk_host *h, int on) {
  int st, was;
  if (h == NULL) return MK_EINVAL;
  lua_pushcfunction(h->L, p_detail);
  lua_pushboolean(h->L, on);
  if ((st = lua_pcall(h->L, 1, 1, 0)) != LUA_OK) return luaerr(h, st, MK_ENOMEM, "mk_host_inspect_detail");
  was = lua_toboolean(h->L, -1);
  lua_pop(h->L, 1);
  return was;
}

static int p_snapshot_json(lua_State *L) {
  luaL_requiref(L, "market", luaopen_market, 0);
  lua_getfield(L, -1, "snapshot_json");
  lua_call(L, 0, 1);
  return 1;
}

char *mk_host_snapshot_json(mk_host *h) {
  const char *s;
  size_t n;
  char *copy;
  int st;
  if (h == NULL) return NULL;
  if (mkl_running(h->L)) {
    seterr(h, MK_EBUSY, "mk_host_snapshot_json: called while a Lua process runs");
    return NULL;
  }
  lua_pushcfunction(h->L, p_snapshot_json);
  if ((st = lua_pcall(h->L, 0, 1, 0)) != LUA_OK) {
    luaerr(h, st, MK_ELUA, "mk_host_snapshot_json");
    return NULL;
  }
  s = lua_tolstring(h->L, -1, &n);
  if ((copy = malloc(n + 1)) == NULL) seterr(h, MK_ENOMEM, "out of memory");
  else memcpy(copy, s, n + 1);
  lua_pop(h->L, 1);
  return copy;
}

typedef struct arg_req { int argc, zero; const char *const *argv; } arg_req;

static int p_set_arg(lua_State *L) {
  arg_req *r = lua_touserdata(L, 1);
  int i;
  lua_createtable(L, r->argc - r->zero, r->zero + 1);
  for (i = 0; i < r->argc; i++) {
    lua_pushstring(L, r->argv[i]);
    lua_rawseti(L, -2, (lua_Integer)i - r->zero);
  }
  lua_setglobal(L, "arg");
  return 0;
}

int mk_host_set_arg(mk_host *h, int argc, const char *const *argv, int zero) {
  arg_req r;
  int st;
  if (h == NULL) return MK_EINVAL;
  if (argc < 0 || (argc > 0 && argv == NULL) || zero < 0 || zero > argc)
    return seterr(h, MK_EINVAL, "mk_host_set_arg: bad argc, argv or zero");
  r.argc = argc;
  r.zero = zero;
  r.argv = argv;
  lua_pushcfunction(h->L, p_set_arg);
  lua_pushlightuserdata(h->L, &r);
  if ((st = lua_pcall(h->L, 1, 0, 0)) != LUA_OK) return luaerr(h, st, MK_ENOMEM, "mk_host_set_arg");
  return MK_OK;
}

typedef struct spawn_req {
  mk_host *h;
  const char *path, *code, *name, *mode;
  size_t len;             /* code's */
  int argc;
  const char *const *argv;
  int loadstatus;
  mk_pid pid;
} spawn_req;

/* The boot function of a chunk: function() return chunk(args...) end. */
static const char wrapper[] =
  "local unpack, chunk, args = table.unpack, ...\n"
  "return function() return chunk(unpack(args, 1, args.n)) end";

/* Protected: load the chunk, wrap it with its arguments, spawn it. */
static int p_spawn(lua_State *L) {
  spawn_req *r = lua_touserdata(L, 1);
  int i;
  r->loadstatus = r->path ? luaL_loadfilex(L, r->path, NULL)
                          : luaL_loadbufferx(L, r->code, r->len, lua_tostring(L, 2), r->mode);
  if (r->loadstatus != LUA_OK) return lua_error(L);
  if (luaL_loadbufferx(L, wrapper, sizeof wrapper - 1, "=market.spawn", "t") != LUA_OK)
    return lua_error(L);
  lua_insert(L, -2);
  lua_createtable(L, r->argc, 1);
  for (i = 0; i < r->argc; i++) {
    lua_pushstring(L, r->argv[i]);
    lua_rawseti(L, -2, (lua_Integer)i + 1);
  }
  lua_pushinteger(L, r->argc);
  lua_setfield(L, -2, "n");
  lua_call(L, 2, 1);
  r->pid = mkl_spawn(L, mk_ground_vm(r->h->g), r->name, 1);
  return 0;
}

static mk_pid spawn_lua(spawn_req *r) {
  mk_host *h = r->h;
  lua_State *L = h->L;
  int st;
  if (r->argc < 0 || (r->argc > 0 && r->argv == NULL)) {
    seterr(h, MK_EINVAL, "spawn: argc < 0, or argv NULL with argc > 0");
    return 0;
  }
  r->loadstatus = LUA_OK;
  lua_pushcfunction(L, p_spawn);
  lua_pushlightuserdata(L, r);
  if (r->path) lua_pushnil(L);
  else lua_pushfstring(L, "=%s", r->name);
  if ((st = lua_pcall(L, 2, 0, 0)) != LUA_OK) {
    int code = MK_ELUA;
    if (r->loadstatus == LUA_ERRFILE) code = MK_EIO;
    luaerr(h, st, code, "");
    return 0;
  }
  if (r->pid == 0) return halting(h, "spawn");
  return r->pid;
}

mk_pid mk_host_spawn_file(mk_host *h, const char *path, int argc, const char *const *argv) {
  spawn_req r;
  if (h == NULL || ended(h, "mk_host_spawn_file")) return 0;
  if (path == NULL) { seterr(h, MK_EINVAL, "mk_host_spawn_file: path is NULL"); return 0; }
  memset(&r, 0, sizeof r);
  r.h = h;
  r.path = path;
  r.name = path;
  r.argc = argc;
  r.argv = argv;
  return spawn_lua(&r);
}

mk_pid mk_host_spawn_buffer(mk_host *h, const char *code, size_t len, const char *name,
                            const char *mode, int argc, const char *const *argv) {
  spawn_req r;
  if (h == NULL || ended(h, "mk_host_spawn_buffer")) return 0;
  if (code == NULL) { seterr(h, MK_EINVAL, "mk_host_spawn_buffer: code is NULL"); return 0; }
  memset(&r, 0, sizeof r);
  r.h = h;
  r.code = code;
  r.len = len;
  r.mode = mode;
  r.name = name ? name : "(string)";
  r.argc = argc;
  r.argv = argv;
  return spawn_lua(&r);
}

mk_pid mk_host_spawn_string(mk_host *h, const char *code, const char *name,
                            int argc, const char *const *argv) {
  if (h == NULL) return 0;
  if (code == NULL) { seterr(h, MK_EINVAL, "mk_host_spawn_string: code is NULL"); return 0; }
  return mk_host_spawn_buffer(h, code, strlen(code), name, "t", argc, argv);
}

/* ---- native processes --------------------------------------------------- */

typedef struct native {
  mk_native on;
  void *ud;
  int born;        /* its spawn returned a pid: on_exit is owed.  A spawn
                   ** refused while the VM ends every process (mk_vm_spawn
                   ** destroys the data at once) made no process, and the
                   ** caller, told 0, still owns ud: no on_exit then. */
} native;

static void native_handle(mk_proc *p, const mk_event *ev) {
  native *n = mk_proc_data(p);
  native_depth++;
  switch (ev->type) {
    case MK_EV_BOOT:
      if (n->on.on_boot) n->on.on_boot(p, n->ud);
      break;
    case MK_EV_PRESENCE:
      if (n->on.on_presence) n->on.on_presence(p, n->ud, &ev->role, ev->endpoint);
      break;
    case MK_EV_ABSENCE:
      if (n->on.on_absence) n->on.on_absence(p, n->ud, &ev->role, ev->reason, ev->endpoint);
      break;
    case MK_EV_MESSAGE:
      if (n->on.on_message) n->on.on_message(p, n->ud, ev->message, ev->endpoint);
      break;
    case MK_EV_SPAWNED:
      if (n->on.on_continue) n->on.on_continue(p, n->ud, ev->cont, ev->pid);
      break;
    case MK_EV_RESUME:
      if (n->on.on_continue) n->on.on_continue(p, n->ud, ev->cont, 0);
      break;
    default:
      break;
  }
  native_depth--;
}

static void native_destroy(mk_proc *p) {
  native *n = mk_proc_data(p);
  if (n == NULL) return;
  if (n->born && n->on.on_exit) {
    native_depth++;
    n->on.on_exit(p, n->ud);
    native_depth--;
  }
  free(n);
}

/* Tokens are the host program's pointers: nothing to release. */
static const mk_behavior native_behavior = { "native", native_handle, NULL, native_destroy, NULL, 0, NULL, NULL };

static native *native_new(const mk_native *handlers, void *ud) {
  native *n = malloc(sizeof *n);
  if (n == NULL) return NULL;
  n->on = *handlers;
  n->ud = ud;
  n->born = 0;
  return n;
}

mk_pid mk_host_spawn_native(mk_host *h, const mk_native *handlers, void *ud, const char *name) {
  native *n;
  mk_pid pid;
  if (h == NULL || ended(h, "mk_host_spawn_native")) return 0;
  if (handlers == NULL) { seterr(h, MK_EINVAL, "mk_host_spawn_native: handlers is NULL"); return 0; }
  if ((n = native_new(handlers, ud)) == NULL) { seterr(h, MK_ENOMEM, "out of memory"); return 0; }
  if ((pid = mk_vm_spawn(mk_ground_vm(h->g), &native_behavior, n, name)) == 0)
    return halting(h, "mk_host_spawn_native");     /* n is freed */
  n->born = 1;
  return pid;
}

mk_pid mk_spawn_native(mk_proc *self, const mk_native *handlers, void *ud,
                       const char *name, void *token) {
  native *n;
  mk_pid pid;
  if (self == NULL || handlers == NULL || !mk_proc_alive(self)) return 0;
  if ((n = native_new(handlers, ud)) == NULL) return 0;
  if ((pid = mk_spawn(self, &native_behavior, n, name, token)) != 0) n->born = 1;
  return pid;
}

static int add_participant(mk_proc *self, const char *name, mk_term *topic, mk_orientation o) {
  mk_role role;
  role.orientation = o;
  role.interest = MK_PARTICIPANT;
  role.topic = topic;
  if (self == NULL || name == NULL || topic == NULL) return -1;
  return mk_add_endpoint(self, name, 0, role);
}

int mk_add_publisher(mk_proc *self, const char *name, mk_term *topic) {
  return add_participant(self, name, topic, MK_PUBLISHER);
}

int mk_add_subscriber(mk_proc *self, const char *name, mk_term *topic) {
  return add_participant(self, name, topic, MK_SUBSCRIBER);
}

/* ---- messages from the host --------------------------------------------- */

int mk_host_send(mk_host *h, mk_term *body) {
  if (h == NULL) return MK_EINVAL;
  if (ended(h, "mk_host_send")) return MK_EBUSY;
  if (body == NULL) return seterr(h, MK_EINVAL, "mk_host_send: body is NULL");
  mk_vm_send(mk_ground_vm(h->g), body, 0);
  return MK_OK;
}

int mk_host_feedback(mk_host *h, mk_term *body) {
  if (h == NULL) return MK_EINVAL;
  if (ended(h, "mk_host_feedback")) return MK_EBUSY;
  if (body == NULL) return seterr(h, MK_EINVAL, "mk_host_feedback: body is NULL");
  mk_vm_send(mk_ground_vm(h->g), body, 1);
  return MK_OK;
}

typedef struct subscription {
  mk_host *h;
  mk_term *topic;
  mk_message_fn fn;
  void *ud;
} subscription;

static void sub_boot(mk_proc *self, void *ud) {
  subscription *s = ud;
  mk_add_subscriber(self, "subscribe", s->topic);
}

static void sub_message(mk_proc *self, void *ud, mk_term *message, const char *endpoint) {
  subscription *s = ud;
  s->fn(s->h, message, s->ud);
}

static void sub_exit(mk_proc *self, void *ud) {
  subscription *s = ud;
  mk_unref(s->topic);
  free(s);
}

static const mk_native sub_handlers = {
  sub_boot, NULL, NULL, sub_message, NULL, sub_exit
};

mk_pid mk_host_subscribe(mk_host *h, mk_term *topic, mk_message_fn fn, void *ud) {
  subscription *s;
  mk_pid pid;
  if (h == NULL || ended(h, "mk_host_subscribe")) return 0;
  if (topic == NULL || fn == NULL) {
    seterr(h, MK_EINVAL, "mk_host_subscribe: topic or fn is NULL");
    return 0;
  }
  if ((s = malloc(sizeof *s)) == NULL) { seterr(h, MK_ENOMEM, "out of memory"); return 0; }
  s->h = h;
  s->topic = mk_ref(topic);
  s->fn = fn;
  s->ud = ud;
  pid = mk_host_spawn_native(h, &sub_handlers, s, "subscribe");
  if (pid == 0) { mk_unref(s->topic); free(s); }
  return pid;
}

int mk_host_kill(mk_host *h, mk_pid pid, mk_term *reason) {
  if (h == NULL) return MK_EINVAL;
  if (ended(h, "mk_host_kill")) return MK_EBUSY;
  if (trace_depth > 0)
    return seterr(h, MK_EBUSY, "mk_host_kill: not from a trace callback (the VM is in the "
                  "middle of the change the line tells)");
  if (mk_vm_kill(mk_ground_vm(h->g), pid, reason) != 0)
    return seterr(h, MK_ENOPROC, "no process %llu in the ground VM", (unsigned long long)pid);
  return MK_OK;
}

/* ---- stopping ----------------------------------------------------------- */

int mk_host_stop_on_signals(mk_host *h, double drain_ms) {
  if (h == NULL) return MK_EINVAL;
  if (ended(h, "mk_host_stop_on_signals")) return MK_EBUSY;
  if (mk_ground_stop_on_signals(h->g, drain_ms) != 0)
    return seterr(h, MK_EINVAL, isfinite(drain_ms) || drain_ms < 0
                  ? "mk_host_stop_on_signals: SIGINT or SIGTERM is watched on another event loop"
                  : "mk_host_stop_on_signals: the drain time is not a finite number of milliseconds");
  return MK_OK;
}

int mk_host_stop(mk_host *h, double drain_ms) {
  if (h == NULL) return MK_EINVAL;
  if (ended(h, "mk_host_stop")) return MK_EBUSY;
  mk_ground_stop(h->g, drain_ms);
  return MK_OK;
}

int mk_host_exit_status(const mk_host *h) {
  return h && h->g ? mk_ground_exit_status(h->g) : 0;
}

int mk_host_exit(mk_host *h, int status) {
  if (h == NULL) return MK_EINVAL;
  if (ended(h, "mk_host_exit")) return MK_EBUSY;
  if (status < 0 || status > 255)
    return seterr(h, MK_EINVAL, "mk_host_exit: the status must be 0..255, got %d", status);
  mk_ground_exit(h->g, status);
  return MK_OK;
}

int mk_host_exited(const mk_host *h) {
  return h && h->g ? mk_ground_exited(h->g) : 0;
}

/* ---- running ------------------------------------------------------------ */

int mk_host_run(mk_host *h) {
  if (h == NULL) return MK_EINVAL;
  if (ended(h, "mk_host_run")) return MK_EBUSY;
  if (busy(h)) return seterr(h, MK_EBUSY, "mk_host_run: called from inside a handler");
  running_hosts++;
  mk_ground_run(h->g);
  running_hosts--;
  /* What the processes killed at the end held in Lua (the drivers' sockets
  ** in market.sys userdata, closed by their finalisers) goes now, not at
  ** some later collection: after an exit (or a stop's deadline) a
  ** listener's port must refuse connections when the run returns. */
  lua_gc(h->L, LUA_GCCOLLECT, 0);
  return report(h);
}

int mk_host_step(mk_host *h) {
  int more;
  if (h == NULL) return MK_EINVAL;
  if (ended(h, "mk_host_step")) return MK_EBUSY;
  if (busy(h)) return seterr(h, MK_EBUSY, "mk_host_step: called from inside a handler");
  /* As mk_ground_step, but the loop is polled even when the ground
  ** watches nothing: the host's own watchers on it get their turn. */
  running_hosts++;
  mk_ground_deliver(h->g);
  ev_run(h->loop, EVRUN_NOWAIT);
  mk_ground_deliver(h->g);
  running_hosts--;
  more = mk_ground_watching(h->g) > 0 || !mk_vm_idle(mk_ground_vm(h->g));
  if (report(h) != MK_OK) return MK_EFAILED;
  return more ? 1 : 0;
}

int mk_host_turn(mk_host *h, double timeout) {
  int more;
  if (h == NULL) return MK_EINVAL;
  if (ended(h, "mk_host_turn")) return MK_EBUSY;
  if (busy(h)) return seterr(h, MK_EBUSY, "mk_host_turn: called from inside a handler");
  running_hosts++;
  more = mk_ground_turn(h->g, timeout);
  running_hosts--;
  if (report(h) != MK_OK) return MK_EFAILED;
  return more ? 1 : 0;
}

double mk_host_timeout(mk_host *h) { return h && h->g ? mk_ground_timeout(h->g) : -1; }
int mk_host_pollfd(mk_host *h) { return h && h->g ? mk_ground_pollfd(h->g) : -1; }

/* ---- terms -------------------------------------------------------------- */

mk_term *mk_record(const char *label, uint32_t n, ...) {
  mk_rtype *rt = label ? mk_rtype_get(label, strlen(label), n, NULL) : NULL;
  mk_term *t = rt ? mk_rec_new(rt) : NULL;
  uint32_t i;
  va_list ap;
  va_start(ap, n);
  for (i = 0; i < n; i++) {
    mk_term *it = va_arg(ap, mk_term *);
    if (t != NULL) mk_set(t, i, it);
    else mk_unref(it);
  }
  va_end(ap);
  if (rt != NULL) mk_rtype_unref(rt);
  return mk_seal(t);
}

int mk_is_record(const mk_term *t, const char *label, uint32_t arity) {
  return t != NULL && label != NULL && t->kind == MK_REC && t->n == arity &&
         strlen(label) == t->v.rt->labellen && memcmp(t->v.rt->label, label, t->v.rt->labellen) == 0;
}

const char *mk_record_label(const mk_term *t) {
  return t != NULL && t->kind == MK_REC ? t->v.rt->label : NULL;
}

mk_term *mk_field(const mk_term *t, uint32_t i) {
  if (t == NULL || (t->kind != MK_REC && t->kind != MK_SEQ) || i >= t->n) return NULL;
  return mk_items(t)[i];
}

mk_term *mk_field_named(const mk_term *t, const char *name) {
  int i;
  if (t == NULL || name == NULL || t->kind != MK_REC) return NULL;
  i = mk_rtype_field(t->v.rt, name);
  return i < 0 ? NULL : mk_items(t)[i];
}

const char *mk_tostring(const mk_term *t, size_t *len) {
  if (t == NULL || t->kind != MK_STR) return NULL;
  if (len) *len = t->n;
  return mk_strdata(t);
}

int mk_tointeger(const mk_term *t, int64_t *out) {
  if (t == NULL || t->kind != MK_INT) return 0;
  if (out) *out = t->v.i;
  return 1;
}

int mk_tonumber(const mk_term *t, double *out) {
  if (t == NULL) return 0;
  if (t->kind == MK_INT) { if (out) *out = (double)t->v.i; return 1; }
  if (t->kind == MK_FLOAT) { if (out) *out = t->v.f; return 1; }
  return 0;
}

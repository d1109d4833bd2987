/*
** mkl.h: the Lua binding's internal interface (lua/ only, not installed).
*/
#ifndef MKL_H
#define MKL_H

#include <stdarg.h>
#include <stdio.h>

#include <lua.h>
#include <lauxlib.h>

#include "market.h"

#define MKL_VERSION_STRING MK_VERSION_STRING

#define MKL_TERM_MT   "market.term"
#define MKL_RTYPE_MT  "market.rtype"

/* The block of the userdata at idx if it is `size` bytes long and ends
** with the pointer `brand`, else NULL.  The binding's userdata (boxes,
** record types, sends, transitions) end with the address of a static of
** the file that makes them: Lua code cannot write into a block, nor make a
** userdata of its own, so this tells them apart from any other value in
** two API calls, where a metatable comparison took five, and even when the
** debug library gave another userdata their metatable. */
static inline void *mkl_branded(lua_State *L, int idx, size_t size, const char *brand) {
  void *u = lua_touserdata(L, idx);
  if (u == NULL || lua_rawlen(L, idx) != size) return NULL;
  return *(const char **)((char *)u + size - sizeof brand) == brand ? u : NULL;
}

/* lterm.c */
/* Convert the Lua value at idx to a new term reference.  On failure returns
** NULL and pushes nothing; *err describes the problem (static text, valid
** until the next conversion: a term too deep or too large names the
** limit).  A box larger than the size limit is refused too (lterm.c, fits). */
mk_term *mkl_toterm(lua_State *L, int idx, const char **err);
/* The record ctor(f1, ..., fn), for the record constructor at 1 of L's
** stack and the fields above it, as a new reference without a box; raises
** as ctor(...) would. */
mk_term *mkl_torecord(lua_State *L);
/* As mkl_toterm, but raises a Lua error naming `what` on failure. */
mk_term *mkl_checkterm(lua_State *L, int idx, const char *what);
/* The term boxed at idx, borrowed, or NULL when it is not a term box, or
** holds a term larger than the size limit, which mkl_toterm refuses: so
** that callers who take boxes as they are and convert anything else give
** that error too. */
mk_term *mkl_testbox(lua_State *L, int idx);
/* Where the box at idx keeps its term (NULL there once its __gc has run),
** or NULL when it is no box.  The address holds as long as the box lives:
** a caller that keeps the box alive reads the term there again without an
** API call (lproc.c's shared box, once per delivery). */
mk_term *const *mkl_boxslot(lua_State *L, int idx);
/* Push t (borrowed) as a Lua value. */
void mkl_pushterm(lua_State *L, mk_term *t);
/* Push a new box holding t (steals the reference). */
void mkl_pushbox(lua_State *L, mk_term *t);
void mkl_open_terms(lua_State *L);   /* fields into the table at the top */
/* Let go of the string terms lterm.c keeps to spare copies: when the last
** Lua state with market open closes. */
void mkl_forget_strings(void);

/* An endpoint's tag (mk_tag_endpoint) as the binding sets it: which
** handlers its table held when it was added (laction.c computes it,
** lproc.c reads it).  Without MKL_TAG_KNOWN (a handler table with a
** metatable, or a meta-level endpoint) the table itself is consulted.
** MKL_TAG_REFUSES(bit): the handler is false, the endpoint takes no such
** event: dropped, even while straight-line code waits (not kept for
** market.yield()). */
#define MKL_TAG_KNOWN     1
#define MKL_TAG_MESSAGE   2
#define MKL_TAG_PRESENCE  4
#define MKL_TAG_ABSENCE   8
#define MKL_TAG_REFUSES(bit) ((bit) << 3)

/* A Lua process's context (market.lua's ctx): one table holding the
** handler tables of its endpoints under their names (strings), and its
** state at MKL_CTX_STATE (its boot function there until it boots); the
** handlers of its meta-level endpoints, by level, at MKL_CTX_METAS; at
** MKL_CTX_AT_RETURN, a function run in the process once its boot
** function has returned and what it returned is applied (sys.at_return:
** http.lua closes the connections it kept for the process's next
** request).  market.lua puts its other fields at the integer keys after
** these. */
#define MKL_CTX_STATE     1
#define MKL_CTX_METAS     2
#define MKL_CTX_AT_RETURN 3

/* laction.c */
void mkl_open_actions(lua_State *L); /* core.fastpath into the table at the top */
/* If the value at tr is a transition whose actions are all sends (or nil
** or false), apply it for p as market.lua's apply would: its state into p's
** context (the registry's ctxref), then its sends, while p lives; return
** 1.  Return 2 when it met another action all the same (the debug library
** can change a transition's actions after it was made), setting *first
** and *last to the positions (1-based) of the actions left to market.lua's
** rest.  Otherwise return 0, having done nothing (market.lua's apply has
** it all to do).  It raises no error but out of memory, so it may be
** called on a coroutine that has returned, outside any resume. */
int mkl_apply_sends(lua_State *L, int tr, int ctxref, mk_proc *p, int *first, int *last);

/* lproc.c */
void mkl_open_core(lua_State *L);    /* pushes the market.core table */
/* Spawn the Lua function at the top of L's stack (popped) as a process of
** vm, from outside any process.  Returns its pid.  Raises a Lua error when
** out of memory (call it protected).  mkl_spawn_boot flags the process as
** a boot process (its failure is recorded and reported, see below);
** mkl_spawn does so only when `report` is nonzero. */
mk_pid mkl_spawn_boot(lua_State *L, mk_vm *vm, const char *name);
mk_pid mkl_spawn(lua_State *L, mk_vm *vm, const char *name, int report);
/* Spawn the Lua function at the top of L's stack (popped) as a child of
** p, the running process (mkl_current(L) is p), as core.spawn does at
** level 0 without a continuation.  Returns its pid (0 when p is dying). */
mk_pid mkl_spawn_by(lua_State *L, mk_proc *p, const char *name);
/* Told when a process of a VM the state serves fails (mk_fail), before its
** endpoints go (mk_proc_each_endpoint lists them): the reason, and for a
** Lua process the traceback of the code that failed (market's own frames
** left out; NULL when there is none), both borrowed for the call; `boot`
** is 1 for a flagged (boot) process. */
typedef void (*mkl_fail_fn)(void *ud, mk_proc *p, mk_term *reason, const char *traceback,
                            int boot);
void mkl_on_fail(lua_State *L, mkl_fail_fn fn, void *ud);
/* The record box at idx, just sent by the running process as the term t,
** may be delivered as it is, instead of a new box for t (lproc.c). */
void mkl_share(lua_State *L, int idx, const mk_term *t);
/* mk_send for p, through the running Lua process's own match slot when p
** is that process (lproc.c). */
void mkl_send(mk_proc *p, mk_term *body);
/* The running process on L has died of an action it performed: yield its
** coroutine for good, or raise where it cannot yield and keep raising
** until it can (lproc.c).  For C functions that perform actions. */
int mkl_stop_dead(lua_State *L);
/* Nonzero while a Lua process of L is handling an event. */
int mkl_running(lua_State *L);
/* A Lua process runs now, in any state (host.c: a host is busy). */
int mkl_busy(void);
/* The process whose coroutine is L, while it handles an event, or NULL:
** for C functions that act on behalf of the calling process (the tcp
** driver spawns its native connection managers so).  NULL in a finaliser
** (__gc), which acts for no process (lproc.c, in_finaliser). */
mk_proc *mkl_current(lua_State *L);
/* Nonzero while the activation on L applies what its body returned,
** after which it ends: no code of the process's own runs after that
** transition's last action (laction.c, doadd; vm.h,
** mk_add_endpoint_tagged). */
int mkl_applying(lua_State *L);
/* Nonzero while what it applies is what a boot function returned. */
int mkl_applying_boot(lua_State *L);
/* Push the context (MKL_CTX_*) of the process mkl_current(L) names and
** return 1; 0, pushing nothing, when there is none. */
int mkl_pushctx(lua_State *L);
/* The function at idx as the running process's at-return function
** (MKL_CTX_AT_RETURN); 0 outside a process's own coroutine. */
int mkl_set_at_return(lua_State *L, int idx);
/* Make `vm` (a ground VM) host Lua processes on L.  Needed once per ground
** before mkl_spawn_boot.  Returns 0 or -1 when L already serves another.
** It sets g's settle hook (ground.h) to L's (minor collections between
** deliveries): mkl_detach is called once g is freed, which takes the hook
** with it; a state closed first takes it off itself. */
int mkl_attach(lua_State *L, mk_ground *g);
void mkl_detach(lua_State *L);
/* Have L collect fully once most of a crowd of its processes has ended
** (on: 1) or not (0, the default): for a state whose collector is
** generational (host.c; lproc.c, dropped). */
void mkl_collect_drops(lua_State *L, int on);
/* Keep L's minor collections (generational, set by the host: host.c) at
** minor percent of the heap allocated, but never closer than floor_kb
** KiB apart (lproc.c, young_floor); floor_kb 0: leave the multiplier
** alone (the default).  Stops for good once the program is seen to have
** chosen the incremental collector. */
void mkl_young_floor(lua_State *L, int minor, int floor_kb);

/* Close the value at idx (by its __close, a C function: a market.sys
** socket) when the process mkl_acting(L) names ends, however it ends;
** -1 when there is none (lproc.c, close_owned). */
int mkl_close_at_end(lua_State *L, int idx);

/* The process a Lua function running on L acts for: mkl_current(L), or,
** from a coroutine of the program's own inside an activation, the process
** whose activation runs; NULL outside any. */
mk_proc *mkl_acting(lua_State *L);

/* lmarket.c: the first of sonames (NULL-ended) that dlopen opens, kept
** loaded (RTLD_NODELETE: a host that unloads market must not unload what
** market's threads and OpenSSL's handlers still use); NULL when none
** opens, and why[0..n) says so: "cannot load WHAT (SONAME; Debian:
** apt-get install PACKAGE): dlerror's message".  For the libraries
** market opens when first needed (OpenSSL, libnats, libpsl), so that a
** program that does not use them does not load them at its start. */
void *mkl_dlopen(const char *const *sonames, const char *what, const char *package,
                 char *why, size_t n);
/* Function `name` of lib (which mkl_dlopen opened as `soname`) into *slot
** (a function pointer's object, written through void **, as POSIX's
** dlsym wants): 1; 0 when lib has none, and why[0..n) says so: "WHAT
** (SONAME) has no NAME". */
int mkl_dlsym(void *lib, const char *name, void **slot, const char *what, const char *soname,
              char *why, size_t n);

/* llog.c: logging (market.log; docs/inspect.md).  mkl_log logs `msg` at
** `level` (MK_LOG_*) as process p's (NULL: mkl_acting(L)'s), if the
** state's threshold lets it through and, for warnings and errors, the
** site `key` (NULL: none) is not over its rate; to the Lua sink, the C
** sink, or stderr.  It raises no Lua error (an error in the Lua sink is
** printed), so C code outside any protected call may use it. */
typedef void (*mkl_log_fn)(void *ud, int level, const char *line);
/* What printf would write, in a string the caller frees; NULL when out of
** memory. */
char *mkl_vformat(const char *fmt, va_list ap);
char *mkl_format(const char *fmt, ...);
/* prefix, then message as a log line shows a message (json.h,
** mk_text_escaped), then a newline, to f: for what market says about a
** sink or a callback that failed, outside the log. */
void mkl_text_line(FILE *f, const char *prefix, const char *message);
void mkl_log(lua_State *L, mk_proc *p, int level, const char *key, const char *msg);
void mkl_logf(lua_State *L, mk_proc *p, int level, const char *key, const char *fmt, ...);
int mkl_log_enabled(lua_State *L, int level);
void mkl_log_set_sink(lua_State *L, mkl_log_fn fn, void *ud);    /* fn NULL: stderr */
int mkl_log_set_level(lua_State *L, int level);                  /* -1: not a level */
void mkl_open_log(lua_State *L);     /* core.log* into the table at the top */
/* market.to_cbor and market.from_cbor into the table at the top (lcbor.c). */
void mkl_open_cbor(lua_State *L);
/* core.snapshot and core.snapshot_json into the table at the top (lsnap.c). */
void mkl_open_snapshot(lua_State *L);
/* Detail mode on or off for the ground VM L runs and its allocator
** (docs/inspect.md, "Detail mode"); returns the setting before.  Raises
** without a ground VM, or out of memory. */
int mkl_set_detail(lua_State *L, int on);
/* The ground VM is ending: detail's allocator wrapper, if any, goes. */
void mkl_unwrap_detail(lua_State *L);
/* The ground VM the Lua processes of L live under, or NULL (lproc.c). */
mk_ground *mkl_ground(lua_State *L);

/* ltrace.c */
void mkl_open_trace(lua_State *L); /* core.trace into the table at the top */
/* Set the trace of vm and the VMs in it from the Lua value at idx, as
** market.trace's argument (a table of options, true, false), in a
** protected call.  NULL, or why not (a string on the stack). */
const char *mkl_trace(lua_State *L, mk_vm *vm, int idx);
/* `path` created or truncated for trace lines, as fopen(path, "w"), but
** not waiting: a FIFO no one reads is an error (ENXIO).  NULL and errno. */
FILE *mkl_trace_file(const char *path);
/* The host is gone: close the file market.trace opened, forget the rest. */
void mkl_trace_end(lua_State *L);
/* Raise "who: no option KEY (list)" unless the table at index 1 has only
** keys among fields (NULL-terminated). */
void mkl_only_fields(lua_State *L, const char *who, const char *const *fields,
                     const char *list);

/* Lua modules compiled in (generated by lua/embed.lua): each one's source,
** and its bytecode dumped by the lua5.4 that built market, under the chunk
** name it is loaded with ("=market", "=market.tcp"). */
typedef struct mkl_source {
  const char *name, *chunk;
  const char *src; size_t len;
  const char *code; size_t codelen;
} mkl_source;
extern const mkl_source mkl_sources[];

/* lmarket.c */
int luaopen_market(lua_State *L);
int luaopen_market_timer(lua_State *L);
int luaopen_market_tcp(lua_State *L);
int luaopen_market_udp(lua_State *L);
int luaopen_market_stdio(lua_State *L);
int luaopen_market_event_relay(lua_State *L);
int luaopen_market_cluster(lua_State *L);
int luaopen_market_supervisor(lua_State *L);
int luaopen_market_http(lua_State *L);
int luaopen_market_repl(lua_State *L);
int luaopen_market_inspect(lua_State *L);
/* lhttp.c: push the HTTP parser table (http.request, http.response, and
** lws.c's WebSocket frames). */
void mkl_open_http(lua_State *L);
/* lws.c: add ws_accept, ws_key and ws_session to the table at the top. */
void mkl_open_ws(lua_State *L);
/* 1 when the Lua half of module `name` ("market", "timer", ...) is built in. */
int mkl_builtin(const char *name);

/* host.c: a host on an existing Lua state that has loaded "market" (the
** Lua module's market.ground_vm).  The host does not close L. */
mk_host *mkl_host_new(lua_State *L, struct ev_loop *loop, mk_error *err);
/* 1 while a host's run, step or turn, or a handler or callback of one (a
** crash report's on_crash), is on the stack: run, step, turn and free
** are refused (MK_EBUSY), whichever host they are called for. */
int mkl_host_busy(void);

#endif

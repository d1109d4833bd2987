/*
** market.h: the public C interface of market, for programs that embed it.
**
**   #include <market.h>          cc host.c $(pkg-config --cflags --libs market)
**
** A *host* is one ground VM (the root of a tree of VMs, DESIGN §1) together
** with the Lua state that runs its Lua processes.  A C program creates a
** host on its own libev loop or lets market make one, starts the standard
** drivers if it wants them, spawns Lua processes (from a file or a string)
** and native C processes, sends messages in and subscribes from C, runs the
** loop (or steps it without blocking), and frees the host, which ends every
** process (each one still sees the others' absence) and releases everything
** market allocated.  docs/embedding.md walks through a complete program
** (examples/embed/).
**
** This header includes the lower layers, which are public too:
**   term.h    terms: build and read topics and messages (ownership rules there)
**   vm.h      VMs, processes, endpoints, events, and the actions a process
**             performs while it handles an event (mk_send, mk_add_endpoint, ...)
**   ground.h  the ground VM on a libev loop and its ground events
**   route.h   the routing index (used by vm.h's types)
**   cbor.h    terms to CBOR and back, for the wire (docs/cluster.md)
**
** Conventions.
**
** - Errors.  Functions that can fail return an int status (MK_OK = 0, or a
**   negative mk_status) or, when they make a process, its pid (never 0) or 0
**   on failure.  The host keeps the last error: mk_host_errcode() gives its
**   status and mk_host_error() a readable message.  mk_host_new(), which
**   has no host to keep it in yet, fills an mk_error the caller passes.
** - Nothing here calls exit(), and only two things print: crash reports
**   (mk_host_on_crash) and log lines (mk_host_on_log) go to stderr unless
**   you give a function of yours.  The one exception to the first rule is
**   the out-of-memory policy of the VM core: when malloc fails inside the
**   VM (vm.c, nested.c), market writes "market: out of memory" to stderr
**   and calls abort(), as a process that cannot allocate cannot keep its
**   promises about presence and absence.  It fails there only after the
**   pool's cached blocks and then its reserve were given back (pool.h):
**   the reserve lets the event finish, and the process that was handling
**   it fails with "not enough memory".  Lua allocations that fail inside Lua
**   code are ordinary Lua errors (the process fails with "not enough
**   memory"); allocation failures this header can report are MK_ENOMEM.
**   libev aborts when its allocator fails: the market interpreter gives
**   it one that tries mk_pool_realloc (pool.h); a host of its own may do
**   the same with ev_set_allocator.
**   Tracing (mk_host_trace) and Lua's warn() (mk_host_on_warning) go to
**   functions of yours; market itself never writes them anywhere.
** - Ownership.  Terms passed *in* to the functions below are borrowed
**   unless it says "steals"; terms returned are new references unless it
**   says "borrowed" (see term.h).  Strings are copied when kept.
** - Threads.  market is single-threaded: terms are counted without atomics
**   and record types are interned in one table for the whole program.  A
**   program may hold several hosts, but all on the thread that uses market.
** - Re-entrancy.  Native handlers and Lua processes run from inside
**   mk_host_run(), mk_host_step(), mk_host_turn() or your own ev_run().
**   From inside a handler, or a callback you gave the host (failure,
**   crash, log, warning, trace), you may call every function here except
**   mk_host_run(), mk_host_step(), mk_host_turn() and mk_host_free(), which
**   return MK_EBUSY (free: does nothing) there, for every host of the
**   program, not only the handler's own.  The same holds in a watcher of
**   your own while one of those three runs a loop (it serves your watchers
**   too).  Finalizers that mk_host_free() runs as it closes the Lua state
**   find the host's ground gone: what would reach it returns MK_EBUSY (a
**   pid: 0).  A trace callback is called
**   in the middle of the change its line tells (an endpoint half added,
**   say): there mk_host_kill() returns MK_EBUSY too.
*/
#ifndef MARKET_H
#define MARKET_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#include "term.h"
#include "vm.h"
#include "ground.h"
#include "cbor.h"

#define MK_VERSION_STRING "0.1.0"
#define MK_VERSION_MAJOR 0
#define MK_VERSION_MINOR 1
#define MK_VERSION_PATCH 0

struct ev_loop;
struct lua_State;

/* The version of the library linked in (may differ from MK_VERSION_STRING
** when the header and the library come from different installs). */
const char *mk_version(void);
/* The Lua release the library was built with, e.g. "Lua 5.4.4". */
const char *mk_lua_release(void);

/*
** Which worker of `market --workers n` this program is, from the
** environment variable MARKET_WORKER=i/n that the interpreter sets: when
** it is exactly that, decimal digits with 1 <= i <= n <= MK_WORKERS_MAX
** (the bound of --workers), *index = i, *count = n and the result is 1;
** otherwise (unset, or anything else) the variable is ignored: 1 of 1,
** and 0.  What market.worker says, and what the interpreter divides its
** memory limit by (docs/workers.md).
*/
#define MK_WORKERS_MAX 1024
int mk_worker(int *index, int *count);

/* ---- errors ------------------------------------------------------------- */

typedef enum mk_status {
  MK_OK = 0,
  MK_ENOMEM = -1,    /* an allocation failed */
  MK_EINVAL = -2,    /* a NULL or malformed argument */
  MK_ELOOP = -3,     /* libev could not create a loop */
  MK_EIO = -4,       /* a file could not be opened or read */
  MK_ELUA = -5,      /* Lua code did not load (syntax error) or its setup raised an error */
  MK_ENOPROC = -6,   /* no process with that pid */
  MK_EFAILED = -7,   /* a process the host spawned failed (mk_host_run, mk_host_step) */
  MK_EBUSY = -8      /* not allowed from inside a handler (see Re-entrancy above) */
} mk_status;

/* Where mk_host_new reports why it failed. */
typedef struct mk_error {
  int code;              /* an mk_status */
  char message[256];     /* NUL-terminated, "" when code is MK_OK */
} mk_error;

/* A short constant name for a status, e.g. "MK_ENOMEM" ("?" when unknown). */
const char *mk_status_name(int code);

/* ---- hosts -------------------------------------------------------------- */

typedef struct mk_host mk_host;

/*
** Create a host: a ground VM on `loop` and a fresh Lua state for its Lua
** processes (standard libraries open; `require "market"` and the driver
** modules "market.timer", "market.tcp", "market.udp", "market.event_relay"
** are built in, no files needed).
**
** loop: your libev loop, which the host uses but never destroys; or NULL,
**   and market creates a loop of its own (ev_loop_new), which
**   mk_host_free() destroys.  Either way mk_host_loop() returns it.
**   Ground signal events (market:signal) work on any loop, but a signal
**   can be watched in only one loop of the program at a time (libev): a
**   subscription on another loop sees the ground's absence with the reason
**   "market:signal(N): watched by another event loop".
** err: may be NULL; on failure it receives the status and a message.
**
** SIGPIPE: a peer that goes away makes writes fail with EPIPE, which must
** be an error of the one connection, never the end of the program.  So
** when SIGPIPE's disposition is the default (terminate), mk_host_new sets
** it to SIG_IGN, for the whole program, and leaves it so.  A handler of
** your own, or SIG_IGN, is left alone.
**
** Returns the host, owned by the caller (mk_host_free), or NULL:
**   MK_ENOMEM  out of memory (Lua state, VM, ...)
**   MK_ELOOP   loop was NULL and libev could not create one
**   MK_ELUA    the built-in Lua modules failed to load (a build problem)
*/
mk_host *mk_host_new(struct ev_loop *loop, mk_error *err);

/*
** End every process and free the host.  Processes are killed one at a time
** in pid order; each survivor sees the absence of each victim's endpoints
** (reason nil), and Lua handlers run for those events as usual.  Then the
** ground's watchers are stopped, the Lua state is closed and, if market
** created the loop, the loop is destroyed.  Your loop and your watchers on
** it are left alone.  After this, every term and record type market made
** is released; terms you still hold stay valid until you mk_unref them.
** NULL is accepted.  Called from inside a handler or a callback, or from
** a watcher of yours while mk_host_run, mk_host_step or mk_host_turn runs
** the loop, it does nothing (mk_host_errcode: MK_EBUSY).  Nothing is
** reported while it runs: to have the failures of handlers that run in
** that teardown reported, end the processes first with
** mk_vm_kill_all(mk_ground_vm(mk_host_ground(h)), NULL), as `market` and
** market.ground_vm do.
*/
void mk_host_free(mk_host *h);

/* The loop (yours, or the one market made).  Borrowed. */
struct ev_loop *mk_host_loop(mk_host *h);
/* The ground VM and its VM, for the lower-level calls of ground.h and
** vm.h (e.g. mk_vm_nprocs, mk_ground_watching).  Borrowed. */
mk_ground *mk_host_ground(mk_host *h);
mk_vm *mk_host_vm(mk_host *h);
/*
** The host's Lua state (borrowed; include <lua.h> to use it), for hosts
** that extend the Lua side: set globals, package.path, or preload modules
** of their own before spawning scripts.  Do not close it, and do not use
** it from a native handler while a Lua process is running (it never is
** when a native handler runs).  Errors raised through it outside a
** protected call end the program (Lua's panic): use lua_pcall.
*/
struct lua_State *mk_host_lua(mk_host *h);

/* The message of the last error on this host ("" if none yet).  Borrowed,
** valid until the next call on h. */
const char *mk_host_error(const mk_host *h);
/* The status of the last error on this host (MK_OK if none yet). */
int mk_host_errcode(const mk_host *h);

/*
** Trace every event and action of every VM of this host: fn receives one
** line (no newline) per event and action, e.g.
**   2026-12-01T08:00:00.123Z ground #3 echo: message in subscriber/participant request(_, _) request(1, "hi")
** (vm.h, "Traces"; docs/inspect.md).  fn NULL stops tracing.  The line is
** borrowed for the call.  The filter and format set with
** mk_host_trace_opts (or by a Lua process's market.trace) are kept.
*/
void mk_host_trace(mk_host *h, mk_trace_fn fn, void *ud);
/*
** Which lines the trace shows and in which format (mk_trace_opts, vm.h),
** in every VM of the host, from the next line on; NULL: every line, as
** text.  The options are copied.  The function set with mk_host_trace is
** kept: this alone does not start a trace.  Returns MK_OK, MK_EINVAL (h
** NULL, an array NULL with a count, a NULL glob, unknown kind bits) or
** MK_ENOMEM; the
** trace is unchanged on failure.
*/
int mk_host_trace_opts(mk_host *h, const mk_trace_opts *opts);

/*
** The activation budget of the ground VM's Lua processes (and of nested
** VMs that do not set their own): the CPU time in ms one activation of a
** handler may take before its process fails with the reason "activation
** budget exceeded" (vm.h, docs/limits.md).  0 turns it off.  The default
** is MK_BUDGET_DEFAULT_MS (1000).  Returns MK_OK, or MK_EINVAL for a
** negative or NaN ms.  It is enforced with a POSIX timer on the thread's
** CPU clock and the real-time signal SIGRTMAX-1, whose handler market
** installs while a Lua state has market open; a host that needs that signal
** for itself turns the budget off.
*/
int mk_host_set_max_activation(mk_host *h, double ms);

/*
** Called when a Lua process spawned by mk_host_spawn_file,
** mk_host_spawn_string or mk_host_spawn_buffer fails (raises an error):
** pid, its name and the reason followed by the Lua traceback (borrowed for
** the call).  Its peers see absence with the error as the reason either
** way.  fn NULL removes the callback.  Processes they spawned in turn,
** drivers and native processes are not reported here (mk_host_on_crash
** reports them all), and nothing is reported while mk_host_free runs.
*/
typedef void (*mk_failure_fn)(mk_host *h, mk_pid pid, const char *name,
                              const char *traceback, void *ud);
void mk_host_on_failure(mk_host *h, mk_failure_fn fn, void *ud);

/*
** Crash reports.  Every process failure in any VM of the host (an error
** in a Lua handler, boot function or continuation, a strict error such as
** re-adding an endpoint with another role, an activation budget exceeded,
** mk_fail in a native process) makes one report, built while the process
** still holds its endpoints.  Everything in it is borrowed for the call.
** docs/inspect.md shows one.
*/
typedef struct mk_crash_endpoint {
  const char *name;          /* the endpoint's name in its process */
  int level;                 /* 0: in the process's VM; n: n VMs up (at_meta_level) */
  mk_role role;              /* orientation, interest and topic */
} mk_crash_endpoint;

typedef struct mk_crash {
  const char *vm;            /* the VM's path: "ground", "ground/4", ... */
  mk_pid pid;                /* the process's pid in that VM */
  const char *name;          /* its debug name, or NULL */
  mk_term *reason;           /* the reason its peers see (never NULL) */
  const char *message;       /* the reason as text: a string reason as it
                             ** is, another term as market.repr shows it
                             ** (at most MK_REPR_SHOWN bytes) */
  const char *traceback;     /* "stack traceback:\n\t..." of the Lua code
                             ** that failed, market's own frames left out;
                             ** NULL for a native process, or when the
                             ** failure came from outside its code */
  const mk_crash_endpoint *endpoints;   /* what it held, nendpoints of them */
  size_t nendpoints;
  int boot;                  /* 1: a process the host spawned (mk_host_spawn_*),
                             ** whose failure mk_host_run reports as MK_EFAILED */
} mk_crash;

/*
** fn receives every crash report of the host (no callback: each is
** printed to stderr as mk_crash_format writes it, which is what `market`
** does unless --quiet).  fn NULL restores that default; a function that
** does nothing silences them.  fn runs while the process fails: it may
** call the mk_host_* functions but run, step and free (MK_EBUSY).  Nothing
** is reported while mk_host_free runs.
*/
typedef void (*mk_crash_fn)(mk_host *h, const mk_crash *crash, void *ud);
void mk_host_on_crash(mk_host *h, mk_crash_fn fn, void *ud);
/* How many crash reports the host made so far. */
unsigned long mk_host_crashes(const mk_host *h);

/*
** The report as text, several lines with a newline at the end:
**   market: ground #4 worker failed: w.lua:3: attempt to index a nil value
**   stack traceback:
**   \tw.lua:3: in function <w.lua:2>
**   endpoints:
**   \tin: subscriber participant request(_)
** A string the caller frees, or NULL when out of memory.
*/
char *mk_crash_format(const mk_crash *crash);

/*
** Logging (docs/inspect.md, "Logging").  Lua code logs with market.log
** (error, warn, info, debug), and the drivers log their warnings so; a
** host may too (mk_host_log).  Each line reads
**   2026-12-01T07:36:53.123Z warn ground #5 tcp-listener 5999: market.tcp: ...
** (UTC time, level, the VM path, pid and name of the process that logged
** it, "-" for none).  Lines above the threshold are dropped: the default
** is MK_LOG_WARN, or what the environment variable MARKET_LOG names
** ("error", "warn", "info", "debug") when the host is made.  A warning or
** error logged again and again from one place is rate-limited: at most 5
** lines in 10 s, and the next one after says "(N more suppressed)".
**
** mk_host_on_log: fn receives each line (borrowed for the call, no
** newline at its end; a message's later lines begin with a tab, and its
** control bytes are escaped: docs/inspect.md, "Names and messages in
** text") and its level; fn NULL: lines go to stderr (the default).  A
** sink set from Lua (market.log.sink) comes first.
** mk_host_set_log_level: MK_OK, or MK_EINVAL for a level out of range.
** mk_host_log: log `message`, MK_OK: as the host's (no process), or,
** called while a Lua process runs (from a C function it called, or a
** warning callback during its activation), as that process's; so the
** interpreter's warning callback names the process that warned.
** mk_log_level_parse: the level a name stands for, or -1;
** mk_log_level_name: the name of a level ("?" for none).
*/
typedef enum mk_log_level { MK_LOG_ERROR, MK_LOG_WARN, MK_LOG_INFO, MK_LOG_DEBUG } mk_log_level;
typedef void (*mk_log_fn)(mk_host *h, int level, const char *line, void *ud);
void mk_host_on_log(mk_host *h, mk_log_fn fn, void *ud);
int mk_host_set_log_level(mk_host *h, int level);
int mk_host_log(mk_host *h, int level, const char *message);
int mk_log_level_parse(const char *name);
const char *mk_log_level_name(int level);

/*
** Snapshots (docs/inspect.md, "Snapshots").  mk_host_snapshot: the tree
** of the host's VMs as it is now (vm.h, mk_vm_snapshot), owned by the
** caller: mk_snapshot_free.  NULL only for h NULL.  It may be called from
** anywhere, handlers included.
**
** mk_host_snapshot_json: the snapshot with the drivers' resources, as
** JSON text (market.snapshot_json): a string the caller frees, or NULL:
**   MK_EINVAL  h NULL
**   MK_EBUSY   called while a Lua process runs (from a C function it called)
**   MK_ELUA    a driver's inspect() raised (message has the error)
**   MK_ENOMEM  out of memory
*/
mk_snap_vm *mk_host_snapshot(mk_host *h);
char *mk_host_snapshot_json(mk_host *h);

/*
** The live inspector (docs/inspect.md, "The live inspector"): serve the
** inspector's page and API on `addr`, "[HOST:]PORT" (HOST a numeric
** address, 127.0.0.1 when left out; PORT 0: the kernel picks one).  It
** starts the drivers (mk_host_start_drivers) and spawns the inspector, a
** Lua process of the ground VM.  Once it listens, fn(h, url, NULL, ud)
** gets its URL ("http://127.0.0.1:4711/"); if it cannot listen,
** fn(h, NULL, why, ud), and the inspector is gone.  Both strings are
** borrowed for the call, which runs inside the inspector's process: fn
** may log, print or call mk_host_exit, not run the loop.  fn may be
** NULL.  The inspector serves until the program stops (mk_host_stop, a
** signal, an exit): while it runs, the ground VM has work.
** Returns MK_OK, MK_EINVAL (h or addr NULL, addr not [HOST:]PORT: message
** says why), MK_ELUA (a driver or the inspector failed to load: message
** has the Lua error), MK_ENOMEM, MK_EBUSY (from a handler while the ground
** VM ends every process: no inspector, and fn is not called).
*/
typedef void (*mk_inspect_fn)(mk_host *h, const char *url, const char *error, void *ud);
int mk_host_inspect(mk_host *h, const char *addr, mk_inspect_fn fn, void *ud);

/*
** Detail mode (docs/inspect.md, "Detail mode"), market.inspect_detail:
** while on, snapshots give each process's cpu_ms and memory, each
** conversation's messages and each TCP connection's bytes (vm.h,
** mk_vm_set_detail), for the whole program.  Returns the setting before
** (1 or 0), or MK_EINVAL (h NULL) or MK_ENOMEM.  It may be called from
** anywhere, handlers included.
*/
int mk_host_inspect_detail(mk_host *h, int on);

/*
** Lua's warn().  A host keeps what Lua code passes to warn() to itself
** unless you ask: fn receives each warning as one line of text (borrowed
** for the call, no newline).  fn NULL stops them.  Lua's control messages
** ("@on", "@off") are ignored.  (`market` prints them to stderr.)  The
** drivers' warnings go through the log (above), not here.
*/
typedef void (*mk_warning_fn)(mk_host *h, const char *message, void *ud);
void mk_host_on_warning(mk_host *h, mk_warning_fn fn, void *ud);

/* ---- Lua processes ------------------------------------------------------ */

/*
** Set the Lua global `arg` as lua(1) and `market` do: arg[i - zero] =
** argv[i] for every i in 0..argc-1, so arg[0] is argv[zero] (the script),
** arg[1..] what follows it, and the interpreter and its options get
** negative indices.  Returns MK_OK, MK_EINVAL (argc < 0, argv NULL with
** argc > 0, zero outside 0..argc) or MK_ENOMEM.
*/
int mk_host_set_arg(mk_host *h, int argc, const char *const *argv, int zero);

/*
** Start the standard drivers as processes of the ground VM: timer, tcp and
** udp (each one that this build has; see docs/).  Call it before spawning
** the processes that use them, so that the drivers' endpoints exist before
** those processes run (events are delivered in spawn order).  At most once
** per host; a second call does nothing.
** Returns MK_OK, MK_ELUA (a driver failed to load: message has the Lua
** error), MK_ENOMEM, MK_EBUSY (from a handler while the ground VM ends
** every process: none is started, and a later call may start them).
*/
int mk_host_start_drivers(mk_host *h);

/*
** Spawn a Lua process that runs the chunk in file `path`, as `market
** script.lua` does: the chunk is the process's boot function, called with
** argv[0..argc-1] (strings) as `...`.  It may return a transition
** (market.transition) or run as straight-line code (market.perform,
** market.yield).  The process's debug name is `path`.  The global `arg` is
** not set (set it through mk_host_lua if your scripts expect it).
**
** Returns the pid, or 0:
**   MK_EINVAL  h or path NULL, argc < 0, or argv NULL with argc > 0
**   MK_EIO     the file cannot be opened or read (message says why)
**   MK_ELUA    the file does not compile (message: file:line: error)
**   MK_ENOMEM  out of memory
**   MK_EBUSY   from a handler while the ground VM ends every process
**              (mk_host_free, an exit, a stop's end): no spawn is taken
** The chunk runs later, when the VM delivers the process's boot event
** (mk_host_run / mk_host_step / your loop); a runtime error there is a
** process failure (mk_host_on_failure, MK_EFAILED), not a return code here.
*/
mk_pid mk_host_spawn_file(mk_host *h, const char *path, int argc, const char *const *argv);

/*
** As mk_host_spawn_file, with the chunk's source in `code` (text only).
** `name` is the chunk name in error messages and the debug name (NULL:
** "(string)").  Errors: MK_EINVAL, MK_ELUA, MK_ENOMEM, MK_EBUSY.
*/
mk_pid mk_host_spawn_string(mk_host *h, const char *code, const char *name,
                            int argc, const char *const *argv);

/*
** As mk_host_spawn_string, with the chunk in the `len` bytes at `code`,
** which may hold NULs and need not end with one, and loaded in `mode`, as
** lua_load takes it: "t" source text only, "b" precompiled (luac) chunks
** only, "bt" or NULL either (as mk_host_spawn_file loads a file).  Lua
** does not check a precompiled chunk: a malformed one can crash the
** program, so allow them only from a source you trust.  Nothing is
** skipped: a first line starting with '#' or a UTF-8 BOM is Lua code here
** (the `market` interpreter skips them, as lua(1) does, before it spawns
** standard input).
** Errors: MK_EINVAL (code NULL, argc < 0, or argv NULL with argc > 0),
** MK_ELUA (does not compile, is a kind of chunk `mode` refuses: "attempt
** to load a binary chunk (mode is 't')", or is a truncated precompiled
** chunk), MK_ENOMEM, MK_EBUSY.
*/
mk_pid mk_host_spawn_buffer(mk_host *h, const char *code, size_t len, const char *name,
                            const char *mode, int argc, const char *const *argv);

/* ---- native processes --------------------------------------------------- */

/*
** A native process: C callbacks with the shape of a Lua process's handler
** table.  `ud` is the process's state (the Lua handlers' `state`): a
** pointer of yours, passed to every callback; market never touches it.
** Any callback may be NULL (the event is then ignored).
**
** Inside a callback the process acts with the calls of vm.h on `self`,
** applied at once and in order, exactly like the actions of a Lua
** transition (DESIGN §1):
**
**   Lua                                 C
**   market.publisher(topic, {name=n})   mk_add_publisher(self, n, topic)
**   market.subscriber(topic, {name=n})  mk_add_subscriber(self, n, topic)
**   market.observe_*(topic, ...)        mk_add_endpoint(self, n, 0, role)
**   market.delete_endpoint(n, reason)   mk_delete_endpoint(self, n, 0, reason)
**   market.send(body)                   mk_send(self, body)
**   market.feedback(body)               mk_feedback(self, body)
**   market.spawn(boot, {k=...})         mk_spawn_native(self, &handlers, ud, name, token)
**   market.quit(pid, reason)            mk_quit(self, pid, reason)
**   market.yield(k)                     mk_yield(self, token)
**   error(reason)                       mk_fail(self, reason) / mk_failf(self, fmt, ...)
**
** and may call the mk_host_* functions (spawning Lua processes, sending
** from outside, ...) except run, step and free.  Terms in events are
** borrowed for the call: mk_ref what you keep.  A native process follows
** the VM's rules like any other: one with no endpoints after handling its
** events (and nothing pending) has finished and is removed, so on_boot
** normally adds an endpoint.
**
** on_boot      the first event: the process exists, with pid mk_proc_pid(self).
** on_presence  a peer's endpoint matched `endpoint` (one of yours); `peer`
**              is its role with the topic refined to the intersection.
** on_absence   that peer went; reason NULL for a normal removal, otherwise
**              the error or quit reason.
** on_message   a message (or feedback) arrived on `endpoint`.
** on_continue  a continuation you asked for is due: after mk_yield(self,
**              token) with spawned == 0, or after mk_spawn/mk_spawn_native
**              with a non-NULL token, with spawned = the new pid.
** on_exit      the process is gone (quit, failed, killed, or the host was
**              freed); called exactly once, last.  Free `ud` here if the
**              process owns it.  `self` may no longer act.
*/
typedef struct mk_native {
  void (*on_boot)(mk_proc *self, void *ud);
  void (*on_presence)(mk_proc *self, void *ud, const mk_role *peer, const char *endpoint);
  void (*on_absence)(mk_proc *self, void *ud, const mk_role *peer, mk_term *reason,
                     const char *endpoint);
  void (*on_message)(mk_proc *self, void *ud, mk_term *message, const char *endpoint);
  void (*on_continue)(mk_proc *self, void *ud, void *token, mk_pid spawned);
  void (*on_exit)(mk_proc *self, void *ud);
} mk_native;

/*
** Spawn a native process in the ground VM, from outside any process (or
** from any handler).  `handlers` is copied; `ud` belongs to you (or to the
** process, if its on_exit frees it).  name may be NULL.
** Returns the pid, or 0 with MK_EINVAL (h or handlers NULL), MK_ENOMEM or
** MK_EBUSY (from a handler while the ground VM ends every process:
** mk_host_free, an exit, a stop's end); on_exit is not called then.
*/
mk_pid mk_host_spawn_native(mk_host *h, const mk_native *handlers, void *ud, const char *name);

/*
** The action "spawn a native process", performed by `self` while it
** handles an event: the child lives in self's VM.  token, when not NULL,
** comes back to self's on_continue with the child's pid.  Returns the pid,
** or 0 when self is not alive, handlers is NULL or its VM is ending every
** process, or on MK_ENOMEM; on_exit is not called then.
*/
mk_pid mk_spawn_native(mk_proc *self, const mk_native *handlers, void *ud,
                       const char *name, void *token);

/* Shorthands for mk_add_endpoint (vm.h) at this level, as participants.
** topic borrowed.  Return what mk_add_endpoint returns (0, 1, or -1). */
int mk_add_publisher(mk_proc *self, const char *name, mk_term *topic);
int mk_add_subscriber(mk_proc *self, const char *name, mk_term *topic);

/* ---- messages from the host --------------------------------------------- */

/*
** Send `body` (borrowed) into the ground VM from outside any process, like
** market.send: every subscriber there now whose topic unifies with it gets
** it, when the VM next runs.  No subscriber: the message is gone.  mk_host_feedback
** does the same toward publishers.  Returns MK_OK or MK_EINVAL.
*/
int mk_host_send(mk_host *h, mk_term *body);
int mk_host_feedback(mk_host *h, mk_term *body);

/*
** Subscribe from C: spawns a native process (named "subscribe") with one
** subscriber endpoint on `topic` (borrowed) that calls fn(h, message, ud)
** for each matching message (message borrowed for the call).  It lasts
** until mk_host_kill(h, pid, NULL) or mk_host_free.  Its presence is seen
** by publishers of matching topics like any subscriber's.  The endpoint
** is made when the process boots, the next time the VM runs (a spawn
** queues the boot, docs/semantics.md §2): a message sent before then, by
** mk_host_send just after this call say, finds no subscriber.
** Returns the pid, or 0 with MK_EINVAL, MK_ENOMEM or MK_EBUSY (as
** mk_host_spawn_native).
*/
typedef void (*mk_message_fn)(mk_host *h, mk_term *message, void *ud);
mk_pid mk_host_subscribe(mk_host *h, mk_term *topic, mk_message_fn fn, void *ud);

/*
** End process `pid` of the ground VM from outside, with `reason` (borrowed;
** NULL for a normal quit): its endpoints go and peers see absence.
** Returns MK_OK, MK_ENOPROC, or MK_EBUSY from inside a trace callback.
*/
int mk_host_kill(mk_host *h, mk_pid pid, mk_term *reason);

/* ---- stopping ------------------------------------------------------------ */

/*
** A graceful stop (DESIGN §8, docs/semantics.md "Stopping"): the ground
** publishes market:stopping(deadline_ms), on which the tcp driver's
** listeners close at once and processes that watch it wind down; the
** others get drain_ms milliseconds to finish, after which every process
** still there is killed with the reason "stopped: the drain time (N ms)
** ran out" (so their connections close) and mk_host_run returns.  When
** everything finishes sooner, it returns sooner.
**
** mk_host_stop_on_signals makes SIGINT and SIGTERM begin such a stop, and a
** second one during the stop end it at once: every process is killed with
** the reason "stopped by a second signal" and mk_host_exit_status becomes
** 128 + signum.  Opt-in (the `market` interpreter opts in, with 5000 ms
** unless --drain says otherwise); the watchers do not keep the loop alive;
** a process's own market:signal subscription still gets its message.
** drain_ms: 0 or more, finite; negative turns it off again.  Hosts on one
** loop may each turn it on: one signal begins the stop of each.  Returns
** MK_OK, or MK_EINVAL (drain_ms not a number, or the program already
** watches SIGINT or SIGTERM on another libev loop: libev allows one).
**
** mk_host_stop begins a stop from the host; drain_ms negative means the
** drain of mk_host_stop_on_signals (5000 ms if never set).  Nothing is
** killed before the loop runs again, so it may be called from a handler.
** A stop under way is not changed by a later call.  Returns MK_OK or
** MK_EINVAL (h NULL).
**
** mk_host_exit_status: the status a program should exit with once the host
** has run: 0; the status of the exit that ended it (market.exit or
** mk_host_exit, below); or 128 + signum after a second signal.
*/
int mk_host_stop_on_signals(mk_host *h, double drain_ms);
int mk_host_stop(mk_host *h, double drain_ms);
int mk_host_exit_status(const mk_host *h);

/*
** End the program with `status` (0..255), as a Lua process's
** market.exit(status) does (docs/semantics.md "Ending the program"): once
** the ground VM has delivered what is queued, every process is killed,
** oldest first, with the reason "exit" (their peers see it, the drivers
** close what they hold), and mk_host_run returns (mk_host_step returns 0).
** No drain, no market:stopping.  Callable from a native handler or from
** outside; from outside, the next run or step does it.  The first ending
** wins: an exit after another, after a second signal or the drain's
** deadline, changes nothing.  Then mk_host_exit_status is `status` and
** mk_host_exited is 1.  Sockets that Lua drivers held are closed when
** mk_host_run returns (it runs a full collection of the Lua state; with
** mk_host_step, at the next collection or mk_host_free).
** Returns MK_OK, or MK_EINVAL (h NULL, status outside 0..255).
*/
int mk_host_exit(mk_host *h, int status);
/* 1 when an exit (market.exit, mk_host_exit) ended the program, whatever
** its status, else 0. */
int mk_host_exited(const mk_host *h);

/* ---- running ------------------------------------------------------------ */

/*
** Run the loop until the ground VM has nothing left to do: no event
** queued and no ground event watched (no timer, socket or signal anyone
** waits for).  Processes may remain (e.g. a subscriber nobody will ever
** send to); they are ended by mk_host_free.  Your own watchers on a shared
** loop are served meanwhile, but do not keep it running: if you have
** watchers of your own, run the loop yourself (ev_run) instead; the ground
** VM then runs its queued events before each poll, by itself.
** Returns MK_OK; MK_EFAILED when a Lua process spawned by the host failed
** during the run (mk_host_error has the first such traceback; the run
** still went on to the end); MK_EBUSY from inside a handler.
*/
int mk_host_run(mk_host *h);

/*
** One step that never blocks: deliver queued events, poll the loop once
** without waiting, deliver again.  Each delivery stops after a slice of
** 10 ms (ground.h, MK_GROUND_SLICE_MS) where a process keeps the VM busy
** for ever (a message to itself at every activation), so that a step
** always returns.  Returns 1 while there is something
** left to do (queued events or watched ground events), 0 when there is
** nothing; MK_EFAILED when a Lua process spawned by the host failed during
** this step (step again to go on); MK_EBUSY from inside a handler.
*/
int mk_host_step(mk_host *h);

/*
** Driving a host from an event loop that is not libev (glib, luv,
** cqueues; docs/loops.md): the other loop watches mk_host_pollfd(h) for
** reading, bounds its wait by mk_host_timeout(h), and calls
** mk_host_turn(h, 0) when either fires.
**
** mk_host_turn: deliver what is queued, wait up to `timeout` seconds for
** the loop (0: never; negative: until something happens), deliver what
** came (each delivery for a slice at most, as mk_host_step's: two slices,
** up to about 20 ms, besides the wait), and leave the loop with every watch handed to the kernel, which
** mk_host_step does not promise.  Returns as mk_host_step.
** mk_host_timeout: the seconds the other loop may wait for the descriptor
** before the host must turn anyway: 0 when events are queued, -1 when no
** timer runs (wait for the descriptor alone).  It counts market's timers
** only: a loop you share with timers of your own is yours to run (ev_run).
** mk_host_pollfd: a descriptor that is readable while the host's loop has
** something to do (libev's backend descriptor, epoll), or -1 when the
** loop's backend has none (select or poll, through LIBEV_FLAGS).
*/
int mk_host_turn(mk_host *h, double timeout);
double mk_host_timeout(mk_host *h);
int mk_host_pollfd(mk_host *h);

/* ---- terms from C (more in term.h) -------------------------------------- */

/*
** A record with `label` and n fields, stolen (even on failure), e.g.
**   mk_record("chat-line", 2, mk_cstr("bob"), mk_cstr("hi"))
** equals what Lua builds with market.record("chat-line", "who", "text")
** ("bob", "hi"): record types are identified by label and arity.
** Returns a new sealed term, or NULL when out of memory, when a field is
** NULL (a builder inside failed: the failure is passed on, never a nil),
** or when it would nest deeper than the depth limit or have more nodes
** than the size limit (term.h, mk_term_set_depth_limit,
** mk_term_set_size_limit).
*/
mk_term *mk_record(const char *label, uint32_t n, ...);
/* 1 when t is a record with this label and arity, else 0. */
int mk_is_record(const mk_term *t, const char *label, uint32_t arity);
/* The label of a record (borrowed), or NULL when t is not a record. */
const char *mk_record_label(const mk_term *t);
/* Field i of a record or item i of a sequence (borrowed), or NULL when t
** is neither or i is out of range. */
mk_term *mk_field(const mk_term *t, uint32_t i);
/* The field named `name` of a record whose type has field names (records
** made by Lua's market.record do), borrowed; NULL when there is none. */
mk_term *mk_field_named(const mk_term *t, const char *name);
/* The bytes of a string term (borrowed, NUL-terminated; *len gets the
** length when len is not NULL), or NULL when t is not a string. */
const char *mk_tostring(const mk_term *t, size_t *len);
/* 1 and *out = the value when t is an integer, else 0.  (A float with an
** integral value in int64 range is an integer term already: mk_float.) */
int mk_tointeger(const mk_term *t, int64_t *out);
/* 1 and *out = the value when t is a number, else 0. */
int mk_tonumber(const mk_term *t, double *out);

#ifdef __cplusplus
}
#endif

#endif

/*
** lproc.c: Lua processes.  A process runs its activations on coroutines of
** one lua_State (the state that runs the ground VM); the VM resumes one with
** one event at a time, and it returns, or yields back from a wait (await:
** market.yield, wait_for, pause) when straight-line code waits.
**
** A process owns no coroutine while idle.  Most processes are handler
** style (Marketplace's functions from events to transitions): each
** activation borrows a coroutine from a small pool and gives it back when
** it returns.  Only code that waits (market.yield, wait_for, pause) keeps
** its coroutine until it finishes.  So a spawn makes no thread, an idle
** process holds no stack, and a busy server's activations run on a few
** hot stacks instead of one cold stack per session.
**
** The Lua side (market.lua) dispatches each event to its handler inside the
** coroutine and performs actions through the core.* functions here, which
** act on the process that is running now.
*/
#include <dlfcn.h>
#include <errno.h>
#include <limits.h>
#include <malloc.h>
#include <math.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "mkl.h"
#include "pool.h"

/* A box kept for reuse (pushshared): slot `idx` of the state's thread of
** slots (mkl_state.slots) holds it, and it holds `t` (borrowed here).
** `held` is where the box keeps its term (mkl_boxslot), found at the
** box's first reuse, NULL until then: the slot keeps the box, so the
** address stays good until the slot is given another box (remember). */
typedef struct lastbox {
  int idx;
  const mk_term *t;
  mk_term *const *held;
} lastbox;

/* The stack slots of mkl_state.slots. */
enum { SLOT_MESSAGE = 1, SLOT_TOPIC, SLOT_NAME, SLOT_COUNT = SLOT_NAME };

/* The slots of mkl_state.fieldref. */
enum { FIELD_PRESENCE, FIELD_ABSENCE, FIELD_MESSAGE };

/* Per lua_State binding state, a full userdata anchored in the registry. */
typedef struct mkl_state {
  lua_State *L;          /* the main thread */
  mk_ground *g;          /* the ground VM Lua processes live under, or NULL */
  mk_proc *current;      /* the process whose event is being handled */
  int restref;           /* market.lua's rest(ctx, transition, i, n): the
                         ** actions i..n of one that applied left */
  int applyref;          /* market.lua's apply(ctx, transition): applies
                         ** what a boot function returned */
  int dispatchref;       /* market.lua's dispatch(ctx, event...): later
                         ** events, and those straight-line code waits for */
  int eventref;          /* market.lua's event_table(event...): an event no
                         ** handler took, as market.yield() returns it */
  mkl_fail_fn on_fail;   /* told when a process fails (crashed, host.c) */
  void *fail_ud;
  mk_proc *failing;      /* the Lua process handle() is failing, and */
  lua_State *failing_co; /* the coroutine it failed on (fail_on) */
  /* Coroutines no activation is using, each anchored by its registry
  ** reference: borrowed by acquire(), given back by release(). */
  lua_State *pool[16];
  int poolref[16];
  int npool;
  /* What events write as they are handled: the box that last stood for a
  ** record sent or delivered (pushmessage: SLOT_MESSAGE), the one that last
  ** stood for a presence's or absence's topic (pushrole: SLOT_TOPIC), and
  ** the endpoint name pushed last (pushname: SLOT_NAME), in the stack of a
  ** thread of their own, anchored by the registry (never resumed: its
  ** stack is storage).  Not in the registry: it holds every process's
  ** context (ctxref), and in generational mode (host.c) a table written
  ** a young value since the last collection is traversed whole by the
  ** next young one, each context's header read: at 10,000 connections,
  ** 14,000 cache misses per collection, 6 per echo round trip (issue
  ** 10).  A thread's stack takes stores without a barrier (the collector
  ** visits every thread again at each cycle), and this one is a few
  ** slots.  The boxes' terms are borrowed, the boxes hold them. */
  lua_State *slots;
  lastbox message, topic;
  int roleref;           /* the strings of a role table (newrole) */
  /* Registry slots that held the context of a process now gone, for the
  ** next processes' contexts (newproc, destroy); owned, freed by
  ** state_gc.  Each holds false, or (nkept of them) that context, emptied,
  ** for the next process to take (spare_ctx): those are the top nkept of
  ** the list, so that a spawn takes one while there is one, wherever the
  ** kills since put their slots (newproc).  luaL_ref and luaL_unref
  ** keep their free list in the registry itself, with five table accesses
  ** per reference and four per release: 520 instructions of every spawn. */
  int *spare;
  int nspare, maxspare;
  int nkept;             /* spares holding an emptied context */
  int run;               /* spawns that took a spare slot since the last
                         ** process ended */
  int demand;            /* the last such run: how many to keep at most */
  int fieldref[3];       /* "on_presence", "on_absence", "on_message",
                         ** interned once: handler keys (FIELD_*) */
  const char *lastname;  /* SLOT_NAME's bytes (Lua's copy), or NULL */
  /* A full collection once most of a crowd of processes has gone
  ** (ended): see dropped().  Off unless the host asks (mkl_collect_drops). */
  int nlive;             /* Lua processes made and not yet destroyed */
  int peak;              /* the most live since the last such collection */
  int basekb;            /* the Lua heap (KiB) after the last such collection */
  uint8_t dropgc;        /* on (mkl_collect_drops) */
  uint8_t collect;       /* a drop seen: collect before the next activation */
  uint8_t closing;       /* lua_close has begun with a ground VM open
                         ** (canary_gc): no process's Lua code runs again */
  /* The minor collections' floor (mkl_young_floor): the multiplier wanted
  ** beyond it, the floor (KiB; 0: off), the multiplier last set, and the
  ** activations until the next look at the heap. */
  uint8_t youngmin;
  uint8_t youngtick;
  int youngkb;
  int youngpct;
  /* settle_gc's: the Lua heap (KiB) after the last collection seen, at
  ** the last look (a drop between two looks is a collection), and the
  ** count from which the collector is asked whether it is nearly due. */
  int settlebase, settlelast, settlenext;
  mk_pool_over *over;    /* the cache installed in front of the state's
                         ** allocator while a ground VM runs (mkl_attach),
                         ** or NULL; owned */
  const void *registry;  /* the registry table (lua_topointer), for
                         ** prefetch alone; NULL when Lua's tables are not
                         ** laid out as ltable says (tablelayout) */
} mkl_state;

/*
** What a process's timed waits (market.wait_for(pred, ms), market.yield(ms))
** need: made at its first, freed with the process (destroy).  One per
** process, for the innermost wait suspended: a wait sets it up each time
** it suspends (timewait), and the wake it arms or queues carries the
** token of `live`, so that one that arrives after its wait ended (or was
** replaced) finds another serial and is dropped (timedout).
*/
typedef struct lwait {
  mk_timeout t;          /* armed while the ground's clock is to wake the
                         ** wait (t.at its deadline) */
  mk_ground *g;          /* the ground t is armed on */
  uint32_t serial;       /* the last token's */
  uint32_t live;         /* the token of the wake armed or on its way for
                         ** the wait suspended now, or 0 */
} lwait;

/* A Lua process.  Owned by its mk_proc (destroy); from the pool, on a
** cache line of its own (pool.h, mk_pool_alloc_at), as the VM's process
** records (vm.c, xline): every activation reads it, and from a 16-byte
** boundary its 40 bytes were two lines half the time (issue 10). */
typedef struct lproc {
  mkl_state *S;
  lua_State *co;         /* its coroutine while it runs or waits, else NULL;
                         ** anchored by coref (owned: released or unref'd) */
  int coref;
  int ctxref;            /* its context (MKL_CTX_STATE), made at spawn and
                         ** holding the boot function until the boot event
                         ** (owned: unref'd by destroy) */
  uint8_t waiting;       /* suspended in a wait (await) */
  uint8_t boot : 1;      /* a boot process: its failure is the program's */
  uint8_t owns : 1;      /* has values to close when it ends (close_owned) */
  uint8_t at_return : 1; /* its context holds an at-return function
                         ** (mkl_set_at_return): a boot's return looks */
  uint8_t applies;       /* co's body is the boot function (APPLY_LUA) or
                         ** a handler (APPLY_C: messagehandler,
                         ** peerhandler), which has not returned yet: what
                         ** it returns is applied (handle); APPLY_LAST
                         ** while that is applied (mkl_applying); 0
                         ** otherwise */
  uint8_t running;       /* in lua_resume */
  uint32_t activations;  /* events handled (snapshots: mk_vm_snapshot; it
                         ** wraps at 2^32), in the 4 bytes of padding
                         ** before `wait`: the record keeps its size */
  lwait *wait;           /* owned, NULL until the first timed wait */
  const void *ctx;       /* the context's address (lua_topointer), for
                         ** prefetch alone: read through only as ltable */
  const void *state;     /* the state's address when an activation last
                         ** read it (lua_topointer, messagehandler), for
                         ** prefetch alone: never read through, and
                         ** possibly stale (a later state, or freed) */
  mk_match_slot *sendslot;  /* its sends' matches (mkl_send), made at its
                         ** first send, or NULL; owned: cleared and freed
                         ** by destroy */
} lproc;

_Static_assert(sizeof(lproc) <= 64, "a Lua process's record is one cache line");

/* How what a body returns is applied: by market.lua's apply, or by C first
** (toapply) when it is a transition of sends alone.  A boot function's
** transition adds endpoints, which C leaves to apply, and checking it
** first was a cost to every spawn. */
enum { APPLY_LUA = 1, APPLY_C, APPLY_LAST, APPLY_LAST_BOOT };  /* the last two: see mkl_applying */

#if defined(__GNUC__)
#define MKL_INLINE inline __attribute__((always_inline))
#define MKL_NOINLINE __attribute__((noinline))
#else
#define MKL_INLINE inline
#define MKL_NOINLINE
#endif

static const char key_state = 0;

/*
** The Lua process whose activation runs now, whatever its Lua state, and
** its coroutine: what mkl_current answers for the C functions a process
** calls, several times per message.  Finding the state's record first
** (getstate) was a registry lookup each time.  handle() sets it around
** each resume and restores the outer one after (activations nest).
*/
static struct {
  mk_proc *p;
  lproc *lp;
} running;

static mkl_state *getstate(lua_State *L) {
  mkl_state *S;
  lua_rawgetp(L, LUA_REGISTRYINDEX, &key_state);
  S = lua_touserdata(L, -1);
  lua_pop(L, 1);
  return S;
}

#define STATE(L) ((mkl_state *)lua_touserdata(L, lua_upvalueindex(1)))

/* ---- the activation budget ---------------------------------------------- */

/*
** A handler that never returns (`while true do end`) would hold the VM for
** ever.  Each activation may use mk_vm_budget() ms of CPU (vm.h).  A count
** hook on every coroutine would enforce it, but with any count hook set Lua
** calls into its debug layer before every instruction: 44% more
** instructions per Lua-to-Lua message (callgrind on bench/route's loop).
** So nothing watches an activation that behaves.  One POSIX timer on the
** thread's CPU clock fires every BUDGET_TICK_MS of CPU the thread uses
** (never while it sleeps in the loop), and its signal handler counts the
** ticks during which one activation kept running.  Past the budget it sets
** a count hook on that activation's coroutine (or the coroutine it runs
** now: act.co, "coroutines a process runs" below), as lua.c does on Ctrl-C
** (lua_sethook is written to be called from a signal handler); at the next
** instruction the hook yields the coroutine, or raises where a yield is not
** allowed (inside a metamethod called from C, say), and handle() fails the
** process.  The cost when nothing overruns: a few stores per activation,
** and one signal per BUDGET_TICK_MS of busy CPU.
**
** market runs on one thread, so this state is the program's; the timer
** measures the thread that first ran a Lua process with a budget (its id
** is the signal's target), and lives while some Lua state has market open.
*/
#define BUDGET_TICK_MS 10
#define BUDGET_SIGNAL MK_BUDGET_SIGNAL
#define BUDGET_REASON "activation budget exceeded"

static struct {
  lua_State *volatile co;           /* the running activation's innermost
                                    ** coroutine (co_resume_watched), or NULL */
  volatile double budget;           /* its budget in ms (> 0) */
  volatile unsigned long serial;    /* counts activations */
  volatile unsigned long seen;      /* the serial at the last tick */
  volatile long spent;              /* ticks since `seen` was first seen */
  volatile sig_atomic_t tripped;    /* the hook is set on co */
  volatile sig_atomic_t fired;      /* the hook ran: co is stopped */
  volatile sig_atomic_t told;       /* stuck() wrote its line */
  int users;                        /* Lua states with market open */
  int timer;                        /* 1: running; -1: could not be made */
  timer_t id;
  struct sigaction old;             /* the signal's previous disposition */
} act;

/* Stop the coroutine L where it runs: yield it for good, or, where a
** yield is not allowed (inside a metamethod called from C, say), raise
** `reason`.  A count hook left on L raises again at its next instruction,
** so code that catches the error with pcall is stopped there too.  The
** budget's hook and a dead process's both end this way. */
static int stop_here(lua_State *L, const char *reason) {
  /* (From a hook lua_yield returns, and the hook must return at once.) */
  if (lua_isyieldable(L)) return lua_yield(L, 0);
  return luaL_error(L, "%s", reason);
}

static void budget_hook(lua_State *L, lua_Debug *ar) {
  (void)ar;
  if (act.co == NULL || !act.tripped) {
    /* Stale: no watched activation is over its budget.  A coroutine made
    ** (lua_newthread) by a hooked one starts with its hook, and may be
    ** kept and run later, elsewhere: it must run as if never hooked. */
    lua_sethook(L, NULL, 0, 0);
    return;
  }
  act.fired = 1;
  stop_here(L, BUDGET_REASON);      /* last: the hook stays set */
}

/*
** The hook stops an activation at its next Lua instruction, so within a
** tick; one still running STUCK_MS after the hook was set is where no hook
** runs: a long call into C (a pattern that backtracks, say), a collection,
** or a __gc metamethod (Lua runs finalizers with hooks off), and nothing
** can stop it safely (docs/limits.md, "The activation budget").  The VM
** then waits for it, and so does everything else: stuck() says so on
** stderr, once an activation, rather than leave the program silent.  It
** runs in the signal handler, so it writes with write(2) from a buffer
** filled by hand (no stdio, no malloc).
*/
#define STUCK_MS 1000

typedef struct { char b[640]; size_t n; } sigline;

static void sl_add(sigline *l, const char *s) {
  for (; *s && l->n < sizeof l->b - 1; s++) l->b[l->n++] = *s;
}

static void sl_num(sigline *l, unsigned long long v) {
  char d[24];
  int i = 0;
  do { d[i++] = (char)('0' + v % 10); v /= 10; } while (v > 0);
  while (i > 0 && l->n < sizeof l->b - 1) l->b[l->n++] = d[--i];
}

/* A name escaped as lines of text show it (json.h, mk_jbuf_addname):
** control bytes as \n, \r, \t or \xHH; but cut at 200 bytes, with "...",
** to fit the line's buffer. */
static void sl_name(sigline *l, const char *s) {
  static const char hex[] = "0123456789abcdef";
  size_t i;
  for (i = 0; s[i] && i < 200 && l->n < sizeof l->b - 5; i++) {
    unsigned char c = (unsigned char)s[i];
    if (c < 0x20 || c == 0x7f) {
      l->b[l->n++] = '\\';
      if (c == '\n' || c == '\r' || c == '\t') {
        l->b[l->n++] = c == '\n' ? 'n' : c == '\r' ? 'r' : 't';
        continue;
      }
      l->b[l->n++] = 'x';
      l->b[l->n++] = hex[c >> 4];
      l->b[l->n++] = hex[c & 15];
    } else {
      l->b[l->n++] = (char)c;
    }
  }
  if (s[i]) sl_add(l, "...");
}

static void stuck(double ms) {
  mk_proc *p = running.p;
  sigline l;
  ssize_t w;
  l.n = 0;
  sl_add(&l, "market: ");
  if (p != NULL) {
    const char *name = mk_proc_name(p);
    sl_add(&l, mk_vm_path(mk_proc_vm(p)));
    sl_add(&l, " #");
    sl_num(&l, (unsigned long long)mk_proc_pid(p));
    if (name != NULL) { sl_add(&l, " "); sl_name(&l, name); }
    sl_add(&l, ": ");
  }
  sl_add(&l, "an activation has run ");
  sl_num(&l, (unsigned long long)ms);
  sl_add(&l, " ms, past its budget of ");
  sl_num(&l, (unsigned long long)act.budget);
  sl_add(&l, " ms, in code the budget cannot stop (a long call into C, a collection, "
              "a __gc metamethod): nothing else runs until it returns\n");
  w = write(2, l.b, l.n);
  (void)w;                          /* (nowhere to say that stderr failed) */
}

static void budget_tick(int sig) {
  int saved = errno;
  lua_State *co = act.co;
  (void)sig;
  /* Past its hook's firing too: an activation still running then runs
  ** where no hook does (an xpcall message handler called for the hook's
  ** own error, say, which Lua runs with hooks off). */
  if (co != NULL && !act.told) {
    /* The kernel checks CPU timers at its own ticks, and on a busy machine
    ** a thread that runs in short slices is seen late: several periods
    ** then come as one signal and the rest as overruns.  Counting only
    ** signals let a 300 ms loop pass a 100 ms budget under load. */
    int over = timer_getoverrun(act.id);
    if (act.seen != act.serial) {   /* a new activation: start counting */
      act.seen = act.serial;
      act.spent = 0;
    } else {
      double ms;
      act.spent += 1 + (over > 0 ? over : 0);
      ms = (double)act.spent * BUDGET_TICK_MS;
      if (!act.tripped && ms >= act.budget) {
        act.tripped = 1;
        lua_sethook(co, budget_hook, LUA_MASKCOUNT, 1);
      } else if (act.tripped && ms >= act.budget + STUCK_MS) {
        act.told = 1;
        stuck(ms);
      }
    }
  }
  errno = saved;
}

/* Start the timer, once; without it (no timers, no signal) nothing stops a
** runaway handler, but everything else works. */
static void budget_start(void) {
  struct sigaction sa;
  struct sigevent sev;
  struct itimerspec its;
  if (act.timer != 0) return;
  act.timer = -1;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = budget_tick;
  sa.sa_flags = SA_RESTART;           /* blocking calls elsewhere just go on */
  sigemptyset(&sa.sa_mask);
  if (sigaction(BUDGET_SIGNAL, &sa, &act.old) != 0) return;
  memset(&sev, 0, sizeof sev);
  sev.sigev_notify = SIGEV_THREAD_ID;
  sev.sigev_signo = BUDGET_SIGNAL;
  sev._sigev_un._tid = gettid();     /* sigev_notify_thread_id, which glibc 2.36 lacks */
  if (timer_create(CLOCK_THREAD_CPUTIME_ID, &sev, &act.id) != 0) {
    sigaction(BUDGET_SIGNAL, &act.old, NULL);
    return;
  }
  its.it_interval.tv_sec = 0;
  its.it_interval.tv_nsec = BUDGET_TICK_MS * 1000000L;
  its.it_value = its.it_interval;
  if (timer_settime(act.id, 0, &its, NULL) != 0) {
    timer_delete(act.id);
    sigaction(BUDGET_SIGNAL, &act.old, NULL);
    return;
  }
  act.timer = 1;
}

/* The last Lua state with market open is gone: leave the thread as it was. */
static void budget_release(void) {
  if (--act.users > 0 || act.timer == 0) return;
  if (act.timer == 1) {
    timer_delete(act.id);
    sigaction(BUDGET_SIGNAL, &act.old, NULL);
  }
  act.timer = 0;
}

/* Run co for one activation under its VM's budget: lua_resume, watched.
** Returns lua_resume's status; *overrun tells whether the budget ran out
** (the hook stopped co).  Activations nest when a handler kills a nested
** VM, whose processes see their peers go at once: the outer one's watch
** is saved, and counts afresh afterwards. */
static int resume(mk_proc *p, lua_State *co, int nargs, int *nres, int *overrun) {
  double budget = mk_vm_budget(mk_proc_vm(p));
  lua_State *outer = act.co;
  double obudget = act.budget;
  sig_atomic_t otripped = act.tripped, ofired = act.fired, otold = act.told;
  int st;
  if (!(budget > 0)) {              /* none: not watched, and nothing outer is */
    act.co = NULL;
    st = lua_resume(co, NULL, nargs, nres);
    *overrun = 0;
  } else {
    if (act.timer == 0) budget_start();
    act.co = NULL;
    act.budget = budget;
    act.tripped = act.fired = act.told = 0;
    act.serial++;
    act.co = co;
    st = lua_resume(co, NULL, nargs, nres);
    act.co = NULL;                  /* first: no tick may set the hook now */
    if (act.tripped) lua_sethook(co, NULL, 0, 0);
    *overrun = act.fired;
    if (outer == NULL) return st;   /* the usual case: nothing to restore */
    act.budget = obudget;
    act.tripped = otripped;
    act.fired = ofired;
    act.told = otold;
    act.serial++;
  }
  act.co = outer;
  return st;
}

/* The activation running on co, watched, ends and the next begins on the
** same resume (batch): the budget counts afresh.  A tick that set the hook
** as the last one returned, before it ran another instruction, is voided:
** that activation ended within its budget, as resume() has it. */
static void budget_next(lua_State *co) {
  if (act.co != co) return;         /* not watched */
  act.co = NULL;                    /* first: no tick may set the hook now */
  if (act.tripped) {
    lua_sethook(co, NULL, 0, 0);
    act.tripped = 0;
  }
  act.told = 0;
  act.serial++;
  act.co = co;
}

/* ---- coroutines a process runs --------------------------------------- */

/*
** Coroutines a process makes itself.  Lua's hooks are per thread: the
** tick hooks act.co, and an endless loop in a coroutine the activation
** resumed (coroutine.wrap(function() while true do end end)(), a `for` over
** a coroutine.wrap iterator) ran without it, holding the VM for ever.  A
** hook on every coroutine is what the budget exists to avoid, and Lua
** gives no way to find, from a signal handler, the thread running now.
** So the coroutine library's resume, wrap and close are replaced
** (open_coroutines) by copies of lcorolib.c's (Lua 5.4.4) that, when the
** thread calling them is the one the tick watches, make the coroutine they
** run the watched one until it yields, returns, fails or is closed, and
** give the watch back to the caller after: act.co is always the innermost
** thread of the activation's chain, whatever the depth.  Anywhere else
** (outside processes, an activation without a budget, a coroutine run by
** something other than these functions) they are lcorolib's, step for
** step.  The message path resumes no coroutine of the library, so this
** costs it nothing; a resume inside a watched activation pays two stores
** and two tests.
**
** A stop inside such a coroutine must stop the whole activation, not just
** that coroutine: the hook yields it (or raises where a yield is not
** allowed), and the resume that ran it, finding act.fired, stops its own
** caller the same way (stop_here) without handing it anything, and so
** on out to the activation's coroutine, which handle() finds overrun.
*/

/* A __tostring that reason_of runs may take TOSTRING_STEPS Lua instructions
** in all, counted in ticks of TOSTRING_TICK on every thread it runs: the
** main one, and each coroutine it resumes (co_resume_watched hooks them;
** one made before had no hook, and looped for ever).  tostring.on: one
** runs now.  Once its instructions are spent, the hook raises at every
** instruction, as the budget's does: one error, which a pcall in the
** __tostring caught, let it loop on for ever, and the program with it. */
#define TOSTRING_STEPS 1000000
#define TOSTRING_TICK 1000
static struct { int on; unsigned long ticks; } tostring;

static int tostring_spent(void) { return tostring.ticks >= TOSTRING_STEPS / TOSTRING_TICK; }

static void tostring_hook(lua_State *L, lua_Debug *ar) {
  (void)ar;
  tostring.ticks++;
  if (tostring_spent()) {
    lua_sethook(L, tostring_hook, LUA_MASKCOUNT, 1);
    luaL_error(L, "__tostring ran too long");
  }
}

/* L, watched, runs co: co is watched until it stops running (leave). */
static void enter(lua_State *co) {
  act.co = co;
  if (act.tripped) lua_sethook(co, budget_hook, LUA_MASKCOUNT, 1);
}

/* co, which L ran watched, stopped running: L is watched again.  The
** store comes first, so that a tick from then on hooks L; one that came
** before it hooked co, and tripped, which the test after sees. */
static void leave(lua_State *L, lua_State *co) {
  act.co = L;
  if (act.tripped) {
    if (lua_gethook(co) == budget_hook) lua_sethook(co, NULL, 0, 0);
    lua_sethook(L, budget_hook, LUA_MASKCOUNT, 1);
  }
}

/* lua_resume(co, L, ...), watched if L is: *stop set when the budget ran
** out meanwhile (L must then be stopped: stop_here). */
static int co_resume_watched(lua_State *L, lua_State *co, int narg, int *nres, int *stop) {
  int st;
  *stop = 0;
  if (tostring.on) {                   /* counted as the __tostring's own */
    lua_Hook hook = lua_gethook(co);
    int mask = lua_gethookmask(co), count = lua_gethookcount(co);
    lua_sethook(co, tostring_hook, LUA_MASKCOUNT, tostring_spent() ? 1 : TOSTRING_TICK);
    st = lua_resume(co, L, narg, nres);
    lua_sethook(co, hook, mask, count);
    return st;
  }
  if (act.co != L) return lua_resume(co, L, narg, nres);
  enter(co);
  st = lua_resume(co, L, narg, nres);
  leave(L, co);
  *stop = act.fired;
  return st;
}

/* lua_resetthread(co), which runs co's pending __close handlers on co,
** watched if L is (there the hook raises: Lua calls them where no yield
** is allowed, and goes on with the next handler). */
static int co_reset_watched(lua_State *L, lua_State *co, int *stop) {
  int st, watched = act.co == L;
  *stop = 0;
  if (watched) enter(co);
#if LUA_VERSION_RELEASE_NUM >= 50406
  st = lua_closethread(co, L);
#else
  st = lua_resetthread(co);
#endif
  if (watched) {
    leave(L, co);
    *stop = act.fired;
  }
  return st;
}

/* What follows is lcorolib.c's, but for the two calls above. */

static lua_State *co_get(lua_State *L) {
  lua_State *co = lua_tothread(L, 1);
  luaL_argexpected(L, co, 1, "thread");
  return co;
}

static int c_wait(lua_State *L);
static int m_yield(lua_State *L);
static int m_wait_for(lua_State *L);
static int m_wait_until(lua_State *L);
static void dead_hook(lua_State *L, lua_Debug *ar);

/* 1 when co is a process's coroutine waiting in market.yield, wait_for or
** wait_until (its level 0 is the function that called await): only
** its VM may resume it, with the event it waits for.  Another process's
** coroutine.resume ran the waiter's code inside its own activation, and
** after the VM had gone a resume read the record of a process that was
** no more (SEGV); a close pulled the stack from under a waiting process. */
#define CO_WAITING "a coroutine that waits in market.yield or market.wait_for " \
                   "(its process's VM resumes it)"
/* A process that ended where its coroutine was suspended (it quit, was
** stopped by the budget, was killed while waiting) leaves it with
** dead_hook (destroy): it runs no further line, for the VM or anyone. */
#define CO_ENDED "the coroutine of a process that has ended"
static int co_waiting(lua_State *co) {
  lua_Debug ar;
  lua_CFunction f;
  if (lua_status(co) != LUA_YIELD || !lua_getstack(co, 0, &ar) || !lua_checkstack(co, 1))
    return 0;
  lua_getinfo(co, "f", &ar);
  f = lua_tocfunction(co, -1);
  lua_pop(co, 1);
  return f == c_wait || f == m_yield || f == m_wait_for || f == m_wait_until;
}

/* Why co is no coroutine for coroutine.resume or close to touch, or NULL. */
static const char *co_barred(lua_State *co) {
  if (lua_gethook(co) == dead_hook) return CO_ENDED;
  return co_waiting(co) ? CO_WAITING : NULL;
}

/* Returns the number of results, -1 for an error (its value pushed), or
** -2 when L must be stopped (stop_here). */
static int co_aux(lua_State *L, lua_State *co, int narg) {
  int status, nres, stop;
  if (!lua_checkstack(co, narg)) {
    lua_pushliteral(L, "too many arguments to resume");
    return -1;
  }
  lua_xmove(L, co, narg);
  status = co_resume_watched(L, co, narg, &nres, &stop);
  if (stop) return -2;
  if (status == LUA_OK || status == LUA_YIELD) {
    if (!lua_checkstack(L, nres + 1)) {
      lua_pop(co, nres);
      lua_pushliteral(L, "too many results to resume");
      return -1;
    }
    lua_xmove(co, L, nres);
    return nres;
  }
  lua_xmove(co, L, 1);
  return -1;
}

/* coroutine.resume(co, ...) */
static int co_resume(lua_State *L) {
  lua_State *co = co_get(L);
  const char *barred = co_barred(co);
  int r;
  if (barred != NULL) {
    lua_pushboolean(L, 0);
    lua_pushfstring(L, "cannot resume %s", barred);
    return 2;
  }
  r = co_aux(L, co, lua_gettop(L) - 1);
  if (r == -2) return stop_here(L, BUDGET_REASON);
  if (r < 0) {
    lua_pushboolean(L, 0);
    lua_insert(L, -2);
    return 2;
  }
  lua_pushboolean(L, 1);
  lua_insert(L, -(r + 1));
  return r + 1;
}

/* The function coroutine.wrap returns: its coroutine is upvalue 1. */
static int co_auxwrap(lua_State *L) {
  lua_State *co = lua_tothread(L, lua_upvalueindex(1));
  int r = co_aux(L, co, lua_gettop(L)), stop;
  if (r == -2) return stop_here(L, BUDGET_REASON);
  if (r < 0) {
    int stat = lua_status(co);
    if (stat != LUA_OK && stat != LUA_YIELD) {    /* an error in co */
      stat = co_reset_watched(L, co, &stop);      /* close its tbc variables */
      if (stop) return stop_here(L, BUDGET_REASON);
      lua_xmove(co, L, 1);
    }
    if (stat != LUA_ERRMEM && lua_type(L, -1) == LUA_TSTRING) {
      luaL_where(L, 1);
      lua_insert(L, -2);
      lua_concat(L, 2);
    }
    return lua_error(L);
  }
  return r;
}

/* coroutine.wrap(f) */
static int co_wrap(lua_State *L) {
  lua_State *co;
  luaL_checktype(L, 1, LUA_TFUNCTION);
  co = lua_newthread(L);
  lua_pushvalue(L, 1);
  lua_xmove(L, co, 1);
  lua_pushcclosure(L, co_auxwrap, 1);
  return 1;
}

/* coroutine.close(co): lcorolib's, whose auxstatus it needs. */
static int co_close(lua_State *L) {
  static const char *const statname[] = {"running", "dead", "suspended", "normal"};
  lua_State *co = co_get(L);
  int status, stop;                    /* 0..3: statname's */
  const char *barred;
  lua_Debug ar;
  if (L == co) status = 0;
  else switch (lua_status(co)) {
    case LUA_YIELD: status = 2; break;
    case LUA_OK:
      if (lua_getstack(co, 0, &ar)) status = 3;
      else status = lua_gettop(co) == 0 ? 1 : 2;
      break;
    default: status = 1; break;
  }
  if (status != 1 && status != 2)
    return luaL_error(L, "cannot close a %s coroutine", statname[status]);
  if ((barred = co_barred(co)) != NULL) return luaL_error(L, "cannot close %s", barred);
  status = co_reset_watched(L, co, &stop);
  if (stop) return stop_here(L, BUDGET_REASON);
  if (status == LUA_OK) {
    lua_pushboolean(L, 1);
    return 1;
  }
  lua_pushboolean(L, 0);
  lua_xmove(co, L, 1);
  return 2;
}

/*
** xpcall's message handler, wrapped (xp_guard, upvalue 1 the program's).
** When the budget stops an activation where no yield is allowed, its hook
** raises, and Lua calls the message handler of the xpcall around for that
** error inside the hook, with hooks off: a handler that looped then froze
** the program, out of the budget's reach and without a word.  The stop's
** own error (the budget fired, or the process has died: dead_hook) goes
** through as it is; any other error meets the program's handler.  So in
** a failed process's __tostring (reason_of), once its instructions are
** spent.
*/
static int xp_guard(lua_State *L) {
  if ((act.co != NULL && act.fired) || (running.p != NULL && !mk_proc_alive(running.p)) ||
      (tostring.on && tostring_spent()))
    return 1;
  lua_pushvalue(L, lua_upvalueindex(1));
  lua_insert(L, 1);
  lua_call(L, lua_gettop(L) - 1, 1);
  return 1;
}

/* lbaselib.c's finishpcall and xpcall (Lua 5.4.4), but for the guard. */
static int xp_finish(lua_State *L, int status, lua_KContext extra) {
  if (status != LUA_OK && status != LUA_YIELD) {
    lua_pushboolean(L, 0);
    lua_pushvalue(L, -2);
    return 2;
  }
  return lua_gettop(L) - (int)extra;
}

static int xp_call(lua_State *L) {
  int status, n = lua_gettop(L);
  luaL_checktype(L, 2, LUA_TFUNCTION);
  /* Outside an activation nothing stops code: the handler is called as
  ** Lua calls it (a traceback it makes has no frame of the guard's). */
  if (running.p != NULL || act.co != NULL || tostring.on) {
    lua_pushvalue(L, 2);
    lua_pushcclosure(L, xp_guard, 1);
    lua_replace(L, 2);
  }
  lua_pushboolean(L, 1);
  lua_pushvalue(L, 1);
  lua_rotate(L, 3, 2);
  status = lua_pcallk(L, n - 2, LUA_MULTRET, 2, 2, xp_finish);
  return xp_finish(L, status, 2);
}

/* xp_call as the global xpcall, where that is still a C function (the base
** library's): a program that wrapped it keeps its wrapper. */
static void open_xpcall(lua_State *L) {
  lua_pushglobaltable(L);
  if (lua_getfield(L, -1, "xpcall") == LUA_TFUNCTION && lua_iscfunction(L, -1) &&
      lua_tocfunction(L, -1) != xp_call) {
    lua_pushcfunction(L, xp_call);
    lua_setfield(L, -3, "xpcall");
  }
  lua_pop(L, 2);
}

/*
** Put co_resume, co_wrap and co_close in the coroutine library's table
** (package.loaded.coroutine, which the global `coroutine` is), in place of
** lcorolib's: there, error messages name them "coroutine.resume" and so
** on as they named the originals.  Only where they still are C functions
** (lcorolib's): a program or library that wrapped them with its own keeps
** its wrappers, and a state without the library is left without it.
*/
static void open_coroutines(lua_State *L) {
  static const luaL_Reg funcs[] = {
    {"resume", co_resume}, {"wrap", co_wrap}, {"close", co_close}, {NULL, NULL}};
  const luaL_Reg *f;
  luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_LOADED_TABLE);
  if (lua_getfield(L, -1, "coroutine") == LUA_TTABLE) {
    for (f = funcs; f->name != NULL; f++) {
      lua_getfield(L, -1, f->name);
      if (lua_iscfunction(L, -1) && lua_tocfunction(L, -1) != f->func) {
        lua_pushcfunction(L, f->func);
        lua_setfield(L, -3, f->name);
      }
      lua_pop(L, 1);
    }
  }
  lua_pop(L, 2);
}

/* ---- timed waits -------------------------------------------------------- */

/* A wake's token (lwait) is negative: market.lua numbers its continuations
** from 1.  A wake comes back to the waiting coroutine as WAKE_MARK. */
#define WAKE_TOKEN(serial) ((void *)-(intptr_t)(serial))
#define IS_WAKE(cont) ((intptr_t)(cont) < 0)
static const char wake_mark = 0;
#define WAKE_MARK ((void *)&wake_mark)

/* No timed wait is suspended now: the wake armed or on its way is void. */
static void untime(lwait *w) {
  w->live = 0;
  if (w->t.slot != 0) mk_timeout_stop(w->g, &w->t);
}

/*
** p's wait about to suspend ends at `at` (mk_ground_clock() ms).  The wake
** armed or on its way for that deadline stays (a wait_for going on after an
** event that did not match it); else one is made, on the ground's clock,
** or, when the deadline has passed, queued behind what is queued now: so a
** timeout of 0 sees only what is already queued.
*/
static void timewait(lua_State *L, lproc *lp, mk_proc *p, double at) {
  lwait *w = lp->wait;
  if (w == NULL) {
    if ((w = calloc(1, sizeof *w)) == NULL) luaL_error(L, "out of memory");
    lp->wait = w;
  } else {
    if (w->live != 0 && w->t.at == at) return;
    untime(w);
  }
  if (++w->serial == 0) w->serial = 1;
  w->live = w->serial;
  w->t.at = at;
  w->t.proc = p;
  w->t.cont = WAKE_TOKEN(w->serial);
  if (at <= mk_ground_clock()) {
    mk_yield(p, w->t.cont);
  } else {
    w->g = lp->S->g;
    mk_timeout_start(w->g, &w->t);
  }
}

/* A wake came: 1 when it is for the wait suspended now (which it ends). */
static int timedout(lproc *lp, void *cont) {
  lwait *w = lp->wait;
  if (w == NULL || w->live == 0 || cont != WAKE_TOKEN(w->live)) return 0;
  w->live = 0;
  return 1;
}

/* ---- the behaviour ------------------------------------------------------ */

static const mk_behavior lua_behavior;

/* A broadcast hands the same record to many processes, and the record a
** handler sends is usually delivered next: reuse the box made for the last
** delivery, or the one the sender sent (mkl_share), rather than make a box
** (and a finalizer for the collector to run) for each delivery.  Boxes are
** immutable, so sharing is invisible.  The same goes for the topic of a
** presence or absence: an endpoint that appears or goes is announced to
** each of its peers with one intersection, and when one topic is ground,
** or one pattern is an instance of the other, that is one and the same
** term for all of them (vm.c, refined).  Topics keep a slot of their own,
** so that a burst of them does not cost the message path its box. */
static MKL_INLINE void pushslot(const mkl_state *S, lua_State *L, int k) {
  lua_pushvalue(S->slots, k);
  lua_xmove(S->slots, L, 1);
}

/* Slot k of S->slots := the value at idx of L (any thread but S->slots). */
static MKL_INLINE void setslot(const mkl_state *S, lua_State *L, int idx, int k) {
  lua_pushvalue(L, idx);
  lua_xmove(L, S->slots, 1);
  lua_replace(S->slots, k);
}

static void remember(const mkl_state *S, lastbox *slot, lua_State *L, int idx,
                     const mk_term *t) {
  setslot(S, L, idx, slot->idx);
  slot->t = t;
  slot->held = NULL;
}

/* Push t (borrowed) as mkl_pushterm does, reusing slot's box when it is
** t's.  Only records are boxes; other terms are pushed as they are. */
static void pushshared(const mkl_state *S, lastbox *slot, lua_State *co, mk_term *t) {
  if (t->kind != MK_REC) { mkl_pushterm(co, t); return; }
  if (t == slot->t) {
    pushslot(S, co, slot->idx);
    /* Still holding t: only a __gc called by hand empties a box.  Its
    ** term is read in place from the second delivery on (a burst of one
    ** record: two API calls fewer per delivery). */
    if (slot->held == NULL) slot->held = mkl_boxslot(co, -1);
    if (slot->held != NULL && *slot->held == t) return;
    lua_pop(co, 1);
  }
  mkl_pushterm(co, t);
  remember(S, slot, co, -1, t);
}

static void pushmessage(mkl_state *S, lua_State *co, mk_term *t) {
  /* Held by this delivery alone (the sender let go): no other delivery
  ** can share the box, so do not remember it. */
  if (t->kind == MK_REC && t->refs == 1) mkl_pushterm(co, t);
  else pushshared(S, &S->message, co, t);
}

/* A role as its three fields: orientation, interest (integers; market.lua
** names them) and topic. */
static void pushrole(mkl_state *S, lua_State *co, const mk_role *r) {
  lua_pushinteger(co, r->orientation);
  lua_pushinteger(co, r->interest);
  if (r->topic) pushshared(S, &S->topic, co, r->topic); else lua_pushnil(co);
}

/* The strings of a role table, at these indices of the registry's table
** S->roleref (made by mkl_open_core): its keys, and the names of the
** orientations and interests (vm.h's numbering).  Interned once, they cost
** a table read each, where lua_pushstring and lua_setfield looked each one
** up in Lua's string cache (and the role cost more made in C than in Lua). */
enum { R_ORIENTATION = 1, R_INTEREST, R_TOPIC, R_ORIENTS, R_INTERESTS = R_ORIENTS + 2,
       R_COUNT = R_INTERESTS + 2 };

static void rolestrings(lua_State *L) {
  static const char *const keys[] = {"orientation", "interest", "topic"};
  int k;
  lua_createtable(L, R_COUNT, 0);
  for (k = 1; k <= R_COUNT; k++) {
    lua_pushstring(L, k < R_ORIENTS ? keys[k - 1]
                    : k < R_INTERESTS ? mk_orientation_name((mk_orientation)(k - R_ORIENTS))
                    : mk_interest_name((mk_interest)(k - R_INTERESTS)));
    lua_rawseti(L, -2, k);
  }
}

/* A role as a handler gets it, {orientation=, interest=, topic=}, with
** the topic at the top of L (replaced by it): a table of its own each
** time, for a handler may keep it, or write into it. */
static void newrole(mkl_state *S, lua_State *L, mk_orientation o, mk_interest i) {
  lua_createtable(L, 0, 3);                            /* topic, role */
  lua_rawgeti(L, LUA_REGISTRYINDEX, S->roleref);       /* topic, role, strings */
  lua_rawgeti(L, -1, R_ORIENTATION);
  lua_rawgeti(L, -2, R_ORIENTS + (int)o);
  lua_rawset(L, -4);
  lua_rawgeti(L, -1, R_INTEREST);
  lua_rawgeti(L, -2, R_INTERESTS + (int)i);
  lua_rawset(L, -4);
  lua_rawgeti(L, -1, R_TOPIC);
  lua_pushvalue(L, -4);
  lua_rawset(L, -4);
  lua_pop(L, 1);
  lua_replace(L, -2);
}

/* Are the strings equal?  Byte by byte, for the short names of endpoints:
** strcmp reads 32 bytes at a time, past the name's end into the next cache
** line, where an endpoint's name ends its line of hot fields (vm.c,
** xline), and at thousands of connections that line was a miss. */
static MKL_INLINE int samename(const char *a, const char *b) {
  for (; *a == *b; a++, b++)
    if (*a == '\0') return 1;
  return 0;
}

/* Push the endpoint name `name`.  A burst of presences or absences goes
** to endpoints of one name ("in" for each of 10,000 subscribers; an
** observer's, each time): the last name pushed stays in a slot
** (SLOT_NAME, S->lastname its bytes, which Lua's strings never move),
** and the same name again is read from there, without lua_pushstring's
** strlen, hash and look-up in Lua's string table (about 130 instructions
** of a presence event). */
static MKL_INLINE void pushname(mkl_state *S, lua_State *L, const char *name) {
  if (S->lastname != NULL && samename(S->lastname, name)) {
    pushslot(S, L, SLOT_NAME);
    return;
  }
  S->lastname = lua_pushstring(L, name);
  setslot(S, L, -1, SLOT_NAME);
}

void mkl_share(lua_State *L, int idx, const mk_term *t) {
  /* A record sent again (a prebuilt send in a loop) has its box already. */
  if (running.p != NULL && running.lp->co == L && running.lp->S->message.t != t)
    remember(running.lp->S, &running.lp->S->message, L, idx, t);
}

/* tostring(v), called protected by reason_of. */
static int p_tostring(lua_State *L) {
  luaL_tolstring(L, 1, NULL);
  return 1;
}

/* The reason of a failure whose own reason could not be made for want of
** memory: a term that is never allocated nor freed, so that a process
** that died of "not enough memory" is not seen to end normally (a nil
** reason, which a supervisor takes for a normal exit). */
#define NOMEM_REASON "not enough memory"
static struct { mk_term t; char s[sizeof NOMEM_REASON]; } nomem = {
  { MK_IMMORTAL, MK_STR, 1, 0, 0, sizeof NOMEM_REASON - 1, { 0 } }, NOMEM_REASON
};

/*
** The error value at the top of co (a process that failed) as a reason: a
** string or a term is itself (unless it has a __tostring); anything else
** is shown as tostring() shows it.  That may call the value's __tostring, which is the program's code
** running outside any activation: it runs protected, on the main thread,
** for at most TOSTRING_STEPS instructions, so that one that raises or loops
** costs the failing process its readable reason, never the program.
*/
static mk_term *reason_of(mkl_state *S, lua_State *co) {
  lua_State *L = S->L;
  const char *err;
  mk_term *t;
  lua_Hook hook;
  int mask, count, st;
  if (lua_type(co, -1) == LUA_TSTRING) {
    size_t n;
    const char *s = lua_tolstring(co, -1, &n);
    return mk_str(s, n);
  }
  /* A term is itself (boxes have a __tostring too); another object that
  ** says how it reads is shown so, not converted as a sequence. */
  if ((t = mkl_testbox(co, -1)) != NULL) return mk_ref(t);
  if (luaL_getmetafield(co, -1, "__tostring") != LUA_TNIL) lua_pop(co, 1);
  else {
    t = mkl_toterm(co, -1, &err);
    if (t != NULL && t->kind != MK_NIL) return t;
    mk_unref(t);
  }
  hook = lua_gethook(L);              /* someone's (a debugger's): kept */
  mask = lua_gethookmask(L);
  count = lua_gethookcount(L);
  lua_pushcfunction(L, p_tostring);
  lua_pushvalue(co, -1);
  lua_xmove(co, L, 1);
  lua_sethook(L, tostring_hook, LUA_MASKCOUNT, TOSTRING_TICK);
  tostring.on = 1;
  tostring.ticks = 0;
  st = lua_pcall(L, 1, 1, 0);
  tostring.on = 0;
  lua_sethook(L, hook, mask, count);
  if (st != LUA_OK) {
    const char *why = lua_tostring(L, -1);
    lua_pushfstring(L, "(a %s error value; its __tostring failed: %s)",
                    luaL_typename(co, -1), why ? why : "?");
    lua_remove(L, -2);
  }
  {
    size_t n;
    const char *s = lua_tolstring(L, -1, &n);
    t = mk_str(s, n);
  }
  lua_pop(L, 1);
  return t;
}

/* Push an event's fields as handle()'s Lua half expects them; returns how
** many, or 0 for an event Lua processes do not take. */
static int pushevent(mkl_state *S, lua_State *co, const mk_event *ev) {
  switch (ev->type) {
    case MK_EV_PRESENCE:
    case MK_EV_ABSENCE:
      lua_pushinteger(co, ev->type);
      lua_pushstring(co, ev->endpoint);
      lua_pushinteger(co, ev->meta);
      pushrole(S, co, &ev->role);
      if (ev->reason) mkl_pushterm(co, ev->reason); else lua_pushnil(co);
      if (!ev->deleted) return 7;
      lua_pushboolean(co, 1);      /* the deleted endpoint's own absence */
      return 8;
    case MK_EV_DELETED:
      lua_pushinteger(co, ev->type);
      lua_pushstring(co, ev->endpoint);
      lua_pushinteger(co, ev->meta);
      return 3;
    case MK_EV_MESSAGE:
      lua_pushinteger(co, ev->type);
      lua_pushstring(co, ev->endpoint);
      lua_pushinteger(co, ev->meta);
      pushmessage(S, co, ev->message);
      return 4;
    case MK_EV_SPAWNED:
      lua_pushinteger(co, ev->type);
      lua_pushinteger(co, (lua_Integer)(intptr_t)ev->cont);
      lua_pushinteger(co, (lua_Integer)ev->pid);
      return 3;
    case MK_EV_RESUME:
      lua_pushinteger(co, ev->type);
      lua_pushinteger(co, (lua_Integer)(intptr_t)ev->cont);
      return 2;
    default:
      return 0;
  }
}

/* The handler an event of this type goes to: its tag bit (MKL_TAG_*) and
** its field in a handler table; 0 for events that go to no handler. */
static int handler_of(mk_event_type type, const char **field) {
  switch (type) {
    case MK_EV_MESSAGE: *field = "on_message"; return MKL_TAG_MESSAGE;
    case MK_EV_PRESENCE: *field = "on_presence"; return MKL_TAG_PRESENCE;
    case MK_EV_ABSENCE:
    case MK_EV_DELETED: *field = "on_absence"; return MKL_TAG_ABSENCE;
    default: return 0;
  }
}

/* An event for an idle process whose endpoint has no handler for it would
** be dispatched to nobody (market.lua's dispatch drops it): skip the
** activation.  Observers receive every message that fits their topic
** (DESIGN §1) and seldom handle them (a server's observer of its
** connections sees every chunk they carry), and most endpoints ignore
** presence.  Raw reads of ctx (or ctx[METAS][meta], market.lua)
** [endpoint][field]; a handler table with a metatable takes the general
** path. */
static int unhandled(lua_State *co, const lproc *lp, const mk_event *ev) {
  /* co: any thread of the state, as scratch; the stack is left as found. */
  const char *field;
  int top, r = 1, bit = handler_of(ev->type, &field);
  /* A wake for a wait that ended goes to nobody either. */
  if (bit == 0) return ev->type == MK_EV_RESUME && IS_WAKE(ev->cont);
  /* The usual case, without a look into Lua tables: the endpoint's tag. */
  if (ev->tag & MKL_TAG_KNOWN) return !(ev->tag & bit);
  top = lua_gettop(co);
  /* A deleted endpoint's handlers are no longer in ctx (market.lua
  ** keeps them aside until MK_EV_DELETED). */
  if (ev->deleted || ev->type == MK_EV_DELETED) return 0;
  if (!lua_checkstack(co, 4)) return 0;
  lua_rawgeti(co, LUA_REGISTRYINDEX, lp->ctxref);
  if (ev->meta != 0 && lua_rawgeti(co, -1, MKL_CTX_METAS) == LUA_TTABLE)
    lua_rawgeti(co, -1, ev->meta);
  if (lua_type(co, -1) == LUA_TTABLE) {
    lua_pushstring(co, ev->endpoint);
    if (lua_rawget(co, -2) == LUA_TTABLE) {
      lua_pushstring(co, field);
      r = lua_rawget(co, -2) == LUA_TNIL && !lua_getmetatable(co, -2);
    }
  }
  lua_settop(co, top);
  return r;
}

/* The frame of a batch's body (batch, below), under what each event
** pushes: the process's context; the name of the endpoint of its last
** event, kept from one event to the next (most bursts go to one
** endpoint: lua_pushstring hashed the name and looked it up each time),
** or nil; and the last presence or absence handler whose parameters
** nextpeer read (an observer's burst goes to one function:
** lua_getinfo cost about 120 instructions), or nil, with whether it takes
** the role; the box of the last message when it was the shared one
** (pushshared: a burst of one record), or nil; and the key "on_message",
** read once per batch.  A stack slot is read with lua_pushvalue, for half
** the instructions of a registry slot's lua_rawgeti.  A slot holding a
** function keeps it alive, so the address lua_topointer gives for it is
** no other function's meanwhile; one holding a box keeps it, so the
** address where it keeps its term (mkl_boxslot) holds. */
#define B_CTX 1
#define B_NAME 2
#define B_FN 3
#define B_ROLE 4
#define B_MSG 5
#define B_KEY 6
#define B_TOP B_KEY

/*
** A presence or absence at level 0 (but a deleted endpoint's own absences)
** runs its handler as the activation's body, with no frame of market.lua's
** under it: fn(state, role, endpoint) or fn(state, role, reason,
** endpoint), pushed on co (empty), and what it returns is applied after,
** as a boot function's (handle).  The look-ups are made on the main
** thread, and what the call needs moved over in one lua_xmove: on co,
** putting fn under its arguments took more API calls (lua_copy) than the
** look-ups.  Returns the number of arguments, 0 when
** the endpoint has no such handler now (co left empty: nobody to tell),
** or -1 for dispatch to take it (co left empty): a handler table with a
** metatable, whose fields are Lua's to look up (code here runs outside
** any protected call), or a handler that is not a function.
**
** The role is a table made for the handler alone, and most of what such an
** event costs: making it, and the collector's work on it.  A Lua function
** declaring fewer than two parameters (and no `...`) cannot see its second
** argument, so it gets nil there instead of a table (takesrole).
*/
static MKL_INLINE int takesrole(lua_State *L, int fn) {
  lua_Debug ar;
  lua_pushvalue(L, fn);
  lua_getinfo(L, ">u", &ar);
  return ar.isvararg || ar.nparams >= 2;
}

/* The role (a table, or nil for a handler that cannot see it) and, for an
** absence, the reason: the arguments after the state. */
static MKL_INLINE void pushpeer(mkl_state *S, lua_State *L, const mk_event *ev, int role) {
  if (role) {
    pushshared(S, &S->topic, L, ev->role.topic);
    newrole(S, L, ev->role.orientation, ev->role.interest);
  } else {
    lua_pushnil(L);
  }
  if (ev->type == MK_EV_ABSENCE) {
    if (ev->reason) mkl_pushterm(L, ev->reason); else lua_pushnil(L);
  }
}

static MKL_INLINE int peerhandler(mkl_state *S, lproc *lp, lua_State *co, const mk_event *ev) {
  lua_State *L = S->L;     /* scratch for the look-ups, as in unhandled */
  int presence = ev->type == MK_EV_PRESENCE, nargs = presence ? 3 : 4;
  int b = lua_gettop(L);
  if (!(presence || ev->type == MK_EV_ABSENCE) || ev->meta != 0 || ev->deleted ||
      !(ev->tag & MKL_TAG_KNOWN) || !lua_checkstack(L, 10))
    return -1;
  /* b+1: ctx, b+2: the endpoint's name, b+3: its handlers, b+4: fn */
  lua_rawgeti(L, LUA_REGISTRYINDEX, lp->ctxref);
  pushname(S, L, ev->endpoint);
  lua_pushvalue(L, b + 2);
  if (lua_rawget(L, b + 1) != LUA_TTABLE || lua_getmetatable(L, b + 3)) {
    lua_settop(L, b);
    return -1;
  }
  lua_rawgeti(L, LUA_REGISTRYINDEX, S->fieldref[presence ? FIELD_PRESENCE : FIELD_ABSENCE]);
  switch (lua_rawget(L, b + 3)) {
    case LUA_TFUNCTION: break;
    case LUA_TNIL: lua_settop(L, b); return 0;
    default: lua_settop(L, b); return -1;
  }
  /* fn's arguments after it: state, role(, reason), name */
  lua_rawgeti(L, b + 1, MKL_CTX_STATE);
  pushpeer(S, L, ev, takesrole(L, b + 4));
  lua_pushvalue(L, b + 2);
  lua_xmove(L, co, nargs + 1);    /* fn and its arguments, where co starts */
  lua_settop(L, b);
  return nargs;
}

/*
** Push the handler `field` (FIELD_*) of the endpoint whose name is at
** `name` in the context at `ctx` (both indices of co), above its handler
** table; `key`, an index of co holding the field's name, or 0 to read it
** from the registry.  Returns 1; 0 when it has none now; -1 for dispatch
** to take the event: a handler table with a metatable (its fields are
** Lua's to look up), or a handler that is not a function.  What it pushed
** is left for the caller to drop.
*/
static MKL_INLINE int pushhandler(mkl_state *S, lua_State *co, int ctx, int name, int key,
                                  int field) {
  lua_pushvalue(co, name);
  if (lua_rawget(co, ctx) != LUA_TTABLE || lua_getmetatable(co, -1)) return -1;
  if (key != 0) lua_pushvalue(co, key);
  else lua_rawgeti(co, LUA_REGISTRYINDEX, S->fieldref[field]);
  switch (lua_rawget(co, -2)) {
    case LUA_TFUNCTION: return 1;
    case LUA_TNIL: return 0;
    case LUA_TBOOLEAN: return lua_toboolean(co, -1) ? -1 : 0;   /* false: refused */
    default: return -1;
  }
}

/*
** A message at level 0 runs its endpoint's on_message as the activation's
** body, as peerhandler does for a presence: fn(state, message, endpoint)
** on co (empty), what it returns applied after (handle).  Returns the
** number of arguments, 0 when the endpoint has no such handler now (co
** left empty), or -1 for dispatch to take it (co left empty): the cases
** of pushhandler, and a handler table without a tag.  market.lua's
** deliver did the same in Lua, one frame under every handler: a tenth of
** a message's instructions.
*/
static MKL_INLINE int messagehandler(mkl_state *S, lproc *lp, lua_State *co, const mk_event *ev) {
  int r;
  if (ev->meta != 0 || !(ev->tag & MKL_TAG_KNOWN)) return -1;
  /* The arguments first, so that only ctx is left to overwrite and the
  ** handlers to drop (three API calls fewer than arranging them after).
  ** 1: ctx, 2: state, 3: the message, 4: the endpoint's name, 5: its
  ** handlers, 6: fn */
  lua_rawgeti(co, LUA_REGISTRYINDEX, lp->ctxref);
  lua_rawgeti(co, 1, MKL_CTX_STATE);
  lp->state = lua_topointer(co, 2);       /* for the next one's prefetch */
  pushmessage(S, co, ev->message);
  /* the name from the last one's slot when it is the same: lua_pushstring
  ** compared it with strings in Lua's cache of C strings, picked by its
  ** address, a different one for each endpoint, and each compare was a
  ** miss at thousands of connections (issue 10) */
  pushname(S, co, ev->endpoint);
  if ((r = pushhandler(S, co, 1, 4, 0, FIELD_MESSAGE)) <= 0) {
    lua_settop(co, 0);
    return r;
  }
  lua_copy(co, 6, 1);
  lua_settop(co, 4);
  return 3;
}

/* Give lp a coroutine for an activation: one from the pool (its stack
** already grown by earlier activations) or a new one.  A hook on it that
** is not market's goes: a process that kept a pooled thread it ran on
** (coroutine.running() in a handler) and set a hook on it with
** debug.sethook had that hook run inside, and act as, whichever process
** borrowed the thread next. */
static lua_State *acquire(mkl_state *S, lproc *lp) {
  lua_Hook hook;
  if (S->npool > 0) {
    S->npool--;
    lp->co = S->pool[S->npool];
    lp->coref = S->poolref[S->npool];
  } else {
    lp->co = lua_newthread(S->L);
    lp->coref = luaL_ref(S->L, LUA_REGISTRYINDEX);
  }
  hook = lua_gethook(lp->co);
  if (hook != NULL && hook != budget_hook && hook != dead_hook) lua_sethook(lp->co, NULL, 0, 0);
  return lp->co;
}

/* The activation returned: its coroutine, empty again, goes back to the
** pool (or to the collector, which also shrinks pooled stacks). */
static void release(mkl_state *S, lproc *lp) {
  lua_settop(lp->co, 0);
  if (S->npool < (int)(sizeof S->pool / sizeof S->pool[0])) {
    S->pool[S->npool] = lp->co;
    S->poolref[S->npool] = lp->coref;
    S->npool++;
  } else {
    luaL_unref(S->L, LUA_REGISTRYINDEX, lp->coref);
  }
  lp->co = NULL;
  lp->coref = LUA_NOREF;
}

/* Does the event's endpoint refuse events of its kind (a handler false,
** mkl.h): dropped, whether the process is idle or waits? */
static int refused(uint32_t tag, mk_event_type type) {
  const char *field;
  int bit = handler_of(type, &field);
  return bit != 0 && (tag & MKL_TAG_KNOWN) && (tag & MKL_TAG_REFUSES(bit));
}

/* The VM asks before queueing an event that would be p's next: an idle
** process (not in straight-line code waiting in market.yield) would drop
** it unhandled at delivery, as above, so it need not be queued; nor an
** event its endpoint refuses, which a waiting process drops too. */
static int declines(mk_proc *p, uint32_t tag, mk_event_type type) {
  const char *field;
  int bit = handler_of(type, &field);
  lproc *lp;
  /* The tag first: most events go to a handler, and the answer is then
  ** no without a look at the process. */
  if (bit == 0 || !(tag & MKL_TAG_KNOWN) || (tag & bit)) return 0;
  if (tag & MKL_TAG_REFUSES(bit)) return 1;
  lp = mk_proc_data(p);
  return lp != NULL && !lp->waiting && !lp->running;
}

/* One activation of p: resume co, its coroutine, with nargs values, p
** being the running process meanwhile.  Activations nest (a handler that
** kills a nested VM runs its processes' absences at once): the outer one
** is the running one again after. */
static int activate(mk_proc *p, lproc *lp, lua_State *co, int nargs, int *nres,
                    int *overrun) {
  mkl_state *S = lp->S;
  mk_proc *saved = S->current, *outer = running.p;
  lproc *outerlp = running.lp;
  int st;
  lp->waiting = 0;
  S->current = p;
  running.p = p;
  running.lp = lp;
  lp->running = 1;
  st = resume(p, co, nargs, nres, overrun);
  lp->running = 0;
  running.p = outer;
  running.lp = outerlp;
  S->current = saved;
  return st;
}

/*
** The value at the top of co (what a handler or a boot function returned)
** applied as the rest of the same activation: with `sends`, in C when it
** is a transition of sends alone (mkl_apply_sends), which is all an answer
** to a message (echo) holds: applying it through market.lua's apply took
** a second resume, which cost more than the sends.  Returns 0 when that
** did it all; else the number of arguments of the call pushed on co for
** the rest: apply(ctx, transition), or rest(ctx, transition, first, last)
** for actions mkl_apply_sends left.  co is not running (handle), or this
** is its process's own code (batch).
*/
static MKL_INLINE int toapply(mk_proc *p, lproc *lp, lua_State *co, int sends) {
  mkl_state *S = lp->S;
  int done = 0, first = 0, last = 0;
  if (sends) {
    mk_proc *outer = running.p;
    lproc *outerlp = running.lp;
    running.p = p;                   /* for mkl_share, as in activate */
    running.lp = lp;
    done = mkl_apply_sends(co, -1, lp->ctxref, p, &first, &last);
    running.p = outer;
    running.lp = outerlp;
    if (done == 1) return 0;
  }
  lua_rawgeti(co, LUA_REGISTRYINDEX, done == 0 ? S->applyref : S->restref);
  lua_rawgeti(co, LUA_REGISTRYINDEX, lp->ctxref);
  lua_rotate(co, -3, 2);
  if (done == 0) return 2;
  lua_pushinteger(co, first);
  lua_pushinteger(co, last);
  return 4;
}

/*
** Consecutive events for one process, one resume.  When the event queued
** behind the one a handler is about to take is the same process's (a
** burst of messages to one subscriber; an observer hearing of each process
** it watches being killed), the activation's body is batch(fn, args...),
** which calls the handler, applies what it returns as handle() would, and
** goes on with the next event at the head of the queue while that is the
** process's and has a handler found in C (mk_proc_next, nextmessage,
** nextpeer): one lua_resume, and one step of the VM, for the lot, where
** each event cost its own (about 400 instructions of a message's 2,100).
** The order of events is the queue's, each still is an activation of its
** own (counted, traced, given the whole budget: budget_next), and a
** handler that fails or waits stops the batch where it is: a failure in
** one event's handler fails the process, and the events queued behind it
** are dropped with it, as they were; a wait keeps the coroutine, and the
** batch goes on after the handler returns (the continuation).  An event
** the batch does not take (another process's, one for dispatch, one that
** ends a continuation) is left at the head of the queue for the VM's next
** step.  The body is a C function, so the handler has one frame under it
** (debug.traceback shows "[C]: in ?"), which crash reports leave out as
** they leave out market's own.  Only a batch runs so: an event alone
** keeps the handler as its body (handle).
*/
enum { B_HANDLED, B_APPLIED };

/* The event's endpoint name at B_NAME, where the last one stays while
** the next has the same (*last: Lua's copy of it, or NULL). */
static MKL_INLINE void framename(lua_State *co, const char *name, const char **last) {
  if (*last == NULL || !samename(*last, name)) {
    *last = lua_pushstring(co, name);
    lua_replace(co, B_NAME);
  }
}

/* The box at B_MSG, as batchk keeps it in C: its term, and where the box
** keeps it; t NULL when not known (the slot is then refilled). */
typedef struct framebox {
  const mk_term *t;
  mk_term *const *held;
} framebox;

/* The next message's handler and its arguments, as messagehandler pushes
** them, with the batch's frame: fn(state, message, endpoint) above the
** handler table.  Returns the number of arguments, or pushhandler's 0
** or -1 (the frame left as it was). */
static MKL_INLINE int nextmessage(mkl_state *S, lua_State *co, const mk_event *ev,
                                  const char **last, framebox *msg) {
  int r;
  if (ev->meta != 0) return -1;
  framename(co, ev->endpoint, last);
  if ((r = pushhandler(S, co, B_CTX, B_NAME, B_KEY, FIELD_MESSAGE)) <= 0) {
    lua_settop(co, B_TOP);
    return r;
  }
  lua_rawgeti(co, B_CTX, MKL_CTX_STATE);
  /* The frame's box, while it holds the term (as pushshared checks: a box
  ** that holds it keeps it alive, so it is no other term at its address). */
  if (ev->message == msg->t && *msg->held == msg->t) {
    lua_pushvalue(co, B_MSG);
  } else {
    pushmessage(S, co, ev->message);
    if (S->message.t == ev->message && S->message.held != NULL &&
        *S->message.held == ev->message) {       /* the shared box, pushed */
      lua_pushvalue(co, -1);
      lua_replace(co, B_MSG);
      msg->t = ev->message;
      msg->held = S->message.held;
    }
  }
  lua_pushvalue(co, B_NAME);
  return 3;
}

/* The frame's last peer handler (B_FN, B_ROLE) as batchk keeps it in C:
** read from the frame at the first presence or absence of each entry into
** batchk, not at every one (lua_topointer and lua_toboolean of co's
** slots), and kept in step with the frame by nextpeer. */
typedef struct lastpeer {
  const void *fn;          /* lua_topointer of B_FN's function, or NULL */
  int role;                /* B_ROLE */
  int known;               /* read from the frame */
} lastpeer;

/* The next presence's or absence's handler and its arguments, as
** peerhandler pushes them, with the batch's frame: fn(state, role,
** endpoint) or fn(state, role, reason, endpoint) above the handler table,
** looked up on co itself (peerhandler's look-ups on the main thread and
** its lua_xmove were a sixth of an observer's event).  While a burst goes
** to one function, whether it takes the role is the frame's.  Returns as
** nextmessage does. */
static MKL_INLINE int nextpeer(mkl_state *S, lua_State *co, const mk_event *ev,
                               const char **last, lastpeer *peer) {
  int r, role;
  const void *fn;
  if (ev->meta != 0 || ev->deleted) return -1;
  framename(co, ev->endpoint, last);
  r = pushhandler(S, co, B_CTX, B_NAME, 0,
                  ev->type == MK_EV_PRESENCE ? FIELD_PRESENCE : FIELD_ABSENCE);
  if (r <= 0) {
    lua_settop(co, B_TOP);
    return r;
  }
  if (!peer->known) {
    peer->fn = lua_topointer(co, B_FN);
    peer->role = lua_toboolean(co, B_ROLE);
    peer->known = 1;
  }
  if ((fn = lua_topointer(co, -1)) == peer->fn) {
    role = peer->role;
  } else {                        /* kept for the burst's next event */
    role = takesrole(co, -1);
    lua_pushvalue(co, -1);
    lua_replace(co, B_FN);
    lua_pushboolean(co, role);
    lua_replace(co, B_ROLE);
    peer->fn = fn;
    peer->role = role;
  }
  lua_rawgeti(co, B_CTX, MKL_CTX_STATE);
  pushpeer(S, co, ev, role);
  lua_pushvalue(co, B_NAME);
  return ev->type == MK_EV_PRESENCE ? 3 : 4;
}

static int batchk(lua_State *co, int status, lua_KContext k) {
  mk_proc *p = running.p;
  lproc *lp = running.lp;
  mkl_state *S = lp->S;
  mk_event ev;
  const char *field, *last = lua_tostring(co, B_NAME);
  lastpeer peer = { NULL, 0, 0 };
  framebox msg = { NULL, NULL };
  int nargs;
  (void)status;
  for (;;) {
    /* What the handler returned, applied as handle() applies it. */
    if (k == B_HANDLED && !lua_isnil(co, -1) && (nargs = toapply(p, lp, co, 1)) > 0)
      lua_callk(co, nargs, 0, B_APPLIED, batchk);
    lua_settop(co, B_TOP);
    do {          /* the next event, if it is this process's: its handler */
      if (!mk_proc_next(p, &ev)) return 0;
      if (!(ev.tag & MKL_TAG_KNOWN)) return 0;
      if (!(ev.tag & handler_of(ev.type, &field))) {
        nargs = 0;                                /* unhandled: dropped */
      } else {
        nargs = ev.type == MK_EV_MESSAGE ? nextmessage(S, co, &ev, &last, &msg)
                                         : nextpeer(S, co, &ev, &last, &peer);
        if (nargs < 0) return 0;                  /* dispatch's: the VM's next step */
      }
      mk_proc_take(p);
      lp->activations++;
    } while (nargs == 0);
    budget_next(co);
    k = B_HANDLED;
    lua_callk(co, nargs, 1, B_HANDLED, batchk);
  }
}

/* batch(fn, args...): the first event's handler, under the frame. */
static int batch(lua_State *co) {
  int nargs = lua_gettop(co) - 1;
  lua_rawgeti(co, LUA_REGISTRYINDEX, running.lp->ctxref);
  lua_settop(co, lua_gettop(co) + B_KEY - 2);   /* B_NAME, B_FN, B_ROLE, B_MSG: nil */
  lua_rawgeti(co, LUA_REGISTRYINDEX, running.lp->S->fieldref[FIELD_MESSAGE]);
  lua_rotate(co, 1, B_TOP);
  lua_callk(co, nargs, 1, B_HANDLED, batchk);
  return batchk(co, LUA_OK, B_HANDLED);
}

#define YIELD_REASON \
  "coroutine.yield() outside market.yield(): a process suspends only through market"

/* ---- crash reports ------------------------------------------------------ */

/* Frames a traceback shows at most: the first ones and the last ones, as
** luaL_traceback (a stack overflow has some 200,000). */
#define TB_FIRST 10
#define TB_LAST 11

/* Whether ar is a frame of market's own Lua code: market.lua, the drivers'
** Lua halves and the wrapper around a spawned chunk (chunk names "=market"
** and "=market.*", lmarket.c and host.c). */
static int own_frame(const lua_Debug *ar) {
  return strncmp(ar->source, "=market", 7) == 0 &&
         (ar->source[7] == '\0' || ar->source[7] == '.');
}

/* Whether the frame at `level` of co is left out of a report: market's own
** Lua frames, and C functions that no program code called: the first Lua
** frame under them (their caller, or its caller...) is market's, or there
** is none (the C functions that apply a transition a handler returned). */
static int hidden(lua_State *co, int level, lua_Debug *ar) {
  lua_Debug up;
  if (*ar->what != 'C') return own_frame(ar);
  while (lua_getstack(co, ++level, &up))
    if (lua_getinfo(co, "S", &up) && *up.what != 'C') return own_frame(&up);
  return 1;
}

/* Push the name of the function at the top of L as loaded modules know it
** ("market.perform", "string.format"), replacing it, and return 1; or pop
** it and return 0.  As lauxlib's pushglobalfuncname, one level deep. */
static int modulename(lua_State *L) {
  int top = lua_gettop(L);
  luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_LOADED_TABLE);
  lua_pushnil(L);
  while (lua_next(L, top + 1) != 0) {
    if (lua_type(L, -2) == LUA_TSTRING && lua_type(L, -1) == LUA_TTABLE) {
      lua_pushnil(L);
      while (lua_next(L, -2) != 0) {
        if (lua_type(L, -2) == LUA_TSTRING && lua_rawequal(L, -1, top)) {
          const char *mod = lua_tostring(L, -4), *key = lua_tostring(L, -2);
          if (strcmp(mod, LUA_GNAME) == 0) lua_pushstring(L, key);
          else lua_pushfstring(L, "%s.%s", mod, key);
          lua_replace(L, top);
          lua_settop(L, top);
          return 1;
        }
        lua_pop(L, 1);
      }
    }
    lua_pop(L, 1);
  }
  lua_settop(L, top - 1);
  return 0;
}

static void frameline(lua_State *L, luaL_Buffer *b, lua_Debug *ar) {
  if (ar->currentline > 0) lua_pushfstring(L, "\n\t%s:%d: in ", ar->short_src, ar->currentline);
  else lua_pushfstring(L, "\n\t%s: in ", ar->short_src);
  luaL_addvalue(b);
  lua_getinfo(L, "f", ar);          /* co's function, pushed on L (as lauxlib does) */
  if (modulename(L)) {
    lua_pushfstring(L, "function '%s'", lua_tostring(L, -1));
    lua_remove(L, -2);
  } else if (*ar->namewhat != '\0') {
    lua_pushfstring(L, "%s '%s'", ar->namewhat, ar->name);
  } else if (*ar->what == 'm') {
    lua_pushliteral(L, "main chunk");
  } else if (*ar->what != 'C') {
    lua_pushfstring(L, "function <%s:%d>", ar->short_src, ar->linedefined);
  } else {
    lua_pushliteral(L, "?");
  }
  luaL_addvalue(b);
  if (ar->istailcall) luaL_addstring(b, "\n\t(...tail calls...)");
}

/* The deepest level of co's stack, found as lauxlib's lastlevel does: each
** lua_getstack walks the frames from the top, so a walk over all of them
** (200,000 in a stack overflow) would take their square. */
static int lastlevel(lua_State *co) {
  lua_Debug ar;
  int li = 1, le = 1;
  while (lua_getstack(co, le, &ar)) { li = le; le *= 2; }
  while (li < le) {
    int m = (li + le) / 2;
    if (lua_getstack(co, m, &ar)) li = m + 1; else le = m;
  }
  return le - 1;
}

static int shown(lua_State *co, int level, lua_Debug *ar) {
  return lua_getstack(co, level, ar) && lua_getinfo(co, "Slnt", ar) && !hidden(co, level, ar);
}

/*
** Push on L the traceback of co, a coroutine stopped where its process
** failed (an error leaves its frames in place; a yield or a C function
** that failed it still runs in them), as luaL_traceback writes one, with
** market's own frames left out: the lines of the program's code that led
** to the failure.  "" when no frame is left.
*/
static void pushtraceback(lua_State *L, lua_State *co) {
  luaL_Buffer b;
  lua_Debug ar;
  int first[TB_FIRST], last[TB_LAST], nfirst = 0, nlast = 0, level, top = lastlevel(co), from;
  for (level = 0; level <= top && nfirst < TB_FIRST; level++)
    if (shown(co, level, &ar)) first[nfirst++] = level;
  from = level;
  for (level = top; level >= from && nlast < TB_LAST; level--)
    if (shown(co, level, &ar)) last[nlast++] = level;
  luaL_buffinit(L, &b);
  if (nfirst > 0) luaL_addstring(&b, "stack traceback:");
  for (level = 0; level < nfirst; level++) {
    shown(co, first[level], &ar);
    frameline(L, &b, &ar);
  }
  if (nlast > 0 && last[nlast - 1] > from) {
    lua_pushfstring(L, "\n\t...\t(skipping %d levels)", last[nlast - 1] - from);
    luaL_addvalue(&b);
  }
  while (nlast > 0) {
    shown(co, last[--nlast], &ar);
    frameline(L, &b, &ar);
  }
  luaL_pushresult(&b);
}

/* p_traceback(co): pushtraceback, called protected by crashed. */
static int p_traceback(lua_State *L) {
  pushtraceback(L, lua_touserdata(L, 1));
  return 1;
}

/*
** The crash hook of every VM the Lua state serves (mkl_attach; nested VMs
** inherit it): a process is failing and still holds its endpoints.  A Lua
** process failing in handle() is S->failing on S->failing_co; one that a C
** function it called failed (a strict error: vm.c's mk_failf) is the
** running one, on its coroutine.  Either way the coroutine's frames are
** still there: the traceback is taken from them now.  Other processes
** (native ones, or one killed with mk_fail from elsewhere) have none.
*/
static void crashed(void *ud, mk_proc *p, mk_term *reason) {
  mkl_state *S = ud;
  lua_State *co = S->failing == p ? S->failing_co
                : running.p == p ? running.lp->co : NULL;
  const char *tb = NULL;
  int boot = co != NULL && ((lproc *)mk_proc_data(p))->boot;
  int pushed = 0;
  if (S->on_fail == NULL) return;
  if (co != NULL && lua_checkstack(S->L, 3)) {
    /* Protected: out of memory here costs the report its traceback. */
    lua_pushcfunction(S->L, p_traceback);
    lua_pushlightuserdata(S->L, co);
    pushed = 1;
    if (lua_pcall(S->L, 1, 1, 0) == LUA_OK && *(tb = lua_tostring(S->L, -1)) == '\0') tb = NULL;
  }
  S->on_fail(S->fail_ud, p, reason, tb, boot);
  if (pushed) lua_pop(S->L, 1);
}

/* Fail p, whose activation on co stopped, with reason (borrowed). */
static void fail_on(mkl_state *S, mk_proc *p, lua_State *co, mk_term *reason) {
  mk_proc *outer = S->failing;
  lua_State *outerco = S->failing_co;
  S->failing = p;
  S->failing_co = co;
  mk_fail(p, reason);
  S->failing = outer;
  S->failing_co = outerco;
}

/*
** A crowd of processes (connections, a wave of spawns) leaves garbage that
** only a major collection frees: its processes' records grew old while they
** lived.  Under the generational collector the host sets (host.c) a major
** collection comes only once the heap has grown to four times what the
** last one left, which after the crowd has gone may not happen for a long
** time; until then the old dead hold the heap at its peak, the minor
** collections (a share of that heap each) grow with it, and each one walks
** young objects scattered among the dead: after 10,000 echo connections
** closed, minor collections of 100 to 250 us, often enough to be the p999
** of the one connection left (issue 10, docs/performance.md).  So once
** the live processes fall to a quarter of a peak of DROP_PEAK or more, the
** next activation starts with a full collection (not here: destroy may run
** inside a collection, from a box's finalizer), unless the program stopped
** the collector.  The peak is then what is left, so a drop from 10,000 may
** cost two collections (at 2,500 and at 625), while the drop is going on.
** A full collection reads the whole heap, which may be far larger than
** the crowd (a program's cache of a GiB, and a thousand workers coming and
** going each second): so it is made only if the heap has grown by half
** since the last one (collect_dropped), which bounds their cost by what
** the program allocates, as Lua's own major collections are.
*/
#define DROP_PEAK 1000
static void dropped(mkl_state *S) {
  S->nlive--;
  if (S->dropgc && S->peak >= DROP_PEAK && S->nlive <= S->peak / 4) {
    S->collect = 1;
    S->peak = S->nlive;
  }
}

static MKL_NOINLINE void collect_dropped(mkl_state *S) {
  int kb = lua_gc(S->L, LUA_GCCOUNT);
  S->collect = 0;
  if (lua_gc(S->L, LUA_GCISRUNNING) && kb - S->basekb >= S->basekb / 2) {
    lua_gc(S->L, LUA_GCCOLLECT);
    S->basekb = lua_gc(S->L, LUA_GCCOUNT);
  }
}

void mkl_collect_drops(lua_State *L, int on) {
  mkl_state *S = getstate(L);
  if (S != NULL) S->dropgc = on != 0;
}

/*
** A minor collection comes each youngmin percent of the heap allocated
** (host.c: 2%, so that young garbage is swept while still in the cache),
** and each one pays a fixed part (atomic: the threads, the roots, the
** tables written since), about 2,600 instructions.  A small heap makes
** them close: with 500 connections passing 4 KiB messages the Lua heap
** is some 400 KiB, and a minor collection came every second round trip,
** its fixed part 1,300 instructions of each (issue 10).  So the
** multiplier is raised to keep them youngkb KiB apart at least, looked
** at every 256 activations.  Lua has no call that sets the multiplier
** without setting the mode: one made while the program has chosen the
** incremental collector (collectgarbage("incremental")) returns that
** mode, and the program's choice is put back and left alone from then.
*/
static MKL_NOINLINE void young_floor(mkl_state *S) {
  int kb = lua_gc(S->L, LUA_GCCOUNT), pct;
  if (kb < 1) kb = 1;
  pct = (S->youngkb * 100 + kb - 1) / kb;
  if (pct < S->youngmin) pct = S->youngmin;
  if (pct > 100) pct = 100;
  if (pct == S->youngpct) return;
  switch (lua_gc(S->L, LUA_GCGEN, pct, 0)) {
    case LUA_GCGEN: S->youngpct = pct; break;
    case LUA_GCINC: lua_gc(S->L, LUA_GCINC, 0, 0, 0); S->youngkb = 0; break;
    default: break;        /* -1: inside a finalizer, nothing done: later */
  }
}

/* A quarter of the minor collections' interval from a heap of kb KiB. */
static int quarter(const mkl_state *S, int kb) {
  long long q = (long long)S->youngpct * kb / 400;
  return q < 1 ? 1 : q > INT_MAX / 4 ? INT_MAX / 4 : (int)q;
}

/* A collection seen, the heap at kb KiB after it. */
static void settle_from(mkl_state *S, int kb) {
  S->settlebase = S->settlelast = kb;
  S->settlenext = kb > INT_MAX - 3 * quarter(S, kb) ? INT_MAX : kb + 3 * quarter(S, kb);
}

/*
** Minor collections between deliveries.  A minor collection comes when
** the program has allocated youngpct percent of the heap since the last
** one, so inside whichever handler made the allocation that crossed the
** line, before that handler's reply was written: echo.lua at one
** connection had one every 64 round trips, each 24 us (40 us after a
** crowd of 10,000 had come and gone), and they set its p99 and p999
** (docs/performance.md, "Latency at one connection").  So the ground
** calls settle_gc after each slice of deliveries, once the slice's writes
** are made (mk_ground_on_settle), and a collection that would fall due
** inside the next slice is made there: the next request finds it done.
**
** Lua's debt is not visible, and its pace is its own (after a major
** collection that freed little it waits long, and a step forced then
** would be a full collection each time), so the collector is not stepped
** outright: lua_gc(LUA_GCSTEP, k) adds k KiB to the debt and steps only
** if that makes it due, and when it did not (the heap count is the same)
** the k KiB are taken back.  k is what the next slice will likely
** allocate, twice the last one's, at most a quarter of the interval: a
** collection due later would not come inside the next slice, and one
** pulled forward further is only made more often.  That look costs four
** calls, so it is made only once the heap has grown three quarters of
** the interval since the last collection seen (settlebase: a drop in the
** count).  A handler that allocates more than that at once still meets
** the collection inside, as before.  Only in generational mode as the
** host set it up (youngkb > 0), and never while the program has stopped
** the collector.
*/
static void settle_gc(void *ud) {
  mkl_state *S = ud;
  int kb, k, grew, after;
  if (S->closing || S->youngkb == 0) return;
  if ((kb = lua_gc(S->L, LUA_GCCOUNT)) < 0) return;     /* inside a finalizer */
  if (kb < S->settlelast) settle_from(S, kb);           /* collected since the last look */
  grew = kb - S->settlelast;
  S->settlelast = kb;
  if (kb < S->settlenext || !lua_gc(S->L, LUA_GCISRUNNING)) return;
  k = quarter(S, S->settlebase);
  if (grew < k / 2) k = 2 * grew + 1;
  lua_gc(S->L, LUA_GCSTEP, k);
  after = lua_gc(S->L, LUA_GCCOUNT);
  if (after == kb) lua_gc(S->L, LUA_GCSTEP, -k);        /* not due yet: the k KiB back */
  else settle_from(S, after);
}

void mkl_young_floor(lua_State *L, int minor, int floor_kb) {
  mkl_state *S = getstate(L);
  if (S == NULL) return;
  S->youngmin = (uint8_t)(minor < 1 ? 1 : minor > 100 ? 100 : minor);
  S->youngkb = floor_kb > 0 ? floor_kb : 0;
  S->youngpct = S->youngmin;           /* what the host set */
  S->youngtick = 0;
}

static void handle(mk_proc *p, const mk_event *ev) {
  lproc *lp = mk_proc_data(p);
  mkl_state *S = lp->S;
  lua_State *co;
  int nargs, nres = 0, st, overrun;
  if (S->closing) return;
  if (S->collect) collect_dropped(S);
  if (S->youngkb > 0 && ++S->youngtick == 0) young_floor(S);
  lp->activations++;
  if (ev->type == MK_EV_BOOT) {
    /* The boot function is the coroutine's body, called with the pid: no
    ** frame of market.lua's lies under it, so straight-line code that
    ** waits keeps the shortest stack it can (await).  What it returns is
    ** applied after it returns (below).  The state's slot is the state's
    ** from now. */
    co = acquire(S, lp);
    lua_rawgeti(co, LUA_REGISTRYINDEX, lp->ctxref);
    lua_rawgeti(co, -1, MKL_CTX_STATE);
    lua_pushnil(co);
    lua_rawseti(co, -3, MKL_CTX_STATE);
    lua_remove(co, -2);
    lua_pushinteger(co, (lua_Integer)mk_proc_pid(p));
    nargs = 1;
    lp->applies = APPLY_LUA;
  } else if (lp->waiting) {
    /* Straight-line code suspended in a wait: the event is what await's
    ** continuation finds on its stack, unless its endpoint refuses it (a
    ** server's observer of its connections, tcp.lua, refuses the chunks
    ** they carry: kept for market.yield(), they piled up while the
    ** server's owner waited). */
    co = lp->co;
    if (refused(ev->tag, ev->type)) return;
    if (ev->type == MK_EV_RESUME && IS_WAKE(ev->cont)) {
      if (!timedout(lp, ev->cont)) return;
      lua_pushlightuserdata(co, WAKE_MARK);
      nargs = 1;
    } else if ((nargs = pushevent(S, co, ev)) == 0) {
      return;
    }
  } else {
    if (unhandled(S->L, lp, ev)) return;
    /* Idle between events: a fresh activation, the handler itself or
    ** dispatch(ctx, event...). */
    co = acquire(S, lp);
    nargs = ev->type == MK_EV_MESSAGE ? messagehandler(S, lp, co, ev)
                                      : peerhandler(S, lp, co, ev);
    if (nargs == 0) { release(S, lp); return; }
    if (nargs > 0) {
      mk_event next;
      if (mk_proc_next(p, &next)) {      /* more of this process's behind */
        lua_pushcfunction(co, batch);
        lua_insert(co, 1);
        nargs++;
      } else {
        lp->applies = APPLY_C;
      }
    } else {
      lua_rawgeti(co, LUA_REGISTRYINDEX, S->dispatchref);
      lua_rawgeti(co, LUA_REGISTRYINDEX, lp->ctxref);
      if ((nargs = pushevent(S, co, ev)) == 0) { release(S, lp); return; }
      nargs++;
    }
  }
  st = activate(p, lp, co, nargs, &nres, &overrun);
  if (lp->applies && st == LUA_OK && !overrun) {
    /* The boot function or handler returned, at its event or at a later
    ** one it waited for.  A transition it returned is applied, in C when
    ** a handler's holds sends alone (toapply), else by apply(ctx,
    ** transition), on the same coroutine, as the rest of that activation. */
    int how = lp->applies;
    lp->applies = 0;
    if (nres > 0 && !lua_isnil(co, -nres)) {
      lua_settop(co, lua_gettop(co) - nres + 1);
      int n = toapply(p, lp, co, how == APPLY_C);
      if (n > 0) {
        lp->applies = how == APPLY_LUA ? APPLY_LAST_BOOT : APPLY_LAST;
        st = activate(p, lp, co, n, &nres, &overrun);
        lp->applies = 0;
      }
    }
    /* The boot function has returned: its at-return function, once, as
    ** the rest of this activation (mkl.h, MKL_CTX_AT_RETURN). */
    if (how == APPLY_LUA && lp->at_return && st == LUA_OK && !overrun && mk_proc_alive(p)) {
      lp->at_return = 0;
      lua_settop(co, 0);
      lua_rawgeti(co, LUA_REGISTRYINDEX, lp->ctxref);
      lua_rawgeti(co, 1, MKL_CTX_AT_RETURN);
      lua_pushnil(co);
      lua_rawseti(co, 1, MKL_CTX_AT_RETURN);
      lua_remove(co, 1);
      st = activate(p, lp, co, 0, &nres, &overrun);
    }
  }
  if (st == LUA_YIELD && !overrun) {
    lua_pop(co, nres);
    if (!lp->waiting && mk_proc_alive(p)) {
      /* A coroutine.yield() fails the process (a boot process's failure
      ** exits 1: it exited 0, silently). */
      mk_term *reason = mk_cstr(YIELD_REASON);
      fail_on(S, p, co, reason);
      mk_unref(reason);
    }
  } else if (st == LUA_OK && !overrun) {
    release(S, lp);
  } else {
    /* An error, or the budget ran out (the hook yielded or raised: its
    ** message says where, the reason is the same whatever the code did
    ** with the error meanwhile).
    ** The coroutine is left as it is and dropped with the process.  Clearing
    ** its stack would run the __close handlers of its pending to-be-closed
    ** variables, unprotected and beyond any budget (one that raises aborted
    ** the program); Lua itself runs them only when a coroutine is closed,
    ** which a failed process's never is. */
    mk_term *reason = overrun ? mk_cstr(BUDGET_REASON) : reason_of(S, co);
    if (reason == NULL) reason = &nomem.t;
    if (mk_proc_alive(p)) fail_on(S, p, co, reason);
    mk_unref(reason);
  }
}

/*
** The registry slot ref holds the context of a process now gone: kept
** among the spares (S->spare), or given back to the registry if the list
** cannot grow.  The context may stay in it, emptied, for the next spawn
** (newproc), which then makes no table, where making one and collecting
** it were two of the nine Lua allocations of a spawn and 5% of its
** instructions (issue 10).  Emptying costs about 250 instructions and
** touches the context's memory, so it is done only while spawns want it:
** a VM keeps at most as many emptied contexts as the last run of spawns
** took spare slots (S->demand; a run ends when a process ends).  One that
** kills what it spawned once, or that spawns fewer than it has kept,
** pays nothing for it.  Nor is a context of more than CTX_KEPT entries
** kept (several endpoints, continuations, a backlog): its hash part is
** larger than a handler process needs.  The others go to the collector as
** before (the slot then holds false).  What is kept stays until a spawn
** takes it: at most one empty table of two slots (120 bytes) for each
** process the VM had at its most, live to the collector, as the records
** runtime/pool.c keeps are to malloc.
**
** Nothing of the dead process's can see the context again.  Only the
** registry slot and the process's own coroutines hold it (the process
** runs no other line once dead: settle; a coroutine still held is never
** resumed again, one given back to the pool was cleared: release), and
** market.lua keeps it in no closure and lends it to no caller.  A process
** is destroyed when the last reference to it goes (vm.c, proc_unref),
** never while an activation of its own is running.  ctx has no metatable
** (nothing sets one), so the raw clearing runs no code.
*/
#define CTX_KEPT 2
static MKL_NOINLINE int emptied(lua_State *L, int ref) {  /* kept off destroy's path */
  int n = 0;
  /* L runs no function of its own here (a process's coroutine may be
  ** running): room is asked for the context, a key and its value. */
  if (!lua_checkstack(L, 3)) return 0;
  lua_rawgeti(L, LUA_REGISTRYINDEX, ref);
  /* Each entry found is set to nil (which allocates nothing) and the
  ** search starts again from the first: lua_next from nil finds the slot
  ** to go on from without a lookup of the key, and there are at most
  ** CTX_KEPT + 1 of them. */
  lua_pushnil(L);
  while (lua_next(L, -2)) {
    if (++n > CTX_KEPT) {
      lua_pop(L, 3);
      return 0;
    }
    lua_pop(L, 1);
    lua_pushnil(L);
    lua_rawset(L, -3);
    lua_pushnil(L);
  }
  lua_pop(L, 1);
  return 1;
}

static void spare_ctx(mkl_state *S, int ref) {
  lua_State *L = S->L;
  if (S->nspare == S->maxspare) {
    int m = S->maxspare ? 2 * S->maxspare : 64;
    int *grown = S->maxspare < INT_MAX / 2 ? realloc(S->spare, (size_t)m * sizeof *grown) : NULL;
    if (grown == NULL) {
      luaL_unref(L, LUA_REGISTRYINDEX, ref);
      return;
    }
    S->spare = grown;
    S->maxspare = m;
  }
  if (S->run > 0) {
    S->demand = S->run;
    S->run = 0;
  }
  if (S->nkept < S->demand && emptied(L, ref)) {
    S->nkept++;
    S->spare[S->nspare++] = ref;
  } else {
    /* Below the kept contexts: the first of them moves to the top.  On
    ** top, the slot would bury them under the slots of a run of kills
    ** after a larger one (100,000 spawned and killed, then 10,000), and
    ** the spawns would make contexts while the kept ones, never taken
    ** again, were marked by every collection. */
    int below = S->nspare - S->nkept;
    lua_pushboolean(L, 0);            /* the slot exists: nothing allocated */
    lua_rawseti(L, LUA_REGISTRYINDEX, ref);
    if (S->nkept > 0) S->spare[S->nspare] = S->spare[below];
    S->spare[below] = ref;
    S->nspare++;
  }
}

/*
** Values closed when their process ends, however it ends (mkl_close_at_end):
** the sockets of the drivers' Lua processes.  A process that is killed
** runs no more handlers, so before only a collection closed a socket it
** held, and a listener killed with quit(pid) kept its port till then.
** The registry's table at &key_owned maps a process (its lproc, as a
** light userdata) to the set of its values, weak, so that a value the
** process lets go is collected (and closed by its __gc) as before.
*/
static const char key_owned = 0;

int mkl_close_at_end(lua_State *L, int idx) {
  mk_proc *p = mkl_acting(L);
  lproc *lp;
  if (p == NULL || (lp = mk_proc_data(p)) == NULL) return -1;
  idx = lua_absindex(L, idx);
  if (lua_rawgetp(L, LUA_REGISTRYINDEX, &key_owned) != LUA_TTABLE) {
    lua_pop(L, 1);
    lua_newtable(L);
    lua_pushvalue(L, -1);
    lua_rawsetp(L, LUA_REGISTRYINDEX, &key_owned);
  }
  if (lua_rawgetp(L, -1, lp) != LUA_TTABLE) {
    lua_pop(L, 1);
    lua_createtable(L, 0, 1);
    lua_createtable(L, 0, 1);
    lua_pushliteral(L, "k");
    lua_setfield(L, -2, "__mode");
    lua_setmetatable(L, -2);
    lua_pushvalue(L, -1);
    lua_rawsetp(L, -3, lp);
  }
  lua_pushvalue(L, idx);
  lua_pushboolean(L, 1);
  lua_rawset(L, -3);
  lua_pop(L, 2);
  lp->owns = 1;
  return 0;
}

/* Close what lp's process holds (above), each by its __close, which is
** the C function of a market.sys socket: no code of a process runs.  Not
** while lua_close runs: the collector closes everything then. */
static void close_owned(lproc *lp) {
  lua_State *L = lp->S->L;
  int top = lua_gettop(L);
  if (lp->S->closing) return;
  lua_rawgetp(L, LUA_REGISTRYINDEX, &key_owned);
  if (lua_rawgetp(L, -1, lp) == LUA_TTABLE) {
    lua_pushnil(L);
    lua_rawsetp(L, -3, lp);
    lua_pushnil(L);
    while (lua_next(L, -2)) {
      lua_pop(L, 1);
      if (luaL_getmetafield(L, -1, "__close") != LUA_TNIL) {
        lua_pushvalue(L, -2);
        lua_pushnil(L);
        if (lua_pcall(L, 2, 0, 0) != LUA_OK) lua_pop(L, 1);
      }
    }
  }
  lua_settop(L, top);
}

static void destroy(mk_proc *p) {
  lproc *lp = mk_proc_data(p);
  if (lp == NULL) return;
  dropped(lp->S);
  if (lp->owns) close_owned(lp);
  /* A coroutine still held (waiting, or failed: see handle) is dropped,
  ** never pooled; one suspended is left so that it runs no further line
  ** when a program that kept it (coroutine.running()) resumes it: before,
  ** the resumer ran the rest of a process that had quit, or of one the
  ** budget had stopped, as its own. */
  if (lp->coref != LUA_NOREF) {
    if (lua_status(lp->co) == LUA_YIELD) lua_sethook(lp->co, dead_hook, LUA_MASKCOUNT, 1);
    luaL_unref(lp->S->L, LUA_REGISTRYINDEX, lp->coref);
  }
  if (lp->ctxref != LUA_NOREF) spare_ctx(lp->S, lp->ctxref);
  if (lp->wait != NULL) {       /* no timeout outlives its process */
    untime(lp->wait);
    free(lp->wait);
  }
  if (lp->sendslot != NULL) {
    mk_match_slot_clear(lp->sendslot);
    mk_pool_free(lp->sendslot, sizeof *lp->sendslot);
  }
  mk_pool_free_at(lp, sizeof *lp, 0);
}

/* For snapshots (mk_behavior.activations). */
static uint64_t activations(const mk_proc *p) {
  return ((const lproc *)mk_proc_data(p))->activations;
}

/*
** The head of a table as Lua 5.4 lays it out (lobject.h's Table, which
** Lua does not export): read by prefetch alone, for the addresses of a
** table's array and hash parts, so that an activation's first reads of
** its context (the registry's slot for it, the context's hash nodes:
** three misses a round trip at 1,000 connections, issue 10) are on
** their way with the rest of a batch's records.  Nothing is read past
** these 32 bytes of a table's 56, and a prefetch of a wrong address
** faults nothing; tablelayout checks the mirror against tables made for
** the purpose when the state opens, and a Lua laid out otherwise goes
** without these prefetches.
*/
typedef struct ltable {
  void *next;
  unsigned char tt, marked, flags, lsizenode;
  unsigned int alimit;   /* the array part's size, or less (Lua 5.4
                         ** keeps a limit): a bound for reading it */
  const char *array;     /* TValue[alimit] */
  const char *node;      /* Node[1 << lsizenode] */
} ltable;

#define LT_TVALUE 16     /* sizeof(TValue): a Value and its tag */
#define LT_NODE 24       /* sizeof(Node): a value, its key and the chain */
#define LT_VTABLE 5      /* LUA_VTABLE, the tag of a table */

/* Whether tables made here read as ltable says: the tag, and the sizes of
** both parts as asked of lua_createtable. */
static int tablelayout(lua_State *L) {
  const ltable *a, *h;
  int ok;
  lua_createtable(L, 3, 0);
  lua_createtable(L, 0, 4);
  a = lua_topointer(L, -2);
  h = lua_topointer(L, -1);
  ok = a->tt == LT_VTABLE && h->tt == LT_VTABLE && a->alimit == 3 && a->array != NULL &&
       a->lsizenode == 0 && h->alimit == 0 && h->array == NULL && h->lsizenode == 2 &&
       h->node != NULL;
  lua_pop(L, 2);
  return ok;
}

/* Prefetch the lines from p to p + n - 1 (n > 0). */
static MKL_INLINE void fetchspan(const char *p, size_t n) {
  const char *end = p + n - 1;
  for (; p < end; p += 64) __builtin_prefetch(p);
  __builtin_prefetch(end);
}

/* mk_behavior.prefetch: the record; then the context's table, its slot in
** the registry, the state as last read (a box's block and its header, 32
** bytes before) and the sends' match slot; then the context's hash part,
** where the state and the handler tables are (newproc makes it so), and
** the endpoints the slot holds, which its next send will likely reach:
** what every event reads first (handle), and what answering it reads. */
static void prefetch(const mk_proc *p, int stage) {
  const lproc *lp = mk_proc_data(p);
  if (lp == NULL) return;
  if (stage == 0) {
    __builtin_prefetch(lp);
  } else if (stage == 1) {
    const ltable *reg = lp->S->registry;
    __builtin_prefetch(lp->ctx);
    if (lp->state != NULL) {
      __builtin_prefetch(lp->state);
      __builtin_prefetch((const char *)lp->state - 32);
    }
    if (reg != NULL && (unsigned)(lp->ctxref - 1) < reg->alimit)
      __builtin_prefetch(reg->array + (size_t)(lp->ctxref - 1) * LT_TVALUE);
    if (lp->sendslot != NULL) fetchspan((const char *)lp->sendslot, sizeof *lp->sendslot);
  } else if (stage == 2) {
    const ltable *ctx = lp->ctx;
    if (lp->S->registry != NULL && ctx->lsizenode <= 4)
      fetchspan(ctx->node, (size_t)LT_NODE << ctx->lsizenode);
    if (lp->sendslot != NULL) mk_prefetch_receivers(p, lp->sendslot, 0);
  }
}

/* Lua processes hear of their own deleted endpoints as in Marketplace
** (market.lua keeps the deleted handlers until MK_EV_DELETED). */
static const mk_behavior lua_behavior = { "lua", handle, NULL, destroy, declines,
                                          MK_BF_TELL_DELETED, activations, prefetch };

/* A new process record for the function at the top of L (popped).  Its
** context is made now, holding the function until the boot event: one
** registry reference per process, where a reference to the function and
** a later one to the context cost two.  A dead process's context, kept
** emptied (spare_ctx), is taken first.  One made is sized for the state
** (or the boot function) and one endpoint, what a handler process holds
** while idle, both in the hash part: a table with an array part of one
** slot as well takes a third allocation, which with the malloc work it
** brings was 7% of a spawn's instructions (issue 10); the state is read
** from the hash a few instructions slower. */
static lproc *newproc(mkl_state *S, lua_State *L) {
  lproc *lp;
  int kept = 0;
  if (S->nspare > 0) S->run++;        /* < the slots there are: no overflow */
  if (S->nkept > 0) {                 /* the top nkept spares (spare_ctx) */
    lua_rawgeti(L, LUA_REGISTRYINDEX, S->spare[S->nspare - 1]);
    kept = 1;
  }
  else lua_createtable(L, 0, 2);
  lua_rotate(L, -2, 1);
  lua_rawseti(L, -2, MKL_CTX_STATE);
  lp = mk_pool_alloc_at(sizeof *lp, 0);
  if (lp == NULL) luaL_error(L, "out of memory");
  lp->ctx = lua_topointer(L, -1);
  lp->state = NULL;
  lp->sendslot = NULL;
  if (++S->nlive > S->peak) S->peak = S->nlive;    /* destroy: dropped() */
  lp->S = S;
  lp->co = NULL;
  lp->coref = LUA_NOREF;
  if (kept) {
    lp->ctxref = S->spare[--S->nspare];
    S->nkept--;
    lua_pop(L, 1);
  } else if (S->nspare > 0) {
    lp->ctxref = S->spare[--S->nspare];
    lua_rawseti(L, LUA_REGISTRYINDEX, lp->ctxref);
  } else {
    lp->ctxref = luaL_ref(L, LUA_REGISTRYINDEX);
  }
  lp->waiting = 0;
  lp->boot = 0;
  lp->owns = 0;
  lp->at_return = 0;
  lp->applies = 0;
  lp->running = 0;
  lp->activations = 0;
  lp->wait = NULL;
  return lp;
}

/* ---- the running process ------------------------------------------------ */

/* Whether L runs a finaliser (a __gc metamethod) now: Lua 5.4.4's lua_gc
** answers -1 inside one (its internal stop, GCSTPGC).  A finaliser runs in
** whichever process the collector happens to be in: acting as that one,
** an ended process's object killed another and spoke in its name.  Lua
** calls finalisers where L cannot yield, so a process's own code, which
** can, costs a test of the bit that says so (lua_gc's call cost 50
** instructions a perform, 3 % of a message). */
static int in_finaliser(lua_State *L) {
  return !lua_isyieldable(L) && lua_gc(L, LUA_GCISRUNNING) < 0;
}

/*
** Pushes the error for market.<what> called outside a process.  Inside a
** coroutine a process runs itself (coroutine.wrap, coroutine.resume) a
** process is running, which "not inside" alone seems to deny, so that
** case says where it is.  One text for C's raises and market.lua's.
*/
static void pushoutside(lua_State *L, mkl_state *S, const char *what) {
  if (in_finaliser(L))
    lua_pushfstring(L, "market.%s: not inside a market process: called from a finaliser "
                    "(__gc), which runs in whichever process the collector is in when it "
                    "finds the object, and so acts for none", what);
  else if (S->current != NULL && mk_proc_data(S->current) != NULL)
    lua_pushfstring(L, "market.%s: not inside a market process: called from a coroutine "
                    "the process runs itself (coroutine.wrap or resume), and only the "
                    "process's own code may act or wait", what);
  else
    lua_pushfstring(L, "market.%s: not inside a market process", what);
}

/* Raises the message on top of the stack at the caller's line, as
** luaL_error does. */
static int raisehere(lua_State *L) {
  luaL_where(L, 1);
  lua_insert(L, -2);
  lua_concat(L, 2);
  return lua_error(L);
}

static void outside(lua_State *L, mkl_state *S, const char *what) {
  pushoutside(L, S, what);
  raisehere(L);
}

/* The process running on thread L, or a Lua error: actions are performed
** only by a process, from its own coroutine. */
static mk_proc *self(lua_State *L, mkl_state *S, const char *what) {
  mk_proc *p = S->current;
  if (p == NULL || mk_proc_data(p) == NULL || ((lproc *)mk_proc_data(p))->co != L ||
      in_finaliser(L))
    outside(L, S, what);
  return p;
}

/*
** A dead process runs no further line: it is never resumed again, so the
** action that ended it (a quit, a kill of itself, an exit) yields its
** coroutine for good.  Where a yield is not allowed (the action ran in a
** metamethod called from C, or in a function table.sort or string.gsub
** calls) this raises instead, and leaves a count hook on the coroutine
** that does the same before every instruction, as the budget's hook
** does: a pcall that catches the error does not let the dead process
** run on, and the coroutine yields at the first instruction where it can.
** handle() then drops it with the process (destroy), hook and all: it is
** never pooled.
*/
#define DEAD_REASON "the process has ended (it quit or was killed inside a C function " \
                    "such as a metamethod or table.sort's comparator); it runs no further line"

static void dead_hook(lua_State *L, lua_Debug *ar) {
  (void)ar;
  stop_here(L, DEAD_REASON);
}

int mkl_stop_dead(lua_State *L) {
  if (!lua_isyieldable(L)) lua_sethook(L, dead_hook, LUA_MASKCOUNT, 1);
  return stop_here(L, DEAD_REASON);
}

/* After an action that may have ended the process. */
static int settle(lua_State *L, mk_proc *p, int nret) {
  if (!mk_proc_alive(p)) return mkl_stop_dead(L);
  return nret;
}

static mk_action *wrap(mk_action *a, int levels) {
  for (; levels > 0; levels--) a = mk_action_meta(a);
  return a;
}

/* core.spawn(boot, name, cont, level, nested, budget) -> pid (level 0);
** budget: the nested VM's activation budget in ms, or nil (its parent's) */
static int c_spawn(lua_State *L) {
  mkl_state *S = STATE(L);
  mk_proc *p = self(L, S, "spawn");
  const char *name = luaL_optstring(L, 2, NULL);
  intptr_t cont = (intptr_t)luaL_optinteger(L, 3, 0);
  int level = (int)luaL_optinteger(L, 4, 0);
  int nested = lua_toboolean(L, 5);
  lua_Number budget = luaL_optnumber(L, 6, -1);    /* < 0: the parent VM's */
  const mk_behavior *b = &lua_behavior;
  void *data;
  mk_pid pid = 0;
  luaL_checktype(L, 1, LUA_TFUNCTION);
  lua_settop(L, 1);
  data = newproc(S, L);
  if (nested) {
    data = mk_nested_new(mk_proc_vm(p), b, data, name);
    mk_vm_set_budget((mk_vm *)data, budget);
    b = &mk_nested_behavior;
  }
  if (level == 0) pid = mk_spawn(p, b, data, name, (void *)cont);
  else mk_at_meta_level(p, wrap(mk_action_spawn_k(b, data, name, (void *)cont), level - 1));
  lua_pushinteger(L, (lua_Integer)pid);
  return settle(L, p, 1);
}

/* core.quit(pid|nil, reason, level) -> true, or nil when no such pid.
** Only nil means "this process": 0 and negative pids name nobody (vm.h's
** mk_quit takes 0 for itself, so they must not reach it). */
static int c_quit(lua_State *L) {
  mkl_state *S = STATE(L);
  mk_proc *p = self(L, S, "quit");
  int named = !lua_isnoneornil(L, 1);
  lua_Integer pid = named ? luaL_checkinteger(L, 1) : 0;
  int level = (int)luaL_optinteger(L, 3, 0);
  mk_term *reason = lua_isnoneornil(L, 2) ? NULL : mkl_checkterm(L, 2, "quit reason");
  int r = 0;
  if (level == 0) r = named && pid <= 0 ? -1 : mk_quit(p, (mk_pid)pid, reason);
  else if (named) {
    mk_unref(reason);
    /* (No position: it would be perform's, in market.lua, as the other
    ** actions that make no sense at meta level say, error(..., 0).) */
    lua_pushliteral(L, "market.quit: at_meta_level quits the whole VM; it takes no pid");
    return lua_error(L);
  }
  else mk_at_meta_level(p, wrap(mk_action_quit(reason), level - 1));
  mk_unref(reason);
  if (r < 0) lua_pushnil(L); else lua_pushboolean(L, 1);
  return settle(L, p, 1);
}

/* core.link(to, who|nil, level): who (nil: this process) ends when `to`
** does (vm.h, "Links") -> true, or nil when `who` names no live process.
** As for quit, only nil means this process: 0 and negative pids name
** nobody, and `to` 0 or below is no process (mk_link's kill). */
static int c_link(lua_State *L) {
  mkl_state *S = STATE(L);
  mk_proc *p = self(L, S, "link");
  lua_Integer to = luaL_checkinteger(L, 1);
  int named = !lua_isnoneornil(L, 2);
  lua_Integer who = named ? luaL_checkinteger(L, 2) : 0;
  int r;
  if (luaL_optinteger(L, 3, 0) != 0) {
    lua_pushliteral(L, "market.link: cannot be performed at meta level (pids are a VM's own)");
    return lua_error(L);                  /* (no position: as quit's, above) */
  }
  r = named && who <= 0 ? -1 : mk_link(p, to > 0 ? (mk_pid)to : 0, (mk_pid)who);
  if (r < 0) lua_pushnil(L); else lua_pushboolean(L, 1);
  return settle(L, p, 1);
}

/* core.exit(status): end the program with status (market.lua checked it:
** 0..255), and this process at once, with the reason its peers and
** everyone's see (mk_ground_exit) */
static int c_exit(lua_State *L) {
  mkl_state *S = STATE(L);
  mk_proc *p = self(L, S, "exit");
  lua_Integer status = luaL_checkinteger(L, 1);
  mk_term *why;
  luaL_argcheck(L, status >= 0 && status <= 255, 1, "the status must be 0..255");
  if (S->g == NULL) return luaL_error(L, "market.exit: no ground VM is running");
  mk_ground_exit(S->g, (int)status);
  why = mk_cstr("exit");
  mk_quit(p, 0, why);
  mk_unref(why);
  return settle(L, p, 0);
}

/* core.add(name, orientation, interest, topic, level, tag) */
static int c_add(lua_State *L) {
  mkl_state *S = STATE(L);
  mk_proc *p = self(L, S, "add endpoint");
  const char *name = luaL_checkstring(L, 1);
  mk_role role;
  int level = (int)luaL_optinteger(L, 5, 0);
  role.orientation = (mk_orientation)luaL_checkinteger(L, 2);
  role.interest = (mk_interest)luaL_checkinteger(L, 3);
  role.topic = mkl_checkterm(L, 4, "endpoint topic");
  if (level == 0) {
    if (mk_add_endpoint(p, name, 0, role) >= 0)
      mk_tag_endpoint(p, name, (uint32_t)luaL_optinteger(L, 6, 0));
  }
  else if (level == 1) mk_add_endpoint(p, name, level, role);
  else mk_at_meta_level(p, wrap(mk_action_add(name, role), level - 1));
  mk_unref(role.topic);
  return settle(L, p, 0);
}

/* core.delete(name, reason, level) -> false when there was no such
** endpoint here (level 0), else true: an MK_EV_DELETED will come. */
static int c_delete(lua_State *L) {
  mkl_state *S = STATE(L);
  mk_proc *p = self(L, S, "delete_endpoint");
  const char *name = luaL_checkstring(L, 1);
  int level = (int)luaL_optinteger(L, 3, 0), r = 0;
  mk_term *reason = lua_isnoneornil(L, 2) ? NULL : mkl_checkterm(L, 2, "delete_endpoint reason");
  if (level <= 1) r = mk_delete_endpoint(p, name, level, reason);
  else mk_at_meta_level(p, wrap(mk_action_delete(name, reason), level - 1));
  mk_unref(reason);
  lua_pushboolean(L, r == 0);
  return settle(L, p, 1);
}

static int sendlike(lua_State *L, int feedback) {
  mkl_state *S = STATE(L);
  mk_proc *p = self(L, S, feedback ? "feedback" : "send");
  int level = (int)luaL_optinteger(L, 2, 0);
  mk_term *body = mkl_testbox(L, 1);
  if (body) mk_ref(body); else body = mkl_checkterm(L, 1, feedback ? "feedback" : "send");
  if (level == 0) {
    if (feedback) mk_feedback(p, body); else mkl_send(p, body);
  } else {
    mk_action *a = feedback ? mk_action_feedback(body) : mk_action_send(body);
    mk_at_meta_level(p, wrap(a, level - 1));
  }
  mk_unref(body);
  return settle(L, p, 0);
}

/*
** A Lua process's send, through a match slot of its own (route.h): a
** handler process mostly sends to one topic (a session to its
** connection, a member to its room), and its slot, unlike the shared
** match cache's entry, is prefetched with the process's record when an
** event wakes it (prefetch), with the endpoints it holds.  The slot is
** made at the first send, so that processes that never send do not pay
** for one; without memory for it, the send goes without.
*/
void mkl_send(mk_proc *p, mk_term *body) {
  lproc *lp = running.p == p ? running.lp : NULL;   /* the usual case */
  if (lp != NULL && lp->sendslot == NULL &&
      (lp->sendslot = mk_pool_alloc(sizeof *lp->sendslot)) != NULL)
    memset(lp->sendslot, 0, sizeof *lp->sendslot);
  if (lp != NULL && lp->sendslot != NULL) mk_send_slot(p, body, lp->sendslot);
  else mk_send(p, body);
}

static int c_send(lua_State *L) { return sendlike(L, 0); }
static int c_feedback(lua_State *L) { return sendlike(L, 1); }

/* core.yield(cont) */
static int c_yield(lua_State *L) {
  mkl_state *S = STATE(L);
  mk_proc *p = self(L, S, "yield");
  mk_yield(p, (void *)(intptr_t)luaL_checkinteger(L, 1));
  return settle(L, p, 0);
}

/*
** Waiting.  Straight-line code waits on the coroutine its process keeps
** (acquire) until the wait ends, and a process that waits long costs what
** that coroutine holds: its lua_State, a CallInfo per frame, and its stack,
** which the collector shrinks to twice what the frames use (and only once
** it is more than three times that).  A yield leaves the frame of the C
** function that yields on the stack with LUA_MINSTACK (20) slots reserved
** above its arguments, so every slot of the frames under it counts twice.
** So the wait is C all the way down to the program's own code: the boot
** function is the coroutine's body (handle), market.yield(),
** market.wait_for() and market.wait_until() are the C functions it calls, and the loop that hands
** each event to market.lua's dispatch until one is left that no handler
** takes is this file's continuations.  A boot function waiting in
** market.yield() keeps two frames and 25 slots of stack, against five
** frames and 35 slots with market.lua's main and loop under it.
**
** await(L, how) yields, its process waiting; handle() resumes it with an
** event's fields (pushevent) on top of what the waiting function keeps
** (wait_for: its predicate, at 1; a timed wait: its deadline, after),
** and `woken` passes them to dispatch(ctx, event...).  If a handler took
** the event, a WAIT_EVERY wait returns nothing, a WAIT_UNTIL wait tries
** its condition, and the others wait again.  Otherwise the event becomes
** event_table(event...), which a WAIT_FOR wait tests with its predicate,
** keeping it for market.yield() if it fails, a WAIT_UNTIL wait keeps
** before it tries its condition, and the others return.  Handlers,
** predicates and conditions are called with
** continuations, so code in them may wait too: its yield passes through
** these frames.
**
** A timed wait (TIMED in `how`) keeps its deadline on its stack, and
** every time it suspends, await sets up the process's wake for it
** (timewait); a wake that comes (timedout) is resumed as the one value
** WAKE_MARK instead of an event's fields, and the wait returns nil,
** "timeout".  A wake is voided (untime) when an untimed wait suspends,
** when a wait suspends with another deadline, and when the timed wait
** returns or an error leaves it: above its deadline it keeps a
** to-be-closed slot, whose __close (closewait) Lua runs in both cases,
** also when a pcall under the wait catches the error.  So untimed waits,
** and the activations of processes that never wait with a timeout, pay
** nothing.  A timed wait in a handler or a predicate under another has
** its own deadline, and the outer one sets up its own again when it
** waits again.
*/
enum { WAIT_UNHANDLED, WAIT_EVERY, WAIT_FOR, WAIT_UNTIL, TIMED = 4 };
#define KIND(how) ((how) & 3)

/* Upvalues of market.yield and market.wait_for (core.waits). */
#define U_YIELD_ACTION lua_upvalueindex(2)
#define U_UNKEEP lua_upvalueindex(3)
#define U_KEEP lua_upvalueindex(4)
#define U_CLOSER lua_upvalueindex(5)

/* Where the event's fields begin on the waiting function's stack (above
** wait_for's predicate or wait_until's condition, at 1), and where a
** timed wait keeps its deadline (below its closer, below them). */
#define FIRST(how) (1 + (KIND(how) >= WAIT_FOR) + 2 * (((how) & TIMED) != 0))
#define DEADLINE(how) (FIRST(how) - 2)

static int woken(lua_State *L, int status, lua_KContext how);

/* The __close of a timed wait's closer: the wait is over. */
static int closewait(lua_State *L) {
  if (running.lp != NULL && running.lp->co == L && running.lp->wait != NULL)
    untime(running.lp->wait);
  return 0;
}

/* Push a timed wait's deadline and closer, where DEADLINE(how) says.  The
** closer, one object for every wait of this closure, is made at the
** first: a program that never waits with a timeout allocates nothing
** for timeouts. */
static void pushtimed(lua_State *L, double at) {
  lua_pushnumber(L, at);
  if (lua_toboolean(L, U_CLOSER) == 0) {
    lua_newuserdatauv(L, 0, 0);
    lua_createtable(L, 0, 1);
    lua_pushcfunction(L, closewait);
    lua_setfield(L, -2, "__close");
    lua_setmetatable(L, -2);
    lua_replace(L, U_CLOSER);
  }
  lua_pushvalue(L, U_CLOSER);
  lua_toclose(L, -1);
}

/* Pushes the error for market.<what> waiting where Lua cannot suspend the
** process; one text for C's raises and market.pause's. */
static void pushnowait(lua_State *L, const char *what) {
  lua_pushfstring(L, "market.%s: cannot wait inside a C function (a metamethod, or a "
                  "function that table.sort, string.gsub and the like call): the "
                  "process cannot be suspended there", what);
}

/* core.nowait(what) -> that text, for market.lua to raise at its caller's line */
static int c_nowait(lua_State *L) {
  pushnowait(L, luaL_checkstring(L, 1));
  return 1;
}

static int await(lua_State *L, lua_KContext how) {
  lproc *lp = running.lp;
  /* Checked before anything is set up for the wait: a yield that failed
  ** here after lp->waiting was set left the process marked as waiting on
  ** a coroutine that was not, and its next event was pushed on a stack
  ** that was gone (a pcall had caught the error). */
  if (!lua_isyieldable(L)) {
    static const char *const names[] = { "yield", "yield", "wait_for", "wait_until" };
    pushnowait(L, names[KIND(how)]);
    return raisehere(L);
  }
  if (how & TIMED) timewait(L, lp, running.p, lua_tonumber(L, DEADLINE(how)));
  else if (lp->wait != NULL) untime(lp->wait);
  lp->waiting = 1;
  return lua_yieldk(L, 0, how, woken);
}

/* keep(ctx, ev) for the event table on top, which it pops: kept for
** market.yield(). */
static void keepevent(lua_State *L) {
  lua_pushvalue(L, U_KEEP);
  lua_rawgeti(L, LUA_REGISTRYINDEX, running.lp->ctxref);
  lua_rotate(L, -3, 2);
  lua_call(L, 2, 0);
}

static int tested(lua_State *L, int status, lua_KContext how) {
  (void)status;
  if (lua_toboolean(L, -1)) { lua_pop(L, 1); return 1; }
  lua_pop(L, 1);                            /* pred, [deadline, closer,] ev */
  keepevent(L);
  return await(L, how);
}

/* wait_until's condition said: a true value ends the wait with it. */
static int until_tested(lua_State *L, int status, lua_KContext how) {
  (void)status;
  if (lua_toboolean(L, -1)) return 1;
  lua_pop(L, 1);
  return await(L, how);
}

/* wait_until: cond(), its condition at 1, the stack at FIRST(how) - 1. */
static int until_test(lua_State *L, lua_KContext how) {
  lua_pushvalue(L, 1);
  lua_callk(L, 0, 1, how, until_tested);
  return until_tested(L, LUA_OK, how);
}

static int dispatched(lua_State *L, int status, lua_KContext how) {
  mkl_state *S = STATE(L);
  int first = FIRST(how);
  (void)status;
  if (lua_toboolean(L, -1)) {               /* a handler took it */
    if (KIND(how) == WAIT_EVERY) return 0;
    lua_settop(L, first - 1);
    if (KIND(how) == WAIT_UNTIL) return until_test(L, how);
    return await(L, how);
  }
  lua_pop(L, 1);
  lua_rawgeti(L, LUA_REGISTRYINDEX, S->eventref);
  lua_insert(L, first);
  lua_call(L, lua_gettop(L) - first, 1);
  if (KIND(how) == WAIT_UNTIL) {
    keepevent(L);
    return until_test(L, how);
  }
  if (KIND(how) != WAIT_FOR) return 1;
  lua_pushvalue(L, 1);                      /* pred(ev) */
  lua_pushvalue(L, first);
  lua_callk(L, 1, 1, how, tested);
  return tested(L, LUA_OK, how);
}

/* The message's handler returned (its transition on top, above apply and
** ctx): applied, and the event taken. */
static int msg_applied(lua_State *L, int status, lua_KContext how) {
  (void)status;
  lua_pushboolean(L, 1);
  return dispatched(L, LUA_OK, how);
}

static int msg_handled(lua_State *L, int status, lua_KContext how) {
  (void)status;
  lua_callk(L, 2, 0, how, msg_applied);     /* apply(ctx, transition) */
  return msg_applied(L, LUA_OK, how);
}

/* A message at level 0, its fields at first..first + 3, to a waiting
** process: its endpoint's on_message found (pushhandler) and called here,
** fn(state, message, name), and what it returns applied, as dispatch
** does a Lua frame higher (a tenth of a tcp.serve request's instructions
** went to that frame).  Returns -1, the stack as it was, when dispatch is
** to take it: a handler table with a metatable, or none at all. */
static int wokenmessage(lua_State *L, mkl_state *S, int first, lua_KContext how) {
  int top = lua_gettop(L), r;
  luaL_checkstack(L, 8, NULL);
  lua_rawgeti(L, LUA_REGISTRYINDEX, S->applyref);
  lua_rawgeti(L, LUA_REGISTRYINDEX, running.lp->ctxref);
  r = pushhandler(S, L, top + 2, first + 1, 0, FIELD_MESSAGE);
  if (r < 0) {
    lua_settop(L, top);
    return -1;
  }
  if (r == 0) {                             /* no on_message: not taken */
    lua_settop(L, top);
    lua_pushboolean(L, 0);
    return dispatched(L, LUA_OK, how);
  }
  lua_remove(L, -2);                        /* fields, apply, ctx, fn */
  lua_rawgeti(L, top + 2, MKL_CTX_STATE);
  lua_pushvalue(L, first + 3);
  lua_pushvalue(L, first + 1);
  lua_callk(L, 3, 1, how, msg_handled);
  return msg_handled(L, LUA_OK, how);
}

static int woken(lua_State *L, int status, lua_KContext how) {
  mkl_state *S = STATE(L);
  int first = FIRST(how), top = lua_gettop(L), i;
  (void)status;
  if (running.lp == NULL || running.lp->co != L) {
    /* Resumed by other than its VM, through a resume that is not
    ** co_resume (a wrapper a program put in before market came): the
    ** wait goes on as it was, and the resumer hears why. */
    lua_settop(L, first - 1);
    lua_pushliteral(L, "cannot resume " CO_WAITING);
    return lua_yieldk(L, 1, how, woken);
  }
  if (top == first && lua_touserdata(L, top) == WAKE_MARK) {
    lua_pushnil(L);                         /* timedout voided the wake */
    lua_pushliteral(L, "timeout");
    return 2;
  }
  if (top - first == 3 && lua_tointeger(L, first) == MK_EV_MESSAGE &&
      lua_tointeger(L, first + 2) == 0 && (i = wokenmessage(L, S, first, how)) >= 0)
    return i;
  luaL_checkstack(L, top - first + 3, NULL);
  lua_rawgeti(L, LUA_REGISTRYINDEX, S->dispatchref);
  lua_rawgeti(L, LUA_REGISTRYINDEX, running.lp->ctxref);
  for (i = first; i <= top; i++) lua_pushvalue(L, i);
  lua_callk(L, top - first + 2, 1, how, dispatched);
  return dispatched(L, LUA_OK, how);
}

/* The running process's record, for a wait named what; or a Lua error at
** the caller's line, as market.lua's current() raises it. */
static lproc *waiter(lua_State *L, const char *what) {
  mkl_state *S = STATE(L);
  mk_proc *p = S->current;
  lproc *lp = p != NULL ? mk_proc_data(p) : NULL;
  if (lp == NULL || lp->co != L) outside(L, S, what);
  return lp;
}

/* The timeout of a wait named what, at idx: its ms, HUGE_VAL for none
** (nil, or math.huge).  Anything but a number >= 0 is misuse. */
static double timeout(lua_State *L, int idx, const char *what) {
  lua_Number ms;
  if (lua_isnoneornil(L, idx)) return HUGE_VAL;
  ms = lua_tonumber(L, idx);
  if (lua_type(L, idx) != LUA_TNUMBER || !(ms >= 0))
    luaL_error(L, "market.%s: the timeout must be a number of milliseconds >= 0 "
               "(or nil: none), got %s", what,
               lua_type(L, idx) == LUA_TNUMBER ? lua_tostring(L, idx) : luaL_typename(L, idx));
  return ms;
}

/* The deadline, in mk_ground_clock() ms, of a wait of a process that may
** wait ms (> 0, finite): the ground VM keeps the time.  0 is now: only
** what is already queued, which needs no clock. */
static double deadline(lua_State *L, double ms, const char *what) {
  if (ms > 0 && STATE(L)->g == NULL)
    luaL_error(L, "market.%s: a timeout needs a ground VM, and none is running", what);
  return mk_ground_clock() + ms;
}

/* wait() (core.waits makes it; market.pause waits with it) -> after the
** next event, the event's table if no handler took it, nothing if one did. */
static int c_wait(lua_State *L) {
  waiter(L, "yield");
  lua_settop(L, 0);
  return await(L, WAIT_EVERY);
}

/* Raises "market.<what>: <arg> must be a function" unless the value at 1
** is one, or has a __call. */
static void checkcallable(lua_State *L, const char *what, const char *arg) {
  if (lua_type(L, 1) == LUA_TFUNCTION) return;
  if (luaL_getmetafield(L, 1, "__call") == LUA_TNIL)
    luaL_error(L, "market.%s: %s must be a function", what, arg);
  lua_pop(L, 1);
}

/* market.yield([k | ms]).  With k, the action yield_action(k).  Without,
** the next event no handler takes: first those wait_for and pause kept
** (unkeep(ctx) returns the oldest, or nil), then the next to come; with
** ms, nil and "timeout" if none came within ms milliseconds. */
static int m_yield(lua_State *L) {
  lproc *lp;
  double ms = HUGE_VAL;
  if (lua_type(L, 1) == LUA_TFUNCTION) {
    lua_pushvalue(L, U_YIELD_ACTION);
    lua_pushvalue(L, 1);
    lua_call(L, 1, 1);
    return 1;
  }
  if (lua_type(L, 1) == LUA_TNUMBER) ms = timeout(L, 1, "yield");
  else if (!lua_isnoneornil(L, 1))
    return luaL_error(L, "market.yield: the argument must be a function k (the yield action) "
                      "or a timeout in milliseconds, got %s", luaL_typename(L, 1));
  lp = waiter(L, "yield");
  lua_pushvalue(L, U_UNKEEP);
  lua_rawgeti(L, LUA_REGISTRYINDEX, lp->ctxref);
  lua_call(L, 1, 1);
  if (!lua_isnil(L, -1)) return 1;
  lua_settop(L, 0);
  if (ms == HUGE_VAL) return await(L, WAIT_UNHANDLED);
  pushtimed(L, deadline(L, ms, "yield"));
  return await(L, WAIT_UNHANDLED | TIMED);
}

/* market.wait_for(pred [, ms]): the first event no handler takes for
** which pred(event) is true, or nil and "timeout" if none came within ms
** milliseconds; those before it are kept (keep(ctx, event)) for
** market.yield().  pred and ms are checked now, not at the first event. */
static int m_wait_for(lua_State *L) {
  double ms;
  checkcallable(L, "wait_for", "pred");
  ms = timeout(L, 2, "wait_for");
  waiter(L, "wait_for");
  lua_settop(L, 1);
  if (ms == HUGE_VAL) return await(L, WAIT_FOR);
  pushtimed(L, deadline(L, ms, "wait_for"));
  return await(L, WAIT_FOR | TIMED);
}

/* market.wait_until(cond [, ms]): the first true value cond() returns,
** tried at once and then after every event the process gets, handled or
** not (what it reads is what the process's handlers change); nil and
** "timeout" if ms milliseconds went by first.  Events no handler takes
** meanwhile are kept for market.yield(), as wait_for keeps them.  (C, as
** the other waits are: a Lua loop around c_wait cost a request of
** tcp.serve's connection objects a fifth of its instructions.) */
static int m_wait_until(lua_State *L) {
  int how = WAIT_UNTIL;
  double ms;
  waiter(L, "wait_until");
  checkcallable(L, "wait_until", "cond");
  ms = timeout(L, 2, "wait_until");
  lua_settop(L, 1);
  if (ms != HUGE_VAL) {
    pushtimed(L, deadline(L, ms, "wait_until"));
    how |= TIMED;
  }
  return until_test(L, how);
}

/* core.waits(yield_action, unkeep, keep) -> market.yield, market.wait_for,
** market.wait_until and wait (c_wait).  Closures with the upvalues above:
** a timed wait keeps its closer in U_CLOSER. */
static int c_waits(lua_State *L) {
  int i;
  for (i = 1; i <= 3; i++) luaL_checktype(L, i, LUA_TFUNCTION);
  lua_settop(L, 3);
  lua_pushvalue(L, lua_upvalueindex(1));
  lua_insert(L, 1);
  lua_pushboolean(L, 0);                    /* the closer, U_CLOSER: pushtimed */
  for (i = 1; i <= 5; i++) lua_pushvalue(L, i);
  lua_pushcclosure(L, m_yield, 5);
  for (i = 1; i <= 5; i++) lua_pushvalue(L, i);
  lua_pushcclosure(L, m_wait_for, 5);
  for (i = 1; i <= 5; i++) lua_pushvalue(L, i);
  lua_pushcclosure(L, m_wait_until, 5);
  for (i = 1; i <= 5; i++) lua_pushvalue(L, i);
  lua_pushcclosure(L, c_wait, 5);
  return 4;
}

/* core.outside(what) -> the message market.<what> raises outside a
** process (pushoutside), for market.lua to raise at its caller's line */
static int c_outside(lua_State *L) {
  pushoutside(L, STATE(L), luaL_checkstring(L, 1));
  return 1;
}

/* core.current() -> ctx of the running process, or nil */
static int c_current(lua_State *L) {
  mkl_state *S = STATE(L);
  mk_proc *p = S->current;
  lproc *lp;
  if (p == NULL || (lp = mk_proc_data(p)) == NULL || lp->co != L) return 0;
  lua_rawgeti(L, LUA_REGISTRYINDEX, lp->ctxref);
  return 1;
}

/* core.self() -> pid, name, vm path of the running process */
static int c_self(lua_State *L) {
  mkl_state *S = STATE(L);
  mk_proc *p = self(L, S, "self");
  lua_pushinteger(L, (lua_Integer)mk_proc_pid(p));
  lua_pushstring(L, mk_proc_name(p));
  lua_pushstring(L, mk_vm_path(mk_proc_vm(p)));
  return 3;
}

/* core.role(orientation, interest, topic) -> the role as handlers get it,
** from an event's fields as pushevent gives them (market.lua's dispatch
** and event_table) */
static int c_role(lua_State *L) {
  mkl_state *S = STATE(L);
  lua_Integer o = luaL_checkinteger(L, 1), i = luaL_checkinteger(L, 2);
  luaL_argcheck(L, o == MK_PUBLISHER || o == MK_SUBSCRIBER, 1, "no such orientation");
  luaL_argcheck(L, i >= MK_PARTICIPANT && i <= MK_EVERYTHING, 2, "no such interest");
  lua_settop(L, 3);
  newrole(S, L, (mk_orientation)o, (mk_interest)i);
  return 1;
}

/* core.set_name(name) */
static int c_set_name(lua_State *L) {
  mkl_state *S = STATE(L);
  mk_proc_set_name(self(L, S, "set_name"), luaL_checkstring(L, 1));
  return 0;
}

/* core.init(apply, rest, dispatch, event_table): market.lua's activations
** and what a wait returns (see mkl_state) */
static int c_init(lua_State *L) {
  mkl_state *S = STATE(L);
  int *refs[] = { &S->applyref, &S->restref, &S->dispatchref, &S->eventref };
  int i, n = (int)(sizeof refs / sizeof refs[0]);
  for (i = 1; i <= n; i++) luaL_checktype(L, i, LUA_TFUNCTION);
  lua_settop(L, n);
  for (i = n - 1; i >= 0; i--) {       /* luaL_ref pops the top */
    if (*refs[i] != LUA_NOREF) luaL_unref(L, LUA_REGISTRYINDEX, *refs[i]);
    *refs[i] = luaL_ref(L, LUA_REGISTRYINDEX);
  }
  return 0;
}

/* p_report(fn, crash): fn(report), with the report as a table of the
** fields of mk_crash (docs/inspect.md), called protected by lua_crash. */
static int p_report(lua_State *L) {
  const mk_crash *c = lua_touserdata(L, 2);
  mkl_state *S = getstate(L);
  size_t i;
  lua_settop(L, 1);
  lua_createtable(L, 0, 8);
  lua_pushstring(L, c->vm);
  lua_setfield(L, 2, "vm");
  lua_pushinteger(L, (lua_Integer)c->pid);
  lua_setfield(L, 2, "pid");
  lua_pushstring(L, c->name);
  lua_setfield(L, 2, "name");
  mkl_pushterm(L, c->reason);
  lua_setfield(L, 2, "reason");
  lua_pushstring(L, c->message);
  lua_setfield(L, 2, "message");
  lua_pushstring(L, c->traceback);
  lua_setfield(L, 2, "traceback");
  lua_pushboolean(L, c->boot);
  lua_setfield(L, 2, "boot");
  lua_createtable(L, (int)c->nendpoints, 0);
  for (i = 0; i < c->nendpoints; i++) {
    const mk_crash_endpoint *e = &c->endpoints[i];
    mkl_pushterm(L, e->role.topic);
    newrole(S, L, e->role.orientation, e->role.interest);
    lua_pushstring(L, e->name);
    lua_setfield(L, -2, "name");
    lua_pushinteger(L, e->level);
    lua_setfield(L, -2, "level");
    lua_rawseti(L, -2, (lua_Integer)i + 1);
  }
  lua_setfield(L, 2, "endpoints");
  lua_call(L, 1, 0);
  return 0;
}

/* The on_crash of a ground_vm (its registry reference). */
typedef struct luacrash {
  lua_State *L;
  int ref;
} luacrash;

/* mk_crash_fn for ground_vm's on_crash: called on the main thread,
** outside any process.  If it raises, the report is printed after all,
** with the error. */
static void lua_crash(mk_host *h, const mk_crash *c, void *ud) {
  luacrash *lc = ud;
  lua_State *L = lc->L;
  char *text;
  (void)h;
  if (!lua_checkstack(L, 4)) return;
  lua_pushcfunction(L, p_report);
  lua_rawgeti(L, LUA_REGISTRYINDEX, lc->ref);
  lua_pushlightuserdata(L, (void *)c);
  if (lua_pcall(L, 2, 0, 0) == LUA_OK) return;
  text = mk_crash_format(c);
  if (text != NULL) fputs(text, stderr);
  free(text);
  mkl_text_line(stderr, "market: on_crash failed: ",
                lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1)
                                               : "(error object is not a string)");
  lua_pop(L, 1);
}

/* Raise "fname: msg" at the line that called market.ground_vm or
** market.open_ground_vm: core's function is called by that Lua wrapper,
** whose own line (market.lua's) luaL_error named. */
static void open_error(lua_State *L, const char *fname, const char *msg) {
  luaL_where(L, 2);
  lua_pushfstring(L, "%s: %s", fname, msg);
  lua_concat(L, 2);
  lua_error(L);
}

/* A host on this Lua state and a loop of its own, from the arguments of
** core.ground_vm and core.open_ground_vm (boot, trace, drain,
** max_activation, on_crash); the caller spawns boot (spawn_boot) once it
** keeps the host where an error cannot lose it, and unrefs lc->ref after
** freeing the host (lc, the caller's, lives as long as the host).  fname
** names the caller in errors. */
static mk_host *open_host(lua_State *L, const char *fname, luacrash *lc) {
  mkl_state *S = STATE(L);
  mk_host *h;
  mk_error err;
  double drain = luaL_optnumber(L, 3, -1);
  double budget = luaL_optnumber(L, 4, -1);
  luaL_checktype(L, 1, LUA_TFUNCTION);
  if (S->current != NULL || S->g != NULL)
    open_error(L, fname, "a ground VM is already running in this Lua state");
  h = mkl_host_new(L, NULL, &err);
  if (h == NULL) open_error(L, fname, err.message);
  if (!lua_isnoneornil(L, 2) && mkl_trace(L, mk_host_vm(h), 2) != NULL) {
    lua_pushstring(L, lua_tostring(L, -1));
    mk_host_free(h);
    open_error(L, fname, lua_tostring(L, -1));
  }
  if (drain >= 0 && mk_host_stop_on_signals(h, drain) != MK_OK) {
    lua_pushstring(L, mk_host_error(h));
    mk_host_free(h);
    open_error(L, fname, lua_tostring(L, -1));
  }
  if (budget >= 0) mk_host_set_max_activation(h, budget);
  lc->L = S->L;
  lc->ref = LUA_NOREF;
  if (lua_type(L, 5) == LUA_TFUNCTION) {
    lua_pushvalue(L, 5);
    lc->ref = luaL_ref(L, LUA_REGISTRYINDEX);
    mk_host_on_crash(h, lua_crash, lc);
  }
  return h;
}

/* The function at 1 as h's boot process (raises when out of memory). */
static void spawn_boot(lua_State *L, mk_host *h) {
  lua_pushvalue(L, 1);
  mkl_spawn_boot(L, mk_host_vm(h), "boot");
}

/* What ground_vm returns once h has run (rc: mk_host_run's or
** mk_host_turn's), and step after each turn: after an exit (market.exit),
** `more` (nil for a status other than 0 or a failed boot process), "exit"
** (or the boot's traceback) and the status; nil, why, status after a
** second signal; nil and the traceback when the boot process failed;
** else `more`. */
static int outcome(lua_State *L, mk_host *h, int rc, int more) {
  int status = mk_host_exit_status(h);
  if (mk_host_exited(h)) {
    if (status == 0 && rc != MK_EFAILED) lua_pushboolean(L, more); else lua_pushnil(L);
    lua_pushstring(L, rc == MK_EFAILED ? mk_host_error(h) : "exit");
    lua_pushinteger(L, status);
    return 3;
  }
  if (status != 0) {
    lua_pushnil(L);
    lua_pushstring(L, "stopped by a second signal");
    lua_pushinteger(L, status);
    return 3;
  }
  if (rc == MK_EFAILED) {
    lua_pushnil(L);
    lua_pushstring(L, mk_host_error(h));
    return 2;
  }
  lua_pushboolean(L, more);
  return 1;
}

/* The end of every process left (docs/semantics.md §7), before
** mk_host_free, which reports nothing: a handler that fails as the others
** go fails as any other, with its crash report (lua/main.c does the
** same).  An exit asked for meanwhile changes nothing: it is read before. */
static void teardown(mk_host *h) {
  mk_vm_kill_all(mk_ground_vm(mk_host_ground(h)), NULL);
}

/* core.ground_vm(boot, trace, drain, max_activation, on_crash): trace as
** market.trace's
**   -> true | nil, traceback | nil, why, status | ok, why, status after an
**   exit (outcome)
** A host (market.h) on this Lua state and a loop of its own, run to the
** end and freed: the same code path as the interpreter's.  drain (ms, or
** nil): SIGINT and SIGTERM stop it (mk_host_stop_on_signals). */
static int c_ground_vm(lua_State *L) {
  luacrash lc;
  mk_host *h = open_host(L, "market.ground_vm", &lc);
  int nret;
  spawn_boot(L, h);
  nret = outcome(L, h, mk_host_run(h), 1);
  teardown(h);
  mk_host_free(h);
  luaL_unref(L, LUA_REGISTRYINDEX, lc.ref);
  return nret;
}

/*
** core.open_ground_vm(boot, trace, drain, max_activation, on_crash) -> ground
** The same host, left for the caller to drive from a loop of its own
** (docs/loops.md): step, pollfd, events and timeout are a cqueues
** controller's, so cqueues can poll it as it is, and close frees it
** (also when collected, or at the end of a `local g <close>`).  The
** userdata owns the host (NULL once closed) and the reference to
** on_crash (lc.ref, let go of when the host is freed).
*/
#define GROUND_MT "market.ground_vm"

typedef struct lground {
  mk_host *h;
  luacrash lc;
  int canary;           /* registry reference to its canary, or LUA_NOREF */
} lground;

/*
** A ground VM left open when the Lua state closes is freed by its __gc,
** and every process then hears of the others' end.  But lua_close takes
** no new finalizers once it has begun (Lua 5.4.4: GCSTPCLS): a term box
** made for those events, by a handler, was never finalized, and its term
** leaked, as did anything else a handler made that a __gc frees.  So
** each open ground VM has a canary, a userdata made just after it and
** held by the registry: it is finalized only by lua_close, and before
** the ground VM (Lua finalizes the newest first), and it tells the state
** that no process's Lua code is to run again (handle).  close disarms it
** (points it at nothing) and lets it go.
*/
#define CANARY_MT "market.ground_vm.canary"

static int canary_gc(lua_State *L) {
  lground **armed = lua_touserdata(L, 1);
  if (*armed != NULL) ((mkl_state *)lua_touserdata(L, lua_upvalueindex(1)))->closing = 1;
  return 0;
}

static lground *checkground(lua_State *L, const char *fname) {
  lground *G = luaL_checkudata(L, 1, GROUND_MT);
  if (G->h == NULL) luaL_error(L, "market: %s on a closed ground VM", fname);
  return G;
}

static int c_open_ground_vm(lua_State *L) {
  lground *G = lua_newuserdatauv(L, sizeof *G, 0);   /* first: no host to leak */
  lground **armed;
  G->h = NULL;
  G->lc.ref = LUA_NOREF;
  G->canary = LUA_NOREF;
  luaL_setmetatable(L, GROUND_MT);
  G->h = open_host(L, "market.open_ground_vm", &G->lc);
  armed = lua_newuserdatauv(L, sizeof *armed, 0);
  *armed = G;
  luaL_setmetatable(L, CANARY_MT);
  G->canary = luaL_ref(L, LUA_REGISTRYINDEX);
  spawn_boot(L, G->h);                  /* an error now: __gc frees the host */
  return 1;
}

/* Refuse what (step or close) where the ground VM's host is running: in
** one of its processes, or in its on_crash (called inside the turn, as
** handlers are), where a close would free the host under the turn, and
** where mk_host_turn and mk_host_free refuse (MK_EBUSY). */
static void from_outside(lua_State *L, const char *what) {
  if (STATE(L)->current != NULL)
    luaL_error(L, "market: %s called from inside a process of the ground VM it %ss", what, what);
  if (mkl_host_busy())
    luaL_error(L, "market: %s called inside a turn of the ground VM it %ss (from its on_crash)",
               what, what);
}

/* g:step([timeout]): one turn, waiting up to timeout seconds (nil: until
** something happens) -> true while it has more to do, false when done |
** nil, traceback | nil, why, status (outcome) */
static int g_step(lua_State *L) {
  lground *G = checkground(L, "step");
  double timeout = luaL_optnumber(L, 2, -1);
  int rc;
  luaL_argcheck(L, lua_isnoneornil(L, 2) || timeout >= 0, 2, "a timeout is 0 or more seconds");
  from_outside(L, "step");
  rc = mk_host_turn(G->h, timeout);
  return outcome(L, G->h, rc, rc == 1);
}

static int g_pollfd(lua_State *L) {
  int fd = mk_host_pollfd(checkground(L, "pollfd")->h);
  if (fd < 0) {
    lua_pushnil(L);
    lua_pushliteral(L, "libev polls with select or poll here: no descriptor to watch");
    return 2;
  }
  lua_pushinteger(L, fd);
  return 1;
}

/* g:events() -> "r": the descriptor is polled for reading. */
static int g_events(lua_State *L) {
  checkground(L, "events");
  lua_pushliteral(L, "r");
  return 1;
}

/* g:timeout() -> seconds, or nil when no timer runs (cqueues: no bound). */
static int g_timeout(lua_State *L) {
  double t = mk_host_timeout(checkground(L, "timeout")->h);
  if (t < 0) lua_pushnil(L);
  else lua_pushnumber(L, t);
  return 1;
}

/* g:close(): end every process (they see each other's absence), stop the
** watchers, free the loop.  Closing again does nothing. */
static int g_close(lua_State *L) {
  lground *G = luaL_checkudata(L, 1, GROUND_MT);
  if (G->h == NULL) return 0;
  from_outside(L, "close");
  teardown(G->h);
  mk_host_free(G->h);
  G->h = NULL;
  luaL_unref(L, LUA_REGISTRYINDEX, G->lc.ref);
  G->lc.ref = LUA_NOREF;
  if (G->canary != LUA_NOREF) {
    lua_rawgeti(L, LUA_REGISTRYINDEX, G->canary);
    *(lground **)lua_touserdata(L, -1) = NULL;
    lua_pop(L, 1);
    luaL_unref(L, LUA_REGISTRYINDEX, G->canary);
    G->canary = LUA_NOREF;
  }
  return 0;
}

static int g_tostring(lua_State *L) {
  lground *G = luaL_checkudata(L, 1, GROUND_MT);
  lua_pushfstring(L, "market.ground_vm (%s): %p", G->h ? "open" : "closed", (void *)G);
  return 1;
}

static void open_ground_mt(lua_State *L, mkl_state *S) {
  static const luaL_Reg methods[] = {
    {"step", g_step}, {"pollfd", g_pollfd}, {"events", g_events},
    {"timeout", g_timeout}, {"close", g_close}, {NULL, NULL}};
  static const luaL_Reg meta[] = {
    {"__gc", g_close}, {"__close", g_close}, {"__tostring", g_tostring}, {NULL, NULL}};
  if (!luaL_newmetatable(L, GROUND_MT)) { lua_pop(L, 1); return; }
  luaL_newmetatable(L, CANARY_MT);
  lua_pushlightuserdata(L, S);
  lua_pushcclosure(L, canary_gc, 1);
  lua_setfield(L, -2, "__gc");
  lua_pop(L, 1);
  lua_pushlightuserdata(L, S);
  luaL_setfuncs(L, meta, 1);
  lua_createtable(L, 0, sizeof methods / sizeof methods[0] - 1);
  lua_pushlightuserdata(L, S);
  luaL_setfuncs(L, methods, 1);
  lua_setfield(L, -2, "__index");
  lua_pop(L, 1);
}

/* core.stop(drain_ms|nil): begin a stop of the ground (mk_ground_stop);
** false when no ground VM runs (market.stop raises at its caller). */
static int c_stop(lua_State *L) {
  mkl_state *S = STATE(L);
  double drain = luaL_optnumber(L, 1, -1);
  if (S->g != NULL) mk_ground_stop(S->g, drain);
  lua_pushboolean(L, S->g != NULL);
  return 1;
}

/* core.now() -> wall-clock ms as the loop sees it */
/* core.memory() -> bytes the C heap has allocated and not freed (the Lua
** heap included, as Lua allocates with malloc): live memory, unlike RSS,
** which also counts what the allocator holds but does not use. */
static int c_memory(lua_State *L) {
  struct mallinfo2 mi = mallinfo2();
  /* Blocks in the small-block cache are free, though malloc lent them, and
  ** so are those kept in front of the Lua state's allocator (mkl_attach). */
  lua_pushinteger(L, (lua_Integer)(mi.uordblks - mk_pool_cached() -
                                   mk_pool_over_cached(STATE(L)->over)));
  return 1;
}

static void count_heap(lua_State *L, mkl_state *S);

/* market.memory_limit([bytes]): the memory limit (pool.h) or nil, and the
** bytes it counts; with bytes (0 or false: none), set first. */
static int c_memory_limit(lua_State *L) {
  if (!lua_isnone(L, 1)) {
    lua_Integer n = 0;
    if (lua_toboolean(L, 1)) {
      int ok;
      n = lua_tointegerx(L, 1, &ok);
      luaL_argexpected(L, ok && n >= 0, 1, "a number of bytes, 0 or more (or false)");
    }
    mk_pool_set_limit((size_t)n);
    if (n > 0) count_heap(L, STATE(L));
  }
  if (mk_pool_limit() != 0) lua_pushinteger(L, (lua_Integer)mk_pool_limit());
  else lua_pushnil(L);
  lua_pushinteger(L, (lua_Integer)mk_pool_used());
  return 2;
}

static int c_now(lua_State *L) {
  mkl_state *S = STATE(L);
  if (S->g == NULL) return luaL_error(L, "market.now: no ground VM is running");
  lua_pushnumber(L, mk_ground_now(S->g));
  return 1;
}

/* The monotonic clock, in ms: timed waits, monotonic alarms and relative
** timers are kept on it, so setting the wall clock moves none of them.
** Needs no ground: it is the program's. */
static int c_monotonic(lua_State *L) {
  lua_pushnumber(L, mk_ground_clock());
  return 1;
}

/* ---- entry points for C ------------------------------------------------- */

mk_ground *mkl_ground(lua_State *L) {
  mkl_state *S = getstate(L);
  return S ? S->g : NULL;
}

/* The state's Lua heap in the memory limit's count from now on, as the
** interpreter's is (pool.h, mk_pool_over_count): once a limit is set,
** since the count costs each block the cache does not keep. */
static void count_heap(lua_State *L, mkl_state *S) {
  if (S != NULL && S->over != NULL)
    mk_pool_over_count(S->over, (size_t)lua_gc(L, LUA_GCCOUNT, 0) * 1024 +
                                (size_t)lua_gc(L, LUA_GCCOUNTB, 0));
}

/*
** While a ground VM runs on a Lua state that another host made (lua5.4's
** own allocator is realloc and free), the Lua objects its processes free
** wait in a cache in front of that allocator (pool.h, mk_pool_over) for
** the next of their size.  A VM spawning and killing in waves got them
** back from glibc's free lists, merged and scattered by the wave of
** kills before, and ran at two thirds of the rate it does with the cache
** (docs/performance.md, "Sustained spawns").  The interpreter's own state
** is on the pool already (host.c); none under AddressSanitizer.
*/
static void keep_freed(lua_State *L, mkl_state *S) {
  void *ud;
  lua_Alloc f = lua_getallocf(L, &ud);
  if (MK_SANITIZED || f == mk_pool_lalloc || f == mk_pool_over_lalloc) return;
  if ((S->over = mk_pool_over_new(f, ud)) == NULL) return;
  if (mk_pool_limit() != 0) count_heap(L, S);
  lua_setallocf(L, mk_pool_over_lalloc, S->over);
}

/* A cache left installed behind another allocator (unkeep_freed): kept
** reachable, the last one, for leak checkers. */
static mk_pool_over *left_behind;

/* The code of this module stays loaded for the life of the process, even
** once the Lua state that loaded it closes (lua5.4 unloads its C modules
** then): something still calls into it. */
static void pin_module(void) {
  Dl_info info;
  if (dladdr((void *)mk_pool_over_lalloc, &info) && info.dli_fname != NULL)
    dlopen(info.dli_fname, RTLD_NOW | RTLD_NOLOAD | RTLD_NODELETE);
}

/* The VM is gone: the state's allocator is what it was, and what the cache
** kept goes back to it.  If something installed an allocator of its own in
** front of the cache meanwhile, the cache stays, passing every call on,
** and so does the code of its function: market.so is kept loaded. */
static void unkeep_freed(lua_State *L, mkl_state *S) {
  void *ud;
  if (S->over == NULL) return;
  if (lua_getallocf(L, &ud) == mk_pool_over_lalloc && ud == S->over) {
    lua_Alloc f = mk_pool_over_under(S->over, &ud);
    lua_setallocf(L, f, ud);
    mk_pool_over_free(S->over);
  } else {
    mk_pool_over_pass(S->over);
    left_behind = S->over;
    pin_module();
  }
  S->over = NULL;
}

int mkl_attach(lua_State *L, mk_ground *g) {
  mkl_state *S = getstate(L);
  if (S == NULL || S->g != NULL) return -1;
  S->g = g;
  keep_freed(L, S);
  mk_vm_set_userdata(mk_ground_vm(g), S);
  mk_vm_set_crash_hook(mk_ground_vm(g), crashed, S);
  settle_from(S, lua_gc(L, LUA_GCCOUNT));
  mk_ground_on_settle(g, settle_gc, S);
  return 0;
}

void mkl_detach(lua_State *L) {
  mkl_state *S = getstate(L);
  if (S == NULL) return;
  S->g = NULL;           /* freed already (mk_host_free), its hook with it */
  mkl_unwrap_detail(L);
  unkeep_freed(L, S);
}

mk_pid mkl_spawn(lua_State *L, mk_vm *vm, const char *name, int report) {
  mkl_state *S = getstate(L);
  lproc *lp = newproc(S, L);
  lp->boot = report != 0;
  return mk_vm_spawn(vm, &lua_behavior, lp, name);
}

mk_pid mkl_spawn_by(lua_State *L, mk_proc *p, const char *name) {
  return mk_spawn(p, &lua_behavior, newproc(running.lp->S, L), name, NULL);
}

mk_pid mkl_spawn_boot(lua_State *L, mk_vm *vm, const char *name) {
  return mkl_spawn(L, vm, name, 1);
}

void mkl_on_fail(lua_State *L, mkl_fail_fn fn, void *ud) {
  mkl_state *S = getstate(L);
  if (S == NULL) return;
  S->on_fail = fn;
  S->fail_ud = ud;
}

int mkl_running(lua_State *L) {
  mkl_state *S = getstate(L);
  return S != NULL && S->current != NULL;
}

int mkl_busy(void) { return running.p != NULL; }

mk_proc *mkl_current(lua_State *L) {
  return running.p != NULL && running.lp->co == L && !in_finaliser(L) ? running.p : NULL;
}

/* The activation on L applies what its body returned (handle: the rest
** of it, after toapply), so that no code of the process's own runs in
** it after that transition's last action. */
int mkl_applying(lua_State *L) {
  return running.p != NULL && running.lp->co == L && running.lp->applies >= APPLY_LAST;
}

int mkl_applying_boot(lua_State *L) {
  return running.p != NULL && running.lp->co == L && running.lp->applies == APPLY_LAST_BOOT;
}

mk_proc *mkl_acting(lua_State *L) {
  mkl_state *S;
  if (running.p != NULL && running.lp->co == L) return running.p;
  S = getstate(L);
  return S != NULL ? S->current : NULL;
}

int mkl_set_at_return(lua_State *L, int idx) {
  idx = lua_absindex(L, idx);
  if (!mkl_pushctx(L)) return 0;
  lua_pushvalue(L, idx);
  lua_rawseti(L, -2, MKL_CTX_AT_RETURN);
  lua_pop(L, 1);
  running.lp->at_return = 1;
  return 1;
}

int mkl_pushctx(lua_State *L) {
  if (running.p == NULL || running.lp->co != L) return 0;
  lua_rawgeti(L, LUA_REGISTRYINDEX, running.lp->ctxref);
  return 1;
}

static int state_gc(lua_State *L) {
  mkl_state *S = lua_touserdata(L, 1);
  if (S->g != NULL) {
    /* The state closes while its ground VM runs: os.exit(status, true) in
    ** a process, or a ground VM whose close raised (one of its processes
    ** running).  Its host is never freed (ground_vm's is on a C stack
    ** that does not return), so mkl_detach does not put the allocator
    ** back: done here, as Lua frees the rest of the state after the
    ** finalizers, market.so's (in _CLIBS, the oldest) last.  The host's
    ** watchers, signal handlers and hooks still point into market.so, so
    ** it is kept loaded. */
    unkeep_freed(L, S);
    mk_ground_on_settle(S->g, NULL, NULL);    /* S is freed next */
    pin_module();
  }
  free(S->spare);
  S->spare = NULL;
  S->nspare = S->maxspare = S->nkept = S->run = S->demand = 0;
  budget_release();
  if (act.users == 0) {
    /* The last Lua state with market open: let go of what is cached for
    ** all of them.  The pool's blocks go back to malloc too: lua5.4 then
    ** unloads market.so, and valgrind called the blocks only its statics
    ** pointed to lost. */
    mkl_forget_strings();
    mk_pool_trim();
  }
  return 0;
}

void mkl_open_core(lua_State *L) {
  static const luaL_Reg funcs[] = {
    {"spawn", c_spawn}, {"quit", c_quit}, {"link", c_link}, {"add", c_add}, {"delete", c_delete},
    {"send", c_send}, {"feedback", c_feedback}, {"yield", c_yield},
    {"waits", c_waits}, {"current", c_current}, {"outside", c_outside}, {"nowait", c_nowait},
    {"self", c_self}, {"role", c_role},
    {"set_name", c_set_name}, {"init", c_init}, {"ground_vm", c_ground_vm},
    {"open_ground_vm", c_open_ground_vm},
    {"now", c_now}, {"monotonic", c_monotonic}, {"memory", c_memory},
    {"memory_limit", c_memory_limit}, {"stop", c_stop}, {"exit", c_exit},
    {NULL, NULL}};
  mkl_state *S = getstate(L);
  if (S == NULL) {
    S = lua_newuserdatauv(L, sizeof *S, 0);
    memset(S, 0, sizeof *S);
    S->L = L;
    S->applyref = S->restref = S->dispatchref = S->eventref = LUA_NOREF;
    S->slots = lua_newthread(L);
    lua_settop(S->slots, SLOT_COUNT);        /* within its LUA_MINSTACK */
    luaL_ref(L, LUA_REGISTRYINDEX);          /* for the state's life */
    S->message.idx = SLOT_MESSAGE;
    S->topic.idx = SLOT_TOPIC;
    rolestrings(L);
    S->roleref = luaL_ref(L, LUA_REGISTRYINDEX);
    lua_pushliteral(L, "on_presence");
    S->fieldref[FIELD_PRESENCE] = luaL_ref(L, LUA_REGISTRYINDEX);
    lua_pushliteral(L, "on_absence");
    S->fieldref[FIELD_ABSENCE] = luaL_ref(L, LUA_REGISTRYINDEX);
    lua_pushliteral(L, "on_message");
    S->fieldref[FIELD_MESSAGE] = luaL_ref(L, LUA_REGISTRYINDEX);
    lua_createtable(L, 0, 1);
    lua_pushcfunction(L, state_gc);
    lua_setfield(L, -2, "__gc");
    lua_setmetatable(L, -2);
    lua_rawsetp(L, LUA_REGISTRYINDEX, &key_state);
    act.users++;                    /* budget_release, in state_gc */
    lua_rawgeti(L, LUA_REGISTRYINDEX, LUA_RIDX_MAINTHREAD);
    S->L = lua_tothread(L, -1);
    lua_pop(L, 1);
    if (tablelayout(L)) S->registry = lua_topointer(L, LUA_REGISTRYINDEX);
  }
  open_ground_mt(L, S);
  lua_createtable(L, 0, sizeof funcs / sizeof funcs[0] + 4);
  lua_pushlightuserdata(L, S);
  luaL_setfuncs(L, funcs, 1);
  mkl_open_log(L);
  mkl_open_snapshot(L);
  lua_pushinteger(L, MK_EV_PRESENCE); lua_setfield(L, -2, "PRESENCE");
  lua_pushinteger(L, MK_EV_ABSENCE); lua_setfield(L, -2, "ABSENCE");
  lua_pushinteger(L, MK_EV_MESSAGE); lua_setfield(L, -2, "MESSAGE");
  lua_pushinteger(L, MK_EV_SPAWNED); lua_setfield(L, -2, "SPAWNED");
  lua_pushinteger(L, MK_EV_RESUME); lua_setfield(L, -2, "RESUME");
  lua_pushinteger(L, MK_EV_DELETED); lua_setfield(L, -2, "DELETED");
  lua_pushinteger(L, MKL_CTX_STATE); lua_setfield(L, -2, "CTX_STATE");
  lua_pushinteger(L, MKL_CTX_METAS); lua_setfield(L, -2, "CTX_METAS");
  lua_pushinteger(L, MKL_CTX_AT_RETURN); lua_setfield(L, -2, "CTX_AT_RETURN");
  mkl_open_actions(L);
  mkl_open_trace(L);
  open_coroutines(L);
  open_xpcall(L);
}

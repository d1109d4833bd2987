/*
** ground.c: the ground VM: an mk_vm plus libev watchers for ground events.
**
** Watches are shared: every subscription to an equal ground-event record
** counts toward one watcher, stopped when the count drops to zero.  The VM
** runs from a prepare watcher, i.e. after the callbacks of one poll and
** before the next, so a burst of readiness is handled in batches: one per
** poll, or per MK_GROUND_BATCH descriptors' wake-ups when a poll brings
** more (ground.h, "Delivery"; io_cb).
**
** libev asserts (aborts the program) on values it does not expect: a
** negative or huge descriptor, a signal out of range or on two loops, and
** epoll_ctl failing with EBADF on a descriptor closed under a watcher.  So
** every value is checked before libev sees it, and a descriptor watch
** started or changed in a turn is checked again just before libev hands it
** to the kernel (prepare_cb runs before libev's fd_reify).
*/
#include <errno.h>
#include <ev.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "ground.h"
#include "pool.h"

mk_rtype *mk_ground_readable, *mk_ground_writable, *mk_ground_alarm, *mk_ground_signal,
    *mk_ground_stopping, *mk_ground_monotonic_alarm;
static int ground_types_users;

/* K_TIMER: a monotonic alarm, on an ev_timer; K_WALL: a wall-clock alarm,
** on an ev_periodic, which libev moves when the clock is set (it watches
** for that with a timerfd): an ev_timer, counting monotonic time from the
** subscription, fired late after the clock was set forward and early
** after it was set back. */
enum { K_NONE = -1, K_IO, K_TIMER, K_SIGNAL, K_WALL };

#define IS_ALARM(kind) ((kind) == K_TIMER || (kind) == K_WALL)

#define AUDIT_PERIOD 1.0    /* seconds between audits of the watched descriptors */
#define AUDIT_MAX 128       /* descriptors checked per audit */
#define DEFAULT_DRAIN_MS 5000.0

/*
** One watch per distinct record.  Lives while subscriptions to the record
** remain (count), in the ground's hash table; the libev watcher runs while
** `active`, and the ground's publisher endpoint `ep` exists while
** `published`.  A watch that failed is neither, until a new subscription
** tries it again.
**
** A server holds one per connection (its socket's readable), so the record
** is kept small, 192 bytes, a 208-byte malloc chunk (issue 10: it was 160
** bytes, then 120 without the match slot, which takes 72 and spares a
** look in the match cache's table at every wake-up): the endpoint's name
** is made from `serial` when needed,
** the record's field (the descriptor, time or signal) is read from `topic`
** (argof), and the watch on the same descriptor in the other direction is
** looked up (twin_of) when one stops, which is not per message.
*/
/*
** A watch is laid out for its wake-up, which at a server's thousands of
** sockets finds it out of the processor's cache: libev's watcher, the
** ground and the topic in its first cache line, the slot its record is
** routed by in the second (route.h puts the slot's `wraps` first for
** that), the rest after.  It is placed on a line's boundary (pool.h,
** mk_pool_alloc_at).  Laid out in declaration order from a 16-byte
** boundary, the wake-up read three lines and most of a fourth (issue 10,
** docs/performance.md, "Round 13").
*/
typedef struct watch {
  union { ev_io io; ev_timer timer; ev_signal sig;
          ev_periodic *wall; } w;   /* 48 bytes; a periodic is 64, so it is
                                    ** kept apart (owned, while active) */
  mk_ground *g;
  mk_term *topic;           /* owned: the record sent when it fires */
  mk_match_slot slot;       /* its matches (route.h), for the VM's sends:
                            ** a server's thousands of sockets would each
                            ** look in the match cache's table */
  struct watch *next;       /* hash chain */
  struct watch *rnext, *rprev;   /* ring of active descriptor watches (audit),
                                 ** or of running alarms (mk_ground_timeout) */
  struct watch *dnext, *dprev;   /* descriptor watches to check before the next poll */
  unsigned long long serial;     /* the ground's endpoint is named "w<serial>" */
  uint32_t count;           /* subscriptions */
  uint8_t kind;             /* K_IO, K_TIMER, K_SIGNAL, K_WALL */
  uint8_t active, published, dirty;
} watch;

_Static_assert(offsetof(watch, slot) == 64, "a watch's slot starts its second line");

/* The endpoint name of a watch: "w" and a serial of at most 20 digits. */
#define EPNAME_SIZE 24

struct mk_ground {
  struct ev_loop *loop;     /* borrowed */
  mk_vm *vm;                /* owned */
  mk_proc *self;            /* the VM's resident process: publishes the events */
  mk_ground *gnext;         /* every ground of the program (mk_ground_fd_closed) */
  ev_prepare prepare;       /* unref'd */
  void (*settle)(void *ud); /* mk_ground_on_settle's hook, or NULL */
  void *settle_ud;          /* its argument, borrowed */
  ev_idle busy;             /* running while a slice left events queued:
                            ** the loop polls without waiting meanwhile */
  ev_timer audit;           /* unref'd, running while `ring` is not empty */
  ev_timer deadline;        /* unref'd, the end of a drain */
  ev_signal stopsig[2];     /* SIGINT, SIGTERM; unref'd (stop_on_signals) */
  watch **tab;              /* chained by mk_hash(topic) */
  size_t tabsize, nwatch, active, nring;
  watch *ring, *cursor;     /* the ring and the audit's next watch in it */
  watch *alarms;            /* ring of running alarm watches */
  ev_timer wake;            /* mk_ground_turn's bound on its wait, while it waits */
  int pollfd;               /* the loop's backend descriptor; -2: not known yet */
  watch *dirty;             /* list */
  /* Timeouts (ground.h): a binary heap of the armed ones, earliest first,
  ** owned (the records are their owners'), and the timer set for the top,
  ** running while the heap is not empty. */
  mk_timeout **theap;
  size_t tn, tcap;
  unsigned long long tseq;
  ev_timer tclock;
  unsigned long long serial;
  double drain_ms;          /* the drain for signals and mk_ground_stop(g, -1) */
  double stop_drain;        /* the drain of the stop under way */
  int exit_status;          /* set by the first ending (halt), kept after */
  uint8_t stopping, timing, onsignals;
  uint8_t ending;           /* the program is ending: an exit, the drain's
                            ** deadline, a second signal or mk_ground_free came
                            ** first, and a later exit changes nothing */
  uint8_t exited;           /* that was an exit (mk_ground_exit) */
  uint8_t exit_due;         /* an exit waits for the runs in progress to return */
  /* Descriptors' wake-ups since the VM last ran, in the order they came,
  ** their records not sent yet (io_cb, flush); NULL: a watch halted since.
  ** At most MK_GROUND_BATCH: the VM runs when there are that many. */
  watch *ready[MK_GROUND_BATCH];
  unsigned nready;
};

static mk_ground *grounds;

/* ---- signals -------------------------------------------------------------- */

/* libev watches a signal on one loop at a time and asserts otherwise: the
** loop that this program's ground watchers of each signal are on.
** When the last watcher of a signal stops, libev leaves it at SIG_DFL:
** its disposition from before the first one (SIG_IGN for SIGPIPE, a
** handler of the host's) is saved on the first claim and put back after
** the last release. */
static struct {
  struct ev_loop *loop;
  unsigned n;
  struct sigaction old;
} sigowner[NSIG];

static int claim_signal(struct ev_loop *loop, int signum) {
  if (sigowner[signum].n > 0 && sigowner[signum].loop != loop) return -1;
  if (sigowner[signum].n == 0) sigaction(signum, NULL, &sigowner[signum].old);
  sigowner[signum].loop = loop;
  sigowner[signum].n++;
  return 0;
}

/* After the watcher's ev_signal_stop. */
static void release_signal(int signum) {
  if (--sigowner[signum].n > 0) return;
  sigowner[signum].loop = NULL;
  sigaction(signum, &sigowner[signum].old, NULL);
}

/* ---- the ground's publishers ---------------------------------------------- */

/* ep := "w<serial>".  By hand: snprintf took 750 instructions, twice for
** every socket watch and alarm, about 3% of a connection a server closes. */
static void epname(char ep[EPNAME_SIZE], unsigned long long serial) {
  char digits[EPNAME_SIZE];
  size_t n = 0, i;
  do { digits[n++] = (char)('0' + serial % 10); serial /= 10; } while (serial > 0);
  ep[0] = 'w';
  for (i = 0; i < n; i++) ep[1 + i] = digits[n - 1 - i];
  ep[1 + n] = '\0';
}

static void publish(mk_ground *g, watch *w) {
  mk_role r;
  char ep[EPNAME_SIZE];
  r.orientation = MK_PUBLISHER;
  r.interest = MK_PARTICIPANT;
  r.topic = w->topic;
  w->serial = ++g->serial;
  epname(ep, w->serial);
  w->published = 1;
  mk_add_endpoint(g->self, ep, 0, r);
}

static void withdraw(mk_ground *g, watch *w, mk_term *reason) {
  char ep[EPNAME_SIZE];
  if (!w->published) return;
  w->published = 0;
  epname(ep, w->serial);
  mk_delete_endpoint(g->self, ep, 0, reason);
}

/* "<record>: why", e.g. "market:readable(-1): not an open file descriptor". */
static mk_term *reason_about(const watch *w, const char *why) {
  size_t n, m = strlen(why);
  char *r = mk_repr(w->topic, &n), *s;
  mk_term *t;
  if (r == NULL || (s = malloc(n + m + 3)) == NULL) { free(r); return mk_cstr(why); }
  memcpy(s, r, n);
  memcpy(s + n, ": ", 2);
  memcpy(s + n + 2, why, m + 1);
  t = mk_str(s, n + m + 2);
  free(s);
  free(r);
  return t;
}

/* ---- descriptor bookkeeping ------------------------------------------------ */

/* Open, and not with O_PATH: a descriptor that only names a file (as
** market keeps a standard descriptor closed at start: lua/main.c,
** std_reserve) is refused by epoll_ctl with EBADF, on which libev
** aborts. */
static int fd_open(int fd) {
  int fl = fcntl(fd, F_GETFL);
  return fl != -1 ? !(fl & O_PATH) : errno != EBADF;
}

/* An epoll instance (an event loop's own descriptor, libev's among them). */
static int fd_epoll(int fd) {
  char path[32], target[32];
  ssize_t n;
  snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
  n = readlink(path, target, sizeof target - 1);
  if (n < 0) return 0;
  target[n] = '\0';
  return strcmp(target, "anon_inode:[eventpoll]") == 0;
}

/* The descriptor of a ground's own loop: epoll refuses to watch itself,
** and libev asserts when it does (or spins).  Another loop's epoll
** instance (cqueues', luv's) is watched like any descriptor, to run that
** loop inside market (docs/loops.md); when a ground's backend descriptor
** cannot be known (mk_ground_pollfd: a backend that cannot be embedded),
** every epoll instance counts as a ground's. */
static int fd_ground_loop(int fd) {
  mk_ground *g;
  int b;
  if (!fd_epoll(fd)) return 0;
  for (g = grounds; g; g = g->gnext)
    if ((b = mk_ground_pollfd(g)) < 0 || b == fd) return 1;
  return 0;
}

static void ring_add(mk_ground *g, watch *w) {
  if (g->ring == NULL) {
    w->rnext = w->rprev = w;
    g->ring = g->cursor = w;
    ev_timer_set(&g->audit, AUDIT_PERIOD, AUDIT_PERIOD);
    ev_timer_start(g->loop, &g->audit);
    ev_unref(g->loop);       /* an audit is nothing to wait on */
  } else {
    w->rnext = g->ring;
    w->rprev = g->ring->rprev;
    w->rprev->rnext = w;
    g->ring->rprev = w;
  }
  g->nring++;
}

static void ring_remove(mk_ground *g, watch *w) {
  g->nring--;
  if (w->rnext == w) {
    g->ring = g->cursor = NULL;
    ev_ref(g->loop);
    ev_timer_stop(g->loop, &g->audit);
  } else {
    w->rprev->rnext = w->rnext;
    w->rnext->rprev = w->rprev;
    if (g->ring == w) g->ring = w->rnext;
    if (g->cursor == w) g->cursor = w->rnext;
  }
  w->rnext = w->rprev = NULL;
}

/* Running alarms, for mk_ground_timeout: a ring through the fields that
** descriptor watches use for the audit's. */
static void alarm_add(mk_ground *g, watch *w) {
  if (g->alarms == NULL) {
    w->rnext = w->rprev = w;
    g->alarms = w;
    return;
  }
  w->rnext = g->alarms;
  w->rprev = g->alarms->rprev;
  w->rprev->rnext = w;
  g->alarms->rprev = w;
}

static void alarm_remove(mk_ground *g, watch *w) {
  if (w->rnext == w) g->alarms = NULL;
  else {
    w->rprev->rnext = w->rnext;
    w->rnext->rprev = w->rprev;
    if (g->alarms == w) g->alarms = w->rnext;
  }
  w->rnext = w->rprev = NULL;
}

static void dirty_add(mk_ground *g, watch *w) {
  if (w->dirty) return;
  w->dirty = 1;
  w->dprev = NULL;
  w->dnext = g->dirty;
  if (g->dirty) g->dirty->dprev = w;
  g->dirty = w;
}

static void dirty_remove(mk_ground *g, watch *w) {
  if (!w->dirty) return;
  w->dirty = 0;
  if (w->dprev) w->dprev->dnext = w->dnext; else g->dirty = w->dnext;
  if (w->dnext) w->dnext->dprev = w->dprev;
  w->dnext = w->dprev = NULL;
}

/* ---- starting and stopping watches ------------------------------------------ */

static int number(const mk_term *t, double *out);
static watch *twin_of(mk_ground *g, const mk_term *topic);

/* The field of w's record (subscribed checked that it is a number). */
static double argof(const watch *w) {
  double v = 0;
  number(mk_items(w->topic)[0], &v);
  return v;
}

/* A halted watch's wake-up not sent yet is not sent (flush): it may be
** freed before then. */
static void unready(mk_ground *g, watch *w) {
  unsigned i;
  for (i = 0; i < g->nready; i++)
    if (g->ready[i] == w) g->ready[i] = NULL;
}

/* Stop w's libev watcher, if it runs. */
static void halt_watch(mk_ground *g, watch *w) {
  watch *twin;
  if (!w->active) return;
  w->active = 0;
  g->active--;
  switch (w->kind) {
    case K_IO:
      ev_io_stop(g->loop, &w->w.io);
      ring_remove(g, w);
      dirty_remove(g, w);
      unready(g, w);
      /* libev now changes the kernel's interest in the descriptor that the
      ** other direction still watches: check it first (prepare_cb). */
      if ((twin = twin_of(g, w->topic)) != NULL && twin->active) dirty_add(g, twin);
      break;
    case K_TIMER:
      ev_timer_stop(g->loop, &w->w.timer);
      alarm_remove(g, w);
      break;
    case K_WALL:
      ev_periodic_stop(g->loop, w->w.wall);
      mk_pool_free(w->w.wall, sizeof *w->w.wall);
      w->w.wall = NULL;
      alarm_remove(g, w);
      break;
    default:
      ev_signal_stop(g->loop, &w->w.sig);
      release_signal(w->w.sig.signum);
      break;
  }
}

/* The watch failed: stop it, and the ground withdraws with `reason`. */
static void fail(mk_ground *g, watch *w, mk_term *reason) {
  halt_watch(g, w);
  withdraw(g, w, reason);
}

static void fail_about(mk_ground *g, watch *w, const char *why) {
  mk_term *r = reason_about(w, why);
  fail(g, w, r);
  mk_unref(r);
}

/* w's descriptor was closed behind market's back: both directions go. */
static void fail_closed(mk_ground *g, watch *w) {
  watch *twin = twin_of(g, w->topic);
  fail_about(g, w, "the descriptor was closed");
  if (twin && twin->active) fail_about(g, twin, "the descriptor was closed");
}

static void fire(mk_ground *g, watch *w) {
  mk_term *t = mk_ref(w->topic);   /* the watch may go while routing */
  mk_vm_send_slot(g->vm, t, 0, &w->slot);
  mk_unref(t);
}

/* Whether a batch of n wake-ups' records are worth prefetching: more than
** one, in a VM too big for its records to be in the cache (ground.h,
** MK_GROUND_PREFETCH_PROCS).  For their sends (flush) and for what they
** queue (mk_ground_deliver) alike. */
static int prefetching(const mk_ground *g, unsigned n) {
  return n > 1 && mk_vm_nprocs(g->vm) >= MK_GROUND_PREFETCH_PROCS;
}

/*
** Send the records of the wake-ups io_cb took, in the order they came.
** Sent one by one from io_cb, each waited on its own misses at thousands
** of connections: the watch's second line (its slot), its topic, the
** connection's endpoint and process, one after another.  Taken together,
** those are fetched in stages first, each stage's misses overlapping
** (as mk_vm_prefetch does for what the sends queue), when the VM has
** MK_GROUND_PREFETCH_PROCS processes or more.
*/
static void flush(mk_ground *g) {
  unsigned i, n = g->nready;
  if (n == 0) return;
  if (prefetching(g, n)) {
    int stage;
    for (i = 0; i < n; i++)
      if (g->ready[i] != NULL) {
        __builtin_prefetch(&g->ready[i]->slot);
        __builtin_prefetch(g->ready[i]->topic);
      }
    for (stage = 0; stage < 2; stage++)
      for (i = 0; i < n; i++)
        if (g->ready[i] != NULL) mk_vm_prefetch_receivers(g->vm, &g->ready[i]->slot, stage);
  }
  /* fire() only queues: no watch halts meanwhile (the VM does not run) */
  for (i = 0; i < n; i++)
    if (g->ready[i] != NULL) fire(g, g->ready[i]);
  g->nready = 0;
}

/* A poll that brings many ready descriptors (a server's thousands of
** connections) has the VM run every MK_GROUND_BATCH of their wake-ups,
** not once after all of them (ground.h, "Delivery"): what a wake-up sets
** off (the read, the message to the session, its answer, the write) then
** comes while the records it touches are still in the cache.  Run after
** the whole poll, the three events of an echo round trip were 10,000
** apart in the queue at 10,000 connections, and each found its process,
** endpoint and connection records gone (issue 10; docs/performance.md,
** "Wake-ups in batches"). */
static void io_cb(struct ev_loop *loop, ev_io *io, int revents) {
  watch *w = io->data;
  mk_ground *g = w->g;
  /* libev gave up on the descriptor (fd_kill) and stopped the watcher. */
  if (revents & EV_ERROR) { fail_about(g, w, "bad file descriptor"); return; }
  g->ready[g->nready++] = w;       /* sent by flush, in order */
  if (g->nready >= MK_GROUND_BATCH) mk_ground_deliver(g);
}

/* Alarms and signals are sent at once, after the wake-ups before them. */
static void alarm_fired(watch *w) {
  halt_watch(w->g, w);      /* one-shot: no longer something to wait on */
  flush(w->g);
  fire(w->g, w);
}

/* libev counts a timer's delay from the time it read at the start of the
** loop iteration that set it, so a monotonic alarm may go off a little
** early: it is set again for what is left. */
static void timer_cb(struct ev_loop *loop, ev_timer *t, int revents) {
  watch *w = t->data;
  double left = argof(w) - mk_ground_clock();
  (void)revents;
  if (left > 0) {
    ev_timer_set(t, left / 1000.0, 0);
    ev_timer_start(loop, t);
    return;
  }
  alarm_fired(w);
}

static void wall_cb(struct ev_loop *loop, ev_periodic *p, int revents) {
  (void)loop; (void)revents;
  alarm_fired(p->data);
}

static void stuck_guard(int signum);
static void signal_seen(int signum);

static void signal_cb(struct ev_loop *loop, ev_signal *s, int revents) {
  watch *w = s->data;
  signal_seen(s->signum);
  flush(w->g);
  fire(w->g, w);
}

/* Why w's record cannot be watched, or NULL. */
static const char *invalid(mk_ground *g, watch *w) {
  double v = argof(w);
  int integral = v == floor(v);
  switch (w->kind) {
    case K_IO:
      if (!(v >= 0 && v <= INT_MAX && integral && fd_open((int)v)))
        return "not an open file descriptor";
      if (fd_ground_loop((int)v)) return "an event loop's own descriptor (epoll)";
      return NULL;
    case K_TIMER:
    case K_WALL:
      return isfinite(v) ? NULL : "not a finite time";
    default:
      if (!(v >= 1 && v < NSIG && integral) || (int)v == SIGKILL || (int)v == SIGSTOP)
        return "not a signal that can be caught";
      /* A fault comes back the moment its handler returns (libev's only
      ** notes it for later): the program would spin on it. */
      if ((int)v == SIGSEGV || (int)v == SIGBUS || (int)v == SIGFPE || (int)v == SIGILL)
        return "a fault signal: it cannot be handled as an event";
      if ((int)v == MK_BUDGET_SIGNAL)
        return "reserved: market's activation budget uses it";
      if (claim_signal(g->loop, (int)v) != 0) return "watched by another event loop";
      return NULL;
  }
}

/*
** Start watching, or fail at once: then the ground publishes and withdraws
** with the reason, so that the subscriber sees presence, then absence.
*/
static void start(mk_ground *g, watch *w) {
  const char *why = invalid(g, w);   /* a signal is claimed when valid */
  double v = argof(w);
  if (why != NULL) {
    publish(g, w);
    fail_about(g, w, why);
    return;
  }
  switch (w->kind) {
    case K_IO:
      ev_io_init(&w->w.io, io_cb, (int)v,
                 w->topic->v.rt == mk_ground_readable ? EV_READ : EV_WRITE);
      w->w.io.data = w;
      ev_io_start(g->loop, &w->w.io);
      ring_add(g, w);
      dirty_add(g, w);        /* closed before the next poll: prepare_cb */
      break;
    case K_TIMER: {
      double delay = (v - mk_ground_clock()) / 1000.0;
      ev_timer_init(&w->w.timer, timer_cb, delay > 0 ? delay : 0, 0);
      w->w.timer.data = w;
      ev_timer_start(g->loop, &w->w.timer);
      alarm_add(g, w);
      break;
    }
    case K_WALL:
      if ((w->w.wall = mk_pool_alloc(sizeof *w->w.wall)) == NULL) {
        publish(g, w);
        fail_about(g, w, "out of memory");
        return;
      }
      ev_periodic_init(w->w.wall, wall_cb, v / 1000.0, 0, 0);
      w->w.wall->data = w;
      ev_periodic_start(g->loop, w->w.wall);
      alarm_add(g, w);
      break;
    default:
      ev_signal_init(&w->w.sig, signal_cb, (int)v);
      w->w.sig.data = w;
      ev_signal_start(g->loop, &w->w.sig);
      stuck_guard((int)v);
      break;
  }
  w->active = 1;
  g->active++;
  publish(g, w);
}

static void audit_cb(struct ev_loop *loop, ev_timer *t, int revents) {
  mk_ground *g = t->data;
  size_t i, n = g->nring < AUDIT_MAX ? g->nring : AUDIT_MAX;
  for (i = 0; i < n && g->cursor != NULL; i++) {
    watch *w = g->cursor;
    g->cursor = w->rnext;
    if (!fd_open(w->w.io.fd)) fail_closed(g, w);
  }
}

/* Descriptor watches started or changed in this turn: libev is about to
** hand them to the kernel, and epoll_ctl on a closed descriptor aborts. */
static void check_dirty(mk_ground *g) {
  watch *w;
  while ((w = g->dirty) != NULL) {
    dirty_remove(g, w);
    if (w->active && !fd_open(w->w.io.fd)) fail_closed(g, w);
  }
}

static void halt(mk_ground *g, const char *why);

/* Nothing to deliver: the VM's queue empty, and no wake-up waiting to be
** sent (flush). */
static int idle(const mk_ground *g) {
  return g->nready == 0 && mk_vm_idle(g->vm);
}

/* How long an exit that fell due goes on delivering what is queued
** before it kills (docs/semantics.md §14): a process busy for ever must
** not hold it off. */
#define EXIT_RUN_MS 1000

void mk_ground_deliver(mk_ground *g) {
  /* The records a batch of wake-ups will read, fetched together first
  ** (mk_vm_prefetch) when there are too many to be in the cache
  ** (MK_GROUND_PREFETCH_PROCS): most of the batch's events are the
  ** wake-ups' own, and the rest follow from them. */
  unsigned woken = g->nready;
  flush(g);
  if (prefetching(g, woken)) mk_vm_prefetch(g->vm, 2 * (size_t)woken);
  mk_vm_run_for(g->vm, MK_GROUND_SLICE_MS);
  /* The slice's writes are made (the drivers write as they are told):
  ** what may wait goes now, off the path of the replies (ground.h). */
  if (g->settle != NULL) g->settle(g->settle_ud);
  /* No handler is running any more: the exit's teardown can run the VM. */
  if (g->exit_due) {
    /* what was queued first, without a poll in between */
    mk_vm_run_for(g->vm, EXIT_RUN_MS);
    halt(g, "exit");
  }
}

/* The VM runs for a slice before each poll; if events are left (or
** check_dirty queued absences), the poll waits for nothing and the next
** turn runs them. */
static void prepare_cb(struct ev_loop *loop, ev_prepare *p, int revents) {
  mk_ground *g = p->data;
  /* The pool's reserve, spent by an event that ran memory out (pool.h):
  ** taken again once memory allows (a test while it is held). */
  mk_pool_reserve();
  mk_ground_deliver(g);
  check_dirty(g);
  if (!idle(g)) ev_idle_start(loop, &g->busy);
  else ev_idle_stop(loop, &g->busy);
}

static void busy_cb(struct ev_loop *loop, ev_idle *i, int revents) {}

void mk_ground_on_settle(mk_ground *g, void (*fn)(void *ud), void *ud) {
  g->settle = fn;
  g->settle_ud = fn != NULL ? ud : NULL;
}

/* ---- subscriptions ------------------------------------------------------------ */

static int number(const mk_term *t, double *out) {
  if (t->kind == MK_INT) { *out = (double)t->v.i; return 1; }
  if (t->kind == MK_FLOAT) { *out = t->v.f; return 1; }
  return 0;
}

/* Which ground event, if any, a subscription topic asks to watch. */
static int ground_kind(const mk_term *t, double *arg) {
  const mk_rtype *rt;
  int kind;
  if (t->kind != MK_REC) return K_NONE;
  rt = t->v.rt;
  if (rt == mk_ground_readable || rt == mk_ground_writable) kind = K_IO;
  else if (rt == mk_ground_alarm) kind = K_WALL;
  else if (rt == mk_ground_monotonic_alarm) kind = K_TIMER;
  else if (rt == mk_ground_signal) kind = K_SIGNAL;
  else return K_NONE;
  /* Only now is there a field to read: a record of another type may have
  ** none at all (a 0-field record crashed here, issue 8). */
  return number(mk_items(t)[0], arg) ? kind : K_NONE;
}

static watch **find(mk_ground *g, const mk_term *topic) {
  watch **pp = &g->tab[mk_hash(topic) & (g->tabsize - 1)];
  for (; *pp; pp = &(*pp)->next)
    if (mk_equal((*pp)->topic, topic)) break;
  return pp;
}

static void grow(mk_ground *g) {
  size_t n = g->tabsize * 2, i;
  watch **t = calloc(n, sizeof *t);
  if (t == NULL) return;     /* keep the old table: only slower */
  for (i = 0; i < g->tabsize; i++) {
    watch *w = g->tab[i], *nx;
    for (; w; w = nx) {
      nx = w->next;
      w->next = t[mk_hash(w->topic) & (n - 1)];
      t[mk_hash(w->topic) & (n - 1)] = w;
    }
  }
  free(g->tab);
  g->tab = t;
  g->tabsize = n;
}

/* The other direction's watch on the same descriptor, or NULL. */
static watch *twin_of(mk_ground *g, const mk_term *topic) {
  mk_rtype *other = topic->v.rt == mk_ground_readable ? mk_ground_writable : mk_ground_readable;
  mk_term *t = mk_rec(other, mk_ref(mk_items(topic)[0]));
  watch *w = t ? *find(g, t) : NULL;
  mk_unref(t);
  return w;
}

static void watch_free(watch *w) {
  mk_match_slot_clear(&w->slot);
  mk_unref(w->topic);
  mk_pool_free_at(w, sizeof *w, 0);
}

static void subscribed(mk_vm *vm, const mk_term *topic, mk_endpoint *ep, void *ud) {
  mk_ground *g = ud;
  double arg;
  int kind = ground_kind(topic, &arg);
  watch **pp, *w;
  if (kind == K_NONE) return;
  pp = find(g, topic);
  if ((w = *pp) != NULL) {
    w->count++;
    /* A failed watch tries again: the number may name a new descriptor. */
    if (!w->active && !w->published) start(g, w);
    /* An alarm that went off is still published: one who comes late gets
    ** it too, as it would with a watch of its own (its time has passed),
    ** and those who had it do not get it twice. */
    else if (IS_ALARM(w->kind) && !w->active) mk_vm_tell(vm, ep, w->topic);
    return;
  }
  w = mk_pool_alloc_at(sizeof *w, 0);
  if (w == NULL) return;
  memset(w, 0, sizeof *w);
  w->g = g;
  w->topic = mk_ref((mk_term *)topic);
  w->count = 1;
  w->kind = (uint8_t)kind;
  w->next = *pp;
  *pp = w;
  if (++g->nwatch > g->tabsize) grow(g);
  start(g, w);
}

static void unsubscribed(mk_vm *vm, const mk_term *topic, void *ud) {
  mk_ground *g = ud;
  double arg;
  watch **pp, *w;
  if (ground_kind(topic, &arg) == K_NONE) return;
  pp = find(g, topic);
  if ((w = *pp) == NULL || --w->count > 0) return;
  *pp = w->next;
  g->nwatch--;
  halt_watch(g, w);
  withdraw(g, w, NULL);
  watch_free(w);
}

void mk_ground_fd_closed(int fd) {
  mk_ground *g;
  mk_term *topics[2] = { NULL, NULL }, *reason = NULL;
  int i;
  for (g = grounds; g; g = g->gnext) {
    if (g->nring == 0) continue;          /* no descriptor watched here */
    if (topics[0] == NULL) {
      topics[0] = mk_rec(mk_ground_readable, mk_int(fd));
      topics[1] = mk_rec(mk_ground_writable, mk_int(fd));
    }
    for (i = 0; i < 2; i++) {
      watch *w = *find(g, topics[i]);
      if (w != NULL && w->active) {
        /* made only now: most descriptors closed are watched no longer */
        if (reason == NULL) {
          char why[48];
          snprintf(why, sizeof why, "fd %d was closed", fd);
          reason = mk_cstr(why);
        }
        fail(g, w, reason);
      }
    }
  }
  mk_unref(topics[0]);
  mk_unref(topics[1]);
  mk_unref(reason);
}

/* ---- stopping ------------------------------------------------------------------ */

/* End every process with the reason `why`: the program is ending. */
static void halt(mk_ground *g, const char *why) {
  mk_term *r = mk_cstr(why);
  g->ending = 1;
  g->exit_due = 0;
  if (g->timing) {
    g->timing = 0;
    ev_ref(g->loop);
    ev_timer_stop(g->loop, &g->deadline);
  }
  mk_vm_kill_all(g->vm, r);
  mk_unref(r);
}

static void deadline_cb(struct ev_loop *loop, ev_timer *t, int revents) {
  mk_ground *g = t->data;
  char why[96];
  /* libev stopped the one-shot timer, which it had counted: even up. */
  ev_ref(loop);
  g->timing = 0;
  snprintf(why, sizeof why, "stopped: the drain time (%g ms) ran out", g->stop_drain);
  halt(g, why);
}

static void begin_stop(mk_ground *g, double drain_ms) {
  mk_term *t = mk_rec(mk_ground_stopping, mk_float(floor(mk_ground_now(g) + drain_ms)));
  mk_role r;
  g->stopping = 1;
  g->stop_drain = drain_ms;
  r.orientation = MK_PUBLISHER;
  r.interest = MK_PARTICIPANT;
  r.topic = t;
  mk_add_endpoint(g->self, "stopping", 0, r);
  mk_unref(t);
  /* The drain's end, not a reason to keep running: unref'd. */
  ev_timer_set(&g->deadline, drain_ms / 1000.0, 0);
  ev_timer_start(g->loop, &g->deadline);
  ev_unref(g->loop);
  g->timing = 1;
}

void mk_ground_stop(mk_ground *g, double drain_ms) {
  if (g == NULL || g->stopping) return;
  if (!(drain_ms >= 0) || !isfinite(drain_ms)) drain_ms = g->drain_ms;
  begin_stop(g, drain_ms);
}

/*
** A second signal must stop the program even when its loop cannot run: a
** handler that never returns in C, a finaliser that loops, code the
** activation budget cannot reach.  So while SIGINT and SIGTERM begin a
** stop, their handler is this one, not libev's: it passes the signal on to
** libev as libev's would (ev_feed_signal), and when one comes while the
** loop has still not taken the one before after STUCK_MS, the loop is
** stuck: it ends the program at once, with 128 + the signal's number as
** its status.  The same signal from the same sender within SAME_MS of
** the one before is that one again, not a second request, whether or not
** the loop took the first: `timeout` and shells send a signal to a
** process and then to its process group, so one SIGTERM often arrives
** twice, microseconds apart, or more on a loaded machine, and the loop may
** run in between (it then took the duplicate for a second Ctrl-C and ended
** the drain at once).
*/
#define STUCK_MS 250
#define SAME_MS 100
static volatile sig_atomic_t stop_unseen, stop_any, stop_signum;
static volatile pid_t stop_sender;
static struct timespec stop_first;     /* when the last request came */

/* Grounds on one loop may each stop on signals (libev allows one loop per
** signal, any number of watchers on it): the first to turn it on puts
** stop_handler over libev's, and only the last to turn it off puts
** libev's back, or the others would lose their watch for a stuck loop. */
static unsigned stopping_grounds;
static struct sigaction libev_sa[2];   /* SIGINT's, SIGTERM's, before stop_handler */

static double ms_since(const struct timespec *then, const struct timespec *now) {
  return (double)(now->tv_sec - then->tv_sec) * 1e3 +
         (double)(now->tv_nsec - then->tv_nsec) / 1e6;
}

static void (*volatile hard_exit_fn)(void);

void mk_ground_on_hard_exit(void (*fn)(void)) { hard_exit_fn = fn; }

static void stop_handler(int signum, siginfo_t *info, void *uc) {
  struct timespec now;
  double ms;
  (void)uc;
  clock_gettime(CLOCK_MONOTONIC, &now);    /* async-signal-safe */
  ms = stop_any ? ms_since(&stop_first, &now) : 1e9;
  if (ms < SAME_MS && signum == stop_signum && info->si_pid == stop_sender)
    return;                                /* the same one again */
  if (stop_unseen) {
    if (ms >= STUCK_MS) {
      void (*fn)(void) = hard_exit_fn;
      if (fn != NULL) fn();
      _exit(128 + signum);
    }
    return;
  }
  stop_first = now;
  stop_signum = signum;
  stop_sender = info->si_pid;
  stop_any = 1;
  stop_unseen = 1;
  ev_feed_signal(signum);
}

/* stop_handler over signum's handler, which goes to *old (NULL: nowhere). */
static void put_stop_handler(int signum, struct sigaction *old) {
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_sigaction = stop_handler;
  sigfillset(&sa.sa_mask);
  sa.sa_flags = SA_RESTART | SA_SIGINFO;
  sigaction(signum, &sa, old);
}

/* A process that takes SIGINT or SIGTERM itself (market -i's prompt, whose
** Ctrl-C stops the chunk running) gets the same guard: a chunk stuck where
** the budget cannot reach (a finaliser that loops, or no budget at all)
** was ended by SIGKILL only.  Put over the handler ev_signal_start gave;
** libev puts the default back when it stops watching the signal. */
static void stuck_guard(int signum) {
  if ((signum != SIGINT && signum != SIGTERM) || stopping_grounds > 0) return;
  put_stop_handler(signum, NULL);
}

/* The loop took the signal: a next one is a request of its own. */
static void signal_seen(int signum) {
  if (signum == SIGINT || signum == SIGTERM) stop_unseen = 0;
}

static void stopsig_cb(struct ev_loop *loop, ev_signal *s, int revents) {
  mk_ground *g = s->data;
  stop_unseen = 0;
  if (!g->stopping) { begin_stop(g, g->drain_ms); return; }
  if (g->ending) return;    /* an exit or the deadline came first: its status stands */
  g->exit_status = 128 + s->signum;
  halt(g, "stopped by a second signal");
}

static void signals_off(mk_ground *g) {
  int i;
  if (!g->onsignals) return;
  g->onsignals = 0;
  stopping_grounds--;
  for (i = 0; i < 2; i++) {
    if (stopping_grounds == 0)
      sigaction(g->stopsig[i].signum, &libev_sa[i], NULL);   /* libev's own again */
    ev_ref(g->loop);
    ev_signal_stop(g->loop, &g->stopsig[i]);
    release_signal(g->stopsig[i].signum);
  }
}

int mk_ground_stop_on_signals(mk_ground *g, double drain_ms) {
  static const int sigs[2] = { SIGINT, SIGTERM };
  int i;
  if (drain_ms < 0) { signals_off(g); return 0; }
  if (!isfinite(drain_ms)) return -1;
  if (!g->onsignals) {
    for (i = 0; i < 2; i++)
      if (sigowner[sigs[i]].n > 0 && sigowner[sigs[i]].loop != g->loop) return -1;
    for (i = 0; i < 2; i++) {
      claim_signal(g->loop, sigs[i]);
      ev_signal_init(&g->stopsig[i], stopsig_cb, sigs[i]);
      g->stopsig[i].data = g;
      ev_signal_start(g->loop, &g->stopsig[i]);
      ev_unref(g->loop);      /* a stop is nothing to wait for */
      if (stopping_grounds == 0)
        put_stop_handler(sigs[i], &libev_sa[i]);   /* over libev's: see stop_handler */
    }
    if (stopping_grounds++ == 0) stop_unseen = stop_any = 0;
    g->onsignals = 1;
  }
  g->drain_ms = drain_ms;
  return 0;
}

int mk_ground_exit_status(const mk_ground *g) { return g->exit_status; }
int mk_ground_exited(const mk_ground *g) { return g->exited; }

/*
** The handler that asks is running, and so may be the runs of the VMs
** above it: the teardown cannot run the VM from here.  So the exit is due,
** and the ground's run, once it has delivered what is queued, ends every
** process (mk_ground_deliver).
*/
int mk_ground_exit(mk_ground *g, int status) {
  if (g == NULL || status < 0 || status > 255) return -1;
  if (g->ending) return 0;
  g->ending = 1;
  g->exited = 1;
  g->exit_due = 1;
  g->exit_status = status;
  return 1;
}

/* mk_ground_turn's bound: it only has to end libev's wait. */
static void wake_cb(struct ev_loop *loop, ev_timer *t, int revents) {}

/* ---- timeouts ------------------------------------------------------------------ */

double mk_ground_clock(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

static int tbefore(const mk_timeout *a, const mk_timeout *b) {
  return a->at < b->at || (a->at == b->at && a->seq < b->seq);
}

static void tplace(mk_ground *g, size_t i, mk_timeout *t) {
  g->theap[i] = t;
  t->slot = i + 1;
}

/* Put t into the hole at i, moving it up or down the heap. */
static void tsift(mk_ground *g, size_t i, mk_timeout *t) {
  while (i > 0 && tbefore(t, g->theap[(i - 1) / 2])) {
    tplace(g, i, g->theap[(i - 1) / 2]);
    i = (i - 1) / 2;
  }
  for (;;) {
    size_t c = 2 * i + 1;
    if (c >= g->tn) break;
    if (c + 1 < g->tn && tbefore(g->theap[c + 1], g->theap[c])) c++;
    if (!tbefore(g->theap[c], t)) break;
    tplace(g, i, g->theap[c]);
    i = c;
  }
  tplace(g, i, t);
}

/* Set the timer for the heap's top, or stop it when the heap is empty.
** libev counts the delay from the time it read at the start of this loop
** iteration, so the timer may go off early: tfire then sets it again. */
static void tclock_reset(mk_ground *g) {
  ev_timer_stop(g->loop, &g->tclock);
  if (g->tn > 0) {
    double delay = (g->theap[0]->at - mk_ground_clock()) / 1e3;
    ev_timer_set(&g->tclock, delay > 0 ? delay : 0, 0);
    ev_timer_start(g->loop, &g->tclock);
  }
}

/* Take the timeout at index i out of the heap; its slot is 0 again. */
static void tremove(mk_ground *g, size_t i) {
  mk_timeout *t = g->theap[i], *last = g->theap[--g->tn];
  t->slot = 0;
  if (last != t) tsift(g, i, last);
  /* A burst of timeouts gone: give its memory back. */
  if (g->tcap > 64 && g->tn < g->tcap / 4) {
    mk_timeout **h = realloc(g->theap, g->tcap / 2 * sizeof *h);
    if (h != NULL) { g->theap = h; g->tcap /= 2; }
  }
}

void mk_timeout_start(mk_ground *g, mk_timeout *t) {
  size_t old = t->slot;
  /* Armed again: out of the heap, and still expected (mk_timeout_stop's
  ** mk_unexpect could end the process in between). */
  if (old != 0) tremove(g, old - 1);
  else mk_expect(t->proc);
  if (g->tn == g->tcap) {
    size_t n = g->tcap ? 2 * g->tcap : 16;
    mk_timeout **h = mk_pool_realloc(g->theap, n * sizeof *h);
    if (h == NULL) { fputs("market: out of memory\n", stderr); abort(); }
    g->theap = h;
    g->tcap = n;
  }
  t->seq = g->tseq++;
  g->tn++;
  tsift(g, g->tn - 1, t);
  if (t->slot == 1 || old == 1) tclock_reset(g);
}

void mk_timeout_stop(mk_ground *g, mk_timeout *t) {
  size_t slot = t->slot;
  if (slot == 0) return;
  tremove(g, slot - 1);
  if (slot == 1) tclock_reset(g);
  mk_unexpect(t->proc);
}

/* Wake the process of every timeout due.  mk_wake only queues events: no
** handler runs here to change the heap meanwhile. */
static void tfire(struct ev_loop *loop, ev_timer *w, int revents) {
  mk_ground *g = w->data;
  double now = mk_ground_clock();
  (void)revents;
  /* The loop's time, which market.now() reads, is that of the poll's
  ** return: read again after the monotonic clock, no process woken here
  ** sees less time gone than it asked to wait. */
  ev_now_update(loop);
  while (g->tn > 0 && g->theap[0]->at <= now) {
    mk_timeout *t = g->theap[0];
    tremove(g, 0);
    mk_wake(t->proc, t->cont);
  }
  tclock_reset(g);
}

/* ---- life ------------------------------------------------------------------------ */

/* The resident process: it only holds the ground's publishers, and wants
** none of the events its endpoints get (declines: never even queued). */
static void ground_handle(mk_proc *p, const mk_event *ev) {}
static int ground_declines(mk_proc *p, uint32_t tag, mk_event_type type) { return 1; }
static const mk_behavior ground_behavior = { "ground", ground_handle, NULL, NULL, ground_declines, 0, NULL, NULL };

static mk_rtype *rtype1(const char *label, const char *field) {
  return mk_rtype_get(label, strlen(label), 1, &field);
}

mk_ground *mk_ground_new(struct ev_loop *loop) {
  mk_ground *g = calloc(1, sizeof *g);
  mk_vm_hooks hooks;
  if (g == NULL) return NULL;
  if (loop == NULL) loop = ev_default_loop(0);
  if (loop == NULL) { free(g); return NULL; }
  g->loop = loop;
  g->tabsize = 16;
  g->tab = calloc(g->tabsize, sizeof *g->tab);
  g->vm = mk_vm_new();
  if (g->tab == NULL || g->vm == NULL) { free(g->tab); free(g); return NULL; }
  if (ground_types_users++ == 0) {
    mk_pool_reserve();       /* (memory short already: at a later turn) */
    mk_ground_readable = rtype1("market:readable", "fd");
    mk_ground_writable = rtype1("market:writable", "fd");
    mk_ground_alarm = rtype1("market:alarm", "msecs");
    mk_ground_monotonic_alarm = rtype1("market:monotonic_alarm", "msecs");
    mk_ground_signal = rtype1("market:signal", "signum");
    mk_ground_stopping = rtype1("market:stopping", "deadline_ms");
  }
  g->self = mk_vm_resident(g->vm, &ground_behavior, g, "ground");
  g->drain_ms = DEFAULT_DRAIN_MS;
  hooks.subscribed = subscribed;
  hooks.unsubscribed = unsubscribed;
  hooks.ud = g;
  mk_vm_set_hooks(g->vm, &hooks);
  ev_prepare_init(&g->prepare, prepare_cb);
  g->prepare.data = g;
  ev_prepare_start(loop, &g->prepare);
  ev_unref(loop);            /* the prepare alone is nothing to wait on */
  ev_idle_init(&g->busy, busy_cb);
  ev_init(&g->audit, audit_cb);
  g->audit.data = g;
  ev_init(&g->deadline, deadline_cb);
  g->deadline.data = g;
  ev_init(&g->wake, wake_cb);
  g->pollfd = -2;
  ev_init(&g->tclock, tfire);
  g->tclock.data = g;
  g->gnext = grounds;
  grounds = g;
  return g;
}

mk_vm *mk_ground_vm(mk_ground *g) { return g->vm; }
struct ev_loop *mk_ground_loop(mk_ground *g) { return g->loop; }
size_t mk_ground_watching(const mk_ground *g) { return g->active + (g->tn > 0); }
double mk_ground_now(mk_ground *g) { return ev_now(g->loop) * 1000.0; }

int mk_ground_run(mk_ground *g) {
  for (;;) {
    mk_ground_deliver(g);
    if (mk_ground_watching(g) == 0 && idle(g)) return 0;
    ev_run(g->loop, EVRUN_ONCE);
  }
}

int mk_ground_step(mk_ground *g) {
  mk_ground_deliver(g);
  if (mk_ground_watching(g) > 0) ev_run(g->loop, EVRUN_NOWAIT);
  mk_ground_deliver(g);
  return mk_ground_watching(g) > 0 || !idle(g);
}

/* ---- driven from another event loop -------------------------------------------- */

int mk_ground_turn(mk_ground *g, double timeout) {
  if (timeout != 0 && mk_ground_watching(g) > 0 && idle(g)) {
    /* Nothing queued and something watched: wait for it, or the bound. */
    if (timeout > 0) {
      ev_timer_set(&g->wake, timeout, 0);
      ev_timer_start(g->loop, &g->wake);
    }
    ev_run(g->loop, EVRUN_ONCE);
    ev_timer_stop(g->loop, &g->wake);
  } else {
    ev_run(g->loop, EVRUN_NOWAIT);
  }
  /* Deliver what came (the prepare watcher runs the VM), then let libev
  ** hand the watches that made to the kernel: a loop polling the backend
  ** descriptor sees only what libev has told the kernel about. */
  ev_run(g->loop, EVRUN_NOWAIT);
  return mk_ground_watching(g) > 0 || !idle(g);
}

/* The earlier of `t` (-1: none yet) and `left` seconds. */
static double earlier(double t, double left) {
  if (left < 0) left = 0;
  return t < 0 || left < t ? left : t;
}

/* The earlier of `t` and the time left on timer `w`. */
static double sooner(struct ev_loop *loop, double t, ev_timer *w) {
  return earlier(t, ev_timer_remaining(loop, w));
}

double mk_ground_timeout(mk_ground *g) {
  double t = -1;
  watch *w;
  if (!idle(g)) return 0;
  if (mk_ground_watching(g) == 0) return -1;   /* finished: nothing will come */
  ev_now_update(g->loop);               /* the other loop may have slept since */
  if ((w = g->alarms) != NULL) {
    do {
      t = w->kind == K_WALL ? earlier(t, ev_periodic_at(w->w.wall) - ev_now(g->loop))
                            : sooner(g->loop, t, &w->w.timer);
    } while ((w = w->rnext) != g->alarms);
  }
  if (g->tn > 0) t = sooner(g->loop, t, &g->tclock);
  if (g->ring != NULL) t = sooner(g->loop, t, &g->audit);
  if (g->timing) t = sooner(g->loop, t, &g->deadline);
  return t;
}

/*
** libev has no call that gives a loop's backend descriptor: ev_embed, its
** way of letting another loop poll this one, is the one place that reads
** it.  So embed the loop in a throwaway loop (select: it opens nothing)
** and read the descriptor its io watcher was given (ev_embed_start sets
** it; the field is marked private in ev.h, and spec/c/test_vm.c checks
** that it is an epoll descriptor that shows what the loop watches).  A
** backend that cannot be embedded (select, poll) has no descriptor, and
** ev_embed_start would abort on it: -1 without asking.  Kept once known.
*/
int mk_ground_pollfd(mk_ground *g) {
  struct ev_loop *tmp;
  ev_embed e;
  if (g->pollfd != -2) return g->pollfd;
  g->pollfd = -1;
  if (!(ev_backend(g->loop) & ev_embeddable_backends())) return -1;
  if ((tmp = ev_loop_new(EVBACKEND_SELECT | EVFLAG_NOENV)) == NULL) return -1;
  ev_embed_init(&e, NULL, g->loop);
  ev_embed_start(tmp, &e);
  g->pollfd = e.io.fd;
  ev_embed_stop(tmp, &e);
  ev_loop_destroy(tmp);
  return g->pollfd;
}

void mk_ground_free(mk_ground *g, mk_term *reason) {
  mk_ground **pp;
  size_t i;
  if (g == NULL) return;
  for (pp = &grounds; *pp != g; pp = &(*pp)->gnext) {}
  *pp = g->gnext;
  if (g->exit_due) halt(g, "exit");   /* asked for, but the loop never ran again */
  g->ending = 1;                 /* an exit from the teardown changes nothing */
  mk_vm_free(g->vm, reason);     /* unsubscribes everything it watched */
  g->self = NULL;
  for (i = 0; i < g->tabsize; i++) {
    watch *w = g->tab[i], *nx;
    g->tab[i] = NULL;           /* halt_watch looks twins up: none freed */
    for (; w; w = nx) { nx = w->next; halt_watch(g, w); watch_free(w); }
  }
  free(g->tab);
  /* The processes are gone, and each stopped its timeouts on the way
  ** (ground.h; lproc.c's destroy): the heap is empty. */
  free(g->theap);
  ev_timer_stop(g->loop, &g->tclock);
  if (g->timing) { ev_ref(g->loop); ev_timer_stop(g->loop, &g->deadline); }
  signals_off(g);
  ev_ref(g->loop);
  ev_prepare_stop(g->loop, &g->prepare);
  ev_idle_stop(g->loop, &g->busy);
  if (--ground_types_users == 0) {
    mk_pool_unreserve();
    mk_rtype_unref(mk_ground_readable);
    mk_rtype_unref(mk_ground_writable);
    mk_rtype_unref(mk_ground_alarm);
    mk_rtype_unref(mk_ground_signal);
    mk_rtype_unref(mk_ground_stopping);
    mk_rtype_unref(mk_ground_monotonic_alarm);
    mk_ground_readable = mk_ground_writable = mk_ground_alarm = mk_ground_signal = NULL;
    mk_ground_stopping = mk_ground_monotonic_alarm = NULL;
  }
  free(g);
}

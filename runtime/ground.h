/*
** ground.h: the ground VM, the root of a program, on a libev loop.
**
** The ground VM is the only place that touches the operating system.  It
** offers readiness as ground events, records that processes subscribe to
** (as participants) in the ground VM:
**
**   market:readable(fd)          fd is readable (level-triggered)
**   market:writable(fd)          fd is writable (level-triggered)
**   market:alarm(msecs)          the wall clock (ms since the epoch) reached msecs (once),
**                                also when it got there by being set forward
**   market:monotonic_alarm(msecs)  the monotonic clock (mk_ground_clock) reached
**                                msecs (once): setting the wall clock moves it not
**   market:signal(signum)        the signal arrived
**   market:stopping(deadline_ms) the program is stopping (below); watches nothing
**
** The drivers are written against these records, never against libev, so an
** event relay can carry them up from a nested VM.
**
** The ground is the publisher of its events.  Every subscription to an
** equal record shares one watch (one libev watcher, counted), and while the
** watch is on, the ground VM's resident process "ground" (pid 0, outside the
** pid table: vm.h's mk_vm_resident) publishes the record.  So a subscriber
** sees the ground's presence when the watch starts, receives the record as
** a message each time it fires, and sees the ground's absence, with a
** reason, when the watch fails.  Withdrawing the last subscription stops the
** watch and the ground withdraws (reason nil).  A fired alarm stays
** published until then.  A field that is not a number (the wildcard, say)
** watches nothing, and such a subscription only sees the watches others
** made.
**
** Validation, when a subscription would start a watch (hand-built records
** included, from Lua or mk_rec), before libev sees the value:
**
**   readable, writable  an integer 0..INT_MAX that is an open descriptor
**                       and not the epoll instance of a ground's loop
**                       (epoll cannot watch itself, and libev asserts);
**                       another loop's epoll instance is fine (cqueues'
**                       pollfd: docs/loops.md)
**   signal              an integer 1..NSIG-1 other than SIGKILL and SIGSTOP,
**                       the faults (SIGSEGV, SIGBUS, SIGFPE, SIGILL: the
**                       fault recurs as soon as a handler returns) and
**                       MK_BUDGET_SIGNAL (vm.h), not watched by this program
**                       on another libev loop (libev allows one per signal)
**   alarm, monotonic_alarm  a finite number
**
** An invalid record is published and withdrawn at once, so its subscriber
** sees presence, then absence with a reason such as
** "market:readable(-1): not an open file descriptor".
**
** A descriptor watch fails later when the descriptor goes:
**
**   "fd 7 was closed"     it was closed through market (mk_ground_fd_closed,
**                         which the drivers call before they close one)
**   "market:readable(7): the descriptor was closed"
**                         it was closed behind market's back: noticed before
**                         the next poll when the watch was started or
**                         changed since the last one, else by an audit that
**                         checks up to 128 watched descriptors every second
**   "market:readable(7): bad file descriptor"
**                         libev reported an error for it (EV_ERROR)
**
** A closed descriptor whose number is reused before the audit reaches it
** cannot be told from the new one.  A failed watch watches nothing; a later
** subscription to the same record tries it again (the number may name a new
** descriptor then), and every subscriber still there sees the outcome, so a
** subscriber that saw the ground's absence should withdraw.
**
** Delivery.  The ground VM runs what the watches queued after the
** callbacks of each poll (a prepare watcher), and, when one poll brings
** more ready descriptors than MK_GROUND_BATCH, after each MK_GROUND_BATCH
** of their wake-ups as well: what a wake-up sets off is handled at most
** that many wake-ups later, while its records are still in the cache,
** not after every descriptor of the poll (10,000 for a busy server).
** A wake-up's record is sent when its batch is delivered, in the order
** the wake-ups came (an alarm's or a signal's sends them first, so that
** none overtakes them); a watch stopped before then sends nothing.
** Before it sends such a batch in a VM of MK_GROUND_PREFETCH_PROCS
** processes or more, the ground prefetches what the sends will read (the
** watches' match slots, their topics, the receivers' endpoints and
** processes), and before it runs the batch, the VM prefetches what the
** batch's processes will read (vm.h, mk_vm_prefetch).
**
** The VM runs for MK_GROUND_SLICE_MS at a time at most.  A process that
** makes an event for every one it gets (a message to itself) keeps the VM
** from ever running out of events; after a slice the ground polls without
** waiting, so timers, descriptors and signals still come, in the queue's
** order behind what is there, and the VM goes on after them.  A nested VM
** busy so is one process among its parent's (vm.h, mk_vm_run_for).
**
** When the last watch of a signal ends, the signal's disposition from
** before the first one comes back (libev would leave SIG_DFL: a program
** that watched SIGPIPE once would die of the next one).
**
** Stopping (DESIGN §8).  mk_ground_stop begins a stop: from then on the
** ground publishes market:stopping(deadline_ms) (the wall-clock ms when the
** drain ends) and never withdraws it.  Subscribing to it watches nothing
** and never keeps the program alive.  Processes that take new work (the tcp
** driver's listeners) stop taking it when they see the ground's presence;
** the others finish what they do.  When the drain ends, every process still
** there is killed with the reason "stopped: the drain time (5000 ms) ran
** out", which closes what they hold, and the loop has nothing left.  A
** program whose processes are done earlier ends earlier: the drain's timer
** does not keep the loop alive.
*/
#ifndef MK_GROUND_H
#define MK_GROUND_H

#include "vm.h"

struct ev_loop;
typedef struct mk_ground mk_ground;

/* The most descriptors' wake-ups queued before the VM runs them ("Delivery"
** above).  64 connections' records, a few KiB each, fit a core's L2 cache
** with room to spare; fewer would run the VM more often for nothing. */
#define MK_GROUND_BATCH 64

/* The longest the VM runs before the ground polls again ("Delivery"
** above): how late a timer, a descriptor or a signal can be while the VM
** is busy without end.  A poll that waits for nothing costs a microsecond
** or two, so a busy VM loses a thousandth of its time to them. */
#define MK_GROUND_SLICE_MS 10

/* The fewest processes in the ground VM for which a batch's records are
** prefetched before it runs ("Delivery" above).  A round trip of a tcp
** connection reads some 17 lines of its two processes' records: past a
** few hundred connections they no longer fit a core's L2 cache and come
** from memory at every round trip, and the prefetch saves more than it
** costs; below, they are in the cache, and its 500 instructions a round
** trip would be all it did (docs/performance.md, "Round 14"). */
#define MK_GROUND_PREFETCH_PROCS 512

/* The record types of the ground events (borrowed, live as long as any
** ground exists, created by mk_ground_new). */
extern mk_rtype *mk_ground_readable, *mk_ground_writable, *mk_ground_alarm,
    *mk_ground_signal, *mk_ground_stopping, *mk_ground_monotonic_alarm;

/*
** A ground VM on `loop`, or on libev's default loop when loop is NULL.  The
** ground does not own the loop.  Returns NULL on allocation failure.
*/
mk_ground *mk_ground_new(struct ev_loop *loop);
mk_vm *mk_ground_vm(mk_ground *g);
struct ev_loop *mk_ground_loop(mk_ground *g);
/*
** Run until the ground VM has nothing queued and nothing to wait on (no
** ground event is watched).  Returns 0.  When the host runs the loop
** itself instead, the ground's prepare watcher runs the VM before each poll.
*/
int mk_ground_run(mk_ground *g);
/* One loop iteration that does not block; returns nonzero while there is
** something left to do. */
int mk_ground_step(mk_ground *g);
/*
** Driven from another event loop (luv, cqueues, glib: docs/loops.md), which
** polls mk_ground_pollfd for reading with mk_ground_timeout as its bound and
** calls mk_ground_turn(g, 0) when either says so.
**
** mk_ground_turn: one turn.  Wait up to `timeout` seconds for the loop
** (0: not at all; negative: until something happens; no wait either when
** events are queued or nothing is watched), deliver what came, and leave
** every watch handed to the kernel, so that the backend descriptor shows
** it.  Returns nonzero while there is something left to do, as
** mk_ground_step.
** mk_ground_timeout: seconds until the ground must turn again even if
** mk_ground_pollfd stays quiet: 0 when events are queued, the time left on
** its nearest timer (alarms, timeouts, the audit of watched descriptors,
** the end of a drain), or -1 when nothing is timed.  Costs one pass over the running
** alarms (the drivers hold one or two: timer.lua keeps one for all its
** timers).
** mk_ground_pollfd: libev's backend descriptor (epoll), readable while any
** watched descriptor or signal is ready; -1 when the loop's backend has
** none (select or poll, chosen through LIBEV_FLAGS, say).
*/
int mk_ground_turn(mk_ground *g, double timeout);
double mk_ground_timeout(mk_ground *g);
int mk_ground_pollfd(mk_ground *g);
/* Watches currently active (for tests and for deciding to exit), the
** timeouts' clock counting as one while any timeout is armed. */
size_t mk_ground_watching(const mk_ground *g);
/* Current wall-clock time in ms as the loop sees it. */
double mk_ground_now(mk_ground *g);
/* Kill every process (they see each other's absence with `reason`, borrowed),
** stop every watcher and free the ground.  The loop is left alone. */
void mk_ground_free(mk_ground *g, mk_term *reason);

/*
** Begin a stop (above) with a drain of drain_ms milliseconds; negative or
** not finite: the drain set by mk_ground_stop_on_signals (5000 ms until
** set).  0 ends the drain at the next loop iteration, so processes still
** see market:stopping first.  A stop under way is not changed by a later
** call.  Callable from a handler: nothing is killed before the loop runs.
*/
void mk_ground_stop(mk_ground *g, double drain_ms);
/*
** Make SIGINT and SIGTERM begin a stop with a drain of drain_ms (finite, 0
** or more), and a second one during the stop end it at once: every process
** is killed with the reason "stopped by a second signal" and
** mk_ground_exit_status becomes 128 + signum.  The watchers do not keep
** the loop alive, and a process's own market:signal subscription to either
** signal still gets its message.  Called again, it changes the drain;
** drain_ms negative turns it off.  Returns 0, or -1 when drain_ms is not a
** number or this program watches SIGINT or SIGTERM on another libev loop.
*/
int mk_ground_stop_on_signals(mk_ground *g, double drain_ms);
/*
** fn (NULL: none) runs just before a second signal ends a program whose
** loop is stuck (mk_ground_stop_on_signals): that end is _exit(2), which
** skips atexit handlers, so what one must undo for the processes that
** share the program's open files (the stdio driver's O_NONBLOCK, lsys.c)
** is done here too.  It runs in a signal handler: async-signal-safe calls
** only.  One for the program; the last set wins.
*/
void mk_ground_on_hard_exit(void (*fn)(void));
/*
** End the program with `status` (0..255), from any handler in any VM of this
** ground, or from outside (market.exit; mk_host_exit).  The exit is due:
** the runs in progress go on until nothing is queued, as after any action
** (for a second at most: a process busy for ever, "Delivery" above, does
** not hold the exit off), and then, before the loop polls again, the
** ground's run kills every
** process, oldest first, with the reason "exit", as a stop's deadline does:
** their peers see it and the drivers close what they hold.  mk_ground_run
** then returns, and mk_ground_exit_status is `status`.  The first ending
** wins: after an exit, the drain's deadline or a second signal, and during
** mk_ground_free, it changes nothing.  Returns 1, 0 when an ending came
** first, -1 for a status outside 0..255.
*/
int mk_ground_exit(mk_ground *g, int status);
/* 0; the exit's status once mk_ground_exit ended the program; 128 + signum
** once a second signal ended a stop. */
int mk_ground_exit_status(const mk_ground *g);
/* 1 when mk_ground_exit ended the program (its status may be 0), else 0. */
int mk_ground_exited(const mk_ground *g);
/*
** Deliver the ground VM's queued events for a slice (mk_vm_run_for,
** MK_GROUND_SLICE_MS), then carry out an exit asked for meanwhile.  The
** ground's run, step and prepare watcher run the VM so; a host that polls
** the loop by itself calls this instead of mk_vm_run on the ground VM, and
** again while mk_vm_idle says events are left.
*/
void mk_ground_deliver(mk_ground *g);

/*
** The settle hook: fn(ud) runs in mk_ground_deliver after each slice of
** deliveries, before the exit check and before the poll.  The slice's
** messages to the drivers have been handled by then, their writes made,
** so work put off to this point delays no reply: lua/lproc.c makes the
** Lua state's minor collections there (docs/performance.md, "Latency at
** one connection").  One hook per ground; fn NULL removes it.  ud is
** borrowed: the caller removes the hook before ud goes.
*/
void mk_ground_on_settle(mk_ground *g, void (*fn)(void *ud), void *ud);

/*
** Timeouts: the ground's clock for processes at any depth of nested VMs,
** with no timer driver and no event relay (lua/lproc.c's timed waits,
** market.wait_for(pred, ms)).  An mk_timeout is its owner's record; while
** it is armed the ground keeps a pointer to it in a binary heap ordered by
** deadline (equal deadlines in the order they were armed), and one libev
** timer, set for the earliest, serves them all: a timeout costs its record
** and a slot of the heap.
**
** mk_timeout_start arms t (again, if it is armed: the deadline may have
** changed) for t->at, in mk_ground_clock() milliseconds, with t->proc and
** t->cont set by the caller.  The process does not end implicitly while t is armed
** (mk_expect).  When the clock reaches t->at, t is disarmed and the ground
** wakes the process with mk_wake(t->proc, t->cont) (vm.h): the resume
** reaches it through every nested VM above it.  mk_timeout_stop disarms t
** if it is armed (mk_unexpect).  The owner must stop t before the process
** is freed (its behaviour's destroy) and before t is freed.  While any
** timeout is armed, the ground counts one watch more (mk_ground_watching)
** and mk_ground_run goes on.
*/
typedef struct mk_timeout {
  double at;                /* the deadline, in mk_ground_clock() ms */
  mk_proc *proc;            /* the process to wake: borrowed */
  void *cont;               /* its token (mk_wake) */
  unsigned long long seq;   /* the order in which timeouts were armed */
  size_t slot;              /* 1 + its index in the heap while armed, else 0 */
} mk_timeout;

void mk_timeout_start(mk_ground *g, mk_timeout *t);
void mk_timeout_stop(mk_ground *g, mk_timeout *t);
/* Milliseconds on the monotonic clock that timeouts use (CLOCK_MONOTONIC:
** changes of the wall clock do not move it). */
double mk_ground_clock(void);

/*
** Descriptor fd is about to be closed: every ground of the program that
** watches it stops its libev watchers first (so that libev never meets a
** closed descriptor) and withdraws with the reason "fd N was closed".
** Call it before close(2) on any descriptor a ground event may name.
*/
void mk_ground_fd_closed(int fd);

#endif

/*
** vm.h: virtual machines, processes, endpoints and actions (DESIGN §1).
**
** A VM owns its processes; a process owns its endpoints; nothing else holds
** a pointer to a process for longer than one event.  Processes are
** "behaviours": a vtable (mk_behavior) plus a data pointer.  The Lua binding
** is one behaviour, nested VMs another, native C processes a third.
**
** Events.  Every event for a process goes through the VM's FIFO queue, so a
** process sees events in the order the VM produced them.  mk_vm_run() takes
** one event at a time and calls the behaviour's `handle`.
**
** Actions.  A behaviour performs actions with the mk_* calls below while it
** handles an event.  They are applied at once, in the order made: that is
** the same as Marketplace's "apply the transition's actions in order after
** the handler returns", because no other process of the VM runs between
** them.  After a process quits (itself), further actions are dropped.
** Actions "at meta level" are collected in the VM's outbox and performed by
** the parent VM when the nested VM's turn ends (mk_meta_*).
*/
#ifndef MK_VM_H
#define MK_VM_H

#include <signal.h>
#include <stdint.h>
#include "term.h"
#include "route.h"

typedef struct mk_vm mk_vm;
typedef struct mk_proc mk_proc;
typedef struct mk_endpoint mk_endpoint;
typedef struct mk_behavior mk_behavior;
typedef struct mk_action mk_action;
typedef uint64_t mk_pid;

typedef enum mk_orientation { MK_PUBLISHER = 0, MK_SUBSCRIBER = 1 } mk_orientation;
typedef enum mk_interest { MK_PARTICIPANT = 0, MK_OBSERVER = 1, MK_EVERYTHING = 2 } mk_interest;

/* A role.  `topic` is owned by whoever holds the role. */
typedef struct mk_role {
  mk_orientation orientation;
  mk_interest interest;
  mk_term *topic;
} mk_role;

typedef enum mk_event_type {
  MK_EV_BOOT,        /* first event of every process */
  MK_EV_PRESENCE,    /* endpoint, role = the peer's role refined to the intersection */
  MK_EV_ABSENCE,     /* endpoint, role as at presence, reason (NULL: normal) */
  MK_EV_MESSAGE,     /* endpoint, message, role = the receiving endpoint's role */
  MK_EV_SPAWNED,     /* cont, pid: a spawn continuation is due */
  MK_EV_RESUME,      /* cont: a yield continuation is due */
  MK_EV_META,        /* VM-internal: an event for a child of a nested VM */
  MK_EV_DELETED      /* endpoint: its explicit deletion's own absences are all
                     ** delivered (MK_BF_TELL_DELETED; none may have come) */
} mk_event_type;

/* An event as handed to a behaviour.  Everything in it is borrowed for the
** duration of the call; mk_ref what you keep. */
typedef struct mk_event {
  mk_event_type type;
  const char *endpoint;  /* receiving endpoint's name (presence/absence/message) */
  int meta;              /* 1: the endpoint was added at meta level */
  mk_role role;
  mk_term *message;
  mk_term *reason;
  mk_pid pid;            /* MK_EV_SPAWNED: the new process */
  void *cont;            /* MK_EV_SPAWNED, MK_EV_RESUME: the behaviour's token */
  uint32_t tag;          /* the receiving endpoint's tag (mk_tag_endpoint), or 0 */
  int deleted;           /* MK_EV_ABSENCE: 1 when the receiving endpoint is the
                         ** one deleted, told of a peer (MK_BF_TELL_DELETED) */
} mk_event;

/*
** A process behaviour.  `handle` is called for each event; `release_cont`
** frees a continuation token that will never be delivered (its process died
** first); `destroy` frees the behaviour's data, exactly once, when the
** process is gone.  `release_cont` and `destroy` may be NULL.  `name` is the
** behaviour kind shown by --trace.
**
** `handle` reports a crash with mk_fail(p, reason): the process then quits
** with that reason (absence events carry it to peers).
**
** `declines` (may be NULL) lets a behaviour refuse a presence, absence or
** message event for one of its endpoints before it is queued, saving the
** queueing and the delivery of an event it would ignore (the Lua binding:
** an observer's messages).  It is asked only when the event would be the
** process's next (nothing of it is queued, it is not running) and no
** trace is on, so its answer may rest on the process's present state;
** `tag` is the endpoint's (mk_tag_endpoint).  Events queued for the
** process while it ran are asked about when that activation ends, if it
** began with nothing else of its queued: in order, each then the
** process's next, and those it declines are dropped from the queue, up
** to the first it does not decline; as nothing runs meanwhile, the answer
** for one tag and type is asked once and stands for the run.
**
** `flags`: MK_BF_TELL_DELETED asks for Marketplace's delete-endpoint.  When
** the process deletes an endpoint (mk_delete_endpoint, at any level), the
** endpoint itself then gets one MK_EV_ABSENCE per peer it could see, with
** ev->deleted = 1 and the reason given, and last one MK_EV_DELETED; its
** peers get their absences either way; until its MK_EV_DELETED comes, an
** endpoint deleted at meta level counts as held (implicit exit), so a
** process whose last endpoint it was hears them before it ends.  Without
** the flag (the drivers) a deleted endpoint hears nothing more.  A process
** that dies is told nothing: it runs no more handlers.
*/
struct mk_behavior {
  const char *kind;
  void (*handle)(mk_proc *p, const mk_event *ev);
  void (*release_cont)(mk_proc *p, void *cont);
  void (*destroy)(mk_proc *p);
  int (*declines)(mk_proc *p, uint32_t tag, mk_event_type type);
  unsigned flags;        /* MK_BF_* */
  /* May be NULL (and left out of an initializer): the number of events the
  ** process handled so far, for snapshots (mk_vm_snapshot). */
  uint64_t (*activations)(const mk_proc *p);
  /* May be NULL (and left out of an initializer): a hint, which changes
  ** nothing.  mk_vm_prefetch calls it, in stages, for each process with
  ** an event in a batch about to run; it issues __builtin_prefetch for
  ** the records p will read when it handles that event.  At stage k it
  ** may read only what stage k - 1 prefetched (or p's own first line and
  ** data pointer), and only records certain to be alive. */
  void (*prefetch)(const mk_proc *p, int stage);
};

#define MK_BF_TELL_DELETED 1u

/*
** Traces (market --trace; docs/inspect.md, "Traces").  A VM that traces
** calls its trace function with one line (no newline, borrowed for the
** call) per event it delivers and per action its processes perform: the
** time (UTC, to the millisecond), the VM path, the pid and name of the
** process, the kind of line and what it concerns, e.g.
**   2026-12-01T08:00:00.123Z ground #3 echo: message in subscriber/participant _ "hi"
** or, with `json`, one JSON object.  A filter (mk_trace_opts) picks the
** lines; one it drops is neither timed nor formatted.
*/
typedef void (*mk_trace_fn)(void *ud, const char *line);

/* The kinds of lines, as their text names them (mk_trace_kind_name):
** actions spawn, quit, add, delete, send, feedback, at_meta_level; events
** presence, absence, message, spawned, resume, meta (a nested VM's, for one
** of its processes), deleted. */
enum {
  MK_TK_SPAWN, MK_TK_QUIT, MK_TK_ADD, MK_TK_DELETE, MK_TK_SEND, MK_TK_FEEDBACK,
  MK_TK_AT_META_LEVEL, MK_TK_PRESENCE, MK_TK_ABSENCE, MK_TK_MESSAGE,
  MK_TK_SPAWNED, MK_TK_RESUME, MK_TK_META, MK_TK_DELETED, MK_TK_COUNT
};
/* The kind named `name`, or -1; and the name of a kind (NULL if none). */
int mk_trace_kind(const char *name);
const char *mk_trace_kind_name(int kind);

/*
** Which lines a trace shows, and how.  A line is shown when it passes
** every filter that is set; a filter with several values passes what
** matches any of them.  A count of 0 sets no filter: a filter given an
** empty list of values, which nothing matches, is `none`.  Everything
** here is borrowed by the calls that take it (they copy it).
*/
typedef struct mk_trace_opts {
  const mk_pid *pids;          /* the process's pid (in its own VM) is one */
  size_t npids;                /* of these; 0: any pid */
  const char *const *names;    /* its debug name matches one of these globs */
  size_t nnames;               /* (fnmatch(3)); a nameless one matches none */
  const char *const *vms;      /* its VM path ("ground/2") matches one of */
  size_t nvms;                 /* these globs */
  unsigned kinds;              /* 1u << MK_TK_*, or'ed; 0: every kind */
  mk_term *topic;              /* NULL, or a pattern that must unify with the
                               ** line's message (send, feedback, message)
                               ** or else its role's topic; lines with
                               ** neither never match it */
  int none;                    /* nonzero: no line passes (the filters
                               ** given with it are kept all the same) */
  int json;                    /* nonzero: one JSON object a line */
} mk_trace_opts;

/* VM-level hooks, used by the ground VM to learn about subscriptions to
** ground events.  Called after a subscriber endpoint with `topic` is added
** to / removed from this VM; `ep` is the new endpoint, valid for the call
** (for mk_vm_tell). */
typedef struct mk_vm_hooks {
  void (*subscribed)(mk_vm *vm, const mk_term *topic, mk_endpoint *ep, void *ud);
  void (*unsubscribed)(mk_vm *vm, const mk_term *topic, void *ud);
  void *ud;
} mk_vm_hooks;

/* ---- VMs ---------------------------------------------------------------- */

/* A new, empty VM.  `parent` is NULL for a ground VM's core.  Owned by the
** caller (mk_vm_free), or by the nested-VM process that made it. */
mk_vm *mk_vm_new(void);
/*
** Kills every process (each sees the others' absence with `reason`, which
** is borrowed; NULL means normal), drains the events that produces without
** delivering further I/O, and frees the VM.
*/
void mk_vm_free(mk_vm *vm, mk_term *reason);
void mk_vm_set_hooks(mk_vm *vm, const mk_vm_hooks *hooks);
/* Trace vm and every VM nested in it (now and later) to fn (NULL: stop),
** keeping the filter set last.  mk_vm_set_trace_opts sets the filter and
** format (NULL: every line, as text), keeping the function; it returns 0,
** -1 for malformed options (an array NULL with a count, a NULL glob,
** unknown kind bits) or -2 when out of memory, and the trace is then unchanged. */
void mk_vm_set_trace(mk_vm *vm, mk_trace_fn fn, void *ud);
int mk_vm_set_trace_opts(mk_vm *vm, const mk_trace_opts *opts);
/* The trace function of vm (NULL: none) and, when ud is not NULL, its ud. */
mk_trace_fn mk_vm_trace_fn(const mk_vm *vm, void **ud);
/*
** Rings (docs/inspect.md, "Rings"): the last `size` (>= 1) trace lines of
** the whole program (vm's root and every VM in it) that pass `opts`'s
** filter, as JSON lines whatever opts->json says, kept while the ring is
** open, beside the trace and any other ring.  mk_vm_ring_open returns the
** ring, owned by the caller until mk_ring_close, or NULL: malformed
** options (as mk_vm_set_trace_opts) or size 0 (errno EINVAL), out of
** memory (ENOMEM).  mk_ring_read calls fn(ud, line) for each line kept
** since the last read, oldest first, lets go of them, and returns how
** many lines were pushed out by newer ones meanwhile.  A ring outlives
** its VM: it then gets no more lines.  Cost: the filter of each ring for
** each line the VMs make (none is made while no trace or ring is on).
*/
typedef struct mk_ring mk_ring;
mk_ring *mk_vm_ring_open(mk_vm *vm, const mk_trace_opts *opts, size_t size);
size_t mk_ring_read(mk_ring *r, mk_trace_fn fn, void *ud);
void mk_ring_close(mk_ring *r);      /* NULL accepted */
/*
** Crash hook: told when a process of the VM fails (mk_fail, mk_failf:
** an error in its handler, a strict error, a budget exceeded), before its
** endpoints are withdrawn, so that mk_proc_each_endpoint still lists them.
** `reason` is borrowed for the call.  It is not told of quits and kills
** (mk_quit, mk_vm_kill), which are no failures.  Nested VMs take their
** parent's hook when they boot, as they take its trace.  The hook may not
** free the VM; what it does to p (a kill) takes effect first.
*/
typedef void (*mk_crash_hook)(void *ud, mk_proc *p, mk_term *reason);
void mk_vm_set_crash_hook(mk_vm *vm, mk_crash_hook fn, void *ud);
/* Deliver queued events until the queue is empty.  Returns the number of
** events delivered.  A process that makes an event for every one it gets
** (a message to itself) keeps the queue from ever emptying: this then
** never returns. */
size_t mk_vm_run(mk_vm *vm);
/*
** Deliver queued events until the queue is empty or about `ms`
** milliseconds have passed (the clock is read every few events, and an
** event is not cut short), at least one if any is queued.  Returns the
** number delivered; mk_vm_idle says whether any are left.  A nested VM
** busy so runs for a share of the slice and then waits its turn among its
** parent's processes (nested.c).  The ground runs its VM so (ground.h,
** MK_GROUND_SLICE_MS).
*/
size_t mk_vm_run_for(mk_vm *vm, double ms);
/* Deliver at most one event.  Returns 1 if one was delivered. */
int mk_vm_step(mk_vm *vm);
int mk_vm_idle(const mk_vm *vm);            /* queue empty */
size_t mk_vm_nprocs(const mk_vm *vm);
mk_vm *mk_vm_parent(const mk_vm *vm);
mk_proc *mk_vm_self(const mk_vm *vm);       /* the nested-VM process in the parent, or NULL */
/*
** The activation budget of the VM's Lua processes: the CPU time (ms) one
** activation (the run of a handler, a boot, a continuation, or of
** straight-line code between two waits) may take before its process fails
** with the reason "activation budget exceeded" (docs/limits.md).  0 means
** none.  A VM whose budget was never set (or was set below 0) has its
** parent's; the ground VM then has MK_BUDGET_DEFAULT_MS.  Native processes
** are not preempted: a C handler is trusted to return.
*/
#define MK_BUDGET_DEFAULT_MS 1000.0
/* The signal the budget's timer uses (lua/lproc.c, docs/limits.md): the
** ground refuses to watch it. */
#define MK_BUDGET_SIGNAL (SIGRTMAX - 1)
void mk_vm_set_budget(mk_vm *vm, double ms);
double mk_vm_budget(const mk_vm *vm);
/* VM path for traces: "ground", "ground/3", ... (borrowed, stable). */
const char *mk_vm_path(const mk_vm *vm);
/* User data slot, e.g. for the Lua binding's state.  Inherited by nested VMs. */
void *mk_vm_userdata(const mk_vm *vm);
void mk_vm_set_userdata(mk_vm *vm, void *ud);
/* The VM's outbox: actions its processes made at meta level, in order.
** mk_vm_take_outbox detaches and returns the list (caller owns it). */
mk_action *mk_vm_take_outbox(mk_vm *vm);

/*
** Spawn a process from outside any process (the boot process of a ground
** VM, a host's native process).  Returns its pid, or 0 on allocation
** failure or while mk_vm_kill_all runs (destroy is then called on `data`'s
** behalf).
*/
mk_pid mk_vm_spawn(mk_vm *vm, const mk_behavior *b, void *data, const char *name);
/*
** A resident process: one that belongs to whoever embeds the VM (the
** ground VM's own endpoints, ground.h), not to the program.  It has pid 0
** and no boot event, is not in the pid table (mk_vm_proc, mk_vm_kill and
** mk_vm_nprocs do not see it, and no pid a program sees changes), never
** exits implicitly, and survives mk_vm_kill_all; mk_vm_free ends it last.
** It acts with the ordinary calls (mk_add_endpoint, mk_send, ...) from
** outside any handler.  At most one per VM: NULL if the VM has one.  The
** VM owns it; `data` is the behaviour's, freed through `destroy`.
*/
mk_proc *mk_vm_resident(mk_vm *vm, const mk_behavior *b, void *data, const char *name);
/*
** Kill every process of the pid table, one at a time, oldest first, running
** the VM after each so that the survivors see it go with `reason`
** (borrowed; NULL normal).  Meanwhile no spawn is taken (mk_spawn and
** mk_vm_spawn return 0), so it ends even when processes replace each other
** as they go.  The resident process stays.  Not from inside a handler: it
** runs the VM.  mk_vm_free and the ground's stop use it.
*/
void mk_vm_kill_all(mk_vm *vm, mk_term *reason);
/* Send a message into the VM from outside any process (NULL: nothing). */
void mk_vm_send(mk_vm *vm, mk_term *body, int feedback);   /* body borrowed */
/* The same, with the sender's match slot (route.h), which it keeps for
** this VM and this direction (send or feedback) only. */
void mk_vm_send_slot(mk_vm *vm, mk_term *body, int feedback, mk_match_slot *slot);
/*
** Prefetch for the first `max` events queued: stage 0 of every one's
** process (its behaviour's `prefetch`), then stage 1 of every one, up to
** MK_PREFETCH_STAGES - 1, so that the memory those events will read is
** fetched together, each stage's misses overlapping, and not one miss
** after another as each event's handler follows its pointers.  For a
** batch of events about to run whose records are not in the cache: the
** ground calls it before it runs a batch of descriptors' wake-ups
** (ground.h, "Delivery"), at thousands of connections, where each
** connection's records come from memory at each of its round trips
** (issue 10).  Changes nothing.
*/
#define MK_PREFETCH_STAGES 6
void mk_vm_prefetch(mk_vm *vm, size_t max);
/* Queue `body` (borrowed) as a message for endpoint `ep` alone, as if a
** send had matched it and nothing else: for a hook that must answer one
** new subscriber (the ground, an alarm that went off before it came). */
void mk_vm_tell(mk_vm *vm, mk_endpoint *ep, mk_term *body);
/* Kill a process from outside; reason borrowed (NULL normal).  -1 if no such pid. */
int mk_vm_kill(mk_vm *vm, mk_pid pid, mk_term *reason);
mk_proc *mk_vm_proc(const mk_vm *vm, mk_pid pid);

/* ---- processes ---------------------------------------------------------- */

mk_pid mk_proc_pid(const mk_proc *p);
const char *mk_proc_name(const mk_proc *p);
void mk_proc_set_name(mk_proc *p, const char *name);
mk_vm *mk_proc_vm(const mk_proc *p);
void *mk_proc_data(const mk_proc *p);
int mk_proc_alive(const mk_proc *p);
size_t mk_proc_nendpoints(const mk_proc *p);   /* its own: not its lifeline */
/*
** Call fn for each endpoint p holds: those of its own VM (level 0) in the
** order they were added, then those it holds `level` VMs up (added with
** at_meta_level and already performed up there).  name, role and its topic
** are borrowed for the call.  For reports (crash reports, inspection),
** never per event: it walks lists and looks names up.
*/
typedef void (*mk_endpoint_fn)(void *ud, const char *name, int level, const mk_role *role);
void mk_proc_each_endpoint(const mk_proc *p, mk_endpoint_fn fn, void *ud);
/*
** Consecutive events.  While p handles an event, the event queued next in
** its VM is often p's too (a burst of messages to one subscriber, the
** absences an observer hears as what it watches is killed), and p may
** handle it in the same call, with no step of the VM between: the order
** of events is the queue's either way.  mk_proc_next(p, ev) shows that
** event as *ev (what handle would get) when it is at the head of the queue
** and is a message, presence or absence for a live endpoint of p's own
** VM, but a deleted endpoint's own absence: 1, else 0.  *ev borrows from
** the queue until mk_proc_take(p) takes the event: it is then traced as
** a delivery is and what it holds is released.  For p's handle only.
*/
int mk_proc_next(mk_proc *p, mk_event *ev);
void mk_proc_take(mk_proc *p);
/* Crash: quit with `reason` (borrowed), after telling the VM's crash hook. */
void mk_fail(mk_proc *p, mk_term *reason);
void mk_failf(mk_proc *p, const char *fmt, ...);

/* ---- actions, performed by the process `p` while it handles an event ---- */

/* Spawn; `cont` (may be NULL) is delivered back to p as MK_EV_SPAWNED with
** the new pid.  `data` is owned by the new process from here on.  Returns
** the pid, or 0 when p is dead or its VM is being emptied by
** mk_vm_kill_all (destroy is called on data). */
mk_pid mk_spawn(mk_proc *p, const mk_behavior *b, void *data, const char *name, void *cont);
/* Quit p itself (pid 0 or p's pid) or another process of the VM.  reason
** borrowed, NULL for a normal quit.  -1 when the pid does not exist. */
int mk_quit(mk_proc *p, mk_pid pid, mk_term *reason);
/* Add an endpoint (role.topic borrowed).  Re-adding an existing name with an
** equal role returns 1 and changes nothing (the behaviour replaces its
** handlers); with a different role the process fails and -1 is returned,
** as it is for a NULL name or topic, or an orientation or interest out of
** range. */
int mk_add_endpoint(mk_proc *p, const char *name, int meta, mk_role role);
/* mk_add_endpoint at level 0 and mk_tag_endpoint in one: the endpoint
** (new, or re-added with an equal role) has `tag` before it meets its
** peers.  `quiet`: the behaviour's word that p declines its own presence
** events on this endpoint (as `declines` would of an idle p) and runs no
** code of its own before its next event (its activation applies the last
** action of what a handler returned).  Those events would then all be
** dropped unseen (decline_queued, or at delivery), so they are not queued
** while nothing else of p's is: a publisher meeting N subscribers queued
** N of them only to drop them (issue 10).  Not while tracing. */
int mk_add_endpoint_tagged(mk_proc *p, const char *name, mk_role role, uint32_t tag,
                           int quiet);
/* Set the tag of p's endpoint `name` (level 0), handed back in every
** event for it: a behaviour keeps per-endpoint facts there (the Lua
** binding, which handlers exist).  0 until set; -1 if there is no such
** endpoint. */
int mk_tag_endpoint(mk_proc *p, const char *name, uint32_t tag);
/* Delete an endpoint; reason borrowed.  -1 if there is no such endpoint.
** With MK_BF_TELL_DELETED the endpoint hears its own absences (above). */
int mk_delete_endpoint(mk_proc *p, const char *name, int meta, mk_term *reason);
/* body borrowed.  NULL (a builder failed: a term deeper than the depth
** limit, or out of memory) makes p fail with a reason saying so. */
void mk_send(mk_proc *p, mk_term *body);
/* mk_send with p's match slot (route.h) for the queries it sends again
** and again (a connection's inbound flow): kept by p, for p's VM only. */
void mk_send_slot(mk_proc *p, mk_term *body, mk_match_slot *slot);
/* For a behaviour's prefetch: stage `stage` of a message p will send
** through `slot`: the endpoints the slot's current answer names at stage
** 0, their processes at 1, and from 2 on their behaviours' own stages,
** two behind.  Nothing when the slot's answer is no longer current. */
void mk_prefetch_receivers(const mk_proc *p, const mk_match_slot *slot, int stage);
/* The same for a message sent into vm from outside (mk_vm_send_slot). */
void mk_vm_prefetch_receivers(const mk_vm *vm, const mk_match_slot *slot, int stage);
void mk_feedback(mk_proc *p, mk_term *body);
/* Queue `cont` behind everything now pending; delivered as MK_EV_RESUME. */
void mk_yield(mk_proc *p, void *cont);
/* Perform `a` (a list, owned from here on) in the parent VM, on behalf of p. */
int mk_at_meta_level(mk_proc *p, mk_action *a);

/*
** Wake-ups from outside the VM (ground.h's timeouts).  Whatever will wake
** p later, from outside its handlers, first says so with mk_expect(p): p
** does not end implicitly meanwhile, as with a pending continuation.  It
** then either takes that back with mk_unexpect(p) (p ends at once if it
** has nothing else left, unless it is handling an event), or keeps it with
** mk_wake(p, cont): cont is queued for p as MK_EV_RESUME, and, so that p's
** VM runs, a resume without a token for the nested-VM process of every VM
** above p, up to the ground VM, whose loop runs what is queued.  For a
** dead p nothing is queued, and cont is released (release_cont) as
** mk_yield's would be.  Every mk_expect is matched by exactly one of the
** two.
*/
void mk_expect(mk_proc *p);
void mk_unexpect(mk_proc *p);
void mk_wake(mk_proc *p, void *cont);

/* ---- action values, for at_meta_level ------------------------------------ */
/*
** An action value is a heap node owned by whoever holds the list head.  The
** constructors copy strings and take references to terms (terms borrowed).
** mk_action_free frees a whole list, releasing spawn data through its
** behaviour.
*/
mk_action *mk_action_spawn(const mk_behavior *b, void *data, const char *name);
/* A spawn with a continuation, for at_meta_level (Marketplace's spawn with
** k): performed n VMs up, it makes `cont` come back to the process that
** sent it up as MK_EV_SPAWNED with the new pid (a pid of that VM up
** there).  If the spawn never happens (a VM on the way is stopping, or the
** process is gone) the token is dropped without release_cont: use tokens
** that own nothing (the Lua binding's are integers). */
mk_action *mk_action_spawn_k(const mk_behavior *b, void *data, const char *name, void *cont);
mk_action *mk_action_quit(mk_term *reason);
mk_action *mk_action_add(const char *name, mk_role role);
mk_action *mk_action_delete(const char *name, mk_term *reason);
mk_action *mk_action_send(mk_term *body);
mk_action *mk_action_feedback(mk_term *body);
/* at_meta_level(list): performed one VM further up (owns list). */
mk_action *mk_action_meta(mk_action *list);
/* Append b to list *a (either may be NULL).  Returns the list. */
mk_action *mk_action_append(mk_action *a, mk_action *b);
void mk_action_free(mk_action *a);

/* Role helpers. */
int mk_role_equal(mk_role a, mk_role b);
const char *mk_orientation_name(mk_orientation o);
const char *mk_interest_name(mk_interest i);

/* ---- lifelines ------------------------------------------------------------ */
/*
** Lifelines: how a process learns that another one ended, through
** absence (docs/supervision.md).  When a subscriber endpoint (any
** interest) is added whose topic is the record MK_LIFELINE_LABEL/1 with an
** integer pid, the VM publishes that record, as a participant, from the
** process with that pid, under the endpoint name MK_LIFELINE_ENDPOINT,
** unless it does already: it goes with the process, so every subscriber
** sees its absence with the process's reason (nil for a normal end).  A
** lifeline is made only when someone asks for it, so it costs nothing
** otherwise.  It is not the process's own: it does not keep the process
** alive (implicit exit ignores it), it hears nothing (no event reaches
** it), and the process cannot delete it (mk_delete_endpoint returns -1).
** When the pid names no live process of the VM, the subscriber alone is
** told the lifeline's presence and then its absence with the reason "no
** such process" (as the ground does for a watch it cannot make), and so
** it is when the process holds an endpoint of that name of its own.  A
** wildcard or anything but an integer in the field asks for nothing.
*/
#define MK_LIFELINE_LABEL "market:lifeline"
#define MK_LIFELINE_ENDPOINT "market:lifeline"

/* ---- links ---------------------------------------------------------------- */
/*
** A link is one way: process `who` is linked to process `to` when it must
** not outlive it (a supervisor's children: docs/supervision.md).  It is
** made on absence: `who` gets a subscriber endpoint (observer) on `to`'s
** lifeline, named MK_LINK_ENDPOINT "/" `to`, and when that lifeline goes,
** whatever the reason, nil included, the VM kills `who` with the reason
** "linked process <to> ended: <repr of to's reason>": a kill, as
** mk_quit's, not a failure (no crash hook call).  Like a lifeline it
** is not the process's own: it does not keep `who` alive, it hears
** nothing (the absence kills before any handler would run), and it
** cannot be deleted (mk_delete_endpoint returns -1); it goes with `who`.
** Links do not fire while the VM is being emptied (mk_vm_kill_all: a
** nested VM going, the ground's stop): every process then goes with the
** VM's reason, as without links.
**
** mk_link(p, to, who) is performed by p, for itself (who 0) or for
** another process of its VM, as mk_quit may kill one.  It returns -1 and
** does nothing when p is dead or `who` names no live process (or the
** resident one); else 0.  Linking again to the same `to` changes
** nothing.  When `to` names no live process, `who` is killed at once
** with the reason `linked process <to> ended: "no such process"`, and
** when the link cannot be made (`to` holds an endpoint named
** MK_LIFELINE_ENDPOINT of its own, `who` one named as the link) with a
** reason that says so.  The VM asks the behaviour's `declines` about a
** link's events with tag 0: a behaviour that declines absences for tag 0
** loses its links.
*/
#define MK_LINK_ENDPOINT "market:link"
int mk_link(mk_proc *p, mk_pid to, mk_pid who);

/* ---- detail --------------------------------------------------------------- */
/*
** Detail mode (docs/inspect.md, "Detail mode"): while it is on, a VM
** measures each process's activations (thread CPU time, and the bytes an
** allocator reports through mk_detail_alloc) and counts each send's
** messages by pair of endpoints, and snapshots show the figures
** (mk_snap_vm.detail).  Off, it costs a test of one pointer per delivery
** and per send.  mk_vm_set_detail turns it on or off for vm and every
** VM nested in it (VMs nested later take their parent's) and returns the
** setting vm had; turning it off drops the figures.  mk_detail_alloc:
** for an allocator (the Lua binding's, while detail is on), `delta` bytes
** taken (> 0) or given back (< 0) now, counted to the process whose
** activation runs, if any.
*/
int mk_vm_set_detail(mk_vm *vm, int on);
int mk_vm_detail(const mk_vm *vm);
void mk_detail_alloc(ptrdiff_t delta);
/* For a driver: `in` bytes received and `out` sent for p (a connection's
** process), counted while detail is on (a test of one pointer while it
** is off).  mk_detail_io_of gives the counts since detail was turned on,
** and returns 0 (counts untouched) while it is off. */
void mk_detail_io(mk_proc *p, size_t in, size_t out);
int mk_detail_io_of(const mk_proc *p, uint64_t *in, uint64_t *out);

/* ---- snapshots ----------------------------------------------------------- */
/*
** A snapshot: what a VM and the VMs nested in it hold at one moment, for
** inspection (docs/inspect.md, "Snapshots"; market.snapshot in Lua).  It
** is a copy: it owns everything in it (strings, and a reference on each
** topic) and stays valid, unchanged, after the VM moves on or is freed,
** until mk_snapshot_free.  Made on demand only: nothing is counted or kept
** per event for it but a Lua process's activations (a counter in a word
** its record already had).
*/
typedef struct mk_snap_vm mk_snap_vm;

typedef struct mk_snap_endpoint {
  char *name;                /* owned: its name in its process */
  int level;                 /* 0: in the process's VM; n: n VMs up (at_meta_level) */
  mk_role role;              /* role.topic owned (a reference) */
} mk_snap_endpoint;

typedef struct mk_snap_proc {
  mk_pid pid;                /* 0: the VM's resident process (the ground's) */
  char *name;                /* owned; NULL when it has none */
  const char *kind;          /* the behaviour's kind, static: "lua", "nested-vm",
                             ** "native", "tcp", "ground", ... */
  size_t queued;             /* events queued for it, not yet delivered */
  int64_t activations;       /* events its behaviour handled, or -1 when the
                             ** behaviour does not count them (only "lua" does) */
  mk_snap_endpoint *endpoints;   /* owned, nendpoints of them, in the order of
                                 ** mk_proc_each_endpoint (level 0 first) */
  size_t nendpoints;
  size_t endpoints_omitted;  /* its endpoints left out (mk_vm_snapshot_bounded),
                             ** the last in that order; 0 in a whole one */
  mk_snap_vm *vm;            /* owned: the VM a "nested-vm" process runs, else NULL */
  /* In detail mode only (mk_snap_vm.detail), else 0: */
  double cpu_ms;             /* thread CPU time of its activations, those of
                             ** processes nested in it left out */
  int64_t memory;            /* bytes: what an allocator reported for its
                             ** activations (mk_detail_alloc), net, plus the
                             ** VM's records of it and its endpoints */
} mk_snap_proc;

/* A conversation: a publisher endpoint and a subscriber endpoint of one VM
** (both level 0 there) whose topics unify and of which at least one sees
** the other (its interest): a pair presence was told to.  Each side is
** named by its position: procs[proc].endpoints[endpoint] of the same
** mk_snap_vm.  Lifelines and links (vm.h) are left out. */
typedef struct mk_snap_conv {
  size_t pub_proc, pub_endpoint;
  size_t sub_proc, sub_endpoint;
  uint64_t messages;         /* detail mode only, else 0: messages sent by the
                             ** publisher's process that matched both topics
                             ** since detail was turned on */
} mk_snap_conv;

struct mk_snap_vm {
  char *path;                /* owned: "ground", "ground/3", ... (mk_vm_path) */
  mk_pid pid;                /* its nested-VM process's pid in the parent; 0 for a root */
  size_t queued;             /* events in its queue */
  mk_snap_proc *procs;       /* owned, nprocs of them, by pid (the resident first) */
  size_t nprocs;
  size_t omitted;            /* its processes left out (mk_vm_snapshot_max), 0 in a whole one */
  mk_snap_conv *convs;       /* owned, nconvs of them, by publisher then subscriber */
  size_t nconvs;
  size_t convs_omitted;      /* its conversations left out (mk_vm_snapshot_limits) */
  int detail;                /* 1: detail mode was on (mk_vm_set_detail): the
                             ** cpu_ms, memory and messages fields are set */
};

/*
** The snapshot of `vm` and every VM nested in it (recursing once per
** level: MK_NEST_MAX at most).  Cost: a walk of every
** process and endpoint, plus one match of the routing index per publisher
** endpoint (what it costs is what matches: route.h), which goes through
** the index's match cache like a send.  It may be taken from a handler:
** it shows the VMs as they are then.  Returns the snapshot, owned by the
** caller; out of memory aborts (the VM's policy).
*/
mk_snap_vm *mk_vm_snapshot(mk_vm *vm);
/*
** The same with at most max_procs processes in the whole tree (0: no
** limit): each VM lists its lowest pids while any of the bound is left
** (its own processes before those of the VMs nested in them), says in
** `omitted` how many of its own it left out, and lists the conversations
** of listed processes only.  A snapshot of a VM of a million processes
** costs seconds and takes more memory than it shows anyone; this one costs
** a sort of the pids and what it lists (the inspector's, inspect.lua).
*/
mk_snap_vm *mk_vm_snapshot_max(mk_vm *vm, size_t max_procs);
/*
** The same with at most max_convs conversations in the whole tree too (0:
** no limit), each VM's before those of the VMs nested in it, those of its
** lowest publishers first; each VM says in `convs_omitted` how many of
** its own it left out.  Conversations grow as the square of a room's
** members: 300 chat users made 90,000, and their snapshot took a second
** to turn into Lua and JSON (the inspector's pushes, inspect.lua).  The
** ones left out are still matched, to be counted: in C, that costs a
** small part of listing them.
*/
mk_snap_vm *mk_vm_snapshot_limits(mk_vm *vm, size_t max_procs, size_t max_convs);
/*
** The same with at most max_endpoints endpoints in the whole tree too (0:
** no limit), shared out as processes are, and at most a tenth of them
** (rounded up) in any one process, so that one large process leaves the
** others theirs: each listed process lists its first ones while any of
** the bound is left and says in `endpoints_omitted` how many it left out;
** a conversation of an endpoint left out is left out too (counted in
** `convs_omitted`).  One process of
** 150,000 endpoints made a snapshot of 20 MB that no inspector request
** finished within the activation budget.
*/
mk_snap_vm *mk_vm_snapshot_bounded(mk_vm *vm, size_t max_procs, size_t max_convs,
                                   size_t max_endpoints);
void mk_snapshot_free(mk_snap_vm *s);      /* NULL accepted */

/* ---- nested VMs ---------------------------------------------------------- */

/*
** The behaviour of a nested VM.  Its data is the child mk_vm (created by
** mk_nested_new).  The boot process of the nested VM is spawned with
** (b, data, name) when the nested VM boots.  A VM more than MK_NEST_MAX
** levels below the ground does not boot: its process fails ("a VM
** nested more than 1000 levels deep"), its boot process never spawned.
*/
#define MK_NEST_MAX 1000
extern const mk_behavior mk_nested_behavior;
/* The data to spawn with mk_nested_behavior: a new VM whose boot process is
** (b, data, name), not started until the nested VM process boots. */
void *mk_nested_new(mk_vm *parent_hint, const mk_behavior *b, void *data, const char *name);

#endif

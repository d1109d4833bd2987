/*
** vmint.h: VM internals shared by vm.c and nested.c.  Not installed.
*/
#ifndef MK_VMINT_H
#define MK_VMINT_H

#include <stddef.h>
#include "vm.h"

typedef struct mk_tracer mk_tracer;
typedef struct mkI_detail mkI_detail;

typedef enum mk_action_type {
  MK_A_SPAWN, MK_A_QUIT, MK_A_ADD, MK_A_DELETE, MK_A_SEND, MK_A_FEEDBACK,
  MK_A_META,      /* at_meta_level: `list` performed one level up */
  MK_A_DROP       /* VM-internal: a child died; drop endpoints named "prefix..." */
} mk_action_type;

/* An action value (see vm.h).  Owned by the list holder; every pointer
** field below is owned by the node. */
struct mk_action {
  mk_action *next;
  mk_action_type type;
  char *name;               /* SPAWN: debug name; ADD, DELETE: endpoint; DROP: prefix */
  mk_role role;             /* ADD: role.topic owned */
  mk_term *term;            /* SEND, FEEDBACK: body; QUIT, DELETE, DROP: reason (may be NULL) */
  const mk_behavior *b;     /* SPAWN */
  void *data;               /* SPAWN: behaviour data, destroyed if never spawned */
  void *cont;               /* SPAWN: continuation token or NULL; once a nested VM
                            ** passed it up, a chain of mkI_conts (cont_wrapped) */
  int cont_wrapped;         /* SPAWN: cont is an mkI_cont, freed with the node */
  mk_pid pid;               /* META: the child that made it */
  int levels;               /* DROP: the levels up, from here, where the dead
                            ** process may hold endpoints (>= 1) */
  mk_action *list;          /* META */
};

/* Endpoint: attached to its process and (unless dead) to the VM's index
** and name table.  Counted: one reference while attached, one per queued
** event that names it.  Freed when the count reaches 0.  Allocated as
** offsetof(mk_endpoint, name) plus the name.  One that hears messages is
** placed with `proc` at a cache line's start (vm.c, xline): its hot fields
** and a name of up to 22 bytes are one line.  The others, which hear only
** presence and absence, are plain small blocks: a record with a name of up
** to 7 bytes fills a 96-byte malloc chunk, where a placed one takes two
** lines (an idle connection holds about ten endpoints; issue 10).  The
** name table's hash is computed again when needed rather than kept, for
** the same reason. */
struct mk_endpoint {
  /* Cold: what adds, removes and walks of the routing index read.  A
  ** message routed through the match cache reads the fields from `proc`
  ** on, 36 bytes and the name, which at thousands of connections come
  ** from memory at each of its events (issue 10). */
  mk_ilink link;            /* in vm->ix[orientation]; first member */
  mk_endpoint *pnext, *pprev;   /* the owner's endpoint list, or for a
                                ** link its list of links (mk_procx); a
                                ** lifeline is on none: both NULL */
  mk_endpoint *hnext;       /* vm name table chain */
  /* Hot: what queueing and delivering an event read. */
  mk_proc *proc;            /* owner; valid while !dead */
  mk_role role;             /* role.topic owned */
  uint32_t refs;
  uint32_t tag;             /* mk_tag_endpoint */
  uint8_t dead : 1;
  uint8_t lifeline : 1;     /* the VM's lifeline of its process (vm.h, "Lifelines"):
                            ** hears nothing (deliver drops its events); bits
                            ** of one byte, so that the name still starts at
                            ** byte 81 and deliver tests them all at once */
  uint8_t islink : 1;       /* a link of its process (vm.h, "Links"): hears
                            ** nothing but its absence, which kills the
                            ** process (deliver) */
  uint8_t placed : 1;       /* allocated with `proc` at a cache line's start
                            ** (vm.c, xline), else as any small block */
  char name[];              /* NUL-terminated, owned in place */
};

/* A queued event, a slot of an mk_qblock.  Holds counted references to
** its process and endpoint and owns its terms and `name`.  A slot whose
** `proc` is NULL holds nothing: an event dropped after it was queued
** (vm.c, decline_queued), skipped when its turn comes. */
typedef struct mk_qev {
  mk_proc *proc;
  mk_endpoint *ep;          /* NULL for boot/cont/meta-forwarded events */
  char *name;               /* meta-forwarded events: owned endpoint name */
  mk_term *term;            /* message, or the peer's refined topic */
  mk_term *reason;
  mk_term *topic;           /* meta-forwarded messages: the receiving endpoint's topic */
  void *cont;
  mk_pid pid;
  uint16_t meta;            /* levels up (at_meta_level), to MK_NEST_MAX: a byte
                            ** wrapped at 256, and an event for an endpoint
                            ** that far up went to one 256 levels nearer */
  uint8_t type, orientation, interest;
  uint8_t deleted;          /* an absence told to the deleted endpoint itself */
} mk_qev;

/* The VM's FIFO is a list of blocks of events, not a record per event: a
** presence or absence burst queues one event per peer (10,000 and more)
** and a spawn wave a boot event per process, and allocating and freeing
** each record (malloc's slow paths, past what the pool keeps per size)
** was a sixth of a presence event (issue 10).  Events are added at the
** tail block's `last` and taken from the head block's `first`.  A block
** is 64 KiB of memory mapped for it (910 events: vm.c, qblock_new), so
** glibc's heap never sees the queue; blocks of a few hundred bytes from
** malloc, given back after a burst of 10,000, merged in its free lists
** into space large enough for it to consolidate all its fast bins, and
** a spawn cost 600 instructions more.  A block whose events are all
** taken waits in `qfree` for the tail to need one; when the queue
** empties, the head block is rewound, and of those waiting the VM keeps
** as many as that burst added to the head (`qburst`), up to MK_QKEEP, and
** unmaps the rest.  A VM whose bursts outgrow a block, as a publisher
** sending a thousand messages a pass, so reuses its blocks: mapping one,
** faulting its 16 pages in and unmapping it at every pass was half the
** CPU of bench-route's messages on a host with slow page faults.  A
** burst that needs no second block lets the kept ones go.  So an idle VM
** keeps one block, or up to MK_QKEEP + 1 if its last burst was that
** large, of which what the bursts touched is resident (4 KiB for a queue
** that never held more than 56 events).  Where no mapping can be had (a program
** with tens of thousands of VMs reaches the kernel's limit on mappings),
** a block comes from malloc instead: slower bursts, never a failure.
** Owned by the VM, with the events in slots first..last-1, which own what
** mk_qev says. */
#define MK_QBLOCK 910
#define MK_QKEEP 4
typedef struct mk_qblock {
  struct mk_qblock *next;
  uint16_t first, last;
  uint8_t mapped;           /* 1: mmap'd (munmap it), 0: malloc'd */
  mk_qev ev[MK_QBLOCK];
} mk_qblock;

/* Meta-endpoint names a process holds above it, or has deleted there and
** is still to hear of (for implicit exit; vm.c, metaname_add), with the
** role each was added with: a re-add under a held name with another role
** is the process's error, found when it makes the action (vm.c,
** mk_at_meta_level), not the nested VM's when the VM above performs it. */
typedef struct mk_metaname {
  struct mk_metaname *next; /* in its bucket of mk_procx.metas */
  mk_role role;             /* role.topic counted */
  uint32_t deleting;        /* deletions made whose MK_EV_DELETED has not
                            ** come back down yet */
  int depth;                /* 1: the parent VM, 2: the one above it, ... */
  uint8_t held;             /* 1: the endpoint is held up there */
  char name[];              /* its name at that level, NUL-terminated */
} mk_metaname;

/* A process's name with the meta-endpoint names it holds (for implicit
** exit) and its links before it: made when the process first holds one.
** Owned by the process; its `name` points at `name` here then (PROCX in
** vm.c). */
typedef struct mk_procx {
  mk_metaname **metas;      /* owned hash table of nmetas records in
                            ** metasize buckets (a power of 2), keyed by
                            ** (depth, name), or NULL: a process may hold
                            ** tens of thousands up there, and a list made
                            ** every add a walk of them all */
  uint32_t nmetas, metasize;
  mk_endpoint *links;       /* its links (vm.h), chained by pnext/pprev: off
                            ** its list of endpoints, so that they do not
                            ** keep it alive; mkI_kill withdraws them */
  char name[];              /* NUL-terminated, in place */
} mk_procx;

/* A process.  72 bytes, two cache lines of the pool's (vm.c, xline;
** issue 10: a million idle processes): the meta names live with the name
** (mk_procx), and mk_proc_nendpoints counts the endpoint list, asked by
** tests and embedders, never per event.  Keep it so (test_vm). */
struct mk_proc {
  /* Hot: what queueing, delivering and sending read, 45 bytes from the
  ** start, which is a cache line's (vm.c, xline): at thousands of
  ** connections, where each event's process comes from memory, they are
  ** one miss (issue 10). */
  mk_vm *vm;
  const mk_behavior *b;
  void *data;               /* owned by the behaviour: destroy() */
  mk_endpoint *eps;         /* this process's endpoints */
  uint32_t refs;            /* 1 while alive + 1 per queued event */
  uint32_t pending;         /* queued events for it */
  uint32_t conts;           /* continuations not yet delivered */
  uint8_t dead, in_handle;
  uint8_t resident : 1;     /* mk_vm_resident: pid 0, outside the pid table */
  uint8_t lifeline : 1;     /* it holds its lifeline (vm.h), which is not on
                            ** its list of endpoints: mkI_kill withdraws it */
  uint8_t xname;            /* 0: name is a plain string (or NULL); else it is
                            ** in an mk_procx: 1, or 2 when the process has
                            ** no name (name is "" then) */
  /* Cold: spawns, lookups by pid, names. */
  mk_pid pid;
  char *name;               /* owned, may be NULL; inside an mk_procx when xname */
  mk_proc *hnext;           /* vm pid table chain */
};
_Static_assert(offsetof(mk_proc, pid) <= 64, "a process's hot fields are its first line");
_Static_assert(offsetof(mk_endpoint, name) == 81, "an endpoint named in 7 bytes fills 96");
_Static_assert(offsetof(mk_endpoint, name) - offsetof(mk_endpoint, proc) <= 64,
               "an endpoint's hot fields are one line (vm.c, xline)");

struct mk_vm {
  mk_vm *parent;            /* NULL for a ground VM's core */
  mk_proc *self;            /* the nested-VM process in the parent */
  mk_index *ix[2];          /* by orientation */
  mk_proc **ptab;           /* pid table, chained */
  mk_proc *resident;        /* mk_vm_resident's process, or NULL; ended by mk_vm_free */
  size_t ptabsize, nprocs;
  mk_endpoint **etab;       /* (pid, name) table, chained */
  size_t etabsize, neps;
  mk_qblock *qhead, *qtail; /* the event FIFO (mk_qblock), owned; NULL until
                            ** the first event */
  mk_qblock *qfree;         /* emptied blocks, owned, chained by next */
  unsigned qburst;          /* blocks added behind the head since the
                            ** queue was last empty */
  uint64_t nqueued, ntaken; /* events ever queued and taken: the one queued
                            ** as number n (nqueued then) is n - ntaken
                            ** slots from the head while it is queued */
  mk_pid nextpid;
  mk_action *outbox, *outtail;
  mk_vm_hooks hooks;
  mk_tracer *trace;         /* shared with the VMs nested in it, counted
                            ** (trace.c); NULL until a trace is set */
  mkI_detail *detail;       /* detail mode (detail.c): owned; NULL while off,
                            ** which the message path tests */
  mk_crash_hook crash;      /* mk_vm_set_crash_hook, or NULL */
  void *crashud;
  void *userdata;
  char *path;
  int depth;                /* levels below the ground VM (0: a ground VM) */
  /* boot process of a nested VM, spawned when it boots */
  const mk_behavior *bootb;
  void *bootdata;
  char *bootname;
  double budget;            /* activation budget in ms; < 0: the parent's */
  int halting;              /* mk_vm_kill_all is running: spawns refused */
  int freeing;
  uint64_t deadline;        /* while a slice runs (mkI_run_until): its end,
                            ** on mkI_clock; 0: none (mk_vm_run) */
  int resume_queued;        /* a nested VM's: it left events for later and
                            ** queued its own resume in the parent */
  mk_term *last_reason;     /* a nested VM's: the reason its last process to
                            ** end went with, a counted reference (NULL:
                            ** nil, or none yet); the VM ends with it when
                            ** no process is left (nested.c).  Freed by
                            ** mk_vm_free. */
};

/* A spawn continuation on its way up through a nested VM: the child it
** goes back to and that child's own token (an mkI_cont too when `wrapped`,
** owned then).  Made and freed by nested.c. */
typedef struct mkI_cont {
  mk_pid pid;
  void *inner;
  int wrapped;
} mkI_cont;
void mkI_cont_free(mkI_cont *c);                   /* the whole chain */
void mkI_enqueue_spawned(mk_vm *vm, mk_proc *target, void *cont, mk_pid pid);

/* Slices (mk_vm_run_for): the monotonic clock in nanoseconds, and a run
** until it reaches `deadline`, which the VM keeps meanwhile for the nested
** VMs it delivers to. */
uint64_t mkI_clock(void);
size_t mkI_run_until(mk_vm *vm, uint64_t deadline);

/* Used by nested.c. */
mk_action *mkI_drop(const char *prefix, mk_term *reason, int levels);   /* reason borrowed */
void mkI_enqueue_meta(mk_vm *vm, mk_proc *target, const mk_event *ev, const char *name, int meta);
void mkI_perform(mk_proc *p, mk_action *a);        /* performs one action node (consumed) */
mk_endpoint *mkI_endpoint(mk_vm *vm, mk_pid pid, const char *name);
/* trace.c.  A line of kind MK_TK_* about p, if its VM traces it; `extra`
** is the message (send, feedback, message) or the reason (may be NULL). */
void mkI_trace_proc(mk_proc *p, int kind, const char *ep, const mk_role *role,
                    const mk_term *extra);
void mkI_trace_inherit(mk_vm *vm, const mk_vm *parent);   /* a nested VM boots */
void mkI_trace_release(mk_vm *vm);                        /* vm is freed */
/* A VM's trace (trace.c): an immutable snapshot shared by a VM and the
** VMs nested in it, counted; a change makes a new one.  Owns its copies
** of the filter's pids, globs and topic; `fn` and `ud` are the caller's. */
struct mk_tracer {
  mk_trace_fn fn;           /* NULL: no lines but the rings' */
  void *ud;
  mk_ring **rings;          /* owned array of counted references (mk_ring):
                            ** the rings open on the tree */
  size_t nrings;
  int on;                   /* fn or rings: the VM makes lines */
  uint32_t refs;            /* one per VM holding it, one per line being written */
  unsigned kinds;           /* 1u << MK_TK_*; 0: every kind */
  int none;                 /* no line passes (mk_trace_opts) */
  int json;
  mk_pid *pids;
  size_t npids;
  char **names, **vms;      /* globs (fnmatch) */
  size_t nnames, nvms;
  mk_term *topic;           /* NULL: any */
};
/* One load and a compare while nothing is traced (the message path). */
#define MKI_TRACING(vm) ((vm)->trace != NULL && (vm)->trace->on)
void mkI_kill(mk_proc *p, mk_term *reason);
void mkI_ep_unref(mk_endpoint *e);                 /* vm.c: drops a reference */
/* detail.c (vm.h, "Detail"), called while p->vm->detail is set: handle
** one event measured; count a send's messages by pair of endpoints; p is
** gone.  mkI_detail_proc and mkI_detail_messages give the figures for a
** snapshot, 0 while detail is off. */
void mkI_detail_handle(mk_proc *p, const mk_event *ev);
void mkI_detail_send(mk_proc *p, const mk_term *body);
void mkI_detail_gone(mk_proc *p);
int mkI_detail_proc(const mk_proc *p, double *cpu_ms, int64_t *mem);
int mkI_detail_messages(const mk_vm *vm, const mk_endpoint *pub, const mk_endpoint *sub,
                        uint64_t *n);
void mkI_detail_inherit(mk_vm *vm, const mk_vm *parent);  /* a nested VM boots */
void mkI_detail_release(mk_vm *vm);                       /* vm is freed */
/* vm.c: malloc, calloc, realloc and strdup that end the program on out
** of memory (the VM's policy: market.h, "Conventions"), once the pool's
** cache has been given back and the call tried again (pool.h,
** mk_pool_malloc); mkI_xstrdup(NULL) is NULL. */
void *mkI_xmalloc(size_t n);
void *mkI_xcalloc(size_t n, size_t size);
void *mkI_xrealloc(void *p, size_t n);
char *mkI_xstrdup(const char *s);

#endif

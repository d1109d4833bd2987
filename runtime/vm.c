/*
** vm.c: VMs, processes, endpoints, presence/absence and message routing.
**
** One FIFO queue of events per VM; actions are applied when a behaviour
** makes them (see vm.h for why that equals Marketplace's order).  The
** routing indexes (route.h) make add/delete/send cost what matches, not
** what exists.
*/
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>

#include "pool.h"
#include "vmint.h"

/* ---- small helpers ------------------------------------------------------ */

/* p, which an allocation returned: the VM cannot go on without it. */
static void *needed(void *p) {
  if (p == NULL) { fputs("market: out of memory\n", stderr); abort(); }
  return p;
}

void *mkI_xmalloc(size_t n) { return needed(mk_pool_malloc(n ? n : 1)); }
void *mkI_xcalloc(size_t n, size_t size) { return needed(mk_pool_calloc(n ? n : 1, size ? size : 1)); }
void *mkI_xrealloc(void *p, size_t n) { return needed(mk_pool_realloc(p, n ? n : 1)); }

/* The records every spawn makes and every exit frees, processes and
** endpoints, come from the pool (pool.h), which keeps what a wave of exits
** gives back for the next wave of spawns: from glibc, a VM that kept
** spawning and killing ran at less than half the rate of its first wave,
** its records scattered over the free lists (issue 10,
** docs/performance.md).  A process, and an endpoint that hears messages,
** are placed so that what an event reads of them is one cache line
** (mk_pool_alloc_at): a process from its start (its hot fields; the pid
** and the cold rest are the next line), an endpoint from `proc` on (its
** name too, up to 22 bytes).  From a 16-byte boundary they were two lines
** half the time, and at thousands of connections each line is a
** miss: an echoed round trip reads three such endpoints and two processes
** (21.1 misses of the last-level cache at 1,000 connections; placed, 17.3).
** An endpoint that hears only presence and absence (a publisher, an
** observer, a lifeline) is a plain small block: placing it would cost up
** to 32 bytes more, for events that come once in its life. */
#define PROC_AT 0
#define EP_AT   offsetof(mk_endpoint, proc)
#define EP_SIZE(namesize) (offsetof(mk_endpoint, name) + (namesize))

static void *xpool(size_t n) { return needed(mk_pool_alloc(n)); }
static void *xline(size_t n, size_t at) { return needed(mk_pool_alloc_at(n, at)); }

static void ep_free(mk_endpoint *e) {
  size_t n = EP_SIZE(strlen(e->name) + 1);
  if (e->placed) mk_pool_free_at(e, n, EP_AT); else mk_pool_free(e, n);
}

char *mkI_xstrdup(const char *s) {
  size_t n;
  char *d;
  if (s == NULL) return NULL;
  n = strlen(s) + 1;
  d = mkI_xmalloc(n);
  memcpy(d, s, n);
  return d;
}

static uint32_t strhash(const char *s, uint32_t h) {
  for (; *s; s++) h = (h ^ (unsigned char)*s) * 16777619u;
  return h;
}

/* A process's chain in the pid table (a power of two in size): the pid
** itself.  Pids are handed out in sequence, so the processes alive at
** once fall into chains of their own as long as they span no more pids
** than the table has slots, and a VM that kills a wave of processes in
** the order it spawned them walks the table in order.  A hash of the pid
** (bits 32 and up of its product with 2^64 / phi) crowded consecutive
** pids: 3.9 records read per lookup with 100,000 processes in 131,072
** chains, where one each would do, and each record read is a cache miss
** in a large VM. */
static size_t pidslot(const mk_vm *vm, mk_pid pid) {
  return (size_t)pid & (vm->ptabsize - 1);
}

int mk_role_equal(mk_role a, mk_role b) {
  return a.orientation == b.orientation && a.interest == b.interest &&
         mk_equal(a.topic, b.topic);
}

const char *mk_orientation_name(mk_orientation o) {
  return o == MK_PUBLISHER ? "publisher" : "subscriber";
}

const char *mk_interest_name(mk_interest i) {
  switch (i) {
    case MK_PARTICIPANT: return "participant";
    case MK_OBSERVER: return "observer";
    default: return "everything";
  }
}

/* ---- tracing (trace.c) -------------------------------------------------- */

#define TRACING(vm) MKI_TRACING(vm)
/* The mk_procx around p's name, when p->xname. */
#define PROCX(p) ((mk_procx *)(void *)((p)->name - offsetof(mk_procx, name)))

/* A term the VM shows but did not choose (a linked process's reason):
** cut short. */
static char *repr(const mk_term *t) {
  char *s = t ? mk_repr_max(t, MK_REPR_SHOWN, NULL) : NULL;
  return s ? s : mkI_xstrdup(t ? "?" : "nil");
}

/* A string term of the printf-formatted text: a reason. */
static mk_term *vtermf(const char *fmt, va_list ap) {
  char small[256];
  int n;
  va_list again;
  mk_term *r;
  va_copy(again, ap);
  n = vsnprintf(small, sizeof small, fmt, ap);
  if (n >= 0 && (size_t)n >= sizeof small) {
    char *buf = mkI_xmalloc((size_t)n + 1);
    vsnprintf(buf, (size_t)n + 1, fmt, again);
    r = mk_str(buf, (size_t)n);
    free(buf);
  } else {
    r = mk_cstr(n < 0 ? "error" : small);
  }
  va_end(again);
  return r;
}

static mk_term *termf(const char *fmt, ...) {
  va_list ap;
  mk_term *r;
  va_start(ap, fmt);
  r = vtermf(fmt, ap);
  va_end(ap);
  return r;
}

/* ---- tables ------------------------------------------------------------- */

static void ptab_grow(mk_vm *vm) {
  size_t n = vm->ptabsize ? vm->ptabsize * 2 : 64, i;
  mk_proc **t = mkI_xcalloc(n, sizeof *t);
  for (i = 0; i < vm->ptabsize; i++) {
    mk_proc *p = vm->ptab[i], *nx;
    for (; p; p = nx) {
      size_t h = (size_t)p->pid & (n - 1);     /* pidslot in the new table */
      nx = p->hnext;
      p->hnext = t[h];
      t[h] = p;
    }
  }
  free(vm->ptab);
  vm->ptab = t;
  vm->ptabsize = n;
}

mk_proc *mk_vm_proc(const mk_vm *vm, mk_pid pid) {
  mk_proc *p;
  if (vm->ptabsize == 0) return NULL;
  for (p = vm->ptab[pidslot(vm, pid)]; p; p = p->hnext)
    if (p->pid == pid) return p;
  return NULL;
}

static void ptab_remove(mk_vm *vm, mk_proc *p) {
  mk_proc **pp = &vm->ptab[pidslot(vm, p->pid)];
  for (; *pp; pp = &(*pp)->hnext)
    if (*pp == p) { *pp = p->hnext; vm->nprocs--; return; }
}

/* An endpoint's chain in the name table: its name's hash, mixed, plus
** its pid.  The endpoints of one name (every process of a kind names its
** endpoints alike) then fall into consecutive chains in the order of
** their pids, as processes do in the pid table: a wave of spawns that
** each add "in", and the kills after it, walk the table in order, where
** a hash of the pid sent each to a chain of its own at random, a cache
** miss in a table of many endpoints (issue 10).  One process's endpoints
** are spread by their names' hashes.  The price is the pid table's: a
** program whose live processes' pids share their low bits (one in every
** 2^k alive, the rest gone) has chains 2^k times as long, here as there. */
static uint32_t ephash(mk_pid pid, const char *name) {
  uint32_t h = strhash(name, 2166136261u);
  h ^= h >> 16;
  h *= 0x45d9f3bu;
  return (h ^ (h >> 16)) + (uint32_t)pid;
}

static void etab_grow(mk_vm *vm) {
  size_t n = vm->etabsize ? vm->etabsize * 2 : 64, i;
  mk_endpoint **t = mkI_xcalloc(n, sizeof *t);
  for (i = 0; i < vm->etabsize; i++) {
    mk_endpoint *e = vm->etab[i], *nx;
    for (; e; e = nx) {
      uint32_t h = ephash(e->proc->pid, e->name);
      nx = e->hnext;
      e->hnext = t[h & (n - 1)];
      t[h & (n - 1)] = e;
    }
  }
  free(vm->etab);
  vm->etab = t;
  vm->etabsize = n;
}

mk_endpoint *mkI_endpoint(mk_vm *vm, mk_pid pid, const char *name) {
  uint32_t h;
  mk_endpoint *e;
  if (vm->etabsize == 0) return NULL;
  h = ephash(pid, name);
  for (e = vm->etab[h & (vm->etabsize - 1)]; e; e = e->hnext)
    if (e->proc->pid == pid && strcmp(e->name, name) == 0) return e;
  return NULL;
}

static void etab_remove(mk_vm *vm, mk_endpoint *e) {
  mk_endpoint **pp = &vm->etab[ephash(e->proc->pid, e->name) & (vm->etabsize - 1)];
  for (; *pp; pp = &(*pp)->hnext)
    if (*pp == e) { *pp = e->hnext; vm->neps--; return; }
}

/* ---- reference counting of processes and endpoints ---------------------- */

/* Free behaviour data that never became a process (its spawn was dropped),
** through a transient process record, as `destroy` expects one. */
static void destroy_data(mk_vm *vm, const mk_behavior *b, void *data) {
  mk_proc tmp;
  if (b->destroy == NULL) return;
  memset(&tmp, 0, sizeof tmp);
  tmp.vm = vm;
  tmp.b = b;
  tmp.data = data;
  b->destroy(&tmp);
}

/* A meta-name record and what it owns (its role's topic; vmint.h). */
static void metaname_free(mk_metaname *m) {
  mk_unref(m->role.topic);
  free(m);
}

static void proc_unref(mk_proc *p) {
  mk_metaname *m, *mn;
  uint32_t i;
  if (--p->refs > 0) return;
  if (p->b->destroy) p->b->destroy(p);
  if (p->xname) {
    mk_procx *px = PROCX(p);
    for (i = 0; i < px->metasize; i++)
      for (m = px->metas[i]; m; m = mn) {
        mn = m->next;
        metaname_free(m);
      }
    free(px->metas);
    free(px);
  } else {
    free(p->name);
  }
  mk_pool_free_at(p, sizeof *p, PROC_AT);
}

static void ep_unref(mk_endpoint *e) {
  if (--e->refs > 0) return;
  mk_unref(e->role.topic);
  ep_free(e);
}

void mkI_ep_unref(mk_endpoint *e) { ep_unref(e); }

/* ---- the queue ---------------------------------------------------------- */

_Static_assert(sizeof(mk_qblock) == 65536, "a queue block is 64 KiB (vmint.h)");

/* A queue block (vmint.h), mapped, or from malloc where no mapping can be
** had; always from malloc under AddressSanitizer, which then still sees
** what reads or writes past a slot.  A block behind the head is taken
** because the one before it is full, so its pages will be written: with
** populate, they are mapped in one call, not faulted in one by one (16
** faults cost more than the events they hold on a virtual machine). */
static mk_qblock *qblock_new(int populate) {
  mk_qblock *b = NULL;
#if !MK_SANITIZED
  void *m;
  mk_pool_map(sizeof *b);        /* the memory limit counts it (pool.h) */
  m = mmap(NULL, sizeof *b, PROT_READ | PROT_WRITE,
           MAP_PRIVATE | MAP_ANONYMOUS | (populate ? MAP_POPULATE : 0), -1, 0);
  if (m != MAP_FAILED) {
    b = m;
    b->mapped = 1;
    return b;
  }
  mk_pool_unmap(sizeof *b);
#endif
  b = mkI_xmalloc(sizeof *b);
  b->mapped = 0;
  return b;
}

static void qblock_free(mk_qblock *b) {
  if (b == NULL) return;
  if (!b->mapped) { free(b); return; }
  munmap(b, sizeof *b);
  mk_pool_unmap(sizeof *b);
}

/* A slot for one more event at the queue's tail, with a block for it if
** the tail block is full (or there is none yet). */
static mk_qev *qslot(mk_vm *vm) {
  mk_qblock *b = vm->qtail;
  if (b == NULL || b->last == MK_QBLOCK) {
    mk_qblock *nb = vm->qfree;
    if (nb != NULL) vm->qfree = nb->next; else nb = qblock_new(b != NULL);
    if (b != NULL) vm->qburst++;
    nb->next = NULL;
    nb->first = nb->last = 0;
    if (b != NULL) b->next = nb; else vm->qhead = nb;
    vm->qtail = b = nb;
  }
  return &b->ev[b->last++];
}

/* Queue an event of this type for p: the slot, zeroed but for type and
** proc, valid until the next event is queued or taken. */
static mk_qev *qev_new(mk_vm *vm, mk_proc *p, mk_event_type type) {
  mk_qev *q = qslot(vm);
  memset(q, 0, sizeof *q);
  q->type = (uint8_t)type;
  q->proc = p;
  p->refs++;
  p->pending++;
  vm->nqueued++;
  return q;
}

/* Unmap a chain of blocks. */
static void qblocks_free(mk_qblock *b) {
  while (b != NULL) {
    mk_qblock *next = b->next;
    qblock_free(b);
    b = next;
  }
}

/* The head slot (there is one) is done with, copied out or freed: past
** it.  A block emptied waits in qfree, but the last one, which is rewound;
** when the queue empties, qfree keeps as many as the burst took, up to
** MK_QKEEP, and the rest are unmapped (vmint.h). */
static inline void qev_pop(mk_vm *vm) {
  mk_qblock *b = vm->qhead;
  vm->ntaken++;
  if (++b->first < b->last) return;
  if (b->next == NULL) {
    mk_qblock **keep = &vm->qfree;
    unsigned n = vm->qburst < MK_QKEEP ? vm->qburst : MK_QKEEP;
    b->first = b->last = 0;
    while (n-- > 0 && *keep != NULL) keep = &(*keep)->next;
    qblocks_free(*keep);
    *keep = NULL;
    vm->qburst = 0;
    return;
  }
  vm->qhead = b->next;
  b->next = vm->qfree;
  vm->qfree = b;
}

/* Take the event at the head (there is one) into *q, which owns it now. */
static void qev_take(mk_vm *vm, mk_qev *q) {
  *q = vm->qhead->ev[vm->qhead->first];
  qev_pop(vm);
}

static int qev_empty(const mk_vm *vm) {
  return vm->qhead == NULL || vm->qhead->first == vm->qhead->last;
}

/* Let go of what an event taken off the queue holds (not its process).
** Most events hold a term and no reason, topic or name: the calls for
** those are skipped. */
static void qev_free(mk_qev *q) {
  if (q->ep) ep_unref(q->ep);
  mk_unref(q->term);
  if (q->reason) mk_unref(q->reason);
  if (q->topic) mk_unref(q->topic);
  if (q->name) free(q->name);
}

/* Queue an event naming endpoint `to` of its process; NULL if declined. */
static mk_qev *enqueue_ep(mk_vm *vm, mk_endpoint *to, mk_event_type type,
                          mk_term *term, const mk_role *peer, mk_term *reason) {
  mk_proc *p = to->proc;
  mk_qev *q;
  if (p->b->declines && p->pending == 0 && p->in_handle == 0 && !TRACING(vm) &&
      p->b->declines(p, to->tag, type)) {
    mk_unref(term);
    return NULL;
  }
  q = qev_new(vm, p, type);
  q->ep = to;
  to->refs++;
  q->term = term;                    /* already a new reference */
  if (peer) {
    q->orientation = (uint8_t)peer->orientation;
    q->interest = (uint8_t)peer->interest;
  }
  if (reason) q->reason = mk_ref(reason);
  return q;
}

void mkI_enqueue_spawned(mk_vm *vm, mk_proc *target, void *cont, mk_pid pid) {
  mk_qev *q = qev_new(vm, target, MK_EV_SPAWNED);
  q->cont = cont;
  q->pid = pid;                      /* counted in conts by mk_at_meta_level */
}

void mkI_enqueue_meta(mk_vm *vm, mk_proc *target, const mk_event *ev,
                      const char *name, int meta) {
  mk_qev *q = qev_new(vm, target, ev->type);
  q->name = mkI_xstrdup(name);
  q->meta = (uint16_t)meta;
  q->term = mk_ref(ev->type == MK_EV_MESSAGE ? ev->message : ev->role.topic);
  /* A message event carries the receiving endpoint's role (vm.h); keep its
  ** topic too, or the child got role.topic == NULL. */
  if (ev->type == MK_EV_MESSAGE) q->topic = mk_ref(ev->role.topic);
  q->orientation = (uint8_t)ev->role.orientation;
  q->interest = (uint8_t)ev->role.interest;
  q->reason = mk_ref(ev->reason);
  q->deleted = (uint8_t)ev->deleted;
}

/* ---- VM life ------------------------------------------------------------ */

mk_vm *mk_vm_new(void) {
  mk_vm *vm = mkI_xmalloc(sizeof *vm);
  memset(vm, 0, sizeof *vm);
  vm->ix[0] = mk_index_new();
  vm->ix[1] = mk_index_new();
  if (!vm->ix[0] || !vm->ix[1]) { fputs("market: out of memory\n", stderr); abort(); }
  vm->nextpid = 1;
  vm->budget = -1;
  vm->path = mkI_xstrdup("ground");
  ptab_grow(vm);
  etab_grow(vm);
  return vm;
}

void mk_vm_set_hooks(mk_vm *vm, const mk_vm_hooks *hooks) {
  if (hooks) vm->hooks = *hooks; else memset(&vm->hooks, 0, sizeof vm->hooks);
}

void mk_vm_set_crash_hook(mk_vm *vm, mk_crash_hook fn, void *ud) {
  vm->crash = fn;
  vm->crashud = ud;
}

int mk_vm_idle(const mk_vm *vm) { return qev_empty(vm); }
size_t mk_vm_nprocs(const mk_vm *vm) { return vm->nprocs; }
mk_vm *mk_vm_parent(const mk_vm *vm) { return vm->parent; }
mk_proc *mk_vm_self(const mk_vm *vm) { return vm->self; }
const char *mk_vm_path(const mk_vm *vm) { return vm->path; }
void *mk_vm_userdata(const mk_vm *vm) { return vm->userdata; }
void mk_vm_set_userdata(mk_vm *vm, void *ud) { vm->userdata = ud; }

void mk_vm_set_budget(mk_vm *vm, double ms) {
  vm->budget = ms >= 0 ? ms : -1;   /* NaN too: inherit */
}

double mk_vm_budget(const mk_vm *vm) {
  for (; vm != NULL; vm = vm->parent)
    if (vm->budget >= 0) return vm->budget;
  return MK_BUDGET_DEFAULT_MS;
}

/* Append one action (owned from here on) to what the VM above performs. */
static void outbox_push(mk_vm *vm, mk_action *a) {
  if (vm->outtail) vm->outtail->next = a; else vm->outbox = a;
  vm->outtail = a;
}

mk_action *mk_vm_take_outbox(mk_vm *vm) {
  mk_action *a = vm->outbox;
  vm->outbox = vm->outtail = NULL;
  return a;
}

static void drop_queue(mk_vm *vm);

static int by_pid(const void *a, const void *b) {
  mk_pid x = (*(mk_proc *const *)a)->pid, y = (*(mk_proc *const *)b)->pid;
  return x < y ? -1 : x > y;
}

/* Kill one process at a time, oldest first, and let the survivors see it
** go: the VM runs after each kill until nothing is queued.  But a survivor
** that makes an event for every one it gets (a message to itself) would
** keep that run going for ever, its own kill never coming: so the run
** stops after KILL_SLICE_MS, and once one has, the runs after the next
** kills are a few events each (mkI_run_until with a deadline passed).
** What a run leaves is run after the next kill, in order.  Processes
** spawned meanwhile are taken in the next round. */
#define KILL_SLICE_MS 10

void mk_vm_kill_all(mk_vm *vm, mk_term *reason) {
  size_t i;
  uint64_t slice = KILL_SLICE_MS * 1000000u;
  /* The survivors' handlers run meanwhile, and one that spawns a
  ** replacement for each peer that goes (a supervisor) would keep this
  ** going for ever: no spawn is taken while it runs. */
  vm->halting++;
  while (vm->nprocs > 0) {
    size_t n = 0, k;
    mk_proc **all = mkI_xmalloc(vm->nprocs * sizeof *all);
    for (i = 0; i < vm->ptabsize; i++) {
      mk_proc *p;
      for (p = vm->ptab[i]; p; p = p->hnext) { all[n++] = p; p->refs++; }
    }
    qsort(all, n, sizeof *all, by_pid);
    for (k = 0; k < n; k++) {
      mkI_kill(all[k], reason);
      mkI_run_until(vm, mkI_clock() + slice);
      if (!mk_vm_idle(vm)) slice = 0;
    }
    for (k = 0; k < n; k++) proc_unref(all[k]);
    free(all);
  }
  vm->halting--;
}

void mk_vm_free(mk_vm *vm, mk_term *reason) {
  if (vm == NULL) return;
  vm->freeing = 1;
  mk_vm_kill_all(vm, reason);
  if (vm->resident) {
    /* Last: the others' departures may still have made it act. */
    mkI_kill(vm->resident, reason);
    vm->resident = NULL;
  }
  drop_queue(vm);
  mkI_detail_release(vm);    /* before the index: it holds endpoints */
  qblocks_free(vm->qhead);   /* drop_queue left one block, or none */
  qblocks_free(vm->qfree);
  mk_action_free(vm->outbox);
  mk_index_free(vm->ix[0]);
  mk_index_free(vm->ix[1]);
  free(vm->ptab);
  free(vm->etab);
  free(vm->path);
  free(vm->bootname);
  mk_unref(vm->last_reason);
  mkI_trace_release(vm);
  /* A nested VM that never booted still owns its boot data. */
  if (vm->bootb && vm->bootdata) destroy_data(vm, vm->bootb, vm->bootdata);
  free(vm);
}

/* ---- processes ---------------------------------------------------------- */

mk_pid mk_proc_pid(const mk_proc *p) { return p->pid; }
const char *mk_proc_name(const mk_proc *p) { return p->xname == 2 ? NULL : p->name; }

/* Give p the name (NULL: none); with `x`, or when p holds meta names, in
** an mk_procx that keeps them. */
static void set_name(mk_proc *p, const char *name, int x) {
  size_t n = name ? strlen(name) + 1 : 1;
  mk_procx *px;
  if (!x && !p->xname) {
    free(p->name);
    p->name = mkI_xstrdup(name);
    return;
  }
  px = mkI_xmalloc(offsetof(mk_procx, name) + n);
  px->metas = p->xname ? PROCX(p)->metas : NULL;
  px->nmetas = p->xname ? PROCX(p)->nmetas : 0;
  px->metasize = p->xname ? PROCX(p)->metasize : 0;
  px->links = p->xname ? PROCX(p)->links : NULL;
  memcpy(px->name, name ? name : "", n);
  if (p->xname) free(PROCX(p)); else free(p->name);
  p->name = px->name;
  p->xname = name ? 1 : 2;
}

void mk_proc_set_name(mk_proc *p, const char *name) { set_name(p, name, 0); }
mk_vm *mk_proc_vm(const mk_proc *p) { return p->vm; }
void *mk_proc_data(const mk_proc *p) { return p->data; }
int mk_proc_alive(const mk_proc *p) { return !p->dead; }
size_t mk_proc_nendpoints(const mk_proc *p) {
  const mk_endpoint *e;
  size_t n = 0;
  for (e = p->eps; e; e = e->pnext) n++;
  return n;
}

void mk_proc_each_endpoint(const mk_proc *p, mk_endpoint_fn fn, void *ud) {
  const mk_endpoint *e = p->eps;
  const mk_metaname *m;
  uint32_t i, size = p->xname ? PROCX(p)->metasize : 0;
  while (e != NULL && e->pnext != NULL) e = e->pnext;    /* the oldest */
  for (; e != NULL; e = e->pprev) fn(ud, e->name, 0, &e->role);
  for (i = 0; i < size; i++) for (m = PROCX(p)->metas[i]; m; m = m->next) {
    /* The endpoint is named "pid/name" one VM up, owned by the nested-VM
    ** process, and one more "pid/" per level (nested.c). */
    int depth = m->depth, level = 0;
    const char *name = m->name;
    const mk_vm *vm = p->vm;
    mk_pid owner = p->pid;
    char *full;
    if (!m->held) continue;        /* deleted, its absences on their way */
    full = mkI_xstrdup(name);
    for (; level < depth && vm->parent != NULL; level++) {
      size_t n = strlen(full) + 24;
      char *up = mkI_xmalloc(n);
      snprintf(up, n, "%llu/%s", (unsigned long long)owner, full);
      free(full);
      full = up;
      owner = vm->self->pid;
      vm = vm->parent;
    }
    if (level == depth) {
      mk_endpoint *up = mkI_endpoint((mk_vm *)vm, owner, full);
      if (up != NULL && !up->dead) fn(ud, name, depth, &up->role);
    }
    free(full);
  }
}

/* A process record of vm's, placed (xline), held once (alive), pid 0 and
** in no table yet: what spawned and resident processes share. */
static mk_proc *proc_record(mk_vm *vm, const mk_behavior *b, void *data, const char *name) {
  mk_proc *p = xline(sizeof *p, PROC_AT);
  memset(p, 0, sizeof *p);
  p->vm = vm;
  p->name = mkI_xstrdup(name);
  p->b = b;
  p->data = data;
  p->refs = 1;
  return p;
}

static mk_proc *proc_new(mk_vm *vm, const mk_behavior *b, void *data, const char *name) {
  mk_proc *p = proc_record(vm, b, data, name);
  size_t h;
  p->pid = vm->nextpid++;
  if (vm->nprocs + 1 > vm->ptabsize) ptab_grow(vm);
  h = pidslot(vm, p->pid);
  p->hnext = vm->ptab[h];
  vm->ptab[h] = p;
  vm->nprocs++;
  qev_new(vm, p, MK_EV_BOOT);
  if (TRACING(vm)) mkI_trace_proc(p, MK_TK_SPAWN, NULL, NULL, NULL);
  return p;
}

mk_pid mk_vm_spawn(mk_vm *vm, const mk_behavior *b, void *data, const char *name) {
  if (vm->halting) { destroy_data(vm, b, data); return 0; }
  return proc_new(vm, b, data, name)->pid;
}

mk_proc *mk_vm_resident(mk_vm *vm, const mk_behavior *b, void *data, const char *name) {
  mk_proc *p;
  if (vm->resident != NULL) return NULL;
  p = proc_record(vm, b, data, name);   /* pid 0, not vm->nextpid: the
                                        ** program's pids stay as they were */
  p->resident = 1;
  vm->resident = p;
  return p;
}

/* ---- endpoints, presence and absence ------------------------------------ */

/* Can an endpoint of interest `seer` see a peer of interest `seen`? */
static int visible(mk_interest seer, mk_interest seen) {
  return seen == MK_PARTICIPANT || seer == MK_EVERYTHING;
}

typedef struct presence_ctx {
  mk_vm *vm;
  mk_endpoint *e;
  mk_term *reason;
  int absent;
  int tell;                 /* absent: e hears of each peer too (MK_BF_TELL_DELETED) */
  int quiet;                /* e's own presences go unqueued while nothing of
                            ** its process's is (mk_add_endpoint_tagged) */
  const mk_inode *leaf;     /* the last peer's leaf in the index, or NULL, */
  mk_term *met;             /* and the intersection made for it: a reference
                            ** of this walk's, dropped by peers_done */
} presence_ctx;

/* The topic a presence or absence carries: the intersection.  The index
** found the two topics to unify, so when one of them is ground it is the
** intersection itself, shared rather than found again by a walk of both
** (the common case: a concrete topic meeting a pattern).  mk_unify
** ignores the depth limit (term.h), so NULL can only mean memory ran out.
** a's topic is not ground (on_peer shares it when it is). */
static mk_term *refined(const mk_role *a, const mk_role *b) {
  if (b->topic->ground) return mk_ref(b->topic);
  /* Equal patterns (a feed's or a room's members all naming it alike)
  ** are their own intersection: mk_equal compares the hashes first and
  ** walks only when they agree, where a unification walked both twice
  ** (whether they unify, then their merge). */
  if (mk_equal(a->topic, b->topic)) return mk_ref(a->topic);
  return needed(mk_unify(a->topic, b->topic));
}

/* A walk of e's peers (on_peer) begins and ends. */
static void peers_begin(presence_ctx *c, mk_vm *vm, mk_endpoint *e, mk_term *reason,
                        int absent, int tell) {
  c->vm = vm;
  c->e = e;
  c->reason = reason;
  c->absent = absent;
  c->tell = tell;
  c->quiet = 0;
  c->leaf = NULL;
  c->met = NULL;
}

static void peers_done(presence_ctx *c) {
  if (c->met != NULL) mk_unref(c->met);
}

/* Both sides of a pair see the same intersection: it is made once, and
** the last event made takes the reference refined returned.  Peers on one
** leaf of the index have equal topics (route.h), so when e's own topic is
** not ground, the intersection made for the first of them serves the
** rest: a room's or a feed's members, who all name it alike, are each
** told of e without a look at their topics (mk_equal read each one's
** term, a cache miss per peer among thousands). */
static int on_peer(mk_ilink *link, void *ud) {
  presence_ctx *c = ud;
  mk_endpoint *q = (mk_endpoint *)link, *e = c->e;
  /* Unless quiet while nothing of its process's is queued (the first of
  ** them would be its next event, the others behind it: all dropped by
  ** decline_queued, or at delivery). */
  int e_sees = visible(e->role.interest, q->role.interest) && (!c->absent || c->tell) &&
               !(c->quiet && e->proc->pending == 0);
  int q_sees = visible(q->role.interest, e->role.interest);
  mk_event_type type = c->absent ? MK_EV_ABSENCE : MK_EV_PRESENCE;
  mk_term *t;
  if (!e_sees && !q_sees) return 0;
  if (e->role.topic->ground) {
    t = mk_ref(e->role.topic);
  } else if (link->leaf == c->leaf && c->leaf != NULL) {
    t = mk_ref(c->met);
  } else {
    t = refined(&e->role, &q->role);
    if (c->met != NULL) mk_unref(c->met);
    c->met = mk_ref(t);
    c->leaf = link->leaf;
  }
  /* On absence, the endpoint deleted hears of the peer only when its
  ** process asked (Marketplace's delete-endpoint): a process that died
  ** runs no more handlers. */
  if (e_sees) {
    mk_qev *own = enqueue_ep(c->vm, e, type, q_sees ? mk_ref(t) : t, &q->role, c->reason);
    if (own && c->absent) own->deleted = 1;
  }
  if (q_sees) enqueue_ep(c->vm, q, type, t, &e->role, c->reason);
  return 0;
}

/*
** Meta-endpoint names a process holds above it, keyed (depth, name) (depth 1
** = the parent VM).  The depth is part of the key because an endpoint "x"
** one level up and another "x" two levels up are different endpoints:
** deleting one must not make the process look finished while it still
** holds the other.  Each keeps the role it was added with.
**
** A name deleted up there stays until that deletion's MK_EV_DELETED comes
** back down (metaname_deleted), when a process that asked to hear of its
** deletions (MK_BF_TELL_DELETED) has had the deleted endpoint's own
** absences, which come before it: forgotten at once, a process whose last
** endpoint it was looked finished (implicit exit) and was gone before
** they came, where at depth 0 they are queued for it and keep it.  The
** marker always comes: the nested VM above performs the deletion as its
** own, and is told (nested.c).  A name is held again if re-added
** meanwhile, so each deletion's marker is counted.
*/
static uint32_t metahash(int depth, const char *name) {
  uint32_t h = 2166136261u ^ (uint32_t)depth;
  for (; *name; name++) h = (h ^ (unsigned char)*name) * 16777619u;
  return h;
}

static mk_metaname *metaname_find(const mk_proc *p, int depth, const char *name) {
  const mk_procx *px;
  mk_metaname *m;
  if (!p->xname || (px = PROCX(p))->nmetas == 0) return NULL;
  for (m = px->metas[metahash(depth, name) & (px->metasize - 1)]; m; m = m->next)
    if (m->depth == depth && strcmp(m->name, name) == 0) return m;
  return NULL;
}

/* Twice the buckets, once there are more records than buckets. */
static void metaname_grow(mk_procx *px) {
  uint32_t size = px->metasize ? 2 * px->metasize : 8, i;
  mk_metaname **t = mkI_xmalloc(size * sizeof *t), *m, *mn;
  memset(t, 0, size * sizeof *t);
  for (i = 0; i < px->metasize; i++)
    for (m = px->metas[i]; m; m = mn) {
      mk_metaname **b = &t[metahash(m->depth, m->name) & (size - 1)];
      mn = m->next;
      m->next = *b;
      *b = m;
    }
  free(px->metas);
  px->metas = t;
  px->metasize = size;
}

/* Track (depth, name) with its role: -1, and nothing changed, when p holds
** that name there with another role (re-adding it is p's error, §1).  A
** name deleted and not yet heard of is held again, with the new role. */
static int metaname_add(mk_proc *p, int depth, const char *name, mk_role role) {
  mk_metaname *m = metaname_find(p, depth, name);
  size_t n = strlen(name) + 1;
  if (m != NULL && m->held) return mk_role_equal(m->role, role) ? 0 : -1;
  if (m != NULL) {
    mk_unref(m->role.topic);                  /* deleted: the new role now */
  } else {
    mk_procx *px;
    mk_metaname **b;
    if (!p->xname) set_name(p, p->name, 1);  /* its first: move the name */
    px = PROCX(p);
    if (px->nmetas + 1 > px->metasize) metaname_grow(px);
    m = mkI_xmalloc(sizeof *m + n);
    m->deleting = 0;
    m->depth = depth;
    memcpy(m->name, name, n);
    b = &px->metas[metahash(depth, name) & (px->metasize - 1)];
    m->next = *b;
    *b = m;
    px->nmetas++;
  }
  m->role = role;
  m->role.topic = mk_ref(role.topic);
  m->held = 1;
  return 0;
}

static void metaname_unlink(mk_proc *p, mk_metaname *m) {
  mk_procx *px = PROCX(p);
  mk_metaname **pp = &px->metas[metahash(m->depth, m->name) & (px->metasize - 1)];
  while (*pp != m) pp = &(*pp)->next;
  *pp = m->next;
  px->nmetas--;
  metaname_free(m);
}

/* p deleted (depth, name) up there (MK_A_DELETE).  A name it does not hold
** has no endpoint there, so no marker will come for it. */
static void metaname_delete(mk_proc *p, int depth, const char *name) {
  mk_metaname *m = metaname_find(p, depth, name);
  if (m == NULL || !m->held) return;
  m->held = 0;
  if (p->b->flags & MK_BF_TELL_DELETED) m->deleting++;   /* until its marker */
  else metaname_unlink(p, m);                   /* it hears nothing of it */
}

/* The MK_EV_DELETED of a deletion p made up there has come down: the
** endpoint's own absences are all in. */
static void metaname_deleted(mk_proc *p, int depth, const char *name) {
  mk_metaname *m = metaname_find(p, depth, name);
  if (m == NULL || m->deleting == 0) return;
  if (--m->deleting == 0 && !m->held) metaname_unlink(p, m);
}

/* Forget every (d, name...) with d >= depth and the name starting with
** prefix (MK_A_DROP: a dead child's endpoints go at every level it held
** them), and any deletion of them still to come back: its marker will
** find no child to go to. */
static void metaname_drop(mk_proc *p, int depth, const char *prefix) {
  mk_procx *px;
  size_t n = strlen(prefix);
  uint32_t i;
  if (!p->xname) return;
  px = PROCX(p);
  for (i = 0; i < px->metasize; i++) {
    mk_metaname **pp = &px->metas[i];
    while (*pp) {
      mk_metaname *m = *pp;
      if (m->depth >= depth && strncmp(m->name, prefix, n) == 0) {
        *pp = m->next;
        px->nmetas--;
        metaname_free(m);
      } else {
        pp = &m->next;
      }
    }
  }
}

/* The highest level above p where it holds endpoints (0: none).  Names
** deleted there do not count: their deletion is on its way up before
** anything p does next. */
static int metaname_levels(const mk_proc *p) {
  const mk_metaname *m;
  uint32_t i, size = p->xname ? PROCX(p)->metasize : 0;
  int most = 0;
  for (i = 0; i < size; i++)
    for (m = PROCX(p)->metas[i]; m; m = m->next)
      if (m->held && m->depth > most) most = m->depth;
  return most;
}

/* Spawn continuations in an at_meta_level list: p waits for them. */
static uint32_t upconts(const mk_action *list) {
  uint32_t n = 0;
  for (; list; list = list->next) {
    if (list->type == MK_A_SPAWN && list->cont != NULL) n++;
    else if (list->type == MK_A_META) n += upconts(list->list);
  }
  return n;
}

/* Track what the at_meta_level list at *pp adds and deletes above p, in
** order.  Recurses into nested MK_A_META lists (two or more levels up):
** without that, a process whose only endpoints are two levels up was taken
** for finished (implicit exit) right after the handler that added them.
** An add that re-adds a name p holds at that level with another role ends
** the list: it and every action after it, at its level and at each level
** around it, are cut off and freed, and its name comes back (owned) for
** p's error.  Found here, where p made the action, p is the one to fail;
** the VM above would find it on the nested-VM process that performs it,
** and end the whole VM (DESIGN §1: never the VM). */
static char *metaname_track(mk_proc *p, mk_action **pp, int depth) {
  char *clash;
  for (; *pp != NULL; pp = &(*pp)->next) {
    mk_action *a = *pp;
    if (a->type == MK_A_ADD) {
      if (metaname_add(p, depth, a->name, a->role) != 0) {
        clash = mkI_xstrdup(a->name);
        *pp = NULL;
        mk_action_free(a);
        return clash;
      }
    } else if (a->type == MK_A_DELETE) {
      metaname_delete(p, depth, a->name);
    } else if (a->type == MK_A_DROP) {
      metaname_drop(p, depth, a->name);
    } else if (a->type == MK_A_META && (clash = metaname_track(p, &a->list, depth + 1))) {
      mk_action_free(a->next);
      a->next = NULL;
      return clash;
    }
  }
  return NULL;
}

/* The levels above its VM that an at_meta_level list reaches: 1, and one
** more for each at_meta_level nested in it; counted up to limit + 1 only,
** so that it recurses no deeper than there are VMs above (a host's list
** nested 100,000 levels ran the C stack out). */
static int meta_reach(const mk_action *list, int limit) {
  int most = 0;
  if (limit <= 0) return 1;
  for (; list; list = list->next)
    if (list->type == MK_A_META) {
      int r = meta_reach(list->list, limit - 1);
      if (r > most) most = r;
    }
  return most + 1;
}

/* Whether a list does anything: not when it holds only empty
** at_meta_level lists (what a cut at its first action leaves). */
static int meta_acts(const mk_action *list) {
  for (; list; list = list->next)
    if (list->type != MK_A_META || meta_acts(list->list)) return 1;
  return 0;
}

int mk_tag_endpoint(mk_proc *p, const char *name, uint32_t tag) {
  mk_endpoint *e;
  if (p->dead) return -1;
  /* Tagged right after it was added, at the head of p's list: the name
  ** table's chain is a cache miss or more in a VM of many endpoints. */
  e = p->eps;
  if (e == NULL || strcmp(e->name, name) != 0) e = mkI_endpoint(p->vm, p->pid, name);
  if (e == NULL) return -1;
  e->tag = tag;
  return 0;
}

/* The name of every lifeline (vm.h), at an address of vm.c's own. */
static const char lifeline_name[] = MK_LIFELINE_ENDPOINT;

/* ---- lifelines (vm.h) ---------------------------------------------------- */

static int is_lifeline(const mk_term *t) {
  return mk_kindof(t) == MK_REC && t->n == 1 &&
         t->v.rt->labellen == sizeof MK_LIFELINE_LABEL - 1 &&
         memcmp(t->v.rt->label, MK_LIFELINE_LABEL, sizeof MK_LIFELINE_LABEL - 1) == 0;
}

/* Tell subscriber e alone that the lifeline it asked for came and went
** with `why`: the VM cannot publish it. */
static void lifeline_refused(mk_vm *vm, mk_endpoint *e, const char *why) {
  mk_role peer;
  mk_term *reason = mk_cstr(why);
  peer.orientation = MK_PUBLISHER;
  peer.interest = MK_PARTICIPANT;
  peer.topic = e->role.topic;
  enqueue_ep(vm, e, MK_EV_PRESENCE, mk_ref(e->role.topic), &peer, NULL);
  enqueue_ep(vm, e, MK_EV_ABSENCE, mk_ref(e->role.topic), &peer, reason);
  mk_unref(reason);
}

/* Subscriber e was just added with a lifeline record for its topic: publish
** it from the process it names, once, or say why not.  The endpoint is
** added as the process's own would be, so the subscribers present (e
** among them) hear of it as of any publisher: only it hears nothing. */
static void lifeline_wanted(mk_vm *vm, mk_endpoint *e) {
  const mk_term *f = mk_items(e->role.topic)[0];
  mk_proc *q;
  mk_endpoint *l;
  mk_role role;
  if (mk_kindof(f) != MK_INT) return;                 /* a pattern: nobody's */
  q = f->v.i > 0 ? mk_vm_proc(vm, (mk_pid)f->v.i) : NULL;
  if (q == NULL || q->dead) { lifeline_refused(vm, e, "no such process"); return; }
  l = mkI_endpoint(vm, q->pid, lifeline_name);
  if (l != NULL) {
    if (!l->lifeline)
      lifeline_refused(vm, e, "the process holds an endpoint named '"
                              MK_LIFELINE_ENDPOINT "' of its own");
    return;                                           /* published already */
  }
  role.orientation = MK_PUBLISHER;
  role.interest = MK_PARTICIPANT;
  role.topic = e->role.topic;
  if (mk_add_endpoint(q, lifeline_name, 0, role) == 0) q->lifeline = 1;
}

/* ---- links (vm.h) -------------------------------------------------------- */

int mk_link(mk_proc *p, mk_pid to, mk_pid who) {
  mk_vm *vm = p->vm;
  mk_proc *w, *t;
  mk_endpoint *e;
  mk_rtype *rt;
  mk_role role;
  char name[sizeof MK_LINK_ENDPOINT + 24];        /* "/" and a pid */
  int r;
  if (p->dead) return -1;
  w = who == 0 ? p : mk_vm_proc(vm, who);
  if (w == NULL || w->dead || w->resident) return -1;
  t = to > 0 ? mk_vm_proc(vm, to) : NULL;
  if (t == NULL || t->dead) {
    /* It ended before the link: the link's kill, as if it came after. */
    mk_term *r = termf("linked process %llu ended: \"no such process\"", (unsigned long long)to);
    mkI_kill(w, r);
    mk_unref(r);
    return 0;
  }
  e = mkI_endpoint(vm, t->pid, lifeline_name);
  if (e != NULL && !e->lifeline) {
    mk_failf(w, "cannot link to process %llu: it holds an endpoint named '"
                MK_LIFELINE_ENDPOINT "' of its own", (unsigned long long)to);
    return 0;
  }
  snprintf(name, sizeof name, MK_LINK_ENDPOINT "/%llu", (unsigned long long)to);
  e = mkI_endpoint(vm, w->pid, name);
  if (e != NULL) {
    if (!e->islink)
      mk_failf(w, "cannot link to process %llu: the process holds an endpoint named '%s' "
                  "of its own", (unsigned long long)to, name);
    return 0;                                     /* linked already */
  }
  /* No field names: they would have to be the first declaration's, and
  ** the type is the same whatever they are. */
  rt = mk_rtype_get(MK_LIFELINE_LABEL, sizeof MK_LIFELINE_LABEL - 1, 1, NULL);
  role.orientation = MK_SUBSCRIBER;
  role.interest = MK_OBSERVER;
  role.topic = rt ? mk_rec(rt, mk_int((int64_t)to)) : NULL;
  mk_rtype_unref(rt);
  /* Added as any subscriber to the lifeline, which makes the lifeline;
  ** then moved from w's endpoints, at their head, to its links before it
  ** hears anything (deliver reads `islink` when the events come). */
  r = mk_add_endpoint(w, name, 0, role);
  mk_unref(role.topic);
  if (r != 0) return 0;                           /* w failed, saying why */
  e = w->eps;
  w->eps = e->pnext;
  if (w->eps) w->eps->pprev = NULL;
  if (!w->xname) set_name(w, w->name, 1);
  e->islink = 1;
  e->pnext = PROCX(w)->links;
  if (e->pnext) e->pnext->pprev = e;
  PROCX(w)->links = e;
  return 0;
}


/* mk_add_endpoint, and with `tag` (not NULL) mk_add_endpoint_tagged. */
static int add(mk_proc *p, const char *name, int meta, mk_role role, const uint32_t *tag,
               int quiet) {
  mk_vm *vm = p->vm;
  mk_endpoint *e;
  presence_ctx c;
  size_t n;
  int placed;
  uint32_t h;
  if (p->dead) return -1;
  if (name == NULL) { mk_failf(p, "an endpoint has no name (NULL)"); return -1; }
  /* The enums come from C callers as ints: one out of range would index
  ** past vm->ix, or make an endpoint no interest test knows. */
  if ((unsigned)role.orientation > MK_SUBSCRIBER || (unsigned)role.interest > MK_EVERYTHING) {
    mk_failf(p, "endpoint '%s': orientation %d or interest %d out of range", name,
             (int)role.orientation, (int)role.interest);
    return -1;
  }
  if (role.topic == NULL) { mk_failf(p, "endpoint '%s' has no topic", name); return -1; }
  if (mk_term_size(role.topic) > MK_TERM_SIZE_MAX) {   /* see nobody() */
    mk_failf(p, "endpoint '%s': a topic of more than %lu nodes", name,
             (unsigned long)MK_TERM_SIZE_MAX);
    return -1;
  }
  if (meta) {
    /* Performed one level up when this VM's turn ends. */
    mk_action *a = mk_action_add(name, role);
    if (vm->parent == NULL) {
      mk_action_free(a);
      mk_failf(p, "at_meta_level in the ground VM: no VM above it (endpoint '%s')", name);
      return -1;
    }
    return mk_at_meta_level(p, a);      /* tracks the name (metaname_track) */
  }
  /* A process that holds no endpoint (its lists are empty and it has no
  ** lifeline) has none of that name: a spawned process's first add, where
  ** a look in the name table was a chain of cache misses in a VM of many
  ** endpoints (issue 10). */
  e = p->eps == NULL && !p->lifeline && !(p->xname && PROCX(p)->links)
          ? NULL : mkI_endpoint(vm, p->pid, name);
  if (e != NULL) {
    if (mk_role_equal(e->role, role)) {
      if (tag != NULL) e->tag = *tag;
      return 1;
    }
    mk_failf(p, "endpoint '%s' re-added with a different role", name);
    return -1;
  }
  n = strlen(name) + 1;
  /* The lifeline hears nothing from the start, its first presence events
  ** included: it is told by its name's address, which only vm.c has (an
  ** argument more cost every add a function call). */
  placed = name != lifeline_name && role.orientation == MK_SUBSCRIBER &&
           role.interest == MK_PARTICIPANT;
  e = placed ? xline(EP_SIZE(n), EP_AT) : xpool(EP_SIZE(n));
  memset(e, 0, offsetof(mk_endpoint, name));
  memcpy(e->name, name, n);
  e->proc = p;
  e->refs = 1;
  e->placed = (uint8_t)placed;
  e->lifeline = name == lifeline_name;
  e->role = role;
  e->role.topic = mk_ref(role.topic);
  if (tag != NULL) e->tag = *tag;
  h = ephash(p->pid, name);
  /* Chains of two on average: the table is looked up when endpoints come
  ** and go, never per message, and at one slot per endpoint it cost 8 to
  ** 16 bytes of each (about ten per idle connection; issue 10). */
  if (vm->neps + 1 > 2 * vm->etabsize) etab_grow(vm);
  e->hnext = vm->etab[h & (vm->etabsize - 1)];
  vm->etab[h & (vm->etabsize - 1)] = e;
  vm->neps++;
  if (!e->lifeline) {     /* a lifeline is not the process's own: off its list */
    e->pnext = p->eps;
    if (p->eps) p->eps->pprev = e;
    p->eps = e;
  }
  if (TRACING(vm)) mkI_trace_proc(p, MK_TK_ADD, name, &e->role, NULL);
  peers_begin(&c, vm, e, NULL, 0, 0);
  c.quiet = quiet && !TRACING(vm);
  mk_index_match(vm->ix[!role.orientation], role.topic, on_peer, &c);
  peers_done(&c);
  if (mk_index_add(vm->ix[role.orientation], role.topic, &e->link) != 0) {
    fputs("market: out of memory\n", stderr);
    abort();
  }
  if (role.orientation == MK_SUBSCRIBER) {
    if (vm->hooks.subscribed && role.interest == MK_PARTICIPANT)
      vm->hooks.subscribed(vm, role.topic, e, vm->hooks.ud);
    if (is_lifeline(role.topic)) lifeline_wanted(vm, e);
  }
  return 0;
}

int mk_add_endpoint(mk_proc *p, const char *name, int meta, mk_role role) {
  return add(p, name, meta, role, NULL, 0);
}

int mk_add_endpoint_tagged(mk_proc *p, const char *name, mk_role role, uint32_t tag,
                           int quiet) {
  return add(p, name, 0, role, &tag, quiet);
}

/* Withdraw e; `tell`: an explicit deletion by a process that asked to
** hear of it (MK_BF_TELL_DELETED). */
static void endpoint_remove(mk_endpoint *e, mk_term *reason, int tell) {
  mk_proc *p = e->proc;
  mk_vm *vm = p->vm;
  presence_ctx c;
  if (TRACING(vm)) mkI_trace_proc(p, MK_TK_DELETE, e->name, &e->role, reason);
  e->dead = 1;
  mk_index_remove(vm->ix[e->role.orientation], &e->link);
  etab_remove(vm, e);
  if (e->pprev) e->pprev->pnext = e->pnext;
  else if (p->eps == e) p->eps = e->pnext;
  else if (e->islink) PROCX(p)->links = e->pnext;
  if (e->pnext) e->pnext->pprev = e->pprev;
  peers_begin(&c, vm, e, reason, 1, tell);
  mk_index_match(vm->ix[!e->role.orientation], e->role.topic, on_peer, &c);
  peers_done(&c);
  if (tell) enqueue_ep(vm, e, MK_EV_DELETED, NULL, NULL, NULL);
  if (vm->hooks.unsubscribed && e->role.orientation == MK_SUBSCRIBER &&
      e->role.interest == MK_PARTICIPANT)
    vm->hooks.unsubscribed(vm, e->role.topic, vm->hooks.ud);
  ep_unref(e);
}

int mk_delete_endpoint(mk_proc *p, const char *name, int meta, mk_term *reason) {
  mk_endpoint *e;
  if (p->dead) return -1;
  if (meta) {
    if (p->vm->parent == NULL) {
      mk_failf(p, "at_meta_level in the ground VM: no VM above it (endpoint '%s')", name);
      return -1;
    }
    return mk_at_meta_level(p, mk_action_delete(name, reason));   /* untracks it */
  }
  e = mkI_endpoint(p->vm, p->pid, name);
  if (e == NULL && p->b == &mk_nested_behavior) {
    /* A child's deletion at meta level of what is not here (it never
    ** came, or went another way): the child waits for the marker all
    ** the same (metaname_delete), so it comes, bare, or the child, its
    ** last endpoint gone, was kept for ever. */
    mk_qev *q = qev_new(p->vm, p, MK_EV_DELETED);
    q->name = mkI_xstrdup(name);
    return -1;
  }
  if (e == NULL || e->lifeline || e->islink) return -1;   /* they go with their process */
  endpoint_remove(e, reason, (p->b->flags & MK_BF_TELL_DELETED) != 0);
  return 0;
}

/* ---- messages ----------------------------------------------------------- */

typedef struct send_ctx {
  mk_vm *vm;
  mk_term *body;
} send_ctx;

static int on_receiver(mk_ilink *link, void *ud) {
  send_ctx *c = ud;
  mk_endpoint *e = (mk_endpoint *)link;
  enqueue_ep(c->vm, e, MK_EV_MESSAGE, mk_ref(c->body), &e->role, NULL);
  return 0;
}

static void route(mk_vm *vm, mk_term *body, int feedback, mk_match_slot *slot) {
  send_ctx c;
  mk_index *ix = vm->ix[feedback ? MK_PUBLISHER : MK_SUBSCRIBER];
  c.vm = vm;
  c.body = body;
  /* send reaches subscribers; feedback reaches publishers. */
  if (slot != NULL) mk_index_match_slot(ix, slot, body, on_receiver, &c);
  else mk_index_match(ix, body, on_receiver, &c);
}

/* A C process whose message could not be built fails, rather than crash
** the VM: term builders return NULL past the depth or size limit.  So
** does one that sends a unifier bigger than any term may be: routing and
** presence are linear in a term's size only up to MK_TERM_SIZE_MAX (and
** the unifier of two such is the biggest a term can get). */
static int nobody(mk_proc *p, mk_term *body, const char *what) {
  if (body == NULL) {
    mk_failf(p, "%s: no message (a term past the depth or size limit, or out of memory)", what);
    return 1;
  }
  if (mk_term_size(body) > MK_TERM_SIZE_MAX) {
    mk_failf(p, "%s: a term of more than %lu nodes", what, (unsigned long)MK_TERM_SIZE_MAX);
    return 1;
  }
  return 0;
}

static inline void sendwith(mk_proc *p, mk_term *body, mk_match_slot *slot) {
  if (p->dead || nobody(p, body, "send")) return;
  if (TRACING(p->vm)) mkI_trace_proc(p, MK_TK_SEND, NULL, NULL, body);
  if (p->vm->detail) mkI_detail_send(p, body);
  route(p->vm, body, 0, slot);
}

void mk_send(mk_proc *p, mk_term *body) { sendwith(p, body, NULL); }
void mk_send_slot(mk_proc *p, mk_term *body, mk_match_slot *slot) { sendwith(p, body, slot); }

void mk_feedback(mk_proc *p, mk_term *body) {
  if (p->dead || nobody(p, body, "feedback")) return;
  if (TRACING(p->vm)) mkI_trace_proc(p, MK_TK_FEEDBACK, NULL, NULL, body);
  route(p->vm, body, 1, NULL);
}

void mk_vm_tell(mk_vm *vm, mk_endpoint *ep, mk_term *body) {
  if (ep == NULL || ep->dead || body == NULL) return;
  enqueue_ep(vm, ep, MK_EV_MESSAGE, mk_ref(body), &ep->role, NULL);
}

void mk_vm_send_slot(mk_vm *vm, mk_term *body, int feedback, mk_match_slot *slot) {
  if (body != NULL) route(vm, body, feedback, slot);
}

void mk_vm_send(mk_vm *vm, mk_term *body, int feedback) {
  mk_vm_send_slot(vm, body, feedback, NULL);
}

/* ---- spawn, quit, yield, meta ------------------------------------------- */

mk_pid mk_spawn(mk_proc *p, const mk_behavior *b, void *data, const char *name, void *cont) {
  mk_proc *child;
  mk_qev *q;
  if (p->dead || p->vm->halting) {     /* halting: see mk_vm_kill_all */
    destroy_data(p->vm, b, data);
    if (cont && p->b->release_cont) p->b->release_cont(p, cont);
    return 0;
  }
  child = proc_new(p->vm, b, data, name);
  if (cont) {
    q = qev_new(p->vm, p, MK_EV_SPAWNED);
    q->cont = cont;
    q->pid = child->pid;
    p->conts++;
  }
  return child->pid;
}

void mkI_kill(mk_proc *p, mk_term *reason) {
  mk_vm *vm = p->vm;
  if (p->dead) return;
  p->dead = 1;
  if (TRACING(vm) && !p->resident) mkI_trace_proc(p, MK_TK_QUIT, NULL, NULL, reason);
  while (p->eps) endpoint_remove(p->eps, reason, 0);
  if (p->lifeline) endpoint_remove(mkI_endpoint(vm, p->pid, lifeline_name), reason, 0);
  if (p->xname) {
    int levels;
    while (PROCX(p)->links) endpoint_remove(PROCX(p)->links, reason, 0);
    /* Not for names only deleted up there: the deletion went up first. */
    levels = metaname_levels(p);
    if (levels > 0 && vm->parent) {
      /* Its endpoints above go with it, at every level, carrying the same
      ** reason: each nested VM on the way performs the drop and passes it
      ** up while levels remain (nested.c). */
      char prefix[32];
      snprintf(prefix, sizeof prefix, "%llu/", (unsigned long long)p->pid);
      outbox_push(vm, mkI_drop(prefix, reason, levels));
    }
  }
  if (!p->resident) ptab_remove(vm, p);
  if (vm->parent != NULL && !vm->halting) {
    /* A nested VM ends with its last process, and with its reason: a
    ** crash there is the VM's failure, which a supervisor of the VM or a
    ** monitor above must see (nested.c). */
    mk_term *old = vm->last_reason;
    vm->last_reason = mk_ref(reason);
    mk_unref(old);
  }
  if (vm->detail) mkI_detail_gone(p);
  if (p->b == &mk_nested_behavior && p->data != NULL)
    /* Its VM goes with it: the processes inside see each other go with
    ** this reason (DESIGN §1 "its VM goes"), not with the nil that
    ** mk_vm_free gives when destroy frees the VM later (nested_spec). */
    mk_vm_kill_all((mk_vm *)p->data, reason);
  proc_unref(p);
}

int mk_quit(mk_proc *p, mk_pid pid, mk_term *reason) {
  mk_proc *victim;
  if (p->dead) return -1;
  if (pid == 0 || pid == p->pid) { mkI_kill(p, reason); return 0; }
  victim = mk_vm_proc(p->vm, pid);
  if (victim == NULL) return -1;
  mkI_kill(victim, reason);
  return 0;
}

int mk_vm_kill(mk_vm *vm, mk_pid pid, mk_term *reason) {
  mk_proc *victim = mk_vm_proc(vm, pid);
  if (victim == NULL) return -1;
  mkI_kill(victim, reason);
  return 0;
}

void mk_fail(mk_proc *p, mk_term *reason) {
  if (!p->dead && p->vm->crash != NULL) p->vm->crash(p->vm->crashud, p, reason);
  mkI_kill(p, reason);
}

void mk_failf(mk_proc *p, const char *fmt, ...) {
  va_list ap;
  mk_term *r;
  va_start(ap, fmt);
  r = vtermf(fmt, ap);
  va_end(ap);
  mk_fail(p, r);
  mk_unref(r);
}

/* p ends as a process it was linked to ended, with `why` (vm.h, links).
** That is a kill, as quit(pid) is, whatever `why` is: no crash report, no
** failure for `market --strict`.  If the end was a crash, its own report
** says so, once; a supervisor tree stopped in order is quiet. */
static void link_ended(mk_proc *p, long long pid, const mk_term *why) {
  char *shown = repr(why);
  mk_term *r = termf("linked process %lld ended: %s", pid, shown);
  free(shown);
  mkI_kill(p, r);
  mk_unref(r);
}

void mk_yield(mk_proc *p, void *cont) {
  mk_qev *q;
  if (p->dead) {
    if (cont && p->b->release_cont) p->b->release_cont(p, cont);
    return;
  }
  q = qev_new(p->vm, p, MK_EV_RESUME);
  q->cont = cont;
  p->conts++;
}

static void check_exit(mk_proc *p);

/* A wake-up expected counts as a pending continuation (check_exit), and
** the one mk_wake queues takes its place: deliver uncounts it. */
void mk_expect(mk_proc *p) {
  p->conts++;
}

void mk_unexpect(mk_proc *p) {
  p->conts--;
  check_exit(p);
}

void mk_wake(mk_proc *p, void *cont) {
  mk_vm *vm = p->vm;
  mk_qev *q;
  if (p->dead) {
    p->conts--;
    if (cont && p->b->release_cont) p->b->release_cont(p, cont);
    return;
  }
  q = qev_new(vm, p, MK_EV_RESUME);
  q->cont = cont;
  /* A nested VM runs when its process has an event in the VM above
  ** (nested.c): a resume with no token does nothing but that. */
  for (; vm->parent != NULL && vm->self != NULL && !vm->self->dead; vm = vm->parent) {
    qev_new(vm->parent, vm->self, MK_EV_RESUME);
    vm->self->conts++;
  }
}

int mk_at_meta_level(mk_proc *p, mk_action *list) {
  mk_vm *vm = p->vm, *up;
  mk_action *a;
  char *clash;
  int levels = 0;
  if (p->dead) { mk_action_free(list); return -1; }
  /* An action aimed above the ground VM fails here, in the process that
  ** made it, however deep: found one level up, it failed the nested-VM
  ** process that passed it on, and all that VM's processes with it. */
  for (up = vm->parent; up != NULL; up = up->parent) levels++;
  if (levels < meta_reach(list, levels)) {
    mk_action_free(list);
    mk_failf(p, "at_meta_level in the ground VM: there is no VM above it");
    return -1;
  }
  if (TRACING(vm)) mkI_trace_proc(p, MK_TK_AT_META_LEVEL, NULL, NULL, NULL);
  /* Track what this process holds above, so that it is not taken for
  ** finished while it still has endpoints there; a re-add with another
  ** role cuts the list there, and p fails after what came before it is
  ** on its way up, as an action that fails in this VM ends p after its
  ** earlier actions (§5). */
  clash = metaname_track(p, &list, 1);
  if (clash == NULL || meta_acts(list)) {
    a = mk_action_meta(list);
    a->pid = p->pid;
    /* And not while a pid it asked for is on its way back (nested.c). */
    p->conts += upconts(list);
    outbox_push(vm, a);
  } else {
    mk_action_free(list);
  }
  if (clash != NULL) {
    mk_failf(p, "endpoint '%s' re-added with a different role", clash);
    free(clash);
    return -1;
  }
  return 0;
}

/* ---- action values ------------------------------------------------------ */

static mk_action *action_new(mk_action_type t) {
  mk_action *a = mkI_xmalloc(sizeof *a);
  memset(a, 0, sizeof *a);
  a->type = t;
  return a;
}

mk_action *mkI_drop(const char *prefix, mk_term *reason, int levels) {
  mk_action *a = action_new(MK_A_DROP);
  a->name = mkI_xstrdup(prefix);
  a->term = mk_ref(reason);
  a->levels = levels;
  return a;
}

mk_action *mk_action_spawn(const mk_behavior *b, void *data, const char *name) {
  mk_action *a = action_new(MK_A_SPAWN);
  a->b = b;
  a->data = data;
  a->name = mkI_xstrdup(name);
  return a;
}

mk_action *mk_action_spawn_k(const mk_behavior *b, void *data, const char *name, void *cont) {
  mk_action *a = mk_action_spawn(b, data, name);
  a->cont = cont;
  return a;
}

mk_action *mk_action_quit(mk_term *reason) {
  mk_action *a = action_new(MK_A_QUIT);
  a->term = mk_ref(reason);
  return a;
}

mk_action *mk_action_add(const char *name, mk_role role) {
  mk_action *a = action_new(MK_A_ADD);
  a->name = mkI_xstrdup(name);
  a->role = role;
  a->role.topic = mk_ref(role.topic);
  return a;
}

mk_action *mk_action_delete(const char *name, mk_term *reason) {
  mk_action *a = action_new(MK_A_DELETE);
  a->name = mkI_xstrdup(name);
  a->term = mk_ref(reason);
  return a;
}

mk_action *mk_action_send(mk_term *body) {
  mk_action *a = action_new(MK_A_SEND);
  a->term = mk_ref(body);
  return a;
}

mk_action *mk_action_feedback(mk_term *body) {
  mk_action *a = action_new(MK_A_FEEDBACK);
  a->term = mk_ref(body);
  return a;
}

mk_action *mk_action_meta(mk_action *list) {
  mk_action *a = action_new(MK_A_META);
  a->list = list;
  return a;
}

mk_action *mk_action_append(mk_action *a, mk_action *b) {
  mk_action *t;
  if (a == NULL) return b;
  for (t = a; t->next; t = t->next) {}
  t->next = b;
  return a;
}

static void action_free1(mk_action *a) {
  if (a->type == MK_A_SPAWN && a->data) destroy_data(NULL, a->b, a->data);
  if (a->type == MK_A_SPAWN && a->cont_wrapped) mkI_cont_free(a->cont);
  mk_unref(a->role.topic);
  mk_unref(a->term);
  free(a->name);
  free(a);
}

/* Without recursion: an at_meta_level's list is put before the rest, so
** that an action nested 100,000 levels deep (a host's, or Lua's before
** market.at_meta_level refused one past MK_NEST_MAX) does not run the C
** stack out. */
void mk_action_free(mk_action *a) {
  while (a) {
    mk_action *n = a->next;
    if (a->list != NULL) {
      mk_action *t = a->list;
      while (t->next) t = t->next;
      t->next = n;
      n = a->list;
      a->list = NULL;
    }
    action_free1(a);
    a = n;
  }
}

/* Perform one action node on behalf of p (a nested-VM process performing
** what its children made at meta level).  Consumes the node. */
void mkI_perform(mk_proc *p, mk_action *a) {
  a->next = NULL;
  switch (a->type) {
    case MK_A_SPAWN:
      /* A continuation here is a wrapped one (nested.c): p is the nested
      ** VM that will pass the new pid down to the child who asked. */
      mk_spawn(p, a->b, a->data, a->name, a->cont);
      a->data = NULL;
      a->cont = NULL;
      a->cont_wrapped = 0;
      break;
    case MK_A_QUIT: mk_quit(p, 0, a->term); break;
    case MK_A_ADD: mk_add_endpoint(p, a->name, 0, a->role); break;
    case MK_A_DELETE: mk_delete_endpoint(p, a->name, 0, a->term); break;
    case MK_A_SEND: mk_send(p, a->term); break;
    case MK_A_FEEDBACK: mk_feedback(p, a->term); break;
    case MK_A_META: mk_at_meta_level(p, a->list); a->list = NULL; break;
    case MK_A_DROP: {
      size_t n = strlen(a->name);
      mk_endpoint *e = p->eps, *nx;
      for (; e; e = nx) {
        nx = e->pnext;
        if (strncmp(e->name, a->name, n) == 0) endpoint_remove(e, a->term, 0);
      }
      break;
    }
  }
  action_free1(a);
}

/* ---- running ------------------------------------------------------------ */

static void check_exit(mk_proc *p) {
  /* Implicit exit: nothing to listen on here or above, nothing due.
  ** Not for a nested VM: it ends when its last process does (nested.c
  ** quits it then, DESIGN §1).  Judged by its own endpoints, a nested VM
  ** whose processes talk only among themselves (or whose last child with
  ** meta endpoints crashed while siblings live on) was killed with all
  ** its live processes.  A lifeline (vm.h) is not on p's list of
  ** endpoints: one that holds nothing else has finished. */
  if (p->b == &mk_nested_behavior || p->resident) return;
  if (!p->dead && p->eps == NULL && (!p->xname || PROCX(p)->nmetas == 0) &&
      p->pending == 0 && p->conts == 0 && !p->in_handle)
    mkI_kill(p, NULL);
}

/* Event q, which p does not hear, is dropped; if it is the absence of
** the lifeline a link of p watches, p goes too (vm.h), unless the VM is
** being emptied. */
static void dropped(mk_proc *p, const mk_qev *q) {
  mk_endpoint *e = q->ep;
  if (q->type == MK_EV_ABSENCE && e != NULL && e->islink && !e->dead && !p->dead &&
      !p->vm->halting) {
    link_ended(p, (long long)mk_items(e->role.topic)[0]->v.i, q->reason);
  }
  if (q->cont && p->b->release_cont) p->b->release_cont(p, q->cont);
}

/* The event in slot q as handle gets it (borrowing from q): every field
** set, so no memset. */
static inline void event_of(const mk_qev *q, mk_event *ev) {
  ev->type = (mk_event_type)q->type;
  ev->endpoint = q->ep ? q->ep->name : q->name;
  ev->meta = q->meta;
  ev->role.orientation = (mk_orientation)q->orientation;
  ev->role.interest = (mk_interest)q->interest;
  if (q->type == MK_EV_MESSAGE) {
    ev->message = q->term;
    ev->role.topic = q->ep ? q->ep->role.topic : q->topic;
  } else {
    ev->message = NULL;
    ev->role.topic = q->term;
  }
  ev->reason = q->reason;
  ev->pid = q->pid;
  ev->cont = q->cont;
  ev->tag = q->ep ? q->ep->tag : 0;
  ev->deleted = q->deleted;
}

/* The trace line of an event delivered to p (not a boot: its spawn has one). */
static void trace_event(mk_proc *p, const mk_event *ev) {
  _Static_assert(MK_TK_DELETED - MK_TK_PRESENCE == MK_EV_DELETED - MK_EV_PRESENCE,
                 "the kinds of event lines follow mk_event_type");
  mkI_trace_proc(p, MK_TK_PRESENCE + ev->type - MK_EV_PRESENCE, ev->endpoint,
                 ev->role.topic ? &ev->role : NULL,
                 ev->type == MK_EV_MESSAGE ? ev->message : ev->reason);
}

static void deliver(mk_vm *vm, mk_qev *q) {
  mk_proc *p = q->proc;
  mk_event ev;
  if (q->type == MK_EV_SPAWNED || q->type == MK_EV_RESUME) p->conts--;
  /* The last of a deletion p made above: p may have finished now
  ** (check_exit), whether or not it hears the event. */
  else if (q->type == MK_EV_DELETED && q->meta != 0) metaname_deleted(p, q->meta, q->name);
  /* An event for a deleted endpoint is dropped, unless it is one of the
  ** deletion's own (for a nested VM's child: if the child asked); so is
  ** one for a lifeline, which hears nothing, and for a link, whose
  ** absence kills instead (vm.h): one test of the byte that holds the
  ** three bits. */
  if (p->dead ||
      (q->deleted || q->type == MK_EV_DELETED
         ? !(p->b->flags & MK_BF_TELL_DELETED)
         : q->ep && (q->ep->dead || q->ep->lifeline || q->ep->islink))) {
    dropped(p, q);
    return;
  }
  event_of(q, &ev);
  if (TRACING(vm) && q->type != MK_EV_BOOT) trace_event(p, &ev);
  p->in_handle++;
  if (vm->detail) mkI_detail_handle(p, &ev);     /* timed: detail.c */
  else p->b->handle(p, &ev);
  p->in_handle--;
}

static unsigned long charged;   /* (mk_vm_step, charge) */

/* The clock is read once every SLICE_CHECK events: a message costs a
** tenth of a microsecond and a reading a fifth of that. */
#define SLICE_CHECK 16

/* A batch's events are a step's, mostly messages of a tenth of a
** microsecond each: the clock is read once every BATCH_CHECK of them
** (every SLICE_CHECK, it was 2% of a message's instructions under
** callgrind, where a slice holds fifty times fewer events than it does
** at full speed, and so is ended, with its batch, as often more). */
#define BATCH_CHECK 64

static unsigned batch_left = BATCH_CHECK;   /* events until the clock is read */

int mk_proc_next(mk_proc *p, mk_event *ev) {
  mk_vm *vm = p->vm;
  const mk_qblock *b = vm->qhead;
  const mk_qev *q;
  if (b == NULL || b->first == b->last) return 0;
  /* The reserve spent (charge): the step ends here and charges p. */
  if (mk_pool_nspent != charged) return 0;
  /* The slice's end (mkI_run_until) ends a batch too: a process whose
  ** events come back to back (one that sends itself two messages for each
  ** it gets) held the step for ever, and with it the loop: no timer, no
  ** socket, no signal was served. */
  if (vm->deadline != 0 && --batch_left == 0) {
    batch_left = BATCH_CHECK;
    if (mkI_clock() >= vm->deadline) return 0;
  }
  q = &b->ev[b->first];
  /* What deliver would hand to p's handle, and no more: not a deleted
  ** endpoint's own absences, nor events that end continuations or come
  ** from a nested VM's child (no endpoint of p's own). */
  if (q->proc != p || p->dead || q->ep == NULL || q->deleted ||
      q->ep->dead || q->ep->lifeline || q->ep->islink ||
      (q->type != MK_EV_MESSAGE && q->type != MK_EV_PRESENCE && q->type != MK_EV_ABSENCE))
    return 0;
  event_of(q, ev);
  return 1;
}

void mk_proc_take(mk_proc *p) {
  mk_vm *vm = p->vm;
  mk_qev *q = &vm->qhead->ev[vm->qhead->first];   /* freed in place */
  if (TRACING(vm)) {
    mk_event ev;
    event_of(q, &ev);
    trace_event(p, &ev);
  }
  qev_free(q);
  qev_pop(vm);
  p->pending--;
  /* Not proc_unref: the step delivering p's event being handled holds p. */
  p->refs--;
}

/* How many other events decline_queued passes, one after the other,
** looking for the process's next: a publisher's own presences alternate
** with its peers', and a process that queued a burst for others and then
** waits in market.pause() has its wake behind it all. */
#define DECLINE_GAP 8

/*
** p's activation began with nothing else of p's queued, and has ended
** with events queued for p since, the first of them at number `from` or
** after: all p's, and no code of p's runs before the first of them is
** delivered.  Those that p declines now (mk_behavior.declines: it is idle
** and has no handler for them) would be dropped at delivery, so they are
** dropped now, up to the first one it does not decline (whose handler may
** change what it takes), and not past it.  The case: a publisher whose new
** endpoint meets N subscribers hears of each of them and has no
** on_presence; the VM asks declines only of a process that is not running
** (it may yet re-add the endpoint with other handlers, or wait for the
** event), so those N events were queued, then each taken, delivered and
** dropped.  A slot dropped here is left in the queue, empty, for
** mk_vm_step to skip.  Events taken since `from` (a batch: mk_proc_take;
** steps nested in this one) end it before it starts, as does a run of
** DECLINE_GAP others' events: it is not worth what it costs then.
*/
static void decline_queued(mk_vm *vm, mk_proc *p, uint64_t from) {
  mk_qblock *b = vm->qhead;
  uint64_t at;
  unsigned i, gap = 0;
  /* The last answer of declines, for its tag and type: a publisher's own
  ** presences all ask the same question, and p does not change meanwhile. */
  uint32_t tag = 0;
  int type = -1, no = 0;
  if (from < vm->ntaken || p->dead || p->b->declines == NULL || TRACING(vm)) return;
  at = from - vm->ntaken;              /* slots from the head */
  i = b->first;
  while (at >= (uint64_t)(b->last - i)) {
    at -= b->last - i;
    if ((b = b->next) == NULL) return;
    i = 0;
  }
  for (i += (unsigned)at;; i = 0) {
    for (; i < b->last; i++) {
      mk_qev *q = &b->ev[i];
      if (q->proc != p) {
        if (++gap > DECLINE_GAP) return;
        continue;
      }
      if (q->ep == NULL || q->deleted || q->ep->islink || q->ep->lifeline ||
          (q->type != MK_EV_MESSAGE && q->type != MK_EV_PRESENCE && q->type != MK_EV_ABSENCE))
        return;
      if (q->ep->tag != tag || q->type != type) {
        tag = q->ep->tag;
        type = q->type;
        no = !p->b->declines(p, tag, (mk_event_type)type);
      }
      if (no) return;
      qev_free(q);
      q->proc = NULL;
      p->refs--;                       /* not the last: mk_vm_step holds p */
      if (--p->pending == 0) return;
      gap = 0;
    }
    if ((b = b->next) == NULL) return;
  }
}

/*
** An event that ran memory out: an allocation while p handled it spent
** the pool's reserve (pool.h), where it would have failed.  p ends with
** "not enough memory", the reason a Lua process's own failed allocation
** gives it,
** so that what it holds (its heap, the events queued for it: a process
** sending two messages for each it gets fills any memory) goes, and the
** rest of the program goes on.  The step of the innermost VM, which
** delivered to the process that was running, charges it; the steps of
** the VMs around it, delivering to the nested VMs' processes, find it
** charged (`charged`); a batch of p's events (mk_proc_next) ends at once.
** A spend in no process's event (the ground's own work) is charged to
** none, and the reserve is taken again at a later turn all the same.
*/
static void charge(mk_proc *p) {
  charged = mk_pool_nspent;
  /* Not the resident process (the ground's own, which publishes its
  ** events): whoever embeds the VM owns it, and the ground would stop. */
  if (!p->dead && !p->resident) mk_failf(p, "not enough memory");
}

int mk_vm_step(mk_vm *vm) {
  mk_qev q;
  mk_proc *p;
  uint64_t from;
  mk_qblock *b;
  unsigned long spent = mk_pool_nspent;
  for (;;) {
    if ((b = vm->qhead) == NULL || b->first == b->last) return 0;
    /* A slot decline_queued emptied is passed over without its copy. */
    if (b->ev[b->first].proc != NULL) break;
    qev_pop(vm);
  }
  q = b->ev[b->first];    /* a copy: handlers queue more, moving the tail */
  qev_pop(vm);
  p = q.proc;
  p->pending--;
  from = p->pending == 0 ? vm->nqueued : 0;   /* 0: none (this event was queued) */
  deliver(vm, &q);
  if (mk_pool_nspent != spent && charged != mk_pool_nspent) charge(p);
  qev_free(&q);
  if (from != 0 && p->pending != 0) decline_queued(vm, p, from);
  check_exit(p);
  proc_unref(p);
  return 1;
}

void mk_vm_prefetch(mk_vm *vm, size_t max) {
  int stage;
  for (stage = 0; stage < MK_PREFETCH_STAGES; stage++) {
    const mk_qblock *b;
    size_t left = max;
    for (b = vm->qhead; b != NULL && left > 0; b = b->next) {
      unsigned i;
      for (i = b->first; i < b->last && left > 0; i++, left--) {
        const mk_proc *p = b->ev[i].proc;   /* NULL: declined */
        if (p != NULL && p->b->prefetch != NULL) p->b->prefetch(p, stage);
      }
    }
  }
}

void mk_prefetch_receivers(const mk_proc *p, const mk_match_slot *slot, int stage) {
  mk_vm_prefetch_receivers(p->vm, slot, stage);
}

void mk_vm_prefetch_receivers(const mk_vm *vm, const mk_match_slot *slot, int stage) {
  mk_ilink *const *res;
  size_t n = mk_match_slot_items(vm->ix[MK_SUBSCRIBER], slot, &res), k;
  for (k = 0; k < n; k++) {
    const mk_endpoint *ep = (const mk_endpoint *)res[k];  /* link: first member */
    if (stage == 0) { __builtin_prefetch(&ep->proc); continue; }
    if (ep->dead) continue;                               /* proc may be gone */
    if (stage == 1) __builtin_prefetch(ep->proc);
    else if (ep->proc->b->prefetch != NULL) ep->proc->b->prefetch(ep->proc, stage - 2);
  }
}

size_t mk_vm_run(mk_vm *vm) {
  size_t n = 0;
  while (mk_vm_step(vm)) n++;
  return n;
}

uint64_t mkI_clock(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

size_t mkI_run_until(mk_vm *vm, uint64_t deadline) {
  size_t n = 0;
  uint64_t outer = vm->deadline;
  vm->deadline = deadline;
  while (mk_vm_step(vm))
    if (++n % SLICE_CHECK == 0 && mkI_clock() >= deadline) break;
  vm->deadline = outer;
  return n;
}

size_t mk_vm_run_for(mk_vm *vm, double ms) {
  uint64_t now = mkI_clock();
  if (!(ms > 0)) ms = 0;
  if (ms > 1e9) ms = 1e9;            /* some eleven days: no overflow */
  return mkI_run_until(vm, now + (uint64_t)(ms * 1e6));
}

static void drop_queue(mk_vm *vm) {
  mk_qev q;
  while (!qev_empty(vm)) {
    mk_proc *p;
    qev_take(vm, &q);
    if ((p = q.proc) == NULL) continue;      /* declined (decline_queued) */
    p->pending--;
    if (q.cont && p->b->release_cont) p->b->release_cont(p, q.cont);
    qev_free(&q);
    proc_unref(p);
  }
}

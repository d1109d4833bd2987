/*
** detail.c: detail mode, what snapshots show only while it is on (vm.h,
** "Detail"; docs/inspect.md, "Detail mode"): each process's CPU time and
** memory, each conversation's message count, the bytes a driver moved for
** a process (a TCP connection's).
**
** Nothing here runs while detail is off: the VM tests one pointer
** (vm->detail) per delivery and per send, and mk_detail_io the same one
** per read or write of a connection.  While it is on, each VM holds
** a table of its processes' figures, by process, and one of message
** counts, by pair of endpoints.  A process's entry goes with it
** (mkI_kill); a pair's entry holds a reference on both endpoints, so
** that neither address is taken by a new endpoint while it is counted,
** and the pairs of a withdrawn endpoint are dropped when the table has
** doubled since the last sweep (amortized: a sweep per as many sends as
** entries it keeps).
*/
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "vmint.h"

/* A table's entry: chained, keyed by two addresses. */
typedef struct hent {
  struct hent *next;
  const void *a, *b;
} hent;

/* A process's figures: key (the process, NULL).  Owned by its VM's table. */
typedef struct pstat {
  hent h;
  int64_t cpu_ns;             /* thread CPU time in its activations, its own only */
  int64_t mem;                /* Lua bytes its activations allocated, net */
  uint64_t in, out;           /* bytes a driver moved for it (mk_detail_io) */
} pstat;

/* Messages sent on one pair of endpoints: key (publisher, subscriber).
** Owned by its VM's table; holds a reference on each endpoint. */
typedef struct pair {
  hent h;
  uint64_t n;
} pair;

/* A VM's detail (vmint.h: vm->detail).  Owned by the VM. */
struct mkI_detail {
  hent **ptab;                /* pstat */
  size_t psize, np;
  hent **ctab;                /* pair */
  size_t csize, nc;
  size_t sweep_at;            /* sweep the withdrawn pairs past this many */
};

/* The activation being measured, and the CPU time of the activations
** nested in it so far (a handler that kills a nested VM runs its
** processes' last activations inside its own): each counts its own. */
static pstat *cur;
static int64_t nested_ns;
/* Counts the tables freed (detail turned off): an activation that saw it
** change under it may not restore the outer one's entry, freed too. */
static unsigned long epoch;

static size_t hash(const void *a, const void *b, size_t size) {
  uint64_t h = ((uint64_t)(uintptr_t)a >> 4) * 0x9E3779B97F4A7C15u;
  h ^= ((uint64_t)(uintptr_t)b >> 4) * 0xC2B2AE3D27D4EB4Fu;
  return (size_t)(h >> 32) & (size - 1);
}

/* Where the entry (a, b) is, or would go. */
static hent **slot(hent **tab, size_t size, const void *a, const void *b) {
  hent **e = &tab[hash(a, b, size)];
  while (*e != NULL && ((*e)->a != a || (*e)->b != b)) e = &(*e)->next;
  return e;
}

/* Add e to a table of n entries, doubling it first when full. */
static void put(hent ***tab, size_t *size, size_t n, hent *e) {
  hent **s;
  if (n >= *size) {
    size_t ns = *size * 2, i;
    hent **nt = mkI_xcalloc(ns, sizeof *nt);
    for (i = 0; i < *size; i++) {
      hent *x, *xn;
      for (x = (*tab)[i]; x; x = xn) {
        size_t k = hash(x->a, x->b, ns);
        xn = x->next;
        x->next = nt[k];
        nt[k] = x;
      }
    }
    free(*tab);
    *tab = nt;
    *size = ns;
  }
  s = &(*tab)[hash(e->a, e->b, *size)];
  e->next = *s;
  *s = e;
}

static mkI_detail *detail_new(void) {
  mkI_detail *d = mkI_xcalloc(1, sizeof *d);
  d->psize = d->csize = 16;
  d->ptab = mkI_xcalloc(d->psize, sizeof *d->ptab);
  d->ctab = mkI_xcalloc(d->csize, sizeof *d->ctab);
  d->sweep_at = 64;
  return d;
}

static void unref_pair(hent *c) {
  mkI_ep_unref((mk_endpoint *)c->a);
  mkI_ep_unref((mk_endpoint *)c->b);
  free(c);
}

static void detail_free(mkI_detail *d) {
  size_t i;
  if (d == NULL) return;
  epoch++;
  for (i = 0; i < d->psize; i++) {
    hent *s, *sn;
    for (s = d->ptab[i]; s; s = sn) {
      sn = s->next;
      if ((hent *)cur == s) cur = NULL;
      free(s);
    }
  }
  for (i = 0; i < d->csize; i++) {
    hent *c, *cn;
    for (c = d->ctab[i]; c; c = cn) {
      cn = c->next;
      unref_pair(c);
    }
  }
  free(d->ptab);
  free(d->ctab);
  free(d);
}

/* ---- on and off ---------------------------------------------------------- */

/* Detail on (or off) for vm and every VM nested in it, booted so far. */
static void install(mk_vm *vm, int on) {
  size_t i;
  if (on && vm->detail == NULL) vm->detail = detail_new();
  else if (!on && vm->detail != NULL) { detail_free(vm->detail); vm->detail = NULL; }
  for (i = 0; i < vm->ptabsize; i++) {
    mk_proc *p;
    for (p = vm->ptab[i]; p; p = p->hnext) {
      mk_vm *child = p->b == &mk_nested_behavior ? p->data : NULL;
      if (child != NULL && child->parent == vm) install(child, on);
    }
  }
}

int mk_vm_set_detail(mk_vm *vm, int on) {
  int was = vm->detail != NULL;
  install(vm, on != 0);
  return was;
}

int mk_vm_detail(const mk_vm *vm) { return vm->detail != NULL; }

void mkI_detail_inherit(mk_vm *vm, const mk_vm *parent) {
  if (parent->detail != NULL && vm->detail == NULL) vm->detail = detail_new();
}

void mkI_detail_release(mk_vm *vm) {
  detail_free(vm->detail);
  vm->detail = NULL;
}

/* ---- processes ------------------------------------------------------------ */

static pstat *pstat_of(mkI_detail *d, const mk_proc *p) {
  pstat *s = (pstat *)*slot(d->ptab, d->psize, p, NULL);
  if (s == NULL) {
    s = mkI_xcalloc(1, sizeof *s);
    s->h.a = p;
    put(&d->ptab, &d->psize, d->np++, &s->h);
  }
  return s;
}

void mkI_detail_gone(mk_proc *p) {
  mkI_detail *d = p->vm->detail;
  hent **s = slot(d->ptab, d->psize, p, NULL), *dead = *s;
  if (dead == NULL) return;
  *s = dead->next;
  if ((hent *)cur == dead) cur = NULL;
  free(dead);
  d->np--;
}

static int64_t cpu_now(void) {
  struct timespec ts;
  if (clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts) != 0) return 0;
  return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

void mkI_detail_handle(mk_proc *p, const mk_event *ev) {
  pstat *s = pstat_of(p->vm->detail, p), *outer = cur;
  int64_t onested = nested_ns, t0, spent;
  unsigned long e = epoch;
  cur = s;
  nested_ns = 0;
  t0 = cpu_now();
  p->b->handle(p, ev);
  spent = cpu_now() - t0;
  /* The handler may have turned detail off, or the process gone: s is
  ** then freed, and cur says so; so may outer be (the epoch says so). */
  if (cur == s) s->cpu_ns += spent - nested_ns;
  cur = epoch == e ? outer : NULL;
  nested_ns = onested + spent;
}

void mk_detail_alloc(ptrdiff_t delta) {
  if (cur != NULL) cur->mem += delta;
}

void mk_detail_io(mk_proc *p, size_t in, size_t out) {
  pstat *s;
  if (p->vm->detail == NULL) return;
  s = pstat_of(p->vm->detail, p);
  s->in += in;
  s->out += out;
}

int mk_detail_io_of(const mk_proc *p, uint64_t *in, uint64_t *out) {
  const pstat *s;
  if (p->vm->detail == NULL) return 0;
  s = (const pstat *)*slot(p->vm->detail->ptab, p->vm->detail->psize, p, NULL);
  *in = s ? s->in : 0;
  *out = s ? s->out : 0;
  return 1;
}

int mkI_detail_proc(const mk_proc *p, double *cpu_ms, int64_t *mem) {
  const pstat *s;
  if (p->vm->detail == NULL) return 0;
  s = (const pstat *)*slot(p->vm->detail->ptab, p->vm->detail->psize, p, NULL);
  *cpu_ms = s ? (double)s->cpu_ns / 1e6 : 0;
  *mem = s ? s->mem : 0;
  return 1;
}

/* ---- messages ------------------------------------------------------------- */

/* Drop the pairs of which an endpoint was withdrawn: they will not count
** again, and their endpoints' memory waits for it. */
static void sweep(mkI_detail *d) {
  size_t i;
  for (i = 0; i < d->csize; i++) {
    hent **c = &d->ctab[i];
    while (*c != NULL) {
      hent *x = *c;
      if (((const mk_endpoint *)x->a)->dead || ((const mk_endpoint *)x->b)->dead) {
        *c = x->next;
        unref_pair(x);
        d->nc--;
      } else {
        c = &x->next;
      }
    }
  }
  d->sweep_at = 2 * d->nc + 64;
}

static void count(mkI_detail *d, mk_endpoint *pub, mk_endpoint *sub) {
  pair *c = (pair *)*slot(d->ctab, d->csize, pub, sub);
  if (c == NULL) {
    if (d->nc >= d->sweep_at) sweep(d);
    c = mkI_xcalloc(1, sizeof *c);
    c->h.a = pub;
    c->h.b = sub;
    pub->refs++;
    sub->refs++;
    put(&d->ctab, &d->csize, d->nc++, &c->h);
  }
  c->n++;
}

typedef struct sendctx {
  mkI_detail *d;
  const mk_proc *from;
  const mk_term *body;
} sendctx;

static int on_receiver(mk_ilink *link, void *ud) {
  sendctx *c = ud;
  mk_endpoint *sub = (mk_endpoint *)link, *pub;
  if (sub->lifeline || sub->islink) return 0;
  for (pub = c->from->eps; pub; pub = pub->pnext)
    if (pub->role.orientation == MK_PUBLISHER && mk_unifies(pub->role.topic, c->body))
      count(c->d, pub, sub);
  return 0;
}

void mkI_detail_send(mk_proc *p, const mk_term *body) {
  sendctx c;
  c.d = p->vm->detail;
  c.from = p;
  c.body = body;
  mk_index_match(p->vm->ix[MK_SUBSCRIBER], (mk_term *)body, on_receiver, &c);
}

int mkI_detail_messages(const mk_vm *vm, const mk_endpoint *pub, const mk_endpoint *sub,
                        uint64_t *n) {
  const pair *c;
  if (vm->detail == NULL) return 0;
  c = (const pair *)*slot(vm->detail->ctab, vm->detail->csize, pub, sub);
  *n = c ? c->n : 0;
  return 1;
}

/*
** snapshot.c: a copy of what a tree of VMs holds, for inspection
** (vm.h, "snapshots"; docs/inspect.md).  Nothing here runs unless asked:
** it reads the VM's tables and index as they are.
*/
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "vmint.h"

/* A growable array of n items of `size` bytes, doubling. */
static void *grow(void *a, size_t n, size_t *cap, size_t size) {
  if (n < *cap) return a;
  *cap = *cap ? *cap * 2 : 8;
  return mkI_xrealloc(a, *cap * size);
}

typedef struct epcopy {
  mk_snap_proc *sp;
  size_t cap;
  size_t max;                /* endpoints it may list; the rest are counted */
} epcopy;

static void copy_endpoint(void *ud, const char *name, int level, const mk_role *role) {
  epcopy *c = ud;
  mk_snap_endpoint *e;
  if (c->sp->nendpoints == c->max) { c->sp->endpoints_omitted++; return; }
  c->sp->endpoints = grow(c->sp->endpoints, c->sp->nendpoints, &c->cap, sizeof *e);
  e = &c->sp->endpoints[c->sp->nendpoints++];
  e->name = mkI_xstrdup(name);
  e->level = level;
  e->role = *role;
  mk_ref(e->role.topic);
}

/* Where a level-0 endpoint of the VM is in the snapshot, found by its
** address (bsearch over these, sorted). */
typedef struct epref {
  const mk_endpoint *e;
  size_t proc, endpoint;
} epref;

static int by_address(const void *a, const void *b) {
  const mk_endpoint *x = ((const epref *)a)->e, *y = ((const epref *)b)->e;
  return x < y ? -1 : x > y;
}

static int by_pid(const void *a, const void *b) {
  mk_pid x = (*(mk_proc *const *)a)->pid, y = (*(mk_proc *const *)b)->pid;
  return x < y ? -1 : x > y;
}

static int by_pair(const void *a, const void *b) {
  const mk_snap_conv *x = a, *y = b;
  if (x->pub_proc != y->pub_proc) return x->pub_proc < y->pub_proc ? -1 : 1;
  if (x->pub_endpoint != y->pub_endpoint) return x->pub_endpoint < y->pub_endpoint ? -1 : 1;
  if (x->sub_proc != y->sub_proc) return x->sub_proc < y->sub_proc ? -1 : 1;
  return x->sub_endpoint < y->sub_endpoint ? -1 : x->sub_endpoint > y->sub_endpoint;
}

typedef struct convctx {
  const mk_vm *vm;
  mk_snap_vm *s;
  size_t cap;
  const epref *refs;
  size_t nrefs;
  const epref *pub;
  size_t *left;              /* conversations the snapshot may still list */
  const size_t *listed;      /* per listed process, how many of its endpoints are */
} convctx;

static int by_position(const void *a, const void *b) {
  const epref *x = a, *y = b;
  if (x->proc != y->proc) return x->proc < y->proc ? -1 : 1;
  return x->endpoint < y->endpoint ? -1 : x->endpoint > y->endpoint;
}

static int on_match(mk_ilink *link, void *ud) {
  convctx *c = ud;
  const mk_endpoint *q = (const mk_endpoint *)link, *e = c->pub->e;
  epref key, *r;
  mk_snap_conv *cv;
  /* A pair is a conversation when presence was told to either side: one
  ** sees the other when that one is a participant, or it sees everything
  ** (vm.c, visible). */
  if (!(q->role.interest == MK_PARTICIPANT || e->role.interest == MK_EVERYTHING) &&
      !(e->role.interest == MK_PARTICIPANT || q->role.interest == MK_EVERYTHING))
    return 0;
  key.e = q;
  r = bsearch(&key, c->refs, c->nrefs, sizeof key, by_address);
  if (r == NULL) return 0;            /* a lifeline, a link, a dead one */
  /* a side not listed (its process's endpoints bounded) leaves it out too */
  if (*c->left == 0 || r->endpoint >= c->listed[r->proc] ||
      c->pub->endpoint >= c->listed[c->pub->proc]) {
    c->s->convs_omitted++;
    return 0;
  }
  (*c->left)--;
  c->s->convs = grow(c->s->convs, c->s->nconvs, &c->cap, sizeof *cv);
  cv = &c->s->convs[c->s->nconvs++];
  cv->pub_proc = c->pub->proc;
  cv->pub_endpoint = c->pub->endpoint;
  cv->sub_proc = r->proc;
  cv->sub_endpoint = r->endpoint;
  cv->messages = 0;
  mkI_detail_messages(c->vm, e, q, &cv->messages);
  return 0;
}

/* How many more processes, conversations and endpoints the snapshot may
** list (SIZE_MAX: all), and endpoints of any one process. */
typedef struct budget { size_t procs, convs, eps, eps_each; } budget;

static void snap_vm(mk_vm *vm, mk_snap_vm *s, budget *left);

static void count_endpoint(void *ud, const char *name, int level, const mk_role *role) {
  (void)name; (void)level; (void)role;
  (*(size_t *)ud)++;
}

/* p's listing, with at most max_eps of its endpoints (those first in
** mk_proc_each_endpoint's order). */
static void snap_proc(mk_proc *p, mk_snap_proc *sp, size_t max_eps, budget *left) {
  epcopy c;
  memset(sp, 0, sizeof *sp);
  sp->pid = p->pid;
  sp->name = p->xname == 2 ? NULL : mkI_xstrdup(p->name);
  sp->kind = p->b->kind ? p->b->kind : "?";
  sp->queued = p->pending;
  sp->activations = p->b->activations ? (int64_t)p->b->activations(p) : -1;
  c.sp = sp;
  c.cap = 0;
  c.max = max_eps;
  mk_proc_each_endpoint(p, copy_endpoint, &c);
  if (mkI_detail_proc(p, &sp->cpu_ms, &sp->memory)) {
    const mk_endpoint *e;
    sp->memory += (int64_t)sizeof *p;
    if (p->xname) sp->memory += (int64_t)(sizeof(mk_procx) + strlen(p->name) + 1);
    else if (p->name) sp->memory += (int64_t)strlen(p->name) + 1;
    for (e = p->eps; e; e = e->pnext)
      sp->memory += (int64_t)(offsetof(mk_endpoint, name) + strlen(e->name) + 1);
  }
  if (p->b == &mk_nested_behavior && p->data != NULL) {
    sp->vm = mkI_xmalloc(sizeof *sp->vm);
    snap_vm(p->data, sp->vm, left);
  }
}

/* The conversations of one VM: for each publisher endpoint, the subscribers
** the index matches it with (each pair once: only publishers ask), the
** publishers taken by their position. */
static void snap_convs(mk_vm *vm, mk_snap_vm *s, mk_proc **procs, const size_t *listed,
                       size_t *left) {
  size_t i, n = 0, cap = 0, npubs = 0;
  epref *refs = NULL, *pubs;
  convctx c;
  for (i = 0; i < s->nprocs; i++) {
    const mk_endpoint *e = procs[i]->eps;
    size_t k;
    /* eps is newest first; the snapshot's level-0 endpoints oldest first */
    for (k = 0; e; e = e->pnext, k++) {}
    for (e = procs[i]->eps; e; e = e->pnext) {
      refs = grow(refs, n, &cap, sizeof *refs);
      refs[n].e = e;
      refs[n].proc = i;
      refs[n].endpoint = --k;
      n++;
    }
  }
  pubs = mkI_xmalloc((n ? n : 1) * sizeof *pubs);
  for (i = 0; i < n; i++)
    if (!refs[i].e->dead && refs[i].e->role.orientation == MK_PUBLISHER) pubs[npubs++] = refs[i];
  if (npubs > 1) qsort(pubs, npubs, sizeof *pubs, by_position);
  if (n > 1) qsort(refs, n, sizeof *refs, by_address);
  c.vm = vm;
  c.s = s;
  c.cap = 0;
  c.refs = refs;
  c.nrefs = n;
  c.left = left;
  c.listed = listed;
  for (i = 0; i < npubs; i++) {
    c.pub = &pubs[i];
    mk_index_match(vm->ix[MK_SUBSCRIBER], pubs[i].e->role.topic, on_match, &c);
  }
  free(pubs);
  free(refs);
  if (s->nconvs > 1) qsort(s->convs, s->nconvs, sizeof *s->convs, by_pair);
}

static void snap_vm(mk_vm *vm, mk_snap_vm *s, budget *left) {
  mk_proc **procs;
  mk_qblock *b;
  size_t i, n = 0, listed, *eps;
  memset(s, 0, sizeof *s);
  s->path = mkI_xstrdup(vm->path);
  s->detail = mk_vm_detail(vm);
  s->pid = vm->self ? vm->self->pid : 0;
  for (b = vm->qhead; b; b = b->next)       /* but slots emptied (vm.c, decline_queued) */
    for (i = b->first; i < b->last; i++) s->queued += b->ev[i].proc != NULL;
  procs = mkI_xmalloc((vm->nprocs + 1) * sizeof *procs);
  if (vm->resident != NULL && !vm->resident->dead) procs[n++] = vm->resident;
  for (i = 0; i < vm->ptabsize; i++) {
    mk_proc *p;
    for (p = vm->ptab[i]; p; p = p->hnext)
      if (!p->dead) procs[n++] = p;
  }
  qsort(procs, n, sizeof *procs, by_pid);
  /* This VM's share, taken before any nested VM takes its own. */
  listed = n < left->procs ? n : left->procs;
  left->procs -= listed;
  s->omitted = n - listed;
  s->procs = mkI_xmalloc((listed ? listed : 1) * sizeof *s->procs);
  s->nprocs = listed;
  /* How many endpoints each listed process lists: this VM's share of the
  ** bound, in pid order, before its nested VMs take theirs (one process of
  ** 150,000 endpoints made a snapshot no inspector request could finish
  ** within the activation budget). */
  eps = mkI_xmalloc((listed ? listed : 1) * sizeof *eps);
  for (i = 0; i < listed; i++) {
    size_t all = 0, most = left->eps_each < left->eps ? left->eps_each : left->eps;
    if (left->eps == SIZE_MAX) { eps[i] = SIZE_MAX; continue; }     /* no bound */
    mk_proc_each_endpoint(procs[i], count_endpoint, &all);
    eps[i] = all < most ? all : most;
    left->eps -= eps[i];
  }
  /* Its conversations before its nested VMs take theirs (they name the
  ** listed processes' endpoints by position only). */
  snap_convs(vm, s, procs, eps, &left->convs);
  for (i = 0; i < listed; i++) snap_proc(procs[i], &s->procs[i], eps[i], left);
  free(eps);
  free(procs);
}

mk_snap_vm *mk_vm_snapshot_bounded(mk_vm *vm, size_t max_procs, size_t max_convs,
                                   size_t max_endpoints) {
  mk_snap_vm *s = mkI_xmalloc(sizeof *s);
  budget left;
  left.procs = max_procs ? max_procs : SIZE_MAX;
  left.convs = max_convs ? max_convs : SIZE_MAX;
  left.eps = max_endpoints ? max_endpoints : SIZE_MAX;
  left.eps_each = max_endpoints ? (max_endpoints + 9) / 10 : SIZE_MAX;
  snap_vm(vm, s, &left);
  return s;
}

mk_snap_vm *mk_vm_snapshot_limits(mk_vm *vm, size_t max_procs, size_t max_convs) {
  return mk_vm_snapshot_bounded(vm, max_procs, max_convs, 0);
}

mk_snap_vm *mk_vm_snapshot_max(mk_vm *vm, size_t max_procs) {
  return mk_vm_snapshot_limits(vm, max_procs, 0);
}

mk_snap_vm *mk_vm_snapshot(mk_vm *vm) { return mk_vm_snapshot_max(vm, 0); }

static void free_vm(mk_snap_vm *s) {
  size_t i, k;
  for (i = 0; i < s->nprocs; i++) {
    mk_snap_proc *sp = &s->procs[i];
    for (k = 0; k < sp->nendpoints; k++) {
      free(sp->endpoints[k].name);
      mk_unref(sp->endpoints[k].role.topic);
    }
    free(sp->endpoints);
    free(sp->name);
    if (sp->vm) { free_vm(sp->vm); free(sp->vm); }
  }
  free(s->procs);
  free(s->convs);
  free(s->path);
}

void mk_snapshot_free(mk_snap_vm *s) {
  if (s == NULL) return;
  free_vm(s);
  free(s);
}
